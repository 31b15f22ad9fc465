"""Profiling over a real SSH connection: a private OpenSSH server on 127.0.0.1, host keys checked.

Each test module run starts ``sshd`` on a free port with its own host key, client key,
``authorized_keys`` and ``known_hosts`` in a temporary folder; the "device" is this machine,
with ``sys.executable`` as its Python. Tests skip when ``sshd``/``ssh``/``ssh-keygen`` are
missing (``make test-deps`` installs them) and are marked ``ssh``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from profilers.bundle import write_bundle
from profilers.config import from_dict
from profilers.errors import ProfilerError, RemoteError
from profilers.remote import profile_remote
from ssh_drop import drop_connections as _drop_connections

# The emulated ARM board's tool starts its sshd the same way: one free-port and wait-for-listen helper.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from arm_env import _free_port, _wait_listening  # noqa: E402

pytestmark = pytest.mark.ssh

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
if not (SSHD and shutil.which("ssh") and shutil.which("ssh-keygen") and shutil.which("scp")):
    pytest.skip("needs OpenSSH (sshd, ssh, scp, ssh-keygen): make test-deps", allow_module_level=True)

# Every item is timed for exactly this long (the spread never converges to the 1e-9 target)
# and alone in its batch, so a test can act between two rows of a run.
ITEM_S = 0.25
TIMING = {"warmup": 1, "min_repeats": 5, "rel_ci": 1e-9, "max_seconds": ITEM_S / 3, "cv_threshold": 1000.0,
          "interleave_batch": 1}
KEYS = ["mm-a", "mm-b", "mm-c", "mm-d", "mm-e"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running sshd; yields a dict with port, key paths and the server's pid."""
    d = tmp_path_factory.mktemp("sshd")
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run([*keygen, "-f", str(d / "host_key")], check=True, timeout=30)
    subprocess.run([*keygen, "-f", str(d / "client_key")], check=True, timeout=30)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log)
    try:
        if not _wait_listening(port, proc):
            pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
        host_pub = " ".join((d / "host_key.pub").read_text().split()[:2])
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
        (d / "empty_known_hosts").write_text("")
        yield {"dir": d, "port": port, "pid": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _config(sshd, workdir: Path, **remote_overrides):
    remote = {"host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(),
              "identity_file": str(sshd["dir"] / "client_key"),
              "known_hosts": str(sshd["dir"] / "known_hosts"),
              "python": sys.executable, "workdir": str(workdir), "connect_timeout_s": 5, "retries": 2}
    remote.update(remote_overrides)
    return from_dict({"name": "ssh-test", **TIMING, "remote": remote})


def _matmul(seed: int) -> bytes:
    # 64x256 @ 256x256: a fraction of a millisecond, so a row holds hundreds of samples, not millions.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])
    w = helper.make_tensor("w", TensorProto.FLOAT, [256, 256], [float(seed)] * (256 * 256))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], f"mm{seed}", [x], [y],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture
def bundle(tmp_path, sshd):
    cfg = _config(sshd, tmp_path / "remote")
    write_bundle(tmp_path / "bundle", cfg, [(k, _matmul(i), {"i": i}) for i, k in enumerate(KEYS)])
    return tmp_path / "bundle"


