"""Datasets: the embedded digits default, Fashion-MNIST, CIFAR and ImageFolder trees.

Everything is read from local files or from installed packages; nothing downloads.
:func:`load` returns a :class:`DataBundle` holding the three splits, the input shape
and the number of classes; :func:`make_loader` turns a split into batches, and
:func:`resize_batch` shrinks a batch to a lower resolution on the fly.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "DataBundle",
    "load",
    "make_loader",
    "resize_batch",
    "read_idx",
    "KNOWN_DATASETS",
    "FASHION_MNIST_DIR",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
KNOWN_DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100")
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass
class DataBundle:
    """Train, validation and test splits of one dataset, with its shape.

    Attributes
    ----------
    name : str
        The dataset's name (``"digits"``, ``"fashion-mnist"``, ... or a folder path).
    train, val, test : torch.utils.data.Dataset
        The splits; each item is ``(image tensor of shape input_shape, int label)``.
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    num_classes : int
        Number of classes.
    options : dict
        The options the bundle was loaded with (JSON-ready), so it can be reloaded.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, int, int]
    num_classes: int
    options: dict = field(default_factory=dict)

    def loader(
        self,
        split: str,
        batch_size: int = 128,
        *,
        shuffle: bool | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator:
        """Batches of one split (shuffled for ``"train"`` unless told otherwise).

        ``device`` and ``shard`` are those of :func:`make_loader`.
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        dataset = getattr(self, split)
        if shuffle is None:
            shuffle = split == "train"
        return make_loader(
            dataset, batch_size, shuffle=shuffle, seed=seed, device=device, shard=shard
        )

    def describe(self) -> dict:
        """A JSON-ready description: name, options, shape, classes and split sizes."""
        return {
            "name": self.name,
            "options": dict(self.options),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "sizes": {s: len(getattr(self, s)) for s in ("train", "val", "test")},
        }

    def subset(
        self,
        train: int | None = None,
        val: int | None = None,
        test: int | None = None,
        seed: int = 0,
    ) -> DataBundle:
        """A copy keeping at most the given number of examples of each split (seeded)."""

        def cut(dataset: Dataset, n: int | None) -> Dataset:
            if n is None or n >= len(dataset):
                return dataset
            generator = torch.Generator().manual_seed(seed)
            index = torch.randperm(len(dataset), generator=generator)[:n]
            return _index_dataset(dataset, index)

        return DataBundle(
            self.name,
            cut(self.train, train),
            cut(self.val, val),
            cut(self.test, test),
            self.input_shape,
            self.num_classes,
            dict(self.options),
        )


#: Tensors of in-memory datasets already copied to a device: {tensor: {device: copy}}.
#: Kept per tensor, not per dataset: a training set that gains a column (the teacher's
#: outputs, :func:`tridim.training.train.train`) reuses the copies of its images and labels.
_ON_DEVICE = WeakIdKeyDictionary()


def _tensors_on(dataset: TensorDataset, device: torch.device | None) -> tuple:
    """The dataset's tensors on ``device``, each copied once per device."""
    if device is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # one key per GPU
    if device is None:
        return dataset.tensors
    return tuple(_tensor_on(tensor, device) for tensor in dataset.tensors)


def _tensor_on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if tensor.device == device:
        return tensor
    copies = _ON_DEVICE.setdefault(tensor, {})
    if device not in copies:
        copies[device] = tensor.to(device)
    return copies[device]


class _TensorBatches:
    """Fast batching of an in-memory TensorDataset (no per-item collation)."""

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: torch.device | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        self.tensors = _tensors_on(dataset, device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.dataset = dataset
        self.rank, self.world = shard

    def _order(self) -> torch.Tensor | None:
        """This shard's example indices (None: all, in order)."""
        n = len(self.tensors[0])
        if self.world == 1:
            return torch.randperm(n, generator=self.generator) if self.shuffle else None
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        # every rank draws the same permutation and takes its equal share of it
        return order[: n - n % self.world][self.rank :: self.world]

    def __len__(self) -> int:
        n = len(self.tensors[0]) // self.world
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = self._order()
        if order is not None:
            order = order.to(self.tensors[0].device)
        n = len(self.tensors[0]) if order is None else len(order)
        for start in range(0, n, self.batch_size):
            if order is None:
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)
            else:
                index = order[start : start + self.batch_size]
                yield tuple(t[index] for t in self.tensors)


def _check_shard(shard) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    rank, world = (int(v) for v in shard)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}"
        )
    return rank, world


