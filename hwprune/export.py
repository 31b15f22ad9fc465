"""ONNX export of PyTorch models as deployed: eval mode, BatchNorm folded, static shapes."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from typing import Any

import torch
import torch.nn as nn

from hwprune.errors import HwpruneError

OPSET = 17


def export_onnx(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """Serialized ONNX of ``model`` at ``example_input``'s shape.

    Uses the TorchScript exporter (``dynamo=False``): it is fast (tenths of a second for a
    ResNet) and, with constant folding in eval mode, folds BatchNorm into the preceding
    conv, which is how runtimes deploy it. Export failures name the layer or op.
    """
    model = _positional(model.eval())
    buf = io.BytesIO()
    # the output's structure as the exporter's own trace produced it: no extra forward pass
    seen: list[Any] = []
    hook = model.register_forward_hook(lambda _m, _i, out: seen.append(out) if not seen else None)
    try:
        with warnings.catch_warnings(), torch.no_grad(), _no_attention_fastpath(), _ir_dump_dropped():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), buf, dynamo=False, do_constant_folding=True,
                              opset_version=OPSET, input_names=["input"], output_names=["output"])
    except Exception as err:
        msg = " ".join(str(err).split())
        op = re.search(r"(aten::\w+|operator '[^']+'|op '[^']+')", msg)
        where = f" (at {op.group(1)})" if op else ""
        raise HwpruneError(f"ONNX export failed{where}: {msg[:300]}") from None
    finally:
        hook.remove()
    names = _output_names(seen[0]) if seen else None
    return _renamed_outputs(buf.getvalue(), names) if names else buf.getvalue()


def _output_names(out: Any) -> list[str] | None:
    """The ONNX outputs' names for a model output of several tensors: a dict's keys, ``output_0``,
    ``output_1`` ... for a tuple or list (the exporter numbers all but the first: '27'). None for
    one tensor (named ``output`` at export) or a nested structure (the exporter's names stay)."""
    if isinstance(out, dict) and len(out) > 1 and all(isinstance(v, torch.Tensor) for v in out.values()):
        return [str(k) for k in out]
    if isinstance(out, (tuple, list)) and len(out) > 1 and all(isinstance(v, torch.Tensor) for v in out):
        return [f"output_{i}" for i in range(len(out))]
    return None


def _renamed_outputs(onnx_bytes: bytes, names: list[str]) -> bytes:
    """The graph with its outputs renamed to ``names`` (and every node edge that carried them)."""
    import onnx

    model = onnx.ModelProto.FromString(onnx_bytes)
    graph = model.graph
    if len(graph.output) != len(names):
        return onnx_bytes
    rename = {o.name: n for o, n in zip(graph.output, names) if o.name != n}
    taken = ({v.name for v in graph.input} | {t.name for t in graph.initializer}
             | {v for node in graph.node for v in node.output}) - set(rename)
    if taken & set(rename.values()) or len(set(names)) != len(names):   # a key that names another edge
        return onnx_bytes
    for o in graph.output:
        o.name = rename.get(o.name, o.name)
    for node in graph.node:
        node.output[:] = [rename.get(v, v) for v in node.output]
        node.input[:] = [rename.get(v, v) for v in node.input]
    return model.SerializeToString()


@contextlib.contextmanager
def _no_attention_fastpath():
    """nn.MultiheadAttention (and nn.TransformerEncoderLayer) in eval mode run a fused kernel,
    aten::_native_multi_head_attention, that no ONNX opset has; the exporter then fails. With
    the fast path off they run the plain ops, which export and compute the same result."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "get_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


@contextlib.contextmanager
def _ir_dump_dropped():
    """The TorchScript exporter prints the whole Torch IR graph to standard output when it
    fails (its log is switched on by every export: a truthiness slip in torch's
    setup_onnx_logging). The failure is reported as one line instead; output written while
    the export succeeds is passed on."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real standard output (a notebook kernel, a closed fd)
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            if ok:
                captured.seek(0)
                text = captured.read()
                if text:
                    sys.stdout.write(text.decode(errors="replace"))
                    sys.stdout.flush()


class _OneInput(nn.Module):
    """``model(x)`` and nothing else: what the exporter sees of a model whose ``forward`` has
    keyword-only arguments (``forward(self, x, *, t=1.0)``), which the TorchScript exporter
    passes positionally and fails on ("takes 2 positional arguments but 4 were given")."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _positional(model: nn.Module) -> nn.Module:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return model
    return _OneInput(model) if any(p.kind is p.KEYWORD_ONLY for p in params) else model


def check_input_shape(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    """Run the model once; an input shape it rejects becomes a one-line error."""
    try:
        with torch.no_grad():
            return model.eval()(example_input)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # a (C, H, W) tensor given as the example: its first dimension was taken as the batch
        hint = ("; the first dimension of an example input is the batch: torch.zeros(1, C, H, W)"
                if example_input.dim() == 3 else "")
        raise HwpruneError(f"the model rejects input shape {tuple(example_input.shape)}: {first}{hint}") from None
