"""What the MCEM studies (mcem_batch.py, mcem_step_rule.py) share: their options, the `fig3`
model set up as a run sets it up, and a row of marginal likelihoods beside the paper's."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from vaerepro.analysis.reference import paper_marginal
from vaerepro.core.config import TrainConfig, preset
from vaerepro.core.data import MnistSplits, load_mnist
from vaerepro.core.marginal import hmc_estimate_batched
from vaerepro.core.mcem import MCEMChains
from vaerepro.core.model import VAE
from vaerepro.core.numbers import parse_count
from vaerepro.core.optim import make_optimizer


def mcem_parser(doc: str) -> argparse.ArgumentParser:
    """The shared options; `doc` is the script's docstring."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--at", type=parse_count, nargs="+", default=[1_000_000, 2_000_000])
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--images", type=int, default=1000, help="images per split per estimate")
    p.add_argument("--data-root")
    return p


@dataclass
class MCEMSetup:
    """The `fig3` MCEM model of --train-size and --seed, with its optimizer, generator and
    chains; x: its training images (N_train, 784)."""

    cfg: TrainConfig
    data: MnistSplits
    x: torch.Tensor
    model: VAE
    opt: torch.optim.Optimizer
    gen: torch.Generator
    chains: MCEMChains

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MCEMSetup:
        """One thread; the seeds drawn in the order a run draws them."""
        torch.set_num_threads(1)
        data = load_mnist(args.data_root, download=False)
        cfg = preset("fig3").replace(method="mcem", train_size=args.train_size, seed=args.seed)
        torch.manual_seed(cfg.seed)
        model, x = VAE.from_config(cfg), data.train_x[: cfg.train_size]
        opt, gen = make_optimizer(cfg, model), torch.Generator().manual_seed(cfg.seed)
        return cls(cfg, data, x, model, opt, gen, MCEMChains(cfg.train_size, cfg.nz, gen, x))

    def estimates(self, samples: int, images: int) -> dict:
        """log p(x) of the first `images` train and test images (the HMC estimator from
        `chain_start`, noise seeded by `samples`) beside the paper's MCEM curve there."""
        est, row = torch.Generator().manual_seed(samples), {}
        for split, x in (("train", self.x), ("test", self.data.test_x)):
            ours = hmc_estimate_batched(self.model, x[:images], est, False).value.mean()
            paper = paper_marginal(self.cfg.to_dict(), split, [samples], "mcem")[0]
            row |= {split: round(float(ours), 2), f"paper_{split}": round(float(paper), 2)}
        return row
