"""The torch-cuda timing backend: a torch.export program on an NVIDIA GPU, timed with CUDA events.

It needs only PyTorch (a CUDA build) on the device. Candidates arrive as
``torch.export.save`` bytes (``hwprune.torch_program`` writes them from the ONNX on the
host), are loaded with ``torch.export.load``, moved to the GPU and run at the config's
precision: ``fp32``, or ``fp16``/``bf16`` either by casting weights and inputs (the
default, as a half-precision deployment runs) or under ``torch.autocast`` (``autocast:
true``, fp32 weights and fp32 inputs). Shapes, batch included, are the program's own: it
was exported at the config's batch size.

``time_once_ms`` is one forward between two CUDA events on the runner's stream, after the
config's warm-up (``profilers.stats.measure``): GPU time plus any host launch gap inside it,
as trtexec's GPU compute time. With ``cuda_graphs: true`` the forward is captured once in
a CUDA graph after a warm-up on the same stream, and each timed call is one replay, as
trtexec --useCudaGraph; launch overhead then mostly drops out.

torch is imported only in ``activate``: this module imports on a device without it (the
other backends' devices), and ``run_settings`` (for the manifest) imports nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from profilers.config import DeviceConfig
from profilers.errors import BackendUnavailable, ConfigError, ModelFileError
from profilers.runner import BaseRunner, InputSpec, random_inputs

INSTALL_HINT = ("the torch-cuda backend needs PyTorch built with CUDA: pip install torch "
                "(a CUDA wheel, e.g. --index-url https://download.pytorch.org/whl/cu128)")
ONNX_GIVEN_HINT = ("the torch-cuda backend times torch.export programs, not ONNX: hwprune converts its candidates "
                   "on the host (hwprune.torch_program.onnx_to_program); give it a .pt2 from torch.export.save")

# torch.export.save writes a zip archive; an ONNX protobuf starts with field 1 (ir_version), 0x08.
PROGRAM_MAGIC = b"PK\x03\x04"
PROGRAM_SUFFIX = ".pt2"
# Where CUDA tensors live; the CPU tests with a fake torch.cuda set it to "cpu".
DEVICE = "cuda"
# Forwards run on the capture stream before a CUDA graph is captured: lazy initialisation
# (cuDNN/cuBLAS handles, autotuning) must not happen inside the capture.
GRAPH_WARMUP_CALLS = 3

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def is_program(blob: bytes) -> bool:
    """Whether ``blob`` is a torch.export archive (rather than ONNX)."""
    return bytes(blob[:4]) == PROGRAM_MAGIC


def blob_suffix(blob: bytes) -> str:
    """The file suffix a candidate's bytes deserve: .pt2 for a torch.export program, else .onnx."""
    return PROGRAM_SUFFIX if is_program(blob) else ".onnx"


