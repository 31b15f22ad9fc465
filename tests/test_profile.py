"""``hwprune profile`` and ``hwprune lut check`` for real, on a tiny model with a fast CPU config.

Everything here measures on this machine with onnxruntime (one thread, a few repeats), so a
whole profile of the tiny model takes about a second; the numbers are noisy and the tests
assert structure and behaviour, not accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hwprune.cli import cli
from hwprune.errors import HwpruneError
from hwprune.lut import LatencyLUT, model_key
from hwprune.lutcheck import format_check_table, lut_check
from hwprune.profiling import ModelSpec, parse_input_shape, parse_ratios, profile
from profilers.config import load_device_config

torch.set_num_threads(1)

DEVICE_YAML = """\
name: test-cpu
backend: onnxruntime
threads: 1
warmup: 1
min_repeats: 5
max_seconds: 0.01
channel_multiple: 2
statistic: p50
"""

# A slower config for the kill-and-resume test: a tight rel_ci never converges, so each
# candidate takes its full max_seconds and the run lasts long enough to be killed midway.
SLOW_DEVICE_YAML = DEVICE_YAML.replace("max_seconds: 0.01", "max_seconds: 0.04") + "rel_ci: 0.0001\n"

TINY_MODEL = """\
import torch.nn as nn


def net(in_channels=1, num_classes=10):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def gray(num_classes=10):
    # ignores in_channels: it only accepts one-channel input
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile-env")
    (root / "device.yaml").write_text(DEVICE_YAML)
    (root / "slow.yaml").write_text(SLOW_DEVICE_YAML)
    (root / "tiny.py").write_text(TINY_MODEL)
    return {"root": root, "device": str(root / "device.yaml"), "slow": str(root / "slow.yaml"),
            "model": f"{root / 'tiny.py'}:net", "gray": f"{root / 'tiny.py'}:gray"}


@pytest.fixture(scope="module")
def profiled(env, tmp_path_factory):
    """The tiny model profiled once into a Parquet LUT (shared: copy it before changing it)."""
    path = tmp_path_factory.mktemp("profiled") / "lut.parquet"
    result = profile(ModelSpec(env["model"], SHAPE), env["device"], str(path), calibration_samples=5,
                     show_progress=False, log=lambda m: None)
    return result, path


def _local_fingerprint(device: str) -> str:
    from profilers.environment import collect_manifest, fingerprint

    return fingerprint(collect_manifest(load_device_config(device)))


def _key(model: str) -> str:
    return model_key(model, (1, *SHAPE))


def _copy(src: Path, dst_dir: Path, name: str = "lut.parquet") -> Path:
    dst = dst_dir / name
    shutil.copyfile(src, dst)
    return dst


# -- profile() ---------------------------------------------------------------------------------

def test_profile_reports_what_it_did(profiled):
    r, path = profiled
    assert r.lut_path == str(path)
    assert r.groups == 2
    assert r.units == 3  # conv1, conv2 (+pool, flatten), the classifier
    assert r.signatures_total > 0
    assert r.signatures_measured == r.signatures_total
    assert r.resumed_rows == 0 and r.errors == []
    assert r.wall_s > 0 and r.timed_s > 0 and r.overhead_ratio > 0
    assert {"a", "b", "n"} <= set(r.calibration) and r.calibration["n"] == 5
    assert r.calibration["b"] > 0


def test_profile_writes_a_loadable_lut_with_one_row_per_signature(profiled, env):
    r, path = profiled
    assert sorted(os.listdir(path.parent)) == ["lut.parquet"]  # no work folder or temp file left
    lut = LatencyLUT.load(path)
    assert len(lut.rows) == r.signatures_total
    assert lut.rows.signature.is_unique
    assert set(lut.rows.device_fingerprint) == {lut.meta["fingerprint"]}
    assert lut.meta["fingerprint"] == _local_fingerprint(env["device"])
    assert lut.meta["device"] == "test-cpu" and lut.meta["statistic"] == "p50"
    key = _key(env["model"])
    assert r.model_key == key and list(lut.meta["models"]) == [key]
    m = lut.model(key)
    assert [g["grid"] for g in m["groups"]] == [[2, 4, 6, 8], [2, 4, 6, 8]]
    assert len(m["profile_runs"]) == 1 and m["calibration"]["n"] == 5
    assert all(len(s) == n for s, n in zip(lut.rows.samples_ms, lut.rows.n))
    pred = lut.predictor(key)
    assert pred.predict_raw({}) > 0 and pred.predict_raw([2, 2]) > 0


