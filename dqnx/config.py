"""The one typed configuration of a dqnx run.

Every field is a command-line flag of ``experiments/run.py`` with the same
name. ``Config.validate()`` checks everything that can be checked without
compiling anything and raises :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Literal

NETWORKS = ("auto", "mlp", "minatar_cnn")
LOSSES = ("huber", "mse")


class ConfigError(ValueError):
    """A user-facing configuration mistake (exit code 2 on the command line)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of one (possibly multi-seed) DQN run.

    Attributes:
      env_name: gymnax environment id with a discrete action space.
      seed: base seed; seed ``i`` of a sweep uses ``seed + i``.
      num_seeds: independent runs vmapped in one compiled program.
      num_devices: devices the seeds are spread over (0 = as many local devices as
        divide num_seeds; on CPU, one device per core).
      seed_group_size: seeds a device advances together inside a chunk; a device
        holding more runs its seeds group after group, each for the whole chunk,
        which keeps a group's replay and parameters in cache on CPU (0 = auto:
        all seeds at once on accelerators; on CPU, pairs for a small learner,
        one at a time for a large one: see ``train.seed_group_size``). It changes results only by
        float rounding, as the device count does.
      total_steps: environment steps per seed, prefill included.
      num_envs: environments stepped together (vmap) per seed.
      rollout_steps: env steps per environment in one iteration.
      updates_per_iteration: learner updates after each rollout.
      buffer_size: replay capacity in transitions, per seed.
      batch_size: transitions per learner update, per seed.
      learning_rate: Adam step size.
      anneal_lr: decay the step size linearly to 0 over the run's learner updates.
      adam_eps: Adam epsilon.
      max_grad_norm: global-norm gradient clipping (0 disables it).
      gamma: discount factor in [0, 1].
      learning_starts: env steps of uniformly random acting before learning.
      target_update_period: learner updates between target-network refreshes.
      tau: target refresh rate; 1.0 is a hard copy, < 1 is Polyak averaging.
      double_q: Double DQN target (van Hasselt et al., 2016); False is vanilla max.
      loss: "huber" or "mse" on the TD error.
      huber_delta: Huber loss threshold.
      network: "mlp", "minatar_cnn" or "auto" (CNN for image observations).
      hidden_sizes: MLP hidden layer sizes (the CNN's dense layers).
      dueling: dueling value/advantage head (Wang et al., 2016).
      n_step: rewards summed per target (n-step returns; 1 = one-step TD). The
        window stops at episode ends; a time limit inside it bootstraps.
      prioritized: proportional prioritized replay (Schaul et al., 2016).
      priority_exponent: alpha of prioritized replay.
      importance_exponent: beta of prioritized replay at step 0, annealed
        linearly to 1 at total_steps.
      exploration: "linear" (one epsilon schedule for all envs) or "apex"
        (env i of N acts with apex_epsilon^(1 + apex_alpha*i/(N-1)), fixed).
      apex_epsilon: base epsilon of Ape-X exploration.
      apex_alpha: exponent spread of Ape-X exploration.
      actor_sync_period: learner updates between refreshes of the actors'
        parameter copy (1 = actors always use the current parameters).
      epsilon_start: exploration rate at step 0.
      epsilon_end: exploration rate after the decay.
      epsilon_decay_steps: env steps (per seed) of linear decay.
      eval_every: env steps between greedy evaluations (0 = only at the end).
      eval_episodes: episodes per evaluation, run in parallel on device.
      eval_epsilon: exploration rate during evaluation.
      log_every: env steps per compiled chunk (one log line per chunk).
      checkpoint_every: env steps between checkpoints (0 = only at the end).
      keep_checkpoints: how many recent checkpoints to keep.
      workdir: output directory ("" = runs/<env>-<timestamp>); a workdir holding a
        checkpoint is resumed from it.
      allow_config_change: resume even if result-changing flags differ from the
        checkpoint's.
      tensorboard: write TensorBoard event files to <workdir>/tensorboard.
      wandb_project: also log to this Weights & Biases project (needs wandb).
      coordinator_address: host:port of process 0 in a multi-process run (""
        = single process, or detected on a Cloud TPU VM pod slice).
      num_processes: processes in a multi-process run.
      process_id: this process's index in a multi-process run.
    """

    env_name: str = "CartPole-v1"
    seed: int = 0
    num_seeds: int = 1
    num_devices: int = 0
    seed_group_size: int = 0
    total_steps: int = 500_000
    num_envs: int = 8
    rollout_steps: int = 1
    updates_per_iteration: int = 1
    buffer_size: int = 50_000
    batch_size: int = 64
    learning_rate: float = 3e-4
    anneal_lr: bool = False
    adam_eps: float = 1e-8
    max_grad_norm: float = 10.0
    gamma: float = 0.99
    learning_starts: int = 10_000
    target_update_period: int = 500
    tau: float = 1.0
    double_q: bool = True
    loss: Literal["huber", "mse"] = "huber"
    huber_delta: float = 1.0
    network: Literal["auto", "mlp", "minatar_cnn"] = "auto"
    hidden_sizes: tuple[int, ...] = (128, 128)
    dueling: bool = False
    n_step: int = 1
    prioritized: bool = False
    priority_exponent: float = 0.6
    importance_exponent: float = 0.4
    exploration: Literal["linear", "apex"] = "linear"
    apex_epsilon: float = 0.4
    apex_alpha: float = 7.0
    actor_sync_period: int = 1
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 100_000
    eval_every: int = 50_000
    eval_episodes: int = 10
    eval_epsilon: float = 0.0
    log_every: int = 25_000
    checkpoint_every: int = 100_000
    keep_checkpoints: int = 2
    workdir: str = ""
    allow_config_change: bool = False
    tensorboard: bool = True
    wandb_project: str = ""
    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0

    # ---- derived sizes -------------------------------------------------
    @property
    def steps_per_iteration(self) -> int:
        """Env steps per seed in one iteration."""
        return self.num_envs * self.rollout_steps

    @property
    def warmup_steps(self) -> int:
        """Env steps (per seed) that fill the n-step window before the first transition."""
        return (self.n_step - 1) * self.num_envs

    @property
    def prefill_iterations(self) -> int:
        return -(-max(0, self.learning_starts - self.warmup_steps) // self.steps_per_iteration)

    @property
    def prefill_steps(self) -> int:
        """Env steps per seed before learning starts (n-step warm-up included)."""
        return self.warmup_steps + self.prefill_iterations * self.steps_per_iteration

    @property
    def iterations_per_chunk(self) -> int:
        return max(1, self.log_every // self.steps_per_iteration)

    @property
    def train_iterations(self) -> int:
        """Learning iterations after prefill (rounded up to whole iterations)."""
        remaining = max(0, self.total_steps - self.prefill_steps)
        return -(-remaining // self.steps_per_iteration)

    @property
    def total_updates(self) -> int:
        return self.train_iterations * self.updates_per_iteration

    @property
    def replay_ratio(self) -> float:
        """Transitions sampled per transition collected."""
        return self.updates_per_iteration * self.batch_size / (self.rollout_steps * self.num_envs)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        d = dict(d)
        if "hidden_sizes" in d:
            d["hidden_sizes"] = tuple(int(h) for h in d["hidden_sizes"])
        return cls(**d)

    # ---- validation ----------------------------------------------------
    def validate(self) -> Config:
        """Checks every field; raises ConfigError with a one-line message."""
        from dqnx import envs  # local import: config stays importable without gymnax

        def fail(msg: str):
            raise ConfigError(msg)

        envs.check_env_name(self.env_name)
        positive = (
            "num_seeds",
            "total_steps",
            "num_envs",
            "rollout_steps",
            "updates_per_iteration",
            "buffer_size",
            "batch_size",
            "target_update_period",
            "eval_episodes",
            "log_every",
            "keep_checkpoints",
            "num_processes",
            "n_step",
            "actor_sync_period",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(f"--{name} must be a positive integer, got {value!r}")
        for name in (
            "learning_starts",
            "epsilon_decay_steps",
            "eval_every",
            "checkpoint_every",
            "seed",
            "num_devices",
            "seed_group_size",
            "process_id",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                fail(f"--{name} must be a non-negative integer, got {value!r}")
        if self.total_steps >= 2**31 - self.steps_per_iteration * (self.iterations_per_chunk + 1):
            fail(f"--total_steps={self.total_steps} is too large (env steps are int32 counters)")
        if self.coordinator_address and self.process_id >= self.num_processes:
            fail(f"--process_id={self.process_id} must be < --num_processes={self.num_processes}")
        if not 0.0 <= self.gamma <= 1.0:
            fail(f"--gamma must be in [0, 1], got {self.gamma}")
        if not self.learning_rate > 0:
            fail(f"--learning_rate must be > 0, got {self.learning_rate}")
        if not self.adam_eps >= 0:
            fail(f"--adam_eps must be >= 0, got {self.adam_eps}")
        if not self.max_grad_norm >= 0:
            fail(f"--max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if not 0.0 < self.tau <= 1.0:
            fail(f"--tau must be in (0, 1], got {self.tau}")
        if not self.huber_delta > 0:
            fail(f"--huber_delta must be > 0, got {self.huber_delta}")
        for name in ("epsilon_start", "epsilon_end", "eval_epsilon"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                fail(f"--{name} must be in [0, 1], got {value}")
        if not self.priority_exponent >= 0:
            fail(f"--priority_exponent must be >= 0, got {self.priority_exponent}")
        if not 0.0 <= self.importance_exponent <= 1.0:
            fail(f"--importance_exponent must be in [0, 1], got {self.importance_exponent}")
        if self.exploration not in ("linear", "apex"):
            fail(f"--exploration must be 'linear' or 'apex', got {self.exploration!r}")
        if not 0.0 <= self.apex_epsilon <= 1.0 or not self.apex_alpha >= 0:
            fail(
                f"--apex_epsilon must be in [0, 1] and --apex_alpha >= 0, got "
                f"{self.apex_epsilon}, {self.apex_alpha}"
            )
        if self.loss not in LOSSES:
            fail(f"--loss must be one of {LOSSES}, got {self.loss!r}")
        if self.network not in NETWORKS:
            fail(f"--network must be one of {NETWORKS}, got {self.network!r}")
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            fail(f"--hidden_sizes must be positive integers, got {list(self.hidden_sizes)}")
        if self.batch_size > self.buffer_size:
            fail(f"--batch_size={self.batch_size} exceeds --buffer_size={self.buffer_size}")
        if self.learning_starts < self.batch_size:
            fail(
                f"--learning_starts={self.learning_starts} is smaller than "
                f"--batch_size={self.batch_size}: the first update would sample unwritten slots"
            )
        added = self.num_envs * self.rollout_steps
        if added > self.buffer_size:
            fail(
                f"one iteration adds {added} transitions per device but --buffer_size="
                f"{self.buffer_size}"
            )
        if self.learning_starts > self.total_steps:
            fail(
                f"--learning_starts={self.learning_starts} exceeds "
                f"--total_steps={self.total_steps}: nothing would be learned"
            )
        if self.num_devices:
            import math

            import jax

            available = jax.device_count()
            if self.num_devices > available:
                fail(f"--num_devices={self.num_devices} but only {available} device(s)")
            data = self.num_devices // math.gcd(self.num_seeds, self.num_devices)
            for name in ("num_envs", "batch_size", "buffer_size"):
                if getattr(self, name) % data:
                    fail(
                        f"--num_devices={self.num_devices} splits each of the "
                        f"{self.num_seeds} seed(s) over {data} devices, but --{name}="
                        f"{getattr(self, name)} is not divisible by {data}"
                    )
        self._check_replay_fits(envs.make(self.env_name).spec)
        return self

    def replay_bytes(self, obs_shape, obs_dtype) -> int:
        """Device bytes of all seeds' replay buffers (obs, next_obs, action, reward, done)."""
        import numpy as np

        obs = int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
        return self.num_seeds * self.buffer_size * (2 * obs + 4 + 4 + 1)

    def _check_replay_fits(self, spec) -> None:
        """Estimates the replay's bytes before anything is allocated."""
        need = self.replay_bytes(spec.obs_shape, spec.obs_dtype)
        have = device_memory_bytes()
        if have and need > 0.8 * have:
            raise ConfigError(
                f"the replay buffers need {need / 2**30:.1f} GiB ({self.num_seeds} seed(s) x "
                f"--buffer_size={self.buffer_size}) but the devices have "
                f"{have / 2**30:.1f} GiB; lower --buffer_size or --num_seeds"
            )


def device_memory_bytes() -> int | None:
    """Memory the run's devices can hold: the accelerators' limits, or the host's
    available RAM for CPU devices (None if unknown)."""
    import jax

    if jax.default_backend() != "cpu":
        limits = [(d.memory_stats() or {}).get("bytes_limit") for d in jax.local_devices()]
        return sum(limits) if limits and all(limits) else None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def suggest(name: str, choices) -> str:
    """' (did you mean X?)' for the closest names, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
