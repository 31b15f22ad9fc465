"""Benchmark: how many third-party architectures hwprune takes end to end (issue 18).

For each pytorchcv model (and two Hugging Face transformers models, a ViT and a ConvNeXt, when
transformers is installed, as ``make install`` does): build it, find its dependency groups, ``hwprune.profile`` it,
``hwprune.prune`` it to ``--speedup`` (agent uniform, no fine-tuning, a dataset-free score:
agreement of the pruned model's outputs with the dense model's on fixed random inputs), run
the pruned ONNX in onnxruntime, and record the stage reached, the error of a failure, the
profile seconds, the group count, dense/pruned p50 and parameters. Each model runs in a
process of its own with a time limit, and a finished model's result is kept (rerun to resume).

    python bench/zoo_coverage.py --out bench/results/zoo_coverage.json            # the default list
    python bench/zoo_coverage.py --models resnet20_cifar10,mobilenetv2_w1 --timeout 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Chosen for variety (issue 18): plain and pre-activation residuals, squeeze-excitation,
# grouped convolutions, dense concatenation, multi-branch blocks, depthwise and inverted
# residuals, channel shuffle, hard-swish/SiLU, fire modules, attention-like blocks.
DEFAULT_MODELS = [
    # CIFAR-10 variants (32x32)
    ("resnet20_cifar10", 32), ("preresnet20_cifar10", 32), ("seresnet20_cifar10", 32),
    ("sepreresnet20_cifar10", 32), ("resnext20_16x4d_cifar10", 32), ("densenet40_k12_cifar10", 32),
    ("xdensenet40_2_k24_bc_cifar10", 32), ("wrn16_10_cifar10", 32), ("ror3_56_cifar10", 32),
    ("shakeshakeresnet20_2x16d_cifar10", 32), ("diaresnet20_cifar10", 32), ("diapreresnet20_cifar10", 32),
    ("nin_cifar10", 32), ("resdropresnet20_cifar10", 32), ("shakedropresnet20_cifar10", 32),
    ("pyramidnet110_a48_cifar10", 32), ("rir_cifar10", 32),
    # ImageNet-shaped (224x224)
    ("resnet10", 224), ("preresnet10", 224), ("mobilenet_w1", 224), ("mobilenetv2_w1", 224),
    ("mobilenetv3_small_w1", 224), ("shufflenetv2_w1", 224), ("squeezenet_v1_1", 224), ("mnasnet_b1", 224),
    ("efficientnet_b0", 224), ("ghostnet", 224), ("igcv3_w1", 224), ("proxylessnas_mobile", 224),
    ("fbnet_cb", 224), ("regnetx002", 224), ("hardnet39ds", 224), ("peleenet", 224), ("vovnet27s", 224),
    # Hugging Face transformers (pure PyTorch, built from a config, random weights): attention
    # with heads reshaped in the code, LayerNorm, GELU; ConvNeXt's channels-last LayerNorm.
    ("transformers:deit_tiny", 224), ("transformers:convnext_atto", 224),
]


def _transformers_model(name: str):
    """A DeiT-tiny-shaped ViT (Touvron et al. 2021: 192 wide, 12 layers, 3 heads, patch 16) or a
    ConvNeXt-atto-shaped ConvNeXt (widths 40-320, depths 2-2-6-2), 10 classes, from transformers."""
    import transformers as hf

    if name == "deit_tiny":
        return hf.ViTForImageClassification(hf.ViTConfig(
            image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
            intermediate_size=768, num_labels=10))
    if name == "convnext_atto":
        return hf.ConvNextForImageClassification(hf.ConvNextConfig(
            hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], num_labels=10))
    raise SystemExit(f"unknown transformers model {name}")


def _logits(out):
    """The class scores of a model's output: a tensor, a transformers ModelOutput, or a tuple."""
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out

DEVICE_YAML = """\
name: zoo-coverage-cpu
description: the shipped x86-cpu-ort, timed briefly (coverage, not latency figures)
backend: onnxruntime
threads: 1
warmup: 2
min_repeats: 10
max_seconds: 0.05
channel_multiple: 8
statistic: p50
"""


