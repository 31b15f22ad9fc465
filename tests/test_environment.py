"""The environment manifest: contents, fingerprint stability, diffs, and tolerant probing."""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import stat
import sys
import time

import numpy as np
import pytest

from profilers import environment
from profilers.config import from_dict, load_device_config
from profilers.environment import (collect_manifest, diff_manifests, fingerprint, parse_cpu_model,
                                   parse_nvidia_smi, read_cpufreq)


@pytest.fixture(scope="module")
def manifest():
    return collect_manifest(load_device_config("x86-cpu-ort"))


def test_manifest_has_the_documented_fields(manifest):
    for key in ("hostname", "os", "python", "numpy", "backend", "runtime", "cpu", "gpu", "threads",
                "precision", "batch_size", "providers", "timestamp_utc", "fingerprint"):
        assert key in manifest, key
    assert manifest["python"] == platform.python_version()
    assert manifest["numpy"] == np.__version__
    assert manifest["backend"] == "onnxruntime"
    assert manifest["threads"] == 1 and manifest["precision"] == "fp32" and manifest["batch_size"] == 1
    assert manifest["providers"] == ["CPUExecutionProvider"]
    assert manifest["cpu"]["logical_cores"] == os.cpu_count()
    assert manifest["os"]["release"] == platform.release()


def test_manifest_records_onnxruntime_and_its_providers(manifest):
    import onnxruntime as ort

    assert manifest["runtime"]["onnxruntime"] == ort.__version__
    assert manifest["runtime_version"] == ort.__version__
    assert manifest["runtime"]["onnxruntime_providers"] == ort.get_available_providers()
    assert manifest["providers_effective"] == ["CPUExecutionProvider"]


def test_manifest_is_json_and_timestamp_is_utc_iso(manifest):
    again = json.loads(json.dumps(manifest))
    assert again == manifest
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", manifest["timestamp_utc"])


def test_cpu_model_on_this_machine(manifest):
    if sys.platform.startswith("linux"):
        expected = parse_cpu_model(open("/proc/cpuinfo").read())
        if expected:
            assert manifest["cpu"]["model"] == expected
    assert manifest["cpu"]["model"]


def test_fingerprint_is_16_hex_and_stable(manifest):
    fp = fingerprint(manifest)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert manifest["fingerprint"] == fp
    # a second collection on the same machine, and a JSON round trip, give the same value
    assert fingerprint(collect_manifest(load_device_config("x86-cpu-ort"))) == fp
    assert fingerprint(json.loads(json.dumps(manifest))) == fp


@pytest.mark.parametrize("path, value", [
    ("hostname", "elsewhere"), ("timestamp_utc", "2001-01-01T00:00:00+00:00"),
    ("cpu.cur_freq_mhz", 1234.0), ("cpu.max_freq_mhz", 9999.0), ("cpu.governor", "powersave"),
    ("load_avg", [9.0, 9.0, 9.0]), ("python", "3.99.0"), ("os.release", "0.0"),
])
def test_fingerprint_ignores_host_clocks_and_time(manifest, path, value):
    m = copy.deepcopy(manifest)
    _set(m, path, value)
    assert fingerprint(m) == fingerprint(manifest)


@pytest.mark.parametrize("path, value", [
    ("device", "other-device"), ("backend", "tensorrt"), ("runtime_version", "0.0.1"),
    ("providers_effective", ["XnnpackExecutionProvider", "CPUExecutionProvider"]),
    ("cpu.model", "Some Other CPU"), ("threads", 4), ("precision", "fp16"), ("batch_size", 8),
])
def test_fingerprint_changes_with_what_makes_timings_comparable(manifest, path, value):
    m = copy.deepcopy(manifest)
    _set(m, path, value)
    assert fingerprint(m) != fingerprint(manifest)


