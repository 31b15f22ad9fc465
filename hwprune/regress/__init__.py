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

Against a stored baseline with a drift reference, [lo, hi] is the normalised ratio's; a
``regressed`` there also needs the raw ratio's interval to lie above 1 + t, else the verdict is
``inconclusive``: normalising by a reference that ran faster now than when it was stored turned
an unchanged model into a regression on a loaded machine (+0.8% raw read as +11.4%).

Machine states (``hwprune.regress.states``): every burst is probed for the speed state the machine
ran it in (``profilers.machine_state``), and a baseline keeps its samples' states. When either side
was measured in more than one state, or the two in different ones, the test above runs in each
state both sides (and both references) have enough samples in, and the worst of those verdicts
stands; with no state in common the verdict is ``inconclusive`` whatever the pooled ratio says,
because a small model's speed relative to the reference moves with the state (an unchanged
pruned resnet20 read +32.8% normalised across two states). One shared state is the pooled test.

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

The package, one concept a module: ``options`` (RegressOptions, the command line),
``compare`` (the test and its verdicts), ``sampler`` (timing on the device until the test
decides), ``environment`` (fingerprint checks), ``run`` (the entry point, ``regress``),
``lut_drift`` (the LUT check) and ``report`` (text, Markdown, JUnit, JSON); the baseline.json
format is ``hwprune.baseline``. Their public names are re-exported here; code looks each up
in its own module, so a test that replaces one (``open_sampler``) patches it there
(``hwprune.regress.run.open_sampler``).

Example:
    >>> from hwprune.regress import RegressOptions, regress
    >>> r = regress(RegressOptions(device="x86-cpu-ort", model="runs/r20/pruned.onnx",
    ...                            baseline="runs/r20/baseline.json"))  # doctest: +SKIP
    >>> r["verdict"], r["exit_code"]  # doctest: +SKIP
    ('pass', 0)
"""

from __future__ import annotations

from hwprune.baseline import (BASELINE_FORMAT, BASELINE_REFERENCE_KEY, BASELINE_SAMPLES, REFERENCE_NAME, _sha256,
                              load_baseline, make_baseline, reference_graph)  # noqa: F401 (_sha256: tests use it)
from hwprune.regress.compare import (AIM_FRACTION, MAX_SAMPLES, MEAN_RESAMPLE_LIMIT, MIN_RESAMPLES, MIN_TAIL_SAMPLES,
                                     NORMALISED, QUANTILES, RAW, REFERENCE_STATISTIC, STATISTICS, VERDICT_EXIT,
                                     Comparison, bootstrap_statistic, compare_samples, decide, overall_verdict,
                                     point_statistic, samples_to_decide)
from hwprune.regress.lut_drift import decide_lut, regress_lut
from hwprune.regress.options import RegressOptions, command_line, parse_tolerance
from hwprune.regress.report import RESULT_FORMAT, format_text, to_junit, to_markdown, write_outputs
from hwprune.regress.run import NO_REFERENCE_WARNING, regress, write_baseline
from hwprune.regress.sampler import (BASELINE, BURST, CANDIDATE, HOPELESS_FACTOR, MAX_EXTRA_ROUNDS, BundleSampler,
                                     LocalSampler, open_sampler)

# The drift reference's key under its old name (older callers import it); prefer BASELINE_REFERENCE_KEY.
REFERENCE = BASELINE_REFERENCE_KEY

__all__ = [
    # hwprune.baseline
    "BASELINE_FORMAT", "BASELINE_REFERENCE_KEY", "BASELINE_SAMPLES", "REFERENCE", "REFERENCE_NAME", "load_baseline",
    "make_baseline", "reference_graph",
    # compare
    "AIM_FRACTION", "MAX_SAMPLES", "MEAN_RESAMPLE_LIMIT", "MIN_RESAMPLES", "MIN_TAIL_SAMPLES", "NORMALISED",
    "QUANTILES", "RAW", "REFERENCE_STATISTIC", "STATISTICS", "VERDICT_EXIT", "Comparison", "bootstrap_statistic",
    "compare_samples", "decide", "overall_verdict", "point_statistic", "samples_to_decide",
    # lut_drift
    "decide_lut", "regress_lut",
    # options
    "RegressOptions", "command_line", "parse_tolerance",
    # report
    "RESULT_FORMAT", "format_text", "to_junit", "to_markdown", "write_outputs",
    # run
    "NO_REFERENCE_WARNING", "regress", "write_baseline",
    # sampler
    "BASELINE", "BURST", "CANDIDATE", "HOPELESS_FACTOR", "MAX_EXTRA_ROUNDS", "BundleSampler", "LocalSampler",
    "open_sampler",
]
