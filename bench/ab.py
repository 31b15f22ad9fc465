"""A/B of two code versions on the same `hwprune prune` cells: interleaved, one LUT, one machine.

Each arm is a source tree (a git worktree of the commit to compare) put first on PYTHONPATH
for the venv's `hwprune`; the cells alternate arms seed by seed and budget by budget, so a
change of machine state over the hour falls on both alike. Both arms read the same LUT (profiled
once by the first arm when missing), so only the code differs. Prints, per arm: certified runs,
test accuracy, budget use and rounds, the figures issue 19's agent table is judged on.

    git worktree add /tmp/ab_old <old commit>; git worktree add /tmp/ab_new <new commit>
    .venv/bin/python bench/ab.py --arm old=/tmp/ab_old --arm new=/tmp/ab_new --agents rl \\
        --fractions 0.5,0.3 --seeds 0,1,2 --lut /tmp/ab/lut.parquet --work /tmp/ab --json bench/results/ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import hwprune_script, mean_std  # bench/ is on sys.path when a script runs


def _env(tree: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}


def _commit(tree: str) -> str:
    done = subprocess.run(["git", "-C", tree, "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def run_cell(arm: str, tree: str, agent: str, fraction: float, seed: int, args) -> dict:
    out = Path(args.work) / f"{args.model}-{agent}-{round(fraction * 100)}pct-s{seed}-{arm}"
    cmd = [hwprune_script(), "prune", "--device", args.device, "--model", args.model, "--data", args.data,
           "--lut", args.lut, "--out", str(out), "--speedup", f"{1 / fraction:.6g}", "--agent", agent,
           "--max-evaluations", str(args.max_evaluations), "--finetune-epochs", str(args.finetune_epochs),
           "--finetune", args.finetune, "--lr", repr(args.lr), "--seed", str(seed), "--overwrite", "-q"]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tree))
    cell = {"arm": arm, "agent": agent, "fraction": fraction, "seed": seed, "wall_s": time.perf_counter() - t0,
            "command": "hwprune " + " ".join(cmd[1:]), "started": started}
    if proc.returncode:
        return {**cell, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    report = json.loads((out / "report.json").read_text())
    cert = report.get("certificate") or {}
    return {**cell, "certified": bool(report.get("certified")), "accuracy": report["pruned"]["accuracy"],
            "utilisation": cert.get("utilisation"), "rounds": len(cert.get("rounds") or []),
            "params": report["pruned"]["params"],
            "round_use": [r.get("utilisation") for r in cert.get("rounds") or []],
            "kept_candidate": [r.get("candidate") for r in cert.get("rounds") or []]}


def summary(cells: list[dict], arms: list[str]) -> str:
    lines = ["| arm | agent | budget | certified | test acc % | budget used, median | rounds, mean (per seed) |",
             "|---|---|---:|---:|---:|---:|---|"]
    keys = sorted({(c["agent"], c["fraction"]) for c in cells}, key=lambda k: (k[0], -k[1]))
    for agent, fraction in keys:
        for arm in arms:
            mine = [c for c in cells if c["arm"] == arm and c["agent"] == agent and c["fraction"] == fraction]
            ok = [c for c in mine if "error" not in c]
            uses = [c["utilisation"] for c in ok if c["utilisation"] is not None]
            rounds = [c["rounds"] for c in ok]
            use = f"{statistics.median(uses):.3f}" if uses else "—"
            per_seed = f"{statistics.mean(rounds):.2f} ({' / '.join(map(str, rounds))})" if rounds else "—"
            lines.append(f"| {arm} | {agent} | {fraction:.0%} | {sum(c['certified'] for c in ok)}/{len(mine)} | "
                         f"{mean_std([c['accuracy'] * 100 for c in ok], '.2f')} | {use} | {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", required=True, help="NAME=SOURCE_TREE, twice or more")
    ap.add_argument("--agents", default="rl")
    ap.add_argument("--fractions", default="0.5,0.3")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--lut", required=True, help="shared by every arm; profiled by the first arm when missing")
    ap.add_argument("--work", required=True, help="folder for the runs' outputs")
    ap.add_argument("--json", required=True)
    # the agent table's settings (docs/BENCHMARKS.md)
    ap.add_argument("--max-evaluations", type=int, default=60)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune", default="standard")
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    arms = [a.split("=", 1) for a in args.arm]
    if len(arms) < 2 or any(len(a) != 2 or not Path(a[1]).is_dir() for a in arms):
        ap.error("--arm takes NAME=SOURCE_TREE (an existing folder), at least twice")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not Path(args.lut).exists():
        subprocess.run([hwprune_script(), "profile", "--device", args.device, "--model", args.model, "--lut", args.lut,
                        "-q"], check=True, env=_env(arms[0][1]))
    cells: list[dict] = []
    result = {"started": started, "arms": {n: {"tree": t, "commit": _commit(t)} for n, t in arms},
              "settings": vars(args), "cells": cells}
    for seed in (int(s) for s in args.seeds.split(",")):
        for fraction in (float(f) for f in args.fractions.split(",")):
            for agent in args.agents.split(","):
                for name, tree in arms:   # arms alternate within every cell
                    cells.append(run_cell(name, tree, agent, fraction, seed, args))
                    c = cells[-1]
                    print(f"{c['arm']} {agent} {fraction:.0%} s{seed}: " + (c.get("error") or
                          f"certified={c['certified']} acc={c['accuracy']:.4f} use={c['utilisation']} "
                          f"rounds={c['rounds']} ({c['wall_s']:.0f} s)"), flush=True)
                    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    Path(args.json).write_text(json.dumps(result, indent=1))  # kept after every cell
    print(summary(cells, [n for n, _ in arms]))


if __name__ == "__main__":
    main()