def run_one(name: str, side: int, work: Path, r: dict) -> None:
    """One model through every stage, recording in ``r`` what it reached (in the child process)."""
    import numpy as np
    import torch

    import hwprune
    from hwprune.groups import count_params, find_groups
    from hwprune.models import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    r.update(model=name, input=[3, side, side], stage="build")
    if name.startswith("transformers:"):
        model = _transformers_model(name.split(":", 1)[1]).eval()
    else:
        model = create_model(f"pytorchcv:{name}", in_channels=3, num_classes=10, input_size=(side, side)).eval()
    x = torch.zeros(1, 3, side, side)
    r["params_dense"] = count_params(model)
    r["stage"] = "groups"
    unprunable: list = []
    r["groups"] = len(find_groups(model, x, unprunable=unprunable))
    r["left_dense"] = [u.name for u in unprunable]
    probe = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = _logits(model(probe))

    def agreement(m) -> float:
        with torch.no_grad():
            return -float((_logits(m(probe)) - reference).abs().mean())

    device = str(work / "device.yaml")
    r["stage"] = "profile"
    t0 = time.perf_counter()
    lut = hwprune.profile(model, x, device=device, lut=str(work / f"{name}.parquet"), calibration_samples=0)
    r["profile_s"] = time.perf_counter() - t0
    r["signatures"] = lut.profile_result.signatures_total
    r["stage"] = "prune"
    res = hwprune.prune(model, x, device=device, lut=lut, speedup=1.3, score_fn=agreement, agent="uniform",
                        max_evaluations=4, certify_rounds=3)
    r.update(certified=res.certified, params_pruned=res.report["pruned"]["params"],
             dense_p50_ms=res.report["dense"]["latency_ms"]["p50"],
             pruned_p50_ms=res.report["pruned"]["latency_ms"]["p50"])
    r["stage"] = "onnx"
    import onnxruntime as ort

    sess = ort.InferenceSession(res.onnx)
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, side, side), np.float32)})[0]
    assert out.shape == (1, 10), out.shape
    r["stage"] = "ok" if res.certified and r["params_pruned"] < r["params_dense"] else "not certified"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/zoo_coverage.json")
    ap.add_argument("--models", default=None, help="comma-separated pytorchcv names or transformers:deit_tiny, transformers:convnext_atto (default: the list above)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    ap.add_argument("--one", nargs=3, metavar=("NAME", "SIDE", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # the child process
        name, side, work = args.one
        result: dict = {"model": name}
        try:
            run_one(name, int(side), Path(work), result)
        except BaseException as err:  # the benchmark records every failure as data, at the stage it reached
            result["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        print("RESULT " + json.dumps(result))
        return
    models = ([(m, 224 if not m.endswith(("cifar10", "cifar100")) else 32) for m in args.models.split(",")]
              if args.models else DEFAULT_MODELS)
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    work = out.with_suffix(".work")
    work.mkdir(parents=True, exist_ok=True)
    (work / "device.yaml").write_text(DEVICE_YAML)
    for name, side in models:
        if name in done["runs"]:
            continue
        t0 = time.perf_counter()
        load = os.getloadavg()[0]
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", name, str(side), str(work)], capture_output=True,
                                  text=True, timeout=args.timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else {"model": name, "error": (proc.stderr.strip().splitlines() or
                                                                           ["no result"])[-1][:300]}
        except subprocess.TimeoutExpired:
            r = {"model": name, "error": f"timed out after {args.timeout:.0f} s"}
        r.update(wall_s=time.perf_counter() - t0, load_before=load)
        if "error" in r:
            r["failed_at"] = r.get("stage", "start")
            r["stage"] = "failed"
        done["runs"][name] = r
        out.write_text(json.dumps(done, indent=2))
        print(f"{name:36s} {r.get('stage')!s:14s} {r.get('groups', '-')!s:>4} groups "
              f"{r.get('profile_s', 0):7.1f} s profile  {r.get('error', '')[:90]}", flush=True)
    runs = done["runs"].values()
    ok = sum(r.get("stage") == "ok" for r in runs)
    print(f"{ok}/{len(done['runs'])} ok")


if __name__ == "__main__":
    main()
