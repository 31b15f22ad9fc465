"""Training loop, distillation loss, accuracy proxy and ``pretrain`` on tiny synthetic data.

Everything here runs in seconds on one CPU thread; the data-parallel test starts two
processes with ``torchrun`` (gloo) on a 256-image set.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwprune.cli import cli
from hwprune.data import ImageDataset
from hwprune.errors import HwpruneError
from hwprune.groups import find_groups, prune_to_widths
from hwprune.models import create_model, load_weights
from hwprune.pretrain import pretrain
from hwprune.proxy import AccuracyProxy, recalibrate_bn
from hwprune.train import TrainHooks, augment_batch, cosine_lr, evaluate, kd_loss, train


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def two_class_images(n: int = 256, seed: int = 0, size: int = 8) -> ImageDataset:
    """Class 0 is bright on top, class 1 bright at the bottom; survives crops and h-flips."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, 1, size, size))
    half = size // 2
    images[labels == 0, :, : half - 1, :] += 150
    images[labels == 1, :, half + 1 :, :] += 150
    return ImageDataset(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels),
                        (0.3,), (0.3,), ("top", "bottom"), "two-class")


def tiny_net(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2),
    )


def quiet(**kw):
    return dict(progress=False, log=None, **kw)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = two_class_images()
    model = tiny_net()
    result = train(model, ds, epochs=3, batch_size=32, lr=0.4, **quiet())
    return model, ds, result


# --- kd_loss ---------------------------------------------------------------------------------

def test_kd_loss_matches_a_hand_computed_two_class_case():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    # T=2: student probs softmax([0.5, 0]), teacher softmax([0, 0.5]); the two differ by
    # tanh(0.25) and their log-ratio is 0.5, so KL(teacher || student) = 0.5 * tanh(0.25).
    kl = 0.5 * math.tanh(0.25)
    ce = math.log(1.0 + math.exp(-1.0))  # -log softmax([1, 0])[0]
    expected = 0.5 * 2.0**2 * kl + 0.5 * ce
    assert float(kd_loss(s, t, y, T=2.0, alpha=0.5)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(s, t, y, T=2.0, alpha=0.0)) == pytest.approx(ce, rel=1e-6)
    assert float(kd_loss(s, t, y, T=2.0, alpha=1.0)) == pytest.approx(4.0 * kl, rel=1e-6)


def test_kd_loss_is_a_batch_mean_and_stable_for_huge_logits():
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    one = kd_loss(s[:1], t[:1], y[:1], T=3.0, alpha=0.7)
    assert float(kd_loss(s, t, y, T=3.0, alpha=0.7)) == pytest.approx(float(one), rel=1e-6)
    big_s = torch.tensor([[1e4, -1e4]], requires_grad=True)
    loss = kd_loss(big_s, torch.tensor([[-1e4, 1e4]]), torch.tensor([1]), T=4.0, alpha=0.9)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big_s.grad).all()


# --- schedule and augmentation ---------------------------------------------------------------

def test_cosine_lr_runs_from_peak_to_zero():
    lrs = [cosine_lr(s, 100, 0.2) for s in range(101)]
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[50] == pytest.approx(0.1)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_augment_batch_crops_a_shifted_window_and_maybe_flips():
    images = torch.randint(1, 255, (6, 1, 8, 8), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(0), padding=1)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(len(images)):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)


def test_augment_batch_returns_plain_nchw_strides_for_one_channel():
    # A one-channel B x H x W x 1 gather permuted to NCHW is "contiguous" with channels-last
    # strides; torch's CPU conv backward crashes on that layout at odd channel counts.
    out = augment_batch(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0), padding=1)
    assert out.stride() == (64, 64, 8, 1)
    rgb = augment_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator(), padding=1)
    assert rgb.stride() == (192, 64, 8, 1)


# --- train() ---------------------------------------------------------------------------------

def test_train_learns_a_separable_task_with_a_cosine_schedule(trained):
    model, ds, result = trained
    assert evaluate(model, ds) > 0.9
    assert result.stopped_reason == "completed" and result.epochs == 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.lr == pytest.approx(0.4 * 32 / 128)  # linear scaling to the batch size
    assert result.history[0]["lr"] > 0.5 * result.lr
    assert result.history[-1]["lr"] < 0.01 * result.lr  # the cosine ends near zero
    assert result.history[-1]["acc"] > 0.9 and result.history[-1]["loss"] < result.history[0]["loss"]


