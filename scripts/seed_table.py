"""A per-seed table of final greedy returns from finished runs, against a target.

  python scripts/seed_table.py --target=475 runs/cartpole_s100 runs/cartpole_s101 ...
      [--name=cartpole_gymnasium.flags] [--record=experiments/results/fresh_seeds/cartpole]

Each run directory's ``summary.json`` gives its seeds (``config.json``'s
``seed`` .. ``seed + num_seeds - 1``) and their final greedy returns
(``eval_return_per_seed``). Prints one Markdown row: the flagfile, the seeds,
each seed's return, how many reach ``--target`` (a return >= target), the mean
and min. ``--record=DIR`` copies each run's ``summary.json`` and
``config.json`` into ``DIR/<run name>/`` so the table can be made again from the
recorded files (``--recorded=DIR``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def seed_returns(run: Path) -> list[tuple[int, float]]:
    """``[(seed, final greedy return)]`` of one finished run directory."""
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    returns = summary["eval_return_per_seed"]
    return [(config["seed"] + i, float(r)) for i, r in enumerate(returns)]


def row(name: str, pairs: list[tuple[int, float]], target: float) -> str:
    pairs = sorted(pairs)
    values = [r for _, r in pairs]
    hits = sum(r >= target for r in values)
    seeds = f"{pairs[0][0]}-{pairs[-1][0]}" if len(pairs) > 1 else str(pairs[0][0])
    each = ", ".join(f"{r:.1f}" for r in values)
    return (
        f"| {name} | {seeds} | {each} | {hits}/{len(values)} >= {target:g} | "
        f"{sum(values) / len(values):.1f} | {min(values):.1f} |"
    )


HEADER = "| flagfile | seeds | final greedy return per seed | at target | mean | min |\n"
HEADER += "|---|---|---|---|---:|---:|"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="finished run directories")
    p.add_argument("--target", type=float, required=True, help="the flagfile's documented target")
    p.add_argument("--name", default="", help="the flagfile's name (default: the first run's)")
    p.add_argument("--record", type=Path, help="copy each run's summary and config here")
    p.add_argument("--recorded", type=Path, help="read the runs recorded under this directory")
    args = p.parse_args(argv)
    runs = list(args.runs)
    if args.recorded:
        runs += sorted(d for d in args.recorded.iterdir() if (d / "summary.json").is_file())
    if not runs:
        print("error: no runs", file=sys.stderr)
        return 2
    try:
        pairs = [pair for run in runs for pair in seed_returns(run)]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.record:
        for run in args.runs:
            (args.record / run.name).mkdir(parents=True, exist_ok=True)
            for name in ("summary.json", "config.json"):
                shutil.copy(run / name, args.record / run.name / name)
    name = args.name or json.loads((runs[0] / "config.json").read_text())["env_name"]
    print(HEADER)
    print(row(name, pairs, args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
