"""The steps that every dqnx cloud job shares: ``launch_tpu.py`` and ``launch_gpu.py`` use them.

Every job takes the same steps on every machine (each TPU worker, each GPU node):
  pack  the git-tracked files of this checkout, as they are on disk, into a tarball here
        (untracked files, ``.venv/`` and ``runs/`` never go: ``git add`` a new file to ship it);
  copy  the tarball to every machine;
  install  uv with the system ``python3 -m pip install --user`` (nothing as root), Python 3.12
        from uv, and dqnx with a pinned ``jax[tpu]`` or ``jax[cuda12]`` (the version installed
        here) into ``~/dqnx/.venv``; every other package resolves as of the launch time
        (``uv pip install --exclude-newer``), so all machines, and a VM re-created after a
        preemption, get the same versions;
  train  ``experiments/run.py`` with ``--flagfile``, ``--workdir`` and the flags after ``--``;
  fetch  without ``--workdir``, ``~/dqnx/runs/NAME`` of the first machine into ``runs/`` here.
Without ``--run`` the commands are printed, one a line, ready to paste.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

PYTHON_VERSION = "3.12"
UV_VERSION = "0.13.9"
REMOTE_TARBALL = "dqnx-src.tar.gz"
REMOTE_HOME = "dqnx"  # ~/dqnx/src (the copied tree), ~/dqnx/.venv, ~/dqnx/runs
CHECKOUT = Path(__file__).resolve().parents[1]


class LaunchError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


class Job(NamedTuple):
    """The commands of one job, step by step.

    Attributes:
      pack: the pipeline that writes the source tarball (``git ls-files | tar``).
      create: commands that create the machines.
      copy: commands that copy the tarball to the machines.
      install: commands that install dqnx on the machines.
      train: commands run at the same time when there are several (one per GPU node).
      notes: comment lines printed after the train step.
      fetch: copies the run directory here (only without ``--workdir``).
      delete: commands that delete the machines at the end.
    """

    pack: list[list[str]]
    create: list[list[str]]
    copy: list[list[str]]
    install: list[list[str]]
    train: list[list[str]]
    notes: list[str]
    fetch: list[list[str]]
    delete: list[list[str]]


def install_command(
    jax_requirement: str, python_version: str, uv_version: str, date: str, extras: str = ""
) -> str:
    """The shell command that unpacks the tarball and installs dqnx on one machine.

    Args:
      jax_requirement: e.g. ``jax[tpu]==0.10.2``.
      python_version: the Python that uv installs, e.g. ``3.12``.
      uv_version: the uv that ``pip install --user`` brings.
      date: RFC 3339 time; packages uploaded later are not considered.
      extras: dqnx's optional dependencies, comma-separated (e.g. ``host``).

    Returns:
      One line for the login shell, run in the home directory.
    """
    src, uv = f"{REMOTE_HOME}/src", "python3 -m uv"
    dqnx = f'"./src[{extras}]"' if extras else "./src"
    return "; ".join(
        [
            "set -e",
            f"rm -rf {src}",
            f"mkdir -p {src}",
            f"tar -xzf {REMOTE_TARBALL} -C {src}",
            f"cd {REMOTE_HOME}",
            # uv goes to ~/.local only. The variable lets the pip of Ubuntu 24.04 (PEP 668)
            # do that; the pip of 22.04, which has no such option, ignores it.
            "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user "
            f"--no-warn-script-location uv=={uv_version}",
            f"{uv} python install {python_version}",
            f"{uv} venv -q --clear --python {python_version} .venv",
            f"{uv} pip install --python .venv/bin/python --exclude-newer {date} "
            f'-e {dqnx} "{jax_requirement}"',
        ]
    )


def train_command(flagfile: str, workdir: str, flags: list[str]) -> str:
    """The shell command that runs ``experiments/run.py`` in the copied tree.

    A SIGTERM (what a machine that shuts down sends) lets the run checkpoint and exit 0; the
    trap turns that into exit 143, so a stopped run is not taken for a finished one.

    Args:
      flagfile: path of the flagfile in the source tree.
      workdir: the run's ``--workdir`` (relative paths from ``~/dqnx/src``).
      flags: further flags for ``experiments/run.py``.

    Returns:
      One line for the login shell, run in the home directory.
    """
    run = ["../.venv/bin/python", "experiments/run.py", f"--flagfile={flagfile}"]
    run += [f"--workdir={workdir}", *flags]
    return f'set -e; cd {REMOTE_HOME}/src; trap "exit 143" TERM; {shlex.join(run)}'


def _git(source: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", source, *argv], capture_output=True, text=True)


def check_source(source: str, flagfile: str) -> tuple[str, str]:
    """The checkout's top directory and the flagfile's path in it; the flagfile must be tracked.

    Raises:
      LaunchError: ``source`` is not a git checkout or the flagfile is not tracked there.
    """
    top = _git(source, "rev-parse", "--show-toplevel")
    if top.returncode:
        raise LaunchError(f"--source={source} is not a git checkout (the copy is `git ls-files`)")
    root = top.stdout.strip()
    path = Path(flagfile)
    if path.is_absolute():
        path = Path(os.path.relpath(path.resolve(), Path(root).resolve()))
    if _git(root, "ls-files", "--error-unmatch", "--", str(path)).returncode:
        raise LaunchError(f"--flagfile={flagfile} is not tracked by git in {root}: `git add` it")
    return root, path.as_posix()


def pack_commands(root: str, tarball: str) -> list[list[str]]:
    """``git ls-files -z | tar ... -T -``: the tracked files as they are on disk, nothing else."""
    rel = os.path.relpath(root)  # shorter printed commands when run from inside the checkout
    root = root if rel == ".." or rel.startswith("../") else rel
    return [
        ["git", "-C", root, "ls-files", "-z"],
        ["tar", "-C", root, "-czf", tarball, "--null", "-T", "-"],
    ]


def split_workdir(run_flags: list[str], workdir: str) -> tuple[list[str], str]:
    """Takes ``--workdir`` out of the flags after ``--`` (the launcher needs to see it).

    Raises:
      LaunchError: two different workdirs.
    """
    rest, found = [], []
    flags = iter(run_flags)
    for flag in flags:
        if flag.startswith("--workdir="):
            found.append(flag.split("=", 1)[1])
        elif flag == "--workdir":
            found.append(next(flags, ""))
        else:
            rest.append(flag)
    for value in found:
        if workdir and value != workdir:
            raise LaunchError(f"two workdirs: --workdir={workdir} and --workdir={value}")
        workdir = value
    return rest, workdir


def install_for(args: argparse.Namespace, extra: str) -> str:
    """``install_command`` with ``jax[extra]==V``, V from ``--jax_version`` or the jax here."""
    version = args.jax_version
    if not version:
        try:
            version = importlib.metadata.version("jax")
        except importlib.metadata.PackageNotFoundError:
            raise LaunchError("jax is not installed here: give --jax_version=X.Y.Z") from None
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version):
        raise LaunchError(f"--jax_version={version} is not a version")
    if not re.fullmatch(r"[A-Za-z0-9_,-]*", args.extras):
        raise LaunchError(f"--extras={args.extras} is not a comma-separated list of names")
    requirement = f"jax[{extra}]=={version}"
    return install_command(
        requirement, args.python_version, args.uv_version, args.exclude_newer, args.extras
    )


def render(job: Job) -> list[str]:
    """The job as shell lines, ready to paste (concurrent trains end in ``&``, then ``wait``)."""
    lines = [" | ".join(shlex.join(c) for c in job.pack)]
    lines += [shlex.join(c) for c in job.create + job.copy + job.install]
    if len(job.train) > 1:
        lines += [shlex.join(c) + " &" for c in job.train] + ["wait"]
    else:
        lines += [shlex.join(c) for c in job.train]
    return lines + job.notes + [shlex.join(c) for c in job.fetch + job.delete]


def note(message: str) -> None:
    """One line on stderr."""
    print(f"launch: {message}", file=sys.stderr, flush=True)


def execute(cmd: list[str]) -> int:
    """Prints the command, runs it, returns its exit code."""
    print(shlex.join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def execute_all(cmds: list[list[str]]) -> int:
    """Runs the commands one after the other; the first non-zero exit code stops them."""
    for cmd in cmds:
        rc = execute(cmd)
        if rc:
            return rc
    return 0


def execute_steps(steps: list[tuple[str, list[list[str]]]]) -> tuple[str, int]:
    """Runs named steps in order: the name and exit code of the first that fails, or ("", 0)."""
    for name, cmds in steps:
        rc = execute_all(cmds)
        if rc:
            return name, rc
    return "", 0


def execute_pipeline(cmds: list[list[str]]) -> int:
    """``a | b``: the first non-zero exit code of the two."""
    print(" | ".join(shlex.join(c) for c in cmds), flush=True)
    first = subprocess.Popen(cmds[0], stdout=subprocess.PIPE)
    second = subprocess.Popen(cmds[1], stdin=first.stdout)
    first.stdout.close()  # the second holds the pipe now
    return first.wait() or second.wait()


def _now() -> str:
    """The time now, UTC, as RFC 3339 (uv's ``--exclude-newer``)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parser(doc: str) -> argparse.ArgumentParser:
    """The flags that every job has; the caller adds its own."""
    p = argparse.ArgumentParser(
        description=f"{doc}\n{__doc__.partition(chr(10) * 2)[2]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--flagfile", default="experiments/configs/cartpole.flags")
    p.add_argument(
        "--workdir",
        default="",
        help="run directory on the machines, e.g. gs://BUCKET/PATH (default: ~/dqnx/runs/NAME "
        "there, fetched into runs/ here)",
    )
    p.add_argument("--project", default="")
    p.add_argument("--jax_version", default="", help="pinned JAX (default: the one here)")
    p.add_argument("--extras", default="", help="dqnx extras to install, e.g. host,atari")
    p.add_argument("--python_version", default=PYTHON_VERSION)
    p.add_argument("--uv_version", default=UV_VERSION)
    p.add_argument(
        "--exclude_newer",
        default=_now(),
        help="resolve packages as of this time (default: now); repeat it to reproduce a job",
    )
    p.add_argument("--source", default=str(CHECKOUT), help="the git checkout to copy")
    p.add_argument("--tarball", default="", help="local path of the source tarball")
    p.add_argument("--run", action="store_true", help="run the commands instead of printing")
    return p


def main(
    argv: list[str],
    p: argparse.ArgumentParser,
    build: Callable[[argparse.Namespace, list[str]], Job],
    run: Callable[[Job, argparse.Namespace], int],
) -> int:
    """Prints the job, or runs it with ``--run``; returns the exit code.

    Args:
      argv: the launcher's flags, then ``--`` and the flags for ``experiments/run.py``.
      p: the launcher's flags.
      build: the job from the flags.
      run: runs the job.
    """
    run_flags: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, run_flags = argv[:i], argv[i + 1 :]
    args = p.parse_args(argv)
    try:
        job = build(args, run_flags)
    except LaunchError as e:
        print(f"launch: error: {e}", file=sys.stderr)
        return 2
    if not args.run:
        print("\n".join(render(job)))
        return 0
    try:
        return run(job, args)
    except FileNotFoundError as e:  # no gcloud, ssh, git or tar here
        note(f"{e.filename}: command not found")
        return 127
    except KeyboardInterrupt:
        note("interrupted: what runs on the machines may go on, and a created VM is still there")
        return 130
