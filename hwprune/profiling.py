"""``hwprune profile``: build a model's latency LUT on a device, resumably, and calibrate it.

Steps: build the model and its dependency groups; derive the width-parametric ONNX graph
and its units; with ``channel_multiple: auto``, measure each group's latency staircase and keep
the widths on its steps (``hwprune.widthsteps``); enumerate (unit, width) candidates and drop signatures the LUT already has;
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
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from hwprune.agents.base import SearchSpace
from hwprune.candidates import (MAX_UNIT_GRID_POINTS, Candidate, build_width_graph, cap_unit_grids,
                                check_grid_size, enumerate_candidates, grids_for)
from hwprune.errors import HwpruneError, check_integer
from hwprune.export import check_input_shape, export_onnx
from hwprune.groups import PrunableGroup, UnprunableGroup, find_groups, prune_to_widths
from hwprune.lut import LatencyLUT, Predictor, fit_calibration, model_key, structure_sha
from hwprune.measure import REFERENCE_KEY, drift_factor, measure_many, progress_bar, statistic_ms, time_items
from hwprune.models.spec import ModelSpec, parse_input_shape  # noqa: F401  (their old home; callers import them here)
from hwprune.widthsteps import PROCESSES, Staircase, measure_staircases, staircase_candidates, staircases_of
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
    # staircase points timed again in fresh processes (not LUT rows: the LUT keeps the profile's own)
    other_process_timings: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_ratios(text: str) -> tuple[float, ...]:
    """``--grid 0.25,0.5,0.75,1``: keep ratios in (0, 1]."""
    try:
        ratios = tuple(sorted({float(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise HwpruneError(f"--grid must be comma-separated keep ratios, got '{text}'") from None
    return check_ratios(ratios, text)


def check_ratios(ratios: Sequence[float], shown: str | None = None) -> tuple[float, ...]:
    """Keep ratios, sorted and distinct, each in (0, 1]; ``shown`` is how the user wrote them."""
    try:
        out = tuple(sorted({float(r) for r in ratios}))
    except (TypeError, ValueError):
        raise HwpruneError(f"--grid must be keep ratios in (0, 1], got {ratios!r}") from None
    if not out or out[0] <= 0 or out[-1] > 1:
        raise HwpruneError(f"--grid ratios must lie in (0, 1], got '{shown if shown is not None else list(ratios)}'")
    return out


def random_widths(space: SearchSpace, rng: random.Random, low: float = 0.2, high: float = 1.0) -> list[int]:
    """A random sub-network: keep ratio uniform in [low, high] per group, snapped to the space's widths."""
    return [space.snap(g, rng.uniform(low, high) * d) for g, d in enumerate(space.dense)]


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
            allow_other_device: bool = False, replace: bool = False, show_progress: bool = True,
            staircase_processes: int = PROCESSES, log=print) -> ProfileResult:
    """Profile ``spec`` on ``device`` into the LUT at ``lut_path`` (created or extended).

    A LUT that holds a profile under the same name and input shape made of other layers (another
    class count, an edited model file, another file of the same name) is refused unless ``replace``:
    replacing it silently would leave the earlier model's runs without their profile.

    With the config's ``channel_multiple: auto`` the groups' latency staircases are measured
    first, in this process and ``staircase_processes - 1`` fresh ones, and the unit tables are
    profiled on the widths they allow (:mod:`hwprune.widthsteps`).

    Example:
        >>> from hwprune.profiling import ModelSpec, profile
        >>> r = profile(ModelSpec("resnet20"), "x86-cpu-ort", "lut.parquet")  # doctest: +SKIP
        >>> r.signatures_measured, r.overhead_ratio  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    if ratios is not None:
        ratios = check_ratios(ratios)
    check_integer(staircase_processes, "--staircase-processes", 1)
    cfg = device if isinstance(device, DeviceConfig) else load_device_config(device)
    path = Path(lut_path)
    lut, local_fp = _open_lut(path, cfg, fmt, allow_other_device, log)

    torch.manual_seed(seed)
    model, x, key, old = _model_and_entry(spec, cfg, lut, path, replace)
    unprunable: list[UnprunableGroup] = []
    groups = find_groups(model, x, unprunable=unprunable)
    for u in unprunable:
        log(f"warning: group {u.name} ({u.channels} channels) is left at full width: {u.reason}")
    log(f"{spec.name}: {len(groups)} prunable groups; exporting the width-parametric graph ...")
    wg = build_width_graph(model, x, groups)
    units = wg.units()
    rows = _Rows(lut, path, key, cfg, allow_other_device, show_progress)
    rows.structure, rows.calibration = (old or None), old.get("calibration")

    staircases, stair_signatures = None, set()
    if cfg.auto_widths:
        measured = _old_staircases(old, model, cfg, log)
        staircases, stair_signatures = _staircases(wg, units, groups, rows,
                                                   path.with_name(f"{path.name}.steps-{_journal_id(key, cfg)}"),
                                                   local_fp, staircase_processes, measured, log)
    space = SearchSpace([g.name for g in groups], [g.channels for g in groups], cfg.width_multiple,
                        [s.allowed for s in staircases] if staircases is not None else None,
                        steps=[g.step for g in groups])
    grids = _table_grids(groups, units, cfg, ratios, space, log)

    unit_tables, todo = _unit_tables(wg, units, grids)
    missing = _missing(lut, cfg, local_fp, todo)

    structure = {
        "model": spec.name, "structure_sha": structure_sha(model), "input_shape": list(x.shape),
        "batch": cfg.batch_size, "precision": cfg.precision,
        "weights": spec.weights, "ratios": list(ratios) if ratios else None, "channel_multiple": cfg.channel_multiple,
        "groups": [{"name": g.name, "channels": g.channels, "grid": grid, "members": list(g.members),
                    **({"step": g.step} if g.step > 1 else {}),
                    # the widths a search may choose: the steps its tables were profiled at
                    **({"allowed": [w for w in s.allowed if w in grid]} if s is not None else {})}
                   for g, grid, s in zip(groups, grids, staircases or [None] * len(groups))],
        "unprunable": [dataclasses.asdict(u) for u in unprunable],
        "units": [{"name": u.name, "label": u.label, "groups": list(u.groups), "table": t}
                  for u, t in zip(units, unit_tables)],
        **({"staircases": [s.to_dict() for s in staircases], "staircase_statistic": cfg.statistic}
           if staircases is not None else {}),
    }
    rows.structure = structure
    if old.get("units") != structure["units"] or old.get("groups") != structure["groups"]:
        rows.calibration = None
    if staircases is not None:
        rows.save()  # the staircases took processes of their own to measure: an interruption keeps them

    calib_items = []
    if rows.calibration is None or rows.calibration.get("n", 0) < min(3, calibration_samples):
        calib_items = _calibration_items(model, x, groups, space, calibration_samples, seed)

    if missing:
        log(f"{len(todo)} distinct signatures, {len(missing)} to measure on {cfg.name}")
        # The journal belongs to one model on one device config: another profile of the same LUT
        # (another model, another config) keeps a journal of its own.
        rows.measure([_candidate_item(wg, units, c) for c in missing],
                     path.with_name(f"{path.name}.work-{_journal_id(key, cfg)}"), "profiling")
    if calib_items:
        rows.calibration = _calibrate(lut, structure, calib_items, rows, cfg, show_progress, log)
    rows.save()
    wall_s = time.perf_counter() - t_start
    result = ProfileResult(str(path), key, len(groups), len(units), len(set(todo) | stair_signatures), rows.measured_now,
                           rows.calibration or {}, wall_s, rows.timed_s,
                           wall_s / rows.timed_s if rows.timed_s > 0 else float("nan"), rows.resumed, rows.errors,
                           rows.other_process_timings)
    lut.meta["models"][key].setdefault("profile_runs", []).append(
        {k: (None if isinstance(v, float) and v != v else v)   # NaN (nothing timed) is not JSON
         for k, v in result.to_dict().items() if k not in ("calibration", "errors")})
    rows.save()
    return result


def _unit_tables(wg, units, grids: Sequence[Sequence[int]]) -> tuple[list[dict[str, str]], dict[str, Candidate]]:
    """The model's structure: which signature each unit has at each grid point, and each distinct
    signature's candidate (measured once however many units share it)."""
    unit_tables: list[dict[str, str]] = [dict() for _ in units]
    todo: dict[str, Candidate] = {}
    for cand in enumerate_candidates(wg, units, grids):
        unit_tables[cand.unit][",".join(map(str, cand.point))] = cand.signature
        todo.setdefault(cand.signature, cand)
    return unit_tables, todo


