"""Is the paper's Monte Carlo EM a batch algorithm? (Issue 26: our MCEM curves against the
paper's.) The authors' code calls its MCEM step "Batch MCEM" (anglepy's
`wzoptim.step_batch_mcem`): one HMC transition for every chain of the data it is given, then 5
weight updates; and the paper says MCEM "is not an on-line algorithm" and "can't be applied
efficiently for the full MNIST dataset". vaerepro's MCEM is on-line: per minibatch of 100, the
E-step on those 100 chains and 5 Adagrad updates on them.

This trains the `fig3` model with the batch variant: per iteration, the E-step on all N_train
chains and 5 Adagrad updates on the whole training set (vaerepro's `mcem_step` given every
index), counting N_train training samples per iteration. Per counted sample that is the same
HMC work as the on-line run, and the same gradient work, but N_train / 100 times fewer weight
updates. It prints the marginal likelihood (the HMC estimator, from `chain_start`) of the first
--images train and test images at each of --at counted samples, beside the paper's MCEM
curve there. In-process, one thread, no files. Usage:

    PYTHONPATH=. python bench/mcem_batch.py --train-size 1000 --at 5e5 1e6 2e6 3e6 5e6
"""

from __future__ import annotations

import argparse
import time

import torch

from vaerepro.analysis.reference import paper_marginal
from vaerepro.core.config import preset
from vaerepro.core.data import load_mnist
from vaerepro.core.marginal import hmc_estimate_batched
from vaerepro.core.mcem import MCEMChains, mcem_step
from vaerepro.core.model import VAE
from vaerepro.core.numbers import parse_count
from vaerepro.core.optim import make_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--at", type=parse_count, nargs="+", default=[500_000, 1_000_000])
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
    chains, every = MCEMChains(cfg.train_size, cfg.nz, gen, x), torch.arange(cfg.train_size)
    samples, start = 0, time.perf_counter()
    for at in sorted(args.at):
        while samples < at:
            mcem_step(model, opt, x, every, chains, gen)
            samples += cfg.train_size
        est = torch.Generator().manual_seed(samples)
        row = {"samples": samples, "s": round(time.perf_counter() - start)}
        for split, images in (("train", x), ("test", data.test_x)):
            ours = hmc_estimate_batched(model, images[: args.images], est, False).value.mean()
            paper = paper_marginal(cfg.to_dict(), split, [samples], "mcem")[0]
            row |= {split: round(float(ours), 2), f"paper_{split}": round(float(paper), 2)}
        print(row, flush=True)


if __name__ == "__main__":
    main()
