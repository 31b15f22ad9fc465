"""The ``rl`` agent (PPO-Lagrangian) on synthetic problems: multipliers, feasibility, resume, seeds, log.

The problem is a chain of five conv-like groups, as in ``test_agents.py``: the objective is a
weighted sum of log widths (concave, weights differ per group, so an uneven allocation pays
and the best one is known in shape), a fake latency is bilinear in consecutive widths and a
fake parameter count weighs the layers differently, so the two budgets bind at different
architectures. Everything is deterministic, so results can be compared exactly.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from hwprune.agents import Problem, SearchSpace, create_agent, list_agents
from hwprune.agents.rl import (LOG_COLUMNS, _Env, gae, inverse_softplus, softplus, update_multiplier)
from hwprune.errors import HwpruneError

# The toy problem of test_agents: a chain of five 3x3 convs with bilinear latency and params.
from test_agents import DENSE, NAMES, SPATIAL, WEIGHTS, FakeLatency, FakeParams  # noqa: E402
LAYER_INFO = {n: {"cin": c, "cout": d, "kernel": 3, "stride": 1 if i in (0, 1, 3) else 2, "padding": 1,
                  "groups": 1, "in_h": int(math.sqrt(s)), "in_w": int(math.sqrt(s))}
              for i, (n, c, d, s) in enumerate(zip(NAMES, [3] + DENSE[:-1], DENSE, SPATIAL))}
# Small searches keep the file fast; the option values are the agent's, only shorter.
FAST = {"episodes_per_update": 4, "ppo_epochs": 2, "hidden": 16, "max_episodes": 40}


def objective(widths):
    return sum(wt * math.log(widths[n] / d) for n, d, wt in zip(NAMES, DENSE, WEIGHTS))


def make_problem(latency_frac=0.4, params_frac=None, layer_info=True):
    """Budgets are fractions of the dense costs; ``calls`` records every objective call."""
    calls = []

    def counted(widths):
        calls.append(dict(widths))
        return objective(widths)

    dense = dict(zip(NAMES, DENSE))
    budgets = []
    if latency_frac is not None:
        budgets.append(FakeLatency(latency_frac * FakeLatency(1.0).value(dense)))
    if params_frac is not None:
        budgets.append(FakeParams(params_frac * FakeParams(1.0).value(dense)))
    problem = Problem(space=SearchSpace(NAMES, DENSE, channel_multiple=4), objective=counted, budgets=budgets,
                      layer_info=dict(LAYER_INFO) if layer_info else {})
    return problem, calls


def read_log(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    return header, rows


# -- the pieces ----------------------------------------------------------------------------------------


def test_multiplier_rises_while_violated_and_falls_while_slack():
    theta = inverse_softplus(1.0)
    assert softplus(theta) == pytest.approx(1.0)
    nus = [1.0]
    for _ in range(20):
        theta = update_multiplier(theta, 0.3, lr=1.0)
        nus.append(softplus(theta))
    assert all(b > a for a, b in zip(nus, nus[1:]))
    # Bigger violations raise it faster; no violation leaves it where it is.
    assert update_multiplier(0.0, 0.5, 1.0) > update_multiplier(0.0, 0.1, 1.0) > 0.0
    assert update_multiplier(0.7, 0.0, 1.0) == 0.7
    for _ in range(200):
        prev = softplus(theta)
        theta = update_multiplier(theta, -2.0, lr=5.0)
        assert 0.0 < softplus(theta) < prev  # falls, never below zero
    assert softplus(theta) < 1e-2


def test_gae_matches_hand_computation():
    rewards, values = np.array([0.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.5])
    adv, ret = gae(rewards, values, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [0.5, 0.5, 0.5])  # Monte-Carlo return minus value
    np.testing.assert_allclose(ret, [1.0, 1.0, 1.0])
    adv, _ = gae(rewards, values, gamma=1.0, lam=0.0)
    np.testing.assert_allclose(adv, [0.0, 0.0, 0.5])  # one-step TD errors
    adv, _ = gae(rewards, values, gamma=0.5, lam=0.5)
    d = [0.0 + 0.5 * 0.5 - 0.5, 0.0 + 0.5 * 0.5 - 0.5, 1.0 - 0.5]
    np.testing.assert_allclose(adv, [d[0] + 0.25 * (d[1] + 0.25 * d[2]), d[1] + 0.25 * d[2], d[2]])
    # Several signals (one column per cost) at once.
    adv2, _ = gae(np.stack([rewards, 2 * rewards], 1), np.zeros((3, 2)), 1.0, 1.0)
    np.testing.assert_allclose(adv2, [[1, 2]] * 3)


@pytest.mark.parametrize("projection", ["boundary", "repair", "none"])
def test_repair_lands_feasible_and_keeps_the_shape(projection):
    problem, _ = make_problem(0.4, 0.5)
    env = _Env(problem, projection, projection_steps=14)
    space = problem.space
    heavy = np.array([1.0, 0.9, 1.0, 0.8, 1.0])   # violates both budgets
    light = np.array([0.3, 0.4, 0.25, 0.3, 0.2])  # meets both, with room to spare
    for keep in (heavy, light):
        raw = env.widths(keep)
        w, scale = env.repair(keep)
        if projection == "none" or (projection == "repair" and problem.feasible(raw)):
            assert w == raw and scale == 1.0
            continue
        assert problem.feasible(w)
        assert (scale < 1.0) == (not problem.feasible(raw))
        # Scaled along the ray: a group kept larger stays at least as large.
        order = np.argsort(keep * DENSE)
        got = np.array([w[n] for n in NAMES])[order]
        assert all(a <= b for a, b in zip(got, got[1:]))
        # On the boundary: one bisection step further breaks a budget (or everything is dense).
        bigger = env.widths(np.minimum(1.0, keep * scale * 1.05))
        assert bigger == w or not problem.feasible(bigger) or w == space.dense_widths()


def test_state_has_geometry_and_budget_progress_and_tolerates_missing_layer_info():
    with_info = _Env(make_problem(0.4, 0.5)[0], "boundary", 14)
    without = _Env(make_problem(0.4, 0.5, layer_info=False)[0], "boundary", 14)
    assert with_info.state_dim == without.state_dim + 8  # 7 geometry keys and groups/cin
    s0 = with_info.state(0, [], [])
    assert s0.shape == (with_info.state_dim,) and np.all(np.isfinite(s0))
    # Budget consumed if the rest stays dense, at the start: dense over the limit, per budget.
    k = with_info.static.shape[1] + 2
    assert s0[k] == pytest.approx(1 / 0.4) and s0[k + 1] == pytest.approx(1 - 1 / 0.4)
    assert s0[k + 3] == pytest.approx(1 / 0.5)
    # Deciding a small first group lowers what is consumed.
    s1 = with_info.state(1, [4], [0.75])
    assert s1[k] < s0[k] and s1[with_info.static.shape[1]] == 0.75
    partial = make_problem(0.4)[0]
    del partial.layer_info["layer2"]
    assert np.all(np.isfinite(_Env(partial, "boundary", 14).static))


# -- the search --------------------------------------------------------------------------------------------


def test_rl_is_registered_and_the_default_agent():
    from hwprune.pruning import default_agent

    assert "rl" in list_agents() and default_agent() == "rl"


@pytest.mark.parametrize("budgets", [(0.4, None), (None, 0.3), (0.5, 0.25)])
def test_result_is_feasible_and_honest(budgets):
    problem, calls = make_problem(*budgets)
    seen = []
    res = create_agent("rl", **FAST).search(problem, seed=0, max_evaluations=20, progress=seen.append)
    assert res.feasible and problem.feasible(res.widths)
    assert all(b.value(res.widths) <= b.limit for b in problem.budgets)
    assert all(res.widths[n] in problem.space.choices(g) for g, n in enumerate(NAMES))
    assert 1 <= res.evaluations <= 20
    assert len(calls) == res.evaluations == len(res.history) == len(seen)
    assert len({problem.space.key(e["widths"]) for e in res.history}) == res.evaluations  # nothing twice
    best = max(e["score"] for e in res.history if e["feasible"])
    assert res.score == best == objective(res.widths)
    assert seen[-1]["best_score"] == best and seen[-1]["agent"] == "rl"
    # The first evaluation is the feasible uniform incumbent; RL episodes carry their multipliers.
    assert res.history[0]["phase"] == "uniform" and res.history[0]["feasible"]
    rl = [e for e in res.history if e["phase"] == "rl"]
    assert rl and all(set(e["nu"]) == {b.name for b in problem.budgets} for e in rl)
    assert set(res.extra["nu"]) == {b.name for b in problem.budgets}


def test_two_budgets_both_bind_and_both_are_met():
    problem, _ = make_problem(0.5, 0.25)
    res = create_agent("rl", **FAST).search(problem, seed=1, max_evaluations=40)
    lat, par = problem.budgets
    assert lat.value(res.widths) <= lat.limit and par.value(res.widths) <= par.limit
    # Each budget alone would allow something the other forbids: both constraints are live.
    only_lat, _ = make_problem(0.5, None)
    only_par, _ = make_problem(None, 0.25)
    assert not only_lat.feasible(only_par.space.dense_widths())
    assert all(e["feasible"] for e in res.history)  # the repair meets both at once


def test_multiplier_rises_in_a_run_while_the_policy_cannot_meet_the_budget(tmp_path):
    # Unrepaired, and never removing more than 10 % per group: every episode violates a 40 %
    # budget, so the multiplier must climb update after update.
    log = tmp_path / "log.csv"
    problem, _ = make_problem(0.4)
    options = dict(FAST, projection="none", a_max_start=0.1, a_max_end=0.1, max_episodes=24, log_csv=str(log))
    res = create_agent("rl", **options).search(problem, seed=0, max_evaluations=100)
    _, rows = read_log(log)
    nus = [float(r["nu_fake_latency_ms"]) for r in rows if r["deterministic"] == "0"]
    per_update = [nus[i] for i in range(0, len(nus), FAST["episodes_per_update"])]
    assert len(per_update) == 6 and all(b > a for a, b in zip(per_update, per_update[1:]))
    assert all(float(r["cost_fake_latency_ms"]) > 0 for r in rows)
    assert res.extra["nu"]["fake_latency_ms"] > per_update[-1] and res.feasible  # the uniform incumbent


def test_multiplier_falls_in_a_run_while_the_budget_is_slack():
    problem, _ = make_problem(1.5)  # even the dense model fits
    options = dict(FAST, projection="none", max_episodes=24)
    res = create_agent("rl", **options).search(problem, seed=0, max_evaluations=100)
    assert 0.0 < res.extra["nu"]["fake_latency_ms"] < 0.5
    assert res.widths == problem.space.dense_widths()


def test_same_seed_same_search_other_seed_other_search():
    runs = [create_agent("rl", **FAST).search(make_problem(0.5, 0.3)[0], seed=s, max_evaluations=15)
            for s in (7, 7, 8)]
    assert runs[0].widths == runs[1].widths and runs[0].score == runs[1].score
    assert runs[0].history == runs[1].history and runs[0].extra == runs[1].extra
    assert [e["widths"] for e in runs[0].history] != [e["widths"] for e in runs[2].history]


def test_the_search_runs_on_one_thread_and_restores_the_callers_setting():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threads_seen = []

        def objective_threads(info):
            threads_seen.append(torch.get_num_threads())

        two = create_agent("rl", **FAST).search(make_problem(0.4)[0], seed=4, max_evaluations=8,
                                                progress=objective_threads)
        assert torch.get_num_threads() == 2 and set(threads_seen) == {2}  # the caller's, outside the agent
        torch.set_num_threads(1)
        one = create_agent("rl", **FAST).search(make_problem(0.4)[0], seed=4, max_evaluations=8)
    finally:
        torch.set_num_threads(before)
    assert one.history == two.history  # same search whatever the caller's thread count


class Crash(Exception):
    pass


def test_an_interrupted_search_resumes_to_the_uninterrupted_result(tmp_path):
    opts = dict(FAST, max_episodes=32)
    ref_log = tmp_path / "ref.csv"
    ref = create_agent("rl", log_csv=str(ref_log), **opts).search(make_problem(0.4, 0.5)[0], seed=3,
                                                                  max_evaluations=25)
    ckpt, log = tmp_path / "rl.ckpt", tmp_path / "log.csv"

    def crash_at_12(info):
        if info["evaluation"] == 12:
            raise Crash

    problem, calls_before = make_problem(0.4, 0.5)
    with pytest.raises(Crash):
        create_agent("rl", checkpoint=str(ckpt), log_csv=str(log), **opts).search(
            problem, seed=3, max_evaluations=25, progress=crash_at_12)
    assert ckpt.is_file() and len(calls_before) == 12

    problem, calls_after = make_problem(0.4, 0.5)
    res = create_agent("rl", checkpoint=str(ckpt), log_csv=str(log), **opts).search(problem, seed=3,
                                                                                   max_evaluations=25)
    assert res.extra["resumed"] is True and ref.extra["resumed"] is False
    assert res.widths == ref.widths and res.score == ref.score and res.evaluations == ref.evaluations
    assert res.history == ref.history
    assert {k: v for k, v in res.extra.items() if k != "resumed"} == \
           {k: v for k, v in ref.extra.items() if k != "resumed"}
    # Nothing evaluated before the crash was evaluated again, and the log has no duplicate rows.
    assert len(calls_after) == ref.evaluations - 12
    assert {tuple(c.values()) for c in calls_after}.isdisjoint({tuple(c.values()) for c in calls_before})
    assert log.read_text() == ref_log.read_text()


def test_a_search_with_more_evaluations_continues_one_with_fewer(tmp_path):
    opts = dict(FAST, final_mean=False, max_episodes=60)
    ckpt = tmp_path / "rl.ckpt"
    short = create_agent("rl", checkpoint=str(ckpt), **opts).search(make_problem(0.4)[0], seed=2,
                                                                    max_evaluations=12)
    assert short.extra["stop"] == "max_evaluations" and short.evaluations == 12
    problem, calls = make_problem(0.4)
    cont = create_agent("rl", checkpoint=str(ckpt), **opts).search(problem, seed=2, max_evaluations=30)
    full = create_agent("rl", **opts).search(make_problem(0.4)[0], seed=2, max_evaluations=30)
    assert cont.extra["resumed"] and cont.history == full.history and cont.widths == full.widths
    assert len(calls) == full.evaluations - 12


def test_a_checkpoint_of_another_problem_is_not_resumed(tmp_path):
    ckpt = tmp_path / "rl.ckpt"
    create_agent("rl", checkpoint=str(ckpt), **FAST).search(make_problem(0.4)[0], seed=0, max_evaluations=10)
    other = create_agent("rl", checkpoint=str(ckpt), **FAST).search(make_problem(0.5)[0], seed=0,
                                                                    max_evaluations=10)
    fresh = create_agent("rl", **FAST).search(make_problem(0.5)[0], seed=0, max_evaluations=10)
    assert other.extra["resumed"] is False and "another problem" in other.extra["checkpoint_note"]
    assert other.history == fresh.history
    # ... and the checkpoint now belongs to the new problem.
    again = create_agent("rl", checkpoint=str(ckpt), **FAST).search(make_problem(0.5)[0], seed=0,
                                                                    max_evaluations=10)
    assert again.extra["resumed"] is True and again.history == fresh.history


def test_a_checkpoint_with_more_evaluations_than_allowed_is_refused(tmp_path):
    ckpt = tmp_path / "rl.ckpt"
    create_agent("rl", checkpoint=str(ckpt), **FAST).search(make_problem(0.4)[0], seed=0, max_evaluations=10)
    with pytest.raises(HwpruneError, match="holds 10 evaluations.*max_evaluations=5"):
        create_agent("rl", checkpoint=str(ckpt), **FAST).search(make_problem(0.4)[0], seed=0, max_evaluations=5)


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "rl.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(HwpruneError, match="cannot read checkpoint"):
        create_agent("rl", checkpoint=str(ckpt), **FAST).search(make_problem(0.4)[0], seed=0, max_evaluations=5)


def test_log_csv_has_one_row_per_episode_with_costs_and_multipliers(tmp_path):
    log = tmp_path / "sub" / "log.csv"
    problem, _ = make_problem(0.5, 0.3)
    res = create_agent("rl", log_csv=str(log), **FAST).search(problem, seed=0, max_evaluations=20)
    header, rows = read_log(log)
    assert header == list(LOG_COLUMNS) + ["cost_fake_latency_ms", "cost_fake_params",
                                          "nu_fake_latency_ms", "nu_fake_params"]
    assert len(rows) == res.extra["episodes"] and [int(r["episode"]) for r in rows] == list(range(1, len(rows) + 1))
    assert sum(int(r["new_evaluation"]) for r in rows) == res.evaluations - 1  # all but the uniform incumbent
    assert {int(r["evaluation"]) for r in rows if r["new_evaluation"] == "1"} == set(range(2, res.evaluations + 1))
    assert all(r["feasible"] == "1" for r in rows)  # the boundary repair
    best = [float(r["best"]) for r in rows]
    assert best == sorted(best) and best[-1] == pytest.approx(res.score)
    assert all(float(r["nu_fake_params"]) > 0 for r in rows)
    for r in rows:  # costs are the raw architecture's value / limit - 1
        assert float(r["raw_feasible"]) == float(max(float(r["cost_fake_latency_ms"]),
                                                     float(r["cost_fake_params"])) <= 0)
    assert all(0.8 <= float(r["a_max"]) <= 0.95 for r in rows)


def test_rl_beats_uniform_at_equal_evaluations_where_an_uneven_allocation_pays():
    uniform = create_agent("uniform").search(make_problem(0.4)[0], seed=0, max_evaluations=40)
    res = create_agent("rl", **FAST).search(make_problem(0.4)[0], seed=0, max_evaluations=40)
    assert res.score > uniform.score + 1.0


def test_the_policy_learns_the_uneven_allocation(tmp_path):
    # The objective is cheap here, so let it train: its episodes must get better, not only its best.
    log = tmp_path / "log.csv"
    options = dict(FAST, max_episodes=160, log_csv=str(log))
    res = create_agent("rl", **options).search(make_problem(0.4)[0], seed=0, max_evaluations=1000)
    _, rows = read_log(log)
    rewards = [float(r["reward"]) for r in rows if r["deterministic"] == "0"]
    assert len(rewards) == 160
    assert np.mean(rewards[-20:]) > np.mean(rewards[:20]) + 1.0
    # Heavily weighted groups keep more of their channels than lightly weighted ones.
    keep = {n: res.widths[n] / d for n, d in zip(NAMES, DENSE)}
    assert keep["layer1"] > keep["conv1"] and keep["layer3"] > keep["layer2"]
    # Near the best allocation: within 0.3 of the optimum over every feasible architecture
    # on the budget boundary, found exhaustively (16 k architectures, budgets only).
    problem = make_problem(0.4)[0]
    grids = [problem.space.choices(g) for g in range(len(NAMES))]
    best = max(objective(dict(zip(NAMES, w))) for w in np.array(np.meshgrid(*grids)).reshape(len(NAMES), -1).T
               if problem.feasible(dict(zip(NAMES, map(int, w)))))
    assert res.score >= best - 0.3


@pytest.mark.parametrize("max_evaluations", [1, 2, 5])
def test_evaluations_never_exceed_the_limit(max_evaluations):
    problem, calls = make_problem(0.3, 0.4)
    res = create_agent("rl", **FAST).search(problem, seed=0, max_evaluations=max_evaluations)
    assert 1 <= res.evaluations <= max_evaluations and len(calls) == res.evaluations
    assert problem.feasible(res.widths)


def test_patience_and_max_episodes_stop_the_search():
    res = create_agent("rl", **dict(FAST, max_episodes=8)).search(make_problem(0.4)[0], seed=0, max_evaluations=500)
    assert res.extra["stop"] == "max_episodes" and res.extra["episodes"] == 8 + 1  # + the mean action
    options = dict(FAST, patience=4, max_episodes=100)
    res = create_agent("rl", **options).search(make_problem(1.5)[0], seed=0, max_evaluations=500)
    assert res.extra["stop"] == "patience" and res.extra["episodes"] <= 8 + 1


def test_unreachable_budget_is_refused():
    with pytest.raises(HwpruneError, match="unreachable"):
        create_agent("rl").search(make_problem(None, 1e-4)[0], seed=0, max_evaluations=10)


@pytest.mark.parametrize("options,match", [
    ({"projection": "sideways"}, "projection"), ({"pi_lr": -1}, "pi_lr"), ({"episodes_per_update": 0}, "episodes"),
    ({"final_mean": "yes"}, "final_mean"), ({"gamma": 1.5}, "gamma"), ({"nu_init": 0}, "nu_init"),
    ({"a_max_end": 1.2}, "a_max_end"), ({"checkpoint": 3}, "checkpoint"), ({"hidden": 2.5}, "hidden"),
    ({"learning_rate": 0.1}, "rl"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(HwpruneError, match=match) as err:
        create_agent("rl", **options)
    assert "\n" not in str(err.value)
