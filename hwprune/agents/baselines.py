"""The baseline agents: ``uniform``, ``random``, ``greedy`` (NetAdapt-style) and ``knapsack`` (HALP-style).

Conventions shared by the four:

- The objective (higher is better) is the expensive call and is counted against
  ``max_evaluations``; budget functions are cheap (LUT lookups, parameter counts) and are
  called freely, so every agent filters, repairs and orders candidates by budgets alone and
  spends objective evaluations only on architectures it might return.
- ``problem.budgets[0]`` is the *primary* budget (the latency budget, by convention): the
  resource schedule of ``greedy`` and the knapsack weights of ``knapsack`` are measured on it.
  The other budgets are constraints too: an agent returns only architectures meeting all.
- The result is the best feasible architecture whose objective was evaluated; every
  evaluation is in ``history`` and reported to ``progress``.
- ``seed`` drives all randomness (``random`` only; the other three are deterministic and
  accept the seed for the common interface).

Example:
    >>> from hwprune.agents import create_agent
    >>> agent = create_agent("knapsack", rounds=4)                 # doctest: +SKIP
    >>> agent.search(problem, seed=0, max_evaluations=3).widths    # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from hwprune.agents.base import Agent, Problem, SearchResult, SearchSpace, Widths, check_option, register_agent
from hwprune.agents.evaluator import Evaluator
from hwprune.budgets import BudgetFunction
from hwprune.errors import HwpruneError

ProgressFn = Callable[[dict[str, Any]], None]


class _Grid:
    """Per-group choice indices ↔ widths (index 0 is one channel multiple, the last is dense)."""

    def __init__(self, space: SearchSpace):
        self.names = list(space.group_names)
        self.choices = [space.choices(g) for g in range(len(self.names))]

    def __len__(self) -> int:
        return len(self.names)

    def widths(self, idx: Sequence[int]) -> Widths:
        return {n: c[i] for n, c, i in zip(self.names, self.choices, idx)}

    def dense_index(self) -> list[int]:
        return [len(c) - 1 for c in self.choices]


def largest_uniform_ratio(problem: Problem, steps: int = 20) -> tuple[float, Widths, int]:
    """The largest keep ratio (to 2**-steps) whose snapped widths meet every budget.

    Bisection keeps ``lo`` feasible and ``hi`` infeasible at every step, so the returned
    widths are feasible by construction even where snapping or a non-monotone budget (a
    noisy LUT) makes feasibility only approximately monotone in the ratio; for monotone
    budgets the answer is the largest feasible uniform architecture, unless two snapping
    breakpoints lie closer than 2**-steps. Uses budget functions only.

    Returns:
        ``(keep_ratio, widths, budget_checks)``.
    """
    space = problem.space
    checks = 0

    def ok(ratio: float) -> bool:
        nonlocal checks
        checks += 1
        return problem.feasible(space.from_ratios(ratio))

    if ok(1.0):
        return 1.0, space.from_ratios(1.0), checks
    if not ok(0.0):  # ratio 0 snaps to the smallest architecture
        problem.check_reachable()
        raise HwpruneError(f"no uniform keep ratio meets the budgets: {problem.values(space.from_ratios(0.0))}")
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, space.from_ratios(lo), checks


@register_agent("uniform")
class UniformAgent(Agent):
    """One keep ratio for every group: the largest that meets every budget.

    Bisects the ratio on budgets alone (``steps`` halvings) and evaluates the objective once,
    for the final architecture. ``extra["keep_ratio"]`` is the ratio found.
    """

    def __init__(self, steps: int = 20):
        self.steps = check_option("uniform", "steps", steps, 1, integer=True)

    def _search(self, problem: Problem, *, seed: int, max_evaluations: int,
                progress: ProgressFn | None) -> SearchResult:
        ev = Evaluator(problem, self.name, max_evaluations, progress)
        ratio, widths, checks = largest_uniform_ratio(problem, self.steps)
        ev.score(widths, keep_ratio=ratio)
        return ev.result({"keep_ratio": ratio, "budget_checks": checks})


@register_agent("random")
class RandomAgent(Agent):
    """Random per-group keep ratios in ``[low, 1]``; the best of ``max_evaluations`` feasible draws.

    Infeasible draws are rejected on budgets alone. When ``draws_per_sample`` draws in a row
    are rejected (a tight budget, where feasible draws are rare), the last draw is blended
    toward the largest feasible uniform ratio, ``(1 - t)·draw + t·uniform``, with the
    smallest ``t`` (bisected) that makes it feasible: the sample keeps the draw's shape
    and lands near the budget boundary, and ``t = 1`` is feasible by construction. At most
    ``draws_per_sample × max_evaluations`` draws are made; draws whose snapped widths were
    already evaluated are skipped, so a tiny search space may yield fewer evaluations.
    """

    def __init__(self, low: float = 0.1, draws_per_sample: int = 200, blend_steps: int = 12):
        if isinstance(low, bool) or not isinstance(low, (int, float)) or not 0.0 < low <= 1.0:
            raise HwpruneError(f"agent random: low must be a keep ratio in (0, 1], got {low!r}")
        self.low = float(low)
        self.draws_per_sample = check_option("random", "draws_per_sample", draws_per_sample, 1, integer=True)
        self.blend_steps = check_option("random", "blend_steps", blend_steps, 1, integer=True)

    def _search(self, problem: Problem, *, seed: int, max_evaluations: int,
                progress: ProgressFn | None) -> SearchResult:
        space = problem.space
        rng = np.random.default_rng(seed)
        ev = Evaluator(problem, self.name, max_evaluations, progress)
        max_draws = self.draws_per_sample * max_evaluations
        draws = rejected = blended = duplicates = in_a_row = 0
        uniform_ratio: float | None = None
        while ev.remaining > 0 and draws < max_draws:
            ratios = rng.uniform(self.low, 1.0, size=len(space.dense))
            draws += 1
            widths = space.from_ratios(ratios.tolist())
            info: dict[str, Any] = {"draw": draws}
            if not problem.feasible(widths):
                rejected += 1
                in_a_row += 1
                if in_a_row < self.draws_per_sample:
                    continue
                if uniform_ratio is None:
                    uniform_ratio = largest_uniform_ratio(problem)[0]
                widths, t = self._blend(problem, ratios, uniform_ratio)
                blended += 1
                info["blend_t"] = t
            in_a_row = 0
            if ev.seen(widths):
                duplicates += 1
                continue
            ev.score(widths, **info)
        if ev.best is None:  # only when draws_per_sample × max_evaluations draws all missed and none was blended
            ev.score(largest_uniform_ratio(problem)[1], draw=None)
        return ev.result({"low": self.low, "draws": draws, "rejected": rejected, "blended": blended,
                          "duplicates": duplicates})

    def _blend(self, problem: Problem, ratios: np.ndarray, uniform_ratio: float) -> tuple[Widths, float]:
        space = problem.space

        def at(t: float) -> Widths:
            return space.from_ratios(((1.0 - t) * ratios + t * uniform_ratio).tolist())

        lo, hi = 0.0, 1.0  # at(lo) is infeasible (the rejected draw); at(hi) is feasible
        for _ in range(self.blend_steps):
            mid = (lo + hi) / 2
            if problem.feasible(at(mid)):
                hi = mid
            else:
                lo = mid
        return at(hi), hi


@register_agent("greedy")
class GreedyAgent(Agent):
    """NetAdapt-style greedy shrinking from the dense model, one group per iteration.

    The driving budget is the primary one (``problem.budgets[0]``) while it is violated, then
    the most violated other budget. Its excess over the limit at the point it starts driving,
    divided by ``iterations``, is the resource reduction each iteration must achieve (the
    last iteration asks only for what is left). Each iteration proposes, for every group, the
    fewest channel-multiple steps of that group alone that reduce the driving budget by that
    much (or as far as the group can shrink), evaluates every proposal's objective, and keeps
    the best by ``criterion``:

    - ``"ratio"`` (default): least objective lost per unit of budget saved (saving beyond
      the limit is not credited), the best accuracy-per-millisecond trade-off;
    - ``"accuracy"``: highest objective, as in NetAdapt.

    When the evaluations left cannot pay for a whole iteration plus one final evaluation,
    the search goes on by budgets alone until every budget is met, and evaluates that
    architecture once: each such step takes the proposal that leaves its group the largest
    fraction of its channels (the uniform prior, as nothing else is known), then the one
    saving the most. NetAdapt's short fine-tuning between iterations is left to the caller's
    objective.
    """

    CRITERIA = ("ratio", "accuracy")

    def __init__(self, iterations: int = 15, criterion: str = "ratio"):
        self.iterations = check_option("greedy", "iterations", iterations, 1, integer=True)
        if criterion not in self.CRITERIA:
            raise HwpruneError(f"agent greedy: unknown criterion '{criterion}' (known: {', '.join(self.CRITERIA)})")
        self.criterion = criterion

    def _search(self, problem: Problem, *, seed: int, max_evaluations: int,
                progress: ProgressFn | None) -> SearchResult:
        grid = _Grid(problem.space)
        ev = Evaluator(problem, self.name, max_evaluations, progress)
        idx = grid.dense_index()
        step_of: dict[int, float] = {}
        iteration = budget_only = 0
        by_objective = True
        while not problem.feasible(grid.widths(idx)):
            iteration += 1
            cur = grid.widths(idx)
            b_i = _driving_budget(problem, cur)
            b = problem.budgets[b_i]
            excess = b.value(cur) - b.limit
            step = step_of.setdefault(b_i, excess / self.iterations)
            proposals = self._proposals(grid, idx, b, min(step, excess))
            if not proposals:
                # No single group moves this budget (a flat or noisy budget): shrink every group a
                # step, which always ends at the smallest architecture, reachable by the check.
                if not any(idx):
                    problem.check_reachable()
                    raise HwpruneError(f"the smallest architecture does not meet the budgets: {problem.values(cur)}")
                idx = [max(0, i - 1) for i in idx]
                budget_only += 1
                continue
            need_base = self.criterion == "ratio" and not ev.seen(cur)
            if by_objective and ev.remaining >= len(proposals) + int(need_base) + 1:
                base = ev.score(cur, iteration=iteration, group=None) if self.criterion == "ratio" else 0.0
                keys = []
                for g, trial, saved in proposals:
                    s = ev.score(grid.widths(trial), iteration=iteration, group=grid.names[g])
                    keys.append(s if self.criterion == "accuracy" else -(base - s) / min(saved, excess))
            else:
                by_objective = False
                budget_only += 1
                # Without objective evaluations, lean on the uniform prior: shrink where the group keeps
                # the largest fraction of its channels afterwards (then where it saves the most).
                keys = [(grid.choices[g][trial[g]] / grid.choices[g][-1], saved) for g, trial, saved in proposals]
            best = max(range(len(proposals)), key=lambda k: (keys[k], -k))  # ties: the earlier group
            idx = proposals[best][1]
        final = grid.widths(idx)
        if not ev.seen(final):
            ev.score(final, iteration=iteration, group=None)  # the reserve kept above pays for this
        return ev.result({"criterion": self.criterion, "iterations": iteration, "budget_only_steps": budget_only,
                          "primary_budget": problem.budgets[0].name if problem.budgets else None})

    @staticmethod
    def _proposals(grid: _Grid, idx: list[int], budget: BudgetFunction,
                   need: float) -> list[tuple[int, list[int], float]]:
        """``(group, new index, budget saved)`` per group that can shrink and save anything."""
        now = budget.value(grid.widths(idx))
        out = []
        for g in range(len(grid)):
            trial, saved = list(idx), 0.0
            while trial[g] > 0:
                trial[g] -= 1
                saved = now - budget.value(grid.widths(trial))
                if saved >= need:
                    break
            if trial[g] < idx[g] and saved > 0:
                out.append((g, trial, saved))
        return out


def _driving_budget(problem: Problem, widths: Widths) -> int:
    """The primary budget while it is violated, else the most violated one (lowest index on ties)."""
    if not problem.budgets[0].feasible(widths):
        return 0
    violated = [i for i, b in enumerate(problem.budgets) if not b.feasible(widths)]
    return max(violated, key=lambda i: (problem.budgets[i].cost(widths), -i))


def solve_mckp(values: Sequence[np.ndarray], weights: Sequence[np.ndarray], capacity: float,
               bins: int = 2000) -> list[int] | None:
    """Multiple-choice knapsack: one choice ``j`` per group maximising Σ value within capacity.

    Exact dynamic programming over weights discretised to ``capacity / bins``; weights are
    rounded up, so a returned choice never exceeds ``capacity`` (at the cost of missing
    solutions within one bin per group of it). Weights may be negative: each group's
    lightest choice is the baseline. Returns ``None`` when even the lightest choices exceed
    the capacity.

    Example:
        >>> solve_mckp([np.array([0., 1.]), np.array([0., 5.])],
        ...            [np.array([0., 1.]), np.array([0., 1.])], capacity=1.0, bins=10)
        [0, 1]
    """
    mins = [float(np.min(w)) for w in weights]
    cap = capacity - sum(mins)
    if cap < 0:
        return None
    shifted = [np.asarray(w, float) - m for w, m in zip(weights, mins)]
    if cap > 0:
        unit = cap / bins
        ints = [np.ceil(s / unit - 1e-9).astype(np.int64) for s in shifted]
    else:
        ints = [np.where(s > 0, bins + 1, 0).astype(np.int64) for s in shifted]
    dp = np.zeros(bins + 1)  # dp[c]: best value of the groups so far within c units
    choice = np.zeros((len(values), bins + 1), dtype=np.int64)
    for g, (vals, wts) in enumerate(zip(values, ints)):
        new = np.full(bins + 1, -np.inf)
        arg = np.full(bins + 1, -1, dtype=np.int64)
        for j, (wt, v) in enumerate(zip(wts, vals)):
            if wt > bins:
                continue
            cand = np.full(bins + 1, -np.inf)
            cand[wt:] = dp[:bins + 1 - wt] + float(v)
            better = cand > new  # strict: on ties keep the narrower choice
            new[better] = cand[better]
            arg[better] = j
        dp, choice[g] = new, arg
    if not np.isfinite(dp[bins]):
        return None
    sol, c = [0] * len(values), bins
    for g in reversed(range(len(values))):
        sol[g] = int(choice[g][c])
        c -= int(ints[g][sol[g]])
    return sol


@register_agent("knapsack")
class KnapsackAgent(Agent):
    """HALP-style: channel blocks as knapsack items, importance as value, primary budget as weight.

    A group's choices are prefixes of its channels sorted by importance, so choosing width
    ``w`` is worth the summed importance of its ``w`` most important channels (the channels
    the pruner keeps) and every group keeps at least one channel multiple. A choice weighs
    its change of the primary budget with the other groups held at the current widths.
    Because a layer's latency depends on its neighbours' widths, this linearisation is
    redone for ``rounds`` rounds (from the dense model, then around each solution, as HALP
    re-estimates latency costs), each round solving the multiple-choice knapsack exactly by
    DP over ``bins`` weight bins, then *repairing* (dropping the block with the least value
    per unit of budget overrun removed until every budget is met) and *filling* (adding back
    the block with the most value per unit of added budget cost, summed over budgets, while
    everything still fits). The distinct repaired solutions are ranked by knapsack value and
    the best ``max_candidates`` (within ``max_evaluations``) have their objective evaluated.

    ``problem.importance[group]`` is a 1-D array (or tensor) with one score per channel. A
    group without one gets every channel the mean channel importance of the groups that have
    one (1.0 when none has): equal importance, on the same scale as the others.
    """

    def __init__(self, rounds: int = 4, bins: int = 2000, max_candidates: int = 3):
        self.rounds = check_option("knapsack", "rounds", rounds, 1, integer=True)
        self.bins = check_option("knapsack", "bins", bins, 10, integer=True)
        self.max_candidates = check_option("knapsack", "max_candidates", max_candidates, 1, integer=True)

    def _search(self, problem: Problem, *, seed: int, max_evaluations: int,
                progress: ProgressFn | None) -> SearchResult:
        grid = _Grid(problem.space)
        ev = Evaluator(problem, self.name, max_evaluations, progress)
        values, defaulted = _choice_values(problem, grid)
        primary = problem.budgets[0] if problem.budgets else None
        idx = grid.dense_index()
        candidates: dict[tuple[int, ...], tuple[float, int]] = {}
        rounds_run = 0
        for r in range(1, self.rounds + 1):
            rounds_run = r
            sol = self._solve_round(grid, values, primary, idx) if primary is not None else list(idx)
            sol = _fill(problem, grid, values, _repair(problem, grid, values, sol))
            total = float(sum(v[j] for v, j in zip(values, sol)))
            candidates.setdefault(tuple(sol), (total, r))
            if sol == idx:  # the solution reproduces its own linearisation point: converged
                break
            idx = sol
        ranked = sorted(candidates.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
        for sol, (total, r) in ranked[:min(max_evaluations, self.max_candidates)]:
            ev.score(grid.widths(sol), round=r, knapsack_value=total)
        best = tuple(c.index(ev.best["widths"][n]) for n, c in zip(grid.names, grid.choices)) if ev.best else None
        return ev.result({"rounds": rounds_run, "candidates": len(candidates),
                          "knapsack_value": candidates[best][0] if best in candidates else None,
                          "importance_defaulted": defaulted,
                          "primary_budget": primary.name if primary is not None else None})

    def _solve_round(self, grid: _Grid, values: list[np.ndarray], primary: BudgetFunction,
                     idx: list[int]) -> list[int]:
        base = primary.value(grid.widths(idx))
        deltas = []
        for g, choices in enumerate(grid.choices):
            trial = list(idx)
            d = np.empty(len(choices))
            for j in range(len(choices)):
                trial[g] = j
                d[j] = primary.value(grid.widths(trial)) - base
            deltas.append(d)
        sol = solve_mckp(values, deltas, primary.limit - base, self.bins)
        # None: even the lightest choices overrun under the linear model; start the repair
        # from them, which is the closest the model can get.
        return sol if sol is not None else [int(np.argmin(d)) for d in deltas]


def _choice_values(problem: Problem, grid: _Grid) -> tuple[list[np.ndarray], list[str]]:
    """Per group, the summed importance of the channels each width keeps (most important first)."""
    unknown = set(problem.importance) - set(grid.names)
    if unknown:
        raise HwpruneError(f"importance given for unknown group(s): {', '.join(sorted(unknown))}")
    given: dict[str, np.ndarray] = {}
    for n, choices in zip(grid.names, grid.choices):
        if n not in problem.importance:
            continue
        a = np.asarray(problem.importance[n], dtype=float).reshape(-1)
        if a.size != choices[-1]:
            raise HwpruneError(f"importance of group '{n}' has {a.size} entries, the group has {choices[-1]} channels")
        if not np.all(np.isfinite(a)):
            raise HwpruneError(f"importance of group '{n}' has non-finite entries")
        given[n] = a
    fill = float(np.mean(np.concatenate(list(given.values())))) if given else 1.0
    defaulted = [n for n in grid.names if n not in given]
    out = []
    for n, choices in zip(grid.names, grid.choices):
        a = given.get(n, np.full(choices[-1], fill))
        csum = np.concatenate([[0.0], np.cumsum(np.sort(a)[::-1])])
        out.append(csum[np.asarray(choices)])
    return out, defaulted


def _overrun(problem: Problem, widths: Widths) -> float:
    return sum(max(0.0, b.cost(widths) - 1.0) for b in problem.budgets)


def _repair(problem: Problem, grid: _Grid, values: list[np.ndarray], idx: list[int]) -> list[int]:
    """Drop blocks (a group's least important one) until every budget is met."""
    idx = list(idx)
    while not problem.feasible(grid.widths(idx)):
        over = _overrun(problem, grid.widths(idx))
        best, best_key, cheapest, cheapest_loss = None, math.inf, None, math.inf
        for g in range(len(grid)):
            if idx[g] == 0:
                continue
            trial = list(idx)
            trial[g] -= 1
            loss = float(values[g][idx[g]] - values[g][trial[g]])
            gain = over - _overrun(problem, grid.widths(trial))
            if gain > 0 and loss / gain < best_key:
                best, best_key = g, loss / gain
            if loss < cheapest_loss:
                cheapest, cheapest_loss = g, loss
        if best is None:
            # No single block reduces the overrun (a flat or noisy budget): drop the least valuable
            # one anyway, so the loop ends at the latest at the smallest, reachable architecture.
            best = cheapest
        if best is None:
            problem.check_reachable()
            raise HwpruneError("the smallest architecture does not meet the budgets: "
                               f"{problem.values(grid.widths(idx))}")
        idx[best] -= 1
    return idx


def _fill(problem: Problem, grid: _Grid, values: list[np.ndarray], idx: list[int]) -> list[int]:
    """Add back blocks, most value per unit of added cost first, while every budget is met."""
    idx = list(idx)
    while True:
        now = grid.widths(idx)
        cost_now = sum(b.cost(now) for b in problem.budgets)
        best, best_key = None, -math.inf
        for g in range(len(grid)):
            if idx[g] == len(grid.choices[g]) - 1:
                continue
            trial = list(idx)
            trial[g] += 1
            w = grid.widths(trial)
            if not problem.feasible(w):
                continue
            gain = float(values[g][trial[g]] - values[g][idx[g]])
            added = sum(b.cost(w) for b in problem.budgets) - cost_now
            key = gain / added if added > 0 else math.inf
            if key > best_key:
                best, best_key = trial, key
        if best is None:
            return idx
        idx = best
