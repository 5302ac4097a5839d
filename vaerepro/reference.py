"""The paper's Figure 2 curves (MNIST, AEVB), shipped with the package.

`kingma2013_fig2.csv` was digitized from the vector graphics of arXiv:1312.6114v10, Fig. 2
(see the README of ../shared/reference in the project's workspace): values to +-0.1 nats,
every 0.05 decade of training samples. Columns: dataset, n_z, method, split, samples, elbo,
in_axes, in_xlim, log10_samples.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import numpy as np
import pandas as pd

SOURCE = "Kingma & Welling (2013), arXiv:1312.6114v10, Fig. 2, digitized from the PDF vectors"


@cache
def fig2() -> pd.DataFrame:
    """The MNIST AEVB curves: columns n_z, split, samples, log10_samples, elbo."""
    with files("vaerepro").joinpath("kingma2013_fig2.csv").open() as f:
        df = pd.read_csv(f)
    df = df[(df.dataset == "mnist") & (df.method == "aevb")]
    return df[["n_z", "split", "samples", "log10_samples", "elbo"]].reset_index(drop=True)


def paper_elbo(nz: int, split: str, samples) -> np.ndarray:
    """The paper's ELBO (nats per datapoint) for N_z and split ("train"/"test") at `samples`,
    interpolated linearly in log10(samples); NaN outside the digitized curve or for an N_z
    the paper did not plot."""
    curve = fig2()[(fig2().n_z == nz) & (fig2().split == split)].sort_values("log10_samples")
    x = np.log10(np.asarray(samples, dtype=float))
    if curve.empty:
        return np.full_like(x, np.nan)
    return np.interp(x, curve.log10_samples, curve.elbo, left=np.nan, right=np.nan)
