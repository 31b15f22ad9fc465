"""Accuracy recovery after pruning: ``standard`` fine-tuning, selective weight decay ``swd``, gradual ``agp``.

The search picks per-group widths on the dense model; :func:`recover` turns the dense model
into a physically pruned one at exactly those widths and spends a fixed epoch budget
getting the accuracy back. The three strategies spend the same budget differently:

- ``standard``: hard-prune once (the search's plan via ``keep``, else by the importance
  criterion), then train the small model for all ``epochs``.
- ``swd`` (structured Selective Weight Decay, Tessier et al. 2022, arXiv:2011.10520): train
  the *dense* architecture while an extra decay ``mu * a_t / 2 * ||removed||^2`` pulls the
  channels that would be pruned right now (recomputed every minibatch) towards zero, with
  ``a_t`` growing exponentially from ``a_min`` to ``a_max``; hard-prune at the end, when the
  removed channels carry (almost) nothing, so the cut costs (almost) no accuracy.
- ``agp`` (Zhu & Gupta 2017, structured): prune physically in ``n`` steps along the cubic
  sparsity schedule, training between steps and after the last one.

Any of them distils from a teacher (the dense model, frozen) when one is given: the loss is
then :func:`hwprune.train.kd_loss`. Every strategy reports its epochs, wall seconds, the
per-epoch history and the plan (kept channel indices per group, in the dense numbering).

Example:
    >>> from hwprune.finetune import recover
    >>> r = recover("swd", dense, x, {"conv1": 8}, train_ds=train, val_ds=val,
    ...             epochs=1, lr=0.01, batch_size=128, seed=0)      # doctest: +SKIP
    >>> r.widths["conv1"], r.info["val_acc_after_prune"]         # doctest: +SKIP
    (8, 0.91)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwprune.data import ImageDataset
from hwprune.errors import HwpruneError
from hwprune.groups import (IMPORTANCE_CRITERIA, _build_graph, _iter_groups, _out_channels, _tp,
                            channel_ranking, classifier_layer, find_groups, prune_to_widths, rank_channels)
from hwprune.train import TrainHooks, TrainResult, evaluate, train

STRATEGIES = ("standard", "swd", "agp")
# SWD re-ranks channels every minibatch and AGP mid-training, from the weights alone; Taylor
# importance would need a gradient pass of its own each time.
WEIGHT_CRITERIA = ("l1", "l2", "bn-scale")
# Default AGP pruning steps per epoch of the budget, and where in the budget the last one falls.
AGP_STEPS_PER_EPOCH = 4
AGP_END_FRACTION = 0.75


@dataclass
class RecoveryResult:
    """What :func:`recover` produced.

    ``model`` is the physically pruned network (eval mode). ``widths`` are its per-group
    output channels (exactly the targets) and ``kept`` the dense-numbered indices of the
    channels it kept per group, every group listed (a plan). ``epochs`` counts training
    epochs actually run, ``seconds`` the wall time of the whole recovery (pruning and
    evaluations included). ``history`` has :func:`hwprune.train.train`'s rows, numbered
    through the budget. ``info`` holds strategy-specific numbers (see :func:`recover`).
    """

    model: nn.Module
    strategy: str
    epochs: int
    seconds: float
    widths: dict[str, int]
    kept: dict[str, list[int]]
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the model, as JSON-ready numbers (for ``report.json``'s ``finetune``)."""
        return {"strategy": self.strategy, "epochs": self.epochs, "seconds": self.seconds,
                "widths": dict(self.widths), "history": list(self.history), **self.info}


# --- schedules ---------------------------------------------------------------------------------

def swd_coefficient(step: int, total_steps: int, a_min: float, a_max: float) -> float:
    """SWD's ``a`` at ``step`` (0-based) of ``total_steps``: ``a_min * (a_max / a_min) ** (step / (total_steps - 1))``.

    The exponent runs over the steps actually taken, so the first step uses ``a_min`` and
    the last exactly ``a_max``; a one-step run uses ``a_max``.

    Example:
        >>> swd_coefficient(0, 3, 1.0, 100.0), swd_coefficient(1, 3, 1.0, 100.0), swd_coefficient(2, 3, 1.0, 100.0)
        (1.0, 10.0, 100.0)
    """
    if total_steps <= 1:
        return float(a_max)
    t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return float(a_min * (a_max / a_min) ** t)


