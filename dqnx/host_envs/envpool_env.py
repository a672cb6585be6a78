"""``envpool:GAME`` — Atari 2600 games through EnvPool's C++ pool (``envpool.make_gymnasium``).

The same games, preprocessing and protocols as ``ale:GAME`` (``ale_env``: frame
skip 4 with a max over the last two frames, 84x84 grayscale, 4 stacked frames
uint8 ``[N, 4, 84, 84]``, no-op starts, the minimal action set, unclipped
rewards; ``protocol`` "machado" or "nature" with the same options), mapped onto
EnvPool's settings: its time limit counts agent steps, so
``max_num_frames_per_episode`` is divided by the frame skip; ``use_fire_reset``
is off unless asked for (EnvPool's default is on); environment ``i`` is seeded
with ``env_seeds(seed, N)[i]`` when the pool is built (EnvPool cannot reseed, so
``reset`` builds a new pool).

Autoreset: EnvPool resets an ended environment on the *next* step and ignores
that step's action. Here every environment that ended in a step is reset at
once (``reset`` of those ids alone) and its first observation returned as
``obs``, the step's own observation becoming ``next_obs``: the same-step
contract of ``ale:``, every step valid, no transition across an episode end,
so frame replay applies. EnvPool fills a new episode's stack with copies of its
first frame; the frames before the episode's first are zeroed here, as ALE
does, so an actor acts on the stacks frame replay rebuilds.

Differences EnvPool documents or shows against ALE's vector env: its no-op
start draws its count differently (the frames seen after a reset differ even at
the same seed; sticky actions draw from its own generator); its ROMs are its
own package's. With no randomness on either side (``noop_max=0``,
``repeat_action_probability=0``) the frames are the same
(``tests/test_host_envs_envpool.py``). EnvPool offers no state save: no exact
resume.
"""

from __future__ import annotations

import inspect

import numpy as np

from dqnx.errors import ConfigError, suggest
from dqnx.host_envs import ale_env
from dqnx.host_envs.ale_env import FRAME_SKIP, MAX_FRAMES, PROTOCOLS, check_protocol, life_lost
from dqnx.host_envs.base import (
    HostEnvBase,
    HostEnvSpec,
    HostStep,
    import_library,
)


def import_envpool():
    envpool = import_library("envpool", ("envpool", "envpool.atari.registration"), "envpool",
                             "envpool")  # fmt: skip
    return envpool


def games() -> list[str]:
    import_envpool()
    from envpool.atari.registration import atari_game_list

    return list(atari_game_list)


def task_id(game: str) -> str:
    """EnvPool's id of ``game``: "ms_pacman" -> "MsPacman-v5"."""
    return "".join(part.capitalize() for part in game.split("_")) + "-v5"


def check_name(game: str) -> None:
    known = games()
    if game not in known:
        raise ConfigError(
            f"unknown Atari game envpool:{game}"
            f"{suggest('envpool:' + game, ['envpool:' + g for g in known])}"
            " (snake_case ROM names as ale:, e.g. envpool:ms_pacman)"
        )


