"""Layers with the maths and parameters of flax's, formulated for speed on XLA:CPU,
and the compute dtype of every layer of dqnx's networks.

- ``Dense``: ``nn.Dense`` whose kernel gradient comes out in the kernel's layout;
- ``PatchConv``: a VALID (strided) ``nn.Conv`` as one matmul over im2col patches;
- ``pixels_nhwc``: channel-first pixel stacks to float32 ``[B, H, W, C]`` in [0, 1];
- ``compute_kwargs``: what makes a flax ``nn.Dense``/``nn.Conv`` compute in a
  lower precision the way ``Dense`` and ``PatchConv`` do.

**Compute dtype** (``dtype`` of every layer here and in ``heads``, ``noisy``):
None (or float32) is flax's default promotion, float32 for float32 parameters:
the exact maths of a layer without the field. bfloat16 (or float16): each matmul
and convolution takes its inputs and kernel in that dtype and accumulates and
returns float32; biases, activations, parameters (``param_dtype`` float32),
gradients and the optimizer stay float32. The gradient of such an op is taken
with its output gradient cast to the compute dtype, so the backward matmuls run
in it too; ``Dense`` and the bfloat16 ``PatchConv`` return their kernel gradient
in float32 (accumulated in float32, never rounded to bfloat16).

Measured effects are in docs/performance.md (``scripts/bench.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def accumulation_dtype(dtype) -> Any:
    """float32 for a floating compute dtype narrower than float32 (bfloat16,
    float16), else None: the ``preferred_element_type`` of its matmuls."""
    if dtype is None:
        return None
    dtype = jnp.dtype(dtype)
    narrow = jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4
    return jnp.dtype(jnp.float32) if narrow else None


@jax.custom_vjp
def dense_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x [..., in] @ kernel [in, out]``; its VJP gives the kernel's gradient
    directly in the kernel's ``[in, out]`` layout (see ``Dense``).

    ``x`` in a narrow float (bfloat16): the kernel is cast to ``x``'s dtype, the
    product accumulated and returned in float32, and the backward matmuls take
    the output gradient in ``x``'s dtype; the kernel's gradient is accumulated
    in float32 and returned in the kernel's dtype."""
    acc = accumulation_dtype(x.dtype)
    if acc is None:
        return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    k = kernel.astype(x.dtype)
    return lax.dot_general(x, k, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=acc)


def _dense_matmul_fwd(x, kernel):
    return dense_matmul(x, kernel), (x, kernel)


def _dense_matmul_bwd(residuals, g):
    x, kernel = residuals
    acc = accumulation_dtype(x.dtype)
    if acc is not None:  # the narrow-float path: backward matmuls in x's dtype
        g, kernel_c = g.astype(x.dtype), kernel.astype(x.dtype)
    else:
        kernel_c = kernel
    dx = lax.dot_general(g, kernel_c, (((g.ndim - 1,), (1,)), ((), ())))
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dkernel = lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), preferred_element_type=acc)
    if dkernel.dtype != kernel.dtype:
        dkernel = dkernel.astype(kernel.dtype)
    return dx, dkernel  # x^T g: [in, out]


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
    raises. ``precision`` and ``dot_general`` are not used. A narrow ``dtype``
    (bfloat16) computes as the module docstring says: float32 output.
    """

    @nn.compact
    def __call__(self, inputs):
        kernel = self.param(
            "kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        if accumulation_dtype(self.dtype) is None:
            inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        else:  # dense_matmul casts the kernel; the bias is added in float32
            inputs = jnp.asarray(inputs, self.dtype)
        y = dense_matmul(inputs, kernel)
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


class PatchConv(nn.Module):
    """A VALID 2-D convolution computed as one matmul over im2col patches: the
    maths and parameters of ``nn.Conv(features, kernel_size, strides,
    padding="VALID")``.

    Parameters as ``nn.Conv``'s, created in the same order with the same
    initializers: ``kernel`` [kh, kw, C, features] (lecun_normal) and ``bias``
    [features] (zeros); under the same module name, the same RNG gives the same
    values and checkpoints are interchangeable. Input [B, H, W, C] of any dtype
    (promoted with the kernel, float32 for bool or uint8 observations, as
    ``nn.Conv`` does; ``input_divisor`` divides the promoted patches, so a uint8
    image with 255 is ``pixels_nhwc``'s [0, 1] image, exactly); output
    [B, (H - kh) // sh + 1, (W - kw) // sw + 1, features].

    Why: XLA:CPU's convolution is slow for the MinAtar layer (3x3, 4 -> 16
    channels on a 10x10 image): slower still inside a ``lax.scan`` (the
    training loop) and under ``vmap`` over seeds, where per-seed kernels make
    it a grouped convolution. On a 2-core CPU this formulation made a
    Breakout-MinAtar learner update ~3x faster (1 and 8 seeds); for the Nature
    CNN's strided layers it measured no faster than XLA's own convolutions
    (``platforms.PlatformChoices.strided_conv_impl``, docs/performance.md).

    The patches are built from shifted (strided) slices, concatenated along
    channels in the order of ``kernel.reshape(kh * kw * C, features)`` (offset
    (i, j) major, channel minor) in two passes (the kw column shifts, then the
    kh row shifts of that, which moves contiguous runs of kw*C values instead
    of C), in the input's dtype (bool or uint8 observations: a quarter of the
    bytes of float32) and cast afterwards; then one ``dot_general`` (a batched
    matmul under ``vmap``). A stride that divides its kernel side is first
    turned into stride 1 by space-to-depth: s x s blocks of the input become
    channels, the kernel is regrouped to match, and the patches move runs of
    s*s*C values.

    Which of the two a network uses is ``--conv_impl`` (``MinAtarCNN``,
    ``NatureCNN``); its default comes from ``platforms.PlatformChoices.conv_impl``:
    this layer on CPU, ``nn.Conv`` on GPU and TPU, whose convolutions XLA tunes.

    ``dtype``: None (float32) as above, exactly; bfloat16: the patches and the
    kernel in bfloat16 through ``dense_matmul`` (float32 accumulation, output,
    bias and kernel gradient).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    dtype: Any = None
    input_divisor: float | None = None

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, cin, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        patches, w = image_patches(x, kernel, tuple(self.strides))  # [B, oh, ow, P], [P, F]
        narrow = accumulation_dtype(self.dtype) is not None
        dtype = jnp.float32 if narrow else jnp.promote_types(x.dtype, kernel.dtype)
        patches = patches.astype(dtype)
        if self.input_divisor is not None:
            patches = patches / jnp.asarray(self.input_divisor, dtype)
        if narrow:
            return dense_matmul(patches.astype(self.dtype), w) + bias  # float32
        y = lax.dot_general(patches, w.astype(dtype), (((3,), (0,)), ((), ())))
        return y + bias.astype(dtype)  # [B, oh, ow, features]


