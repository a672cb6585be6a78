"""The compiled suites' adapters (craftax:, navix:, jumanji:, pgx:): each one's
reset/step contract (shapes, dtypes, done flags, same-step auto-reset), the
legal-action masks, and one-line errors for unknown names and missing extras."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dqnx
from dqnx import builder, checks, env_suites
from dqnx.errors import ConfigError
from dqnx.legal import random_legal


def rollout(env, num_envs, steps, seed=0, actions=None):
    """``steps`` steps of ``num_envs`` envs, random legal actions (or ``actions``):
    (first obs, per-step [T, N] Steps, the acting masks [T, N, A])."""
    obs, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(seed), num_envs))

    def body(carry, xs):
        (obs, state), (key, scripted) = carry, xs
        k_act, k_env = jax.random.split(key)
        legal = (
            jax.vmap(env.legal)(state)
            if env.legal
            else jnp.ones((num_envs, env.spec.num_actions), bool)
        )
        action = jnp.where(scripted >= 0, scripted, random_legal(k_act, legal))
        state, step = jax.vmap(env.step)(jax.random.split(k_env, num_envs), state, action)
        return (step.obs, state), (obs, action, legal, step)

    # actions: [T] played by every env; -1 (and the default): random legal ones
    scripted = jnp.full(steps, -1) if actions is None else jnp.asarray(actions)
    run = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))
    keys = jax.random.split(jax.random.key(seed + 1), steps)
    _, out = run((obs, state), (keys, scripted.astype(jnp.int32)))
    return jax.tree.map(np.asarray, out)


def check_contract(env, out, obs_shape, obs_dtype):
    """What every adapter promises, read off a rollout."""
    obs, action, legal, step = out
    spec = env.spec
    assert spec.obs_shape == obs_shape and spec.obs_dtype == np.dtype(obs_dtype)
    assert obs.shape[2:] == obs_shape and obs.dtype == obs_dtype
    assert step.next_obs.shape == obs.shape and step.obs.dtype == obs.dtype
    assert step.reward.dtype == np.float32 and step.terminated.dtype == np.bool_
    assert not (step.terminated & step.truncated).any()
    done = step.terminated | step.truncated
    assert done.any()
    # The next step acts on step.obs; where nothing ended, that is next_obs.
    np.testing.assert_array_equal(obs[1:][~done[:-1]], step.next_obs[:-1][~done[:-1]])
    # Episode length and return: counted from the reset, reported at the end.
    length = np.zeros(done.shape[1], int)
    ret = np.zeros(done.shape[1], np.float64)
    for t in range(done.shape[0]):
        length += 1
        ret += step.reward[t]
        np.testing.assert_array_equal(step.episode_length[t], length)
        np.testing.assert_allclose(step.episode_return[t], ret, rtol=1e-5, atol=1e-5)
        length[done[t]] = 0
        ret[done[t]] = 0
    if env.legal is not None:
        assert step.next_legal.shape == (*done.shape, spec.num_actions)
        assert legal[np.arange(len(action))[:, None], np.arange(action.shape[1]), action].all()
        # Acting masks are the previous step's next_legal where nothing ended.
        np.testing.assert_array_equal(legal[1:][~done[:-1]], step.next_legal[:-1][~done[:-1]])
    else:
        assert step.next_legal is None
    return done


# ------------------------------------------------------------------------- pgx


@pytest.fixture(scope="module")
def tic_tac_toe():
    pytest.importorskip("pgx")
    return env_suites.make("pgx:tic_tac_toe")


def test_pgx_tic_tac_toe_contract_and_opponent(tic_tac_toe):
    """Player 0's view (planes: own marks, opponent's marks); the random opponent
    has moved whenever the agent acts (one mark more of its, or as many as the
    agent's); the legal actions are the empty cells; wins +1, losses -1."""
    env = tic_tac_toe
    out = rollout(env, 8, 40)
    done = check_contract(env, out, (3, 3, 2), np.bool_)
    obs, action, legal, step = out
    assert env.spec.num_actions == 9 and step.terminated[done].all()  # no time limit
    own, other = obs[..., 0].reshape(*obs.shape[:2], 9), obs[..., 1].reshape(*obs.shape[:2], 9)
    assert ((other.sum(-1) - own.sum(-1)) >= 0).all() and ((other.sum(-1) - own.sum(-1)) <= 1).all()
    np.testing.assert_array_equal(legal, ~(own | other))
    assert set(np.unique(step.reward[done])) <= {-1.0, 0.0, 1.0}
    assert (step.reward[~done] == 0).all() and {-1.0, 1.0} <= set(np.unique(step.reward[done]))
    # A win: the agent's own marks in the true final observation make a line.
    lines = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]
    final_own = step.next_obs[..., 0].reshape(*done.shape, 9)
    won = np.array([[any(final_own[t, i, list(ln)].all() for ln in lines) for i in range(8)]
                    for t in range(40)])  # fmt: skip
    np.testing.assert_array_equal(won & done, (step.reward == 1) & done)


