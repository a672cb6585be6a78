import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_configs import CARTPOLE

import dqnx
from dqnx import builder, compiled, train, xla
from dqnx.compiled import seed_group_size

ROOT = Path(__file__).resolve().parents[1]

TINY = CARTPOLE.replace(
    checkpoint_every=100_000,
    hidden_sizes=(32,),
    learning_starts=200,
    log_every=400,
    eval_every=800,
    eval_episodes=3,
    target_update_period=50,
)


@pytest.fixture(scope="module")
def tiny_fns():
    return compiled.make_train_fns(TINY.check_fields())


def start_program(fns):
    """A function that returns ``fns``' initial state after prefill (and prefill's
    metrics); init and prefill compiled once, as ``compile_train`` compiles them
    (faster to compile on CPU)."""
    init = xla.compile(jax.jit(fns.init).lower(), xla.program_options(hot=False, trivial=True))
    prefill_jit = jax.jit(fns.prefill)
    prefill = xla.compile(
        prefill_jit.lower(jax.eval_shape(fns.init)), xla.program_options(hot=False, run_once=True)
    )
    return lambda: prefill(init())


def prefilled(fns):
    return start_program(fns)()


def test_seeds_are_independent(tiny_fns):
    state = jax.jit(tiny_fns.init)()
    w = np.asarray(state.learner.params["params"]["Dense_0"]["kernel"])
    assert w.shape[0] == 2 and not np.allclose(w[0], w[1])  # own network init
    obs = np.asarray(state.actor.obs)
    assert not np.allclose(obs[0], obs[1])  # own env resets
    keys = jax.random.key_data(state.actor.key)
    assert not np.array_equal(keys[0], keys[1])  # own exploration keys
    # seed i of a sweep is the run of --seed=seed+i
    single = compiled.make_train_fns(TINY.replace(num_seeds=1, seed=1).check_fields())
    w1 = np.asarray(jax.jit(single.init)().learner.params["params"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(w1[0], w[1])


def test_chunk_does_not_recompile(tiny_fns):
    state, _ = prefilled(tiny_fns)
    chunk = jax.jit(tiny_fns.chunk, donate_argnums=0)
    steps = []
    for _ in range(3):
        state, metrics = chunk(state)
        steps.append(int(state.env_steps))
    assert chunk._cache_size() == 1
    assert steps == [600, 1000, 1400]  # 200 prefill steps, then 400 per chunk
    assert int(metrics.num_updates) == 100
    loss = np.asarray(metrics.loss_sum)
    assert loss.shape == (2,) and np.isfinite(loss).all() and (loss > 0).all()


def test_one_chunk_program_runs_any_length(tiny_fns):
    """The trip count is a traced scalar: 3 then 2 iterations equal 5, one compile."""
    run = jax.jit(tiny_fns.run_chunk)
    start, _ = prefilled(tiny_fns)
    a, m3 = run(start, jnp.int32(3))
    a, m2 = run(a, jnp.int32(2))
    b, m5 = run(start, jnp.int32(5))
    assert run._cache_size() == 1
    assert int(a.env_steps) == int(b.env_steps) == 200 + 5 * 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_allclose(m3.loss_sum + m2.loss_sum, m5.loss_sum, rtol=1e-5)
    assert int(m3.num_updates) + int(m2.num_updates) == int(m5.num_updates) == 5


def test_chunk_reports_the_env_step_of_the_first_nonfinite_loss(monkeypatch):
    """A learner whose loss turns NaN from its 4th update on: the chunk names the
    env step of that iteration (200 prefill steps + 4 iterations of 4 steps)."""
    config = TINY.check_fields()
    make_learner = builder.make_learner

    def nan_from_update_4(*args, **kwargs):
        base = make_learner(*args, **kwargs)

        def update(state, batch):
            state, metrics = base.update(state, batch)
            loss = jnp.where(state.num_updates >= 4, jnp.nan, metrics["loss"])
            return state, dict(metrics, loss=loss)

        return base._replace(update=update)

    monkeypatch.setattr(builder, "make_learner", nan_from_update_4)
    fns = compiled.make_train_fns(config)
    state, _ = prefilled(fns)
    _, metrics = jax.jit(fns.run_chunk)(state, jnp.int32(10))
    np.testing.assert_array_equal(np.asarray(metrics.first_nonfinite), [216, 216])


def test_run_is_deterministic_and_writes_contract_files(tmp_path):
    a = train.run(TINY, tmp_path / "a", quiet=True)
    b = train.run(TINY, tmp_path / "b", quiet=True)
    assert a["params_digest"] == b["params_digest"]
    assert len(a["params_digest"]) == 2 and a["params_digest"][0] != a["params_digest"][1]
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in a["params_digest"])
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda r: {k: v for k, v in r.items() if k not in ("sps", "wall_s")}
    assert [strip(json.loads(x)) for x in lines_a] == [strip(json.loads(x)) for x in lines_b]
    records = [json.loads(x) for x in lines_a]
    assert [r["env_steps"] for r in records] == [600, 1000, 1400, 1800, 2000]
    for key in ("env_steps", "sps", "train_return", "loss", "epsilon"):
        assert key in records[0]
    assert len(records[0]["loss"]) == 2
    assert "eval_return" in records[1] and "eval_return" in records[-1]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    for key in (
        "env",
        "num_seeds",
        "env_steps_per_seed",
        "wall_s",
        "compile_s",
        "sps",
        "eval_return_per_seed",
        "params_digest",
    ):
        assert key in summary
    assert summary["env_steps_per_seed"] == 2000 and summary["num_seeds"] == 2
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert dqnx.Config.from_dict(config) == TINY.replace(workdir=str(tmp_path / "a"))


def test_cartpole_learns(tmp_path):
    """A fixed seed and a small budget: greedy return must clear 150 (random: ~20)."""
    flags = ROOT / "experiments" / "configs" / "cartpole.flags"
    from absl import flags as absl_flags

    from dqnx import flags as dqnx_flags

    fv = absl_flags.FlagValues()
    dqnx_flags.define_flags(fv)
    fv([sys.argv[0], f"--flagfile={flags}", "--total_steps=60000", "--eval_every=0"])
    config = dqnx_flags.config_from_flags(fv).replace(num_seeds=1, seed=0)
    summary = train.run(config, tmp_path / "cp", quiet=True)
    assert summary["eval_return_mean"] >= 150, summary["eval_return_per_seed"]


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "cli"
    r = _cli(
        f"--flagfile={ROOT / 'experiments/configs/cartpole.flags'}",
        f"--workdir={out}",
        "--total_steps=3000",
        "--learning_starts=500",
        "--log_every=1000",
        "--buffer_size=2000",
        "--hidden_sizes=16",
        "--num_seeds=2",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "steps" in r.stdout and "sps" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_seeds"] == 2 and len(summary["params_digest"]) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--env_name=CartPol-v1"], "did you mean CartPole-v1"),
        (["--batch_size=512", "--buffer_size=100"], "exceeds --buffer_size"),
        (["--gamma=1.5"], "--gamma must be in [0, 1]"),
        (["--no_such_flag=1"], "no_such_flag"),
        (["--flagfile=/nonexistent.flags"], "nonexistent"),
        (["--learning_rate=0"], "learning_rate"),
    ],
)
def test_cli_bad_input(tmp_path, args, message):
    r = _cli(*args, f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "w").exists()


