"""The DQN learner: TD loss -> gradients (-> pmean) -> optax -> target refresh.

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

from dqnx import losses
from dqnx.types import LearnerState, Transition


class Learner(NamedTuple):
    """``init(key, obs_example[B, ...]) -> LearnerState``;
    ``update(state, batch: Transition[B]) -> (state, metrics)``;
    ``update_weighted(state, batch, weights[B]) -> (state, metrics, td[B])``: the
    loss weighted per transition (importance sampling), TD errors returned (new
    priorities). A batch with a ``discount`` field (n-step transitions) uses it
    instead of ``gamma * (1 - terminated)``."""

    init: Callable[[jax.Array, jax.Array], LearnerState]
    update: Callable[[LearnerState, Transition], tuple[LearnerState, dict]]
    update_weighted: Callable | None = None


def make_optimizer(
    learning_rate: float,
    adam_eps: float = 1e-8,
    max_grad_norm: float = 0.0,
    anneal_steps: int = 0,
):
    """Adam, after global-norm clipping when ``max_grad_norm > 0``; with
    ``anneal_steps > 0`` the step size decays linearly to 0 over that many updates."""
    if anneal_steps > 0:
        learning_rate = optax.linear_schedule(learning_rate, 0.0, anneal_steps)
    adam = optax.adam(learning_rate, eps=adam_eps)
    if max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)
    return adam


def make_learner(
    network: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    gamma: float,
    double_q: bool = True,
    loss: str | Callable[[jax.Array], jax.Array] = "huber",
    huber_delta: float = 1.0,
    target_update_period: int = 1,
    tau: float = 1.0,
    axis_name: str | None = None,
) -> Learner:
    """Builds the (Double) DQN learner.

    Target: r + gamma * (1 - terminated) * Q_target(s', a*), with
    a* = argmax_a Q_online(s', a) for Double DQN (van Hasselt et al., 2016)
    or a* = argmax_a Q_target(s', a) for vanilla DQN (Mnih et al., 2015).

    Args:
      network: flax module mapping [B, *obs] to Q-values [B, A].
      optimizer: optax transformation applied to the (averaged) gradients.
      gamma: discount factor.
      double_q: Double DQN target; False gives the vanilla max target.
      loss: "huber", "mse", or a function mapping TD errors [B] to losses [B].
      huber_delta: Huber threshold.
      target_update_period: learner updates between target refreshes.
      tau: refresh rate, 1.0 for a hard copy, < 1 for Polyak averaging
        target <- tau * online + (1 - tau) * target at each refresh.
      axis_name: when set, gradients and metrics are averaged with
        ``lax.pmean`` over this named axis (data-parallel learner).

    Returns:
      ``Learner(init, update)``.
    """
    if callable(loss):
        elementwise = loss
    elif loss == "huber":
        elementwise = lambda td: losses.huber_loss(td, huber_delta)
    elif loss == "mse":
        elementwise = losses.squared_loss
    else:
        raise ValueError(f"unknown loss {loss!r}")

    def init(key, obs_example) -> LearnerState:
        params = network.init(key, obs_example)
        return LearnerState(
            params=params,
            target_params=jax.tree.map(jnp.copy, params),
            opt_state=optimizer.init(params),
            num_updates=jnp.int32(0),
        )

    def loss_fn(params, target_params, batch: Transition, weights):
        if hasattr(batch, "discount"):  # n-step: gamma^k * (1 - terminated)
            discount_t = batch.discount.astype(jnp.float32)
        else:
            discount_t = gamma * (1.0 - batch.terminated.astype(jnp.float32))  # [B]
        q_tm1 = network.apply(params, batch.obs)  # [B, A]
        q_t_value = network.apply(target_params, batch.next_obs)  # [B, A]
        if double_q:
            # A separate, gradient-free forward pass: concatenating s and s' into
            # one pass would double the backward pass's work.
            q_t_selector = network.apply(jax.lax.stop_gradient(params), batch.next_obs)
            td = jax.vmap(losses.double_q_learning)(
                q_tm1, batch.action, batch.reward, discount_t, q_t_value, q_t_selector
            )
        else:
            td = jax.vmap(losses.q_learning)(
                q_tm1, batch.action, batch.reward, discount_t, q_t_value
            )
        per_example = elementwise(td)
        if weights is not None:
            per_example = weights * per_example
        loss_value = jnp.mean(per_example)
        metrics = {"loss": loss_value, "q_mean": jnp.mean(q_tm1), "td_abs": jnp.mean(jnp.abs(td))}
        return loss_value, (metrics, td)

    def update_weighted(state: LearnerState, batch: Transition, weights):
        grads, (metrics, td) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.target_params, batch, weights
        )
        if axis_name is not None:
            # One all-reduce of one flat vector: collectives have a fixed cost each.
            flat, unravel = jax.flatten_util.ravel_pytree((grads, metrics))
            grads, metrics = unravel(jax.lax.pmean(flat, axis_name))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        num_updates = state.num_updates + 1
        refresh = num_updates % target_update_period == 0
        if tau == 1.0:
            fresh = params
        else:
            fresh = optax.incremental_update(params, state.target_params, tau)
        target_params = jax.tree.map(
            lambda f, o: jnp.where(refresh, f, o), fresh, state.target_params
        )
        return LearnerState(params, target_params, opt_state, num_updates), metrics, td

    def update(state: LearnerState, batch: Transition):
        state, metrics, _ = update_weighted(state, batch, None)
        return state, metrics

    return Learner(init, update, update_weighted)
