"""The host-actor mode's device side: replay and learner on the learner devices.

``ingest(state, items, beta)`` is one jitted, donated program: add a batch of
transitions to replay, then the ``updates`` learner updates it pays for. The
learner is data-parallel over its devices exactly as in the compiled mode: each
device holds its own replay shard, adds its slice of every batch, samples
``batch_size / D`` and averages gradients with ``pmean``. The mesh may span the
learner devices of several processes; every process then calls these programs
in the same order, each giving its own rows of the batch.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dqnx import parallel, prioritized, replay
from dqnx.frame_replay import FrameStep
from dqnx.learn_step import make_learn_step
from dqnx.nstep import NStepTransition
from dqnx.types import LearnerState, Transition


class HostLearnerState(NamedTuple):
    """What the learner carries (and a checkpoint holds) in the host-actor mode."""

    env_steps: jax.Array  # int32 []: transitions stored so far
    learner: LearnerState
    replay: Any  # replay state; data (and priorities) split over the learner devices
    key: jax.Array  # sampling key


class IngestMetrics(NamedTuple):
    loss_sum: jax.Array  # float32 [] over this ingest's updates
    q_sum: jax.Array
    params_finite: jax.Array  # bool []


def state_specs(is_prioritized: bool, frames: bool = False) -> HostLearnerState:
    """How the learner state lies on the learner mesh (replay split over DATA; a
    frame replay stays on one device)."""
    data, shared = P(parallel.DATA), P()
    if frames:
        from dqnx.frame_replay import FrameReplayState

        replay_specs = FrameReplayState(*[shared] * len(FrameReplayState._fields))
    elif is_prioritized:
        replay_specs = prioritized.PrioritizedState(
            data=data, pos=shared, size=shared, tree=data, max_priority=shared
        )
    else:
        replay_specs = replay.ReplayState(data=data, pos=shared, size=shared)
    return HostLearnerState(env_steps=shared, learner=shared, replay=replay_specs, key=shared)


class LearnerPrograms(NamedTuple):
    """Jitted on the learner mesh: ``init() -> state``, ``add(state, items) ->
    state`` (prefill), ``ingest(state, items, beta) -> (state, IngestMetrics)``;
    ``items_sharding`` places a batch's leaves on the mesh."""

    init: Any
    add: Any
    ingest: Any
    items_sharding: Any


def add_transitions(buffer):
    """``add(replay_state, items[B]) -> replay_state`` for a transition buffer."""
    return buffer.add


def add_frame_blocks(buffer):
    """``add(replay_state, (groups[M], blocks[M, K, N])) -> replay_state`` for a
    ``frame_replay`` buffer: each actor's block goes to its own stream group, in
    the order received."""

    def add_blocks(replay_state, items):
        groups, blocks = items

        def one(state, x):
            group, block = x
            return buffer.add(state, group, block), None

        return jax.lax.scan(one, replay_state, (groups, blocks))[0]

    return add_blocks


def transition_examples(obs0, iteration_items: int, n_step: int):
    """(one replay item, one iteration's items, the add) of a transition buffer."""
    r0, f0 = np.float32(0), np.bool_(False)
    if n_step > 1:
        item = NStepTransition(obs0, np.int32(0), r0, obs0, f0, np.float32(0))
    else:
        item = Transition(obs0, np.int32(0), r0, obs0, f0)
    items = jax.tree.map(lambda x: np.zeros((iteration_items, *x.shape), x.dtype), item)
    return item, items, add_transitions


def frame_examples(obs0, num_actions: int, envs: int, num_groups: int, rollout_steps: int):
    """The same for a frame buffer: items are (groups[M], FrameStep[M, K, N])."""
    frame = obs0[-1]
    action = np.uint8(0) if num_actions <= 256 else np.int32(0)
    step = FrameStep(frame, action, np.float32(0), False, False, False, frame)
    step = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (envs, *np.shape(x))), step)
    blocks = jax.tree.map(lambda x: np.zeros((num_groups, rollout_steps, *x.shape), x.dtype), step)
    return step, (np.zeros(num_groups, np.int32), blocks), add_frame_blocks


def make_learner_programs(
    *,
    network,
    learner,
    buffer,
    add_items,
    example_init,
    example_items,
    example_obs,
    steps_per_add: int,
    batch_size: int,
    updates: int,
    is_prioritized: bool,
    seed: int,
    mesh,
) -> LearnerPrograms:
    """Builds and jits the learner's programs on ``mesh`` (1-D over ``parallel.DATA``).

    Args:
      network, learner, buffer: the blocks (``buffer`` sized per learner device).
      add_items: ``(replay_state, items) -> replay_state`` (``add_transitions``
        or ``add_frame_blocks``).
      example_init: what ``buffer.init`` takes (one item, unbatched).
      example_items: one iteration's items (all devices), for shapes and dtypes.
      example_obs: ``[1, *obs_shape]`` to initialise the network.
      steps_per_add: env steps one iteration's items hold.
      batch_size: transitions per update, all devices together.
      updates: learner updates per ingested batch.
      is_prioritized: the buffer is prioritized.
      seed: the run's seed (network init and sampling keys).
      mesh: the learner devices.
    """
    del network  # the learner closes over it
    devices = mesh.devices.size
    axis = parallel.DATA if devices > 1 else None
    specs = state_specs(is_prioritized, frames=add_items.__name__ == "add_blocks")
    learn = make_learn_step(
        learner, buffer, batch_size // devices, prioritized=is_prioritized, axis_name=axis
    )

    def init():
        k_net, k_train = jax.random.split(jax.random.fold_in(jax.random.key(seed), 7))
        return HostLearnerState(
            jnp.int32(0), learner.init(k_net, example_obs), buffer.init(example_init), k_train
        )

    def add(state: HostLearnerState, items):
        return state._replace(
            env_steps=state.env_steps + steps_per_add, replay=add_items(state.replay, items)
        )

    def ingest(state: HostLearnerState, items, beta):
        state = add(state, items)

        def update(carry, _):
            learner_state, replay_state, key = carry
            learner_state, replay_state, key, metrics = learn(
                learner_state, replay_state, key, beta
            )
            return (learner_state, replay_state, key), metrics

        # Unrolled: XLA:CPU runs a convolution inside a loop far slower than
        # outside one, and `updates` is small.
        (learner_state, replay_state, key), metrics = jax.lax.scan(
            update, (state.learner, state.replay, state.key), None, length=updates, unroll=True
        )
        finite = jnp.all(
            jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(learner_state.params)])
        )
        out = IngestMetrics(metrics["loss"].sum(), metrics["q_mean"].sum(), finite)
        return HostLearnerState(state.env_steps, learner_state, replay_state, key), out

    shardings = functools.partial(parallel.shardings, mesh)
    item_spec = jax.tree.map(lambda _: P(parallel.DATA), example_items)
    metric_specs = IngestMetrics(P(), P(), P())
    init_jit = jax.jit(
        parallel.spmd(init, mesh, (), specs), out_shardings=shardings(specs)
    )  # fmt: skip
    add_jit = jax.jit(
        parallel.spmd(add, mesh, (specs, item_spec), specs), donate_argnums=(0,)
    )  # fmt: skip
    ingest_jit = jax.jit(
        parallel.spmd(ingest, mesh, (specs, item_spec, P()), (specs, metric_specs)),
        donate_argnums=(0,),
    )
    return LearnerPrograms(init_jit, add_jit, ingest_jit, NamedSharding(mesh, P(parallel.DATA)))