def _gpu_manifest(**gpu):
    base = {"device": "a100-trt-fp16", "backend": "tensorrt", "runtime_version": "10.0.1",
            "runtime": {"tensorrt": "10.0.1"}, "cpu": {"model": "AMD EPYC 7742"}, "threads": 1,
            "precision": "fp16", "batch_size": 1,
            "gpu": {"name": "NVIDIA A100-SXM4-80GB", "driver_version": "535.104.05",
                    "clock_sm_mhz": 1410.0, "clock_max_sm_mhz": 1410.0}}
    base["gpu"].update(gpu)
    return base


def test_fingerprint_of_gpu_timings_covers_gpu_driver_and_tensorrt():
    base = _gpu_manifest()
    assert fingerprint(_gpu_manifest(name="NVIDIA H100 80GB HBM3")) != fingerprint(base)
    assert fingerprint(_gpu_manifest(driver_version="550.54.15")) != fingerprint(base)
    newer = copy.deepcopy(base)
    newer["runtime"]["tensorrt"] = "10.3.0"
    assert fingerprint(newer) != fingerprint(base)
    # clocks are recorded, not fingerprinted
    assert fingerprint(_gpu_manifest(clock_sm_mhz=210.0)) == fingerprint(base)


def test_fingerprint_of_cpu_timings_ignores_the_gpu_in_the_box(manifest):
    m = copy.deepcopy(manifest)
    m["gpu"] = {"name": "NVIDIA A100", "driver_version": "535.0"}
    assert fingerprint(m) == fingerprint(manifest)


def test_diff_manifests_lists_differing_fields_fingerprint_first(manifest):
    assert diff_manifests(manifest, copy.deepcopy(manifest)) == []
    other = copy.deepcopy(manifest)
    other["threads"] = 4
    other["hostname"] = "elsewhere"
    other["cpu"]["cur_freq_mhz"] = 1500.0
    other["timestamp_utc"] = "2001-01-01T00:00:00+00:00"
    lines = diff_manifests(manifest, other)
    assert lines[0] == "[fingerprint] threads: 1 -> 4"
    assert f"hostname: {manifest['hostname']!r} -> 'elsewhere'" in lines
    assert any(line.startswith("cpu.cur_freq_mhz:") and "1500.0" in line for line in lines)
    assert not any("timestamp" in line for line in lines)  # volatile: skipped by default
    assert len(lines) == 3
    assert any("timestamp" in line for line in diff_manifests(manifest, other, ignore=()))


def test_diff_manifests_names_nested_gpu_fields():
    lines = diff_manifests(_gpu_manifest(), _gpu_manifest(driver_version="550.54.15", clock_sm_mhz=900.0))
    assert lines == ["[fingerprint] gpu.driver_version: '535.104.05' -> '550.54.15'",
                     "gpu.clock_sm_mhz: 1410.0 -> 900.0"]


def test_diff_manifests_tolerates_missing_fields():
    lines = diff_manifests({"device": "x"}, {"device": "x", "cpu": {"model": "Cortex-A76"}})
    assert lines == ["[fingerprint] cpu.model: None -> 'Cortex-A76'"]


# -- probing helpers on canned inputs ---------------------------------------------------------
_PI5_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

processor\t: 1
CPU implementer\t: 0x41
CPU part\t: 0xd0b

Revision\t: d04170
Serial\t\t: 1234
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def test_parse_cpu_model_x86_arm_and_lscpu():
    assert parse_cpu_model("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6130 CPU\n") == \
        "Intel(R) Xeon(R) Gold 6130 CPU"
    assert parse_cpu_model(_PI5_CPUINFO) == "Cortex-A76"
    biglittle = "CPU part\t: 0xd05\nCPU part\t: 0xd05\nCPU part\t: 0xd0b\n"
    assert parse_cpu_model(biglittle) == "Cortex-A55 + Cortex-A76"
    assert parse_cpu_model("CPU part\t: 0xfff\n") == "ARM part 0xfff"
    assert parse_cpu_model("", "Architecture: aarch64\nModel name:   Cortex-A78AE\n") == "Cortex-A78AE"
    assert parse_cpu_model("processor : 0\nHardware : BCM2835\n") == "BCM2835"
    assert parse_cpu_model(None) is None
    # a part number names an Arm core only under Arm's implementer code
    assert parse_cpu_model("CPU implementer\t: 0x4e\nCPU part\t: 0x004\n") == "NVIDIA part 0x004"
    assert parse_cpu_model("CPU implementer\t: 0x41\nCPU part\t: 0xd42\n") == "Cortex-A78AE"
    # a 32-bit ARM kernel's "model name" is the same on every ARMv7 board; the part is not
    assert parse_cpu_model("model name\t: ARMv7 Processor rev 4 (v7l)\nCPU implementer\t: 0x41\n"
                           "CPU part\t: 0xd08\n") == "Cortex-A72"


