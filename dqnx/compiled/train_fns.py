"""The compiled mode's pure functions: init, prefill, chunk, evaluate.

One iteration is: every seed's actor steps its ``num_envs`` environments
``rollout_steps`` times -> the transitions go into that seed's replay ->
``updates_per_iteration`` learner updates -> target refresh by update count.
A chunk is a ``fori_loop`` over iterations; prefill (uniformly random acting
until ``learning_starts``) is a separate compiled function, so the chunk has
no warm-up branch.

Seeds are vmapped *inside* the loop rather than around it: all seeds advance
in lockstep, so the env-step counter and the replay write position are shared
scalars. Schedules are computed once, and writing to the ``[S, capacity, ...]``
buffers stays a single in-place dynamic-update-slice instead of a scatter.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from dqnx import actor as actor_lib
from dqnx import builder, envs, parallel, sweep
from dqnx import learner as learner_lib
from dqnx import nstep as nstep_lib
from dqnx.compiled import hyper, seed_groups
from dqnx.compiled.state import ChunkMetrics, TrainFns, TrainState, seed_axes, seed_keys
from dqnx.config import Config
from dqnx.learn_step import make_learn_step
from dqnx.types import Transition


@dataclasses.dataclass(frozen=True)
class _Parts:
    """What the program's functions close over (one data shard's view)."""

    config: Config
    env: envs.Env
    network: Any
    actor: actor_lib.Actor
    learner: learner_lib.Learner
    buffer: Any
    schedules: builder.Schedules
    axes: TrainState
    data_axis: str | None
    local_envs: int
    batch_size: int
    example_obs: jax.Array
    hparams: bool = False  # the state holds a sweep's traced hyperparameters
    program: sweep.ProgramPlan | None = None

    def run_buffer(self, hp):
        """One run's replay: ``buffer``, or built with the run's traced priority exponent."""
        if not hyper.traces(hp, "priority_exponent"):
            return self.buffer
        config = self.config.replace(priority_exponent=hp["priority_exponent"])
        return builder.make_buffer(
            config, self.buffer.capacity, self.local_envs * self.config.rollout_steps
        )


def make_train_fns(
    config: Config,
    *,
    network=None,
    objective=None,
    layout: parallel.Layout | None = None,
    program: sweep.ProgramPlan | None = None,
) -> TrainFns:
    """Builds the pure pieces of a run.

    Args:
      config: a validated ``Config``.
      network: optional flax module replacing the one ``config.network`` names.
      objective: optional ``objectives.Objective`` replacing the one
        ``config.learner`` names (e.g. a penalty on Q-values); the learner is
        otherwise the config's (gamma, target refresh, optimizer).
      layout: how the run is spread over devices. With ``layout.data > 1`` the
        functions see one data shard each and must run under
        ``compile_train``'s ``shard_map``; the default runs anywhere.
      program: the runs of a sweep this program trains (``sweep.plan``; default:
        the config's sweep, which must be one program). The runs take the place
        of the seeds; the fields ``program.traced`` are per-run traced values.

    Returns:
      ``TrainFns`` with ``init(keys=seed_keys(config), hparams=None) -> state``,
      ``prefill(state)``, ``run_chunk(state, n) -> (state, ChunkMetrics)``
      (``n`` iterations; a Python int or a traced int32 scalar) and
      ``evaluate(state) -> eval returns [S, eval_episodes]``.
    """
    layout = layout or parallel.Layout()
    if program is None and config.sweep:
        programs = sweep.plan(config).programs
        if len(programs) > 1:
            raise ValueError(f"the sweep makes {len(programs)} programs: pass one as program=")
        program = programs[0]
    if program is not None and objective is not None:
        raise ValueError("a sweep builds each run's objective from its config: no objective=")
    num_runs = len(program.runs) if program is not None else config.num_seeds
    traced = bool(program and program.traced)
    env = builder.make_env(config)
    spec = env.spec
    if network is None:
        network = builder.make_network(config, spec.obs_shape, spec.num_actions)
    data_axis = layout.data_axis
    learner = builder.make_learner(config, network, axis_name=data_axis, objective=objective)
    local_envs = config.num_envs // layout.data
    parts = _Parts(
        config=config,
        env=env,
        network=network,
        actor=actor_lib.make_actor(env, network, local_envs, data_axis),
        learner=learner,
        buffer=builder.make_buffer(
            config, config.buffer_size // layout.data, local_envs * config.rollout_steps
        ),
        schedules=builder.make_schedules(config),
        axes=seed_axes(config, traced),
        data_axis=data_axis,
        local_envs=local_envs,
        batch_size=config.batch_size // layout.data,
        example_obs=jnp.zeros((1, *spec.obs_shape), spec.obs_dtype),
        hparams=traced,
        program=program,
    )
    collect = _make_collect(parts)
    chunk_all_seeds = _make_chunk(parts, _make_iteration(parts, collect))
    local_seeds = num_runs // layout.seeds
    num_params = sum(
        x.size
        for x in jax.tree.leaves(jax.eval_shape(network.init, jax.random.key(0), parts.example_obs))
    )
    group = seed_groups.seed_group_size(
        config.seed_group_size, local_seeds, learner_size=parts.batch_size * num_params
    )
    run_chunk = chunk_all_seeds
    if group != local_seeds:
        run_chunk = seed_groups.in_seed_groups(chunk_all_seeds, parts.axes, local_seeds, group)
    return TrainFns(
        config, env, network, parts.actor, learner, parts.buffer, layout, parts.schedules,
        _make_init(parts), _make_prefill(parts, collect), run_chunk, _make_evaluate(parts), group,
        program, num_runs,
    )  # fmt: skip


def _make_init(p: _Parts):
    config, n_step = p.config, p.config.n_step

    def init_one(key):
        k_actor, k_net, k_train = jax.random.split(key, 3)
        actor_state = p.actor.init(k_actor)
        learner_state = p.learner.init(k_net, p.example_obs)
        obs0, act0 = p.example_obs[0], jnp.int32(0)
        r0, f0 = jnp.float32(0), jnp.bool_(False)
        # Only an env with a legal-action mask stores one (the next state's).
        legal0 = jnp.ones(p.env.spec.num_actions, bool) if p.env.legal is not None else None
        if n_step > 1:
            item = nstep_lib.NStepTransition(obs0, act0, r0, obs0, f0, jnp.float32(0), legal0)
            n = p.local_envs
            example = nstep_lib.RolloutStep(
                actor_state.obs, jnp.zeros(n, jnp.int32), jnp.zeros(n),
                actor_state.obs, jnp.zeros(n, bool), jnp.zeros(n, bool),
                None if legal0 is None else jnp.ones((n, *legal0.shape), bool),
            )  # fmt: skip
            nstep_state = nstep_lib.init_nstep_state(example, n_step)
        else:
            item = Transition(obs0, act0, r0, obs0, f0, legal0)
            nstep_state = None
        actor_params = learner_state.params if config.actor_sync_period > 1 else None
        return actor_state, learner_state, p.buffer.init(item), k_train, nstep_state, actor_params

    def init(keys=None, hparams=None) -> TrainState:
        """The initial state of the runs of ``keys`` (default: the config's seeds, or
        the sweep's runs' with their traced hyperparameters ``hparams``)."""
        if keys is None:
            keys = seed_keys(config, hyper.run_seeds(p.program))
        if hparams is None:
            hparams = hyper.device_hparams(p.program)
        out_axes = (0, 0, p.axes.replay, 0, p.axes.nstep, p.axes.actor_params)
        actor_state, learner_state, replay_state, keys, nstep_state, actor_params = jax.vmap(
            init_one, out_axes=out_axes
        )(keys)
        state = TrainState(
            jnp.int32(0), actor_state, learner_state, replay_state, keys, nstep_state, actor_params,
            hparams,
        )  # fmt: skip
        # No weak types (gymnax's `time = 0`): every program's outputs, seed
        # groups' and restored checkpoints' included, then have the avals of its
        # inputs, so one compiled chunk serves every call.
        return jax.tree.map(
            lambda x: jax.lax.convert_element_type(x, x.dtype) if jax.typeof(x).weak_type else x,
            state,
        )

    return init


def _make_collect(p: _Parts):
    """``collect(state, params, epsilon, num_steps=None, add=True) -> (state, stats)``:
    every seed's actor steps its environments; the transitions go into replay."""
    config, axes = p.config, p.axes

    def add_run(replay_state, transitions, hp):  # hp: the run's traced values, or None
        return p.run_buffer(hp).add(replay_state, transitions)

    batched_add = jax.vmap(add_run, in_axes=(axes.replay, 0, 0), out_axes=axes.replay)

    def rollout_one(params, actor_state, nstep_state, epsilon, gamma, num_steps):
        """One seed's rollout -> (actor_state, nstep_state, transitions[T*N], stats)."""
        if config.n_step == 1:
            actor_state, transitions, stats = p.actor.rollout(
                params, actor_state, epsilon, num_steps
            )
            return actor_state, nstep_state, transitions, stats
        actor_state, steps, stats = p.actor.rollout_steps(params, actor_state, epsilon, num_steps)
        nstep_state, transitions, _ = nstep_lib.push(nstep_state, steps, gamma)
        transitions = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), transitions)
        return actor_state, nstep_state, transitions, stats

    def collect(state: TrainState, params, epsilon, num_steps=None, add=True, per_run_eps=False):
        """``per_run_eps``: ``epsilon`` is one value per run ``[S]``."""
        num_steps = num_steps or config.rollout_steps
        gamma, gamma_axis = config.gamma, None
        if hyper.traces(state.hparams, "gamma"):
            gamma, gamma_axis = state.hparams["gamma"], 0
        actor_state, nstep_state, transitions, stats = jax.vmap(
            functools.partial(rollout_one, num_steps=num_steps),
            in_axes=(None if params is None else 0, 0, axes.nstep, 0 if per_run_eps else None,
                     gamma_axis),
            out_axes=(0, axes.nstep, 0, 0),
        )(params, state.actor, state.nstep, epsilon, gamma)  # fmt: skip
        if p.data_axis is not None:
            stats = jax.lax.psum(stats, p.data_axis)
        state = state._replace(
            env_steps=state.env_steps + num_steps * config.num_envs,
            actor=actor_state,
            nstep=nstep_state,
        )
        if add:
            state = state._replace(replay=batched_add(state.replay, transitions, state.hparams))
        return state, stats

    return collect


