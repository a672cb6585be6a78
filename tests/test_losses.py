import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from dqnx import losses

Q_TM1 = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [2.0, 2.0, 2.0]], np.float32)
A_TM1 = np.array([2, 0, 1], np.int32)
R_T = np.array([1.0, -0.5, 0.0], np.float32)
DISCOUNT_T = np.array([0.9, 0.0, 0.99], np.float32)
Q_T_VALUE = np.array([[4.0, 1.0, 0.0], [10.0, 20.0, 30.0], [-1.0, 3.0, 1.0]], np.float32)
Q_T_SELECTOR = np.array([[0.0, 5.0, 1.0], [1.0, 0.0, 0.0], [2.0, 0.0, 1.0]], np.float32)


def test_q_learning_hand_computed():
    td = jax.vmap(losses.q_learning)(Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T_VALUE)
    # row 0: 1 + 0.9 * max(4,1,0) - 3 = 1.6
    # row 1: -0.5 + 0 * 30 - 0.5 = -1.0   (terminal: no bootstrap)
    # row 2: 0 + 0.99 * 3 - 2 = 0.97
    np.testing.assert_allclose(td, [1.6, -1.0, 0.97], rtol=1e-6)


def test_double_q_learning_hand_computed():
    td = jax.vmap(losses.double_q_learning)(Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T_VALUE, Q_T_SELECTOR)
    # row 0: selector argmax = 1 -> value 1.0: 1 + 0.9 * 1 - 3 = -1.1
    # row 1: terminal: -0.5 - 0.5 = -1.0
    # row 2: selector argmax = 0 -> value -1: 0 + 0.99 * -1 - 2 = -2.99
    np.testing.assert_allclose(td, [-1.1, -1.0, -2.99], rtol=1e-6)


def test_matches_rlax():
    rng = np.random.default_rng(0)
    b, a = 64, 5
    q_tm1, q_t, q_sel = (rng.normal(size=(b, a)).astype(np.float32) for _ in range(3))
    a_tm1 = rng.integers(0, a, size=b).astype(np.int32)
    r_t = rng.normal(size=b).astype(np.float32)
    d_t = (0.99 * (rng.random(b) > 0.2)).astype(np.float32)
    np.testing.assert_allclose(
        jax.vmap(losses.q_learning)(q_tm1, a_tm1, r_t, d_t, q_t),
        jax.vmap(rlax.q_learning)(q_tm1, a_tm1, r_t, d_t, q_t),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        jax.vmap(losses.double_q_learning)(q_tm1, a_tm1, r_t, d_t, q_t, q_sel),
        jax.vmap(rlax.double_q_learning)(q_tm1, a_tm1, r_t, d_t, q_t, q_sel),
        rtol=1e-6,
    )
    x = jnp.linspace(-3, 3, 13)
    np.testing.assert_allclose(losses.huber_loss(x, 1.0), rlax.huber_loss(x, 1.0), rtol=1e-6)


def test_huber_and_squared_hand_computed():
    x = jnp.array([-3.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(losses.huber_loss(x, 1.0), [2.5, 0.125, 0.0, 0.125, 1.5])
    np.testing.assert_allclose(losses.huber_loss(x, 2.0), [4.0, 0.125, 0.0, 0.125, 2.0])
    np.testing.assert_allclose(losses.squared_loss(x), [9.0, 0.25, 0.0, 0.25, 4.0])


def test_target_has_no_gradient():
    def f(q_t):
        return losses.q_learning(Q_TM1[0], A_TM1[0], R_T[0], DISCOUNT_T[0], q_t)

    np.testing.assert_array_equal(jax.grad(f)(Q_T_VALUE[0]), np.zeros(3))


def test_rejects_batched_input():
    with pytest.raises(ValueError, match="one transition"):
        losses.q_learning(Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T_VALUE)
