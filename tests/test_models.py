"""Tests for the model zoo and registry: shapes, ONNX parity, Torch-Pruning groups, loaders.

Every test runs on CPU with tiny batches; the 3x224x224 MobileNetV2 check is one forward.
"""

from __future__ import annotations

import importlib.util
import io
import warnings

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.models import create_model, list_models, load_weights

torch.set_num_threads(1)

ZOO = ["mobilenetv2", "resnet20", "resnet56", "vgg11_bn", "vgg16_bn"]


def _final_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BN real statistics and the head default init so outputs are O(1), not ~1e-9.

    Fresh models have a 0.01-std head and identity BN stats, which would make a 1e-4
    absolute ONNX-vs-torch tolerance meaningless.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the stats exactly
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def test_list_models_has_the_zoo():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("in_channels,side_px", [(1, 28), (3, 32)])
def test_output_shape(name, in_channels, side_px):
    model = create_model(name, in_channels=in_channels, num_classes=10, input_size=(side_px, side_px))
    with torch.no_grad():
        y = model.eval()(torch.randn(2, in_channels, side_px, side_px))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


def test_mobilenetv2_imagenet_size_uses_standard_strides():
    torch.manual_seed(0)
    model = create_model("mobilenetv2", in_channels=3, num_classes=1000, input_size=(224, 224)).eval()
    feature_shapes = []
    model.features.register_forward_hook(lambda m, i, o: feature_shapes.append(tuple(o.shape)))
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000)
    assert feature_shapes == [(1, 1280, 7, 7)]  # 32x downsampling


def test_mobilenetv2_small_input_keeps_resolution():
    model = create_model("mobilenetv2", in_channels=1, input_size=(28, 28), width_mult=0.5).eval()
    feature_shapes = []
    model.features.register_forward_hook(lambda m, i, o: feature_shapes.append(tuple(o.shape)))
    with torch.no_grad():
        model(torch.randn(1, 1, 28, 28))
    # Stem and first downsampling stage at stride 1: 28 -> 14 -> 7 -> 4 (8x, not 32x).
    assert feature_shapes == [(1, 1280, 4, 4)]
    assert model.features[0][0].out_channels == 16  # _make_divisible(32 * 0.5, 8)


def test_vgg_skips_pools_that_would_empty_a_side():
    model = create_model("vgg11_bn", in_channels=1, input_size=(28, 28))
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4  # 28 -> 14 -> 7 -> 3 -> 1; the fifth pool would give 0
    model32 = create_model("vgg11_bn", in_channels=3, input_size=(32, 32))
    assert len([m for m in model32.features if isinstance(m, nn.MaxPool2d)]) == 5
    assert _final_linear(model).in_features == 512


@pytest.mark.parametrize("name", ZOO)
def test_onnx_export_matches_torch(name):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    model = _calibrated(create_model(name, in_channels=1, num_classes=10, input_size=(28, 28)), x)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation noise
        torch.onnx.export(model, x[:1], buffer, dynamo=False, do_constant_folding=True,
                          opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    with torch.no_grad():
        torch_out = model(x[:1]).numpy()
    assert np.abs(torch_out).max() > 1e-2  # the comparison below is not between near-zeros
    np.testing.assert_allclose(onnx_out, torch_out, rtol=0, atol=1e-4)


# Expected prunable groups with the final Linear ignored, and why:
#  resnet20: 9 block-internal groups (conv1 of each of the 3x3 BasicBlocks feeds only its
#            conv2) + 3 stage groups (each stage's residual stream ties the stem or the 1x1
#            shortcut conv to every block's conv2 in that stage) = 12.
#  resnet56: 27 block-internal + 3 stage groups = 30.
#  vgg11_bn / vgg16_bn: no branches, so one group per conv: 8 / 13.
#  mobilenetv2: 16 expand-conv groups (expand 1x1 + its depthwise), 1 stem group (the stem
#            is coupled to block 0's depthwise), 1 for block 0's 16-channel projection,
#            6 residual streams (24/32/64/96/160/320) and the 1280-channel last conv = 25.
EXPECTED_GROUPS = {"resnet20": 12, "resnet56": 30, "vgg11_bn": 8, "vgg16_bn": 13, "mobilenetv2": 25}


@pytest.mark.parametrize("name", ZOO)
def test_dependency_graph_groups(name):
    model = create_model(name, in_channels=1, num_classes=10, input_size=(28, 28)).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 28, 28))
    groups = list(graph.get_all_groups(ignored_layers=[_final_linear(model)],
                                       root_module_types=[nn.Conv2d, nn.Linear]))
    assert len(groups) == EXPECTED_GROUPS[name]


