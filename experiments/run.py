"""Train DQN (also installed as the ``dqnx-train`` command).

  python experiments/run.py --flagfile=experiments/configs/cartpole.flags [--num_seeds=8]

Every field of ``dqnx.Config`` is a flag of the same name; flags on the command
line override the flagfile. Exit codes: 0 done, 1 the run failed, 2 bad input
(one line on stderr, nothing written), 130 interrupted.
"""

from __future__ import annotations

import sys

from dqnx import flags as dqnx_flags

if __name__ == "__main__":
    sys.exit(dqnx_flags.console_main())
