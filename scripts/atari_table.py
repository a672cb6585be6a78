"""Per-game Atari returns and human-normalized scores of dqnx runs.

  python scripts/atari_table.py runs/atari-* [--out=table.md] [--json=table.json]

Each argument is a run's workdir (``config.json`` with ``--env_name=ale:GAME`` and
``summary.json``); runs of the same game are pooled (every seed of every run).
A game's score is the mean final greedy evaluation return; its human-normalized
score is ``(score - random) / (human - random)``. Over games the table gives
the mean, the median and the interquartile mean (IQM: the mean of the middle
50%, ``floor(n / 4)`` games dropped from each end; Agarwal et al., 2021,
arXiv:2108.13264) of the games' normalized scores, from ``scripts/stats.py``.

Reference scores: the 57 games' random and human scores used by Mnih et al.
(2015, Nature 518:529) and extended by Badia et al. (2020, Agent57,
arXiv:2003.13350), as tabulated in DQN Zoo (Quan & Ostrovski, 2020,
``dqn_zoo/atari_data.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import stats

# game: (random, human)
REFERENCE = {
    "alien": (227.8, 7127.7), "amidar": (5.8, 1719.5), "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3), "asteroids": (719.1, 47388.7), "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 753.1), "battle_zone": (2360.0, 37187.5),
    "beam_rider": (363.9, 16926.5), "berzerk": (123.7, 2630.4), "bowling": (23.1, 160.7),
    "boxing": (0.1, 12.1), "breakout": (1.7, 30.5), "centipede": (2090.9, 12017.0),
    "chopper_command": (811.0, 7387.8), "crazy_climber": (10780.5, 35829.4),
    "defender": (2874.5, 18688.9), "demon_attack": (152.1, 1971.0),
    "double_dunk": (-18.6, -16.4), "enduro": (0.0, 860.5), "fishing_derby": (-91.7, -38.7),
    "freeway": (0.0, 29.6), "frostbite": (65.2, 4334.7), "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4), "hero": (1027.0, 30826.4), "ice_hockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8), "kangaroo": (52.0, 3035.0), "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3), "montezuma_revenge": (0.0, 4753.3),
    "ms_pacman": (307.3, 6951.6), "name_this_game": (2292.3, 8049.0),
    "phoenix": (761.4, 7242.6), "pitfall": (-229.4, 6463.7), "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3), "qbert": (163.9, 13455.0), "riverraid": (1338.5, 17118.0),
    "road_runner": (11.5, 7845.0), "robotank": (2.2, 11.9), "seaquest": (68.4, 42054.7),
    "skiing": (-17098.1, -4336.9), "solaris": (1236.3, 12326.7),
    "space_invaders": (148.0, 1668.7), "star_gunner": (664.0, 10250.0),
    "surround": (-10.0, 6.5), "tennis": (-23.8, -8.3), "time_pilot": (3568.0, 5229.2),
    "tutankham": (11.4, 167.6), "up_n_down": (533.4, 11693.2), "venture": (0.0, 1187.5),
    "video_pinball": (16256.9, 17667.9), "wizard_of_wor": (563.5, 4756.5),
    "yars_revenge": (3092.9, 54576.9), "zaxxon": (32.5, 9173.3),
}  # fmt: skip


def normalized(game: str, score: float) -> float:
    """Human-normalized score: 0 is random play, 1 is the human reference."""
    random, human = REFERENCE[game]
    return (score - random) / (human - random)


def load(workdirs) -> dict[str, list[float]]:
    """{game: final greedy returns of every seed of every run of that game}."""
    games: dict[str, list[float]] = {}
    for workdir in map(Path, workdirs):
        try:
            env = json.loads((workdir / "config.json").read_text())["env_name"]
            summary = json.loads((workdir / "summary.json").read_text())
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"error: {workdir} is not a finished dqnx run ({e})") from None
        lib, _, game = env.partition(":")
        if lib != "ale" or game not in REFERENCE:
            raise SystemExit(f"error: {workdir} trained on {env}, not one of the 57 ale: games")
        returns = [r for r in summary["eval_return_per_seed"] if r is not None]
        games.setdefault(game, []).extend(float(r) for r in returns)
    return games


def table(games: dict[str, list[float]]) -> tuple[str, dict]:
    rows = ["| game | seeds | return | human-normalized |", "|---|---:|---:|---:|"]
    scores = {}
    for game in sorted(games):
        score = sum(games[game]) / len(games[game])
        scores[game] = normalized(game, score)
        rows.append(f"| {game} | {len(games[game])} | {score:.1f} | {scores[game]:.3f} |")
    values = np.array([list(scores.values())])  # [1, games]: one score per game
    summary = {
        "games": values.size,
        "mean": float(stats.mean_of(values)),
        "median": float(stats.median_of(values)),
        "iqm": float(stats.iqm_of(values)),
    }
    rows.append("")
    rows.append(
        f"Human-normalized over {summary['games']} game(s): mean {summary['mean']:.3f}, "
        f"median {summary['median']:.3f}, IQM {summary['iqm']:.3f}"
    )
    return "\n".join(rows), {"per_game": scores, **summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", default="", help="also write the Markdown table here")
    p.add_argument("--json", default="", help="also write the numbers here")
    args = p.parse_args(argv)
    text, numbers = table(load(args.workdirs))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
