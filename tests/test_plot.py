"""Tests for scripts/plot.py: loading runs, the table and the PNG (statistics: test_stats.py)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

mpl_image = pytest.importorskip("matplotlib.image")

_SPEC = importlib.util.spec_from_file_location(
    "dqnx_plot", Path(__file__).resolve().parents[1] / "scripts" / "plot.py"
)
plot = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(plot)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, env_name, eval_offset, seeds=3, chunks=6, eval_every=2, cut=False):
    """A synthetic run: train_return every chunk, eval_return every ``eval_every`` chunks."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"env_name": env_name, "num_seeds": seeds}))
    lines = []
    for c in range(1, chunks + 1):
        record = {
            "env_steps": 1000 * c,
            "sps": 5e4,
            "train_return": [10.0 * c + s for s in range(seeds)],
            "loss": [0.1] * seeds,
            "epsilon": 0.1,
        }
        if c == 1:
            record["train_return"][0] = None  # no episode finished in seed 0
        if c % eval_every == 0:
            record["eval_return"] = [eval_offset + 20.0 * c + 2 * s for s in range(seeds)]
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if cut:
        text += '{"env_steps": 7000, "sps": 1'  # a line cut by a crash
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def test_load_curve_keeps_only_evaluated_lines(tmp_path):
    run = _write_run(tmp_path / "a", "CartPole-v1", eval_offset=0.0, cut=True)
    curve = plot.load_curve(run)
    np.testing.assert_array_equal(curve.steps, [2000, 4000, 6000])
    np.testing.assert_allclose(curve.values[:, 0], [40.0, 80.0, 120.0])
    np.testing.assert_allclose(curve.values[-1], [120.0, 122.0, 124.0])
    assert curve.label == "CartPole-v1 (a)"
    train = plot.load_curve(run, "train_return", label="x")
    assert train.values.shape == (6, 3) and train.label == "x"
    assert math.isnan(train.values[0, 0])
    with pytest.raises(ValueError, match="no 'q_mean' values"):
        plot.load_curve(run, "q_mean")


def test_summary_and_table(tmp_path):
    run = _write_run(tmp_path / "CartPole-v1-1", "CartPole-v1", eval_offset=0.0)
    summary = plot.summarize(plot.load_curve(run))
    assert summary.label == "CartPole-v1-1"
    assert (summary.seeds, summary.env_steps) == (3, 6000)
    assert summary.mean == pytest.approx(122.0)
    assert summary.iqm == pytest.approx(122.0) and summary.iqm_is_mean
    assert (summary.min, summary.max) == (120.0, 124.0)
    assert 120.0 <= summary.ci_low <= 122.0 <= summary.ci_high <= 124.0
    table = plot.format_table([summary])
    assert table.splitlines()[0].startswith("| run | seeds | env steps | final mean | IQM |")
    assert "| CartPole-v1-1 | 3 | 6,000 | 122.00 | 122.00 (mean) | 120.00 | 124.00 |" in table
    assert "fewer than 4 seeds" in table


def test_main_writes_png_and_markdown_table(tmp_path, capsys):
    a = _write_run(tmp_path / "a", "CartPole-v1", eval_offset=0.0)
    b = _write_run(tmp_path / "b", "CartPole-v1", eval_offset=50.0, eval_every=3, cut=True)
    out, table = tmp_path / "curves.png", tmp_path / "final.md"
    argv = [str(a), str(b), "--out", str(out), "--labels", "double,vanilla", "--table", str(table)]
    assert plot.main(argv) == 0

    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    image = mpl_image.imread(out)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.01  # something was drawn
    text = table.read_text()
    assert "| double | 3 | 6,000 | 122.00 |" in text
    assert "| vanilla | 3 | 6,000 | 172.00 |" in text
    assert text in capsys.readouterr().out


def test_main_reports_bad_input(tmp_path, capsys):
    a = _write_run(tmp_path / "a", "CartPole-v1", eval_offset=0.0)
    assert plot.main([str(a), "--labels", "x,y", "--out", str(tmp_path / "p.png")]) == 2
    assert plot.main([str(tmp_path / "missing"), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "2 labels for 1 runs" in err and "has no metrics.jsonl" in err
    assert not (tmp_path / "p.png").exists()


def test_pooled_runs_join_their_seeds(tmp_path):
    import json as _json

    for name, value in (("s0", 1.0), ("s1", 3.0)):
        d = tmp_path / name
        d.mkdir()
        lines = [{"env_steps": s, "eval_return": [value * s]} for s in (10, 20)]
        lines.insert(1, {"env_steps": 15, "train_return": [0.0]})
        (d / "metrics.jsonl").write_text("".join(_json.dumps(x) + "\n" for x in lines))
    curve = plot.load_pooled(f"{tmp_path / 's0'}+{tmp_path / 's1'}", label="both")
    assert curve.label == "both" and curve.steps.tolist() == [10, 20]
    assert curve.values.tolist() == [[10.0, 30.0], [20.0, 60.0]]


def test_main_writes_next_to_the_run_by_default(tmp_path, monkeypatch, capsys):
    a = _write_run(tmp_path / "a", "CartPole-v1", eval_offset=0.0)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert plot.main([str(a)]) == 0
    assert (a / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not list(elsewhere.iterdir())  # nothing in the working directory
    assert f"wrote {a / 'curves.png'}" in capsys.readouterr().out
