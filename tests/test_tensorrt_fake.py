"""TrtRunner against fake tensorrt, pycuda and cuda-python modules that record every call.

No GPU or TensorRT is needed: the fakes stand in for the real APIs (same names and call
shapes as TensorRT 8.6 / 10 / 11, pycuda.driver and cuda.bindings.runtime) and share one fake
device with memory, a call log and a clock. The fake clock advances ``COMPUTE_MS`` per
enqueue and ``COPY_MS`` per copy, so what an event-timed interval contains is observable.
The fake engine computes ``output = relu(first input)``, enough to check that data travels
host -> device -> engine -> host through the right buffers.

The fake tensorrt has each major version's surface: from 11 the weak-typing BuilderFlags
(FP16, BF16, INT8...) and tensor dynamic ranges are absent, as they are in TensorRT 11. It
records every attribute that profilers/tensorrt.py itself reads from it (``trt.state.touched``),
and test_every_tensorrt_name_the_backend_touches_is_published checks those names against
NVIDIA's published API (tests/data/tensorrt_api.json, from tensorrt-stubs).

What the real libraries do is checked only by tests/test_tensorrt_real.py, on a GPU.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import os
import subprocess
import sys
import types
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from profilers.config import DeviceConfig
from profilers.errors import BackendUnavailable, ConfigError, ModelFileError, ProfilerError
from profilers.runners import make_runner
from profilers.tensorrt import TrtRunner, build_settings, engine_cache_dir, engine_cache_key

TRT10, TRT11 = "10.3.0", "11.4.0"
API_NAMES = os.path.join(os.path.dirname(__file__), "data", "tensorrt_api.json")

COMPUTE_MS = 0.5
COPY_MS = 0.125
GPU_NAME = "Fake GPU 9000"
ENGINE_MAGIC = b"FAKEENGINE"
STREAM_HANDLE = 0x5EED


# -- the fake device -------------------------------------------------------------------

class FakeGpu:
    """State shared by the fake modules: call log, clock (ms) and device memory."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.clock_ms = 0.0
        self.mem: dict[int, bytearray] = {}
        self.freed: list[int] = []
        self._next_ptr = 0x10000

    def log(self, call: str, /, **info) -> None:
        self.calls.append((call, info))

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]

    def count(self, name: str) -> int:
        return self.names().count(name)

    def alloc(self, nbytes: int) -> int:
        ptr = self._next_ptr
        self._next_ptr += 0x10000
        self.mem[ptr] = bytearray(nbytes)
        self.log("alloc", ptr=ptr, nbytes=nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        del self.mem[ptr]
        self.freed.append(ptr)
        self.log("free", ptr=ptr)

    def copy_in(self, ptr: int, data: bytes) -> None:
        self.mem[ptr][:len(data)] = data
        self.clock_ms += COPY_MS

    def copy_out(self, ptr: int, nbytes: int) -> bytes:
        self.clock_ms += COPY_MS
        return bytes(self.mem[ptr][:nbytes])

    def relu(self, src: int, dst: int, nbytes: int) -> None:
        x = np.frombuffer(bytes(self.mem[src][:nbytes]), dtype=np.float32)
        self.mem[dst][:nbytes] = np.maximum(x, 0).tobytes()
        self.clock_ms += COMPUTE_MS


# -- fake tensorrt ---------------------------------------------------------------------

BACKEND_FILE = os.path.join("profilers", "tensorrt.py")
# attributes the tests themselves hang on the fake module; not TensorRT's
TEST_ONLY = {"state", "cudart"}


def make_fake_tensorrt(gpu: FakeGpu, version: str = "10.3.0", bindings_api: bool = False,
                       build_ok: bool = True) -> types.ModuleType:
    major = int(version.split(".")[0])
    touched: set[tuple[str, str]] = set()

    def by_backend() -> bool:
        # two frames up: past this hook and the __getattribute__ that called it
        return sys._getframe(2).f_code.co_filename.endswith(BACKEND_FILE)

    class Touched(type):
        """Records class-level reads (enum values: BuilderFlag.FP16) made by the backend."""

        def __getattribute__(cls, name):
            if not name.startswith("_") and by_backend():
                touched.add((type.__getattribute__(cls, "_api"), name))
            return type.__getattribute__(cls, name)

    class Api(metaclass=Touched):
        """Base of the fake TensorRT classes: records instance reads made by the backend."""

        _api = "?"

        def __getattribute__(self, name):
            if not name.startswith("_") and by_backend():
                touched.add((type(self)._api, name))
            return object.__getattribute__(self, name)

    class Module(types.ModuleType):
        def __getattribute__(self, name):
            if (not name.startswith("_") or name == "__version__") and name not in TEST_ONLY and by_backend():
                touched.add(("<module>", name))
            return types.ModuleType.__getattribute__(self, name)

    trt = Module("tensorrt")
    trt.__version__ = version
    trt.state = SimpleNamespace(networks=[], configs=[], profiles=[], touched=touched)

    class Logger(Api):
        _api = "Logger"
        WARNING = "WARNING"

        def __init__(self, severity):
            self.min_severity = severity

    class NetworkDefinitionCreationFlag(Api):
        _api = "NetworkDefinitionCreationFlag"
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class BuilderFlag(Api):
        _api = "BuilderFlag"
        TF32 = "TF32"
        REFIT = "REFIT"

    if major < 11:  # TensorRT 11 removed every weak-typing precision flag
        for flag in ("FP16", "INT8") + (("BF16",) if major >= 9 else ()):
            setattr(BuilderFlag, flag, flag)

    class MemoryPoolType(Api):
        _api = "MemoryPoolType"
        WORKSPACE = "WORKSPACE"

    class DataType(Api):
        _api = "DataType"
        FLOAT = "FLOAT"
        HALF = "HALF"
        INT32 = "INT32"

    class LayerType(Api):
        _api = "LayerType"
        ACTIVATION = "ACTIVATION"
        ELEMENTWISE = "ELEMENTWISE"
        POOLING = "POOLING"
        CONCATENATION = "CONCATENATION"
        QUANTIZE = "QUANTIZE"
        DEQUANTIZE = "DEQUANTIZE"

    class TensorIOMode(Api):
        _api = "TensorIOMode"
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    np_types = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32}

    def nptype(dtype):
        return np_types[dtype]

    class Tensor(Api):
        _api = "ITensor"

        def __init__(self, name, shape, dtype=DataType.FLOAT):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype
            if major < 11:
                self.dynamic_range = None

    if major < 11:  # implicit quantization (dynamic ranges) went with TensorRT 11
        def set_dynamic_range(self, lo, hi):
            gpu.log("set_dynamic_range", name=self.name, range=(lo, hi))
            self.dynamic_range = (lo, hi)
            return True

        Tensor.set_dynamic_range = set_dynamic_range

    class Layer(Api):
        _api = "ILayer"

        def __init__(self, type_, inputs, outputs):
            self.type, self._in, self._out = type_, inputs, outputs
            self.num_inputs, self.num_outputs = len(inputs), len(outputs)

        def get_input(self, i):
            return self._in[i]

        def get_output(self, i):
            return self._out[i]

    class Network(Api):
        _api = "INetworkDefinition"

        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs, self.layers = [], [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class ParserError(Api):
        _api = "ParserError"

        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

    class OnnxParser(Api):
        _api = "OnnxParser"

        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse(self, data, path=None):
            gpu.log("parse", path=path, nbytes=len(data), sha=hashlib.sha256(bytes(data)).hexdigest())
            try:
                model = onnx.load_model_from_string(bytes(data))
                if not model.graph.node:
                    raise ValueError("empty graph")
            except Exception:
                self.errors.append(ParserError("Failed to parse ONNX model from buffer: invalid protobuf\n"
                                               "  (a second line that must not reach the user)"))
                self.errors.append(ParserError("ModelImporter.cpp:42: another error"))
                return False
            g, net = model.graph, self.network
            initializers = {i.name for i in g.initializer}
            tensors = {}
            for vi in g.input:
                if vi.name in initializers:
                    continue
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                tensors[vi.name] = Tensor(vi.name, dims)
                net.inputs.append(tensors[vi.name])
            kinds = {"Relu": LayerType.ACTIVATION, "Add": LayerType.ELEMENTWISE,
                     "MaxPool": LayerType.POOLING, "Concat": LayerType.CONCATENATION,
                     "QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE}
            for node in g.node:
                ins = [tensors[n] for n in node.input if n in tensors]
                outs = [tensors.setdefault(n, Tensor(n, net.inputs[0].shape)) for n in node.output]
                net.layers.append(Layer(kinds.get(node.op_type, node.op_type), ins, outs))
            net.outputs = [tensors[o.name] for o in g.output]
            return True

    class BuilderConfig(Api):
        _api = "IBuilderConfig"

        def __init__(self):
            self.flags = set()
            self.pool_limits = {}
            self.profiles = []

        def set_flag(self, flag):
            gpu.log("set_flag", flag=flag)
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool, nbytes):
            gpu.log("set_memory_pool_limit", pool=pool, nbytes=nbytes)
            self.pool_limits[pool] = nbytes

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return 0

    class OptimizationProfile(Api):
        _api = "IOptimizationProfile"

        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):
            gpu.log("set_shape", name=name, shapes=(tuple(min), tuple(opt), tuple(max)))
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class Builder(Api):
        _api = "Builder"

        def __init__(self, logger):
            gpu.log("Builder")

        def create_network(self, flags):
            gpu.log("create_network", flags=flags)
            net = Network(flags)
            trt.state.networks.append(net)
            return net

        def create_builder_config(self):
            cfg = BuilderConfig()
            trt.state.configs.append(cfg)
            return cfg

        def create_optimization_profile(self):
            profile = OptimizationProfile()
            trt.state.profiles.append(profile)
            return profile

        def build_serialized_network(self, network, config):
            gpu.log("build_serialized_network", flags=sorted(config.flags))
            if not build_ok:
                return None
            first_shape = list(network.inputs[0].shape)
            desc = {"inputs": [[t.name, list(t.shape), t.dtype] for t in network.inputs],
                    "outputs": [[t.name, first_shape, t.dtype] for t in network.outputs],
                    "flags": sorted(config.flags)}
            return bytearray(ENGINE_MAGIC + json.dumps(desc).encode())

    class _EngineBase(Api):
        _api = "ICudaEngine"

        def __init__(self, desc):
            self.io = [(n, True, tuple(s), d) for n, s, d in desc["inputs"]]
            self.io += [(n, False, tuple(s), d) for n, s, d in desc["outputs"]]
            self.flags = desc["flags"]

    class _ContextBase(Api):
        _api = "IExecutionContext"

        def __init__(self, engine):
            self.engine = engine
            self.input_shapes = {}
            self.addresses = {}

        def _shape(self, name):
            # fake semantics: every output has the shape of the first input
            first = self.engine.io[0]
            for n, is_input, shape, _ in self.engine.io:
                if n == name:
                    return self.input_shapes.get(n, shape) if is_input else self.input_shapes.get(first[0], first[2])
            raise KeyError(name)

        def _run(self, src, dst):
            out_name = next(n for n, is_input, _, _ in self.engine.io if not is_input)
            nbytes = int(np.prod(self._shape(out_name))) * 4
            gpu.relu(src, dst, nbytes)

    class Engine(_EngineBase):
        @property
        def num_io_tensors(self):
            return len(self.io)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def _find(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if self._find(name)[1] else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self._find(name)[2]

        def get_tensor_dtype(self, name):
            return self._find(name)[3]

        def create_execution_context(self):
            return Context(self)

    class Context(_ContextBase):
        def set_input_shape(self, name, shape):
            gpu.log("set_input_shape", name=name, shape=tuple(shape))
            self.input_shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self._shape(name)

        def set_tensor_address(self, name, ptr):
            gpu.log("set_tensor_address", name=name, ptr=ptr)
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            gpu.log("execute_async_v3", stream=stream_handle)
            names = [t[0] for t in self.engine.io]
            in_name = names[0]
            out_name = next(n for n, is_input, _, _ in self.engine.io if not is_input)
            self._run(self.addresses[in_name], self.addresses[out_name])
            return True

    class LegacyEngine(_EngineBase):
        """TensorRT 8.x bindings API only: no num_io_tensors, no execute_async_v3."""

        @property
        def num_bindings(self):
            return len(self.io)

        def get_binding_name(self, i):
            return self.io[i][0]

        def binding_is_input(self, i):
            return self.io[i][1]

        def get_binding_shape(self, i):
            return self.io[i][2]

        def get_binding_dtype(self, i):
            return self.io[i][3]

        def create_execution_context(self):
            return LegacyContext(self)

    class LegacyContext(_ContextBase):
        def set_binding_shape(self, i, shape):
            gpu.log("set_binding_shape", index=i, shape=tuple(shape))
            self.input_shapes[self.engine.io[i][0]] = tuple(shape)
            return True

        def get_binding_shape(self, i):
            return self._shape(self.engine.io[i][0])

        def execute_async_v2(self, bindings, stream_handle):
            gpu.log("execute_async_v2", bindings=list(bindings), stream=stream_handle)
            out_index = next(i for i, t in enumerate(self.engine.io) if not t[1])
            self._run(bindings[0], bindings[out_index])
            return True

    class Runtime(Api):
        _api = "Runtime"

        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            gpu.log("deserialize_cuda_engine", nbytes=len(data))
            if not data.startswith(ENGINE_MAGIC):
                return None
            desc = json.loads(data[len(ENGINE_MAGIC):])
            return LegacyEngine(desc) if bindings_api else Engine(desc)

    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, DataType, LayerType,
                TensorIOMode, OnnxParser, Builder, Runtime, nptype):
        setattr(trt, obj.__name__, obj)
    # every fake class, the ones only reachable through calls too, for the surface test
    trt.state.classes = {c.__name__: c for c in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType,
                                                 DataType, LayerType, TensorIOMode, Tensor, Layer, Network,
                                                 ParserError, OnnxParser, BuilderConfig, OptimizationProfile,
                                                 Builder, Engine, Context, Runtime)}
    return trt


