"""The one place that turns a ``Config`` into building blocks.

The blocks (``envs``, ``networks``, ``learner``, ``replay``, ``prioritized``,
``nstep``, ``actor``, ``exploration``, ``losses``) take plain arguments and
never see a ``Config``; research code can call them directly. Both execution
modes and the command-line tools build them through here, so a flag means the
same thing everywhere. ``validate`` holds every check that needs more than a
field's own value: the environment, the devices and the memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import (
    env_suites,
    envs,
    exploration,
    learner,
    networks,
    objectives,
    parallel,
    prioritized,
    replay,
)
from dqnx.config import Config
from dqnx.errors import ConfigError


class Schedules(NamedTuple):
    """Step-indexed schedules, the same objects on device and on the host.

    Attributes:
      epsilon: ``env_steps -> epsilon``: a float32 scalar (linear schedule) or
        one value per environment ``[num_envs]`` (Ape-X), usable inside jit.
      beta: ``env_steps -> importance exponent`` of prioritized replay.
    """

    epsilon: Callable[[jax.Array], jax.Array]
    beta: Callable[[jax.Array], jax.Array]

    def mean_epsilon(self, env_steps: int) -> float:
        """The exploration rate at ``env_steps`` for logs (Ape-X: the mean over envs)."""
        return float(jnp.mean(self.epsilon(env_steps)))


def make_schedules(config: Config) -> Schedules:
    """The epsilon and beta schedules ``config`` describes."""
    if config.exploration == "apex":

        def epsilon(env_steps):  # fixed per environment
            del env_steps
            return exploration.apex_epsilons(
                config.num_envs, config.apex_epsilon, config.apex_alpha
            )
    else:
        epsilon = exploration.linear_schedule(
            config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps
        )
    beta = exploration.linear_schedule(config.importance_exponent, 1.0, config.total_steps)
    return Schedules(epsilon, beta)


def make_env(config: Config) -> envs.Env:
    """The compiled environment ``config.env_name`` names: a gymnax id, or a suite's
    ``LIB:ID`` (``dqnx.env_suites``) with ``--env_options``."""
    if env_suites.is_suite_env_name(config.env_name):
        return env_suites.make(config.env_name, **host_env_options(config))
    return envs.make(config.env_name, normalize_obs=config.normalize_obs)


def fields(config: Config, *names: str) -> dict:
    """``{name: config.name}``: the config fields a block takes under the same names."""
    return {name: getattr(config, name) for name in names}


HEAD_OF_LEARNER = {"dqn": "q", "c51": "categorical", "qr": "quantile", "iqn": "iqn"}


def make_head(config: Config) -> networks.Head:
    """The network head ``config.learner`` and ``config.noisy`` call for."""
    return networks.Head(
        kind=HEAD_OF_LEARNER[config.learner],
        noisy=config.noisy,
        sigma0=config.noisy_sigma0,
        **fields(config, "num_atoms", "v_min", "v_max", "num_quantiles", "num_quantile_samples"),
    )


def make_network(config: Config, obs_shape: tuple[int, ...], num_actions: int):
    """The Q-network ``config.network`` names, for this observation shape, ending in
    the head of ``config.learner`` (``make_head``)."""
    return networks.make_q_network(
        config.network,
        obs_shape,
        num_actions,
        config.hidden_sizes,
        config.dueling,
        head=make_head(config),
        dtype=config.compute_dtype,
        conv_impl=config.conv_impl,
    )


def make_optimizer(config: Config):
    """Adam with the config's step size, epsilon, clipping and annealing."""
    return learner.make_optimizer(
        config.learning_rate,
        config.adam_eps,
        config.max_grad_norm,
        config.total_updates if config.anneal_lr else 0,
    )


def make_learner(config: Config, network, axis_name: str | None = None) -> learner.Learner:
    """The learner ``config`` describes, averaging gradients over ``axis_name``."""
    munchausen = None
    if config.munchausen:
        munchausen = objectives.Munchausen(
            config.munchausen_tau, config.munchausen_alpha, config.munchausen_l0
        )
    return learner.make_learner(
        network,
        make_optimizer(config),
        axis_name=axis_name,
        munchausen=munchausen,
        **fields(
            config,
            "gamma",
            "double_q",
            "loss",
            "huber_delta",
            "target_update_period",
            "tau",
            "num_tau_samples",
            "num_tau_prime_samples",
        ),
    )


