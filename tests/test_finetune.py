"""Accuracy-recovery strategies (standard, swd, agp, with and without distillation) on tiny models and data.

Every test runs on one CPU thread in about a second: a two-conv network on 8x8 two-class
images, plus ResNet-20 and MobileNetV2 (random weights) where the dependency groups need a
real residual or depthwise structure.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.finetune import (STRATEGIES, SelectiveWeightDecay, agp_prune_steps, agp_widths, keep_by_importance,
                              recover, swd_coefficient)
from hwprune.groups import channel_importance, find_groups, prune_to_widths
from hwprune.models import create_model
from hwprune.train import kd_loss, train
from test_train import _one_thread  # noqa: F401  (autouse: one torch thread)
from test_train import two_class_images as _two_class_images


def two_class_images(n: int = 128, **kw):
    """test_train's two-class toy images, 128 of them by default (the step counts below assume it)."""
    return _two_class_images(n, **kw)


def tiny_net(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2),
    )


X = torch.zeros(1, 1, 8, 8)
TARGET = {"0": 3, "3": 5}  # tiny_net's two groups, named after their root convs


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BN layers are all ones and zeros; spread them so every term of the importance counts."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.rand(m.bias.shape, generator=g) - 0.5
    return model


@pytest.fixture(scope="module")
def dense():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tiny_net()
    train(model, two_class_images(), epochs=2, batch_size=32, lr=0.4, progress=False, log=None)
    return model.eval()


def fast(**kw):
    return dict(train_ds=two_class_images(), batch_size=32, lr=0.2, seed=0, progress=False, log=None, **kw)


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


# --- SWD -------------------------------------------------------------------------------------

def test_swd_coefficient_grows_exponentially_from_a_min_to_a_max():
    a = [swd_coefficient(t, 11, 0.1, 1e5) for t in range(11)]
    assert a[0] == pytest.approx(0.1) and a[-1] == pytest.approx(1e5)
    ratios = [b / a_ for a_, b in zip(a, a[1:])]
    assert all(r == pytest.approx(10 ** 0.6) for r in ratios)  # a constant factor: 1e6 ** (1 / 10)
    assert swd_coefficient(5, 11, 2.0, 2.0) == 2.0
    assert swd_coefficient(0, 1, 0.1, 1e5) == 1e5  # a one-step run ends at a_max


