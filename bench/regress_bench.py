"""Benchmark: does ``hwprune regress`` stay quiet on an unchanged model and catch a ~10% slowdown?

The done-when experiment of issue 8, on a device config (default ``x86-cpu-ort``):

1. Build a small CNN (four 3x3 convolutions 1->32->32->64 (stride 2)->64 at 28x28 / 14x14,
   global pooling, classifier) and a few *wider* variants of it. Time each variant interleaved with
   the base model in this process and pick the one whose slowdown is closest to
   ``--slowdown`` (default 10%); print every measured slowdown with its 95% CI.
2. Write one stored baseline of the base model: ``hwprune regress --write-baseline`` (it
   stores the drift reference's samples, timed interleaved with the model, beside the model's).
3. For each mode, ``baseline`` (``--baseline baseline.json``) and ``against`` (``--against
   base.onnx``, interleaved A/B in one process), run ``hwprune regress`` ``--runs`` times, each
   a separate process, on the unchanged model and on the slower one (alternating, so a change
   of machine state hits both alike), and count the verdicts.

A good result: the unchanged model is never ``regressed`` (false alarms) and the slower one is
``regressed`` every time (detections). A machine whose speed differs from process to process
(docs/BENCHMARKS.md) moves the *raw* ratio of the stored-baseline mode: one stored baseline is
one process's speed level, and the bootstrap interval, built from samples inside one process,
cannot know about another. The verdict tests the ratio normalised by the drift reference
(timed beside the model then and now); every run records both, and the raw ratio's own
verdict (what ``--baseline`` said before the reference), so one session shows how much the
normalisation buys. ``--against`` has nothing to normalise: its ratio is raw and in-process.

Results (settings, the variant measurement, every run) go to
``bench/results/regress_bench.json``; a Markdown table is printed.

``--reference-study K`` instead asks which drift reference tracks a process's speed level:
K separate processes each time the base model, the ~10% slower one (widths 32/64/80) and the
candidate references interleaved; across processes, a good reference keeps model / reference
steady while the model's own time moves. Candidates: the baseline reference
(``hwprune.regress.reference_graph``) and the LUT's 32->32 conv at 14x14
(``profilers/assets/reference.onnx``). Results: ``bench/results/regress_reference_study.json``.

Example:
    .venv/bin/python bench/regress_bench.py                  # 20 runs per mode and model
    .venv/bin/python bench/regress_bench.py --runs 3 --modes against
    .venv/bin/python bench/regress_bench.py --reference-study 16
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
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from _common import hwprune_script  # bench/ is on sys.path when a script runs
from profilers.fileio import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "regress_bench.json"
BASE_WIDTHS = (32, 64, 64)
# Wider variants tried for the "truly slower" model (NCHWc blocks of 8 on AVX2: multiples of 8).
# Widening the last conv's output (c) adds ~5% of the MACs per 8 channels.
VARIANT_WIDTHS = ((32, 64, 72), (32, 64, 80), (32, 64, 88), (32, 72, 64), (32, 72, 72))


def build_cnn(path: Path, widths: tuple[int, int, int] = BASE_WIDTHS, seed: int = 0) -> dict:
    """Conv(1->a) Conv(a->a) Conv(a->b, stride 2) Conv(b->c), 3x3 + ReLU each, pool, Gemm to 10."""
    a, b, c = widths
    rng = np.random.default_rng(seed)
    convs = [(1, a, 1), (a, a, 1), (a, b, 2), (b, c, 1)]
    nodes, inits, prev, hw, macs = [], [], "input", 28, 0
    for i, (cin, cout, stride) in enumerate(convs):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"c{i}.w"), numpy_helper.from_array(np.zeros(cout, np.float32), f"c{i}.b")]
        nodes += [helper.make_node("Conv", [prev, f"c{i}.w", f"c{i}.b"], [f"c{i}"], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        hw //= stride
        macs += hw * hw * cout * cin * 9
        prev = f"r{i}"
    inits += [numpy_helper.from_array((rng.standard_normal((10, c)) * 0.1).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, f"cnn_{a}_{b}_{c}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench/regress_bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"widths": list(widths), "macs": int(macs + c * 10)}


def pick_slower_variant(tmp: Path, device: str, target: float, seconds: float) -> dict:
    """Time the base model interleaved with every variant in one process; the variant nearest
    ``1 + target`` wins. Returns the base and chosen models with every measured ratio."""
    from hwprune.regress import LocalSampler, compare_samples
    from profilers.config import load_device_config

    cfg = load_device_config(device)
    base = tmp / "base.onnx"
    info = {"base": build_cnn(base)}
    items = [("base", base.read_bytes())]
    variants = {}
    for w in VARIANT_WIDTHS:
        key = "x".join(map(str, w))
        p = tmp / f"wide_{key}.onnx"
        variants[key] = {"path": p, **build_cnn(p, w)}
        items.append((key, p.read_bytes()))
    sampler = LocalSampler(items, cfg)
    try:
        sampler.take(cfg.min_repeats, seconds, first=True)
        sampler.take(2000, seconds)  # a long interleaved window: the slowdowns are the truth we test against
    finally:
        sampler.close()
    rows = []
    for key, v in variants.items():
        c = compare_samples(sampler.samples["base"], sampler.samples[key], cfg.statistic, 0.05, baseline_fixed=False)
        rows.append({"variant": key, "widths": v["widths"], "macs": v["macs"], "ratio": c.ratio,
                     "ci_low": c.ci_low, "ci_high": c.ci_high, "n": c.n_candidate})
    best = min(rows, key=lambda r: abs(r["ratio"] - (1 + target)))
    info["variants"] = rows
    info["chosen"] = best
    info["slow_path"] = variants[best["variant"]]["path"]
    info["base_path"] = base
    info["statistic"] = cfg.statistic
    return info


STUDY_OUT = ROOT / "bench" / "results" / "regress_reference_study.json"
STUDY_CHILD = """
import json, sys
from pathlib import Path
from hwprune.regress import LocalSampler
from profilers.config import load_device_config
folder, device, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
names = json.loads(sys.argv[4])
cfg = load_device_config(device)
s = LocalSampler([(n, (folder / f"{n}.onnx").read_bytes()) for n in names], cfg)
try:
    s.take(cfg.min_repeats, seconds, first=True)
    s.take(10**6, seconds)
