"""Shared fixtures: MNIST, a tiny config, torch's thread count restored after each test."""

from pathlib import Path

import pytest
import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.data import load_mnist, verified_root
from vaerepro.core.errors import DataError


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`vaerepro reproduce` sets torch's thread count (`--threads`); in-process runs must not
    leave theirs to the tests after them."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """MNIST's root as vaerepro finds it: $VAEREPRO_DATA, else ~/.cache/vaerepro/data or a
    shared/data beside this checkout, else downloaded into the cache (MD5-checked)."""
    try:
        return verified_root(None)
    except DataError as err:  # a failure, not a skip: the suite needs the real data
        pytest.fail(f"{err}\nSet VAEREPRO_DATA to a folder whose MNIST/raw holds the files.")


@pytest.fixture(scope="session")
def mnist(data_root):
    return load_mnist(data_root, "cpu")


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    """A run of seconds: 20 minibatches, an evaluation every 10, a small model."""
    return TrainConfig(
        nz=3, hidden=64, samples=2000, eval_every=1000, train_size=2000, adagrad_warmup=5
    )
