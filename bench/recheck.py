"""Do `hwprune prune` certificates hold later, in other processes? Re-measure finished runs' models.

For each run folder (report.json, pruned.onnx), the dense model and every run's pruned.onnx are
timed interleaved in N fresh processes (`hwprune.processes.measure_in_processes`, as
`--processes N` does), and each pruned/dense p50 ratio is set beside the ratio the run measured
when it certified (its final measurement, in the prune process).

    .venv/bin/python bench/recheck.py bench/results/runs/resnet20-rl-50pct-s*-ctx --processes 5 \
        --json bench/results/recheck_rl50_auto.json
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    from hwprune.export import export_onnx
    from hwprune.measure import statistic_ms
    from hwprune.models.spec import ModelSpec
    from hwprune.processes import measure_in_processes
    from profilers.config import load_device_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = load_device_config(args.device)
    reports = {Path(r).name: json.loads((Path(r) / "report.json").read_text()) for r in args.runs}
    plan = json.loads((Path(args.runs[0]) / "plan.json").read_text())
    c, h, w = plan["input_shape"][1:]
    # the dense model's weights do not change its timing: the zoo's architecture is enough
    spec = ModelSpec(next(iter(reports.values()))["model"], (c, h, w), 10)
    items = [("dense", export_onnx(spec.build(), torch.zeros(1, c, h, w)))]
    items += [(name, (Path(r) / "pruned.onnx").read_bytes()) for name, r in zip(reports, args.runs)]
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = measure_in_processes(items, cfg, args.processes)
    rows = []
    for name, rep in reports.items():
        then = rep["pruned"]["latency_ms"][cfg.statistic] / rep["dense"]["latency_ms"][cfg.statistic]
        now = [statistic_ms(t[name], cfg.statistic) / statistic_ms(t["dense"], cfg.statistic) for t in runs]
        budget = rep["certificate"]["budget_ms"] / rep["dense"]["latency_ms"][cfg.statistic]
        rows.append({"run": name, "certified": rep["certified"], "budget_of_dense": budget,
                     "ratio_when_certified": then, "ratio_now": now, "ratio_now_median": float(np.median(now)),
                     "change_pct": (float(np.median(now)) / then - 1) * 100})
        print(f"{name}: pruned/dense {then:.3f} when certified (budget {budget:.3f}); now in {len(now)} fresh "
              f"processes {' / '.join(f'{v:.3f}' for v in now)} ({rows[-1]['change_pct']:+.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started, "device": cfg.name, "processes": args.processes,
                                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
