"""Timing statistics and the adaptive measurement loop (trtexec/MLPerf style, not a bare mean).

``measure`` warms up, then repeats until at least ``min_repeats`` samples are taken and the
confidence interval of the chosen statistic is within ``±rel_ci`` of it, or ``max_seconds``
is spent. Raw samples are kept. Percentile intervals are distribution-free (order
statistics of a binomial), the mean's is Student-t, so a skewed latency distribution does
not produce an optimistic interval.

Example:
    >>> import time
    >>> from profilers.stats import measure
    >>> stats = measure(lambda: 0.1, warmup=2, min_repeats=10, max_seconds=0.5)
    >>> stats.p50_ms
    0.1
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Callable

import numpy as np

_QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
# With a machine-state probe, ``measure`` reads it before every this many samples (a burst, as
# profilers.interleave alternates models in bursts of 20).
PROBE_EVERY = 20


def _z(confidence: float, two_sided: bool = True) -> float:
    tail = (1 - confidence) / 2 if two_sided else (1 - confidence)
    return NormalDist().inv_cdf(1 - tail)


def _t_cdf(t: float, dof: int) -> float:
    """Student-t CDF for integer ``dof`` in closed form (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan2(t, math.sqrt(dof))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if dof % 2 == 1:
        series, term = 0.0, 1.0
        if dof > 1:
            series = 1.0
            for j in range(1, (dof - 1) // 2):
                term *= 2 * j / (2 * j + 1) * c2
                series += term
        a = 2 / math.pi * (theta + s * math.cos(theta) * series)
    else:
        series, term = 1.0, 1.0
        for j in range(1, dof // 2):
            term *= (2 * j - 1) / (2 * j) * c2
            series += term
        a = s * series
    return 0.5 + a / 2


def _t_quantile(p: float, dof: int) -> float:
    """Student-t quantile without scipy (devices have numpy only).

    Up to 200 degrees of freedom the exact CDF is inverted by bisection; beyond, the
    Cornish-Fisher expansion is accurate to better than 1e-7 relative.
    """
    if dof <= 0:
        return float("inf")
    if p < 0.5:
        return -_t_quantile(1 - p, dof)
    z = NormalDist().inv_cdf(p)
    if dof > 200:
        g1 = (z**3 + z) / 4
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
        return z + g1 / dof + g2 / dof**2 + g3 / dof**3
    lo, hi = 0.0, max(2 * z, 1.0)
    while _t_cdf(hi, dof) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2


def quantile_interval(samples: np.ndarray, q: float, confidence: float = 0.95,
                      two_sided: bool = True) -> tuple[float, float]:
    """Distribution-free confidence interval of the q-quantile from order statistics.

    The rank of the q-quantile among n samples is Binomial(n, q); its normal approximation
    gives lower/upper ranks. When a rank falls outside the sample (too few samples for
    this quantile and confidence, e.g. p99 from 50 samples) that end is unbounded
    (``-inf``/``inf``) rather than the sample minimum/maximum, which would be optimistic.
    For a one-sided upper bound pass ``two_sided=False`` and read the second value.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        return (math.nan, math.nan)
    z = _z(confidence, two_sided)
    half = z * math.sqrt(n * q * (1 - q))
    lo = int(math.floor(n * q - half))
    hi = int(math.ceil(n * q + half))
    low = float(x[min(lo, n - 1)]) if lo >= 0 else -math.inf
    high = float(x[max(hi, 0)]) if hi <= n - 1 else math.inf
    return (low, high)


def mean_interval(samples: np.ndarray, confidence: float = 0.95,
                  two_sided: bool = True) -> tuple[float, float]:
    x = np.asarray(samples, dtype=float)
    n = len(x)
    if n < 2:
        m = float(x.mean()) if n else math.nan
        return (m, m)
    p = 1 - (1 - confidence) / 2 if two_sided else confidence
    half = _t_quantile(p, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    m = float(x.mean())
    return (m - half, m + half)


def statistic_interval(samples: np.ndarray, statistic: str, confidence: float = 0.95,
                       two_sided: bool = True) -> tuple[float, float]:
    if statistic == "mean":
        return mean_interval(samples, confidence, two_sided)
    if statistic not in _QUANTILES:
        raise ValueError(f"unknown statistic '{statistic}' (known: p50, p90, p99, mean)")
    return quantile_interval(samples, _QUANTILES[statistic], confidence, two_sided)


def upper_bound(samples: np.ndarray, statistic: str, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of ``statistic`` (used to certify a budget)."""
    return statistic_interval(samples, statistic, confidence, two_sided=False)[1]


@dataclass
class TimingStats:
    """Summary of one latency measurement, all times in milliseconds."""

    n: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    statistic: str
    ci_low_ms: float
    ci_high_ms: float
    confidence: float
    cv: float
    converged: bool
    stable: bool
    total_s: float
    samples_ms: list[float] = field(default_factory=list, repr=False)
    remeasured: bool = False
    # The machine states the samples ran in (profilers.machine_state): each state's probe µs,
    # and each sample's index into it (-1: a burst that straddled a switch). Empty: not probed.
    state_probe_us: list[float] = field(default_factory=list)
    sample_states: list[int] = field(default_factory=list, repr=False)

    def value(self, statistic: str | None = None) -> float:
        stat = statistic or self.statistic
        return {"p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms, "mean": self.mean_ms}[stat]

    @property
    def rel_ci(self) -> float:
        v = self.value()
        return (self.ci_high_ms - self.ci_low_ms) / 2 / v if v > 0 else math.inf

    def to_dict(self, with_samples: bool = True) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples_ms")
            d.pop("sample_states")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TimingStats":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def summarize(samples_ms, statistic: str = "p50", confidence: float = 0.95,
              cv_threshold: float = 0.25, rel_ci: float = 0.02, total_s: float = 0.0) -> TimingStats:
    """Summarise raw samples (ms) into a ``TimingStats``."""
    x = np.asarray(samples_ms, dtype=float)
    if len(x) == 0:
        raise ValueError("no samples to summarise")
    lo, hi = statistic_interval(x, statistic, confidence)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    value = {"p50": p50, "p90": p90, "p99": p99, "mean": mean}[statistic]
    cv = std / mean if mean > 0 else math.inf
    converged = value > 0 and (hi - lo) / 2 <= rel_ci * value
    return TimingStats(
        n=len(x), mean_ms=mean, std_ms=std, p50_ms=p50, p90_ms=p90, p99_ms=p99,
        min_ms=float(x.min()), statistic=statistic, ci_low_ms=lo, ci_high_ms=hi,
        confidence=confidence, cv=cv, converged=bool(converged), stable=bool(cv <= cv_threshold),
        total_s=total_s, samples_ms=[float(v) for v in x],
    )


def measure(time_once_ms: Callable[[], float], *, warmup: int = 20, min_repeats: int = 50,
            max_repeats: int = 100000, max_seconds: float = 2.0, statistic: str = "p50",
            rel_ci: float = 0.02, confidence: float = 0.95, cv_threshold: float = 0.25,
            remeasure_unstable: bool = True, min_seconds: float = 0.0,
            probe: Callable[[], float] | None = None) -> TimingStats:
    """Time ``time_once_ms`` adaptively and return its statistics.

    ``time_once_ms`` runs one inference and returns its duration in milliseconds (the
    runner decides what is timed: compute only, or end to end). After ``warmup`` untimed
    calls, samples are taken until ``min_repeats`` are in hand, ``min_seconds`` of timed
    phase have passed (like trtexec's ``--duration``: a sub-millisecond kernel otherwise
    converges on a few milliseconds of samples, all taken in one state of a noisy machine)
    and the ``confidence`` interval of ``statistic`` is within ``±rel_ci`` of it, or until
    ``max_seconds`` is spent — but never with fewer than ``min_repeats`` samples. A measurement whose coefficient of variation exceeds
    ``cv_threshold`` is flagged unstable and, once, measured again from scratch; the
    steadier of the two is kept and marked ``remeasured``. With ``probe``
    (:func:`profilers.machine_state.probe_us`) the machine state is read before every
    ``PROBE_EVERY`` samples and after the last, and the result carries each sample's state.
    """

    def one_pass() -> TimingStats:
        for _ in range(warmup):
            time_once_ms()
        samples: list[float] = []
        probes = [probe()] if probe is not None else []   # probes[j] before samples j*PROBE_EVERY ...
        start = time.perf_counter()
        deadline = start + max_seconds
        next_check = min_repeats
        while True:
            samples.append(float(time_once_ms()))
            n = len(samples)
            if probe is not None and n % PROBE_EVERY == 0:
                probes.append(probe())
            now = time.perf_counter()
            if n >= max_repeats or (now >= deadline and n >= min_repeats):
                break
            if n >= next_check and now - start >= min_seconds:
                # Checking the interval sorts the samples: do it on a geometric schedule so
                # the loop stays O(n log n) overall instead of O(n^2 log n).
                s = summarize(samples, statistic, confidence, cv_threshold, rel_ci)
                if s.converged:
                    break
                next_check = max(n + 1, int(n * 1.25))
        out = summarize(samples, statistic, confidence, cv_threshold, rel_ci, total_s=time.perf_counter() - start)
        if probe is not None:
            from profilers.machine_state import label_samples

            if len(samples) % PROBE_EVERY:
                probes.append(probe())
            out.state_probe_us, out.sample_states = label_samples(probes, len(samples), PROBE_EVERY)
        return out

    first = one_pass()
    if first.stable or not remeasure_unstable:
        return first
    second = one_pass()
    best = second if second.cv < first.cv else first
    best.remeasured = True
    best.total_s = first.total_s + second.total_s
    return best
