"""The package API: ``hwprune.profile`` / ``hwprune.prune`` on the user's own module, metric and loop.

A tiny module, a cheap deterministic ``score_fn`` and a fast CPU config: no dataset at all.
Bad input raises :class:`hwprune.HwpruneError` with one sentence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import hwprune
from hwprune import HwpruneError
from hwprune.lut import LatencyLUT

torch.set_num_threads(1)

DEVICE_YAML = """\
name: test-cpu-api
backend: onnxruntime
threads: 1
warmup: 1
min_repeats: 5
max_seconds: 0.01
channel_multiple: 16
statistic: p50
"""


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4)).eval()


X = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def agreement(model: nn.Module) -> float:
    """How close the model's outputs stay to the dense model's: a cheap, finite, higher-is-better score."""
    with torch.no_grad():
        return -float((model(X) - REFERENCE_OUT).abs().mean())


REFERENCE_OUT = make_net()(X).detach()


def light_finetune(model: nn.Module, teacher: nn.Module) -> nn.Module:
    """A few steps of matching the teacher's outputs (a user's loop in miniature)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(3):
        loss = (model(X) - teacher(X)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    (root / "device.yaml").write_text(DEVICE_YAML)
    device = str(root / "device.yaml")
    lut = hwprune.profile(make_net(), torch.zeros(1, 1, 16, 16), device=device, lut=str(root / "lut.parquet"),
                          calibration_samples=0)
    return {"root": root, "device": device, "lut": lut}


def _prune(env, model=None, **kw):
    args = dict(device=env["device"], lut=env["lut"], speedup=1.2, score_fn=agreement, finetune_fn=light_finetune,
                agent="uniform", max_evaluations=4)
    args.update(kw)
    return hwprune.prune(model if model is not None else make_net(), torch.zeros(1, 1, 16, 16), **args)


def test_profile_returns_the_saved_lut_and_what_it_measured(env):
    lut = env["lut"]
    assert isinstance(lut, LatencyLUT) and lut.path.is_file()
    r = lut.profile_result
    assert r.groups == 3 and r.signatures_total >= r.signatures_measured > 0
    # the module's name keys it in the LUT: its class and a hash of its structure
    assert len(lut.meta["models"]) == 1 and next(iter(lut.meta["models"])).startswith("Sequential-")
    # profiling it again measures nothing new, and a LatencyLUT object is accepted as lut=
    again = hwprune.profile(make_net(), torch.zeros(1, 1, 16, 16), device=env["device"], lut=lut,
                            calibration_samples=0)
    assert again.profile_result.signatures_measured == 0


def test_prune_with_the_users_metric_and_loop_needs_no_dataset(env, tmp_path):
    dense = make_net().train()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    rng = torch.random.get_rng_state()
    res = _prune(env, dense, out=str(tmp_path / "run"))
    # no global state: the caller's random stream and the module's mode are as they were
    assert torch.equal(torch.random.get_rng_state(), rng) and dense.training
    assert isinstance(res, hwprune.PruneResult)
    assert res.certified is True and res.certificate.upper_bound_ms <= res.certificate.budget_ms
    assert res.certificate.statistic == "p50" and res.certificate.confidence == 0.95 and res.certificate.rounds
    assert not res.model.training and sum(p.numel() for p in res.model.parameters()) < \
        sum(p.numel() for p in dense.parameters())
    # the user's module is untouched
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    # the report is report.json's content, with the user's score and no accuracy
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == json.loads(json.dumps(res.report))
    assert res.report["dense"]["accuracy"] is None and res.report["pruned"]["score"] == pytest.approx(
        agreement(res.model))
    assert res.report["finetune"]["strategy"] == "finetune_fn"
    # the plan replays on the dense module: same architecture, and with pruned.pt the same outputs
    rebuilt = hwprune.apply_plan(make_net(), str(tmp_path / "run" / "plan.json"), torch.zeros(1, 1, 16, 16),
                                 weights=str(tmp_path / "run" / "pruned.pt"))
    assert res.plan.widths == {n: len(k) for n, k in res.plan.kept.items()}
    assert dict(res.plan) == res.plan.kept   # DESIGN's "group -> kept channel indices"
    again = hwprune.apply_plan(make_net(), res.plan, torch.zeros(1, 1, 16, 16))   # the object, not only its file
    assert {n: p.shape for n, p in again.state_dict().items()} == {n: p.shape for n, p in res.model.state_dict().items()}
    assert torch.allclose(rebuilt(X), res.model(X), atol=1e-5)
    # a plain mapping of kept channels works too, and a group it leaves out stays dense
    shapes = {n: p.shape for n, p in res.model.state_dict().items()}
    plain = hwprune.apply_plan(make_net(), dict(res.plan), torch.zeros(1, 1, 16, 16))
    assert {n: p.shape for n, p in plain.state_dict().items()} == shapes
    from hwprune.groups import find_groups

    dense_widths = {g.name: g.channels for g in find_groups(make_net(), torch.zeros(1, 1, 16, 16))}
    first = next(n for n in res.plan if len(res.plan[n]) < dense_widths[n])   # a group the run did cut
    partial = hwprune.apply_plan(make_net(), {first: res.plan[first]}, torch.zeros(1, 1, 16, 16))
    widths = {g.name: g.channels for g in find_groups(partial, torch.zeros(1, 1, 16, 16))}
    assert widths == {**dense_widths, first: len(res.plan[first])}
    # a plan.json read with json.load is a plan, not a mapping of kept channels
    loaded = hwprune.apply_plan(make_net(), json.loads((tmp_path / "run" / "plan.json").read_text()),
                                torch.zeros(1, 1, 16, 16))
    assert {n: p.shape for n, p in loaded.state_dict().items()} == shapes
    # the CLI refused another input shape, the API took it (nu11)
    with pytest.raises(hwprune.HwpruneError, match=r"was made for input shape \(1, 16, 16\), not the example "
                                                   r"input's \(1, 20, 20\): give an example input of shape"):
        hwprune.apply_plan(make_net(), res.plan, torch.zeros(1, 1, 20, 20))


@pytest.mark.parametrize("plan, words", [
    (42, "not int"),
    ({"no-such-group": [0]}, "'no-such-group' is not a prunable group"),
    ({"0": [0, 0]}, "distinct channel indices"),
    ({"0": [999]}, "keeps channel 999, but it has 32"),
    ({}, "names no group"),
])
def test_a_bad_plain_plan_is_one_sentence(plan, words):
    with pytest.raises(hwprune.HwpruneError, match=words):
        hwprune.apply_plan(make_net(), plan, torch.zeros(1, 1, 16, 16))


def test_an_unknown_keyword_or_a_bad_log_is_one_sentence_and_log_none_is_silence(env, tmp_path, capsys):
    from hwprune.api import pretrain as api_pretrain

    with pytest.raises(hwprune.HwpruneError, match=r"hwprune.profile\(\) has no option 'calibration_sample'; "
                                                  r"did you mean calibration_samples\?"):
        hwprune.profile(make_net(), torch.zeros(1, 1, 16, 16), device=env["device"], lut=str(tmp_path / "l.parquet"),
                        calibration_sample=0)
    with pytest.raises(hwprune.HwpruneError, match=r"hwprune.time_model\(\) has no option 'foo'"):
        hwprune.time_model("x.onnx", env["device"], foo=1)
    with pytest.raises(hwprune.HwpruneError, match=r"hwprune.api.pretrain\(\) has no option 'epoch'; did you mean epochs"):
        api_pretrain("resnet20", epoch=1, out=str(tmp_path / "m.pt"))
    with pytest.raises(hwprune.HwpruneError, match="log= must be a function"):
        hwprune.profile(make_net(), torch.zeros(1, 1, 16, 16), device=env["device"], lut=env["lut"], log=1)
    hwprune.profile(make_net(), torch.zeros(1, 1, 16, 16), device=env["device"], lut=env["lut"],
                    calibration_samples=0, log=None)
    assert capsys.readouterr().out == ""
    with pytest.raises(hwprune.HwpruneError, match="unknown --importance 'l3'|unknown importance='l3'"):
        _prune(env, importance="l3")


def test_prune_without_a_run_folder_writes_nothing(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _prune(env, lut=str(env["lut"].path))  # a LUT path works as well as the object
    assert res.out is None and list(tmp_path.iterdir()) == []
    assert isinstance(res.onnx, bytes) and res.baseline["timing"]["samples_ms"]


def test_count_and_callable_budgets_need_no_lut(env):
    res = _prune(env, lut=None, speedup=None, max_params="60%", budgets=[(lambda w: sum(w.values()), 96)])
    assert res.report["pruned"]["params"] <= 0.6 * res.report["dense"]["params"]
    assert sum(res.plan.widths.values()) <= 96
    assert res.report["budget"]["user"][0]["limit"] == 96


def test_without_finetune_fn_or_data_the_cut_ships_unrecovered(env):
    res = _prune(env, finetune_fn=None)
    assert res.report["finetune"]["strategy"] == "none"


@pytest.mark.parametrize("kw, fragment", [
    ({"score_fn": lambda m: float("nan")}, "score_fn returned nan"),
    ({"score_fn": lambda m: "good"}, "score_fn must return a number"),
    ({"score_fn": lambda m: "0.5"}, "score_fn must return a number, got str '0.5'"),   # float() would take it
    ({"finetune_fn": lambda m, t: None}, "finetune_fn returned None"),
    ({"finetune_fn": lambda m, t: make_net()}, "finetune_fn changed the pruned architecture"),
    ({"finetune_fn": lambda m, t: m.double()}, "finetune_fn returned a model in torch.float64; the model it was "
                                                "given is exported and measured in float32: return it in float32"),
    ({"score_fn": None}, "pass score_fn="),
    ({"speedup": float("nan")}, "speedup= must be a number"),
    ({"latency_ms": -1.0, "speedup": None}, "latency_ms= must be a positive"),
    ({"max_evaluations": 0}, "max_evaluations="),
    ({"certify_rounds": 0}, "certify_rounds="),
    ({"colour": "blue"}, "unknown option(s) colour;"),
    ({"max_evals": 3}, "max_evals (did you mean max_evaluations?)"),
    ({"device": "x86-cpu-typo"}, "unknown device 'x86-cpu-typo'"),
    ({"lut": 42}, "LUT"),
    ({"budget": [("m:f", 1.0)]}, "spelt budgets="),
    ({"budgets": ("m:f", 1.0)}, "budgets= must be a list of"),
    ({"agent_options": ["patience"]}, "agent_options must be a dict"),
    ({"agent": "nope"}, "unknown agent 'nope'"),
    ({"agent_options": {"nonsense": 1}}, "agent 'uniform'"),
    ({"bn_data": 5}, "bn_data must be an iterable"),
    ({"bn_data": []}, "bn_data holds no batch"),   # accepted, and BatchNorm silently not re-estimated (nu10)
    ({"importance": "taylor"}, "taylor"),
    ({"num_classes": 2.5}, "num_classes= must be an integer"),
    ({"name": "a@b"}, "name must be a non-empty string"),
    ({"val_samples": 500}, "val_samples set the built-in proxy, which your score_fn replaces"),
    ({"finetune_epochs": 3, "lr": 0.1}, "finetune_epochs, lr set the built-in recovery, which your finetune_fn"),
])
def test_bad_input_through_the_api_is_one_sentence(env, kw, fragment):
    with pytest.raises(HwpruneError) as info:
        _prune(env, **kw)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_messages_name_the_keyword_called_from_python_and_the_flag_from_the_command_line(env, tmp_path):
    from click.testing import CliRunner

    from hwprune.cli import cli

    with pytest.raises(HwpruneError, match=r"^give either latency_ms= or speedup=, not both$"):
        _prune(env, latency_ms=1.0)
    with pytest.raises(HwpruneError, match=r"^processes= must be"):
        hwprune.time_model(str(tmp_path / "m.onnx"), env["device"], processes=0)
    with pytest.raises(HwpruneError, match=r"^grid= ratios must lie in \(0, 1\]"):
        hwprune.profile(make_net(), torch.zeros(1, 1, 16, 16), device=env["device"], lut=str(tmp_path / "g.parquet"),
                        grid=[0.0, 2.0])
    assert not (tmp_path / "g.parquet").exists()
    res = CliRunner().invoke(cli, ["time", str(tmp_path / "m.onnx"), "-d", env["device"], "--processes", "0"])
    assert res.exit_code == 2 and "error: --processes must be" in res.stderr


def test_keyword_spelling_rewrites_only_the_keywords_it_knows():
    from hwprune.errors import keyword_spelling

    kws = {"latency_ms": ("latency_ms", None), "overwrite": ("overwrite", False), "json": ("json_path", None),
           "finetune": ("finetune", "agp")}
    assert keyword_spelling("pass --latency-ms or --overwrite; --json too", kws) == \
        "pass latency_ms= or overwrite=True; json_path= too"
    assert keyword_spelling("unknown --finetune 'x' (see --help, x--latency-ms)", kws) == \
        "unknown finetune='x' (see --help, x--latency-ms)"


def test_a_profilers_error_reaches_the_user_as_both_hwprune_error_and_its_own_type(env, tmp_path):
    from profilers.errors import ConfigError, ModelFileError

    with pytest.raises(HwpruneError) as info:
        _prune(env, device="no-such-device")
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ModelFileError) as info:
        hwprune.time_model(str(tmp_path / "missing.onnx"), "x86-cpu-ort")
    assert isinstance(info.value, HwpruneError) and "missing.onnx" in str(info.value)


def test_weights_for_the_users_module_load_into_the_copy(env, tmp_path):
    trained = make_net()
    with torch.no_grad():
        trained[0].weight.mul_(1.5)  # different weights, same architecture
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    mine = make_net()
    res = _prune(env, mine, weights=str(tmp_path / "w.pt"))
    assert res.report["dense"]["score"] == pytest.approx(agreement(trained))
    assert torch.equal(mine[0].weight, make_net()[0].weight)  # loaded into the copy, not into mine


def test_the_users_code_raising_is_named_in_one_line(env):
    def broken_metric(model):
        raise RuntimeError("boom")

    with pytest.raises(HwpruneError, match=r"your score_fn `.*broken_metric in .*test_api.py` raised RuntimeError: "
                                           r"boom"):
        _prune(env, score_fn=broken_metric)


def test_an_example_input_of_the_wrong_shape_is_one_sentence(env):
    with pytest.raises(HwpruneError, match=r"the model rejects input shape \(1, 3, 16, 16\)"):
        hwprune.prune(make_net(), torch.zeros(1, 3, 16, 16), device=env["device"], lut=env["lut"], speedup=1.2,
                      score_fn=agreement)


def test_a_model_that_is_not_a_module_is_one_sentence(env):
    with pytest.raises(HwpruneError, match="model must be a torch.nn.Module"):
        hwprune.prune(object(), device=env["device"], speedup=1.2, score_fn=agreement)


def test_import_hwprune_is_quick_and_lazy():
    import subprocess
    import sys

    code = ("import sys, hwprune; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(hwprune.prune) and callable(hwprune.profile); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_float64_models_bad_bn_data_and_an_unfinished_lut_are_one_sentence(env, tmp_path):
    with pytest.raises(HwpruneError, match=r"^the model's weights are float64; .*model.float\(\)"):
        _prune(env, model=make_net().double())
    with pytest.raises(HwpruneError, match=r"^example_input is float64"):
        hwprune.prune(make_net(), torch.zeros(1, 1, 16, 16, dtype=torch.float64), device=env["device"],
                      max_params="50%", score_fn=agreement)
    if Path("/usr/share/datasets/fashion-mnist").is_dir():   # installed by `make data`
        with pytest.raises(HwpruneError, match=r"^example_input says the model takes 1x16x16 inputs .* the "
                                               r"fashion-mnist images are 1x28x28"):
            _prune(env, data="fashion-mnist")
    with pytest.raises(HwpruneError, match=r"^bn_data yields batches shaped \(8, 3, 16, 16\); the model takes "
                                           r"\(N, 1, 16, 16\)"):
        _prune(env, bn_data=[torch.zeros(8, 3, 16, 16)])
    from hwprune.api import lut_show

    empty = LatencyLUT()
    empty.meta["models"] = {}
    with pytest.raises(HwpruneError, match="holds no profiled model yet"):
        lut_show(empty)


def test_multi_head_attention_exports_and_a_failed_export_prints_no_graph(capfd):
    import numpy as np
    import onnxruntime as ort

    from hwprune.export import export_onnx

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = nn.MultiheadAttention(16, 2, batch_first=True), nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0])

    # in eval mode torch runs its fused attention, which has no ONNX op; the export turns it off
    model, x = Attention().eval(), torch.randn(1, 5, 16)
    onnx = export_onnx(model, x)
    assert torch.backends.mha.get_fastpath_enabled()   # and back on afterwards
    got = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)

    class Svd(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x)[1]

    capfd.readouterr()
    with pytest.raises(HwpruneError, match=r"^ONNX export failed \(at operator 'aten::linalg_svd'\)"):
        export_onnx(Svd(), torch.zeros(1, 4, 4))
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err   # the exporter's own dump of the whole graph


