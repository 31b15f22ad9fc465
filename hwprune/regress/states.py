"""A regression check per machine state: the baseline and the candidate compared in the states both were measured in.

On a machine that switches between speed states (:mod:`profilers.machine_state`) a small model
slows far more than the drift reference does in the slow state, so a candidate measured in the
slow state against a baseline stored in the fast one reads as a regression that no model change
made (measured: an unchanged pruned resnet20, +56.8% raw and +32.8% after the reference's
normalisation). Both sides' samples carry their states, so :func:`compare_in_states` compares
them state by state:

- Every sample of both sides in one state, the same one (a steady machine): the pooled
  comparison, as always.
- States both sides have enough samples in (``MIN_STATE_SAMPLES``: five bursts; the drift
  reference's too when there is one): a comparison in each, on that state's samples only, at a
  confidence shared out among them (Bonferroni: k states at 1 - (1 - confidence) / k each, so
  that taking the worst of k does not raise the false-alarm rate k-fold). The verdict is the
  worst of them (a regression in any state is a regression); the result's figures are that
  state's, its ``state_probe_us`` says which, and ``machine_states`` lists every state and what
  it gave.
- No state in common, while either side switched states: "inconclusive", with the pooled figures
  and what they would have read (a change cannot be told from the change of state, either way),
  asking for more samples in case the baseline's state comes back while there is time.
- One state on each side, different ones (a steady machine whose probe reads another level now):
  "inconclusive" too, with what the pooled test would read. On one machine it is a change of
  state, which the drift reference does not normalise for a small model (an unchanged one read
  +37.5%); on another host (``--allow-env-change``) the baseline is written again there.
- Labels missing on any side (an old baseline, a sampler without the probe): pooled.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from hwprune.regress.compare import Comparison, compare_samples
from hwprune.states import judgeable
from profilers.machine_state import StateLabels, find_state, same_state

Timing = dict[str, Any]
# A state decides a regression only with this many samples of every side in it: five bursts of
# 20. Samples of one burst are taken back to back and move together, so two bursts are nearer two
# observations than forty; with two, an unchanged model once read +43% in a slow state whose few
# reference bursts had run fast (bench/regress_states.py, BENCHMARKS).
MIN_STATE_SAMPLES = 100
ORDER = {"regressed": 0, "inconclusive": 1, "pass": 2, "improved": 3}


def compare_in_states(baseline: Timing, candidate: Timing, statistic: str, tolerance: float, *,
                      baseline_reference: Timing | None = None, candidate_reference: Timing | None = None,
                      **kw: Any) -> Comparison:
    """``compare_samples`` on the samples of ``baseline`` and ``candidate`` (TimingStats-like dicts:
    ``samples_ms``, and ``state_probe_us``/``sample_states`` when probed), state by state as the
    module text says. ``kw`` goes to ``compare_samples`` (confidence, resamples, seed, baseline_fixed)."""
    refs = (baseline_reference, candidate_reference)

    def pooled() -> Comparison:
        return compare_samples(baseline["samples_ms"], candidate["samples_ms"], statistic, tolerance,
                               baseline_reference_ms=_samples(baseline_reference),
                               candidate_reference_ms=_samples(candidate_reference), **kw)

    sides = [t for t in (baseline, candidate, *refs) if t is not None]
    if any(StateLabels.of(t) is None for t in sides) or all(_steady(t) for t in sides) and _same_level(sides):
        return pooled()
    b_states, c_states = judgeable(baseline, MIN_STATE_SAMPLES), judgeable(candidate, MIN_STATE_SAMPLES)
    seen: dict[str, Any] = {"baseline_probe_us": sorted(b_states), "candidate_probe_us": sorted(c_states),
                            "compared": [], "how": "pooled"}
    if not b_states:   # a stored side too thin in every state: nothing better than the pooled test
        return replace(pooled(), machine_states=seen)
    if not c_states:
        return _too_thin(pooled(), {**seen, "how": "too few samples in any state"}, candidate)
    common = _common(b_states, c_states, refs)
    if not common:
        if len(b_states) == len(c_states) == 1:
            return _other_level(pooled(), {**seen, "how": "steady at other probe levels"})
        return _unmatched(pooled(), {**seen, "how": "no state in common"})
    per_state = _per_state(common, statistic, tolerance, len(candidate["samples_ms"]), kw)
    probe, governing = min(per_state, key=lambda s: (ORDER[s[1].verdict], -s[1].ratio))
    if governing.verdict == "inconclusive":   # the loop samples for the state that needs the most
        counts = [c.samples_to_decide for _, c in per_state if c.verdict == "inconclusive" and c.samples_to_decide]
        governing = replace(governing, samples_to_decide=max(counts) if counts else None)
    seen["how"] = "per state"
    seen["compared"] = [{"probe_us": p, "verdict": c.verdict, "ratio": c.ratio, "ci_low": c.ci_low,
                         "ci_high": c.ci_high, "confidence": c.confidence, "n_baseline": c.n_baseline,
                         "n_candidate": c.n_candidate} for p, c in per_state]
    return replace(governing, state_probe_us=probe, machine_states=seen,
                   reason=f"in the machine state with probe {probe:.0f} µs (of {len(per_state)} compared): "
                          + governing.reason)


def _per_state(common: list[tuple[float, float, tuple]], statistic: str, tolerance: float, n_candidate: int,
               kw: dict[str, Any]) -> list[tuple[float, Comparison]]:
    """A comparison in each common state, at the confidence shared out among them."""
    confidence = kw.get("confidence", 0.95)
    each = {**kw, "confidence": 1 - (1 - confidence) / len(common)}
    out = []
    for _, pc, (b, c, rb, rc) in common:
        comp = compare_samples(b, c, statistic, tolerance, baseline_reference_ms=rb, candidate_reference_ms=rc, **each)
        if comp.samples_to_decide is not None:   # of this state's samples: as many more overall, by its share
            comp = replace(comp, samples_to_decide=math.ceil(comp.samples_to_decide * n_candidate / len(c)))
        out.append((pc, comp))
    return out


def _samples(timing: Timing | None) -> list[float] | None:
    return None if timing is None else timing["samples_ms"]


def _steady(timing: Timing) -> bool:
    """Every sample labelled with one and the same state (none straddling a switch)."""
    labels = StateLabels.of(timing)
    return labels is not None and len(set(labels.labels)) <= 1 and -1 not in labels.labels


def _same_level(sides: list[Timing]) -> bool:
    """The steady sides' one state is the same one (by probe time) on all of them."""
    probes = [t["state_probe_us"][t["sample_states"][0]] for t in sides if t["sample_states"]]
    return all(same_state(probes[0], p) for p in probes[1:])


