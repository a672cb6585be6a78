"""Tests for dqnx.host_envs: the step contract, Gymnasium, MinAtar and names."""

import re
import sys

import numpy as np
import pytest

from dqnx.errors import ConfigError
from dqnx.host_envs import (
    HostEnv,
    check_host_env_name,
    env_seeds,
    host_env_spec,
    is_host_env_name,
    make_host_env,
    make_scripted_env,
)

gymnasium = pytest.importorskip("gymnasium", reason="gymnasium not installed: dqnx[host]")


def _run(env, actions_per_step):
    """Steps ``env`` through ``actions_per_step`` [T, N]; returns the HostSteps."""
    return [env.step(np.asarray(a)) for a in actions_per_step]


def _stack(steps, field):
    return np.stack([getattr(s, field) for s in steps])  # [T, N, ...]


# --- scripted env: both autoreset conventions, exactly -------------------------------


def test_scripted_same_step_every_transition():
    # env 0 terminates at 3 steps; env 1 is truncated at 2 steps.
    env = make_scripted_env(2, terminate_at=[3, None], truncate_at=[None, 2], num_actions=3)
    assert isinstance(env, HostEnv) and env.spec.max_episode_steps is None
    np.testing.assert_array_equal(env.reset(), [[0, 0, 0], [1, 0, 0]])
    steps = _run(env, [[2, 1]] * 6)
    np.testing.assert_array_equal(
        _stack(steps, "next_obs"),
        [
            [[0, 0, 1], [1, 0, 1]],
            [[0, 0, 2], [1, 0, 2]],  # env 1: final observation of a truncated episode
            [[0, 0, 3], [1, 1, 1]],  # env 0: final observation of a terminated episode
            [[0, 1, 1], [1, 1, 2]],
            [[0, 1, 2], [1, 2, 1]],
            [[0, 1, 3], [1, 2, 2]],
        ],
    )
    np.testing.assert_array_equal(
        _stack(steps, "obs"),
        [
            [[0, 0, 1], [1, 0, 1]],
            [[0, 0, 2], [1, 1, 0]],  # reset in the same step
            [[0, 1, 0], [1, 1, 1]],
            [[0, 1, 1], [1, 2, 0]],
            [[0, 1, 2], [1, 2, 1]],
            [[0, 2, 0], [1, 3, 0]],
        ],
    )
    term = _stack(steps, "terminated")
    trunc = _stack(steps, "truncated")
    np.testing.assert_array_equal(term[:, 0], [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(trunc[:, 1], [0, 1, 0, 1, 0, 1])
    assert not term[:, 1].any() and not trunc[:, 0].any()
    np.testing.assert_array_equal(_stack(steps, "done"), term | trunc)
    assert _stack(steps, "valid").all()
    done = _stack(steps, "done")
    np.testing.assert_array_equal(_stack(steps, "episode_return")[done], [2, 6, 2, 6, 2])
    np.testing.assert_array_equal(_stack(steps, "episode_length")[done], [2, 3, 2, 3, 2])
    assert _stack(steps, "reward").dtype == np.float32
    np.testing.assert_array_equal(_stack(steps, "reward"), [[2, 1]] * 6)


def test_scripted_next_step_marks_the_reset_step_invalid():
    env = make_scripted_env(
        2, terminate_at=[3, None], truncate_at=[None, 2], num_actions=3, autoreset="next_step"
    )
    env.reset()
    steps = _run(env, [[2, 1]] * 8)
    next_obs = _stack(steps, "next_obs")
    np.testing.assert_array_equal(
        next_obs[:, 0],
        [[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 1, 3], [0, 2, 0]],
    )
    np.testing.assert_array_equal(
        next_obs[:, 1],
        [[1, 0, 1], [1, 0, 2], [1, 1, 0], [1, 1, 1], [1, 1, 2], [1, 2, 0], [1, 2, 1], [1, 2, 2]],
    )
    # The library hands back the final observation to act on; the next step resets.
    np.testing.assert_array_equal(_stack(steps, "obs"), next_obs)
    valid = _stack(steps, "valid")
    np.testing.assert_array_equal(valid[:, 0], [1, 1, 1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(valid[:, 1], [1, 1, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(_stack(steps, "terminated")[:, 0], [0, 0, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(_stack(steps, "truncated")[:, 1], [0, 1, 0, 0, 1, 0, 0, 1])
    done = _stack(steps, "done")
    np.testing.assert_array_equal(done, _stack(steps, "terminated") | _stack(steps, "truncated"))
    # The discarded actions earn nothing and count no step.
    np.testing.assert_array_equal(_stack(steps, "reward"), valid * np.array([2, 1]))
    np.testing.assert_array_equal(_stack(steps, "episode_return")[done], [2, 6, 2, 6, 2])
    np.testing.assert_array_equal(_stack(steps, "episode_length")[done], [2, 3, 2, 3, 2])


def test_scripted_termination_wins_a_tie_and_bad_actions_raise():
    env = make_scripted_env(1, terminate_at=2, truncate_at=2)
    env.reset()
    first, second = _run(env, [[0], [1]])
    assert not first.done[0]
    assert second.terminated[0] and not second.truncated[0] and second.done[0]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        env.step(np.array([2]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([0, 1]))


# --- Gymnasium ----------------------------------------------------------------------


def _cartpole_reference(seeds, actions, max_steps, next_step):
    """Per-env streams of single (non-vector) CartPole envs: what each HostStep should hold."""
    expected = []
    for i, seed in enumerate(seeds):
        env = gymnasium.make("CartPole-v1", max_episode_steps=max_steps)
        obs, _ = env.reset(seed=int(seed))
        rows, pending = [], False
        for a in actions[:, i]:
            if pending:  # next-step reset: action discarded
                obs, _ = env.reset()
                rows.append((obs, obs, 0.0, False, False, False))
                pending = False
                continue
            nxt, r, term, trunc, _ = env.step(int(a))
            if (term or trunc) and not next_step:
                obs, _ = env.reset()
            else:
                obs, pending = nxt, term or trunc
            rows.append((obs, nxt, r, term, trunc, True))
        expected.append(rows)
    return expected


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("autoreset", ["same_step", "next_step"])
def test_cartpole_matches_single_envs_at_every_step(asynchronous, autoreset):
    n, steps_count, limit = 2, 24, 6
    actions = np.random.default_rng(0).integers(0, 2, (steps_count, n))
    env = make_host_env(
        "gymnasium:CartPole-v1",
        n,
        seed=3,
        asynchronous=asynchronous,
        autoreset=autoreset,
        max_episode_steps=limit,
    )
    assert env.spec.max_episode_steps == limit and env.spec.obs_dtype == np.float32
    try:
        obs0 = env.reset()
        steps = _run(env, actions)
    finally:
        env.close()
    expected = _cartpole_reference(env_seeds(3, n), actions, limit, autoreset == "next_step")
    for i in range(n):
        ref0 = gymnasium.make("CartPole-v1").reset(seed=int(env_seeds(3, n)[i]))[0]
        np.testing.assert_array_equal(obs0[i], ref0.astype(np.float32))
        for t, (obs, nxt, r, term, trunc, valid) in enumerate(expected[i]):
            s = steps[t]
            np.testing.assert_array_equal(s.obs[i], obs.astype(np.float32))
            np.testing.assert_array_equal(s.next_obs[i], nxt.astype(np.float32))
            assert (s.reward[i], s.terminated[i], s.truncated[i], s.valid[i]) == (
                r,
                term,
                trunc,
                valid,
            )
    trunc = _stack(steps, "truncated")
    assert trunc.sum() >= 2  # the final observation at a time limit was checked
    np.testing.assert_array_equal(_stack(steps, "episode_length")[trunc], limit)


def test_cartpole_determinism():
    actions = np.random.default_rng(1).integers(0, 2, (30, 2))

    def rollout(seed):
        env = make_host_env("gymnasium:CartPole-v1", 2, seed=seed)
        first = env.reset()
        steps = _run(env, actions)
        env.close()
        return first, _stack(steps, "next_obs"), _stack(steps, "reward")

    a, b, c = rollout(5), rollout(5), rollout(6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[0][0], a[0][1])  # each env has its own seed


# --- MinAtar ------------------------------------------------------------------------


def test_minatar_breakout_shapes_returns_and_time_limit():
    pytest.importorskip("minatar", reason="minatar not installed: dqnx[host]")
    env = make_host_env("minatar:breakout", 3, seed=0, max_episode_steps=25)
    assert env.spec.num_actions == 3  # minimal set n, l, r (as gymnax's Breakout-MinAtar)
    obs = env.reset()
    assert obs.shape == (3, 10, 10, 4) and obs.dtype == np.bool_
    rng = np.random.default_rng(0)
    running = np.zeros(3)
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(300):
        s = env.step(rng.integers(0, 3, 3))
        assert s.obs.dtype == s.next_obs.dtype == np.bool_ and s.next_obs.shape == (3, 10, 10, 4)
        running += s.reward
        for i in np.flatnonzero(s.done):
            assert s.episode_return[i] == running[i]
            assert s.episode_length[i] <= 25
            ends["terminated" if s.terminated[i] else "truncated"] += 1
            assert s.truncated[i] == (s.episode_length[i] == 25 and not s.terminated[i])
        running[s.done] = 0
        # The ball is on the board both in the reset observation and the final one.
        assert s.obs[..., 1].sum() == s.next_obs[..., 1].sum() == 3
    assert ends["terminated"] >= 3 and ends["truncated"] >= 3
    assert host_env_spec("minatar:breakout", full_action_set=True).num_actions == 6


def test_minatar_determinism_and_layout_matches_gymnax():
    pytest.importorskip("minatar", reason="minatar not installed: dqnx[host]")
    actions = np.random.default_rng(2).integers(0, 3, (60, 4))

    def rollout(seed):
        env = make_host_env("minatar:breakout", 4, seed=seed)
        first = env.reset()
        steps = _run(env, actions)
        return first, _stack(steps, "next_obs"), _stack(steps, "reward")

    a, b, c = rollout(7), rollout(7), rollout(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])

    # gymnax's Breakout-MinAtar starts in one of two states (ball left or right);
    # MinAtar's reset observations are exactly those, channel for channel.
    gymnax = pytest.importorskip("gymnax")
    import jax

    genv, params = gymnax.make("Breakout-MinAtar")
    starts = {
        np.asarray(genv.reset(jax.random.key(k), params)[0] > 0.5).tobytes() for k in range(8)
    }
    assert len(starts) == 2
    assert {o.tobytes() for o in a[0]} <= starts


# --- names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, hint",
    [
        ("gymnasium:CartPol-v1", "did you mean gymnasium:CartPole-v1"),
        ("minatar:brekout", "did you mean minatar:breakout"),
        ("ale:pongg", "did you mean ale:pong"),
        ("foo:bar", "host libraries: gymnasium:, minatar:, ale:, envpool:; compiled: craftax:"),
        (
            "pgxx:tic_tac_toe",
            "unknown env library 'pgxx:' in 'pgxx:tic_tac_toe' (did you mean pgx?)",
        ),
        ("CartPole-v1", "not a host env name"),
    ],
)
def test_unknown_names_are_one_line_errors_with_suggestions(name, hint):
    if name.startswith("ale:"):
        pytest.importorskip("ale_py", reason="ale-py not installed: dqnx[atari]")
    with pytest.raises(ConfigError) as e:
        check_host_env_name(name)
    assert hint in str(e.value) and "\n" not in str(e.value)


def test_names_options_and_missing_packages(monkeypatch):
    assert is_host_env_name("ale:pong") and is_host_env_name("minatar:breakout")
    assert not is_host_env_name("CartPole-v1") and not is_host_env_name("foo:bar")
    check_host_env_name("gymnasium:CartPole-v1")
    with pytest.raises(ConfigError, match="DQN needs Discrete"):
        host_env_spec("gymnasium:Pendulum-v1")
    with pytest.raises(ConfigError, match="unknown option 'asynchronus'.*asynchronous"):
        make_host_env("gymnasium:CartPole-v1", 2, asynchronus=True)
    for module, name, extra in [
        ("minatar", "minatar:breakout", "dqnx[host]"),
        ("gymnasium", "gymnasium:CartPole-v1", "dqnx[host]"),
        ("ale_py", "ale:pong", "dqnx[atari]"),
        ("envpool", "envpool:pong", "dqnx[envpool]"),
    ]:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)
            with pytest.raises(ConfigError, match=re.escape(f"pip install '{extra}'")) as e:
                check_host_env_name(name)
            assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name,suggestion", [("ALE/Pong-v5", "ale:pong"), ("ALE/SpaceInvaders-v5", "ale:space_invaders")]
)
def test_gymnasium_atari_names_point_to_ale(name, suggestion):
    pytest.importorskip("gymnasium")
    with pytest.raises(ConfigError, match=f"--env_name={suggestion}$"):
        check_host_env_name(f"gymnasium:{name}")
