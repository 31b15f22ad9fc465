"""Profiling over SSH: ship a bundle and this package to a device, stream its rows back, resume on drops.

``profile_remote`` packs the bundle, the ``profilers`` package source and the device config
into one tar.gz, so the device needs only Python with numpy and onnxruntime (or TensorRT).
It copies the archive with ``scp`` into ``remote.workdir/<hash>/`` (once: a marker file
says an identical upload is complete), runs ``python -m profilers run`` there over ``ssh``
and reads the ``HWPRUNE-ROW`` lines as they come, appending each new row to a local
results file (flushed and fsynced). The device keeps its own results file beside the
bundle and re-emits it on every run, so when the connection drops (ssh exits 255) a retry
measures only what is missing and loses nothing. The device's file continues the local one:
a call whose local results file is empty starts the device's afresh.

Host keys are always checked (``StrictHostKeyChecking=yes``, ``BatchMode=yes``): add the
device to ``known_hosts`` (``ssh-keyscan``) or name a file in ``remote.known_hosts``.

Example:
    >>> from profilers.config import load_device_config          # doctest: +SKIP
    >>> from profilers.remote import profile_remote
    >>> cfg = load_device_config("jetson-orin-trt-fp16")
    >>> rows = profile_remote("bundle", cfg, "results.jsonl", on_row=print)
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import posixpath
import shlex
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from profilers.bundle import MANIFEST_NAME, RESULTS_NAME, ResultsFile, read_bundle
from profilers.config import DeviceConfig, RemoteConfig
from profilers.errors import RemoteError
from profilers.scratch import scratch

log = logging.getLogger(__name__)

ROW_PREFIX = "HWPRUNE-ROW "  # must match profilers.__main__.ROW_PREFIX (not imported: keeps this module light)
PACKAGE_DIR = Path(__file__).resolve().parent
MARKER_NAME = ".complete"
SSH_LOST = 255  # ssh's own exit status for "connection failed or lost"

# ssh's messages for failures that a retry cannot fix.
_FATAL_SSH_MESSAGES = ("host key verification failed", "permission denied", "could not resolve hostname",
                       "no such file or directory", "bad configuration option", "remote host identification has changed")

# Bound on the short bookkeeping commands (mkdir, unpack); the copy and the run are bounded
# by ServerAlive* instead, since their length depends on the bundle.
_SHORT_COMMAND_S = 120.0


class _Lost(Exception):
    """ssh exited 255: the connection failed or dropped."""

    def __init__(self, line: str, fatal: bool):
        super().__init__(line)
        self.line = line
        self.fatal = fatal


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _check(proc_rc: int, stderr: str, what: str, host: str) -> None:
    if proc_rc == 0:
        return
    line = _last_line(stderr)
    if proc_rc == SSH_LOST:
        raise _Lost(line or "ssh exited with status 255",
                    fatal=any(m in line.lower() for m in _FATAL_SSH_MESSAGES))
    raise RemoteError(f"{what} failed on {host} (exit {proc_rc}): {line or 'no error message'}")


class _Ssh:
    """Builds ssh/scp command lines for one RemoteConfig."""

    def __init__(self, remote: RemoteConfig):
        self.r = remote
        # ssh says "Permission denied (publickey)" for a key file that is not there, the line a
        # wrong key gives: name the missing file instead
        for field, path in (("identity_file", remote.identity_file), ("known_hosts", remote.known_hosts)):
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise RemoteError(f"remote.{field} {path} does not exist (device {remote.host})")

    def options(self) -> list[str]:
        r = self.r
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={r.connect_timeout_s}", "-o", "ConnectionAttempts=1",
                # A dead link (board rebooted, cable pulled) becomes exit 255 within ~30 s
                # instead of a read that never returns.
                "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if r.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={os.path.expanduser(r.known_hosts)}"]
        if r.identity_file:
            opts += ["-i", os.path.expanduser(r.identity_file), "-o", "IdentitiesOnly=yes"]
        return opts

    @property
    def where(self) -> str:
        return f"{self.r.host}:{self.r.port}"

    def ssh(self, command: str) -> list[str]:
        user = ["-l", self.r.user] if self.r.user else []
        return ["ssh", *self.options(), "-p", str(self.r.port), *user, "-T", self.r.host, command]

    def scp(self, local: str, remote_path: str) -> list[str]:
        host = f"[{self.r.host}]" if ":" in self.r.host else self.r.host
        dest = f"{self.r.user}@{host}" if self.r.user else host
        return ["scp", "-q", *self.options(), "-P", str(self.r.port), local, f"{dest}:{remote_path}"]


def check_reachable(config: DeviceConfig) -> None:
    """One quick ``ssh HOST true`` before any local work: an unreachable host, a refused port or an
    unknown host key is one line now, not after minutes of exporting and three retries."""
    if config.remote is None:
        return
    ssh = _Ssh(config.remote)
    try:
        _run_short(ssh.ssh("true"), ssh, "ssh", timeout_s=config.remote.connect_timeout_s + 10)
    except _Lost as lost:
        raise RemoteError(f"cannot reach {config.name} at {ssh.where}: {lost.line}") from None


def _remote_dir_expr(workdir: str) -> str:
    """A shell word for ``workdir``; ``~`` becomes the login directory, where ssh commands start."""
    if workdir in ("~", "~/"):
        return "."
    if workdir.startswith("~/"):
        return shlex.quote(workdir[2:])
    return shlex.quote(workdir)


def _package_files() -> list[tuple[str, Path]]:
    files = []
    for path in sorted(PACKAGE_DIR.rglob("*")):
        rel = path.relative_to(PACKAGE_DIR)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((posixpath.join("profilers", *rel.parts), path))
    return files


def pack_bundle(bundle_dir: str | os.PathLike[str], config: DeviceConfig, archive_path: str | os.PathLike[str]) -> str:
    """Write the upload archive (bundle, ``profilers`` source, device.json) and return its content hash.

    The hash covers every file's name and bytes, so a changed model, config or profiler
    version is uploaded (and measured) afresh, and an identical one is not uploaded again.
    """
    bundle = read_bundle(bundle_dir)
    device = config.to_dict()
    device.pop("remote", None)  # how to reach the device is no part of how to time on it
    members: list[tuple[str, bytes]] = [("device.json", (json.dumps(device, indent=2) + "\n").encode())]
    members.append((f"bundle/{MANIFEST_NAME}", (bundle.path / MANIFEST_NAME).read_bytes()))
    for item in bundle.items:
        path = bundle.file_path(item)
        if path.is_file():  # a missing file becomes an error row on the device, as locally
            members.append((posixpath.join("bundle", item.file), path.read_bytes()))
    members += [(name, path.read_bytes()) for name, path in _package_files()]

    digest = hashlib.sha256()
    for name, data in sorted(members):
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    with tarfile.open(archive_path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return digest.hexdigest()


def _run_short(argv: list[str], ssh: _Ssh, what: str, timeout_s: float) -> str:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s)
    except FileNotFoundError:
        raise RemoteError(f"'{argv[0]}' not found on this machine: install the OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise _Lost(f"{what} did not finish within {timeout_s:g} s", fatal=False) from None
    _check(proc.returncode, proc.stderr, what, ssh.r.host)
    return proc.stdout


def _ensure_uploaded(ssh: _Ssh, archive: str, digest: str) -> str:
    """Make sure ``workdir/<hash>`` holds the unpacked archive; returns its absolute path."""
    name = digest[:16]
    workdir = _remote_dir_expr(ssh.r.workdir)
    out = _run_short(ssh.ssh(f"mkdir -p {workdir} && cd {workdir} && pwd && "
                             f"if [ -f {name}/{MARKER_NAME} ]; then echo present; else echo absent; fi"),
                     ssh, "preparing the remote work folder", _SHORT_COMMAND_S)
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[-1] not in ("present", "absent"):
        raise RemoteError(f"unexpected answer from {ssh.r.host} while preparing {ssh.r.workdir}: {out.strip()[:200]!r}")
    root = lines[-2]
    target = posixpath.join(root, name)
    if lines[-1] == "present":
        log.info("bundle %s already on %s", name, ssh.r.host)
        return target
    remote_archive = posixpath.join(root, f"{name}.tar.gz")
    log.info("copying bundle %s to %s:%s", name, ssh.r.host, target)
    try:
        proc = subprocess.run(ssh.scp(archive, remote_archive), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise RemoteError("'scp' not found on this machine: install the OpenSSH client") from None
    if proc.returncode != 0:
        # scp reports lost connections and remote errors alike with status 1: say which.
        line = _last_line(proc.stderr) or f"scp exited with status {proc.returncode}"
        lost = proc.returncode == SSH_LOST or "connection" in line.lower() or "lost" in line.lower()
        if lost:
            raise _Lost(line, fatal=any(m in line.lower() for m in _FATAL_SSH_MESSAGES))
        raise RemoteError(f"copying the bundle to {ssh.r.host} failed: {line}")
    q_root, q_name = shlex.quote(root), shlex.quote(name)
    # The marker is written last, so a half-unpacked folder is never taken for a complete one.
    _run_short(ssh.ssh(f"cd {q_root} && rm -rf {q_name} && mkdir {q_name} && "
                       f"tar -xzf {q_name}.tar.gz -C {q_name} && rm -f {q_name}.tar.gz && "
                       f"touch {q_name}/{MARKER_NAME}"),
               ssh, "unpacking the bundle", _SHORT_COMMAND_S)
    return target


class _Stream:
    """Runs the remote profiler over ssh and yields its records as they arrive."""

    def __init__(self, argv: list[str], deadline: float | None):
        self.argv = argv
        self.deadline = deadline
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.timed_out = False
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "_Stream":
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
        except FileNotFoundError:
            raise RemoteError("'ssh' not found on this machine: install the OpenSSH client") from None
        # stderr is drained on its own thread so a chatty remote cannot fill the pipe and stall stdout.
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self._timer = None
        if self.deadline is not None:
            self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip("\n"))

    def _expire(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def records(self):
        for line in self.proc.stdout:
            if not line.startswith(ROW_PREFIX):
                continue  # anything else a login shell or library prints
            try:
                record = json.loads(line[len(ROW_PREFIX):])
            except ValueError:
                continue  # a line cut by a dropped connection; its row is re-emitted on retry
            if isinstance(record, dict):
                yield record

    def finish(self) -> int:
        rc = self.proc.wait()
        self._drain.join(timeout=5)
        return rc

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.proc.poll() is None:  # left early (on_row raised): end our ssh client
            self.proc.kill()
        self.proc.wait()
        self._drain.join(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()


def profile_remote(bundle_dir: str | os.PathLike[str], config: DeviceConfig,
                   results_path: str | os.PathLike[str],
                   on_row: Callable[[dict[str, Any]], None] | None = None, *,
                   timeout_s: float | None = None, backoff_s: float = 1.0) -> list[dict[str, Any]]:
    """Profile a bundle on ``config.remote`` over SSH and collect its records locally.

    Args:
        bundle_dir: a bundle written by ``profilers.bundle.write_bundle``.
        config: the device config to time with; its ``remote`` section says where.
        results_path: local JSON-lines file; each new ``row`` (deduplicated by key) and
            ``session`` record is appended, flushed and fsynced as it arrives. Error records
            are passed to ``on_row`` and returned but not stored.
        on_row: called with each new record. If it raises, the ssh client is ended and the
            exception propagates; a later call resumes where this one stopped.
        timeout_s: overall limit for this call (``None``: no limit beyond ssh keep-alives).
        backoff_s: wait before the first retry after a dropped connection; doubles per retry.

    Returns:
        The records new to ``results_path`` from this call, in arrival order.

    Raises:
        RemoteError: the host cannot be reached (after ``remote.retries`` retries), the host
            key is unknown, or the remote command fails (its last stderr line is quoted).
    """
    if config.remote is None:
        raise RemoteError(f"{config.source}: device config '{config.name}' has no 'remote' section")
    ssh = _Ssh(config.remote)
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    received: list[dict[str, Any]] = []
    with scratch("upload") as tmp, ResultsFile(results_path) as results:
        archive = os.path.join(tmp, "bundle.tar.gz")
        digest = pack_bundle(bundle_dir, config, archive)
        seen_keys, seen_sessions = results.keys(), results.sessions()
        failures = 0
        while True:
            rows_before = len(received)
            try:
                target = _ensure_uploaded(ssh, archive, digest)
                q = shlex.quote(target)
                # The device's results file resumes the local one: with nothing here yet (a new
                # `time` or `regress`, a profile whose journal was removed) it is started afresh,
                # else an identical bundle would get an earlier command's samples back.
                fresh = f"rm -f bundle/{RESULTS_NAME} && " if not seen_keys and not seen_sessions else ""
                command = (f"cd {q} && {fresh}PYTHONPATH={q}${{PYTHONPATH:+:$PYTHONPATH}} exec {config.remote.python} "
                           f"-m profilers run bundle --device device.json --results bundle/{RESULTS_NAME}")
                with _Stream(ssh.ssh(command), deadline) as stream:
                    for record in stream.records():
                        kind = record.get("type")
                        if kind == "row":
                            if record.get("key") in seen_keys:
                                continue
                            seen_keys.add(record["key"])
                            results.append(record)
                        elif kind == "session":
                            if record.get("session") in seen_sessions:
                                continue
                            seen_sessions.add(record.get("session"))
                            results.append(record)
                        elif kind == "error":
                            if any(r.get("type") == "error" and r.get("key") == record.get("key") for r in received):
                                continue
                        else:
                            continue
                        received.append(record)
                        if on_row is not None:
                            on_row(record)
                    rc = stream.finish()
                    if stream.timed_out:
                        raise RemoteError(f"profiling on {ssh.where} did not finish within {timeout_s:g} s; "
                                          "finished rows are kept, run again to resume")
                    _check(rc, "\n".join(stream.stderr_tail), "the remote profiler", ssh.r.host)
                return received
            except _Lost as lost:
                if deadline is not None and time.monotonic() >= deadline:
                    raise RemoteError(f"profiling on {ssh.where} did not finish within {timeout_s:g} s; "
                                      "finished rows are kept, run again to resume") from None
                # Count only failures in a row: a flaky link that still delivers rows keeps going.
                failures = 1 if len(received) > rows_before else failures + 1
                if lost.fatal or failures > config.remote.retries:
                    if received:
                        raise RemoteError(f"lost the SSH connection to {ssh.where} after {len(received)} new "
                                          f"records: {lost.line}; run again to resume") from None
                    raise RemoteError(f"cannot reach {ssh.where} over SSH: {lost.line}") from None
                wait_s = backoff_s * 2 ** (failures - 1)
                log.warning("SSH connection to %s lost (%s); retry %d of %d in %.1f s",
                            ssh.where, lost.line, failures, config.remote.retries, wait_s)
                time.sleep(wait_s)
