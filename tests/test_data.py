import gzip
import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torchvision.datasets.utils import calculate_md5

from vaerepro.core import data as data_mod
from vaerepro.core.data import (
    CACHE_FILE,
    CACHE_SHA256,
    EXTRACTED_MD5,
    MNIST_MD5,
    MinibatchIndices,
    load_mnist,
    resolve_data_root,
    torchvision_root,
)
from vaerepro.core.errors import DataError


def test_splits_are_flat_grey_levels(mnist):
    assert mnist.train_x.shape == (60_000, 784) and mnist.test_x.shape == (10_000, 784)
    assert mnist.train_x.dtype == torch.float32
    assert 0.0 == mnist.train_x.min() and mnist.train_x.max() == 1.0
    assert set(mnist.test_y.unique().tolist()) == set(range(10))


def _copy_raw(data_root, dst, names):
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for n in names:
        shutil.copy(data_root / "MNIST" / "raw" / n, raw / n)
    return raw


def test_missing_files_name_the_files_and_the_root(data_root, tmp_path):
    names = list(MNIST_MD5)
    _copy_raw(data_root, tmp_path, names[1:])  # train images missing
    for download in (False, True):  # offline, the download fails fast and is reported the same way
        with pytest.raises(DataError) as err:
            load_mnist(tmp_path, download=download)
        msg = str(err.value)
        assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg


def test_corrupted_file_gives_md5_error(data_root, tmp_path):
    raw = _copy_raw(data_root, tmp_path, list(MNIST_MD5))
    path = raw / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="MD5 mismatch.*t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


def test_truncated_file_gives_md5_error(data_root, tmp_path):
    raw = _copy_raw(data_root, tmp_path, list(MNIST_MD5))
    path = raw / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="MD5 mismatch.*train-labels"):
        load_mnist(tmp_path)


