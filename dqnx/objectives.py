"""What each learner minimises: the per-example losses and priorities of one batch.

``make_objective`` picks the loss from the network's head (``networks.head_of``):

- "q" head: (Double) DQN TD errors through an elementwise loss (Huber or squared),
  or Munchausen DQN (Vieillard et al., 2020) with ``munchausen``;
- "categorical" head: C51's cross-entropy (Bellemare et al., 2017), Double-DQN
  selection as in Rainbow (Hessel et al., 2018) with ``double_q``;
- "quantile" head: QR-DQN's quantile Huber loss (Dabney et al., 2018a);
- "iqn" head: IQN's quantile Huber loss at sampled fractions (Dabney et al.,
  2018b), or M-IQN with ``munchausen``.

Each returns one loss per example (the learner weights and averages them) and one
priority per example for prioritized replay: ``|TD error|`` for the scalar
learners, the example's own loss for the distributional ones (C51: the
cross-entropy, as Dopamine's Rainbow; QR/IQN: the quantile loss).

Randomness (noise of noisy heads, IQN's fractions) comes from the one ``key`` the
learner passes per update; every forward pass gets its own split of it. The next
action is always picked by ``networks.q_values`` (the online network with
``double_q``, else the target network); Munchausen targets have no argmax.
A batch with ``next_legal`` (environments with a legal-action mask) restricts that
pick to the next state's legal actions (``dqnx.legal``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dqnx import distributional, losses, munchausen, networks
from dqnx import legal as legal_lib


class Munchausen(NamedTuple):
    """Munchausen hyperparameters (Vieillard et al., 2020, arXiv:2007.14430).

    Attributes:
      tau: entropy temperature of the softmax policy, > 0.
      alpha: scale of the log-policy bonus.
      l0: lower clip of the bonus ``tau * log pi``, <= 0.
    """

    tau: float = 0.03
    alpha: float = 0.9
    l0: float = -1.0


class Terms(NamedTuple):
    """One batch's share of the objective.

    Attributes:
      loss: per-example losses ``[B]`` (differentiable in the online parameters).
      priority: per-example priorities ``[B]``, >= 0, without gradient.
      q_tm1: online Q-values ``[B, A]`` at s_tm1 (for metrics).
      metrics: further scalar metrics.
    """

    loss: jax.Array
    priority: jax.Array
    q_tm1: jax.Array
    metrics: dict


# objective(params, target_params, batch, discount_t [B], key | None) -> Terms
Objective = Callable[..., Terms]


def elementwise_loss(loss: str | Callable, huber_delta: float = 1.0) -> Callable:
    """TD errors -> losses: "huber", "mse" (squared), or a function of the TD errors."""
    if callable(loss):
        return loss
    if loss == "huber":
        return lambda td: losses.huber_loss(td, huber_delta)
    if loss == "mse":
        return losses.squared_loss
    raise ValueError(f"unknown loss {loss!r}")


def _splits(key, n: int) -> list:
    """``n`` keys from ``key`` (``n`` Nones without one)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def make_objective(
    network,
    *,
    double_q: bool = True,
    loss: str | Callable = "huber",
    huber_delta: float = 1.0,
    num_tau_samples: int = 64,
    num_tau_prime_samples: int = 64,
    munchausen_params: Munchausen | None = None,
) -> Objective:
    """The objective of ``network``'s head; see the module docstring.

    Args:
      network: a Q-network (``networks.head_of`` tells its head).
      double_q: the online network picks the next action (Double DQN); else the
        target network. Munchausen targets ignore it.
      loss: the scalar learners' elementwise loss of the TD error: "huber",
        "mse" or a function ``td [B] -> [B]``.
      huber_delta: Huber threshold; QR-DQN's and IQN's kappa.
      num_tau_samples: IQN's N: fractions per example for the online values.
      num_tau_prime_samples: IQN's N': fractions per example for the target.
      munchausen_params: Munchausen-DQN / M-IQN when set ("q" and "iqn" heads).
    """
    head = networks.head_of(network)
    if munchausen_params is not None and head.kind not in ("q", "iqn"):
        raise ValueError(f"Munchausen targets need a 'q' or 'iqn' head, not {head.kind!r}")
    elementwise = elementwise_loss(loss, huber_delta)
    m_kwargs = munchausen_params._asdict() if munchausen_params is not None else {}

    def _no_munchausen_mask(legal):
        if munchausen_params is not None and legal is not None:
            raise ValueError("Munchausen targets have no legal-action mask (softmax over all)")

    def select(params, target_params, next_obs, key, next_legal=None):
        """Q-values [B, A] at s_t of the network that picks the next action (illegal
        actions at -inf where the batch has a legal-action mask)."""
        chooser = jax.lax.stop_gradient(params) if double_q else target_params
        q_t = networks.q_values(network, chooser, next_obs, key)
        return legal_lib.mask_or_keep(q_t, next_legal)

    def scalar(params, target_params, batch, discount_t, key) -> Terms:
        k_online, k_target, k_other = _splits(key, 3)
        legal = getattr(batch, "next_legal", None)  # [B, A] or None
        _no_munchausen_mask(legal)
        q_tm1 = networks.forward(network, params, batch.obs, noise_key=k_online)  # [B, A]
        q_t_value = networks.forward(network, target_params, batch.next_obs, noise_key=k_target)
        if munchausen_params is not None:  # the target network's policy at s_tm1 and s_t
            q_tm1_target = networks.forward(
                network, target_params, batch.obs, noise_key=k_target
            )  # [B, A]: the same noise as at s_t, one sample of the target network
            td = jax.vmap(functools.partial(munchausen.munchausen_q_learning, **m_kwargs))(
                q_tm1, batch.action, batch.reward, discount_t, q_t_value, q_tm1_target
            )
        elif double_q or legal is not None:
            # A separate, gradient-free forward pass: concatenating s and s' into
            # one pass would double the backward pass's work. Vanilla DQN with a
            # mask: the target network picks among the legal actions and evaluates.
            q_t_selector = (
                select(params, target_params, batch.next_obs, k_other, legal)
                if double_q
                else legal_lib.mask_values(q_t_value, legal)
            )
            td = jax.vmap(losses.double_q_learning)(
                q_tm1, batch.action, batch.reward, discount_t, q_t_value, q_t_selector
            )
        else:
            td = jax.vmap(losses.q_learning)(
                q_tm1, batch.action, batch.reward, discount_t, q_t_value
            )
        abs_td = jnp.abs(td)
        return Terms(elementwise(td), jax.lax.stop_gradient(abs_td), q_tm1,
                     {"td_abs": jnp.mean(abs_td)})  # fmt: skip

    def categorical(params, target_params, batch, discount_t, key) -> Terms:
        k_online, k_target, k_select = _splits(key, 3)
        atoms = head.atoms
        logits_tm1 = networks.forward(network, params, batch.obs, noise_key=k_online)  # [B, A, K]
        logits_t = networks.forward(network, target_params, batch.next_obs, noise_key=k_target)
        legal = getattr(batch, "next_legal", None)  # [B, A] or None
        if double_q or legal is not None:  # vanilla with a mask: the target net's values pick
            q_t_selector = (
                select(params, target_params, batch.next_obs, k_select, legal)
                if double_q
                else legal_lib.mask_values(head.to_q_values(logits_t), legal)
            )  # [B, A]
            per_example = jax.vmap(
                functools.partial(distributional.categorical_double_q_learning, atoms=atoms)
            )(logits_tm1, batch.action, batch.reward, discount_t, logits_t, q_t_selector)
        else:
            per_example = jax.vmap(
                functools.partial(distributional.categorical_q_learning, atoms=atoms)
            )(logits_tm1, batch.action, batch.reward, discount_t, logits_t)
        q_tm1 = head.to_q_values(logits_tm1)
        return Terms(per_example, jax.lax.stop_gradient(per_example), q_tm1, {})

    def quantile(params, target_params, batch, discount_t, key) -> Terms:
        k_online, k_target, k_select = _splits(key, 3)
        dist_tm1 = networks.forward(network, params, batch.obs, noise_key=k_online)  # [B, N, A]
        dist_t = networks.forward(network, target_params, batch.next_obs, noise_key=k_target)
        q_t_selector = dist_t  # QR-DQN's target network picks the next action
        legal = getattr(batch, "next_legal", None)  # [B, A] or None
        if double_q:  # as a one-row distribution: its mean over quantiles is itself
            q_t_selector = select(params, target_params, batch.next_obs, k_select, legal)[:, None]
        elif legal is not None:
            q_t_selector = legal_lib.mask_values(head.to_q_values(dist_t), legal)[:, None]
        taus = distributional.quantile_midpoints(head.num_quantiles)
        per_example = jax.vmap(
            functools.partial(distributional.quantile_q_learning, huber_param=huber_delta),
            in_axes=(0, None, 0, 0, 0, 0, 0),
        )(dist_tm1, taus, batch.action, batch.reward, discount_t, q_t_selector, dist_t)
        q_tm1 = head.to_q_values(dist_tm1)
        return Terms(per_example, jax.lax.stop_gradient(per_example), q_tm1, {})

    def implicit_quantile(params, target_params, batch, discount_t, key) -> Terms:
        if key is None:
            raise ValueError("the IQN objective needs a key (fractions are sampled)")
        _no_munchausen_mask(getattr(batch, "next_legal", None))
        k_tau, k_tau_t, k_online, k_target, k_q_t, k_q_tm1 = jax.random.split(key, 6)
        b = batch.action.shape[0]
        taus_tm1 = jax.random.uniform(k_tau, (b, num_tau_samples))  # [B, N]
        taus_t = jax.random.uniform(k_tau_t, (b, num_tau_prime_samples))  # [B, N']
        dist_tm1 = networks.forward(
            network, params, batch.obs, taus=taus_tm1, noise_key=k_online
        )  # [B, N, A]
        dist_t = networks.forward(
            network, target_params, batch.next_obs, taus=taus_t, noise_key=k_target
        )  # [B, N', A]
        if munchausen_params is None:
            legal = getattr(batch, "next_legal", None)  # [B, A] or None
            q_t_selector = select(params, target_params, batch.next_obs, k_q_t, legal)[:, None]
            per_example = jax.vmap(
                functools.partial(distributional.iqn_loss, huber_param=huber_delta)
            )(dist_tm1, taus_tm1, batch.action, batch.reward, discount_t, q_t_selector, dist_t)
        else:
            q_t_target = networks.q_values(network, target_params, batch.next_obs, k_q_t)
            q_tm1_target = networks.q_values(network, target_params, batch.obs, k_q_tm1)
            target = jax.vmap(functools.partial(munchausen.munchausen_quantile_target, **m_kwargs))(
                dist_t, q_t_target, q_tm1_target, batch.action, batch.reward, discount_t
            )

            def regression(dist, taus, a_tm1, target_t):
                return distributional.quantile_regression_loss(
                    dist[:, a_tm1], taus, target_t, huber_delta
                )

            per_example = jax.vmap(regression)(dist_tm1, taus_tm1, batch.action, target)
        q_tm1 = head.to_q_values(dist_tm1)
        return Terms(per_example, jax.lax.stop_gradient(per_example), q_tm1, {})

    return {"q": scalar, "categorical": categorical, "quantile": quantile,
            "iqn": implicit_quantile}[head.kind]  # fmt: skip
