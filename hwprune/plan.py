"""The plan: ``plan.json``, a search's portable result (kept channel indices per group), and replaying it.

Replaying a plan on the dense model reproduces the pruned architecture without unpickling
anything: Torch-Pruning cuts exactly the listed channels.

Example:
    >>> plan = Plan.load("runs/r20/plan.json")                      # doctest: +SKIP
    >>> pruned = plan.apply(dense_model, torch.zeros(1, 1, 28, 28))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.models.spec import ModelSpec

PLAN_FORMAT = 1


@dataclass
class Plan(Mapping):
    """Per dependency group, its dense width and the sorted indices of the channels kept.

    A read-only mapping group -> kept channel indices (``plan["layer1.0.conv1"]``,
    ``dict(plan)``), with the dense widths, the model's name and shape beside it."""

    model: str
    input_shape: list[int]
    num_classes: int | None
    criterion: str
    dense: dict[str, int]
    kept: dict[str, list[int]]
    extra: dict[str, Any] = field(default_factory=dict)
    # made of kept indices alone (Plan.of_kept): the dense widths are the model's, when applied
    dense_from_model: bool = field(default=False, compare=False)

    @property
    def widths(self) -> dict[str, int]:
        return {name: len(k) for name, k in self.kept.items()}

    def __getitem__(self, group: str) -> list[int]:
        return self.kept[group]

    def __iter__(self) -> Iterator[str]:
        return iter(self.kept)

    def __len__(self) -> int:
        return len(self.kept)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "model": self.model, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "criterion": self.criterion, **self.extra,
                "groups": {n: {"dense": self.dense[n], "kept": list(self.kept[n])} for n in self.dense}}

    def save(self, path: str | Path) -> None:
        from profilers.fileio import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "plan") -> Plan:
        """A plan from its JSON form, checked: every group's ``kept`` a list of distinct indices in range."""
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT or not isinstance(d.get("groups"), dict):
            raise HwpruneError(f"{where}: not an hwprune plan (format {PLAN_FORMAT} with 'groups')")
        dense, kept = {}, {}
        for name, g in d["groups"].items():
            ok = isinstance(g, dict) and isinstance(g.get("dense"), int) and isinstance(g.get("kept"), list)
            if ok:
                idx = g["kept"]
                ok = (all(isinstance(i, int) and 0 <= i < g["dense"] for i in idx) and len(set(idx)) == len(idx)
                      and len(idx) >= 1)
            if not ok:
                raise HwpruneError(f"{where}: group '{name}' needs 'dense' (an integer) and 'kept' (distinct "
                                   f"channel indices below it, at least one)")
            dense[name], kept[name] = g["dense"], sorted(g["kept"])
        known = {"format", "model", "input_shape", "num_classes", "criterion", "groups"}
        return cls(str(d.get("model")), list(d.get("input_shape") or []), d.get("num_classes"),
                   str(d.get("criterion", "l1")), dense, kept, {k: v for k, v in d.items() if k not in known})

    @classmethod
    def given(cls, plan: Any) -> tuple[Plan, str]:
        """A plan object, the one loaded from a plan.json path, or one made of a plain mapping
        group -> kept channel indices (``dict(result.plan)``; its groups' dense widths come from the
        model it is applied to, and groups it leaves out stay dense), and how errors should name it."""
        if isinstance(plan, Plan):
            return plan, "the plan"
        if isinstance(plan, (str, os.PathLike)):
            return cls.load(plan), str(plan)
        if isinstance(plan, Mapping) and "format" in plan and "groups" in plan:
            return cls.from_dict(dict(plan), "the plan"), "the plan"   # a plan.json read with json.load
        if isinstance(plan, Mapping):
            return cls.of_kept(plan), "the plan"
        raise HwpruneError(f"a plan is a run's result.plan, a mapping group -> kept channel indices or a plan.json "
                           f"path, not {type(plan).__name__}")

    @classmethod
    def of_kept(cls, kept: Mapping[Any, Any]) -> Plan:
        """A plan of kept channel indices alone: no dense widths (the model's, when applied)."""
        if not kept:
            raise HwpruneError("the plan names no group: give group -> kept channel indices")
        out = {}
        for name, idx in kept.items():
            ok = isinstance(name, str) and isinstance(idx, (list, tuple)) and len(idx) >= 1 \
                and all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in idx) \
                and len(set(idx)) == len(idx)
            if not ok:
                raise HwpruneError(f"the plan's group {name!r} needs a list of distinct channel indices (>= 0, at "
                                   f"least one), got {idx!r}")
            out[name] = sorted(int(i) for i in idx)
        return cls("a mapping of kept channels", [], None, "given", {}, out, dense_from_model=True)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise HwpruneError(f"plan not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HwpruneError(f"{path}: not a valid plan.json ({err})") from None
        except OSError as err:
            raise HwpruneError(f"cannot read plan {path}: {err.strerror or err}") from None
        return cls.from_dict(d, str(path))

    def apply(self, model: nn.Module, example_input: torch.Tensor, where: str = "the plan",
              this: str = "this model") -> nn.Module:
        """A pruned copy of the dense ``model`` with exactly the plan's channels (eval mode).

        The plan fits when the model has the plan's groups at the plan's dense widths, whatever
        the model is called: a plan made through the Python API (keyed by class name) applies to
        the same architecture given to the CLI as ``file.py:factory``."""
        from hwprune.groups import find_groups, prune_to_widths

        groups = {g.name: g.channels for g in find_groups(model, example_input)}
        if self.dense_from_model:  # kept indices alone: they name some of the model's groups, the others stay dense
            return self._with_dense(groups, where, this).apply(model, example_input, where, this)
        if groups != self.dense:
            diff = sorted(set(groups) ^ set(self.dense)) or sorted(n for n in groups if groups[n] != self.dense[n])
            first = diff[0]
            detail = (f"group '{first}' has {groups[first]} channels, the plan's {self.dense[first]}"
                      if first in groups and first in self.dense else
                      f"group '{first}' is {'not in the plan' if first in groups else 'not in the model'}")
            raise HwpruneError(f"{where} was made for model '{self.model}' with other groups ({detail}); "
                               f"it does not fit {this}")
        pruned = prune_to_widths(model, example_input, self.widths, keep=self.kept)
        return pruned.eval()


    def _with_dense(self, groups: Mapping[str, int], where: str, this: str) -> Plan:
        """This plan of kept indices alone completed with ``groups``' dense widths, checked against them."""
        for name, idx in self.kept.items():
            if name not in groups:
                raise HwpruneError(f"{where}: '{name}' is not a prunable group of {this} (its groups: "
                                   f"{', '.join(list(groups)[:4])}{' ...' if len(groups) > 4 else ''})")
            if idx[-1] >= groups[name]:
                raise HwpruneError(f"{where}: group '{name}' keeps channel {idx[-1]}, but it has {groups[name]}")
        kept = {n: self.kept.get(n, list(range(c))) for n, c in groups.items()}
        return Plan(self.model, self.input_shape, self.num_classes, self.criterion, dict(groups), kept, self.extra)


def load_plan(path: str) -> dict[str, Any]:
    """``plan.json`` as checked JSON (see :meth:`Plan.from_dict`)."""
    return Plan.load(path).to_dict()


def apply_plan(spec: ModelSpec, plan_path: str | Plan, weights: str | None = None, batch: int = 1) -> nn.Module:
    """Rebuild the pruned architecture from ``plan.json`` on the dense model (no unpickling).

    ``weights``, when given, is a state_dict of the *pruned* model (``pruned.pt``). The plan's
    recorded input shape and class count must be the spec's, when the plan records them.
    """
    from hwprune.models import load_weights

    plan, plan_path = Plan.given(plan_path)
    dense = spec.build()   # first: a model file or factory that is not there says so, not "other model"
    if plan.input_shape and list(plan.input_shape[1:]) != list(spec.input_shape):
        raise HwpruneError(f"{plan_path} was made for input shape {tuple(plan.input_shape[1:])}, "
                           f"not {tuple(spec.input_shape)}: pass --input-shape "
                           + ",".join(str(d) for d in plan.input_shape[1:]))
    if plan.num_classes is not None and plan.num_classes != spec.num_classes:
        raise HwpruneError(f"{plan_path} was made for {plan.num_classes} classes, not {spec.num_classes}: "
                           f"pass --num-classes {plan.num_classes}")
    pruned = plan.apply(dense, spec.example_input(batch), plan_path, this=spec.name)
    if weights:
        load_weights(pruned, weights)
    return pruned.eval()
