"""Budget functions: anything that maps per-group widths to a number, evaluated, never differentiated.

A budget is a function with a limit; the search treats each as a constraint ``value ≤ limit``.
Shipped: LUT latency (any statistic), latency measured on the device, parameters, MACs,
peak activation memory, and a user's Python callable (``--budget module:function``).

Example:
    >>> from hwprune.budgets import ParamsBudget
    >>> b = ParamsBudget(cost, limit=100_000)         # doctest: +SKIP
    >>> b.feasible({"conv1": 8})                      # doctest: +SKIP
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from hwprune.errors import HwpruneError

Widths = Mapping[str, int]


class BudgetFunction(abc.ABC):
    """A named, evaluable cost of an architecture with a limit it must not exceed."""

    name: str = "budget"
    unit: str = ""

    def __init__(self, limit: float):
        if not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0):
            raise HwpruneError(f"budget {self.name}: the limit must be a positive number, got {limit!r}")
        self.limit = float(limit)
        self._cache: dict[tuple, float] = {}

    @abc.abstractmethod
    def _value(self, widths: Widths) -> float:
        """The cost of ``widths`` (uncached)."""

    def value(self, widths: Widths) -> float:
        key = tuple(sorted((k, int(v)) for k, v in widths.items()))
        if key not in self._cache:
            self._cache[key] = float(self._value(widths))
        return self._cache[key]

    def cost(self, widths: Widths) -> float:
        """``value / limit``: at most 1 when the budget is met."""
        return self.value(widths) / self.limit

    def feasible(self, widths: Widths) -> bool:
        return self.value(widths) <= self.limit

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "unit": self.unit}


class ModelCost:
    """Parameters, MACs and peak activation memory of a sub-network, from the width graph.

    Exact and fast (no model is built): shapes come from the width-parametric ONNX graph
    (BatchNorm folded, as deployed), and PyTorch parameter counts from the same diff of the
    dense and one-channel-narrower models.
    """

    def __init__(self, width_graph, group_names: list[str], torch_param_shapes: dict[str, tuple] | None = None):
        self.wg = width_graph
        self.group_names = list(group_names)
        self.torch_param_shapes = torch_param_shapes or getattr(width_graph, "torch_param_shapes", {}) or {}

    def _vec(self, widths: Widths) -> list[int]:
        return [int(widths.get(n, d)) for n, d in zip(self.group_names, self.wg.dense_widths)]

    def params(self, widths: Widths) -> int:
        """PyTorch parameter count of the pruned model (BN weights and biases included)."""
        vec = self._vec(widths)
        if self.torch_param_shapes:
            total = 0
            for base, deps in self.torch_param_shapes.values():
                total += math.prod(self.wg._value(b, d, vec) if d else b for b, d in zip(base, deps))
            return int(total)
        return int(sum(math.prod(self.wg.shape(i.name, vec)) for i in self.wg.model.graph.initializer))

    def macs(self, widths: Widths) -> int:
        """Multiply-accumulates of the conv, gemm and matmul nodes."""
        vec = self._vec(widths)
        total = 0
        for i, node in enumerate(self.wg.model.graph.node):
            if node.op_type in ("Conv", "ConvTranspose"):
                w = self.wg.shape(node.input[1], vec)
                y = self.wg.shape(node.output[0], vec)
                total += math.prod(y) * math.prod(w[1:])  # w: [cout, cin/group, kh, kw]
            elif node.op_type in ("Gemm", "MatMul"):
                a = self.wg.shape(node.input[0], vec)
                y = self.wg.shape(node.output[0], vec)
                total += math.prod(y) * a[-1]
        return int(total)

    def peak_activation_bytes(self, widths: Widths) -> int:
        """Largest total size of live intermediate tensors at any node, in execution order."""
        vec = self._vec(widths)
        g = self.wg.model.graph
        inits = {i.name for i in g.initializer}
        last_use: dict[str, int] = {}
        for i, node in enumerate(g.node):
            for t in node.input:
                if t and t not in inits:
                    last_use[t] = i
        for o in g.output:
            last_use[o.name] = len(g.node)
        live: dict[str, int] = {}
        for inp in g.input:
            if inp.name not in inits:
                live[inp.name] = 4 * math.prod(self.wg.shape(inp.name, vec))
        peak = sum(live.values())
        for i, node in enumerate(g.node):
            for o in node.output:
                if o in self.wg.shapes:
                    live[o] = 4 * math.prod(self.wg.shape(o, vec))
            peak = max(peak, sum(live.values()))
            for t in [t for t in live if last_use.get(t, -1) <= i]:
                del live[t]
        return int(peak)


class LUTLatencyBudget(BudgetFunction):
    """Latency predicted by the LUT (calibrated), in ms, for the LUT's statistic."""

    name = "lut_latency_ms"
    unit = "ms"

    def __init__(self, predictor, limit_ms: float):
        super().__init__(limit_ms)
        self.predictor = predictor
        self.name = f"lut_latency_{predictor.statistic}_ms"

    def _value(self, widths: Widths) -> float:
        return self.predictor.predict(widths)