# python -X importtime lists every module a run imports on stderr.
_IMPORTS = re.compile(r"^import time:.*\|\s+(\S+)$", re.M)


@pytest.mark.parametrize(
    "args", [["--gamma=1.5"], ["--no_such_flag=1"], ["--batch_size=512", "--buffer_size=100"]]
)
def test_bad_flags_are_answered_before_jax_loads(tmp_path, args):
    """A mistake in a flag's own value costs a fraction of a second, not JAX's import."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "experiments" / "run.py"), *args],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    imported = set(_IMPORTS.findall(r.stderr))
    assert "dqnx.flags" in imported and "dqnx.config" in imported
    assert not {m for m in imported if m.split(".")[0] in ("jax", "flax", "gymnax")}


def test_help_lists_the_flags(tmp_path):
    r = _cli("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: run.py")
    for flag in ("--gamma", "--learner", "--num_seeds", "--flagfile"):
        assert flag in r.stdout


def test_apex_rainbow_options_compose():
    """n-step + prioritized + dueling + Ape-X epsilons + actor sync in one program."""
    config = TINY.replace(
        n_step=3,
        prioritized=True,
        dueling=True,
        exploration="apex",
        actor_sync_period=3,
        updates_per_iteration=2,
    ).check_fields()
    fns = compiled.make_train_fns(config)
    state, _ = prefilled(fns)
    assert int(state.env_steps) == config.prefill_steps == 200  # 8 warm-up + 48 x 4
    assert int(state.replay.size) == 192  # warm-up steps make no transition
    state, metrics = jax.jit(fns.chunk)(state)
    assert np.isfinite(np.asarray(metrics.loss_sum)).all()
    size = int(state.replay.size)
    gamma3 = np.float32(config.gamma) ** 3
    discount = np.asarray(state.replay.data.discount[:, :size])
    full = np.isclose(discount, gamma3, rtol=1e-6)
    # A window that starts in the last 2 steps of an episode ends terminal: discount 0.
    assert (full | (discount == 0)).all() and full.mean() > 0.6
    obs = np.asarray(state.replay.data.obs[:, :size])
    assert (np.abs(obs).sum(-1) > 0).all()  # no placeholder from an unfilled window
    # Priorities moved away from uniform, and the root holds their sum.
    tree = np.asarray(state.replay.tree)
    leaves = tree[:, tree.shape[1] // 2 :][:, :size]
    assert leaves.std(axis=1).min() > 0
    np.testing.assert_allclose(tree[:, 1], tree[:, tree.shape[1] // 2 :].sum(1), rtol=1e-4)
    # 200 updates, refresh every 3: the actors hold the parameters of update 198.
    assert int(state.learner.num_updates[0]) == 200
    w_actor = np.asarray(state.actor_params["params"]["Dense_0"]["kernel"])
    w_learner = np.asarray(state.learner.params["params"]["Dense_0"]["kernel"])
    assert not np.allclose(w_actor, w_learner)


# The DQN family on the tiny config: small heads (11 atoms, 8 quantiles or fractions).
FAMILY = TINY.replace(
    hidden_sizes=(16,), num_atoms=11, num_quantiles=8, num_tau_samples=8,
    num_tau_prime_samples=8, num_quantile_samples=8,
)  # fmt: skip


def _head_shapes(params) -> dict:
    """{"Module/.../name": shape} of one seed's head parameters."""
    flat = jax.tree_util.tree_leaves_with_path(params["params"])
    return {"/".join(k.key for k in path): tuple(x.shape[1:]) for path, x in flat
            if "Head" in path[0].key}  # fmt: skip