def _make_learn(p: _Parts):
    """``learn(learner_state, replay_state, key, beta, hparams)`` for all seeds: one
    update each on a batch sampled from its own replay (priorities updated); a
    sweep's runs each with the learner of their traced hyperparameters."""

    def learn_step(learner, buffer=p.buffer):
        return make_learn_step(
            learner, buffer, p.batch_size, prioritized=p.config.prioritized,
            axis_name=p.data_axis,
        )  # fmt: skip

    replay_axes = p.axes.replay
    out_axes = (0, replay_axes, 0, 0)
    if not p.hparams:
        learn_one = learn_step(p.learner)
        batched = jax.vmap(learn_one, in_axes=(0, replay_axes, 0, None), out_axes=out_axes)
        return lambda learner_state, replay_state, key, beta, hparams: batched(
            learner_state, replay_state, key, beta
        )

    def learn_run(learner_state, replay_state, key, beta, hp):
        learner = hyper.learner(p.config, p.network, p.data_axis, hp)
        return learn_step(learner, p.run_buffer(hp))(learner_state, replay_state, key, beta)

    def learn(learner_state, replay_state, key, beta, hparams):
        beta_axis = 0 if jnp.ndim(beta) else None
        return jax.vmap(learn_run, in_axes=(0, replay_axes, 0, beta_axis, 0), out_axes=out_axes)(
            learner_state, replay_state, key, beta, hparams
        )

    return learn


