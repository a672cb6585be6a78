import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import munchausen


def _np_target(q_t, q_tm1, a_tm1, r_t, d_t, tau, alpha, l0):
    """M-DQN target from the formula, with a naive (unshifted) log-softmax."""
    log_pi_tm1 = q_tm1 / tau - np.log(np.sum(np.exp(q_tm1 / tau)))
    log_pi_t = q_t / tau - np.log(np.sum(np.exp(q_t / tau)))
    pi_t = np.exp(log_pi_t)
    bonus = alpha * np.clip(tau * log_pi_tm1[a_tm1], l0, 0.0)
    return r_t + bonus + d_t * np.sum(pi_t * (q_t - tau * log_pi_t))


def test_target_by_hand():
    # tau = 1: pi(.|s_tm1) = softmax([1, 0]); tau * log pi(1) = -log(1 + e) = -1.3133,
    # clipped to l0 = -1, bonus = 0.9 * -1. pi(.|s_t) = [0.5, 0.5]: soft value
    # = sum 0.5 * (0 - log 0.5) = log 2. Target = 1 - 0.9 + 0.5 * log 2.
    target = munchausen.munchausen_target(
        jnp.array([0.0, 0.0]),
        jnp.array([1.0, 0.0]),
        jnp.int32(1),
        jnp.float32(1.0),
        jnp.float32(0.5),
        tau=1.0,
        alpha=0.9,
        l0=-1.0,
    )
    np.testing.assert_allclose(target, 1.0 - 0.9 + 0.5 * np.log(2.0), rtol=1e-6)
    # The greedy action at s_tm1 (tau log pi = -log(1 + 1/e) = -0.3133) is not clipped.
    target = munchausen.munchausen_target(
        jnp.array([0.0, 0.0]),
        jnp.array([1.0, 0.0]),
        jnp.int32(0),
        jnp.float32(1.0),
        jnp.float32(0.0),
        tau=1.0,
        alpha=0.5,
        l0=-1.0,
    )
    np.testing.assert_allclose(target, 1.0 - 0.5 * np.log(1.0 + np.exp(-1.0)), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    b, a = 8, 4
    q_t, q_tm1, q_online = (rng.normal(size=(b, a)).astype(np.float32) for _ in range(3))
    a_tm1 = rng.integers(0, a, size=b).astype(np.int32)
    r_t = rng.normal(size=b).astype(np.float32)
    d_t = (0.99 * (rng.random(b) > 0.3)).astype(np.float32)
    tau, alpha, l0 = 0.3, 0.9, -1.0
    ours = jax.vmap(munchausen.munchausen_target, (0, 0, 0, 0, 0, None, None, None))(
        q_t, q_tm1, a_tm1, r_t, d_t, tau, alpha, l0
    )
    ref = [
        _np_target(
            q_t[i].astype(np.float64),
            q_tm1[i].astype(np.float64),
            a_tm1[i],
            r_t[i],
            d_t[i],
            tau,
            alpha,
            l0,
        )
        for i in range(b)
    ]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    td = jax.vmap(munchausen.munchausen_q_learning, (0, 0, 0, 0, 0, 0, None, None, None))(
        q_online, a_tm1, r_t, d_t, q_t, q_tm1, tau, alpha, l0
    )
    np.testing.assert_allclose(td, ours - q_online[np.arange(b), a_tm1], rtol=1e-5, atol=1e-6)


def test_small_tau_limits():
    q_t = jnp.array([1.0, 3.0, 2.5])
    q_tm1 = jnp.array([0.0, 0.4, 2.0])
    r_t, d_t = jnp.float32(0.5), jnp.float32(0.9)
    dqn_target = 0.5 + 0.9 * 3.0
    errors = []
    for tau in (1e-1, 1e-2, 1e-3, 1e-4):
        t = munchausen.munchausen_target(q_t, q_tm1, jnp.int32(1), r_t, d_t, tau, 0.0, -1.0)
        errors.append(abs(float(t) - dqn_target))
    # alpha = 0: soft value = max + tau * entropy <= max + tau log A; it tends to the max.
    assert errors[-1] < 1e-4
    assert all(e1 >= e2 for e1, e2 in zip(errors, errors[1:], strict=False))
    assert errors[0] <= 0.1 * np.log(3) + 1e-6
    # With alpha > 0 the bonus tends to alpha * clip(q(a) - max q, l0, 0):
    # action 1: 0.4 - 2 = -1.6 -> clipped to -1; action 0: 0 - 2 = -2 -> -1; action 2: 0.
    for a, bonus in ((1, -0.9), (0, -0.9), (2, 0.0)):
        t = munchausen.munchausen_target(q_t, q_tm1, jnp.int32(a), r_t, d_t, 1e-4, 0.9, -1.0)
        np.testing.assert_allclose(t, dqn_target + bonus, atol=1e-3)
    # l0 = -3 leaves -1.6 unclipped.
    t = munchausen.munchausen_target(q_t, q_tm1, jnp.int32(1), r_t, d_t, 1e-4, 0.9, -3.0)
    np.testing.assert_allclose(t, dqn_target + 0.9 * -1.6, atol=1e-3)


def test_stable_for_large_values_over_tau():
    q = jnp.array([300.0, -200.0, 299.0])  # q / tau up to 1e4: exp would overflow
    t = munchausen.munchausen_target(q, q, jnp.int32(1), jnp.float32(0.0), jnp.float32(1.0))
    assert np.isfinite(float(t))
    np.testing.assert_allclose(t, 300.0 - 0.9, atol=1e-3)  # bonus clipped to l0 = -1


def _np_quantile_target(dist_q_t, q_t, q_tm1, a_tm1, r_t, d_t, tau, alpha, l0):
    log_pi_tm1 = q_tm1 / tau - np.log(np.sum(np.exp(q_tm1 / tau)))
    log_pi_t = q_t / tau - np.log(np.sum(np.exp(q_t / tau)))
    pi_t = np.exp(log_pi_t)
    bonus = alpha * np.clip(tau * log_pi_tm1[a_tm1], l0, 0.0)
    out = []
    for j in range(dist_q_t.shape[0]):  # one soft value per target quantile
        out.append(
            r_t
            + bonus
            + d_t * sum(pi_t[a] * (dist_q_t[j, a] - tau * log_pi_t[a]) for a in range(len(q_t)))
        )
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_quantile_target_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    b, n, a = 4, 5, 3
    dist_q_t = rng.normal(size=(b, n, a)).astype(np.float32)
    q_t, q_tm1 = (rng.normal(size=(b, a)).astype(np.float32) for _ in range(2))
    a_tm1 = rng.integers(0, a, size=b).astype(np.int32)
    r_t = rng.normal(size=b).astype(np.float32)
    d_t = (0.99 * (rng.random(b) > 0.3)).astype(np.float32)
    ours = jax.vmap(munchausen.munchausen_quantile_target, (0, 0, 0, 0, 0, 0, None, None, None))(
        dist_q_t, q_t, q_tm1, a_tm1, r_t, d_t, 0.3, 0.9, -1.0
    )
    assert ours.shape == (b, n)
    ref = [
        _np_quantile_target(
            dist_q_t[i].astype(np.float64),
            q_t[i].astype(np.float64),
            q_tm1[i].astype(np.float64),
            a_tm1[i],
            r_t[i],
            d_t[i],
            0.3,
            0.9,
            -1.0,
        )
        for i in range(b)
    ]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    # One target quantile equal to the Q-values gives the M-DQN target.
    one = munchausen.munchausen_quantile_target(
        q_t[0][None], q_t[0], q_tm1[0], a_tm1[0], r_t[0], d_t[0], 0.3, 0.9, -1.0
    )
    mdqn = munchausen.munchausen_target(q_t[0], q_tm1[0], a_tm1[0], r_t[0], d_t[0], 0.3, 0.9, -1.0)
    np.testing.assert_allclose(one, [mdqn], rtol=1e-6)


def test_no_gradient_and_checks():
    q = jnp.array([1.0, 2.0])
    g = jax.grad(lambda qt: munchausen.munchausen_target(qt, q, jnp.int32(0), 1.0, 0.9))(q)
    np.testing.assert_array_equal(g, 0.0)
    with pytest.raises(ValueError, match="one transition"):
        munchausen.munchausen_target(q[None], q[None], jnp.array([0]), 1.0, 0.9)
    with pytest.raises(ValueError, match="integer"):
        munchausen.munchausen_target(q, q, jnp.float32(0), 1.0, 0.9)
    with pytest.raises(ValueError, match="tau"):
        munchausen.munchausen_target(q, q, jnp.int32(0), 1.0, 0.9, tau=0.0)
    with pytest.raises(ValueError, match="l0"):
        munchausen.munchausen_target(q, q, jnp.int32(0), 1.0, 0.9, l0=0.5)
