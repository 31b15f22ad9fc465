"""The device side stays light: ``profilers`` imports and runs without torch, click or the host stack.

Each check runs in a fresh interpreter (so modules the test session imported do not count)
started outside the checkout, so the installed package is what is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Host-side packages that must never be imported by the device side.
FORBIDDEN = ("torch", "torchvision", "torch_pruning", "click", "pandas", "pyarrow", "scipy", "onnx",
             "matplotlib", "tqdm", "hwprune")
# Third-party packages a device may have: numpy, onnxruntime, and the optional GPU stack.
ALLOWED_THIRD_PARTY = {"numpy", "onnxruntime", "profilers", "tensorrt", "pycuda", "cuda"}


def _run_isolated(code: str, tmp_path) -> dict:
    prelude = textwrap.dedent("""
        import json, sys
        _before = set(sys.modules)
    """)
    epilogue = textwrap.dedent("""
        _new = sorted(set(sys.modules) - _before)
        print(json.dumps({"new": _new, "extra": globals().get("extra")}))
    """)
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _third_party(modules: list[str]) -> set[str]:
    """Top-level names of non-stdlib modules (numpy's compiled Cython helpers aside)."""
    tops = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"__main__"}
    return {t for t in tops if not t.startswith("_cython") and t != "cython_runtime"}


def test_every_profilers_module_imports_without_torch_or_click(tmp_path):
    result = _run_isolated("""
        import importlib, pkgutil
        import profilers
        extra = [m.name for m in pkgutil.walk_packages(profilers.__path__, "profilers.")]
        for name in extra:
            importlib.import_module(name)  # lazily importing modules (tensorrt) must import here
    """, tmp_path)
    modules = result["extra"]
    for expected in ("profilers.config", "profilers.stats", "profilers.runner", "profilers.runners",
                     "profilers.onnxrt", "profilers.environment", "profilers.fileio", "profilers.errors",
                     "profilers.tensorrt",  # imports tensorrt lazily, so it imports without it
                     "profilers.torch_cuda"):  # likewise torch
        assert expected in modules
    new = set(result["new"])
    assert set(modules) <= new
    for name in FORBIDDEN:
        assert name not in new, f"importing profilers pulled in {name}"
    # importing must not even load the runtimes (onnxruntime, tensorrt): they load on first use
    assert _third_party(result["new"]) <= {"profilers", "numpy"}


def test_timing_on_the_device_side_needs_only_numpy_and_onnxruntime(tmp_path):
    result = _run_isolated("""
        from profilers.config import from_dict
        from profilers.environment import collect_manifest, fingerprint
        from profilers.runners import measure_overhead
        cfg = from_dict({"name": "dev", "warmup": 1, "min_repeats": 5, "max_seconds": 0.2})
        extra = {"p50": measure_overhead(cfg).p50_ms, "fp": fingerprint(collect_manifest(cfg))}
    """, tmp_path)
    assert result["extra"]["p50"] > 0 and len(result["extra"]["fp"]) == 16
    new = set(result["new"])
    for name in FORBIDDEN + ("yaml",):  # devices receive configs as JSON
        assert name not in new, f"timing on the device pulled in {name}"
    third = _third_party(result["new"])
    assert third <= ALLOWED_THIRD_PARTY, f"unexpected imports on the device side: {third - ALLOWED_THIRD_PARTY}"
