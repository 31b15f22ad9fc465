"""Machine speed states: the probe's split, labelled samples, verdicts per state and measurements that cover them.

A machine that switches between speed states changes a pruned/dense ratio from one state to
the other; these tests drive :mod:`profilers.machine_state`, :mod:`hwprune.states` and the
:class:`hwprune.certify.Certifier` with scripted probe times and samples, no device.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwprune.certify import MAX_STATE_TRIES, STATE_WAIT_S, Certifier, LatencyBudget, Proposal, pooled
from hwprune.states import MIN_STATE_SAMPLES, quickest_ms, view
from profilers.config import load_device_config
from profilers.interleave import measure_interleaved
from profilers.machine_state import MIXED, by_state, merge, probe_us, split_states


@pytest.fixture
def cfg():
    return load_device_config("x86-cpu-ort")


def noisy(center: float, n: int, rng, rel: float = 0.02) -> list[float]:
    return list(center * (1 + rel * rng.standard_normal(n)))


# -- the split ---------------------------------------------------------------------------------------

def test_two_separated_groups_of_probe_times_are_two_states():
    rng = np.random.default_rng(0)
    split = split_states(noisy(28, 300, rng) + noisy(53, 100, rng))
    assert [round(c) for c in split.centers_us] == [28, 53]
    assert split.label(28, 29) == 0 and split.label(52, 55) == 1 and split.label(28, 53) == MIXED


@pytest.mark.parametrize("probes", [
    "steady",      # one state with noise
    "drift",       # a gradual 30% slide: no gap, no states
    "spikes",      # 2% of probes 3x slower: a passing burst, not a state
    "close",       # two groups only 10% apart
])
def test_no_states_where_the_probe_times_do_not_form_two_clear_groups(probes):
    rng = np.random.default_rng(1)
    values = {"steady": noisy(30, 400, rng, 0.05),
              "drift": list(np.linspace(30, 39, 400) * (1 + 0.02 * rng.standard_normal(400))),
              "spikes": noisy(30, 392, rng) + noisy(90, 8, rng),
              "close": noisy(30, 200, rng) + noisy(33, 200, rng)}[probes]
    split = split_states(values)
    assert len(split.centers_us) == 1 and split.threshold_us is None
    assert split.label(30, 90) == 0


def test_the_probe_reads_microseconds():
    assert 0 < probe_us() < 10_000


# -- labelled samples --------------------------------------------------------------------------------

class FakeRunner:
    """A model whose time depends on the machine's state, which the probe also reads."""

    def __init__(self, cfg, machine, fast_ms, slow_ms):
        self.config, self.machine, self.ms = cfg, machine, (fast_ms, slow_ms)

    def time_once_ms(self):
        self.machine["calls"] += 1
        return self.ms[self.machine["state"]]


