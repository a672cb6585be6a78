"""State pytrees shared by several modules."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax


class Transition(NamedTuple):
    """One environment transition as stored in replay (leaves may carry batch axes).

    ``next_obs`` is the true observation the action led to, also at an episode
    end; ``terminated`` is True only for terminal states (no bootstrap), never
    for time-limit truncations. ``next_legal``, where the environment has a
    legal-action mask, restricts the target's max / argmax to the legal actions.
    """

    obs: jax.Array
    action: jax.Array  # int32
    reward: jax.Array  # float32
    next_obs: jax.Array
    terminated: jax.Array  # bool
    # bool [A]: legal actions at next_obs; only for envs with a legal-action mask
    # (None otherwise: no replay memory, no work)
    next_legal: Any = None


class LearnerState(NamedTuple):
    params: Any
    target_params: Any
    opt_state: Any
    num_updates: jax.Array  # int32 []
    # PRNG key of a learner that draws random numbers (noisy layers, IQN's
    # fractions), None otherwise; update k uses fold_in(key, k).
    key: Any = None


class ActorState(NamedTuple):
    obs: jax.Array  # [N, *obs_shape]: what each env shows the actor now
    env_state: Any  # envs.EnvState with leading [N]
    key: jax.Array  # PRNG key of this actor


class EpisodeStats(NamedTuple):
    """Sums over the episodes that ended in a span of steps (per seed)."""

    return_sum: jax.Array  # float32 []
    length_sum: jax.Array  # int32 []
    count: jax.Array  # int32 []
