"""bench/peer.py (issue 23): its tuning logic, its copy of hwprune's recovery recipe, its table, its
bad-input errors, and (slow) a ``--quick`` run end to end, resumed."""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hwprune.data import idx_bytes

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import peer  # noqa: E402  (bench/ scripts import their siblings by name)

FAST_DEVICE_YAML = """\
name: test-cpu-peer
backend: onnxruntime
threads: 1
warmup: 5
min_repeats: 20
max_seconds: 0.1
channel_multiple: 8
statistic: p50
"""


# --- tuning logic --------------------------------------------------------------------------------

def test_bisect_finds_the_least_ratio_within_the_budget():
    calls = []

    def x_dense_at(r):  # latency falls linearly with the pruning ratio
        calls.append(r)
        return 1.0 - r

    out = peer.bisect_ratio(x_dense_at, 0.5, 0.9, 8)
    assert out["met"] and out["x_dense"] <= 0.5
    assert 0.5 <= out["ratio"] <= 0.5 + 0.9 / 2 ** 8 + 1e-9
    assert calls[0] == 0.9 and len(calls) == 9 and len(out["trail"]) == 9


def test_bisect_reports_cannot_meet_with_the_strongest_ratio_measured_once():
    out = peer.bisect_ratio(lambda r: 0.62, 0.5, 0.8, 8)
    assert out == {"met": False, "ratio": 0.8, "x_dense": 0.62, "trail": [[0.8, 0.62]]}


def test_strongest_ratio_takes_the_fewest_macs_at_the_least_ratio_and_skips_invalid_cuts():
    # Torch-Pruning prunes less again past some ratio (it skips groups it would empty), or fails.
    macs = {r: (1000 - int(r * 1000) if r <= 0.5 else 500) for r in peer.SCAN}
    macs[0.75] = None
    assert peer.strongest_ratio(macs.get) == (0.5, 500)
    with pytest.raises(peer.BenchError):
        peer.strongest_ratio(lambda r: None)


def test_measure_ratios_takes_the_median_ratio_over_processes(monkeypatch):
    import hwprune.processes
    from profilers.config import load_device_config

    def timing(ms):
        return {"p50_ms": ms, "samples_ms": [ms] * 40}

    runs = [{"dense": timing(d), "m": timing(m)} for d, m in ((1.0, 0.5), (2.0, 0.8), (1.0, 0.45))]
    monkeypatch.setattr(hwprune.processes, "measure_in_processes", lambda items, cfg, n: runs[:n])
    cfg = load_device_config("x86-cpu-ort")
    one = peer.measure_ratios([("dense", b""), ("m", b"")], cfg)["m"]
    assert one["x_dense"] == 0.5 and one["dense_ms"] == 1.0 and "x_dense_runs" not in one
    three = peer.measure_ratios([("dense", b""), ("m", b"")], cfg, 3)["m"]
    assert three["x_dense"] == 0.45 and three["x_dense_runs"] == [0.5, 0.4, 0.45]
    assert three["x_dense_ub"] >= three["x_dense"]


def test_tp_configs_cover_importance_ranking_and_rounding():
    assert set(peer.TP_CONFIGS.values()) == {(imp, g, r) for imp in ("l1", "taylor") for g in (False, True)
                                             for r in (None, 8)}


def test_tp_prune_applies_the_ratio_and_keeps_the_classifier(resnet20):
    dense, x = resnet20
    for config, widths in (("l1-local", {11}), ("l1-local-r8", {8})):
        model = peer.tp_prune(dense, x, config, 0.3)
        assert set(peer.conv_widths(model)[:7]) == widths  # the 16-channel stage
        assert model.fc.out_features == 10 and model(x).shape == (1, 10)
    assert peer.conv_widths(peer.tp_prune(dense, x, "l1-global", 0.0)) == peer.conv_widths(dense)


