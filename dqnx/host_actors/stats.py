"""A host-actor chunk's statistics: counted per process, summed over processes."""

from __future__ import annotations

import jax
import numpy as np

from dqnx import parallel


def over_processes(stats: dict) -> tuple[dict, np.ndarray | None]:
    """A chunk's statistics of every process (sums, and the largest staleness),
    and each process's ``failed`` flag."""
    if jax.process_count() == 1:
        return stats, None
    names = sorted(stats)
    rows = parallel.gather_processes(np.array([stats[k] for k in names], np.float32))
    out = dict(zip(names, rows.sum(axis=0).tolist(), strict=True))
    out["staleness_max"] = float(rows[:, names.index("staleness_max")].max())
    return out, rows[:, names.index("failed")] > 0


def new_stats() -> dict:
    keys = ("episodes", "return_sum", "queue_sum", "queue_reads", "wait_s")
    keys += ("staleness_sum", "staleness_max", "staleness_n")
    return dict.fromkeys(keys, 0)
