"""Where does a LUT's remaining error come from: timing noise, machine state, or its unit model?

Sub-networks of one LUT's search space are measured end to end in ``--processes`` fresh processes;
each process times every sub-network in two ORT sessions (``a`` and ``b``) beside the dense model,
interleaved, and splits the samples by machine state (`hwprune.states.common_states`). Then:

1. **Timing floor**: the two sessions of one sub-network in one (process, state) cell, |a/b - 1|.
2. **Relative costs across cells**: each cell's vector of sub-network p50s over its median (the
   machine's level taken out), compared between cells of other processes in the same state and in
   the other state, by a scale and by an affine map ``a + b·v`` (what a calibration line can undo).
3. **The LUT's error in each state**: the LUT's raw predictions calibrated by a line fitted on
   ``--fit`` random sub-networks of the cell, scored on the others (many random splits) — the
   in-process calibration of `hwprune lut check`. With ``--journal`` (a profile's journal kept by
   this script's ``--profile``), also with **per-state rows**: each row's samples in that state only
   (rows never seen in it converted by the state ratio of the 15 rows of nearest latency seen in
   both), which is what a LUT kept per machine state would predict.

    .venv/bin/python bench/state_costs.py --lut /tmp/sc/L.parquet --profile --journal /tmp/sc/L.jsonl \
        --processes 6 --work /tmp/sc --json bench/results/state_costs.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

MODEL = "resnet20"
KEY = "resnet20@1x1x28x28"
DEVICE = "x86-cpu-ort"
MIN_STATE_SAMPLES = 20   # a row's samples in one state count as that state's row from this many


def profile_with_journal(lut_path: str, journal: str) -> None:
    """``hwprune profile`` with every journal record also written to ``journal`` (profile deletes its own)."""
    import hwprune.profiling as profiling
    from hwprune.models.spec import ModelSpec

    timed = profiling.time_items
    with open(journal, "w") as out:
        def teed(items, cfg, work, on_record, **kw):
            def record(r):
                out.write(json.dumps(r, default=str) + "\n")
                on_record(r)
            return timed(items, cfg, work, record, **kw)
        profiling.time_items = teed
        profiling.profile(ModelSpec(MODEL), DEVICE, lut_path, show_progress=False)


def sample_widths(lut_path: str, n: int, seed: int) -> list[list[int]]:
    from hwprune.groups import find_groups
    from hwprune.lut import LatencyLUT
    from hwprune.models.spec import ModelSpec
    from hwprune.profiling import random_widths
    from hwprune.widthsteps import search_space
    from profilers.config import load_device_config

    spec = ModelSpec(MODEL)
    model, x = spec.build().eval(), spec.example_input(1)
    space = search_space(find_groups(model, x), load_device_config(DEVICE), LatencyLUT.load(lut_path).predictor(KEY))
    rng = random.Random(seed)
    return [random_widths(space, rng) for _ in range(n)]


def measure_child(widths: list[list[int]], out: str) -> None:
    """One fresh process: every sub-network in two sessions beside the dense model; p50 per state."""
    from hwprune.export import export_onnx
    from hwprune.groups import find_groups, prune_to_widths
    from hwprune.measure import measure_many
    from hwprune.models.spec import ModelSpec
    from hwprune.states import common_states
    from profilers.config import load_device_config

    spec = ModelSpec(MODEL)
    model, x = spec.build().eval(), spec.example_input(1)
    groups = find_groups(model, x)
    items = [("dense", export_onnx(model, x))]
    for i, w in enumerate(widths):
        blob = export_onnx(prune_to_widths(model, x, {g.name: v for g, v in zip(groups, w)}), x)
        items += [(f"a:{i}", blob), (f"b:{i}", blob)]
    timings = measure_many(items, load_device_config(DEVICE), "measuring", False)
    cells = [{"probe_us": probe, "p50_ms": {k: statistics.median(v) for k, v in per.items()}}
             for probe, per in common_states(timings)]
    Path(out).write_text(json.dumps({"cells": cells}))


def journal_rows(journal: str) -> list[dict]:
    """The profile journal's row records (read once: it holds every sample of every row)."""
    return [rec for rec in map(json.loads, open(journal)) if rec.get("type") == "row"]