def _tree(root):
    """{relative path: bytes} of every file under root (symlinks followed)."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_data_root_is_never_written(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEREPRO_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    _copy_raw(data_root, root, list(MNIST_MD5))
    before = _tree(root)
    assert load_mnist(root).train_x.shape == (60_000, 784)
    assert _tree(root) == before  # nothing extracted, added or changed next to the archives
    extracted = list((tmp_path / "cache").rglob("train-images-idx3-ubyte"))
    assert len(extracted) == 1 and not extracted[0].is_symlink()


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_extracted_file_is_extracted_again(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEREPRO_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    _copy_raw(data_root, root, list(MNIST_MD5))
    good = load_mnist(root)
    [path] = (tmp_path / "cache").rglob("train-images-idx3-ubyte")
    [cache] = (tmp_path / "cache").rglob(CACHE_FILE)
    _flip_byte(path, 16 + 784 * 5 + 400)  # one pixel of the sixth training image
    _flip_byte(cache, 784 * 5 + 400)  # and the same pixel of the cache, rebuilt from it
    assert torch.equal(load_mnist(root).train_x, good.train_x)
    assert calculate_md5(str(path)) == EXTRACTED_MD5[path.name]
    _flip_byte(path, 16 + 784 * 5 + 400)
    torchvision_root(root)  # the baseline's way in re-verifies the extraction too
    assert calculate_md5(str(path)) == EXTRACTED_MD5[path.name]


def test_the_md5s_are_torchvisions():
    from torchvision.datasets import MNIST

    assert dict(MNIST.resources) == MNIST_MD5


def test_the_decoded_splits_are_cached_verified_and_equal_torchvisions(
    data_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("VAEREPRO_CACHE", str(tmp_path / "cache"))
    built = load_mnist(data_root)  # a miss: decoded by torchvision, then cached
    [cache] = (tmp_path / "cache").rglob(CACHE_FILE)
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == CACHE_SHA256
    mirror = torchvision_root(data_root)
    images, labels = data_mod._load_split(mirror, train=False)
    assert torch.equal(built.test_x, images.reshape(-1, 784).float() / 255)
    assert torch.equal(built.test_y, labels)

    def no_extraction(root):
        raise AssertionError("a load with a good cache extracted the files")

    monkeypatch.setattr(data_mod, "_extraction_root", no_extraction)
    hit = load_mnist(data_root)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(hit, name), getattr(built, name)), name
        assert getattr(hit, name).dtype == getattr(built, name).dtype


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_tampered_cache_is_detected_and_rebuilt(data_root, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("VAEREPRO_CACHE", str(tmp_path / "cache"))
    good = load_mnist(data_root)
    [cache] = (tmp_path / "cache").rglob(CACHE_FILE)
    if damage == "flip":
        _flip_byte(cache, 784 * 7 + 300)  # a pixel of the eighth training image
    else:
        cache.write_bytes(cache.read_bytes()[:1000] if damage == "truncate" else b"")
    assert data_mod._read_cache(cache) is None
    again = load_mnist(data_root)
    assert torch.equal(again.train_x, good.train_x) and torch.equal(again.train_y, good.train_y)
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == CACHE_SHA256
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # two processes of their own
def test_a_load_from_the_cache_imports_no_torchvision(data_root, tmp_path):
    env = {**os.environ, "VAEREPRO_CACHE": str(tmp_path / "cache"), "VAEREPRO_DATA": str(data_root)}
    code = (
        "import sys, vaerepro.core.data as d; d.load_mnist(); print('torchvision' in sys.modules)"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs == ["True", "False"]  # the first load extracts and decodes, the second does not


def test_extracted_files_alone_are_verified(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEREPRO_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_MD5:
        with gzip.open(data_root / "MNIST" / "raw" / name) as f:
            (raw / name[:-3]).write_bytes(f.read())
    assert load_mnist(tmp_path / "root").test_x.shape == (10_000, 784)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x03")
    with pytest.raises(DataError, match="MD5 mismatch.*t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path / "root")


@pytest.mark.parametrize("via", ["option", "variable"])
def test_a_mistyped_data_root_creates_nothing(tmp_path, monkeypatch, via):
    typo = tmp_path / "no" / "such" / "root"
    if via == "variable":
        monkeypatch.setenv("VAEREPRO_DATA", str(typo))
    with pytest.raises(DataError, match=r"does not exist") as err:
        load_mnist(typo if via == "option" else None)
    assert str(typo) in str(err.value)
    assert not (tmp_path / "no").exists()


def test_a_file_as_data_root_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        load_mnist(tmp_path / "f")


def test_the_default_root_is_the_first_that_holds_the_files(data_root, tmp_path, monkeypatch):
    monkeypatch.delenv("VAEREPRO_DATA", raising=False)
    monkeypatch.setenv("VAEREPRO_CACHE", str(tmp_path / "cache"))  # empty: nothing there
    monkeypatch.setattr(data_mod, "CHECKOUT_SHARED_DATA", data_root)
    assert resolve_data_root(None) == data_root.resolve()
    monkeypatch.setattr(data_mod, "CHECKOUT_SHARED_DATA", tmp_path / "absent")
    assert resolve_data_root(None) == (tmp_path / "cache" / "data").resolve()


def test_replacement_sampling_is_uniform_with_repeats():
    gen = torch.Generator().manual_seed(0)
    batches = MinibatchIndices(50, 100, "replacement", gen)
    idx = torch.cat([batches.next() for _ in range(200)])
    counts = torch.bincount(idx, minlength=50)
    assert idx.max() < 50 and (counts > 0).all()
    assert counts.float().std() / counts.float().mean() < 0.1  # 400 expected per index
    assert len(batches.next().unique()) < 100  # 100 draws from 50: repeats


def test_epoch_sampling_is_a_permutation_dropping_the_last_batch():
    gen = torch.Generator().manual_seed(0)
    batches = MinibatchIndices(250, 100, "epoch", gen)
    epoch1 = torch.cat([batches.next(), batches.next()])
    assert len(epoch1.unique()) == 200  # no repeats within an epoch
    third = batches.next()  # only 50 left: a new permutation starts
    assert len(third.unique()) == 100


def test_sampler_state_round_trips():
    a = MinibatchIndices(1000, 10, "epoch", torch.Generator().manual_seed(3))
    a.next()
    state = a.state_dict()
    b = MinibatchIndices(1000, 10, "epoch", torch.Generator().manual_seed(99))
    b.load_state_dict(state)
    assert torch.equal(a.next(), b.next())
