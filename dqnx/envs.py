"""gymnax adapter: single-environment pure functions, batched by the caller.

Differences from calling ``gymnax`` directly:

* ``terminated`` and ``truncated`` stay apart, and ``Step.next_obs`` is the
  true observation reached by the action, also when the episode ended and the
  environment was reset. A time-limit truncation can therefore bootstrap from
  the real final state, while ``Step.obs`` is what the actor sees next.
* MinAtar observations (exactly 0/1) are stored as ``bool`` — 4x less replay
  memory than gymnax's float32, losslessly.
* Discrete observations (FrozenLake) become one-hot float vectors.
* Each environment tracks its running episode return and length, and reports
  the finished episode's values on the step that ends it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dqnx.errors import ConfigError, suggest

# Needs a data download at construction, which dqnx never does at run time.
_NEEDS_DOWNLOAD = ("MNISTBandit-bsuite",)


# Imported by gymnax's package ``__init__`` for drawing only (Pong's and MinAtar's
# palettes, Catch's figure); loading them took ~1.3 of gymnax's ~2 s import.
_DRAWING_MODULES = ("seaborn", "matplotlib.pyplot")


def import_gymnax():
    """Imports gymnax with its drawing-only dependencies standing in as
    ``_OnFirstUse`` modules, which import the real module when an attribute is
    first read (e.g. by a visualizer). A module already imported is left as is."""
    if "gymnax" not in sys.modules:
        for name in _DRAWING_MODULES:
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                _OnFirstUse(name).register()
    import gymnax

    return gymnax


class _OnFirstUse(types.ModuleType):
    """Stands in for module ``name`` until an attribute is read, then imports it."""

    def register(self) -> None:
        sys.modules[self.__name__] = self
        parent, _, child = self.__name__.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, self)

    def __getattr__(self, attr):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        module = importlib.import_module(name)  # sets the parent's attribute too
        return getattr(module, attr)


class EnvSpec(NamedTuple):
    """Static facts about an environment, read once on the host."""

    name: str
    num_actions: int
    obs_shape: tuple[int, ...]
    obs_dtype: Any
    max_episode_steps: int


class EnvState(NamedTuple):
    inner: Any  # gymnax state
    episode_return: jax.Array  # [] float32, running
    episode_length: jax.Array  # [] int32, running


class Step(NamedTuple):
    """What one environment step produced (all leaves unbatched here)."""

    obs: jax.Array  # observation to act on next (a reset one after an episode end)
    next_obs: jax.Array  # true observation reached by the action (for bootstrapping)
    reward: jax.Array  # [] float32
    terminated: jax.Array  # [] bool: a terminal state, no bootstrap
    truncated: jax.Array  # [] bool: cut by the time limit, bootstrap from next_obs
    episode_return: jax.Array  # [] float32: return of the episode ended here (if done)
    episode_length: jax.Array  # [] int32: its length (if done)
    # bool [A]: the legal actions at next_obs (envs with a legal-action mask only)
    next_legal: Any = None

    @property
    def done(self) -> jax.Array:
        return jnp.logical_or(self.terminated, self.truncated)


class Env(NamedTuple):
    """A pure environment: ``reset(key) -> (obs, state)``,
    ``step(key, state, action) -> (state, Step)``; an environment with a
    legal-action mask also has ``legal(state) -> bool [A]``, the actions legal
    where ``state`` stands (None for the others)."""

    spec: EnvSpec
    reset: Callable[[jax.Array], tuple[jax.Array, EnvState]]
    step: Callable[[jax.Array, EnvState, jax.Array], tuple[EnvState, Step]]
    legal: Callable[[EnvState], jax.Array] | None = None


def end_flags(terminated, truncated) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(terminated, truncated, done)`` as bools: a step that is both is a
    termination (no bootstrap), never a truncation."""
    terminated = jnp.asarray(terminated, jnp.bool_)
    truncated = jnp.logical_and(jnp.asarray(truncated, jnp.bool_), ~terminated)
    return terminated, truncated, jnp.logical_or(terminated, truncated)


def episode_state(state: EnvState, inner, reward, done) -> tuple[EnvState, jax.Array, jax.Array]:
    """``(state after the step, episode return, episode length)``: the running
    return and length through this step, restarted in the state where ``done``."""
    ep_return = state.episode_return + reward
    ep_length = state.episode_length + 1
    new_state = EnvState(inner, jnp.where(done, 0.0, ep_return), jnp.where(done, 0, ep_length))
    return new_state, ep_return, ep_length


