"""scripts/gpu_check.py (`make gpu-check`): its no-GPU answer, and its GPU path with CUDA faked.

The GPU path runs in process here, on the CPU, with torch.cuda faked as in
tests/test_torch_cuda.py; the fake prices a forward by the program's weight count (1 ms
per million), so narrower sub-networks are faster and a speed-up budget can be met, and
computes each program's forward once (the steps time; they never read outputs). What
the real GPU does is what the script itself checks, on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_torch_cuda import install_fake_cuda

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"

TINY = '''
import torch.nn as nn


def tiny(in_channels=1, num_classes=10, input_size=(28, 28)):
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
'''


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _weights_ms(module, specs) -> float:
    return 0.01 + 1e-6 * sum(b.numel() for b in module.buffers()) + 1e-6 * sum(p.numel() for p in module.parameters())


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path / "empty-bin"))  # no nvidia-smi to be found
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "gpu-check: no-gpu (nvidia-smi not found)"
    summary = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert summary["result"] == "no-gpu" and summary["steps"] == []
    assert (tmp_path / "out" / "gpu-check.log").read_text().startswith("no GPU: nvidia-smi not found")


def test_a_gpu_nvidia_smi_lists_but_torch_cannot_see_is_no_gpu(gpu_check, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(smi.parent))
    gpu, why = gpu_check.detect_gpu()
    assert gpu is None and "sees no CUDA GPU" in why


def test_gpu_path_profiles_prunes_and_checks_at_two_batches(gpu_check, tmp_path, monkeypatch):
    install_fake_cuda(monkeypatch, _weights_ms, compute_once=True)
    # every step, each path through it, at the least work: one grid point, the fewest samples
    monkeypatch.setitem(gpu_check.SETTINGS, "grid", (1.0,))
    for key, value in (("calibration_samples", 0), ("lut_check_samples", 3), ("max_evaluations", 2),
                       ("certify_rounds", 1), ("measure_top", 1)):
        monkeypatch.setitem(gpu_check.SETTINGS, key, value)
    (tmp_path / "tiny.py").write_text(TINY)
    out = tmp_path / "check"
    rc = gpu_check.main(["--out", str(out), "--model", f"{tmp_path / 'tiny.py'}:tiny"], in_process=True,
                        detect=lambda: ("NVIDIA H200 (fake)", "GPU 0: fake"), batches=(1, 4))
    summary = json.loads((out / "gpu-check.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["profile b1", "prune b1", "lut-check b1",
                                                     "profile b4", "prune b4", "lut-check b4"], summary["steps"]
    assert rc == 0 and summary["result"] == "pass", summary["steps"]
    for step in summary["steps"]:
        if step["step"].startswith("prune"):
            assert step["detail"]["build"]["program"] == "torch.export"
            assert step["detail"]["budget_ms"] > 0
        if step["step"].startswith("lut-check"):
            assert step["detail"]["median_abs_error_pct"] is not None
    assert json.loads((out / "device-b4.json").read_text())["batch_size"] == 4
    assert (out / "lut-b1.parquet").is_file() and (out / "run-b4" / "report.json").is_file()
    assert "== profile b1" in (out / "gpu-check.log").read_text()


def test_a_failing_step_fails_the_check_and_the_rest_still_run(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.STEPS, "prune", lambda *a: (_ for _ in ()).throw(RuntimeError("boom\nmore")))
    monkeypatch.setitem(gpu_check.STEPS, "profile", lambda *a: {"ok": True})
    monkeypatch.setitem(gpu_check.STEPS, "lut-check", lambda *a: {"ok": True})
    rc = gpu_check.main(["--out", str(tmp_path)], in_process=True, detect=lambda: ("GPU", "fake"), batches=(1,))
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert rc == 1 and summary["result"] == "fail"
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("profile b1", "pass"), ("prune b1", "fail"), ("lut-check b1", "pass")]
    assert summary["steps"][1]["detail"] == "boom more"
