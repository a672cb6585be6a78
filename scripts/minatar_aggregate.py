"""Aggregate MinAtar results: IQM over games and performance profiles (rliable's protocol).

  python scripts/minatar_aggregate.py [--records=experiments/results/minatar] \
      [--reference=dqn] [--out=experiments/results/minatar_aggregate.png] \
      [--table=experiments/results/minatar_aggregate.md] [--reps=50000] [--profile_reps=2000]

Reads the records that ``scripts/minatar_table.sh`` keeps, ``RECORDS/GAME-LEARNER/``
``summary.json``: the final greedy evaluation return of each seed
(``eval_return_per_seed``, the last point of the per-game tables). A learner
enters the aggregate if it is recorded on every game, with the same number of
seeds on each.

Scores are normalized per game by the reference learner's mean final return on
that game (``--reference``, default Double DQN): ``return / reference mean``, so
0 is a return of 0 (no reward: every reward of these games is >= 0) and 1 is
the reference's mean. The reference is fixed, not resampled.

Over the normalized ``[seeds, games]`` scores of each learner (Agarwal et al.,
2021, arXiv:2108.13264; ``scripts/stats.py``): the interquartile mean (IQM)
and the mean of the per-game means, each with a 95% stratified-bootstrap
interval (``--reps`` resamples, seeds drawn within each game), and the
performance profile: the fraction of runs (seed x game) whose normalized
score is above tau, with a 95% band (``--profile_reps`` resamples). Writes the
figure (IQM intervals beside the profiles) and a Markdown table of the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import stats

ORDER = ("dqn", "mdqn", "qr", "rainbow_full")  # scripts/minatar_table.sh's learners
NAMES = {"dqn": "Double DQN", "mdqn": "M-DQN", "qr": "QR-DQN", "rainbow_full": "Rainbow-full"}
TAUS = 201  # thresholds of the profile, from 0 to the largest normalized score


def load_records(records: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{learner: {game: final greedy return per seed [S]}}`` of ``records/GAME-LEARNER``."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for summary in sorted(Path(records).glob("*-*/summary.json")):
        game, _, learner = summary.parent.name.partition("-")
        returns = json.loads(summary.read_text())["eval_return_per_seed"]
        found.setdefault(learner, {})[game] = np.asarray(returns, dtype=np.float64)
    return found


def score_matrices(found: dict, reference: str) -> tuple[list[str], dict, dict, list[str]]:
    """The normalized ``[seeds, games]`` scores of each learner complete on every game.

    Returns:
      ``(games, {learner: scores [S, G]}, {game: reference mean}, skipped learners)``.

    Raises:
      ValueError: no records of the reference learner.
    """
    if reference not in found:
        raise ValueError(f"no records of the reference learner {reference!r}")
    games = sorted(found[reference])
    ref_mean = {g: float(found[reference][g].mean()) for g in games}
    learners = sorted(found, key=lambda k: (k not in ORDER, ORDER.index(k) if k in ORDER else k))
    scores, skipped = {}, []
    for learner in learners:
        per_game = found[learner]
        seeds = {per_game[g].size for g in games if g in per_game}
        if not set(games) <= set(per_game) or len(seeds) != 1:
            skipped.append(learner)
            continue
        scores[learner] = np.stack([per_game[g] / ref_mean[g] for g in games], axis=1)
    return games, scores, ref_mean, skipped


def aggregate(scores: dict, *, reps: int, profile_reps: int, seed: int = stats.SEED) -> dict:
    """IQM and mean with intervals, and the profiles, of each learner's scores [S, G]."""
    top = max(float(x.max()) for x in scores.values())
    taus = np.linspace(0.0, top, TAUS)
    out = {"taus": taus, "learners": {}}
    for learner, x in scores.items():
        kw = dict(num_resamples=reps, seed=seed)
        out["learners"][learner] = {
            "iqm": stats.interval(x, stats.iqm_of, **kw),
            "mean": stats.interval(x, stats.mean_of, **kw),
            "per_game": x.mean(0),
            "profile": stats.performance_profile(x, taus, num_resamples=profile_reps, seed=seed),
        }
    return out


