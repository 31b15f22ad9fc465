"""``channel_multiple: auto``: staircase widths, the step rule, the space it gives, and a real profile with it."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from hwprune.agents.base import Problem, SearchSpace
from hwprune.agents.bo import Projector
from hwprune.cli import cli
from hwprune.errors import HwpruneError
from hwprune.lut import LatencyLUT, model_key
from hwprune.profiling import ModelSpec, profile
from hwprune.widthsteps import (MAX_STEPS, allowed_widths, report_section, search_space, staircase_widths,
                                staircases_of)
from profilers.config import ConfigError, load_device_config

torch.set_num_threads(1)


def test_staircase_widths_are_every_width_to_16_then_eight_a_doubling():
    assert staircase_widths(8) == list(range(1, 9))
    w64 = staircase_widths(64)
    assert w64[:16] == list(range(1, 17))
    assert w64[16:] == [18, 20, 22, 24, 26, 28, 30, 32, 36, 40, 44, 48, 52, 56, 60, 64]
    w = staircase_widths(1000)
    assert w[-1] == 1000 and w == sorted(set(w)) and len(w) < 16 + 8 * 6 + 2


def test_a_flat_staircase_allows_only_the_widest_width():
    allowed, step = allowed_widths([1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0], [0.01] * 4)
    assert allowed == [4] and step == 0.0


def test_a_width_as_costly_as_a_wider_one_is_never_allowed_and_a_cheaper_one_is_whatever_its_multiple():
    # 16 is cheaper than 9..15 (a block boundary); 3 is cheaper than 4..8 though it is no multiple of 8
    widths = list(range(1, 17))
    ms = [1.0, 1.0, 1.0] + [2.0] * 5 + [3.0] * 7 + [2.5]
    allowed, _ = allowed_widths(widths, ms, [0.0] * 16)
    assert allowed == [3, 8, 16]


def test_a_saving_within_the_noise_is_not_a_step():
    allowed, _ = allowed_widths([1, 2], [0.95, 1.0], [0.03, 0.03])
    assert allowed == [2]
    allowed, _ = allowed_widths([1, 2], [0.90, 1.0], [0.03, 0.03])
    assert allowed == [1, 2]


def test_a_smooth_staircase_is_thinned_to_max_steps_and_keeps_the_cheapest_width():
    widths = list(range(1, 65))
    ms = [0.1 + 0.01 * w for w in widths]
    allowed, step = allowed_widths(widths, ms, [0.0] * 64)
    assert step > 0 and len(allowed) <= MAX_STEPS + 1
    assert allowed[0] == 1 and allowed[-1] == 64


def test_a_step_only_one_process_saw_is_not_allowed():
    widths = [1, 2, 3, 4]
    first = [0.5, 0.7, 0.9, 1.0]
    assert allowed_widths(widths, first, [0.0] * 4)[0] == [1, 2, 3, 4]
    # the other process sees no saving at 1: width 1 costs more there than 2 does
    allowed, _ = allowed_widths(widths, first, [0.0] * 4, others=[([0.9, 0.7, 0.9, 1.0], [0.0] * 4)])
    assert allowed == [2, 3, 4]


def test_one_process_odd_reading_does_not_raise_the_floor():
    widths = [1, 2, 3, 4]
    first = [0.4, 0.7, 0.9, 1.0]
    odd = [0.45, 0.75, 0.2, 1.0]   # one suspect reading at width 3 in the other process
    allowed, _ = allowed_widths(widths, first, [0.0] * 4, others=[(odd, [0.0] * 4)])
    assert allowed[0] == 1 and 4 in allowed   # the mean's cheapest width is the floor


def test_a_process_at_another_speed_level_keeps_the_steps_of_the_same_shape():
    from hwprune.candidates import Candidate
    from hwprune.widthsteps import StairPoint, measure_staircases

    widths = [1, 2, 3, 4]
    shape = [0.5, 0.5, 0.9, 1.0]
    points = [StairPoint(0, w, Candidate(0, (w,), f"s{w}")) for w in widths]
    first = ({f"s{w}": m for w, m in zip(widths, shape)}, {f"s{w}": 0.005 for w in widths})
    slower = ({f"s{w}": 1.6 * m for w, m in zip(widths, shape)}, {f"s{w}": 0.008 for w in widths})
    alone = measure_staircases(points, ["g"], [4], *first)[0]
    both = measure_staircases(points, ["g"], [4], *first, others=[slower])[0]
    assert alone.processes == 1 and both.processes == 2
    assert both.allowed == alone.allowed == [2, 3, 4]
    assert both.process_ms[1] == pytest.approx(shape)  # put on the first process's level
    assert both.ms == pytest.approx(shape)


def test_a_measuring_process_that_fails_is_one_line(tmp_path):
    from hwprune.measure import _run_bundle_process

    with pytest.raises(HwpruneError, match="measuring process failed.*manifest"):
        _run_bundle_process(tmp_path, tmp_path / "results.jsonl", lambda rec: None)


def test_allowed_widths_refuses_mismatched_inputs():
    with pytest.raises(HwpruneError, match="one latency"):
        allowed_widths([1, 2], [1.0], [0.0, 0.0])


def test_a_space_with_allowed_widths_snaps_to_them():
    space = SearchSpace(["a", "b"], [16, 8], 1, [[3, 8], [8]])
    assert space.choices(0) == [3, 8, 16] and space.choices(1) == [8]
    assert [space.snap(0, c) for c in (0, 5.4, 5.5, 6, 12, 12.1, 20)] == [3, 3, 8, 8, 16, 16, 16]
    assert space.next_wider(0, 3) == 8 and space.next_wider(0, 16) is None
    assert space.smallest_widths() == {"a": 3, "b": 8}
    assert space.fingerprint()["allowed"] == [[3, 8, 16], [8]]
    with pytest.raises(HwpruneError, match="allowed widths must lie"):
        SearchSpace(["a"], [16], 1, [[0, 8]])
    with pytest.raises(HwpruneError, match="2 groups"):
        SearchSpace(["a"], [16], 1, [[8], [8]])


def test_bo_projection_snaps_to_allowed_widths_and_stops_at_adjacent_steps():
    space = SearchSpace(["a"], [16], 1, [[3, 8]])
    problem = Problem(space, lambda w: 0.0, [])
    proj = Projector(problem)
    assert proj.widths(torch.tensor([0.3]).numpy()) == {"a": 3}
    assert proj._adjacent({"a": 3}, {"a": 8}) and not proj._adjacent({"a": 3}, {"a": 16})


def test_channel_multiple_is_auto_by_default_and_checked(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("name: d\nbackend: onnxruntime\n")
    cfg = load_device_config(str(p))
    assert cfg.auto_widths and cfg.width_multiple == 1
    p.write_text("name: d\nbackend: onnxruntime\nchannel_multiple: 8\n")
    assert load_device_config(str(p)).width_multiple == 8
    for bad in ("fine", "0"):
        p.write_text(f"name: d\nbackend: onnxruntime\nchannel_multiple: {bad}\n")
        with pytest.raises(ConfigError, match="channel_multiple"):
            load_device_config(str(p))


DEVICE_YAML = """\
name: test-auto
backend: onnxruntime
threads: 1
warmup: 1
min_repeats: 5
max_seconds: 0.01
statistic: p50
"""

TINY = """\
import torch.nn as nn


