"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from profilers.errors import OutputError, ProfilerError


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], durable: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``durable=False`` skips the fsync: still atomic for readers, but a power cut may lose
    the file. Use it only for files that can be regenerated (bundle ONNX candidates).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        _chmod_by_umask(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# What an output of each kind looks like in its first bytes, to tell a file it may replace (an
# earlier output of the same command) from one a mistyped path would destroy (the LUT just read,
# the model just timed, a checkpoint).
_KINDS: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "json": ("a JSON file", lambda head: head.lstrip()[:1] in (b"{", b"[")),
    "onnx": ("an ONNX model", lambda head: head[:1] == b"\x08"),   # ModelProto field 1, ir_version
    "xml": ("an XML file", lambda head: head.lstrip()[:1] == b"<"),
    "torch": ("a PyTorch checkpoint", lambda head: head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"),
    "text": ("a text file", lambda head: b"\0" not in head and _utf8(head)),
}
_HEAD_BYTES = 512


def _utf8(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:   # a character cut at the end of the head is still text
        return err.start >= len(head) - 3
    return True


def _looks_like(head: bytes) -> str:
    """What an existing file seems to be, for the message that refuses to replace it."""
    if head[:4] == b"PAR1":
        return "a Parquet file (a LUT?)"
    for kind in ("json", "torch", "onnx", "xml", "text"):
        if _KINDS[kind][1](head):
            return _KINDS[kind][0]
    return "a binary file"


def check_writable(path: str | os.PathLike[str], flag: str, kind: str | None = None) -> None:
    """Refuse, before any work, an output file whose folder cannot be made or written.

    ``flag`` names the option in the message (``--json``). A missing folder is fine when its
    nearest existing ancestor is a writable folder (it will be made). With ``kind`` (a key of
    ``_KINDS``), an existing non-empty file is replaced only if it is of that kind: ``--json
    lut.parquet`` or ``--onnx weights.pt`` would destroy an input.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise ProfilerError(f"{flag} {path} is a folder; give a file path")
        folder = p.resolve().parent
        while not folder.exists():
            folder = folder.parent
        if kind is not None and p.is_file():
            with open(p, "rb") as f:
                head = f.read(_HEAD_BYTES)
            if head and not _KINDS[kind][1](head):
                raise ProfilerError(f"{flag} {path} already holds {_looks_like(head)}, not {_KINDS[kind][0]} as {flag} "
                                    "writes; refusing to overwrite it (give another path, or remove the file)")
    except OSError as err:  # e.g. a path under a folder this user cannot enter
        raise ProfilerError(f"{flag} {path}: {err.strerror or err}") from None
    check_folder_writable(folder, f"{flag} {path}")


def check_folder_writable(folder: Path, what: str) -> None:
    """Refuse an existing ``folder`` that is a file or where no file can be made; ``what`` (the
    option and its value) opens the message."""
    if not folder.is_dir():
        raise ProfilerError(f"{what}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ProfilerError(f"{what}: cannot write in {folder} (permission denied)")
    # Permission bits are not the whole answer (root passes them everywhere; a read-only mount,
    # /proc, a quota): creating a file is.
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hwprune-write-check-"):
            pass
    except OSError as err:
        raise ProfilerError(f"{what}: cannot write in {folder} ({err.strerror or err})") from None


def current_umask() -> int:
    """The process umask: from /proc where Linux has it, else by setting and restoring it (which
    another thread could observe for an instant)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_by_umask(path: str) -> None:
    """mkstemp makes 0600 files: give the file the mode an ordinary open would (0666 less the
    umask). A file system without permissions (vfat, some network shares) keeps its own."""
    import errno

    try:
        os.chmod(path, 0o666 & ~current_umask())
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write, durable)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_model_file(path: str | os.PathLike[str], what: str = "model file") -> bytes:
    """A model file's bytes, or one ``ModelFileError`` line naming the file and why it cannot be read."""
    from profilers.errors import ModelFileError

    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{what} not found: {path}") from None
    except OSError as err:
        raise ModelFileError(f"cannot read {path}: {err.strerror or err}") from None
