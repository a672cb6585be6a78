"""Files under a workdir, local or in a bucket (I/O shell, never traced).

Every file under the workdir goes through :func:`as_path` (``etils.epath``), so
``--workdir`` may be a local directory or ``gs://BUCKET/PATH`` (``pip install
'dqnx[gcs]'``). Objects in a bucket cannot be appended to or renamed atomically,
but an object write is atomic by itself: on a remote path (:func:`is_remote`) a
file is replaced by writing it whole (:func:`replace_text`), and appends keep the
text in memory and write it whole (:class:`Appender`; metric files are small: one
line per chunk). Local files keep temporary-file + rename and appends.
"""

from __future__ import annotations

import importlib
import json
import math
import os

from etils import epath

from dqnx.errors import MissingDependencyError

_GCS = "gs://"


def clean(value):
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):
        return clean(value.tolist())
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


def replace_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces the file at ``path`` with ``data`` so that readers see the old or
    the new file, never a part: locally a temporary file (fsynced) renamed over it;
    remotely one object write, atomic by itself."""
    path = as_path(path)
    if is_remote(path):
        path.write_bytes(data)
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_text(path: str | os.PathLike, text: str) -> None:
    """``replace_bytes`` of ``text`` (UTF-8)."""
    replace_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj) -> None:
    """Writes ``obj`` to ``path`` atomically (see :func:`replace_text`)."""
    replace_text(path, json.dumps(clean(obj), indent=2) + "\n")


class Appender:
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
