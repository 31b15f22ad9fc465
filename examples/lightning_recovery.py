"""Recovery by PyTorch Lightning's ``Trainer``: any engine that trains an ``nn.Module`` can be ``finetune_fn``.

The pruned model is wrapped in a ``LightningModule`` that distils from the dense teacher;
``Trainer.fit`` does the training (and would do it on GPUs, over DDP or FSDP, with
``accelerator=`` / ``strategy=``), and the trained inner module goes back to hwprune, which
exports and certifies it. Needs the extra: ``pip install 'hwprune[lightning]'``.

    python examples/lightning_recovery.py           # full setting (minutes here)
    python examples/lightning_recovery.py --fast    # seconds (what the test suite runs)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import hwprune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_training_loop import SmallNet, accuracy, load_fashion, train_epochs  # noqa: E402


def lightning_finetune(loader: DataLoader, epochs: int, lr: float):
    """A ``finetune_fn`` that trains with ``lightning.Trainer`` (imported here: an optional extra)."""
    try:
        import lightning as L
    except ImportError:
        raise SystemExit("this example needs Lightning: pip install 'hwprune[lightning]'") from None

    class Distill(L.LightningModule):
        def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
            super().__init__()
            self.student, self.teacher = student, teacher

        def on_train_epoch_start(self) -> None:
            self.teacher.eval()  # Trainer.fit puts the whole LightningModule in train mode

        def training_step(self, batch, _index):
            x, y = batch
            out = self.student(x)
            with torch.no_grad():
                soft = F.softmax(self.teacher(x) / 4.0, dim=1)
            kd = F.kl_div(F.log_softmax(out / 4.0, dim=1), soft, reduction="batchmean") * 16.0
            return 0.5 * F.cross_entropy(out, y) + 0.5 * kd

        def configure_optimizers(self):
            return torch.optim.SGD(self.student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    def finetune(model: nn.Module, teacher: nn.Module) -> nn.Module:
        model.train()  # hwprune hands the pruned model over in eval mode
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Distill(model, teacher), train_dataloaders=loader)
        return model.eval()

    return finetune


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--device", default="x86-cpu-ort", help="device config name or YAML path")
    ap.add_argument("--out", default="runs/example-lightning")
    ap.add_argument("--speedup", type=float, default=1.5)
    ap.add_argument("--fast", action="store_true", help="tiny data and search: a smoke run in seconds")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    n_train, n_test, dense_epochs, ft_epochs, evals = (512, 256, 1, 1, 4) if args.fast else (None, None, 3, 1, 60)
    finetune = lightning_finetune  # fail early when the extra is missing
    train_set, test_set = load_fashion(args.data_dir, n_train, n_test)
    val_set, test_set = torch.utils.data.random_split(test_set, [len(test_set) // 2, len(test_set) - len(test_set) // 2],
                                                      generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True)
    val_loader, test_loader = DataLoader(val_set, batch_size=500), DataLoader(test_set, batch_size=500)

    started = time.perf_counter()
    model = train_epochs(SmallNet(), train_loader, dense_epochs, lr=0.05)
    example = torch.zeros(1, 1, 28, 28)
    out = Path(args.out)
    lut = hwprune.profile(model, example, device=args.device, lut=str(out.with_suffix(".lut.parquet")),
                          calibration_samples=0 if args.fast else 10)
    result = hwprune.prune(model, example, device=args.device, lut=lut, speedup=args.speedup,
                           score_fn=lambda m: accuracy(m, val_loader),
                           finetune_fn=finetune(train_loader, ft_epochs, 0.02),
                           bn_data=[x for x, _ in list(train_loader)[:4]],
                           agent="uniform" if args.fast else "rl", max_evaluations=evals, out=str(out),
                           overwrite=True)
    summary = {"example": "lightning_recovery", "certified": result.certified,
               "upper_bound_ms": result.certificate.upper_bound_ms, "budget_ms": result.certificate.budget_ms,
               "params_dense": result.report["dense"]["params"], "params_pruned": result.report["pruned"]["params"],
               "test_acc_dense": accuracy(model, test_loader), "test_acc_pruned": accuracy(result.model, test_loader),
               "seconds": time.perf_counter() - started, "run": str(out)}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