def test_train_is_reproducible_for_a_seed_and_reports_validation():
    ds, val = two_class_images(128, seed=1), two_class_images(64, seed=2)
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = tiny_net(4)
        r = train(model, ds, epochs=1, batch_size=32, seed=5, val_ds=val, **quiet())
        states.append(model.state_dict())
        assert r.best_val_acc == r.history[0]["val_acc"] and 0.0 <= r.best_val_acc <= 1.0
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


class _Interrupt(Exception):
    pass


def _stop_after_epoch(n: int):
    """A log callback that interrupts training once epoch ``n``'s line is written (like Ctrl-C)."""
    def log(message: str) -> None:
        if message.startswith(f"epoch {n}/"):
            raise _Interrupt(message)
    return log


def _fresh(width: int = 4) -> nn.Module:
    torch.manual_seed(3)
    return tiny_net(width)


def test_train_resumed_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    ds, val = two_class_images(128, seed=1), two_class_images(64, seed=2)
    settings = dict(epochs=3, batch_size=32, lr=0.4, seed=5, val_ds=val, progress=False)
    straight = _fresh()
    whole = train(straight, ds, log=None, **settings)

    state = str(tmp_path / "run.resume")
    model = _fresh()
    with pytest.raises(_Interrupt):
        train(model, ds, log=_stop_after_epoch(2), resume_path=state, **settings)
    assert torch.load(state, weights_only=True)["epoch"] == 2
    lines = []
    model = _fresh()  # a new process would start from fresh weights too
    resumed = train(model, ds, log=lines.append, resume_path=state, **settings)
    assert resumed.resumed_at_epoch == 2 and resumed.epochs == 3 and whole.resumed_at_epoch == 0
    assert any(m.startswith(f"resuming from {state} after epoch 2/3") for m in lines)
    assert sum(m.startswith("epoch ") for m in lines) == 1  # only epoch 3 was trained again
    for key, value in straight.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in whole.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == strip
    assert resumed.best_val_acc == whole.best_val_acc


def test_train_starts_over_from_a_state_of_another_recipe_or_an_unreadable_file(tmp_path):
    ds = two_class_images(64, seed=1)
    state = str(tmp_path / "run.resume")
    train(_fresh(), ds, epochs=1, batch_size=32, lr=0.4, seed=5, progress=False, log=None, resume_path=state)
    lines = []
    r = train(_fresh(), ds, epochs=2, batch_size=32, lr=0.2, seed=5, progress=False, log=lines.append,
              resume_path=state)
    assert r.resumed_at_epoch == 0 and r.epochs == 2
    assert any("another recipe (differs in epochs, lr)" in m for m in lines)
    assert torch.load(state, weights_only=True)["fingerprint"]["lr"] == 0.2  # replaced by this run's state

    with open(state, "wb") as f:
        f.write(b"not a torch file")
    lines.clear()
    r = train(_fresh(), ds, epochs=1, batch_size=32, lr=0.4, seed=5, progress=False, log=lines.append,
              resume_path=state)
    assert r.resumed_at_epoch == 0 and any("not a readable training state" in m for m in lines)
    with pytest.raises(HwpruneError, match="resume_path cannot be combined with hooks"):
        train(_fresh(), ds, epochs=1, resume_path=state, hooks=TrainHooks(), **quiet())


def test_train_with_a_teacher_distills(trained):
    teacher, ds, _ = trained
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(1)
    student = tiny_net(4)
    train(student, ds, epochs=3, batch_size=32, lr=0.4, teacher=teacher, kd_alpha=0.5, **quiet())
    assert evaluate(student, ds) > 0.9
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())  # left as it was given


