"""Host actors: transitions from scripted environments, back-pressure, failures,
and the host-actor mode end to end through the command line."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax_cache import compilation_cache_env
from tiny_configs import CARTPOLE

import dqnx
from dqnx import checkpoint, checks, host_envs
from dqnx.host_actors import ActorCore, ActorThread, ParameterServer
from dqnx.networks import MLP

ROOT = Path(__file__).resolve().parents[1]
GAMMA = 0.9
TERMINATE = [3, None, 5]  # env 1 only ever truncates
TRUNCATE = [None, 4, 7]


def start_actor(env, *, queue_size=64, **kwargs):
    """One actor thread acting uniformly at random (nothing published) on ``env``;
    returns (thread, its queue, its stop event)."""
    server = ParameterServer(jax.local_devices()[:1])
    out: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    core = ActorCore(
        0, env, MLP(env.spec.num_actions, (4,)), jax.local_devices()[0], lambda _: 1.0, None,
        gamma=GAMMA, seed=0, **kwargs,
    )  # fmt: skip
    actor = ActorThread(core, server, out, stop)
    actor.start()
    return actor, out, stop


def collect(n_step: int, autoreset: str, batches: int = 12):
    """Runs one actor thread (uniformly random actions) and returns what it sent."""
    env = host_envs.make_scripted_env(3, TERMINATE, TRUNCATE, num_actions=3, autoreset=autoreset)
    actor, out, stop = start_actor(env, rollout_steps=2, n_step=n_step)
    got = [out.get(timeout=30) for _ in range(batches)]
    stop.set()
    actor.join(timeout=10)
    assert actor.error is None
    return got


def episode_length(env: int) -> int:
    ends = [t for t in (TERMINATE[env], TRUNCATE[env]) if t is not None]
    return min(ends)


@pytest.mark.parametrize("autoreset", [host_envs.SAME_STEP, host_envs.NEXT_STEP])
@pytest.mark.parametrize("n_step", [1, 3])
def test_actor_transitions_are_exact(n_step, autoreset):
    got = collect(n_step, autoreset)
    assert all(len(b.items.action) == 3 * 2 for b in got)  # envs x rollout_steps each
    items = jax.tree.map(lambda *x: np.concatenate(x), *(b.items for b in got))
    obs, next_obs = items.obs.astype(int), items.next_obs.astype(int)
    actions = {tuple(o): int(a) for o, a in zip(obs, items.action, strict=True)}
    assert len(actions) == len(obs)  # no step sent twice
    for i, (o, nxt) in enumerate(zip(obs, next_obs, strict=True)):
        env, episode, t = o
        length = episode_length(env)
        assert t < length  # a final observation never starts a transition
        assert nxt[0] == env and nxt[1] == episode  # never across a reset
        k = min(n_step, length - t)
        assert nxt[2] == t + k
        terminated = TERMINATE[env] is not None and t + k == TERMINATE[env]
        assert bool(items.terminated[i]) == terminated
        # The reward of a step is its action: sum them from the actions sent.
        later = [actions.get((env, episode, t + j)) for j in range(k)]
        if None not in later:
            expected = sum(GAMMA**j * a for j, a in enumerate(later))
            np.testing.assert_allclose(items.reward[i], expected, rtol=1e-6)
        if n_step > 1:
            np.testing.assert_allclose(items.discount[i], GAMMA**k * (1 - terminated), rtol=1e-6)
    # Every step of each env up to the last sent one was sent (none lost).
    for env in range(3):
        seen = sorted((e, t) for (x, e, t) in actions if x == env)
        last_episode = seen[-1][0]
        for episode in range(last_episode):
            assert [t for e, t in seen if e == episode] == list(range(episode_length(env)))
    # Episode statistics: full episodes only, returns = sum of their rewards.
    assert sum(b.episodes for b in got) > 5


def test_full_queue_makes_the_actor_wait():
    env = host_envs.make_scripted_env(2, 5, None)
    actor, out, stop = start_actor(env, queue_size=2, rollout_steps=1, n_step=1)
    time.sleep(1.0)
    taken = actor.steps_taken
    time.sleep(0.5)
    assert out.qsize() == 2 and actor.steps_taken == taken == 2 * 3  # 2 queued + 1 waiting
    stop.set()
    actor.join(timeout=5)
    assert not actor.is_alive()


def test_parameter_copies_survive_donation():
    """Actors hold copies made at publish time; the learner's donated update
    cannot invalidate them."""
    server = ParameterServer(jax.local_devices()[:1])
    params = {"w": jax.numpy.ones(3)}
    server.publish(params, 7)
    bump = jax.jit(lambda p: {"w": p["w"] + 1}, donate_argnums=0)
    params = bump(params)
    copy, version = server.latest(jax.local_devices()[0])
    assert version == 7 and np.asarray(copy["w"]).tolist() == [1.0, 1.0, 1.0]


def test_parameter_server_gives_the_version_asked_for():
    """``get`` waits for a version not yet published and returns exactly the one
    asked for even when newer ones exist; old versions beyond ``keep`` go."""
    device = jax.local_devices()[0]
    server = ParameterServer([device], keep=2)
    got = []
    waiter = threading.Thread(target=lambda: got.append(server.get(device, 4, lambda: False)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # nothing published yet: it waits
    server.publish({"w": jax.numpy.full(2, 0.0)}, 0)
    time.sleep(0.3)
    assert not got  # version 0 is older than 4: still waiting
    server.publish({"w": jax.numpy.full(2, 4.0)}, 4)
    waiter.join(timeout=5)
    server.publish({"w": jax.numpy.full(2, 8.0)}, 8)
    assert got[0][0] and float(got[0][1]["w"][0]) == 4.0
    assert float(server.get(device, 4, lambda: False)[1]["w"][0]) == 4.0  # not the newest
    assert float(server.get(device, 6, lambda: False)[1]["w"][0]) == 4.0  # newest <= 6
    assert [v for v, _ in server.published()] == [4, 8]  # version 0 dropped (keep=2)
    assert server.get(device, 12, lambda: True) == (False, None)  # gave up waiting
    assert server.get(device, -1, lambda: False) == (True, None)  # RANDOM


HOST_FLAGS = [
    "--env_name=gymnasium:CartPole-v1", "--num_envs=4", "--actor_threads=2",
    "--buffer_size=2000", "--batch_size=32", "--hidden_sizes=32", "--learning_starts=200",
    "--log_every=400", "--eval_every=800", "--eval_episodes=2", "--target_update_period=50",
    "--checkpoint_every=400", "--notensorboard", "--env_options=max_episode_steps=60",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    """This module's run.py subprocesses compile the same host programs: they share
    one persistent compilation cache (the test process's JAX, imported already,
    does not read these variables)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in compilation_cache_env(tmp_path_factory.mktemp("jax_cache")).items():
            mp.setenv(name, value)
        yield


