"""Cutting SSH connections like a pulled cable, for the tests that check a remote run resumes.

Shared by test_remote_ssh.py (an x86 sshd) and test_arm_emulated.py (the emulated arm64 board).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def drop_connections(sshd_pid: int) -> int:
    """Cut every SSH connection: kill the server's per-connection sshd processes (ours, forked
    by the test's sshd), leaving the remote profiler running; returns how many were killed."""
    killed = 0
    todo = children(sshd_pid)
    while todo:
        pid = todo.pop()
        todo += children(pid)
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("sshd"):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed
