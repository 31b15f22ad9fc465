"""Tests for hwprune.data on tiny synthesized IDX / CIFAR-10 / image-folder files."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np
import pytest
import torch

from hwprune.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_dataset,
    make_loader,
    train_val_split,
)
from hwprune.errors import HwpruneError
from hwprune.data import idx_bytes

torch.set_num_threads(1)


def _write(path, data: bytes, gzipped: bool) -> None:
    if gzipped:
        path = f"{path}.gz"
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


def _make_fashion(directory, n_train=12, n_test=7, gzipped=True, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write(os.path.join(directory, f"{prefix}-images-idx3-ubyte"), idx_bytes(images), gzipped)
        _write(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), idx_bytes(labels), gzipped)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashion_mnist_idx_shapes_labels_normalisation(tmp_path, gzipped):
    arrays = _make_fashion(tmp_path, gzipped=gzipped)
    train = load_dataset(f"fashion-mnist:{tmp_path}", "train")
    test = load_dataset(f"fashion-mnist:{tmp_path}", "test")
    assert len(train) == 12 and len(test) == 7
    assert (train.in_channels, train.num_classes, train.input_size) == (1, 10, (28, 28))
    assert train.class_names[0] == "T-shirt/top"
    assert train.images.dtype == torch.uint8  # stored compactly, converted when read
    x, y = test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y) == 3
    expected = (arrays["t10k"][0][3] / 255.0 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=0, atol=1e-5)
    xb, yb = train.batch([0, 5])
    assert xb.shape == (2, 1, 28, 28)
    assert yb.tolist() == arrays["train"][1][[0, 5]].tolist()


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(1)
    records_per_file = 3
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, size=(records_per_file, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(records_per_file, 3072), dtype=np.uint8)
        (tmp_path / name).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    test_raw = np.frombuffer((tmp_path / "test_batch.bin").read_bytes(), np.uint8).reshape(-1, 3073)

    train = load_dataset(f"cifar10:{tmp_path}", "train")
    test = load_dataset(f"cifar10:{tmp_path}", "test")
    assert len(train) == 15 and len(test) == 3
    assert (test.in_channels, test.num_classes, test.input_size) == (3, 10, (32, 32))
    assert test.labels.tolist() == test_raw[:, 0].tolist()
    x, _ = test[1]
    # Records are channel-major: 1024 red, 1024 green, 1024 blue bytes.
    green = test_raw[1, 1 + 1024 : 1 + 2048].reshape(32, 32) / 255.0
    np.testing.assert_allclose(x[1].numpy(), (green - CIFAR10_MEAN[1]) / CIFAR10_STD[1], atol=1e-5)


def test_cifar10_corrupt_and_missing(tmp_path):
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(HwpruneError, match="corrupt CIFAR-10 file"):
        load_dataset(f"cifar10:{tmp_path}", "test")
    with pytest.raises(HwpruneError, match="data_batch_1.bin"):
        load_dataset(f"cifar10:{tmp_path}", "train")


def test_cifar10_python_version_as_torchvision_downloads_it(tmp_path):
    # cifar-10-batches-py was "not found: data_batch_1.bin is missing" (nu12)
    import pickle

    rng = np.random.default_rng(4)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, size=2)], b"batch_label": b"x"}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    test = load_dataset(f"cifar10:{tmp_path}", "test")
    raw = pickle.loads((root / "test_batch").read_bytes())
    assert (len(load_dataset(f"cifar10:{tmp_path}", "train")), len(test), test.in_channels) == (10, 2, 3)
    assert test.labels.tolist() == raw[b"labels"]
    x, _ = test[1]
    red = raw[b"data"][1, :1024].reshape(32, 32) / 255.0
    np.testing.assert_allclose(x[0].numpy(), (red - CIFAR10_MEAN[0]) / CIFAR10_STD[0], atol=1e-5)

    class Boom:   # a pickle that would run code on load is refused, not run
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Boom(), b"labels": []}))
    with pytest.raises(HwpruneError, match="corrupt CIFAR-10 file .*test_batch: .* is not allowed"):
        load_dataset(f"cifar10:{tmp_path}", "test")


def test_split_is_deterministic_and_disjoint(tmp_path):
    _make_fashion(tmp_path, n_train=50)
    ds = load_dataset(f"fashion-mnist:{tmp_path}", "train")
    train_a, val_a = train_val_split(ds, val_fraction=0.2, seed=7)
    train_b, val_b = train_val_split(ds, val_fraction=0.2, seed=7)
    assert (len(train_a), len(val_a)) == (40, 10)
    assert torch.equal(val_a.images, val_b.images) and torch.equal(train_a.labels, train_b.labels)
    # numpy's PCG64 stream is platform-independent, so these indices hold on every machine.
    expected_val_idx = np.sort(np.random.default_rng(7).permutation(50)[:10])
    assert torch.equal(val_a.images, ds.images[torch.as_tensor(expected_val_idx)])
    rows = {bytes(img.numpy()) for img in train_a.images} | {bytes(img.numpy()) for img in val_a.images}
    assert len(rows) == 50  # disjoint and complete
    assert val_a.num_classes == 10 and val_a.class_names == ds.class_names
    _, val_other = train_val_split(ds, val_fraction=0.2, seed=8)
    assert not torch.equal(val_other.images, val_a.images)
    with pytest.raises(HwpruneError, match="val_fraction"):
        train_val_split(ds, val_fraction=1.0)


def test_make_loader_batches_and_seeded_shuffle(tmp_path):
    _make_fashion(tmp_path, n_train=10)
    ds = load_dataset(f"fashion-mnist:{tmp_path}", "train")
    loader = make_loader(ds, batch_size=4, shuffle=False)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), ds.labels)
    assert batches[0][0].dtype == torch.float32

    def order(loader):
        return [y.tolist() for _, y in loader]

    first, second = make_loader(ds, 4, shuffle=True, seed=3), make_loader(ds, 4, shuffle=True, seed=3)
    epoch1 = order(first)
    assert epoch1 == order(second)  # same seed, same first epoch
    assert sorted(sum(epoch1, [])) == sorted(ds.labels.tolist())
    assert order(first) == order(second)  # and the same second epoch
    assert len(make_loader(ds, 4, drop_last=True)) == 2


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(HwpruneError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset(f"fashion-mnist:{tmp_path / 'absent'}", "train")
    assert "absent" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(HwpruneError, match=r"train-images-idx3-ubyte.*make data"):
        load_dataset(f"fashion-mnist:{tmp_path}", "train")  # exists but empty


def test_corrupt_idx_files(tmp_path):
    _make_fashion(tmp_path, gzipped=False)
    images_path = tmp_path / "t10k-images-idx3-ubyte"
    good = images_path.read_bytes()

    images_path.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(HwpruneError, match="bad magic"):
        load_dataset(f"fashion-mnist:{tmp_path}", "test")

    images_path.write_bytes(good[:-100])
    with pytest.raises(HwpruneError, match="truncated"):
        load_dataset(f"fashion-mnist:{tmp_path}", "test")

    # A gzip stream cut short is corrupt too, not an EOFError traceback.
    images_path.unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(good)[:-30])
    with pytest.raises(HwpruneError, match="corrupt IDX file"):
        load_dataset(f"fashion-mnist:{tmp_path}", "test")


def test_idx_image_label_count_mismatch(tmp_path):
    _make_fashion(tmp_path, gzipped=False)
    labels = np.zeros(3, dtype=np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(HwpruneError, match="7 images but 3 labels"):
        load_dataset(f"fashion-mnist:{tmp_path}", "test")


def test_unknown_spec_and_split():
    with pytest.raises(HwpruneError, match="unknown dataset"):
        load_dataset("mnist-9000", "train")
    with pytest.raises(HwpruneError, match="unknown split"):
        load_dataset("fashion-mnist", "validation")


def test_imagefolder(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
                image_module.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    test = load_dataset(f"imagefolder:{tmp_path}", "test")  # falls back to val/
    assert train.class_names == ("cat", "dog")
    assert (train.in_channels, train.input_size, len(train), len(test)) == (3, (8, 10), 4, 4)
    assert train.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(HwpruneError, match="train/"):
        load_dataset(f"imagefolder:{tmp_path / 'val'}", "train")


def _folder(root, layout: dict[str, dict[str, tuple[int, str]]]) -> None:
    """layout: split -> class -> (images, PIL mode)."""
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    for split, classes in layout.items():
        for cls, (n, mode) in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                shape = (6, 6) if mode == "L" else (6, 6, 3)
                image_module.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(
                    root / split / cls / f"{i}.png")


def test_imagefolder_test_split_takes_the_train_splits_colour_mode(tmp_path):
    # RGB train and grayscale test trained a 3-channel model, then died on the test set with a
    # traceback after the whole search and fine-tuning (nu12)
    _folder(tmp_path, {"train": {"a": (2, "RGB"), "b": (2, "RGB")}, "test": {"a": (1, "L"), "b": (1, "L")}})
    train, test = (load_dataset(f"imagefolder:{tmp_path}", s) for s in ("train", "test"))
    assert train.in_channels == test.in_channels == 3


@pytest.mark.parametrize("layout, words", [
    ({"train": {"a": (2, "L"), "b": (0, "L")}, "test": {"a": (1, "L"), "b": (1, "L")}},
     "class folder 'b' has no images"),
    ({"train": {"a": (2, "L")}, "test": {"a": (1, "L")}}, "one class folder ('a'): a classifier needs two"),
])
def test_imagefolder_refuses_an_empty_class_and_a_single_one(tmp_path, layout, words):
    _folder(tmp_path, layout)
    for split in ("train", "test"):
        with pytest.raises(HwpruneError, match=re.escape(words)):
            load_dataset(f"imagefolder:{tmp_path}", split)


def test_imagefolder_hidden_folders_are_not_classes(tmp_path):
    # an empty .ipynb_checkpoints became a fourth class of a 3-class model (nu12)
    _folder(tmp_path, {"train": {"a": (1, "L"), "b": (1, "L")}, "test": {"a": (1, "L"), "b": (1, "L")}})
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "test" / ".ipynb_checkpoints").mkdir()
    assert load_dataset(f"imagefolder:{tmp_path}", "train").class_names == ("a", "b")
    assert load_dataset(f"imagefolder:{tmp_path}", "test").num_classes == 2


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason=f"{FASHION_MNIST_DIR} not installed")
def test_real_fashion_mnist_test_split():
    ds = load_dataset("fashion-mnist", "test")
    assert len(ds) == 10000
    assert (ds.in_channels, ds.num_classes, ds.input_size) == (1, 10, (28, 28))
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    x, _ = ds.batch(np.arange(2000))
    # The constants are training-set statistics; the test split is close to them.
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
