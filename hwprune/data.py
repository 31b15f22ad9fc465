"""Datasets without torchvision: Fashion-MNIST (IDX), CIFAR-10 (binary), image folders.

``load_dataset("fashion-mnist", "train")`` returns an :class:`ImageDataset`: images kept
as uint8 N x C x H x W (Fashion-MNIST train is 47 MB as uint8, 188 MB as float32), labels
int64, and per-dataset mean/std. Items and batches are converted to normalised float32
only when read (``ds[i]``, ``ds.batch(idx)``, :func:`make_loader`), so a training run
never holds a float copy of the whole set. :func:`train_val_split` is deterministic for a
seed on every machine; :func:`make_loader` yields normalised batches without DataLoader's
per-item Python overhead.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hwprune.errors import HwpruneError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Mean/std of the training pixels scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# True per-channel std of the CIFAR-10 training set (not the often-copied 0.2023/0.1994/0.2010).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# Image folders get ImageNet statistics (and their luminance average for grayscale folders).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD = (0.449,), (0.226,)

SPLITS = ("train", "test")
_FASHION_INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or `make data`"
_IDX_UBYTE = 0x08
_CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(eq=False)  # tensors have no single truth value; identity equality is enough
class ImageDataset(torch.utils.data.Dataset):
    """An in-memory image classification set: uint8 images, int64 labels, and metadata.

    ``ds[i]`` is ``(float32 C x H x W normalised, int64 label)`` like a TensorDataset item.

    Example:
        >>> ds = ImageDataset(torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
        ...                   torch.tensor([0, 1, 2, 3]), (0.5,), (0.5,), ("a", "b", "c", "d"))
        >>> x, y = ds.batch([0, 1])
        >>> x.shape, float(x[0, 0, 0, 0]), ds.num_classes
        (torch.Size([2, 1, 28, 28]), -1.0, 4)
    """

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    mean: tuple[float, ...]  # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    name: str = ""
    _mean_t: torch.Tensor = field(init=False, repr=False)
    _std_t: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 N x C x H x W tensor")
        self.labels = self.labels.to(torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean/std need one value per channel")
        self.class_names = tuple(self.class_names)
        # Folding the 1/255 scaling into mean/std makes normalisation one fused op per batch.
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (int(self.images.shape[2]), int(self.images.shape[3]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.images[index].unsqueeze(0))[0], self.labels[index]

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 B x C x H x W -> float32 ``(pixel / 255 - mean) / std``."""
        return (images_uint8.to(torch.float32) - self._mean_t) / self._std_t

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and labels for ``indices`` (one vectorised conversion)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return self.normalize(self.images[idx]), self.labels[idx]

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set as (normalised float32 images, labels): costs 4x the uint8 memory."""
        return self.normalize(self.images), self.labels

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """A new dataset with the given rows (copied) and the same metadata."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return ImageDataset(self.images[idx].contiguous(), self.labels[idx].clone(),
                            self.mean, self.std, self.class_names, self.name)


def load_dataset(spec: str, split: str) -> ImageDataset:
    """Load a dataset named by ``spec`` for ``split`` ("train" or "test").

    Args:
        spec: ``fashion-mnist`` (from /usr/share/datasets/fashion-mnist), ``fashion-mnist:DIR``,
            ``cifar10:DIR`` (the binary version: data_batch_1..5.bin, test_batch.bin, in DIR
            or DIR/cifar-10-batches-bin; or the python version, DIR/cifar-10-batches-py), or ``imagefolder:DIR`` (DIR/train and DIR/test or
            DIR/val, one subfolder per class; needs Pillow).
        split: "train" or "test".

    Raises:
        HwpruneError: unknown spec or split, missing files (with how to install), corrupt
            files, or Pillow missing for image folders.

    Example:
        >>> ds = load_dataset("fashion-mnist", "test")  # doctest: +SKIP
        >>> len(ds), ds.in_channels, ds.num_classes, ds.input_size  # doctest: +SKIP
        (10000, 1, 10, (28, 28))
    """
    if split not in SPLITS:
        raise HwpruneError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return _load_fashion_mnist(path if sep and path else FASHION_MNIST_DIR, split)
    if kind in ("cifar10", "cifar-10"):
        if not path:
            raise HwpruneError("cifar10 needs a directory: --data cifar10:PATH "
                               "(the binary version, data_batch_1.bin ... test_batch.bin)")
        return _load_cifar10(path, split)
    if kind == "imagefolder":
        if not path:
            raise HwpruneError("imagefolder needs a directory: --data imagefolder:PATH")
        return _load_imagefolder(path, split)
    raise HwpruneError(
        f"unknown dataset {spec!r}; use fashion-mnist[:DIR], cifar10:DIR or imagefolder:DIR"
    )


