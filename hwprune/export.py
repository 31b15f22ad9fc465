"""ONNX export of PyTorch models as deployed: eval mode, BatchNorm folded, static shapes."""

from __future__ import annotations

import io
import re
import warnings

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
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), buf, dynamo=False, do_constant_folding=True,
                              opset_version=OPSET, input_names=["input"], output_names=["output"])
    except Exception as err:
        msg = " ".join(str(err).split())
        op = re.search(r"(aten::\w+|operator '[^']+'|op '[^']+')", msg)
        where = f" (at {op.group(1)})" if op else ""
        raise HwpruneError(f"ONNX export failed{where}: {msg[:300]}") from None
    return buf.getvalue()


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
        raise HwpruneError(f"the model rejects input shape {tuple(example_input.shape)}: {first}") from None
