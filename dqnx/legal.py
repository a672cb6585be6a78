"""Legal-action masks: max, argmax and uniform draws over the legal actions only.

Environments such as board games (pgx) and combinatorial problems (Jumanji) say
which actions are legal in each state: a bool mask ``legal [..., A]``. Acting
(greedy and exploration) draws only legal actions, and the bootstrap target's
max / argmax over the next state's actions runs over its legal ones.

A state with no legal action at all (a terminal state of some libraries) counts
every action as legal, so a max is always finite and a draw always possible;
such a state's bootstrap term is multiplied by a zero discount anyway.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _or_all(legal: jax.Array) -> jax.Array:
    """``legal``, with every action legal where none is."""
    legal = jnp.asarray(legal, jnp.bool_)
    return legal | ~jnp.any(legal, axis=-1, keepdims=True)


def mask_values(values: jax.Array, legal: jax.Array) -> jax.Array:
    """``values [..., A]`` with the illegal actions' entries at ``-inf``.

    ``max`` and ``argmax`` of the result are those over the legal actions.
    """
    if values.shape != legal.shape:
        raise ValueError(f"values shape {values.shape} differs from legal shape {legal.shape}")
    return jnp.where(_or_all(legal), values, -jnp.inf)


def mask_or_keep(values: jax.Array, legal: jax.Array | None) -> jax.Array:
    """``mask_values(values, legal)``, or ``values`` as they are without a mask."""
    return values if legal is None else mask_values(values, legal)


def masked_argmax(values: jax.Array, legal: jax.Array) -> jax.Array:
    """``argmax`` over the legal actions: int32 ``[...]`` (the first among ties)."""
    return jnp.argmax(mask_values(values, legal), axis=-1).astype(jnp.int32)


def masked_max(values: jax.Array, legal: jax.Array) -> jax.Array:
    """``max`` over the legal actions: ``[...]``."""
    return jnp.max(mask_values(values, legal), axis=-1)


def random_legal(key: jax.Array, legal: jax.Array) -> jax.Array:
    """One action drawn uniformly from the legal actions of each row: int32 ``[...]``."""
    logits = jnp.where(_or_all(legal), 0.0, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
