"""The ``hwprune`` command line: help for every command, ``devices``, ``time`` and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from hwprune.cli import cli
from profilers.config import load_device_config, shipped_configs


def _walk(group: click.Group, path: tuple[str, ...] = ()):
    """Every command of ``group`` with the words that reach it, through sub-groups."""
    ctx = click.Context(group, info_name="hwprune")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, path + (name,))


ALL_COMMANDS = [((), cli)] + list(_walk(cli))


def test_the_walk_finds_the_known_commands():
    names = {" ".join(p) for p, _ in ALL_COMMANDS}
    assert {"", "devices", "time"} <= names


@pytest.mark.parametrize("path, command", ALL_COMMANDS, ids=[" ".join(p) or "hwprune" for p, _ in ALL_COMMANDS])
def test_every_command_has_help(path, command):
    assert (command.help or "").strip(), f"'hwprune {' '.join(path)}' has no help text"
    assert command.get_short_help_str().strip()
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")
    assert command.help.strip().splitlines()[0].strip()[:30] in " ".join(result.stdout.split())


def test_devices_lists_every_shipped_config():
    result = CliRunner().invoke(cli, ["devices"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(shipped_configs())
    for name in shipped_configs():
        cfg = load_device_config(name)
        line = next(line for line in lines if line.split()[0] == name)
        assert cfg.backend in line and cfg.description in line


def test_devices_json():
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [d["name"] for d in data] == shipped_configs()


@pytest.fixture
def tiny_onnx(tmp_path) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def fast_device(tmp_path) -> str:
    path = tmp_path / "fast.yaml"
    path.write_text("name: fast-cpu\ndescription: test device\nthreads: 1\nwarmup: 2\nmin_repeats: 20\n"
                    "max_seconds: 0.3\n")
    return str(path)


def test_time_prints_p50_and_writes_json(tiny_onnx, fast_device, tmp_path):
    out = tmp_path / "out" / "timing.json"
    result = CliRunner().invoke(cli, ["time", tiny_onnx, "--device", fast_device, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "p50=" in result.stdout and "fast-cpu" in result.stdout
    data = json.loads(out.read_text())
    assert data["device"] == "fast-cpu" and data["timing"]["p50_ms"] > 0
    assert data["timing"]["n"] >= 20 and len(data["timing"]["samples_ms"]) == data["timing"]["n"]
    assert len(data["environment"]["fingerprint"]) == 16
    printed = float(result.stdout.split("p50=")[1].split()[0])
    assert printed == pytest.approx(data["timing"]["p50_ms"], abs=1e-4)


def test_time_model_returns_a_typed_result_that_reads_as_its_json(tiny_onnx, fast_device, tmp_path):
    import hwprune

    r = hwprune.time_model(tiny_onnx, fast_device, json_path=str(tmp_path / "t.json"))
    assert isinstance(r, hwprune.TimingResult) and r.device == "fast-cpu" and r.timing.n >= 20
    assert r.p50_ms == r.timing.p50_ms > 0 and r.ci_ms[0] <= r.timing.value() <= r.ci_ms[1]
    data = json.loads((tmp_path / "t.json").read_text())
    # the mapping is the JSON's shape, so code written against r["timing"]["p50_ms"] still reads
    assert r["timing"]["p50_ms"] == data["timing"]["p50_ms"] == r.p50_ms and set(r) == set(data)
    assert "processes" not in r and r.get("warnings") == [] and r.across_processes is None


def test_time_says_when_the_models_fixed_batch_is_not_the_devices(fast_device, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "b4", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "b4.onnx"))
    result = CliRunner().invoke(cli, ["time", str(tmp_path / "b4.onnx"), "--device", fast_device,
                                      "--json", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    # it was timed at batch 4 and nothing said so; the JSON said batch_size 1 (nu10)
    assert "warning: the model's input batch is fixed at 4 and fast-cpu says batch_size 1" in result.stderr
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["inputs"] == [{"name": "x", "shape": [4, 8, 8, 8], "dtype": "float32"}] and data["warnings"]


def _assert_one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert err.startswith("error:"), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for w in words:
        assert w in err


def test_time_missing_model(fast_device, tmp_path):
    missing = str(tmp_path / "missing.onnx")
    _assert_one_line_error(CliRunner().invoke(cli, ["time", missing, "--device", fast_device]), missing)


def test_time_corrupt_model(fast_device, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01not an onnx model" * 50)
    _assert_one_line_error(CliRunner().invoke(cli, ["time", str(bad), "--device", fast_device]), str(bad))


def test_time_unknown_device(tiny_onnx):
    _assert_one_line_error(CliRunner().invoke(cli, ["time", tiny_onnx, "--device", "no-such-board"]),
                           "no-such-board")


def test_time_bad_device_file(tiny_onnx, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nthreads: four\n")
    _assert_one_line_error(CliRunner().invoke(cli, ["time", tiny_onnx, "-d", str(bad)]), "threads", str(bad))


def _console_script() -> str:
    found = Path(sys.executable).parent / "hwprune"
    if found.is_file():
        return str(found)
    found = shutil.which("hwprune")
    if found is None:
        pytest.skip("hwprune console script not installed (pip install -e .)")
    return found


def test_console_script_end_to_end(tiny_onnx, fast_device, tmp_path):
    script = _console_script()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([script, "time", tiny_onnx, "--device", fast_device], capture_output=True, text=True,
                        cwd=tmp_path, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "p50=" in ok.stdout
    missing = subprocess.run([script, "time", "missing.onnx", "--device", fast_device], capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error:") and len(missing.stderr.strip().splitlines()) == 1
    assert "Traceback" not in missing.stderr and missing.stdout == ""
    bad_device = subprocess.run([script, "time", tiny_onnx, "--device", "no-such-board"], capture_output=True,
                                text=True, cwd=tmp_path, env=env, timeout=120)
    assert bad_device.returncode == 2 and bad_device.stderr.startswith("error:")
    assert "Traceback" not in bad_device.stderr


@pytest.mark.parametrize("certified, strict, code", [(False, False, 0), (False, True, 1), (True, True, 0)])
def test_prune_require_certified_exits_1_on_an_uncertified_run(monkeypatch, tmp_path, certified, strict, code):
    import types

    import hwprune.api

    side = {"accuracy": 0.9, "latency_ms": {"p50": 1.0, "p90": 1.1}, "params": 10, "macs": 100}
    report = {"dense": side, "pruned": side, "certified": certified, "budget": {"latency_ms": 0.5},
              "certificate": {"statistic": "p50", "upper_bound_ms": 0.4 if certified else 0.6, "budget_ms": 0.5}}
    monkeypatch.setattr(hwprune.api, "prune_options",
                        lambda opts, log: types.SimpleNamespace(is_main=True, report=report))
    args = ["prune", "-d", "x86-cpu-ort", "-m", "resnet20", "--latency-ms", "0.5", "--lut", str(tmp_path / "L.parquet"),
            "--out", str(tmp_path / "run")] + (["--require-certified"] if strict else [])
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == code, res.output
    assert ("warning: not certified" in res.stderr) == (not certified)


TERMINATED_CHILD = r"""
import subprocess, sys, time
from pathlib import Path
from hwprune.cli import cli

@cli.command("hold")
def hold():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # not the test's pipe
    try:
        Path(sys.argv[1]).write_text(str(child.pid))
        time.sleep(300)
    finally:   # what a fresh measuring process's owner does; Python's default SIGTERM skips it
        child.kill()
        child.wait()

cli(["hold"], prog_name="hwprune")
"""


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_child_running(tmp_path):
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", TERMINATED_CHILD, str(pid_file)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no start"
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM
        assert err.strip().splitlines() == ["terminated"]
        with pytest.raises(ProcessLookupError):  # killed and reaped by the finally block
            os.kill(child_pid, 0)
    finally:
        try:
            os.kill(child_pid, signal.SIGKILL)  # without the fix, the orphan is still running
        except ProcessLookupError:
            pass


def test_a_table_column_says_where_it_was_cut():
    # lut show printed "Conv+Relu+GlobalAveragePool+Flatte" as if that were the name (nu13)
    from hwprune.cli import _clip

    assert _clip("Conv+Relu+GlobalAveragePool+Flatten+Gemm", 34) == "Conv+Relu+GlobalAveragePool+Fla..."
    assert _clip("Conv+Relu", 34) == "Conv+Relu"
