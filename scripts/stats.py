"""Aggregate statistics of scores over runs (seeds) and tasks (games), in NumPy.

The definitions of rliable (Agarwal et al., 2021, "Deep Reinforcement Learning at
the Edge of the Statistical Precipice", arXiv:2108.13264; its library
github.com/google-research/rliable), the field's standard, which every script
that aggregates scores uses from here:

* **IQM** (``rliable.metrics.aggregate_iqm``): the 25% trimmed mean of all
  scores of all runs and tasks, ``floor(n / 4)`` dropped from each end of the
  sorted ``n`` scores (``scipy.stats.trim_mean(x, 0.25)``). With fewer than 4
  scores nothing is dropped: it is the plain mean.
* **mean**, **median** (``aggregate_mean``, ``aggregate_median``): of the
  per-task means over runs.
* **stratified bootstrap** (``rliable.library.StratifiedBootstrap``,
  ``get_interval_estimates(method="percentile")``): each resample draws, for
  each task apart, as many runs as it has, with replacement; the interval is
  the percentile interval of the statistic over the resamples.
* **performance profile** (``create_performance_profile`` with
  ``use_score_distribution=True``): the fraction of all runs of all tasks whose
  score is above ``tau``, for each ``tau``, with a stratified-bootstrap band.

Implemented here rather than imported: rliable's bootstrap needs ``arch`` < 8,
which does not import next to pandas 3 (a dependency of MinAtar here). The
resamples are vectorized (one gather for all of them) and drawn from
``np.random.default_rng(seed)``, so a script's numbers are reproducible.
Scores are arrays ``[R, T, ...]`` (runs, tasks, then any axes that share each
resample's draw, such as the logged steps of a learning curve).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

NUM_RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


class Estimate(NamedTuple):
    """A point estimate and its confidence interval, each shaped alike."""

    point: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float


# ---- statistics of [..., R, T] score arrays (leading axes: resamples) ---------


def iqm_of(scores: np.ndarray) -> np.ndarray:
    """IQM over the last two axes (runs, tasks): [..., R, T] -> [...]."""
    x = np.asarray(scores, dtype=np.float64)
    flat = np.sort(x.reshape(*x.shape[:-2], -1), axis=-1)  # [..., R * T]
    k = flat.shape[-1] // 4
    return flat[..., k : flat.shape[-1] - k].mean(-1)


def mean_of(scores: np.ndarray) -> np.ndarray:
    """Mean of the per-task means: [..., R, T] -> [...]."""
    return np.asarray(scores, dtype=np.float64).mean(-2).mean(-1)


def median_of(scores: np.ndarray) -> np.ndarray:
    """Median of the per-task means: [..., R, T] -> [...]."""
    return np.median(np.asarray(scores, dtype=np.float64).mean(-2), axis=-1)


AGGREGATES = {"IQM": iqm_of, "mean": mean_of, "median": median_of}


def score_distribution(scores: np.ndarray, taus) -> np.ndarray:
    """Fraction of scores above each ``tau``, over runs and tasks: [..., R, T] -> [..., K]."""
    x = np.asarray(scores, dtype=np.float64)
    above = x[..., None] > np.asarray(taus, dtype=np.float64)  # [..., R, T, K]
    return above.mean(axis=(-3, -2))


# ---- the stratified bootstrap -------------------------------------------------


def resamples(scores, *, num_resamples: int = NUM_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Stratified bootstrap resamples of ``scores`` [R, T, ...]: [B, R, T, ...].

    Resample ``b`` takes, for each task ``t``, runs ``idx[b, :, t]`` of that task,
    ``idx = default_rng(seed).integers(0, R, size=(B, R, T))``; trailing axes
    share the draw.
    """
    x = np.asarray(scores, dtype=np.float64)
    runs, tasks = x.shape[:2]
    idx = np.random.default_rng(seed).integers(0, runs, size=(num_resamples, runs, tasks))
    return x[idx, np.arange(tasks)]


def interval(
    scores,
    statistic,
    *,
    num_resamples: int = NUM_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Estimate:
    """``statistic`` of ``scores`` and its percentile stratified-bootstrap interval.

    Args:
      scores: [R, T, ...] scores of R runs on each of T tasks.
      statistic: maps [B, R, T, ...] to its value for each of B score arrays
        (``iqm_of``, ``mean_of``, ``median_of``, ``score_distribution``).
      num_resamples: bootstrap resamples.
      confidence: coverage of the interval.
      seed: seed of the resampling RNG.

    Returns:
      An ``Estimate``; ``low`` and ``high`` are the ``(1 - confidence) / 2`` and
      ``(1 + confidence) / 2`` quantiles of the statistic over resamples (NaN
      values, such as a mean of no finite score, ignored).
    """
    stats = statistic(resamples(scores, num_resamples=num_resamples, seed=seed))
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(stats, [alpha, 1.0 - alpha], axis=0)
    point = statistic(np.asarray(scores, dtype=np.float64)[None])[0]
    return Estimate(point, low, high)


def performance_profile(scores, taus, **kwargs) -> Estimate:
    """The score distribution of ``scores`` [R, T] at ``taus`` [K], with its band [K]."""
    return interval(scores, lambda x: score_distribution(x, taus), **kwargs)


# ---- one task's seeds, possibly missing (learning curves, final returns) ------


def finite(values) -> np.ndarray:
    """The finite values, flattened."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def iqm(values) -> float:
    """IQM of the finite values (one task, or runs x tasks flattened); NaN if none."""
    x = finite(values)
    return float(iqm_of(x[:, None])) if x.size else math.nan


def mean_ci(values, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Stratified-bootstrap interval of the mean over seeds, one task, NaNs ignored.

    Args:
      values: per-seed values [S], or [..., S] (such as [T, S], a curve's logged
        steps): every index of the leading axes shares each resample's seeds.
      **kwargs: ``interval``'s.

    Returns:
      ``(low, high)``, each shaped like ``values`` without its last axis; NaN
      where fewer than 2 seeds have a finite value (no spread to resample).
    """
    x = np.asarray(values, dtype=np.float64)
    seeds_first = np.moveaxis(x, -1, 0)[:, None]  # [S, 1, ...]

    def nanmean(r):  # [B, S, 1, ...] -> [B, ...]
        ok = np.isfinite(r)
        counts = ok.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, np.where(ok, r, 0.0).sum(axis=(1, 2)) / counts, np.nan)

    enough = np.isfinite(x).sum(-1) >= 2
    est = interval(np.where(enough, seeds_first, 0.0), nanmean, **kwargs)
    return np.where(enough, est.low, np.nan), np.where(enough, est.high, np.nan)
