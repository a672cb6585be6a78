"""The training program: pure compiled pieces (``make_train``) and the host loop (``run``).

One iteration is: every seed's actor steps its ``num_envs`` environments
``rollout_steps`` times -> the transitions go into that seed's replay ->
``updates_per_iteration`` learner updates -> target refresh by update count.
A chunk is ``lax.scan`` over iterations; prefill (uniformly random acting until
``learning_starts``) is a separate compiled function, so the chunk has no
warm-up branch.

Seeds are vmapped *inside* the scan rather than around it: all seeds advance
in lockstep, so the env-step counter and the replay write position are shared
scalars. Schedules are computed once, and writing to the ``[S, capacity, ...]``
buffers stays a single in-place dynamic-update-slice instead of a scatter.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dqnx import actor as actor_lib
from dqnx import envs, exploration, networks, parallel, prioritized, replay
from dqnx import learner as learner_lib
from dqnx import nstep as nstep_lib
from dqnx.config import Config
from dqnx.exploration import epsilon_greedy
from dqnx.types import ActorState, EpisodeStats, LearnerState, Transition


class TrainState(NamedTuple):
    """Everything a run carries between chunks (per-seed leaves lead with [S])."""

    env_steps: jax.Array  # int32 []: env steps per seed so far (all seeds in lockstep)
    actor: ActorState  # [S]
    learner: LearnerState  # [S]
    replay: Any  # ReplayState / PrioritizedState: data [S, capacity, ...]; pos, size shared
    key: jax.Array  # [S] keys for replay sampling
    nstep: Any = None  # NStepState: the last n-1 steps (n_step > 1 only)
    actor_params: Any = None  # [S] the actors' copy (actor_sync_period > 1 only)


def _replay_axes(config: Config):
    return prioritized.PRIORITIZED_SEED_AXES if config.prioritized else replay.REPLAY_SEED_AXES


def seed_axes(config: Config) -> TrainState:
    """vmap axes of a TrainState over seeds."""
    return TrainState(
        env_steps=None,
        actor=0,
        learner=0,
        replay=_replay_axes(config),
        key=0,
        nstep=nstep_lib.NSTEP_SEED_AXES if config.n_step > 1 else None,
        actor_params=0 if config.actor_sync_period > 1 else None,
    )


def state_specs(config: Config) -> TrainState:
    """How a TrainState lies on the (seeds, data) mesh: seeds split every per-seed
    leaf; environments, replay slots and priorities are further split over data;
    parameters, keys and counters are the same on every data shard."""
    from jax.sharding import PartitionSpec as P

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
    )


class ChunkMetrics(NamedTuple):
    """Per-seed sums over one chunk (leaves [S])."""

    episodes: EpisodeStats
    loss_sum: jax.Array
    q_sum: jax.Array
    first_nonfinite: jax.Array  # int32 [S]: env step of the first non-finite loss, or -1
    params_finite: jax.Array  # bool [S]: every online parameter finite at the chunk's end
    num_updates: jax.Array  # int32 [] (not per seed)


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
    init: Callable[..., TrainState]
    prefill: Callable[[TrainState], tuple[TrainState, EpisodeStats]]
    run_chunk: Callable[[TrainState, Any], tuple[TrainState, ChunkMetrics]]
    evaluate: Callable[[TrainState], jax.Array]
    seed_group: int  # seeds a device advances together (seed_group_size)

    def make_chunk(self, num_iterations: int):
        """``state -> (state, ChunkMetrics)`` running ``num_iterations`` iterations."""
        return functools.partial(self.run_chunk, num_iterations=num_iterations)

    @property
    def chunk(self):
        """``make_chunk`` of the config's ``iterations_per_chunk``."""
        return self.make_chunk(self.config.iterations_per_chunk)


def seed_keys(config: Config) -> jax.Array:
    """One independent root key per seed: run ``i`` of a sweep uses ``seed + i``."""
    return jnp.stack([jax.random.key(config.seed + i) for i in range(config.num_seeds)])


