"""The host shell: the loop every execution mode runs under, and its interface.

``run(config)`` trains as the command line does; a mode plugs in as a
``Program`` (see ``dqnx.shell.program``).
"""

from dqnx.shell.digest import local_params_digest, params_digests
from dqnx.shell.loop import default_workdir, make_program, run
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
    "make_program",
    "params_digests",
    "run",
]