finally:
    s.close()
print(json.dumps({n: s.samples[n] for n in names}))
"""


def reference_study(processes: int, device: str, seconds: float) -> dict:
    """Time models and candidate references interleaved in ``processes`` separate processes;
    per model, the spread across processes of its p50 raw and over each reference's p50."""
    from hwprune.regress import reference_graph
    from profilers.runners import REFERENCE_ONNX

    models, refs = ("base", "slower"), ("dwblock", "lut_conv")
    with tempfile.TemporaryDirectory(prefix="regress_study.") as tmp_s:
        tmp = Path(tmp_s)
        build_cnn(tmp / "base.onnx")
        build_cnn(tmp / "slower.onnx", (32, 64, 80))
        (tmp / "dwblock.onnx").write_bytes(reference_graph()[1])
        (tmp / "lut_conv.onnx").write_bytes(REFERENCE_ONNX.read_bytes())
        rows = []
        for i in range(processes):
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, "-c", STUDY_CHILD, str(tmp), device, str(seconds),
                                   json.dumps(models + refs)], capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                sys.exit(f"error: study process {i + 1} failed: {done.stderr.strip()[-500:]}")
            samples = json.loads(done.stdout)
            p50 = {k: float(np.median(v)) for k, v in samples.items()}
            rows.append({"process": i + 1, "p50_ms": p50, "n": {k: len(v) for k, v in samples.items()},
                         "load_1min": round(load, 2)})
            print(f"process {i + 1}/{processes} (load {load:.1f}): " + " ".join(f"{k} {v:.4f} ms" for k, v in p50.items())
                  + " | " + " ".join(f"{m}/{r} {p50[m] / p50[r]:.3f}" for m in models for r in refs), file=sys.stderr)

    def spread(values: np.ndarray) -> dict:
        x = values / np.median(values)
        return {"min": float(x.min()), "max": float(x.max()), "range": float(x.max() - x.min()), "sd": float(x.std())}

    p = {k: np.array([r["p50_ms"][k] for r in rows]) for k in models + refs}
    summary = {m: {"raw": spread(p[m]), **{f"over_{r}": spread(p[m] / p[r]) for r in refs}} for m in models}
    summary.update({r: {"raw": spread(p[r])} for r in refs})
    return {"processes": processes, "seconds_per_window": seconds, "models": list(models), "references": list(refs),
            "rows": rows, "spread_across_processes": summary}


