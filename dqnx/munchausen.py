"""Munchausen targets of one transition (Vieillard et al., 2020, arXiv:2007.14430).

Munchausen DQN adds the scaled log-policy of the action taken to the reward and
bootstraps from a soft (entropy-regularised) value, both under the softmax policy
of the target network at temperature ``tau``, ``pi = softmax(q_target / tau)``:

  target = r_t + alpha * clip(tau * log pi(a_tm1 | s_tm1), l0, 0)
           + discount_t * sum_a pi(a | s_t) * (q_t_target[a] - tau * log pi(a | s_t))

``tau * log pi`` is computed as ``tau * log_softmax(q / tau)`` (stable for small tau).
With ``alpha = 0`` and ``tau -> 0`` the target tends to the DQN target
``r_t + discount_t * max_a q_t_target[a]``. Defaults are the paper's
(``defaults.Munchausen``: ``tau = 0.03``, ``alpha = 0.9``, ``l0 = -1``); each may
be a Python number or a traced scalar (a vmapped sweep); ``tau`` traced is the
pair ``(tau, 1 / tau)``, the float32 reciprocal that XLA multiplies by where a
single run divides by the constant ``tau``, so the sweep's run computes the same
bits. Conventions as in ``dqnx.losses``; batch with ``jax.vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dqnx.defaults import Munchausen as _M


def _check(q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau, l0):
    if q_t_target.ndim != 1 or q_tm1_target.shape != q_t_target.shape:
        raise ValueError(
            "expects one transition: q_t_target [A], q_tm1_target [A]; got shapes "
            f"{q_t_target.shape}, {q_tm1_target.shape} (batch with vmap)"
        )
    if jnp.shape(a_tm1) or jnp.shape(r_t) or jnp.shape(discount_t):
        raise ValueError(
            "expects one transition: a_tm1 [], r_t [], discount_t []; got shapes "
            f"{jnp.shape(a_tm1)}, {jnp.shape(r_t)}, {jnp.shape(discount_t)} (batch with vmap)"
        )
    if not jnp.issubdtype(jnp.result_type(a_tm1), jnp.integer):
        raise ValueError(f"a_tm1 must be an integer action, got {jnp.result_type(a_tm1)}")
    # Hyperparameters may be traced (a vmapped sweep); check them when they are numbers.
    if isinstance(tau, tuple) and len(tau) != 2:
        raise ValueError(f"a traced tau is the pair (tau, 1 / tau), got {len(tau)} values")
    if isinstance(tau, int | float) and tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if isinstance(l0, int | float) and l0 > 0:
        raise ValueError(f"l0 must be <= 0, got {l0}")


def _targets(dist_q_t_target, q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau, alpha, l0):
    """``r_t`` + Munchausen bonus + ``discount_t`` * soft value of each row of ``dist_q_t_target``.

    ``dist_q_t_target [..., A]`` are the values bootstrapped from (``q_t_target`` itself
    for M-DQN, quantile values for M-IQN); the policies come from ``q_t_target`` and
    ``q_tm1_target``. Returns ``[...]``, with no gradient.
    """
    tau, inv_tau = tau if isinstance(tau, tuple) else (tau, None)

    def over_tau(q):
        return q / tau if inv_tau is None else q * inv_tau

    tau_log_pi_tm1 = tau * jax.nn.log_softmax(over_tau(q_tm1_target))  # [A]
    bonus = alpha * jnp.clip(tau_log_pi_tm1[a_tm1], l0, 0.0)
    tau_log_pi_t = tau * jax.nn.log_softmax(over_tau(q_t_target))  # [A]
    pi_t = jax.nn.softmax(over_tau(q_t_target))  # [A]
    soft_values = jnp.sum(pi_t * (dist_q_t_target - tau_log_pi_t), axis=-1)  # [...]
    return jax.lax.stop_gradient(r_t + bonus + discount_t * soft_values)


def munchausen_target(
    q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau=_M.tau, alpha=_M.alpha, l0=_M.l0
):
    """The M-DQN target of one transition (Vieillard et al., 2020).

    Args:
      q_t_target: target-network Q-values ``[A]`` at s_t.
      q_tm1_target: target-network Q-values ``[A]`` at s_tm1 (for the log-policy bonus).
      a_tm1: action taken, integer ``[]``.
      r_t: reward ``[]``.
      discount_t: ``gamma * (1 - terminated)`` ``[]``.
      tau: entropy temperature, > 0.
      alpha: Munchausen scaling in [0, 1]; 0 gives soft (entropy-regularised) DQN.
      l0: lower clip of ``tau * log pi(a_tm1 | s_tm1)``, <= 0.

    Returns:
      The target ``[]``, with no gradient (stop_gradient).
    """
    _check(q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau, l0)
    return _targets(q_t_target, q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau, alpha, l0)


def munchausen_q_learning(
    q_tm1, a_tm1, r_t, discount_t, q_t_target, q_tm1_target, tau=_M.tau, alpha=_M.alpha, l0=_M.l0
):
    """TD error of Munchausen DQN: ``munchausen_target(...) - q_tm1[a_tm1]``.

    Shaped like ``losses.q_learning`` (online ``q_tm1`` first), so a learner applies
    the same elementwise loss (Huber in the paper) and uses it as a priority.

    Args:
      q_tm1: online Q-values ``[A]`` at s_tm1.
      a_tm1, r_t, discount_t, q_t_target, q_tm1_target, tau, alpha, l0: as in
        ``munchausen_target``.

    Returns:
      The TD error ``[]``.
    """
    if q_tm1.shape != q_t_target.shape:
        raise ValueError(f"q_tm1 shape {q_tm1.shape} differs from q_t_target {q_t_target.shape}")
    target = munchausen_target(q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau, alpha, l0)
    return target - q_tm1[a_tm1]


def munchausen_quantile_target(
    dist_q_t_target,
    q_t_target,
    q_tm1_target,
    a_tm1,
    r_t,
    discount_t,
    tau=_M.tau,
    alpha=_M.alpha,
    l0=_M.l0,
):
    """Per-quantile M-IQN target samples (Vieillard et al., 2020).

    The policy is the softmax at temperature ``tau`` of the target network's expected
    values (the mean over sampled quantiles) at s_t and s_tm1; every target quantile
    ``j`` bootstraps from its own soft value:

      target[j] = r_t + alpha * clip(tau * log pi(a_tm1 | s_tm1), l0, 0)
                  + discount_t * sum_a pi(a | s_t) * (dist_q_t_target[j, a] - tau * log pi(a | s_t))

    The M-IQN loss of one transition is then
    ``distributional.quantile_regression_loss(dist_q_tm1[:, a_tm1], tau_tm1, target, 1.0)``.

    Args:
      dist_q_t_target: target-network quantile values ``[N', A]`` at s_t at the sampled
        fractions ``tau'``.
      q_t_target: target-network Q-values ``[A]`` at s_t (e.g. the mean of quantile
        values at ``K`` further sampled fractions).
      q_tm1_target: target-network Q-values ``[A]`` at s_tm1, likewise.
      a_tm1, r_t, discount_t, tau, alpha, l0: as in ``munchausen_target``.

    Returns:
      Target samples ``[N']``, with no gradient (stop_gradient).
    """
    _check(q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau, l0)
    if dist_q_t_target.ndim != 2 or dist_q_t_target.shape[1:] != q_t_target.shape:
        raise ValueError(
            f"expects dist_q_t_target [N', A] with A = {q_t_target.shape[0]}; got "
            f"{dist_q_t_target.shape} (batch with vmap)"
        )
    return _targets(
        dist_q_t_target, q_t_target, q_tm1_target, a_tm1, r_t, discount_t, tau, alpha, l0
    )
