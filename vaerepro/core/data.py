"""MNIST as whole-split tensors on the training device, and minibatches drawn by index.

A data root is a folder whose `MNIST/raw/` holds the four original `.gz` files. It is only
ever read: the archives are MD5-checked (torchvision's sums) and extracted by torchvision into
a folder of the cache (`~/.cache/vaerepro`, or $VAEREPRO_CACHE) that links to them, and every
extracted file is checked against the MD5 of the genuine file (re-extracted when it differs).
The decoded splits are cached beside the extracted files (`mnist-uint8.bin`) and used only
when their SHA-256 is that of genuine MNIST (else decoded and cached again): a second load
reads one verified file and imports no torchvision (about 1.3 s on 2 cores).
Without --data-root or $VAEREPRO_DATA, the first default root that holds the files is used,
else the files are downloaded into the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vaerepro.core.errors import DataError
from vaerepro.core.files import sha256, write_atomically
from vaerepro.core.memory import out_of_memory_as_error

ENV_DATA_ROOT = "VAEREPRO_DATA"
ENV_CACHE = "VAEREPRO_CACHE"
# torchvision's MNIST.resources (tests check they agree): torchvision is imported only to
# download or extract, never for a load from the cache
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# MD5 of the files torchvision extracts from the genuine archives (the archives' content)
EXTRACTED_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# The decoded splits back to back as uint8 (train images, train labels, test images, test
# labels; shapes below), and the SHA-256 of these bytes decoded from the genuine files
CACHE_FILE = "mnist-uint8.bin"
CACHE_SHAPES = ((60_000, 28, 28), (60_000,), (10_000, 28, 28), (10_000,))
CACHE_SHA256 = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
# The project's read-only offline copy, beside a source checkout (absent in a pip install)
CHECKOUT_SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


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
    """$VAEREPRO_CACHE, else ~/.cache/vaerepro; DataError when neither is set to something
    usable: a HOME that does not exist is not created (with a 105 MB cache under it)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    home = Path.home()
    if not home.is_dir():
        raise DataError(
            f"the home folder {home} (HOME) does not exist, and vaerepro would create its MNIST "
            f"cache (about 105 MB) under it. Set ${ENV_CACHE} to a folder for the cache, or "
            "HOME to an existing folder."
        )
    return home / ".cache" / "vaerepro"


def default_data_roots() -> list[Path]:
    """Where MNIST is looked for without --data-root or $VAEREPRO_DATA, in order; the first
    one is also where it is downloaded when none holds it."""
    return [default_cache_dir() / "data", CHECKOUT_SHARED_DATA]


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """`--data-root`, else $VAEREPRO_DATA, else the first default root holding the files.

    A root that was named (option or variable) must be an existing folder: DataError
    otherwise, so a typo never creates a folder tree.
    """
    named = data_root if data_root is not None else os.environ.get(ENV_DATA_ROOT)
    if named:
        source = "--data-root" if data_root is not None else f"${ENV_DATA_ROOT}"
        try:
            root = Path(named).expanduser().resolve()
        except (RuntimeError, OSError) as err:  # a symlink loop (RuntimeError before 3.13)
            raise DataError(
                f"data root {named} (from {source}) cannot be resolved ({err}): a symlink "
                "loop? Give a folder whose MNIST/raw holds the MNIST files."
            ) from err
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DataError(
                f"data root {root} (from {source}) {what}. Give a folder whose MNIST/raw holds "
                f"{', '.join(MNIST_MD5)}, or leave {source} unset to use or download the "
                "default copy."
            )
        return root
    candidates = default_data_roots()
    for root in candidates:
        if not _missing_files(root):
            return root.resolve()
    return candidates[0].resolve()


def check_raw_files(root: Path) -> None:
    """Verify the MD5 of every MNIST file present in ROOT/MNIST/raw; DataError on a mismatch."""
    raw = root / "MNIST" / "raw"
    for name, md5 in (*MNIST_MD5.items(), *EXTRACTED_MD5.items()):
        path = raw / name
        if path.exists() and file_md5(path) != md5:
            raise DataError(
                f"MD5 mismatch for {path}: expected {md5}. The file is corrupted or truncated; "
                "replace it with the original (torchvision downloads it when online)."
            )


def _missing_files(root: Path) -> list[str]:
    raw = root / "MNIST" / "raw"
    return [n for n in MNIST_MD5 if not (raw / n).exists() and not (raw / n[:-3]).exists()]