def agp_widths(dense: Mapping[str, int], target: Mapping[str, int], n_steps: int,
               channel_multiple: int | Mapping[str, int] = 1) -> list[dict[str, int]]:
    """Per-group widths after each of ``n_steps`` AGP pruning steps (Zhu & Gupta 2017).

    Sparsity ``s = 1 - width / dense`` follows ``s_k = s_f + (s_i - s_f) (1 - k / n)**3``
    with ``s_i = 0`` (the dense model) and ``s_f`` the target's, for ``k = 1..n``: big cuts
    early while the network is redundant, small ones near the target. Each width is rounded
    to ``channel_multiple`` (one for all groups, or one per group) and kept within
    ``[target, dense]``, so the sequence never grows
    and step ``n`` is exactly the target. Groups not in ``target`` stay dense.

    Example:
        >>> agp_widths({"a": 64}, {"a": 8}, 4)
        [{'a': 32}, {'a': 15}, {'a': 9}, {'a': 8}]
    """
    if n_steps < 1:
        raise HwpruneError(f"AGP needs at least one pruning step, got {n_steps}")
    multiples = channel_multiple if isinstance(channel_multiple, Mapping) else {n: channel_multiple for n in dense}
    if any(int(multiples.get(n, 1)) < 1 for n in dense):
        raise HwpruneError(f"channel_multiple must be >= 1, got {channel_multiple}")
    steps = []
    for k in range(1, n_steps + 1):
        remaining = (1.0 - k / n_steps) ** 3  # the fraction of the cut still to make
        widths = {}
        for name, d in dense.items():
            t = int(target.get(name, d))
            raw = t + (d - t) * remaining
            m = int(multiples.get(name, 1))
            snapped = int(math.floor(raw / m + 0.5)) * m
            widths[name] = t if k == n_steps else min(d, max(t, snapped))
        steps.append(widths)
    return steps


def agp_prune_steps(total_steps: int, n_steps: int, end_fraction: float = AGP_END_FRACTION) -> list[int]:
    """The training steps (0-based) at which the ``n_steps`` AGP pruning steps happen.

    The first is at step 0 (the dense model is already trained: Zhu & Gupta's ``t0`` is one
    interval before training starts), the last at ``end_fraction`` of the run, the rest
    evenly between, so ``1 - end_fraction`` of the budget trains the final architecture.

    Example:
        >>> agp_prune_steps(100, 4, 0.75)
        [0, 25, 50, 75]
    """
    if n_steps < 1:
        raise HwpruneError(f"AGP needs at least one pruning step, got {n_steps}")
    if not 0.0 <= end_fraction <= 1.0:
        raise HwpruneError(f"agp_end_fraction must be in [0, 1], got {end_fraction}")
    last = min(max(total_steps - 1, 0), int(end_fraction * total_steps))
    if n_steps == 1:
        return [0]
    return [int(round(k * last / (n_steps - 1))) for k in range(n_steps)]


def keep_by_importance(model: nn.Module, example_input: torch.Tensor, widths: Mapping[str, int],
                       criterion: str = "l1") -> dict[str, list[int]]:
    """Per named group, the sorted indices of its ``widths[name]`` most important channels.

    All groups are ranked on the same, unpruned model (as the accuracy proxy ranks them), so
    the choice does not depend on the order in which groups are then cut; ``prune_to_widths``
    by criterion re-scores each group after the previous ones were pruned. ``taylor`` reads
    the gradients left in ``.grad``.
    """
    was_training = model.training
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            ranking = channel_ranking(model, example_input, criterion, only=set(widths))
    finally:
        model.train(was_training)
    return {name: sorted(ranking[name][:int(w)]) for name, w in widths.items()}


# --- selective weight decay ------------------------------------------------------------------------

@dataclass
class _Slice:
    """One group member's channels in one parameter: ``param.select(dim, local[i])`` is group channel ``root[i]``."""

    module: nn.Module
    attr: str
    dim: int
    local: torch.Tensor
    root: torch.Tensor
    group: str
    repeat: int = 1  # grouped-conv input importance is tiled over the conv groups (as Torch-Pruning does)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(local, root)`` on ``device``, copied there once (not on every training step)."""
        if self.local.device != device:
            self.local, self.root = self.local.to(device), self.root.to(device)
        return self.local, self.root


