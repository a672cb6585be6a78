"""Host actors reproduce: the fixed schedule gives the same run whatever the timing
(random delays injected into actors and learner), and a run killed with kill -9
and resumed ends with the digest of the run never stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jax_cache import compilation_cache_env
from tiny_configs import CARTPOLE

import dqnx
from dqnx import checkpoint, checks
from dqnx.host_actors import HostActorProgram

ROOT = Path(__file__).resolve().parents[1]

COMMON = dict(
    num_seeds=1, num_envs=4, rollout_steps=2, updates_per_iteration=2, buffer_size=2000,
    hidden_sizes=(32,), learning_starts=200, total_steps=1_600, log_every=400,
    checkpoint_every=0, eval_every=0, eval_episodes=2, target_update_period=50,
    tensorboard=False, epsilon_decay_steps=1_000, actor_sync_period=3,
)  # fmt: skip
CONFIGS = {
    "cartpole": dict(env_name="gymnasium:CartPole-v1", env_options=("max_episode_steps=60",)),
    # Sticky actions on (MinAtar's own generator), 3-step returns, prioritized replay.
    "breakout": dict(
        env_name="minatar:breakout",
        network="mlp",
        n_step=3,
        prioritized=True,
        env_options=("max_episode_steps=100",),
    ),  # fmt: skip
}


def run(tmp_path, name, threads, delays=False, **changes):
    config = checks.validate(
        CARTPOLE.replace(**COMMON, **CONFIGS[name], actor_threads=threads, **changes)
    )
    rng = np.random.default_rng()  # unseeded: the timing differs every run

    def delay(actor):  # actors sleep up to 4 ms per rollout, the learner up to 20 ms
        return float(rng.uniform(0, 0.004 if actor is not None else 0.02))

    summary = dqnx.shell.run(
        config, tmp_path, quiet=True,
        program_factory=lambda c: HostActorProgram(c, delay=delay if delays else None),
    )  # fmt: skip
    return summary


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["cartpole", "breakout"])
def test_same_digest_under_any_timing(tmp_path, name, threads):
    quiet = run(tmp_path / "quiet", name, threads)
    loaded = run(tmp_path / "delays", name, threads, delays=True)
    assert quiet["params_digest"] == loaded["params_digest"]
    assert quiet["eval_return_per_seed"] == loaded["eval_return_per_seed"]
    assert quiet["exact_resume"] is True
    # Another seed is another run.
    other = run(tmp_path / "other", name, threads, seed=1)
    assert other["params_digest"] != quiet["params_digest"]
    if threads == 1:  # the run's checkpoint evaluates (MinAtar and Gymnasium)
        from dqnx import evaluate

        result = evaluate.evaluate(tmp_path / "quiet", episodes=2)
        assert result["env_steps"] == 1_600 and np.isfinite(result["return_mean"])


def test_async_schedule_runs_and_says_it_cannot_resume_exactly(tmp_path):
    summary = run(tmp_path, "cartpole", 2, actor_schedule="async")
    assert summary["env_steps_per_seed"] == 1_600
    assert summary["exact_resume"] is False
    assert "async" in summary["exact_resume_problem"]


def test_actor_lag_zero_and_two_are_runs_of_their_own(tmp_path):
    digests = {lag: run(tmp_path / str(lag), "cartpole", 1, actor_lag=lag)["params_digest"]
               for lag in (0, 1, 2)}  # fmt: skip
    assert len(set(map(tuple, digests.values()))) == 3
    assert (
        run(tmp_path / "again", "cartpole", 1, actor_lag=0, delays=True)["params_digest"]
        == (digests[0])
    )


# ---- kill -9 and resume, through the command line --------------------------------------

KILL_FLAGS = {
    "cartpole": ["--env_name=gymnasium:CartPole-v1", "--env_options=max_episode_steps=60"],
    "breakout": [
        "--env_name=minatar:breakout",
        "--network=mlp",
        "--n_step=3",
        "--env_options=max_episode_steps=100",
    ],  # fmt: skip
}
KILL_COMMON = [
    "--num_envs=4", "--actor_threads=2", "--rollout_steps=2", "--updates_per_iteration=2",
    "--buffer_size=2000", "--batch_size=32", "--hidden_sizes=32", "--learning_starts=200",
    "--total_steps=4000", "--log_every=200", "--checkpoint_every=200", "--eval_every=0",
    "--eval_episodes=2", "--target_update_period=50", "--notensorboard", "--actor_sync_period=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    cache = compilation_cache_env(tmp_path_factory.mktemp("jax_cache"))
    return dict(os.environ, PYTHONUNBUFFERED="1", **cache)


def _start(name, workdir, env):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *KILL_FLAGS[name], *KILL_COMMON,
         f"--workdir={workdir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(name, workdir, env):
    p = _start(name, workdir, env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    return json.loads((workdir / "summary.json").read_text())


@pytest.mark.parametrize("name", ["cartpole", "breakout"])
def test_kill_9_then_resume_ends_with_the_straight_runs_digest(tmp_path, cli_env, name):
    straight = _finish(name, tmp_path / "straight", cli_env)
    rng = random.Random(name)
    workdir = tmp_path / "killed"
    kills = 0
    for _ in range(2):  # two kills at random moments of training
        p = _start(name, workdir, cli_env)
        line = ""
        while not line.startswith("steps ") and p.poll() is None:
            line = p.stdout.readline()
        time.sleep(rng.uniform(0.0, 1.5))
        p.kill()
        p.communicate(timeout=60)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL
        kills += 1
    assert kills >= 1
    resumed = _finish(name, workdir, cli_env)
    assert checkpoint.Checkpointer(workdir / "checkpoints").latest_step() == 4000
    assert resumed["resumed_from"] is not None and resumed["exact_resume"] is True
    assert resumed["params_digest"] == straight["params_digest"]