def test_a_forward_with_keyword_only_arguments_exports_and_prunes():
    class KwOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, x, *, temperature=1.0):
            return self.l2(torch.relu(self.l1(x))) / temperature

    from hwprune.export import export_onnx

    assert export_onnx(KwOnly().eval(), torch.zeros(1, 16))   # the exporter alone used to fail here
    res = hwprune.prune(KwOnly().eval(), torch.zeros(1, 16), device="x86-cpu-ort", max_params="60%",
                        score_fn=lambda m: 0.5, agent="uniform", max_evaluations=3)
    assert res.model(torch.zeros(2, 16)).shape == (2, 4) and res.plan.widths["l1"] < 32


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc, self.aux = nn.Linear(8, 10), nn.Linear(8, 2)

    def forward(self, x):
        z = self.body(x)
        return self.fc(z), self.aux(z)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs `make data`")
def test_data_with_a_model_that_returns_no_logits_tensor_is_one_sentence_before_any_measuring(env, tmp_path):
    said: list[str] = []
    with pytest.raises(HwpruneError, match=r"^the model returns a tuple, but data= scores and trains it on class "
                                           r"scores, one \(batch, classes\) tensor: return the logits"):
        hwprune.prune(_TupleOut().eval(), torch.zeros(1, 1, 28, 28), device=env["device"], max_params="50%",
                      data="fashion-mnist", agent="uniform", max_evaluations=2, out=str(tmp_path / "run"), log=said.append)
    assert not (tmp_path / "run").exists() and not any("dense" in m for m in said)


