"""Tests for dqnx/logging.py: CSV, TensorBoard, W&B, fan-out and progress output."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import sys

import numpy as np
import pytest

from dqnx import logging as dlog
from dqnx import progress as progress_lib
from dqnx.config import ConfigError


def _record(steps, train, loss, eval_return=None, eps=0.5):
    record = {
        "env_steps": steps,
        "sps": 1234.5,
        "train_return": np.asarray(train, np.float32),
        "episodes": np.asarray([3, 0, 2]),
        "loss": np.asarray(loss, np.float32),
        "epsilon": eps,
    }
    if eval_return is not None:
        record["eval_return"] = np.asarray(eval_return, np.float32)
    return record


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def _read_events(logdir):
    """(tag, step, value) of every scalar in the TFRecord event files under ``logdir``."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def _values_of(logdir, tag):
    return [(step, pytest.approx(v)) for t, step, v in _read_events(logdir) if t == tag]


def test_flatten_record_means_over_seeds_ignoring_nan():
    flat = dlog.flatten_record(_record(100, [1.0, np.nan, 5.0], [0.5, 0.25, 0.0]))
    assert flat["env_steps"] == 100 and flat["epsilon"] == 0.5
    assert flat["train_return"] == pytest.approx(3.0)
    assert math.isnan(flat["train_return/seed1"])
    assert flat["loss"] == pytest.approx(0.25)
    assert [flat[f"episodes/seed{i}"] for i in range(3)] == [3, 0, 2]
    assert math.isnan(dlog.flatten_record({"x": [None, float("nan")]})["x"])
    assert dlog.flatten_record({"x": [1.0, float("inf")]})["x"] == math.inf


def test_csv_columns_means_and_per_seed_values(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = dlog.CsvWriter(path)
    writer.write(_record(100, [1.0, 2.0, 6.0], [0.5, 0.25, 0.0]))
    writer.write(_record(200, [np.nan, 4.0, 8.0], [1.0, 1.0, 1.0], eval_return=[10, 20, 60]))
    writer.close()

    header, rows = _read_csv(path)
    assert header[:6] == [
        "env_steps",
        "sps",
        "train_return",
        "train_return/seed0",
        "train_return/seed1",
        "train_return/seed2",
    ]
    assert header[-4:] == ["eval_return", *(f"eval_return/seed{i}" for i in range(3))]
    assert len(rows) == 2
    assert [r["env_steps"] for r in rows] == ["100", "200"]
    assert float(rows[0]["train_return"]) == pytest.approx(3.0)
    assert float(rows[0]["loss"]) == pytest.approx(0.25)
    assert float(rows[0]["train_return/seed2"]) == 6.0
    assert rows[0]["eval_return"] == ""  # not evaluated on the first chunk
    assert rows[1]["train_return/seed0"] == ""  # NaN: no episode finished
    assert float(rows[1]["train_return"]) == pytest.approx(6.0)
    assert float(rows[1]["eval_return"]) == pytest.approx(30.0)
    assert float(rows[1]["eval_return/seed1"]) == 20.0


def test_csv_resume_appends_under_the_existing_header(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = dlog.CsvWriter(path)
    writer.write(_record(100, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], eval_return=[1, 2, 3]))
    writer.close()
    header_before, _ = _read_csv(path)

    writer = dlog.CsvWriter(path)  # resumed run, first chunk not evaluated
    writer.write(_record(200, [4.0, 5.0, 6.0], [0.1, 0.2, 0.3]))
    writer.close()

    text = path.read_text()
    assert text.count("env_steps") == 1
    header, rows = _read_csv(path)
    assert header == header_before
    assert [r["env_steps"] for r in rows] == ["100", "200"]
    assert float(rows[1]["train_return"]) == pytest.approx(5.0)
    assert rows[1]["eval_return"] == ""


def test_csv_declared_fieldnames_come_first(tmp_path):
    path = tmp_path / "m.csv"
    writer = dlog.CsvWriter(path, fieldnames=["env_steps", "eval_return"])
    writer.write({"env_steps": 5, "sps": 2.0})
    writer.close()
    header, rows = _read_csv(path)
    assert header == ["env_steps", "eval_return", "sps"]
    assert rows == [{"env_steps": "5", "eval_return": "", "sps": "2.0"}]


def test_tensorboard_scalars_round_trip(tmp_path):
    writer = dlog.TensorBoardWriter(tmp_path / "tb")
    writer.write(_record(100, [1.0, np.nan, 5.0], [0.5, 0.25, 0.0]))
    writer.write(_record(200, [2.0, 4.0, 6.0], [0.1, 0.2, 0.3], eval_return=[7, 8, 9]))
    writer.close()

    events = _read_events(tmp_path / "tb")
    values = {(tag, step): value for tag, step, value in events}
    assert values[("train_return", 100)] == pytest.approx(3.0)
    assert values[("train_return/seed2", 100)] == pytest.approx(5.0)
    assert ("train_return/seed1", 100) not in values  # NaN is left out
    assert values[("train_return/seed1", 200)] == pytest.approx(4.0)
    assert values[("loss", 100)] == pytest.approx(0.25)
    assert values[("eval_return", 200)] == pytest.approx(8.0)
    assert values[("epsilon", 200)] == pytest.approx(0.5)
    assert values[("sps", 100)] == pytest.approx(1234.5)
    assert ("eval_return", 100) not in values
    assert not any(tag == "env_steps" for tag, _, _ in events)


def test_metric_writers_fan_out(tmp_path):
    with dlog.MetricWriters(tmp_path / "run", config={"env_name": "CartPole-v1"}) as writers:
        writers.write(_record(100, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], eval_return=[4, 5, 6]))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["eval_return"] == [4.0, 5.0, 6.0]
    _, rows = _read_csv(tmp_path / "run" / "metrics.csv")
    assert float(rows[0]["eval_return"]) == pytest.approx(5.0)
    assert _values_of(tmp_path / "run" / "tensorboard", "train_return") == [(100, 2.0)]


