"""Does the paper count Fig. 3's training samples as we do? Ours at x against the paper at
k·x, for each stretch k of the x axis: per model and split, the number of our logged points
inside the paper's curve, and the mean and sd of ours minus the paper (nats per datapoint).

A k whose differences have a small sd matches the curve's shape, whatever the offset (the
mean). For MCEM, each minibatch takes 5 Adagrad steps (appendix E): k = 5 is what counting
500 samples per minibatch would give. Reads only the run's CSVs and the digitized curves; no
training. Usage:

    PYTHONPATH=. python bench/fig3_xscale.py results/fig3-ntrain1000-mcem --k 1 2 3 5
"""

from __future__ import annotations

import argparse

import pandas as pd

from vaerepro.analysis.reference import paper_marginal
from vaerepro.analysis.tables import to_markdown
from vaerepro.runs.records import load_run


def stretch_table(run: str, stretches: list[float]) -> pd.DataFrame:
    """One row per (model, split, k): n points, mean and sd of ours(x) - paper(k x)."""
    rows = []
    for meta, csv in load_run(run):
        cfg = meta["config"]
        for split in ("train", "test"):
            ours = csv.dropna(subset=[f"{split}_marginal"])
            for k in stretches:
                paper = paper_marginal(cfg, split, ours.samples * k, cfg["method"])
                diff = (ours[f"{split}_marginal"] - paper).dropna()
                rows.append(
                    {
                        "method": cfg["method"],
                        "n_train": cfg["train_size"],
                        "seed": cfg["seed"],
                        "split": split,
                        "k": k,
                        "points": len(diff),
                        "mean": diff.mean(),
                        "sd": diff.std(),
                        "last_samples": ours.samples.max(),
                    }
                )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder with the marginal likelihood logged")
    parser.add_argument("--k", type=float, nargs="+", default=[1, 2, 3, 5])
    args = parser.parse_args()
    print(to_markdown(stretch_table(args.run, args.k).round(2)), end="")


if __name__ == "__main__":
    main()
