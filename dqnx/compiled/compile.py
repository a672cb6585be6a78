"""Ahead-of-time compilation of the compiled mode's programs on their devices."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dqnx import parallel, xla
from dqnx.compiled.state import ChunkMetrics, TrainFns, TrainState, metric_specs, state_specs


class Compiled(NamedTuple):
    """The compiled programs of a run, placed on its devices.

    ``chunk(state, num_iterations=None)`` runs ``num_iterations`` iterations
    (default: the config's ``iterations_per_chunk``); one program serves every
    length, so a run's last, shorter chunk compiles nothing. ``evaluate`` may
    still be compiling on a worker thread (see ``compile_train``): calling it
    waits for that compile."""

    init: Any
    initial_state: TrainState
    prefill: Any
    chunk: Callable[..., tuple[TrainState, ChunkMetrics]]
    evaluate: Any
    compile_s: float  # wall seconds until init, prefill and chunk are ready
    compile_parts_s: dict  # {program: seconds}, lowering and compile (threads overlap)
    layout: parallel.Layout


def compile_train(fns: TrainFns, *, training: bool = True) -> Compiled:
    """Compiles ``fns`` for its ``layout`` (seeds x data devices), ahead of time.

    Each program compiles on a worker thread as soon as it is lowered, on the
    abstract initial state (shardings included), the chunk first: lowering,
    which holds the GIL, overlaps with compiling, which does not. With
    ``training=True`` this returns once ``init``, ``prefill`` and ``chunk`` are
    compiled; ``evaluate``, needed only after the first chunk, then lowers and
    compiles on a worker thread while prefill and the first chunk run
    (``Compiled.evaluate`` is an ``xla.Deferred``). With ``training=False`` only
    ``init`` and ``evaluate`` are compiled, before returning (``prefill`` and
    ``chunk`` are None): enough to evaluate a checkpoint."""
    t_start = time.perf_counter()
    xla.prepare()
    mesh = parallel.make_mesh(fns.layout)
    specs = state_specs(fns.config, fns.traces_hparams)
    per_seed, replicated = P(parallel.SEEDS), P()

    def scalar(n: int):
        # Made by jitted functions so every process builds its shards of the same arrays.
        return jax.jit(lambda: jnp.int32(n), out_shardings=parallel.shardings(mesh, replicated))()

    # The runs' keys and (a sweep's) traced hyperparameters, the init's inputs.
    keys = jax.jit(
        lambda: (fns.run_keys(), fns.initial_hparams()),
        out_shardings=parallel.shardings(mesh, per_seed),
    )()
    default_n = fns.config.iterations_per_chunk
    chunk_n = scalar(default_n)
    lower_s = {}

    def spmd_jit(fn, in_specs, out_specs, donate=True):
        wrapped = parallel.spmd(fn, mesh, in_specs, out_specs)
        return jax.jit(wrapped, donate_argnums=(0,) if donate else ())

    init = parallel.spmd(lambda inputs: fns.init(*inputs), mesh, (per_seed,), specs)
    init_jit = jax.jit(init, out_shardings=parallel.shardings(mesh, specs))
    evaluate_jit = spmd_jit(fns.evaluate, (specs,), per_seed, donate=False)
    # Tracing makes many short-lived objects and few cycles; the cyclic collector
    # scanning JAX's long-lived ones took ~20% of the lowering time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with xla.ParallelCompiler() as compiler:

            def lower(name, jitted, *args, **speed):
                t0 = time.perf_counter()
                lowered = jitted.lower(*args)
                lower_s[name] = time.perf_counter() - t0
                compiler.submit(name, lowered, **speed)  # compiles while the next lowers

            state_info = init_jit.eval_shape(keys)
            if training:
                chunk_jit = spmd_jit(fns.run_chunk, (specs, replicated), (specs, metric_specs()))
                quantile = fns.config.quantile_loss
                lower("chunk", chunk_jit, state_info, chunk_n, hot=True, quantile_loss=quantile)
            lower("init", init_jit, keys, hot=False, trivial=True)
            if training:
                lower("prefill", spmd_jit(fns.prefill, (specs,), (specs, per_seed)), state_info,
                      hot=False, run_once=True)  # fmt: skip
            else:
                lower("evaluate", evaluate_jit, state_info, hot=False)
            compiled, compile_s = compiler.results()
    finally:
        if gc_was_enabled:
            gc.enable()
    state = compiled["init"](keys)
    parts_s = {k: lower_s[k] + compile_s[k] for k in compiled}

    chunk, evaluate = None, compiled.get("evaluate")
    if training:
        chunk_c, counts = compiled["chunk"], {default_n: chunk_n}

        def chunk(state, num_iterations=None):
            n = default_n if num_iterations is None else int(num_iterations)
            if n not in counts:
                counts[n] = scalar(n)
            return chunk_c(state, counts[n])

        evaluate = xla.compile_in_background(evaluate_jit, state_info)

    return Compiled(
        init=compiled["init"],
        initial_state=state,
        prefill=compiled.get("prefill"),
        chunk=chunk,
        evaluate=evaluate,
        compile_s=time.perf_counter() - t_start,
        compile_parts_s=parts_s,
        layout=fns.layout,
    )