def test_pgx_names_and_errors(monkeypatch):
    pytest.importorskip("pgx")
    with pytest.raises(ConfigError, match=r"did you mean pgx:tic_tac_toe"):
        env_suites.check_env_name("pgx:tic_tac_to")
    with pytest.raises(ConfigError, match="unknown option 'max_steps' for pgx:tic_tac_toe"):
        env_suites.check_env_name("pgx:tic_tac_toe", max_steps=3)
    monkeypatch.setitem(sys.modules, "pgx", None)  # as if not installed
    with pytest.raises(ConfigError) as e:
        env_suites.check_env_name("pgx:tic_tac_toe")
    assert str(e.value) == "pgx: envs need the pgx package: pip install 'dqnx[pgx]'"


def test_config_validation_routes_suite_names():
    """Suite names train in the compiled mode; bad ones fail validation in one line."""
    assert not builder.uses_host_actors(dqnx.Config(env_name="pgx:tic_tac_toe"))
    assert builder.uses_host_actors(dqnx.Config(env_name="minatar:breakout"))
    pytest.importorskip("pgx")
    cases = {
        "--env_name=pgx:connect_fuor: unknown pgx environment": dict(env_name="pgx:connect_fuor"),
        "--munchausen: pgx:tic_tac_toe has a legal-action mask": dict(
            env_name="pgx:tic_tac_toe", munchausen=True
        ),
        "--normalize_obs applies to gymnax": dict(env_name="pgx:tic_tac_toe", normalize_obs=True),
        "--env_options applies to LIB:ID": dict(env_options=("max_steps=3",)),
    }
    for message, fields in cases.items():
        with pytest.raises(ConfigError, match=message) as e:
            checks.validate(dqnx.Config(**fields))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- jumanji


def test_jumanji_tetris_flattens_actions_and_masks():
    """Tetris' (rotation, column) actions are one set of 4 x 10; the mask is the
    observation's action_mask flattened the same way; obs_keys picks fields."""
    pytest.importorskip("jumanji")
    env = env_suites.make("jumanji:Tetris-v0")
    assert env.spec.num_actions == 40 and env.spec.max_episode_steps == 400
    out = rollout(env, 4, 40)
    # grid 10x10 + tetromino 4x4 + step_count, flattened (action_mask left out)
    done = check_contract(env, out, (117,), np.float32)
    obs, action, legal, step = out
    assert step.terminated[done].all() and not legal.all()
    grid = env_suites.make("jumanji:Tetris-v0", obs_keys="grid")
    assert grid.spec.obs_shape == (10, 10) and grid.spec.obs_dtype == np.int32
    with pytest.raises(ConfigError, match=r"no observation field 'gird' \(did you mean grid\?\)"):
        env_suites.make("jumanji:Tetris-v0", obs_keys="gird")
    with pytest.raises(ConfigError, match="one action per agent"):
        env_suites.make("jumanji:Cleaner-v0")
    with pytest.raises(ConfigError, match=r"did you mean jumanji:Snake-v1"):
        env_suites.check_env_name("jumanji:Snake-v2")


def test_jumanji_maze_truncates_at_its_time_limit():
    """Maze's time limit (discount 1 at the last step) is a truncation."""
    pytest.importorskip("jumanji")
    env = env_suites.make("jumanji:Maze-v0")
    out = rollout(env, 4, 110, actions=None)
    done = check_contract(env, out, env.spec.obs_shape, np.float32)
    step = out[3]
    assert step.truncated.any()
    assert (step.episode_length[step.truncated] == env.spec.max_episode_steps).all()
    assert (step.episode_length[step.terminated] <= env.spec.max_episode_steps).all()
    assert done.sum() == step.terminated.sum() + step.truncated.sum()


