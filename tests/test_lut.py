"""The latency LUT without profiling: interpolation, storage, dedup, device checks, calibration."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest

from hwprune.errors import HwpruneError
from hwprune.lut import COLUMNS, LatencyLUT, Predictor, fit_calibration, model_key
from profilers.errors import ProfilerError

# f(a, b) = C0 + C1·a + C2·b + C3·a·b is bilinear, so multilinear interpolation between grid
# points must reproduce it exactly, not approximately.
C0, C1, C2, C3 = 0.25, 0.03, 0.05, 0.004
GRID_A = [2, 4, 8]
GRID_B = [2, 4, 6]
OVERHEAD_MS = 0.3
CONST_MS = 0.11  # a unit that depends on no group (e.g. the stem after a fixed input)
CAL_A, CAL_B = 0.2, 1.5


def f_ab(a: float, b: float) -> float:
    return C0 + C1 * a + C2 * b + C3 * a * b


def f_a(a: float) -> float:
    return 0.1 + 0.02 * a


def _structure(calibration=None) -> dict:
    return {
        "groups": [{"name": "stem", "channels": 8, "grid": GRID_A},
                   {"name": "body", "channels": 6, "grid": GRID_B}],
        "units": [
            {"name": "const", "label": "Conv", "groups": [], "table": {"": "sig-const"}},
            {"name": "u-a", "label": "Conv+Relu", "groups": [0], "table": {str(a): f"sig-a{a}" for a in GRID_A}},
            {"name": "u-ab", "label": "Conv+Relu", "groups": [0, 1],
             "table": {f"{a},{b}": f"sig-ab{a}-{b}" for a, b in itertools.product(GRID_A, GRID_B)}},
        ],
        "overhead_ms": OVERHEAD_MS,
        "calibration": calibration,
    }


def _latencies() -> dict[str, float]:
    lat = {"sig-const": CONST_MS}
    lat.update({f"sig-a{a}": f_a(a) for a in GRID_A})
    lat.update({f"sig-ab{a}-{b}": f_ab(a, b) for a, b in itertools.product(GRID_A, GRID_B)})
    return lat


def expected_raw(a: float, b: float) -> float:
    return OVERHEAD_MS + CONST_MS + f_a(a) + f_ab(a, b)


@pytest.fixture
def predictor() -> Predictor:
    return Predictor(_structure({"a": CAL_A, "b": CAL_B}), _latencies())


# -- Predictor ---------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", list(itertools.product(GRID_A, GRID_B)))
def test_predict_raw_is_exact_on_grid_points(predictor, a, b):
    assert predictor.predict_raw({"stem": a, "body": b}) == pytest.approx(expected_raw(a, b), abs=1e-12)


@pytest.mark.parametrize("a, b", [(3, 2), (3, 3), (5, 5), (7, 4), (6, 3), (2, 5), (8, 5), (7.0, 5.0)])
def test_predict_raw_interpolates_a_bilinear_function_exactly(predictor, a, b):
    assert predictor.predict_raw({"stem": a, "body": b}) == pytest.approx(expected_raw(a, b), abs=1e-9)


def test_overhead_is_added_once():
    lat = _latencies()
    with_overhead = Predictor(_structure(), lat).predict_raw([4, 4])
    without = Predictor({**_structure(), "overhead_ms": 0.0}, lat).predict_raw([4, 4])
    assert with_overhead - without == pytest.approx(OVERHEAD_MS, abs=1e-12)
    assert without == pytest.approx(CONST_MS + f_a(4) + f_ab(4, 4), abs=1e-12)


def test_calibration_applies_to_predict_but_not_predict_raw(predictor):
    raw = predictor.predict_raw([3, 5])
    assert raw == pytest.approx(expected_raw(3, 5), abs=1e-9)
    assert predictor.predict([3, 5]) == pytest.approx(CAL_A + CAL_B * raw, abs=1e-12)
    identity = Predictor(_structure(None), _latencies())
    assert identity.predict([3, 5]) == pytest.approx(identity.predict_raw([3, 5]), abs=1e-12)


def test_widths_by_name_or_as_a_list_agree_and_missing_names_stay_dense(predictor):
    assert predictor.predict({"stem": 6, "body": 3}) == pytest.approx(predictor.predict([6, 3]), abs=1e-12)
    # a group left out of the dict keeps its dense width (stem 8, body 6)
    assert predictor.predict_raw({"body": 3}) == pytest.approx(expected_raw(8, 3), abs=1e-9)
    assert predictor.predict_raw({}) == pytest.approx(expected_raw(8, 6), abs=1e-9)


def test_list_of_the_wrong_length_is_refused(predictor):
    with pytest.raises(HwpruneError, match="expected 2 group widths, got 3"):
        predictor.predict([4, 4, 4])


@pytest.mark.parametrize("widths, group, width", [
    ({"stem": 1}, "stem", 1),          # below the smallest grid point
    ({"stem": 9}, "stem", 9),          # above the dense width
    ([4, 7], "body", 7),
    ([4, 0], "body", 0),
])
def test_width_outside_the_grid_is_refused_naming_group_and_width(predictor, widths, group, width):
    with pytest.raises(HwpruneError) as info:
        predictor.predict(widths)
    msg = str(info.value)
    assert f"'{group}'" in msg and f"width {width} " in msg
    assert "\n" not in msg


def test_unknown_group_name_is_refused(predictor):
    with pytest.raises(HwpruneError, match="unknown group.*nosuch"):
        predictor.predict({"stem": 4, "nosuch": 2})


def test_incomplete_lut_is_refused():
    lat = _latencies()
    del lat["sig-ab4-6"]
    with pytest.raises(HwpruneError, match="incomplete for unit u-ab: 1 grid point"):
        Predictor(_structure(), lat)


# -- LatencyLUT rows and storage ----------------------------------------------------------------

def _row(signature: str, fingerprint: str = "fp-1", precision: str = "fp32", batch: int = 1,
         p50_ms: float = 1.0, overhead_ms: float = 0.0, samples=(0.9, 1.0, 1.1),
         reference_ms: float = 0.05) -> dict:
    return {
        "device_fingerprint": fingerprint, "device": "test-cpu", "signature": signature, "op": "Conv+Relu",
        "cin": 4, "cout": 8, "kernel": 3, "stride": 1, "groups": 1, "in_h": 8, "in_w": 8, "batch": batch,
        "precision": precision, "n": len(samples), "mean_ms": p50_ms, "std_ms": 0.1, "p50_ms": p50_ms,
        "p90_ms": p50_ms * 1.1, "p99_ms": p50_ms * 1.2, "ci_low_ms": p50_ms * 0.9, "ci_high_ms": p50_ms * 1.1,
        "cv": 0.1, "stable": True, "overhead_ms": overhead_ms, "reference_ms": reference_ms, "timed_s": 0.01,
        "measured_at": 1.7e9, "samples_ms": list(samples),
    }


def _meta(fingerprint: str = "fp-1") -> dict:
    return {"format": 1, "fingerprint": fingerprint, "device": "test-cpu", "statistic": "p50",
            "models": {"tiny@1x1x8x8": {**_structure(), "precision": "fp32", "batch": 1}}}


def _lut_with_rows() -> LatencyLUT:
    lut = LatencyLUT(meta=_meta())
    lut.add_rows([_row("s1", p50_ms=0.5, samples=(0.4, 0.5, 0.6)), _row("s2", p50_ms=0.75),
                  _row("s3", p50_ms=2.0, samples=())])
    return lut


def test_add_rows_dedups_by_signature_fingerprint_precision_and_batch():
    lut = LatencyLUT()
    assert lut.add_rows([_row("s1"), _row("s2")]) == 2
    assert lut.add_rows([_row("s1"), _row("s2")]) == 0
    assert lut.add_rows([_row("s3"), _row("s3")]) == 1  # a duplicate inside one call, too
    assert lut.add_rows([_row("s1", fingerprint="fp-2"), _row("s1", precision="fp16"),
                         _row("s1", batch=8)]) == 3
    assert len(lut.rows) == 6
    assert lut.has("s1", "fp-2", "fp32", 1) and lut.has("s1", "fp-1", "fp16", 1) and lut.has("s1", "fp-1", "fp32", 8)
    assert not lut.has("s2", "fp-2", "fp32", 1)


def test_add_rows_after_load_still_dedups(tmp_path):
    path = tmp_path / "lut.parquet"
    _lut_with_rows().save(path)
    lut = LatencyLUT.load(path)
    assert lut.add_rows([_row("s1"), _row("s4")]) == 1
    assert sorted(lut.rows.signature) == ["s1", "s2", "s3", "s4"]


def _assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(b.columns[:len(COLUMNS)]) == COLUMNS
    assert len(a) == len(b)
    plain = [c for c in COLUMNS if c != "samples_ms"]
    pd.testing.assert_frame_equal(a[plain].reset_index(drop=True), b[plain].reset_index(drop=True),
                                  check_dtype=False)
    assert [list(map(float, s)) for s in a.samples_ms] == [list(map(float, s)) for s in b.samples_ms]


@pytest.mark.parametrize("name, files", [
    ("lut.parquet", {"lut.parquet"}),
    ("lut.csv", {"lut.csv", "lut.csv.meta.json"}),
])
def test_save_load_round_trip_keeps_rows_and_metadata(tmp_path, name, files):
    lut = _lut_with_rows()
    lut.save(tmp_path / name)
    assert set(os.listdir(tmp_path)) == files  # atomic writes leave no temporary files
    back = LatencyLUT.load(tmp_path / name)
    _assert_same_rows(lut.rows, back.rows)
    assert [list(map(float, s)) for s in back.rows.samples_ms] == [[0.4, 0.5, 0.6], [0.9, 1.0, 1.1], []]
    assert back.meta == lut.meta
    # the loaded table predicts, too: overhead per row is taken off (here 0)
    assert back.latency_ms("fp-1", "fp32", 1, "p50") == {"s1": 0.5, "s2": 0.75, "s3": 2.0}


@pytest.mark.parametrize("name", ["lut.parquet", "lut.csv"])
def test_a_path_that_starts_with_a_tilde_is_read_where_it_was_written(tmp_path, monkeypatch, name):
    # pandas and pyarrow expand "~", our writers (like open()) do not: the LUT written under ./~
    # was read from $HOME and called corrupt (nu10)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "~").mkdir()
    lut = _lut_with_rows()
    lut.save(f"~/{name}")
    assert (tmp_path / "~" / name).is_file()
    _assert_same_rows(lut.rows, LatencyLUT.load(f"~/{name}").rows)


def test_save_of_an_empty_lut_round_trips(tmp_path):
    LatencyLUT(meta=_meta()).save(tmp_path / "empty.parquet")
    back = LatencyLUT.load(tmp_path / "empty.parquet")
    assert len(back.rows) == 0 and back.meta["fingerprint"] == "fp-1"


def test_a_failed_save_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    path = tmp_path / "lut.parquet"
    _lut_with_rows().save(path)
    before = path.read_bytes()

    def broken_write(table, where, *args, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    bigger = _lut_with_rows()
    bigger.add_rows([_row("s9")])
    with pytest.raises(ProfilerError, match=f"cannot write {path}: disk full"):  # one line, naming the file
        bigger.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["lut.parquet"]
    assert len(LatencyLUT.load(path).rows) == 3


def test_a_csv_save_cut_between_its_two_files_leaves_a_consistent_lut(tmp_path, monkeypatch):
    import hwprune.lut as lut_module

    path = tmp_path / "lut.csv"
    _lut_with_rows().save(path)
    bigger = _lut_with_rows()
    bigger.add_rows([_row("s9")])
    bigger.meta["models"]["new@1x1x8x8"] = {}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lut_module, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(path)
    back = LatencyLUT.load(path)
    # the old metadata over the new (larger) table: every row the metadata refers to is there
    assert list(back.meta["models"]) == ["tiny@1x1x8x8"]
    assert sorted(back.rows.signature) == ["s1", "s2", "s3", "s9"]
    assert sorted(os.listdir(tmp_path)) == ["lut.csv", "lut.csv.meta.json"]


def test_latency_ms_takes_the_per_call_overhead_off_and_clips_at_zero():
    lut = LatencyLUT(meta=_meta())
    lut.add_rows([_row("s1", p50_ms=0.5, overhead_ms=0.2), _row("s2", p50_ms=0.1, overhead_ms=0.2),
                  _row("s3", p50_ms=9.0, fingerprint="fp-other")])
    lat = lut.latency_ms("fp-1", "fp32", 1, "p50")
    assert lat == pytest.approx({"s1": 0.3, "s2": 0.0})
    assert lut.latency_ms("fp-1", "fp32", 1, "p90") == pytest.approx({"s1": 0.35, "s2": 0.0})


def test_predictor_from_a_lut_uses_its_rows_and_structure():
    lut = LatencyLUT(meta=_meta())
    lut.add_rows([_row(sig, p50_ms=ms + 0.05, overhead_ms=0.05) for sig, ms in _latencies().items()])
    pred = lut.predictor("tiny@1x1x8x8")
    assert pred.group_names == ["stem", "body"]
    assert pred.predict_raw([3, 5]) == pytest.approx(expected_raw(3, 5), abs=1e-9)


# -- load errors -------------------------------------------------------------------------------

def _one_line_error(path) -> str:
    with pytest.raises(HwpruneError) as info:
        LatencyLUT.load(path)
    msg = str(info.value)
    assert msg and "\n" not in msg
    assert os.path.basename(str(path)) in msg
    return msg


def test_load_of_a_missing_file(tmp_path):
    assert "not found" in _one_line_error(tmp_path / "nope.parquet")


def test_load_of_a_truncated_parquet(tmp_path):
    path = tmp_path / "lut.parquet"
    _lut_with_rows().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in _one_line_error(path)


def test_load_of_random_bytes(tmp_path):
    path = tmp_path / "lut.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "corrupt or truncated" in _one_line_error(path)


def test_load_of_a_parquet_without_hwprune_metadata(tmp_path):
    path = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1, 2, 3]}).to_parquet(path)
    assert "not an hwprune LUT" in _one_line_error(path)


def test_load_of_a_csv_without_its_sidecar(tmp_path):
    path = tmp_path / "lut.csv"
    _lut_with_rows().save(path)
    (tmp_path / "lut.csv.meta.json").unlink()
    assert "lut.csv.meta.json is missing" in _one_line_error(path)


def test_load_of_a_csv_with_a_corrupt_sidecar(tmp_path):
    path = tmp_path / "lut.csv"
    _lut_with_rows().save(path)
    (tmp_path / "lut.csv.meta.json").write_text("{not json")
    assert "corrupt" in _one_line_error(path)


def test_load_of_an_unsupported_format_version(tmp_path):
    path = tmp_path / "lut.parquet"
    LatencyLUT(meta={**_meta(), "format": 99}).save(path)
    assert "format 99 is not supported" in _one_line_error(path)


# -- device and model lookups ------------------------------------------------------------------

def test_check_device_refuses_another_fingerprint_unless_allowed():
    lut = LatencyLUT(meta=_meta("fp-1"))
    lut.check_device("fp-1")  # same device: fine
    with pytest.raises(HwpruneError) as info:
        lut.check_device("fp-2", path="lut.parquet")
    msg = str(info.value)
    assert "lut.parquet" in msg and "fp-1" in msg and "fp-2" in msg and "--allow-other-device" in msg
    lut.check_device("fp-2", allow_other_device=True)
    LatencyLUT().check_device("fp-2")  # a new LUT has no device yet


def test_model_of_an_unprofiled_key_lists_the_profiled_ones():
    lut = LatencyLUT(meta=_meta())
    lut.meta["models"]["b@1x3x32x32"] = {}
    assert lut.model("tiny@1x1x8x8")["batch"] == 1
    with pytest.raises(HwpruneError, match=r"no profile of model other@1x1x8x8 \(profiled: b@1x3x32x32, tiny@1x1x8x8\)"):
        lut.model("other@1x1x8x8")
    with pytest.raises(HwpruneError, match=r"profiled: none"):
        LatencyLUT().predictor("other@1x1x8x8")


def test_model_key_names_model_and_full_input_shape():
    assert model_key("resnet20", (1, 1, 28, 28)) == "resnet20@1x1x28x28"
    assert model_key("torchvision:resnet18", [4, 3, 224, 224]) == "torchvision:resnet18@4x3x224x224"


# -- calibration -------------------------------------------------------------------------------

def test_fit_calibration_recovers_a_and_b_from_exact_linear_data():
    raw = [0.5, 1.0, 1.7, 2.2, 3.0]
    measured = [0.12 + 1.8 * r for r in raw]
    cal = fit_calibration(raw, measured)
    assert cal["a"] == pytest.approx(0.12, abs=1e-9)
    assert cal["b"] == pytest.approx(1.8, abs=1e-9)
    assert cal["n"] == 5
    assert cal["median_abs_error_pct"] == pytest.approx(0.0, abs=1e-6)
    assert cal["raw_median_abs_error_pct"] > 10


def test_fit_calibration_is_not_tilted_by_one_busy_measurement():
    raw = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    measured = [0.01 + 0.9 * r for r in raw]
    measured[-1] *= 1.3  # the largest sub-network measured while the machine was busy
    cal = fit_calibration(raw, measured)
    assert cal["a"] == pytest.approx(0.01, abs=2e-3) and cal["b"] == pytest.approx(0.9, rel=0.02)
    assert cal["median_abs_error_pct"] < 0.5


@pytest.mark.parametrize("raw, measured", [([], []), ([1.0], [2.0]), ([1.0, 2.0], [3.0, 5.0])])
def test_fit_calibration_is_the_identity_with_fewer_than_three_points(raw, measured):
    cal = fit_calibration(raw, measured)
    assert (cal["a"], cal["b"], cal["n"]) == (0.0, 1.0, len(raw))


def test_fit_calibration_never_inverts_the_ordering():
    # a decreasing fit would rank bigger sub-networks as faster: fall back to a positive scale
    cal = fit_calibration([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert cal["b"] > 0


def test_rows_are_put_on_the_typical_machine_speed_by_the_drift_reference():
    lut = LatencyLUT()
    # the reference ran 0.05 ms for two rows; one row was timed while the machine was 2x slower
    lut.add_rows([_row("a", p50_ms=1.0, reference_ms=0.05), _row("b", p50_ms=2.0, reference_ms=0.05),
                  _row("c", p50_ms=4.0, reference_ms=0.10)])
    lat = lut.latency_ms("fp-1", "fp32", 1, "p50")
    assert lat["a"] == pytest.approx(1.0) and lat["b"] == pytest.approx(2.0)
    assert lat["c"] == pytest.approx(2.0)  # 4.0 ms at half speed is 2.0 ms at the typical speed
    assert lut.reference_ms("fp-1", "p50") == pytest.approx(0.05)


def test_a_saved_lut_gets_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        _lut_with_rows().save(tmp_path / "lut.parquet")
        _lut_with_rows().save(tmp_path / "lut.csv")
    finally:
        os.umask(old)
    for name in ("lut.parquet", "lut.csv", "lut.csv.meta.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_a_profile_is_found_under_another_name_when_its_layers_are_the_same():
    # the Python API keys a module by class name; the CLI keys the same model as file.py:factory
    from torch import nn

    from hwprune.lut import LatencyLUT, structure_sha

    model, other = nn.Sequential(nn.Conv2d(1, 4, 3)), nn.Sequential(nn.Conv2d(1, 5, 3))
    lut = LatencyLUT(meta={"models": {"Net-1a2b@1x1x8x8": {"structure_sha": structure_sha(model)},
                                      "Net-1a2b@1x1x16x16": {"structure_sha": structure_sha(model)}}})
    assert lut.key_for("net.py:make@1x1x8x8", model) == "Net-1a2b@1x1x8x8"
    assert lut.key_for("Net-1a2b@1x1x16x16", model) == "Net-1a2b@1x1x16x16"   # its own key first
    assert lut.key_for("net.py:make@1x1x8x8", other) == "net.py:make@1x1x8x8"  # other layers: not it
    assert lut.key_for("net.py:make@1x1x4x4", model) == "net.py:make@1x1x4x4"  # other input shape: not it