def cli(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *HOST_FLAGS, *args],
        capture_output=True, text=True, env=env, **kwargs,
    )  # fmt: skip


def test_host_mode_writes_the_contract_files(tmp_path):
    r = cli("--total_steps=1600", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env_steps_per_seed"] == 1600 and summary["num_seeds"] == 1
    assert len(summary["params_digest"]) == 1 and len(summary["eval_return_per_seed"]) == 1
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in records] == [600, 1000, 1400, 1600]
    last = records[-1]
    for key in ("staleness_mean", "queue_mean", "replay_ratio", "actor_sps", "eval_return"):
        assert key in last, key
    assert last["replay_ratio"] == pytest.approx(32 / 4)  # 1 update of 32 per 4 transitions
    assert 0 < last["eval_return"][0] <= 60
    assert (tmp_path / "checkpoints" / "1600").is_dir()
    # The run's checkpoint plays again through `python -m dqnx.evaluate`.
    r = subprocess.run(
        [sys.executable, "-m", "dqnx.evaluate", f"--workdir={tmp_path}", "--episodes=3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "@ env step 1,600: return" in r.stdout
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["episodes"] == 3 and 0 < evaluation["return_mean"] <= 60


def test_host_mode_resumes_after_kill(tmp_path):
    """kill -9 after the first checkpoint; the same command resumes from it."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *HOST_FLAGS,
         "--total_steps=40000", f"--workdir={tmp_path}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # A checkpoint is complete once its manifest is written (after orbax's rename):
    # one killed between the two is damaged and the resume falls back past it.
    first = tmp_path / "checkpoints" / "1000" / checkpoint.MANIFEST
    deadline = time.time() + 240
    while not first.is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file()
    steps = sorted(
        int(p.name)
        for p in (tmp_path / "checkpoints").iterdir()
        if p.name.isdigit() and (p / checkpoint.MANIFEST).is_file()
    )
    r = cli("--total_steps=2000", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] == steps[-1] and summary["env_steps_per_seed"] == 2000
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    env_steps = [json.loads(x)["env_steps"] for x in lines]
    assert env_steps == sorted(set(env_steps)) and env_steps[-1] == 2000


def test_sigterm_checkpoints_and_exits(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *HOST_FLAGS,
         "--total_steps=400000", f"--workdir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM" in out and "checkpoint saved" in out
    assert any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())


def test_an_environment_error_stops_the_run(tmp_path):
    """An exception in an actor thread ends the run with exit 1 and one line."""
    from dqnx.host_actors import HostActorProgram

    class Broken:
        def __init__(self, env):
            self.env, self.spec, self.num_envs, self.calls = env, env.spec, env.num_envs, 0

        def reset(self, seed=None):
            return self.env.reset(seed)

        def step(self, actions):
            self.calls += 1
            if self.calls > 50:
                raise RuntimeError("emulator crashed")
            return self.env.step(actions)

        def close(self):
            self.env.close()

    def make_env(n, seed, **_):
        return Broken(host_envs.make_scripted_env(n, 7, None))

    config = checks.validate(
        dqnx.Config(
            env_name="gymnasium:CartPole-v1",
            num_envs=4,
            buffer_size=1000,
            batch_size=32,
            learning_starts=64,
            total_steps=20_000,
            log_every=200,
            hidden_sizes=(8,),
            tensorboard=False,
        )  # fmt: skip
    )
    t0 = time.time()
    with pytest.raises(dqnx.shell.RunFailed, match="dqnx-actor-.* failed: RuntimeError: emulator"):
        dqnx.shell.run(
            config, tmp_path, quiet=True,
            program_factory=lambda c: HostActorProgram(c, make_env=make_env),
        )  # fmt: skip
    assert time.time() - t0 < 60


def test_distributional_noisy_munchausen_learner_on_host_actors(tmp_path):
    """IQN + M-IQN + noisy nets + prioritized replay, epsilon 0: the actor threads
    and the evaluation act on the quantile means with keyed noise and fractions."""
    config = checks.validate(
        CARTPOLE.replace(
            env_name="gymnasium:CartPole-v1",
            num_seeds=1,
            actor_threads=2,
            buffer_size=2000,
            hidden_sizes=(32,),
            learning_starts=200,
            total_steps=1_000,
            log_every=400,
            checkpoint_every=0,
            eval_every=0,
            target_update_period=50,
            tensorboard=False,
            learner="iqn",
            num_tau_samples=8,
            num_tau_prime_samples=8,
            num_quantile_samples=8,
            munchausen=True,
            noisy=True,
            prioritized=True,
            epsilon_start=0.0,
            epsilon_end=0.0,
            env_options=("max_episode_steps=60",),
        )  # fmt: skip
    )
    summary = dqnx.train.run(config, tmp_path, quiet=True)
    assert summary["env_steps_per_seed"] == 1_000
    assert 0 < summary["eval_return_per_seed"][0] <= 60
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"][0]) for r in records)
    assert records[-1]["epsilon"] == 0.0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num_seeds=2"], "one process per --seed"),
        (["--num_envs=5"], "--num_envs=5 must be divisible by the 2 actor thread"),
        (["--env_name=gymnasium:CartPol-v1"], "CartPole-v1"),
        (["--env_options=oops"], "KEY=VALUE"),
    ],
)
def test_bad_host_flags_are_one_line_errors(tmp_path, args, message):
    r = cli(*args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "w").exists()


def test_data_parallel_learner_over_two_devices(tmp_path):
    """1 actor device + 2 learner devices (simulated CPU devices)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    r = cli("--total_steps=1000", "--actor_devices=1", "--learner_devices=2",
            f"--workdir={tmp_path}", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "learner on 2 device(s)" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["local_params_digest"] != "copies-differ"  # pmean kept them equal


def test_frame_actor_blocks_rebuild_the_environment_stacks():
    """Frame mode on real ALE: the actor's FrameStep blocks, added to a frame
    replay, give back every observation the environment showed (a second env
    with the same seed replays the recorded actions)."""
    pytest.importorskip("ale_py")
    from dqnx import frame_replay

    options = dict(max_num_frames_per_episode=120, protocol="machado")
    make = lambda: host_envs.make_host_env("ale:pong", 2, 5, **options)  # noqa: E731
    actor, out, stop = start_actor(make(), rollout_steps=5, n_step=1, frames=True)
    blocks = [out.get(timeout=60).items for _ in range(14)]  # 70 steps: 2 episodes each
    stop.set()
    actor.join(timeout=10)
    steps = jax.tree.map(lambda *x: np.concatenate(x), *blocks)  # [70, 2, ...]
    buffer = frame_replay.frame_replay(1, 2, 80, n_step=1, gamma=GAMMA, block_size=5)
    state = buffer.init(jax.tree.map(lambda x: x[0], steps))
    add = jax.jit(buffer.add)
    for b in blocks:
        state = add(state, 0, b)
    # The reference: the same env, seed and actions.
    env = make()
    obs = [env.reset(seed=None)]
    nxt = []
    for t in range(70):
        step = env.step(steps.action[t].astype(np.int32))
        nxt.append(step.next_obs)
        obs.append(step.obs)
    env.close()
    assert steps.truncated.any()  # episode ends are in the test
    slots = np.arange(70 * 2)
    batch, valid = jax.jit(buffer.lookup)(state, slots)
    valid = np.asarray(valid)
    assert valid[: 69 * 2].all()  # all but the newest row (its next obs is not written yet)
    for slot in np.flatnonzero(valid):
        t, e = divmod(int(slot), 2)
        np.testing.assert_array_equal(np.asarray(batch.obs[slot]), obs[t][e])
        np.testing.assert_array_equal(np.asarray(batch.next_obs[slot]), nxt[t][e])


def test_atari_frame_replay_run(tmp_path):
    """ale:pong through the whole pipeline: frame blocks -> frame replay -> learner
    (C51 with a dueling noisy head: actors and evaluation act on its expectations)."""
    pytest.importorskip("ale_py")
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), "--env_name=ale:pong",
         "--frame_replay", "--clip_rewards", "--network=mlp", "--hidden_sizes=16",
         "--learner=c51", "--num_atoms=11", "--v_max=2", "--v_min=-2", "--dueling", "--noisy",
         "--num_envs=2", "--actor_threads=1", "--rollout_steps=4", "--buffer_size=4000",
         "--batch_size=8", "--learning_starts=64", "--total_steps=256", "--log_every=64",
         "--eval_every=0", "--eval_episodes=1", "--notensorboard", "--n_step=3",
         "--env_options=max_num_frames_per_episode=400", f"--workdir={tmp_path}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env_steps_per_seed"] == 256
    assert -21 <= summary["eval_return_per_seed"][0] <= 21
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"][0]) for r in records)
    from dqnx import evaluate

    result = evaluate.evaluate(tmp_path, episodes=1)  # an ALE run evaluates too
    assert result["env_steps"] == 256 and -21 <= result["return_mean"] <= 21
