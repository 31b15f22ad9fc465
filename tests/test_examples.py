"""The examples under ``examples/`` run, on their fast settings, against small synthetic Fashion-MNIST files.

Each one is the README's Python API used as a new user would: their own model, metric and
training loop (plain PyTorch, an encoder-decoder scored by PSNR, Lightning's Trainer).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hwprune.data import idx_bytes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FAST_DEVICE_YAML = """\
name: test-cpu-examples
backend: onnxruntime
threads: 1
warmup: 2
min_repeats: 10
max_seconds: 0.02
channel_multiple: 8
statistic: p50
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """28x28 images whose class sets a bright row, in Debian's file names; and a fast device config."""
    root = tmp_path_factory.mktemp("examples")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 512), ("t10k", 256)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28))
        images[np.arange(n), 2 + 2 * labels, :] += 150
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.clip(images, 0, 255))))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    (root / "device.yaml").write_text(FAST_DEVICE_YAML)
    return root


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def _run(name: str, setup, tmp_path) -> dict:
    out = tmp_path / name
    summary = _load(name).main(["--fast", "--data-dir", str(setup), "--device", str(setup / "device.yaml"),
                                "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    # a real run: certified on the device, physically smaller, the run folder complete
    assert summary["certified"] is True and report["certified"] is True
    assert summary["upper_bound_ms"] <= summary["budget_ms"]
    assert summary["params_pruned"] < summary["params_dense"]
    assert {"plan.json", "pruned.onnx", "pruned.pt", "baseline.json", "report.md"} <= {p.name for p in out.iterdir()}
    return summary


def test_own_training_loop_and_metric(setup, tmp_path):
    s = _run("own_training_loop", setup, tmp_path)
    assert 0.0 <= s["test_acc_pruned"] <= 1.0


def test_an_encoder_decoder_with_a_skip_concatenation_scored_by_psnr(setup, tmp_path):
    s = _run("denoiser", setup, tmp_path)
    report = json.loads((tmp_path / "denoiser" / "report.json").read_text())
    # no classifier, no accuracy: the report carries the user's score
    assert report["dense"]["accuracy"] is None and report["pruned"]["score"] == pytest.approx(s["psnr_pruned_db"])
    assert "score (score_fn)" in (tmp_path / "denoiser" / "report.md").read_text()


def test_lightning_trainer_as_finetune_fn(setup, tmp_path):
    pytest.importorskip("lightning", reason="the optional extra hwprune[lightning] is not installed")
    s = _run("lightning_recovery", setup, tmp_path)
    report = json.loads((tmp_path / "lightning_recovery" / "report.json").read_text())
    assert report["finetune"]["strategy"] == "finetune_fn" and s["seconds"] > 0


def test_the_readmes_python_api_example_runs_as_written(tmp_path):
    # the first ```python block of README.md, run as a newcomer would paste it, in an empty folder
    import subprocess

    text = (EXAMPLES.parent / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    (tmp_path / "example.py").write_text(text[start:text.index("```", start)])
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    certified, upper_ms, budget_ms = r.stdout.split()[-3:]
    assert certified == "True" and float(upper_ms) <= float(budget_ms)
    assert (tmp_path / "runs" / "mynet" / "plan.json").is_file() and (tmp_path / "lut.parquet").is_file()
