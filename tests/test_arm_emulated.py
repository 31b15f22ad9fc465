"""hwprune on aarch64 over SSH: profile, time, regress and a resumed drop on the emulated board of `make arm-env`.

The board is an arm64 Debian root run under qemu (tools/arm_env.py), with numpy and
onnxruntime from their aarch64 wheels, reached through a private sshd on 127.0.0.1 whose
host key is checked. Everything the device side runs there is aarch64: the shell that
unpacks the bundle, Python, numpy, onnxruntime. Timings under emulation mean nothing, so
nothing here asserts a figure; the path (upload, providers, manifest, streaming, resume) is
what is tested. Marked ``arm`` (``make test-arm``); skipped where the board is not built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import arm_env  # noqa: E402

from profilers.bundle import write_bundle  # noqa: E402
from profilers.config import from_dict  # noqa: E402
from profilers.remote import profile_remote  # noqa: E402
from ssh_drop import drop_connections  # noqa: E402

pytestmark = pytest.mark.arm

ENV = arm_env.env_dir()
_NOT_READY = arm_env.ready(ENV) or (None if os.geteuid() == 0 else "the emulated ARM board needs root (chroot)")
if _NOT_READY:
    pytest.skip(_NOT_READY, allow_module_level=True)

# Short timings: under qemu a session and each run are many times slower than on a board.
# ITEM_S as in test_remote_ssh: one item per batch for about this long, so the drop test can
# cut the connection between two rows.
ITEM_S = 0.5
TIMING = {"warmup": 1, "min_repeats": 5, "rel_ci": 1e-9, "max_seconds": ITEM_S, "cv_threshold": 1000.0,
          "interleave_batch": 1}
X86_WORDS = ("intel", "amd", "xeon", "epyc", "x86")


@pytest.fixture(scope="module")
def board():
    base = f"/root/hwprune-test/{uuid.uuid4().hex[:12]}"  # this module's remote folders, removed after
    with arm_env.serve(ENV) as b:
        try:
            yield {**b, "base": base}
        finally:
            shutil.rmtree(Path(b["root"]) / base.lstrip("/"), ignore_errors=True)


def _workdir(board) -> tuple[str, Path]:
    """A fresh remote folder: its path on the board, and where the host sees it."""
    inside = f"{board['base']}/{uuid.uuid4().hex[:8]}"
    return inside, Path(board["root"]) / inside.lstrip("/")


def _show(what: str, manifest: dict, timing: dict | None = None) -> None:
    """One line for make test-arm's summary (-rP): what ran where; a figure is marked emulated."""
    cpu, rt = manifest["cpu"], manifest["runtime"]
    ms = f", p50 {timing['p50_ms']:.3f} ms (emulated: not meaningful)" if timing else ""
    print(f"{what}: {cpu['arch']} '{cpu['model']}' emulated={cpu['emulated']}, python {manifest['python']}, "
          f"numpy {manifest['numpy']}, onnxruntime {rt['onnxruntime']} providers {rt['onnxruntime_providers']} "
          f"-> used {manifest['providers_effective']}{ms}")


def _config_file(board, tmp_path: Path, workdir: str, python: str | None = None, **overrides) -> Path:
    remote = {**board["remote"], "workdir": workdir, **({"python": python} if python else {})}
    cfg = arm_env.device_config(remote, **{**TIMING, **overrides})
    path = tmp_path / "arm-emulated.json"
    path.write_text(json.dumps(cfg))
    return path


def _hwprune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "hwprune.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1500)


