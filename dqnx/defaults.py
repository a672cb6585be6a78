"""The DQN family's default hyperparameters, in one place and in plain Python.

``Config`` (the flags), the heads (``heads.Head``, ``noisy.NoisyDense``), the
objectives (``objectives.C51``, ``objectives.IQN``, ...) and the Munchausen
functions read their defaults from here, so a default is written once. No JAX:
``Config`` imports this before JAX loads.

Each class is a frozen dataclass of one piece's hyperparameters; its class
attributes are the defaults (``defaults.C51.num_atoms``) and an instance is a
setting (``defaults.Munchausen(tau=0.01)``).
"""

from __future__ import annotations

import dataclasses

# The learners, by the names the flags, the heads and the objectives share.
LEARNERS = ("dqn", "c51", "qr", "iqn")
# Huber threshold of DQN's TD loss; QR-DQN's and IQN's kappa.
HUBER_DELTA = 1.0


@dataclasses.dataclass(frozen=True)
class Noisy:
    """Noisy layers (Fortunato et al., 2018, arXiv:1706.10295).

    Attributes:
      sigma0: initial noise scale; sigma starts at ``sigma0 / sqrt(fan_in)``.
    """

    sigma0: float = 0.5


@dataclasses.dataclass(frozen=True)
class C51:
    """C51's fixed support (Bellemare et al., 2017, arXiv:1707.06887).

    Attributes:
      num_atoms: support size ``K``.
      v_min: lowest atom.
      v_max: highest atom.
    """

    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0


@dataclasses.dataclass(frozen=True)
class QR:
    """QR-DQN (Dabney et al., 2018a, arXiv:1710.10044).

    Attributes:
      num_quantiles: quantiles per action ``N`` (the paper's Atari value).
    """

    num_quantiles: int = 200


@dataclasses.dataclass(frozen=True)
class IQN:
    """IQN (Dabney et al., 2018b, arXiv:1806.06923); the paper's Atari values.

    Attributes:
      num_tau_samples: fractions per example for the online values (``N``).
      num_tau_prime_samples: fractions per example for the target (``N'``).
      num_quantile_samples: fractions per observation to estimate Q-values for
        acting and action selection (``K``).
      embedding_dim: cosine features of a fraction (``n``).
    """

    num_tau_samples: int = 64
    num_tau_prime_samples: int = 64
    num_quantile_samples: int = 32
    embedding_dim: int = 64


@dataclasses.dataclass(frozen=True)
class Munchausen:
    """Munchausen targets (Vieillard et al., 2020, arXiv:2007.14430); the paper's values.

    Attributes:
      tau: entropy temperature of the softmax policy, > 0.
      alpha: scale of the log-policy bonus.
      l0: lower clip of the bonus ``tau * log pi``, <= 0.
    """

    tau: float = 0.03
    alpha: float = 0.9
    l0: float = -1.0

    def _asdict(self) -> dict:
        """``{name: value}`` (values as they are: traced scalars stay traced)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