def _model_and_entry(spec: ModelSpec, cfg: DeviceConfig, lut: LatencyLUT, path: Path,
                     replace: bool) -> tuple[nn.Module, torch.Tensor, str, dict[str, Any]]:
    """The model, its example input at the config's batch, its LUT key and the LUT's entry under
    that key so far (empty when new); another variant under the same key is refused unless ``replace``."""
    model = spec.build()
    x = spec.example_input(cfg.batch_size)
    key = model_key(spec.name, tuple(x.shape))
    old = lut.meta["models"].get(key, {})
    if old.get("structure_sha") not in (None, structure_sha(model)) and not replace:
        raise HwpruneError(f"{path} already holds a profile of {key} made of other layers (another variant of "
                           f"the model, or another model of the same name): profile this one into another LUT, "
                           f"or pass --replace to replace that profile")
    check_input_shape(model, x)
    return model, x, key, old


def _calibration_items(model: nn.Module, x: torch.Tensor, groups: Sequence[PrunableGroup], space: SearchSpace,
                       samples: int, seed: int) -> list[tuple[str, bytes, dict[str, Any]]]:
    """``samples`` random whole sub-networks, pruned by Torch-Pruning and exported as they will be
    deployed, keyed by their widths' hash."""
    rng = random.Random(seed)
    items = []
    for i, w in enumerate([random_widths(space, rng) for _ in range(samples)]):
        h = hashlib.sha1(json.dumps(w).encode()).hexdigest()[:10]
        pruned = prune_to_widths(model, x, {g.name: wi for g, wi in zip(groups, w)})
        items.append((f"{CALIBRATION_KEY}{i}:{h}", export_onnx(pruned, x), {"widths": w}))
    return items


