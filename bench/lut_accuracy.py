"""Benchmark for issue 3: LUT prediction error and profiling cost on x86-cpu-ort.

For each model: ``hwprune profile`` into a fresh LUT (wall time, signatures, overhead ratio),
then ``hwprune lut check --samples N`` (median/p90/max absolute error, Kendall tau, predictor
calls per second). Raw figures go to bench/results/lut_accuracy.json and a Markdown table is
printed for docs/BENCHMARKS.md.

    .venv/bin/python bench/lut_accuracy.py --samples 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODELS = {
    "resnet20": ["--model", "resnet20", "--input-shape", "1,28,28"],
    "mobilenetv2": ["--model", "mobilenetv2", "--input-shape", "3,224,224"],
}


def _hwprune() -> str:
    return str(Path(sys.executable).with_name("hwprune"))


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return platform.processor() or "unknown"


def run(models: list[str], samples: int, device: str, keep_lut: bool) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"device": device, "samples": samples, "cpu": _cpu_model(), "cores": os.cpu_count(),
           "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "models": {}}
    for name in models:
        lut = RESULTS / f"lut-{name}.parquet"
        if lut.exists() and not keep_lut:
            lut.unlink()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        prof = subprocess.run([_hwprune(), "profile", "--device", device, *MODELS[name], "--lut", str(lut), "-q"],
                              capture_output=True, text=True)
        if prof.returncode:
            raise SystemExit(f"profile {name} failed: {prof.stderr.strip().splitlines()[-1]}")
        profile_wall_s = time.perf_counter() - t0
        check_json = RESULTS / f"lut-check-{name}.json"
        chk = subprocess.run([_hwprune(), "lut", "check", "--device", device, *MODELS[name], "--lut", str(lut),
                              "--samples", str(samples), "--json", str(check_json), "-q"],
                             capture_output=True, text=True)
        if chk.returncode:
            raise SystemExit(f"lut check {name} failed: {chk.stderr.strip().splitlines()[-1]}")
        check = json.loads(check_json.read_text())
        from hwprune.lut import LatencyLUT

        meta = LatencyLUT.load(lut).model(check["model"])
        run_info = meta["profile_runs"][-1]
        out["models"][name] = {
            "model_key": check["model"], "profile_wall_s": profile_wall_s, "profile": run_info,
            "calibration": {k: v for k, v in meta["calibration"].items() if k != "points"},
            "check": {k: check[k] for k in ("samples", "median_abs_error_pct", "p90_abs_error_pct",
                                            "max_abs_error_pct", "kendall_tau", "predictor_calls_per_s")},
            "load_avg_1min": [load0, os.getloadavg()[0]],
            "profile_stdout": prof.stdout.strip().splitlines(),
        }
        print(json.dumps(out["models"][name], indent=1), flush=True)
    (RESULTS / "lut_accuracy.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def table(res: dict) -> str:
    lines = ["| model | signatures | profile wall s | timed s | overhead ratio | median abs err % | p90 % | max % "
             "| Kendall tau | predictor calls/s | load 1-min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in res["models"].items():
        p, c = m["profile"], m["check"]
        lines.append(f"| {m['model_key']} | {p['signatures_total']} | {p['wall_s']:.0f} | {p['timed_s']:.0f} | "
                     f"{p['overhead_ratio']:.2f} | {c['median_abs_error_pct']:.2f} | {c['p90_abs_error_pct']:.2f} | "
                     f"{c['max_abs_error_pct']:.2f} | {c['kendall_tau']:.3f} | {c['predictor_calls_per_s']:.0f} | "
                     f"{m['load_avg_1min'][0]:.2f}-{m['load_avg_1min'][1]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,mobilenetv2")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--keep-lut", action="store_true", help="extend existing LUTs instead of starting fresh")
    args = ap.parse_args()
    res = run(args.models.split(","), args.samples, args.device, args.keep_lut)
    print(f"\nmachine: {res['cpu']}, {res['cores']} cores; {res['date_utc']}\n")
    print(table(res))


if __name__ == "__main__":
    main()
