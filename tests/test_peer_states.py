"""bench/peer_states.py: peer cells' architectures rebuilt from their recorded widths, and ratios
taken per (process, machine state) cell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import peer  # noqa: E402  (bench/ scripts import their siblings by name)
import peer_states  # noqa: E402
from test_peer_bench import resnet20  # noqa: E402,F401  (the same dense resnet20 fixture)


def test_torch_pruning_conv_widths_map_onto_groups_and_rebuild_the_same_cut(resnet20, tmp_path):
    dense, x = resnet20
    weights = tmp_path / "dense.pt"
    torch.save(dense.state_dict(), weights)
    tp_cut = peer.conv_widths(peer.tp_prune(dense, x, "l1-global", 0.6))   # uneven widths
    rows = {"tp-l1-global@30pct/s0": {"method": "torch-pruning", "config": "l1-global", "budget": 0.3,
                                      "status": "met", "widths": list(tp_cut), "test_acc": 0.8},
            "tp-l1-global@30pct/s1": {"method": "torch-pruning", "config": "l1-global", "budget": 0.3,
                                      "status": "met", "widths": list(tp_cut), "test_acc": 0.9},
            "hwprune-standard@30pct/s0": {"method": "hwprune", "config": "standard", "budget": 0.3,
                                          "status": "certified", "widths": {"conv1": 5, "layer3.1.conv1": 7}},
            "tp-l1-local-r8@30pct/s0": {"method": "torch-pruning", "config": "l1-local-r8", "budget": 0.3,
                                        "status": "cannot meet", "widths": list(tp_cut)}}
    found = {"recipe": {"model": "resnet20"}, "dense": {"weights": str(weights)}, "rows": rows}
    dense_onnx, archs = peer_states.architectures(found, x)
    assert dense_onnx[:4] and len(archs) == 2          # the two seeds share one cut; "cannot meet" is left out
    shared = next(a for a in archs.values() if len(a["rows"]) == 2)
    assert sorted(shared["rows"]) == ["tp-l1-global@30pct/s0", "tp-l1-global@30pct/s1"]


def test_recorded_widths_that_do_not_fit_the_model_are_an_error():
    with pytest.raises(SystemExit, match="3 conv widths recorded, the dense model has 2"):
        peer_states.group_widths_of({"config": "l1-local", "widths": [1, 2, 3]}, ["a", "b"], ["a"])


def _timing(samples, probes, labels):
    return {"samples_ms": samples, "state_probe_us": probes, "sample_states": labels}


def test_cells_split_a_process_by_state_and_summarise_per_method():
    n = 60
    two_states = {"dense": _timing([1.0] * n + [2.0] * n, [20.0, 50.0], [0] * n + [1] * n),
                  "a0": _timing([0.25] * n + [0.8] * n, [20.0, 50.0], [0] * n + [1] * n)}
    one_state = {"dense": _timing([1.0] * n, [21.0], [0] * n), "a0": _timing([0.28] * n, [21.0], [0] * n)}
    found = peer_states.cells([two_states, one_state], ["a0"], "p50")
    assert [(c["process"], round(c["probe_us"]), round(c["x_dense"]["a0"], 2)) for c in found] == \
        [(0, 20, 0.25), (0, 50, 0.4), (1, 21, 0.28)]
    peer_file = {"rows": {"k": {"method": "hwprune", "config": "standard", "budget": 0.3, "test_acc": 0.87,
                                "session_x_dense": 0.2}}}
    (row,) = peer_states.summarise(peer_file, {"a0": {"rows": ["k"]}}, found)
    assert row["x_dense_worst"] == pytest.approx(0.4) and row["x_dense_best"] == pytest.approx(0.25)
    assert row["within_share"] == pytest.approx(2 / 3) and row["seeds"] == 1
