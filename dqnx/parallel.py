"""The only module that knows about devices.

Devices form a 2-D mesh ``(seeds, data)``:

* ``seeds``: independent runs are spread over devices; a device holds whole
  seeds and never talks to the others about them.
* ``data``: one seed's actors, replay and batch are split over devices (each
  device steps ``num_envs / D`` environments into its own replay shard and
  samples ``batch_size / D`` transitions); gradients are averaged with
  ``lax.pmean`` so the parameters stay identical (Ape-X-style sharded replay).

Config sizes (``num_envs``, ``batch_size``, ``buffer_size``) are per seed,
whatever the layout: the algorithm is the same on 1 device or 8.

On a CPU host each XLA CPU device runs on its own thread, so exposing one
device per core (``use_all_cpu_cores``) is what lets a run use every core.
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dqnx import platforms

SEEDS = "seeds"
DATA = "data"


class Layout(NamedTuple):
    """How a run is spread: ``seeds`` x ``data`` devices."""

    seeds: int = 1
    data: int = 1

    @property
    def num_devices(self) -> int:
        return self.seeds * self.data

    @property
    def data_axis(self) -> str | None:
        """Name of the gradient-averaging axis, None on a single data shard."""
        return DATA if self.data > 1 else None


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


def data_divisors(num_envs: int, batch_size: int, buffer_size: int) -> int:
    """The largest count every per-seed size can be split over evenly."""
    return math.gcd(num_envs, batch_size, buffer_size)


def choose_layout(
    num_seeds: int, num_devices: int, num_envs: int, batch_size: int, buffer_size: int
) -> Layout:
    """Spreads seeds first, then splits each seed's data over what is left.

    ``num_devices=0`` uses the local devices. On a single process of a platform
    without ``platforms.PlatformChoices.split_seed_data`` (CPU) it only
    spreads seeds (as many devices as divide ``num_seeds``) and never splits a
    seed's data: between XLA CPU devices a gradient all-reduce costs more than
    half a DQN batch saves (docs/performance.md). On accelerators, devices left
    after the seeds split each seed's data, as far as the sizes divide. An
    explicit ``num_devices`` is always honoured or refused.

    Args:
      num_seeds: seeds in the run.
      num_devices: devices to use (0 = automatic, above). With 0, devices that
        cannot be used evenly are left idle; an explicit count must fit.
      num_envs, batch_size, buffer_size: per-seed sizes to split over ``data``.

    Returns:
      The ``Layout``.

    Raises:
      ConfigError: an explicit ``num_devices`` that is not available or does not
        divide the per-seed sizes (one line naming the size).
    """
    from dqnx.errors import ConfigError

    split = platforms.current().split_seed_data
    if num_devices == 0 and not split and jax.process_count() == 1:
        return Layout(math.gcd(num_seeds, jax.local_device_count()), 1)
    available = jax.device_count()
    total = num_devices or available
    if total > available:
        raise ConfigError(f"--num_devices={num_devices} but only {available} device(s)")
    seeds = math.gcd(num_seeds, total)
    data = total // seeds
    sizes = {"num_envs": num_envs, "batch_size": batch_size, "buffer_size": buffer_size}
    if num_devices:
        for name, value in sizes.items():
            if value % data:
                raise ConfigError(
                    f"--num_devices={num_devices} splits each of the {num_seeds} seed(s) over "
                    f"{data} devices, but --{name}={value} is not divisible by {data}"
                )
    fit = data_divisors(num_envs, batch_size, buffer_size)
    if fit % data:
        data = max(d for d in range(1, data + 1) if fit % d == 0 and (total // seeds) % d == 0)
    return Layout(seeds, data)


def make_mesh(layout: Layout, devices=None) -> Mesh:
    """The ``(seeds, data)`` mesh over ``devices`` (default: the first
    ``layout.num_devices`` devices of all processes, process-major, so a data
    group stays within a host when it can)."""
    import numpy as np

    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    devices = list(devices)[: layout.num_devices]
    return Mesh(np.array(devices).reshape(layout.seeds, layout.data), (SEEDS, DATA))


def shard_key(key: jax.Array, axis_name: str | None) -> jax.Array:
    """A key of this data shard's own (the key itself without data sharding)."""
    if axis_name is None:
        return key
    return jax.random.fold_in(key, jax.lax.axis_index(axis_name))


