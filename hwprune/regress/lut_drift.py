"""LUT drift: re-time random rows of a latency LUT and test whether their median drift is beyond tolerance."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hwprune.errors import HwpruneError, first_line
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


@dataclass
class _TimedCandidates:
    """What timing the rebuilt candidates gave: each row's record by signature, the session's environment
    (when none was known before), and when the timing started."""

    records: dict[str, dict[str, Any]]
    environment: dict[str, Any] | None
    started: float


@dataclass
class _DriftTest:
    """The median drift of the re-timed rows, its bootstrap interval and the verdict read from it."""

    drift: np.ndarray
    use_adjusted: bool
    median: float
    ci_low: float
    ci_high: float
    verdict: str


def regress_lut(opts: RegressOptions, cfg: DeviceConfig, tolerance: float, statistics: list[str],
                log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Re-time ``opts.sample`` random rows of a LUT and test the median drift (``hwprune.regress``'s docstring).

    Each row's candidate is rebuilt from the zoo model the LUT was profiled from (its unit at
    the row's widths, exactly as ``hwprune profile`` built it; the signature is checked) and
    timed through a profiling bundle, interleaved with the identity graph and the drift
    reference, as the row was. Drift is the new time over the LUT's, corrected by the drift
    reference's time then and now where both are recorded.
    """
    from hwprune.lut import LatencyLUT

    if opts.sample < 2:
        raise HwpruneError(f"--sample must be at least 2, got {opts.sample}")
    lut = LatencyLUT.load(opts.lut)
    lut_fp = lut.meta.get("fingerprint")
    if not lut_fp:
        raise HwpruneError(f"{opts.lut}: the LUT has no measured rows")
    now_env = _local_environment(cfg)
    env_info = _environment_check(lut.meta.get("environment"), lut_fp, now_env, f"the LUT {opts.lut}",
                                  opts.allow_env_change) if now_env else None
    key, structure, build = _pick_model(opts, cfg, lut)
    statistic = statistics[0] if statistics else lut.meta.get("statistic", cfg.statistic)
    where = _unit_points(structure)
    picked = _pick_rows(opts, cfg, lut, lut_fp, key, where)
    items = _rebuild_candidates(opts, cfg, key, structure, build, picked, where, log)
    timed = _time_candidates(items, cfg, now_env)
    if env_info is None:
        env_info = _environment_check(lut.meta.get("environment"), lut_fp, timed.environment, f"the LUT {opts.lut}",
                                      opts.allow_env_change)
    out_rows = _drift_rows(picked, timed.records, statistic)
    test = _test_drift(out_rows, opts, tolerance)
    return {
        "format": RESULT_FORMAT, "kind": "lut", "mode": "lut", "device": cfg.name, "lut": opts.lut, "model": key,
        "statistic": statistic, "verdict": test.verdict, "exit_code": VERDICT_EXIT[test.verdict],
        "tolerance": tolerance, "confidence": opts.confidence, "resamples": opts.resamples, "seed": opts.seed,
        "drift_measure": "reference-adjusted" if test.use_adjusted else "raw",
        "median_drift": test.median, "ci_low": test.ci_low, "ci_high": test.ci_high,
        "rows_beyond_tolerance": int(np.sum(np.abs(test.drift) > tolerance)), "rows": out_rows,
        "measurement": {"seconds": time.perf_counter() - timed.started, "rows": len(out_rows)},
        "environment": env_info, "created_unix_s": time.time(),
    }


def _pick_model(opts: RegressOptions, cfg: DeviceConfig, lut) -> tuple[str, dict[str, Any], str]:
    """The LUT's one model to check (``opts.model``, or the only one), its recorded structure, which
    must have been profiled at the device config's batch and precision, and the model to rebuild
    its candidates from: the recorded one, or ``--model`` when it builds the same layers (a LUT
    profiled through the Python API records a class name, which nothing can build)."""
    models = lut.meta.get("models") or {}
    build = None
    if opts.model:
        keys = [k for k, s in models.items() if opts.model in (k, s.get("model"))]
        if not keys:
            keys, build = _same_layers(opts, lut), opts.model
    else:
        keys = list(models)
    if len(keys) != 1:
        known = ", ".join(sorted(models)) or "none"
        raise HwpruneError(f"{opts.lut}: " + (f"no model '{opts.model}' in the LUT" if opts.model and not keys
                                              else "pick one model with --model") + f" (models: {known})")
    key = keys[0]
    structure = models[key]
    if structure.get("batch") != cfg.batch_size or structure.get("precision") != cfg.precision:
        raise HwpruneError(f"{opts.lut}: {key} was profiled at batch {structure.get('batch')} "
                           f"{structure.get('precision')}, the device config says batch {cfg.batch_size} "
                           f"{cfg.precision}")
    return key, structure, build or structure["model"]