class MeasuredLatencyBudget(BudgetFunction):
    """Latency measured on the device (slow: builds, exports and times each architecture)."""

    name = "measured_latency_ms"
    unit = "ms"

    def __init__(self, measure_ms: Callable[[Widths], float], limit_ms: float, statistic: str = "p50"):
        super().__init__(limit_ms)
        self.measure_ms = measure_ms
        self.name = f"measured_latency_{statistic}_ms"

    def _value(self, widths: Widths) -> float:
        return self.measure_ms(widths)


class _ModelCostBudget(BudgetFunction):
    """A budget on one of ``ModelCost``'s exact figures (``metric`` names the method)."""

    metric = ""

    def __init__(self, cost: ModelCost, limit: float):
        super().__init__(limit)
        self.model_cost = cost

    def _value(self, widths: Widths) -> float:
        return getattr(self.model_cost, self.metric)(widths)


class ParamsBudget(_ModelCostBudget):
    name, unit, metric = "params", "params", "params"


class MacsBudget(_ModelCostBudget):
    name, unit, metric = "macs", "MACs", "macs"


class PeakMemoryBudget(_ModelCostBudget):
    name, unit, metric = "peak_activation_bytes", "bytes", "peak_activation_bytes"


class CallableBudget(BudgetFunction):
    """A user's function of the widths dict: a callable, ``module:function`` or ``path/file.py:function``."""

    unit = ""

    def __init__(self, spec: str | Callable[[Widths], float], limit: float):
        if callable(spec):
            self.fn = spec
            self.name = f"user:{getattr(spec, '__name__', type(spec).__name__)}"
        else:
            self.fn = load_callable(spec)
            self.name = f"user:{spec.rsplit(':', 1)[-1]}"
        super().__init__(limit)

    def _value(self, widths: Widths) -> float:
        from hwprune.errors import user_code

        with user_code("budget function", self.fn):
            v = self.fn(dict(widths))
        if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(float(v)):
            raise HwpruneError(f"budget {self.name} returned {v!r}, not a finite number")
        return float(v)


def _module_from_file(path: Path):
    if not path.is_file():
        raise HwpruneError(f"budget file not found: {path}")
    s = importlib.util.spec_from_file_location(f"hwprune_user_budget_{path.stem}", path)
    module = importlib.util.module_from_spec(s)
    from hwprune.models.registry import put_folder_on_path

    put_folder_on_path(str(path))
    s.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def load_callable(spec: str) -> Callable[..., Any]:
    """``pkg.module:function`` (importable, or a ``pkg/module.py`` under the working folder, as
    ``python -m`` would find it) or ``path/to/file.py:function``."""
    if ":" not in spec:
        raise HwpruneError(f"--budget must be module:function or file.py:function, got '{spec}'")
    mod_name, fn_name = spec.rsplit(":", 1)
    # the console script does not put the working folder on sys.path, where `python -m` would
    local = Path(mod_name.replace(".", os.sep) + ".py")
    try:
        if mod_name.endswith(".py"):
            module = _module_from_file(Path(mod_name))
        else:
            try:
                module = importlib.import_module(mod_name)
            except ModuleNotFoundError:
                if not local.is_file():
                    raise
                module = _module_from_file(local)
    except HwpruneError:
        raise
    except Exception as err:
        raise HwpruneError(f"cannot import budget module '{mod_name}': "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise HwpruneError(f"'{mod_name}' has no callable '{fn_name}'")
    return fn
