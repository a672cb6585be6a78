"""Epsilon schedules and epsilon-greedy action selection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def linear_schedule(start: float, end: float, decay_steps: int):
    """epsilon(t) = start + (end - start) * min(t / decay_steps, 1).

    Pure arithmetic on the step counter (no branches), so it costs nothing
    inside a compiled loop and is identical under vmap. Given a Python or NumPy
    integer it computes the same float32 arithmetic with NumPy, on the host
    (no device work: host actors call it every rollout).
    """

    def schedule(step):
        xp = np if isinstance(step, (int, np.integer)) else jnp
        if decay_steps == 0:
            return xp.asarray(end, xp.float32)
        frac = xp.minimum(xp.asarray(step, xp.float32) / xp.float32(decay_steps), xp.float32(1))
        return xp.asarray(start + (end - start) * frac, xp.float32)

    return schedule


def epsilon_greedy(key, q_values, epsilon):
    """Greedy action with probability 1 - epsilon, else uniform over all actions.

    Args:
      key: PRNG key.
      q_values: [..., A] Q-values.
      epsilon: scalar or array broadcastable to q_values.shape[:-1]
        (per-actor epsilons).

    Returns:
      int32 actions of shape q_values.shape[:-1].
    """
    batch_shape = q_values.shape[:-1]
    k_explore, k_action = jax.random.split(key)
    greedy = jnp.argmax(q_values, axis=-1).astype(jnp.int32)
    random = jax.random.randint(k_action, batch_shape, 0, q_values.shape[-1], jnp.int32)
    explore = jax.random.uniform(k_explore, batch_shape) < epsilon
    return jnp.where(explore, random, greedy)


def apex_epsilons(num_envs: int, base: float = 0.4, alpha: float = 7.0) -> jax.Array:
    """Fixed per-actor epsilons of Ape-X (Horgan et al., 2018, arXiv:1803.00933).

    eps_i = base^(1 + alpha * i / (num_envs - 1)) for i in [0, num_envs): from
    ``base`` down to ``base^(1 + alpha)``; a single actor gets ``base``. Pass the
    result to ``epsilon_greedy`` as one epsilon per environment.

    Returns:
      float32 [num_envs].
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    frac = jnp.arange(num_envs, dtype=jnp.float32) / max(num_envs - 1, 1)
    return jnp.power(jnp.float32(base), 1.0 + alpha * frac).astype(jnp.float32)
