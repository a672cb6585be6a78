"""``pgx:ID`` — pgx games (Koyamada et al., 2023, arXiv:2303.17503) as one agent's MDP.

* **One-player** games (``2048``, ``minatar-*``): as they are.
* **Two-player** games: the agent is player 0; player 1 plays uniformly random
  legal moves inside the environment's step (and first, at reset, when pgx's
  random seating gives it the first move). A step is the agent's move and then
  the opponent's until it is the agent's turn or the game is over; the reward is
  player 0's over both (+1 win, -1 loss, 0 draw in the board games). Games of
  more players are not supported.
* **Legal actions**: pgx's ``legal_action_mask`` at the agent's turn is the
  legal-action mask; acting and the bootstrap target use legal actions only.
* **Observations**: player 0's view (``observe(state, 0)``), pgx's dtype kept
  (bool planes for the board games). pgx's ``terminated`` is a termination,
  ``truncated`` a truncation; the environment is reset in the same step.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from dqnx import legal as legal_lib
from dqnx.env_suites.common import NO_TIME_LIMIT, check_id, import_suite, suite_env
from dqnx.envs import Env
from dqnx.errors import ConfigError

AGENT = 0  # the agent's player id in two-player games


def _library():
    return import_suite("pgx", "pgx", "pgx")


def check_name(env_id: str) -> None:
    check_id("pgx", env_id, _library().available_envs())


def make(env_id: str) -> Env:
    """pgx game ``env_id`` (``pgx.available_envs()``); see the module docstring."""
    env = _library().make(env_id)
    players = int(env.num_players)
    if players > 2:
        raise ConfigError(f"pgx:{env_id} has {players} players; dqnx plays 1- and 2-player games")

    def over(state):
        return state.terminated | state.truncated

    def opponent_moves(key, state):
        """Random legal moves of player 1 until it is the agent's turn or the game is over:
        (state, the agent's reward over them)."""

        def cond(carry):
            state, _, _ = carry
            return ~over(state) & (state.current_player != AGENT)

        def body(carry):
            state, key, reward = carry
            key, k_move, k_step = jax.random.split(key, 3)
            move = legal_lib.random_legal(k_move, state.legal_action_mask)
            state = env.step(state, move, k_step)
            return state, key, reward + state.rewards[AGENT]

        state, _, reward = jax.lax.while_loop(cond, body, (state, key, jnp.float32(0.0)))
        return state, reward

    def observe(state):
        if players == 1:
            return state.observation
        with warnings.catch_warnings():  # player_id is deprecated, and the one way to
            warnings.simplefilter("ignore", DeprecationWarning)  # see a truncated end
            return env.observe(state, jnp.int32(AGENT))  # from player 0's side

    def reset_inner(key):
        k_init, k_opponent = jax.random.split(key)
        state = env.init(k_init)
        if players == 2:
            state, _ = opponent_moves(k_opponent, state)
        return state, observe(state)

    def step_inner(key, state, action):
        k_step, k_opponent = jax.random.split(key)
        state = env.step(state, action, k_step)
        reward = state.rewards[AGENT]
        if players == 2:
            state, opponent_reward = opponent_moves(k_opponent, state)
            reward = reward + opponent_reward
        return state, observe(state), reward, state.terminated, state.truncated

    return suite_env(
        f"pgx:{env_id}",
        int(env.num_actions),
        NO_TIME_LIMIT,
        reset_inner,
        step_inner,
        legal=lambda state: state.legal_action_mask,
    )
