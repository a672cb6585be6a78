"""Each field of a ``Config`` checked on its own, in plain Python (no JAX):
the values a field may take, its range, and the few pairs of fields that must
agree. ``Config.check_fields`` runs ``check``; ``checks.validate`` runs it first.
"""

from __future__ import annotations

from dqnx import defaults
from dqnx.errors import ConfigError
from dqnx.names import CONV_IMPLS, NETWORKS

LOSSES = ("huber", "mse")
LEARNERS = defaults.LEARNERS
COMPUTE_DTYPES = ("float32", "bfloat16")
EXPLORATIONS = ("linear", "apex")
# Fields with a fixed set of values (check adds "network": names.NETWORKS).
_CHOICES = {
    "loss": LOSSES,
    "learner": LEARNERS,
    "conv_impl": CONV_IMPLS,
    "compute_dtype": COMPUTE_DTYPES,
    "exploration": EXPLORATIONS,
    "actor_schedule": ("fixed", "async"),
    "actors": ("threads", "ray"),
}


# Integer fields check checks: > 0, and >= 0.
_POSITIVE_INTS = (
    "num_seeds", "total_steps", "num_envs", "rollout_steps", "updates_per_iteration",
    "buffer_size", "batch_size", "target_update_period", "eval_episodes", "log_every",
    "keep_checkpoints", "num_processes", "n_step", "actor_sync_period", "actor_threads",
    "num_actor_processes",
    "queue_size", "num_quantiles", "num_tau_samples", "num_tau_prime_samples",
    "num_quantile_samples",
)  # fmt: skip
_NON_NEGATIVE_INTS = (
    "learning_starts", "epsilon_decay_steps", "eval_every", "checkpoint_every", "seed",
    "num_devices", "seed_group_size", "process_id", "actor_devices", "learner_devices",
    "sweep_random", "actor_lag",
)  # fmt: skip


def _within(low, high, closed_low=True):
    return lambda v: (low <= v if closed_low else low < v) and v <= high


# Per-field ranges that check checks: field -> (test, what the message says).
_BOUNDS = {
    "gamma": (_within(0.0, 1.0), "in [0, 1]"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "adam_eps": (lambda v: v >= 0, ">= 0"),
    "max_grad_norm": (lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    "tau": (_within(0.0, 1.0, closed_low=False), "in (0, 1]"),
    "huber_delta": (lambda v: v > 0, "> 0"),
    "epsilon_start": (_within(0.0, 1.0), "in [0, 1]"),
    "epsilon_end": (_within(0.0, 1.0), "in [0, 1]"),
    "eval_epsilon": (_within(0.0, 1.0), "in [0, 1]"),
    "priority_exponent": (lambda v: v >= 0, ">= 0"),
    "importance_exponent": (_within(0.0, 1.0), "in [0, 1]"),
    "apex_epsilon": (_within(0.0, 1.0), "in [0, 1]"),
    "apex_alpha": (lambda v: v >= 0, ">= 0"),
    "munchausen_tau": (lambda v: v > 0, "> 0"),
    "munchausen_alpha": (lambda v: v >= 0, ">= 0"),
    "munchausen_l0": (lambda v: v <= 0, "<= 0"),
    "noisy_sigma0": (lambda v: v > 0, "> 0 (--nonoisy for no noise)"),
}


def check(config) -> None:
    """Raises ConfigError (one line naming the flag) for the first bad field of ``config``."""

    def fail(msg: str):
        raise ConfigError(msg)

    for name in _POSITIVE_INTS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            fail(f"--{name} must be a positive integer, got {value!r}")
    for name in _NON_NEGATIVE_INTS:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 0:
            fail(f"--{name} must be a non-negative integer, got {value!r}")
    if config.total_steps >= 2**31 - config.steps_per_iteration * (config.iterations_per_chunk + 1):
        fail(f"--total_steps={config.total_steps} is too large (env steps are int32 counters)")
    if config.coordinator_address and config.process_id >= config.num_processes:
        fail(f"--process_id={config.process_id} must be < --num_processes={config.num_processes}")
    for name, (ok, bound) in _BOUNDS.items():
        value = getattr(config, name)
        if not ok(value):
            fail(f"--{name} must be {bound}, got {value}")
    for option in config.env_options:
        if "=" not in option or not option.split("=", 1)[0]:
            fail(f"--env_options takes KEY=VALUE items, got {option!r}")
    choices = dict(_CHOICES, network=NETWORKS)
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            fail(f"--{name} must be one of {allowed}, got {getattr(config, name)!r}")
    if not isinstance(config.num_atoms, int) or config.num_atoms < 2:
        fail(f"--num_atoms must be an integer >= 2, got {config.num_atoms!r}")
    if not config.v_min < config.v_max:
        fail(f"--v_min must be < --v_max, got {config.v_min} and {config.v_max}")
    if config.munchausen and config.learner not in ("dqn", "iqn"):
        fail(f"--munchausen applies to --learner=dqn or iqn, not {config.learner!r}")
    if not config.hidden_sizes or any(h <= 0 for h in config.hidden_sizes):
        fail(f"--hidden_sizes must be positive integers, got {list(config.hidden_sizes)}")
    if config.batch_size > config.buffer_size:
        fail(f"--batch_size={config.batch_size} exceeds --buffer_size={config.buffer_size}")
    if config.learning_starts < config.batch_size:
        fail(
            f"--learning_starts={config.learning_starts} is smaller than "
            f"--batch_size={config.batch_size}: the first update would sample unwritten slots"
        )
    added = config.num_envs * config.rollout_steps
    if added > config.buffer_size:
        fail(
            f"one iteration adds {added} transitions per device but --buffer_size="
            f"{config.buffer_size}"
        )
    if config.learning_starts > config.total_steps:
        fail(
            f"--learning_starts={config.learning_starts} exceeds "
            f"--total_steps={config.total_steps}: nothing would be learned"
        )
