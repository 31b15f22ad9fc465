"""Rebuild one agent-benchmark result from run folders: for runs split across processes or cut short.

`bench/run.py` writes its results JSON only when every cell is done. This reads the run folders
it leaves (`bench/results/runs/<model>-<agent>-<pct>pct-s<seed>-<name>/report.json`) for one or
more run names and writes the same JSON and tables under a new name. Wall time per cell is the
run's own `seconds` (`hwprune prune` start to end).

    .venv/bin/python bench/collect.py --names seeds_a,seeds_a50,seeds_a50rl --out seeds
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timezone

from run import ROOT, RESULTS, pareto_plot, summary_table, table

NAME = re.compile(r"^(?P<model>.+)-(?P<agent>[a-z]+)-(?P<pct>\d+)pct-s(?P<seed>\d+)-(?P<name>.+)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", required=True, help="comma-separated run names (bench/run.py --name)")
    ap.add_argument("--out", required=True, help="results go to bench/results/prune_bench_OUT.json")
    args = ap.parse_args()
    names = args.names.split(",")
    cells = []
    for folder in sorted((RESULTS / "runs").iterdir()):
        m = NAME.match(folder.name)
        if not m or m["name"] not in names or not (folder / "report.json").is_file():
            continue
        report = json.loads((folder / "report.json").read_text())
        cells.append({"name": folder.name, "model": m["model"], "agent": m["agent"], "fraction": int(m["pct"]) / 100,
                      "seed": int(m["seed"]), "wall_s": report["seconds"], "command": report["reproduce"],
                      "report": {k: report[k] for k in ("dense", "pruned", "certified", "certificate", "search",
                                                         "finetune", "speedup", "budget") if k in report}})
    if not cells:
        raise SystemExit(f"error: no finished run folders named {', '.join(names)} under {RESULTS / 'runs'}")
    cells.sort(key=lambda c: (c["model"], -c["fraction"], c["agent"], c["seed"]))
    out = {"collected": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "from_names": names,
           "cells": cells}
    (RESULTS / f"prune_bench_{args.out}.json").write_text(json.dumps(out, indent=2) + "\n")
    if len({c["agent"] for c in cells}) > 1:  # one agent in several settings: no plot worth keeping
        pareto_plot(cells, ROOT / "docs" / f"pareto_{args.out}.png")
    print(table(cells))
    print()
    print(summary_table(cells))


if __name__ == "__main__":
    main()
