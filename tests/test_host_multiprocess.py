"""Host actors over several processes (``jax.distributed`` on the loopback address,
gloo CPU collectives): each process runs its own actors, one learner spans every
process's learner devices."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jax_cache import compilation_cache_env

ROOT = Path(__file__).resolve().parents[1]
# The command line (dqnx.flags.main) with each process's summary printed as JSON,
# what its actors gave the learner recorded, and, when DQNX_TEST_FAIL names this
# process, an environment that raises after 60 steps.
DRIVER = """
import hashlib, json, os, sys
import jax
from dqnx import flags, shell
from dqnx.host_actors.program import HostActorProgram
taken = []  # (transitions, digest of their observations) per iteration
join = HostActorProgram._join
def counted(self, batches):
    items = join(self, batches)
    taken.append((len(items.action), hashlib.sha256(items.obs.tobytes()).hexdigest()))
    return items
HostActorProgram._join = counted
start = HostActorProgram._start_actors
def failing(self, *args):
    make = self._make_env
    def make_env(n, seed, **kw):
        env, calls = make(n, seed, **kw), [0]
        step = env.step
        def broken(actions):
            calls[0] += 1
            if calls[0] > 60:
                raise RuntimeError("emulator crashed")
            return step(actions)
        env.step = broken
        return env
    if os.environ.get("DQNX_TEST_FAIL") == str(jax.process_index()):
        self._make_env = make_env
    start(self, *args)
HostActorProgram._start_actors = failing
run = shell.run
def report(*args, **kwargs):
    s = run(*args, **kwargs)
    keep = ("env_steps_per_seed", "params_digest", "local_params_digest", "resumed_from")
    print(json.dumps({"process": jax.process_index(), "taken": taken,
                      **{k: s[k] for k in keep}}))
    return s
shell.run = report
sys.exit(flags.main(sys.argv))
"""
FLAGS = [
    "--env_name=gymnasium:CartPole-v1", "--num_envs=4", "--actor_threads=1",
    "--actor_devices=1", "--learner_devices=1", "--buffer_size=2000", "--batch_size=32",
    "--hidden_sizes=32", "--learning_starts=200", "--log_every=400", "--eval_every=800",
    "--eval_episodes=3", "--target_update_period=50", "--checkpoint_every=800",
    "--notensorboard", "--env_options=max_episode_steps=60",
]  # fmt: skip


CACHE: dict = {}  # JAX's compilation cache, shared by this module's runs


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    CACHE.update(compilation_cache_env(tmp_path_factory.mktemp("jax_cache")))
    yield
    CACHE.clear()


def run_processes(workdir: Path, *args: str, devices=(2, 2), timeout=240, env=None):
    """Runs one process of the command line per entry of ``devices`` (its CPU
    device count), all of one run; returns their (returncode, stdout, stderr)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for i, count in enumerate(devices):
        penv = dict(os.environ, PYTHONPATH=str(ROOT), **CACHE, **(env or {}))
        penv["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        command = [sys.executable, "-c", DRIVER, *FLAGS, *args, f"--workdir={workdir}",
                   f"--coordinator_address=127.0.0.1:{port}",
                   f"--num_processes={len(devices)}", f"--process_id={i}"]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=penv))  # fmt: skip
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


def summary_of(out: str) -> dict:
    return json.loads([x for x in out.splitlines() if x.startswith("{")][-1])


def errors(err: str) -> list[str]:
    return [x for x in err.strip().splitlines() if not x.startswith("[Gloo]")]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """2 processes x (1 actor + 1 learner device), 1,600 env steps."""
    workdir = tmp_path_factory.mktemp("host_mp") / "run"
    results = run_processes(workdir, "--total_steps=1600")
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    return workdir, results


def test_two_processes_share_one_learner(two_process_run):
    """Both finish with the same parameters, each process's learner device got its
    own actors' transitions, and the run's env steps are the sum of both."""
    workdir, ((_, out0, _), (_, out1, _)) = two_process_run
    assert "learner on 2 device(s) over 2 processes" in out0 and "done:" not in out1
    s0, s1 = summary_of(out0), summary_of(out1)
    assert (s0["process"], s1["process"]) == (0, 1)
    assert s0["params_digest"] == s1["params_digest"]  # the gathered parameters
    assert s0["local_params_digest"] == s1["local_params_digest"] != "copies-differ"
    # Each iteration takes 2 envs x 1 step from each process's own actors (seeded
    # apart): 400 iterations of 4 transitions in all.
    for s in (s0, s1):
        assert [n for n, _ in s["taken"]] == [2] * 400
    assert s0["env_steps_per_seed"] == 1600 == sum(n for s in (s0, s1) for n, _ in s["taken"])
    assert {h for _, h in s0["taken"]}.isdisjoint(h for _, h in s1["taken"])
    # Process 0 alone writes the run's files; both wrote the checkpoints together.
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["params_digest"] == s0["params_digest"]
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in records] == [600, 1000, 1400, 1600]
    last = records[-1]
    assert last["replay_ratio"] == 32 / 4  # 1 update of 32 per iteration of 4 transitions
    assert len(last["eval_return"]) == 1 and 0 < last["eval_return"][0] <= 60
    assert (workdir / "checkpoints" / "1600").is_dir()


