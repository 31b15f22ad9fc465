"""Machine speed states: a probe timed beside every burst of a measurement, and samples split by the state they ran in.

Some shared machines switch between discrete speed states, seconds or less apart, that no
interleaving cancels. On our 2-core cloud VM twenty tiny numpy operations take about 28 µs in
one state and about 53 µs in the other, and a pruned resnet20 runs 0.24 ms in the first and
0.44 ms in the second while the dense model slows far less: every kernel pays a few
microseconds more, so the *pruned/dense ratio* a speed-up budget is judged on depends on the
state. A p50 over a mixture of states lands in whichever state held most of the time, and that
share changes from one measurement to the next: ratios then move by a third between processes.

So :func:`profilers.interleave.measure_interleaved` times :func:`probe_us` before every burst
(and once after the last). :func:`split_states` finds whether the probe times fall in two
clearly separated groups (a threshold chosen as Otsu's, in log time). A burst whose probes on
both sides are in one group is labelled with that state (0 the faster, 1 the slower); a burst
that straddles a switch is labelled ``MIXED`` and counts only in the pooled figures. Each
timing keeps its samples' labels and the states' probe times, so a verdict can be taken state by
state (:func:`by_state`) and measurements taken minutes or processes apart can be pooled state
by state (:func:`merge`). On a steady machine there is one state and nothing changes.

Example:
    >>> split = split_states([28.0, 29.0, 28.5, 53.0, 54.0, 52.0, 28.2, 53.5])
    >>> [round(c) for c in split.centers_us]
    [28, 53]
    >>> split.label(28.4, 29.0), split.label(28.4, 53.0)
    (0, -1)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIXED = -1
# The probe: PROBE_OPS tiny numpy operations, timed PROBE_REPEATS times, the median kept. It is
# overhead-bound work with no model runtime in it (a few tens of µs a burst, against the
# milliseconds of a burst of 20 inferences), so it reads the machine's state, not the model's.
PROBE_OPS = 20
PROBE_REPEATS = 3
# Two groups of probe times are two states only when they are far apart and tight: the slower
# group's median at least MIN_STATE_RATIO times the faster's, the split explaining at least
# MIN_SEPARATION of the log-time variance, and each group at least MIN_SHARE of the probes
# (a handful of spikes is noise, not a state). Gradual drift passes none of these tests.
MIN_STATE_RATIO = 1.25
MIN_SEPARATION = 0.8
MIN_SHARE = 0.05
# Measurements taken apart are matched state by state when their probe medians are within this
# ratio of each other (halfway, in log time, to the smallest ratio that makes two states).
SAME_STATE_RATIO = math.sqrt(MIN_STATE_RATIO)

_probe_input = np.linspace(0.0, 1.0, 64, dtype=np.float32)


def probe_us() -> float:
    """The machine-state probe: median µs of PROBE_OPS tiny numpy operations."""
    a = _probe_input
    times = []
    for _ in range(PROBE_REPEATS):
        t0 = time.perf_counter()
        for _ in range(PROBE_OPS):
            a * 1.5 + a
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


@dataclass(frozen=True)
class StateSplit:
    """The states a sequence of probe times shows: their median probe µs (fastest first) and the threshold between them."""

    centers_us: list[float]
    threshold_us: float | None = None   # None: one state

    def state_of(self, probe: float) -> int:
        return 0 if self.threshold_us is None or probe <= self.threshold_us else 1

    def label(self, before_us: float, after_us: float) -> int:
        """A burst's state from the probes on either side of it; ``MIXED`` when they disagree."""
        a, b = self.state_of(before_us), self.state_of(after_us)
        return a if a == b else MIXED


def split_states(probes_us: Sequence[float]) -> StateSplit:
    """One state, or two when the probe times form two clearly separated groups (see the module text)."""
    x = np.log(np.asarray([p for p in probes_us if p > 0], dtype=float))
    if len(x) == 0:
        return StateSplit([])
    one = StateSplit([float(np.exp(np.median(x)))])
    n = len(x)
    min_group = max(2, math.ceil(MIN_SHARE * n))
    if n < 2 * min_group or float(x.var()) == 0.0:
        return one
    s = np.sort(x)
    best_k, best_between = 0, -1.0
    for k in range(min_group, n - min_group + 1):   # Otsu: the cut with the largest between-group variance
        lo, hi = s[:k], s[k:]
        between = (k / n) * ((n - k) / n) * float(hi.mean() - lo.mean()) ** 2
        if between > best_between:
            best_k, best_between = k, between
    lo, hi = s[:best_k], s[best_k:]
    fast, slow = float(np.exp(np.median(lo))), float(np.exp(np.median(hi)))
    if slow / fast < MIN_STATE_RATIO or best_between / float(x.var()) < MIN_SEPARATION:
        return one
    return StateSplit([fast, slow], float(np.exp((lo[-1] + hi[0]) / 2)))


