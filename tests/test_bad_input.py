"""Bad input through the real CLI, one row a case: exit 2, one ``error:`` line naming the problem, no traceback,
and no new file left behind.

Each row is (id, argv, environment, fragments the error line must contain). Add a row for every
new option. Files the rows point at are made once by the ``files`` fixture; the check that
nothing new is left behind compares the folder's listing before and after each command.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from hwprune.cli import cli

DEVICE = """\
name: bad-input-cpu
backend: onnxruntime
threads: 1
warmup: 1
min_repeats: 5
max_seconds: 0.01
channel_multiple: 8
statistic: p50
"""

MODELS = """\
import sys
import torch.nn as nn


def net(in_channels=1, num_classes=10):
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, num_classes))


def boom(**kw):
    raise RuntimeError("boom")


def bye(**kw):
    sys.exit(3)
"""


def _reshape_impossible() -> bytes:
    """Loads fine, fails when run: a Reshape of 6 values into 4."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2, 2])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"], name="impossible_reshape")],
                              "bad", [x], [y], initializer=[shape])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _inconsistent_lut(path) -> None:
    """A LUT whose metadata names one device fingerprint and whose rows carry another."""
    from hwprune.lut import COLUMNS, LatencyLUT

    lut = LatencyLUT(meta={"format": 1, "fingerprint": "aaaa", "statistic": "p50", "models": {"m@1x1x8x8": {
        "model": "m", "input_shape": [1, 1, 8, 8], "batch": 1, "precision": "fp32", "groups": [], "units": [],
        "overhead_ms": 0.0, "calibration": None}}})
    lut.add_rows([{**{c: None for c in COLUMNS}, "signature": "s1", "device_fingerprint": "bbbb", "precision": "fp32",
                   "batch": 1, "p50_ms": 0.1, "mean_ms": 0.1, "p90_ms": 0.1, "p99_ms": 0.1, "overhead_ms": 0.0,
                   "n": 5, "samples_ms": [0.1] * 5}])
    lut.save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-input")
    (d / "device.yaml").write_text(DEVICE)
    for name, extra in (("inf.yaml", "min_seconds: .inf\n"), ("nan.yaml", "rel_ci: .nan\n")):
        (d / name).write_text(DEVICE.replace("max_seconds: 0.01\n", "max_seconds: 0.01\n" + extra))
    (d / "maxnan.yaml").write_text(DEVICE.replace("max_seconds: 0.01", "max_seconds: .nan"))
    (d / "noname.yaml").write_text(DEVICE.replace("name: bad-input-cpu", 'name: ""'))
    (d / "twice.yaml").write_text(DEVICE + "threads: 2\n")
    (d / "models.py").write_text(MODELS)
    (d / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (d / "weights.txt").write_text("these are not weights\n")
    (d / "bad_run.onnx").write_bytes(_reshape_impossible())
    (d / "a_file").write_text("x")
    (d / "plan_all.json").write_text(json.dumps({"format": 1, "model": "resnet20", "input_shape": [1, 1, 28, 28],
                                                 "groups": {"conv1": {"dense": 16, "kept": "all"}}}))
    from hwprune.lut import META_KEY, LatencyLUT

    LatencyLUT().save(d / "empty.parquet")
    _inconsistent_lut(d / "inconsistent.parquet")
    import pyarrow.parquet as pq

    table = pq.read_table(d / "empty.parquet")
    pq.write_table(table.replace_schema_metadata({META_KEY: b"[1, 2]"}), d / "listmeta.parquet")
    (d / "plan_cifar.json").write_text(json.dumps({"format": 1, "model": "resnet20", "input_shape": [1, 3, 32, 32],
                                                   "num_classes": 10, "groups": {"conv1": {"dense": 16, "kept": [0]}}}))
    (d / "plan_100.json").write_text(json.dumps({"format": 1, "model": "resnet20", "input_shape": [1, 1, 28, 28],
                                                 "num_classes": 100, "groups": {"conv1": {"dense": 16, "kept": [0]}}}))
    from hwprune.profiling import ModelSpec, profile

    profile(ModelSpec(f"{d / 'models.py'}:net", (1, 8, 8), 10), str(d / "device.yaml"), str(d / "net.parquet"),
            calibration_samples=0, show_progress=False, log=lambda m: None)
    csv = d / "text_cell.csv"
    LatencyLUT.load(d / "net.parquet").save(csv)
    import pandas as pd

    frame = pd.read_csv(csv)
    frame["p50_ms"] = frame["p50_ms"].astype(object)
    frame.loc[0, "p50_ms"] = "abc"   # a CSV edited by hand
    frame.to_csv(csv, index=False)
    return d


def _rows(d):
    dev, model = str(d / "device.yaml"), f"{d / 'models.py'}:net"
    prune = ["prune", "-d", dev, "-m", model, "--data", f"fashion-mnist:{d / 'no-data-here'}", "--out",
             str(d / "run"), "-q"]
    return [
        # outputs that cannot be written: refused before any work
        ("time-json-unwritable", ["time", str(d / "bad_run.onnx"), "-d", dev, "--json", str(d / "a_file" / "t.json")],
         {}, ["--json", "is a file, not a folder"]),
        ("regress-junit-unwritable", ["regress", "-d", dev, "--model", str(d / "bad_run.onnx"), "--against",
                                      str(d / "bad_run.onnx"), "--junit", str(d / "a_file" / "j.xml")],
         {}, ["--junit", "is a file"]),
        ("profile-lut-unwritable", ["profile", "-d", dev, "-m", model, "--lut", str(d / "a_file" / "L.parquet")],
         {}, ["--lut", "is a file"]),
        ("prune-out-unwritable", prune[:-3] + ["--out", str(d / "a_file" / "run"), "--max-params", "50%", "-q"],
         {}, ["--out", "is a file"]),
        # a folder whose permission bits allow writing but where no file can be made (/proc, even for root)
        ("time-json-in-proc", ["time", str(d / "bad_run.onnx"), "-d", dev, "--json", "/proc/t.json"],
         {}, ["--json /proc/t.json: cannot write in /proc"]),
        ("prune-out-in-proc", prune[:-3] + ["--out", "/proc/run", "--max-params", "50%", "-q"],
         {}, ["--out /proc/run: cannot write in /proc"]),
        ("apply-plan-onnx-unwritable", ["apply-plan", "-m", "resnet20", "--plan", str(d / "plan_all.json"),
                                        "--onnx", str(d / "a_file" / "x.onnx")], {}, ["--onnx", "is a file"]),
        # an output path naming an input or another kind of file: a typo must not destroy it (nu11)
        ("time-json-over-its-model", ["time", str(d / "bad_run.onnx"), "-d", dev, "--json", str(d / "bad_run.onnx")],
         {}, ["--json", "already holds an ONNX model, not a JSON file", "refusing to overwrite"]),
        ("lut-check-json-over-the-lut", ["lut", "check", "-d", dev, "-m", model, "--input-shape", "1,8,8", "--lut",
                                         str(d / "net.parquet"), "--json", str(d / "net.parquet")],
         {}, ["--json", "already holds a Parquet file (a LUT?)"]),
        ("apply-plan-onnx-over-the-plan", ["apply-plan", "-m", "resnet20", "--plan", str(d / "plan_all.json"),
                                           "--onnx", str(d / "plan_all.json")], {}, ["--onnx", "a JSON file"]),
        ("write-baseline-over-a-model", ["regress", "-d", dev, "--model", str(d / "bad_run.onnx"), "--write-baseline",
                                         str(d / "net.parquet")], {}, ["--write-baseline", "a Parquet file"]),
        ("write-baseline-over-a-plan", ["regress", "-d", dev, "--model", str(d / "bad_run.onnx"), "--write-baseline",
                                        str(d / "plan_all.json")], {}, ["a JSON file that is not a baseline"]),
        ("pretrain-out-over-a-lut", ["pretrain", "-m", "resnet20", "--out", str(d / "net.parquet"), "--epochs", "1"],
         {}, ["--out", "a Parquet file"]),
        # the user's code failing
        ("factory-raises", ["profile", "-d", dev, "-m", f"{d / 'models.py'}:boom", "--lut", str(d / "L.parquet")],
         {}, ["your factory `boom in", "models.py` raised RuntimeError: boom"]),
        ("factory-exits", ["profile", "-d", dev, "-m", f"{d / 'models.py'}:bye", "--lut", str(d / "L.parquet")],
         {}, ["factory `bye`", "sys.exit(3)"]),
        ("model-file-exits", ["profile", "-d", dev, "-m", f"{d / 'exits.py'}:net", "--lut", str(d / "L.parquet")],
         {}, ["exits.py failed to import", "sys.exit(0)"]),
        ("onnx-fails-when-run", ["time", str(d / "bad_run.onnx"), "-d", dev], {},
         ["loads but fails when run", "Reshape"]),
        ("onnx-fails-in-a-fresh-process", ["time", str(d / "bad_run.onnx"), "-d", dev, "--processes", "2"], {},
         ["measuring process 1 of 2 failed", "loads but fails when run"]),
        ("regress-processes-zero", ["regress", "-d", dev, "--model", str(d / "bad_run.onnx"), "--against",
                                    str(d / "bad_run.onnx"), "--processes", "0"], {},
         ["--processes must be an integer of at least 1"]),
        ("time-processes-zero", ["time", str(d / "bad_run.onnx"), "-d", dev, "--processes", "0"], {},
         ["--processes must be an integer of at least 1"]),
        ("prune-processes-zero", prune + ["--max-params", "50%", "--processes", "0"], {},
         ["--processes must be an integer of at least 1"]),
        ("prune-calibration-samples-negative", prune + ["--max-params", "50%", "--calibration-samples", "-1"], {},
         ["--calibration-samples must be an integer of at least 0"]),
        # hostile file contents
        ("lut-meta-a-list", ["lut", "show", "--lut", str(d / "listmeta.parquet")], {}, ["not a JSON object"]),
        ("lut-without-models", ["lut", "show", "--lut", str(d / "empty.parquet")], {}, ["holds no profiled model yet"]),
        ("lut-rows-of-another-device", ["lut", "show", "--lut", str(d / "inconsistent.parquet")], {},
         ["fingerprint(s) bbbb", "names aaaa", "inconsistent"]),
        ("plan-for-another-input-shape", ["apply-plan", "-m", "resnet20", "--plan", str(d / "plan_cifar.json"),
                                          "--input-shape", "1,28,28"], {}, ["input shape (3, 32, 32)",
                                                                           "--input-shape 3,32,32"]),
        ("plan-for-another-class-count", ["apply-plan", "-m", "resnet20", "--plan", str(d / "plan_100.json"),
                                          "--num-classes", "10"], {}, ["100 classes", "--num-classes 100"]),
        ("lut-of-another-class-count", ["lut", "check", "-d", dev, "-m", model, "--input-shape", "1,8,8",
                                        "--num-classes", "3", "--lut", str(d / "net.parquet")], {},
         ["another variant of the model"]),
        ("pretrain-out-unwritable", ["pretrain", "-m", model, "--data", f"fashion-mnist:{d / 'no-data-here'}",
                                     "--out", str(d / "a_file" / "m.pt")], {}, ["--out", "is a file"]),
        ("plan-kept-all", ["apply-plan", "-m", "resnet20", "--plan", str(d / "plan_all.json")], {},
         ["group 'conv1'", "'kept'"]),
        ("weights-a-text-file", ["profile", "-d", dev, "-m", model, "--weights", str(d / "weights.txt"),
                                 "--lut", str(d / "L.parquet")], {}, ["not a PyTorch checkpoint"]),
        ("pretrain-threads", ["pretrain", "-m", model, "--data", f"fashion-mnist:{d / 'no-data-here'}",
                              "--out", str(d / "m.pt"), "--threads", "-2"], {}, ["--threads"]),
        # device configs
        ("config-min-seconds-inf", ["time", str(d / "bad_run.onnx"), "-d", str(d / "inf.yaml")], {},
         ["min_seconds", "finite"]),
        ("config-max-seconds-nan", ["time", str(d / "bad_run.onnx"), "-d", str(d / "maxnan.yaml")], {},
         ["'max_seconds'", "finite"]),
        ("config-rel-ci-nan", ["time", str(d / "bad_run.onnx"), "-d", str(d / "nan.yaml")], {}, ["rel_ci"]),
        ("config-empty-name", ["time", str(d / "bad_run.onnx"), "-d", str(d / "noname.yaml")], {},
         ["'name'", "empty"]),
        ("configs-folder-missing", ["devices"], {"HWPRUNE_DEVICE_CONFIGS": str(d / "nowhere")},
         ["HWPRUNE_DEVICE_CONFIGS", "not a folder"]),
        # numbers out of range, refused before the data load (the data folder does not exist)
        ("finetune-epochs-negative", prune + ["--max-params", "50%", "--finetune-epochs", "-1"], {},
         ["--finetune-epochs"]),
        ("batch-size-zero", prune + ["--max-params", "50%", "--batch-size", "0"], {}, ["--batch-size"]),
        ("lr-nan", prune + ["--max-params", "50%", "--lr", "nan"], {}, ["--lr"]),
        ("kd-weight-5", prune + ["--max-params", "50%", "--kd-weight", "5"], {}, ["--kd-weight"]),
        ("certify-rounds-zero", prune + ["--max-params", "50%", "--certify-rounds", "0"], {}, ["--certify-rounds"]),
        ("max-evaluations-zero", prune + ["--max-params", "50%", "--max-evaluations", "0"], {},
         ["--max-evaluations"]),
        ("latency-zero", prune + ["--latency-ms", "0", "--lut", str(d / "empty.parquet")], {}, ["--latency-ms"]),
        ("latency-negative", prune + ["--latency-ms", "-1", "--lut", str(d / "empty.parquet")], {},
         ["--latency-ms"]),
        ("latency-nan", prune + ["--latency-ms", "nan", "--lut", str(d / "empty.parquet")], {}, ["--latency-ms"]),
        ("speedup-inf", prune + ["--speedup", "inf", "--lut", str(d / "empty.parquet")], {}, ["--speedup"]),
        ("max-params-nan", prune + ["--max-params", "nan"], {}, ["--max-params"]),
        ("num-classes-zero", ["profile", "-d", dev, "-m", model, "--num-classes", "0", "--lut", str(d / "L.parquet")],
         {}, ["--num-classes must be"]),
        ("calibration-samples-negative", ["profile", "-d", dev, "-m", model, "--calibration-samples", "-3",
                                          "--lut", str(d / "L.parquet")], {}, ["--calibration-samples must be"]),
        ("staircase-processes-zero", ["profile", "-d", dev, "-m", model, "--staircase-processes", "0",
                                      "--lut", str(d / "L.parquet")], {}, ["--staircase-processes must be"]),
        # click's own usage errors are one line too, not usage, a hint and the error
        ("click-not-an-integer", ["profile", "-d", dev, "-m", model, "--staircase-processes", "abc",
                                  "--lut", str(d / "L.parquet")], {},
         ["Invalid value for '--staircase-processes'", "profile --help)"]),
        ("lut-csv-text-cell", ["lut", "show", "--lut", str(d / "text_cell.csv")], {},
         ["column p50_ms holds 'abc' (not a number) in row 1"]),
        ("config-key-twice", ["time", str(d / "bad_run.onnx"), "-d", str(d / "twice.yaml")], {},
         ["key 'threads' is given twice", "line"]),
        # pretrain's numbers, before the data load (the data folder does not exist) and before any NaN loss
        ("pretrain-seed-negative", ["pretrain", "-m", model, "--data", f"fashion-mnist:{d / 'no-data-here'}",
                                    "--out", str(d / "m.pt"), "--seed", "-1"], {}, ["--seed must be an integer"]),
        ("pretrain-lr-nan", ["pretrain", "-m", model, "--data", f"fashion-mnist:{d / 'no-data-here'}",
                             "--out", str(d / "m.pt"), "--lr", "nan"], {}, ["--lr must be a finite number > 0"]),
        ("pretrain-batch-size-zero", ["pretrain", "-m", model, "--data", f"fashion-mnist:{d / 'no-data-here'}",
                                      "--out", str(d / "m.pt"), "--batch-size", "0"], {}, ["--batch-size must be"]),
        # regress: a time limit the sampler can plan within; outputs that would overwrite each other
        ("regress-max-seconds-inf", ["regress", "-d", dev, "--model", str(d / "bad_run.onnx"), "--against",
                                     str(d / "bad_run.onnx"), "--max-seconds", "inf"], {},
         ["--max-seconds must be a positive, finite number"]),
        ("regress-one-file-two-outputs", ["regress", "-d", dev, "--model", str(d / "bad_run.onnx"), "--against",
                                          str(d / "bad_run.onnx"), "--json", str(d / "o.out"), "--markdown",
                                          str(d / "o.out")], {}, ["--markdown and --json name the same file"]),
        ("regress-output-over-its-model", ["regress", "-d", dev, "--model", str(d / "bad_run.onnx"), "--against",
                                           str(d / "bad_run.onnx"), "--json", str(d / "bad_run.onnx")], {},
         ["--json would overwrite the --model file"]),
    ]


def _listing(d) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.mark.parametrize("row", range(60))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(files, row, monkeypatch):
    rows = _rows(files)
    assert len(rows) == 60, "the parametrize range must cover every row"
    name, argv, env, fragments = rows[row]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = _listing(files)
    res = CliRunner().invoke(cli, argv)
    after = _listing(files)
    err = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (name, res.output, res.exception)
    assert "Traceback" not in res.output, name
    error_lines = [line for line in err if line.startswith("error:")]
    assert len(error_lines) == 1, (name, res.stderr)
    for f in fragments:
        assert f in error_lines[0], (name, error_lines[0])
    assert after == before, (name, sorted(after - before))


def test_apply_plan_with_a_missing_factory_or_file_says_so_not_that_the_plan_does_not_fit(files, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": 1, "model": "resnet20", "input_shape": [1, 1, 28, 28],
                                "groups": {"conv1": {"dense": 16, "kept": list(range(8))}}}))
    for model, fragment in ((f"{files / 'models.py'}:nosuch", "has no callable factory 'nosuch'"),
                            (f"{files / 'nofile.py'}:net", "nofile.py")):
        res = CliRunner().invoke(cli, ["apply-plan", "-m", model, "--plan", str(plan)])
        assert res.exit_code == 2 and fragment in res.stderr and "was made for" not in res.stderr, res.stderr


