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
from dqnx import envs, exploration, networks, parallel, replay
from dqnx import learner as learner_lib
from dqnx.config import Config
from dqnx.exploration import epsilon_greedy
from dqnx.types import ActorState, EpisodeStats, LearnerState, Transition


class TrainState(NamedTuple):
    """Everything a run carries between chunks (per-seed leaves lead with [S])."""

    env_steps: jax.Array  # int32 []: env steps per seed so far (all seeds in lockstep)
    actor: ActorState  # [S]
    learner: LearnerState  # [S]
    replay: replay.ReplayState  # data [S, capacity, ...]; pos, size shared
    key: jax.Array  # [S] keys for replay sampling


# vmap axes of a TrainState over seeds.
SEED_AXES = TrainState(env_steps=None, actor=0, learner=0, replay=replay.REPLAY_SEED_AXES, key=0)


def state_specs() -> TrainState:
    """How a TrainState lies on the (seeds, data) mesh: seeds split every per-seed
    leaf; environments and replay slots are further split over data; parameters,
    keys and counters are the same on every data shard."""
    from jax.sharding import PartitionSpec as P

    seeds, seeds_data, shared = P(parallel.SEEDS), P(parallel.SEEDS, parallel.DATA), P()
    return TrainState(
        env_steps=shared,
        actor=ActorState(obs=seeds_data, env_state=seeds_data, key=seeds),
        learner=seeds,
        replay=replay.ReplayState(data=seeds_data, pos=shared, size=shared),
        key=seeds,
    )


class ChunkMetrics(NamedTuple):
    """Per-seed sums over one chunk (leaves [S])."""

    episodes: EpisodeStats
    loss_sum: jax.Array
    q_sum: jax.Array
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
    make_chunk: Callable[[int], Callable[[TrainState], tuple[TrainState, ChunkMetrics]]]
    evaluate: Callable[[TrainState], jax.Array]

    @property
    def chunk(self):
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
      ``prefill(state)``, ``make_chunk(n)(state) -> (state, ChunkMetrics)`` and
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
    actor = actor_lib.make_actor(env, network, config.num_envs // layout.data, data_axis)
    buffer = replay.uniform_replay(
        config.buffer_size // layout.data,
        add_batch_size=config.num_envs // layout.data * config.rollout_steps,
    )
    batch_size = config.batch_size // layout.data
    epsilon_at = exploration.linear_schedule(
        config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps
    )
    steps_per_iteration = config.num_envs * config.rollout_steps
    example_obs = jnp.zeros((1, *spec.obs_shape), spec.obs_dtype)

    def init_one(key):
        k_actor, k_net, k_train = jax.random.split(key, 3)
        actor_state = actor.init(k_actor)
        learner_state = learner.init(k_net, example_obs)
        item = Transition(
            obs=example_obs[0],
            action=jnp.int32(0),
            reward=jnp.float32(0),
            next_obs=example_obs[0],
            terminated=jnp.bool_(False),
        )
        return actor_state, learner_state, buffer.init(item), k_train

    def init(keys=None) -> TrainState:
        keys = seed_keys(config) if keys is None else keys
        actor_state, learner_state, replay_state, keys = jax.vmap(
            init_one, out_axes=(0, 0, replay.REPLAY_SEED_AXES, 0)
        )(keys)
        return TrainState(jnp.int32(0), actor_state, learner_state, replay_state, keys)

    batched_add = jax.vmap(
        buffer.add, in_axes=(replay.REPLAY_SEED_AXES, 0), out_axes=replay.REPLAY_SEED_AXES
    )

    def collect(state: TrainState, params, epsilon):
        rollout = functools.partial(actor.rollout, num_steps=config.rollout_steps)
        actor_state, transitions, stats = jax.vmap(rollout, in_axes=(0, 0, None))(
            params, state.actor, epsilon
        )
        if data_axis is not None:
            stats = jax.lax.psum(stats, data_axis)
        state = state._replace(
            env_steps=state.env_steps + steps_per_iteration,
            actor=actor_state,
            replay=batched_add(state.replay, transitions),
        )
        return state, stats

    def learn_one(learner_state, replay_state, key):
        key, k_sample = jax.random.split(key)
        k_sample = parallel.shard_key(k_sample, data_axis)
        batch, _ = buffer.sample(replay_state, k_sample, batch_size)
        learner_state, metrics = learner.update(learner_state, batch)
        return learner_state, key, metrics

    batched_learn = jax.vmap(learn_one, in_axes=(0, replay.REPLAY_SEED_AXES, 0))

    def iteration(state: TrainState):
        epsilon = epsilon_at(state.env_steps)
        state, stats = collect(state, state.learner.params, epsilon)

        def update(carry, _):
            learner_state, key = carry
            learner_state, key, metrics = batched_learn(learner_state, state.replay, key)
            return (learner_state, key), metrics

        if config.updates_per_iteration == 1:
            (learner_state, key), metrics = update((state.learner, state.key), None)
        else:
            (learner_state, key), metrics = jax.lax.scan(
                update, (state.learner, state.key), None, length=config.updates_per_iteration
            )
            metrics = jax.tree.map(lambda m: m.sum(0), metrics)
        state = state._replace(learner=learner_state, key=key)
        return state, stats, metrics

    def prefill(state: TrainState):
        def body(state, _):
            state, stats = collect(state, None, 1.0)
            return state, stats

        state, stats = jax.lax.scan(body, state, None, length=config.prefill_iterations)
        return state, jax.tree.map(lambda x: x.sum(0), stats)

    def make_chunk(num_iterations: int):
        def chunk(state: TrainState):
            def body(state, _):
                state, stats, metrics = iteration(state)
                return state, (stats, metrics)

            state, (stats, metrics) = jax.lax.scan(body, state, None, length=num_iterations)
            total = jax.tree.map(lambda x: x.sum(0), (stats, metrics))
            return state, ChunkMetrics(
                episodes=total[0],
                loss_sum=total[1]["loss"],
                q_sum=total[1]["q_mean"],
                num_updates=jnp.int32(num_iterations * config.updates_per_iteration),
            )

        return chunk

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
            action = epsilon_greedy(k_act, network.apply(params, obs), config.eval_epsilon)
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
        config, env, network, actor, learner, buffer, layout, init, prefill, make_chunk, evaluate
    )


