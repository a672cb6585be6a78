"""The one place that turns a ``Config`` into building blocks.

The blocks (``envs``, ``networks``, ``learner``, ``replay``, ``prioritized``,
``nstep``, ``actor``, ``exploration``, ``losses``) take plain arguments and
never see a ``Config``; research code can call them directly. Both execution
modes and the command-line tools build them through here, so a flag means the
same thing everywhere. The checks of a config (the environment, the devices,
the memory) are in ``checks``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

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


def make_head(config: Config) -> networks.Head:
    """The network head ``config.learner`` and ``config.noisy`` call for."""
    return networks.Head(
        kind=config.learner,
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


def make_objective(config: Config) -> objectives.Objective:
    """The objective ``config.learner`` names, with the config's hyperparameters."""
    m = None
    if config.munchausen:
        m = objectives.Munchausen(
            config.munchausen_tau, config.munchausen_alpha, config.munchausen_l0
        )
    if config.learner == "dqn":
        return objectives.DQN(config.double_q, config.loss, config.huber_delta, m)
    if config.learner == "c51":
        return objectives.C51(config.double_q)
    if config.learner == "qr":
        return objectives.QR(config.double_q, config.huber_delta)
    return objectives.IQN(
        config.num_tau_samples, config.num_tau_prime_samples, config.double_q,
        config.huber_delta, m,
    )  # fmt: skip


def make_learner(config: Config, network, axis_name: str | None = None, objective=None):
    """The learner ``config`` describes (``objective``: one replacing the config's),
    averaging gradients over ``axis_name``."""
    return learner.make_learner(
        network,
        make_optimizer(config),
        objective or make_objective(config),
        axis_name=axis_name,
        **fields(config, "gamma", "target_update_period", "tau"),
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