def train_val_split(
    dataset: ImageDataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Split into (train, val) by a seeded permutation: same indices every call and machine.

    The permutation comes from ``numpy.random.default_rng(seed)`` (PCG64, which is
    platform-independent); each part keeps the original order of its rows.

    Example:
        >>> ds = ImageDataset(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10) % 2,
        ...                   (0.5,), (0.5,), ("even", "odd"))
        >>> train, val = train_val_split(ds, val_fraction=0.2, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise HwpruneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(dataset)
    n_val = int(round(n * val_fraction))
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return dataset.subset(train_idx), dataset.subset(val_idx)


class BatchLoader:
    """Iterates (float images, int64 labels) batches of an :class:`ImageDataset`.

    With ``shuffle`` the order of epoch k is fixed by (seed, k): iterating again gives the
    next epoch's order, and a new loader with the same seed replays the same sequence.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise HwpruneError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for batch_index in range(len(self)):
            idx = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            yield self.dataset.batch(idx)


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool = False,
                seed: int = 0, drop_last: bool = False) -> BatchLoader:
    """Batches of normalised float images and labels; see :class:`BatchLoader`.

    Example:
        >>> ds = ImageDataset(torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.zeros(5),
        ...                   (0.0,), (1.0,), ("only",))
        >>> [tuple(x.shape) for x, _ in make_loader(ds, batch_size=2)]
        [(2, 1, 4, 4), (2, 1, 4, 4), (1, 1, 4, 4)]
    """
    return BatchLoader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


# --- Fashion-MNIST (IDX) -------------------------------------------------------------------

def _load_fashion_mnist(directory: str, split: str) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    if not os.path.isdir(directory):
        raise HwpruneError(f"Fashion-MNIST not found: no directory {directory}; {_FASHION_INSTALL_HINT}")
    images_path = _find_idx_file(directory, f"{prefix}-images", "idx3-ubyte")
    labels_path = _find_idx_file(directory, f"{prefix}-labels", "idx1-ubyte")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise HwpruneError(f"Fashion-MNIST files in {directory} have unexpected dimensions "
                           f"(images {images.shape}, labels {labels.shape})")
    if images.shape[0] != labels.shape[0]:
        raise HwpruneError(f"Fashion-MNIST {split} in {directory}: {images.shape[0]} images "
                           f"but {labels.shape[0]} labels")
    _check_labels(labels, len(FASHION_MNIST_CLASSES), labels_path)
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)),
                        FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES,
                        f"fashion-mnist-{split}")


def _find_idx_file(directory: str, stem: str, kind: str) -> str:
    # Debian ships "train-images-idx3-ubyte.gz"; unpacked copies drop the .gz, and the
    # original MNIST site's unpacked names use a dot ("train-images.idx3-ubyte").
    candidates = [f"{stem}-{kind}.gz", f"{stem}-{kind}", f"{stem}.{kind}.gz", f"{stem}.{kind}"]
    for name in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise HwpruneError(f"Fashion-MNIST not found: {directory} has no {stem}-{kind}[.gz]; "
                       f"{_FASHION_INSTALL_HINT}")


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format :func:`read_idx` reads (gzip it for a ``.gz`` name); for
    writing subsets and synthetic stand-ins of the datasets."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.asarray(array).astype(np.uint8).tobytes()


def read_idx(path: str) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or plain) into a uint8 array.

    Raises:
        HwpruneError: unreadable, bad magic number, not unsigned bytes, or truncated.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise HwpruneError(f"corrupt IDX file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise HwpruneError(f"corrupt IDX file {path}: bad magic number")
    if raw[2] != _IDX_UBYTE:
        raise HwpruneError(f"corrupt IDX file {path}: data type 0x{raw[2]:02x}, expected unsigned byte 0x08")
    ndim = raw[3]
    header_bytes = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_bytes:
        raise HwpruneError(f"corrupt IDX file {path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_bytes])
    expected_bytes = header_bytes + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected_bytes:
        raise HwpruneError(f"corrupt IDX file {path}: {len(raw)} bytes, header {shape} "
                           f"needs {expected_bytes} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)


def _check_labels(labels: np.ndarray, num_classes: int, path: str) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise HwpruneError(f"corrupt labels in {path}: label {int(labels.max())} "
                           f"is not below {num_classes}")


# --- CIFAR-10 (binary version) -------------------------------------------------------------

def _load_cifar10(directory: str, split: str) -> ImageDataset:
    nested = os.path.join(directory, "cifar-10-batches-bin")
    if os.path.isdir(nested):  # the directory the official tarball unpacks to
        directory = nested
    python = os.path.join(directory, "cifar-10-batches-py")
    if not os.path.isdir(nested) and (os.path.isdir(python) or os.path.isfile(os.path.join(directory, "data_batch_1"))):
        return _load_cifar10_python(python if os.path.isdir(python) else directory, split)
    if not os.path.isdir(directory):
        raise HwpruneError(f"CIFAR-10 not found: no directory {directory}; download the binary "
                           "version from https://www.cs.toronto.edu/~kriz/cifar.html")
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    images, labels = [], []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise HwpruneError(f"CIFAR-10 not found: {path} is missing (binary version: "
                               "data_batch_1..5.bin, test_batch.bin)")
        with open(path, "rb") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8)
        if raw.size == 0 or raw.size % _CIFAR_RECORD_BYTES:
            raise HwpruneError(f"corrupt CIFAR-10 file {path}: {raw.size} bytes is not a "
                               f"multiple of the {_CIFAR_RECORD_BYTES}-byte record")
        records = raw.reshape(-1, _CIFAR_RECORD_BYTES)
        _check_labels(records[:, 0], 10, path)
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    class_names = _cifar_class_names(directory)
    return ImageDataset(torch.from_numpy(np.concatenate(images)),
                        torch.from_numpy(np.concatenate(labels)),
                        CIFAR10_MEAN, CIFAR10_STD, class_names, f"cifar10-{split}")


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR-10 python batches are pickles of numpy arrays and lists; a pickle can name any
    callable, so only what those files hold is let through (a dataset must not run code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}   # protocol 2's bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _load_cifar10_python(directory: str, split: str) -> ImageDataset:
    """The python version (``cifar-10-batches-py``, what torchvision downloads): pickled dicts
    with ``data`` (N x 3072 uint8, channel-major) and ``labels``."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise HwpruneError(f"CIFAR-10 not found: {path} is missing (python version: data_batch_1..5, test_batch)")
        try:
            with open(path, "rb") as f:
                batch = _ArraysOnly(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise HwpruneError(f"corrupt CIFAR-10 file {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        if len(batch_labels) != len(data):
            raise HwpruneError(f"corrupt CIFAR-10 file {path}: {len(data)} images but {len(batch_labels)} labels")
        _check_labels(batch_labels, 10, path)
        images.append(data)
        labels.append(batch_labels)
    return ImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                        CIFAR10_MEAN, CIFAR10_STD, _cifar_class_names(directory), f"cifar10-{split}")


def _cifar_class_names(directory: str) -> tuple[str, ...]:
    meta = os.path.join(directory, "batches.meta.txt")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8", errors="replace") as f:
            names = tuple(line.strip() for line in f if line.strip())
        if len(names) == 10:
            return names
    return CIFAR10_CLASSES


# --- image folders -------------------------------------------------------------------------

def _load_imagefolder(root: str, split: str) -> ImageDataset:
    """DIR/<split>/<class>/*.png: every image is resized to the first train image's size.

    Images are grayscale (1 channel) when every train image is 1/L/LA, else RGB, and the test
    split takes the train split's mode (a model has one input channel count). Everything is
    decoded into memory as uint8, so this suits small folders. The class list comes from the
    train folder (hidden folders such as .ipynb_checkpoints aside), so both splits share label
    numbers; each class needs train images, and there must be two classes at least.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise HwpruneError("imagefolder datasets need Pillow: pip install pillow") from err
    if not os.path.isdir(root):
        raise HwpruneError(f"image folder not found: {root}")
    split_dir = _imagefolder_split_dir(root, split)
    train_dir = _imagefolder_split_dir(root, "train")
    class_names = tuple(_class_folders(train_dir))
    if not class_names:
        raise HwpruneError(f"image folder {train_dir} has no class subfolders")
    if len(class_names) < 2:
        raise HwpruneError(f"image folder {train_dir} has one class folder ({class_names[0]!r}): a classifier "
                           "needs two classes at least")
    split_classes = _class_folders(split_dir)
    unknown = [c for c in split_classes if c not in class_names]
    if unknown:
        raise HwpruneError(f"image folder {split_dir} has class {unknown[0]!r} that {train_dir} lacks")

    def files_of(directory: str) -> list[tuple[str, int]]:
        out = []
        for label, cls in enumerate(class_names):
            cls_dir = os.path.join(directory, cls)
            if os.path.isdir(cls_dir):
                out += [(os.path.join(cls_dir, f), label) for f in sorted(os.listdir(cls_dir))
                        if f.lower().endswith(_IMAGE_SUFFIXES)]
        return out

    files = files_of(split_dir)
    if not files:
        raise HwpruneError(f"image folder {split_dir} has no images ({', '.join(_IMAGE_SUFFIXES)})")
    reference = files if split_dir == train_dir else files_of(train_dir) or files
    empty = sorted(set(class_names) - {class_names[label] for _, label in reference})
    if empty:   # it would be a class the model is never shown, scored on the test set
        raise HwpruneError(f"image folder {train_dir}: class folder {empty[0]!r} has no images "
                           f"({', '.join(_IMAGE_SUFFIXES)})")
    with _open_image(Image, reference[0][0]) as first:
        width, height = first.size
    # Image.open reads only the header, so this first pass to pick the mode is cheap.
    modes = set()
    for path, _ in reference:
        with _open_image(Image, path) as img:
            modes.add(img.mode)
    gray = modes <= {"1", "L", "LA"}
    mode = "L" if gray else "RGB"
    arrays = []
    for path, _ in files:
        with _open_image(Image, path) as img:
            try:
                img = img.convert(mode)
            except OSError as err:  # truncated or corrupt pixel data surfaces on decode
                raise HwpruneError(f"cannot read image {path}: {err}") from err
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
        arrays.append(a[None] if gray else a.transpose(2, 0, 1))
    mean, std = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if gray else (IMAGENET_MEAN, IMAGENET_STD)
    return ImageDataset(torch.from_numpy(np.stack(arrays)),
                        torch.tensor([label for _, label in files], dtype=torch.int64),
                        mean, std, class_names, f"imagefolder-{split}")


def _class_folders(directory: str) -> list[str]:
    """The class folders of a split, sorted; hidden ones (.ipynb_checkpoints, .DS_Store) are not classes."""
    return sorted(d for d in os.listdir(directory)
                  if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def _imagefolder_split_dir(root: str, split: str) -> str:
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise HwpruneError(f"image folder {root} needs a {' or '.join(n + '/' for n in names)} "
                       "subfolder with one folder per class")


def _open_image(image_module, path: str):
    try:
        return image_module.open(path)
    except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, ...
        raise HwpruneError(f"cannot read image {path}: {err}") from err
