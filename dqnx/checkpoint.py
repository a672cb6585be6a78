"""Checkpoints of the whole train state with orbax (I/O shell, never traced).

A checkpoint is ``DIR/checkpoints/<env_steps>/`` holding the train state
(parameters, optimizer state, replay buffer, env states, PRNG keys, counters)
and a JSON ``meta`` item (resolved config, format tag, leaf shapes). Orbax
writes each step into a temporary directory and renames it only once complete,
so a process killed mid-write leaves no directory that looks finished;
``latest_step`` only ever sees complete checkpoints. Once orbax is done, dqnx
adds ``dqnx_manifest.json``: the size and CRC-32 of every file of the
checkpoint. Nothing is pickled: arrays are tensorstore files, metadata is JSON.
The directory may be local or ``gs://...`` (paths are ``etils.epath``; on a
bucket orbax marks a finished step with ``commit_success.txt`` instead of a
rename, the manifest is one object write, and ``move_aside`` copies then deletes).

A checkpoint is usable when every file its manifest lists is still there with
its size and CRC-32, its metadata reads as a dqnx checkpoint's, and its arrays
read back. A checkpoint that fails any of these raises ``CheckpointDamaged``
(changed or missing files, half-written, not a dqnx checkpoint);
``move_aside`` renames it to ``<step>.corrupt``, a name orbax never lists as a
step. Checkpoints written before manifests existed are read without the file
check (their meta has no ``manifest`` entry).

PRNG keys are stored as their raw ``uint32`` key data and re-wrapped on load.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from etils import epath

from dqnx import files as fs

FORMAT = "dqnx-checkpoint-v1"
MANIFEST = "dqnx_manifest.json"
COMMIT_MARKER = "commit_success.txt"  # orbax writes it last, before the final rename
_MOVED_ASIDE = re.compile(r"^(\d+)\.(corrupt|skipped)(-\d+)?$")
_BLOCK = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, corrupt, or from another run."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose files cannot be trusted: changed or missing files,
    half-written, unreadable, or not a dqnx checkpoint. An older one may still be
    usable.

    Attributes:
      path: the checkpoint's directory.
      problem: what is wrong, as the end of a sentence ("is corrupt (...)").
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"checkpoint {path} {problem}")
        self.path, self.problem = fs.as_path(path), problem


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_storable(state):
    """``state`` with every PRNG-key leaf replaced by its uint32 key data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def from_storable(stored, like):
    """Inverse of ``to_storable``: re-wraps key data where ``like`` holds keys."""
    return jax.tree.map(
        lambda s, x: jax.random.wrap_key_data(s, impl=jax.random.key_impl(x)) if _is_key(x) else s,
        stored,
        like,
    )


def leaf_signature(state) -> dict[str, str]:
    """``{leaf path: "dtype[shape]"}`` of the storable state, to spot a foreign checkpoint."""
    flat, _ = jax.tree_util.tree_flatten_with_path(to_storable(state))
    return {
        jax.tree_util.keystr(path): f"{np.dtype(x.dtype).name}{list(x.shape)}" for path, x in flat
    }


def _abstract(state):
    def spec(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(spec, to_storable(state))


def _file_crc(path: epath.Path) -> tuple[int, int]:
    """``(size, CRC-32)`` of the file at ``path``."""
    crc, size = 0, 0
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            crc, size = zlib.crc32(block, crc), size + len(block)
    return size, crc


def _crcs(root: epath.Path, names: list[str]) -> list[tuple[int, int]]:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda name: _file_crc(root / name), names))


def _file_names(root: epath.Path) -> list[str]:
    """The ``/``-separated names of every file under directory ``root``."""
    names = []
    for p in root.iterdir():
        if p.is_dir():
            names += [f"{p.name}/{name}" for name in _file_names(p)]
        else:
            names.append(p.name)
    return names


def write_manifest(path: str | os.PathLike) -> None:
    """Writes ``path/dqnx_manifest.json``: ``{file: [size, crc32]}`` of every file
    under the checkpoint directory ``path`` (atomically: see ``fs.replace_text``)."""
    path = fs.as_path(path)
    names = sorted(n for n in _file_names(path) if n not in (MANIFEST, MANIFEST + ".tmp"))
    files = {name: list(sc) for name, sc in zip(names, _crcs(path, names), strict=True)}
    fs.replace_text(path / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=1))


def check_files(path: str | os.PathLike) -> bool:
    """Checks the files of checkpoint directory ``path`` against its manifest.

    Returns:
      True if the manifest is there and every file it lists matches; False if
      there is no manifest (a checkpoint from before manifests, or one whose
      writer stopped before the manifest: the caller tells them apart by the
      metadata's ``manifest`` entry).

    Raises:
      CheckpointDamaged: a listed file is missing or differs, the manifest is
        unreadable, or (without a manifest) orbax's commit marker is missing.
    """
    path = fs.as_path(path)
    try:
        text = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        if not (path / COMMIT_MARKER).is_file():
            raise CheckpointDamaged(path, f"is half-written (no {COMMIT_MARKER})") from None
        return False
    except OSError as e:
        raise CheckpointDamaged(path, f"is unreadable ({_first_line(e)})") from None
    try:
        files = json.loads(text)["files"]
        names = sorted(files)
        expected = [tuple(int(v) for v in files[name]) for name in names]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointDamaged(path, f"is corrupt ({MANIFEST}: {_first_line(e)})") from None
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointDamaged(path, f"is incomplete ({missing[0]}{more} missing)")
    try:
        found = _crcs(path, names)
    except OSError as e:
        raise CheckpointDamaged(path, f"is unreadable ({_first_line(e)})") from None
    changed = [name for name, a, b in zip(names, expected, found, strict=True) if a != b]
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise CheckpointDamaged(
            path, f"is corrupt ({changed[0]}{more} changed since it was written)"
        )
    return True