def test_negative_seeds_conflicting_weights_and_a_unitless_budget_are_one_sentence(files, tmp_path):
    import hwprune
    from hwprune.errors import HwpruneError
    from hwprune.pruning import PruneOptions
    from hwprune.regress.options import RegressOptions
    from hwprune.regress.run import regress

    with pytest.raises(HwpruneError, match=r"^--seed must be an integer of at least 0, got -5$"):
        PruneOptions(model="resnet20", device="x86-cpu-ort", max_params="50%", seed=-5).validate()
    opts = RegressOptions(device="x86-cpu-ort", model=str(files / "bad_run.onnx"), against=str(files / "bad_run.onnx"),
                          seed=-1)
    with pytest.raises(HwpruneError, match=r"^--seed must be an integer of at least 0"):
        regress(opts)
    with pytest.raises(HwpruneError, match=r"^give weights= \(the run's pruned.pt\) or dense_weights="):
        hwprune.apply_plan("resnet20", str(tmp_path / "plan.json"), weights="a.pt", dense_weights="b.pt")


def test_apply_plan_takes_the_input_shape_and_class_count_the_plan_was_made_for(tmp_path):
    # it defaulted to 1,28,28 and 10 classes, then said the plan needs --input-shape 3,32,32 (nu10)
    import torch

    from hwprune.groups import find_groups
    from hwprune.models import create_model

    groups = find_groups(create_model("resnet20", in_channels=3, num_classes=100), torch.zeros(1, 3, 32, 32))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": 1, "model": "resnet20", "input_shape": [1, 3, 32, 32], "num_classes": 100,
                                "groups": {g.name: {"dense": g.channels, "kept": list(range(g.channels // 2))}
                                           for g in groups}}))
    res = CliRunner().invoke(cli, ["apply-plan", "-m", "resnet20", "--plan", str(plan), "--onnx", str(tmp_path / "p.onnx")])
    assert res.exit_code == 0, res.output
    import onnx

    graph = onnx.load(str(tmp_path / "p.onnx")).graph
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(graph.input[0])[1:] == [3, 32, 32] and dims(graph.output[0])[1:] == [100]


def test_a_budget_module_in_the_working_folder_is_found_as_the_readme_writes_it(tmp_path, monkeypatch):
    import sys

    from hwprune.budgets import load_callable
    from hwprune.errors import HwpruneError

    (tmp_path / "mybud.py").write_text("def total(widths):\n    return sum(widths.values())\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bud.py").write_text("def one(widths):\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    # the console script does not put the working folder on sys.path: README's
    # --budget module:function=LIMIT failed for a module beside the user (nu10, nu12)
    assert load_callable("mybud:total")({"a": 2, "b": 3}) == 5
    assert load_callable("mybud.py:total")({"a": 2, "b": 3}) == 5
    assert load_callable("pkg.bud:one")({}) == 1
    with pytest.raises(HwpruneError, match=r"cannot import budget module 'nosuch': No module named 'nosuch'$"):
        load_callable("nosuch:total")
