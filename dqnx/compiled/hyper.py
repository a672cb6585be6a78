"""A sweep's traced hyperparameters: per-run values on the runs' vmapped axis.

A program of a sweep (``sweep.ProgramPlan``) carries, in ``TrainState.hparams``,
one value per run of each field it traces: ``{name: [R]}``. Inside the vmap over
runs each is a traced scalar, and the blocks (learner, optimizer, schedules,
n-step returns) take it where a single run's program has a Python constant.

The values are the float32 operands the single run's program computes with,
so a run of a sweep is bit for bit the run of its configuration alone: where
Python computes with a constant in float64 before it meets an array
(``1 - tau``, ``end - start`` of a schedule), the difference is computed here
in float64 too; where XLA turns a division by a constant into a multiplication
by its float32 reciprocal (the epsilon decay, Munchausen's temperature), the
reciprocal is passed.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import builder, exploration
from dqnx.config import Config
from dqnx.sweep import ProgramPlan

# Fields the learner and optimizer take (builder.make_learner reads them).
LEARNER_FIELDS = (
    "learning_rate",
    "adam_eps",
    "max_grad_norm",
    "gamma",
    "target_update_period",
    "huber_delta",
    "munchausen_alpha",
    "munchausen_l0",
)
EPSILON_FIELDS = ("epsilon_start", "epsilon_end", "epsilon_decay_steps")


def _values(config: Config, traced: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One run's traced values (float64 arithmetic, then float32 or int32)."""
    out = {}
    for name in traced:
        if name in LEARNER_FIELDS:
            dtype = np.int32 if name == "target_update_period" else np.float32
            out[name] = np.asarray(getattr(config, name), dtype)
    if "tau" in traced:
        out["tau"] = np.float32(config.tau)
        out["tau_complement"] = np.float32(1.0 - config.tau)
    if any(name in traced for name in EPSILON_FIELDS):
        decay = config.epsilon_decay_steps
        out["epsilon_start"] = np.float32(config.epsilon_start)
        out["epsilon_delta"] = np.float32(config.epsilon_end - config.epsilon_start)
        out["epsilon_end"] = np.float32(config.epsilon_end)
        out["epsilon_inv_decay"] = np.float32(1) / np.float32(decay) if decay else np.float32(0)
        out["epsilon_constant"] = np.bool_(decay == 0)
    if "priority_exponent" in traced:
        out["priority_exponent"] = np.float32(config.priority_exponent)
    if "munchausen_tau" in traced:
        out["munchausen_tau"] = np.float32(config.munchausen_tau)
        out["munchausen_inv_tau"] = np.float32(1) / np.float32(config.munchausen_tau)
    if "importance_exponent" in traced:
        out["beta_start"] = np.float32(config.importance_exponent)
        out["beta_delta"] = np.float32(1.0 - config.importance_exponent)
    return out


def initial_hparams(program: ProgramPlan) -> dict[str, np.ndarray] | None:
    """``{name: [R]}`` of ``program``'s runs (None when it traces nothing)."""
    if not program.traced:
        return None
    rows = [_values(program.run_config(r), program.traced) for r in program.runs]
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def device_hparams(program: ProgramPlan | None) -> dict[str, jax.Array] | None:
    """``initial_hparams`` as JAX arrays (None without a program or traced fields)."""
    values = initial_hparams(program) if program else None
    return None if values is None else {k: jnp.asarray(v) for k, v in values.items()}


def run_seeds(program: ProgramPlan | None) -> list[int] | None:
    """The seeds of ``program``'s runs (None: no sweep, the config's seeds)."""
    return [r.seed for r in program.runs] if program else None


def traces(hp: Mapping | None, *names: str) -> bool:
    return hp is not None and any(n in hp for n in names)


def learner(config: Config, network, axis_name, hp: Mapping):
    """The learner of one run, its traced values ``hp`` (scalars) in place of the
    config's (``builder.make_learner`` on a config holding them)."""
    changes = {name: hp[name] for name in LEARNER_FIELDS if name in hp}
    if "tau" in hp:
        changes["tau"] = (hp["tau"], hp["tau_complement"])
    if "munchausen_tau" in hp:
        changes["munchausen_tau"] = (hp["munchausen_tau"], hp["munchausen_inv_tau"])
    return builder.make_learner(config.replace(**changes), network, axis_name=axis_name)


def epsilon(hp: Mapping, *, env_steps) -> jax.Array:
    """One run's linear exploration rate at ``env_steps`` (``builder.make_schedules``'
    ``epsilon``, from traced values)."""
    value = exploration.linear_value(
        env_steps, hp["epsilon_start"], hp["epsilon_delta"],
        inv_decay_steps=hp["epsilon_inv_decay"],
    )  # fmt: skip
    return jnp.where(hp["epsilon_constant"], hp["epsilon_end"], value)


def beta(config: Config, hp: Mapping, *, env_steps) -> jax.Array:
    """One run's importance exponent at ``env_steps`` (annealed to 1 at total_steps)."""
    return exploration.linear_value(
        env_steps, hp["beta_start"], hp["beta_delta"], config.total_steps
    )


def host_epsilons(program: ProgramPlan, env_steps: int) -> list[float]:
    """Every run's exploration rate at ``env_steps``, for logs."""
    return [
        builder.make_schedules(program.run_config(r)).mean_epsilon(env_steps) for r in program.runs
    ]