@pytest.mark.parametrize(
    "options,shapes",
    [
        ({"learner": "qr"}, {"QuantileHead_0/q/kernel": (16, 2 * 8)}),
        ({"munchausen": True}, {"QHead_0/q/kernel": (16, 2)}),
        # Noisy M-IQN with a data-parallel learner (1 seed on 2 devices): the product
        # of the 4 state features and the fraction embedding enters the 16-unit layer.
        (
            {"learner": "iqn", "munchausen": True, "noisy": True, "num_seeds": 1, "num_devices": 2},
            {
                "IQNHead_0/tau_embedding/kernel": (64, 4),
                "IQNHead_0/q_hidden_0/mu_w": (4, 16),
                "IQNHead_0/q/sigma_w": (16, 2),
            },
        ),
    ],
)
def test_learner_options_train(options, shapes):
    """QR-DQN, M-DQN and noisy M-IQN train a few chunks in the compiled mode."""
    config = FAMILY.replace(**options).check_fields()
    fns = compiled.make_train_fns(config, layout=builder.choose_layout(config))
    programs = compiled.compile_train(fns, training=True)
    state, _ = programs.prefill(programs.initial_state)
    for _ in range(2):
        state, metrics = programs.chunk(state, 25)
        loss = np.asarray(metrics.loss_sum)
        assert np.isfinite(loss).all() and (loss > 0).all()
    assert int(metrics.num_updates) == 25
    got = _head_shapes(state.learner.params)
    assert {k: got[k] for k in shapes} == shapes
    if config.learner == "iqn":  # acting and greedy evaluation sample fractions
        assert state.learner.key is not None
        returns = np.asarray(programs.evaluate(state))
        assert returns.shape == (1, config.eval_episodes) and (returns > 0).all()
        np.testing.assert_array_equal(programs.evaluate(state), returns)  # deterministic


