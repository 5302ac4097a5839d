import gzip
import shutil

import pytest
import torch

from vaerepro.data import MNIST_MD5, DataError, MinibatchIndices, load_mnist


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


def test_bad_extracted_file_is_reported(data_root, tmp_path):
    raw = _copy_raw(data_root, tmp_path, list(MNIST_MD5))
    load_mnist(tmp_path)  # extracts next to the archives in this writable root
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        good = f.read()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x09" + good[4:])  # bad magic
    with pytest.raises(DataError, match="test files"):
        load_mnist(tmp_path)


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


def test_wrong_shape_is_reported(data_root, tmp_path):
    raw = _copy_raw(data_root, tmp_path, list(MNIST_MD5))
    load_mnist(tmp_path)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        good = f.read()
    # a valid IDX header that announces 9,999 labels, followed by 9,999 labels
    (raw / "t10k-labels-idx1-ubyte").write_bytes(good[:4] + (9999).to_bytes(4, "big") + good[8:-1])
    with pytest.raises(DataError, match=r"test split .* labels \(9999,\); expected"):
        load_mnist(tmp_path)
