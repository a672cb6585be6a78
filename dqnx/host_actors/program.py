"""``HostActorProgram``: the host-actor ("Sebulba") mode as the host loop drives it.

Actor threads step host environments and stream fixed-size transition batches
through a bounded queue; the learner (this thread) takes ``actor threads``
batches per iteration (``num_envs x rollout_steps`` transitions, as one
iteration of the compiled mode), ingests them with one jitted program and
publishes its parameters every ``actor_sync_period`` updates. The replay ratio
is held by construction: every iteration adds the same number of transitions
and makes the same ``updates_per_iteration`` updates; the learner waits on an
empty queue when it is ahead, and the actors wait on a full one when it is
behind.

Several processes (``jax.distributed``): each runs its own actor threads on its
own actor devices and environments (its share of ``num_envs``, seeded by its
threads' global indices), and one learner spans every process's learner
devices. Each iteration every process waits for its own actors' share, builds
its part of the global batch from it (each learner device stores its own
process's transitions), then all run the same collective ingest: the schedule is
deterministic, so they stay in lockstep. Env step counts are totals over
processes. Each process publishes its own copy of the (replicated) parameters to
its actors. An actor or evaluation failure on one process stops every process at
the end of the chunk (``_fail``), so none is left waiting in a collective.

The schedule is fixed (``actor_schedule="fixed"``, the default): iteration
``i``'s batches are acted with the parameters published after iteration
``i - 1 - actor_lag`` (actors wait for them when ahead), the learner takes
iteration ``i``'s batch of every actor in actor order, and epsilons, exploration
draws and noise are functions of (seed, actor, iteration). A run is then the
same whatever the load; ``"async"`` acts with the newest parameters instead.

Checkpoints hold the actors' side too (``actors-<process>.pkl`` beside the
learner's state): the parameter versions still to act with and, where the
environments' state can be captured (``HostEnv.capture_problem`` is None), every
actor core and the batches not yet ingested; a resumed run then continues bit
for bit. Otherwise the environments start new episodes and the summary says
``exact_resume: false`` with the reason.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import builder, parallel, xla
from dqnx.config import Config
from dqnx.host_actors import snapshot
from dqnx.host_actors.actor import ThreadActors
from dqnx.host_actors.core import flat_params
from dqnx.host_actors.evaluation import evaluate_on_fresh_envs
from dqnx.host_actors.learner import frame_examples, make_learner_programs, transition_examples
from dqnx.host_actors.schedule import ActorSchedule, env_maker, make_core
from dqnx.host_actors.stats import new_stats, over_processes
from dqnx.shell.program import ChunkReport, Schedule
from dqnx.shell.signals import RunFailed


class HostActorProgram:
    """Builds the actors and the learner ``config`` describes; see ``shell.Program``."""

    def __init__(self, config: Config, make_env=None, delay=None):
        t0 = time.perf_counter()
        self.config = config
        self._make_env = make_env or env_maker(config)
        probe = self._make_env(1, config.seed)
        spec = self.spec = probe.spec
        # Optional in the HostEnv protocol: an environment without it is not captured.
        self.exact_resume_problem = getattr(
            probe, "capture_problem", f"{type(probe).__name__} has no get_state/set_state"
        )
        if config.actor_schedule != "fixed":
            self.exact_resume_problem = "--actor_schedule=async acts as timing allows"
        self.exact_resume = self.exact_resume_problem is None
        self.num_runs = config.num_seeds  # one seed per process
        self._delay = delay  # test hook: (actor index or None for the learner) -> seconds
        probe.close()
        self.network = builder.make_network(config, spec.obs_shape, spec.num_actions)
        actor_devices, learner_devices = builder.host_devices(config)
        self.actor_devices = actor_devices
        # Several processes: each runs its own share of the actors (threads and
        # environments), the learner spans every process's learner devices.
        self.processes, self.process = jax.process_count(), jax.process_index()
        # Actors in this process: threads, or Ray actor processes of this run.
        num_threads = config.actor_threads * len(actor_devices)
        if config.actors == "ray":
            num_threads = config.num_actor_processes
        self.envs_per_thread = config.num_envs // (num_threads * self.processes)
        self.actor_schedule = ActorSchedule.of(config, self.envs_per_thread)
        self.iteration_items = self.actor_schedule.iteration_items  # all processes
        d = len(learner_devices)
        layout = parallel.Layout(1, d)
        self.mesh = parallel.make_mesh(layout, learner_devices)
        learner = builder.make_learner(config, self.network, axis_name=layout.data_axis)
        self.schedules = builder.make_schedules(config)
        self.frames = config.frame_replay
        obs0 = np.zeros(spec.obs_shape, spec.obs_dtype)
        if self.frames:
            buffer = builder.make_frame_buffer(config, num_threads, self.envs_per_thread)
            init, items, add_items = frame_examples(
                obs0, spec.num_actions, self.envs_per_thread, num_threads, config.rollout_steps
            )
        else:
            buffer = builder.make_buffer(config, config.buffer_size // d, self.iteration_items // d)
            init, items, add_items = transition_examples(obs0, self.iteration_items, config.n_step)
        # Transitions the replay holds in all (a transition buffer is one per learner device).
        self.buffer_transitions = buffer.capacity * (1 if self.frames else d)
        self.programs = make_learner_programs(
            network=self.network,
            learner=learner,
            buffer=buffer,
            add_items=add_items(buffer),
            example_init=init,
            example_items=items,
            example_obs=jnp.asarray(obs0[None]),
            steps_per_add=self.iteration_items,
            batch_size=config.batch_size,
            updates=config.updates_per_iteration,
            is_prioritized=config.prioritized,
            seed=config.seed,
            mesh=self.mesh,
        )
        self.state = self.programs.init()
        # Compile before training starts, on the shapes a batch will have.
        self._compile(items)
        self._zeros = jax.tree.map(lambda x: x[: len(x) // self.processes], items)
        self.failure: str | None = None
        prefill_iterations = self.actor_schedule.prefill_iterations
        self.schedule = Schedule(
            prefill_steps=prefill_iterations * self.iteration_items,
            steps_per_iteration=self.iteration_items,
            train_iterations=-(
                -max(0, config.total_steps - prefill_iterations * self.iteration_items)
                // self.iteration_items
            ),
            iterations_per_chunk=max(1, config.log_every // self.iteration_items),
        )
        self.where = _where(config, num_threads, self.envs_per_thread, len(actor_devices), d)
        self.env_steps = 0
        self.num_updates = 0
        # Versions go to the actors as one flat vector: one transfer, not one per leaf.
        self._flatten, self._unravel = flat_params(self.network, jnp.asarray(obs0[None]))
        self.num_actors = num_threads  # in this process
        self.actors = None  # the backend, once started
        self.compile_s = time.perf_counter() - t0

    def _join(self, batches):
        """One iteration's items from the actors' batches."""
        if not self.frames:
            return jax.tree.map(lambda *x: np.concatenate(x), *(b.items for b in batches))
        groups = np.array([b.actor for b in batches], np.int32)
        return groups, jax.tree.map(lambda *x: np.stack(x), *(b.items for b in batches))

    def _compile(self, items) -> None:
        sharding = self.programs.items_sharding
        items = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), items
        )
        lowered = self.programs.ingest.lower(self.state, items, np.float32(0))
        self._ingest = xla.compile(
            lowered, xla.program_options(quantile_loss=self.config.quantile_loss)
        )
        self._add = self.programs.add.lower(self.state, items).compile()

    # ---- actors ---------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Iterations ingested so far (prefill included): the next batch's index."""
        return self.env_steps // self.iteration_items

    def _start_actors(self, saved: bytes | None = None) -> None:
        """Starts this process's actors: fresh (their first batch is the next
        iteration), or continuing ``saved`` (``actors.snapshot()`` bytes)."""
        try:
            saved = None if saved is None else snapshot.loads(saved)
            self.actors = self._make_actors()
            self.actors.start(saved, self.iteration)
        except snapshot.SnapshotError:
            raise
        except Exception as e:  # e.g. an environment that fails to start
            if self.processes == 1:
                raise
            self._fail(f"starting the actors failed: {type(e).__name__}: {e}")

    def _make_actors(self):
        config, n = self.config, self.num_actors
        keep = config.actor_lag + 2  # the version of iteration i - 1 - lag and newer
        if config.actors == "ray":
            from dqnx.host_actors.fleet import RayActors

            return RayActors(config, self.actor_schedule, n, config.ray_address, keep)
        cores = [
            make_core(
                config,
                self.actor_schedule,
                self.process * n + i,
                self.network,
                self.actor_devices[i // config.actor_threads],
                self._make_env,
                env_steps=lambda: self.env_steps,
                unravel=self._unravel,
            )  # fmt: skip
            for i in range(n)
        ]
        return ThreadActors(cores, self.actor_devices, keep, config.queue_size, self._delay)

    def _check_actors(self) -> None:
        problem = self.actors.problem() if self.actors is not None else None
        if problem is not None:
            self._fail(problem)

    def _fail(self, message: str) -> None:
        """Raises RunFailed; with several processes, only notes it: this process
        keeps taking part in the learner's collective steps (feeding zeros) until
        ``_stop_if_failed``, where every process stops together (never a hang)."""
        if self.processes == 1:
            raise RunFailed(message)
        self.failure = self.failure or message

    def _stop_if_failed(self, failed: np.ndarray | None = None) -> None:
        """Several processes: raises RunFailed on all if any failed (``failed``: each
        process's flag, if already gathered)."""
        if self.processes == 1:
            return
        if failed is None:
            failed = parallel.gather_processes([self.failure is not None])[:, 0]
        if self.failure is not None:
            raise RunFailed(self.failure)
        if failed.any():
            raise RunFailed(f"process {int(np.argmax(failed))} failed; see its error")

    def _take(self, actor: int):
        """The next batch of actor ``actor`` (None once this process failed)."""
        while self.failure is None:
            batch = self.actors.take(actor, timeout=0.5)
            if batch is not None:
                return batch
            self._check_actors()
        return None

    def _next_items(self, stats: dict):
        """Takes the next batch of each actor, in actor order, and joins them (the
        fixed schedule: batch ``i`` of every actor; async: whatever each has)."""
        if self._delay is not None:
            time.sleep(self._delay(None))
        batches = []
        t0 = time.perf_counter()
        if self.actors is not None:
            stats["queue_sum"] += self.actors.backlog()
            stats["queue_reads"] += 1
        for actor in range(self.num_actors if self.actors is not None else 0):
            batch = self._take(actor)
            if batch is None:
                break
            if self.actor_schedule.fixed and batch.index != self.iteration:
                raise RunFailed(
                    f"actor {batch.actor} sent batch {batch.index} for iteration "
                    f"{self.iteration}: the actors' schedule is broken"
                )
            batches.append(batch)
        stats["wait_s"] += time.perf_counter() - t0
        for b in batches:
            stats["episodes"] += b.episodes
            stats["return_sum"] += b.return_sum
            if b.version >= 0:
                staleness = self.num_updates - b.version
                stats["staleness_sum"] += staleness
                stats["staleness_max"] = max(stats["staleness_max"], staleness)
                stats["staleness_n"] += 1
        # This process's share of the iteration (zeros once it failed: see _fail).
        items = self._join(batches) if self.failure is None else self._zeros
        return parallel.from_process_local(
            self.programs.items_sharding, items, self.iteration_items
        )

    def _publish(self) -> None:
        # The parameters are replicated: each process publishes its own copy.
        if self.actors is None:  # they failed to start (several processes)
            return
        params = parallel.local_copy(self.state.learner.params)
        self.actors.publish(self._flatten(params), self.num_updates)

    # ---- the Program interface ----------------------------------------------
    def checkpoint_template(self):
        return self.state

    def actors_file(self) -> str:
        return f"actors-{self.process}.pkl"

    def checkpoint_files(self) -> dict[str, bytes]:
        """This process's actors' side of a checkpoint (see the module docstring):
        the actors pause between two rollouts while it is taken."""
        data = {
            "iteration": self.iteration,
            "published": self.actors.published(),
            "actors": self.actors.snapshot() if self.exact_resume else None,
        }
        return {self.actors_file(): snapshot.dumps(data)}

    def restore(self, state, env_steps: int, read_file=lambda name: None) -> None:
        self.state, self.env_steps = state, env_steps
        self.num_updates = int(parallel.local_copy(state.learner.num_updates))
        data = read_file(self.actors_file())
        try:
            data = None if data is None else snapshot.loads(data)
            published = [] if data is None else data["published"]
            saved = data["actors"] if data is not None and self.exact_resume else None
            self._start_actors(saved)
        except snapshot.SnapshotError as e:
            raise RunFailed(f"{self.actors_file()} of the checkpoint: {e}") from None
        if data is None:  # a checkpoint without the actors' side: the newest parameters
            self._publish()
            self.exact_resume, self.exact_resume_problem = False, "the checkpoint holds no actors"
        for version, params in published if self.actors is not None else ():
            self.actors.publish(jax.device_put(params, self.actor_devices[0]), version)

    def prefill(self) -> int:
        self._start_actors()
        stats = new_stats()
        for _ in range(self.schedule.prefill_steps // self.iteration_items):
            self.state = self._add(self.state, self._next_items(stats))
            self.env_steps += self.iteration_items
        self._stop_if_failed()
        self._publish()
        return self.env_steps

    def run_chunk(self, num_iterations: int) -> ChunkReport:
        stats = new_stats()
        metrics, first_bad = [], -1
        updates = self.config.updates_per_iteration
        steps_before = self.actors.steps_taken()
        t0 = time.perf_counter()
        for _ in range(num_iterations):
            items = self._next_items(stats)
            beta = self.schedules.beta(self.env_steps + self.iteration_items)
            if self.processes > 1:  # a host value: the same on every process
                beta = np.float32(beta)
            self.state, m = self._ingest(self.state, items, beta)
            self.env_steps += self.iteration_items
            metrics.append((self.env_steps, m))
            before, self.num_updates = self.num_updates, self.num_updates + updates
            if self.actor_schedule.is_published(before, self.num_updates):
                self._publish()
        dt = time.perf_counter() - t0
        host = jax.device_get(parallel.local_copy([m for _, m in metrics]))
        losses = np.array([m.loss_sum for m in host], np.float64)
        bad = ~np.isfinite(losses)
        if bad.any():
            first_bad = metrics[int(np.argmax(bad))][0]
        n_updates = max(len(host) * updates, 1)
        stats["acted"] = self.actors.steps_taken() - steps_before
        stats["failed"] = self.failure is not None
        if self.actors.inexact_from is not None and self.exact_resume:
            self.exact_resume = False
            self.exact_resume_problem = (
                f"an actor process was restarted at env step "
                f"{self.actors.inexact_from * self.iteration_items:,d}: its environments "
                "started over"
            )
        stats, failed = over_processes(stats)
        self._stop_if_failed(failed)
        extra = {
            "staleness_mean": stats["staleness_sum"] / max(stats["staleness_n"], 1),
            "staleness_max": stats["staleness_max"],
            "queue_mean": stats["queue_sum"] / max(stats["queue_reads"], 1),
            "learner_wait_frac": stats["wait_s"] / self.processes / max(dt, 1e-9),
            "actor_sps": stats["acted"] / max(dt, 1e-9),
            "actor_restarts": self.actors.restarts,
            "replay_ratio": (
                self.num_updates * self.config.batch_size
                / max(self.env_steps - self.schedule.prefill_steps, 1)
            ),
        }  # fmt: skip
        return ChunkReport(
            env_steps=self.env_steps,
            episodes=np.array([int(stats["episodes"])]),
            return_sum=np.array([stats["return_sum"]]),
            loss=np.array([np.nansum(losses) / n_updates]),
            q_mean=np.array([sum(float(m.q_sum) for m in host) / n_updates]),
            first_nonfinite=np.array([first_bad]),
            params_finite=np.array([bool(host[-1].params_finite) if host else True]),
            extra=extra,
        )

    def evaluate(self) -> np.ndarray:
        """Greedy returns ``[1, eval_episodes]``; several processes each play every
        ``processes``-th episode on their own environments and gather them."""
        config, p = self.config, self.process
        mine = len(range(p, config.eval_episodes, self.processes))
        returns = np.full(mine, np.nan)
        try:
            if mine:
                params = parallel.local_copy(self.state.learner.params)
                returns = evaluate_on_fresh_envs(
                    self._make_env, self.network, params, self.actor_devices[0], episodes=mine,
                    epsilon=config.eval_epsilon, seed=config.seed, offset=7_919 * p,
                    env_steps=self.env_steps,
                )  # fmt: skip
        except Exception as e:
            self._fail(f"evaluation failed: {type(e).__name__}: {e}")
        if self.processes > 1:  # episode i was played by process i % processes
            share = -(-config.eval_episodes // self.processes)
            row = np.pad(returns, (0, share - mine), constant_values=np.nan)
            rows = parallel.gather_processes(np.append(row, self.failure is not None))
            self._stop_if_failed(rows[:, -1] > 0)
            returns = rows[:, :-1].T.reshape(-1)[: config.eval_episodes]
        return np.asarray(returns, np.float64)[None]  # [1, eval_episodes]

    def checkpoint_state(self):
        return self.state

    def checkpoint_meta(self) -> dict:
        return {"mode": "host_actors", "learner_devices": int(self.mesh.devices.size)}

    def online_params(self):
        return jax.tree.map(lambda x: x[None], self.state.learner.params)

    def epsilon(self, env_steps: int) -> float:
        return self.schedules.mean_epsilon(env_steps)

    def run_entries(self) -> None:
        return None  # seeds, not a sweep's runs

    def close(self) -> None:
        if self.actors is not None:
            self.actors.close()


def _where(config, num_actors: int, envs: int, actor_devices: int, learner_devices: int) -> str:
    """Where the run's actors and learner run, for the start line."""
    if config.actors == "ray":
        where = f"{num_actors} Ray actor process(es) x {envs} envs"
    else:
        where = f"{num_actors} actor thread(s) x {envs} envs on {actor_devices} device(s)"
    where = f"{where}, learner on {learner_devices} device(s)"
    processes = jax.process_count()
    return where + (f" over {processes} processes (actors per process)" if processes > 1 else "")
