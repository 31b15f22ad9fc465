"""Benchmark for a parameter budget (issue 5): `hwprune prune --max-params P` over several seeds.

The latency harness (bench/run.py) budgets by a fraction of the dense p50 and needs a LUT;
this one budgets by parameter count, which needs none, and asks the question a parameter
budget answers: how close to the dense accuracy does the pruned model get? Each seed runs
the real command line into bench/results/runs/<model>-<agent>-p<P>-s<seed>[-NAME]/ and a
seed whose report.json is already there is reused (so an interrupted benchmark resumes;
--overwrite runs it again). Results go to bench/results/params_bench_<NAME>.json and a
Markdown table (per seed, then mean ± std) to standard output.

    .venv/bin/python bench/params_budget.py --model vgg16_bn --max-params 15% --seeds 0,1,2 \\
        --finetune-epochs 3 --name vgg16_p15
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import hwprune_script, mean_std  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def run_seed(args, seed: int) -> dict:
    tag = args.max_params.rstrip("%")
    name = f"{args.model}-{args.agent}-p{tag}-s{seed}" + (f"-{args.name}" if args.name else "")
    out = RESULTS / "runs" / name
    cmd = [hwprune_script(), "prune", "--device", args.device, "--model", args.model, "--data", args.data,
           "--out", str(out), "--max-params", args.max_params, "--agent", args.agent,
           "--finetune-epochs", str(args.finetune_epochs), "--seed", str(seed), "--overwrite", "-q",
           *shlex.split(args.extra)]
    command = "hwprune " + " ".join(shlex.quote(c) for c in cmd[1:])
    report_path = out / "report.json"
    wall_s = None
    if args.overwrite or not report_path.is_file():
        print(f"seed {seed}: {command}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall_s = time.perf_counter() - t0
        if proc.returncode:
            return {"name": name, "seed": seed, "command": command,
                    "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    else:
        print(f"seed {seed}: reusing {report_path}", flush=True)
    r = json.loads(report_path.read_text())
    return {"name": name, "seed": seed, "command": command,
            "wall_s": wall_s if wall_s is not None else r.get("seconds"),
            "dense_acc": r["dense"]["accuracy"], "pruned_acc": r["pruned"]["accuracy"],
            "dense_params": r["dense"]["params"], "pruned_params": r["pruned"]["params"],
            "max_params": r["budget"]["max_params"],
            "macs_ratio": r["pruned"]["macs"] / r["dense"]["macs"],
            "measured_speedup": r["speedup"]["measured"],
            "search_s": r["search"]["seconds"], "evaluations": r["search"]["evaluations"],
            "finetune_s": r["finetune"]["seconds"], "finetune_epochs": r["finetune"]["epochs"]}


def tables(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    lines = ["| seed | dense acc % | pruned acc % | drop pts | params kept | MACs kept | measured speed-up "
             "| evals | search s | fine-tune s | wall s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ok:
        lines.append(f"| {r['seed']} | {r['dense_acc'] * 100:.2f} | {r['pruned_acc'] * 100:.2f} | "
                     f"{(r['dense_acc'] - r['pruned_acc']) * 100:+.2f} | "
                     f"{r['pruned_params'] / r['dense_params'] * 100:.2f}% | {r['macs_ratio'] * 100:.1f}% | "
                     f"{r['measured_speedup']:.2f}x | {r['evaluations']} | {r['search_s']:.0f} | "
                     f"{r['finetune_s']:.0f} | {r['wall_s']:.0f} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seed']} | failed: {r['error']} |||||||||| ")
    if ok:
        gap = [(r["dense_acc"] - r["pruned_acc"]) * 100 for r in ok]
        lines += ["", f"Over {len(ok)} seed(s): pruned test accuracy "
                  f"{mean_std([r['pruned_acc'] * 100 for r in ok], '.2f')}% against dense "
                  f"{ok[0]['dense_acc'] * 100:.2f}%; drop {mean_std(gap, '.2f')} points (worst {max(gap):.2f}); "
                  f"parameters kept {mean_std([r['pruned_params'] / r['dense_params'] * 100 for r in ok], '.2f')}%; "
                  f"wall {mean_std([r['wall_s'] for r in ok], '.0f')} s."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vgg16_bn")
    ap.add_argument("--max-params", default="15%")
    ap.add_argument("--agent", default="rl")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--name", default="")
    ap.add_argument("--extra", default="", help="more `hwprune prune` flags for every seed, e.g. '--kd'")
    ap.add_argument("--overwrite", action="store_true", help="run seeds again even when their report exists")
    args = ap.parse_args()
    rows = [run_seed(args, int(s)) for s in args.seeds.split(",")]
    out = RESULTS / f"params_bench{'_' + args.name if args.name else ''}.json"
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "settings": vars(args), "rows": rows}, indent=1))
    print(tables(rows))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
