"""Benchmark of accuracy-recovery strategies (issue 7): one searched architecture, every strategy, equal epochs.

Takes the widths a `hwprune prune` run chose (its report.json), then for each strategy
(`standard`, `swd`, `agp`), with and without distillation from the dense model, recovers
the pruned model from the same dense checkpoint with the same epoch budget, learning rate
and seed, and reports test accuracy, accuracy right after the cut and wall time. Results go
to bench/results/finetune_bench[_NAME].json and a Markdown table on stdout.

    .venv/bin/python bench/finetune_bench.py --run bench/results/runs/resnet20-rl-30pct-s0-issue5 --epochs 1
    .venv/bin/python bench/finetune_bench.py --run RUN --strategies standard,swd --no-kd --name stress
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run folder of `hwprune prune` (report.json gives the widths)")
    ap.add_argument("--strategies", default="standard,swd,agp")
    ap.add_argument("--no-kd", action="store_true", help="only without distillation")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--name", default="")
    args = ap.parse_args()

    import torch

    from hwprune.data import load_dataset, train_val_split
    from hwprune.finetune import recover
    from hwprune.groups import count_params
    from hwprune.profile import ModelSpec
    from hwprune.train import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    report = json.loads((Path(args.run) / "report.json").read_text())
    widths = {g: int(kept) for g, (_, kept) in report["pruned"]["channels"].items()}
    train_full = load_dataset(report["data"], "train")
    test_ds = load_dataset(report["data"], "test")
    train_ds, val_ds = train_val_split(train_full, val_fraction=0.1, seed=0)
    spec = ModelSpec(report["model"], (train_full.in_channels, *train_full.input_size), train_full.num_classes,
                     report["weights"])
    dense = spec.build()
    x = spec.example_input(1)
    dense_acc = evaluate(dense, test_ds)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for strategy in args.strategies.split(","):
        for kd in ([False] if args.no_kd else [False, True]):
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            rec = recover(strategy, dense, x, widths, train_ds=train_ds, val_ds=val_ds, epochs=args.epochs,
                          lr=args.lr, batch_size=args.batch_size, seed=args.seed, criterion="l1",
                          teacher=dense if kd else None, log=None, progress=False)
            acc = evaluate(rec.model, test_ds)
            row = {"strategy": strategy, "kd": kd, "test_accuracy": acc, "params": count_params(rec.model),
                   "val_acc_after_prune": rec.info.get("val_acc_after_prune"),
                   "val_acc_before_prune": rec.info.get("val_acc_before_prune"),
                   "epochs": rec.epochs, "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"started": started, "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "run": args.run, "widths": widths, "dense_test_accuracy": dense_acc, "settings": vars(args), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.name}" if args.name else ""
    (RESULTS / f"finetune_bench{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")

    def pct(v):
        return "—" if v is None else f"{v * 100:.2f}"

    print(f"\ndense test accuracy {dense_acc * 100:.2f}%; widths from {args.run}; {args.epochs} epoch(s), lr {args.lr}\n")
    print("| strategy | KD | test acc % | val acc right after the cut % | params | wall s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['strategy']} | {'yes' if r['kd'] else 'no'} | {pct(r['test_accuracy'])} | "
              f"{pct(r['val_acc_after_prune'])} | {r['params']:,} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