class SelectiveWeightDecay:
    """The structured SWD penalty of one (dense-architecture) model for target widths.

    At construction the Torch-Pruning dependency graph is walked once and every group's
    member parameter slices are recorded; afterwards each call works on the model's current
    weights with a few vectorised torch ops, no graph rebuild.

    What is penalised (our choice, documented): every parameter slice the final hard prune
    would delete — the removed channels' output filters and biases of the group's convs and
    linears, their BatchNorm weight and bias, *and* the consumers' input-channel slices. The
    input slices matter because the group L1/L2 importance sums them too: were they left
    alone, a "removed" channel whose filters decayed to zero could keep a large score from
    its consumers and swap back into the kept set. (Input slices of grouped, non-depthwise
    convs are not penalised: the weight holds one block of them, shared by the conv's groups;
    such a group is still ranked and cut the same offsets in every block, ``rank_channels``.)

    Args:
        model: the network being trained (its parameters are read on every call, so
            pruning or replacing them afterwards invalidates this object).
        example_input: an input of the model's shape, for tracing.
        widths: per-group target widths; groups not named (or at their dense width) are not
            penalised.
        criterion: ``l1``, ``l2`` or ``bn-scale``, computed as Torch-Pruning's group
            importance is (:func:`hwprune.groups.channel_importance`), so the channels removed
            here are the ones :func:`hwprune.groups.prune_to_widths` would remove.

    Example:
        >>> swd = SelectiveWeightDecay(model, x, {"conv1": 4})    # doctest: +SKIP
        >>> loss = task_loss + mu * a * swd.penalty()               # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, widths: Mapping[str, int],
                 criterion: str = "l1") -> None:
        if criterion not in WEIGHT_CRITERIA:
            raise HwpruneError(f"swd ranks channels by {', '.join(WEIGHT_CRITERIA)}; got criterion '{criterion}'")
        self.criterion = criterion
        self.p = 2 if criterion == "l2" else 1
        self.channels: dict[str, int] = {}
        self.steps: dict[str, int] = {}  # channel quantum per group (grouped convolutions)
        self._scored: dict[str, list[_Slice]] = {}
        self._penalised: dict[tuple[int, str], list[_Slice]] = {}
        was_training = model.training
        try:
            with torch.enable_grad():  # Torch-Pruning traces through autograd
                self._record(model, example_input)
        finally:
            model.train(was_training)
        unknown = set(widths) - set(self.channels)
        if unknown:
            raise HwpruneError(f"unknown group(s) {', '.join(sorted(unknown))} "
                               f"(model groups: {', '.join(self.channels)})")
        self.targets: dict[str, int] = {}
        for name, w in widths.items():
            if not 1 <= int(w) <= self.channels[name]:
                raise HwpruneError(f"group '{name}': width {int(w)} outside [1, {self.channels[name]}]")
            if int(w) < self.channels[name]:
                self.targets[name] = int(w)

    def _record(self, model: nn.Module, example_input: torch.Tensor) -> None:
        tp = _tp()
        dg = _build_graph(model, example_input)
        clf = classifier_layer(model, example_input)
        bn_types = (nn.modules.batchnorm._BatchNorm,)
        score_types = bn_types if self.criterion == "bn-scale" else (
            nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
        for name, root, _, group, _, step in _iter_groups(model, dg, [clf] if clf is not None else []):
            self.channels[name] = _out_channels(root)
            self.steps[name] = step
            scored = self._scored.setdefault(name, [])
            for i, (dep, idxs) in enumerate(group):
                layer, fn = dep.layer, dep.pruning_fn
                roots = group[i].root_idxs
                if any(r is None for r in roots) or not len(idxs):
                    continue
                local = torch.as_tensor([int(j) for j in idxs], dtype=torch.int64)
                root = torch.as_tensor([int(r) for r in roots], dtype=torch.int64)

                def make(attr: str, dim: int, repeat: int = 1) -> _Slice:
                    return _Slice(layer, attr, dim, local, root, name, repeat)

                # Scored slices: exactly the terms of Torch-Pruning's GroupMagnitudeImportance.
                if isinstance(layer, score_types):
                    transposed = bool(getattr(layer, "transposed", False))
                    if fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                        scored.append(make("weight", 1 if transposed else 0))
                    elif fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                        tile = 1
                        if fn == tp.prune_conv_in_channels and layer.groups not in (1, layer.in_channels):
                            tile = layer.groups
                        scored.append(make("weight", 0 if transposed else 1, tile))
                    elif fn == tp.prune_batchnorm_out_channels and layer.affine:
                        scored.append(make("weight", 0))
                    elif fn == tp.prune_layernorm_out_channels and layer.elementwise_affine \
                            and layer.weight.dim() == 1:
                        scored.append(make("weight", 0))
                # Penalised slices: what the hard prune deletes.
                for s in self._removed_slices(layer, getattr(fn, "__name__", ""), make):
                    self._penalised.setdefault((id(s.module), s.attr), []).append(s)

    @staticmethod
    def _removed_slices(layer: nn.Module, kind: str, make) -> list[_Slice]:
        out = kind == "prune_out_channels"
        if kind not in ("prune_out_channels", "prune_in_channels"):
            return []
        has_bias = getattr(layer, "bias", None) is not None
        if isinstance(layer, nn.modules.conv._ConvNd):
            t = bool(layer.transposed)
            # A depthwise conv's input channel is its output channel (Torch-Pruning prunes both at once).
            depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
            if out or depthwise:
                return [make("weight", 1 if t else 0)] + ([make("bias", 0)] if has_bias else [])
            return [make("weight", 0 if t else 1)] if layer.groups == 1 else []
        if isinstance(layer, nn.Linear):
            return [make("weight", 0)] + ([make("bias", 0)] if has_bias else []) if out else [make("weight", 1)]
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
            return [make("weight", 0), make("bias", 0)]
        if isinstance(layer, nn.LayerNorm) and layer.elementwise_affine and layer.weight.dim() == 1:
            return [make("weight", 0)] + ([make("bias", 0)] if has_bias else [])
        return []

    @torch.no_grad()
    def importance(self) -> dict[str, torch.Tensor]:
        """Every group's channel importance from the current weights (mean-normalised like
        :func:`hwprune.groups.channel_importance`, so equal to it up to rounding)."""
        scores = {}
        for name, slices in self._scored.items():
            total = None
            for s in slices:
                w = getattr(s.module, s.attr).detach()
                mag = w.abs() if self.p == 1 else w.abs().pow(self.p)
                per = mag.transpose(0, s.dim).flatten(1).sum(1) if mag.dim() > 1 else mag
                if s.repeat > 1:
                    per = per.repeat(s.repeat)
                if total is None:
                    total = torch.zeros(self.channels[name], dtype=torch.float32, device=w.device)
                local, root = s.on(w.device)
                total.scatter_add_(0, root, per[local].float())
            if total is None:
                raise HwpruneError(f"importance '{self.criterion}' is undefined for group '{name}'")
            total = total / len(slices)
            scores[name] = total / total.mean()
        return scores

    @torch.no_grad()
    def removed(self) -> dict[str, torch.Tensor]:
        """Per pruned group, a bool vector: the channels the target width drops right now."""
        scores = self.importance()
        out = {}
        for name, width in self.targets.items():
            s = scores[name]
            mask = torch.ones_like(s, dtype=torch.bool)
            mask[rank_channels(s.cpu(), self.steps[name])[:width]] = False
            out[name] = mask
        return out

    def penalty(self, removed: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``0.5 * ||w||^2`` over the union of the removed channels' parameter slices (differentiable).

        ``removed`` defaults to :meth:`removed` on the current weights. An element shared by
        two removed slices (a conv weight entry whose output and input channel both go) counts once.
        """
        removed = self.removed() if removed is None else removed
        total: torch.Tensor | None = None
        for slices in self._penalised.values():
            w = getattr(slices[0].module, slices[0].attr)
            mask = None
            for s in slices:
                r = removed.get(s.group)
                if r is None:
                    continue
                local, root = s.on(w.device)
                sel = local[r.to(w.device)[root]]
                if sel.numel() == 0:
                    continue
                vec = torch.zeros(w.shape[s.dim], dtype=torch.bool, device=w.device)
                vec[sel] = True
                shape = [1] * w.dim()
                shape[s.dim] = -1
                vec = vec.view(shape)
                mask = vec if mask is None else mask | vec
            if mask is None:
                continue
            term = (w * w * mask).sum()
            total = term if total is None else total + term
        if total is None:  # nothing to remove
            return torch.zeros(())
        return 0.5 * total


