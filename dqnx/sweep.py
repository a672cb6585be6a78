"""Hyperparameter sweeps: (configuration x seed) runs of compiled programs.

``--sweep=FIELD=V1,V2,...`` (repeatable) sweeps a grid, the cross product of
the lists; ``--sweep=FIELD=LO:HI`` is a range, and ``--sweep_random=N`` draws
``N`` configurations instead of the grid: a range log-uniformly for a
positive-scale field (``LOG_SCALE``: rates, periods, sizes), uniformly
otherwise; a list one of its values. The draws are fixed by ``--seed`` and
rounded to 4 significant digits (integers to integers). A tuple value is
written with ``x`` (``--sweep=hidden_sizes=64x64,256``).

Every configuration runs with each of ``--num_seeds`` seeds: run ``(c, s)`` is
the run ``--seed=seed+s`` of configuration ``c`` alone would be, keys included.
Fields in ``TRACED`` vary inside one compiled program (a per-run value on the
runs' vmapped axis, like the seed axis); fields in ``PROGRAM`` change shapes or
the program's structure, so each distinct combination of them is one program,
and the programs run one after another. Any other field is a ``ConfigError``.

This module only parses and plans (no JAX); ``compiled.hyper`` turns a plan's
runs into the traced values, ``checks.validate`` checks devices and memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from typing import Any, NamedTuple

import numpy as np

from dqnx import env_suites
from dqnx.config import Config
from dqnx.errors import ConfigError, suggest

# Vary inside one program: no shape or structure depends on them.
TRACED = (
    "learning_rate",
    "adam_eps",
    "max_grad_norm",
    "gamma",
    "epsilon_start",
    "epsilon_end",
    "epsilon_decay_steps",
    "target_update_period",
    "tau",
    "huber_delta",
    "priority_exponent",
    "importance_exponent",
    "munchausen_tau",
    "munchausen_alpha",
    "munchausen_l0",
)
# One program per distinct value: shapes or the program's structure.
PROGRAM = (
    "network", "hidden_sizes", "dueling", "learner", "num_atoms", "v_min", "v_max",
    "num_quantiles", "num_tau_samples", "num_tau_prime_samples", "num_quantile_samples",
    "munchausen", "noisy", "noisy_sigma0", "n_step", "prioritized",
    "double_q", "loss", "anneal_lr", "exploration", "apex_epsilon",
    "apex_alpha", "actor_sync_period", "num_envs", "rollout_steps", "updates_per_iteration",
    "buffer_size", "batch_size", "learning_starts", "compute_dtype", "conv_impl",
    "normalize_obs",
)  # fmt: skip
LOG_SCALE = (
    "learning_rate", "adam_eps", "max_grad_norm", "tau", "huber_delta", "target_update_period",
    "epsilon_decay_steps", "munchausen_tau", "noisy_sigma0", "buffer_size", "batch_size",
    "num_envs", "learning_starts",
)  # fmt: skip
# Traced fields a program only reads with the option in the second column set.
_USED_WITH = {
    "priority_exponent": "prioritized",
    "importance_exponent": "prioritized",
    "munchausen_tau": "munchausen",
    "munchausen_alpha": "munchausen",
    "munchausen_l0": "munchausen",
}


class Spec(NamedTuple):
    """One ``--sweep`` item: a list of ``values``, or a range ``(low, high)``."""

    field: str
    values: tuple | None
    low: float | None = None
    high: float | None = None


class Run(NamedTuple):
    """One run of a sweep.

    Attributes:
      index: position in the sweep, configuration-major (``config_index * S + s``).
      config_index: the configuration it belongs to.
      seed: its seed (``--seed + s``).
      overrides: the swept fields' values of its configuration.
    """

    index: int
    config_index: int
    seed: int
    overrides: dict


class ProgramPlan(NamedTuple):
    """The runs of one compiled program.

    Attributes:
      config: the program's config: the first run's configuration (its
        ``PROGRAM`` fields are every run's), ``sweep`` fields kept.
      runs: its runs, in sweep order.
      traced: the fields its runs take as traced per-run values.
    """

    config: Config
    runs: tuple[Run, ...]
    traced: tuple[str, ...]

    def run_config(self, run: Run) -> Config:
        """The single-run config ``run`` is: one seed, no sweep."""
        return run_config(self.config, run)


class Plan(NamedTuple):
    """A whole sweep: its configurations and the programs that run them."""

    specs: tuple[Spec, ...]
    configurations: tuple[dict, ...]
    programs: tuple[ProgramPlan, ...]

    @property
    def num_runs(self) -> int:
        return sum(len(p.runs) for p in self.programs)


def is_sweep(config: Config) -> bool:
    return bool(config.sweep)


def run_config(config: Config, run: Run) -> Config:
    """The config of ``run`` alone: its overrides, its seed, one seed, no sweep."""
    return config.replace(**run.overrides, seed=run.seed, num_seeds=1, sweep=(), sweep_random=0)


def _field_type(name: str):
    return typing.get_type_hints(Config)[name]


def _parse_value(name: str, text: str):
    hint = _field_type(name)
    text = text.strip()
    try:
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if hint is int:
            value = float(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if hint is float:
            return float(text)
        if typing.get_origin(hint) is tuple:
            return tuple(int(v) for v in text.split("x"))
    except ValueError:
        raise ConfigError(f"--sweep={name}: cannot read {text!r} as {_type_name(hint)}") from None
    return text


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return "integers joined by x (64x64)"
    return getattr(hint, "__name__", str(hint))


def parse(items) -> tuple[Spec, ...]:
    """``--sweep`` items -> ``Spec`` s, checking every field can be swept.

    Raises:
      ConfigError: a malformed item, an unknown field, a field that cannot vary
        in a sweep, a field given twice, a bad value.
    """
    specs, seen = [], set()
    known = [f.name for f in dataclasses.fields(Config)]
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise ConfigError(f"--sweep takes FIELD=V1,V2,... or FIELD=LOW:HIGH, got {item!r}")
        if name not in known:
            raise ConfigError(f"--sweep={name}: no such field{suggest(name, known)}")
        if name not in TRACED and name not in PROGRAM:
            raise ConfigError(
                f"--sweep={name}: {name} cannot vary within a sweep (it is not a "
                "hyperparameter of the learner, the replay, the network or exploration)"
            )
        if name in seen:
            raise ConfigError(f"--sweep={name} is given twice; list its values in one item")
        seen.add(name)
        if ":" in text:
            low, _, high = text.partition(":")
            lo, hi = _parse_value(name, low), _parse_value(name, high)
            if not isinstance(lo, int | float) or isinstance(lo, bool) or not lo < hi:
                raise ConfigError(f"--sweep={item}: a range needs numbers LOW < HIGH")
            if name in LOG_SCALE and lo <= 0:
                raise ConfigError(f"--sweep={item}: {name} is drawn log-uniformly: LOW must be > 0")
            specs.append(Spec(name, None, lo, hi))
        else:
            values = tuple(_parse_value(name, v) for v in text.split(","))
            if len(set(values)) != len(values):
                raise ConfigError(f"--sweep={item}: a value is listed twice")
            specs.append(Spec(name, values))
    return tuple(specs)


def _round(name: str, value: float):
    if _field_type(name) is int:
        return int(round(value))
    return float(f"{value:.4g}")


def configurations(specs, num_random: int, seed: int) -> tuple[dict, ...]:
    """The swept fields' values of every configuration: the grid of the lists
    (``num_random == 0``) or ``num_random`` draws (fixed by ``seed``).

    Raises:
      ConfigError: a range without ``--sweep_random``.
    """
    if not num_random:
        ranges = [s.field for s in specs if s.values is None]
        if ranges:
            raise ConfigError(
                f"--sweep={ranges[0]}=LOW:HIGH is a range: draw from it with --sweep_random=N"
            )
        grid = itertools.product(*(s.values for s in specs))
        return tuple(dict(zip([s.field for s in specs], combo, strict=True)) for combo in grid)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(num_random):
        values = {}
        for s in specs:
            if s.values is not None:
                values[s.field] = s.values[int(rng.integers(len(s.values)))]
            elif s.field in LOG_SCALE:
                values[s.field] = _round(
                    s.field, math.exp(rng.uniform(math.log(s.low), math.log(s.high)))
                )
            else:
                values[s.field] = _round(s.field, rng.uniform(s.low, s.high))
        draws.append(values)
    return tuple(draws)


def traced_fields(config: Config, swept) -> tuple[str, ...]:
    """The swept fields a program of ``config`` takes per run as traced values."""
    traced = []
    for name in swept:
        if name not in TRACED:
            continue
        if name in _USED_WITH and not getattr(config, _USED_WITH[name]):
            continue  # the option is off in this program: the value is never read
        if name == "max_grad_norm" and not config.max_grad_norm > 0:
            continue  # no clipping in this program
        traced.append(name)
    return tuple(traced)


def _program_key(config: Config, swept) -> tuple:
    key = [(f, getattr(config, f)) for f in swept if f in PROGRAM]
    key.append(("clip", config.max_grad_norm > 0))
    return tuple(key)


def plan(config: Config) -> Plan:
    """Parses, expands and checks ``config``'s sweep; groups its runs by program.

    Raises:
      ConfigError: as ``parse`` and ``configurations``; a configuration whose
        values fail ``Config.check_fields`` (one line naming it); a sweep of a host
        environment.
    """
    if ":" in config.env_name and not env_suites.is_suite_env_name(config.env_name):
        raise ConfigError(
            "--sweep trains in the compiled mode: a gymnax or compiled suite environment "
            f"(craftax:, navix:, jumanji:, pgx:), not {config.env_name}"
        )
    if config.sweep_random and not config.sweep:
        raise ConfigError("--sweep_random=N draws from --sweep ranges or lists: give --sweep")
    specs = parse(config.sweep)
    configs = configurations(specs, config.sweep_random, config.seed)
    swept = [s.field for s in specs]
    groups: dict[tuple, list[Run]] = {}
    first: dict[tuple, Config] = {}
    for c, overrides in enumerate(configs):
        try:
            single = config.replace(**overrides).check_fields()
        except ConfigError as e:
            shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
            raise ConfigError(f"--sweep configuration {c} ({shown}): {e}") from None
        key = _program_key(single, swept)
        first.setdefault(key, single)
        runs = groups.setdefault(key, [])
        for s in range(config.num_seeds):
            runs.append(Run(c * config.num_seeds + s, c, config.seed + s, dict(overrides)))
    programs = tuple(
        ProgramPlan(first[key], tuple(runs), traced_fields(first[key], swept))
        for key, runs in groups.items()
    )
    return Plan(specs, configs, programs)


def run_columns(program: ProgramPlan) -> dict[str, Any]:
    """Per-run metric columns of ``program``: ``seed`` and ``sweep/FIELD`` (a list
    over runs, or one value for a field every run of the program shares)."""
    columns: dict[str, Any] = {"seed": [r.seed for r in program.runs]}
    for name in program.runs[0].overrides:
        values = [r.overrides[name] for r in program.runs]
        if len(set(values)) == 1 or not all(isinstance(v, int | float) for v in values):
            value = values[0]
            columns[f"sweep/{name}"] = (
                "x".join(map(str, value)) if isinstance(value, tuple) else value
            )
        else:
            columns[f"sweep/{name}"] = values
    return columns


def describe(plan_: Plan, num_seeds: int) -> str:
    """``C configuration(s) x S seed(s) = R runs in P program(s)``."""
    programs = len(plan_.programs)
    return (
        f"{len(plan_.configurations)} configuration(s) x {num_seeds} seed(s) = "
        f"{plan_.num_runs} runs in {programs} program(s)"
    )
