import gzip
import struct

import numpy as np
import pytest
import torch

from tridim.training import data


def test_digits_shapes_and_split_sizes(digits):
    assert digits.input_shape == (1, 16, 16)
    assert digits.num_classes == 10
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797
    image, label = digits.train[0]
    assert image.shape == (1, 16, 16)
    assert 0 <= int(label) < 10


def test_digits_split_is_stratified_and_disjoint(digits):
    train_y = digits.train.tensors[1]
    test_y = digits.test.tensors[1]
    # every class is present in every split, in roughly the same proportion
    for y in (train_y, test_y):
        counts = torch.bincount(y, minlength=10).float()
        assert counts.min() > 0
        assert counts.max() / counts.min() < 1.3
    flat = lambda ds: {tuple(x.flatten().tolist()) for x in ds.tensors[0]}  # noqa: E731
    assert not flat(digits.train) & flat(digits.test)


def test_digits_is_deterministic_and_seed_changes_split():
    a, b = data.load("digits", seed=3), data.load("digits", seed=3)
    c = data.load("digits", seed=4)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


def test_digits_size_32_and_normalised():
    bundle = data.load("digits", size=32)
    assert bundle.input_shape == (1, 32, 32)
    x = bundle.train.tensors[0]
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_loader_is_seeded_and_covers_the_split(digits):
    first = [y for _, y in digits.loader("train", 100, seed=1)]
    again = [y for _, y in digits.loader("train", 100, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert sum(len(y) for y in first) == len(digits.train)
    with pytest.raises(ValueError, match="split"):
        digits.loader("holdout")


def _write_idx(path, array: np.ndarray, type_code: int) -> None:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(">u1" if type_code == 8 else array.dtype).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 50)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 8)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 8)
    return tmp_path


def test_read_idx_round_trips(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array, 8)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), array)


def test_read_idx_rejects_truncated_file(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array, 8)
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "b.gz", "wb") as handle:
        handle.write(raw[:-5])
    with pytest.raises(ValueError, match="payload"):
        data.read_idx(tmp_path / "b.gz")


def test_fashion_mnist_from_folder(fake_fashion):
    bundle = data.load("fashion-mnist", root=fake_fashion, val_fraction=0.2)
    assert bundle.input_shape == (1, 28, 28)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (240, 60, 50)


def test_fashion_mnist_root_from_environment(fake_fashion, monkeypatch):
    monkeypatch.setenv("TRIDIM_DATA", str(fake_fashion))
    assert len(data.load("fashion-mnist").test) == 50


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.load("fashion-mnist", root=tmp_path)


def test_cifar_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        data.load("cifar10", root=tmp_path)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 12), (i * 40, 10, 200)).save(folder / f"{i}.png")
    bundle = data.load(tmp_path, size=8)
    assert bundle.input_shape == (3, 8, 8) and bundle.num_classes == 2
    images, labels = next(iter(bundle.loader("train", 4)))
    assert images.shape == (4, 3, 8, 8)


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="digits, fashion-mnist"):
        data.load("imagenet-22k")
    with pytest.raises(FileNotFoundError, match="train/"):
        data.load(tmp_path)


def test_resize_batch_shrinks_with_antialias():
    x = torch.randn(2, 1, 16, 16)
    y = data.resize_batch(x, 12)
    assert y.shape == (2, 1, 12, 12)
    assert data.resize_batch(x, 16) is x
    # a constant image stays constant after resizing
    c = torch.full((1, 1, 16, 16), 0.7)
    assert torch.allclose(data.resize_batch(c, (7, 9)), torch.full((1, 1, 7, 9), 0.7))
    with pytest.raises(ValueError):
        data.resize_batch(torch.randn(16, 16), 8)
