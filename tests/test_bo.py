"""The ``bo`` agent: clustering, roll-back phases and lifting, feasibility, seeds, resume, quality.

The synthetic problem has eight groups of two kinds. "Flat" groups (every channel about
as important as the next) carry most of the objective; "peaked" groups (a few channels
matter, the rest are near zero) carry little. The objective is a weighted sum of log keep
ratios, the latency a chain of conv-like bilinear terms, so the best allocation is uneven
and the importance distributions say which groups belong together.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("botorch")

from hwprune.agents import Problem, SearchSpace, create_agent  # noqa: E402
from hwprune.agents import bo as bo_mod  # noqa: E402
from hwprune.agents.bo import Phase, Projector, cluster_groups, default_clusters  # noqa: E402
from hwprune.budgets import BudgetFunction  # noqa: E402
from hwprune.errors import HwpruneError  # noqa: E402

torch.set_num_threads(1)

NAMES = [f"g{i}" for i in range(8)]
DENSE = [16, 32, 32, 64, 64, 32, 64, 64]
FLAT = {"g1", "g3", "g4", "g6"}  # the groups that matter
WEIGHTS = [3.0 if n in FLAT else 0.3 for n in NAMES]
SPATIAL = [256, 256, 128, 128, 64, 64, 32, 32]
FAST = {"raw_samples": 16, "init_points": 5}


class ChainLatency(BudgetFunction):
    name, unit = "chain_ms", "ms"

    def _value(self, widths):
        w = [3] + [widths[n] for n in NAMES]
        return 1e-5 * sum(9 * w[i] * w[i + 1] * SPATIAL[i] for i in range(len(NAMES)))


class Params(BudgetFunction):
    name, unit = "params", "params"

    def _value(self, widths):
        w = [3] + [widths[n] for n in NAMES]
        return sum(9 * w[i] * w[i + 1] for i in range(len(NAMES))) + 10 * w[-1]


def importance(seed=0):
    """Flat groups: importances near one value; peaked ones: a heavy tail, mostly near zero.
    Each group has its own magnitude (like L1 norms growing with fan-in)."""
    rng = np.random.default_rng(seed)
    out = {}
    for g, (n, d) in enumerate(zip(NAMES, DENSE)):
        scale = 10.0 ** (g % 3)
        v = rng.normal(1.0, 0.05, d) if n in FLAT else rng.pareto(1.5, d) + 0.01
        out[n] = torch.tensor(np.abs(v) * scale, dtype=torch.float32)
    return out


def make_problem(latency_frac=0.4, params_frac=None, multiple=4, with_importance=True, fail_after=None):
    calls = []

    def objective(widths):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("interrupted")
        calls.append(dict(widths))
        return sum(wt * math.log(widths[n] / d) for n, d, wt in zip(NAMES, DENSE, WEIGHTS))

    dense = dict(zip(NAMES, DENSE))
    budgets = []
    if latency_frac is not None:
        budgets.append(ChainLatency(latency_frac * ChainLatency(1.0).value(dense)))
    if params_frac is not None:
        budgets.append(Params(params_frac * Params(1.0).value(dense)))
    space = SearchSpace(NAMES, DENSE, channel_multiple=multiple)
    return Problem(space, objective, budgets, importance() if with_importance else {}), calls


def search(problem, seed=0, max_evaluations=20, **options):
    return create_agent("bo", **{**FAST, **options}).search(problem, seed=seed, max_evaluations=max_evaluations)


# -- clustering ---------------------------------------------------------------------------------------


def test_clustering_recovers_the_distribution_families():
    """Six groups from three shapes, each at its own magnitude: the clusters are the shapes."""
    rng = np.random.default_rng(1)
    names = [f"c{i}" for i in range(6)]
    draws = [lambda n: rng.normal(1.0, 0.03, n),          # flat
             lambda n: rng.exponential(1.0, n) + 1e-3,    # one-sided tail
             lambda n: np.r_[rng.normal(0.2, 0.02, n // 2), rng.normal(1.8, 0.05, n - n // 2)]]  # bimodal
    family = [0, 1, 2, 0, 1, 2]
    dense = [32, 64, 48, 64, 32, 96]
    imp = {n: np.abs(draws[f](d)) * 10.0 ** (i % 3) for i, (n, f, d) in enumerate(zip(names, family, dense))}
    problem = Problem(SearchSpace(names, dense, 4), lambda w: 0.0, [], imp)
    labels, _, defaulted = cluster_groups(problem, 3)
    assert defaulted == []
    assert labels == [0, 1, 2, 0, 1, 2]  # renumbered by first appearance: exactly the families


def test_median_scaling_compares_shapes_not_magnitudes():
    """Same shape at 1× and 1000×: median scaling joins them; the paper's shift alone splits them."""
    rng = np.random.default_rng(2)
    base = [rng.exponential(1.0, 64) + 0.01 for _ in range(4)]
    flat = [rng.normal(1.0, 0.02, 64) for _ in range(2)]
    imp = {"a": base[0], "b": base[1] * 1000, "c": base[2], "d": base[3] * 1000, "e": flat[0], "f": flat[1] * 1000}
    names = list(imp)
    problem = Problem(SearchSpace(names, [64] * 6, 4), lambda w: 0.0, [], imp)
    by_shape, _, _ = cluster_groups(problem, 2, "median")
    assert by_shape == [0, 0, 0, 0, 1, 1]
    by_size, _, _ = cluster_groups(problem, 2, "none")
    # Shifted only, the 1000× tails are far wider than the 1× ones: same shape, other cluster.
    assert by_size[1] == by_size[3] and by_size[0] == by_size[2] != by_size[1]


