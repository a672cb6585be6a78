"""``jumanji:ID`` — Jumanji's single-agent problems (Bonnet et al., 2024, arXiv:2306.09884).

* **Actions**: a ``DiscreteArray`` action set as it is; a ``MultiDiscreteArray``
  one (Tetris: rotation x column, Minesweeper: row x column, ...) as one
  discrete set of ``prod(num_values)`` actions, unravelled in row-major order.
  Environments with one action per agent (the mask's shape is not the action
  set's) are not supported.
* **Legal actions**: the observation's ``action_mask`` (flattened the same way)
  is the legal-action mask; acting and the bootstrap target use legal actions only.
* **Observations**: Jumanji's are NamedTuples of arrays. ``obs_keys`` picks the
  fields the agent sees (``grid``, or ``board+action_mask``); by default every
  field but ``action_mask``. One array is kept as it is (an image ``[H, W, C]``
  goes to a CNN under ``--network=auto``); several are flattened into one float32
  vector, field after field.
* **Episode ends**: most Jumanji environments end an episode at their
  ``time_limit`` with discount 0, as at a real end. Here a last step is a
  truncation when it has discount 1 or the state's ``step_count`` has reached
  the environment's ``time_limit`` (also in the rare step where a real end
  coincides with the limit), a termination otherwise. Reset in the same step.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from dqnx.env_suites.common import (
    NO_TIME_LIMIT,
    check_id,
    flatten_leaves,
    import_suite,
    parse_keys,
    select_fields,
    suite_env,
)
from dqnx.envs import Env
from dqnx.errors import ConfigError


def _library():
    import_suite("jumanji", "jumanji", "jumanji")
    return import_suite("jumanji", "jumanji.registration", "jumanji")


def check_name(env_id: str) -> None:
    check_id("jumanji", env_id, sorted(_library()._REGISTRY))


def _action_set(env_id: str, env, mask_shape):
    """(number of actions, flat index -> the env's action)."""
    specs = import_suite("jumanji", "jumanji.specs", "jumanji")
    spec = env.action_spec
    if isinstance(spec, specs.DiscreteArray):
        return int(spec.num_values), lambda a: a
    if isinstance(spec, specs.MultiDiscreteArray):
        sizes = tuple(int(n) for n in jnp.ravel(spec.num_values))
        if mask_shape is not None and tuple(mask_shape) != sizes:
            raise ConfigError(
                f"jumanji:{env_id} has one action per agent (mask {tuple(mask_shape)}, "
                f"actions {sizes}); dqnx trains one agent"
            )
        return math.prod(sizes), lambda a: jnp.stack(jnp.unravel_index(a, sizes)).astype(spec.dtype)
    raise ConfigError(f"jumanji:{env_id} has {type(spec).__name__} actions; DQN needs discrete")


def make(env_id: str, obs_keys: str | None = None) -> Env:
    """Jumanji environment ``env_id`` (see the module docstring).

    Args:
      env_id: a registered Jumanji id, e.g. ``Snake-v1``.
      obs_keys: the observation fields the agent sees, joined by ``+``
        (``grid+step_count``); default every field but ``action_mask``.
    """
    import jax

    env = _library().make(env_id)
    example = jax.eval_shape(env.reset, jax.random.key(0))[1].observation
    mask = getattr(example, "action_mask", None)
    num_actions, to_action = _action_set(env_id, env, None if mask is None else mask.shape)
    keys = parse_keys(obs_keys)
    select_fields(example, keys, drop=("action_mask",))  # a bad key fails here, not in a trace

    def convert(obs):
        return flatten_leaves(select_fields(obs, keys, drop=("action_mask",)))

    def with_mask(state, timestep):
        if mask is None:
            return (state, None), timestep.observation
        return (state, jnp.ravel(timestep.observation.action_mask)), timestep.observation

    def reset_inner(key):
        return with_mask(*env.reset(key))

    def step_inner(key, inner, action):
        del key  # Jumanji's randomness comes from the key in its state
        state, timestep = env.step(inner[0], to_action(action))
        last = timestep.step_type == 2
        truncated = last & ((timestep.discount != 0) | timed_out(state))
        terminated = last & ~truncated
        inner, obs = with_mask(state, timestep)
        return inner, obs, timestep.reward, terminated, truncated

    limit = getattr(env, "time_limit", None) or NO_TIME_LIMIT
    example_state = jax.eval_shape(env.reset, jax.random.key(0))[0]
    counts = hasattr(env, "time_limit") and hasattr(example_state, "step_count")

    def timed_out(state):
        return state.step_count >= env.time_limit if counts else jnp.bool_(False)

    return suite_env(
        f"jumanji:{env_id}",
        num_actions,
        int(limit),
        reset_inner,
        step_inner,
        convert,
        legal=None if mask is None else (lambda inner: inner[1]),
    )
