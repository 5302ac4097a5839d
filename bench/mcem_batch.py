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

import time

import torch
from mcem_common import MCEMSetup, mcem_parser

from vaerepro.core.mcem import mcem_step


def main() -> None:
    p = mcem_parser(__doc__)
    p.set_defaults(at=[500_000, 1_000_000])
    args = p.parse_args()
    run = MCEMSetup.from_args(args)
    every = torch.arange(run.cfg.train_size)
    samples, start = 0, time.perf_counter()
    for at in sorted(args.at):
        while samples < at:
            mcem_step(run.model, run.opt, run.x, every, run.chains, run.gen)
            samples += run.cfg.train_size
        row = {"samples": samples, "s": round(time.perf_counter() - start)}
        print(row | run.estimates(samples, args.images), flush=True)


if __name__ == "__main__":
    main()
