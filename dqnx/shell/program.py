"""The interface between the host loop and an execution mode.

The host loop (``dqnx.shell.loop``) owns everything around training: resume,
the chunk schedule, progress, metric files, evaluation timing, checkpoints,
signals, the divergence stop and the summary. It knows nothing about how a
chunk is computed. An execution mode is a ``Program``: the compiled mode
(``dqnx.compiled.CompiledProgram``: everything inside compiled chunks) and the
host-actor mode (environments stepped in actor threads on the host) are two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np


class Schedule(NamedTuple):
    """How a run's env steps divide into prefill, iterations and chunks (per seed)."""

    prefill_steps: int  # env steps before learning starts
    steps_per_iteration: int  # env steps of one iteration
    train_iterations: int  # iterations after prefill
    iterations_per_chunk: int  # iterations between two returns to the host


class ChunkReport(NamedTuple):
    """What one chunk did, on the host (per-seed arrays are ``[S]``).

    Attributes:
      env_steps: env steps per seed after the chunk.
      episodes: episodes that ended in the chunk.
      return_sum: the sum of their returns.
      loss: mean loss over the chunk's updates.
      q_mean: mean Q-value over the chunk's updates.
      first_nonfinite: env step of the first non-finite loss, or -1.
      params_finite: every online parameter finite after the chunk.
      extra: mode-specific scalars for the metric files (e.g. parameter staleness).
    """

    env_steps: int
    episodes: np.ndarray
    return_sum: np.ndarray
    loss: np.ndarray
    q_mean: np.ndarray
    first_nonfinite: np.ndarray
    params_finite: np.ndarray
    extra: dict


class Program(Protocol):
    """An execution mode as the host loop drives it.

    Lifecycle: construct (compiles), then either ``prefill()`` (a fresh run) or
    ``restore(state, env_steps)`` (a resumed one), then ``run_chunk`` until the
    schedule is done, with ``evaluate`` and ``checkpoint_state`` in between, and
    ``close`` at the end (also after an error).

    Attributes:
      schedule: the run's ``Schedule``.
      compile_s: wall seconds until training could start.
      exact_resume: True if a resumed run continues bit for bit (the state to
        checkpoint holds everything, environments included).
      exact_resume_problem: why not, where ``exact_resume`` is False.
      where: the devices (and threads) it runs on, for the start line.
      num_runs: the runs it trains side by side (``S``: the seeds, or a sweep's
        runs).
    """

    schedule: Schedule
    num_runs: int
    compile_s: float
    exact_resume: bool
    exact_resume_problem: str | None
    where: str

    def checkpoint_template(self) -> Any:
        """A state of the checkpointed structure and placement, to restore into."""

    def restore(self, state: Any, env_steps: int, read_file: Callable[[str], bytes | None]) -> None:
        """Continues from a restored checkpoint taken at ``env_steps``;
        ``read_file(name)`` gives a file ``checkpoint_files`` saved with it (or None)."""

    def prefill(self) -> int:
        """Acts until learning starts; returns env steps per seed so far."""

    def run_chunk(self, num_iterations: int) -> ChunkReport:
        """Runs ``num_iterations`` iterations."""

    def evaluate(self) -> np.ndarray:
        """Greedy returns ``[S, eval_episodes]`` of the current online parameters."""

    def checkpoint_state(self) -> Any:
        """The state to checkpoint now."""

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files (name -> bytes) of this process to save beside the state."""

    def checkpoint_meta(self) -> dict:
        """JSON metadata saved beside the state (e.g. the device layout)."""

    def online_params(self) -> Any:
        """The online parameters, leaves ``[S, ...]``."""

    def epsilon(self, env_steps: int) -> float:
        """The exploration rate at ``env_steps`` for logs."""

    def run_entries(self) -> list[dict] | None:
        """A sweep's runs, one dict per run (its settings, for ``summary.json``'s
        ``runs``), in the order of the ``S`` axis; None for seeds."""

    def close(self) -> None:
        """Stops whatever runs in the background (threads, compiles)."""
