"""``craftax:ID`` — Craftax and Craftax-Classic (Matthews et al., 2024, arXiv:2402.16801).

Built on the library's no-auto-reset environments, reset here in the step that
ends an episode (``common.suite_env``). Craftax ends an episode at death (and, in
Craftax, at the defeat of the final boss; in Classic, in lava) or when
``max_timesteps`` (10,000 by default) have passed: the first is a termination,
the time limit alone a truncation. Symbolic observations are float32 vectors
(Classic 1,345, Craftax 8,268), pixel ones float32 images ``[H, W, 3]``.
Rewards are the library's: +1 per achievement unlocked the first time, and the
change in health / 10.
"""

from __future__ import annotations

from dqnx.env_suites.common import check_id, import_suite, suite_env
from dqnx.envs import Env

IDS = (
    "Craftax-Classic-Symbolic-v1",
    "Craftax-Classic-Pixels-v1",
    "Craftax-Symbolic-v1",
    "Craftax-Pixels-v1",
)

# is_game_over's time limit, raised past any episode: what remains is termination.
_NEVER = 2**30


def _library():
    return import_suite("craftax", "craftax.craftax_env", "craftax")


def check_name(env_id: str) -> None:
    _library()
    check_id("craftax", env_id, IDS)


def make(env_id: str, max_timesteps: int | None = None) -> Env:
    """Craftax environment ``env_id``.

    Args:
      env_id: one of ``IDS``.
      max_timesteps: the time limit (a truncation); default the library's.
    """
    env = _library().make_craftax_env_from_name(env_id, auto_reset=False)
    params = env.default_params
    if max_timesteps is not None:
        params = params.replace(max_timesteps=int(max_timesteps))
    no_limit = params.replace(max_timesteps=_NEVER)

    def reset_inner(key):
        obs, state = env.reset_env(key, params)
        return state, obs

    def step_inner(key, state, action):
        obs, state, reward, done, _ = env.step_env(key, state, action, params)
        terminated = env.is_terminal(state, no_limit)
        return state, obs, reward, terminated, done

    return suite_env(
        f"craftax:{env_id}",
        env.action_space(params).n,
        int(params.max_timesteps),
        reset_inner,
        step_inner,
    )
