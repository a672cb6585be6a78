"""The host-actor pipeline next to its parts and a synchronous loop, in one run.

  python scripts/bench_host.py --flagfile=experiments/configs/breakout_minatar_host.flags \
      [--seconds=20] [--out=bench_host.json]

With ``--actors=ray``: the fleet beside as many actor threads (``bench_fleet``).

For the config (``--env_name`` a host environment), on this machine's device
split (actor device(s) and learner device(s) as the run would use them):

* **actors alone, random**: the actor threads act uniformly at random; this
  thread only drains the queues. Env steps/s = transitions drained per second.
* **actors alone, greedy**: the same with published parameters (epsilon-greedy
  at the config's final epsilon: the Q-network runs every step).
* **bare loop**: what the actors do with nothing around it, as a reference: the
  same threads, environments and jitted Q-network, epsilon-greedy in numpy, each
  rollout's transitions stacked onto a bounded queue (n-step 1, no schedule).
* **learner alone**: the jitted ingest (add a batch + ``updates_per_iteration``
  updates) on pre-made device batches, no actors running. Env steps/s = the
  transitions per second it consumes at the config's replay ratio.
* **pipeline**: prefill, then ``HostActorProgram.run_chunk`` as training runs
  it; env steps/s, the time the learner waited on the queue, queue occupancy
  and parameter staleness; with the fixed schedule (the default: reproducible)
  and the free-running one (``--actor_schedule=async``).
* **synchronous loop**: one thread steps all ``num_envs`` environments, acts
  greedily, adds the transitions and makes the updates they pay for, in turn
  (as CleanRL's ``dqn_jax.py`` does), n-step 1.

With ``--frame_replay`` (Atari) it also prints emulator frames/s (agent steps x
the frame skip, 4 for ``ale:`` and ``envpool:``), the learner's updates/s, and the replay's bytes
per transition measured from the device buffers (every array of the replay
state, over its capacity in transitions), with what ``--buffer_size=1000000``
would take; the synchronous loop (plain ``Transition`` items) is skipped.

It prints the actors' share of the bare loop, the fixed schedule's share of the
free-running one, the pipeline's share of min(actors greedy, learner) (the rate if
acting and learning overlapped perfectly) and of the synchronous loop, and the
bound (a + l) / max(a, l) on the speed-up of overlapping over taking turns, from
the parts' seconds per env step a and l.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from dqnx import parallel

parallel.use_all_cpu_cores()

import benchlib  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from dqnx import builder, checks  # noqa: E402
from dqnx import flags as dqnx_flags  # noqa: E402
from dqnx.host_actors import HostActorProgram  # noqa: E402
from dqnx.types import Transition  # noqa: E402

flags.DEFINE_float("seconds", 20.0, "Seconds each part is timed (after its warm-up).")
flags.DEFINE_string("out", "", "Optional JSON output path.")


def drain(program: HostActorProgram, seconds: float) -> float:
    """Env steps/s the actors deliver while this thread only empties their queues
    (no joining or device transfer: that is the learner's work)."""

    def take():
        for actor in range(program.num_actors):
            program._take(actor)

    deadline = time.perf_counter() + 1.0  # warm-up
    while time.perf_counter() < deadline:
        take()
    count, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        take()
        count += program.iteration_items
    dt = time.perf_counter() - t0
    program.cores_used = (time.process_time() - c0) / dt  # CPU seconds per second
    return count / dt


def actors_alone(config, seconds: float) -> dict:
    # Free-running: nothing publishes new versions while only the queues are drained.
    program = HostActorProgram(config.replace(actor_schedule="async"))
    try:
        program._start_actors()
        random_sps = drain(program, seconds)
        program._publish()
        greedy_sps = drain(program, seconds)
    finally:
        program.close()
    return {"actors_random_sps": random_sps, "actors_greedy_sps": greedy_sps,
            "actors_greedy_cores": program.cores_used}  # fmt: skip


def bare_loop(config, seconds: float) -> dict:
    """The actors' work and nothing else: per thread, its environments, the jitted
    greedy policy, epsilon-greedy in numpy, transitions stacked per rollout onto a
    bounded queue that this thread drains."""
    program = HostActorProgram(config)
    network, device = program.network, program.actor_devices[0]
    greedy = jax.jit(lambda p, o: jnp.argmax(network.apply(p, o), axis=-1))
    params = jax.device_put(jax.tree.map(jnp.copy, program.state.learner.params), device)
    threads = config.actor_threads * len(program.actor_devices) * program.processes
    out: queue.Queue = queue.Queue(maxsize=config.queue_size)
    stop = threading.Event()

    def loop(index):
        env = program._make_env(program.envs_per_thread, config.seed + index)
        rng, n = np.random.default_rng(index), env.num_envs
        obs = env.reset()
        try:
            while not stop.is_set():
                steps = []
                for _ in range(config.rollout_steps):
                    actions = rng.integers(0, env.spec.num_actions, n, dtype=np.int32)
                    act = np.asarray(greedy(params, obs), np.int32)
                    actions = np.where(rng.random(n) < config.epsilon_end, actions, act)
                    step = env.step(actions)
                    steps.append(Transition(obs, actions, step.reward, step.next_obs,
                                            step.terminated))  # fmt: skip
                    obs = step.obs
                batch = jax.tree.map(lambda *x: np.concatenate(x), *steps)
                while not stop.is_set():
                    try:
                        out.put(batch, timeout=0.05)
                        break
                    except queue.Full:
                        pass
        finally:
            env.close()

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        deadline = time.perf_counter() + 1.0  # warm-up
        while time.perf_counter() < deadline:
            out.get()
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            count += len(out.get().action)
        sps = count / (time.perf_counter() - t0)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=5)
        program.close()
    return {"bare_loop_sps": sps}


