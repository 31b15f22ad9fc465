"""Benchmark for issue 19's LUT and timing figures: `lut check` with in-process calibration, and
`hwprune time --processes 5` twice on the same model.

Each step is the real command line in its own process, one after another (never side by side):

1. `hwprune profile` of each model into bench/results/lut-<model>[-<shape>][<name>].parquet (resumes: a LUT
   that is already complete measures nothing);
2. `hwprune lut check --samples 50 --json ...` in a fresh process;
3. the dense model exported to ONNX, then `hwprune time --processes 5 --json ...` twice.

    .venv/bin/python bench/calibration.py                      # resnet20 1x28x28 and mobilenetv2 3x224x224
    .venv/bin/python bench/calibration.py --models resnet20 --samples 30

Results: bench/results/calibration_<model>.json (the check) and bench/results/time_processes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import hwprune_script  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHAPES = {"resnet20": "1,28,28", "mobilenetv2": "3,224,224"}


def run(args: list[str]) -> float:
    """One hwprune command; returns its wall time (s). A failure stops the benchmark with its message."""
    t0 = time.perf_counter()
    proc = subprocess.run([hwprune_script(), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: hwprune {' '.join(args)}\n{proc.stderr.strip()}")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "", flush=True)
    return time.perf_counter() - t0


def check(model: str, shape: str, device: str, samples: int, name: str = "") -> dict:
    tag = (model if shape == SHAPES.get("resnet20") else f"{model}-{shape.replace(',', 'x')}") + name
    lut = RESULTS / f"lut-{tag}.parquet"
    common = ["--device", device, "--model", model, "--input-shape", shape]
    profile_s = run(["profile", *common, "--lut", str(lut), "-q"])
    out = RESULTS / f"calibration_{tag}.json"
    check_s = run(["lut", "check", *common, "--lut", str(lut), "--samples", str(samples), "--json", str(out), "-q"])
    r = json.loads(out.read_text())
    keys = ("median_abs_error_pct", "p90_abs_error_pct", "max_abs_error_pct", "within_5pct", "within_10pct",
            "kendall_tau")
    return {"model": model, "shape": shape, "lut": str(lut), "profile_s": profile_s, "check_s": check_s,
            "in_process": {k: r[k] for k in keys}, "stored": {k: r["stored_calibration"][k] for k in keys},
            "macs_line": {k: r["macs_baseline"][k] for k in keys} if r.get("macs_baseline") else None,
            "calibration": {k: v for k, v in r["in_process_calibration"].items() if k != "points"}
            if r.get("in_process_calibration") else None, "load_avg": os.getloadavg()}


def time_twice(model: str, shape: str, device: str, processes: int) -> dict:
    import torch

    from hwprune.export import export_onnx
    from hwprune.models.spec import ModelSpec

    onnx = RESULTS / f"dense-{model}.onnx"
    c, h, w = (int(v) for v in shape.split(","))
    onnx.write_bytes(export_onnx(ModelSpec(model, (c, h, w), 10).build(), torch.zeros(1, c, h, w)))
    runs = []
    for i in range(2):
        out = RESULTS / f"time_processes_{i + 1}.json"
        wall = run(["time", str(onnx), "--device", device, "--processes", str(processes), "--json", str(out)])
        a = json.loads(out.read_text())["across_processes"]
        runs.append({"wall_s": wall, "median_ms": a["median_ms"], "values_ms": a["values_ms"],
                     "spread_pct": a["spread_pct"]})
    ratio = runs[1]["median_ms"] / runs[0]["median_ms"]
    return {"model": model, "shape": shape, "processes": processes, "runs": runs,
            "second_over_first": ratio, "within_3pct": abs(ratio - 1) <= 0.03}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,mobilenetv2")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--name", default="", help="suffix of the LUT and result files (a fresh LUT under a new name)")
    ap.add_argument("--no-timing", action="store_true", help="skip the `hwprune time --processes` pair")
    args = ap.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    checks = [check(m, SHAPES.get(m, "1,28,28"), args.device, args.samples, args.name)
              for m in args.models.split(",")]
    timing = None if args.no_timing else time_twice("resnet20", SHAPES["resnet20"], args.device, args.processes)
    out = {"started": started, "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "cores": os.cpu_count(), "checks": checks, "time_processes": timing}
    (RESULTS / f"calibration_bench{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
