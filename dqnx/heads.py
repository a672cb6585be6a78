"""Output heads (flax.linen) mapping a torso's features ``[B, D]`` to the values a loss reads.

``Head`` names a network's head and maps its output to Q-values; ``output_head``
builds it inside a torso. The modules:

- ``QHead``: Q-values ``[B, A]``, linear or dueling (the default, plain head);
- ``DistributionalHead``: logits ``[B, A, K]`` for ``distributional.categorical_*`` (C51);
- ``QuantileHead``: quantile values ``[B, N, A]`` for ``distributional.quantile_q_learning``;
- ``IQNHead``: quantile values ``[B, N, A]`` at given fractions for ``distributional.iqn_loss``;
- ``NoisyQHead``: Q-values ``[B, A]`` for ``losses.q_learning`` / ``double_q_learning``.

The heads share their stream options (``NoisyQHead`` is always noisy):

- ``dueling``: separate value and advantage streams (Wang et al., 2016,
  arXiv:1511.06581), combined as ``V + A - mean_a A`` per atom or quantile;
- ``hidden_sizes``: ReLU layers inside each stream, before its output layer;
- ``noisy``: every layer of the streams a ``NoisyDense`` (Fortunato et al., 2018,
  arXiv:1706.10295);
- ``sigma0``: initial noise scale of every ``NoisyDense``;
- ``dtype``: the layers' compute dtype (None: float32; ``layers`` module docstring).

Noisy heads need ``rngs={"noise": key}`` in ``apply``, or ``deterministic=True`` in
the call for the means only. Layers are flax's ``nn.Dense`` (``NoisyDense`` when
noisy), named ``"q"``, or ``"value"`` and ``"advantage"`` when dueling, with
``"{stream}_hidden_{i}"`` before them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dqnx import defaults
from dqnx.distributional import categorical_q_values, quantile_midpoints
from dqnx.layers import Dense, compute_kwargs
from dqnx.noisy import NoisyDense


def _linear(h, features, *, name, noisy, sigma0, deterministic, dtype=None):
    if noisy:
        return NoisyDense(features, sigma0, dtype=dtype, name=name)(h, deterministic=deterministic)
    return nn.Dense(features, name=name, **compute_kwargs(dtype))(h)


def _action_values(
    h: jax.Array,
    num_actions: int,
    event_shape: tuple[int, ...],
    *,
    dueling: bool,
    hidden_sizes: Sequence[int],
    noisy: bool,
    sigma0: float,
    deterministic: bool | None,
    dtype: Any = None,
) -> jax.Array:
    """Features ``[..., D]`` -> ``[..., A, *event_shape]``, linear or dueling."""
    size = math.prod(event_shape)
    lead = h.shape[:-1]
    layer = dict(noisy=noisy, sigma0=sigma0, deterministic=deterministic, dtype=dtype)

    def stream(features, name):
        x = h
        for i, width in enumerate(hidden_sizes):
            x = nn.relu(_linear(x, width, name=f"{name}_hidden_{i}", **layer))
        return _linear(x, features, name=name, **layer)

    if not dueling:
        return stream(num_actions * size, "q").reshape(*lead, num_actions, *event_shape)
    value = stream(size, "value").reshape(*lead, 1, *event_shape)
    advantage = stream(num_actions * size, "advantage").reshape(*lead, num_actions, *event_shape)
    return value + advantage - advantage.mean(axis=len(lead), keepdims=True)


class _StreamsHead(nn.Module):
    """A head of ``num_actions`` with the stream options (module docstring), which are
    keyword-only: a subclass's own fields (its size) follow ``num_actions`` positionally."""

    num_actions: int
    _: dataclasses.KW_ONLY
    dueling: bool = False
    noisy: bool = False
    hidden_sizes: Sequence[int] = ()
    sigma0: float = defaults.Noisy.sigma0
    dtype: Any = None

    def _streams(self, h, event_shape, deterministic):
        """``_action_values`` of ``h`` with this head's options."""
        return _action_values(
            h,
            self.num_actions,
            event_shape,
            dueling=self.dueling,
            hidden_sizes=self.hidden_sizes,
            noisy=self.noisy,
            sigma0=self.sigma0,
            deterministic=deterministic,
            dtype=self.dtype,
        )


class NoisyQHead(_StreamsHead):
    """Q-values ``[B, A]`` from noisy layers (NoisyNet-DQN, Fortunato et al., 2018).

    Attributes:
      num_actions: ``A``.
      dueling, hidden_sizes, sigma0: the stream options (module docstring).
    """

    noisy: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """``h [B, D]`` -> Q-values ``[B, A]``; ``deterministic=True``: the means only."""
        return self._streams(h, (), deterministic)


