"""Measuring: the samplers that time models on the device, and the loop that samples until the test decides."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hwprune.baseline import BASELINE_REFERENCE_KEY
from hwprune.errors import HwpruneError
from hwprune.regress.compare import Comparison, compare_samples
from hwprune.regress.options import RegressOptions
from profilers.config import DeviceConfig

CANDIDATE, BASELINE = "candidate", "baseline"
# Upper bound on measuring rounds after the first (each one re-tests every statistic).
MAX_EXTRA_ROUNDS = 6
# Samples per model per turn when models alternate (as profilers.interleave).
BURST = 20
# Give up at once when deciding needs this many times the samples the time left allows.
HOPELESS_FACTOR = 3


class LocalSampler:
    """Models timed interleaved (``profilers.interleave``) in one process; runners stay open,
    so later calls add samples taken in the same process as the first ones."""

    def __init__(self, items: Sequence[tuple[str, bytes]], cfg: DeviceConfig):
        from contextlib import ExitStack

        from profilers.runners import make_runner

        self.cfg = cfg
        self.keys = [k for k, _ in items]
        self.samples: dict[str, list[float]] = {k: [] for k in self.keys}
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
        if first:
            from profilers.interleave import measure_interleaved

            stats = measure_interleaved(self.runners, min_repeats=max(self.cfg.min_repeats, min_samples),
                                        max_seconds=max_seconds)
            for k, s in zip(self.keys, stats):
                self.samples[k].extend(s.samples_ms)
            return
        # A/B/A/B bursts, as measure_interleaved does, without its per-round re-summarising
        # (which sorts every sample every round: quadratic for the many samples asked for here).
        for r in self.runners:
            for _ in range(min(self.cfg.warmup, 5)):
                r.time_once_ms()
        taken, deadline = 0, time.perf_counter() + max_seconds
        while taken < min_samples and time.perf_counter() < deadline:
            for k, r in zip(self.keys, self.runners):
                self.samples[k].extend(r.time_once_ms() for _ in range(BURST))
            taken += BURST

    def close(self) -> None:
        self._stack.close()


class BundleSampler:
    """Models timed through a profiling bundle, where ``cfg.remote`` says (over SSH); every
    call is a new process on the device, so later samples may sit on another speed level."""

    def __init__(self, items: Sequence[tuple[str, bytes]], cfg: DeviceConfig):
        self.cfg = cfg
        self.items = list(items)
        self.keys = [k for k, _ in items]
        self.samples: dict[str, list[float]] = {k: [] for k in self.keys}
        self.environment: dict[str, Any] | None = None

    def take(self, min_samples: int, max_seconds: float, first: bool = False) -> None:
        import shutil
        import tempfile

        from hwprune.measure import time_items

        n = len(self.items)
        cfg = self.cfg.replace(min_repeats=max(self.cfg.min_repeats, min_samples),
                               max_seconds=max(max_seconds / (n + 2), 0.01), interleave_batch=max(n, 1))
        if not first:
            # rel_ci just under its ceiling: any interval "converges", so the count decides
            cfg = cfg.replace(min_repeats=min_samples, rel_ci=0.999, min_seconds=0.0)
        work = Path(tempfile.mkdtemp(prefix="hwprune-regress-"))

        def on_record(rec: dict[str, Any]) -> None:
            if rec.get("type") == "session":
                self.environment = rec.get("environment")
            elif rec.get("type") == "row":
                self.samples[rec["key"]].extend(rec["timing"]["samples_ms"])
            elif rec.get("type") == "error":
                raise HwpruneError(f"model {rec['key']} failed on {cfg.name}: {rec['error']}")

        try:
            time_items([(k, b, {}) for k, b in self.items], cfg, work, on_record)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def close(self) -> None:
        pass


def open_sampler(items: Sequence[tuple[str, bytes]], cfg: DeviceConfig):
    """The sampler for ``cfg``: in this process when local, through a bundle when remote."""
    return LocalSampler(items, cfg) if cfg.remote is None else BundleSampler(items, cfg)


def _mean_ms(samples: Sequence[float]) -> float:
    return float(np.mean(samples)) if len(samples) else 1.0


def _measure_until_decided(sampler, cfg: DeviceConfig, statistics: Sequence[str], tolerance: float,
                           opts: RegressOptions, baseline_samples: Sequence[float] | None,
                           log: Callable[[str], None], baseline_reference: Sequence[float] | None = None
                           ) -> tuple[list[Comparison], dict[str, Any]]:
    """First measurement, test, then extra samples for inconclusive statistics within the budget.

    ``baseline_reference``: the stored baseline's drift reference samples; the sampler then
    times the reference (key ``BASELINE_REFERENCE_KEY``) beside the candidate, and the test is normalised.
    """
    start = time.perf_counter()
    deadline = start + opts.max_seconds
    fixed = baseline_samples is not None
    first_s = min(cfg.max_seconds * len(sampler.keys), opts.max_seconds)
    first_n = cfg.min_repeats
    if fixed:
        # As many samples as the baseline holds, as far as the first window allows: the
        # measuring loop honours its time limit only once it has its minimum count.
        round_ms = _mean_ms(baseline_samples) + (_mean_ms(baseline_reference) if baseline_reference else 0.0)
        first_n = max(first_n, min(len(baseline_samples), int(first_s / (round_ms / 1e3))))
    sampler.take(first_n, first_s, first=True)
    rounds = 1

    def test() -> list[Comparison]:
        base = baseline_samples if fixed else sampler.samples[BASELINE]
        ref_now = sampler.samples[BASELINE_REFERENCE_KEY] if baseline_reference is not None else None
        return [compare_samples(base, sampler.samples[CANDIDATE], s, tolerance, confidence=opts.confidence,
                                resamples=opts.resamples, seed=opts.seed, baseline_fixed=fixed,
                                baseline_reference_ms=baseline_reference, candidate_reference_ms=ref_now)
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

