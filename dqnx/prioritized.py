"""Proportional prioritized replay (Schaul et al., 2016, arXiv:1511.05952) in device memory.

Item ``i`` is sampled with probability ``P(i) = p_i^alpha / sum_k p_k^alpha``,
where ``p_i = |td_i| + eps`` is its raw priority. The stored values are
already raised to ``alpha``: they are the leaves of a sum tree, one flat
float32 array of ``2 * T`` nodes (``T`` the smallest power of two
``>= capacity``). Node 1 is the root, node ``k`` has children ``2k`` and
``2k + 1``, and slot ``i`` is leaf ``T + i``. Unwritten slots have priority 0
and are never sampled.

* ``sample`` is stratified: the total mass is cut into ``batch_size`` equal
  segments and one point is drawn uniformly in each; all points descend the
  tree together, ``log2(T)`` steps of a ``fori_loop`` of vectorized gathers.
* ``add`` and ``update_priorities`` set leaves and then recompute every
  parent on their paths from its two children (no running deltas, so sums
  never drift). An aligned ``add`` (``add_batch_size`` divides the capacity)
  writes a run of slots, whose ancestors are a run on every level: it updates
  each level with one slice instead of a scatter. Among duplicate indices in
  one ``update_priorities`` call the largest priority wins, whatever their order.
* New items get the largest raw priority seen so far (``max_priority``,
  initially 1), so each is likely to be replayed at least once.

Importance weights follow Schaul et al. and Dopamine: ``w_i = (N * P(i))^-beta``
normalized by the largest weight *in the sampled batch*, so every weight is in
``(0, 1]``. With that normalization ``N`` and the total mass cancel:
``w_i = (min_j p_j^alpha / p_i^alpha)^beta`` over the batch ``j``.

Data, ``pos`` and ``size`` behave as in ``replay.uniform_replay``. Under
``jax.vmap`` over seeds use ``in_axes=PRIORITIZED_SEED_AXES``: ``data``, the
tree and ``max_priority`` are per seed, ``pos``/``size`` shared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dqnx import replay


class PrioritizedState(NamedTuple):
    data: Any  # pytree of [capacity, ...] arrays
    pos: jax.Array  # int32 []: next slot to write
    size: jax.Array  # int32 []: number of written slots (<= capacity)
    tree: (
        jax.Array
    )  # float32 [2 * tree_leaves]: sum tree of p^alpha; slot i is leaf tree_leaves + i
    max_priority: jax.Array  # float32 []: largest raw priority |td| + eps so far (initially 1)


# vmap axes of a PrioritizedState when several seeds share one write position.
PRIORITIZED_SEED_AXES = PrioritizedState(data=0, pos=None, size=None, tree=0, max_priority=0)


class PrioritizedReplay(NamedTuple):
    """``init(item) -> state``; ``add(state, items[N], priorities=None) -> state``;
    ``sample(state, key, batch_size, beta) -> (items[B], indices[B], weights[B])``;
    ``update_priorities(state, indices[B], td_abs[B]) -> state``."""

    capacity: int
    init: Callable[[Any], PrioritizedState]
    add: Callable[..., PrioritizedState]
    sample: Callable[[PrioritizedState, jax.Array, int, Any], tuple[Any, jax.Array, jax.Array]]
    update_priorities: Callable[[PrioritizedState, jax.Array, jax.Array], PrioritizedState]


def tree_leaves(capacity: int) -> int:
    """Number of leaves of the sum tree: the smallest power of two >= capacity."""
    return 1 << (capacity - 1).bit_length()


def priorities(state: PrioritizedState, capacity: int) -> jax.Array:
    """The stored priorities ``p^alpha`` of every slot, float32 [capacity] (0 if unwritten)."""
    leaves = state.tree.shape[-1] // 2
    return state.tree[..., leaves : leaves + capacity]


def set_leaves(tree: jax.Array, slots: jax.Array, values: jax.Array) -> jax.Array:
    """Sets leaves ``slots`` of a sum tree to ``values`` and recomputes their ancestors.

    Duplicate slots get the largest of their values (scatter-max commutes, so
    the result does not depend on their order or on the backend).

    Args:
      tree: float32 [2 * L] sum tree with L a power of two.
      slots: int32 [K] leaf indices in [0, L).
      values: float32 [K] (or broadcastable) non-negative leaf values.

    Returns:
      The updated tree.
    """
    num_leaves = tree.shape[0] // 2
    depth = num_leaves.bit_length() - 1
    nodes = slots.astype(jnp.int32) + num_leaves
    values = jnp.broadcast_to(jnp.asarray(values, tree.dtype), nodes.shape)
    tree = tree.at[nodes].set(0.0).at[nodes].max(values)

    def up(_, carry):
        tree, nodes = carry
        nodes = nodes // 2
        # Duplicate parents all receive the same sum: the write is deterministic.
        return tree.at[nodes].set(tree[2 * nodes] + tree[2 * nodes + 1]), nodes

    tree, _ = jax.lax.fori_loop(0, depth, up, (tree, nodes))
    return tree


def set_contiguous_leaves(tree: jax.Array, start: jax.Array, values: jax.Array) -> jax.Array:
    """``set_leaves`` for the ``K`` consecutive slots ``start .. start + K - 1``
    (no wrap-around), without scatters: the ancestors of a run of leaves are a
    run on every level, so each level is one slice of the level below, summed in
    pairs, written back with one dynamic-update-slice. Each level rewrites a
    window of ``ceil(K / 2^l) + 1`` nodes (clamped to the level), a superset of
    the ancestors; a node outside them is rewritten with the sum it already has.

    Args:
      tree: float32 [2 * L] sum tree with L a power of two.
      start: int32 [] first slot; ``start + K <= L``.
      values: float32 [K] non-negative leaf values.
    """
    num_leaves = tree.shape[0] // 2
    depth = num_leaves.bit_length() - 1
    (k,) = values.shape
    start = jnp.asarray(start, jnp.int32)
    tree = jax.lax.dynamic_update_slice(tree, values.astype(tree.dtype), (num_leaves + start,))
    lo, width = num_leaves + start, k  # the run of nodes just written (lo traced)
    for level in range(depth - 1, -1, -1):  # parents live in [2^level, 2^(level+1))
        size = 1 << level
        m = min(size, -(-width // 2) + 1)  # enough for any alignment of the run
        parent = jnp.clip(lo // 2, size, 2 * size - m)
        children = jax.lax.dynamic_slice(tree, (2 * parent,), (2 * m,))
        sums = children[0::2] + children[1::2]
        tree = jax.lax.dynamic_update_slice(tree, sums, (parent,))
        lo, width = lo // 2, m
    return tree


def stratified_find(tree: jax.Array, key: jax.Array, batch_size: int) -> jax.Array:
    """Leaf indices [batch_size], one drawn in each of ``batch_size`` equal mass segments.

    Each point descends from the root, going right when it lies beyond the left
    child's mass and the right child has mass: it always ends on a leaf with
    positive value (given a positive root), however floats round.
    """
    num_leaves = tree.shape[0] // 2
    depth = num_leaves.bit_length() - 1
    u = jax.random.uniform(key, (batch_size,), tree.dtype)
    target = (jnp.arange(batch_size, dtype=tree.dtype) + u) * (tree[1] / batch_size)  # [B]

    def down(_, carry):
        nodes, target = carry
        left, right = tree[2 * nodes], tree[2 * nodes + 1]
        go_right = (target >= left) & (right > 0)
        target = jnp.where(go_right, target - left, target)
        return 2 * nodes + go_right.astype(jnp.int32), target

    nodes = jnp.ones((batch_size,), jnp.int32)
    nodes, _ = jax.lax.fori_loop(0, depth, down, (nodes, target))
    return nodes - num_leaves


def importance_weights(p_alpha: jax.Array, beta) -> jax.Array:
    """``(N P(i))^-beta / max_j (N P(j))^-beta`` over the batch, from the sampled ``p^alpha``."""
    return (jnp.min(p_alpha) / p_alpha) ** jnp.asarray(beta, p_alpha.dtype)


def prioritized_replay(
    capacity: int,
    add_batch_size: int | None = None,
    priority_exponent: float = 0.6,
    eps: float = 1e-6,
) -> PrioritizedReplay:
    """A proportional prioritized FIFO replay buffer of ``capacity`` items.

    Args:
      capacity: number of items kept; the oldest are overwritten first.
      add_batch_size: as in ``replay.uniform_replay`` (aligned in-place writes).
      priority_exponent: ``alpha``; 0 samples uniformly among written slots. It may
        be a traced scalar (a sweep's per-run value, built inside the vmap over runs).
      eps: added to ``|td|`` so that no written item gets probability 0.

    Returns:
      ``PrioritizedReplay`` of pure functions. ``sample`` needs ``size >= 1``;
      ``beta`` may be a traced scalar (an annealing schedule).
    """
    traced = not isinstance(priority_exponent, int | float)
    if (not traced and priority_exponent < 0) or eps < 0:
        raise ValueError(
            f"need priority_exponent >= 0 and eps >= 0, got {priority_exponent}, {eps}"
        )
    uniform = replay.uniform_replay(capacity, add_batch_size)
    contiguous = add_batch_size is not None and capacity % add_batch_size == 0
    num_leaves = tree_leaves(capacity)
    alpha = priority_exponent if traced else float(priority_exponent)

    def init(item) -> PrioritizedState:
        base = uniform.init(item)
        tree = jnp.zeros((2 * num_leaves,), jnp.float32)
        return PrioritizedState(base.data, base.pos, base.size, tree, jnp.float32(1.0))

    def add(state: PrioritizedState, items, priorities=None) -> PrioritizedState:
        """Writes ``items`` after the newest; ``priorities`` are raw ``|td|`` [N] or
        None for the largest priority seen so far."""
        base = uniform.add(replay.ReplayState(state.data, state.pos, state.size), items)
        n = jax.tree.leaves(items)[0].shape[0]
        slots = (state.pos + jnp.arange(n, dtype=jnp.int32)) % capacity
        max_priority = state.max_priority
        if priorities is None:
            raw = max_priority
        else:
            raw = jnp.abs(jnp.asarray(priorities, jnp.float32)) + eps
            max_priority = jnp.maximum(max_priority, jnp.max(raw))
        leaf_values = jnp.broadcast_to(jnp.asarray(raw**alpha, jnp.float32), (n,))
        if contiguous or n == 1:  # pos is a multiple of n: the slots never wrap
            tree = set_contiguous_leaves(state.tree, state.pos, leaf_values)
        else:
            tree = set_leaves(state.tree, slots, leaf_values)
        return PrioritizedState(base.data, base.pos, base.size, tree, max_priority)

    def sample(state: PrioritizedState, key: jax.Array, batch_size: int, beta):
        idx = stratified_find(state.tree, key, batch_size)
        weights = importance_weights(state.tree[idx + num_leaves], beta)
        return jax.tree.map(lambda b: b[idx], state.data), idx, weights

    def update_priorities(state: PrioritizedState, indices, td_abs) -> PrioritizedState:
        raw = jnp.abs(jnp.asarray(td_abs, jnp.float32)) + eps
        tree = set_leaves(state.tree, indices, raw**alpha)
        max_priority = jnp.maximum(state.max_priority, jnp.max(raw))
        return state._replace(tree=tree, max_priority=max_priority)

    return PrioritizedReplay(capacity, init, add, sample, update_priorities)