def spec(
    game: str, max_num_frames_per_episode: int = MAX_FRAMES, protocol: str = "machado", **_
) -> HostEnvSpec:
    """The spec of ``envpool:game`` (reads EnvPool's spec; builds no emulator)."""
    check_name(game)
    check_protocol(protocol)
    s = import_envpool().make_spec(task_id(game))
    return HostEnvSpec(
        name=f"envpool:{game}",
        num_actions=int(s.action_space.n),
        obs_shape=tuple(s.observation_space.shape),
        obs_dtype=np.dtype(s.observation_space.dtype),
        max_episode_steps=-(-max_num_frames_per_episode // FRAME_SKIP),
    )


class EnvPoolHostEnv(HostEnvBase):
    """``HostEnv`` over an EnvPool Atari pool (see the module docstring)."""

    capture_problem = "EnvPool keeps its emulators in C++ and offers no state save"

    def __init__(self, game: str, num_envs: int, seed: int, life_loss: bool, settings: dict):
        super().__init__(spec(game, settings["max_episode_steps"] * FRAME_SKIP), num_envs, seed)
        self._game, self._settings, self._life_loss = game, settings, life_loss
        self._pool = None
        self._lives = np.zeros(num_envs, np.int32)
        self._age = np.zeros(num_envs, np.int64)  # agent steps since each episode's reset

    def _build(self, seeds: np.ndarray) -> None:
        self.close()
        self._pool = import_envpool().make_gymnasium(
            task_id(self._game), num_envs=self.num_envs, batch_size=self.num_envs,
            env_seed=[int(s) for s in seeds], **self._settings,
        )  # fmt: skip

    def _zero_before_start(self, obs: np.ndarray, rows=slice(None)) -> np.ndarray:
        """Zeroes the stack entries older than each episode's first frame."""
        stack = obs.shape[1]
        before = np.arange(stack)[None, :] < (stack - 1 - self._age[rows])[:, None]  # [n, S]
        obs[before] = 0
        return obs

    def reset(self, seed: int | None = None) -> np.ndarray:
        self._build(self._reset_seeds(seed))
        obs, info = self._pool.reset()
        self._lives = np.asarray(info["lives"], np.int32)
        self._age[:] = 0
        return self._zero_before_start(np.array(obs))

    def step(self, actions: np.ndarray) -> HostStep:
        actions = self._check_actions(actions)
        obs, reward, terminated, truncated, info = self._pool.step(actions)
        obs = np.array(obs)  # the caller's to keep
        self._age += 1
        next_obs = self._zero_before_start(obs.copy())
        done = terminated | truncated
        lives = np.asarray(info["lives"], np.int32)
        if self._life_loss:
            terminated = life_lost(terminated, done, lives, self._lives)
        if done.any():  # same-step autoreset: reset the ended ones now
            ids = np.flatnonzero(done).astype(np.int32)
            first, reset_info = self._pool.reset(ids)
            obs[ids], lives[ids] = first, reset_info["lives"]
            self._age[ids] = 0
        self._lives = lives
        obs = self._zero_before_start(obs)
        valid = np.ones(self.num_envs, np.bool_)
        return self._host_step(obs, next_obs, reward, terminated, truncated, done, valid)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def make(game: str, num_envs: int, seed: int, **options) -> EnvPoolHostEnv:
    """Builds ``num_envs`` EnvPool emulators of ``game``; the options and their
    defaults are ``ale_env.make``'s (``max_num_frames_per_episode`` in emulator
    frames, ``num_threads`` EnvPool's)."""
    bound = inspect.signature(ale_env.make).bind(game, num_envs, seed, **options)
    bound.apply_defaults()
    o = bound.arguments
    check_name(game)
    check_protocol(o["protocol"])
    protocol = PROTOCOLS[o["protocol"]]
    sticky = o["repeat_action_probability"]
    sticky = protocol["repeat_action_probability"] if sticky is None else sticky
    settings = dict(
        num_threads=o["num_threads"],
        max_episode_steps=-(-o["max_num_frames_per_episode"] // FRAME_SKIP),
        repeat_action_probability=sticky,
        frame_skip=FRAME_SKIP, img_height=84, img_width=84, gray_scale=True, stack_num=4,
        noop_max=max(o["noop_max"], 1),  # the same [0, noop_max) range; 0 crashes EnvPool 1.2.5
        episodic_life=False, reward_clip=False, use_fire_reset=o["use_fire_reset"],
        full_action_space=False,
    )  # fmt: skip
    life_loss = protocol["life_loss"] and not o["evaluation"]
    return EnvPoolHostEnv(game, num_envs, seed, life_loss, settings)


make.__signature__ = inspect.signature(ale_env.make).replace(  # the registry checks options
    return_annotation=EnvPoolHostEnv
)