def _same_layers(opts: RegressOptions, lut) -> list[str]:
    """The profiles that ``--model`` builds exactly, found as ``lut check`` and ``prune`` find them
    (``LatencyLUT.key_for``: the same layers at the same input shape); none when it does not build."""
    from hwprune.lut import model_key
    from hwprune.models.spec import ModelSpec

    found = set()
    for shape in {tuple(s.get("input_shape") or ()) for s in lut.meta["models"].values()}:
        if len(shape) != 4:
            continue
        try:
            model = ModelSpec(opts.model, shape[1:], opts.num_classes).build()
        except HwpruneError:
            continue
        key = lut.key_for(model_key(opts.model, shape), model)
        if key in lut.meta["models"]:
            found.add(key)
    return sorted(found)


def _unit_points(structure: dict[str, Any]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """For each candidate signature of the model, its unit's index and the unit's widths (the first
    point that has it)."""
    where: dict[str, tuple[int, tuple[int, ...]]] = {}
    for ui, unit in enumerate(structure.get("units", [])):
        for point, sig in unit.get("table", {}).items():
            where.setdefault(sig, (ui, tuple(int(v) for v in point.split(",") if v)))
    return where


def _pick_rows(opts: RegressOptions, cfg: DeviceConfig, lut, lut_fp: str, key: str,
               where: dict[str, tuple[int, tuple[int, ...]]]):
    """A seeded random sample of ``opts.sample`` of the model's rows measured on this device, batch and
    precision."""
    rows = lut.rows
    rows = rows[(rows["device_fingerprint"] == lut_fp) & (rows["precision"] == cfg.precision)
                & (rows["batch"] == cfg.batch_size) & rows["signature"].isin(list(where))]
    if len(rows) < 2:
        raise HwpruneError(f"{opts.lut}: fewer than 2 measured rows for {key} on this device")
    return rows.sample(n=min(opts.sample, len(rows)), random_state=opts.seed)


def _rebuild_candidates(opts: RegressOptions, cfg: DeviceConfig, key: str, structure: dict[str, Any], build: str,
                        picked, where: dict[str, tuple[int, tuple[int, ...]]],
                        log: Callable[[str], None]) -> list[tuple[str, bytes, dict]]:
    """The picked rows' candidates, rebuilt from ``build`` (a zoo or file model) as ``hwprune
    profile`` built them, as ``time_items`` items; each must still have its recorded signature."""
    import torch

    from hwprune.candidates import build_width_graph
    from hwprune.groups import find_groups
    from hwprune.models.spec import ModelSpec

    torch.manual_seed(opts.seed)
    c, h, w = structure["input_shape"][1:]
    spec = ModelSpec(build, (c, h, w), opts.num_classes, structure.get("weights"))
    try:
        model = spec.build()
    except HwpruneError as err:
        if build != structure["model"] or ":" in build:
            raise
        raise HwpruneError(f"{opts.lut}: {key} was profiled from a Python module, which the LUT cannot rebuild: give "
                           f"--model as a file.py:factory that builds it ({first_line(err)})") from None
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
    return items


def _time_candidates(items: list[tuple[str, bytes, dict]], cfg: DeviceConfig,
                     environment: dict[str, Any] | None) -> _TimedCandidates:
    """Time ``items`` through a profiling bundle in a temporary folder; a failed candidate raises.
    ``environment`` is kept unless None, when the session's takes its place."""
    from profilers.scratch import scratch

    from hwprune.measure import time_items

    timed = _TimedCandidates(records={}, environment=environment, started=0.0)

    def on_record(rec: dict[str, Any]) -> None:
        if rec.get("type") == "row":
            timed.records[rec["key"]] = rec
        elif rec.get("type") == "session" and timed.environment is None:
            timed.environment = rec.get("environment")
        elif rec.get("type") == "error":
            raise HwpruneError(f"LUT candidate {rec['key']} failed on {cfg.name}: {rec['error']}")

    timed.started = time.perf_counter()
    with scratch("regress-lut") as work:
        time_items(items, cfg, work, on_record)
    return timed


def _drift_rows(picked, records: dict[str, dict[str, Any]], statistic: str) -> list[dict[str, Any]]:
    """One report row per picked LUT row: its time then and now, the raw drift and, where the drift
    reference was timed both times, the reference-adjusted drift."""
    from hwprune.lut import STAT_COLUMNS
    from hwprune.measure import statistic_ms

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
    return out_rows


def _test_drift(out_rows: list[dict[str, Any]], opts: RegressOptions, tolerance: float) -> _DriftTest:
    """The median drift over the rows (reference-adjusted when every row has it), its bootstrap
    interval and the verdict."""
    use_adjusted = all(r["adjusted_drift"] is not None for r in out_rows)
    drift = np.array([r["adjusted_drift"] if use_adjusted else r["drift"] for r in out_rows])
    med = float(np.median(drift))
    lo, hi = _median_ci(drift, opts.confidence, opts.resamples, opts.seed)
    lo, hi = min(lo, med), max(hi, med)
    return _DriftTest(drift=drift, use_adjusted=use_adjusted, median=med, ci_low=lo, ci_high=hi,
                      verdict=decide_lut(lo, hi, tolerance))


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None

