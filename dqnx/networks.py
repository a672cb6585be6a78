"""Q-networks (flax.linen): a torso (MLP, MinAtar CNN, Atari CNNs: Nature, IMPALA)
and a head (``Head``: Q-values, optionally dueling and/or noisy; C51; QR-DQN; IQN).

Every network maps one batch of observations ``[B, *obs_shape]`` (any dtype;
cast to float32 here) to its head's output: Q-values ``[B, num_actions]`` for the
default head. The Atari networks read ALE's channel-first stacks of pixel
intensities ``[B, C, H, W]`` (uint8 in replay) and scale them to ``[0, 1]``
themselves. ``q_values`` is the one map from any of these networks (or any module
returning ``[B, A]``) to Q-values: acting, evaluation and the learner's action
selection all go through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dqnx import heads
from dqnx.distributional import categorical_q_values, quantile_midpoints
from dqnx.noisy import NOISE_RNG


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


HEADS = ("q", "categorical", "quantile", "iqn")


@dataclasses.dataclass(frozen=True)
class Head:
    """Which output head a Q-network ends in, and how its output becomes Q-values.

    The default, ``Head()``, is the plain ``QHead`` (Q-values ``[B, A]``): the
    networks' parameter trees and outputs are then those of a network without
    this attribute.

    Attributes:
      kind: "q": Q-values ``[B, A]`` (``QHead``, or ``heads.NoisyQHead`` when
        noisy); "categorical": C51 logits ``[B, A, K]`` over ``atoms``
        (``heads.DistributionalHead``); "quantile": QR-DQN values ``[B, N, A]``
        at the fixed fractions ``distributional.quantile_midpoints(N)``
        (``heads.QuantileHead``); "iqn": values ``[B, N, A]`` at fractions given
        in the call (``heads.IQNHead``).
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

    kind: str = "q"
    noisy: bool = False
    sigma0: float = 0.5
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    num_quantiles: int = 200
    num_quantile_samples: int = 32
    embedding_dim: int = 64

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
        return self.kind == "q" and not self.noisy

    def needs_key(self, deterministic: bool = False) -> bool:
        """Whether Q-values need random numbers: IQN's fractions, noisy layers' noise."""
        return self.kind == "iqn" or (self.noisy and not deterministic)

    def to_q_values(self, out: jax.Array) -> jax.Array:
        """The head's output -> Q-values ``[B, A]``: as is ("q"), the expectation
        over atoms ("categorical"), the mean over quantiles ("quantile", "iqn")."""
        if self.kind == "q":
            return out
        if self.kind == "categorical":
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
                taus=None, deterministic=None):  # fmt: skip
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
    """
    if head.is_plain:
        return QHead(num_actions, dueling)(h)  # QHead_0: the default parameter tree
    common = dict(num_actions=num_actions, dueling=dueling, hidden_sizes=hidden_sizes,
                  sigma0=head.sigma0)  # fmt: skip
    if head.kind == "q":
        return heads.NoisyQHead(**common)(h, deterministic)
    if head.kind == "categorical":
        module = heads.DistributionalHead(num_atoms=head.num_atoms, noisy=head.noisy, **common)
        return module(h, deterministic)
    if head.kind == "quantile":
        module = heads.QuantileHead(num_quantiles=head.num_quantiles, noisy=head.noisy, **common)
        return module(h, deterministic)
    if taus is None:
        taus = jnp.broadcast_to(
            quantile_midpoints(head.num_quantile_samples), (h.shape[0], head.num_quantile_samples)
        )
    module = heads.IQNHead(embedding_dim=head.embedding_dim, noisy=head.noisy, **common)
    return module(h, taus, deterministic)


class MLP(nn.Module):
    """Fully connected torso (ReLU) over flattened observations, then ``head``.

    Every torso here is called as ``(obs [B, ...], taus=None, deterministic=None)``:
    ``taus [B, N]`` are IQN's fractions, ``deterministic`` the noisy heads' switch
    to their means (see ``output_head``); other heads ignore them.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (128, 128)
    dueling: bool = False
    head: Head = PLAIN_HEAD

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        torso, head_hidden = self.head.split_hidden(self.hidden_sizes)
        h = obs.reshape(obs.shape[0], -1).astype(jnp.float32)  # [B, D]
        for size in torso:
            h = nn.relu(Dense(size)(h))
        return output_head(
            self.head, self.num_actions, self.dueling, h, hidden_sizes=head_hidden, taus=taus,
            deterministic=deterministic,
        )  # fmt: skip


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
    head: Head = PLAIN_HEAD

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        torso, head_hidden = self.head.split_hidden(self.hidden_sizes)
        # obs [B, H, W, C] goes in uncast (PatchConv builds its patches in the
        # input dtype, then promotes to float32). Named "Conv_0", the name
        # nn.Conv had here, so the parameter tree is unchanged.
        h = nn.relu(PatchConv(16, (3, 3), name="Conv_0")(obs))
        h = h.reshape(h.shape[0], -1)
        for size in torso:
            h = nn.relu(Dense(size)(h))
        return output_head(
            self.head, self.num_actions, self.dueling, h, hidden_sizes=head_hidden, taus=taus,
            deterministic=deterministic,
        )  # fmt: skip


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
    head: Head = PLAIN_HEAD

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        torso, head_hidden = self.head.split_hidden(self.hidden_sizes)
        h = pixels_nhwc(obs)  # [B, 84, 84, 4]
        h = nn.relu(nn.Conv(32, (8, 8), strides=(4, 4), padding="VALID")(h))  # [B, 20, 20, 32]
        h = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="VALID")(h))  # [B, 9, 9, 64]
        h = nn.relu(nn.Conv(64, (3, 3), strides=(1, 1), padding="VALID")(h))  # [B, 7, 7, 64]
        h = h.reshape(h.shape[0], -1)  # [B, 3136]
        for size in torso:
            h = nn.relu(Dense(size)(h))
        return output_head(
            self.head, self.num_actions, self.dueling, h, hidden_sizes=head_hidden, taus=taus,
            deterministic=deterministic,
        )  # fmt: skip


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
    head: Head = PLAIN_HEAD

    @nn.compact
    def __call__(self, obs, taus=None, deterministic=None):
        torso, head_hidden = self.head.split_hidden(self.hidden_sizes)
        h = pixels_nhwc(obs)  # [B, 84, 84, 4]
        for channels in self.channels:
            h = nn.Conv(channels, (3, 3), padding="SAME")(h)
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")  # [B, ceil(H/2), ..]
            h = ImpalaResidualBlock(channels)(h)
            h = ImpalaResidualBlock(channels)(h)
        h = nn.relu(h).reshape(h.shape[0], -1)  # [B, 11 * 11 * 32]
        for size in torso:
            h = nn.relu(Dense(size)(h))
        return output_head(
            self.head, self.num_actions, self.dueling, h, hidden_sizes=head_hidden, taus=taus,
            deterministic=deterministic,
        )  # fmt: skip


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
    head: Head | None = None,
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
    """
    head = head or PLAIN_HEAD
    if kind == "auto":
        if is_channel_first_image(tuple(obs_shape)):
            kind = "nature_cnn"
        else:
            kind = "minatar_cnn" if len(obs_shape) == 3 else "mlp"
    if kind in ("nature_cnn", "impala_cnn"):
        cls = NatureCNN if kind == "nature_cnn" else ImpalaCNN
        return cls(num_actions, dueling=dueling, head=head)
    if kind not in ("mlp", "minatar_cnn"):
        raise ValueError(f"unknown network {kind!r}; one of {NETWORKS}")
    cls = {"mlp": MLP, "minatar_cnn": MinAtarCNN}[kind]
    return cls(num_actions, tuple(hidden_sizes), dueling, head)


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