def learner_alone(config, seconds: float) -> dict:
    program = HostActorProgram(config.replace(actor_schedule="async"))
    try:
        program._start_actors()
        stats = {k: 0 for k in ("queue_sum", "queue_reads", "wait_s", "episodes", "return_sum")}
        stats.update(staleness_sum=0, staleness_max=0, staleness_n=0)
        batches = [program._next_items(stats) for _ in range(8)]
    finally:
        program.close()
    state = program.state
    # The replay's device bytes, before the donated ingests below consume the arrays.
    replay_bytes = int(sum(x.nbytes for x in jax.tree.leaves(state.replay)))
    for b in batches:  # fill replay past one batch
        state = program._add(state, b)
    beta = np.float32(config.importance_exponent)
    state, m = program._ingest(state, batches[0], beta)
    jax.block_until_ready(m)
    count, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for b in batches:
            state, m = program._ingest(state, b, beta)
        jax.block_until_ready(m)
        count += len(batches)
    dt = time.perf_counter() - t0
    return {
        "learner_cores": (time.process_time() - c0) / dt,
        "learner_ingests_per_s": count / dt,
        "learner_updates_per_s": count * config.updates_per_iteration / dt,
        "learner_sps": count * program.iteration_items / dt,
        "replay_bytes": replay_bytes,
        "replay_transitions": program.buffer_transitions,
    }


