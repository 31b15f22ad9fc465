"""``hwprune lut check``: measure random sub-networks end to end and report the LUT's error.

Each sample is a real pruned model (Torch-Pruning surgery on the dense model, exported to
ONNX as it would be deployed), timed on the device — all samples interleaved when the device
is local, so a change of machine state cannot favour some of them; its LUT prediction is
compared with the measurement. The LUT is calibrated first in this same process, on other
sub-networks measured in the same interleaved run (:mod:`hwprune.calibrate`): no checked sample is
a calibration point, so the figures are out-of-sample.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np

from hwprune.agents.base import SearchSpace
from hwprune.calibrate import DEFAULT_SAMPLES, calibration_points, fit_here
from hwprune.errors import HwpruneError, check_integer
from hwprune.export import export_onnx
from hwprune.groups import count_macs, find_groups, prune_to_widths
from hwprune.lut import LatencyLUT, model_key
from hwprune.measure import drift_factor, measure_many, progress_bar, statistic_ms
from hwprune.profiling import ModelSpec, random_widths
from hwprune.widthsteps import search_space
from profilers.config import DeviceConfig, load_device_config
from profilers.fileio import atomic_write_json
from profilers.remote import check_reachable

# Calibration uses seed s; checks use s + this offset so they never share a sample.
CHECK_SEED_OFFSET = 1_000_003


def predictor_calls_per_s(predictor, space: SearchSpace, seconds: float = 0.5) -> float:
    rng = random.Random(7)
    vecs = [random_widths(space, rng) for _ in range(256)]
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for v in vecs:
            predictor.predict(v)
        n += len(vecs)
    return n / (time.perf_counter() - start)


def lut_check(spec: ModelSpec, device: str | DeviceConfig, lut_path: str, *, samples: int = 50, seed: int = 0,
              low: float = 0.2, calibration_samples: int = DEFAULT_SAMPLES, allow_other_device: bool = False,
              json_path: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Compare LUT predictions with end-to-end measurements of ``samples`` random sub-networks.

    The LUT is first calibrated in this process (:mod:`hwprune.calibrate`) on
    ``calibration_samples`` other sub-networks and the dense model, all measured interleaved with
    the checked ones; the headline figures are that calibration's, the stored calibration's are
    under ``stored_calibration``. ``calibration_samples=0`` checks the stored calibration alone.

    Example:
        >>> from hwprune.lutcheck import lut_check
        >>> r = lut_check(ModelSpec("resnet20"), "x86-cpu-ort", "lut.parquet", samples=20)  # doctest: +SKIP
        >>> r["median_abs_error_pct"], r["within_5pct"]  # doctest: +SKIP
    """
    cfg = device if isinstance(device, DeviceConfig) else load_device_config(device)
    check_reachable(cfg)
    if samples < 2:
        raise HwpruneError("--samples must be at least 2")
    check_integer(calibration_samples, "--calibration-samples", 0)
    lut = LatencyLUT.load(lut_path)
    if cfg.remote is None:
        from profilers.environment import collect_manifest, fingerprint

        lut.check_device(fingerprint(collect_manifest(cfg)), allow_other_device, lut_path)
    model = spec.build()
    x = spec.example_input(cfg.batch_size)
    key = lut.key_for(model_key(spec.name, tuple(x.shape)), model)
    lut.check_structure(key, model, lut_path)
    stored = lut.predictor(key, cfg.statistic, lut_path)
    groups = find_groups(model, x)
    if [g.name for g in groups] != stored.group_names:
        raise HwpruneError(f"{lut_path}: the LUT's groups for {key} do not match this model's; re-profile it")

    space = search_space(groups, cfg, stored)
    cal_points = calibration_points(stored, model, x, groups, space=space,
                                    samples=calibration_samples, seed=seed) if calibration_samples else []
    widths = _check_widths(space, samples, seed, low, [p.widths for p in cal_points])
    items = [("dense", export_onnx(model, x))] + [(p.key, p.onnx) for p in cal_points]
    bar = progress_bar(samples, "exporting", show_progress)
    for i, w in enumerate(widths):
        pruned = prune_to_widths(model, x, {g.name: wi for g, wi in zip(groups, w)})
        items.append((f"check:{i}", export_onnx(pruned, x)))
        bar.update(1)
    bar.close()
    # one interleaved measurement: calibration and checked sub-networks share this process's state
    timings = measure_many(items, cfg, "measuring", show_progress, with_reference=True)
    cal = fit_here(stored, cal_points, timings, cfg.statistic) if cal_points else None
    predictor = cal.predictor if cal is not None else stored
    drift = drift_factor(lut, timings, cfg.statistic)

    rows = []
    for i, w in enumerate(widths):
        meas = statistic_ms(timings[f"check:{i}"], cfg.statistic)
        pred, stored_pred = predictor.predict(w), stored.predict(w)
        rows.append({"sample": f"check:{i}", "widths": w, "predicted_ms": pred, "raw_predicted_ms": stored.predict_raw(w),
                     "stored_predicted_ms": stored_pred, "measured_ms": meas,
                     "error_pct": (pred - meas) / meas * 100,
                     "drift_adjusted_error_pct": (stored_pred - meas * drift) / (meas * drift) * 100})
    measured = [r["measured_ms"] for r in rows]
    fit_points = ([(p.widths, p.measured_ms) for p in cal.points] + [(None, cal.dense_ms)] if cal is not None
                  else [(p["widths"], p["measured_ms"]) for p in (lut.model(key).get("calibration") or {}).get("points", [])])
    adj = np.abs([r["drift_adjusted_error_pct"] for r in rows])
    result = {
        "model": key, "device": cfg.name, "lut": str(lut_path), "statistic": cfg.statistic, "samples": samples,
        # the headline: the LUT calibrated in this process (or its stored calibration, without samples);
        # the field's figures (nn-Meter, LitePred) include the share of samples within ±5% and ±10%
        **error_figures([r["predicted_ms"] for r in rows], measured),
        "calibrated_in_process": cal is not None,
        "in_process_calibration": cal.to_dict() if cal is not None else None,
        "stored_calibration": {**error_figures([r["stored_predicted_ms"] for r in rows], measured),
                               "line": {k: v for k, v in (lut.model(key).get("calibration") or {}).items()
                                        if k != "points"}},
        # what a FLOPs-based tool predicts: latency proportional to MACs, fitted on the same
        # calibration points as the LUT's correction (None without calibration points)
        "macs_baseline": macs_baseline(model, x, groups, fit_points, rows),
        "predictor_calls_per_s": predictor_calls_per_s(predictor, space),
        # The machine's speed now relative to while the LUT was measured (drift reference): the
        # stored calibration's errors with that speed difference taken out.
        "drift_factor": drift, "drift_adjusted_median_abs_error_pct": float(np.median(adj)),
        "drift_adjusted_max_abs_error_pct": float(adj.max()),
        "rows": rows,
    }
    if json_path:
        atomic_write_json(json_path, result)
    return result


