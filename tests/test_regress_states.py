"""``hwprune regress`` per machine state: stored and measured samples compared in the states both were measured in.

Synthetic samples with state labels stand for a machine with a fast and a slow state in which
a small model slows more than the drift reference does (as measured on our VM: BENCHMARKS,
"machine states"); the sampler tests time tiny models for real with a scripted probe.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from hwprune import regress as rg
from hwprune.regress.states import compare_in_states
from test_regress import _assert_one_line_error, _outputs, _run, setup  # noqa: F401 (setup: a fixture)

FAST, SLOW = 30.0, 55.0   # probe µs of the two states


def timing(seed: int, *parts: tuple[float, float, int]) -> dict:
    """Samples ``(probe µs, mean ms, n)`` per state, labelled; 2% noise."""
    rng = np.random.default_rng(seed)
    samples, labels = [], []
    for i, (_, mu, n) in enumerate(parts):
        samples += rng.normal(mu, 0.02 * mu, n).tolist()
        labels += [i] * n
    return {"samples_ms": samples, "state_probe_us": [p for p, _, _ in parts], "sample_states": labels}


def unlabelled(t: dict) -> dict:
    return {"samples_ms": t["samples_ms"]}


def compare(base, cand, base_ref=None, cand_ref=None, statistic="p50"):
    return compare_in_states(base, cand, statistic, 0.05, baseline_reference=base_ref, candidate_reference=cand_ref)


def pooled(base, cand, base_ref=None, cand_ref=None, statistic="p50"):
    return rg.compare_samples(base["samples_ms"], cand["samples_ms"], statistic, 0.05,
                              baseline_reference_ms=None if base_ref is None else base_ref["samples_ms"],
                              candidate_reference_ms=None if cand_ref is None else cand_ref["samples_ms"])


# the stored baseline: fast state only, model 1.0 ms beside the reference's 0.3 ms
BASE, BASE_REF = timing(1, (FAST, 1.0, 600)), timing(2, (FAST, 0.3, 600))


def test_one_steady_state_on_both_sides_is_the_pooled_comparison():
    cand, ref = timing(3, (FAST * 1.05, 1.0, 400)), timing(4, (FAST * 1.05, 0.3, 400))
    assert compare(BASE, cand, BASE_REF, ref).to_dict() == pooled(BASE, cand, BASE_REF, ref).to_dict()
    assert compare(BASE, cand, BASE_REF, ref).machine_states is None


def test_samples_without_labels_are_compared_pooled():
    cand = timing(3, (FAST, 1.0, 200), (SLOW, 1.5, 300))
    assert compare(unlabelled(BASE), cand).to_dict() == pooled(BASE, cand).to_dict()
    assert compare(BASE, unlabelled(cand)).to_dict() == pooled(BASE, cand).to_dict()


def test_an_unchanged_model_is_judged_in_the_state_the_baseline_was_measured_in():
    # now the slow state holds most of the time: the model 1.5x, the reference only 1.2x
    cand = timing(3, (FAST, 1.0, 200), (SLOW, 1.5, 300))
    ref = timing(4, (FAST, 0.3, 200), (SLOW, 0.36, 300))
    assert pooled(BASE, cand, BASE_REF, ref).verdict == "regressed"   # what the pooled test said
    c = compare(BASE, cand, BASE_REF, ref)
    assert c.verdict == "pass" and c.state_probe_us == FAST and c.n_candidate == 200
    assert c.ratio == pytest.approx(1.0, abs=0.02) and "probe 30 µs" in c.reason
    st = c.machine_states
    assert st["baseline_probe_us"] == [FAST] and st["candidate_probe_us"] == [FAST, SLOW]
    assert [s["probe_us"] for s in st["compared"]] == [FAST] and st["compared"][0]["verdict"] == "pass"


def test_a_regression_in_the_shared_state_is_caught():
    cand = timing(3, (FAST, 1.12, 200), (SLOW, 1.6, 300))
    ref = timing(4, (FAST, 0.3, 200), (SLOW, 0.36, 300))
    c = compare(BASE, cand, BASE_REF, ref)
    assert c.verdict == "regressed" and c.state_probe_us == FAST and c.ratio == pytest.approx(1.12, rel=0.02)


def test_the_worst_state_governs():
    base = timing(1, (FAST, 1.0, 400), (SLOW, 1.5, 400))
    unchanged_fast_slower_slow = timing(3, (FAST, 1.0, 400), (SLOW, 1.8, 400))
    c = compare(base, unchanged_fast_slower_slow)
    assert c.verdict == "regressed" and c.state_probe_us == SLOW
    assert {s["probe_us"]: s["verdict"] for s in c.machine_states["compared"]} == {FAST: "pass", SLOW: "regressed"}
    same = compare(base, timing(3, (FAST, 1.0, 400), (SLOW, 1.5, 400)))
    assert same.verdict == "pass" and len(same.machine_states["compared"]) == 2


def test_no_state_in_common_decides_nothing_and_asks_for_more_samples():
    # now the machine switched between two states, neither of them the baseline's
    cand = timing(3, (SLOW, 1.5, 300), (SLOW * 1.4, 1.8, 300))
    ref = timing(4, (SLOW, 0.36, 300), (SLOW * 1.4, 0.4, 300))
    assert pooled(BASE, cand, BASE_REF, ref).verdict == "regressed"
    c = compare(BASE, cand, BASE_REF, ref)
    assert c.verdict == "inconclusive" and c.samples_to_decide == 1200
    assert "machine state" in c.reason and "'regressed'" in c.reason
    assert c.machine_states["compared"] == [] and c.machine_states["candidate_probe_us"] == [SLOW, SLOW * 1.4]
    # a pass across states is not one either: the state may hide a change
    assert compare(BASE, timing(3, (SLOW, 1.0, 300), (SLOW * 1.4, 1.0, 300))).verdict == "inconclusive"


def test_a_steady_machine_at_another_probe_level_decides_nothing_and_says_what_pooled_would_read():
    # one state on each side, different ones: on one machine a change of state, which the drift
    # reference does not normalise for a small model (nu10: an unchanged model read +37.5%, exit 1)
    cand, ref = timing(3, (SLOW, 1.25, 300)), timing(4, (SLOW, 0.375, 300))
    c = compare(BASE, cand, BASE_REF, ref)
    p = pooled(BASE, cand, BASE_REF, ref)
    assert p.verdict == "pass" and c.verdict == "inconclusive" and c.ratio == p.ratio
    assert c.samples_to_decide == 2 * p.n_candidate   # more time may meet the baseline's state again
    assert c.machine_states["compared"] == [] and "probe read 30 µs then and 55 µs now" in c.reason
    assert "would read 'pass'" in c.reason
    slower = compare(BASE, timing(3, (SLOW, 1.8, 300)), BASE_REF, ref)
    assert pooled(BASE, timing(3, (SLOW, 1.8, 300)), BASE_REF, ref).verdict == "regressed"
    assert slower.verdict == "inconclusive" and "would read 'regressed'" in slower.reason


def test_labelled_samples_too_thin_in_every_state_are_inconclusive():
    # 30 fast, 30 slow, and bursts that straddled the switches: no state has MIN_STATE_SAMPLES
    cand = timing(3, (FAST, 1.0, 30), (SLOW, 1.5, 30))
    cand["sample_states"] += [-1] * 40
    cand["samples_ms"] += [1.2] * 40
    c = compare(BASE, cand)
    assert c.verdict == "inconclusive" and c.samples_to_decide == 200 and "no machine state" in c.reason


def test_a_thin_second_state_is_left_out_of_a_steady_comparison():
    # 90 slow samples (under five bursts) and two straddling bursts would move the p90 into the slow state
    cand = timing(3, (FAST, 1.0, 600), (SLOW, 1.6, 90))
    cand["sample_states"] += [-1] * 40
    cand["samples_ms"] += [1.3] * 40
    c = compare(BASE, cand, statistic="p90")
    assert pooled(BASE, cand, statistic="p90").ratio > 1.1
    assert c.verdict == "pass" and c.n_candidate == 600 and c.state_probe_us == FAST


def test_model_labels_without_reference_labels_compare_pooled():
    cand, ref = timing(3, (FAST, 1.0, 200), (SLOW, 1.5, 300)), timing(4, (FAST, 0.3, 200), (SLOW, 0.36, 300))
    assert compare(BASE, cand, BASE_REF, unlabelled(ref)).to_dict() == pooled(BASE, cand, BASE_REF, ref).to_dict()


def test_each_of_several_states_is_tested_at_a_shared_out_confidence():
    base = timing(1, (FAST, 1.0, 400), (SLOW, 1.5, 400))
    c = compare(base, timing(3, (FAST, 1.0, 400), (SLOW, 1.5, 400)))
    assert [s["confidence"] for s in c.machine_states["compared"]] == pytest.approx([0.975, 0.975])


def test_a_state_where_the_reference_has_too_few_samples_is_not_compared():
    cand = timing(3, (FAST, 1.0, 300), (SLOW, 1.5, 300))
    ref = timing(4, (FAST, 0.3, 10), (SLOW, 0.36, 590))
    assert compare(BASE, cand, BASE_REF, ref).verdict == "inconclusive"


def test_a_state_asks_for_more_samples_by_its_share():
    base = timing(1, (FAST, 1.0, 2000))
    # 8% slower with 30% noise in the shared state, which holds a quarter of the samples
    rng = np.random.default_rng(5)
    cand = {"samples_ms": (rng.normal(1.08, 0.3, 100).clip(0.1)).tolist() + [1.5] * 300,
            "state_probe_us": [FAST, SLOW], "sample_states": [0] * 100 + [1] * 300}
    c = compare_in_states(base, cand, "p50", 0.05, baseline_fixed=True)
    alone = rg.compare_samples(base["samples_ms"], cand["samples_ms"][:100], "p50", 0.05)
    assert c.verdict == alone.verdict == "inconclusive" and alone.samples_to_decide is not None
    assert c.samples_to_decide == pytest.approx(4 * alone.samples_to_decide, abs=4)


# -- the samplers and the command ------------------------------------------------------------------
@pytest.fixture
def two_state_probe(monkeypatch):
    """The probe reads 30 µs for 12 calls, then 55 µs for 12, and so on; returns the machine's state."""
    machine = {"state": 0, "probes": 0}

    def probe():
        machine["state"] = (machine["probes"] // 12) % 2
        machine["probes"] += 1
        return (FAST, SLOW)[machine["state"]]

    monkeypatch.setattr("profilers.machine_state.probe_us", probe)
    return machine


class StateRunner:
    """A model whose time is the machine's state's: (fast ms, slow ms)."""

    def __init__(self, config, machine, ms):
        self.config, self.machine, self.ms = config, machine, ms

    def time_once_ms(self):
        return self.ms[self.machine["state"]]


def _sampler_on(setup, machine):
    blob = Path(setup["model"]).read_bytes()
    s = rg.LocalSampler([(rg.CANDIDATE, blob), (rg.BASELINE_REFERENCE_KEY, blob)], setup["cfg"])
    s.runners = [StateRunner(setup["cfg"], machine, (1.0, 1.5)), StateRunner(setup["cfg"], machine, (0.3, 0.36))]
    return s


def _value_by_label(s, key):
    lab = s.labels[key]
    return {(round(lab.centers_us[i]) if i >= 0 else i, v) for v, i in zip(s.samples[key], lab.labels)}


def test_the_local_sampler_labels_every_sample_across_takes(setup, two_state_probe):
    s = _sampler_on(setup, two_state_probe)
    try:
        s.take(200, 0.5, first=True)
        s.take(400, 5.0)
    finally:
        s.close()
    for k, (fast, slow) in ((rg.CANDIDATE, (1.0, 1.5)), (rg.BASELINE_REFERENCE_KEY, (0.3, 0.36))):
        lab = s.labels[k]
        assert lab is not None and len(lab.labels) == len(s.samples[k]) >= 600
        assert [round(c) for c in lab.centers_us] == [FAST, SLOW]   # the second take's states matched
        # every sample labelled with a state ran in it
        assert {pair for pair in _value_by_label(s, k) if pair[0] != -1} == {(FAST, fast), (SLOW, slow)}


def test_a_short_take_reads_its_few_probes_against_the_states_met_before(setup, two_state_probe, monkeypatch):
    s = _sampler_on(setup, two_state_probe)
    try:
        s.take(200, 0.5, first=True)
        n = len(s.samples[rg.CANDIDATE])
        # one burst each: fast before the candidate's, fast after it, slow after the reference's
        probes = iter([FAST, FAST, SLOW])
        monkeypatch.setattr("profilers.machine_state.probe_us", lambda: next(probes))
        s.take(20, 5.0)
    finally:
        s.close()
    assert s.labels[rg.CANDIDATE].labels[n:] == [0] * 20
    assert s.labels[rg.BASELINE_REFERENCE_KEY].labels[n:] == [-1] * 20   # it straddled the switch


def test_a_written_baseline_keeps_its_samples_states(setup, two_state_probe):
    out = setup["root"] / "written.json"
    r = _run("-d", setup["device"], "-m", setup["model"], "--write-baseline", str(out))
    assert r.exit_code == 0, r.output
    b = rg.load_baseline(out)
    for t in (b["timing"], b["reference"]["timing"]):
        assert len(t["sample_states"]) == len(t["samples_ms"]) and len(t["state_probe_us"]) == 2


class StateSampler:
    """Draws labelled samples per role: ``dists[key] = [(probe µs, mean ms, share), ...]``."""

    def __init__(self, items, dists, seed=0):
        self.keys = [k for k, _ in items]
        self.samples = {k: [] for k in self.keys}
        self.labels = {k: None for k in self.keys}
        self.environment = None
        self.dists, self.rng = dists, np.random.default_rng(seed)

    def take(self, min_samples, max_seconds, first=False):
        n = max(min_samples, 400) if first else min_samples
        for k in self.keys:
            parts = [(p, mu, max(1, int(share * n))) for p, mu, share in self.dists[k]]
            t = timing(int(self.rng.integers(1 << 30)), *parts)
            rg.sampler.add_samples(self, k, t)

    def close(self):
        pass


def _state_baseline(setup) -> str:
    data = json.loads(Path(setup["baseline_ref"]).read_text())
    data["timing"], data["reference"]["timing"] = BASE, BASE_REF
    path = setup["root"] / "baseline-states.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("dists, verdict, code, words", [
    ({rg.CANDIDATE: [(FAST, 1.0, 0.4), (SLOW, 1.5, 0.6)], rg.BASELINE_REFERENCE_KEY: [(FAST, 0.3, 0.4), (SLOW, 0.36, 0.6)]},
     "pass", 0, "compared in 30 µs pass"),
    ({rg.CANDIDATE: [(SLOW, 1.5, 0.5), (SLOW * 1.4, 1.8, 0.5)],
      rg.BASELINE_REFERENCE_KEY: [(SLOW, 0.36, 0.5), (SLOW * 1.4, 0.4, 0.5)]},
     "inconclusive", 3, "none in common"),
    # steady now at another level: a change of state, which decides nothing (pooled would read +25%)
    ({rg.CANDIDATE: [(SLOW, 1.5, 1.0)], rg.BASELINE_REFERENCE_KEY: [(SLOW, 0.36, 1.0)]},
     "inconclusive", 3, "each side steady at its own level, so nothing is decided"),
])
def test_the_command_compares_per_state_and_says_so(setup, monkeypatch, dists, verdict, code, words):
    monkeypatch.setattr("hwprune.regress.run.open_sampler", lambda items, cfg: StateSampler(items, dists))
    r = _run("-d", setup["device"], "-m", setup["model"], "--baseline", _state_baseline(setup), "--max-seconds", "2",
             *_outputs(setup["root"]))
    assert r.exit_code == code, r.output
    data = json.loads((setup["root"] / "out" / "r.json").read_text())
    c = data["comparisons"][0]
    assert data["verdict"] == verdict and c["machine_states"]["baseline_probe_us"] == [FAST]
    assert words in r.stdout and words in (setup["root"] / "out" / "s.md").read_text()


@pytest.mark.parametrize("states, labels, words", [
    ([30.0], [0, 2], "sample_states"),
    ([30.0], [0], "sample_states"),
    (["x"], [0, 0], "state_probe_us"),
])
def test_corrupt_state_labels_in_a_baseline(setup, states, labels, words):
    data = json.loads(Path(setup["baseline"]).read_text())
    data["timing"] = {"samples_ms": [1.0, 1.1], "state_probe_us": states, "sample_states": labels}
    bad = setup["root"] / "bad-states.json"
    bad.write_text(json.dumps(data))
    _assert_one_line_error(_run("-d", setup["device"], "-m", setup["model"], "--baseline", str(bad),
                                *_outputs(setup["root"])), setup["root"], str(bad), words)


def test_the_states_line_says_so_when_a_side_has_no_state_with_enough_samples():
    from hwprune.regress.report import states_line

    line = states_line({"machine_states": {"baseline_probe_us": [], "candidate_probe_us": [30.0], "compared": [],
                                           "how": "pooled"}})
    # it printed "baseline  µs" (nu10)
    assert line == "machine states by probe time: baseline none with enough samples, now 30 µs; compared pooled"