class _SWDHooks(TrainHooks):
    """Adds ``mu * a_t * penalty`` to every step's loss and keeps a few diagnostics."""

    def __init__(self, swd: SelectiveWeightDecay, mu: float, a_min: float, a_max: float) -> None:
        self.swd, self.mu, self.a_min, self.a_max = swd, mu, a_min, a_max
        self.last_a = 0.0
        self.selection_changes = 0  # channels that moved in or out of the removed set between steps
        self._previous: dict[str, torch.Tensor] | None = None

    def extra_loss(self, model: nn.Module, step: int, total_steps: int) -> torch.Tensor | None:
        if not self.swd.targets or self.mu == 0:
            return None
        self.last_a = swd_coefficient(step, total_steps, self.a_min, self.a_max)
        removed = self.swd.removed()
        if self._previous is not None:
            self.selection_changes += int(sum(int((removed[n] != self._previous[n]).sum()) for n in removed))
        self._previous = removed
        return (self.mu * self.last_a) * self.swd.penalty(removed)


class _AGPHooks(TrainHooks):
    """Prunes the model physically at the scheduled steps and tracks the plan in dense numbering."""

    def __init__(self, example_input: torch.Tensor, dense: Mapping[str, int], target: Mapping[str, int],
                 n_steps: int, end_fraction: float, channel_multiple: int | Mapping[str, int], criterion: str,
                 say: Callable[[str], None], score: Callable[[nn.Module], float | None] | None = None) -> None:
        self.example_input = example_input
        self.score = score  # called on the model right after the last scheduled prune
        self.val_acc_after_prune: float | None = None
        self.widths = agp_widths(dense, target, n_steps, channel_multiple)
        self.n_steps, self.end_fraction, self.criterion, self.say = n_steps, end_fraction, criterion, say
        self.current = dict(dense)
        self.kept = {name: list(range(d)) for name, d in dense.items()}
        self.applied: list[dict[str, Any]] = []
        self._plan: dict[int, dict[str, int]] | None = None

    def before_step(self, model: nn.Module, step: int, total_steps: int) -> bool:
        if self._plan is None:
            self._plan = {}
            # Steps that coincide (a short run) collapse into the latest, narrowest widths.
            for at, widths in zip(agp_prune_steps(total_steps, self.n_steps, self.end_fraction), self.widths):
                self._plan[at] = widths
        widths = self._plan.get(step)
        if widths is None:
            return False
        changed = self.prune(model, widths)
        self.applied.append({"step": step, "budget_fraction": step / max(total_steps, 1), "widths": dict(widths)})
        self.say(f"agp: pruning step {len(self.applied)}/{len(self._plan)} at training step {step}/{total_steps}: "
                 f"{sum(self.current.values())} channels left")
        if len(self.applied) == len(self._plan) and self.score is not None:
            self.val_acc_after_prune = self.score(model)
        return changed

    def prune(self, model: nn.Module, widths: Mapping[str, int]) -> bool:
        """Prune ``model`` in place to ``widths`` by the criterion; True if anything changed."""
        todo = {n: w for n, w in widths.items() if w < self.current[n]}
        if not todo:
            return False
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = self.example_input.to(device)
        kept_now: dict[str, list[int]] = {}
        prune_to_widths(model, x, {}, keep=keep_by_importance(model, x, todo, self.criterion),
                        inplace=True, kept_out=kept_now)
        for name, idx in kept_now.items():
            if name not in self.kept:  # a group the run leaves at full width: prune_to_widths lists every group
                continue
            # Indices are relative to the current (already pruned) model; map them back to the dense numbering.
            self.kept[name] = [self.kept[name][i] for i in idx]
            self.current[name] = len(idx)
        return True


