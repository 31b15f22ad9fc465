"""``hwprune regress``: re-measure on the device and test for a latency regression.

Modes (exactly one per call):

- ``--baseline baseline.json``: time the model now and compare with the samples stored in a
  baseline (``hwprune prune`` writes one into every run folder; ``--write-baseline`` makes one).
  A baseline also holds samples of the fixed *drift reference* graph (``reference_graph``)
  timed interleaved with the model in the same process; the reference is timed beside the
  model again now and the test uses the reference-normalised ratio (below), so a machine that
  runs this process faster or slower than the baseline's shifts both and cancels out.
- ``--against other.onnx``: time the reference model and the model interleaved, in alternating
  bursts in this one process, and compare them. Nothing stored is trusted, so a machine whose
  speed differs from process to process (docs/BENCHMARKS.md: levels ~20-25% apart on a shared
  VM) cannot pass itself off as a regression; prefer it wherever the old model can be had.
- ``--lut L --sample K``: re-time K random rows of a latency LUT and report their drift.
- ``--write-baseline OUT``: time the model and write a baseline in ``hwprune prune``'s format.

The test (per statistic s = p50, p90, p99 or mean): the figure is the ratio
R = s(candidate) / s(baseline). Against a baseline that holds a drift reference it is the
reference-normalised ratio R = (s(candidate) / m(reference now)) / (s(baseline) /
m(reference then)), m the reference's median: the reference only reads the machine's speed
level, and its median is the steadiest figure for that (its tail holds interruptions of its
own short calls, not the model's). The raw ratio is reported beside it. The confidence
interval is a percentile bootstrap: every sample set (two, or four with the reference) is
resampled independently (seeded, ``resamples`` >= 1000, 2000 by default) and the interval is
read from the resampled log-ratios (the mean of more than 10,000 samples is drawn from its
normal limit). Resampling the model and its reference independently ignores that they were
timed side by side (their errors correlate), which widens the interval: conservative. For
quantiles the resampled statistic is
drawn directly instead of materialising resamples: the k-th smallest of n draws from the
empirical distribution is x[floor(n U)] with U the k-th smallest of n uniforms, U ~ Beta(k,
n-k+1) — exactly the bootstrap distribution, in O(resamples) instead of O(resamples * n). A
quantile needs at least ``MIN_TAIL_SAMPLES`` samples beyond it on either side (p99: 500
samples) before its interval means anything; with fewer the comparison is inconclusive.

Verdict rules, with tolerance t and the interval [lo, hi] of R:

=============  ====================  ==================================================
verdict        rule                  reading
=============  ====================  ==================================================
regressed      lo > 1 + t            slower than tolerated, with confidence
improved       hi < 1 - t            faster by more than the tolerance, with confidence
pass           hi <= 1 + t           a slowdown beyond t is ruled out (and not improved;
               (not improved)        an interval straddling 1 - t is a pass: maybe faster,
                                     certainly not slower than tolerated)
inconclusive   lo <= 1 + t < hi      a slowdown beyond t is neither ruled out nor shown
=============  ====================  ==================================================

An inconclusive comparison estimates how many samples would decide it: the interval's
half-width on the log scale shrinks like 1/sqrt(n) for the side that is still measured (a
stored baseline's share of the variance, estimated from its bootstrap, does not shrink), so
the samples needed to bring the relevant edge across 1 + t follow from the distance of the
point estimate to 1 + t (the stored reference's share is fixed too; the reference timed now
grows with the model). Those samples are taken, up to ``max_seconds`` of measuring in all,
and the test is repeated; a comparison no sample count can decide (point estimate on the
edge, or a stored baseline too small) stays inconclusive. Repeated looks at a growing sample
raise the false-verdict rate somewhat above the nominal 1 - confidence; the looks are few
(usually one or two). Mann-Whitney U (one-sided: candidate samples stochastically larger)
and P(candidate sample > baseline sample) are reported beside the interval, never used for
the verdict: with thousands of samples they flag differences far below any tolerance.

What the interval does not cover: a stored baseline is one process's samples, and so is the
new measurement; variation *between* processes (a machine's per-process speed level) is in
neither sample and shows up as a confident, wrong verdict. The drift reference cancels the
part of it that slows the reference as much as the model; what is left (a state that hits
the model's kernels harder than the reference's, e.g. a neighbour competing for the cache a
large model lives in) is still exposed. A baseline without a reference (written by an older
hwprune) is compared raw, with a warning. ``--against`` measures both models in one process
and cancels all of it.

Several statistics give one overall verdict: regressed if any regressed, else inconclusive
if any is, else improved if all improved, else pass. Exit codes: 0 pass or improved, 1
regressed, 2 bad input or environment error (``HwpruneError``, nothing written), 3
inconclusive. A LUT check's verdict is ``fresh`` (0), ``stale`` (1) or ``inconclusive`` (3):
stale when the bootstrap interval of the rows' median drift lies entirely beyond ±t, fresh
when it lies within ±t.

Outputs, all written atomically after every check has passed: JUnit XML (one testcase per
model x statistic: ``<failure>`` when regressed, ``<skipped>`` when inconclusive, testcase
``<properties>`` with ratio, interval, p-value and sample counts, ``ratio_measure`` saying
whether the verdict's ratio is ``reference-normalised`` or ``raw``, and the raw ratio and
interval beside it), Markdown for a CI job page, and JSON with every figure and the samples.

Example:
    >>> from hwprune.regress import RegressOptions, regress
    >>> r = regress(RegressOptions(device="x86-cpu-ort", model="runs/r20/pruned.onnx",
    ...                            baseline="runs/r20/baseline.json"))  # doctest: +SKIP
    >>> r["verdict"], r["exit_code"]  # doctest: +SKIP
    ('pass', 0)
"""

from __future__ import annotations

import math
import os
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# The baseline format moved to hwprune.baseline; its names stay importable from here.
from hwprune.baseline import (BASELINE_FORMAT, BASELINE_REFERENCE_KEY, BASELINE_SAMPLES, REFERENCE_NAME, _sha256,
                              load_baseline, make_baseline, reference_graph)  # noqa: F401
from hwprune.errors import HwpruneError
from profilers.config import DeviceConfig, load_device_config
from profilers.fileio import atomic_write_json, atomic_write_text

