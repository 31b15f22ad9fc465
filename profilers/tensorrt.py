"""The TensorRT timing backend: ONNX to a cached engine, timed with CUDA events on one stream.

``TrtRunner`` builds (or loads from the engine cache) a TensorRT engine for an ONNX model at
the config's precision, batch size and workspace, allocates pinned host and device buffers
once, and times one ``execute_async_v3`` between two CUDA events recorded on its stream:
GPU compute only, no copies (trtexec's "GPU Compute Time"). For a model so small that the GPU
idles while the host enqueues its kernels, that wait falls inside the interval too, as it
would in deployment. The end-to-end figure (host-to-device copies + compute +
device-to-host copies, also timed by events) is reported separately by ``extra_timings``.

Two build routes, keyed on the installed TensorRT's major version (``build_settings``):

- TensorRT <= 10, "builder-flags": the ONNX is parsed as exported and the precision is a
  builder flag (FP16, BF16, INT8 with placeholder ranges), as trtexec --fp16/--int8 did.
- TensorRT >= 11, "strongly-typed": the weak-typing flags are gone and every network is
  strongly typed, so the precision must be in the ONNX before the build. fp16 converts it
  with onnxconverter-common's float16 converter (I/O kept fp32, like trtexec's I/O);
  int8 needs an ONNX that already has Q/DQ nodes; bf16 is refused with what to use instead.

The route, the converter and its settings are part of the engine-cache key and of the
environment manifest (``build`` field), so an engine or a LUT row built one way is never
mistaken for one built another way.

TensorRT and the CUDA bindings are imported lazily, in ``activate``: this module imports on a
machine without them. Memory, streams and events go through pycuda, or through NVIDIA's
cuda-python (>= 12.6 as ``cuda.bindings.runtime``; 13 removed the old ``cuda.cudart``
shim, which is still tried for older installs) when pycuda is absent.

Example:
    >>> from profilers.config import load_device_config
    >>> from profilers.runners import make_runner
    >>> cfg = load_device_config("jetson-orin-trt-fp16")  # doctest: +SKIP
    >>> with make_runner("model.onnx", cfg) as r:  # doctest: +SKIP
    ...     compute = r.measure()
    ...     end_to_end = r.extra_timings()["end_to_end"]
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from profilers.config import DeviceConfig
from profilers.errors import BackendUnavailable, ConfigError, ModelFileError, ProfilerError
from profilers.fileio import atomic_write_bytes
from profilers.runner import BaseRunner, InputSpec, random_inputs
from profilers.stats import TimingStats, measure

INSTALL_HINT = ("the tensorrt backend needs TensorRT and pycuda: pip install 'hwprune[tensorrt]' "
                "(or 'hwprune[cuda-python]' to use NVIDIA's cuda-python instead of pycuda)")
CUDA_BINDINGS_HINT = ("the tensorrt backend needs pycuda or NVIDIA's cuda-python for GPU memory and "
                      "timing, and neither is installed: pip install 'hwprune[tensorrt]' (pycuda) "
                      "or pip install 'hwprune[cuda-python]'")

FP16_CONVERTER_HINT = ("precision fp16 on TensorRT 11 converts the ONNX to fp16 before the build and needs "
                       "onnxconverter-common: pip install 'hwprune[fp16]'")
INT8_QDQ_HINT = ("precision int8 on TensorRT 11 needs an ONNX with Q/DQ (QuantizeLinear/DequantizeLinear) nodes, "
                 "since TensorRT 11 has no implicit INT8: quantize the model first (e.g. python -m "
                 "modelopt.onnx.quantization --onnx_path model.onnx) or use precision fp16")
BF16_HINT = ("precision bf16 is not available with TensorRT 11 here (hwprune converts ONNX to fp16 only): use "
             "precision fp16, or the torch-cuda backend for bf16")

DEFAULT_ENGINE_CACHE = "~/.cache/hwprune/engines"

# The builder flags of each precision before TensorRT 11. INT8 adds FP16, as trtexec --int8
# --fp16: layers without an INT8 kernel fall back to FP16 rather than FP32, as deployed.
_BUILDER_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16")}
# onnxconverter-common's float16 settings: inputs and outputs stay fp32 (casts at the edges),
# so the engine's I/O matches the exported model and the timed feeds need no change.
_FP16_CONVERTER = "onnxconverter-common float16.convert_float_to_float16"
_FP16_SETTINGS = {"keep_io_types": True}

# Placeholder INT8 dynamic ranges, the values trtexec uses when it is given --int8 without a
# calibration cache: ±2 on layer inputs, ±4 on layer outputs.
_INT8_INPUT_RANGE = 2.0
_INT8_OUTPUT_RANGE = 4.0

# The GPU that CUDA calls device 0; pick another one with CUDA_VISIBLE_DEVICES.
_DEVICE_INDEX = 0


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _import_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer is not
        raise BackendUnavailable(INSTALL_HINT) from None
    return trt


def _major(version: str | None) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _trt_major(trt) -> int:
    return _major(trt.__version__)


# -- build routes: what TensorRT version builds how ------------------------------------

def build_route(trt_version: str | None) -> str:
    """'strongly-typed' from TensorRT 11 (precision lives in the ONNX), 'builder-flags' before."""
    return "strongly-typed" if _major(trt_version) >= 11 else "builder-flags"


def onnx_conversion(precision: str) -> dict[str, Any] | None:
    """How the ONNX is changed before a strongly typed build at ``precision`` (None: not at all)."""
    from profilers.environment import _package_version  # light; lazy only to keep the import graph flat

    if precision == "fp16":
        return {"converter": _FP16_CONVERTER, "version": _package_version("onnxconverter-common"),
                **_FP16_SETTINGS}
    if precision == "int8":
        return {"converter": None, "requires": "Q/DQ nodes in the exported ONNX"}
    return None


def build_settings(precision: str, trt_version: str | None, workspace_mb: int) -> dict[str, Any]:
    """Everything about an engine build that is not the ONNX or the GPU: route, flags, conversion.

    It names the engine in the cache and is recorded in every manifest, so timings of
    differently built engines are never pooled.
    """
    route = build_route(trt_version)
    settings: dict[str, Any] = {"route": route, "precision": precision, "workspace_mb": int(workspace_mb)}
    if route == "builder-flags":
        settings["builder_flags"] = list(_BUILDER_FLAGS.get(precision, ()))
    else:
        settings["onnx_conversion"] = onnx_conversion(precision)
    return settings


def check_precision(precision: str, trt_version: str | None) -> None:
    """Refuse, in one line, a precision this TensorRT cannot build from hwprune's ONNX."""
    if precision == "bf16" and build_route(trt_version) == "strongly-typed":
        raise ConfigError(BF16_HINT)