def make_loader(
    dataset: Dataset,
    batch_size: int = 128,
    *,
    shuffle: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
    shard: tuple[int, int] | None = None,
):
    """An iterable of ``(images, labels)`` batches over ``dataset``.

    In-memory :class:`~torch.utils.data.TensorDataset` objects are sliced directly,
    which is several times faster on CPU than a DataLoader, and copied to ``device``
    once (batches are then already there); anything else goes through a
    :class:`~torch.utils.data.DataLoader` (with worker processes and pinned memory
    when ``device`` is a GPU; the training loop moves its batches). Shuffling is
    seeded, so two loaders with the same seed yield the same batches.

    Parameters
    ----------
    shard : (rank, world_size), optional
        Data parallelism: this process's equal share of the (shuffled) examples; every
        rank gets the same number of batches (the remainder is dropped).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world = _check_shard(shard)
    device = None if device is None else torch.device(device)
    if isinstance(dataset, TensorDataset):
        return _TensorBatches(dataset, batch_size, shuffle, seed, device, (rank, world))
    generator = torch.Generator().manual_seed(seed)
    gpu = device is not None and device.type == "cuda"
    options = {"num_workers": min(4, os.cpu_count() or 1), "pin_memory": True} if gpu else {}
    if world > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **options)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **options
    )


def resize_batch(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a batch ``(N, C, H, W)`` to ``size`` bilinearly, antialiased when shrinking.

    A batch already at ``size`` is returned unchanged.
    """
    if images.dim() != 4:
        raise ValueError(f"expected a batch of shape (N, C, H, W), got {tuple(images.shape)}")
    if isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"resize target must be at least 1x1, got {size}")
    if tuple(images.shape[-2:]) == size:
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(
        images, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )


def load(name: str | os.PathLike = "digits", **options) -> DataBundle:
    """Load a dataset by name or from an ImageFolder path.

    Parameters
    ----------
    name : str or path
        ``"digits"`` (scikit-learn's bundled digits, the embedded default),
        ``"fashion-mnist"`` (IDX files from a folder), ``"cifar10"``, ``"cifar100"``
        (torchvision datasets under a local root), or a folder with ``train/`` and
        ``val/`` ImageFolder trees.
    **options
        Per dataset: ``size`` (digits: 16 or 32), ``root`` (folder of the files),
        ``val_fraction`` (share of train held out), ``seed`` (split seed).

    Returns
    -------
    DataBundle
    """
    key = str(name).lower()
    if key == "digits":
        return _load_digits(**options)
    if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return _load_fashion_mnist(**options)
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, **options)
    path = Path(name)
    if path.is_dir():
        return _load_image_folder(path, **options)
    raise ValueError(
        f"unknown dataset {str(name)!r}: use one of {', '.join(KNOWN_DATASETS)}, "
        "or a folder holding train/ and val/ ImageFolder trees"
    )


