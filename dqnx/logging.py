"""Host-side output: metric files, TensorBoard and W&B (I/O shell, never traced).

One record per compiled chunk (a dict as ``shell.run`` builds it: ``env_steps``,
``sps``, per-seed lists such as ``train_return``, ``eval_return`` where evaluated,
``loss``, ``epsilon``, ...) fans out through :class:`MetricWriters` to
``metrics.jsonl``, ``metrics.csv``, TensorBoard and optionally Weights & Biases;
``dqnx.progress`` shows it on the console.

Every file under the workdir goes through :func:`as_path` (``etils.epath``), so
``--workdir`` may be a local directory or ``gs://BUCKET/PATH`` (``pip install
'dqnx[gcs]'``). Objects in a bucket cannot be appended to or renamed atomically,
but an object write is atomic by itself: on a remote path (:func:`is_remote`) a
file is replaced by writing it whole, and the append-only metric files are kept
in memory and written whole after each record (they are small: one line per
chunk). Local files keep temporary-file + rename and appends.
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

from dqnx.errors import ConfigError

_GCS = "gs://"


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


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``etils.epath.Path``: a local path, or ``gs://...`` through gcsfs."""
    return epath.Path(path)


def is_remote(path: str | os.PathLike) -> bool:
    """True for a path in an object store (``gs://...``): files there are written
    whole, never appended to or renamed into place."""
    return "://" in os.fspath(path)


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Replaces the file at ``path`` with ``text`` so that readers see the old or
    the new file, never a part: locally a temporary file (fsynced) renamed over it;
    remotely one object write, atomic by itself."""
    path = as_path(path)
    if is_remote(path):
        path.write_bytes(text.encode())
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj) -> None:
    """Writes ``obj`` to ``path`` atomically (see :func:`replace_text`)."""
    replace_text(path, json.dumps(_clean(obj), indent=2) + "\n")


class _Appender:
    """Appends text to a file, flushed at every write so a crash loses nothing written.

    Locally through a file opened for appending. Remotely (objects cannot be
    appended to) the file's text is kept in memory and written whole at every
    write: one atomic object write, so a reader never sees a cut line.
    """

    def __init__(self, path: epath.Path):
        self.path = path
        self._remote = is_remote(path)
        if self._remote:
            self._text = path.read_bytes().decode() if path.exists() else ""
        else:
            self._f = open(path, "a", newline="")

    def size(self) -> int:
        return len(self._text) if self._remote else self._f.tell()

    def write(self, text: str) -> None:
        if self._remote:
            self._text += text
            self.path.write_bytes(self._text.encode())
        else:
            self._f.write(text)
            self._f.flush()

    def close(self) -> None:
        if not self._remote:
            self._f.close()


class JsonlWriter:
    """Appends one JSON object per line and flushes it, so a crash loses nothing written."""

    def __init__(self, path: str | os.PathLike):
        self.path = as_path(path)
        self._f = _Appender(self.path)

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(_clean(record)) + "\n")

    def close(self) -> None:
        self._f.close()


class MissingDependencyError(ConfigError, ImportError):
    """An output that was asked for needs a package that is not installed."""


def require_filesystem(workdir: str | os.PathLike) -> None:
    """Fails early (before anything compiles) if ``workdir`` is in a bucket whose
    filesystem package is missing.

    Raises:
      MissingDependencyError: ``gs://`` without ``gcsfs``, in one line.
    """
    if os.fspath(workdir).startswith(_GCS):
        try:
            importlib.import_module("gcsfs")
        except ImportError:
            raise MissingDependencyError(
                f"--workdir={os.fspath(workdir)} needs the 'gcsfs' package: pip install 'dqnx[gcs]'"
            ) from None


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
        self.path = as_path(path)
        self.fieldnames: list[str] = _read_header(self.path)
        declared = [n for n in fieldnames or () if n not in self.fieldnames]
        self._f: _Appender | None = None
        if declared:
            self._extend(declared)
        self._f = _Appender(self.path)

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
            replace_text(self.path, _csv_text([self.fieldnames, *padded]))
        if self._f is not None:
            self._f = _Appender(self.path)

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
        self.logdir = as_path(logdir)
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


def remove_outputs(workdir: str | os.PathLike) -> None:
    """Deletes the metric outputs of an earlier run in ``workdir`` (for a fresh start)."""
    workdir = as_path(workdir)
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
        workdir = as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        purge = None if resume_step is None else int(resume_step) + 1
        opens = [
            lambda: JsonlWriter(workdir / "metrics.jsonl"),
            lambda: CsvWriter(workdir / "metrics.csv"),
        ]
        if tensorboard:
            opens.append(lambda: TensorBoardWriter(workdir / "tensorboard", purge_step=purge))
        if wandb_project:
            name = run_name or (workdir if is_remote(workdir) else workdir.resolve()).name
            local = None if is_remote(workdir) else workdir  # W&B keeps its files locally
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
