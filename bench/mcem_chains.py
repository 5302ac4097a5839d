"""Does it matter that MCEM's chains persist per datapoint between visits (the authors' code),
rather than start afresh from the prior at each visit? (Issue 26; the paper is silent.)

Trains the `fig3` model with MCEM twice per seed, on the same minibatches and noise, once with
persistent chains (vaerepro's) and once with every visited chain redrawn from N(0, I) before its
E-step, and prints the marginal likelihood (the HMC estimator, nats per datapoint) of the first
--images train and test images at every --every samples. In-process, one thread, training and
estimates only (no files). Usage:

    PYTHONPATH=. python bench/mcem_chains.py --samples 3e6 --every 1e6 --seeds 0 1
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from vaerepro.core.config import preset
from vaerepro.core.data import MinibatchIndices, load_mnist
from vaerepro.core.marginal import hmc_estimate_batched
from vaerepro.core.mcem import MCEMChains, mcem_step
from vaerepro.core.model import VAE
from vaerepro.core.numbers import parse_count
from vaerepro.core.optim import make_optimizer


def train(data, seed: int, persistent: bool, args) -> list[dict]:
    """One MCEM model; its marginal likelihood every `args.every` samples."""
    cfg = preset("fig3").replace(method="mcem", train_size=args.train_size, seed=seed)
    torch.manual_seed(seed)
    model, x = VAE.from_config(cfg), data.train_x[: cfg.train_size]
    opt, gen = make_optimizer(cfg, model), torch.Generator().manual_seed(seed)
    chains = MCEMChains(cfg.train_size, cfg.nz, gen, x)
    fresh = torch.Generator().manual_seed(seed + 1)  # the redraws: the run's own noise untouched
    batches = MinibatchIndices(cfg.train_size, cfg.batch_size, cfg.sampling, gen)
    rows, start = [], time.perf_counter()
    for samples in range(cfg.batch_size, args.samples + 1, cfg.batch_size):
        idx = batches.next()
        if not persistent:
            chains.z[idx] = torch.randn((len(idx), cfg.nz), generator=fresh)
        mcem_step(model, opt, x[idx], idx, chains, gen)
        if samples % args.every == 0:
            est = torch.Generator().manual_seed(samples)
            row = {"seed": seed, "chains": "persistent" if persistent else "fresh"}
            row |= {"samples": samples, "s": round(time.perf_counter() - start)}
            for split, images in (("train", x), ("test", data.test_x)):
                row[split] = float(
                    hmc_estimate_batched(model, images[: args.images], est, False).value.mean()
                )
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=parse_count, default=3_000_000)
    p.add_argument("--every", type=parse_count, default=1_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--images", type=int, default=1000, help="images per split per estimate")
    p.add_argument("--data-root")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_mnist(args.data_root, download=False)
    rows = [r for s in args.seeds for chains in (True, False) for r in train(data, s, chains, args)]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    last = table[table.samples == table.samples.max()]
    print(last.groupby("chains")[["train", "test"]].agg(["mean", "std", "count"]).round(2))


if __name__ == "__main__":
    main()
