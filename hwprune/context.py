"""Context correction: per-unit factors that turn a layer's latency timed alone into its latency inside the network.

A LUT times each unit (a conv with its BN and activation, a linear layer) as a small graph of
its own. Inside the whole network the same unit runs a little faster or slower: its input may
still be in cache, the runtime may fuse it with a neighbour, a thread pool may be warm or not.
The effect differs from unit to unit, so a single line ``measured = a + b · Σ units`` cannot
take it out; it is what is left of the LUT's error once the scale is right (on resnet20, a
line through 50 sub-networks measured in one process still leaves median 1.6% and 4% of them
outside ±5%).

:func:`fit_context` fits one factor per unit on whole sub-networks measured end to end in the
profile process, by ridge regression of the line's residuals on the units' latencies, pulled
towards 1 (no correction): one factor per unit, or one per kind of unit (its ops and kernel,
grouped or not) when a model has more units than the measured sub-networks can pin down. The
basis and strength are chosen by k-fold cross-validation, "no correction" among the choices, so
a correction is stored only when it predicts held-out sub-networks better than the line alone. The factors are a property of the model on the
device, not of one process's speed, so the in-process calibration (:mod:`hwprune.calibrate`)
refits only the line on top of them.

Example:
    >>> fit = fit_context(unit_ms, 0.01, y, kinds=["Conv+Relu/k3", ...])  # doctest: +SKIP
    >>> fit.unit_scale, fit.cv_median_abs_error_pct                   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# The candidates cross-validation chooses among: (basis, ridge strength), the strength relative to
# each factor's mean squared contribution; (None, None) is the line alone. "unit": one factor per
# unit; "kind": one per kind of unit (its ops, kernel, and whether it is grouped), shared by
# every unit of that kind, for models with more units than 30 sub-networks pin down. Measured
# (bench/results/calibration_*_ctx.json): resnet20 (22 units) chose per-unit factors; on
# mobilenetv2 at 224 (53 units, 7 kinds) neither basis beat the line on held-out sub-networks
# of the profile process, so it stored none.
CANDIDATES: tuple[tuple[str | None, float | None], ...] = (
    (None, None), ("unit", 1.0), ("unit", 0.3), ("unit", 0.1), ("unit", 0.03), ("unit", 0.01),
    ("kind", 0.1), ("kind", 0.01))
# Fewer whole sub-networks than this leave too little to cross-validate: the line alone.
MIN_SAMPLES = 12
FOLDS = 5
# A factor is kept within these bounds whatever the fit says: a unit inside the network is never
# free and never many times its own time alone.
SCALE_BOUNDS = (0.25, 4.0)


@dataclass
class ContextFit:
    """The fitted per-unit factors and how well they predicted held-out sub-networks."""

    unit_scale: list[float]                 # one factor per unit, 1.0 = as timed alone
    basis: str | None                       # "unit", "kind", or None: no correction
    strength: float | None                  # the chosen ridge strength
    n: int                                  # whole sub-networks it was fitted on
    cv_median_abs_error_pct: float          # held-out error of the chosen candidate
    cv_line_median_abs_error_pct: float     # held-out error of the line alone
    cv_errors_pct: dict[str, float] = field(default_factory=dict)  # every candidate tried

    @property
    def corrected(self) -> bool:
        return self.basis is not None

    def to_dict(self) -> dict[str, Any]:
        """The LUT calibration's ``context`` entry (JSON: no NaN, None where nothing was cross-validated)."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {"unit_scale": self.unit_scale, "basis": self.basis, "strength": self.strength, "n": self.n,
                "cv_median_abs_error_pct": num(self.cv_median_abs_error_pct),
                "cv_line_median_abs_error_pct": num(self.cv_line_median_abs_error_pct),
                "cv_errors_pct": self.cv_errors_pct}


def fit_context(unit_ms: np.ndarray, overhead_ms: float, measured_ms: Sequence[float],
                kinds: Sequence[str] | None = None, *, seed: int = 0) -> ContextFit:
    """Per-unit factors from ``unit_ms`` (sub-networks × units, the LUT's latency of each unit in
    each sub-network), the sub-networks' ``measured_ms`` and each unit's kind (for the shared
    factors; without ``kinds`` only per-unit factors are tried).

    The prediction the factors serve is ``a + b · (overhead + Σ_u scale_u · unit_ms_u)`` with the
    calibration line ``a, b`` (:func:`hwprune.lut.fit_calibration`) fitted on the uncorrected sums;
    the factors absorb what the line leaves.
    """
    x = np.asarray(unit_ms, float)
    y = np.asarray(measured_ms, float)
    n, units = x.shape if x.ndim == 2 else (len(y), 0)
    if n < MIN_SAMPLES or units == 0:
        return ContextFit([1.0] * units, None, None, n, math.nan, math.nan)
    bases = {"unit": np.eye(units), "kind": _membership(kinds) if kinds is not None else None}
    candidates = [(basis, s) for basis, s in CANDIDATES if basis is None or bases[basis] is not None]
    folds = np.array_split(np.random.default_rng(seed).permutation(n), min(FOLDS, n))
    errors = {}
    for basis, strength in candidates:
        held_out = []
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            a, b, scale = _fit(x[train], overhead_ms, y[train], bases.get(basis), strength)
            pred = a + b * (overhead_ms + x[test] @ scale)
            held_out.append(np.abs(pred - y[test]) / y[test] * 100)
        errors[basis, strength] = float(np.median(np.concatenate(held_out)))
    # Ties go to the earlier candidate: the line alone first, then the weaker corrections.
    best = min(candidates, key=lambda c: (errors[c], candidates.index(c)))
    _, _, scale = _fit(x, overhead_ms, y, bases.get(best[0]), best[1])
    return ContextFit([float(v) for v in scale], best[0], best[1], n, errors[best], errors[None, None],
                      {_name(c): e for c, e in errors.items()})


def _name(candidate: tuple[str | None, float | None]) -> str:
    basis, strength = candidate
    return "none" if basis is None else f"{basis}:{strength:g}"


def _membership(kinds: Sequence[str]) -> np.ndarray:
    """Units × kinds: 1 where the unit is of that kind."""
    names = sorted(set(kinds))
    out = np.zeros((len(kinds), len(names)))
    for u, k in enumerate(kinds):
        out[u, names.index(k)] = 1.0
    return out


def _fit(x: np.ndarray, overhead_ms: float, y: np.ndarray, basis: np.ndarray | None,
         strength: float | None) -> tuple[float, float, np.ndarray]:
    """The line on the uncorrected sums, then ridge factors on its residuals: one per column of
    ``basis`` (units × factors), each unit's factor the sum of its columns'; 1 without a basis."""
    from hwprune.lut import fit_calibration

    raw = overhead_ms + x.sum(axis=1)
    line = fit_calibration(raw, y)
    a, b = line["a"], line["b"]
    if basis is None:
        return a, b, np.ones(x.shape[1])
    # residual = Σ_f z_f · d_f with z = b · x · basis and scale = 1 + basis · d, d pulled to 0.
    # Each factor's penalty is relative to its own contribution, so a unit of 0.01 ms and one
    # of 0.2 ms are pulled alike.
    z = b * x @ basis
    residual = y - (a + b * raw)
    weight = strength * len(y) * np.maximum((z ** 2).mean(axis=0), 1e-18)
    d = np.linalg.solve(z.T @ z + np.diag(weight), z.T @ residual)
    return a, b, np.clip(1.0 + basis @ d, *SCALE_BOUNDS)
