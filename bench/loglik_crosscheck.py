"""The three log p(x) estimates of core/marginal.py side by side on a trained N_z = 3 model:
importance sampling (k = 5000, what `vaerepro loglik` reports), the paper's HMC estimator
(Appendix D: 50 samples, 4 leapfrog steps; and with 400 samples), and the sum over a grid of
z (exact to its resolution; checked by a coarser and a wider grid). Also each one's time.

    PYTHONPATH=. python bench/loglik_crosscheck.py RUN [--method aevb] --nz 3 --seed 0 --n 5

Prints one row per test image and the mean differences from the grid, nats per datapoint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vaerepro.analysis.loglik import LoglikOptions, finished_models, split_data
from vaerepro.core.data import load_mnist
from vaerepro.core.marginal import grid_log_likelihood, hmc_estimate, importance_sampled
from vaerepro.runs.folder import load_model


def timed(f):
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--method", choices=["aevb", "wakesleep"], default="aevb")
    p.add_argument("--nz", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=5, help="test images (the grid takes the time)")
    p.add_argument("--points", type=int, default=121, help="grid points per dimension")
    args = p.parse_args()
    wanted = (args.method, args.nz, args.seed)
    models = [m for m in finished_models(args.run) if (m[0].method, m[0].nz, m[0].seed) == wanted]
    if not models:
        raise SystemExit(
            f"{args.run} has no finished {args.method} model of N_z {args.nz}, seed {args.seed}"
        )
    cfg, files, _ = models[0]
    model = load_model(files)
    x = split_data(cfg, load_mnist(None, "cpu"), LoglikOptions(split="test", n=args.n))
    mu, logvar = model.encode(x)
    mu, sd = mu.detach(), (0.5 * logvar).exp().detach()
    grids = {}
    for label, sds, points in (
        ("grid", 16, args.points),
        ("coarser grid", 16, (args.points * 2) // 3),
        ("wider grid", 24, args.points),
    ):
        grids[label] = timed(lambda s=sds, k=points: grid_log_likelihood(model, x, mu, s * sd, k))
    gen = torch.Generator().manual_seed(0)
    estimates = {
        "IS k=5000": timed(lambda: importance_sampled(model, x, 5000, gen)),
        "HMC 50 samples": timed(lambda: hmc_estimate(model, x, generator=gen)),
        "HMC 400 samples": timed(lambda: hmc_estimate(model, x, 400, 4, 50, gen)),
    }
    exact = grids["grid"][0]
    print(f"{args.run} {args.method} N_z={args.nz} seed {args.seed}, first {args.n} test images")
    print("image  grid      " + "  ".join(f"{k:>22s}" for k in estimates))
    for i in range(args.n):
        cells = "  ".join(
            f"{est.value[i]:9.3f} +- {est.stderr[i]:6.3f}   " for est, _ in estimates.values()
        )
        print(f"{i:5d}  {exact[i]:9.3f}  {cells}")
    for label, (value, secs) in grids.items():
        diff = (value - exact).abs().max()
        print(f"{label}: {secs:.1f} s, largest |difference from the grid| {diff:.4f}")
    for label, (est, secs) in estimates.items():
        diff = est.value - exact
        print(
            f"{label}: {secs / args.n * 1000:.0f} s per 1000 images, mean difference from the "
            f"grid {diff.mean():+.3f} (largest |.| {diff.abs().max():.3f}), mean standard error "
            f"{est.stderr.mean():.3f}"
        )


if __name__ == "__main__":
    main()
