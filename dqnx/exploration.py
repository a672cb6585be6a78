"""Epsilon schedules and epsilon-greedy action selection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import legal as legal_lib


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


def linear_value(step, start, delta, decay_steps=None, *, inv_decay_steps=None):
    """``start + delta * min(step / decay_steps, 1)`` in float32, with traced values.

    ``linear_schedule``'s device arithmetic operand for operand, for values that
    are traced (one per run of a vmapped sweep): given ``delta = end - start``
    computed in float64 (as Python computes it for ``linear_schedule``) and, for a
    traced decay, ``inv_decay_steps = float32(1) / float32(decay_steps)`` (XLA turns
    a division by a constant into a multiplication by its float32 reciprocal), it
    returns the bits ``linear_schedule(start, end, decay_steps)(step)`` returns.

    Args:
      step: int32 step counter.
      start: value at step 0 (float32, may be traced).
      delta: ``end - start`` (may be traced).
      decay_steps: a Python int (a constant of the program), or None with
        ``inv_decay_steps``.
      inv_decay_steps: float32 reciprocal of the decay steps (may be traced).
    """
    step = jnp.asarray(step, jnp.float32)
    if inv_decay_steps is None:
        frac = step / jnp.float32(decay_steps)
    else:
        frac = step * inv_decay_steps
    return jnp.asarray(start + delta * jnp.minimum(frac, jnp.float32(1)), jnp.float32)


def epsilon_greedy(key, q_values, epsilon, legal=None):
    """Greedy action with probability 1 - epsilon, else uniform over all actions
    (over the legal actions with ``legal``, the greedy one too).

    Args:
      key: PRNG key.
      q_values: [..., A] Q-values.
      epsilon: scalar or array broadcastable to q_values.shape[:-1]
        (per-actor epsilons).
      legal: optional bool [..., A] mask of the legal actions (``dqnx.legal``).

    Returns:
      int32 actions of shape q_values.shape[:-1].
    """
    batch_shape = q_values.shape[:-1]
    k_explore, k_action = jax.random.split(key)
    if legal is None:
        greedy = jnp.argmax(q_values, axis=-1).astype(jnp.int32)
        random = jax.random.randint(k_action, batch_shape, 0, q_values.shape[-1], jnp.int32)
    else:
        greedy = legal_lib.masked_argmax(q_values, legal)
        random = legal_lib.random_legal(k_action, legal)
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
