"""Figures of a finished run: Fig. 2 with the paper overlaid, ELBO terms, and per-model
diagnostics from the final weights (reconstructions, samples, interpolations, latent space,
KL per dimension). Everything lands in RUN_DIR/figures/, each file written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vaerepro.analysis.compare import compare_runs, seed_bands, seed_values  # noqa: E402
from vaerepro.analysis.reference import FIG3_NZ  # noqa: E402
from vaerepro.analysis.reference import fig2 as paper_fig2  # noqa: E402
from vaerepro.analysis.reference import fig3 as paper_fig3  # noqa: E402
from vaerepro.core.evaluate import ACTIVE_UNIT_NATS, active_units, kl_per_dimension  # noqa: E402
from vaerepro.core.model import VAE  # noqa: E402
from vaerepro.runs.writes import atomic_write_bytes  # noqa: E402

PAPER_COLOUR = "0.65"  # grey for the paper's curves
OURS_COLOUR = "tab:red"  # the paper draws AEVB in red
WAKESLEEP_COLOUR = "tab:green"  # and wake-sleep in green
MCEM_COLOUR = "tab:blue"  # and MCEM (Fig. 3) in blue
# every paper curve grey, its method told by its marker (hollow, every 8% of the axis)
PAPER_MARKERS = {"aevb": None, "wakesleep": "o", "mcem": "^"}
OUR_COLOURS = {"aevb": OURS_COLOUR, "wakesleep": WAKESLEEP_COLOUR, "mcem": MCEM_COLOUR}
NAMES = {"aevb": "AEVB", "wakesleep": "wake-sleep", "mcem": "MCEM"}
FIG3_AXES = {1000: ((0, 60e6), (-160, -100)), 50000: ((0, 68e6), (-160, -125))}  # the paper's
PAPER_XLIM = (1e5, 10**8.39794)  # the paper's MNIST panels
PAPER_YLIM = (-150, -95)
PANEL_WIDTH = 2.9  # inches per N_z panel (fig2 and components)
LEGEND_WIDTH = 2.3  # inches beside fig2's panels for its legend (its longest label: 2.1)


def _save_figure(fig, path: Path, **kw) -> None:
    """savefig into memory, then an atomic write: a kill never leaves a truncated figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix[1:], **kw)
    atomic_write_bytes(path, buf.getvalue())


def _save_grid(images: torch.Tensor, path: Path, **kw) -> None:
    """torchvision's image grid, written atomically."""
    from torchvision.utils import save_image  # 1.3 s to import: only for per-model figures

    buf = io.BytesIO()
    save_image(images, buf, format="png", **kw)
    atomic_write_bytes(path, buf.getvalue())


def fig2_limits(runs: list[tuple[dict, pd.DataFrame]]) -> tuple[tuple, tuple, bool]:
    """(xlim, ylim, widened): the paper's axes when every logged value of ours fits in them,
    else axes widened to show all of ours."""
    samples = pd.concat([df.samples for _, df in runs])
    elbo = pd.concat([df[f"{s}_elbo"] for _, df in runs for s in ("train", "test")])
    (x0, x1), (y0, y1) = PAPER_XLIM, PAPER_YLIM
    xlim = (min(x0, samples.min() / 1.25) if samples.min() < x0 else x0, max(x1, samples.max()))
    ylim = (10 * np.floor(elbo.min() / 10 - 0.1) if elbo.min() < y0 else y0, max(y1, elbo.max()))
    return xlim, ylim, (xlim, ylim) != (PAPER_XLIM, PAPER_YLIM)


def _draw_ours(
    ax, bands: pd.DataFrame, split: str, style: str, method: str = "aevb", named: bool = False
) -> None:
    """Our curve of one split in one panel: the mean over seeds, and with two or more seeds
    a shaded band from their min to their max. `bands` is one method's and N_z's
    `seed_bands`; each method has its colour (AEVB red), and its name in the label unless it
    is AEVB and not `named` (Fig. 2, where AEVB is the default)."""
    rows = bands[bands.split == split]
    seeds = int(rows.seeds.max())
    rows = rows[rows.seeds == seeds]  # a sweep in progress: only where every seed has a value
    ours = "ours" if method == "aevb" and not named else f"ours {NAMES[method]}"
    label = f"{ours} ({split})" if seeds == 1 else f"{ours}, mean of {seeds} seeds ({split})"
    colour = OUR_COLOURS[method]
    ax.plot(rows.samples, rows["mean"], style, color=colour, lw=1.8, label=label)
    if seeds > 1:
        ax.fill_between(
            rows.samples,
            rows["min"],
            rows["max"],
            color=colour,
            alpha=0.25 if split == "train" else 0.12,
            lw=0,
            label=f"{ours}, min to max over seeds ({split})",
        )


