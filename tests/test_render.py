"""``python -m dqnx.evaluate --gif``: one greedy episode drawn with gymnax's visualizer."""

import json
import re

import jax
import numpy as np
import pytest
from tiny_configs import CARTPOLE

from dqnx import compiled, evaluate, train

TINY = CARTPOLE.replace(num_seeds=1, log_every=1_000, checkpoint_every=2_000, eval_every=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("render") / "cartpole"
    train.run(TINY, path, quiet=True)
    return path


def test_play_episode_stops_at_the_first_end_on_the_reached_state():
    fns = compiled.make_train_fns(TINY)
    params = fns.network.init(jax.random.key(0), np.zeros((1, 4), np.float32))  # untrained
    states, rewards, ended = evaluate.play_episode(fns, params, jax.random.key(0), max_steps=200)
    length = len(rewards)
    assert ended and 1 <= length < 200 and np.all(rewards == 1.0)
    assert states.x.shape == (length + 1,)
    np.testing.assert_array_equal(states.time, np.arange(length + 1))
    # Every state but the last is inside CartPole's bounds; the last one (the state the
    # final action reached, not gymnax's auto-reset one) is outside them.
    out = (np.abs(states.x) > 2.4) | (np.abs(states.theta) > 12 * 2 * np.pi / 360)
    assert not out[:-1].any() and out[-1]
    # The same episode cut short: max_steps frames + 1, not ended.
    states, rewards, ended = evaluate.play_episode(fns, params, jax.random.key(0), max_steps=2)
    assert not ended and len(rewards) == 2 and states.x.shape == (3,)


def test_gif_of_one_greedy_episode(workdir, tmp_path, capsys):
    pytest.importorskip("pygame")  # Gymnasium draws CartPole with it (dqnx[render])
    from PIL import Image

    gif = tmp_path / "out" / "episode.gif"
    args = ["--workdir", str(workdir), "--episodes", "2", "--gif", str(gif)]
    assert evaluate.main([*args, "--gif_max_steps", "20"]) == 0
    out = capsys.readouterr().out
    length, frames = map(int, re.search(r"(\d+) steps.* \((\d+) frames\)", out).groups())
    assert frames == length + 1 and 1 <= length <= 20
    assert (workdir / "evaluation.json").exists()  # the evaluation still runs
    assert gif.read_bytes()[:4] == b"GIF8"
    with Image.open(gif) as im:
        # One frame per state: the reset one, then one after each step.
        assert im.n_frames == frames > 1
        assert im.size[0] > 100 and im.size[1] > 100


def test_gif_refusals_are_one_line(workdir, tmp_path, capsys):
    saved = json.loads((workdir / "config.json").read_text())
    other = tmp_path / "deepsea"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(dict(saved, env_name="DeepSea-bsuite")))
    assert evaluate.main(["--workdir", str(other), "--gif", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: --gif: gymnax cannot draw DeepSea-bsuite; it draws ")
    assert "CartPole-v1" in err and "Breakout-MinAtar" in err
    args = ["--workdir", str(workdir), "--gif", str(tmp_path / "x.gif"), "--gif_seed", "1"]
    assert evaluate.main(args) == 2
    assert capsys.readouterr().err == "error: --gif_seed=1 must be in [0, 1) for this run\n"
    assert not (tmp_path / "x.gif").exists()