# ---------------------------------------------------------------------------
# The host loop (the shell): compile, run chunks, log, evaluate, summarize.
# ---------------------------------------------------------------------------


def params_digests(params) -> list[str]:
    """One SHA-256 hex digest per seed of the online parameters (leaves [S, ...])."""
    import hashlib

    import numpy as np

    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]
    digests = []
    for s in range(leaves[0].shape[0]):
        h = hashlib.sha256()
        for leaf in leaves:
            h.update(np.ascontiguousarray(leaf[s]).tobytes())
        digests.append(h.hexdigest())
    return digests


def default_workdir(name: str) -> str:
    import time

    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _compile(jitted, *args):
    """Ahead-of-time compiles ``jitted`` for ``args``; returns (compiled, seconds)."""
    import time

    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


class Compiled(NamedTuple):
    """The compiled programs of a run, placed on its devices."""

    init: Any
    initial_state: TrainState
    prefill: Any
    chunk: Any
    evaluate: Any
    make_chunk: Callable[[int], Any]  # compiles a chunk of another length
    compile_s: float
    layout: parallel.Layout


def compile_train(fns: TrainFns) -> Compiled:
    """Compiles ``fns`` for its ``layout`` (seeds x data devices), ahead of time."""
    from jax.sharding import PartitionSpec as P

    mesh = parallel.make_mesh(fns.layout)
    specs = state_specs()
    per_seed = P(parallel.SEEDS)
    metric_specs = ChunkMetrics(per_seed, per_seed, per_seed, P())

    keys = jax.device_put(seed_keys(fns.config), parallel.shardings(mesh, per_seed))
    init = parallel.spmd(fns.init, mesh, (per_seed,), specs)
    init_c, t_init = _compile(jax.jit(init, out_shardings=parallel.shardings(mesh, specs)), keys)
    # Lowering on the initial state gives every later program its shardings.
    state = init_c(keys)

    def build(fn, out_specs, donate=True):
        wrapped = parallel.spmd(fn, mesh, (specs,), out_specs)
        return _compile(jax.jit(wrapped, donate_argnums=(0,) if donate else ()), state)

    prefill_c, t_prefill = build(fns.prefill, (specs, per_seed))
    chunk_c, t_chunk = build(fns.chunk, (specs, metric_specs))
    eval_c, t_eval = build(fns.evaluate, per_seed, donate=False)
    return Compiled(
        init=init_c,
        initial_state=state,
        prefill=prefill_c,
        chunk=chunk_c,
        evaluate=eval_c,
        make_chunk=lambda n: build(fns.make_chunk(n), (specs, metric_specs)),
        compile_s=t_init + t_prefill + t_chunk + t_eval,
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
    if num_devices == 0 and jax.default_backend() == "cpu":
        num_devices = jax.local_device_count()
        seeds = math.gcd(config.num_seeds, num_devices)
        return parallel.Layout(seeds, 1)
    return parallel.choose_layout(
        config.num_seeds, num_devices, config.num_envs, config.batch_size, config.buffer_size
    )


def run(config: Config, workdir: str | None = None, *, quiet: bool = False) -> dict:
    """Trains as ``config`` says and writes the command-line contract's files.

    Writes ``config.json``, ``metrics.jsonl`` (one object per chunk) and
    ``summary.json`` to ``workdir``. Returns the summary dict.
    """
    import time
    from pathlib import Path

    import numpy as np

    from dqnx import logging as dlog

    config = config.validate()
    workdir = Path(workdir or config.workdir or default_workdir(config.env_name))
    config = config.replace(workdir=str(workdir))
    say = (lambda _: None) if quiet else dlog.print_line

    t_start = time.perf_counter()
    fns = make_train(config, layout=choose_layout(config))
    programs = compile_train(fns)
    compile_s = programs.compile_s
    state = programs.initial_state
    prefill_c, chunk_c, eval_c = programs.prefill, programs.chunk, programs.evaluate

    workdir.mkdir(parents=True, exist_ok=True)
    dlog.write_json(workdir / "config.json", config.to_dict())
    writer = dlog.JsonlWriter(workdir / "metrics.jsonl")
    say(
        f"dqnx: {config.env_name}, {config.num_seeds} seed(s), {config.total_steps:,d} "
        f"env steps per seed on {programs.layout.seeds}x{programs.layout.data} device(s) -> "
        f"{workdir} "
        f"(compiled in {compile_s:.1f}s)"
    )

    spi = config.steps_per_iteration
    seeds = config.num_seeds
    train_s = 0.0
    eval_total_s = 0.0
    last_eval = None

    t0 = time.perf_counter()
    state, _ = prefill_c(state)
    env_steps = int(jax.device_get(state.env_steps))
    train_s += time.perf_counter() - t0

    remaining = config.train_iterations
    chunk_iters = config.iterations_per_chunk
    tail_c = None
    try:
        while remaining > 0:
            n = min(chunk_iters, remaining)
            if n == chunk_iters:
                step_fn = chunk_c
            else:
                if tail_c is None:
                    tail_c, tail_s = programs.make_chunk(n)
                    compile_s += tail_s
                step_fn = tail_c
            t0 = time.perf_counter()
            state, m = step_fn(state)
            m = jax.device_get(m)
            dt = time.perf_counter() - t0
            train_s += dt
            remaining -= n
            prev_steps, env_steps = env_steps, env_steps + n * spi
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
            every = config.eval_every
            due = every and prev_steps // every < env_steps // every
            if due or remaining == 0:
                t_eval = time.perf_counter()
                returns = np.asarray(jax.device_get(eval_c(state)))
                eval_total_s += time.perf_counter() - t_eval
                last_eval = returns.mean(axis=1)
                record["eval_return"] = last_eval
            record["wall_s"] = time.perf_counter() - t_start
            writer.write(record)
            sps_avg = env_steps * seeds / max(train_s, 1e-9)
            eta = (config.total_steps - env_steps) * seeds / sps_avg
            say(dlog.console_line(record, config.total_steps, eta))
    finally:
        writer.close()

    summary = {
        "env": config.env_name,
        "num_seeds": seeds,
        "env_steps_per_seed": env_steps,
        "wall_s": time.perf_counter() - t_start,
        "compile_s": compile_s,
        "train_s": train_s,
        "eval_s": eval_total_s,
        "sps": env_steps * seeds / max(train_s, 1e-9),
        "eval_return_per_seed": last_eval,
        "eval_return_mean": float(np.mean(last_eval)),
        "params_digest": params_digests(state.learner.params),
    }
    dlog.write_json(workdir / "summary.json", summary)
    say(
        f"done: eval return {summary['eval_return_mean']:.2f} (mean of {seeds} seed(s)), "
        f"{summary['sps'] / 1e3:.1f}k env steps/s, wall {summary['wall_s']:.1f}s, "
        f"compile {compile_s:.1f}s"
    )
    return summary


def fns_epsilon(config: Config, env_steps: int) -> float:
    """The exploration rate the schedule gives at ``env_steps`` (host side)."""
    return float(
        exploration.linear_schedule(
            config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps
        )(env_steps)
    )
