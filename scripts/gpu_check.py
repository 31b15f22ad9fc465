"""`make gpu-check`: the GPU paths, exercised for real on a machine with an NVIDIA GPU, in one run.

On a GPU machine it runs, each step in its own process under a time limit so the whole
check ends within ``--budget-s`` (default 450 s, under the 8 minutes it must fit in):

1. the ``gpu`` and ``tensorrt`` pytest markers (those that cannot run here skip themselves);
2. for batch 1 and batch 64, with the torch-cuda backend: ``profile`` a small model into a
   LUT, ``prune`` it to a speed-up (no data needed: the score is the parameter count, no
   recovery), and ``lut check`` the LUT against sub-networks measured end to end.

It writes ``gpu-check.log`` (every step's output) and ``gpu-check.json`` (the summary)
under the folder it names (``--out``, default runs/gpu-check-<UTC time>), and prints one
summary table. On a machine without a GPU it says so and exits 0 within seconds, having
written the same two files with result "no-gpu"; any failed or unfinished step exits 1.

Usage:
    python scripts/gpu_check.py [--out DIR] [--device h200-torch-cuda-bf16] [--model resnet20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 64)
DEFAULT_BUDGET_S = 450.0
# Per-step limits (s): together with the pytest step they fit the default budget.
STEP_LIMIT_S = {"pytest": 150.0, "profile": 60.0, "prune": 50.0, "lut-check": 40.0}
# A check needs tight figures, not the last percent: shorter than the shipped methodology.
CHECK_METHODOLOGY = {"warmup": 50, "min_repeats": 30, "max_seconds": 0.3, "interleave_batch": 16}
# How much each step does: enough to exercise every path, small enough for the budget.
SETTINGS = {"grid": (0.5, 1.0), "calibration_samples": 3, "lut_check_samples": 6, "speedup": 1.2,
            "max_evaluations": 8, "certify_rounds": 2, "measure_top": 2}


# -- is there a GPU? ---------------------------------------------------------------------

def detect_gpu() -> tuple[str | None, str]:
    """(GPU name or None, why): nvidia-smi must list one and torch must see it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "nvidia-smi not found"
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"nvidia-smi -L failed: {err}"
    gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    if listed.returncode != 0 or not gpus:
        return None, "nvidia-smi lists no GPU"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed (the torch-cuda steps need a CUDA build of torch)"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda})"
    return torch.cuda.get_device_name(0), gpus[0]


def gpu_state() -> dict[str, Any]:
    """Name, driver and clocks as nvidia-smi reports them now (recorded, not judged)."""
    from profilers.environment import _gpu_info

    gpu, count, cuda = _gpu_info()
    return {"gpu": gpu, "gpu_count": count, "cuda_driver": cuda}


# -- the steps (each also runs on its own: gpu_check.py --step NAME ...) -------------------

def check_config(device: str, batch: int, out: Path) -> Path:
    """The device config at ``batch`` with the check's shorter methodology, as a JSON file."""
    from profilers.config import from_dict, load_device_config

    base = load_device_config(device)
    data = {**base.to_dict(), **CHECK_METHODOLOGY, "batch_size": batch, "name": f"{base.name}-check-b{batch}"}
    path = out / f"device-b{batch}.json"
    path.write_text(json.dumps(from_dict(data, source=str(path)).to_dict(), indent=1))
    return path


def step_profile(cfg: str, model: str, out: Path, batch: int) -> dict[str, Any]:
    from hwprune import api

    lut = api.profile(model, device=cfg, lut=str(out / f"lut-b{batch}.parquet"), grid=SETTINGS["grid"],
                      calibration_samples=SETTINGS["calibration_samples"])
    r = lut.profile_result
    return {"lut": str(r.lut_path), "signatures_measured": r.signatures_measured, "units": r.units,
            "errors": len(r.errors)}


def _param_score(model) -> float:
    # higher is better: the search keeps as many parameters as the latency budget allows
    return float(sum(p.numel() for p in model.parameters()))


def step_prune(cfg: str, model: str, out: Path, batch: int) -> dict[str, Any]:
    from hwprune import api

    result = api.prune(model, device=cfg, lut=str(out / f"lut-b{batch}.parquet"), speedup=SETTINGS["speedup"],
                       score_fn=_param_score, agent="knapsack", max_evaluations=SETTINGS["max_evaluations"],
                       certify_rounds=SETTINGS["certify_rounds"], measure_top=SETTINGS["measure_top"],
                       calibration_samples=SETTINGS["calibration_samples"], out=str(out / f"run-b{batch}"),
                       overwrite=True)
    cert = result.certificate
    environment = result.report.get("environment") or {}
    return {"certified": bool(cert.certified), "upper_bound_ms": cert.upper_bound_ms, "budget_ms": cert.budget_ms,
            "build": environment.get("build"), "run": str(out / f"run-b{batch}")}


def step_lut_check(cfg: str, model: str, out: Path, batch: int) -> dict[str, Any]:
    from hwprune import api

    report = api.lut_check(model, device=cfg, lut=str(out / f"lut-b{batch}.parquet"),
                           samples=SETTINGS["lut_check_samples"], calibration_samples=SETTINGS["calibration_samples"],
                           json_path=str(out / f"lut-check-b{batch}.json"))
    return {k: report.get(k) for k in ("median_abs_error_pct", "max_abs_error_pct", "within_10pct")}


STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "profile": step_profile, "prune": step_prune, "lut-check": step_lut_check,
}


