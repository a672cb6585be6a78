"""scripts/minatar_aggregate.py on the recorded MinAtar runs, against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import minatar_aggregate
import numpy as np
import pytest

pytest.importorskip("matplotlib")

RECORDS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "minatar"
GAMES = ["asterix", "breakout", "freeway", "seaquest", "space_invaders"]
REPS = 300


def final_returns(game: str, learner: str) -> np.ndarray:
    summary = json.loads((RECORDS / f"{game}-{learner}" / "summary.json").read_text())
    return np.array(summary["eval_return_per_seed"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("aggregate")
    argv = [f"--records={RECORDS}", f"--out={out / 'a.png'}", f"--table={out / 'a.md'}"]
    result = minatar_aggregate.main([*argv, f"--reps={REPS}", "--profile_reps=50"])
    return result, out


def direct_scores(learner: str) -> np.ndarray:
    """[seeds, games]: each return over Double DQN's mean on that game."""
    columns = [final_returns(g, learner) / final_returns(g, "dqn").mean() for g in GAMES]
    return np.stack(columns, axis=1)


def test_iqm_and_interval_match_a_direct_computation(run):
    result, _ = run
    assert result["games"] == GAMES
    assert set(result["learners"]) == {"dqn", "mdqn", "qr", "rainbow_full"}
    for learner, r in result["learners"].items():
        x = direct_scores(learner)  # [3, 5]: 15 scores, IQM drops 3 from each end
        assert r["iqm"].point == pytest.approx(np.sort(x.ravel())[3:12].mean())
        assert r["mean"].point == pytest.approx(x.mean())
        idx = np.random.default_rng(0).integers(0, 3, size=(REPS, 3, 5))
        iqms = [np.sort(x[idx[b], np.arange(5)].ravel())[3:12].mean() for b in range(REPS)]
        assert r["iqm"].low == pytest.approx(np.quantile(iqms, 0.025))
        assert r["iqm"].high == pytest.approx(np.quantile(iqms, 0.975))
        taus = result["taus"]
        expected = [(x > t).mean() for t in taus]
        np.testing.assert_allclose(r["profile"].point, expected)
    np.testing.assert_allclose(result["learners"]["dqn"]["per_game"], 1.0)


def test_writes_the_table_and_the_figure(run):
    result, out = run
    text = (out / "a.md").read_text()
    iqm = result["learners"]["rainbow_full"]["iqm"]
    row = f"| Rainbow-full | 15 | {iqm.point:.3f} | [{iqm.low:.3f}, {iqm.high:.3f}] |"
    assert row in text
    assert "normalized per game by Double DQN's mean" in text
    assert (out / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_learner_missing_a_game_is_left_out(tmp_path, capsys):
    for game in GAMES[:2]:
        for learner in ("dqn", "qr"):
            (tmp_path / f"{game}-{learner}").mkdir()
            summary = {"eval_return_per_seed": list(final_returns(game, learner))}
            (tmp_path / f"{game}-{learner}" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "freeway-dqn").mkdir()
    summary = {"eval_return_per_seed": list(final_returns("freeway", "dqn"))}
    (tmp_path / "freeway-dqn" / "summary.json").write_text(json.dumps(summary))
    argv = [f"--records={tmp_path}", f"--out={tmp_path / 'a.png'}", f"--table={tmp_path / 'a.md'}"]
    result = minatar_aggregate.main([*argv, "--reps=20", "--profile_reps=10"])
    assert list(result["learners"]) == ["dqn"]
    assert "left out: qr" in capsys.readouterr().out
