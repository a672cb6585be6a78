"""Replay buffers as factories of pure functions over a state pytree.

The buffer lives in device memory as one ``[capacity, ...]`` array per leaf of
the stored item, with each leaf's dtype kept (bool observations stay bool).
``add`` writes a batch of items at consecutive slots, wrapping around;
``sample`` draws uniformly among written slots only.

Under ``jax.vmap`` over independent seeds, map ``data`` over axis 0 and keep
``pos``/``size`` unbatched (``in_axes=REPLAY_SEED_AXES``): all seeds write in
lockstep, so the write stays an in-place dynamic-update-slice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class ReplayState(NamedTuple):
    data: Any  # pytree of [capacity, ...] arrays
    pos: jax.Array  # int32 []: next slot to write
    size: jax.Array  # int32 []: number of written slots (<= capacity)


# vmap axes of a ReplayState when several seeds share one write position.
REPLAY_SEED_AXES = ReplayState(data=0, pos=None, size=None)


class UniformReplay(NamedTuple):
    """``init(item) -> state``; ``add(state, items[N]) -> state``;
    ``sample(state, key, batch_size) -> (items[B], indices[B])``."""

    capacity: int
    init: Callable[[Any], ReplayState]
    add: Callable[[ReplayState, Any], ReplayState]
    sample: Callable[[ReplayState, jax.Array, int], tuple[Any, jax.Array]]


def uniform_replay(capacity: int, add_batch_size: int | None = None) -> UniformReplay:
    """A uniform FIFO replay buffer of ``capacity`` items.

    Args:
      capacity: number of items kept; the oldest are overwritten first.
      add_batch_size: if every ``add`` brings exactly this many items and it
        divides ``capacity``, writes never straddle the end of the buffer and
        each ``add`` is one in-place slice update (else a wrapping scatter).
        ``add`` then rejects other sizes.

    Returns:
      ``UniformReplay`` of pure functions. ``sample`` needs ``size >= 1``.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    aligned = add_batch_size is not None and capacity % add_batch_size == 0

    def init(item) -> ReplayState:
        data = jax.tree.map(
            lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), item
        )
        return ReplayState(data, jnp.int32(0), jnp.int32(0))

    def add(state: ReplayState, items) -> ReplayState:
        leaves = jax.tree.leaves(items)
        n = leaves[0].shape[0]
        if any(leaf.shape[0] != n for leaf in leaves):
            raise ValueError("all leaves of the added items need the same leading size")
        if n > capacity:
            raise ValueError(f"cannot add {n} items to a buffer of capacity {capacity}")
        if add_batch_size is not None and n != add_batch_size:
            raise ValueError(f"this buffer adds {add_batch_size} items at a time, got {n}")
        if aligned or n == 1:
            # pos is a multiple of n: the write never wraps.
            data = jax.tree.map(
                lambda b, x: jax.lax.dynamic_update_slice(
                    b, x.astype(b.dtype), (state.pos,) + (0,) * (b.ndim - 1)
                ),
                state.data,
                items,
            )
        else:
            idx = (state.pos + jnp.arange(n)) % capacity
            data = jax.tree.map(lambda b, x: b.at[idx].set(x.astype(b.dtype)), state.data, items)
        pos = (state.pos + n) % capacity
        size = jnp.minimum(state.size + n, capacity)
        return ReplayState(data, pos.astype(jnp.int32), size.astype(jnp.int32))

    def sample(state: ReplayState, key: jax.Array, batch_size: int):
        idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
        # idx is in [0, capacity): a plain gather, without the negative-index
        # wrap and bounds clamp of b[idx] (MinAtar batch of 128: ~80 -> ~75 us).
        return jax.tree.map(lambda b: b.at[idx].get(mode="promise_in_bounds"), state.data), idx

    return UniformReplay(capacity, init, add, sample)
