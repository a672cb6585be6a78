"""Q-networks (flax.linen): MLP, MinAtar CNN, optional dueling head.

Every network maps one batch of observations ``[B, *obs_shape]`` (any dtype;
cast to float32 here) to Q-values ``[B, num_actions]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dqnx.config import Config


class QHead(nn.Module):
    """Linear Q head, or the dueling head of Wang et al. (2016),
    Q = V + A - mean(A) (arXiv:1511.06581)."""

    num_actions: int
    dueling: bool = False

    @nn.compact
    def __call__(self, h):
        if not self.dueling:
            return nn.Dense(self.num_actions, name="q")(h)
        value = nn.Dense(1, name="value")(h)  # [B, 1]
        adv = nn.Dense(self.num_actions, name="advantage")(h)  # [B, A]
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
            h = nn.relu(nn.Dense(size)(h))
        return QHead(self.num_actions, self.dueling)(h)


class MinAtarCNN(nn.Module):
    """The MinAtar network (Young & Tian, 2019, arXiv:1903.03176): one 3x3
    convolution with 16 channels, then dense layers."""

    num_actions: int
    hidden_sizes: Sequence[int] = (128,)
    dueling: bool = False

    @nn.compact
    def __call__(self, obs):
        h = obs.astype(jnp.float32)  # [B, H, W, C]
        h = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(h))
        h = h.reshape(h.shape[0], -1)
        for size in self.hidden_sizes:
            h = nn.relu(nn.Dense(size)(h))
        return QHead(self.num_actions, self.dueling)(h)


def make_q_network(config: Config, obs_shape: tuple[int, ...], num_actions: int) -> nn.Module:
    """The network named by ``config.network`` ("auto": CNN for [H, W, C] inputs)."""
    kind = config.network
    if kind == "auto":
        kind = "minatar_cnn" if len(obs_shape) == 3 else "mlp"
    cls = {"mlp": MLP, "minatar_cnn": MinAtarCNN}[kind]
    return cls(num_actions, tuple(config.hidden_sizes), config.dueling)