# -- fake pycuda.driver ------------------------------------------------------------------

def make_fake_pycuda(gpu: FakeGpu, init_error: Exception | None = None) -> tuple[types.ModuleType, types.ModuleType]:
    pkg = types.ModuleType("pycuda")
    drv = types.ModuleType("pycuda.driver")
    pkg.driver = drv

    def init():
        gpu.log("cuda.init")
        if init_error is not None:
            raise init_error

    class Context:
        def push(self):
            gpu.log("ctx.push")

        def pop(self):
            gpu.log("ctx.pop")

        def detach(self):
            gpu.log("ctx.detach")

    class Device:
        def __init__(self, index):
            self.index = index

        def name(self):
            return GPU_NAME

        def retain_primary_context(self):
            gpu.log("retain_primary_context", device=self.index)
            return Context()

    class DeviceAllocation:
        def __init__(self, ptr):
            self.ptr = ptr

        def __int__(self):
            return self.ptr

        def free(self):
            gpu.free(self.ptr)

    def mem_alloc(nbytes):
        return DeviceAllocation(gpu.alloc(nbytes))

    def pagelocked_empty(shape, dtype):
        gpu.log("pagelocked_empty", shape=tuple(shape))
        return np.zeros(shape, dtype)

    def memcpy_htod_async(dest, src, stream=None):
        gpu.log("htod", ptr=int(dest), stream=stream)
        gpu.copy_in(int(dest), np.ascontiguousarray(src).tobytes())

    def memcpy_dtoh_async(dest, src, stream=None):
        gpu.log("dtoh", ptr=int(src), stream=stream)
        data = gpu.copy_out(int(src), dest.nbytes)
        dest[...] = np.frombuffer(data, dtype=dest.dtype).reshape(dest.shape)

    class Stream:
        handle = STREAM_HANDLE

        def synchronize(self):
            gpu.log("stream.synchronize")

    class Event:
        def __init__(self):
            self.t_ms = None

        def record(self, stream=None):
            gpu.log("event.record", event=id(self), stream=stream)
            self.t_ms = gpu.clock_ms

        def synchronize(self):
            gpu.log("event.synchronize", event=id(self))

        def time_till(self, other):
            gpu.log("event.time_till")
            return other.t_ms - self.t_ms

    for obj in (init, Device, mem_alloc, pagelocked_empty, memcpy_htod_async, memcpy_dtoh_async,
                Stream, Event):
        setattr(drv, obj.__name__, obj)
    return pkg, drv


