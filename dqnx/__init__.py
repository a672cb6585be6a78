"""dqnx: Actor-Learner DQN in JAX.

Building blocks (pure functions, plain arguments): ``envs``, ``networks``,
``losses``, ``replay``, ``prioritized``, ``nstep``, ``exploration``,
``learner``, ``actor``. ``builder`` turns a ``Config`` into blocks;
``compiled`` composes them into the compiled mode's program; ``shell.run``
drives a program from the host.
"""

from dqnx import actor, builder, envs, exploration, learner, losses, networks, replay
from dqnx.compiled import make_train
from dqnx.config import Config
from dqnx.errors import ConfigError
from dqnx.shell import run

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "actor",
    "builder",
    "envs",
    "exploration",
    "learner",
    "losses",
    "make_train",
    "networks",
    "replay",
    "run",
]