class Checkpointer:
    """Saves and restores train states under ``directory`` (one subdirectory per step)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        directory = fs.as_path(directory)
        self.directory = directory if fs.is_remote(directory) else directory.resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def path(self, step: int) -> epath.Path:
        """The directory of checkpoint ``step``."""
        return self.directory / str(int(step))

    def latest_step(self) -> int | None:
        """The env step of the newest complete checkpoint, or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The env steps of every complete checkpoint, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def moved_aside(self) -> list[epath.Path]:
        """The checkpoint directories ``move_aside`` renamed, oldest step first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _MOVED_ASIDE.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: (int(_MOVED_ASIDE.match(p.name)[1]), p.name))

    def save(
        self, step: int, state, meta: dict[str, Any], files: dict[str, bytes] | None = None
    ) -> None:
        """Writes ``state`` as checkpoint ``step``, then this process's ``files``
        (name -> bytes, beside the state: e.g. host actors' environments), then
        the manifest over all of them; returns once all are complete on disk."""
        ocp = self._ocp
        meta = dict(
            meta, format=FORMAT, step=int(step), leaves=leaf_signature(state), manifest=MANIFEST
        )
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(to_storable(state)), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        for name, data in (files or {}).items():
            fs.replace_bytes(self.path(step) / name, data)
        if jax.process_count() > 1:  # every process's files are in before the manifest
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"dqnx_checkpoint_files_{step}")
        if jax.process_index() == 0:
            write_manifest(self.path(step))

    def read_file(self, step: int, name: str) -> bytes | None:
        """The bytes of file ``name`` that ``save`` wrote beside checkpoint
        ``step`` (checked by ``read_meta`` against the manifest), or None."""
        try:
            return (self.path(step) / name).read_bytes()
        except FileNotFoundError:
            return None

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step``, once its files check out
        against its manifest (no arrays are decoded).

        Raises:
          CheckpointDamaged: see ``check_files``; or the metadata is unreadable,
            not a dqnx checkpoint's, or promises a manifest that is not there.
        """
        ocp = self._ocp
        path = self.path(step)
        has_manifest = check_files(path)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            meta = restored.meta
        except Exception as e:  # orbax raises many types for a damaged directory
            raise CheckpointDamaged(path, f"is unreadable ({_first_line(e)})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointDamaged(path, f"is not a dqnx checkpoint (format {FORMAT} expected)")
        if meta.get("manifest") and not has_manifest:
            raise CheckpointDamaged(path, f"is half-written (no {MANIFEST})")
        return meta

    def restore(self, like, step: int | None = None, meta: dict[str, Any] | None = None):
        """Loads checkpoint ``step`` (default: newest) into the structure and
        placement of ``like``; returns ``(state, meta)``.

        Args:
          like: a state of the structure, dtypes, shapes and shardings to restore.
          step: the checkpoint's env step (None: the newest).
          meta: the checkpoint's metadata as ``read_meta`` just returned it (its
            files already checked); None reads and checks them here.

        Raises:
          CheckpointDamaged: the files, the metadata or the arrays cannot be read.
          CheckpointError: no checkpoint, or one of a different train state.
        """
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        path = self.path(step)
        meta = self.read_meta(step) if meta is None else meta
        expected = leaf_signature(like)
        if meta.get("leaves") != expected:
            diff = sorted(
                k
                for k in set(expected) | set(meta.get("leaves", {}))
                if expected.get(k) != meta.get("leaves", {}).get(k)
            )
            raise CheckpointError(
                f"checkpoint {path} holds a different train state (env, network or sizes "
                f"changed?): {len(diff)} leaf/leaves differ, e.g. {diff[0]}"
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like))),
            )
        except Exception as e:
            _drop_closed_loop_callbacks()
            raise CheckpointDamaged(path, f"is corrupt ({_first_line(e)})") from None
        return from_storable(restored.state, like), meta

    def move_aside(self, step: int, suffix: str = "corrupt") -> epath.Path:
        """Renames checkpoint ``step`` to ``<step>.<suffix>`` (``-2``, ``-3``, ... if
        taken), where orbax never lists it again; returns the new path. On several
        processes, process 0 renames and the others wait for it. In a bucket the
        rename is a copy then a delete (not atomic): a copy cut short is still
        under a name orbax never lists, and the damaged step stays damaged.

        Raises:
          CheckpointError: the rename failed.
        """
        src = self.path(step)
        dst = self.directory / f"{step}.{suffix}"
        n = 1
        while dst.exists():
            n += 1
            dst = self.directory / f"{step}.{suffix}-{n}"
        if jax.process_index() == 0:
            try:
                if fs.is_remote(src):
                    src.rename(dst)
                else:
                    os.rename(src, dst)
            except OSError as e:
                raise CheckpointError(
                    f"cannot move checkpoint {src} aside to {dst.name} "
                    f"({e.strerror or _first_line(e)}); move or remove it by hand"
                ) from None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"dqnx_move_aside_{step}")
        self._manager.reload()
        return dst

    def close(self) -> None:
        self._manager.close()


def _drop_closed_loop_callbacks() -> None:
    """Keeps a failed restore's message one line. After orbax gives up, tensorstore
    finishes the reads still in flight, and each of their callbacks finds orbax's
    event loop closed: ``RuntimeError: Event loop is closed``, printed as a
    traceback through ``sys.unraisablehook``. From the first failed restore on,
    exactly these are dropped; everything else still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "dqnx_drops_closed_loop", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    hook.dqnx_drops_closed_loop = True
    sys.unraisablehook = hook


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
