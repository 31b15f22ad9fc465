"""The run folder is written all at once: the old run or the new one, never a mix; the user's umask."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hwprune.errors import HwpruneError
from hwprune.plan import Plan
from hwprune.rundir import RUN_FILES, check_out_dir, write_run

REPORT = {"model": "m", "device": "d", "agent": "uniform",
          "budget": {"latency_ms": 1.0, "statistic": "p50"},
          "dense": {"accuracy": 0.9, "latency_ms": {"p50": 2.0, "p90": 2.1}, "params": 10, "macs": 100},
          "pruned": {"accuracy": 0.8, "latency_ms": {"p50": 1.0, "p90": 1.1}, "params": 5, "macs": 50,
                     "predicted_latency_ms": 0.9, "channels": {"g": [4, 2]}},
          "certified": True, "certificate": {"statistic": "p50", "upper_bound_ms": 0.95, "budget_ms": 1.0,
                                             "rounds": []},
          "speedup": {"macs": 2.0, "predicted": 2.1, "measured": 2.0},
          "search": {"evaluations": 3, "seconds": 1.0}, "finetune": {"strategy": "none", "seconds": 0.0},
          "reproduce": "hwprune prune ..."}


def _write(out, tag="new", **kw):
    plan = Plan("m", [1, 1, 4, 4], 10, "l1", {"g": 4}, {"g": [0, 1]})
    write_run(out, plan=plan, onnx=b"onnx-" + tag.encode(), model=torch.nn.Linear(2, 2),
              baseline={"tag": tag}, report={**REPORT, "tag": tag}, config={"tag": tag}, **kw)


def test_a_new_folder_gets_every_file_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _write(tmp_path / "run")
    finally:
        os.umask(old)
    out = tmp_path / "run"
    assert set(RUN_FILES) <= {p.name for p in out.iterdir()}
    assert oct((out / "report.json").stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_overwriting_replaces_the_run_and_keeps_the_users_own_files(tmp_path):
    out = tmp_path / "run"
    _write(out, "old")
    (out / "notes.txt").write_text("mine")
    _write(out, "new")
    assert json.loads((out / "baseline.json").read_text()) == {"tag": "new"}
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failure_while_writing_leaves_the_old_run_whole(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _write(out, "old")

    def disk_full(report, folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hwprune.report.write_plots", disk_full)
    with pytest.raises(HwpruneError, match="cannot write the run folder .*No space left on device"):
        _write(out, "new")
    assert json.loads((out / "baseline.json").read_text()) == {"tag": "old"}
    assert (out / "pruned.onnx").read_bytes() == b"onnx-old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_out_that_is_a_file_or_holds_a_run_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(HwpruneError, match="is not a folder"):
        check_out_dir(tmp_path / "f", overwrite=True)
    with pytest.raises(HwpruneError, match="f is a file, not a folder"):
        check_out_dir(tmp_path / "f" / "run", overwrite=True)
    _write(tmp_path / "run")
    with pytest.raises(HwpruneError, match="--overwrite"):
        check_out_dir(tmp_path / "run", overwrite=False)
    check_out_dir(tmp_path / "run", overwrite=True)


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    from hwprune.rundir import _owner

    host = _owner().rpartition("-")[0]
    stale = tmp_path / f".run.staging-{host}-{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "plan.json").write_text("{}")
    live = tmp_path / f".run.staging-{host}-{os.getpid()}-xyz"  # a run still writing: left alone
    live.mkdir()
    elsewhere = tmp_path / f".run.staging-otherhost-{dead.stdout.strip()}-abc"  # another host's: left alone
    elsewhere.mkdir()
    _write(tmp_path / "run")
    assert not stale.exists() and live.exists() and elsewhere.exists()


def test_a_run_killed_between_the_swaps_two_renames_gets_its_old_run_back(tmp_path):
    import subprocess
    import sys

    from hwprune.rundir import _owner

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = _owner().rpartition("-")[0]
    _write(tmp_path / "run", "old")
    (tmp_path / "run").rename(tmp_path / f".run.old-{host}-{dead}-abc")  # killed right after the first rename
    _write(tmp_path / "other")  # another folder's run: the old one is not touched
    assert not (tmp_path / "run").exists()
    _write(tmp_path / "run", "new")  # the next run into run/ puts the old one back, then replaces it
    assert json.loads((tmp_path / "run" / "baseline.json").read_text()) == {"tag": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "run"]


@pytest.mark.parametrize("kind, earlier", [("json", b'  {"a": 1}'), ("onnx", b"\x08\x08\x12\x07pytorch"),
                                            ("xml", b"<?xml version"), ("torch", b"PK\x03\x04rest"),
                                            ("text", b"| a | b |\n")])
def test_an_output_replaces_an_earlier_one_of_its_kind_and_refuses_another(tmp_path, kind, earlier):
    # a typo'd output path must not destroy the LUT, model or checkpoint it names (nu11)
    from profilers.errors import ProfilerError
    from profilers.fileio import check_writable

    (tmp_path / "same").write_bytes(earlier)
    (tmp_path / "empty").write_bytes(b"")
    check_writable(tmp_path / "same", "--out", kind)
    check_writable(tmp_path / "empty", "--out", kind)
    check_writable(tmp_path / "new", "--out", kind)
    (tmp_path / "lut").write_bytes(b"PAR1\x15\x04\x00binary")
    with pytest.raises(ProfilerError, match=r"--out .*lut already holds a Parquet file \(a LUT\?\), not .* refusing"):
        check_writable(tmp_path / "lut", "--out", kind)


def test_the_certificate_line_checks_every_limit_beside_the_latency_one():
    # --speedup 2 --max-params 20% said nothing of the params; --max-memory nothing at all (nu12)
    from hwprune.report import certificate_text, write_markdown

    r = json.loads(json.dumps(REPORT))
    r["budget"].update(max_params=26227.8, max_memory_bytes=40000.0, as_given={"max_params": "20%"},
                       user=[{"function": "bud.py:total", "limit": 150.0}])
    r["pruned"].update(params=21699, budget_values={"params": 21699.0, "peak_activation_bytes": 32768.0,
                                                    "user:total": 144.0})
    verdict, detail = certificate_text(r)
    assert verdict == "yes"
    assert detail.endswith("; params 21,699 <= 26,227; peak activation memory 32,768 bytes <= 40,000 bytes; "
                           "bud.py:total 144 <= 150")
    assert "params <= 26,227 (20% of dense)" in write_markdown(r)
