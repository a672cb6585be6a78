"""N-step transitions from rollouts of batched environments (Sutton, 1988; Hessel et al., 2018).

The transition that starts at step ``t`` of one environment sums up to ``n``
rewards, stopping at the first step that ends the episode::

    reward   = sum_{j<k} gamma^j r_{t+j}
    next_obs = next_obs_{t+k-1}   (obs n steps later, or the true final obs)
    discount = gamma^k * (1 - terminated_{t+k-1})

where ``k <= n`` is the number of steps summed. A window never crosses an
episode boundary: a termination inside it stops bootstrapping
(``discount = 0``); a truncation (time limit) inside it bootstraps from that
step's true final observation with ``gamma^k``. With ``n = 1`` this is the
one-step transition with ``discount = gamma * (1 - terminated)``.

Streaming with static shapes: rollouts arrive ``T`` steps at a time
(``[T, N]`` leaves), and the transition of step ``t`` needs steps up to
``t + n - 1``. ``NStepState`` carries the last ``n - 1`` steps (``[n - 1, N]``
leaves, oldest first). ``push`` appends a rollout behind them and emits the
``T`` transitions that start at the oldest ``T`` steps of that window, so every
transition leaves with a delay of ``n - 1`` steps and every call emits exactly
``T * N`` of them. Only the first ``n - 1`` transitions after ``init`` start
at placeholder steps; ``push`` marks them invalid (all environments step in
lockstep, so validity depends on time only). Episode ends need no special
case: a window that meets one just stops summing there.

Under ``jax.vmap`` over seeds use ``in_axes=NSTEP_SEED_AXES`` (steps per seed,
the counter shared).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class RolloutStep(NamedTuple):
    """What an actor saw in one step of its environments (leaves [T, N, ...] or [N, ...])."""

    obs: jax.Array
    action: jax.Array  # int32
    reward: jax.Array  # float32
    next_obs: jax.Array  # true observation reached, also at an episode end
    terminated: jax.Array  # bool: terminal state, no bootstrap
    truncated: jax.Array  # bool: time limit, bootstrap from next_obs
    next_legal: Any = None  # bool [A]: legal actions at next_obs (masked envs only)


class NStepTransition(NamedTuple):
    """An n-step transition as stored in replay.

    The learner's target is ``reward + discount * Q(next_obs)``: use
    ``discount`` (it holds ``gamma^k``), not ``gamma * (1 - terminated)``.
    """

    obs: jax.Array
    action: jax.Array  # int32
    reward: jax.Array  # float32: discounted sum of the k <= n rewards
    next_obs: jax.Array  # observation to bootstrap from
    terminated: jax.Array  # bool: the window ended in a terminal state
    discount: jax.Array  # float32: gamma^k * (1 - terminated)
    next_legal: Any = None  # bool [A]: legal actions at next_obs (masked envs only)


class NStepState(NamedTuple):
    steps: RolloutStep  # [n - 1, N, ...] leaves: the latest steps, oldest first
    count: jax.Array  # int32 []: how many of them are real (n - 1 once warmed up)


# vmap axes of an NStepState over seeds that step in lockstep.
NSTEP_SEED_AXES = NStepState(steps=0, count=None)


def _select(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``where(mask, a, b)`` with ``mask`` [T, N] broadcast over trailing axes."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b)


def nstep_transitions(steps: RolloutStep, n: int, gamma) -> NStepTransition:
    """The n-step transitions that start at the first ``L - n + 1`` of ``L`` steps.

    Args:
      steps: ``RolloutStep`` with leaves [L, N, ...], time-major, ``L >= n``.
      n: number of rewards summed at most (static).
      gamma: discount factor (may be traced).

    Returns:
      ``NStepTransition`` with leaves [L - n + 1, N, ...].
    """
    length = steps.reward.shape[0]
    if n < 1 or length < n:
        raise ValueError(f"need 1 <= n <= number of steps, got n={n} for {length} steps")
    num_out = length - n + 1

    def at(x, j):
        return x[j : j + num_out]

    gamma = jnp.asarray(gamma, jnp.float32)

    alive = jnp.ones(steps.reward[:num_out].shape, bool)  # [T, N]: window still open
    reward = jnp.zeros(alive.shape, jnp.float32)
    discount = jnp.ones(alive.shape, jnp.float32)  # gamma^(steps summed so far)
    next_obs, terminated = at(steps.next_obs, 0), at(steps.terminated, 0)
    masked = steps.next_legal is not None
    next_legal = at(steps.next_legal, 0) if masked else None
    for j in range(n):
        reward = reward + jnp.where(alive, discount * at(steps.reward, j), 0.0)
        discount = jnp.where(alive, discount * gamma, discount)
        next_obs = _select(alive, at(steps.next_obs, j), next_obs)
        if masked:  # the mask of the observation bootstrapped from
            next_legal = _select(alive, at(steps.next_legal, j), next_legal)
        terminated = jnp.where(alive, at(steps.terminated, j), terminated)
        alive = alive & ~(at(steps.terminated, j) | at(steps.truncated, j))
    return NStepTransition(
        obs=at(steps.obs, 0),
        action=at(steps.action, 0),
        reward=reward,
        next_obs=next_obs,
        terminated=terminated,
        discount=discount * (1.0 - terminated.astype(jnp.float32)),
        next_legal=next_legal,
    )


def init_nstep_state(example: RolloutStep, n: int) -> NStepState:
    """An empty ``NStepState`` for ``n``-step returns.

    Args:
      example: one step of the N environments (leaves [N, ...]); only shapes
        and dtypes are used.
      n: number of rewards summed at most (static, >= 1).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    steps = jax.tree.map(lambda x: jnp.zeros((n - 1, *jnp.shape(x)), jnp.asarray(x).dtype), example)
    return NStepState(steps, jnp.int32(0))


def push(
    state: NStepState, steps: RolloutStep, gamma
) -> tuple[NStepState, NStepTransition, jax.Array]:
    """Appends ``T`` new steps; emits the ``T`` transitions that are now complete.

    Args:
      state: the carried last ``n - 1`` steps (``n`` is read from their shape).
      steps: ``RolloutStep`` with leaves [T, N, ...] (T >= 1; ``x[None]`` for one step).
      gamma: discount factor (may be traced).

    Returns:
      ``(state, transitions, valid)``: transitions [T, N, ...] starting at the
      ``T`` oldest steps of ``state.steps ++ steps``; ``valid`` bool [T, N] (the
      shape of ``steps.reward``) is False for the first ``n - 1`` transitions
      after ``init_nstep_state``, True ever after.
    """
    held = state.steps.reward.shape[0]  # n - 1
    num_new = steps.reward.shape[0]
    window = jax.tree.map(
        lambda old, new: jnp.concatenate([old, new.astype(old.dtype)]), state.steps, steps
    )
    transitions = nstep_transitions(window, held + 1, gamma)
    valid = state.count + jnp.arange(num_new) >= held  # [T]
    valid = jnp.broadcast_to(
        valid.reshape((num_new,) + (1,) * (steps.reward.ndim - 1)), steps.reward.shape
    )
    new_state = NStepState(
        steps=jax.tree.map(lambda x: x[num_new:], window),
        count=jnp.minimum(state.count + num_new, held).astype(jnp.int32),
    )
    return new_state, transitions, valid
