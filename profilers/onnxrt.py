"""The onnxruntime timing backend: any ordered list of execution providers, threads, opt level.

Times ``session.run`` on inputs prepared once, with ``time.perf_counter`` around the call:
for CPU providers that is the compute time plus onnxruntime's fixed per-call overhead, which
``measure_overhead`` estimates on an identity graph so per-layer sums can be corrected.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from profilers.config import DeviceConfig
from profilers.errors import BackendUnavailable, ModelFileError
from profilers.runner import BaseRunner, InputSpec, random_inputs

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from None
    return ort


def resolve_providers(config: DeviceConfig) -> tuple[list[str], list[str]]:
    """Providers from the config that this onnxruntime build has, in order, and those skipped.

    A config may name providers "when present" (XNNPACK on an ARM board, say); those that
    this build lacks are skipped. If none remains, that is an error naming what is there.
    """
    ort = _import_ort()
    available = set(ort.get_available_providers())
    use = [p for p in config.providers if p in available]
    skipped = [p for p in config.providers if p not in available]
    if not use:
        raise BackendUnavailable(
            f"none of the execution providers {', '.join(config.providers)} is available in this "
            f"onnxruntime {ort.__version__} (available: {', '.join(sorted(available))})")
    return use, skipped


def session_options(config: DeviceConfig):
    ort = _import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = config.threads
    so.inter_op_num_threads = config.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[config.graph_optimization])
    # A spinning thread pool shortens per-call latency but burns a core between calls;
    # with one intra-op thread there is no pool, so keep the default there.
    so.log_severity_level = 3
    return so


class OrtRunner(BaseRunner):
    """Times an ONNX model with onnxruntime as configured by a ``DeviceConfig``."""

    timed_scope = "session.run (compute + per-call overhead, host memory)"

    def __init__(self, model: str | bytes, config: DeviceConfig, name: str | None = None, seed: int = 0):
        super().__init__(model, config, name)
        self.seed = seed
        self.session = None
        self.providers_used: list[str] = []
        self.providers_skipped: list[str] = []
        self.inputs: list[InputSpec] = []
        self._feeds: dict[str, np.ndarray] = {}

    def activate_impl(self) -> None:
        ort = _import_ort()
        if isinstance(self.model, (str, Path)) and not Path(self.model).is_file():
            raise ModelFileError(f"ONNX file not found: {self.model}")
        self.providers_used, self.providers_skipped = resolve_providers(self.config)
        model_arg = str(self.model) if isinstance(self.model, Path) else self.model
        try:
            self.session = ort.InferenceSession(model_arg, sess_options=session_options(self.config),
                                                providers=self.providers_used)
        except Exception as err:  # onnxruntime raises its own exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelFileError(f"cannot load ONNX model {self.name}: {first}") from None
        self.inputs = self._input_specs()
        self._feeds = random_inputs(self.inputs, self.seed)

    def _input_specs(self) -> list[InputSpec]:
        specs = []
        for i in self.session.get_inputs():
            shape = []
            for axis, d in enumerate(i.shape):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif axis == 0:
                    shape.append(self.config.batch_size)  # symbolic batch dimension
                else:
                    raise ModelFileError(f"{self.name}: input '{i.name}' has a symbolic dimension "
                                         f"'{d}' at axis {axis}; export with static shapes")
            if i.type not in _ORT_TYPES:
                raise ModelFileError(f"{self.name}: input '{i.name}' has unsupported type {i.type}")
            specs.append(InputSpec(i.name, tuple(shape), _ORT_TYPES[i.type]))
        return specs

    def infer(self, feeds=None):
        try:
            outputs = self.session.run(None, feeds if feeds is not None else self._feeds)
        except Exception as err:  # onnxruntime raises its own exception types
            raise self._run_error(err) from None
        return {o.name: v for o, v in zip(self.session.get_outputs(), outputs)}

    def time_once_ms(self) -> float:
        run, feeds = self.session.run, self._feeds
        t0 = time.perf_counter()
        try:  # free when nothing is raised (zero-cost exceptions): the timing is unchanged
            run(None, feeds)
        except Exception as err:
            raise self._run_error(err) from None
        return (time.perf_counter() - t0) * 1e3

    def _run_error(self, err: Exception) -> ModelFileError:
        """A model that loads but fails when run: one line with onnxruntime's words (they name the node)."""
        text = " ".join(str(err).split()) or type(err).__name__
        return ModelFileError(f"{self.name} loads but fails when run on onnxruntime: {text[:300]}")

    def deactivate_impl(self) -> None:
        self.session = None
        self._feeds = {}

