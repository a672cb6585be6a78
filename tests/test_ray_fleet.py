"""The actor fleet on Ray (``--actors=ray``): the thread run's digest, a killed
actor process restarted, nothing left behind, a joined cluster, bad input.

One Ray head (``ray start --head`` on 127.0.0.1) serves the runs that join a
cluster; the runs that start a local instance each start their own, as a user's
run does."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jax_cache import compilation_cache_env

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--env_name=gymnasium:CartPole-v1", "--num_envs=4", "--buffer_size=2000",
    "--batch_size=32", "--hidden_sizes=32", "--learning_starts=200", "--log_every=400",
    "--eval_every=0", "--eval_episodes=2", "--target_update_period=50", "--notensorboard",
    "--env_options=max_episode_steps=60", "--rollout_steps=2", "--updates_per_iteration=2",
    "--actor_sync_period=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    cache = compilation_cache_env(tmp_path_factory.mktemp("jax_cache"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **cache)
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        env.pop(name, None)
    return env


def _pids(pattern: str) -> set[int]:
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(p) for p in r.stdout.split()}


@pytest.fixture(scope="module")
def head(cli_env, tmp_path_factory):
    """A two-node Ray cluster on 127.0.0.1, the Ape-X shape: a head with no CPUs
    for actors (where the learner runs) and a worker node with 4 (token
    authentication, as a cluster should run). Yields (address, the environment
    its clients need, the worker node's raylet pid)."""
    env = dict(cli_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    port = 6400 + os.getpid() % 500
    temp = Path("/tmp") / f"dqnx-test-ray-{os.getpid()}"
    r = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--include-dashboard=false", "--num-cpus=0", f"--temp-dir={temp}"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    head_raylets = _pids("raylet/raylet")
    r = subprocess.run(
        ["ray", "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=4"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (worker_raylet,) = _pids("raylet/raylet") - head_raylets
    try:
        yield f"127.0.0.1:{port}", env, worker_raylet
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", str(temp)])


def cli(*args, env, **kwargs):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *FLAGS, *args],
        capture_output=True, text=True, env=env, **kwargs,
    )  # fmt: skip


def summary(workdir):
    return json.loads((workdir / "summary.json").read_text())


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:  # gone meanwhile
        return None


def test_a_ray_fleet_makes_the_thread_run(tmp_path, head):
    """On the worker node (the head has no CPUs for actors), the fleet's batches
    are the threads' own: the same digest, before and after a resume."""
    address, env, worker_raylet = head
    threads = cli("--total_steps=1600", "--actor_threads=2", f"--workdir={tmp_path / 't'}",
                  env=env)  # fmt: skip
    assert threads.returncode == 0, threads.stderr[-2000:]
    fleet = subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *FLAGS, "--total_steps=1600",
         "--actors=ray", "--num_actor_processes=2", f"--ray_address={address}",
         f"--workdir={tmp_path / 'r'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = [""]
    while not seen[-1].startswith("steps ") and fleet.poll() is None:
        seen.append(fleet.stdout.readline())
    parents = {_parent(p) for p in _pids("ray::_RemoteActor")} - {None}
    out, err = fleet.communicate(timeout=240)
    assert fleet.returncode == 0, err[-2000:]
    assert parents == {worker_raylet}  # the actors run on the worker node
    assert "2 Ray actor process(es) x 2 envs" in "".join(seen)
    assert summary(tmp_path / "r")["params_digest"] == summary(tmp_path / "t")["params_digest"]
    # Resumed (the actors' cores and undelivered batches in the checkpoint): still exact.
    more = cli("--total_steps=2400", "--actors=ray", "--num_actor_processes=2",
               f"--ray_address={address}", f"--workdir={tmp_path / 'r'}", env=env)  # fmt: skip
    assert more.returncode == 0, more.stderr[-2000:]
    straight = cli("--total_steps=2400", "--actor_threads=2", f"--workdir={tmp_path / 's'}",
                   env=env)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert summary(tmp_path / "r")["resumed_from"] == 1600
    assert summary(tmp_path / "r")["params_digest"] == summary(tmp_path / "s")["params_digest"]


def _actor_pids() -> list[int]:
    r = subprocess.run(["pgrep", "-f", "ray::_RemoteActor"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def test_a_killed_actor_process_is_restarted_and_the_run_finishes(tmp_path, head):
    address, env, _ = head
    before = set(_actor_pids())
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *FLAGS, "--total_steps=12000",
         "--actors=ray", "--num_actor_processes=2", f"--ray_address={address}",
         "--checkpoint_every=0", f"--workdir={tmp_path}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = ""
    while not line.startswith("steps ") and proc.poll() is None:
        line = proc.stdout.readline()
    victims = sorted(set(_actor_pids()) - before)
    assert victims, "no actor process found"
    os.kill(victims[0], signal.SIGKILL)
    t0 = time.time()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert time.time() - t0 < 240
    assert "died at batch" in err and "restarted" in err
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["actor_restarts"] >= 1
    s = summary(tmp_path)
    assert s["env_steps_per_seed"] == 12000 and s["exact_resume"] is False
    assert "restarted" in s["exact_resume_problem"]


def _ray_processes() -> set[int]:
    pattern = "raylet|gcs_server|ray::|dashboard|log_monitor|runtime_env"
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(p) for p in r.stdout.split()}


def _local_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("dqnx-ray-*")}


@pytest.mark.parametrize("ending", ["exit", "SIGTERM", "SIGINT", "SIGKILL"])
def test_a_local_instance_leaves_nothing_behind(tmp_path, cli_env, ending):
    before, dirs = _ray_processes(), _local_dirs()
    home = Path.home() / ".ray"
    had_home = home.exists()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *FLAGS,
         "--total_steps=1200" if ending == "exit" else "--total_steps=400000",
         "--actors=ray", "--num_actor_processes=2", f"--workdir={tmp_path}"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if ending != "exit":
        line = ""
        while not line.startswith("steps ") and proc.poll() is None:
            line = proc.stdout.readline()
        assert _ray_processes() - before, "the run started no Ray process"
        proc.send_signal(getattr(signal, ending))
    out, err = proc.communicate(timeout=120)
    expected = {"exit": 0, "SIGTERM": 0, "SIGINT": 130, "SIGKILL": -signal.SIGKILL}[ending]
    assert proc.returncode == expected, err[-2000:]
    deadline = time.time() + 15
    while (_ray_processes() - before or _local_dirs() - dirs) and time.time() < deadline:
        time.sleep(0.5)
    assert not _ray_processes() - before, "Ray processes left behind"
    assert not _local_dirs() - dirs, "the instance's directory was left behind"
    assert home.exists() == had_home  # no token written under ~/.ray


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num_actor_processes=3"], "--num_envs=4 must be divisible by --num_actor_processes=3"),
        (["--ray_address=127.0.0.1:1"], "--ray_address=127.0.0.1:1: no Ray cluster answers there"),
        (["--ray_address=nonsense"], "must be empty, auto or HOST:PORT"),
        (["--actor_schedule=async"], "--actors=ray needs --actor_schedule=fixed"),
    ],
)
def test_bad_fleet_flags_are_one_line_errors(tmp_path, cli_env, args, message):
    r = cli("--actors=ray", *args, f"--workdir={tmp_path / 'w'}", env=cli_env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "w").exists()


def test_without_ray_the_fleet_is_a_one_line_error(tmp_path, cli_env):
    """A ``ray`` package that fails to import stands in for a missing extra."""
    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = dict(cli_env, PYTHONPATH=str(tmp_path / "fake"))
    r = cli("--actors=ray", f"--workdir={tmp_path / 'w'}", env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines == ["error: --actors=ray needs Ray: pip install 'dqnx[ray]'"]
