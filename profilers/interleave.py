"""Interleaved A/B timing: several models measured in alternating bursts to cancel drift.

Measuring model A for a second and then B for a second lets anything that drifts in between
(thermal state, a neighbour's load, frequency scaling) masquerade as a difference between
them. Alternating short bursts (A B A B ...) exposes both to the same conditions.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from profilers.runner import BaseRunner
from profilers.stats import TimingStats, summarize


def measure_interleaved(runners: Sequence[BaseRunner], *, burst: int = 20, warmup: int | None = None,
                        min_repeats: int | None = None, max_seconds: float | None = None,
                        statistic: str | None = None, rel_ci: float | None = None,
                        confidence: float | None = None, min_seconds: float | None = None,
                        on_round: Callable[[int], None] | None = None) -> list[TimingStats]:
    """Time active ``runners`` in alternating bursts until every statistic has converged.

    Defaults come from the first runner's device config. Stops when each runner has at
    least ``min_repeats`` samples and its CI is within ``±rel_ci``, or after ``max_seconds``
    (of timed bursts, for all runners together). ``on_round(n_converged)`` is called after
    every round.
    """
    c = runners[0].config
    warmup = c.warmup if warmup is None else warmup
    min_repeats = c.min_repeats if min_repeats is None else min_repeats
    max_seconds = c.max_seconds * len(runners) if max_seconds is None else max_seconds
    statistic = statistic or c.statistic
    rel_ci = c.rel_ci if rel_ci is None else rel_ci
    confidence = c.confidence if confidence is None else confidence
    min_seconds = c.min_seconds * len(runners) if min_seconds is None else min_seconds

    for r in runners:
        for _ in range(warmup):
            r.time_once_ms()
    samples: list[list[float]] = [[] for _ in runners]
    start = time.perf_counter()
    while True:
        for r, s in zip(runners, samples):
            for _ in range(burst):
                s.append(r.time_once_ms())
        elapsed = time.perf_counter() - start
        converged = sum(summarize(s, statistic, confidence, c.cv_threshold, rel_ci).converged for s in samples)
        if on_round is not None:
            on_round(converged)
        if min(len(s) for s in samples) >= min_repeats:
            if (converged == len(samples) and elapsed >= min_seconds) or elapsed >= max_seconds:
                break
    # Each runner's total_s is the time spent inside its own timed calls, not the whole
    # round robin's: summed over runners, it is the time actually spent measuring.
    return [summarize(s, statistic, confidence, c.cv_threshold, rel_ci, total_s=sum(s) / 1e3) for s in samples]
