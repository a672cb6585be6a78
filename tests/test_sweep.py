"""Sweeps: parsing and planning, the traced hyperparameters' runs equal to the
runs alone, programs per shape, outputs, resume, the memory guard, the plots."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dqnx
from dqnx import checks, sweep, train
from dqnx.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# test_train's tiny CartPole run; seed_group_size=1: every device advances one run
# at a time in the sweep as in the 2-seed run alone (2 devices: one seed each), so
# the two compute with the same vmap width and may be compared bit for bit.
TINY = dqnx.Config(
    env_name="CartPole-v1", num_seeds=2, num_envs=4, buffer_size=1_000, batch_size=32,
    hidden_sizes=(32,), learning_starts=200, total_steps=2_000, log_every=400, eval_every=800,
    eval_episodes=3, target_update_period=50, seed_group_size=1,
)  # fmt: skip
# hidden_sizes changes shapes: two programs, each tracing the other fields per run.
# A one-value item is traced too (every run the same value).
SWEEP = TINY.replace(
    sweep=(
        "hidden_sizes=32,16",
        "learning_rate=1e-3,3e-4",
        "tau=1.0,0.1",
        "gamma=0.97",
        "epsilon_end=0.2",
    )
)
# The member checked against its run alone: every traced field off its default.
MEMBER = {"learning_rate": 3e-4, "gamma": 0.97, "tau": 0.1, "epsilon_end": 0.2}


def test_grid_is_the_cross_product_in_sweep_order():
    plan = sweep.plan(
        TINY.replace(sweep=("learning_rate=1e-3,3e-4", "target_update_period=10,20,30"))
    )
    assert len(plan.configurations) == 6 and plan.num_runs == 12
    (program,) = plan.programs
    assert program.traced == ("learning_rate", "target_update_period")
    assert [r.index for r in program.runs] == list(range(12))
    assert [r.seed for r in program.runs[:4]] == [0, 1, 0, 1]
    assert program.runs[3].overrides == {"learning_rate": 1e-3, "target_update_period": 20}
    alone = program.run_config(program.runs[3])
    assert (alone.seed, alone.num_seeds, alone.sweep, alone.target_update_period) == (1, 1, (), 20)
    # Shapes and clipping on or off make programs; the rest is traced.
    plan = sweep.plan(SWEEP)
    assert [len(p.runs) for p in plan.programs] == [8, 8]
    assert [p.config.hidden_sizes for p in plan.programs] == [(32,), (16,)]
    clip = sweep.plan(TINY.replace(sweep=("max_grad_norm=0,1,10",)))
    assert [(p.config.max_grad_norm, p.traced) for p in clip.programs] == [
        (0.0, ()), (1.0, ("max_grad_norm",)),
    ]  # fmt: skip
    qr = sweep.plan(TINY.replace(learner="qr", sweep=("huber_delta=1,2", "gamma=0.9,0.99")))
    assert [p.traced for p in qr.programs] == [("huber_delta", "gamma")]
    dtypes = sweep.plan(TINY.replace(sweep=("compute_dtype=float32,bfloat16",)))
    assert [p.config.compute_dtype for p in dtypes.programs] == ["float32", "bfloat16"]
    # A field of an option that is off is not traced (its runs share the program).
    off = sweep.plan(TINY.replace(sweep=("priority_exponent=0.4,0.6", "munchausen_tau=0.1")))
    assert [(len(p.runs), p.traced) for p in off.programs] == [(4, ())]


def test_random_search_draws_are_fixed_by_the_seed():
    config = TINY.replace(
        sweep_random=50,
        sweep=("learning_rate=1e-5:1e-2", "gamma=0.9:0.999", "target_update_period=10,100"),
    )
    draws = sweep.plan(config).configurations
    assert draws == sweep.plan(config).configurations
    assert draws != sweep.plan(config.replace(seed=1)).configurations
    lr = np.array([d["learning_rate"] for d in draws])
    gamma = np.array([d["gamma"] for d in draws])
    assert lr.min() >= 1e-5 and lr.max() <= 1e-2 and (gamma >= 0.9).all() and (gamma <= 0.999).all()
    # log-uniform: about half the draws below the geometric midpoint 3.2e-4
    assert 15 < (lr < np.sqrt(1e-5 * 1e-2)).sum() < 35
    assert {d["target_update_period"] for d in draws} == {10, 100}


@pytest.mark.parametrize(
    "items,extra,message",
    [
        (("env_name=Breakout-MinAtar",), {}, "--sweep=env_name: env_name cannot vary"),
        (("learning_rat=1e-3",), {}, "did you mean learning_rate"),
        (("learning_rate=1e-4:1e-2",), {}, "draw from it with --sweep_random=N"),
        (("learning_rate=-1e-4:1e-2",), {"sweep_random": 3}, "LOW must be > 0"),
        (("target_update_period=1.5",), {}, "cannot read '1.5' as int"),
        (("gamma=0.9,1.5",), {}, "configuration 1 (gamma=1.5): --gamma must be in [0, 1]"),
        (("gamma=0.9", "gamma=0.8"), {}, "given twice"),
        (("gamma=0.9",), {"env_name": "gymnasium:CartPole-v1"}, "compiled mode"),
        ((), {"sweep_random": 4}, "give --sweep"),
    ],
)
def test_sweep_errors_are_one_line_before_any_compile(items, extra, message):
    with pytest.raises(ConfigError) as e:
        checks.validate(TINY.replace(sweep=items, **extra))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_memory_guard_says_how_many_runs_fit(monkeypatch):
    per_run = checks.replay_bytes(TINY.replace(num_seeds=1), (4,), np.float32)
    monkeypatch.setattr(checks, "device_memory_bytes", lambda: int(6.5 * per_run / 0.8))
    config = TINY.replace(sweep=("learning_rate=1e-3,3e-4", "gamma=0.9,0.99"))  # 8 runs
    with pytest.raises(ConfigError, match=r"\(8 runs x --buffer_size=1000\) .*: 6 runs fit"):
        checks.validate(config)
    checks.validate(config.replace(num_seeds=1))  # 4 runs fit


def test_flags_take_repeated_sweep_items():
    from absl import flags as absl_flags

    from dqnx import flags as dqnx_flags

    fv = absl_flags.FlagValues()
    dqnx_flags.define_flags(fv)
    fv([sys.argv[0], "--sweep=learning_rate=1e-4,3e-4", "--sweep=gamma=0.97,0.99",
        "--sweep_random=0"])  # fmt: skip
    config = dqnx_flags.config_from_flags(fv)
    assert config.sweep == ("learning_rate=1e-4,3e-4", "gamma=0.97,0.99")
    assert dqnx.Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert dqnx_flags.config_from_flags(_fresh_flags()).sweep == ()


def _fresh_flags():
    from absl import flags as absl_flags

    from dqnx import flags as dqnx_flags

    fv = absl_flags.FlagValues()
    dqnx_flags.define_flags(fv)
    fv([sys.argv[0]])
    return fv


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The two-program sweep, run to 1,200 env steps, then resumed to 2,000; and
    MEMBER's 2-seed run alone, straight to 2,000."""
    root = tmp_path_factory.mktemp("sweep")
    train.run(SWEEP.replace(total_steps=1_200), root / "sweep", quiet=True)
    summary = train.run(SWEEP, root / "sweep", quiet=True)
    alone = train.run(TINY.replace(**MEMBER), root / "alone", quiet=True)
    return root, summary, alone


