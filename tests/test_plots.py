import shutil

import pytest
import torch

from vaerepro.cli import main
from vaerepro.config import TrainConfig
from vaerepro.evaluate import active_units, kl_per_dimension
from vaerepro.model import VAE
from vaerepro.report import make_figures
from vaerepro.store import RunFolderError
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
    assert "figures/fig2.png" in report and "| 5 | 3e+03 |" in report
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


def test_missing_weights_are_named(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "nz2-seed0.pt").unlink()
    with pytest.raises(RunFolderError, match="nz2-seed0.pt"):
        make_figures(run)