@pytest.mark.parametrize("model_name", ["resnet20", "mobilenetv2"])
@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-scale"])
def test_swd_importance_equals_torch_pruning_group_importance(model_name, criterion):
    torch.manual_seed(1)
    model = randomise_bn(create_model(model_name, in_channels=1, num_classes=10, input_size=(16, 16)))
    x = torch.zeros(1, 1, 16, 16)
    reference = channel_importance(model, x, criterion)
    mine = SelectiveWeightDecay(model, x, {}, criterion).importance()
    assert set(mine) == set(reference)
    for name, ref in reference.items():
        torch.testing.assert_close(mine[name], ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(torch.argsort(mine[name], descending=True, stable=True),
                           torch.argsort(ref, descending=True, stable=True)), name


def test_swd_removed_channels_are_the_ones_the_importance_ranking_drops():
    torch.manual_seed(2)
    model = randomise_bn(create_model("resnet20", in_channels=1, num_classes=10, input_size=(16, 16)))
    x = torch.zeros(1, 1, 16, 16)
    widths = {g.name: max(1, g.channels // 3) for g in find_groups(model, x)}
    removed = SelectiveWeightDecay(model, x, widths).removed()
    kept = keep_by_importance(model, x, widths)
    assert set(removed) == set(widths)
    for name, mask in removed.items():
        assert sorted(torch.nonzero(~mask).flatten().tolist()) == kept[name], name
        assert int(mask.sum()) == mask.numel() - widths[name]


def test_swd_penalty_gradient_is_nonzero_exactly_on_the_removed_slices():
    torch.manual_seed(3)
    model = randomise_bn(tiny_net())
    swd = SelectiveWeightDecay(model, X, TARGET)
    removed = swd.removed()
    assert {n: int(m.sum()) for n, m in removed.items()} == {"0": 5, "3": 3}
    r1, r2 = removed["0"], removed["3"]
    conv1, bn1, conv2, bn2, fc = model[0], model[1], model[3], model[4], model[8]
    # Every slice the hard prune deletes: group "0" is conv1's filters and bias, bn1 and conv2's
    # input columns; group "3" is conv2's filters, bn2 and the classifier's input columns.
    masks = {
        conv1.weight: r1.view(-1, 1, 1, 1).expand_as(conv1.weight), conv1.bias: r1,
        bn1.weight: r1, bn1.bias: r1, bn2.weight: r2, bn2.bias: r2,
        conv2.weight: (r2.view(-1, 1, 1, 1) | r1.view(1, -1, 1, 1)).expand_as(conv2.weight),
        fc.weight: r2.view(1, -1).expand_as(fc.weight), fc.bias: torch.zeros_like(fc.bias, dtype=torch.bool),
    }
    penalty = swd.penalty(removed)
    expected = 0.5 * sum(float((p.detach()[m] ** 2).sum()) for p, m in masks.items())
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-6)  # the overlap of conv2 counts once
    penalty.backward()
    for p, m in masks.items():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)  # no path from the penalty: None
        assert torch.equal(grad[~m], torch.zeros_like(grad[~m]))  # kept channels: untouched
        torch.testing.assert_close(grad[m], p.detach()[m])         # removed: d(w^2/2)/dw = w
        assert (grad[m] != 0).all()


def test_swd_rejects_taylor_and_unknown_groups():
    with pytest.raises(HwpruneError, match="swd ranks channels"):
        SelectiveWeightDecay(tiny_net(), X, TARGET, criterion="taylor")
    with pytest.raises(HwpruneError, match="unknown group"):
        SelectiveWeightDecay(tiny_net(), X, {"nope": 1})


def test_swd_training_empties_the_removed_channels_so_the_cut_is_nearly_free(dense):
    start = SelectiveWeightDecay(dense, X, TARGET)
    removed_before = float(start.penalty().detach())
    r = recover("swd", dense, X, TARGET, epochs=3, val_ds=two_class_images(64, seed=5), swd_a_max=1e5,
                weight_decay=5e-3, **fast())
    info = r.info
    assert r.widths == TARGET and r.epochs == 3 and len(r.history) == 3
    assert info["removed_sq_norm"] < 2e-3 * 2 * removed_before  # the penalised slices decayed to ~0
    assert info["val_acc_after_prune"] == pytest.approx(info["val_acc_before_prune"], abs=0.02)
    assert info["a_max"] == 1e5 and info["mu"] == 5e-3 and info["swd_epochs"] == 3


def test_swd_can_spend_part_of_the_budget_fine_tuning(dense):
    r = recover("swd", dense, X, TARGET, epochs=3, swd_finetune_epochs=1, **fast())
    assert r.epochs == 3 and [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.info["swd_epochs"] == 2 and r.info["finetune_epochs"] == 1
    with pytest.raises(HwpruneError, match="swd_finetune_epochs"):
        recover("swd", dense, X, TARGET, epochs=1, swd_finetune_epochs=2, **fast())


# --- AGP -------------------------------------------------------------------------------------

def test_agp_widths_follow_the_cubic_schedule_and_end_at_the_target():
    dense, target = {"a": 64, "b": 10, "c": 16}, {"a": 8, "b": 10}
    steps = agp_widths(dense, target, 5)
    assert steps[-1] == {"a": 8, "b": 10, "c": 16}
    for k, widths in enumerate(steps, start=1):
        sparsity = (1 - 8 / 64) * (1 - (1 - k / 5) ** 3)  # s_f + (s_i - s_f)(1 - k/n)^3 with s_i = 0
        assert widths["a"] == round(64 * (1 - sparsity))
    a = [64] + [w["a"] for w in steps]
    assert all(x >= y for x, y in zip(a, a[1:])) and a[1] < 64  # monotone, and it starts cutting at once
    # The first steps cut most: the cubic front-loads the sparsity.
    assert (a[0] - a[1]) > (a[-2] - a[-1])


def test_agp_widths_snap_to_the_channel_multiple_within_target_and_dense():
    steps = agp_widths({"a": 30}, {"a": 6}, 6, channel_multiple=4)
    ws = [s["a"] for s in steps]
    assert ws[-1] == 6 and all(w % 4 == 0 for w in ws[:-1] if w not in (6, 30))
    assert all(6 <= w <= 30 for w in ws) and ws == sorted(ws, reverse=True)
    with pytest.raises(HwpruneError, match="at least one"):
        agp_widths({"a": 30}, {"a": 6}, 0)


def test_agp_prune_steps_start_at_zero_and_stop_at_the_end_fraction():
    assert agp_prune_steps(100, 4, 0.75) == [0, 25, 50, 75]
    assert agp_prune_steps(10, 1, 0.5) == [0]
    steps = agp_prune_steps(7, 5, 1.0)
    assert steps[0] == 0 and steps[-1] == 6 and steps == sorted(steps)  # never past the last step
    with pytest.raises(HwpruneError, match="end_fraction"):
        agp_prune_steps(10, 2, 1.5)


def test_agp_applies_the_schedule_and_reaches_exactly_the_target(dense):
    r = recover("agp", dense, X, TARGET, epochs=2, agp_steps=3, agp_end_fraction=0.5,
                val_ds=two_class_images(64, seed=5), **fast())
    schedule = r.info["schedule"]
    assert [s["widths"] for s in schedule] == agp_widths({"0": 8, "3": 8}, TARGET, 3)
    steps_total = 2 * (128 // 32)
    assert [s["step"] for s in schedule] == agp_prune_steps(steps_total, 3, 0.5) == [0, 2, 4]
    assert r.widths == TARGET and r.epochs == 2 and len(r.history) == 2
    assert 0.0 <= r.info["val_acc_after_prune"] <= 1.0
    assert r.model(torch.zeros(2, 1, 8, 8)).shape == (2, 2)


def test_agp_plan_is_in_dense_numbering(dense):
    # With a vanishing learning rate the weights do not move, so the final model must be the
    # dense weights sliced at the reported plan, whatever the intermediate renumbering was.
    r = recover("agp", dense, X, TARGET, epochs=1, agp_steps=3, agp_end_fraction=1.0, augment=False,
                **{**fast(), "lr": 1e-12})
    assert [len(s["widths"]) for s in r.info["schedule"]] == [2, 2, 2]
    k1, k2 = r.kept["0"], r.kept["3"]
    assert len(k1) == 3 and len(k2) == 5
    w1, w2 = conv_weights(r.model)
    d1, d2 = conv_weights(dense)
    torch.testing.assert_close(w1, d1[k1], atol=1e-6, rtol=0)
    torch.testing.assert_close(w2, d2[k2][:, k1], atol=1e-6, rtol=0)
    replayed = prune_to_widths(dense, X, {}, keep=r.kept)
    assert [w.shape for w in conv_weights(replayed)] == [w1.shape, w2.shape]


# --- standard, KD, and what every strategy promises ------------------------------------------------

def test_standard_with_keep_uses_exactly_those_channels(dense):
    keep = {"0": [0, 2, 7], "3": [1, 2, 3, 5, 6]}
    r = recover("standard", dense, X, TARGET, keep=keep, epochs=0, **fast())
    assert r.kept == keep and r.epochs == 0 and r.history == []
    w1, w2 = conv_weights(r.model)
    d1, d2 = conv_weights(dense)
    assert torch.equal(w1, d1[keep["0"]]) and torch.equal(w2, d2[keep["3"]][:, keep["0"]])
    with pytest.raises(HwpruneError, match="keep lists 3 channels but the width is 4"):
        recover("standard", dense, X, {"0": 4}, keep={"0": [0, 1, 2]}, epochs=0, **fast())


def test_kd_loss_matches_a_hand_computed_three_class_case():
    s, t, y = torch.tensor([[2.0, 0.0, -2.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([1])
    T, w = 2.0, 0.75

    def softmax(v):
        e = [math.exp(u / T) for u in v]
        return [u / sum(e) for u in e]

    ps, pt = softmax([2.0, 0.0, -2.0]), softmax([0.0, 2.0, 0.0])
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))  # KL(teacher || student)
    ce = -math.log(math.exp(0.0) / sum(math.exp(u) for u in (2.0, 0.0, -2.0)))
    assert float(kd_loss(s, t, y, T=T, alpha=w)) == pytest.approx(w * T * T * kl + (1 - w) * ce, rel=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_distils_from_a_frozen_teacher(dense, strategy):
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    plain = recover(strategy, dense, X, TARGET, epochs=1, **fast())
    distilled = recover(strategy, dense, X, TARGET, epochs=1, teacher=dense, kd_weight=1.0, kd_temperature=2.0,
                        **fast())
    assert distilled.info["kd"] == {"temperature": 2.0, "weight": 1.0} and plain.info["kd"] is None
    assert distilled.history[0]["loss"] != pytest.approx(plain.history[0]["loss"])  # another objective
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())  # teacher untouched
    assert not dense.training


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_the_target_widths_and_reports_its_cost(dense, strategy):
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    r = recover(strategy, dense, X, TARGET, epochs=2, val_ds=two_class_images(64, seed=5), **fast())
    assert r.strategy == strategy and r.widths == TARGET and r.epochs == 2
    assert [h["epoch"] for h in r.history] == [1, 2] and all("val_acc" in h for h in r.history)
    assert r.seconds > 0 and 0 < r.info["train_seconds"] <= r.seconds
    assert {n: len(k) for n, k in r.kept.items()} == TARGET
    assert [m.out_channels for m in r.model.modules() if isinstance(m, nn.Conv2d)] == [3, 5]
    with torch.no_grad():
        assert torch.isfinite(r.model(torch.randn(4, 1, 8, 8))).all()
    summary = r.summary()
    assert summary["strategy"] == strategy and summary["epochs"] == 2 and "model" not in summary
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())  # the dense model is never modified


def test_recover_rejects_bad_input_before_training(dense):
    with pytest.raises(HwpruneError, match="unknown fine-tuning strategy 'lora'"):
        recover("lora", dense, X, TARGET, epochs=1, **fast())
    with pytest.raises(HwpruneError, match="unknown group"):
        recover("swd", dense, X, {"9": 2}, epochs=1, **fast())
    with pytest.raises(HwpruneError, match=r"width 9 outside \[1, 8\]"):
        recover("agp", dense, X, {"0": 9}, epochs=1, **fast())
    with pytest.raises(HwpruneError, match="standard strategy only"):
        recover("swd", dense, X, TARGET, keep={"0": [0, 1, 2]}, epochs=1, **fast())
    with pytest.raises(HwpruneError, match="swd_a_min"):
        recover("swd", dense, X, TARGET, epochs=1, swd_a_min=10.0, swd_a_max=1.0, **fast())
    with pytest.raises(HwpruneError, match="epochs"):
        recover("standard", dense, X, TARGET, epochs=-1, **fast())
    with pytest.raises(HwpruneError, match="agp ranks channels from the weights"):
        recover("agp", dense, X, TARGET, epochs=1, criterion="taylor", **fast())
    with pytest.raises(HwpruneError, match="at least one pruning step"):
        recover("agp", dense, X, TARGET, epochs=1, agp_steps=0, **fast())
    with pytest.raises(HwpruneError, match="kd_weight"):
        recover("standard", dense, X, TARGET, epochs=1, teacher=dense, kd_weight=1.5, **fast())


class _FcFirst(nn.Module):
    """The classifier declared first, then a Linear squeeze-excitation pair (a nu10 model)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(24, 2)
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.se1, self.se2 = nn.Linear(24, 6), nn.Linear(6, 24)
        self.aux = nn.Linear(24, 3)   # declared last, never run

    def forward(self, x):
        x = self.c2(self.c1(x))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3))))))
        return self.fc((x * s[:, :, None, None]).mean((2, 3)))


def test_the_classifier_is_the_layer_that_makes_the_output_not_the_last_one_declared():
    from hwprune.groups import classifier_layer

    m, x = _FcFirst(), torch.zeros(1, 3, 16, 16)
    m.train()
    assert classifier_layer(m, x) is m.fc
    assert m.training and m.c1[1].training   # the pass that found it left the modes as they were
    groups = {g.name: g.channels for g in find_groups(m, x)}
    # the 24-channel c2/se2 group is searched (it vanished when se2 was taken for the classifier)
    assert groups == {"c1.0": 16, "se1": 6, "se2": 24}


def test_agp_leaves_alone_a_group_the_run_does_not_cut():
    from hwprune.finetune import _AGPHooks

    m, x = _FcFirst(), torch.zeros(1, 3, 16, 16)
    # the hooks know one group; prune_to_widths reports every group's kept channels (KeyError before)
    hooks = _AGPHooks(x, {"c1.0": 16}, {"c1.0": 8}, 1, 0.5, 1, "l1", lambda _m: None)
    assert hooks.prune(m, {"c1.0": 8})
    assert len(hooks.kept["c1.0"]) == 8 and set(hooks.kept) == {"c1.0"}
