"""The hardware-driven width grid (``channel_multiple: auto``): each group's measured latency staircase and the widths it allows.

Runtimes pad channels to their vector blocks and tensor-core tiles, so a layer's latency is a
staircase in its channels, and where the staircase is flat a narrower width costs what the
wider one does and only loses accuracy. A fixed multiple guesses where the steps are; on an
AVX-512 CPU with onnxruntime they are not at every multiple of 8, and at small widths they may
not be there at all. With ``auto`` the profile measures them instead:

1. per group, every unit that depends on it at fine widths — every width up to
   :data:`FINE_BELOW`, then :data:`POINTS_PER_OCTAVE` a doubling — the unit's other groups
   dense; the units' latencies summed are the group's staircase;
2. walking down from the dense width, a width is allowed when it is cheaper than the last
   allowed (wider) one by more than both measurements' confidence half-widths together, by
   :data:`MIN_STEP_FRACTION` of the wider one's latency and by at least the minimum step, the smallest that leaves at most :data:`MAX_STEPS` widths; the
   cheapest width measured is always allowed, so the floor is as low as the device goes;
   the staircase is measured in :data:`PROCESSES` processes (the profile's own and fresh ones)
   and a step is kept only when every one of them sees it: a process runs at its own speed
   level and small savings come and go between processes (issue 23 measured two profiles
   allowing ``1, 2, 3, 9…16, 32`` and ``1…8, 16, 32`` for the same group), so a step one
   process alone saw may not be there when the model is deployed;
3. the LUT's unit tables are then profiled on the allowed widths (see
   :func:`hwprune.candidates.cap_unit_grids`), so every width a search may choose is a
   measured point of every table it touches.

The staircases and the allowed widths are kept in the LUT (``staircases`` of the model's entry)
and shown by ``hwprune lut show`` and in a prune run's report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from hwprune.candidates import Candidate
from hwprune.errors import HwpruneError
from hwprune.widthgraph import Unit, WidthGraph

AUTO = "auto"
# Every width up to here, where a channel is a large share of a layer and the floor is decided.
FINE_BELOW = 16
# Above FINE_BELOW, this many widths per doubling (16..32 in steps of 2, 32..64 in steps of 4, ...).
POINTS_PER_OCTAVE = 8
# At most this many allowed widths a group: a unit after two groups is then profiled at most
# 12 x 12 = 144 times, and the search still has a width every ~1/12 of the group's latency range.
MAX_STEPS = 12

# A step must also save this share of the wider width's latency: a row's confidence interval is
# the noise within one timing run, while the same layer timed in another process or beside other
# layers moves by a few per cent (issue 19), so a smaller saving may not be there when deployed.
MIN_STEP_FRACTION = 0.01

# Processes the staircase is measured in by default: the profile's own and one fresh one.
PROCESSES = 2

RULE = ("a width is allowed when the group's measured latency there is lower than at the next wider "
        "allowed width by more than the two measurements' confidence half-widths, by 1% of the wider "
        "one's and by at least min_step_ms, in every process the staircase was measured in; the "
        "cheapest width measured is always allowed")


def staircase_widths(dense: int, step: int = 1) -> list[int]:
    """The widths a group's staircase is measured at: every one up to ``FINE_BELOW``, then
    ``POINTS_PER_OCTAVE`` per doubling, and ``dense``; with a channel ``step`` (a group reaching a
    grouped convolution), every multiple of it up to ``FINE_BELOW`` steps, then those of the
    doubling grid rounded up to a multiple."""
    step = max(1, int(step))
    widths = set(range(step, min(dense, FINE_BELOW * step) + 1, step))
    w = FINE_BELOW * step
    while w < dense:
        w += max(1, (1 << (w.bit_length() - 1)) // POINTS_PER_OCTAVE)
        widths.add(min(-(-w // step) * step, dense))
    widths.add(dense)
    return sorted(widths)


@dataclass(frozen=True)
class StairPoint:
    """One unit of one group's staircase at one width of that group (the unit's other groups dense)."""

    group: int
    width: int
    candidate: Candidate


def staircase_candidates(wg: WidthGraph, units: Sequence[Unit],
                         steps: Sequence[int] | None = None) -> Iterator[StairPoint]:
    """Every (group, width, unit) of the staircases, with the unit's signature at that point
    (``steps``: each group's channel quantum, 1 when not given)."""
    dense = list(wg.dense_widths)
    for g, d in enumerate(dense):
        for w in staircase_widths(d, steps[g] if steps is not None else 1):
            for u in units:
                if g not in u.groups:
                    continue
                widths = list(dense)
                widths[g] = w
                point = tuple(widths[h] for h in u.groups)
                yield StairPoint(g, w, Candidate(u.index, point, wg.signature(u.nodes, widths)))


@dataclass
class Staircase:
    """One group's staircase as measured, and the widths it allows (ascending, dense last)."""

    group: str
    dense: int
    widths: list[int]
    ms: list[float]           # Σ of the group's units at each width, other groups dense (mean over processes)
    noise_ms: list[float]     # the sum's confidence half-width (the widest of the processes')
    allowed: list[int]
    min_step_ms: float
    # Each process's sums, put on the first process's level; empty when one process measured it.
    process_ms: list[list[float]] = field(default_factory=list)

    @property
    def processes(self) -> int:
        return max(1, len(self.process_ms))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Staircase:
        return cls(str(d["group"]), int(d["dense"]), [int(w) for w in d["widths"]], [float(v) for v in d["ms"]],
                   [float(v) for v in d["noise_ms"]], [int(w) for w in d["allowed"]], float(d["min_step_ms"]),
                   [[float(v) for v in p] for p in d.get("process_ms") or []])


# One process's staircase of one group: its widths, Σ latency and Σ noise at each.
Series = tuple[list[float], list[float]]


def measure_staircases(points: Sequence[StairPoint], group_names: Sequence[str], dense: Sequence[int],
                       latency_ms: Mapping[str, float], noise_ms: Mapping[str, float],
                       max_steps: int = MAX_STEPS,
                       others: Sequence[tuple[Mapping[str, float], Mapping[str, float]]] = ()) -> list[Staircase]:
    """Each group's staircase from the measured rows of its points, and its allowed widths.

    ``others``: the same points' (latency, noise) as measured in other processes; each is put on
    the first's level group by group, and a step is allowed only where every process sees it."""
    runs = [_sums(points, group_names, dense, lat, noise) for lat, noise in [(latency_ms, noise_ms), *others]]
    out = []
    for g, (name, d) in enumerate(zip(group_names, dense)):
        widths = runs[0][g][0]
        series = [runs[0][g][1]] + [_on_level(runs[0][g][1][0], run[g][1]) for run in runs[1:]]
        allowed, step = allowed_widths(widths, *series[0], max_steps, others=series[1:])
        mean, noise = _mean_series(series)
        out.append(Staircase(name, int(d), widths, mean, noise, allowed, step,
                             [list(s[0]) for s in series] if others else []))
    return out


def _sums(points: Sequence[StairPoint], group_names: Sequence[str], dense: Sequence[int],
          latency_ms: Mapping[str, float], noise_ms: Mapping[str, float]) -> list[tuple[list[int], Series]]:
    """Each group's widths and staircase (Σ latency, Σ noise in quadrature) from one process's rows."""
    sums: list[dict[int, list[float]]] = [dict() for _ in dense]
    for p in points:
        sig = p.candidate.signature
        if sig not in latency_ms:
            raise HwpruneError(f"staircase of group '{group_names[p.group]}' at width {p.width}: "
                               f"unit {p.candidate.unit} was not measured; re-run hwprune profile")
        acc = sums[p.group].setdefault(p.width, [0.0, 0.0])
        acc[0] += float(latency_ms[sig])
        acc[1] += float(noise_ms.get(sig, 0.0)) ** 2
    out = []
    for g, d in enumerate(dense):
        found = sums[g] or {int(d): [0.0, 0.0]}  # a group no unit depends on: only dense is worth having
        widths = sorted(found)
        out.append((widths, ([found[w][0] for w in widths], [found[w][1] ** 0.5 for w in widths])))
    return out


def _on_level(reference_ms: Sequence[float], series: Series) -> Series:
    """``series`` scaled to ``reference_ms``'s level by the median ratio over its widths: each
    process runs at its own speed, and only the shape of the staircase is compared."""
    import statistics

    ratios = [r / m for r, m in zip(reference_ms, series[0]) if m > 0 and r > 0]
    k = statistics.median(ratios) if ratios else 1.0
    return [m * k for m in series[0]], [n * k for n in series[1]]


def allowed_widths(widths: Sequence[int], ms: Sequence[float], noise_ms: Sequence[float],
                   max_steps: int = MAX_STEPS, others: Sequence[Series] = ()) -> tuple[list[int], float]:
    """The widths on a step of the staircase (ascending; the widest, dense, always) and the minimum
    step in ms that kept at most ``max_steps`` of them (0 when the noise alone did).

    ``others``: the staircase as other processes measured it, on the same level; a step must then
    be there in each of them."""
    series = [(list(ms), list(noise_ms)), *((list(m), list(n)) for m, n in others)]
    if not widths or any(len(m) != len(widths) or len(n) != len(widths) for m, n in series):
        raise HwpruneError("a staircase needs one latency and one noise figure per width")
    if max_steps < 2:
        raise HwpruneError(f"max_steps must be >= 2, got {max_steps}")
    kept = _walk(series, 0.0)
    step = 0.0
    if len(kept) > max_steps:
        lo, hi = 0.0, max(max(m) - min(m) for m, _ in series)
        for _ in range(40):  # the smallest minimum step that leaves at most max_steps widths
            mid = (lo + hi) / 2
            if len(_walk(series, mid)) > max_steps:
                lo = mid
            else:
                hi = mid
        step = hi
        kept = _walk(series, step)
    # The floor is the processes' mean staircase's: one process's odd reading must not raise it
    # (a pytorchcv mobilenet's 128-channel groups kept only 112 and 128 when the cheapest width
    # of each process alone had to be cheaper in all of them).
    mean, noise = _mean_series(series)
    cheapest, last = _cheapest(mean, noise), kept[-1]
    if cheapest < last and _cheaper([(mean, noise)], cheapest, last, 0.0):
        kept.append(cheapest)
    return sorted(int(widths[i]) for i in kept), float(step)


def _mean_series(series: Sequence[Series]) -> Series:
    """The processes' mean staircase, with the widest of their noise figures at each width."""
    n = len(series[0][0])
    return ([sum(m[i] for m, _ in series) / len(series) for i in range(n)],
            [max(noise[i] for _, noise in series) for i in range(n)])


def _cheaper(series: Sequence[Series], i: int, j: int, min_step: float) -> bool:
    """Width index ``i`` is cheaper than ``j`` beyond noise, 1% and ``min_step`` in every process."""
    return all(m[i] < m[j] - max(min_step, n[i] + n[j], MIN_STEP_FRACTION * m[j]) for m, n in series)


def _walk(series: Sequence[Series], min_step: float) -> list[int]:
    """Indices kept walking down from the widest: each cheaper than the last kept one beyond noise and ``min_step``."""
    kept = [len(series[0][0]) - 1]
    for i in range(len(series[0][0]) - 2, -1, -1):
        if _cheaper(series, i, kept[-1], min_step):
            kept.append(i)
    return kept


def _cheapest(ms: Sequence[float], noise: Sequence[float]) -> int:
    """The widest width whose latency is within noise of the minimum (a narrower one costing the same is no gain)."""
    best = min(range(len(ms)), key=lambda i: ms[i])
    ties = [i for i in range(len(ms)) if ms[i] <= ms[best] + noise[i] + noise[best]]
    return max(ties)


def search_space(groups: Sequence[Any], cfg: Any, predictor: Any | None) -> Any:
    """The widths a search may choose on ``cfg``: every multiple of its ``channel_multiple``, or, with
    ``auto``, the steps the LUT measured (every width when there is no LUT to say)."""
    from hwprune.agents.base import SearchSpace

    names, dense = [g.name for g in groups], [int(g.channels) for g in groups]
    steps = [int(getattr(g, "step", 1)) for g in groups]
    if not cfg.auto_widths:
        return SearchSpace(names, dense, int(cfg.channel_multiple), steps=steps)
    if predictor is None:
        return SearchSpace(names, dense, 1, steps=steps)
    if predictor.allowed is None:
        made = predictor.structure.get("channel_multiple")
        raise HwpruneError(f"the LUT's profile of this model has no measured width steps (it was profiled with "
                           f"channel_multiple {made}) but {cfg.name} asks for channel_multiple auto: run "
                           f"hwprune profile again with this device config (it measures only what is missing)")
    return SearchSpace(names, dense, 1, predictor.allowed, steps=steps)


def staircases_of(structure: Mapping[str, Any], as_searched: bool = True) -> list[Staircase] | None:
    """The staircases a LUT's model entry keeps (None when it was profiled on a fixed multiple);
    ``as_searched``: each one's allowed widths those its unit tables were profiled at, which a
    coarser grid (``--grid``, or a unit after a concatenation) may have thinned."""
    found = structure.get("staircases")
    if not found:
        return None
    out = [Staircase.from_dict(s) for s in found]
    groups = structure.get("groups") or []
    if as_searched and len(groups) == len(out):
        for s, g in zip(out, groups):
            if g.get("allowed"):
                s.allowed = [int(w) for w in g["allowed"]]
    return out


def report_section(staircases: Sequence[Staircase] | None, channel_multiple: int | str,
                   steps: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What a report says of the width grid: the rule and, with ``auto``, every group's measured
    steps; ``steps`` names the groups cut in multiples of a grouped convolution's groups."""
    stepped = {n: int(k) for n, k in (steps or {}).items() if int(k) > 1}
    if not staircases:
        rule = ("every width (no LUT measured the steps)" if channel_multiple == AUTO
                else f"every multiple of {channel_multiple} channels from one multiple to dense")
        out: dict[str, Any] = {"channel_multiple": channel_multiple, "rule": rule}
    else:
        out = {"channel_multiple": AUTO, "rule": RULE, "max_steps": MAX_STEPS,
               "groups": [s.to_dict() for s in staircases]}
    if stepped:
        out["rule"] += ("; a group that reaches a grouped convolution only at multiples of its groups ("
                        + ", ".join(f"{n}: {k}" for n, k in stepped.items()) + ")")
        out["group_steps"] = stepped
    return out
