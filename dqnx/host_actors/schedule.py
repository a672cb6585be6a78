"""The actors' schedule, and the one way an ``ActorCore`` is built from a config.

Threads (``actor.ActorThread``) and Ray actor processes (``fleet``) both call
``make_core``, so an actor is the same object, with the same seeds and schedule,
whichever runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from dqnx import builder
from dqnx.config import Config
from dqnx.host_actors.core import RANDOM, ActorCore


class ActorSchedule(NamedTuple):
    """When each batch acts, and with what.

    Attributes:
      prefill_iterations: iterations acted uniformly at random before learning.
      iteration_items: env steps of one iteration (all actors, all processes).
      envs_per_actor: environments each actor steps.
      lag: ``actor_lag``.
      updates: learner updates per iteration.
      sync: ``actor_sync_period``.
      fixed: the fixed schedule (else: free-running).
    """

    prefill_iterations: int
    iteration_items: int
    envs_per_actor: int
    lag: int
    updates: int
    sync: int
    fixed: bool

    @classmethod
    def of(cls, config: Config, envs_per_actor: int) -> ActorSchedule:
        items = config.num_envs * config.rollout_steps
        return cls(
            prefill_iterations=-(-config.learning_starts // items),
            iteration_items=items,
            envs_per_actor=envs_per_actor,
            lag=config.actor_lag,
            updates=config.updates_per_iteration,
            sync=config.actor_sync_period,
            fixed=config.actor_schedule == "fixed",
        )

    def version_for(self, batch: int) -> int:
        """The version batch ``batch`` (= iteration) acts with: the newest published
        after iteration ``batch - 1 - lag``. Versions are update counts: 0 is
        published after the prefill, then one whenever the updates cross a
        multiple of ``sync`` (``is_published``)."""
        t = batch - 1 - self.lag
        if t < self.prefill_iterations - 1:
            return RANDOM
        crossings = (t - self.prefill_iterations + 1) * self.updates // self.sync
        return -(-crossings * self.sync // self.updates) * self.updates

    def is_published(self, updates_before: int, updates_after: int) -> bool:
        """Whether the learner publishes after an iteration took its update count
        from ``updates_before`` to ``updates_after``."""
        return updates_after // self.sync > updates_before // self.sync


def env_maker(config: Config) -> Callable:
    """``(n, seed, **kw) -> HostEnv``: ``n`` environments of ``config.env_name``
    with its ``--env_options``."""
    from dqnx import host_envs

    options = builder.host_env_options(config)
    return lambda n, seed, **kw: host_envs.make_host_env(config.env_name, n, seed, **options, **kw)


def make_core(
    config: Config,
    schedule: ActorSchedule,
    index: int,
    network,
    device,
    make_env: Callable,
    env_steps: Callable[[], int] | None = None,
    unravel: Callable | None = None,
) -> ActorCore:
    """Actor ``index`` (over all processes) of ``config``: its environments
    (``make_env(n, seed)``, seeded by the run's seed and ``index``), its Ape-X
    epsilon slice, the schedule's versions; ``env_steps`` (the learner's count
    now) drives epsilon in the free-running schedule; ``unravel``: parameters
    are published as one flat vector (``core.flat_params``)."""
    n = schedule.envs_per_actor
    epsilons = builder.make_schedules(config).epsilon
    cache: dict = {}

    def epsilon(batch: int):
        steps = batch * schedule.iteration_items if schedule.fixed else env_steps()
        if steps not in cache:
            cache.clear()
            eps = np.asarray(epsilons(steps), np.float32)
            cache[steps] = eps if eps.ndim == 0 else eps[index * n : (index + 1) * n]
        return cache[steps]

    return ActorCore(
        index,
        make_env(n, config.seed * 1_000_003 + index),  # each actor its own environments
        network,
        device,
        epsilon,
        schedule.version_for if schedule.fixed else None,
        frames=config.frame_replay,
        unravel=unravel,
        **builder.fields(config, "rollout_steps", "n_step", "gamma", "seed", "clip_rewards"),
    )
