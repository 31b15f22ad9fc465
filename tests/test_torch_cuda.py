"""TorchCudaRunner on the CPU with torch.cuda faked: events, streams and CUDA graphs recorded.

The fake ``torch.cuda`` has the real entry points the runner uses (``is_available``,
``get_device_name``, ``Event(enable_timing=...)`` with ``record``/``synchronize``/
``elapsed_time``, ``Stream``, ``stream(...)``, ``CUDAGraph``/``replay``, ``graph(g, stream=)``)
and a clock that advances ``COMPUTE_MS`` per forward of the loaded program (or, for a graph,
per forward captured in it at each replay). Tensors stay on the CPU (``DEVICE = "cpu"``), so
the programs really run and their outputs are checked against onnxruntime.

What CUDA itself does is left to scripts/gpu_check.py on a GPU machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import profilers.torch_cuda as tc
from hwprune.export import export_onnx
from hwprune.measure import device_items
from hwprune.torch_program import for_device, onnx_to_program
from profilers.config import DeviceConfig, from_dict, load_device_config
from profilers.environment import collect_manifest, fingerprint
from profilers.errors import BackendUnavailable, ConfigError, ModelFileError
from profilers.runners import IDENTITY_ONNX, REFERENCE_ONNX, make_runner
from profilers.torch_cuda import TorchCudaRunner, run_settings

COMPUTE_MS = 0.25
GPU_NAME = "NVIDIA H200 (fake)"


class FakeCuda:
    """The torch.cuda surface the runner uses, with a call log and a forward-driven clock."""

    def __init__(self, available: bool = True):
        self.available = available
        self.calls: list[tuple[str, dict]] = []
        self.clock_ms = 0.0
        self.capturing = None
        fake = self

        class Event:
            def __init__(self, enable_timing=False, blocking=False, interprocess=False):
                fake.log("Event", enable_timing=enable_timing)
                self.enable_timing, self.t_ms = enable_timing, None

            def record(self, stream=None):
                fake.log("event.record", stream=stream)
                self.t_ms = fake.clock_ms

            def synchronize(self):
                fake.log("event.synchronize", event=self)

            def query(self):
                return True

            def elapsed_time(self, end_event):
                assert self.enable_timing and end_event.enable_timing, "elapsed_time needs enable_timing=True"
                return end_event.t_ms - self.t_ms

        class Stream:
            cuda_stream = 0x5EED

            def __init__(self, device=None, priority=0):
                fake.log("Stream")

            def synchronize(self):
                fake.log("stream.synchronize")

        class CUDAGraph:
            """Replays what was captured: each forward again, on the captured input and into the
            captured output tensors (in place), as a real graph's kernels rerun on its buffers."""

            def __init__(self):
                self.captured: list = []

            def replay(self):
                fake.log("graph.replay")
                with torch.inference_mode():  # the captured output is an inference tensor
                    for run, out, cost_ms in self.captured:
                        out.copy_(run())
                        fake.clock_ms += cost_ms

            def reset(self):
                self.captured = []

        self.Event, self.Stream, self.CUDAGraph = Event, Stream, CUDAGraph

    def log(self, name: str, **info) -> None:
        self.calls.append((name, info))

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]

    def is_available(self):
        return self.available

    def device_count(self):
        return 1 if self.available else 0

    def current_device(self):
        return 0

    def get_device_name(self, device=None):
        return GPU_NAME

    def synchronize(self, device=None):
        self.log("synchronize")

    @contextlib.contextmanager
    def stream(self, stream):
        self.log("stream.enter", stream=stream)
        yield
        self.log("stream.exit")

    @contextlib.contextmanager
    def graph(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
        self.log("graph.capture_begin", stream=stream)
        self.capturing = cuda_graph
        try:
            yield
        finally:
            self.capturing = None
            self.log("graph.capture_end")

    def forward(self, run, cost_ms: float = COMPUTE_MS):
        """A forward of the loaded program: timed on the clock, or captured into the graph."""
        self.log("forward", captured=self.capturing is not None)
        out = run()
        if self.capturing is not None:
            self.capturing.captured.append((run, out, cost_ms))
        else:
            self.clock_ms += cost_ms
        return out


class FakeTorch:
    """The real torch with ``cuda`` (and ``version.cuda``) replaced by the fake."""

    def __init__(self, cuda: FakeCuda, cuda_build: str | None = "12.8"):
        self.cuda = cuda
        self.version = SimpleNamespace(cuda=cuda_build)

    def __getattr__(self, name):
        return getattr(torch, name)


class Counting(nn.Module):
    """Wraps the loaded program so the fake clock sees each forward (``cost_ms`` each).

    ``compute_once``: only the first forward computes, later ones return its output, for
    callers that time and never read outputs (a real GPU's host side does not wait either).
    """

    def __init__(self, inner: nn.Module, cuda: FakeCuda, cost_ms: float = COMPUTE_MS, compute_once: bool = False):
        super().__init__()
        self.inner, self.fake, self.cost_ms, self.compute_once = inner, cuda, cost_ms, compute_once
        self.first = None

    def forward(self, *args):
        if self.compute_once and self.first is not None:
            return self.fake.forward(lambda: self.first, self.cost_ms)
        out = self.fake.forward(lambda: self.inner(*args), self.cost_ms)
        self.first = out
        return out


def install_fake_cuda(monkeypatch, cost_ms: Callable[[nn.Module, list], float] | None = None,
                      compute_once: bool = False) -> FakeCuda:
    """torch.cuda faked for profilers.torch_cuda; ``cost_ms(module, input specs)`` prices a forward."""
    fake = FakeCuda()
    monkeypatch.setattr(tc, "_import_torch", lambda: FakeTorch(fake))
    monkeypatch.setattr(tc, "DEVICE", "cpu")
    real_load = tc.load_program

    def load_counting(torch_, model, name):
        module, specs = real_load(torch_, model, name)
        price = cost_ms(module, specs) if cost_ms else COMPUTE_MS
        return Counting(module, fake, price, compute_once), specs

    monkeypatch.setattr(tc, "load_program", load_counting)
    return fake


@pytest.fixture
def cuda(monkeypatch) -> FakeCuda:
    return install_fake_cuda(monkeypatch)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def small_onnx() -> bytes:
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return export_onnx(net, torch.zeros(2, 3, 8, 8))


@pytest.fixture(scope="module")
def small_program(small_onnx) -> bytes:
    return onnx_to_program(small_onnx)


def cuda_config(**fields) -> DeviceConfig:
    base = dict(name="fake-h200", backend="torch-cuda", warmup=2, min_repeats=3, max_repeats=10, max_seconds=0.05)
    base.update(fields)
    return DeviceConfig(**base)


def between_events(fake: FakeCuda) -> list[str]:
    names = fake.names()
    records = [i for i, n in enumerate(names) if n == "event.record"]
    return names[records[-2] + 1:records[-1]]


# -- the program: ONNX replayed in torch, exported, loaded -------------------------------

def test_program_computes_what_onnxruntime_computes(cuda, small_onnx, small_program):
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(small_onnx).run(None, {"input": x})[0]
    with TorchCudaRunner(small_program, cuda_config()) as r:
        assert [(s.name, s.shape, s.dtype) for s in r.inputs] == [("input", (2, 3, 8, 8), "float32")]
        out = r.infer({"input": x})
    np.testing.assert_allclose(out["output"], expected, rtol=1e-4, atol=1e-5)


def test_unsupported_onnx_op_is_one_line_naming_it():
    from hwprune.errors import HwpruneError

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Erf", ["x"], ["y"])], "erf", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    with pytest.raises(HwpruneError, match="cannot replay ONNX op.s. Erf") as err:
        onnx_to_program(model.SerializeToString())
    assert "\n" not in str(err.value)


def test_candidates_become_programs_only_for_torch_cuda(small_onnx, small_program):
    assert for_device(small_onnx, "onnxruntime") is small_onnx
    assert tc.is_program(for_device(small_onnx, "torch-cuda"))
    assert for_device(small_program, "torch-cuda") is small_program  # already a program
    items = device_items([("k", small_onnx, {"m": 1})], cuda_config())
    assert items[0][0] == "k" and tc.is_program(items[0][1]) and items[0][2] == {"m": 1}
    assert device_items([("k", small_onnx)], DeviceConfig(name="cpu"))[0][1] is small_onnx


@pytest.mark.parametrize("asset", [IDENTITY_ONNX, REFERENCE_ONNX])
def test_builtin_overhead_and_reference_graphs_match_the_onnx_assets(asset):
    """The torch-only stand-ins time the same shapes and the same conv as the ONNX files."""
    module, specs = tc._builtin_modules(torch)[str(asset)]
    program = torch.export.load(io.BytesIO(onnx_to_program(asset.read_bytes())))
    assert [s for s in specs] == [spec.shape for spec in tc._program_inputs(program)]
    x = torch.zeros(specs[0])
    assert module(x).shape == program.module()(x).shape
    onnx_weights = sorted(tuple(i.dims) for i in onnx.load(str(asset)).graph.initializer)
    assert onnx_weights == sorted(tuple(p.shape) for p in module.parameters())


# -- timing ------------------------------------------------------------------------------

def test_time_once_is_one_forward_between_events_on_the_runner_stream(cuda, small_program):
    with TorchCudaRunner(small_program, cuda_config()) as r:
        assert r.gpu_name == GPU_NAME and r.timed_scope.startswith("GPU compute")
        assert r.time_once_ms() == pytest.approx(COMPUTE_MS)
        assert between_events(cuda) == ["forward"]
        assert cuda.names()[-2:] == ["stream.exit", "event.synchronize"]  # waits on the end event
        records = [info["stream"] for name, info in cuda.calls if name == "event.record"]
        assert records[-2] is records[-1] is r._stream
    assert [info["enable_timing"] for name, info in cuda.calls if name == "Event"] == [True, True]


def test_measure_warms_up_then_times_with_the_config_methodology(cuda, small_program):
    with TorchCudaRunner(small_program, cuda_config(warmup=4, min_repeats=6, max_repeats=6)) as r:
        stats = r.measure()
    assert stats.n == 6 and stats.p50_ms == pytest.approx(COMPUTE_MS)
    assert cuda.names().count("forward") == 4 + 6


def test_cuda_graph_is_captured_after_warmup_and_replayed(cuda, small_program, small_onnx):
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(small_onnx).run(None, {"input": x})[0]
    with TorchCudaRunner(small_program, cuda_config(cuda_graphs=True)) as r:
        names = cuda.names()
        begin = names.index("graph.capture_begin")
        assert names[:begin].count("forward") == tc.GRAPH_WARMUP_CALLS  # warm-up outside the capture
        assert names[begin:names.index("graph.capture_end")] == ["graph.capture_begin", "forward"]
        assert [i["stream"] for n, i in cuda.calls if n == "graph.capture_begin"] == [r._stream]
        assert r.time_once_ms() == pytest.approx(COMPUTE_MS)
        assert between_events(cuda) == ["graph.replay"]
        forwards = cuda.names().count("forward")
        r.measure()
        assert cuda.names().count("forward") == forwards  # timing only replays
        # new inputs go into the captured buffers: the replay computes on them
        np.testing.assert_allclose(r.infer({"input": x})["output"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cast_mode_runs_weights_and_inputs_in_the_precision(cuda, small_program, small_onnx, precision, dtype):
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(small_onnx).run(None, {"input": x})[0]
    with TorchCudaRunner(small_program, cuda_config(precision=precision)) as r:
        assert {b.dtype for b in r._module.buffers() if b.is_floating_point()} == {dtype}
        assert r._args[0].dtype == dtype
        out = r.infer({"input": x})["output"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0.1, atol=0.1)


def test_autocast_mode_keeps_fp32_weights_and_runs_in_bf16(cuda, small_program):
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with TorchCudaRunner(small_program, cuda_config()) as fp32:
        exact = fp32.infer({"input": x})["output"]
    with TorchCudaRunner(small_program, cuda_config(precision="bf16", autocast=True)) as r:
        assert {b.dtype for b in r._module.buffers() if b.is_floating_point()} == {torch.float32}
        assert r._args[0].dtype == torch.float32
        out = r.infer({"input": x})["output"]
    # the conv and matmul ran in bf16 (8-bit mantissa): close to fp32, never bit-equal
    assert not np.array_equal(out, exact)
    np.testing.assert_allclose(out, exact, rtol=0.1, atol=0.05)


# -- errors ------------------------------------------------------------------------------

def test_onnx_given_to_torch_cuda_says_how_to_convert(cuda, small_onnx):
    with pytest.raises(ModelFileError, match="torch.export programs, not ONNX") as err:
        TorchCudaRunner(small_onnx, cuda_config(), name="m.onnx").activate()
    assert "\n" not in str(err.value)


def test_no_gpu_is_backend_unavailable(monkeypatch, small_program):
    monkeypatch.setattr(tc, "_import_torch", lambda: FakeTorch(FakeCuda(available=False), cuda_build=None))
    with pytest.raises(BackendUnavailable, match="no usable CUDA GPU.*CPU-only build") as err:
        TorchCudaRunner(small_program, cuda_config()).activate()
    assert "\n" not in str(err.value)


def test_missing_torch_says_what_to_install(monkeypatch, small_program):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(BackendUnavailable, match="needs PyTorch built with CUDA: pip install torch"):
        TorchCudaRunner(small_program, cuda_config()).activate()


def test_corrupt_program_is_a_model_file_error(cuda):
    with pytest.raises(ModelFileError, match="cannot load torch.export program") as err:
        TorchCudaRunner(tc.PROGRAM_MAGIC + b"truncated", cuda_config()).activate()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fields, message", [
    ({"backend": "torch-cuda", "precision": "int8"}, "for backend torch-cuda"),
    ({"backend": "tensorrt", "cuda_graphs": True}, "torch-cuda only"),
    ({"backend": "torch-cuda", "autocast": True}, "needs precision fp16 or bf16"),
    ({"backend": "torch-cuda", "cuda_graphs": "yes"}, "must be bool"),
])
def test_config_refuses_what_torch_cuda_cannot_do(fields, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"name": "x", **fields})