def test_groups_without_importance_cluster_by_dense_width():
    problem, _ = make_problem(with_importance=False)
    labels, _, defaulted = cluster_groups(problem, 3)
    assert defaulted == NAMES
    for i, j in [(1, 2), (3, 4), (6, 7)]:  # equal dense widths share a cluster
        assert labels[i] == labels[j]
    assert len(set(labels)) == 3


def test_default_cluster_rule():
    assert [default_clusters(n) for n in (4, 12, 25, 60)] == [3, 3, 6, 8]


def test_mis_sized_importance_is_a_clear_error():
    problem, _ = make_problem()
    problem.importance["g2"] = np.ones(5)
    with pytest.raises(HwpruneError, match="g2.*5 entries"):
        search(problem, max_evaluations=3)


# -- phases and projection ------------------------------------------------------------------------------


def test_lift_and_compress_are_exact_across_refinements():
    coarse = Phase("clustered", [0, 0, 1, 1, 1, 2])
    finer = Phase("split", [0, 1, 2, 2, 3, 4])  # refines coarse
    full = Phase("full", list(range(6)))
    x = np.array([0.3, 0.7, 0.55])
    ratios = coarse.lift(x)
    assert ratios.tolist() == [0.3, 0.3, 0.7, 0.7, 0.7, 0.55]
    assert coarse.compress(ratios).tolist() == x.tolist()
    assert finer.lift(finer.compress(ratios)).tolist() == ratios.tolist()
    assert full.compress(ratios).tolist() == ratios.tolist()


@pytest.mark.parametrize("fill", [True, False])
def test_projection_meets_every_budget_and_fills_up_to_it(fill):
    problem, _ = make_problem(0.4, 0.3)
    proj = Projector(problem, fill=fill)
    rng = np.random.default_rng(0)
    for _ in range(30):
        raw = rng.uniform(0.05, 1.0, len(NAMES))
        ratios, widths = proj.project(raw)
        assert problem.feasible(widths)
        assert widths == proj.widths(ratios)
        for g, n in enumerate(NAMES):  # valid widths only
            assert widths[n] in problem.space.choices(g)
        if fill and min(ratios) < 1:
            # Filled: widening any one group that is not dense by one channel step breaks a budget
            # or is impossible, for at least one group (the architecture sits on the boundary).
            wider = [dict(widths, **{n: widths[n] + 4}) for n, d in zip(NAMES, DENSE) if widths[n] + 4 <= d]
            assert any(not problem.feasible(w) for w in wider)


# -- the search --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budgets", [(0.4, None), (0.5, 0.25)])
def test_every_evaluated_architecture_is_feasible_and_counted(budgets):
    problem, calls = make_problem(*budgets)
    seen = []
    res = create_agent("bo", **FAST).search(problem, seed=0, max_evaluations=15, progress=seen.append)
    assert len(calls) == res.evaluations == len(res.history) == len(seen) == 15
    assert all(e["feasible"] and problem.feasible(e["widths"]) for e in res.history)
    assert len({tuple(e["widths"].values()) for e in res.history}) == 15  # never the same architecture twice
    assert res.score == max(e["score"] for e in res.history) == problem.objective(res.widths)


@pytest.mark.parametrize("max_evaluations", [1, 2])
def test_tiny_evaluation_budgets(max_evaluations):
    problem, calls = make_problem(0.4)
    res = search(problem, max_evaluations=max_evaluations)
    assert res.evaluations == len(calls) == max_evaluations and res.feasible
    # The first evaluation is the uniform architecture (all ratios 1, projected).
    assert res.history[0]["phase"] == "init" and len(set(res.history[0]["ratios"])) == 1