class DistributionalHead(_StreamsHead):
    """Logits of categorical return distributions, C51 (Bellemare et al., 2017, arXiv:1707.06887).

    With ``dueling``, as in Rainbow (Hessel et al., 2018, arXiv:1710.02298): value logits
    ``[B, 1, K]`` plus advantage logits ``[B, A, K]`` minus their mean over actions, then a
    softmax over atoms (in the loss or ``categorical_q_values``).

    Attributes:
      num_actions: ``A``.
      num_atoms: ``K``, the size of the fixed support.
      dueling, noisy, hidden_sizes, sigma0: the stream options (module docstring).
    """

    num_atoms: int

    @nn.compact
    def __call__(self, h: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """``h [B, D]`` -> logits ``[B, A, K]``."""
        return self._streams(h, (self.num_atoms,), deterministic)


class QuantileHead(_StreamsHead):
    """Quantile values at ``N`` fixed fractions, QR-DQN (Dabney et al., 2018a, arXiv:1710.10044).

    The fractions are ``distributional.quantile_midpoints(N)``; the head only outputs
    ``N`` values per action. Dueling combines value and advantage per quantile.

    Attributes:
      num_actions: ``A``.
      num_quantiles: ``N``.
      dueling, noisy, hidden_sizes, sigma0: the stream options (module docstring).
    """

    num_quantiles: int

    @nn.compact
    def __call__(self, h: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """``h [B, D]`` -> quantile values ``[B, N, A]``."""
        values = self._streams(h, (self.num_quantiles,), deterministic)  # [B, A, N]
        return jnp.swapaxes(values, -1, -2)


class IQNHead(_StreamsHead):
    """Quantile values at given fractions, IQN (Dabney et al., 2018b, arXiv:1806.06923).

    Each fraction ``tau`` is embedded as ``phi(tau) = relu(Dense_D(cos(pi * i * tau)))``,
    ``i = 0 .. embedding_dim - 1`` (the paper's eq. 4), multiplied elementwise into the
    features ``psi [B, D]``, and the product goes through the streams:
    ``Z_tau = f(psi * phi(tau))``. In the paper's Atari network the product enters the
    512-unit layer: there, the torso ends at the convolutions and ``hidden_sizes=(512,)``.
    The embedding layer (``"tau_embedding"``) is a plain ``nn.Dense`` even when ``noisy``.

    Attributes:
      num_actions: ``A``.
      embedding_dim: number of cosine features ``n``.
      dueling, noisy, hidden_sizes, sigma0: the stream options (module docstring);
        ``hidden_sizes`` come after the product.
    """

    embedding_dim: int = defaults.IQN.embedding_dim

    @nn.compact
    def __call__(
        self, h: jax.Array, taus: jax.Array, deterministic: bool | None = None
    ) -> jax.Array:
        """``h [B, D]`` and fractions ``taus [B, N]`` in [0, 1] -> quantile values ``[B, N, A]``."""
        if h.ndim != 2 or taus.ndim != 2 or taus.shape[0] != h.shape[0]:
            raise ValueError(f"expects h [B, D] and taus [B, N]; got {h.shape} and {taus.shape}")
        i = jnp.arange(self.embedding_dim, dtype=h.dtype)  # [n]
        cosines = jnp.cos(jnp.pi * i * taus[..., None].astype(h.dtype))  # [B, N, n]
        embed = nn.Dense(h.shape[-1], name="tau_embedding", **compute_kwargs(self.dtype))
        phi = nn.relu(embed(cosines))  # [B, N, D]
        return self._streams(h[:, None, :] * phi, (), deterministic)  # [B, N, A]


class QHead(nn.Module):
    """Linear Q head, or the dueling head of Wang et al. (2016),
    Q = V + A - mean(A) (arXiv:1511.06581)."""

    num_actions: int
    dueling: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, h):
        if not self.dueling:
            return Dense(self.num_actions, dtype=self.dtype, name="q")(h)
        value = Dense(1, dtype=self.dtype, name="value")(h)  # [B, 1]
        adv = Dense(self.num_actions, dtype=self.dtype, name="advantage")(h)  # [B, A]
        return value + adv - adv.mean(axis=-1, keepdims=True)


HEADS = defaults.LEARNERS  # a head per learner, by the same names


@dataclasses.dataclass(frozen=True)
class Head:
    """Which output head a Q-network ends in, and how its output becomes Q-values.

    The default, ``Head()``, is the plain ``QHead`` (Q-values ``[B, A]``): the
    networks' parameter trees and outputs are then those of a network without
    this attribute.

    Attributes:
      kind: "dqn": Q-values ``[B, A]`` (``QHead``, or ``NoisyQHead`` when
        noisy); "c51": C51 logits ``[B, A, K]`` over ``atoms``
        (``DistributionalHead``); "qr": QR-DQN values ``[B, N, A]``
        at the fixed fractions ``distributional.quantile_midpoints(N)``
        (``QuantileHead``); "iqn": values ``[B, N, A]`` at fractions given
        in the call (``IQNHead``).
      noisy: the head's layers are ``noisy.NoisyDense`` (NoisyNet, Fortunato et
        al., 2018): ``apply`` needs ``rngs={"noise": key}``, or
        ``deterministic=True`` for the means.
      sigma0: initial noise scale of the noisy layers.
      num_atoms: C51's support size ``K``.
      v_min: C51's lowest atom.
      v_max: C51's highest atom.
      num_quantiles: QR-DQN's ``N``.
      num_quantile_samples: IQN's ``K``: fractions sampled (uniformly, per
        observation) to estimate Q-values for acting and action selection.
      embedding_dim: IQN's cosine features of a fraction.
    """

    kind: str = "dqn"
    noisy: bool = False
    sigma0: float = defaults.Noisy.sigma0
    num_atoms: int = defaults.C51.num_atoms
    v_min: float = defaults.C51.v_min
    v_max: float = defaults.C51.v_max
    num_quantiles: int = defaults.QR.num_quantiles
    num_quantile_samples: int = defaults.IQN.num_quantile_samples
    embedding_dim: int = defaults.IQN.embedding_dim

    def __post_init__(self):
        if self.kind not in HEADS:
            raise ValueError(f"unknown head {self.kind!r}; one of {HEADS}")

    @property
    def atoms(self) -> jax.Array:
        """C51's support ``[K]``: ``num_atoms`` evenly spaced values from v_min to v_max."""
        return jnp.linspace(self.v_min, self.v_max, self.num_atoms, dtype=jnp.float32)

    @property
    def is_plain(self) -> bool:
        """Q-values straight from a deterministic head (what a custom network gives)."""
        return self.kind == "dqn" and not self.noisy

    def needs_key(self, deterministic: bool = False) -> bool:
        """Whether Q-values need random numbers: IQN's fractions, noisy layers' noise."""
        return self.kind == "iqn" or (self.noisy and not deterministic)

    def to_q_values(self, out: jax.Array) -> jax.Array:
        """The head's output -> Q-values ``[B, A]``: as is ("dqn"), the expectation
        over atoms ("c51"), the mean over quantiles ("qr", "iqn")."""
        if self.kind == "dqn":
            return out
        if self.kind == "c51":
            return categorical_q_values(out, self.atoms)  # [B, A, K] -> [B, A]
        return jnp.mean(out, axis=-2)  # [B, N, A] -> [B, A]

    def split_hidden(self, hidden_sizes: Sequence[int]) -> tuple[tuple, tuple]:
        """(torso's, head's) dense layers. IQN's fraction embedding multiplies the
        features before the last dense layer (Dabney et al., 2018b: the 512-unit
        layer of the Atari network), so that layer moves into the head; every
        other head is linear on the torso's last layer."""
        hidden_sizes = tuple(hidden_sizes)
        if self.kind == "iqn":
            return hidden_sizes[:-1], hidden_sizes[-1:]
        return hidden_sizes, ()


PLAIN_HEAD = Head()


def output_head(head: Head, num_actions: int, dueling: bool, h, *, hidden_sizes=(),
                taus=None, deterministic=None, dtype=None):  # fmt: skip
    """Features ``h [B, D]`` through the head ``head`` names; call inside a torso's
    ``nn.compact`` ``__call__`` (the head becomes its submodule).

    Args:
      head: the head.
      num_actions: ``A``.
      dueling: value and advantage streams.
      hidden_sizes: the head's own dense layers (``Head.split_hidden``).
      taus: IQN's fractions ``[B, N]``; None gives the ``num_quantile_samples``
        midpoints ``(2i + 1) / 2K`` (a deterministic estimate, used by ``init``).
      deterministic: noisy heads: True uses the means only.
      dtype: the layers' compute dtype (None: float32).
    """
    if head.is_plain:
        return QHead(num_actions, dueling, dtype)(h)  # QHead_0: the default parameter tree
    common = dict(num_actions=num_actions, dueling=dueling, hidden_sizes=hidden_sizes,
                  sigma0=head.sigma0, dtype=dtype)  # fmt: skip
    if head.kind == "dqn":
        return NoisyQHead(**common)(h, deterministic)
    if head.kind == "c51":
        module = DistributionalHead(num_atoms=head.num_atoms, noisy=head.noisy, **common)
        return module(h, deterministic)
    if head.kind == "qr":
        module = QuantileHead(num_quantiles=head.num_quantiles, noisy=head.noisy, **common)
        return module(h, deterministic)
    if taus is None:
        taus = jnp.broadcast_to(
            quantile_midpoints(head.num_quantile_samples), (h.shape[0], head.num_quantile_samples)
        )
    module = IQNHead(embedding_dim=head.embedding_dim, noisy=head.noisy, **common)
    return module(h, taus, deterministic)
