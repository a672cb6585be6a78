"""Learning curves and a final-performance table for one or more dqnx runs.

  python scripts/plot.py runs/cartpole-a runs/cartpole-b [--labels a,b] \
      [--metric eval_return] [--out curves.png] [--table final.md]

Each DIR is a run directory holding ``metrics.jsonl`` (and ``config.json``, for
the default label), or several joined by ``+`` (``runs/s0+runs/s1+runs/s2``):
their seeds pooled into one curve, as for host-actor runs, one process per seed.
The plot shows env steps per seed (x) against the metric
(y): the mean over seeds as a line and a 95% bootstrap confidence band over
seeds. The table gives, per run, the metric at its last logged step: mean over
seeds, interquartile mean (IQM; Agarwal et al., 2021, "Deep Reinforcement
Learning at the Edge of the Statistical Precipice"), min, max and a 95%
bootstrap CI of the mean. It is printed, and written as Markdown with --table.
The statistics are rliable's definitions, from ``scripts/stats.py``.

A sweep (``--sweep``: one workdir whose ``summary.json`` holds ``runs``):

  python scripts/plot.py --sweep runs/sweep [--out sensitivity.png] [--table best.md] [--top 10]

draws one panel per swept hyperparameter: the final greedy return (mean over
seeds, 95% bootstrap CI over seeds) against its value, one line per setting
of the other swept fields (or, past 6 of them, pooled over the others); a log
axis when the values span more than a factor of 20. The table ranks the
configurations by their mean over seeds.

Needs matplotlib (``pip install -e .[plot]``); does not import JAX.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import stats


class Curve(NamedTuple):
    """One run's metric over training.

    Attributes:
      label: legend/table name.
      steps: env steps per seed at each logged point, increasing. [T]
      values: the metric per point and seed, NaN where missing. [T, S]
    """

    label: str
    steps: np.ndarray
    values: np.ndarray


class Summary(NamedTuple):
    """Final performance of one run (the metric at its last logged step)."""

    label: str
    seeds: int
    env_steps: int
    mean: float
    iqm: float
    iqm_is_mean: bool
    min: float
    max: float
    ci_low: float
    ci_high: float


# ---- summaries ---------------------------------------------------------------


def summarize(curve: Curve, **bootstrap_kwargs) -> Summary:
    """The metric at the run's last logged step, summarized over seeds."""
    last = curve.values[-1]
    finite = stats.finite(last)
    low, high = stats.mean_ci(last, **bootstrap_kwargs)
    return Summary(
        label=curve.label,
        seeds=int(last.size),
        env_steps=int(curve.steps[-1]),
        mean=float(finite.mean()) if finite.size else math.nan,
        iqm=stats.iqm(last),
        iqm_is_mean=finite.size < 4,
        min=float(finite.min()) if finite.size else math.nan,
        max=float(finite.max()) if finite.size else math.nan,
        ci_low=float(low),
        ci_high=float(high),
    )


# ---- loading -----------------------------------------------------------------


def read_records(path: Path) -> list[dict]:
    """The readable JSON lines of a ``metrics.jsonl`` (a line cut by a crash is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "env_steps" in record:
            records.append(record)
    return records


def _per_seed(value) -> list[float]:
    value = value if isinstance(value, list) else [value]
    return [math.nan if v is None else float(v) for v in value]


def load_curve(run_dir: Path, metric: str = "eval_return", label: str | None = None) -> Curve:
    """Loads ``metric`` from ``run_dir/metrics.jsonl``, keeping only lines that have it.

    A step logged twice (a restarted run) keeps its last line.

    Raises:
      ValueError: no metrics file, or no line with ``metric``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise ValueError(f"{run_dir} has no metrics.jsonl")
    by_step = {
        int(r["env_steps"]): _per_seed(r[metric])
        for r in read_records(path)
        if r.get(metric) is not None
    }
    if not by_step:
        hint = " (try --metric train_return)" if metric == "eval_return" else ""
        raise ValueError(f"no '{metric}' values in {path}{hint}")
    steps = np.array(sorted(by_step), dtype=np.int64)
    width = max(len(v) for v in by_step.values())
    values = np.full((steps.size, width), np.nan)
    for i, step in enumerate(steps):
        row = by_step[int(step)]
        values[i, : len(row)] = row
    return Curve(label or default_label(run_dir), steps, values)


def load_pooled(spec: str, metric: str = "eval_return", label: str | None = None) -> Curve:
    """A curve of ``DIR`` or of ``DIR+DIR+...`` (seeds pooled, on the steps all share).

    Raises:
      ValueError: as ``load_curve``, or pooled runs that share no logged step.
    """
    parts = [Path(p) for p in str(spec).split("+")]
    curves = [load_curve(p, metric) for p in parts]
    steps = curves[0].steps
    for c in curves[1:]:
        steps = np.intersect1d(steps, c.steps)
    if steps.size == 0:
        raise ValueError(f"{spec}: the pooled runs share no logged env step")
    values = np.concatenate([c.values[np.searchsorted(c.steps, steps)] for c in curves], axis=1)
    return Curve(label or curves[0].label, steps, values)


