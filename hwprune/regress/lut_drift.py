"""LUT drift: re-time random rows of a latency LUT and test whether their median drift is beyond tolerance."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwprune.errors import HwpruneError
from hwprune.regress.compare import VERDICT_EXIT
from hwprune.regress.environment import _environment_check, _local_environment
from hwprune.regress.options import RegressOptions
from hwprune.regress.report import RESULT_FORMAT
from profilers.config import DeviceConfig


def _median_ci(values: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    meds = np.median(values[rng.integers(0, len(values), size=(resamples, len(values)))], axis=1)
    alpha = 1 - confidence
    lo, hi = np.quantile(meds, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def decide_lut(ci_low: float, ci_high: float, tolerance: float) -> str:
    """``stale`` when the median drift's interval lies beyond ±t, ``fresh`` when within."""
    if ci_low > tolerance or ci_high < -tolerance:
        return "stale"
    if -tolerance <= ci_low and ci_high <= tolerance:
        return "fresh"
    return "inconclusive"


def regress_lut(opts: RegressOptions, cfg: DeviceConfig, tolerance: float, statistics: list[str],
                log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Re-time ``opts.sample`` random rows of a LUT and test the median drift (``hwprune.regress``'s docstring).

    Each row's candidate is rebuilt from the zoo model the LUT was profiled from (its unit at
    the row's widths, exactly as ``hwprune profile`` built it; the signature is checked) and
    timed through a profiling bundle, interleaved with the identity graph and the drift
    reference, as the row was. Drift is the new time over the LUT's, corrected by the drift
    reference's time then and now where both are recorded.
    """
    import shutil
    import tempfile

    from hwprune.lut import STAT_COLUMNS, LatencyLUT
    from hwprune.measure import statistic_ms, time_items

    if opts.sample < 2:
        raise HwpruneError(f"--sample must be at least 2, got {opts.sample}")
    lut = LatencyLUT.load(opts.lut)
    lut_fp = lut.meta.get("fingerprint")
    if not lut_fp:
        raise HwpruneError(f"{opts.lut}: the LUT has no measured rows")
    now_env = _local_environment(cfg)
    env_info = _environment_check(lut.meta.get("environment"), lut_fp, now_env, f"the LUT {opts.lut}",
                                  opts.allow_env_change) if now_env else None
    models = lut.meta.get("models") or {}
    if opts.model:
        keys = [k for k, s in models.items() if opts.model in (k, s.get("model"))]
    else:
        keys = list(models)
    if len(keys) != 1:
        known = ", ".join(sorted(models)) or "none"
        raise HwpruneError(f"{opts.lut}: " + (f"no model '{opts.model}' in the LUT" if opts.model and not keys
                                              else "pick one model with --model") + f" (models: {known})")
    key = keys[0]
    structure = models[key]
    statistic = statistics[0] if statistics else lut.meta.get("statistic", cfg.statistic)
    if structure.get("batch") != cfg.batch_size or structure.get("precision") != cfg.precision:
        raise HwpruneError(f"{opts.lut}: {key} was profiled at batch {structure.get('batch')} "
                           f"{structure.get('precision')}, the device config says batch {cfg.batch_size} "
                           f"{cfg.precision}")
    where: dict[str, tuple[int, tuple[int, ...]]] = {}
    for ui, unit in enumerate(structure.get("units", [])):
        for point, sig in unit.get("table", {}).items():
            where.setdefault(sig, (ui, tuple(int(v) for v in point.split(",") if v)))
    rows = lut.rows
    rows = rows[(rows["device_fingerprint"] == lut_fp) & (rows["precision"] == cfg.precision)
                & (rows["batch"] == cfg.batch_size) & rows["signature"].isin(list(where))]
    if len(rows) < 2:
        raise HwpruneError(f"{opts.lut}: fewer than 2 measured rows for {key} on this device")
    picked = rows.sample(n=min(opts.sample, len(rows)), random_state=opts.seed)

    import torch

    from hwprune.candidates import build_width_graph
    from hwprune.groups import find_groups
    from hwprune.models.spec import ModelSpec

    torch.manual_seed(opts.seed)
    c, h, w = structure["input_shape"][1:]
    spec = ModelSpec(structure["model"], (c, h, w), opts.num_classes, structure.get("weights"))
    model = spec.build()
    x = spec.example_input(cfg.batch_size)
    log(f"rebuilding {len(picked)} LUT candidates of {key} ...")
    wg = build_width_graph(model, x, find_groups(model, x))
    units = wg.units()
    if [u.name for u in units] != [u["name"] for u in structure["units"]]:
        raise HwpruneError(f"{opts.lut}: {key}'s layers differ from the model built now (other --num-classes?)")
    items = []
    for sig in picked["signature"]:
        ui, point = where[sig]
        u = units[ui]
        widths = list(wg.dense_widths)
        for g, wd in zip(u.groups, point):
            widths[g] = wd
        if wg.signature(u.nodes, widths) != sig:
            raise HwpruneError(f"{opts.lut}: rebuilt candidate {sig} of unit {u.name} has another signature now "
                               "(other --num-classes, or a changed exporter?)")
        items.append((sig, wg.instantiate(u.nodes, widths), {}))

    records: dict[str, dict[str, Any]] = {}

    def on_record(rec: dict[str, Any]) -> None:
        nonlocal now_env
        if rec.get("type") == "row":
            records[rec["key"]] = rec
        elif rec.get("type") == "session" and now_env is None:
            now_env = rec.get("environment")
        elif rec.get("type") == "error":
            raise HwpruneError(f"LUT candidate {rec['key']} failed on {cfg.name}: {rec['error']}")

    work = Path(tempfile.mkdtemp(prefix="hwprune-regress-lut-"))
    start = time.perf_counter()
    try:
        time_items(items, cfg, work, on_record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if env_info is None:
        env_info = _environment_check(lut.meta.get("environment"), lut_fp, now_env, f"the LUT {opts.lut}",
                                      opts.allow_env_change)
    col = STAT_COLUMNS[statistic]
    out_rows = []
    for _, row in picked.iterrows():
        rec = records[row["signature"]]
        now_ms = statistic_ms(rec["timing"], statistic)
        lut_ms = float(row[col])
        ref_then = row.get("reference_ms")
        ref_now = statistic_ms(rec["batch_reference"], statistic) if rec.get("batch_reference") else None
        adjusted = None
        if ref_now and ref_then is not None and not (isinstance(ref_then, float) and math.isnan(ref_then)):
            adjusted = now_ms * float(ref_then) / ref_now / lut_ms - 1
        out_rows.append({"signature": row["signature"], "op": row.get("op"), "cin": _int_or_none(row.get("cin")),
                         "cout": _int_or_none(row.get("cout")), "lut_ms": lut_ms, "now_ms": now_ms,
                         "drift": now_ms / lut_ms - 1, "adjusted_drift": adjusted, "n": rec["timing"]["n"]})
    use_adjusted = all(r["adjusted_drift"] is not None for r in out_rows)
    drift = np.array([r["adjusted_drift"] if use_adjusted else r["drift"] for r in out_rows])
    med = float(np.median(drift))
    lo, hi = _median_ci(drift, opts.confidence, opts.resamples, opts.seed)
    lo, hi = min(lo, med), max(hi, med)
    verdict = decide_lut(lo, hi, tolerance)
    return {
        "format": RESULT_FORMAT, "kind": "lut", "mode": "lut", "device": cfg.name, "lut": opts.lut, "model": key,
        "statistic": statistic, "verdict": verdict, "exit_code": VERDICT_EXIT[verdict], "tolerance": tolerance,
        "confidence": opts.confidence, "resamples": opts.resamples, "seed": opts.seed,
        "drift_measure": "reference-adjusted" if use_adjusted else "raw",
        "median_drift": med, "ci_low": lo, "ci_high": hi,
        "rows_beyond_tolerance": int(np.sum(np.abs(drift) > tolerance)), "rows": out_rows,
        "measurement": {"seconds": time.perf_counter() - start, "rows": len(out_rows)},
        "environment": env_info, "created_unix_s": time.time(),
    }


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None