def test_resumed_tensorboard_purges_steps_past_the_checkpoint(tmp_path):
    from tensorboardX.proto import event_pb2

    with dlog.MetricWriters(tmp_path, resume_step=300) as writers:
        writers.write(_record(400, [1.0], [0.1]))
    (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    data, starts, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        if event.session_log.status == event_pb2.SessionLog.START:
            starts.append(event.step)
    assert starts == [301]  # TensorBoard drops older events at steps >= 301
    assert _values_of(tmp_path / "tensorboard", "loss") == [(400, 0.1)]


def test_remove_outputs_clears_an_earlier_run(tmp_path):
    with dlog.MetricWriters(tmp_path) as writers:
        writers.write(_record(1, [1.0], [0.1]))
    (tmp_path / "config.json").write_text("{}")
    dlog.remove_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_metric_writers_without_tensorboard(tmp_path):
    with dlog.MetricWriters(tmp_path, tensorboard=False) as writers:
        writers.write(_record(1, [1.0], [0.1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.jsonl"]


def test_metric_writers_on_other_processes_write_nothing(tmp_path):
    workdir = tmp_path / "run"
    with dlog.MetricWriters(workdir, is_main_process=False) as writers:
        writers.write(_record(100, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3]))
    assert not workdir.exists()


def test_wandb_missing_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(dlog.MissingDependencyError, match="pip install wandb") as info:
        dlog.WandbWriter("proj", {"seed": 0})
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ImportError)
    with pytest.raises(ConfigError, match="pip install wandb"):
        dlog.MetricWriters(tmp_path / "run", wandb_project="proj")
    assert not (tmp_path / "run").exists()  # nothing written before failing


def test_tensorboard_missing_is_reported_at_construction(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(dlog.MissingDependencyError, match="pip install tensorboardX"):
        dlog.TensorBoardWriter(tmp_path / "tb")
    with dlog.MetricWriters(tmp_path, tensorboard=False) as writers:  # not asked: fine
        writers.write(_record(1, [1.0], [0.1]))


def test_progress_prints_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = progress_lib.Progress(1000, use_bar=None, file=out)  # StringIO is not a TTY
    assert not progress.uses_bar
    progress.update(_record(500, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3]), eta_s=75)
    progress.update(_record(1000, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], eval_return=[9, 9, 9]))
    progress.write("done")
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("steps        500/1,000 ( 50.0%)")
    # A sweep's runs may each have their own epsilon: the line shows their mean.
    runs = progress_lib.console_line(_record(500, [1.0, 2.0], [0.1, 0.2], eps=[0.1, 0.3]), 1000, 0)
    assert runs.endswith("| eps 0.200")
    assert "ETA 0:01:15" in lines[0] and "return     2.00" in lines[0]
    assert "eval     9.00" in lines[1] and "ETA 0:00:00" in lines[1]
    assert lines[2] == "done"


def test_progress_bar_shows_steps_and_postfix():
    out = io.StringIO()
    progress = progress_lib.Progress(1_000_000, initial=100_000, use_bar=True, file=out)
    assert progress.uses_bar
    progress.update(_record(500_000, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], eval_return=[7, 8, 9]))
    progress.update(_record(550_000, [4.0, 5.0, 6.0], [0.1, 0.2, 0.3], eps=[0.1, 0.2]))
    progress.update(_record(600_000, [4.0, 5.0, 6.0], [0.1, 0.2, 0.3], eps=0.25))
    progress.write("message")
    progress.close()
    text = out.getvalue()
    assert "600k/1.00M" in text and " 60%|" in text
    last = [part for part in text.split("\r") if "600k/" in part][-1]
    assert "1.2k sps | return 5.00 | eval 8.00 | loss 0.2000 | eps 0.250" in last
    assert "message" in text


def test_progress_disabled_prints_nothing():
    out = io.StringIO()
    progress = progress_lib.Progress(10, use_bar=True, file=out, enabled=False)
    progress.update(_record(5, [1.0], [0.1]))
    progress.write("x")
    progress.close()
    assert out.getvalue() == ""


def test_progress_picks_the_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = progress_lib.Progress(100, file=out)
    assert progress.uses_bar
    progress.update(_record(50, [1.0], [0.1]))
    progress.close()
    assert "50/100" in out.getvalue() and "\r" in out.getvalue()
