"""Training and evaluation of image classifiers: SGD + cosine schedule, optional distillation.

:func:`train` is the one training loop of hwprune (pre-training a dense model, fine-tuning a
pruned one, with a teacher for knowledge distillation). It reads an :class:`ImageDataset`
directly (uint8 images, augmented on tensors, no torchvision), schedules the learning
rate per step, stops on a non-finite loss with the last good weights restored, and runs
unchanged under ``torchrun`` as data-parallel training. :class:`TrainHooks` lets a caller
add a loss term or change the model's structure between steps (``hwprune.finetune``'s
selective weight decay and gradual pruning) without a second training loop.

Distributed (``torchrun --standalone --nproc_per_node=N -m hwprune.cli pretrain ...``):
when ``WORLD_SIZE`` > 1 is in the environment, :func:`train` initialises the default
process group (``nccl`` when CUDA is available, else ``gloo``) unless it already exists,
wraps the model in ``DistributedDataParallel`` and gives each rank a disjoint shard of
every epoch's permutation, padded to equal length as ``DistributedSampler`` does.
``batch_size`` stays the *global* batch (each rank takes ``batch_size / N``), so a recipe
means the same thing at any world size. Every rank returns the same weights; only rank 0
logs, shows progress and writes ``checkpoint_path``. A process group that :func:`train`
created is destroyed before it returns.

Resume: with ``resume_path``, the whole training state (weights, optimiser, step, both
random streams, history) is written there after every epoch, and a later call with the same
recipe continues from the last finished epoch instead of starting over. Continuing gives the
same weights as an uninterrupted run: the epoch order and the augmentation draw from the
restored streams, and the learning-rate schedule from the restored step.

Example:
    >>> import torch
    >>> from hwprune.data import ImageDataset
    >>> from hwprune.train import evaluate, train
    >>> ds = ImageDataset(torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8),
    ...                   torch.arange(64) % 2, (0.5,), (0.25,), ("a", "b"))
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    >>> result = train(model, ds, epochs=1, batch_size=16, progress=False, log=lambda m: None)
    >>> result.epochs, 0.0 <= evaluate(model, ds) <= 1.0
    (1, True)
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.data import ImageDataset
from hwprune.errors import HwpruneError

# The reference batch of the linear learning-rate scaling rule (Goyal et al. 2017).
LR_REFERENCE_BATCH = 128


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``history`` has one dict per finished epoch: ``epoch`` (1-based), ``loss`` and ``acc``
    (mean over the epoch's augmented training batches, all ranks), ``lr`` (at the epoch's
    last step), ``seconds``, and ``val_acc`` when a validation set was given.
    ``stopped_reason`` is ``"completed"`` or ``"nan"``.
    """

    epochs: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_acc: float | None = None
    stopped_reason: str = "completed"
    lr: float = 0.0  # the peak learning rate actually used (after batch scaling)
    world_size: int = 1
    rank: int = 0
    resumed_at_epoch: int = 0  # epochs taken from ``resume_path`` (0: started from scratch)


class TrainHooks:
    """Extension points of :func:`train`, called on every optimisation step (all ranks).

    ``step`` is the 0-based global step and ``total_steps`` the whole run's step count, the
    clock of the learning-rate schedule. Override either method; the base does nothing.
    """

    def before_step(self, model: nn.Module, step: int, total_steps: int) -> bool:
        """Called before the step's forward pass; may replace ``model``'s parameters in place
        (physical pruning). Return True when it did: :func:`train` then rebuilds the optimiser
        (momentum is lost; the shapes changed), puts the model back in training mode and
        takes the new weights as the last good ones."""
        return False

    def extra_loss(self, model: nn.Module, step: int, total_steps: int) -> torch.Tensor | None:
        """A differentiable term added to the step's loss (a regulariser), or None.
        The reported ``loss`` stays the task loss alone."""
        return None


