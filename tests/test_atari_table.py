"""scripts/atari_table.py: human-normalized scores and their aggregates."""

import json

import atari_table
import pytest


def fake_run(path, game, returns):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"env_name": f"ale:{game}"}))
    (path / "summary.json").write_text(json.dumps({"eval_return_per_seed": returns}))
    return path


def test_normalized_scores_and_aggregates(tmp_path, capsys):
    runs = [
        fake_run(tmp_path / "a", "pong", [-20.7, 14.6]),  # mean -3.05: 0.5 normalized
        fake_run(tmp_path / "b", "pong", [-3.05]),
        fake_run(tmp_path / "c", "breakout", [30.5]),  # human: 1.0
        fake_run(tmp_path / "d", "boxing", [0.1]),  # random: 0.0
        fake_run(tmp_path / "e", "freeway", [59.2]),  # 2.0
    ]
    assert atari_table.main([str(r) for r in runs] + [f"--json={tmp_path / 't.json'}"]) == 0
    numbers = json.loads((tmp_path / "t.json").read_text())
    assert numbers["per_game"]["pong"] == pytest.approx(0.5)
    assert numbers["per_game"]["breakout"] == pytest.approx(1.0)
    assert numbers["per_game"]["boxing"] == pytest.approx(0.0)
    assert numbers["mean"] == pytest.approx(3.5 / 4)
    assert numbers["median"] == pytest.approx(0.75)
    # IQM of [0, 0.5, 1, 2]: the middle two, 0.5 and 1.
    assert numbers["iqm"] == pytest.approx(0.75)
    assert "| pong | 3 |" in capsys.readouterr().out


def test_iqm_trims_whole_games():
    # 5 games: floor(5 / 4) = 1 dropped from each end (stats.py, rliable's IQM).
    normalized = {"pong": 0.0, "boxing": 1.0, "breakout": 2.0, "enduro": 3.0, "freeway": 100.0}
    games = {}
    for game, x in normalized.items():
        random, human = atari_table.REFERENCE[game]
        games[game] = [random + x * (human - random)]
    _, numbers = atari_table.table(games)
    assert numbers["iqm"] == pytest.approx((1 + 2 + 3) / 3)
    assert numbers["median"] == pytest.approx(2.0)


def test_not_an_atari_run_is_an_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"env_name": "CartPole-v1"}))
    (run / "summary.json").write_text(json.dumps({"eval_return_per_seed": [1.0]}))
    with pytest.raises(SystemExit, match="not one of the 57"):
        atari_table.main([str(run)])