def discrete_env_names() -> list[str]:
    """Every registered gymnax env id with a discrete action space."""
    gymnax = import_gymnax()
    from gymnax.environments import spaces

    names = []
    for name in gymnax.registered_envs:
        if name in _NEEDS_DOWNLOAD:
            continue
        env, params = gymnax.make(name)
        if isinstance(env.action_space(params), spaces.Discrete):
            names.append(name)
    return names


def check_env_name(name: str) -> None:
    """Raises ConfigError for names dqnx cannot train on, with suggestions."""
    gymnax = import_gymnax()

    if name in _NEEDS_DOWNLOAD:
        raise ConfigError(f"gymnax environment {name} downloads a data set at start; not supported")
    if name not in gymnax.registered_envs:
        raise ConfigError(
            f"unknown gymnax environment {name!r}{suggest(name, gymnax.registered_envs)}"
        )
    from gymnax.environments import spaces

    env, params = gymnax.make(name)
    if not isinstance(env.action_space(params), spaces.Discrete):
        raise ConfigError(f"gymnax environment {name} has continuous actions; DQN needs discrete")


def bounds_scaling(name: str, low, high) -> tuple[np.ndarray, np.ndarray]:
    """(center, half width) that map ``[low, high]`` onto [-1, 1] componentwise:
    ``(obs - center) / half_width``; a component with an infinite bound gets
    (0, 1) and passes as it is.

    Raises:
      ConfigError: no component has finite bounds, or a bound interval is empty.
    """
    low = np.asarray(low, np.float64)
    high = np.asarray(high, np.float64)
    low, high = np.broadcast_arrays(low, high)
    finite = np.isfinite(low) & np.isfinite(high) & (np.abs(high - low) < 1e30)
    if not finite.any():
        raise ConfigError(f"--normalize_obs: {name}'s observation space has no finite bounds")
    if np.any(high[finite] <= low[finite]):
        raise ConfigError(f"--normalize_obs: {name}'s observation bounds are empty: {low}, {high}")
    center = np.where(finite, (high + low) / 2, 0.0).astype(np.float32)
    half_width = np.where(finite, (high - low) / 2, 1.0).astype(np.float32)
    return center, half_width


def make(name: str, *, normalize_obs: bool = False, **param_overrides) -> Env:
    """Builds the adapter for gymnax env ``name`` (see module docstring).

    Args:
      name: gymnax env id with a discrete action space.
      normalize_obs: map each observation component with finite bounds in the
        observation space linearly onto [-1, 1] (``bounds_scaling``); vector
        observations only.
      **param_overrides: fields of the env's gymnax ``EnvParams`` to change,
        e.g. ``max_steps_in_episode=100``.

    Raises:
      ConfigError: ``normalize_obs`` for an env without bounded vector observations.
    """
    gymnax = import_gymnax()
    from gymnax.environments import spaces

    check_env_name(name)
    env, params = gymnax.make(name)
    if param_overrides:
        params = params.replace(**param_overrides)
    obs_space = env.observation_space(params)
    if normalize_obs and (isinstance(obs_space, spaces.Discrete) or name.endswith("-MinAtar")):
        raise ConfigError(f"--normalize_obs: {name} has no bounded vector observations to scale")
    if isinstance(obs_space, spaces.Discrete):
        n_obs = int(obs_space.n)

        def convert(obs):
            return jax.nn.one_hot(obs, n_obs, dtype=jnp.float32)
    elif name.endswith("-MinAtar"):

        def convert(obs):
            return obs > 0.5  # MinAtar channels are exactly 0.0 / 1.0
    elif normalize_obs:
        center, half_width = bounds_scaling(name, obs_space.low, obs_space.high)

        def convert(obs):
            return (obs - center) / half_width
    else:

        def convert(obs):
            return obs

    obs0, _ = jax.eval_shape(lambda k: env.reset(k, params), jax.random.key(0))
    obs0 = jax.eval_shape(convert, obs0)
    spec = EnvSpec(
        name=name,
        num_actions=int(env.action_space(params).n),
        obs_shape=tuple(obs0.shape),
        obs_dtype=np.dtype(obs0.dtype),
        max_episode_steps=int(params.max_steps_in_episode),
    )

    def reset(key):
        obs, inner = env.reset(key, params)
        return convert(obs), EnvState(inner, jnp.float32(0.0), jnp.int32(0))

    def step(key, state: EnvState, action):
        obs, inner, reward, terminated, truncated, info = env.step(key, state.inner, action, params)
        reward = jnp.asarray(reward, jnp.float32)
        terminated, truncated, done = end_flags(terminated, truncated)
        new_state, ep_return, ep_length = episode_state(state, inner, reward, done)
        return new_state, Step(
            obs=convert(obs),
            next_obs=convert(info["final_observation"]),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            episode_return=ep_return,
            episode_length=ep_length,
        )

    return Env(spec, reset, step)