def fig2_figure(runs: list[tuple[dict, pd.DataFrame]]) -> Figure:
    """Fig. 2 redrawn: one panel per N_z, ELBO against log-scaled training samples, on the
    paper's axes unless ours leave them (then widened, and the title says so). Ours: the mean
    over seeds, with the min-to-max band when there are several. The paper's curves are drawn
    where the printed figure shows them. Each panel keeps its width whatever the number of
    N_z; the legend gets room of its own beside them."""
    bands = seed_bands(seed_values(runs))
    xlim, ylim, widened = fig2_limits(runs)
    nzs = sorted(bands.nz.unique())
    methods = list(dict.fromkeys(bands.method))
    size = (PANEL_WIDTH * len(nzs) + LEGEND_WIDTH, 3.2)
    fig, axes = plt.subplots(1, len(nzs), figsize=size, sharey=True, squeeze=False)
    axes = axes[0]
    for ax, nz in zip(axes, nzs, strict=True):
        for method in methods:
            _draw_fig2_curves(ax, nz, method, bands[(bands.nz == nz) & (bands.method == method)])
        _fig2_axes(ax, nz, xlim, ylim, widened)
    axes[0].set_ylabel(r"$\mathcal{L}$ (nats per datapoint)")
    _legend_beside(axes, _coverage_lines(runs))
    if widened:
        fig.suptitle(
            "axes widened to show our curves (the paper's: y from -150, dotted; x from 1e5)",
            fontsize=8,
        )
    fig.tight_layout()
    return fig


def plot_fig2(runs: list[tuple[dict, pd.DataFrame]], out: Path) -> None:
    """`fig2_figure` into out/fig2.png and out/fig2.pdf."""
    _save_png_and_pdf(fig2_figure(runs), out / "fig2")


def _save_png_and_pdf(fig: Figure, stem: Path) -> None:
    """The figure as stem.png (150 dpi) and stem.pdf, then closed."""
    _save_figure(fig, stem.with_suffix(".png"), dpi=150, bbox_inches="tight")
    _save_figure(fig, stem.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)


def fig3_figure(runs: list[tuple[dict, pd.DataFrame]]) -> Figure:
    """Fig. 3 redrawn: one panel per N_train (the models' train_size) and N_z, the marginal
    likelihood against training samples on a linear axis, the paper's curves grey with a
    marker per method (train solid, test dashed; N_z = 3 only), ours coloured by method (mean
    over seeds, min-to-max band with several). The paper's axes, widened where ours leave them."""
    values = pd.concat(
        [seed_values([r], "marginal").assign(n_train=r[0]["config"]["train_size"]) for r in runs]
    )
    panels = sorted(set(zip(values.n_train, values.nz, strict=True)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 3.4), squeeze=False)
    for ax, (n_train, nz) in zip(axes[0], panels, strict=True):
        ours = values[(values.n_train == n_train) & (values.nz == nz)]
        ref = paper_fig3()
        ref = ref[ref.visible & (ref.n_train == n_train) & (nz == FIG3_NZ)]
        for method in [m for m in NAMES if m in set(ours.method) | set(ref.method)]:
            bands = seed_bands(ours[ours.method == method])
            for split, style in (("train", "-"), ("test", "--")):
                curve = ref[(ref.method == method) & (ref.split == split)]
                label = f"paper {NAMES[method]} ({split})"
                ax.plot(curve.samples, curve.loglik, style, label=label, **_paper_style(method))
                if len(bands):
                    _draw_ours(ax, bands, split, style, method, named=True)
        (x0, x1), (y0, y1) = FIG3_AXES.get(n_train, ((0, ours.samples.max()), (-160, -100)))
        low = min(y0, 10 * np.floor(ours.value.min() / 10))
        ax.set(xlim=(x0, max(x1, ours.samples.max())), ylim=(low, max(y1, ours.value.max() + 1)))
        ax.set(
            title=f"MNIST, $N_z = {nz}$, $N_{{train}} = {n_train}$",
            xlabel="# Training samples evaluated",
        )
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M")
        ax.grid(alpha=0.3, lw=0.5)
    axes[0][0].set_ylabel("Marginal log-likelihood (nats)")
    _legend_beside(axes[0])
    fig.tight_layout()
    return fig


def _paper_style(method: str) -> dict:
    """How the paper's curve of `method` is drawn: grey, with the method's marker."""
    marker = PAPER_MARKERS[method]
    if marker is None:
        return {"color": PAPER_COLOUR}
    return dict(color=PAPER_COLOUR, marker=marker, markevery=0.08, ms=3.5, mfc="white")


def plot_fig3(runs: list[tuple[dict, pd.DataFrame]], out: Path) -> None:
    """`fig3_figure` into out/fig3.png and out/fig3.pdf."""
    _save_png_and_pdf(fig3_figure(runs), out / "fig3")


