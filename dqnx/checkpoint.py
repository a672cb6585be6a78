"""Checkpoints of the whole train state with orbax (I/O shell, never traced).

A checkpoint is ``DIR/checkpoints/<env_steps>/`` holding the train state
(parameters, optimizer state, replay buffer, env states, PRNG keys, counters)
and a JSON ``meta`` item (resolved config, format tag, leaf shapes). Orbax
writes each step into a temporary directory and renames it only once complete,
so a process killed mid-write leaves no directory that looks finished;
``latest_step`` only ever sees complete checkpoints. Nothing is pickled:
arrays are tensorstore files, metadata is JSON.

PRNG keys are stored as their raw ``uint32`` key data and re-wrapped on load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "dqnx-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, corrupt, or from another run."""


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


class Checkpointer:
    """Saves and restores train states under ``directory`` (one subdirectory per step)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        """The env step of the newest complete checkpoint, or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def save(self, step: int, state, meta: dict[str, Any]) -> None:
        """Writes ``state`` as checkpoint ``step``; returns once it is complete on disk."""
        ocp = self._ocp
        meta = dict(meta, format=FORMAT, step=int(step), leaves=leaf_signature(state))
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(to_storable(state)), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step`` (no arrays are read)."""
        ocp = self._ocp
        path = self.directory / str(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            meta = restored.meta
        except Exception as e:  # orbax raises many types for a damaged directory
            raise CheckpointError(f"checkpoint {path} is unreadable ({_first_line(e)})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a dqnx checkpoint (format {FORMAT} expected)")
        return meta

    def restore(self, like, step: int | None = None):
        """Loads checkpoint ``step`` (default: newest) into the structure and
        placement of ``like``; returns ``(state, meta)``."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        path = self.directory / str(step)
        meta = self.read_meta(step)
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
            raise CheckpointError(f"checkpoint {path} is corrupt ({_first_line(e)})") from None
        return from_storable(restored.state, like), meta

    def close(self) -> None:
        self._manager.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
