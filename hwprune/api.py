"""The library entry points behind every CLI command (``hwprune.api.profile``, ``time_model``...)."""

from __future__ import annotations

from typing import Any

from profilers.config import load_device_config
from profilers.fileio import atomic_write_json


def time_model(onnx_path: str, device: str, json_path: str | None = None) -> dict[str, Any]:
    """Time one ONNX file on a device config; returns the device name, timing and environment.

    Example:
        >>> from hwprune import api
        >>> r = api.time_model("model.onnx", "x86-cpu-ort")  # doctest: +SKIP
        >>> r["timing"]["p50_ms"]  # doctest: +SKIP
    """
    from profilers.environment import collect_manifest
    from profilers.runners import make_runner

    cfg = load_device_config(device)
    with make_runner(onnx_path, cfg) as runner:
        stats = runner.measure()
        extra = {k: v.to_dict() for k, v in runner.extra_timings().items()}
    result = {"device": cfg.name, "model": onnx_path, "timed_scope": runner.timed_scope,
              "timing": stats.to_dict(), "extra_timings": extra,
              "environment": collect_manifest(cfg)}
    if json_path:
        atomic_write_json(json_path, result)
    return result