# -- fake cuda-python (cuda.bindings.runtime) ----------------------------------------------

def make_fake_cudart(gpu: FakeGpu, fail: str | None = None) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.Enum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.Enum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    ok = cudaError_t.cudaSuccess
    host_blocks: dict[int, np.ndarray] = {}

    class cudaStream_t:
        def __int__(self):
            return STREAM_HANDLE

    class cudaEvent_t:
        t_ms = None

    def cudaSetDevice(index):
        gpu.log("cudaSetDevice", device=index)
        return (ok,)

    def cudaGetDeviceProperties(index):
        return (ok, SimpleNamespace(name=GPU_NAME.encode() + b"\0\0\0"))

    def cudaMalloc(nbytes):
        if fail == "cudaMalloc":
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        return (ok, gpu.alloc(nbytes))

    def cudaFree(ptr):
        gpu.free(int(ptr))
        return (ok,)

    def cudaMallocHost(nbytes):
        block = np.zeros(nbytes, np.uint8)
        host_blocks[block.ctypes.data] = block
        gpu.log("cudaMallocHost", nbytes=nbytes)
        return (ok, block.ctypes.data)

    def cudaFreeHost(ptr):
        host_blocks.pop(int(ptr))
        gpu.log("cudaFreeHost")
        return (ok,)

    def cudaStreamCreate():
        return (ok, cudaStream_t())

    def cudaStreamDestroy(stream):
        gpu.log("cudaStreamDestroy")
        return (ok,)

    def cudaStreamSynchronize(stream):
        gpu.log("stream.synchronize")
        return (ok,)

    def cudaEventCreate():
        return (ok, cudaEvent_t())

    def cudaEventDestroy(event):
        gpu.log("cudaEventDestroy")
        return (ok,)

    def cudaEventRecord(event, stream):
        gpu.log("event.record", event=id(event), stream=stream)
        event.t_ms = gpu.clock_ms
        return (ok,)

    def cudaEventSynchronize(event):
        gpu.log("event.synchronize", event=id(event))
        return (ok,)

    def cudaEventElapsedTime(start, end):
        return (ok, end.t_ms - start.t_ms)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            gpu.log("htod", ptr=int(dst), stream=stream)
            gpu.copy_in(int(dst), ctypes.string_at(src, count))
        else:
            gpu.log("dtoh", ptr=int(src), stream=stream)
            ctypes.memmove(dst, gpu.copy_out(int(src), count), count)
        return (ok,)

    for obj in (cudaError_t, cudaMemcpyKind, cudaSetDevice, cudaGetDeviceProperties, cudaMalloc, cudaFree,
                cudaMallocHost, cudaFreeHost, cudaStreamCreate, cudaStreamDestroy, cudaStreamSynchronize,
                cudaEventCreate, cudaEventDestroy, cudaEventRecord, cudaEventSynchronize,
                cudaEventElapsedTime, cudaMemcpyAsync):
        setattr(rt, obj.__name__, obj)
    rt.host_blocks = host_blocks
    return rt


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture
def gpu() -> FakeGpu:
    return FakeGpu()