def _draw_fig2_curves(ax, nz: int, method: str, ours: pd.DataFrame) -> None:
    """The paper's curves of one method and N_z (train solid, test dashed) where its printed
    figure shows them, and ours (`ours`: that method's and N_z's seed bands; may be empty)."""
    ref = paper_fig2()
    ref = ref[ref.visible & (ref.n_z == nz) & (ref.method == method)]
    for split, style in (("train", "-"), ("test", "--")):
        curve = ref[ref.split == split]
        label = f"paper {NAMES[method]} ({split})"
        ax.plot(curve.samples, curve.elbo, style, lw=1.5, label=label, **_paper_style(method))
        if len(ours):
            _draw_ours(ax, ours, split, style, method)


def _fig2_axes(ax, nz: int, xlim: tuple, ylim: tuple, widened: bool) -> None:
    """One panel's axes: log samples, the limits, a grid, and the paper's bottom edge (dotted)
    when ours widened the axes."""
    ax.set(
        xscale="log",
        xlim=xlim,
        ylim=ylim,
        title=f"MNIST, $N_z = {nz}$",
        xlabel="# Training samples evaluated",
    )
    ax.grid(alpha=0.3, which="both", lw=0.5)
    if widened:  # the paper's axes, for orientation
        ax.axhline(PAPER_YLIM[0], color=PAPER_COLOUR, lw=0.8, ls=":")


def _coverage_lines(runs: list[tuple[dict, pd.DataFrame]]) -> list[str]:
    """Per method and N_z with two or more seeds: at how many of the logged points the paper
    has a value it lies in the 95% prediction interval for one more seed, train and test."""
    summary = compare_runs(runs)[1]
    lines = []
    for (method, nz), rows in summary[summary.banded > 0].groupby(["method", "nz"], sort=False):
        rows = rows.set_index("split")
        parts = [
            f"{split} {round(rows.in_pi[split] * rows.banded[split])}/{rows.banded[split]}"
            for split in ("train", "test")
            if split in rows.index
        ]
        name = "" if method == "aevb" else f"{NAMES[method]} "
        lines.append(f"{name}$N_z$={nz}: {', '.join(parts)} points")
    return lines


def _legend_beside(axes, notes: list[str] = ()) -> None:
    """Every panel's labels (a method may lack some N_z), once each, beside the last panel: a
    panel's curves may fill any of its corners. `notes`: lines of text under the labels."""
    labelled = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    if notes:
        labelled["paper in the 95% prediction interval\nfor one more seed at:"] = plt.Line2D(
            [], [], lw=0
        )
    for note in notes:
        labelled[note] = plt.Line2D([], [], lw=0)
    axes[-1].legend(
        labelled.values(), labelled.keys(), loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=6
    )


def plot_components(runs: list[tuple[dict, pd.DataFrame]], out: Path) -> None:
    """The ELBO's two terms, E_q[log p(x|z)] and KL(q||p), against samples per N_z (mean over
    seeds, with the min-to-max band when there are several)."""
    terms = {term: seed_bands(seed_values(runs, term)) for term in ("loglik", "kl")}
    nzs = sorted(terms["kl"].nz.unique())
    methods = list(dict.fromkeys(terms["kl"].method))
    size = (PANEL_WIDTH * len(nzs), 5.6)
    fig, axes = plt.subplots(2, len(nzs), figsize=size, squeeze=False, sharex=True)
    for col, nz in enumerate(nzs):
        for row, bands in enumerate(terms.values()):
            ax = axes[row, col]
            for method in methods:
                ours = bands[(bands.nz == nz) & (bands.method == method)]
                for split, style in (("train", "-"), ("test", "--")):
                    if len(ours):
                        _draw_ours(ax, ours, split, style, method)
            ax.set(xscale="log")
            ax.grid(alpha=0.3, which="both", lw=0.5)
        axes[0, col].set_title(f"$N_z = {nz}$")
        axes[1, col].set_xlabel("# Training samples evaluated")
    axes[0, 0].set_ylabel("E_q[log p(x|z)] (nats)")
    axes[1, 0].set_ylabel("KL(q(z|x) || p(z)) (nats)")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    _save_figure(fig, out / "components.png", dpi=150)
    plt.close(fig)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """(N, 784) -> (N, 1, 28, 28) for torchvision's grids."""
    return x.reshape(-1, 1, 28, 28).clamp(0, 1)


