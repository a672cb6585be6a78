"""A scripted host environment whose every transition a test can predict.

Environment ``i`` runs episodes that end at fixed steps: it terminates when
the episode reaches ``terminate_at[i]`` steps, or is truncated at
``truncate_at[i]`` steps (termination wins when both fall on the same step).
The observation encodes where the environment is::

    obs = float32 [env_index, episode_index, step_in_episode]

so the first observation of environment 2's fourth episode is ``[2, 3, 0]``
and the final one of a 5-step episode has ``step_in_episode == 5``. The reward
of a step is the action taken (as float32), so a test can also check that each
action reached its own environment and that a discarded action was not counted.
The seed is accepted for the interface and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dqnx.host_envs.base import SAME_STEP, HostEnvSpec
from dqnx.host_envs.looped import LoopedHostEnv

OBS_DTYPE = np.dtype(np.float32)


class _ScriptedEnv:
    def __init__(self, index: int, terminate_at: int | None):
        self._index = index
        self._terminate_at = terminate_at
        self._episode = -1
        self._step = 0

    def _obs(self) -> np.ndarray:
        return np.array([self._index, self._episode, self._step], OBS_DTYPE)

    def reset(self) -> np.ndarray:
        self._episode += 1
        self._step = 0
        return self._obs()

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        self._step += 1
        return self._obs(), float(action), self._step == self._terminate_at


def _per_env(value, num_envs: int, name: str) -> list[int | None]:
    values = [value] * num_envs if value is None or isinstance(value, int) else list(value)
    if len(values) != num_envs:
        raise ValueError(f"{name} needs {num_envs} values, got {len(values)}")
    if any(v is not None and v < 1 for v in values):
        raise ValueError(f"{name} values must be >= 1 or None, got {values}")
    return values


def make_scripted_env(
    num_envs: int,
    terminate_at: int | None | Sequence[int | None] = None,
    truncate_at: int | None | Sequence[int | None] = None,
    num_actions: int = 2,
    autoreset: str = SAME_STEP,
    seed: int = 0,
) -> LoopedHostEnv:
    """Builds ``num_envs`` scripted environments (see the module docstring).

    Args:
      num_envs: ``N``.
      terminate_at: the episode length at which each environment terminates
        (one value for all, or one per environment; ``None``: never).
      truncate_at: the episode length at which each environment is truncated
        (a time limit; ``None``: never).
      num_actions: size of the action set.
      autoreset: ``"same_step"`` or ``"next_step"``.
      seed: default seed of ``reset()`` (no effect on the streams).

    Returns:
      A ``HostEnv`` named ``"scripted"`` with observations float32 ``[N, 3]``.
    """
    terminate = _per_env(terminate_at, num_envs, "terminate_at")
    truncate = _per_env(truncate_at, num_envs, "truncate_at")
    limits = [t for t in truncate if t is not None]
    spec = HostEnvSpec(
        name="scripted",
        num_actions=num_actions,
        obs_shape=(3,),
        obs_dtype=OBS_DTYPE,
        max_episode_steps=max(limits) if len(limits) == num_envs else None,
    )
    return LoopedHostEnv(
        spec,
        num_envs,
        lambda index, _seed: _ScriptedEnv(index, terminate[index]),
        seed=seed,
        max_episode_steps=truncate,
        autoreset=autoreset,
    )