def _common(b_states: dict[float, list[float]], c_states: dict[float, list[float]],
            refs: tuple[Timing | None, Timing | None]) -> list[tuple[float, float, tuple]]:
    """The states both sides (and both references, when there are) can judge in, each with its samples."""
    ref_states = [judgeable(r, MIN_STATE_SAMPLES) if r is not None else None for r in refs]
    out = []
    for pb, b in sorted(b_states.items()):
        pc, c = _in(c_states, pb)
        rb, rc = (None if s is None else _in(s, pb)[1] for s in ref_states)
        if c is None or (refs[0] is not None and (rb is None or rc is None)):
            continue
        out.append((pb, pc, (b, c, rb, rc)))
    return out


def _in(states: dict[float, list[float]], probe_us: float) -> tuple[float | None, list[float] | None]:
    """The state of ``states`` that ``probe_us`` is (its probe µs and samples), or (None, None)."""
    i = find_state(list(states), probe_us)
    return (None, None) if i is None else list(states.items())[i]


def _levels(seen: dict[str, Any]) -> tuple[str, str]:
    return (", ".join(f"{p:.0f}" for p in seen["baseline_probe_us"]),
            ", ".join(f"{p:.0f}" for p in seen["candidate_probe_us"]))


def _unmatched(pooled: Comparison, seen: dict[str, Any]) -> Comparison:
    """The pooled comparison when the two sides share no machine state and the machine switches: it decides nothing."""
    then, now = _levels(seen)
    reason = (f"the baseline was measured in machine state(s) with probe {then} µs and this process ran in "
              f"{now} µs, and a small model's speed relative to the drift reference moves with that state; "
              f"across them the test would read {pooled.verdict!r} ({pooled.reason}); measure again until the "
              "baseline's state recurs, or write a new baseline")
    return _across_states(pooled, seen, reason)


def _across_states(pooled: Comparison, seen: dict[str, Any], reason: str) -> Comparison:
    # Twice the samples so far: the machine switches states seconds apart, so more time may meet it.
    return replace(pooled, verdict="inconclusive", reason=reason, samples_to_decide=2 * pooled.n_candidate,
                   machine_states=seen)


def _other_level(pooled: Comparison, seen: dict[str, Any]) -> Comparison:
    """Inconclusive: each side ran steadily, at different probe levels. On one machine that is a
    change of state, and a small model's ratio to the drift reference moves with it (an unchanged
    pruned model read +37.5% normalised, probe 19 µs then and 39 µs now); on another host the
    baseline should be written again there."""
    then, now = _levels(seen)
    reason = (f"the machine ran steadily on both sides, but its probe read {then} µs then and {now} µs now: a "
              f"change of state (or of host) that moves a small model's ratio to the drift reference; across it "
              f"the test would read {pooled.verdict!r} ({pooled.reason}); measure again until the baseline's state "
              "recurs, or write a new baseline in this one")
    return _across_states(pooled, seen, reason)


def _too_thin(pooled: Comparison, seen: dict[str, Any], candidate: Timing) -> Comparison:
    """Inconclusive: the samples measured now are spread over states too thinly to judge in any."""
    n = len(candidate["samples_ms"])
    return replace(pooled, verdict="inconclusive", samples_to_decide=2 * n, machine_states=seen,
                   reason=f"the {n} samples measured now fall in no machine state with enough of them to judge "
                          f"(the machine switched states, or bursts straddled the switches)")
