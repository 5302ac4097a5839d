"""The marginal likelihood: HMC (core/hmc.py), the kernel density, and the two estimators of
log p(x) (core/marginal.py) against the sum over a fine grid of z, which is exact to its
resolution in two dimensions.

Tolerance of the estimators: 4 standard errors plus 0.15 nats. A bug in a density term moves
an estimate by whole nats (log 2 pi per dimension is 1.8, the KDE's log n is 3.2 at n = 25).
The 0.15 is there because importance sampling's delta-method standard error understates its
error when q(z|x)'s tails are lighter than the posterior's: on the model below, at one of eight
datapoints, it was 0.12 nats off with a standard error of 0.024."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.hmc import hmc_chain
from vaerepro.core.marginal import (
    as_float64,
    grid_log_likelihood,
    hmc_estimate,
    hmc_estimate_batched,
    importance_sampled,
    kde_bandwidth,
    kde_log_density,
    log_joint,
)
from vaerepro.core.model import VAE
from vaerepro.runs.folder import load_model
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.loop import train

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)


def gaussian(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log N(z; MEAN, COV) up to a constant, and its gradient: z (B, 2)."""
    prec = torch.linalg.inv(COV)
    d = z - MEAN
    return -0.5 * ((d @ prec) * d).sum(-1), -(d @ prec)


def test_hmc_leaves_a_gaussian_invariant():
    """4000 chains started at exact draws of a correlated 2-D Gaussian, 20 transitions at a
    frozen step: the final mean and covariance are the target's within 4 standard errors."""
    gen = torch.Generator().manual_seed(0)
    chains = 4000
    z0 = (
        MEAN
        + torch.randn((chains, 2), generator=gen, dtype=torch.float64)
        @ torch.linalg.cholesky(COV).T
    )
    zs, _, accept = hmc_chain(gaussian, z0, 20, 0, 4, 0.3, gen)
    z = zs[-1]
    assert 0.5 < accept.mean() < 1.0  # it moves
    assert (zs[-1] - zs[0]).abs().mean() > 0.3
    se_mean = (COV.diagonal() / chains).sqrt()
    assert ((z.mean(0) - MEAN).abs() < 4 * se_mean).all()
    cov = torch.cov(z.T)
    se_cov = ((COV.square() + torch.outer(COV.diagonal(), COV.diagonal())) / chains).sqrt()
    assert ((cov - COV).abs() < 4 * se_cov).all(), cov


def test_hmc_burn_in_adapts_the_step_towards_90_percent_acceptance():
    gen = torch.Generator().manual_seed(1)
    z0 = torch.zeros((500, 2), dtype=torch.float64)
    _, _, accept = hmc_chain(gaussian, z0, 200, 300, 4, 3.0, gen)  # a step far too large
    assert 0.8 < accept.mean() < 0.97


def test_kde_equals_scipy_gaussian_kde():
    gen = torch.Generator().manual_seed(2)
    fit = torch.randn((25, 3, 2), generator=gen, dtype=torch.float64)
    at = torch.randn((7, 3, 2), generator=gen, dtype=torch.float64)
    factor = torch.tensor([0.3, 0.5, 1.0], dtype=torch.float64)
    ours = kde_log_density(fit, at, factor)
    for b in range(3):
        kde = scipy.stats.gaussian_kde(fit[:, b].T.numpy(), bw_method=float(factor[b]))
        np.testing.assert_allclose(ours[:, b].numpy(), kde.logpdf(at[:, b].T.numpy()), rtol=1e-10)


def test_kde_bandwidth_picks_the_factor_that_best_predicts_held_out_samples():
    """Per datapoint, the factor of the ten whose KDE of the second half of the samples gives
    the first half the highest likelihood (scipy's KDE as the judge); two tight, far apart
    clusters take a narrower kernel than one Gaussian."""
    gen = torch.Generator().manual_seed(3)
    gaussian = torch.randn((50, 1, 2), generator=gen, dtype=torch.float64)
    clusters = 0.05 * torch.randn((50, 1, 2), generator=gen, dtype=torch.float64)
    clusters[::2] += 4.0
    fit = torch.cat([gaussian, clusters], 1)  # (50, 2, 2)
    chosen = kde_bandwidth(fit)
    scott = 50 ** (-1 / 6)
    candidates = [scott * math.exp((i - 5) / 2) for i in range(10)]
    for b in range(2):
        score = [
            scipy.stats.gaussian_kde(fit[25:, b].T.numpy(), bw_method=f)
            .logpdf(fit[:25, b].T.numpy())
            .sum()
            for f in candidates
        ]
        assert chosen[b].item() == pytest.approx(candidates[int(np.argmax(score))], rel=1e-12)
    assert chosen[1] < chosen[0]