def state_rows(records: list[dict], fast_below_us: float) -> dict[str, dict[str, float]]:
    """Per signature: its p50 over all samples and over each state's (``fast``/``slow``), per-call overhead kept."""
    rows = {}
    for rec in records:
        t = rec["timing"]
        samples, labels = np.asarray(t["samples_ms"]), np.asarray(t.get("sample_states", []))
        row = {"pooled": t["p50_ms"]}
        for i, probe in enumerate(t.get("state_probe_us", [])):
            sel = samples[labels == i] if len(labels) == len(samples) else samples[:0]
            if len(sel) >= MIN_STATE_SAMPLES:
                row["fast" if probe < fast_below_us else "slow"] = float(np.median(sel))
        rows[rec["key"]] = row
    return rows


def rows_for(rows: dict[str, dict[str, float]], state: str) -> dict[str, float]:
    other = "slow" if state == "fast" else "fast"
    both = [r for r in rows.values() if state in r and other in r]
    out = {}
    for key, r in rows.items():
        if state in r:
            out[key] = r[state]
        elif other in r and both:
            near = sorted(both, key=lambda b: abs(np.log(b[other] / r[other])))[:15]
            out[key] = r[other] * float(np.median([b[state] / b[other] for b in near]))
        else:
            out[key] = r["pooled"]
    return out


def calibrated_errors(raw: np.ndarray, measured: np.ndarray, fit: int, rng: np.random.Generator,
                      splits: int = 300) -> np.ndarray:
    """|error| % of a relative least-squares line fitted on ``fit`` random points, on the others."""
    design, weight = np.c_[np.ones_like(raw), raw], 1 / measured
    errs = []
    for _ in range(splits):
        idx = rng.permutation(len(measured))
        c, t = idx[:fit], idx[fit:]
        coef = np.linalg.lstsq(design[c] * weight[c, None], measured[c] * weight[c], rcond=None)[0]
        errs.extend(np.abs(design[t] @ coef / measured[t] - 1) * 100)
    return np.asarray(errs)


def _pct(e: np.ndarray) -> dict[str, float]:
    return {"median_pct": float(np.median(e)), "p90_pct": float(np.quantile(e, 0.9)),
            "within_5pct": float(np.mean(e <= 5))}


def state_levels(probes_us: list[float]) -> tuple[list[float], float]:
    """The cells' states: probe levels more than ``MIN_STATE_RATIO`` apart are two states (at most
    two here, fast and slow); returns their median probe µs and the threshold between them."""
    from profilers.machine_state import MIN_STATE_RATIO

    ordered = sorted(probes_us)
    groups = [[ordered[0]]]
    for p in ordered[1:]:
        if p > groups[-1][0] * MIN_STATE_RATIO:
            groups.append([])
        groups[-1].append(p)
    if len(groups) > 2:
        sys.exit(f"error: the cells' probes form {len(groups)} levels; this script knows fast and slow only")
    centers = [statistics.median(g) for g in groups]
    return centers, (float(np.sqrt(groups[0][-1] * groups[1][0])) if len(groups) == 2 else float("inf"))


