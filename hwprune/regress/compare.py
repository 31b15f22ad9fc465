"""The test: bootstrap intervals of candidate/baseline ratios, and the verdicts read from them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

from hwprune.errors import HwpruneError

STATISTICS = ("p50", "p90", "p99", "mean")
QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
# Exit codes of the verdicts: a model check's and a LUT check's (hwprune.regress's docstring).
VERDICT_EXIT = {"pass": 0, "improved": 0, "regressed": 1, "inconclusive": 3, "fresh": 0, "stale": 1}
# A quantile's bootstrap is meaningless until this many samples lie beyond it on each side.
MIN_TAIL_SAMPLES = 5
# The fewest bootstrap resamples a check may ask for (--resamples).
MIN_RESAMPLES = 1000
# Above this many resampled values the mean's bootstrap is drawn from its normal limit.
MEAN_RESAMPLE_LIMIT = 20_000_000
# Extra samples aim the new half-width at this fraction of the distance to the edge. The new
# point estimate scatters by (half-width / 1.96); at 0.6 the interval then clears the edge
# with ~90% probability when the current estimate is right (0.6 m + 1.28 * 0.6 m / 1.96 = m),
# instead of ~50% when aiming at the edge itself.
AIM_FRACTION = 0.6
# A sample count beyond this is reported as "no sample count decides it".
MAX_SAMPLES = 10**9
# The reference reads the machine's speed level from its median (hwprune.regress's docstring).
REFERENCE_STATISTIC = "p50"
NORMALISED, RAW = "reference-normalised", "raw"


def point_statistic(samples: Sequence[float], statistic: str) -> float:
    """The statistic of raw samples, as ``profilers.stats.summarize`` computes it."""
    x = np.asarray(samples, dtype=float)
    return float(x.mean()) if statistic == "mean" else float(np.percentile(x, QUANTILES[statistic] * 100))


def bootstrap_statistic(samples: Sequence[float], statistic: str, resamples: int,
                        rng: np.random.Generator) -> np.ndarray:
    """``resamples`` draws of the statistic over bootstrap resamples of ``samples``.

    Quantiles (linear interpolation between order statistics, as ``np.percentile``) are
    drawn through the uniform order statistics (see ``hwprune.regress``'s docstring); the mean is
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
    """The verdict for an interval [ci_low, ci_high] of candidate/baseline (``hwprune.regress``'s docstring)."""
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
    # Compared per machine state (hwprune.regress.states): the state the figures are from, and
    # every state each side was measured in with what each comparison gave. None: pooled.
    state_probe_us: float | None = None
    machine_states: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(log_ratios: np.ndarray, confidence: float, point: float) -> tuple[float, float]:
    alpha = 1 - confidence
    lo, hi = (float(v) for v in np.exp(np.quantile(log_ratios, [alpha / 2, 1 - alpha / 2])))
    # Percentile intervals can exclude the point estimate when the bootstrap is very skewed.
    return min(lo, point), max(hi, point)


@dataclass
class _Reference:
    """The drift reference's samples beside the baseline and beside the candidate, and their medians."""

    baseline: np.ndarray
    candidate: np.ndarray
    scale_b: float
    scale_c: float


@dataclass
class _Intervals:
    """The bootstrap intervals of the ratio the verdict reads and of the raw ratio, and the log-ratio's
    variance parts (raw: baseline and candidate; all: the part that cannot grow and the part that can)."""

    lo: float
    hi: float
    raw_lo: float
    raw_hi: float
    raw_var_b: float
    raw_var_c: float
    var_fixed: float
    var_grow: float


def compare_samples(baseline_ms: Sequence[float], candidate_ms: Sequence[float], statistic: str, tolerance: float,
                    *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                    baseline_fixed: bool = True, baseline_reference_ms: Sequence[float] | None = None,
                    candidate_reference_ms: Sequence[float] | None = None) -> Comparison:
    """Test candidate against baseline samples for one statistic.

    ``baseline_fixed``: the baseline samples cannot grow (a stored baseline), which decides
    how many more samples an inconclusive result needs. ``baseline_reference_ms`` and
    ``candidate_reference_ms`` (both or neither): the drift reference timed beside the
    baseline and beside the candidate; with them the verdict tests the reference-normalised
    ratio (``hwprune.regress``'s docstring), and Mann-Whitney compares the samples divided by their side's
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
    ref = _reference(baseline_reference_ms, candidate_reference_ms)
    scale_b, scale_c = (ref.scale_b, ref.scale_c) if ref is not None else (1.0, 1.0)
    u = mannwhitneyu(c / scale_c, b / scale_b, alternative="greater")
    base = _point_comparison(b, c, statistic, tolerance, confidence, ref, float(u.pvalue), float(u.statistic))
    short = _too_few_samples(base, baseline_fixed)
    if short is not None:
        return short
    iv = _bootstrap_intervals(b, c, ref, base, resamples, seed)
    base = replace(base, raw_ci_low=iv.raw_lo, raw_ci_high=iv.raw_hi)
    verdict = decide(iv.lo, iv.hi, tolerance)
    if ref is not None and verdict == "regressed" and decide(iv.raw_lo, iv.raw_hi, tolerance) != "regressed":
        return _disputed_regression(base, iv, baseline_fixed)
    return _decided(base, iv, verdict, baseline_fixed)


def _reference(baseline_reference_ms: Sequence[float] | None,
               candidate_reference_ms: Sequence[float] | None) -> _Reference | None:
    """The drift reference's samples and medians on both sides; None without a reference."""
    if baseline_reference_ms is None:
        return None
    rb = np.asarray(baseline_reference_ms, dtype=float)
    rc = np.asarray(candidate_reference_ms, dtype=float)
    return _Reference(baseline=rb, candidate=rc, scale_b=point_statistic(rb, REFERENCE_STATISTIC),
                      scale_c=point_statistic(rc, REFERENCE_STATISTIC))


def _point_comparison(b: np.ndarray, c: np.ndarray, statistic: str, tolerance: float, confidence: float,
                      ref: _Reference | None, mannwhitney_p: float, mannwhitney_u: float) -> Comparison:
    """The comparison's point figures (ratios, sample counts, the Mann-Whitney test); verdict, reason and
    intervals are placeholders that every caller replaces."""
    nb, nc = len(b), len(c)
    pb, pc = point_statistic(b, statistic), point_statistic(c, statistic)
    raw_ratio = pc / pb
    base = Comparison(statistic=statistic, verdict="inconclusive", reason="", baseline_ms=pb, candidate_ms=pc,
                      ratio=raw_ratio, ci_low=math.nan, ci_high=math.nan, confidence=confidence,
                      tolerance=tolerance, n_baseline=nb, n_candidate=nc, mannwhitney_p_slower=mannwhitney_p,
                      prob_slower=mannwhitney_u / (nb * nc), raw_ratio=raw_ratio)
    if ref is None:
        return base
    return replace(base, ratio=raw_ratio / (ref.scale_c / ref.scale_b), ratio_measure=NORMALISED,
                   baseline_reference_ms=ref.scale_b, candidate_reference_ms=ref.scale_c,
                   reference_ratio=ref.scale_c / ref.scale_b, n_baseline_reference=len(ref.baseline),
                   n_candidate_reference=len(ref.candidate))


def _too_few_samples(base: Comparison, baseline_fixed: bool) -> Comparison | None:
    """An inconclusive result when a side has too few samples for its statistic (or its reference's); None
    when both have enough."""
    statistic, nb, nc = base.statistic, base.n_baseline, base.n_candidate
    with_ref = base.ratio_measure == NORMALISED
    need = _min_samples(statistic)
    need_ref = _min_samples(REFERENCE_STATISTIC)
    short_base = [f"the baseline has {nb} samples; {statistic} needs at least {need}"] if nb < need else []
    short_now = [f"{nc} samples measured; {statistic} needs at least {need}"] if nc < need else []
    if with_ref:
        if base.n_baseline_reference < need_ref:
            short_base.append(f"the baseline's drift reference has {base.n_baseline_reference} samples; "
                              f"its {REFERENCE_STATISTIC} needs at least {need_ref}")
        if base.n_candidate_reference < need_ref:
            short_now.append(f"{base.n_candidate_reference} drift reference samples measured; "
                             f"its {REFERENCE_STATISTIC} needs at least {need_ref}")
    if short_base:
        grow = None if baseline_fixed else need
        return replace(base, verdict="inconclusive", ci_low=math.nan, ci_high=math.nan, samples_to_decide=grow,
                       reason="; ".join(short_base))
    if short_now:
        return replace(base, verdict="inconclusive", ci_low=math.nan, ci_high=math.nan,
                       samples_to_decide=max(need, need_ref if with_ref else 0), reason="; ".join(short_now))
    return None


def _bootstrap_intervals(b: np.ndarray, c: np.ndarray, ref: _Reference | None, base: Comparison,
                         resamples: int, seed: int) -> _Intervals:
    """Bootstrap the statistic on both sides (and the reference's median on both, when there is one)
    from one seeded stream, and read the ratios' intervals from them."""
    rng = np.random.default_rng(seed)
    log_b = np.log(bootstrap_statistic(b, base.statistic, resamples, rng))
    log_c = np.log(bootstrap_statistic(c, base.statistic, resamples, rng))
    raw_lo, raw_hi = _interval(log_c - log_b, base.confidence, base.raw_ratio)
    var_fixed, var_grow = float(log_b.var()), float(log_c.var())
    if ref is not None:
        log_rb = np.log(bootstrap_statistic(ref.baseline, REFERENCE_STATISTIC, resamples, rng))
        log_rc = np.log(bootstrap_statistic(ref.candidate, REFERENCE_STATISTIC, resamples, rng))
        lo, hi = _interval((log_c - log_rc) - (log_b - log_rb), base.confidence, base.ratio)
        # the stored reference cannot grow either; the one timed now grows with the model
        var_fixed += float(log_rb.var())
        var_grow += float(log_rc.var())
    else:
        lo, hi = raw_lo, raw_hi
    return _Intervals(lo=lo, hi=hi, raw_lo=raw_lo, raw_hi=raw_hi, raw_var_b=float(log_b.var()),
                      raw_var_c=float(log_c.var()), var_fixed=var_fixed, var_grow=var_grow)


def _disputed_regression(base: Comparison, iv: _Intervals, baseline_fixed: bool) -> Comparison:
    """Inconclusive: the reference-normalised interval says regressed but the raw one does not."""
    tolerance = base.tolerance
    pct = f"{base.confidence * 100:.4g}%"   # 97.5% where two machine states share 95%
    # Normalising by a drift reference that ran faster now than then turns an unchanged
    # model into a "regression" (measured under load: +0.8% raw read as +11.4%). A verdict
    # that fails a CI job needs both measures to agree; more samples do not settle it.
    reason = (f"{pct} CI of the {base.statistic} ratio normalised by the drift reference [{iv.lo:.4f}, {iv.hi:.4f}] "
              f"lies above 1+t = {1 + tolerance:.4f}, but the raw ratio's [{iv.raw_lo:.4f}, {iv.raw_hi:.4f}] does "
              f"not: the reference ran {base.reference_ratio:.3f}x its stored time, so the machine, not the model, "
              f"may have changed; measure again on a quieter machine")
    more = None
    if decide(iv.raw_lo, iv.raw_hi, tolerance) == "inconclusive":
        # the raw interval straddles 1 + t: more samples may confirm the regression on it too
        raw_share = iv.raw_var_b / (iv.raw_var_b + iv.raw_var_c) if iv.raw_var_b + iv.raw_var_c > 0 else 0.0
        more = samples_to_decide(base.raw_ratio, iv.raw_lo, iv.raw_hi, tolerance, base.n_candidate, raw_share,
                                 baseline_fixed)
    return replace(base, verdict="inconclusive", reason=reason, ci_low=iv.lo, ci_high=iv.hi, samples_to_decide=more)


def _decided(base: Comparison, iv: _Intervals, verdict: str, baseline_fixed: bool) -> Comparison:
    """The result for ``verdict`` read from the interval, with its reason and, when inconclusive, how
    many samples should decide it."""
    tolerance = base.tolerance
    pct = f"{base.confidence * 100:.4g}%"   # 97.5% where two machine states share 95%
    what = f"{base.statistic} ratio" + (" (normalised by the drift reference)" if base.ratio_measure == NORMALISED
                                        else "")
    span = f"{pct} CI of {what} [{iv.lo:.4f}, {iv.hi:.4f}]"
    reason = {
        "regressed": f"{span} lies above 1+t = {1 + tolerance:.4f}",
        "improved": f"{span} lies below 1-t = {1 - tolerance:.4f}",
        "pass": f"{span} lies below 1+t = {1 + tolerance:.4f}",
        "inconclusive": f"{span} straddles 1+t = {1 + tolerance:.4f}",
    }[verdict]
    more = None
    if verdict == "inconclusive":
        share = iv.var_fixed / (iv.var_fixed + iv.var_grow) if iv.var_fixed + iv.var_grow > 0 else 0.0
        more = samples_to_decide(base.ratio, iv.lo, iv.hi, tolerance, base.n_candidate, share, baseline_fixed)
        if more is None:
            reason += ("; no sample count decides it (the estimate sits on the edge, or the stored "
                       "baseline's own spread is too wide)")
    return replace(base, verdict=verdict, reason=reason, ci_low=iv.lo, ci_high=iv.hi, samples_to_decide=more)


def overall_verdict(verdicts: Sequence[str]) -> str:
    """Several statistics' verdicts as one (``hwprune.regress``'s docstring)."""
    if "regressed" in verdicts:
        return "regressed"
    if "inconclusive" in verdicts:
        return "inconclusive"
    if verdicts and all(v == "improved" for v in verdicts):
        return "improved"
    return "pass"

