"""Every choice dqnx makes from the platform it runs on, in one place.

Several of dqnx's speed-ups were found (and measured, docs/performance.md) on a
2-core CPU and are CPU-specific; on a GPU or TPU they would cost instead of
help, or do nothing. Each is a field of ``PlatformChoices``, and every site
that makes one of these choices asks ``choices_for(platform)`` (``current()``
for JAX's default backend) instead of testing the backend itself:

==============================  ======================  ===================
field                           cpu                     gpu, tpu
==============================  ======================  ===================
``unroll_threefry``             True (``xla``)          False
``fast_compile_cold``           True (``xla``)          False
``cache_sized_seed_groups``     True (``seed_groups``)  False: all at once
``conv_impl``                   "patches"               "xla" (``nn.Conv``)
``strided_conv_impl``           "xla"                   "xla"
``split_seed_data``             False (``parallel``)    True
``quantile_native_reductions``  True (``xla``)          False
==============================  ======================  ===================

``DQNX_XLA_CPU_TUNING=0`` turns the XLA:CPU compile cho  ices (``unroll_threefry``,
``fast_compile_cold``, ``quantile_native_reductions``)  off on CPU (A/B timings). The
module is named ``platforms`` so that it never shadows the standard library's
``platform``. It imports nothing of dqnx and no ``Confi  g``: building blocks may
ask it.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from dqnx.names import CONV_IMPLS

PLATFORMS = ("cpu", "gpu", "tpu")
# jax.Device.platform and a few backend names -> the platform JAX's default_backend names.
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


@dataclasses.dataclass(frozen=True)
class PlatformChoices:
    """What dqnx does on one platform.

    Attributes:
      platform: "cpu", "gpu" or "tpu".
      unroll_threefry: lower threefry random bits as one unrolled function, as
        the accelerators already do, instead of XLA:CPU's 5-trip while loop
        (``xla.unroll_threefry_on_cpu``).
      fast_compile_cold: compile the programs whose speed hardly matters (init,
        prefill, evaluate) with XLA:CPU's legacy fusion emitters and a lower
        LLVM level (``xla.program_options``).
      cache_sized_seed_groups: ``--seed_group_size=0`` advances a device's
        seeds in small groups (pairs, or one at a time for a large learner) so
        one group's replay and parameters stay in a core's cache; off, a
        device advances all its seeds at once (``compiled.seed_group_size``).
      conv_impl: the layer ``--conv_impl=auto`` means for the MinAtar network's
        convolution: "patches" (``layers.PatchConv``, one matmul over im2col
        patches, ~3x faster on XLA:CPU) or "xla" (``flax.linen.Conv``, the
        platform's own convolution). Both have the same parameters.
      strided_conv_impl: the same for the Nature CNN's strided convolutions
        (8x8/4, 4x4/2, 3x3/1 over 84x84 stacks): "xla" on CPU too, where
        XLA:CPU's own convolutions measured as fast or faster than the patches
        (``scripts/bench.py --flagfile=experiments/configs/atari_dqn.flags
        --conv_impl=...``, docs/performance.md).
      split_seed_data: ``--num_devices=0`` splits each seed's data over the
        devices the seeds leave idle (a gradient all-reduce between XLA CPU
        devices costs more than half a batch saves; ``parallel.choose_layout``).
      quantile_native_reductions: compile the hot programs of the quantile
        learners (QR-DQN, IQN) with XLA's own reductions instead of YNNPACK
        reduce fusions: the quantile Huber loss's [N, N'] pairwise terms took
        ~7x longer in them (``xla.program_options``).
    """

    platform: str
    unroll_threefry: bool
    fast_compile_cold: bool
    cache_sized_seed_groups: bool
    conv_impl: str
    strided_conv_impl: str
    split_seed_data: bool
    quantile_native_reductions: bool


def tuning_enabled() -> bool:
    """False when ``DQNX_XLA_CPU_TUNING`` turns the XLA:CPU compile choices off."""
    return os.environ.get("DQNX_XLA_CPU_TUNING", "1") not in ("0", "false", "False", "")


def normalize(platform: str) -> str:
    """ "cuda"/"rocm" -> "gpu"; lower case."""
    platform = platform.lower()
    return _ALIASES.get(platform, platform)


@functools.cache
def _choices(platform: str, tuning: bool) -> PlatformChoices:
    if platform == "cpu":
        return PlatformChoices(
            "cpu",
            unroll_threefry=tuning,
            fast_compile_cold=tuning,
            cache_sized_seed_groups=True,
            conv_impl="patches",
            strided_conv_impl="xla",
            split_seed_data=False,
            quantile_native_reductions=tuning,
        )
    # GPU, TPU and any other accelerator: XLA's own lowerings and layers.
    return PlatformChoices(
        platform,
        unroll_threefry=False,
        fast_compile_cold=False,
        cache_sized_seed_groups=False,
        conv_impl="xla",
        strided_conv_impl="xla",
        split_seed_data=True,
        quantile_native_reductions=False,
    )


def choices_for(platform: str, *, tuning: bool | None = None) -> PlatformChoices:
    """The choices on ``platform`` ("cpu", "gpu", "tpu"; "cuda" and "rocm" are
    "gpu"). ``tuning`` (default: ``tuning_enabled()``) gates the XLA:CPU
    compile choices."""
    return _choices(normalize(platform), tuning_enabled() if tuning is None else tuning)


def current() -> PlatformChoices:
    """``choices_for`` JAX's default backend."""
    import jax

    return choices_for(jax.default_backend())


def resolve_conv_impl(conv_impl: str, platform: str | None = None, *, strided: bool = False) -> str:
    """ "patches" or "xla": ``conv_impl`` itself, or for "auto" the choice of
    ``platform`` (default: JAX's default backend), ``strided_conv_impl`` for a
    network of strided convolutions (the Nature CNN)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; one of {CONV_IMPLS}")
    if conv_impl != "auto":
        return conv_impl
    choices = choices_for(platform) if platform else current()
    return choices.strided_conv_impl if strided else choices.conv_impl