def make_train(
    config: Config,
    *,
    network=None,
    learner: learner_lib.Learner | None = None,
    layout: parallel.Layout | None = None,
) -> TrainFns:
    """Builds the pure pieces of a run.

    Args:
      config: a validated ``Config``.
      network: optional flax module replacing the one ``config.network`` names.
      learner: optional ``Learner`` replacing the config's (e.g. a custom loss);
        it must use ``network`` (and ``layout.data_axis`` as its axis_name).
      layout: how the run is spread over devices. With ``layout.data > 1`` the
        functions see one data shard each and must run under
        ``compile_train``'s ``shard_map``; the default runs anywhere.

    Returns:
      ``TrainFns`` with ``init(keys=seed_keys(config)) -> state``,
      ``prefill(state)``, ``run_chunk(state, n) -> (state, ChunkMetrics)``
      (``n`` iterations; a Python int or a traced int32 scalar) and
      ``evaluate(state) -> eval returns [S, eval_episodes]``.
    """
    layout = layout or parallel.Layout()
    env = envs.make(config.env_name)
    spec = env.spec
    if network is None:
        network = networks.make_q_network(config, spec.obs_shape, spec.num_actions)
    data_axis = layout.data_axis
    if learner is None:
        learner = learner_lib.learner_from_config(config, network, axis_name=data_axis)
    local_envs = config.num_envs // layout.data
    actor = actor_lib.make_actor(env, network, local_envs, data_axis)
    capacity = config.buffer_size // layout.data
    add_size = local_envs * config.rollout_steps
    if config.prioritized:
        if learner.update_weighted is None:
            raise ValueError("prioritized replay needs a learner with update_weighted")
        buffer = prioritized.prioritized_replay(
            capacity, add_batch_size=add_size, priority_exponent=config.priority_exponent
        )
    else:
        buffer = replay.uniform_replay(capacity, add_batch_size=add_size)
    replay_axes = _replay_axes(config)
    batch_size = config.batch_size // layout.data
    epsilon_at = exploration.linear_schedule(
        config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps
    )
    beta_at = exploration.linear_schedule(config.importance_exponent, 1.0, config.total_steps)
    steps_per_iteration = config.num_envs * config.rollout_steps
    example_obs = jnp.zeros((1, *spec.obs_shape), spec.obs_dtype)
    n_step = config.n_step
    sync = config.actor_sync_period
    updates = config.updates_per_iteration

    def actor_epsilon(env_steps):
        """Scalar schedule, or (Ape-X) this data shard's slice of the per-env epsilons."""
        if config.exploration == "linear":
            return epsilon_at(env_steps)
        eps = exploration.apex_epsilons(config.num_envs, config.apex_epsilon, config.apex_alpha)
        if data_axis is None:
            return eps
        start = jax.lax.axis_index(data_axis) * local_envs
        return jax.lax.dynamic_slice_in_dim(eps, start, local_envs)

    def init_one(key):
        k_actor, k_net, k_train = jax.random.split(key, 3)
        actor_state = actor.init(k_actor)
        learner_state = learner.init(k_net, example_obs)
        obs0, act0 = example_obs[0], jnp.int32(0)
        r0, f0 = jnp.float32(0), jnp.bool_(False)
        if n_step > 1:
            item = nstep_lib.NStepTransition(obs0, act0, r0, obs0, f0, jnp.float32(0))
            example = nstep_lib.RolloutStep(
                actor_state.obs, jnp.zeros(local_envs, jnp.int32), jnp.zeros(local_envs),
                actor_state.obs, jnp.zeros(local_envs, bool), jnp.zeros(local_envs, bool),
            )  # fmt: skip
            nstep_state = nstep_lib.init_nstep_state(example, n_step)
        else:
            item = Transition(obs0, act0, r0, obs0, f0)
            nstep_state = None
        actor_params = learner_state.params if sync > 1 else None
        return actor_state, learner_state, buffer.init(item), k_train, nstep_state, actor_params

    axes = seed_axes(config)

    def init(keys=None) -> TrainState:
        keys = seed_keys(config) if keys is None else keys
        out_axes = (0, 0, replay_axes, 0, axes.nstep, axes.actor_params)
        actor_state, learner_state, replay_state, keys, nstep_state, actor_params = jax.vmap(
            init_one, out_axes=out_axes
        )(keys)
        state = TrainState(
            jnp.int32(0), actor_state, learner_state, replay_state, keys, nstep_state, actor_params
        )
        # No weak types (gymnax's `time = 0`): every program's outputs, seed
        # groups' and restored checkpoints' included, then have the avals of its
        # inputs, so one compiled chunk serves every call.
        return jax.tree.map(
            lambda x: jax.lax.convert_element_type(x, x.dtype) if jax.typeof(x).weak_type else x,
            state,
        )

    batched_add = jax.vmap(buffer.add, in_axes=(replay_axes, 0), out_axes=replay_axes)

    def rollout_one(params, actor_state, nstep_state, epsilon, num_steps):
        """One seed's rollout -> (actor_state, nstep_state, transitions[T*N], stats)."""
        if n_step == 1:
            actor_state, transitions, stats = actor.rollout(params, actor_state, epsilon, num_steps)
            return actor_state, nstep_state, transitions, stats
        actor_state, steps, stats = actor.rollout_steps(params, actor_state, epsilon, num_steps)
        nstep_state, transitions, _ = nstep_lib.push(nstep_state, steps, config.gamma)
        transitions = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), transitions)
        return actor_state, nstep_state, transitions, stats

    def collect(state: TrainState, params, epsilon, num_steps=None, add=True):
        num_steps = num_steps or config.rollout_steps
        actor_state, nstep_state, transitions, stats = jax.vmap(
            functools.partial(rollout_one, num_steps=num_steps),
            in_axes=(None if params is None else 0, 0, axes.nstep, None),
            out_axes=(0, axes.nstep, 0, 0),
        )(params, state.actor, state.nstep, epsilon)
        if data_axis is not None:
            stats = jax.lax.psum(stats, data_axis)
        state = state._replace(
            env_steps=state.env_steps + num_steps * config.num_envs,
            actor=actor_state,
            nstep=nstep_state,
        )
        if add:
            state = state._replace(replay=batched_add(state.replay, transitions))
        return state, stats

    def learn_one(learner_state, replay_state, key, beta):
        key, k_sample = jax.random.split(key)
        k_sample = parallel.shard_key(k_sample, data_axis)
        if not config.prioritized:
            batch, _ = buffer.sample(replay_state, k_sample, batch_size)
            learner_state, metrics = learner.update(learner_state, batch)
            return learner_state, replay_state, key, metrics
        batch, idx, weights = buffer.sample(replay_state, k_sample, batch_size, beta)
        learner_state, metrics, td = learner.update_weighted(learner_state, batch, weights)
        replay_state = buffer.update_priorities(replay_state, idx, jnp.abs(td))
        if data_axis is not None:  # new items get the same max priority on every shard
            replay_state = replay_state._replace(
                max_priority=jax.lax.pmax(replay_state.max_priority, data_axis)
            )
        return learner_state, replay_state, key, metrics

    batched_learn = jax.vmap(
        learn_one, in_axes=(0, replay_axes, 0, None), out_axes=(0, replay_axes, 0, 0)
    )

    def iteration(state: TrainState):
        acting = state.learner.params if sync == 1 else state.actor_params
        state, stats = collect(state, acting, actor_epsilon(state.env_steps))
        beta = beta_at(state.env_steps)

        # Only prioritized replay changes in the updates (priorities); a uniform
        # buffer stays out of the carry so it is never copied.
        def update(carry, _):
            learner_state, priorities, key = carry
            replay_state = priorities if config.prioritized else state.replay
            learner_state, replay_state, key, metrics = batched_learn(
                learner_state, replay_state, key, beta
            )
            priorities = replay_state if config.prioritized else None
            return (learner_state, priorities, key), metrics

        carry = (state.learner, state.replay if config.prioritized else None, state.key)
        if updates == 1:
            (learner_state, priorities, key), metrics = update(carry, None)
        else:
            (learner_state, priorities, key), metrics = jax.lax.scan(
                update, carry, None, length=updates
            )
            metrics = jax.tree.map(lambda m: m.sum(0), metrics)
        state = state._replace(learner=learner_state, key=key)
        if config.prioritized:
            state = state._replace(replay=priorities)
        if sync > 1:
            # Refresh when this iteration's updates crossed a multiple of the period.
            done = learner_state.num_updates[0]
            crossed = done // sync > (done - updates) // sync
            state = state._replace(
                actor_params=jax.tree.map(
                    lambda new, old: jnp.where(crossed, new, old),
                    learner_state.params,
                    state.actor_params,
                )
            )
        return state, stats, metrics

    def prefill(state: TrainState):
        if n_step > 1:  # fill the n-step window: these steps make no transition yet
            for _ in range(n_step - 1):
                state, _ = collect(state, None, 1.0, num_steps=1, add=False)

        def body(state, _):
            state, stats = collect(state, None, 1.0)
            return state, stats

        state, stats = jax.lax.scan(body, state, None, length=config.prefill_iterations)
        return state, jax.tree.map(lambda x: x.sum(0), stats)

    # jit-wrapped so that the shapes taken below and the loop body share one
    # trace (an inner jit is inlined by XLA).
    traced_iteration = jax.jit(iteration)

    def chunk_all_seeds(state: TrainState, num_iterations):
        # Per-chunk sums are carried, not stacked, so the trip count may be a
        # traced scalar: one compiled chunk runs any number of iterations.
        _, stats0, metrics0 = jax.eval_shape(traced_iteration, state)
        zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)  # noqa: E731
        start = state.env_steps

        def body(i, carry):
            state, stats_sum, metrics_sum, first = carry
            state, stats, metrics = traced_iteration(state)
            # Env step of each seed's first non-finite loss (or -1).
            step = start + steps_per_iteration * (i + 1)
            bad = ~jnp.isfinite(metrics["loss"])
            first = jnp.where((first < 0) & bad, step, first)
            add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
            return state, add(stats_sum, stats), add(metrics_sum, metrics), first

        first0 = jnp.full(metrics0["loss"].shape, -1, jnp.int32)
        state, stats, metrics, first = jax.lax.fori_loop(
            0, num_iterations, body, (state, zeros(stats0), zeros(metrics0), first0)
        )
        finite = jax.vmap(
            lambda p: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(p)]))
        )(state.learner.params)
        return state, ChunkMetrics(
            episodes=stats,
            loss_sum=metrics["loss"],
            q_sum=metrics["q_mean"],
            first_nonfinite=first.astype(jnp.int32),
            params_finite=finite,
            num_updates=jnp.asarray(num_iterations * config.updates_per_iteration, jnp.int32),
        )

    local_seeds = config.num_seeds // layout.seeds
    num_params = sum(
        x.size
        for x in jax.tree.leaves(jax.eval_shape(network.init, jax.random.key(0), example_obs))
    )
    group = seed_group_size(config, local_seeds, learner_size=batch_size * num_params)
    if group == local_seeds:
        run_chunk = chunk_all_seeds
    else:
        run_chunk = in_seed_groups(chunk_all_seeds, axes, local_seeds, group)

    eval_envs = config.eval_episodes
    batch_reset = jax.vmap(env.reset)
    batch_step = jax.vmap(env.step)

    def evaluate_one(params, key):
        key, k_reset = jax.random.split(key)
        obs, env_state = batch_reset(jax.random.split(k_reset, eval_envs))
        zeros = jnp.zeros((eval_envs,), jnp.float32)
        finished = jnp.zeros((eval_envs,), bool)

        def cond(c):
            t, _, _, _, finished, _ = c
            return jnp.logical_and(t < spec.max_episode_steps + 1, ~jnp.all(finished))

        def body(c):
            t, obs, env_state, key, finished, returns = c
            key, k_act, k_env = jax.random.split(key, 3)
            q = network.apply(params, obs)
            if config.eval_epsilon > 0:
                action = epsilon_greedy(k_act, q, config.eval_epsilon)
            else:  # the same actions; no random draws to compile
                action = jnp.argmax(q, axis=-1).astype(jnp.int32)
            env_state, step = batch_step(jax.random.split(k_env, eval_envs), env_state, action)
            returns = returns + jnp.where(finished, 0.0, step.reward)
            return t + 1, step.obs, env_state, key, finished | step.done, returns

        carry = (jnp.int32(0), obs, env_state, key, finished, zeros)
        return jax.lax.while_loop(cond, body, carry)[-1]

    def evaluate(state: TrainState):
        """Greedy (``eval_epsilon``) returns [S, eval_episodes] of the online params."""
        keys = jax.vmap(lambda k: jax.random.fold_in(k, state.env_steps))(
            jax.vmap(lambda k: jax.random.fold_in(k, 1))(state.key)
        )
        return jax.vmap(evaluate_one)(state.learner.params, keys)

    return TrainFns(
        config, env, network, actor, learner, buffer, layout, init, prefill, run_chunk, evaluate,
        group,
    )  # fmt: skip


