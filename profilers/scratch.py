"""Scratch folders of a measuring job: removed when it ends, and by a later job when it was killed.

A job killed with SIGKILL (the OOM killer, ``kill -9``, a CI timeout) runs no ``finally``, so its
bundle of ONNX candidates stays in the temporary folder; a profile of a 224×224 model leaves
hundreds of megabytes there. Each folder's name carries the process id that made it, and every
new scratch folder first removes this user's folders whose process is gone.

Example:
    >>> with scratch("measure") as work:   # doctest: +SKIP
    ...     (work / "bundle").mkdir()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PREFIX = "hwprune-"
_NAME = re.compile(rf"^{PREFIX}[a-z][a-z-]*-(\d+)-[A-Za-z0-9_]+$")
# A folder is swept only this long after its last change: another pid namespace sharing this
# temporary folder (a container) has process ids this one cannot see, and its live jobs'
# folders must not look abandoned the moment they are made.
STALE_S = 600.0


@contextlib.contextmanager
def scratch(kind: str, root: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A new empty folder ``hwprune-KIND-PID-XXXX`` in ``root`` (the system's temporary folder),
    removed afterwards; abandoned ones are swept first (``sweep``)."""
    sweep(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep(root: str | os.PathLike[str] | None = None, now_s: float | None = None) -> list[Path]:
    """Remove this user's scratch folders in ``root`` whose process has ended and that have not
    changed for ``STALE_S``; returns what was removed. Never raises: sweeping is housekeeping."""
    removed = []
    now_s = time.time() if now_s is None else now_s
    try:
        entries = list(Path(root or tempfile.gettempdir()).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _NAME.match(p.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            st = p.lstat()
            mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
            if not p.is_dir() or p.is_symlink() or not mine or now_s - st.st_mtime < STALE_S:
                continue
        except OSError:
            continue
        if not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):   # someone else's process: alive
        return True
    return True
