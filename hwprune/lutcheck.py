"""``hwprune lut check``: measure random sub-networks end to end and report the LUT's error.

Each sample is a real pruned model (Torch-Pruning surgery on the dense model, exported to
ONNX as it would be deployed), timed on the device — all samples interleaved when the device
is local, so a change of machine state cannot favour some of them; its LUT prediction is
compared with the measurement. The samples are drawn with a seed different from the calibration's, so the
figures are out-of-sample.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np

from hwprune.errors import HwpruneError
from hwprune.export import export_onnx
from hwprune.groups import PrunableGroup, count_macs, find_groups, prune_to_widths
from hwprune.lut import LatencyLUT, model_key
from hwprune.measure import REFERENCE_KEY, drift_factor, measure_many, progress_bar, statistic_ms
from hwprune.profiling import ModelSpec, random_widths
from profilers.config import DeviceConfig, load_device_config
from profilers.fileio import atomic_write_json
from profilers.remote import check_reachable

# Calibration uses seed s; checks use s + this offset so they never share a sample.
CHECK_SEED_OFFSET = 1_000_003


def predictor_calls_per_s(predictor, groups: list[PrunableGroup], multiple: int, seconds: float = 0.5) -> float:
    rng = random.Random(7)
    vecs = [random_widths(groups, multiple, rng) for _ in range(256)]
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for v in vecs:
            predictor.predict(v)
        n += len(vecs)
    return n / (time.perf_counter() - start)


def lut_check(spec: ModelSpec, device: str | DeviceConfig, lut_path: str, *, samples: int = 50, seed: int = 0,
              low: float = 0.2, allow_other_device: bool = False, json_path: str | None = None,
              show_progress: bool = True) -> dict[str, Any]:
    """Compare LUT predictions with end-to-end measurements of ``samples`` random sub-networks.

    Example:
        >>> from hwprune.lutcheck import lut_check
        >>> r = lut_check(ModelSpec("resnet20"), "x86-cpu-ort", "lut.parquet", samples=20)  # doctest: +SKIP
        >>> r["median_abs_error_pct"]  # doctest: +SKIP
    """
    from scipy.stats import kendalltau

    cfg = device if isinstance(device, DeviceConfig) else load_device_config(device)
    check_reachable(cfg)
    if samples < 2:
        raise HwpruneError("--samples must be at least 2")
    lut = LatencyLUT.load(lut_path)
    if cfg.remote is None:
        from profilers.environment import collect_manifest, fingerprint

        lut.check_device(fingerprint(collect_manifest(cfg)), allow_other_device, lut_path)
    model = spec.build()
    x = spec.example_input(cfg.batch_size)
    key = model_key(spec.name, tuple(x.shape))
    lut.check_structure(key, model, lut_path)
    predictor = lut.predictor(key, cfg.statistic, lut_path)
    groups = find_groups(model, x)
    if [g.name for g in groups] != predictor.group_names:
        raise HwpruneError(f"{lut_path}: the LUT's groups for {key} do not match this model's; re-profile it")

    rng = random.Random(seed + CHECK_SEED_OFFSET)
    widths = [random_widths(groups, cfg.channel_multiple, rng, low=low) for _ in range(samples)]
    items = []
    bar = progress_bar(samples, "exporting", show_progress)
    for i, w in enumerate(widths):
        pruned = prune_to_widths(model, x, {g.name: wi for g, wi in zip(groups, w)})
        items.append((f"check:{i}", export_onnx(pruned, x), {"widths": w}))
        bar.update(1)
    bar.close()

    timings = measure_many([(k, blob) for k, blob, _ in items], cfg, "measuring", show_progress,
                           with_reference=True)
    measured = {k: statistic_ms(t, cfg.statistic) for k, t in timings.items() if k != REFERENCE_KEY}
    drift = drift_factor(lut, timings, cfg.statistic)

    rows = []
    for (k, _, meta), w in zip(items, widths):
        pred = predictor.predict(w)
        meas = measured[k]
        rows.append({"sample": k, "widths": w, "predicted_ms": pred, "raw_predicted_ms": predictor.predict_raw(w),
                     "measured_ms": meas, "error_pct": (pred - meas) / meas * 100,
                     "drift_adjusted_error_pct": (pred - meas * drift) / (meas * drift) * 100})
    err = np.abs([r["error_pct"] for r in rows])
    adj = np.abs([r["drift_adjusted_error_pct"] for r in rows])
    macs_line = macs_baseline(model, x, groups, lut.model(key).get("calibration") or {}, rows)
    tau = kendalltau([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]).statistic
    result = {
        "model": key, "device": cfg.name, "lut": str(lut_path), "statistic": cfg.statistic, "samples": samples,
        "median_abs_error_pct": float(np.median(err)), "p90_abs_error_pct": float(np.percentile(err, 90)),
        "max_abs_error_pct": float(err.max()), "kendall_tau": float(tau) if not math.isnan(tau) else None,
        # the field's figures (nn-Meter, LitePred): the share of samples within ±5% and ±10%
        "within_5pct": float(np.mean(err <= 5.0)), "within_10pct": float(np.mean(err <= 10.0)),
        # what a FLOPs-based tool predicts: latency proportional to MACs, fitted on the same
        # calibration points as the LUT's own correction (None without calibration points)
        "macs_baseline": macs_line,
        "predictor_calls_per_s": predictor_calls_per_s(predictor, groups, cfg.channel_multiple),
        # The machine's speed now relative to while the LUT was measured (drift reference):
        # errors above are against raw measurements; these take that speed difference out.
        "drift_factor": drift, "drift_adjusted_median_abs_error_pct": float(np.median(adj)),
        "drift_adjusted_max_abs_error_pct": float(adj.max()),
        "calibration": {k: v for k, v in (lut.model(key).get("calibration") or {}).items() if k != "points"},
        "rows": rows,
    }
    if json_path:
        atomic_write_json(json_path, result)
    return result


def macs_baseline(model, x, groups, calibration: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A MACs-proportional predictor (measured = k x MACs, least squares through the origin) fitted
    on the LUT's calibration points, scored on the check's samples; each row gains its
    ``macs`` and ``macs_predicted_ms``."""
    from scipy.stats import kendalltau

    points = calibration.get("points") or []
    if not points:
        return None

    def macs(widths: list[int]) -> int:
        return count_macs(prune_to_widths(model, x, {g.name: w for g, w in zip(groups, widths)}), x)

    cal_macs = np.array([macs(p["widths"]) for p in points], dtype=float)
    cal_ms = np.array([p["measured_ms"] for p in points], dtype=float)
    k = float(cal_macs @ cal_ms / (cal_macs @ cal_macs))
    for r in rows:
        r["macs"] = macs(r["widths"])
        r["macs_predicted_ms"] = k * r["macs"]
    err = np.abs([(r["macs_predicted_ms"] - r["measured_ms"]) / r["measured_ms"] * 100 for r in rows])
    tau = kendalltau([r["macs_predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]).statistic
    return {"fitted_on": len(points), "ms_per_gmac": k * 1e9, "median_abs_error_pct": float(np.median(err)),
            "p90_abs_error_pct": float(np.percentile(err, 90)), "max_abs_error_pct": float(err.max()),
            "within_5pct": float(np.mean(err <= 5.0)), "within_10pct": float(np.mean(err <= 10.0)),
            "kendall_tau": float(tau) if not math.isnan(tau) else None}


def format_check_table(r: dict[str, Any]) -> str:
    """A plain-text table of the per-sample comparison and the summary figures."""
    lines = [f"{'sample':>10} {'predicted ms':>13} {'measured ms':>12} {'error %':>8}"]
    for row in r["rows"]:
        lines.append(f"{row['sample']:>10} {row['predicted_ms']:13.4f} {row['measured_ms']:12.4f} {row['error_pct']:+8.2f}")
    tau = r["kendall_tau"]
    lines.append(f"{r['model']} on {r['device']} ({r['statistic']}), {r['samples']} sub-networks: "
                 f"median |error| {r['median_abs_error_pct']:.2f}%, p90 {r['p90_abs_error_pct']:.2f}%, "
                 f"max {r['max_abs_error_pct']:.2f}%, Kendall tau {tau if tau is None else round(tau, 3)}, "
                 f"predictor {r['predictor_calls_per_s']:.0f} calls/s; machine speed vs LUT {1 / r['drift_factor']:.3f}x "
                 f"(drift-adjusted median |error| {r['drift_adjusted_median_abs_error_pct']:.2f}%)")
    lines.append(f"within ±5%: {r['within_5pct'] * 100:.0f}% of samples, within ±10%: {r['within_10pct'] * 100:.0f}%")
    m = r.get("macs_baseline")
    if m:
        mt = m["kendall_tau"]
        lines.append(f"a MACs-proportional line fitted on the same {m['fitted_on']} calibration points: median |error| "
                     f"{m['median_abs_error_pct']:.2f}%, within ±5% {m['within_5pct'] * 100:.0f}%, within ±10% "
                     f"{m['within_10pct'] * 100:.0f}%, Kendall tau {mt if mt is None else round(mt, 3)}")
    return "\n".join(lines)
