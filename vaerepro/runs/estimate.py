"""How long a sweep will take: a short measured warm-up of the real training step and
evaluation, extrapolated to every model's remaining samples."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.data import MinibatchIndices, MnistSplits
from vaerepro.core.device import synchronize
from vaerepro.core.evaluate import evaluate
from vaerepro.core.marginal import hmc_estimate_batched
from vaerepro.core.mcem import MCEMChains
from vaerepro.core.model import VAE
from vaerepro.core.optim import make_optimizer
from vaerepro.core.step import make_train_step

WARMUP_STEPS = 3  # untimed: first calls allocate and pick kernels
TIMED_STEPS = 30  # about 0.1-0.3 s per N_z on a 2-core CPU
TIMED_EVAL_ROWS = 2_000
TIMED_MARGINAL_ROWS = 50  # the estimator's cost is linear in the images (about 0.2 s here)
TEST_SIZE = 10_000


@dataclass
class Estimate:
    """Measured speeds: training samples/s per (method, N_z), evaluated datapoints/s, and
    datapoints/s of the marginal likelihood estimator (inf: no model estimates it)."""

    train_rate: dict[tuple[str, int], float]
    eval_rate: float
    marginal_rate: float = math.inf

    def seconds(self, cfg: TrainConfig, samples_done: int = 0) -> float:
        """Seconds left for a model of `cfg` that has trained `samples_done` samples: the
        training steps plus a full train and test evaluation every `eval_every` samples (and
        for a new model with --lr-select, its candidates' samples and evaluations), and the
        marginal likelihood of marginal_n images of both splits every `marginal_every`."""
        remaining = max(cfg.samples - samples_done, 0)
        evaluations = remaining // cfg.eval_every
        if cfg.lr_select and samples_done == 0:  # each candidate's first samples, evaluated
            remaining += len(cfg.lr_select) * cfg.lr_select_samples
            evaluations += len(cfg.lr_select)
        rows = evaluations * (cfg.train_size + TEST_SIZE) if cfg.has_encoder else 0
        estimates = remaining // cfg.marginal_every if cfg.marginal_every else 0
        marginal = estimates * 2 * cfg.marginal_n / self.marginal_rate
        return remaining / self.train_rate[cfg.method, cfg.nz] + rows / self.eval_rate + marginal


def measure(configs: list[TrainConfig], data: MnistSplits, device: torch.device) -> Estimate:
    """Time TIMED_STEPS training steps per distinct (method, N_z), one evaluation pass (both in
    the run's dtype) and, where a model estimates it, the marginal likelihood of a few images,
    on throwaway models (no files, the run's own seeds untouched)."""
    rates = {}
    for cfg in {(c.method, c.nz): c for c in configs}.values():
        dtype = getattr(torch, cfg.dtype)  # a float64 run's step: about 1.8x a float32 one's
        model = VAE.from_config(cfg).to(device, dtype)
        gen = torch.Generator(device=device).manual_seed(0)
        train_x = data.train_x[: cfg.train_size].to(dtype)
        chains = MCEMChains(cfg.train_size, cfg.nz, gen, train_x) if cfg.method == "mcem" else None
        step = make_train_step([model], [make_optimizer(cfg, model)], cfg, train_x, chains=chains)
        batches = MinibatchIndices(cfg.train_size, cfg.batch_size, cfg.sampling, gen)
        for _ in range(WARMUP_STEPS):
            step([batches.next()], [gen])
        synchronize(device)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step([batches.next()], [gen])
        synchronize(device)
        rates[cfg.method, cfg.nz] = TIMED_STEPS * cfg.batch_size / (time.perf_counter() - start)
    widest = max(configs, key=lambda c: c.nz)
    dtype = getattr(torch, widest.dtype)
    model = VAE.from_config(widest).to(device, dtype)
    x = data.test_x[:TIMED_EVAL_ROWS].to(dtype)
    kw = dict(batch_size=widest.eval_batch_size, chunk=widest.eval_chunk)
    evaluate(model, x[:100], generator=torch.Generator(device=device).manual_seed(0), **kw)
    start = time.perf_counter()
    evaluate(model, x, generator=torch.Generator(device=device).manual_seed(0), **kw)  # syncs
    eval_rate = len(x) / (time.perf_counter() - start)
    return Estimate(rates, eval_rate, _marginal_rate(configs, data, device))


def _marginal_rate(configs: list[TrainConfig], data: MnistSplits, device: torch.device) -> float:
    """Datapoints/s of the marginal likelihood estimator on the widest model that logs it."""
    logging = [c for c in configs if c.marginal_every]
    if not logging:
        return math.inf
    cfg = max(logging, key=lambda c: (c.nz, c.hidden))
    model = VAE.from_config(cfg).to(device)
    x = data.test_x[:TIMED_MARGINAL_ROWS]
    gen, encoder = torch.Generator(device=device).manual_seed(0), cfg.has_encoder
    start = time.perf_counter()
    hmc_estimate_batched(model, x, gen, encoder).value.sum().item()
    return len(x) / (time.perf_counter() - start)
