"""Our training step as the benchmarks drive it, built one way for all of them
(test_throughput.py, step_ratio.py, loop_gap.py, jobs_ratio.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.data import MinibatchIndices
from vaerepro.core.model import VAE
from vaerepro.core.optim import make_optimizer
from vaerepro.core.step import make_train_step


def make_step(
    cfg: TrainConfig, train_x: torch.Tensor, autograd: bool = False, device="cpu"
) -> tuple[VAE, Callable[[], None]]:
    """(model, one_step): cfg's model (torch seed 0) with its optimizer, and a call that trains
    it on one minibatch of train_x[:cfg.train_size] (M, 784), drawn by its own sampler from a
    generator seeded 0. autograd=True: autograd's gradient instead of the hand-written one.
    cfg.dtype float64: the model and images in float64."""
    torch.manual_seed(0)
    model = VAE.from_config(cfg).to(device)
    if cfg.dtype == "float64":  # as runs/state.py does
        model, train_x = model.double(), train_x.double()
    step = make_train_step(
        [model], [make_optimizer(cfg, model)], cfg, train_x[: cfg.train_size], autograd=autograd
    )
    gen = torch.Generator(device=device).manual_seed(0)
    batches = MinibatchIndices(cfg.train_size, cfg.batch_size, cfg.sampling, gen)
    return model, lambda: step([batches.next()], [gen])
