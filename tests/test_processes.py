"""Measurements in fresh processes (``--processes N``): each process times the models interleaved, one
process after another, and the spread is reported; a certificate needs every process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwprune.cli import cli
from hwprune.errors import HwpruneError
from hwprune.export import export_onnx
from hwprune.processes import Spread, measure_in_processes, spread
from profilers.config import load_device_config

DEVICE = """\
name: processes-cpu
backend: onnxruntime
threads: 1
warmup: 2
min_repeats: 10
max_seconds: 0.05
statistic: p50
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("processes")
    (d / "device.yaml").write_text(DEVICE)
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    big = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3))
    x = torch.zeros(1, 1, 16, 16)
    (d / "small.onnx").write_bytes(export_onnx(small, x))
    (d / "big.onnx").write_bytes(export_onnx(big, x))
    return d


def test_each_process_times_every_model_interleaved(files):
    cfg = load_device_config(str(files / "device.yaml"))
    done = []
    runs = measure_in_processes([("a small/model", (files / "small.onnx").read_bytes()),
                                 ("big", (files / "big.onnx").read_bytes())], cfg, 2, progress=done.append)
    assert len(runs) == 2 and done == [1, 2]
    for r in runs:
        assert set(r) == {"a small/model", "big"}  # keys of any spelling come back as given
        assert r["big"]["n"] >= 10 and len(r["big"]["samples_ms"]) == r["big"]["n"]
    s = spread(runs, "big", "p50")
    assert len(s.values_ms) == 2 and min(s.values_ms) <= s.median_ms <= max(s.values_ms)
    assert s.to_dict()["spread_pct"] == pytest.approx((max(s.values_ms) - min(s.values_ms)) / s.median_ms * 100)


def test_hwprune_time_across_processes(files, tmp_path):
    out = tmp_path / "t.json"
    res = CliRunner().invoke(cli, ["time", str(files / "big.onnx"), "-d", str(files / "device.yaml"),
                                   "--processes", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 processes: p50" in res.output and "spread (max - min) / median" in res.output
    # the pooled interval is not passed off as the uncertainty across processes
    assert "within-process noise only: 3 processes pooled" in res.output and "75% CI of the median process" in res.output
    r = json.loads(out.read_text())
    a = r["across_processes"]
    assert r["processes"] == 3 and len(a["values_ms"]) == 3 and len(a["per_process"]) == 3
    # the pooled timing holds every process's samples
    assert r["timing"]["n"] == sum(p["n"] for p in a["per_process"])
    # what was timed is said as a single-process run says it (it named session.run for every backend)
    from profilers.onnxrt import OrtRunner

    assert r["timed_scope"] == OrtRunner.timed_scope


def test_the_median_process_interval_is_order_statistics_with_their_exact_coverage():
    five = Spread("m", "p50", [0.5, 0.1, 0.3, 0.2, 0.4])
    assert five.median_interval() == (0.1, 0.5, pytest.approx(0.9375))  # too few for 95%: the range, said so
    nine = Spread("m", "p50", [float(v) for v in range(9)])
    assert nine.median_interval() == (1.0, 7.0, pytest.approx(1 - 2 * 10 / 512))
    d = nine.to_dict()
    assert (d["median_ci_low_ms"], d["median_ci_high_ms"]) == (1.0, 7.0) and d["median_ci_confidence"] > 0.95


def test_a_bad_process_count_is_refused(files):
    cfg = load_device_config(str(files / "device.yaml"))
    with pytest.raises(HwpruneError, match="--processes must be an integer of at least 1"):
        measure_in_processes([("m", b"")], cfg, 0)


# -- regress --processes N -----------------------------------------------------------------------

def test_regress_combines_the_verdicts_of_its_processes():
    from hwprune.regress.processes import combined_verdict

    assert combined_verdict(["pass", "pass"]) == "pass"
    assert combined_verdict(["regressed"] * 3) == "regressed"
    assert combined_verdict(["pass", "improved"]) == "pass"
    assert combined_verdict(["pass", "regressed", "pass"]) == "inconclusive"
    assert combined_verdict(["improved", "inconclusive"]) == "inconclusive"


def test_regress_in_processes_runs_one_whole_check_per_process(tmp_path):
    import subprocess

    from hwprune.regress import RegressOptions
    from hwprune.regress.processes import regress_in_processes

    asked = []

    def fake_run(argv):  # each "process" writes the JSON a real regress would, with its verdict
        asked.append(argv)
        verdict = ["pass", "regressed", "pass"][len(asked) - 1]
        path = argv[argv.index("--json") + 1]
        Path(path).write_text(json.dumps({"verdict": verdict, "comparisons": [{"ratio": 1.0}], "warnings": [],
                                          "kind": "model"}))
        return subprocess.CompletedProcess(argv, 0, "", "")

    opts = RegressOptions(device="x86-cpu-ort", model="m.onnx", against="o.onnx", processes=3, tolerance="5%")
    r = regress_in_processes(opts, run=fake_run)
    assert len(asked) == 3 and all("--processes" not in a and a[0] == "regress" for a in asked)
    assert "--against" in asked[0] and "--confidence" in asked[0]
    assert r["verdict"] == "inconclusive" and r["exit_code"] == 3
    assert [p["verdict"] for p in r["processes"]] == ["pass", "regressed", "pass"]
    assert "disagree (pass, regressed, pass)" in r["warnings"][-1]


def test_regress_processes_for_real_and_its_bad_input(files, tmp_path):
    out = tmp_path / "r.json"
    dev, big, small = str(files / "device.yaml"), str(files / "big.onnx"), str(files / "small.onnx")
    res = CliRunner().invoke(cli, ["regress", "-d", dev, "--model", big, "--against", big, "--processes", "2",
                                   "--tolerance", "50%", "--max-seconds", "2", "--json", str(out)])
    assert res.exit_code in (0, 3), res.output  # the same model twice: never regressed at 50%
    r = json.loads(out.read_text())
    assert len(r["processes"]) == 2 and "2 fresh processes" in res.output
    bad = CliRunner().invoke(cli, ["regress", "-d", dev, "--model", big, "--write-baseline", str(tmp_path / "b.json"),
                                   "--processes", "2"])
    assert bad.exit_code == 2 and "--processes applies to a model check" in bad.output
    assert not (tmp_path / "b.json").exists()
