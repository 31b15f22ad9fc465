"""Per-unit context factors (hwprune.context): fitted on whole sub-networks, applied by the LUT predictor."""

from __future__ import annotations

import numpy as np
import pytest

from hwprune.context import MIN_SAMPLES, fit_context
from hwprune.errors import HwpruneError
from hwprune.lut import Predictor


def _synthetic(n: int, true_scale, noise: float, seed: int = 0):
    """Unit latencies of ``n`` random sub-networks and their whole-network times under ``true_scale``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.02, 0.2, size=(n, len(true_scale)))
    y = 0.01 + 0.9 * (0.05 + x @ np.asarray(true_scale))
    return x, y * (1 + rng.normal(0, noise, n))


def test_recovers_units_that_run_faster_or_slower_inside_the_network():
    true = [0.6, 1.0, 1.0, 1.4, 1.0, 1.0]
    x, y = _synthetic(40, true, noise=0.002)
    fit = fit_context(x, 0.05, y)
    assert fit.corrected and fit.n == 40
    assert fit.cv_median_abs_error_pct < fit.cv_line_median_abs_error_pct / 3
    # factors are relative to the line's scale: compare their ratios, not their values
    scale = np.asarray(fit.unit_scale)
    assert scale[0] / scale[1] == pytest.approx(0.6, rel=0.1)
    assert scale[3] / scale[1] == pytest.approx(1.4, rel=0.1)


def test_noise_alone_leaves_the_factors_near_one():
    x, y = _synthetic(30, [1.0] * 8, noise=0.01, seed=3)
    fit = fit_context(x, 0.05, y)
    assert max(abs(s - 1) for s in fit.unit_scale) < 0.15
    assert fit.cv_median_abs_error_pct <= fit.cv_line_median_abs_error_pct


def test_too_few_sub_networks_keep_the_line_alone():
    x, y = _synthetic(MIN_SAMPLES - 1, [0.5, 1.5], noise=0.0)
    fit = fit_context(x, 0.05, y)
    assert not fit.corrected and fit.unit_scale == [1.0, 1.0]
    d = fit.to_dict()
    assert d["basis"] is None and d["cv_median_abs_error_pct"] is None  # JSON without NaN


def test_units_of_one_kind_share_a_factor_when_that_predicts_better():
    # twelve units in two kinds: each kind runs at its own factor inside the network
    kinds = ["dw"] * 6 + ["pw"] * 6
    x, y = _synthetic(30, [0.7] * 6 + [1.2] * 6, noise=0.003, seed=5)
    fit = fit_context(x, 0.05, y, kinds)
    assert fit.corrected and fit.cv_median_abs_error_pct < fit.cv_line_median_abs_error_pct
    scale = np.asarray(fit.unit_scale)
    assert scale[6:].mean() / scale[:6].mean() == pytest.approx(1.2 / 0.7, rel=0.1)
    assert any(k.startswith("kind:") for k in fit.cv_errors_pct)
    assert not any(k.startswith("kind:") for k in fit_context(x, 0.05, y).cv_errors_pct)


def _structure(scale=None):
    cal = {"a": 0.0, "b": 1.0, **({"context": {"unit_scale": scale}} if scale is not None else {})}
    return {"model": "m", "groups": [{"name": "g", "channels": 4, "grid": [2, 4]}],
            "units": [{"name": "u0", "groups": [0], "table": {"2": "s2", "4": "s4"}},
                      {"name": "u1", "groups": [], "table": {"": "c"}}],
            "overhead_ms": 0.1, "calibration": cal}


def test_the_predictor_multiplies_each_unit_by_its_factor():
    lat = {"s2": 1.0, "s4": 2.0, "c": 0.5}
    plain = Predictor(_structure(), lat)
    scaled = Predictor(_structure([0.5, 2.0]), lat)
    assert list(plain.unit_latencies([3])) == [1.5, 0.5]
    assert plain.predict_raw([3]) == pytest.approx(0.1 + 1.5 + 0.5)
    assert scaled.predict_raw([3]) == pytest.approx(0.1 + 0.75 + 1.0)
    assert list(scaled.unit_latencies([3])) == [1.5, 0.5]  # the table itself is unchanged


def test_factors_that_do_not_match_the_units_are_refused():
    with pytest.raises(HwpruneError, match="3 context factors for 2 units"):
        Predictor(_structure([1.0, 1.0, 1.0]), {"s2": 1.0, "s4": 2.0, "c": 0.5})
