"""Data parallelism over devices and processes (each case in its own subprocess,
since the device count is fixed when JAX starts)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, devices: int, extra_env=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _json_line(out: str) -> dict:
    return json.loads([x for x in out.splitlines() if x.startswith("{")][-1])


EQUIVALENCE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
import dqnx
from dqnx import builder, parallel
from dqnx.types import Transition

config = dqnx.Config(hidden_sizes=(32, 32), double_q=True, target_update_period=2,
                     max_grad_norm=1.0, loss="huber", learning_rate=1e-2)
net = builder.make_network(config, (4,), 2)
one = builder.make_learner(config, net, axis_name=None)
four = builder.make_learner(config, net, axis_name=parallel.DATA)
state = one.init(jax.random.key(0), jnp.zeros((1, 4)))
B = 64
k = jax.random.split(jax.random.key(1), 5)
batches = [Transition(
    obs=jax.random.normal(jax.random.fold_in(k[0], i), (B, 4)),
    action=jax.random.randint(jax.random.fold_in(k[1], i), (B,), 0, 2),
    reward=jax.random.normal(jax.random.fold_in(k[2], i), (B,)),
    next_obs=jax.random.normal(jax.random.fold_in(k[3], i), (B, 4)),
    terminated=jax.random.bernoulli(jax.random.fold_in(k[4], i), 0.2, (B,)),
) for i in range(3)]
mesh = parallel.make_mesh(parallel.Layout(1, 4))
update4 = jax.jit(parallel.spmd(four.update, mesh, (P(), P(parallel.DATA)), (P(), P())))
update1 = jax.jit(one.update)
s1, s4 = state, state
for batch in batches:  # three updates, one target refresh
    s1, m1 = update1(s1, batch)
    s4, m4 = update4(s4, batch)
diff = lambda a, b: max(float(jnp.max(jnp.abs(x - y))) for x, y in
                        zip(jax.tree.leaves(a), jax.tree.leaves(b)))
moved = diff(s1.params, state.params)
print(json.dumps({"devices": len(mesh.devices.flat), "params": diff(s1.params, s4.params),
                  "target": diff(s1.target_params, s4.target_params),
                  "opt": diff(s1.opt_state, s4.opt_state),
                  "loss": abs(float(m1["loss"] - m4["loss"])),
                  "moved": moved}))
"""


def test_four_device_update_equals_one_device_update():
    p = _python(EQUIVALENCE, devices=4)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    r = _json_line(out)
    assert r["devices"] == 4 and r["moved"] > 1e-3  # the updates did something
    assert max(r["params"], r["target"], r["opt"], r["loss"]) <= 1e-5, r


MULTIHOST = """
import json, sys
from dqnx import parallel
parallel.initialize_distributed("127.0.0.1:{port}", 2, {pid})
import jax
import dqnx
from dqnx import train
config = dqnx.Config(env_name="CartPole-v1", num_seeds=1, num_devices=4, num_envs=4,
                     buffer_size=1000, batch_size=32, hidden_sizes=(16,), learning_starts=64,
                     total_steps=1200, log_every=400, checkpoint_every=400, eval_every=0,
                     eval_episodes=2, tensorboard=False)
s = train.run(config, {workdir!r})
print(json.dumps({{"pid": jax.process_index(), "processes": jax.process_count(),
                  "devices": jax.device_count(), "local": s["local_params_digest"],
                  "global": s["params_digest"]}}))
"""


def _two_processes(code: str, workdir: Path) -> tuple[list[tuple[str, str]], dict, dict]:
    """Runs ``code`` (formatted with a free port, the process id and ``workdir``) as
    processes 0 and 1 of one ``jax.distributed`` run, 2 CPU devices each; both must
    exit 0. Returns their (stdout, stderr) and the last JSON line each printed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        _python(code.format(port=port, pid=i, workdir=str(workdir)), devices=2) for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (_json_line(out) for out, _ in outs)
    return outs, r0, r1


def test_two_processes_train_identically_and_only_process_0_writes(tmp_path):
    workdir = tmp_path / "run"
    outs, r0, r1 = _two_processes(MULTIHOST, workdir)
    assert (r0["processes"], r0["devices"], r1["pid"]) == (2, 4, 1)
    assert r0["local"] == r1["local"] != "copies-differ"  # same params on all 4 devices
    assert r0["global"] == r1["global"]
    assert "steps" in outs[0][0] and "steps" not in outs[1][0]  # process 0 logs
    files = {p.name for p in workdir.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "summary.json"} <= files
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["env_steps"] for x in lines] == [464, 864, 1200]  # one writer
    assert (workdir / "checkpoints" / "1200").is_dir()


SWEEP_MULTIHOST = """
import json
from dqnx import parallel
parallel.initialize_distributed("127.0.0.1:{port}", 2, {pid})
import jax
import dqnx
from dqnx import train
config = dqnx.Config(env_name="CartPole-v1", num_seeds=2, num_envs=4, buffer_size=500,
                     batch_size=16, hidden_sizes=(8,), learning_starts=64, total_steps=600,
                     log_every=200, eval_every=0, eval_episodes=2, tensorboard=False,
                     seed_group_size=1, sweep=("learning_rate=1e-3,3e-4",))
s = train.run(config, {workdir!r})
print(json.dumps({{"pid": jax.process_index(), "runs": s["runs"]}}))
"""


def test_a_sweep_spreads_its_runs_over_two_processes(tmp_path):
    """2 configurations x 2 seeds over 2 processes x 2 devices (seeds over devices);
    every process sees the same runs, process 0 writes them."""
    workdir = tmp_path / "sweep"
    _, r0, r1 = _two_processes(SWEEP_MULTIHOST, workdir)
    assert r0["runs"] == r1["runs"]
    runs = json.loads((workdir / "summary.json").read_text())["runs"]
    assert [(r["learning_rate"], r["seed"]) for r in runs] == [
        (1e-3, 0), (1e-3, 1), (3e-4, 0), (3e-4, 1),
    ]  # fmt: skip
    digests = [r["params_digest"] for r in runs]
    assert digests == [r["params_digest"] for r in r0["runs"]] and len(set(digests)) == 4
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["sweep/learning_rate"] == [1e-3, 1e-3, 3e-4, 3e-4]
