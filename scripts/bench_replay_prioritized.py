"""Microseconds per call of prioritized vs uniform replay on CartPole-shaped transitions.

  python scripts/bench_replay_prioritized.py [--capacities=100000,1000000] \
      [--batch_size=256] [--add_size=8] [--repeats=200]

Each buffer is first filled to capacity (random priorities), then every
operation is jitted, called once to compile and warm up, and timed
``--repeats`` times with ``block_until_ready``; the median is reported.
``add`` and ``update_priorities`` donate the state, so they update in place as
they do inside a training chunk. ``sample (cumsum)`` is the alternative to the
sum tree: stratified targets located by ``searchsorted`` in a cumulative sum
of all priorities, O(capacity) per batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dqnx import prioritized, replay  # noqa: E402
from dqnx.types import Transition  # noqa: E402


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


def median_us(fn, args_fn, repeats):
    """Median wall time in µs of ``fn(*args_fn())``, after one untimed call."""
    jax.block_until_ready(fn(*args_fn()))
    times = []
    for _ in range(repeats):
        args = args_fn()
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def cumsum_sample(state, key, batch_size, beta, capacity):
    """Stratified sampling by cumsum + searchsorted over all priorities."""
    p = prioritized.priorities(state, capacity)
    cdf = jnp.cumsum(p)
    u = jax.random.uniform(key, (batch_size,))
    targets = (jnp.arange(batch_size) + u) * (cdf[-1] / batch_size)
    idx = jnp.minimum(jnp.searchsorted(cdf, targets, side="right"), capacity - 1)
    weights = prioritized.importance_weights(p[idx], beta)
    return jax.tree.map(lambda b: b[idx], state.data), idx, weights


def bench(capacity, batch_size, add_size, repeats):
    items = cartpole_items(jax.random.key(1), add_size)
    rows = {}

    uni = replay.uniform_replay(capacity, add_batch_size=add_size)
    u_state = replay.ReplayState(
        cartpole_items(jax.random.key(0), capacity), jnp.int32(0), jnp.int32(capacity)
    )
    u_add = jax.jit(uni.add, donate_argnums=0)
    u_sample = jax.jit(uni.sample, static_argnums=2)
    holder = {"u": u_state}

    def u_add_step(state, items):
        holder["u"] = u_add(state, items)
        return holder["u"]

    rows["uniform add"] = median_us(u_add_step, lambda: (holder["u"], items), repeats)
    keys = iter(jax.random.split(jax.random.key(2), repeats + 1))
    rows["uniform sample"] = median_us(
        u_sample, lambda: (holder["u"], next(keys), batch_size), repeats
    )

    per = prioritized.prioritized_replay(capacity, add_batch_size=add_size)
    full = cartpole_items(jax.random.key(0), capacity)  # a fresh copy: add donates
    p_state = per.init(jax.tree.map(lambda x: x[0], full))._replace(
        data=full, size=jnp.int32(capacity)
    )
    td = jax.random.exponential(jax.random.key(3), (capacity,))
    p_state = jax.jit(per.update_priorities)(p_state, jnp.arange(capacity), td)
    p_add = jax.jit(per.add, donate_argnums=0)
    p_update = jax.jit(per.update_priorities, donate_argnums=0)
    p_sample = jax.jit(per.sample, static_argnums=2)
    c_sample = jax.jit(cumsum_sample, static_argnums=(2, 4))
    holder["p"] = p_state

    def p_add_step(state, items):
        holder["p"] = p_add(state, items)
        return holder["p"]

    def p_update_step(state, idx, td):
        holder["p"] = p_update(state, idx, td)
        return holder["p"]

    rows["prioritized add"] = median_us(p_add_step, lambda: (holder["p"], items), repeats)
    keys = iter(jax.random.split(jax.random.key(4), 2 * repeats + 2))
    rows["prioritized sample (sum tree)"] = median_us(
        p_sample, lambda: (holder["p"], next(keys), batch_size, 0.4), repeats
    )
    rows["prioritized sample (cumsum)"] = median_us(
        c_sample, lambda: (holder["p"], next(keys), batch_size, 0.4, capacity), repeats
    )
    idx = jax.random.randint(jax.random.key(5), (batch_size,), 0, capacity)
    new_td = jax.random.exponential(jax.random.key(6), (batch_size,))
    rows["prioritized update_priorities"] = median_us(
        p_update_step, lambda: (holder["p"], idx, new_td), repeats
    )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacities", default="100000,1000000")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--add_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    capacities = [int(float(c)) for c in args.capacities.split(",")]
    print(f"devices: {jax.devices()}")
    print(f"batch_size={args.batch_size} add_size={args.add_size} repeats={args.repeats}")
    results = {c: bench(c, args.batch_size, args.add_size, args.repeats) for c in capacities}
    names = list(next(iter(results.values())))
    header = f"{'operation (median µs)':<32}" + "".join(f"{c:>14,}" for c in capacities)
    print(header)
    print("-" * len(header))
    for name in names:
        print(f"{name:<32}" + "".join(f"{results[c][name]:>14.1f}" for c in capacities))


if __name__ == "__main__":
    main()