# --- the entry point ---------------------------------------------------------------------------------

def recover(strategy: str, dense: nn.Module, example_input: torch.Tensor, widths: Mapping[str, int], *,
            train_ds: ImageDataset, val_ds: ImageDataset | None = None, epochs: int, lr: float,
            batch_size: int, seed: int = 0, criterion: str = "l1",
            keep: Mapping[str, Sequence[int]] | None = None, teacher: nn.Module | None = None,
            kd_temperature: float = 4.0, kd_weight: float = 0.9, weight_decay: float = 5e-4,
            momentum: float = 0.9, swd_a_min: float = 0.1, swd_a_max: float = 1e5,
            swd_finetune_epochs: int = 0, agp_steps: int | None = None,
            agp_end_fraction: float = AGP_END_FRACTION, channel_multiple: int = 1,
            augment: bool = True, device: torch.device | str | None = None,
            log: Callable[[str], None] | None = print, progress: bool = True) -> RecoveryResult:
    """Prune ``dense`` to ``widths`` physically and recover its accuracy with ``strategy``.

    Args:
        strategy: ``standard``, ``swd`` or ``agp`` (see the module docstring).
        dense: the trained dense model; never modified.
        example_input: an input of the model's shape, for tracing the dependency graph.
        widths: target output channels per group (``hwprune.groups.find_groups`` names);
            groups not named stay dense.
        train_ds, val_ds: training data; ``val_ds`` is scored after every epoch and around the
            hard prune (``info``), if given.
        epochs: the training budget, the same for every strategy (0: prune only).
        lr, batch_size, seed, weight_decay, momentum, augment, device: as for
            :func:`hwprune.train.train` (peak ``lr`` for a batch of 128, cosine per step).
        criterion: channel importance for every choice the strategy makes itself (``swd``
            and ``agp``: ``l1``, ``l2`` or ``bn-scale``; all groups are ranked at once on one
            model, as the accuracy proxy ranks them).
        keep: ``standard`` only: the exact channel indices to keep per group (the search's
            plan); its lengths must agree with ``widths``.
        teacher: distil from this model (frozen: eval mode, no gradients) with
            :func:`hwprune.train.kd_loss`, ``kd_weight`` on the soft term (temperature
            ``kd_temperature``, scaled by T^2) and ``1 - kd_weight`` on the labels.
        swd_a_min, swd_a_max: SWD's penalty factor ``a``, exponential from one to the other
            over the SWD training steps; ``mu`` is ``weight_decay``.
        swd_finetune_epochs: of ``epochs``, how many to fine-tune after SWD's hard prune
            (0, the paper's setting: SWD needs no fine-tuning).
        agp_steps: AGP's number of pruning steps (default 4 per epoch); ``agp_end_fraction``
            of the budget is spent by the last one, the rest trains the final widths.
        channel_multiple: AGP's intermediate widths are rounded to this.
        log: one line per event and epoch; None for silence. ``progress``: tqdm bars.

    Returns:
        A :class:`RecoveryResult`. ``info`` always has ``kd`` (None or its temperature and
        weight) and ``val_acc_after_prune`` (val accuracy of the pruned model right after its
        final hard prune, before any further training; None without ``val_ds``). ``swd``
        adds ``val_acc_before_prune`` (the dense-shaped model at the end of SWD), ``a_min``,
        ``a_max``, ``mu``, ``swd_epochs``, ``finetune_epochs``, ``selection_changes`` and
        ``removed_sq_norm`` (``||removed weights||^2`` just before the prune). ``agp`` adds
        ``schedule`` (every pruning step applied: training step, fraction of the budget,
        widths), ``steps`` and ``end_fraction``.

    Raises:
        HwpruneError: an unknown strategy or group, a width outside ``[1, dense]``, ``keep``
            with a strategy other than ``standard``, or bad schedule settings.
    """
    started = time.perf_counter()
    _check_settings(strategy, epochs, criterion, keep, kd_weight, kd_temperature, channel_multiple)
    say = log if log is not None else (lambda _msg: None)
    model_device = next((p.device for p in dense.parameters()), torch.device("cpu"))
    x = example_input.detach().to(model_device)
    was_training = dense.training
    try:
        dense_groups = find_groups(dense, x)  # (tracing switches to eval mode)
    finally:
        dense.train(was_training)
    dense_widths = {g.name: g.channels for g in dense_groups}
    # AGP's intermediate widths: multiples of the device's channel multiple and of each group's step.
    multiples = {g.name: math.lcm(int(channel_multiple), g.step) for g in dense_groups}
    target = _check_widths(widths, keep, dense_widths)

    common = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                  teacher=teacher, kd_temperature=kd_temperature, kd_alpha=kd_weight, augment=augment,
                  val_ds=val_ds, log=log, progress=progress, device=device)
    run = _Recovery(dense, x, train_ds, val_ds, epochs, criterion, common, say)
    run.info["kd"] = {"temperature": kd_temperature, "weight": kd_weight} if teacher is not None else None
    say(f"recovery: {strategy} for {epochs} epoch(s)" + (", distilling" if teacher is not None else ""))
    if strategy == "standard":
        model, kept = run.standard(target, keep)
    elif strategy == "swd":
        model, kept = run.swd(target, weight_decay, swd_a_min, swd_a_max, swd_finetune_epochs)
    else:
        model, kept = run.agp(target, dense_widths, multiples, agp_steps, agp_end_fraction)
    info, runs = run.info, run.runs
    model.eval()

    history: list[dict[str, float]] = []
    for r in runs:
        offset = len(history)
        history.extend({**row, "epoch": row["epoch"] + offset} for row in r.history)
    final = _group_widths(model, dense_widths)
    if final != {n: target.get(n, d) for n, d in dense_widths.items()}:  # a bug, not a user error
        raise RuntimeError(f"recovery ended at widths {final}, not the targets {dict(target)}")
    info["train_seconds"] = sum(r.seconds for r in runs)
    result = RecoveryResult(model=model, strategy=strategy, epochs=sum(r.epochs for r in runs),
                            seconds=time.perf_counter() - started, widths=final,
                            kept={n: list(kept[n]) for n in dense_widths}, history=history, info=info)
    say(f"recovery: {strategy} done in {result.seconds:.1f} s ({result.epochs} epoch(s))")
    return result


