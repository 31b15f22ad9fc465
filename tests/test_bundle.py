"""Profiling bundles: writing and reading them, the resumable run loop, and ``python -m profilers``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from onnx import TensorProto, helper

from profilers import bundle as bundle_mod
from profilers import runners
from profilers.bundle import ResultsFile, read_bundle, run_bundle, write_bundle
from profilers.config import from_dict
from profilers.errors import ProfilerError

FAST = {"name": "fast-test", "min_repeats": 5, "max_seconds": 0.05, "warmup": 1}


def _model(op: str, n: int) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])
    if op == "Relu":
        nodes, inits = [helper.make_node("Relu", ["x"], ["y"])], []
    else:
        w = helper.make_tensor("w", TensorProto.FLOAT, [n, n], [0.5] * (n * n))
        nodes, inits = [helper.make_node("MatMul", ["x", "w"], ["y"])], [w]
    graph = helper.make_graph(nodes, f"{op}{n}", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime builds on devices
    return model.SerializeToString()


ITEMS = [("relu-16", _model("Relu", 16), {"op": "relu", "n": 16}),
         ("matmul-8", _model("MatMul", 8), {"op": "matmul", "n": 8}),
         ("matmul-32", _model("MatMul", 32), {"op": "matmul", "n": 32})]


@pytest.fixture
def fast_config():
    return from_dict(FAST)


@pytest.fixture
def bundle_dir(tmp_path, fast_config):
    write_bundle(tmp_path / "bundle", fast_config, ITEMS)
    return tmp_path / "bundle"


def _rows(records, kind="row"):
    return [r for r in records if r["type"] == kind]


def test_write_and_read_round_trip(bundle_dir, fast_config):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format"] == 1
    assert manifest["config"] == fast_config.to_dict()
    assert [i["key"] for i in manifest["items"]] == ["relu-16", "matmul-8", "matmul-32"]
    for item in manifest["items"]:
        assert item["file"].startswith("onnx/") and item["file"].endswith(".onnx")
        assert (bundle_dir / item["file"]).is_file()
    b = read_bundle(bundle_dir)
    assert b.config == fast_config
    assert b.items[1].meta == {"op": "matmul", "n": 8}


def test_write_rejects_duplicate_keys(tmp_path, fast_config):
    with pytest.raises(ValueError, match="duplicate key"):
        write_bundle(tmp_path / "b", fast_config, [ITEMS[0], ITEMS[0]])


def test_run_times_every_item(bundle_dir, tmp_path):
    results = tmp_path / "results.jsonl"
    seen = []
    done = []
    records = run_bundle(bundle_dir, results_path=results, on_row=seen.append,
                         progress=lambda i, n, key: done.append((i, n, key)))
    assert seen == records
    assert records[0]["type"] == "session"
    session = records[0]
    assert {"n", "p50_ms", "mean_ms"} <= set(session["overhead"]) and "samples_ms" not in session["overhead"]
    assert isinstance(session["fingerprint"], str) and session["fingerprint"]
    assert session["environment"]["backend"] == "onnxruntime"
    assert session["config"]["name"] == "fast-test"

    rows = _rows(records)
    assert [r["key"] for r in rows] == ["relu-16", "matmul-8", "matmul-32"]
    for row in rows:
        assert row["session"] == session["session"]
        assert row["timing"]["n"] >= 5 and row["timing"]["p50_ms"] > 0
        assert len(row["timing"]["samples_ms"]) == row["timing"]["n"]
        assert row["extra"] == {} and "session.run" in row["timed_scope"]
    assert rows[1]["meta"] == {"op": "matmul", "n": 8}
    assert done == [(1, 3, "relu-16"), (2, 3, "matmul-8"), (3, 3, "matmul-32")]

    stored = [json.loads(line) for line in results.read_text().splitlines()]
    assert stored == records


def test_second_run_measures_nothing_new(bundle_dir, tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    first = run_bundle(bundle_dir, results_path=results)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished key was measured again")

    monkeypatch.setattr(runners, "make_runner", must_not_run)
    monkeypatch.setattr(runners, "measure_overhead", must_not_run)
    again = run_bundle(bundle_dir, results_path=results)
    assert again == first  # re-emitted from the file, identical
    assert run_bundle(bundle_dir, results_path=results, emit_existing=False) == []
    assert len(results.read_text().splitlines()) == len(first)


def test_resume_measures_only_missing_keys(bundle_dir, tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"

    class Stop(Exception):
        pass

    def stop_after_first_row(record):
        if record["type"] == "row":
            raise Stop  # like a kill right after the first row was stored

    with pytest.raises(Stop):
        run_bundle(bundle_dir, results_path=results, on_row=stop_after_first_row)
    # A writer killed mid-line leaves half a record: it is dropped, not fatal.
    with open(results, "a") as f:
        f.write('{"type": "row", "key": "matmul-8", "tim')

    measured = []
    real = runners.make_runner

    def counting(model, config, name=None):
        measured.append(name)
        return real(model, config, name=name)

    monkeypatch.setattr(runners, "make_runner", counting)
    records = run_bundle(bundle_dir, results_path=results)
    assert [m for m in measured if not m.startswith(("identity", "reference"))] == ["matmul-8", "matmul-32"]
    rows = _rows(records)
    assert sorted(r["key"] for r in rows) == ["matmul-32", "matmul-8", "relu-16"]
    assert len(_rows(records, "session")) == 2
    lines = results.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert sorted(json.loads(line).get("key", "") for line in lines if '"row"' in line) == \
        ["matmul-32", "matmul-8", "relu-16"]


def test_corrupt_and_missing_onnx_are_error_rows(tmp_path, fast_config):
    d = tmp_path / "b"
    write_bundle(d, fast_config, [ITEMS[0], ("corrupt", b"not an onnx file", {}), ITEMS[1],
                                  ("missing", _model("Relu", 4), {})])
    manifest = json.loads((d / "manifest.json").read_text())
    (d / manifest["items"][3]["file"]).unlink()
    results = tmp_path / "r.jsonl"
    records = run_bundle(d, results_path=results)
    errors = {r["key"]: r["error"] for r in _rows(records, "error")}
    assert set(errors) == {"corrupt", "missing"}
    assert all("\n" not in e and e for e in errors.values())
    assert "not found" in errors["missing"]
    assert [r["key"] for r in _rows(records)] == ["relu-16", "matmul-8"]
    # Errors are not stored: a later run tries those items again and only those.
    again = run_bundle(d, results_path=results, emit_existing=False)
    assert sorted(r["key"] for r in again if r["type"] != "session") == ["corrupt", "missing"]


def test_config_argument_overrides_manifest(bundle_dir, tmp_path):
    other = from_dict({**FAST, "name": "other", "min_repeats": 7})
    records = run_bundle(bundle_dir, config=other)
    assert records[0]["config"]["name"] == "other"
    assert all(r["timing"]["n"] >= 7 for r in _rows(records))


@pytest.mark.parametrize("content, match", [
    (None, "no manifest.json"),
    ("{not json", "corrupt bundle manifest"),
    ('{"format": 99, "config": {"name": "x"}, "items": []}', "unsupported bundle format 99"),
    ('{"format": 1, "config": {"name": "x"}, "items": [{"key": "a"}]}', "item 0"),
    ('{"format": 1, "config": {"name": "x"}, "items": [{"key": "a", "file": "../x.onnx"}]}', "inside the bundle"),
    ('{"format": 1, "config": {"name": "x", "threads": "two"}, "items": []}', "threads"),
])
def test_bad_manifest_is_one_line_error(tmp_path, content, match):
    d = tmp_path / "b"
    d.mkdir()
    if content is not None:
        (d / "manifest.json").write_text(content)
    with pytest.raises(ProfilerError, match=match) as info:
        run_bundle(d)
    assert "\n" not in str(info.value)


def test_corrupt_results_line_is_an_error(bundle_dir, tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text('{"type": "row", "key": "x"}\nnot json\n{"type": "row", "key": "y"}\n')
    with pytest.raises(ProfilerError, match=r"r.jsonl:2"):
        run_bundle(bundle_dir, results_path=results)


def test_results_file_is_locked_while_open(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsFile(path) as held:
        held.append({"type": "row", "key": "a"})
        with pytest.raises(ProfilerError, match="in use by another profiler run"):
            with ResultsFile(path, lock_timeout_s=0.2):
                pass
    with ResultsFile(path) as again:
        assert again.keys() == {"a"}


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "profilers", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_run_prints_rows(bundle_dir, tmp_path):
    results = tmp_path / "cli.jsonl"
    proc = _cli("run", str(bundle_dir), "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("HWPRUNE-ROW ") for line in lines)
    records = [json.loads(line[len("HWPRUNE-ROW "):]) for line in lines]
    assert records[0]["type"] == "session"
    assert [r["key"] for r in _rows(records)] == ["relu-16", "matmul-8", "matmul-32"]
    assert len(results.read_text().splitlines()) == len(records)


def test_cli_run_default_results_and_device_override(bundle_dir, tmp_path):
    device = tmp_path / "device.json"
    device.write_text(json.dumps({**FAST, "name": "from-cli"}))
    proc = _cli("run", str(bundle_dir), "--device", str(device))
    assert proc.returncode == 0, proc.stderr
    assert (bundle_dir / bundle_mod.RESULTS_NAME).is_file()
    first = json.loads(proc.stdout.splitlines()[0][len("HWPRUNE-ROW "):])
    assert first["config"]["name"] == "from-cli"


@pytest.mark.parametrize("args, match", [
    (("run", "/nonexistent/bundle"), "bundle folder not found"),
    (("run", "."), "no manifest.json"),
    (("time", "/nonexistent/m.onnx", "--device", "x86-cpu-ort"), "not found"),
    (("run",), "error"),
])
def test_cli_errors_are_one_line_exit_2(args, match, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "profilers", *args], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert match in proc.stderr


def test_cli_time_prints_stats(tmp_path):
    model = tmp_path / "relu.onnx"
    model.write_bytes(_model("Relu", 8))
    device = tmp_path / "device.json"
    device.write_text(json.dumps(FAST))
    proc = _cli("time", str(model), "--device", str(device))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["n"] >= 5 and stats["p50_ms"] > 0 and "samples_ms" not in stats


def test_cli_help():
    for args in (("--help",), ("run", "--help"), ("time", "--help")):
        proc = _cli(*args)
        assert proc.returncode == 0 and "usage" in proc.stdout
