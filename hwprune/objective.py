"""The search objective: a cached ``widths -> score`` that prunes a copy of the dense model and scores it.

Every objective ranks each group's channels once, on the dense model, and a candidate keeps the
top-``w`` of that ranking (:meth:`PrunedScore.keep_indices`), which is exactly a plan: replaying
the winner reproduces the scored architecture. Subclasses say how a cut model is prepared
(:meth:`PrunedScore._prepare`) and scored (:meth:`PrunedScore._score`):

- :class:`hwprune.proxy.AccuracyProxy`, the built-in classification proxy (BN re-estimated,
  top-1 on a fixed validation subset);
- :class:`UserScore`, the user's own ``score_fn(model) -> float`` (higher is better), for any
  task: detection, segmentation, denoising.

Example:
    >>> score = UserScore(dense, x, lambda m: -reconstruction_error(m))  # doctest: +SKIP
    >>> score({"enc1": 8})                                               # doctest: +SKIP
    -0.031
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from hwprune.errors import HwpruneError, user_code
from hwprune.groups import PrunableGroup, channel_ranking, find_groups, prune_to_widths

# Criteria that rank channels from the weights alone; taylor needs gradients of a loss, which
# only the built-in classification proxy has.
WEIGHT_CRITERIA = ("l1", "l2", "bn-scale")


class PrunedScore:
    """A cached ``widths -> float`` over copies of ``dense_model`` pruned to ``widths``.

    Args:
        dense_model: the dense model (copied; the original is not touched).
        example_input: an input of the model's shape, for tracing.
        criterion: channel importance (``hwprune.groups.IMPORTANCE_CRITERIA``).
        cache: remember every result by its full width tuple.
        threads: torch threads during a call (restored after); None keeps the current setting.

    Attributes:
        groups, dense_widths: the dense model's prunable groups, in network order.
        evaluations, cache_hits, seconds: what the search cost.
    """

    def __init__(self, dense_model: nn.Module, example_input: torch.Tensor, *, criterion: str = "l1",
                 cache: bool = True, threads: int | None = None) -> None:
        self.criterion = criterion
        self.cache_enabled = cache
        self.threads = threads
        self.example_input = example_input.detach().cpu()
        self.model = copy.deepcopy(dense_model).cpu().eval()
        self.evaluations = 0
        self.cache_hits = 0
        self.seconds = 0.0
        self._cache: dict[tuple[int, ...], float] = {}
        with num_threads(threads):
            self.groups: list[PrunableGroup] = find_groups(self.model, self.example_input)
            self.dense_widths: dict[str, int] = {g.name: g.channels for g in self.groups}
            # Channels of each group from most to least important (stable, so ties keep order).
            self._ranking = self._rank()
            self.model.zero_grad(set_to_none=True)

    def _rank(self) -> dict[str, list[int]]:
        return channel_ranking(self.model, self.example_input, self.criterion)

    def _prepare(self, model: nn.Module) -> None:
        """Make a freshly cut model ready to score (in place); nothing by default."""

    def _score(self, model: nn.Module) -> float:
        raise NotImplementedError

    def __call__(self, widths: Mapping[str, int]) -> float:
        """The score of the dense model pruned to ``widths`` (groups not named keep all channels).

        Raises:
            HwpruneError: an unknown group, a width outside ``[1, dense]``, or a score that is
                not a finite number.
        """
        key = self.key(widths)
        if self.cache_enabled and key in self._cache:
            self.cache_hits += 1
            return self._cache[key]
        started = time.perf_counter()
        with num_threads(self.threads):
            value = self._score(self.pruned_model(widths))
        self.seconds += time.perf_counter() - started
        self.evaluations += 1
        if self.cache_enabled:
            self._cache[key] = value
        return value

    def key(self, widths: Mapping[str, int]) -> tuple[int, ...]:
        """The cache key: every group's width in network order (omitted groups are dense)."""
        unknown = set(widths) - set(self.dense_widths)
        if unknown:
            raise HwpruneError(f"unknown group(s) {', '.join(sorted(unknown))} "
                               f"(model groups: {', '.join(self.dense_widths)})")
        key = []
        for name, dense in self.dense_widths.items():
            w = int(widths.get(name, dense))
            if not 1 <= w <= dense:
                raise HwpruneError(f"group '{name}': width {w} outside [1, {dense}]")
            key.append(w)
        return tuple(key)

    def keep_indices(self, widths: Mapping[str, int]) -> dict[str, list[int]]:
        """Per group, the sorted indices of the channels kept at ``widths`` (a plan's content)."""
        key = self.key(widths)
        return {name: sorted(self._ranking[name][:w]) for name, w in zip(self.dense_widths, key)}

    def pruned_model(self, widths: Mapping[str, int]) -> nn.Module:
        """A fresh copy of the dense model pruned to ``widths``, prepared for scoring (eval mode)."""
        keep = {name: idx for name, idx in self.keep_indices(widths).items()
                if len(idx) < self.dense_widths[name]}
        model = prune_to_widths(self.model, self.example_input, {}, criterion=self.criterion, keep=keep)
        self._prepare(model)
        return model.eval()


class UserScore(PrunedScore):
    """The user's ``score_fn(model) -> float`` (higher is better) as the search objective.

    ``bn_batches``, when given, are input tensors on which every candidate's BatchNorm
    statistics are re-estimated before scoring (a cut model scored with the dense model's BN
    statistics is badly miscalibrated); without them the candidate is scored as cut.
    """

    def __init__(self, dense_model: nn.Module, example_input: torch.Tensor, score_fn: Callable[[nn.Module], float],
                 *, criterion: str = "l1", bn_batches: Iterable[torch.Tensor] | None = None,
                 cache: bool = True, threads: int | None = None) -> None:
        if not callable(score_fn):
            raise HwpruneError(f"score_fn must be callable (model -> float), got {type(score_fn).__name__}")
        if criterion not in WEIGHT_CRITERIA:
            raise HwpruneError(f"importance '{criterion}' needs the built-in classification proxy's gradients; "
                               f"with score_fn use {', '.join(WEIGHT_CRITERIA)}")
        self.score_fn = score_fn
        self.bn_batches = [b.detach().cpu() for b in bn_batches] if bn_batches is not None else []
        super().__init__(dense_model, example_input, criterion=criterion, cache=cache, threads=threads)

    def _prepare(self, model: nn.Module) -> None:
        if self.bn_batches:
            from hwprune.proxy import recalibrate_bn

            recalibrate_bn(model, self.bn_batches)

    def _score(self, model: nn.Module) -> float:
        return call_score_fn(self.score_fn, model)


def call_score_fn(score_fn: Callable[[nn.Module], float], model: nn.Module) -> float:
    """``score_fn(model)`` in eval mode, checked: a finite number, or one clear error."""
    model.eval()
    with user_code("score_fn", score_fn):
        value = score_fn(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (str, bytes, bool)):  # float() would take "0.5" and True: neither is a score
        raise HwpruneError(f"score_fn must return a number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise HwpruneError(f"score_fn must return a number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise HwpruneError(f"score_fn returned {value}; it must return a finite number (higher is better)")
    return value


class num_threads:
    """Torch's thread count set for a block, restored after; None leaves it alone."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.before: int | None = None

    def __enter__(self) -> None:
        if self.threads:
            self.before = torch.get_num_threads()
            torch.set_num_threads(int(self.threads))

    def __exit__(self, *exc) -> None:
        if self.before is not None:
            torch.set_num_threads(self.before)
