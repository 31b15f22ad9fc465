"""TorchCudaRunner on a real NVIDIA GPU: a converted program timed eager and as a CUDA graph.

Marked ``gpu``; skipped where torch sees no CUDA GPU. `make gpu-check` runs it on a GPU
machine (``pytest -m gpu tests/test_torch_cuda_real.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU visible to torch", allow_module_level=True)

import onnxruntime as ort  # noqa: E402
import torch.nn as nn  # noqa: E402

from hwprune.export import export_onnx  # noqa: E402
from hwprune.torch_program import onnx_to_program  # noqa: E402
from profilers.config import DeviceConfig  # noqa: E402
from profilers.torch_cuda import TorchCudaRunner  # noqa: E402


@pytest.fixture(scope="module")
def net_onnx() -> bytes:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 10)).eval()
    return export_onnx(net, torch.zeros(8, 3, 32, 32))


def cfg(**fields) -> DeviceConfig:
    return DeviceConfig(**{"name": "gpu", "backend": "torch-cuda", "warmup": 20, "min_repeats": 30,
                           "max_seconds": 0.5, **fields})


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 5e-2), ("bf16", 1e-1)])
def test_times_and_matches_onnxruntime(net_onnx, graphs, precision, tol):
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(net_onnx).run(None, {"input": x})[0]
    with TorchCudaRunner(onnx_to_program(net_onnx), cfg(precision=precision, cuda_graphs=graphs)) as r:
        assert r.gpu_name
        np.testing.assert_allclose(r.infer({"input": x})["output"], expected, rtol=tol, atol=tol)
        stats = r.measure()
    assert stats.n >= 30 and 0 < stats.p50_ms < 100


def test_autocast_runs(net_onnx):
    with TorchCudaRunner(onnx_to_program(net_onnx), cfg(precision="bf16", autocast=True)) as r:
        assert r.measure().p50_ms > 0
