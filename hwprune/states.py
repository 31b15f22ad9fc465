"""Verdicts per machine state: which of the states a measurement saw a latency verdict is taken in.

A measurement on a machine that switches speed states carries each sample's state
(:mod:`profilers.machine_state`). A budget is a claim about the device, so it must hold in every
state the device was seen in, not in the mixture a p50 happens to land in. :func:`view` splits
a measurement's timings by state, keeps the states in which every model has enough samples to
judge, and returns the timings restricted to the *governing* state: the one in which the
models use the most of the budget (for a speed-up budget, where pruned/dense is highest). The
callers (:class:`hwprune.certify.Certifier`) then decide on those timings exactly as before; with
one state the view is the measurement itself.

Example:
    >>> v = view(timings, budget, cfg)                 # doctest: +SKIP
    >>> v.probe_us, [s.utilisation for s in v.states]   # doctest: +SKIP
    (53.1, [0.81, 0.97])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from profilers.config import DeviceConfig
from profilers.machine_state import by_state, find_state

if TYPE_CHECKING:
    from hwprune.certify import LatencyBudget

Timing = dict[str, Any]
DENSE_KEY = "dense"
# A state judges a verdict only with at least this many samples of every model in it: two
# bursts' worth; fewer give an upper bound too wide to mean anything (and a state the machine
# visited for a moment is reported, not used).
MIN_STATE_SAMPLES = 40


@dataclass
class StateFigures:
    """One machine state of a measurement: its probe time, its share of the samples, each model's statistic."""

    probe_us: float
    share: float                     # of the dense model's samples
    stat_ms: dict[str, float]
    utilisation: float | None        # the highest model statistic / budget in this state

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StateView:
    """A measurement's timings as a verdict sees them: restricted to the governing state when there are several."""

    timings: dict[str, Timing]
    probe_us: float | None = None                 # the governing state's probe µs; None: one state
    states: list[StateFigures] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"governing_probe_us": self.probe_us, "states": [s.to_dict() for s in self.states]}


def in_state(timing: Timing, samples_ms: list[float], probe_us: float, cfg: DeviceConfig) -> Timing:
    """A timing summary over one state's samples, labelled as that state."""
    from profilers.stats import summarize

    t = summarize(samples_ms, cfg.statistic, cfg.confidence, cfg.cv_threshold, cfg.rel_ci,
                  total_s=timing.get("total_s", 0.0) * len(samples_ms) / max(1, len(timing["samples_ms"])))
    t.state_probe_us, t.sample_states = [probe_us], [0] * len(samples_ms)
    return t.to_dict()


def judgeable(timing: Timing, min_samples: int = MIN_STATE_SAMPLES) -> dict[float, list[float]]:
    """The probed states of ``timing`` with ``min_samples`` or more samples: {probe µs: samples}."""
    return {c: s for c, s in by_state(timing).items() if not math.isnan(c) and len(s) >= min_samples}


def common_states(timings: dict[str, Timing]) -> list[tuple[float, dict[str, list[float]]]]:
    """The states (by the dense model's probe µs) in which every model has ``MIN_STATE_SAMPLES``,
    each with every model's samples in it."""
    split = {k: by_state(t) for k, t in timings.items()}
    out = []
    for probe, dense_samples in split.get(DENSE_KEY, next(iter(split.values()))).items():
        per_key = {}
        for k, states in split.items():
            probes = list(states)
            i = find_state(probes, probe)
            if i is None or len(states[probes[i]]) < MIN_STATE_SAMPLES:
                break
            per_key[k] = states[probes[i]]
        else:
            out.append((probe, per_key))
    return sorted(out, key=lambda s: s[0])


def view(timings: dict[str, Timing], budget: "LatencyBudget", cfg: DeviceConfig,
         ignore: tuple[str, ...] = ()) -> StateView:
    """``timings`` restricted to the state in which the models (every key but the dense one and
    ``ignore``) use the most of ``budget``; unchanged when fewer than two states can judge."""
    from hwprune.measure import statistic_ms

    states = common_states(timings)
    if len(states) < 2:
        return StateView(dict(timings))
    n_dense = sum(len(s[1].get(DENSE_KEY, ())) for s in states) or 1
    figures = []
    for probe, per_key in states:
        summaries = {k: in_state(timings[k], s, probe, cfg) for k, s in per_key.items()}
        stats = {k: statistic_ms(t, cfg.statistic) for k, t in summaries.items()}
        figures.append((StateFigures(probe, len(per_key.get(DENSE_KEY, ())) / n_dense, stats,
                                     _utilisation(stats, budget, ignore)), summaries))
    if all(f[0].utilisation is None for f in figures):   # the dense model alone: nothing to govern
        return StateView(dict(timings), None, [f[0] for f in figures])
    worst = max(figures, key=lambda f: -math.inf if f[0].utilisation is None else f[0].utilisation)
    restricted = {k: worst[1].get(k, t) for k, t in timings.items()}
    return StateView(restricted, worst[0].probe_us, [f[0] for f in figures])


def _utilisation(stats: dict[str, float], budget: "LatencyBudget", ignore: tuple[str, ...]) -> float | None:
    """The highest statistic among the models over the budget in one state (without a budget,
    over the dense model: the slowest-relative state still governs)."""
    models = [v for k, v in stats.items() if k != DENSE_KEY and k not in ignore]
    dense = stats.get(DENSE_KEY)
    if not models or (dense is None and budget.latency_ms is None):
        return None
    limit = budget.ms(dense) if budget.given else dense
    return max(models) / limit


def state_timings(timing: Timing, cfg: DeviceConfig) -> list[dict[str, Any]]:
    """One model's timing per machine state, fastest first: each state's probe µs, its share of the
    samples and its summary (no samples); empty when fewer than two states have enough samples
    (or the timing kept no samples)."""
    if not timing.get("samples_ms"):
        return []
    states = judgeable(timing)
    if len(states) < 2:
        return []
    n = len(timing["samples_ms"]) or 1
    return [{"probe_us": c, "share": len(v) / n,
             "timing": {k: x for k, x in in_state(timing, v, c, cfg).items() if k not in ("samples_ms", "sample_states")}}
            for c, v in sorted(states.items())]


def quickest_ms(timing: Timing, cfg: DeviceConfig) -> float:
    """The statistic in the fastest state with enough samples (the whole timing's with one state):
    how fast the machine can run this model, for telling a busy moment from a slow state."""
    from hwprune.measure import statistic_ms

    states = judgeable(timing)
    if len(states) < 2:
        return statistic_ms(timing, cfg.statistic)
    fastest = min(states)
    return statistic_ms(in_state(timing, states[fastest], fastest, cfg), cfg.statistic)
