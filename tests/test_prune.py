"""``hwprune prune`` and ``hwprune apply-plan`` end to end, on a tiny model, tiny data and a fast CPU config.

One module-scoped fixture writes a synthetic 8x8 Fashion-MNIST-like IDX set, a tiny conv
model, a fast onnxruntime device config and its LUT. The runs are real (search, physical
pruning, one fine-tuning epoch, export, measurement) but each takes a few seconds; timings
are noisy on a shared machine, so the tests check the contract (files, fields, consistency
of the certificate, budgets met), not particular latencies.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from hwprune.data import idx_bytes
from hwprune.cli import cli
from hwprune.data import load_dataset
from hwprune.export import export_onnx
from hwprune.lut import LatencyLUT, model_key
from hwprune.profiling import ModelSpec, profile
from hwprune.plan import apply_plan, load_plan
from hwprune.train import evaluate, train
from test_profile import DEVICE_YAML as _PROFILE_DEVICE_YAML

torch.set_num_threads(1)

# test_profile's fast CPU config, timing pruned models in interleaved batches of 8.
DEVICE_YAML = _PROFILE_DEVICE_YAML + "interleave_batch: 8\n"

TINY_MODEL = """\
import torch.nn as nn


def net(in_channels=1, num_classes=10):
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def other(in_channels=1, num_classes=10):
    return nn.Sequential(
        nn.Conv2d(in_channels, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, num_classes))
"""

BUDGET_FNS = """\
def channels(widths):
    return sum(widths.values())