def test_direct_rollback_switches_to_one_ratio_per_group_and_lifts_the_history():
    problem, _ = make_problem(0.4)
    res = search(problem, max_evaluations=16, clusters=2, rollback="direct", rollback_at=10, patience=0)
    labels = [res.extra["clusters"][n] for n in NAMES]
    assert len(set(labels)) == 2
    phases = [(e["phase"], e["dims"]) for e in res.history]
    assert phases[:5] == [("init", 2)] * 5
    assert phases[5:10] == [("clustered", 2)] * 5
    assert phases[10:] == [("full", 8)] * 6
    assert [p["phase"] for p in res.extra["phases"]] == ["init", "clustered", "full"]
    for e in res.history:
        if e["dims"] == 2:  # a clustered point: each group takes its cluster's ratio, exactly
            assert e["ratios"] == [e["x"][lab] for lab in labels]
        else:
            assert e["x"] == e["ratios"]
    # The GP of the full phase sees the whole history at one ratio per group.
    full = Phase("full", list(range(8)))
    lifted = np.array([full.compress(e["ratios"]) for e in res.history])
    assert lifted.shape == (16, 8)
    assert lifted[:10].tolist() == [[e["x"][lab] for lab in labels] for e in res.history[:10]]


def test_gradual_rollback_refines_the_clusters_before_going_full():
    problem, _ = make_problem(0.4)
    res = search(problem, max_evaluations=18, clusters=2, rollback="gradual", rollback_at=9, patience=0)
    dims = [e["dims"] for e in res.history]
    phases = [p["phase"] for p in res.extra["phases"]]
    assert phases == ["init", "clustered", "split", "full"]
    assert dims[:9] == [2] * 9 and set(dims[9:14]) == {4} and set(dims[14:]) == {8}
    coarse = [res.extra["clusters"][n] for n in NAMES]
    finer = next(p["assign"] for p in res.extra["phases"] if p["phase"] == "split")
    # The 4-way cut refines the 2-way one: the groups of a split variable share a cluster.
    for j in range(4):
        assert len({coarse[g] for g in range(8) if finer[g] == j}) == 1
    for e in res.history:
        if e["phase"] == "split":
            assert e["ratios"] == [e["x"][finer[g]] for g in range(8)]


def test_patience_rolls_back_early():
    problem, _ = make_problem(0.4)
    res = search(problem, max_evaluations=14, clusters=2, rollback="direct", rollback_at=0.99, patience=2)
    full_start = next(p["start"] for p in res.extra["phases"] if p["phase"] == "full")
    assert full_start < 14


def test_an_exhausted_clustered_space_rolls_back_or_stops():
    """On a coarse channel grid two cluster ratios reach only a few architectures: once the pool
    finds nothing new, the search rolls back at once (or, with nothing finer, stops early)."""
    problem, calls = make_problem(0.4, multiple=16)
    res = search(problem, max_evaluations=30, clusters=2, rollback="direct", rollback_at=0.99, patience=0)
    assert res.extra["exhausted_at"] and res.extra["exhausted_at"][0] < 29
    assert res.evaluations == len(calls) == 30 and res.history[-1]["phase"] == "full"
    problem, calls = make_problem(0.4, multiple=16)
    res = search(problem, max_evaluations=30, clusters=2, rollback="none")
    assert res.evaluations == len(calls) < 30 and res.feasible


def test_box_maximisers_from_optimize_acqf_join_the_pool():
    problem, calls = make_problem(0.5, 0.25)
    res = search(problem, max_evaluations=7, restarts=1)
    assert res.evaluations == len(calls) == 7
    assert all(problem.feasible(e["widths"]) for e in res.history)


def test_the_callers_thread_count_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        search(make_problem(0.4)[0], max_evaluations=7)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("options", [{"clusters": 0}, {"clustering": False}])
def test_no_clustering_searches_one_ratio_per_group_throughout(options):
    problem, _ = make_problem(0.4)
    res = search(problem, max_evaluations=8, **options)
    assert {e["dims"] for e in res.history} == {8}
    assert [p["phase"] for p in res.extra["phases"]] == ["init", "full"]


def test_no_rollback_stays_clustered():
    problem, _ = make_problem(0.4)
    res = search(problem, max_evaluations=10, clusters=3, rollback="none", rollback_at=2, patience=1)
    assert {e["dims"] for e in res.history} == {3}