def make_buffer(config: Config, capacity: int, add_batch_size: int):
    """Uniform or prioritized replay of ``capacity`` items, added ``add_batch_size`` at a time."""
    if config.prioritized:
        return prioritized.prioritized_replay(
            capacity, add_batch_size=add_batch_size, priority_exponent=config.priority_exponent
        )
    return replay.uniform_replay(capacity, add_batch_size=add_batch_size)


def frame_rows(config: Config, num_groups: int, envs_per_group: int) -> int:
    """Ring rows per stream group of a frame replay of ``config.buffer_size``
    transitions (a multiple of ``rollout_steps``, so writes never wrap)."""
    rows = config.buffer_size // (num_groups * envs_per_group)
    return rows - rows % config.rollout_steps


def make_frame_buffer(config: Config, num_groups: int, envs_per_group: int):
    """Frame-deduplicated replay (uniform or prioritized) for ``num_groups`` actor
    threads of ``envs_per_group`` environments each."""
    from dqnx import frame_replay

    kwargs = dict(
        n_step=config.n_step,
        gamma=config.gamma,
        block_size=config.rollout_steps,
    )
    rows = frame_rows(config, num_groups, envs_per_group)
    if config.prioritized:
        return frame_replay.prioritized_frame_replay(
            num_groups, envs_per_group, rows, priority_exponent=config.priority_exponent, **kwargs
        )
    return frame_replay.frame_replay(num_groups, envs_per_group, rows, **kwargs)


def replay_seed_axes(config: Config):
    """vmap axes over seeds of the replay state ``make_buffer`` builds."""
    return prioritized.PRIORITIZED_SEED_AXES if config.prioritized else replay.REPLAY_SEED_AXES


def choose_layout(config: Config) -> parallel.Layout:
    """How a run of ``config`` is spread over devices (``parallel.choose_layout``)."""
    return parallel.choose_layout(
        config.num_seeds, config.num_devices, config.num_envs, config.batch_size, config.buffer_size
    )


def replay_bytes(config: Config, obs_shape, obs_dtype) -> int:
    """Device bytes of all seeds' replay buffers (obs, next_obs, action, reward, done)."""
    obs = int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
    return config.num_seeds * config.buffer_size * (2 * obs + 4 + 4 + 1)


def checkpoint_bytes(config: Config) -> int:
    """Bytes one checkpoint of a run of ``config`` holds before compression,
    estimated before anything compiles: all seeds' replay buffers
    (``replay_bytes``, plus the sum tree of prioritized replay), the parameters
    four times (online, target and Adam's two moments), the environments'
    observations with their n-step windows, and 1 MiB for orbax's metadata files."""
    if uses_host_actors(config):
        from dqnx import host_envs

        spec = host_envs.host_env_spec(config.env_name, **host_env_options(config))
    else:
        spec = make_env(config).spec
    obs_shape = tuple(spec.obs_shape)
    network = make_network(config, obs_shape, spec.num_actions)
    example = jax.ShapeDtypeStruct((1, *obs_shape), spec.obs_dtype)
    shapes = jax.eval_shape(network.init, jax.random.key(0), example)
    params = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))
    obs = int(np.prod(obs_shape)) * np.dtype(spec.obs_dtype).itemsize
    priorities = 2 * config.buffer_size * 4 if config.prioritized else 0
    env_states = config.num_envs * (config.n_step + 1) * obs
    per_seed = 4 * params + priorities + env_states
    replay = replay_bytes(config, obs_shape, spec.obs_dtype)
    return replay + config.num_seeds * per_seed + 2**20


def device_memory_bytes() -> int | None:
    """Memory the run's devices can hold: the accelerators' limits, or the host's
    available RAM for CPU devices (None if unknown)."""
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