def _check_settings(strategy: str, epochs: int, criterion: str, keep: Mapping[str, Sequence[int]] | None,
                    kd_weight: float, kd_temperature: float, channel_multiple: int) -> None:
    """``recover``'s settings, refused before any tracing or training with one line each."""
    if strategy not in STRATEGIES:
        raise HwpruneError(f"unknown fine-tuning strategy '{strategy}' (known: {', '.join(STRATEGIES)})")
    if epochs < 0:
        raise HwpruneError(f"epochs must be >= 0, got {epochs}")
    if criterion not in IMPORTANCE_CRITERIA:
        raise HwpruneError(f"unknown importance criterion '{criterion}' (known: {', '.join(IMPORTANCE_CRITERIA)})")
    if keep is not None and strategy != "standard":
        raise HwpruneError(f"keep (a fixed plan) applies to the standard strategy only; {strategy} "
                           f"chooses channels while it trains")
    if strategy != "standard" and criterion not in WEIGHT_CRITERIA:
        raise HwpruneError(f"{strategy} ranks channels from the weights while it trains: criterion must be "
                           f"{', '.join(WEIGHT_CRITERIA)}, got '{criterion}'")
    if not (0.0 <= kd_weight <= 1.0 and kd_temperature > 0):
        raise HwpruneError(f"need 0 <= kd_weight <= 1 and kd_temperature > 0, got {kd_weight}, {kd_temperature}")
    if int(channel_multiple) < 1:
        raise HwpruneError(f"channel_multiple must be >= 1, got {channel_multiple}")


