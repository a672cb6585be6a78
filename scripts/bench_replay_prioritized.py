"""Microseconds per call of prioritized vs uniform replay on CartPole-shaped transitions.

  python scripts/bench_replay_prioritized.py [--capacities=100000,1000000] \
      [--batch_size=256] [--add_size=8] [--repeats=200] [--out=per.json]

Each buffer is first filled to capacity (random priorities), then every
operation is jitted, called once to compile and warm up, and timed
``--repeats`` times with ``block_until_ready``; the median is reported.
``add`` and ``update_priorities`` / ``set_priorities`` donate the state, so they
update in place as they do inside a training chunk.

dqnx rows (``replay.uniform_replay``, ``prioritized.prioritized_replay``):

* ``prioritized sample (sum tree)``: stratified, ``batch_size`` points descend
  the tree together, ``log2(T)`` steps of vectorized gathers: O(B log N).
* ``prioritized sample (cumsum)`` is the alternative to the sum tree:
  stratified targets located by ``searchsorted`` in a cumulative sum of all
  priorities, O(capacity) per batch.
* ``add`` / ``update_priorities`` set the leaves and recompute every parent on
  their paths from its two children, one vectorized step per level: O(B log N).

flashbax rows (optional: without flashbax a row says it is missing), at the
same capacity, batch size, add size and transitions; the buffers are filled
by putting the same data in their state and setting every priority at once,
as for dqnx:

* ``flashbax uniform`` is ``make_item_buffer(add_batches=True)``.
* ``flashbax prioritized`` is ``make_prioritised_item_buffer(add_batches=True,
  priority_exponent=0.6)``: also a Dopamine-style sum tree. ``sample`` is
  stratified too, each of the B points descending it on its own (``vmap`` of a
  ``fori_loop`` with ``lax.cond``): O(B log N), no cumsum. Its sample returns
  probabilities; the timed call also turns them into importance weights as
  dqnx's sample does (B elements, negligible). Its tree updates propagate
  deltas (``+= new - old``) up the tree, by one of two methods it picks from
  its ``device`` argument, both timed here whatever the backend:
  ``(scan)``, ``device="cpu"``: ``set_batch_scan``, a sequential ``lax.scan``
  over the B leaves, each a ``log N`` loop: O(B log N) but not vectorized;
  ``(bincount)``, ``device="gpu"``/``"tpu"``: ``set_batch_bincount``,
  vectorized over the levels, but it counts duplicate indices with
  ``jnp.bincount(length=capacity)``: O(capacity) per call. Its ``add`` does
  two such updates (zero the overwritten items, then give the new ones the
  largest priority so far).
"""

from __future__ import annotations

import argparse
import math

import benchlib
import jax
import jax.numpy as jnp

from dqnx import prioritized, replay
from dqnx.types import Transition

ALPHA = 0.6  # priority exponent, dqnx's default and flashbax's
BETA = 0.4
EPS = 1e-6  # dqnx adds it to |td|; flashbax is given |td| + EPS
FLASHBAX_SET_BATCH = {"scan": "cpu", "bincount": "gpu"}  # method -> flashbax device argument


def cartpole_items(key, n):
    k_obs, k_act, k_rew = jax.random.split(key, 3)
    obs = jax.random.normal(k_obs, (n, 4), jnp.float32)
    return Transition(
        obs=obs,
        action=jax.random.randint(k_act, (n,), 0, 2, jnp.int32),
        reward=jax.random.uniform(k_rew, (n,), jnp.float32),
        next_obs=obs + 0.1,
        terminated=jnp.zeros((n,), bool),
    )


def cumsum_sample(state, key, batch_size, beta, capacity):
    """Stratified sampling by cumsum + searchsorted over all priorities."""
    p = prioritized.priorities(state, capacity)
    cdf = jnp.cumsum(p)
    u = jax.random.uniform(key, (batch_size,))
    targets = (jnp.arange(batch_size) + u) * (cdf[-1] / batch_size)
    idx = jnp.minimum(jnp.searchsorted(cdf, targets, side="right"), capacity - 1)
    weights = prioritized.importance_weights(p[idx], beta)
    return jax.tree.map(lambda b: b[idx], state.data), idx, weights


