"""Greedy evaluation on separate host environments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import networks


def greedy_actions(network, *, deterministic: bool, unravel=None):
    """Jitted ``(params, obs [N, ...], key, step) -> argmax actions [N]`` of any
    Q-network (``networks.q_values``): C51's expectation, QR's and IQN's quantile
    means, noisy layers with noise drawn from ``fold_in(key, step)`` (or their means
    when ``deterministic``). A plain head ignores the key. ``unravel``: params
    come as one flat vector, turned back into the pytree inside the jit."""

    def greedy(params, obs, key, step):
        if unravel is not None:
            params = unravel(params)
        key = jax.random.fold_in(key, step)
        q = networks.q_values(network, params, obs, key, deterministic=deterministic)
        return jnp.argmax(q, axis=-1)

    return jax.jit(greedy)


def evaluate_greedy(env, network, params, epsilon: float = 0.0, *, seed: int = 0,
                    max_steps: int | None = None) -> np.ndarray:  # fmt: skip
    """Plays until each of ``env``'s ``N`` environments has ended one episode.

    Args:
      env: a ``HostEnv`` of ``N`` environments (used from a fresh reset).
      network: the Q-network; ``params`` its parameters (on the device to run on).
      epsilon: exploration rate (0: greedy).
      seed: seeds the reset and the exploration draws.
      max_steps: stop after this many steps (default: the env's time limit + 1,
        or 1,000,000); unfinished episodes report their return so far.

    Returns:
      float64 ``[N]``: each environment's first episode's (unclipped) return.
    """
    greedy = greedy_actions(network, deterministic=True)
    key = jax.random.fold_in(jax.random.key(seed), 2)  # IQN's fractions
    device = next(iter(jax.tree.leaves(params)[0].devices()))
    rng = np.random.default_rng([seed, 2])
    n = env.num_envs
    limit = max_steps or ((env.spec.max_episode_steps or 999_999) + 1)
    obs = env.reset(seed=seed)
    returns = np.zeros(n)
    finished = np.zeros(n, bool)
    running = np.zeros(n)
    for t in range(limit):
        actions = np.asarray(greedy(params, jax.device_put(obs, device), key, t), np.int32)
        if epsilon > 0:
            explore = rng.random(n) < epsilon
            actions = np.where(explore, rng.integers(0, env.spec.num_actions, n), actions)
        step = env.step(actions.astype(np.int32))
        running += np.where(step.valid, step.reward, 0.0)
        ended = step.done & ~finished
        returns[ended] = step.episode_return[ended]
        finished |= step.done
        obs = step.obs
        if finished.all():
            break
    returns[~finished] = running[~finished]
    return returns


def evaluate_on_fresh_envs(make_env, network, params, device, *, episodes: int, epsilon: float,
                           seed: int, offset: int, env_steps: int) -> np.ndarray:  # fmt: skip
    """``evaluate_greedy`` on ``episodes`` new environments of ``make_env`` (seeded
    apart from the actors': ``seed + 10_000_019 + offset``), acting with a copy of
    ``params`` on ``device``; exploration draws seeded by ``env_steps``."""
    env = make_env(episodes, seed + 10_000_019 + offset, evaluation=True)
    try:
        params = jax.device_put(jax.tree.map(jnp.copy, params), device)
        return evaluate_greedy(env, network, params, epsilon, seed=seed + env_steps + offset)
    finally:
        env.close()
