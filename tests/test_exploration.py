import jax
import jax.numpy as jnp
import numpy as np

from dqnx import exploration


def test_linear_schedule_values():
    eps = exploration.linear_schedule(1.0, 0.05, 250_000)
    assert float(eps(0)) == 1.0
    np.testing.assert_allclose(float(eps(125_000)), 0.525, rtol=1e-6)
    np.testing.assert_allclose(float(eps(250_000)), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(eps(10**7)), 0.05, rtol=1e-6)
    assert float(exploration.linear_schedule(1.0, 0.1, 0)(5)) == np.float32(0.1)


def test_epsilon_greedy_frequencies():
    q = jnp.tile(jnp.array([0.0, 1.0, 0.0, 0.0]), (100_000, 1))
    actions = np.asarray(exploration.epsilon_greedy(jax.random.key(0), q, 0.2))
    freq = np.bincount(actions, minlength=4) / len(actions)
    # greedy action 1 with 0.8 + 0.2/4, the others 0.2/4 each
    np.testing.assert_allclose(freq, [0.05, 0.85, 0.05, 0.05], atol=0.005)


def test_epsilon_greedy_per_actor_epsilon():
    q = jnp.tile(jnp.array([1.0, 0.0]), (2, 50_000, 1))
    eps = jnp.array([[0.0], [1.0]])
    actions = np.asarray(exploration.epsilon_greedy(jax.random.key(1), q, eps))
    assert (actions[0] == 0).all()
    np.testing.assert_allclose(actions[1].mean(), 0.5, atol=0.01)


def test_apex_epsilons_values():
    eps = np.asarray(exploration.apex_epsilons(8))
    assert eps.dtype == np.float32 and eps.shape == (8,)
    np.testing.assert_allclose(eps, 0.4 ** (1 + 7.0 * np.arange(8) / 7), rtol=1e-6)
    np.testing.assert_allclose(eps[[0, -1]], [0.4, 0.4**8], rtol=1e-6)
    assert (np.diff(eps) < 0).all()
    np.testing.assert_allclose(exploration.apex_epsilons(1), [0.4])
    np.testing.assert_allclose(
        exploration.apex_epsilons(3, base=0.5, alpha=2.0), [0.5, 0.25, 0.125], rtol=1e-6
    )


def test_epsilon_greedy_with_apex_epsilons_per_env():
    num_envs, reps = 4, 40_000
    eps = exploration.apex_epsilons(num_envs, base=0.8, alpha=3.0)  # 0.8, 0.64, 0.512, 0.4096
    q = jnp.tile(jnp.array([0.0, 0.0, 1.0]), (num_envs, 1))  # [N, A]
    keys = jax.random.split(jax.random.key(2), reps)
    act = jax.jit(jax.vmap(exploration.epsilon_greedy, in_axes=(0, None, None)))
    actions = np.asarray(act(keys, q, eps))  # [reps, N]
    greedy_freq = (actions == 2).mean(0)
    # greedy with 1 - eps, plus eps/3 when exploring picks it
    np.testing.assert_allclose(greedy_freq, 1 - np.asarray(eps) * 2 / 3, atol=0.01)
