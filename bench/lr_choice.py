"""What --lr-select picks, and how the choice depends on its sample count (issue 28): per N_z
and seed, each candidate learning rate trains once from the paper preset's start, and its
train and test ELBO are taken after each sample count of --at, exactly the value --lr-select
with --lr-select-samples at that count would compare (runs/lrselect.py: first_elbos).

    cd bench && PYTHONPATH=.. python lr_choice.py --nz 3 20 200 --seeds 0 1 2 --out FILE.csv

Writes one row per (nz, seed, lr, samples) to --out (train_elbo, test_elbo in nats per
datapoint; empty once diverged) and prints the choice per (nz, seed, samples). One thread per
process: run one process per core for speed. Data: $VAEREPRO_DATA.
"""

import argparse
from pathlib import Path

import pandas as pd
import torch

from vaerepro.core.config import preset
from vaerepro.core.data import load_mnist
from vaerepro.core.numbers import parse_count
from vaerepro.runs.lrselect import first_elbos
from vaerepro.runs.writes import write_csv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nz", type=int, nargs="+", default=[3, 20, 200])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=float, nargs="+", default=[0.01, 0.02, 0.1])
    p.add_argument("--at", type=parse_count, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_mnist(None, "cpu")
    rows = []
    for nz in args.nz:
        for seed in args.seeds:
            for lr in args.lr:
                cfg = preset("paper").replace(nz=nz, seed=seed, lr=lr)
                values = first_elbos(cfg, data, torch.device("cpu"), sorted(args.at))
                for samples, value in zip(sorted(args.at), values, strict=True):
                    rows.append({"nz": nz, "seed": seed, "lr": lr, "samples": samples, **value})
            done = pd.DataFrame(rows)
            write_csv(done, args.out)
            mine = done[(done.nz == nz) & (done.seed == seed)].dropna(subset=["train_elbo"])
            best = mine.loc[mine.groupby("samples").train_elbo.idxmax()]
            print(
                f"N_z={nz} seed {seed}: chosen "
                + ", ".join(f"{r.lr} at {r.samples:.0e}" for r in best.itertuples()),
                flush=True,
            )


if __name__ == "__main__":
    main()
