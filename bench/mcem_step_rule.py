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

import time

import torch
from mcem_common import MCEMSetup, mcem_parser

from vaerepro.core.data import MinibatchIndices
from vaerepro.core.hmc import TARGET_ACCEPTANCE
from vaerepro.core.mcem import MCEMChains, mcem_step

AUTHORS_INITIAL_STEP = 1e-2  # anglepy's step_batch_mcem default
AUTHORS_ALPHA = 1.02


class GlobalStepChains(MCEMChains):
    """The chains with the authors' rule: one step size for every chain, adapted on a
    minibatch's mean acceptance by ALPHA^B, capped at `max_factor` (None: uncapped, as in
    2013)."""

    def __init__(self, chains: MCEMChains, max_factor: float | None):
        self.z, self.step_size = chains.z, chains.step_size
        self.size, self.max_factor = AUTHORS_INITIAL_STEP, max_factor

    def steps(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.full((len(idx),), self.size, dtype=self.z.dtype)

    def adapt(self, idx: torch.Tensor, step: torch.Tensor, accepted: torch.Tensor) -> None:
        factor = AUTHORS_ALPHA ** accepted.numel()
        if self.max_factor is not None:
            factor = min(factor, self.max_factor)
        up = accepted.double().mean() >= TARGET_ACCEPTANCE
        self.size = self.size * factor if up else self.size / factor


def main() -> None:
    p = mcem_parser(__doc__)
    p.add_argument("--rule", choices=("authors", "ours"), default="authors")
    p.add_argument("--max-factor", type=float, help="cap of the authors' factor (2014: 1.25)")
    args = p.parse_args()
    run = MCEMSetup.from_args(args)
    batches = MinibatchIndices(run.cfg.train_size, run.cfg.batch_size, run.cfg.sampling, run.gen)
    if args.rule == "authors":
        run.chains = GlobalStepChains(run.chains, args.max_factor)
    samples, accepted, start = 0, [], time.perf_counter()
    for at in sorted(args.at):
        while samples < at:
            idx = batches.next()
            acc = mcem_step(run.model, run.opt, run.x[idx], idx, run.chains, run.gen)
            accepted.append(acc.double().mean())
            samples += run.cfg.batch_size
        size = run.chains.size if args.rule == "authors" else run.chains.step_size.median().item()
        row = {"samples": samples, "s": round(time.perf_counter() - start), "step": f"{size:.3g}"}
        row["acceptance"] = round(torch.stack(accepted).mean().item(), 3)
        accepted = []
        print(row | run.estimates(samples, args.images), flush=True)


if __name__ == "__main__":
    main()
