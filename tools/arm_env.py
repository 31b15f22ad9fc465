"""The emulated ARM board behind `make arm-env` and `make test-arm`: an arm64 Debian root under qemu, served over SSH.

``build`` makes, once and resumably (one stamp file per finished step), in ``$HWPRUNE_ARM_ENV``
(default ``~/.cache/hwprune/arm-env``, outside any checkout)::

    root/    arm64 Debian root file system (debootstrap --foreign, then its second stage
             under qemu-aarch64 through binfmt_misc); python3 with a venv at /opt/hwprune
             holding numpy and onnxruntime installed by pip *inside* the root from their
             aarch64 wheels, and /opt/hwprune-oldest with the oldest versions hwprune allows
    venvs.json  the venvs built so far and their requirements
    cpuinfo  the /proc/cpuinfo the board shows (see write_enter)
    debs/    debootstrap's package cache, so a root rebuilt after a failure downloads nothing
    ssh/     host key, client key, authorized_keys (made here, for the tests)
    enter    the sshd ForceCommand: runs the SSH command inside root/ as the board would
    stamps/  one file per finished step

``serve`` (and :func:`serve` for the tests) starts a private ``sshd`` on 127.0.0.1 that logs
its client key in and runs every command, sftp included, inside the root through ``enter``,
writes a ``known_hosts`` for it (host keys stay checked) and a device config whose
``remote:`` section points at it. The sshd runs on this host; everything it runs is aarch64.

Only the standard library: ``make arm-env`` runs this with the system python3, no venv needed.
Needs root (debootstrap, chroot and mount namespaces do). Timings under emulation mean
nothing; what it proves is the path (wheels, providers, manifest, SSH streaming and resume).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

SUITE = "bookworm"  # Debian 12: python3.11, the project's Python; a Pi OS of the same age
DEFAULT_MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/hwprune"  # inside the root: Debian's python3 refuses system-wide pip (PEP 668)
BOARD_PYTHON = f"{VENV}/bin/python"
# A second venv with the oldest numpy and onnxruntime hwprune declares (pyproject.toml), so the
# device side is run on what an older board image may hold, not only on today's wheels.
OLDEST_VENV = "/opt/hwprune-oldest"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"  # the arm64 one inside the root serves scp
# sh and tar (remote.py's mkdir/unpack), python3 + venv (the profiler), sftp-server (scp's
# default protocol since OpenSSH 9), CA certificates (pip over HTTPS)
PACKAGES = "python3,python3-venv,openssh-sftp-server,ca-certificates"
DEFAULT_NUMPY = "numpy==2.4.6"
DEFAULT_ONNXRUNTIME = "onnxruntime==1.32.0"
DEFAULT_OLDEST = "numpy==1.24.4 onnxruntime==1.17.3"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# The arm64 ELF header, as Debian's qemu-user-static registers it; F: the interpreter is
# opened now, so it need not exist inside the root.
_BINFMT_RULE = (r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:"
                r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:{interp}:FP")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
REPO = Path(__file__).resolve().parent.parent


class EnvError(Exception):
    """One line for the user: what is wrong and what to do."""


def env_dir(path: str | os.PathLike[str] | None = None) -> Path:
    if path:
        return Path(path).expanduser().resolve()
    return Path(os.environ.get("HWPRUNE_ARM_ENV") or "~/.cache/hwprune/arm-env").expanduser().resolve()


def _say(msg: str) -> None:
    print(f"arm-env: {msg}", flush=True)


def _run(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run one build command, its output appended to ``log``; a failure names the step and the log."""
    with open(log, "ab") as out:
        out.write(f"\n$ {shlex.join(argv)}\n".encode())
        out.flush()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            env=env).returncode
    if rc != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        raise EnvError(f"{what} failed (exit {rc}): {tail[0] if tail else 'no output'} (full log: {log})")