# -- wiring: registry, bundles, manifest --------------------------------------------------

def test_make_runner_picks_torch_cuda_and_imports_nothing_yet(small_program):
    runner = make_runner(small_program, cuda_config())
    assert isinstance(runner, TorchCudaRunner) and runner.is_active is False


def test_module_imports_without_torch():
    code = ("import sys, profilers.torch_cuda, profilers.bundle; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_bundle_of_programs_runs_on_the_device_side(cuda, tmp_path, small_onnx):
    from profilers.bundle import read_bundle, run_bundle, write_bundle

    cfg = cuda_config(interleave_batch=2)
    write_bundle(tmp_path / "b", cfg, device_items([("a", small_onnx, {}), ("b", small_onnx, {})], cfg))
    assert all(item.file.endswith(".pt2") for item in read_bundle(tmp_path / "b").items)
    records = run_bundle(tmp_path / "b", results_path=tmp_path / "b" / "results.jsonl")
    session = records[0]
    assert session["type"] == "session" and session["environment"]["build"] == run_settings(cfg)
    rows = [r for r in records if r["type"] == "row"]
    assert [r["key"] for r in rows] == ["a", "b"] and all(r["timing"]["p50_ms"] > 0 for r in rows)
    json.dumps(records)  # records stay JSON


def test_manifest_and_fingerprint_carry_the_torch_cuda_settings():
    cfg = load_device_config("h200-torch-cuda-bf16")
    m = collect_manifest(cfg)
    assert m["backend"] == "torch-cuda" and m["runtime_version"] == torch.__version__.split("+")[0] or \
        m["runtime_version"] == torch.__version__
    assert m["build"] == {"program": "torch.export", "precision": "bf16", "precision_mode": "cast",
                          "cuda_graphs": False}
    graphs = collect_manifest(cfg.replace(cuda_graphs=True))
    assert fingerprint(graphs) != fingerprint(m)


def test_profile_without_a_gpu_stops_before_exporting(tmp_path, monkeypatch):
    """On this CPU machine the real torch sees no GPU: profile says so before any export."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import hwprune.profiling
    from hwprune import api

    exports = []
    monkeypatch.setattr(hwprune.profiling, "build_width_graph", lambda *a, **k: exports.append(1))
    with pytest.raises(BackendUnavailable, match="no usable CUDA GPU for torch-cuda") as err:
        api.profile("resnet20", device="h200-torch-cuda-bf16", lut=str(tmp_path / "lut.parquet"))
    assert exports == [] and "\n" not in str(err.value)


def test_the_fake_torch_cuda_has_only_real_torch_cuda_names():
    """Every name the fake offers (so every name the runner can use) exists in the real torch.cuda,
    with the parameters the fake accepts; even a CPU build of torch carries the module."""
    import inspect

    fake = FakeCuda()
    offered = [n for n in dir(fake) if not n.startswith("_") and n not in ("available", "calls", "clock_ms",
                                                                              "capturing", "log", "names", "forward")]
    assert {"Event", "Stream", "CUDAGraph", "graph", "stream", "is_available"} <= set(offered)
    for name in offered:
        real, mine = getattr(torch.cuda, name), getattr(fake, name)
        assert callable(real), name
        params = set(inspect.signature(mine).parameters)
        real_params = set(inspect.signature(real).parameters)
        assert params <= real_params, (name, params - real_params)
        if inspect.isclass(mine):
            methods = {m for m in vars(mine) if not m.startswith("_")} - {"cuda_stream"}
            assert methods <= set(dir(real)), (name, methods - set(dir(real)))


def test_config_dict_carries_torch_cuda_fields_only_for_torch_cuda():
    cfg = cuda_config(precision="bf16", cuda_graphs=True, autocast=True)
    assert from_dict(cfg.to_dict()) == cfg
    assert "cuda_graphs" not in DeviceConfig(name="cpu").to_dict()  # other backends' dicts are unchanged


def test_time_model_converts_an_onnx_file_for_torch_cuda(cuda, tmp_path, small_onnx):
    from hwprune import api

    (tmp_path / "m.onnx").write_bytes(small_onnx)
    (tmp_path / "dev.json").write_text(json.dumps(cuda_config(precision="fp16").to_dict()))
    result = api.time_model(str(tmp_path / "m.onnx"), str(tmp_path / "dev.json"))
    assert result["timing"]["p50_ms"] == pytest.approx(COMPUTE_MS)
    assert result["timed_scope"] == TorchCudaRunner.timed_scope and result["model"] == str(tmp_path / "m.onnx")
    assert result["environment"]["build"]["precision"] == "fp16"