def net():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))
"""


@pytest.fixture(scope="module")
def auto_lut(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    (root / "device.yaml").write_text(DEVICE_YAML)
    (root / "tiny.py").write_text(TINY)
    lut = root / "lut.parquet"
    spec = ModelSpec(f"{root / 'tiny.py'}:net", (1, 8, 8))
    said: list[str] = []
    r = profile(spec, str(root / "device.yaml"), str(lut), calibration_samples=3, show_progress=False,
                log=said.append)
    return {"root": root, "lut": lut, "spec": spec, "result": r, "device": str(root / "device.yaml"), "said": said}


def test_an_auto_profile_keeps_each_groups_staircase_and_profiles_its_tables_on_the_allowed_widths(auto_lut):
    table = LatencyLUT.load(auto_lut["lut"])
    m = table.model(model_key(auto_lut["spec"].name, (1, 1, 8, 8)))
    stairs = staircases_of(m)
    assert [s.group for s in stairs] == [g["name"] for g in m["groups"]]
    for s, g in zip(stairs, m["groups"]):
        assert s.widths == staircase_widths(g["channels"]) and len(s.ms) == len(s.widths)
        assert g["allowed"] == s.allowed and s.allowed[-1] == g["channels"]
        assert set(s.allowed) <= set(g["grid"])  # every allowed width is a measured table point
    pred = table.predictor(model_key(auto_lut["spec"].name, (1, 1, 8, 8)))
    assert pred.allowed == [s.allowed for s in stairs]
    assert pred.predict([a[0] for a in pred.allowed]) > 0
    cfg = load_device_config(auto_lut["device"])
    space = search_space([type("G", (), {"name": g["name"], "channels": g["channels"]}) for g in m["groups"]],
                         cfg, pred)
    assert space.allowed == pred.allowed
    section = report_section(stairs, cfg.channel_multiple)
    assert section["channel_multiple"] == "auto" and len(section["groups"]) == len(stairs)


def test_the_staircases_are_measured_in_this_process_and_a_fresh_one(auto_lut):
    m = LatencyLUT.load(auto_lut["lut"]).model(model_key(auto_lut["spec"].name, (1, 1, 8, 8)))
    for s in staircases_of(m):
        assert s.processes == 2 and all(len(p) == len(s.widths) for p in s.process_ms)
    assert any("all of them in 1 fresh one(s)" in line for line in auto_lut["said"])
    assert auto_lut["result"].other_process_timings > 0   # said in profile's summary, not lost


def test_a_second_auto_profile_measures_nothing(auto_lut):
    said: list[str] = []
    r = profile(auto_lut["spec"], auto_lut["device"], str(auto_lut["lut"]), calibration_samples=3,
                show_progress=False, log=said.append)
    assert r.signatures_measured == 0
    # the width steps are kept, not re-measured: a step that came and went would re-grid every table
    assert any(line.startswith("width steps: as measured before") for line in said)


def test_a_one_process_staircase_is_measured_again_when_more_processes_are_asked_for(auto_lut, tmp_path):
    lut = tmp_path / "one.parquet"
    profile(auto_lut["spec"], auto_lut["device"], str(lut), calibration_samples=0, show_progress=False,
            staircase_processes=1, log=lambda m: None)
    key = model_key(auto_lut["spec"].name, (1, 1, 8, 8))
    assert {s.processes for s in staircases_of(LatencyLUT.load(lut).model(key))} == {1}
    said: list[str] = []
    profile(auto_lut["spec"], auto_lut["device"], str(lut), calibration_samples=0, show_progress=False,
            log=said.append)
    assert any("all of them in 1 fresh one(s)" in line for line in said)
    assert any("measured in 1 process(es); measuring them in 2" in line for line in said)  # the grid may change
    assert {s.processes for s in staircases_of(LatencyLUT.load(lut).model(key))} == {2}


def test_staircases_of_another_statistic_are_measured_again(auto_lut, tmp_path):
    import shutil

    lut = tmp_path / "p90.parquet"
    shutil.copy(auto_lut["lut"], lut)
    p90 = tmp_path / "p90.yaml"   # the same device, its budget now judged on p90
    p90.write_text(DEVICE_YAML.replace("statistic: p50", "statistic: p90"))
    said: list[str] = []
    profile(auto_lut["spec"], str(p90), str(lut), calibration_samples=0, show_progress=False, log=said.append)
    assert any("measured on p50 and test-auto now uses p90: measuring them again" in line for line in said)
    assert not any(line.startswith("width steps: as measured before") for line in said)
    m = LatencyLUT.load(lut).model(model_key(auto_lut["spec"].name, (1, 1, 8, 8)))
    assert m["staircase_statistic"] == "p90"
    said.clear()
    profile(auto_lut["spec"], str(p90), str(lut), calibration_samples=0, show_progress=False, log=said.append)
    assert any(line.startswith("width steps: as measured before") for line in said)


def test_a_profile_interrupted_after_its_staircases_keeps_them(auto_lut, tmp_path, monkeypatch):
    import hwprune.profiling as profiling

    def interrupted(*args, **kw):   # the calibration, after the staircases and the tables
        raise KeyboardInterrupt

    lut = tmp_path / "cut.parquet"
    monkeypatch.setattr(profiling, "_calibrate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        profile(auto_lut["spec"], auto_lut["device"], str(lut), calibration_samples=3, show_progress=False,
                log=lambda m: None)
    monkeypatch.undo()
    said: list[str] = []
    profile(auto_lut["spec"], auto_lut["device"], str(lut), calibration_samples=3, show_progress=False,
            log=said.append)
    assert any(line.startswith("width steps: as measured before") for line in said)


def test_a_coarser_grid_leaves_the_search_only_widths_its_tables_were_profiled_at(auto_lut, tmp_path):
    lut = tmp_path / "coarse.parquet"
    profile(auto_lut["spec"], auto_lut["device"], str(lut), ratios=(0.5, 1.0), calibration_samples=0,
            show_progress=False, log=lambda m: None)
    key = model_key(auto_lut["spec"].name, (1, 1, 8, 8))
    table = LatencyLUT.load(lut)
    m = table.model(key)
    for g, allowed, s in zip(m["groups"], table.predictor(key).allowed, staircases_of(m)):
        assert set(allowed) <= set(g["grid"]) and allowed[-1] == g["channels"]
        assert s.allowed == allowed   # what lut show and the report say is what the search may choose


def test_extending_a_lut_from_another_device_config_keeps_its_device(auto_lut, tmp_path):
    import shutil

    lut = tmp_path / "ext.parquet"
    shutil.copy(auto_lut["lut"], lut)
    other = tmp_path / "other.yaml"
    other.write_text(DEVICE_YAML.replace("name: test-auto", "name: test-auto-2t").replace("threads: 1", "threads: 2"))
    said: list[str] = []
    profile(auto_lut["spec"], str(other), str(lut), calibration_samples=0, show_progress=False,
            allow_other_device=True, log=said.append)
    assert LatencyLUT.load(lut).meta["device"] == "test-auto"   # its rows keep that device's fingerprint
    # allowed, but the user is told the tables now mix two devices' timings
    assert any(line.startswith("warning: ext.parquet was measured on 'test-auto'") and "mix two devices" in line
               for line in said)


def test_staircase_processes_is_checked(auto_lut, tmp_path):
    out = CliRunner().invoke(cli, ["profile", "-d", auto_lut["device"], "-m", f"{auto_lut['root'] / 'tiny.py'}:net",
                                   "--input-shape", "1,8,8", "--lut", str(tmp_path / "l.parquet"),
                                   "--staircase-processes", "0"])
    assert out.exit_code != 0 and "--staircase-processes must be an integer of at least 1" in out.output
    assert not (tmp_path / "l.parquet").exists()


def test_lut_show_lists_the_allowed_widths(auto_lut):
    out = CliRunner().invoke(cli, ["lut", "show", "--lut", str(auto_lut["lut"])])
    assert out.exit_code == 0, out.output
    assert "channel_multiple auto" in out.output and "staircase" in out.output


def test_an_auto_config_refuses_a_lut_profiled_on_a_fixed_multiple(auto_lut, tmp_path):
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(DEVICE_YAML.replace("name: test-auto", "name: test-fixed") + "channel_multiple: 4\n")
    lut = tmp_path / "lut.parquet"
    profile(auto_lut["spec"], str(fixed), str(lut), calibration_samples=0, show_progress=False,
            log=lambda m: None)
    pred = LatencyLUT.load(lut).predictor(model_key(auto_lut["spec"].name, (1, 1, 8, 8)))
    assert pred.allowed is None
    groups = [type("G", (), {"name": n, "channels": d}) for n, d in zip(pred.group_names, pred.dense)]
    with pytest.raises(HwpruneError, match="no measured width steps.*channel_multiple 4"):
        search_space(groups, load_device_config(auto_lut["device"]), pred)
    assert search_space(groups, load_device_config(str(fixed)), pred).channel_multiple == 4


def test_the_report_lists_each_groups_steps_and_the_chosen_width(auto_lut):
    from hwprune.report import _width_grid_lines

    m = LatencyLUT.load(auto_lut["lut"]).model(model_key(auto_lut["spec"].name, (1, 1, 8, 8)))
    stairs = staircases_of(m)
    lines = _width_grid_lines(report_section(stairs, "auto"), {stairs[0].group: [stairs[0].dense, stairs[0].allowed[0]]})
    assert "channel_multiple: auto" in lines[0]
    row = next(line for line in lines if line.startswith(f"| {stairs[0].group} |"))
    assert row.rstrip(" |").endswith(str(stairs[0].allowed[0]))
    assert _width_grid_lines(report_section(None, 8), {})[0].endswith("every multiple of 8 channels from one multiple to dense.")