@pytest.fixture(scope="module")
def tiny_model(mnist, tmp_path_factory):
    """A VAE of N_z = 2 and 32 hidden units trained for 2e5 samples on 1000 images (3 s)."""
    cfg = TrainConfig(
        nz=2,
        hidden=32,
        train_size=1000,
        samples=200_000,
        eval_every=200_000,
        lr=0.05,
        adagrad_warmup=5,
    )
    out = tmp_path_factory.mktemp("marginal")
    train(cfg, mnist, out, progress=False)
    model, x = load_model(RunFiles.of_config(out, cfg)), mnist.test_x[:8]
    return model, x, _grid(model, x, 16, 301)


def _grid(model, x, sds: float, points: int):
    """log p(x) summed over points^2 z within `sds` of q's sds around q's mean."""
    mu, logvar = model.encode(x)
    mu, sd = mu.detach(), (0.5 * logvar).exp().detach()
    return grid_log_likelihood(model, x, mu, sds * sd, points)


def test_the_grid_has_converged(tiny_model):
    """Coarser, and wider: the same sum (the truth, to the grid's resolution)."""
    model, x, exact = tiny_model
    torch.testing.assert_close(_grid(model, x[:2], 16, 201), exact[:2], rtol=0, atol=1e-3)
    torch.testing.assert_close(_grid(model, x[:2], 24, 451), exact[:2], rtol=0, atol=1e-2)


def test_log_joint_is_the_models_log_likelihood_plus_the_prior(tiny_model):
    model, x, _ = tiny_model
    z = torch.randn((5, 8, 2), generator=torch.Generator().manual_seed(7))
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    expected = (
        -torch.nn.functional.binary_cross_entropy_with_logits(
            model.decode(z), x.expand(5, 8, 784), reduction="none"
        ).sum(-1)
        + prior
    )
    got = log_joint(as_float64(model), x.double(), z.double())
    torch.testing.assert_close(got, expected.double(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("estimator", ["importance_sampled", "hmc_estimate"])
def test_estimators_match_grid_integration(tiny_model, estimator):
    model, x, exact = tiny_model
    gen = torch.Generator().manual_seed(3)
    if estimator == "importance_sampled":
        est = importance_sampled(model, x, k=5000, generator=gen)
    else:
        est = hmc_estimate(model, x, samples=400, burn_in=50, generator=gen)
    assert ((est.value - exact).abs() < 4 * est.stderr + 0.15).all(), (est, exact)
    assert (est.stderr > 0).all() and (est.stderr < 1).all()


def test_the_papers_hmc_settings_are_close_to_the_grid(tiny_model):
    """The paper's Fig. 3 settings (50 samples, 4 leapfrog steps): noisier, within 1 nat."""
    model, x, exact = tiny_model
    est = hmc_estimate(model, x, generator=torch.Generator().manual_seed(4))
    assert ((est.value - exact).abs() < 1.0).all()


def test_a_model_without_a_useful_encoder_is_estimated_from_the_prior(tiny_model):
    """HMC from z0 drawn from the prior (as for MCEM, which has no encoder) finds the
    posterior: the same log p(x) as from the encoder's mean."""
    model, x, exact = tiny_model
    z0 = torch.randn((8, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    est = hmc_estimate(
        model, x, samples=400, burn_in=100, z0=z0, generator=torch.Generator().manual_seed(6)
    )
    assert ((est.value - exact).abs() < 4 * est.stderr + 0.15).all()


@pytest.mark.parametrize("encoder", [False, True])
def test_chains_start_from_the_best_prior_draws(encoder):
    """A decoder with large random weights has a multimodal posterior (as trained models'
    often are, MCEM's and an overfitted encoder's test images): chains from z = 0 stay in minor
    modes, tens of nats below the grid; from chain_start's best prior draws (with or without
    the encoder's mean among them, here near z = 0), the paper's settings land within 2 nats."""
    gen = torch.Generator().manual_seed(1)
    model = VAE(nz=2, hidden=64, x_dim=64).double()
    with torch.no_grad():
        model.dec.weight.normal_(0, 12.0, generator=gen)
        model.dec.bias.normal_(0, 12.0, generator=gen)
        model.dec_out.weight.normal_(0, 3.0, generator=gen)
        model.dec_out.bias.zero_()
    z_true = torch.randn((8, 2), generator=gen, dtype=torch.float64)
    x = torch.bernoulli(torch.sigmoid(model.decode(z_true)), generator=gen).detach()
    # 601^2 points: within 0.001 nats of 1201^2 here (measured), at a quarter of the time
    exact = grid_log_likelihood(model, x, torch.zeros(8, 2), torch.full((8, 2), 6.0), 601)
    from_zero = hmc_estimate(model, x, generator=gen, z0=torch.zeros_like(z_true))
    assert (from_zero.value - exact).min() < -50
    est = hmc_estimate_batched(model, x, torch.Generator().manual_seed(2), encoder)
    assert ((est.value - exact).abs() < 2.0).all(), est.value - exact
