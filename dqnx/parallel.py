"""The only module that knows about devices.

Independent seeds are spread over devices: a run of S seeds on D devices puts
S / D whole seeds on each device (``shard_map`` over a 1-D ``"seeds"`` mesh),
with no communication at all. On a CPU host, each XLA CPU device runs on its
own thread, so exposing one device per core (``use_all_cpu_cores``) is what
lets a sweep use every core.
"""

from __future__ import annotations

import os
import re

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

SEEDS = "seeds"


def use_all_cpu_cores(count: int | None = None) -> None:
    """Exposes ``count`` (default: all cores) XLA CPU devices.

    Must run before JAX initialises its backends; does nothing if
    ``XLA_FLAGS`` already sets a host device count. Harmless on GPU/TPU hosts,
    where the accelerator stays the default backend.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    count = count or os.cpu_count() or 1
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def host_device_count_flag() -> int | None:
    """The host device count XLA_FLAGS asks for, if any."""
    m = re.search(r"xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else None


def seed_shards(num_seeds: int, num_devices: int = 0) -> int:
    """Devices to spread ``num_seeds`` over.

    Args:
      num_seeds: seeds in the run.
      num_devices: requested devices (0 = as many local devices as divide
        ``num_seeds`` evenly).

    Returns:
      The device count D, a divisor of ``num_seeds``.
    """
    available = jax.local_device_count()
    if num_devices:
        if num_devices > available:
            raise ValueError(f"--num_devices={num_devices} but only {available} local device(s)")
        if num_seeds % num_devices:
            raise ValueError(
                f"--num_seeds={num_seeds} is not divisible by --num_devices={num_devices}"
            )
        return num_devices
    return max(d for d in range(1, min(available, num_seeds) + 1) if num_seeds % d == 0)


def make_mesh(num_shards: int) -> Mesh:
    return Mesh(jax.local_devices()[:num_shards], (SEEDS,))


def specs_from_axes(axes, tree=None):
    """PartitionSpecs from a vmap-axes pytree: 0 -> split over seeds, None -> replicated."""
    return jax.tree.map(
        lambda a: P(SEEDS) if a == 0 else P(),
        axes,
        is_leaf=lambda x: x is None or isinstance(x, int),
    )


def shardings(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def over_seeds(fn, mesh: Mesh, in_specs, out_specs):
    """``fn`` run on each device's own seeds (``shard_map``; no communication)."""
    if mesh.size == 1:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
