"""Objective-evaluation bookkeeping shared by agents: counting, history, progress, best feasible.

An agent asks ``Evaluator.score(widths)`` instead of calling the objective directly, so every
evaluation is counted against ``max_evaluations``, recorded in the history with its budget
values, reported to the progress callback, and the best feasible architecture is tracked in
one place. Asking for widths already evaluated returns the recorded score and costs nothing.

Example:
    >>> ev = Evaluator(problem, "uniform", max_evaluations=10)   # doctest: +SKIP
    >>> ev.score({"conv1": 8, "layer1": 16})                   # doctest: +SKIP
    >>> result = ev.result(extra={"keep_ratio": 0.5})           # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from hwprune.agents.base import Problem, SearchResult
from hwprune.errors import HwpruneError


class Evaluator:
    """Counts, records and reports objective evaluations for one search."""

    def __init__(self, problem: Problem, agent: str, max_evaluations: int,
                 progress: Callable[[dict[str, Any]], None] | None = None):
        self.problem = problem
        self.agent = agent
        self.max_evaluations = int(max_evaluations)
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._by_key: dict[tuple[int, ...], dict[str, Any]] = {}

    @property
    def count(self) -> int:
        return len(self.history)

    @property
    def remaining(self) -> int:
        return self.max_evaluations - self.count

    def seen(self, widths: Mapping[str, int]) -> bool:
        return self.problem.space.key(widths) in self._by_key

    def score(self, widths: Mapping[str, int], **info: Any) -> float:
        """The objective of ``widths``; a new architecture uses one evaluation.

        ``info`` (e.g. ``phase="round 2"``) is stored with the history entry.
        """
        key = self.problem.space.key(widths)
        if key in self._by_key:
            return self._by_key[key]["score"]
        if self.remaining <= 0:
            # An agent must plan within its budget; reaching here is a bug in the agent.
            raise RuntimeError(f"agent {self.agent} asked for evaluation {self.count + 1} "
                               f"of max_evaluations={self.max_evaluations}")
        w = {n: int(widths[n]) for n in self.problem.space.group_names}
        score = float(self.problem.objective(dict(w)))
        if not math.isfinite(score):
            raise HwpruneError(f"the objective returned {score} for widths {w}; it must be a finite number")
        entry = {"evaluation": self.count + 1, "widths": w, "score": score,
                 "values": self.problem.values(w), "feasible": self.problem.feasible(w), **info}
        self.history.append(entry)
        self._by_key[key] = entry
        # Ties keep the earlier architecture, so the result does not depend on dict order.
        if entry["feasible"] and (self.best is None or score > self.best["score"]):
            self.best = entry
        if self.progress is not None:
            self.progress({**entry, "agent": self.agent, "max_evaluations": self.max_evaluations,
                           "best_score": None if self.best is None else self.best["score"]})
        return score

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Replace the record with a checkpoint's evaluations (same order, so the same best)."""
        self.history.clear()
        self._by_key.clear()
        self.best = None
        for entry in history:
            self.history.append(entry)
            self._by_key[self.problem.space.key(entry["widths"])] = entry
            if entry["feasible"] and (self.best is None or entry["score"] > self.best["score"]):
                self.best = entry

    def result(self, extra: dict[str, Any] | None = None) -> SearchResult:
        """The best feasible architecture evaluated, as a ``SearchResult`` (seconds set by ``Agent.search``)."""
        if self.best is None:
            raise RuntimeError(f"agent {self.agent} evaluated no feasible architecture")
        return SearchResult(agent=self.agent, widths=dict(self.best["widths"]), score=self.best["score"],
                            values=dict(self.best["values"]), feasible=True, evaluations=self.count,
                            seconds=0.0, history=self.history, extra=dict(extra or {}))

