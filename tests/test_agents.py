"""The baseline agents on a synthetic problem: feasibility, budgets of evaluations, seeds, quality.

The problem is a chain of five conv-like groups. The objective is a weighted sum of log
widths (concave, and the weights differ per group, so spending the budget unevenly pays);
a fake latency is bilinear in consecutive widths like convs are, and a fake parameter
count weighs the layers differently, so the two budgets bind at different architectures.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from hwprune.agents import Problem, SearchSpace, create_agent, list_agents
from hwprune.agents.baselines import largest_uniform_ratio, solve_mckp
from hwprune.budgets import BudgetFunction
from hwprune.errors import HwpruneError

NAMES = ["conv1", "layer1", "layer2", "layer3", "layer4"]
DENSE = [16, 16, 32, 32, 64]
WEIGHTS = [0.3, 3.0, 0.4, 2.5, 1.0]
# Spatial size shrinks with depth, so early layers cost more latency per MAC-free parameter.
SPATIAL = [32 * 32, 32 * 32, 16 * 16, 16 * 16, 8 * 8]
AGENTS = ["uniform", "random", "greedy", "knapsack", "rl"]


class FakeLatency(BudgetFunction):
    """Bilinear in consecutive widths, like a chain of 3×3 convs (ms)."""

    name = "fake_latency_ms"
    unit = "ms"

    def _value(self, widths):
        w = [3] + [widths[n] for n in NAMES]
        return 1e-5 * sum(9 * w[i] * w[i + 1] * SPATIAL[i] for i in range(len(NAMES)))


class FakeParams(BudgetFunction):
    """Conv weights plus a 10-way classifier on the last group."""

    name = "fake_params"
    unit = "params"

    def _value(self, widths):
        w = [3] + [widths[n] for n in NAMES]
        return sum(9 * w[i] * w[i + 1] for i in range(len(NAMES))) + 10 * w[-1]


def _dense_widths():
    return dict(zip(NAMES, DENSE))


def make_problem(latency_frac=0.4, params_frac=None, importance=True):
    """A problem whose budgets are fractions of the dense costs; counts objective calls."""
    calls = []

    def objective(widths):
        calls.append(dict(widths))
        return sum(wt * math.log(widths[n] / d) for n, d, wt in zip(NAMES, DENSE, WEIGHTS))

    dense = _dense_widths()
    budgets = []
    if latency_frac is not None:
        budgets.append(FakeLatency(latency_frac * FakeLatency(1.0).value(dense)))
    if params_frac is not None:
        budgets.append(FakeParams(params_frac * FakeParams(1.0).value(dense)))
    imp = {}
    if importance:
        # The k-th most important channel of group g is worth w_g / k, so the summed importance of
        # the n kept channels ≈ w_g·log n: consistent with the objective. Shuffled, so the agent
        # must sort.
        rng = np.random.default_rng(0)
        imp = {n: rng.permutation(wt / np.arange(1, d + 1)) for n, d, wt in zip(NAMES, DENSE, WEIGHTS)}
    problem = Problem(space=SearchSpace(NAMES, DENSE, channel_multiple=4), objective=objective,
                      budgets=budgets, importance=imp)
    return problem, calls


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("budgets", [(0.4, None), (None, 0.3), (0.5, 0.25)])
def test_result_is_feasible_and_honest(agent, budgets):
    problem, calls = make_problem(*budgets)
    seen = []
    res = create_agent(agent).search(problem, seed=0, max_evaluations=40, progress=seen.append)
    assert res.feasible and problem.feasible(res.widths)
    assert all(b.value(res.widths) <= b.limit for b in problem.budgets)
    assert all(w in problem.space.choices(g) for g, w in enumerate(res.widths[n] for n in NAMES))
    assert 1 <= res.evaluations <= 40
    # Every objective call is one evaluation, recorded once and reported once.
    assert len(calls) == res.evaluations == len(res.history) == len(seen)
    for entry in res.history:
        assert set(entry) >= {"widths", "score", "values", "feasible"}
        assert entry["feasible"] == problem.feasible(entry["widths"])
    best = max(e["score"] for e in res.history if e["feasible"])
    assert res.score == best == problem.objective(res.widths)
    assert seen[-1]["best_score"] == best and seen[-1]["agent"] == agent


@pytest.mark.parametrize("agent", AGENTS)
def test_unreachable_budget_names_the_minimum(agent):
    problem, _ = make_problem(latency_frac=None, params_frac=1e-4)
    smallest = FakeParams(1.0).value(problem.space.smallest_widths())
    with pytest.raises(HwpruneError, match=f"unreachable.*{re.escape(format(smallest, 'g'))}"):
        create_agent(agent).search(problem, seed=0, max_evaluations=10)


@pytest.mark.parametrize("agent", AGENTS)
def test_seed_reproduces_the_search(agent):
    runs = []
    for _ in range(2):
        problem, _ = make_problem(0.5, 0.3)
        runs.append(create_agent(agent).search(problem, seed=7, max_evaluations=20))
    assert runs[0].widths == runs[1].widths and runs[0].score == runs[1].score
    assert runs[0].history == runs[1].history


def test_random_seeds_differ_and_draws_stay_in_range():
    a = create_agent("random").search(make_problem(0.6)[0], seed=1, max_evaluations=10)
    b = create_agent("random").search(make_problem(0.6)[0], seed=2, max_evaluations=10)
    assert [e["widths"] for e in a.history] != [e["widths"] for e in b.history]
    assert a.evaluations == 10 and a.extra["rejected"] + 10 + a.extra["duplicates"] == a.extra["draws"]


def test_random_blends_when_feasible_draws_are_rare():
    # With every ratio ≥ 0.9 and a 20 % latency budget, no raw draw is feasible.
    problem, _ = make_problem(0.2)
    res = create_agent("random", low=0.9, draws_per_sample=20).search(problem, seed=0, max_evaluations=5)
    assert res.extra["blended"] >= 1 and res.extra["draws"] <= 20 * 5
    assert all(e["feasible"] for e in res.history) and problem.feasible(res.widths)


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("max_evaluations", [1, 2, 5])
def test_evaluations_never_exceed_the_limit(agent, max_evaluations):
    problem, calls = make_problem(0.3, 0.4)
    res = create_agent(agent).search(problem, seed=0, max_evaluations=max_evaluations)
    assert 1 <= res.evaluations <= max_evaluations and len(calls) == res.evaluations
    assert problem.feasible(res.widths)


def test_greedy_finishes_by_budget_only_when_evaluations_run_out():
    problem, _ = make_problem(0.3)
    res = create_agent("greedy").search(problem, seed=0, max_evaluations=4)  # < one iteration's proposals
    assert res.extra["budget_only_steps"] > 0 and res.evaluations == 1 and res.feasible


def test_uniform_is_the_largest_feasible_uniform_ratio():
    problem, calls = make_problem(0.4, 0.5)
    res = create_agent("uniform").search(problem, seed=0, max_evaluations=10)
    r = res.extra["keep_ratio"]
    assert res.evaluations == 1 and len(calls) == 1
    for n, d in zip(NAMES, DENSE):  # one ratio, snapped to the channel multiple
        assert abs(res.widths[n] - r * d) <= 2
    assert res.widths == problem.space.from_ratios(r)
    # Every larger uniform ratio that changes the architecture breaks a budget.
    larger = [problem.space.from_ratios(x) for x in np.linspace(r, 1.0, 400)[1:]]
    changed = [w for w in larger if w != res.widths]
    assert changed and not any(problem.feasible(w) for w in changed)


def test_uniform_keeps_dense_when_dense_fits():
    problem, _ = make_problem(1.5)
    res = create_agent("uniform").search(problem, seed=0, max_evaluations=3)
    assert res.widths == _dense_widths() and res.extra["keep_ratio"] == 1.0
    assert largest_uniform_ratio(problem)[0] == 1.0


@pytest.mark.parametrize("budgets", [(0.4, None), (0.5, 0.3)])
@pytest.mark.parametrize("agent,options", [("greedy", {}), ("greedy", {"criterion": "accuracy"}),
                                           ("knapsack", {})])
def test_non_uniform_agents_beat_uniform(agent, options, budgets):
    uniform = create_agent("uniform").search(make_problem(*budgets)[0], seed=0, max_evaluations=100)
    res = create_agent(agent, **options).search(make_problem(*budgets)[0], seed=0, max_evaluations=100)
    assert res.score > uniform.score + 0.5
    # The heavily weighted groups keep more of their channels than the lightly weighted ones.
    keep = {n: res.widths[n] / d for n, d in zip(NAMES, DENSE)}
    assert keep["layer1"] > keep["conv1"] and keep["layer3"] > keep["layer2"]


def test_knapsack_without_importance_falls_back_to_equal_importance():
    problem, _ = make_problem(0.4, importance=False)
    res = create_agent("knapsack").search(problem, seed=0, max_evaluations=3)
    assert res.feasible and res.extra["importance_defaulted"] == NAMES


def test_knapsack_rejects_mis_sized_importance():
    problem, _ = make_problem(0.4)
    problem.importance["conv1"] = np.ones(3)
    with pytest.raises(HwpruneError, match="conv1.*3 entries"):
        create_agent("knapsack").search(problem, seed=0, max_evaluations=3)


def test_mckp_is_exact_on_a_small_instance():
    rng = np.random.default_rng(3)
    values = [np.cumsum(rng.uniform(0, 1, 4)) for _ in range(4)]
    weights = [np.concatenate([[0.0], np.cumsum(rng.integers(1, 6, 3))]) for _ in range(4)]
    cap = 12.0
    sol = solve_mckp(values, weights, cap, bins=int(cap))  # integer weights: one bin per unit, exact
    brute = max(((a, b, c, d) for a in range(4) for b in range(4) for c in range(4) for d in range(4)
                 if sum(weights[g][j] for g, j in enumerate((a, b, c, d))) <= cap),
                key=lambda s: sum(values[g][j] for g, j in enumerate(s)))
    assert math.isclose(sum(values[g][j] for g, j in enumerate(sol)), sum(values[g][j] for g, j in enumerate(brute)))
    assert sum(weights[g][j] for g, j in enumerate(sol)) <= cap
    assert solve_mckp(values, weights, capacity=-1.0) is None  # even the lightest choices overrun


def test_unknown_agent_and_options_are_clear_errors():
    assert set(AGENTS) <= set(list_agents())
    with pytest.raises(HwpruneError, match="unknown agent 'nope'"):
        create_agent("nope")
    with pytest.raises(HwpruneError, match="agent 'greedy' has no option 'iterationz'"):
        create_agent("greedy", iterationz=3)
    # the options are listed, with the nearest name when there is one
    with pytest.raises(HwpruneError, match=r"its options: .*max_episodes.*did you mean 'max_episodes'\?"):
        create_agent("rl", max_episode=3)
    with pytest.raises(HwpruneError, match="criterion"):
        create_agent("greedy", criterion="fastest")
    with pytest.raises(HwpruneError, match="max_evaluations"):
        create_agent("uniform").search(make_problem(0.4)[0], max_evaluations=0)