def _matmul(seed: int, n: int = 64) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, n])
    w = helper.make_tensor("w", TensorProto.FLOAT, [n, n], [float(seed)] * (n * n))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], f"mm{seed}", [x], [y],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _assert_aarch64(manifest: dict) -> None:
    """What a manifest from the board must say: aarch64, onnxruntime's own providers, a CPU that is not the x86 host's."""
    assert manifest["cpu"]["arch"] == "aarch64", manifest["cpu"]
    assert manifest["os"]["system"] == "Linux"
    providers = manifest["runtime"]["onnxruntime_providers"]
    assert "CPUExecutionProvider" in providers, providers
    # the config asks for XNNPACK first; the manifest says whether this onnxruntime has it
    assert manifest["providers"] == ["XnnpackExecutionProvider", "CPUExecutionProvider"]
    assert manifest["providers_effective"] == [p for p in manifest["providers"] if p in providers]
    assert manifest["runtime"]["onnxruntime"] and manifest["numpy"]
    # the board is qemu's CPU, and the manifest says so rather than naming the x86 host's
    model = manifest["cpu"]["model"]
    assert model and not any(w in model.lower() for w in X86_WORDS), model
    assert manifest["cpu"]["emulated"] is True, manifest["cpu"]


def _venv_python(venv: str) -> str:
    if venv not in arm_env._read_venvs(ENV):
        pytest.skip(f"no {venv} on the board (make arm-env ARM_OLDEST_REQS='' left it out)")
    return f"{venv}/bin/python"