def _check_unknown(options: dict, dataset: str) -> None:
    if options:
        raise ValueError(
            f"{dataset} takes no option {', '.join(sorted(options))} (on the command line: "
            "--size is for digits only, --data-root for fashion-mnist and cifar)"
        )


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int):
    """Split indices per class so every part keeps the class proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        index = np.flatnonzero(labels == cls)
        rng.shuffle(index)
        bounds = np.round(np.cumsum((0.0,) + fractions) * len(index)).astype(int)
        for i in range(len(fractions)):
            parts[i].extend(index[bounds[i] : bounds[i + 1]].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _load_digits(
    size: int = 16, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2, **rest
) -> DataBundle:
    _check_unknown(rest, "digits")
    if int(size) != size or not 8 <= size <= 64:
        raise ValueError(f"digits size must be an integer in [8, 64], got {size!r}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(
        images, size=(int(size), int(size)), mode="bilinear", align_corners=False
    )
    labels = np.asarray(digits.target)
    train_fraction = 1.0 - val_fraction - test_fraction
    train_idx, val_idx, test_idx = _stratified_split(
        labels, (train_fraction, val_fraction, test_fraction), seed
    )
    mean = images[train_idx].mean().reshape(1)
    std = images[train_idx].std().reshape(1)
    images = _normalise(images, mean, std)
    y = torch.as_tensor(labels, dtype=torch.long)

    def split(index: np.ndarray) -> TensorDataset:
        index = torch.as_tensor(index)
        return TensorDataset(images[index].contiguous(), y[index].contiguous())

    return DataBundle(
        "digits",
        split(train_idx),
        split(val_idx),
        split(test_idx),
        (1, int(size), int(size)),
        10,
        {
            "size": int(size),
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        },
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Raises
    ------
    ValueError
        If the file is not a well-formed IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX payload has {len(raw) - header} bytes, "
            f"expected {expected} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _load_fashion_mnist(
    root: str | os.PathLike | None = None, seed: int = 0, val_fraction: float = 5000 / 60000, **rest
) -> DataBundle:
    _check_unknown(rest, "fashion-mnist")
    root = Path(root or os.environ.get("TRIDIM_DATA") or FASHION_MNIST_DIR)
    missing = [f for f in _FASHION_FILES.values() if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {root} (missing: {', '.join(missing)}). "
            "Install them with `apt-get update && apt-get install -y dataset-fashion-mnist` "
            "(files land in /usr/share/datasets/fashion-mnist), or pass root=FOLDER "
            "(or set TRIDIM_DATA) to a folder holding the four IDX .gz files."
        )
    arrays = {k: read_idx(root / f) for k, f in _FASHION_FILES.items()}
    train_x = torch.tensor(arrays["train_images"], dtype=torch.float32).unsqueeze(1) / 255.0
    test_x = torch.tensor(arrays["test_images"], dtype=torch.float32).unsqueeze(1) / 255.0
    train_y = np.asarray(arrays["train_labels"], dtype=np.int64)
    test_y = torch.as_tensor(np.asarray(arrays["test_labels"], dtype=np.int64))
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"Fashion-MNIST in {root}: image and label counts differ")
    fit_idx, val_idx = _stratified_split(train_y, (1.0 - val_fraction, val_fraction), seed)
    mean = train_x[torch.as_tensor(fit_idx)].mean().reshape(1)
    std = train_x[torch.as_tensor(fit_idx)].std().reshape(1)
    train_x = _normalise(train_x, mean, std)
    test_x = _normalise(test_x, mean, std)
    train_y = torch.as_tensor(train_y)

    def split(index: np.ndarray) -> TensorDataset:
        index = torch.as_tensor(index)
        return TensorDataset(train_x[index].contiguous(), train_y[index].contiguous())

    height, width = train_x.shape[-2:]
    return DataBundle(
        "fashion-mnist",
        split(fit_idx),
        split(val_idx),
        TensorDataset(test_x, test_y),
        (1, int(height), int(width)),
        10,
        {"root": str(root), "seed": seed, "val_fraction": val_fraction},
    )


def _index_dataset(dataset: Dataset, index) -> Dataset:
    if isinstance(dataset, TensorDataset):
        index = torch.as_tensor(index)
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return torch.utils.data.Subset(dataset, [int(i) for i in index])


def _load_cifar(
    key: str,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    **rest,
) -> DataBundle:
    _check_unknown(rest, key)
    import torchvision
    from torchvision import transforms

    root = Path(root or os.environ.get("TRIDIM_DATA") or "./data")
    cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    try:
        train = cls(str(root), train=True, download=False, transform=transform)
        test = cls(str(root), train=False, download=False, transform=transform)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{key} not found under {root} ({error}). tridim never downloads: put the "
            f"extracted torchvision {key} folder there, or pass root=FOLDER (or set TRIDIM_DATA)."
        ) from None
    labels = np.asarray(train.targets)
    fit_idx, val_idx = _stratified_split(labels, (1.0 - val_fraction, val_fraction), seed)
    num_classes = 10 if key == "cifar10" else 100
    return DataBundle(
        key,
        _index_dataset(train, fit_idx),
        _index_dataset(train, val_idx),
        test,
        (3, 32, 32),
        num_classes,
        {"root": str(root), "seed": seed, "val_fraction": val_fraction},
    )


def _load_image_folder(path: Path, size: int | None = None, seed: int = 0, **rest) -> DataBundle:
    _check_unknown(rest, "an ImageFolder tree")
    from torchvision import datasets, transforms

    for sub in ("train", "val"):
        if not (path / sub).is_dir():
            raise FileNotFoundError(
                f"{path} is not an ImageFolder dataset: it needs {sub}/ with one "
                "subfolder of images per class"
            )
    steps = [transforms.Resize((size, size))] if size else []
    steps += [
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ]
    transform = transforms.Compose(steps)
    train = datasets.ImageFolder(str(path / "train"), transform=transform)
    val = datasets.ImageFolder(str(path / "val"), transform=transform)
    test = (
        datasets.ImageFolder(str(path / "test"), transform=transform)
        if (path / "test").is_dir()
        else val
    )
    if train.classes != val.classes:
        raise ValueError(f"{path}: train/ and val/ hold different class folders")
    image, _ = train[0]
    return DataBundle(
        str(path),
        train,
        val,
        test,
        tuple(image.shape),
        len(train.classes),
        {"size": size, "seed": seed},
    )
