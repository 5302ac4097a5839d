"""MNIST as whole-split tensors on the training device, and minibatches drawn by index.

torchvision downloads and MD5-checks the four MNIST files on a machine with internet.
Offline, put the four `.gz` files in `ROOT/MNIST/raw/`: they are verified and extracted
without going online. A read-only root (such as `../shared/data`) is mirrored by symlinks
into a writable cache folder, because torchvision extracts next to the archives.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import MNIST
from torchvision.datasets.utils import calculate_md5

ENV_DATA_ROOT = "VAEREPRO_DATA"
ENV_CACHE = "VAEREPRO_CACHE"
MNIST_MD5: dict[str, str] = dict(MNIST.resources)  # {"train-images-idx3-ubyte.gz": md5, ...}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}


class DataError(RuntimeError):
    """The MNIST files are missing, corrupted or malformed."""


@dataclass
class MnistSplits:
    """Both MNIST splits, flattened, on one device.

    train_x: (60000, 784) float32 grey levels in [0, 1]; train_y: (60000,) int64 labels.
    test_x: (10000, 784) float32; test_y: (10000,) int64.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "vaerepro")


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """`--data-root`, else $VAEREPRO_DATA, else the cache folder's `data/`."""
    if data_root is None:
        data_root = os.environ.get(ENV_DATA_ROOT) or default_cache_dir() / "data"
    return Path(data_root).expanduser().resolve()


def _is_writable(path: Path) -> bool:
    # os.access alone says yes to root on a read-only (r-x) folder, so look at the mode bits too.
    mode = path.stat().st_mode
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_raw_files(root: Path) -> None:
    """Verify the MD5 of every `.gz` present in ROOT/MNIST/raw; DataError on a mismatch."""
    raw = root / "MNIST" / "raw"
    for name, md5 in MNIST_MD5.items():
        path = raw / name
        if path.exists() and calculate_md5(str(path)) != md5:
            raise DataError(
                f"MD5 mismatch for {path}: expected {md5}. The file is corrupted or truncated; "
                "delete it and download it again (torchvision does so when online)."
            )


def _missing_files(root: Path) -> list[str]:
    raw = root / "MNIST" / "raw"
    return [n for n in MNIST_MD5 if not (raw / n).exists() and not (raw / n[:-3]).exists()]


def _extraction_root(root: Path) -> Path:
    """A writable root whose MNIST/raw holds (links to) the verified archives."""
    raw = root / "MNIST" / "raw"
    if _is_writable(raw):
        return root
    digest = hashlib.sha1(str(raw).encode()).hexdigest()[:12]
    mirror = default_cache_dir() / "mnist-mirror" / digest
    (mirror / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
    for name in MNIST_MD5:
        link = mirror / "MNIST" / "raw" / name
        if (raw / name).exists() and not link.exists():
            link.symlink_to(raw / name)
    return mirror


def _load_split(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    split = "train" if train else "test"
    try:
        ds = MNIST(str(root), train=train, download=True)
    except Exception as err:  # torchvision raises AssertionError/RuntimeError on bad IDX files
        raise DataError(
            f"could not read the MNIST {split} files under {root / 'MNIST' / 'raw'}: {err}"
        ) from err
    x, y = ds.data, ds.targets
    n = SPLIT_SIZES[split]
    if tuple(x.shape) != (n, 28, 28) or tuple(y.shape) != (n,):
        raise DataError(
            f"MNIST {split} split under {root / 'MNIST' / 'raw'} has images {tuple(x.shape)} and "
            f"labels {tuple(y.shape)}; expected ({n}, 28, 28) and ({n},)"
        )
    return x, y


def torchvision_root(data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A root where `torchvision.datasets.MNIST(root)` finds verified, extracted files.

    The data root itself, or a writable mirror of it. Raises DataError naming the data root
    and the expected files when files are missing (and cannot be downloaded), and naming the
    file when one is corrupted.
    """
    root = resolve_data_root(data_root)
    missing = _missing_files(root)
    if missing and not download:
        raise DataError(_missing_message(root, missing))
    if not missing:
        check_raw_files(root)
        root = _extraction_root(root)
    else:
        root.mkdir(parents=True, exist_ok=True)
        try:
            MNIST(str(root), train=True, download=True)
        except Exception as err:
            raise DataError(_missing_message(root, missing) + f"\nDownload failed: {err}") from err
        check_raw_files(root)
    return root


def load_mnist(
    data_root: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> MnistSplits:
    """Load both splits as float tensors on `device`, verifying the files first (DataError)."""
    root = torchvision_root(data_root, download)
    tensors = [*_load_split(root, train=True), *_load_split(root, train=False)]
    x_train, y_train, x_test, y_test = (t.to(device) for t in tensors)
    return MnistSplits(
        train_x=x_train.reshape(-1, 784).float().div_(255),
        train_y=y_train.long(),
        test_x=x_test.reshape(-1, 784).float().div_(255),
        test_y=y_test.long(),
    )


def _missing_message(root: Path, missing: list[str]) -> str:
    return (
        f"MNIST files missing under data root {root}: expected {', '.join(MNIST_MD5)} in "
        f"{root / 'MNIST' / 'raw'} (missing: {', '.join(missing)}). Set --data-root or "
        f"${ENV_DATA_ROOT} to a folder whose MNIST/raw holds them, or run once with internet."
    )


def binarize_fixed(x: Tensor, seed: int) -> Tensor:
    """One fixed Bernoulli sample of grey levels x (N, 784), reproducible from `seed`."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=gen)


class MinibatchIndices:
    """Index tensors (batch_size,) into a split of n examples, drawn on `device`.

    sampling="replacement": each minibatch uniform with replacement (the authors' code).
    sampling="epoch": a fresh permutation per epoch, the last incomplete batch dropped.
    """

    def __init__(self, n: int, batch_size: int, sampling: str, generator: torch.Generator):
        self.n, self.batch_size, self.sampling, self.gen = n, batch_size, sampling, generator
        self.device = generator.device
        self.perm: Tensor | None = None
        self.pos = 0

    def next(self) -> Tensor:
        if self.sampling == "replacement":
            return torch.randint(self.n, (self.batch_size,), generator=self.gen, device=self.device)
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen, device=self.device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"], state["pos"]
