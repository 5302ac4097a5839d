"""The hand-written gradient (the training fast path) against autograd on the model."""

import json

import pandas as pd
import pytest
import torch
from helpers import tiny
from mutations import BACKWARD_BREAKAGES

from vaerepro.cli import main
from vaerepro.core import model as model_mod
from vaerepro.core.config import TrainConfig
from vaerepro.core.evaluate import evaluate
from vaerepro.core.gradients import BernoulliGradients, covers
from vaerepro.core.model import VAE, hidden_layer
from vaerepro.core.optim import make_optimizer
from vaerepro.core.step import make_train_step
from vaerepro.runs.folder import load_model
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.loop import train


def _pair(nz: int, dtype=torch.float64) -> tuple[VAE, VAE]:
    torch.manual_seed(0)
    a = VAE(nz=nz, hidden=64).to(dtype)
    for p in a.parameters():  # away from the near-zero init, so every term matters
        p.data.normal_(0.0, 0.1)
    b = VAE(nz=nz, hidden=64).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("z_draws", [1, 3])
def test_hand_written_gradient_equals_autograd(mnist, z_draws):
    auto, manual = _pair(nz=5)
    x = mnist.train_x[:100].double()
    loss = -auto(x, z_draws, torch.Generator().manual_seed(3)).elbo.mean()
    loss.backward()
    BernoulliGradients([manual], 100, z_draws)(x[None], [torch.Generator().manual_seed(3)])
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


def test_the_hidden_layer_is_tanh():
    """2 sigmoid(2a) - 1, the 2 folded into the product, is tanh to 2e-7; also into a buffer."""
    x = torch.cat([torch.randn(100, 8) * s for s in (1e-3, 1.0, 30.0)])
    w, b = torch.eye(8), torch.zeros(8)
    torch.testing.assert_close(hidden_layer(x, w, b), torch.tanh(x), rtol=0, atol=2e-7)
    out = torch.empty_like(x)
    hidden_layer(x, w, b, out=out)
    torch.testing.assert_close(out, torch.tanh(x), rtol=0, atol=2e-7)


def test_wrong_minibatch_shape_is_refused():
    with pytest.raises(ValueError, match="expected \\(1, 100, 784\\)"):
        BernoulliGradients([VAE(nz=2)], 100)(torch.zeros(1, 50, 784), [None])
    with pytest.raises(ValueError, match="Bernoulli"):
        BernoulliGradients([VAE(nz=2, likelihood="gaussian")], 100)


# --- One forward pass: an edited model trains through autograd, on the same forward -------


def _relu_hidden_layer(inputs, weight, bias, out=None):
    """A researcher's edit of model.hidden_layer: ReLU instead of tanh."""
    a = model_mod.linear(inputs, weight, bias, out)
    return a.relu() if out is None else a.relu_()


def test_the_paper_model_is_covered_by_the_hand_written_gradient(mnist):
    assert covers(VAE(nz=5, hidden=64)) is None and covers(VAE(nz=5, hidden=64), 3) is None
    step = make_train_step([VAE(nz=3)], [None], TrainConfig(nz=3), mnist.train_x[:1000])
    assert step.gradient == "hand-written"


@pytest.mark.parametrize("breakage", list(BACKWARD_BREAKAGES))
def test_a_broken_backward_is_seen_and_autograd_takes_over(mnist, monkeypatch, breakage):
    monkeypatch.setattr(*BACKWARD_BREAKAGES[breakage])
    assert "differs from autograd's" in covers(VAE(nz=5, hidden=64))
    step = make_train_step([VAE(nz=3)], [None], TrainConfig(nz=3), mnist.train_x[:1000])
    assert step.gradient.startswith("autograd (its gradient of")


def test_an_edited_forward_trains_and_evaluates_as_edited(mnist, tmp_path, monkeypatch):
    """ReLU instead of tanh, by editing model.hidden_layer only: the hand-written backward
    (tanh's derivative) no longer matches, so the run trains through autograd on the edited
    forward, and evaluation uses it too."""
    monkeypatch.setattr(model_mod, "hidden_layer", _relu_hidden_layer)
    auto, manual = _pair(nz=5)
    x = mnist.train_x[:100].double()
    (-auto(x, 1, torch.Generator().manual_seed(3)).elbo.mean()).backward()
    BernoulliGradients([manual], 100)(x[None], [torch.Generator().manual_seed(3)])
    assert not torch.allclose(manual.enc.weight.grad, auto.enc.weight.grad, rtol=1e-3)

    cfg = TrainConfig(nz=5, hidden=64, samples=30_000, eval_every=10_000, adagrad_warmup=5)
    df = train(cfg, mnist, tmp_path, progress=False)
    meta = json.loads((tmp_path / "nz5-seed0.json").read_text())
    assert meta["gradient"].startswith("autograd (its gradient of")
    assert df.test_elbo.is_monotonic_increasing and df.test_elbo.iloc[-1] > -200
    trained = load_model(RunFiles.of(tmp_path, 5, 0))
    x, gen = mnist.test_x, torch.Generator().manual_seed(0)
    relu_elbo = evaluate(trained, x, generator=gen).elbo
    assert relu_elbo == pytest.approx(df.test_elbo.iloc[-1], abs=0.5)  # other noise
    monkeypatch.undo()  # the same weights under the unedited (tanh) forward fit far worse
    assert evaluate(trained, x, generator=torch.Generator().manual_seed(0)).elbo < relu_elbo - 20


def test_autograd_option_and_the_gaussian_decoder(tiny_run, data_root, tmp_path):
    hand = tiny_run  # `reproduce --nz 3` of TINY, the hand-written gradient
    assert json.loads((hand / "nz3-seed0.json").read_text())["gradient"] == "hand-written"
    assert main(tiny(tmp_path / "auto", data_root, "--autograd")) == 0
    meta = json.loads((tmp_path / "auto" / "nz3-seed0.json").read_text())
    assert meta["gradient"] == "autograd (--autograd)"
    hand, auto = (pd.read_csv(r / "nz3-seed0.csv") for r in (hand, tmp_path / "auto"))
    cols = ["train_elbo", "test_elbo", "train_kl"]
    pd.testing.assert_frame_equal(auto[cols], hand[cols], rtol=1e-4)

    out = tmp_path / "gaussian"
    argv = tiny(out, data_root, "--likelihood", "gaussian", "--gaussian-logvar", "-3")
    assert main([*argv, "--samples", "20000", "--eval-every", "5000"]) == 0
    meta = json.loads((out / "nz3-seed0.json").read_text())
    assert meta["config"]["likelihood"] == "gaussian" and meta["config"]["gaussian_logvar"] == -3
    assert meta["gradient"].startswith("autograd (it covers the Bernoulli decoder only")
    df = pd.read_csv(out / "nz3-seed0.csv")
    assert df.test_elbo.is_monotonic_increasing and df.test_elbo.diff().iloc[-1] > 0
