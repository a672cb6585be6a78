"""``scripts/device_check.sh --smoke`` runs on CPU and writes its three files.

The whole smoke check takes minutes on a 2-core CPU (ten processes, each
compiling); here it runs under a 30 s budget, so the steps that no longer fit
are skipped or cut off, as they would be on a slow accelerator machine, and
the report must still list every step. Skip it with ``-k "not device_check"``
or ``DQNX_SKIP_DEVICE_CHECK=1``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "devices", "tests", "seeds_cartpole", "seeds_breakout", "run_breakout",
    "bench_cartpole_float32", "bench_breakout_float32", "bench_cartpole_bfloat16",
    "bench_breakout_bfloat16", "bench_breakout_float32_conv_xla",
]  # fmt: skip


@pytest.mark.skipif(bool(os.environ.get("DQNX_SKIP_DEVICE_CHECK")), reason="asked to skip")
def test_device_check_smoke(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DQNX_CHECK_BUDGET_S": "30",
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("OUT", None)
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/device_check.sh"), "--smoke", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["device_check.json", "log.txt", "report.md"]
    result = json.loads((tmp_path / "out/device_check.json").read_text())
    steps = {s["name"]: s["status"] for s in result["steps"]}
    assert list(steps) == STEPS
    assert steps["devices"] == "ok" and result["devices"]["backend"] == "cpu"
    assert set(steps.values()) <= {"ok", "skipped", "timeout"}, steps  # nothing failed
    assert result["devices"]["platform_choices"]["conv_impl"] == "patches"
    report = (tmp_path / "out/report.md").read_text()
    for heading in ("## Steps", "## Aggregate env steps/s", "## Where an iteration goes"):
        assert heading in report
    assert all(f"| {name} |" in report for name in STEPS)


def test_device_report_renders_a_finished_check(tmp_path):
    """The report's tables from step files as a real check leaves them."""
    import device_report

    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "steps.jsonl").write_text(
        '{"name": "seeds_cartpole", "status": "ok", "rc": 0, "seconds": 9.5}\n'
    )
    (parts / "devices.json").write_text(
        json.dumps({"backend": "gpu", "device_kind": "NVIDIA H200", "devices": ["cuda:0"]})
    )
    rows = [(1, 2.1e5, 4.0), (512, 6.0e6, 8.0), (2048, 4.0e6, 12.0)]
    results = [
        {"num_seeds": s, "layout": [1, 1], "compile_s": c, "evaluate_compile_s": 1.0, "sps": sps}
        for s, sps, c in rows
    ]
    (parts / "seeds_cartpole.json").write_text(json.dumps({"results": results}))
    assert device_report.main(["report", str(parts), "--json", str(tmp_path / "all.json"),
                               "--md", str(tmp_path / "r.md")]) == 0  # fmt: skip
    md = (tmp_path / "r.md").read_text()
    assert "| cartpole | 512 | 1x1 | 8.0 (yes) | 1.0 | 6,000,000 | >= 5M at >= 512 | yes |" in md
    assert "| cartpole | 2048 | 1x1 | 12.0 (no) | 1.0 | 4,000,000 | >= 5M at >= 512 | no |" in md
    assert "989 TFLOP/s" in md  # the H200's dense bf16 peak
    # the merged JSON renders the same report again
    again = tmp_path / "again.md"
    device_report.main(["report", str(tmp_path / "all.json"), "--md", str(again)])
    assert again.read_text() == md