def cosine_lr(step: int, total_steps: int, base_lr: float) -> float:
    """Learning rate of ``step`` (0-based) of ``total_steps`` on a cosine from ``base_lr`` to 0.

    Example:
        >>> cosine_lr(0, 100, 0.1), round(cosine_lr(50, 100, 0.1), 4), cosine_lr(100, 100, 0.1) < 1e-12
        (0.1, 0.05, True)
    """
    if total_steps <= 0:
        return base_lr
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015), mean over the batch.

    ``alpha * T**2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``; the
    ``T**2`` keeps the soft term's gradient scale independent of the temperature. Both
    distributions are handled as log-probabilities, so large logits do not underflow.

    Example:
        >>> s = torch.tensor([[1.0, 0.0]]); y = torch.tensor([0])
        >>> float(kd_loss(s, s, y, T=2.0, alpha=1.0))  # identical logits: no soft loss
        0.0
    """
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * (T * T) * soft + (1.0 - alpha) * hard


def augment_batch(images: torch.Tensor, generator: torch.Generator, padding: int | None = None,
                  flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, vectorised.

    Works on any dtype (hwprune augments uint8 pixels before normalising, so the padding is
    black as in torchvision's ``RandomCrop(padding=...)``). ``padding`` defaults to an
    eighth of the image side, clamped to 1..4 (4 px for 32x32, 3 px for 28x28).
    """
    b, _, h, w = images.shape
    if padding is None:
        padding = max(1, min(4, min(h, w) // 8))
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, :, None]  # B x H x 1
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, :]  # B x 1 x W
        batch_idx = torch.arange(b, device=device)[:, None, None]
        # Advanced indices around a slice put their broadcast dims first: B x H x W x C.
        # clone, not contiguous(): with one channel the permuted view already counts as
        # contiguous but keeps channels-last strides (HW, 1, W, 1), and torch 2.13's CPU conv
        # backward on such an input corrupts the heap ("double free or corruption") for
        # layers with odd channel counts, i.e. for pruned models.
        images = padded[batch_idx, :, rows, cols].permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(device)
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def evaluate(model: nn.Module, ds: ImageDataset, batch_size: int = 512,
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``ds``, in eval mode (the mode is restored after).

    Example:
        >>> from hwprune.data import ImageDataset
        >>> ds = ImageDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1]),
        ...                   (0.0,), (1.0,), ("a", "b"))
        >>> zero = torch.nn.Linear(4, 2)
        >>> _ = torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
        >>> evaluate(torch.nn.Sequential(torch.nn.Flatten(), zero), ds)  # ties go to class 0
        0.6666666666666666
    """
    correct, total = _count_correct(model, ds, np.arange(len(ds)), batch_size, _resolve_device(model, device))
    return correct / total if total else 0.0


def train(
    model: nn.Module,
    train_ds: ImageDataset,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    seed: int = 0,
    teacher: nn.Module | None = None,
    kd_temperature: float = 4.0,
    kd_alpha: float = 0.9,
    label_smoothing: float = 0.0,
    augment: bool = True,
    val_ds: ImageDataset | None = None,
    log: Callable[[str], None] | None = print,
    checkpoint_path: str | None = None,
    progress: bool = True,
    raise_on_nan: bool = True,
    device: torch.device | str | None = None,
    hooks: TrainHooks | None = None,
    resume_path: str | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD (Nesterov off) and a per-step cosine schedule.

    Args:
        model: the network; trained in place (on ``device``, default: where its parameters are).
        train_ds: training images; each epoch is a fresh seeded permutation.
        epochs: passes over ``train_ds``; 0 trains nothing.
        lr: peak learning rate for a batch of 128; the rate used is
            ``lr * batch_size / 128`` (linear scaling), decayed to 0 on a cosine per step.
        momentum, weight_decay: SGD settings (decay on every parameter).
        batch_size: global batch (split across ranks when distributed). The last partial
            batch of an epoch is dropped when there is at least one full batch.
        seed: fixes the epoch permutations and the augmentation.
        teacher: a trained model for knowledge distillation (run in eval mode under no_grad);
            the loss is then :func:`kd_loss` with ``kd_temperature`` and ``kd_alpha`` (the
            weight of the soft, temperature-scaled term; ``1 - kd_alpha`` weighs the labels).
        label_smoothing: for the cross-entropy without a teacher.
        augment: random crop (padding an eighth of the side, 1-4 px) and horizontal flip.
        val_ds: evaluated after every epoch (``val_acc`` in the history, ``best_val_acc``).
        log: called with one line per epoch (rank 0 only); None for silence.
        checkpoint_path: the model's ``state_dict`` is written here atomically after every
            epoch (rank 0 only), and the restored last good weights after a NaN.
        progress: a tqdm bar per epoch with the running loss and accuracy (rank 0 only).
        raise_on_nan: on a non-finite loss, restore the weights of the last finished epoch
            (epoch 0 = the weights passed in) or of the last structural change by ``hooks``,
            whichever is later, save them, then raise :class:`HwpruneError`;
            with False, return instead with ``stopped_reason="nan"``.
        device: where to train; under ``torchrun`` with CUDA, ``cuda:LOCAL_RANK``.
        hooks: a :class:`TrainHooks` (a regulariser, scheduled pruning); None for none.
        resume_path: where the full training state goes after every epoch (rank 0 writes
            it). If it already holds the state of a run with the same recipe (settings,
            dataset size, world size, parameter shapes), training continues after its last
            epoch; a state from another recipe, or an unreadable file, is reported through
            ``log`` and replaced. The caller removes the file when it no longer needs it.
            Not with ``hooks``, which may change the model's shapes mid-run.

    Returns:
        A :class:`TrainResult`.

    Raises:
        HwpruneError: bad arguments, an empty dataset, or a non-finite loss (see above).
    """
    if epochs < 0:
        raise HwpruneError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise HwpruneError(f"batch_size must be >= 1, got {batch_size}")
    if lr <= 0:
        raise HwpruneError(f"lr must be > 0, got {lr}")
    if not 0.0 <= kd_alpha <= 1.0 or kd_temperature <= 0:
        raise HwpruneError(f"need 0 <= kd_alpha <= 1 and kd_temperature > 0, got {kd_alpha}, {kd_temperature}")
    if len(train_ds) == 0:
        raise HwpruneError("the training set is empty")
    if resume_path and hooks is not None:
        raise HwpruneError("resume_path cannot be combined with hooks: they may change the model's shapes")

    dist_ctx = DistContext.from_env()
    teacher_was_training = teacher.training if teacher is not None else False
    try:
        return _train(model, train_ds, dist_ctx, epochs=epochs, lr=lr, momentum=momentum,
                      weight_decay=weight_decay, batch_size=batch_size, seed=seed, teacher=teacher,
                      kd_temperature=kd_temperature, kd_alpha=kd_alpha, label_smoothing=label_smoothing,
                      augment=augment, val_ds=val_ds, log=log, checkpoint_path=checkpoint_path,
                      progress=progress, raise_on_nan=raise_on_nan, device=device, hooks=hooks,
                      resume_path=resume_path)
    finally:
        dist_ctx.close()
        if teacher is not None:
            teacher.train(teacher_was_training)


