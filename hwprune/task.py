"""What the model is for: how a candidate is scored, how the pruned model recovers, how the result is judged.

A prune run needs three things that depend on the user's task, not on the hardware:

- the search **objective** (widths -> score, higher is better): the built-in classification
  proxy on a dataset, or the user's ``score_fn(model) -> float``;
- the **recovery** of the chosen architecture: the built-in recipes (``agp``, ``swd``,
  ``standard``) on a dataset, or the user's ``finetune_fn(model, teacher) -> model`` (their own
  loop, Lightning, DDP, FSDP...), or none;
- the **evaluation** of the dense and the pruned model for the report: top-1 on the test split
  and/or the user's score.

:class:`Task` holds whichever the user gave; with ``score_fn`` and ``finetune_fn`` no dataset is
needed at all.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwprune.data import ImageDataset
from hwprune.errors import HwpruneError, user_code
from hwprune.objective import PrunedScore, UserScore, call_score_fn

ScoreFn = Callable[[nn.Module], float]
FinetuneFn = Callable[[nn.Module, nn.Module], nn.Module]


# A dense model at most this many times chance on CHECK_SAMPLES validation images is called
# untrained: an untrained net scores about chance, 1/classes, give or take a few points.
UNTRAINED_FACTOR = 2.0
CHECK_SAMPLES = 1000


@dataclass
class Datasets:
    """The built-in recipe's data: train (minus the held-out val split), val and test, and its name."""

    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset

    @classmethod
    def load(cls, spec: str) -> Datasets:
        """``fashion-mnist[:DIR]``, ``cifar10:DIR`` or ``imagefolder:DIR``, split as ``hwprune pretrain`` splits."""
        from hwprune.data import load_dataset, train_val_split
        from hwprune.pretrain import SPLIT_SEED, VAL_FRACTION

        full = load_dataset(spec, "train")
        train, val = train_val_split(full, val_fraction=VAL_FRACTION, seed=SPLIT_SEED)
        return cls(spec, train, val, load_dataset(spec, "test"))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.train.in_channels, *self.train.input_size)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


@dataclass
class Recovered:
    """The recovered model, the channels it kept (dense numbering, every group) and the report's entry."""

    model: nn.Module
    kept: dict[str, list[int]]
    report: dict[str, Any]


@dataclass
class Evaluation:
    """How good a model is: test top-1 (with data) and the user's score (with ``score_fn``)."""

    accuracy: float | None = None
    score: float | None = None


@dataclass
class RecoverySettings:
    """The built-in recovery's recipe (``hwprune prune``'s fine-tuning options; their defaults live there)."""

    strategy: str
    epochs: int
    lr: float
    batch_size: int
    seed: int
    criterion: str
    kd: bool
    kd_temperature: float
    kd_weight: float
    channel_multiple: int
    show_progress: bool