def _open_lut(path: Path, cfg: DeviceConfig, fmt: str | None, allow_other_device: bool,
              log=print) -> tuple[LatencyLUT, str | None]:
    """The LUT at ``path`` (new if absent) and this machine's fingerprint (None when the device is
    remote), after the checks that must come before minutes of export."""
    if fmt is not None and path.suffix != f".{fmt}":
        raise HwpruneError(f"--format '{fmt}' does not match the LUT file name {path.name}")
    if path.suffix not in (".parquet", ".csv"):
        raise HwpruneError(f"LUT path must end in .parquet or .csv, got {path.name}")
    lut = LatencyLUT.load(path) if path.exists() else LatencyLUT()
    if cfg.remote is not None:
        from profilers.remote import check_reachable

        check_reachable(cfg)
        return lut, None
    from profilers.environment import collect_manifest, fingerprint
    from profilers.runners import check_backend

    check_backend(cfg)  # a missing runtime or GPU is said now
    local_fp = fingerprint(collect_manifest(cfg))
    lut.check_device(local_fp, allow_other_device, str(path))
    theirs = lut.meta.get("fingerprint")
    if theirs and theirs != local_fp:  # allowed: the rows measured now are filed under the LUT's device
        log(f"warning: {path.name} was measured on '{lut.meta.get('device')}' (fingerprint {theirs}), this is "
            f"'{cfg.name}' ({local_fp}); the rows measured now are filed under the LUT's device, so its tables mix "
            "two devices' timings: profile into a new LUT unless both are the same hardware and settings")
    return lut, local_fp


def _missing(lut: LatencyLUT, cfg: DeviceConfig, local_fp: str | None, todo: dict[str, Candidate]) -> list[Candidate]:
    """The candidates whose signature the LUT has no row of on this device (all of them in a new LUT)."""
    fp = lut.meta.get("fingerprint") or local_fp
    return [c for sig, c in todo.items() if not (fp and lut.has(sig, fp, cfg.precision, cfg.batch_size))]


def _candidate_item(wg, units, cand: Candidate) -> tuple[str, bytes, dict[str, Any]]:
    """A candidate as a bundle item: its signature, its unit's ONNX at its point, its description."""
    u = units[cand.unit]
    widths = list(wg.dense_widths)
    for g, w in zip(u.groups, cand.point):
        widths[g] = w
    return cand.signature, wg.instantiate(u.nodes, widths), wg.describe(u.nodes, widths)


