"""Monte Carlo EM's pieces (core/mcem.py): the E-step's gradient, persistent chains, and that
its updates raise the marginal likelihood of the data they train on."""

import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.marginal import as_float64, grid_log_likelihood, posterior_log_density
from vaerepro.core.mcem import MCEMChains, decoder_loss, mcem_step
from vaerepro.core.model import VAE
from vaerepro.core.optim import make_optimizer


def _model(nz: int = 2) -> VAE:
    torch.manual_seed(0)
    return VAE(nz=nz, hidden=32)


def test_the_e_steps_gradient_equals_finite_differences_in_float64(mnist):
    model = as_float64(_model(3))
    for p in model.parameters():
        p.data.normal_(0.0, 0.1)
    x = mnist.train_x[:4].double()
    z = torch.randn((4, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logf, grad = posterior_log_density(model, x)(z)
    h = 1e-6
    for d in range(3):
        step = torch.zeros_like(z)
        step[:, d] = h
        up, _ = posterior_log_density(model, x)(z + step)
        down, _ = posterior_log_density(model, x)(z - step)
        torch.testing.assert_close(grad[:, d], (up - down) / (2 * h), rtol=1e-6, atol=1e-6)


def test_the_m_steps_gradient_equals_finite_differences_in_float64(mnist):
    """The decoder's gradient (autograd through the one forward pass, model.decode) against
    central differences of decoder_loss along a random direction per parameter; the encoder
    takes no gradient."""
    model = _model(3).double()
    for p in model.parameters():
        p.data.normal_(0.0, 0.1)
    x = mnist.train_x[:4].double()
    z = torch.randn((4, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    decoder_loss(model, x, z).backward()
    gen, h = torch.Generator().manual_seed(2), 1e-6
    for name, p in model.named_parameters():
        if name.startswith("enc"):
            assert p.grad is None, name
            continue
        direction = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            p += h * direction
            up = decoder_loss(model, x, z)
            p -= 2 * h * direction
            down = decoder_loss(model, x, z)
            p += h * direction
        expected = ((up - down) / (2 * h)).item()
        assert abs((p.grad * direction).sum().item() - expected) < 1e-6 * (1 + abs(expected)), name


def test_chains_persist_per_datapoint(mnist):
    model = _model()
    gen = torch.Generator().manual_seed(2)
    chains = MCEMChains(100, 2, gen, model.dec.weight)
    before = chains.z.clone()
    idx = torch.arange(10)
    accepted = mcem_step(
        model, make_optimizer(TrainConfig(), model), mnist.train_x[idx], idx, chains, gen
    )
    moved = (chains.z != before).any(1)
    assert moved[10:].sum() == 0  # the other chains wait for their visit
    assert moved[:10].sum() == accepted.sum() > 0  # an accepted move moves its chain
    assert (chains.step_size[:10] != 0.05).all() and (chains.step_size[10:] == 0.05).all()
    restored = MCEMChains(100, 2, torch.Generator().manual_seed(9), model.dec.weight)
    restored.load_state_dict(chains.state_dict())
    assert torch.equal(restored.z, chains.z)


def test_mcem_raises_the_marginal_likelihood_of_its_training_data(mnist):
    """300 MCEM steps on 100 images (minibatches of 20): their mean log p(x), summed over a
    grid of z, rises by more than 200 nats (from -543 to -161 seen); the E-step's acceptance
    settles near 90%."""
    model = _model()
    x = mnist.train_x[:100]
    opt = make_optimizer(TrainConfig(lr=0.05, adagrad_warmup=5, train_size=100), model)
    gen = torch.Generator().manual_seed(3)
    chains = MCEMChains(100, 2, gen, model.dec.weight)

    def marginal() -> float:
        center, width = torch.zeros(100, 2), torch.full((100, 2), 6.0)
        return float(grid_log_likelihood(model, x, center, width, 61).mean())

    start, accepted = marginal(), []
    for _ in range(300):
        idx = torch.randint(100, (20,), generator=gen)
        accepted.append(mcem_step(model, opt, x[idx], idx, chains, gen).double().mean())
    assert marginal() > start + 200
    assert 0.75 < float(torch.stack(accepted[-100:]).mean()) < 0.98
