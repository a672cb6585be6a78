"""Smoke test of scripts/bench_replay_prioritized.py on tiny sizes, in this process."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DQNX_ROWS = {
    "uniform add",
    "uniform sample",
    "prioritized add",
    "prioritized sample (sum tree)",
    "prioritized sample (cumsum)",
    "prioritized update_priorities",
}
FLASHBAX_ROWS = {
    "flashbax uniform add",
    "flashbax uniform sample",
    "flashbax prioritized add (scan)",
    "flashbax prioritized add (bincount)",
    "flashbax prioritized sample",
    "flashbax prioritized set_priorities (scan)",
    "flashbax prioritized set_priorities (bincount)",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    spec = importlib.util.spec_from_file_location(
        "bench_replay_prioritized", ROOT / "scripts" / "bench_replay_prioritized.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("per") / "per.json"
    argv = ["--capacities=1024", "--batch_size=32", "--add_size=8", "--repeats=3", f"--out={out}"]
    result = module.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_every_row_has_positive_finite_us(result):
    assert result["capacities"] == [1024] and result["batch_size"] == 32
    assert result["results"]
    for row in result["results"]:
        assert row["capacity"] == 1024
        assert math.isfinite(row["us"]) and row["us"] > 0, row
    assert {r["operation"] for r in result["results"]} >= DQNX_ROWS


def test_flashbax_rows(result):
    pytest.importorskip("flashbax")
    assert result["flashbax"] and result["flashbax_error"] is None
    assert {r["operation"] for r in result["results"]} == DQNX_ROWS | FLASHBAX_ROWS
