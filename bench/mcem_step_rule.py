"""Does the authors' HMC step-size rule slow MCEM down? (Issue 26: our MCEM curves against the
paper's.) vaerepro's MCEM keeps a step size per chain (hmc.py's rule). The authors' code of
the paper's time (anglepy's hmc.py, `hmc_step_autotune`, commits of 2013-10) keeps one global
step size for all chains, from 1e-2, multiplied after each E-step by 1.02^B (B: the chains of
the minibatch) when the minibatch's mean acceptance reached 0.9, divided by it otherwise; its
2014 version caps that factor at 1.25 (`--max-factor 1.25`).

This trains the `fig3` model with on-line MCEM as a run does (minibatches of 100 drawn with
replacement, the E-step on their chains, 5 Adagrad updates), with either rule, and prints the
marginal likelihood (the HMC estimator, from `chain_start`) of the first --images train and
test images at each of --at samples, beside the paper's MCEM curve there, with the global step
size (authors) or the median per-chain step size (ours) and the mean acceptance since the last
row. In-process, one thread, no files. Usage:

    PYTHONPATH=. python bench/mcem_step_rule.py --rule authors --at 1e6 2e6 3e6 5e6
"""

from __future__ import annotations

import argparse
import time

import torch

from vaerepro.analysis.reference import paper_marginal
from vaerepro.core.config import preset
from vaerepro.core.data import MinibatchIndices, load_mnist
from vaerepro.core.hmc import TARGET_ACCEPTANCE, hmc_step
from vaerepro.core.marginal import hmc_estimate_batched, posterior_log_density
from vaerepro.core.mcem import LEAPFROG_STEPS, UPDATES, MCEMChains, decoder_loss, mcem_step
from vaerepro.core.model import VAE
from vaerepro.core.numbers import parse_count
from vaerepro.core.optim import make_optimizer

AUTHORS_INITIAL_STEP = 1e-2  # anglepy's step_batch_mcem default
AUTHORS_ALPHA = 1.02


class GlobalStep:
    """The authors' rule: one step size for every chain, adapted on a minibatch's mean
    acceptance by ALPHA^B, capped at `max_factor` (None: uncapped, as in 2013)."""

    def __init__(self, max_factor: float | None):
        self.size, self.max_factor = AUTHORS_INITIAL_STEP, max_factor

    def adapt(self, accepted: torch.Tensor) -> None:
        factor = AUTHORS_ALPHA ** accepted.numel()
        if self.max_factor is not None:
            factor = min(factor, self.max_factor)
        up = accepted.double().mean() >= TARGET_ACCEPTANCE
        self.size = self.size * factor if up else self.size / factor


def authors_mcem_step(model, opt, x, idx, chains: MCEMChains, gen, step: GlobalStep):
    """mcem_step with the authors' global step size: returns the acceptance (M,) bool."""
    log_density = posterior_log_density(model, x)
    z = chains.z[idx]
    logf, grad = log_density(z)
    eps = torch.full((len(idx),), step.size, dtype=z.dtype)
    z, _, _, accepted = hmc_step(log_density, z, logf, grad, eps, LEAPFROG_STEPS, gen)
    chains.z[idx] = z
    step.adapt(accepted)
    for _ in range(UPDATES):
        opt.zero_grad(set_to_none=True)
        decoder_loss(model, x, z).backward()
        opt.step()
    return accepted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rule", choices=("authors", "ours"), default="authors")
    p.add_argument("--max-factor", type=float, help="cap of the authors' factor (2014: 1.25)")
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--at", type=parse_count, nargs="+", default=[1_000_000, 2_000_000])
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--images", type=int, default=1000, help="images per split per estimate")
    p.add_argument("--data-root")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_mnist(args.data_root, download=False)
    cfg = preset("fig3").replace(method="mcem", train_size=args.train_size, seed=args.seed)
    torch.manual_seed(cfg.seed)
    model, x = VAE.from_config(cfg), data.train_x[: cfg.train_size]
    opt, gen = make_optimizer(cfg, model), torch.Generator().manual_seed(cfg.seed)
    chains = MCEMChains(cfg.train_size, cfg.nz, gen, x)
    batches = MinibatchIndices(cfg.train_size, cfg.batch_size, cfg.sampling, gen)
    step = GlobalStep(args.max_factor)
    samples, accepted, start = 0, [], time.perf_counter()
    for at in sorted(args.at):
        while samples < at:
            idx = batches.next()
            if args.rule == "authors":
                acc = authors_mcem_step(model, opt, x[idx], idx, chains, gen, step)
            else:
                acc = mcem_step(model, opt, x[idx], idx, chains, gen)
            accepted.append(acc.double().mean())
            samples += cfg.batch_size
        size = step.size if args.rule == "authors" else chains.step_size.median().item()
        row = {"samples": samples, "s": round(time.perf_counter() - start), "step": f"{size:.3g}"}
        row["acceptance"] = round(torch.stack(accepted).mean().item(), 3)
        accepted = []
        est = torch.Generator().manual_seed(samples)
        for split, images in (("train", x), ("test", data.test_x)):
            ours = hmc_estimate_batched(model, images[: args.images], est, False).value.mean()
            paper = paper_marginal(cfg.to_dict(), split, [samples], "mcem")[0]
            row |= {split: round(float(ours), 2), f"paper_{split}": round(float(paper), 2)}
        print(row, flush=True)


if __name__ == "__main__":
    main()
