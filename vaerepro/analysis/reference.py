"""The paper's Figure 2 and Figure 3 curves (MNIST), shipped with the package.

`kingma2013_fig2.csv` and `kingma2013_fig3.csv` were digitized from the vector graphics of
arXiv:1312.6114v10 (see the README of ../shared/reference in the project's workspace): values
to +-0.1 nats. Fig. 2 (AEVB and wake-sleep, the ELBO): every 0.05 decade of training samples;
columns dataset, n_z, method, split, samples, elbo, in_axes, in_xlim, log10_samples. Fig. 3
(AEVB, wake-sleep and MCEM, the marginal likelihood, N_z = 3): every 0.5e6 samples; columns
dataset, n_train, method, split, samples, loglik, in_axes, in_xlim, samples_millions.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import numpy as np
import pandas as pd

SOURCE = "Kingma & Welling (2013), arXiv:1312.6114v10, Fig. 2, digitized from the PDF vectors"
SOURCE_FIG3 = SOURCE.replace("Fig. 2", "Fig. 3")
FIG3_NZ, FIG3_HIDDEN = 3, 100  # the models of Fig. 3; other models have no paper curve


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


@cache
def fig3() -> pd.DataFrame:
    """The marginal likelihood curves: columns n_train (1000, 50000), method ("aevb",
    "wakesleep", "mcem"), split, samples, loglik (nats per datapoint), visible (inside the
    printed axes: the N_train = 50000 AEVB curve runs on past them, to 1.16e8)."""
    with files("vaerepro.analysis").joinpath("kingma2013_fig3.csv").open() as f:
        df = pd.read_csv(f)
    df = df.assign(visible=df.in_axes & df.in_xlim).sort_values("samples")
    cols = ["n_train", "method", "split", "samples", "loglik", "visible"]
    return df[cols].reset_index(drop=True)


def _fig3_curve(n_train: int, split: str, method: str) -> pd.DataFrame:
    ref = fig3()
    ref = ref[(ref.n_train == n_train) & (ref.split == split) & (ref.method == method)]
    return ref[ref.visible]


def paper_marginal(cfg: dict, split: str, samples, method: str) -> np.ndarray:
    """The paper's marginal likelihood (nats per datapoint) of a model of config `cfg` (its
    JSON form) at `samples`, linear in samples along the visible curve, as Fig. 3's axes are;
    NaN outside the curve, or for a model other than Fig. 3's (N_z 3, 100 hidden units,
    N_train 1000 or 50000)."""
    x = np.asarray(samples, dtype=float)
    if (cfg["nz"], cfg["hidden"]) != (FIG3_NZ, FIG3_HIDDEN):
        return np.full_like(x, np.nan)
    curve = _fig3_curve(cfg["train_size"], split, method)
    if curve.empty:
        return np.full_like(x, np.nan)
    return np.interp(x, curve.samples, curve.loglik, left=np.nan, right=np.nan)


def paper_marginal_gap(cfg: dict, split: str, samples, method: str) -> np.ndarray:
    """Why the paper has no marginal likelihood at each of `samples` ("" where it has one)."""
    x = np.asarray(samples, dtype=float)
    gap = np.full(x.shape, "", dtype=object)
    if (cfg["nz"], cfg["hidden"]) != (FIG3_NZ, FIG3_HIDDEN):
        gap[:] = "Fig. 3 has only N_z = 3 with 100 hidden units"
        return gap
    curve = _fig3_curve(cfg["train_size"], split, method)
    if curve.empty:
        gap[:] = f"Fig. 3 has no curve for N_train = {cfg['train_size']}"
        return gap
    gap[x < curve.samples.min()] = "before the paper's curve starts"
    gap[x > curve.samples.max()] = "past the paper's curve"
    return gap
