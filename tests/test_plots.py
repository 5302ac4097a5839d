import shutil
from pathlib import Path

import matplotlib.axes
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import copy_run, refused, synthetic_sweep
from matplotlib.figure import Figure

from vaerepro.analysis import plots
from vaerepro.analysis.plots import PAPER_XLIM, PAPER_YLIM, fig2_limits, plot_fig2
from vaerepro.analysis.reference import fig2
from vaerepro.analysis.report import make_figures
from vaerepro.cli import main
from vaerepro.core.errors import RunFolderError
from vaerepro.core.evaluate import active_units, kl_per_dimension
from vaerepro.core.model import VAE
from vaerepro.runs.records import load_run

PER_MODEL = ("recon", "samples", "interpolation", "latent", "kl_per_dim")
NZS = (3, 5)  # conftest.tiny_sweep: 2000 samples, evaluations at 1000 and 2000


@pytest.fixture
def tiny_run(tiny_sweep, tmp_path) -> Path:
    """A copy of the session's tiny sweep (N_z 3 and 5) as the models' training left it: its
    CSVs, JSONs, checkpoints and weights, without what `vaerepro plot` writes (figures/,
    REPORT.md, comparison.*) and without run.json (a folder of models trained one by one)."""
    run = copy_run(tiny_sweep.folder, tmp_path)
    shutil.rmtree(run / "figures")
    for name in ("REPORT.md", "comparison.md", "comparison.csv", "run.json"):
        (run / name).unlink()
    return run


def test_plot_writes_every_file(tiny_run, data_root):
    run = tiny_run
    assert main(["plot", str(run), "--data-root", str(data_root)]) == 0
    figures = run / "figures"
    expected = {"fig2.png", "fig2.pdf", "components.png"}
    expected |= {f"{kind}_nz{nz}.png" for kind in PER_MODEL for nz in NZS}
    assert expected <= {p.name for p in figures.iterdir()}
    assert all((figures / name).stat().st_size > 1000 for name in expected)
    report = (run / "REPORT.md").read_text()
    assert "figures/fig2.png" in report and "| 5 | 1 | 2e3 |" in report  # N_z, seeds, samples
    assert "active units" in report and "train samples/s" in report and '"lr": 0.02' in report
    assert (run / "comparison.md").exists() and (run / "comparison.csv").exists()


def test_active_units_on_a_posterior_that_ignores_dimensions():
    torch.manual_seed(0)
    model = VAE(nz=6, hidden=16)
    with torch.no_grad():
        model.enc_out.weight.zero_()
        model.enc_out.bias.zero_()  # every dim: mu = 0, logvar = 0, KL = 0
        model.enc_out.weight[:3].normal_(std=1.0)  # dims 0-2: mu depends on x, KL > 0
    x = torch.rand(500, 784)
    kl = kl_per_dimension(model, x, batch_size=128)
    assert kl.shape == (6,) and (kl[3:] == 0).all() and (kl[:3] > 0.01).all()
    assert active_units(kl) == 3


def test_missing_csv_is_named(tiny_run, capsys):
    run = tiny_run
    (run / "nz5-seed0.csv").unlink()
    assert main(["plot", str(run)]) == 2
    assert "nz5-seed0.csv is missing" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "samples,train_elbo\n1,2\n", 'a,b\n"x\n'])
def test_malformed_csv_is_named(tiny_run, content):
    (tiny_run / "nz3-seed0.csv").write_text(content)
    with pytest.raises(RunFolderError, match="nz3-seed0.csv"):
        make_figures(tiny_run)


def test_plot_without_weights_uses_the_csvs_alone(tiny_run, capsys, monkeypatch):
    run = tiny_run
    for pt in run.glob("*.pt"):
        pt.unlink()

    def no_data(*args, **kw):
        raise AssertionError("MNIST is not needed without weights")

    monkeypatch.setattr("vaerepro.analysis.report.load_mnist", no_data)
    assert main(["plot", str(run)]) == 0
    err = capsys.readouterr().err
    assert "per-model figures skipped for N_z=3,5: no final weights" in err
    names = {p.name for p in (run / "figures").iterdir()}
    # KL per dimension: from the values the JSONs record (issue 24, item 15)
    kl_figures = {"kl_per_dim_nz3.png", "kl_per_dim_nz5.png"}
    assert names == {"fig2.png", "fig2.pdf", "components.png", *kl_figures}
    assert (run / "comparison.md").exists() and (run / "comparison.csv").exists()
    assert "| 5 | 1 | 2e3 |" in (run / "REPORT.md").read_text()


