"""Prints (or, with --run, runs) the commands of a dqnx job on a Cloud TPU VM.

  python scripts/launch_tpu.py --name=dqnx-v4 --zone=us-central2-b --accelerator_type=v4-32 \\
      --flagfile=experiments/configs/breakout_minatar.flags \\
      --spot --workdir=gs://my-bucket/dqnx/breakout -- --num_seeds=8

Creates the VM (a single host such as v4-8, or a pod slice such as v4-32) with the runtime
image of its TPU generation, runs every step on all its workers (``--worker=all``; the hosts
of a pod slice find each other from the TPU metadata), fetches the run from worker 0 (the one
that writes logs) when it is on the VM, and deletes the VM (not with ``--keep``).

``--spot --run`` loops: when a step fails and the VM is PREEMPTED (or TERMINATED), it deletes
the VM, creates it again and repeats the steps with the same tarball and command;
``experiments/run.py`` resumes from the newest checkpoint in ``--workdir``, which must then be
a bucket (``gs://``). A failure for another reason stops the job with the failing step's exit
code, and so does a preemption past ``--max_preemptions``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

import launch

# The runtime image per TPU generation (cloud.google.com/tpu/docs/runtimes, JAX and PyTorch).
RUNTIMES = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite"}
RUNTIME_DEFAULT = "tpu-ubuntu2204-base"  # v4 and older
# States a TPU VM does not come back from (gcloud calls them terminal): delete and re-create.
GONE = ("PREEMPTED", "TERMINATED")
# Exit codes of a step whose VM may be going away while its state still says READY: ssh lost
# the connection (255), or the run was stopped by SIGTERM and checkpointed (143).
LOST = (143, 255)


def gcloud(args: argparse.Namespace, verb: str, *argv: str) -> list[str]:
    """``gcloud compute tpus tpu-vm VERB ARGV --zone=... [--project=...]``; flags may follow."""
    where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, *argv, *where]


def runtime(accelerator_type: str) -> str:
    """The TPU runtime image for an accelerator type such as ``v4-32`` or ``v5litepod-8``."""
    return RUNTIMES.get(accelerator_type.split("-")[0], RUNTIME_DEFAULT)


def build(args: argparse.Namespace, run_flags: list[str]) -> launch.Job:
    """The job on one TPU VM (a single host, or every worker of a pod slice)."""
    run_flags, workdir = launch.split_workdir(run_flags, args.workdir)
    if args.spot and not workdir.startswith("gs://"):
        raise launch.LaunchError(
            "--spot needs --workdir=gs://BUCKET/PATH: a preempted VM loses its disk, "
            "and the re-created one resumes from the bucket"
        )
    root, flagfile = launch.check_source(args.source, args.flagfile)
    tarball = args.tarball or os.path.join(tempfile.gettempdir(), f"{args.name}-src.tar.gz")
    vm = args.name
    create = gcloud(args, "create", vm) + [f"--accelerator-type={args.accelerator_type}"]
    create += [f"--version={args.runtime_version or runtime(args.accelerator_type)}"]
    train = launch.train_command(flagfile, workdir or f"../runs/{vm}", run_flags)
    notes = []
    if args.spot:
        notes.append(
            f"# --spot: if a step fails and `{shlex.join(describe(args))}` prints "
            f"PREEMPTED, delete the VM and repeat from create (at most {args.max_preemptions} "
            "times); --run does this"
        )
    fetch = gcloud(args, "scp", "--recurse", f"{vm}:{launch.REMOTE_HOME}/runs/{vm}", "runs/")
    return launch.Job(
        pack=launch.pack_commands(root, tarball),
        create=[create + (["--spot"] if args.spot else [])],
        copy=[gcloud(args, "scp", tarball, f"{vm}:{launch.REMOTE_TARBALL}") + ["--worker=all"]],
        install=[
            gcloud(args, "ssh", vm)
            + ["--worker=all", f"--command={launch.install_for(args, 'tpu')}"]
        ],
        train=[gcloud(args, "ssh", vm) + ["--worker=all", f"--command={train}"]],
        notes=notes,
        fetch=[] if workdir else [fetch + ["--worker=0"]],
        delete=[] if args.keep else [delete(args)],
    )


def describe(args: argparse.Namespace) -> list[str]:
    """The command that prints the VM's state: READY, PREEMPTED, ..."""
    return gcloud(args, "describe", args.name) + ["--format=value(state)"]


def delete(args: argparse.Namespace) -> list[str]:
    """The command that deletes the VM without asking."""
    return gcloud(args, "delete", args.name) + ["--quiet"]


def preempted(args: argparse.Namespace, rc: int) -> bool:
    """Whether the VM is gone (PREEMPTED or TERMINATED) after a step failed with ``rc``.

    A lost connection or a SIGTERM'd run (``LOST``) can come before the state changes: then
    the state is asked again every ``--poll_s`` seconds, three times in all.
    """
    for i in range(3 if rc in LOST else 1):
        if i:
            time.sleep(args.poll_s)
        cmd = describe(args)
        print(shlex.join(cmd), flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True)
        state = out.stdout.strip() if out.returncode == 0 else ""
        if state in GONE:
            return True
        launch.note(f"VM state: {state or 'unknown'}")
    return False


def run(job: launch.Job, args: argparse.Namespace) -> int:
    """Runs the job; with ``--spot``, re-creates a preempted VM and runs the steps again."""
    rc = launch.execute_pipeline(job.pack)
    if rc:
        return rc
    preemptions = 0
    while True:
        rc = launch.execute_all(job.create)
        if rc:
            later = "; the same command resumes the run later" if preemptions else ""
            launch.note(f"creating {args.name} failed ({rc}){later}")
            return rc
        failed, rc = launch.execute_steps(
            [("copy", job.copy), ("install", job.install), ("train", job.train)]
        )
        if not rc or not args.spot or not preempted(args, rc):
            break
        if preemptions == args.max_preemptions:
            launch.note(f"preempted {preemptions + 1} times (--max_preemptions={preemptions})")
            break
        preemptions += 1
        launch.note(f"{args.name} was preempted ({preemptions}); re-creating it")
        launch.execute(delete(args))  # even with --keep: the name is needed again
    if rc:
        launch.note(f"{failed} failed ({rc}); the job stops")
    if failed in ("", "train"):  # the run directory exists
        launch.execute_all(job.fetch)
    launch.execute_all(job.delete)
    return rc


def parser() -> argparse.ArgumentParser:
    """The shared flags and the TPU VM's."""
    p = launch.parser(__doc__)
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--accelerator_type", default="v4-8", help="v4-8 (one host), v4-32 (4 hosts)")
    p.add_argument("--runtime_version", default="", help="default: the image for the TPU type")
    p.add_argument("--spot", action="store_true", help="spot VM, re-created when preempted")
    p.add_argument("--max_preemptions", type=int, default=10)
    p.add_argument("--poll_s", type=float, default=30.0, help="wait between state checks")
    p.add_argument("--keep", action="store_true", help="do not delete the VM at the end")
    return p


def main(argv: list[str] | None = None) -> int:
    """Prints the job, or runs it with ``--run``; returns the exit code."""
    return launch.main(sys.argv[1:] if argv is None else argv, parser(), build, run)


if __name__ == "__main__":
    sys.exit(main())
