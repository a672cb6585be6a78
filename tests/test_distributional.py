import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from dqnx import distributional as dist

ATOMS = np.array([0.0, 1.0, 2.0, 3.0, 4.0], np.float32)


def _project(z_p, probs, z_q=ATOMS):
    return dist.categorical_l2_project(
        jnp.asarray(z_p, jnp.float32), jnp.asarray(probs, jnp.float32), jnp.asarray(z_q)
    )


# ---------------------------------------------------------------- projection


def test_projection_reward_between_atoms_discount_zero():
    # discount 0: every atom of the next distribution lands on r = 1.3,
    # which splits 0.7 / 0.3 between atoms 1 and 2.
    r, d = 1.3, 0.0
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    np.testing.assert_allclose(_project(r + d * ATOMS, probs), [0, 0.7, 0.3, 0, 0], atol=1e-6)


def test_projection_clips_at_v_min_and_v_max():
    probs = np.full(5, 0.2)
    np.testing.assert_allclose(_project(10.0 + 0.0 * ATOMS, probs), [0, 0, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(_project(-5.0 + 0.0 * ATOMS, probs), [1, 0, 0, 0, 0], atol=1e-6)
    # r = 3, discount 0.9: atoms go to 3, 3.9, 4.8, 5.7, 6.6; all but the first two clip
    # to 4; 3.9 gives 0.1 to atom 3 and 0.9 to atom 4.
    np.testing.assert_allclose(
        _project(3.0 + 0.9 * ATOMS, probs), [0, 0, 0, 0.2 + 0.02, 0.18 + 0.6], atol=1e-6
    )


def test_projection_shift_and_shrink_by_hand():
    # r = 0.5, discount 0.5: atoms go to [0.5, 1, 1.5, 2, 2.5].
    # 0.5 -> 0.05 / 0.05 on atoms 0, 1; 1 -> 0.2 on atom 1; 1.5 -> 0.15 / 0.15 on atoms 1, 2;
    # 2 -> 0.4 on atom 2; 2.5 has no mass.
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    np.testing.assert_allclose(
        _project(0.5 + 0.5 * ATOMS, probs), [0.05, 0.4, 0.55, 0, 0], atol=1e-6
    )


def test_projection_uneven_support():
    z_q = np.array([0.0, 1.0, 3.0], np.float32)
    # 2 is halfway between 1 and 3; 1.5 is a quarter of the way.
    np.testing.assert_allclose(_project([2.0], [1.0], z_q), [0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(_project([1.5], [1.0], z_q), [0, 0.75, 0.25], atol=1e-6)


def test_projection_keeps_mass_and_mean_and_matches_rlax():
    rng = np.random.default_rng(0)
    for _ in range(5):
        z_p = rng.uniform(-0.5, 4.5, size=7).astype(np.float32)
        probs = rng.dirichlet(np.ones(7)).astype(np.float32)
        out = np.asarray(_project(z_p, probs))
        np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-6)
        clipped = np.clip(z_p, 0, 4)
        np.testing.assert_allclose(out @ ATOMS, clipped @ probs, rtol=1e-5)
        np.testing.assert_allclose(
            out, rlax.categorical_l2_project(z_p, probs, jnp.asarray(ATOMS)), atol=1e-6
        )


# ----------------------------------------------------------------------- C51


def _random_categorical(seed, b=16, a=4, k=11):
    rng = np.random.default_rng(seed)
    logits_tm1, logits_t = (2 * rng.normal(size=(b, a, k)).astype(np.float32) for _ in range(2))
    q_t_selector = rng.normal(size=(b, a)).astype(np.float32)
    a_tm1 = rng.integers(0, a, size=b).astype(np.int32)
    r_t = (2 * rng.normal(size=b)).astype(np.float32)  # some targets clip at v_min / v_max
    d_t = (0.9 * (rng.random(b) > 0.3)).astype(np.float32)
    atoms = np.linspace(-3.0, 3.0, k, dtype=np.float32)
    return logits_tm1, a_tm1, r_t, d_t, logits_t, q_t_selector, atoms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_categorical_q_learning_matches_rlax(seed):
    logits_tm1, a_tm1, r_t, d_t, logits_t, _, atoms = _random_categorical(seed)
    ours = jax.vmap(functools.partial(dist.categorical_q_learning, atoms=atoms))(
        logits_tm1, a_tm1, r_t, d_t, logits_t
    )
    ref = jax.vmap(rlax.categorical_q_learning, in_axes=(None, 0, 0, 0, 0, None, 0))(
        atoms, logits_tm1, a_tm1, r_t, d_t, atoms, logits_t
    )
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_categorical_double_q_learning_matches_rlax(seed):
    logits_tm1, a_tm1, r_t, d_t, logits_t, q_sel, atoms = _random_categorical(seed)
    ours = jax.vmap(functools.partial(dist.categorical_double_q_learning, atoms=atoms))(
        logits_tm1, a_tm1, r_t, d_t, logits_t, q_sel
    )
    ref = jax.vmap(rlax.categorical_double_q_learning, in_axes=(None, 0, 0, 0, 0, None, 0, 0))(
        atoms, logits_tm1, a_tm1, r_t, d_t, atoms, logits_t, q_sel
    )
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_categorical_loss_by_hand():
    # Terminal transition, reward exactly on atom 2: the target is one-hot on atom 2 and
    # the loss is -log softmax(logits_tm1[a_tm1])[2].
    logits_tm1 = jnp.array([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0, -1.0]])
    loss = dist.categorical_q_learning(
        logits_tm1, jnp.int32(1), jnp.float32(2.0), jnp.float32(0.0), logits_tm1, ATOMS
    )
    expected = -(3.0 - np.log(np.exp([1.0, 2.0, 3.0, 0.0, -1.0]).sum()))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_categorical_q_values_and_greedy_choice():
    # Action 0 puts its mass on atom 4, action 1 on atom 0: q = [~4, ~0], so the
    # non-double loss bootstraps from action 0 (mass near v_max).
    logits_t = jnp.array([[-20.0, -20.0, -20.0, -20.0, 20.0], [20.0, -20.0, -20.0, -20.0, -20.0]])
    np.testing.assert_allclose(dist.categorical_q_values(logits_t, ATOMS), [4.0, 0.0], atol=1e-5)
    logits_tm1 = jnp.zeros((2, 5))
    args = (logits_tm1, jnp.int32(0), jnp.float32(0.0), jnp.float32(0.5), logits_t)
    # target: 0.5 * 4 = 2 -> one-hot on atom 2; uniform prediction: loss log 5.
    np.testing.assert_allclose(dist.categorical_q_learning(*args, ATOMS), np.log(5), rtol=1e-5)
    # Double: the selector picks action 1, whose mass is at 0 -> target one-hot on atom 0.
    loss = dist.categorical_double_q_learning(*args, jnp.array([0.0, 1.0]), ATOMS)
    np.testing.assert_allclose(loss, np.log(5), rtol=1e-5)


def test_categorical_target_has_no_gradient():
    logits_tm1, a_tm1, r_t, d_t, logits_t, _, atoms = _random_categorical(0, b=1)
    f = lambda lt: dist.categorical_q_learning(logits_tm1[0], a_tm1[0], r_t[0], d_t[0], lt, atoms)
    np.testing.assert_array_equal(jax.grad(f)(logits_t[0]), 0.0)


def test_categorical_rejects_bad_input():
    logits_tm1, a_tm1, r_t, d_t, logits_t, _, atoms = _random_categorical(0)
    with pytest.raises(ValueError, match="one transition"):
        dist.categorical_q_learning(logits_tm1, a_tm1, r_t, d_t, logits_t, atoms)
    with pytest.raises(ValueError, match="integer"):
        dist.categorical_q_learning(
            logits_tm1[0], jnp.float32(1), r_t[0], d_t[0], logits_t[0], atoms
        )
    with pytest.raises(ValueError, match="atoms"):
        dist.categorical_q_learning(logits_tm1[0], a_tm1[0], r_t[0], d_t[0], logits_t[0], ATOMS)


# ------------------------------------------------------------------ QR and IQN


def test_quantile_midpoints():
    np.testing.assert_allclose(dist.quantile_midpoints(4), [0.125, 0.375, 0.625, 0.875])
    assert dist.quantile_midpoints(4).dtype == jnp.float32


def _random_quantiles(seed, b=16, n=8, n_t=6, n_sel=5, a=3):
    rng = np.random.default_rng(seed)
    dist_q_tm1 = rng.normal(size=(b, n, a)).astype(np.float32)
    dist_q_t = rng.normal(size=(b, n_t, a)).astype(np.float32)
    dist_q_sel = rng.normal(size=(b, n_sel, a)).astype(np.float32)
    a_tm1 = rng.integers(0, a, size=b).astype(np.int32)
    r_t = rng.normal(size=b).astype(np.float32)
    d_t = (0.9 * (rng.random(b) > 0.3)).astype(np.float32)
    return dist_q_tm1, a_tm1, r_t, d_t, dist_q_sel, dist_q_t


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("huber_param", [0.0, 1.0, 0.5])
def test_quantile_q_learning_matches_rlax(seed, huber_param):
    q_tm1, a_tm1, r_t, d_t, q_sel, q_t = _random_quantiles(seed)
    tau = dist.quantile_midpoints(q_tm1.shape[1])
    in_axes = (0, None, 0, 0, 0, 0, 0, None)
    args = (q_tm1, tau, a_tm1, r_t, d_t, q_sel, q_t, huber_param)
    ours = jax.vmap(dist.quantile_q_learning, in_axes)(*args)
    ref = jax.vmap(rlax.quantile_q_learning, in_axes)(*args)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def _iqn_reference(dist_q_tm1, tau, a_tm1, r_t, d_t, dist_q_sel, dist_q_t, kappa):
    """Quantile Huber loss (Dabney et al., 2018b, eq. 3), one transition, two loops."""
    a_t = np.argmax(dist_q_sel.mean(axis=0))
    target = r_t + d_t * dist_q_t[:, a_t]
    total = 0.0
    for i in range(dist_q_tm1.shape[0]):
        for j in range(target.shape[0]):
            u = target[j] - dist_q_tm1[i, a_tm1]
            if kappa == 0:
                huber = abs(u)
            elif abs(u) <= kappa:
                huber = 0.5 * u * u
            else:
                huber = kappa * (abs(u) - 0.5 * kappa)
            total += abs(tau[i] - float(u < 0)) * huber / target.shape[0]
    return total


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kappa", [0.0, 1.0])
def test_iqn_loss_matches_numpy(seed, kappa):
    q_tm1, a_tm1, r_t, d_t, q_sel, q_t = _random_quantiles(seed, b=4)
    tau = np.random.default_rng(seed + 10).random(size=(4, q_tm1.shape[1])).astype(np.float32)
    ours = jax.vmap(dist.iqn_loss, (0, 0, 0, 0, 0, 0, 0, None))(
        q_tm1, tau, a_tm1, r_t, d_t, q_sel, q_t, kappa
    )
    ref = [
        _iqn_reference(q_tm1[b], tau[b], a_tm1[b], r_t[b], d_t[b], q_sel[b], q_t[b], kappa)
        for b in range(4)
    ]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_quantile_loss_by_hand():
    # One quantile at tau = 0.25 with value 0; targets 1 and -2 (terminal, r = target).
    # u = 1: weight 0.25, huber 0.5 -> 0.125; u = -2: weight 0.75, huber 1.5 -> 1.125.
    # Mean over the two targets: 0.625.
    loss = dist.quantile_regression_loss(
        jnp.array([0.0]), jnp.array([0.25]), jnp.array([1.0, -2.0]), 1.0
    )
    np.testing.assert_allclose(loss, 0.625, rtol=1e-6)
    loss = dist.quantile_regression_loss(
        jnp.array([0.0]), jnp.array([0.25]), jnp.array([1.0, -2.0]), 0.0
    )
    np.testing.assert_allclose(loss, (0.25 * 1 + 0.75 * 2) / 2, rtol=1e-6)


@pytest.mark.parametrize("kappa", [0.0, 0.3])
@pytest.mark.parametrize("traced", [False, True])
def test_quantile_loss_gradients_match_rlax(kappa, traced):
    # Gradients for the values, the fractions and the targets equal those of rlax's
    # formula (targets not stopped); a traced kappa (a sweep's) has the gradient of
    # the Huber loss written out here.
    rng = np.random.default_rng(3)
    src = jnp.asarray(rng.normal(size=7), jnp.float32)
    tau = jnp.asarray(rng.uniform(0.05, 0.95, size=7), jnp.float32)
    tgt = jnp.asarray(rng.normal(size=5) * 2, jnp.float32)

    def ours(s, t, g, k):
        return dist.quantile_regression_loss(s, t, g, k if traced else kappa)

    def reference(s, t, g, k):
        u = g[None, :] - s[:, None]
        w = jnp.abs(t[:, None] - jax.lax.stop_gradient((u < 0).astype(u.dtype)))
        q = jnp.minimum(jnp.abs(u), k)
        loss = 0.5 * q**2 + k * (jnp.abs(u) - q) if kappa > 0 else jnp.abs(u)
        return jnp.sum(jnp.mean(w * loss, axis=-1))

    args = (src, tau, tgt, jnp.float32(kappa))
    value, grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2, 3)))(*args)
    rlax_loss = lambda s, t, g: rlax.quantile_regression_loss(
        s, t, g, huber_param=kappa, stop_target_gradients=False
    )
    np.testing.assert_allclose(value, rlax_loss(src, tau, tgt), rtol=1e-6)
    for ours_g, ref_g in zip(grads[:3], jax.grad(rlax_loss, (0, 1, 2))(src, tau, tgt), strict=True):
        np.testing.assert_allclose(ours_g, ref_g, rtol=1e-5, atol=1e-7)
    if traced:
        np.testing.assert_allclose(grads[3], jax.grad(reference, 3)(*args), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(grads[0]) != 0) and np.all(np.asarray(grads[2]) != 0)


def test_quantile_target_has_no_gradient_and_rejects_batches():
    q_tm1, a_tm1, r_t, d_t, q_sel, q_t = _random_quantiles(0)
    tau = dist.quantile_midpoints(q_tm1.shape[1])
    f = lambda qt: dist.iqn_loss(q_tm1[0], tau, a_tm1[0], r_t[0], d_t[0], q_sel[0], qt)
    np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(q_t[0])), 0.0)
    with pytest.raises(ValueError, match="one transition"):
        dist.quantile_q_learning(q_tm1, tau, a_tm1, r_t, d_t, q_sel, q_t)
