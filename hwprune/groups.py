"""Dependency groups (via Torch-Pruning) and physical pruning of a model to per-group widths.

A *group* is the set of layers whose channels must be pruned together: residual-coupled
convs share their output channels, a depthwise conv follows its producer. Torch-Pruning's
``DependencyGraph`` finds them; a group is named after its root layer (the leading conv or
linear) and is the unit every agent acts on. The first conv's input and the classifier's
output are never pruned.

Example:
    >>> import torch
    >>> from hwprune.models import create_model
    >>> from hwprune.groups import find_groups, prune_to_widths
    >>> model = create_model("resnet20")
    >>> x = torch.zeros(1, 1, 28, 28)
    >>> groups = find_groups(model, x)
    >>> small = prune_to_widths(model, x, {g.name: max(1, g.channels // 2) for g in groups})
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

import torch
import torch.nn as nn

from hwprune.errors import HwpruneError
from hwprune.tracing import build_graph

IMPORTANCE_CRITERIA = ("l1", "l2", "bn-scale", "taylor")


@dataclass(frozen=True)
class PrunableGroup:
    """One dependency group: its name (root layer), dense channel count and member layers.

    ``step`` is the group's channel quantum: a group that a grouped (not depthwise) convolution
    with ``k`` groups produces or consumes is cut in multiples of ``k`` (the lcm over such
    convolutions), the same channel offsets in each of its ``k`` blocks; 1 otherwise.
    """

    name: str
    channels: int
    members: tuple[str, ...]
    step: int = 1


def _tp():
    import torch_pruning as tp  # imported lazily: it is slow to import and only needed here
    return tp


def classifier_layer(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module | None:
    """The layer whose outputs are the class scores, kept at full width.

    With ``example_input``, found by running the model once: the Linear or conv layer whose output
    tensor is the model's (first) output, else the last Linear that ran, else the last conv that
    ran. The order layers are declared in says nothing (a classifier declared before a Linear
    squeeze-excitation block, or an unused auxiliary head declared after it, took its place and
    left a real group out of the search). Without an input, or if the pass fails: the last
    declared Linear, else the last declared conv.
    """
    layer_types = (nn.Linear, nn.modules.conv._ConvNd)
    if example_input is not None:
        ran = _layers_run(model, example_input, layer_types)
        if ran is not None:
            layers, outputs = ran
            made = {id(out): m for m, out in layers}
            for out in outputs:
                if id(out) in made:
                    return made[id(out)]
            linear = [m for m, _ in layers if isinstance(m, nn.Linear)]
            if linear or layers:
                return (linear or [m for m, _ in layers])[-1]
    last_linear = last_conv = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last_linear = m
        elif isinstance(m, nn.modules.conv._ConvNd):
            last_conv = m
    return last_linear or last_conv


def _layers_run(model: nn.Module, example_input: torch.Tensor, types: tuple[type, ...]):
    """The ``types`` layers in the order one forward pass runs them, each with its output, and
    the model's output tensors in order (a tuple's items, a dict's values); None if the pass fails."""
    layers: list[tuple[nn.Module, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, _in, out: layers.append((mod, out)))
             for m in model.modules() if isinstance(m, types)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = model(example_input)
    except Exception:  # the dependency graph's tracing says what is wrong with the model, in one line
        return None
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return layers, _tensors_in(out)


def _tensors_in(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensors_in(item)]
    return []


def _build_graph(model: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's dependency graph; layers its tracer cannot map are opaque (``hwprune.tracing``)."""
    try:
        with _out_of_place(model), _each_warning_once():
            return build_graph(model, example_input)
    except Exception as err:  # tracing errors come in many types
        raise HwpruneError(f"cannot trace the model's dependency graph at input shape "
                           f"{tuple(example_input.shape)}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


_WARNED: set[str] = set()


@contextlib.contextmanager
def _each_warning_once():
    """Torch-Pruning's warnings (a bare ``nn.Parameter``: "Unwrapped parameters detected") once a
    process. The graph is built for every width probe and candidate, and Python's own once-per-line
    rule restarts whenever anything changes the warning filters (the ONNX export does): one model
    printed the same three lines about 20 times."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = str(w.message)
        if text not in _WARNED:
            _WARNED.add(text)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@contextlib.contextmanager
def _out_of_place(model: nn.Module):
    """Layers with an ``inplace`` switch (ReLU, Hardswish, Dropout ...) run out of place meanwhile.

    Torch-Pruning maps each layer to the autograd node of its output; an in-place activation
    right after a conv overwrites that tensor's node, and the conv drops out of every group
    (a conv-ReLU(inplace)-conv network has none). Out of place, the values are the same.
    """
    switched = [m for m in model.modules() if isinstance(getattr(m, "inplace", None), bool) and m.inplace]
    for m in switched:
        m.inplace = False
    try:
        yield
    finally:
        for m in switched:
            m.inplace = True


def _iter_groups(model: nn.Module, dg, ignored: Sequence[nn.Module], unprunable: list | None = None):
    """Torch-Pruning's groups that hwprune prunes, as (name, root, handler, group, members, step).

    A group that reaches a grouped (not depthwise) convolution is cut in multiples of its
    groups (``step``, see ``_grouped_conv_step``). A group whose channels are tied
    (``_tied_channels``), that reaches a grouped convolution through a concatenation or split,
    whose channels a depthwise convolution takes from a concatenation (``_depthwise_over_concat``),
    or that reaches a layer the tracer could not map, is left out wherever groups are listed
    (search, importance, cuts, recovery): cutting it gives fewer channels than asked or breaks
    a layer, which the pruner does not guarantee. ``unprunable``, when given, receives an
    ``UnprunableGroup`` for each.
    """
    tp = _tp()
    names = {id(m): n for n, m in model.named_modules()}
    for g in dg.get_all_groups(ignored_layers=list(ignored),
                               root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root = g[0].dep.target.module
        handler = g[0].dep.handler
        # Output-channel pruning of a conv, depthwise conv or linear roots a group; Torch-
        # Pruning roots a depthwise-coupled group at the depthwise conv itself.
        if getattr(handler, "__name__", "") != "prune_out_channels" and handler not in (
                tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            continue
        members = []
        for item in g:
            mod = item.dep.target.module
            n = names.get(id(mod))
            if n is not None and n not in members and isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
                members.append(n)
        step, reason = _grouped_conv_step(g, names)
        # Tied channels first: of the two reasons a ghost module has, it is the one that says
        # why a requested width cannot be had at all.
        reason = (_opaque_in(g, dg) or reason or _tied_channels(dg, root, handler, names[id(root)])
                  or _depthwise_over_concat(g, names))
        if reason is None and step > 1 and _out_channels(root) <= step:
            reason = f"its {_out_channels(root)} channels are one block of its grouped convolutions; kept at full width"
        if reason is not None:
            if unprunable is not None:
                unprunable.append(UnprunableGroup(names[id(root)], _out_channels(root), reason))
            continue
        yield names[id(root)], root, handler, g, tuple(members), step


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


@dataclass(frozen=True)
class UnprunableGroup:
    """A dependency group left at full width, and why (listed in warnings and reports)."""

    name: str
    channels: int
    reason: str


def find_groups(model: nn.Module, example_input: torch.Tensor, ignored: Sequence[nn.Module] | None = None,
                unprunable: list[UnprunableGroup] | None = None) -> list[PrunableGroup]:
    """The prunable dependency groups of ``model``, in network order.

    ``ignored`` layers keep their output channels; the classifier is always ignored. A group
    that a grouped convolution (not depthwise) produces or consumes is cut in multiples of its
    groups (``PrunableGroup.step``). A group that cannot be cut stays at full width (see
    ``_iter_groups``), so the rest of the model still prunes; ``unprunable``, when given,
    receives those groups and why.
    """
    model = model.eval()
    clf = classifier_layer(model, example_input)
    ignored_layers = list(ignored or []) + ([clf] if clf is not None else [])
    dg = _build_graph(model, example_input)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    skipped: list[UnprunableGroup] = []
    groups, reshaped = [], set()
    for name, root, _, g, members, step in _iter_groups(model, dg, ignored_layers, skipped):
        groups.append(PrunableGroup(name, _out_channels(root), members, step))
        if _reaches_reshape(g):
            reshaped.add(name)
    failing = _cut_failures(model, example_input, groups, getattr(dg, "hwprune_structure", None), alone=reshaped)
    if failing:
        skipped += [UnprunableGroup(g.name, g.channels, failing[g.name]) for g in groups if g.name in failing]
        groups = [g for g in groups if g.name not in failing]
    groups.sort(key=lambda g: order[g.name])
    skipped.sort(key=lambda u: order[u.name])
    if unprunable is not None:
        unprunable.extend(skipped)
    if not groups:
        raise HwpruneError("the model has no prunable conv or linear layer groups"
                           + (f" ({skipped[0].name}: {skipped[0].reason})" if skipped else ""))
    return groups


def _opaque_in(group, dg) -> str | None:
    """Why ``group`` cannot be cut: it reaches a layer Torch-Pruning's tracer could not map."""
    opaque = getattr(dg, "hwprune_opaque", {})
    for item in group:
        if item.dep.target.module in opaque:
            name, why = opaque[item.dep.target.module]
            return f"it reaches {name}, which Torch-Pruning cannot trace ({why}); kept at full width"
    return None


def _is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1 and mod.groups == mod.in_channels


def _depthwise_over_concat(group, names: dict[int, str]) -> str | None:
    """Why ``group`` cannot be cut: a depthwise convolution couples its input channels to its
    output channels, so after ``torch.cat`` of several layers' outputs their channels form one
    group. Cut by importance, one of those layers can lose every channel (a conv of 0 outputs,
    which no runtime builds); no width keeps each one at least one channel. Kept at full width."""
    dw = next((item.dep.target.module for item in group if _is_depthwise(item.dep.target.module)), None)
    if dw is None:
        return None
    size = len(group[0].idxs)
    parts = [item for item in group if not _is_depthwise(item.dep.target.module)
             and isinstance(item.dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))
             and getattr(item.dep.handler, "__name__", "") == "prune_out_channels"
             and len(item.root_idxs or []) < size]
    if not parts:
        return None
    return (f"{names.get(id(dw), type(dw).__name__)} is a depthwise convolution over a concatenation (of "
            f"{', '.join(names.get(id(i.dep.target.module), '?') for i in parts)}): a cut could leave one of "
            "them no channel; kept at full width")


def _grouped_conv_step(group, names: dict[int, str]) -> tuple[int, str | None]:
    """The channel quantum of ``group`` (a Torch-Pruning group) and, when it cannot be cut, why.

    A grouped (not depthwise) convolution with ``k`` groups takes its input and gives its output
    in ``k`` equal blocks, and Torch-Pruning cuts its input weights by the first block's offsets
    (``ConvPruner.prune_in_channels``): the group is cut in multiples of ``k``, the same offsets
    in every block. That holds only when the conv's channels are the group's channels one to
    one; reached through a concatenation or a split, the blocks do not line up and the group
    stays at full width.
    """
    step = 1
    for item in group:
        mod = item.dep.target.module
        if not (isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1 and mod.groups != mod.in_channels):
            continue
        local = [int(i) for i in item.idxs]
        roots = [None if r is None else int(r) for r in (item.root_idxs or [])]
        out = getattr(item.dep.handler, "__name__", "") == "prune_out_channels"
        size = mod.out_channels if out else mod.in_channels
        if local != list(range(size)) or roots != local:
            return step, (f"{names.get(id(mod), type(mod).__name__)} is a grouped convolution (groups={mod.groups}) "
                          f"reached through a concatenation or split; kept at full width")
        step = math.lcm(step, int(mod.groups))
    return step, None


# (model structure, group name) -> why its channels are tied, or None: a structural fact, and
# asking Torch-Pruning costs two group traversals, repeated on every graph build otherwise.
_TIED_BY_STRUCTURE: dict[tuple, str | None] = {}


def _tied_channels(dg, root: nn.Module, handler, name: str) -> str | None:
    key = (getattr(dg, "hwprune_structure", None), name)
    if key[0] is None or key not in _TIED_BY_STRUCTURE:
        _TIED_BY_STRUCTURE[key] = _ask_tied_channels(dg, root, handler)
    return _TIED_BY_STRUCTURE[key]


def _ask_tied_channels(dg, root: nn.Module, handler) -> str | None:
    """Why the group rooted at ``root`` cannot be cut channel by channel: its channels are tied.

    A conv's output concatenated with a depthwise copy of itself (GhostNet's ghost module)
    feeds one layer twice: cutting channel i cuts its copy too, so a 48-channel group has 24
    independent channels and a requested width is not the width one gets. Checked on the
    first and the last channel (a tie shows on both halves of such a concatenation).
    """
    dense = _out_channels(root)
    for i in sorted({0, dense - 1}):
        cut = next((len(set(item.idxs)) for item in dg.get_pruning_group(root, handler, idxs=[i]).items
                    if item.dep.target.module is root and item.dep.handler == handler), 1)
        if cut > 1:
            return (f"cutting one of its channels cuts {cut} (channels tied, e.g. a conv's output concatenated "
                    f"with a copy of it); kept at full width")
    return None


# (model structure, group names) -> {group: why its cut fails}: a structural fact, and probing
# costs a few prunes, repeated on every find_groups otherwise.
_CUT_FAILURES: dict[tuple, dict[str, str]] = {}


def _reaches_reshape(group) -> bool:
    """Whether a Torch-Pruning group passes through a reshape, split or unbind, whose shape
    arithmetic (a channel shuffle's ``view(b, 2, c // 2, h, w)``) may hold for some cuts only."""
    tp = _tp()
    kinds = (tp.ops._ReshapeOp, tp.ops._SplitOp, tp.ops._UnbindOp)
    return any(isinstance(item.dep.target.module, kinds) or isinstance(item.dep.source.module, kinds)
               for item in group)


def _cut_failures(model: nn.Module, example_input: torch.Tensor, groups: Sequence[PrunableGroup],
                  structure: tuple | None, alone: set[str] = frozenset()) -> dict[str, str]:
    """The groups whose cut by one channel step breaks the forward pass or changes an output's shape, and why.

    Torch-Pruning's graph knows layers, not the shape arithmetic between them: an attention
    block reshapes its projections into ``(heads, head_dim)`` with the head count written in
    the code, so a cut of one channel there is valid for Torch-Pruning and fails at run time.
    And only the classifier is known to be an output: a second head (a box regressor, a mask)
    would lose output channels, which changes what the model returns. All groups are cut
    together once; only when that fails are they halved until each failing group is found
    (a few prunes for a few such groups). The groups in ``alone`` (those reaching a reshape) are
    also cut one at a time: a channel shuffle after a concatenation takes both halves cut by one
    (30 channels, even) and fails on one of them cut alone (31).
    """
    key = (structure, tuple(g.name for g in groups), tuple(sorted(alone)))
    if structure is not None and key in _CUT_FAILURES:
        return _CUT_FAILURES[key]
    with torch.no_grad():
        dense_shapes = _output_shapes(model(example_input))

    def fails(subset: Sequence[PrunableGroup]) -> str | None:
        """Why cutting ``subset`` fails, worded to follow "cutting it"; None when it works."""
        try:
            pruned = prune_to_widths(model, example_input, {g.name: g.channels - g.step for g in subset})
            with torch.no_grad():
                shapes = _output_shapes(pruned(example_input))
        except Exception as err:  # a failed cut shows as any error the model's code raises
            text = " ".join(str(err).split()) or type(err).__name__
            return f"breaks the forward pass ({text[:200]})"
        if shapes != dense_shapes:
            was, now = next(((a, b) for a, b in zip(dense_shapes, shapes) if a != b), (dense_shapes, shapes))
            return f"changes the shape of a model output from {was} to {now} (the layer feeds an output)"
        return None

    def search(subset: Sequence[PrunableGroup], err: str) -> dict[str, str]:
        if len(subset) == 1:
            return {subset[0].name: f"cutting {subset[0].step} channel(s) of it {err}; kept at full width"}
        found: dict[str, str] = {}
        for part in (subset[:len(subset) // 2], subset[len(subset) // 2:]):
            part_err = fails(part)
            if part_err is not None:
                found.update(search(part, part_err))
        # each half runs alone but not together: keep them all dense rather than guess
        return found or {g.name: f"cut together with other groups it {err}; kept at full width" for g in subset}

    cuttable = [g for g in groups if g.channels >= 2 * g.step]  # a one-step group has no cut to try
    err = fails(cuttable) if cuttable else None
    out = {} if err is None else search(cuttable, err)
    for g in cuttable:
        if g.name in alone and g.name not in out and (err := fails([g])) is not None:
            out[g.name] = f"cutting {g.step} channel(s) of it alone {err}; kept at full width"
    if structure is not None:
        _CUT_FAILURES[key] = out
    return out


def _output_shapes(out: Any) -> list[tuple[int, ...] | None]:
    """The shapes of every tensor in a model's output (nested tuples, lists and dicts), in order."""
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        return [s for k in out for s in _output_shapes(out[k])]
    if isinstance(out, (list, tuple)):
        return [s for o in out for s in _output_shapes(o)]
    return [None]


def snap_channels(channels: float, dense: int, multiple: int) -> int:
    """Round a channel count to ``multiple``, never below one multiple nor above ``dense``."""
    if dense <= multiple:
        return dense
    snapped = int(round(channels / multiple)) * multiple
    return int(min(dense, max(multiple, snapped)))


# A group with at most this many allowed widths is profiled at every one of them: latency is
# a step function of channels (runtimes pad to their vector block), which interpolating
# between ratio grid points would smooth over.
FULL_GRID_MAX_POINTS = 16


def width_grid(dense: int, multiple: int, ratios: Sequence[float], full_when_small: bool = False) -> list[int]:
    """Snapped channel counts to profile: the keep ratios — or, with ``full_when_small``, every
    allowed width when there are at most ``FULL_GRID_MAX_POINTS`` — always with one multiple
    and ``dense``."""
    if full_when_small and dense // multiple <= FULL_GRID_MAX_POINTS:
        return sorted({snap_channels(k * multiple, dense, multiple) for k in range(1, dense // multiple + 1)} | {dense})
    widths = {snap_channels(r * dense, dense, multiple) for r in ratios}
    # The smallest width an agent may choose (one multiple) and the dense width are always
    # profiled, so any architecture in the search space is inside the grid.
    widths.add(dense)
    widths.add(snap_channels(multiple, dense, multiple))
    return sorted(widths)


def _importance(criterion: str):
    tp = _tp()
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn-scale":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise HwpruneError(f"unknown importance criterion '{criterion}' (known: {', '.join(IMPORTANCE_CRITERIA)})")


def channel_importance(model: nn.Module, example_input: torch.Tensor, criterion: str = "l1",
                       only: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-channel importance of every group's output channels, by group name (of the groups
    named in ``only`` when given: a group left at full width is never scored)."""
    return {name: s for name, (s, _) in _scored_groups(model, example_input, criterion, only).items()}


def channel_ranking(model: nn.Module, example_input: torch.Tensor, criterion: str = "l1",
                    only: Collection[str] | None = None) -> dict[str, list[int]]:
    """Every group's channels from most to least important (``rank_channels``): the ``w`` first
    are the channels a cut to width ``w`` keeps."""
    return {name: rank_channels(s, step)
            for name, (s, step) in _scored_groups(model, example_input, criterion, only).items()}


def _scored_groups(model: nn.Module, example_input: torch.Tensor, criterion: str,
                   only: Collection[str] | None = None) -> dict[str, tuple[torch.Tensor, int]]:
    model = model.eval()
    dg = _build_graph(model, example_input)
    clf = classifier_layer(model, example_input)
    imp = _importance(criterion)
    scores = {}
    for name, _, _, g, _, step in _iter_groups(model, dg, [clf] if clf is not None else []):
        if only is not None and name not in only:
            continue
        s = imp(g)
        if s is None:
            why = (": no BatchNorm follows its layer (bn-scale ranks channels by their BatchNorm scale); "
                   "use l1 or l2" if criterion == "bn-scale" else "")
            raise HwpruneError(f"importance '{criterion}' is undefined for group '{name}'{why}")
        scores[name] = (s.detach().float().cpu(), step)
    return scores


def rank_channels(scores: torch.Tensor, step: int = 1) -> list[int]:
    """Channel indices from most to least important by ``scores`` (stable: ties keep index order).

    With ``step`` k > 1 (a group reaching a grouped convolution, see ``PrunableGroup.step``) the
    channels are k equal blocks and an offset is ranked by its scores summed over the blocks;
    each offset brings its k channels together, so every prefix of k·n channels keeps the same
    n offsets in every block, as the convolution needs.
    """
    if step <= 1:
        return torch.argsort(scores, descending=True, stable=True).tolist()
    block = scores.numel() // step
    if block * step != scores.numel():
        raise HwpruneError(f"{scores.numel()} channels do not split into {step} equal blocks")
    offsets = torch.argsort(scores.reshape(step, block).sum(0), descending=True, stable=True).tolist()
    return [b * block + o for o in offsets for b in range(step)]


def _check_blocks(name: str, kept: Sequence[int], dense: int, step: int) -> None:
    """A kept set of a stepped group must keep the same offsets in each of its ``step`` blocks."""
    if step <= 1:
        return
    block = dense // step
    offsets = [sorted(i - b * block for i in kept if b * block <= i < (b + 1) * block) for b in range(step)]
    if any(o != offsets[0] for o in offsets):
        raise HwpruneError(f"group '{name}': a grouped convolution needs the same channels kept in each of its "
                           f"{step} blocks of {block}; the kept channels differ between blocks")


def prune_to_widths(model: nn.Module, example_input: torch.Tensor, widths: Mapping[str, int],
                    criterion: str = "l1", keep: Mapping[str, Sequence[int]] | None = None,
                    inplace: bool = False, kept_out: dict[str, list[int]] | None = None) -> nn.Module:
    """Physically prune ``model`` so each named group keeps ``widths[name]`` output channels.

    Channels are chosen by ``criterion`` (highest importance kept) unless ``keep`` gives the
    indices to keep for a group (a replayed plan). Groups not named keep all channels.
    ``kept_out``, when given, receives every group's kept channel indices (a plan).
    Returns a smaller dense model (a copy unless ``inplace``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model = model.eval()
    dg = _build_graph(model, example_input)
    clf = classifier_layer(model, example_input)
    imp = _importance(criterion) if keep is None or set(widths) - set(keep) else None
    known = set()
    requested = set(widths) | set(keep or {})
    # Groups are traced one at a time, after the cuts before them (Torch-Pruning yields them
    # lazily): a group's indices into a concatenation shift when a group feeding an earlier
    # part of it is cut, so a group listed up front would be scored and cut at stale indices.
    for name, root, handler, g, _, step in _iter_groups(model, dg, [clf] if clf is not None else []):
        if kept_out is None and requested <= known:
            break  # nothing left to cut: the width probe cuts one group, and tracing the rest costs
        known.add(name)
        dense = _out_channels(root)
        if name not in widths and (keep is None or name not in keep):
            if kept_out is not None:
                kept_out[name] = list(range(dense))
            continue
        if keep is not None and name in keep:
            kept = sorted(int(i) for i in keep[name])
            if not kept or kept[-1] >= dense or len(set(kept)) != len(kept):
                raise HwpruneError(f"group '{name}': kept channel indices do not fit its {dense} channels")
            _check_blocks(name, kept, dense, step)
        else:
            target = int(widths[name])
            if not 1 <= target <= dense:
                raise HwpruneError(f"group '{name}': width {target} outside [1, {dense}]")
            if target % step:
                raise HwpruneError(f"group '{name}' reaches a grouped convolution and is cut in multiples of "
                                   f"{step} channels; width {target} is not one")
            if target == dense:
                kept = list(range(dense))
            else:
                kept = sorted(rank_channels(imp(g), step)[:target])
        if kept_out is not None:
            kept_out[name] = kept
        if len(kept) == dense:
            continue
        drop = sorted(set(range(dense)) - set(kept))
        cut = dg.get_pruning_group(root, handler, idxs=drop)
        companions = _weight_shaped_companions(cut)
        cut.prune()
        _cut_companions(companions)
    unknown = (set(widths) | set(keep or {})) - known
    if unknown:
        raise HwpruneError(f"unknown group(s) {', '.join(sorted(unknown))} (model groups: {', '.join(sorted(known))})")
    return model


def _weight_shaped_companions(cut) -> list[tuple[nn.Module, str, int, list[int]]]:
    """The tensors a pruning group's convs and linears hold beside weight and bias with the
    weight's own shape (a fixed connectivity mask, as X-DenseNet's X-convolution keeps), and how
    to cut each as Torch-Pruning cuts the weight: (module, attribute, dim, kept indices).

    Torch-Pruning cuts the parameters it knows per layer type; a mask left whole no longer
    matches the weight it multiplies, and the forward pass fails.
    """
    found = []
    for item in cut:
        mod = item.dep.target.module
        if not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        kind = getattr(item.dep.handler, "__name__", "")
        if kind not in ("prune_out_channels", "prune_in_channels"):
            continue
        weight_shape = tuple(mod.weight.shape)
        extra = [n for n, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
                 if n not in ("weight", "bias") and t is not None and tuple(t.shape) == weight_shape]
        if not extra:
            continue
        out = kind == "prune_out_channels"
        transposed = bool(getattr(mod, "transposed", False))
        dim = (1 if transposed else 0) if out else (0 if transposed else 1)
        size = _out_channels(mod) if out else (mod.in_channels if isinstance(mod, nn.modules.conv._ConvNd)
                                               else mod.in_features)
        keep = sorted(set(range(size)) - {int(i) for i in item.idxs})
        if not out and isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1:
            keep = keep[:len(keep) // mod.groups]  # the weight holds one block of a grouped conv's input
        found += [(mod, n, dim, keep) for n in extra]
    return found


def _cut_companions(companions: Sequence[tuple[nn.Module, str, int, list[int]]]) -> None:
    for mod, attr, dim, keep in companions:
        t = getattr(mod, attr)
        cut = torch.index_select(t.data, dim, torch.as_tensor(keep, dtype=torch.long, device=t.device))
        if isinstance(t, nn.Parameter):
            setattr(mod, attr, nn.Parameter(cut, requires_grad=t.requires_grad))
        else:
            setattr(mod, attr, cut)


def _forward_then_remove(model: nn.Module, example_input: torch.Tensor, hooks: list) -> None:
    """One eval-mode forward pass for the hooks' sake; the hooks go even if it fails."""
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()


def group_layer_info(model: nn.Module, example_input: torch.Tensor,
                     groups: Sequence[PrunableGroup]) -> dict[str, dict[str, int]]:
    """Geometry of each group's root layer in ``model``: what a layer-aware agent's state holds.

    Keys: ``cin``, ``cout``, ``kernel``, ``stride``, ``padding``, ``groups`` (conv groups) and
    the input ``in_h``, ``in_w`` (1 for a Linear layer), read from one forward pass.
    """
    mods = dict(model.named_modules())
    seen: dict[str, tuple[int, ...]] = {}
    hooks = []

    def record(name: str):
        def hook(mod, inp, out) -> None:  # returns None: a forward hook's return value replaces the output
            seen.setdefault(name, tuple(inp[0].shape))
        return hook

    for g in groups:
        m = mods.get(g.name)
        if m is not None:
            hooks.append(m.register_forward_hook(record(g.name)))
    _forward_then_remove(model, example_input, hooks)
    info: dict[str, dict[str, int]] = {}
    for g in groups:
        m, shape = mods.get(g.name), seen.get(g.name, ())
        if isinstance(m, nn.modules.conv._ConvNd):
            info[g.name] = {"cin": int(m.in_channels), "cout": int(m.out_channels), "kernel": int(m.kernel_size[0]),
                            "stride": int(m.stride[0]),
                            "padding": int(m.padding[0]) if isinstance(m.padding, tuple) else 0,
                            "groups": int(m.groups), "in_h": int(shape[2]) if len(shape) > 2 else 1,
                            "in_w": int(shape[3]) if len(shape) > 3 else 1}
        elif isinstance(m, nn.Linear):
            info[g.name] = {"cin": int(m.in_features), "cout": int(m.out_features), "kernel": 1, "stride": 1,
                            "padding": 0, "groups": 1, "in_h": 1, "in_w": 1}
        else:
            info[g.name] = {"cin": 0, "cout": int(g.channels), "kernel": 1, "stride": 1, "padding": 0, "groups": 1,
                            "in_h": 1, "in_w": 1}
    return info


def group_widths(model: nn.Module, groups: Sequence[PrunableGroup]) -> dict[str, int]:
    """Current output channels of each group's root layer (after pruning)."""
    mods = dict(model.named_modules())
    return {g.name: _out_channels(mods[g.name]) for g in groups}


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (conv and linear layers)."""
    macs = 0

    def conv_hook(m, inp, out):
        nonlocal macs
        k = math.prod(m.kernel_size) * (m.in_channels // m.groups)
        macs += out.numel() * k

    def linear_hook(m, inp, out):
        nonlocal macs
        macs += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    _forward_then_remove(model, example_input, hooks)
    return int(macs)
