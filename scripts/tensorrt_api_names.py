"""Writes tests/data/tensorrt_api.json: the published TensorRT Python API names the fakes are checked against.

TensorRT's Python bindings ship no type information; the community ``tensorrt-stubs``
wheel (https://github.com/sync-dev-org/tensorrt-stubs, MIT) carries stubs generated from
the real bindings, ``tensorrt_bindings/tensorrt.pyi``. This reads one such wheel and keeps,
for the classes the TensorRT backend touches, every public member name (base classes
merged in), plus the module's own names. TensorRT 11 publishes no stubs yet: its list is
the 10.x list minus the removals NVIDIA's TensorRT 11 migration guide names (see
REMOVED_IN_11 and /work/shared/research/tensorrt.md).

Usage:
    pip download --no-deps -d /tmp/stubs tensorrt-stubs==10.13.0.35.1
    python scripts/tensorrt_api_names.py /tmp/stubs/tensorrt_stubs-10.13.0.35.1-py3-none-any.whl
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tensorrt_api.json"

# The classes whose members profilers/tensorrt.py (or its fakes) use.
CLASSES = ("Logger", "ILogger", "Builder", "INetworkDefinition", "OnnxParser", "ParserError", "IBuilderConfig",
           "IOptimizationProfile", "IHostMemory", "Runtime", "ICudaEngine", "IExecutionContext", "ITensor",
           "ILayer", "BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DataType", "LayerType",
           "TensorIOMode")

# Removed in TensorRT 11.0 (TensorRT 11.x migration guide, Python API; trtexec page):
# the weak-typing precision flags, the INT8 calibrators and quantization flags,
# IAlgorithmSelector (and the flag that served it), the platform_has_fast_* queries and
# ICudaEngine.device_memory_size. ITensor's dynamic ranges belong to the implicit
# quantization the guide removes; listed as gone so that no code path on 11 leans on them.
REMOVED_IN_11 = {
    "BuilderFlag": ["FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS"],
    "IBuilderConfig": ["int8_calibrator", "set_calibration_profile", "get_calibration_profile",
                       "algorithm_selector", "set_quantization_flag", "clear_quantization_flag",
                       "get_quantization_flag", "quantization_flags"],
    "Builder": ["platform_has_fast_fp16", "platform_has_fast_int8"],
    "ITensor": ["dynamic_range", "set_dynamic_range", "reset_dynamic_range"],
    "ICudaEngine": ["device_memory_size"],
    "<module>": ["IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8LegacyCalibrator",
                 "IInt8MinMaxCalibrator", "CalibrationAlgoType", "IAlgorithmSelector", "QuantizationFlag"],
}


_CLASS = re.compile(r"^class (\w+)(?:\(([^)]*)\))?:")
_MEMBER = re.compile(r"^    (?:def (\w+)\(|(\w+)\s*[:=]|class (\w+))")


def _classes(stub: str) -> dict[str, tuple[list[str], set[str]]]:
    """{class: (base names, public member names)} from a stub file, line by line.

    Line by line because the generated stub is not always valid Python (a default argument
    before a non-default one), so ``ast`` refuses it; top-level classes start in column 0
    and their members (methods, properties, enum values, nested classes) in column 4.
    """
    out: dict[str, tuple[list[str], set[str]]] = {}
    current, in_docstring = None, False
    for line in stub.splitlines():
        if line.count('"""') % 2:  # docstrings name members in prose ("Members:"): skip them
            in_docstring = not in_docstring
            continue
        if in_docstring:
            continue
        m = _CLASS.match(line)
        if m:
            bases = [b.strip().split(".")[-1] for b in (m.group(2) or "").split(",") if b.strip()]
            current = out.setdefault(m.group(1), (bases, set()))
            continue
        if line and not line.startswith(" "):
            current = None
        elif current is not None:
            m = _MEMBER.match(line)
            name = m and (m.group(1) or m.group(2) or m.group(3))
            if name and not name.startswith("_"):
                current[1].add(name)
    return out


def published_names(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        bindings = z.read("tensorrt_bindings/tensorrt.pyi").decode()
        package = z.read("tensorrt/__init__.pyi").decode()
    classes = _classes(bindings)

    def merged(name: str) -> set[str]:
        bases, members = classes[name]
        out = set(members)
        for base in bases:
            if base in classes:
                out |= merged(base)
        return out

    all_line = next(line for line in package.splitlines() if line.startswith("__all__"))
    module = set(ast.literal_eval(all_line.split("=", 1)[1].strip())) | {"__version__"}
    version = next(line.split("'")[1] for line in package.splitlines() if line.startswith("__version__"))
    return {"version": version, "module": sorted(module), "classes": {c: sorted(merged(c)) for c in CLASSES}}


def main(wheel: str) -> None:
    ten = published_names(Path(wheel))
    eleven = {"module": sorted(set(ten["module"]) - set(REMOVED_IN_11["<module>"])),
              "classes": {c: sorted(set(m) - set(REMOVED_IN_11.get(c, []))) for c, m in ten["classes"].items()}}
    doc = {
        "source": {"10": f"tensorrt-stubs {Path(wheel).name} (tensorrt_bindings/tensorrt.pyi, generated from "
                         f"TensorRT {ten['version']}'s bindings)",
                   "11": "the 10 list minus the removals in NVIDIA's TensorRT 11.x migration guide "
                         "(scripts/tensorrt_api_names.py REMOVED_IN_11)"},
        "removed_in_11": REMOVED_IN_11,
        "10": {"module": ten["module"], "classes": ten["classes"]},
        "11": eleven,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/tensorrt_api_names.py TENSORRT_STUBS_WHEEL")
    main(sys.argv[1])
