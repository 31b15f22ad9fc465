# The two commands a newcomer runs: `make demo` and `make test`. Everything they need is
# installed here, so a fresh clone on a machine where nothing was set up by hand works.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch lies on this machine's disk; an open range pulls a multi-GB CUDA
# build. Override for another platform: make install TORCH_REQ='torch==2.9.1'
TORCH_REQ ?= torch==2.13.0
PYTORCHCV_REQ ?= pytorchcv==0.0.74
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: install data test-deps test test-all gpu-check arm-env test-arm demo pretrain pretrain-resnet56 pretrain-vgg16 bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_REQ)"
	$(PY) -m pip install -q -e ".[dev]"
	# pytorchcv's third-party architectures for pytorchcv:NAME (and its tests); --no-deps: its
	# torchvision requirement would replace the CPU torch with a multi-GB CUDA build.
	$(PY) -m pip install -q --no-deps "$(PYTORCHCV_REQ)"
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist, when missing and apt is usable.
data:
	@if [ -d "$(FMNIST_DIR)" ]; then echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) && \
	  echo "installed dataset-fashion-mnist"; \
	else echo "Fashion-MNIST missing at $(FMNIST_DIR): apt-get install dataset-fashion-mnist (as root)"; fi

# The SSH tests start their own sshd on 127.0.0.1; install OpenSSH when missing and apt is usable.
test-deps:
	@if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q openssh-server openssh-client >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q openssh-server openssh-client >/dev/null)) && \
	  echo "installed openssh-server"; \
	else echo "sshd not found: the ssh tests will skip"; fi

# data too: the tests that read the real Fashion-MNIST run wherever it can be installed.
test: install test-deps data
	$(PY) -m pytest -q -m "not slow and not gpu and not tensorrt and not arm" $(PYTEST_ARGS)

test-all: install test-deps data
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The GPU paths for real (issue 20), on a machine with an NVIDIA GPU: the gpu and tensorrt
# tests, then profile, prune and lut check with the torch-cuda backend at batch 1 and 64, in
# under 8 minutes; one summary, with gpu-check.log and gpu-check.json under runs/gpu-check-<time>/
# (or GPU_CHECK_OUT). Without a GPU it says "no-gpu" and exits 0 in seconds. Not tied to
# `install`, which would put the CPU torch here: it uses .venv when there is one, else python3
# (the machine's CUDA build of torch).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_OUT ?=
gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT))

# An emulated aarch64 board (issue 21): an arm64 Debian root with numpy and onnxruntime from
# their aarch64 wheels, run under qemu and served by a private sshd on 127.0.0.1. Built once
# outside the checkout (needs root, about 1 GB), resumable: run it again after a failure.
# Only test-arm needs it; make test never does.
ARM_ENV ?= $(or $(HWPRUNE_ARM_ENV),$(HOME)/.cache/hwprune/arm-env)
ARM_NUMPY_REQ ?= numpy==2.4.6
ARM_ORT_REQ ?= onnxruntime==1.32.0
# a second venv on the board with the oldest versions pyproject.toml allows ('' for none)
ARM_OLDEST_REQS ?= numpy==1.24.4 onnxruntime==1.17.3

arm-env:
	$(PYTHON) tools/arm_env.py --env "$(ARM_ENV)" build --numpy "$(ARM_NUMPY_REQ)" --onnxruntime "$(ARM_ORT_REQ)" \
	  --oldest "$(ARM_OLDEST_REQS)"

# profile, time and regress through the SSH path on the emulated board; timings mean nothing there.
test-arm: install test-deps arm-env
	HWPRUNE_ARM_ENV="$(ARM_ENV)" $(PY) -m pytest -q -rP -m arm tests/test_arm_emulated.py $(PYTEST_ARGS)

demo: install data
	$(PY) -m hwprune.demo

# Dense checkpoints committed under checkpoints/ (recipe and test accuracy in the README).
pretrain: install data
	$(PY) -m hwprune.cli pretrain --model resnet20 --data fashion-mnist --epochs 8 \
	  --out checkpoints/resnet20-fashion-mnist.pt

# resnet56 for issue 6's larger search space (about 50 min on 2 cores; resumable: run it again).
pretrain-resnet56: install data
	$(PY) -m hwprune.cli pretrain --model resnet56 --data fashion-mnist --epochs 8 \
	  --out checkpoints/resnet56-fashion-mnist.pt

# vgg16_bn for issue 5's --max-params 15% setting (hours on 2 cores; resumable: run it again
# and it continues after the last finished epoch).
pretrain-vgg16: install data
	$(PY) -m hwprune.cli pretrain --model vgg16_bn --data fashion-mnist --epochs 8 \
	  --out checkpoints/vgg16_bn-fashion-mnist.pt

bench: install data
	$(PY) bench/run.py --full

bench-quick: install data
	$(PY) bench/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