def _remote_results(workdir: Path) -> list[dict]:
    (path,) = workdir.glob("*/bundle/results.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _local(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _keys(records) -> list[str]:
    return [r["key"] for r in records if r["type"] == "row"]


def test_profile_over_ssh_returns_every_row(sshd, bundle, tmp_path, caplog):
    cfg = _config(sshd, tmp_path / "remote")
    results = tmp_path / "local.jsonl"
    seen = []
    with caplog.at_level(logging.INFO, logger="profilers.remote"):
        records = profile_remote(bundle, cfg, results, on_row=seen.append, timeout_s=120)
    assert seen == records
    assert records[0]["type"] == "session" and records[0]["fingerprint"]
    assert records[0]["config"]["name"] == "ssh-test" and "remote" not in records[0]["config"]
    assert sorted(_keys(records)) == sorted(KEYS)
    row = next(r for r in records if r["type"] == "row")
    assert row["timing"]["n"] >= 2 and len(row["timing"]["samples_ms"]) == row["timing"]["n"]
    assert _local(results) == records
    assert sorted(_keys(_remote_results(tmp_path / "remote"))) == sorted(KEYS)
    assert any("copying bundle" in m for m in caplog.messages)

    # The same bundle again: not uploaded again, nothing measured, nothing new locally.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="profilers.remote"):
        assert profile_remote(bundle, cfg, results, timeout_s=120) == []
    assert any("already on" in m for m in caplog.messages)
    assert not any("copying bundle" in m for m in caplog.messages)
    assert len(_remote_results(tmp_path / "remote")) == len(records)


def test_dropped_connection_is_retried_without_remeasuring(sshd, bundle, tmp_path, caplog):
    cfg = _config(sshd, tmp_path / "remote")
    results = tmp_path / "local.jsonl"
    seen = []
    dropped = []

    def on_row(record):
        seen.append(record)
        if record["type"] == "row" and not dropped:
            dropped.append(_drop_connections(sshd["pid"]))

    with caplog.at_level(logging.WARNING, logger="profilers.remote"):
        records = profile_remote(bundle, cfg, results, on_row=on_row, timeout_s=120, backoff_s=0.1)
    assert dropped and dropped[0] > 0
    assert any("retry 1 of 2" in m for m in caplog.messages), caplog.messages
    # Every key arrived once, and the device measured each exactly once across both runs.
    assert sorted(_keys(seen)) == sorted(KEYS)
    assert sorted(_keys(_local(results))) == sorted(KEYS)
    remote_rows = [r for r in _remote_results(tmp_path / "remote") if r["type"] == "row"]
    assert sorted(r["key"] for r in remote_rows) == sorted(KEYS)
    assert len({r["session"] for r in _local(results) if r["type"] == "session"}) == 2
    assert records == seen


def test_interrupted_call_resumes(sshd, bundle, tmp_path):
    cfg = _config(sshd, tmp_path / "remote")
    results = tmp_path / "local.jsonl"

    class Interrupted(Exception):
        pass

    def stop(record):
        if record["type"] == "row":
            raise Interrupted  # the host gives up after one row: its ssh client is ended

    with pytest.raises(Interrupted):
        profile_remote(bundle, cfg, results, on_row=stop, timeout_s=120)
    first = [r for r in _local(results) if r["type"] == "row"]
    assert len(first) == 1

    records = profile_remote(bundle, cfg, results, timeout_s=120)
    assert first[0]["key"] not in _keys(records)  # already local: not passed on again
    local_rows = [r for r in _local(results) if r["type"] == "row"]
    assert sorted(r["key"] for r in local_rows) == sorted(KEYS)
    assert local_rows[0] == first[0]  # the first row was kept, not measured again
    remote_rows = [r for r in _remote_results(tmp_path / "remote") if r["type"] == "row"]
    assert sorted(r["key"] for r in remote_rows) == sorted(KEYS)


def test_unreachable_host_is_one_line_error(sshd, bundle, tmp_path):
    closed_port = _free_port()
    cfg = _config(sshd, tmp_path / "remote", port=closed_port, retries=1)
    start = time.monotonic()
    with pytest.raises(RemoteError) as info:
        profile_remote(bundle, cfg, tmp_path / "local.jsonl", timeout_s=60, backoff_s=0.1)
    message = str(info.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{closed_port} over SSH: ")
    assert "refused" in message.lower() and "\n" not in message
    assert time.monotonic() - start < 30


def test_failing_remote_command_is_remote_error(sshd, bundle, tmp_path):
    cfg = _config(sshd, tmp_path / "remote", python="/nonexistent/python")
    with pytest.raises(RemoteError) as info:
        profile_remote(bundle, cfg, tmp_path / "local.jsonl", timeout_s=60)
    message = str(info.value)
    assert "the remote profiler failed" in message and "/nonexistent/python" in message
    assert "\n" not in message


def test_remote_profiler_error_is_quoted(sshd, tmp_path):
    cfg = _config(sshd, tmp_path / "remote")
    write_bundle(tmp_path / "bundle", cfg, [("m", _matmul(1), {})])
    # The device cannot read its results file: the remote profiler's own one-line error comes back.
    target = tmp_path / "remote"
    profile_remote(tmp_path / "bundle", cfg, tmp_path / "local.jsonl", timeout_s=120)
    (path,) = target.glob("*/bundle/results.jsonl")
    path.write_text("garbage\n")
    # resumed from the same local results (a new local file would start the device's afresh)
    with pytest.raises(RemoteError, match=r"exit 2\): error: .*results.jsonl:1: not a JSON record"):
        profile_remote(tmp_path / "bundle", cfg, tmp_path / "local.jsonl", timeout_s=60)


def test_unknown_host_key_is_refused(sshd, bundle, tmp_path):
    cfg = _config(sshd, tmp_path / "remote", known_hosts=str(sshd["dir"] / "empty_known_hosts"))
    with pytest.raises(RemoteError) as info:
        profile_remote(bundle, cfg, tmp_path / "local.jsonl", timeout_s=60, backoff_s=0.1)
    message = str(info.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{sshd['port']} over SSH")
    assert "host key verification failed" in message.lower()
    assert not (tmp_path / "remote").exists()  # nothing ran on the unverified host


def test_config_without_remote_section(tmp_path):
    cfg = from_dict({"name": "local-only"})
    write_bundle(tmp_path / "b", cfg, [("m", _matmul(1), {})])
    with pytest.raises(RemoteError, match="no 'remote' section"):
        profile_remote(tmp_path / "b", cfg, tmp_path / "r.jsonl")


def test_time_honours_the_remote_section(sshd, tmp_path):
    # `hwprune time` on a config with `remote:` times on that host (here: the local sshd), and
    # an unreachable host is one line, not a local timing labelled with the remote's name
    from hwprune.api import time_model

    model = tmp_path / "mm.onnx"
    model.write_bytes(_matmul(1))
    cfg = _config(sshd, tmp_path / "remote")
    cfg_path = tmp_path / "ssh.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    r = time_model(str(model), str(cfg_path), json_path=str(tmp_path / "t.json"))
    assert r["device"] == "ssh-test" and r["timing"]["n"] >= 2 and r["environment"]
    assert any(p.name == "results.jsonl" for p in (tmp_path / "remote").rglob("*"))  # it ran over there
    assert json.loads((tmp_path / "t.json").read_text())["timing"]["n"] == r["timing"]["n"]
    # timed again, it is measured again: the device's results file of the identical bundle gave
    # the first call's samples back to every later one, and to each of --processes N (nu13)
    again = time_model(str(model), str(cfg_path))
    assert again.timing.samples_ms != r.timing.samples_ms

    bad = _config(sshd, tmp_path / "remote2", host="127.0.0.1", port=_free_port(), retries=0)
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad.to_dict()))
    with pytest.raises(ProfilerError):
        time_model(str(model), str(bad_path))


def test_profile_to_an_unreachable_host_fails_at_once_and_leaves_nothing(sshd, tmp_path):
    from hwprune.profiling import ModelSpec, profile

    (tmp_path / "m.py").write_text("import torch.nn as nn\n\ndef net(in_channels=1, num_classes=10):\n"
                                   "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), "
                                   "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    bad = _config(sshd, tmp_path / "remote", port=_free_port(), retries=2)
    cfg_path = tmp_path / "bad.json"
    cfg_path.write_text(json.dumps(bad.to_dict()))
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="cannot reach ssh-test"):
        profile(ModelSpec(f"{tmp_path / 'm.py'}:net", (1, 8, 8)), str(cfg_path), str(tmp_path / "L.parquet"),
                show_progress=False, log=lambda m: None)
    assert time.monotonic() - t0 < 15  # one quick probe, not three retries after the export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "m.py"]


def test_a_missing_key_file_is_named_not_taken_for_a_wrong_key(sshd, bundle, tmp_path):
    # it read "Permission denied (publickey,keyboard-interactive)", as a wrong key does (nu13)
    cfg = _config(sshd, tmp_path / "remote", identity_file=str(tmp_path / "nokey"))
    with pytest.raises(RemoteError, match=r"remote.identity_file .*nokey does not exist \(device 127.0.0.1\)"):
        profile_remote(bundle, cfg, tmp_path / "local.jsonl", timeout_s=60)
    assert not (tmp_path / "remote").exists()