# On CPU, a learner with at least this many (batch x parameters) multiply-adds
# per forward pass runs one seed at a time; a smaller one runs seeds in pairs.
CPU_PAIR_BELOW = 2**22


def seed_group_size(config: Config, local_seeds: int, *, learner_size: int) -> int:
    """Seeds one device advances together in a chunk: the largest divisor of
    ``local_seeds`` not above ``config.seed_group_size``. 0 = auto: all seeds on
    accelerators; on CPU, 2 when ``learner_size`` (batch x parameter count of
    one seed's learner) is below ``CPU_PAIR_BELOW``, else 1.

    On CPU a device is one core. Small groups keep a group's replay and
    parameters in cache. Pairs help a small learner, whose ops are too short to
    run at full speed alone, and hurt a large one: XLA:CPU runs a learner
    vmapped over seeds slower per seed (one visible cause: the convolution's
    weight-gradient dot of a single seed runs in YNNPACK, the batched one in
    Eigen with both operands transposed). 8 seeds on 2 cores (2-core AMD EPYC):

    * ``breakout_minatar`` (batch 64 x 132k parameters = 8.5M): groups of 1 vs
      2 gave 15.0k, 16.0k vs 12.8k, 13.1k env steps/s (interleaved runs). On
      one pinned core (``XLA_FLAGS=--xla_force_host_platform_device_count=1
      taskset -c 0 scripts/bench.py --num_seeds=2 --seed_group_size=G``) the
      isolated learner took 1.71, 1.74 ms per seed and update alone vs 1.89,
      1.95 ms in pairs.
    * ``cartpole_reference`` (batch 128 x 10.9k parameters = 1.4M):
      ``scripts/bench.py`` gave 716 us per iteration with pairs, 786 with
      single seeds (bench_seeds runs: 101k, 109k vs 105k, 102k env steps/s).

    The threshold lies between the two; nothing between them was measured."""
    wanted = config.seed_group_size
    if wanted == 0:
        if jax.default_backend() != "cpu":
            wanted = local_seeds
        else:
            wanted = 2 if learner_size < CPU_PAIR_BELOW else 1
    wanted = min(wanted, local_seeds)
    return max(g for g in range(1, wanted + 1) if local_seeds % g == 0)


