"""Q-networks (flax.linen): a torso (MLP, MinAtar CNN, Atari CNNs: Nature, IMPALA)
and a head (``Head``: Q-values, optionally dueling and/or noisy; C51; QR-DQN; IQN).

Every network maps one batch of observations ``[B, *obs_shape]`` (any dtype;
cast to float32 here) to its head's output: Q-values ``[B, num_actions]`` for the
default head. The Atari networks read ALE's channel-first stacks of pixel
intensities ``[B, C, H, W]`` (uint8 in replay) and scale them to ``[0, 1]``
themselves. ``q_values`` is the one map from any of these networks (or any module
returning ``[B, A]``) to Q-values: acting, evaluation and the learner's action
selection all go through it.

``dtype`` (``make_q_network(..., dtype=)``, ``--compute_dtype``) is the layers'
compute dtype: None/float32, or bfloat16 for matmuls and convolutions in
bfloat16 with float32 parameters (``layers`` module docstring). Whatever it is,
a network's output is float32, so the losses and Q-values never see bfloat16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dqnx import platforms
from dqnx.heads import HEADS, PLAIN_HEAD, Head, QHead, output_head
from dqnx.layers import Dense, PatchConv, compute_kwargs, dense_matmul, pixels_nhwc
from dqnx.names import NETWORKS
from dqnx.noisy import NOISE_RNG

__all__ = [  # the layers and heads are re-exported: ``networks.Head`` etc. keep working
    "HEADS", "NETWORKS", "PLAIN_HEAD", "Dense", "Head", "ImpalaCNN", "MLP", "MinAtarCNN",
    "NatureCNN", "PatchConv", "QHead", "Torso", "dense_matmul", "forward", "head_of",
    "is_channel_first_image", "make_q_network", "output_head", "pixels_nhwc", "q_values",
]  # fmt: skip


class Torso(nn.Module):
    """Fields and common tail of every network here: a torso's own layers, then
    ``hidden_sizes`` dense ReLU layers (less those ``Head.split_hidden`` gives the
    head), then ``head``.

    Every torso is called as ``(obs [B, ...], taus=None, deterministic=None)``:
    ``taus [B, N]`` are IQN's fractions, ``deterministic`` the noisy heads' switch
    to their means (see ``output_head``); other heads ignore them. ``dtype`` is
    every layer's compute dtype (None: float32); the output is float32.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (128, 128)
    dueling: bool = False
    head: Head = PLAIN_HEAD
    dtype: Any = None

    def dense_layers_and_head(self, h: jax.Array, taus=None, deterministic=None) -> jax.Array:
        """Features ``h [B, D]`` -> the head's output. Call inside the torso's
        ``nn.compact`` ``__call__``: the layers are its ``Dense_i``, then the head."""
        torso, head_hidden = self.head.split_hidden(self.hidden_sizes)
        for size in torso:
            h = nn.relu(Dense(size, dtype=self.dtype)(h))
        out = output_head(
            self.head, self.num_actions, self.dueling, h, hidden_sizes=head_hidden, taus=taus,
            deterministic=deterministic, dtype=self.dtype,
        )  # fmt: skip
        return out if out.dtype == jnp.float32 else out.astype(jnp.float32)


class MLP(Torso):
    """Fully connected torso (ReLU) over flattened observations, then ``head``."""

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        h = obs.reshape(obs.shape[0], -1).astype(jnp.float32)  # [B, D]
        return self.dense_layers_and_head(h, taus, deterministic)


class MinAtarCNN(Torso):
    """The MinAtar network (Young & Tian, 2019, arXiv:1903.03176): one 3x3
    convolution with 16 channels, then dense layers.

    ``conv_impl``: the convolution as ``PatchConv`` ("patches") or ``nn.Conv``
    ("xla"), or "auto": the platform's choice (``platforms``: patches on CPU).
    Both are named "Conv_0" with the same parameters: checkpoints are
    interchangeable, the outputs equal up to float rounding."""

    hidden_sizes: Sequence[int] = (128,)
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        # obs [B, H, W, C] goes in uncast (PatchConv builds its patches in the
        # input dtype, then promotes to float32). Named "Conv_0", the name
        # nn.Conv had here, so the parameter tree is unchanged.
        if platforms.resolve_conv_impl(self.conv_impl) == "patches":
            conv = PatchConv(16, (3, 3), dtype=self.dtype, name="Conv_0")
        else:
            kwargs = compute_kwargs(self.dtype, conv=True)
            conv = nn.Conv(16, (3, 3), padding="VALID", name="Conv_0", **kwargs)
        h = nn.relu(conv(obs))
        h = h.reshape(h.shape[0], -1)
        return self.dense_layers_and_head(h, taus, deterministic)


