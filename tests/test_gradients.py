"""The hand-written gradient (the training fast path) against autograd on the model."""

import pytest
import torch

from vaerepro.config import TrainConfig
from vaerepro.gradients import BernoulliGradients
from vaerepro.model import VAE, tanh
from vaerepro.optim import make_optimizer
from vaerepro.train import make_train_step


def _pair(nz: int, dtype=torch.float64) -> tuple[VAE, VAE]:
    torch.manual_seed(0)
    a = VAE(nz=nz, hidden=64).to(dtype)
    for p in a.parameters():  # away from the near-zero init, so every term matters
        p.data.normal_(0.0, 0.1)
    b = VAE(nz=nz, hidden=64).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("n_samples", [1, 3])
def test_hand_written_gradient_equals_autograd(mnist, n_samples):
    auto, manual = _pair(nz=5)
    x = mnist.train_x[:100].double()
    loss = -auto(x, n_samples, torch.Generator().manual_seed(3)).elbo.mean()
    loss.backward()
    BernoulliGradients([manual], 100, n_samples)(x[None], [torch.Generator().manual_seed(3)])
    for (name, a), b in zip(auto.named_parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_training_steps_follow_autograd(mnist):
    """A few paper-protocol updates (warm-up, weight decay) through both paths, float32."""
    cfg = TrainConfig(nz=3, hidden=64, adagrad_warmup=2)
    models = _pair(nz=3, dtype=torch.float32)
    train_x = mnist.train_x[:1000]
    steps = [
        make_train_step([m], [make_optimizer(cfg, m)], cfg, train_x, autograd=autograd)
        for m, autograd in zip(models, (True, False), strict=True)
    ]
    gens = [torch.Generator().manual_seed(1) for _ in models]
    for i in range(5):
        idx = torch.arange(100) + 100 * i
        for step, gen in zip(steps, gens, strict=True):
            step([idx], [gen])
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_tanh_is_tanh():
    a = torch.cat([torch.randn(10_000) * s for s in (1e-3, 1.0, 30.0)])
    torch.testing.assert_close(tanh(a), torch.tanh(a), rtol=0, atol=2e-7)


def test_wrong_minibatch_shape_is_refused():
    with pytest.raises(ValueError, match="expected \\(1, 100, 784\\)"):
        BernoulliGradients([VAE(nz=2)], 100)(torch.zeros(1, 50, 784), [None])
    with pytest.raises(ValueError, match="Bernoulli"):
        BernoulliGradients([VAE(nz=2, likelihood="gaussian")], 100)
