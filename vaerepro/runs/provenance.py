"""Where a result comes from: versions, device, git commit and command line, recorded with
every run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_precision(device: torch.device) -> str:
    """How float32 matrix products are computed: "float32", or "tf32" where CUDA may use TF32
    tensor cores (torch.backends.cuda.matmul.allow_tf32, set by --tf32)."""
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "float32"


def git_state() -> dict:
    """Commit and dirty flag of the source checkout this package runs from (None outside git)."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=src, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if commit else None}


def environment_info(device: torch.device) -> dict:
    """Versions, device and git state recorded with every result. torchvision's is its
    installed distribution's (importing it takes 1.3 s, and a run needs it only to extract
    MNIST; the wheel's version may lack the local part of `torchvision.__version__`)."""
    from vaerepro import __version__

    return {
        "device": {
            "type": device.type,
            "name": device_name(device),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            # the kernels torch dispatches to (AVX2, AVX512, ...): they set float32 rounding
            "capability": torch.backends.cpu.get_cpu_capability(),
            "matmul_precision": matmul_precision(device),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": importlib.metadata.version("torchvision"),
            "pandas": pd.__version__,
            "vaerepro": __version__,
        },
        "git": git_state(),
        "host": platform.node(),
        "command": sys.argv,
    }


def vaerepro_command(subcommand: str) -> str:
    """How the user can run `vaerepro SUBCOMMAND` from their shell, for advice printed as-is:
    `nox -s reproduce --` inside nox's reproduce session (nox's environment is not on the
    user's PATH), `vaerepro SUBCOMMAND` when that name on PATH is this very command, else
    `python -m vaerepro SUBCOMMAND` with this Python."""
    if os.environ.get("NOX_CURRENT_SESSION") == "reproduce" and subcommand == "reproduce":
        return "nox -s reproduce --"
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("vaerepro")
    if script is not None and script.name == "vaerepro" and on_path:
        if Path(on_path).resolve() == script:
            return f"vaerepro {subcommand}"
    return f"{shlex.quote(sys.executable)} -m vaerepro {subcommand}"
