"""Patterns that third-party architectures use, each on a small network built here (issue 18).

Every network reproduces one construct that made a zoo model fail; the assertions are on
hwprune's general behaviour (the width graph rebuilds what Torch-Pruning + export give, the
pruner cuts what was asked), not on any zoo model.
"""

import math

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import shape_inference

from hwprune.candidates import (MAX_UNIT_GRID_POINTS, build_width_graph, cap_unit_grids, enumerate_candidates,
                                grids_for)
from hwprune.export import export_onnx
from hwprune.groups import find_groups, group_widths, prune_to_widths
from hwprune.widthgraph import HEAVY_OPS, _normalize

torch.set_num_threads(1)


def _heavy_output_shapes(blob: bytes) -> list[tuple[str, list[int]]]:
    """Each conv/gemm's output shape, in graph order (shape arithmetic folded as hwprune does)."""
    m = shape_inference.infer_shapes(_normalize(onnx.load_from_string(blob)), strict_mode=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    return [(n.op_type, shapes[n.output[0]]) for n in m.graph.node if n.op_type in HEAVY_OPS]


def _matches_real_pruned_exports(model: nn.Module, x: torch.Tensor, width_sets: list[list[int]]) -> None:
    groups = find_groups(model, x)
    wg = build_width_graph(model, x, groups)
    for widths in width_sets:
        pruned = prune_to_widths(model, x, {g.name: w for g, w in zip(groups, widths)})
        assert list(group_widths(pruned, groups).values()) == widths
        ours = wg.instantiate(None, widths)
        assert _heavy_output_shapes(ours) == _heavy_output_shapes(export_onnx(pruned, x))
        sess = ort.InferenceSession(ours)
        assert sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].shape == (1, 10)


class _ShapeArithmeticNet(nn.Module):
    """Shapes computed in Python: a constant F.pad, a crop to ``shape - 1``, ``zeros_like``.

    The exporter leaves each as Shape/ConstantOfShape/Concat/... arithmetic feeding a Pad or
    Slice, so ONNX shape inference alone sees dynamic dimensions after it.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 24, 2)
        self.gate = nn.Linear(24, 24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.pad(self.conv1(x).relu(), (1, 0, 1, 0))
        x = self.conv2(x).relu()
        x = x[:, :, : x.shape[2] - 1, : x.shape[3] - 1]
        w = x.mean((2, 3))
        h = torch.sigmoid(self.gate(w) + torch.zeros_like(w))
        return self.fc((x * h[:, :, None, None]).mean((2, 3)))


def test_shape_arithmetic_is_folded_into_width_dependent_operands():
    model, x = _ShapeArithmeticNet().eval(), torch.zeros(1, 3, 12, 12)
    _matches_real_pruned_exports(model, x, [[8, 16], [5, 9], [16, 24]])


class _ConcatResidualNet(nn.Module):
    """Two branches concatenated and added to a body conv (Shake-Shake's shortcut).

    Torch-Pruning roots a group at each branch (it meets them first, the add's last operand),
    so the body conv's output channels belong to two groups: the left branch's and the right's.
    """

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.right = nn.Conv2d(3, 12, 3, padding=1)
        self.body = nn.Conv2d(3, 20, 1)
        self.mix = nn.Conv2d(20, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = 0.5 * self.body(x).relu() + torch.cat([self.left(x), self.right(x)], dim=1)
        return self.fc(self.mix(x).relu().mean((2, 3)))


def test_both_branches_of_a_concatenation_are_cut_at_once():
    # Cutting the left branch shifts the right branch's channels in the body conv and the
    # concatenation; the right branch must be scored and cut at its new indices.
    model, x = _ConcatResidualNet().eval(), torch.zeros(1, 3, 8, 8)
    assert [g.name for g in find_groups(model, x)] == ["left", "right", "mix"]
    _matches_real_pruned_exports(model, x, [[4, 6, 8], [1, 11, 16]])
    pruned = prune_to_widths(model, x, {"left": 4, "right": 6})
    assert pruned.body.out_channels == pruned.mix.in_channels == 10


def test_convs_followed_by_in_place_activations_form_groups():
    # Network-in-Network style: every conv is followed by ReLU(inplace=True), the classifier is a conv.
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(inplace=True), nn.Conv2d(16, 24, 1), nn.ReLU(inplace=True),
                          nn.Conv2d(24, 10, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.zeros(1, 3, 8, 8)
    assert [(g.name, g.channels) for g in find_groups(model, x)] == [("0", 16), ("2", 24)]
    assert all(m.inplace for m in model if isinstance(m, nn.ReLU))  # the user's model is left as it was
    _matches_real_pruned_exports(model, x, [[8, 12], [1, 24]])


class _GhostNet(nn.Module):
    """A ghost module: a conv's output concatenated with a depthwise copy of itself, then a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.primary = nn.Conv2d(16, 12, 1)
        self.cheap = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.primary(self.stem(x).relu())
        x = torch.cat([x, self.cheap(x)], dim=1)
        return self.fc(self.dw(x).relu().mean((2, 3)))


def test_tied_channels_stay_at_full_width_and_the_rest_prunes():
    # Cutting one of the depthwise conv's 24 channels cuts its copy too: asking for 23 would
    # give 22, so that group is left dense, with the reason; the stem still prunes exactly.
    model, x = _GhostNet().eval(), torch.zeros(1, 3, 8, 8)
    unprunable = []
    groups = find_groups(model, x, unprunable=unprunable)
    assert [g.name for g in groups] == ["stem"]
    assert [(u.name, u.channels) for u in unprunable] == [("dw", 24)] and "cuts 2" in unprunable[0].reason
    _matches_real_pruned_exports(model, x, [[8], [1]])


class _Shuffle(nn.Module):
    def forward(self, x):
        b, c, h, w = x.size()
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups), nn.BatchNorm2d(cout),
                         nn.ReLU())