def file_md5(path: Path) -> str:
    """Hex MD5 of a file (torchvision's `calculate_md5` without importing torchvision)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def _mirror(root: Path) -> Path:
    """The cache folder of a data root: its extracted files and the decoded splits."""
    digest = hashlib.sha1(str(root / "MNIST" / "raw").encode()).hexdigest()[:12]
    return default_cache_dir() / "mnist-mirror" / digest


def _extraction_root(root: Path) -> Path:
    """A cache folder whose MNIST/raw links to the root's verified files, for torchvision to
    extract into (the data root itself is never written). Extracted files that differ from
    the genuine ones are removed, so torchvision extracts them again from the archives."""
    from torchvision.datasets import MNIST  # 1.3 s of imports: only to extract

    raw = root / "MNIST" / "raw"
    mirror = _mirror(root)
    mirror_raw = mirror / "MNIST" / "raw"
    mirror_raw.mkdir(parents=True, exist_ok=True)
    with open(mirror / ".lock", "a") as lock:  # concurrent loads share one mirror
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in (*MNIST_MD5, *EXTRACTED_MD5):
            link = mirror_raw / name
            if (raw / name).exists() and not link.is_symlink():
                link.unlink(missing_ok=True)
                link.symlink_to(raw / name)
        for name, md5 in EXTRACTED_MD5.items():
            path = mirror_raw / name
            if path.exists() and not path.is_symlink() and file_md5(path) != md5:
                path.unlink()
        if not all((mirror_raw / name).exists() for name in EXTRACTED_MD5):
            try:  # one call extracts all four files (offline is fine: the archives are here)
                MNIST(str(mirror), train=True, download=True)
            except Exception as err:  # torchvision raises RuntimeError/AssertionError
                raise DataError(f"could not extract the MNIST files of {raw}: {err}") from err
    return mirror


def _load_split(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=train, download=False)
    return ds.data, ds.targets


def verified_root(data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The data root (see `resolve_data_root`), its files downloaded if allowed and needed,
    and MD5-checked. DataError naming the data root and the expected files when files are
    missing (and cannot be downloaded), and naming the file when one is corrupted."""
    root = resolve_data_root(data_root)
    missing = _missing_files(root)
    if missing:
        downloadable = data_root is None and not os.environ.get(ENV_DATA_ROOT)
        if not (download and downloadable):
            raise DataError(_missing_message(root, missing))
        try:
            from torchvision.datasets import MNIST

            MNIST(str(root), train=True, download=True)
        except Exception as err:
            raise DataError(_missing_message(root, missing) + f"\nDownload failed: {err}") from err
    check_raw_files(root)
    return root


def torchvision_root(data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A root where `torchvision.datasets.MNIST(root)` finds verified, extracted files
    (DataError as `verified_root`)."""
    return _extraction_root(verified_root(data_root, download))


def _read_cache(path: Path) -> list[Tensor] | None:
    """The four uint8 tensors of the cache file (shapes CACHE_SHAPES); None when it is absent,
    unreadable or not the genuine bytes (tampered, truncated, half-written by another tool)."""
    try:
        data = bytearray(path.read_bytes())  # writable: torch.frombuffer warns on bytes
    except OSError:
        return None
    if sha256(data) != CACHE_SHA256:
        return None
    parts = torch.frombuffer(data, dtype=torch.uint8).split([math.prod(s) for s in CACHE_SHAPES])
    return [p.view(shape) for p, shape in zip(parts, CACHE_SHAPES, strict=True)]


def decoded_splits(root: Path) -> list[Tensor]:
    """Train images (60000, 28, 28), train labels, test images, test labels of a verified data
    root, as uint8: from the cache when it verifies, else decoded by torchvision from the
    verified extraction and cached (written atomically)."""
    cache = _mirror(root) / CACHE_FILE
    if (tensors := _read_cache(cache)) is not None:
        return tensors
    mirror = _extraction_root(root)
    decoded = [*_load_split(mirror, train=True), *_load_split(mirror, train=False)]
    tensors = [t.to(torch.uint8) for t in decoded]
    data = b"".join(t.numpy().tobytes() for t in tensors)
    if sha256(data) != CACHE_SHA256:  # the extracted files passed their MD5 check
        raise DataError(
            f"MNIST decoded from {root / 'MNIST' / 'raw'} differs from the genuine splits "
            "although its files passed their MD5 check (a torchvision that decodes differently?)"
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache, data)
    return tensors


def load_mnist(
    data_root: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> MnistSplits:
    """Load both splits as float tensors on `device`, verifying the files first (DataError)."""
    root = verified_root(data_root, download)
    advice = "MNIST needs about 0.4 GB of memory (on the device too); free some and run again."
    with out_of_memory_as_error(f"loading MNIST from {root}", advice):
        tensors = decoded_splits(root)
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
        f"${ENV_DATA_ROOT} to a folder whose MNIST/raw holds them, or leave both unset on a "
        "machine with internet to download them into the cache."
    )


def binarize_fixed(x: Tensor, seed: int, split: str) -> Tensor:
    """One fixed Bernoulli sample of grey levels x (N, 784) of `split` ("train" or "test"),
    reproducible from the model's `seed`: the train split draws from seed, the test split
    from seed + 1, so that the two draws differ."""
    offset = {"train": 0, "test": 1}[split]
    gen = torch.Generator(device=x.device).manual_seed(seed + offset)
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
