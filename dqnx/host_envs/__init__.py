"""Host environments: ``N`` CPU environments behind one batched-numpy interface.

They feed host actor threads (the "Sebulba" layout): an actor owns one
``HostEnv``, calls ``step(actions)`` with an int array ``[N]`` and builds
transitions from the ``HostStep`` it gets back. Names are ``LIB:ID``
(``gymnasium:CartPole-v1``, ``minatar:breakout``, ``ale:pong``, ``envpool:pong``); see
``registry`` for the scheme and ``base`` for the step contract.

Optional packages: ``pip install 'dqnx[host]'`` (Gymnasium, MinAtar) and
``pip install 'dqnx[atari]'`` (ale-py), ``pip install 'dqnx[envpool]'`` (EnvPool).
"""

from dqnx.host_envs.base import (
    AUTORESET_MODES,
    NEXT_STEP,
    SAME_STEP,
    HostEnv,
    HostEnvSpec,
    HostStep,
    env_seeds,
)
from dqnx.host_envs.registry import (
    LIBRARIES,
    check_host_env_name,
    host_env_spec,
    is_host_env_name,
    make_host_env,
)
from dqnx.host_envs.scripted import make_scripted_env

__all__ = [
    "AUTORESET_MODES",
    "LIBRARIES",
    "NEXT_STEP",
    "SAME_STEP",
    "HostEnv",
    "HostEnvSpec",
    "HostStep",
    "check_host_env_name",
    "env_seeds",
    "host_env_spec",
    "is_host_env_name",
    "make_host_env",
    "make_scripted_env",
]
