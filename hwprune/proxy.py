"""The accuracy proxy that search agents maximise: prune, re-estimate BatchNorm, score a val subset.

Fine-tuning every candidate is far too slow for a search, and a pruned network scored
with the dense network's BatchNorm statistics is badly miscalibrated (the channel mix
feeding each BN changed). The proxy therefore (1) prunes a copy of the dense model to
the candidate widths, keeping each group's highest-importance channels, (2) re-estimates
every BN layer's running mean/variance as a cumulative average over a few fixed training
batches (EagleEye, Li et al. 2020, "adaptive BN"), and (3) measures top-1 accuracy on a
fixed validation subset. The same widths always give the same number, and results are
cached, so no architecture is evaluated twice.

At aggressive budgets the zero-shot score sinks towards chance for every candidate and
stops ranking them by what fine-tuning will recover. ``train_steps`` then adds NetAdapt's
remedy (Yang et al. 2018, "short-term fine-tuning"): a few SGD steps on fixed training
batches between (2) and (3), still deterministic and cached.

Channel importance is computed once, on the dense model: a candidate keeps, per group,
the top-``w`` channels of that ranking (:meth:`AccuracyProxy.keep_indices`), which is
exactly a plan, so replaying the search's winner reproduces the scored architecture.

Example:
    >>> proxy = AccuracyProxy(model, torch.zeros(1, 1, 28, 28), train, val)  # doctest: +SKIP
    >>> proxy({"conv1": 8, "layer1.0.conv1": 8})                              # doctest: +SKIP
    0.842
    >>> proxy.evaluations, proxy.cache_hits                                   # doctest: +SKIP
    (1, 0)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.data import ImageDataset
from hwprune.errors import HwpruneError
from hwprune.objective import PrunedScore


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches``, in place.

    Running stats are reset and accumulated as an exact cumulative average
    (``momentum=None``), with only the BN layers in training mode so dropout and the like
    stay inert. The model is left in eval mode with each BN's momentum restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not bns:
        return model
    momenta = [bn.momentum for bn in bns]
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for x in batches:
            model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    return model


class AccuracyProxy(PrunedScore):
    """A cached ``widths -> accuracy (0..1)`` function for search agents (see :class:`PrunedScore`).

    Args:
        dense_model: the trained dense model (copied; the original is not touched).
        example_input: an input of the model's shape (batch 1 is enough), for tracing.
        train_ds: source of the BatchNorm re-estimation batches.
        val_ds: source of the fixed scoring subset.
        criterion: channel importance (see ``hwprune.groups.IMPORTANCE_CRITERIA``);
            ``taylor`` takes its gradients from the BN batches.
        bn_batches, bn_batch_size: how many training batches of how many images re-estimate
            BN (8 x 64 by default), drawn once with ``seed`` and kept as float tensors.
        val_samples: size of the fixed validation subset (all of ``val_ds`` if smaller).
        seed: fixes both subsets.
        cache: remember every result by its full width tuple.
        eval_batch_size: chunk size for scoring (bounds activation memory).
        threads: torch threads during a call (restored after); None uses the current setting.
        train_steps: SGD steps (momentum 0.9, ``train_lr``) of short-term fine-tuning before
            scoring, on fixed batches of ``train_batch_size`` drawn once with ``seed``; 0 scores
            the BN-recalibrated cut as it is.

    Attributes:
        groups: the dense model's prunable groups, in network order.
        evaluations: architectures actually pruned and scored.
        cache_hits: calls answered from the cache.
        seconds: time spent in evaluations.
    """

    def __init__(self, dense_model: nn.Module, example_input: torch.Tensor, train_ds: ImageDataset,
                 val_ds: ImageDataset, *, criterion: str = "l1", bn_batches: int = 8,
                 bn_batch_size: int = 64, val_samples: int = 1000, seed: int = 0, cache: bool = True,
                 eval_batch_size: int = 500, threads: int | None = None, train_steps: int = 0,
                 train_batch_size: int = 64, train_lr: float = 0.01) -> None:
        if bn_batches < 1 or bn_batch_size < 1 or val_samples < 1:
            raise HwpruneError("bn_batches, bn_batch_size and val_samples must be at least 1")
        if train_steps < 0 or train_batch_size < 1 or not train_lr > 0:
            raise HwpruneError("the proxy's train_steps must be >= 0, its batch size >= 1 and its lr > 0")
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise HwpruneError("the accuracy proxy needs non-empty training and validation sets")
        self.train_steps = int(train_steps)
        self.train_lr = float(train_lr)
        self.eval_batch_size = max(1, int(eval_batch_size))
        # Independent streams, so changing val_samples never changes the BN batches.
        bn_rng, val_rng, train_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
        n_bn = min(bn_batches * bn_batch_size, len(train_ds))
        bn_x, bn_y = train_ds.batch(bn_rng.permutation(len(train_ds))[:n_bn])
        self._bn_batches = list(bn_x.split(bn_batch_size))
        self._bn_labels = list(bn_y.split(bn_batch_size))
        val_idx = np.sort(val_rng.permutation(len(val_ds))[:val_samples])
        self._val_x, self._val_y = val_ds.batch(val_idx)
        self._train_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.train_steps:
            n_tr = min(self.train_steps * train_batch_size, len(train_ds))
            tr_x, tr_y = train_ds.batch(train_rng.permutation(len(train_ds))[:n_tr])
            self._train_batches = list(zip(tr_x.split(train_batch_size), tr_y.split(train_batch_size)))
        super().__init__(dense_model, example_input, criterion=criterion, cache=cache, threads=threads)

    def _rank(self) -> dict[str, list[int]]:
        if self.criterion == "taylor":
            self._accumulate_gradients(self._bn_batches, self._bn_labels)
        return super()._rank()

    def _prepare(self, model: nn.Module) -> None:
        recalibrate_bn(model, self._bn_batches)
        if self.train_steps:
            self._short_train(model)

    @torch.inference_mode()
    def _score(self, model: nn.Module) -> float:
        correct = 0
        for x, y in zip(self._val_x.split(self.eval_batch_size), self._val_y.split(self.eval_batch_size)):
            correct += int((model(x).argmax(1) == y).sum())
        return correct / len(self._val_y)

    def _short_train(self, model: nn.Module) -> None:
        # Cycles through the fixed batches when there are fewer images than steps x batch.
        opt = torch.optim.SGD(model.parameters(), lr=self.train_lr, momentum=0.9)
        model.train()
        for step in range(self.train_steps):
            x, y = self._train_batches[step % len(self._train_batches)]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()

    def _accumulate_gradients(self, batches, labels) -> None:
        # Taylor importance (|w * dL/dw|) reads .grad; BN stays in eval mode (dense statistics).
        self.model.zero_grad(set_to_none=True)
        for x, y in zip(batches, labels):
            F.cross_entropy(self.model(x), y).backward()