def test_rainbow_full_composes_and_noisy_runs_are_deterministic():
    """C51 + prioritized + 3-step + dueling + noisy + Double + Ape-X epsilons + actor
    sync, 2 seeds: finite losses, the heads' shapes, priorities from the loss; the
    same seeds give the same parameters, the two seeds different ones."""
    from dqnx.shell.digest import params_digests

    config = FAMILY.replace(
        learner="c51", prioritized=True, n_step=3, dueling=True, noisy=True, double_q=True,
        exploration="apex", actor_sync_period=3, updates_per_iteration=2,
    ).check_fields()  # fmt: skip
    fns = compiled.make_train_fns(config)
    start_and_prefill = start_program(fns)
    start = lambda: start_and_prefill()[0]
    chunk = jax.jit(fns.run_chunk)

    def run():
        state = start()
        for _ in range(2):
            state, metrics = chunk(state, jnp.int32(25))
            assert np.isfinite(np.asarray(metrics.loss_sum)).all()
        return state

    a, b = run(), run()
    assert params_digests(a.learner.params) == params_digests(b.learner.params)
    digests = params_digests(a.learner.params)
    assert digests[0] != digests[1]
    keys = np.asarray(jax.random.key_data(a.learner.key))
    assert not np.array_equal(keys[0], keys[1])  # each seed its own noise
    assert _head_shapes(a.learner.params) == {
        "DistributionalHead_0/value/mu_w": (16, 11), "DistributionalHead_0/value/sigma_w": (16, 11),
        "DistributionalHead_0/value/mu_b": (11,), "DistributionalHead_0/value/sigma_b": (11,),
        "DistributionalHead_0/advantage/mu_w": (16, 2 * 11),
        "DistributionalHead_0/advantage/sigma_w": (16, 2 * 11),
        "DistributionalHead_0/advantage/mu_b": (2 * 11,),
        "DistributionalHead_0/advantage/sigma_b": (2 * 11,),
    }  # fmt: skip
    # Priorities are cross-entropies: positive, spread, and the root holds their sum.
    size = int(a.replay.size)
    tree = np.asarray(a.replay.tree)
    leaves = tree[:, tree.shape[1] // 2 :][:, :size]
    assert (leaves > 0).all() and leaves.std(axis=1).min() > 0
    np.testing.assert_allclose(tree[:, 1], leaves.sum(1), rtol=1e-4)


def test_seed_groups_match_all_seeds_at_once():
    """A chunk run group after group (2 groups of 2 seeds) gives what one chunk over
    all 4 seeds gives, up to float rounding; shared counters advance once."""
    base = TINY.replace(num_seeds=4, prioritized=True, n_step=3, total_steps=1_200)

    def run(group):
        config = base.replace(seed_group_size=group).check_fields()
        fns = compiled.make_train_fns(config)
        assert fns.seed_group == group
        state, _ = prefilled(fns)
        types_in = [str(jax.typeof(x)) for x in jax.tree.leaves(state)]
        state, metrics = jax.jit(fns.chunk)(state)
        # Its outputs have its inputs' types (the initial state has no weak
        # types), so the next call reuses the compiled chunk.
        assert [str(jax.typeof(x)) for x in jax.tree.leaves(state)] == types_in
        return jax.device_get((state, metrics))

    # The CPU default: pairs for a small learner, one seed at a time for a large one.
    assert seed_group_size(0, 4, learner_size=32 * 226) == 2
    assert seed_group_size(0, 4, learner_size=64 * 132_566) == 1
    (s4, m4), (s2, m2) = run(4), run(2)
    assert int(s2.env_steps) == int(s4.env_steps) > base.learning_starts
    assert int(s2.replay.pos) == int(s4.replay.pos)
    assert int(m2.num_updates) == int(m4.num_updates) > 0
    np.testing.assert_array_equal(m2.episodes.count, m4.episodes.count)
    np.testing.assert_allclose(m2.loss_sum, m4.loss_sum, rtol=1e-4)
    pairs = zip(jax.tree.leaves(s4.learner.params), jax.tree.leaves(s2.learner.params), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert not np.allclose(a[0], a[2])  # the groups hold different seeds
    np.testing.assert_allclose(s4.replay.tree, s2.replay.tree, rtol=1e-4)


def test_compile_train_evaluates_like_the_program_it_defers(tiny_fns):
    """``evaluate`` compiles on a worker thread after the training programs; it
    returns what the same function compiled directly returns."""
    programs = compiled.compile_train(tiny_fns)
    assert isinstance(programs.evaluate, xla.Deferred)
    assert set(programs.compile_parts_s) == {"init", "prefill", "chunk"}
    state, _ = programs.prefill(programs.initial_state)
    state, _ = programs.chunk(state, 3)
    direct = jax.jit(tiny_fns.evaluate)(state)
    np.testing.assert_array_equal(np.asarray(programs.evaluate(state)), np.asarray(direct))
    assert programs.evaluate.seconds() > 0
    assert compiled.compile_train(tiny_fns, training=False).evaluate is not None


def test_progress_ends_on_the_last_whole_iteration(tmp_path, capsys):
    """total_steps=1,000 in iterations of 4 envs x 3 steps ends at 1,008: the progress
    line says 1,008/1,008 (100.0%), not 1,008/1,000 (100.8%)."""
    config = TINY.replace(num_seeds=1, rollout_steps=3, total_steps=1_000, log_every=300)
    summary = train.run(config, tmp_path, quiet=False)
    assert summary["env_steps_per_seed"] == 1_008
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("steps ")]
    assert "1,008/1,008 (100.0%)" in lines[-1]
    # The last chunk is short (3 of 25 iterations): its line shows the run's
    # average speed, not a fixed cost spread over 36 steps; the metric file keeps
    # the chunk's own.
    assert f"{summary['sps'] / 1e3:7.1f}k sps" in lines[-1]
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["sps"] != summary["sps"]
