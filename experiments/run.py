"""Train DQN on a gymnax environment.

  python experiments/run.py --flagfile=experiments/configs/cartpole.flags [--num_seeds=8]

Every field of ``dqnx.Config`` is a flag of the same name; flags on the command
line override the flagfile. Exit codes: 0 done, 2 bad input (one line on
stderr, nothing written), 130 interrupted.
"""

from __future__ import annotations

import os
import sys

# Before JAX starts: one XLA CPU device per core, so seed shards use every core.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dqnx import parallel  # noqa: E402  (imports no JAX backend yet)

parallel.use_all_cpu_cores()

from dqnx import flags as dqnx_flags  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return dqnx_flags.main(sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
