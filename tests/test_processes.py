"""Measurements in fresh processes (``--processes N``): each process times the models interleaved, one
process after another, and the spread is reported; a certificate needs every process."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwprune.cli import cli
from hwprune.errors import HwpruneError
from hwprune.export import export_onnx
from hwprune.processes import measure_in_processes, spread
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
    r = json.loads(out.read_text())
    a = r["across_processes"]
    assert r["processes"] == 3 and len(a["values_ms"]) == 3 and len(a["per_process"]) == 3
    # the pooled timing holds every process's samples
    assert r["timing"]["n"] == sum(p["n"] for p in a["per_process"])


def test_a_bad_process_count_is_refused(files):
    cfg = load_device_config(str(files / "device.yaml"))
    with pytest.raises(HwpruneError, match="--processes must be an integer of at least 1"):
        measure_in_processes([("m", b"")], cfg, 0)
