"""ONNX candidates as torch.export programs: the form the torch-cuda backend loads with PyTorch alone.

Every candidate hwprune times (a layer cut from the width-parametric graph, a pruned
sub-network, the dense model) exists as ONNX exported as deployed: eval mode, BatchNorm
folded, static shapes. For the torch-cuda backend that ONNX is replayed op by op with
torch functions (``OnnxModule``) and captured by ``torch.export``; ``torch.export.save``
bytes travel instead of the ONNX, so the device needs neither onnx nor our model code, and
the program it times is the very graph the other backends time. Only the ops hwprune's
exports contain are covered; any other op is one error naming it.

Example:
    >>> from hwprune.torch_program import onnx_to_program  # doctest: +SKIP
    >>> program_bytes = onnx_to_program(export_onnx(model, x))
"""

from __future__ import annotations

import inspect
import io
import re
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from hwprune.errors import HwpruneError


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _torch_pads(pads: Sequence[int]) -> tuple[int, ...] | None:
    """ONNX pads (begin..., end...) as a symmetric torch padding, or None when asymmetric."""
    half = len(pads) // 2
    begin, end = tuple(pads[:half]), tuple(pads[half:])
    return begin if begin == end else None


def _conv(m: "OnnxModule", node, x, w, b=None):
    a = _attrs(node)
    pads = a.get("pads", [0] * 2 * (w.dim() - 2))
    sym = _torch_pads(pads)
    if sym is None:  # asymmetric: pad explicitly, as onnxruntime does (F.pad wants last axis first)
        half = len(pads) // 2
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        sym = (0,) * half
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return conv(x, w, b, stride=a.get("strides", 1), padding=sym, dilation=a.get("dilations", 1),
                groups=a.get("group", 1))


def _pool(kind: str):
    def run(m, node, x):
        a = _attrs(node)
        sym = _torch_pads(a.get("pads", [0] * 2 * len(a["kernel_shape"])))
        if sym is None:
            raise HwpruneError(f"{node.op_type} with asymmetric pads is not supported for torch-cuda")
        kwargs = dict(kernel_size=a["kernel_shape"], stride=a.get("strides", 1), padding=sym,
                      ceil_mode=bool(a.get("ceil_mode", 0)))
        if kind == "max":
            return F.max_pool2d(x, dilation=a.get("dilations", 1), **kwargs)
        return F.avg_pool2d(x, count_include_pad=bool(a.get("count_include_pad", 0)), **kwargs)
    return run


def _gemm(m, node, a_, b_, c=None):
    a = _attrs(node)
    if a.get("transA", 0):
        a_ = a_.t()
    if a.get("transB", 0):
        b_ = b_.t()
    y = a.get("alpha", 1.0) * (a_ @ b_)
    return y if c is None else y + a.get("beta", 1.0) * c


def _clip(m, node, x, lo=None, hi=None):
    a = _attrs(node)  # opset < 11 gives the bounds as attributes, later ones as (constant) inputs
    lo = float(lo) if lo is not None else a.get("min")
    hi = float(hi) if hi is not None else a.get("max")
    return torch.clamp(x, min=lo, max=hi)


def _flatten(m, node, x):
    axis = _attrs(node).get("axis", 1)
    return torch.flatten(x, start_dim=axis) if axis > 0 else x.reshape(1, -1)


def _reshape(m, node, x, shape):
    dims = [int(d) for d in np.asarray(shape).reshape(-1)]
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]  # ONNX 0: keep that axis
    return x.reshape(dims)


def _batchnorm(m, node, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=_attrs(node).get("epsilon", 1e-5))


def _hardsigmoid(m, node, x):
    a = _attrs(node)
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0)