def _old_staircases(old: Mapping[str, Any], model, cfg: DeviceConfig, log) -> list[Staircase] | None:
    """The staircases this model's entry keeps, if they are of this model and of the statistic the
    device config now asks for (a step in p50 need not be one in p99)."""
    if old.get("structure_sha") != structure_sha(model):
        return None
    found = staircases_of(old, as_searched=False)
    statistic = old.get("staircase_statistic", "p50")  # LUTs before it was kept: the default statistic
    if found is not None and statistic != cfg.statistic:
        log(f"the LUT's width steps were measured on {statistic} and {cfg.name} now uses {cfg.statistic}: measuring "
            f"them again (the allowed widths, and with them the unit tables' grid, may change)")
        return None
    return found


def _staircases(wg, units, groups: Sequence[PrunableGroup], rows: "_Rows", work: Path, local_fp: str | None,
                processes: int, old: list[Staircase] | None, log) -> tuple[list[Staircase], set[str]]:
    """Each group's latency staircase and its allowed widths: measured in this process where the
    LUT lacks a point and once more in each of ``processes - 1`` fresh ones, or the profile's
    earlier ones (``old``) when they are of these groups and as many processes; re-measured, a step
    that came and went would re-grid every table. Also returns the staircases' signatures."""
    points = list(staircase_candidates(wg, units, [g.step for g in groups]))
    todo: dict[str, Candidate] = {}
    for p in points:
        todo.setdefault(p.candidate.signature, p.candidate)
    widths = [sorted({p.width for p in points if p.group == gi}) or [g.channels] for gi, g in enumerate(groups)]
    if old is not None and [(s.group, s.dense, s.widths) for s in old] == \
            [(g.name, g.channels, w) for g, w in zip(groups, widths)] and min(s.processes for s in old) >= processes:
        log(f"width steps: as measured before, {sum(len(s.allowed) for s in old)} allowed widths over {len(old)} groups")
        return old, set(todo)
    if old is not None:
        log(f"the LUT's width steps were measured in {min(s.processes for s in old)} process(es); measuring them in "
            f"{processes}: the allowed widths, and with them the unit tables' grid, may change")
    cfg, lut = rows.cfg, rows.lut
    items = {c.signature: c for c in _missing(lut, cfg, local_fp, todo)}
    exported = [_candidate_item(wg, units, c) for c in todo.values()]  # once, for every process
    log(f"channel_multiple auto: the latency staircase of {len(groups)} groups, {len(todo)} distinct signatures "
        f"({len(items)} to measure in this process" + (f", all of them in {processes - 1} fresh one(s)"
                                                      if processes > 1 else "") + ")")
    if items:
        rows.measure([item for item in exported if item[0] in items], work, "staircases")
    others = []
    for i in range(processes - 1):
        lat, noise, timed_s = _staircase_process(exported, cfg, work.with_name(f"{work.name}.p{i + 2}"),
                                                 f"staircases, process {i + 2}/{processes}", rows.show_progress)
        others.append((lat, noise))
        rows.timed_s += timed_s
        rows.other_process_timings += len(lat)
    fp = lut.meta["fingerprint"]
    out = measure_staircases(points, [g.name for g in groups], [g.channels for g in groups],
                             lut.latency_ms(fp, cfg.precision, cfg.batch_size, cfg.statistic),
                             lut.noise_ms(fp, cfg.precision, cfg.batch_size), others=others)
    steps = sum(len(s.allowed) for s in out)
    log(f"width steps measured: {steps} allowed widths over {len(out)} groups (e.g. {out[-1].group}: "
        f"{', '.join(map(str, out[-1].allowed))})")
    return out, set(todo)


