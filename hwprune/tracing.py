"""Torch-Pruning's dependency graph of a model, with the layers its tracer cannot map made opaque.

Torch-Pruning infers how channel indices travel through every op. Some ops defeat it — a
channel shuffle's ``view(b, g, c // g, h, w)`` divides by an inferred channel count of 0 —
and the whole graph then fails to build. Here such a failure is traced back to the
innermost module whose forward created the offending op; that module becomes an opaque
layer (a Torch-Pruning customized layer whose channels are never cut) and the graph is
built again, until it builds. Groups that touch an opaque layer stay at full width
(``hwprune.groups``), and the rest of the model prunes. Which modules were made opaque is
cached per model structure, so the many graph builds of one run search once.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from hwprune.errors import HwpruneError

# More opaque layers than this means the tracer fails everywhere: report it instead.
MAX_OPAQUE_LAYERS = 64
_OPAQUE_BY_STRUCTURE: dict[tuple, dict[str, str]] = {}


def _tp():
    import torch_pruning as tp  # imported lazily: it is slow to import and only needed here
    return tp


def build_graph(model: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's ``DependencyGraph`` of ``model``; ``dg.hwprune_opaque`` maps each opaque
    module to its name and why it is opaque (empty when the tracer handles the whole model),
    ``dg.hwprune_structure`` is the model's structure key."""
    key = _structure_key(model, example_input)
    modules = dict(model.named_modules())
    opaque = _OPAQUE_BY_STRUCTURE.get(key)
    if opaque is None:
        dg, opaque = _search_opaque(model, example_input)
        _OPAQUE_BY_STRUCTURE[key] = opaque
    else:
        dg = _build(model, example_input, {modules[n]: r for n, r in opaque.items()})
    dg.hwprune_opaque = {modules[n]: (n, r) for n, r in opaque.items()}
    dg.hwprune_structure = key  # what per-structure facts about its groups are cached under
    return dg


def _structure_key(model: nn.Module, example_input: torch.Tensor) -> tuple:
    return (tuple(example_input.shape),
            tuple((n, type(m).__qualname__, tuple(p.shape for p in m.parameters(recurse=False)))
                  for n, m in model.named_modules()))


def _search_opaque(model: nn.Module, example_input: torch.Tensor):
    """The graph, and the names of the modules made opaque (with why), one tracer failure at a time."""
    opaque: dict[str, str] = {}
    modules = dict(model.named_modules())
    first_error: Exception | None = None
    while True:
        recorder = _OpRecorder(model)
        try:
            return _build(model, example_input, {modules[n]: r for n, r in opaque.items()}, recorder.forward), opaque
        except Exception as err:  # tracing errors come in many types
            first_error = first_error or err
            name = recorder.module_of(_failing_node(err))
            if name is None or name == "" or name in opaque or len(opaque) >= MAX_OPAQUE_LAYERS:
                raise first_error from None
            opaque[name] = _first_line(err)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _failing_node(err: Exception):
    """The Torch-Pruning graph node being processed where ``err`` was raised (innermost frame)."""
    node_type = _tp().dependency.node.Node
    tb, frames = err.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, node_type):
                return value
    return None


class _OpRecorder(TorchFunctionMode):
    """During one forward: which module's forward (innermost) created each autograd node."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.stack: list[str] = []
        self.creator: dict[Any, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.stack:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                fn = getattr(t, "grad_fn", None) if isinstance(t, torch.Tensor) else None
                if fn is not None and fn not in self.creator:
                    self.creator[fn] = self.stack[-1]
        return out

    def forward(self, model: nn.Module, example_input: torch.Tensor):
        def enter(name: str):
            def hook(mod, inp) -> None:  # returns None: a pre-hook's return value replaces the input
                self.stack.append(name)
            return hook

        def leave(mod, inp, out) -> None:  # returns None: a forward hook's return value replaces the output
            self.stack.pop()

        hooks = []
        for name, m in model.named_modules():
            hooks.append(m.register_forward_pre_hook(enter(name)))
            hooks.append(m.register_forward_hook(leave))
        try:
            with self:
                return model(example_input)
        finally:
            for h in hooks:
                h.remove()

    def module_of(self, node) -> str | None:
        return None if node is None else self.creator.get(node.grad_fn)


def _build(model: nn.Module, example_input: torch.Tensor, opaque: dict[nn.Module, str], forward_fn=None):
    """One Torch-Pruning graph build with ``opaque`` modules as customized layers."""
    tp = _tp()
    with _opaque_layers(model, example_input, opaque) as pruners:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, forward_fn=forward_fn,
                                                    customized_pruners=pruners)


@contextlib.contextmanager
def _opaque_layers(model: nn.Module, example_input: torch.Tensor, opaque: dict[nn.Module, str]):
    """Customized pruners for ``opaque``, each module given a class of its own meanwhile.

    Torch-Pruning accepts a customized pruner per layer *type* when tracing (an instance key
    breaks its hook registration), so each opaque instance gets a subclass of its own class
    for the build; the original class comes back afterwards (the graph keeps its pruners).
    """
    if not opaque:
        yield None
        return
    channels = _channels(model, example_input, opaque)
    originals = {m: m.__class__ for m in opaque}
    pruners = {}
    try:
        for m, cls in originals.items():
            m.__class__ = type(f"Opaque{cls.__name__}", (cls,), {})
            pruners[m.__class__] = _opaque_pruner(*channels.get(m, (None, None)))
        yield pruners
    finally:
        for m, cls in originals.items():
            m.__class__ = cls


def _channels(model: nn.Module, example_input: torch.Tensor, modules) -> dict[nn.Module, tuple[int | None, int | None]]:
    """(input, output) channel counts of ``modules``, from one forward pass."""
    seen: dict[nn.Module, tuple[int | None, int | None]] = {}

    def dim1(t) -> int | None:
        t = t[0] if isinstance(t, (tuple, list)) and t else t
        return int(t.shape[1]) if isinstance(t, torch.Tensor) and t.dim() > 1 else None

    def record(mod, inp, out) -> None:  # returns None: a forward hook's return value replaces the output
        seen.setdefault(mod, (dim1(inp), dim1(out)))

    from hwprune.groups import _forward_then_remove

    _forward_then_remove(model, example_input, [m.register_forward_hook(record) for m in modules])
    return seen


def _opaque_pruner(in_channels: int | None, out_channels: int | None):
    """A Torch-Pruning layer pruner that reports the layer's channels and refuses to cut them."""
    tp = _tp()

    class OpaquePruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            raise HwpruneError(f"{type(layer).__name__} is opaque to Torch-Pruning; its channels cannot be cut")

        def prune_in_channels(self, layer, idxs):
            raise HwpruneError(f"{type(layer).__name__} is opaque to Torch-Pruning; its channels cannot be cut")

        def get_out_channels(self, layer):
            return out_channels

        def get_in_channels(self, layer):
            return in_channels

    return OpaquePruner()
