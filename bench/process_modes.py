"""Per-process speed modes of onnxruntime on this machine: where the time goes in a fast and a slow process.

Runs the model in K fresh processes, one after another. Each process times it plainly (p50 of 300
runs, one thread, as `x86-cpu-ort` does), times twenty tiny numpy operations (a probe with no
onnxruntime in it), then times the model again with onnxruntime's profiler on and reports the
per-node kernel times summed by op type. Comparing a fast process with a slow one says
whether the difference is per node (a fixed cost each kernel pays) or per unit of work.

    .venv/bin/python bench/process_modes.py bench/results/rl50_auto_ctx/pruned_s2.onnx --processes 8 \
        --json bench/results/process_modes.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import collections, json, os, sys, tempfile, time
import numpy as np, onnxruntime as ort
path = sys.argv[1]

def session(profile):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "p")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
    return s, {i.name: x}

def p50(s, feed, n=300):
    for _ in range(100): s.run(None, feed)
    ts = []
    for _ in range(n):
        t = time.perf_counter(); s.run(None, feed); ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)

def numpy_probe_us():
    # twenty tiny numpy ops: overhead-bound work, no onnxruntime involved
    a = np.random.rand(64).astype(np.float32)
    ts = []
    for _ in range(2000):
        t = time.perf_counter()
        for _ in range(20):
            a * 1.5 + a
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)

s, feed = session(False)
plain = p50(s, feed)
probe = numpy_probe_us()
s, feed = session(True)
p50(s, feed)
events = json.load(open(s.end_profiling()))
per_node = collections.defaultdict(list)
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        per_node[(e["name"], e["args"].get("op_name", ""))].append(e["dur"])
by_op = collections.defaultdict(float)
for (name, op), durs in per_node.items():
    by_op[op] += float(np.median(durs))
print(json.dumps({"p50_ms": plain, "numpy_probe_us": probe, "nodes": len(per_node), "kernel_us_by_op": by_op}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx")
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = []
    for i in range(args.processes):
        out = subprocess.run([sys.executable, "-c", CHILD, args.onnx], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        ops = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["kernel_us_by_op"].items(), key=lambda kv: -kv[1]))
        print(f"process {i + 1}: p50 {r['p50_ms']:.4f} ms, numpy probe {r['numpy_probe_us']:.1f} us; profiled kernel time by op (us, {r['nodes']} nodes): {ops}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"onnx": args.onnx, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
