"""The host shell: the loop every execution mode runs under, and its interface.

``run(config, program_factory=...)`` drives one ``Program`` (see
``dqnx.shell.program``) through a run; it knows no execution mode
(``dqnx.train`` picks one and calls it).
"""

from dqnx.shell.digest import local_params_digest, params_digests
from dqnx.shell.loop import default_workdir, run
from dqnx.shell.program import ChunkReport, Program, Schedule
from dqnx.shell.signals import Diverged, Interrupted, RunFailed

__all__ = [
    "ChunkReport",
    "Diverged",
    "Interrupted",
    "Program",
    "RunFailed",
    "Schedule",
    "default_workdir",
    "local_params_digest",
    "params_digests",
    "run",
]