def pipeline(config, seconds: float, name: str = "pipeline") -> dict:
    program = HostActorProgram(config)
    try:
        program.prefill()
        program.run_chunk(max(1, program.schedule.iterations_per_chunk // 4))  # warm-up
        n = max(1, program.schedule.iterations_per_chunk // 4)
        steps, waits, reports, t0 = 0, 0.0, [], time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t1 = time.perf_counter()
            report = program.run_chunk(n)
            reports.append(report.extra)
            waits += report.extra["learner_wait_frac"] * (time.perf_counter() - t1)
            steps += n * program.iteration_items
        dt = time.perf_counter() - t0
    finally:
        program.close()
    mean = lambda k: float(np.mean([r[k] for r in reports]))  # noqa: E731
    return {
        f"{name}_sps": steps / dt,
        f"{name}_learner_wait_frac": waits / dt,
        f"{name}_queue_mean": mean("queue_mean"),
        f"{name}_staleness_mean": mean("staleness_mean"),
        f"{name}_staleness_max": max(r["staleness_max"] for r in reports),
    }


def pipeline_async(config, seconds: float) -> dict:
    return pipeline(config.replace(actor_schedule="async"), seconds, name="pipeline_async")


def atari_figures(config, result: dict) -> dict:
    """Frames/s of the measured rates, and the frame replay's bytes per transition
    (``learner_alone`` measured the device buffers)."""
    skip = 4 if config.env_name.startswith(("ale:", "envpool:")) else 1  # Atari: frame skip 4
    per = result["replay_bytes"] / result["replay_transitions"]
    return {
        "frame_skip": skip,
        "actors_random_frames_per_s": result["actors_random_sps"] * skip,
        "actors_greedy_frames_per_s": result["actors_greedy_sps"] * skip,
        "pipeline_frames_per_s": result["pipeline_sps"] * skip,
        "replay_bytes_per_transition": per,
        "replay_1m_gb": per * 1e6 / 1e9,
    }


def synchronous(config, seconds: float) -> dict:
    """One thread: act greedily, step, add, update, in turn (n-step 1)."""
    program = HostActorProgram(config.replace(n_step=1, actor_threads=1, num_envs=config.num_envs))
    env = program._make_env(config.num_envs, config.seed)
    greedy = jax.jit(lambda p, o: jnp.argmax(program.network.apply(p, o), axis=-1))
    params = program.state.learner.params
    device = next(iter(jax.tree.leaves(params)[0].devices()))  # acting where learning
    obs = env.reset(seed=config.seed)
    state, beta = program.state, np.float32(config.importance_exponent)
    rng = np.random.default_rng(0)
    steps_per_add = program.iteration_items // config.num_envs
    count, t0, warm = 0, time.perf_counter(), 20
    try:
        while time.perf_counter() - t0 < seconds or warm > 0:
            chunks = []
            for _ in range(steps_per_add):
                actions = np.asarray(greedy(params, jax.device_put(obs, device)), np.int32)
                explore = rng.random(config.num_envs) < config.epsilon_end
                actions = np.where(explore, rng.integers(0, env.spec.num_actions), actions)
                step = env.step(actions.astype(np.int32))
                chunks.append(Transition(obs, actions, step.reward, step.next_obs, step.terminated))
                obs = step.obs
            items = jax.tree.map(lambda *x: np.concatenate(x), *chunks)
            state, m = program._ingest(
                state, jax.device_put(items, program.programs.items_sharding), beta
            )
            params = state.learner.params
            if warm > 0:
                warm -= 1
                if warm == 0:
                    jax.block_until_ready(m)
                    count, t0 = 0, time.perf_counter()
                continue
            count += program.iteration_items
        jax.block_until_ready(m)
    finally:
        env.close()
    return {"synchronous_sps": count / (time.perf_counter() - t0)}


def main(argv):
    dqnx_flags.define_flags()
    flags.FLAGS(argv)
    config = checks.validate(dqnx_flags.config_from_flags())
    if not builder.uses_host_actors(config):
        sys.exit(f"error: --env_name={config.env_name} is not a host environment (LIB:ID)")
    seconds = flags.FLAGS.seconds
    info = benchlib.machine_info()
    print(
        f"# {config.env_name} on {info['backend']}: {info['cpu']} ({info['cores']} cores, "
        f"{len(info['devices'])} device(s)), jax {info['jax']}, load average "
        f"{info['load_avg_1m']:.1f} at start; {config.num_envs} envs, {config.actor_threads} "
        f"actor thread(s) per actor device, replay ratio {config.replay_ratio:g}"
    )
    if config.actors == "ray":
        import bench_fleet

        result = bench_fleet.main(sys.modules[__name__], config, seconds, info)
        benchlib.write_json(flags.FLAGS.out, result)
        return result
    result = {"config": config.to_dict(), "machine": info}
    parts = (actors_alone, bare_loop, learner_alone, pipeline, pipeline_async)
    if not config.frame_replay:
        parts += (synchronous,)
    for part in parts:
        out = part(config, seconds)
        result.update(out)
        print("  ".join(f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in out.items()), flush=True)  # fmt: skip
    actors, learner = result["actors_greedy_sps"], result["learner_sps"]
    a, b = 1 / actors, 1 / learner  # seconds per env step of each part alone
    result["overlap_limit_sps"] = min(actors, learner)
    result["pipeline_share_of_limit"] = result["pipeline_sps"] / min(actors, learner)
    result["overlap_bound"] = (a + b) / max(a, b)
    line = (
        f"pipeline {result['pipeline_sps']:,.0f} env steps/s = "
        f"{100 * result['pipeline_share_of_limit']:.0f}% of min(actors {actors:,.0f}, "
        f"learner {learner:,.0f}); "
    )
    if "synchronous_sps" in result:
        result["pipeline_over_synchronous"] = result["pipeline_sps"] / result["synchronous_sps"]
        line += (f"{result['pipeline_over_synchronous']:.2f}x the synchronous loop "
                 f"({result['synchronous_sps']:,.0f}); ")  # fmt: skip
    print(line + f"overlap bound (a + l) / max(a, l) = {result['overlap_bound']:.2f}")
    # Each part alone may use every core: the pipeline, which runs both on the same
    # cores, is bound by their CPU seconds per env step together.
    cores = info["cores"]
    per_step = result["actors_greedy_cores"] / actors + result["learner_cores"] / learner
    result["cpu_bound_sps"] = cores / per_step
    result["pipeline_share_of_cpu_bound"] = result["pipeline_sps"] / result["cpu_bound_sps"]
    print(
        f"CPU: actors alone use {result['actors_greedy_cores']:.2f} cores, the learner "
        f"{result['learner_cores']:.2f}; {cores} cores feed both at most "
        f"{result['cpu_bound_sps']:,.0f} env steps/s: the pipeline is "
        f"{100 * result['pipeline_share_of_cpu_bound']:.0f}% of that"
    )
    result["actors_share_of_bare_loop"] = actors / result["bare_loop_sps"]
    result["fixed_over_async"] = result["pipeline_sps"] / result["pipeline_async_sps"]
    print(
        f"actors greedy = {100 * result['actors_share_of_bare_loop']:.0f}% of the bare loop "
        f"({result['bare_loop_sps']:,.0f}); fixed schedule = "
        f"{100 * result['fixed_over_async']:.0f}% of the free-running one "
        f"({result['pipeline_async_sps']:,.0f})"
    )
    if config.frame_replay:
        result.update(atari_figures(config, result))
        print(
            f"frames/s (x{result['frame_skip']}): actors random "
            f"{result['actors_random_frames_per_s']:,.0f}, greedy "
            f"{result['actors_greedy_frames_per_s']:,.0f}, pipeline "
            f"{result['pipeline_frames_per_s']:,.0f}; learner "
            f"{result['learner_updates_per_s']:.2f} updates/s at batch {config.batch_size}; "
            f"replay {result['replay_bytes']:,} bytes for "
            f"{result['replay_transitions']:,} transitions = "
            f"{result['replay_bytes_per_transition']:,.1f} bytes each (1M: "
            f"{result['replay_1m_gb']:.2f} GB)"
        )
    benchlib.write_json(flags.FLAGS.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv)
