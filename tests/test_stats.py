"""scripts/stats.py against numbers computed directly, by hand or with NumPy/SciPy loops.

rliable's own functions are compared where rliable is installed (its ``metrics``
module; its bootstrap needs ``arch``, which does not import beside pandas 3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import stats


def test_iqm_matches_hand_values():
    x = np.array([9.0, 1.0, 5.0, 3.0, 7.0, 100.0, -50.0, 4.0])  # 8 values: drop 2 each end
    assert stats.iqm(x) == pytest.approx(np.mean([3.0, 4.0, 5.0, 7.0]))
    y = np.array([1.0, 2.0, 3.0, 4.0, 50.0])  # 5 values: drop 1 each end
    assert stats.iqm(y) == pytest.approx(3.0)
    assert stats.iqm([4.0, 1.0, 2.0, 3.0]) == pytest.approx(2.5)
    assert stats.iqm([1.0, 2.0, 9.0]) == pytest.approx(4.0)  # < 4 values: the plain mean
    assert stats.iqm([1.0, np.nan, 3.0]) == pytest.approx(2.0)
    assert math.isnan(stats.iqm([np.nan]))


def test_iqm_of_runs_and_tasks_is_scipy_trim_mean_of_all_scores():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for shape in ((4, 1), (3, 5), (7, 2), (10, 3)):
        x = rng.normal(size=shape)
        assert stats.iqm_of(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25, axis=None))
    batch = rng.normal(size=(6, 3, 5))  # leading axis: one IQM per score array
    expected = [scipy_stats.trim_mean(b, 0.25, axis=None) for b in batch]
    np.testing.assert_allclose(stats.iqm_of(batch), expected)


def test_aggregates_match_rliable_metrics():
    metrics = pytest.importorskip("rliable.metrics")
    x = np.random.default_rng(2).gamma(2.0, size=(5, 7))
    assert stats.iqm_of(x) == pytest.approx(metrics.aggregate_iqm(x))
    assert stats.mean_of(x) == pytest.approx(metrics.aggregate_mean(x))
    assert stats.median_of(x) == pytest.approx(metrics.aggregate_median(x))


def test_mean_and_median_are_of_per_task_means():
    x = np.array([[1.0, 10.0, 0.0], [3.0, 20.0, 6.0]])  # 2 runs x 3 tasks
    assert stats.mean_of(x) == pytest.approx((2.0 + 15.0 + 3.0) / 3)
    assert stats.median_of(x) == pytest.approx(3.0)


def test_stratified_bootstrap_resamples_runs_within_each_task():
    x = np.array([[1.0, 10.0, 100.0], [2.0, 20.0, 200.0], [3.0, 30.0, 300.0]])  # [R=3, T=3]
    r = stats.resamples(x, num_resamples=400, seed=5)
    assert r.shape == (400, 3, 3)
    for t in range(3):  # every resampled score of task t is one of task t's runs
        assert set(np.unique(r[:, :, t])) <= set(x[:, t])
    idx = np.random.default_rng(5).integers(0, 3, size=(400, 3, 3))
    for b in (0, 17, 399):
        expected = np.array([[x[idx[b, i, t], t] for t in range(3)] for i in range(3)])
        np.testing.assert_array_equal(r[b], expected)


def test_interval_is_the_percentile_interval_of_explicit_resamples():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6))
    est = stats.interval(x, stats.iqm_of, num_resamples=300, confidence=0.9, seed=7)
    idx = np.random.default_rng(7).integers(0, 4, size=(300, 4, 6))
    values = []
    for b in range(300):  # one resample at a time, each task drawing its own runs
        sample = np.stack([x[idx[b, :, t], t] for t in range(6)], axis=1)
        values.append(np.mean(np.sort(sample.ravel())[6:18]))  # 24 scores: drop 6 each end
    assert est.point == pytest.approx(stats.iqm_of(x))
    assert est.low == pytest.approx(np.quantile(values, 0.05))
    assert est.high == pytest.approx(np.quantile(values, 0.95))


def test_tasks_with_one_value_each_have_no_spread():
    x = np.tile(np.array([[1.0, 2.0, 3.0, 4.0]]), (3, 1))  # every run the same per task
    est = stats.interval(x, stats.iqm_of, num_resamples=200)
    assert est.low == est.high == est.point == pytest.approx(2.5)


def test_score_distribution_and_profile():
    x = np.array([[0.0, 0.5, 1.0], [2.0, 0.5, 1.5]])  # 6 scores
    taus = np.array([-1.0, 0.5, 1.0, 2.0])
    # Strictly above tau, as rliable's run_score_deviation (scores > tau).
    np.testing.assert_allclose(stats.score_distribution(x, taus), [1.0, 3 / 6, 2 / 6, 0.0])
    prof = stats.performance_profile(x, taus, num_resamples=500, seed=1)
    np.testing.assert_allclose(prof.point, [1.0, 3 / 6, 2 / 6, 0.0])
    assert np.all(prof.low <= prof.point) and np.all(prof.point <= prof.high)
    assert prof.low[0] == prof.high[0] == 1.0 and prof.high[-1] == 0.0  # no spread there


def test_mean_ci_matches_explicit_resampling():
    x = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    low, high = stats.mean_ci(x, num_resamples=500, confidence=0.9, seed=3)
    idx = np.random.default_rng(3).integers(0, 5, size=(500, 5))
    means = x[idx].mean(axis=1)
    assert low == pytest.approx(np.quantile(means, 0.05))
    assert high == pytest.approx(np.quantile(means, 0.95))
    assert x.min() < low < x.mean() < high < x.max()


def test_mean_ci_over_time_and_with_missing_seeds():
    x = np.array([[1.0, 2.0, 3.0], [np.nan, 4.0, 8.0], [np.nan, np.nan, 5.0]])
    low, high = stats.mean_ci(x, num_resamples=300, seed=0)
    idx = np.random.default_rng(0).integers(0, 3, size=(300, 3))
    ref = np.quantile(x[0][idx].mean(axis=1), [0.025, 0.975])
    assert [low[0], high[0]] == pytest.approx(ref)
    assert 4.0 <= low[1] <= high[1] <= 8.0  # NaN seeds ignored in every resample
    assert math.isnan(low[2]) and math.isnan(high[2])  # one finite seed: no interval
    again = stats.mean_ci(x, num_resamples=300, seed=0)
    np.testing.assert_array_equal(again[0], low)  # fixed seed: reproducible


def test_intervals_and_profiles_agree_with_rliable_library():
    try:  # rliable's bootstrap needs arch, which fails to import beside pandas 3
        from rliable import library, metrics
    except Exception as e:  # ImportError, or arch's TypeError at import
        pytest.skip(f"rliable.library does not import: {type(e).__name__}")
    x = np.random.default_rng(4).gamma(2.0, size=(3, 5))  # 3 runs x 5 tasks
    reps = 10_000
    point, ci = library.get_interval_estimates(
        {"x": x}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps,
        random_state=np.random.RandomState(0),
    )  # fmt: skip
    est = stats.interval(x, stats.iqm_of, num_resamples=reps)
    assert est.point == pytest.approx(point["x"][0])
    # Other RNG streams: the percentile endpoints agree to bootstrap noise.
    assert est.low == pytest.approx(ci["x"][0][0], abs=0.05)
    assert est.high == pytest.approx(ci["x"][1][0], abs=0.05)
    taus = np.linspace(0.0, x.max(), 9)
    profile, _ = library.create_performance_profile({"x": x}, taus, reps=10)
    np.testing.assert_allclose(stats.score_distribution(x, taus), profile["x"])
