"""Control for the pruning benchmarks: the dense model given the pruned models' extra epochs.

A pruned model is fine-tuned for --finetune-epochs after the dense checkpoint; when the
dense model was trained briefly, part of the pruned model's recovery may be training that
the dense model would gain too. This script fine-tunes the dense checkpoint itself with
the same call `hwprune prune` makes (same train/val split, epochs, peak lr, batch, seed;
no pruning) and reports its test accuracy beside the checkpoint's. Results go to
bench/results/dense_control_<model>_e<E>_s<seed>.json; an existing result is reused.

    .venv/bin/python bench/dense_control.py --model vgg16_bn --finetune-epochs 3 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import mean_std  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def result_path(args, seed: int) -> Path:
    return RESULTS / f"dense_control_{args.model}_e{args.finetune_epochs}_s{seed}.json"


def load_setup(args) -> dict:
    """What every seed shares: the splits `hwprune prune` uses, the checkpoint, its accuracy."""
    from hwprune.data import load_dataset, train_val_split
    from hwprune.pretrain import SPLIT_SEED, VAL_FRACTION
    from hwprune.profiling import ModelSpec
    from hwprune.pruning import default_weights
    from hwprune.train import evaluate

    weights = default_weights(args.model, args.data)
    if weights is None:
        raise SystemExit(f"error: no dense checkpoint for {args.model} on {args.data} (make pretrain ...)")
    train_full = load_dataset(args.data, "train")
    test_ds = load_dataset(args.data, "test")
    train_ds, val_ds = train_val_split(train_full, VAL_FRACTION, SPLIT_SEED)  # the rows prune holds out
    spec = ModelSpec(args.model, (train_full.in_channels, *train_full.input_size), train_full.num_classes, weights)
    return {"spec": spec, "weights": weights, "train_ds": train_ds, "val_ds": val_ds, "test_ds": test_ds,
            "dense_acc": evaluate(spec.build(), test_ds)}


def run_seed(args, seed: int, setup: dict | None) -> dict:
    import torch

    from hwprune.pruning import PruneOptions
    from hwprune.train import evaluate, train

    out = result_path(args, seed)
    if out.is_file() and not args.overwrite:
        print(f"seed {seed}: reusing {out}", flush=True)
        return json.loads(out.read_text())
    defaults = PruneOptions(model=args.model, device="", lut="", out="")
    torch.manual_seed(seed)
    model = setup["spec"].build()
    dense_acc = setup["dense_acc"]
    print(f"seed {seed}: dense checkpoint {dense_acc * 100:.2f}%; fine-tuning {args.finetune_epochs} epochs "
          f"at lr {defaults.lr:g}", flush=True)
    t0 = time.perf_counter()
    r = train(model, setup["train_ds"], epochs=args.finetune_epochs, lr=defaults.lr, batch_size=defaults.batch_size,
              seed=seed, val_ds=setup["val_ds"], log=print, progress=not args.quiet)
    row = {"model": args.model, "data": args.data, "seed": seed, "finetune_epochs": args.finetune_epochs,
           "lr": defaults.lr, "batch_size": defaults.batch_size, "weights": setup["weights"],
           "dense_acc": dense_acc, "finetuned_acc": evaluate(model, setup["test_ds"]),
           "best_val_acc": r.best_val_acc, "seconds": time.perf_counter() - t0,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.write_text(json.dumps(row, indent=1))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vgg16_bn")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--overwrite", action="store_true", help="run seeds again even when their result exists")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = args.overwrite or any(not result_path(args, s).is_file() for s in seeds)
    setup = load_setup(args) if todo else None  # data and the dense accuracy, once for all seeds
    rows = [run_seed(args, s, setup) for s in seeds]
    print("| seed | dense checkpoint % | + fine-tuned % | gain pts | best val % | s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['dense_acc'] * 100:.2f} | {r['finetuned_acc'] * 100:.2f} | "
              f"{(r['finetuned_acc'] - r['dense_acc']) * 100:+.2f} | {r['best_val_acc'] * 100:.2f} | "
              f"{r['seconds']:.0f} |")
    if len(rows) > 1:
        print(f"\nfine-tuned dense: {mean_std([r['finetuned_acc'] * 100 for r in rows], '.2f')}%")


if __name__ == "__main__":
    main()
