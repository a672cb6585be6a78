"""The learner: loss -> gradients (-> pmean) -> optax -> target refresh.

One learner for the DQN family: the loss is an objective (``objectives``: DQN,
C51, QR-DQN, IQN, Munchausen, or one of your own); the rest is shared.
``refresh_target`` is the target refresh (periodic copy or Polyak averaging).

``make_learner`` closes over the network, optimizer and hyperparameters and
returns ``Learner(init, update)`` of pure functions, in the style of optax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from dqnx import networks, objectives, parallel
from dqnx.types import LearnerState, Transition


class Learner(NamedTuple):
    """The learner's pure functions (``make_learner``).

    - ``init(key, obs_example[B, ...]) -> LearnerState``;
    - ``update(state, batch: Transition[B]) -> (state, metrics)``: one step on
      the mean of the objective's per-example losses;
    - ``update_weighted(state, batch, weights[B] | None) -> (state, metrics,
      priority[B])``: the same step on the losses weighted per transition
      (importance sampling; None: unweighted), and each transition's new
      priority (``objectives.Terms.priority``: ``|TD error|`` for DQN, the
      example's own loss for C51, QR-DQN and IQN). With prioritized replay
      (``prioritized.prioritized_replay``): ``items, indices, weights =
      sample(replay, key, B, beta)``; ``update_weighted(state, items, weights)``;
      then ``update_priorities(replay, indices, priority)``.

    A batch with a ``discount`` field (n-step transitions, ``nstep``) uses it
    instead of ``gamma * (1 - terminated)``."""

    init: Callable[[jax.Array, jax.Array], LearnerState]
    update: Callable[[LearnerState, Transition], tuple[LearnerState, dict]]
    update_weighted: Callable


def make_optimizer(
    learning_rate: float,
    adam_eps: float = 1e-8,
    max_grad_norm: float = 0.0,
    anneal_steps: int = 0,
):
    """Adam, after global-norm clipping when ``max_grad_norm > 0``; with
    ``anneal_steps > 0`` the step size decays linearly to 0 over that many updates.
    ``learning_rate``, ``adam_eps`` and ``max_grad_norm`` may be traced scalars (a
    vmapped sweep); a traced ``max_grad_norm`` always clips."""
    if anneal_steps > 0:
        learning_rate = optax.linear_schedule(learning_rate, 0.0, anneal_steps)
    adam = optax.adam(learning_rate, eps=adam_eps)
    if not isinstance(max_grad_norm, int | float) or max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)
    return adam


def make_learner(
    network: nn.Module,
    optimizer: optax.GradientTransformation,
    objective: objectives.Objective,
    *,
    gamma: float,
    target_update_period: int | jax.Array = 1,
    tau: float | jax.Array | tuple[jax.Array, jax.Array] = 1.0,
    axis_name: str | None = None,
) -> Learner:
    """Builds the learner minimising ``objective`` (``objectives``: DQN, Double
    DQN, Munchausen, C51, QR-DQN, IQN, or a function of your own) for ``network``.

    DQN target: r + gamma * (1 - terminated) * Q_target(s', a*), with
    a* = argmax_a Q_online(s', a) for Double DQN (van Hasselt et al., 2016)
    or a* = argmax_a Q_target(s', a) for vanilla DQN (Mnih et al., 2015); the other
    objectives bootstrap with the same discount (an n-step batch's own ``discount``).

    A network or objective that draws random numbers (a noisy head, IQN's
    fractions, an objective with ``needs_key``) gets a key kept in
    ``LearnerState.key``: update ``k`` draws from ``fold_in(key, k)`` (and, over a
    data axis, each shard from its own fold of that), so a run is deterministic and
    resumes exactly; seeds differ by their init keys.

    ``gamma``, ``target_update_period``, ``tau``, the objective's hyperparameters
    (the Huber threshold, Munchausen's alpha and l0) and the optimizer's may be
    traced scalars (the runs of a vmapped sweep). A traced ``tau`` may come as the
    pair ``(tau, 1 - tau)`` with ``1 - tau`` computed in float64, so its average
    rounds as a Python float's does; a traced ``tau == 1`` copies, as a Python 1.0 does.

    Args:
      network: flax module mapping [B, *obs] to its head's output (Q-values
        [B, A] for any module without a ``networks.Head``).
      optimizer: optax transformation applied to the (averaged) gradients.
      objective: ``objectives.Objective``; one that declares a head (``kind``)
        must match the network's (``objectives.check_head``).
      gamma: discount factor.
      target_update_period: learner updates between target refreshes.
      tau: refresh rate, 1.0 for a hard copy, < 1 for Polyak averaging
        target <- tau * online + (1 - tau) * target at each refresh
        (``refresh_target``).
      axis_name: when set, gradients and metrics are averaged with
        ``lax.pmean`` over this named axis (data-parallel learner).

    Returns:
      ``Learner(init, update, update_weighted)``.

    Raises:
      ValueError: the objective reads another head than the network's.
    """
    objectives.check_head(objective, network)
    draws = networks.head_of(network).needs_key() or getattr(objective, "needs_key", False)

    def init(key, obs_example) -> LearnerState:
        params = network.init(key, obs_example)
        return LearnerState(
            params=params,
            target_params=jax.tree.map(jnp.copy, params),
            opt_state=optimizer.init(params),
            num_updates=jnp.int32(0),
            key=jax.random.fold_in(key, 1) if draws else None,
        )

    def loss_fn(params, target_params, batch: Transition, weights, key):
        if hasattr(batch, "discount"):  # n-step: gamma^k * (1 - terminated)
            discount_t = batch.discount.astype(jnp.float32)
        else:
            discount_t = gamma * (1.0 - batch.terminated.astype(jnp.float32))  # [B]
        terms = objective(network, params, target_params, batch, discount_t, key)
        per_example = terms.loss
        if weights is not None:
            per_example = weights * per_example
        loss_value = jnp.mean(per_example)
        metrics = {"loss": loss_value, "q_mean": jnp.mean(terms.q_tm1), **terms.metrics}
        return loss_value, (metrics, terms.priority)

    def update_weighted(state: LearnerState, batch: Transition, weights):
        key = None
        if state.key is not None:
            key = parallel.shard_key(jax.random.fold_in(state.key, state.num_updates), axis_name)
        grads, (metrics, priority) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.target_params, batch, weights, key
        )
        if axis_name is not None:
            # One all-reduce of one flat vector: collectives have a fixed cost each.
            flat, unravel = jax.flatten_util.ravel_pytree((grads, metrics))
            grads, metrics = unravel(jax.lax.pmean(flat, axis_name))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        num_updates = state.num_updates + 1
        target_params = refresh_target(
            params, state.target_params, num_updates, target_update_period, tau
        )
        state = LearnerState(params, target_params, opt_state, num_updates, state.key)
        return state, metrics, priority

    def update(state: LearnerState, batch: Transition):
        state, metrics, _ = update_weighted(state, batch, None)
        return state, metrics

    return Learner(init, update, update_weighted)


def refresh_target(params, target_params, num_updates, period=1, tau=1.0):
    """The target parameters after update ``num_updates`` (counted from 1):
    refreshed when ``num_updates % period == 0``, else as they were. A refresh
    copies (``tau == 1``, DQN's periodic hard update) or averages,
    ``tau * params + (1 - tau) * target_params`` (Polyak; ``period=1`` for every
    update). ``period`` and ``tau`` may be traced (see ``make_learner``)."""
    fresh = _refreshed(params, target_params, tau)
    refresh = num_updates % period == 0
    return jax.tree.map(lambda f, o: jnp.where(refresh, f, o), fresh, target_params)


def _refreshed(params, target_params, tau):
    """The target parameters a refresh at rate ``tau`` writes (see ``make_learner``)."""
    if isinstance(tau, int | float):
        return params if tau == 1.0 else optax.incremental_update(params, target_params, tau)
    tau, complement = tau if isinstance(tau, tuple) else (tau, 1.0 - tau)
    # optax.incremental_update's expression, with the complement given.
    polyak = jax.tree.map(lambda new, old: tau * new + complement * old, params, target_params)
    return jax.tree.map(lambda new, avg: jnp.where(tau == 1.0, new, avg), params, polyak)