class _ShuffleNet(nn.Module):
    """ShuffleNetV2 units: a two-branch unit, then two that split the channels in half, send one
    half through pointwise-depthwise-pointwise convs, concatenate and shuffle the channels."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_relu(3, 16, 3)
        self.left, self.right, self.shuffle = _conv_bn_relu(16, 8), _conv_bn_relu(16, 8), _Shuffle()
        self.units = nn.ModuleList(
            nn.ModuleList([nn.Sequential(_conv_bn_relu(8, 8), _conv_bn_relu(8, 8, 3, 8), _conv_bn_relu(8, 8)),
                           _Shuffle()]) for _ in range(2))
        self.head = _conv_bn_relu(16, 24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.shuffle(torch.cat([self.left(x), self.right(x)], dim=1))
        for branch, shuffle in self.units:
            a, b = x.chunk(2, dim=1)
            x = shuffle(torch.cat([a, branch(b)], dim=1))
        return self.fc(self.head(x).mean((2, 3)))


def test_a_layer_the_tracer_cannot_map_is_opaque_and_the_rest_prunes():
    # Torch-Pruning's index mapping divides by zero at these channel shuffles (as in
    # ShuffleNetV2); the shuffle it fails at is made opaque, the groups reaching it stay
    # dense with the reason, and the others prune.
    model, x = _ShuffleNet().eval(), torch.zeros(1, 3, 8, 8)
    unprunable = []
    groups = find_groups(model, x, unprunable=unprunable)
    assert {"stem.0", "head.0"} <= {g.name for g in groups}
    assert unprunable and all("which Torch-Pruning cannot trace (integer division or modulo by zero)" in u.reason
                              for u in unprunable)
    assert all(type(m) is _Shuffle for m in model.modules() if isinstance(m, _Shuffle))  # classes restored
    _matches_real_pruned_exports(model, x, [[max(1, g.channels // 2) for g in groups], [g.channels for g in groups]])


class _AggregationNet(nn.Module):
    """A one-shot aggregation (VoVNet-style): four convs in a row, all their outputs and the
    stem's concatenated into one 1x1 conv, which so depends on five groups' widths."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1) for _ in range(4))
        self.aggregate = nn.Conv2d(80, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        outs = [self.stem(x).relu()]
        for conv in self.convs:
            outs.append(conv(outs[-1]).relu())
        return self.fc(self.aggregate(torch.cat(outs, dim=1)).relu().mean((2, 3)))


def test_grids_of_groups_meeting_after_a_concatenation_are_capped():
    model, x = _AggregationNet().eval(), torch.zeros(1, 3, 8, 8)
    groups = find_groups(model, x)
    wg = build_width_graph(model, x, groups)
    units = wg.units()
    fine = grids_for(groups, 1)  # every width of each 16-channel group: 16^5 points for the concatenation's unit
    assert max(math.prod(len(fine[g]) for g in u.groups) for u in units) > 10 ** 5
    grids = cap_unit_grids(fine, units)
    assert max(math.prod(len(grids[g]) for g in u.groups) for u in units) <= MAX_UNIT_GRID_POINTS
    for f, c in zip(fine, grids):
        assert set(c) <= set(f) and (c[0], c[-1]) == (f[0], f[-1])  # the ends stay: nothing is extrapolated
    assert len(list(enumerate_candidates(wg, units, grids))) <= MAX_UNIT_GRID_POINTS * len(units)
