import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import nstep
from dqnx.nstep import RolloutStep


def one_env(obs, next_obs, reward, terminated=None, truncated=None):
    """A RolloutStep of one environment ([L, 1] leaves, obs [L, 1, 1])."""
    length = len(reward)

    def flags(x):
        return jnp.asarray(np.zeros(length, bool) if x is None else x)[:, None]

    return RolloutStep(
        obs=jnp.asarray(obs, jnp.float32)[:, None, None],
        action=jnp.arange(length, dtype=jnp.int32)[:, None],
        reward=jnp.asarray(reward, jnp.float32)[:, None],
        next_obs=jnp.asarray(next_obs, jnp.float32)[:, None, None],
        terminated=flags(terminated),
        truncated=flags(truncated),
    )


# Five steps of one environment; the episode ends at step 1 (its true final obs
# is 99) and the next one starts from obs 20.
OBS = [10, 11, 20, 21, 22]
NEXT_OBS = [11, 99, 21, 22, 23]
REWARD = [1, 2, 3, 4, 5]
END = [False, True, False, False, False]


def squeeze(t: nstep.NStepTransition):
    return {k: np.asarray(v).reshape(len(v)) for k, v in t._asdict().items() if v is not None}


def test_n1_is_one_step():
    steps = one_env(OBS, NEXT_OBS, REWARD, terminated=END)
    t = squeeze(nstep.nstep_transitions(steps, 1, 0.9))
    np.testing.assert_array_equal(t["obs"], OBS)
    np.testing.assert_array_equal(t["action"], np.arange(5))
    np.testing.assert_array_equal(t["reward"], REWARD)
    np.testing.assert_array_equal(t["next_obs"], NEXT_OBS)
    np.testing.assert_array_equal(t["terminated"], END)
    np.testing.assert_allclose(t["discount"], [0.9, 0.0, 0.9, 0.9, 0.9], rtol=1e-6)


def test_n3_termination_mid_window():
    steps = one_env(OBS, NEXT_OBS, REWARD, terminated=END)
    t = squeeze(nstep.nstep_transitions(steps, 3, 0.5))
    # t=0: 1 + 0.5*2 (stops at the terminal step 1), no bootstrap
    # t=1: 2, no bootstrap
    # t=2: 3 + 0.5*4 + 0.25*5 = 6.25, bootstrap from obs 23 with 0.5^3
    np.testing.assert_allclose(t["reward"], [2.0, 2.0, 6.25])
    np.testing.assert_allclose(t["discount"], [0.0, 0.0, 0.125])
    np.testing.assert_array_equal(t["next_obs"], [99, 99, 23])
    np.testing.assert_array_equal(t["terminated"], [True, True, False])
    np.testing.assert_array_equal(t["obs"], [10, 11, 20])
    np.testing.assert_array_equal(t["action"], [0, 1, 2])


def test_n3_truncation_mid_window_bootstraps_from_final_obs():
    steps = one_env(OBS, NEXT_OBS, REWARD, truncated=END)
    t = squeeze(nstep.nstep_transitions(steps, 3, 0.5))
    # same sums, but the time limit bootstraps from the true final obs 99
    np.testing.assert_allclose(t["reward"], [2.0, 2.0, 6.25])
    np.testing.assert_allclose(t["discount"], [0.25, 0.5, 0.125])
    np.testing.assert_array_equal(t["next_obs"], [99, 99, 23])
    np.testing.assert_array_equal(t["terminated"], [False, False, False])


@pytest.mark.parametrize(
    "gamma,reward,discount",
    [
        (0.0, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]),
        (1.0, [3.0, 2.0, 12.0], [0.0, 0.0, 1.0]),
        (0.9, [2.8, 2.0, 3 + 0.9 * 4 + 0.81 * 5], [0.0, 0.0, 0.729]),
    ],
)
def test_gamma_values(gamma, reward, discount):
    steps = one_env(OBS, NEXT_OBS, REWARD, terminated=END)
    t = squeeze(nstep.nstep_transitions(steps, 3, gamma))
    np.testing.assert_allclose(t["reward"], reward, rtol=1e-6)
    np.testing.assert_allclose(t["discount"], discount, rtol=1e-6)


def test_no_episode_end_sums_n_rewards():
    steps = one_env([0, 1, 2, 3], [1, 2, 3, 4], [1, 1, 1, 1])
    t = squeeze(nstep.nstep_transitions(steps, 4, 0.5))
    np.testing.assert_allclose(t["reward"], [1.875])
    np.testing.assert_allclose(t["discount"], [0.0625])
    np.testing.assert_array_equal(t["next_obs"], [4])


def random_rollout(rng, length, num_envs, obs_dim=2):
    obs = rng.normal(size=(length, num_envs, obs_dim)).astype(np.float32)
    return RolloutStep(
        obs=obs,
        action=rng.integers(0, 4, (length, num_envs)).astype(np.int32),
        reward=rng.normal(size=(length, num_envs)).astype(np.float32),
        next_obs=obs + 100,
        terminated=rng.random((length, num_envs)) < 0.15,
        truncated=rng.random((length, num_envs)) < 0.1,
    )