def study_table(study: dict) -> str:
    rows = ["| model | measure | min | max | range | sd |", "|---|---|---:|---:|---:|---:|"]
    for name, by in study["spread_across_processes"].items():
        for measure, sp in by.items():
            rows.append(f"| {name} | {measure.replace('_', ' ')} | {sp['min']:.3f} | {sp['max']:.3f} | "
                        f"{sp['range'] * 100:.1f}% | {sp['sd'] * 100:.1f}% |")
    return "\n".join(rows)


def run_regress(cmd: list[str], json_path: Path) -> dict:
    """One ``hwprune regress`` process; its verdict, figures and the load around it."""
    if json_path.exists():
        json_path.unlink()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall_s = time.perf_counter() - t0
    if done.returncode == 2 or not json_path.exists():
        sys.exit(f"error: {' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()}")
    r = json.loads(json_path.read_text())
    c = r["comparisons"][0]
    from hwprune.regress import NORMALISED, decide

    normalised = c.get("ratio_measure") == NORMALISED
    raw_verdict = decide(c["raw_ci_low"], c["raw_ci_high"], r["tolerance"]) if c.get("raw_ci_low") else r["verdict"]
    return {"verdict": r["verdict"], "exit_code": done.returncode, "ratio_measure": c.get("ratio_measure", "raw"),
            "ratio": c["ratio"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
            "raw_ratio": c.get("raw_ratio", c["ratio"]), "raw_ci_low": c.get("raw_ci_low", c["ci_low"]),
            "raw_ci_high": c.get("raw_ci_high", c["ci_high"]), "raw_verdict": raw_verdict,
            "normalised_ratio": c["ratio"] if normalised else None,
            "reference_ratio": c.get("reference_ratio"), "warnings": r.get("warnings", []),
            "n_baseline": c["n_baseline"], "n_candidate": c["n_candidate"], "reason": c["reason"],
            "samples_to_decide": c.get("samples_to_decide"),
            "mannwhitney_p_slower": c["mannwhitney_p_slower"], "rounds": r["measurement"]["rounds"],
            "measure_s": round(r["measurement"]["seconds"], 2), "wall_s": round(wall_s, 2),
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)}


VERDICTS = ("pass", "improved", "regressed", "inconclusive")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summarize(runs: list[dict]) -> dict:
    """Verdict counts (the tested ratio's and the raw ratio's) and the spread of both ratios."""
    counts = {v: sum(r["verdict"] == v for r in runs) for v in VERDICTS}
    raw_counts = {v: sum(r["raw_verdict"] == v for r in runs) for v in VERDICTS}
    out = {"runs": len(runs), **counts, "raw_verdicts": raw_counts,
           "median_ratio": float(np.median([r["ratio"] for r in runs])),
           "min_ratio": float(min(r["ratio"] for r in runs)), "max_ratio": float(max(r["ratio"] for r in runs)),
           "median_raw_ratio": float(np.median([r["raw_ratio"] for r in runs])),
           "min_raw_ratio": float(min(r["raw_ratio"] for r in runs)),
           "max_raw_ratio": float(max(r["raw_ratio"] for r in runs)),
           "median_wall_s": float(np.median([r["wall_s"] for r in runs]))}
    refs = [r["reference_ratio"] for r in runs if r.get("reference_ratio") is not None]
    if refs:
        out.update(min_reference_ratio=float(min(refs)), max_reference_ratio=float(max(refs)))
    return out


