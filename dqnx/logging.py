"""Host-side output: metric files, TensorBoard and W&B (I/O shell, never traced).

One record per compiled chunk (a dict as ``shell.run`` builds it: ``env_steps``,
``sps``, per-seed lists such as ``train_return``, ``eval_return`` where evaluated,
``loss``, ``epsilon``, ...) fans out through :class:`MetricWriters` to
``metrics.jsonl``, ``metrics.csv``, TensorBoard and optionally Weights & Biases;
``dqnx.progress`` shows it on the console.

Files are written through ``dqnx.files``, so the workdir may be local or
``gs://...``; the metric files are append-only (``files.Appender``).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from dqnx import files
from dqnx.errors import MissingDependencyError

__all__ = ["MissingDependencyError"]  # raised here; defined in dqnx.errors


class JsonlWriter:
    """Appends one JSON object per line and flushes it, so a crash loses nothing written."""

    def __init__(self, path: str | os.PathLike):
        self.path = files.as_path(path)
        self._f = files.Appender(self.path)

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(files.clean(record)) + "\n")

    def close(self) -> None:
        self._f.close()


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

    def __init__(self, path: str | os.PathLike, fieldnames: list[str] | None = None):
        self.path = files.as_path(path)
        self.fieldnames: list[str] = _read_header(self.path)
        declared = [n for n in fieldnames or () if n not in self.fieldnames]
        self._f: files.Appender | None = None
        if declared:
            self._extend(declared)
        self._f = files.Appender(self.path)

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one record as a row (flattened, missing columns left empty)."""
        row = flatten_record(record)
        new = [name for name in row if name not in self.fieldnames]
        if new:
            self._extend(new)
        rows = [] if self._f.size() else [self.fieldnames]
        rows.append([_cell(row.get(name)) for name in self.fieldnames])
        self._f.write(_csv_text(rows))

    def _extend(self, new: list[str]) -> None:
        """Adds columns, rewriting the file (atomically) if it already has a header."""
        if self._f is not None:
            self._f.close()
        old = self.fieldnames
        self.fieldnames = old + new
        if old:
            rows = _read_rows(self.path)[1:]
            width = len(self.fieldnames)
            padded = [r + [""] * (width - len(r)) for r in rows]
            files.replace_text(self.path, _csv_text([self.fieldnames, *padded]))
        if self._f is not None:
            self._f = files.Appender(self.path)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _csv_text(rows) -> str:
    """``rows`` as CSV text, as ``csv.writer`` writes them."""
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def _read_rows(path: epath.Path) -> list[list[str]]:
    """The rows of the CSV file at ``path``."""
    return list(csv.reader(io.StringIO(path.read_bytes().decode(), newline="")))


def _read_header(path: epath.Path) -> list[str]:
    """The first row of an existing CSV file, or ``[]``."""
    if not path.exists():
        return []
    return next(iter(_read_rows(path)), [])


class TensorBoardWriter:
    """Scalars for TensorBoard, one event per numeric column, step = ``env_steps``.

    Per-seed lists appear as ``name`` (mean over seeds) and ``name/seed{i}``, so
    TensorBoard groups a metric's mean and seeds in one section. NaN values (no
    episode finished in a chunk) are left out rather than plotted.

    Args:
      logdir: directory for the event files (created if missing); may be
        ``gs://...``: tensorboardX writes there itself through google-cloud-storage
        (a dependency of gcsfs), uploading its event file whole at each flush.
      purge_step: when resuming, the first step written again: TensorBoard then
        hides events at or past it left over from before the restart.

    Raises:
      MissingDependencyError: ``tensorboardX`` is not installed.
    """

    def __init__(self, logdir: str | os.PathLike, purge_step: int | None = None):
        tensorboardx = _import("tensorboardX", "TensorBoard logging", "tensorboardX")
        self.logdir = files.as_path(logdir)
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
        directory: str | os.PathLike | None = None,
    ):
        wandb = _import("wandb", f"Weights & Biases logging (wandb_project={project!r})")
        config = config.to_dict() if hasattr(config, "to_dict") else config
        self._run = wandb.init(
            project=project,
            config=files.clean(dict(config or {})),
            name=run_name,
            dir=None if directory is None else str(directory),
        )

    def write(self, record: Mapping[str, Any]) -> None:
        """Logs every numeric value of ``record`` at step ``record["env_steps"]``."""
        values = _numeric(flatten_record(record))
        self._run.log(values, step=int(record["env_steps"]))

    def close(self) -> None:
        self._run.finish()


def remove_outputs(workdir: str | os.PathLike) -> None:
    """Deletes the metric outputs of an earlier run in ``workdir`` (for a fresh start)."""
    workdir = files.as_path(workdir)
    for name in ("metrics.jsonl", "metrics.csv"):
        (workdir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (workdir / "tensorboard").rmtree(missing_ok=True)


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
        workdir: str | os.PathLike,
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
        workdir = files.as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        purge = None if resume_step is None else int(resume_step) + 1
        opens = [
            lambda: JsonlWriter(workdir / "metrics.jsonl"),
            lambda: CsvWriter(workdir / "metrics.csv"),
        ]
        if tensorboard:
            opens.append(lambda: TensorBoardWriter(workdir / "tensorboard", purge_step=purge))
        if wandb_project:
            name = run_name or (workdir if files.is_remote(workdir) else workdir.resolve()).name
            local = None if files.is_remote(workdir) else workdir  # W&B keeps its files locally
            opens.append(lambda: WandbWriter(wandb_project, config, name, local))
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
