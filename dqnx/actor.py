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

from dqnx import legal as legal_lib
from dqnx import networks, parallel
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
    rollout_steps: Callable[[Any, ActorState, jax.Array, int], tuple]


def episode_stats(steps) -> EpisodeStats:
    """Sums of the returns and lengths of the episodes that ended in ``steps``."""
    done = steps.done
    return EpisodeStats(
        return_sum=jnp.sum(jnp.where(done, steps.episode_return, 0.0)),
        length_sum=jnp.sum(jnp.where(done, steps.episode_length, 0)),
        count=jnp.sum(done.astype(jnp.int32)),
    )


def select_actions(
    network: nn.Module,
    num_actions: int,
    params,
    obs,
    epsilon,
    key,
    *,
    deterministic=False,
    legal=None,
) -> jax.Array:
    """Epsilon-greedy actions ``[N]`` for observations ``obs [N, ...]``; with a
    legal-action mask ``legal [N, A]`` every draw (random and greedy) is legal.

    ``params=None`` acts uniformly at random without evaluating the network;
    ``epsilon`` given as the Python number 0 takes the greedy actions without
    drawing random numbers; otherwise ``epsilon`` is a scalar or ``[N]``.
    Q-values come from ``networks.q_values``: a network that draws random numbers
    (noisy layers, IQN's fractions) draws them from a split of ``key``;
    ``deterministic`` makes noisy layers use their means (greedy evaluation).
    """
    if params is None:
        if legal is not None:
            return legal_lib.random_legal(key, legal)
        return jax.random.randint(key, (obs.shape[0],), 0, num_actions, jnp.int32)
    k_net = None
    if networks.head_of(network).needs_key(deterministic):
        key, k_net = jax.random.split(key)
    q = networks.q_values(network, params, obs, k_net, deterministic=deterministic)  # [N, A]
    if isinstance(epsilon, (int, float)) and epsilon == 0:
        if legal is not None:
            return legal_lib.masked_argmax(q, legal)
        return jnp.argmax(q, axis=-1).astype(jnp.int32)
    return epsilon_greedy(key, q, epsilon, legal)


def make_policy_step(env: Env, network: nn.Module, *, deterministic: bool = False):
    """The one acting step every compiled loop uses (training, evaluation, GIFs):

    ``policy_step(params, obs [N], env_state [N], epsilon, k_act, env_keys [N])
    -> (env_state, envs.Step [N], action [N])``: actions from ``select_actions``
    (``deterministic``: noisy layers use their means), then each environment
    steps with its own key. An environment with a legal-action mask (``env.legal``)
    gets legal actions only.
    """
    batch_step = jax.vmap(env.step)
    batch_legal = jax.vmap(env.legal) if env.legal is not None else None
    num_actions = env.spec.num_actions

    def policy_step(params, obs, env_state, epsilon, k_act, env_keys):
        legal = batch_legal(env_state) if batch_legal is not None else None
        action = select_actions(
            network, num_actions, params, obs, epsilon, k_act, deterministic=deterministic,
            legal=legal,
        )  # fmt: skip
        env_state, step = batch_step(env_keys, env_state, action)
        return env_state, step, action

    return policy_step


def make_actor(env: Env, network: nn.Module, num_envs: int, axis_name: str | None = None) -> Actor:
    """Builds the batched actor over ``num_envs`` copies of ``env``.

    With ``axis_name`` (data-parallel actors), the carried key is the same on
    every device of that axis and each device folds its index into the keys
    it acts and resets with, so its environments are its own.
    """
    batch_reset = jax.vmap(env.reset)
    policy_step = make_policy_step(env, network)

    def init(key) -> ActorState:
        key, k_reset = jax.random.split(key)
        k_reset = parallel.shard_key(k_reset, axis_name)
        obs, env_state = batch_reset(jax.random.split(k_reset, num_envs))
        return ActorState(obs, env_state, key)

    def scan_steps(params, state: ActorState, epsilon, num_steps: int):
        """``num_steps`` steps -> (state, RolloutStep [T, N], EpisodeStats summed over T)."""

        def one_step(carry: ActorState, _):
            key, k_act, k_env = jax.random.split(carry.key, 3)
            k_act = parallel.shard_key(k_act, axis_name)
            k_env = parallel.shard_key(k_env, axis_name)
            env_state, step, action = policy_step(
                params,
                carry.obs,
                carry.env_state,
                epsilon,
                k_act,
                jax.random.split(k_env, num_envs),
            )
            out = RolloutStep(
                carry.obs, action, step.reward, step.next_obs, step.terminated, step.truncated,
                step.next_legal,
            )  # fmt: skip
            return ActorState(step.obs, env_state, key), (out, episode_stats(step))

        state, (steps, stats) = jax.lax.scan(one_step, state, None, length=num_steps)
        return state, steps, jax.tree.map(lambda x: x.sum(0), stats)

    def rollout(params, state: ActorState, epsilon, num_steps: int):
        state, steps, stats = scan_steps(params, state, epsilon, num_steps)
        transitions = Transition(steps.obs, steps.action, steps.reward, steps.next_obs,
                                 steps.terminated, steps.next_legal)  # fmt: skip
        transitions = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), transitions)
        return state, transitions, stats

    return Actor(init, rollout, scan_steps)


def make_evaluator(env: Env, network: nn.Module, num_episodes: int, epsilon: float = 0.0):
    """Greedy (``epsilon``) evaluation: ``evaluate(params, key) -> returns [num_episodes]``.

    Plays ``num_episodes`` episodes in parallel from fresh resets until each has
    ended once (or the environment's step limit has passed) and returns each
    one's undiscounted return. Noisy layers use their means. Pure and jittable.
    """
    batch_reset = jax.vmap(env.reset)
    policy_step = make_policy_step(env, network, deterministic=True)
    limit = env.spec.max_episode_steps + 1

    def evaluate(params, key):
        key, k_reset = jax.random.split(key)
        obs, env_state = batch_reset(jax.random.split(k_reset, num_episodes))
        returns = jnp.zeros((num_episodes,), jnp.float32)
        finished = jnp.zeros((num_episodes,), bool)

        def cond(c):
            t, _, _, _, finished, _ = c
            return jnp.logical_and(t < limit, ~jnp.all(finished))

        def body(c):
            t, obs, env_state, key, finished, returns = c
            key, k_act, k_env = jax.random.split(key, 3)
            env_state, step, _ = policy_step(
                params, obs, env_state, epsilon, k_act, jax.random.split(k_env, num_episodes)
            )
            returns = returns + jnp.where(finished, 0.0, step.reward)
            return t + 1, step.obs, env_state, key, finished | step.done, returns

        carry = (jnp.int32(0), obs, env_state, key, finished, returns)
        return jax.lax.while_loop(cond, body, carry)[-1]

    return evaluate
