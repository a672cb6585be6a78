"""Layers with the maths and parameters of flax's, formulated for speed on XLA:CPU.

- ``Dense``: ``nn.Dense`` whose kernel gradient comes out in the kernel's layout;
- ``PatchConv``: a VALID stride-1 ``nn.Conv`` as one matmul over im2col patches;
- ``pixels_nhwc``: channel-first pixel stacks to float32 ``[B, H, W, C]`` in [0, 1].

Measured effects are in the README's Performance section (``scripts/bench.py``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_vjp
def dense_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x [..., in] @ kernel [in, out]``; its VJP gives the kernel's gradient
    directly in the kernel's ``[in, out]`` layout (see ``Dense``)."""
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _dense_matmul_fwd(x, kernel):
    return dense_matmul(x, kernel), (x, kernel)


def _dense_matmul_bwd(residuals, g):
    x, kernel = residuals
    dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dkernel = lax.dot_general(x2, g2, (((0,), (0,)), ((), ())))  # x^T g: [in, out]
    return dx, dkernel


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters, names, initializers and forward maths)
    whose kernel gradient comes out in the kernel's own ``[in, out]`` layout.

    Why: JAX differentiates ``x @ W`` into ``(g^T x)^T``, an ``[out, in]``
    matmul and a transpose. XLA:CPU fuses that transpose into each consumer of
    the gradient (the Adam moments and update), which then read it with a
    stride: on the 1024 -> 128 layer of the MinAtar network those three
    fusions took ~350 us of a ~1180 us learner update (1 seed, jax 0.10.2).
    Computing ``x^T g`` directly removes them: ~1000 us per update, and a
    little faster on the CartPole MLP (160 -> 150 us). The gradient is the same
    sum of the same products; its float rounding may differ in the last bit.

    Only first-order reverse mode is defined (``jax.grad``/``jax.vjp``; a
    ``custom_vjp``): forward-mode or higher-order differentiation through it
    raises. ``precision`` and ``dot_general`` are not used.
    """

    @nn.compact
    def __call__(self, inputs):
        kernel = self.param(
            "kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = dense_matmul(inputs, kernel)
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


class PatchConv(nn.Module):
    """A VALID, stride-1 2-D convolution computed as one matmul over im2col
    patches: the maths and parameters of ``nn.Conv(features, kernel_size,
    padding="VALID")``.

    Parameters as ``nn.Conv``'s, created in the same order with the same
    initializers: ``kernel`` [kh, kw, C, features] (lecun_normal) and ``bias``
    [features] (zeros); under the same module name, the same RNG gives the same
    values and checkpoints are interchangeable. Input [B, H, W, C] of any dtype
    (promoted with the kernel, float32 for bool observations, as ``nn.Conv``
    does); output [B, H - kh + 1, W - kw + 1, features].

    Why: XLA:CPU's convolution is slow for the MinAtar layer (3x3, 4 -> 16
    channels on a 10x10 image): slower still inside a ``lax.scan`` (the
    training loop) and under ``vmap`` over seeds, where per-seed kernels make
    it a grouped convolution. On a 2-core CPU this formulation made a
    Breakout-MinAtar learner update ~3x faster (1 and 8 seeds).

    Here the patches are built from shifted slices, concatenated along
    channels in the order of
    ``kernel.reshape(kh * kw * C, features)`` (offset (i, j) major, channel
    minor) in two passes (the kw column shifts, then the kh row shifts of that,
    which moves contiguous runs of kw*C values instead of C), in the input's
    dtype (bool observations: a quarter of the bytes of float32) and cast
    afterwards; then one ``dot_general`` (a batched matmul under ``vmap``).

    Used on every backend, not only on CPU (no ``jax.default_backend()``
    switch): it is slices, a concatenate and a matmul, which a GPU/TPU runs
    about as well as a convolution at these sizes (the patches have ~6x the
    input's elements, a few MB at most, and the layer is small next to the dense
    ones), and one formulation keeps results the same across backends.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, cin, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
        cols = jnp.concatenate([x[:, :, j : j + out_w] for j in range(kw)], axis=-1)
        patches = jnp.concatenate([cols[:, i : i + out_h] for i in range(kh)], axis=-1)
        # cols [B, H, out_w, kw*C]; patches [B, out_h, out_w, kh*kw*C]
        dtype = jnp.promote_types(x.dtype, kernel.dtype)
        y = lax.dot_general(
            patches.astype(dtype),
            kernel.reshape(kh * kw * cin, self.features).astype(dtype),
            (((3,), (0,)), ((), ())),
        )  # [B, out_h, out_w, features]
        return y + bias.astype(dtype)


def pixels_nhwc(obs: jax.Array) -> jax.Array:
    """Channel-first pixel intensities ``[B, C, H, W]`` in [0, 255], of any dtype,
    as float32 ``[B, H, W, C]`` in [0, 1] (``obs / 255``, transposed)."""
    return jnp.transpose(obs.astype(jnp.float32) / 255.0, (0, 2, 3, 1))
