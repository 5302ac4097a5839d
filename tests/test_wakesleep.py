"""Wake-sleep (issue 17): its hand-written gradient against autograd of the two stated
objectives, and training on real MNIST."""

import pytest
import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.gradients import covers
from vaerepro.core.model import VAE
from vaerepro.core.step import gradient_pair, make_train_step
from vaerepro.core.wakesleep import WakeSleepGradients, objective
from vaerepro.runs.loop import train


def _pair(nz: int) -> tuple[VAE, VAE]:
    torch.manual_seed(0)
    a = VAE(nz=nz, hidden=64).double()
    for p in a.parameters():  # away from the near-zero init, so every term matters
        p.data.normal_(0.0, 0.1)
    b = VAE(nz=nz, hidden=64).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("dreams", ["sampled", "mean"])
@pytest.mark.parametrize("z_draws", [1, 3])
def test_wake_sleep_gradient_equals_autograd_of_its_objectives(mnist, dreams, z_draws):
    auto, manual = _pair(nz=5)
    x = mnist.train_x[:100].double()
    objective(auto, x, z_draws, torch.Generator().manual_seed(3), dreams).backward()
    grads = WakeSleepGradients([manual], 100, z_draws, dreams)
    grads(x[None], [torch.Generator().manual_seed(3)])
    for (name, a), b in zip(auto.named_parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_each_phase_moves_only_its_own_model(mnist):
    """Wake: the generative model (decoder) only; sleep: the recognition model only."""
    model, _ = _pair(nz=3)
    x = mnist.train_x[:50].double()
    gen = torch.Generator().manual_seed(0)
    eps = model.draw_noise(x, 1, gen)
    with torch.no_grad():
        z = model.forward_pass(x, eps).z
    model.log_likelihood(x, model.decode(z)).mean().backward()
    assert model.enc.weight.grad is None and model.enc_out.weight.grad is None
    assert model.dec.weight.grad.abs().sum() > 0 and model.dec_out.weight.grad.abs().sum() > 0


def test_the_check_sees_a_broken_wake_sleep_backward(monkeypatch):
    cfg = TrainConfig(nz=5, method="wakesleep")
    loss, hand_written = gradient_pair(cfg)
    assert covers(VAE(nz=5), 1, loss, hand_written) is None
    monkeypatch.setattr("vaerepro.core.wakesleep.tanh_backward", lambda grad, out: grad)
    assert "differs from autograd's" in covers(VAE(nz=5), 1, loss, hand_written)


def test_wake_sleep_training_raises_the_bound(mnist, tmp_path):
    cfg = TrainConfig(nz=5, method="wakesleep", samples=30_000, eval_every=10_000, train_size=5_000)
    step = make_train_step([VAE(nz=5)], [None], cfg, mnist.train_x[:1000])
    assert step.gradient == "hand-written"
    df = train(cfg, mnist, tmp_path, progress=False)
    assert df.test_elbo.is_monotonic_increasing
    assert df.test_elbo.iloc[-1] > df.test_elbo.iloc[0] + 10