def check_replay_fits(config: Config, obs_shape, obs_dtype, num_runs: int = 0) -> None:
    """Raises ConfigError when the replay buffers cannot fit in device memory
    (``num_runs``: a sweep's program of that many runs)."""
    if num_runs:
        config = config.replace(num_seeds=num_runs)
    need = replay_bytes(config, obs_shape, obs_dtype)
    have = device_memory_bytes()
    if not have or need <= 0.8 * have:
        return
    if num_runs:
        fit = int(0.8 * have // replay_bytes(config.replace(num_seeds=1), obs_shape, obs_dtype))
        raise ConfigError(
            f"the sweep's replay buffers need {need / 2**30:.1f} GiB ({num_runs} runs x "
            f"--buffer_size={config.buffer_size}) but the devices have {have / 2**30:.1f} GiB: "
            f"{fit} runs fit; sweep fewer values or seeds, or lower --buffer_size"
        )
    raise ConfigError(
        f"the replay buffers need {need / 2**30:.1f} GiB ({config.num_seeds} seed(s) x "
        f"--buffer_size={config.buffer_size}) but the devices have "
        f"{have / 2**30:.1f} GiB; lower --buffer_size or --num_seeds"
    )


def uses_host_actors(config: Config) -> bool:
    """True when ``config.env_name`` names a host environment (``LIB:ID``, a LIB
    that is not one of the compiled suites of ``dqnx.env_suites``)."""
    return ":" in config.env_name and not env_suites.is_suite_env_name(config.env_name)


def _option_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def host_env_options(config: Config) -> dict:
    """``--env_options`` as keyword arguments (numbers and true/false parsed)."""
    options = {}
    for item in config.env_options:
        key, _, value = item.partition("=")
        options[key.strip()] = _option_value(value.strip())
    return options


def host_devices(config: Config) -> tuple[list, list]:
    """(this process's actor devices, the learner devices of all processes) of a
    host-actor run. Every process splits its own local devices the same way; the
    learner spans every process's learner devices, process-major.

    Raises:
      ConfigError: more devices asked for than exist, processes that split their
        devices differently, or sizes the learner devices do not divide.
    """
    by_process = parallel.devices_by_process()
    me = jax.process_index()
    try:
        actors, learners = _split_devices(config, by_process[me])
        mine, error = [len(actors), len(learners), config.actor_threads], None
    except ConfigError as e:
        mine, error = [-1, -1, -1], e
    if len(by_process) > 1:  # every process sees every split, so all raise together
        counts = parallel.gather_processes([len(by_process[me]), *mine])
        if error is None and (counts != counts[0]).any():  # (orbax needs equal counts too)
            found = "; ".join(
                f"process {p}: {d} devices, "
                + ("no valid split" if a < 0 else f"{a} actor + {n} learner x {t} thread(s)")
                for p, (d, a, n, t) in enumerate(counts.tolist())
            )
            error = ConfigError(
                "host actors need the same devices and split on every process, but "
                f"{found}; give each process as many devices and the same flags"
            )
    if error is not None:
        raise error
    a, n = mine[:2]  # each process's learner devices, as it splits its own
    learners = [d for ds in by_process for d in ds[(a if len(ds) >= a + n else 0) :][:n]]
    where = f"{len(learners)} devices"
    if len(by_process) > 1:
        where += f" of {len(by_process)} processes"
    for name in ("batch_size", "buffer_size", "num_envs"):
        if getattr(config, name) % len(learners):
            raise ConfigError(
                f"the learner is split over {where}, but --{name}="
                f"{getattr(config, name)} is not divisible by {len(learners)}"
            )
    return actors, learners


def _split_devices(config: Config, devices: list) -> tuple[list, list]:
    """(actor devices, learner devices) of this process's ``devices``."""
    n_actor = config.actor_devices or 1
    if len(devices) == 1 and not config.actor_devices and config.learner_devices <= 1:
        return devices, devices  # one device: actors and learner share it
    n_learner = config.learner_devices or max(1, len(devices) - n_actor)
    if n_actor + n_learner > len(devices):
        raise ConfigError(
            f"--actor_devices={n_actor} and --learner_devices={n_learner} need "
            f"{n_actor + n_learner} devices, but this process has {len(devices)}"
        )
    return devices[:n_actor], devices[n_actor : n_actor + n_learner]


def _validate_host(config: Config) -> None:
    from dqnx import host_envs

    host_envs.check_host_env_name(config.env_name)
    if config.normalize_obs:
        raise ConfigError(
            "--normalize_obs applies to compiled (gymnax) environments only; "
            f"{config.env_name} runs on host actors"
        )
    if config.num_seeds != 1:
        raise ConfigError(
            f"--num_seeds={config.num_seeds}: host actors train one seed per process (each "
            "seed's environments need their own CPU cores); run one process per --seed"
        )
    processes = jax.process_count()
    if config.frame_replay and processes > 1:
        raise ConfigError("--frame_replay runs the learner on one device, in one process")
    actor_devices, _ = host_devices(config)
    threads = config.actor_threads * len(actor_devices)
    if config.actors == "ray":
        _validate_ray(config, processes)
        threads = config.num_actor_processes
    elif config.num_envs % (threads * processes):
        raise ConfigError(
            f"--num_envs={config.num_envs} must be divisible by the {threads * processes} actor "
            f"thread(s) (--actor_threads={config.actor_threads} x {len(actor_devices)} actor "
            f"device(s)" + (f" x {processes} processes)" if processes > 1 else ")")
        )
    spec = host_envs.host_env_spec(config.env_name, **host_env_options(config))
    if config.frame_replay:
        _check_frame_replay(config, spec, threads)
        return
    check_replay_fits(config, spec.obs_shape, spec.obs_dtype)


def _validate_ray(config: Config, processes: int) -> None:
    from dqnx.host_actors import ray_setup

    ray_setup.import_ray(local=not config.ray_address)
    if processes > 1:
        raise ConfigError("--actors=ray runs one learner process (actors come from Ray)")
    if config.actor_schedule != "fixed":
        raise ConfigError("--actors=ray needs --actor_schedule=fixed")
    if config.num_envs % config.num_actor_processes:
        raise ConfigError(
            f"--num_envs={config.num_envs} must be divisible by "
            f"--num_actor_processes={config.num_actor_processes}"
        )
    ray_setup.check_address(config.ray_address)


def _check_frame_replay(config: Config, spec, threads: int) -> None:
    shape = spec.obs_shape
    if len(shape) != 3 or np.dtype(spec.obs_dtype) != np.uint8 or shape[0] > 16:
        raise ConfigError(
            f"--frame_replay needs stacked uint8 frames [stack, H, W]; {config.env_name} "
            f"shows {np.dtype(spec.obs_dtype).name}{list(shape)}"
        )
    if config.learner_devices > 1:
        raise ConfigError("--frame_replay runs the learner on one device (--learner_devices=1)")
    rows = frame_rows(config, threads, config.num_envs // threads)
    if rows < config.n_step + shape[0] + config.rollout_steps:
        raise ConfigError(
            f"--buffer_size={config.buffer_size} leaves {rows} ring rows per actor thread; "
            f"frame replay needs at least {config.n_step + shape[0] + config.rollout_steps}"
        )
    need = config.buffer_size * (shape[1] * shape[2] * 1.07 + 32)
    have = device_memory_bytes()
    if have and need > 0.8 * have:
        raise ConfigError(
            f"the frame replay needs {need / 2**30:.1f} GiB (--buffer_size="
            f"{config.buffer_size}) but the devices have {have / 2**30:.1f} GiB"
        )


def validate(config: Config) -> Config:
    """Every check before anything compiles: each field (``Config.validate``),
    the environment name, the device layout and the replay's memory.

    Raises:
      ConfigError: one line naming the flag and what is wrong.
    """
    config.validate()
    if config.sweep or config.sweep_random:
        return _validate_sweep(config)
    if uses_host_actors(config):
        _validate_host(config)
        return config
    _check_env_name(config)
    choose_layout(config)
    spec = make_env(config).spec
    check_replay_fits(config, spec.obs_shape, spec.obs_dtype)
    return config


def _check_env_name(config: Config) -> None:
    """The compiled environment's name, options and masks in the command line's
    words (the flag named)."""
    name = config.env_name
    suite = env_suites.is_suite_env_name(name)
    if config.env_options and not suite:
        raise ConfigError("--env_options applies to LIB:ID environments only")
    if suite and config.normalize_obs:
        raise ConfigError(f"--normalize_obs applies to gymnax environments, not {name}")
    try:
        if suite:
            env_suites.check_env_name(name, **host_env_options(config))
        else:
            envs.check_env_name(name)
    except ConfigError as e:
        raise ConfigError(f"--env_name={name}: {e}") from None
    if suite and config.munchausen and make_env(config).legal is not None:
        raise ConfigError(
            f"--munchausen: {name} has a legal-action mask, which Munchausen targets "
            "(a softmax over all actions) do not take"
        )


def _validate_sweep(config: Config) -> Config:
    """``validate`` for a sweep: its items and every configuration (``sweep.plan``),
    then each program's layout and the replay of all its runs."""
    from dqnx import sweep

    plan = sweep.plan(config)
    _check_env_name(config)
    spec = make_env(config).spec
    for program in plan.programs:
        choose_layout(program.config.replace(num_seeds=len(program.runs)))
        check_replay_fits(program.config, spec.obs_shape, spec.obs_dtype, len(program.runs))
    return config