def test_plot_with_some_weights_draws_those_models(tiny_run, data_root, capsys):
    run = tiny_run
    (run / "nz3-seed0.pt").unlink()
    assert main(["plot", str(run), "--data-root", str(data_root)]) == 0
    assert "skipped for N_z=3:" in capsys.readouterr().err
    names = {p.name for p in (run / "figures").iterdir()}
    assert "recon_nz5.png" in names and "recon_nz3.png" not in names
    assert "| 3 | 1 | 2e3 |" in (run / "REPORT.md").read_text()


def _run_with(samples, elbo):
    df = pd.DataFrame({"samples": samples, "train_elbo": elbo, "test_elbo": elbo})
    return [({"config": {"nz": 3}}, df)]


def test_fig2_keeps_the_paper_axes_unless_ours_leave_them():
    inside = _run_with([1e5, 1e6, 1e7], [-149.0, -120.0, -100.0])
    assert fig2_limits(inside) == (PAPER_XLIM, PAPER_YLIM, False)
    (x0, _), (y0, y1), widened = fig2_limits(_run_with([5e4, 3e5], [-190.0, -169.0]))
    assert widened and y0 <= -190 and y1 == PAPER_YLIM[1] and x0 < 5e4


def test_a_short_run_draws_its_curves(tiny_sweep, tmp_path, monkeypatch):
    """2e3 samples, ELBO far below -150: one panel per N_z on axes widened to hold every
    point of ours, our train and test curves are the CSVs' values, the paper's are its
    digitized curves where the printed figure shows them, and the legend names each once."""
    runs = load_run(tiny_sweep.folder)
    drawn, save = [], plots._save_figure
    monkeypatch.setattr(
        plots, "_save_figure", lambda fig, *a, **kw: drawn.append(fig) or save(fig, *a, **kw)
    )
    out = tmp_path / "figures"
    out.mkdir()
    plot_fig2(runs, out)
    assert (out / "fig2.png").stat().st_size > 1000 and (out / "fig2.pdf").stat().st_size > 1000
    fig = drawn[0]
    assert all(f is fig for f in drawn)  # fig2.png and fig2.pdf
    (x0, x1), (y0, y1), widened = fig2_limits(runs)
    assert widened and "axes widened" in fig.get_suptitle()
    paper = fig2()
    paper = paper[paper.visible & (paper.method == "aevb")]
    assert [ax.get_title() for ax in fig.axes] == [f"MNIST, $N_z = {nz}$" for nz in NZS]
    for ax, (meta, df) in zip(fig.axes, runs, strict=True):
        nz = meta["config"]["nz"]
        assert ax.get_xscale() == "log"
        assert ax.get_xlim() == pytest.approx((x0, x1)) and ax.get_ylim() == pytest.approx((y0, y1))
        assert df.samples.between(x0, x1).all()
        assert df.train_elbo.between(y0, y1).all() and df.test_elbo.between(y0, y1).all()
        lines = {line.get_label(): line for line in ax.get_lines()}
        labelled = sorted(label for label in lines if not label.startswith("_"))
        assert labelled == [
            "ours (test)",
            "ours (train)",
            "paper AEVB (test)",
            "paper AEVB (train)",
        ]
        for split, style in (("train", "-"), ("test", "--")):
            ours = lines[f"ours ({split})"]
            np.testing.assert_array_equal(ours.get_xdata(), df.samples)
            np.testing.assert_array_equal(ours.get_ydata(), df[f"{split}_elbo"])
            assert ours.get_linestyle() == style and ours.get_color() == plots.OURS_COLOUR
            theirs = lines[f"paper AEVB ({split})"]
            curve = paper[(paper.n_z == nz) & (paper.split == split)]
            assert len(curve) and theirs.get_linestyle() == style
            np.testing.assert_array_equal(theirs.get_xdata(), curve.samples)
            np.testing.assert_array_equal(theirs.get_ydata(), curve.elbo)
            assert (curve.elbo >= PAPER_YLIM[0]).all()  # the part the printed figure shows
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert legend == ["paper AEVB (train)", "ours (train)", "paper AEVB (test)", "ours (test)"]