# ------------------------------------------------------------------------ navix


def test_navix_empty_terminates_at_the_goal_and_truncates_at_max_steps():
    pytest.importorskip("navix")
    with pytest.raises(ConfigError, match=r"did you mean navix:Navix-Empty-5x5-v0"):
        env_suites.check_env_name("navix:Navix-Empty-5x5-v1")
    env = env_suites.make("navix:Navix-Empty-5x5-v0", max_steps=8)
    assert env.legal is None and env.spec.num_actions == 7
    # forward, forward, turn right, forward, forward reaches the goal from the start
    # (MiniGrid's actions: 0 left, 1 right, 2 forward); then random actions for 8 steps
    out = rollout(env, 2, 13, actions=[2, 2, 1, 2, 2] + [-1] * 8)
    check_contract(env, out, (5, 5, 3), np.uint8)
    step = out[3]
    assert step.terminated[4].all() and step.terminated.sum() == 2
    assert step.truncated[12].all() and step.truncated.sum() == 2
    assert (step.reward[4] > 0).all() and (step.reward[~step.terminated] == 0).all()
    assert (step.next_obs[4] != step.obs[4]).any()  # the true final view; obs: a reset one


# ---------------------------------------------------------------------- craftax


def test_craftax_classic_truncates_at_max_timesteps():
    """Craftax-Classic-Symbolic with a 3-step limit: a truncation at step 3 (not a
    termination), then a fresh episode; float32 observations of 1,345."""
    pytest.importorskip("craftax")
    env = env_suites.make("craftax:Craftax-Classic-Symbolic-v1", max_timesteps=3)
    assert env.spec.num_actions == 17 and env.legal is None
    obs, state = jax.jit(env.reset)(jax.random.key(0))
    assert obs.shape == (1345,) and obs.dtype == jnp.float32
    step = jax.jit(env.step)
    ends = []
    for t in range(4):
        state, s = step(jax.random.key(t + 1), state, jnp.int32(0))  # noop
        ends.append((bool(s.terminated), bool(s.truncated), int(s.episode_length)))
    assert ends == [(False, False, 1), (False, False, 2), (False, True, 3), (False, False, 1)]


# --------------------------------------------------------- masks through training


def test_masked_training_stores_and_acts_on_legal_moves_only():
    """A compiled pgx tic-tac-toe run (2-step returns, C51): every action in replay
    (random prefill and epsilon-greedy) is an empty cell of its observation, and the
    stored mask is the empty cells of the observation bootstrapped from. A gymnax
    run's replay has no mask at all."""
    pytest.importorskip("pgx")
    from dqnx import compiled

    config = dqnx.Config(
        env_name="pgx:tic_tac_toe", num_envs=4, buffer_size=512, batch_size=16,
        hidden_sizes=(16,), learning_starts=64, total_steps=400, n_step=2, learner="c51",
        num_atoms=11, v_min=-1.0, v_max=1.0, epsilon_decay_steps=200, network="mlp",
    ).check_fields()  # fmt: skip
    fns = compiled.make_train_fns(config)
    state, _ = jax.jit(fns.prefill)(jax.jit(fns.init)())
    state, metrics = jax.jit(fns.run_chunk)(state, jnp.int32(40))
    assert np.isfinite(np.asarray(metrics.loss_sum)).all()
    data, size = state.replay.data, int(state.replay.size)
    obs, next_obs = np.asarray(data.obs[0, :size]), np.asarray(data.next_obs[0, :size])
    action, next_legal = np.asarray(data.action[0, :size]), np.asarray(data.next_legal[0, :size])
    assert size >= 40 * 4 and next_legal.shape == (size, 9)
    empty = ~(obs[..., 0] | obs[..., 1]).reshape(size, 9)
    assert empty[np.arange(size), action].all()
    live = ~np.asarray(data.terminated[0, :size])
    next_empty = ~(next_obs[..., 0] | next_obs[..., 1]).reshape(size, 9)
    np.testing.assert_array_equal(next_legal[live], next_empty[live])

    gymnax = compiled.make_train_fns(dqnx.Config(num_envs=2, buffer_size=64).check_fields())
    assert jax.eval_shape(gymnax.init).replay.data.next_legal is None
