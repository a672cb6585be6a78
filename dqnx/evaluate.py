"""Greedy evaluation of a run's latest checkpoint.

  python -m dqnx.evaluate --workdir=runs/cartpole-8 [--episodes=100] [--epsilon=0.0] [--step=N]

Rebuilds the run from its ``config.json``, loads the newest checkpoint (or
``--step``), plays ``--episodes`` episodes per seed in parallel on device with
``--epsilon``-greedy actions from the online parameters, prints the mean return
per seed and writes ``evaluation.json`` next to the checkpoints. Exit code 2
with one line on stderr for a missing run or an unusable checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def evaluate(workdir: str | Path, episodes: int = 100, epsilon: float = 0.0, step=None) -> dict:
    """Returns ``{"env_steps", "episodes", "epsilon", "return_per_seed", "return_mean"}``."""
    import numpy as np

    from dqnx import checkpoint, parallel, train
    from dqnx.config import Config, ConfigError

    workdir = Path(workdir)
    try:
        saved = json.loads((workdir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{workdir} is not a dqnx run directory ({e})") from None
    config = Config.from_dict(saved).replace(eval_episodes=episodes, eval_epsilon=epsilon)
    config = config.validate()
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise checkpoint.CheckpointError(f"no checkpoint in {workdir / 'checkpoints'}")
        fns = train.make_train(config, layout=train.choose_layout(config))
        programs = train.compile_train(fns, training=False)
        state, _ = ckpt.restore(programs.initial_state, step)
    finally:
        ckpt.close()
    returns = np.asarray(parallel.to_host(programs.evaluate(state)))
    result = {
        "env_steps": int(step),
        "episodes": episodes,
        "epsilon": epsilon,
        "return_per_seed": returns.mean(axis=1).tolist(),
        "return_mean": float(returns.mean()),
    }
    if parallel.is_main_process():
        from dqnx.logging import write_json

        write_json(workdir / "evaluation.json", result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--epsilon", type=float, default=0.0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    args = p.parse_args(argv)
    from dqnx.checkpoint import CheckpointError
    from dqnx.config import ConfigError

    try:
        r = evaluate(args.workdir, args.episodes, args.epsilon, args.step)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_seed = ", ".join(f"{x:.2f}" for x in r["return_per_seed"])
    print(
        f"{args.workdir} @ env step {r['env_steps']:,d}: return {r['return_mean']:.2f} "
        f"(per seed: {per_seed}; {r['episodes']} episodes each, epsilon {r['epsilon']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
