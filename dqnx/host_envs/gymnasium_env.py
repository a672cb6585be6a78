"""``gymnasium:ID`` — any registered Gymnasium env with discrete actions and Box observations.

Stepped through Gymnasium's vector environments: ``SyncVectorEnv`` (one
process) by default, ``AsyncVectorEnv`` (one subprocess per environment) with
``asynchronous=True``.

Autoreset (Gymnasium >= 1.1): in ``AutoresetMode.SAME_STEP`` the vector env
resets an ended environment inside the same ``step`` and puts the true final
observation in ``info["final_obs"]`` (an object array, set where
``info["_final_obs"]``); that becomes ``HostStep.next_obs``. In
``AutoresetMode.NEXT_STEP`` (option ``autoreset="next_step"``) the step after
an episode end only resets (reward 0, action ignored) and is reported with
``valid=False``. A time limit comes from the env's registered
``max_episode_steps`` or the ``max_episode_steps`` option (Gymnasium's
``TimeLimit``) and is a truncation.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from dqnx.errors import ConfigError, suggest
from dqnx.host_envs.base import (
    AUTORESET_MODES,
    SAME_STEP,
    HostEnvSpec,
    HostStep,
    VectorHostEnv,
    import_library,
    library_error,
)

# Observation dtypes kept as they are; every other dtype becomes float32.
_COMPACT_DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.int8))


def import_gymnasium():
    gymnasium = import_library("gymnasium", ("gymnasium",), "the gymnasium package", "host")
    if not hasattr(gymnasium.vector, "AutoresetMode"):
        needs = f"gymnasium>=1.1 (found {gymnasium.__version__})"
        raise library_error("gymnasium", needs, "host")
    return gymnasium


def check_name(env_id: str) -> None:
    gymnasium = import_gymnasium()
    if env_id.startswith("ALE/"):  # Atari goes through ale-py's vector env
        game = env_id[4:].split("-")[0]
        snake = "".join("_" + c.lower() if c.isupper() else c for c in game).lstrip("_")
        raise ConfigError(
            f"gymnasium:{env_id}: Atari games run through ale-py's vector environment: "
            f"--env_name=ale:{snake}"
        )
    if env_id not in gymnasium.envs.registry:
        names = ["gymnasium:" + k for k in gymnasium.envs.registry]
        raise ConfigError(
            f"unknown Gymnasium env gymnasium:{env_id}{suggest('gymnasium:' + env_id, names)}"
        )


def _obs_dtype(space) -> np.dtype:
    dtype = np.dtype(space.dtype)
    return dtype if dtype in _COMPACT_DTYPES else np.dtype(np.float32)


def _spec_of(env_id: str, env) -> HostEnvSpec:
    """Reads and checks the spaces of one built env (single or vector)."""
    gymnasium = import_gymnasium()
    action_space = getattr(env, "single_action_space", env.action_space)
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    name = f"gymnasium:{env_id}"
    if not isinstance(action_space, gymnasium.spaces.Discrete):
        raise ConfigError(f"{name} has action space {action_space}; DQN needs Discrete")
    if not isinstance(obs_space, gymnasium.spaces.Box):
        raise ConfigError(f"{name} has observation space {obs_space}; dqnx needs a Box")
    return HostEnvSpec(
        name=name,
        num_actions=int(action_space.n),
        obs_shape=tuple(obs_space.shape),
        obs_dtype=_obs_dtype(obs_space),
        max_episode_steps=None,
    )


def _make_one(env_id: str, max_episode_steps: int | None, env_kwargs: dict | None):
    """``gymnasium.make`` wrapped as a ConfigError-raising call (one line)."""
    gymnasium = import_gymnasium()
    try:
        return gymnasium.make(env_id, max_episode_steps=max_episode_steps, **(env_kwargs or {}))
    except gymnasium.error.Error as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"gymnasium:{env_id} could not be built: {first_line}") from None


def spec(
    env_id: str, max_episode_steps: int | None = None, env_kwargs: dict | None = None, **_
) -> HostEnvSpec:
    """The spec of ``gymnasium:env_id`` (builds one env, reads its spaces, closes it)."""
    check_name(env_id)
    env = _make_one(env_id, max_episode_steps, env_kwargs)
    with contextlib.closing(env):
        limit = env.spec.max_episode_steps if env.spec is not None else None
        return _spec_of(env_id, env)._replace(max_episode_steps=limit)


class GymnasiumHostEnv(VectorHostEnv):
    """``HostEnv`` over a Gymnasium vector env (see the module docstring)."""

    def __init__(self, vector_env, env_spec: HostEnvSpec, seed: int, autoreset: str):
        super().__init__(vector_env, env_spec, seed)
        self._same_step = autoreset == SAME_STEP
        self._action_start = int(vector_env.single_action_space.start)
        self._pending_reset = np.zeros(self.num_envs, np.bool_)
        if isinstance(vector_env, import_gymnasium().vector.AsyncVectorEnv):
            self.capture_problem = "AsyncVectorEnv's environments live in subprocesses"
        else:  # SyncVectorEnv: its environments (and their generators) pickle whole
            self.capture_problem = None

    def _get_state(self) -> dict:
        return {"vector_env": self._env, "pending": self._pending_reset.copy()}

    def _set_state(self, state: dict) -> None:
        self._env.close()
        self._env = state["vector_env"]
        self._pending_reset[:] = state["pending"]

    def _convert(self, obs) -> np.ndarray:
        return np.asarray(obs).astype(self.spec.obs_dtype, copy=True)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self._env.reset(seed=[int(s) for s in self._reset_seeds(seed)])
        self._pending_reset[:] = False
        return self._convert(obs)

    def step(self, actions: np.ndarray) -> HostStep:
        actions = self._check_actions(actions)
        obs, reward, terminated, truncated, info = self._env.step(
            actions.astype(np.int64) + self._action_start
        )
        obs = self._convert(obs)
        next_obs = obs.copy()
        if self._same_step and "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                next_obs[i] = info["final_obs"][i]
        valid = ~self._pending_reset
        done = np.logical_or(terminated, truncated)
        if not self._same_step:
            self._pending_reset = done & valid
        return self._host_step(obs, next_obs, reward, terminated, truncated, done, valid)


def make(
    env_id: str,
    num_envs: int,
    seed: int,
    asynchronous: bool = False,
    autoreset: str = SAME_STEP,
    max_episode_steps: int | None = None,
    env_kwargs: dict | None = None,
    context: str = "forkserver",
    evaluation: bool = False,
) -> GymnasiumHostEnv:
    """Builds ``num_envs`` copies of Gymnasium env ``env_id`` behind one ``HostEnv``.

    Args:
      env_id: a registered Gymnasium id, e.g. ``"CartPole-v1"``.
      num_envs: ``N``.
      seed: default seed of ``reset()``; environment ``i`` is reset with
        ``env_seeds(seed, N)[i]`` and autoresets continue its generator.
      asynchronous: ``AsyncVectorEnv`` (subprocesses) instead of ``SyncVectorEnv``.
      autoreset: ``"same_step"`` (default; every step valid) or ``"next_step"``.
      max_episode_steps: overrides the registered time limit (``TimeLimit``).
      env_kwargs: further keyword arguments of ``gymnasium.make``.
      context: multiprocessing start method of ``AsyncVectorEnv``. The default
        ``"forkserver"`` avoids forking a process that runs JAX threads.
      evaluation: accepted for a uniform interface; no effect here.
    """
    del evaluation
    if autoreset not in AUTORESET_MODES:
        raise ConfigError(f"autoreset must be one of {AUTORESET_MODES}, got {autoreset!r}")
    env_spec = spec(env_id, max_episode_steps, env_kwargs)  # checks name and spaces
    gymnasium = import_gymnasium()
    mode = (
        gymnasium.vector.AutoresetMode.SAME_STEP
        if autoreset == SAME_STEP
        else gymnasium.vector.AutoresetMode.NEXT_STEP
    )
    # A partial of gymnasium.make pickles by reference: subprocesses import only gymnasium.
    env_fn = functools.partial(
        gymnasium.make, env_id, max_episode_steps=max_episode_steps, **(env_kwargs or {})
    )
    if asynchronous:
        vector_env = gymnasium.vector.AsyncVectorEnv(
            [env_fn] * num_envs, autoreset_mode=mode, context=context
        )
    else:
        vector_env = gymnasium.vector.SyncVectorEnv([env_fn] * num_envs, autoreset_mode=mode)
    return GymnasiumHostEnv(vector_env, env_spec, seed, autoreset)
