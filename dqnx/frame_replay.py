"""Frame-deduplicated replay of stacked-frame observations (Atari) in device memory.

An Atari observation is a stack of the ``S`` newest frames (ALE: ``[S, 84, 84]``
uint8, zero-filled before the episode's first frame; Mnih et al., 2015). Storing
``obs`` and ``next_obs`` per transition keeps every frame ``2 S`` times; this
buffer keeps each environment step's newest frame once and rebuilds both stacks
with a gather when sampling, as Dopamine's circular buffer does on the host
(Castro et al., 2018, arXiv:1812.06110). It also forms the n-step returns
(Hessel et al., 2018, arXiv:1710.02298) at sampling time, so actors send plain
steps.

Layout. Actors write streams: ``G`` groups (one per actor thread / environment
batch) of ``N`` environments each, and each group has a ring of ``T`` time rows.
Slot ``(g, t, e)`` (flat index ``(g T + t) N + e``) holds what environment ``e``
of group ``g`` saw at one step: the newest frame of the observation it acted on,
the action, the reward, ``terminated``, ``truncated`` and ``first`` (the
observation is the first of an episode). An episode end is followed by a reset
observation, so the true final frame of each step that ended an episode goes to
a side ring of ``F`` entries (``final_capacity``, default ``capacity // 16``); the
slot keeps its entry's index, and each entry its owner slot. A later episode end
that reuses the entry changes the owner, so a stale index is detected.

Transition of a slot ``t`` (time offsets relative to it; ``k <= n`` steps)::

    obs      = frames t-S+1 .. t, zeros before the episode's first frame
    reward   = sum_{j<k} gamma^j r_{t+j}, stopping at the first episode end
    next_obs = the stack at t+k; if step t+k-1 ended the episode, frames
               t+k-S+1 .. t+k-1 and that step's final frame
    discount = gamma^k (1 - terminated_{t+k-1})    (truncation bootstraps)

Valid slots. A slot is sampled only if its transition is exactly that: it is
written, every frame of ``obs`` is still in the ring, its window is written up
to the end (the stack at ``t+n``, or an episode end before), no stream break
lies inside the window (a ``first`` step that follows a step that did not end an
episode, as when host environments are reset after a restore), and the final
frame of an episode end it stops at is still in the side ring. Validity is kept
in a bool array and a sum tree over slots; ``add`` recomputes it only for the
slots whose validity the write can change (the ``n`` rows before the block, the
block, the ``S - 1`` rows after it, whose history the block overwrote, and the
``n`` slots up to each step whose final frame was evicted). Uniform sampling
draws from the tree with leaves 1 (valid) or 0; prioritized sampling
(Schaul et al., 2016, arXiv:1511.05952) with leaves ``p^alpha`` or 0, reusing
``dqnx.prioritized``. Both are stratified: one draw in each of ``B`` equal mass
segments.

Under ``jax.vmap`` over seeds that write the same group with the same block
size in lockstep, use ``in_axes=FRAME_REPLAY_SEED_AXES``: ``pos``/``fill`` are
shared, the rest (the side ring's position included, since episodes end at
different steps) is per seed. Inside ``shard_map`` each shard simply holds its
own state.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import prioritized
from dqnx.frame_types import (
    FRAME_REPLAY_SEED_AXES,
    FrameReplay,
    FrameReplayState,
    FrameStep,
    PrioritizedFrameReplay,
)
from dqnx.nstep import NStepTransition

__all__ = [
    "FRAME_REPLAY_SEED_AXES", "FrameReplay", "FrameReplayState", "FrameStep",
    "PrioritizedFrameReplay", "bytes_per_transition", "frame_replay", "prioritized_frame_replay",
]  # fmt: skip


class _Window(NamedTuple):
    valid: jax.Array  # bool [M]
    reward: jax.Array  # float32 [M]
    discount: jax.Array  # float32 [M]
    terminated: jax.Array  # bool [M]
    obs_rows: jax.Array  # int32 [M, S]: ring rows of obs's frames, oldest first
    obs_mask: jax.Array  # bool [M, S]: the frame belongs to the episode (else zeros)
    next_rows: jax.Array  # int32 [M, S]
    next_mask: jax.Array  # bool [M, S]
    ends: jax.Array  # bool [M]: next_obs's newest frame is a final frame
    final_entry: jax.Array  # int32 [M]: its side-ring entry (where ends)


def bytes_per_transition(state: FrameReplayState) -> float:
    """Bytes of every array of ``state`` divided by the number of slots.

    Works on a state or on its ``jax.eval_shape``; leading (seed) axes count in
    both the bytes and the slots.
    """
    total = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    return total / int(np.prod(state.reward.shape))


def _stack_mask(first: jax.Array) -> jax.Array:
    """bool [M, S]: frame ``m`` of a stack belongs to the newest frame's episode,
    i.e. no ``first`` among the frames after it (``first`` [M, S], oldest first)."""
    later = jnp.cumsum(first[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1]  # firsts at m..S-1
    return later - first.astype(jnp.int32) == 0


def _frame_replay(layout: dict, alpha: float = 0.0, eps: float = 0.0):
    """The shared pieces of both factories. ``layout``: every argument of
    ``frame_replay`` by name; ``alpha``: the priority exponent (0 when uniform)."""
    num_groups, num_envs, steps_per_group, n_step, gamma, stack_size, final_capacity, block_size = (
        layout[name] for name in inspect.signature(frame_replay).parameters
    )
    G, T, N, S, n = num_groups, steps_per_group, num_envs, stack_size, n_step
    capacity = G * T * N
    if min(G, T, N, S, n) < 1:
        raise ValueError(f"sizes must be positive, got G={G} T={T} N={N} S={S} n={n}")
    if n + S > T:
        raise ValueError(f"steps_per_group={T} cannot hold a window of {n} steps and {S} frames")
    F = max(capacity // 16, 1) if final_capacity is None else final_capacity
    if F < 1:
        raise ValueError(f"final_capacity must be positive, got {F}")
    if block_size is not None and (block_size < 1 or T % block_size):
        raise ValueError(f"block_size={block_size} must divide steps_per_group={T}")
    num_leaves = prioritized.tree_leaves(capacity)
    alpha = float(alpha)
    gamma = float(gamma)

    def init(example: FrameStep) -> FrameReplayState:
        if example.frame.shape[0] != N:
            raise ValueError(f"this buffer holds {N} envs per group, got {example.frame.shape}")
        hw = example.frame.shape[1:]
        rows = (G, T, N)
        return FrameReplayState(
            frames=jnp.zeros((*rows, *hw), jnp.uint8),
            action=jnp.zeros(rows, jnp.asarray(example.action).dtype),
            reward=jnp.zeros(rows, jnp.float32),
            terminated=jnp.zeros(rows, bool),
            truncated=jnp.zeros(rows, bool),
            first=jnp.zeros(rows, bool),
            final_index=jnp.full(rows, -1, jnp.int32),
            final_frames=jnp.zeros((F, *hw), jnp.uint8),
            final_owner=jnp.full((F,), -1, jnp.int32),
            final_pos=jnp.int32(0),
            valid=jnp.zeros(rows, bool),
            tree=jnp.zeros((2 * num_leaves,), jnp.float32),
            max_priority=jnp.float32(1.0),
            pos=jnp.zeros((G,), jnp.int32),
            fill=jnp.zeros((G,), jnp.int32),
        )

    def get(x, *idx):
        return x.at[idx].get(mode="promise_in_bounds")

    def window(state: FrameReplayState, slots: jax.Array) -> _Window:
        """Everything about the transitions of ``slots`` [M] but their frames."""
        g, t, e = slots // (T * N), (slots // N) % T, slots % N
        age = (state.pos[g] - 1 - t) % T  # rows written after t  [M]
        offsets = jnp.arange(1 - S, n + 1, dtype=jnp.int32)  # [O]: t-S+1 .. t+n
        rows = (t[:, None] + offsets) % T  # [M, O]
        back = age[:, None] - offsets  # rows written after each row
        avail = (back >= 0) & (back < state.fill[g][:, None])  # [M, O]: holds that step
        gi, ei = g[:, None], e[:, None]
        first = get(state.first, gi, rows, ei)
        term = get(state.terminated, gi, rows, ei)
        done = term | get(state.truncated, gi, rows, ei)
        reward = get(state.reward, gi, rows, ei)
        final_index = get(state.final_index, gi, rows, ei)
        c0 = S - 1  # column of offset 0

        obs_mask = _stack_mask(first[:, :S])
        # Written, and the history still in the ring (obs_mask's newest column is True).
        valid = jnp.all(avail[:, :S] | ~obs_mask, axis=1)

        alive = jnp.ones(slots.shape, bool)  # window still open
        ret = jnp.zeros(slots.shape, jnp.float32)
        disc = jnp.ones(slots.shape, jnp.float32)  # gamma^(steps summed so far)
        k = jnp.zeros(slots.shape, jnp.int32)
        terminated = jnp.zeros(slots.shape, bool)
        ends = jnp.zeros(slots.shape, bool)
        entry = jnp.zeros(slots.shape, jnp.int32)
        for j in range(n):
            c = c0 + j
            ret = ret + jnp.where(alive, disc * reward[:, c], 0.0)
            disc = jnp.where(alive, disc * gamma, disc)
            k = jnp.where(alive, j + 1, k)
            terminated = jnp.where(alive, term[:, c], terminated)
            stop = alive & done[:, c]
            owner = (g * T + rows[:, c]) * N + e
            idx = final_index[:, c]
            kept = (idx >= 0) & (get(state.final_owner, jnp.maximum(idx, 0)) == owner)
            valid &= ~stop | kept
            ends |= stop
            entry = jnp.where(stop, idx, entry)
            alive = alive & ~done[:, c]
            # The next step is needed (to go on, or as the stack at t+n): written, same episode.
            valid &= ~alive | (avail[:, c + 1] & ~first[:, c + 1])

        next_offsets = k[:, None] + jnp.arange(1 - S, 1, dtype=jnp.int32)  # [M, S]
        next_first = jnp.take_along_axis(first, next_offsets + c0, axis=1)
        # The newest frame never starts an episode: it follows step t+k-1 in it (or is its final).
        next_first = next_first.at[:, -1].set(False)
        return _Window(
            valid=valid,
            reward=ret,
            discount=disc * (1.0 - terminated.astype(jnp.float32)),
            terminated=terminated,
            obs_rows=rows[:, :S],
            obs_mask=obs_mask,
            next_rows=(t[:, None] + next_offsets) % T,
            next_mask=_stack_mask(next_first),
            ends=ends,
            final_entry=entry,
        )

    def lookup(state: FrameReplayState, slots: jax.Array) -> tuple[NStepTransition, jax.Array]:
        """The transitions of ``slots`` [M] and whether each is valid (invalid
        ones hold unspecified values)."""
        slots = jnp.asarray(slots, jnp.int32)
        w = window(state, slots)
        g, t, e = slots // (T * N), (slots // N) % T, slots % N
        gi, ei = g[:, None], e[:, None]

        def where(mask, x, y):  # mask [M, S] over frames; elementwise, so gathers fuse in
            return jnp.where(mask[:, :, None, None], x, y)

        zero = jnp.zeros((), jnp.uint8)
        obs = where(w.obs_mask, get(state.frames, gi, w.obs_rows, ei), zero)  # [M, S, H, W]
        final = get(state.final_frames, jnp.maximum(w.final_entry, 0))[:, None]  # [M, 1, H, W]
        use_final = w.ends[:, None] & (jnp.arange(S) == S - 1)  # [M, S]
        nxt = where(use_final, final, get(state.frames, gi, w.next_rows, ei))
        nxt = where(w.next_mask, nxt, zero)  # [M, S, H, W]
        batch = NStepTransition(
            obs=obs,
            action=get(state.action, g, t, e).astype(jnp.int32),
            reward=w.reward,
            next_obs=nxt,
            terminated=w.terminated,
            discount=w.discount,
        )
        return batch, w.valid

    def add(state: FrameReplayState, group, steps: FrameStep) -> FrameReplayState:
        """Writes ``K`` consecutive steps ``[K, N]`` of group ``group`` (an int or
        int32 scalar, may be traced) after its newest; ``K`` must be <= ``T``
        and ``K N <= F``."""
        K, num = steps.reward.shape
        if num != N or steps.frame.shape[:2] != (K, N):
            raise ValueError(f"steps must be [K, {N}, ...], got frame {steps.frame.shape}")
        if K > T or K * N > F:
            raise ValueError(f"a block of {K} steps needs K <= {T} and K * {N} <= {F}")
        if block_size is not None and block_size != K:
            raise ValueError(f"this buffer adds blocks of {block_size} steps, got {K}")
        g = jnp.asarray(group, jnp.int32)
        pos = state.pos[g]
        rows = (pos + jnp.arange(K, dtype=jnp.int32)) % T  # [K]
        slots = (g * T + rows[:, None]) * N + jnp.arange(N, dtype=jnp.int32)  # [K, N]

        # Episode ends take the next side-ring entries, in [K, N] row-major order.
        done = (steps.terminated | steps.truncated).reshape(-1)  # [K N]
        rank = jnp.cumsum(done.astype(jnp.int32)) - 1
        entries = (state.final_pos + rank) % F
        num_done = rank[-1] + 1
        r = jnp.arange(K * N, dtype=jnp.int32)
        evicted = state.final_owner[(state.final_pos + r) % F]  # owners losing their entry
        evicted = jnp.where((r < num_done) & (evicted >= 0), evicted, 0)  # 0: a harmless refresh
        target = jnp.where(done, entries, F)  # F: dropped
        final_frames = state.final_frames.at[target].set(
            steps.final_frame.reshape(K * N, *steps.final_frame.shape[2:]).astype(jnp.uint8),
            mode="drop",
        )
        final_owner = state.final_owner.at[target].set(slots.reshape(-1), mode="drop")
        final_index = jnp.where(done, entries, -1).reshape(K, N)

        def write(buf, block):
            block = block.astype(buf.dtype)
            if block_size is not None or K == 1:  # pos is a multiple of K: no wrap
                start = (g, pos) + (0,) * (buf.ndim - 2)
                return jax.lax.dynamic_update_slice(buf, block[None], start)
            return buf.at[g, rows].set(block)

        state = state._replace(
            frames=write(state.frames, steps.frame),
            action=write(state.action, steps.action),
            reward=write(state.reward, steps.reward),
            terminated=write(state.terminated, steps.terminated),
            truncated=write(state.truncated, steps.truncated),
            first=write(state.first, steps.first),
            final_index=write(state.final_index, final_index),
            final_frames=final_frames,
            final_owner=final_owner,
            final_pos=(state.final_pos + num_done) % F,
            pos=state.pos.at[g].set((pos + K) % T),
            fill=state.fill.at[g].set(jnp.minimum(state.fill[g] + K, T)),
        )
        return refresh(state, g, rows, evicted)

    def refresh(state: FrameReplayState, g, rows, evicted) -> FrameReplayState:
        """Recomputes validity and leaves of the slots a write of ``rows`` of
        group ``g`` can affect, given the evicted side-ring owners [K N]."""
        K = rows.shape[0]
        envs = jnp.arange(N, dtype=jnp.int32)
        near = (rows[0] - n + jnp.arange(K + n + S - 1, dtype=jnp.int32)) % T
        near = (g * T + near[:, None]) * N + envs  # the n rows before .. S-1 rows after
        vg, vt, ve = evicted // (T * N), (evicted // N) % T, evicted % N
        back = (vt[:, None] - jnp.arange(n, dtype=jnp.int32)) % T  # windows reaching them
        reach = (vg[:, None] * T + back) * N + ve[:, None]
        cand = jnp.concatenate([near.reshape(-1), reach.reshape(-1)])  # duplicates are fine
        w = window(state, cand)
        cg, ct, ce = cand // (T * N), (cand // N) % T, cand % N
        fresh = (cg == g) & ((state.pos[cg] - 1 - ct) % T < K)  # a new occupant
        kept = get(state.valid, cg, ct, ce) & ~fresh  # valid before: keeps its priority
        new_leaf = state.max_priority**alpha
        leaf = jnp.where(w.valid, jnp.where(kept, state.tree[num_leaves + cand], new_leaf), 0.0)
        # Writing the leaves first lets XLA update the tree in place: reading it
        # (above) and then handing it straight to set_leaves's loop makes a copy.
        tree = state.tree.at[num_leaves + cand].set(leaf, mode="promise_in_bounds")
        return state._replace(
            valid=state.valid.at[cg, ct, ce].set(w.valid, mode="promise_in_bounds"),
            tree=prioritized.set_leaves(tree, cand, leaf),
        )

    def sample_slots(state, key, batch_size):
        slots = prioritized.stratified_find(state.tree, key, batch_size)
        return lookup(state, slots)[0], slots

    def update_priorities(state: FrameReplayState, slots, td_abs) -> FrameReplayState:
        raw = jnp.abs(jnp.asarray(td_abs, jnp.float32)) + eps
        slots = jnp.asarray(slots, jnp.int32)
        leaf = jnp.where(state.valid.reshape(-1)[slots], raw**alpha, 0.0)  # invalid stay 0
        return state._replace(
            tree=prioritized.set_leaves(state.tree, slots, leaf),
            max_priority=jnp.maximum(state.max_priority, jnp.max(raw)),
        )

    return capacity, init, add, sample_slots, update_priorities, lookup, num_leaves


def frame_replay(
    num_groups: int,
    num_envs: int,
    steps_per_group: int,
    *,
    n_step: int = 1,
    gamma: float = 0.99,
    stack_size: int = 4,
    final_capacity: int | None = None,
    block_size: int | None = None,
) -> FrameReplay:
    """A uniform frame-deduplicated replay of ``G N T`` n-step transitions.

    Args:
      num_groups: ``G``, independent streams (one per actor thread).
      num_envs: ``N``, environments per group (every block is ``[K, N]``).
      steps_per_group: ``T``, rows of each group's ring (``>= n_step + stack_size``).
      n_step: ``n``, rewards summed at most (static).
      gamma: discount factor of the n-step return (a Python float, fixed here).
      stack_size: ``S``, frames per observation.
      final_capacity: ``F``, side-ring entries for final frames (default
        ``capacity // 16``); each ``add`` of ``K`` steps needs ``K N <= F``.
        Too small a ring drops (never corrupts) transitions that end episodes.
      block_size: if every ``add`` brings exactly this many steps and it
        divides ``T``, each write is one in-place dynamic-update-slice (else a
        scatter); ``add`` then rejects other sizes.

    Returns:
      ``FrameReplay`` of pure functions. ``sample`` draws uniformly among valid
      slots (stratified) and needs at least one; the batch is an
      ``NStepTransition`` with ``obs``/``next_obs`` uint8 ``[B, S, H, W]``,
      ``action`` int32.
    """
    capacity, init, add, sample, _, lookup, _ = _frame_replay(locals())
    return FrameReplay(capacity, init, add, sample, lookup)


def prioritized_frame_replay(
    num_groups: int,
    num_envs: int,
    steps_per_group: int,
    *,
    priority_exponent: float = 0.6,
    eps: float = 1e-6,
    **layout,
) -> PrioritizedFrameReplay:
    """``frame_replay`` with proportional prioritized sampling (Schaul et al., 2016).

    Slot ``i`` is drawn with probability ``p_i^alpha / sum_k p_k^alpha`` over
    valid slots (invalid ones have priority 0); a slot that becomes valid gets
    the largest raw priority seen so far. Weights and their normalization are
    ``dqnx.prioritized``'s.

    Args:
      priority_exponent: ``alpha``; 0 samples uniformly among valid slots.
      eps: added to ``|td|`` in ``update_priorities``.
      num_groups, num_envs, steps_per_group, **layout: as in ``frame_replay``
        (``n_step``, ``gamma``, ``stack_size``, ``final_capacity``, ``block_size``).

    Returns:
      ``PrioritizedFrameReplay``: ``sample(state, key, batch_size, beta) ->
      (batch, slots, weights)`` (``beta`` may be traced);
      ``update_priorities(state, slots, td_abs)`` leaves invalid slots at 0.
    """
    if priority_exponent < 0 or eps < 0:
        raise ValueError(
            f"need priority_exponent >= 0 and eps >= 0, got {priority_exponent}, {eps}"
        )
    arguments = inspect.signature(frame_replay).bind(
        num_groups, num_envs, steps_per_group, **layout
    )
    arguments.apply_defaults()  # unknown names raise TypeError here, as in a call
    capacity, init, add, sample_slots, update, lookup, num_leaves = _frame_replay(
        arguments.arguments, priority_exponent, eps
    )

    def sample(state: FrameReplayState, key: jax.Array, batch_size: int, beta):
        batch, slots = sample_slots(state, key, batch_size)
        weights = prioritized.importance_weights(state.tree[num_leaves + slots], beta)
        return batch, slots, weights

    return PrioritizedFrameReplay(capacity, init, add, sample, update, lookup)
