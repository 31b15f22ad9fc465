"""Benchmark of accuracy-recovery strategies (issue 7): one searched architecture, every strategy, equal epochs.

Takes the widths a `hwprune prune` run chose (its report.json), then for each strategy
(`standard`, `swd`, `agp`), with and without distillation from the dense model, recovers
the pruned model from the same dense checkpoint with the same epoch budget, learning rate
and seed, and reports test accuracy, accuracy right after the cut and wall time. Results go
to bench/results/finetune_bench[_NAME].json and a Markdown table on stdout.

    .venv/bin/python bench/finetune_bench.py --run bench/results/runs/resnet20-rl-30pct-s0-issue5 --epochs 1
    .venv/bin/python bench/finetune_bench.py --run RUN --strategies standard,swd --no-kd --name stress
    .venv/bin/python bench/finetune_bench.py --uniform-params 0.025 --strategies standard,swd --no-kd --name stress
    .venv/bin/python bench/finetune_bench.py --widths '{"conv1": 4, ...}' --strategies standard --no-kd \
        --importances l1,l2,bn-scale,taylor --seeds 0,1,2 --name importance50

``--uniform-params F`` replaces ``--run`` with the largest uniform architecture (one keep ratio,
channels not snapped) of at most F x the dense model's parameters: the stress test of SWD's
paper, which no device's channel multiple would allow (resnet20 at 2.5% is below the
smallest x86-cpu-ort architecture). ``--widths JSON`` gives the widths directly.

``--importances`` compares channel-importance criteria on the one architecture: each keeps the
channels `hwprune prune` would keep with it (the accuracy proxy's ranking, ``taylor`` from the
proxy's BatchNorm batches), so nothing but the choice of channels differs between them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder of `hwprune prune` (report.json gives the widths)")
    src.add_argument("--uniform-params", type=float,
                     help="instead of --run: uniform widths with at most this fraction of the dense parameters")
    src.add_argument("--widths", help='instead of --run: the widths as JSON, {"group": channels, ...}')
    ap.add_argument("--model", default="resnet20", help="with --uniform-params")
    ap.add_argument("--data", default="fashion-mnist", help="with --uniform-params")
    ap.add_argument("--strategies", default="standard,swd,agp")
    ap.add_argument("--no-kd", action="store_true", help="only without distillation")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: --seed)")
    ap.add_argument("--importances", default="l1", help="comma-separated channel-importance criteria")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--name", default="")
    args = ap.parse_args()

    import torch

    from hwprune.data import load_dataset, train_val_split
    from hwprune.finetune import recover
    from hwprune.groups import count_params
    from hwprune.profiling import ModelSpec
    from hwprune.proxy import AccuracyProxy
    from hwprune.train import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        report = json.loads((Path(args.run) / "report.json").read_text())
        widths = {g: int(kept) for g, (_, kept) in report["pruned"]["channels"].items()}
    else:  # --widths or --uniform-params: the zoo model's committed checkpoint
        from hwprune.pruning import default_weights

        report = {"model": args.model, "data": args.data, "weights": default_weights(args.model, args.data)}
        if args.widths:
            widths = {g: int(w) for g, w in json.loads(args.widths).items()}
    train_full = load_dataset(report["data"], "train")
    test_ds = load_dataset(report["data"], "test")
    train_ds, val_ds = train_val_split(train_full, val_fraction=0.1, seed=0)
    spec = ModelSpec(report["model"], (train_full.in_channels, *train_full.input_size), train_full.num_classes,
                     report["weights"])
    dense = spec.build()
    x = spec.example_input(1)
    if args.uniform_params:
        widths = uniform_widths_for_params(dense, x, args.uniform_params)
    dense_acc = evaluate(dense, test_ds)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    seeds = [int(v) for v in (args.seeds or str(args.seed)).split(",")]
    strategies = args.strategies.split(",")
    for criterion in args.importances.split(","):
        # the channels hwprune prune keeps with this criterion (the proxy's ranking of the dense
        # model); only the standard strategy takes a fixed plan
        keep = (AccuracyProxy(dense, x, train_ds, val_ds, criterion=criterion).keep_indices(widths)
                if "standard" in strategies else None)
        for strategy, kd, seed in itertools.product(strategies, [False] if args.no_kd else [False, True], seeds):
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            rec = recover(strategy, dense, x, widths, train_ds=train_ds, val_ds=val_ds, epochs=args.epochs,
                          lr=args.lr, batch_size=args.batch_size, seed=seed, criterion=criterion,
                          keep=keep if strategy == "standard" else None,
                          teacher=dense if kd else None, log=None, progress=False)
            row = {"importance": criterion, "strategy": strategy, "kd": kd, "seed": seed,
                   "test_accuracy": evaluate(rec.model, test_ds), "params": count_params(rec.model),
                   "val_acc_after_prune": rec.info.get("val_acc_after_prune"),
                   "val_acc_before_prune": rec.info.get("val_acc_before_prune"),
                   "epochs": rec.epochs, "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"started": started, "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "run": args.run or ("given widths" if args.widths else f"uniform, {args.uniform_params:g} of dense params"), "widths": widths, "dense_test_accuracy": dense_acc, "settings": vars(args), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.name}" if args.name else ""
    (RESULTS / f"finetune_bench{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")

    def pct(v):
        return "—" if v is None else f"{v * 100:.2f}"

    print(f"\ndense test accuracy {dense_acc * 100:.2f}% ({count_params(dense):,} params); widths from "
          f"{out['run']}; {args.epochs} epoch(s), lr {args.lr}\n")
    print("| importance | strategy | KD | seed | test acc % | val acc right after the cut % | params | wall s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['importance']} | {r['strategy']} | {'yes' if r['kd'] else 'no'} | {r['seed']} | "
              f"{pct(r['test_accuracy'])} | {pct(r['val_acc_after_prune'])} | {r['params']:,} | {r['seconds']:.0f} |")


def uniform_widths_for_params(dense, x, fraction: float) -> dict[str, int]:
    """The largest uniform keep ratio (channel multiple 1) within ``fraction`` of dense params."""
    from hwprune.agents import Problem, SearchSpace
    from hwprune.agents.baselines import largest_uniform_ratio
    from hwprune.budgets import ModelCost, ParamsBudget
    from hwprune.candidates import build_width_graph
    from hwprune.groups import count_params, find_groups

    groups = find_groups(dense, x)
    names = [g.name for g in groups]
    budget = ParamsBudget(ModelCost(build_width_graph(dense, x, groups), names), fraction * count_params(dense))
    space = SearchSpace(names, [g.channels for g in groups], 1)
    _, widths, _ = largest_uniform_ratio(Problem(space, lambda w: 0.0, [budget]))
    return dict(widths)


if __name__ == "__main__":
    main()
