"""dqnx's uniform replay next to flashbax at equal capacity, batch and transition shape.

  python scripts/bench_replay.py [--capacity=100000] [--batch=128] [--add=10] \
      [--repeats=200] [--out=replay.json]

For CartPole transitions (obs float32[4]) and MinAtar transitions (obs
bool[10, 10, 4]), each buffer is filled to capacity, then:

* ``add`` (``--add`` transitions, jitted, the state donated so it updates in
  place) and ``sample`` (``--batch`` transitions, jitted) are called once to
  compile and warm up, then timed ``--repeats`` times with
  ``block_until_ready``; the median is reported (``call``: includes dispatch).
* the same ops ``--repeats`` times inside one jitted ``lax.scan`` (``in scan``:
  per op, no dispatch; sampled batches are summed so they are not dropped), as
  they run inside a dqnx training chunk.
* device bytes per transition: the nbytes of every array of the state / capacity.

Buffers: ``dqnx`` ``replay.uniform_replay`` stores (s, a, r, s', terminated);
``flashbax item`` (``make_item_buffer``) stores the same transitions;
``flashbax flat`` (``make_flat_buffer``) stores steps (s, a, r, terminated) and
pairs neighbours into (s, s'): half the observation memory, but it cannot hold
the true final observation of a time-limit truncation that dqnx bootstraps from.
"""

from __future__ import annotations

import argparse
import itertools
import math
from typing import NamedTuple

import benchlib
import jax
import jax.numpy as jnp
import numpy as np

from dqnx import replay
from dqnx.types import Transition

SHAPES = {  # --observations: (label, shape, dtype)
    "cartpole": ("CartPole (obs float32[4])", (4,), jnp.float32),
    "minatar": ("MinAtar (obs bool[10,10,4])", (10, 10, 4), jnp.bool_),
}


