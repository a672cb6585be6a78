"""dqnx's replay buffers next to flashbax's: compile time, µs per operation and memory.

  python scripts/bench_replay.py [--mode=uniform|prioritized] [--capacities=100000] \
      [--batch=128] [--add=10] [--repeats=200] [--observations=cartpole,minatar] \
      [--no-scan] [--out=replay.json]

Every buffer is built full (its state holds ``capacity`` random transitions;
prioritized ones get random priorities), then each of its operations is, in
order, on the state the previous one left:

* **compile s**: ``jax.jit(op).lower(...).compile()`` (trace and compile), timed;
* **µs/call**: the compiled op called once to warm up, then ``--repeats`` times
  with ``block_until_ready``, the median (includes dispatch); ``add`` and
  priority updates donate the state, so they update in place as in training;
* **µs in scan** (unless ``--no-scan``): the same op ``--repeats`` times in one
  jitted ``lax.scan``, per op: no dispatch, as inside a dqnx training chunk
  (sampled batches are summed so that they are not dropped);
* **B/transition**: the bytes of every array of the buffer's state / capacity.

``--mode=uniform`` (defaults: capacity 100,000, batch 128, add 10, CartPole and
MinAtar transitions): ``dqnx`` (``replay.uniform_replay``, stores
(s, a, r, s', terminated)); ``flashbax item`` (``make_item_buffer``, the same
transitions); ``flashbax flat`` (``make_flat_buffer``: steps (s, a, r,
terminated), neighbours paired into (s, s'): half the observation memory, but
it cannot hold the final observation of a time-limit truncation that dqnx
bootstraps from).

``--mode=prioritized`` (defaults: capacities 100,000 and 1,000,000, batch 256,
add 8, CartPole transitions): ``dqnx`` and ``flashbax item`` as above, and

* ``dqnx prioritized`` (``prioritized.prioritized_replay``, alpha 0.6):
  ``sample (sum tree)``: stratified, the batch's points descend the tree
  together, ``log2(T)`` vectorized gathers, O(B log N); ``sample (cumsum)``,
  the alternative: stratified targets found by ``searchsorted`` in a
  cumulative sum of all priorities, O(capacity); ``add`` /
  ``update_priorities`` recompute the parents on the leaves' paths, one
  vectorized step per level, O(B log N).
* ``flashbax prioritized`` (``make_prioritised_item_buffer``, alpha 0.6): also
  a sum tree, each of the B points descending it on its own (``vmap`` of a
  ``fori_loop``); its sample returns probabilities, turned into importance
  weights as dqnx's sample does. Its tree updates propagate deltas by one of
  two methods it picks from its ``device`` argument, both timed whatever the
  backend: ``(scan)`` (``device="cpu"``: a sequential ``lax.scan`` over the B
  leaves) and ``(bincount)`` (``device="gpu"``: vectorized, but
  ``jnp.bincount(length=capacity)``, O(capacity) per call). Its ``add`` does two
  such updates.

flashbax is optional (``pip install -e '.[bench]'``); without it the header says
so and only dqnx is measured.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from typing import Any, NamedTuple

import benchlib
import jax
import jax.numpy as jnp
import numpy as np

from dqnx import prioritized, replay
from dqnx.types import Transition

SHAPES = {  # --observations: (label, shape, dtype)
    "cartpole": ("CartPole (obs float32[4])", (4,), jnp.float32),
    "minatar": ("MinAtar (obs bool[10,10,4])", (10, 10, 4), jnp.bool_),
}
DEFAULTS = {  # --mode: the defaults of the flags left out
    "uniform": dict(capacities="100000", batch=128, add=10, observations="cartpole,minatar"),
    "prioritized": dict(capacities="100000,1000000", batch=256, add=8, observations="cartpole"),
}
ALPHA = 0.6  # priority exponent, dqnx's default and flashbax's
BETA = 0.4
EPS = 1e-6  # dqnx adds it to |td|; flashbax is given |td| + EPS
NUM_ITEMS = 4  # distinct batches that ``add`` cycles through


class Shape(NamedTuple):
    """What every buffer of one measurement holds and is asked for."""

    capacity: int
    batch: int
    add: int
    obs_shape: tuple
    dtype: Any


class Op(NamedTuple):
    """One operation: ``fn(state, *args(i))`` for the i-th call (``i`` may be traced).

    ``updates``: ``fn`` returns the new state (donated); else an output to keep.
    """

    fn: Any
    args: Any
    updates: bool


class Subject(NamedTuple):
    """A full buffer and its operations, measured in order."""

    name: str
    state: Any
    ops: dict


def transitions(seed: int, n: int, s: Shape) -> Transition:
    """``n`` random transitions as NumPy arrays (nothing to compile)."""
    rng = np.random.default_rng(seed)

    def obs():
        if s.dtype == jnp.bool_:
            return rng.random((n, *s.obs_shape)) < 0.1
        return rng.standard_normal((n, *s.obs_shape)).astype(s.dtype)

    return Transition(
        obs=obs(),
        action=rng.integers(0, 4, n).astype(np.int32),
        reward=rng.random(n).astype(np.float32),
        next_obs=obs(),
        terminated=np.zeros((n,), bool),
    )


def adds(s: Shape, steps: bool = False) -> Op:
    """``add`` of ``s.add`` transitions (or flashbax flat steps), cycling through a few."""
    items = [transitions(seed, s.add, s) for seed in range(1, NUM_ITEMS + 1)]
    if steps:
        items = [(t.obs, t.action, t.reward, t.terminated) for t in items]
    stacked = jax.device_put(jax.tree.map(lambda *x: np.stack(x), *items))
    return lambda i: (jax.tree.map(lambda x: x[i % NUM_ITEMS], stacked),)


def keys(seed: int):
    key = jax.random.key(seed)
    return lambda i: (jax.random.fold_in(key, i),)


def td_errors(s: Shape):
    """Constant ``(indices, |td|)`` of one priority update of a batch."""
    idx = jax.random.randint(jax.random.key(5), (s.batch,), 0, s.capacity)
    td = jax.random.exponential(jax.random.key(6), (s.batch,))
    return lambda i: (idx, td)


def dqnx_uniform(s: Shape) -> Subject:
    buf = replay.uniform_replay(s.capacity, add_batch_size=s.add)
    state = replay.ReplayState(
        jax.device_put(transitions(0, s.capacity, s)), jnp.int32(0), jnp.int32(s.capacity)
    )
    sample = lambda st, k: buf.sample(st, k, s.batch)[0]
    ops = {"add": Op(buf.add, adds(s), True), "sample": Op(sample, keys(2), False)}
    return Subject("dqnx", state, ops)


def cumsum_sample(state, key, batch_size, beta, capacity):
    """Stratified sampling by cumsum + searchsorted over all priorities."""
    p = prioritized.priorities(state, capacity)
    cdf = jnp.cumsum(p)
    u = jax.random.uniform(key, (batch_size,))
    targets = (jnp.arange(batch_size) + u) * (cdf[-1] / batch_size)
    idx = jnp.minimum(jnp.searchsorted(cdf, targets, side="right"), capacity - 1)
    weights = prioritized.importance_weights(p[idx], beta)
    return jax.tree.map(lambda b: b[idx], state.data), idx, weights


def dqnx_prioritized(s: Shape) -> Subject:
    per = prioritized.prioritized_replay(s.capacity, add_batch_size=s.add, priority_exponent=ALPHA)
    full = jax.device_put(transitions(0, s.capacity, s))
    state = per.init(jax.tree.map(lambda x: x[0], full))._replace(
        data=full, size=jnp.int32(s.capacity)
    )
    td = jax.random.exponential(jax.random.key(3), (s.capacity,))
    state = jax.jit(per.update_priorities)(state, jnp.arange(s.capacity), td)
    ops = {
        "add": Op(per.add, adds(s), True),
        "sample (sum tree)": Op(lambda st, k: per.sample(st, k, s.batch, BETA), keys(4), False),
        "sample (cumsum)": Op(
            lambda st, k: cumsum_sample(st, k, s.batch, BETA, s.capacity), keys(4), False
        ),
        "update_priorities": Op(per.update_priorities, td_errors(s), True),
    }
    return Subject("dqnx prioritized", state, ops)


def flashbax_full(buf, s: Shape, experience):
    """A flashbax buffer's state holding ``experience`` [rows, time, ...], full."""
    item = jax.tree.map(lambda x: x[0, 0], experience)
    return buf.init(item).replace(
        experience=experience, current_index=jnp.int32(0), is_full=jnp.bool_(True)
    )