def in_seed_groups(chunk, axes: TrainState, num_seeds: int, group: int):
    """``chunk`` run on ``num_seeds // group`` groups of seeds one after another.

    Each group runs the whole chunk (all its iterations) before the next one
    starts, so only one group's replay, parameters and optimizer state are
    touched at a time. Seeds are independent, so the result is the same as one
    ``chunk`` over all seeds. Leaves shared by all seeds (``axes`` None: the env
    step counter, replay positions) start every group from the same value.
    """
    shared = -1  # marks leaves without a seed axis

    def leaf_axes(tree):
        return jax.tree.map(
            lambda a, sub: jax.tree.map(lambda _: shared if a is None else a, sub),
            axes,
            tree,
            is_leaf=lambda x: x is None,
        )

    def run(state: TrainState, *args, **kwargs):
        state_axes = leaf_axes(state)
        _, out_metrics = jax.eval_shape(
            lambda sub: chunk(sub, *args, **kwargs),
            jax.tree.map(
                lambda a, x: (
                    x if a == shared else jax.ShapeDtypeStruct((group, *x.shape[1:]), x.dtype)
                ),
                state_axes,
                state,
            ),
        )
        metrics0 = jax.tree.map(
            lambda x: jnp.zeros((num_seeds, *x.shape[1:]) if x.ndim else (), x.dtype),
            out_metrics,
        )

        def body(g, carry):
            current, metrics = carry
            start = g * group
            # Per-seed leaves: this group's slice of the carry; shared: the input's.
            sub = jax.tree.map(
                lambda a, x, x0: (
                    x0 if a == shared else jax.lax.dynamic_slice_in_dim(x, start, group, 0)
                ),
                state_axes,
                current,
                state,
            )
            sub, m = chunk(sub, *args, **kwargs)
            current = jax.tree.map(
                lambda a, x, y: (
                    y if a == shared else jax.lax.dynamic_update_slice_in_dim(x, y, start, 0)
                ),
                state_axes,
                current,
                sub,
            )
            metrics = jax.tree.map(
                lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, start, 0) if x.ndim else y,
                metrics,
                m,
            )
            return current, metrics

        return jax.lax.fori_loop(0, num_seeds // group, body, (state, metrics0))

    return run


# ---------------------------------------------------------------------------
# The host loop (the shell): compile, run chunks, log, evaluate, summarize.
# ---------------------------------------------------------------------------


def params_digests(params) -> list[str]:
    """One SHA-256 hex digest per seed of the online parameters (leaves [S, ...])."""
    import hashlib

    import numpy as np

    leaves = [np.asarray(x) for x in jax.tree.leaves(parallel.to_host(params))]
    digests = []
    for s in range(leaves[0].shape[0]):
        h = hashlib.sha256()
        for leaf in leaves:
            h.update(np.ascontiguousarray(leaf[s]).tobytes())
        digests.append(h.hexdigest())
    return digests


def local_params_digest(params) -> str:
    """SHA-256 of every copy of the parameters this process holds (all its devices):
    equal across processes exactly when every device ended with the same parameters
    for the seeds it holds."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        by_seed = {}
        for shard in leaf.addressable_shards:
            by_seed.setdefault(str(shard.index), []).append(np.asarray(shard.data))
        for index in sorted(by_seed):
            copies = by_seed[index]
            if any(not np.array_equal(copies[0], c) for c in copies[1:]):
                return "copies-differ"
            h.update(index.encode() + np.ascontiguousarray(copies[0]).tobytes())
    return h.hexdigest()


def default_workdir(name: str) -> str:
    import time

    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class Compiled(NamedTuple):
    """The compiled programs of a run, placed on its devices.

    ``chunk(state, num_iterations=None)`` runs ``num_iterations`` iterations
    (default: the config's ``iterations_per_chunk``); one program serves every
    length, so a run's last, shorter chunk compiles nothing. ``evaluate`` may
    still be compiling on a worker thread (see ``compile_train``): calling it
    waits for that compile."""

    init: Any
    initial_state: TrainState
    prefill: Any
    chunk: Callable[..., tuple[TrainState, ChunkMetrics]]
    evaluate: Any
    compile_s: float  # wall seconds until init, prefill and chunk are ready
    compile_parts_s: dict  # {program: seconds}, lowering and compile (threads overlap)
    layout: parallel.Layout


def compile_train(fns: TrainFns, *, training: bool = True) -> Compiled:
    """Compiles ``fns`` for its ``layout`` (seeds x data devices), ahead of time.

    Each program compiles on a worker thread as soon as it is lowered, on the
    abstract initial state (shardings included), the chunk first: lowering,
    which holds the GIL, overlaps with compiling, which does not. With
    ``training=True`` this returns once ``init``, ``prefill`` and ``chunk`` are
    compiled; ``evaluate``, needed only after the first chunk, then lowers and
    compiles on a worker thread while prefill and the first chunk run
    (``Compiled.evaluate`` is an ``xla.Deferred``). With ``training=False`` only
    ``init`` and ``evaluate`` are compiled, before returning (``prefill`` and
    ``chunk`` are None): enough to evaluate a checkpoint."""
    import gc
    import time

    from jax.sharding import PartitionSpec as P

    from dqnx import xla

    t_start = time.perf_counter()
    xla.prepare()
    mesh = parallel.make_mesh(fns.layout)
    specs = state_specs(fns.config)
    per_seed, replicated = P(parallel.SEEDS), P()
    metric_specs = ChunkMetrics(per_seed, per_seed, per_seed, per_seed, per_seed, replicated)

    def scalar(n: int):
        # Made by jitted functions so every process builds its shards of the same arrays.
        return jax.jit(lambda: jnp.int32(n), out_shardings=parallel.shardings(mesh, replicated))()

    keys = jax.jit(
        lambda: seed_keys(fns.config), out_shardings=parallel.shardings(mesh, per_seed)
    )()
    default_n = fns.config.iterations_per_chunk
    chunk_n = scalar(default_n)
    lower_s = {}

    def spmd_jit(fn, in_specs, out_specs, donate=True):
        wrapped = parallel.spmd(fn, mesh, in_specs, out_specs)
        return jax.jit(wrapped, donate_argnums=(0,) if donate else ())

    init = parallel.spmd(fns.init, mesh, (per_seed,), specs)
    init_jit = jax.jit(init, out_shardings=parallel.shardings(mesh, specs))
    evaluate_jit = spmd_jit(fns.evaluate, (specs,), per_seed, donate=False)
    # Tracing makes many short-lived objects and few cycles; the cyclic collector
    # scanning JAX's long-lived ones took ~20% of the lowering time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with xla.ParallelCompiler() as compiler:

            def lower(name, jitted, *args, **speed):
                t0 = time.perf_counter()
                lowered = jitted.lower(*args)
                lower_s[name] = time.perf_counter() - t0
                compiler.submit(name, lowered, **speed)  # compiles while the next lowers

            state_info = init_jit.eval_shape(keys)
            if training:
                lower("chunk", spmd_jit(fns.run_chunk, (specs, replicated), (specs, metric_specs)),
                      state_info, chunk_n, hot=True)  # fmt: skip
            lower("init", init_jit, keys, hot=False, trivial=True)
            if training:
                lower("prefill", spmd_jit(fns.prefill, (specs,), (specs, per_seed)), state_info,
                      hot=False, run_once=True)  # fmt: skip
            else:
                lower("evaluate", evaluate_jit, state_info, hot=False)
            compiled, compile_s = compiler.results()
    finally:
        if gc_was_enabled:
            gc.enable()
    state = compiled["init"](keys)
    parts_s = {k: lower_s[k] + compile_s[k] for k in compiled}

    chunk, evaluate = None, compiled.get("evaluate")
    if training:
        chunk_c, counts = compiled["chunk"], {default_n: chunk_n}

        def chunk(state, num_iterations=None):
            n = default_n if num_iterations is None else int(num_iterations)
            if n not in counts:
                counts[n] = scalar(n)
            return chunk_c(state, counts[n])

        evaluate = xla.compile_in_background(evaluate_jit, state_info)

    return Compiled(
        init=compiled["init"],
        initial_state=state,
        prefill=compiled.get("prefill"),
        chunk=chunk,
        evaluate=evaluate,
        compile_s=time.perf_counter() - t_start,
        compile_parts_s=parts_s,
        layout=fns.layout,
    )


def choose_layout(config: Config) -> parallel.Layout:
    """The device layout ``run`` uses for ``config``.

    ``--num_devices=0`` spreads seeds over the local devices. It splits a seed's
    data over devices only on accelerators: between XLA CPU devices a gradient
    all-reduce costs more than half a DQN batch saves (measured: 180 vs 166 us
    per update of batch 128 on 2 CPU devices vs 1). An explicit
    ``--num_devices`` is always honoured.
    """
    num_devices = config.num_devices
    if num_devices == 0 and jax.default_backend() == "cpu" and jax.process_count() == 1:
        num_devices = jax.local_device_count()
        seeds = math.gcd(config.num_seeds, num_devices)
        return parallel.Layout(seeds, 1)
    return parallel.choose_layout(
        config.num_seeds, num_devices, config.num_envs, config.batch_size, config.buffer_size
    )


# Fields that change what a run computes; resuming with any of them changed is an
# error (unless --allow_config_change). The rest only change I/O and reporting.
RESULT_NEUTRAL_FIELDS = frozenset(
    {
        "workdir",
        "log_every",
        "eval_every",
        "eval_episodes",
        "eval_epsilon",
        "checkpoint_every",
        "keep_checkpoints",
        "num_devices",
        "seed_group_size",
        "total_steps",
        "allow_config_change",
        "tensorboard",
        "wandb_project",
        "coordinator_address",
        "num_processes",
        "process_id",
    }
)


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was written. ``exit_code`` is 0 or 130."""

    def __init__(self, signum: int, env_steps: int):
        import signal

        self.signum, self.env_steps = signum, env_steps
        self.exit_code = 0 if signum == signal.SIGTERM else 130
        super().__init__(f"{signal.Signals(signum).name} at env step {env_steps}")


class Diverged(RuntimeError):
    """A loss or a parameter became NaN/inf."""


def config_drift(saved: dict, config: Config) -> list[str]:
    """Result-changing fields whose value differs between ``saved`` and ``config``."""
    neutral = set(RESULT_NEUTRAL_FIELDS)
    if config.anneal_lr:
        neutral.discard("total_steps")  # the learning-rate schedule depends on it
    current = config.to_dict()
    return sorted(k for k in current if k not in neutral and saved.get(k) != current[k])


class _SignalFlag:
    """Records SIGTERM/SIGINT instead of dying mid-chunk; a second Ctrl-C
    interrupts at once (KeyboardInterrupt)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _truncate_metrics(workdir, env_steps: int) -> None:
    """Drops metric lines/rows past ``env_steps`` (resuming re-creates them)."""
    import csv
    import json

    path = workdir / "metrics.jsonl"
    if path.exists():
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["env_steps"] <= env_steps:
                    keep.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a crash ends the readable part
        path.write_text("".join(keep))
    path = workdir / "metrics.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            col = rows[0].index("env_steps") if "env_steps" in rows[0] else 0
            body = []
            for r in rows[1:]:
                try:
                    if len(r) == len(rows[0]) and int(r[col]) <= env_steps:
                        body.append(r)
                except ValueError:
                    pass
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([rows[0], *body])


def run(config: Config, workdir: str | None = None, *, quiet: bool = False) -> dict:
    """Trains as ``config`` says and writes the command-line contract's files.

    Writes ``config.json``, ``metrics.jsonl`` (one object per chunk),
    checkpoints under ``checkpoints/`` and ``summary.json`` to ``workdir``.
    If ``workdir`` already holds a checkpoint, continues from the newest one,
    bit for bit as if never stopped.

    Raises:
      ConfigError: bad config, or resuming with result-changing flags changed.
      checkpoint.CheckpointError: the checkpoint to resume from is unusable.
      Interrupted: SIGTERM/SIGINT; a checkpoint was written first.
      Diverged: NaN/inf in a loss or the parameters (nothing saved past the
        last good checkpoint).

    Returns the summary dict.
    """
    import time
    from pathlib import Path

    import numpy as np

    from dqnx import checkpoint as ckpt_lib
    from dqnx import logging as dlog
    from dqnx.config import ConfigError

    config = config.validate()
    workdir = Path(workdir or config.workdir or default_workdir(config.env_name))
    config = config.replace(workdir=str(workdir))
    is_main = jax.process_index() == 0
    say = (lambda _: None) if (quiet or not is_main) else dlog.print_line

    t_start = time.perf_counter()
    # Resume check before compiling: config drift is a user mistake, not a trace.
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    resume_step = checkpointer.latest_step()
    if resume_step is not None:
        saved = checkpointer.read_meta(resume_step)["config"]
        drift = config_drift(saved, config)
        if drift and not config.allow_config_change:
            checkpointer.close()
            changes = ", ".join(
                f"--{k} ({saved.get(k)!r} -> {getattr(config, k)!r})" for k in drift
            )
            raise ConfigError(
                f"{workdir} holds a run with other settings: {changes}; rerun with the original "
                "flags, pick a new --workdir, or pass --allow_config_change"
            )

    dlog.require_outputs(tensorboard=config.tensorboard, wandb_project=config.wandb_project)

    fns = make_train(config, layout=choose_layout(config))
    programs = compile_train(fns)
    compile_s = programs.compile_s
    state = programs.initial_state
    prefill_c, chunk_c, eval_c = programs.prefill, programs.chunk, programs.evaluate
    spi = config.steps_per_iteration
    prefill_steps = config.prefill_steps
    seeds = config.num_seeds

    def save(state, env_steps):
        t0 = time.perf_counter()
        meta = {"config": config.to_dict(), "layout": list(programs.layout)}
        checkpointer.save(env_steps, state, meta)
        return time.perf_counter() - t0

    if resume_step is not None:
        state, _ = checkpointer.restore(state, resume_step)
        env_steps = resume_step
        if (env_steps - prefill_steps) % spi or env_steps < prefill_steps:
            raise ckpt_lib.CheckpointError(
                f"checkpoint step {env_steps} is not an iteration boundary of this config"
            )
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        dlog.write_json(workdir / "config.json", config.to_dict())
        if resume_step is None:
            dlog.remove_outputs(workdir)
        else:
            _truncate_metrics(workdir, resume_step)
    writer = dlog.MetricWriters(
        workdir,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project,
        config=config.to_dict(),
        resume_step=resume_step,
        is_main_process=is_main,
    )
    where = f"{programs.layout.seeds}x{programs.layout.data} device(s)"
    if jax.process_count() > 1:
        where += f" over {jax.process_count()} processes"
    resumed = "" if resume_step is None else f", resumed at env step {resume_step:,d}"
    say(
        f"dqnx: {config.env_name}, {seeds} seed(s), {config.total_steps:,d} env steps per seed "
        f"on {where} -> {workdir} (compiled in {compile_s:.1f}s{resumed})"
    )

    train_s = 0.0
    eval_total_s = 0.0
    checkpoint_s = []
    last_eval = None
    last_saved = resume_step
    steps_this_process = 0

    with _SignalFlag() as signals:

        def stop_if_signalled(state, env_steps):
            if parallel.any_process(signals.received is not None):
                signum = signals.received or __import__("signal").SIGTERM
                if last_saved != env_steps:
                    save(state, env_steps)
                progress.write(
                    f"dqnx: {__import__('signal').Signals(signum).name} at env step "
                    f"{env_steps:,d}: checkpoint saved in {workdir / 'checkpoints'}, exiting"
                )
                raise Interrupted(signum, env_steps)

        progress = dlog.Progress(
            config.total_steps,
            initial=resume_step or 0,
            enabled=is_main and not quiet,
        )
        try:
            if resume_step is None:
                t0 = time.perf_counter()
                state, _ = prefill_c(state)
                env_steps = int(parallel.to_host(state.env_steps))
                train_s += time.perf_counter() - t0
                steps_this_process += env_steps

            remaining = config.train_iterations - (env_steps - prefill_steps) // spi
            chunk_iters = config.iterations_per_chunk
            while remaining > 0:
                stop_if_signalled(state, env_steps)
                n = min(chunk_iters, remaining)
                t0 = time.perf_counter()
                state, m = chunk_c(state, n)
                m = parallel.to_host(m)
                dt = time.perf_counter() - t0
                train_s += dt
                remaining -= n
                prev_steps, env_steps = env_steps, env_steps + n * spi
                steps_this_process += n * spi
                count = np.asarray(m.episodes.count)
                with np.errstate(invalid="ignore", divide="ignore"):
                    train_return = np.where(count > 0, m.episodes.return_sum / count, np.nan)
                num_updates = max(int(m.num_updates), 1)
                record = {
                    "env_steps": env_steps,
                    "sps": n * spi * seeds / dt,
                    "train_return": train_return,
                    "episodes": count,
                    "loss": np.asarray(m.loss_sum) / num_updates,
                    "q_mean": np.asarray(m.q_sum) / num_updates,
                    "epsilon": float(fns_epsilon(config, env_steps)),
                }
                bad = np.asarray(m.first_nonfinite) >= 0
                bad |= ~np.asarray(m.params_finite)
                if bad.any():
                    record["wall_s"] = time.perf_counter() - t_start
                    writer.write(record)
                    seeds_bad = np.flatnonzero(bad).tolist()
                    firsts = np.asarray(m.first_nonfinite)[bad]
                    step = int(firsts[firsts >= 0].min()) if (firsts >= 0).any() else env_steps
                    last = "none" if last_saved is None else f"env step {last_saved:,d}"
                    raise Diverged(
                        f"non-finite loss or parameters at env step {step:,d} in seed(s) "
                        f"{seeds_bad}; stopped, last good checkpoint: {last} "
                        f"({workdir / 'checkpoints'}); try a lower --learning_rate or "
                        "--max_grad_norm"
                    )
                every = config.eval_every
                due = every and prev_steps // every < env_steps // every
                if due or remaining == 0:
                    t_eval = time.perf_counter()
                    returns = np.asarray(parallel.to_host(eval_c(state)))
                    eval_total_s += time.perf_counter() - t_eval
                    last_eval = returns.mean(axis=1)
                    record["eval_return"] = last_eval
                every = config.checkpoint_every
                if remaining == 0 or (every and prev_steps // every < env_steps // every):
                    checkpoint_s.append(save(state, env_steps))
                    last_saved = env_steps
                record["wall_s"] = time.perf_counter() - t_start
                writer.write(record)
                sps_avg = steps_this_process * seeds / max(train_s, 1e-9)
                progress.update(record, eta_s=(config.total_steps - env_steps) * seeds / sps_avg)
            if last_eval is None:  # resumed at the very end: evaluate again
                last_eval = np.asarray(parallel.to_host(eval_c(state))).mean(axis=1)
        finally:
            progress.close()
            writer.close()
            checkpointer.close()

    summary = {
        "env": config.env_name,
        "num_seeds": seeds,
        "env_steps_per_seed": env_steps,
        "wall_s": time.perf_counter() - t_start,
        "compile_s": compile_s,
        "train_s": train_s,
        "eval_s": eval_total_s,
        "checkpoint_s": float(np.mean(checkpoint_s)) if checkpoint_s else None,
        "sps": steps_this_process * seeds / max(train_s, 1e-9),
        "resumed_from": resume_step,
        "eval_return_per_seed": last_eval,
        "eval_return_mean": float(np.mean(last_eval)),
        "params_digest": params_digests(state.learner.params),
        "local_params_digest": local_params_digest(state.learner.params),
    }
    if is_main:
        dlog.write_json(workdir / "summary.json", summary)
    say(
        f"done: eval return {summary['eval_return_mean']:.2f} (mean of {seeds} seed(s)), "
        f"{summary['sps'] / 1e3:.1f}k env steps/s, wall {summary['wall_s']:.1f}s, "
        f"compile {compile_s:.1f}s"
    )
    return summary


def fns_epsilon(config: Config, env_steps: int) -> float:
    """The exploration rate at ``env_steps`` (host side; Ape-X: the mean over envs)."""
    if config.exploration == "apex":
        eps = exploration.apex_epsilons(config.num_envs, config.apex_epsilon, config.apex_alpha)
        return float(eps.mean())
    return float(
        exploration.linear_schedule(
            config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps
        )(env_steps)
    )
