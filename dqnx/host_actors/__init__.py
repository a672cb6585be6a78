"""The host-actor ("Sebulba") mode: environments that cannot be compiled step in
actor threads on the host and stream transitions to the device learner.

``HostActorProgram`` is the ``shell.Program`` of this mode; ``ActorCore`` (one
actor's environments, policy and batching), ``ActorThread`` and
``ParameterServer`` are the actor side; ``make_learner_programs`` the learner's
jitted ingest.
"""

from dqnx.host_actors.actor import ActorThread, ParameterServer
from dqnx.host_actors.core import ActorBatch, ActorCore
from dqnx.host_actors.evaluation import evaluate_greedy
from dqnx.host_actors.learner import HostLearnerState, make_learner_programs
from dqnx.host_actors.program import HostActorProgram

__all__ = [
    "ActorBatch",
    "ActorCore",
    "ActorThread",
    "HostActorProgram",
    "HostLearnerState",
    "ParameterServer",
    "evaluate_greedy",
    "make_learner_programs",
]
