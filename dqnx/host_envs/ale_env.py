"""``ale:GAME`` — Atari 2600 games through ale-py's native vector env (``AtariVectorEnv``).

Preprocessing runs in ALE's C++ threads: frame skip 4 with a max over the last
two frames, 84x84 grayscale, 4 stacked frames (uint8 ``[N, 4, 84, 84]``, the
stack zero-filled at a reset), a uniform ``[0, 30)`` number of no-op emulator
frames at a reset, and the minimal action set. ``max_num_frames_per_episode``
(default 108,000 emulator frames = 27,000 agent steps, counted from the end of
the no-op start) is a truncation: bootstrap from the final frame. Rewards are
unclipped (the learner clips). Autoreset is same-step: ALE puts the true final
frame stack in ``info["final_obs"]`` (``[N, 4, 84, 84]``, present when some
environment ended).

Protocols (option ``protocol``):

* ``"machado"`` (default; Machado et al. 2018, "Revisiting the Arcade Learning
  Environment"): sticky actions with ``repeat_action_probability=0.25``, no
  life-loss signal, an episode is a full game. The minimal action set, as in
  Dopamine, not the paper's full 18 actions.
* ``"nature"`` (Mnih et al. 2015): no sticky actions; a lost life is
  ``terminated=True`` (no bootstrap) while the game goes on (``done=False``);
  ``done`` only at game over. Evaluation envs (``evaluation=True``) never
  signal a lost life.

The life-loss signal is computed here from ``info["lives"]`` exactly as ALE's
``life_loss_info=True`` computes it (lives fell during the step and some are
left), because ALE folds a lost life and a game over into one ``terminations``
bit and, with same-step reset, the next game's lives hide which one it was.
One difference: a life lost on the very step that reaches the frame limit is
reported as a truncation. Neither protocol uses ``episodic_life`` (which would
reset the game on every lost life).
"""

from __future__ import annotations

import contextlib
import inspect
import math

import numpy as np

from dqnx.errors import ConfigError, suggest
from dqnx.host_envs.base import (
    HostEnvSpec,
    HostStep,
    VectorHostEnv,
    import_library,
    library_error,
)

PROTOCOLS = {
    "machado": {"repeat_action_probability": 0.25, "life_loss": False},
    "nature": {"repeat_action_probability": 0.0, "life_loss": True},
}
FRAME_SKIP = 4
MAX_FRAMES = 108_000


def import_ale_py():
    ale_py = import_library(  # ale_py.vector_env needs gymnasium too
        "ale", ("ale_py", "ale_py.vector_env"), "the ale-py and gymnasium packages", "atari"
    )
    # ale-py 0.11.0's vector env has no same-step autoreset; 0.12.1 is the version checked.
    if "autoreset_mode" not in inspect.signature(ale_py.vector_env.AtariVectorEnv).parameters:
        needs = f"ale-py>=0.12.1 (found {ale_py.__version__})"
        raise library_error("ale", needs, "atari", upgrade=True)
    return ale_py


def check_name(game: str) -> None:
    ale_py = import_ale_py()
    games = ale_py.roms.get_all_rom_ids()
    if game not in games:
        raise ConfigError(
            f"unknown Atari game ale:{game}{suggest('ale:' + game, ['ale:' + g for g in games])}"
            " (ale-py ROM names are snake_case, e.g. ale:ms_pacman)"
        )


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown ALE protocol {protocol!r}{suggest(protocol, PROTOCOLS)}; "
            f"protocols: {', '.join(PROTOCOLS)}"
        )


def life_lost(terminated, done, lives, previous_lives) -> np.ndarray:
    """``terminated`` or a life lost in a step that did not end the game (lives
    fell and some are left): ALE's ``life_loss_info=True`` signal."""
    return terminated | (~done & (lives < previous_lives) & (lives > 0))


def _spec_of(game: str, vector_env, max_num_frames_per_episode: int) -> HostEnvSpec:
    space = vector_env.single_observation_space
    return HostEnvSpec(
        name=f"ale:{game}",
        num_actions=int(vector_env.single_action_space.n),
        obs_shape=tuple(space.shape),
        obs_dtype=np.dtype(space.dtype),
        max_episode_steps=math.ceil(max_num_frames_per_episode / FRAME_SKIP),
    )