# --- the recovery recipe -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Synthetic Fashion-MNIST files: each class lights one row."""
    from hwprune.task import Datasets

    root = tmp_path_factory.mktemp("peer-data")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 640), ("t10k", 128)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28))
        images[np.arange(n), 2 + 2 * labels, :] += 150
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.clip(images, 0, 255))))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return Datasets.load(f"fashion-mnist:{root}")


@pytest.fixture(scope="module")
def resnet20():
    from hwprune.models.spec import ModelSpec

    torch.manual_seed(0)
    return ModelSpec("resnet20", (1, 28, 28), 10).build(), torch.zeros(1, 1, 28, 28)


def test_finetune_standard_is_hwprune_prune_finetune_standard(tiny_data, resnet20):
    """The bench's recovery of a cut gives the weights hwprune's own ``--finetune standard`` gives it."""
    from hwprune.groups import prune_to_widths
    from hwprune.proxy import AccuracyProxy
    from hwprune.task import RecoverySettings, Task

    dense, x = resnet20
    widths = {"conv1": 8, "layer2.0.conv1": 13, "layer3.1.conv1": 21}
    # hwprune: the search's winner as the proxy scored it (Task.objective's proxy), then Task.recover
    proxy = AccuracyProxy(dense, x, tiny_data.train, tiny_data.val, threads=1)
    kept = proxy.keep_indices(widths)
    settings = RecoverySettings("standard", 1, 0.05, 128, 3, "l1", False, 4.0, 0.9, 8, False)
    ours = Task(data=tiny_data).recover(dense, proxy.pruned_model(widths), kept, widths, x, settings,
                                        lambda _m: None).model
    # the bench: the same channels cut by hand (no BN re-estimation), then finetune_standard
    raw = prune_to_widths(copy.deepcopy(dense), x, {}, keep={k: v for k, v in kept.items() if k in widths})
    theirs, info = peer.finetune_standard(raw, tiny_data, x, epochs=1, lr=0.05, batch_size=128, seed=3)
    assert len(info["history"]) == 1 and info["seconds"] > 0
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


# --- the table ---------------------------------------------------------------------------------------

def _state(rows: list[dict]) -> dict:
    return {"recipe": {"model": "resnet20"}, "machine": {"cpu": "Test CPU", "cores": 2}, "updated": "2026-12-01",
            "dense": {"test_acc": 0.9257, "params": 272186, "macs": 31021952}, "session": {"dense_ms": 0.4},
            "rows": {f"r{i}": r for i, r in enumerate(rows)}}


def test_summary_table_means_over_seeds_and_says_what_failed():
    tp = dict(method="torch-pruning", config="l1-local", budget=0.5, status="met", met_budget=True,
              params=40000, macs=5_000_000, wall_s=100.0, session_met=True)
    rows = [dict(tp, seed=0, test_acc=0.90, session_x_dense=0.45),
            dict(tp, seed=1, test_acc=0.92, session_x_dense=0.47),
            dict(tp, config="l1-local-r8", seed=0, status="cannot meet", met_budget=False, test_acc=None,
                 session_x_dense=0.61, session_met=False),
            dict(method="hwprune", config="agp", budget=0.5, seed=0, status="refused", certified=False, wall_s=5.0,
                 error="budget below the smallest architecture"),
            dict(tp, seed=9, test_acc=0.10, session_x_dense=0.1)]  # not a requested seed
    s = peer.Settings(["resnet20"], [0.5], [0, 1], list(peer.TP_CONFIGS), ["agp"])
    text = peer.summary_table(_state(rows), s, "bench/peer.py --seeds 0,1")
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert len(lines) == 4  # header + 3 (method, budget) rows
    first = lines[1].split(" | ")
    assert "L1, local, no rounding" in first[0] and first[2] == "2" and first[3] == "91.00 ± 1.41"
    assert first[4] == "0.460 ± 0.014" and "met 2/2, in session 2/2" in first[-1]
    assert any("cannot meet" in ln and "0.610" in ln for ln in lines)
    assert any("`--finetune agp` (default)" in ln and "refused" in ln and "certified 0/1" in ln for ln in lines)
    assert "92.57%" in text and "Test CPU" in text and "bench/peer.py --seeds 0,1" in text


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--models", "nope"], ["--budgets", "1.0"], ["--budgets", "0.5,0"],
                                  ["--budgets", "half"], ["--seeds", "a"], ["--configs", "l3-local"],
                                  ["--recoveries", "swd"], ["--importances", "l3"], ["--steps", "0"], ["--processes", "0"],
                                  ["--weights", "resnet20=/no/file"], ["--no-such-flag"],
                                  ["--device", "no-such-device"]])