class _Recovery:
    """One ``recover`` call's shared state; a method a strategy, each returning the pruned model
    and its kept channel indices, with the training runs and the strategy's facts recorded."""

    def __init__(self, dense: nn.Module, x: torch.Tensor, train_ds: ImageDataset, val_ds: ImageDataset | None,
                 epochs: int, criterion: str, common: dict[str, Any], say: Callable[[str], None]) -> None:
        self.dense, self.x, self.train_ds, self.val_ds = dense, x, train_ds, val_ds
        self.epochs, self.criterion, self.common, self.say = epochs, criterion, common, say
        self.info: dict[str, Any] = {}
        self.runs: list[TrainResult] = []

    def score(self, m: nn.Module) -> float | None:
        return evaluate(m, self.val_ds) if self.val_ds is not None and len(self.val_ds) else None

    def standard(self, target: Mapping[str, int],
                 keep: Mapping[str, Sequence[int]] | None) -> tuple[nn.Module, dict[str, list[int]]]:
        kept: dict[str, list[int]] = {}
        plan = dict(keep) if keep is not None else keep_by_importance(self.dense, self.x, target, self.criterion)
        model = prune_to_widths(self.dense, self.x, {}, keep=plan, kept_out=kept)
        self.info["val_acc_after_prune"] = self.score(model)
        if self.epochs > 0:
            self.runs.append(train(model, self.train_ds, epochs=self.epochs, **self.common))
        return model, kept

    def swd(self, target: Mapping[str, int], weight_decay: float, a_min: float, a_max: float,
            finetune_epochs: int) -> tuple[nn.Module, dict[str, list[int]]]:
        if not 0 < a_min <= a_max:
            raise HwpruneError(f"need 0 < swd_a_min <= swd_a_max, got {a_min}, {a_max}")
        if not 0 <= finetune_epochs <= self.epochs:
            raise HwpruneError(f"swd_finetune_epochs must be in [0, epochs={self.epochs}], got {finetune_epochs}")
        student = copy.deepcopy(self.dense)
        swd = SelectiveWeightDecay(student, self.x, target, self.criterion)
        hooks = _SWDHooks(swd, weight_decay, a_min, a_max)
        swd_epochs = self.epochs - finetune_epochs
        if swd_epochs > 0:
            self.runs.append(train(student, self.train_ds, epochs=swd_epochs, hooks=hooks, **self.common))
        with torch.no_grad():
            removed_sq = float(2.0 * swd.penalty()) if swd.targets else 0.0
        self.info.update({"a_min": a_min, "a_max": a_max, "mu": weight_decay, "swd_epochs": swd_epochs,
                          "finetune_epochs": finetune_epochs, "selection_changes": hooks.selection_changes,
                          "removed_sq_norm": removed_sq, "val_acc_before_prune": self.score(student)})
        kept: dict[str, list[int]] = {}
        student_device = next((p.device for p in student.parameters()), self.x.device)
        # Cut exactly the channels the last step penalised (the same ranking channel_ranking gives).
        cut = {n: torch.nonzero(~mask).flatten().tolist() for n, mask in swd.removed().items()}
        model = prune_to_widths(student, self.x.to(student_device), {}, keep=cut, kept_out=kept)
        self.info["val_acc_after_prune"] = self.score(model)
        self.say(f"swd: hard prune at the end: val acc {_fmt(self.info['val_acc_before_prune'])} -> "
                 f"{_fmt(self.info['val_acc_after_prune'])}, ||removed||^2 {removed_sq:.3g}")
        if finetune_epochs > 0:
            self.runs.append(train(model, self.train_ds, epochs=finetune_epochs, **self.common))
        return model, kept

    def agp(self, target: Mapping[str, int], dense_widths: Mapping[str, int], multiples: Mapping[str, int],
            agp_steps: int | None, end_fraction: float) -> tuple[nn.Module, dict[str, list[int]]]:
        n_steps = agp_steps if agp_steps is not None else max(1, AGP_STEPS_PER_EPOCH * self.epochs)
        agp_prune_steps(1, n_steps, end_fraction)  # bad settings fail here, not mid-training
        model = copy.deepcopy(self.dense)
        hooks = _AGPHooks(self.x, dense_widths, target, n_steps, end_fraction, multiples, self.criterion, self.say,
                          self.score)
        if self.epochs > 0:
            self.runs.append(train(model, self.train_ds, epochs=self.epochs, hooks=hooks, **self.common))
        # Without training steps (or if the run stopped early) the schedule ends here, at the target.
        if hooks.prune(model, target):
            hooks.applied.append({"step": None, "budget_fraction": 1.0, "widths": dict(target)})
            hooks.val_acc_after_prune = self.score(model)
        self.info.update({"schedule": hooks.applied, "steps": n_steps, "end_fraction": end_fraction,
                          "val_acc_after_prune": hooks.val_acc_after_prune})
        return model, hooks.kept


def _check_widths(widths: Mapping[str, int], keep: Mapping[str, Sequence[int]] | None,
                  dense: Mapping[str, int]) -> dict[str, int]:
    """The target width of every named group, checked against the model before any training."""
    named = set(widths) | set(keep or {})
    unknown = named - set(dense)
    if unknown:
        raise HwpruneError(f"unknown group(s) {', '.join(sorted(unknown))} (model groups: {', '.join(dense)})")
    target = {}
    for name in named:
        if keep is not None and name in keep:
            w = len(keep[name])
            if name in widths and int(widths[name]) != w:
                raise HwpruneError(f"group '{name}': keep lists {w} channels but the width is {int(widths[name])}")
        else:
            w = int(widths[name])
        if not 1 <= w <= dense[name]:
            raise HwpruneError(f"group '{name}': width {w} outside [1, {dense[name]}]")
        target[name] = w
    return target


def _group_widths(model: nn.Module, dense: Mapping[str, int]) -> dict[str, int]:
    mods = dict(model.named_modules())
    return {name: _out_channels(mods[name]) for name in dense}


def _fmt(acc: float | None) -> str:
    return "n/a" if acc is None else f"{acc:.4f}"