class NatureCNN(Torso):
    """The DQN network of Mnih et al. (2015, Nature 518:529) over ALE's stacks.

    Input ``[B, C, H, W]`` pixel intensities in [0, 255] (uint8 or float; C = 4
    stacked 84x84 frames), divided by 255 here: a uint8 stack and the same
    values as float32 give the same Q-values. Torso: conv 32 8x8 stride 4, conv
    64 4x4 stride 2, conv 64 3x3 stride 1 (VALID, ReLU; 84x84 -> 20 -> 9 -> 7),
    then ``hidden_sizes`` dense ReLU layers (512 in the paper) and ``QHead``.
    Layers use flax's default initializers.

    ``conv_impl`` as ``MinAtarCNN``'s: the three convolutions as ``PatchConv``
    ("patches": the first builds its patches from the uint8 stack and scales them)
    or ``nn.Conv`` ("xla"), or "auto": ``platforms``' ``strided_conv_impl`` (xla
    everywhere: XLA:CPU's strided convolutions measured no slower than the
    patches). Both are "Conv_0".."Conv_2" with the same parameters: checkpoints
    are interchangeable, the outputs equal up to float rounding.
    """

    hidden_sizes: Sequence[int] = (512,)
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        layers = ((32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)), (64, (3, 3), (1, 1)))
        if platforms.resolve_conv_impl(self.conv_impl, strided=True) == "patches":
            h = jnp.transpose(obs, (0, 2, 3, 1))  # [B, 84, 84, 4] in obs's dtype
            for i, (features, size, strides) in enumerate(layers):
                divisor = 255.0 if i == 0 else None  # pixels_nhwc's scaling, on the patches
                conv = PatchConv(features, size, strides, self.dtype, divisor, name=f"Conv_{i}")
                h = nn.relu(conv(h))
        else:
            h = pixels_nhwc(obs)  # [B, 84, 84, 4]
            c = compute_kwargs(self.dtype, conv=True)
            for features, size, strides in layers:
                h = nn.relu(nn.Conv(features, size, strides, "VALID", **c)(h))
        # h [B, 7, 7, 64] (20x20x32 and 9x9x64 before)
        h = h.reshape(h.shape[0], -1)  # [B, 3136]
        return self.dense_layers_and_head(h, taus, deterministic)


