"""How much Adam's epsilon shrinks a run's steps, read from its checkpoint.

  python experiments/studies/adam_scale.py runs/NAME [runs/OTHER ...] [--step N] \
      [--eps 1e-8,3.125e-4]

Adam moves each parameter by lr * m / (sqrt(v) + eps), where v is the running
mean of the squared gradient (bias-corrected). Where sqrt(v) is far below eps,
eps dominates the denominator and Adam's step is ``sqrt(v) / (sqrt(v) + eps)``
times the one it takes with eps -> 0: near plain SGD with a tiny learning rate.
For each run (its newest readable checkpoint, or ``--step``), this prints, per
seed, the quantiles of sqrt(v) over all parameters and that factor averaged over
the parameters, for the run's own ``adam_eps`` and for each ``--eps``.

The factor for an eps other than the run's is a counterfactual: v is the one
the run's training produced, not what another eps would have led to.

Rebuilds the run's programs from its ``config.json`` (a compile, as
``python -m dqnx.evaluate``) on one XLA CPU device per core, as
``experiments/run.py`` lays runs out by default; a run made with another
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` needs the same here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

QUANTILES = (0.1, 0.5, 0.9)
ADAM_B2 = 0.999  # optax.adam's default, which dqnx.learner uses


def adam_moments(opt_state) -> list:
    """Every ``optax.ScaleByAdamState`` in an optimizer state, in tree order."""
    import jax
    import optax

    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    return [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_adam) if is_adam(x)]


def step_scale(nu_leaves, count, num_seeds: int, eps_values, b2: float = ADAM_B2) -> dict:
    """Per seed: sqrt of Adam's bias-corrected second moment over all parameters.

    Args:
      nu_leaves: Adam's ``nu`` arrays, each with a leading seed axis (or leading
        axes whose product is ``num_seeds``, seeds in row-major order).
      count: Adam's update count (a scalar or one per seed).
      num_seeds: how many seeds the leading axes hold.
      eps_values: the epsilons to report the step factor for.

    Returns:
      ``{"sqrt_v": [num_seeds, len(QUANTILES)] quantiles, "factor": {eps:
      [num_seeds] mean over parameters of sqrt(v) / (sqrt(v) + eps)},
      "num_params": int}``.
    """
    count = np.broadcast_to(np.asarray(count, np.float64).reshape(-1), (num_seeds,))
    flat = np.concatenate(
        [np.asarray(v, np.float64).reshape(num_seeds, -1) for v in nu_leaves], axis=1
    )
    correction = 1.0 - b2 ** np.maximum(count, 1.0)
    root = np.sqrt(np.maximum(flat, 0.0) / correction[:, None])
    return {
        "sqrt_v": np.quantile(root, QUANTILES, axis=1).T,
        "factor": {float(e): (root / (root + float(e))).mean(axis=1) for e in eps_values},
        "num_params": flat.shape[1],
    }


def report(workdir: str, step, extra_eps) -> None:
    import jax

    from dqnx import evaluate

    config = evaluate._validate(evaluate._read_config(Path(workdir)))
    run = evaluate._load(Path(workdir), config, step)
    moments = adam_moments(jax.device_get(run.state.learner.opt_state))
    if not moments:
        raise SystemExit(f"{workdir}: no Adam state in the checkpoint's optimizer state")
    eps_values = list(dict.fromkeys([float(config.adam_eps), *extra_eps]))
    nus = [leaf for m in moments for leaf in jax.tree_util.tree_leaves(m.nu)]
    count = np.asarray(moments[0].count)
    out = step_scale(nus, count, config.num_seeds, eps_values)
    q = "/".join(f"q{int(100 * p)}" for p in QUANTILES)
    print(
        f"{workdir}: env step {run.step}, Adam update {int(count.reshape(-1)[0])}, "
        f"{out['num_params']:,} parameters a seed, run's adam_eps {config.adam_eps:g}"
    )
    for s in range(config.num_seeds):
        roots = " / ".join(f"{x:.2g}" for x in out["sqrt_v"][s])
        factors = ", ".join(f"eps {e:g}: {f[s]:.3f}" for e, f in out["factor"].items())
        print(f"  seed {s}: sqrt(v) {q} {roots}; step factor {factors}")
    med = np.median(out["sqrt_v"][:, 1])
    factors = ", ".join(f"eps {e:g}: {f.mean():.3f}" for e, f in out["factor"].items())
    print(f"  all seeds: median sqrt(v) {med:.2g}; mean step factor {factors}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", help="run directories (config.json + checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint env step (newest)")
    parser.add_argument(
        "--eps",
        default="1e-8,3.125e-4",
        help="comma-separated epsilons to compare (with the run's)",
    )
    args = parser.parse_args(argv)
    from dqnx import parallel

    parallel.use_all_cpu_cores()  # before JAX starts its backends, as experiments/run.py
    try:
        extra = [float(x) for x in args.eps.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--eps: comma-separated numbers expected, got {args.eps!r}")
    from dqnx.checkpoint import CheckpointError
    from dqnx.errors import ConfigError

    for w in args.workdirs:
        try:
            report(w, args.step, extra)
        except (ConfigError, CheckpointError) as e:
            print(f"{w}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
