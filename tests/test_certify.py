"""Certification with scripted measurements: retakes, close calls, room, final re-measurements, the LUT limit.

A :class:`scripted_device.Script` stands in for the device: it answers every measurement the
:class:`hwprune.certify.Certifier` asks for with constant samples that the test chooses, and
records what was asked. The end-to-end tests pass it to :func:`hwprune.pruning.run` as its
``measure`` parameter; nothing is monkeypatched.
"""

from __future__ import annotations

import json

import pytest

from hwprune.agents import SearchSpace
from hwprune.agents.base import SearchResult
from hwprune.baseline import BASELINE_REFERENCE_KEY
from hwprune.certify import (MAX_FINAL_REMEASURES, RETAKE_WAIT_S, Certifier, FinalMeasurement, LatencyBudget,
                             Proposal, Round, measured_points, next_lut_limit, top_candidates)
from hwprune.errors import HwpruneError
from profilers.config import load_device_config
from scripted_device import Script

REFERENCE = (BASELINE_REFERENCE_KEY, b"reference")


@pytest.fixture
def cfg():
    return load_device_config("x86-cpu-ort")


def certifier(cfg, script: Script) -> Certifier:
    c = Certifier(cfg, LatencyBudget(cfg.statistic, speedup=script.speedup), b"dense", measure=script,
                  wait=script.wait)
    c.measure_dense()
    return c


def proposals(n: int) -> list[Proposal]:
    return [Proposal({"a": 8 - i}, 0.9 - 0.1 * i, 0.5, f"onnx{i}".encode()) for i in range(n)]


# -- the budget -------------------------------------------------------------------------------------

def test_a_speedup_budget_follows_the_dense_model_measured_beside_the_candidate(cfg):
    script = Script(cfg, lambda kind, call, key, budget: (0.5, 50), speedup=2.0,
                    dense_scale={"round": 1.04})
    c = certifier(cfg, script)
    assert c.budget_ms == pytest.approx(0.5)
    rm = c.measure_round(proposals(1))
    assert rm.budget_ms == pytest.approx(1.04 / 2.0)  # the pair's dense side, not the lone one
    assert c.dense_alone_ms == pytest.approx(1.0)


@pytest.mark.parametrize("kw, fragment", [({"latency_ms": 0.0}, "--latency-ms"), ({"latency_ms": float("nan")},
                                           "--latency-ms"), ({"speedup": 1.0}, "--speedup"),
                                          ({"speedup": float("inf")}, "speedup"),
                                          ({"latency_ms": 1.0, "speedup": 2.0}, "not both")])
def test_a_budget_out_of_range_is_one_sentence(kw, fragment):
    with pytest.raises(HwpruneError, match=fragment):
        LatencyBudget("p50", **kw)


# -- a round ---------------------------------------------------------------------------------------

def test_a_round_keeps_the_best_scoring_candidate_with_room_when_the_top_one_has_none(cfg):
    # the top one well over the budget (no close call), the others well under
    script = Script(cfg, lambda kind, call, key, budget: (1.2 * budget if key == "pruned" else 0.9 * budget, 60))
    rm = certifier(cfg, script).measure_round(proposals(3))
    assert rm.accepted and rm.index == 1 and not rm.remeasured
    assert rm.kept.widths == {"a": 7}
    assert script.calls == ["round"]


def test_a_candidate_that_scrapes_under_the_budget_has_no_room(cfg):
    # under the budget, but inside the final measurement's own ±rel_ci: not accepted, not a
    # close call either (the upper bound is under the budget), so nothing is measured again
    script = Script(cfg, lambda kind, call, key, budget: (budget * (1 - cfg.rel_ci / 2), 50))
    rm = certifier(cfg, script).measure_round(proposals(1))
    assert not rm.accepted and rm.index == 0 and script.calls == ["round", "again"]


def test_a_close_call_round_is_measured_again_and_decided_on_the_pooled_samples(cfg):
    # first: every sample 1% over the budget (a close call); again: three times as many samples
    # well under it, so the pooled median is under too
    script = Script(cfg, lambda kind, call, key, budget: (1.01 * budget, 50) if kind == "round"
                    else (0.9 * budget, 150))
    rm = certifier(cfg, script).measure_round(proposals(1))
    assert script.calls == ["round", "again"]
    assert rm.remeasured and rm.accepted
    assert rm.kept.timing["n"] == 200 and rm.kept.upper_bound_ms < rm.budget_ms


