"""Optimizers: the authors' Adagrad and torch's, with the paper's weight prior as weight decay."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


class PaperAdagrad(torch.optim.Optimizer):
    """Adagrad as in the authors' code (anglepy).

    The first `warmup` steps only accumulate squared gradients; from then on every step adds g^2
    and moves  w <- w - lr * g / sqrt(sum g^2 + eps).  torch's Adagrad instead puts eps outside
    the root and moves at full lr from the first step.
    Gradients get `weight_decay * w` added first (as torch's Adagrad does); they are changed
    in place.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        eps: float = 1e-8,
        warmup: int = 100,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, eps=eps, warmup=warmup, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                torch._foreach_add_(grads, params, alpha=group["weight_decay"])
            states = [self.state[p] for p in params]
            for p, s in zip(params, states, strict=True):
                if not s:
                    # eps starts in the accumulator: sum g^2 + eps without an extra pass per step
                    s["sum"] = torch.full_like(p, group["eps"])
                    s["denom"] = torch.empty_like(p)
                    s["step"] = 0
            sums = [s["sum"] for s in states]
            torch._foreach_addcmul_(sums, grads, grads)
            step = states[0]["step"]
            for s in states:
                s["step"] += 1
            if step < group["warmup"]:
                continue
            denoms = [torch.sqrt(s["sum"], out=s["denom"]) for s in states]
            torch._foreach_addcdiv_(params, grads, denoms, value=-group["lr"])


def param_groups(model: nn.Module, decay: float) -> list[dict]:
    """Weights get the prior's decay, biases none."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return [{"params": weights, "weight_decay": decay}, {"params": biases, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of `cfg`. The N(0, I) weight prior, scaled by M/N on the minibatch sum,
    is a decay of 1/N on the minibatch mean that we minimise."""
    groups = param_groups(model, 1.0 / cfg.train_size if cfg.weight_decay else 0.0)
    if cfg.optimizer == "paper_adagrad":
        return PaperAdagrad(groups, lr=cfg.lr, warmup=cfg.adagrad_warmup)
    return torch.optim.Adagrad(groups, lr=cfg.lr)
