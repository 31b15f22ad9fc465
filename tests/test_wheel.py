"""A built wheel carries what the commands need: the device configs and the committed checkpoints.

The wheel is built from this checkout and unpacked into a folder of its own; the commands then
run from another folder with that folder first on the path, so the checkout (and the editable
install pointing at it) cannot stand in for a missing file. The dependencies are this venv's:
what is tested is the wheel's content, not pip's resolver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ in the source tree, and a stale build/lib (a
    # module since renamed) would end up in later wheels.
    src = d / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "demo-out", "bench", "docs"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(d / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((d / "dist").glob("hwprune-*.whl"))
    target = d / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    work = d / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "site": target, "cwd": work}


def _run(installed, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(installed["site"]), "OMP_NUM_THREADS": "1"}
    env.pop("HWPRUNE_DEVICE_CONFIGS", None)
    return subprocess.run([sys.executable, "-m", "hwprune.cli", *args], capture_output=True, text=True,
                          cwd=installed["cwd"], env=env, timeout=timeout)


def test_the_wheel_holds_the_configs_and_checkpoints(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert "hwprune/prune.py" not in names and "hwprune/profile.py" not in names  # renamed modules stay gone
    assert "profilers/device_configs/x86-cpu-ort.yaml" in names
    assert "hwprune/checkpoints/resnet20-fashion-mnist.pt" in names
    assert "hwprune/checkpoints/resnet20-fashion-mnist.pt.json" in names
    assert "profilers/assets/reference.onnx" in names


def test_the_installed_wheel_is_the_one_that_runs(installed):
    env = {**os.environ, "PYTHONPATH": str(installed["site"])}
    out = subprocess.run([sys.executable, "-c", "import hwprune, profilers; print(hwprune.__file__, profilers.__file__)"],
                         capture_output=True, text=True, cwd=installed["cwd"], env=env, check=True)
    assert all(str(installed["site"]) in p for p in out.stdout.split())


def test_devices_lists_the_shipped_configs_from_any_folder(installed):
    r = _run(installed, "devices")
    assert r.returncode == 0, r.stderr
    assert "x86-cpu-ort " in r.stdout and "jetson-orin-trt-fp16" in r.stdout


def test_prune_finds_the_committed_checkpoint_from_any_folder(installed):
    # a parameter budget (no LUT needed), the committed resnet20 checkpoint found inside the
    # package, measured on the shipped x86-cpu-ort config
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs Fashion-MNIST: make data (make test installs it)")
    r = _run(installed, "prune", "-d", "x86-cpu-ort", "-m", "resnet20", "--max-params", "60%",
             "--agent", "uniform", "--max-evaluations", "2", "--finetune-epochs", "0", "--out", "run", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no weights" not in r.stderr  # the checkpoint came with the wheel
    assert (installed["cwd"] / "run" / "report.json").is_file()
    assert "hwprune/checkpoints/resnet20-fashion-mnist.pt" in (installed["cwd"] / "run" / "report.json").read_text()
