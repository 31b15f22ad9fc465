"""Registry of timing backends: ``make_runner(model, config)`` picks one by ``config.backend``."""

from __future__ import annotations

from pathlib import Path

from profilers.config import DeviceConfig
from profilers.runner import BaseRunner
from profilers.stats import TimingStats


def runner_class(config: DeviceConfig) -> type[BaseRunner]:
    """The runner class of ``config.backend``; its module imports the runtime itself only when a runner is made."""
    if config.backend == "onnxruntime":
        from profilers.onnxrt import OrtRunner
        return OrtRunner
    if config.backend == "tensorrt":
        from profilers.tensorrt import TrtRunner
        return TrtRunner
    if config.backend == "torch-cuda":
        from profilers.torch_cuda import TorchCudaRunner  # imports torch only when activated
        return TorchCudaRunner
    raise ValueError(f"unknown backend '{config.backend}'")  # config validation prevents this


def make_runner(model: str | bytes, config: DeviceConfig, name: str | None = None) -> BaseRunner:
    """The runner for ``config.backend``; heavy backends are imported only here, lazily."""
    return runner_class(config)(model, config, name=name)


def check_backend(config: DeviceConfig) -> None:
    """Raise ``BackendUnavailable`` (one line) now if ``config``'s backend cannot run here.

    For the host to call before minutes of export and conversion, not after them. It
    imports the runtime but builds nothing and, for CUDA, only asks whether a GPU is there.
    """
    if config.backend == "onnxruntime":
        from profilers.onnxrt import resolve_providers
        resolve_providers(config)
    elif config.backend == "tensorrt":
        from profilers.tensorrt import _cuda_api_factory, _import_tensorrt
        _import_tensorrt()
        _cuda_api_factory()
    elif config.backend == "torch-cuda":
        from profilers.torch_cuda import check_gpu
        check_gpu()


IDENTITY_ONNX = Path(__file__).resolve().parent / "assets" / "identity.onnx"
# A 3x3 conv, 32->32 channels at 14x14: timed beside candidates to track the machine's speed.
REFERENCE_ONNX = Path(__file__).resolve().parent / "assets" / "reference.onnx"


def measure_overhead(config: DeviceConfig) -> TimingStats:
    """Per-call overhead of this runtime: the timing of a 1-element identity graph.

    Per-layer candidates are each timed as one call, so a sum of N layer times holds N
    overheads where the deployed model pays one; the LUT subtracts this figure per layer.
    """
    with make_runner(str(IDENTITY_ONNX), config, name="identity (overhead)") as r:
        return r.measure()
