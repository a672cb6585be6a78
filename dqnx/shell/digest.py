"""Digests of the online parameters: one per seed, and one of every copy a process holds."""

from __future__ import annotations

import jax

from dqnx import parallel


def params_digests(params) -> list[str]:
    """One SHA-256 hex digest per seed of the online parameters (leaves [S, ...])."""
    import hashlib

    import numpy as np

    leaves = [np.asarray(x) for x in jax.tree.leaves(parallel.to_host(params))]
    digests = []
    for s in range(leaves[0].shape[0]):
        h = hashlib.sha256()
        for leaf in leaves:
            h.update(np.ascontiguousarray(leaf[s]).tobytes())
        digests.append(h.hexdigest())
    return digests


def local_params_digest(params) -> str:
    """SHA-256 of every copy of the parameters this process holds (all its devices):
    equal across processes exactly when every device ended with the same parameters
    for the seeds it holds."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        by_seed = {}
        for shard in leaf.addressable_shards:
            by_seed.setdefault(str(shard.index), []).append(np.asarray(shard.data))
        for index in sorted(by_seed):
            copies = by_seed[index]
            if any(not np.array_equal(copies[0], c) for c in copies[1:]):
                return "copies-differ"
            h.update(index.encode() + np.ascontiguousarray(copies[0]).tobytes())
    return h.hexdigest()
