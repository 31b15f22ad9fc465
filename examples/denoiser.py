"""A model that is not a classifier: a small encoder-decoder with a skip concatenation that denoises images.

The task is Fashion-MNIST images with Gaussian noise; the metric is PSNR of the reconstruction
(higher is better), so ``score_fn`` returns it and ``finetune_fn`` is a mean-squared-error loop.
No labels, no accuracy, no hwprune recipe: the concatenation couples the decoder's input to two
producers, which the dependency graph prunes together.

    python examples/denoiser.py            # full setting (minutes here)
    python examples/denoiser.py --fast     # about a minute (what the test suite runs)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hwprune
from hwprune.data import read_idx

NOISE_STD = 0.3


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class Denoiser(nn.Module):
    """28x28 -> 14x14 -> 28x28, with the first encoder block concatenated into the decoder (a U-Net in small)."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.enc1 = block(1, width)
        self.enc2 = block(width, 2 * width, stride=2)
        self.mid = block(2 * width, 2 * width)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = block(2 * width + width, width)
        self.out = nn.Conv2d(width, 1, 1)  # defined last: the output layer keeps its one channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        m = self.mid(self.enc2(e1))
        d = self.dec(torch.cat([self.up(m), e1], dim=1))
        return x - self.out(d)  # predicts the noise (residual learning)


def noisy_pairs(data_dir: str, prefix: str, limit: int | None, seed: int) -> TensorDataset:
    """(noisy, clean) image pairs in [0, 1]; the noise is drawn once, so every score is reproducible."""
    d = Path(data_dir)
    clean = torch.from_numpy(read_idx(str(next(d.glob(f"{prefix}-images-idx3-ubyte*"))))[:limit].copy())
    clean = clean.float().unsqueeze(1) / 255.0
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * NOISE_STD
    return TensorDataset(clean + noise, clean)


def train_mse(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for noisy, clean in loader:
            loss = F.mse_loss(model(noisy), clean)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def psnr_db(model: nn.Module, loader: DataLoader) -> float:
    """Peak signal-to-noise ratio of the reconstructions (images in [0, 1]), in dB."""
    model.eval()
    se = n = 0.0
    for noisy, clean in loader:
        se += float(F.mse_loss(model(noisy).clamp(0, 1), clean, reduction="sum"))
        n += clean.numel()
    return 10.0 * math.log10(1.0 / (se / n))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--device", default="x86-cpu-ort", help="device config name or YAML path")
    ap.add_argument("--out", default="runs/example-denoiser")
    ap.add_argument("--speedup", type=float, default=1.5)
    ap.add_argument("--fast", action="store_true",
                    help="tiny data and search: a smoke run of about a minute (its accuracies are near chance)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    n_train, n_val, epochs, ft_epochs, evals = (256, 128, 1, 1, 4) if args.fast else (20000, 2000, 3, 1, 40)
    train_loader = DataLoader(noisy_pairs(args.data_dir, "train", n_train, 0), batch_size=64, shuffle=True)
    val_loader = DataLoader(noisy_pairs(args.data_dir, "t10k", n_val, 1), batch_size=250)

    started = time.perf_counter()
    model = train_mse(Denoiser(), train_loader, epochs, lr=2e-3)
    example = torch.zeros(1, 1, 28, 28)
    out = Path(args.out)
    lut = hwprune.profile(model, example, device=args.device, lut=str(out.with_suffix(".lut.parquet")),
                          calibration_samples=0 if args.fast else 10)
    result = hwprune.prune(model, example, device=args.device, lut=lut, speedup=args.speedup,
                           score_fn=lambda m: psnr_db(m, val_loader),
                           finetune_fn=lambda m, teacher: train_mse(m, train_loader, ft_epochs, 1e-3),
                           bn_data=[x for x, _ in list(train_loader)[:4]],
                           agent="uniform" if args.fast else "rl", max_evaluations=evals, out=str(out),
                           overwrite=True)
    summary = {"example": "denoiser", "certified": result.certified,
               "upper_bound_ms": result.certificate.upper_bound_ms, "budget_ms": result.certificate.budget_ms,
               "params_dense": result.report["dense"]["params"], "params_pruned": result.report["pruned"]["params"],
               "psnr_noisy_db": 10.0 * math.log10(1.0 / NOISE_STD ** 2),
               "psnr_dense_db": result.report["dense"]["score"], "psnr_pruned_db": result.report["pruned"]["score"],
               "seconds": time.perf_counter() - started, "run": str(out)}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