def test_a_sweep_run_is_the_run_alone_bit_for_bit(swept):
    """Traced hyperparameters (and a resume at 1,200 env steps) change no bit."""
    _, summary, alone = swept
    member = [r for r in summary["runs"] if list(r["hidden_sizes"]) == [32]
              and all(r[k] == v for k, v in MEMBER.items())]  # fmt: skip
    assert [r["seed"] for r in member] == [0, 1]
    assert [r["params_digest"] for r in member] == alone["params_digest"]
    assert [r["eval_return"] for r in member] == list(alone["eval_return_per_seed"])
    digests = [r["params_digest"] for r in summary["runs"]]
    assert len(set(digests)) == len(digests) == 16  # every run its own


# IQN with Munchausen and prioritized replay: the quantile Huber threshold, the
# Munchausen temperature (a divisor) and the priority exponent (in the sum tree)
# vary inside one program too. Member: every traced value off its default.
IQN = TINY.replace(learner="iqn", munchausen=True, prioritized=True, num_tau_samples=8,
                   num_tau_prime_samples=8, num_quantile_samples=8, total_steps=1_000)  # fmt: skip
IQN_MEMBER = {"priority_exponent": 0.4, "munchausen_tau": 0.1, "huber_delta": 2.0}


def test_priority_exponent_munchausen_tau_and_kappa_trace_bit_for_bit(tmp_path):
    items = ("priority_exponent=0.4,0.6", "munchausen_tau=0.1", "huber_delta=2")
    (program,) = sweep.plan(IQN.replace(sweep=items)).programs
    assert program.traced == ("priority_exponent", "munchausen_tau", "huber_delta")
    summary = train.run(IQN.replace(sweep=items), tmp_path / "sweep", quiet=True)
    alone = train.run(IQN.replace(**IQN_MEMBER), tmp_path / "alone", quiet=True)
    digests = [r["params_digest"] for r in summary["runs"]]
    assert digests[:2] == alone["params_digest"]
    assert len(set(digests)) == 4


