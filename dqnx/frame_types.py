"""The frame-deduplicated replay's types (``dqnx.frame_replay`` re-exports them):
what actors write (``FrameStep``), the buffer's state and its functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from dqnx.nstep import NStepTransition


class FrameStep(NamedTuple):
    """What environments saw in steps (leaves ``[K, N, ...]`` in ``add``, ``[N, ...]`` in ``init``).

    With ALE's ``[N, S, H, W]`` observations, ``frame = obs[:, -1]`` and
    ``final_frame = next_obs[:, -1]`` with, under SAME_STEP autoreset, the rows
    of ended episodes taken from ``info["final_obs"]``.
    """

    frame: jax.Array  # uint8 [N, H, W]: newest frame of the observation acted on
    action: jax.Array  # integer [N] (its dtype is stored: uint8 saves 3 bytes a slot)
    reward: jax.Array  # float32 [N] (clip before adding if wanted)
    terminated: jax.Array  # bool [N]: terminal state reached, no bootstrap
    truncated: jax.Array  # bool [N]: time limit reached, bootstrap from the final frame
    first: jax.Array  # bool [N]: the observation is the first of an episode (a reset)
    final_frame: jax.Array  # uint8 [N, H, W]: newest frame reached; read only at episode ends


class FrameReplayState(NamedTuple):
    frames: jax.Array  # uint8 [G, T, N, H, W]
    action: jax.Array  # [G, T, N], the dtype of the example's action
    reward: jax.Array  # float32 [G, T, N]
    terminated: jax.Array  # bool [G, T, N]
    truncated: jax.Array  # bool [G, T, N]
    first: jax.Array  # bool [G, T, N]
    final_index: jax.Array  # int32 [G, T, N]: side-ring entry of the step's final frame, or -1
    final_frames: jax.Array  # uint8 [F, H, W]: side ring of final frames
    final_owner: jax.Array  # int32 [F]: flat slot whose final frame the entry holds, or -1
    final_pos: jax.Array  # int32 []: next side-ring entry to write
    valid: jax.Array  # bool [G, T, N]: the slot's transition can be sampled
    tree: jax.Array  # float32 [2 L]: sum tree over flat slots (1 or p^alpha if valid, else 0)
    max_priority: jax.Array  # float32 []: largest raw priority so far (1 at init)
    pos: jax.Array  # int32 [G]: next row to write in each group's ring
    fill: jax.Array  # int32 [G]: rows written in each group's ring (<= T)


# vmap axes of a FrameReplayState over seeds that add to the same group in lockstep.
FRAME_REPLAY_SEED_AXES = FrameReplayState._make(
    None if name in ("pos", "fill") else 0 for name in FrameReplayState._fields
)  # the write position and fill are shared; everything else is per seed


class FrameReplay(NamedTuple):
    """``init(step[N]) -> state``; ``add(state, group, steps[K, N]) -> state``;
    ``sample(state, key, batch_size) -> (NStepTransition[B], slots[B])``;
    ``lookup(state, slots[M]) -> (NStepTransition[M], valid[M])``."""

    capacity: int
    init: Callable[[FrameStep], FrameReplayState]
    add: Callable[[FrameReplayState, Any, FrameStep], FrameReplayState]
    sample: Callable[[FrameReplayState, jax.Array, int], tuple[NStepTransition, jax.Array]]
    lookup: Callable[[FrameReplayState, jax.Array], tuple[NStepTransition, jax.Array]]


class PrioritizedFrameReplay(NamedTuple):
    """As ``FrameReplay``, with ``sample(state, key, batch_size, beta) -> (batch,
    slots, weights)`` and ``update_priorities(state, slots[B], td_abs[B]) -> state``."""

    capacity: int
    init: Callable[[FrameStep], FrameReplayState]
    add: Callable[[FrameReplayState, Any, FrameStep], FrameReplayState]
    sample: Callable[..., tuple[NStepTransition, jax.Array, jax.Array]]
    update_priorities: Callable[[FrameReplayState, jax.Array, jax.Array], FrameReplayState]
    lookup: Callable[[FrameReplayState, jax.Array], tuple[NStepTransition, jax.Array]]
