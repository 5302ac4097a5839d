"""Adagrad in the two forms the presets use, with the paper's weight prior as weight decay."""

from __future__ import annotations

import torch
from torch import nn

from vaerepro.core.config import TrainConfig


class Adagrad(torch.optim.Optimizer):
    """w <- w - lr * g / (sqrt(sum of g^2 + eps_inside) + eps_outside), g = grad + decay * w.

    The first `warmup` steps only accumulate g^2 (they run at lr 0, which leaves w exactly
    unchanged). Two settings matter here:
      the authors' code (anglepy): eps_inside=1e-8, eps_outside=0, warmup=100;
      torch.optim.Adagrad:         eps_inside=0, eps_outside=1e-10, warmup=0 (same numbers,
                                   tests/test_optim.py), without its per-step Python overhead.
    On the CPU one fused torch kernel per param group does the whole update; elsewhere a few
    foreach ops do. The step count lives in the param groups, so it is in `state_dict()`.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        eps_inside: float = 0.0,
        eps_outside: float = 1e-10,
        warmup: int = 0,
        weight_decay: float = 0.0,
        fused: bool | None = None,
    ):
        defaults = dict(
            lr=lr,
            eps_inside=eps_inside,
            eps_outside=eps_outside,
            warmup=warmup,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            group["steps_taken"] = 0
            for p in group["params"]:
                self.state[p]["sum"] = torch.full_like(p, group["eps_inside"])
        devices = {p.device.type for g in self.param_groups for p in g["params"]}
        if fused is None:  # torch's fused Adagrad kernel exists for the CPU only
            fused = devices == {"cpu"} and hasattr(torch, "_fused_adagrad_")
        self.fused = fused
        # The fused kernel wants step counts; it reads them only for an lr decay, which is 0.
        self._kernel_steps = [torch.ones(()) for g in self.param_groups for _ in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            sums = [self.state[p]["sum"] for p in params]
            lr = group["lr"] if group["steps_taken"] >= group["warmup"] else 0.0
            group["steps_taken"] += 1
            if self.fused:
                torch._fused_adagrad_(
                    params,
                    grads,
                    sums,
                    self._kernel_steps[: len(params)],
                    lr=lr,
                    lr_decay=0.0,
                    weight_decay=group["weight_decay"],
                    eps=group["eps_outside"],
                    maximize=False,
                )
                continue
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            torch._foreach_addcmul_(sums, grads, grads)
            if lr:
                std = torch._foreach_sqrt(sums)
                torch._foreach_add_(std, group["eps_outside"])
                torch._foreach_addcdiv_(params, grads, std, value=-lr)


def param_groups(model: nn.Module, decay: float) -> list[dict]:
    """Weights get the prior's decay, biases none."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return [{"params": weights, "weight_decay": decay}, {"params": biases, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module, fused: bool | None = None) -> Adagrad:
    """The optimizer of `cfg` for `model` (already on its device). The N(0, I) weight prior,
    scaled by M/N on the minibatch sum, is a decay of 1/N on the minibatch mean we minimise.
    The epsilons are the config's, or the optimizer's own (`config.ADAGRAD_EPS`)."""
    groups = param_groups(model, 1.0 / cfg.train_size if cfg.weight_decay else 0.0)
    inside, outside = cfg.adagrad_eps()
    warmup = cfg.adagrad_warmup if cfg.optimizer == "paper_adagrad" else 0
    return Adagrad(
        groups, cfg.lr, eps_inside=inside, eps_outside=outside, warmup=warmup, fused=fused
    )
