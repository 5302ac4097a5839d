"""Devices: which one to train on, waiting for queued work, and the global RNG states."""

from __future__ import annotations

import re

import torch

from vaerepro.core.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """auto picks CUDA, then MPS, then CPU; an explicit device must exist (UsageError). cuda:N
    selects GPU N (and makes it the current CUDA device)."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if match := re.fullmatch(r"cuda:(\d+)", name):
        n = torch.cuda.device_count() if cuda else 0
        if int(match[1]) >= n:
            raise UsageError(
                f"--device {name} requested, but torch sees {n} CUDA device(s)"
                + (f"; choose cuda:0 to cuda:{n - 1}" if n else "")
            )
        device = torch.device(name)
        torch.cuda.set_device(device)
        return device
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UsageError("--device cuda requested, but torch sees no CUDA device")
    if name == "mps" and not mps:
        raise UsageError("--device mps requested, but torch sees no Apple MPS device")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r}; choose auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an asynchronous device (CUDA, MPS), so that a clock read
    afterwards measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def get_rng_state() -> dict:
    """Global torch RNG states (CPU and CUDA; tensors only). Training draws from its own
    generators (saved with the minibatch sampler); these are kept for anything else."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
