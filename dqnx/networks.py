"""Q-networks (flax.linen): MLP, MinAtar CNN, Atari CNNs (Nature, IMPALA), optional dueling head.

Every network maps one batch of observations ``[B, *obs_shape]`` (any dtype;
cast to float32 here) to Q-values ``[B, num_actions]``. The Atari networks read
ALE's channel-first stacks of pixel intensities ``[B, C, H, W]`` (uint8 in
replay) and scale them to ``[0, 1]`` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class QHead(nn.Module):
    """Linear Q head, or the dueling head of Wang et al. (2016),
    Q = V + A - mean(A) (arXiv:1511.06581)."""

    num_actions: int
    dueling: bool = False

    @nn.compact
    def __call__(self, h):
        if not self.dueling:
            return Dense(self.num_actions, name="q")(h)
        value = Dense(1, name="value")(h)  # [B, 1]
        adv = Dense(self.num_actions, name="advantage")(h)  # [B, A]
        return value + adv - adv.mean(axis=-1, keepdims=True)


class MLP(nn.Module):
    """Fully connected torso (ReLU) over flattened observations."""

    num_actions: int
    hidden_sizes: Sequence[int] = (128, 128)
    dueling: bool = False

    @nn.compact
    def __call__(self, obs):
        h = obs.reshape(obs.shape[0], -1).astype(jnp.float32)  # [B, D]
        for size in self.hidden_sizes:
            h = nn.relu(Dense(size)(h))
        return QHead(self.num_actions, self.dueling)(h)


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


class MinAtarCNN(nn.Module):
    """The MinAtar network (Young & Tian, 2019, arXiv:1903.03176): one 3x3
    convolution with 16 channels, then dense layers."""

    num_actions: int
    hidden_sizes: Sequence[int] = (128,)
    dueling: bool = False

    @nn.compact
    def __call__(self, obs):
        # obs [B, H, W, C] goes in uncast (PatchConv builds its patches in the
        # input dtype, then promotes to float32). Named "Conv_0", the name
        # nn.Conv had here, so the parameter tree is unchanged.
        h = nn.relu(PatchConv(16, (3, 3), name="Conv_0")(obs))
        h = h.reshape(h.shape[0], -1)
        for size in self.hidden_sizes:
            h = nn.relu(Dense(size)(h))
        return QHead(self.num_actions, self.dueling)(h)


def pixels_nhwc(obs: jax.Array) -> jax.Array:
    """Channel-first pixel intensities ``[B, C, H, W]`` in [0, 255], of any dtype,
    as float32 ``[B, H, W, C]`` in [0, 1] (``obs / 255``, transposed)."""
    return jnp.transpose(obs.astype(jnp.float32) / 255.0, (0, 2, 3, 1))


class NatureCNN(nn.Module):
    """The DQN network of Mnih et al. (2015, Nature 518:529) over ALE's stacks.

    Input ``[B, C, H, W]`` pixel intensities in [0, 255] (uint8 or float; C = 4
    stacked 84x84 frames), divided by 255 here: a uint8 stack and the same
    values as float32 give the same Q-values. Torso: conv 32 8x8 stride 4, conv
    64 4x4 stride 2, conv 64 3x3 stride 1 (VALID, ReLU; 84x84 -> 20 -> 9 -> 7),
    then ``hidden_sizes`` dense ReLU layers (512 in the paper) and ``QHead``.
    Layers use flax's default initializers.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (512,)
    dueling: bool = False

    @nn.compact
    def __call__(self, obs):
        h = pixels_nhwc(obs)  # [B, 84, 84, 4]
        h = nn.relu(nn.Conv(32, (8, 8), strides=(4, 4), padding="VALID")(h))  # [B, 20, 20, 32]
        h = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="VALID")(h))  # [B, 9, 9, 64]
        h = nn.relu(nn.Conv(64, (3, 3), strides=(1, 1), padding="VALID")(h))  # [B, 7, 7, 64]
        h = h.reshape(h.shape[0], -1)  # [B, 3136]
        for size in self.hidden_sizes:
            h = nn.relu(Dense(size)(h))
        return QHead(self.num_actions, self.dueling)(h)