def test_bad_input_is_one_line_and_exit_2(args, capsys, tmp_path):
    assert peer.main([*args, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_importance_cells_name_their_criterion_and_pass_it_to_hwprune(tmp_path):
    s = peer.parse_args(["--importances", "l1,taylor", "--results", str(tmp_path)])
    assert s.importances == ["l1", "taylor"]
    assert peer.hwprune_config("agp", "l1") == "agp" and peer.hwprune_config("standard", "taylor") == "standard-taylor"
    assert peer.label("hwprune", "standard-taylor") == "hwprune, `--finetune standard`, `--importance taylor`"
    assert peer.label("hwprune", "agp") == "hwprune, `--finetune agp` (default)"


def test_bad_input_exit_code_from_the_command_line():
    proc = subprocess.run([sys.executable, str(BENCH / "peer.py"), "--budgets", "1.5"], capture_output=True,
                          text=True, env=_env())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "between 0 and 1" in proc.stderr


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


# --- a real --quick run --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")
def test_quick_run_measures_every_row_and_resumes(tmp_path):
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE_YAML)
    cmd = [sys.executable, str(BENCH / "peer.py"), "--quick", "--device", str(device), "--results", str(tmp_path),
           "--configs", "l1-local", "--recoveries", "standard"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((tmp_path / "peer_resnet20_quick.json").read_text())
    rows = state["rows"]
    assert sorted(rows) == ["hwprune-standard@50pct/s0", "tp-l1-local@50pct/s0"]
    d = state["dense"]
    tp, tune = rows["tp-l1-local@50pct/s0"], state["tuning"]["l1-local@50pct"]
    assert tp["status"] in ("met", "cannot meet") and 0 < tp["ratio"] < 1 and tp["params"] < d["params"]
    assert tp["macs"] < d["macs"] and 0 < tp["tuning_x_dense"] < 1.5 and Path(tp["onnx"]).is_file()
    assert (tp["test_acc"] is not None) == tp["met_budget"] == (tp["tuning_x_dense"] <= 0.5)
    assert len(tune["steps"]) == (1 + 3 if tune["met"] else 1)  # --quick: 3 bisection steps
    assert all(s["ms"] > 0 and s["dense_ms"] > 0 and s["x_dense"] == s["ms"] / s["dense_ms"] for s in tune["steps"])
    hw = rows["hwprune-standard@50pct/s0"]
    assert hw["status"] in ("certified", "not certified", "refused"), hw.get("error")
    assert "--speedup 2 --seed 0 --finetune standard --finetune-epochs 2 --lr 0.05" in hw["command"]
    measured = [k for k, r in rows.items() if r.get("onnx")]
    assert state["session"]["keys"] == sorted(measured) and state["session"]["dense_ms"] > 0
    assert all(rows[k]["session_x_dense"] > 0 and "session_met" in rows[k] for k in measured)
    if hw["status"] != "refused":
        assert 0 <= hw["test_acc"] <= 1 and hw["params"] < d["params"] and isinstance(hw["certified"], bool)
    assert "| Torch-Pruning, L1, local, no rounding | 50% | 1 |" in proc.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "peer_resnet20_quick.json").read_text())["rows"] == rows  # nothing rerun
