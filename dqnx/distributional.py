"""Distributional TD losses of one transition: C51, QR-DQN, IQN; batch with ``jax.vmap``.

Conventions as in ``dqnx.losses`` (and rlax): ``*_tm1`` at the state where ``a_tm1``
was taken, ``r_t`` and ``discount_t = gamma * (1 - terminated)`` what came back,
``*_t`` at the next state. Each function returns the loss of one transition, a scalar
with the target held constant (stop_gradient); the caller averages (or weights) over
the batch. That per-transition loss is also the priority for prioritized replay, as
in Rainbow (Hessel et al., 2018, arXiv:1710.02298). The paper prioritises C51 by the KL
divergence; the cross-entropy returned here exceeds it by the target's entropy (and is
what Dopamine's Rainbow uses).

Categorical (C51) functions take logits ``[A, K]`` over one fixed, strictly increasing
support ``atoms [K]`` (``jnp.linspace(v_min, v_max, K)``), passed last so that
``functools.partial(f, atoms=atoms)`` can be vmapped over every other argument.
Quantile functions take quantile values ``[N, A]`` (quantiles first, as rlax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dqnx.losses import huber_loss


def _check_transition(a_tm1, r_t, discount_t):
    shapes = [jnp.shape(x) for x in (a_tm1, r_t, discount_t)]
    if any(shapes):
        raise ValueError(
            "expects one transition: a_tm1 [], r_t [], discount_t []; got shapes "
            f"{shapes[0]}, {shapes[1]}, {shapes[2]} (batch with vmap)"
        )
    if not jnp.issubdtype(jnp.result_type(a_tm1), jnp.integer):
        raise ValueError(f"a_tm1 must be an integer action, got {jnp.result_type(a_tm1)}")


def _check_float(**arrays):
    for name, x in arrays.items():
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"{name} must be floating point, got {jnp.result_type(x)}")


# ---------------------------------------------------------------------------- C51


def categorical_l2_project(z_p: jax.Array, probs: jax.Array, z_q: jax.Array) -> jax.Array:
    """Projects the distribution ``(z_p, probs)`` onto the support ``z_q``.

    The projection of Bellemare et al. (2017, arXiv:1707.06887, Algorithm 1): each
    atom ``z_p[j]``, clipped to ``[z_q[0], z_q[-1]]``, gives its mass to the two
    neighbouring atoms of ``z_q`` in proportion to its closeness (linear
    interpolation). It minimises the Cramer (L2 between CDFs) distance to
    ``(z_p, probs)`` among distributions on ``z_q`` (Rowland et al., 2018,
    arXiv:1802.08163), and keeps the mass and, for ``z_p`` inside the support, the mean.

    Args:
      z_p: source atoms ``[Kp]``, any order.
      probs: their probabilities ``[Kp]``.
      z_q: target support ``[K]``, strictly increasing.

    Returns:
      Probabilities ``[K]`` on ``z_q``.
    """
    if z_p.ndim != 1 or probs.shape != z_p.shape or z_q.ndim != 1:
        raise ValueError(
            f"expects z_p [Kp], probs [Kp], z_q [K]; got {z_p.shape}, {probs.shape}, {z_q.shape}"
        )
    z_p = jnp.clip(z_p, z_q[0], z_q[-1])
    gaps = jnp.diff(z_q)  # [K - 1]
    one = jnp.ones((1,), gaps.dtype)
    # Gap to the atom above and below each atom of z_q. At the two ends a clipped z_p
    # is never beyond the atom, so any positive value (1) gives the same weights.
    above = jnp.concatenate([gaps, one])[:, None]  # [K, 1]
    below = jnp.concatenate([one, gaps])[:, None]  # [K, 1]
    delta = z_p[None, :] - z_q[:, None]  # [K, Kp]
    scale = jnp.where(delta >= 0, above, below)
    weights = jnp.clip(1.0 - jnp.abs(delta) / scale, 0.0, 1.0)  # [K, Kp]
    return weights @ probs


def categorical_q_values(logits: jax.Array, atoms: jax.Array) -> jax.Array:
    """Expected values ``[..., A]`` of categorical distributions ``logits [..., A, K]``."""
    return jax.nn.softmax(logits, axis=-1) @ atoms


def _check_categorical(logits_tm1, a_tm1, r_t, discount_t, logits_t, atoms):
    _check_transition(a_tm1, r_t, discount_t)
    if logits_tm1.ndim != 2 or atoms.ndim != 1 or logits_tm1.shape[-1] != atoms.shape[0]:
        raise ValueError(
            "expects one transition: logits_tm1 [A, K] over atoms [K]; got shapes "
            f"{logits_tm1.shape}, {atoms.shape} (batch with vmap)"
        )
    if logits_t.shape != logits_tm1.shape:
        raise ValueError(f"logits_t shape {logits_t.shape} differs from {logits_tm1.shape}")
    _check_float(logits_tm1=logits_tm1, logits_t=logits_t, atoms=atoms)


def _categorical_loss(logits_tm1, a_tm1, r_t, discount_t, probs_t, atoms):
    target = categorical_l2_project(r_t + discount_t * atoms, probs_t, atoms)
    target = jax.lax.stop_gradient(target)
    return -jnp.sum(target * jax.nn.log_softmax(logits_tm1[a_tm1]))


def categorical_q_learning(logits_tm1, a_tm1, r_t, discount_t, logits_t, atoms):
    """C51 loss of one transition (Bellemare et al., 2017, arXiv:1707.06887).

    The next action maximises the expected value under ``logits_t`` (the target
    network); its distribution, shifted and scaled to ``r_t + discount_t * atoms``,
    is projected back onto ``atoms`` (``categorical_l2_project``). The loss is the
    cross-entropy of that target with ``softmax(logits_tm1[a_tm1])``.

    Args:
      logits_tm1: logits ``[A, K]`` at s_tm1 (online network).
      a_tm1: action taken, integer ``[]``.
      r_t: reward ``[]``.
      discount_t: ``gamma * (1 - terminated)`` ``[]``.
      logits_t: logits ``[A, K]`` at s_t (target network).
      atoms: the support ``[K]``, strictly increasing.

    Returns:
      The cross-entropy ``[]``.
    """
    _check_categorical(logits_tm1, a_tm1, r_t, discount_t, logits_t, atoms)
    probs_t = jax.nn.softmax(logits_t, axis=-1)  # [A, K]
    a_t = jnp.argmax(probs_t @ atoms)
    return _categorical_loss(logits_tm1, a_tm1, r_t, discount_t, probs_t[a_t], atoms)


def categorical_double_q_learning(
    logits_tm1, a_tm1, r_t, discount_t, logits_t, q_t_selector, atoms
):
    """C51 loss with the Double DQN target (van Hasselt et al., 2016, arXiv:1509.06461).

    As ``categorical_q_learning``, but the next action is ``argmax q_t_selector``
    (the online network's expected values at s_t, ``categorical_q_values``) and the
    target network's ``logits_t`` give its distribution, as in Rainbow.

    Args:
      logits_tm1, a_tm1, r_t, discount_t, logits_t: as in ``categorical_q_learning``.
      q_t_selector: values ``[A]`` at s_t that pick the next action.
      atoms: the support ``[K]``, strictly increasing.

    Returns:
      The cross-entropy ``[]``.
    """
    _check_categorical(logits_tm1, a_tm1, r_t, discount_t, logits_t, atoms)
    if q_t_selector.shape != logits_t.shape[:1]:
        raise ValueError(f"q_t_selector shape {q_t_selector.shape}, expected {logits_t.shape[:1]}")
    probs_t = jax.nn.softmax(logits_t[jnp.argmax(q_t_selector)])  # [K]
    return _categorical_loss(logits_tm1, a_tm1, r_t, discount_t, probs_t, atoms)


# ----------------------------------------------------------------- QR-DQN and IQN


def quantile_midpoints(n: int) -> jax.Array:
    """QR-DQN's fractions ``(2 i + 1) / (2 n)``, ``i = 0 .. n - 1``: float32 ``[n]``."""
    return (jnp.arange(n, dtype=jnp.float32) + 0.5) / n


def quantile_regression_loss(dist_src, tau_src, dist_target, huber_param: float = 0.0):
    """Quantile (Huber) regression loss of ``dist_src`` towards the samples ``dist_target``.

    ``sum_i mean_j |tau_i - 1{u_ij < 0}| * L(u_ij)`` with ``u_ij = dist_target[j] -
    dist_src[i]``, ``L`` the Huber loss with threshold ``huber_param`` (Dabney et al.,
    2018a, arXiv:1710.10044), or ``|u|`` when ``huber_param`` is 0.
    ``L`` is not divided by ``huber_param`` (as rlax; the paper and Dopamine divide,
    which only rescales the loss, and is the same for the usual ``huber_param = 1``).

    Args:
      dist_src: quantile values ``[N]`` being learned.
      tau_src: their fractions ``[N]`` in (0, 1).
      dist_target: target samples ``[N']``, held constant by the caller.
      huber_param: Huber threshold kappa; 0 for the plain quantile loss. A traced
        scalar (a sweep's per-run kappa) selects between the two with ``where``.

    Returns:
      The loss ``[]``.
    """
    if dist_src.ndim != 1 or tau_src.shape != dist_src.shape or dist_target.ndim != 1:
        raise ValueError(
            "expects dist_src [N], tau_src [N], dist_target [N']; got "
            f"{dist_src.shape}, {tau_src.shape}, {dist_target.shape}"
        )
    u = dist_target[None, :] - dist_src[:, None]  # [N, N']
    weight = jnp.abs(tau_src[:, None] - jax.lax.stop_gradient((u < 0).astype(u.dtype)))
    if isinstance(huber_param, int | float):
        loss = huber_loss(u, huber_param) if huber_param > 0 else jnp.abs(u)
    else:
        loss = jnp.where(huber_param > 0, huber_loss(u, huber_param), jnp.abs(u))
    return jnp.sum(jnp.mean(weight * loss, axis=-1))


def quantile_q_learning(
    dist_q_tm1,
    tau_q_tm1,
    a_tm1,
    r_t,
    discount_t,
    dist_q_t_selector,
    dist_q_t,
    huber_param: float = 0.0,
):
    """QR-DQN loss of one transition (Dabney et al., 2018a, arXiv:1710.10044).

    The next action maximises the mean over quantiles of ``dist_q_t_selector``; the
    target samples are ``r_t + discount_t * dist_q_t[:, a_t]``; the loss is
    ``quantile_regression_loss`` of ``dist_q_tm1[:, a_tm1]`` towards them. Pass the
    target network's values as both ``dist_q_t_selector`` and ``dist_q_t`` for the
    paper's target, or the online network's as the selector for a Double-DQN target.

    Args:
      dist_q_tm1: quantile values ``[N, A]`` at s_tm1 (online network).
      tau_q_tm1: their fractions ``[N]`` (``quantile_midpoints(N)`` for QR-DQN).
      a_tm1: action taken, integer ``[]``.
      r_t: reward ``[]``.
      discount_t: ``gamma * (1 - terminated)`` ``[]``.
      dist_q_t_selector: quantile values ``[N'', A]`` at s_t that pick the next action.
      dist_q_t: quantile values ``[N', A]`` at s_t (target network).
      huber_param: Huber threshold kappa (1 in the paper's QR-DQN-1);
        0 for the plain quantile loss (rlax's default).

    Returns:
      The loss ``[]``.
    """
    _check_transition(a_tm1, r_t, discount_t)
    if (
        dist_q_tm1.ndim != 2
        or tau_q_tm1.shape != dist_q_tm1.shape[:1]
        or dist_q_t.ndim != 2
        or dist_q_t_selector.ndim != 2
    ):
        raise ValueError(
            "expects one transition: dist_q_tm1 [N, A], tau_q_tm1 [N], dist_q_t_selector "
            f"[N'', A], dist_q_t [N', A]; got shapes {dist_q_tm1.shape}, {tau_q_tm1.shape}, "
            f"{dist_q_t_selector.shape}, {dist_q_t.shape} (batch with vmap)"
        )
    num_actions = dist_q_tm1.shape[1]
    if dist_q_t.shape[1] != num_actions or dist_q_t_selector.shape[1] != num_actions:
        raise ValueError(
            f"number of actions differs: {dist_q_tm1.shape}, {dist_q_t_selector.shape}, "
            f"{dist_q_t.shape}"
        )
    _check_float(dist_q_tm1=dist_q_tm1, tau_q_tm1=tau_q_tm1, dist_q_t=dist_q_t)
    a_t = jnp.argmax(jnp.mean(dist_q_t_selector, axis=0))
    target = jax.lax.stop_gradient(r_t + discount_t * dist_q_t[:, a_t])  # [N']
    return quantile_regression_loss(dist_q_tm1[:, a_tm1], tau_q_tm1, target, huber_param)


def iqn_loss(
    dist_q_tm1,
    tau_tm1,
    a_tm1,
    r_t,
    discount_t,
    dist_q_t_selector,
    dist_q_t,
    huber_param: float = 1.0,
):
    """IQN loss of one transition (Dabney et al., 2018b, arXiv:1806.06923, eq. 3).

    IQN's loss is the quantile Huber loss of QR-DQN with sampled fractions:
    ``dist_q_tm1`` is the online network evaluated at ``N`` fractions ``tau_tm1 ~
    U[0, 1]``, ``dist_q_t`` the target network at ``N'`` fractions ``tau' ~ U[0, 1]``
    (these enter only through the values), and ``dist_q_t_selector`` the values at
    ``K`` further fractions whose mean picks the next action (the paper's ``K``
    samples). Fresh fractions per transition and per update.

    Args:
      dist_q_tm1: quantile values ``[N, A]`` at s_tm1 at fractions ``tau_tm1``.
      tau_tm1: the sampled fractions ``[N]``.
      a_tm1: action taken, integer ``[]``.
      r_t: reward ``[]``.
      discount_t: ``gamma * (1 - terminated)`` ``[]``.
      dist_q_t_selector: quantile values ``[K, A]`` at s_t that pick the next action.
      dist_q_t: target quantile values ``[N', A]`` at s_t at the sampled ``tau'``.
      huber_param: Huber threshold kappa (1 in the paper).

    Returns:
      The loss ``[]``.
    """
    return quantile_q_learning(
        dist_q_tm1, tau_tm1, a_tm1, r_t, discount_t, dist_q_t_selector, dist_q_t, huber_param
    )
