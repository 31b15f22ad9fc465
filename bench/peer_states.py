"""Do the peer benchmark's final models meet their budget in every process and machine state?

`bench/peer.py` tunes Torch-Pruning's ``pruning_ratio`` until the cut is within the budget in the
process it was tuned in, while ``hwprune prune`` certifies in the machine state where its model
uses the most of the budget (`hwprune.states.view`). On this VM the pruned/dense ratio of a small
model moves with the machine state (BENCHMARKS, issue 19: 0.28 at a 29 µs probe, 0.40–0.44 at
61–65 µs), so "met" and "certified" can be different promises. This script asks every final model
of a peer results file the same question in N fresh processes:

- rebuilds each met or certified cell's architecture from its recorded widths (Torch-Pruning's
  per-conv widths map onto hwprune's groups by conv name; latency does not depend on weights, so
  the dense checkpoint is cut by L1 and exported, with no fine-tuning);
- times the dense model and every architecture interleaved in each of N fresh processes
  (`hwprune.processes.measure_in_processes`, as ``--processes N`` does), samples labelled by
  machine state (`profilers.machine_state`);
- per (process, state with enough samples of every model): each model's p50 over the dense p50.

Per method: the mean over seeds of the median, the worst and the best ratio, and the share of
(process, state) cells within the budget.

    .venv/bin/python bench/peer_states.py bench/results/peer30_dec02/peer_resnet20.json \
        --processes 10 --json bench/results/peer30_dec02/states.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

# bench/peer.py trains and tests on Fashion-MNIST files (its --quick subset too), so every model
# it recorded takes this input.
PEER_INPUT_SHAPE = (1, 28, 28)


def group_widths_of(row: dict, conv_names: list[str], groups: list[str]) -> dict[str, int]:
    """The row's widths as {group: channels}; Torch-Pruning rows record every conv's, in module order."""
    widths = row["widths"]
    if isinstance(widths, dict):
        return {g: int(w) for g, w in widths.items()}
    if len(widths) != len(conv_names):
        raise SystemExit(f"{row['config']}: {len(widths)} conv widths recorded, the dense model has {len(conv_names)} convs")
    per_conv = dict(zip(conv_names, widths))
    return {g: int(per_conv[g]) for g in groups}


def architectures(peer: dict, x) -> tuple[bytes, dict[str, dict]]:
    """The dense ONNX and, per distinct architecture, its ONNX and the rows that have it."""
    import torch
    from torch import nn

    from hwprune.export import export_onnx
    from hwprune.groups import find_groups, prune_to_widths
    from hwprune.models.spec import ModelSpec
    from peer import conv_widths

    recipe, dense_info = peer["recipe"], peer["dense"]
    torch.manual_seed(0)
    dense = ModelSpec(recipe["model"], tuple(x.shape[1:]), 10, dense_info["weights"]).build().eval()
    conv_names = [n for n, m in dense.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    groups = [g.name for g in find_groups(dense, x)]
    archs: dict[str, dict] = {}
    for key, row in sorted(peer["rows"].items()):
        if row.get("status") not in ("met", "certified") or not row.get("widths"):
            continue
        widths = group_widths_of(row, conv_names, groups)
        arch = json.dumps(sorted(widths.items()))
        if arch not in archs:
            model = prune_to_widths(dense, x, widths)
            if isinstance(row["widths"], list):
                got = list(conv_widths(model))
                if got != list(row["widths"]):
                    raise SystemExit(f"{key}: rebuilt conv widths {got} differ from the recorded {row['widths']}")
            archs[arch] = {"name": f"a{len(archs)}", "onnx": export_onnx(model, x), "rows": []}
        archs[arch]["rows"].append(key)
    return export_onnx(dense, x), {a["name"]: a for a in archs.values()}


def cells(runs: list[dict], names: list[str], statistic: str) -> list[dict]:
    """One cell per (process, state in which every model has enough samples): the probe µs and
    every model's statistic over the dense one's. A process with unlabelled samples is one cell."""
    from hwprune.measure import statistic_ms
    from hwprune.states import common_states
    from profilers.stats import summarize

    out = []
    for p, timings in enumerate(runs):
        states = [(probe, per) for probe, per in common_states(timings) if not math.isnan(probe)]
        if not states:
            probes = timings["dense"].get("state_probe_us") or [math.nan]
            states = [(statistics.median(probes), {k: t["samples_ms"] for k, t in timings.items()})]
        for probe, per in states:
            stat = {k: statistic_ms(summarize(s, statistic).to_dict(), statistic) for k, s in per.items()}
            out.append({"process": p, "probe_us": probe, "dense_ms": stat["dense"],
                        "x_dense": {n: stat[n] / stat["dense"] for n in names},
                        "samples": {k: len(s) for k, s in per.items()}})
    return out


def summarise(peer: dict, archs: dict[str, dict], found: list[dict]) -> list[dict]:
    """Per (method, config, budget): over its seeds, the median/worst/best ratio and the share within budget."""
    by_label: dict[tuple, list[tuple[str, str]]] = {}
    for name, a in archs.items():
        for key in a["rows"]:
            r = peer["rows"][key]
            by_label.setdefault((r["method"], r["config"], r["budget"]), []).append((key, name))
    table = []
    for (method, config, budget), members in sorted(by_label.items(), key=lambda i: (i[0][2], i[0][0], i[0][1])):
        med, worst, best, within = [], [], [], []
        for _, name in members:
            xs = [c["x_dense"][name] for c in found]
            med.append(statistics.median(xs))
            worst.append(max(xs))
            best.append(min(xs))
            within.append(sum(x <= budget for x in xs) / len(xs))
        accs = [peer["rows"][k]["test_acc"] for k, _ in members if peer["rows"][k].get("test_acc") is not None]
        table.append({"method": method, "config": config, "budget": budget, "seeds": len(members),
                      "test_acc_mean": statistics.mean(accs) if accs else None,
                      "x_dense_median": statistics.mean(med), "x_dense_worst": statistics.mean(worst),
                      "x_dense_best": statistics.mean(best), "within_share": statistics.mean(within),
                      "session_x_dense": statistics.mean(peer["rows"][k].get("session_x_dense", math.nan)
                                                         for k, _ in members)})
    return table


def markdown(table: list[dict], found: list[dict], args) -> str:
    probes = sorted(c["probe_us"] for c in found)
    lines = [f"{len(found)} (process, state) cells from {args.processes} processes; probe µs "
             f"{probes[0]:.0f}–{probes[-1]:.0f} (median {statistics.median(probes):.0f}); dense p50 "
             f"{min(c['dense_ms'] for c in found):.4f}–{max(c['dense_ms'] for c in found):.4f} ms", "",
             "| method | budget | seeds | test acc % | × dense, median | worst | best | cells within budget | peer session |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        acc = f"{100 * t['test_acc_mean']:.2f}" if t["test_acc_mean"] is not None else "-"
        lines.append(f"| {t['method']} {t['config']} | {t['budget']:.0%} | {t['seeds']} | {acc} | "
                     f"{t['x_dense_median']:.3f} | {t['x_dense_worst']:.3f} | {t['x_dense_best']:.3f} | "
                     f"{t['within_share']:.0%} | {t['session_x_dense']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    import torch

    from hwprune.processes import measure_in_processes
    from profilers.config import load_device_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peer", help="a bench/peer.py results file (peer_<model>.json)")
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--json", default=None, help="where to write every cell and the table")
    args = ap.parse_args()
    peer = json.loads(Path(args.peer).read_text())
    cfg = load_device_config(peer["recipe"]["device"])
    x = torch.zeros(cfg.batch_size, *PEER_INPUT_SHAPE)
    dense_onnx, archs = architectures(peer, x)
    print(f"{len(archs)} architectures from {sum(len(a['rows']) for a in archs.values())} cells", file=sys.stderr)
    items = [("dense", dense_onnx)] + [(n, a["onnx"]) for n, a in archs.items()]
    started = datetime.now(timezone.utc)
    runs = measure_in_processes(items, cfg, args.processes)
    found = cells(runs, list(archs), cfg.statistic)
    table = summarise(peer, archs, found)
    print(markdown(table, found, args))
    if args.json:
        from profilers.fileio import atomic_write_json

        atomic_write_json(Path(args.json), {
            "command": " ".join(["bench/peer_states.py", *sys.argv[1:]]), "peer": args.peer,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "architectures": {n: a["rows"] for n, a in archs.items()}, "cells": found, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