RESULT_FORMAT = 1
STATISTICS = ("p50", "p90", "p99", "mean")
QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
VERDICT_EXIT = {"pass": 0, "improved": 0, "regressed": 1, "inconclusive": 3, "fresh": 0, "stale": 1}
# A quantile's bootstrap is meaningless until this many samples lie beyond it on each side.
MIN_TAIL_SAMPLES = 5
MIN_RESAMPLES = 1000
# Above this many resampled values the mean's bootstrap is drawn from its normal limit.
MEAN_RESAMPLE_LIMIT = 20_000_000
# Extra samples aim the new half-width at this fraction of the distance to the edge. The new
# point estimate scatters by (half-width / 1.96); at 0.6 the interval then clears the edge
# with ~90% probability when the current estimate is right (0.6 m + 1.28 * 0.6 m / 1.96 = m),
# instead of ~50% when aiming at the edge itself.
AIM_FRACTION = 0.6
# Upper bound on measuring rounds after the first (each one re-tests every statistic).
MAX_EXTRA_ROUNDS = 6
# A sample count beyond this is reported as "no sample count decides it".
MAX_SAMPLES = 10**9
CANDIDATE, BASELINE = "candidate", "baseline"
# Old name of the baseline drift reference's key, kept for the code that imports it from here.
REFERENCE = BASELINE_REFERENCE_KEY
# The reference reads the machine's speed level from its median (module docstring).
REFERENCE_STATISTIC = "p50"
NORMALISED, RAW = "reference-normalised", "raw"
NO_REFERENCE_WARNING = ("the baseline holds no drift reference (written by an older hwprune): the comparison "
                        "is raw, exposed to process-level drift (docs/BENCHMARKS.md); re-write it with "
                        "--write-baseline, or prefer --against")
# Samples per model per turn when models alternate (as profilers.interleave).
BURST = 20
# Give up at once when deciding needs this many times the samples the time left allows.
HOPELESS_FACTOR = 3


# -- options ---------------------------------------------------------------------------------------
@dataclass
class RegressOptions:
    """Everything ``hwprune regress`` takes; see the module docstring for the modes."""

    device: str
    model: str | None = None
    baseline: str | None = None
    against: str | None = None
    lut: str | None = None
    sample: int = 20
    num_classes: int = 10
    write_baseline: str | None = None
    tolerance: str | float = "5%"
    statistics: Sequence[str] = ()
    confidence: float = 0.95
    max_seconds: float = 60.0
    resamples: int = 2000
    seed: int = 0
    junit: str | None = None
    markdown: str | None = None
    json: str | None = None
    allow_env_change: bool = False

    @property
    def mode(self) -> str:
        given = [m for m, v in (("baseline", self.baseline), ("against", self.against), ("lut", self.lut),
                                ("write-baseline", self.write_baseline)) if v]
        if not given:
            raise HwpruneError("give one of --baseline, --against, --lut or --write-baseline")
        if len(given) > 1:
            raise HwpruneError(f"give only one of --baseline, --against, --lut, --write-baseline (got "
                               f"{', '.join('--' + g for g in given)})")
        return given[0]


def parse_tolerance(value: str | float) -> float:
    """``"5%"`` or ``0.05`` -> 0.05; must lie in (0, 1)."""
    text = str(value).strip()
    try:
        t = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise HwpruneError(f"--tolerance must be a percentage like 5% or a fraction like 0.05, got '{value}'") from None
    if not 0 < t < 1 or math.isnan(t):
        raise HwpruneError(f"--tolerance must lie between 0% and 100% (exclusive), got '{value}'")
    return t


def _check_statistics(statistics: Sequence[str]) -> list[str]:
    out = []
    for s in statistics:
        if s not in STATISTICS:
            raise HwpruneError(f"unknown statistic '{s}' (known: {', '.join(STATISTICS)})")
        if s not in out:
            out.append(s)
    return out


# -- the test --------------------------------------------------------------------------------------
def point_statistic(samples: Sequence[float], statistic: str) -> float:
    """The statistic of raw samples, as ``profilers.stats.summarize`` computes it."""
    x = np.asarray(samples, dtype=float)
    return float(x.mean()) if statistic == "mean" else float(np.percentile(x, QUANTILES[statistic] * 100))