def spec(
    game: str, max_num_frames_per_episode: int = MAX_FRAMES, protocol: str = "machado", **_
) -> HostEnvSpec:
    """The spec of ``ale:game`` (loads the ROM once to read its minimal action set)."""
    check_name(game)
    check_protocol(protocol)
    env = import_ale_py().vector_env.AtariVectorEnv(game, 1, num_threads=1)
    with contextlib.closing(env):
        return _spec_of(game, env, max_num_frames_per_episode)


class AleHostEnv(VectorHostEnv):
    """``HostEnv`` over ``ale_py.vector_env.AtariVectorEnv`` (see the module docstring)."""

    capture_problem = (
        "ale-py's AtariVectorEnv keeps its emulators in C++ and offers no state save "
        "(ALEInterface.cloneState serves single environments only)"
    )

    def __init__(self, vector_env, env_spec: HostEnvSpec, seed: int, life_loss: bool):
        super().__init__(vector_env, env_spec, seed)
        self._life_loss = life_loss
        self._lives = np.zeros(self.num_envs, np.int32)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, info = self._env.reset(seed=self._reset_seeds(seed))
        self._lives = info["lives"]
        return obs

    def step(self, actions: np.ndarray) -> HostStep:
        actions = self._check_actions(actions)
        # Outputs are in environment order (ALE's ordered mode: batch_size == num_envs).
        obs, reward, terminated, truncated, info = self._env.step(actions)
        next_obs = info.get("final_obs", obs)
        done = terminated | truncated  # game over or frame limit: the env was reset
        lives = info["lives"]  # of the next game where done
        if self._life_loss:
            terminated = life_lost(terminated, done, lives, self._lives)
        self._lives = lives
        valid = np.ones(self.num_envs, np.bool_)
        return self._host_step(obs, next_obs, reward, terminated, truncated, done, valid)


def make(
    game: str,
    num_envs: int,
    seed: int,
    protocol: str = "machado",
    evaluation: bool = False,
    max_num_frames_per_episode: int = MAX_FRAMES,
    repeat_action_probability: float | None = None,
    noop_max: int = 30,
    use_fire_reset: bool = False,
    num_threads: int = 0,
) -> AleHostEnv:
    """Builds ``num_envs`` emulators of Atari game ``game``.

    Args:
      game: an ale-py ROM id, e.g. ``"pong"``, ``"ms_pacman"``.
      num_envs: ``N``.
      seed: default seed of ``reset()``; emulator ``i`` is seeded with
        ``env_seeds(seed, N)[i]`` (its no-op starts and sticky actions).
      protocol: ``"machado"`` or ``"nature"`` (see the module docstring).
      evaluation: no life-loss signal whatever the protocol.
      max_num_frames_per_episode: the time limit in emulator frames (truncation).
      repeat_action_probability: sticky actions; ``None`` takes the protocol's.
      noop_max: a reset plays a uniform ``[0, noop_max)`` number of no-op
        emulator frames (single frames, not frame-skipped agent steps).
      use_fire_reset: press FIRE after a reset in games that need it (a later
        convention; neither protocol's paper did).
      num_threads: ALE's C++ worker threads (0: ALE's choice).
    """
    check_name(game)
    check_protocol(protocol)
    ale_py = import_ale_py()
    settings = PROTOCOLS[protocol]
    if repeat_action_probability is None:
        repeat_action_probability = settings["repeat_action_probability"]
    vector_env = ale_py.vector_env.AtariVectorEnv(
        game,
        num_envs,
        num_threads=num_threads,
        max_num_frames_per_episode=max_num_frames_per_episode,
        repeat_action_probability=repeat_action_probability,
        autoreset_mode="SameStep",
        frameskip=FRAME_SKIP,
        maxpool=True,
        img_height=84,
        img_width=84,
        grayscale=True,
        stack_num=4,
        noop_max=noop_max,
        episodic_life=False,
        life_loss_info=False,
        reward_clipping=False,
        use_fire_reset=use_fire_reset,
    )
    life_loss = settings["life_loss"] and not evaluation
    env_spec = _spec_of(game, vector_env, max_num_frames_per_episode)
    return AleHostEnv(vector_env, env_spec, seed, life_loss)
