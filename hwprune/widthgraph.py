"""The width-parametric ONNX graph: a model's deployed ONNX as a function of its group widths.

hwprune exports the dense model once, and once more per dependency group with that group
one channel narrower. Diffing the shapes (and integer attributes such as a depthwise conv's
``group``) tells, for every tensor axis, how it depends on each group's width: dim =
dense + Σ coef_g · (width_g − dense_g). From that, any slice of the network can be rebuilt
at any widths without PyTorch — which is how per-layer candidates are made (fast: no
export per candidate) and how a whole sub-network is rebuilt for calibration.

The graph is cut into *units*: each conv/gemm/matmul node with the cheap nodes that follow
it up to the next one (BN is already folded; activations, residual adds, pooling and
flatten ride along), which is also how runtimes fuse them. A unit's latency depends on the
widths of at most a few groups (its input and output channels), so it is profiled on the
grid of those widths only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from hwprune.errors import HwpruneError

HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "QLinearConv", "MatMulInteger"})

# dim = base + Σ coef * (width[g] - dense[g]), stored as {group_index: coef}
Deps = dict[int, float]


def _normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constants as initializers, shape arithmetic folded, one initializer per use."""
    _constants_to_initializers(model)
    _fold_static_values(model)
    _unshare_initializers(model)
    return model


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Turn Constant nodes into initializers and drop Identity nodes on initializers.

    Exporters emit both for shared weights; left as nodes, a weight would become a runtime
    input of a per-layer candidate and lose the runtime's weight pre-packing.
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    alias: dict[str, str] = {}
    keep = []
    for node in g.node:
        ins = [alias.get(i, i) for i in node.input]
        if node.op_type == "Constant" and len(node.output) == 1:
            t = next((a.t for a in node.attribute if a.name == "value"), None)
            if t is not None:
                arr = numpy_helper.to_array(t)
                g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
                inits.add(node.output[0])
                continue
        if node.op_type == "Identity" and ins and ins[0] in inits and node.output[0] not in {o.name for o in g.output}:
            alias[node.output[0]] = ins[0]
            continue
        del node.input[:]
        node.input.extend(ins)
        keep.append(node)
    del g.node[:]
    g.node.extend(keep)


# Ops whose output is not a function of their inputs' values alone: never folded.
_UNFOLDABLE_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                             "Multinomial", "Bernoulli", "Dropout"})
# A folded value becomes an initializer; larger ones stay computed (the runtime's business).
FOLD_MAX_ELEMENTS = 1 << 16
FOLD_MAX_PASSES = 8


def _fold_static_values(model: onnx.ModelProto) -> None:
    """Replace every value that the static input shape determines by an initializer.

    Exporters leave shape arithmetic in the graph when it was Python code in the model: a
    ``Shape`` of a tensor whose shape is static, then ``Gather``/``Concat``/``Cast``... into
    a ``Pad``'s pads or a ``Slice``'s ends (channel padding of an identity, ``chunk``).
    Shape inference cannot see through it, so the tensors after it get dynamic dimensions
    and the width graph could not be built. Folded, these operands are INT64 initializers,
    which the width graph already parametrises by width (``int_init_deps``). Repeated
    because a folded Pad or Slice makes later shapes static, and their ``Shape`` foldable.
    """
    for _ in range(FOLD_MAX_PASSES):
        if not _fold_pass(model):
            return


