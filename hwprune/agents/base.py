"""The agent interface: a search over per-group channel widths under budget functions.

Every agent (``uniform``, ``random``, ``greedy``, ``knapsack``, and later ``rl``, ``bo``)
receives a ``Problem`` — the search space, an objective to maximise (the cached accuracy
proxy) and the budget functions that must all be met — and returns the best *feasible*
architecture it evaluated, with its history.

Example:
    >>> from hwprune.agents import create_agent
    >>> agent = create_agent("uniform")                         # doctest: +SKIP
    >>> result = agent.search(problem, seed=0, max_evaluations=50)  # doctest: +SKIP
    >>> result.widths                                          # doctest: +SKIP
"""

from __future__ import annotations

import abc
import bisect
import difflib
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from hwprune.budgets import BudgetFunction
from hwprune.errors import HwpruneError

Widths = dict[str, int]


@dataclass
class SearchSpace:
    """Per-group allowed widths: multiples of ``channel_multiple`` from one multiple to dense, or,
    with ``allowed``, exactly those widths per group (the steps a device measured; see
    :mod:`hwprune.widthsteps`). ``steps`` gives a group's channel quantum (a group reaching a
    grouped convolution is cut in multiples of its groups, ``PrunableGroup.step``): its widths
    are multiples of the lcm of the two."""

    group_names: list[str]
    dense: list[int]
    channel_multiple: int = 1
    allowed: list[list[int]] | None = None
    steps: list[int] | None = None

    def __post_init__(self) -> None:
        if self.steps is not None:
            self.steps = [max(1, int(k)) for k in self.steps]
            if len(self.steps) != len(self.dense):
                raise HwpruneError(f"channel steps given for {len(self.steps)} groups, the space has {len(self.dense)}")
            if all(k == 1 for k in self.steps):
                self.steps = None
        if self.allowed is not None:
            if len(self.allowed) != len(self.dense):
                raise HwpruneError(f"allowed widths given for {len(self.allowed)} groups, the space has {len(self.dense)}")
            self.allowed = [sorted({int(w) for w in a} | {int(d)}) for a, d in zip(self.allowed, self.dense)]
            for name, a, d in zip(self.group_names, self.allowed, self.dense):
                if a[0] < 1 or a[-1] != d:
                    raise HwpruneError(f"group '{name}': allowed widths must lie in [1, {d}], got {a}")
            for g, (name, a) in enumerate(zip(self.group_names, self.allowed)):
                if any(w % self.step(g) for w in a):
                    raise HwpruneError(f"group '{name}' is cut in multiples of {self.step(g)} channels; "
                                       f"allowed widths {a} are not all multiples")

    def step(self, g: int) -> int:
        """Group ``g``'s channel quantum (1 unless it reaches a grouped convolution)."""
        return 1 if self.steps is None else self.steps[g]

    def multiple_of(self, g: int) -> int:
        """The multiple group ``g``'s widths are rounded to without ``allowed``."""
        return math.lcm(int(self.channel_multiple), self.step(g))

    def choices(self, g: int) -> list[int]:
        """Allowed widths of group ``g``, ascending (dense always allowed)."""
        if self.allowed is not None:
            return list(self.allowed[g])
        m, d = self.multiple_of(g), self.dense[g]
        if d <= m:
            return [d]
        return sorted(set(range(m, d + 1, m)) | {d})

    def snap(self, g: int, channels: float) -> int:
        """The allowed width of group ``g`` nearest ``channels`` (a tie goes to the wider one)."""
        if self.allowed is not None:
            a = self.allowed[g]
            i = bisect.bisect_left(a, channels)
            if i == 0:
                return a[0]
            if i == len(a):
                return a[-1]
            return a[i] if a[i] - channels <= channels - a[i - 1] else a[i - 1]
        from hwprune.groups import snap_channels

        return snap_channels(channels, self.dense[g], self.multiple_of(g))

    def next_wider(self, g: int, width: int) -> int | None:
        """The allowed width of group ``g`` just above ``width`` (None at dense)."""
        c = self.choices(g)
        i = bisect.bisect_right(c, width)
        return c[i] if i < len(c) else None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the space in a checkpoint: groups, dense widths and the allowed widths."""
        out: dict[str, Any] = {"groups": list(self.group_names), "dense": [int(d) for d in self.dense],
                               "channel_multiple": int(self.channel_multiple)}
        if self.allowed is not None:
            out["allowed"] = [list(a) for a in self.allowed]
        if self.steps is not None:
            out["steps"] = list(self.steps)
        return out

    def from_ratios(self, ratios: Sequence[float] | float) -> Widths:
        """Widths for keep ratios (one per group, or one for all), snapped."""
        if isinstance(ratios, (int, float)):
            ratios = [float(ratios)] * len(self.dense)
        return {n: self.snap(g, r * self.dense[g]) for g, (n, r) in enumerate(zip(self.group_names, ratios))}

    def dense_widths(self) -> Widths:
        return dict(zip(self.group_names, self.dense))

    def smallest_widths(self) -> Widths:
        return {n: self.choices(g)[0] for g, n in enumerate(self.group_names)}

    def key(self, widths: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(int(widths[n]) for n in self.group_names)


@dataclass
class Problem:
    """What an agent searches: space, objective (higher is better) and budgets (all ≤ limit).

    ``importance`` maps a group name to its per-channel importance (used by ``knapsack``);
    ``layer_info`` maps a group name to its root layer's geometry in the dense model
    (``cin``, ``cout``, ``kernel``, ``stride``, ``padding``, ``groups``, ``in_h``, ``in_w``;
    see :func:`hwprune.groups.group_layer_info`), for agents whose state describes layers;
    ``objective`` must cache, since agents may ask for the same widths twice.
    """

    space: SearchSpace
    objective: Callable[[Widths], float]
    budgets: list[BudgetFunction]
    importance: dict[str, Any] = field(default_factory=dict)
    layer_info: dict[str, dict[str, int]] = field(default_factory=dict)

    def values(self, widths: Widths) -> dict[str, float]:
        return {b.name: b.value(widths) for b in self.budgets}

    def feasible(self, widths: Widths) -> bool:
        return all(b.feasible(widths) for b in self.budgets)

    def max_cost(self, widths: Widths) -> float:
        """The largest value/limit ratio over budgets (≤ 1 means feasible)."""
        return max((b.cost(widths) for b in self.budgets), default=0.0)

    def check_reachable(self) -> None:
        """Refuse a budget that even the smallest architecture cannot meet, saying the minimum."""
        smallest = self.space.smallest_widths()
        for b in self.budgets:
            v = b.value(smallest)
            if v > b.limit:
                unit = f" {b.unit}" if b.unit else ""   # a user's budget function has none
                raise HwpruneError(f"budget {b.name} <= {b.limit:g}{unit} is unreachable: the smallest "
                                   f"architecture (every group at its narrowest allowed width) needs {v:g}{unit}")


@dataclass
class SearchResult:
    """The best feasible architecture found and how the search went."""

    agent: str
    widths: Widths
    score: float
    values: dict[str, float]
    feasible: bool
    evaluations: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "widths": self.widths, "score": self.score, "values": self.values,
                "feasible": self.feasible, "evaluations": self.evaluations, "seconds": self.seconds,
                "extra": self.extra}


class Agent(abc.ABC):
    """A search strategy. Subclasses implement ``_search``; ``search`` adds timing and checks."""

    name: str = "agent"

    @abc.abstractmethod
    def _search(self, problem: Problem, *, seed: int, max_evaluations: int,
                progress: Callable[[dict[str, Any]], None] | None) -> SearchResult:
        """Run the search; must return the best feasible architecture evaluated."""

    def search(self, problem: Problem, *, seed: int = 0, max_evaluations: int = 200,
               progress: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
        if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 1:
            raise HwpruneError(f"max_evaluations must be a positive integer, got {max_evaluations!r}")
        problem.check_reachable()
        start = time.perf_counter()
        result = self._search(problem, seed=seed, max_evaluations=max_evaluations, progress=progress)
        result.seconds = time.perf_counter() - start
        if not problem.feasible(result.widths):
            raise HwpruneError(f"agent {self.name} returned an infeasible architecture: {problem.values(result.widths)}")
        return result


_AGENTS: dict[str, Callable[..., Agent]] = {}


def check_option(agent: str, option: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False) -> Any:
    """An agent option's number, checked (a finite int or float, never a bool, within the bounds);
    else one sentence naming the agent and the option, as ``--agent-option`` spells it."""
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = [f"{'>' if low_open else '>='} {low:g}" if low is not None else "",
                  f"<= {high:g}" if high is not None else ""]
        bounds_text = " and ".join(b for b in bounds if b)
        raise HwpruneError(f"agent {agent}: {option} must be {'an integer' if integer else 'a number'}"
                           f"{' ' + bounds_text if bounds_text else ''}, got {value!r}")
    return int(value) if integer else float(value)


def register_agent(name: str):
    """Class decorator: make an agent available as ``--agent NAME``."""
    def deco(cls):
        cls.name = name
        _AGENTS[name] = cls
        return cls
    return deco


def list_agents() -> list[str]:
    _import_builtin()
    return sorted(_AGENTS)


def create_agent(name: str, **options: Any) -> Agent:
    _import_builtin()
    if name not in _AGENTS:
        raise HwpruneError(f"unknown agent '{name}' (known: {', '.join(sorted(_AGENTS))})")
    cls = _AGENTS[name]
    # Check the names first so a misspelt option is the user's one-line error, while a
    # TypeError raised inside the constructor still surfaces as the bug it is.
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        known = [k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise HwpruneError(f"agent '{name}' has no option {', '.join(repr(k) for k in unknown)}"
                               f" (its options: {', '.join(known) or 'none'}){hint}")
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as err:
        raise HwpruneError(f"agent '{name}': {err}") from None
    return cls(**options)


def _import_builtin() -> None:
    import importlib

    for mod in ("baselines", "rl", "bo"):
        try:
            importlib.import_module(f"hwprune.agents.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"hwprune.agents.{mod}":
                raise
