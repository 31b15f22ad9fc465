"""Benchmark: does timing one ONNX model in two separate processes give the same p50 (±3%)?

Builds a small, realistic CNN (four 3x3 convolutions, 32-64 channels at 28x28 and 14x14,
global pooling and a classifier; about 18 M multiply-adds, ~1 ms on one x86 thread), then
runs the real command line ``hwprune time MODEL --device DEVICE --json OUT`` in K pairs of
separate processes, one after the other, and compares the two p50 values of each pair.
Load average is recorded around every run because other work on the machine is the usual
reason for a miss. As a control, after each pair the same model is timed twice back to
back inside this one process (one onnxruntime session): if the in-process pairs differ as
much as the cross-process ones, the differences come from the machine (other load), not
from anything that changes between processes. Results go to
``bench/results/timing_repro.json``; a Markdown table is printed.

Example:
    .venv/bin/python bench/timing_repro.py                      # K=5 pairs on x86-cpu-ort
    .venv/bin/python bench/timing_repro.py --taskset 1          # pin every run to CPU 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from profilers.fileio import atomic_write_json

from _common import hwprune_script  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "timing_repro.json"


def build_cnn(path: Path, seed: int = 0) -> dict:
    """A 4-conv CNN for 1x28x28 inputs with He-initialised weights; returns its shape summary."""
    rng = np.random.default_rng(seed)
    # (in, out, stride): 28x28 -> 28x28 -> 14x14 -> 14x14
    convs = [(1, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1)]
    nodes, inits, prev, hw, macs = [], [], "input", 28, 0
    for i, (cin, cout, stride) in enumerate(convs):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.w"), numpy_helper.from_array(b, f"conv{i}.b")]
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        hw //= stride
        macs += hw * hw * cout * cin * 9
        prev = f"relu{i}"
    fc_w = (rng.standard_normal((10, 64)) * 0.1).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1)]
    macs += 64 * 10
    graph = helper.make_graph(nodes, "timing_repro_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench/timing_repro")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"convs": [list(c) for c in convs], "input_shape": [1, 1, 28, 28], "macs": int(macs),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _cpu_list(spec: str) -> set[int]:
    """taskset's CPU list syntax, ``"0,2-3"`` -> ``{0, 2, 3}``."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _python_shown() -> str:
    """The interpreter as a user would type it: ``.venv/bin/python`` inside the checkout."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(ROOT))
    except ValueError:
        return exe.name


def derived_device(args: argparse.Namespace, tmp: Path) -> str:
    """``args.device``, or a copy of it with the timing-window overrides, written to ``tmp``."""
    if args.min_repeats is None and args.max_seconds is None:
        return args.device
    import yaml

    from profilers.config import load_device_config

    cfg = load_device_config(args.device)
    changes = {k: v for k, v in (("min_repeats", args.min_repeats), ("max_seconds", args.max_seconds)) if v}
    changes["max_repeats"] = max(cfg.max_repeats, changes.get("min_repeats", 0))
    path = tmp / f"{cfg.name}-window.yaml"
    path.write_text(yaml.safe_dump(cfg.replace(**changes).to_dict(), sort_keys=False))
    return str(path)


def time_in_process(cmd: list[str], json_path: Path) -> dict:
    """Run one ``hwprune time`` process; return its timing with the load average around it."""
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall_s = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: {done.stderr.strip()}")
    t = json.loads(json_path.read_text())["timing"]
    return {"p50_ms": t["p50_ms"], "ci_low_ms": t["ci_low_ms"], "ci_high_ms": t["ci_high_ms"], "n": t["n"],
            "cv": t["cv"], "stable": t["stable"], "remeasured": t["remeasured"], "wall_s": round(wall_s, 2),
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)}


def time_in_session(runner) -> dict:
    """One measurement on an already open session (the in-process control)."""
    load_before = os.getloadavg()[0]
    s = runner.measure()
    return {"p50_ms": s.p50_ms, "n": s.n, "cv": s.cv, "load_1min_before": round(load_before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2)}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def markdown_table(pairs: list[dict]) -> str:
    with_control = all("control" in p for p in pairs)
    head = "| pair | p50 A (ms) | p50 B (ms) | B/A | \\|B/A-1\\| | cv A / cv B | load 1-min |"
    rule = "|---:|---:|---:|---:|---:|---:|---:|"
    if with_control:
        head += " control: same process, \\|B/A-1\\| |"
        rule += "---:|"
    rows = [head, rule]
    for p in pairs:
        a, b = p["a"], p["b"]
        row = (f"| {p['pair']} | {a['p50_ms']:.4f} | {b['p50_ms']:.4f} | {p['ratio']:.4f} | "
               f"{abs(p['ratio'] - 1) * 100:.2f}% | {a['cv']:.3f} / {b['cv']:.3f} | "
               f"{a['load_1min_before']:.2f}-{b['load_1min_after']:.2f} |")
        if with_control:
            row += f" {abs(p['control']['ratio'] - 1) * 100:.2f}% |"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5, help="pairs of processes (K)")
    ap.add_argument("--device", default="x86-cpu-ort", help="device config name or YAML path")
    ap.add_argument("--tolerance", type=float, default=0.03, help="target max |p50_B/p50_A - 1|")
    ap.add_argument("--taskset", default=None, help="pin every run to these CPUs (taskset -c LIST)")
    ap.add_argument("--min-repeats", type=int, default=None,
                    help="override the device's min_repeats (a longer window per process)")
    ap.add_argument("--max-seconds", type=float, default=None, help="override the device's max_seconds")
    ap.add_argument("--no-control", action="store_true", help="skip the in-process control pairs")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="timing_repro.") as tmp:
        model = Path(tmp) / "cnn.onnx"
        info = build_cnn(model)
        json_path = Path(tmp) / "out.json"
        device = derived_device(args, Path(tmp))
        cmd = [hwprune_script(), "time", str(model), "--device", device, "--json", str(json_path)]
        if args.taskset:
            if not shutil.which("taskset"):
                sys.exit("error: --taskset needs the taskset tool (util-linux)")
            cmd = ["taskset", "-c", args.taskset] + cmd
        control = None
        if not args.no_control:
            from profilers.config import load_device_config
            from profilers.runners import make_runner

            control = make_runner(str(model), load_device_config(device)).activate()
            if args.taskset:
                os.sched_setaffinity(0, _cpu_list(args.taskset))
        started = dt.datetime.now(dt.timezone.utc)
        load_start = os.getloadavg()
        pairs = []
        for k in range(1, args.pairs + 1):
            a = time_in_process(cmd, json_path)
            b = time_in_process(cmd, json_path)
            ratio = b["p50_ms"] / a["p50_ms"]
            pair = {"pair": k, "a": a, "b": b, "ratio": ratio}
            line = f"pair {k}: p50 {a['p50_ms']:.4f} / {b['p50_ms']:.4f} ms, ratio {ratio:.4f}"
            if control is not None:
                ca, cb = time_in_session(control), time_in_session(control)
                pair["control"] = {"a": ca, "b": cb, "ratio": cb["p50_ms"] / ca["p50_ms"]}
                line += f"; control {pair['control']['ratio']:.4f}"
            pairs.append(pair)
            print(line, file=sys.stderr)
        load_end = os.getloadavg()
        if control is not None:
            control.deactivate()

    max_dev = max(abs(p["ratio"] - 1) for p in pairs)
    control_dev = max((abs(p["control"]["ratio"] - 1) for p in pairs if "control" in p), default=None)
    all_p50 = [x["p50_ms"] for p in pairs for x in (p["a"], p["b"])]
    spread_all = max(all_p50) / min(all_p50) - 1
    shown_cmd = " ".join((["taskset", "-c", args.taskset] if args.taskset else [])
                         + ["hwprune", "time", "cnn.onnx", "--device", args.device, "--json", "out.json"])
    result = {
        "benchmark": "timing_repro",
        "claim": f"two separate processes timing the same ONNX model give p50 within ±{args.tolerance:.0%}",
        "command": f"{_python_shown()} bench/timing_repro.py --pairs {args.pairs} --device {args.device}"
                   + (f" --taskset {args.taskset}" if args.taskset else "")
                   + (f" --min-repeats {args.min_repeats}" if args.min_repeats else "")
                   + (f" --max-seconds {args.max_seconds}" if args.max_seconds else "")
                   + (f" --out {args.out}" if args.out != DEFAULT_OUT else ""),
        "overrides": {"min_repeats": args.min_repeats, "max_seconds": args.max_seconds},
        "per_process_command": shown_cmd,
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "hostname": platform.node()},
        "device": args.device, "taskset": args.taskset, "model": info,
        "load_avg_start": [round(v, 2) for v in load_start], "load_avg_end": [round(v, 2) for v in load_end],
        "pairs": pairs,
        "max_abs_ratio_minus_1": max_dev,
        "control_max_abs_ratio_minus_1": control_dev,
        "spread_all_runs": spread_all,
        "tolerance": args.tolerance,
        "passed": bool(max_dev <= args.tolerance),
    }
    atomic_write_json(args.out, result)

    window = ", ".join(f"{k}={v}" for k, v in result["overrides"].items() if v)
    print(f"Timing reproducibility: `{result['command']}`")
    print(f"{args.pairs} pairs of `{shown_cmd}`" + (f" with {window}" if window else ""))
    print(f"machine: {result['machine']['cpu_model']}, {os.cpu_count()} logical cores; date {result['date_utc']}; "
          f"load avg start {result['load_avg_start']} end {result['load_avg_end']}")
    print(f"model: 4x conv3x3 CNN, {info['macs'] / 1e6:.1f} M MACs, input 1x1x28x28\n")
    print(markdown_table(pairs))
    print(f"\nmax |B/A - 1| = {max_dev:.2%} (target ±{args.tolerance:.0%}: {'PASS' if result['passed'] else 'FAIL'}); "
          f"spread over all {len(all_p50)} runs = {spread_all:.2%}")
    if control_dev is not None:
        print(f"control (two measurements in one process, same session): max |B/A - 1| = {control_dev:.2%}")
    print(f"results: {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
