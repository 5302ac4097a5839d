import copy
import math

import pytest
import torch
from torch import nn

from vaerepro.core.config import TrainConfig
from vaerepro.core.model import VAE
from vaerepro.core.optim import Adagrad, make_optimizer

BOTH_KERNELS = pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])


@BOTH_KERNELS
def test_paper_adagrad_two_steps_by_hand(fused):
    # warmup=1: step 1 only accumulates g1^2; step 2 moves by lr * g2 / sqrt(g1^2 + g2^2 + eps).
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = Adagrad([w], lr=0.1, eps_inside=1e-8, eps_outside=0.0, warmup=1, fused=fused)
    g1, g2 = torch.tensor([0.5, 3.0]), torch.tensor([-1.0, 4.0])
    w.grad = g1.double().clone()
    opt.step()
    assert w.tolist() == [1.0, -2.0]
    w.grad = g2.double().clone()
    opt.step()
    expected = [
        1.0 - 0.1 * -1.0 / math.sqrt(0.25 + 1.0 + 1e-8),
        -2.0 - 0.1 * 4.0 / math.sqrt(9.0 + 16.0 + 1e-8),
    ]
    assert w.tolist() == pytest.approx(expected, rel=1e-12)


@BOTH_KERNELS
def test_torch_settings_match_torch_adagrad(fused):
    torch.manual_seed(0)
    ours, ref = nn.Linear(5, 3), nn.Linear(5, 3)
    ref.load_state_dict(ours.state_dict())
    opt_ours = Adagrad(ours.parameters(), lr=0.05, weight_decay=0.01, fused=fused)
    opt_ref = torch.optim.Adagrad(ref.parameters(), lr=0.05, weight_decay=0.01)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours.parameters()]
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_paper_adagrad_differs_from_torch_adagrad_on_first_step():
    w1 = nn.Parameter(torch.ones(3))
    w2 = nn.Parameter(torch.ones(3))
    paper = Adagrad([w1], lr=0.1, eps_inside=1e-8, eps_outside=0.0)
    ref = torch.optim.Adagrad([w2], lr=0.1)
    for w, opt in ((w1, paper), (w2, ref)):
        w.grad = torch.full((3,), 1e-5)
        opt.step()
    # torch: eps outside the root (1e-10) -> a full lr step; paper: eps inside -> a damped step.
    assert w2[0].item() == pytest.approx(0.9, rel=1e-4)
    assert w1[0].item() == pytest.approx(1 - 0.1 * 1e-5 / math.sqrt(1e-10 + 1e-8), rel=1e-4)


def test_fused_and_foreach_kernels_agree_and_checkpoint():
    """The CPU kernel and the foreach ops (the CUDA/MPS path) give the same training."""
    cfg = TrainConfig(nz=3, hidden=16, adagrad_warmup=2, train_size=100)
    torch.manual_seed(0)
    models = [VAE.from_config(cfg) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    opts = [
        make_optimizer(cfg, m, fused=f) for m, f in zip(models, (True, False, True), strict=True)
    ]
    for step in range(6):
        if step == 3:  # a checkpoint mid-run, restored into a fresh optimizer
            opts[2] = make_optimizer(cfg, models[2], fused=True)
            opts[2].load_state_dict(copy.deepcopy(opts[0].state_dict()))  # as if from disk
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for m, opt in zip(models, opts, strict=True):
            for p, g in zip(m.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for m in models[1:]:
        for a, b in zip(models[0].parameters(), m.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert opts[2].param_groups[0]["steps_taken"] == 6


def test_weight_decay_applies_to_weights_only():
    model = nn.Linear(2, 1)
    nn.init.constant_(model.weight, 1.0)
    nn.init.constant_(model.bias, 1.0)
    cfg = TrainConfig(train_size=10, adagrad_warmup=0, lr=0.1)
    opt = make_optimizer(cfg, model)
    model.weight.grad, model.bias.grad = torch.zeros(1, 2), torch.zeros(1)
    opt.step()
    assert model.bias.item() == 1.0  # zero gradient, no decay: unchanged
    # weight gradient = decay 1/N * w = 0.1; adagrad step = lr * 0.1 / sqrt(0.01 + eps)
    assert model.weight[0, 0].item() == pytest.approx(1 - 0.1, rel=1e-5)
    no_decay = make_optimizer(cfg.replace(weight_decay=False), model)
    assert all(g["weight_decay"] == 0 for g in no_decay.param_groups)


def test_make_optimizer_picks_the_configured_settings():
    model = nn.Linear(2, 1)
    paper = make_optimizer(TrainConfig(), model).param_groups[0]
    assert (paper["eps_inside"], paper["eps_outside"], paper["warmup"]) == (1e-8, 0.0, 100)
    torch_like = make_optimizer(TrainConfig(optimizer="torch_adagrad"), model).param_groups[0]
    assert (torch_like["eps_inside"], torch_like["eps_outside"], torch_like["warmup"]) == (
        0.0,
        1e-10,
        0,
    )