def bench(capacity, batch_size, add_size, repeats, fbx=None):
    items = cartpole_items(jax.random.key(1), add_size)
    td = jax.random.exponential(jax.random.key(3), (capacity,))
    idx = jax.random.randint(jax.random.key(5), (batch_size,), 0, capacity)
    new_td = jax.random.exponential(jax.random.key(6), (batch_size,))
    rows = {}

    uni = replay.uniform_replay(capacity, add_batch_size=add_size)
    u_state = replay.ReplayState(
        cartpole_items(jax.random.key(0), capacity), jnp.int32(0), jnp.int32(capacity)
    )
    u_add = jax.jit(uni.add, donate_argnums=0)
    u_sample = jax.jit(uni.sample, static_argnums=2)
    rows["uniform add"], u_state = benchlib.donated_us(u_add, u_state, lambda: (items,), repeats)
    keys = iter(jax.random.split(jax.random.key(2), repeats + 1))
    rows["uniform sample"] = benchlib.median_us(
        u_sample, lambda: (u_state, next(keys), batch_size), repeats
    )

    per = prioritized.prioritized_replay(capacity, add_batch_size=add_size, priority_exponent=ALPHA)
    full = cartpole_items(jax.random.key(0), capacity)  # a fresh copy: add donates
    p_state = per.init(jax.tree.map(lambda x: x[0], full))._replace(
        data=full, size=jnp.int32(capacity)
    )
    p_state = jax.jit(per.update_priorities)(p_state, jnp.arange(capacity), td)
    p_add = jax.jit(per.add, donate_argnums=0)
    p_update = jax.jit(per.update_priorities, donate_argnums=0)
    p_sample = jax.jit(per.sample, static_argnums=2)
    c_sample = jax.jit(cumsum_sample, static_argnums=(2, 4))

    rows["prioritized add"], p_state = benchlib.donated_us(
        p_add, p_state, lambda: (items,), repeats
    )
    keys = iter(jax.random.split(jax.random.key(4), 2 * repeats + 2))
    rows["prioritized sample (sum tree)"] = benchlib.median_us(
        p_sample, lambda: (p_state, next(keys), batch_size, BETA), repeats
    )
    rows["prioritized sample (cumsum)"] = benchlib.median_us(
        c_sample, lambda: (p_state, next(keys), batch_size, BETA, capacity), repeats
    )
    rows["prioritized update_priorities"], p_state = benchlib.donated_us(
        p_update, p_state, lambda: (idx, new_td), repeats
    )
    if fbx is not None:
        rows.update(bench_flashbax(fbx, capacity, batch_size, items, td, idx, new_td, repeats))
    return rows


