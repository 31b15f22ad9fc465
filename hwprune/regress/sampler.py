"""Measuring: the samplers that time models on the device, and the loop that samples until the test decides."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from hwprune.baseline import BASELINE_REFERENCE_KEY
from hwprune.errors import HwpruneError
from hwprune.regress.compare import Comparison
from hwprune.regress.options import RegressOptions
from hwprune.regress.states import compare_in_states
from profilers.config import DeviceConfig
from profilers.machine_state import StateLabels, merge

CANDIDATE, BASELINE = "candidate", "baseline"
# Upper bound on measuring rounds after the first (each one re-tests every statistic).
MAX_EXTRA_ROUNDS = 6
# Samples per model per turn when models alternate (as profilers.interleave).
BURST = 20
# Give up at once when deciding needs this many times the samples the time left allows.
HOPELESS_FACTOR = 3


class LocalSampler:
    """Models timed interleaved (``profilers.interleave``) in one process; runners stay open,
    so later calls add samples taken in the same process as the first ones. Every burst is
    probed for the machine state it ran in (``profilers.machine_state``): ``labels[key]`` holds
    each sample's state, matched across calls by probe time."""

    def __init__(self, items: Sequence[tuple[str, bytes]], cfg: DeviceConfig):
        from contextlib import ExitStack

        from profilers.runners import make_runner

        self.cfg = cfg
        self.keys = [k for k, _ in items]
        self.samples: dict[str, list[float]] = {k: [] for k in self.keys}
        self.labels: dict[str, StateLabels | None] = {k: None for k in self.keys}
        self.environment: dict[str, Any] | None = None
        self._stack = ExitStack()
        try:
            self.runners = [self._stack.enter_context(make_runner(blob, cfg, name=k)) for k, blob in items]
        except BaseException:
            self._stack.close()
            raise

    def take(self, min_samples: int, max_seconds: float, first: bool = False) -> None:
        """At least ``min_samples`` more per model; the first call follows the device config's
        convergence rules, later ones take just the samples asked for (or stop at ``max_seconds``)."""
        from profilers import machine_state  # its probe looked up now: a test may script it

        if first:
            from profilers.interleave import measure_interleaved

            stats = measure_interleaved(self.runners, min_repeats=max(self.cfg.min_repeats, min_samples),
                                        max_seconds=max_seconds, probe=machine_state.probe_us)
            for k, s in zip(self.keys, stats):
                add_samples(self, k, s.to_dict())
        else:
            self._take_more(min_samples, max_seconds, machine_state.probe_us)

    def _take_more(self, min_samples: int, max_seconds: float, probe: Callable[[], float]) -> None:
        """A/B/A/B bursts, as measure_interleaved does, without its per-round re-summarising
        (which sorts every sample every round: quadratic for the many samples asked for here)."""
        from profilers.machine_state import assign_states, burst_labels

        for r in self.runners:
            for _ in range(min(self.cfg.warmup, 5)):
                r.time_once_ms()
        new: list[list[float]] = [[] for _ in self.keys]
        probes, burst_of = [probe()], []
        taken, deadline = 0, time.perf_counter() + max_seconds
        while taken < min_samples and time.perf_counter() < deadline:
            for i, r in enumerate(self.runners):
                new[i].extend(r.time_once_ms() for _ in range(BURST))
                burst_of.append(i)
                probes.append(probe())
            taken += BURST
        # read against the states met so far: a short take's few probes cannot split by themselves
        known = self.labels[self.keys[0]]
        centers, states = assign_states(known.centers_us if known is not None else [], probes)
        for k, samples, labels in zip(self.keys, new, burst_labels(states, burst_of, BURST, len(new))):
            add_samples(self, k, {"samples_ms": samples, "state_probe_us": centers, "sample_states": labels})

    def close(self) -> None:
        self._stack.close()


def add_samples(sampler, key: str, timing: dict[str, Any]) -> None:
    """Append a timing's samples to ``sampler.samples[key]`` and its state labels to
    ``sampler.labels[key]`` (states matched by probe time; None once any part had no labels)."""
    if not sampler.samples[key]:
        sampler.samples[key] = [float(v) for v in timing["samples_ms"]]
        sampler.labels[key] = StateLabels.of(timing)
        return
    had = {"samples_ms": sampler.samples[key], **state_fields(sampler.labels[key])}
    sampler.samples[key], sampler.labels[key] = merge(had, timing)


def state_fields(labels: StateLabels | None) -> dict[str, Any]:
    """``labels`` as a TimingStats dict's ``state_probe_us`` and ``sample_states`` (none: {})."""
    return {} if labels is None else {"state_probe_us": list(labels.centers_us), "sample_states": list(labels.labels)}


def sampled_timing(sampler, key: str) -> dict[str, Any]:
    """The samples of ``key`` so far with their states, as a TimingStats-like dict."""
    return {"samples_ms": list(sampler.samples[key]), **state_fields(getattr(sampler, "labels", {}).get(key))}