def run_settings(config: DeviceConfig) -> dict[str, Any]:
    """What shapes the timed program beyond the versions: recorded in the manifest and fingerprint."""
    mode = "fp32" if config.precision == "fp32" else ("autocast" if config.autocast else "cast")
    return {"program": "torch.export", "precision": config.precision, "precision_mode": mode,
            "cuda_graphs": bool(config.cuda_graphs)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _import_torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    return torch


def check_gpu():
    """torch, once it is known to see a CUDA GPU; else ``BackendUnavailable`` in one line."""
    torch = _import_torch()
    if not torch.cuda.is_available():
        build = "a CPU-only build" if getattr(torch.version, "cuda", None) is None else "a CUDA build that sees no GPU"
        raise BackendUnavailable(f"no usable CUDA GPU for torch-cuda: torch {torch.__version__} is {build}")
    return torch


def _builtin_modules(torch) -> dict[str, tuple[Any, list[tuple[int, ...]]]]:
    """The identity and drift-reference graphs of ``profilers/assets`` as torch modules.

    They are fixed graphs (a 1x1 Identity; a 3x3 conv, 32->32 channels at 14x14, then ReLU),
    built here so a device with torch alone times the same pair the other backends time.
    tests/test_torch_cuda.py checks them against the ONNX files.
    """
    from profilers.runners import IDENTITY_ONNX, REFERENCE_ONNX

    nn = torch.nn
    reference = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
    return {str(IDENTITY_ONNX): (nn.Identity(), [(1, 1)]), str(REFERENCE_ONNX): (reference, [(1, 32, 14, 14)])}


def load_program(torch, model: str | bytes, name: str) -> tuple[Any, list[InputSpec]]:
    """(a module ready to run, its input specs) from program bytes, a .pt2 path or a builtin asset.

    A loaded program is already in inference form (BatchNorm in eval, no dropout): its module
    refuses .eval(), so it is returned as loaded; the builtins are put in eval mode.
    """
    builtin = _builtin_modules(torch)
    if isinstance(model, (str, Path)) and str(Path(model).resolve()) in builtin:
        module, shapes = builtin[str(Path(model).resolve())]
        return module.eval(), [InputSpec(f"x{i}", s, "float32") for i, s in enumerate(shapes)]
    blob = _read(model)
    if not is_program(blob):
        raise ModelFileError(f"{name}: {ONNX_GIVEN_HINT}")
    try:
        program = torch.export.load(io.BytesIO(blob))
    except Exception as err:  # a torch too old for the archive, or a truncated file
        raise ModelFileError(f"cannot load torch.export program {name}: {_first_line(err)}") from None
    return program.module(), _program_inputs(program)


def _read(model: str | bytes) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    from profilers.fileio import read_model_file

    return read_model_file(model)


def _program_inputs(program) -> list[InputSpec]:
    """Input names, shapes and dtypes from the program's placeholder metadata (static shapes)."""
    user = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta["val"]
            dtype = str(val.dtype).replace("torch.", "")
            specs.append(InputSpec(node.name, tuple(int(d) for d in val.shape), dtype))
    return specs


class TorchCudaRunner(BaseRunner):
    """Times a torch.export program on the GPU with CUDA events, optionally as a CUDA graph.

    Example:
        >>> from profilers.config import load_device_config
        >>> cfg = load_device_config("h200-torch-cuda-bf16")
        >>> with TorchCudaRunner("model.pt2", cfg) as r:  # doctest: +SKIP
        ...     print(r.measure().p50_ms, r.gpu_name)
    """

    timed_scope = "GPU compute (CUDA events around one forward)"

    def __init__(self, model: str | bytes, config: DeviceConfig, name: str | None = None, seed: int = 0):
        super().__init__(model, config, name)
        self.seed = seed
        self.inputs: list[InputSpec] = []
        self.gpu_name: str | None = None
        self.torch_version: str | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._torch = None
        self._module = None
        self._args: tuple = ()
        self._stream = None
        self._start = self._end = None
        self._graph = None
        self._static_out = None

    # -- activation ---------------------------------------------------------------------
    def activate_impl(self) -> None:
        if self.config.precision not in _DTYPES:
            raise ConfigError(f"the torch-cuda backend times fp32, fp16 or bf16, not {self.config.precision}")
        torch = self._torch = check_gpu()
        self.torch_version = str(torch.__version__)
        self.gpu_name = str(torch.cuda.get_device_name(torch.cuda.current_device()))
        try:
            module, self.inputs = load_program(torch, self.model, self.name)
            self._place(module)
            # the copies above ran on the default stream; the runner's stream must not overtake them
            torch.cuda.synchronize()
            self._stream = torch.cuda.Stream()
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            if self.config.cuda_graphs:
                self._capture()
        except BaseException:
            self.deactivate_impl()
            raise

    def _place(self, module) -> None:
        """Module and inputs on the GPU at the config's precision (cast mode casts both)."""
        torch = self._torch
        dtype = getattr(torch, _DTYPES[self.config.precision])
        cast = self.config.precision != "fp32" and not self.config.autocast
        self._module = module.to(DEVICE, dtype=dtype) if cast else module.to(DEVICE)
        feeds = random_inputs(self.inputs, self.seed)
        args = []
        for spec in self.inputs:
            t = torch.from_numpy(feeds[spec.name]).to(DEVICE)
            args.append(t.to(dtype) if cast and t.is_floating_point() else t)
        self._args = tuple(args)

    def _forward(self):
        torch = self._torch
        with torch.inference_mode():
            if self.config.autocast and self.config.precision != "fp32":
                with torch.autocast(device_type=DEVICE, dtype=getattr(torch, _DTYPES[self.config.precision])):
                    return self._module(*self._args)
            return self._module(*self._args)

    def _capture(self) -> None:
        """Warm up on the runner's stream, then capture one forward into a CUDA graph."""
        torch = self._torch
        with torch.cuda.stream(self._stream):
            for _ in range(GRAPH_WARMUP_CALLS):
                self._forward()
        self._stream.synchronize()
        self._graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self._graph, stream=self._stream):
                self._static_out = self._forward()
        except Exception as err:  # an op that cannot be captured (host sync, dynamic allocation)
            raise ModelFileError(f"{self.name} cannot be captured in a CUDA graph: {_first_line(err)}; "
                                 "set cuda_graphs: false") from None

    # -- running and timing -------------------------------------------------------------
    def _launch(self):
        if self._graph is not None:
            self._graph.replay()
            return self._static_out
        return self._forward()

    def time_once_ms(self) -> float:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            self._start.record(self._stream)
            self._launch()
            self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def infer(self, feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if self._module is None:
            raise RuntimeError("runner is not active: use it as a context manager")
        if feeds is not None:
            self._copy_feeds(feeds)
            self._torch.cuda.synchronize()  # the copies ran on the default stream, the forward will not
        with self._torch.cuda.stream(self._stream):
            out = self._launch()
        self._stream.synchronize()
        outs = out if isinstance(out, (tuple, list)) else (out,)
        # numpy has no bfloat16: outputs come back as float32
        return {f"output{i}" if len(outs) > 1 else "output": o.detach().float().cpu().numpy()
                for i, o in enumerate(outs)}

    def _copy_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        names = [s.name for s in self.inputs]
        unknown = set(feeds) - set(names)
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {', '.join(sorted(unknown))} (inputs: {', '.join(names)})")
        for spec, arg in zip(self.inputs, self._args):
            if spec.name not in feeds:
                raise ValueError(f"{self.name}: missing input '{spec.name}'")
            value = np.asarray(feeds[spec.name])
            if tuple(value.shape) != spec.shape:
                raise ValueError(f"{self.name}: input '{spec.name}' has shape {value.shape}, the program expects {spec.shape}")
            arg.copy_(self._torch.from_numpy(value))  # in place: a captured graph reads these very buffers

    # -- teardown -----------------------------------------------------------------------
    def deactivate_impl(self) -> None:
        if self._stream is not None:
            try:
                self._stream.synchronize()  # nothing may still run on buffers being dropped
            except Exception:
                pass
        self._reset_state()