def _fold_pass(model: onnx.ModelProto) -> bool:
    """One topological sweep of ``_fold_static_values``; whether anything was folded."""
    g = model.graph
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # an unfoldable graph is reported by the strict inference later
        return False
    static = _static_shapes(inferred)
    inits = {i.name: i for i in g.initializer}
    values: dict[str, np.ndarray] = {}
    graph_outputs = {o.name for o in g.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    keep, folded = [], 0
    for node in g.node:
        out = None if graph_outputs.intersection(node.output) else _fold_node(node, static, inits, values, opset)
        if out is None:
            keep.append(node)
            continue
        for name, arr in zip(node.output, out):
            values[name] = arr
            inits[name] = numpy_helper.from_array(arr, name)
            g.initializer.append(inits[name])
        folded += 1
    if folded:
        del g.node[:]
        g.node.extend(keep)
        _drop_unused_initializers(model)
    return folded > 0


def _static_shapes(inferred: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensors whose every dimension shape inference knows."""
    out = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    return out


def _fold_node(node: onnx.NodeProto, static: dict[str, list[int]], inits: dict[str, onnx.TensorProto],
               values: dict[str, np.ndarray], opset: int | None) -> list[np.ndarray] | None:
    """The outputs of ``node`` when the static shapes and constants determine them, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _UNFOLDABLE_OPS or opset is None:
        return None
    if node.op_type in ("Shape", "Size") and node.input[0] in static:
        dims = static[node.input[0]]
        if node.op_type == "Size":
            return [np.array(int(np.prod(dims)), dtype=np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        return [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)]
    present = [t for t in node.input if t]
    if not present or not all(t in inits for t in present):
        return None
    if any(int(np.prod(inits[t].dims)) > FOLD_MAX_ELEMENTS for t in present):
        return None  # weights: folding them would copy every weight, for no shape it could reveal
    feeds = {t: values[t] if t in values else numpy_helper.to_array(inits[t]) for t in present}
    try:
        from onnx.reference import ReferenceEvaluator

        out = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception:  # an op the reference runtime lacks stays in the graph
        return None
    if any(not isinstance(a, np.ndarray) or a.size > FOLD_MAX_ELEMENTS for a in out):
        return None
    return [np.asarray(a) for a in out]


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    g = model.graph
    used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _unshare_initializers(model: onnx.ModelProto) -> None:
    """Give every use of an initializer its own copy.

    Exporters deduplicate identical initializers (freshly folded BN biases are all zeros),
    so one tensor can feed layers of different groups; shared, a shape change in one group
    would be attributed to all of them.
    """
    g = model.graph
    by_name = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for t in node.input:
            if t in by_name:
                uses[t] = uses.get(t, 0) + 1
    seen: dict[str, int] = {}
    for ni, node in enumerate(g.node):
        for pos, t in enumerate(node.input):
            if t in by_name and uses[t] > 1:
                seen[t] = seen.get(t, 0) + 1
                if seen[t] > 1:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(by_name[t])
                    copy.name = f"{t}__use{ni}_{pos}"
                    g.initializer.append(copy)
                    node.input[pos] = copy.name


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Static shape and element type of every tensor (inputs, initializers, intermediates)."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as err:
        raise HwpruneError(f"ONNX shape inference failed: {str(err).splitlines()[0]}") from None
    shapes: dict[str, list[int]] = {}
    types: dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        dims = []
        for d in tt.shape.dim:
            if not d.HasField("dim_value"):
                raise HwpruneError(f"tensor '{vi.name}' has a dynamic dimension; export with static shapes")
            dims.append(int(d.dim_value))
        shapes[vi.name] = dims
        types[vi.name] = tt.elem_type
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
        types[init.name] = init.data_type
    return shapes, types


def _int_attrs(node: onnx.NodeProto) -> dict[str, list[int]]:
    out = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.INT:
            out[a.name] = [int(a.i)]
        elif a.type == onnx.AttributeProto.INTS:
            out[a.name] = [int(v) for v in a.ints]
    return out


@dataclass
class Unit:
    """A slice of the graph profiled as one candidate: a heavy node and what follows it."""

    index: int
    nodes: list[int]
    groups: tuple[int, ...]
    label: str
    name: str


@dataclass
class WidthGraph:
    """A dense ONNX model plus the linear dependence of its shapes on group widths."""

    model: onnx.ModelProto
    dense_widths: list[int]
    shape_deps: dict[str, list[Deps]]
    attr_deps: dict[tuple[int, str], list[Deps]]
    int_init_deps: dict[str, list[Deps]]
    shapes: dict[str, list[int]] = field(repr=False, default_factory=dict)
    types: dict[str, int] = field(repr=False, default_factory=dict)
    # PyTorch parameter name -> (dense shape, per-axis deps), filled by build_width_graph
    torch_param_shapes: dict[str, tuple[list[int], list[Deps]]] = field(repr=False, default_factory=dict)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_exports(cls, dense: bytes, perturbed: Sequence[tuple[int, int, bytes]],
                     dense_widths: Sequence[int]) -> "WidthGraph":
        """Build from the dense export and ``(group_index, channels_removed, export)`` pairs."""
        m0 = _normalize(onnx.load_from_string(dense))
        shapes0, types0 = _shapes(m0)
        inits0 = {i.name: i for i in m0.graph.initializer}
        shape_deps: dict[str, list[Deps]] = {}
        attr_deps: dict[tuple[int, str], list[Deps]] = {}
        int_init_deps: dict[str, list[Deps]] = {}
        for gi, delta, blob in perturbed:
            mg = _normalize(onnx.load_from_string(blob))
            shapes_g, _ = _shapes(mg)
            inits_g = {i.name: i for i in mg.graph.initializer}
            if len(mg.graph.node) != len(m0.graph.node):
                raise HwpruneError(f"the graph changes structure when group #{gi} is pruned "
                                   f"({len(m0.graph.node)} vs {len(mg.graph.node)} nodes)")
            name_map: dict[str, str] = {}
            for a, b in zip(m0.graph.input, mg.graph.input):
                name_map[a.name] = b.name
            for i, (n0, ng) in enumerate(zip(m0.graph.node, mg.graph.node)):
                if n0.op_type != ng.op_type or len(n0.input) != len(ng.input):
                    raise HwpruneError(f"node {n0.name or i} changes op when group #{gi} is pruned")
                for a, b in zip(list(n0.input) + list(n0.output), list(ng.input) + list(ng.output)):
                    if a:
                        name_map[a] = b
                a0, ag = _int_attrs(n0), _int_attrs(ng)
                for key, vals in a0.items():
                    other = ag.get(key, vals)
                    if len(other) != len(vals):
                        raise HwpruneError(f"node {n0.name}: attribute {key} changes length with group #{gi}")
                    for k, (v0, vg) in enumerate(zip(vals, other)):
                        if v0 != vg:
                            deps = attr_deps.setdefault((i, key), [dict() for _ in vals])
                            deps[k][gi] = (v0 - vg) / delta
            for name0, nameg in name_map.items():
                s0, sg = shapes0.get(name0), shapes_g.get(nameg)
                if s0 is None or sg is None:
                    continue
                if len(s0) != len(sg):
                    raise HwpruneError(f"tensor {name0} changes rank when group #{gi} is pruned")
                for axis, (d0, dg) in enumerate(zip(s0, sg)):
                    if d0 != dg:
                        deps = shape_deps.setdefault(name0, [dict() for _ in s0])
                        deps[axis][gi] = (d0 - dg) / delta
                if name0 in inits0 and nameg in inits_g and inits0[name0].data_type == onnx.TensorProto.INT64:
                    v0 = numpy_helper.to_array(inits0[name0]).ravel()
                    vg = numpy_helper.to_array(inits_g[nameg]).ravel()
                    if v0.shape == vg.shape and not np.array_equal(v0, vg):
                        deps = int_init_deps.setdefault(name0, [dict() for _ in v0])
                        for k in np.nonzero(v0 != vg)[0]:
                            deps[int(k)][gi] = float(v0[k] - vg[k]) / delta
        return cls(m0, list(dense_widths), shape_deps, attr_deps, int_init_deps, shapes0, types0)

    # -- evaluation at widths -----------------------------------------------------------------
    def _value(self, base: int, deps: Deps, widths: Sequence[int]) -> int:
        v = base + sum(c * (widths[g] - self.dense_widths[g]) for g, c in deps.items())
        return int(round(v))

    def shape(self, tensor: str, widths: Sequence[int]) -> list[int]:
        base = self.shapes[tensor]
        deps = self.shape_deps.get(tensor)
        if deps is None:
            return list(base)
        return [self._value(b, d, widths) for b, d in zip(base, deps)]

    def groups_of_nodes(self, nodes: Sequence[int]) -> tuple[int, ...]:
        gs: set[int] = set()
        for i in nodes:
            n = self.model.graph.node[i]
            for t in list(n.input) + list(n.output):
                for d in self.shape_deps.get(t, []):
                    gs.update(d)
                for d in self.int_init_deps.get(t, []):
                    gs.update(d)
            for (ni, _), deps in self.attr_deps.items():
                if ni == i:
                    for d in deps:
                        gs.update(d)
        return tuple(sorted(gs))

    def units(self) -> list[Unit]:
        """Cut the graph into units: each heavy node with the cheap nodes that follow it."""
        cuts: list[list[int]] = []
        current: list[int] = []
        has_heavy = False
        for i, node in enumerate(self.model.graph.node):
            if node.op_type in HEAVY_OPS and has_heavy:
                cuts.append(current)
                current, has_heavy = [], False
            current.append(i)
            has_heavy = has_heavy or node.op_type in HEAVY_OPS
        if current:
            cuts.append(current)
        units = []
        for k, nodes in enumerate(cuts):
            ops = [self.model.graph.node[i].op_type for i in nodes]
            heavy = next((i for i in nodes if self.model.graph.node[i].op_type in HEAVY_OPS), nodes[0])
            units.append(Unit(k, nodes, self.groups_of_nodes(nodes), "+".join(ops),
                              self.model.graph.node[heavy].name or f"node{heavy}"))
        return units

    def _io(self, nodes: Sequence[int]) -> tuple[list[str], list[str], list[str]]:
        g = self.model.graph
        inits = {i.name for i in g.initializer}
        produced: list[str] = []
        inside = set(nodes)
        for i in nodes:
            produced.extend(o for o in g.node[i].output if o)
        produced_set = set(produced)
        inputs, used_inits = [], []
        for i in nodes:
            for t in g.node[i].input:
                if not t or t in produced_set:
                    continue
                if t in inits:
                    if t not in used_inits:
                        used_inits.append(t)
                elif t not in inputs:
                    inputs.append(t)
        consumed_outside = {t for j, n in enumerate(g.node) if j not in inside for t in n.input}
        graph_outputs = {o.name for o in g.output}
        outputs = [t for t in produced if t in consumed_outside or t in graph_outputs]
        if not outputs:
            outputs = [produced[-1]]
        return inputs, used_inits, outputs

    def _node_at(self, i: int, widths: Sequence[int]) -> onnx.NodeProto:
        node = onnx.NodeProto()
        node.CopyFrom(self.model.graph.node[i])
        for a in node.attribute:
            deps = self.attr_deps.get((i, a.name))
            if deps is None:
                continue
            if a.type == onnx.AttributeProto.INT:
                a.i = self._value(a.i, deps[0], widths)
            else:
                vals = [self._value(v, d, widths) for v, d in zip(a.ints, deps)]
                del a.ints[:]
                a.ints.extend(vals)
        return node

    def signature(self, nodes: Sequence[int], widths: Sequence[int]) -> str:
        """A hash of what determines the slice's latency: ops, attributes, shapes, dtypes."""
        _, used_inits, _ = self._io(nodes)
        local = {}
        parts = []
        for k, i in enumerate(nodes):
            n = self._node_at(i, widths)
            refs = []
            for t in n.input:
                if not t:
                    refs.append("-")
                elif t in local:
                    refs.append(local[t])
                elif t in used_inits:
                    refs.append(f"w{self.types[t]}{self.shape(t, widths)}{self._int_init_values(t, widths)}")
                else:
                    refs.append(f"x{self.types.get(t)}{self.shape(t, widths)}")
            attrs = sorted((a.name, str(helper.get_attribute_value(a))) for a in n.attribute)
            parts.append([n.domain, n.op_type, refs, attrs])
            for j, o in enumerate(n.output):
                local[o] = f"n{k}.{j}"
        text = json.dumps(parts, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def _int_init_array(self, name: str, widths: Sequence[int]) -> np.ndarray | None:
        """An INT64 initializer's values at ``widths`` (shape operands); None for other types."""
        init = next(i for i in self.model.graph.initializer if i.name == name)
        if init.data_type != onnx.TensorProto.INT64:
            return None
        vals = numpy_helper.to_array(init)
        deps = self.int_init_deps.get(name)
        if deps is not None:
            flat = [self._value(int(v), d, widths) for v, d in zip(vals.ravel(), deps)]
            vals = np.array(flat, dtype=np.int64).reshape(vals.shape)
        return vals

    def _int_init_values(self, name: str, widths: Sequence[int]) -> str:
        vals = self._int_init_array(name, widths)
        return "" if vals is None else str(vals.ravel().tolist())

    def instantiate(self, nodes: Sequence[int] | None, widths: Sequence[int], seed: int = 0) -> bytes:
        """Serialized ONNX of the slice ``nodes`` (all nodes when None) at ``widths``.

        Float weights that the widths resize are random (their values do not change latency on
        the runtimes we target); integer initializers (shape operands) are recomputed for the
        widths, and every other initializer keeps its values.
        """
        g = self.model.graph
        if nodes is None:
            nodes = list(range(len(g.node)))
        rng = np.random.default_rng(seed)
        inputs, used_inits, outputs = self._io(nodes)
        inits = {i.name: i for i in g.initializer}
        new_inits = []
        for name in used_inits:
            src = inits[name]
            shape = self.shape(name, widths)
            ints = self._int_init_array(name, widths)
            if ints is not None:
                arr = ints
            elif name not in self.shape_deps:
                # Not resized by any width: its own values, which may be a shape operand (a
                # Resize's scales, a Clip's bounds); random values there make an invalid graph.
                arr = numpy_helper.to_array(src)
            else:
                dtype = helper.tensor_dtype_to_np_dtype(src.data_type)
                arr = (rng.standard_normal(shape) * 0.1).astype(dtype)
            new_inits.append(numpy_helper.from_array(arr, name))
        vin = [helper.make_tensor_value_info(t, self.types[t], self.shape(t, widths)) for t in inputs]
        vout = [helper.make_tensor_value_info(t, self.types[t], self.shape(t, widths)) for t in outputs]
        graph = helper.make_graph([self._node_at(i, widths) for i in nodes], "slice", vin, vout, new_inits)
        m = helper.make_model(graph, opset_imports=list(self.model.opset_import), producer_name="hwprune")
        m.ir_version = self.model.ir_version
        return m.SerializeToString()

    def describe(self, nodes: Sequence[int], widths: Sequence[int]) -> dict:
        """The LUT's descriptive columns for a slice: its ops and its heavy node's geometry."""
        g = self.model.graph
        ops = "+".join(g.node[i].op_type for i in nodes)
        heavy = next((i for i in nodes if g.node[i].op_type in HEAVY_OPS), None)
        out = {"op": ops, "cin": None, "cout": None, "kernel": None, "stride": None,
               "groups": None, "in_h": None, "in_w": None}
        if heavy is None:
            return out
        node = self._node_at(heavy, widths)
        x = self.shape(node.input[0], widths) if node.input[0] in self.shapes else []
        w = self.shape(node.input[1], widths) if len(node.input) > 1 and node.input[1] in self.shapes else []
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv") and len(w) >= 3:
            group = int(attrs.get("group", 1))
            out.update(cin=x[1] if len(x) > 1 else None, cout=w[0], kernel=int(w[2]),
                       stride=int((attrs.get("strides") or [1])[0]), groups=group,
                       in_h=x[2] if len(x) > 2 else None, in_w=x[3] if len(x) > 3 else None)
        elif len(w) == 2:
            trans_b = int(attrs.get("transB", 0))
            out.update(cin=w[1] if trans_b else w[0], cout=w[0] if trans_b else w[1], kernel=1, stride=1,
                       groups=1, in_h=1, in_w=1)
        return out
