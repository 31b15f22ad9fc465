"""Benchmark: ``hwprune regress --baseline`` on an unchanged model, per machine state against pooled.

On a machine that switches speed states, one stored baseline is one process's states, and a
later process may run in others: a small model's speed relative to the drift reference moves
with the state, so the pooled, reference-normalised test reads an unchanged model as a
regression (BENCHMARKS, issue 19: +32.8% for the pruned resnet20 of seed 2). Since the check
compares per state (``hwprune.regress.states``) this script measures what that changes:

1. ``hwprune regress --write-baseline`` of the model, in one process (its samples' states kept).
2. ``--runs`` separate processes of ``hwprune regress --baseline`` on the same, unchanged model,
   each with ``--json``. Every "regressed" is a false alarm. With ``--slower C``, as many on a
   variant made slower by a side branch (:func:`slower_variant`), alternating with the unchanged
   ones: every "regressed" there is a detection.
3. For each run, the pooled test of the old code recomputed from the same samples
   (``hwprune.regress.compare_samples`` on the stored and the measured samples, normalised by the
   references), beside the per-state verdict the command gave.

Results go to ``--out`` (default ``bench/results/regress_states.json``); a Markdown table is printed.

Example:
    .venv/bin/python bench/regress_states.py bench/results/rl50_auto_ctx/pruned_s2.onnx --runs 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import hwprune_script  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _regress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([hwprune_script(), "regress", *args], capture_output=True, text=True)


def _pooled(baseline: dict, result: dict, tolerance: float) -> dict:
    """The pooled, reference-normalised test on the run's samples: what the check said before states."""
    from hwprune.baseline import BASELINE_REFERENCE_KEY
    from hwprune.regress import compare_samples

    now = result["samples_ms"]
    c = compare_samples(baseline["timing"]["samples_ms"], now["candidate"], "p50", tolerance,
                        baseline_reference_ms=baseline["reference"]["timing"]["samples_ms"],
                        candidate_reference_ms=now[BASELINE_REFERENCE_KEY])
    return {"verdict": c.verdict, "ratio": c.ratio, "raw_ratio": c.raw_ratio, "ci_low": c.ci_low,
            "ci_high": c.ci_high}


def slower_variant(onnx_path: str, channels: int, out: Path) -> Path:
    """The model with a side branch that costs real time and changes no output: the input through a
    3x3 conv of ``channels`` filters, averaged, times zero, added to the output (onnxruntime cannot
    fold a product with a computed tensor away)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(onnx_path)
    g = m.graph
    x, y = g.input[0], g.output[0]
    c_in = x.type.tensor_type.shape.dim[1].dim_value
    w = np.random.default_rng(0).standard_normal((channels, c_in, 3, 3)).astype(np.float32)
    g.initializer.extend([numpy_helper.from_array(w, "slow_w"), numpy_helper.from_array(np.zeros((), np.float32), "slow_zero")])
    old_out = y.name + "_model"
    for node in g.node:
        node.output[:] = [old_out if o == y.name else o for o in node.output]
    g.node.extend([
        helper.make_node("Conv", [x.name, "slow_w"], ["slow_c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["slow_c"], ["slow_m"], keepdims=0),
        helper.make_node("Mul", ["slow_m", "slow_zero"], ["slow_z"]),
        helper.make_node("Add", [old_out, "slow_z"], [y.name]),
    ])
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out


def _states(timing: dict) -> list[dict]:
    """A timing's states: probe µs and share of its samples."""
    labels, centers = timing.get("sample_states") or [], timing.get("state_probe_us") or []
    n = len(labels) or 1
    return [{"probe_us": c, "share": sum(1 for v in labels if v == i) / n} for i, c in enumerate(centers)]


