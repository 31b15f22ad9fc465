"""In-process calibration: the LUT's millisecond scale refitted from sub-networks measured in the process that uses it.

A LUT's unit latencies rank architectures well, but its absolute scale is the scale of the
process that profiled it: on a shared VM each process runs at its own speed level (the dense
resnet20 measured 0.52 ms in one process and 0.71–0.95 ms in others on one day). Every command
that turns predictions into milliseconds therefore first measures a few whole sub-networks here,
interleaved with the dense model, and refits ``measured = a + b · raw`` on them
(:func:`hwprune.lut.fit_calibration`). The sub-networks spread over the width range and always
include the smallest architecture, so whether a budget is reachable is decided by a
measurement in this process. The LUT's stored calibration stays the fallback: it is used when
nothing is measured (``samples=0``) or the points cannot support a line.

Example:
    >>> points = calibration_points(predictor, model, x, groups, space=space, samples=6)    # doctest: +SKIP
    >>> timings = measure([("dense", dense_onnx)] + [(p.key, p.onnx) for p in points], cfg, "calibrating")  # doctest: +SKIP
    >>> cal = fit_here(predictor, points, timings, "p50")                                  # doctest: +SKIP
    >>> cal.predictor.predict(widths)   # ms in this process's frame                       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hwprune.agents.base import SearchSpace
from hwprune.groups import PrunableGroup
from hwprune.lut import Predictor, fit_calibration

# Eight sub-networks and the dense model. On resnet20, lines fitted on random subsets of 50
# sub-networks measured in one process predicted the rest with median |error| 1.64% from 5
# points, 1.61% from 7 and 1.53% from 10 (the best line through all 50 gets 1.58%: the rest is
# the LUT's per-architecture error and timing noise); each point costs about a second there.
DEFAULT_SAMPLES = 8
KEY_PREFIX = "calibration:"
FLOOR_KEY = KEY_PREFIX + "floor"
DENSE_KEY = "dense"
# Seed offset for calibration sub-networks, distinct from lut check's samples' offset.
SEED_OFFSET = 424_242


@dataclass
class CalibrationPoint:
    """One whole sub-network measured for the calibration."""

    key: str
    widths: list[int]
    raw_ms: float          # the LUT's uncalibrated prediction
    onnx: bytes = field(repr=False, default=b"")
    measured_ms: float | None = None


@dataclass
class InProcessCalibration:
    """The line fitted in this process and the predictor that applies it.

    ``source`` is ``"in-process"`` when the line was fitted here, ``"stored"`` when the LUT's
    own calibration was kept (nothing measured, or too few points for a line).
    """

    predictor: Predictor
    source: str
    a: float
    b: float
    fit_median_abs_error_pct: float
    points: list[CalibrationPoint]
    dense_ms: float | None
    floor_ms: float | None          # the smallest architecture, measured here
    stored: dict[str, Any]          # the LUT's calibration (without its points)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``calibration`` section."""
        return {"source": self.source, "a": self.a, "b": self.b, "n": len(self.points) + (self.dense_ms is not None),
                "fit_median_abs_error_pct": self.fit_median_abs_error_pct, "dense_measured_ms": self.dense_ms,
                "floor_measured_ms": self.floor_ms, "stored": self.stored,
                "points": [{"key": p.key, "widths": p.widths, "raw_ms": p.raw_ms, "measured_ms": p.measured_ms}
                           for p in self.points]}


def recalibrated(predictor: Predictor, a: float, b: float) -> Predictor:
    """A copy of ``predictor`` applying ``measured = a + b · raw`` (the unit tables are shared)."""
    out = copy.copy(predictor)
    out.cal_a, out.cal_b = float(a), float(b)
    return out


def spread_widths(space: SearchSpace, samples: int, seed: int, low: float = 0.2) -> list[list[int]]:
    """``samples`` width vectors: the smallest architecture first, then one per equal slice of the
    keep-ratio range [low, 1], each group's ratio jittered ±0.1 around the slice's centre.

    Stratified rather than uniformly random so that a handful of points spans the range a
    search explores, the near-floor end included, where a line's intercept matters most.
    """
    rng = random.Random(seed + SEED_OFFSET)
    out = [[space.choices(g)[0] for g in range(len(space.dense))]]
    slices = max(samples - 1, 0)
    for k in range(slices):
        centre = low + (1.0 - low) * (k + 0.5) / slices
        out.append([space.snap(g, min(1.0, max(low, rng.uniform(centre - 0.1, centre + 0.1))) * d)
                    for g, d in enumerate(space.dense)])
    return out[:samples]


def calibration_points(predictor: Predictor, model: nn.Module, x, groups: Sequence[PrunableGroup], *,
                       space: SearchSpace, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> list[CalibrationPoint]:
    """The calibration sub-networks, cut from ``model`` and exported as they would be deployed."""
    from hwprune.export import export_onnx
    from hwprune.groups import prune_to_widths

    points = []
    for i, w in enumerate(spread_widths(space, samples, seed)):
        pruned = prune_to_widths(model, x, {g.name: wi for g, wi in zip(groups, w)})
        points.append(CalibrationPoint(FLOOR_KEY if i == 0 else f"{KEY_PREFIX}{i}", w, predictor.predict_raw(w),
                                       export_onnx(pruned, x)))
    return points


def fit_here(predictor: Predictor, points: Sequence[CalibrationPoint], timings: dict[str, dict[str, Any]],
             statistic: str) -> InProcessCalibration:
    """Fit the line on ``points`` and the dense model as ``timings`` measured them (``"dense"``
    and each point's key); the predictor's stored line when fewer than three points were measured."""
    from hwprune.measure import statistic_ms

    stored = {k: v for k, v in (predictor.structure.get("calibration") or {}).items() if k != "points"}
    dense_ms = statistic_ms(timings[DENSE_KEY], statistic) if DENSE_KEY in timings else None
    for p in points:
        p.measured_ms = statistic_ms(timings[p.key], statistic)
    floor = next((p.measured_ms for p in points if p.key == FLOOR_KEY), None)
    raws = [p.raw_ms for p in points] + ([predictor.predict_raw({})] if dense_ms is not None else [])
    measured = [p.measured_ms for p in points] + ([dense_ms] if dense_ms is not None else [])
    if len(raws) < 3:
        a, b = predictor.cal_a, predictor.cal_b
        err = [abs(a + b * r - m) / m * 100 for r, m in zip(raws, measured)]
        return InProcessCalibration(predictor, "stored", a, b, _median(err), list(points), dense_ms, floor, stored)
    fit = fit_calibration(raws, measured)
    return InProcessCalibration(recalibrated(predictor, fit["a"], fit["b"]), "in-process", fit["a"], fit["b"],
                                fit["median_abs_error_pct"], list(points), dense_ms, floor, stored)


def _median(values: list[float]) -> float:
    import numpy as np

    return float(np.median(values)) if values else float("nan")