def _check_host() -> None:
    if sys.platform != "linux":
        raise EnvError("the emulated ARM board needs Linux (qemu user-mode emulation and binfmt_misc)")
    if os.geteuid() != 0:
        raise EnvError("needs root (debootstrap, chroot and mount namespaces): run it as root, e.g. sudo make arm-env")
    missing = [tool for tool, pkg in (("debootstrap", "debootstrap"), ("qemu-aarch64-static", "qemu-user-static"),
                                      ("sshd", "openssh-server"), ("ssh-keygen", "openssh-client"),
                                      ("unshare", "util-linux"), ("chroot", "coreutils"))
               if shutil.which(tool) is None and not (tool == "sshd" and os.path.exists("/usr/sbin/sshd"))]
    if missing:
        raise EnvError(f"missing {', '.join(missing)}: apt-get install qemu-user-static debootstrap "
                       "binfmt-support openssh-server")


def ensure_binfmt() -> None:
    """Make the kernel run arm64 ELF files through qemu (mount binfmt_misc, register the rule)."""
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "binfmt_misc", "-t", "binfmt_misc", str(BINFMT_DIR)],
                       capture_output=True, check=False)
        if not (BINFMT_DIR / "register").exists():
            raise EnvError(f"cannot mount binfmt_misc at {BINFMT_DIR}: run as root on a kernel with binfmt_misc "
                           "(or modprobe binfmt_misc)")
    rule = BINFMT_DIR / "qemu-aarch64"
    if rule.exists():
        if "enabled" not in rule.read_text():
            rule.write_text("1")
        return
    if shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False)
    if not rule.exists():
        interp = shutil.which("qemu-aarch64-static")
        if interp is None:
            raise EnvError("qemu-aarch64-static not found: apt-get install qemu-user-static")
        (BINFMT_DIR / "register").write_text(_BINFMT_RULE.format(interp=interp))
    if not rule.exists():
        raise EnvError("could not register qemu-aarch64 with binfmt_misc: apt-get install binfmt-support")


