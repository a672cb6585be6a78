"""The learner of a host-actor config alone, for ``scripts/bench.py``.

A host environment (``--env_name=LIB:ID``, e.g. ``ale:pong``) has no compiled
loop to time, so ``bench.py`` times its learner alone: ``learner.update`` (or
``update_weighted``), ``updates_per_iteration`` of them a jitted call (an unrolled
``lax.scan``, as the host learner's ingest), ``--iterations`` calls a round, on
one device, cycling through 4 batches made up front (random observations of the
environment's shape and dtype, random actions, rewards and ends), the state
donated. Rounds and a few ``--matmul_size`` matmuls alternate, so that load from
elsewhere falls on the learner and its yardstick alike. Replay (adding,
sampling) is not in it: ``scripts/bench_host.py`` times the whole ingest.

Imported by ``scripts/bench.py`` after it has set the CPU device count.
"""

from __future__ import annotations

import os
import statistics
import time

import benchlib
import jax
import jax.numpy as jnp
import numpy as np

from dqnx import builder, xla
from dqnx.host_actors.schedule import env_maker
from dqnx.nstep import NStepTransition
from dqnx.types import Transition

BATCHES = 4  # distinct batches the learner cycles through


def random_batches(config, spec, rng: np.random.Generator):
    """``BATCHES`` stacked batches ``[K, B, ...]`` of the environment's shapes."""
    shape = (BATCHES, config.batch_size)

    def obs():
        if np.issubdtype(spec.obs_dtype, np.integer):
            return rng.integers(0, 256, (*shape, *spec.obs_shape)).astype(spec.obs_dtype)
        return rng.random((*shape, *spec.obs_shape)).astype(spec.obs_dtype)

    fields = (
        obs(),
        rng.integers(0, spec.num_actions, shape).astype(np.int32),
        rng.normal(size=shape).astype(np.float32),
        obs(),
        rng.random(shape) < 0.01,
    )
    if config.n_step > 1:
        discount = np.where(fields[-1], 0.0, config.gamma**config.n_step).astype(np.float32)
        return NStepTransition(*fields, discount)
    return Transition(*fields)


def bench(config, n: int, chunks: int, matmul_size: int, matmul_repeats: int) -> dict:
    probe = env_maker(config)(1, config.seed)
    spec = probe.spec
    probe.close()
    network = builder.make_network(config, spec.obs_shape, spec.num_actions)
    learner = builder.make_learner(config, network)
    device = jax.local_devices()[0]
    batches = jax.device_put(random_batches(config, spec, np.random.default_rng(0)), device)
    example = jax.tree.map(lambda x: x[0], batches)
    state = jax.jit(learner.init, device=device)(jax.random.key(config.seed), example.obs)
    weights = jnp.ones(config.batch_size) if config.prioritized else None
    updates = config.updates_per_iteration

    def run(state, batches, t):
        def one(carry, _):
            state, t = carry
            batch = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, t % BATCHES, 0, False),
                                 batches)  # fmt: skip
            state, metrics = learner.update_weighted(state, batch, weights)[:2]
            return (state, t + 1), metrics["loss"]

        # Unrolled, as the host learner's ingest runs its updates: XLA:CPU runs a
        # convolution inside a while loop many times slower than outside one.
        (state, t), loss = jax.lax.scan(one, (state, t), None, length=updates, unroll=True)
        return state, t, loss.sum()

    def chunk(state):
        t = jnp.int32(0)
        for _ in range(n):
            state, t, loss = program(state, batches, t)
        jax.block_until_ready((state, loss))
        return state

    t0 = time.perf_counter()
    lowered = jax.jit(run, donate_argnums=(0,)).lower(state, batches, jnp.int32(0))
    program = xla.compile(lowered, xla.program_options(quantile_loss=config.quantile_loss))
    compile_s = time.perf_counter() - t0
    state = chunk(state)  # warm-up
    matmul = benchlib.matmul_timer(matmul_size)
    per_round = -(-matmul_repeats // chunks)
    times, matmul_times = [], []
    for _ in range(chunks):
        t0 = time.perf_counter()
        state = chunk(state)
        times.append(time.perf_counter() - t0)
        matmul_times += [matmul() for _ in range(per_round)]
    one_update = jax.tree.map(lambda x: x[0], batches)
    update = lambda s, b: learner.update_weighted(s, b, weights)[:2]  # noqa: E731
    flops_xla = benchlib.xla_flops(update, state, one_update)
    return {
        "env": config.env_name,
        "network": type(network).__name__,
        "conv_impl": config.conv_impl,
        "compute_dtype": config.compute_dtype,
        "batch_size": config.batch_size,
        "updates_per_call": updates,
        "updates_per_chunk": n * updates,
        "chunks": chunks,
        "compile_s": compile_s,
        "chunk_s_all": times,
        "ms_per_update": 1e3 * statistics.median(times) / (n * updates),
        "ms_per_update_best": 1e3 * min(times) / (n * updates),
        "xla_flops_per_update": flops_xla,
        "load_avg_1m_end": os.getloadavg()[0],
        "config": config.to_dict(),
        "matmul": benchlib.matmul_stats(matmul_size, matmul_times),
    }


def print_report(info: dict, r: dict) -> None:
    mm = r["matmul"]
    gflops = r["xla_flops_per_update"] / (r["ms_per_update"] * 1e-3) / 1e9
    print(
        f"# {info['cpu']}, {info['cores']} cores, jax {info['jax']} {info['backend']}; load "
        f"average {info['load_avg_1m']:.1f} at start, {r['load_avg_1m_end']:.1f} at end"
    )
    print(
        f"# {r['env']} (a host environment): the learner alone on one device, {r['network']} "
        f"conv_impl={r['conv_impl']} compute_dtype={r['compute_dtype']}, batch "
        f"{r['batch_size']}; median of {r['chunks']} rounds of {r['updates_per_chunk']} updates "
        f"({r['updates_per_call']} a call, unrolled) after one warm-up (compile "
        f"{r['compile_s']:.1f} s)"
    )
    print(
        f"learner: {r['ms_per_update']:.1f} ms/update (best round {r['ms_per_update_best']:.1f}), "
        f"{r['xla_flops_per_update'] / 1e9:.2f} GFLOP/update (XLA cost analysis) -> "
        f"{gflops:.1f} GFLOP/s = {gflops / mm['gflops']:.0%} of the matmul yardstick"
    )
    print(
        f"matmul {mm['size']}x{mm['size']} f32 on the same device: {mm['gflops']:.1f} GFLOP/s "
        f"(median of {mm['repeats']} calls between the rounds; best {mm['gflops_best']:.1f})"
    )