def _check_widths(space: SearchSpace, samples: int, seed: int, low: float,
                  exclude: list[list[int]]) -> list[list[int]]:
    """The checked sub-networks: random, none of them a calibration point (the figures stay out-of-sample)."""
    rng = random.Random(seed + CHECK_SEED_OFFSET)
    taken = {tuple(w) for w in exclude}
    out = []
    for _ in range(samples * 100):
        if len(out) == samples:
            break
        w = random_widths(space, rng, low=low)
        if tuple(w) not in taken:
            out.append(w)
    if len(out) < samples:
        raise HwpruneError(f"this model has too few distinct sub-networks for {samples} samples")
    return out


def error_figures(predicted: list[float], measured: list[float]) -> dict[str, Any]:
    """Median/p90/max |error| (%), the share within ±5% and ±10%, and Kendall's τ."""
    from scipy.stats import kendalltau

    pred, meas = np.asarray(predicted, float), np.asarray(measured, float)
    err = np.abs((pred - meas) / meas * 100)
    tau = kendalltau(pred, meas).statistic
    return {"median_abs_error_pct": float(np.median(err)), "p90_abs_error_pct": float(np.percentile(err, 90)),
            "max_abs_error_pct": float(err.max()), "within_5pct": float(np.mean(err <= 5.0)),
            "within_10pct": float(np.mean(err <= 10.0)), "kendall_tau": None if math.isnan(tau) else float(tau)}


def macs_baseline(model, x, groups, points: list[tuple[list[int] | None, float]],
                  rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A MACs-proportional predictor (measured = k x MACs, least squares through the origin) fitted
    on ``points`` (widths, None for dense, and measured ms), scored on the check's samples; each
    row gains its ``macs`` and ``macs_predicted_ms``."""
    if not points:
        return None

    def macs(widths: list[int] | None) -> int:
        if widths is None:
            return count_macs(model, x)
        return count_macs(prune_to_widths(model, x, {g.name: w for g, w in zip(groups, widths)}), x)

    cal_macs = np.array([macs(w) for w, _ in points], dtype=float)
    cal_ms = np.array([m for _, m in points], dtype=float)
    k = float(cal_macs @ cal_ms / (cal_macs @ cal_macs))
    for r in rows:
        r["macs"] = macs(r["widths"])
        r["macs_predicted_ms"] = k * r["macs"]
    return {"fitted_on": len(points), "ms_per_gmac": k * 1e9,
            **error_figures([r["macs_predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])}


def format_check_table(r: dict[str, Any]) -> str:
    """A plain-text table of the per-sample comparison and the summary figures."""
    lines = [f"{'sample':>10} {'predicted ms':>13} {'measured ms':>12} {'error %':>8}"]
    for row in r["rows"]:
        lines.append(f"{row['sample']:>10} {row['predicted_ms']:13.4f} {row['measured_ms']:12.4f} {row['error_pct']:+8.2f}")
    cal = r.get("in_process_calibration")
    with_dense = bool(cal) and cal.get("dense_measured_ms") is not None
    how = (f"calibrated in this process on {cal['n']} models ({cal['n'] - with_dense} sub-networks"
           f"{' and the dense one' if with_dense else ''})" if cal else "the LUT's stored calibration")
    lines.append(f"{r['model']} on {r['device']} ({r['statistic']}), {r['samples']} sub-networks, {how}: "
                 + _figures_text(r) + f"; predictor {r['predictor_calls_per_s']:.0f} calls/s")
    if cal:
        lines.append(f"the LUT's stored calibration on the same samples: {_figures_text(r['stored_calibration'])} "
                     f"(machine speed vs LUT {1 / r['drift_factor']:.3f}x)")
    m = r.get("macs_baseline")
    if m:
        lines.append(f"a MACs-proportional line fitted on the same {m['fitted_on']} calibration points: "
                     + _figures_text(m))
    return "\n".join(lines)


def _figures_text(f: dict[str, Any]) -> str:
    tau = f["kendall_tau"]
    return (f"median |error| {f['median_abs_error_pct']:.2f}%, p90 {f['p90_abs_error_pct']:.2f}%, "
            f"max {f['max_abs_error_pct']:.2f}%, within ±5% {f['within_5pct'] * 100:.0f}%, "
            f"within ±10% {f['within_10pct'] * 100:.0f}%, Kendall tau {tau if tau is None else round(tau, 3)}")