def test_two_processes_resume_together(two_process_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(two_process_run[0], workdir)
    results = run_processes(workdir, "--total_steps=2000")
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    s0, s1 = (summary_of(out) for _, out, _ in results)
    assert s0["resumed_from"] == s1["resumed_from"] == 1600
    assert s0["env_steps_per_seed"] == 2000 and s0["params_digest"] == s1["params_digest"]
    assert [n for n, _ in s1["taken"]] == [2] * 100


def test_an_actor_failure_on_one_process_stops_both(tmp_path):
    """Process 1's environment raises: both processes exit 1, none hangs in a collective."""
    t0 = time.time()
    (rc0, _, err0), (rc1, _, err1) = run_processes(
        tmp_path / "run", "--total_steps=100000", env={"DQNX_TEST_FAIL": "1"}, timeout=120
    )
    assert time.time() - t0 < 120
    assert rc0 == rc1 == 1, (err0[-2000:], err1[-2000:])
    assert errors(err0)[-1] == "error: process 1 failed; see its error"
    assert errors(err1)[-1] == "error: dqnx-actor-1 failed: RuntimeError: emulator crashed"


def test_processes_with_different_splits_are_a_one_line_error(tmp_path):
    """3 devices on process 1 give its learner 2 devices, process 0's only 1."""
    results = run_processes(tmp_path / "w", "--learner_devices=0", devices=(2, 3), timeout=120)
    for rc, _, err in results:
        lines = errors(err)
        assert rc == 2 and len(lines) == 1, err[-3000:]
        assert "host actors need the same devices and split on every process" in lines[0]
        assert "process 0: 2 devices, 1 actor + 1 learner x 1 thread(s)" in lines[0]
        assert "process 1: 3 devices, 1 actor + 2 learner x 1 thread(s)" in lines[0]
    assert not (tmp_path / "w").exists()


def test_a_killed_process_stops_the_other_in_one_line_then_both_resume(tmp_path):
    """kill -9 of process 1 mid-chunk: process 0 exits 1 with one line within 60 s
    (not after JAX's heartbeat timeout and a stack trace); rerunning both resumes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path / "run"
    procs = []
    for i in range(2):
        penv = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **CACHE)
        penv["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        command = [sys.executable, str(ROOT / "experiments" / "run.py"), *FLAGS,
                   "--total_steps=400000", "--checkpoint_every=400", f"--workdir={workdir}",
                   f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}"]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=penv))  # fmt: skip
    try:
        line = ""
        while not line.startswith("steps ") and procs[0].poll() is None:
            line = procs[0].stdout.readline()
        assert line.startswith("steps "), procs[0].stderr.read()[-2000:]
        time.sleep(1.0)
        procs[1].kill()
        t0 = time.time()
        _, err = procs[0].communicate(timeout=90)
        took = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 1 and took < 60, (took, err[-2000:])
    lines = errors(err)
    assert len(lines) == 1 and lines[0].startswith("error: another process of this run stopped")
    results = run_processes(workdir, "--total_steps=2400", "--checkpoint_every=400")
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    s0 = summary_of(results[0][1])
    assert s0["resumed_from"] is not None and s0["env_steps_per_seed"] == 2400


def test_one_process_with_the_same_actors_gives_the_same_digest(two_process_run, tmp_path):
    """The fixed schedule spans processes: 1 process with 2 actor devices and the
    2-device learner makes the run of 2 processes with one of each."""
    workdir, ((_, out0, _), _) = two_process_run
    penv = dict(os.environ, PYTHONPATH=str(ROOT), **CACHE)
    penv["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    flags = [f for f in FLAGS if not f.startswith(("--actor_devices", "--learner_devices"))]
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *flags, "--actor_devices=2",
         "--learner_devices=2", "--total_steps=1600", f"--workdir={tmp_path}"],
        capture_output=True, text=True, env=penv, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    single = json.loads((tmp_path / "summary.json").read_text())
    assert single["params_digest"] == summary_of(out0)["params_digest"]
