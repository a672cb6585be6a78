"""Noisy dense layer with factorised Gaussian noise (Fortunato et al., 2018, arXiv:1706.10295).

``y = x @ (mu_w + sigma_w * eps_w) + mu_b + sigma_b * eps_b`` with factorised noise
``eps_w = outer(f(eps_in), f(eps_out))``, ``eps_b = f(eps_out)``, ``f(e) = sign(e) sqrt(|e|)``
and ``eps_in [p]``, ``eps_out [q]`` standard normal: p + q draws per call instead of p * q.

The noise comes from the flax RNG stream ``"noise"``: pass ``rngs={"noise": key}`` to
``apply`` (a fresh key per update and per acting step; the same key gives the same output).
``deterministic=True`` (attribute or call argument) uses the means only, for greedy evaluation.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dqnx import defaults
from dqnx.layers import accumulation_dtype, matmul

NOISE_RNG = "noise"


def scaled_noise(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """``f(e) = sign(e) * sqrt(|e|)`` of standard normal ``e`` (Fortunato et al., 2018)."""
    e = jax.random.normal(key, shape, dtype)
    return jnp.sign(e) * jnp.sqrt(jnp.abs(e))


def _symmetric_uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NoisyDense(nn.Module):
    """Dense layer with learned, factorised Gaussian parameter noise (NoisyNet).

    Parameters, for ``p`` input and ``q`` output features, initialised as in
    Fortunato et al. (2018) for factorised noise: ``mu_w [p, q]`` and
    ``mu_b [q]`` ~ U[-1/sqrt(p), 1/sqrt(p)]; ``sigma_w [p, q]`` and ``sigma_b [q]`` =
    ``sigma0 / sqrt(p)``.

    One noise sample per call is shared by every row of the input ``[..., p]``
    (the paper's per-batch noise); the output is ``[..., q]``. The weight noise is
    applied without forming the ``[p, q]`` noise matrix:
    ``x @ (sigma_w * outer(f_in, f_out)) = ((x * f_in) @ sigma_w) * f_out``.

    Without a ``"noise"`` RNG and not deterministic, ``apply`` raises a ``ValueError``;
    ``init`` without one uses the means (the output of ``init`` is not used for training).

    Attributes:
      features: output size ``q``.
      sigma0: initial noise scale; sigma starts at ``sigma0 / sqrt(p)``.
      deterministic: use the means only (no noise); a call argument overrides it.
      dtype: compute dtype (None: float32). bfloat16: both matmuls take their
        inputs and weights in bfloat16 and return float32; the noise is drawn in
        float32 and the biases, noise scaling and output stay float32.
    """

    features: int
    sigma0: float = defaults.Noisy.sigma0
    deterministic: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """Applies the layer.

        Args:
          x: inputs ``[..., p]``.
          deterministic: overrides the attribute when not None.

        Returns:
          ``[..., features]``.
        """
        p, q = jnp.shape(x)[-1], self.features
        bound = 1.0 / p**0.5
        mu_w = self.param("mu_w", _symmetric_uniform(bound), (p, q))
        sigma_w = self.param("sigma_w", nn.initializers.constant(self.sigma0 * bound), (p, q))
        mu_b = self.param("mu_b", _symmetric_uniform(bound), (q,))
        sigma_b = self.param("sigma_b", nn.initializers.constant(self.sigma0 * bound), (q,))
        if accumulation_dtype(self.dtype) is None:
            x, mu_w, sigma_w, mu_b, sigma_b = nn.dtypes.promote_dtype(
                x, mu_w, sigma_w, mu_b, sigma_b, dtype=self.dtype
            )
        else:
            x, mu_w, sigma_w = (jnp.asarray(a, self.dtype) for a in (x, mu_w, sigma_w))
        y = matmul(x, mu_w) + mu_b  # [..., q]

        if deterministic is None:
            deterministic = self.deterministic
        if deterministic:
            return y
        if not self.has_rng(NOISE_RNG):
            if self.is_initializing():
                return y
            raise ValueError(
                f"NoisyDense needs a {NOISE_RNG!r} RNG: apply(..., rngs={{{NOISE_RNG!r}: key}}), "
                "or deterministic=True for the means only"
            )
        key_in, key_out = jax.random.split(self.make_rng(NOISE_RNG))
        f_in = scaled_noise(key_in, (p,), y.dtype).astype(x.dtype)  # [p]
        f_out = scaled_noise(key_out, (q,), y.dtype)  # [q]
        return y + matmul(x * f_in, sigma_w) * f_out + sigma_b * f_out
