"""The onnxruntime runner on tiny ONNX models built here: results, timing, providers, errors."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from profilers.config import from_dict
from profilers.errors import BackendUnavailable, ModelFileError, ProfilerError
from profilers.onnxrt import OrtRunner, resolve_providers
from profilers.runners import make_runner, measure_overhead

FAST = {"name": "test-fast", "warmup": 2, "min_repeats": 20, "max_seconds": 0.5}


def fast_config(**changes):
    return from_dict({**FAST, **changes})


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def relu_onnx(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    return _save(graph, tmp_path / "relu.onnx")


@pytest.fixture
def conv_weights():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)


@pytest.fixture
def conv_onnx(tmp_path, conv_weights):
    w, b = conv_weights
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "conv", [x], [y],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return _save(graph, tmp_path / "conv.onnx")


@pytest.fixture
def int64_onnx(tmp_path):
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])
    out = helper.make_tensor_value_info("out", TensorProto.INT64, [2, 5])
    seven = numpy_helper.from_array(np.array(7, dtype=np.int64), "seven")
    graph = helper.make_graph([helper.make_node("Mul", ["ids", "seven"], ["out"])], "int64", [ids], [out],
                              initializer=[seven])
    return _save(graph, tmp_path / "int64.onnx")


def _symbolic_onnx(tmp_path, dims, name):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], name, [x], [y])
    return _save(graph, tmp_path / f"{name}.onnx")


def _conv_reference(x, w, b):
    """Direct NCHW 3x3 convolution, stride 1, padding 1."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + h, j:j + wd]  # n, c, h, w
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def test_relu_infer_matches_numpy(relu_onnx):
    with make_runner(relu_onnx, fast_config()) as r:
        assert isinstance(r, OrtRunner)
        x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
        y = r.infer({"x": x})["y"]
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        assert [(s.name, s.shape, s.dtype) for s in r.inputs] == [("x", (1, 3, 4, 4), "float32")]
        # the prepared random inputs run too
        assert r.infer()["y"].shape == (1, 3, 4, 4)


def test_conv_infer_matches_numpy(conv_onnx, conv_weights):
    w, b = conv_weights
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with make_runner(conv_onnx, fast_config()) as r:
        y = r.infer({"x": x})["y"]
    np.testing.assert_allclose(y, _conv_reference(x, w, b), rtol=1e-4, atol=1e-4)


def test_int64_input(int64_onnx):
    with make_runner(int64_onnx, fast_config()) as r:
        assert r.inputs[0].dtype == "int64" and r.inputs[0].shape == (2, 5)
        ids = np.arange(10, dtype=np.int64).reshape(2, 5)
        np.testing.assert_array_equal(r.infer({"ids": ids})["out"], ids * 7)
        assert r.measure().p50_ms > 0


def test_symbolic_batch_dimension_takes_the_configured_batch(tmp_path):
    path = _symbolic_onnx(tmp_path, ["N", 3, 4, 4], "batched")
    with make_runner(path, fast_config(batch_size=3)) as r:
        assert r.inputs[0].shape == (3, 3, 4, 4)
        out = r.infer()["y"]
        assert out.shape == (3, 3, 4, 4)
        x = np.zeros((3, 3, 4, 4), np.float32)
        np.testing.assert_allclose(r.infer({"x": x})["y"], np.full_like(x, 0.5))


def test_symbolic_non_batch_dimension_is_a_clear_error(tmp_path):
    path = _symbolic_onnx(tmp_path, [1, 3, "H", "W"], "dynamic_hw")
    with pytest.raises(ModelFileError, match="symbolic dimension 'H' at axis 2"):
        with make_runner(path, fast_config()):
            pass


def test_measure_returns_positive_p50_with_enough_samples(conv_onnx):
    cfg = fast_config()
    with make_runner(conv_onnx, cfg) as r:
        s = r.measure()
    assert s.p50_ms > 0 and s.n >= cfg.min_repeats
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms
    assert len(s.samples_ms) == s.n and all(v > 0 for v in s.samples_ms)
    assert s.total_s <= 2 * cfg.max_seconds + 1.0  # at most two passes (one re-measure)
    assert s.statistic == "p50"


def test_measure_overrides_and_needs_an_active_runner(relu_onnx):
    r = make_runner(relu_onnx, fast_config())
    with pytest.raises(RuntimeError, match="not active"):
        r.measure()
    with r:
        s = r.measure(min_repeats=7, max_repeats=7, statistic="mean")
        assert s.n == 7 and s.statistic == "mean"
    assert not r.is_active and r.session is None


def test_in_memory_model_bytes(relu_onnx):
    data = open(relu_onnx, "rb").read()
    with make_runner(data, fast_config()) as r:
        assert r.name == "<in-memory model>"
        assert r.infer({"x": -np.ones((1, 3, 4, 4), np.float32)})["y"].max() == 0


def test_threads_and_opt_level_reach_the_session(relu_onnx):
    with make_runner(relu_onnx, fast_config(threads=2, graph_optimization="basic")) as r:
        opts = r.session.get_session_options()
        assert opts.intra_op_num_threads == 2
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is present here")
def test_absent_known_provider_is_skipped_and_recorded(relu_onnx):
    cfg = fast_config(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_providers(cfg) == (["CPUExecutionProvider"], ["CUDAExecutionProvider"])
    with make_runner(relu_onnx, cfg) as r:
        assert r.providers_skipped == ["CUDAExecutionProvider"]
        assert r.providers_used == ["CPUExecutionProvider"]
        assert r.session.get_providers() == ["CPUExecutionProvider"]
        assert r.measure().p50_ms > 0


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers()
                    or "TensorrtExecutionProvider" in ort.get_available_providers(), reason="GPU providers present")
def test_only_absent_providers_is_backend_unavailable(relu_onnx):
    cfg = fast_config(providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    with pytest.raises(BackendUnavailable) as info:
        with make_runner(relu_onnx, cfg):
            pass
    msg = str(info.value)
    assert "\n" not in msg and "CUDAExecutionProvider" in msg and "CPUExecutionProvider" in msg  # says what is there


def test_missing_file_is_one_line_model_file_error(tmp_path):
    missing = str(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError) as info:
        with make_runner(missing, fast_config()):
            pass
    assert str(info.value) == f"ONNX file not found: {missing}"


def test_corrupt_file_is_one_line_model_file_error(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError) as info:
        with make_runner(str(path), fast_config()):
            pass
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and msg.startswith("cannot load ONNX model")
    assert isinstance(info.value, ProfilerError)


def test_empty_file_is_a_model_file_error(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError):
        with make_runner(str(path), fast_config()):
            pass


def test_measure_overhead_is_small_and_positive():
    s = measure_overhead(fast_config())
    assert 0 < s.p50_ms < 5.0  # an identity graph costs microseconds, not milliseconds
    assert s.n >= 20