def test_a_round_far_over_the_budget_is_not_measured_again(cfg):
    script = Script(cfg, lambda kind, call, key, budget: (1.5 * budget, 50))
    rm = certifier(cfg, script).measure_round(proposals(2))
    assert not rm.accepted and not rm.remeasured and script.calls == ["round"]


# -- the final measurement -----------------------------------------------------------------------

def test_a_final_measurement_within_the_budget_is_certified_and_keeps_the_reference(cfg):
    script = Script(cfg, lambda kind, call, key, budget: (0.9 * budget, 50))
    f = certifier(cfg, script).measure_final(b"pruned", REFERENCE, 1000)
    assert isinstance(f, FinalMeasurement) and f.certified and f.remeasured == 0 and f.retakes == 0
    assert f.reference is not None and f.upper_bound_ms <= f.budget_ms
    assert script.calls == ["final"]


def test_a_close_call_final_measurement_is_measured_again_and_decided_on_the_pooled_samples(cfg):
    script = Script(cfg, lambda kind, call, key, budget: ({"final": 1.01, "again": 0.9}[kind] * budget,
                                                          150 if kind == "again" else 50))
    f = certifier(cfg, script).measure_final(b"pruned", REFERENCE)
    assert script.calls == ["final", "again"] and f.certified and f.remeasured == 1
    # the verdict's samples are pooled; baseline.json keeps the ones taken beside the reference
    assert f.pruned["n"] == 200 and f.pruned_first["n"] == 50


def test_a_close_call_that_stays_over_is_measured_again_at_most_twice(cfg):
    script = Script(cfg, lambda kind, call, key, budget: (1.01 * budget, 50))
    f = certifier(cfg, script).measure_final(b"pruned", REFERENCE)
    assert not f.certified and f.remeasured == MAX_FINAL_REMEASURES
    assert script.calls == ["final"] + ["again"] * MAX_FINAL_REMEASURES


def test_a_final_measurement_far_over_budget_is_not_measured_again(cfg):
    script = Script(cfg, lambda kind, call, key, budget: (1.5 * budget, 50))
    f = certifier(cfg, script).measure_final(b"pruned", REFERENCE)
    assert script.calls == ["final"] and not f.certified and f.remeasured == 0


def test_a_measurement_on_a_shifted_machine_is_taken_again_after_a_pause(cfg):
    # the final measurement catches a co-tenant's burst: the dense model 30% slower than at the
    # start, the pruned one far over; taken again on the quiet machine, it fits
    script = Script(cfg, lambda kind, call, key, budget: (0.9 * budget, 50), dense_scale={"final": 1.3})
    scale = script.dense_scale

    def measure(items, cfg_, label):
        out = script(items, cfg_, label)
        if script.calls and script.calls[-1] == "final":
            scale["final"] = 1.0  # the burst has passed by the retake
        return out

    c = Certifier(cfg, LatencyBudget(cfg.statistic, speedup=1.3), b"dense", measure=measure, wait=script.wait)
    c.measure_dense()
    f = c.measure_final(b"pruned", REFERENCE)
    assert script.calls == ["final", ("wait", RETAKE_WAIT_S[0]), "final"]
    assert f.retakes == 1 and f.certified


def test_a_machine_that_stays_busy_gets_two_longer_pauses_then_its_measurement_stands(cfg):
    script = Script(cfg, lambda kind, call, key, budget: (0.9 * budget, 50), dense_scale={"final": 1.3})
    f = certifier(cfg, script).measure_final(b"pruned", REFERENCE)
    assert script.calls == ["final", ("wait", RETAKE_WAIT_S[0]), "final", ("wait", RETAKE_WAIT_S[1]), "final"]
    assert RETAKE_WAIT_S[1] > RETAKE_WAIT_S[0] > 0
    assert f.retakes == 2 and f.certified  # the budget follows the (slow) dense model beside it


def test_without_a_latency_budget_nothing_is_certified_but_everything_is_measured(cfg):
    script = Script(cfg, lambda kind, call, key, budget: (0.5, 50))
    c = Certifier(cfg, LatencyBudget(cfg.statistic), b"dense", measure=script, wait=script.wait)
    c.measure_dense()
    rm = c.measure_round(proposals(2))
    assert rm.accepted and rm.index == 0 and rm.kept.upper_bound_ms is None
    f = c.measure_final(b"pruned", REFERENCE)
    assert not f.certified and f.budget_ms is None and f.upper_bound_ms == pytest.approx(0.5)


