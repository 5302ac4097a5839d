"""The paper's step-size selection (Sec. 5: the step size "was chosen from {0.01, 0.02, 0.1}
based on performance on the training set in the first few iterations"): per model, each
candidate of `cfg.lr_select` trains for the first `cfg.lr_select_samples` samples, in memory
(no files), and the one with the best training ELBO is then trained from the start by the
loop, which gives the numbers of a plain run at that learning rate.

"The first few iterations" is not defined by the paper; lr_select_samples is our choice
(docs/results.md measures how the choice depends on it). A candidate whose parameters or ELBO
stop being finite is recorded as diverged and never chosen."""

from __future__ import annotations

import math

import torch

from vaerepro.core.config import TrainConfig, model_name
from vaerepro.core.data import MnistSplits
from vaerepro.core.errors import TrainingDiverged
from vaerepro.core.step import make_train_step
from vaerepro.runs.progress import say
from vaerepro.runs.state import TrainingState


def select_lr(
    cfg: TrainConfig, data: MnistSplits, device: torch.device, autograd: bool = False
) -> dict:
    """Train each of cfg.lr_select for cfg.lr_select_samples samples from cfg's start (its
    seed's weights, minibatches and noise) and return the record the model's JSON keeps:
    {"samples", "candidates": [{"lr", "train_elbo", "test_elbo"} (nats per datapoint; None
    where the candidate diverged)], "chosen"}. TrainingDiverged when every candidate does."""
    candidates = []
    for lr in cfg.lr_select:
        plain = cfg.replace(lr=lr, lr_select=())
        elbo = first_elbos(plain, data, device, [cfg.lr_select_samples], autograd)[0]
        candidates.append({"lr": lr, **elbo})
    finite = [c for c in candidates if c["train_elbo"] is not None]
    if not finite:
        raise TrainingDiverged(
            f"{model_name(cfg)}: every --lr-select candidate "
            f"{list(cfg.lr_select)} diverged within {cfg.lr_select_samples} samples"
        )
    chosen = max(finite, key=lambda c: c["train_elbo"])["lr"]
    said = ", ".join(
        f"lr {c['lr']}: " + ("diverged" if c["train_elbo"] is None else f"{c['train_elbo']:.2f}")
        for c in candidates
    )
    say(
        f"{model_name(cfg)}: lr-select after "
        f"{cfg.lr_select_samples} samples, train ELBO {said}; chosen lr {chosen}"
    )
    return {"samples": cfg.lr_select_samples, "candidates": candidates, "chosen": chosen}


def first_elbos(
    cfg: TrainConfig,
    data: MnistSplits,
    device: torch.device,
    at: list[int],
    autograd: bool = False,
) -> list[dict[str, float | None]]:
    """Train and test ELBO (nats per datapoint; None once diverged) of a fresh model of `cfg`
    after each sample count of `at` (ascending multiples of cfg.batch_size), evaluated as the
    run's CSV would be at that count."""
    state = TrainingState(cfg, data, device)
    step = make_train_step([state.model], [state.opt], cfg, state.train_x, autograd)
    samples, values = 0, []
    for target in at:
        try:
            while samples < target:
                step([state.batches.next()], [state.gen])
                samples += cfg.batch_size
            state.check_finite(0, samples)
        except TrainingDiverged:
            return values + [{"train_elbo": None, "test_elbo": None}] * (len(at) - len(values))
        row = state.log_evaluation(samples, 0.0, 0.0)
        elbo = {k: row[k] for k in ("train_elbo", "test_elbo")}
        values.append({k: v if math.isfinite(v) else None for k, v in elbo.items()})
    return values
