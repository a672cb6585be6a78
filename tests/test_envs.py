import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import envs, xla
from dqnx.config import ConfigError

DISCRETE = envs.discrete_env_names()


def test_discrete_envs_listed():
    for name in [
        "CartPole-v1",
        "Acrobot-v1",
        "MountainCar-v0",
        "Breakout-MinAtar",
        "Asterix-MinAtar",
        "Freeway-MinAtar",
        "Seaquest-MinAtar",
        "SpaceInvaders-MinAtar",
        "Catch-bsuite",
        "DeepSea-bsuite",
        "FourRooms-misc",
    ]:
        assert name in DISCRETE
    assert "Pendulum-v1" not in DISCRETE


@pytest.mark.parametrize("name", DISCRETE)
def test_every_discrete_env_steps(name):
    env = envs.make(name)
    n = 4

    @jax.jit
    def run(key):
        obs, state = jax.vmap(env.reset)(jax.random.split(key, n))

        def body(carry, k):
            state = carry
            k_a, k_s = jax.random.split(k)
            a = jax.random.randint(k_a, (n,), 0, env.spec.num_actions)
            state, step = jax.vmap(env.step)(jax.random.split(k_s, n), state, a)
            return state, step

        return obs, jax.lax.scan(body, state, jax.random.split(key, 20))[1]

    # Compiled as dqnx compiles the programs whose speed hardly matters.
    key = jax.random.key(0)
    obs, steps = xla.compile(run.lower(key), xla.program_options(hot=False, run_once=True))(key)
    assert obs.shape == (n, *env.spec.obs_shape) and obs.dtype == env.spec.obs_dtype
    assert steps.next_obs.shape == (20, n, *env.spec.obs_shape)
    assert steps.reward.dtype == jnp.float32
    assert not bool(jnp.any(steps.terminated & steps.truncated))
    if name.endswith("MinAtar"):
        assert env.spec.obs_dtype == np.bool_


def test_truncation_is_not_termination():
    env = envs.make("CartPole-v1", max_steps_in_episode=5)
    obs, state = env.reset(jax.random.key(0))
    step_fn = jax.jit(env.step)
    for t in range(5):
        state, step = step_fn(jax.random.key(t + 1), state, jnp.int32(t % 2))
        if t < 4:
            assert not bool(step.done)
            np.testing.assert_array_equal(step.obs, step.next_obs)
    assert bool(step.truncated) and not bool(step.terminated)
    assert float(step.episode_return) == 5.0 and int(step.episode_length) == 5
    # the true final observation is kept for bootstrapping; obs is the reset one
    assert not np.allclose(step.next_obs, step.obs)
    assert float(state.episode_return) == 0.0 and int(state.inner.time) == 0


def test_termination_reported_with_final_obs():
    env = envs.make("CartPole-v1")
    obs, state = env.reset(jax.random.key(0))
    step_fn = jax.jit(env.step)
    for t in range(100):
        state, step = step_fn(jax.random.key(t), state, jnp.int32(1))  # always push right
        if bool(step.done):
            break
    assert bool(step.terminated) and not bool(step.truncated)
    # the pole fell or the cart left: the final observation is outside the bounds
    x, theta = float(step.next_obs[0]), float(step.next_obs[2])
    assert abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360
    assert float(step.episode_return) == t + 1


def test_minatar_bool_is_lossless():
    import gymnax

    env = envs.make("Breakout-MinAtar")
    genv, params = gymnax.make("Breakout-MinAtar")
    raw, _ = genv.reset(jax.random.key(3), params)
    obs, _ = env.reset(jax.random.key(3))
    assert set(np.unique(np.asarray(raw)).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(obs, np.float32), np.asarray(raw))


@pytest.mark.parametrize(
    "name,message",
    [
        ("CartPole-v2", "did you mean CartPole-v1"),
        ("Pendulum-v1", "continuous"),
        ("MNISTBandit-bsuite", "downloads"),
    ],
)
def test_bad_env_names(name, message):
    with pytest.raises(ConfigError, match=message):
        envs.check_env_name(name)


def test_gymnax_drawing_modules_load_on_first_use():
    """gymnax imports seaborn and pyplot for drawing only: dqnx defers them until
    an attribute is read, and they then work as usual."""
    code = """
import sys
from dqnx import envs
envs.make("CartPole-v1")
print(type(sys.modules["seaborn"]).__name__, "scipy.stats" in sys.modules)
import gymnax.environments.misc.pong as pong
print(len(pong.sns.color_palette("cubehelix", 3)), type(sys.modules["seaborn"]).__name__)
import matplotlib.pyplot as plt
print(callable(plt.figure))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["_OnFirstUse", "False", "3", "module", "True"]


def test_normalize_obs_maps_bounded_components_onto_unit_interval():
    import gymnax

    # MountainCar: position in [-1.2, 0.6], velocity in [-0.07, 0.07] (gymnax's
    # constants); scaled by hand: (x - (-0.3)) / 0.9 and v / 0.07.
    env = envs.make("MountainCar-v0", normalize_obs=True)
    genv, params = gymnax.make("MountainCar-v0")
    raw, _ = genv.reset(jax.random.key(5), params)
    obs, state = env.reset(jax.random.key(5))
    np.testing.assert_allclose(obs, [(raw[0] + 0.3) / 0.9, raw[1] / 0.07], rtol=1e-6)
    state, step = env.step(jax.random.key(6), state, jnp.int32(2))
    assert np.all(np.abs(np.asarray(step.next_obs)) <= 1.0)
    np.testing.assert_allclose(step.next_obs[1] * 0.07, state.inner.velocity, rtol=1e-5)
    # CartPole: the velocities are unbounded and pass unchanged; x / 4.8, theta / (24 deg).
    env = envs.make("CartPole-v1", normalize_obs=True)
    obs, _ = env.reset(jax.random.key(1))
    raw, _ = envs.make("CartPole-v1").reset(jax.random.key(1))
    np.testing.assert_allclose(obs, [raw[0] / 4.8, raw[1], raw[2] / (24 * np.pi / 180), raw[3]],
                               rtol=1e-5)  # fmt: skip
    with pytest.raises(ConfigError, match="normalize_obs"):
        envs.make("Breakout-MinAtar", normalize_obs=True)


def test_block_errors_speak_library_words():
    """``envs.make`` names the environment, not a command-line flag."""
    with pytest.raises(ConfigError, match=r"^unknown gymnax environment 'CartPole-v0'") as e:
        envs.make("CartPole-v0")
    assert "--" not in str(e.value)
