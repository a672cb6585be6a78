"""Where the time of a training iteration goes: the full loop next to its parts.

  python scripts/bench.py --flagfile=experiments/configs/cartpole_reference.flags \
      [--num_seeds=S] [--iterations=2000] [--chunks=3] [--out=bench.json]

Every dqnx flag is accepted (any flag overrides the flagfile). In one process:

* **full loop**: ``compiled.compile_train`` (ahead-of-time lower + compile of init,
  prefill and a chunk of ``--iterations`` iterations, timed together as ``run``
  reports it; evaluate then compiles on a worker thread, waited for and timed
  apart), prefill, one warm-up chunk, then ``--chunks`` timed chunks (median).
  The chunk is ``fns.make_chunk(--iterations)``; a device runs its seeds in
  groups (``--seed_group_size``), one group after another.
* **parts in isolation**, each its own jitted ``lax.scan`` over ``--iterations``
  iterations, vmapped over seeds as in ``dqnx.compiled`` and run with the same
  (seeds x data) device layout as the full loop (``shard_map``), on one seed
  group per device (times multiplied by the number of groups):
  (a) actor rollout with the current parameters (env steps *and* the
  Q-network forward pass that picks the actions), (a') the same with uniformly
  random actions (no network), (b) replay add + ``updates_per_iteration``
  samples, (c) ``updates_per_iteration`` learner updates, cycling through 4
  batches sampled before the loop (a batch that never changed would let XLA
  hoist the work that depends on it alone out of the loop). Outputs a part
  does not otherwise need (sampled batches, transitions) are summed into a
  per-seed checksum so XLA cannot drop their computation.
* **overhead** = full-loop time per iteration / (a + b + c).
* **matmul GFLOP/s**: a jitted ``--matmul_size`` squared float32 matmul on one
  device (XLA's intra-op threads may use every core), median of
  ``--matmul_repeats`` calls spread over the same rounds as the timed chunks
  (each round: one chunk of every program, then a few matmuls), so that a
  busy spell of the machine slows the learner and its yardstick alike; and the
  same matmul in a subprocess pinned to one core, the ceiling of one XLA CPU
  device (each runs on one core).
* **learner GFLOP/s**: FLOPs per update from XLA's cost analysis of one seed's
  ``learner.update``, next to a hand count from the layer shapes, times updates/s.

A host environment (``--env_name=LIB:ID``: ``ale:pong``, ``minatar:breakout``) has
no compiled loop: for it this times the learner alone next to the same matmul
yardstick (``scripts/bench_learner.py``; ``--iterations`` iterations of
``updates_per_iteration`` updates a scan), e.g. the Atari learner at each conv_impl:

  python scripts/bench.py --flagfile=experiments/configs/atari_dqn.flags \
      --iterations=25 --chunks=3 --conv_impl=xla   # then --conv_impl=patches
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time

from dqnx import parallel

parallel.use_all_cpu_cores()

import bench_parts  # noqa: E402
import benchlib  # noqa: E402
import jax  # noqa: E402
from absl import flags  # noqa: E402

from dqnx import builder, checks, compiled, xla  # noqa: E402
from dqnx import flags as dqnx_flags  # noqa: E402

flags.DEFINE_integer("iterations", 2000, "Iterations per timed chunk (full loop and parts).")
flags.DEFINE_integer("chunks", 3, "Timed chunks per program (after one warm-up chunk).")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matmul.")
flags.DEFINE_integer(
    "matmul_repeats", 10, "Timed matmul calls, spread evenly over the --chunks rounds."
)
flags.DEFINE_string("out", "", "Optional JSON output path.")


# ---------------------------------------------------------------------------
# FLOPs of one learner update
# ---------------------------------------------------------------------------


def hand_flops(params, obs_shape, batch_size, double_q) -> dict:
    """Multiply-adds of the dense/conv layers from the parameter shapes.

    A 2-D kernel [in, out] costs in*out multiply-adds per example; a 4-D (conv)
    kernel [kh, kw, cin, cout] costs kh*kw*cin*cout per output position, with a
    VALID stride-1 convolution over the observation (as ``MinAtarCNN``). One
    update = forward on s + target forward on s' (+ online forward on s' for
    Double DQN) + backward (2x forward, less the first layer's input gradient,
    which nothing needs). One forward per example: IQN's forwards at several
    fractions and Munchausen's extra target pass are not counted.
    """
    macs, first = 0, None
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        if not any(k in name for k in ("kernel", "mu_w", "sigma_w")):  # noisy: two matmuls
            continue
        if x.ndim == 2:
            m = x.shape[0] * x.shape[1]
        elif x.ndim == 4:
            kh, kw, cin, cout = x.shape
            m = kh * kw * cin * cout * (obs_shape[0] - kh + 1) * (obs_shape[1] - kw + 1)
        else:
            continue
        first = m if first is None else first
        macs += m
    forward = 2 * macs  # FLOPs per example
    passes = 2 + int(double_q)
    per_update = batch_size * (passes * forward + 2 * forward - 2 * (first or 0))
    return {"forward_per_example": forward, "per_update": per_update}


# ---------------------------------------------------------------------------


def bench(config, n: int, chunks: int, matmul_size: int, matmul_repeats: int) -> dict:
    spi = config.steps_per_iteration
    seeds = config.num_seeds
    # The chunk the full loop runs is fns.chunk: set its length via log_every.
    config = checks.validate(config.replace(log_every=n * spi))
    layout = builder.choose_layout(config)
    fns = compiled.make_train_fns(config, layout=layout)
    assert fns.config.iterations_per_chunk == n

    xla.clear_executables()  # compile seconds are measured: nothing compiled before is reused
    programs = compiled.compile_train(fns)
    evaluate_s = programs.evaluate.seconds()  # compiled in the background: wait for it
    state = programs.initial_state
    state, _ = programs.prefill(state)
    jax.block_until_ready(state)

    # The full loop runs a device's seeds group after group (compiled.in_seed_groups).
    # The parts do the same: each is timed on one group per device and its time
    # multiplied by the number of groups.
    local_seeds = seeds // layout.seeds
    group = fns.seed_group
    groups = local_seeds // group
    part_fns = fns
    part_state = state
    if groups > 1:
        part_config = config.replace(num_seeds=group * layout.seeds)
        part_fns = compiled.make_train_fns(part_config, layout=layout)
        part_programs = compiled.compile_train(part_fns)
        part_programs.evaluate.seconds()  # no background compile during the timings
        part_state, _ = part_programs.prefill(part_programs.initial_state)
        jax.block_until_ready(part_state)

    # Every program as (compiled, carry of the state it donates, what else it reads,
    # how its new carry goes back into the state). The parts are compiled for the
    # arrays as they lie on the run's mesh.
    mesh = parallel.make_mesh(layout)
    parts = bench_parts.make_parts(part_fns, n)
    getters = {
        "acting": (lambda s: s.actor, lambda s: (s.learner.params, s.env_steps), "actor"),
        "acting_random": (lambda s: s.actor, lambda s: (s.learner.params, s.env_steps), "actor"),
        "replay": (lambda s: (s.replay, s.key), lambda s: (), ("replay", "key")),
        "learner": (lambda s: s.learner, lambda s: (s.replay, s.key), "learner"),
    }
    stages = {"full": (programs.chunk, lambda s: s, lambda s: (), None)}
    compile_s = {}
    # The learner part compiles as the chunk does (xla.program_options: QR/IQN on CPU).
    learner_options = xla.program_options(quantile_loss=config.quantile_loss)
    for name, (carry, extra, field) in getters.items():
        options = learner_options if name == "learner" else None
        program, compile_s[name] = bench_parts.compile_part(
            parts[name], mesh, carry(part_state), extra(part_state), options
        )
        stages[name] = (program, carry, extra, field)
    states = {"full": state, "parts": part_state}

    def call(name, state):
        fn, carry, extra, field = stages[name]
        new, out = fn(carry(state), *extra(state))
        jax.block_until_ready((new, out))
        if field is None:
            return new
        if isinstance(field, tuple):
            return state._replace(**dict(zip(field, new, strict=True)))
        return state._replace(**{field: new})

    def which(name):  # the state a program reads and updates (donated, so never both)
        return "full" if name == "full" or groups == 1 else "parts"

    for name in stages:  # warm-up
        states[which(name)] = call(name, states[which(name)])
    matmul = benchlib.matmul_timer(matmul_size)
    matmul_per_round = -(-matmul_repeats // chunks)
    # Rounds of one call of each program and a few of the matmul, so that load
    # from elsewhere falls on all alike, the learner and its yardstick included.
    times = {name: [] for name in stages}
    matmul_times = []
    for _ in range(chunks):
        for name in stages:
            t0 = time.perf_counter()
            states[which(name)] = call(name, states[which(name)])
            seconds = time.perf_counter() - t0
            times[name].append(seconds if name == "full" else seconds * groups)
        matmul_times += [matmul() for _ in range(matmul_per_round)]
    state = states["full"]
    full_s = statistics.median(times["full"])
    results = {k: (statistics.median(times[k]), compile_s[k]) for k in getters}

    # FLOPs of one seed's update, without any device axis.
    learner = builder.make_learner(config, fns.network)
    one_seed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state.learner)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((config.batch_size, *x.shape[2:]), x.dtype),
        state.replay.data,
    )
    flops_xla = benchlib.xla_flops(learner.update, one_seed, batch)
    params = jax.tree.map(lambda x: x[0], jax.device_get(state.learner.params))
    hand = hand_flops(params, fns.env.spec.obs_shape, config.batch_size, config.double_q)

    def per_iter_us(seconds):
        return 1e6 * seconds / n

    def row(seconds, compile_s=None, name="full"):
        out = {
            "us_per_iteration": per_iter_us(seconds),
            "sps": n * spi * seeds / seconds,
            "chunk_s": seconds,
            "chunk_s_all": times[name],
        }
        if compile_s is not None:
            out["compile_s"] = compile_s
        return out

    parts_out = {k: row(*v, name=k) for k, v in results.items()}
    sum_parts = sum(parts_out[k]["us_per_iteration"] for k in ("acting", "replay", "learner"))
    full_us = per_iter_us(full_s)
    updates_per_iter = config.updates_per_iteration * seeds
    ups_learner = updates_per_iter / (parts_out["learner"]["us_per_iteration"] * 1e-6)
    ups_full = updates_per_iter / (full_us * 1e-6)
    nets = {
        "acting": "(a) env steps + Q forward (acting)",
        "acting_random": "(a') env steps, random actions",
        "replay": f"(b) replay add + {config.updates_per_iteration} sample(s)",
        "learner": f"(c) learner: {config.updates_per_iteration} update(s)",
    }
    notes = []
    if groups > 1:
        notes.append(
            f"the full loop runs each device's {local_seeds} seeds as {groups} groups of "
            f"{group} one after another; each part is timed on one group per device and "
            f"its time multiplied by {groups}"
        )
    if getattr(config, "n_step", 1) > 1:
        notes.append("the n-step window update of the full loop is in no part (it is overhead)")
    if getattr(config, "prioritized", False):
        notes.append("(b) also writes priorities for each sampled batch (|r| + 0.5 as |td|)")
    return {
        "notes": notes,
        "env": config.env_name,
        "num_seeds": seeds,
        "seed_group_size": group,
        "layout": list(layout),
        "iterations": n,
        "chunks": chunks,
        "steps_per_iteration": spi,
        "updates_per_iteration": config.updates_per_iteration,
        "batch_size": config.batch_size,
        "compile_s": programs.compile_s,
        "evaluate_compile_s": evaluate_s,
        "full_loop": row(full_s),
        "parts": parts_out,
        "part_labels": nets,
        "sum_of_parts_us": sum_parts,
        "overhead": full_us / sum_parts,
        "learner_flops": {
            "xla_per_update": flops_xla,
            "hand_per_update": hand["per_update"],
            "hand_forward_per_example": hand["forward_per_example"],
            "updates_per_s_isolated": ups_learner,
            "updates_per_s_full_loop": ups_full,
            "us_per_update_per_device_isolated": parts_out["learner"]["us_per_iteration"]
            * layout.num_devices
            / updates_per_iter,
            "gflops_isolated": flops_xla * ups_learner / 1e9,
            "gflops_full_loop": flops_xla * ups_full / 1e9,
        },
        "load_avg_1m_end": os.getloadavg()[0],
        "config": config.to_dict(),
        "matmul": benchlib.matmul_stats(matmul_size, matmul_times),
    }


def print_report(info: dict, r: dict, mm: dict) -> None:
    seeds, (ls, ld) = r["num_seeds"], r["layout"]
    print(
        f"# {info['cpu']}, {info['cores']} cores, jax {info['jax']} {info['backend']}, "
        f"{len(info['devices'])} device(s); load average {info['load_avg_1m']:.1f} at start, "
        f"{r['load_avg_1m_end']:.1f} at end; XLA_FLAGS={info['xla_flags']!r}; dqnx XLA CPU "
        f"tuning {benchlib.tuning_text(info)}"
    )
    print(
        f"# {r['env']}: {seeds} seed(s) on {ls}x{ld} (seeds x data) device(s), the run's "
        f"layout, for the full loop and every part; {r['steps_per_iteration']} env steps, "
        f"{r['updates_per_iteration']} update(s) of batch {r['batch_size']} per iteration"
    )
    print(
        f"# median of {r['chunks']} chunks of {r['iterations']} iterations after one warm-up; "
        "each part is its own jitted lax.scan vmapped over seeds; 'us/iter' is wall time per "
        "iteration of all seeds"
    )
    for note in r["notes"]:
        print(f"# note: {note}")
    print(
        f"# compile (init, prefill, chunk; lowered and compiled ahead of time, in parallel "
        f"threads): {r['compile_s']:.1f} s; evaluate, compiled after them on a worker "
        f"thread: {r['evaluate_compile_s']:.1f} s"
    )
    full = r["full_loop"]["us_per_iteration"]
    print(f"{'':40} {'us/iter':>10} {'share':>7} {'steps/s':>10} {'compile_s':>10}")
    print(f"{'full loop':40} {full:>10.1f} {'':>7} {r['full_loop']['sps']:>10,.0f} {'':>10}")
    for key in ("acting", "acting_random", "replay", "learner"):
        p = r["parts"][key]
        share = "" if key == "acting_random" else f"{p['us_per_iteration'] / full:.0%}"
        print(
            f"{r['part_labels'][key]:40} {p['us_per_iteration']:>10.1f} {share:>7} "
            f"{p['sps']:>10,.0f} {p['compile_s']:>10.1f}"
        )
    print(f"{'sum of parts (a + b + c)':40} {r['sum_of_parts_us']:>10.1f} "
          f"{r['sum_of_parts_us'] / full:>7.0%}")  # fmt: skip
    print(f"{'overhead: full loop / sum of parts':40} {r['overhead']:>10.2f}x")
    f = r["learner_flops"]
    print(
        f"# matmul {mm['size']}x{mm['size']} f32 on one device: {mm['gflops']:.1f} GFLOP/s "
        f"(median of {mm['repeats']} calls between the timed chunks; best {mm['gflops_best']:.1f})"
        + (
            f"; pinned to one core: {mm['gflops_one_core']:.1f}"
            if mm.get("gflops_one_core")
            else ""
        )
    )
    print(
        f"# learner FLOPs/update: XLA cost analysis {f['xla_per_update'] / 1e6:.2f} M, hand count "
        f"(dense/conv layers) {f['hand_per_update'] / 1e6:.2f} M "
        f"(ratio {f['xla_per_update'] / f['hand_per_update']:.2f})"
    )
    print(
        f"# learner: {f['updates_per_s_isolated']:,.0f} updates/s isolated "
        f"({f['us_per_update_per_device_isolated']:.0f} us per update per device) -> "
        f"{f['gflops_isolated']:.1f} GFLOP/s "
        f"({f['gflops_isolated'] / mm['gflops']:.0%} of the matmul); in the full loop "
        f"{f['updates_per_s_full_loop']:,.0f} updates/s -> {f['gflops_full_loop']:.1f} GFLOP/s"
    )
    if "share_of_cores_used_isolated" in f:
        devices = r["layout"][0] * r["layout"][1]
        print(
            f"# learner isolated: {f['share_of_cores_used_isolated']:.0%} of the one-core matmul "
            f"x {devices} device(s) (one core each)"
        )


def main(argv):
    dqnx_flags.define_flags()
    if {"--help", "-h", "--helpshort"} & set(argv[1:]):
        print(__doc__.strip() + "\n\nFlags of this script:\n" + flags.FLAGS.module_help(__name__))
        return
    flags.FLAGS(argv)
    fl = flags.FLAGS
    config = checks.validate(dqnx_flags.config_from_flags())
    info = benchlib.machine_info()
    if builder.uses_host_actors(config):
        import bench_learner

        result = bench_learner.bench(config, fl.iterations, fl.chunks, fl.matmul_size,
                                     fl.matmul_repeats)  # fmt: skip
        bench_learner.print_report(info, result)
        benchlib.write_json(fl.out, {"machine": info, **result})
        return
    result = bench(config, fl.iterations, fl.chunks, fl.matmul_size, fl.matmul_repeats)
    mm = result.pop("matmul")
    mm["gflops_one_core"] = benchlib.matmul_gflops_one_core(fl.matmul_size, fl.matmul_repeats)
    if mm["gflops_one_core"]:
        # Each XLA CPU device runs on one core: the learner's ceiling is the
        # one-core figure times the devices the run uses.
        ceiling = mm["gflops_one_core"] * math.prod(result["layout"])
        flops = result["learner_flops"]
        flops["share_of_cores_used_isolated"] = flops["gflops_isolated"] / ceiling
    print_report(info, result, mm)
    for value in (result["overhead"], mm["gflops"]):
        if not math.isfinite(value):
            print("warning: a measurement is not finite", file=sys.stderr)
    benchlib.write_json(fl.out, {"machine": info, "matmul": mm, **result})


if __name__ == "__main__":
    main(sys.argv)
