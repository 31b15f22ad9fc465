"""Recovery by PyTorch Lightning's ``Trainer``: any engine that trains an ``nn.Module`` can be ``finetune_fn``.

The model, data and metric are the own-training-loop example's; only recovery differs. The
pruned model is wrapped in a ``LightningModule`` that distils from the dense teacher;
``Trainer.fit`` does the training (and would do it on GPUs, over DDP or FSDP, with
``accelerator=`` / ``strategy=``), and the trained inner module goes back to hwprune, which
exports and certifies it. Needs the extra: ``pip install 'hwprune[lightning]'``.

    python examples/lightning_recovery.py           # full setting (minutes here)
    python examples/lightning_recovery.py --fast    # about a minute (what the test suite runs)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import own_training_loop  # noqa: E402  (the same model, data and metric)


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
    """The own-training-loop example with Lightning doing the recovery."""
    return own_training_loop.main(argv, finetune=lightning_finetune, name="lightning_recovery",
                                  default_out="runs/example-lightning")


if __name__ == "__main__":
    main()
