"""The run folder of ``hwprune prune --out DIR``: every file staged beside it, then put in place at once.

The files are written into a temporary folder next to ``DIR``; only when all of them are
complete does the folder take ``DIR``'s place (a rename), and an old run is removed after,
not before. A run that is killed or runs out of disk leaves the old folder or the new one,
never a mix: what a killed run leaves (``.DIR.staging-HOST-PID-*``, and ``.DIR.old-HOST-PID-*``
when it died between the swap's two renames) is never read, and the next run into ``DIR`` on
that host removes the one and puts the other back.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.plan import Plan
from profilers.errors import ProfilerError
from profilers.fileio import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_folder_writable,
                              current_umask)

RUN_FILES = ("report.json", "plan.json", "pruned.onnx", "pruned.pt", "baseline.json")
OLD_RUN_FILES = RUN_FILES + ("report.md", "config.json", "channels.png", "speedup.png", "search.csv")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that is a file, holds a run (without ``--overwrite``)
    or cannot be written."""
    try:
        if out.exists() and not out.is_dir():
            raise HwpruneError(f"--out {out} exists and is not a folder")
        if out.is_dir() and any((out / f).exists() for f in RUN_FILES) and not overwrite:
            raise HwpruneError(f"--out {out} already holds a run; pass --overwrite to replace it")
        parent = _existing_parent(out.parent)
    except OSError as err:  # e.g. under a folder this user cannot enter
        raise HwpruneError(f"--out {out}: {err.strerror or err}") from None
    try:
        check_folder_writable(parent, f"--out {out}")
    except ProfilerError as err:
        raise HwpruneError(str(err)) from None


def _existing_parent(p: Path) -> Path:
    p = p.resolve()
    while not p.exists():
        p = p.parent
    return p


def write_run(out: Path, *, plan: Plan, onnx: bytes, model: nn.Module, baseline: dict[str, Any],
              report: dict[str, Any], config: dict[str, Any]) -> None:
    """Write the run folder ``out`` all at once (see the module docstring)."""
    from hwprune.report import write_markdown, write_plots

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _recover_interrupted_swap(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{_owner()}-", dir=out.parent))
    except OSError as err:
        raise HwpruneError(f"cannot write the run folder beside {out}: {err.strerror or err}") from None
    try:
        plan.save(staging / "plan.json")
        atomic_write_bytes(staging / "pruned.onnx", onnx)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(staging / "pruned.pt", buf.getvalue())
        atomic_write_json(staging / "baseline.json", baseline)
        atomic_write_json(staging / "config.json", config)
        write_plots(report, staging)
        atomic_write_text(staging / "report.md", write_markdown(report))
        atomic_write_json(staging / "report.json", report)
        _apply_umask(staging)
        _swap_in(staging, out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise HwpruneError(f"cannot write the run folder {out}: {err.strerror or err}"
                           + (f" ({err.filename})" if err.filename else "")) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _owner() -> str:
    """``HOST-PID`` of this process, in staging folder names: another host's live run sharing the
    folder is never taken for a dead one."""
    import socket

    host = "".join(c for c in socket.gethostname() if c.isalnum()) or "host"
    return f"{host}-{os.getpid()}"


def _dead_here(owner: str) -> bool:
    """True when ``owner`` (``HOST-PID``) names a process of this host that no longer runs."""
    host, _, pid = owner.rpartition("-")
    if host != _owner().rpartition("-")[0] or not pid.isdigit() or len(pid) > 9:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _recover_interrupted_swap(out: Path) -> None:
    """Tidy what a run killed on this host left beside ``out``: its staging folder (removed), and,
    when it was killed between the two renames of the swap, the old run (put back in place)."""
    for kind in ("staging", "old"):
        for p in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            owner = p.name[len(f".{out.name}.{kind}-"):].rsplit("-", 1)[0]
            if not _dead_here(owner):
                continue
            if kind == "old" and not out.exists():
                os.rename(p, out)  # the finished run it was replacing
            else:
                shutil.rmtree(p, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    """Give the staging folder (mkdtemp makes it 0700) the user's umask; its files already have it
    (``atomic_write``)."""
    os.chmod(folder, 0o777 & ~current_umask())


def _swap_in(staging: Path, out: Path) -> None:
    """Put ``staging`` at ``out``: a rename when ``out`` is new or empty; otherwise the old run's files
    are moved aside, the new folder renamed into place, and other files the user kept there moved
    into it, so nothing of theirs is lost and no reader sees half a run."""
    if not out.exists():
        os.rename(staging, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{_owner()}-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)  # put the old run back
        raise
    for f in old.iterdir():  # the user's own files beside the old run stay in the folder
        if f.name not in OLD_RUN_FILES and not (out / f.name).exists():
            os.rename(f, out / f.name)
    shutil.rmtree(old, ignore_errors=True)