def test_same_seed_same_search_and_caller_rng_untouched():
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        problem, _ = make_problem(0.5, 0.25)
        res = search(problem, seed=4, max_evaluations=14)
        runs.append(([e["widths"] for e in res.history], res.widths, res.score, torch.rand(1).item()))
    assert runs[0] == runs[1]
    torch.manual_seed(123)
    expected_next = torch.rand(1).item()
    assert runs[0][3] == expected_next  # the agent forked torch's RNG rather than reseeding the caller's
    other = search(make_problem(0.5, 0.25)[0], seed=5, max_evaluations=14)
    assert [e["widths"] for e in other.history] != runs[0][0]


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    opts = {"clusters": 2, "rollback_at": 8, "patience": 0}
    whole, whole_calls = make_problem(0.4)
    ref = search(whole, max_evaluations=14, **opts)
    ckpt = tmp_path / "bo.json"
    log = tmp_path / "bo-{seed}.csv"
    broken, calls = make_problem(0.4, fail_after=9)
    with pytest.raises(KeyboardInterrupt):
        search(broken, max_evaluations=14, checkpoint=str(ckpt), log_csv=str(log), **opts)
    saved = json.loads(ckpt.read_text())
    assert len(calls) == 9 and len(next(iter(saved["searches"].values()))["history"]) == 9
    resumed, calls2 = make_problem(0.4)
    res = search(resumed, max_evaluations=14, checkpoint=str(ckpt), log_csv=str(log), **opts)
    assert len(calls2) == 14 - 9  # nothing evaluated twice
    assert res.extra["replayed_evaluations"] == 9
    assert [e["widths"] for e in res.history] == [e["widths"] for e in ref.history]
    assert res.widths == ref.widths and res.score == ref.score
    rows = list(csv.DictReader(open(tmp_path / "bo-0.csv")))
    assert [int(r["evaluation"]) for r in rows] == list(range(1, 15))
    assert [json.loads(r["ratios"]) for r in rows] == [e["ratios"] for e in res.history]
    assert float(rows[-1]["best"]) == res.score and all(r["feasible"] == "True" for r in rows)
    assert [r["phase"] for r in rows][7:9] == ["clustered", "full"]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    ckpt = tmp_path / "bo.json"
    search(make_problem(0.4)[0], max_evaluations=3, checkpoint=str(ckpt))
    other, _ = make_problem(0.4, multiple=8)
    with pytest.raises(HwpruneError, match="another model or channel multiple"):
        search(other, max_evaluations=3, checkpoint=str(ckpt))
    ckpt.write_text("{}")
    with pytest.raises(HwpruneError, match="not a bo checkpoint"):
        search(make_problem(0.4)[0], max_evaluations=3, checkpoint=str(ckpt))


@pytest.mark.parametrize("budgets", [(0.4, None), (0.5, 0.25)])
def test_bo_beats_uniform_where_uneven_allocation_pays(budgets):
    uniform = create_agent("uniform").search(make_problem(*budgets)[0], seed=0, max_evaluations=30)
    res = search(make_problem(*budgets)[0], max_evaluations=30, init_points=8)
    assert res.score >= uniform.score  # the uniform architecture is its first evaluation
    assert res.score > uniform.score + 1.0
    keep = {n: res.widths[n] / d for n, d in zip(NAMES, DENSE)}
    assert np.mean([keep[n] for n in FLAT]) > np.mean([keep[n] for n in NAMES if n not in FLAT])


def test_bad_options_are_one_line_errors(monkeypatch):
    for opts, pattern in [({"rollback": "sideways"}, "rollback"), ({"clusters": -1}, "clusters"),
                          ({"rollback_at": 0}, "rollback_at"), ({"init_points": 0}, "init_points"),
                          ({"clustering": "yes"}, "clustering"), ({"importance_scale": "l2"}, "importance_scale"),
                          ({"low": 0}, "low")]:
        with pytest.raises(HwpruneError, match=pattern):
            create_agent("bo", **opts)
    monkeypatch.setattr(bo_mod, "_botorch_available", lambda: False)
    with pytest.raises(HwpruneError, match="pip install botorch"):
        create_agent("bo")


def test_an_rl_and_a_bo_checkpoint_at_one_path_say_whose_they_are(tmp_path):
    # a bo run handed the rl agent's checkpoint said "'utf-8' codec can't decode byte 0x80" (nu12)
    ckpt = tmp_path / "agent.ckpt"
    torch.save({"learner": {}}, ckpt)
    with pytest.raises(HwpruneError, match="is not a bo checkpoint \\(it is a PyTorch file, such as the rl agent's\\)"):
        search(make_problem(0.4)[0], max_evaluations=3, checkpoint=str(ckpt))
    ckpt.unlink()
    search(make_problem(0.4)[0], max_evaluations=3, checkpoint=str(ckpt))
    with pytest.raises(HwpruneError, match="is not an rl checkpoint \\(it is a JSON file, such as the bo agent's\\)"):
        create_agent("rl", checkpoint=str(ckpt), episodes_per_update=4).search(make_problem(0.4)[0], seed=0,
                                                                               max_evaluations=5)