def markdown_table(result: dict) -> str:
    """The summary table, then every run's raw and tested ratio."""
    rows = ["| mode | model | true change (interleaved) | runs | pass | improved | regressed | inconclusive | "
            "tested ratio median (min-max) | raw ratio median (min-max) | raw-ratio verdicts p/i/r/inc | "
            "wall s (median) |", "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
    chosen = result["variant_measurement"]["chosen"]
    for mode, by_model in result["summary"].items():
        for model, s in by_model.items():
            true = "+0.0% (same file)" if model == "unchanged" else \
                f"{(chosen['ratio'] - 1) * 100:+.1f}% [{(chosen['ci_low'] - 1) * 100:+.1f}, {(chosen['ci_high'] - 1) * 100:+.1f}]"
            rv = s["raw_verdicts"]
            rows.append(f"| {mode} | {model} | {true} | {s['runs']} | {s['pass']} | {s['improved']} | "
                        f"**{s['regressed']}** | {s['inconclusive']} | {s['median_ratio']:.3f} "
                        f"({s['min_ratio']:.3f}-{s['max_ratio']:.3f}) | {s['median_raw_ratio']:.3f} "
                        f"({s['min_raw_ratio']:.3f}-{s['max_raw_ratio']:.3f}) | {rv['pass']}/{rv['improved']}/"
                        f"{rv['regressed']}/{rv['inconclusive']} | {s['median_wall_s']:.1f} |")
    rows += ["", "| run | mode | model | ratio measure | raw ratio [CI] | reference now/then | tested ratio [CI] | "
             "verdict | raw verdict |", "|---:|---|---|---|---|---:|---|---|---|"]
    for mode, by_model in result["runs_detail"].items():
        for model, runs in by_model.items():
            for i, r in enumerate(runs, 1):
                ref = f"{r['reference_ratio']:.3f}" if r.get("reference_ratio") is not None else "—"
                rows.append(f"| {i} | {mode} | {model} | {r['ratio_measure']} | {_f(r['raw_ratio'])} "
                            f"[{_f(r['raw_ci_low'])}, {_f(r['raw_ci_high'])}] | {ref} | {_f(r['ratio'])} "
                            f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}] | {r['verdict']} | {r['raw_verdict']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="hwprune regress processes per mode and model")
    ap.add_argument("--device", default="x86-cpu-ort", help="device config name or YAML path")
    ap.add_argument("--tolerance", default="5%", help="hwprune regress --tolerance")
    ap.add_argument("--slowdown", type=float, default=0.10, help="target slowdown of the wider model")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="hwprune regress --max-seconds")
    ap.add_argument("--modes", default="baseline,against", help="comma-separated: baseline, against")
    ap.add_argument("--variant-seconds", type=float, default=10.0, help="seconds per window picking the variant")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)}, or "
                         f"{STUDY_OUT.relative_to(ROOT)} with --reference-study)")
    ap.add_argument("--reference-study", type=int, default=0, metavar="K",
                    help="only compare drift references over K separate processes (no regress runs)")
    ap.add_argument("--study-seconds", type=float, default=3.0, help="seconds per window in a study process")
    args = ap.parse_args(argv)
    if args.reference_study:
        if args.reference_study < 2:
            sys.exit("error: --reference-study needs at least 2 processes")
        started = dt.datetime.now(dt.timezone.utc)
        load_start = os.getloadavg()
        study = reference_study(args.reference_study, args.device, args.study_seconds)
        study.update(benchmark="regress_reference_study", device=args.device, date_utc=started.isoformat(timespec="seconds"),
                     command=f"{Path(sys.executable).name} bench/regress_bench.py --reference-study "
                             f"{args.reference_study} --device {args.device} --study-seconds {args.study_seconds:g}",
                     load_avg_start=[round(x, 2) for x in load_start],
                     load_avg_end=[round(x, 2) for x in os.getloadavg()])
        out = args.out or STUDY_OUT
        atomic_write_json(out, study)
        print(f"Drift reference study: `{study['command']}` ({study['date_utc']}, load {study['load_avg_start']} -> "
              f"{study['load_avg_end']}); p50 across processes, relative to the median process:\n")
        print(study_table(study))
        print(f"\nresults: {out}")
        return 0
    args.out = args.out or DEFAULT_OUT
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("baseline", "against") for m in modes):
        sys.exit(f"error: --modes must list baseline and/or against, got '{args.modes}'")
    if args.runs < 1:
        sys.exit("error: --runs must be at least 1")

    script = hwprune_script()
    started = dt.datetime.now(dt.timezone.utc)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="regress_bench.") as tmp_s:
        tmp = Path(tmp_s)
        print(f"picking the ~{args.slowdown:.0%} slower variant (interleaved, {args.variant_seconds:g} s windows) ...",
              file=sys.stderr)
        v = pick_slower_variant(tmp, args.device, args.slowdown, args.variant_seconds)
        for row in v["variants"]:
            print(f"  widths {row['widths']}: {(row['ratio'] - 1) * 100:+.1f}% "
                  f"(95% CI {(row['ci_low'] - 1) * 100:+.1f}% .. {(row['ci_high'] - 1) * 100:+.1f}%, n={row['n']})",
                  file=sys.stderr)
        c = v["chosen"]
        print(f"slower model: widths {c['widths']}, {(c['ratio'] - 1) * 100:+.1f}% {v['statistic']} vs the base "
              f"(95% CI {(c['ci_low'] - 1) * 100:+.1f}% .. {(c['ci_high'] - 1) * 100:+.1f}%)", file=sys.stderr)
        base, slow = v["base_path"], v["slow_path"]
        baseline = tmp / "baseline.json"
        done = subprocess.run([script, "regress", "--device", args.device, "--model", str(base), "--write-baseline",
                               str(baseline)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            sys.exit(f"error: writing the baseline failed: {done.stderr.strip()}")
        out_json = tmp / "r.json"
        common = ["--device", args.device, "--tolerance", args.tolerance, "--max-seconds", f"{args.max_seconds:g}",
                  "--json", str(out_json)]
        runs: dict[str, dict[str, list[dict]]] = {m: {"unchanged": [], "slower": []} for m in modes}
        for i in range(args.runs):
            for mode in modes:
                ref = ["--baseline", str(baseline)] if mode == "baseline" else ["--against", str(base)]
                for name, model in (("unchanged", base), ("slower", slow)):
                    r = run_regress([script, "regress", "--model", str(model), *ref, *common], out_json)
                    runs[mode][name].append(r)
                    drift = f" ref now/then {r['reference_ratio']:.3f}" if r.get("reference_ratio") else ""
                    print(f"run {i + 1}/{args.runs} {mode:8s} {name:9s}: {r['verdict']:12s} {r['ratio_measure']} "
                          f"ratio {_f(r['ratio'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}] raw {_f(r['raw_ratio'])} "
                          f"[{_f(r['raw_ci_low'])}, {_f(r['raw_ci_high'])}] ({r['raw_verdict']}){drift} "
                          f"n={r['n_candidate']}/{r['n_baseline']} rounds={r['rounds']} {r['wall_s']:.1f} s",
                          file=sys.stderr)
    load_end = os.getloadavg()

    from profilers.environment import parse_cpu_model

    try:
        cpu = parse_cpu_model(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = platform.processor()
    summary = {m: {name: summarize(rs) for name, rs in by.items()} for m, by in runs.items()}
    result = {
        "benchmark": "regress_bench",
        "claim": "hwprune regress: no false 'regressed' on an unchanged model; 'regressed' on a ~10% slower one",
        "command": f"{Path(sys.executable).name} bench/regress_bench.py --runs {args.runs} --device {args.device} "
                   f"--tolerance {args.tolerance} --max-seconds {args.max_seconds:g} --modes {','.join(modes)}",
        "per_run_command": {"baseline": "hwprune regress --device D --model M.onnx --baseline baseline.json "
                                        f"--tolerance {args.tolerance} --max-seconds {args.max_seconds:g} --json r.json",
                            "against": "hwprune regress --device D --model M.onnx --against base.onnx "
                                       f"--tolerance {args.tolerance} --max-seconds {args.max_seconds:g} --json r.json"},
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpu_model": cpu, "logical_cores": os.cpu_count(), "hostname": platform.node()},
        "device": args.device, "tolerance": args.tolerance, "runs": args.runs,
        "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in load_end],
        "variant_measurement": {"base": v["base"], "variants": v["variants"], "chosen": v["chosen"],
                                "statistic": v["statistic"], "window_s": args.variant_seconds},
        "summary": summary, "runs_detail": runs,
    }
    atomic_write_json(args.out, result)
    print(f"Regression check: `{result['command']}` ({result['date_utc']}, load {result['load_avg_start']} -> "
          f"{result['load_avg_end']}; {cpu}, {os.cpu_count()} logical cores)\n")
    print(markdown_table(result))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