class Step(NamedTuple):
    """What the flashbax flat buffer stores per env step."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array


def transitions(seed, n, obs_shape, dtype) -> Transition:
    """``n`` random transitions as NumPy arrays (nothing to compile)."""
    rng = np.random.default_rng(seed)

    def obs():
        if dtype == jnp.bool_:
            return rng.random((n, *obs_shape)) < 0.1
        return rng.standard_normal((n, *obs_shape)).astype(dtype)

    return Transition(
        obs=obs(),
        action=rng.integers(0, 4, n).astype(np.int32),
        reward=rng.random(n).astype(np.float32),
        next_obs=obs(),
        terminated=np.zeros((n,), bool),
    )


def steps(seed, n, obs_shape, dtype) -> Step:
    t = transitions(seed, n, obs_shape, dtype)
    return Step(t.obs, t.action, t.reward, t.terminated)


class Bench(NamedTuple):
    """One buffer as pure functions: init() -> state; add(state, items) -> state;
    sample(state, key) -> batch pytree; make_items(seed) -> items to add."""

    init: object
    add: object
    sample: object
    make_items: object


def bench_of(buf, sample, make, add, obs_shape, dtype) -> Bench:
    """The ``Bench`` of buffer ``buf`` holding what ``make`` (``transitions`` or
    ``steps``) makes, ``add`` at a time; ``sample(state, key) -> batch``."""
    item = jax.tree.map(lambda x: x[0], make(0, 1, obs_shape, dtype))
    return Bench(
        init=lambda: buf.init(item),
        add=buf.add,
        sample=sample,
        make_items=lambda k: make(k, add, obs_shape, dtype),
    )


def dqnx_buffer(capacity, batch, add, obs_shape, dtype) -> Bench:
    buf = replay.uniform_replay(capacity, add_batch_size=add)
    sample = lambda s, k: buf.sample(s, k, batch)[0]
    return bench_of(buf, sample, transitions, add, obs_shape, dtype)


def flashbax_item_buffer(fbx, capacity, batch, add, obs_shape, dtype) -> Bench:
    buf = fbx.make_item_buffer(
        max_length=capacity, min_length=batch, sample_batch_size=batch, add_batches=True
    )
    sample = lambda s, k: buf.sample(s, k).experience
    return bench_of(buf, sample, transitions, add, obs_shape, dtype)


def flashbax_flat_buffer(fbx, capacity, batch, add, obs_shape, dtype) -> Bench:
    buf = fbx.make_flat_buffer(
        max_length=capacity, min_length=batch, sample_batch_size=batch, add_batch_size=add
    )
    sample = lambda s, k: buf.sample(s, k).experience
    return bench_of(buf, sample, steps, add, obs_shape, dtype)


def measure(b: Bench, capacity: int, add: int, repeats: int) -> dict:
    items = [jax.device_put(b.make_items(seed)) for seed in range(1, 5)]
    keys = list(jax.random.split(jax.random.key(2), repeats))

    add_j = jax.jit(b.add, donate_argnums=0)
    sample_j = jax.jit(b.sample)
    state = b.init()
    for i in range(-(-capacity // add)):  # fill to capacity (and compile, warm up)
        state = add_j(state, items[i % len(items)])
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    jax.block_until_ready(sample_j(state, keys[0]))

    # Warmed up by the fill above; add donates the state, so every call starts from
    # the previous call's output.
    cycled = itertools.cycle(items)
    add_us, state = benchlib.donated_us(
        add_j, state, lambda: (next(cycled),), repeats, warmup=False
    )
    timed_keys = iter(keys)
    sample_us = benchlib.median_us(
        sample_j, lambda: (state, next(timed_keys)), repeats, warmup=False
    )

    # The same inside one compiled scan (per op, no dispatch).
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *items)

    @jax.jit(donate_argnums=0)
    def add_scan(state):
        def body(s, i):
            return b.add(s, jax.tree.map(lambda x: x[i % len(items)], stacked)), None

        return jax.lax.scan(body, state, jnp.arange(repeats))[0]

    @jax.jit
    def sample_scan(state, key):
        def body(acc, k):
            return acc + benchlib.checksum(b.sample(state, k)), None

        return jax.lax.scan(body, jnp.float32(0), jax.random.split(key, repeats))[0]

    state = jax.block_until_ready(add_scan(state))
    state, add_scan_s = benchlib.timed(add_scan, state)
    jax.block_until_ready(sample_scan(state, keys[0]))
    _, sample_scan_s = benchlib.timed(sample_scan, state, keys[1])
    return {
        "add_us": add_us,
        "sample_us": sample_us,
        "add_us_in_scan": 1e6 * add_scan_s / repeats,
        "sample_us_in_scan": 1e6 * sample_scan_s / repeats,
        "state_bytes": nbytes,
        "bytes_per_transition": nbytes / capacity,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--add", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--observations", default="cartpole,minatar",
        help="which observation kinds, comma-separated: cartpole (float32[4]), minatar "
        "(bool[10,10,4])",
    )  # fmt: skip
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.observations.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(SHAPES))
    if unknown or not kinds:
        parser.error(f"--observations: unknown {unknown or kinds}; one or more of {list(SHAPES)}")

    fbx, fbx_version, fbx_error = benchlib.import_flashbax()
    runtime = benchlib.runtime_info()
    print(
        f"# jax {runtime['jax']} {runtime['backend']}, {runtime['cores']} cores; capacity "
        f"{args.capacity:,d}, batch {args.batch}, add {args.add}; median of {args.repeats} "
        "jitted calls (add donates the state), or per op in one lax.scan of as many"
    )
    if fbx is None:
        print(
            f"# flashbax: NOT AVAILABLE ({fbx_error}); only dqnx is measured "
            "(pip install -e '.[bench]')"
        )
    else:
        print(f"# flashbax {fbx_version}")
    header = (
        f"{'transitions':28} {'buffer':15} {'add us':>8} {'sample us':>10} "
        f"{'add (scan)':>11} {'sample (scan)':>14} {'B/transition':>13} {'obs B':>6}"
    )
    print(header)
    rows = []
    for kind in kinds:
        label, obs_shape, dtype = SHAPES[kind]
        obs_bytes = math.prod(obs_shape) * jnp.dtype(dtype).itemsize
        shape = (args.capacity, args.batch, args.add, obs_shape, dtype)
        buffers = {"dqnx": dqnx_buffer(*shape)}
        if fbx is not None:
            buffers["flashbax item"] = flashbax_item_buffer(fbx, *shape)
            buffers["flashbax flat"] = flashbax_flat_buffer(fbx, *shape)
        for name, b in buffers.items():
            r = measure(b, args.capacity, args.add, args.repeats)
            r.update(transitions=label, buffer=name, obs_bytes=obs_bytes)
            rows.append(r)
            print(
                f"{label:28} {name:15} {r['add_us']:>8.1f} {r['sample_us']:>10.1f} "
                f"{r['add_us_in_scan']:>11.2f} {r['sample_us_in_scan']:>14.2f} "
                f"{r['bytes_per_transition']:>13.1f} {obs_bytes:>6d}",
                flush=True,
            )
    result = {
        **runtime,
        "capacity": args.capacity,
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