"""

SHAPE = "1,8,8"
RUN_OUTPUTS = ("pruned.onnx", "pruned.pt", "plan.json", "baseline.json", "report.json", "report.md",
               "channels.png", "speedup.png", "config.json")


def _write_fashion(directory, n_train=600, n_test=200, seed=0) -> None:
    """8x8 images whose brightness and a class-specific bright row carry the label."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 8, 8)).astype(np.int64)
        images += 18 * labels[:, None, None]
        images[np.arange(n), labels % 8, :] += 60
        images = np.clip(images, 0, 255).astype(np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


@pytest.fixture(scope="module", autouse=True)
def _no_retake_pauses():
    """A busy test machine may ask for real retakes; the tests need not sleep through their pauses."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hwprune.certify.RETAKE_WAIT_S", (0.0, 0.0))
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-env")
    _write_fashion(root / "fmnist")
    (root / "device.yaml").write_text(DEVICE_YAML)
    (root / "tiny.py").write_text(TINY_MODEL)
    (root / "budget_fns.py").write_text(BUDGET_FNS)
    model = f"{root / 'tiny.py'}:net"
    lut = root / "lut.parquet"
    # No calibration sub-networks: with a handful of them (all at keep ratios 0.2..1, so their raw
    # predictions bunch together) the robust line through noisy timings can have a steep slope
    # and a negative intercept, and then the LUT predicts negative latencies for small widths,
    # which makes any --latency-ms "reachable". The uncalibrated sum is positive and monotone.
    profile(ModelSpec(model, (1, 8, 8)), str(root / "device.yaml"), str(lut), calibration_samples=0,
            show_progress=False, log=lambda m: None)
    data = f"fashion-mnist:{root / 'fmnist'}"
    # a dense checkpoint that has learnt something, so accuracies mean something (about 2 s)
    torch.manual_seed(0)
    dense = ModelSpec(model, (1, 8, 8)).build()
    train(dense, load_dataset(data, "train"), epochs=3, lr=0.05, batch_size=64, log=lambda m: None, progress=False)
    torch.save(dense.state_dict(), root / "dense.pt")
    return {"root": root, "device": str(root / "device.yaml"), "model": model, "weights": str(root / "dense.pt"),
            "other": f"{root / 'tiny.py'}:other", "lut": str(lut), "data": data,
            "budget_fns": str(root / "budget_fns.py")}


def _prune_args(env, out, *extra):
    return ["prune", "--device", env["device"], "--model", env["model"], "--data", env["data"],
            "--lut", env["lut"], "--out", str(out), "--weights", env["weights"], "--input-shape", SHAPE,
            "--finetune-epochs", "1",
            "--max-evaluations", "5", "-q", *extra]


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _user_error(result, *fragments, alone=False):
    """Exit 2, one ``error:`` line (the last on stderr) naming ``fragments``, no traceback.

    ``alone``: the error is all there is on stderr (it came before any progress message).
    """
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    err_lines = [line for line in lines if line.startswith("error:")]
    assert len(err_lines) == 1 and lines[-1] == err_lines[0], result.stderr
    if alone:
        assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    for f in fragments:
        assert f in err_lines[0], err_lines[0]
    return err_lines[0]


def _run_onnx(model, x: np.ndarray) -> np.ndarray:
    """Run an ONNX model (path or bytes) on ``x`` with onnxruntime's CPU provider."""
    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _report(out) -> dict:
    return json.loads((out / "report.json").read_text())


def _assert_pruned_unless_dense_fits(r: dict, env) -> None:
    """Fewer parameters than dense, unless the dense model itself met the LUT budget.

    A ``--speedup`` budget is the dense latency measured at the start of the run over the
    speed-up; on a loaded machine that measurement can come out well above the LUT's
    prediction for the dense model, and then the dense model is a legitimate answer.
    """
    dense_predicted = LatencyLUT.load(env["lut"]).predictor(model_key(env["model"], (1, 1, 8, 8))).predict({})
    if dense_predicted > r["certificate"]["rounds"][0]["lut_limit_ms"]:
        assert r["pruned"]["params"] < r["dense"]["params"]
        assert r["pruned"]["macs"] < r["dense"]["macs"]
        assert any(kept < dense for dense, kept in r["pruned"]["channels"].values())
    else:
        assert r["pruned"]["params"] <= r["dense"]["params"]


@pytest.fixture(scope="module")
def uniform_run(env):
    out = env["root"] / "run-uniform"
    result = _invoke(_prune_args(env, out, "--speedup", "1.3", "--agent", "uniform"))
    return result, out


# -- the main run -----------------------------------------------------------------------------------

def test_prune_writes_the_run_folder(uniform_run):
    result, out = uniform_run
    _ok(result)
    for f in RUN_OUTPUTS:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not [p for p in os.listdir(out) if p.startswith(".") or p.endswith(".tmp")]
    assert "certified:" in result.stdout and str(out) in result.stdout
    assert (out / "channels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "Certified:" in md and "hwprune prune" in md
    config = json.loads((out / "config.json").read_text())
    assert config["speedup"] == 1.3 and config["agent"] == "uniform"


def test_report_has_the_designed_fields(uniform_run, env):
    _ok(uniform_run[0])
    r = _report(uniform_run[1])
    assert r["model"] == env["model"] and r["device"] == "test-cpu" and r["agent"] == "uniform"
    b = r["budget"]
    assert b["statistic"] == "p50" and b["latency_ms"] > 0
    for part in ("dense", "pruned"):
        m = r[part]
        assert 0.0 <= m["accuracy"] <= 1.0
        assert set(m["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
        assert all(m["latency_ms"][k] > 0 for k in ("p50", "p90", "p99", "mean"))
        assert isinstance(m["params"], int) and m["params"] > 0
        assert isinstance(m["macs"], int) and m["macs"] > 0
    p = r["pruned"]
    assert p["predicted_latency_ms"] > 0
    assert set(p["channels"]) and all(len(v) == 2 and 0 < v[1] <= v[0] for v in p["channels"].values())
    _assert_pruned_unless_dense_fits(r, env)
    assert isinstance(r["certified"], bool)
    c = r["certificate"]
    assert c["statistic"] == "p50" and c["confidence"] == 0.95 and c["upper_bound_ms"] > 0
    assert r["certified"] == (c["upper_bound_ms"] <= b["latency_ms"])
    # the LUT budget of the last search round was met by the chosen widths
    lut_values = {k: v for k, v in p["budget_values"].items() if k.startswith("lut_latency")}
    assert lut_values and all(v <= c["rounds"][-1]["lut_limit_ms"] * (1 + 1e-9) for v in lut_values.values())
    assert r["search"]["evaluations"] >= 1 and r["search"]["seconds"] >= 0
    assert r["finetune"]["epochs"] == 1 and r["finetune"]["seconds"] > 0
    assert isinstance(r["environment"], dict) and r["environment"]
    assert r["weights"] == env["weights"]
    assert r["dense"]["accuracy"] > 0.25  # the checkpoint learnt the synthetic classes (chance: 0.1)


def test_reported_accuracy_is_the_saved_models_test_accuracy(uniform_run, env):
    _ok(uniform_run[0])
    out = uniform_run[1]
    model = apply_plan(ModelSpec(env["model"], (1, 8, 8)), str(out / "plan.json"), str(out / "pruned.pt"))
    test = load_dataset(env["data"], "test")
    assert evaluate(model, test) == pytest.approx(_report(out)["pruned"]["accuracy"], abs=1e-9)
    dense = ModelSpec(env["model"], (1, 8, 8), weights=env["weights"]).build()
    assert evaluate(dense, test) == pytest.approx(_report(out)["dense"]["accuracy"], abs=1e-9)


def test_reproduce_line_gives_back_the_same_options(uniform_run, env, tmp_path):
    """The command printed in the report parses to the options the run used (config.json)."""
    _ok(uniform_run[0])
    out = uniform_run[1]
    line = _report(out)["reproduce"]
    argv = shlex.split(line)
    assert argv[:2] == ["hwprune", "prune"]
    ctx = cli.commands["prune"].make_context("prune", argv[2:])
    config = json.loads((out / "config.json").read_text())
    params = dict(ctx.params)
    assert params.pop("lut_path") == config["lut"]
    assert params.pop("input_shape") == ",".join(map(str, config["input_shape"]))
    params.pop("quiet")
    params.pop("require_certified")   # the command's exit code, not an option of the run
    for k, v in params.items():
        want = config[k]
        if k == "budget":
            want = [tuple(p) for p in want]
        assert v == want, k


def test_speedup_budget_is_relative_to_the_measured_dense_model(uniform_run):
    _ok(uniform_run[0])
    out = uniform_run[1]
    r = _report(out)
    baseline = json.loads((out / "baseline.json").read_text())
    assert baseline["model"] == "pruned.onnx" and baseline["statistic"] == "p50"
    assert baseline["onnx_sha256"] == hashlib.sha256((out / "pruned.onnx").read_bytes()).hexdigest()
    # the budget is the dense p50 measured beside the final pruned model, divided by 1.3
    assert r["budget"]["speedup"] == 1.3
    assert r["certificate"]["budget_ms"] == r["budget"]["latency_ms"]
    assert r["budget"]["latency_ms"] == pytest.approx(r["dense"]["latency_ms"]["p50"] / 1.3)
    assert r["certified"] == (r["certificate"]["upper_bound_ms"] <= r["budget"]["latency_ms"])


def test_pruned_onnx_runs_in_onnxruntime(uniform_run):
    _ok(uniform_run[0])
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    y = _run_onnx(uniform_run[1] / "pruned.onnx", x)
    assert y.shape == (1, 10) and np.isfinite(y).all()


def test_plan_lists_kept_channels_per_group(uniform_run, env):
    _ok(uniform_run[0])
    out = uniform_run[1]
    plan = load_plan(str(out / "plan.json"))
    r = _report(out)
    assert plan["model"] == env["model"] and plan["input_shape"] == [1, 1, 8, 8]
    assert set(plan["groups"]) == set(r["pruned"]["channels"])
    for name, g in plan["groups"].items():
        dense, kept = r["pruned"]["channels"][name]
        assert g["dense"] == dense and len(g["kept"]) == kept
        assert len(set(g["kept"])) == kept and all(0 <= i < dense for i in g["kept"])


# -- apply-plan ---------------------------------------------------------------------------------------

def test_apply_plan_rebuilds_the_saved_model(uniform_run, env, tmp_path):
    _ok(uniform_run[0])
    out = uniform_run[1]
    onnx_out = tmp_path / "rebuilt.onnx"
    res = _ok(_invoke(["apply-plan", "--model", env["model"], "--plan", out / "plan.json",
                       "--weights", out / "pruned.pt", "--input-shape", SHAPE, "--onnx", onnx_out]))
    assert "parameters" in res.stdout
    assert f"{_report(out)['pruned']['params']:,}" in res.stdout
    assert "warning" not in res.stderr
    # without --weights the architecture is rebuilt with initial weights, and it says so
    bare = _ok(_invoke(["apply-plan", "--model", env["model"], "--plan", out / "plan.json", "--input-shape", SHAPE]))
    assert "warning: no --weights" in bare.stderr
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    saved = _run_onnx(out / "pruned.onnx", x)
    np.testing.assert_allclose(_run_onnx(onnx_out, x), saved, atol=1e-4, rtol=0)
    # and in PyTorch, through the library, and exported again
    model = apply_plan(ModelSpec(env["model"], (1, 8, 8)), str(out / "plan.json"), str(out / "pruned.pt"))
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, saved, atol=1e-4, rtol=0)
    np.testing.assert_allclose(_run_onnx(export_onnx(model, torch.zeros(1, 1, 8, 8)), x), saved, atol=1e-4, rtol=0)


def test_apply_plan_refuses_a_plan_for_another_model(uniform_run, env):
    _ok(uniform_run[0])
    out = uniform_run[1]
    _user_error(_invoke(["apply-plan", "--model", env["other"], "--plan", out / "plan.json",
                         "--input-shape", SHAPE]), "plan.json", "does not fit", alone=True)


def test_apply_plan_refuses_a_corrupt_plan(env, tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text('{"format": 1, "groups": {')
    _user_error(_invoke(["apply-plan", "--model", env["model"], "--plan", bad, "--input-shape", SHAPE]),
                str(bad), "not a valid plan.json", alone=True)
    bad.write_text('{"hello": "world"}')
    _user_error(_invoke(["apply-plan", "--model", env["model"], "--plan", bad, "--input-shape", SHAPE]),
                "not an hwprune plan", alone=True)
    _user_error(_invoke(["apply-plan", "--model", env["model"], "--plan", tmp_path / "missing.json",
                         "--input-shape", SHAPE]), "plan not found", alone=True)


# -- other agents and budgets -------------------------------------------------------------------------

def test_knapsack_agent(env, tmp_path):
    out = tmp_path / "run"
    _ok(_invoke(_prune_args(env, out, "--speedup", "1.3", "--agent", "knapsack")))
    r = _report(out)
    assert r["agent"] == "knapsack"
    assert r["certified"] == (r["certificate"]["upper_bound_ms"] <= r["budget"]["latency_ms"])
    _assert_pruned_unless_dense_fits(r, env)


@pytest.mark.parametrize("agent", ["rl", "bo"])
def test_rl_and_bo_agents_end_to_end(env, tmp_path, agent):
    out = tmp_path / "run"
    log = tmp_path / "search.csv"
    _ok(_invoke(_prune_args(env, out, "--speedup", "1.3", "--max-params", "900", "--agent", agent,
                            "--agent-option", f"log_csv={log}", "--finetune-epochs", "0")))
    r = _report(out)
    assert r["agent"] == agent and r["pruned"]["params"] <= 900
    assert r["certified"] == (r["certificate"]["upper_bound_ms"] <= r["budget"]["latency_ms"])
    assert log.is_file() and len(log.read_text().splitlines()) > 1
    assert f"--agent-option 'log_csv=\"{log}\"'" in r["reproduce"]


def test_params_budget_alone(env, tmp_path, uniform_run):
    _ok(uniform_run[0])
    limit = int(0.6 * _report(uniform_run[1])["dense"]["params"])
    out = tmp_path / "run"
    res = _invoke(_prune_args(env, out, "--max-params", limit, "--agent", "uniform"))
    _ok(res)
    r = _report(out)
    assert r["budget"]["latency_ms"] is None and r["budget"]["max_params"] == limit
    assert r["certified"] is False  # nothing to certify without a latency budget
    # ... which the user is told as such, not as a failed certificate, with the exact count check.
    params_check = f"params {r['pruned']['params']:,} <= {limit:,}"
    assert "certified: n/a (no latency budget)" in res.stdout and params_check in res.stdout
    md = (out / "report.md").read_text()
    assert "**Certified: n/a (no latency budget)**" in md and params_check in md and "NO" not in md
    assert r["certificate"]["upper_bound_ms"] > 0
    assert r["pruned"]["budget_values"]["params"] <= limit
    assert r["pruned"]["params"] <= limit
    assert not any(k.startswith("lut_latency") for k in r["pruned"]["budget_values"])


def test_params_budget_as_a_percentage_of_the_dense_model(env, tmp_path, uniform_run):
    _ok(uniform_run[0])
    dense_params = _report(uniform_run[1])["dense"]["params"]
    out = tmp_path / "run"
    _ok(_invoke(_prune_args(env, out, "--max-params", "60%", "--agent", "uniform", "--finetune-epochs", "0")))
    r = _report(out)
    assert r["budget"]["max_params"] == pytest.approx(0.6 * dense_params)
    assert r["budget"]["as_given"] == {"max_params": "60%"}
    assert r["pruned"]["params"] <= 0.6 * dense_params
    assert "--max-params 60%" in r["reproduce"] and "(60% of dense)" in (out / "report.md").read_text()
    for bad, why in (("150%", "must lie in (0%, 100%]"), ("0", "must be positive"), ("lots", "expects a number")):
        res = _invoke(_prune_args(env, tmp_path / "x", "--max-params", bad))
        assert res.exit_code == 2
        assert res.output.startswith("error: --max-params") and why in res.output and len(res.output.splitlines()) == 1


def test_params_budget_needs_no_lut_but_a_latency_budget_does(env, tmp_path):
    args = [a for a in _prune_args(env, tmp_path / "run", "--max-params", "60%", "--agent", "uniform",
                                   "--finetune-epochs", "0")]
    at = args.index("--lut")
    no_lut = args[:at] + args[at + 2:]
    _ok(_invoke(no_lut))
    r = _report(tmp_path / "run")
    assert r["pruned"]["predicted_latency_ms"] is None and r["speedup"]["predicted"] is None
    assert r["pruned"]["latency_ms"]["p50"] > 0 and "--lut" not in r["reproduce"]
    assert "| pruned |" in (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "speedup.png").is_file()
    res = _invoke(no_lut[:no_lut.index("--max-params")] + ["--speedup", "1.3", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and res.output.strip() == (
        "error: a latency budget (--latency-ms, --speedup) needs --lut, the table from `hwprune profile`")


def test_speedup_and_params_together(env, tmp_path, uniform_run):
    _ok(uniform_run[0])
    limit = int(0.5 * _report(uniform_run[1])["dense"]["params"])
    out = tmp_path / "run"
    _ok(_invoke(_prune_args(env, out, "--speedup", "1.3", "--max-params", limit, "--agent", "uniform")))
    r = _report(out)
    values = r["pruned"]["budget_values"]
    assert values["params"] <= limit and r["pruned"]["params"] <= limit
    lut = [v for k, v in values.items() if k.startswith("lut_latency")]
    assert len(lut) == 1 and lut[0] <= r["certificate"]["rounds"][-1]["lut_limit_ms"] * (1 + 1e-9)
    assert r["certified"] == (r["certificate"]["upper_bound_ms"] <= r["budget"]["latency_ms"])


def test_user_budget_function(env, tmp_path, uniform_run):
    _ok(uniform_run[0])
    dense_sum = sum(d for d, _ in _report(uniform_run[1])["pruned"]["channels"].values())
    limit = int(0.7 * dense_sum)
    out = tmp_path / "run"
    _ok(_invoke(_prune_args(env, out, "--budget", f"{env['budget_fns']}:channels={limit}", "--agent", "uniform")))
    r = _report(out)
    assert r["budget"]["user"] == [{"function": f"{env['budget_fns']}:channels", "limit": limit}]
    assert r["pruned"]["budget_values"]["user:channels"] <= limit
    assert sum(k for _, k in r["pruned"]["channels"].values()) <= limit
    assert f"`{env['budget_fns']}:channels` <= {limit}" in (out / "report.md").read_text()


# -- bad input ----------------------------------------------------------------------------------------

def test_out_folder_with_a_run_needs_overwrite(env, uniform_run, tmp_path):
    _ok(uniform_run[0])
    out = tmp_path / "run"
    out.mkdir()
    for f in ("report.json", "plan.json"):
        (out / f).write_bytes((uniform_run[1] / f).read_bytes())
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    _user_error(_invoke(_prune_args(env, out, "--speedup", "1.3", "--agent", "uniform")),
                str(out), "--overwrite", alone=True)
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    _ok(_invoke(_prune_args(env, out, "--speedup", "1.3", "--agent", "uniform", "--overwrite")))
    assert all((out / f).is_file() for f in RUN_OUTPUTS)
    assert _report(out)["agent"] == "uniform"


def test_overwrite_keeps_the_old_run_when_the_new_one_fails(env, uniform_run, tmp_path):
    _ok(uniform_run[0])
    out = tmp_path / "run"
    out.mkdir()
    for f in RUN_OUTPUTS:
        (out / f).write_bytes((uniform_run[1] / f).read_bytes())
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    for bad in (("--latency-ms", "1", "--speedup", "2"), ("--latency-ms", "1e-6")):
        _user_error(_invoke(_prune_args(env, out, "--agent", "uniform", "--overwrite", *bad)))
        assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before


@pytest.mark.parametrize("extra, fragments, alone", [
    (("--latency-ms", "1", "--speedup", "2"), ("--latency-ms", "--speedup"), True),
    ((), ("no budget",), True),
    (("--speedup", "0.5"), ("--speedup", "> 1"), True),
    (("--latency-ms", "1e-6"), ("unreachable", "measured"), False),
    (("--budget", "foo.py:channels=10"), ("foo.py",), False),
    # the built-in data is not resized: an input shape other than its images' is refused up front
    (("--max-params", "50%", "--input-shape", "1,9,9"), ("--input-shape says the model takes 1x9x9", "are 1x8x8"),
     False),
], ids=["latency-and-speedup", "no-budget", "speedup-below-1", "unreachable-latency", "missing-budget-file",
        "input-shape-not-the-data"])
def test_bad_budgets_are_one_line_errors(env, tmp_path, extra, fragments, alone):
    out = tmp_path / "run"
    line = _user_error(_invoke(_prune_args(env, out, "--agent", "uniform", *extra)), *fragments, alone=alone)
    assert not out.exists() or not os.listdir(out), line


def test_unreachable_latency_says_the_minimum(env, tmp_path):
    out = tmp_path / "run"
    line = _user_error(_invoke(_prune_args(env, out, "--agent", "uniform", "--latency-ms", "1e-6")), "unreachable")
    # "... the smallest architecture (...) measured X ms in this process": the device's word, not the LUT's
    measured = line.split("measured", 1)[1].split()
    assert float(measured[0]) > 1e-6 and measured[1:4] == ["ms", "in", "this"]


def test_missing_dataset_names_the_path_and_how_to_install(env, tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "no-such-data"
    args = _prune_args(env, out, "--speedup", "1.3", "--agent", "uniform")
    args[args.index("--data") + 1] = f"fashion-mnist:{missing}"
    _user_error(_invoke(args), str(missing), "install", alone=True)
    assert not out.exists()


def test_bad_budget_form_is_a_usage_error(env, tmp_path):
    out = tmp_path / "run"
    res = _invoke(_prune_args(env, out, "--budget", "foo"))
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "module:function=LIMIT" in res.output
    assert not out.exists()


@pytest.mark.parametrize("strategy", ["swd", "agp"])
def test_finetune_strategies_ship_the_searched_widths_and_a_plan_that_replays(env, tmp_path, strategy):
    out = tmp_path / strategy
    _ok(_invoke(_prune_args(env, out, "--max-params", "700", "--agent", "uniform", "--finetune", strategy, "--kd")))
    r = json.loads((out / "report.json").read_text())
    ft = r["finetune"]
    assert ft["strategy"] == strategy and ft["epochs"] == 1 and ft["seconds"] > 0 and ft["kd"]["weight"] == 0.9
    widths = {g: kept for g, (_, kept) in r["pruned"]["channels"].items()}
    assert ft["widths"] == {g: w for g, w in widths.items() if g in ft["widths"]}
    assert r["pruned"]["params"] <= 700
    # the plan is the strategy's own channel choice, and it rebuilds the shipped model
    pruned = apply_plan(ModelSpec(env["model"], (1, 8, 8)), str(out / "plan.json"), str(out / "pruned.pt"))
    x = np.random.default_rng(2).standard_normal((1, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = pruned(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, _run_onnx(out / "pruned.onnx", x), atol=1e-4, rtol=0)
    # the default strategy (agp) is left out of the command line, like every default
    assert ("--finetune " + strategy in r["reproduce"]) == (strategy != "agp") and "--kd" in r["reproduce"]


def test_unknown_finetune_strategy_is_one_line(env, tmp_path):
    res = _invoke(_prune_args(env, tmp_path / "x", "--max-params", "700", "--finetune", "magic"))
    assert res.exit_code == 2 and "magic" in res.output


def test_the_baseline_carries_a_drift_reference_that_regress_uses(uniform_run, env, tmp_path):
    _ok(uniform_run[0])
    out = uniform_run[1]
    base = json.loads((out / "baseline.json").read_text())
    assert len(base["timing"]["samples_ms"]) >= 1000 and len(base["reference"]["timing"]["samples_ms"]) >= 1000
    res = _invoke(["regress", "--device", env["device"], "--baseline", out / "baseline.json", "--tolerance", "50%",
                   "--max-seconds", "5", "--json", tmp_path / "r.json"])
    # The verdict is a real 5-s measurement on a shared machine, so a busy moment may even read
    # as a regression at 50%; what this test checks is that the reference was used, and that the
    # exit code is the verdict's.
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["verdict"] in ("pass", "improved", "regressed", "inconclusive"), res.output
    assert res.exit_code == r["exit_code"], res.output
    assert "reference-normalised" in json.dumps(r) and "warning" not in res.output




# -- the whole pipeline with a scripted device (hwprune.pruning.run's measure and wait seams) ------

def _run_scripted(env, tmp_path, value, **kw):
    """``hwprune prune --speedup 1.3`` on the tiny model, every measurement scripted by ``value``."""
    from hwprune.models.spec import ModelSpec as Spec
    from hwprune.pruning import PruneOptions, run
    from hwprune.task import Datasets, Task
    from profilers.config import load_device_config
    from scripted_device import Script

    script = Script(load_device_config(env["device"]), value, calibration=kw.pop("calibration", None))
    measure_processes = kw.pop("measure_processes", None)
    log = kw.pop("log", lambda m: None)
    # the stored calibration unless a test scripts the in-process one
    settings = dict(speedup=1.3, agent="uniform", finetune_epochs=0, max_evaluations=5, calibration_samples=0)
    settings.update(kw)
    opts = PruneOptions(model=env["model"], device=env["device"], lut=env["lut"], out=str(tmp_path / "run"),
                        data=env["data"], weights=env["weights"], show_progress=False, **settings)
    spec = Spec(env["model"], (1, 8, 8), 10, env["weights"])
    res = run(opts, spec, Task(Datasets.load(env["data"])), measure=script, wait=script.wait, log=log,
              measure_processes=measure_processes)
    return res, script


def test_a_budget_the_dense_model_already_meets_is_said(env, tmp_path):
    lines: list[str] = []
    res, _ = _run_scripted(env, tmp_path, lambda kind, call, key, budget: (0.5, 50), speedup=None,
                           latency_ms=5.0, log=lines.append)  # the scripted dense model runs at 1 ms
    assert res.certified
    assert any("the dense model already measures 1 ms" in m and "within the latency budget 5 ms" in m for m in lines)
    # the measurement after recovery, which certifies, is in the log too
    assert any(m.startswith("round 1: after recovery measured p50 0.5000 ms (95% upper bound") for m in lines), lines


def test_a_final_measurement_over_budget_sends_the_search_round_again(env, tmp_path):
    # every round fits; the first final measurement comes out 50% over, later ones fit
    def value(kind, call, key, budget):
        return (1.5 * budget if kind == "final" and call == 1 else 0.97 * budget), 50

    res, script = _run_scripted(env, tmp_path, value)
    rounds = res.certificate.rounds
    assert script.calls[:3] == ["round", "final", "round"] and res.certified
    first = rounds[0]
    assert first.final.upper_bound_ms > first.final.budget_ms and not first.final.certified
    # the next round searched below the failed architecture's prediction
    assert rounds[1].lut_limit_ms < first.predicted_ms
    # report.md tells the rounds apart: the failed final measurement is there, in words
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Certification rounds" in md and "after recovery: upper bound" in md and "round 2: LUT limit" in md
    assert json.loads((tmp_path / "run" / "report.json").read_text())["certificate"] == res.certificate.to_dict()


def test_a_round_keeps_the_best_scoring_candidate_that_fits_end_to_end(env, tmp_path):
    # the top one well over (no close call), the others well under
    res, script = _run_scripted(env, tmp_path, lambda kind, call, key, budget: (
        (1.2 if key == "pruned" and kind == "round" else 0.97) * budget, 60), agent="random", max_evaluations=8)
    r = res.report
    first = r["certificate"]["rounds"][0]
    assert len(first["candidates"]) >= 2 and first["candidate"] == 2 and not first["remeasured"]
    assert first["widths"] == first["candidates"][1]["widths"]
    assert first["proxy_accuracy"] == first["candidates"][1]["proxy_accuracy"] <= first["candidates"][0]["proxy_accuracy"]
    assert {g: kept for g, (_, kept) in r["pruned"]["channels"].items()} == first["widths"] == res.plan.widths
    assert "final_upper_bound_ms" in first and script.calls == ["round", "final"]  # accepted in round 1
    # baseline.json keeps the samples taken beside the reference, the report the verdict's
    assert len(json.loads((tmp_path / "run" / "baseline.json").read_text())["timing"]["samples_ms"]) == 60


def _second_round_scores(monkeypatch, shift):
    """Every later round's search scores ``shift`` above what it found (its answer and its history)."""
    import dataclasses

    from hwprune.search import SearchSetup

    real = SearchSetup.search

    def shifted(self, rnd, *args, **kwargs):
        result = real(self, rnd, *args, **kwargs)
        if not rnd:
            return result
        return dataclasses.replace(result, score=result.score + shift, history=[
            {**e, "score": e["score"] + shift} if "score" in e else e for e in result.history])

    monkeypatch.setattr(SearchSetup, "search", shifted)


@pytest.mark.parametrize("shift", [1.0, -1.0])
def test_a_round_with_budget_to_spare_searches_again_looser_and_keeps_the_best_certified(env, tmp_path, monkeypatch,
                                                                                          shift):
    # round 1 certified at 80% of the budget; round 2 (looser) fits at 97% when measured. Round 2 is
    # measured only when one of its candidates scores above round 1's certified one: the run keeps
    # the certified architecture with the best proxy score, so a round that cannot beat it would
    # only cost a measurement and a recovery.
    _second_round_scores(monkeypatch, shift)
    res, script = _run_scripted(env, tmp_path, lambda kind, call, key, budget: (
        (0.8 if call == 1 else 0.97) * budget, 50), agent="random", max_evaluations=8)
    rounds = res.certificate.rounds
    r = res.report["certificate"]
    assert res.certified and r["rounds"][0]["final_utilisation"] == pytest.approx(0.8)
    if shift > 0:
        assert script.calls[:4] == ["round", "final", "round", "final"]
        assert rounds[1].lut_limit_ms > rounds[0].predicted_ms  # looser, from the measured 80%
        assert res.plan.widths == rounds[1].widths and res.certificate.utilisation == pytest.approx(0.97)
    else:
        assert script.calls == ["round", "final"] and len(rounds) == 1
        assert res.plan.widths == rounds[0].widths and res.certificate.utilisation == pytest.approx(0.8)
        assert "80% of it" in (tmp_path / "run" / "report.md").read_text()


def test_a_looser_round_that_does_not_fit_keeps_the_certified_one(env, tmp_path, monkeypatch):
    _second_round_scores(monkeypatch, 1.0)  # a round 2 worth measuring
    res, script = _run_scripted(env, tmp_path, lambda kind, call, key, budget: (
        (0.8 if call == 1 else 1.3) * budget, 50), agent="random", max_evaluations=8)
    rounds = res.certificate.rounds
    assert script.calls == ["round", "final", "round"] and res.certified and len(rounds) == 2
    assert res.plan.widths == rounds[0].widths and res.certificate.utilisation == pytest.approx(0.8)


def test_a_certificate_needs_every_fresh_process(env, tmp_path):
    from scripted_device import constant

    asked = []

    def across(items, cfg, n):
        # the first final pair: the second of three processes measures it over budget (1.3 = speed-up)
        asked.append((n, [k for k, _ in items]))
        uses = [0.9, 1.2, 0.9] if len(asked) == 1 else [0.96] * n
        return [{"dense": constant(cfg, 1.0, 50), "pruned": constant(cfg, u / 1.3, 50)} for u in uses]

    res, script = _run_scripted(env, tmp_path, lambda kind, call, key, budget: (0.97 * budget, 50),
                                processes=3, measure_processes=across)
    rounds = res.certificate.rounds
    assert asked == [(3, ["dense", "pruned"])] * 2 and len(rounds) == 2 and res.certified
    assert not rounds[0].final.certified and not rounds[0].final.across.certified
    a = res.report["certificate"]["across_processes"]
    assert a["n"] == 3 and a["certified"] and a["utilisation"]["max"] == pytest.approx(0.96)
    assert "in 3 fresh processes 96%–96% of the budget" in (tmp_path / "run" / "report.md").read_text()


def test_prune_calibrates_the_lut_in_its_own_process(env, tmp_path):
    # the floor at 0.3 ms, the other calibration sub-networks 0.4 .. 0.8 ms, beside the dense 1 ms
    def calibration(key):
        return 0.3 if key.endswith("floor") else 0.3 + 0.1 * int(key.rsplit(":", 1)[1])

    res, script = _run_scripted(env, tmp_path, lambda kind, call, key, budget: (0.97 * budget, 50),
                                calibration=calibration, calibration_samples=6)
    cal = res.report["calibration"]
    assert cal["source"] == "in-process" and cal["n"] == 7 and cal["floor_measured_ms"] == pytest.approx(0.3)
    assert cal["dense_measured_ms"] == pytest.approx(1.0)
    r = res.certificate.rounds[0]
    raw = res.report["calibration"]["points"][0]["raw_ms"]
    assert raw > 0 and r.predicted_ms is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["calibration_samples"] == 6


def test_a_floor_far_over_the_budget_is_refused_without_a_second_measurement(env, tmp_path):
    from hwprune.errors import HwpruneError

    # dense 1 ms at --speedup 4: budget 0.25 ms, the floor 0.9 ms is 3.6x it; no pause and retake
    with pytest.raises(HwpruneError, match=r"unreachable .*measured 0\.9 ms in this process, 3\.6x the budget"):
        _run_scripted(env, tmp_path, lambda kind, call, key, budget: (0.97 * budget, 50),
                      calibration=lambda key: 0.9, calibration_samples=3, speedup=4.0)
    assert not (tmp_path / "run").exists()


def test_a_budget_under_the_measured_floor_is_refused_with_that_measurement(env, tmp_path):
    from hwprune.errors import HwpruneError

    with pytest.raises(HwpruneError, match=r"unreachable .*smallest architecture .*measured 0\.9 ms in this process "
                                           r"and 0\.9 ms again, beside the dense model at 1 ms: 0\.90x the dense "
                                           r"model where the budget needs 0\.77x$"):
        _run_scripted(env, tmp_path, lambda kind, call, key, budget: (0.97 * budget, 50),
                      calibration=lambda key: 0.9, calibration_samples=3)
    assert not (tmp_path / "run").exists()


def test_a_floor_over_budget_once_is_measured_again_before_refusing(env, tmp_path):
    floors = iter([0.9, 0.5])  # busy at the start, quiet after the pause (the budget is 1 / 1.3 ms)

    def calibration(key):
        return next(floors) if key.endswith("floor") else 0.8

    res, script = _run_scripted(env, tmp_path, lambda kind, call, key, budget: (0.97 * budget, 50),
                                calibration=calibration, calibration_samples=3)
    assert res.certified and res.report["calibration"]["floor_measured_ms"] == pytest.approx(0.5)
    assert script.calls[0][0] == "wait"  # a pause before the second measurement


# -- data-parallel recovery under torchrun --------------------------------------------------------

def _torchrun(args, timeout=300):
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "hwprune.cli", *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_torchrun_two_ranks_recover_together_and_rank0_reports(env, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(_prune_args(env, out, "--max-params", "700", "--agent", "uniform", "--finetune", "standard"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = _report(out)
    assert r["ranks"] == 2 and r["finetune"]["ranks"] == 2 and r["finetune"]["history"]
    assert r["pruned"]["params"] <= 700
    # one report on stdout: rank 0's (the other rank prints nothing)
    assert proc.stdout.count("certified:") == 1 and proc.stdout.count("run folder:") == 1
    assert set(RUN_OUTPUTS) <= {p.name for p in out.iterdir()}


def test_torchrun_ranks_stop_together_when_rank0_fails(env, tmp_path):
    # a LUT profiled for another model: rank 0 refuses it after the other rank has started waiting
    other_lut = tmp_path / "other.parquet"
    profile(ModelSpec(env["other"], (1, 8, 8)), env["device"], str(other_lut), calibration_samples=0,
            show_progress=False, log=lambda m: None)
    args = _prune_args(env, tmp_path / "run", "--speedup", "1.3", "--agent", "uniform")
    args[args.index("--lut") + 1] = str(other_lut)
    proc = _torchrun(args, timeout=240)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any(e.startswith("error: rank 0 stopped: ") and "has no profile" in e for e in errors), proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def test_a_prune_killed_mid_run_leaves_no_run_folder_and_its_rerun_writes_one(env, tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("hwprune")
    args = [str(a) for a in _prune_args(env, out, "--max-params", "700", "--agent", "uniform")]
    args[args.index("--finetune-epochs") + 1] = "30"  # a recovery long enough to be killed in
    for moment in ("measuring the dense model", "recovery:"):
        proc = subprocess.Popen([str(exe), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            for line in proc.stderr:
                if moment in line:
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, moment
        assert not out.exists(), moment  # all or nothing: nothing yet
    args[args.index("--finetune-epochs") + 1] = "1"
    _ok(_invoke(args))
    assert set(RUN_OUTPUTS) <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


GROUPED_MODEL = """\
import torch
import torch.nn as nn


class Net(nn.Module):
    # an inverted residual, a two-branch concatenation and a grouped (not depthwise) conv
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(64, 32, 1), nn.BatchNorm2d(32))
        self.left = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=2), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(self.grouped(x))


def net(in_channels=1, num_classes=10):
    return Net(in_channels, num_classes)
"""


def test_a_grouped_convolution_prunes_in_multiples_of_its_groups_and_a_concatenation_into_it_stays_dense(
        env, tmp_path):
    # the grouped conv's own output is cut in multiples of its 2 groups; its input comes from a
    # concatenation, whose blocks do not line up with the conv's, so the two producers stay
    # dense, listed as such; the model profiles, prunes and certifies instead of failing on the
    # first width probe
    (tmp_path / "grouped.py").write_text(GROUPED_MODEL)
    model, lut = f"{tmp_path / 'grouped.py'}:net", tmp_path / "g.parquet"
    prof = _invoke(["profile", "-d", env["device"], "-m", model, "--input-shape", SHAPE, "--lut", str(lut),
                    "--calibration-samples", "0", "-q"])
    _ok(prof)
    assert ("is left at full width: grouped.0 is a grouped convolution (groups=2) reached through a "
            "concatenation or split") in prof.stderr
    out = tmp_path / "run"
    res = _invoke(["prune", "-d", env["device"], "-m", model, "--data", env["data"], "--lut", str(lut),
                   "--out", str(out), "--input-shape", SHAPE, "--max-params", "85%", "--agent", "uniform",
                   "--finetune-epochs", "0", "--max-evaluations", "4", "-q"])
    _ok(res)
    r = _report(out)
    assert {u["name"] for u in r["unprunable_groups"]} == {"left.0", "right.0"}
    # the inverted residual and the grouped conv's output still prune
    assert set(r["pruned"]["channels"]) == {"dw.0", "project.0", "grouped.0"}
    dense_w, pruned_w = r["pruned"]["channels"]["grouped.0"]
    assert dense_w == 64 and pruned_w % 2 == 0
    assert r["width_grid"]["group_steps"] == {"grouped.0": 2} and "grouped.0: 2" in r["width_grid"]["rule"]
    assert r["pruned"]["params"] < r["dense"]["params"]
    assert "Left at full width" in (out / "report.md").read_text()
    sess = ort.InferenceSession(str(out / "pruned.onnx"))  # the pruned ONNX runs
    assert sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)


def _fake_round(n, upper_ms, certified=None):
    from types import SimpleNamespace as NS

    final = None if certified is None else NS(certified=certified, upper_bound_ms=upper_ms, budget_ms=1.0)
    return NS(round=n, upper_bound_ms=upper_ms, budget_ms=1.0, final=final)


@pytest.mark.parametrize("second, said", [
    ("over after recovery", "round 2: after recovery its upper bound 1.0500 ms exceeds the budget 1.0000 ms; keeping"),
    ("no room", "round 2: the looser limit's best candidates have no room under the budget as measured"),
])
def test_a_looser_round_that_is_not_kept_says_why(monkeypatch, second, said):
    """Round 1 certifies with budget to spare; the looser round 2 is not kept, and the log says why."""
    from types import SimpleNamespace as NS

    import hwprune.pruning as pruning

    rounds = iter([_fake_round(1, 0.8), _fake_round(2, 1.05 if second == "no room" else 0.97)])
    outcomes = []

    def measured_round(job, s, cert, rnd, limit, tried, beat=None):
        r = next(rounds)
        return r, NS(accepted=not (rnd == 1 and second == "no room"), index=0), NS(score=0.3 + rnd), [None]

    def recover(job, s, cert, r, result, model, rounds_so_far):
        r.final = NS(certified=r.round == 1, upper_bound_ms=0.8 if r.round == 1 else 1.05, budget_ms=1.0)
        outcomes.append(NS(result=result, round=r.round))
        return outcomes[-1]

    monkeypatch.setattr(pruning, "_measured_round", measured_round)
    monkeypatch.setattr(pruning, "_recover_and_measure", recover)
    monkeypatch.setattr(pruning, "next_lut_limit", lambda *a: 1.2)
    monkeypatch.setattr(pruning, "measured_points", lambda rounds: [])
    log: list[str] = []
    job = NS(opts=NS(certify_rounds=2, speedup=None, latency_ms=1.0), log=log.append)
    s = NS(floor_ms=0.1, predict=lambda widths: 2.0)
    cert = NS(budget=NS(given=True), cfg=NS(rel_ci=0.02))
    kept = pruning._search_and_certify(job, s, cert)
    assert kept.round == 1
    assert any(line.startswith(said) for line in log), log


def test_a_resumed_rl_search_says_so(env, tmp_path):
    # rerun with the same checkpoint: 0 proxy evaluations and no word of why (nu12)
    ckpt = tmp_path / "rl.ckpt"
    # a count budget: a latency limit moves with each process's calibration, and a checkpoint of
    # another limit is (rightly) not resumed, which the log says too
    args = ("--max-params", "900", "--agent", "rl", "--agent-option", f"checkpoint={ckpt}", "--finetune-epochs", "0")
    first = _invoke(_prune_args(env, tmp_path / "a", *args))
    _ok(first)
    assert ckpt.is_file() and "resumed from the checkpoint" not in first.output
    again = _invoke(_prune_args(env, tmp_path / "b", *args))
    _ok(again)
    assert f"search round 1: resumed from the checkpoint {ckpt}" in again.output, again.output
