"""Patterns that third-party architectures use, each on a small network built here (issue 18).

Every network reproduces one construct that made a zoo model fail; the assertions are on
hwprune's general behaviour (the width graph rebuilds what Torch-Pruning + export give, the
pruner cuts what was asked), not on any zoo model.
"""

import math

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import shape_inference

from hwprune.agents.base import SearchSpace
from hwprune.candidates import (MAX_UNIT_GRID_POINTS, build_width_graph, cap_unit_grids, check_grid_size,
                                enumerate_candidates, grids_for)
from hwprune.export import export_onnx
from hwprune.errors import HwpruneError
from hwprune.groups import find_groups, group_widths, prune_to_widths, rank_channels
from hwprune.widthgraph import HEAVY_OPS, _normalize
from hwprune.widthsteps import staircase_widths

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
    # and when even the capped grids are too many, the profile stops at once, naming the layer
    names = [g.name for g in groups]
    check_grid_size(grids, units, names)
    total = sum(math.prod(len(grids[g]) for g in u.groups) for u in units)
    with pytest.raises(HwpruneError, match=r"its layer /aggregate/Conv depends on 6 groups that meet at a concatenation"):
        check_grid_size(grids, units, names, max_total=total - 1)


class _GroupedNet(nn.Module):
    """ResNeXt/IGCV3-style grouped convolutions (not depthwise): a conv with 4 groups whose input
    another conv makes, then a 1x1 conv with 2 groups, then the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.g4 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, groups=4), nn.BatchNorm2d(64), nn.ReLU())
        self.g2 = nn.Sequential(nn.Conv2d(64, 48, 1, groups=2), nn.BatchNorm2d(48), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))

    def forward(self, x):
        return self.head(self.g2(self.g4(self.stem(x))))


def test_grouped_convolutions_are_cut_in_multiples_of_their_groups():
    torch.manual_seed(0)
    model, x = _GroupedNet().eval(), torch.randn(1, 3, 8, 8)
    groups = find_groups(model, x)
    # each group's quantum is the lcm of the groups of the grouped convs it feeds or leaves
    assert [(g.name, g.channels, g.step) for g in groups] == [("stem.0", 32, 4), ("g4.0", 64, 4), ("g2.0", 48, 2)]
    _matches_real_pruned_exports(model, x, [[16, 40, 30], [4, 4, 2], [28, 64, 48]])
    with pytest.raises(HwpruneError, match="multiples of 4 channels; width 30 is not one"):
        prune_to_widths(model, x, {"stem.0": 30})


def test_a_cut_grouped_convolution_computes_the_kept_channels_of_the_dense_one():
    # The same offsets are kept in every block of a stepped group, so the pruned network is the
    # dense one with the dropped channels' activations set to zero (here after the stem's ReLU,
    # whose output only the 4-group conv reads).
    torch.manual_seed(0)
    model, x = _GroupedNet().eval(), torch.randn(2, 3, 8, 8)
    for bn in (model.stem[1], model.g4[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    kept: dict[str, list[int]] = {}
    pruned = prune_to_widths(model, x, {"stem.0": 12}, kept_out=kept)
    offsets = [sorted(i - b * 8 for i in kept["stem.0"] if b * 8 <= i < b * 8 + 8) for b in range(4)]
    assert len(kept["stem.0"]) == 12 and all(o == offsets[0] for o in offsets)
    mask = torch.zeros(32)
    mask[kept["stem.0"]] = 1.0
    hook = model.stem[2].register_forward_hook(lambda m, i, out: out * mask.view(1, -1, 1, 1))
    try:
        with torch.no_grad():
            assert torch.allclose(pruned(x), model(x), atol=1e-5)
    finally:
        hook.remove()


def test_rank_channels_keeps_the_same_offsets_in_every_block():
    scores = torch.tensor([1.0, 9.0, 2.0, 0.0, 8.0, 3.0])  # 2 blocks of 3: offset sums 1+0, 9+8, 2+3
    assert rank_channels(scores) == [1, 4, 5, 2, 0, 3]
    assert rank_channels(scores, 2) == [1, 4, 2, 5, 0, 3]
    with pytest.raises(HwpruneError, match="do not split into 4 equal blocks"):
        rank_channels(scores, 4)


def test_a_search_space_rounds_a_stepped_group_to_its_step_and_the_device_multiple():
    space = SearchSpace(["a", "b"], [64, 48], 8, steps=[1, 3])
    assert space.choices(0) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert space.choices(1) == [24, 48]  # lcm(8, 3)
    assert space.snap(1, 30) == 24 and space.fingerprint()["steps"] == [1, 3]
    assert staircase_widths(24, 2) == list(range(2, 25, 2))
    assert all(w % 3 == 0 for w in staircase_widths(96, 3))
    with pytest.raises(HwpruneError, match="multiples of 3 channels"):
        SearchSpace(["a", "b"], [64, 48], 1, allowed=[[8, 64], [10, 48]], steps=[1, 3])


class _AttentionNet(nn.Module):
    """A ViT-style block: patch embedding, multi-head self-attention whose projections are
    reshaped into (heads, head_dim) with the head count written in the code, and a GELU MLP."""

    heads = 2

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.q, self.k, self.v, self.proj = (nn.Linear(32, 32) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, 32)
        b, n, _ = t.shape
        h = self.norm1(t)
        q, k, v = (p(h).view(b, n, self.heads, 16).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
        t = t + self.proj(a.transpose(1, 2).reshape(b, n, 32))
        t = t + self.fc2(F.gelu(self.fc1(self.norm2(t))))
        return self.head(t.mean(1))


def test_a_group_whose_cut_breaks_the_forward_pass_stays_dense_and_the_mlp_still_prunes():
    # Cutting one channel of the attention projections breaks their reshape into heads (Torch-
    # Pruning cannot see it); those groups are found by one trial cut and stay dense, with the
    # error as the reason, and the MLP's hidden width still prunes end to end.
    torch.manual_seed(0)
    model, x = _AttentionNet().eval(), torch.randn(1, 3, 16, 16)
    unprunable = []
    groups = find_groups(model, x, unprunable=unprunable)
    assert "fc1" in [g.name for g in groups]
    broken = [u for u in unprunable if "breaks the forward pass" in u.reason]
    assert broken and all("kept at full width" in u.reason for u in broken)
    assert not {u.name for u in broken} & {g.name for g in groups}
    _matches_real_pruned_exports(model, x, [[g.channels // 2 for g in groups]])
    # the importance the bo and knapsack agents are given names only the groups they search
    # (it used to score the dense ones too, and they refused it: "importance given for unknown group(s)")
    from hwprune.groups import channel_importance

    assert set(channel_importance(model, x, only={g.name for g in groups})) == {g.name for g in groups}


class _MaskedConv(nn.Conv2d):
    """X-DenseNet's X-convolution: a fixed random connectivity mask of the weight's shape."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask = nn.Parameter((torch.rand_like(self.weight) > 0.5).float(), requires_grad=False)
        self.register_buffer("scale", torch.rand_like(self.weight) + 0.5)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask * self.scale, self.bias, self.stride, self.padding)


