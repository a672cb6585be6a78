"""Tests for scripts/launch_tpu.py, scripts/launch_gpu.py and their shared scripts/launch.py.

The printed jobs are checked for what makes them run on the images people get (the git-tracked
tree only, Python 3.12 from uv, a pinned JAX, ``--workdir`` passed through); a fake ``gcloud``
(tests/fake_gcloud/gcloud) drives ``--run --spot`` through a preemption.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """Imports scripts/NAME.py as NAME (the entry points import ``launch`` by that name)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


launch = _load("launch")
TARGETS = {"tpu": _load("launch_tpu"), "gpu": _load("launch_gpu")}

FLAGFILE = "experiments/configs/x.flags"
DATE = "2026-01-02T03:04:05Z"
PINS = ["--jax_version=0.10.2", f"--exclude_newer={DATE}"]
TRACKED = {
    ".gitignore": "__pycache__/\n",
    "pyproject.toml": '[project]\nname = "dqnx"\n',
    "dqnx/__init__.py": "",
    "experiments/run.py": "print('run')\n",
    FLAGFILE: "--env_name=CartPole-v1\n",
}


def _git(repo: Path, *argv: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *argv],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout with tracked files, an uncommitted edit, and untracked .venv/, runs/, notes."""
    repo = tmp_path / "repo"
    for path, text in TRACKED.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    (repo / "experiments/run.py").write_text("print('edited')\n")  # tracked, not committed
    for path in [".venv/bin/python", "runs/old/metrics.jsonl", "notes.txt", "dqnx/__pycache__/a"]:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x")
    return repo


def dry(capsys, repo: Path, *argv: str) -> list[str]:
    """The printed job, one string a line; the launcher must exit 0."""
    rc = TARGETS[argv[0]].main([f"--source={repo}", f"--flagfile={FLAGFILE}", *argv[1:]])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out.splitlines()


def remote_command(cmd: list[str]) -> str:
    """The shell command an ssh line runs on the machine."""
    found = [a.split("=", 1)[1] for a in cmd if a.startswith("--command=")]
    return found[0] if found else cmd[-1]


def check_lines(lines: list[str]) -> list[list[str]]:
    """Every line is a shell-quoted command (or a comment); remote commands are valid shell."""
    cmds = []
    for line in lines[1:]:
        if line.startswith("#") or line == "wait":
            continue
        cmd = shlex.split(line.removesuffix(" &"))
        assert shlex.join(cmd) == line.removesuffix(" &")
        if "ssh" in cmd:
            subprocess.run(["bash", "-n", "-c", remote_command(cmd)], check=True)
        cmds.append(cmd)
    return cmds


def members(tarball: Path) -> set[str]:
    with tarfile.open(tarball) as tar:
        return {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}


def check_install(command: str, extra: str) -> None:
    assert "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user" in command
    assert f"uv=={launch.UV_VERSION}" in command
    assert "python3 -m uv python install 3.12" in command
    assert "python3 -m uv venv -q --clear --python 3.12 .venv" in command
    assert f'--exclude-newer {DATE} -e ./src "jax[{extra}]==0.10.2"' in command
    assert "tar -xzf dqnx-src.tar.gz -C dqnx/src" in command
    assert "sudo" not in command and "python3 -m venv" not in command


def test_pack_ships_the_tracked_tree_as_it_is_on_disk(repo, tmp_path, capsys):
    tarball = tmp_path / "src.tar.gz"
    assert launch.execute_pipeline(launch.pack_commands(str(repo), str(tarball))) == 0
    capsys.readouterr()  # the pipeline, printed as it runs
    assert members(tarball) == set(TRACKED)  # no .venv/, runs/, caches or untracked files
    with tarfile.open(tarball) as tar:
        assert tar.extractfile("experiments/run.py").read() == b"print('edited')\n"
    # The printed line builds the same tarball.
    line = dry(capsys, repo, "tpu", "--name=vm", "--zone=z", f"--tarball={tmp_path / 'p.tgz'}")[0]
    subprocess.run(["bash", "-o", "pipefail", "-c", line], check=True)
    assert members(tmp_path / "p.tgz") == set(TRACKED)


def test_tpu_single_host(repo, tmp_path, capsys):
    tarball = str(tmp_path / "src.tar.gz")
    argv = ["tpu", "--name=vm", "--zone=z", "--project=p", f"--tarball={tarball}", *PINS]
    lines = dry(capsys, repo, *argv, "--", "--num_seeds=2")
    assert lines[0] == shlex.join(["git", "-C", str(repo), "ls-files", "-z"]) + " | " + (
        shlex.join(["tar", "-C", str(repo), "-czf", tarball, "--null", "-T", "-"])
    )
    create, copy, install, train, fetch, delete = check_lines(lines)
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = ["--zone=z", "--project=p"]
    assert create == [
        *tpu,
        "create",
        "vm",
        *where,
        "--accelerator-type=v4-8",
        "--version=tpu-ubuntu2204-base",
    ]
    assert copy == [*tpu, "scp", tarball, "vm:dqnx-src.tar.gz", *where, "--worker=all"]
    assert install[:9] == [*tpu, "ssh", "vm", *where, "--worker=all"]
    check_install(remote_command(install), "tpu")
    assert remote_command(train) == (
        'set -e; cd dqnx/src; trap "exit 143" TERM; ../.venv/bin/python experiments/run.py '
        f"--flagfile={FLAGFILE} --workdir=../runs/vm --num_seeds=2"
    )
    assert fetch == [*tpu, "scp", "--recurse", "vm:dqnx/runs/vm", "runs/", *where, "--worker=0"]
    assert delete == [*tpu, "delete", "vm", *where, "--quiet"]
    assert "--keep" not in lines and not any(".venv" in c for c in copy)


@pytest.mark.parametrize(
    "accelerator, runtime",
    [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-32", "v2-alpha-tpuv5"),
        ("v6e-16", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_pod_runs_every_step_on_every_worker(repo, capsys, accelerator, runtime):
    lines = dry(capsys, repo, "tpu", "--name=pod", "--zone=z", f"--accelerator_type={accelerator}")
    create, copy, install, train, fetch, _ = check_lines(lines)
    assert f"--version={runtime}" in create
    for cmd in (copy, install, train):
        assert "--worker=all" in cmd
    assert "--worker=0" in fetch  # worker 0 writes the logs
    assert "--coordinator_address" not in remote_command(train)  # found from TPU metadata


def test_keep_leaves_the_vm(repo, capsys):
    lines = dry(capsys, repo, "tpu", "--name=vm", "--zone=z", "--keep")
    assert not any(" delete " in line for line in lines)


@pytest.mark.parametrize("where", ["before", "after"])
def test_tpu_spot_passes_the_bucket_workdir(repo, capsys, where):
    workdir = "--workdir=gs://bucket/dqnx/breakout"
    before, after = ([workdir], []) if where == "before" else ([], [workdir])
    argv = ["tpu", "--name=vm", "--zone=z", "--accelerator_type=v4-32", "--spot", *PINS]
    lines = dry(capsys, repo, *argv, *before, "--", "--num_seeds=8", *after)
    create, copy, install, train, delete = check_lines(lines)
    assert create[-1] == "--spot"
    assert remote_command(train).endswith(
        f"--flagfile={FLAGFILE} --workdir=gs://bucket/dqnx/breakout --num_seeds=8"
    )
    assert delete[4] == "delete"  # nothing to fetch: the run is in the bucket
    comment = next(line for line in lines if line.startswith("#"))
    assert "describe vm --zone=z '--format=value(state)'" in comment
    assert "PREEMPTED" in comment and "at most 10 times" in comment


@pytest.mark.parametrize("workdir", [[], ["--workdir=runs/local"], ["--", "--workdir=/mnt/x"]])
def test_spot_without_a_bucket_is_a_one_line_error(repo, capsys, workdir):
    argv = [f"--source={repo}", "--name=vm", "--zone=z", "--spot", *workdir]
    assert TARGETS["tpu"].main(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert len(out.err.splitlines()) == 1 and "--spot needs --workdir=gs://" in out.err


def test_two_workdirs_and_an_untracked_flagfile_are_errors(repo, capsys):
    main, argv = TARGETS["tpu"].main, [f"--source={repo}", "--name=vm", "--zone=z"]
    assert main([*argv, "--workdir=gs://a/b", "--", "--workdir=gs://c/d"]) == 2
    assert main([*argv, "--flagfile=notes.txt"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "two workdirs" in err[0] and "`git add` it" in err[1]


def test_defaults_pin_the_jax_installed_here_and_resolve_as_of_now(repo, capsys):
    install = check_lines(dry(capsys, repo, "tpu", "--name=vm", "--zone=z"))[2]
    command = remote_command(install)
    assert f'"jax[tpu]=={importlib.metadata.version("jax")}"' in command
    assert re.search(r"--exclude-newer \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", command)


def test_extras_go_with_the_editable_install(repo, capsys):
    argv = ["gpu", "--hosts=h", "--extras=host,atari", *PINS]
    install = check_lines(dry(capsys, repo, *argv))[1]
    assert install[2].endswith(
        f'--exclude-newer {DATE} -e "./src[host,atari]" "jax[cuda12]==0.10.2"'
    )
    assert TARGETS["gpu"].main([f"--source={repo}", "--hosts=h", "--extras=a;b"]) == 2


def test_gpu_single_node(repo, tmp_path, capsys):
    tarball = str(tmp_path / "src.tar.gz")
    argv = ["gpu", "--hosts=me@gpu-box", f"--tarball={tarball}", *PINS]
    lines = dry(capsys, repo, *argv, "--", "--num_seeds=8")
    copy, install, train, fetch = check_lines(lines)
    assert copy == ["scp", tarball, "me@gpu-box:dqnx-src.tar.gz"]
    assert install[:2] == ["ssh", "me@gpu-box"]
    check_install(install[2], "cuda12")
    assert train[2].endswith(
        f"run.py --flagfile={FLAGFILE} --workdir=../runs/x --num_seeds=8"
    )  # one process sees all GPUs: no coordinator
    assert fetch == ["scp", "-r", "me@gpu-box:dqnx/runs/x", "runs/"]


def test_gpu_compute_engine_vm(repo, capsys):
    argv = ["gpu", "--instances=a100", "--zone=z", "--project=p", "--workdir=gs://b/r", *PINS]
    copy, install, train = check_lines(dry(capsys, repo, *argv))
    where = ["--zone=z", "--project=p"]
    assert copy[:3] == ["gcloud", "compute", "scp"] and copy[-2:] == where
    assert install[:6] == ["gcloud", "compute", "ssh", "a100", *where]
    check_install(remote_command(install), "cuda12")
    assert "--workdir=gs://b/r" in remote_command(train)


def test_gpu_nodes_get_their_process_ids(repo, capsys):
    hosts = "me@10.0.0.1,10.0.0.2,10.0.0.3"
    argv = ["gpu", f"--hosts={hosts}", "--workdir=gs://b/r", *PINS]
    lines = dry(capsys, repo, *argv, "--", "--num_seeds=8")
    cmds = check_lines(lines)
    assert [c[0] for c in cmds] == ["scp"] * 3 + ["ssh"] * 6  # no fetch: the run is in the bucket
    assert lines[-1] == "wait" and all(line.endswith(" &") for line in lines[-4:-1])
    for i, train in enumerate(cmds[6:]):
        assert train[1] == hosts.split(",")[i]
        assert remote_command(train).endswith(
            "--workdir=gs://b/r --coordinator_address=10.0.0.1:8476 --num_processes=3 "
            f"--process_id={i} --num_seeds=8"
        )
    assert TARGETS["gpu"].main([f"--source={repo}", f"--hosts={hosts}"]) == 2
    assert "several nodes" in capsys.readouterr().err


# --------------------------------------------------------------------- --run with a fake gcloud


def run_fake(repo: Path, tmp_path: Path, *argv: str, **env: str):
    """Runs scripts/launch_tpu.py --run with tests/fake_gcloud/gcloud first on PATH."""
    bin_dir, state = tmp_path / "bin", tmp_path / "gcloud"
    bin_dir.mkdir()
    shutil.copy(ROOT / "tests" / "fake_gcloud" / "gcloud", bin_dir / "gcloud")
    (bin_dir / "gcloud").chmod(0o755)
    environ = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GCLOUD_DIR": str(state),
        **env,
    }
    cmd = [sys.executable, str(ROOT / "scripts" / "launch_tpu.py"), "--run", "--poll_s=0"]
    cmd += [f"--source={repo}", f"--flagfile={FLAGFILE}", f"--tarball={tmp_path / 'src.tgz'}"]
    result = subprocess.run([*cmd, *argv], env=environ, capture_output=True, text=True)
    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    return result, calls, state


def steps(calls: list[list[str]]) -> list[str]:
    """The gcloud calls as step names."""
    names = []
    for call in calls:
        verb, command = call[3], remote_command(call) if call[3] == "ssh" else ""
        if verb == "scp":
            verb = "fetch" if "--recurse" in call else "copy"
        elif verb == "ssh":
            verb = "train" if "experiments/run.py" in command else "install"
        names.append(verb)
    return names


SPOT = ["--name=vm", "--zone=z", "--accelerator_type=v4-32", "--spot", "--workdir=gs://b/r", *PINS]
ONE_TRY = ["create", "copy", "install", "train"]


def test_spot_run_recreates_a_preempted_vm_and_resumes(repo, tmp_path):
    result, calls, state = run_fake(repo, tmp_path, *SPOT, "--", "--num_seeds=8")
    assert result.returncode == 0, result.stderr
    assert steps(calls) == ONE_TRY + ["describe", "delete"] + ONE_TRY + ["delete"]
    trains = [c for c in calls if steps([c]) == ["train"]]
    assert trains[0] == trains[1]  # the same command: it resumes from gs://b/r
    assert "--workdir=gs://b/r --num_seeds=8" in remote_command(trains[0])
    assert calls[0][-1] == "--spot" and calls[6][-1] == "--spot"
    assert members(state / "uploaded-dqnx-src.tar.gz") == set(TRACKED)
    assert "vm was preempted (1); re-creating it" in result.stderr
    assert not (state / "state-vm").exists()  # deleted at the end


def test_spot_run_stops_on_a_failed_run(repo, tmp_path):
    env = {"FAKE_GCLOUD_PREEMPTIONS": "0", "FAKE_GCLOUD_TRAIN_RC": "1"}
    result, calls, state = run_fake(repo, tmp_path, *SPOT, **env)
    assert result.returncode == 1
    assert steps(calls) == ONE_TRY + ["describe", "delete"]
    assert "train failed (1); the job stops" in result.stderr


def test_spot_run_gives_up_after_max_preemptions(repo, tmp_path):
    env = {"FAKE_GCLOUD_PREEMPTIONS": "5"}
    result, calls, _ = run_fake(repo, tmp_path, *SPOT, "--max_preemptions=1", **env)
    assert result.returncode == 255
    assert steps(calls) == (ONE_TRY + ["describe", "delete"]) * 2
    assert "preempted 2 times (--max_preemptions=1)" in result.stderr


def test_run_without_spot_fetches_the_run_and_deletes_the_vm(repo, tmp_path):
    env = {"FAKE_GCLOUD_PREEMPTIONS": "0"}
    result, calls, _ = run_fake(repo, tmp_path, "--name=vm", "--zone=z", *PINS, **env)
    assert result.returncode == 0, result.stderr
    assert steps(calls) == ONE_TRY + ["fetch", "delete"]
    assert calls[-2][-1] == "--worker=0"
    assert "--spot" not in calls[0]


def test_gpu_run_trains_on_all_nodes_at_once(repo, tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("ssh", "scp"):  # log the call; the node with process id 1 fails its run
        fake = bin_dir / tool
        fake.write_text(
            f'#!/bin/sh\necho "{tool} $1" >> "{log}"\n'
            'case "$*" in *--process_id=1*) exit 3;; esac\n'
        )
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, str(ROOT / "scripts" / "launch_gpu.py"), "--run", f"--source={repo}"]
    cmd += [f"--flagfile={FLAGFILE}", "--hosts=h0,h1", "--workdir=gs://b/r"]
    cmd += [f"--tarball={tmp_path / 'src.tgz'}", *PINS]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 3
    calls = log.read_text().splitlines()
    copy = f"scp {tmp_path / 'src.tgz'}"
    assert calls[:4] == [copy, copy, "ssh h0", "ssh h1"]  # copy, then install, node by node
    assert sorted(calls[4:]) == ["ssh h0", "ssh h1"]  # the two runs
    printed = result.stdout.splitlines()
    assert printed[-1] == "wait" and "--process_id=1" in printed[-2] and printed[-2].endswith("&")
    assert "train failed (3)" in result.stderr
