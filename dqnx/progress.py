"""Training progress on the console: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from dqnx.logging import _import


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
    """One progress line: steps, steps/s, ETA, return, eval, loss, epsilon (means over
    seeds or a sweep's runs, whose epsilon may differ per run)."""
    steps = record["env_steps"]
    eval_return = record.get("eval_return")
    return (
        f"steps {steps:>10,d}/{total_steps:,d} ({100 * steps / total_steps:5.1f}%)"
        f" | {record['sps'] / 1e3:7.1f}k sps | ETA {format_duration(eta_s)}"
        f" | return {_fmt(_mean(record['train_return']), '8.2f')}"
        f" | eval {_fmt(_mean(eval_return), '8.2f')}"
        f" | loss {_fmt(_mean(record['loss']), '.4f')}"
        f" | eps {_fmt(_mean(record['epsilon']), '.3f')}"
    )


def print_line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def _terminal_width(file) -> int:
    """Columns of the terminal behind ``file``; 0 when it reports none (some
    pseudo-terminals), where a bar would come out empty."""
    import os

    try:
        return os.get_terminal_size(file.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80  # a terminal-like object without a descriptor (tests)


_BAR_FORMAT = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def progress_postfix(record: Mapping[str, Any], last_eval: float | None) -> str:
    """The bar's postfix: steps/s (all seeds), mean train return, last eval, loss, epsilon."""
    return (
        f"{record['sps'] / 1e3:.1f}k sps"
        f" | return {_fmt(_mean(record.get('train_return')), '.2f').strip()}"
        f" | eval {_fmt(float('nan') if last_eval is None else last_eval, '.2f').strip()}"
        f" | loss {_fmt(_mean(record.get('loss')), '.4f').strip()}"
        f" | eps {_fmt(_mean(record.get('epsilon')), '.3f').strip()}"
    )


class Progress:
    """Training progress on the console: a tqdm bar on a terminal, plain lines otherwise.

    On a terminal the bar counts env steps per seed and its postfix shows
    steps/s (all seeds), mean train return, the last eval return, loss and
    epsilon. Elsewhere (logs, pipes, CI) each update prints one
    :func:`console_line`.

    Args:
      total_steps: env steps per seed at the end of training.
      initial: env steps already done (resuming).
      use_bar: ``True``/``False`` forces the bar/plain lines; ``None`` picks the
        bar iff ``file`` is a terminal.
      file: where to write (default ``sys.stdout``).
      enabled: ``False`` makes every method a no-op (quiet runs, other processes).
    """

    def __init__(
        self,
        total_steps: int,
        initial: int = 0,
        *,
        use_bar: bool | None = None,
        file: IO[str] | None = None,
        enabled: bool = True,
    ):
        self.total_steps = int(total_steps)
        self.file = sys.stdout if file is None else file
        self.enabled = enabled
        if use_bar is None:
            use_bar = bool(getattr(self.file, "isatty", lambda: False)())
            use_bar = use_bar and _terminal_width(self.file) > 0
        self._bar = None
        if enabled and use_bar:
            tqdm = _import("tqdm", "the progress bar").tqdm
            self._bar = tqdm(
                total=self.total_steps,
                initial=int(initial),
                file=self.file,
                unit="step",
                unit_scale=self.total_steps >= 10_000,
                dynamic_ncols=True,
                mininterval=0,
                bar_format=_BAR_FORMAT,
            )
        self._initial = int(initial)
        self._t0 = time.perf_counter()
        self._last_eval: float | None = None

    @property
    def uses_bar(self) -> bool:
        return self._bar is not None

    def update(self, record: Mapping[str, Any], eta_s: float | None = None) -> None:
        """Shows ``record``.

        Args:
          record: a metrics record (``env_steps``, ``sps``, ``train_return``,
            ``loss``, ``epsilon``, optional ``eval_return``).
          eta_s: seconds left, for the plain line; default: from the wall-clock
            rate since this object was made.
        """
        if not self.enabled:
            return
        if record.get("eval_return") is not None:
            self._last_eval = _mean(record["eval_return"])
        steps = int(record["env_steps"])
        if self._bar is not None:
            self._bar.update(steps - self._bar.n)
            self._bar.set_postfix_str(progress_postfix(record, self._last_eval), refresh=True)
            return
        if eta_s is None:
            eta_s = self._eta(steps)
        print(console_line(record, self.total_steps, eta_s), file=self.file, flush=True)

    def _eta(self, steps: int) -> float:
        done = steps - self._initial
        if done <= 0:
            return float("nan")
        return (self.total_steps - steps) * (time.perf_counter() - self._t0) / done

    def write(self, text: str) -> None:
        """Prints a message line without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
