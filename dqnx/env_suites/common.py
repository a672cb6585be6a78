"""What the suite adapters share: one-line import errors, same-step auto-reset,
observation flattening.

Every adapter reduces its library to four pure functions of one environment and
``suite_env`` builds the compiled mode's ``envs.Env`` from them, with the
contract of ``dqnx.envs``: ``terminated`` and ``truncated`` apart, ``next_obs``
the true observation reached (also when the episode ended and the environment
was reset in the same step), running episode return and length, and, for an
environment with a legal-action mask, ``Step.next_legal`` (the legal actions at
``next_obs``) and ``Env.legal`` (those where the environment now stands).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dqnx.envs import Env, EnvSpec, EnvState, Step, end_flags, episode_state
from dqnx.errors import ConfigError, suggest

# Evaluation's step bound for an environment without a time limit of its own
# (evaluation ends as soon as every episode has ended once).
NO_TIME_LIMIT = 100_000


def import_suite(prefix: str, module: str, package: str):
    """Imports ``module`` for the ``prefix:`` envs.

    Raises:
      ConfigError: one line naming the extra that installs ``package``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{prefix}: envs need the {package} package: pip install 'dqnx[{prefix}]'"
        ) from None


def check_id(prefix: str, env_id: str, known: Sequence[str]) -> None:
    """Raises a one-line ConfigError with suggestions unless ``env_id`` is in ``known``."""
    if env_id not in known:
        names = [f"{prefix}:{k}" for k in known]
        raise ConfigError(
            f"unknown {prefix} environment {prefix + ':' + env_id!r}"
            f"{suggest(prefix + ':' + env_id, names)}"
        )


def select_fields(obs, keys: Sequence[str] | None, drop: Sequence[str] = ()) -> list:
    """The leaves of the fields ``keys`` of a NamedTuple / dict observation (all
    fields but ``drop`` when ``keys`` is None), in field order then leaf order.

    Raises:
      ConfigError: a key that is not a field (with suggestions).
    """
    if isinstance(obs, dict):
        fields = dict(obs)
    elif hasattr(obs, "_asdict"):
        fields = obs._asdict()
    else:
        if keys:
            raise ConfigError(f"obs_keys: the observation is one array, not fields {keys}")
        return [obs]
    if keys is None:
        keys = [k for k in fields if k not in drop]
    for key in keys:
        if key not in fields:
            raise ConfigError(
                f"obs_keys: no observation field {key!r}{suggest(key, fields)}; "
                f"fields: {', '.join(fields)}"
            )
    return [leaf for key in fields if key in keys for leaf in jax.tree.leaves(fields[key])]


def flatten_leaves(leaves: list) -> jax.Array:
    """One leaf as it is (shape and dtype kept: a CNN can see an image); several
    as one float32 vector, each leaf flattened in turn."""
    if len(leaves) == 1:
        return jnp.asarray(leaves[0])
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])


def parse_keys(obs_keys: str | None) -> list[str] | None:
    """``"grid+step_count"`` -> ``["grid", "step_count"]``; None or "" -> None."""
    if not obs_keys:
        return None
    return [k.strip() for k in str(obs_keys).split("+") if k.strip()]


def _select(done, a, b):
    """``a`` where ``done`` else ``b``, leaf by leaf (PRNG key leaves too)."""

    def pick(x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.dtype != y.dtype:  # a weakly typed constant of the library's
            y = y.astype(x.dtype)
        return jax.lax.select(done, x, y)

    return jax.tree.map(pick, a, b)


def suite_env(
    name: str,
    num_actions: int,
    max_episode_steps: int,
    reset_inner: Callable[[jax.Array], tuple[Any, Any]],
    step_inner: Callable[[jax.Array, Any, jax.Array], tuple],
    convert: Callable[[Any], jax.Array] = lambda obs: obs,
    legal: Callable[[Any], jax.Array] | None = None,
) -> Env:
    """An ``envs.Env`` over a library's single-environment functions, reset in the
    step that ends an episode.

    Args:
      name: the ``LIB:ID`` name.
      num_actions: size of the (flattened) discrete action set.
      max_episode_steps: the time limit (bounds greedy evaluation's loop).
      reset_inner: ``key -> (inner state, raw observation)``.
      step_inner: ``(key, inner, action) -> (inner, raw observation, reward,
        terminated, truncated)``; ``terminated``: a terminal state (no bootstrap),
        ``truncated``: cut short (bootstrap from the observation reached).
      convert: raw observation -> the array the agent sees (and replay keeps).
      legal: ``inner -> bool [num_actions]``, the legal actions where ``inner``
        stands, for an environment with a legal-action mask.
    """

    def reset(key):
        inner, obs = reset_inner(key)
        return convert(obs), EnvState(inner, jnp.float32(0.0), jnp.int32(0))

    obs0 = jax.eval_shape(lambda k: reset(k)[0], jax.random.key(0))
    spec = EnvSpec(name, int(num_actions), tuple(obs0.shape), np.dtype(obs0.dtype),
                   int(max_episode_steps))  # fmt: skip

    def step(key, state: EnvState, action):
        k_step, k_reset = jax.random.split(key)
        inner, raw, reward, terminated, truncated = step_inner(k_step, state.inner, action)
        reward = jnp.asarray(reward, jnp.float32)
        terminated, truncated, done = end_flags(terminated, truncated)
        next_obs = convert(raw)
        next_legal = None if legal is None else jnp.asarray(legal(inner), jnp.bool_)
        fresh, fresh_raw = reset_inner(k_reset)
        new_state, ep_return, ep_length = episode_state(
            state, _select(done, fresh, inner), reward, done
        )
        return new_state, Step(
            obs=jax.lax.select(done, convert(fresh_raw), next_obs),
            next_obs=next_obs,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            episode_return=ep_return,
            episode_length=ep_length,
            next_legal=next_legal,
        )

    env_legal = None
    if legal is not None:

        def env_legal(state: EnvState):
            return jnp.asarray(legal(state.inner), jnp.bool_)

    return Env(spec, reset, step, env_legal)