@pytest.fixture
def install(monkeypatch, gpu):
    """install(...) puts fake tensorrt and CUDA bindings in sys.modules; returns the fake trt."""

    def _install(cuda: str = "pycuda", init_error: Exception | None = None, cudart_fail: str | None = None,
                 **trt_options):
        trt = make_fake_tensorrt(gpu, **trt_options)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)  # None: "import name" raises ImportError
        if cuda == "pycuda":
            pkg, drv = make_fake_pycuda(gpu, init_error)
            monkeypatch.setitem(sys.modules, "pycuda", pkg)
            monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
        elif cuda == "cuda-python":
            rt = make_fake_cudart(gpu, cudart_fail)
            cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
            cuda_pkg.bindings, bindings.runtime = bindings, rt
            monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
            monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
            monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
            trt.cudart = rt
        return trt

    return _install


def relu_onnx_bytes(batch: int | str = "N", features: int = 4) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, features])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def relu_onnx(tmp_path) -> str:
    path = tmp_path / "relu.onnx"
    path.write_bytes(relu_onnx_bytes())
    return str(path)


def trt_config(tmp_path, **fields) -> DeviceConfig:
    base = dict(name="fake-gpu", backend="tensorrt", engine_cache=str(tmp_path / "engines"),
                warmup=1, min_repeats=3, max_repeats=20, max_seconds=0.05)
    base.update(fields)
    return DeviceConfig(**base)


def between_events(gpu: FakeGpu) -> list[str]:
    """Names of the calls between the last two event records."""
    names = gpu.names()
    records = [i for i, n in enumerate(names) if n == "event.record"]
    return names[records[-2] + 1:records[-1]]


# -- building ----------------------------------------------------------------------------

@pytest.mark.parametrize("precision, flags", [("fp32", set()), ("fp16", {"FP16"}), ("bf16", {"BF16"}),
                                              ("int8", {"INT8", "FP16"})])
def test_precision_sets_builder_flags(install, gpu, tmp_path, relu_onnx, precision, flags):
    trt = install()
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision=precision)):
        pass
    assert trt.state.configs[-1].flags == flags
    ranged = {info["name"]: info["range"] for name, info in gpu.calls if name == "set_dynamic_range"}
    if precision == "int8":
        # a placeholder range on every activation, as trtexec without calibration
        assert ranged == {"x": (-2.0, 2.0), "y": (-4.0, 4.0)}
    else:
        assert ranged == {}


def test_workspace_limit_is_the_config_workspace(install, tmp_path, relu_onnx):
    trt = install()
    with TrtRunner(relu_onnx, trt_config(tmp_path, workspace_mb=256)):
        pass
    assert trt.state.configs[-1].pool_limits == {"WORKSPACE": 256 * 1024 * 1024}


def test_network_is_explicit_batch_before_trt10(install, gpu, tmp_path, relu_onnx):
    install(version="8.6.1")
    with TrtRunner(relu_onnx, trt_config(tmp_path)):
        pass
    assert [info["flags"] for name, info in gpu.calls if name == "create_network"] == [1]