# -- the next LUT limit ------------------------------------------------------------------------------

def test_next_lut_limit_scales_with_one_round_and_solves_the_line_with_two():
    # One round: measured 1.25x the budget, target 0.97 -> scale the limit by 0.97/1.25.
    assert next_lut_limit([(0.20, 1.25)], 0.20, 0.97, 0.01) == pytest.approx(0.20 * 0.97 / 1.25)
    # A model with a fixed cost the LUT misses: measured/budget = 0.4 + 3 * predicted.
    line = lambda p: 0.4 + 3.0 * p  # noqa: E731
    pts = [(0.22, line(0.22)), (0.20, line(0.20))]
    new = next_lut_limit(pts, 0.20, 0.97, 0.01)
    assert new == pytest.approx((0.97 - 0.4) / 3.0)
    assert line(new) == pytest.approx(0.97)
    # Scaling alone would stop short of the target on this line.
    assert line(0.20 * 0.97 / line(0.20)) > 0.97


def test_next_lut_limit_never_loosens_and_respects_the_floor():
    # The agent chose an architecture predicted below the limit: the next limit must go below
    # that prediction, or the agent buys the same architecture again.
    assert next_lut_limit([(0.178, 1.01)], 0.19, 0.97, 0.01) < 0.178
    assert next_lut_limit([(0.178, 1.01), (0.178, 1.02)], 0.175, 0.97, 0.01) < 0.178 * 0.97

    # A noisy pair suggesting a negative slope falls back to scaling.
    assert next_lut_limit([(0.20, 1.1), (0.18, 1.2)], 0.18, 0.97, 0.01) == pytest.approx(0.18 * 0.97 / 1.2)
    # Never more than twice the scaled step below the last prediction, never below the
    # smallest architecture's prediction.
    assert next_lut_limit([(0.20, 1.02), (0.19, 1.10)], 0.19, 0.97, 0.0) >= 0.19 - 2 * (0.19 - 0.19 * 0.97 / 1.10)
    assert next_lut_limit([(0.20, 3.0)], 0.20, 0.97, 0.15) == 0.15


def test_a_loosened_limit_is_looser_than_the_last_even_when_the_agent_chose_far_below_it():
    # Seen by a new user: limit 0.0473 ms, the agent's choice predicted 0.0345 ms and certified at
    # 80.6% of the budget; scaling its prediction gave 0.0430, a *tighter* "looser" round.
    new = next_lut_limit([(0.0345, 0.806)], 0.0473, 0.98, 0.01)
    assert new > 0.0473
    assert new >= 0.0473 * (1 + 0.5 * (0.98 / 0.806 - 1))
    # Chosen at the limit: the full scale step, as before.
    assert next_lut_limit([(0.0473, 0.806)], 0.0473, 0.98, 0.01) == pytest.approx(0.0473 * 0.98 / 0.806)


def test_next_lut_limit_damps_a_nearly_flat_line_through_noisy_rounds():
    # Two rounds 10% apart in prediction but only 5% apart in measurement (the second one on a
    # busy moment): the line asks for a far smaller network; the step is held to twice scaling's.
    pts = [(0.198, 1.077), (0.178, 1.050)]
    scaled = 0.178 * 0.97 / 1.050
    new = next_lut_limit(pts, 0.178, 0.97, 0.01)
    assert new == pytest.approx(0.178 - 2 * (0.178 - scaled))
    assert new < scaled


def _round(predicted, ub, budget, final=None, candidate=1):
    r = Round(1, 0.2, {"a": 4}, 0.9, predicted, ub, ub, budget, 5, 0.1, False, 0, candidate, [])
    if final is not None:
        r.final = FinalMeasurement({}, {}, None, final, final, budget, False, 0, 0, {})
    return r


def test_the_next_limit_is_fitted_through_one_point_a_round_not_every_candidate():
    rounds = [_round(0.196, 1.09, 1.0), _round(0.175, 1.0, 1.0, final=1.05, candidate=2)]
    # the kept architecture of each round; measured again after fine-tuning, the mean of the two
    assert measured_points(rounds) == [(0.196, 1.09), (0.175, pytest.approx(1.025))]


def test_a_round_records_its_final_measurement_in_the_report_form():
    r = _round(0.175, 1.0, 1.0, final=1.05)
    d = r.to_dict()
    assert d["final_upper_bound_ms"] == 1.05 and d["final_budget_ms"] == 1.0 and "final" not in d
    assert "final_upper_bound_ms" not in _round(0.1, 1.0, 1.0).to_dict()
    json.dumps(d)  # JSON-ready


