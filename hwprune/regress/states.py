"""A regression check per machine state: the baseline and the candidate compared in the states both were measured in.

On a machine that switches between speed states (:mod:`profilers.machine_state`) a small model
slows far more than the drift reference does in the slow state, so a candidate measured in the
slow state against a baseline stored in the fast one reads as a regression that no model change
made (measured: an unchanged pruned resnet20, +56.8% raw and +32.8% after the reference's
normalisation). Both sides' samples carry their states, so :func:`compare_in_states` compares
them state by state:

- One state on both sides, the same one (a steady machine): the pooled comparison, as always.
- States both sides have enough samples in (``hwprune.states.MIN_STATE_SAMPLES``, the drift
  reference's too when there is one): a comparison in each, and the verdict is the worst of
  them (a regression in any state is a regression); the result's figures are that state's, its
  ``state_probe_us`` says which, and ``machine_states`` lists every state and what it gave.
- No state in common: "inconclusive", with the pooled figures and what they would have read (a
  change cannot be told from the change of state, either way), asking for more samples in case
  the baseline's state comes back while there is time.
- Samples without state labels (an old baseline, a sampler without the probe): pooled.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from hwprune.regress.compare import Comparison, compare_samples
from hwprune.states import judgeable
from profilers.machine_state import find_state, same_state

Timing = dict[str, Any]
ORDER = {"regressed": 0, "inconclusive": 1, "pass": 2, "improved": 3}


def compare_in_states(baseline: Timing, candidate: Timing, statistic: str, tolerance: float, *,
                      baseline_reference: Timing | None = None, candidate_reference: Timing | None = None,
                      **kw: Any) -> Comparison:
    """``compare_samples`` on the samples of ``baseline`` and ``candidate`` (TimingStats-like dicts:
    ``samples_ms``, and ``state_probe_us``/``sample_states`` when probed), state by state as the
    module text says. ``kw`` goes to ``compare_samples`` (confidence, resamples, seed, baseline_fixed)."""
    refs = (baseline_reference, candidate_reference)
    pooled = compare_samples(baseline["samples_ms"], candidate["samples_ms"], statistic, tolerance,
                             baseline_reference_ms=_samples(baseline_reference),
                             candidate_reference_ms=_samples(candidate_reference), **kw)
    b_states, c_states = judgeable(baseline), judgeable(candidate)
    if not b_states or not c_states or _one_same_state(b_states, c_states):
        return pooled
    common = _common(b_states, c_states, refs)
    seen = {"baseline_probe_us": sorted(b_states), "candidate_probe_us": sorted(c_states)}
    if not common:
        return _unmatched(pooled, seen)
    per_state = []
    for pb, pc, (b, c, rb, rc) in common:
        comp = compare_samples(b, c, statistic, tolerance, baseline_reference_ms=rb, candidate_reference_ms=rc, **kw)
        if comp.samples_to_decide is not None:   # of this state's samples: as many more overall, by its share
            comp = replace(comp, samples_to_decide=math.ceil(comp.samples_to_decide * len(candidate["samples_ms"])
                                                             / len(c)))
        per_state.append((pc, comp))
    probe, governing = min(per_state, key=lambda s: (ORDER[s[1].verdict], -s[1].ratio))
    seen["compared"] = [{"probe_us": p, "verdict": c.verdict, "ratio": c.ratio, "ci_low": c.ci_low,
                         "ci_high": c.ci_high, "n_baseline": c.n_baseline, "n_candidate": c.n_candidate}
                        for p, c in per_state]
    return replace(governing, state_probe_us=probe, machine_states=seen,
                   reason=f"in the machine state with probe {probe:.0f} µs (of {len(per_state)} compared): "
                          + governing.reason)


def _samples(timing: Timing | None) -> list[float] | None:
    return None if timing is None else timing["samples_ms"]


def _one_same_state(b_states: dict[float, list[float]], c_states: dict[float, list[float]]) -> bool:
    return len(b_states) == len(c_states) == 1 and same_state(next(iter(b_states)), next(iter(c_states)))


def _common(b_states: dict[float, list[float]], c_states: dict[float, list[float]],
            refs: tuple[Timing | None, Timing | None]) -> list[tuple[float, float, tuple]]:
    """The states both sides (and both references, when there are) can judge in, each with its samples."""
    ref_states = [judgeable(r) if r is not None else None for r in refs]
    out = []
    for pb, b in sorted(b_states.items()):
        c = _in(c_states, pb)
        rb, rc = (None if s is None else _in(s, pb) for s in ref_states)
        if c is None or (refs[0] is not None and (rb is None or rc is None)):
            continue
        pc = list(c_states)[find_state(list(c_states), pb)]
        out.append((pb, pc, (b, c, rb, rc)))
    return out


def _in(states: dict[float, list[float]], probe_us: float) -> list[float] | None:
    i = find_state(list(states), probe_us)
    return None if i is None else list(states.values())[i]


def _unmatched(pooled: Comparison, seen: dict[str, Any]) -> Comparison:
    """The pooled comparison when the two sides share no machine state: it decides nothing."""
    seen["compared"] = []
    then = ", ".join(f"{p:.0f}" for p in seen["baseline_probe_us"])
    now = ", ".join(f"{p:.0f}" for p in seen["candidate_probe_us"])
    reason = (f"the baseline was measured in machine state(s) with probe {then} µs and this process ran in "
              f"{now} µs, and a small model's speed relative to the drift reference moves with that state; "
              f"across them the test would read {pooled.verdict!r} ({pooled.reason}); measure again until the "
              "baseline's state recurs, or write a new baseline")
    # Twice the samples so far: the machine switches states seconds apart, so more time may meet it.
    return replace(pooled, verdict="inconclusive", reason=reason, samples_to_decide=2 * pooled.n_candidate,
                   machine_states=seen)
