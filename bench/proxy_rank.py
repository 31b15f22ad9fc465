"""How well the accuracy proxy ranks architectures by what fine-tuning recovers (proxy fidelity).

Takes finished `hwprune prune` run folders (same model, data and recovery), scores each run's
architecture with the accuracy proxy at several `--proxy-train-steps` settings, and reports the
Spearman rank correlation between proxy score and the run's test accuracy after fine-tuning.
Results go to bench/results/proxy_rank[_NAME].json and a Markdown table on stdout.

    .venv/bin/python bench/proxy_rank.py --runs 'bench/results/runs/resnet20-*-30pct-s*-seeds' --steps 0,30,100
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="glob of run folders (quote it)")
    ap.add_argument("--steps", default="0,30,100", help="comma-separated proxy train steps to compare")
    ap.add_argument("--lr", type=float, default=0.02, help="the proxy's short-training learning rate")
    ap.add_argument("--name", default="")
    args = ap.parse_args()

    import torch
    from scipy.stats import spearmanr

    from hwprune.data import load_dataset, train_val_split
    from hwprune.profiling import ModelSpec
    from hwprune.proxy import AccuracyProxy

    torch.set_num_threads(1)
    runs = []
    for folder in sorted(glob.glob(args.runs)):
        f = Path(folder) / "report.json"
        if f.is_file():
            r = json.loads(f.read_text())
            runs.append({"run": Path(folder).name, "widths": {g: k for g, (_, k) in r["pruned"]["channels"].items()},
                         "test_accuracy": r["pruned"]["accuracy"], "params": r["pruned"]["params"], "report": r})
    if len(runs) < 3:
        raise SystemExit(f"error: need at least 3 finished runs matching {args.runs}, found {len(runs)}")
    first = runs[0]["report"]
    if any((r["report"]["model"], r["report"]["data"]) != (first["model"], first["data"]) for r in runs):
        raise SystemExit("error: the runs differ in model or data")
    # one entry per architecture: the same widths reached by two runs are one point
    seen, archs = set(), []
    for r in runs:
        key = tuple(r["widths"].values())
        if key not in seen:
            seen.add(key)
            archs.append(r)
    full = load_dataset(first["data"], "train")
    train_ds, val_ds = train_val_split(full, val_fraction=0.1, seed=0)
    spec = ModelSpec(first["model"], (full.in_channels, *full.input_size), full.num_classes, first["weights"])
    dense, x = spec.build(), spec.example_input(1)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        proxy = AccuracyProxy(dense, x, train_ds, val_ds, threads=1, train_steps=steps, train_lr=args.lr)
        t0 = time.perf_counter()
        scores = [proxy(a["widths"]) for a in archs]
        rho = spearmanr(scores, [a["test_accuracy"] for a in archs]).statistic
        rows.append({"steps": steps, "spearman": float(rho), "seconds_per_eval": (time.perf_counter() - t0) / len(archs),
                     "scores": scores})
        print(json.dumps(rows[-1]), flush=True)
    out = {"started": started, "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "settings": vars(args), "architectures": [{k: a[k] for k in ("run", "widths", "test_accuracy", "params")}
                                                     for a in archs], "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"proxy_rank{'_' + args.name if args.name else ''}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{len(archs)} architectures from {args.runs}\n")
    print("| arch (run) | params | test acc % | " + " | ".join(f"proxy @ {r['steps']} steps" for r in rows) + " |")
    print("|---|---:|---:|" + "---:|" * len(rows))
    for i, a in enumerate(archs):
        print(f"| {a['run']} | {a['params']:,} | {a['test_accuracy'] * 100:.2f} | "
              + " | ".join(f"{r['scores'][i]:.3f}" for r in rows) + " |")
    print("| **Spearman ρ vs test acc** | | | " + " | ".join(f"**{r['spearman']:.2f}**" for r in rows) + " |")
    print("| s per evaluation | | | " + " | ".join(f"{r['seconds_per_eval']:.1f}" for r in rows) + " |")


if __name__ == "__main__":
    main()
