"""Aggregate env steps/s of the full training loop at several seed counts.

  python scripts/bench_seeds.py --flagfile=experiments/configs/cartpole_reference.flags \
      --seeds=1,8,32 [--chunks=3] [--out=bench.json]

For each seed count: compile the programs (``compile_s``: until init, prefill
and the chunk are ready, as ``run`` reports it; evaluate then compiles on a
worker thread during prefill and the warm-up chunk, its lowering + compile
seconds in ``evaluate_compile_s``), run prefill and one warm-up chunk, then
time ``--chunks`` chunks. Reported steps/s counts the env steps
of all seeds and excludes compilation, prefill and evaluation.
"""

from __future__ import annotations

import sys
import time

from dqnx import parallel

parallel.use_all_cpu_cores()

import benchlib  # noqa: E402
import jax  # noqa: E402
from absl import flags  # noqa: E402

from dqnx import builder, checks, compiled, xla  # noqa: E402
from dqnx import flags as dqnx_flags  # noqa: E402

flags.DEFINE_list("seeds", ["1", "8", "32"], "Seed counts to measure.")
flags.DEFINE_integer("chunks", 3, "Timed chunks per seed count.")
flags.DEFINE_string("out", "", "Optional JSON output path.")


def measure(config, chunks):
    fns = compiled.make_train_fns(config, layout=builder.choose_layout(config))
    xla.clear_executables()  # compile seconds are measured: nothing compiled before is reused
    programs = compiled.compile_train(fns)
    compile_s = programs.compile_s  # as `run` reports it: until the training programs are ready
    state, _ = programs.prefill(programs.initial_state)
    state, m = programs.chunk(state)
    jax.block_until_ready(m)
    evaluate_s = programs.evaluate.seconds()  # waits, so it cannot slow the timed chunks
    t0 = time.perf_counter()
    for _ in range(chunks):
        state, m = programs.chunk(state)
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    steps = chunks * config.iterations_per_chunk * config.steps_per_iteration * config.num_seeds
    return {
        "num_seeds": config.num_seeds,
        "layout": list(programs.layout),
        "compile_s": round(compile_s, 2),
        "evaluate_compile_s": round(evaluate_s, 2),
        "timed_env_steps": steps,
        "timed_s": round(dt, 3),
        "sps": round(steps / dt, 1),
    }


def main(argv):
    dqnx_flags.define_flags()
    flags.FLAGS(argv)
    base = checks.validate(dqnx_flags.config_from_flags())
    info = {"config": base.env_name, **benchlib.machine_info()}
    print(
        f"# {info['config']} on {info['backend']}: {info['cpu']} ({info['cores']} cores, "
        f"{len(info['devices'])} device(s)), jax {info['jax']}, XLA CPU tuning "
        f"{benchlib.tuning_text(info)}, load average {info['load_avg_1m']:.1f} at start"
    )
    print(f"{'seeds':>6} {'seeds x data':>13} {'compile_s':>10} {'evaluate_s':>11} {'steps/s':>12}")
    rows = []
    for s in flags.FLAGS.seeds:
        row = measure(checks.validate(base.replace(num_seeds=int(s))), flags.FLAGS.chunks)
        rows.append(row)
        layout = "x".join(map(str, row["layout"]))
        print(
            f"{row['num_seeds']:>6} {layout:>13} {row['compile_s']:>10.2f} "
            f"{row['evaluate_compile_s']:>11.2f} {row['sps']:>12,.0f}",
            flush=True,
        )
    benchlib.write_json(flags.FLAGS.out, {"machine": info, "results": rows})


if __name__ == "__main__":
    main(sys.argv)