class ImpalaResidualBlock(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3x3 SAME convolutions of ``channels``."""

    channels: int

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels, (3, 3), padding="SAME")(nn.relu(x))
        h = nn.Conv(self.channels, (3, 3), padding="SAME")(nn.relu(h))
        return x + h


class ImpalaCNN(nn.Module):
    """The deep residual network of IMPALA (Espeholt et al., 2018,
    arXiv:1802.01561) over ALE's stacks, without its LSTM.

    Input as ``NatureCNN``'s (pixel intensities, divided by 255 here). One
    section per entry of ``channels`` (16, 32, 32): conv 3x3 SAME, max-pool 3x3
    stride 2 SAME, two ``ImpalaResidualBlock``; 15 convolutions in all (84x84 ->
    42 -> 21 -> 11). Then ReLU, ``hidden_sizes`` dense ReLU layers (256 in the
    paper) and ``QHead``. Layers use flax's default initializers.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (256,)
    dueling: bool = False
    channels: Sequence[int] = (16, 32, 32)

    @nn.compact
    def __call__(self, obs):
        h = pixels_nhwc(obs)  # [B, 84, 84, 4]
        for channels in self.channels:
            h = nn.Conv(channels, (3, 3), padding="SAME")(h)
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")  # [B, ceil(H/2), ..]
            h = ImpalaResidualBlock(channels)(h)
            h = ImpalaResidualBlock(channels)(h)
        h = nn.relu(h).reshape(h.shape[0], -1)  # [B, 11 * 11 * 32]
        for size in self.hidden_sizes:
            h = nn.relu(Dense(size)(h))
        return QHead(self.num_actions, self.dueling)(h)


NETWORKS = ("auto", "mlp", "minatar_cnn", "nature_cnn", "impala_cnn")


def is_channel_first_image(obs_shape: tuple[int, ...]) -> bool:
    """``[C, H, W]`` with fewer channels than either side and sides of at least
    36 (the smallest input the Nature CNN takes), e.g. ALE's ``[4, 84, 84]``;
    MinAtar's ``[10, 10, C]`` is not."""
    return len(obs_shape) == 3 and obs_shape[0] < min(obs_shape[1:]) and min(obs_shape[1:]) >= 36


def make_q_network(
    kind: str,
    obs_shape: tuple[int, ...],
    num_actions: int,
    hidden_sizes: Sequence[int] = (128, 128),
    dueling: bool = False,
) -> nn.Module:
    """The Q-network ``kind`` names.

    "auto" picks the Nature CNN for channel-first image stacks such as ALE's
    ``[4, 84, 84]`` (``is_channel_first_image``: pixel intensities, uint8 in
    replay), else the MinAtar CNN for other 3-D ``[H, W, C]`` inputs, else an MLP.

    Args:
      kind: one of ``NETWORKS``.
      obs_shape: one observation's shape.
      num_actions: size of the Q head.
      hidden_sizes: the MLP's hidden layers (the MinAtar CNN's dense layers).
        The Atari networks keep their published dense layer (512 for
        "nature_cnn", 256 for "impala_cnn").
      dueling: dueling value/advantage head.
    """
    if kind == "auto":
        if is_channel_first_image(tuple(obs_shape)):
            kind = "nature_cnn"
        else:
            kind = "minatar_cnn" if len(obs_shape) == 3 else "mlp"
    if kind in ("nature_cnn", "impala_cnn"):
        cls = NatureCNN if kind == "nature_cnn" else ImpalaCNN
        return cls(num_actions, dueling=dueling)
    if kind not in ("mlp", "minatar_cnn"):
        raise ValueError(f"unknown network {kind!r}; one of {NETWORKS}")
    cls = {"mlp": MLP, "minatar_cnn": MinAtarCNN}[kind]
    return cls(num_actions, tuple(hidden_sizes), dueling)