class _MaskedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = _MaskedConv(3, 16, 3, padding=1)
        self.c2 = _MaskedConv(16, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 1).flatten(1))


def test_a_layers_weight_shaped_mask_is_cut_with_its_weight():
    torch.manual_seed(0)
    model, x = _MaskedNet().eval(), torch.randn(1, 3, 8, 8)
    assert [g.name for g in find_groups(model, x)] == ["c1", "c2"]
    kept: dict[str, list[int]] = {}
    pruned = prune_to_widths(model, x, {"c1": 10, "c2": 8}, kept_out=kept)
    for conv in (pruned.c1, pruned.c2):
        assert conv.mask.shape == conv.scale.shape == conv.weight.shape and not conv.mask.requires_grad
    # the kept mask entries are the dense mask's at the kept channels
    assert torch.equal(pruned.c2.mask, model.c2.mask[kept["c2"]][:, kept["c1"]])
    _matches_real_pruned_exports(model, x, [[10, 8], [1, 24]])


class _SqueezeExcitation(nn.Module):
    """Squeeze-excitation on 16 channels with reduction 16: a 1-channel bottleneck."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.down, self.up = nn.Conv2d(16, 1, 1), nn.Conv2d(1, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.conv(x).relu()
        y = y * torch.sigmoid(self.up(self.down(F.adaptive_avg_pool2d(y, 1)).relu()))
        return self.fc(y.mean((2, 3)))


def test_a_one_channel_group_is_still_a_group():
    # a group that can only stay dense, not one "of a grouped convolution"
    unprunable = []
    groups = find_groups(_SqueezeExcitation().eval(), torch.zeros(1, 3, 8, 8), unprunable=unprunable)
    assert ("down", 1, 1) in [(g.name, g.channels, g.step) for g in groups]
    assert unprunable == []


class _TwoHeads(nn.Module):
    """A classifier and a box regressor on one trunk, returned as a tuple."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv2d(3, 32, 3, padding=1)
        self.cls, self.box = nn.Linear(32, 10), nn.Linear(32, 4)

    def forward(self, x):
        z = torch.relu(self.trunk(x)).mean((2, 3))
        return self.cls(z), self.box(z)


class _DictSeg(nn.Module):
    """Logits and a 2-channel mask, returned as a dict."""

    def __init__(self):
        super().__init__()
        self.a, self.seg, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 2, 1), nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return {"logits": self.fc(h.mean((2, 3))), "mask": self.seg(h)}


