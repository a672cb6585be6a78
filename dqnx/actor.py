"""Actors: ``num_envs`` environments stepped together (vmap), epsilon-greedy.

``rollout`` runs ``num_steps`` steps with ``lax.scan`` and returns the
transitions flattened to ``[num_steps * num_envs]`` (time-major), ready for
``replay.add``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dqnx import parallel
from dqnx.envs import Env
from dqnx.exploration import epsilon_greedy
from dqnx.nstep import RolloutStep
from dqnx.types import ActorState, EpisodeStats, Transition


class Actor(NamedTuple):
    """``init(key) -> ActorState``;
    ``rollout(params, state, epsilon, num_steps) -> (state, Transition[T*N], EpisodeStats)``.

    ``params=None`` acts uniformly at random without evaluating the network
    (prefill). ``epsilon`` is a scalar or one value per environment ``[N]``.
    """

    init: Callable[[jax.Array], ActorState]
    rollout: Callable[[Any, ActorState, jax.Array, int], tuple]
    # Same, but steps stay time-major [T, N] and keep ``truncated``
    # (``nstep.RolloutStep``), as n-step returns need.
    rollout_steps: Callable[[Any, ActorState, jax.Array, int], tuple] | None = None


def episode_stats(steps) -> EpisodeStats:
    """Sums of the returns and lengths of the episodes that ended in ``steps``."""
    done = steps.done
    return EpisodeStats(
        return_sum=jnp.sum(jnp.where(done, steps.episode_return, 0.0)),
        length_sum=jnp.sum(jnp.where(done, steps.episode_length, 0)),
        count=jnp.sum(done.astype(jnp.int32)),
    )


def make_actor(env: Env, network: nn.Module, num_envs: int, axis_name: str | None = None) -> Actor:
    """Builds the batched actor over ``num_envs`` copies of ``env``.

    With ``axis_name`` (data-parallel actors), the carried key is the same on
    every device of that axis and each device folds its index into the keys
    it acts and resets with, so its environments are its own.
    """
    num_actions = env.spec.num_actions
    batch_reset = jax.vmap(env.reset)
    batch_step = jax.vmap(env.step)

    def init(key) -> ActorState:
        key, k_reset = jax.random.split(key)
        k_reset = parallel.shard_key(k_reset, axis_name)
        obs, env_state = batch_reset(jax.random.split(k_reset, num_envs))
        return ActorState(obs, env_state, key)

    def act(params, obs, epsilon, key):
        if params is None:
            return jax.random.randint(key, (num_envs,), 0, num_actions, jnp.int32)
        q = network.apply(params, obs)  # [N, A]
        return epsilon_greedy(key, q, epsilon)

    def rollout_steps(params, state: ActorState, epsilon, num_steps: int):
        def one_step(carry: ActorState, _):
            key, k_act, k_env = jax.random.split(carry.key, 3)
            k_act = parallel.shard_key(k_act, axis_name)
            k_env = parallel.shard_key(k_env, axis_name)
            action = act(params, carry.obs, epsilon, k_act)
            env_state, step = batch_step(jax.random.split(k_env, num_envs), carry.env_state, action)
            out = RolloutStep(
                carry.obs, action, step.reward, step.next_obs, step.terminated, step.truncated
            )
            return ActorState(step.obs, env_state, key), (out, episode_stats(step))

        state, (steps, stats) = jax.lax.scan(one_step, state, None, length=num_steps)
        return state, steps, jax.tree.map(lambda x: x.sum(0), stats)

    def rollout(params, state: ActorState, epsilon, num_steps: int):
        def one_step(carry: ActorState, _):
            key, k_act, k_env = jax.random.split(carry.key, 3)
            k_act = parallel.shard_key(k_act, axis_name)
            k_env = parallel.shard_key(k_env, axis_name)
            action = act(params, carry.obs, epsilon, k_act)
            env_state, step = batch_step(jax.random.split(k_env, num_envs), carry.env_state, action)
            transition = Transition(carry.obs, action, step.reward, step.next_obs, step.terminated)
            return ActorState(step.obs, env_state, key), (transition, episode_stats(step))

        state, (transitions, stats) = jax.lax.scan(one_step, state, None, length=num_steps)
        transitions = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), transitions)
        stats = jax.tree.map(lambda x: x.sum(0), stats)
        return state, transitions, stats

    return Actor(init, rollout, rollout_steps)
