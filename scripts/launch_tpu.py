"""Prints (or, with --run, runs) the gcloud commands of a dqnx job on a Cloud TPU VM.

  python scripts/launch_tpu.py --name=dqnx-v4 --zone=us-central2-b \
      --accelerator_type=v4-8 --flagfile=experiments/configs/breakout_minatar.flags \
      -- --num_seeds=8 --total_steps=5000000

Steps: create the TPU VM (single host such as v4-8, or a pod slice such as
v4-32), copy this checkout to every worker, install dqnx with JAX's TPU wheels,
start the same command on all workers (JAX finds the other hosts of a pod slice
by itself: ``jax.distributed`` is initialised from the TPU metadata), fetch the
run directory from worker 0 (the only one that writes logs), delete the VM.
Flags after ``--`` go to ``experiments/run.py``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys


def commands(args: argparse.Namespace, run_flags: list[str]) -> list[list[str]]:
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    workdir = f"runs/{args.name}"
    train = " ".join(
        [
            "cd dqnx &&",
            ".venv/bin/python experiments/run.py",
            f"--flagfile={shlex.quote(args.flagfile)}",
            f"--workdir={workdir}",
            *(shlex.quote(f) for f in run_flags),
        ]
    )
    install = (
        "cd dqnx && python3 -m venv .venv && .venv/bin/pip install -q -U pip && "
        '.venv/bin/pip install -q -e . "jax[tpu]" '
        "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    )
    create = [
        *tpu,
        "create",
        args.name,
        *where,
        f"--accelerator-type={args.accelerator_type}",
        f"--version={args.runtime_version}",
    ]
    if args.spot:
        create.append("--spot")
    return [
        create,
        [*tpu, "scp", "--recurse", ".", f"{args.name}:dqnx", *where, "--worker=all"],
        [*tpu, "ssh", args.name, *where, "--worker=all", f"--command={install}"],
        [*tpu, "ssh", args.name, *where, "--worker=all", f"--command={train}"],
        [*tpu, "scp", "--recurse", f"{args.name}:dqnx/{workdir}", "runs/", *where, "--worker=0"],
        [*tpu, "delete", args.name, *where, "--quiet"],
    ]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    run_flags: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, run_flags = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--accelerator_type", default="v4-8", help="v4-8 (one host), v4-32 (4 hosts)")
    p.add_argument("--runtime_version", default="tpu-ubuntu2204-base")
    p.add_argument("--flagfile", default="experiments/configs/cartpole.flags")
    p.add_argument("--spot", action="store_true", help="preemptible capacity")
    p.add_argument("--keep", action="store_true", help="do not delete the VM at the end")
    p.add_argument("--run", action="store_true", help="run the commands instead of printing")
    return p.parse_args(argv), run_flags


def main(argv: list[str] | None = None) -> int:
    args, run_flags = parse(sys.argv[1:] if argv is None else argv)
    cmds = commands(args, run_flags)
    if args.keep:
        cmds = cmds[:-1]
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if args.run:
            result = subprocess.run(cmd)
            if result.returncode:
                print(f"failed ({result.returncode}): {shlex.join(cmd)}", file=sys.stderr)
                return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
