"""``N`` single Python environments stepped in a loop behind the ``HostEnv`` interface.

Used for libraries without a vector environment of their own (MinAtar) and for
the scripted test environment. The loop adds what those libraries lack: an
optional time limit (a truncation), either autoreset convention, and episode
statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from dqnx.host_envs.base import AUTORESET_MODES, SAME_STEP, HostEnvBase, HostEnvSpec, HostStep


class SingleEnv(Protocol):
    """One environment as the loop drives it."""

    def reset(self) -> np.ndarray:
        """Starts an episode; returns its first observation."""
        ...

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        """Returns ``(observation, reward, terminated)``."""
        ...


class LoopedHostEnv(HostEnvBase):
    """``HostEnv`` over ``N`` ``SingleEnv`` objects built by ``make_env(index, seed)``.

    Args:
      spec: the environment's spec (its ``max_episode_steps`` is informational;
        the limit applied is ``max_episode_steps`` below).
      num_envs: ``N``.
      make_env: ``(env_index, env_seed) -> SingleEnv``; called for every
        environment on each ``reset(seed)``, so a reseeded batch starts fresh.
      seed: the default seed of ``reset()``.
      max_episode_steps: ``None`` (no limit), or the step at which an episode is
        truncated, one value for all environments or one per environment.
      autoreset: ``"same_step"`` or ``"next_step"`` (see ``dqnx.host_envs.base``).
    """

    def __init__(
        self,
        spec: HostEnvSpec,
        num_envs: int,
        make_env: Callable[[int, int], SingleEnv],
        seed: int,
        max_episode_steps: int | None | Sequence[int | None] = None,
        autoreset: str = SAME_STEP,
    ):
        if autoreset not in AUTORESET_MODES:
            raise ValueError(f"autoreset must be one of {AUTORESET_MODES}, got {autoreset!r}")
        super().__init__(spec, num_envs, seed)
        self._make_env = make_env
        self._same_step = autoreset == SAME_STEP
        limits = max_episode_steps
        if limits is None or isinstance(limits, int):
            limits = [limits] * num_envs
        if len(limits) != num_envs:
            raise ValueError(f"max_episode_steps needs {num_envs} values, got {len(limits)}")
        # [N] int64; 0 means no limit.
        self._limit = np.array([0 if m is None else m for m in limits], np.int64)
        if (self._limit < 0).any():
            raise ValueError(f"max_episode_steps must be positive, got {list(limits)}")
        self._envs: list[SingleEnv] = []
        self._steps = np.zeros(num_envs, np.int64)  # agent steps into the current episode
        self._pending_reset = np.zeros(num_envs, np.bool_)  # next-step convention only

    def _empty_obs(self) -> np.ndarray:
        return np.empty((self.num_envs, *self.spec.obs_shape), self.spec.obs_dtype)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Rebuilds and resets every environment; returns ``[N, *obs_shape]``."""
        seeds = self._reset_seeds(seed)
        self._envs = [self._make_env(i, int(s)) for i, s in enumerate(seeds)]
        obs = self._empty_obs()
        for i, env in enumerate(self._envs):
            obs[i] = env.reset()
        self._steps[:] = 0
        self._pending_reset[:] = False
        return obs

    def step(self, actions: np.ndarray) -> HostStep:
        if not self._envs:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions)
        n = self.num_envs
        obs, next_obs = self._empty_obs(), self._empty_obs()
        reward = np.zeros(n, np.float32)
        terminated = np.zeros(n, np.bool_)
        truncated = np.zeros(n, np.bool_)
        valid = ~self._pending_reset
        for i, env in enumerate(self._envs):
            if self._pending_reset[i]:  # next-step reset: the action is discarded
                obs[i] = next_obs[i] = env.reset()
                self._steps[i] = 0
                continue
            o, r, term = env.step(int(actions[i]))
            self._steps[i] += 1
            reward[i] = r
            terminated[i] = term
            truncated[i] = not term and self._limit[i] > 0 and self._steps[i] >= self._limit[i]
            next_obs[i] = o
            if (term or truncated[i]) and self._same_step:
                obs[i] = env.reset()
                self._steps[i] = 0
            else:
                obs[i] = o
        done = terminated | truncated
        self._pending_reset = done & (not self._same_step)
        return self._host_step(obs, next_obs, reward, terminated, truncated, done, valid)

    capture_problem = None  # the environments are Python objects: pickled whole

    def _get_state(self) -> dict:
        return {
            "envs": self._envs,
            "steps": self._steps.copy(),
            "pending": self._pending_reset.copy(),
        }

    def _set_state(self, state: dict) -> None:
        self._envs = list(state["envs"])
        self._steps[:], self._pending_reset[:] = state["steps"], state["pending"]

    def close(self) -> None:
        for env in self._envs:
            close = getattr(env, "close", None)
            if close is not None:
                close()
        self._envs = []