def test_interleaved_samples_carry_the_state_of_the_burst_they_ran_in(cfg):
    machine = {"state": 0, "calls": 0, "probes": 0}

    def probe():   # the machine switches state every fourth probe: bursts alternate in runs
        machine["probes"] += 1
        machine["state"] = (machine["probes"] // 4) % 2
        return (28.0, 53.0)[machine["state"]]

    runners = [FakeRunner(cfg, machine, 1.0, 1.1), FakeRunner(cfg, machine, 0.3, 0.45)]
    stats = measure_interleaved(runners, burst=10, warmup=0, min_repeats=200, max_seconds=0.05,
                                min_seconds=0.0, probe=probe)
    dense, pruned = (s.to_dict() for s in stats)
    assert [round(c) for c in dense["state_probe_us"]] == [28, 53]
    assert len(dense["sample_states"]) == dense["n"]
    for t, (fast, slow) in ((dense, (1.0, 1.1)), (pruned, (0.3, 0.45))):
        states = by_state(t)
        assert set(map(round, states)) == {28, 53}
        assert {v for c, s in states.items() for v in s if round(c) == 28} == {fast}
        assert {v for c, s in states.items() for v in s if round(c) == 53} == {slow}
    assert "sample_states" not in stats[0].to_dict(with_samples=False)


def labelled(cfg, parts: list[tuple[float, float, int]]) -> dict:
    """A timing dict from (probe µs, sample ms, count) parts."""
    from profilers.stats import summarize

    centers = sorted({p for p, _, _ in parts})
    samples, labels = [], []
    for p, v, n in parts:
        samples += [v] * n
        labels += [centers.index(p)] * n
    d = summarize(samples, cfg.statistic).to_dict()
    d["state_probe_us"], d["sample_states"] = centers, labels
    return d


def test_merge_matches_states_by_probe_time_and_keeps_new_ones(cfg):
    a = labelled(cfg, [(28.0, 1.0, 50), (53.0, 1.2, 50)])
    b = labelled(cfg, [(29.0, 1.01, 30), (80.0, 2.0, 40)])
    samples, lab = merge(a, b)
    assert len(samples) == 170 and len(lab.centers_us) == 3
    assert lab.centers_us[0] == pytest.approx(math.sqrt(28 * 29))
    states = by_state({"samples_ms": samples, "state_probe_us": lab.centers_us, "sample_states": lab.labels})
    assert len(states[lab.centers_us[0]]) == 80 and states[80.0] == [2.0] * 40
    _, none = merge(a, {"samples_ms": [1.0, 1.0]})
    assert none is None


# -- verdicts per state -------------------------------------------------------------------------------

def test_the_verdict_is_taken_in_the_state_where_the_ratio_is_worst(cfg):
    # fast state: pruned/dense 0.28; slow state: 0.40 with a speed-up budget of 3 (0.333 of dense)
    n = MIN_STATE_SAMPLES * 3
    t = {"dense": labelled(cfg, [(28.0, 0.80, 4 * n), (53.0, 0.90, n)]),
         "pruned": labelled(cfg, [(28.0, 0.224, 4 * n), (53.0, 0.36, n)])}
    assert t["pruned"]["p50_ms"] / t["dense"]["p50_ms"] == pytest.approx(0.28)  # the mixture says fine
    v = view(t, LatencyBudget("p50", speedup=3.0), cfg)
    assert v.probe_us == 53.0
    assert v.timings["pruned"]["p50_ms"] == pytest.approx(0.36) and v.timings["dense"]["p50_ms"] == pytest.approx(0.9)
    assert [round(s.utilisation, 2) for s in v.states] == [0.84, 1.2]
    assert v.states[0].share == pytest.approx(0.8)
    assert quickest_ms(t["dense"], cfg) == pytest.approx(0.80)


def test_a_state_too_thin_to_judge_is_left_out_and_one_state_changes_nothing(cfg):
    t = {"dense": labelled(cfg, [(28.0, 0.80, 400), (53.0, 0.90, MIN_STATE_SAMPLES - 1)]),
         "pruned": labelled(cfg, [(28.0, 0.224, 400), (53.0, 0.36, MIN_STATE_SAMPLES - 1)])}
    v = view(t, LatencyBudget("p50", speedup=3.0), cfg)
    assert v.probe_us is None and v.timings == t
    plain = {"dense": {"samples_ms": [1.0] * 50, "p50_ms": 1.0}, "pruned": {"samples_ms": [0.3] * 50, "p50_ms": 0.3}}
    assert view(plain, LatencyBudget("p50", speedup=3.0), cfg).timings == plain


def test_an_absolute_budget_is_judged_in_the_state_where_the_model_is_slowest(cfg):
    t = {"dense": labelled(cfg, [(28.0, 0.80, 200), (53.0, 0.90, 200)]),
         "pruned": labelled(cfg, [(28.0, 0.224, 200), (53.0, 0.36, 200)])}
    v = view(t, LatencyBudget("p50", latency_ms=0.4), cfg)
    assert v.probe_us == 53.0 and v.states[1].utilisation == pytest.approx(0.9)


def test_pooling_keeps_the_states(cfg):
    a = labelled(cfg, [(28.0, 0.2, 60)])
    b = labelled(cfg, [(28.5, 0.21, 60), (53.0, 0.35, 60)])
    p = pooled(a, b, cfg)
    assert p["n"] == 180 and len(p["state_probe_us"]) == 2 and len(p["sample_states"]) == 180


# -- the certifier ------------------------------------------------------------------------------------

class StatefulDevice:
    """Answers each measurement in the states of a script: a list of state sets, one per call."""

    fast = {"dense": 0.80, "pruned": 0.224, "candidate 2": 0.25}
    slow = {"dense": 0.90, "pruned": 0.36, "candidate 2": 0.40}

    def __init__(self, cfg, script):
        self.cfg, self.script, self.calls = cfg, list(script), []

    def __call__(self, items, cfg_, label):
        states = self.script.pop(0) if self.script else ("fast",)
        self.calls.append(states)
        out = {}
        for key, _ in items:
            parts = [(28.0 if s == "fast" else 53.0, getattr(self, s).get(key, 0.5), 100) for s in states]
            out[key] = labelled(self.cfg, parts)
        return out

    def wait(self, seconds):
        self.calls.append(("wait", seconds))


def test_a_budget_met_only_in_the_fast_state_is_not_certified(cfg):
    device = StatefulDevice(cfg, [("fast",), ("fast", "slow")])
    c = Certifier(cfg, LatencyBudget("p50", speedup=3.0), b"dense", measure=device, wait=device.wait)
    c.measure_dense()
    f = c.measure_final(b"pruned")
    assert not f.certified
    assert f.states.probe_us == 53.0 and f.budget_ms == pytest.approx(0.3)
    assert f.measured_ms == pytest.approx(0.36)
    assert len(f.pruned_first["state_probe_us"]) == 2  # baseline.json keeps every state's samples


def test_a_measurement_missing_a_recurring_state_is_taken_again_until_it_has_it(cfg):
    # the job meets the slow state in its first two measurements; the third lands in the fast
    # state only, and is measured again (after a short wait) until the slow state is in it
    device = StatefulDevice(cfg, [("fast", "slow"), ("fast", "slow"), ("fast",), ("fast",), ("slow",)])
    c = Certifier(cfg, LatencyBudget("p50", speedup=2.0), b"dense", measure=device, wait=device.wait)
    c.measure_dense()
    c.measure_round([Proposal({"a": 4}, 0.9, 0.3, b"p")])
    f = c.measure_final(b"pruned")
    assert device.calls[2:] == [("fast",), ("wait", STATE_WAIT_S), ("fast",), ("wait", STATE_WAIT_S), ("slow",)]
    assert f.states.probe_us == 53.0 and f.measured_ms == pytest.approx(0.36)
    assert f.certified  # 0.36 against 0.45: the slow state's budget
    assert f.pruned.get("n") == 100


def test_covering_gives_up_after_its_tries_and_judges_what_it_has(cfg):
    device = StatefulDevice(cfg, [("fast", "slow"), ("fast", "slow")] + [("fast",)] * (MAX_STATE_TRIES + 1))
    c = Certifier(cfg, LatencyBudget("p50", speedup=3.0), b"dense", measure=device, wait=device.wait)
    c.measure_dense()
    c.measure_final(b"pruned")
    f = c.measure_final(b"pruned")
    waits = [x for x in device.calls if isinstance(x, tuple) and x and x[0] == "wait"]
    assert len(waits) == MAX_STATE_TRIES
    assert f.certified and f.states.probe_us is None  # the fast state alone: 0.224 under 0.267


def test_time_across_processes_reports_each_state_in_the_processes_that_ran_in_it(cfg):
    from hwprune.processes import state_spreads

    runs = [{"model": labelled(cfg, [(28.0, 0.80, 200), (53.0, 1.50, 100)])},
            {"model": labelled(cfg, [(28.6, 0.82, 300)])},
            {"model": labelled(cfg, [(52.0, 1.52, 300)])}]
    spreads = state_spreads(runs, "model", cfg)
    assert [round(s.probe_us) for s in spreads] == [28, 53]
    assert spreads[0].spread.values_ms == pytest.approx([0.80, 0.82])
    assert spreads[1].spread.values_ms == pytest.approx([1.50, 1.52])
    assert spreads[1].to_dict()["processes"] == 2
    assert state_spreads(runs[1:2], "model", cfg) == []


# -- one model, one process: profilers.stats.measure and hwprune time -----------------------------

def switching_machine(every: int = 4):
    """A machine that switches state every ``every`` probes; the probe reads 28 or 53 µs."""
    machine = {"state": 0, "probes": 0}

    def probe():
        machine["probes"] += 1
        machine["state"] = (machine["probes"] // every) % 2
        return (28.0, 53.0)[machine["state"]]

    return machine, probe


def test_a_single_model_measurement_labels_every_sample_by_its_burst():
    from profilers.stats import PROBE_EVERY, measure

    machine, probe = switching_machine()
    s = measure(lambda: (0.3, 0.45)[machine["state"]], warmup=0, min_repeats=210, max_seconds=0.01,
                remeasure_unstable=False, probe=probe).to_dict()
    assert len(s["sample_states"]) == s["n"] == 210 and 210 % PROBE_EVERY   # a last, shorter burst
    states = by_state(s)
    assert {round(c): set(v) for c, v in states.items()} == {28: {0.3}, 53: {0.45}}
    assert measure(lambda: 0.3, warmup=0, min_repeats=30, max_seconds=0.01).sample_states == []   # no probe


def test_label_samples_gives_a_shorter_last_burst_its_own_probes():
    from profilers.machine_state import label_samples

    centers, labels = label_samples([28.0, 28.0, 53.0, 53.0, 53.0, 28.0, 28.0, 28.0], 13, 2)
    assert [round(c) for c in centers] == [28, 53]
    assert labels == [0, 0, MIXED, MIXED, 1, 1, 1, 1, MIXED, MIXED, 0, 0, 0]


def test_hwprune_time_reports_each_state_the_machine_switched_between(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hwprune import api
    from hwprune.cli import cli
    from test_regress import DEVICE_YAML, _relu_model

    device = tmp_path / "fast.yaml"
    device.write_text(DEVICE_YAML + "min_seconds: 0.1\n")
    model = _relu_model(tmp_path / "m.onnx")
    _, probe = switching_machine(every=6)
    monkeypatch.setattr("profilers.machine_state.probe_us", probe)
    r = api.time_model(model, str(device))
    states = r["by_machine_state"]
    assert [round(s["probe_us"]) for s in states] == [28, 53] and 0 < states[0]["share"] < 1
    assert states[0]["timing"]["n"] >= MIN_STATE_SAMPLES and "samples_ms" not in states[0]["timing"]
    out = CliRunner().invoke(cli, ["time", model, "--device", str(device)])
    assert out.exit_code == 0 and out.output.count("machine state probe") == 2, out.output
