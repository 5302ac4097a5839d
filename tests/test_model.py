import math

import pytest
import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.evaluate import evaluate
from vaerepro.core.model import VAE, bernoulli_loglik, gaussian_kl, gaussian_loglik


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 0.5
    z = mu + (0.5 * logvar).exp() * torch.randn(200_000, 4, 3, generator=g, dtype=torch.float64)
    log_q = gaussian_loglik(mu.double(), logvar.double(), z)
    log_p = gaussian_loglik(torch.zeros(()), torch.zeros(()), z)
    mc = (log_q - log_p).mean(0)
    torch.testing.assert_close(gaussian_kl(mu, logvar).double(), mc, atol=0.02, rtol=0.01)


def test_kl_is_zero_at_the_prior():
    assert gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)).abs().max() == 0


def test_bernoulli_loglik_matches_direct_formula():
    g = torch.Generator().manual_seed(1)
    logits, x = torch.randn(3, 784, generator=g), torch.rand(3, 784, generator=g)  # grey levels
    p = torch.sigmoid(logits.double())
    direct = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(bernoulli_loglik(logits, x).double(), direct, atol=1e-3, rtol=1e-5)


def test_gaussian_loglik_matches_normal_distribution():
    mean, logvar, x = torch.tensor([0.3, 0.1]), torch.tensor([-1.0, 0.5]), torch.tensor([0.5, 0.0])
    ref = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(x).sum()
    torch.testing.assert_close(gaussian_loglik(mean, logvar, x), ref)


@pytest.mark.parametrize(
    "likelihood,logvar", [("bernoulli", None), ("gaussian", None), ("gaussian", -2.0)]
)
def test_elbo_is_loglik_minus_kl_and_below_loglik(likelihood, logvar):
    torch.manual_seed(0)
    model = VAE(nz=5, hidden=32, likelihood=likelihood, gaussian_logvar=logvar, init_std=0.3)
    x = torch.rand(8, 784)
    out = model(x, z_draws=3)
    for t in (out.elbo, out.loglik, out.kl):
        assert t.shape == (8,)
    assert out.mu.shape == out.logvar.shape == (8, 5)
    torch.testing.assert_close(out.elbo, out.loglik - out.kl)
    assert (out.kl >= 0).all() and (out.elbo <= out.loglik).all()


def test_init_is_normal_001_with_zero_biases():
    torch.manual_seed(0)
    model = VAE(nz=20)
    assert abs(model.enc.weight.std().item() - 0.01) < 1e-3
    assert all((m.bias == 0).all() for m in (model.enc, model.enc_out, model.dec, model.dec_out))
    assert model.enc.weight.shape == (500, 784) and model.dec_out.weight.shape == (784, 500)


def test_untrained_elbo_is_near_784_log2():
    # Weights near 0 give logits near 0: log p(x|z) = -784 log 2 for any x, KL near 0.
    torch.manual_seed(0)
    out = VAE(nz=3)(torch.rand(16, 784))
    assert out.elbo.mean().item() == pytest.approx(-784 * math.log(2), abs=0.5)


def test_evaluate_in_chunks_equals_one_forward_pass(mnist):
    torch.manual_seed(0)
    model = VAE(nz=4, hidden=32)
    x = mnist.test_x[:2500]
    gen = torch.Generator().manual_seed(7)
    chunk = TrainConfig().eval_chunk
    split = evaluate(model, x, batch_size=2500, z_draws=2, generator=gen, chunk=chunk)
    with torch.no_grad():  # one pass, drawing the noise as model(batch) does
        out = model(x, 2, torch.Generator().manual_seed(7))
    assert chunk < len(x)  # the evaluation went through several chunks
    assert split.loglik == pytest.approx(out.loglik.mean().item(), abs=1e-4)
    assert split.kl == pytest.approx(out.kl.mean().item(), abs=1e-4)
    assert split.elbo == pytest.approx(split.loglik - split.kl)
