"""Timing statistics: interval coverage, agreement with numpy/scipy, and the adaptive loop."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from scipy import stats as sps

from profilers import stats
from profilers.stats import (TimingStats, mean_interval, measure, quantile_interval, statistic_interval,
                             summarize, upper_bound)


def test_quantile_interval_covers_the_true_median_about_95_percent():
    rng = np.random.default_rng(1234)
    true_median = math.log(2)  # Exponential(1), skewed like latencies
    trials, n = 400, 100
    hits = 0
    for _ in range(trials):
        lo, hi = quantile_interval(rng.exponential(1.0, n), 0.5, confidence=0.95)
        assert lo <= hi
        hits += lo <= true_median <= hi
    assert 0.90 <= hits / trials <= 0.99


def test_quantile_interval_covers_p90_of_a_lognormal():
    rng = np.random.default_rng(7)
    true_p90 = math.exp(0.3 * 1.2815515655446004)  # lognormal(0, 0.3)
    hits = sum(lo <= true_p90 <= hi for lo, hi in
               (quantile_interval(rng.lognormal(0, 0.3, 300), 0.9) for _ in range(400)))
    assert 0.90 <= hits / 400 <= 0.99


def test_one_sided_upper_bound_holds_about_95_percent():
    rng = np.random.default_rng(99)
    true_median = math.log(2)
    hits = sum(upper_bound(rng.exponential(1.0, 100), "p50") >= true_median for _ in range(400))
    assert 0.90 <= hits / 400 <= 0.99


def test_too_few_samples_give_an_unbounded_not_optimistic_interval():
    x = np.arange(1.0, 21.0)  # 20 samples cannot bound p99 from above at 95%
    lo, hi = quantile_interval(x, 0.99)
    assert hi == math.inf and lo <= 20.0
    assert upper_bound(x, "p99") == math.inf
    assert not summarize(x, "p99").converged
    lo, hi = quantile_interval([5.0, 6.0], 0.5)
    assert lo == -math.inf and hi == math.inf
    assert all(math.isnan(v) for v in quantile_interval([], 0.5))


def test_quantile_interval_narrows_with_more_samples():
    rng = np.random.default_rng(3)
    widths = []
    for n in (50, 500, 5000):
        lo, hi = quantile_interval(rng.exponential(1.0, n), 0.5)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_summarize_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0, 0.4, 1001)
    s = summarize(x, "p90", confidence=0.9)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    assert s.p50_ms == pytest.approx(p50) and s.p90_ms == pytest.approx(p90) and s.p99_ms == pytest.approx(p99)
    assert s.mean_ms == pytest.approx(x.mean()) and s.std_ms == pytest.approx(x.std(ddof=1))
    assert s.min_ms == pytest.approx(x.min())
    assert s.cv == pytest.approx(x.std(ddof=1) / x.mean())
    assert s.n == 1001 and s.statistic == "p90" and s.confidence == 0.9
    assert s.value() == s.p90_ms and s.value("mean") == s.mean_ms
    assert s.ci_low_ms <= s.p90_ms <= s.ci_high_ms
    assert (s.ci_low_ms, s.ci_high_ms) == statistic_interval(x, "p90", 0.9)


def test_summarize_rejects_empty_and_unknown_statistic():
    with pytest.raises(ValueError):
        summarize([], "p50")
    with pytest.raises(ValueError, match="unknown statistic"):
        summarize([1.0, 2.0], "median")


@pytest.mark.parametrize("n", [2, 3, 5, 10, 31, 100, 250, 2000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_interval_matches_scipy_t(n, confidence):
    x = np.random.default_rng(n).normal(10.0, 2.0, n)
    lo, hi = mean_interval(x, confidence)
    ref_lo, ref_hi = sps.t.interval(confidence, n - 1, loc=x.mean(), scale=sps.sem(x))
    assert lo == pytest.approx(ref_lo, rel=1e-3, abs=1e-3)
    assert hi == pytest.approx(ref_hi, rel=1e-3, abs=1e-3)
    # one-sided upper bound
    ref_upper = x.mean() + sps.t.ppf(confidence, n - 1) * sps.sem(x)
    assert upper_bound(x, "mean", confidence) == pytest.approx(ref_upper, rel=1e-3, abs=1e-3)


def test_mean_interval_degenerate_sizes():
    assert mean_interval([4.0]) == (4.0, 4.0)
    assert all(math.isnan(v) for v in mean_interval([]))


def test_timing_stats_round_trip():
    s = summarize([1.0, 1.1, 0.9, 1.05], "mean")
    assert TimingStats.from_dict(s.to_dict()) == s
    assert "samples_ms" not in s.to_dict(with_samples=False)


# -- the adaptive loop --------------------------------------------------------------------
class FakeClock:
    """Stands in for ``time`` inside profilers.stats: each timed call advances it by its sample."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Source:
    """A fake ``time_once_ms``: counts calls, advances the fake clock, returns given samples."""

    def __init__(self, clock, draw):
        self.clock, self.draw, self.calls, self.returned = clock, draw, 0, []

    def __call__(self):
        self.calls += 1
        v = float(self.draw())
        self.clock.now += v / 1e3
        self.returned.append(v)
        return v


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(stats, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def test_measure_stops_early_when_converged(clock):
    src = Source(clock, lambda: 2.0)
    s = measure(src, warmup=5, min_repeats=30, max_repeats=10000, max_seconds=1000.0)
    assert s.converged and s.stable and not s.remeasured
    assert s.n == 30 and src.calls == 35  # warm-up calls are not samples
    assert s.p50_ms == 2.0 and s.ci_low_ms == s.ci_high_ms == 2.0
    assert s.total_s == pytest.approx(30 * 2.0 / 1e3)


def test_measure_runs_to_max_seconds_when_noisy(clock):
    rng = np.random.default_rng(0)
    src = Source(clock, lambda: rng.uniform(0.5, 1.5))  # mean 1 ms, cv 0.29
    s = measure(src, warmup=0, min_repeats=20, max_repeats=10**9, max_seconds=0.5, rel_ci=1e-4,
                cv_threshold=10.0)
    assert not s.converged
    assert s.total_s == pytest.approx(0.5, abs=0.002)  # ~500 samples of ~1 ms
    assert 400 < s.n < 600 and src.calls == s.n


def test_measure_runs_to_max_repeats_when_noisy(clock):
    rng = np.random.default_rng(0)
    src = Source(clock, lambda: rng.uniform(0.5, 1.5))
    s = measure(src, warmup=3, min_repeats=20, max_repeats=321, max_seconds=1e6, rel_ci=1e-4,
                cv_threshold=10.0)
    assert s.n == 321 and src.calls == 324 and not s.converged


def test_noisy_but_converging_stops_before_the_limits(clock):
    rng = np.random.default_rng(5)
    src = Source(clock, lambda: rng.normal(1.0, 0.05))
    s = measure(src, warmup=0, min_repeats=50, max_repeats=10**6, max_seconds=1e6, rel_ci=0.01)
    assert s.converged and 50 <= s.n < 5000
    assert (s.ci_high_ms - s.ci_low_ms) / 2 <= 0.01 * s.p50_ms


def test_unstable_measurement_is_measured_again_exactly_once(clock):
    rng = np.random.default_rng(11)
    src = Source(clock, lambda: rng.lognormal(0.0, 1.0))  # cv ~1.3, far above 0.25
    s = measure(src, warmup=4, min_repeats=40, max_repeats=40, max_seconds=1e6, cv_threshold=0.25)
    assert src.calls == 2 * (4 + 40)  # two passes, each with its warm-up, never a third
    assert s.remeasured and not s.stable
    assert s.n == 40
    assert s.total_s == pytest.approx(sum(src.returned[4:44] + src.returned[48:]) / 1e3)
    first = summarize(src.returned[4:44])
    second = summarize(src.returned[48:])
    assert s.cv == pytest.approx(min(first.cv, second.cv))  # the steadier pass is kept


def test_unstable_without_remeasure_is_one_pass(clock):
    rng = np.random.default_rng(11)
    src = Source(clock, lambda: rng.lognormal(0.0, 1.0))
    s = measure(src, warmup=0, min_repeats=40, max_repeats=40, max_seconds=1e6, remeasure_unstable=False)
    assert src.calls == 40 and not s.remeasured and not s.stable


def test_stable_measurement_is_not_repeated(clock):
    rng = np.random.default_rng(2)
    src = Source(clock, lambda: rng.normal(1.0, 0.02))
    s = measure(src, warmup=2, min_repeats=30, max_repeats=30, max_seconds=1e6)
    assert src.calls == 32 and s.stable and not s.remeasured


def test_measure_keeps_the_raw_samples(clock):
    values = iter([1.0, 3.0, 2.0, 5.0, 4.0] * 20)
    src = Source(clock, lambda: next(values))
    s = measure(src, warmup=0, min_repeats=10, max_repeats=10, max_seconds=1e6, cv_threshold=10.0)
    assert s.samples_ms == src.returned == [1.0, 3.0, 2.0, 5.0, 4.0, 1.0, 3.0, 2.0, 5.0, 4.0]
    assert s.to_dict()["samples_ms"] == s.samples_ms


def test_measure_with_the_real_clock():
    s = measure(lambda: 0.25, warmup=1, min_repeats=10, max_seconds=0.5)
    assert s.p50_ms == 0.25 and s.n == 10 and s.converged
