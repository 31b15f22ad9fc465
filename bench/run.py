"""Benchmark harness for `hwprune prune` (issue 4): agents × budgets × models, equal fine-tuning.

Each cell runs the real command line (`hwprune prune ... --speedup S --agent A`) into
bench/results/runs/<model>-<agent>-<budget>/, then collects report.json into
bench/results/prune_bench.json, prints a Markdown table for docs/BENCHMARKS.md and draws a
Pareto plot (measured p50 latency vs test accuracy) into docs/pareto.png.

    .venv/bin/python bench/run.py --quick     # resnet20, 50% budget, all baseline agents
    .venv/bin/python bench/run.py --full      # resnet20, budgets 70/50/30%, all baseline agents
    .venv/bin/python bench/run.py --agents rl,bo --fractions 0.5,0.3 --seeds 0,1,2 --name rl_bo
    .venv/bin/python bench/run.py --agents rl --fractions 0.3 --extra="--finetune swd" --name ft_swd

With several seeds, a second table gives mean ± std per model × budget × agent.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import hwprune_script, mean_std  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
AGENTS = ["uniform", "random", "greedy", "knapsack"]
ALL_AGENTS = AGENTS + ["rl", "bo"]


def ensure_lut(model: str, device: str) -> Path:
    lut = RESULTS / f"lut-{model}.parquet"
    subprocess.run([hwprune_script(), "profile", "--device", device, "--model", model, "--lut", str(lut), "-q"], check=True)
    return lut


def run_cell(model: str, agent: str, fraction: float, device: str, lut: Path, args, seed: int = 0) -> dict:
    name = f"{model}-{agent}-{int(round(fraction * 100))}pct-s{seed}" + (f"-{args.name}" if args.name else "")
    out = RESULTS / "runs" / name
    cmd = [hwprune_script(), "prune", "--device", device, "--model", model, "--data", args.data, "--lut", str(lut),
           "--out", str(out), "--speedup", f"{1 / fraction:.6g}", "--agent", agent,
           "--max-evaluations", str(args.max_evaluations), "--finetune-epochs", str(args.finetune_epochs),
           "--finetune", args.finetune, "--lr", repr(args.lr),
           "--seed", str(seed), "--overwrite", "-q", *shlex.split(args.extra)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"name": name, "model": model, "agent": agent, "fraction": fraction, "seed": seed, "error":
                (proc.stderr.strip().splitlines() or ["?"])[-1], "command": " ".join(cmd[1:])}
    report = json.loads((out / "report.json").read_text())
    return {"name": name, "model": model, "agent": agent, "fraction": fraction, "seed": seed,
            "wall_s": time.perf_counter() - t0,
            "command": "hwprune " + " ".join(cmd[1:]), "report": {k: report[k] for k in
            ("dense", "pruned", "certified", "certificate", "search", "finetune", "speedup", "budget")
            if k in report}}


def table(cells: list[dict]) -> str:
    lines = ["| model | budget (of dense p50) | agent | seed | certified | test acc % | p50 ms | p90 ms | predicted ms "
             "| budget ms | params | MACs | evals | search s |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        if "error" in c:
            lines.append(f"| {c['model']} | {c['fraction']:.0%} | {c['agent']} | {c.get('seed', 0)} | "
                         f"error: {c['error']} |" + " |" * 9)
            continue
        r = c["report"]
        p, cert = r["pruned"], r["certificate"]
        lines.append(f"| {c['model']} | {c['fraction']:.0%} | {c['agent']} | {c.get('seed', 0)} | "
                     f"{'yes' if r['certified'] else 'NO'} | "
                     f"{p['accuracy'] * 100:.2f} | {p['latency_ms']['p50']:.4f} | {p['latency_ms']['p90']:.4f} | "
                     f"{p['predicted_latency_ms']:.4f} | {cert['budget_ms']:.4f} | {p['params']:,} | {p['macs']:,} | "
                     f"{r['search']['evaluations']} | {r['search']['seconds']:.0f} |")
    dense = next((c["report"]["dense"] for c in cells if "report" in c), None)
    if dense:
        lines.append(f"| dense | 100% | — | | — | {dense['accuracy'] * 100:.2f} | {dense['latency_ms']['p50']:.4f} | "
                     f"{dense['latency_ms']['p90']:.4f} | | | {dense['params']:,} | {dense['macs']:,} | | |")
    return "\n".join(lines)


def summary_table(cells: list[dict]) -> str:
    """Mean ± std over seeds per model × budget × agent (accuracy, p50, evaluations, search s)."""
    keys = []
    for c in cells:
        k = (c["model"], c["fraction"], c["agent"])
        if k not in keys:
            keys.append(k)

    lines = ["| model | budget | agent | seeds | certified | test acc % | p50 ms | budget used, median | rounds, mean "
             "| evals | search s | wall s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, fraction, agent in keys:
        ok = [c for c in cells if (c["model"], c["fraction"], c["agent"]) == (model, fraction, agent) and "report" in c]
        n_all = sum((c["model"], c["fraction"], c["agent"]) == (model, fraction, agent) for c in cells)
        rep = [c["report"] for c in ok]
        lines.append(f"| {model} | {fraction:.0%} | {agent} | {n_all} | {sum(r['certified'] for r in rep)}/{n_all} | "
                     f"{mean_std([r['pruned']['accuracy'] * 100 for r in rep], '.2f')} | "
                     f"{mean_std([r['pruned']['latency_ms']['p50'] for r in rep], '.4f')} | "
                     f"{_median([utilisation(r) for r in rep]):.3f} | "
                     f"{sum(len(r['certificate']['rounds']) for r in rep) / max(len(rep), 1):.2f} | "
                     f"{mean_std([r['search']['evaluations'] for r in rep], '.0f')} | "
                     f"{mean_std([r['search']['seconds'] for r in rep], '.0f')} | {mean_std([c['wall_s'] for c in ok], '.0f')} |")
    return "\n".join(lines)


def utilisation(report: dict) -> float:
    """The final model's measured upper bound / budget (reports before issue 19 lack the field)."""
    cert = report["certificate"]
    return cert.get("utilisation") or cert["upper_bound_ms"] / cert["budget_ms"]


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")


