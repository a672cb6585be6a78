"""Seed groups: a device's seeds advanced group after group inside one chunk.

On CPU a device is one core; small groups keep a group's replay and parameters
in cache, and a learner vmapped over many seeds can run slower per seed than
one seed's learner. Which group size is fastest is measured in docs/performance.md
(``scripts/bench.py --seed_group_size``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dqnx import platforms

# On CPU, a learner with at least this many (batch x parameters) multiply-adds
# per forward pass runs one seed at a time; a smaller one runs seeds in pairs.
CPU_PAIR_BELOW = 2**22


def seed_group_size(
    requested: int, local_seeds: int, *, learner_size: int, platform: str | None = None
) -> int:
    """Seeds one device advances together in a chunk.

    Args:
      requested: ``--seed_group_size``; 0 = automatic.
      local_seeds: seeds the device holds.
      learner_size: batch x parameter count of one seed's learner.
      platform: the backend ("cpu", "gpu", "tpu"; default: JAX's default backend).

    Returns:
      The largest divisor of ``local_seeds`` not above the wanted size. The
      automatic size is every seed at once on accelerators; where
      ``platforms.PlatformChoices.cache_sized_seed_groups`` (CPU), 2 when
      ``learner_size < CPU_PAIR_BELOW``, else 1.
    """
    choices = platforms.choices_for(platform) if platform else platforms.current()
    wanted = requested
    if wanted == 0:
        if not choices.cache_sized_seed_groups:
            wanted = local_seeds
        else:
            wanted = 2 if learner_size < CPU_PAIR_BELOW else 1
    wanted = min(wanted, local_seeds)
    return max(g for g in range(1, wanted + 1) if local_seeds % g == 0)


def in_seed_groups(chunk, axes, num_seeds: int, group: int):
    """``chunk`` run on ``num_seeds // group`` groups of seeds one after another.

    Each group runs the whole chunk (all its iterations) before the next one
    starts, so only one group's replay, parameters and optimizer state are
    touched at a time. Seeds are independent, so the result is the same as one
    ``chunk`` over all seeds. Leaves shared by all seeds (``axes`` None: the env
    step counter, replay positions) start every group from the same value.
    """
    shared = -1  # marks leaves without a seed axis

    def leaf_axes(tree):
        return jax.tree.map(
            lambda a, sub: jax.tree.map(lambda _: shared if a is None else a, sub),
            axes,
            tree,
            is_leaf=lambda x: x is None,
        )

    def run(state, *args, **kwargs):
        state_axes = leaf_axes(state)

        def per_seed(fn, shared_from, *trees):
            """``fn`` over the per-seed leaves of ``trees``; shared leaves from ``shared_from``."""
            return jax.tree.map(
                lambda a, s, *xs: s if a == shared else fn(*xs), state_axes, shared_from, *trees
            )

        _, out_metrics = jax.eval_shape(
            lambda sub: chunk(sub, *args, **kwargs),
            per_seed(lambda x: jax.ShapeDtypeStruct((group, *x.shape[1:]), x.dtype), state, state),
        )
        metrics0 = jax.tree.map(
            lambda x: jnp.zeros((num_seeds, *x.shape[1:]) if x.ndim else (), x.dtype),
            out_metrics,
        )

        def body(g, carry):
            current, metrics = carry
            start = g * group
            # Per-seed leaves: this group's slice of the carry; shared: the input's.
            sub = per_seed(
                lambda x: jax.lax.dynamic_slice_in_dim(x, start, group, 0), state, current
            )
            sub, m = chunk(sub, *args, **kwargs)
            current = per_seed(
                lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, start, 0), sub, current, sub
            )
            metrics = jax.tree.map(
                lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, start, 0) if x.ndim else y,
                metrics,
                m,
            )
            return current, metrics

        return jax.lax.fori_loop(0, num_seeds // group, body, (state, metrics0))

    return run
