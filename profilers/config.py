"""Device configs: the YAML schema, its validation, and lookup of shipped configs by name.

A device config says how to time models on one target: which backend and execution
providers, threads, precision, batch size, and the timing methodology (warm-up, minimum
repeats, time limit, statistic). Every problem is reported as one ``ConfigError`` line
that names the field and the file.

Example:
    >>> from profilers.config import load_device_config
    >>> cfg = load_device_config("x86-cpu-ort")
    >>> cfg.backend, cfg.threads
    ('onnxruntime', 1)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profilers.errors import ConfigError

BACKENDS = ("onnxruntime", "tensorrt", "torch-cuda")
# Precisions the torch-cuda backend runs a program in (it has no int8 path), and its own fields.
TORCH_CUDA_PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_CUDA_FIELDS = ("cuda_graphs", "autocast")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
STATISTICS = ("p50", "p90", "p99", "mean")
GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")

# Execution providers onnxruntime knows by name. A config may list one that this build of
# onnxruntime lacks (it is then skipped, "when present"); a name outside this list is a typo.
KNOWN_PROVIDERS = (
    "CPUExecutionProvider",
    "XnnpackExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "QNNExecutionProvider",
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
    "DnnlExecutionProvider",
    "NnapiExecutionProvider",
    "WebGpuExecutionProvider",
)

# Where shipped configs live: inside this package (so a wheel carries them; the checkout's
# top-level device_configs/ links here), or the folder named by HWPRUNE_DEVICE_CONFIGS.
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "device_configs"


@dataclass(frozen=True)
class RemoteConfig:
    """Where and how to run the profiler over SSH."""

    host: str
    python: str = "python3"
    workdir: str = "~/.hwprune-remote"
    user: str | None = None
    port: int = 22
    identity_file: str | None = None
    known_hosts: str | None = None
    connect_timeout_s: int = 10
    retries: int = 3


@dataclass(frozen=True)
class DeviceConfig:
    """One target device and how to time models on it (see device_configs/*.yaml)."""

    name: str
    backend: str = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    precision: str = "fp32"
    batch_size: int = 1
    warmup: int = 20
    min_repeats: int = 50
    max_repeats: int = 100000
    max_seconds: float = 2.0
    min_seconds: float = 0.0
    statistic: str = "p50"
    rel_ci: float = 0.02
    confidence: float = 0.95
    cv_threshold: float = 0.25
    # Widths a search may choose: every multiple of this many channels, or "auto" (the default):
    # the steps of each group's latency staircase as the profile measured it (hwprune.widthsteps).
    channel_multiple: int | str = "auto"
    # Candidates timed together, interleaved with the overhead and drift-reference graphs.
    interleave_batch: int = 8
    workspace_mb: int = 1024
    engine_cache: str | None = None
    # torch-cuda only: time replays of a captured CUDA graph (as trtexec --useCudaGraph), and
    # run fp16/bf16 under torch.autocast (fp32 weights) instead of casting weights and inputs.
    cuda_graphs: bool = False
    autocast: bool = False
    description: str = ""
    remote: RemoteConfig | None = None
    source: str = field(default="<inline>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that ``from_dict`` reads back (used to ship configs to devices)."""
        d = dataclasses.asdict(self)
        d["providers"] = list(self.providers)
        d.pop("source")
        if self.remote is None:
            d.pop("remote")
        if self.backend != "torch-cuda":
            # left out where they cannot apply, so other backends' dicts (and the journal ids and
            # bundle manifests made from them) are what they were before these fields existed
            for name in TORCH_CUDA_FIELDS:
                d.pop(name)
        return d

    @property
    def auto_widths(self) -> bool:
        """True when the widths a search may choose come from the measured staircase (``auto``)."""
        return self.channel_multiple == "auto"

    @property
    def width_multiple(self) -> int:
        """The channel multiple widths are rounded to: 1 with ``auto`` (the staircase decides)."""
        return 1 if self.auto_widths else int(self.channel_multiple)

    def replace(self, **changes: Any) -> "DeviceConfig":
        return dataclasses.replace(self, **changes)


def _type_name(expected: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    if isinstance(expected, tuple):
        return any(_type_ok(value, t) for t in expected)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "backend": str, "threads": int, "inter_op_threads": int,
    "graph_optimization": str, "precision": str, "batch_size": int, "warmup": int,
    "min_repeats": int, "max_repeats": int, "max_seconds": float, "min_seconds": float, "statistic": str,
    "rel_ci": float, "confidence": float, "cv_threshold": float, "channel_multiple": (int, str),
    "interleave_batch": int,
    "workspace_mb": int, "engine_cache": str, "description": str,
    "cuda_graphs": bool, "autocast": bool,
}
_REMOTE_TYPES: dict[str, type] = {
    "host": str, "python": str, "workdir": str, "user": str, "port": int,
    "identity_file": str, "known_hosts": str, "connect_timeout_s": int, "retries": int,
}


def from_dict(data: Any, source: str = "<inline>") -> DeviceConfig:
    """Validate a parsed config and build a ``DeviceConfig``; raises ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a device config must be a mapping of fields, got {type(data).__name__}")
    known = set(_FIELD_TYPES) | {"providers", "remote"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown field '{key}' (known: {', '.join(sorted(known))})")
    if data.get("name") is None:
        raise ConfigError(f"{source}: missing required field 'name'")
    kwargs: dict[str, Any] = {}
    for key, expected in _FIELD_TYPES.items():
        if key in data and data[key] is not None:
            value = data[key]
            if not _type_ok(value, expected):
                raise ConfigError(
                    f"{source}: field '{key}' must be {_type_name(expected)}, got {value!r}")
            kwargs[key] = float(value) if expected is float else value
    if "providers" in data:
        providers = data["providers"]
        if isinstance(providers, str):
            providers = [providers]
        if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers) or not providers:
            raise ConfigError(f"{source}: field 'providers' must be a non-empty list of names, got {data['providers']!r}")
        for p in providers:
            if p not in KNOWN_PROVIDERS:
                raise ConfigError(f"{source}: field 'providers': unknown execution provider '{p}' "
                                  f"(known: {', '.join(KNOWN_PROVIDERS)})")
        kwargs["providers"] = tuple(providers)
    if data.get("remote") is not None:
        remote = data["remote"]
        if not isinstance(remote, dict):
            raise ConfigError(f"{source}: field 'remote' must be a mapping with at least 'host'")
        for key in remote:
            if key not in _REMOTE_TYPES:
                raise ConfigError(f"{source}: unknown field 'remote.{key}' (known: {', '.join(_REMOTE_TYPES)})")
            if remote[key] is not None and not _type_ok(remote[key], _REMOTE_TYPES[key]):
                raise ConfigError(f"{source}: field 'remote.{key}' must be {_REMOTE_TYPES[key].__name__}, got {remote[key]!r}")
        # None means "not set", as for top-level fields (to_dict writes unset options as None)
        remote = {k: v for k, v in remote.items() if v is not None}
        if "host" not in remote:
            raise ConfigError(f"{source}: field 'remote' needs 'host'")
        kwargs["remote"] = RemoteConfig(**remote)

    cfg = DeviceConfig(source=source, **kwargs)
    _check_values(cfg, source)
    return cfg


def _check_values(cfg: DeviceConfig, source: str) -> None:
    def bad(fieldname: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: field '{fieldname}' {why}")

    if not cfg.name.strip():
        raise bad("name", "must not be empty")
    for name in ("max_seconds", "min_seconds", "rel_ci", "confidence", "cv_threshold"):
        if not math.isfinite(getattr(cfg, name)):  # NaN fails every comparison; infinity never ends a measurement
            raise bad(name, f"must be a finite number, got {getattr(cfg, name)}")
    if cfg.backend not in BACKENDS:
        raise bad("backend", f"must be one of {', '.join(BACKENDS)}, got '{cfg.backend}'")
    if cfg.precision not in PRECISIONS:
        raise bad("precision", f"must be one of {', '.join(PRECISIONS)}, got '{cfg.precision}'")
    if cfg.backend == "onnxruntime" and cfg.precision != "fp32":
        # onnxruntime runs the graph as exported: fp32 timings filed as fp16 would be a wrong LUT
        raise bad("precision", f"{cfg.precision} is not applied by backend onnxruntime, which times the ONNX model "
                               "as exported (fp32): use precision fp32, or backend tensorrt or torch-cuda")
    if cfg.backend == "torch-cuda" and cfg.precision not in TORCH_CUDA_PRECISIONS:
        raise bad("precision", f"must be one of {', '.join(TORCH_CUDA_PRECISIONS)} for backend torch-cuda, "
                               f"got '{cfg.precision}'")
    for name in TORCH_CUDA_FIELDS:
        if getattr(cfg, name) and cfg.backend != "torch-cuda":
            raise bad(name, f"applies to backend torch-cuda only, not {cfg.backend}")
    if cfg.autocast and cfg.precision == "fp32":
        raise bad("autocast", "needs precision fp16 or bf16 (fp32 has nothing to autocast to)")
    if cfg.statistic not in STATISTICS:
        raise bad("statistic", f"must be one of {', '.join(STATISTICS)}, got '{cfg.statistic}'")
    if cfg.graph_optimization not in GRAPH_OPT_LEVELS:
        raise bad("graph_optimization", f"must be one of {', '.join(GRAPH_OPT_LEVELS)}, got '{cfg.graph_optimization}'")
    if cfg.channel_multiple != "auto" and not (_type_ok(cfg.channel_multiple, int) and cfg.channel_multiple >= 1):
        raise bad("channel_multiple", f"must be 'auto' or an integer >= 1, got {cfg.channel_multiple!r}")
    for name in ("threads", "batch_size", "min_repeats", "max_repeats", "workspace_mb",
                 "interleave_batch"):
        if getattr(cfg, name) < 1:
            raise bad(name, f"must be >= 1, got {getattr(cfg, name)}")
    if cfg.inter_op_threads < 1:
        raise bad("inter_op_threads", f"must be >= 1, got {cfg.inter_op_threads}")
    if cfg.warmup < 0:
        raise bad("warmup", f"must be >= 0, got {cfg.warmup}")
    if cfg.max_seconds <= 0:
        raise bad("max_seconds", f"must be > 0, got {cfg.max_seconds}")
    if not 0 <= cfg.min_seconds <= cfg.max_seconds:
        raise bad("min_seconds", f"must be in [0, max_seconds] (max_seconds is {cfg.max_seconds}), got {cfg.min_seconds}")
    if cfg.max_repeats < cfg.min_repeats:
        raise bad("max_repeats", f"must be >= min_repeats ({cfg.min_repeats}), got {cfg.max_repeats}")
    if not 0 < cfg.rel_ci < 1:
        raise bad("rel_ci", f"must be in (0, 1), got {cfg.rel_ci}")
    if not 0.5 <= cfg.confidence < 1:
        raise bad("confidence", f"must be in [0.5, 1), got {cfg.confidence}")
    if cfg.cv_threshold <= 0:
        raise bad("cv_threshold", f"must be > 0, got {cfg.cv_threshold}")


def shipped_config_dir() -> Path:
    env = os.environ.get("HWPRUNE_DEVICE_CONFIGS")
    if env and not Path(env).is_dir():
        raise ConfigError(f"HWPRUNE_DEVICE_CONFIGS={env} is not a folder of device configs")
    return Path(env) if env else SHIPPED_CONFIG_DIR


def shipped_configs() -> list[str]:
    """Names of the device configs shipped in device_configs/."""
    d = shipped_config_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _unique_keys_loader(yaml: Any) -> type:
    """PyYAML's safe loader refusing a key given twice: it keeps the last silently, so a config
    with ``threads: 1`` and later ``threads: 2`` would time with 2 threads and say nothing."""

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys


def load_device_config(name_or_path: str | os.PathLike[str]) -> DeviceConfig:
    """Load a device config by shipped name (``x86-cpu-ort``) or by path (YAML or JSON)."""
    text = str(name_or_path)
    path = Path(text)
    if not path.is_file():
        candidate = shipped_config_dir() / f"{text}.yaml"
        if candidate.is_file():
            path = candidate
        elif path.suffix in (".yaml", ".yml", ".json") or os.sep in text:
            raise ConfigError(f"device config file not found: {text}")
        else:
            raise ConfigError(f"unknown device '{text}' (shipped: {', '.join(shipped_configs()) or 'none'}; "
                              "or give a path to a YAML file)")
    try:
        raw = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read device config: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: device config is not UTF-8 text") from None
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: invalid JSON: {err.msg} at line {err.lineno}") from None
    else:
        try:
            import yaml  # host side only; devices receive configs as JSON
        except ImportError:  # pragma: no cover - devices get JSON
            raise ConfigError(f"{path}: reading YAML needs pyyaml (pip install pyyaml), or pass a JSON config") from None
        try:
            data = yaml.load(raw, Loader=_unique_keys_loader(yaml))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    return from_dict(data, source=str(path))