def test_a_kill_while_plotting_keeps_the_previous_figure(tiny_run, monkeypatch):
    run = tiny_run
    for pt in run.glob("*.pt"):
        pt.unlink()
    make_figures(run)
    before = (run / "figures" / "fig2.png").read_bytes()

    def killed(self, fname, *args, **kw):
        (open(fname, "wb") if isinstance(fname, (str, Path)) else fname).write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        make_figures(run)
    assert (run / "figures" / "fig2.png").read_bytes() == before
    assert not list((run / "figures").glob(".*"))  # no temporary file left behind


def test_fig2_of_two_folders_draws_both_methods(tmp_path, monkeypatch, capsys):
    """`vaerepro fig2`: an AEVB sweep and a wake-sleep sweep in one figure, each with its
    band; a model found in two folders is refused before anything is drawn."""
    aevb = synthetic_sweep(tmp_path / "aevb", 20, [1.0, -1.0], [2e6, 1e7])
    aevb200 = synthetic_sweep(tmp_path / "aevb200", 200, [0.0], [2e6, 1e7])
    wakesleep = synthetic_sweep(tmp_path / "ws", 20, [0.5, -0.5, 1.5], [2e6, 1e7], "wakesleep")
    labels, legend = [], []
    fill_between, make_legend = matplotlib.axes.Axes.fill_between, matplotlib.axes.Axes.legend

    def record(self, x, y1, y2=0, **kw):
        labels.append(kw.get("label"))
        return fill_between(self, x, y1, y2, **kw)

    def record_legend(self, *args, **kw):
        legend.extend(args[1] if len(args) > 1 else [])
        return make_legend(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", record)
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", record_legend)
    out = tmp_path / "both"
    assert main(["fig2", str(aevb), str(aevb200), str(wakesleep), "--out", str(out)]) == 0
    assert (out / "fig2.png").stat().st_size > 1000 and (out / "fig2.pdf").exists()
    assert labels == [
        "ours, min to max over seeds (train)",
        "ours, min to max over seeds (test)",
        "ours wake-sleep, min to max over seeds (train)",
        "ours wake-sleep, min to max over seeds (test)",
    ]
    # the legend (beside the last panel, N_z = 200: AEVB only) names wake-sleep's curves too
    assert "ours wake-sleep, mean of 3 seeds (train)" in legend
    assert "paper wake-sleep (test)" in legend and len(legend) == len(set(legend))
    refused(
        ["fig2", str(aevb), str(aevb), "--out", str(tmp_path / "twice")],
        capsys,
        f"N_z=20 seed 0 is in both {aevb} and {aevb}",
    )
    assert not (tmp_path / "twice").exists()


def _overlapping(boxes: list) -> list[tuple[int, int]]:
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[:i]) if a.overlaps(b)]


@pytest.mark.parametrize(
    "folders, nzs",
    [(["paper-1e7"], [3, 20]), (["paper-1e7"], [200]), (["paper-1e7"], [3, 5, 10, 20, 200])]
    + [(["paper-1e7", "wakesleep-1e7"], [3, 20])],
)
def test_fig2_labels_do_not_overlap(folders, nzs):
    """With any number of N_z (the committed runs; with wake-sleep's longer legend too): no
    panel's x tick labels and axis label run into another panel's, nor into each other, and
    the legend beside the panels covers none of them."""
    from vaerepro.analysis.plots import fig2_figure

    results = Path(__file__).resolve().parents[1] / "results"
    runs = [r for f in folders for r in load_run(results / f) if r[0]["config"]["nz"] in nzs]
    fig = fig2_figure(runs)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    axes = fig.axes
    assert len(axes) == len(nzs)
    xaxes = [ax.xaxis.get_tightbbox(renderer) for ax in axes]  # tick labels and axis label
    assert _overlapping(xaxes) == []
    for ax in axes:
        (x0, x1), ticks = ax.get_xlim(), ax.xaxis.get_major_ticks()
        shown = [t.label1 for t in ticks if x0 <= t.get_loc() <= x1 and t.label1.get_text()]
        boxes = [label.get_window_extent(renderer) for label in shown]
        assert len(boxes) >= 4 and _overlapping(boxes) == []  # 1e5 to 1e8: a label each
    legend = axes[-1].get_legend().get_window_extent(renderer)
    assert not any(legend.overlaps(box) for box in xaxes)
    assert not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in axes)
    plt.close(fig)