def numpy_nstep(steps: RolloutStep, n: int, gamma: float):
    """Reference: the n-step transitions starting at t = 0 .. L - n, env by env."""
    length, num_envs = steps.reward.shape
    out = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "discount")}
    for t in range(length - n + 1):
        row = {k: [] for k in out}
        for e in range(num_envs):
            ret, scale = 0.0, 1.0
            for j in range(n):
                ret += scale * float(steps.reward[t + j, e])
                scale *= gamma
                last = t + j
                if steps.terminated[last, e] or steps.truncated[last, e]:
                    break
            term = bool(steps.terminated[last, e])
            row["obs"].append(steps.obs[t, e])
            row["action"].append(steps.action[t, e])
            row["reward"].append(ret)
            row["next_obs"].append(steps.next_obs[last, e])
            row["terminated"].append(term)
            row["discount"].append(0.0 if term else scale)
        for k in out:
            out[k].append(row[k])
    return {k: np.asarray(v) for k, v in out.items()}


def assert_matches(got: nstep.NStepTransition, ref):
    for k, v in ref.items():
        np.testing.assert_allclose(
            np.asarray(getattr(got, k), np.float64),
            v.astype(np.float64),
            rtol=1e-5,
            atol=1e-6,
            err_msg=k,
        )


@pytest.mark.parametrize("n", [1, 3, 5])
def test_matches_numpy_reference(n):
    steps = random_rollout(np.random.default_rng(n), 40, 3)
    assert_matches(nstep.nstep_transitions(steps, n, 0.97), numpy_nstep(steps, n, 0.97))


@pytest.mark.parametrize("n,chunk", [(1, 4), (3, 1), (3, 4), (4, 5), (5, 2)])
def test_streaming_push_matches_reference(n, chunk):
    length, gamma = 40, 0.9
    steps = random_rollout(np.random.default_rng(10 * n + chunk), length, 3)
    push = jax.jit(nstep.push)
    state = nstep.init_nstep_state(jax.tree.map(lambda x: x[0], steps), n)
    emitted, valid = [], []
    for start in range(0, length, chunk):
        state, out, ok = push(
            state, jax.tree.map(lambda x, s=start: x[s : s + chunk], steps), gamma
        )
        assert out.reward.shape == (chunk, 3) and ok.shape == (chunk, 3)
        emitted.append(out)
        valid.append(np.asarray(ok))
    valid = np.concatenate(valid)
    # the first n - 1 transitions start at placeholders, every later one is real
    np.testing.assert_array_equal(valid.all(1), np.arange(length) >= n - 1)
    np.testing.assert_array_equal(valid.any(1), valid.all(1))
    out = jax.tree.map(lambda *x: np.concatenate(x)[n - 1 :], *emitted)
    assert_matches(out, numpy_nstep(steps, n, gamma))
    assert int(state.count) == n - 1
    assert state.steps.obs.shape == (n - 1, 3, 2) and state.steps.obs.dtype == np.float32


def test_push_under_seed_vmap_with_jit():
    num_seeds, n, chunk = 3, 3, 2
    rollouts = [random_rollout(np.random.default_rng(s), 8, 4) for s in range(num_seeds)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *rollouts)  # [S, L, N]
    axes = nstep.NSTEP_SEED_AXES
    state = jax.vmap(nstep.init_nstep_state, in_axes=(0, None), out_axes=axes)(
        jax.tree.map(lambda x: x[:, 0], stacked), n
    )
    assert state.count.shape == () and state.steps.obs.shape == (num_seeds, n - 1, 4, 2)
    push = jax.jit(jax.vmap(nstep.push, in_axes=(axes, 0, None), out_axes=(axes, 0, 0)))
    emitted = []
    for start in range(0, 8, chunk):
        state, out, ok = push(
            state, jax.tree.map(lambda x, s=start: x[:, s : s + chunk], stacked), 0.8
        )
        emitted.append(out)
    out = jax.tree.map(lambda *x: np.concatenate(x, axis=1)[:, n - 1 :], *emitted)
    for s in range(num_seeds):
        assert_matches(jax.tree.map(lambda x, s=s: x[s], out), numpy_nstep(rollouts[s], n, 0.8))


def test_keeps_dtypes():
    steps = RolloutStep(
        obs=jnp.zeros((4, 2, 3, 3), jnp.bool_),
        action=jnp.zeros((4, 2), jnp.int32),
        reward=jnp.zeros((4, 2), jnp.float32),
        next_obs=jnp.ones((4, 2, 3, 3), jnp.bool_),
        terminated=jnp.zeros((4, 2), bool),
        truncated=jnp.zeros((4, 2), bool),
    )
    state = nstep.init_nstep_state(jax.tree.map(lambda x: x[0], steps), 3)
    _, out, _ = nstep.push(state, steps, 0.99)
    assert out.obs.dtype == jnp.bool_ and out.next_obs.dtype == jnp.bool_
    assert out.action.dtype == jnp.int32 and out.terminated.dtype == jnp.bool_
    assert out.reward.dtype == jnp.float32 and out.discount.dtype == jnp.float32


def test_rejects_short_rollout():
    steps = one_env([0, 1], [1, 2], [1, 1])
    with pytest.raises(ValueError, match="n <= number of steps"):
        nstep.nstep_transitions(steps, 3, 0.9)