def test_network_has_no_creation_flags_from_trt10(install, gpu, tmp_path, relu_onnx):
    install(version="10.3.0")
    with TrtRunner(relu_onnx, trt_config(tmp_path)):
        pass
    assert [info["flags"] for name, info in gpu.calls if name == "create_network"] == [0]


def test_dynamic_batch_gets_a_profile_and_the_config_batch(install, gpu, tmp_path, relu_onnx):
    trt = install()
    with TrtRunner(relu_onnx, trt_config(tmp_path, batch_size=8)) as r:
        assert r.inputs[0].shape == (8, 4)
        out = r.infer()
    assert trt.state.profiles[-1].shapes == {"x": ((8, 4), (8, 4), (8, 4))}
    assert ("set_input_shape", {"name": "x", "shape": (8, 4)}) in gpu.calls
    assert out["y"].shape == (8, 4)


def test_static_model_needs_no_profile(install, gpu, tmp_path):
    trt = install()
    with TrtRunner(relu_onnx_bytes(batch=2), trt_config(tmp_path, batch_size=8)) as r:
        assert r.inputs[0].shape == (2, 4)
    assert trt.state.profiles == []
    assert gpu.count("set_input_shape") == 0


def test_parse_from_file_passes_its_path_for_external_weights(install, gpu, tmp_path, relu_onnx):
    install()
    with TrtRunner(relu_onnx, trt_config(tmp_path)):
        pass
    assert [info["path"] for name, info in gpu.calls if name == "parse"] == [relu_onnx]


# -- engine cache ------------------------------------------------------------------------

def test_engine_cache_miss_then_hit(install, gpu, tmp_path, relu_onnx):
    install()
    cfg = trt_config(tmp_path)
    with TrtRunner(relu_onnx, cfg) as first:
        assert first.engine_cache_hit is False
        assert first.engine_path.is_file()
        assert first.engine_path.parent == tmp_path / "engines"
    assert gpu.count("build_serialized_network") == 1
    gpu.calls.clear()
    with TrtRunner(relu_onnx, cfg) as second:
        assert second.engine_cache_hit is True
        assert second.engine_path == first.engine_path
        assert second.time_once_ms() == pytest.approx(COMPUTE_MS)
    assert gpu.count("build_serialized_network") == 0
    assert gpu.count("parse") == 0


def test_engine_cache_is_keyed_by_precision(install, gpu, tmp_path, relu_onnx):
    install()
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp32")) as fp32:
        pass
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")) as fp16:
        assert fp16.engine_cache_hit is False
    assert fp32.engine_path != fp16.engine_path
    assert gpu.count("build_serialized_network") == 2
    assert len(list((tmp_path / "engines").glob("*.engine"))) == 2


@pytest.mark.parametrize("change", [
    {"onnx_bytes": relu_onnx_bytes(features=5)}, {"trt_version": "10.4.0"}, {"gpu_name": "Other GPU"},
    {"precision": "int8"}, {"batch_size": 2}, {"workspace_mb": 2048},
    {"build": {"route": "strongly-typed", "onnx_conversion": {"converter": "x", "version": "1.16.0"}}},
    {"build": {"route": "strongly-typed", "onnx_conversion": {"converter": "x", "version": "1.17.0"}}},
])
def test_engine_cache_key_covers_every_field(change):
    base = dict(onnx_bytes=relu_onnx_bytes(), trt_version="10.3.0", gpu_name=GPU_NAME, precision="fp16",
                batch_size=1, workspace_mb=1024)
    key = engine_cache_key(base.pop("onnx_bytes"), **base)
    assert key == engine_cache_key(relu_onnx_bytes(), **base)  # deterministic
    changed = {**base, "onnx_bytes": relu_onnx_bytes(), **change}
    assert engine_cache_key(changed.pop("onnx_bytes"), **changed) != key


def test_corrupt_cache_entry_is_rebuilt(install, gpu, tmp_path, relu_onnx):
    install()
    cfg = trt_config(tmp_path)
    with TrtRunner(relu_onnx, cfg) as first:
        path = first.engine_path
    path.write_bytes(b"truncated engine")
    gpu.calls.clear()
    with TrtRunner(relu_onnx, cfg) as second:
        assert second.engine_cache_hit is False
    assert gpu.count("build_serialized_network") == 1
    assert path.read_bytes().startswith(ENGINE_MAGIC)


def test_default_engine_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = DeviceConfig(name="gpu", backend="tensorrt")
    assert engine_cache_dir(cfg) == tmp_path / ".cache" / "hwprune" / "engines"
    assert engine_cache_dir(cfg.replace(engine_cache="~/engines")) == tmp_path / "engines"


# -- timing ------------------------------------------------------------------------------

def test_time_once_ms_is_compute_only_between_events(install, gpu, tmp_path, relu_onnx):
    install()
    with TrtRunner(relu_onnx, trt_config(tmp_path)) as r:
        assert r.timed_scope == "GPU compute (CUDA events around enqueue)"
        addresses_bound = gpu.count("set_tensor_address")
        assert r.time_once_ms() == pytest.approx(COMPUTE_MS)
        assert between_events(gpu) == ["execute_async_v3"]
        assert gpu.names()[-2:] == ["event.synchronize", "event.time_till"]  # waits on the end event
        assert ("execute_async_v3", {"stream": STREAM_HANDLE}) in gpu.calls
        r.time_once_ms()
        assert gpu.count("set_tensor_address") == addresses_bound == 2  # bound once, in activate


