"""The ``baseline.json`` format: what ``hwprune prune`` writes and ``hwprune regress`` reads.

A baseline is one process's timing samples of a model on a device, with the device's
environment manifest and, timed interleaved with the model in that same process, samples of
the fixed *drift reference* graph (``reference_graph``), by which ``hwprune regress`` later
normalises away the machine's per-process speed level (see ``hwprune.regress``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hwprune.errors import HwpruneError

BASELINE_FORMAT = 1
# Samples of the model (and of the drift reference) a written baseline holds at least: the
# stored side's spread never shrinks later. With the ~200 that the convergence rule stopped
# at, a check of a 10% slower model under load (bench/regress_bench.py) was left at
# "no sample count decides it": the stored half of the normalised interval was too wide.
BASELINE_SAMPLES = 1000
# The drift reference's key among the models timed side by side when a baseline is measured
# and checked (``hwprune prune``'s final measurement, ``hwprune regress``'s samplers). It has
# its own name because ``hwprune.measure.REFERENCE_KEY`` names another graph (the LUT's
# reference conv); the value is the one both have always had, since ``hwprune regress --json``
# writes it as a key of "timings" and "samples_ms". The two references must never be timed in
# one call (``measure_many(..., with_reference=True)`` with this key among the items): their
# keys would collide.
BASELINE_REFERENCE_KEY = "__reference__"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The baseline drift reference: depthwise 3x3 (32 ch) -> 1x1 32->64 -> depthwise 3x3 stride 2
# -> 1x1 64->64, ReLU after each, on 1x32x56x56 (~1.3 MB of activations: beyond a core's L2,
# like a whole model's working set, and ~0.35 ms on one x86 thread). Chosen by measurement
# (bench/regress_bench.py --reference-study): over 20 processes of a loaded 2-core VM whose
# speed moved by up to 35%, the bench CNN's p50 spread over 23% raw, 19% over the LUT's
# 32->32 conv at 14x14 (cache-resident, ~0.05 ms: it over-reacts to a neighbour's load) and
# 7% over this graph. It does not track a model that lives in the shared cache (MobileNetV2
# at 64x64, 9 MB of weights: 55% raw, ~45% over either reference).
# The name keeps the module that first defined the graph: baselines store it, and it is the
# graph's producer_name, so it is part of the sha256 a baseline's reference is checked by.
REFERENCE_NAME = "hwprune.regress:dwblock-v1"
_REFERENCE_LAYERS = ((32, 32, 3, 1, 32), (32, 64, 1, 1, 1), (64, 64, 3, 2, 64), (64, 64, 1, 1, 1))
_REFERENCE_INPUT = (1, 32, 56, 56)


@functools.lru_cache(maxsize=1)
def _reference_onnx() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "input"
    for i, (cin, cout, k, stride, groups) in enumerate(_REFERENCE_LAYERS):
        w = (rng.standard_normal((cout, cin // groups, k, k)) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"c{i}.w"), numpy_helper.from_array(np.zeros(cout, np.float32), f"c{i}.b")]
        nodes += [helper.make_node("Conv", [prev, f"c{i}.w", f"c{i}.b"], [f"c{i}"], kernel_shape=[k, k],
                                   pads=[k // 2] * 4, strides=[stride, stride], group=groups),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["output"]))
    graph = helper.make_graph(nodes, "drift_reference",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(_REFERENCE_INPUT))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 64, 1, 1])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=REFERENCE_NAME)
    model.ir_version = 8
    return model.SerializeToString()


def reference_graph() -> tuple[str, bytes]:
    """The drift reference a baseline is normalised by: its name and ONNX bytes.

    Built here, deterministically (fixed seed): a baseline stores the graph's sha256, and one
    whose reference differs from this hwprune's is compared raw (with a warning). A caller
    that writes a baseline times ``(BASELINE_REFERENCE_KEY, reference_graph()[1])`` as one
    more item beside the model, interleaved in the same process (``hwprune.measure.measure_many``
    does that for any items it is given), and passes that timing to ``make_baseline``.
    """
    return REFERENCE_NAME, _reference_onnx()


def make_baseline(onnx_bytes: bytes, model_name: str, device: str, statistic: str, timing: dict[str, Any],
                  environment: dict[str, Any] | None, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """A baseline record as ``hwprune prune`` writes it to ``baseline.json``.

    ``timing`` is a TimingStats dict with ``samples_ms``; ``model_name`` is the model file's
    path relative to the baseline's folder. ``reference``: a TimingStats dict (with samples)
    of ``reference_graph()`` timed interleaved with the model *in the same process* as
    ``timing``, e.g. ``measure_many([("pruned", onnx), (BASELINE_REFERENCE_KEY,
    reference_graph()[1])], cfg)[BASELINE_REFERENCE_KEY]``; without it ``hwprune regress
    --baseline`` compares raw, exposed to process-level drift.

    Example:
        >>> b = make_baseline(b"onnx", "pruned.onnx", "x86-cpu-ort", "p50", {"samples_ms": [1.0, 1.1]}, None,
        ...                   reference={"samples_ms": [0.05, 0.06]})
        >>> b["reference"]["model"], b["reference"]["timing"]["samples_ms"]
        ('hwprune.regress:dwblock-v1', [0.05, 0.06])
    """
    from profilers.environment import fingerprint

    out = {"format": BASELINE_FORMAT, "model": model_name, "onnx_sha256": _sha256(onnx_bytes), "device": device,
           "statistic": statistic, "timing": timing, "environment": environment or {},
           "fingerprint": fingerprint(environment) if environment else None, "created_unix_s": time.time(),
           "inputs": onnx_inputs(onnx_bytes)}
    if reference is not None:
        name, blob = reference_graph()
        out["reference"] = {"model": name, "onnx_sha256": _sha256(blob), "timing": reference}
    return out


def onnx_inputs(onnx_bytes: bytes) -> list[dict[str, Any]] | None:
    """An ONNX model's graph inputs (initializers aside): name, shape (a symbolic dimension by its
    name) and element type; None when the bytes do not parse as ONNX."""
    import onnx

    try:
        graph = onnx.ModelProto.FromString(onnx_bytes).graph
    except Exception:   # protobuf's DecodeError, or bytes that are not a model at all
        return None
    weights = {t.name for t in graph.initializer}
    out = []
    for v in graph.input:
        if v.name in weights:
            continue
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        out.append({"name": v.name, "shape": dims,
                    "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()})
    return out


def input_difference(then: list[dict[str, Any]] | None, now: list[dict[str, Any]] | None) -> str | None:
    """How two models' inputs differ, in words (None: alike, or one side unknown)."""
    if not then or not now or then == now:
        return None

    def words(inputs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))} {i['dtype']}" for i in inputs)

    return f"{words(now)} now, {words(then)} then"