# ONNX op -> torch, for the ops hwprune's exports (conv nets in eval mode) contain.
OPS: dict[str, Callable[..., torch.Tensor]] = {
    "Conv": _conv,
    "Relu": lambda m, n, x: F.relu(x),
    "Clip": _clip,
    "Sigmoid": lambda m, n, x: torch.sigmoid(x),
    "HardSigmoid": _hardsigmoid,
    "HardSwish": lambda m, n, x: F.hardswish(x),
    "Add": lambda m, n, a, b: a + b,
    "Sub": lambda m, n, a, b: a - b,
    "Mul": lambda m, n, a, b: a * b,
    "Identity": lambda m, n, x: x,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda m, n, x: torch.mean(x, dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda m, n, x: torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": lambda m, n, a, b: a @ b,
    "Concat": lambda m, n, *xs: torch.cat(xs, dim=_attrs(n)["axis"]),
    "BatchNormalization": _batchnorm,
    "Softmax": lambda m, n, x: torch.softmax(x, dim=_attrs(n).get("axis", -1)),
}
# Inputs that must be known when the graph is traced (bounds, shapes): passed as numpy
# constants, not tensors, so they are Python numbers in the program, not data-dependent.
STATIC_INPUTS = {"Clip": (1, 2), "Reshape": (1,)}


class OnnxModule(nn.Module):
    """An ONNX graph replayed with torch ops; initializers and Constant outputs are buffers."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        g = model.graph
        unknown = sorted({n.op_type for n in g.node if n.op_type not in OPS and n.op_type != "Constant"})
        if unknown:
            raise HwpruneError(f"the torch-cuda backend cannot replay ONNX op(s) {', '.join(unknown)} "
                               f"(supported: {', '.join(sorted(OPS))}); time this model with onnxruntime or tensorrt")
        self.graph_def = g
        self._buffers_by_value: dict[str, str] = {}
        self._arrays: dict[str, np.ndarray] = {}
        for init in g.initializer:
            self._add_constant(init.name, numpy_helper.to_array(init))
        for node in g.node:
            if node.op_type == "Constant":
                self._add_constant(node.output[0], numpy_helper.to_array(_attrs(node)["value"]))
        constants = set(self._buffers_by_value)
        self.input_names = [i.name for i in g.input if i.name not in constants]
        self.output_names = [o.name for o in g.output]
        self.forward = self._named_forward()

    def _named_forward(self):
        """``run`` under a signature with the ONNX input names: torch.export names the program's
        inputs after it, so the device feeds them by the same names as the other backends."""
        def forward(*inputs):
            return self.run(*inputs)

        params = [inspect.Parameter(re.sub(r"\W", "_", n), inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for n in self.input_names]
        forward.__signature__ = inspect.Signature(params)
        return forward

    def _add_constant(self, value_name: str, array: np.ndarray) -> None:
        buffer = f"c{len(self._buffers_by_value)}"
        # a buffer moves with .to(device, dtype) on the device; a bare tensor attribute would not
        self.register_buffer(buffer, torch.from_numpy(np.array(array)))
        self._buffers_by_value[value_name] = buffer
        self._arrays[value_name] = np.array(array)

    def run(self, *inputs: torch.Tensor):
        env: dict[str, Any] = {n: getattr(self, b) for n, b in self._buffers_by_value.items()}
        env.update(zip(self.input_names, inputs))
        for node in self.graph_def.node:
            if node.op_type == "Constant":
                continue
            static = STATIC_INPUTS.get(node.op_type, ())
            args = [None if not name else self._arrays[name] if i in static else env[name]
                    for i, name in enumerate(node.input)]
            while args and args[-1] is None:  # trailing optional inputs left out
                args.pop()
            env[node.output[0]] = OPS[node.op_type](self, node, *args)
        outputs = tuple(env[n] for n in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def _example_inputs(model: onnx.ModelProto, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    by_name = {i.name: i for i in model.graph.input}
    out = []
    for name in names:
        t = by_name[name].type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if any(d <= 0 for d in dims):
            raise HwpruneError(f"ONNX input '{name}' has a symbolic dimension; torch-cuda programs need static shapes")
        dtype = torch.from_numpy(np.empty(0, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))).dtype
        out.append(torch.zeros(dims, dtype=dtype))
    return tuple(out)


def onnx_to_program(onnx_bytes: bytes) -> bytes:
    """``torch.export.save`` bytes of the ONNX model, its inputs at their exported (static) shapes."""
    try:
        model = onnx.load_model_from_string(bytes(onnx_bytes))
    except Exception as err:  # protobuf's DecodeError and friends
        raise HwpruneError(f"not an ONNX model: {str(err).strip() or type(err).__name__}") from None
    module = OnnxModule(model).eval()
    example = _example_inputs(model, module.input_names)
    try:
        with torch.no_grad():
            program = torch.export.export(module, example, strict=False)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HwpruneError(f"torch.export of the candidate failed: {first[:300]}") from None
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def for_device(blob: bytes, backend: str) -> bytes:
    """A candidate in the form ``backend`` loads: a torch.export program for torch-cuda, else as given."""
    from profilers.torch_cuda import is_program

    if backend != "torch-cuda" or is_program(blob):
        return blob
    return onnx_to_program(blob)
