"""Host-side output: metric files and console lines (I/O shell, never traced)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


def _clean(value):
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, obj) -> None:
    """Writes ``obj`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JsonlWriter:
    """Appends one JSON object per line and flushes it, so a crash loses nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(_clean(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _mean(values):
    if values is None:
        return float("nan")
    values = values.tolist() if hasattr(values, "tolist") else values
    values = values if isinstance(values, list) else [values]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _fmt(value, spec):
    return "   -  " if value is None or not math.isfinite(value) else format(value, spec)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def console_line(record: dict, total_steps: int, eta_s: float) -> str:
    """One progress line: steps, steps/s, ETA, return, eval, loss, epsilon (seed means)."""
    steps = record["env_steps"]
    eval_return = record.get("eval_return")
    return (
        f"steps {steps:>10,d}/{total_steps:,d} ({100 * steps / total_steps:5.1f}%)"
        f" | {record['sps'] / 1e3:7.1f}k sps | ETA {format_duration(eta_s)}"
        f" | return {_fmt(_mean(record['train_return']), '8.2f')}"
        f" | eval {_fmt(_mean(eval_return), '8.2f')}"
        f" | loss {_fmt(_mean(record['loss']), '.4f')}"
        f" | eps {record['epsilon']:.3f}"
    )


def print_line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
