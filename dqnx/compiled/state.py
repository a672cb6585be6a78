"""The compiled mode's state layout: what a run carries between chunks, how it
is vmapped over seeds and how it lies on the ``(seeds, data)`` device mesh; and
``TrainFns``, the pure functions of a run (built by ``train_fns.make_train_fns``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dqnx import actor as actor_lib
from dqnx import builder, envs, parallel, prioritized, replay, sweep
from dqnx import learner as learner_lib
from dqnx import nstep as nstep_lib
from dqnx.compiled import hyper
from dqnx.config import Config
from dqnx.types import ActorState, EpisodeStats, LearnerState


class TrainState(NamedTuple):
    """Everything a run carries between chunks (per-seed leaves lead with [S])."""

    env_steps: jax.Array  # int32 []: env steps per seed so far (all seeds in lockstep)
    actor: ActorState  # [S]
    learner: LearnerState  # [S]
    replay: Any  # ReplayState / PrioritizedState: data [S, capacity, ...]; pos, size shared
    key: jax.Array  # [S] keys for replay sampling
    nstep: Any = None  # NStepState: the last n-1 steps (n_step > 1 only)
    actor_params: Any = None  # [S] the actors' copy (actor_sync_period > 1 only)
    hparams: Any = None  # {name: [S]} a sweep's traced hyperparameters (compiled.hyper)


class ChunkMetrics(NamedTuple):
    """Per-seed sums over one chunk (leaves [S])."""

    episodes: EpisodeStats
    loss_sum: jax.Array
    q_sum: jax.Array
    first_nonfinite: jax.Array  # int32 [S]: env step of the first non-finite loss, or -1
    params_finite: jax.Array  # bool [S]: every online parameter finite at the chunk's end
    num_updates: jax.Array  # int32 [] (not per seed)


def seed_axes(config: Config, hparams: bool = False) -> TrainState:
    """vmap axes of a TrainState over seeds (the runs of a sweep); ``hparams``:
    the state holds a sweep's traced hyperparameters."""
    return TrainState(
        env_steps=None,
        actor=0,
        learner=0,
        replay=builder.replay_seed_axes(config),
        key=0,
        nstep=nstep_lib.NSTEP_SEED_AXES if config.n_step > 1 else None,
        actor_params=0 if config.actor_sync_period > 1 else None,
        hparams=0 if hparams else None,
    )


def state_specs(config: Config, hparams: bool = False) -> TrainState:
    """How a TrainState lies on the (seeds, data) mesh: seeds split every per-seed
    leaf; environments, replay slots and priorities are further split over data;
    parameters, keys and counters are the same on every data shard."""
    seeds, seeds_data, shared = P(parallel.SEEDS), P(parallel.SEEDS, parallel.DATA), P()
    if config.prioritized:
        replay_specs = prioritized.PrioritizedState(
            data=seeds_data, pos=shared, size=shared, tree=seeds_data, max_priority=seeds
        )
    else:
        replay_specs = replay.ReplayState(data=seeds_data, pos=shared, size=shared)
    nstep_specs = None
    if config.n_step > 1:  # steps [S, n-1, N, ...]: environments are the third axis
        nstep_specs = nstep_lib.NStepState(
            steps=P(parallel.SEEDS, None, parallel.DATA), count=shared
        )
    return TrainState(
        env_steps=shared,
        actor=ActorState(obs=seeds_data, env_state=seeds_data, key=seeds),
        learner=seeds,
        replay=replay_specs,
        key=seeds,
        nstep=nstep_specs,
        actor_params=seeds if config.actor_sync_period > 1 else None,
        hparams=seeds if hparams else None,
    )


def metric_specs() -> ChunkMetrics:
    """How ChunkMetrics lie on the mesh: per seed, the update count replicated."""
    per_seed = P(parallel.SEEDS)
    return ChunkMetrics(per_seed, per_seed, per_seed, per_seed, per_seed, P())


def seed_keys(config: Config, seeds=None) -> jax.Array:
    """One independent root key per seed: run ``i`` of a multi-seed run uses ``seed + i``;
    with ``seeds``, the key of each (the runs of a sweep: ``sweep.Run.seed``)."""
    if seeds is None:
        seeds = [config.seed + i for i in range(config.num_seeds)]
    return jnp.stack([jax.random.key(s) for s in seeds])


@dataclasses.dataclass(frozen=True)
class TrainFns:
    """The pure functions of a run. Jit them (donating the state) to use them."""

    config: Config
    env: envs.Env
    network: Any
    actor: actor_lib.Actor
    learner: learner_lib.Learner
    buffer: replay.UniformReplay
    layout: parallel.Layout
    schedules: builder.Schedules
    init: Callable[..., TrainState]
    prefill: Callable[[TrainState], tuple[TrainState, EpisodeStats]]
    run_chunk: Callable[[TrainState, Any], tuple[TrainState, ChunkMetrics]]
    evaluate: Callable[[TrainState], jax.Array]
    seed_group: int  # seeds a device advances together (seed_group_size)
    program: sweep.ProgramPlan | None = None  # the sweep's runs this program trains
    num_runs: int = 0  # vmapped runs: num_seeds, or the sweep program's runs

    @property
    def traces_hparams(self) -> bool:
        """The state holds per-run traced hyperparameters (``TrainState.hparams``)."""
        return bool(self.program and self.program.traced)

    def run_keys(self) -> jax.Array:
        """The runs' root keys ``[R]``: ``seed_keys``, or the sweep runs' seeds'."""
        return seed_keys(self.config, hyper.run_seeds(self.program))

    def initial_hparams(self):
        """The runs' traced hyperparameters ``{name: [R]}`` (None without)."""
        return hyper.device_hparams(self.program)

    def make_chunk(self, num_iterations: int):
        """``state -> (state, ChunkMetrics)`` running ``num_iterations`` iterations."""
        return functools.partial(self.run_chunk, num_iterations=num_iterations)

    @property
    def chunk(self):
        """``make_chunk`` of the config's ``iterations_per_chunk``."""
        return self.make_chunk(self.config.iterations_per_chunk)