def _actor_epsilon(p: _Parts, state: TrainState):
    """(epsilon, per run): the schedule's epsilon; Ape-X: this data shard's slice of
    the per-env values; a sweep tracing the schedule: one value per run ``[S]``."""
    linear = p.config.exploration == "linear"
    if linear and hyper.traces(state.hparams, "epsilon_start"):
        return jax.vmap(functools.partial(hyper.epsilon, env_steps=state.env_steps))(
            state.hparams
        ), True
    eps = p.schedules.epsilon(state.env_steps)
    if linear or p.data_axis is None:
        return eps, False
    start = jax.lax.axis_index(p.data_axis) * p.local_envs
    return jax.lax.dynamic_slice_in_dim(eps, start, p.local_envs), False


def _make_iteration(p: _Parts, collect):
    """``iteration(state) -> (state, episode stats, summed update metrics)``."""
    config = p.config
    sync, updates = config.actor_sync_period, config.updates_per_iteration
    prioritized = config.prioritized
    batched_learn = _make_learn(p)

    def iteration(state: TrainState):
        acting = state.learner.params if sync == 1 else state.actor_params
        epsilon, per_run = _actor_epsilon(p, state)
        state, stats = collect(state, acting, epsilon, per_run_eps=per_run)
        beta = p.schedules.beta(state.env_steps)
        if hyper.traces(state.hparams, "beta_start"):  # [S]
            beta = jax.vmap(functools.partial(hyper.beta, config, env_steps=state.env_steps))(
                state.hparams
            )

        # Only prioritized replay changes in the updates (priorities); a uniform
        # buffer stays out of the carry so it is never copied.
        def update(carry, _):
            learner_state, priorities, key = carry
            replay_state = priorities if prioritized else state.replay
            learner_state, replay_state, key, metrics = batched_learn(
                learner_state, replay_state, key, beta, state.hparams
            )
            return (learner_state, replay_state if prioritized else None, key), metrics

        carry = (state.learner, state.replay if prioritized else None, state.key)
        if updates == 1:
            (learner_state, priorities, key), metrics = update(carry, None)
        else:
            (learner_state, priorities, key), metrics = jax.lax.scan(
                update, carry, None, length=updates
            )
            metrics = jax.tree.map(lambda m: m.sum(0), metrics)
        state = state._replace(learner=learner_state, key=key)
        if prioritized:
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

    return iteration


