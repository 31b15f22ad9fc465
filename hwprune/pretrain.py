"""Pre-training a dense model from scratch: the checkpoint that pruning starts from.

``pretrain`` trains on the dataset's train split minus the validation split
(``train_val_split(val_fraction=0.1, seed=0)``, the same rows that pruning holds out), then
reports top-1 accuracy on the test split. It writes ``OUT`` (a plain ``state_dict``, loadable
with ``hwprune.models.load_weights`` under ``torch.load(weights_only=True)``) and
``OUT.json`` with the recipe, the accuracies, the per-epoch history, the environment and
the command that reproduces it. Both are written atomically, the checkpoint first, so a
sidecar always describes the checkpoint next to it. While training, the weights of the
last finished epoch are kept in ``OUT.partial`` and the whole training state in
``OUT.resume`` (both removed on success). Running the same command again after an
interruption continues from ``OUT.resume`` after its last finished epoch, with the same
result as an uninterrupted run; a different recipe starts over.

Under ``torchrun --standalone --nproc_per_node=N -m hwprune.cli pretrain ...`` every rank
trains its shard (see :mod:`hwprune.train`) and only rank 0 evaluates and writes.

Example:
    >>> r = pretrain("resnet20", "fashion-mnist", epochs=30,
    ...              out="checkpoints/resnet20-fmnist.pt")  # doctest: +SKIP
    >>> r.test_accuracy, r.sidecar_path                     # doctest: +SKIP
    (0.93, 'checkpoints/resnet20-fmnist.pt.json')
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hwprune.errors import HwpruneError, check_integer
from profilers.fileio import check_writable
from hwprune.train import TrainResult, evaluate, save_state_dict, train

VAL_FRACTION = 0.1
SPLIT_SEED = 0  # fixed, so every command holds out the same validation rows


@dataclass
class PretrainResult:
    """Where the checkpoint went and how good it is (accuracies 0..1; None on ranks > 0)."""

    checkpoint_path: str
    sidecar_path: str
    test_accuracy: float | None
    val_accuracy: float | None
    seconds: float
    train: TrainResult
    command: str
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _check_settings(epochs: Any, out: str, lr: Any, batch_size: Any, seed: Any, threads: Any) -> None:
    """Every setting, before the dataset loads and long before a NaN loss or hours of training would say it."""
    check_integer(epochs, "--epochs", 1)
    check_integer(batch_size, "--batch-size", 1)
    check_integer(seed, "--seed", 0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise HwpruneError(f"--lr must be a finite number > 0, got {lr!r}")
    if os.path.isdir(out):
        raise HwpruneError(f"--out {out} is a directory; give a file path such as {os.path.join(out, 'model.pt')}")
    check_writable(out, "--out", "torch")
    if threads is not None:
        check_integer(threads, "--threads", 1)


def pretrain(model: str, data: str = "fashion-mnist", *, epochs: int = 30, out: str, lr: float = 0.1,
             batch_size: int = 128, seed: int = 0, threads: int | None = None, progress: bool = True,
             log: Callable[[str], None] | None = print) -> PretrainResult:
    """Train ``model`` from scratch on ``data`` and save the checkpoint plus its JSON sidecar.

    Args:
        model: a name for ``hwprune.models.create_model`` (e.g. ``resnet20``).
        data: a spec for ``hwprune.data.load_dataset`` (``fashion-mnist``, ``cifar10:DIR``, ...).
        epochs: training epochs (SGD, momentum 0.9, weight decay 5e-4, cosine schedule).
        out: the checkpoint path; the sidecar is ``out + ".json"``.
        lr: peak learning rate at batch 128, scaled linearly with ``batch_size``.
        batch_size: global batch size.
        seed: seeds the initial weights, the epoch order and the augmentation.
        threads: ``torch.set_num_threads`` for the run (None leaves it).
        progress: show a progress bar per epoch.
        log: receives one line per epoch and the final summary (rank 0 only).

    Returns:
        A :class:`PretrainResult`.

    Raises:
        HwpruneError: unknown model or data, bad settings, an unwritable ``out``, or a NaN loss
            (the last good weights are then in ``out + ".partial"``).
    """
    from hwprune.data import load_dataset, train_val_split
    from hwprune.models import create_model

    _check_settings(epochs, out, lr, batch_size, seed, threads)
    out_dir = os.path.dirname(os.path.abspath(out))
    if threads:
        torch.set_num_threads(int(threads))
    train_full = load_dataset(data, "train")
    test_ds = load_dataset(data, "test")
    train_ds, val_ds = train_val_split(train_full, VAL_FRACTION, SPLIT_SEED)
    torch.manual_seed(seed)
    net = create_model(model, in_channels=train_full.in_channels, num_classes=train_full.num_classes,
                       input_size=train_full.input_size)
    command = "hwprune pretrain " + " ".join(shlex.quote(a) for a in (
        "--model", model, "--data", data, "--epochs", str(epochs), "--lr", f"{lr:g}",
        "--batch-size", str(batch_size), "--seed", str(seed), "--out", out))
    rank = int(os.environ.get("RANK", "0") or 0)
    say = log if (log is not None and rank == 0) else (lambda _m: None)
    if rank == 0:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise HwpruneError(f"cannot create the folder of --out {out}: {err.strerror}") from err
        if not os.access(out_dir, os.W_OK):
            raise HwpruneError(f"cannot write --out {out}: folder {out_dir} is not writable")
    say(f"pretraining {model} on {data}: {len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test images")

    partial, resume = out + ".partial", out + ".resume"
    result = train(net, train_ds, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, val_ds=val_ds,
                   log=say, checkpoint_path=partial, progress=progress, resume_path=resume)
    if result.rank != 0:
        return PretrainResult(out, out + ".json", None, None, result.seconds, result, command, result.rank)

    val_acc = result.history[-1].get("val_acc") if result.history else None
    test_acc = evaluate(net, test_ds)
    save_state_dict(net, out)
    for leftover in (partial, resume):
        if os.path.exists(leftover):
            os.remove(leftover)
    sidecar = {
        "model": model,
        "data": data,
        "checkpoint": os.path.basename(out),
        "test_accuracy": test_acc,
        "val_accuracy": val_acc,
        "best_val_accuracy": result.best_val_acc,
        "seconds": result.seconds,
        "resumed_at_epoch": result.resumed_at_epoch,
        "recipe": {
            "model": model, "data": data, "epochs": epochs, "lr": lr, "peak_lr": result.lr,
            "batch_size": batch_size, "seed": seed, "optimizer": "sgd", "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "cosine-per-step", "augment": "random-crop+hflip",
            "val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED, "world_size": result.world_size,
            "threads": torch.get_num_threads(),
        },
        "splits": {"train": len(train_ds), "val": len(val_ds), "test": len(test_ds)},
        "history": result.history,
        "command": command,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "platform": platform.platform(), "hwprune": _hwprune_version()},
    }
    _write_json_atomic(out + ".json", sidecar)
    say(f"test accuracy {test_acc:.4f}"
        + (f", val accuracy {val_acc:.4f}" if val_acc is not None else "")
        + f" after {result.seconds:.0f} s of training; saved {out} and {out}.json")
    return PretrainResult(out, out + ".json", test_acc, val_acc, result.seconds, result, command, 0)


def _write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _hwprune_version() -> str:
    from hwprune import __version__

    return __version__
