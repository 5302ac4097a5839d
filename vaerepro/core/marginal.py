"""The marginal likelihood log p(x) = log of the integral of p(x|z) p(z) dz of a trained model,
per datapoint in nats, three ways (all in float64 on a copy of the model):

- `importance_sampled`: k draws from the encoder's q(z|x), log-mean-exp of the weights
  p(x|z) p(z) / q(z|x) (Burda et al.'s k = 5000 test log-likelihood; `vaerepro loglik`).
- `hmc_estimate`: the paper's Appendix D estimator, for models with or without an encoder
  (Monte Carlo EM has none): HMC posterior samples, a kernel density q fitted to the first
  half, and 1 / mean(q(z) / (p(z) p(x|z))) over the second half.
- `grid_log_likelihood`: the integral as a sum over a regular grid of z: exact to the grid's
  resolution in 2 or 3 dimensions, the check of the other two (tests/test_marginal.py).

Every estimate comes with a standard error (the delta method on the mean of the weights:
sd(w) / (sqrt(n) mean(w))), `LogLikelihood`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vaerepro.core.hmc import INITIAL_STEP, hmc_chain
from vaerepro.core.model import VAE, gaussian_loglik

LOG_2PI = math.log(2 * math.pi)
PRIOR_DRAWS = 256  # candidate chain starts per datapoint (chain_start)
STARTS = 8  # of them (or the encoder's mean), each burnt in; the best chain gives the start
LEAPFROG_STEPS = 4  # per HMC transition of the estimator (the paper's Fig. 3)
BURN_IN = 30  # adapting transitions before the estimator's samples, and of each start
SCORED = 10  # a start's last transitions, whose mean log p(x, z) ranks it


@dataclass
class LogLikelihood:
    """Estimates of log p(x) (N,) and their standard errors (N,), nats per datapoint."""

    value: Tensor
    stderr: Tensor


def as_float64(model: VAE) -> VAE:
    """A float64 copy of the model on its device, in eval mode, without gradients."""
    m = copy.deepcopy(model).double().eval()
    m.requires_grad_(False)
    return m


def log_joint(model: VAE, x: Tensor, z: Tensor) -> Tensor:
    """log p(x|z) + log p(z): x (B, 784), z (..., B, N_z) -> (..., B)."""
    log_prior = -0.5 * (z.square() + LOG_2PI).sum(-1)
    return model.log_likelihood(x, model.decode(z)) + log_prior


def posterior_log_density(model: VAE, x: Tensor):
    """log f(z) = log p(x|z) + log p(z) of x (B, 784) and its gradient in z, as HMC takes it:
    z (B, N_z) -> (log f (B,), d log f / dz (B, N_z)), by autograd through the decoder."""

    def log_density(z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            logf = log_joint(model, x, z)
            (grad,) = torch.autograd.grad(logf.sum(), z)
        return logf.detach(), grad

    return log_density


def log_mean_exp(logw: Tensor) -> LogLikelihood:
    """log of the mean of exp(logw) over dim 0, logw (n, B), with its delta-method standard
    error sd(w) / (sqrt(n) mean(w))."""
    n = logw.shape[0]
    top = logw.max(0).values
    w = (logw - top).exp()
    mean = w.mean(0)
    stderr = w.std(0) / (math.sqrt(n) * mean) if n > 1 else torch.full_like(mean, math.inf)
    return LogLikelihood(value=top + mean.log(), stderr=stderr)


@torch.no_grad()
def importance_sampled(
    model: VAE,
    x: Tensor,
    k: int = 5000,
    generator: torch.Generator | None = None,
    batch_size: int = 100,
    draws_per_pass: int = 500,
) -> LogLikelihood:
    """log p(x) of x (N, 784) with q(z|x) as the proposal and k draws per datapoint, in
    batches of `batch_size` datapoints and `draws_per_pass` draws."""
    model = as_float64(model)
    x = x.double()
    values, errors = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        mu, logvar = model.encode(xb)
        logw = []
        for done in range(0, k, draws_per_pass):
            n = min(draws_per_pass, k - done)
            eps = torch.randn((n, *mu.shape), generator=generator, dtype=mu.dtype)
            z = mu + (0.5 * logvar).exp() * eps.to(mu.device)
            logw.append(log_joint(model, xb, z) - gaussian_loglik(mu, logvar, z))
        est = log_mean_exp(torch.cat(logw))
        values.append(est.value)
        errors.append(est.stderr)
    return LogLikelihood(torch.cat(values), torch.cat(errors))


@torch.no_grad()
def grid_log_likelihood(
    model: VAE, x: Tensor, center: Tensor, half_width: Tensor, points: int = 64
) -> Tensor:
    """log p(x) (N,) by summing p(x|z) p(z) over a regular grid of points^N_z z per datapoint:
    the box center[n] +- half_width[n] (both (N, N_z)), times each cell's volume. Exact to
    the grid's resolution where the box holds the posterior's mass; for N_z <= 3."""
    model = as_float64(model)
    nz = model.nz
    if nz > 3:
        raise ValueError(f"a grid over N_z = {nz} dimensions is too large; use N_z <= 3")
    axis = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    unit = torch.cartesian_prod(*[axis] * nz).view(-1, nz)  # (points^N_z, N_z)
    out = []
    for n in range(x.shape[0]):
        z = center[n].double() + unit * half_width[n].double()
        cell = (2 * half_width[n].double() / (points - 1)).log().sum()
        logf = torch.cat(
            [log_joint(model, x[n : n + 1].double(), zc[:, None])[:, 0] for zc in z.split(4096)]
        )
        out.append(torch.logsumexp(logf, 0) + cell)
    return torch.stack(out)


def kde_log_density(fit: Tensor, at: Tensor, factor: Tensor) -> Tensor:
    """Log density of a Gaussian kernel density estimate fitted per datapoint: fit (n, B, D)
    points, evaluated at (m, B, D), kernel covariance factor[b]^2 times the points' sample
    covariance (scipy's gaussian_kde) -> (m, B)."""
    n, b, d = fit.shape
    centered = fit - fit.mean(0)
    cov = torch.einsum("nbi,nbj->bij", centered, centered) / (n - 1)
    # the jitter keeps a collapsed chain's covariance finite
    cov = cov + 1e-12 * torch.eye(d, dtype=fit.dtype, device=fit.device)
    chol = torch.linalg.cholesky(cov) * factor.view(b, 1, 1)
    diff = (at.unsqueeze(1) - fit.unsqueeze(0)).permute(2, 3, 0, 1)  # (B, D, m, n)
    # one solve per datapoint with m * n right-hand sides (a (D, D) factor per pair would
    # take B m n D^2 memory: 20 GB at N_z = 200)
    y = torch.linalg.solve_triangular(chol, diff.reshape(b, d, -1), upper=False)
    y = y.view(b, d, at.shape[0], n).permute(0, 2, 3, 1)  # (B, m, n, D)
    log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (B,)
    log_kernel = -0.5 * y.square().sum(-1) - log_det.view(b, 1, 1) - 0.5 * d * LOG_2PI
    return (torch.logsumexp(log_kernel, -1) - math.log(n)).T


def kde_bandwidth(fit: Tensor) -> Tensor:
    """The kernel factor per datapoint (B,), as the authors chose it: Scott's factor times
    e^((i - 5) / 2), i = 0..9, whichever gives the first half of `fit` (n, B, D) the highest
    likelihood under a KDE of its second half."""
    n, _, d = fit.shape
    scott = n ** (-1.0 / (d + 4))
    factors = scott * torch.exp((torch.arange(10, dtype=fit.dtype, device=fit.device) - 5) / 2)
    half = n // 2
    scores = torch.stack(
        [kde_log_density(fit[half:], fit[:half], f.expand(fit.shape[1])).sum(0) for f in factors]
    )  # (10, B)
    return factors[scores.argmax(0)]


def hmc_estimate(
    model: VAE,
    x: Tensor,
    samples: int = 50,
    leapfrog_steps: int = LEAPFROG_STEPS,
    burn_in: int = BURN_IN,
    generator: torch.Generator | None = None,
    z0: Tensor | None = None,
) -> LogLikelihood:
    """The paper's estimator (Appendix D) for x (B, 784): HMC chains on log p(x|z) + log p(z)
    (one per datapoint, from z0 (B, N_z): by default the encoder's mean), `burn_in` adapting
    transitions, then `samples`; a KDE fitted to the first half of the samples; log p(x) =
    -log mean over the second half of q(z) / (p(x|z) p(z))."""
    model = as_float64(model)
    x = x.double()
    if z0 is None:
        z0 = model.encode(x)[0]
    log_density = posterior_log_density(model, x)
    zs, logf, _ = hmc_chain(
        log_density, z0.double(), samples, burn_in, leapfrog_steps, INITIAL_STEP, generator
    )
    half = samples // 2
    fit, at = zs[:half], zs[half:]
    log_q = kde_log_density(fit, at, kde_bandwidth(fit))
    inverse = log_mean_exp(log_q - logf[half:])  # estimates log (1 / p(x))
    return LogLikelihood(value=-inverse.value, stderr=inverse.stderr)


def chain_start(
    model: VAE,
    x: Tensor,
    generator: torch.Generator | None,
    encoder: bool,
    draws: int = PRIOR_DRAWS,
    starts: int = STARTS,
) -> Tensor:
    """Chain starts z (B, N_z) for x (B, 784). A trained model's posterior is often multimodal,
    and a chain stays in the mode it starts in: of `draws` prior draws per datapoint, the
    `starts` with the highest log p(x, z) (with `encoder`, the encoder's mean in place of the
    last of them) each run BURN_IN HMC transitions, and the one whose last SCORED
    have the highest mean log p(x, z) gives the start. From z = 0, or from the encoder's mean
    alone, chains can end tens of nats low (docs/marginal.md)."""
    model, x, starts = as_float64(model), x.double(), min(starts, draws)
    b, arange = x.shape[0], torch.arange(x.shape[0], device=x.device)
    z = torch.randn((draws, b, model.nz), generator=generator, dtype=x.dtype, device=x.device)
    logf = torch.cat([log_joint(model, x, part) for part in z.split(16)])  # (draws, B)
    z0 = z[logf.topk(starts, 0).indices, arange]  # (starts, B, N_z)
    if encoder:
        z0[-1] = model.encode(x)[0]
    density = posterior_log_density(model, x.repeat(starts, 1))
    z0, burn_in = z0.reshape(-1, model.nz), BURN_IN - SCORED
    zs, fs, _ = hmc_chain(density, z0, SCORED, burn_in, LEAPFROG_STEPS, INITIAL_STEP, generator)
    best = fs.mean(0).view(starts, b).argmax(0)  # (B,)
    return zs[-1].view(starts, b, model.nz)[best, arange]


def hmc_estimate_batched(
    model: VAE,
    x: Tensor,
    generator: torch.Generator | None,
    encoder: bool = True,
    batch_size: int = 1_000,
) -> LogLikelihood:
    """`hmc_estimate` of x (N, 784) in batches of `batch_size` datapoints (its kernel densities
    take B * N_z * 25 * 25 doubles): what a run logs every `marginal_every` samples (the mean)
    and `loglik` reports for MCEM. The chains start at `chain_start`'s best of many prior draws
    and, where the model has one (`encoder`), the encoder's mean."""
    parts = []
    for xb in x.split(batch_size):
        z0 = chain_start(model, xb, generator, encoder)
        parts.append(hmc_estimate(model, xb, generator=generator, z0=z0))
    return LogLikelihood(torch.cat([p.value for p in parts]), torch.cat([p.stderr for p in parts]))
