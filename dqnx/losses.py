"""TD errors of one transition and elementwise losses; batch with ``jax.vmap``.

Names follow the time-subscript convention: ``q_tm1`` are the Q-values at the
state where action ``a_tm1`` was taken, ``r_t`` and ``discount_t`` what came
back, ``q_t_*`` the Q-values at the next state. ``discount_t`` is
``gamma * (1 - terminated)``: zero at a terminal state, ``gamma`` after a
time-limit truncation (which bootstraps from the true final observation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check(q_tm1, a_tm1, r_t, discount_t, *q_t):
    if q_tm1.ndim != 1 or a_tm1.ndim != 0 or r_t.ndim != 0 or discount_t.ndim != 0:
        raise ValueError(
            "expects one transition: q_tm1 [A], a_tm1 [], r_t [], discount_t []; got shapes "
            f"{q_tm1.shape}, {a_tm1.shape}, {r_t.shape}, {discount_t.shape} (batch with vmap)"
        )
    if not jnp.issubdtype(a_tm1.dtype, jnp.integer):
        raise ValueError(f"a_tm1 must be an integer action, got {a_tm1.dtype}")
    for q in q_t:
        if q.shape != q_tm1.shape:
            raise ValueError(f"q_t shape {q.shape} differs from q_tm1 shape {q_tm1.shape}")


def q_learning(q_tm1, a_tm1, r_t, discount_t, q_t):
    """TD error of Q-learning (Watkins, 1989; DQN target of Mnih et al., 2015).

    target = r_t + discount_t * max_a q_t[a]; returns target - q_tm1[a_tm1],
    with the target held constant (stop_gradient).
    """
    _check(q_tm1, a_tm1, r_t, discount_t, q_t)
    target = jax.lax.stop_gradient(r_t + discount_t * jnp.max(q_t))
    return target - q_tm1[a_tm1]


def double_q_learning(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector):
    """TD error of Double Q-learning (van Hasselt et al., 2016, arXiv:1509.06461).

    The online network (``q_t_selector``) picks the next action, the target
    network (``q_t_value``) evaluates it:
    target = r_t + discount_t * q_t_value[argmax_a q_t_selector[a]].
    """
    _check(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector)
    a_t = jnp.argmax(q_t_selector)
    target = jax.lax.stop_gradient(r_t + discount_t * q_t_value[a_t])
    return target - q_tm1[a_tm1]


def huber_loss(x, delta: float = 1.0):
    """0.5 x^2 for |x| <= delta, delta * (|x| - 0.5 delta) beyond."""
    abs_x = jnp.abs(x)
    quadratic = jnp.minimum(abs_x, delta)
    linear = abs_x - quadratic
    return 0.5 * quadratic**2 + delta * linear


def squared_loss(x):
    """x^2: averaged over a batch this is the 'mse' option (as in CleanRL and PureJaxRL)."""
    return jnp.square(x)