USER_MODEL_FILE = """
import torch
from torch import nn

def build(in_channels, num_classes):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))

def build_fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))

def not_a_model(in_channels=1):
    return 42
"""


def test_create_model_from_user_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(USER_MODEL_FILE)
    model = create_model(f"{path}:build", in_channels=3, num_classes=5)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5)
    fixed = create_model(f"{path}:build_fixed", in_channels=1, num_classes=10)
    assert fixed(torch.randn(1, 1, 28, 28)).shape == (1, 3)


def test_a_model_file_imports_the_modules_beside_it(tmp_path):
    # as `python file.py` would: the file's folder is on the import path
    (tmp_path / "parts_beside_it.py").write_text("import torch.nn as nn\n"
                                                 "def head(c):\n    return nn.Linear(c, 3)\n")
    (tmp_path / "net_with_parts.py").write_text("import torch.nn as nn\nfrom parts_beside_it import head\n"
                                                "def build():\n    return nn.Sequential(nn.Flatten(), head(16))\n")
    assert create_model(f"{tmp_path / 'net_with_parts.py'}:build")(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(HwpruneError, match=r"name the factory as .*net_with_parts\.py:FUNCTION"):
        create_model(str(tmp_path / "net_with_parts.py"))   # the file alone, no :factory


def test_user_file_errors_name_file_and_factory(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(HwpruneError, match=r"nope\.py.*'build'"):
        create_model(f"{missing}:build")
    path = tmp_path / "my_model.py"
    path.write_text(USER_MODEL_FILE)
    with pytest.raises(HwpruneError, match=r"my_model\.py.*'make_it'") as err:
        create_model(f"{path}:make_it")
    assert "\n" not in str(err.value)
    with pytest.raises(HwpruneError, match="not a torch.nn.Module"):
        create_model(f"{path}:not_a_model")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(HwpruneError, match=r"broken\.py.*boom"):
        create_model(f"{broken}:build")


def test_unknown_model_lists_known_ones():
    with pytest.raises(HwpruneError, match="unknown model 'resnet9000'") as err:
        create_model("resnet9000")
    for name in ZOO:
        assert name in str(err.value)
    with pytest.raises(HwpruneError, match="'resnet20' has no option 'width_mult'"):
        create_model("resnet20", width_mult=0.5)


@pytest.mark.parametrize("zoo", ["torchvision", "timm"])
def test_missing_external_zoo_says_what_to_install(zoo):
    if importlib.util.find_spec(zoo) is not None:
        pytest.skip(f"{zoo} is installed")
    with pytest.raises(HwpruneError, match=f"pip install {zoo}"):
        create_model(f"{zoo}:resnet18", in_channels=3)


@pytest.mark.parametrize("wrapped", [False, True])
def test_load_weights_round_trip(tmp_path, wrapped):
    torch.manual_seed(0)
    source = create_model("resnet20", in_channels=1)
    state = source.state_dict()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": state} if wrapped else state, path)
    target = load_weights(create_model("resnet20", in_channels=1), str(path))
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_load_weights_mismatch_names_first_key(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(create_model("resnet20", num_classes=5).state_dict(), path)
    with pytest.raises(HwpruneError, match=r"'fc\.weight'.*\(5, 64\).*\(10, 64\)") as err:
        load_weights(create_model("resnet20", num_classes=10), str(path))
    assert "\n" not in str(err.value)

    partial = create_model("resnet20").state_dict()
    del partial["layer2.0.shortcut.0.weight"]
    torch.save(partial, path)
    with pytest.raises(HwpruneError, match=r"missing key 'layer2\.0\.shortcut\.0\.weight'"):
        load_weights(create_model("resnet20"), str(path))

    with pytest.raises(HwpruneError, match="not found"):
        load_weights(create_model("resnet20"), str(tmp_path / "absent.pt"))


def test_register_model_adds_a_name_and_refuses_a_clash():
    from hwprune.models import registry

    def hwprune_test_tiny(in_channels=1, num_classes=10, input_size=(28, 28)):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size[0] * input_size[1], num_classes))

    registry.register_model(hwprune_test_tiny)
    try:
        assert "hwprune_test_tiny" in list_models()
        assert create_model("hwprune_test_tiny", num_classes=3)(torch.zeros(1, 1, 28, 28)).shape == (1, 3)

        def other():
            return nn.Identity()

        other.__name__ = "hwprune_test_tiny"
        with pytest.raises(ValueError, match="already registered"):
            registry.register_model(other)
    finally:
        registry._MODEL_BUILDERS.pop("hwprune_test_tiny", None)


# -- pytorchcv:NAME (installed by make install with --no-deps) ---------------------------------

@pytest.mark.parametrize("name, side_px, classes, groups", [("resnet20_cifar10", 32, 10, 12),
                                                            ("densenet40_k12_cifar10", 32, 10, 39),
                                                            ("mobilenetv2_w1", 224, 7, 26)])
def test_pytorchcv_models_build_trace_and_export(name, side_px, classes, groups):
    pytest.importorskip("pytorchcv", reason="make install installs pytorchcv (--no-deps)")
    from hwprune.export import export_onnx
    from hwprune.groups import find_groups

    model = create_model(f"pytorchcv:{name}", in_channels=1, num_classes=classes,
                         input_size=(side_px, side_px)).eval()
    x = torch.zeros(1, 1, side_px, side_px)
    assert model(x).shape == (1, classes)
    assert len(find_groups(model, x)) == groups
    assert len(export_onnx(model, x)) > 0


def test_an_unknown_pytorchcv_model_is_one_sentence():
    pytest.importorskip("pytorchcv", reason="make install installs pytorchcv (--no-deps)")
    with pytest.raises(HwpruneError, match="pytorchcv has no model 'nosuchnet'"):
        create_model("pytorchcv:nosuchnet")


# -- Hugging Face transformers models (installed by make install) ------------------------------

def test_a_transformers_vit_profiles_and_prunes_its_mlp_with_the_attention_heads_dense(tmp_path):
    # A third-party attention model as a user builds it (returning a ModelOutput): the value
    # projections' reshape into heads cannot take a one-channel cut, so those groups stay dense,
    # named with the reason; the MLP hidden widths and the residual width still prune, and the
    # pruned model is certified and has fewer parameters.
    transformers = pytest.importorskip("transformers", reason="make install installs transformers")
    import hwprune
    from test_api import DEVICE_YAML

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=128, num_labels=4)
    model = transformers.ViTForImageClassification(cfg).eval()
    x = torch.zeros(1, 3, 32, 32)
    probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(probe).logits

    def agreement(m) -> float:
        with torch.no_grad():
            return -float((m(probe).logits - reference).abs().mean())

    (tmp_path / "d.yaml").write_text(DEVICE_YAML)
    lut = hwprune.profile(model, x, device=str(tmp_path / "d.yaml"), lut=str(tmp_path / "vit.parquet"),
                          calibration_samples=0)
    res = hwprune.prune(model, x, device=str(tmp_path / "d.yaml"), lut=lut, speedup=1.1, score_fn=agreement,
                        agent="uniform", max_evaluations=3, certify_rounds=3)
    dense_left = {u["name"]: u["reason"] for u in res.report["unprunable_groups"]}
    assert dense_left and all("breaks the forward pass" in r for r in dense_left.values())
    assert all("attention" in n for n in dense_left)  # the MLPs are not among them
    assert res.certified and res.report["pruned"]["params"] < res.report["dense"]["params"]
    assert any(w < d for n, (d, w) in res.report["pruned"]["channels"].items() if n not in dense_left)
