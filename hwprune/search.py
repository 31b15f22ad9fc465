"""The search problem of a prune run: the LUT's predictor, the budget functions, the space, one search round.

:class:`SearchSetup` is built once per run from the dense model; each certification round
asks it for a search under that round's LUT limit (:meth:`SearchSetup.search`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwprune.agents import Problem, SearchSpace, create_agent
from hwprune.agents.base import Agent, SearchResult
from hwprune.budgets import (BudgetFunction, CallableBudget, LUTLatencyBudget, MacsBudget, ModelCost, ParamsBudget,
                             PeakMemoryBudget)
from hwprune.errors import HwpruneError
from hwprune.groups import PrunableGroup, channel_importance, group_layer_info
from hwprune.lut import LatencyLUT, Predictor, model_key
from hwprune.objective import PrunedScore
from profilers.config import DeviceConfig

# attribute of PruneOptions -> (budget class, flag)
COUNT_BUDGETS = {"max_params": (ParamsBudget, "--max-params"), "max_macs": (MacsBudget, "--max-macs"),
                 "max_memory_bytes": (PeakMemoryBudget, "--max-memory")}


def parse_count_limit(value: float | str, flag: str) -> float | str:
    """``40000`` -> 40000.0 (a count) or ``"15%"`` -> ``"15%"`` (of the dense model), checked;
    the CLI calls it while parsing, :func:`hwprune.prune` again for library callers."""
    text = str(value).strip()
    try:
        number = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        raise HwpruneError(f"{flag} expects a number or a percentage of the dense model such as 15%, "
                           f"got '{value}'") from None
    if not math.isfinite(number):
        raise HwpruneError(f"{flag} must be a finite number, got '{value}'")
    if text.endswith("%"):
        if not 0 < number <= 100:
            raise HwpruneError(f"{flag} as a percentage of the dense model must lie in (0%, 100%], got '{value}'")
        return text
    if not number > 0:
        raise HwpruneError(f"{flag} must be positive, got '{value}'")
    return number


def resolve_count_limit(limit: float | str, dense_value: float) -> float:
    """A checked limit (see :func:`parse_count_limit`) as a count of the dense model's metric."""
    return float(limit[:-1]) / 100.0 * dense_value if isinstance(limit, str) else float(limit)


def user_budget(spec: Any, limit: float) -> BudgetFunction:
    """A user's budget: a ``BudgetFunction``, or ``(module:function or callable, limit)``."""
    if isinstance(spec, BudgetFunction):
        return spec
    return CallableBudget(spec, limit)


def load_predictor(lut: LatencyLUT | str | None, cfg: DeviceConfig, name: str, model: nn.Module, x: torch.Tensor,
                   groups: Sequence[PrunableGroup], allow_other_device: bool) -> tuple[LatencyLUT | None,
                                                                                      Predictor | None]:
    """The LUT (loaded when a path) and its predictor for this model, checked against the device, the
    model's structure and its groups."""
    if lut is None:
        return None, None
    where = str(lut) if not isinstance(lut, LatencyLUT) else (getattr(lut, "path", None) or "the LUT")
    table = lut if isinstance(lut, LatencyLUT) else LatencyLUT.load(lut)
    if cfg.remote is None:
        from profilers.environment import collect_manifest, fingerprint

        table.check_device(fingerprint(collect_manifest(cfg)), allow_other_device, where)
    key = table.key_for(model_key(name, tuple(x.shape)), model)
    table.check_structure(key, model, where)
    predictor = table.predictor(key, cfg.statistic, where)
    if predictor.group_names != [g.name for g in groups]:
        raise HwpruneError(f"{where}: the LUT's groups for {key} do not match this model's; re-profile it")
    return table, predictor


