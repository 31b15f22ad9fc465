"""Scratch folders: removed after the job, and a killed job's swept by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from profilers.scratch import STALE_S, scratch, sweep


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_scratch_folder_is_gone_afterwards_even_when_the_job_fails(tmp_path):
    try:
        with scratch("measure", tmp_path) as work:
            (work / "bundle.onnx").write_bytes(b"x")
            raise RuntimeError("the job failed")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_killed_jobs_folder_is_swept_once_stale_and_a_live_ones_never(tmp_path):
    # SIGKILL runs no finally: its bundle stayed in /tmp for good (nu10)
    dead, old = _dead_pid(), time.time() - 2 * STALE_S
    killed = tmp_path / f"hwprune-measure-{dead}-abc123_x"
    fresh = tmp_path / f"hwprune-regress-lut-{dead}-def456"
    live = tmp_path / f"hwprune-time-{os.getppid()}-ghi789"
    other = tmp_path / "hwprune-notes"
    for d in (killed, fresh, live, other):
        d.mkdir()
        (d / "f").write_text("x")
    for d in (killed, live, other):
        os.utime(d, (old, old))
    assert sweep(tmp_path) == [killed]
    assert not killed.exists() and fresh.exists() and live.exists() and other.exists()
    # a new scratch folder sweeps first
    os.utime(fresh, (old, old))
    with scratch("time", tmp_path) as work:
        assert not fresh.exists() and work.name.startswith(f"hwprune-time-{os.getpid()}-")