# --- internals -------------------------------------------------------------------------------

class DistContext:
    """The torchrun environment: rank, world size, and whether we own the process group."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, owned: bool = False):
        self.rank, self.world_size, self.local_rank, self.owned = rank, world_size, local_rank, owned

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        """The torchrun rank and world; the process group is started (and owned) when torchrun set
        WORLD_SIZE > 1 and none runs yet."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world_size <= 1:
            return cls()
        if not dist.is_available():
            raise HwpruneError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, owned=True)

    def broadcast_bytes(self, data: bytes | None, group=None) -> bytes:
        """Rank 0's ``data`` on every rank (``data`` is ignored elsewhere), over ``group`` (a process
        group that carries CPU tensors, e.g. gloo; the default group when None). Two broadcasts:
        the length, then the bytes."""
        if not self.active:
            return data or b""
        import torch.distributed as dist

        size = torch.tensor([len(data) if self.is_main else 0], dtype=torch.int64)
        counts = _use_counts([size])
        dist.broadcast(size, src=0, group=group)
        _await_release([size], counts)
        if size.item() == 0:
            return b""
        payload = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main and size.item()
                   else torch.zeros(int(size.item()), dtype=torch.uint8))
        counts = _use_counts([payload])
        dist.broadcast(payload, src=0, group=group)
        _await_release([payload], counts)
        return payload.numpy().tobytes()

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        counts = _use_counts([t])
        dist.all_reduce(t)
        _await_release([t], counts)
        return t.tolist()

    def all_gather_tensor(self, t: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """``[t of rank 0, t of rank 1, ...]`` on every rank, on the CPU (``[t]`` when not distributed).

        ``t`` must have the same shape and dtype on every rank. Not ``all_gather_object``:
        its pickling buffers live inside torch, where ``_await_release`` cannot see them.
        """
        if not self.active:
            return [t]
        import torch.distributed as dist

        src = t.to(device)
        out = [torch.empty_like(src) for _ in range(self.world_size)]
        counts = _use_counts([src, *out])
        dist.all_gather(out, src)
        _await_release([src, *out], counts)
        return [o.cpu() for o in out]

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owned = False


def _use_counts(tensors: list[torch.Tensor]) -> list[int] | None:
    """How many C++ references each tensor has (None where torch cannot say)."""
    try:
        return [t._use_count() for t in tensors]
    except AttributeError:  # a private API; without it we cannot wait, only hope
        return None


def _await_release(tensors: list[torch.Tensor], counts: list[int] | None, timeout_s: float = 10.0) -> None:
    """Return once the backend's threads hold none of ``tensors`` (their ``counts`` from before).

    A gloo worker thread drops its references to a collective's tensors a moment after the
    caller's wait returns, and in torch 2.13 that drop takes the GIL to release the tensor's
    Python object. Should the interpreter be finalizing by then (a rank that finishes its
    job at once), the worker exits mid-destructor and the rank aborts with "terminate called
    without an active exception": about 1 torchrun job in 25 on this 2-core machine, always
    in ``~AsyncAllgatherWork`` (pytorch/pytorch pull 179291 describes the same race). Sleeping here
    releases the GIL so the worker finishes while the interpreter is whole.
    """
    if counts is None:
        return
    deadline = time.monotonic() + timeout_s
    while any(t._use_count() > c for t, c in zip(tensors, counts)) and time.monotonic() < deadline:
        time.sleep(0.0005)


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _norm_tensors(ds: ImageDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(ds.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(ds.std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
    return mean, std


@torch.no_grad()
def _count_correct(model: nn.Module, ds: ImageDataset, indices: np.ndarray, batch_size: int,
                   device: torch.device) -> tuple[int, int]:
    was_training = model.training
    model.eval()
    mean, std = _norm_tensors(ds, device)
    correct = 0
    try:
        for start in range(0, len(indices), batch_size):
            idx = torch.as_tensor(indices[start:start + batch_size], dtype=torch.int64)
            x = (ds.images[idx].to(device).float() - mean) / std
            y = ds.labels[idx].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return correct, len(indices)


def _shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of ``order``, padded by wrapping so every rank has as many items."""
    if world_size == 1:
        return order
    per_rank = -(-len(order) // world_size)
    total = per_rank * world_size
    padded = np.concatenate([order, np.resize(order, total - len(order))]) if total > len(order) else order
    return padded[rank:total:world_size]


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_state_dict(model_or_state: nn.Module | dict[str, torch.Tensor], path: str) -> None:
    """``torch.save`` a state_dict atomically: a temporary file in the same folder, then rename."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    _save_atomic({k: v.detach().cpu() for k, v in state.items()}, path)


def _save_atomic(obj, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports some write failures as RuntimeError
        msg = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise HwpruneError(f"cannot write checkpoint {path}: {msg}") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass
class _StepPlan:
    """How the run is cut into steps: the scaled peak rate and the per-rank batch counts."""

    peak_lr: float
    n: int
    local_batch: int
    steps_per_epoch: int
    total_steps: int


@dataclass
class _TrainContext:
    """What stays fixed for a whole run of :func:`_train`: the model, the data, the recipe and where to write."""

    model: nn.Module
    train_ds: ImageDataset
    dist_ctx: DistContext
    device: torch.device
    say: Callable[[str], None]
    plan: _StepPlan
    started: float
    epochs: int
    momentum: float
    weight_decay: float
    teacher: nn.Module | None
    kd_temperature: float
    kd_alpha: float
    label_smoothing: float
    augment: bool
    val_ds: ImageDataset | None
    checkpoint_path: str | None
    progress: bool
    raise_on_nan: bool
    hooks: TrainHooks | None
    resume_path: str | None
    fingerprint: dict
    mean: torch.Tensor
    std: torch.Tensor
    val_order: np.ndarray | None


@dataclass
class _LoopState:
    """What the training loop carries from step to step and from epoch to epoch."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    order_rng: np.random.Generator
    aug_gen: torch.Generator
    step: int = 0
    first_epoch: int = 1
    prior_seconds: float = 0.0
    last_good: dict[str, torch.Tensor] = field(default_factory=dict)
    last_good_at: str = ""
    current_lr: float = 0.0


@dataclass
class _EpochTotals:
    """An epoch's running sums on this rank, and the 1-based step of a non-finite loss if one stopped it."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    bad_step: int | None = None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Count one optimised batch: its task loss and correct predictions, weighted by its size."""
        batch_n = len(y)
        self.loss_sum += float(loss.detach()) * batch_n
        self.correct += float((logits.detach().argmax(1) == y).sum())
        self.seen += batch_n


def _train(model: nn.Module, train_ds: ImageDataset, dist_ctx: DistContext, *, epochs, lr, momentum,
           weight_decay, batch_size, seed, teacher, kd_temperature, kd_alpha, label_smoothing, augment,
           val_ds, log, checkpoint_path, progress, raise_on_nan, device, hooks, resume_path) -> TrainResult:
    """The body of :func:`train` on checked arguments: set the run up, then train epoch by epoch."""
    started = time.perf_counter()
    rank, world = dist_ctx.rank, dist_ctx.world_size
    if device is None and dist_ctx.active and torch.cuda.is_available():
        device = torch.device("cuda", dist_ctx.local_rank)
    device = _resolve_device(model, device)
    model.to(device)
    say = log if (log is not None and dist_ctx.is_main) else (lambda _msg: None)
    plan = _plan_steps(len(train_ds), batch_size, lr, world, epochs)
    result = TrainResult(epochs=0, seconds=0.0, lr=plan.peak_lr, world_size=world, rank=rank)
    if epochs == 0:
        return result

    if teacher is not None:
        teacher = teacher.to(device).eval()  # its forward runs under no_grad; train() restores its mode
    mean, std = _norm_tensors(train_ds, device)
    # Validation shards are not padded, so every image counts exactly once in the all-reduced accuracy.
    val_order = np.arange(len(val_ds))[rank::world] if val_ds is not None and len(val_ds) else None
    fingerprint = _recipe_fingerprint(model, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      batch_size=batch_size, seed=seed, world=world, n=plan.n, augment=augment,
                                      teacher=teacher, kd_temperature=kd_temperature, kd_alpha=kd_alpha,
                                      label_smoothing=label_smoothing)
    ctx = _TrainContext(
        model=model, train_ds=train_ds, dist_ctx=dist_ctx, device=device, say=say, plan=plan, started=started,
        epochs=epochs, momentum=momentum, weight_decay=weight_decay, teacher=teacher,
        kd_temperature=kd_temperature, kd_alpha=kd_alpha, label_smoothing=label_smoothing, augment=augment,
        val_ds=val_ds, checkpoint_path=checkpoint_path, progress=progress, raise_on_nan=raise_on_nan,
        hooks=hooks, resume_path=resume_path, fingerprint=fingerprint, mean=mean, std=std, val_order=val_order)
    state = _start_state(ctx, seed, result)
    batch = (f"{plan.local_batch * world} images ({plan.local_batch} on each of {world} ranks)" if world > 1
             else f"{plan.local_batch} images")
    say(f"training {plan.n} images for {epochs} epochs: {plan.steps_per_epoch} steps of {batch}, "
        f"peak lr {plan.peak_lr:g}, cosine to 0" + (", distilling" if teacher is not None else ""))
    for epoch in range(state.first_epoch, epochs + 1):
        epoch_start = time.perf_counter()
        totals = _run_epoch(ctx, state, epoch)
        if totals.bad_step is not None:
            return _stop_on_nan(ctx, state, result, epoch, totals.bad_step)
        _finish_epoch(ctx, state, result, epoch, totals, epoch_start)
    result.seconds = state.prior_seconds + time.perf_counter() - started
    return result


def _plan_steps(n: int, batch_size: int, lr: float, world: int, epochs: int) -> _StepPlan:
    """The linearly scaled peak learning rate and the step counts of ``n`` images over ``world`` ranks."""
    local_batch = max(1, batch_size // world)
    per_rank = -(-n // world)
    # Drop the ragged tail batch (a batch of one breaks BatchNorm) unless it is all there is.
    steps_per_epoch = max(1, per_rank // local_batch)
    return _StepPlan(peak_lr=lr * batch_size / LR_REFERENCE_BATCH, n=n, local_batch=local_batch,
                     steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs)


def _wrap_ddp(ctx: _TrainContext) -> nn.Module:
    """The model as the loop runs it: itself, or inside ``DistributedDataParallel`` when distributed."""
    if not ctx.dist_ctx.active:
        return ctx.model
    from torch.nn.parallel import DistributedDataParallel

    # 1x1 conv weight gradients come back with different strides on their size-1 dims,
    # which is the same memory layout; DDP's reducer warns about it anyway on every run.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = ctx.device
    return DistributedDataParallel(ctx.model, device_ids=[device.index] if device.type == "cuda" else None)


def _make_optimizer(ctx: _TrainContext) -> torch.optim.Optimizer:
    """A fresh SGD over the model's current parameters, at the peak learning rate."""
    return torch.optim.SGD(ctx.model.parameters(), lr=ctx.plan.peak_lr, momentum=ctx.momentum,
                           weight_decay=ctx.weight_decay)


def _start_state(ctx: _TrainContext, seed: int, result: TrainResult) -> _LoopState:
    """The optimiser and both random streams, continued from ``ctx.resume_path`` when it holds this recipe,
    with the model wrapped for the loop and its starting weights kept as the last good ones."""
    optimizer = _make_optimizer(ctx)
    # The permutation is shared by all ranks (same seed); the augmentation differs per rank.
    order_rng = np.random.default_rng(seed)
    aug_gen = torch.Generator().manual_seed(seed * 1000003 + ctx.dist_ctx.rank)
    state = _LoopState(net=ctx.model, optimizer=optimizer, order_rng=order_rng, aug_gen=aug_gen)
    if ctx.resume_path:
        _resume(ctx, state, result)
    state.net = _wrap_ddp(ctx)
    state.last_good = _state_copy(ctx.model)  # epoch 0 (or the resumed epoch): the weights we start from
    state.last_good_at = f"epoch {state.first_epoch - 1}"
    return state


def _resume(ctx: _TrainContext, state: _LoopState, result: TrainResult) -> None:
    """Load the saved training state of this recipe, if ``ctx.resume_path`` holds one, into the model,
    ``state`` and ``result``."""
    saved = _load_resume_state(ctx.resume_path, ctx.fingerprint, ctx.say)
    if saved is None:
        return
    # Every rank reads the same file, so the weights agree before DDP wraps the model.
    ctx.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.order_rng.bit_generator.state = saved["order_rng"]
    state.aug_gen.set_state(saved["aug_rng"][ctx.dist_ctx.rank])
    state.step = int(saved["step"])
    state.first_epoch = int(saved["epoch"]) + 1
    state.prior_seconds = float(saved["seconds"])
    result.history = list(saved["history"])
    result.best_val_acc = saved["best_val_acc"]
    result.epochs = result.resumed_at_epoch = int(saved["epoch"])
    ctx.say(f"resuming from {ctx.resume_path} after epoch {saved['epoch']}/{ctx.epochs} (delete it to start over)")


def _run_epoch(ctx: _TrainContext, state: _LoopState, epoch: int) -> _EpochTotals:
    """One pass over this rank's shard of a fresh permutation, with a progress bar; stops at the first
    non-finite loss (``bad_step`` of the result)."""
    plan = ctx.plan
    state.net.train()
    order = _shard(state.order_rng.permutation(plan.n), ctx.dist_ctx.rank, ctx.dist_ctx.world_size)
    bar = _progress_bar(plan.steps_per_epoch, f"epoch {epoch}/{ctx.epochs}", ctx.progress and ctx.dist_ctx.is_main)
    totals = _EpochTotals()
    try:
        for s in range(plan.steps_per_epoch):
            _apply_structure_hook(ctx, state, epoch, s)
            idx = torch.as_tensor(order[s * plan.local_batch:(s + 1) * plan.local_batch], dtype=torch.int64)
            if not _optimise_batch(ctx, state, idx, totals):
                totals.bad_step = s + 1
                break
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{totals.loss_sum / totals.seen:.4f}", acc=f"{totals.correct / totals.seen:.4f}",
                                lr=f"{state.current_lr:.4g}")
    finally:
        if bar is not None:
            bar.close()
    return totals


def _apply_structure_hook(ctx: _TrainContext, state: _LoopState, epoch: int, s: int) -> None:
    """Run ``hooks.before_step``; when it changed the model's parameters, rebuild what pointed at the old ones."""
    if ctx.hooks is None or not ctx.hooks.before_step(ctx.model, state.step, ctx.plan.total_steps):
        return
    # New parameter tensors: the old optimiser state and DDP buckets point at
    # the old ones, and pruning leaves the model in eval mode.
    ctx.model.to(ctx.device).train()
    state.net = _wrap_ddp(ctx)
    state.optimizer = _make_optimizer(ctx)
    state.last_good = _state_copy(ctx.model)  # the previous shapes can no longer be restored
    state.last_good_at = f"epoch {epoch} step {s + 1}, after pruning"


def _load_batch(ctx: _TrainContext, state: _LoopState, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``idx`` on the device: images augmented (when asked) and normalised, and their labels."""
    x = ctx.train_ds.images[idx]
    if ctx.augment:
        x = augment_batch(x, state.aug_gen)
    x = (x.to(ctx.device).float() - ctx.mean) / ctx.std
    y = ctx.train_ds.labels[idx].to(ctx.device)
    return x, y


def _task_loss(ctx: _TrainContext, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The distillation loss against the teacher's logits on ``x``, or the cross-entropy without a teacher."""
    if ctx.teacher is not None:
        with torch.no_grad():
            teacher_logits = ctx.teacher(x)
        return kd_loss(logits, teacher_logits, y, ctx.kd_temperature, ctx.kd_alpha)
    return F.cross_entropy(logits, y, label_smoothing=ctx.label_smoothing)


def _all_finite(ctx: _TrainContext, objective: torch.Tensor) -> bool:
    """Whether the step's objective is finite on every rank."""
    finite = bool(torch.isfinite(objective))
    if ctx.dist_ctx.active:
        # All ranks must agree to stop, or the others would hang in backward's all-reduce.
        finite = ctx.dist_ctx.all_sum([0.0 if finite else 1.0], ctx.device)[0] == 0.0
    return finite


def _optimise_batch(ctx: _TrainContext, state: _LoopState, idx: torch.Tensor, totals: _EpochTotals) -> bool:
    """One SGD step on the batch ``idx`` at the scheduled rate, counted in ``totals``; False, with nothing
    stepped, when the loss is not finite."""
    x, y = _load_batch(ctx, state, idx)
    state.current_lr = cosine_lr(state.step, ctx.plan.total_steps, ctx.plan.peak_lr)
    for group in state.optimizer.param_groups:
        group["lr"] = state.current_lr
    logits = state.net(x)
    loss = _task_loss(ctx, logits, x, y)
    extra = ctx.hooks.extra_loss(ctx.model, state.step, ctx.plan.total_steps) if ctx.hooks is not None else None
    objective = loss if extra is None else loss + extra
    if not _all_finite(ctx, objective):
        return False
    state.optimizer.zero_grad(set_to_none=True)
    objective.backward()
    state.optimizer.step()
    state.step += 1
    totals.add(loss, logits, y)
    return True


def _stop_on_nan(ctx: _TrainContext, state: _LoopState, result: TrainResult, epoch: int,
                 bad_step: int) -> TrainResult:
    """Restore (and checkpoint) the last good weights after a non-finite loss; raise, or return ``result``
    marked ``nan``, as ``raise_on_nan`` says."""
    ctx.model.load_state_dict(state.last_good)
    if ctx.checkpoint_path and ctx.dist_ctx.is_main:
        save_state_dict(state.last_good, ctx.checkpoint_path)
    result.stopped_reason = "nan"
    result.seconds = state.prior_seconds + time.perf_counter() - ctx.started
    where = f" (saved to {ctx.checkpoint_path})" if ctx.checkpoint_path else ""
    message = (f"NaN loss at epoch {epoch} step {bad_step}; kept the last good checkpoint "
               f"({state.last_good_at}){where}; try a lower --lr")
    if ctx.raise_on_nan:
        raise HwpruneError(message)  # said once, by whoever reports the error
    ctx.say(message)
    return result


def _finish_epoch(ctx: _TrainContext, state: _LoopState, result: TrainResult, epoch: int,
                  totals: _EpochTotals, epoch_start: float) -> None:
    """Record a finished epoch: its history row (with validation), the new last good weights, the
    checkpoint and resume state, and its log line."""
    dist_ctx, device = ctx.dist_ctx, ctx.device
    loss_sum, correct, seen = dist_ctx.all_sum([totals.loss_sum, totals.correct, totals.seen], device)
    row: dict[str, float] = {"epoch": epoch, "loss": loss_sum / max(seen, 1.0),
                             "acc": correct / max(seen, 1.0), "lr": state.current_lr}
    if ctx.val_order is not None:
        c, t = _count_correct(ctx.model, ctx.val_ds, ctx.val_order, 512, device)
        c, t = dist_ctx.all_sum([float(c), float(t)], device)
        row["val_acc"] = c / t if t else 0.0
        result.best_val_acc = max(result.best_val_acc or 0.0, row["val_acc"])
    row["seconds"] = time.perf_counter() - epoch_start
    result.history.append(row)
    result.epochs = epoch
    state.last_good = _state_copy(ctx.model)
    state.last_good_at = f"epoch {epoch}"
    if ctx.checkpoint_path and dist_ctx.is_main:
        save_state_dict(state.last_good, ctx.checkpoint_path)
    if ctx.resume_path:
        _save_resume_state(ctx, state, result, epoch)
    ctx.say(f"epoch {epoch}/{ctx.epochs}: loss {row['loss']:.4f} train acc {row['acc']:.4f}"
            + (f" val acc {row['val_acc']:.4f}" if "val_acc" in row else "")
            + f" lr {state.current_lr:.3g} ({row['seconds']:.1f} s)")


def _save_resume_state(ctx: _TrainContext, state: _LoopState, result: TrainResult, epoch: int) -> None:
    """Write the whole training state after ``epoch`` to ``ctx.resume_path`` (rank 0; every rank's
    augmentation stream is gathered first)."""
    aug_states = ctx.dist_ctx.all_gather_tensor(state.aug_gen.get_state(), ctx.device)
    if ctx.dist_ctx.is_main:
        _save_atomic({"format": RESUME_FORMAT, "fingerprint": ctx.fingerprint, "epoch": epoch, "step": state.step,
                      "model": state.last_good, "optimizer": state.optimizer.state_dict(),
                      "order_rng": state.order_rng.bit_generator.state, "aug_rng": aug_states,
                      "history": result.history, "best_val_acc": result.best_val_acc,
                      "seconds": state.prior_seconds + time.perf_counter() - ctx.started}, ctx.resume_path)


RESUME_FORMAT = 1


def _recipe_fingerprint(model: nn.Module, *, epochs, lr, momentum, weight_decay, batch_size, seed, world, n,
                        augment, teacher, kd_temperature, kd_alpha, label_smoothing) -> dict:
    """What must match for a saved training state to be continued (plain values, so == compares)."""
    return {"epochs": int(epochs), "lr": float(lr), "momentum": float(momentum),
            "weight_decay": float(weight_decay), "batch_size": int(batch_size), "seed": int(seed),
            "world_size": int(world), "train_size": int(n), "augment": bool(augment),
            "distill": [float(kd_temperature), float(kd_alpha)] if teacher is not None else None,
            "label_smoothing": float(label_smoothing),
            "shapes": [[k, list(v.shape)] for k, v in model.state_dict().items()]}


def _load_resume_state(path: str, fingerprint: dict, say: Callable[[str], None]) -> dict | None:
    """The saved state at ``path`` if it continues this recipe; None (after saying why) if not."""
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: start over rather than fail the run
        say(f"ignoring {path}: not a readable training state ({str(err).splitlines()[0][:80]}); starting over")
        return None
    if not isinstance(saved, dict) or saved.get("format") != RESUME_FORMAT:
        say(f"ignoring {path}: not a training state of this hwprune version; starting over")
        return None
    old = saved.get("fingerprint") or {}
    differs = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if differs:
        say(f"ignoring {path}: it was saved by another recipe (differs in {', '.join(differs)}); starting over")
        return None
    return saved


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

