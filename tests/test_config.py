"""Device configs: shipped files load, and every kind of bad config is one clear ConfigError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from profilers.config import (DeviceConfig, KNOWN_PROVIDERS, RemoteConfig, from_dict, load_device_config,
                              shipped_config_dir, shipped_configs)
from profilers.errors import ConfigError, ProfilerError

EXPECTED_SHIPPED = {"x86-cpu-ort", "x86-cpu-ort-4t", "arm-cpu-ort", "jetson-orin-trt-fp16",
                    "a100-trt-fp16", "h100-trt-fp16", "h200-torch-cuda-bf16", "h200-torch-cuda-fp16"}


def test_the_documented_configs_are_shipped():
    assert EXPECTED_SHIPPED <= set(shipped_configs())


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_loads(name):
    cfg = load_device_config(name)
    assert isinstance(cfg, DeviceConfig)
    assert cfg.name == name  # the file stem and the name field agree
    assert cfg.description.strip() and "\n" not in cfg.description.strip()
    assert cfg.source == str(shipped_config_dir() / f"{name}.yaml")
    # each file opens by saying what it assumes
    text = (shipped_config_dir() / f"{name}.yaml").read_text()
    assert text.startswith("#") and "Assumes" in text
    # a path works as well as the name
    assert load_device_config(shipped_config_dir() / f"{name}.yaml") == cfg


def test_shipped_values_match_their_purpose():
    assert load_device_config("x86-cpu-ort").threads == 1
    assert load_device_config("x86-cpu-ort-4t").threads == 4
    arm = load_device_config("arm-cpu-ort")
    assert arm.threads == 4 and arm.providers == ("XnnpackExecutionProvider", "CPUExecutionProvider")
    assert arm.remote is None  # the example remote block is commented out
    assert "remote:" in (shipped_config_dir() / "arm-cpu-ort.yaml").read_text()
    for name in ("jetson-orin-trt-fp16", "a100-trt-fp16", "h100-trt-fp16"):
        cfg = load_device_config(name)
        assert (cfg.backend, cfg.precision, cfg.channel_multiple) == ("tensorrt", "fp16", 8)
        assert cfg.warmup >= 200 and cfg.min_repeats >= 50 and cfg.workspace_mb >= 512
    for precision in ("bf16", "fp16"):
        cfg = load_device_config(f"h200-torch-cuda-{precision}")
        assert (cfg.backend, cfg.precision, cfg.channel_multiple, cfg.batch_size) == ("torch-cuda", precision, 8, 1)
        assert cfg.autocast is False and cfg.warmup >= 200


def _write(tmp_path: Path, text: str, name: str = "dev.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_device_config(path)
    msg = str(info.value)
    assert "\n" not in msg, "errors are one line"
    assert isinstance(info.value, ProfilerError)
    return msg


@pytest.mark.parametrize("body, field", [
    ("colour: blue\n", "colour"),
    ("threads: four\n", "threads"),
    ("max_seconds: x\n", "max_seconds"),
    ("threads: true\n", "threads"),
    ("warmup: 1.5\n", "warmup"),
    ("batch_size: [1, 2]\n", "batch_size"),
    ("max_seconds: false\n", "max_seconds"),
    ("backend: pytorch\n", "backend"),
    ("providers: [CPUExecutionProvder]\n", "providers"),
    ("providers: []\n", "providers"),
    ("providers: [1, 2]\n", "providers"),
    ("precision: fp8\n", "precision"),
    ("precision: fp16\n", "precision"),   # onnxruntime: fp32 timings were filed as fp16 (nu12)
    ("statistic: median\n", "statistic"),
    ("graph_optimization: max\n", "graph_optimization"),
    ("threads: 0\n", "threads"),
    ("warmup: -1\n", "warmup"),
    ("max_seconds: 0\n", "max_seconds"),
    ("min_repeats: 100\nmax_repeats: 10\n", "max_repeats"),
    ("rel_ci: 2\n", "rel_ci"),
    ("confidence: 1.5\n", "confidence"),
    ("remote: somehost\n", "remote"),
    ("remote: {port: 22}\n", "remote"),
    ("remote: {host: pi, colour: blue}\n", "remote.colour"),
    ("remote: {host: pi, port: '22'}\n", "remote.port"),
])
def test_bad_field_names_the_field_and_the_file(tmp_path, body, field):
    path = _write(tmp_path, "name: dev\n" + body)
    msg = _error(path)
    assert f"'{field}'" in msg
    assert str(path) in msg


def test_unknown_provider_lists_known_ones(tmp_path):
    msg = _error(_write(tmp_path, "name: dev\nproviders: [CUDAExecutionProvider, FooExecutionProvider]\n"))
    assert "FooExecutionProvider" in msg and "CPUExecutionProvider" in msg


def test_every_known_provider_is_accepted():
    cfg = from_dict({"name": "all", "providers": list(KNOWN_PROVIDERS)})
    assert cfg.providers == KNOWN_PROVIDERS


@pytest.mark.parametrize("body", ["threads: 2\n", "name:\nthreads: 2\n", "name: 7\n"])
def test_missing_or_bad_name(tmp_path, body):
    path = _write(tmp_path, body)
    msg = _error(path)
    assert "'name'" in msg and str(path) in msg


@pytest.mark.parametrize("body", ["name: [unclosed\n", "name: dev\n  threads: 2\n bad: indent\n", "\tname: dev\n"])
def test_invalid_yaml_names_the_file_and_line(tmp_path, body):
    path = _write(tmp_path, body)
    msg = _error(path)
    assert str(path) in msg and "invalid YAML" in msg and "line" in msg


@pytest.mark.parametrize("body", ["", "- a\n- b\n", "just a string\n"])
def test_config_that_is_not_a_mapping(tmp_path, body):
    path = _write(tmp_path, body)
    msg = _error(path)
    assert str(path) in msg and "mapping" in msg


def test_undecodable_file_is_a_config_error(tmp_path):
    path = tmp_path / "dev.yaml"
    path.write_bytes(b"name: \xff\xfe\x00dev\n")
    assert str(path) in _error(path)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = _error(missing)
    assert str(missing) in msg and "not found" in msg
    msg = _error(str(tmp_path / "sub" / "nope"))
    assert "not found" in msg


def test_unknown_shipped_name_lists_the_shipped_ones():
    msg = _error("raspberry-pi-9")
    assert "raspberry-pi-9" in msg
    assert "x86-cpu-ort" in msg and "arm-cpu-ort" in msg


def test_json_config_loads(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"name": "from-json", "threads": 2, "providers": ["CPUExecutionProvider"],
                                "max_seconds": 1, "remote": {"host": "pi.local", "port": 2222}}))
    cfg = load_device_config(path)
    assert (cfg.name, cfg.threads, cfg.max_seconds) == ("from-json", 2, 1.0)
    assert isinstance(cfg.max_seconds, float)
    assert cfg.remote == RemoteConfig(host="pi.local", port=2222)
    assert cfg.source == str(path)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text('{"name": "x",')
    msg = _error(path)
    assert str(path) in msg and "invalid JSON" in msg


def test_from_dict_error_names_its_source():
    with pytest.raises(ConfigError, match=r"^remote-payload: field 'threads'"):
        from_dict({"name": "x", "threads": "4"}, source="remote-payload")


@pytest.mark.parametrize("name", shipped_configs())
def test_to_dict_round_trips_through_from_dict(name):
    cfg = load_device_config(name)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-safe, as shipped to a device
    again = from_dict(d, source="roundtrip")
    assert again == cfg
    assert again.to_dict() == d


def test_to_dict_round_trips_with_remote_and_options():
    cfg = from_dict({"name": "r", "providers": ["XnnpackExecutionProvider", "CPUExecutionProvider"],
                     "threads": 4, "engine_cache": "/tmp/cache", "statistic": "p90",
                     "remote": {"host": "pi", "user": "me", "port": 2200, "retries": 1}})
    again = from_dict(cfg.to_dict())
    assert again == cfg and again.remote.port == 2200 and again.providers == cfg.providers


def test_yaml_and_from_dict_agree(tmp_path):
    data = {"name": "dev", "threads": 2, "statistic": "mean", "providers": "CPUExecutionProvider"}
    path = _write(tmp_path, yaml.safe_dump(data))
    assert load_device_config(path) == from_dict(data)
    assert load_device_config(path).providers == ("CPUExecutionProvider",)


def test_configs_folder_can_be_overridden(tmp_path, monkeypatch):
    _write(tmp_path, "name: lab-box\ndescription: a lab machine\n", "lab-box.yaml")
    monkeypatch.setenv("HWPRUNE_DEVICE_CONFIGS", str(tmp_path))
    assert shipped_configs() == ["lab-box"]
    assert load_device_config("lab-box").description == "a lab machine"


def test_onnxruntime_refuses_a_precision_it_does_not_apply(tmp_path):
    msg = _error(_write(tmp_path, "name: dev\nprecision: int8\n"))
    assert "int8 is not applied by backend onnxruntime" in msg and "backend tensorrt or torch-cuda" in msg
