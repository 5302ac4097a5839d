import math

import pytest
import torch
from torch import nn

from vaerepro.config import TrainConfig
from vaerepro.optim import PaperAdagrad, make_optimizer


def test_paper_adagrad_two_steps_by_hand():
    # warmup=1: step 1 only accumulates g1^2; step 2 moves by lr * g2 / sqrt(g1^2 + g2^2 + eps).
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = PaperAdagrad([w], lr=0.1, eps=1e-8, warmup=1)
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


def test_paper_adagrad_differs_from_torch_adagrad_on_first_step():
    w1 = nn.Parameter(torch.ones(3))
    w2 = nn.Parameter(torch.ones(3))
    paper, ref = PaperAdagrad([w1], lr=0.1, warmup=0), torch.optim.Adagrad([w2], lr=0.1)
    for w, opt in ((w1, paper), (w2, ref)):
        w.grad = torch.full((3,), 1e-5)
        opt.step()
    # torch: eps outside the root (1e-10) -> a full lr step; paper: eps inside -> a damped step.
    assert w2[0].item() == pytest.approx(0.9, rel=1e-4)
    assert w1[0].item() == pytest.approx(1 - 0.1 * 1e-5 / math.sqrt(1e-10 + 1e-8), rel=1e-4)


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


def test_make_optimizer_picks_the_configured_kind():
    model = nn.Linear(2, 1)
    assert isinstance(make_optimizer(TrainConfig(), model), PaperAdagrad)
    torch_opt = make_optimizer(TrainConfig(optimizer="torch_adagrad"), model)
    assert type(torch_opt) is torch.optim.Adagrad
