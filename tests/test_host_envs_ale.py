"""Tests for dqnx.host_envs.ale_env (ale-py's native vector env); skipped without ale-py."""

import numpy as np
import pytest

from dqnx.host_envs import env_seeds, host_env_spec, make_host_env

pytest.importorskip("ale_py", reason="ale-py not installed: pip install 'dqnx[atari]'")
from ale_py.vector_env import AtariVectorEnv  # noqa: E402


def _reference(game, num_envs, seed, **kwargs):
    """ALE's vector env with the settings ale_env uses, reset with the same seeds."""
    settings = dict(
        frameskip=4, noop_max=30, use_fire_reset=False, reward_clipping=False, num_threads=1
    )
    env = AtariVectorEnv(game, num_envs, **{**settings, **kwargs})
    env.reset(seed=env_seeds(seed, num_envs))
    return env


def test_pong_spec_shapes_and_dtypes():
    spec = host_env_spec("ale:pong")
    assert spec == ("ale:pong", 6, (4, 84, 84), np.dtype(np.uint8), 27_000)
    env = make_host_env("ale:pong", 2, seed=0, num_threads=1)
    obs = env.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[:, :3] == 0).all() and obs[:, 3].any()  # the stack is zero-filled at a reset
    s = env.step(np.array([0, 1]))
    env.close()
    assert s.obs.shape == s.next_obs.shape == (2, 4, 84, 84)
    assert s.obs.dtype == s.next_obs.dtype == np.uint8
    assert s.reward.dtype == s.episode_return.dtype == np.float32
    assert s.episode_length.dtype == np.int32
    for field in ("terminated", "truncated", "done", "valid"):
        assert getattr(s, field).dtype == np.bool_ and getattr(s, field).shape == (2,)
    assert s.valid.all()


def test_pong_forced_truncation_keeps_the_final_frame():
    # 40 emulator frames = 10 agent steps after the no-op start.
    env = make_host_env("ale:pong", 2, seed=4, max_num_frames_per_episode=40, num_threads=1)
    assert env.spec.max_episode_steps == 10
    ref = _reference(
        "pong", 2, 4, max_num_frames_per_episode=40, repeat_action_probability=0.25
    )  # NEXT_STEP: the truncating step returns the final frame as the observation
    prev = env.reset()
    actions = np.random.default_rng(0).integers(0, 6, (12, 2))
    for t, a in enumerate(actions[:10]):
        s = env.step(a)
        ref_obs, ref_r, _, ref_trunc, _ = ref.step(a)
        np.testing.assert_array_equal(s.next_obs, ref_obs)
        np.testing.assert_array_equal(s.reward, ref_r)
        np.testing.assert_array_equal(s.truncated, ref_trunc)
        if t < 9:
            np.testing.assert_array_equal(s.obs, s.next_obs)
            assert not s.done.any()
            prev = s.obs
    assert s.truncated.all() and s.done.all() and not s.terminated.any()
    np.testing.assert_array_equal(s.episode_length, [10, 10])
    np.testing.assert_array_equal(s.next_obs[:, :3], prev[:, 1:])  # the stack moved on by one
    assert (s.obs[:, :3] == 0).all()  # obs is the next episode's first stack
    assert not np.array_equal(s.obs, s.next_obs)
    again = env.step(actions[10])
    assert not again.done.any() and again.valid.all()
    env.close()


def _breakout_run(protocol_options, steps=260, seed=1):
    env = make_host_env("ale:breakout", 2, seed=seed, num_threads=1, **protocol_options)
    env.reset()
    actions = np.random.default_rng(seed).integers(0, 4, (steps, 2))
    out = [env.step(a) for a in actions]
    env.close()
    return actions, out


def test_breakout_nature_life_loss_is_terminated_not_done():
    actions, steps = _breakout_run({"protocol": "nature"})
    term = np.stack([s.terminated for s in steps])
    done = np.stack([s.done for s in steps])
    life_lost = term & ~done
    assert life_lost.any() and done.any()
    for s in steps:  # a lost life resets nothing: the action reached obs itself
        for i in np.flatnonzero(s.terminated & ~s.done):
            np.testing.assert_array_equal(s.obs[i], s.next_obs[i])
    for i in range(2):  # Breakout has 5 lives: 4 lost lives, then game over
        ends = np.flatnonzero(done[:, i])
        assert len(ends) >= 1
        assert life_lost[: ends[0], i].sum() == 4
        assert steps[ends[0]].terminated[i] and steps[ends[0]].episode_length[i] == ends[0] + 1
    # The same signal as ALE's own life_loss_info=True (same seeds, same actions).
    ref = _reference("breakout", 2, 1, life_loss_info=True, autoreset_mode="SameStep")
    ref_term = np.stack([ref.step(a)[2] for a in actions])
    np.testing.assert_array_equal(term, ref_term)
    # Evaluation envs: the same games, only game overs terminate.
    _, eval_steps = _breakout_run({"protocol": "nature", "evaluation": True})
    np.testing.assert_array_equal(np.stack([s.terminated for s in eval_steps]), done)
    np.testing.assert_array_equal(np.stack([s.done for s in eval_steps]), done)


def test_breakout_machado_has_no_life_loss_and_episode_stats_are_per_game():
    _, steps = _breakout_run({})
    term = np.stack([s.terminated for s in steps])
    done = np.stack([s.done for s in steps])
    np.testing.assert_array_equal(term, done)
    running = np.zeros(2)
    for s in steps:
        running += s.reward
        for i in np.flatnonzero(s.done):
            assert s.episode_return[i] == running[i]
        running[s.done] = 0
    assert done.any()


def test_ale_determinism():
    actions = np.random.default_rng(3).integers(0, 6, (20, 2))

    def rollout(seed):
        env = make_host_env("ale:pong", 2, seed=seed, num_threads=1)
        first = env.reset()
        obs = np.stack([env.step(a).next_obs for a in actions])
        env.close()
        return first, obs

    a, b, c = rollout(0), rollout(0), rollout(1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