def test_a_finetune_fn_that_returns_its_wrapper_gives_the_wrapped_model(env):
    # DataParallel's .module, torch.compile's _orig_mod: the architecture is the same (nu10)
    got = _prune(env, finetune_fn=lambda m, t: nn.DataParallel(light_finetune(m, t)))
    assert not isinstance(got.model, nn.DataParallel) and got.model(X).shape == (8, 4)

    class Compiled(nn.Module):   # what torch.compile returns holds the module as _orig_mod
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

        def forward(self, x):
            return self._orig_mod(x)

    got = _prune(env, finetune_fn=lambda m, t: Compiled(m))
    assert not isinstance(got.model, Compiled)


def test_an_example_input_without_a_batch_or_beside_another_input_shape_is_one_sentence(env):
    with pytest.raises(HwpruneError, match=r"the first dimension of an example input is the batch: "
                                           r"torch.zeros\(1, C, H, W\)$"):
        hwprune.prune(make_net(), torch.zeros(1, 16, 16), device=env["device"], max_params="50%", score_fn=agreement)
    # it was silently ignored: the example's shape was profiled (nu10)
    with pytest.raises(HwpruneError, match=r"^example_input is shaped \(1, 1, 16, 16\) but input_shape= says "
                                           r"\(1, 8, 8\)"):
        _prune(env, input_shape=(1, 8, 8))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs `make data`")
