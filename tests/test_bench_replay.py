"""Smoke tests of scripts/bench_replay.py, both modes, on tiny sizes in this process."""

import json
import math

import bench_replay
import pytest

OPS = {  # mode -> {buffer: operations}, flashbax's where it imports
    "uniform": {
        "dqnx": ["add", "sample"],
        "flashbax item": ["add", "sample"],
        "flashbax flat": ["add", "sample"],
    },
    "prioritized": {
        "dqnx": ["add", "sample"],
        "dqnx prioritized": ["add", "sample (sum tree)", "sample (cumsum)", "update_priorities"],
        "flashbax item": ["add", "sample"],
        "flashbax prioritized": [
            "add (scan)", "add (bincount)", "sample",
            "set_priorities (scan)", "set_priorities (bincount)",
        ],
    },
}  # fmt: skip


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def run(tmp_path_factory, argv):
    out = tmp_path_factory.mktemp("replay") / "replay.json"
    result = bench_replay.main([*argv, f"--out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    # The bool observations (their dtype must survive storage), timed in a scan too.
    argv = ["--capacities=320", "--batch=32", "--add=8", "--repeats=3", "--observations=minatar"]
    return run(tmp_path_factory, argv)


@pytest.fixture(scope="module")
def prioritized(tmp_path_factory):
    argv = ["--mode=prioritized", "--capacities=1024", "--batch=32", "--add=8", "--repeats=3"]
    return run(tmp_path_factory, [*argv, "--no-scan"])


def check_rows(result, scan: bool):
    has_flashbax = result["flashbax"] is not None
    expected = {
        (buffer, op)
        for buffer, ops in OPS[result["mode"]].items()
        for op in ops
        if has_flashbax or not buffer.startswith("flashbax")
    }
    assert {(r["buffer"], r["operation"]) for r in result["results"]} == expected
    for r in result["results"]:
        assert positive(r["compile_s"]) and positive(r["us"]), r
        assert positive(r["us_in_scan"]) if scan else "us_in_scan" not in r
        assert r["bytes_per_transition"] == r["state_bytes"] / r["capacity"]
    return {(r["buffer"], r["operation"]): r for r in result["results"]}


def test_uniform_mode(uniform):
    assert uniform["mode"] == "uniform" and uniform["observations"] == ["minatar"]
    rows = check_rows(uniform, scan=True)
    dqnx = rows["dqnx", "add"]
    assert dqnx["obs_bytes"] == 400  # bool[10, 10, 4]: one byte per cell
    # s and s' at their own dtype, plus action, reward, terminated.
    assert 2 * 400 + 9 <= dqnx["bytes_per_transition"] <= 2 * 400 + 16
    if uniform["flashbax"]:  # the item buffer: the same transitions; flat: each obs once
        item, flat = rows["flashbax item", "add"], rows["flashbax flat", "add"]
        assert item["bytes_per_transition"] == pytest.approx(dqnx["bytes_per_transition"], rel=0.05)
        assert flat["bytes_per_transition"] < dqnx["bytes_per_transition"]


def test_prioritized_mode(prioritized):
    assert prioritized["mode"] == "prioritized" and prioritized["capacities"] == [1024]
    assert prioritized["observations"] == ["cartpole"] and prioritized["batch"] == 32
    rows = check_rows(prioritized, scan=False)
    # The sum tree (2 * 1024 float32 leaves and nodes) on top of the transitions.
    extra = rows["dqnx prioritized", "add"]["state_bytes"] - rows["dqnx", "add"]["state_bytes"]
    assert 2 * 1024 * 4 <= extra <= 2 * 1024 * 4 + 64


def test_flashbax_is_measured_where_it_imports(uniform):
    pytest.importorskip("flashbax")
    assert uniform["flashbax"] and uniform["flashbax_error"] is None
