"""The paper's Figure 2 curves (MNIST: AEVB and wake-sleep), shipped with the package.

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
    """The MNIST curves of both methods: columns method ("aevb", "wakesleep"), n_z, split,
    samples, log10_samples, elbo, visible.

    `visible` is False where the printed figure hides the curve: below its y axis (-150) at
    the start of training, or past its x axis (2.5e8). Those vertices are in the PDF but not
    on the page, so nothing is compared with them.
    """
    with files("vaerepro.analysis").joinpath("kingma2013_fig2.csv").open() as f:
        df = pd.read_csv(f)
    df = df[df.dataset == "mnist"].sort_values("log10_samples")
    df = df.assign(visible=df.in_axes & df.in_xlim)
    cols = ["method", "n_z", "split", "samples", "log10_samples", "elbo", "visible"]
    return df[cols].reset_index(drop=True)


def _curve(nz: int, split: str, method: str = "aevb") -> pd.DataFrame:
    ref = fig2()
    return ref[(ref.n_z == nz) & (ref.split == split) & (ref.method == method)]


def paper_elbo(nz: int, split: str, samples, method: str = "aevb") -> np.ndarray:
    """The paper's ELBO (nats per datapoint) for N_z and split ("train"/"test") at `samples`,
    interpolated linearly in log10(samples) along the visible curve; NaN where the printed
    curve does not show a value (see `paper_gap`) or for an N_z the paper did not plot."""
    curve = _curve(nz, split, method)
    curve = curve[curve.visible]
    x = np.log10(np.asarray(samples, dtype=float))
    if curve.empty:
        return np.full_like(x, np.nan)
    return np.interp(x, curve.log10_samples, curve.elbo, left=np.nan, right=np.nan)


def paper_gap(nz: int, split: str, samples, method: str = "aevb") -> np.ndarray:
    """Why the paper has no value at each of `samples` ("" where it has one): the curve
    is below the figure's axes there, or has not started, or has ended."""
    curve = _curve(nz, split, method)
    x = np.log10(np.asarray(samples, dtype=float))
    visible = curve[curve.visible].log10_samples
    if visible.empty:
        return np.full(x.shape, f"the paper has no curve for N_z = {nz}", dtype=object)
    first, last = visible.min() - 1e-9, visible.max() + 1e-9
    start = curve.log10_samples.min() - 1e-9
    gap = np.full(x.shape, "", dtype=object)
    gap[x < first] = "paper's curve below its axes (< -150 nats, hidden)"
    gap[x < start] = "before the paper's curve starts"
    gap[x > last] = "past the paper's visible curve"
    return gap
