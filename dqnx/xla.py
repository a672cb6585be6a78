"""How dqnx asks XLA to compile on CPU, and parallel ahead-of-time compiles.

Two CPU-only settings (their measured effect is in docs/performance.md,
from ``scripts/bench.py``):

* **Threefry unrolled.** On CPU, JAX lowers every random-bits call to a
  5-trip ``while`` loop, each trip a separate kernel launch on XLA's CPU
  runtime. The accelerator lowering, an unrolled out-of-line function, makes
  the same bits with one fused kernel: same numbers bit for bit.
* **Legacy fusion emitters** (``xla_cpu_use_fusion_emitters=False``) for the
  programs whose speed hardly matters (init, prefill, evaluate): they compile
  faster. The numbers can differ from the default emitters in the last bits of
  float math, so a run is reproducible with the same options, as always.

* **XLA's own reductions for the quantile learners** (QR-DQN, IQN): XLA:CPU
  (jaxlib 0.10) hands reductions to YNNPACK library fusions by default. The
  quantile Huber loss reduces [N, N'] pairwise terms per example; at batch 64 and
  200 quantiles its value and gradient took ~45 ms in those fusions and ~6 ms in
  XLA's own loops (docs/performance.md). Their hot programs compile with
  ``QUANTILE_OPTIONS``, which keeps YNNPACK for matmuls and convolutions only.
  Other learners keep XLA's defaults (there the choice measured the same speed,
  and their numbers stay as they were).

Whether a platform gets them is decided in ``dqnx.platforms`` (off on GPU and
TPU); ``DQNX_XLA_CPU_TUNING=0`` turns them off (for A/B timings). An option an XLA
version no longer knows is dropped after one trial compile, and a JAX without
the private threefry hook runs with its own lowering: newer JAX keeps working,
only slower to compile.

On every platform, ``compile`` keeps the executables it built in this process
(by program text, options and devices), so a program built afresh for a resumed
or repeated run is not compiled again.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax

from dqnx import platforms

CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
QUANTILE_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    )
}


def tuning_enabled() -> bool:
    """False when ``DQNX_XLA_CPU_TUNING=0`` (``platforms.tuning_enabled``)."""
    return platforms.tuning_enabled()


@functools.cache
def unroll_threefry_on_cpu() -> bool:
    """Registers the unrolled threefry lowering for CPU; True if it took."""
    if not platforms.choices_for("cpu").unroll_threefry:
        return False
    try:
        from jax._src.random import threefry2x32 as tf
        from jax.interpreters import mlir

        rule = tf._threefry2x32_lowering_rule
        mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu", inline=False)
    except (ImportError, AttributeError, TypeError):
        return False
    return True


@functools.cache
def _supported_cpu_options() -> tuple:
    return _supported(CPU_COMPILER_OPTIONS)


def _supported(options: dict) -> tuple:
    import numpy as np

    kept = []
    for name, value in options.items():
        try:
            jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options={name: value})
        except Exception:  # an option this XLA does not know: compile without it
            continue
        kept.append((name, value))
    return tuple(kept)


@functools.cache
def _supported_quantile_options() -> tuple:
    return _supported(QUANTILE_OPTIONS)


@functools.cache
def _supported_level(level: int) -> tuple:
    return _supported({"xla_backend_optimization_level": level})


def compiler_options() -> dict:
    """Options for ``Lowered.compile`` of a cold program on this backend ({} off CPU)."""
    if not platforms.current().fast_compile_cold:
        return {}
    return dict(_supported_cpu_options())


def prepare() -> None:
    """Call before lowering anything dqnx compiles (idempotent)."""
    if platforms.current().unroll_threefry:
        unroll_threefry_on_cpu()


def program_options(
    hot: bool = True, run_once: bool = False, trivial: bool = False, quantile_loss: bool = False
) -> dict:
    """Compile options for one program. ``hot=False`` marks a program whose speed
    hardly matters (init, prefill, evaluate): on CPU it compiles with the faster
    legacy fusion emitters; ``run_once`` also lowers the LLVM optimisation level
    to 1, ``trivial`` (a program that runs once and does little, like init) to 0.
    ``quantile_loss`` marks a hot program that trains a quantile learner (QR-DQN,
    IQN): on CPU it compiles with ``QUANTILE_OPTIONS``."""
    if hot:
        if quantile_loss and platforms.current().quantile_native_reductions:
            return dict(_supported_quantile_options())
        return {}
    options = compiler_options()
    if (run_once or trivial) and options:
        options.update(_supported_level(0 if trivial else 1))
    return options


_EXECUTABLES: collections.OrderedDict = collections.OrderedDict()
_EXECUTABLES_LOCK = threading.Lock()
EXECUTABLE_CACHE_SIZE = 32


def _executable_key(lowered, options: dict | None):
    """What an executable depends on: the program's text, the compile options, the
    devices of its inputs and outputs (in order) and the pytree structures it is
    called with and returns (two programs can have one text for arguments of
    different structure: inputs the program does not use are left out of its text,
    as an optimizer state of another shape is from ``evaluate``). None, so never
    reused: a
    program that calls back into Python (its text names callbacks by index, not by
    identity), one with an input or output whose devices JAX chooses at compile
    time (no sharding given), or one this JAX cannot describe."""
    try:
        args = lowered._lowering.compile_args
        if args.get("host_callbacks"):
            return None
        placement = []
        for i, sharding in enumerate((*args["in_shardings"], *args["out_shardings"])):
            if not hasattr(sharding, "device_set"):  # unspecified: follows from the inputs,
                if i < len(args["in_shardings"]):  # but an input's is chosen at compile time
                    return None
                placement.append(None)
                continue
            mesh = getattr(sharding, "mesh", None)
            devices = getattr(mesh, "devices", None)
            if devices is not None:
                ids = tuple(d.id for d in devices.flat)
            else:
                ids = tuple(sorted(d.id for d in sharding.device_set))
            placement.append((repr(sharding), ids))
        if not any(placement):
            return None
        text = lowered.as_text()
        trees = (str(lowered.in_tree), str(lowered.out_tree))
    except Exception:  # a JAX whose Lowered has other internals: no reuse
        return None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return digest, tuple(sorted((options or {}).items())), tuple(placement), trees


def compile(lowered, options: dict | None = None):
    """``lowered.compile`` with ``options`` (as from ``program_options``; none: XLA's
    defaults). A program this process compiled before, the same text for the same
    devices with the same options, is not compiled again: ``jax.jit`` reuses its
    executables only for the same Python function, and dqnx builds its programs'
    functions afresh per run, so without this a resumed run, a run repeated in a
    notebook or a test, recompiled everything (~10 s for the smallest run on CPU).
    The executable is the one XLA would make again (compiles are deterministic), so
    numbers do not change. The last ``EXECUTABLE_CACHE_SIZE`` are kept."""
    key = _executable_key(lowered, options)
    if key is not None:
        with _EXECUTABLES_LOCK:
            if key in _EXECUTABLES:
                _EXECUTABLES.move_to_end(key)
                return _EXECUTABLES[key]
    compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
    if key is not None:
        with _EXECUTABLES_LOCK:
            _EXECUTABLES[key] = compiled
            while len(_EXECUTABLES) > EXECUTABLE_CACHE_SIZE:
                _EXECUTABLES.popitem(last=False)
    return compiled


def clear_executables() -> None:
    """Forgets the executables ``compile`` kept (the next compile of each is fresh)."""
    with _EXECUTABLES_LOCK:
        _EXECUTABLES.clear()


def _timed_compile(lowered, options: dict):
    t0 = time.perf_counter()
    compiled = compile(lowered, options)
    return compiled, time.perf_counter() - t0


class ParallelCompiler:
    """Compiles ``Lowered`` programs on worker threads as soon as they are
    lowered, so that lowering (Python, holds the GIL) overlaps with compiling
    (XLA, releases it) and compiles overlap each other.

        with ParallelCompiler() as pc:
            pc.submit("a", jax.jit(f).lower(x))
            ...
        compiled, seconds = pc.results()
    """

    def __init__(self, workers: int | None = None):
        self._pool = ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1))
        self._futures = {}

    def submit(
        self,
        name: str,
        lowered,
        hot: bool = True,
        run_once: bool = False,
        trivial: bool = False,
        quantile_loss: bool = False,
    ) -> None:
        """Queues ``lowered`` with ``program_options(hot, run_once, trivial, quantile_loss)``."""
        options = program_options(hot, run_once, trivial, quantile_loss)
        self._futures[name] = self._pool.submit(_timed_compile, lowered, options)

    def results(self) -> tuple[dict, dict]:
        """({name: Compiled}, {name: compile seconds}); waits for all."""
        done = {name: f.result() for name, f in self._futures.items()}
        return {n: c for n, (c, _) in done.items()}, {n: s for n, (_, s) in done.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)
        return False


class Deferred:
    """A program lowered and compiled on a worker thread; calling it waits for the
    compile (and raises what the compile raised). ``seconds()`` waits too and
    returns the lowering + compile seconds."""

    def __init__(self, future):
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def seconds(self) -> float:
        return self._future.result()[1]

    def __call__(self, *args):
        return self._future.result()[0](*args)


_BACKGROUND = ThreadPoolExecutor(1, thread_name_prefix="dqnx-compile")


def compile_in_background(jitted, *args, hot: bool = False) -> Deferred:
    """Lowers and compiles ``jitted`` for ``args`` on a worker thread (one, shared,
    so background compiles never compete with each other)."""
    options = program_options(hot)

    def work():
        t0 = time.perf_counter()
        compiled, _ = _timed_compile(jitted.lower(*args), options)
        return compiled, time.perf_counter() - t0

    return Deferred(_BACKGROUND.submit(work))