def convert_to_fp16(onnx_bytes: bytes, model_path: str | None, name: str) -> bytes:
    """The ONNX with its float tensors in fp16 (I/O kept fp32), for a strongly typed build."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        raise BackendUnavailable(FP16_CONVERTER_HINT) from None
    try:
        # From the path, onnx also loads weights stored as external data beside the file.
        model = onnx.load(model_path) if model_path else onnx.load_model_from_string(onnx_bytes)
        converted = float16.convert_float_to_float16(model, **_FP16_SETTINGS)
        return converted.SerializeToString()
    except Exception as err:  # protobuf and converter errors have their own types
        raise ModelFileError(f"cannot convert {name} to fp16 for TensorRT 11: {_first_line(err)}") from None


_LOGGER = None
_LOGGER_OWNER = None


def _trt_logger(trt):
    """One logger per tensorrt module: TensorRT keeps the first logger it sees for the process."""
    global _LOGGER, _LOGGER_OWNER
    if _LOGGER is None or _LOGGER_OWNER is not trt:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
        _LOGGER_OWNER = trt
    return _LOGGER


# -- CUDA: memory, streams and events through pycuda or cuda-python -----------------------

class _PycudaApi:
    """Device memory, pinned host memory, streams and events through pycuda.driver."""

    name = "pycuda"

    def __init__(self, driver, device_index: int = _DEVICE_INDEX):
        self.cuda = driver
        driver.init()
        device = driver.Device(device_index)
        self.gpu_name = str(device.name())
        # TensorRT runs on the CUDA runtime API, which uses the device's primary context;
        # pycuda.autoinit would make a second, private context, so share the primary one.
        self._ctx = device.retain_primary_context()
        self._ctx.push()

    def alloc(self, nbytes: int) -> tuple[Any, int]:
        handle = self.cuda.mem_alloc(max(int(nbytes), 1))
        return handle, int(handle)

    def free(self, handle: Any) -> None:
        handle.free()

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        # Pinned memory, so async copies are truly async and end-to-end times match deployment.
        return self.cuda.pagelocked_empty(shape, dtype)

    def free_host(self, array: np.ndarray) -> None:
        pass  # pycuda frees page-locked arrays when they are garbage collected

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def destroy_stream(self, stream: Any) -> None:
        pass

    def event(self) -> Any:
        return self.cuda.Event()

    def destroy_event(self, event: Any) -> None:
        pass

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def wait(self, event: Any) -> None:
        event.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(start.time_till(end))

    def htod(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(device_ptr, host, stream)

    def dtoh(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(host, device_ptr, stream)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def close(self) -> None:
        try:
            self._ctx.pop()
            self._ctx.detach()
        except Exception:  # cleanup must not mask the error that led here
            pass


class _CudartApi:
    """The same operations through NVIDIA's cuda-python runtime bindings (calls return tuples)."""

    name = "cuda-python"

    def __init__(self, cudart, device_index: int = _DEVICE_INDEX):
        self.rt = cudart
        self._host_ptrs: dict[int, int] = {}
        self._check(cudart.cudaSetDevice(device_index))
        props = self._check(cudart.cudaGetDeviceProperties(device_index))
        name = props.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        self.gpu_name = str(name)

    def _check(self, result: Any) -> Any:
        if not isinstance(result, tuple):
            result = (result,)
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise ProfilerError(f"CUDA runtime error: {getattr(err, 'name', err)}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def alloc(self, nbytes: int) -> tuple[Any, int]:
        ptr = self._check(self.rt.cudaMalloc(max(int(nbytes), 1)))
        return ptr, int(ptr)

    def free(self, handle: Any) -> None:
        self._check(self.rt.cudaFree(handle))

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes)))
        buffer = (ctypes.c_byte * nbytes).from_address(ptr)
        count = int(np.prod(shape, dtype=np.int64))
        array = np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)
        self._host_ptrs[array.ctypes.data] = ptr
        return array

    def free_host(self, array: np.ndarray) -> None:
        ptr = self._host_ptrs.pop(array.ctypes.data, None)
        if ptr is not None:
            self._check(self.rt.cudaFreeHost(ptr))

    def stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream))

    def event(self) -> Any:
        return self._check(self.rt.cudaEventCreate())

    def destroy_event(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event))

    def record(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream))

    def wait(self, event: Any) -> None:
        self._check(self.rt.cudaEventSynchronize(event))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end)))

    def htod(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(device_ptr, host.ctypes.data, host.nbytes, kind, stream))

    def dtoh(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, device_ptr, host.nbytes, kind, stream))

    def sync(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def close(self) -> None:
        for ptr in list(self._host_ptrs.values()):
            try:
                self.rt.cudaFreeHost(ptr)
            except Exception:  # cleanup must not mask the error that led here
                pass
        self._host_ptrs.clear()


def _cuda_api_factory() -> Callable[[], Any]:
    """A constructor for the CUDA bindings to use: pycuda first, else cuda-python."""
    try:
        import pycuda.driver as driver
    except ImportError:
        driver = None
    if driver is not None:
        return lambda: _PycudaApi(driver)
    cudart = None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            cudart = None
    if cudart is None:
        raise BackendUnavailable(CUDA_BINDINGS_HINT)
    return lambda: _CudartApi(cudart)


# -- the engine cache ------------------------------------------------------------------

def engine_cache_dir(config: DeviceConfig) -> Path:
    """Where serialized engines are kept: ``config.engine_cache`` or ~/.cache/hwprune/engines."""
    return Path(config.engine_cache or DEFAULT_ENGINE_CACHE).expanduser()


def engine_cache_key(onnx_bytes: bytes, *, trt_version: str, gpu_name: str, precision: str,
                     batch_size: int, workspace_mb: int, build: dict[str, Any] | None = None) -> str:
    """Hex digest naming one engine: anything that changes what TensorRT builds is in it.

    An engine is only valid for the TensorRT version and GPU model it was built on, and
    precision, batch size and workspace limit change the kernels TensorRT picks. ``build``
    (``build_settings``) adds the route and the ONNX conversion with its converter version.
    ``onnx_bytes`` is the model as exported, before any conversion: a cache hit skips it.
    """
    fields: dict[str, Any] = {
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "tensorrt": str(trt_version),
        "gpu": str(gpu_name),
        "precision": precision,
        "batch_size": int(batch_size),
        "workspace_mb": int(workspace_mb),
    }
    if build is not None:
        fields["build"] = build
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# -- building --------------------------------------------------------------------------

def _resolve_shape(name: str, shape: Any, batch_size: int, model_name: str) -> tuple[int, ...]:
    """A concrete shape: a dynamic leading (batch) axis becomes ``batch_size``."""
    dims = []
    for axis, d in enumerate(tuple(shape)):
        d = int(d)
        if d >= 0:
            dims.append(d)
        elif axis == 0:
            dims.append(int(batch_size))
        else:
            raise ModelFileError(f"{model_name}: input '{name}' has a dynamic dimension at axis {axis}; "
                                 "export with static shapes (only the batch axis may be dynamic)")
    return tuple(dims)


def _set_placeholder_int8_ranges(network, trt) -> None:
    """Give every float activation a dynamic range so INT8 builds without calibration.

    We time latency only, so the values do not matter, just that INT8 kernels are chosen: the
    same placeholder ranges trtexec sets for --int8 without a calibration cache. The outputs
    of such an engine are numerically meaningless. Pooling keeps its input range and
    concatenation inputs take the output range, so neither forces a requantisation.
    """
    float_types = {trt.DataType.FLOAT, trt.DataType.HALF}

    def settable(tensor) -> bool:
        return (tensor is not None and tensor.dynamic_range is None
                and tensor.dtype in float_types)

    with warnings.catch_warnings():
        # TensorRT 10 deprecates implicit quantisation; for latency it is still what we want.
        warnings.simplefilter("ignore", DeprecationWarning)
        for li in range(network.num_layers):
            layer = network.get_layer(li)
            in_range = _INT8_OUTPUT_RANGE if layer.type == trt.LayerType.CONCATENATION else _INT8_INPUT_RANGE
            for i in range(layer.num_inputs):
                tensor = layer.get_input(i)
                if settable(tensor):
                    tensor.set_dynamic_range(-in_range, in_range)
            out_range = _INT8_INPUT_RANGE if layer.type == trt.LayerType.POOLING else _INT8_OUTPUT_RANGE
            for o in range(layer.num_outputs):
                tensor = layer.get_output(o)
                if settable(tensor):
                    tensor.set_dynamic_range(-out_range, out_range)


def _has_qdq(network, trt) -> bool:
    """Whether the parsed network holds explicit quantization (Q/DQ layers), as TensorRT 11 INT8 needs."""
    qdq = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


def build_serialized_engine(trt, onnx_bytes: bytes, config: DeviceConfig, *,
                            model_path: str | None = None, name: str = "<model>") -> bytes:
    """Parse ONNX and build a serialized engine for ``config``; raises ``ModelFileError``."""
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    if not hasattr(builder, "build_serialized_network"):
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old (need >= 8.0): {INSTALL_HINT}")
    major = _trt_major(trt)
    check_precision(config.precision, trt.__version__)
    # Explicit batch is the only mode since TensorRT 10, where the flag is deprecated; from
    # 11 every network is strongly typed, with no flag to ask for it.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    try:
        # With the file's path, the parser finds weights stored as external data beside it.
        ok = parser.parse(onnx_bytes, model_path) if model_path else parser.parse(onnx_bytes)
    except Exception as err:  # a protobuf that does not decode raises in some versions
        raise ModelFileError(f"TensorRT cannot parse ONNX model {name}: {_first_line(err)}") from None
    if not ok:
        n_errors = parser.num_errors
        if n_errors:
            error = parser.get_error(0)
            desc = error.desc() if hasattr(error, "desc") else str(error)
            more = f" (and {n_errors - 1} more)" if n_errors > 1 else ""
        else:
            desc, more = "unknown parser error", ""
        raise ModelFileError(f"TensorRT cannot parse ONNX model {name}: {_first_line(desc)}{more}")

    builder_config = builder.create_builder_config()
    workspace_bytes = int(config.workspace_mb) << 20
    if hasattr(builder_config, "set_memory_pool_limit"):
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    else:  # TensorRT < 8.4
        builder_config.max_workspace_size = workspace_bytes
    if major >= 11:
        if config.precision == "int8" and not _has_qdq(network, trt):
            raise ModelFileError(f"{name}: {INT8_QDQ_HINT}")
    else:
        for flag in _BUILDER_FLAGS[config.precision]:
            if not hasattr(trt.BuilderFlag, flag):  # BF16 arrived in TensorRT 9
                raise ConfigError(f"precision {config.precision} needs a newer TensorRT: "
                                  f"{trt.__version__} has no BuilderFlag.{flag}")
            builder_config.set_flag(getattr(trt.BuilderFlag, flag))
        if config.precision == "int8":
            _set_placeholder_int8_ranges(network, trt)

    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(int(d) < 0 for d in shape):
            fixed = _resolve_shape(tensor.name, shape, config.batch_size, name)
            if profile is None:
                profile = builder.create_optimization_profile()
            # min = opt = max: we time exactly one shape, so let TensorRT tune for it alone.
            profile.set_shape(tensor.name, fixed, fixed, fixed)
    if profile is not None:
        builder_config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ModelFileError(f"TensorRT {trt.__version__} could not build an engine for {name} at {config.precision}, "
                             f"batch {config.batch_size}, workspace {config.workspace_mb} MB "
                             "(see the TensorRT log above)")
    return bytes(serialized)


# -- the runner ------------------------------------------------------------------------

@dataclass
class _IoBuffer:
    """One engine input or output with its pinned host buffer and device allocation."""

    name: str
    index: int
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    host: np.ndarray
    device: Any
    device_ptr: int


class TrtRunner(BaseRunner):
    """Times an ONNX model as a TensorRT engine as configured by a ``DeviceConfig``.

    ``time_once_ms`` is GPU compute only; ``time_end_to_end_once_ms`` adds the host-device
    copies. After activation, ``engine_cache_hit`` says whether the engine came from the
    cache (``engine_path``) or was built (``build_s`` seconds).

    Example:
        >>> from profilers.config import DeviceConfig
        >>> cfg = DeviceConfig(name="gpu", backend="tensorrt", precision="fp16")
        >>> with TrtRunner("model.onnx", cfg) as r:  # doctest: +SKIP
        ...     print(r.measure().p50_ms, r.engine_cache_hit)
    """

    timed_scope = "GPU compute (CUDA events around enqueue)"
    end_to_end_scope = "H2D copies + GPU compute + D2H copies (CUDA events)"

    def __init__(self, model: str | bytes, config: DeviceConfig, name: str | None = None, seed: int = 0):
        super().__init__(model, config, name)
        self.seed = seed
        self.inputs: list[InputSpec] = []
        self.engine_cache_hit: bool | None = None
        self.engine_path: Path | None = None
        self.build_s: float = 0.0
        self.gpu_name: str | None = None
        self.tensorrt_version: str | None = None
        self.cuda_bindings: str | None = None
        self.build_settings: dict[str, Any] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._cuda = None
        self._runtime = None
        self._engine = None
        self._context = None
        self._io: list[_IoBuffer] = []
        self._stream = None
        self._stream_handle = 0
        self._start = None
        self._end = None
        self._bindings: list[int] = []
        self._use_v3 = True
        self._feeds: dict[str, np.ndarray] = {}

    # -- activation ---------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = _import_tensorrt()
        make_cuda = _cuda_api_factory()
        onnx_bytes, model_path = self._read_model()
        try:
            self._cuda = make_cuda()
        except ProfilerError:
            raise
        except Exception as err:  # no driver, no GPU, GPU busy: the bindings' own errors
            raise BackendUnavailable(f"no usable CUDA GPU for TensorRT: {_first_line(err)}") from None
        self.cuda_bindings = self._cuda.name
        self.gpu_name = self._cuda.gpu_name
        self.tensorrt_version = str(trt.__version__)
        try:
            self._load_engine(trt, onnx_bytes, model_path)
            self._prepare_io(trt)
        except BaseException:
            self.deactivate_impl()  # BaseRunner only deactivates what activated fully
            raise

    def _read_model(self) -> tuple[bytes, str | None]:
        if isinstance(self.model, (bytes, bytearray)):
            return bytes(self.model), None
        path = Path(self.model)
        if not path.is_file():
            raise ModelFileError(f"ONNX file not found: {self.model}")
        try:
            return path.read_bytes(), str(path)
        except OSError as err:
            raise ModelFileError(f"cannot read ONNX file {self.model}: {err.strerror}") from None

    def _load_engine(self, trt, onnx_bytes: bytes, model_path: str | None) -> None:
        c = self.config
        check_precision(c.precision, self.tensorrt_version)
        self.build_settings = build_settings(c.precision, self.tensorrt_version, c.workspace_mb)
        key = engine_cache_key(onnx_bytes, trt_version=self.tensorrt_version, gpu_name=self.gpu_name,
                               precision=c.precision, batch_size=c.batch_size, workspace_mb=c.workspace_mb,
                               build=self.build_settings)
        self.engine_path = engine_cache_dir(c) / f"{key}.engine"
        self._runtime = trt.Runtime(_trt_logger(trt))
        self.engine_cache_hit = False
        if self.engine_path.is_file():
            try:
                self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            except Exception:  # an unreadable entry is rebuilt below, not fatal
                self._engine = None
            self.engine_cache_hit = self._engine is not None
        if self._engine is None:
            t0 = time.perf_counter()
            if (self.build_settings.get("onnx_conversion") or {}).get("converter") == _FP16_CONVERTER:
                # the converted model holds its weights inline, so the file's path is not needed
                onnx_bytes, model_path = convert_to_fp16(onnx_bytes, model_path, self.name), None
            serialized = build_serialized_engine(trt, onnx_bytes, c, model_path=model_path, name=self.name)
            self.build_s = time.perf_counter() - t0
            try:
                atomic_write_bytes(self.engine_path, serialized)
            except OSError as err:  # a read-only cache costs a rebuild next time, not this run
                warnings.warn(f"could not write TensorRT engine cache {self.engine_path}: {err.strerror or err}")
            self._engine = self._runtime.deserialize_cuda_engine(serialized)
            if self._engine is None:
                raise ModelFileError(f"TensorRT could not load the engine it built for {self.name}")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ProfilerError(f"TensorRT could not create an execution context for {self.name} "
                                "(out of GPU memory?)")

    def _io_layout(self, trt) -> list[tuple[str, bool, tuple[int, ...], np.dtype]]:
        """(name, is_input, concrete shape, dtype) for every engine IO tensor, in binding order."""
        engine, context, batch = self._engine, self._context, self.config.batch_size
        layout = []
        if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5: tensors by name
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            for n in names:
                if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                    shape = _resolve_shape(n, engine.get_tensor_shape(n), batch, self.name)
                    if any(int(d) < 0 for d in engine.get_tensor_shape(n)):
                        if context.set_input_shape(n, shape) is False:
                            raise ModelFileError(f"{self.name}: TensorRT rejected shape {shape} for input '{n}'")
            for n in names:
                is_input = engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
                shape = tuple(int(d) for d in context.get_tensor_shape(n))
                layout.append((n, is_input, shape, self._np_dtype(trt, engine.get_tensor_dtype(n), n)))
        else:  # TensorRT 8.0-8.4 (JetPack 4.x ships 8.2) only has the bindings API
            self._use_v3 = False
            for i in range(engine.num_bindings):
                if engine.binding_is_input(i):
                    n = engine.get_binding_name(i)
                    shape = _resolve_shape(n, engine.get_binding_shape(i), batch, self.name)
                    if any(int(d) < 0 for d in engine.get_binding_shape(i)):
                        if context.set_binding_shape(i, shape) is False:
                            raise ModelFileError(f"{self.name}: TensorRT rejected shape {shape} for input '{n}'")
            for i in range(engine.num_bindings):
                n = engine.get_binding_name(i)
                shape = tuple(int(d) for d in context.get_binding_shape(i))
                layout.append((n, bool(engine.binding_is_input(i)), shape,
                               self._np_dtype(trt, engine.get_binding_dtype(i), n)))
        return layout

    def _np_dtype(self, trt, trt_dtype, tensor_name: str) -> np.dtype:
        try:
            return np.dtype(trt.nptype(trt_dtype))
        except (TypeError, KeyError, ValueError):
            raise ModelFileError(f"{self.name}: tensor '{tensor_name}' has type {trt_dtype}, "
                                 "which has no numpy equivalent") from None

    def _prepare_io(self, trt) -> None:
        cuda = self._cuda
        self._stream = cuda.stream()
        self._stream_handle = cuda.stream_handle(self._stream)
        self._start, self._end = cuda.event(), cuda.event()
        for index, (n, is_input, shape, dtype) in enumerate(self._io_layout(trt)):
            if any(d < 0 for d in shape):
                raise ModelFileError(f"{self.name}: TensorRT cannot tell the shape of '{n}' ({shape})")
            host = cuda.host_empty(shape, dtype)
            device, ptr = cuda.alloc(host.nbytes)
            self._io.append(_IoBuffer(n, index, is_input, shape, dtype, host, device, ptr))
        if self._use_v3:
            # Addresses are bound once here, so the timed enqueue is the only call timed.
            for b in self._io:
                self._context.set_tensor_address(b.name, b.device_ptr)
        else:
            self._bindings = [b.device_ptr for b in self._io]
        self.inputs = [InputSpec(b.name, b.shape, b.dtype.name) for b in self._io if b.is_input]
        self._feeds = random_inputs(self.inputs, self.seed)
        # Upload realistic inputs once: compute timing then runs on them without copying.
        for b in self._io:
            if b.is_input:
                np.copyto(b.host, self._feeds[b.name])
                cuda.htod(b.device_ptr, b.host, self._stream)
        cuda.sync(self._stream)

    # -- running and timing -------------------------------------------------------------
    def _enqueue(self) -> None:
        if self._use_v3:
            ok = self._context.execute_async_v3(self._stream_handle)
        else:
            ok = self._context.execute_async_v2(self._bindings, self._stream_handle)
        if ok is False:
            raise ProfilerError(f"TensorRT could not enqueue {self.name} (see the TensorRT log above)")

    def time_once_ms(self) -> float:
        cuda, stream, start, end = self._cuda, self._stream, self._start, self._end
        cuda.record(start, stream)
        self._enqueue()
        cuda.record(end, stream)
        cuda.wait(end)
        return cuda.elapsed_ms(start, end)

    def time_end_to_end_once_ms(self) -> float:
        """One inference with its host-to-device and device-to-host copies, in ms (CUDA events)."""
        cuda, stream, start, end = self._cuda, self._stream, self._start, self._end
        cuda.record(start, stream)
        for b in self._io:
            if b.is_input:
                cuda.htod(b.device_ptr, b.host, stream)
        self._enqueue()
        for b in self._io:
            if not b.is_input:
                cuda.dtoh(b.host, b.device_ptr, stream)
        cuda.record(end, stream)
        cuda.wait(end)
        return cuda.elapsed_ms(start, end)

    def infer(self, feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if self._context is None:
            raise RuntimeError("runner is not active: use it as a context manager")
        feeds = self._feeds if feeds is None else feeds
        inputs = [b for b in self._io if b.is_input]
        unknown = set(feeds) - {b.name for b in inputs}
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {', '.join(sorted(unknown))} "
                             f"(inputs: {', '.join(b.name for b in inputs)})")
        for b in inputs:
            if b.name not in feeds:
                raise ValueError(f"{self.name}: missing input '{b.name}'")
            value = np.asarray(feeds[b.name])
            if value.shape != b.shape:
                raise ValueError(f"{self.name}: input '{b.name}' has shape {value.shape}, "
                                 f"the engine expects {b.shape}")
            np.copyto(b.host, value, casting="same_kind")
        cuda, stream = self._cuda, self._stream
        for b in inputs:
            cuda.htod(b.device_ptr, b.host, stream)
        self._enqueue()
        outputs = [b for b in self._io if not b.is_input]
        for b in outputs:
            cuda.dtoh(b.host, b.device_ptr, stream)
        cuda.sync(stream)
        return {b.name: b.host.copy() for b in outputs}

    def extra_timings(self) -> dict[str, TimingStats]:
        """The end-to-end latency (copies included), with the config's methodology."""
        if not self.is_active:
            raise RuntimeError("runner is not active: use it as a context manager")
        return {"end_to_end": measure(self.time_end_to_end_once_ms, **self.methodology())}

    # -- teardown -----------------------------------------------------------------------
    def deactivate_impl(self) -> None:
        cuda = self._cuda
        if cuda is not None:
            if self._stream is not None:
                try:
                    cuda.sync(self._stream)  # nothing may still write into buffers being freed
                except Exception:
                    pass
            for b in self._io:
                try:
                    cuda.free(b.device)
                    cuda.free_host(b.host)
                except Exception:  # free what can be freed; one failure must not leak the rest
                    pass
            for event in (self._start, self._end):
                if event is not None:
                    try:
                        cuda.destroy_event(event)
                    except Exception:
                        pass
            if self._stream is not None:
                try:
                    cuda.destroy_stream(self._stream)
                except Exception:
                    pass
        # TensorRT objects go before the CUDA context they live in; the context before the
        # engine, the engine before the runtime that deserialized it.
        self._io = []
        self._start = self._end = self._stream = None
        self._context = None
        self._engine = None
        self._runtime = None
        if cuda is not None:
            cuda.close()
        self._reset_state()
