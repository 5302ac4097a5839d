"""The ELBO of a whole split, in large batches without gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vaerepro.core.model import VAE, gaussian_kl_per_dim, standard_normal


@dataclass
class SplitELBO:
    """Means over a split, in nats per datapoint (elbo = loglik - kl, negative for MNIST)."""

    elbo: float
    loglik: float
    kl: float


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the split sums: float64, but float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


@torch.inference_mode()
def evaluate(
    model: VAE,
    x: Tensor,
    batch_size: int = 10_000,
    z_draws: int = 1,
    generator: torch.Generator | None = None,
    binarize: bool = False,
    chunk: int = 1_000,
) -> SplitELBO:
    """Mean ELBO terms over x (N, 784); one host sync at the end.

    The noise is drawn per batch of `batch_size` rows, as `model(batch)` would draw it; on the
    CPU the forward passes take `chunk` rows at a time (TrainConfig.eval_chunk), elsewhere
    whole batches. binarize: draw a Bernoulli sample of x first (dynamically binarized
    training)."""
    totals = torch.zeros(2, device=x.device, dtype=accumulator_dtype(x.device))
    chunk = chunk if x.device.type == "cpu" else batch_size
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        if binarize:
            xb = torch.bernoulli(xb, generator=generator)
        eps = standard_normal((z_draws, xb.shape[0], model.nz), generator, x)
        for c in range(0, xb.shape[0], chunk):
            out = model(xb[c : c + chunk], z_draws, eps=eps[:, c : c + chunk])
            totals += torch.stack([out.loglik.sum(), out.kl.sum()]).to(totals.dtype)
    loglik, kl = (totals / x.shape[0]).tolist()
    return SplitELBO(elbo=loglik - kl, loglik=loglik, kl=kl)


ACTIVE_UNIT_NATS = 0.01  # a latent dimension is active if its average KL exceeds this


@torch.inference_mode()
def kl_per_dimension(model: VAE, x: Tensor, batch_size: int = 10_000) -> Tensor:
    """Average KL(q(z_d|x) || N(0, 1)) per latent dimension over x (N, 784): (N_z,) nats."""
    total = None
    for start in range(0, x.shape[0], batch_size):
        mu, logvar = model.encode(x[start : start + batch_size])
        kl = gaussian_kl_per_dim(mu, logvar)
        total = kl.sum(0) if total is None else total + kl.sum(0)
    return total / x.shape[0]


def active_units(kl_per_dim: Tensor, threshold: float = ACTIVE_UNIT_NATS) -> int:
    """Dimensions whose average KL exceeds `threshold` nats (few active: posterior collapse)."""
    return int((kl_per_dim > threshold).sum())
