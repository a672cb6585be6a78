"""The workdir before a run: checks that it can hold the run, the checkpoint to
resume from (skipping damaged ones), and metric files cut back to that checkpoint.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from dqnx import files, parallel
from dqnx.checkpoint import CheckpointDamaged, Checkpointer, CheckpointError
from dqnx.errors import ConfigError


def _size(num_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{int(num_bytes)} bytes"


def _exists(path: os.PathLike, flag: str) -> bool:
    try:
        path.stat()
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise ConfigError(f"{flag}: cannot access {path} ({e.strerror})") from None


def check_workdir(workdir: str | os.PathLike, checkpoint_bytes: int) -> None:
    """Checks, before anything compiles, that ``workdir`` can hold the run.

    Every existing part of the path must be a directory (``checkpoints/`` too,
    if there), the workdir (or the nearest existing parent it will be created
    in) must be writable, and that directory's disk must have room for one more
    checkpoint of ``checkpoint_bytes``. In a bucket (``gs://...``) only the
    first holds: the workdir and ``checkpoints/`` must not be files; permissions
    show at the first write, and a bucket has no disk to fill.

    Raises:
      ConfigError: one line naming the path and what is wrong.
    """
    flag = f"--workdir={workdir}"
    if files.is_remote(workdir):
        remote = files.as_path(workdir)
        for part in (remote, remote / "checkpoints"):
            if part.exists() and not part.is_dir():
                where = flag if part == remote else f"{flag}: {part}"
                raise ConfigError(f"{where} is a file, not a directory")
        return
    path = files.as_path(workdir)
    existing = path
    while not _exists(existing, flag) and existing.parent != existing:
        existing = existing.parent  # up to "." or "/" at the latest
    if not existing.is_dir():
        where = flag if existing == path else f"{flag}: {existing}"
        what = "is a file, not a directory" if existing.is_file() else "is not a directory"
        raise ConfigError(f"{where} {what}")
    writable = [existing]
    if existing == path and _exists(path / "checkpoints", flag):
        if not (path / "checkpoints").is_dir():
            raise ConfigError(f"{flag}: {path / 'checkpoints'} is a file, not a directory")
        writable.append(path / "checkpoints")
    for directory in writable:
        if not os.access(directory, os.W_OK | os.X_OK):
            if directory == path:
                raise ConfigError(f"{flag} is not writable")
            made = " (the workdir would be created in it)" if directory == existing else ""
            raise ConfigError(f"{flag}: {directory} is not writable{made}")
    free = shutil.disk_usage(existing).free
    if free < checkpoint_bytes:
        raise ConfigError(
            f"{flag}: the disk of {existing} has {_size(free)} free, but one checkpoint of this "
            f"run needs about {_size(checkpoint_bytes)} (replay, parameters, optimizer and env "
            "states); free some space or pick a --workdir on another disk"
        )


def _agreed(path: os.PathLike, fn: Callable[[], Any]) -> Any:
    """``fn()`` on every process; a ``CheckpointDamaged`` on any process is raised on all."""
    try:
        result, error = fn(), None
    except CheckpointDamaged as e:
        result, error = None, e
    if parallel.any_process(error is not None):
        raise error or CheckpointDamaged(path, "is unreadable on another process")
    return result


def warn_on_stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


class Resumer:
    """Picks the checkpoint a run continues from and restores it, newest first,
    past damaged ones.

    A checkpoint that cannot be read (``CheckpointDamaged``: changed or missing
    files, half-written, not a dqnx checkpoint, arrays that do not decode) is
    reported in one line and, with ``move_aside``, renamed to ``<step>.corrupt``;
    then the next older one is tried: its files and metadata before anything
    compiles (``pick``), its arrays once the program is built (``restore``). A
    checkpoint picked by ``step`` is never passed over: its damage is an error.

    Args:
      checkpointer: the run's checkpoints.
      step: the env step of the checkpoint to resume from; -1 is the newest
        usable one.
      check_meta: called with a readable checkpoint's metadata before it is
        picked; raises (e.g. ``ConfigError`` on changed flags) to stop the run.
      move_aside: rename damaged checkpoints (training) or only skip them
        (evaluation, which changes nothing).
      warn: prints one line (default: ``warning: ...`` on stderr).
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        *,
        step: int = -1,
        check_meta: Callable[[dict], None] | None = None,
        move_aside: bool = True,
        warn: Callable[[str], None] = warn_on_stderr,
    ):
        if not isinstance(step, int) or step < -1:
            raise ConfigError(
                f"--restore_step must be a checkpoint's env step, or -1 for the newest; got {step}"
            )
        self.checkpointer, self.step = checkpointer, step
        self.check_meta = check_meta or (lambda meta: None)
        self.move_aside, self.warn = move_aside, warn
        self.tried: list[CheckpointDamaged] = []
        self.picked: int | None = None
        self._skipped: set[int] = set()
        self._meta: dict[int, dict] = {}

    def _candidates(self) -> list[int]:
        steps = self.checkpointer.all_steps()
        if self.step >= 0:
            if self.step not in steps:
                have = ", ".join(map(str, steps)) or "none"
                raise ConfigError(
                    f"--restore_step={self.step}: {self.checkpointer.directory} has no checkpoint "
                    f"{self.step} (it has: {have})"
                )
            return [self.step]
        return [s for s in reversed(steps) if s not in self._skipped]

    def _pass_over(self, step: int, damage: CheckpointDamaged) -> None:
        self.tried.append(damage)
        self._skipped.add(step)
        self._meta.pop(step, None)
        if self.move_aside:
            moved = self.checkpointer.move_aside(step, "corrupt")
            self.warn(f"{damage}; moved it aside to {moved}")
        else:
            self.warn(f"{damage}; skipping it")

    def pick(self) -> int | None:
        """The env step to resume from, its files and metadata checked (None: no
        checkpoint, a fresh start); also kept as ``picked``. Reads no arrays, so it
        runs before compiling.

        Raises:
          CheckpointError: checkpoints were tried and none is usable, or (with
            ``move_aside``) the only ones left were moved aside earlier; the
            damage of a checkpoint picked by ``step``.
          ConfigError: ``step`` names no checkpoint; what ``check_meta`` raises.
        """
        ckpt = self.checkpointer
        for step in self._candidates():
            try:
                meta = _agreed(ckpt.path(step), lambda s=step: ckpt.read_meta(s))
            except CheckpointDamaged as e:
                if self.step >= 0:
                    raise
                self._pass_over(step, e)
                continue
            self.check_meta(meta)
            self._meta[step] = meta
            self.picked = step
            return step
        if self.tried:
            tried = "; ".join(f"{d.path.name} {d.problem}" for d in self.tried)
            aside = (
                "the damaged ones are now <step>.corrupt; remove them to start over, or pick a "
                "new --workdir"
                if self.move_aside
                else "nothing was changed"
            )
            raise CheckpointError(f"no usable checkpoint in {ckpt.directory}: {tried}; {aside}")
        moved = ckpt.moved_aside() if self.move_aside else []
        if moved:
            raise CheckpointError(
                f"{ckpt.directory} holds no checkpoint to resume from, only ones moved aside "
                f"({', '.join(p.name for p in moved)}); remove them to start over, or pick a new "
                "--workdir"
            )
        return None

    def restore(self, like, step: int) -> tuple[Any, int]:
        """Restores checkpoint ``step`` (from ``pick``) into the structure of ``like``;
        if its arrays cannot be read, passes it over and restores the next usable
        older one. Then moves every newer checkpoint aside (``<step>.skipped``,
        only when ``step`` was picked explicitly) so the run writes its own.

        Returns:
          ``(state, env_step)`` of the checkpoint restored.

        Raises:
          CheckpointError: as ``pick``; a checkpoint of another train state.
        """
        ckpt = self.checkpointer
        while True:
            try:
                state, _ = _agreed(
                    ckpt.path(step),
                    lambda s=step: ckpt.restore(like, s, meta=self._meta.get(s)),
                )
                break
            except CheckpointDamaged as e:
                if self.step >= 0:
                    raise
                self._pass_over(step, e)
                step = self.pick()  # raises once none is left
        if self.move_aside and self.step >= 0:
            for s in [s for s in ckpt.all_steps() if s > step]:
                moved = ckpt.move_aside(s, "skipped")
                self.warn(f"--restore_step={step}: moved the newer checkpoint {s} aside to {moved}")
        return state, step


def truncate_metrics(workdir, env_steps: int) -> None:
    """Drops metric lines/rows past ``env_steps`` (resuming re-creates them)."""
    import csv
    import io
    import json

    workdir = files.as_path(workdir)
    path = workdir / "metrics.jsonl"
    if path.exists():
        keep = []
        for line in path.read_bytes().decode().splitlines():
            try:
                if json.loads(line)["env_steps"] <= env_steps:
                    keep.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a crash ends the readable part
        files.replace_text(path, "".join(keep))
    path = workdir / "metrics.csv"
    if path.exists():
        rows = list(csv.reader(io.StringIO(path.read_bytes().decode(), newline="")))
        if rows:
            col = rows[0].index("env_steps") if "env_steps" in rows[0] else 0
            body = []
            for r in rows[1:]:
                try:
                    if len(r) == len(rows[0]) and int(r[col]) <= env_steps:
                        body.append(r)
                except ValueError:
                    pass
            text = io.StringIO()
            csv.writer(text).writerows([rows[0], *body])
            files.replace_text(path, text.getvalue())