_X86_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2\n"


def test_cpu_info_names_the_arm_cores_on_a_board(monkeypatch):
    monkeypatch.setattr(environment, "_read_text", lambda p: _PI5_CPUINFO if str(p) == "/proc/cpuinfo" else None)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    cpu = environment._cpu_info()
    assert cpu["model"] == "Cortex-A76" and cpu["arch"] == "aarch64" and cpu["emulated"] is False
    assert cpu["board"] == "Raspberry Pi 5 Model B Rev 1.0"


def test_cpu_info_under_user_mode_emulation_does_not_claim_the_host_cpu(monkeypatch):
    # qemu-user on an x86 host (make arm-env's board): the kernel's /proc/cpuinfo is the host's
    monkeypatch.setattr(environment, "_read_text", lambda p: _X86_CPUINFO if str(p) == "/proc/cpuinfo" else None)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    cpu = environment._cpu_info()
    assert cpu["emulated"] is True
    assert cpu["model"] == "aarch64 under user-mode emulation on AMD EPYC"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert environment._cpu_info()["model"] == "AMD EPYC" and environment._cpu_info()["emulated"] is False
    # newer qemu (and make arm-env's board) show qemu's own "max" CPU: implementer 0, part 'Q'
    qemu = "processor\t: 0\nCPU implementer\t: 0x00\nCPU architecture: 8\nCPU part\t: 0x051\n"
    monkeypatch.setattr(environment, "_read_text", lambda p: qemu if str(p) == "/proc/cpuinfo" else None)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert environment._cpu_info()["model"] == "QEMU TCG 'max' CPU" and environment._cpu_info()["emulated"] is True
    # a kernel that does not say which kind it is: unknown, not a guess
    monkeypatch.setattr(environment, "_read_text", lambda p: "processor : 0\n" if str(p) == "/proc/cpuinfo" else None)
    assert environment._cpu_info()["emulated"] is None


def test_read_cpufreq_from_a_sysfs_tree(tmp_path):
    d = tmp_path / "cpu2" / "cpufreq"
    d.mkdir(parents=True)
    (d / "scaling_governor").write_text("performance\n")
    (d / "scaling_cur_freq").write_text("2400000\n")
    (d / "cpuinfo_max_freq").write_text("2400000\n")
    assert read_cpufreq(2, root=tmp_path) == {"governor": "performance", "cur_freq_mhz": 2400.0,
                                              "max_freq_mhz": 2400.0}
    assert read_cpufreq(0, root=tmp_path) == {"governor": None, "cur_freq_mhz": None, "max_freq_mhz": None}


def test_parse_nvidia_smi_with_and_without_units():
    text = ("NVIDIA A100-SXM4-80GB, 535.104.05, 1410 MHz, 1410 MHz\n"
            "NVIDIA A100-SXM4-80GB, 535.104.05, 210, 1410\n"
            "Orin, 540.2.0, [N/A], [N/A]\n")
    gpus = parse_nvidia_smi(text)
    assert [g["clock_sm_mhz"] for g in gpus] == [1410.0, 210.0, None]
    assert gpus[0]["name"] == "NVIDIA A100-SXM4-80GB" and gpus[0]["driver_version"] == "535.104.05"
    assert gpus[2]["clock_max_sm_mhz"] is None
    assert parse_nvidia_smi("") == [] and parse_nvidia_smi(None) == []


