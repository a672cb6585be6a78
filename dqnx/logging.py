"""Host-side output: metric files, TensorBoard and W&B (I/O shell, never traced).

One record per compiled chunk (a dict as ``shell.run`` builds it: ``env_steps``,
``sps``, per-seed lists such as ``train_return``, ``eval_return`` where evaluated,
``loss``, ``epsilon``, ...) fans out through :class:`MetricWriters` to
``metrics.jsonl``, ``metrics.csv``, TensorBoard and optionally Weights & Biases;
``dqnx.progress`` shows it on the console.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from dqnx.errors import ConfigError


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


class MissingDependencyError(ConfigError, ImportError):
    """An output that was asked for needs a package that is not installed."""


def _import(module: str, purpose: str, package: str | None = None):
    """Imports ``module`` or raises a one-line :class:`MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the '{package or module}' package: pip install {package or module}"
        ) from e


def require_outputs(*, tensorboard: bool = False, wandb_project: str = "") -> None:
    """Fails early (before compiling or writing anything) if an output's package is missing.

    Raises:
      MissingDependencyError: a one-line message saying what to ``pip install``.
    """
    if tensorboard:
        _import("tensorboardX", "TensorBoard logging", "tensorboardX")
    if wandb_project:
        _import("wandb", f"Weights & Biases logging (wandb_project={wandb_project!r})")


def _scalar(value) -> Any:
    """A JSON-ish leaf as a Python number; ``None`` becomes NaN, nested lists their mean."""
    value = value.tolist() if hasattr(value, "tolist") else value
    if value is None:
        return float("nan")
    if isinstance(value, (list, tuple)):
        return nanmean(value)
    return value


def nanmean(values) -> float:
    """Mean of the non-NaN entries (``None`` counts as NaN); NaN if there are none.

    Unlike the console's ``_mean``, infinities are kept: a diverged loss shows as inf.
    """
    values = values.tolist() if hasattr(values, "tolist") else values
    values = values if isinstance(values, (list, tuple)) else [values]
    kept = [float(_scalar(v)) for v in values]
    kept = [v for v in kept if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def flatten_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row per record: a per-seed list ``x`` becomes ``x`` (NaN-aware mean
    over seeds) followed by ``x/seed0``, ``x/seed1``, ...; scalars pass through.

    Args:
      record: a metrics record; values are numbers, strings, ``None``, or per-seed
        lists/arrays of numbers.

    Returns:
      A dict from column name to a Python scalar (NaN where a value is missing).
    """
    flat: dict[str, Any] = {}
    for name, value in record.items():
        value = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(value, (list, tuple)):
            per_seed = [_scalar(v) for v in value]
            flat[name] = nanmean(per_seed)
            flat.update({f"{name}/seed{i}": v for i, v in enumerate(per_seed)})
        else:
            flat[name] = _scalar(value)
    return flat


def _numeric(flat: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, non-NaN entries of a flat row (what scalar dashboards plot)."""
    out = {}
    for name, value in flat.items():
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[name] = float(value)
    return out


def _cell(value) -> str:
    """A CSV cell: empty for missing/NaN, shortest round-trip text for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


class CsvWriter:
    """Writes ``metrics.csv``: one row per record, columns from :func:`flatten_record`.

    The header is written once; appending to an existing file (a resumed run)
    keeps its header and columns. A column first seen later (``eval_return`` on
    the first evaluated chunk) extends the header: the file is rewritten once,
    empty in earlier rows, so every row has the header's width. Rows are flushed.

    Args:
      path: the CSV file; created if missing, appended to if present.
      fieldnames: optional columns to declare up front, in order (more are added
        as records bring them).
    """

    def __init__(self, path: Path, fieldnames: list[str] | None = None):
        self.path = Path(path)
        self.fieldnames: list[str] = _read_header(self.path)
        declared = [n for n in fieldnames or () if n not in self.fieldnames]
        self._f: IO[str] | None = None
        if declared:
            self._extend(declared)
        self._f = open(self.path, "a", newline="")

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one record as a row (flattened, missing columns left empty)."""
        row = flatten_record(record)
        new = [name for name in row if name not in self.fieldnames]
        if new:
            self._extend(new)
        writer = csv.writer(self._f)
        if self._f.tell() == 0:
            writer.writerow(self.fieldnames)
        writer.writerow([_cell(row.get(name)) for name in self.fieldnames])
        self._f.flush()

    def _extend(self, new: list[str]) -> None:
        """Adds columns, rewriting the file (atomically) if it already has a header."""
        if self._f is not None:
            self._f.close()
        old = self.fieldnames
        self.fieldnames = old + new
        if old:
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))[1:]
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.fieldnames)
                writer.writerows(r + [""] * (len(self.fieldnames) - len(r)) for r in rows)
            os.replace(tmp, self.path)
        if self._f is not None:
            self._f = open(self.path, "a", newline="")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _read_header(path: Path) -> list[str]:
    """The first row of an existing CSV file, or ``[]``."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


class TensorBoardWriter:
    """Scalars for TensorBoard, one event per numeric column, step = ``env_steps``.

    Per-seed lists appear as ``name`` (mean over seeds) and ``name/seed{i}``, so
    TensorBoard groups a metric's mean and seeds in one section. NaN values (no
    episode finished in a chunk) are left out rather than plotted.

    Args:
      logdir: directory for the event files (created if missing).
      purge_step: when resuming, the first step written again: TensorBoard then
        hides events at or past it left over from before the restart.

    Raises:
      MissingDependencyError: ``tensorboardX`` is not installed.
    """

    def __init__(self, logdir: Path, purge_step: int | None = None):
        tensorboardx = _import("tensorboardX", "TensorBoard logging", "tensorboardX")
        self.logdir = Path(logdir)
        self._w = tensorboardx.SummaryWriter(str(self.logdir), purge_step=purge_step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Adds every numeric value of ``record`` at step ``record["env_steps"]``, then flushes."""
        step = int(record["env_steps"])
        for name, value in _numeric(flatten_record(record)).items():
            if name != "env_steps":
                self._w.add_scalar(name, value, global_step=step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class WandbWriter:
    """Logs records to Weights & Biases (``wandb`` is optional: ``pip install wandb``).

    Args:
      project: the W&B project.
      config: the run's configuration (a dict, or an object with ``to_dict()``).
      run_name: the W&B run name (default: chosen by W&B).
      directory: where W&B keeps its local files (default: W&B's choice).

    Raises:
      MissingDependencyError: ``wandb`` is not installed.
    """

    def __init__(
        self,
        project: str,
        config: Any = None,
        run_name: str | None = None,
        directory: Path | None = None,
    ):
        wandb = _import("wandb", f"Weights & Biases logging (wandb_project={project!r})")
        config = config.to_dict() if hasattr(config, "to_dict") else config
        self._run = wandb.init(
            project=project,
            config=_clean(dict(config or {})),
            name=run_name,
            dir=None if directory is None else str(directory),
        )

    def write(self, record: Mapping[str, Any]) -> None:
        """Logs every numeric value of ``record`` at step ``record["env_steps"]``."""
        values = _numeric(flatten_record(record))
        self._run.log(values, step=int(record["env_steps"]))

    def close(self) -> None:
        self._run.finish()


def remove_outputs(workdir: Path) -> None:
    """Deletes the metric outputs of an earlier run in ``workdir`` (for a fresh start)."""
    workdir = Path(workdir)
    for name in ("metrics.jsonl", "metrics.csv"):
        (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "tensorboard", ignore_errors=True)


class MetricWriters:
    """Fans each record out to ``metrics.jsonl``, ``metrics.csv``, TensorBoard and W&B.

    Only the main process writes: with ``is_main_process=False`` nothing is
    created and :meth:`write` does nothing. Files are appended to: a resumed run
    continues them (truncate them to the resume step first), a fresh one calls
    :func:`remove_outputs` first. Missing packages are reported before any file
    is created.

    Args:
      workdir: the run directory (created if missing).
      tensorboard: write event files under ``workdir/tensorboard/``.
      wandb_project: W&B project to log to ("" = no W&B).
      config: the run's configuration for W&B.
      run_name: W&B run name (default: the workdir's name).
      resume_step: env step the run resumes from (``None`` for a fresh run); set,
        TensorBoard hides its own events past it from before the restart.
      is_main_process: ``jax.process_index() == 0``.

    Raises:
      MissingDependencyError: TensorBoard or W&B asked for but not installed.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tensorboard: bool = True,
        wandb_project: str = "",
        config: Any = None,
        run_name: str | None = None,
        resume_step: int | None = None,
        is_main_process: bool = True,
    ):
        self._writers: list[Any] = []
        if not is_main_process:
            return
        require_outputs(tensorboard=tensorboard, wandb_project=wandb_project)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        purge = None if resume_step is None else int(resume_step) + 1
        opens = [
            lambda: JsonlWriter(workdir / "metrics.jsonl"),
            lambda: CsvWriter(workdir / "metrics.csv"),
        ]
        if tensorboard:
            opens.append(lambda: TensorBoardWriter(workdir / "tensorboard", purge_step=purge))
        if wandb_project:
            name = run_name or workdir.resolve().name
            opens.append(lambda: WandbWriter(wandb_project, config, name, workdir))
        try:
            for open_writer in opens:
                self._writers.append(open_writer())
        except BaseException:
            self.close()
            raise

    def write(self, record: Mapping[str, Any]) -> None:
        """Writes ``record`` to every output."""
        for writer in self._writers:
            writer.write(record)

    def close(self) -> None:
        """Closes every output (safe to call twice)."""
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()

    def __enter__(self) -> MetricWriters:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
