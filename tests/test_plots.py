import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from vaerepro.cli import main
from vaerepro.config import TrainConfig
from vaerepro.evaluate import active_units, kl_per_dimension
from vaerepro.layout import RunFolderError
from vaerepro.model import VAE
from vaerepro.plots import PAPER_XLIM, PAPER_YLIM, _save_grid, fig2_limits, plot_fig2
from vaerepro.records import load_run
from vaerepro.report import make_figures
from vaerepro.train import train

PER_MODEL = ("recon", "samples", "interpolation", "latent", "kl_per_dim")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("run")
    for nz in (2, 5):
        cfg = TrainConfig(nz=nz, hidden=32, samples=3000, eval_every=1000, train_size=2000)
        train(cfg, mnist, out, progress=False, preset="paper")
    return out


def test_plot_writes_every_file(tiny_run, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["plot", str(run), "--data-root", str(data_root)]) == 0
    figures = run / "figures"
    expected = {"fig2.png", "fig2.pdf", "components.png"}
    expected |= {f"{kind}_nz{nz}.png" for kind in PER_MODEL for nz in (2, 5)}
    assert expected <= {p.name for p in figures.iterdir()}
    assert all((figures / name).stat().st_size > 1000 for name in expected)
    report = (run / "REPORT.md").read_text()
    assert "figures/fig2.png" in report and "| 5 | 1 | 3e3 |" in report  # N_z, seeds, samples
    assert "active units" in report and "train samples/s" in report and '"lr": 0.02' in report


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


def test_missing_csv_is_named(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "nz5-seed0.csv").unlink()
    assert main(["plot", str(run)]) == 2
    assert "nz5-seed0.csv is missing" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "samples,train_elbo\n1,2\n", 'a,b\n"x\n'])
def test_malformed_csv_is_named(tiny_run, tmp_path, content):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "nz2-seed0.csv").write_text(content)
    with pytest.raises(RunFolderError, match="nz2-seed0.csv"):
        make_figures(run)


def test_plot_without_weights_uses_the_csvs_alone(tiny_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for pt in run.glob("*.pt"):
        pt.unlink()

    def no_data(*args, **kw):
        raise AssertionError("MNIST is not needed without weights")

    monkeypatch.setattr("vaerepro.report.load_mnist", no_data)
    assert main(["plot", str(run)]) == 0
    err = capsys.readouterr().err
    assert "per-model figures skipped for N_z=2,5: no final weights" in err
    names = {p.name for p in (run / "figures").iterdir()}
    assert names == {"fig2.png", "fig2.pdf", "components.png"}
    assert (run / "comparison.md").exists() and (run / "comparison.csv").exists()
    assert "| 5 | 1 | 3e3 |" in (run / "REPORT.md").read_text()


def test_plot_with_some_weights_draws_those_models(tiny_run, data_root, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "nz2-seed0.pt").unlink()
    assert main(["plot", str(run), "--data-root", str(data_root)]) == 0
    assert "skipped for N_z=2:" in capsys.readouterr().err
    names = {p.name for p in (run / "figures").iterdir()}
    assert "recon_nz5.png" in names and "recon_nz2.png" not in names
    assert "| 2 | 1 | 3e3 |" in (run / "REPORT.md").read_text()


def _run_with(samples, elbo):
    df = pd.DataFrame({"samples": samples, "train_elbo": elbo, "test_elbo": elbo})
    return [({"config": {"nz": 3}}, df)]


def test_fig2_keeps_the_paper_axes_unless_ours_leave_them():
    inside = _run_with([1e5, 1e6, 1e7], [-149.0, -120.0, -100.0])
    assert fig2_limits(inside) == (PAPER_XLIM, PAPER_YLIM, False)
    (x0, _), (y0, y1), widened = fig2_limits(_run_with([5e4, 3e5], [-190.0, -169.0]))
    assert widened and y0 <= -190 and y1 == PAPER_YLIM[1] and x0 < 5e4


def test_a_short_run_draws_its_curves(tiny_run, tmp_path):
    # 3e3 samples, ELBO far below -150: every point of ours must be inside the axes
    runs = [(meta, df) for meta, df in load_run(tiny_run)]
    out = tmp_path / "figures"
    out.mkdir()
    plot_fig2(runs, out)
    (x0, x1), (y0, y1), widened = fig2_limits(runs)
    assert widened
    for _, df in runs:
        assert df.samples.between(x0, x1).all()
        assert df.train_elbo.between(y0, y1).all() and df.test_elbo.between(y0, y1).all()


def test_a_kill_while_plotting_keeps_the_previous_figure(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
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


@pytest.mark.parametrize(
    "n, kw", [(64, {"nrow": 8, "pad_value": 1.0}), (64, {"nrow": 16, "padding": 2}), (13, {})]
)
def test_image_grids_are_torchvisions_pixel_for_pixel(tmp_path, n, kw):
    from torchvision.utils import save_image

    images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
    images[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255, 0.999])  # rounding edges
    _save_grid(images, tmp_path / "ours.png", **kw)
    save_image(images, tmp_path / "torchvision.png", **kw)
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "torchvision.png").read_bytes()