@torch.inference_mode()
def plot_model(
    model: VAE, nz: int, test_x: torch.Tensor, test_y: torch.Tensor, out: Path, seed: int = 0
) -> dict:
    """Per-model figures from the final weights into `out` (reconstructions, samples,
    interpolations, the test set in latent space, KL per dimension); returns
    {"active_units", "kl_per_dim"}. `seed` draws the samples and the interpolated pairs."""
    test_x = test_x.to(next(model.parameters()).dtype)  # a model trained with --dtype float64
    gen = torch.Generator().manual_seed(seed)
    _plot_reconstructions(model, test_x[:32], out / f"recon_nz{nz}.png")
    z = torch.randn(64, nz, generator=gen)
    _save_grid(_as_images(model.mean_image(z)), out / f"samples_nz{nz}.png", nrow=8, pad_value=1.0)
    _plot_interpolations(model, test_x, gen, out / f"interpolation_nz{nz}.png")
    _plot_latent(model, nz, test_x, test_y, out / f"latent_nz{nz}.png")
    kl = kl_per_dimension(model, test_x)
    n_active = active_units(kl)
    _plot_kl_per_dimension(kl, n_active, out / f"kl_per_dim_nz{nz}.png")
    return {"active_units": n_active, "kl_per_dim": kl.tolist()}


def plot_recorded_kl(kl_per_dim: list[float], nz: int, out: Path) -> dict:
    """The KL-per-dimension figure from the values a model's JSON records (its weights
    absent); returns {"active_units", "kl_per_dim"} as `plot_model` does."""
    kl = torch.tensor(kl_per_dim, dtype=torch.float64)
    n_active = active_units(kl)
    _plot_kl_per_dimension(kl, n_active, out / f"kl_per_dim_nz{nz}.png")
    return {"active_units": n_active, "kl_per_dim": kl_per_dim}


def _plot_reconstructions(model: VAE, x: torch.Tensor, path: Path) -> None:
    """32 test images, each row of 16 above its reconstructions (the decoder's mean at the
    posterior mean)."""
    mu, _ = model.encode(x)
    images = torch.cat([x[:16], model.mean_image(mu[:16]), x[16:], model.mean_image(mu[16:])])
    _save_grid(_as_images(images), path, nrow=16, padding=2, pad_value=1.0)


def _plot_interpolations(model: VAE, test_x: torch.Tensor, gen: torch.Generator, path) -> None:
    """8 random pairs of test images, 10 steps each on the straight line between their
    posterior means."""
    pairs = torch.randint(len(test_x), (8, 2), generator=gen)
    mu_pairs, _ = model.encode(test_x[pairs.flatten()])
    a, b = mu_pairs[0::2], mu_pairs[1::2]  # (8, N_z) each
    t = torch.linspace(0, 1, 10).reshape(1, 10, 1)
    line = a[:, None] + t * (b - a)[:, None]  # (8, 10, N_z)
    _save_grid(_as_images(model.mean_image(line).reshape(-1, 784)), path, nrow=10, pad_value=1.0)


def _plot_latent(model: VAE, nz: int, test_x: torch.Tensor, test_y: torch.Tensor, path) -> None:
    """The test set's posterior means coloured by digit: the first two dimensions for
    N_z <= 3, else the first two principal components."""
    mu, _ = model.encode(test_x)
    if nz <= 3:
        coords, labels = mu[:, :2], ("$z_1$ (posterior mean)", "$z_2$ (posterior mean)")
    else:
        centred = mu - mu.mean(0)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False)
        coords, labels = centred @ v, ("PC 1 of posterior means", "PC 2")
    if nz == 1:
        coords = torch.cat([coords, torch.zeros_like(coords)], 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=test_y, cmap="tab10", s=2, alpha=0.6)
    fig.colorbar(sc, ax=ax, ticks=range(10), boundaries=np.arange(-0.5, 10), label="digit")
    ax.set(xlabel=labels[0], ylabel=labels[1], title=f"Test set in latent space, $N_z = {nz}$")
    fig.tight_layout()
    _save_figure(fig, path, dpi=150)
    plt.close(fig)


def _plot_kl_per_dimension(kl: torch.Tensor, n_active: int, path: Path) -> None:
    """The average KL of each latent dimension over the test set, sorted, against the
    active-unit threshold."""
    nz = len(kl)
    sorted_kl = kl.sort(descending=True).values.numpy()
    fig, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.25 * nz + 2)), 3.4))
    ax.bar(np.arange(1, nz + 1), sorted_kl, color=OURS_COLOUR, width=0.8)
    ax.axhline(ACTIVE_UNIT_NATS, color="k", ls=":", lw=1, label=f"{ACTIVE_UNIT_NATS} nats")
    ax.set(
        yscale="log",
        xlabel="latent dimension (sorted)",
        ylabel="average KL (nats)",
        title=f"$N_z = {nz}$: {n_active} of {nz} units active",
    )
    ax.set_ylim(bottom=max(1e-5, min(sorted_kl.min(), ACTIVE_UNIT_NATS) / 2))
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path, dpi=150)
    plt.close(fig)