# -- running steps under limits ------------------------------------------------------------

class Check:
    """One gpu-check run: its folder, log, deadline and the results of its steps."""

    def __init__(self, out: Path, budget_s: float, in_process: bool = False):
        self.out = out
        self.log_path = out / "gpu-check.log"
        self.deadline = time.monotonic() + budget_s
        self.in_process = in_process  # tests: run steps here, where fakes are installed
        self.steps: list[dict[str, Any]] = []

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, argv: list[str], limit_s: float, fn: Callable[[], dict[str, Any]] | None = None) -> bool:
        """Run one step (a command, or ``fn`` in process) within its limit and the run's deadline."""
        limit = min(limit_s, self.left_s())
        if limit < 5:
            self.steps.append({"step": name, "status": "skipped", "detail": "time budget spent", "seconds": 0.0})
            return False
        self.log(f"== {name}: {' '.join(argv) if fn is None else 'in process'} (limit {limit:.0f} s)")
        t0 = time.monotonic()
        try:
            status, detail = self._run_fn(fn) if fn is not None else self._run_argv(argv, limit)
        except Exception as err:  # a failing step is a result, not the end of the check
            status, detail = "fail", " ".join(str(err).split())[:300] or type(err).__name__
        seconds = round(time.monotonic() - t0, 1)
        self.steps.append({"step": name, "status": status, "detail": detail, "seconds": seconds})
        self.log(f"== {name}: {status} in {seconds} s: {json.dumps(detail)}")
        return status == "pass"

    def _run_fn(self, fn) -> tuple[str, Any]:
        return "pass", fn()

    def _run_argv(self, argv: list[str], limit: float) -> tuple[str, Any]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired as err:
            self.log((err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or ""))
            return "timeout", f"still running after {limit:.0f} s"
        self.log(done.stdout + done.stderr)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or lines or ["no output"])[-1]
            return "fail", f"exit {done.returncode}: {last[:300]}"
        try:
            return "pass", json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            return "pass", lines[-1][:300]


def pytest_step(check: Check) -> None:
    junit = check.out / "pytest-gpu.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu or tensorrt", "-p", "no:cacheprovider",
            f"--junitxml={junit}", "tests"]
    ok = check.run("pytest -m 'gpu or tensorrt'", argv, STEP_LIMIT_S["pytest"])
    step = check.steps[-1]
    if junit.is_file():
        step["counts"] = _junit_counts(junit)
    if not ok and step["status"] == "fail" and step["detail"].startswith("exit 5"):
        step["status"], step["detail"] = "pass", "no gpu/tensorrt tests collected"


def _junit_counts(path: Path) -> dict[str, int]:
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def model_steps(check: Check, device: str, model: str, batches=BATCHES) -> None:
    for batch in batches:
        cfg = check_config(device, batch, check.out)
        for name in ("profile", "prune", "lut-check"):
            argv = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--config", str(cfg),
                    "--model", model, "--out", str(check.out), "--batch", str(batch)]
            fn = (lambda name=name: STEPS[name](str(cfg), model, check.out, batch)) if check.in_process else None
            if not check.run(f"{name} b{batch}", argv, STEP_LIMIT_S[name], fn) and name == "profile":
                break  # prune and lut check need the LUT


# -- the run ---------------------------------------------------------------------------------

def write_summary(check: Check, result: str, extra: dict[str, Any]) -> dict[str, Any]:
    summary = {"result": result, **extra, "steps": check.steps, "folder": str(check.out),
               "log": str(check.log_path), "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (check.out / "gpu-check.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"gpu-check: {summary['result']}" + (f" ({summary['why']})" if summary.get("why") else ""))
    for s in summary["steps"]:
        detail = s["detail"] if isinstance(s["detail"], str) else json.dumps(s["detail"])
        print(f"  {s['step']:<28} {s['status']:<8} {s['seconds']:>6.1f} s  {detail[:100]}")
    print(f"  log and JSON: {summary['folder']}")


def main(argv: list[str] | None = None, *, in_process: bool = False,
         detect: Callable[[], tuple[str | None, str]] = detect_gpu, batches=BATCHES) -> int:
    args = _parser().parse_args(argv)
    if args.step:
        print(json.dumps(STEPS[args.step](args.config, args.model, Path(args.out), args.batch)))
        return 0
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or ROOT / "runs" / f"gpu-check-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.budget_s, in_process=in_process)
    gpu, why = detect()
    if gpu is None:
        check.log(f"no GPU: {why}")
        summary = write_summary(check, "no-gpu", {"why": why})
        print_summary(summary)
        return 0
    check.log(f"GPU: {gpu} ({why})")
    extra = {"gpu_name": gpu, "device": args.device, "model": args.model, "state_before": gpu_state()}
    if not in_process:
        pytest_step(check)
    model_steps(check, args.device, args.model, batches)
    extra["state_after"] = gpu_state()
    result = "pass" if check.steps and all(s["status"] == "pass" for s in check.steps) else "fail"
    summary = write_summary(check, result, extra)
    print_summary(summary)
    return 0 if result == "pass" else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for gpu-check.log and gpu-check.json (default runs/gpu-check-<time>)")
    p.add_argument("--device", default="h200-torch-cuda-bf16", help="torch-cuda device config to check with")
    p.add_argument("--model", default="resnet20", help="zoo name or path/to/file.py:factory")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="the whole check's time limit")
    p.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)  # one step, run by the check itself
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
