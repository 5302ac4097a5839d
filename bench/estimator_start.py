"""Where must the paper's HMC estimator start its chains? (Issue 26.) For the first --images
of a split, under the seed-0 model of --method in a run folder, it prints log p(x) (nats per
datapoint): the estimator from z = 0; from `chain_start` without the encoder (the best of 256
prior draws: vaerepro's start for MCEM, which has none); and, for a model with an encoder, from
the encoder's mean alone and from `chain_start` with it (vaerepro's start); then a grid over z
in [-6, 6]^3 refined around its peaks (exact to about 0.1 nats, N_z = 3 only).
In-process, training-free; the grid takes about 20 s per image on one core. Usage:

    PYTHONPATH=. python bench/estimator_start.py RUN_FOLDER --split test --images 10 [--method aevb]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from vaerepro.analysis.loglik import LoglikOptions, finished_models, split_data
from vaerepro.core.data import load_mnist
from vaerepro.core.marginal import as_float64, hmc_estimate, hmc_estimate_batched, log_joint
from vaerepro.core.model import VAE
from vaerepro.runs.folder import load_model


def refined_grid(model: VAE, x: Tensor, points: int = 96, sub: int = 6, keep: float = 15.0):
    """log p(x) of one image x (784,): a points^3 grid over [-6, 6]^3, then each cell within
    `keep` nats of the peak split into sub^3 cells (each cell left out holds under e^-keep of
    the peak cell's mass)."""

    def at(z: Tensor) -> Tensor:  # log p(x, z) at z (M, 3), in chunks of 16384
        return torch.cat(
            [log_joint(model, x[None], part[:, None])[:, 0] for part in z.split(16384)]
        )

    axis = torch.linspace(-6.0, 6.0, points, dtype=torch.float64)
    h = axis[1] - axis[0]
    z = torch.cartesian_prod(axis, axis, axis)
    f = at(z)
    offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
    fine = (z[f > f.max() - keep][:, None] + torch.cartesian_prod(*[offsets] * 3) * h).view(-1, 3)
    return float(torch.logsumexp(at(fine), 0) + 3 * (h / sub).log())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--method", choices=["aevb", "wakesleep", "mcem"], default="mcem")
    args = ap.parse_args()
    models = [m for m in finished_models(args.run) if m[0].method == args.method]
    models = [m for m in models if m[0].seed == 0 and m[0].nz == 3]
    if not models:
        raise SystemExit(f"{args.run} has no finished {args.method} model of N_z 3, seed 0")
    cfg, files, samples = models[0]
    model = as_float64(load_model(files))
    x = split_data(cfg, load_mnist(None, "cpu"), LoglikOptions(split=args.split, n=args.images))
    gen = torch.Generator().manual_seed(0)
    zero = x.new_zeros((len(x), 3), dtype=torch.float64)
    columns = {
        "from z=0": hmc_estimate(model, x, generator=gen, z0=zero).value,
        "prior draws": hmc_estimate_batched(model, x, gen, encoder=False).value,
    }
    if args.method != "mcem":
        columns["encoder mean"] = hmc_estimate(model, x, generator=gen).value
        columns["prior draws+encoder"] = hmc_estimate_batched(model, x, gen).value
    columns["grid"] = torch.tensor([refined_grid(model, xn.double()) for xn in x])
    print(f"{args.run.name}: {args.method} N_z=3 seed 0 at {samples:.3g} samples, {args.split}")
    table = pd.DataFrame({k: v.numpy() for k, v in columns.items()})
    print(table.to_string(float_format="%.2f"))
    print("mean:", "  ".join(f"{k} {v:.2f}" for k, v in table.mean().items()))


if __name__ == "__main__":
    main()
