"""TrtRunner with real TensorRT on an NVIDIA GPU: build, cache, time and check a tiny engine.

Marked ``tensorrt`` and ``gpu``; skipped where tensorrt, CUDA bindings (pycuda or
cuda-python) or a GPU are missing. Run on a GPU machine with
``pytest -m "tensorrt and gpu" tests/test_tensorrt_real.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

tensorrt = pytest.importorskip("tensorrt")
TRT_MAJOR = int(str(tensorrt.__version__).split(".")[0])
if importlib.util.find_spec("pycuda") is None and importlib.util.find_spec("cuda") is None:
    pytest.skip("needs pycuda or cuda-python", allow_module_level=True)

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from profilers.config import DeviceConfig  # noqa: E402
from profilers.errors import BackendUnavailable, ConfigError, ModelFileError  # noqa: E402
from profilers.tensorrt import TrtRunner  # noqa: E402

FEATURES = 64


def relu_add_onnx(path, batch: int | str = "N") -> str:
    """y = Relu(x) + x, the batch axis symbolic unless ``batch`` is a number."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, FEATURES])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "relu_add", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every TensorRT ONNX parser we support
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + x


def gpu_config(tmp_path, **fields) -> DeviceConfig:
    base = dict(name="real-gpu", backend="tensorrt", engine_cache=str(tmp_path / "engines"),
                warmup=5, min_repeats=20, max_repeats=200, max_seconds=0.5, workspace_mb=256)
    base.update(fields)
    return DeviceConfig(**base)


def activated(runner: TrtRunner) -> TrtRunner:
    try:
        return runner.activate()
    except BackendUnavailable as err:  # tensorrt is installed but no GPU/driver answers
        pytest.skip(str(err))


def test_fp32_builds_times_and_matches_numpy(tmp_path):
    model = relu_add_onnx(tmp_path / "relu_add.onnx")
    runner = activated(TrtRunner(model, gpu_config(tmp_path, batch_size=4)))
    try:
        assert runner.engine_cache_hit is False and runner.engine_path.is_file()
        x = np.random.default_rng(0).standard_normal((4, FEATURES)).astype(np.float32)
        out = runner.infer({"x": x})
        np.testing.assert_allclose(out["y"], reference(x), rtol=1e-6, atol=1e-6)
        compute = runner.measure()
        end_to_end = runner.extra_timings()["end_to_end"]
    finally:
        runner.deactivate()
    assert compute.p50_ms > 0 and compute.n >= 20
    assert end_to_end.p50_ms > 0
    # copies are extra work on the same stream: end to end is never much faster than compute
    assert end_to_end.p50_ms >= 0.5 * compute.p50_ms


def test_second_activation_uses_the_engine_cache(tmp_path):
    model = relu_add_onnx(tmp_path / "relu_add.onnx")
    cfg = gpu_config(tmp_path)
    with activated(TrtRunner(model, cfg)) as first:
        assert first.engine_cache_hit is False
    with activated(TrtRunner(model, cfg)) as second:
        assert second.engine_cache_hit is True
        x = np.linspace(-1, 1, FEATURES, dtype=np.float32).reshape(1, FEATURES)
        np.testing.assert_allclose(second.infer({"x": x})["y"], reference(x), rtol=1e-6, atol=1e-6)
        assert second.time_once_ms() > 0


def test_fp16_matches_numpy_loosely(tmp_path):
    if TRT_MAJOR >= 11:  # strongly typed: fp16 is put into the ONNX first
        pytest.importorskip("onnxconverter_common")
    model = relu_add_onnx(tmp_path / "relu_add.onnx", batch=2)
    with activated(TrtRunner(model, gpu_config(tmp_path, precision="fp16"))) as r:
        assert r.build_settings["route"] == ("strongly-typed" if TRT_MAJOR >= 11 else "builder-flags")
        x = np.random.default_rng(1).standard_normal((2, FEATURES)).astype(np.float32)
        np.testing.assert_allclose(r.infer({"x": x})["y"], reference(x), rtol=1e-2, atol=1e-2)
        assert r.measure().p50_ms > 0


def qdq_relu_add_onnx(path) -> str:
    """relu_add behind a QuantizeLinear/DequantizeLinear pair: explicit INT8, as TensorRT 11 needs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, FEATURES])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["r"]), helper.make_node("Add", ["r", "dq"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.skipif(TRT_MAJOR < 11, reason="TensorRT 11 behaviour")
def test_trt11_int8_needs_qdq_and_builds_from_it(tmp_path):
    with pytest.raises(ModelFileError, match="Q/DQ"):
        activated(TrtRunner(relu_add_onnx(tmp_path / "relu_add.onnx"), gpu_config(tmp_path, precision="int8")))
    with activated(TrtRunner(qdq_relu_add_onnx(tmp_path / "qdq.onnx"), gpu_config(tmp_path, precision="int8"))) as r:
        assert r.infer()["y"].shape == (1, FEATURES) and r.measure().p50_ms > 0


def test_bf16_builds_on_trt10_and_is_refused_on_trt11(tmp_path):
    model = relu_add_onnx(tmp_path / "relu_add.onnx")
    if TRT_MAJOR >= 11:
        with pytest.raises(ConfigError, match="bf16"):
            activated(TrtRunner(model, gpu_config(tmp_path, precision="bf16")))
        return
    with activated(TrtRunner(model, gpu_config(tmp_path, precision="bf16"))) as r:
        assert r.build_settings["builder_flags"] == ["BF16"] and r.measure().p50_ms > 0


@pytest.mark.skipif(TRT_MAJOR >= 11, reason="TensorRT 11 has no implicit INT8 (see the Q/DQ test)")
def test_int8_without_calibration_builds_and_times(tmp_path):
    # placeholder dynamic ranges: latency is meaningful, output values are not checked
    model = relu_add_onnx(tmp_path / "relu_add.onnx")
    with activated(TrtRunner(model, gpu_config(tmp_path, precision="int8"))) as r:
        assert r.infer()["y"].shape == (1, FEATURES)
        assert r.measure().p50_ms > 0
