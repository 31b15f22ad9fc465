"""The environment manifest: what machine, runtime and settings produced a timing.

``collect_manifest`` records everything that could explain a latency figure (versions,
CPU/GPU model, threads, governor and clocks, precision, providers, and for GPU backends how
the timed program was built: ``build``). ``fingerprint`` hashes
only the fields that make two timings comparable, so a LUT row or a regression baseline
measured on another machine, runtime or setting is recognised as such; hostnames, clocks
and timestamps are left out because they change without making timings incomparable.
``diff_manifests`` says, field by field, what differs between two manifests.

Only numpy and the standard library are needed: onnxruntime, tensorrt and pycuda are
imported lazily and only when present, and ``nvidia-smi`` is run with a short timeout.

Example:
    >>> from profilers.config import load_device_config
    >>> from profilers.environment import collect_manifest, fingerprint
    >>> m = collect_manifest(load_device_config("x86-cpu-ort"))
    >>> m["backend"], len(fingerprint(m))
    ('onnxruntime', 16)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from profilers.config import DeviceConfig

MANIFEST_SCHEMA = 1
NVIDIA_SMI_TIMEOUT_S = 5.0
_CPU_SYSFS = Path("/sys/devices/system/cpu")
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                  "MIGraphXExecutionProvider", "DmlExecutionProvider")

# Fields that change between two runs on the same setup and say nothing about whether
# their timings are comparable; ``diff_manifests`` skips them unless asked.
VOLATILE_FIELDS = ("timestamp_utc", "load_avg", "fingerprint")

# ARM "CPU part" codes of implementer 0x41 (Arm Ltd) as /proc/cpuinfo reports them; a part
# number means another core under another implementer (Qualcomm, NVIDIA, Apple...).
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd0e": "Cortex-A76AE", "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C",
    "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}
_ARM_IMPLEMENTERS = {"0x41": "Arm", "0x42": "Broadcom", "0x43": "Cavium", "0x46": "Fujitsu", "0x48": "HiSilicon",
                     "0x4e": "NVIDIA", "0x50": "APM", "0x51": "Qualcomm", "0x61": "Apple", "0x6d": "Microsoft",
                     "0xc0": "Ampere"}
# qemu's TCG "max" CPU (the default of qemu-aarch64 user mode): implementer 0 ("reserved for
# software use") and part 0x051 ('Q'), as newer qemu releases show it in /proc/cpuinfo.
_QEMU_MAX = ("0x00", "0x051")
QEMU_MAX_NAME = "QEMU TCG 'max' CPU"


# -- small readers, each tolerant of a file or tool that is not there -----------------------
def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _run(cmd: list[str], timeout_s: float) -> str | None:
    """stdout of ``cmd``, or None when it is absent, fails or runs past ``timeout_s``."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_cpu_model(cpuinfo: str | None, lscpu: str | None = None) -> str | None:
    """The CPU model from /proc/cpuinfo text, else from ``lscpu`` output; None if neither says.

    x86 reports ``model name``; ARM boards report ``CPU part`` codes (mapped to core names,
    big.LITTLE parts joined with ``+``) and sometimes ``Model``/``Hardware`` (the board).
    """
    fields: dict[str, list[str]] = {}
    for line in (cpuinfo or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    # ARM parts first: a 32-bit ARM kernel's "model name" is the same "ARMv7 Processor rev N"
    # on a Pi 3 and a Pi 4, while their parts (Cortex-A53, Cortex-A72) tell them apart.
    parts = []
    implementers = fields.get("cpu implementer", [])
    for i, part in enumerate(fields.get("cpu part", [])):
        name = _arm_core_name(implementers[i] if i < len(implementers) else None, part)
        if name not in parts:
            parts.append(name)
    if parts:
        return " + ".join(parts)
    if fields.get("model name") and fields["model name"][0]:
        return fields["model name"][0]
    for line in (lscpu or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name" and value.strip():
            return value.strip()
    for key in ("hardware", "processor"):
        # on old ARM kernels "Processor" is the core name; on x86 "processor" is an index
        for value in fields.get(key, []):
            if value and not value.isdigit():
                return value
    return None


def _arm_core_name(implementer: str | None, part: str) -> str:
    """``("0x41", "0xd0b")`` -> ``"Cortex-A76"``; another implementer's part keeps its code."""
    imp, part = (implementer or "").lower(), part.lower()
    if (imp, part) == _QEMU_MAX:
        return QEMU_MAX_NAME
    if imp in ("", "0x41"):  # no implementer line: old kernels, Arm's cores by far the most common
        return _ARM_PARTS.get(part, f"ARM part {part}")
    return f"{_ARM_IMPLEMENTERS.get(imp, f'implementer {imp}')} part {part}"


def arch_family(machine: str | None) -> str | None:
    """``"arm"``, ``"x86"`` or None for a ``platform.machine()`` value."""
    m = (machine or "").lower()
    if m.startswith(("aarch64", "arm")):
        return "arm"
    if m in ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"):
        return "x86"
    return None


def cpuinfo_family(cpuinfo: str | None) -> str | None:
    """Which kind of kernel wrote this /proc/cpuinfo: ``"arm"`` (CPU implementer/part),
    ``"x86"`` (vendor_id), or None when it does not say."""
    keys = {line.partition(":")[0].strip().lower() for line in (cpuinfo or "").splitlines() if ":" in line}
    if keys & {"cpu implementer", "cpu part", "cpu architecture"}:
        return "arm"
    if "vendor_id" in keys:
        return "x86"
    return None


def _board_model() -> str | None:
    """The board (Raspberry Pi 5, Jetson AGX Orin...) from the device tree or /proc/cpuinfo."""
    text = _read_text("/proc/device-tree/model")
    if text:
        return text.strip("\x00 \n") or None
    for line in (_read_text("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Model" and value.strip():
            return value.strip()
    return None


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return list(range(os.cpu_count() or 1))


def _cpu_ranges(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the notation taskset and /sys use)."""
    out, start, prev = [], None, None
    for c in cpus:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = c
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(out)


def read_cpufreq(cpu: int = 0, root: Path = _CPU_SYSFS) -> dict[str, Any]:
    """Governor and current/max frequency (MHz) of one CPU from sysfs; None where unreadable."""
    d = Path(root) / f"cpu{cpu}" / "cpufreq"

    def khz_to_mhz(name: str) -> float | None:
        text = _read_text(d / name)
        try:
            return round(int(text.strip()) / 1000.0, 1) if text else None
        except ValueError:
            return None

    governor = _read_text(d / "scaling_governor")
    return {
        "governor": governor.strip() if governor else None,
        "cur_freq_mhz": khz_to_mhz("scaling_cur_freq"),
        "max_freq_mhz": khz_to_mhz("cpuinfo_max_freq") or khz_to_mhz("scaling_max_freq"),
    }


def _cpu_info() -> dict[str, Any]:
    arch = platform.machine()
    cpuinfo = _read_text("/proc/cpuinfo")
    model = parse_cpu_model(cpuinfo)
    if model is None:
        model = parse_cpu_model(None, _run(["lscpu"], 5.0)) or platform.processor() or arch or None
    # An aarch64 Python whose kernel writes an x86 /proc/cpuinfo runs under user-mode emulation
    # (older qemu-user, binfmt_misc): the file names the host's CPU, not the one the code
    # runs on, so the model says so; a LUT measured there never shares a fingerprint with a
    # real board. Newer qemu releases show their own CPU there instead, known by its part code.
    kernel, own = cpuinfo_family(cpuinfo), arch_family(arch)
    emulated = None if kernel is None or own is None else kernel != own
    if emulated:
        model = f"{arch} under user-mode emulation on {model or f'an {kernel} host'}"
    elif model is not None and QEMU_MAX_NAME in model:  # qemu's own CPU: emulated, whatever the kernel
        emulated = True
    affinity = _affinity()
    # The frequency of the first CPU this process may run on (cpu0 unless pinned elsewhere).
    freq = read_cpufreq(affinity[0] if affinity else 0)
    return {"model": model, "arch": arch, "emulated": emulated, "board": _board_model(),
            "logical_cores": os.cpu_count(), "affinity": _cpu_ranges(affinity), **freq}


def _mhz(text: str) -> float | None:
    m = re.match(r"\s*([0-9.]+)", text)
    return float(m.group(1)) if m else None


def parse_nvidia_smi(csv_text: str | None) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm
    --format=csv,noheader`` as dicts (clocks in MHz, None where reported as N/A)."""
    gpus = []
    for index, line in enumerate((csv_text or "").strip().splitlines()):
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4 or not cols[0]:
            continue
        gpus.append({"index": index, "name": cols[0], "driver_version": cols[1],
                     "clock_sm_mhz": _mhz(cols[2]), "clock_max_sm_mhz": _mhz(cols[3])})
    return gpus


def _selected_gpu_index() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def _gpu_info() -> tuple[dict[str, Any] | None, int, str | None]:
    """(the GPU timings run on, how many there are, CUDA version the driver supports)."""
    if shutil.which("nvidia-smi") is None:
        return None, 0, None
    rows = parse_nvidia_smi(_run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
                                  "--format=csv,noheader"], NVIDIA_SMI_TIMEOUT_S))
    header = _run(["nvidia-smi"], NVIDIA_SMI_TIMEOUT_S) if rows else None
    m = re.search(r"CUDA Version:\s*([0-9.]+)", header or "")
    want = _selected_gpu_index()
    gpu = next((g for g in rows if g["index"] == want), rows[0] if rows else None)
    return gpu, len(rows), m.group(1) if m else None


def _package_version(dist: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version(dist)
    except (ImportError, PackageNotFoundError, ValueError):
        return None


def _onnxruntime_info() -> dict[str, Any]:
    if importlib.util.find_spec("onnxruntime") is None:
        return {"version": None, "available_providers": []}
    try:
        import onnxruntime as ort
        return {"version": ort.__version__, "available_providers": list(ort.get_available_providers())}
    except Exception:  # a broken install should not stop the manifest
        return {"version": None, "available_providers": []}


def _tensorrt_version(backend: str) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    # Importing tensorrt costs a second or more; the wheel's metadata is enough unless we
    # are timing with it anyway (Jetson images ship tensorrt without pip metadata).
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"):
        v = _package_version(dist)
        if v:
            return v
    if backend != "tensorrt":
        return None
    try:
        import tensorrt
        return getattr(tensorrt, "__version__", None)
    except Exception:
        return None


def _pycuda_info() -> dict[str, Any]:
    """CUDA runtime/driver API versions and device name from pycuda, when it is installed."""
    if importlib.util.find_spec("pycuda") is None:
        return {}
    try:
        import pycuda.driver as cuda
        cuda.init()
        info = {"cuda_build": ".".join(map(str, cuda.get_version())),
                "cuda_driver_api": _cuda_int_version(cuda.get_driver_version())}
        if cuda.Device.count() > 0:
            # inside the process CUDA numbers the visible devices from 0
            info["device_name"] = cuda.Device(0).name()
        return info
    except Exception:
        return {}


def _cuda_int_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


_GPU_BACKENDS = ("tensorrt", "torch-cuda")


def _uses_gpu(config: DeviceConfig) -> bool:
    return config.backend in _GPU_BACKENDS or any(p in _GPU_PROVIDERS for p in config.providers)


def _build_settings(config: DeviceConfig, trt_version: str | None) -> dict[str, Any] | None:
    """How a GPU backend builds what it times (TensorRT route and ONNX conversion; torch-cuda mode)."""
    if config.backend == "tensorrt":
        from profilers.tensorrt import build_settings  # imports neither tensorrt nor CUDA
        return build_settings(config.precision, trt_version, config.workspace_mb)
    if config.backend == "torch-cuda":
        from profilers.torch_cuda import run_settings  # imports no torch
        return run_settings(config)
    return None


def _runtime_version(config: DeviceConfig, ort_version: str | None, trt_version: str | None) -> str | None:
    if config.backend == "onnxruntime":
        return ort_version
    if config.backend == "torch-cuda":
        return _package_version("torch")
    return trt_version


def collect_manifest(config: DeviceConfig) -> dict[str, Any]:
    """Describe the machine, runtime and settings that timings under ``config`` run with.

    Never raises for a missing tool or unreadable file: such fields are None.

    Example:
        >>> from profilers.config import from_dict
        >>> m = collect_manifest(from_dict({"name": "demo", "threads": 2}))
        >>> m["threads"], m["cpu"]["logical_cores"] > 0
        (2, True)
    """
    ort = _onnxruntime_info()
    available = set(ort["available_providers"])
    trt_version = _tensorrt_version(config.backend)
    gpu, gpu_count, cuda_from_smi = _gpu_info()
    pycuda = _pycuda_info() if _uses_gpu(config) else {}
    if gpu is None and pycuda.get("device_name"):  # Jetson without nvidia-smi
        gpu = {"index": 0, "name": pycuda["device_name"], "driver_version": pycuda.get("cuda_driver_api"),
               "clock_sm_mhz": None, "clock_max_sm_mhz": None}
        gpu_count = max(gpu_count, 1)
    runtime_version = _runtime_version(config, ort["version"], trt_version)
    try:
        load_avg = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load_avg = None
    from profilers import __version__ as profilers_version

    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "os": {"system": platform.system(), "release": platform.release(), "version": platform.version(),
               "libc": " ".join(platform.libc_ver()).strip() or None},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "profilers": profilers_version,
        "device": config.name,
        "backend": config.backend,
        "runtime_version": runtime_version,
        "runtime": {
            "onnxruntime": ort["version"],
            "onnxruntime_providers": ort["available_providers"],
            "tensorrt": trt_version,
            "pycuda": _package_version("pycuda"),
            "cuda_python": _package_version("cuda-python") if _uses_gpu(config) else None,
            "torch": _package_version("torch") if config.backend == "torch-cuda" else None,
            "cuda_driver": cuda_from_smi or pycuda.get("cuda_driver_api"),
            "cuda_build": pycuda.get("cuda_build"),
        },
        "providers": list(config.providers),
        # what onnxruntime will really use: listed providers absent here are skipped
        "providers_effective": [p for p in config.providers if p in available],
        "threads": config.threads,
        "inter_op_threads": config.inter_op_threads,
        "graph_optimization": config.graph_optimization,
        "precision": config.precision,
        "batch_size": config.batch_size,
        "build": _build_settings(config, trt_version),
        "cpu": _cpu_info(),
        "gpu": gpu,
        "gpu_count": gpu_count,
        "load_avg": load_avg,
    }
    manifest["fingerprint"] = fingerprint(manifest)
    return manifest


def fingerprint_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """The fields that decide whether two timings are comparable, as a flat dict.

    The GPU and TensorRT are part of it only when the timings run on the GPU: a CPU
    onnxruntime figure does not change with the card in the machine. The build settings
    enter it when they change the timed program beyond what the versions already say (an
    ONNX conversion before a TensorRT 11 build, torch-cuda's precision mode and CUDA graphs);
    without them the fingerprint is what it was before they were recorded, so LUTs stay valid.
    """
    m = manifest
    runtime = m.get("runtime") or {}
    gpu = m.get("gpu") or {}
    cpu = m.get("cpu") or {}
    backend = m.get("backend")
    providers = m.get("providers_effective") or m.get("providers") or []
    on_gpu = backend in _GPU_BACKENDS or any(p in _GPU_PROVIDERS for p in providers)
    fields = {
        "device": m.get("device"),
        "backend": backend,
        "runtime_version": m.get("runtime_version"),
        "providers": list(providers) if backend == "onnxruntime" else [],
        "graph_optimization": m.get("graph_optimization") if backend == "onnxruntime" else None,
        "cpu_model": cpu.get("model"),
        "gpu_name": gpu.get("name") if on_gpu else None,
        "gpu_driver": gpu.get("driver_version") if on_gpu else None,
        "tensorrt": runtime.get("tensorrt") if on_gpu else None,
        "threads": m.get("threads"),
        "precision": m.get("precision"),
        "batch_size": m.get("batch_size"),
    }
    build = m.get("build") or {}
    if build.get("onnx_conversion") or backend == "torch-cuda":
        fields["build"] = build
    return fields


def fingerprint(manifest: dict[str, Any]) -> str:
    """A 16-hex-digit sha256 over the fields of ``fingerprint_fields`` only.

    Two manifests with equal fingerprints come from setups whose timings can be compared
    (and share LUT rows); hostname, clocks, load and timestamps do not enter it.
    """
    blob = json.dumps(fingerprint_fields(manifest), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: d}
    return {prefix: d}


# Where each fingerprint field lives in the manifest (dotted), for ``diff_manifests``.
_FINGERPRINT_SOURCES = {
    "device": "device", "backend": "backend", "runtime_version": "runtime_version",
    "providers": "providers_effective", "graph_optimization": "graph_optimization",
    "cpu_model": "cpu.model", "gpu_name": "gpu.name", "gpu_driver": "gpu.driver_version",
    "tensorrt": "runtime.tensorrt", "threads": "threads", "precision": "precision",
    "batch_size": "batch_size", "build": "build",
}


def diff_manifests(a: dict[str, Any], b: dict[str, Any],
                   ignore: tuple[str, ...] = VOLATILE_FIELDS) -> list[str]:
    """One line per field that differs between manifests ``a`` and ``b``.

    Differences that change the fingerprint (timings not comparable) come first, marked
    ``[fingerprint]``; then every other differing field (clocks, governor, host, library
    versions) in the order of ``a``. Dotted names address nested fields (``cpu.model``).
    Fields in ``ignore`` (timestamps, load) are skipped.

    Example:
        >>> diff_manifests({"device": "x", "threads": 1, "hostname": "a"},
        ...                {"device": "x", "threads": 4, "hostname": "b"})
        ['[fingerprint] threads: 1 -> 4', "hostname: 'a' -> 'b'"]
    """
    lines, shown = [], set()
    fa, fb = fingerprint_fields(a), fingerprint_fields(b)
    for key, source in _FINGERPRINT_SOURCES.items():
        if fa.get(key) != fb.get(key):
            lines.append(f"[fingerprint] {source}: {fa.get(key)!r} -> {fb.get(key)!r}")
            shown.add(source)
    flat_a, flat_b = _flatten(a), _flatten(b)
    for key in list(flat_a) + [k for k in flat_b if k not in flat_a]:
        if any(key == s or key.startswith(s + ".") for s in shown) or key in ignore or key.split(".")[0] in ignore:
            continue
        va, vb = flat_a.get(key), flat_b.get(key)
        if va != vb:
            lines.append(f"{key}: {va!r} -> {vb!r}")
    return lines