def bench_flashbax(fbx, capacity, batch_size, items, td, idx, new_td, repeats):
    """The flashbax rows; ``items``, ``td``, ``idx``, ``new_td`` as for dqnx."""
    from flashbax.buffers import prioritised_trajectory_buffer as ptb

    rows = {}
    kwargs = dict(max_length=capacity, min_length=1, sample_batch_size=batch_size)
    # Item buffers keep a [1, capacity] time axis; a full one wraps to index 0.
    full = jax.tree.map(lambda x: x[None], cartpole_items(jax.random.key(0), capacity))
    item = jax.tree.map(lambda x: x[0, 0], full)

    uni = fbx.make_item_buffer(add_batches=True, **kwargs)
    u_state = uni.init(item).replace(
        experience=full, current_index=jnp.int32(0), is_full=jnp.bool_(True)
    )
    u_add = jax.jit(uni.add, donate_argnums=0)
    u_sample = jax.jit(lambda s, k: uni.sample(s, k).experience)
    rows["flashbax uniform add"], u_state = benchlib.donated_us(
        u_add, u_state, lambda: (items,), repeats
    )
    keys = iter(jax.random.split(jax.random.key(2), repeats + 1))
    rows["flashbax uniform sample"] = benchlib.median_us(
        u_sample, lambda: (u_state, next(keys)), repeats
    )

    per = fbx.make_prioritised_item_buffer(
        add_batches=True, priority_exponent=ALPHA, device="cpu", **kwargs
    )

    def fresh_state():
        """Full of the dqnx data, every priority set at once (bincount: one vectorized pass)."""
        data = jax.tree.map(lambda x: x[None], cartpole_items(jax.random.key(0), capacity))
        state = per.init(item).replace(
            experience=data,
            current_index=jnp.int32(0),
            is_full=jnp.bool_(True),
            running_index=jnp.int32(capacity),
        )
        fill = jax.jit(ptb.set_priorities, static_argnames=("priority_exponent", "device"))
        return fill(state, jnp.arange(capacity), td + EPS, priority_exponent=ALPHA, device="gpu")

    def sample(state, key):
        s = per.sample(state, key)
        return s.experience, s.indices, prioritized.importance_weights(s.probabilities, BETA)

    p_state = fresh_state()
    p_sample = jax.jit(sample)
    keys = iter(jax.random.split(jax.random.key(4), repeats + 1))
    for method, device in FLASHBAX_SET_BATCH.items():

        def add(state, items, device=device):
            # What the item buffer's add does: [add, ...] -> one row [1, add, ...].
            batch = jax.tree.map(lambda x: x[None], items)
            return ptb.prioritised_add(state, batch, 1, 1, device)

        def set_priorities(state, indices, td_abs, device=device):
            return ptb.set_priorities(state, indices, jnp.abs(td_abs) + EPS, ALPHA, device)

        p_add = jax.jit(add, donate_argnums=0)
        p_set = jax.jit(set_priorities, donate_argnums=0)
        rows[f"flashbax prioritized add ({method})"], p_state = benchlib.donated_us(
            p_add, p_state, lambda: (items,), repeats
        )
        if method == "scan":
            rows["flashbax prioritized sample"] = benchlib.median_us(
                p_sample, lambda s=p_state: (s, next(keys)), repeats
            )
        rows[f"flashbax prioritized set_priorities ({method})"], p_state = benchlib.donated_us(
            p_set, p_state, lambda: (idx, new_td), repeats
        )
    ops = ["add (scan)", "add (bincount)", "sample", "set_priorities (scan)"]
    ops.append("set_priorities (bincount)")
    order = ["flashbax uniform add", "flashbax uniform sample"]
    order += [f"flashbax prioritized {op}" for op in ops]
    return {name: rows[name] for name in order}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacities", default="100000,1000000")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--add_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    capacities = [int(float(c)) for c in args.capacities.split(",")]

    fbx, fbx_version, fbx_error = benchlib.import_flashbax()
    print(f"devices: {jax.devices()}")
    print(f"batch_size={args.batch_size} add_size={args.add_size} repeats={args.repeats}")
    print(f"flashbax {fbx_version}" if fbx else f"flashbax: NOT AVAILABLE ({fbx_error})")
    results = {c: bench(c, args.batch_size, args.add_size, args.repeats, fbx) for c in capacities}
    names = list(next(iter(results.values())))
    width = max(32, *(len(n) + 2 for n in names))
    header = f"{'operation (median µs)':<{width}}" + "".join(f"{c:>14,}" for c in capacities)
    print(header)
    print("-" * len(header))
    for name in names:
        print(f"{name:<{width}}" + "".join(f"{results[c][name]:>14.1f}" for c in capacities))
    if fbx is None:
        print(f"{'flashbax (all rows)':<{width}}  NOT AVAILABLE: pip install -e '.[bench]'")

    result = {
        **benchlib.runtime_info(),
        "capacities": capacities,
        "batch_size": args.batch_size,
        "add_size": args.add_size,
        "repeats": args.repeats,
        "flashbax": fbx_version,
        "flashbax_error": fbx_error,
        "results": [
            {"operation": name, "capacity": c, "us": results[c][name]}
            for name in names
            for c in capacities
        ],
    }
    assert all(math.isfinite(r["us"]) for r in result["results"])
    benchlib.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
