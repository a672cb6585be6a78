"""Prints (or, with --run, runs) the commands of a dqnx job on existing GPU machines.

  python scripts/launch_gpu.py --hosts=gpu-box \\
      --flagfile=experiments/configs/breakout_minatar.flags -- --num_seeds=8
  python scripts/launch_gpu.py --hosts=10.0.0.1,10.0.0.2 --workdir=gs://my-bucket/dqnx/b \\
      --flagfile=experiments/configs/breakout_minatar.flags -- --num_seeds=16
  python scripts/launch_gpu.py --instances=a100-0,a100-1 --zone=us-central1-a ...

One machine runs one process that sees all its GPUs. Several machines (``--hosts`` reached
with ``ssh``/``scp``, or Compute Engine VMs with ``gcloud compute ssh``/``scp``) run one process
each, started at the same time with ``--coordinator_address=HOST0:PORT --num_processes=K
--process_id=i``; they write one checkpoint together, so ``--workdir`` must be a place they all
see (a bucket, or a shared mount). The machines are left as they are.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import launch


def transport(args: argparse.Namespace):
    """``ssh(host, command)``, ``scp(*paths)`` and ``scp_dir(*paths)`` command builders."""
    if not args.instances:
        return (
            (lambda h, c: ["ssh", h, c]),
            (lambda *p: ["scp", *p]),
            (lambda *p: ["scp", "-r", *p]),
        )
    where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    gce = ["gcloud", "compute"]
    return (
        lambda h, c: [*gce, "ssh", h, *where, f"--command={c}"],
        lambda *p: [*gce, "scp", *p, *where],
        lambda *p: [*gce, "scp", "--recurse", *p, *where],
    )


def build(args: argparse.Namespace, run_flags: list[str]) -> launch.Job:
    """The job on one GPU node (all its GPUs) or on several nodes."""
    run_flags, workdir = launch.split_workdir(run_flags, args.workdir)
    hosts = [h for h in (args.hosts or args.instances).split(",") if h]
    if not hosts:
        raise launch.LaunchError("--hosts or --instances names no machine")
    if len(hosts) > 1 and not workdir:
        raise launch.LaunchError(
            "several nodes write one checkpoint: give --workdir=gs://BUCKET/PATH "
            "(or a directory that every node mounts)"
        )
    if args.instances and not args.zone:
        raise launch.LaunchError("--instances needs --zone")
    root, flagfile = launch.check_source(args.source, args.flagfile)
    name = args.name or Path(flagfile).stem
    tarball = args.tarball or os.path.join(tempfile.gettempdir(), f"{name}-src.tar.gz")
    install = launch.install_for(args, "cuda12")
    coordinator = f"{args.coordinator_host or hosts[0].rsplit('@', 1)[-1]}:{args.coordinator_port}"
    ssh, scp, scp_dir = transport(args)
    train = []
    for i, host in enumerate(hosts):
        distributed = []
        if len(hosts) > 1:
            distributed = [
                f"--coordinator_address={coordinator}",
                f"--num_processes={len(hosts)}",
                f"--process_id={i}",
            ]
        command = launch.train_command(
            flagfile, workdir or f"../runs/{name}", distributed + run_flags
        )
        train.append(ssh(host, command))
    fetch = scp_dir(f"{hosts[0]}:{launch.REMOTE_HOME}/runs/{name}", "runs/")
    return launch.Job(
        pack=launch.pack_commands(root, tarball),
        create=[],
        copy=[scp(tarball, f"{h}:{launch.REMOTE_TARBALL}") for h in hosts],
        install=[ssh(h, install) for h in hosts],
        train=train,
        notes=[],
        fetch=[] if workdir else [fetch],
        delete=[],
    )


def run(job: launch.Job, args: argparse.Namespace) -> int:
    """Copies and installs machine by machine, then trains on all at once."""
    rc = launch.execute_pipeline(job.pack)
    rc = rc or launch.execute_all(job.copy) or launch.execute_all(job.install)
    if rc:
        return rc
    if len(job.train) == 1:
        rc = launch.execute(job.train[0])
    else:
        for cmd in job.train:
            print(shlex.join(cmd) + " &", flush=True)
        procs = [subprocess.Popen(cmd) for cmd in job.train]
        print("wait", flush=True)
        codes = [p.wait() for p in procs]
        rc = next((c for c in codes if c), 0)
    if rc:
        launch.note(f"train failed ({rc})")
    launch.execute_all(job.fetch)
    return rc


def parser() -> argparse.ArgumentParser:
    """The shared flags and the GPU machines'."""
    p = launch.parser(__doc__)
    machines = p.add_mutually_exclusive_group(required=True)
    machines.add_argument("--hosts", help="ssh destinations, comma-separated ([user@]host)")
    machines.add_argument("--instances", help="Compute Engine VMs, comma-separated")
    p.add_argument("--zone", default="", help="zone of --instances")
    p.add_argument("--name", default="", help="run name (default: the flagfile's name)")
    p.add_argument("--coordinator_host", default="", help="default: the first machine")
    p.add_argument("--coordinator_port", type=int, default=8476)
    return p


def main(argv: list[str] | None = None) -> int:
    """Prints the job, or runs it with ``--run``; returns the exit code."""
    return launch.main(sys.argv[1:] if argv is None else argv, parser(), build, run)


if __name__ == "__main__":
    sys.exit(main())