def test_a_second_profile_measures_nothing_new(profiled, env, tmp_path):
    r, src = profiled
    path = _copy(src, tmp_path)
    again = profile(ModelSpec(env["model"], SHAPE), env["device"], str(path), calibration_samples=5,
                    show_progress=False, log=lambda m: None)
    assert again.signatures_total == r.signatures_total
    assert again.signatures_measured == 0 and again.timed_s == 0
    lut = LatencyLUT.load(path)
    assert len(lut.rows) == r.signatures_total
    assert lut.model(r.model_key)["calibration"]["a"] == r.calibration["a"]  # kept, not refitted
    assert len(lut.model(r.model_key)["profile_runs"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["lut.parquet"]


def test_profile_to_csv_through_the_cli(env, tmp_path):
    path = tmp_path / "lut.csv"
    result = CliRunner().invoke(cli, ["profile", "-d", env["device"], "-m", env["model"], "--input-shape", "1,8,8",
                                      "--lut", str(path), "--format", "csv", "--grid", "0.5,1",
                                      "--calibration-samples", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert f"LUT {path}" in result.stdout and "2 groups" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["lut.csv", "lut.csv.meta.json"]
    lut = LatencyLUT.load(path)
    m = lut.model(_key(env["model"]))
    # ratios 0.5 and 1, plus the smallest width an agent may pick (one channel multiple)
    assert [g["grid"] for g in m["groups"]] == [[2, 4, 8], [2, 4, 8]]
    assert len(lut.rows) == 3 + 9 + 3 and lut.rows.signature.is_unique
    assert all(isinstance(s, list) and len(s) == n for s, n in zip(lut.rows.samples_ms, lut.rows.n))
    lut.predictor(_key(env["model"])).predict([6, 6])


def test_profile_into_a_csv_path_without_format(env, tmp_path):
    path = tmp_path / "lut.csv"
    r = profile(ModelSpec(env["model"], SHAPE), env["device"], str(path), ratios=(0.5, 1.0),
                calibration_samples=0, show_progress=False, log=lambda m: None)
    assert r.calibration == {} and r.signatures_measured == r.signatures_total == 15
    assert len(LatencyLUT.load(path).rows) == 15


# -- resume after a kill -----------------------------------------------------------------------

def _journal_rows(lut_path: Path) -> int:
    """Rows in the journal of the one profile running on ``lut_path`` (its work folder is per model
    and device config)."""
    journals = list(lut_path.parent.glob(f"{lut_path.name}.work-*/results.jsonl"))
    try:
        return sum(j.read_bytes().count(b'"type": "row"') for j in journals)
    except FileNotFoundError:
        return 0


def test_a_killed_profile_resumes_without_remeasuring_or_losing_rows(env, tmp_path):
    path = tmp_path / "lut.parquet"
    exe = Path(sys.executable).with_name("hwprune")
    assert exe.is_file(), f"console script missing next to {sys.executable}"
    cmd = [str(exe), "profile", "-d", env["slow"], "-m", env["model"], "--input-shape", "1,8,8",
           "--lut", str(path), "--calibration-samples", "3", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    try:
        while _journal_rows(path) < 3:
            if proc.poll() is not None:
                pytest.fail(f"profile ended (rc {proc.returncode}) before it could be killed; "
                            f"make the slow config slower. stderr: {proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                pytest.fail("no rows in the journal after 120 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    rows_at_kill = _journal_rows(path)
    assert rows_at_kill >= 3

    r = profile(ModelSpec(env["model"], SHAPE), env["slow"], str(path), calibration_samples=3,
                show_progress=False, log=lambda m: None)
    assert r.resumed_rows >= rows_at_kill > 0
    # the journal's first rows are layer candidates (calibration sub-networks come last)
    assert r.signatures_measured <= r.signatures_total - min(rows_at_kill, r.signatures_total)
    assert r.calibration["n"] == 3
    lut = LatencyLUT.load(path)
    assert lut.rows.signature.is_unique
    assert len(lut.rows) == r.signatures_total
    lut.predictor(r.model_key)  # every unit's grid is complete
    assert not list(tmp_path.glob("lut.parquet.work*"))  # the work folder goes once the LUT is whole


def test_two_profiles_of_different_models_on_one_lut_lose_no_row(env, tmp_path):
    # both run at once and save every 30 s and at the end; each merges the other's rows and
    # model under the LUT's lock before its atomic save, and keeps a journal of its own
    path = tmp_path / "lut.parquet"
    exe = Path(sys.executable).with_name("hwprune")
    procs = [subprocess.Popen([str(exe), "profile", "-d", env["slow"], "-m", m, "--input-shape", "1,8,8",
                               "--lut", str(path), "--calibration-samples", "0", "-q"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for m in (env["model"], env["gray"])]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-1000:]
    lut = LatencyLUT.load(path)
    assert set(lut.meta["models"]) == {_key(env["model"]), _key(env["gray"])}
    for m in (env["model"], env["gray"]):
        lut.predictor(_key(m))  # every unit of both models has its rows
    assert lut.rows.signature.is_unique
    assert not list(tmp_path.glob("lut.parquet.work*"))


# -- lut check ---------------------------------------------------------------------------------

CHECK_KEYS = {"median_abs_error_pct", "p90_abs_error_pct", "max_abs_error_pct", "kendall_tau", "samples"}


def test_lut_check_reports_the_error_figures(profiled, env, tmp_path):
    _, path = profiled
    out = tmp_path / "check.json"
    r = lut_check(ModelSpec(env["model"], SHAPE), env["device"], str(path), samples=5, json_path=str(out),
                  show_progress=False)
    assert CHECK_KEYS <= set(r)
    assert r["samples"] == 5 and len(r["rows"]) == 5
    assert 0 <= r["median_abs_error_pct"] <= r["p90_abs_error_pct"] <= r["max_abs_error_pct"]
    assert r["kendall_tau"] is None or -1 <= r["kendall_tau"] <= 1
    assert all(row["measured_ms"] > 0 and row["raw_predicted_ms"] > 0 for row in r["rows"])
    # the field's figures, and what a MACs-proportional predictor fitted on the same calibration
    # points (the default 8 sub-networks and the dense model, measured here) gets on the same samples
    errs = [abs(row["error_pct"]) for row in r["rows"]]
    assert r["within_5pct"] == sum(e <= 5 for e in errs) / 5 and r["within_10pct"] == sum(e <= 10 for e in errs) / 5
    m = r["macs_baseline"]
    assert m["fitted_on"] == 9 and m["ms_per_gmac"] > 0 and 0 <= m["within_5pct"] <= m["within_10pct"] <= 1
    # calibrated in this process, on sub-networks none of which is checked; the stored line's figures beside
    cal = r["in_process_calibration"]
    assert r["calibrated_in_process"] and cal["source"] == "in-process" and cal["n"] == 9
    assert cal["floor_measured_ms"] > 0 and cal["points"][0]["key"] == "calibration:floor"
    assert not {tuple(p["widths"]) for p in cal["points"]} & {tuple(row["widths"]) for row in r["rows"]}
    for row in r["rows"]:
        assert row["predicted_ms"] == pytest.approx(cal["a"] + cal["b"] * row["raw_predicted_ms"])
    assert {"median_abs_error_pct", "within_5pct", "line"} <= set(r["stored_calibration"])
    assert {"a", "b", "n"} <= set(r["stored_calibration"]["line"])
    row = r["rows"][0]
    assert row["macs_predicted_ms"] == pytest.approx(m["ms_per_gmac"] * 1e-9 * row["macs"])
    assert "MACs-proportional" in format_check_table(r)
    assert os.listdir(tmp_path) == ["check.json"]  # written atomically: no temp file beside it
    written = json.loads(out.read_text())
    assert {k: written[k] for k in CHECK_KEYS} == {k: r[k] for k in CHECK_KEYS}


def test_lut_check_through_the_cli(profiled, env, tmp_path):
    _, path = profiled
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["lut", "check", "-d", env["device"], "-m", env["model"], "--input-shape",
                                      "1,8,8", "--lut", str(path), "--samples", "5", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "5 sub-networks" in result.stdout and "Kendall tau" in result.stdout
    assert CHECK_KEYS <= set(json.loads(out.read_text()))


def test_lut_check_without_calibration_samples_checks_the_stored_line(profiled, env):
    _, path = profiled
    r = lut_check(ModelSpec(env["model"], SHAPE), env["device"], str(path), samples=4, calibration_samples=0,
                  show_progress=False)
    assert not r["calibrated_in_process"] and r["in_process_calibration"] is None
    assert r["median_abs_error_pct"] == r["stored_calibration"]["median_abs_error_pct"]
    assert r["macs_baseline"]["fitted_on"] == 5  # the LUT's own calibration points
    with pytest.raises(HwpruneError, match="--calibration-samples must be an integer of at least 0"):
        lut_check(ModelSpec(env["model"], SHAPE), env["device"], str(path), samples=4, calibration_samples=-1,
                  show_progress=False)


def test_lut_check_needs_two_samples(profiled, env):
    _, path = profiled
    with pytest.raises(HwpruneError, match="--samples must be at least 2"):
        lut_check(ModelSpec(env["model"], SHAPE), env["device"], str(path), samples=1, show_progress=False)


# -- bad input through the CLI -----------------------------------------------------------------

def _invoke_error(args: list[str], folder: Path) -> str:
    """Run the CLI expecting a user error: exit 2, one 'error:' line, no traceback, no new files."""
    before = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    result = CliRunner().invoke(cli, [*args, "-q"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    after = {p: p.read_bytes() if p.is_file() else "<folder>" for p in folder.iterdir()}
    assert after == before  # nothing written, nothing changed, no work folder left
    return lines[0]


def _profile_args(env, lut: Path, model: str | None = None, shape: str = "1,8,8") -> list[str]:
    return ["profile", "-d", env["device"], "-m", model or env["model"], "--input-shape", shape, "--lut", str(lut)]


def _check_args(env, lut: Path, model: str | None = None) -> list[str]:
    return ["lut", "check", "-d", env["device"], "-m", model or env["model"], "--input-shape", "1,8,8",
            "--lut", str(lut), "--samples", "3"]


def test_cli_model_file_without_the_factory(env, tmp_path):
    line = _invoke_error(_profile_args(env, tmp_path / "lut.parquet", f"{env['root'] / 'tiny.py'}:nosuch"), tmp_path)
    assert "no callable factory 'nosuch'" in line


def test_cli_model_that_rejects_the_input_shape(env, tmp_path):
    line = _invoke_error(_profile_args(env, tmp_path / "lut.parquet", env["gray"], shape="3,8,8"), tmp_path)
    assert "rejects input shape (1, 3, 8, 8)" in line


@pytest.mark.parametrize("command", ["profile", "check"])
def test_cli_corrupt_lut(profiled, env, tmp_path, command):
    _, src = profiled
    path = tmp_path / "lut.parquet"
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    args = _profile_args(env, path) if command == "profile" else _check_args(env, path)
    assert "corrupt or truncated LUT" in _invoke_error(args, tmp_path)


@pytest.fixture
def other_device_lut(profiled, tmp_path) -> Path:
    """A copy of the profiled LUT as if it had been measured on another device."""
    _, src = profiled
    lut = LatencyLUT.load(src)
    lut.meta["fingerprint"] = "0123456789abcdef"
    lut.rows["device_fingerprint"] = "0123456789abcdef"
    path = tmp_path / "lut.parquet"
    lut.save(path)
    return path


@pytest.mark.parametrize("command", ["profile", "check"])
def test_cli_lut_from_another_device_is_refused(env, tmp_path, other_device_lut, command):
    args = _profile_args(env, other_device_lut) if command == "profile" else _check_args(env, other_device_lut)
    line = _invoke_error(args, tmp_path)
    assert "0123456789abcdef" in line and "--allow-other-device" in line


def test_cli_allow_other_device_extends_that_devices_lut(env, other_device_lut):
    # the model already in it: nothing to measure
    result = CliRunner().invoke(cli, [*_profile_args(env, other_device_lut), "--allow-other-device", "-q"])
    assert result.exit_code == 0, result.output
    assert "(0 measured now" in result.stdout and " in the LUT already)" in result.stdout
    # a new model: its rows join the LUT's device, so its grid is complete and it predicts
    result = CliRunner().invoke(cli, [*_profile_args(env, other_device_lut, env["gray"]), "--grid", "0.5,1",
                                      "--calibration-samples", "3", "--allow-other-device", "-q"])
    assert result.exit_code == 0, result.output
    lut = LatencyLUT.load(other_device_lut)
    assert lut.meta["fingerprint"] == "0123456789abcdef"
    assert set(lut.rows.device_fingerprint) == {"0123456789abcdef"}
    assert lut.rows.signature.is_unique
    assert lut.predictor(_key(env["gray"])).predict({}) > 0
    assert sorted(os.listdir(other_device_lut.parent)) == ["lut.parquet"]


def test_cli_lut_check_of_a_model_not_in_the_lut(profiled, env, tmp_path):
    _, src = profiled
    path = _copy(src, tmp_path)
    line = _invoke_error(_check_args(env, path, env["gray"]), tmp_path)
    assert f"no profile of model {_key(env['gray'])}" in line and f"profiled: {_key(env['model'])}" in line


@pytest.mark.parametrize("args, message", [
    (["--lut-name", "lut.txt"], "must end in .parquet or .csv"),
    (["--lut-name", "lut.parquet", "--format", "csv"], "--format 'csv' does not match"),
    (["--grid", "0,2"], "--grid ratios must lie in (0, 1]"),
    (["--grid", "0.5,x"], "--grid must be comma-separated"),
    (["--shape", "1,8"], "--input-shape must be three positive integers"),
    (["--shape", "1,a,8"], "--input-shape must be C,H,W"),
])
def test_cli_bad_options(env, tmp_path, args, message):
    opts = dict(zip(args[::2], args[1::2]))
    lut = tmp_path / opts.pop("--lut-name", "lut.parquet")
    shape = opts.pop("--shape", "1,8,8")
    extra = [x for kv in opts.items() for x in kv]
    line = _invoke_error([*_profile_args(env, lut, shape=shape), *extra], tmp_path)
    assert message in line


# -- parsing and prediction outside the grid ---------------------------------------------------

def test_parse_helpers():
    assert parse_input_shape("3,32,32") == parse_input_shape("3x32x32") == (3, 32, 32)
    assert parse_ratios("1,0.5,0.25,0.5") == (0.25, 0.5, 1.0)
    for bad in ("1,8", "0,8,8", "1,8,8,8"):
        with pytest.raises(HwpruneError):
            parse_input_shape(bad)
    for bad in ("", "0.5,1.5", "-0.1,1"):
        with pytest.raises(HwpruneError):
            parse_ratios(bad)


def test_prediction_below_the_grid_names_group_and_width(profiled):
    r, path = profiled
    pred = LatencyLUT.load(path).predictor(r.model_key)
    first = pred.group_names[0]
    with pytest.raises(HwpruneError) as info:
        pred.predict({first: 1})
    msg = str(info.value)
    assert f"group '{first}'" in msg and "width 1 is outside the profiled grid [2, 8]" in msg


def test_a_profile_of_another_variant_under_the_same_name_is_refused_unless_replaced(profiled, env, tmp_path):
    # the same file and factory with another class count: other layers under the same key
    r, src = profiled
    path = _copy(src, tmp_path)
    line = _invoke_error(_profile_args(env, path) + ["--num-classes", "5"], tmp_path)
    assert "already holds a profile of" in line and "--replace" in line
    res = CliRunner().invoke(cli, _profile_args(env, path) + ["--num-classes", "5", "--replace", "-q"])
    assert res.exit_code == 0, res.output
    assert LatencyLUT.load(path).model(r.model_key)["structure_sha"] != LatencyLUT.load(src).model(r.model_key)["structure_sha"]


def test_a_channel_multiple_no_group_can_step_down_to_is_said(tmp_path):
    # channel_multiple: 1000 on 16-32-channel groups profiled the dense model alone without a
    # word; prune then called the budget unreachable (nu12)
    (tmp_path / "tiny.py").write_text(TINY_MODEL)
    (tmp_path / "wide.yaml").write_text(DEVICE_YAML.replace("channel_multiple: 2", "channel_multiple: 1000"))
    said: list[str] = []
    profile(ModelSpec(f"{tmp_path / 'tiny.py'}:net", (1, 8, 8)), str(tmp_path / "wide.yaml"),
            str(tmp_path / "lut.parquet"), calibration_samples=0, show_progress=False, log=said.append)
    assert any(m.startswith("warning: channel_multiple 1000 leaves no group a width below its dense one")
               and "nothing can be pruned" in m for m in said), said
