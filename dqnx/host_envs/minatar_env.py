"""``minatar:GAME`` — the MinAtar reference implementation (Young & Tian 2019) as a host env.

``N`` ``minatar.Environment`` objects are stepped in a Python loop with
same-step reset (``LoopedHostEnv``).

Compared with gymnax's ``<Game>-MinAtar``:

* Observations are ``state()``: bool ``[10, 10, C]``, the shape and channel
  count of gymnax's (Asterix 4, Breakout 4, Freeway 7, Seaquest 10,
  SpaceInvaders 6). For Breakout the channel order is the same too (``paddle,
  ball, trail, brick``) and both reset to the same two start states (tested).
* Actions: ``minatar.Environment.num_actions()`` is 6 for every game (the full
  set ``n l u r d f``), while gymnax uses each game's minimal set by default
  (Breakout 3, Asterix 5, Freeway 3, SpaceInvaders 4, Seaquest 6), which is
  exactly MinAtar's ``minimal_action_set()``. The default here is that minimal
  set, so one network head serves both modes; ``full_action_set=True`` gives
  the 6 actions of the MinAtar paper's baselines.
* MinAtar has sticky actions (0.1) and no time limit; gymnax's games have no
  sticky actions and a 1,000-step limit (``max_steps_in_episode``, a
  truncation). Difficulty ramping is on by default in both. A like-for-like
  comparison uses ``sticky_action_prob=0.0`` and ``max_episode_steps=1000`` here.
  MinAtar keeps its last action across a reset, so a sticky first action of an
  episode repeats the previous episode's last one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np

from dqnx.errors import ConfigError, suggest
from dqnx.host_envs.base import SAME_STEP, HostEnvSpec, import_library
from dqnx.host_envs.looped import LoopedHostEnv

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")

# Imported by minatar's package __init__ for its display only (~1.5 s).
_DRAWING_MODULES = ("seaborn", "matplotlib.pyplot")


class _OnFirstUse(types.ModuleType):
    """Stands in for module ``name`` until an attribute is read, then imports it."""

    def __getattr__(self, attr):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def import_minatar():
    """Imports ``minatar`` with its drawing-only dependencies deferred to first use."""
    if "minatar" not in sys.modules:
        for name in _DRAWING_MODULES:
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                sys.modules[name] = _OnFirstUse(name)
    return import_library("minatar", ("minatar",), "the minatar package", "host")


def check_name(game: str) -> None:
    import_minatar()
    if game not in GAMES:
        raise ConfigError(
            f"unknown MinAtar game minatar:{game}"
            f"{suggest('minatar:' + game, ['minatar:' + g for g in GAMES])}; "
            f"games: {', '.join(GAMES)}"
        )


class _MinAtarEnv:
    """One ``minatar.Environment`` with agent actions mapped to MinAtar's."""

    def __init__(self, env, action_map):
        self._env = env
        self._action_map = action_map

    def reset(self) -> np.ndarray:
        self._env.reset()
        return self._env.state()

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        reward, terminal = self._env.act(self._action_map[action])
        return self._env.state(), float(reward), bool(terminal)


def _action_map(env, full_action_set: bool) -> list[int]:
    return list(range(env.num_actions())) if full_action_set else env.minimal_action_set()


def spec(
    game: str,
    max_episode_steps: int | None = None,
    full_action_set: bool = False,
    **_,
) -> HostEnvSpec:
    """The spec of ``minatar:game`` (builds one environment)."""
    check_name(game)
    env = import_minatar().Environment(game)
    return HostEnvSpec(
        name=f"minatar:{game}",
        num_actions=len(_action_map(env, full_action_set)),
        obs_shape=tuple(env.state_shape()),
        obs_dtype=np.dtype(np.bool_),
        max_episode_steps=max_episode_steps,
    )


def make(
    game: str,
    num_envs: int,
    seed: int,
    sticky_action_prob: float = 0.1,
    difficulty_ramping: bool = True,
    max_episode_steps: int | None = None,
    full_action_set: bool = False,
    autoreset: str = SAME_STEP,
    evaluation: bool = False,
) -> LoopedHostEnv:
    """Builds ``num_envs`` MinAtar environments of ``game``.

    Args:
      game: one of ``GAMES``.
      num_envs: ``N``.
      seed: default seed of ``reset()``; environment ``i`` is seeded with
        ``env_seeds(seed, N)[i]`` (its dynamics and its sticky actions).
      sticky_action_prob: probability of repeating the previous action
        (MinAtar's default 0.1).
      difficulty_ramping: MinAtar's speed-up over an episode.
      max_episode_steps: ``None`` for no limit (MinAtar's own behaviour), or the
        episode length at which it is truncated.
      full_action_set: all 6 MinAtar actions instead of the game's minimal set.
      autoreset: ``"same_step"`` (default) or ``"next_step"``.
      evaluation: accepted for a uniform interface; MinAtar has no life-loss
        signal, so it changes nothing.
    """
    del evaluation
    check_name(game)
    minatar = import_minatar()
    game_spec = spec(game, max_episode_steps, full_action_set)

    def make_env(_index: int, env_seed: int) -> _MinAtarEnv:
        env = minatar.Environment(
            game, sticky_action_prob=sticky_action_prob, difficulty_ramping=difficulty_ramping
        )
        env.seed(env_seed)
        return _MinAtarEnv(env, _action_map(env, full_action_set))

    return LoopedHostEnv(
        game_spec,
        num_envs,
        make_env,
        seed=seed,
        max_episode_steps=max_episode_steps,
        autoreset=autoreset,
    )
