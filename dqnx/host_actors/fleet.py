"""Actor processes on Ray (``--actors=ray``): the Ape-X shape, many CPU actors
anywhere on a Ray cluster feeding one learner.

Each Ray actor process runs one ``ActorCore`` (built by ``schedule.make_core``,
as a thread would be, with the same index, seeds and schedule), so a fleet of
``N`` processes makes the batches ``N`` actor threads make and a run has the
same digest either way.

The learner puts each parameter version into Ray's object store once
(``ray.put``); a request for batch ``b`` names the version the schedule gives it
(``ActorSchedule.version_for(b)``) and carries a reference to it, which the
actor fetches only when the version changes. Batches are asked for as soon as
their version is published, at most ``lag + 2`` per actor made or in flight
(the actors run ahead of the learner by the schedule's lag and no further:
memory stays flat when the learner is slow), consecutive ones in one request:
a request costs about a millisecond of CPU, so a larger ``--actor_lag`` (more
batches askable at once) buys fewer round trips. Ray runs an actor's requests
in the order issued.

A process that dies is restarted by Ray (``max_restarts=-1``); the learner
re-issues its requests from the batch it was waiting for, logs one line and
counts ``actor_restarts``. The restarted actor has new environments, so the run
is no longer exact from that step (the summary says which). While it restarts
(imports, a compile: seconds) the learner waits for it: batches are taken in
actor order.

``--ray_address=""`` starts a local Ray instance for the run (token
authentication on, with a token that lives in this process's environment
only; usage statistics off; files under a temporary directory removed at the
end) and shuts it down on exit; ``auto`` or ``HOST:PORT`` joins a running
cluster, which keeps running.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np

from dqnx.host_actors import snapshot
from dqnx.host_actors.core import RANDOM, ActorBatch, flat_params, kept_version
from dqnx.ray_setup import import_ray

#: Seconds the learner waits for Ray to restart a dead actor process.
RESTART_TIMEOUT_S = 120


class _RemoteActor:
    """One actor process: an ``ActorCore`` and the batches it made ahead."""

    def __init__(self, config, schedule, index: int, saved: bytes | None, first_batch: int):
        # Imported here: this runs in the actor process.
        from dqnx import builder
        from dqnx.host_actors.schedule import env_maker, make_core

        # The process only acts, one small jitted call per step: dispatching them
        # asynchronously adds a thread's worth of CPU (~0.3 core measured) for no
        # overlap. The results are the same either way.
        jax.config.update("jax_cpu_enable_async_dispatch", False)

        make_env = env_maker(config)
        probe = make_env(1, config.seed)
        spec = probe.spec
        probe.close()
        network = builder.make_network(config, spec.obs_shape, spec.num_actions)
        self.device = jax.devices("cpu")[0]
        _, unravel = flat_params(network, np.zeros((1, *spec.obs_shape), spec.obs_dtype))
        self.core = make_core(
            config, schedule, index, network, self.device, make_env, unravel=unravel
        )
        self.outbox: list[ActorBatch] = []
        if saved is not None:
            saved = snapshot.loads(saved)
            self.core.restore(saved["core"])
            self.outbox = list(saved["outbox"])
        else:
            self.core.state["made"] = first_batch
        self._version, self._params = RANDOM, None

    def batch(self, index: int, version: int, box: list):
        """Batch ``index``, made with parameters ``version`` (``box[0]``: a
        reference to them in the object store) where rollouts are still needed."""
        while not self.outbox:
            need = self.core.next_version()
            if need != version:
                raise RuntimeError(f"batch {index} acts with version {need}, asked {version}")
            if version != self._version:
                params = None if version == RANDOM else import_ray().get(box[0])
                self._params = None if params is None else jax.device_put(params, self.device)
                self._version = version
            self.outbox.extend(self.core.rollout(self._params, version))
        batch = self.outbox.pop(0)
        if batch.index != index:
            raise RuntimeError(f"actor {self.core.index} made batch {batch.index}, asked {index}")
        return batch

    def batches(self, first: int, versions: list[int], boxes: dict) -> list[ActorBatch]:
        """Batches ``first, first + 1, ...``, one per entry of ``versions`` (the
        version each acts with; ``boxes[version][0]``: its reference): one request
        for several batches costs one round trip."""
        return [self.batch(first + k, v, boxes.get(v)) for k, v in enumerate(versions)]

    def snapshot(self) -> bytes:
        return snapshot.dumps({"core": self.core.snapshot(), "outbox": self.outbox})

    def start_over(self, batch: int) -> int:
        """After Ray restarted this process: new episodes, batch ``batch`` next."""
        self.core.start_over(batch)
        self.outbox, self._version, self._params = [], RANDOM, None
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()


# Run beside a local instance, in a session of its own: once the run's process is
# gone (even killed with SIGKILL), it kills the instance's processes and removes
# its directory. A normal shutdown removes the directory first: it then exits.
_WATCHDOG = """
import os, shutil, signal, sys, time
driver, directory, pids = int(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
while os.path.isdir(directory):
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(directory, ignore_errors=True)
        break
    time.sleep(0.5)
"""


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux: from /proc)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[ppid].append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RayRuntime:
    """A local Ray instance for this run, or a connection to a running cluster."""

    def __init__(self, address: str, num_cpus: int):
        ray = self.ray = import_ray(local=not address)
        self.local = not address
        self.temp_dir = None
        self.owned = not ray.is_initialized()  # else: a connection made by the caller
        if not self.owned:
            self.local = False
            return
        # Ray's driver installs its own SIGTERM/SIGINT handlers (a stack trace, exit 15):
        # the run's own (checkpoint, then exit) are put back once it has started.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._init(address, num_cpus)
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

    def _init(self, address: str, num_cpus: int) -> None:
        ray = self.ray
        if self.local:
            # A short path: Ray's sockets live under it (107-byte limit).
            self.temp_dir = tempfile.mkdtemp(prefix="dqnx-ray-", dir="/tmp")
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=self.temp_dir,
                configure_logging=False,
                log_to_driver=False,
                namespace="dqnx",
            )
            if os.path.isdir("/proc"):
                pids = [str(p) for p in _descendants(os.getpid())]
                subprocess.Popen(
                    [sys.executable, "-c", _WATCHDOG, str(os.getpid()), self.temp_dir, *pids],
                    start_new_session=True, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
        else:
            ray.init(address=address, configure_logging=False, log_to_driver=False)

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():  # a joined cluster keeps running
            self.ray.shutdown()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class RayActors:
    """The actors as Ray actor processes; the program drives them as it drives
    ``actor.ThreadActors`` (``start``, ``publish``, ``take``, ``problem``,
    ``snapshot``, ``close``).

    Args:
      config: the run's config (sent to every actor process).
      schedule: its ``ActorSchedule``.
      num_actors: actor processes (indices ``0..num_actors-1``).
      address: ``--ray_address``.
      keep: parameter versions kept in the object store.
      say: prints one line (warnings).
    """

    def __init__(self, config, schedule, num_actors: int, address: str, keep: int, say=None):
        self.config, self.schedule, self.n = config, schedule, num_actors
        self.runtime = RayRuntime(address, num_cpus=max(num_actors + 1, os.cpu_count() or 1))
        ray = self.ray = self.runtime.ray
        self._remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(_RemoteActor)
        self._keep = keep
        self._refs: dict[int, object] = {}  # version -> object ref
        self.version = RANDOM
        self._depth = schedule.lag + 2  # batches made or asked for, per actor
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.restarts = 0
        self.inexact_from: int | None = None  # the batch from which the run is not exact
        self._problem: str | None = None
        self.handles: list = []
        self._ready: list[collections.deque] = [collections.deque() for _ in range(self.n)]
        self._flight: list[collections.deque] = [collections.deque() for _ in range(self.n)]
        self._next: list[int] = [0] * self.n  # the next batch to request, per actor
        self._steps = 0

    # ---- start -------------------------------------------------------------------
    def start(self, saved: list | None, first_batch: int) -> None:
        """Starts the processes, fresh at ``first_batch`` or from ``saved`` (one
        ``{"core", "outbox"}`` per actor), and waits until every one is built."""
        for i in range(self.n):
            blob = None
            if saved is not None:
                self._ready[i].extend(saved[i]["outbox"])
                blob = snapshot.dumps({"core": saved[i]["core"], "outbox": []})
            self.handles.append(
                self._remote.options(name=None).remote(
                    self.config, self.schedule, i, blob, first_batch
                )
            )
            # The next batch to ask for: the first its core has not made yet.
            self._next[i] = first_batch if saved is None else saved[i]["core"]["core"]["made"]
        self.pids = self.ray.get([h.pid.remote() for h in self.handles])
        self._issue()

    def _ref_for(self, version: int):
        return self._refs[kept_version(self._refs, version)]

    def _issue(self) -> None:
        """Requests, for every actor, the batches whose version is published, up to
        ``depth`` made or in flight: consecutive ones in one request."""
        for i, handle in enumerate(self.handles):
            b = self._next[i]
            room = self._depth - len(self._ready[i]) - sum(n for _, n, _ in self._flight[i])
            versions = []
            while len(versions) < room:
                version = self.schedule.version_for(b + len(versions))
                if version != RANDOM and version > self.version:
                    break  # not published yet
                versions.append(version)
            if versions:
                boxes = {v: [self._ref_for(v)] for v in set(versions) if v != RANDOM}
                ref = handle.batches.remote(b, versions, boxes)
                self._flight[i].append((b, len(versions), ref))
                self._next[i] = b + len(versions)

    # ---- the backend interface ---------------------------------------------------
    def publish(self, params, version: int) -> None:
        self._refs[int(version)] = self.ray.put(jax.device_get(params))
        for old in sorted(self._refs)[: -self._keep]:
            del self._refs[old]
        self.version = max(self.version, int(version))
        self._issue()

    def take(self, actor: int, timeout: float) -> ActorBatch | None:
        if self._ready[actor]:
            return self._count(self._ready[actor].popleft())
        if not self._flight[actor]:
            self._issue()
            if not self._flight[actor]:
                return None
        b, _, ref = self._flight[actor][0]
        done, _ = self.ray.wait([ref], timeout=timeout)
        if not done:
            return None
        try:
            batches = self.ray.get(ref)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError) as e:
            self._restart(actor, b, e)
            return None
        except self.ray.exceptions.RayTaskError as e:
            self._problem = f"Ray actor {actor} failed: {str(e).strip().splitlines()[-1]}"
            return None
        self._flight[actor].popleft()
        self._ready[actor].extend(batches)
        batch = self._ready[actor].popleft()
        self._issue()
        return self._count(batch)

    def _count(self, batch: ActorBatch) -> ActorBatch:
        self._steps += self.schedule.envs_per_actor * self.config.rollout_steps
        return batch

    def _restart(self, actor: int, batch: int, error) -> None:
        """Ray restarts a dead actor process; its requests are issued again from
        ``batch`` on new environments (the run is no longer exact)."""
        self.restarts += 1
        if self.inexact_from is None:
            self.inexact_from = batch
        self._say(
            f"dqnx: Ray actor {actor} (pid {self.pids[actor]}) died at batch {batch} "
            f"({type(error).__name__}); restarted, its environments start over"
        )
        self._flight[actor].clear()
        self._ready[actor].clear()
        # Waits while Ray restarts the process (its constructor runs again).
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                self.pids[actor] = self.ray.get(self.handles[actor].start_over.remote(batch))
                break
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError):
                if time.monotonic() > deadline:
                    self._problem = (
                        f"Ray actor {actor} died and was not back within {RESTART_TIMEOUT_S} s"
                    )
                    return
                time.sleep(0.2)
        self._next[actor] = batch
        self._issue()

    def problem(self) -> str | None:
        return self._problem

    def steps_taken(self) -> int:
        return self._steps

    def backlog(self) -> int:
        return sum(len(r) for r in self._ready)

    def published(self) -> list:
        return [(v, self.ray.get(ref)) for v, ref in sorted(self._refs.items())]

    def snapshot(self) -> bytes:
        """Every actor's core and the batches not yet taken (requests in flight
        are awaited and kept here for ``take``)."""
        for i in range(self.n):
            while self._flight[i]:
                _, _, ref = self._flight[i].popleft()
                self._ready[i].extend(self.ray.get(ref))
        blobs = self.ray.get([h.snapshot.remote() for h in self.handles])
        saved = []
        for i, blob in enumerate(blobs):
            remote = snapshot.loads(blob)
            saved.append(
                {"core": remote["core"], "outbox": list(self._ready[i]) + remote["outbox"]}
            )
        self._issue()
        return snapshot.dumps(saved)

    def close(self) -> None:
        for handle in self.handles:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(handle)
        self.handles = []
        self.runtime.close()