def test_end_to_end_includes_the_copies(install, gpu, tmp_path, relu_onnx):
    install()
    with TrtRunner(relu_onnx, trt_config(tmp_path)) as r:
        assert r.time_end_to_end_once_ms() == pytest.approx(COMPUTE_MS + 2 * COPY_MS)
        assert between_events(gpu) == ["htod", "execute_async_v3", "dtoh"]


def test_extra_timings_measures_end_to_end_with_the_config_methodology(install, gpu, tmp_path, relu_onnx):
    install()
    cfg = trt_config(tmp_path, warmup=2, min_repeats=5, max_repeats=5)
    with TrtRunner(relu_onnx, cfg) as r:
        compute = r.measure()
        gpu.calls.clear()
        extra = r.extra_timings()
    assert set(extra) == {"end_to_end"}
    e2e = extra["end_to_end"]
    assert compute.p50_ms == pytest.approx(COMPUTE_MS)
    assert e2e.p50_ms == pytest.approx(COMPUTE_MS + 2 * COPY_MS)
    assert e2e.n == 5
    assert gpu.count("htod") == gpu.count("execute_async_v3") == 2 + 5  # warm-up + timed


def test_extra_timings_needs_an_active_runner(install, tmp_path, relu_onnx):
    install()
    with pytest.raises(RuntimeError, match="not active"):
        TrtRunner(relu_onnx, trt_config(tmp_path)).extra_timings()


# -- inference ---------------------------------------------------------------------------

def test_infer_copies_in_runs_and_copies_out(install, gpu, tmp_path, relu_onnx):
    install()
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)
    with TrtRunner(relu_onnx, trt_config(tmp_path)) as r:
        out = r.infer({"x": x})
        default = r.infer()
    assert set(out) == {"y"}
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
    assert default["y"].shape == (1, 4) and (default["y"] >= 0).all()


def test_infer_rejects_bad_feeds(install, tmp_path, relu_onnx):
    install()
    with TrtRunner(relu_onnx, trt_config(tmp_path)) as r:
        with pytest.raises(ValueError, match="shape"):
            r.infer({"x": np.zeros((3, 4), np.float32)})
        with pytest.raises(ValueError, match="unknown input"):
            r.infer({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)})


def test_bindings_api_fallback_uses_execute_async_v2(install, gpu, tmp_path, relu_onnx):
    install(version="8.4.3", bindings_api=True)
    x = np.array([[1.0, -1.0, 0.5, -0.5]], dtype=np.float32)
    with TrtRunner(relu_onnx, trt_config(tmp_path, batch_size=1)) as r:
        assert r.time_once_ms() == pytest.approx(COMPUTE_MS)
        np.testing.assert_array_equal(r.infer({"x": x})["y"], np.maximum(x, 0))
    assert gpu.count("execute_async_v3") == 0
    assert gpu.count("set_tensor_address") == 0
    call = next(info for name, info in gpu.calls if name == "execute_async_v2")
    assert len(call["bindings"]) == 2 and call["stream"] == STREAM_HANDLE
    assert ("set_binding_shape", {"index": 0, "shape": (1, 4)}) in gpu.calls


def test_cuda_python_is_used_without_pycuda(install, gpu, tmp_path, relu_onnx):
    trt = install(cuda="cuda-python")
    x = np.array([[-2.0, 2.0, -0.25, 0.25]], dtype=np.float32)
    with TrtRunner(relu_onnx, trt_config(tmp_path)) as r:
        assert r.cuda_bindings == "cuda-python"
        assert r.gpu_name == GPU_NAME
        assert r.time_once_ms() == pytest.approx(COMPUTE_MS)
        assert r.time_end_to_end_once_ms() == pytest.approx(COMPUTE_MS + 2 * COPY_MS)
        np.testing.assert_array_equal(r.infer({"x": x})["y"], np.maximum(x, 0))
        allocated = [info["ptr"] for name, info in gpu.calls if name == "alloc"]
    assert sorted(gpu.freed) == sorted(allocated)
    assert trt.cudart.host_blocks == {}  # pinned host buffers freed
    assert gpu.count("cudaEventDestroy") == 2 and gpu.count("cudaStreamDestroy") == 1


def test_cuda_python_error_is_one_line_and_cleans_up(install, gpu, tmp_path, relu_onnx):
    trt = install(cuda="cuda-python", cudart_fail="cudaMalloc")
    with pytest.raises(ProfilerError, match="cudaErrorMemoryAllocation") as err:
        TrtRunner(relu_onnx, trt_config(tmp_path)).activate()
    assert "\n" not in str(err.value)
    assert trt.cudart.host_blocks == {}
    assert gpu.count("cudaStreamDestroy") == 1


def test_deactivate_frees_buffers_and_releases_the_context(install, gpu, tmp_path, relu_onnx):
    install()
    r = TrtRunner(relu_onnx, trt_config(tmp_path))
    with r:
        allocated = [info["ptr"] for name, info in gpu.calls if name == "alloc"]
        assert len(allocated) == 2
    assert sorted(gpu.freed) == sorted(allocated)
    assert gpu.names()[-2:] == ["ctx.pop", "ctx.detach"]
    assert r._engine is None and r._context is None and r.is_active is False


# -- errors ------------------------------------------------------------------------------

def test_parse_failure_is_a_one_line_model_file_error(install, gpu, tmp_path):
    install()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelFileError) as err:
        TrtRunner(str(bad), trt_config(tmp_path)).activate()
    message = str(err.value)
    assert "\n" not in message
    assert "bad.onnx" in message and "invalid protobuf" in message and "(and 1 more)" in message
    assert gpu.names()[-2:] == ["ctx.pop", "ctx.detach"]  # the failed activation cleaned up