def markdown(games, scores, ref_mean, result, args) -> str:
    """The aggregate numbers and the per-game normalized means, as Markdown."""
    seeds = next(iter(scores.values())).shape[0]
    ref = NAMES.get(args.reference, args.reference)
    lines = [
        f"MinAtar, {len(games)} games x {seeds} seeds, final greedy return normalized per "
        f"game by {ref}'s mean (return / reference mean; 0 = no reward, 1 = {ref}). "
        f"IQM and mean of per-game means with 95% stratified-bootstrap intervals "
        f"({args.reps} resamples, seed {args.seed}); made by scripts/minatar_aggregate.py "
        f"from {args.records}.",
        "",
        "| learner | runs | IQM | 95% CI | mean | 95% CI |",
        "|---|---:|---:|---|---:|---|",
    ]
    for learner, r in result["learners"].items():
        iqm, mean = r["iqm"], r["mean"]
        lines.append(
            f"| {NAMES.get(learner, learner)} | {scores[learner].size} | {iqm.point:.3f} "
            f"| [{iqm.low:.3f}, {iqm.high:.3f}] | {mean.point:.3f} "
            f"| [{mean.low:.3f}, {mean.high:.3f}] |"
        )
    lines += [
        "",
        "Per-game mean normalized score (reference mean return in brackets):",
        "",
        "| learner | " + " | ".join(f"{g} ({ref_mean[g]:.2f})" for g in games) + " |",
        "|---|" + "---:|" * len(games),
    ]
    for learner, r in result["learners"].items():
        cells = " | ".join(f"{v:.3f}" for v in r["per_game"])
        lines.append(f"| {NAMES.get(learner, learner)} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path, title: str) -> None:
    """IQM intervals (left) and performance profiles with bands (right), as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.5))
    learners = list(result["learners"])
    colors = {k: f"C{i}" for i, k in enumerate(learners)}
    for i, learner in enumerate(learners):
        est = result["learners"][learner]["iqm"]
        left.barh(i, est.high - est.low, left=est.low, height=0.6, color=colors[learner], alpha=0.6)
        left.plot([est.point, est.point], [i - 0.3, i + 0.3], color="k", lw=2)
        prof = result["learners"][learner]["profile"]
        name = NAMES.get(learner, learner)
        right.plot(result["taus"], prof.point, color=colors[learner], label=name)
        right.fill_between(result["taus"], prof.low, prof.high, color=colors[learner], alpha=0.2)
    left.set_yticks(range(len(learners)), [NAMES.get(k, k) for k in learners])
    left.invert_yaxis()
    left.margins(x=0.08)
    left.axvline(1.0, color="gray", ls="--", lw=1)
    left.set_xlabel("IQM of normalized score (95% stratified-bootstrap CI)")
    right.set_xlabel("normalized score tau")
    right.set_ylabel("fraction of runs with score > tau")
    right.axvline(1.0, color="gray", ls="--", lw=1)
    right.grid(True, alpha=0.3)
    right.legend(loc="upper right")
    fig.suptitle(title)
    fig.savefig(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=Path, default=Path("experiments/results/minatar"))
    p.add_argument("--reference", default="dqn", help="learner whose per-game mean is 1")
    p.add_argument("--out", type=Path, default=Path("experiments/results/minatar_aggregate.png"))
    p.add_argument("--table", type=Path, default=Path("experiments/results/minatar_aggregate.md"))
    p.add_argument("--reps", type=int, default=50_000, help="resamples of the IQM/mean CIs")
    p.add_argument("--profile_reps", type=int, default=2_000, help="resamples of the profiles")
    p.add_argument("--seed", type=int, default=stats.SEED, help="seed of the resampling")
    args = p.parse_args(argv)
    try:
        games, scores, ref_mean, skipped = score_matrices(
            load_records(args.records), args.reference
        )
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {args.records}: {e}") from None
    for learner in skipped:
        print(f"left out: {learner} (not recorded on every game with equal seeds)")
    result = aggregate(scores, reps=args.reps, profile_reps=args.profile_reps, seed=args.seed)
    text = markdown(games, scores, ref_mean, result, args)
    print(text, end="")
    args.table.write_text(text)
    seeds = next(iter(scores.values())).shape[0]
    ref = NAMES.get(args.reference, args.reference)
    plot(result, args.out, f"MinAtar, {len(games)} games x {seeds} seeds, normalized by {ref}")
    print(f"wrote {args.table} and {args.out}")
    return {"games": games, "scores": scores, "reference_mean": ref_mean, **result}


if __name__ == "__main__":
    main()
