"""Shared fixtures. MNIST comes from $VAEREPRO_DATA (nox sets it to ../shared/data)."""

import os
from pathlib import Path

import pytest

from vaerepro.config import TrainConfig
from vaerepro.data import MNIST_MD5, load_mnist

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("VAEREPRO_DATA") or SHARED_DATA)
    raw = root / "MNIST" / "raw"
    missing = [n for n in MNIST_MD5 if not (raw / n).exists()]
    if missing:  # a failure, not a skip: the suite needs the real data
        pytest.fail(f"MNIST files {missing} not found in {raw}; set VAEREPRO_DATA")
    return root


@pytest.fixture(scope="session")
def mnist(data_root):
    return load_mnist(data_root, "cpu")


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    """A run of seconds: 20 minibatches, an evaluation every 10, a small model."""
    return TrainConfig(
        nz=3, hidden=64, samples=2000, eval_every=1000, train_size=2000, adagrad_warmup=5
    )
