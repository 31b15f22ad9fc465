"""The width-parametric graph rebuilds any sub-network exactly as Torch-Pruning + export would."""

import random

import onnx
import pytest
import torch
from onnx import shape_inference

from hwprune.candidates import build_width_graph, enumerate_candidates, grids_for
from hwprune.export import export_onnx
from hwprune.groups import find_groups, prune_to_widths, snap_channels
from hwprune.models import create_model
from hwprune.widthgraph import HEAVY_OPS

torch.set_num_threads(1)


def _node_output_shapes(blob: bytes) -> list[tuple[str, list[int]]]:
    m = shape_inference.infer_shapes(onnx.load_from_string(blob))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    return [(n.op_type, shapes.get(n.output[0])) for n in m.graph.node
            if n.op_type not in ("Identity", "Constant")]


@pytest.mark.parametrize("name,shape", [("resnet20", (1, 28, 28)), ("mobilenetv2", (1, 28, 28))])
def test_instantiated_subnetwork_matches_real_pruned_export(name, shape):
    model = create_model(name, in_channels=shape[0], input_size=shape[1:]).eval()
    x = torch.zeros(1, *shape)
    groups = find_groups(model, x)
    wg = build_width_graph(model, x, groups)
    rng = random.Random(3)
    for _ in range(2):
        widths = [snap_channels(rng.uniform(0.2, 1) * g.channels, g.channels, 4) for g in groups]
        real = export_onnx(prune_to_widths(model, x, {g.name: w for g, w in zip(groups, widths)}), x)
        ours = wg.instantiate(None, widths)
        assert _node_output_shapes(ours) == _node_output_shapes(real)


def test_units_partition_the_graph_and_depend_on_few_groups():
    model = create_model("resnet20").eval()
    x = torch.zeros(1, 1, 28, 28)
    groups = find_groups(model, x)
    wg = build_width_graph(model, x, groups)
    units = wg.units()
    covered = sorted(i for u in units for i in u.nodes)
    assert covered == list(range(len(wg.model.graph.node)))
    for u in units:
        heavy = [i for i in u.nodes if wg.model.graph.node[i].op_type in HEAVY_OPS]
        assert len(heavy) == 1  # one conv/gemm per unit
        assert len(u.groups) <= 2  # its input and output widths
    # the classifier's unit depends only on the last stage's width
    assert units[-1].label == "Gemm" and [groups[g].name for g in units[-1].groups] == ["layer3.0.shortcut.0"]


def test_identical_blocks_share_signatures():
    model = create_model("resnet20").eval()
    x = torch.zeros(1, 1, 28, 28)
    groups = find_groups(model, x)
    wg = build_width_graph(model, x, groups)
    cands = list(enumerate_candidates(wg, wg.units(), grids_for(groups, 4)))
    unique = {c.signature for c in cands}
    assert len(unique) < len(cands)
    # two blocks of stage 1 at the same widths are the same candidate
    by_unit = {(c.unit, c.point): c.signature for c in cands}
    assert by_unit[(1, (8, 8))] == by_unit[(3, (8, 8))]
    assert by_unit[(1, (8, 8))] != by_unit[(1, (8, 12))]


def test_depthwise_group_attribute_follows_width():
    model = create_model("mobilenetv2", in_channels=1, input_size=(28, 28)).eval()
    x = torch.zeros(1, 1, 28, 28)
    groups = find_groups(model, x)
    wg = build_width_graph(model, x, groups)
    assert any(key[1] == "group" for key in wg.attr_deps)  # depthwise convs' group count
    widths = [max(8, g.channels // 2) if g.channels >= 16 else g.channels for g in groups]
    import onnxruntime as ort

    sess = ort.InferenceSession(wg.instantiate(None, widths))
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == (1, 10)
