"""Options and fixtures of the throughput benchmarks: `pytest bench --device cpu|cuda|mps`.

`--quick` shrinks every benchmark to a smoke test (CI runs it with --benchmark-disable).
"""

import hashlib
import os
import platform
import re
import uuid
from pathlib import Path

import pytest
import torch

from vaerepro.core.data import load_mnist, torchvision_root
from vaerepro.core.device import resolve_device
from vaerepro.core.errors import DataError, UsageError
from vaerepro.runs.provenance import device_name


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.addoption("--quick", action="store_true", help="tiny sizes: checks that all run")


DEVICE = pytest.StashKey[torch.device]()


def pytest_configure(config):
    """Resolve --device once, before collection: a device this machine lacks stops the
    session with one line (a usage error, exit status 4) instead of an error per benchmark."""
    if config.getoption("help"):
        return
    try:
        config.stash[DEVICE] = resolve_device(config.getoption("--device"))
    except UsageError as err:
        raise pytest.UsageError(str(err)) from err


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    return request.config.stash[DEVICE]


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def data_root() -> str:
    """A root with verified, extracted MNIST for torchvision (a mirror of a read-only one),
    found as vaerepro finds it ($VAEREPRO_DATA, the cache, ../shared/data, a download)."""
    try:
        return str(torchvision_root(None))
    except DataError as err:  # a failure, not a skip: the benchmarks need the real data
        pytest.fail(f"{err}\nSet VAEREPRO_DATA to a folder whose MNIST/raw holds the files.")


@pytest.fixture(scope="session")
def mnist(data_root, device):
    return load_mnist(data_root, device)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine_name(device: torch.device) -> str:
    """A file-name-safe machine label: the CPU (or GPU) model and the core count."""
    slug = _slug(device_name(device))
    return f"{slug}-{os.cpu_count()}c" if device.type == "cpu" else slug


def host_id() -> str:
    """The host name and a short hash of the machine's id: hosts often share a name ("vm")."""
    try:
        ident = Path("/etc/machine-id").read_text().strip()
    except OSError:
        ident = ""
    ident = ident or str(uuid.getnode())  # the MAC address where there is no machine id
    return f"{_slug(platform.node())}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


def pytest_benchmark_update_machine_info(config, machine_info):
    dev = config.stash[DEVICE]
    machine_info["vaerepro"] = {
        "device": dev.type,
        "device_name": device_name(dev),
        "machine": machine_name(dev),
        "host": host_id(),  # saved file names differ between hosts
        "quick": config.getoption("--quick"),  # hwtable refuses smoke-test timings
        "cpu_model": device_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