def image_patches(x: jax.Array, kernel: jax.Array, strides=(1, 1)):
    """(patches ``[B, oh, ow, P]`` in ``x``'s dtype, kernel ``[P, F]``) whose
    product is the VALID convolution of ``x [B, H, W, C]`` with ``kernel [kh, kw,
    C, F]`` at ``strides`` (``PatchConv``). Strides that divide the kernel's
    sides are first folded into channels (space-to-depth), which regroups the
    kernel's rows the same way."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    if (sh, sw) != (1, 1) and kh % sh == 0 and kw % sw == 0:
        # Rows/columns the convolution reads, as blocks of sh x sw: [B, oh', ow', sh*sw*C].
        bh, bw = kh // sh, kw // sw
        x = x[:, : (oh + bh - 1) * sh, : (ow + bw - 1) * sw]
        b, h, w = x.shape[0], x.shape[1] // sh, x.shape[2] // sw
        x = x.reshape(b, h, sh, w, sw, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)
        kernel = kernel.reshape(bh, sh, bw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
        kernel = kernel.reshape(bh, bw, sh * sw * cin, cout)
        kh, kw, cin, (sh, sw) = bh, bw, sh * sw * cin, (1, 1)
    cols = jnp.concatenate([x[:, :, j : j + sw * (ow - 1) + 1 : sw] for j in range(kw)], -1)
    patches = jnp.concatenate([cols[:, i : i + sh * (oh - 1) + 1 : sh] for i in range(kh)], -1)
    # cols [B, H, ow, kw*C]; patches [B, oh, ow, kh*kw*C]
    return patches, kernel.reshape(kh * kw * cin, cout)


def _float32_out(op, lhs, rhs, *args, **kwargs):
    """``op`` (``lax.dot_general``/``conv_general_dilated``) of narrow-float
    operands, accumulated and returned in float32; its gradient is the plain
    ``op``'s at the output gradient cast to the operands' dtype."""
    kwargs.pop("preferred_element_type", None)

    @jax.custom_vjp
    def apply(a, b):
        return op(a, b, *args, preferred_element_type=jnp.float32, **kwargs)

    def bwd(residuals, g):
        a, b = residuals
        _, vjp = jax.vjp(lambda a, b: op(a, b, *args, **kwargs), a, b)
        return vjp(g.astype(a.dtype))

    apply.defvjp(lambda a, b: (apply(a, b), (a, b)), bwd)
    return apply(lhs, rhs)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [..., p] @ w [p, q]``: exactly ``x @ w``, or for narrow-float
    operands accumulated and returned in float32 (gradients as ``compute_kwargs``)."""
    if accumulation_dtype(x.dtype) is None:
        return x @ w
    return _float32_out(lax.dot_general, x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _cast_operands(inputs, kernel, bias, dtype=None, inexact=True):
    """flax's ``promote_dtype`` for a narrow compute dtype: the op's operands in
    ``dtype``, the bias left in float32 (added to the float32 output)."""
    del inexact
    return jnp.asarray(inputs, dtype), jnp.asarray(kernel, dtype), bias


def compute_kwargs(dtype, conv: bool = False) -> dict:
    """Keyword arguments that make a flax ``nn.Dense`` (``nn.Conv`` with
    ``conv``) compute in ``dtype`` as ``Dense`` does: {} for None or float32
    (flax's default maths, exactly); for bfloat16, ``dtype``, operands cast to
    it (bias not) and a ``dot_general``/``conv_general_dilated`` with float32
    accumulation and output."""
    if accumulation_dtype(dtype) is None:
        return {}
    kwargs = {"dtype": dtype, "promote_dtype": _cast_operands}
    if conv:
        op = functools.partial(_float32_out, lax.conv_general_dilated)
        return {**kwargs, "conv_general_dilated": op}
    return {**kwargs, "dot_general": functools.partial(_float32_out, lax.dot_general)}


def pixels_nhwc(obs: jax.Array) -> jax.Array:
    """Channel-first pixel intensities ``[B, C, H, W]`` in [0, 255], of any dtype,
    as float32 ``[B, H, W, C]`` in [0, 1] (``obs / 255``, transposed)."""
    return jnp.transpose(obs.astype(jnp.float32) / 255.0, (0, 2, 3, 1))