def shardings(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def spmd(fn, mesh: Mesh, in_specs, out_specs):
    """``fn`` run on every device of ``mesh`` (``shard_map``), each on its own shard."""
    if mesh.size == 1:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def is_main_process() -> bool:
    """True on the process that logs and writes metric files (process 0)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True if ``flag`` is True on any process (all processes must call it together)."""
    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def to_host(tree):
    """NumPy copies of (possibly multi-process, sharded) arrays, the same on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def devices_by_process() -> list[list]:
    """Every process's devices (as ``jax.local_devices()`` orders them there), by process."""
    devices = jax.devices()
    return [[d for d in devices if d.process_index == p] for p in range(jax.process_count())]


def gather_processes(values):
    """``values`` (a 1-D list of numbers) of every process, stacked ``[processes, n]``
    as int32 or float32 (all processes must call it together)."""
    import numpy as np

    values = np.asarray(values)
    values = values.astype(np.int32 if values.dtype.kind in "iub" else np.float32)
    processes = jax.process_count()
    if processes == 1:
        return values[None]
    # Over one device per process: this also works where device counts differ.
    mesh = Mesh(np.array([ds[0] for ds in devices_by_process()]), ("processes",))
    rows = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("processes")), values[None], (processes, *values.shape)
    )
    gathered = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))(rows)
    return np.asarray(gathered.addressable_shards[0].data)


def from_process_local(sharding, local_tree, global_rows: int):
    """One global array per leaf of ``local_tree`` (this process's rows, split over
    its devices of ``sharding``; leading dimension ``global_rows`` in all)."""
    if jax.process_count() == 1:
        return jax.device_put(local_tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:])),
        local_tree,
    )


def local_copy(tree):
    """A replicated (possibly multi-process) array's value on one of this process's
    devices, as a single-device array (no communication)."""
    return jax.tree.map(lambda x: x.addressable_shards[0].data, tree)


def _on_multi_host_tpu() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


#: Seconds without a heartbeat after which JAX declares a process of the run dead.
HEARTBEAT_TIMEOUT_S = 30

# What a collective or barrier reports when another process of the run is gone.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "heartbeat timeout",
              "Gloo", "UNAVAILABLE", "tasks have crashed")  # fmt: skip


def peer_lost(error: BaseException) -> str | None:
    """One line saying that another process of a multi-process run stopped, if
    ``error`` is a JAX runtime error of a collective or barrier that lost a peer
    (gloo closes its connection at once); None otherwise."""
    if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
        return None
    text = str(error)
    if not any(marker in text for marker in _PEER_LOST):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return (
        f"another process of this run stopped (process {jax.process_index()} of "
        f"{jax.process_count()} saw: {first[:200]}); restart every process with the same "
        f"command to resume from the last checkpoint"
    )


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> bool:
    """Joins a multi-process run (``jax.distributed.initialize``) before JAX starts.

    With ``coordinator_address`` the three values come from the flags; without
    it, a Cloud TPU VM pod slice is detected and JAX finds them itself. CPU
    processes exchange collectives over gloo. Returns True if it initialized.
    """
    if not coordinator_address and not _on_multi_host_tpu():
        return False
    if coordinator_address and not 0 <= process_id < num_processes:
        from dqnx.errors import ConfigError

        raise ConfigError(
            f"--process_id={process_id} must be in [0, --num_processes={num_processes})"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            # A process that died is declared so after this long (JAX's default, 100 s,
            # keeps the others waiting in a barrier for as long).
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
    else:
        jax.distributed.initialize()
    return True