@pytest.mark.parametrize("venv", [arm_env.VENV, arm_env.OLDEST_VENV], ids=["today", "oldest"])
def test_profile_ships_the_bundle_and_streams_rows_from_aarch64(board, tmp_path, venv):
    (tmp_path / "m.py").write_text("import torch.nn as nn\n\ndef net(in_channels=1, num_classes=10):\n"
                                   "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), "
                                   "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    inside, on_host = _workdir(board)
    cfg = _config_file(board, tmp_path, inside, python=_venv_python(venv))
    lut = tmp_path / "lut.parquet"
    done = _hwprune("profile", "--device", str(cfg), "--model", f"{tmp_path / 'm.py'}:net", "--input-shape", "1,8,8",
                    "--lut", str(lut), "--calibration-samples", "2", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert lut.exists()

    # It ran over there: each bundle's results file on the board (layers, calibration
    # sub-networks) holds its rows, each key measured once, in one aarch64 session.
    bundles = sorted(on_host.glob("*/bundle/results.jsonl"))
    assert bundles
    fingerprints = set()
    for remote_results in bundles:
        records = [json.loads(line) for line in remote_results.read_text().splitlines()]
        rows = [r for r in records if r["type"] == "row"]
        sessions = [r for r in records if r["type"] == "session"]
        assert rows and len(sessions) == 1, remote_results
        assert len({r["key"] for r in rows}) == len(rows)
        _assert_aarch64(sessions[0]["environment"])
        fingerprints.add(sessions[0]["environment"]["fingerprint"])
    assert len(fingerprints) == 1

    # ... and the LUT records the board's environment, not this host's.
    from hwprune.lut import LatencyLUT

    meta = LatencyLUT.load(lut).meta
    assert meta["fingerprint"] in fingerprints
    _assert_aarch64(meta["environment"])
    _show(f"profile ({venv}): {len(bundles)} bundles on the board", meta["environment"])


def test_time_runs_on_aarch64(board, tmp_path):
    (tmp_path / "mm.onnx").write_bytes(_matmul(1))
    inside, on_host = _workdir(board)
    cfg = _config_file(board, tmp_path, inside)
    done = _hwprune("time", str(tmp_path / "mm.onnx"), "--device", str(cfg), "--json", str(tmp_path / "t.json"),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["device"] == "arm-cpu-ort-emulated" and result["timing"]["n"] >= 5
    _assert_aarch64(result["environment"])
    _show("time", result["environment"], result["timing"])
    assert list(on_host.glob("*/bundle/results.jsonl"))


def test_regress_against_runs_on_aarch64(board, tmp_path):
    (tmp_path / "new.onnx").write_bytes(_matmul(1))
    (tmp_path / "old.onnx").write_bytes(_matmul(2))
    inside, on_host = _workdir(board)
    cfg = _config_file(board, tmp_path, inside)
    done = _hwprune("regress", "--device", str(cfg), "--model", str(tmp_path / "new.onnx"),
                    "--against", str(tmp_path / "old.onnx"), "--max-seconds", "20",
                    "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    # emulated timings decide nothing: any verdict (0 pass/improved, 1 regressed, 3 inconclusive)
    # is fine, bad input or a failed run (2) is not
    assert done.returncode in (0, 1, 3), done.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] in ("pass", "improved", "regressed", "inconclusive")
    # both models were timed over there, and the fingerprint in the report is the board's
    sessions = [json.loads(line) for p in on_host.glob("*/bundle/results.jsonl")
                for line in p.read_text().splitlines() if '"session"' in line]
    sessions = [s for s in sessions if s["type"] == "session"]
    assert sessions
    for s in sessions:
        _assert_aarch64(s["environment"])
    assert report["environment"]["fingerprint_now"] in {s["environment"]["fingerprint"] for s in sessions}
    _show(f"regress --against: verdict {report['verdict']} (emulated: not meaningful)", sessions[0]["environment"])


def test_dropped_connection_resumes_without_remeasuring(board, tmp_path):
    keys = [f"mm-{c}" for c in "abcd"]
    inside, on_host = _workdir(board)
    cfg = from_dict(json.loads(_config_file(board, tmp_path, inside).read_text()))
    write_bundle(tmp_path / "bundle", cfg, [(k, _matmul(i), {"i": i}) for i, k in enumerate(keys)])
    results = tmp_path / "local.jsonl"
    seen, dropped = [], []

    def on_row(record):
        seen.append(record)
        if record["type"] == "row" and not dropped:
            dropped.append(drop_connections(board["pid"]))

    records = profile_remote(tmp_path / "bundle", cfg, results, on_row=on_row, timeout_s=900, backoff_s=0.5)
    assert dropped and dropped[0] > 0
    assert sorted(r["key"] for r in seen if r["type"] == "row") == sorted(keys)
    local = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["key"] for r in local if r["type"] == "row") == sorted(keys)
    # the board measured each key exactly once across both connections
    (remote_results,) = on_host.glob("*/bundle/results.jsonl")
    remote_rows = [json.loads(line) for line in remote_results.read_text().splitlines()]
    assert sorted(r["key"] for r in remote_rows if r["type"] == "row") == sorted(keys)
    assert len({r["session"] for r in local if r["type"] == "session"}) == 2
    assert records == seen
    for s in (r for r in local if r["type"] == "session"):
        _assert_aarch64(s["environment"])
    _show(f"drop: {dropped[0]} connection(s) cut after the first row, {len(keys)} rows, each measured once",
          local[0]["environment"] if local[0]["type"] == "session" else records[0]["environment"])


def test_oldest_supported_numpy_and_onnxruntime_time_on_aarch64(board, tmp_path):
    # pyproject.toml allows numpy>=1.24 and onnxruntime>=1.17; the board's second venv holds those
    python = _venv_python(arm_env.OLDEST_VENV)
    venvs = arm_env._read_venvs(ENV)
    (tmp_path / "mm.onnx").write_bytes(_matmul(3))
    inside, _ = _workdir(board)
    cfg = _config_file(board, tmp_path, inside, python=python)
    done = _hwprune("time", str(tmp_path / "mm.onnx"), "--device", str(cfg),
                    "--json", str(tmp_path / "t.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    env = json.loads((tmp_path / "t.json").read_text())["environment"]
    _assert_aarch64(env)
    want = {r.split("==")[0]: r.split("==")[1] for r in venvs[arm_env.OLDEST_VENV] if "==" in r}
    assert env["numpy"] == want.get("numpy", env["numpy"])
    assert env["runtime"]["onnxruntime"] == want.get("onnxruntime", env["runtime"]["onnxruntime"])
    _show("time on the oldest venv", env, json.loads((tmp_path / "t.json").read_text())["timing"])