def _fake_tool(bin_dir, name, script):
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for nvidia-smi")
def test_gpu_fields_come_from_nvidia_smi(tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "nvidia-smi", """
case "$1" in
  --query-gpu=*) echo "NVIDIA H100 80GB HBM3, 550.54.15, 1980 MHz, 1980 MHz"
                 echo "NVIDIA H100 80GB HBM3, 550.54.15, 345 MHz, 1980 MHz" ;;
  *) echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |" ;;
esac
""")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    m = collect_manifest(load_device_config("h100-trt-fp16"))
    assert m["gpu"]["name"] == "NVIDIA H100 80GB HBM3"
    assert m["gpu"]["driver_version"] == "550.54.15"
    assert m["gpu"]["index"] == 1 and m["gpu"]["clock_sm_mhz"] == 345.0  # the visible one
    assert m["gpu_count"] == 2
    assert m["runtime"]["cuda_driver"] == "12.4"
    assert m["backend"] == "tensorrt" and m["precision"] == "fp16"


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for nvidia-smi")
def test_hung_or_failing_nvidia_smi_is_bounded(tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "nvidia-smi", "exec sleep 30\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(environment, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    m = collect_manifest(load_device_config("x86-cpu-ort"))
    assert time.monotonic() - t0 < 10
    assert m["gpu"] is None
    _fake_tool(tmp_path / "bin", "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    assert collect_manifest(load_device_config("x86-cpu-ort"))["gpu"] is None


def test_manifest_follows_the_config():
    # (onnxruntime times the graph as exported: fp32 is its one precision)
    cfg = from_dict({"name": "custom", "threads": 3, "batch_size": 4, "precision": "fp32",
                     "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    m = collect_manifest(cfg)
    assert (m["device"], m["threads"], m["batch_size"], m["precision"]) == ("custom", 3, 4, "fp32")
    assert m["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    import onnxruntime as ort
    assert m["providers_effective"] == [p for p in m["providers"] if p in ort.get_available_providers()]


def _set(d, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def test_manifest_records_the_tensorrt_build_route(monkeypatch):
    monkeypatch.setattr(environment, "_tensorrt_version", lambda backend: "11.4.0")
    m = collect_manifest(load_device_config("h100-trt-fp16"))
    assert m["build"]["route"] == "strongly-typed" and m["build"]["workspace_mb"] == 4096
    assert m["build"]["onnx_conversion"]["converter"].startswith("onnxconverter-common")
    monkeypatch.setattr(environment, "_tensorrt_version", lambda backend: "10.3.0")
    m = collect_manifest(load_device_config("h100-trt-fp16"))
    assert m["build"] == {"route": "builder-flags", "precision": "fp16", "workspace_mb": 4096,
                          "builder_flags": ["FP16"]}
    assert collect_manifest(load_device_config("x86-cpu-ort"))["build"] is None


def test_fingerprint_covers_an_onnx_conversion_but_not_the_flag_route():
    base = _gpu_manifest()
    flags = copy.deepcopy(base)
    flags["build"] = {"route": "builder-flags", "precision": "fp16", "workspace_mb": 1024, "builder_flags": ["FP16"]}
    assert fingerprint(flags) == fingerprint(base)  # LUTs measured before 'build' was recorded stay valid
    converted = copy.deepcopy(base)
    converted["build"] = {"route": "strongly-typed", "onnx_conversion": {"converter": "c", "version": "1.16.0"}}
    newer = copy.deepcopy(converted)
    newer["build"]["onnx_conversion"]["version"] = "1.17.0"
    assert len({fingerprint(base), fingerprint(converted), fingerprint(newer)}) == 3
    assert diff_manifests(converted, newer)[0].startswith("[fingerprint] build:")
    assert len(diff_manifests(converted, newer)) == 1
