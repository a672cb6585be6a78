"""Smoke test of scripts/bench.py on tiny sizes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module", autouse=True)
def bench_run(tmp_path_factory):
    """Starts bench.py in a subprocess before this module's first test; yields its result."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench.py"),
        "--env_name=CartPole-v1",
        "--num_seeds=4",
        "--seed_group_size=1",  # 2 seeds per device, run as 2 groups: parts per group
        "--num_envs=4",
        "--buffer_size=1000",
        "--batch_size=32",
        "--hidden_sizes=32",
        "--learning_starts=200",
        "--total_steps=2000",
        "--eval_episodes=1",
        "--iterations=20",
        "--chunks=1",
        "--matmul_size=128",
        "--matmul_repeats=2",
        f"--out={out}",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )

    def result():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        assert "overhead" in stdout
        return json.loads(out.read_text())

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_bench_reports_every_part(bench_run):
    r = bench_run()

    assert r["num_seeds"] == 4 and r["iterations"] == 20
    assert r["layout"] == [2, 1] and r["seed_group_size"] == 1
    assert any("2 groups of 1" in note for note in r["notes"])
    for key in ("us_per_iteration", "sps", "chunk_s"):
        assert positive(r["full_loop"][key]), key
    assert set(r["parts"]) == {"acting", "acting_random", "replay", "learner"}
    for name, part in r["parts"].items():
        for key in ("us_per_iteration", "sps", "compile_s"):
            assert positive(part[key]), (name, key)
    assert positive(r["compile_s"])
    parts = r["parts"]
    expected = sum(parts[k]["us_per_iteration"] for k in ("acting", "replay", "learner"))
    assert r["sum_of_parts_us"] == pytest.approx(expected)
    assert r["overhead"] == pytest.approx(r["full_loop"]["us_per_iteration"] / expected)
    assert positive(r["overhead"])
    assert positive(r["matmul"]["gflops"]) and r["matmul"]["size"] == 128
    # --matmul_repeats=2 over --chunks=1: both calls in the one round.
    assert r["matmul"]["repeats"] == 2
    assert r["matmul"]["gflops_best"] >= r["matmul"]["gflops"]
    one_core = r["matmul"]["gflops_one_core"]
    assert one_core is None or positive(one_core)
    if one_core:  # the learner's share of its devices' one-core ceiling
        share = r["learner_flops"]["share_of_cores_used_isolated"]
        assert share == pytest.approx(r["learner_flops"]["gflops_isolated"] / (2 * one_core))
    flops = r["learner_flops"]
    for key in ("xla_per_update", "hand_per_update", "gflops_isolated", "gflops_full_loop"):
        assert positive(flops[key]), key
    # MLP 4 -> 32 -> 2, batch 32, Double DQN: 3 forward passes + backward (2x forward,
    # less the first layer's input gradient) = 32 * (5 * 320 - 2 * 128) multiply-add FLOPs.
    assert flops["hand_per_update"] == 32 * (5 * 2 * (4 * 32 + 32 * 2) - 2 * 4 * 32)
    # XLA also counts biases, activations, the loss and Adam: same order as the layers.
    assert 0.8 < flops["xla_per_update"] / flops["hand_per_update"] < 3.0
    assert r["machine"]["backend"] == "cpu" and r["machine"]["cores"] >= 1
