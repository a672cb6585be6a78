"""The compiled ("Anakin") mode: gymnax environments, actors, replay and learner
in one program, run in compiled chunks.

``make_train_fns`` builds the pure functions, ``compile_train`` compiles them for a
device layout, and ``CompiledProgram`` is the ``shell.Program`` the host loop
drives.
"""

from dqnx.compiled.compile import Compiled, compile_train
from dqnx.compiled.program import CompiledProgram
from dqnx.compiled.seed_groups import in_seed_groups, seed_group_size
from dqnx.compiled.state import (
    ChunkMetrics,
    TrainFns,
    TrainState,
    seed_axes,
    seed_keys,
    state_specs,
)
from dqnx.compiled.train_fns import make_train_fns

__all__ = [
    "ChunkMetrics",
    "Compiled",
    "CompiledProgram",
    "TrainFns",
    "TrainState",
    "compile_train",
    "in_seed_groups",
    "make_train_fns",
    "seed_axes",
    "seed_group_size",
    "seed_keys",
    "state_specs",
]