def test_sweep_outputs(swept):
    root, summary, _ = swept
    workdir = root / "sweep"
    saved = json.loads((workdir / "summary.json").read_text())
    assert saved["num_runs"] == 16 and saved["num_programs"] == 2 and saved["num_seeds"] == 2
    assert [r["run"] for r in saved["runs"]] == list(range(16))
    assert saved["runs"][11] == dict(
        saved["runs"][11], run=11, seed=1, hidden_sizes=[16], learning_rate=1e-3, tau=0.1,
        gamma=0.97, epsilon_end=0.2,
    )  # fmt: skip
    assert dqnx.Config.from_dict(json.loads((workdir / "config.json").read_text())).sweep
    # Each program is a run of its own: metrics keep every run's configuration.
    records = [
        json.loads(x) for x in (workdir / "program-1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["env_steps"] for r in records] == [600, 1000, 1200, 1600, 2000]
    last = records[-1]
    assert last["sweep/hidden_sizes"] == "16" and len(last["loss"]) == 8
    assert last["sweep/learning_rate"] == [1e-3] * 4 + [3e-4] * 4
    assert last["sweep/tau"] == [1.0, 1.0, 0.1, 0.1] * 2 and last["sweep/gamma"] == 0.97
    assert last["seed"] == [0, 1] * 4
    assert last["epsilon"] == pytest.approx([1 - 0.8 * 2000 / 100_000] * 8)
    assert (workdir / "program-0" / "checkpoints").is_dir()


def test_plot_draws_the_sensitivity_and_ranks_configurations(swept, tmp_path):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("dqnx_plot", ROOT / "scripts" / "plot.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    root, summary, _ = swept
    fields, points = plot.load_sweep(root / "sweep")
    assert fields == ["hidden_sizes", "learning_rate", "tau", "gamma", "epsilon_end"]
    assert len(points) == 8 and all(p.returns.size == 2 for p in points)
    best = max(points, key=lambda p: p.mean)
    assert best.mean == pytest.approx(np.mean(best.returns))
    table = plot.best_table(fields, points, top=3)
    assert table.splitlines()[2].startswith(f"| 1 | {plot._text(best.values['hidden_sizes'])} |")
    lines = plot.sensitivity("learning_rate", fields, points)
    assert len(lines) == 4  # one per setting of hidden_sizes and tau
    x, mean, _, _ = lines["hidden_sizes=16, tau=0.1, gamma=0.97, epsilon_end=0.2"]
    assert x.tolist() == [3e-4, 1e-3]
    runs = [r["eval_return"] for r in summary["runs"] if r["learning_rate"] == 3e-4
            and r["tau"] == 0.1 and list(r["hidden_sizes"]) == [16]]  # fmt: skip
    assert len(runs) == 2 and mean[0] == pytest.approx(np.mean(runs))
    out = tmp_path / "sensitivity.png"
    assert plot.main(["--sweep", str(root / "sweep"), "--out", str(out), "--top", "3"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_each_run_carries_the_command_that_reproduces_its_bits(swept, tmp_path):
    """A sweep's run entry holds the command line of its configuration with the
    sweep's device layout (here 2 devices, one run each at a time): run as it is,
    its first seed ends with the run's digest."""
    _, summary, _ = swept
    (entry,) = [r for r in summary["runs"] if list(r["hidden_sizes"]) == [32] and r["seed"] == 1
                and all(r[k] == v for k, v in MEMBER.items())]  # fmt: skip
    command = entry["command"]
    assert command.startswith("python experiments/run.py ")
    for flag in ("--seed=1", "--num_seeds=2", "--num_devices=2", "--seed_group_size=1",
                 "--gamma=0.97", "--tau=0.1", "--epsilon_end=0.2"):  # fmt: skip
        assert f" {flag}" in command, flag
    assert "--sweep" not in command
    r = subprocess.run(
        f"{command} --workdir={tmp_path / 'alone'}", shell=True, cwd=ROOT,
        capture_output=True, text=True,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    alone = json.loads((tmp_path / "alone" / "summary.json").read_text())
    assert alone["params_digest"][0] == entry["params_digest"]