def _make_prefill(p: _Parts, collect):
    config = p.config

    def prefill(state: TrainState):
        if config.n_step > 1:  # fill the n-step window: these steps make no transition yet
            for _ in range(config.n_step - 1):
                state, _ = collect(state, None, 1.0, num_steps=1, add=False)

        def body(state, _):
            return collect(state, None, 1.0)

        state, stats = jax.lax.scan(body, state, None, length=config.prefill_iterations)
        return state, jax.tree.map(lambda x: x.sum(0), stats)

    return prefill


def _make_chunk(p: _Parts, iteration):
    """``chunk(state, num_iterations) -> (state, ChunkMetrics)`` over all local seeds."""
    config = p.config
    steps_per_iteration = config.num_envs * config.rollout_steps
    # jit-wrapped so that the shapes taken below and the loop body share one
    # trace (an inner jit is inlined by XLA).
    traced_iteration = jax.jit(iteration)

    def chunk(state: TrainState, num_iterations):
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

    return chunk


def _make_evaluate(p: _Parts):
    evaluate_one = actor_lib.make_evaluator(
        p.env, p.network, p.config.eval_episodes, p.config.eval_epsilon
    )

    def evaluate(state: TrainState):
        """Greedy (``eval_epsilon``) returns [S, eval_episodes] of the online params."""
        keys = jax.vmap(lambda k: jax.random.fold_in(k, state.env_steps))(
            jax.vmap(lambda k: jax.random.fold_in(k, 1))(state.key)
        )
        return jax.vmap(evaluate_one)(state.learner.params, keys)

    return evaluate