@dataclass
class SearchSetup:
    """Everything a round's search needs except its LUT limit."""

    agent_name: str
    agent_options: dict[str, Any]
    space: SearchSpace
    objective: PrunedScore
    predictor: Predictor | None
    other_budgets: list[BudgetFunction]
    count_limits: dict[str, float]
    importance: dict[str, torch.Tensor]
    layer_info: dict[str, dict[str, int]]
    agent: Agent | None = None
    seconds: float = 0.0
    evaluations: int = 0
    budgets: list[BudgetFunction] = field(default_factory=list)  # the last round's

    @classmethod
    def build(cls, dense: nn.Module, x: torch.Tensor, groups: Sequence[PrunableGroup], space: SearchSpace,
              objective: PrunedScore, predictor: Predictor | None, count_limits: dict[str, float | str],
              user_budgets: list[BudgetFunction], agent: Agent, agent_options: dict[str, Any],
              criterion: str) -> SearchSetup:
        from hwprune.candidates import build_width_graph

        names = [g.name for g in groups]
        budgets, resolved = [], {}
        if count_limits:
            cost = ModelCost(build_width_graph(dense, x, groups), names)
            for attr, limit in count_limits.items():
                budget_cls = COUNT_BUDGETS[attr][0]
                resolved[attr] = resolve_count_limit(limit, getattr(cost, budget_cls.metric)({}))
                budgets.append(budget_cls(cost, resolved[attr]))
        importance = channel_importance(dense, x, criterion if criterion != "taylor" else "l1", only=set(names))
        return cls(agent.name, dict(agent_options), space, objective, predictor, budgets + list(user_budgets),
                   resolved, importance, group_layer_info(dense, x, groups), agent=agent)

    def predict(self, widths: dict[str, int]) -> float | None:
        return self.predictor.predict(widths) if self.predictor is not None else None

    @property
    def floor_ms(self) -> float | None:
        """The LUT's prediction for the smallest architecture: no LUT limit goes below it."""
        return self.predict(self.space.smallest_widths())

    def search(self, rnd: int, lut_limit_ms: float | None, *, seed: int, max_evaluations: int,
               show_progress: bool, log: Callable[[str], None]) -> SearchResult:
        """Round ``rnd``'s search (0-based) under the LUT limit and the other budgets."""
        self.budgets = ([LUTLatencyBudget(self.predictor, lut_limit_ms)] if lut_limit_ms is not None else []) \
            + self.other_budgets
        problem = Problem(self.space, self.objective, self.budgets, self.importance, self.layer_info)
        if rnd and any(self.agent_options.get(k) for k in ("checkpoint", "log_csv")):
            # Each round is its own search: its checkpoint and log get their own files.
            self.agent = create_agent(self.agent_name, **{
                k: (f"{v}.round{rnd + 1}" if k in ("checkpoint", "log_csv") and v else v)
                for k, v in self.agent_options.items()})
        log(f"search round {rnd + 1}: agent {self.agent_name}, budgets "
            + ", ".join(f"{b.name} <= {b.limit:.6g}" for b in self.budgets))
        from tqdm import tqdm

        bar = tqdm(total=max_evaluations, desc=f"search ({self.agent_name})", unit="eval",
                   disable=not show_progress, dynamic_ncols=True)
        try:
            result = self.agent.search(problem, seed=seed + rnd, max_evaluations=max_evaluations,
                                       progress=lambda info: bar.update(1))
        finally:
            bar.close()
        extra, ckpt = result.extra or {}, getattr(self.agent, "checkpoint", None)
        if extra.get("resumed"):   # else a rerun that evaluates nothing reads as a broken search
            log(f"search round {rnd + 1}: resumed from the checkpoint {ckpt}")
        elif extra.get("checkpoint_note"):
            log(f"warning: {ckpt}: {extra['checkpoint_note']}")
        self.seconds += result.seconds
        self.evaluations += result.evaluations
        return result

    def values(self, widths: dict[str, int]) -> dict[str, float]:
        return {b.name: b.value(widths) for b in self.budgets}
