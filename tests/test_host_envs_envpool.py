"""``envpool:GAME`` against ``ale:GAME``: the same preprocessing and step contract.

With no randomness on either side (no sticky actions, no no-op starts) and the
same actions, the two sources give the same rewards, ends, episode statistics
and stack layout (uint8 [N, 4, 84, 84], zeros before an episode's first frame,
same-step autoreset with the final stack in ``next_obs``). Their frames are not
bit-equal: EnvPool's emulator starts a game a little differently, so a few
moving objects sit elsewhere (measured: under 1% of the pixels differ over
Pong's first 100 steps); the test bounds that share.
"""

import numpy as np
import pytest

from dqnx.errors import ConfigError
from dqnx.host_envs import make_host_env

pytest.importorskip("envpool")
pytest.importorskip("ale_py")

STEPS = 60  # agent steps; a 30-step time limit makes two episodes of each env
NO_RANDOMNESS = dict(noop_max=0, repeat_action_probability=0.0, max_num_frames_per_episode=120)


def rollout(name, actions):
    env = make_host_env(name, actions.shape[1], 3, **NO_RANDOMNESS)
    try:
        first = env.reset()
        steps = [env.step(a) for a in actions]
    finally:
        env.close()
    return first, {f: np.stack([getattr(s, f) for s in steps]) for f in steps[0]._fields}


def test_envpool_pong_follows_ale_pong_preprocessing():
    actions = np.random.default_rng(0).integers(0, 6, (STEPS, 2)).astype(np.int32)
    ale_first, ale = rollout("ale:pong", actions)
    ep_first, ep = rollout("envpool:pong", actions)
    assert ep_first.shape == ale_first.shape == (2, 4, 84, 84) and ep_first.dtype == np.uint8
    for stack in (ale_first, ep_first):  # zeros before the first frame
        assert not stack[:, :3].any() and stack[:, 3].all()
    for field in ("reward", "terminated", "truncated", "done", "episode_return",
                  "episode_length", "valid"):  # fmt: skip
        np.testing.assert_array_equal(ep[field], ale[field], err_msg=field)
    ends = np.argwhere(ep["done"])
    assert ends.tolist() == [[29, 0], [29, 1], [59, 0], [59, 1]]  # the 30-step limit
    assert ep["truncated"][ep["done"]].all() and not ep["terminated"].any()
    for t, i in ends:  # same-step autoreset: a fresh stack to act on, the final one kept
        assert not ep["obs"][t, i, :3].any()
        assert ep["next_obs"][t, i].all()
        if t + 1 < STEPS:
            np.testing.assert_array_equal(ep["obs"][t, i, 3], ep["obs"][t + 1, i, 2])
    going = ~ep["done"]  # where no episode ended, next_obs is the observation acted on next
    np.testing.assert_array_equal(ep["next_obs"][going], ep["obs"][going])
    for key in ("obs", "next_obs"):
        assert (ep[key] != ale[key]).mean() < 0.01, key


def test_envpool_names_and_options():
    with pytest.raises(ConfigError, match="did you mean envpool:pong"):
        make_host_env("envpool:pongg", 1)
    with pytest.raises(ConfigError, match="unknown option"):
        make_host_env("envpool:pong", 1, sticky=0.1)
