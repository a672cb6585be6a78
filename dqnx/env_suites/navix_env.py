"""``navix:ID`` — Navix, MiniGrid in JAX (Pignatelli et al., 2024, arXiv:2407.19396).

Navix's own ``step`` resets in the step *after* an episode ends (the action of
that step is ignored); here ``Environment._step`` (no reset) is called and the
environment is reset in the step that ends the episode (``common.suite_env``).
Navix's step types give the split: 2 is a termination (goal reached, or a lava
cell), 1 a truncation at ``max_steps``. Observations are the registered
environment's (symbolic ``[H, W, 3]`` uint8 for most ids), kept as uint8.
"""

from __future__ import annotations

from dqnx.env_suites.common import check_id, import_suite, suite_env
from dqnx.envs import Env

# navix.make's default time limit.
DEFAULT_MAX_STEPS = 100


def _library():
    return import_suite("navix", "navix", "navix")


def check_name(env_id: str) -> None:
    check_id("navix", env_id, sorted(_library().registry()))


def make(env_id: str, max_steps: int = DEFAULT_MAX_STEPS) -> Env:
    """Navix environment ``env_id``.

    Args:
      env_id: a registered Navix id (``navix.registry()``), e.g. ``Navix-Empty-5x5-v0``.
      max_steps: the time limit (a truncation), as ``navix.make`` takes it.
    """
    nx = _library()
    env = nx.make(env_id, max_steps=int(max_steps))

    def reset_inner(key):
        timestep = env.reset(key)
        return timestep, timestep.observation

    def step_inner(key, timestep, action):
        del key  # Navix's randomness comes from the key in its state
        timestep = env._step(timestep, action)
        terminated = timestep.step_type == 2
        truncated = timestep.step_type == 1
        return timestep, timestep.observation, timestep.reward, terminated, truncated

    return suite_env(
        f"navix:{env_id}", int(env.action_space.n), int(env.max_steps), reset_inner, step_inner
    )