def _check(a: argparse.Namespace, model: str, base_path: Path, baseline: dict, out: Path) -> dict:
    """One ``hwprune regress --baseline`` process on ``model``: its per-state verdict and the pooled one."""
    r = _regress("-d", a.device, "-m", model, "--baseline", str(base_path), "--json", str(out),
                 "--tolerance", f"{a.tolerance * 100:g}%", "--max-seconds", f"{a.max_seconds:g}")
    if not out.is_file():
        sys.exit(f"error: hwprune regress failed: {r.stderr.strip() or r.stdout.strip()}")
    res = json.loads(out.read_text())
    c = res["comparisons"][0]
    return {"exit_code": r.returncode, "verdict": res["verdict"], "ratio": c["ratio"], "raw_ratio": c["raw_ratio"],
            "reference_ratio": c["reference_ratio"], "state_probe_us": c.get("state_probe_us"),
            "machine_states": c.get("machine_states"), "n_candidate": c["n_candidate"],
            "seconds": res["measurement"]["seconds"], "pooled": _pooled(baseline, res, a.tolerance)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", help="the model (unchanged between baseline and checks)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--slower", type=int, default=0, metavar="C",
                    help="also check a slower variant: a side branch of a 3x3 conv with C filters (64: ~+17%%)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "regress_states.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="regress-states-"))
    base_path = work / "baseline.json"
    started = dt.datetime.now(dt.timezone.utc)
    w = _regress("-d", a.device, "-m", a.onnx, "--write-baseline", str(base_path))
    if w.returncode != 0:
        sys.exit(f"error: --write-baseline failed: {w.stderr.strip() or w.stdout.strip()}")
    baseline = json.loads(base_path.read_text())
    models = {"unchanged": a.onnx}
    if a.slower:
        models["slower"] = str(slower_variant(a.onnx, a.slower, work / "slower.onnx"))
    runs = []
    for i in range(a.runs):
        for case, model in models.items():  # alternating, so that a change of machine state hits both alike
            runs.append({"case": case, **_check(a, model, base_path, baseline, work / f"{case}{i}.json")})
            print(f"run {i + 1}/{a.runs} {case}: {runs[-1]['verdict']} (pooled {runs[-1]['pooled']['verdict']})",
                  file=sys.stderr)
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": started.isoformat(),
              "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
              "device": a.device, "model": a.onnx, "tolerance": a.tolerance,
              "slower_channels": a.slower, "baseline_states": _states(baseline["timing"]), "runs": runs}
    a.out.write_text(json.dumps(record, indent=1))
    _print(record)


def _print(rec: dict) -> None:
    print(f"`{rec['command']}` — {rec['started'][:16]} UTC, load {rec['load_average'][0]:.2f}; baseline states: "
          + ", ".join(f"{s['probe_us']:.0f} µs ({s['share']:.0%})" for s in rec["baseline_states"]))
    print("\n| run | model | states now (probe µs) | compared in | per-state verdict | ratio (normalised) | pooled verdict "
          "| pooled ratio | raw ratio |")
    print("|---:|---|---|---|---|---:|---|---:|---:|")
    for i, r in enumerate(rec["runs"], 1):
        st = r["machine_states"] or {}
        now = "/".join(f"{p:.0f}" for p in st.get("candidate_probe_us", [])) or "one, same as the baseline's"
        comp = ", ".join(f"{s['probe_us']:.0f} ({s['verdict']})" for s in st.get("compared", [])) \
            if st else "pooled"
        print(f"| {i} | {r['case']} | {now} | {comp or 'none'} | {r['verdict']} | {r['ratio']:.3f} | {r['pooled']['verdict']} | "
              f"{r['pooled']['ratio']:.3f} | {r['pooled']['raw_ratio']:.3f} |")
    for case in dict.fromkeys(r["case"] for r in rec["runs"]):
        for name, get in (("per state", lambda r: r["verdict"]), ("pooled", lambda r: r["pooled"]["verdict"])):
            counts: dict[str, int] = {}
            for r in rec["runs"]:
                if r["case"] == case:
                    counts[get(r)] = counts.get(get(r), 0) + 1
            print(f"\n{case}, {name}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))

if __name__ == "__main__":
    main()