def _check_samples(p: Path, timing: Any, where: str) -> None:
    samples = timing.get("samples_ms") if isinstance(timing, dict) else None
    if not isinstance(samples, list) or len(samples) < 2:
        raise HwpruneError(f"{p}: corrupt baseline: '{where}.samples_ms' must list at least 2 samples")
    try:
        arr = np.asarray(samples, dtype=float)
    except (TypeError, ValueError):
        raise HwpruneError(f"{p}: corrupt baseline: '{where}.samples_ms' must be numbers") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise HwpruneError(f"{p}: corrupt baseline: '{where}.samples_ms' must be positive finite numbers")
    _check_states(p, timing, len(samples), where)


def _check_states(p: Path, timing: dict, n: int, where: str) -> None:
    """The samples' machine states, when the baseline has them: one label a sample, each naming a state or mixed."""
    if not timing.get("sample_states") and not timing.get("state_probe_us"):
        return  # not probed
    centers, labels = timing.get("state_probe_us"), timing.get("sample_states")
    if not isinstance(centers, list) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0 for c in centers):
        raise HwpruneError(f"{p}: corrupt baseline: '{where}.state_probe_us' must list positive numbers")
    if not isinstance(labels, list) or len(labels) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) and -1 <= v < len(centers) for v in labels):
        raise HwpruneError(f"{p}: corrupt baseline: '{where}.sample_states' must give each of the {n} samples "
                           f"a state index below {len(centers)} (or -1)")


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a baseline file; every problem is one ``HwpruneError`` line."""
    p = Path(path)
    if not p.is_file():
        raise HwpruneError(f"baseline not found: {p}")
    try:
        data = json.loads(p.read_text())
    except OSError as err:
        raise HwpruneError(f"{p}: cannot read baseline: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HwpruneError(f"{p}: corrupt baseline (not JSON: {str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise HwpruneError(f"{p}: corrupt baseline: expected a JSON object")
    if data.get("format") != BASELINE_FORMAT:
        raise HwpruneError(f"{p}: unsupported baseline format {data.get('format')!r} (this hwprune reads "
                           f"format {BASELINE_FORMAT})")
    if not isinstance(data.get("device"), str):
        raise HwpruneError(f"{p}: corrupt baseline: no 'device'")
    _check_samples(p, data.get("timing"), "timing")
    ref = data.get("reference")
    if ref is not None:
        if not isinstance(ref, dict) or not isinstance(ref.get("onnx_sha256"), str):
            raise HwpruneError(f"{p}: corrupt baseline: 'reference' must be an object with 'onnx_sha256'")
        _check_samples(p, ref.get("timing"), "reference.timing")
    if data.get("model") is not None and not isinstance(data["model"], str):
        raise HwpruneError(f"{p}: corrupt baseline: 'model' must be the ONNX file's name, got {data['model']!r}")
    from profilers.config import STATISTICS

    if data.get("statistic") is not None and data["statistic"] not in STATISTICS:
        raise HwpruneError(f"{p}: corrupt baseline: 'statistic' must be one of {', '.join(STATISTICS)}, got "
                           f"{data['statistic']!r}")
    if data.get("environment") is not None and not isinstance(data["environment"], dict):
        raise HwpruneError(f"{p}: corrupt baseline: 'environment' must be an object")
    return data