class _NaNAfter(nn.Module):
    """Identity until its ``calls``-th training forward, then NaN: a loss that blows up."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, x):
        if self.training:
            self.seen += 1
            if self.seen >= self.calls:
                return x * float("nan")
        return x


def test_nan_loss_restores_the_last_good_epoch_and_saves_it(tmp_path):
    ds = two_class_images(128)
    torch.manual_seed(0)
    model = nn.Sequential(tiny_net(4), _NaNAfter(calls=4 + 2))  # 4 steps per epoch: epoch 2, step 2
    snapshots = {}

    def log(message):
        if message.startswith("epoch 1/"):
            snapshots[1] = {k: v.clone() for k, v in model.state_dict().items()}

    ckpt = tmp_path / "last.pt"
    with pytest.raises(HwpruneError, match=r"NaN loss at epoch 2 step 2; kept the last good checkpoint \(epoch 1\)"):
        train(model, ds, epochs=3, batch_size=32, log=log, progress=False, checkpoint_path=str(ckpt))
    state = model.state_dict()
    saved = torch.load(ckpt, weights_only=True)
    for key, value in snapshots[1].items():
        assert torch.equal(state[key], value), key
        assert torch.equal(saved[key], value), key
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_can_be_returned_instead_of_raised():
    torch.manual_seed(0)
    model = nn.Sequential(tiny_net(4), _NaNAfter(calls=1))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, two_class_images(64), epochs=2, batch_size=32, raise_on_nan=False, **quiet())
    assert result.stopped_reason == "nan" and result.epochs == 0 and result.history == []
    assert all(torch.equal(initial[k], v) for k, v in model.state_dict().items())  # epoch 0 = the start


def test_train_rejects_bad_arguments():
    with pytest.raises(HwpruneError, match="lr"):
        train(tiny_net(), two_class_images(8), epochs=1, lr=0.0, **quiet())
    with pytest.raises(HwpruneError, match="empty"):
        train(tiny_net(), two_class_images(8).subset([]), epochs=1, **quiet())


class _RecordingHooks(TrainHooks):
    """Records its calls, optionally adds ``strength * ||w||^2`` and prunes the first conv at one step."""

    def __init__(self, prune_at: int | None = None, strength: float = 0.0):
        self.calls: list[tuple[int, int]] = []
        self.training_after_prune: list[bool] = []
        self.prune_at, self.strength, self.pruned_state = prune_at, strength, None

    def before_step(self, model, step, total_steps):
        self.calls.append((step, total_steps))
        if step != self.prune_at:
            return False
        prune_to_widths(model, torch.zeros(1, 1, 8, 8), {"0": 2}, inplace=True)  # leaves eval mode
        self.pruned_state = {k: v.clone() for k, v in model.state_dict().items()}
        return True

    def extra_loss(self, model, step, total_steps):
        if self.pruned_state is not None:
            self.training_after_prune.append(model.training)
        if not self.strength:
            return None
        return self.strength * sum((p * p).sum() for p in model.parameters())


def test_train_hooks_see_the_global_step_clock_and_add_to_the_loss():
    ds = two_class_images(64)
    torch.manual_seed(0)
    hooks = _RecordingHooks(strength=5.0)
    model = tiny_net(4)
    result = train(model, ds, epochs=2, batch_size=32, lr=0.4, augment=False, hooks=hooks, **quiet())
    assert hooks.calls == [(s, 4) for s in range(4)]  # 2 steps per epoch, one clock over both epochs
    torch.manual_seed(0)
    plain = tiny_net(4)
    train(plain, ds, epochs=2, batch_size=32, lr=0.4, augment=False, **quiet())
    with torch.no_grad():
        norm = lambda m: float(sum((p * p).sum() for p in m.parameters()))  # noqa: E731
        assert norm(model) < 0.5 * norm(plain)  # the extra term pulled the weights in
    assert result.history[0]["loss"] < 5.0  # the reported loss is the task loss alone


def test_train_hooks_may_prune_between_steps_and_training_goes_on():
    torch.manual_seed(0)
    model = tiny_net(4)
    hooks = _RecordingHooks(prune_at=3)
    result = train(model, two_class_images(128), epochs=2, batch_size=32, lr=0.4, hooks=hooks, **quiet())
    assert result.epochs == 2 and result.stopped_reason == "completed"
    assert model[0].out_channels == 2 and model[3].in_channels == 2
    assert hooks.training_after_prune == [True] * 5  # steps 3..7 ran in training mode again
    after = model.state_dict()
    # The rebuilt optimiser updates the new, smaller parameters.
    assert not torch.equal(after["0.weight"], hooks.pruned_state["0.weight"])
    assert not torch.equal(after["3.weight"], hooks.pruned_state["3.weight"])


def test_nan_after_pruning_restores_the_pruned_weights():
    class PruneInner(_RecordingHooks):
        def before_step(self, model, step, total_steps):
            return super().before_step(model[0], step, total_steps)

    torch.manual_seed(0)
    model = nn.Sequential(tiny_net(4), _NaNAfter(calls=3))  # 4 steps per epoch: NaN at epoch 1 step 3
    hooks = PruneInner(prune_at=1)
    with pytest.raises(HwpruneError, match=r"kept the last good checkpoint \(epoch 1 step 2, after pruning\)"):
        train(model, two_class_images(128), epochs=2, batch_size=32, hooks=hooks, **quiet())
    assert model[0][0].out_channels == 2  # the pruned shapes, not the epoch-0 ones
    state = model[0].state_dict()
    assert all(torch.equal(state[k], v) for k, v in hooks.pruned_state.items())


# --- BN re-estimation and the accuracy proxy --------------------------------------------------

def test_recalibrate_bn_gives_the_cumulative_average_of_the_batches():
    torch.manual_seed(0)
    model = tiny_net(4)
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    batches = [torch.randn(16, 1, 8, 8) + i for i in range(3)]
    recalibrate_bn(model, batches)
    with torch.no_grad():
        conv_out = [model[0](x) for x in batches]
    expected_mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in conv_out]).mean(0)
    expected_var = torch.stack([c.transpose(0, 1).flatten(1).var(1, unbiased=True) for c in conv_out]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, rtol=1e-4)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1 and not model.training


def test_accuracy_proxy_caches_and_re_estimates_bn(trained):
    model, ds, _ = trained
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.zeros(1, 1, 8, 8)
    proxy = AccuracyProxy(model, example, ds, two_class_images(100, seed=7), bn_batches=2, bn_batch_size=32,
                          val_samples=50)
    names = [g.name for g in find_groups(tiny_net(), example)]
    assert [g.name for g in proxy.groups] == names
    widths = {names[0]: 4, names[1]: 6}
    first = proxy(widths)
    assert 0.0 <= first <= 1.0
    assert proxy(dict(widths)) == first
    assert (proxy.evaluations, proxy.cache_hits) == (1, 1)
    dense = proxy({})
    assert proxy({n: 8 for n in names}) == dense  # naming the dense width is the same architecture
    assert (proxy.evaluations, proxy.cache_hits) == (2, 2)
    assert dense > 0.9  # a trained model with re-estimated BN still solves the task

    pruned = proxy.pruned_model(widths)
    assert pruned[0].out_channels == 4 and pruned[3].out_channels == 6
    kept = proxy.keep_indices(widths)[names[0]]
    assert len(kept) == 4 and kept == sorted(kept)
    # Re-estimated statistics differ from the dense model's, kept channel by kept channel.
    assert not torch.allclose(pruned[4].running_mean, model[4].running_mean[proxy.keep_indices(widths)[names[1]]])
    for key, value in model.state_dict().items():  # the dense model is untouched
        assert torch.equal(dense_state[key], value), key

    with pytest.raises(HwpruneError, match="unknown group"):
        proxy({"nope": 1})
    with pytest.raises(HwpruneError, match="outside"):
        proxy({names[0]: 0})


def test_accuracy_proxy_without_cache_evaluates_every_call(trained):
    model, ds, _ = trained
    proxy = AccuracyProxy(model, torch.zeros(1, 1, 8, 8), ds, ds, bn_batches=1, bn_batch_size=16,
                          val_samples=20, cache=False, threads=1)
    a, b = proxy({}), proxy({})
    assert a == b and (proxy.evaluations, proxy.cache_hits) == (2, 0)


def test_accuracy_proxy_short_training_trains_the_cut_deterministically(trained):
    model, ds, _ = trained
    example = torch.zeros(1, 1, 8, 8)
    val = two_class_images(100, seed=7)
    names = [g.name for g in find_groups(tiny_net(), example)]
    widths = {names[0]: 1, names[1]: 2}
    kw = dict(bn_batches=2, bn_batch_size=32, val_samples=100)
    zero_shot = AccuracyProxy(model, example, ds, val, **kw)
    short = [AccuracyProxy(model, example, ds, val, train_steps=30, train_batch_size=32, train_lr=0.1, **kw)
             for _ in range(2)]
    a, b = short[0](widths), short[1](widths)
    assert a == b  # fixed batches, fixed order: the same widths give the same score
    trained_cut, raw_cut = short[0].pruned_model(widths), zero_shot.pruned_model(widths)
    assert not torch.equal(trained_cut[0].weight, raw_cut[0].weight)  # the steps train the pruned copy ...
    for key, value in model.state_dict().items():  # ... never the dense model
        assert torch.equal(zero_shot.model.state_dict()[key], value), key
    assert not short[0].pruned_model(widths).training
    with pytest.raises(HwpruneError, match="train_steps"):
        AccuracyProxy(model, example, ds, val, train_steps=-1)


# --- pretrain ---------------------------------------------------------------------------------

def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path):
    """A Fashion-MNIST folder (Debian's gzipped IDX names) with 120 train and 40 test images."""
    folder = tmp_path / "fmnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28))
        for c in range(10):  # a bright band per class, so the set is learnable
            images[labels == c, 2 * c + 4 : 2 * c + 7, :] += 200
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def test_pretrain_writes_a_loadable_checkpoint_and_its_sidecar(tiny_fmnist, tmp_path):
    out = tmp_path / "ckpt" / "r20.pt"
    r = pretrain("resnet20", f"fashion-mnist:{tiny_fmnist}", epochs=1, out=str(out), batch_size=32,
                 seed=1, progress=False, log=None)
    model = load_weights(create_model("resnet20", in_channels=1, num_classes=10, input_size=(28, 28)), str(out))
    assert isinstance(torch.load(out, weights_only=True), dict)
    side = json.loads((tmp_path / "ckpt" / "r20.pt.json").read_text())
    assert side["test_accuracy"] == r.test_accuracy and 0.0 <= r.test_accuracy <= 1.0
    assert side["test_accuracy"] == pytest.approx(evaluate(model, _load(tiny_fmnist, "test")))
    assert 0.0 <= side["val_accuracy"] <= 1.0 and side["seconds"] > 0
    for key, value in {"model": "resnet20", "epochs": 1, "batch_size": 32, "seed": 1, "lr": 0.1,
                       "val_fraction": 0.1, "split_seed": 0}.items():
        assert side["recipe"][key] == value, key
    assert side["splits"] == {"train": 108, "val": 12, "test": 40}
    assert side["environment"]["torch"] == torch.__version__
    assert side["command"].startswith("hwprune pretrain --model resnet20") and "--epochs 1" in side["command"]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["r20.pt", "r20.pt.json"]  # no temporary leftovers


def test_pretrain_run_again_after_an_interruption_continues_to_the_same_checkpoint(tiny_fmnist, tmp_path):
    data = f"fashion-mnist:{tiny_fmnist}"
    pretrain("resnet20", data, epochs=2, out=str(tmp_path / "a.pt"), batch_size=32, seed=1, progress=False, log=None)
    out = tmp_path / "b.pt"
    with pytest.raises(_Interrupt):
        pretrain("resnet20", data, epochs=2, out=str(out), batch_size=32, seed=1, progress=False,
                 log=_stop_after_epoch(1))
    assert (tmp_path / "b.pt.resume").is_file() and (tmp_path / "b.pt.partial").is_file() and not out.exists()
    r = pretrain("resnet20", data, epochs=2, out=str(out), batch_size=32, seed=1, progress=False, log=None)
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    side = json.loads((tmp_path / "b.pt.json").read_text())
    assert side["resumed_at_epoch"] == 1 and len(side["history"]) == 2 and r.train.epochs == 2
    assert not (tmp_path / "b.pt.resume").exists() and not (tmp_path / "b.pt.partial").exists()


def _load(folder, split):
    from hwprune.data import load_dataset

    return load_dataset(f"fashion-mnist:{folder}", split)


def test_pretrain_command_prints_accuracy_and_errors_in_one_line(tiny_fmnist, tmp_path):
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(cli, ["pretrain", "--model", "resnet20", "--data", f"fashion-mnist:{tiny_fmnist}",
                                      "--epochs", "1", "--batch-size", "64", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout and out.is_file() and (tmp_path / "m.pt.json").is_file()

    bad = CliRunner().invoke(cli, ["pretrain", "--model", "nonet", "--data", f"fashion-mnist:{tiny_fmnist}",
                                   "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2
    assert bad.stderr.strip().startswith("error: unknown model 'nonet'") and len(bad.stderr.strip().splitlines()) == 1


# --- data-parallel under torchrun -------------------------------------------------------------

_DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import torch
    from torch import nn
    from hwprune.data import ImageDataset
    from hwprune.train import train

    torch.set_num_threads(1)
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    rng = np.random.default_rng(0)
    labels = np.arange(256) % 2
    images = rng.integers(0, 60, size=(256, 1, 8, 8))
    images[labels == 0, :, :3, :] += 150
    images[labels == 1, :, 5:, :] += 150
    ds = ImageDataset(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels), (0.3,), (0.3,), ("a", "b"))
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    seen = [0]
    model.register_forward_pre_hook(lambda m, a: seen.__setitem__(0, seen[0] + (len(a[0]) if m.training else 0)))

    def log(message):
        with open(os.path.join(out, f"log{rank}.txt"), "a") as f:
            f.write(message + "\\n")

    r = train(model, ds, epochs=2, batch_size=32, lr=0.4, val_ds=ds, log=log, progress=False,
              checkpoint_path=os.path.join(out, "ckpt.pt"), resume_path=os.path.join(out, "state.resume"))
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": r.rank, "world_size": r.world_size, "epochs": r.epochs, "seen": seen[0],
                   "params": params, "val_acc": r.best_val_acc}, f)
""")


def test_torchrun_two_ranks_share_the_work_and_rank0_saves(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 and r["epochs"] == 2 for r in ranks)
    # Each rank trains on its half: 128 images = 8 steps of 16 per epoch, 2 epochs.
    assert [r["seen"] for r in ranks] == [256, 256]
    assert np.allclose(ranks[0]["params"], ranks[1]["params"], atol=1e-6)  # gradients were all-reduced
    assert ranks[0]["val_acc"] == ranks[1]["val_acc"] > 0.5
    assert (tmp_path / "log0.txt").read_text().count("epoch ") >= 2 and not (tmp_path / "log1.txt").exists()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in saved)
    state = torch.load(tmp_path / "state.resume", weights_only=True)  # each rank's augmentation stream
    assert state["epoch"] == 2 and state["fingerprint"]["world_size"] == 2 and len(state["aug_rng"]) == 2
    assert not torch.equal(state["aug_rng"][0], state["aug_rng"][1])
    assert np.allclose(torch.cat([saved[k].flatten() for k in ("0.weight", "0.bias")]).numpy(),
                       ranks[0]["params"][: saved["0.weight"].numel() + saved["0.bias"].numel()], atol=1e-6)


def test_await_release_waits_until_other_holders_let_go():
    # A collective's worker thread holds the tensors for a moment after the call returns; a
    # view stands in for it here (it holds a reference to its base) and is dropped by a thread.
    import threading
    import time

    from hwprune.train import _await_release, _use_counts

    t = torch.zeros(4)
    counts = _use_counts([t])
    holder = [t.view(4)]
    assert t._use_count() > counts[0]
    threading.Timer(0.2, holder.clear).start()
    t0 = time.monotonic()
    _await_release([t], counts, timeout_s=5.0)
    assert 0.15 < time.monotonic() - t0 < 4.0 and t._use_count() == counts[0]

    still_held = t.view(4)  # never released: it gives up after the timeout instead of hanging
    t0 = time.monotonic()
    _await_release([t], counts, timeout_s=0.1)
    assert 0.1 <= time.monotonic() - t0 < 2.0 and still_held is not None
    _await_release([t], None)  # a torch without _use_count: nothing to wait on
