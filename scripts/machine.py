"""What a benchmark ran on: CPU model, cores, JAX, devices, XLA flags, load."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict:
    import jax

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