def test_data_with_fewer_class_scores_than_classes_is_one_sentence_before_any_measuring(env, tmp_path):
    # 7 scores for 10 classes ran the whole search, then the recipe's loss died on "Target 8 is
    # out of bounds" (nu11)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 7)).eval()
    said: list[str] = []
    with pytest.raises(HwpruneError, match=r"^the model gives 7 class scores, but fashion-mnist has 10 classes: "
                                           r"build it with 10 outputs"):
        hwprune.prune(model, torch.zeros(1, 1, 28, 28), device=env["device"], max_params="50%",
                      data="fashion-mnist", agent="uniform", max_evaluations=2, out=str(tmp_path / "run"), log=said.append)
    assert not (tmp_path / "run").exists() and not any("dense" in m for m in said)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs `make data`")
def test_an_untrained_dense_model_is_said_before_the_search():
    # a file factory without --weights pruned a random network to "10.00%" without a word (nu11)
    from hwprune.task import Task

    task, said = Task(data_spec="fashion-mnist"), []
    untrained = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    torch.nn.init.zeros_(untrained[-1].weight)   # every image scores one class: chance
    task.check_trained(untrained.eval(), said.append)
    assert len(said) == 1 and re.match(r"warning: the dense model scores \d+\.\d% on 1000 validation images of "
                                       r"fashion-mnist, about chance for 10 classes: it looks untrained", said[0])
    from hwprune.models.spec import ModelSpec   # the committed resnet20 checkpoint scores ~92%
    from hwprune.pruning import default_weights

    trained = ModelSpec("resnet20", weights=default_weights("resnet20", "fashion-mnist")).build()
    said.clear()
    task.check_trained(trained.eval(), said.append)
    assert said == []