def pareto_plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for agent in ALL_AGENTS:
        pts = [(c["report"]["pruned"]["latency_ms"]["p50"], c["report"]["pruned"]["accuracy"] * 100)
               for c in cells if c.get("agent") == agent and "report" in c]
        if pts:
            ax.scatter(*zip(*pts), label=agent)
    dense = next((c["report"]["dense"] for c in cells if "report" in c), None)
    if dense:
        ax.scatter([dense["latency_ms"]["p50"]], [dense["accuracy"] * 100], marker="*", s=150, c="k", label="dense")
    ax.set_xlabel("measured p50 latency (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{', '.join(sorted({c['model'] for c in cells}))}: test accuracy vs measured latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    ap.add_argument("--models", default="resnet20")
    ap.add_argument("--agents", default=",".join(AGENTS))
    ap.add_argument("--fractions", default=None, help="budgets as fractions of dense p50 (default 0.7,0.5,0.3)")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--max-evaluations", type=int, default=60)
    # Pinned, not `hwprune prune`'s defaults: every agent table in docs/BENCHMARKS.md compares
    # agents under this one recovery (1 epoch, standard, lr 0.01); --extra overrides it.
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune", default="standard")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; each cell runs once per seed")
    ap.add_argument("--name", default="", help="results go to bench/results/prune_bench[_NAME].json, docs/pareto[_NAME].png")
    ap.add_argument("--extra", default="", help="more `hwprune prune` flags for every cell, e.g. '--finetune swd --kd'")
    args = ap.parse_args()
    fractions = [float(f) for f in (args.fractions or ("0.5" if args.quick else "0.7,0.5,0.3")).split(",")]
    cells = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for model in args.models.split(","):
        lut = ensure_lut(model, args.device)
        for fraction in fractions:
            for agent in args.agents.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    cell = run_cell(model, agent, fraction, args.device, lut, args, seed)
                    cells.append(cell)
                    print(json.dumps({k: v for k, v in cell.items() if k != "report"}), flush=True)
    out = {"started": started, "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "settings": vars(args), "fractions": fractions, "cores": os.cpu_count(), "cells": cells}
    suffix = f"_{args.name}" if args.name else ""
    (RESULTS / f"prune_bench{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
    (ROOT / "docs").mkdir(exist_ok=True)
    pareto_plot(cells, ROOT / "docs" / f"pareto{suffix}.png")
    print()
    print(table(cells))
    print()
    print(summary_table(cells))


if __name__ == "__main__":
    main()
