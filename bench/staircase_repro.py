"""Do the width steps of `channel_multiple: auto` reproduce from one profile to the next?

The staircase signatures of a model (every unit of every group at every staircase width, the
unit's other groups dense: what `hwprune profile` measures first) are timed in ``--processes``
fresh processes, one after another, as the profile's second staircase process is. Then the
allowed widths are derived two ways and compared between independent measurements:

- **one process** (the rule before 2026-12-04): each process's staircase alone, every pair of
  processes compared;
- **two processes** (`hwprune profile`'s default now): disjoint pairs of processes (1+2, 3+4, ...),
  a step kept only where both see it, every pair of pairs compared.

For each comparison: the share of groups whose allowed widths are identical, the mean Jaccard
similarity of the allowed sets, and the widths in one set but not the other. And what matters to a
search: whether each allowed step is a saving in a process that did not choose it — for every
pair of adjacent allowed widths, is the narrower one cheaper in each held-out process (at all, and
by at least 1%)? No hwprune numbers
are hard-coded: the rule is :func:`hwprune.widthsteps.measure_staircases` itself.

    .venv/bin/python bench/staircase_repro.py --processes 6 --json bench/results/staircase_repro.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path


def staircase_points(model: str, device: str):
    import torch

    from hwprune.candidates import build_width_graph
    from hwprune.groups import find_groups
    from hwprune.models.spec import ModelSpec
    from hwprune.widthsteps import staircase_candidates
    from profilers.config import load_device_config

    torch.manual_seed(0)
    cfg = load_device_config(device)
    spec = ModelSpec(model)
    net, x = spec.build(), spec.example_input(cfg.batch_size)
    groups = find_groups(net, x)
    wg = build_width_graph(net, x, groups)
    units = wg.units()
    points = list(staircase_candidates(wg, units, [g.step for g in groups]))
    return cfg, wg, units, groups, points


def agreement(a, b) -> dict:
    """Per-group comparison of two lists of staircases' allowed widths."""
    same, jac, extra = 0, [], 0
    for sa, sb in zip(a, b):
        x, y = set(sa.allowed), set(sb.allowed)
        same += x == y
        jac.append(len(x & y) / len(x | y))
        extra += len(x ^ y)
    return {"groups_identical": same / len(a), "mean_jaccard": statistics.mean(jac), "widths_differing": extra}


def mean_rule(points, names, dense, a, b):
    """Alternative rule (not hwprune's): the two processes' mean, with each width's noise widened to
    half their disagreement, walked as one staircase."""
    import copy

    from hwprune.widthsteps import MAX_STEPS, allowed_widths, measure_staircases

    both = measure_staircases(points, names, dense, *a, others=[b])
    out = []
    for s in both:
        m0, m1 = s.process_ms
        noise = [max(n, abs(x - y) / 2) for n, x, y in zip(s.noise_ms, m0, m1)]
        t = copy.copy(s)
        t.allowed, _ = allowed_widths(s.widths, s.ms, noise, MAX_STEPS)
        out.append(t)
    return out


def intersect_rule(points, names, dense, a, b):
    """Alternative rule (not hwprune's): the widths each process alone allows, intersected."""
    import copy

    from hwprune.widthsteps import measure_staircases

    sa, sb = measure_staircases(points, names, dense, *a), measure_staircases(points, names, dense, *b)
    out = []
    for x, y in zip(sa, sb):
        t = copy.copy(x)
        t.allowed = sorted(set(x.allowed) & set(y.allowed))
        out.append(t)
    return out


def held_out(staircases, run, points, names, dense) -> dict:
    """Of the adjacent allowed pairs of ``staircases``, the share that are savings in ``run``."""
    from hwprune.widthsteps import measure_staircases

    other = measure_staircases(points, names, dense, *run)  # only its sums: the allowed widths are ignored
    steps = saving = saving_1pct = 0
    for s, o in zip(staircases, other):
        ms = dict(zip(o.widths, o.ms))
        for narrow, wide in zip(s.allowed, s.allowed[1:]):
            steps += 1
            saving += ms[narrow] < ms[wide]
            saving_1pct += ms[narrow] < 0.99 * ms[wide]
    return {"steps": steps, "saving": saving / steps if steps else 1.0,
            "saving_1pct": saving_1pct / steps if steps else 1.0}


def summary(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {"comparisons": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    if args.processes < 4 or args.processes % 2:
        raise SystemExit("--processes must be even and at least 4 (two disjoint pairs)")

    from hwprune.profiling import _staircase_process
    from hwprune.widthsteps import measure_staircases

    cfg, wg, units, groups, points = staircase_points(args.model, args.device)
    cands = list({p.candidate.signature: p.candidate for p in points}.values())
    names, dense = [g.name for g in groups], [g.channels for g in groups]
    print(f"{args.model}: {len(groups)} groups, {len(cands)} staircase signatures, {args.processes} processes")
    from hwprune.profiling import _candidate_item

    items = [_candidate_item(wg, units, c) for c in cands]  # exported once, timed in every process
    runs, walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            t0 = time.perf_counter()
            runs.append(_staircase_process(items, cfg, Path(tmp) / f"p{i}", f"process {i + 1}", True)[:2])
            walls.append(time.perf_counter() - t0)
    single = [measure_staircases(points, names, dense, *r) for r in runs]
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
    rules = {"one_process": single,
             "two_processes": [measure_staircases(points, names, dense, *a, others=[b]) for a, b in pairs],
             "mean_of_two (alternative)": [mean_rule(points, names, dense, a, b) for a, b in pairs],
             "intersection_of_two (alternative)": [intersect_rule(points, names, dense, a, b) for a, b in pairs]}
    results = {}
    for rule, sets in rules.items():
        per = 1 if rule == "one_process" else 2
        held = [held_out(sets[k], runs[j], points, names, dense)
                for k in range(len(sets)) for j in range(len(runs)) if j // per != k]
        results[rule] = {"summary": summary([agreement(a, b) for a, b in itertools.combinations(sets, 2)]),
                         "held_out": summary(held), "held_out_each": held,
                         "allowed_total": [sum(len(s.allowed) for s in st) for st in sets],
                         "allowed": [[s.allowed for s in st] for st in sets]}
    out = {
        "model": args.model, "device": args.device, "processes": args.processes, "signatures": len(cands),
        "process_wall_s": walls, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() - sum(walls))),
        "rules": results, "groups": names,
        # each process's staircase sums per group (its own level), so other rules can be scored offline
        "process_ms": [[s.ms for s in st] for st in single],
    }
    Path(args.json).write_text(json.dumps(out, indent=1))
    for rule, r in results.items():
        s = r["summary"]
        print(f"{rule}: groups identical {s['groups_identical']:.0%}, mean Jaccard {s['mean_jaccard']:.3f}, "
              f"widths differing {s['widths_differing']:.0f} (median of {s['comparisons']} comparisons); "
              f"allowed widths {r['allowed_total']}")
        h = r["held_out"]
        print(f"  held out: {h['saving']:.1%} of allowed steps are savings in a process that did not choose them, "
              f"{h['saving_1pct']:.1%} by >= 1% (median of {h['comparisons']})")


if __name__ == "__main__":
    main()