def test_build_failure_is_a_clear_error(install, gpu, tmp_path, relu_onnx):
    install(build_ok=False)
    with pytest.raises(ModelFileError, match="could not build an engine .* fp16") as err:
        TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")).activate()
    assert "\n" not in str(err.value)
    assert list((tmp_path / "engines").glob("*.engine")) == []  # nothing cached from a failed build
    assert "ctx.pop" in gpu.names()


def test_missing_model_file(install, tmp_path):
    install()
    with pytest.raises(ModelFileError, match="not found"):
        TrtRunner(str(tmp_path / "absent.onnx"), trt_config(tmp_path)).activate()


def test_missing_tensorrt_says_what_to_install(monkeypatch, tmp_path, relu_onnx):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable) as err:
        TrtRunner(relu_onnx, trt_config(tmp_path)).activate()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the tensorrt backend needs TensorRT and pycuda: pip install 'hwprune[tensorrt]'")


def test_missing_pycuda_and_cuda_python_names_both(install, tmp_path, relu_onnx):
    install(cuda="none")
    with pytest.raises(BackendUnavailable) as err:
        TrtRunner(relu_onnx, trt_config(tmp_path)).activate()
    message = str(err.value)
    assert "pycuda" in message and "cuda-python" in message and "\n" not in message


def test_no_gpu_is_backend_unavailable(install, tmp_path, relu_onnx):
    install(init_error=RuntimeError("cuInit failed: no CUDA-capable device is detected\ndetails"))
    with pytest.raises(BackendUnavailable, match="no usable CUDA GPU.*no CUDA-capable device") as err:
        TrtRunner(relu_onnx, trt_config(tmp_path)).activate()
    assert "\n" not in str(err.value)


def test_make_runner_picks_tensorrt(tmp_path, relu_onnx):
    runner = make_runner(relu_onnx, trt_config(tmp_path))
    assert isinstance(runner, TrtRunner)
    assert runner.is_active is False  # nothing imported or built until activation


