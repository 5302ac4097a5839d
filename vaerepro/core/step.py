"""The training step: one update of K models (AEVB or wake-sleep; MCEM: one model), each on
its own minibatch with its own noise, through the hand-written gradient where it covers the
model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vaerepro.core import wakesleep
from vaerepro.core.batched import BatchedAEVB, CapturedStep
from vaerepro.core.config import TrainConfig, config_diff
from vaerepro.core.data import MinibatchIndices
from vaerepro.core.errors import UsageError
from vaerepro.core.gradients import BernoulliGradients, covers
from vaerepro.core.mcem import MCEMChains, mcem_step
from vaerepro.core.model import VAE
from vaerepro.core.wakesleep import WakeSleepGradients


@dataclass
class TrainStep:
    """One update of every model per call: model k on the minibatch train_x[idxs[k]], idxs[k]
    (M,), drawing its noise from gens[k]. `gradient` says how the gradient is computed."""

    step: Callable[[list[torch.Tensor], list[torch.Generator]], None]
    gradient: str  # "hand-written" or "autograd", with the reason when not the default
    write_back: Callable[[], None] | None = None  # batched: the stacks into models, optimizers
    graphed: Callable | None = None  # --cuda-graphs: (samplers, gens) -> a CapturedStep

    def __post_init__(self):
        self._captured = None

    def sync(self) -> None:
        """Bring the models and their optimizers up to date (a no-op unless batched)."""
        if self.write_back is not None:
            self.write_back()

    def __call__(self, idxs: list[torch.Tensor], gens: list[torch.Generator]) -> None:
        if self.graphed is not None:
            raise ValueError("a CUDA-graphed step draws its own minibatches: call .run")
        self.step(idxs, gens)

    def run(self, batches: list[MinibatchIndices], gens: list[torch.Generator]) -> None:
        """One step, model k on a minibatch drawn by batches[k] (its sampler): in a CUDA
        graph with --cuda-graphs, where the draws are captured too."""
        if self.graphed is None:
            self.step([b.next() for b in batches], gens)
            return
        if self._captured is None:
            self._captured = self.graphed(batches, gens)
        self._captured()


def gradient_pair(cfg: TrainConfig) -> tuple[Callable, Callable]:
    """(loss, hand_written) of cfg's method: the loss autograd differentiates,
    loss(model, x (M, 784), z_draws, generator) -> scalar, and the hand-written gradient,
    hand_written(models, batch_size, z_draws) -> a callable that writes every param.grad."""
    if cfg.method == "wakesleep":
        return (
            lambda m, x, draws, gen: wakesleep.objective(m, x, draws, gen, cfg.dreams),
            lambda ms, batch, draws: WakeSleepGradients(ms, batch, draws, cfg.dreams),
        )
    return (lambda m, x, draws, gen: -m(x, draws, gen).elbo.mean(), BernoulliGradients)


def stacking_problem(cfgs: list[TrainConfig], autograd: bool = False) -> str | None:
    """Why the models of `cfgs` cannot train in one batched step (None: they can). The one
    place of the `--stacked` rule: AEVB models equal but for N_z and seed, through the
    hand-written gradient (which needs the Bernoulli decoder and a model it covers)."""
    first = cfgs[0]
    if any(c.method != "aevb" for c in cfgs):
        return "--stacked trains AEVB models only; wake-sleep and mcem train one at a time"
    if first.lr_select:
        return "--lr-select may choose another learning rate per model; they train one at a time"
    for other in cfgs[1:]:
        diff = [
            d
            for d in config_diff(first.to_dict(), other.to_dict())
            if not d.startswith(("nz:", "seed:"))
        ]
        if diff:
            return "models trained together may differ in nz and seed only: " + "; ".join(diff)
    reason = "--autograd was given" if autograd else covers(VAE.from_config(first), first.z_draws)
    if reason:
        return f"--stacked runs the hand-written gradient for several models at once, but {reason}"
    return None


def make_train_step(
    models: list[VAE],
    opts: list[torch.optim.Optimizer],
    cfg: TrainConfig,
    train_x: torch.Tensor | list[torch.Tensor],
    autograd: bool = False,
    cuda_graphs: bool = False,
    chains: MCEMChains | None = None,
) -> TrainStep:
    """The training step of `models` (configs `cfg`, N_z and seed aside) for cfg's method
    (AEVB, wake-sleep or MCEM), on train_x (N, 784), or one such split per model.

    The gradient is the hand-written one (gradients.py, wakesleep.py: autograd's numbers, far
    less overhead) when it covers the model: `gradients.covers` checks it against autograd
    through the model's forward, so an edited model (another activation, the Gaussian decoder)
    trains through autograd, the same forward. `autograd=True` forces autograd (one model only).
    Several models (`stacking_problem` None), or `cuda_graphs`, take the batched step
    (batched.py): every layer and Adagrad on (K, ...) stacks, captured in a CUDA graph with
    `cuda_graphs`. Its `write_back` must run before the models or optimizers are read.
    MCEM (one model, its `chains`) takes an HMC E-step and autograd M-steps (mcem.py).
    """
    if cfg.method == "mcem":
        return _mcem_train_step(models, opts, cfg, train_x, chains, cuda_graphs)
    loss, hand_written = gradient_pair(cfg)
    reason = "--autograd" if autograd else covers(models[0], cfg.z_draws, loss, hand_written)
    _refuse_batched(models, cfg, reason, cuda_graphs)
    gather = minibatch_gather(cfg, train_x, len(models))
    if len(models) > 1 or cuda_graphs:
        return _batched_step(models, opts, cfg, gather, cuda_graphs)
    model, opt = models[0], opts[0]
    if reason is None:
        grads = hand_written(models, cfg.batch_size, cfg.z_draws)

        def step(idxs: list[torch.Tensor], gens: list[torch.Generator]) -> None:
            grads(gather(idxs, gens), gens)
            opt.step()

        return TrainStep(step, "hand-written")

    def autograd_step(idxs: list[torch.Tensor], gens: list[torch.Generator]) -> None:
        opt.zero_grad(set_to_none=True)
        loss(model, gather(idxs, gens)[0], cfg.z_draws, gens[0]).backward()
        opt.step()

    return TrainStep(autograd_step, f"autograd ({reason})")


def _batched_step(
    models: list[VAE],
    opts: list[torch.optim.Optimizer],
    cfg: TrainConfig,
    gather: Callable[[list[torch.Tensor], list[torch.Generator]], torch.Tensor],
    cuda_graphs: bool,
) -> TrainStep:
    """The batched step of K AEVB models (batched.py), in a CUDA graph with `cuda_graphs`."""
    update = BatchedAEVB(models, opts, cfg.batch_size, cfg.z_draws)

    def step(idxs: list[torch.Tensor], gens: list[torch.Generator]) -> None:
        update(gather(idxs, gens), gens)

    if not cuda_graphs:
        return TrainStep(step, "hand-written, batched", update.write_back)

    def graphed(batches: list[MinibatchIndices], gens: list[torch.Generator]) -> CapturedStep:
        return CapturedStep(update, gather, batches, gens)

    return TrainStep(step, "hand-written, batched, in a CUDA graph", update.write_back, graphed)


def _refuse_batched(
    models: list[VAE], cfg: TrainConfig, reason: str | None, cuda_graphs: bool
) -> None:
    """UsageError where several models (--stacked) or `cuda_graphs` cannot take the batched
    step: it needs AEVB through the hand-written gradient (`reason` None), a CUDA graph also a
    CUDA device and minibatches drawn with replacement. `stacking_problem` tells a sweep
    before any work; this guards the step itself."""
    if len(models) == 1 and not cuda_graphs:
        return
    option = "--cuda-graphs" if cuda_graphs else "--stacked"
    if cfg.method != "aevb":
        raise UsageError("--stacked and --cuda-graphs train AEVB models only")
    if reason is not None:
        raise UsageError(f"{option} needs the hand-written gradient, but {reason}")
    if cuda_graphs and models[0].enc.weight.device.type != "cuda":
        raise UsageError("--cuda-graphs needs a CUDA device")
    if cuda_graphs and cfg.sampling != "replacement":
        raise UsageError("--cuda-graphs draws minibatches with replacement only (--sampling)")


def minibatch_gather(
    cfg: TrainConfig, train_x: torch.Tensor | list[torch.Tensor], k: int
) -> Callable[[list[torch.Tensor], list[torch.Generator]], torch.Tensor]:
    """gather(idxs, gens): the K minibatches train_x[idxs[k]] (K, M, 784) into static buffers
    (a CUDA graph captures this too), dynamically binarized with gens[k] where cfg says so."""
    splits = train_x if isinstance(train_x, list) else [train_x] * k
    xs = splits[0].new_empty((k, cfg.batch_size, splits[0].shape[1]))
    binary = torch.empty_like(xs) if cfg.binarize == "dynamic" else None

    def gather(idxs: list[torch.Tensor], gens: list[torch.Generator]) -> torch.Tensor:
        for k, (split, idx, gen) in enumerate(zip(splits, idxs, gens, strict=True)):
            torch.index_select(split, 0, idx, out=xs[k])
            if binary is not None:
                torch.bernoulli(xs[k], generator=gen, out=binary[k])
        return xs if binary is None else binary

    return gather


def _mcem_train_step(
    models: list[VAE],
    opts: list[torch.optim.Optimizer],
    cfg: TrainConfig,
    train_x: torch.Tensor | list[torch.Tensor],
    chains: MCEMChains | None,
    cuda_graphs: bool,
) -> TrainStep:
    """MCEM's step of one model: `mcem_step` on each minibatch, moving the chains it visits."""
    _refuse_batched(models, cfg, None, cuda_graphs)
    if chains is None:
        raise ValueError("an MCEM step needs the model's chains")
    gather = minibatch_gather(cfg, train_x, 1)

    def step(idxs: list[torch.Tensor], gens: list[torch.Generator]) -> None:
        mcem_step(models[0], opts[0], gather(idxs, gens)[0], idxs[0], chains, gens[0])

    return TrainStep(step, "autograd (MCEM: HMC E-step, decoder M-steps)")
