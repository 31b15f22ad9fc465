"""Per-layer latency candidates: every unit of the network at every width on its grid.

A candidate is one unit (see ``hwprune.widthgraph``) at concrete group widths, exported as
ONNX. Candidates with identical signatures (same ops, attributes and shapes) are profiled
once, wherever they occur in the network.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from hwprune.errors import HwpruneError
from hwprune.export import export_onnx
from hwprune.groups import PrunableGroup, prune_to_widths, width_grid
from hwprune.widthgraph import Unit, WidthGraph

DEFAULT_RATIOS = tuple(round(0.1 * k, 2) for k in range(1, 11))


def build_width_graph(model: nn.Module, example_input: torch.Tensor,
                      groups: Sequence[PrunableGroup], progress=None) -> WidthGraph:
    """Export the dense model and, per group, a copy one channel step narrower (one channel, or one
    per block of a group that reaches a grouped convolution); diff the shapes."""
    dense = export_onnx(model, example_input)
    dense_params = {n: list(p.shape) for n, p in model.named_parameters()}
    param_deps: dict[str, list[dict[int, float]]] = {n: [dict() for _ in s] for n, s in dense_params.items()}
    perturbed = []
    for gi, g in enumerate(groups):
        step = max(1, int(getattr(g, "step", 1)))
        if g.channels >= 2 * step:
            narrower = prune_to_widths(model, example_input, {g.name: g.channels - step})
            perturbed.append((gi, step, export_onnx(narrower, example_input)))
            # The same diff on the PyTorch parameters gives exact parameter counts at any widths.
            for n, p in narrower.named_parameters():
                for axis, (d0, d1) in enumerate(zip(dense_params[n], p.shape)):
                    if d0 != d1:
                        param_deps[n][axis][gi] = float(d0 - d1) / step
        if progress is not None:
            progress(gi + 1, len(groups))
    wg = WidthGraph.from_exports(dense, perturbed, [g.channels for g in groups])
    wg.torch_param_shapes = {n: (dense_params[n], param_deps[n]) for n in dense_params}
    return wg


@dataclass(frozen=True)
class Candidate:
    """One unit at one grid point of the widths of the groups it depends on."""

    unit: int
    point: tuple[int, ...]
    signature: str


def grids_for(groups: Sequence[PrunableGroup], channel_multiple: int,
              ratios: Sequence[float] | None = None) -> list[list[int]]:
    """Width grids per group: the default (``ratios=None``) profiles every allowed width of
    small groups and the 10 keep ratios of large ones; explicit ratios are taken as given."""
    full = ratios is None
    return [width_grid(g.channels, math.lcm(channel_multiple, getattr(g, "step", 1)), ratios or DEFAULT_RATIOS,
                       full_when_small=full) for g in groups]


# A unit is profiled at every point of the product of its groups' grids. A conv after a
# concatenation of k groups (VoVNet's one-shot aggregation, PeleeNet, HarDNet, DenseNet)
# would need about 10^k points, minutes of enumeration and hours of timing; the grids of the
# groups that meet there are coarsened until no unit has more than this many.
MAX_UNIT_GRID_POINTS = 1024


def cap_unit_grids(grids: Sequence[Sequence[int]], units: Sequence[Unit],
                   max_points: int = MAX_UNIT_GRID_POINTS) -> list[list[int]]:
    """``grids`` with the largest grid of the widest unit halved (its ends kept) until every
    unit's grid product is at most ``max_points``, or its groups are down to their two ends.

    A grid keeps its ends (one channel multiple and the dense width), so every architecture
    an agent may choose stays inside the grid: coarser grids interpolate, they never refuse.
    """
    grids = [list(g) for g in grids]

    def points(u: Unit) -> int:
        return math.prod(len(grids[g]) for g in u.groups)

    while True:
        over = [u for u in units if points(u) > max_points and any(len(grids[g]) > 2 for g in u.groups)]
        if not over:
            return grids
        widest = max(over, key=points)
        g = max(widest.groups, key=lambda gi: len(grids[gi]))
        grids[g] = [grids[g][0], *grids[g][1:-1][1::2], grids[g][-1]]


# Beyond this many (unit, grid point) pairs in all, even after the cap, enumerating their
# signatures takes longer than profiling should (DenseNet-40 has 90,102 and takes seconds
# a thousand; PeleeNet's stem-to-head concatenations have 845,414): the profile stops at once.
MAX_TOTAL_GRID_POINTS = 250_000


def check_grid_size(grids: Sequence[Sequence[int]], units: Sequence[Unit], names: Sequence[str],
                    max_total: int = MAX_TOTAL_GRID_POINTS) -> None:
    """A one-line error naming the unit with the most points when the grids, capped, are still too many."""
    points = [math.prod(len(grids[g]) for g in u.groups) for u in units]
    total = sum(points)
    if total <= max_total:
        return
    worst = max(range(len(units)), key=lambda i: points[i])
    u = units[worst]
    raise HwpruneError(f"cannot profile this model yet: its layer {u.name} depends on {len(u.groups)} groups that "
                       f"meet at a concatenation ({', '.join(names[g] for g in u.groups[:3])} ...), so its units need "
                       f"{total:,} grid points even with the grids coarsened (at most {max_total:,})")


def enumerate_candidates(wg: WidthGraph, units: Sequence[Unit],
                         grids: Sequence[Sequence[int]]) -> Iterator[Candidate]:
    """Every (unit, grid point) with its signature; other groups stay dense (irrelevant)."""
    for u in units:
        axes = [grids[g] for g in u.groups]
        for point in itertools.product(*axes):
            widths = list(wg.dense_widths)
            for g, w in zip(u.groups, point):
                widths[g] = w
            yield Candidate(u.index, tuple(point), wg.signature(u.nodes, widths))


def candidate_onnx(wg: WidthGraph, unit: Unit, point: Sequence[int]) -> bytes:
    widths = list(wg.dense_widths)
    for g, w in zip(unit.groups, point):
        widths[g] = w
    return wg.instantiate(unit.nodes, widths)
