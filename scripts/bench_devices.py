"""Steps/s of one seed's training loop split data-parallel over 1, 2 and 4 devices.

  python scripts/bench_devices.py [--flagfile=experiments/configs/cartpole_reference.flags] \
      [--devices=1,2,4] [--chunks=3] [--out=bench_devices.json] [-- --num_envs=8 ...]

Each device count runs in its own process with that many XLA host devices
(``--xla_force_host_platform_device_count``), each device stepping num_envs/D
environments into its own replay shard and sampling batch_size/D transitions,
gradients averaged with one pmean. On a CPU host the simulated devices share
the same cores: the figures are the work done per second by the same
algorithm at the same global batch, not a speed-up claim. On a GPU/TPU host,
pass device counts up to the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--flagfile", default=os.path.join(ROOT, "experiments/configs/cartpole_reference.flags")
    )
    p.add_argument("--devices", default="1,2,4")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--out", default="")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    rows = []
    print(
        f"# {os.path.basename(args.flagfile)} {' '.join(extra)}, {args.seeds} seed(s), "
        "data-parallel"
    )
    print(f"{'devices':>8} {'seeds x data':>13} {'compile_s':>10} {'steps/s':>12}")
    for d in [int(x) for x in args.devices.split(",")]:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [
                sys.executable,
                os.path.join(ROOT, "scripts", "bench_seeds.py"),
                f"--flagfile={args.flagfile}",
                f"--seeds={args.seeds}",
                f"--num_devices={d}",
                f"--chunks={args.chunks}",
                f"--out={out.name}",
                *extra,
            ]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            result = json.load(open(out.name))
        row = dict(result["results"][0], devices=d, machine=result["machine"])
        rows.append(row)
        layout = "x".join(map(str, row["layout"]))
        print(f"{d:>8} {layout:>13} {row['compile_s']:>10.2f} {row['sps']:>12,.0f}", flush=True)
    benchlib.write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
