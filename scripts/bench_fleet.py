"""The Ray actor fleet next to actor threads, in one run (``bench_host.py --actors=ray``).

  python scripts/bench_host.py --flagfile=experiments/configs/cartpole_gymnasium.flags \
      --actors=ray --num_actor_processes=2 [--seconds=20] [--out=bench_fleet.json]

For ``N = --num_actor_processes`` and the same environments and seed:

* **actors alone, greedy**: the fleet's ``N`` processes (and, beside them, ``N``
  actor threads) act with one published version while this process only takes
  their batches: env steps/s in all and per process, the CPU cores the actor
  processes use (from /proc) and their resident memory.
* **transport**: seconds per Ray request round trip (an empty request to an
  actor process), and per batch taken, over a run of requests.
* **learner alone**: the jitted ingest on pre-made batches (``bench_host``).
* **pipeline**: ``run_chunk`` with the fleet and with ``N`` threads; the ratio.
"""

from __future__ import annotations

import os
import time

import numpy as np

from dqnx.host_actors import HostActorProgram


def _proc_cpu_s(pids) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def actors_alone(host, config, seconds: float, name: str) -> dict:
    """Greedy acting with one version: no learning starts, parameters never change."""
    program = HostActorProgram(config.replace(learning_starts=0, actor_sync_period=10**9))
    try:
        program._start_actors()
        program._publish()  # version 0, the only one
        pids = getattr(program.actors, "pids", None)
        c0 = _proc_cpu_s(pids) if pids else None
        t0 = time.perf_counter()
        sps = host.drain(program, seconds)
        out = {f"{name}_actors_sps": sps, f"{name}_actors_sps_per_actor": sps / program.num_actors}
        if pids:
            dt = time.perf_counter() - t0
            out["ray_actor_cores"] = (_proc_cpu_s(pids) - c0) / dt
            out["ray_actor_rss_mb"] = float(np.mean([_rss_mb(p) for p in pids]))
            ray, handle = program.actors.ray, program.actors.handles[0]
            ray.get(handle.pid.remote())
            t1, n = time.perf_counter(), 200
            for _ in range(n):
                ray.get(handle.pid.remote())
            out["ray_request_round_trip_ms"] = (time.perf_counter() - t1) / n * 1e3
    finally:
        program.close()
    return out


def main(host, config, seconds: float, info: dict) -> dict:
    """``host``: the ``bench_host`` module (its parts, run here for both backends)."""
    n = config.num_actor_processes
    threads = config.replace(actors="threads", actor_threads=n, actor_devices=1)
    print(
        f"# {config.env_name}: {n} Ray actor processes vs {n} actor threads, "
        f"{config.num_envs // n} envs each, {config.rollout_steps} steps per request; "
        f"{info['cores']} cores, load average {info['load_avg_1m']:.1f} at start"
    )
    result = {"config": config.to_dict(), "machine": info}
    parts = (
        lambda: actors_alone(host, config, seconds, "ray"),
        lambda: actors_alone(host, threads, seconds, "threads"),
        lambda: host.learner_alone(threads, seconds),
        lambda: host.pipeline(config, seconds, name="ray_pipeline"),
        lambda: host.pipeline(threads, seconds, name="threads_pipeline"),
    )
    for part in parts:
        out = part()
        result.update(out)
        print("  ".join(f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in out.items()), flush=True)  # fmt: skip
    result["ray_over_threads"] = result["ray_pipeline_sps"] / result["threads_pipeline_sps"]
    items = (config.num_envs // n) * config.rollout_steps  # one actor's batch
    per_batch = 1e3 * items / result["ray_actors_sps_per_actor"]
    result["ray_ms_per_batch"] = per_batch
    print(
        f"pipeline: Ray fleet {result['ray_pipeline_sps']:,.0f} env steps/s = "
        f"{result['ray_over_threads']:.2f}x the threads' {result['threads_pipeline_sps']:,.0f}; "
        f"a request costs {result['ray_request_round_trip_ms']:.2f} ms round trip against "
        f"{per_batch:.1f} ms of acting per batch; actor processes use "
        f"{result['ray_actor_cores']:.2f} cores and {result['ray_actor_rss_mb']:.0f} MB each"
    )
    return result
