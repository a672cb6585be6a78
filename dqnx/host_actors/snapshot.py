"""Bytes of the actors' side of a checkpoint: environments, actor cores, batches
not yet ingested, and the parameter versions the actors still act with.

Host environments are Python objects (MinAtar's games, Gymnasium's envs and
their generators), so they are pickled. Loading is restricted: only classes and
functions of numpy, the environment libraries and dqnx are rebuilt, so a
checkpoint file cannot name arbitrary code to run.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

#: Module roots whose classes and functions a snapshot may rebuild.
ALLOWED_ROOTS = frozenset({"numpy", "gymnasium", "minatar", "dqnx", "collections"})
#: Harmless builtins and helpers that pickles of those objects use.
ALLOWED_NAMES = frozenset(
    {
        ("builtins", n)
        for n in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "slice", "range",
                  "complex", "object", "bool", "int", "float", "str", "bytes")
    }
    | {("copyreg", "_reconstructor"), ("functools", "partial"), ("_codecs", "encode")}
)  # fmt: skip


class SnapshotError(ValueError):
    """A snapshot that cannot be read (damaged, or naming code it may not load)."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.split(".")[0] in ALLOWED_ROOTS or (module, name) in ALLOWED_NAMES:
            return super().find_class(module, name)
        raise SnapshotError(f"a snapshot may not load {module}.{name}")


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """Rebuilds what ``dumps`` wrote.

    Raises:
      SnapshotError: the bytes are damaged or name a class outside ``ALLOWED_ROOTS``.
    """
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except SnapshotError:
        raise
    except Exception as e:
        raise SnapshotError(f"unreadable ({type(e).__name__}: {e})") from None
