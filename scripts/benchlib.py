"""What the benchmarks in ``scripts/`` share: the machine they ran on, timers,
checksums, the matmul yardstick and the optional flashbax import.

The scripts import it as ``benchlib`` (``python scripts/x.py`` puts ``scripts/``
first on ``sys.path``; pytest gets it from ``pythonpath`` in ``pyproject.toml``).
Run as a program it is the one-core matmul of ``matmul_gflops_one_core``:

  python scripts/benchlib.py N REPEATS   # pins itself to one core, prints GFLOP/s
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


def machine_info() -> dict:
    """CPU model, cores, JAX version, backend, devices, XLA flags and load."""
    from dqnx import xla

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "dqnx_xla_cpu_tuning": xla.tuning_enabled(),
        "load_avg_1m": os.getloadavg()[0],
    }


def tuning_text(info: dict) -> str:
    """Whether dqnx's XLA CPU tuning was on, as the headers print it."""
    return "on" if info["dqnx_xla_cpu_tuning"] else "off (DQNX_XLA_CPU_TUNING=0)"


def runtime_info() -> dict:
    """The JAX version, backend and core count a micro-benchmark's JSON records."""
    return {"jax": jax.__version__, "backend": jax.default_backend(), "cores": os.cpu_count()}


def write_json(path: str, result) -> None:
    """Writes ``result`` to ``path`` as indented JSON; does nothing for an empty path."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def import_flashbax():
    """flashbax, if it imports.

    Returns:
      ``(module, version, None)``, or ``(None, None, error)`` with the error as
      ``"Type: message"`` (not installed, or a broken install).
    """
    try:
        from importlib.metadata import version

        import flashbax

        return flashbax, version("flashbax"), None
    except Exception as e:  # ImportError, or a broken install
        return None, None, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------
# Timing and checksums
# ---------------------------------------------------------------------------


def timed(fn, *args):
    """Calls ``fn(*args)`` and waits for its outputs; returns (outputs, wall seconds)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def median_us(fn, args_fn, repeats: int, *, warmup: bool = True) -> float:
    """Median wall time in µs of ``fn(*args_fn())`` over ``repeats`` calls.

    ``args_fn`` makes each call's arguments before its clock starts. With
    ``warmup`` one untimed call comes first (it compiles a jitted ``fn``).
    """
    if warmup:
        jax.block_until_ready(fn(*args_fn()))
    times = []
    for _ in range(repeats):
        args = args_fn()
        times.append(timed(fn, *args)[1])
    return 1e6 * statistics.median(times)


def donated_us(fn, state, args_fn, repeats: int, *, warmup: bool = True):
    """``median_us`` of ``state = fn(state, *args_fn())``, ``fn`` jitted with the state
    donated: each call starts from the previous call's output (the warm-up's too).

    Returns:
      (µs, the last state).
    """
    holder = [state]

    def step(*args):
        holder[0] = fn(holder[0], *args)
        return holder[0]

    us = median_us(step, args_fn, repeats, warmup=warmup)
    return us, holder[0]


def checksum(tree) -> jax.Array:
    """Sum of every element of every leaf, float32 []: a use of outputs that
    would otherwise be dead, so XLA cannot drop the work that makes them."""
    return sum(x.astype(jnp.float32).sum() for x in jax.tree.leaves(tree))


def seed_checksum(tree) -> jax.Array:
    """``checksum`` per seed: every leaf [S, ...] -> float32 [S]."""
    total = 0.0
    for x in jax.tree.leaves(tree):
        total = total + x.reshape(x.shape[0], -1).astype(jnp.float32).sum(1)
    return total


def xla_flops(fn, *args) -> float:
    """FLOPs of ``jit(fn)(*args)`` by XLA's cost analysis (NaN where it gives none)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


# ---------------------------------------------------------------------------
# The matmul yardstick
# ---------------------------------------------------------------------------


def matmul_timer(n: int):
    """A compiled, warmed-up ``n`` x ``n`` float32 matmul on one device; calling
    the result runs it once and returns its wall seconds."""
    device = jax.local_devices()[0]
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(k1, (n, n), jnp.float32), device)
    b = jax.device_put(jax.random.normal(k2, (n, n), jnp.float32), device)
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(f(a, b))
    return lambda: timed(f, a, b)[1]


def matmul_stats(n: int, times: list[float]) -> dict:
    """GFLOP/s of the median and of the best of ``times`` (seconds per matmul)."""
    flops = 2 * n**3
    return {
        "size": n,
        "repeats": len(times),
        "median_s": statistics.median(times),
        "gflops": flops / statistics.median(times) / 1e9,
        "gflops_best": flops / min(times) / 1e9,
    }


def matmul_gflops(n: int, repeats: int) -> dict:
    """``matmul_stats`` of ``repeats`` back-to-back calls of ``matmul_timer(n)``."""
    timer = matmul_timer(n)
    return matmul_stats(n, [timer() for _ in range(repeats)])


def matmul_gflops_one_core(n: int, repeats: int) -> float | None:
    """The same matmul in a subprocess pinned to one core (Linux, CPU backend):
    what one XLA CPU device's learner can reach; None where it cannot be pinned."""
    if jax.default_backend() != "cpu" or not hasattr(os, "sched_setaffinity"):
        return None
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(n), str(repeats)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    try:
        return float(out.stdout.split()[-1])
    except (IndexError, ValueError):
        return None


if __name__ == "__main__":
    # Pinned before JAX starts its backend, so XLA sizes its threads for one core.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(matmul_gflops(int(sys.argv[1]), int(sys.argv[2]))["gflops"])
