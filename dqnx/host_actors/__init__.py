"""The host-actor ("Sebulba") mode: environments that cannot be compiled step in
actor threads on the host and stream transitions to the device learner.

``HostActorProgram`` is the ``shell.Program`` of this mode; ``ActorThread`` and
``ParameterServer`` are the actor side; ``make_learner_programs`` the learner's
jitted ingest.
"""

from dqnx.host_actors.actor import ActorBatch, ActorThread, ParameterServer
from dqnx.host_actors.evaluation import evaluate_greedy
from dqnx.host_actors.learner import HostLearnerState, make_learner_programs
from dqnx.host_actors.program import HostActorProgram

__all__ = [
    "ActorBatch",
    "ActorThread",
    "HostActorProgram",
    "HostLearnerState",
    "ParameterServer",
    "evaluate_greedy",
    "make_learner_programs",
]
