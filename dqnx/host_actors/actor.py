"""Actor threads and the parameter server they act from.

A thread runs one ``core.ActorCore``: before each rollout it asks the
``ParameterServer`` for the version the core's schedule names (waiting while
the learner has not published it yet), steps the rollout, and puts the batches
it completed on its own bounded queue, which makes it wait while the learner is
behind. The learner takes batch ``i`` of every actor in actor order, so neither
the batches nor the parameters they were acted with depend on timing.

With a free-running schedule (``version_for=None``) a thread acts with whatever
was published last, as in the first Sebulba designs.

A thread can be paused between two rollouts (``pause``) to take a snapshot of
its core and of the batches it has not handed over: what a checkpoint holds.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dqnx.host_actors import snapshot
from dqnx.host_actors.core import RANDOM, ActorBatch, ActorCore, kept_version

__all__ = ["RANDOM", "ActorBatch", "ActorCore", "ActorThread", "ParameterServer", "ThreadActors"]


class ParameterServer:
    """Published parameter versions, one copy per actor device.

    ``publish`` copies the learner's parameters to every actor device (the
    learner's own arrays are donated into its next update, so actors must never
    hold them) and keeps the newest ``keep`` versions; ``get`` returns a given
    version, waiting until it is published; ``latest`` the newest one without
    waiting. Version ``RANDOM`` means: act uniformly at random.
    """

    def __init__(self, devices, keep: int = 3):
        self._devices = list(devices)
        self._keep = max(keep, 1)
        self._cond = threading.Condition()
        self._versions: dict[int, dict] = {}  # version -> {device: params}
        self._copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p))
        self.version = RANDOM  # the newest

    def publish(self, params, version: int) -> None:
        """Makes ``params`` version ``version`` (versions only grow; no waiting:
        the copies are ordered after the update that produced ``params``)."""
        fresh = self._copy(params)  # a new buffer even where the device is the same
        copies = {d: jax.device_put(fresh, d) for d in self._devices}
        with self._cond:
            self._versions[int(version)] = copies
            for old in sorted(self._versions)[: -self._keep]:
                del self._versions[old]
            self.version = max(self.version, int(version))
            self._cond.notify_all()

    def published(self) -> list[tuple[int, Any]]:
        """Every kept ``(version, params)``, oldest first (host copies: for a checkpoint)."""
        with self._cond:
            items = sorted(self._versions.items())
        return [(v, jax.device_get(copies[self._devices[0]])) for v, copies in items]

    def latest(self, device) -> tuple[Any, int]:
        with self._cond:
            if self.version == RANDOM:
                return None, RANDOM
            return self._versions[self.version][device], self.version

    def get(self, device, version: int, give_up: Callable[[], bool]) -> tuple[bool, Any]:
        """``(True, parameters of version on device)`` (None for ``RANDOM``),
        waiting while it is not published; ``(False, None)`` as soon as
        ``give_up()`` while waiting. A version never kept (a run resumed from a
        checkpoint without it) gives the newest older one kept, else the oldest."""
        if version == RANDOM:
            return True, None
        with self._cond:
            while self.version < version:
                if give_up():
                    return False, None
                self._cond.wait(timeout=0.1)
            return True, self._versions[kept_version(self._versions, version)][device]


class ActorThread(threading.Thread):
    """One actor: an ``ActorCore`` run in a thread, feeding its own queue.

    Args:
      core: the ``ActorCore`` (its environments already built).
      server: the ``ParameterServer``.
      out: this actor's bounded queue of ``ActorBatch``.
      stop: set to end the thread.
      outbox: batches made before (a restored checkpoint's) to send first.
      delay: test hook: ``() -> seconds`` slept before each rollout.
    """

    def __init__(
        self,
        core: ActorCore,
        server: ParameterServer,
        out: queue.Queue,
        stop: threading.Event,
        outbox: list[ActorBatch] | None = None,
        delay: Callable[[], float] | None = None,
    ):
        super().__init__(name=f"dqnx-actor-{core.index}", daemon=True)
        self.core, self.server, self.out, self.stop = core, server, out, stop
        self.index, self.device = core.index, core.device
        self.outbox: list[ActorBatch] = list(outbox or [])
        self.error: BaseException | None = None
        self._delay = delay
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()

    @property
    def steps_taken(self) -> int:
        return self.core.steps_taken

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # reported by the learner side, never lost
            self.error = e
        finally:
            self._paused.set()  # a pause never waits on a dead thread
            self.core.env.close()

    def _loop(self) -> None:
        core, stopped = self.core, self.stop.is_set
        while not stopped():
            self._flush()
            self._hold_if_paused()
            if stopped():
                return
            if self._delay is not None:
                time.sleep(self._delay())
            version = core.next_version()
            if version is None:
                params, version = self.server.latest(self.device)
            else:
                ready, params = self.server.get(
                    self.device, version, lambda: stopped() or self._pause.is_set()
                )
                if not ready:  # stopped, or paused for a checkpoint: from the top
                    continue
            self.outbox.extend(core.rollout(params, version))

    def _flush(self) -> None:
        """Moves the outbox onto the queue, waiting while it is full."""
        while self.outbox and not self.stop.is_set():
            try:
                self.out.put(self.outbox[0], timeout=0.05)
                self.outbox.pop(0)
            except queue.Full:
                self._hold_if_paused()

    def _hold_if_paused(self) -> None:
        if self._pause.is_set():
            self._paused.set()
            while not self._resume.wait(timeout=0.1):
                if self.stop.is_set():
                    return
            self._resume.clear()

    def pause(self) -> None:
        """Asks the thread to stop between two rollouts and waits until it has."""
        self._resume.clear()
        self._paused.clear()
        self._pause.set()
        while self.is_alive() and not self._paused.wait(timeout=0.1):
            pass

    def resume(self) -> None:
        self._pause.clear()
        self._resume.set()


class ThreadActors:
    """The actors as threads of this process: one ``ActorThread`` and one bounded
    queue per ``ActorCore``, acting from one ``ParameterServer``.

    The program drives every actor backend through the same calls: ``start``,
    ``publish``, ``take``, ``problem``, ``snapshot``, ``close``.

    Args:
      cores: the actors (their environments built, on their devices).
      devices: the actor devices (each core's ``device`` among them).
      keep: parameter versions to keep (``actor_lag + 2``).
      queue_size: batches each actor's queue holds.
      delay: test hook: ``(actor index) -> seconds`` slept before each rollout.
    """

    def __init__(self, cores: list[ActorCore], devices, keep: int, queue_size: int, delay=None):
        self.cores, self.devices = cores, list(devices)
        self.server = ParameterServer(self.devices, keep=keep)
        self.queues = [queue.Queue(maxsize=queue_size) for _ in cores]
        self.stop = threading.Event()
        self.threads: list[ActorThread] = []
        self._delay = delay
        self.restarts = 0  # threads are never restarted (a failure stops the run)
        self.inexact_from = None

    def start(self, saved: list | None, first_batch: int) -> None:
        """Starts one thread per core: fresh, with batch ``first_batch`` next, or
        from ``saved`` (one ``{"core", "outbox"}`` of ``snapshot`` per core)."""
        for i, (core, out) in enumerate(zip(self.cores, self.queues, strict=True)):
            delay = None if self._delay is None else (lambda g=core.index: self._delay(g))
            outbox = None
            if saved is None:
                core.state["made"] = first_batch
            else:
                core.restore(saved[i]["core"])
                outbox = saved[i]["outbox"]
            self.threads.append(ActorThread(core, self.server, out, self.stop, outbox, delay))
        for thread in self.threads:
            thread.start()

    def publish(self, params, version: int) -> None:
        self.server.publish(params, version)

    def take(self, actor: int, timeout: float) -> ActorBatch | None:
        """Actor ``actor``'s next batch, or None after ``timeout`` seconds."""
        try:
            return self.queues[actor].get(timeout=timeout)
        except queue.Empty:
            return None

    def problem(self) -> str | None:
        """A line naming the first actor that failed or stopped, else None."""
        for thread in self.threads:
            if thread.error is not None:
                e = thread.error
                return f"{thread.name} failed: {type(e).__name__}: {e}"
            if not thread.is_alive() and not self.stop.is_set():
                return f"{thread.name} stopped unexpectedly"
        return None

    def steps_taken(self) -> int:
        return sum(core.steps_taken for core in self.cores)

    def backlog(self) -> int:
        """Batches made and not yet taken."""
        return sum(q.qsize() for q in self.queues)

    def published(self) -> list:
        return self.server.published()

    def snapshot(self) -> bytes:
        """Each actor's core and the batches it made that the learner has not
        taken, pickled (``snapshot.dumps``) while the threads pause between two
        rollouts."""
        for thread in self.threads:
            thread.pause()
        try:
            saved = []
            for thread, q in zip(self.threads, self.queues, strict=True):
                with q.mutex:
                    queued = list(q.queue)
                saved.append({"core": thread.core.snapshot(), "outbox": queued + thread.outbox})
            return snapshot.dumps(saved)  # here, while the environments cannot move
        finally:
            for thread in self.threads:
                thread.resume()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5.0)