def bootstrap_statistic(samples: Sequence[float], statistic: str, resamples: int,
                        rng: np.random.Generator) -> np.ndarray:
    """``resamples`` draws of the statistic over bootstrap resamples of ``samples``.

    Quantiles (linear interpolation between order statistics, as ``np.percentile``) are
    drawn through the uniform order statistics (see the module docstring); the mean is
    resampled explicitly, in chunks that keep memory bounded.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if statistic == "mean":
        if n * resamples > MEAN_RESAMPLE_LIMIT:
            # Thousands of samples: the resampled mean is normal to well within the interval's
            # own Monte Carlo error (CLT), and drawing it costs O(resamples), not O(resamples * n).
            return rng.normal(x.mean(), x.std() / math.sqrt(n), size=resamples)
        out = np.empty(resamples)
        chunk = max(1, 4_000_000 // n)
        for start in range(0, resamples, chunk):
            m = min(chunk, resamples - start)
            out[start:start + m] = x[rng.integers(0, n, size=(m, n))].mean(axis=1)
        return out
    h = QUANTILES[statistic] * (n - 1)
    k = int(math.floor(h))
    frac = h - k
    # The (k+1)-th smallest of n uniforms is Beta(k+1, n-k).
    u1 = rng.beta(k + 1, n - k, size=resamples)
    low = x[np.minimum((u1 * n).astype(np.int64), n - 1)]
    if frac == 0 or k + 1 >= n:
        return low
    # The next one up: the smallest of the n-k-1 uniforms above u1, i.e. u1 + (1-u1) Beta(1, n-k-1).
    u2 = u1 + (1 - u1) * rng.beta(1, n - k - 1, size=resamples)
    high = x[np.minimum((u2 * n).astype(np.int64), n - 1)]
    return low + frac * (high - low)


def decide(ci_low: float, ci_high: float, tolerance: float) -> str:
    """The verdict for an interval [ci_low, ci_high] of candidate/baseline (module docstring)."""
    if ci_low > 1 + tolerance:
        return "regressed"
    if ci_high < 1 - tolerance:
        return "improved"
    if ci_high <= 1 + tolerance:
        return "pass"
    return "inconclusive"


def samples_to_decide(ratio: float, ci_low: float, ci_high: float, tolerance: float, n_candidate: int,
                      baseline_share: float, baseline_fixed: bool) -> int | None:
    """Total candidate samples (and baseline ones, when both are measured) that should decide
    an inconclusive comparison; None when no sample count can.

    ``baseline_share`` is the baseline's fraction of the log-ratio's bootstrap variance. The
    interval's half-width on the side facing 1 + t must shrink from h to below the distance m
    from the point estimate to 1 + t (aimed at ``AIM_FRACTION`` of it). With n_c -> n_c / f,
    the variance goes from V to V (w_b + w_c f) for a stored baseline, V f when both sides grow.
    """
    edge = math.log1p(tolerance)
    log_r = math.log(ratio)
    m = abs(log_r - edge)
    h = (log_r - math.log(ci_low)) if log_r > edge else (math.log(ci_high) - log_r)
    if m <= 1e-9 or h <= 0 or not math.isfinite(h):
        return None
    target = (AIM_FRACTION * m / h) ** 2
    if baseline_fixed:
        w_b = min(max(baseline_share, 0.0), 1.0)
        if w_b >= 1 or target <= w_b:
            return None
        f = (target - w_b) / (1 - w_b)
    else:
        f = target
    if f >= 1:  # already narrow enough on paper: one more burst of samples will tell
        return n_candidate + 1
    n = n_candidate / f
    return int(math.ceil(n)) if n < MAX_SAMPLES else None


def _min_samples(statistic: str) -> int:
    if statistic == "mean":
        return 2
    q = QUANTILES[statistic]
    return int(math.ceil(round(MIN_TAIL_SAMPLES / min(q, 1 - q), 6)))


@dataclass
class Comparison:
    """One statistic of candidate vs baseline: the figures and the verdict.

    ``ratio``, ``ci_low`` and ``ci_high`` are what the verdict reads: the reference-normalised
    ratio when ``ratio_measure`` is ``reference-normalised``, else the raw one. ``raw_*`` is
    always the plain s(candidate) / s(baseline); ``reference_ratio`` is the drift reference's
    median now / then (the machine's speed change between the two processes; > 1: slower now).
    """

    statistic: str
    verdict: str
    reason: str
    baseline_ms: float
    candidate_ms: float
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    tolerance: float
    n_baseline: int
    n_candidate: int
    mannwhitney_p_slower: float | None
    prob_slower: float | None
    samples_to_decide: int | None = None
    ratio_measure: str = RAW
    raw_ratio: float = math.nan
    raw_ci_low: float = math.nan
    raw_ci_high: float = math.nan
    baseline_reference_ms: float | None = None
    candidate_reference_ms: float | None = None
    reference_ratio: float | None = None
    n_baseline_reference: int | None = None
    n_candidate_reference: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(log_ratios: np.ndarray, confidence: float, point: float) -> tuple[float, float]:
    alpha = 1 - confidence
    lo, hi = (float(v) for v in np.exp(np.quantile(log_ratios, [alpha / 2, 1 - alpha / 2])))
    # Percentile intervals can exclude the point estimate when the bootstrap is very skewed.
    return min(lo, point), max(hi, point)


def compare_samples(baseline_ms: Sequence[float], candidate_ms: Sequence[float], statistic: str, tolerance: float,
                    *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                    baseline_fixed: bool = True, baseline_reference_ms: Sequence[float] | None = None,
                    candidate_reference_ms: Sequence[float] | None = None) -> Comparison:
    """Test candidate against baseline samples for one statistic.

    ``baseline_fixed``: the baseline samples cannot grow (a stored baseline), which decides
    how many more samples an inconclusive result needs. ``baseline_reference_ms`` and
    ``candidate_reference_ms`` (both or neither): the drift reference timed beside the
    baseline and beside the candidate; with them the verdict tests the reference-normalised
    ratio (module docstring), and Mann-Whitney compares the samples divided by their side's
    reference median.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> c = compare_samples(rng.normal(1.0, 0.02, 500), rng.normal(1.2, 0.02, 500), "p50", 0.05)
        >>> c.verdict
        'regressed'
        >>> # the machine is 25% slower now: model and reference alike
        >>> n = compare_samples(rng.normal(1.0, 0.02, 500), rng.normal(1.25, 0.02, 500), "p50", 0.05,
        ...                     baseline_reference_ms=rng.normal(0.3, 0.01, 500),
        ...                     candidate_reference_ms=rng.normal(0.375, 0.01, 500))
        >>> n.verdict, round(n.raw_ratio, 2)
        ('pass', 1.25)
    """
    from scipy.stats import mannwhitneyu

    if (baseline_reference_ms is None) != (candidate_reference_ms is None):
        raise HwpruneError("a reference-normalised comparison needs reference samples on both sides")
    b = np.asarray(baseline_ms, dtype=float)
    c = np.asarray(candidate_ms, dtype=float)
    nb, nc = len(b), len(c)
    pb, pc = point_statistic(b, statistic), point_statistic(c, statistic)
    raw_ratio = pc / pb
    ratio, scale_b, scale_c = raw_ratio, 1.0, 1.0
    refs: dict[str, Any] = {}
    if baseline_reference_ms is not None:
        rb = np.asarray(baseline_reference_ms, dtype=float)
        rc = np.asarray(candidate_reference_ms, dtype=float)
        scale_b, scale_c = point_statistic(rb, REFERENCE_STATISTIC), point_statistic(rc, REFERENCE_STATISTIC)
        ratio = raw_ratio / (scale_c / scale_b)
        refs = dict(ratio_measure=NORMALISED, baseline_reference_ms=scale_b, candidate_reference_ms=scale_c,
                    reference_ratio=scale_c / scale_b, n_baseline_reference=len(rb), n_candidate_reference=len(rc))
    u = mannwhitneyu(c / scale_c, b / scale_b, alternative="greater")
    common = dict(statistic=statistic, baseline_ms=pb, candidate_ms=pc, ratio=ratio, confidence=confidence,
                  tolerance=tolerance, n_baseline=nb, n_candidate=nc, mannwhitney_p_slower=float(u.pvalue),
                  prob_slower=float(u.statistic) / (nb * nc), raw_ratio=raw_ratio, **refs)
    need = _min_samples(statistic)
    need_ref = _min_samples(REFERENCE_STATISTIC)
    short_base = [f"the baseline has {nb} samples; {statistic} needs at least {need}"] if nb < need else []
    short_now = [f"{nc} samples measured; {statistic} needs at least {need}"] if nc < need else []
    if refs:
        if refs["n_baseline_reference"] < need_ref:
            short_base.append(f"the baseline's drift reference has {refs['n_baseline_reference']} samples; "
                              f"its {REFERENCE_STATISTIC} needs at least {need_ref}")
        if refs["n_candidate_reference"] < need_ref:
            short_now.append(f"{refs['n_candidate_reference']} drift reference samples measured; "
                             f"its {REFERENCE_STATISTIC} needs at least {need_ref}")
    if short_base:
        grow = None if baseline_fixed else need
        return Comparison(verdict="inconclusive", ci_low=math.nan, ci_high=math.nan, samples_to_decide=grow,
                          reason="; ".join(short_base), **common)
    if short_now:
        return Comparison(verdict="inconclusive", ci_low=math.nan, ci_high=math.nan,
                          samples_to_decide=max(need, need_ref if refs else 0), reason="; ".join(short_now), **common)
    rng = np.random.default_rng(seed)
    log_b = np.log(bootstrap_statistic(b, statistic, resamples, rng))
    log_c = np.log(bootstrap_statistic(c, statistic, resamples, rng))
    raw_lo, raw_hi = _interval(log_c - log_b, confidence, raw_ratio)
    var_fixed, var_grow = float(log_b.var()), float(log_c.var())
    if refs:
        log_rb = np.log(bootstrap_statistic(rb, REFERENCE_STATISTIC, resamples, rng))
        log_rc = np.log(bootstrap_statistic(rc, REFERENCE_STATISTIC, resamples, rng))
        lo, hi = _interval((log_c - log_rc) - (log_b - log_rb), confidence, ratio)
        # the stored reference cannot grow either; the one timed now grows with the model
        var_fixed += float(log_rb.var())
        var_grow += float(log_rc.var())
    else:
        lo, hi = raw_lo, raw_hi
    common.update(raw_ci_low=raw_lo, raw_ci_high=raw_hi)
    verdict = decide(lo, hi, tolerance)
    pct = f"{int(round(confidence * 100))}%"
    what = f"{statistic} ratio" + (" (normalised by the drift reference)" if refs else "")
    span = f"{pct} CI of {what} [{lo:.4f}, {hi:.4f}]"
    reason = {
        "regressed": f"{span} lies above 1+t = {1 + tolerance:.4f}",
        "improved": f"{span} lies below 1-t = {1 - tolerance:.4f}",
        "pass": f"{span} lies below 1+t = {1 + tolerance:.4f}",
        "inconclusive": f"{span} straddles 1+t = {1 + tolerance:.4f}",
    }[verdict]
    more = None
    if verdict == "inconclusive":
        share = var_fixed / (var_fixed + var_grow) if var_fixed + var_grow > 0 else 0.0
        more = samples_to_decide(ratio, lo, hi, tolerance, nc, share, baseline_fixed)
        if more is None:
            reason += ("; no sample count decides it (the estimate sits on the edge, or the stored "
                       "baseline's own spread is too wide)")
    return Comparison(verdict=verdict, reason=reason, ci_low=lo, ci_high=hi, samples_to_decide=more, **common)


def overall_verdict(verdicts: Sequence[str]) -> str:
    """Several statistics' verdicts as one (module docstring)."""
    if "regressed" in verdicts:
        return "regressed"
    if "inconclusive" in verdicts:
        return "inconclusive"
    if verdicts and all(v == "improved" for v in verdicts):
        return "improved"
    return "pass"


# -- measuring -------------------------------------------------------------------------------------
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


# -- reading and checking ------------------------------------------------------------------------
def _read_model(path: str, what: str = "model") -> bytes:
    p = Path(path)
    if not p.is_file():
        raise HwpruneError(f"{what} not found: {p}")
    try:
        return p.read_bytes()
    except OSError as err:
        raise HwpruneError(f"{p}: cannot read {what}: {err.strerror}") from None


def _check_outputs(opts: RegressOptions) -> None:
    for flag, path in (("--junit", opts.junit), ("--markdown", opts.markdown), ("--json", opts.json),
                       ("--write-baseline", opts.write_baseline)):
        if path and Path(path).is_dir():
            raise HwpruneError(f"{flag} {path} is a folder; give a file path")


def _local_environment(cfg: DeviceConfig) -> dict[str, Any] | None:
    from profilers.environment import collect_manifest

    return collect_manifest(cfg) if cfg.remote is None else None


def _environment_check(reference_env: dict[str, Any] | None, reference_fp: str | None, now_env: dict[str, Any] | None,
                       what: str, allow_env_change: bool) -> dict[str, Any]:
    """Diff ``reference_env`` against now; a changed fingerprint is an error unless allowed."""
    from profilers.environment import diff_manifests, fingerprint

    out: dict[str, Any] = {"fingerprint_now": fingerprint(now_env) if now_env else None,
                           "fingerprint_baseline": None, "fingerprint_changed": False, "differences": []}
    if not now_env:
        return out
    if reference_env:
        out["fingerprint_baseline"] = fingerprint(reference_env)
        out["differences"] = diff_manifests(reference_env, now_env)
    else:
        out["fingerprint_baseline"] = reference_fp
        out["differences"] = [f"{what} has no environment manifest to compare with"]
    changed = out["fingerprint_baseline"] is not None and out["fingerprint_baseline"] != out["fingerprint_now"]
    out["fingerprint_changed"] = changed
    if changed and not allow_env_change:
        why = "; ".join(d for d in out["differences"] if d.startswith("[fingerprint]")) or "fields differ"
        raise HwpruneError(f"the device fingerprint changed since {what} ({out['fingerprint_baseline']} -> "
                           f"{out['fingerprint_now']}: {why}); pass --allow-env-change to compare anyway")
    return out


def command_line(opts: RegressOptions) -> str:
    """The ``hwprune regress`` command that repeats this check (printed beside every figure)."""
    parts = ["hwprune", "regress", "--device", opts.device]
    for flag, value in (("--model", opts.model), ("--baseline", opts.baseline), ("--against", opts.against),
                        ("--lut", opts.lut), ("--write-baseline", opts.write_baseline)):
        if value:
            parts += [flag, str(value)]
    if opts.lut:
        parts += ["--sample", str(opts.sample)]
    if not opts.write_baseline:
        parts += ["--tolerance", str(opts.tolerance)]
        for s in opts.statistics:
            parts += ["--statistic", s]
        if not opts.lut:  # a LUT check measures each row once: no budget to repeat
            parts += ["--max-seconds", f"{opts.max_seconds:g}"]
        parts += ["--seed", str(opts.seed)]
    if opts.allow_env_change:
        parts.append("--allow-env-change")
    return " ".join(shlex.quote(p) for p in parts)


# -- the entry point -------------------------------------------------------------------------------
def regress(opts: RegressOptions, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the check ``opts`` describe, write the requested outputs, return the result dict.

    Raises ``HwpruneError`` for bad input or an environment change (nothing written then).
    The result's ``verdict`` and ``exit_code`` follow the module docstring's rules.
    """
    mode = opts.mode
    _check_outputs(opts)
    if opts.resamples < MIN_RESAMPLES:
        raise HwpruneError(f"--resamples must be at least {MIN_RESAMPLES}, got {opts.resamples}")
    if not 0.5 <= opts.confidence < 1:
        raise HwpruneError(f"--confidence must lie in [0.5, 1), got {opts.confidence}")
    if not opts.max_seconds > 0:
        raise HwpruneError(f"--max-seconds must be positive, got {opts.max_seconds}")
    statistics = _check_statistics(opts.statistics)
    if mode == "write-baseline":
        return write_baseline(opts, statistics, log)
    tolerance = parse_tolerance(opts.tolerance)
    cfg = load_device_config(opts.device)
    if mode == "lut":
        result = regress_lut(opts, cfg, tolerance, statistics, log)
    else:
        result = _regress_model(opts, cfg, tolerance, statistics, mode, log)
    result["command"] = command_line(opts)
    write_outputs(result, opts)
    return result


def write_baseline(opts: RegressOptions, statistics: Sequence[str] = (),
                   log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Time ``opts.model`` on the device and write a baseline in ``hwprune prune``'s format."""
    from profilers.stats import summarize

    if not opts.model:
        raise HwpruneError("--write-baseline needs --model (the ONNX file to time)")
    cfg = load_device_config(opts.device)
    blob = _read_model(opts.model)
    ref_name, ref_blob = reference_graph()
    env = _local_environment(cfg)
    # The drift reference is timed interleaved with the model, so that a later check can
    # tell this process's speed level from a change of the model (module docstring).
    sampler = open_sampler([(CANDIDATE, blob), (BASELINE_REFERENCE_KEY, ref_blob)], cfg)
    try:
        start = time.perf_counter()
        # One take, so that every sample is from this one process (a remote sampler starts a
        # process per take); the time limit applies once BASELINE_SAMPLES are in.
        sampler.take(max(cfg.min_repeats, BASELINE_SAMPLES), cfg.max_seconds * 2, first=True)
        env = env or sampler.environment
    finally:
        sampler.close()
    seconds = time.perf_counter() - start
    timing, ref_timing = (summarize(sampler.samples[k], cfg.statistic, cfg.confidence, cfg.cv_threshold, cfg.rel_ci,
                                    total_s=seconds).to_dict() for k in (CANDIDATE, BASELINE_REFERENCE_KEY))
    out = Path(opts.write_baseline)
    rel = os.path.relpath(Path(opts.model).resolve(), out.resolve().parent)
    baseline = make_baseline(blob, rel, cfg.name, statistics[0] if statistics else cfg.statistic, timing, env,
                             reference=ref_timing)
    atomic_write_json(out, baseline)
    return {"kind": "write-baseline", "verdict": "written", "exit_code": 0, "path": str(out), "device": cfg.name,
            "model": opts.model, "timing": {k: v for k, v in timing.items() if k != "samples_ms"},
            "reference": {"model": ref_name,
                          "timing": {k: v for k, v in ref_timing.items() if k != "samples_ms"}},
            "command": command_line(opts)}


def _regress_model(opts: RegressOptions, cfg: DeviceConfig, tolerance: float, statistics: list[str], mode: str,
                   log: Callable[[str], None]) -> dict[str, Any]:
    baseline = None
    if mode == "baseline":
        baseline = load_baseline(opts.baseline)
        if baseline["device"] != cfg.name:
            raise HwpruneError(f"{opts.baseline}: baseline was measured on device '{baseline['device']}', not "
                               f"'{cfg.name}'; compare against a baseline from the same device")
        model_path = opts.model or str(Path(opts.baseline).parent / str(baseline.get("model") or ""))
        if not opts.model and not baseline.get("model"):
            raise HwpruneError(f"{opts.baseline}: names no model file; give --model")
        statistics = statistics or [baseline.get("statistic") if baseline.get("statistic") in STATISTICS
                                    else cfg.statistic]
    else:
        if not opts.model:
            raise HwpruneError("--against needs --model (the ONNX file to check)")
        model_path = opts.model
        statistics = statistics or [cfg.statistic]
    blob = _read_model(model_path)
    ref_blob = _read_model(opts.against, "--against model") if mode == "against" else None
    warnings: list[str] = []
    drift_blob, base_ref_samples = None, None
    if baseline is not None:
        drift_name, drift_blob = reference_graph()
        stored = baseline.get("reference")
        if stored is None:
            warnings.append(NO_REFERENCE_WARNING)
            drift_blob = None
        elif stored["onnx_sha256"] != _sha256(drift_blob):
            warnings.append(f"the baseline's drift reference ({stored.get('model')}, sha256 "
                            f"{stored['onnx_sha256'][:12]}) is not this hwprune's {drift_name}: the comparison is "
                            "raw, exposed to process-level drift; re-write the baseline with --write-baseline")
            drift_blob = None
        else:
            base_ref_samples = stored["timing"]["samples_ms"]

    now_env = _local_environment(cfg)
    env_info = None
    if baseline is not None and now_env is not None:
        env_info = _environment_check(baseline.get("environment"), baseline.get("fingerprint"), now_env,
                                      f"the baseline {opts.baseline}", opts.allow_env_change)

    for w in warnings:  # after the checks that may refuse: an error stays one line
        log(f"warning: {w}")
    # A/B order: the reference first in every round. The drift reference follows the model,
    # as when the baseline was written.
    if ref_blob is not None:
        items = [(BASELINE, ref_blob), (CANDIDATE, blob)]
    else:
        items = [(CANDIDATE, blob)] + ([(BASELINE_REFERENCE_KEY, drift_blob)] if drift_blob is not None else [])
    log(f"measuring {model_path} on {cfg.name}" + (f" interleaved with {opts.against}" if ref_blob else "")
        + (" interleaved with the drift reference" if drift_blob is not None else ""))
    sampler = open_sampler(items, cfg)
    try:
        base_samples = baseline["timing"]["samples_ms"] if baseline is not None else None
        comps, info = _measure_until_decided(sampler, cfg, statistics, tolerance, opts, base_samples, log,
                                             base_ref_samples)
        if now_env is None:  # remote: the device's manifest arrives with the first measurement
            now_env = sampler.environment
            if baseline is not None:
                env_info = _environment_check(baseline.get("environment"), baseline.get("fingerprint"), now_env,
                                              f"the baseline {opts.baseline}", opts.allow_env_change)
    finally:
        sampler.close()
    if env_info is None:  # --against: nothing stored to compare the environment with
        from profilers.environment import fingerprint

        env_info = {"fingerprint_now": fingerprint(now_env) if now_env else None, "fingerprint_baseline": None,
                    "fingerprint_changed": False, "differences": []}
    verdict = overall_verdict([c.verdict for c in comps])
    sha = _sha256(blob)
    result: dict[str, Any] = {
        "format": RESULT_FORMAT, "kind": "model", "mode": mode, "device": cfg.name, "model": model_path,
        "model_sha256": sha, "verdict": verdict, "exit_code": VERDICT_EXIT[verdict], "tolerance": tolerance,
        "confidence": opts.confidence, "resamples": opts.resamples, "seed": opts.seed,
        "ratio_measure": NORMALISED if base_ref_samples is not None else RAW,
        "comparisons": [c.to_dict() for c in comps], "measurement": info, "environment": env_info,
        "warnings": warnings, "created_unix_s": time.time(),
    }
    if baseline is not None:
        result["baseline"] = {"path": opts.baseline, "model": baseline.get("model"),
                              "onnx_sha256": baseline.get("onnx_sha256"), "created_unix_s": baseline.get("created_unix_s"),
                              "statistic": baseline.get("statistic"),
                              "reference": ({k: v for k, v in baseline["reference"].items() if k != "timing"}
                                            if baseline.get("reference") else None)}
        # A different model is the point of a regression check; it is recorded, not refused.
        result["model_changed"] = baseline.get("onnx_sha256") != sha
    else:
        result["baseline"] = {"path": opts.against, "onnx_sha256": _sha256(ref_blob)}
        result["model_changed"] = _sha256(ref_blob) != sha
    from profilers.stats import summarize

    result["timings"] = {k: summarize(v, statistics[0], cfg.confidence, cfg.cv_threshold, cfg.rel_ci)
                         .to_dict(with_samples=False) for k, v in sampler.samples.items()}
    result["samples_ms"] = {k: list(v) for k, v in sampler.samples.items()}
    return result


# -- LUT drift -------------------------------------------------------------------------------------
def _median_ci(values: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    meds = np.median(values[rng.integers(0, len(values), size=(resamples, len(values)))], axis=1)
    alpha = 1 - confidence
    lo, hi = np.quantile(meds, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def decide_lut(ci_low: float, ci_high: float, tolerance: float) -> str:
    """``stale`` when the median drift's interval lies beyond ±t, ``fresh`` when within."""
    if ci_low > tolerance or ci_high < -tolerance:
        return "stale"
    if -tolerance <= ci_low and ci_high <= tolerance:
        return "fresh"
    return "inconclusive"


def regress_lut(opts: RegressOptions, cfg: DeviceConfig, tolerance: float, statistics: list[str],
                log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Re-time ``opts.sample`` random rows of a LUT and test the median drift (module docstring).

    Each row's candidate is rebuilt from the zoo model the LUT was profiled from (its unit at
    the row's widths, exactly as ``hwprune profile`` built it; the signature is checked) and
    timed through a profiling bundle, interleaved with the identity graph and the drift
    reference, as the row was. Drift is the new time over the LUT's, corrected by the drift
    reference's time then and now where both are recorded.
    """
    import shutil
    import tempfile

    from hwprune.lut import STAT_COLUMNS, LatencyLUT
    from hwprune.measure import statistic_ms, time_items

    if opts.sample < 2:
        raise HwpruneError(f"--sample must be at least 2, got {opts.sample}")
    lut = LatencyLUT.load(opts.lut)
    lut_fp = lut.meta.get("fingerprint")
    if not lut_fp:
        raise HwpruneError(f"{opts.lut}: the LUT has no measured rows")
    now_env = _local_environment(cfg)
    env_info = _environment_check(lut.meta.get("environment"), lut_fp, now_env, f"the LUT {opts.lut}",
                                  opts.allow_env_change) if now_env else None
    models = lut.meta.get("models") or {}
    if opts.model:
        keys = [k for k, s in models.items() if opts.model in (k, s.get("model"))]
    else:
        keys = list(models)
    if len(keys) != 1:
        known = ", ".join(sorted(models)) or "none"
        raise HwpruneError(f"{opts.lut}: " + (f"no model '{opts.model}' in the LUT" if opts.model and not keys
                                              else "pick one model with --model") + f" (models: {known})")
    key = keys[0]
    structure = models[key]
    statistic = statistics[0] if statistics else lut.meta.get("statistic", cfg.statistic)
    if structure.get("batch") != cfg.batch_size or structure.get("precision") != cfg.precision:
        raise HwpruneError(f"{opts.lut}: {key} was profiled at batch {structure.get('batch')} "
                           f"{structure.get('precision')}, the device config says batch {cfg.batch_size} "
                           f"{cfg.precision}")
    where: dict[str, tuple[int, tuple[int, ...]]] = {}
    for ui, unit in enumerate(structure.get("units", [])):
        for point, sig in unit.get("table", {}).items():
            where.setdefault(sig, (ui, tuple(int(v) for v in point.split(",") if v)))
    rows = lut.rows
    rows = rows[(rows["device_fingerprint"] == lut_fp) & (rows["precision"] == cfg.precision)
                & (rows["batch"] == cfg.batch_size) & rows["signature"].isin(list(where))]
    if len(rows) < 2:
        raise HwpruneError(f"{opts.lut}: fewer than 2 measured rows for {key} on this device")
    picked = rows.sample(n=min(opts.sample, len(rows)), random_state=opts.seed)

    import torch

    from hwprune.candidates import build_width_graph
    from hwprune.groups import find_groups
    from hwprune.profile import ModelSpec

    torch.manual_seed(opts.seed)
    c, h, w = structure["input_shape"][1:]
    spec = ModelSpec(structure["model"], (c, h, w), opts.num_classes, structure.get("weights"))
    model = spec.build()
    x = spec.example_input(cfg.batch_size)
    log(f"rebuilding {len(picked)} LUT candidates of {key} ...")
    wg = build_width_graph(model, x, find_groups(model, x))
    units = wg.units()
    if [u.name for u in units] != [u["name"] for u in structure["units"]]:
        raise HwpruneError(f"{opts.lut}: {key}'s layers differ from the model built now (other --num-classes?)")
    items = []
    for sig in picked["signature"]:
        ui, point = where[sig]
        u = units[ui]
        widths = list(wg.dense_widths)
        for g, wd in zip(u.groups, point):
            widths[g] = wd
        if wg.signature(u.nodes, widths) != sig:
            raise HwpruneError(f"{opts.lut}: rebuilt candidate {sig} of unit {u.name} has another signature now "
                               "(other --num-classes, or a changed exporter?)")
        items.append((sig, wg.instantiate(u.nodes, widths), {}))

    records: dict[str, dict[str, Any]] = {}

    def on_record(rec: dict[str, Any]) -> None:
        nonlocal now_env
        if rec.get("type") == "row":
            records[rec["key"]] = rec
        elif rec.get("type") == "session" and now_env is None:
            now_env = rec.get("environment")
        elif rec.get("type") == "error":
            raise HwpruneError(f"LUT candidate {rec['key']} failed on {cfg.name}: {rec['error']}")

    work = Path(tempfile.mkdtemp(prefix="hwprune-regress-lut-"))
    start = time.perf_counter()
    try:
        time_items(items, cfg, work, on_record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if env_info is None:
        env_info = _environment_check(lut.meta.get("environment"), lut_fp, now_env, f"the LUT {opts.lut}",
                                      opts.allow_env_change)
    col = STAT_COLUMNS[statistic]
    out_rows = []
    for _, row in picked.iterrows():
        rec = records[row["signature"]]
        now_ms = statistic_ms(rec["timing"], statistic)
        lut_ms = float(row[col])
        ref_then = row.get("reference_ms")
        ref_now = statistic_ms(rec["batch_reference"], statistic) if rec.get("batch_reference") else None
        adjusted = None
        if ref_now and ref_then is not None and not (isinstance(ref_then, float) and math.isnan(ref_then)):
            adjusted = now_ms * float(ref_then) / ref_now / lut_ms - 1
        out_rows.append({"signature": row["signature"], "op": row.get("op"), "cin": _int_or_none(row.get("cin")),
                         "cout": _int_or_none(row.get("cout")), "lut_ms": lut_ms, "now_ms": now_ms,
                         "drift": now_ms / lut_ms - 1, "adjusted_drift": adjusted, "n": rec["timing"]["n"]})
    use_adjusted = all(r["adjusted_drift"] is not None for r in out_rows)
    drift = np.array([r["adjusted_drift"] if use_adjusted else r["drift"] for r in out_rows])
    med = float(np.median(drift))
    lo, hi = _median_ci(drift, opts.confidence, opts.resamples, opts.seed)
    lo, hi = min(lo, med), max(hi, med)
    verdict = decide_lut(lo, hi, tolerance)
    return {
        "format": RESULT_FORMAT, "kind": "lut", "mode": "lut", "device": cfg.name, "lut": opts.lut, "model": key,
        "statistic": statistic, "verdict": verdict, "exit_code": VERDICT_EXIT[verdict], "tolerance": tolerance,
        "confidence": opts.confidence, "resamples": opts.resamples, "seed": opts.seed,
        "drift_measure": "reference-adjusted" if use_adjusted else "raw",
        "median_drift": med, "ci_low": lo, "ci_high": hi,
        "rows_beyond_tolerance": int(np.sum(np.abs(drift) > tolerance)), "rows": out_rows,
        "measurement": {"seconds": time.perf_counter() - start, "rows": len(out_rows)},
        "environment": env_info, "created_unix_s": time.time(),
    }


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None


# -- reports ---------------------------------------------------------------------------------------
def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%" if math.isfinite(ratio) else "n/a"


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def format_text(result: dict[str, Any]) -> str:
    """The plain-text summary the CLI prints."""
    if result["kind"] == "write-baseline":
        t = result["timing"]
        ref = result.get("reference")
        beside = (f"; drift reference {ref['model']} timed beside it: n={ref['timing']['n']} "
                  f"p50={ref['timing']['p50_ms']:.4f} ms") if ref else ""
        return (f"wrote baseline {result['path']}: {result['model']} on {result['device']}, n={t['n']} "
                f"p50={t['p50_ms']:.4f} ms p90={t['p90_ms']:.4f} ms p99={t['p99_ms']:.4f} ms{beside}")
    lines = []
    if result["kind"] == "lut":
        lines.append(f"{'signature':18s} {'op':28s} {'LUT ms':>9s} {'now ms':>9s} {'drift':>8s} {'adjusted':>9s}")
        for r in result["rows"]:
            adj = f"{r['adjusted_drift'] * 100:+8.1f}%" if r["adjusted_drift"] is not None else "n/a"
            lines.append(f"{r['signature']:18s} {str(r['op'])[:28]:28s} {r['lut_ms']:9.4f} {r['now_ms']:9.4f} "
                         f"{r['drift'] * 100:+7.1f}% {adj:>9s}")
        lines.append(f"LUT {result['lut']} ({result['model']}, {result['statistic']}) on {result['device']}: median "
                     f"{result['drift_measure']} drift {result['median_drift'] * 100:+.1f}% "
                     f"({int(round(result['confidence'] * 100))}% CI {result['ci_low'] * 100:+.1f}% .. "
                     f"{result['ci_high'] * 100:+.1f}%), tolerance ±{result['tolerance'] * 100:g}%: "
                     f"{result['verdict'].upper()}")
    else:
        normalised = result.get("ratio_measure") == NORMALISED
        lines.append(f"{'stat':5s} {'baseline ms':>12s} {'now ms':>10s} {'raw':>8s} "
                     + (f"{'ref now/then':>12s} {'normalised':>10s} " if normalised else "")
                     + f"{'CI':>19s} {'MW p':>8s} {'n base/now':>12s}  verdict")
        for c in result["comparisons"]:
            ci = f"[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"
            norm = f"{_fmt(c.get('reference_ratio'), '.4f'):>12s} {_pct(c['ratio']):>10s} " if normalised else ""
            lines.append(f"{c['statistic']:5s} {c['baseline_ms']:12.4f} {c['candidate_ms']:10.4f} "
                         f"{_pct(c.get('raw_ratio', c['ratio'])):>8s} {norm}{ci:>19s} "
                         f"{_fmt(c['mannwhitney_p_slower'], '.2g'):>8s} "
                         f"{c['n_baseline']:>5d}/{c['n_candidate']:<6d}  {c['verdict']}")
        if normalised:
            lines.append("the verdict tests the ratio normalised by the drift reference timed beside the model "
                         "(ref now/then: the machine's speed change; >1 is slower now)")
        for w in result.get("warnings", []):
            lines.append(f"warning: {w}")
        for d in result["environment"]["differences"]:
            lines.append(f"environment: {d}")
        if result.get("model_changed"):
            lines.append(f"model differs from the baseline's (sha256 {result['model_sha256'][:12]})")
        ref = result["baseline"]["path"]
        how = f"interleaved against {ref}" if result["mode"] == "against" else f"vs stored baseline {ref}"
        lines.append(f"{result['model']} on {result['device']} ({how}), tolerance ±{result['tolerance'] * 100:g}%: "
                     f"{result['verdict'].upper()}")
    lines.append(f"reproduce: {result['command']}")
    return "\n".join(lines)


_BADGE = {"pass": "PASS", "improved": "IMPROVED", "regressed": "REGRESSED", "inconclusive": "INCONCLUSIVE",
          "fresh": "FRESH", "stale": "STALE"}


def to_markdown(result: dict[str, Any]) -> str:
    """A Markdown summary for a CI job page (``$GITHUB_STEP_SUMMARY``)."""
    conf = f"{int(round(result['confidence'] * 100))}%"
    out = []
    if result["kind"] == "lut":
        out.append(f"### LUT drift: `{result['model']}` on `{result['device']}` — **{_BADGE[result['verdict']]}**\n")
        out.append(f"Median {result['drift_measure']} drift of {len(result['rows'])} re-measured rows "
                   f"({result['statistic']}): **{result['median_drift'] * 100:+.1f}%** ({conf} CI "
                   f"{result['ci_low'] * 100:+.1f}% .. {result['ci_high'] * 100:+.1f}%), tolerance "
                   f"±{result['tolerance'] * 100:g}%; {result['rows_beyond_tolerance']} rows beyond it.\n")
        out.append("| signature | op | LUT ms | now ms | drift | adjusted drift |")
        out.append("|---|---|---:|---:|---:|---:|")
        for r in result["rows"]:
            adj = f"{r['adjusted_drift'] * 100:+.1f}%" if r["adjusted_drift"] is not None else "n/a"
            out.append(f"| `{r['signature']}` | {r['op']} | {r['lut_ms']:.4f} | {r['now_ms']:.4f} | "
                       f"{r['drift'] * 100:+.1f}% | {adj} |")
    else:
        mode = (f"interleaved A/B against `{result['baseline']['path']}` in one process" if result["mode"] == "against"
                else f"against the stored baseline `{result['baseline']['path']}`")
        out.append(f"### Latency regression: `{Path(result['model']).name}` on `{result['device']}` — "
                   f"**{_BADGE[result['verdict']]}**\n")
        normalised = result.get("ratio_measure") == NORMALISED
        if normalised:
            out.append(f"Measured {mode}, with the drift reference timed beside the model then and now; the "
                       f"verdict tests the **reference-normalised** ratio (now / baseline, divided by the "
                       f"reference's now / then: the machine's speed change between the two processes); "
                       f"tolerance ±{result['tolerance'] * 100:g}%, {conf} bootstrap CI ({result['resamples']} "
                       f"resamples, seed {result['seed']}).\n")
            out.append(f"| statistic | baseline ms | now ms | raw change | reference now / then | normalised change "
                       f"| {conf} CI (normalised) | Mann-Whitney p (slower) | n baseline / now | verdict |")
            out.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
        else:
            out.append(f"Measured {mode}; tolerance ±{result['tolerance'] * 100:g}%, {conf} bootstrap CI of the "
                       f"ratio now / baseline ({result['resamples']} resamples, seed {result['seed']}).\n")
            out.append(f"| statistic | baseline ms | now ms | change | {conf} CI | Mann-Whitney p (slower) | "
                       "n baseline / now | verdict |")
            out.append("|---|---:|---:|---:|---|---:|---:|---|")
        for c in result["comparisons"]:
            norm = (f"{_pct(c.get('raw_ratio', c['ratio']))} | {_fmt(c.get('reference_ratio'))} | {_pct(c['ratio'])}"
                    if normalised else _pct(c["ratio"]))
            out.append(f"| {c['statistic']} | {c['baseline_ms']:.4f} | {c['candidate_ms']:.4f} | {norm} | "
                       f"{_pct(c['ci_low'])} .. {_pct(c['ci_high'])} | {_fmt(c['mannwhitney_p_slower'], '.2g')} | "
                       f"{c['n_baseline']} / {c['n_candidate']} | **{c['verdict']}** |")
        out.append("")
        for w in result.get("warnings", []):
            out.append(f"- :warning: {w}")
        for c in result["comparisons"]:
            if c["verdict"] != "pass":
                out.append(f"- {c['statistic']}: {c['reason']}")
        if result.get("model_changed"):
            out.append(f"- the model differs from the baseline's (sha256 `{result['model_sha256'][:12]}` vs "
                       f"`{str(result['baseline'].get('onnx_sha256'))[:12]}`)")
    env = result.get("environment") or {}
    if env.get("differences"):
        out.append("\n<details><summary>Environment differences since the baseline"
                   f"{' (fingerprint changed, allowed)' if env.get('fingerprint_changed') else ''}</summary>\n")
        out += [f"- `{d}`" for d in env["differences"]]
        out.append("\n</details>")
    out.append(f"\nReproduce: `{result['command']}`\n")
    return "\n".join(out)


def to_junit(result: dict[str, Any]) -> str:
    """JUnit XML: one testcase per model x statistic (or one for a LUT check).

    A regression (stale LUT) is a ``<failure>``; an inconclusive result is ``<skipped>``
    (the job's exit code 3 says it; a red test would claim a regression that was not shown).
    """
    import socket
    import xml.etree.ElementTree as ET

    seconds = float(result.get("measurement", {}).get("seconds", 0.0))
    suites = ET.Element("testsuites", name="hwprune regress")
    suite = ET.SubElement(suites, "testsuite", name=f"hwprune regress {result['device']}",
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(result["created_unix_s"])),
                          hostname=socket.gethostname())
    sprops = ET.SubElement(suite, "properties")
    for name, value in (("device", result["device"]), ("mode", result["mode"]), ("tolerance", result["tolerance"]),
                        ("confidence", result["confidence"]), ("verdict", result["verdict"]),
                        ("ratio_measure", result.get("ratio_measure") or result.get("drift_measure")),
                        ("warnings", " | ".join(result.get("warnings", []))),
                        ("fingerprint", (result.get("environment") or {}).get("fingerprint_now")),
                        ("command", result.get("command"))):
        ET.SubElement(sprops, "property", name=name, value=str(value))
    classname = f"hwprune.regress.{result['device']}"
    cases: list[tuple[str, str, dict[str, Any], str]] = []
    if result["kind"] == "lut":
        props = {"median_drift": result["median_drift"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
                 "rows": len(result["rows"]), "rows_beyond_tolerance": result["rows_beyond_tolerance"],
                 "statistic": result["statistic"], "drift_measure": result["drift_measure"]}
        msg = (f"median drift {result['median_drift'] * 100:+.1f}% (CI {result['ci_low'] * 100:+.1f}% .. "
               f"{result['ci_high'] * 100:+.1f}%) vs tolerance ±{result['tolerance'] * 100:g}%")
        cases.append((f"lut {result['model']} {result['statistic']}", result["verdict"], props, msg))
    else:
        for c in result["comparisons"]:
            props = {k: c.get(k) for k in ("ratio", "ci_low", "ci_high", "ratio_measure", "raw_ratio", "raw_ci_low",
                                           "raw_ci_high", "reference_ratio", "baseline_ms", "candidate_ms",
                                           "baseline_reference_ms", "candidate_reference_ms", "mannwhitney_p_slower",
                                           "prob_slower", "n_baseline", "n_candidate", "n_baseline_reference",
                                           "n_candidate_reference", "samples_to_decide")}
            cases.append((f"{Path(result['model']).name} {c['statistic']}", c["verdict"], props, c["reason"]))
    failures = skipped = 0
    for name, verdict, props, msg in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")
        cp = ET.SubElement(case, "properties")
        ET.SubElement(cp, "property", name="verdict", value=verdict)
        for k, v in props.items():
            ET.SubElement(cp, "property", name=k, value="" if v is None else str(v))
        if verdict in ("regressed", "stale"):
            failures += 1
            el = ET.SubElement(case, "failure", message=f"{verdict}: {msg}", type=verdict)
            el.text = f"{msg}\nreproduce: {result.get('command')}"
        elif verdict == "inconclusive":
            skipped += 1
            ET.SubElement(case, "skipped", message=f"inconclusive: {msg}")
        out = ET.SubElement(case, "system-out")
        out.text = f"{verdict}: {msg}"
    for el in (suites, suite):
        el.set("tests", str(len(cases)))
        el.set("failures", str(failures))
        el.set("errors", "0")
        el.set("skipped", str(skipped))
        el.set("time", f"{seconds:.3f}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _json_safe(obj: Any) -> Any:
    """NaN/inf as null: strict JSON readers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_outputs(result: dict[str, Any], opts: RegressOptions) -> None:
    """Write the JUnit, Markdown and JSON files asked for, each atomically."""
    if opts.junit:
        atomic_write_text(opts.junit, to_junit(result))
    if opts.markdown:
        atomic_write_text(opts.markdown, to_markdown(result))
    if opts.json:
        atomic_write_json(opts.json, _json_safe(result))