def _staircase_process(items: Sequence[tuple[str, bytes, dict[str, Any]]], cfg: DeviceConfig, work: Path, desc: str,
                       show_progress: bool) -> tuple[dict[str, float], dict[str, float], float]:
    """The staircase's signatures timed in one fresh process: their latency and noise on that
    process's own level, as the LUT computes them, and the seconds spent inside timed runs."""
    found = LatencyLUT()
    rows: list[dict[str, Any]] = []
    sessions: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    bar = progress_bar(len(items), desc, show_progress)

    def on_record(rec: dict[str, Any]) -> None:
        if rec.get("type") == "session":
            sessions[rec["session"]] = rec
        elif rec.get("type") == "error":
            errors.append(f"{rec['key']}: {rec['error']}")
        elif rec.get("session") in sessions:
            rows.append(_lut_row(rec, rec.get("meta", {}), sessions[rec["session"]], cfg, "this"))
            bar.update(1)

    # Not resumed: rows of an interrupted pass came from another interpreter, at its own speed level,
    # and one pass is what the rule compares with the profile's own (about a minute for resnet20).
    shutil.rmtree(work, ignore_errors=True)
    try:
        time_items(items, cfg, work, on_record, fresh_process=True)
    finally:
        bar.close()
    if errors:
        raise HwpruneError(f"{len(errors)} staircase point(s) failed to run on {cfg.name}; first: {errors[0]}")
    found.add_rows(rows)
    out = (found.latency_ms("this", cfg.precision, cfg.batch_size, cfg.statistic),
           found.noise_ms("this", cfg.precision, cfg.batch_size), sum(float(r["timed_s"] or 0.0) for r in rows))
    shutil.rmtree(work, ignore_errors=True)
    return out


def _table_grids(groups: Sequence[PrunableGroup], units, cfg: DeviceConfig, ratios: Sequence[float] | None,
                 space: SearchSpace, log) -> list[list[int]]:
    """The widths each group's unit tables are profiled at: the allowed widths (``auto``: ``space``
    holds them), or the multiples' grid; ``ratios`` coarsen either; then capped so no unit has too
    many points."""
    if space.allowed is None:
        fine = grids_for(groups, cfg.width_multiple, ratios)
    else:
        fine = [space.choices(gi) if not ratios else
                sorted({space.snap(gi, r * g.channels) for r in ratios} | {space.choices(gi)[0], g.channels})
                for gi, g in enumerate(groups)]
    if space.allowed is None and all(len(widths) < 2 for widths in fine):
        log(f"warning: channel_multiple {cfg.width_multiple} leaves no group a width below its dense one (the groups "
            f"have {min(g.channels for g in groups)}-{max(g.channels for g in groups)} channels): the LUT holds "
            "the dense model alone and nothing can be pruned; lower channel_multiple in the device config")
    grids = cap_unit_grids(fine, units)
    check_grid_size(grids, units, [g.name for g in groups])
    coarsened = [g.name for g, a, b in zip(groups, fine, grids) if a != b]
    if coarsened:
        log(f"warning: {len(coarsened)} group(s) profiled on a coarser grid, since a layer after a concatenation "
            f"depends on them all (at most {MAX_UNIT_GRID_POINTS} points a unit): {', '.join(coarsened[:3])}"
            + (" ..." if len(coarsened) > 3 else ""))
    return grids


def _calibrate(lut: LatencyLUT, structure: dict[str, Any], calib_items, rows: "_Rows", cfg: DeviceConfig,
               show_progress: bool, log) -> dict[str, Any]:
    """``a + b · raw prediction ≈ measured``, fitted over whole random sub-networks measured now."""
    if not lut.meta.get("fingerprint"):
        raise HwpruneError(f"{rows.path}: nothing was measured on {cfg.name}, so the LUT cannot be calibrated")
    log(f"calibrating on {len(calib_items)} random sub-networks measured end to end ...")
    timings = measure_many([(k, blob) for k, blob, _ in calib_items], cfg, "calibrating", show_progress,
                           with_reference=True)
    # Measured at this moment's machine speed; the LUT's rows are at its typical speed.
    drift = drift_factor(lut, timings, cfg.statistic)
    calib_measured = {k: statistic_ms(t, cfg.statistic) * drift for k, t in timings.items() if k != REFERENCE_KEY}
    lat = lut.latency_ms(lut.meta["fingerprint"], cfg.precision, cfg.batch_size, cfg.statistic)
    pred = Predictor({**structure, "overhead_ms": rows.overhead_ms(), "calibration": None}, lat, cfg.statistic)
    raws, measured, points = [], [], []
    for k, _, meta in calib_items:
        if k in calib_measured:
            raw = pred.predict_raw(meta["widths"])
            raws.append(raw)
            measured.append(calib_measured[k])
            points.append({"widths": meta["widths"], "raw_ms": raw, "measured_ms": calib_measured[k]})
    return {**fit_calibration(raws, measured), "statistic": cfg.statistic, "points": points}