class ImpalaResidualBlock(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3x3 SAME convolutions of ``channels``."""

    channels: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        conv = compute_kwargs(self.dtype, conv=True)
        h = nn.Conv(self.channels, (3, 3), padding="SAME", **conv)(nn.relu(x))
        h = nn.Conv(self.channels, (3, 3), padding="SAME", **conv)(nn.relu(h))
        return x + h


class ImpalaCNN(Torso):
    """The deep residual network of IMPALA (Espeholt et al., 2018,
    arXiv:1802.01561) over ALE's stacks, without its LSTM.

    Input as ``NatureCNN``'s (pixel intensities, divided by 255 here). One
    section per entry of ``channels`` (16, 32, 32): conv 3x3 SAME, max-pool 3x3
    stride 2 SAME, two ``ImpalaResidualBlock``; 15 convolutions in all (84x84 ->
    42 -> 21 -> 11). Then ReLU, ``hidden_sizes`` dense ReLU layers (256 in the
    paper) and ``QHead``. Layers use flax's default initializers.
    """

    hidden_sizes: Sequence[int] = (256,)
    channels: Sequence[int] = (16, 32, 32)

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        h = pixels_nhwc(obs)  # [B, 84, 84, 4]
        conv = compute_kwargs(self.dtype, conv=True)
        for channels in self.channels:
            h = nn.Conv(channels, (3, 3), padding="SAME", **conv)(h)
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")  # [B, ceil(H/2), ..]
            h = ImpalaResidualBlock(channels, self.dtype)(h)
            h = ImpalaResidualBlock(channels, self.dtype)(h)
        h = nn.relu(h).reshape(h.shape[0], -1)  # [B, 11 * 11 * 32]
        return self.dense_layers_and_head(h, taus, deterministic)


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
    head: Head | None = None,
    *,
    dtype: Any = None,
    conv_impl: str = "auto",
) -> nn.Module:
    """The Q-network ``kind`` names: a torso and ``head``.

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
      head: the output head (default ``Head()``: Q-values).
      dtype: compute dtype of the layers, e.g. "bfloat16" (None or "float32":
        float32, exactly as without it); parameters and output stay float32.
      conv_impl: the MinAtar and Nature CNNs' convolutions, "auto", "patches" or
        "xla" (``MinAtarCNN``, ``NatureCNN``); the others have none to choose.
    """
    head = head or PLAIN_HEAD
    dtype = None if dtype is None or jnp.dtype(dtype) == jnp.float32 else jnp.dtype(dtype)
    if conv_impl not in platforms.CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; one of {platforms.CONV_IMPLS}")
    if kind == "auto":
        if is_channel_first_image(tuple(obs_shape)):
            kind = "nature_cnn"
        else:
            kind = "minatar_cnn" if len(obs_shape) == 3 else "mlp"
    if kind == "nature_cnn":
        return NatureCNN(num_actions, dueling=dueling, head=head, dtype=dtype, conv_impl=conv_impl)
    if kind == "impala_cnn":
        return ImpalaCNN(num_actions, dueling=dueling, head=head, dtype=dtype)
    if kind == "minatar_cnn":
        return MinAtarCNN(num_actions, tuple(hidden_sizes), dueling, head, dtype, conv_impl)
    if kind != "mlp":
        raise ValueError(f"unknown network {kind!r}; one of {NETWORKS}")
    return MLP(num_actions, tuple(hidden_sizes), dueling, head, dtype)


def head_of(network: nn.Module) -> Head:
    """The ``Head`` a network ends in; ``Head()`` (Q-values) for a network without one."""
    head = getattr(network, "head", None)
    return head if isinstance(head, Head) else PLAIN_HEAD


def forward(network: nn.Module, params, obs, *, taus=None, noise_key=None,
            deterministic: bool = False):  # fmt: skip
    """The network's raw output at ``obs [B, ...]`` (its head's values).

    A plain head is ``network.apply(params, obs)``, exactly. Args: ``taus [B, N]``
    IQN's fractions; ``noise_key`` a key for the noisy layers (a noisy head needs one
    unless ``deterministic``); ``deterministic`` the noisy layers' means.
    """
    head = head_of(network)
    args = (obs,) if taus is None else (obs, taus)
    if not head.noisy:
        return network.apply(params, *args)
    if deterministic:
        return network.apply(params, *args, deterministic=True)
    if noise_key is None:
        raise ValueError("a noisy network needs a noise key (or deterministic=True)")
    return network.apply(params, *args, rngs={NOISE_RNG: noise_key})


def q_values(network: nn.Module, params, obs, key=None, *, deterministic: bool = False):
    """Q-values ``[B, A]`` of any Q-network at ``obs [B, ...]``: the one map used by
    the actors, the evaluator and the learner's action selection.

    A plain head's output as is (``key`` unused: no random numbers); C51: the
    expectation over atoms; QR-DQN: the mean over quantiles; IQN: the mean over
    ``num_quantile_samples`` fractions drawn uniformly per observation from ``key``.
    A noisy head draws its noise from ``key``, or uses its means when
    ``deterministic`` (greedy evaluation).

    Args:
      network: a network of this module, or any module mapping obs to ``[B, A]``.
      params: its parameters.
      obs: observations ``[B, ...]``.
      key: PRNG key; needed when ``head_of(network).needs_key(deterministic)``.
      deterministic: noisy layers use their means.
    """
    head = head_of(network)
    taus, noise_key = None, None
    if head.needs_key(deterministic):
        if key is None:
            raise ValueError(f"Q-values of a {head.kind!r} head (noisy={head.noisy}) need a key")
        if head.kind == "iqn" and head.noisy and not deterministic:
            key, noise_key = jax.random.split(key)
        elif head.kind != "iqn":
            noise_key = key
        if head.kind == "iqn":
            taus = jax.random.uniform(key, (obs.shape[0], head.num_quantile_samples))
    out = forward(network, params, obs, taus=taus, noise_key=noise_key, deterministic=deterministic)
    return head.to_q_values(out)
