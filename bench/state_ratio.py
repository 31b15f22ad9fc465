"""Does a pruned/dense ratio hold across processes when it is taken per machine state? Pooled p50s against state views.

Times a dense and a pruned ONNX interleaved in N fresh processes, R times over
(`hwprune.processes.measure_in_processes`, as `--processes N` does). For every process it sets
the ratio of the pooled p50s (what hwprune certified on before machine states) beside the
ratio in each machine state the process saw (`profilers.machine_state`) and the ratio of the
governing state (`hwprune.states.view`, what the certificate now uses). The spread of each across
all processes says which one is a property of the device rather than of the moment.

    .venv/bin/python bench/state_ratio.py dense.onnx bench/results/rl50_auto_ctx/pruned_s2.onnx \
        --processes 5 --repeats 2 --speedup 2 --json bench/results/state_ratio.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path


def one_process(raw: dict, budget, cfg) -> dict:
    """The pooled ratio, every state's ratio and the governing state's, for one process."""
    from hwprune.measure import statistic_ms
    from hwprune.states import view

    v = view(raw, budget, cfg)
    pooled = statistic_ms(raw["pruned"], cfg.statistic) / statistic_ms(raw["dense"], cfg.statistic)
    governed = statistic_ms(v.timings["pruned"], cfg.statistic) / statistic_ms(v.timings["dense"], cfg.statistic)
    return {"pooled_ratio": pooled, "governing_ratio": governed, "governing_probe_us": v.probe_us,
            "probe_us": raw["dense"].get("state_probe_us"),
            "dense_ms": statistic_ms(raw["dense"], cfg.statistic),
            "states": [{"probe_us": s.probe_us, "share": s.share,
                        "ratio": s.stat_ms["pruned"] / s.stat_ms["dense"], "dense_ms": s.stat_ms["dense"]}
                       for s in v.states]}


def spread_pct(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) * 100 if values else float("nan")


def main() -> None:
    from hwprune.certify import LatencyBudget
    from hwprune.processes import measure_in_processes
    from profilers.config import load_device_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dense")
    ap.add_argument("pruned")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="runs of --processes processes, one after another")
    ap.add_argument("--speedup", type=float, default=2.0, help="the budget the governing state is chosen against")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = load_device_config(args.device)
    budget = LatencyBudget(cfg.statistic, speedup=args.speedup)
    items = [("dense", Path(args.dense).read_bytes()), ("pruned", Path(args.pruned).read_bytes())]
    rows = []
    for rep in range(args.repeats):
        for i, raw in enumerate(measure_in_processes(items, cfg, args.processes)):
            row = {"repeat": rep, "process": i, **one_process(raw, budget, cfg)}
            rows.append(row)
            states = ", ".join(f"{s['probe_us']:.0f} us ({s['share']:.0%}): {s['ratio']:.3f}" for s in row["states"])
            print(f"run {rep + 1} process {i + 1}: pooled {row['pooled_ratio']:.3f}, governing {row['governing_ratio']:.3f}"
                  f"; probe {[round(c) for c in row['probe_us'] or []]}" + (f"; states {states}" if states else ""))
    pooled = [r["pooled_ratio"] for r in rows]
    governed = [r["governing_ratio"] for r in rows]
    print(f"pooled ratio: median {statistics.median(pooled):.3f}, spread {spread_pct(pooled):.1f}%")
    print(f"governing ratio: median {statistics.median(governed):.3f}, spread {spread_pct(governed):.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "bench/state_ratio.py", "args": vars(args),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pooled": {"median": statistics.median(pooled), "spread_pct": spread_pct(pooled)},
            "governing": {"median": statistics.median(governed), "spread_pct": spread_pct(governed)},
            "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
