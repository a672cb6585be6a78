"""The one typed configuration of a dqnx run.

Every field is a command-line flag of ``experiments/run.py`` with the same
name. ``Config.check_fields()`` checks each field on its own and raises
:class:`ConfigError` with a one-line message; the checks that need the
environment, the devices or the memory live in ``dqnx.checks.validate``, the
one module that turns a ``Config`` into building blocks.

Fields marked ``neutral(...)`` change only I/O, reporting or the device layout,
not what a run computes (beyond float rounding): a run may resume with them
changed.
"""

from __future__ import annotations

import dataclasses

from dqnx import defaults, field_checks
from dqnx.errors import ConfigError, suggest

__all__ = ["Config", "ConfigError", "suggest"]


def neutral(default):
    """A result-neutral field: resuming with another value is allowed."""
    return dataclasses.field(default=default, metadata={"result_neutral": True})


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of one (possibly multi-seed) DQN run.

    Attributes:
      env_name: a gymnax environment id with a discrete action space or a JAX
        suite's ``LIB:ID`` (``craftax:``, ``navix:``, ``jumanji:``, ``pgx:``; see
        ``dqnx.env_suites``), which train in the compiled mode, or a host
        environment ``LIB:ID`` (``gymnasium:CartPole-v1``, ``minatar:breakout``,
        ``ale:pong``), which trains with host actors.
      env_options: ``LIB:ID`` environments only: ``KEY=VALUE`` options of the
        environment (e.g. ``sticky_action_prob=0.0``, ``max_episode_steps=1000``,
        ``protocol=nature``; ``obs_keys=grid`` for Jumanji, ``max_steps=100`` for
        Navix).
      normalize_obs: compiled (gymnax) environments with vector observations:
        map each observation component with finite bounds in the env's
        observation space linearly onto [-1, 1] (MountainCar: position in
        [-1.2, 0.6], velocity in [-0.07, 0.07]); unbounded components pass as
        they are. The agent, the replay and evaluation all see the scaled values.
      seed: base seed; seed ``i`` of a sweep uses ``seed + i``.
      num_seeds: independent runs vmapped in one compiled program.
      num_devices: devices the seeds are spread over (0 = as many local devices as
        divide num_seeds; on CPU, one device per core).
      seed_group_size: seeds a device advances together inside a chunk; a device
        holding more runs its seeds group after group, each for the whole chunk,
        which keeps a group's replay and parameters in cache on CPU (0 = auto:
        all seeds at once on accelerators; on CPU, pairs for a small learner,
        one at a time for a large one: see ``compiled.seed_group_size``). It changes results only by
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
      network: "mlp", "minatar_cnn", "nature_cnn", "impala_cnn" or "auto" (the
        Nature CNN for channel-first image stacks such as Atari's, the MinAtar CNN
        for other [H, W, C] inputs, else the MLP).
      hidden_sizes: MLP hidden layer sizes (the CNN's dense layers).
      dueling: dueling value/advantage head (Wang et al., 2016).
      conv_impl: the MinAtar and Nature CNNs' convolutions: "patches" (one matmul
        over im2col patches), "xla" (flax's nn.Conv) or "auto" (``dqnx.platforms``:
        MinAtar patches on CPU, xla on GPU/TPU; Nature xla, which measured no
        slower on XLA:CPU). Same parameters either way.
      compute_dtype: "float32" or "bfloat16": the networks' matmuls and
        convolutions in that dtype (float32 accumulation); parameters, optimizer
        state, loss and Q-values stay float32, replay keeps the observation dtype.
      learner: "dqn" (Q-values, a TD loss), "c51" (categorical return
        distribution, Bellemare et al., 2017), "qr" (QR-DQN quantiles, Dabney et
        al., 2018a) or "iqn" (implicit quantiles, Dabney et al., 2018b). Prioritized
        replay takes each learner's own per-example signal: |TD error| (dqn), the
        cross-entropy (c51), the quantile loss (qr, iqn). --double_q picks the next
        action with the online network for every learner; --loss applies to dqn
        only; qr and iqn use the quantile Huber loss with kappa = huber_delta.
      num_atoms: c51: atoms of the fixed support.
      v_min: c51: lowest atom of the support.
      v_max: c51: highest atom of the support.
      num_quantiles: qr: quantiles per action (N).
      num_tau_samples: iqn: fractions sampled per example for the online
        network's quantiles in the loss (N).
      num_tau_prime_samples: iqn: fractions sampled per example for the target
        network's quantiles in the loss (N').
      num_quantile_samples: iqn: fractions sampled per observation to estimate
        Q-values for acting and for picking the next action (K).
      munchausen: Munchausen targets (Vieillard et al., 2020) for --learner=dqn
        (M-DQN) or iqn (M-IQN): a scaled log-policy bonus and a soft value, under
        the target network's softmax policy; --double_q does not apply.
      munchausen_tau: Munchausen: softmax temperature (entropy scale), > 0.
      munchausen_alpha: Munchausen: scale of the log-policy bonus.
      munchausen_l0: Munchausen: lower clip of the bonus tau * log pi, <= 0.
      noisy: noisy nets (Fortunato et al., 2018): the head's layers add learned
        factorised Gaussian noise, drawn afresh per learner update (online and
        target passes apart) and per acting step; greedy evaluation uses the
        means. Exploration can then be left to the noise (--epsilon_start=0
        --epsilon_end=0).
      noisy_sigma0: noisy nets: initial noise scale (sigma starts at sigma0/sqrt(fan_in)).
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
        parameter copy (1 = a new copy after every update).
      actor_schedule: host actors: "fixed" (iteration i acts with the parameters
        published after iteration i - 1 - actor_lag, waiting for them; batches
        are ingested in actor order: the same run whatever the load) or "async"
        (the newest published parameters, batches as they arrive).
      actors: host actors: "threads" (in this process) or "ray" (Ray actor
        processes, on this machine or a Ray cluster: pip install 'dqnx[ray]').
      num_actor_processes: --actors=ray: actor processes, each stepping
        num_envs / num_actor_processes environments (as that many threads would).
      ray_address: --actors=ray: "" starts a local Ray instance for the run;
        "auto" or HOST:PORT joins a running cluster.
      actor_lag: host actors, fixed schedule: iterations the acting parameters
        trail the learner by, beyond the one it is training on (0: actors wait
        for each iteration's parameters, no overlap).
      actor_threads: host actors: threads per actor device, each stepping its
        own num_envs / (actor_threads x actor devices x processes) environments.
      actor_devices: host actors: local devices that run the actors' policy
        (0 = the first device, shared with the learner on a single device).
      learner_devices: host actors: local devices the learner is data-parallel
        over (0 = every device not running actors, or the one device there is).
      clip_rewards: clip rewards to [-1, 1] for the learner's targets (logged
        returns stay unclipped); host actors only.
      frame_replay: host actors with stacked-frame observations (Atari): replay
        stores each step's newest frame once and rebuilds the stacks and the
        n-step returns when sampling (``dqnx.frame_replay``).
      queue_size: host actors: transition batches the queue between actors and
        learner holds; full, it makes the actors wait (back-pressure).
      epsilon_start: exploration rate at step 0.
      epsilon_end: exploration rate after the decay.
      epsilon_decay_steps: env steps (per seed) of linear decay.
      eval_every: env steps between greedy evaluations (0 = only at the end).
      eval_episodes: episodes per evaluation, run in parallel on device.
      eval_epsilon: exploration rate during evaluation.
      log_every: env steps per compiled chunk (one log line per chunk).
      checkpoint_every: env steps between checkpoints (0 = only at the end).
      keep_checkpoints: how many recent checkpoints to keep.
      restore_step: resume from the checkpoint of this env step instead of the
        newest usable one (-1); newer checkpoints are moved aside
        (``<step>.skipped``). A rerun that keeps the flag goes back to it again.
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
      sweep: ``FIELD=V1,V2,...`` (the grid: the cross product of the items) or
        ``FIELD=LOW:HIGH`` (a range, with --sweep_random): a hyperparameter sweep,
        every configuration with every seed, as runs vmapped like seeds
        (``dqnx.sweep``). Repeatable.
      sweep_random: draw this many configurations from the --sweep ranges and
        lists (log-uniform for rates and sizes; fixed by --seed) instead of the grid.
    """

    env_name: str = "CartPole-v1"
    env_options: tuple[str, ...] = ()
    normalize_obs: bool = False
    seed: int = 0
    num_seeds: int = 1
    num_devices: int = neutral(0)
    seed_group_size: int = neutral(0)
    total_steps: int = neutral(500_000)
    num_envs: int = 8
    rollout_steps: int = 1
    updates_per_iteration: int = 1
    buffer_size: int = 50_000
    batch_size: int = 64
    # The optimizer and the Q-learning target.
    learning_rate: float = 3e-4
    anneal_lr: bool = False
    adam_eps: float = 1e-8
    max_grad_norm: float = 10.0
    gamma: float = 0.99
    learning_starts: int = 10_000
    target_update_period: int = 500
    tau: float = 1.0
    double_q: bool = True
    loss: str = "huber"
    huber_delta: float = defaults.HUBER_DELTA
    # The network and its head.
    network: str = "auto"
    hidden_sizes: tuple[int, ...] = (128, 128)
    dueling: bool = False
    conv_impl: str = neutral("auto")
    compute_dtype: str = "float32"
    # Distributional learners: C51 (atoms), QR-DQN (quantiles), IQN (sampled fractions).
    learner: str = "dqn"
    num_atoms: int = defaults.C51.num_atoms
    v_min: float = defaults.C51.v_min
    v_max: float = defaults.C51.v_max
    num_quantiles: int = defaults.QR.num_quantiles
    num_tau_samples: int = defaults.IQN.num_tau_samples
    num_tau_prime_samples: int = defaults.IQN.num_tau_prime_samples
    num_quantile_samples: int = defaults.IQN.num_quantile_samples
    # Munchausen DQN, noisy nets, n-step returns, prioritized replay.
    munchausen: bool = False
    munchausen_tau: float = defaults.Munchausen.tau
    munchausen_alpha: float = defaults.Munchausen.alpha
    munchausen_l0: float = defaults.Munchausen.l0
    noisy: bool = False
    noisy_sigma0: float = defaults.Noisy.sigma0
    n_step: int = 1
    prioritized: bool = False
    priority_exponent: float = 0.6
    importance_exponent: float = 0.4
    # Exploration.
    exploration: str = "linear"
    apex_epsilon: float = 0.4
    apex_alpha: float = 7.0
    actor_sync_period: int = 1
    actor_schedule: str = "fixed"
    actors: str = "threads"
    num_actor_processes: int = 2
    ray_address: str = neutral("")
    actor_lag: int = 1
    actor_threads: int = 2
    actor_devices: int = neutral(0)
    learner_devices: int = neutral(0)
    queue_size: int = neutral(8)
    clip_rewards: bool = False
    frame_replay: bool = False
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 100_000
    eval_every: int = neutral(50_000)
    eval_episodes: int = neutral(10)
    eval_epsilon: float = neutral(0.0)
    log_every: int = neutral(25_000)
    checkpoint_every: int = neutral(100_000)
    keep_checkpoints: int = neutral(2)
    restore_step: int = neutral(-1)
    workdir: str = neutral("")
    allow_config_change: bool = neutral(False)
    tensorboard: bool = neutral(True)
    wandb_project: str = neutral("")
    coordinator_address: str = neutral("")
    num_processes: int = neutral(1)
    process_id: int = neutral(0)
    sweep: tuple[str, ...] = ()
    sweep_random: int = 0

    # ---- derived sizes -------------------------------------------------
    @property
    def quantile_loss(self) -> bool:
        """The learner trains with the quantile Huber loss (QR-DQN, IQN): its hot
        programs take ``xla.program_options(quantile_loss=True)``."""
        return self.learner in ("qr", "iqn")

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

    @classmethod
    def result_neutral_fields(cls, anneal_lr: bool = False) -> frozenset[str]:
        """Fields that may change on resume (``total_steps`` not when the
        learning rate anneals over it)."""
        names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("result_neutral")}
        if anneal_lr:
            names.discard("total_steps")
        return frozenset(names)

    def drift(self, saved: dict) -> list[str]:
        """Result-changing fields whose value differs between ``saved`` (a
        checkpoint's config dict) and this config."""
        neutral_names = self.result_neutral_fields(self.anneal_lr)
        current = self.to_dict()
        # A field newer than the checkpoint counts as saved with its default.
        defaults = Config().to_dict()
        return sorted(
            k for k in current if k not in neutral_names and saved.get(k, defaults[k]) != current[k]
        )

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["env_options"] = list(self.env_options)
        d["sweep"] = list(self.sweep)
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
        if "env_options" in d:
            d["env_options"] = tuple(str(o) for o in d["env_options"])
        if "sweep" in d:
            d["sweep"] = tuple(str(o) for o in d["sweep"])
        return cls(**d)

    # ---- validation ----------------------------------------------------
    def check_fields(self) -> Config:
        """Checks every field on its own (``field_checks.check``); raises
        ConfigError with a one-line message. The environment name, device counts
        and memory are checked by ``dqnx.checks.validate``, which calls this first."""
        field_checks.check(self)
        return self