@dataclass
class Task:
    """The user's task: any of a dataset, a ``score_fn`` and a ``finetune_fn`` (see the module docstring)."""

    data: Datasets | None = None
    score_fn: ScoreFn | None = None
    finetune_fn: FinetuneFn | None = None
    bn_batches: list[torch.Tensor] | None = None  # inputs for re-estimating BN before score_fn
    data_spec: str | None = None  # loaded into ``data`` when given (``fashion-mnist``, ``cifar10:DIR``...)

    def __post_init__(self) -> None:
        if self.score_fn is not None and not callable(self.score_fn):
            raise HwpruneError(f"score_fn must be callable (model -> float), got {type(self.score_fn).__name__}")
        if self.data is None and self.data_spec is not None:
            self.data = Datasets.load(self.data_spec)
        if self.data is None and self.score_fn is None:
            raise HwpruneError("nothing to score candidates with: pass score_fn= (model -> float, higher is "
                               "better) or data= (a dataset for the built-in accuracy proxy)")
        if self.finetune_fn is not None and not callable(self.finetune_fn):
            raise HwpruneError(f"finetune_fn must be callable ((model, teacher) -> model), "
                               f"got {type(self.finetune_fn).__name__}")

    def check_input_shape(self, shape: Sequence[int], what: str) -> None:
        """The model's input shape (C, H, W) against the built-in dataset's images, which are
        not resized: a mismatch is refused before any measuring, not minutes later in training."""
        if self.data is None or tuple(shape) == tuple(self.data.input_shape):
            return
        have, want = "x".join(map(str, shape)), "x".join(map(str, self.data.input_shape))
        raise HwpruneError(f"{what} says the model takes {have} inputs (C x H x W) but the {self.data_spec or 'given'} images are {want}, "
                           f"and the built-in data is not resized: use a model input of {want} or data of {have}")

    def check_output(self, out: Any) -> None:
        """With a dataset the built-in proxy, recipe and test accuracy read the model's output as
        class scores: one (batch, classes) tensor. Any other output is refused before the dense
        model is measured, not as a traceback minutes into the search."""
        if self.data is None:
            return
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            if out.shape[1] < self.data.num_classes:   # the labels would index past the scores
                raise HwpruneError(f"the model gives {out.shape[1]} class scores, but {self.data.name} has "
                                   f"{self.data.num_classes} classes: build it with {self.data.num_classes} outputs "
                                   "(a file factory is passed num_classes= when it takes it)")
            return
        kind = (f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                else f"a {type(out).__name__}")
        raise HwpruneError(f"the model returns {kind}, but --data scores and trains it on class scores, one "
                           "(batch, classes) tensor: return the logits (from Python, score_fn= and finetune_fn= "
                           "without data= take any output)")

    def check_trained(self, dense: nn.Module, log: Callable[[str], None]) -> None:
        """With a dataset, a dense model that scores about chance on it is said before the search:
        pruning an untrained model (a file factory without --weights) gives a run of 10%
        accuracies that looks like a result."""
        if self.data is None or self.score_fn is not None:
            return
        from hwprune.train import evaluate

        val = self.data.val.subset(range(min(CHECK_SAMPLES, len(self.data.val))))
        accuracy, classes = evaluate(dense, val), self.data.num_classes
        if accuracy <= UNTRAINED_FACTOR / classes:
            log(f"warning: the dense model scores {accuracy:.1%} on {len(val)} validation images of {self.data.name}, "
                f"about chance for {classes} classes: it looks untrained (give its weights with --weights / weights=, "
                "or train it with `hwprune pretrain`)")

    def objective(self, dense: nn.Module, x: torch.Tensor, *, criterion: str, val_samples: int,
                  train_steps: int) -> PrunedScore:
        """The search objective; one thread, as the agents keep their own small networks on one.

        On a shared machine a second thread mostly waits (measured 0.6 s vs 4.2 s per
        evaluation under load on 2 cores).
        """
        if self.score_fn is not None:
            return UserScore(dense, x, self.score_fn, criterion=criterion, bn_batches=self.bn_batches, threads=1)
        from hwprune.proxy import AccuracyProxy

        return AccuracyProxy(dense, x, self.data.train, self.data.val, criterion=criterion, val_samples=val_samples,
                             threads=1, train_steps=train_steps, train_lr=0.02)

    def recover(self, dense: nn.Module, pruned: nn.Module, kept: dict[str, list[int]], widths: Mapping[str, int],
                x: torch.Tensor, settings: RecoverySettings, log: Callable[[str], None]) -> Recovered:
        """Recover the chosen architecture: the user's loop, else the built-in recipe, else none.

        The recovered model comes back on the CPU (a loop may have trained it on a GPU), where it
        is exported and measured."""
        if self.finetune_fn is not None:
            rec = _user_recovery(self.finetune_fn, dense, pruned, kept)
        elif self.data is None:
            log("no recovery: pass finetune_fn= (your training loop) or data= (the built-in recipe)")
            rec = Recovered(pruned, kept, {"strategy": "none", "epochs": 0, "seconds": 0.0, "history": []})
        else:
            rec = _builtin_recovery(self.data, dense, pruned, kept, widths, x, settings, log)
        rec.model = rec.model.cpu().eval()
        return rec

    def evaluate(self, model: nn.Module) -> Evaluation:
        from hwprune.train import evaluate

        return Evaluation(evaluate(model, self.data.test) if self.data is not None else None,
                          call_score_fn(self.score_fn, model) if self.score_fn is not None else None)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A teacher: a copy in eval mode with no gradients, so the user's loop cannot change the dense model."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _user_recovery(finetune_fn: FinetuneFn, dense: nn.Module, pruned: nn.Module,
                   kept: dict[str, list[int]]) -> Recovered:
    """``finetune_fn(pruned, teacher)``, checked: it must return a module of the same architecture."""
    shapes, dtypes = param_shapes(pruned), {p.dtype for p in pruned.parameters()}  # before: it may change them in place
    started = time.perf_counter()
    with user_code("finetune_fn", finetune_fn):
        model = finetune_fn(pruned, frozen_copy(dense))
    if model is None:
        raise HwpruneError("finetune_fn returned None; it must return the fine-tuned model "
                           "(return the model it was given, trained)")
    if not isinstance(model, nn.Module):
        raise HwpruneError(f"finetune_fn returned {type(model).__name__}, not a torch.nn.Module")
    model = _unwrapped(model)
    other = {p.dtype for p in model.parameters()} - dtypes
    if other:
        raise HwpruneError(f"finetune_fn returned a model in {', '.join(sorted(str(d) for d in other))}; the "
                           "model it was given is exported and measured in float32: return it in float32 "
                           "(model.float()), e.g. after training with autocast")
    after = param_shapes(model)
    if after != shapes:
        changed = sorted(k for k in set(shapes) | set(after) if shapes.get(k) != after.get(k))
        raise HwpruneError(f"finetune_fn changed the pruned architecture ({len(changed)} tensor(s) differ, first: "
                           f"{changed[0]}); it must train the model it is given, not reshape it")
    return Recovered(model.eval(), kept, {"strategy": "finetune_fn", "function": _name(finetune_fn),
                                          "seconds": time.perf_counter() - started, "history": []})


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module a training loop's wrapper holds: ``DataParallel``/``DistributedDataParallel``'s
    ``.module``, ``torch.compile``'s ``_orig_mod`` (returning the wrapper is a natural slip, and
    its parameter names differ from the model's)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _builtin_recovery(data: Datasets, dense: nn.Module, pruned: nn.Module, kept: dict[str, list[int]],
                      widths: Mapping[str, int], x: torch.Tensor, s: RecoverySettings,
                      log: Callable[[str], None]) -> Recovered:
    """Fine-tune with ``s.strategy``; SWD and AGP start from the dense model and choose their own
    channels as they go (the plan is theirs, the widths, and so the latency, the search's)."""
    teacher = dense if s.kd else None
    kd_info = {"temperature": s.kd_temperature, "weight": s.kd_weight} if s.kd else None
    if s.strategy == "standard":
        from hwprune.train import train

        # Train the architecture the proxy scored (its BN statistics re-estimated), so that
        # --finetune-epochs 0 still ships the model the search chose, not a raw cut.
        started = time.perf_counter()
        ft = train(pruned, data.train, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=s.seed,
                   teacher=teacher, kd_temperature=s.kd_temperature, kd_alpha=s.kd_weight, val_ds=data.val,
                   log=log, progress=s.show_progress) if s.epochs > 0 else None
        return Recovered(pruned, kept, {"strategy": "standard", "epochs": s.epochs,
                                        "seconds": time.perf_counter() - started,
                                        "history": ft.history if ft else [], "kd": kd_info,
                                        "ranks": ft.world_size if ft else 1})
    from hwprune.finetune import recover

    rec = recover(s.strategy, dense, x, widths, train_ds=data.train, val_ds=data.val, epochs=s.epochs, lr=s.lr,
                  batch_size=s.batch_size, seed=s.seed, criterion=s.criterion, teacher=teacher,
                  kd_temperature=s.kd_temperature, kd_weight=s.kd_weight, channel_multiple=s.channel_multiple,
                  log=log, progress=s.show_progress)
    return Recovered(rec.model, rec.kept, {**rec.summary(), "kd": kd_info})


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def input_batches(batches: Iterable[Any] | None) -> list[torch.Tensor] | None:
    """BN re-estimation inputs from a loader: each item a tensor, or a tuple/list whose first item is."""
    if batches is None:
        return None
    if isinstance(batches, torch.Tensor):
        batches = [batches]  # one batch
    try:
        items = list(batches)
    except TypeError:
        raise HwpruneError(f"bn_data must be an iterable of input batches (a DataLoader, a list of tensors), "
                           f"got {type(batches).__name__}") from None
    out = []
    for b in items:
        t = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(t, torch.Tensor):
            raise HwpruneError(f"bn_data must yield input tensors (or (input, target) pairs), got {type(t).__name__}")
        out.append(t)
    if not out:  # an exhausted iterator or an empty loader: BatchNorm would not be re-estimated, silently
        raise HwpruneError("bn_data holds no batch (an empty list, or an iterator already used up)")
    return out
