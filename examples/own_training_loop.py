"""Your own model, metric and training loop through the Python API: a classifier on Fashion-MNIST.

Nothing here is hwprune's recipe: the network is defined below, the data are plain tensors in a
``DataLoader``, ``accuracy`` is the metric the search maximises and ``finetune`` is an ordinary
PyTorch loop (with distillation from the dense model, which hwprune passes as ``teacher``).
hwprune measures the device, searches the widths, prunes physically and certifies the latency.

    python examples/own_training_loop.py                       # full setting (about 10 min here)
    python examples/own_training_loop.py --fast                # about a minute (what the test suite runs)
    python examples/own_training_loop.py --data-dir DIR        # Fashion-MNIST IDX files elsewhere
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hwprune
from hwprune.data import read_idx


class SmallNet(nn.Module):
    """A user's classifier: three conv blocks (one with a residual add) and a linear head."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
                                  nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.head(self.down(x))


def load_fashion(data_dir: str, limit_train: int | None, limit_test: int | None):
    """Fashion-MNIST as float tensors in [0, 1], from the IDX files (any loader of your own would do)."""
    d = Path(data_dir)

    def part(prefix: str, limit: int | None):
        x = torch.from_numpy(read_idx(str(next(d.glob(f"{prefix}-images-idx3-ubyte*"))))[:limit].copy())
        y = torch.from_numpy(read_idx(str(next(d.glob(f"{prefix}-labels-idx1-ubyte*"))))[:limit].copy())
        return TensorDataset(x.float().unsqueeze(1) / 255.0, y.long())

    return part("train", limit_train), part("t10k", limit_test)


def train_epochs(model: nn.Module, loader: DataLoader, epochs: int, lr: float, teacher: nn.Module | None = None):
    """A plain SGD loop with a cosine schedule; with a teacher, half the loss is distillation."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            out = model(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / 4.0, dim=1)
                loss = 0.5 * loss + 0.5 * 16.0 * F.kl_div(F.log_softmax(out / 4.0, dim=1), soft, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def main(argv: list[str] | None = None, *, finetune=None, name: str = "own_training_loop",
         default_out: str = "runs/example-own-loop") -> dict:
    """Train the dense model, profile it, prune it with our metric and loop, print a summary.

    ``finetune(train_loader, epochs, lr)`` may build another ``finetune_fn`` (the Lightning
    example passes one); by default it is :func:`train_epochs` with distillation.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--device", default="x86-cpu-ort", help="device config name or YAML path")
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--speedup", type=float, default=1.5)
    ap.add_argument("--fast", action="store_true",
                    help="tiny data and search: a smoke run of about a minute (its accuracies are near chance)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    n_train, n_test, dense_epochs, ft_epochs, evals = ((512, 256, 1, 1, 4) if args.fast else (None, None, 3, 1, 60))
    train_set, test_set = load_fashion(args.data_dir, n_train, n_test)
    val_set, test_set = torch.utils.data.random_split(test_set, [len(test_set) // 2, len(test_set) - len(test_set) // 2],
                                                      generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True)
    val_loader, test_loader = DataLoader(val_set, batch_size=500), DataLoader(test_set, batch_size=500)
    if finetune is None:
        def finetune(loader, epochs, lr):
            return lambda m, teacher: train_epochs(m, loader, epochs, lr, teacher)

    started = time.perf_counter()
    model = train_epochs(SmallNet(), train_loader, dense_epochs, lr=0.05)
    dense_acc = accuracy(model, test_loader)
    example = torch.zeros(1, 1, 28, 28)
    out = Path(args.out)
    lut = hwprune.profile(model, example, device=args.device, lut=str(out.with_suffix(".lut.parquet")),
                          calibration_samples=0 if args.fast else 10)
    result = hwprune.prune(
        model, example, device=args.device, lut=lut, speedup=args.speedup,
        score_fn=lambda m: accuracy(m, val_loader),                 # the search's objective
        finetune_fn=finetune(train_loader, ft_epochs, 0.02),        # recovery: our own loop
        bn_data=[x for x, _ in list(train_loader)[:4]],             # re-estimate BN before scoring a candidate
        agent="uniform" if args.fast else "rl", max_evaluations=evals, out=str(out), overwrite=True)
    summary = {"example": name, "certified": result.certified,
               "upper_bound_ms": result.certificate.upper_bound_ms, "budget_ms": result.certificate.budget_ms,
               "params_dense": result.report["dense"]["params"], "params_pruned": result.report["pruned"]["params"],
               "test_acc_dense": dense_acc, "test_acc_pruned": accuracy(result.model, test_loader),
               "seconds": time.perf_counter() - started, "run": str(out)}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