@pytest.mark.parametrize("net, head", [(_TwoHeads, "box"), (_DictSeg, "seg")])
def test_every_layer_that_feeds_a_model_output_keeps_its_channels(net, head):
    # Only the layer that makes the first output is known as the classifier; the other head (box
    # beside cls, a conv mask beside the logits) would lose output channels and change what the
    # model returns.
    model, x = net().eval(), torch.zeros(1, 3, 16, 16)
    unprunable = []
    groups = find_groups(model, x, unprunable=unprunable)
    assert head not in [g.name for g in groups]
    reason = next(u.reason for u in unprunable if u.name == head)
    assert "changes the shape of a model output" in reason
    out = prune_to_widths(model, x, {g.name: g.channels // 2 for g in groups})(x)
    dense = model(x)
    shapes = lambda o: [t.shape for t in (o.values() if isinstance(o, dict) else o)]  # noqa: E731
    assert shapes(out) == shapes(dense)


class _CatShuffle(nn.Module):
    """Two convs concatenated, then a channel shuffle ``view(b, 2, c // 2, h, w)``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c, self.fc = nn.Conv2d(32, 32, 1), nn.Linear(32, 10)

    def forward(self, x):
        a = torch.relu(self.a(x))
        h = torch.cat([a, torch.relu(self.b(a))], 1)
        n, c, hh, ww = h.shape
        h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


def test_a_shuffle_that_holds_only_when_both_halves_are_cut_keeps_them_dense():
    # Both halves cut by one give 30 channels, which the shuffle splits; either one cut alone
    # gives 31, which it cannot: the profile's one-group exports failed before.
    model, x = _CatShuffle().eval(), torch.zeros(1, 3, 16, 16)
    unprunable = []
    groups = find_groups(model, x, unprunable=unprunable)
    assert [g.name for g in groups] == ["c"]
    assert {u.name for u in unprunable if "alone breaks the forward pass" in u.reason} == {"a", "b"}
    build_width_graph(model, x, groups)   # every group's narrower copy exports


class _CatThenDepthwise(nn.Module):
    """Two branches concatenated, then a depthwise conv (an Inception block before a MobileNet one);
    ``dense_style``: ``cat([a, conv(a)])`` as DenseNet does, with a BatchNorm before the depthwise."""

    def __init__(self, dense_style: bool = False):
        super().__init__()
        self.dense_style = dense_style
        self.b1, self.b2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8 if dense_style else 3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw, self.pw, self.fc = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 24, 1), nn.Linear(24, 10)

    def forward(self, x):
        a = self.b1(x)
        h = torch.cat([a, self.b2(a if self.dense_style else x)], 1)
        return self.fc(torch.relu(self.pw(self.dw(torch.relu(self.bn(h))))).mean((2, 3)))


@pytest.mark.parametrize("dense_style", [False, True])
def test_a_depthwise_conv_over_a_concatenation_stays_dense_and_every_cut_of_the_rest_runs(dense_style):
    # Its channels are the branches' together: cut by importance, a branch could keep no channel
    # (profile crashed in the width graph, prune built a conv of 0 outputs).
    model, x = _CatThenDepthwise(dense_style).eval(), torch.zeros(1, 3, 16, 16)
    unprunable = []
    groups = find_groups(model, x, unprunable=unprunable)
    assert [g.name for g in groups] == ["pw"]
    reason = next(u.reason for u in unprunable if u.name == "dw")
    assert "depthwise convolution over a concatenation (of b1, b2)" in reason
    for w in (1, 5, 12, 24):
        assert prune_to_widths(model, x, {"pw": w})(x).shape == (1, 10)


class _BareParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc((self.conv(x) * self.gamma).mean((2, 3)))


def test_torch_prunings_warnings_are_said_once_a_process():
    # "Unwrapped parameters detected" came some 20 times in one profile-and-prune run (nu11)
    import warnings

    from hwprune import groups as groups_module
    from hwprune.export import export_onnx

    model, x = _BareParameter().eval(), torch.zeros(1, 3, 8, 8)
    groups_module._WARNED.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        for _ in range(3):
            find_groups(model, x)
            export_onnx(model, x)   # changes the warning filters, which restarts Python's own once-rule
    unwrapped = [w for w in seen if "Unwrapped parameters" in str(w.message)]
    assert len(unwrapped) == 1, [str(w.message)[:60] for w in seen]


class _DictHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.logits, self.boxes = nn.Linear(8, 10), nn.Linear(8, 4)

    def forward(self, x):
        z = self.body(x)
        return {"logits": self.logits(z), "boxes": self.boxes(z)}


class _TupleHeads(_DictHeads):
    def forward(self, x):
        return tuple(super().forward(x).values())


def test_exported_outputs_are_named_after_the_models_outputs():
    # a dict's outputs came out as ['output', '27'] (nu11)
    import onnx

    from hwprune.export import export_onnx

    x = torch.zeros(1, 3, 8, 8)
    names = lambda m: [o.name for o in onnx.load_from_string(export_onnx(m.eval(), x)).graph.output]  # noqa: E731
    assert names(_DictHeads()) == ["logits", "boxes"]
    assert names(_TupleHeads()) == ["output_0", "output_1"]
    assert names(nn.Sequential(nn.Conv2d(3, 4, 1))) == ["output"]
