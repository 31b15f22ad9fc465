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
    model = model.eval()
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


def check_input_shape(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    """Run the model once; an input shape it rejects becomes a one-line error."""
    try:
        with torch.no_grad():
            return model.eval()(example_input)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HwpruneError(f"the model rejects input shape {tuple(example_input.shape)}: {first}") from None
