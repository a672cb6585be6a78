"""Every check of a run's settings before anything compiles, and the resource
probes they use (device memory, checkpoint size).

``validate(config)`` is the one public validation: each field on its own
(``Config.check_fields``, plain Python), then what needs more: the environment
name, the device layout, the memory of the replay buffers, a sweep's programs.
Errors are one-line ``ConfigError``s in the command line's words (the flag named).
"""

from __future__ import annotations

import jax
import numpy as np

from dqnx import builder, env_suites, envs
from dqnx.config import Config
from dqnx.errors import ConfigError


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
    if builder.uses_host_actors(config):
        from dqnx import host_envs

        spec = host_envs.host_env_spec(config.env_name, **builder.host_env_options(config))
    else:
        spec = builder.make_env(config).spec
    obs_shape = tuple(spec.obs_shape)
    network = builder.make_network(config, obs_shape, spec.num_actions)
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
    actor_devices, _ = builder.host_devices(config)
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
    spec = host_envs.host_env_spec(config.env_name, **builder.host_env_options(config))
    if config.frame_replay:
        _check_frame_replay(config, spec, threads)
        return
    check_replay_fits(config, spec.obs_shape, spec.obs_dtype)


def _validate_ray(config: Config, processes: int) -> None:
    from dqnx import ray_setup

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
    rows = builder.frame_rows(config, threads, config.num_envs // threads)
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
    """Every check before anything compiles: each field (``Config.check_fields``),
    the environment name, the device layout and the replay's memory.

    Raises:
      ConfigError: one line naming the flag and what is wrong.
    """
    config.check_fields()
    if config.sweep or config.sweep_random:
        return _validate_sweep(config)
    if builder.uses_host_actors(config):
        _validate_host(config)
        return config
    _check_env_name(config)
    builder.choose_layout(config)
    spec = builder.make_env(config).spec
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
            env_suites.check_env_name(name, **builder.host_env_options(config))
        else:
            envs.check_env_name(name)
    except ConfigError as e:
        raise ConfigError(f"--env_name={name}: {e}") from None
    if suite and config.munchausen and builder.make_env(config).legal is not None:
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
    spec = builder.make_env(config).spec
    for program in plan.programs:
        builder.choose_layout(program.config.replace(num_seeds=len(program.runs)))
        check_replay_fits(program.config, spec.obs_shape, spec.obs_dtype, len(program.runs))
    return config