def flashbax_item(fbx, s: Shape) -> Subject:
    buf = fbx.make_item_buffer(
        max_length=s.capacity, min_length=1, sample_batch_size=s.batch, add_batches=True
    )
    full = jax.device_put(jax.tree.map(lambda x: x[None], transitions(0, s.capacity, s)))
    sample = lambda st, k: buf.sample(st, k).experience
    ops = {"add": Op(buf.add, adds(s), True), "sample": Op(sample, keys(2), False)}
    return Subject("flashbax item", flashbax_full(buf, s, full), ops)


def flashbax_flat(fbx, s: Shape) -> Subject:
    buf = fbx.make_flat_buffer(
        max_length=s.capacity, min_length=s.batch, sample_batch_size=s.batch, add_batch_size=s.add
    )
    t = transitions(0, s.capacity, s)
    rows = lambda x: x.reshape(s.add, s.capacity // s.add, *x.shape[1:])
    full = jax.device_put(tuple(rows(x) for x in (t.obs, t.action, t.reward, t.terminated)))
    sample = lambda st, k: buf.sample(st, k).experience
    ops = {"add": Op(buf.add, adds(s, steps=True), True), "sample": Op(sample, keys(2), False)}
    return Subject("flashbax flat", flashbax_full(buf, s, full), ops)


def flashbax_prioritized(fbx, s: Shape) -> Subject:
    from flashbax.buffers import prioritised_trajectory_buffer as ptb

    per = fbx.make_prioritised_item_buffer(
        max_length=s.capacity, min_length=1, sample_batch_size=s.batch, add_batches=True,
        priority_exponent=ALPHA, device="cpu",
    )  # fmt: skip
    full = jax.device_put(jax.tree.map(lambda x: x[None], transitions(0, s.capacity, s)))
    state = flashbax_full(per, s, full).replace(running_index=jnp.int32(s.capacity))
    td = jax.random.exponential(jax.random.key(3), (s.capacity,))
    fill = jax.jit(ptb.set_priorities, static_argnames=("priority_exponent", "device"))
    state = fill(state, jnp.arange(s.capacity), td + EPS, priority_exponent=ALPHA, device="gpu")

    def sample(st, key):
        out = per.sample(st, key)
        return out.experience, out.indices, prioritized.importance_weights(out.probabilities, BETA)

    def add(device):  # what the item buffer's add does: [add, ...] -> one row [1, add, ...]
        return lambda st, items: ptb.prioritised_add(
            st, jax.tree.map(lambda x: x[None], items), 1, 1, device
        )

    def set_priorities(device):
        return lambda st, i, td: ptb.set_priorities(st, i, jnp.abs(td) + EPS, ALPHA, device)

    ops = {
        "add (scan)": Op(add("cpu"), adds(s), True),
        "add (bincount)": Op(add("gpu"), adds(s), True),
        "sample": Op(sample, keys(4), False),
        "set_priorities (scan)": Op(set_priorities("cpu"), td_errors(s), True),
        "set_priorities (bincount)": Op(set_priorities("gpu"), td_errors(s), True),
    }
    return Subject("flashbax prioritized", state, ops)


def subjects(mode: str, s: Shape, fbx) -> list[Subject]:
    """The buffers ``mode`` compares, dqnx's first (flashbax's where it imports)."""
    out = [dqnx_uniform(s)]
    if mode == "prioritized":
        out.append(dqnx_prioritized(s))
    if fbx is not None:
        out.append(flashbax_item(fbx, s))
        out.append(flashbax_flat(fbx, s) if mode == "uniform" else flashbax_prioritized(fbx, s))
    return out


def measure_op(state, op: Op, repeats: int, scan: bool):
    """``(row, state)``: compile seconds, median µs per call, µs per op in a scan."""
    donate = (0,) if op.updates else ()
    t0 = time.perf_counter()
    call = jax.jit(op.fn, donate_argnums=donate).lower(state, *op.args(0)).compile()
    row = {"compile_s": time.perf_counter() - t0}
    counter = itertools.count(1)
    args = lambda: op.args(next(counter))
    if op.updates:
        row["us"], state = benchlib.donated_us(call, state, args, repeats)
    else:
        row["us"] = benchlib.median_us(call, lambda: (state, *args()), repeats)
    if not scan:
        return row, state

    @jax.jit(donate_argnums=donate)
    def scanned(st):
        def body(carry, i):
            if op.updates:
                return op.fn(carry, *op.args(i)), None
            return carry + benchlib.checksum(op.fn(st, *op.args(i))), None

        return jax.lax.scan(body, st if op.updates else jnp.float32(0), jnp.arange(repeats))[0]

    out = jax.block_until_ready(scanned(state))  # compile and warm up
    state = out if op.updates else state
    out, seconds = benchlib.timed(scanned, state)
    state = out if op.updates else state
    row["us_in_scan"] = 1e6 * seconds / repeats
    return row, state


def measure(subject: Subject, repeats: int, scan: bool) -> list[dict]:
    """One row per operation of ``subject``, with its state's bytes per transition."""
    nbytes = sum(x.nbytes for x in jax.tree.leaves(subject.state))
    state, rows = subject.state, []
    for name, op in subject.ops.items():
        row, state = measure_op(state, op, repeats, scan)
        rows.append({"buffer": subject.name, "operation": name, **row, "state_bytes": nbytes})
    return rows


def report_header(args, fbx_version, fbx_error) -> str:
    runtime = benchlib.runtime_info()
    capacities = ", ".join(f"{c:,d}" for c in args.capacities)
    lines = [
        f"# jax {runtime['jax']} {runtime['backend']}, {runtime['cores']} cores; "
        f"--mode={args.mode}, capacities {capacities}, batch {args.batch}, add {args.add}; "
        f"median of {args.repeats} calls of each compiled op"
        + (", and per op in one lax.scan of as many" if args.scan else ""),
        f"# flashbax {fbx_version}" if fbx_version else
        f"# flashbax: NOT AVAILABLE ({fbx_error}); only dqnx is measured "
        "(pip install -e '.[bench]')",
        f"{'transitions':28} {'capacity':>9} {'buffer':21} {'operation':26} {'compile s':>9} "
        f"{'us/call':>9} {'us (scan)':>9} {'B/transition':>12}",
    ]  # fmt: skip
    return "\n".join(lines)


def report_row(r: dict) -> str:
    scan = f"{r['us_in_scan']:>9.2f}" if "us_in_scan" in r else f"{'-':>9}"
    return (
        f"{r['transitions']:28} {r['capacity']:>9,d} {r['buffer']:21} {r['operation']:26} "
        f"{r['compile_s']:>9.2f} {r['us']:>9.1f} {scan} {r['bytes_per_transition']:>12.1f}"
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=sorted(DEFAULTS), default="uniform")
    p.add_argument("--capacities", help="comma-separated (default: the mode's)")
    p.add_argument("--batch", type=int, help="sampled batch size (default: the mode's)")
    p.add_argument("--add", type=int, help="transitions per add (default: the mode's)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument(
        "--observations",
        help=f"comma-separated, of {list(SHAPES)}: cartpole float32[4], minatar bool[10,10,4] "
        "(default: the mode's)",
    )
    p.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each op inside one lax.scan")  # fmt: skip
    p.add_argument("--out", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for name, default in DEFAULTS[args.mode].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.capacities = [int(float(c)) for c in args.capacities.split(",")]
    if args.mode == "uniform" and any(c % args.add for c in args.capacities):
        p.error("--capacities: each a multiple of --add (flashbax flat keeps --add rows)")
    kinds = [k.strip() for k in args.observations.split(",") if k.strip()]
    if not kinds or set(kinds) - set(SHAPES):
        p.error(f"--observations: {kinds}; one or more of {list(SHAPES)}")

    fbx, fbx_version, fbx_error = benchlib.import_flashbax()
    print(report_header(args, fbx_version, fbx_error), flush=True)
    rows = []
    for kind in kinds:
        label, obs_shape, dtype = SHAPES[kind]
        for capacity in args.capacities:
            shape = Shape(capacity, args.batch, args.add, obs_shape, dtype)
            for subject in subjects(args.mode, shape, fbx):
                for r in measure(subject, args.repeats, args.scan):
                    r.update(
                        transitions=label, capacity=capacity,
                        obs_bytes=math.prod(obs_shape) * jnp.dtype(dtype).itemsize,
                        bytes_per_transition=r["state_bytes"] / capacity,
                    )  # fmt: skip
                    rows.append(r)
                    print(report_row(r), flush=True)
    result = {
        **benchlib.runtime_info(),
        "mode": args.mode,
        "capacities": args.capacities,
        "batch": args.batch,
        "add": args.add,
        "repeats": args.repeats,
        "observations": kinds,
        "flashbax": fbx_version,
        "flashbax_error": fbx_error,
        "results": rows,
    }
    benchlib.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
