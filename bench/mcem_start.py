"""Where must the paper's HMC estimator start its chains for a model without an encoder (MCEM)?
(Issue 26.) For the first --images of a split, under a finished MCEM model of a run folder, it
prints log p(x) (nats per datapoint) three ways: the estimator from z = 0, the estimator from
`prior_start` (what vaerepro uses), and a grid over z in [-6, 6]^3 refined around its peaks
(exact to about 0.1 nats, N_z = 3 only). In-process, training-free; the grid takes about
20 s per image on one core. Usage:

    PYTHONPATH=. python bench/mcem_start.py RUN_FOLDER --split test --images 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from vaerepro.analysis.loglik import LoglikOptions, finished_models, split_data
from vaerepro.core.data import load_mnist
from vaerepro.core.marginal import as_float64, hmc_estimate, hmc_estimate_batched, log_joint
from vaerepro.core.model import VAE
from vaerepro.runs.folder import load_model


def refined_grid(model: VAE, x: Tensor, points: int = 96, sub: int = 6, keep: float = 15.0):
    """log p(x) of one image x (784,): a points^3 grid over [-6, 6]^3, then each cell within
    `keep` nats of the peak split into sub^3 cells (the rest holds under e^-keep of the mass)."""
    axis = torch.linspace(-6.0, 6.0, points, dtype=torch.float64)
    h = axis[1] - axis[0]
    z = torch.cartesian_prod(axis, axis, axis)
    f = torch.cat([log_joint(model, x[None], part[:, None])[:, 0] for part in z.split(16384)])
    offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
    fine = (z[f > f.max() - keep][:, None] + torch.cartesian_prod(*[offsets] * 3) * h).view(-1, 3)
    f = torch.cat([log_joint(model, x[None], part[:, None])[:, 0] for part in fine.split(16384)])
    return float(torch.logsumexp(f, 0) + 3 * (h / sub).log())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--images", type=int, default=10)
    args = ap.parse_args()
    (cfg, files, samples), *_ = [m for m in finished_models(args.run) if m[0].method == "mcem"]
    model = as_float64(load_model(files))
    x = split_data(cfg, load_mnist(None, "cpu"), LoglikOptions(split=args.split, n=args.images))
    gen = torch.Generator().manual_seed(0)
    zero = hmc_estimate(model, x, generator=gen, z0=x.new_zeros((len(x), 3), dtype=torch.float64))
    prior = hmc_estimate_batched(model, x, gen, encoder=False)
    print(f"{args.run.name}: MCEM N_z=3 seed {cfg.seed} at {samples:.3g} samples, {args.split}")
    print("image  from z=0  prior_start  grid")
    grid = [refined_grid(model, xn.double()) for xn in x]
    for i, g in enumerate(grid):
        print(f"{i:5d}  {zero.value[i]:8.2f}  {prior.value[i]:11.2f}  {g:7.2f}", flush=True)
    mean = [float(zero.value.mean()), float(prior.value.mean()), sum(grid) / len(grid)]
    print(f" mean  {mean[0]:8.2f}  {mean[1]:11.2f}  {mean[2]:7.2f}")


if __name__ == "__main__":
    main()