class BundleSampler:
    """Models timed through a profiling bundle, where ``cfg.remote`` says (over SSH); every
    call is a new process on the device, so later samples may sit on another speed level."""

    def __init__(self, items: Sequence[tuple[str, bytes]], cfg: DeviceConfig):
        self.cfg = cfg
        self.items = list(items)
        self.keys = [k for k, _ in items]
        self.samples: dict[str, list[float]] = {k: [] for k in self.keys}
        self.labels: dict[str, StateLabels | None] = {k: None for k in self.keys}
        self.environment: dict[str, Any] | None = None

    def take(self, min_samples: int, max_seconds: float, first: bool = False) -> None:
        from hwprune.measure import time_items
        from profilers.scratch import scratch

        n = len(self.items)
        cfg = self.cfg.replace(min_repeats=max(self.cfg.min_repeats, min_samples),
                               max_seconds=max(max_seconds / (n + 2), 0.01), interleave_batch=max(n, 1))
        if not first:
            # rel_ci just under its ceiling: any interval "converges", so the count decides
            cfg = cfg.replace(min_repeats=min_samples, rel_ci=0.999, min_seconds=0.0)
        def on_record(rec: dict[str, Any]) -> None:
            if rec.get("type") == "session":
                self.environment = rec.get("environment")
            elif rec.get("type") == "row":
                add_samples(self, rec["key"], rec["timing"])
            elif rec.get("type") == "error":
                raise HwpruneError(f"model {rec['key']} failed on {cfg.name}: {rec['error']}")

        with scratch("regress") as work:
            time_items([(k, b, {}) for k, b in self.items], cfg, work, on_record)

    def close(self) -> None:
        pass


def open_sampler(items: Sequence[tuple[str, bytes]], cfg: DeviceConfig):
    """The sampler for ``cfg``: in this process when local, through a bundle when remote."""
    return LocalSampler(items, cfg) if cfg.remote is None else BundleSampler(items, cfg)


def _mean_ms(samples: Sequence[float]) -> float:
    return float(np.mean(samples)) if len(samples) else 1.0


def _measure_until_decided(sampler, cfg: DeviceConfig, statistics: Sequence[str], tolerance: float,
                           opts: RegressOptions, baseline: dict[str, Any] | None,
                           log: Callable[[str], None], baseline_reference: dict[str, Any] | None = None
                           ) -> tuple[list[Comparison], dict[str, Any]]:
    """First measurement, test, then extra samples for inconclusive statistics within the budget.

    ``baseline``: the stored baseline's timing (``samples_ms``, and its machine states when it has
    them); None: the sampler times the baseline model (key ``BASELINE``) beside the candidate.
    ``baseline_reference``: the stored baseline's drift reference timing; the sampler then
    times the reference (key ``BASELINE_REFERENCE_KEY``) beside the candidate, and the test is normalised.
    The comparison is taken per machine state (``hwprune.regress.states``).
    """
    start = time.perf_counter()
    deadline = start + opts.max_seconds
    fixed = baseline is not None
    first_s = min(cfg.max_seconds * len(sampler.keys), opts.max_seconds)
    first_n = cfg.min_repeats
    if fixed:
        # As many samples as the baseline holds, as far as the first window allows: the
        # measuring loop honours its time limit only once it has its minimum count.
        stored = baseline["samples_ms"]
        round_ms = _mean_ms(stored) + (_mean_ms(baseline_reference["samples_ms"]) if baseline_reference else 0.0)
        first_n = max(first_n, min(len(stored), int(first_s / (round_ms / 1e3))))
    sampler.take(first_n, first_s, first=True)
    rounds = 1

    def test() -> list[Comparison]:
        base = baseline if fixed else sampled_timing(sampler, BASELINE)
        ref_now = sampled_timing(sampler, BASELINE_REFERENCE_KEY) if baseline_reference is not None else None
        return [compare_in_states(base, sampled_timing(sampler, CANDIDATE), s, tolerance, confidence=opts.confidence,
                                  resamples=opts.resamples, seed=opts.seed, baseline_fixed=fixed,
                                  baseline_reference=baseline_reference, candidate_reference=ref_now)
                for s in statistics]

    comps = test()
    while rounds <= MAX_EXTRA_ROUNDS:
        open_ = [c for c in comps if c.verdict == "inconclusive" and c.samples_to_decide is not None]
        if not open_:
            break
        have = len(sampler.samples[CANDIDATE])
        want = max(c.samples_to_decide for c in open_) - have
        # One sample of every model per round trip; 1.3 for warm-up and the loop's own cost.
        per_sample_s = sum(_mean_ms(v) for v in sampler.samples.values()) / 1e3 * 1.3
        left_s = deadline - time.perf_counter()
        affordable = int(left_s / per_sample_s) if per_sample_s > 0 else want
        take = min(max(want, BURST), affordable)
        if take < BURST or want > HOPELESS_FACTOR * affordable:
            log(f"inconclusive with {have} samples; deciding needs ~{want} more "
                f"(~{want * per_sample_s:.0f} s), past --max-seconds {opts.max_seconds:g}")
            break
        log(f"inconclusive with {have} samples: taking {take} more (~{take * per_sample_s:.1f} s)")
        sampler.take(take, max(left_s, 0.01))
        rounds += 1
        comps = test()
    info = {"rounds": rounds, "seconds": time.perf_counter() - start, "max_seconds": opts.max_seconds}
    return comps, info

