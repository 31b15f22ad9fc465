"""``hwprune profile``: build a model's latency LUT on a device, resumably, and calibrate it.

Steps: build the model and its dependency groups; derive the width-parametric ONNX graph
and its units; enumerate (unit, width) candidates and drop signatures the LUT already has;
write the rest into a profiling bundle; time the bundle locally or over SSH (``profilers``);
merge rows into the LUT as they arrive; then time the calibration sub-networks (interleaved, when local) and fit the LUT's
correction. The bundle's results file is the journal: a killed run loses no finished row, and
the next run picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from hwprune.candidates import (MAX_UNIT_GRID_POINTS, build_width_graph, cap_unit_grids, enumerate_candidates,
                                grids_for)
from hwprune.errors import HwpruneError
from hwprune.export import check_input_shape, export_onnx
from hwprune.groups import PrunableGroup, UnprunableGroup, find_groups, prune_to_widths, snap_channels
from hwprune.lut import LatencyLUT, Predictor, fit_calibration, model_key, structure_sha
from hwprune.measure import REFERENCE_KEY, drift_factor, measure_many, progress_bar, statistic_ms, time_items
from hwprune.models.spec import ModelSpec, parse_input_shape  # noqa: F401  (their old home; callers import them here)
from profilers.config import DeviceConfig, load_device_config

CALIBRATION_KEY = "calib:"


@dataclass
class ProfileResult:
    lut_path: str
    model_key: str
    groups: int
    units: int
    signatures_total: int
    signatures_measured: int
    calibration: dict[str, Any]
    wall_s: float
    timed_s: float
    overhead_ratio: float
    resumed_rows: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_ratios(text: str) -> tuple[float, ...]:
    """``--grid 0.25,0.5,0.75,1``: keep ratios in (0, 1]."""
    try:
        ratios = tuple(sorted({float(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise HwpruneError(f"--grid must be comma-separated keep ratios, got '{text}'") from None
    if not ratios or ratios[0] <= 0 or ratios[-1] > 1:
        raise HwpruneError(f"--grid ratios must lie in (0, 1], got '{text}'")
    return ratios


def random_widths(groups: Sequence[PrunableGroup], multiple: int, rng: random.Random,
                  low: float = 0.2, high: float = 1.0) -> list[int]:
    """A random sub-network: keep ratio uniform in [low, high] per group, snapped."""
    return [snap_channels(rng.uniform(low, high) * g.channels, g.channels, multiple) for g in groups]


def _lut_row(record: dict[str, Any], meta: dict[str, Any], session: dict[str, Any], cfg: DeviceConfig,
             fingerprint: str) -> dict[str, Any]:
    t = record["timing"]
    return {
        "device_fingerprint": fingerprint, "device": cfg.name, "signature": record["key"],
        **{k: meta.get(k) for k in ("op", "cin", "cout", "kernel", "stride", "groups", "in_h", "in_w")},
        "batch": cfg.batch_size, "precision": cfg.precision,
        "n": t["n"], "mean_ms": t["mean_ms"], "std_ms": t["std_ms"], "p50_ms": t["p50_ms"],
        "p90_ms": t["p90_ms"], "p99_ms": t["p99_ms"], "ci_low_ms": t["ci_low_ms"], "ci_high_ms": t["ci_high_ms"],
        "cv": t["cv"], "stable": t["stable"], "overhead_ms": statistic_ms(record.get("batch_overhead") or session["overhead"], cfg.statistic),
        "reference_ms": statistic_ms(record["batch_reference"], cfg.statistic) if record.get("batch_reference") else None,
        "timed_s": t["total_s"], "measured_at": session.get("started_unix_s"), "samples_ms": t.get("samples_ms", []),
    }


def profile(spec: ModelSpec, device: str | DeviceConfig, lut_path: str, *, ratios: Sequence[float] | None = None,
            calibration_samples: int = 10, seed: int = 0, fmt: str | None = None,
            allow_other_device: bool = False, show_progress: bool = True, log=print) -> ProfileResult:
    """Profile ``spec`` on ``device`` into the LUT at ``lut_path`` (created or extended).

    Example:
        >>> from hwprune.profiling import ModelSpec, profile
        >>> r = profile(ModelSpec("resnet20"), "x86-cpu-ort", "lut.parquet")  # doctest: +SKIP
        >>> r.signatures_measured, r.overhead_ratio  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    cfg = device if isinstance(device, DeviceConfig) else load_device_config(device)
    path = Path(lut_path)
    if fmt is not None and path.suffix != f".{fmt}":
        raise HwpruneError(f"--format {fmt} does not match the LUT file name {path.name}")
    if path.suffix not in (".parquet", ".csv"):
        raise HwpruneError(f"LUT path must end in .parquet or .csv, got {path.name}")
    lut = LatencyLUT.load(path) if path.exists() else LatencyLUT()
    local_fp = None
    if cfg.remote is not None:
        from profilers.remote import check_reachable

        check_reachable(cfg)  # before minutes of export
    else:
        from profilers.environment import collect_manifest, fingerprint
        from profilers.runners import check_backend

        check_backend(cfg)  # before minutes of export: a missing runtime or GPU is said now
        local_fp = fingerprint(collect_manifest(cfg))
        lut.check_device(local_fp, allow_other_device, str(path))

    torch.manual_seed(seed)
    model = spec.build()
    x = spec.example_input(cfg.batch_size)
    check_input_shape(model, x)
    unprunable: list[UnprunableGroup] = []
    groups = find_groups(model, x, unprunable=unprunable)
    for u in unprunable:
        log(f"warning: group {u.name} ({u.channels} channels) is left at full width: {u.reason}")
    log(f"{spec.name}: {len(groups)} prunable groups; exporting the width-parametric graph ...")
    wg = build_width_graph(model, x, groups)
    units = wg.units()
    fine = grids_for(groups, cfg.channel_multiple, ratios)
    grids = cap_unit_grids(fine, units)
    coarsened = [g.name for g, a, b in zip(groups, fine, grids) if a != b]
    if coarsened:
        log(f"warning: {len(coarsened)} group(s) profiled on a coarser grid, since a layer after a concatenation "
            f"depends on them all (at most {MAX_UNIT_GRID_POINTS} points a unit): {', '.join(coarsened[:3])}"
            + (" ..." if len(coarsened) > 3 else ""))
    key = model_key(spec.name, tuple(x.shape))

    # The model's structure: which signature each unit has at each grid point.
    unit_tables: list[dict[str, str]] = [dict() for _ in units]
    todo: dict[str, tuple[int, tuple[int, ...]]] = {}
    for cand in enumerate_candidates(wg, units, grids):
        unit_tables[cand.unit][",".join(map(str, cand.point))] = cand.signature
        todo.setdefault(cand.signature, (cand.unit, cand.point))
    signatures_total = len(todo)
    fp_known = lut.meta.get("fingerprint") or local_fp
    missing = {s: v for s, v in todo.items()
               if not (fp_known and lut.has(s, fp_known, cfg.precision, cfg.batch_size))}

    structure = {
        "model": spec.name, "structure_sha": structure_sha(model), "input_shape": list(x.shape),
        "batch": cfg.batch_size, "precision": cfg.precision,
        "weights": spec.weights, "ratios": list(ratios) if ratios else None, "channel_multiple": cfg.channel_multiple,
        "groups": [{"name": g.name, "channels": g.channels, "grid": grid, "members": list(g.members)}
                   for g, grid in zip(groups, grids)],
        "unprunable": [dataclasses.asdict(u) for u in unprunable],
        "units": [{"name": u.name, "label": u.label, "groups": list(u.groups), "table": t}
                  for u, t in zip(units, unit_tables)],
    }
    old = lut.meta["models"].get(key, {})
    calibration = old.get("calibration") if old.get("units") == structure["units"] else None

    rng = random.Random(seed)
    calib_widths = [random_widths(groups, cfg.channel_multiple, rng) for _ in range(calibration_samples)]
    calib_items = []
    if calibration is None or calibration.get("n", 0) < min(3, calibration_samples):
        # Real sub-networks, pruned by Torch-Pruning and exported as they will be deployed.
        for i, w in enumerate(calib_widths):
            h = hashlib.sha1(json.dumps(w).encode()).hexdigest()[:10]
            pruned = prune_to_widths(model, x, {g.name: wi for g, wi in zip(groups, w)})
            calib_items.append((f"{CALIBRATION_KEY}{i}:{h}", export_onnx(pruned, x), {"widths": w}))

    # The journal belongs to one model on one device config: another profile of the same LUT
    # (another model, another config) keeps a journal of its own.
    work = path.with_name(f"{path.name}.work-{_journal_id(key, cfg)}")
    items = []
    for sig, (ui, point) in missing.items():
        u = units[ui]
        widths = list(wg.dense_widths)
        for g, w in zip(u.groups, point):
            widths[g] = w
        items.append((sig, wg.instantiate(u.nodes, widths), wg.describe(u.nodes, widths)))

    sessions: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    timed_s = 0.0
    resumed = 0
    measured_now = 0
    last_save = time.monotonic()

    pending_rows: list[dict[str, Any]] = []

    def save() -> None:
        # Rows are merged in batches: one DataFrame concat per row would dominate profiling.
        lut.add_rows(pending_rows)
        pending_rows.clear()
        lut.meta.update({"format": lut.meta.get("format", 1), "device": cfg.name,
                         "statistic": cfg.statistic})
        runs = lut.meta["models"].get(key, {}).get("profile_runs", [])  # the history survives re-saves
        lut.meta["models"][key] = {**structure, "overhead_ms": _overhead(sessions, cfg, lut, key),
                                   "calibration": calibration, "profile_runs": runs}
        with LatencyLUT.locked(path):  # another profile may have saved other models meanwhile
            lut.merge_saved(path, key)
            lut.save(path)

    if items:
        if work.exists():
            shutil.rmtree(work / "onnx", ignore_errors=True)
        log(f"{signatures_total} distinct signatures, {len(missing)} to measure on {cfg.name}")
        bar = progress_bar(len(items), "profiling", show_progress)

        def on_row(rec: dict[str, Any]) -> None:
            nonlocal timed_s, resumed, last_save, measured_now
            kind = rec.get("type")
            if kind == "session":
                sessions[rec["session"]] = rec
                if lut.meta.get("fingerprint") is None:
                    lut.meta["fingerprint"] = rec["fingerprint"]
                    lut.meta["environment"] = rec["environment"]
                else:
                    lut.check_device(rec["fingerprint"], allow_other_device, str(path))
                return
            if kind == "error":
                errors.append(f"{rec['key']}: {rec['error']}")
                bar.update(1)
                return
            session = sessions.get(rec.get("session"), {})
            if rec.get("session") not in sessions:
                return
            # Filed under the LUT's device: the session's own, except with --allow-other-device,
            # where rows under this device's fingerprint would be invisible to the LUT's lookups.
            pending_rows.append(_lut_row(rec, rec.get("meta", {}), session, cfg, lut.meta["fingerprint"]))
            if rec["session"] == current_session[0]:
                timed_s += rec["timing"]["total_s"]
                measured_now += 1
            else:
                resumed += 1
            bar.update(1)
            if time.monotonic() - last_save > 30:
                save()
                last_save = time.monotonic()

        current_session: list[str | None] = [None]

        def on_record(rec: dict[str, Any]) -> None:
            if rec.get("type") == "session" and rec.get("started_unix_s", 0) >= started_unix:
                current_session[0] = rec["session"]
            on_row(rec)

        started_unix = time.time()
        try:
            time_items(items, cfg, work, on_record)
        finally:
            bar.close()
            if lut.meta.get("fingerprint"):
                save()
        if errors:
            raise HwpruneError(f"{len(errors)} candidate(s) failed to run on {cfg.name}; first: {errors[0]}")

    # Calibration: a + b * raw prediction ≈ measured, over whole random sub-networks.
    if calib_items:
        if not lut.meta.get("fingerprint"):
            raise HwpruneError(f"{path}: nothing was measured on {cfg.name}, so the LUT cannot be calibrated")
        log(f"calibrating on {len(calib_items)} random sub-networks measured end to end ...")
        timings = measure_many([(k, blob) for k, blob, _ in calib_items], cfg, "calibrating", show_progress,
                               with_reference=True)
        # Measured at this moment's machine speed; the LUT's rows are at its typical speed.
        drift = drift_factor(lut, timings, cfg.statistic)
        calib_measured = {k: statistic_ms(t, cfg.statistic) * drift for k, t in timings.items() if k != REFERENCE_KEY}
        predictor_structure = {**structure, "overhead_ms": _overhead(sessions, cfg, lut, key), "calibration": None}
        lat = lut.latency_ms(lut.meta["fingerprint"], cfg.precision, cfg.batch_size, cfg.statistic)
        pred = Predictor(predictor_structure, lat, cfg.statistic)
        raws, measured, points = [], [], []
        for k, _, meta in calib_items:
            if k in calib_measured:
                raw = pred.predict_raw(meta["widths"])
                raws.append(raw)
                measured.append(calib_measured[k])
                points.append({"widths": meta["widths"], "raw_ms": raw, "measured_ms": calib_measured[k]})
        calibration = {**fit_calibration(raws, measured), "statistic": cfg.statistic, "points": points}
    if lut.meta.get("fingerprint"):
        save()
    shutil.rmtree(work, ignore_errors=True)
    wall_s = time.perf_counter() - t_start
    result = ProfileResult(str(path), key, len(groups), len(units), signatures_total, measured_now,
                           calibration or {}, wall_s, timed_s,
                           wall_s / timed_s if timed_s > 0 else float("nan"), resumed, errors)
    lut.meta["models"][key].setdefault("profile_runs", []).append(
        {k: v for k, v in result.to_dict().items() if k not in ("calibration", "errors")})
    save()
    return result


def _journal_id(key: str, cfg: DeviceConfig) -> str:
    """What a journal's rows are valid for: the model and the device config that measures it."""
    return hashlib.sha1(json.dumps([key, cfg.to_dict()], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _overhead(sessions: dict[str, dict[str, Any]], cfg: DeviceConfig, lut: LatencyLUT, key: str) -> float:
    """The runtime's per-call overhead: median over sessions that measured this model."""
    vals = [statistic_ms(s["overhead"], cfg.statistic) for s in sessions.values()]
    if not vals:
        return float(lut.meta["models"].get(key, {}).get("overhead_ms", 0.0))
    vals.sort()
    return float(vals[len(vals) // 2])

