"""tools/arm_env.py's logic that needs no root, network or qemu: mirror lookup, readiness, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import arm_env  # noqa: E402


def test_apt_mirror_from_deb822_and_one_line_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert arm_env.apt_mirror((str(tmp_path / "absent.list"), str(d))) == "http://mirror.example/debian"
    one = tmp_path / "sources.list"
    one.write_text("# deb http://old.example/debian bookworm main\n"
                   "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n")
    assert arm_env.apt_mirror((str(one),)) == "http://one.example/debian"
    assert arm_env.apt_mirror((str(tmp_path / "none"),)) == arm_env.DEFAULT_MIRROR


def test_ready_names_what_is_missing(tmp_path):
    assert "run make arm-env" in arm_env.ready(tmp_path / "nothing")
    stamps = tmp_path / "env" / "stamps"
    stamps.mkdir(parents=True)
    (stamps / "rootfs-stage1").write_text("")
    assert "unfinished (rootfs-stage2)" in arm_env.ready(tmp_path / "env")
    for s in ("rootfs-stage2", "ssh-keys"):
        (stamps / s).write_text("")
    assert "no numpy/onnxruntime" in arm_env.ready(tmp_path / "env")
    (tmp_path / "env" / "venvs.json").write_text('{"/opt/hwprune": ["numpy", "onnxruntime"]}')
    assert arm_env.ready(tmp_path / "env") is None


def test_serve_without_a_board_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "arm_env.py"), "--env", str(tmp_path / "no"), "serve"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("arm-env: error: no emulated ARM board at ") and done.stderr.count("\n") == 1


def test_enter_script_runs_the_ssh_command_inside_the_root(tmp_path):
    script = arm_env.write_enter(tmp_path).read_text()
    root = str(tmp_path / "root")
    assert "SSH_ORIGINAL_COMMAND" in script and "--propagation private" in script and root in script
    # the board's /proc/cpuinfo describes qemu's own CPU, one block per host CPU
    cpuinfo = (tmp_path / "cpuinfo").read_text()
    assert "CPU implementer\t: 0x00" in cpuinfo and "CPU part\t: 0x051" in cpuinfo
    from profilers.environment import QEMU_MAX_NAME, parse_cpu_model

    assert parse_cpu_model(cpuinfo) == QEMU_MAX_NAME