class _Rows:
    """One profile run's measured rows: merged into the LUT as they arrive and saved every 30 s,
    under the model entry ``structure`` (None keeps what is saved: staircases come before it)."""

    def __init__(self, lut: LatencyLUT, path: Path, key: str, cfg: DeviceConfig, allow_other_device: bool,
                 show_progress: bool):
        self.lut, self.path, self.key, self.cfg = lut, path, key, cfg
        self.allow_other_device, self.show_progress = allow_other_device, show_progress
        self.structure: dict[str, Any] | None = None
        self.calibration: dict[str, Any] | None = None
        self.sessions: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.pending: list[dict[str, Any]] = []
        self.timed_s, self.resumed, self.measured_now = 0.0, 0, 0
        self.other_process_timings = 0

    def overhead_ms(self) -> float:
        return _overhead(self.sessions, self.cfg, self.lut, self.key)

    def save(self) -> None:
        if not self.lut.meta.get("fingerprint"):
            return  # nothing measured yet: nothing to file rows under
        lut = self.lut
        # Rows are merged in batches: one DataFrame concat per row would dominate profiling.
        lut.add_rows(self.pending)
        self.pending.clear()
        # The LUT keeps the device it was first measured on: extending it from another config
        # (--allow-other-device) does not rename it, as its rows keep that device's fingerprint.
        lut.meta.update({"format": lut.meta.get("format", 1), "device": lut.meta.get("device") or self.cfg.name,
                         "statistic": self.cfg.statistic})
        if self.structure is not None:
            runs = lut.meta["models"].get(self.key, {}).get("profile_runs", [])  # the history survives re-saves
            lut.meta["models"][self.key] = {**self.structure, "overhead_ms": self.overhead_ms(),
                                            "calibration": self.calibration, "profile_runs": runs}
        with LatencyLUT.locked(self.path):  # another profile may have saved other models meanwhile
            lut.merge_saved(self.path, self.key if self.structure is not None else "")
            lut.save(self.path)

    def measure(self, items: list[tuple[str, bytes, dict[str, Any]]], work: Path, desc: str) -> None:
        """Time ``items`` through the journal ``work`` (resumed if it is there), filing rows as they come."""
        if work.exists():
            shutil.rmtree(work / "onnx", ignore_errors=True)
        bar = progress_bar(len(items), desc, self.show_progress)
        started_unix = time.time()
        current: list[str | None] = [None]
        last_save = [time.monotonic()]
        # the journal also replays rows an earlier run already saved into the LUT: they are not counted
        wanted = {key for key, _, _ in items}

        def on_record(rec: dict[str, Any]) -> None:
            if rec.get("type") == "session" and rec.get("started_unix_s", 0) >= started_unix:
                current[0] = rec["session"]
            if self._take(rec, current[0], rec.get("key") in wanted):
                bar.update(1)
            if time.monotonic() - last_save[0] > 30:
                self.save()
                last_save[0] = time.monotonic()

        try:
            time_items(items, self.cfg, work, on_record)
        finally:
            bar.close()
            self.save()
        if self.errors:
            raise HwpruneError(f"{len(self.errors)} candidate(s) failed to run on {self.cfg.name}; "
                               f"first: {self.errors[0]}")
        shutil.rmtree(work, ignore_errors=True)

    def _take(self, rec: dict[str, Any], current_session: str | None, wanted: bool = True) -> bool:
        """File one journal record; True when it was a ``wanted`` item's (timed or failed), which
        the counts of rows measured now and resumed include."""
        lut, kind = self.lut, rec.get("type")
        if kind == "session":
            self.sessions[rec["session"]] = rec
            if lut.meta.get("fingerprint") is None:
                lut.meta["fingerprint"] = rec["fingerprint"]
                lut.meta["environment"] = rec["environment"]
            else:
                lut.check_device(rec["fingerprint"], self.allow_other_device, str(self.path))
            return False
        if kind == "error":
            self.errors.append(f"{rec['key']}: {rec['error']}")
            return wanted
        session = self.sessions.get(rec.get("session"))
        if session is None:
            return False
        # Filed under the LUT's device: the session's own, except with --allow-other-device,
        # where rows under this device's fingerprint would be invisible to the LUT's lookups.
        self.pending.append(_lut_row(rec, rec.get("meta", {}), session, self.cfg, lut.meta["fingerprint"]))
        if not wanted:
            return False
        if rec["session"] == current_session:
            self.timed_s += rec["timing"]["total_s"]
            self.measured_now += 1
        else:
            self.resumed += 1
        return True


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