def default_label(run_dir: Path) -> str:
    """The run directory's name, preceded by the env name if the name lacks it."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    try:
        env = json.loads((run_dir / "config.json").read_text()).get("env_name", "")
    except (OSError, ValueError, AttributeError):
        env = ""
    return name if not env or env.lower() in name.lower() else f"{env} ({name})"


# ---- output ------------------------------------------------------------------


def _num(value: float, spec: str = ".2f") -> str:
    return "-" if not math.isfinite(value) else format(value, spec)


def format_table(summaries: list[Summary]) -> str:
    """A Markdown table of final performance, one row per run."""
    lines = [
        "| run | seeds | env steps | final mean | IQM | min | max | 95% CI |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        iqm_text = _num(s.iqm) + (" (mean)" if s.iqm_is_mean else "")
        ci = "-" if not math.isfinite(s.ci_low) else f"[{s.ci_low:.2f}, {s.ci_high:.2f}]"
        lines.append(
            f"| {s.label} | {s.seeds} | {s.env_steps:,d} | {_num(s.mean)} | {iqm_text} "
            f"| {_num(s.min)} | {_num(s.max)} | {ci} |"
        )
    if any(s.iqm_is_mean for s in summaries):
        lines += [
            "",
            "IQM (mean): fewer than 4 seeds, so nothing is trimmed; "
            "a bootstrap CI over so few seeds is too narrow to trust.",
        ]
    return "\n".join(lines) + "\n"


def plot_curves(curves: list[Curve], out: Path, *, metric: str, title: str = "") -> None:
    """Draws mean-over-seeds lines with 95% bootstrap bands and saves a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for curve in curves:
        with np.errstate(invalid="ignore"):
            counts = np.isfinite(curve.values).sum(-1)
            mean = np.where(counts > 0, np.nansum(curve.values, -1) / np.maximum(counts, 1), np.nan)
        seeds = curve.values.shape[-1]
        (line,) = ax.plot(curve.steps, mean, label=f"{curve.label} ({seeds} seeds)")
        low, high = stats.mean_ci(curve.values)
        band = np.isfinite(low) & np.isfinite(high)
        ax.fill_between(curve.steps, low, high, where=band, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("env steps (per seed)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or f"{metric.replace('_', ' ')}: mean over seeds, 95% bootstrap CI")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.savefig(out)


# ---- sweeps -------------------------------------------------------------------

_RUN_KEYS = ("run", "seed", "eval_return", "params_digest", "command")
MAX_LINES = 6


class SweepPoint(NamedTuple):
    """One configuration of a sweep: its swept values and final returns over seeds."""

    values: dict
    returns: np.ndarray  # [S]
    mean: float
    ci_low: float
    ci_high: float


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def load_sweep(run_dir: Path) -> tuple[list[str], list[SweepPoint]]:
    """The swept fields and one ``SweepPoint`` per configuration of the sweep whose
    ``summary.json`` is in ``run_dir``, in sweep order.

    Raises:
      ValueError: no summary, or a summary without ``runs``.
    """
    path = Path(run_dir) / "summary.json"
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError):
        raise ValueError(f"{path}: no sweep summary (a finished --sweep writes one)") from None
    fields = [k for k in runs[0] if k not in _RUN_KEYS]
    groups: dict[tuple, list] = {}
    for r in runs:
        key = tuple(_hashable(r[f]) for f in fields)
        ret = math.nan if r.get("eval_return") is None else float(r["eval_return"])
        groups.setdefault(key, []).append(ret)
    points = []
    for key, returns in groups.items():
        returns = np.asarray(returns)
        low, high = stats.mean_ci(returns)
        finite = stats.finite(returns)
        mean = float(finite.mean()) if finite.size else math.nan
        points.append(SweepPoint(dict(zip(fields, key, strict=True)), returns, mean,
                                 float(low), float(high)))  # fmt: skip
    return fields, points


def _text(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return format(value, "g") if isinstance(value, float) else str(value)


def best_table(fields: list[str], points: list[SweepPoint], top: int = 10) -> str:
    """Markdown: the ``top`` configurations by mean final return over seeds."""
    ranked = sorted(points, key=lambda p: -p.mean if math.isfinite(p.mean) else math.inf)
    lines = [
        "| rank | " + " | ".join(fields) + " | seeds | final mean | 95% CI | min | max |",
        "|---:|" + "---:|" * len(fields) + "---:|---:|---|---:|---:|",
    ]
    for i, p in enumerate(ranked[:top], 1):
        ci = "-" if not math.isfinite(p.ci_low) else f"[{p.ci_low:.2f}, {p.ci_high:.2f}]"
        finite = stats.finite(p.returns)
        lo, hi = (finite.min(), finite.max()) if finite.size else (math.nan, math.nan)
        values = " | ".join(_text(p.values[f]) for f in fields)
        numbers = f"{p.returns.size} | {_num(p.mean)} | {ci} | {_num(lo)} | {_num(hi)}"
        lines.append(f"| {i} | {values} | {numbers} |")
    return "\n".join(lines) + "\n"


def sensitivity(field: str, fields: list[str], points: list[SweepPoint]) -> dict:
    """``{label: (x [V], mean [V], low [V], high [V])}``: the final return against
    ``field``, one line per setting of the other fields (past ``MAX_LINES`` of them,
    or when no value repeats (random search), one line pooled over the others)."""
    others = [f for f in fields if f != field]
    settings = {tuple(p.values[f] for f in others) for p in points}
    xs = sorted({p.values[field] for p in points}, key=lambda v: (isinstance(v, str), v))
    pooled = len(settings) > MAX_LINES or len(xs) == len(points) > 1 and others
    lines = {}
    groups = {"all": points} if pooled or not others else {
        ", ".join(f"{f}={_text(v)}" for f, v in zip(others, s, strict=True)):
        [p for p in points if tuple(p.values[f] for f in others) == s] for s in sorted(settings)
    }  # fmt: skip
    for label, group in groups.items():
        row = []
        for x in xs:
            returns = [r for p in group if p.values[field] == x for r in p.returns]
            if not returns:
                continue
            low, high = stats.mean_ci(returns)
            finite = stats.finite(returns)
            row.append((x, finite.mean() if finite.size else math.nan, float(low), float(high)))
        x, mean, low, high = zip(*row, strict=True)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in x)
        x = np.array(x, dtype=float) if numeric else np.array([_text(v) for v in x], dtype=object)
        lines[label] = (x, np.array(mean), np.array(low), np.array(high))
    return lines


def plot_sensitivity(fields: list[str], points: list[SweepPoint], out: Path, title="") -> None:
    """One panel per swept field: final greedy return (mean, 95% CI over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(fields), 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    for ax, field in zip(axes, fields, strict=True):
        lines = sensitivity(field, fields, points)
        categorical = False
        for label, (x, mean, low, high) in lines.items():
            categorical = x.dtype.kind not in "if"
            xp = np.arange(x.size) if categorical else x
            (line,) = ax.plot(xp, mean, "o-", label=label)
            band = np.isfinite(low) & np.isfinite(high)
            ax.fill_between(xp, low, high, where=band, color=line.get_color(), alpha=0.15)
            if categorical:
                ax.set_xticks(xp, list(x))
        if not categorical:
            values = np.array([p.values[field] for p in points], dtype=float)
            if values.min() > 0 and values.max() / values.min() > 4:
                ticks = np.unique(values)
                ax.set_xscale("log")
                ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
                ax.minorticks_off()
        ax.set_xlabel(field)
        ax.set_ylabel("final greedy return")
        ax.grid(True, alpha=0.3)
        if len(lines) > 1:
            ax.legend(loc="best", fontsize="small")
    seeds = max(p.returns.size for p in points)
    fig.suptitle(title or f"sensitivity: mean over {seeds} seeds, 95% bootstrap CI")
    fig.savefig(out)


def main_sweep(args) -> int:
    try:
        fields, points = load_sweep(args.dirs[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = best_table(fields, points, args.top)
    print(table, end="")
    if args.table:
        args.table.write_text(table)
    plot_sensitivity(fields, points, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run directories (DIR+DIR+... pools seeds)")
    parser.add_argument("--sweep", action="store_true", help="DIR is a sweep: sensitivity plot")
    parser.add_argument("--top", type=int, default=10, help="--sweep: configurations in the table")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="PNG to write (default: curves.png, or sensitivity.png with --sweep, in the "
        "first run's directory)",
    )  # fmt: skip
    parser.add_argument("--labels", default="", help="comma-separated legend labels")
    parser.add_argument("--metric", default="eval_return", help="per-seed metric to plot")
    parser.add_argument("--table", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--title", default="", help="plot title")
    args = parser.parse_args(argv)
    if args.out is None:  # next to the (first) run, never into the working directory
        first = Path(args.dirs[0].split("+")[0])
        args.out = first / ("sensitivity.png" if args.sweep else "curves.png")
    if args.sweep:
        return main_sweep(args)

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else []
    if labels and len(labels) != len(args.dirs):
        print(f"error: {len(labels)} labels for {len(args.dirs)} runs", file=sys.stderr)
        return 2
    try:
        curves = [
            load_pooled(d, args.metric, labels[i] if labels else None)
            for i, d in enumerate(args.dirs)
        ]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = format_table([summarize(c) for c in curves])
    print(table, end="")
    if args.table:
        args.table.write_text(table)
    plot_curves(curves, args.out, metric=args.metric, title=args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