def analyse(lut_path: str, widths: list[list[int]], procs: list[dict], journal: str | None, fit: int) -> dict:
    from hwprune.lut import LatencyLUT, Predictor

    n = len(widths)
    cell_probes = [c["probe_us"] for p in procs for c in p["cells"]]
    records = journal_rows(journal) if journal else []
    if journal:   # the profile's rows carry many more probes: one split for rows and cells alike
        from profilers.machine_state import split_states

        split = split_states(cell_probes + [p for rec in records for p in rec["timing"].get("state_probe_us", [])])
        centers, threshold = split.centers_us, split.threshold_us or float("inf")
    else:
        centers, threshold = state_levels(cell_probes)
    cells = []
    for k, p in enumerate(procs):
        for c in p["cells"]:
            a = np.array([c["p50_ms"][f"a:{i}"] for i in range(n)])
            b = np.array([c["p50_ms"][f"b:{i}"] for i in range(n)])
            cells.append({"process": k, "probe_us": c["probe_us"], "state": "fast" if c["probe_us"] < threshold else "slow",
                          "dense_ms": c["p50_ms"]["dense"], "a": a, "b": b, "ab": np.sqrt(a * b)})
    floor = np.concatenate([np.abs(c["a"] / c["b"] - 1) * 100 for c in cells])

    def rel_diff(u: np.ndarray, v: np.ndarray, affine: bool) -> float:
        design = np.c_[np.ones_like(v), v] if affine else v[:, None]
        coef = np.linalg.lstsq(design / u[:, None], np.ones_like(u), rcond=None)[0]
        return float(np.median(np.abs(design @ coef / u - 1)) * 100)

    pairs = {"same state": {"scale": [], "affine": []}, "other state": {"scale": [], "affine": []},
             "other state, same process": {"scale": [], "affine": []}}
    for c1, c2 in itertools.combinations(cells, 2):
        kind = ("same state" if c1["state"] == c2["state"] else
                "other state, same process" if c1["process"] == c2["process"] else "other state")
        if kind == "same state" and c1["process"] == c2["process"]:
            continue
        for how in ("scale", "affine"):
            pairs[kind][how].append(rel_diff(c1["ab"], c2["ab"], how == "affine"))

    lut = LatencyLUT.load(lut_path)
    predictors = {"stored rows": lut.predictor(KEY)}
    if journal:
        rows = state_rows(records, threshold)
        structure = lut.model(KEY)
        for state in ("fast", "slow"):
            predictors[f"{state}-state rows"] = Predictor(structure, rows_for(rows, state), "p50")
    rng = np.random.default_rng(0)
    lut_errors = {}
    for name, pred in predictors.items():
        raw = np.array([pred.predict_raw(w) for w in widths])
        for state in ("fast", "slow"):
            mine = [calibrated_errors(raw, c["ab"], fit, rng) for c in cells if c["state"] == state]
            if mine:
                lut_errors[f"{name} / {state} cells"] = {"cells": len(mine), **_pct(np.concatenate(mine))}
    return {
        "states_probe_us": centers, "cells": [{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                        for k, v in c.items()} for c in cells],
        "timing_floor": _pct(floor),
        "relative_costs": {kind: {how: {"pairs": len(v), "median_pct": float(np.median(v)) if v else None}
                                  for how, v in d.items()} for kind, d in pairs.items()},
        "lut_error": lut_errors,
    }


def report(r: dict) -> str:
    f = r["timing_floor"]
    lines = [f"{len(r['cells'])} (process, state) cells; states at {', '.join(f'{p:.0f}' for p in r['states_probe_us'])} µs",
             f"timing floor, two sessions of one sub-network in one cell: median {f['median_pct']:.2f}%, "
             f"p90 {f['p90_pct']:.2f}%, within ±5% {f['within_5pct']:.0%}",
             "| relative costs compared between cells | pairs | median |Δ|, scale | median |Δ|, affine |",
             "|---|---:|---:|---:|"]
    for kind, d in r["relative_costs"].items():
        if d["scale"]["pairs"]:
            lines.append(f"| {kind} | {d['scale']['pairs']} | {d['scale']['median_pct']:.2f}% | {d['affine']['median_pct']:.2f}% |")
    lines += ["", "| LUT predictions, line fitted in the cell | cells | median |error| | p90 | within ±5% |",
              "|---|---:|---:|---:|---:|"]
    for name, e in r["lut_error"].items():
        lines.append(f"| {name} | {e['cells']} | {e['median_pct']:.2f}% | {e['p90_pct']:.2f}% | {e['within_5pct']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lut", required=True)
    ap.add_argument("--profile", action="store_true", help="profile resnet20 into --lut first, keeping --journal")
    ap.add_argument("--journal", help="the profile's journal (JSONL): adds the per-state-rows predictor")
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--fit", type=int, default=8, help="calibration points per cell (lut check's default)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--work", required=True, help="folder for the per-process results")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    widths_file = work / "widths.json"
    if args.child:
        measure_child(json.loads(widths_file.read_text()), args.child)
        return
    work.mkdir(parents=True, exist_ok=True)
    if args.profile:
        if not args.journal:
            sys.exit("error: --profile needs --journal")
        if Path(args.lut).exists():
            sys.exit(f"error: {args.lut} exists; --profile writes a new LUT")
        profile_with_journal(args.lut, args.journal)
    widths = sample_widths(args.lut, args.samples, args.seed)
    widths_file.write_text(json.dumps(widths))
    procs = []
    for k in range(args.processes):
        out = work / f"process_{k}.json"
        subprocess.run([sys.executable, __file__, "--lut", args.lut, "--work", str(work), "--child", str(out)], check=True)
        procs.append(json.loads(out.read_text()))
    r = analyse(args.lut, widths, procs, args.journal, args.fit)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["bench/state_costs.py", *sys.argv[1:]]),
                                               "widths": widths, **r}, indent=1))


if __name__ == "__main__":
    main()