def test_module_imports_without_tensorrt_or_cuda():
    code = ("import sys, profilers.tensorrt; "
            "heavy = [m for m in ('tensorrt', 'pycuda', 'cuda', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- TensorRT 11: strongly typed, the precision in the ONNX ---------------------------------

def fake_float16_converter(monkeypatch, calls: list) -> None:
    """onnxconverter_common.float16 with the real entry point; it marks the model it converts."""
    pkg, mod = types.ModuleType("onnxconverter_common"), types.ModuleType("onnxconverter_common.float16")

    def convert_float_to_float16(model, min_positive_val=1e-7, max_finite_val=1e4, keep_io_types=False,
                                 disable_shape_infer=False, op_block_list=None, node_block_list=None,
                                 check_fp16_ready=True):
        calls.append({"keep_io_types": keep_io_types})
        converted = onnx.ModelProto()
        converted.CopyFrom(model)
        converted.doc_string = "converted to float16"
        return converted

    mod.convert_float_to_float16 = convert_float_to_float16
    pkg.float16 = mod
    monkeypatch.setitem(sys.modules, "onnxconverter_common", pkg)
    monkeypatch.setitem(sys.modules, "onnxconverter_common.float16", mod)


def qdq_relu_onnx_bytes() -> bytes:
    """x -> QuantizeLinear -> DequantizeLinear -> Relu: explicit quantization, as ModelOpt writes it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.05])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_relu", [x], [y], initializer=[scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_trt11_fake_has_the_trt11_surface(install):
    eleven, ten = install(version=TRT11), make_fake_tensorrt(FakeGpu(), version=TRT10)
    for flag in ("FP16", "BF16", "INT8"):
        assert hasattr(ten.BuilderFlag, flag) and not hasattr(eleven.BuilderFlag, flag)
    for name in ("IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator"):
        assert not hasattr(eleven, name)
    assert not hasattr(eleven.state.classes["Tensor"], "set_dynamic_range")
    assert hasattr(ten.state.classes["Tensor"], "set_dynamic_range")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trt11_sets_no_precision_flag(install, monkeypatch, gpu, tmp_path, relu_onnx, precision):
    trt = install(version=TRT11)
    fake_float16_converter(monkeypatch, [])
    model = relu_onnx if precision != "int8" else qdq_relu_onnx_bytes()
    with TrtRunner(model, trt_config(tmp_path, precision=precision)) as r:
        assert r.time_once_ms() == pytest.approx(COMPUTE_MS)
        assert r.build_settings["route"] == "strongly-typed"
    assert trt.state.configs[-1].flags == set()
    assert gpu.count("set_flag") == gpu.count("set_dynamic_range") == 0
    assert [info["flags"] for name, info in gpu.calls if name == "create_network"] == [0]


def test_trt11_fp16_converts_the_onnx_before_the_build(install, monkeypatch, gpu, tmp_path, relu_onnx):
    install(version=TRT11)
    calls: list = []
    fake_float16_converter(monkeypatch, calls)
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")) as r:
        conversion = r.build_settings["onnx_conversion"]
    assert calls == [{"keep_io_types": True}]
    parsed = [info for name, info in gpu.calls if name == "parse"]
    original = hashlib.sha256(relu_onnx_bytes()).hexdigest()
    assert len(parsed) == 1 and parsed[0]["sha"] != original and parsed[0]["path"] is None
    assert conversion["converter"].startswith("onnxconverter-common") and conversion["keep_io_types"] is True
    # a cache hit skips the conversion: the key is over the exported ONNX and the settings
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")) as again:
        assert again.engine_cache_hit is True
    assert len(calls) == 1


def test_trt10_fp16_does_not_convert(install, monkeypatch, tmp_path, relu_onnx):
    install(version=TRT10)
    calls: list = []
    fake_float16_converter(monkeypatch, calls)
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")) as r:
        assert r.build_settings == {"route": "builder-flags", "precision": "fp16", "workspace_mb": 1024,
                                    "builder_flags": ["FP16"]}
    assert calls == []


def test_trt11_fp16_without_the_converter_says_what_to_install(install, monkeypatch, tmp_path, relu_onnx):
    install(version=TRT11)
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(BackendUnavailable) as err:
        TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")).activate()
    assert "pip install 'hwprune[fp16]'" in str(err.value) and "\n" not in str(err.value)


def test_trt11_int8_without_qdq_is_one_clear_error(install, gpu, tmp_path, relu_onnx):
    install(version=TRT11)
    with pytest.raises(ModelFileError) as err:
        TrtRunner(relu_onnx, trt_config(tmp_path, precision="int8")).activate()
    message = str(err.value)
    assert "Q/DQ" in message and "modelopt" in message and "precision fp16" in message and "\n" not in message
    assert gpu.count("build_serialized_network") == 0


def test_trt11_bf16_is_refused_with_what_to_use(install, tmp_path, relu_onnx):
    install(version=TRT11)
    with pytest.raises(ConfigError, match="torch-cuda") as err:
        TrtRunner(relu_onnx, trt_config(tmp_path, precision="bf16")).activate()
    assert "\n" not in str(err.value)


def test_engines_of_the_two_routes_never_share_a_cache_entry(install, monkeypatch, tmp_path, relu_onnx):
    fake_float16_converter(monkeypatch, [])
    install(version="10.99.0")
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")) as ten:
        pass
    install(version="11.0.0")
    with TrtRunner(relu_onnx, trt_config(tmp_path, precision="fp16")) as eleven:
        assert eleven.engine_cache_hit is False
    assert ten.engine_path != eleven.engine_path


def test_build_settings_name_the_route_and_the_conversion():
    assert build_settings("int8", "10.3.0", 512) == {"route": "builder-flags", "precision": "int8",
                                                     "workspace_mb": 512, "builder_flags": ["INT8", "FP16"]}
    assert build_settings("fp32", "11.4.0", 512)["onnx_conversion"] is None
    assert build_settings("int8", "11.4.0", 512)["onnx_conversion"]["requires"].startswith("Q/DQ")
    assert build_settings("fp16", "11.4.0", 512)["onnx_conversion"]["keep_io_types"] is True


def test_real_float16_converter_output_is_what_gets_built(install, gpu, tmp_path):
    """With onnxconverter-common installed, its output (fp16 weights, fp32 I/O) is what TensorRT 11 parses."""
    pytest.importorskip("onnxconverter_common")
    from profilers.tensorrt import convert_to_fp16

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, -1.0, 2.0, 0.5])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "mul", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    converted = onnx.load_model_from_string(convert_to_fp16(model.SerializeToString(), None, "mul"))
    assert converted.graph.initializer[0].data_type == TensorProto.FLOAT16
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O kept fp32


# -- every TensorRT name the backend uses exists in NVIDIA's published API ------------------

def _published(version: str) -> tuple[set[str], dict[str, set[str]]]:
    with open(API_NAMES) as f:
        doc = json.load(f)[version]
    return set(doc["module"]), {c: set(m) for c, m in doc["classes"].items()}


def _unpublished(touched, version: str) -> list[str]:
    module, classes = _published(version)
    missing = []
    for owner, name in sorted(touched):
        known = module if owner == "<module>" else classes.get(owner)
        if known is None or name not in known:
            missing.append(f"{owner}.{name}")
    return missing


@pytest.mark.parametrize("version", [TRT10, TRT11])
@pytest.mark.parametrize("cuda", ["pycuda", "cuda-python"])
def test_every_tensorrt_name_the_backend_touches_is_published(install, monkeypatch, tmp_path, version, cuda):
    trt = install(version=version, cuda=cuda)
    fake_float16_converter(monkeypatch, [])
    major = version.split(".")[0]
    precisions = ["fp32", "fp16", "bf16", "int8"] if major == "10" else ["fp32", "fp16", "int8"]
    for precision in precisions:
        model = qdq_relu_onnx_bytes() if (precision == "int8" and major == "11") else relu_onnx_bytes()
        cfg = trt_config(tmp_path / precision, precision=precision)
        for _ in range(2):  # a build, then a cache hit
            with TrtRunner(model, cfg) as r:
                r.time_once_ms()
                r.time_end_to_end_once_ms()
                r.infer()
    touched = trt.state.touched
    assert ("IExecutionContext", "execute_async_v3") in touched and ("<module>", "__version__") in touched
    assert _unpublished(touched, major) == []


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_the_fake_has_no_name_tensorrt_lacks(version):
    """The fake itself invents nothing: each public class-level name it defines is published."""
    trt = make_fake_tensorrt(FakeGpu(), version=version)
    defined = {("<module>", n) for n in dir(trt) if n not in TEST_ONLY and (n == "__version__" or not n.startswith("_"))}
    for cls in trt.state.classes.values():
        owner = type.__getattribute__(cls, "_api")
        defined |= {(owner, m) for m in dir(cls) if not m.startswith("_") and m != "mro"}
    assert ("ICudaEngine", "num_io_tensors") in defined and ("BuilderFlag", "TF32") in defined
    assert _unpublished(defined, version.split(".")[0]) == []


def test_check_backend_says_what_is_missing_before_any_work(install, gpu, monkeypatch, tmp_path):
    from profilers.runners import check_backend

    cfg = trt_config(tmp_path)
    install()
    check_backend(cfg)
    assert gpu.calls == []  # nothing built, no CUDA initialised
    install(cuda="none")
    with pytest.raises(BackendUnavailable, match="pycuda or NVIDIA's cuda-python"):
        check_backend(cfg)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="needs TensorRT"):
        check_backend(cfg)
