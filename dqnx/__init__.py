"""dqnx: Actor-Learner DQN in JAX.

Building blocks (pure functions): ``envs``, ``networks``, ``losses``, ``replay``,
``exploration``, ``learner``, ``actor``; composed by ``train.make_train`` and
driven by ``train.run``.
"""

from dqnx import actor, envs, exploration, learner, losses, networks, replay, train
from dqnx.config import Config, ConfigError
from dqnx.train import make_train, run

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "actor",
    "envs",
    "exploration",
    "learner",
    "losses",
    "make_train",
    "networks",
    "replay",
    "run",
    "train",
]