def test_top_candidates_are_the_best_feasible_new_architectures_the_search_s_own_first():
    space = SearchSpace(["a", "b"], [16, 16], 1)
    hist = [{"widths": {"a": 4, "b": 4}, "score": 0.5, "feasible": True},
            {"widths": {"a": 8, "b": 8}, "score": 0.9, "feasible": False},   # infeasible: never
            {"widths": {"a": 6, "b": 6}, "score": 0.7, "feasible": True},
            {"widths": {"a": 5, "b": 7}, "score": 0.8, "feasible": True},
            {"widths": {"a": 7, "b": 5}, "score": 0.6, "feasible": True}]
    res = SearchResult("x", {"a": 5, "b": 7}, 0.8, {}, True, 5, 0.0, hist)
    got = top_candidates(res, 3, space, tried=set())
    assert [w for w, _ in got] == [{"a": 5, "b": 7}, {"a": 6, "b": 6}, {"a": 7, "b": 5}]
    assert [s for _, s in got] == [0.8, 0.7, 0.6]
    # measured in an earlier round: skipped; k = 1 is the search's answer alone
    got = top_candidates(res, 3, space, tried={space.key({"a": 6, "b": 6})})
    assert [w for w, _ in got] == [{"a": 5, "b": 7}, {"a": 7, "b": 5}, {"a": 4, "b": 4}]
    assert top_candidates(res, 1, space, set()) == [({"a": 5, "b": 7}, 0.8)]


def test_with_a_lut_the_candidates_are_a_latency_ladder_down_to_the_budget_share_a_certificate_needs():
    space = SearchSpace(["a"], [100], 1)
    # score rises with width, latency (ms) is the width: the best few all sit at the limit
    hist = [{"widths": {"a": w}, "score": w / 100, "feasible": w <= 100} for w in (100, 99, 98, 97, 96, 95, 94, 90)]
    res = SearchResult("x", {"a": 100}, 1.0, {}, True, len(hist), 0.0, hist)
    ms = lambda w: float(w["a"])  # noqa: E731
    assert [w["a"] for w, _ in top_candidates(res, 3, space, set())] == [100, 99, 98]   # no LUT: by score
    got = top_candidates(res, 3, space, set(), ms, ladder_to=0.95)
    assert [w["a"] for w, _ in got] == [100, 97, 95]   # the best at most 97.5% and 95% of the answer's ms
    assert [s for _, s in got] == [1.0, 0.97, 0.95]
    assert [w["a"] for w, _ in top_candidates(res, 2, space, set(), ms, 0.95)] == [100, 95]
    assert [w["a"] for w, _ in top_candidates(res, 3, space, set(), ms, 1.0)] == [100, 99, 98]  # no ladder
    # a rung with nothing new under it takes the best remaining architecture
    got = top_candidates(res, 3, space, {space.key({"a": w}) for w in (97, 96, 95, 94, 90)}, ms, 0.95)
    assert [w["a"] for w, _ in got] == [100, 99, 98]


def test_a_looser_rounds_candidates_all_score_above_the_certified_architecture():
    space = SearchSpace(["a"], [100], 1)
    hist = [{"widths": {"a": w}, "score": w / 100, "feasible": True} for w in (100, 99, 90, 80)]
    res = SearchResult("x", {"a": 100}, 1.0, {}, True, len(hist), 0.0, hist)
    got = top_candidates(res, 3, space, set(), lambda w: float(w["a"]), 0.95, beat_score=0.85)
    # the 97.5% rung takes 90, the 95% rung nothing new under it: the best remaining, 99, measured before 90
    assert [w["a"] for w, _ in got] == [100, 99, 90]   # 0.80 could never be kept: not measured


def test_a_round_under_the_budget_but_without_room_says_why_it_was_not_kept():
    from hwprune.report import _round_text

    r = _round(0.38, 0.3831, 0.3866)
    r.room_ms = 0.3866 * 0.98
    assert "not kept: under the budget but without room for the final re-measurement, which needs at most 0.3789" \
        in _round_text(r.to_dict())
    r.room_ms, r.upper_bound_ms = 0.3866 * 0.98, 0.37   # kept: nothing to explain
    assert "not kept" not in _round_text(r.to_dict())