def apt_mirror(sources: tuple[str, ...] = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")) -> str:
    """The Debian mirror this host's apt uses for ``SUITE`` (so debootstrap reaches the same one)."""
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        files += sorted(p.glob("*")) if p.is_dir() else [p]
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        if f.suffix == ".sources":  # deb822 stanzas
            for stanza in text.split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    key, sep, value = line.partition(":")
                    if sep and not line.startswith(("#", " ")):
                        fields[key.strip().lower()] = value.strip()
                if SUITE in fields.get("suites", "").split() and fields.get("uris"):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                if line.lstrip().startswith("#"):
                    continue
                words = re.sub(r"\[[^]]*\]", " ", line).split()  # without the [arch=... signed-by=...] options
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return DEFAULT_MIRROR


class Builder:
    """The build steps, each skipped when its stamp exists."""

    def __init__(self, env: Path, numpy_req: str, ort_req: str, mirror: str | None, oldest: str = ""):
        self.env, self.root = env, env / "root"
        self.stamps = env / "stamps"
        self.log = env / "build.log"
        # venv inside the root -> its pip requirements
        self.venvs = {VENV: [numpy_req, ort_req]}
        if oldest.split():
            self.venvs[OLDEST_VENV] = oldest.split()
        self.mirror = mirror or apt_mirror()

    def done(self, step: str) -> bool:
        return (self.stamps / step).exists()

    def stamp(self, step: str, text: str = "") -> None:
        (self.stamps / step).write_text(text + "\n")

    def build(self) -> None:
        _check_host()
        self.env.mkdir(parents=True, exist_ok=True)
        self.stamps.mkdir(exist_ok=True)
        ensure_binfmt()
        write_enter(self.env)
        steps = [("rootfs-stage1", self.stage1), ("rootfs-stage2", self.stage2)]
        steps += [(f"python{_slug(venv)}-{'-'.join(map(_slug, reqs))}",
                   lambda venv=venv, reqs=reqs: self.python(venv, reqs)) for venv, reqs in self.venvs.items()]
        steps.append(("ssh-keys", self.keys))
        for name, step in steps:
            if self.done(name):
                _say(f"{name}: done earlier, skipped")
                continue
            t0 = time.monotonic()
            _say(f"{name}: building (log: {self.log})")
            step()
            self.stamp(name)
            _say(f"{name}: done in {time.monotonic() - t0:.0f} s")
        self.report()

    def stage1(self) -> None:
        # A half-made root cannot be resumed by debootstrap: start it again (the debs are cached),
        # and so every step built inside it.
        _refuse_mounted(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        for stamp in self.stamps.iterdir():
            if stamp.name not in ("ssh-keys", "rootfs-stage2.started"):
                stamp.unlink()
        (self.env / "venvs.json").unlink(missing_ok=True)
        (self.env / "debs").mkdir(exist_ok=True)
        _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={PACKAGES}",
              f"--cache-dir={self.env / 'debs'}", SUITE, str(self.root), self.mirror],
             self.log, f"debootstrap (first stage, from {self.mirror})")

    def stage2(self) -> None:
        started = self.stamps / "rootfs-stage2.started"
        if started.exists():
            # an interrupted second stage leaves dpkg half-configured: redo the root from stage 1
            _say("rootfs-stage2: an earlier attempt was interrupted; unpacking the root again")
            started.unlink()
            (self.stamps / "rootfs-stage1").unlink(missing_ok=True)
            self.stage1()
            self.stamp("rootfs-stage1")
        started.write_text("")
        # with binfmt's F flag qemu need not be inside; copied anyway for kernels without it
        shutil.copy2(shutil.which("qemu-aarch64-static"), self.root / "usr/bin/qemu-aarch64-static")
        # its own mount namespace: the second stage mounts /proc, which must not stay on the host
        _run(["unshare", "--mount", "--propagation", "private", "chroot", str(self.root),
              "/debootstrap/debootstrap", "--second-stage"], self.log, "debootstrap (second stage, under qemu)")
        started.unlink()

    def python(self, venv: str, reqs: list[str]) -> None:
        shutil.copy2("/etc/resolv.conf", self.root / "etc/resolv.conf")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180"}
        if HOST_CA.exists():
            # this host's CA bundle, so pip in the root trusts what the host trusts (a proxy's CA)
            shutil.copy2(HOST_CA, self.root / "etc/hwprune-host-ca.crt")
            env["PIP_CERT"] = "/etc/hwprune-host-ca.crt"
        enter = str(self.env / "enter")
        if not (self.root / venv.lstrip("/") / "bin/python").exists():
            _run([enter, f"python3 -m venv {venv}"], self.log, f"python3 -m venv {venv} inside the arm64 root", env)
        # --only-binary: a source build under emulation would take hours; no aarch64 wheel is an error
        _run([enter, f"{venv}/bin/pip install --only-binary=:all: {shlex.join(reqs)}"],
             self.log, f"pip install {' '.join(reqs)} into {venv} inside the arm64 root", env)
        self.smoke(venv)
        venvs = _read_venvs(self.env)
        venvs[venv] = reqs
        (self.env / "venvs.json").write_text(json.dumps(venvs, indent=2) + "\n")

    def keys(self) -> None:
        d = self.env / "ssh"
        d.mkdir(exist_ok=True)
        for name in ("host_key", "client_key"):
            for f in (d / name, d / f"{name}.pub"):
                f.unlink(missing_ok=True)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hwprune-arm-env-{name}", "-f", str(d / name)],
                 self.log, f"ssh-keygen {name}")
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)

    def smoke(self, venv: str) -> str:
        """What the venv's Python reports on the board; a crash or failed import is an EnvError."""
        out = subprocess.run([str(self.env / "enter"), f"{venv}/bin/python -c " + shlex.quote(
            "import platform, numpy, onnxruntime as o; "
            "print(platform.machine(), 'numpy', numpy.__version__, 'onnxruntime', o.__version__, "
            "','.join(o.get_available_providers()))")], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no message"])[-1]
            raise EnvError(f"{venv}/bin/python on the board cannot import numpy and onnxruntime "
                           f"(exit {out.returncode}): {last}")
        return out.stdout.strip()

    def report(self) -> None:
        for venv in self.venvs:
            _say(f"ready in {self.env}: {venv}: {self.smoke(venv)}")


def _read_venvs(env: Path) -> dict[str, list[str]]:
    """The venvs built on the board so far (venvs.json): path inside the root -> requirements."""
    try:
        return json.loads((env / "venvs.json").read_text())
    except (OSError, ValueError):
        return {}


def _refuse_mounted(root: Path) -> None:
    """Never delete through a mount: a /dev or /proc bound into the root is the host's own."""
    prefix = str(root).rstrip("/") + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    inside = [m for m in mounts if m.startswith(prefix) or m == str(root)]
    if inside:
        raise EnvError(f"{inside[0]} is mounted inside the root; unmount it (umount -R {inside[0]}) and run again")


def _slug(req: str) -> str:
    return "".join(c if c.isalnum() or c in ".=" else "_" for c in req)


def write_enter(env: Path) -> Path:
    """The script that runs a command inside the root as the board: sshd's ForceCommand.

    It takes the command from its arguments or, under sshd, from SSH_ORIGINAL_COMMAND (scp's
    sftp-server request included), so remote.py's ``cd DIR && ... exec python ...`` runs
    unchanged. /proc, /sys and /dev are mounted in a private mount namespace, so they end with
    the session and never appear on the host; nothing is printed, so sftp's stream stays clean.
    """
    root = shlex.quote(str(env / "root"))
    # absolute paths: sshd's PATH for the session need not hold /usr/sbin (chroot)
    unshare, mount, chroot = (shlex.quote(shutil.which(t) or t) for t in ("unshare", "mount", "chroot"))
    # Debian 12's qemu (7.2) leaves the x86 kernel's /proc/cpuinfo visible, and onnxruntime's
    # CPU probe crashes (SIGSEGV on import) parsing it as an ARM one. The board shows instead
    # what an arm64 kernel writes, for qemu's own "max" CPU, as newer qemu releases do
    # themselves: implementer 0 (reserved for software), part 0x051 ('Q'). So the manifest
    # says "QEMU TCG 'max' CPU", never a real core's name.
    cpuinfo = env / "cpuinfo"
    cpuinfo.write_text("\n".join(f"processor\t: {i}\nCPU implementer\t: 0x00\nCPU architecture: 8\n"
                                 f"CPU variant\t: 0x0\nCPU part\t: 0x051\nCPU revision\t: 0\n"
                                 for i in range(os.cpu_count() or 1)) + "\n")
    script = f"""#!/bin/sh
# Written by tools/arm_env.py: run a command inside the arm64 root (qemu via binfmt_misc).
if [ $# -gt 0 ]; then HWPRUNE_ARM_COMMAND="$*"; else HWPRUNE_ARM_COMMAND="${{SSH_ORIGINAL_COMMAND:-exec /bin/sh -l}}"; fi
export HWPRUNE_ARM_COMMAND
exec {unshare} --mount --propagation private /bin/sh -c '
  r="$1"
  {mount} -t proc proc "$r/proc" && {mount} --bind "$2" "$r/proc/cpuinfo" || exit 1
  {mount} --rbind /sys "$r/sys" && {mount} -o remount,bind,ro "$r/sys" 2>/dev/null
  {mount} --rbind /dev "$r/dev" || exit 1
  exec {chroot} "$r" /bin/sh -c "cd \\"\\$HOME\\" 2>/dev/null || cd /; eval \\"\\$HWPRUNE_ARM_COMMAND\\""
' sh {root} {shlex.quote(str(cpuinfo))}
"""
    path = env / "enter"
    path.write_text(script)
    os.chmod(path, 0o755)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def ready(env: Path) -> str | None:
    """None when ``env`` is built; else the one-line reason it is not."""
    stamps = env / "stamps"
    if not stamps.is_dir():
        return f"no emulated ARM board at {env}: run make arm-env (as root)"
    for step in ("rootfs-stage1", "rootfs-stage2", "ssh-keys"):
        if not (stamps / step).exists():
            return f"the emulated ARM board at {env} is unfinished ({step}): run make arm-env again"
    if VENV not in _read_venvs(env):
        return f"the emulated ARM board at {env} has no numpy/onnxruntime yet: run make arm-env again"
    return None


@contextlib.contextmanager
def serve(env: Path, port: int | None = None, workdir: str = "~/hwprune-remote") -> Iterator[dict]:
    """Run the board's sshd while the block runs; yields its port, pid, paths and ``remote:`` section."""
    reason = ready(env)
    if reason:
        raise EnvError(reason)
    _check_host()
    ensure_binfmt()
    enter = write_enter(env)
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    port = port or _free_port()
    run = Path(tempfile.mkdtemp(prefix=f"sshd-{port}-", dir=env))
    keys = env / "ssh"
    (run / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {keys / 'host_key'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {run / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        # every session, sftp included, runs inside the root; the sftp-server is the root's own
        f"Subsystem sftp {SFTP_SERVER}\nForceCommand {shlex.quote(str(enter))}\n"
        "AllowTcpForwarding no\nX11Forwarding no\nLogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    host_pub = " ".join((keys / "host_key.pub").read_text().split()[:2])
    (run / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    log = open(run / "sshd.log", "wb")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(run / "sshd_config")], stdout=log, stderr=log)
    try:
        if not _wait_listening(port, proc):
            raise EnvError(f"the board's sshd did not start: {(run / 'sshd.log').read_text()[-300:].strip()}")
        remote = {"host": "127.0.0.1", "port": port, "user": "root", "python": BOARD_PYTHON,
                  "workdir": workdir, "identity_file": str(keys / "client_key"),
                  "known_hosts": str(run / "known_hosts"), "connect_timeout_s": 10, "retries": 3}
        yield {"port": port, "pid": proc.pid, "run_dir": run, "root": env / "root", "remote": remote}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(run, ignore_errors=True)


def device_config(remote: dict, **overrides) -> dict:
    """The shipped arm-cpu-ort config with a ``remote:`` section for the emulated board."""
    sys.path.insert(0, str(REPO))
    from profilers.config import load_device_config

    cfg = load_device_config("arm-cpu-ort").to_dict()
    cfg.update({"name": "arm-cpu-ort-emulated",
                "description": "arm-cpu-ort on the emulated arm64 board (qemu): timings are not meaningful",
                **overrides, "remote": remote})
    return cfg


def _cmd_serve(env: Path, port: int | None) -> None:
    with serve(env, port) as board:
        path = env / "arm-emulated.json"
        path.write_text(json.dumps(device_config(board["remote"]), indent=2) + "\n")
        _say(f"sshd on 127.0.0.1:{board['port']} serves the arm64 root; device config: {path}")
        _say(f"try: hwprune time model.onnx --device {path}   (Ctrl-C stops the board)")
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        try:
            while not stop:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/arm_env.py", description=__doc__.splitlines()[0])
    p.add_argument("--env", help="where the board lives (default: $HWPRUNE_ARM_ENV or ~/.cache/hwprune/arm-env)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the board (resumable: finished steps are skipped)")
    b.add_argument("--numpy", default=DEFAULT_NUMPY, help=f"pip requirement for numpy (default {DEFAULT_NUMPY})")
    b.add_argument("--onnxruntime", default=DEFAULT_ONNXRUNTIME,
                   help=f"pip requirement for onnxruntime (default {DEFAULT_ONNXRUNTIME})")
    b.add_argument("--oldest", default=DEFAULT_OLDEST,
                   help=f"requirements of a second venv, {OLDEST_VENV} ('' for none; default {DEFAULT_OLDEST!r})")
    b.add_argument("--mirror", help="Debian mirror for debootstrap (default: the one apt uses here)")
    s = sub.add_parser("serve", help="run the board's sshd in the foreground and write a device config for it")
    s.add_argument("--port", type=int)
    args = p.parse_args(argv)
    env = env_dir(args.env)
    try:
        if args.command == "build":
            Builder(env, args.numpy, args.onnxruntime, args.mirror, args.oldest).build()
        else:
            _cmd_serve(env, args.port)
    except EnvError as err:
        print(f"arm-env: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arm-env: interrupted; run it again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
