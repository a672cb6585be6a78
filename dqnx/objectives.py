"""What each learner minimises, as values: an objective maps one batch to
per-example losses and priorities.

An objective is any callable
``objective(network, params, target_params, batch, discount_t, key) -> Terms``;
``learner.make_learner(network, optimizer, objective, gamma=...)`` minimises the
mean of its (importance-weighted) losses. The DQN family's objectives are frozen
dataclasses holding their own hyperparameters (acme's losses are the model):

- ``DQN``: (Double) DQN TD errors through an elementwise loss (Huber or squared),
  or Munchausen DQN (Vieillard et al., 2020) with ``munchausen``;
- ``C51``: C51's cross-entropy (Bellemare et al., 2017), Double-DQN selection as
  in Rainbow (Hessel et al., 2018) with ``double_q``;
- ``QR``: QR-DQN's quantile Huber loss (Dabney et al., 2018a);
- ``IQN``: IQN's quantile Huber loss at sampled fractions (Dabney et al., 2018b),
  or M-IQN with ``munchausen``.

The functions ``dqn``, ``double_dqn``, ``munchausen``, ``c51``, ``qr`` and ``iqn``
build them. Each declares the head it reads (``kind``, the names of
``defaults.LEARNERS``): ``check_head`` (called by ``make_learner``) refuses a
network whose head is another, rather than training something else silently. An
objective of your own (a penalty on Q-values, an auxiliary loss) is a function of
the same arguments, usually calling one of these and changing its ``Terms``.

Each returns one loss per example (the learner weights and averages them) and one
priority per example for prioritized replay: ``|TD error|`` for DQN, the
example's own loss for the distributional ones (C51: the cross-entropy, as
Dopamine's Rainbow; QR/IQN: the quantile loss).

Randomness (noise of noisy heads, IQN's fractions) comes from the one ``key`` the
learner passes per update; every forward pass gets its own split of it. The next
action is always picked by ``networks.q_values`` (the online network with
``double_q``, else the target network); Munchausen targets have no argmax.
A batch with ``next_legal`` (environments with a legal-action mask) restricts that
pick to the next state's legal actions (``dqnx.legal``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from dqnx import defaults, distributional, losses, networks
from dqnx import legal as legal_lib
from dqnx import munchausen as m_lib
from dqnx.defaults import Munchausen

__all__ = [
    "C51", "DQN", "IQN", "QR", "Munchausen", "Objective", "Terms", "c51", "check_head",
    "double_dqn", "dqn", "elementwise_loss", "iqn", "munchausen", "qr",
]  # fmt: skip


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


class Objective(Protocol):
    """``(network, params, target_params, batch, discount_t [B], key | None) -> Terms``.

    ``batch`` is a ``types.Transition`` (or ``nstep.NStepTransition``) of ``B``
    examples; ``discount_t`` the learner's per-example discount of the bootstrap
    (``gamma * (1 - terminated)``, or the n-step batch's own ``discount``);
    ``key`` is None unless the network draws random numbers (``networks.Head.needs_key``)
    or the objective has ``needs_key = True``. An optional ``kind`` attribute
    (one of ``defaults.LEARNERS``) names the head it needs."""

    def __call__(self, network, params, target_params, batch, discount_t, key) -> Terms: ...


def elementwise_loss(loss: str | Callable, huber_delta: float = defaults.HUBER_DELTA) -> Callable:
    """TD errors -> losses: "huber", "mse" (squared), or a function of the TD errors."""
    if callable(loss):
        return loss
    if loss == "huber":
        return lambda td: losses.huber_loss(td, huber_delta)
    if loss == "mse":
        return losses.squared_loss
    raise ValueError(f"unknown loss {loss!r}; one of ('huber', 'mse') or a function")


def check_head(objective: Any, network) -> None:
    """Raises ValueError when ``objective`` declares a head (``kind``) that
    ``network`` does not end in (``networks.head_of``)."""
    kind = getattr(objective, "kind", None)
    head = networks.head_of(network)
    if kind is not None and head.kind != kind:
        raise ValueError(
            f"the {type(objective).__name__} objective reads a {kind!r} head, but the network "
            f"ends in a {head.kind!r} head; build the network with "
            f"networks.Head(kind={kind!r}) or pick the objective of its head"
        )


def _splits(key, n: int) -> list:
    """``n`` keys from ``key`` (``n`` Nones without one)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def _select(network, params, target_params, next_obs, key, double_q, next_legal=None):
    """Q-values [B, A] at s_t of the network that picks the next action: the
    online one (gradient-free) with ``double_q``, else the target one; illegal
    actions at -inf where the batch has a legal-action mask."""
    chooser = jax.lax.stop_gradient(params) if double_q else target_params
    q_t = networks.q_values(network, chooser, next_obs, key)
    return legal_lib.mask_or_keep(q_t, next_legal)


def _no_munchausen_mask(munchausen, legal) -> None:
    if munchausen is not None and legal is not None:
        raise ValueError("Munchausen targets have no legal-action mask (softmax over all)")


@dataclasses.dataclass(frozen=True)
class DQN:
    """(Double) DQN: TD errors of ``losses.double_q_learning`` (or
    ``losses.q_learning``) through an elementwise loss; Munchausen-DQN with
    ``munchausen``. Priorities ``|TD error|``; a "dqn" head (Q-values ``[B, A]``).

    Attributes:
      double_q: the online network picks the next action (van Hasselt et al.,
        2016); else the target network (Mnih et al., 2015). Munchausen targets
        have no argmax and ignore it.
      loss: "huber", "mse", or a function mapping TD errors ``[B]`` to losses ``[B]``.
      huber_delta: the Huber threshold.
      munchausen: Munchausen-DQN's hyperparameters, or None.
    """

    kind: ClassVar[str] = "dqn"
    double_q: bool = True
    loss: str | Callable = "huber"
    huber_delta: float = defaults.HUBER_DELTA
    munchausen: Munchausen | None = None

    def __call__(self, network, params, target_params, batch, discount_t, key) -> Terms:
        k_online, k_target, k_other = _splits(key, 3)
        legal = getattr(batch, "next_legal", None)  # [B, A] or None
        _no_munchausen_mask(self.munchausen, legal)
        q_tm1 = networks.forward(network, params, batch.obs, noise_key=k_online)  # [B, A]
        q_t_value = networks.forward(network, target_params, batch.next_obs, noise_key=k_target)
        if self.munchausen is not None:  # the target network's policy at s_tm1 and s_t
            q_tm1_target = networks.forward(
                network, target_params, batch.obs, noise_key=k_target
            )  # [B, A]: the same noise as at s_t, one sample of the target network
            td = jax.vmap(
                functools.partial(m_lib.munchausen_q_learning, **self.munchausen._asdict())
            )(q_tm1, batch.action, batch.reward, discount_t, q_t_value, q_tm1_target)
        elif self.double_q or legal is not None:
            # A separate, gradient-free forward pass: concatenating s and s' into
            # one pass would double the backward pass's work. Vanilla DQN with a
            # mask: the target network picks among the legal actions and evaluates.
            q_t_selector = (
                _select(network, params, target_params, batch.next_obs, k_other, True, legal)
                if self.double_q
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
        loss = elementwise_loss(self.loss, self.huber_delta)(td)
        return Terms(loss, jax.lax.stop_gradient(abs_td), q_tm1, {"td_abs": jnp.mean(abs_td)})


@dataclasses.dataclass(frozen=True)
class C51:
    """C51's cross-entropy to the projected target distribution
    (``distributional.categorical_double_q_learning`` / ``categorical_q_learning``)
    over the head's support (``Head.atoms``). Priorities: the cross-entropy.

    Attributes:
      double_q: the online network's Q-values pick the next action (Rainbow).
    """

    kind: ClassVar[str] = "c51"
    double_q: bool = True

    def __call__(self, network, params, target_params, batch, discount_t, key) -> Terms:
        k_online, k_target, k_select = _splits(key, 3)
        head = networks.head_of(network)
        atoms = head.atoms
        logits_tm1 = networks.forward(network, params, batch.obs, noise_key=k_online)  # [B, A, K]
        logits_t = networks.forward(network, target_params, batch.next_obs, noise_key=k_target)
        legal = getattr(batch, "next_legal", None)  # [B, A] or None
        if self.double_q or legal is not None:  # vanilla with a mask: the target net's values
            q_t_selector = (
                _select(network, params, target_params, batch.next_obs, k_select, True, legal)
                if self.double_q
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


@dataclasses.dataclass(frozen=True)
class QR:
    """QR-DQN's quantile Huber loss (``distributional.quantile_q_learning``) at the
    head's fixed fractions. Priorities: the loss.

    Attributes:
      double_q: the online network's Q-values pick the next action; else the
        target distribution's mean (QR-DQN's own choice).
      kappa: the quantile Huber threshold.
    """

    kind: ClassVar[str] = "qr"
    double_q: bool = True
    kappa: float = defaults.HUBER_DELTA

    def __call__(self, network, params, target_params, batch, discount_t, key) -> Terms:
        k_online, k_target, k_select = _splits(key, 3)
        head = networks.head_of(network)
        dist_tm1 = networks.forward(network, params, batch.obs, noise_key=k_online)  # [B, N, A]
        dist_t = networks.forward(network, target_params, batch.next_obs, noise_key=k_target)
        q_t_selector = dist_t  # QR-DQN's target network picks the next action
        legal = getattr(batch, "next_legal", None)  # [B, A] or None
        if self.double_q:  # as a one-row distribution: its mean over quantiles is itself
            q_t_selector = _select(
                network, params, target_params, batch.next_obs, k_select, True, legal
            )[:, None]
        elif legal is not None:
            q_t_selector = legal_lib.mask_values(head.to_q_values(dist_t), legal)[:, None]
        taus = distributional.quantile_midpoints(head.num_quantiles)
        per_example = jax.vmap(
            functools.partial(distributional.quantile_q_learning, huber_param=self.kappa),
            in_axes=(0, None, 0, 0, 0, 0, 0),
        )(dist_tm1, taus, batch.action, batch.reward, discount_t, q_t_selector, dist_t)
        q_tm1 = head.to_q_values(dist_tm1)
        return Terms(per_example, jax.lax.stop_gradient(per_example), q_tm1, {})


@dataclasses.dataclass(frozen=True)
class IQN:
    """IQN's quantile Huber loss at sampled fractions (``distributional.iqn_loss``),
    or M-IQN's (``munchausen.munchausen_quantile_target``) with ``munchausen``.
    Priorities: the loss. Needs a key (the fractions are sampled).

    Attributes:
      num_tau_samples: fractions per example for the online values (``N``).
      num_tau_prime_samples: fractions per example for the target (``N'``).
      double_q: the online network picks the next action; else the target one.
      kappa: the quantile Huber threshold.
      munchausen: M-IQN's hyperparameters, or None.
    """

    kind: ClassVar[str] = "iqn"
    needs_key: ClassVar[bool] = True
    num_tau_samples: int = defaults.IQN.num_tau_samples
    num_tau_prime_samples: int = defaults.IQN.num_tau_prime_samples
    double_q: bool = True
    kappa: float = defaults.HUBER_DELTA
    munchausen: Munchausen | None = None

    def __call__(self, network, params, target_params, batch, discount_t, key) -> Terms:
        if key is None:
            raise ValueError("the IQN objective needs a key (fractions are sampled)")
        legal = getattr(batch, "next_legal", None)  # [B, A] or None
        _no_munchausen_mask(self.munchausen, legal)
        head = networks.head_of(network)
        k_tau, k_tau_t, k_online, k_target, k_q_t, k_q_tm1 = jax.random.split(key, 6)
        b = batch.action.shape[0]
        taus_tm1 = jax.random.uniform(k_tau, (b, self.num_tau_samples))  # [B, N]
        taus_t = jax.random.uniform(k_tau_t, (b, self.num_tau_prime_samples))  # [B, N']
        dist_tm1 = networks.forward(
            network, params, batch.obs, taus=taus_tm1, noise_key=k_online
        )  # [B, N, A]
        dist_t = networks.forward(
            network, target_params, batch.next_obs, taus=taus_t, noise_key=k_target
        )  # [B, N', A]
        if self.munchausen is None:
            q_t_selector = _select(
                network, params, target_params, batch.next_obs, k_q_t, self.double_q, legal
            )[:, None]
            per_example = jax.vmap(
                functools.partial(distributional.iqn_loss, huber_param=self.kappa)
            )(dist_tm1, taus_tm1, batch.action, batch.reward, discount_t, q_t_selector, dist_t)
        else:
            q_t_target = networks.q_values(network, target_params, batch.next_obs, k_q_t)
            q_tm1_target = networks.q_values(network, target_params, batch.obs, k_q_tm1)
            target = jax.vmap(
                functools.partial(m_lib.munchausen_quantile_target, **self.munchausen._asdict())
            )(dist_t, q_t_target, q_tm1_target, batch.action, batch.reward, discount_t)

            def regression(dist, taus, a_tm1, target_t):
                return distributional.quantile_regression_loss(
                    dist[:, a_tm1], taus, target_t, self.kappa
                )

            per_example = jax.vmap(regression)(dist_tm1, taus_tm1, batch.action, target)
        q_tm1 = head.to_q_values(dist_tm1)
        return Terms(per_example, jax.lax.stop_gradient(per_example), q_tm1, {})


def dqn(*, loss: str | Callable = "huber", huber_delta: float = defaults.HUBER_DELTA) -> DQN:
    """DQN (Mnih et al., 2015): the target network picks the next action."""
    return DQN(double_q=False, loss=loss, huber_delta=huber_delta)


def double_dqn(*, loss: str | Callable = "huber", huber_delta: float = defaults.HUBER_DELTA) -> DQN:
    """Double DQN (van Hasselt et al., 2016): the online network picks it."""
    return DQN(double_q=True, loss=loss, huber_delta=huber_delta)


def munchausen(
    *,
    tau: float = Munchausen.tau,
    alpha: float = Munchausen.alpha,
    l0: float = Munchausen.l0,
    loss: str | Callable = "huber",
    huber_delta: float = defaults.HUBER_DELTA,
) -> DQN:
    """Munchausen-DQN (Vieillard et al., 2020) on a "dqn" head."""
    return DQN(loss=loss, huber_delta=huber_delta, munchausen=Munchausen(tau, alpha, l0))


def c51(*, double_q: bool = True) -> C51:
    """C51 (Bellemare et al., 2017) on a "c51" head."""
    return C51(double_q=double_q)


def qr(*, double_q: bool = True, kappa: float = defaults.HUBER_DELTA) -> QR:
    """QR-DQN (Dabney et al., 2018a) on a "qr" head."""
    return QR(double_q=double_q, kappa=kappa)


def iqn(
    *,
    num_tau_samples: int = defaults.IQN.num_tau_samples,
    num_tau_prime_samples: int = defaults.IQN.num_tau_prime_samples,
    double_q: bool = True,
    kappa: float = defaults.HUBER_DELTA,
    munchausen: Munchausen | None = None,
) -> IQN:
    """IQN (Dabney et al., 2018b), or M-IQN with ``munchausen``, on an "iqn" head."""
    return IQN(num_tau_samples, num_tau_prime_samples, double_q, kappa, munchausen)