def assign_states(known_us: Sequence[float], probes_us: Sequence[float]) -> tuple[list[float], list[int]]:
    """Each probe's state: the nearest of the states ``known_us`` (probe µs) when within
    ``MIN_STATE_RATIO`` of it, else one of the new states the other probes form (:func:`split_states`).
    Returns the states' probe µs (``known_us`` first) and each probe's index into them. A short
    measurement's few probes cannot split into states by themselves; against the states met
    before, each one can still be read."""
    known = [float(c) for c in known_us]
    idx: list[int | None] = []
    for p in probes_us:
        near = min(range(len(known)), key=lambda i: abs(math.log(p / known[i])), default=None)
        idx.append(near if near is not None and max(p, known[near]) / min(p, known[near]) < MIN_STATE_RATIO else None)
    others = [p for p, i in zip(probes_us, idx) if i is None]
    new = split_states(others).centers_us if others else []
    centers = known + list(new)
    out = [i if i is not None else len(known) + min(range(len(new)), key=lambda k: abs(math.log(p / new[k])))
           for p, i in zip(probes_us, idx)]
    return centers, out


def burst_labels(probe_states: list[int], burst_of: list[int], burst: int, n: int) -> list[list[int]]:
    """Each of ``n`` runners' sample labels, in sample order: burst ``j`` (of runner ``burst_of[j]``,
    ``burst`` samples) ran between probes ``j`` and ``j + 1``, whose states are ``probe_states``;
    it takes their state when they agree, else ``MIXED``."""
    out: list[list[int]] = [[] for _ in range(n)]
    for j, i in enumerate(burst_of):
        a, b = probe_states[j], probe_states[j + 1]
        out[i].extend([a if a == b else MIXED] * burst)
    return out


def label_samples(probes_us: Sequence[float], n: int, burst: int) -> tuple[list[float], list[int]]:
    """The states of ``n`` samples of one model taken in bursts of ``burst`` (the last may be
    shorter), burst ``j`` between ``probes_us[j]`` and ``probes_us[j + 1]``: the states' probe µs
    and each sample's label."""
    split = split_states(probes_us)
    bursts = math.ceil(n / burst)
    labels = burst_labels([split.state_of(p) for p in probes_us], [0] * bursts, burst, 1)[0]
    return list(split.centers_us), labels[:n]   # the last burst's label, cut to its length


@dataclass
class StateLabels:
    """The samples' states of one timing: ``labels[i]`` indexes ``centers_us`` or is ``MIXED``."""

    centers_us: list[float]
    labels: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, timing: dict[str, Any]) -> "StateLabels | None":
        """The labels a TimingStats dict carries, or None (measured without the probe)."""
        centers, labels = timing.get("state_probe_us"), timing.get("sample_states")
        if not centers or labels is None or len(labels) != len(timing.get("samples_ms", ())):
            return None
        return cls([float(c) for c in centers], [int(v) for v in labels])


def by_state(timing: dict[str, Any]) -> dict[float, list[float]]:
    """``{state's probe µs: its samples (ms)}``; straddling bursts are left out. A timing without
    labels is one state, keyed ``nan``."""
    samples = [float(v) for v in timing["samples_ms"]]
    lab = StateLabels.of(timing)
    if lab is None:
        return {math.nan: samples}
    out: dict[float, list[float]] = {}
    for v, s in zip(samples, lab.labels):
        if s != MIXED:
            out.setdefault(lab.centers_us[s], []).append(v)
    return out


def same_state(a_us: float, b_us: float) -> bool:
    """Two states' probe medians close enough to be one state seen twice."""
    if math.isnan(a_us) or math.isnan(b_us):
        return math.isnan(a_us) and math.isnan(b_us)
    return max(a_us, b_us) / min(a_us, b_us) < SAME_STATE_RATIO


def find_state(known: Sequence[float], probe_us: float) -> int | None:
    """The index of the state in ``known`` (probe µs) that ``probe_us`` is, or None."""
    return next((i for i, c in enumerate(known) if same_state(c, probe_us)), None)


def merge(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[float], StateLabels | None]:
    """The samples of two timings of one model and their labels, states matched by probe time.

    A state of ``b`` whose probe median is near one of ``a``'s joins it (their centre becomes the
    mean of the two medians); one that is not becomes a new state. When either side has no
    labels the result has none: its states cannot be told apart.
    """
    samples = [float(v) for v in a["samples_ms"]] + [float(v) for v in b["samples_ms"]]
    la, lb = StateLabels.of(a), StateLabels.of(b)
    if la is None or lb is None:
        return samples, None
    centers = list(la.centers_us)
    mapping = {}
    for j, c in enumerate(lb.centers_us):
        match = find_state(la.centers_us, c)
        if match is None:
            centers.append(c)
            match = len(centers) - 1
        else:
            centers[match] = math.sqrt(centers[match] * c)
        mapping[j] = match
    labels = la.labels + [MIXED if s == MIXED else mapping[s] for s in lb.labels]
    return samples, StateLabels(centers, labels)


def with_labels(timing: dict[str, Any], labels: StateLabels | None) -> dict[str, Any]:
    """``timing`` carrying ``labels`` (or none)."""
    out = {k: v for k, v in timing.items() if k not in ("state_probe_us", "sample_states")}
    if labels is not None:
        out["state_probe_us"], out["sample_states"] = labels.centers_us, labels.labels
    return out
