"""Epsilon schedules and epsilon-greedy action selection."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def linear_schedule(start: float, end: float, decay_steps: int):
    """epsilon(t) = start + (end - start) * min(t / decay_steps, 1).

    Pure arithmetic on the step counter (no branches), so it costs nothing
    inside a compiled loop and is identical under vmap.
    """

    def schedule(step):
        if decay_steps == 0:
            return jnp.asarray(end, jnp.float32)
        frac = jnp.minimum(jnp.asarray(step, jnp.float32) / decay_steps, 1.0)
        return jnp.asarray(start + (end - start) * frac, jnp.float32)

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
