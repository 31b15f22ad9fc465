"""Interleaved A/B timing: several models measured in alternating bursts to cancel drift.

Measuring model A for a second and then B for a second lets anything that drifts in between
(thermal state, a neighbour's load, frequency scaling) masquerade as a difference between
them. Alternating short bursts (A B A B ...) exposes both to the same conditions.

A machine that switches between discrete speed states is another matter: the ratio of two
models differs from state to state, and the share of time in each moves the pooled figures.
So a probe is timed before every burst (:mod:`profilers.machine_state`) and each sample is
labelled with the state it ran in; a verdict can then be taken state by state.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from profilers.machine_state import StateSplit, burst_labels, probe_us, split_states
from profilers.runner import BaseRunner
from profilers.stats import TimingStats, summarize


def measure_interleaved(runners: Sequence[BaseRunner], *, burst: int = 20, warmup: int | None = None,
                        min_repeats: int | None = None, max_seconds: float | None = None,
                        statistic: str | None = None, rel_ci: float | None = None,
                        confidence: float | None = None, min_seconds: float | None = None,
                        on_round: Callable[[int], None] | None = None,
                        probe: Callable[[], float] = probe_us) -> list[TimingStats]:
    """Time active ``runners`` in alternating bursts until every statistic has converged.

    Defaults come from the first runner's device config. Stops when each runner has at
    least ``min_repeats`` samples and its CI is within ``±rel_ci``, or after ``max_seconds``
    (of timed bursts, for all runners together). ``on_round(n_converged)`` is called after
    every round. Each summary carries its samples' machine states (``state_probe_us``,
    ``sample_states``), read from ``probe()`` before every burst and after the last.
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
    probes: list[float] = [probe()]    # probes[j] before burst j, probes[j + 1] after it
    burst_of: list[int] = []              # the runner of burst j
    start = time.perf_counter()
    while True:
        for i, (r, s) in enumerate(zip(runners, samples)):
            for _ in range(burst):
                s.append(r.time_once_ms())
            burst_of.append(i)
            probes.append(probe())
        elapsed = time.perf_counter() - start
        converged = sum(summarize(s, statistic, confidence, c.cv_threshold, rel_ci).converged for s in samples)
        if on_round is not None:
            on_round(converged)
        if min(len(s) for s in samples) >= min_repeats:
            if (converged == len(samples) and elapsed >= min_seconds) or elapsed >= max_seconds:
                break
    # Each runner's total_s is the time spent inside its own timed calls, not the whole
    # round robin's: summed over runners, it is the time actually spent measuring.
    stats = [summarize(s, statistic, confidence, c.cv_threshold, rel_ci, total_s=sum(s) / 1e3) for s in samples]
    _label_states(stats, split_states(probes), probes, burst_of, burst)
    return stats


def _label_states(stats: list[TimingStats], split: StateSplit, probes: list[float], burst_of: list[int],
                  burst: int) -> None:
    """Give each summary its samples' states: every sample takes its burst's label."""
    states = [split.state_of(p) for p in probes]
    for st, labels in zip(stats, burst_labels(states, burst_of, burst, len(stats))):
        st.state_probe_us, st.sample_states = list(split.centers_us), labels
