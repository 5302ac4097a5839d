"""Shared fixtures: MNIST, a tiny config, the tiny runs that many tests share (trained once
per session), torch's thread count restored after each test.

Threads: pytest's process and every process a test starts run torch with one thread, and
OpenMP's idle threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE). On this project's
2-core CPU a torch process of 2 threads beside any other busy process (a niced training job,
a second test process) spins in OpenMP's barriers while one of its threads waits for a core:
N_z = 3 trained at 0.5k samples/s beside a niced 1-thread job instead of 25k alone, while
1 thread trained at 14-15k with or without it. A test that needs another count sets it
(`--threads`, or torch.set_num_threads: test_regression's tier 2 runs the reference's 2
threads). A run's numbers depend on its thread count, never on OMP_WAIT_POLICY.
"""

import os
import sys
import warnings

if "torch" in sys.modules:  # too late for OpenMP to read its variables in this process
    warnings.warn("torch was imported before tests/conftest.py set OMP_WAIT_POLICY", stacklevel=1)
os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every process a test starts
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import io  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import snapshot, tiny  # noqa: E402

from vaerepro.cli import main  # noqa: E402
from vaerepro.core.config import TrainConfig  # noqa: E402
from vaerepro.core.data import load_mnist, verified_root  # noqa: E402
from vaerepro.core.errors import DataError  # noqa: E402

torch.set_num_threads(1)  # also where torch was imported before OMP_NUM_THREADS was set


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


class Made(NamedTuple):
    """A run folder made once per session, and what `vaerepro reproduce` said (stderr)."""

    folder: Path
    stderr: str


def _reproduce_once(tmp_path_factory, name: str, argv_of) -> Made:
    out = tmp_path_factory.mktemp(name) / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv_of(out))
    assert status == 0, err.getvalue()
    return Made(out, err.getvalue())


@pytest.fixture(scope="session")
def tiny_made(tmp_path_factory, data_root):
    """`vaerepro reproduce --nz 3` of helpers.TINY (2000 samples, two evaluations, no
    figures), trained once for the session. Tests read it, or change a copy
    (helpers.copy_run); a test that changed the shared folder fails the session."""
    made = _reproduce_once(tmp_path_factory, "tiny", lambda out: tiny(out, data_root))
    before = snapshot(made.folder)
    yield made
    assert snapshot(made.folder) == before, "a test changed the shared tiny run"


@pytest.fixture(scope="session")
def tiny_run(tiny_made) -> Path:
    """The shared finished tiny run's folder (tiny_made)."""
    return tiny_made.folder


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, data_root):
    """`vaerepro reproduce --nz 3 5` of helpers.TINY with the time estimate and the figures
    (fig2, components, per-model figures, REPORT.md), trained once for the session; a Made.
    Tests read it, or change a copy (helpers.copy_run)."""
    made = _reproduce_once(
        tmp_path_factory,
        "tiny-sweep",
        lambda out: tiny(out, data_root, nz=(3, 5), plot=True, estimate=True),
    )
    before = snapshot(made.folder)
    yield made
    assert snapshot(made.folder) == before, "a test changed the shared tiny sweep"
