"""Memory: what a config needs, estimated before any work, against what the machine has; and
out-of-memory errors turned into a clear message."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.errors import OutOfMemory, UsageError

GB = 1 << 30
MNIST_BYTES = 70_000 * 784 * (4 + 1) + 70_000 * 8  # float32 splits, the uint8 cache, labels


def parameters(cfg: TrainConfig) -> int:
    """The model's parameter count (encoder, latent layer, decoder; the Gaussian decoder's
    per-pixel log variance)."""
    h, nz = cfg.hidden, cfg.nz
    count = (784 * h + h) + (h * 2 * nz + 2 * nz) + (nz * h + h) + (h * 784 + 784)
    return count + (784 if cfg.likelihood == "gaussian" else 0)


def model_bytes(cfg: TrainConfig) -> dict[str, int]:
    """Bytes one model of `cfg` needs while it trains and evaluates, by part (float32): the
    parameters with their gradients, optimizer state and update temporaries; a training
    minibatch's activations and their gradients (L draws each); the evaluation's noise for
    one batch and the activations of one forward chunk."""
    h, nz, draws = cfg.hidden, cfg.nz, cfg.z_draws
    per_row = 784 * 2 + h * 2 + nz * 4  # input, output, two hidden layers, mu/logvar/z/eps
    rows = min(cfg.eval_batch_size, 60_000)  # a forward chunk takes at most a whole batch
    return {
        "model and optimizer": 4 * 5 * parameters(cfg),
        "training minibatch": 4 * 3 * cfg.batch_size * draws * per_row,
        "evaluation": 4 * (draws * rows * nz + 2 * rows * draws * per_row),
    }


def available_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes free, where that was read) for the device's memory; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free memory of {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, "available physical pages (sysconf)"
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    configs: list[TrainConfig], at_once: int, processes: int, device: torch.device
) -> None:
    """UsageError, before any work, when `at_once` models of the largest of `configs`, in
    `processes` processes that each load MNIST, need more memory than the machine has
    available; the message gives the estimate by part and the options that size it."""
    cfg = max(configs, key=lambda c: sum(model_bytes(c).values()))
    parts = model_bytes(cfg)
    need = at_once * sum(parts.values()) + processes * MNIST_BYTES
    have = available_bytes(device)
    if have is None or need <= have[0]:
        return
    shown = ", ".join(f"{k} {v / GB:.2f} GB" for k, v in parts.items())
    raise UsageError(
        f"this sweep needs about {need / GB:.1f} GB of memory ({at_once} model(s) at once in "
        f"{processes} process(es), "
        f"each: {shown}, MNIST {MNIST_BYTES / GB:.2f} GB; largest model: --hidden "
        f"{cfg.hidden}, --nz {cfg.nz}, --z-draws {cfg.z_draws}, --batch-size {cfg.batch_size}, "
        f"--eval-batch-size {cfg.eval_batch_size}), but {device.type} has "
        f"{have[0] / GB:.1f} GB available ({have[1]}). Choose smaller sizes, or fewer --jobs."
    )


def is_out_of_memory(err: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


@contextmanager
def out_of_memory_as_error(what: str, advice: str):
    """Within the block, running out of memory is OutOfMemory: '{what}: ... {advice}'."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "MemoryError"
        raise OutOfMemory(f"{what}: out of memory ({first}). {advice}") from err
