"""Does short-term fine-tuning pick better finalists than the zero-shot proxy at an aggressive budget?

For each seed this runs ``hwprune prune`` (default search settings, the given recovery) and keeps
every round's search history. From the round whose architecture the run kept, it takes a pool:
the search's best ``--pool`` feasible architectures by zero-shot proxy score, plus the largest
uniform one the search evaluated. Each is scored by the proxy at 0 and ``--steps`` SGD steps, then
recovered with the same recipe and seed and tested. The question is whether the trained score
would have picked a better architecture than the zero-shot one did, so it reports the rank
correlation inside the pool and the test accuracy of each rule's pick, of the uniform one and of
the pool's best (an oracle no rule can beat). Results: bench/results/finalists[_NAME].json.

    .venv/bin/python bench/finalists.py --lut bench/results/lut-resnet20.parquet --speedup 3.33333 \
        --seeds 0,1,2 --name r20_30
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", required=True)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--speedup", type=float, default=3.33333)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pool", type=int, default=8, help="best feasible architectures by zero-shot score")
    ap.add_argument("--steps", type=int, default=100, help="the trained proxy's SGD steps")
    ap.add_argument("--proxy-lr", type=float, default=0.01)
    ap.add_argument("--finetune", default="standard")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--name", default="")
    args = ap.parse_args()

    import torch
    from scipy.stats import spearmanr

    import hwprune.pruning as pruning
    from hwprune.api import prune_options
    from hwprune.data import load_dataset, train_val_split
    from hwprune.finetune import recover
    from hwprune.groups import count_params
    from hwprune.profiling import ModelSpec
    from hwprune.proxy import AccuracyProxy
    from hwprune.train import evaluate

    pools: list[list[dict]] = []
    original = pruning.top_candidates

    def recording(result, *args, **kw):  # the bench's window on each round's search
        pools.append([dict(e) for e in result.history])
        return original(result, *args, **kw)

    pruning.top_candidates = recording
    train_full = load_dataset("fashion-mnist", "train")
    test_ds = load_dataset("fashion-mnist", "test")
    train_ds, val_ds = train_val_split(train_full, val_fraction=0.1, seed=0)
    weights = pruning.default_weights(args.model, "fashion-mnist")
    spec = ModelSpec(args.model, (train_full.in_channels, *train_full.input_size), train_full.num_classes, weights)
    dense = spec.build()
    x = spec.example_input(1)
    zero = AccuracyProxy(dense, x, train_ds, val_ds)
    trained = AccuracyProxy(dense, x, train_ds, val_ds, train_steps=args.steps, train_lr=args.proxy_lr)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = []
    out_path = RESULTS / f"finalists{'_' + args.name if args.name else ''}.json"
    for seed in (int(s) for s in args.seeds.split(",")):
        pools.clear()
        t0 = time.perf_counter()
        res = prune_options(pruning.PruneOptions(
            model=args.model, device=args.device, lut=args.lut, speedup=args.speedup, seed=seed,
            finetune=args.finetune, finetune_epochs=args.epochs, lr=args.lr, show_progress=False), log=lambda m: None)
        prune_s = time.perf_counter() - t0
        final = {g: int(k) for g, (_, k) in res.report["pruned"]["channels"].items()}
        key = tuple(final.values())
        rnd = next(i for i in range(len(pools) - 1, -1, -1)
                   if any(tuple(e["widths"].values()) == key for e in pools[i]))
        history = pools[rnd]
        feasible = sorted((e for e in history if e.get("feasible")), key=lambda e: -e["score"])
        seen, pool = set(), []
        for e in feasible:
            k = tuple(e["widths"].values())
            if k not in seen and len(pool) < args.pool:
                seen.add(k)
                pool.append({"widths": dict(e["widths"]), "source": "zero-shot top"})
        for e in history:
            k = tuple(e["widths"].values())
            if e.get("phase") == "uniform" and e.get("feasible"):
                if k in seen:
                    next(p for p in pool if tuple(p["widths"].values()) == k)["uniform"] = True
                else:
                    seen.add(k)
                    pool.append({"widths": dict(e["widths"]), "source": "uniform", "uniform": True})
        if key not in seen:
            pool.append({"widths": final, "source": "run's pick"})
        for p in pool:
            w = p["widths"]
            p["kept_by_run"] = tuple(w.values()) == key
            p["zero_shot"] = zero(w)
            t1 = time.perf_counter()
            p["trained"] = trained(w)
            p["trained_s"] = time.perf_counter() - t1
            torch.manual_seed(seed)
            rec = recover(args.finetune, dense, x, w, train_ds=train_ds, val_ds=val_ds, epochs=args.epochs,
                          lr=args.lr, batch_size=128, seed=seed, keep=zero.keep_indices(w)
                          if args.finetune == "standard" else None, log=None, progress=False)
            p["test_accuracy"] = evaluate(rec.model, test_ds)
            p["params"] = count_params(rec.model)
            print(json.dumps({"seed": seed, **{k: v for k, v in p.items() if k != "widths"}}), flush=True)
        by = {name: max(pool, key=lambda p: p[name])["test_accuracy"] for name in ("zero_shot", "trained")}
        run = {"seed": seed, "prune_s": prune_s, "run_test_accuracy": res.report["pruned"]["accuracy"],
            "certified": res.certified, "round": rnd + 1, "pool": pool,
            "rho_zero_shot": spearmanr([p["zero_shot"] for p in pool], [p["test_accuracy"] for p in pool])[0],
            "rho_trained": spearmanr([p["trained"] for p in pool], [p["test_accuracy"] for p in pool])[0],
            "pick_zero_shot": by["zero_shot"], "pick_trained": by["trained"],
            "uniform": next((p["test_accuracy"] for p in pool if p.get("uniform")), None),
            "kept_by_run": next(p["test_accuracy"] for p in pool if p["kept_by_run"]),
            "oracle": max(p["test_accuracy"] for p in pool)}
        runs.append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "pool"}), flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({"started": started, "settings": vars(args), "runs": runs}, indent=2) + "\n")
    print("\n| seed | rho zero-shot | rho trained | run's pick | zero-shot pick | trained pick | uniform | oracle |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['seed']} | {r['rho_zero_shot']:.2f} | {r['rho_trained']:.2f} | " + " | ".join(
            "—" if r[k] is None else f"{r[k] * 100:.2f}"
            for k in ("kept_by_run", "pick_zero_shot", "pick_trained", "uniform", "oracle")) + " |")
    for k in ("kept_by_run", "pick_zero_shot", "pick_trained", "uniform", "oracle"):
        vals = [r[k] for r in runs if r[k] is not None]
        if vals:
            print(f"{k}: mean {statistics.mean(vals) * 100:.2f}")


if __name__ == "__main__":
    main()
