"""The batched-numpy interface shared by every host environment.

A host environment steps ``N`` environments on the CPU for one actor thread
(Podracer's Sebulba layout, Hessel et al. 2021). It differs from the gymnax
adapter (``dqnx.envs``) only in where it runs: the same step contract holds —
``terminated`` and ``truncated`` stay apart, ``next_obs`` is the true
observation the action reached (the final one at an episode end), and
observations keep a compact dtype.

Two autoreset conventions exist in the libraries wrapped here:

* same-step: the step that ends an episode also resets it; ``obs`` is the first
  observation of the next episode and ``next_obs`` the final one of the ended
  episode. Every step is ``valid``.
* next-step: the step that ends an episode returns the final observation as
  ``obs``; the following step resets the environment and discards its action.
  That step is reported with ``valid=False`` and must not become a transition.

Arrays returned by ``reset`` and ``step`` belong to the caller: an environment
never writes into them again, so an actor may queue them without copying.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from dqnx.errors import ConfigError

#: The autoreset conventions (see the module docstring).
SAME_STEP = "same_step"
NEXT_STEP = "next_step"
AUTORESET_MODES = (SAME_STEP, NEXT_STEP)


class HostEnvSpec(NamedTuple):
    """Static facts about a host environment.

    Attributes:
      name: the full name, e.g. ``"gymnasium:CartPole-v1"``.
      num_actions: size of the discrete action set (the Q-network's head size).
      obs_shape: shape of one observation.
      obs_dtype: its dtype: ``bool`` for MinAtar, ``uint8`` for Atari, ``float32``
        otherwise (a compact library dtype such as ``uint8`` is kept).
      max_episode_steps: the time limit in agent steps, ``None`` if unknown or
        unlimited.
    """

    name: str
    num_actions: int
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    max_episode_steps: int | None


class HostStep(NamedTuple):
    """What one step of ``N`` environments produced; every leaf has leading axis ``[N]``.

    Attributes:
      obs: the observation to act on next (a reset one after an episode end).
      next_obs: the true observation the action reached (the final one at an
        episode end): bootstrap from it.
      reward: float32, unclipped.
      terminated: bool: no bootstrap from ``next_obs`` (a terminal state; with a
        life-loss signal, a lost life too).
      truncated: bool: cut by a time limit; bootstrap from ``next_obs``. Never
        True together with ``terminated``.
      done: bool: the episode really ended here and the environment was (or, in
        the next-step convention, will be) reset; for logging and frame stacks.
        A lost life that does not end the game is ``terminated`` but not ``done``.
      episode_return: float32: the unclipped return of the episode that ended
        here (valid where ``done``).
      episode_length: int32: its length in agent steps (valid where ``done``).
      valid: bool: False where this step was a library reset step whose action
        was discarded (next-step convention); never a transition.
    """

    obs: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    done: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray
    valid: np.ndarray


@runtime_checkable
class HostEnv(Protocol):
    """``N`` environments stepped together by one actor thread.

    ``reset(seed)`` must be called before the first ``step``. The same seed gives
    the same observations and rewards for the same actions; each of the ``N``
    environments gets its own seed (``env_seeds``).
    """

    spec: HostEnvSpec
    num_envs: int

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Resets all environments; returns observations ``[N, *obs_shape]``.

        ``seed=None`` uses the seed the environment was made with.
        """
        ...

    def step(self, actions: np.ndarray) -> HostStep:
        """Applies ``actions`` (int ``[N]``, in ``[0, num_actions)``) to all environments."""
        ...

    def close(self) -> None:
        """Releases threads, processes and emulators. Idempotent."""
        ...


def env_seeds(seed: int, num_envs: int) -> np.ndarray:
    """One seed per environment, int64 ``[num_envs]`` in ``[0, 2**31)``.

    Drawn from ``np.random.SeedSequence(seed)``, so runs with different seeds get
    unrelated streams (not overlapping ranges such as ``seed + i``). Every
    library here accepts these values (ALE needs non-negative int32).
    """
    state = np.random.SeedSequence(seed).generate_state(num_envs, dtype=np.uint32)
    return (state >> 1).astype(np.int64)


def check_actions(actions, num_envs: int, num_actions: int) -> np.ndarray:
    """Returns ``actions`` as int32 ``[num_envs]``; raises ValueError if out of range.

    Checked on the host because an out-of-range action aborts some emulators
    (ALE's C++ threads) instead of raising.
    """
    actions = np.asarray(actions)
    if actions.shape != (num_envs,) or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(
            f"actions must be an integer array of shape ({num_envs},), got "
            f"{actions.dtype} {actions.shape}"
        )
    if num_envs and (actions.min() < 0 or actions.max() >= num_actions):
        raise ValueError(f"actions must lie in [0, {num_actions}), got {actions.tolist()}")
    return actions.astype(np.int32)


class EpisodeStats:
    """Running return and length of each of ``N`` episodes, in agent steps.

    ``update`` adds one step and reports, for every environment, the return and
    length including that step; where ``done`` the running values restart.
    Invalid (discarded) steps add nothing.
    """

    def __init__(self, num_envs: int):
        self._return = np.zeros(num_envs, np.float64)
        self._length = np.zeros(num_envs, np.int32)

    def reset(self) -> None:
        self._return[:] = 0.0
        self._length[:] = 0

    def get_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self._return.copy(), self._length.copy()

    def set_state(self, state) -> None:
        self._return[:], self._length[:] = state

    def update(self, reward, done, valid) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(episode_return float32 [N], episode_length int32 [N])``."""
        self._return += np.where(valid, reward, 0.0)
        self._length += valid.astype(np.int32)
        episode_return = self._return.astype(np.float32)
        episode_length = self._length.copy()
        self._return[done] = 0.0
        self._length[done] = 0
        return episode_return, episode_length


def make_host_step(obs, next_obs, reward, terminated, truncated, done, valid, stats) -> HostStep:
    """Builds a ``HostStep`` with the contract's dtypes, updating ``stats``.

    ``truncated`` is cleared where ``terminated`` (a terminal state never
    bootstraps), and an invalid step reports no reward and no episode end.
    """
    valid = np.asarray(valid, np.bool_)
    reward = np.where(valid, np.asarray(reward, np.float32), np.float32(0.0))
    terminated = np.asarray(terminated, np.bool_) & valid
    truncated = np.asarray(truncated, np.bool_) & ~terminated & valid
    done = np.asarray(done, np.bool_) & valid
    episode_return, episode_length = stats.update(reward, done, valid)
    return HostStep(  # the fields in order
        obs, next_obs, reward, terminated, truncated, done, episode_return, episode_length, valid
    )


class HostEnvBase:
    """What the ``HostEnv`` classes here share.

    Holds ``spec``, ``num_envs``, the default seed of ``reset`` and the episode
    statistics. A subclass's ``reset`` starts with ``self._reset_seeds(seed)``; its
    ``step`` checks ``actions`` with ``self._check_actions`` and ends with
    ``self._host_step``.
    """

    #: Why ``get_state`` cannot capture this environment (None: it can).
    capture_problem: str | None = "its library offers no way to save an environment's state"

    def __init__(self, spec: HostEnvSpec, num_envs: int, seed: int):
        self.spec = spec
        self.num_envs = num_envs
        self._seed = seed
        self._stats = EpisodeStats(num_envs)

    def get_state(self) -> dict:
        """Everything the next ``step`` depends on (picklable objects, not copies:
        pickle them before stepping again); raises NotImplementedError with
        ``capture_problem`` where the library cannot give it."""
        if self.capture_problem is not None:
            raise NotImplementedError(self.capture_problem)
        return {"stats": self._stats.get_state(), **self._get_state()}

    def set_state(self, state: dict) -> None:
        """Continues from ``get_state()`` (of an environment made the same way)."""
        self._stats.set_state(state["stats"])
        self._set_state(state)

    def _get_state(self) -> dict:
        raise NotImplementedError

    def _set_state(self, state: dict) -> None:
        raise NotImplementedError

    def _reset_seeds(self, seed: int | None) -> np.ndarray:
        """Restarts the statistics; returns the seeds of ``reset(seed)``, one per environment."""
        self._stats.reset()
        return env_seeds(self._seed if seed is None else seed, self.num_envs)

    def _check_actions(self, actions) -> np.ndarray:
        return check_actions(actions, self.num_envs, self.spec.num_actions)

    def _host_step(self, obs, next_obs, reward, terminated, truncated, done, valid) -> HostStep:
        return make_host_step(
            obs, next_obs, reward, terminated, truncated, done, valid, self._stats
        )


class VectorHostEnv(HostEnvBase):
    """A ``HostEnvBase`` over one library vector env of ``num_envs`` environments."""

    def __init__(self, vector_env, spec: HostEnvSpec, seed: int):
        super().__init__(spec, vector_env.num_envs, seed)
        self._env = vector_env

    def close(self) -> None:
        self._env.close()


def library_error(prefix: str, needs: str, extra: str, upgrade: bool = False) -> ConfigError:
    """The one-line error of ``prefix:`` envs that need ``needs``, from ``dqnx[extra]``."""
    pip = "pip install -U" if upgrade else "pip install"
    return ConfigError(f"{prefix}: envs need {needs}: {pip} 'dqnx[{extra}]'")


def import_library(prefix: str, modules: Sequence[str], needs: str, extra: str):
    """Imports ``modules`` in order for the ``prefix:`` envs; returns the first.

    Raises:
      ConfigError: ``library_error(prefix, needs, extra)`` if an import fails.
    """
    try:
        return [importlib.import_module(name) for name in modules][0]
    except ImportError:
        raise library_error(prefix, needs, extra) from None
