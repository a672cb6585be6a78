"""dqnx: Actor-Learner DQN in JAX.

Building blocks (pure functions, plain arguments): ``envs``, ``networks``,
``heads``, ``layers``, ``noisy``, ``losses``, ``distributional``,
``munchausen``, ``objectives``, ``replay``, ``prioritized``, ``frame_replay``,
``nstep``, ``exploration``, ``learner``, ``actor``, ``parallel``,
``checkpoint``; host environments and actors in ``host_envs`` and
``host_actors``; ``defaults`` holds the family's default hyperparameters.
``builder`` turns a ``Config`` into blocks and ``checks.validate`` checks one;
``compiled`` composes the blocks into the compiled mode's program; ``shell.run``
drives a program from the host; ``train.run`` (``dqnx.run``) picks the mode and
trains as the command line does.

``Config`` and ``ConfigError`` are plain Python; everything else (JAX, Flax)
loads on first use, so the command line answers a bad flag in a fraction of a
second instead of after importing JAX.
"""

import importlib

from dqnx.config import Config
from dqnx.errors import ConfigError

__version__ = "0.1.0"

_MODULES = (
    "actor", "builder", "checkpoint", "compiled", "distributional", "envs", "exploration",
    "frame_replay", "heads", "host_actors", "host_envs", "layers", "learner", "losses",
    "munchausen", "networks", "noisy", "nstep", "objectives", "parallel", "prioritized",
    "replay", "shell", "sweep", "checks", "defaults", "train",
)  # fmt: skip
_ATTRIBUTES = {"make_train_fns": ("dqnx.compiled", "make_train_fns"), "run": ("dqnx.train", "run")}

__all__ = ["Config", "ConfigError", *_MODULES, "make_train_fns", "run"]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"dqnx.{name}")
    if name in _ATTRIBUTES:
        module, attribute = _ATTRIBUTES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'dqnx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
