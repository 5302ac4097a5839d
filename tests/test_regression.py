"""The regression gate fails on deliberate breakages and passes the unbroken model."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from vaerepro import model as model_mod
from vaerepro.check import check_run, make_reference
from vaerepro.cli import main
from vaerepro.config import preset
from vaerepro.optim import Adagrad
from vaerepro.store import CSV_COLUMNS
from vaerepro.train import train

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "ci"
GATE_NZ = 200  # one N_z of the committed CI reference keeps these tests short; at N_z = 3
# the decoder-tanh breakage stays within tolerance (see the README)


def _no_decoder_tanh(self, z):
    return self.dec_out(self.dec(z))


def _latent_grads_without_kl(d_z, mu, sigma, eps, d_mu, d_logvar):
    torch.sum(d_z, 0, out=d_mu)
    torch.sum(d_z.mul_(eps), 0, out=d_logvar)
    d_logvar.mul_(sigma).mul_(0.5)


def _no_noise(size, *, generator=None, out=None, **kw):
    return out.zero_() if out is not None else torch.zeros(size, **kw)


_kl = model_mod.gaussian_kl
_adagrad_init = Adagrad.__init__

# Training runs the hand-written gradient (vaerepro/gradients.py), evaluation the model's
# forward pass (vaerepro/model.py): the gate must catch a breakage in either.
MUTATIONS = {
    "kl_gradient_dropped": ("vaerepro.gradients.latent_grads", _latent_grads_without_kl),
    "tanh_derivative_dropped": ("vaerepro.gradients.tanh_backward", lambda grad, out: grad),
    "lr_times_10": (
        "vaerepro.optim.Adagrad.__init__",
        lambda self, params, lr=0.02, **kw: _adagrad_init(self, params, lr=10 * lr, **kw),
    ),
    "z_is_mu": ("torch.randn", _no_noise),  # in training and evaluation
    "eval_kl_sign_flipped": ("vaerepro.model.gaussian_kl", lambda mu, logvar: -_kl(mu, logvar)),
    "eval_decoder_tanh_removed": ("vaerepro.model.VAE.decode", _no_decoder_tanh),
}


@pytest.fixture(scope="module")
def gate_cfg():
    return preset("ci").replace(nz=GATE_NZ)


def test_unbroken_model_passes_the_gate(mnist, tmp_path, gate_cfg):
    train(gate_cfg, mnist, tmp_path, progress=False)
    result = check_run(tmp_path, REFERENCE, nz=[GATE_NZ])
    assert result.ok, (result.problems, result.failures)
    assert len(result.points) == 2 * gate_cfg.samples // gate_cfg.eval_every


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_breakage_fails_the_gate(mnist, tmp_path, gate_cfg, monkeypatch, mutation):
    target, replacement = MUTATIONS[mutation]
    monkeypatch.setattr(target, replacement)
    train(gate_cfg, mnist, tmp_path, progress=False)
    result = check_run(tmp_path, REFERENCE, nz=[GATE_NZ])
    assert not result.problems  # it fails on the numbers, not on config or files
    assert not result.ok and len(result.failures) > 0
    monkeypatch.undo()
    assert main(["check", str(tmp_path), "--reference", str(REFERENCE), "--nz", str(GATE_NZ)]) == 1


def _copy_reference_run(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(REFERENCE, run)
    return run


def test_the_reference_itself_passes(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 0
    assert "OK: 30 points" in capsys.readouterr().out  # 5 N_z x 3 points x 2 splits


def test_missing_file_fails(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    (run / "nz5-seed0.csv").unlink()
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    assert "N_z=5: nz5-seed0.csv/.json missing" in capsys.readouterr().out


def test_missing_rows_fail(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    df = pd.read_csv(run / "nz3-seed0.csv")
    df.iloc[:-1].to_csv(run / "nz3-seed0.csv", index=False)
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    assert "N_z=3: rows missing at samples [300000]" in capsys.readouterr().out


def test_different_config_fails(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    meta = json.loads((run / "nz10-seed0.json").read_text())
    meta["config"]["lr"] = 0.03
    (run / "nz10-seed0.json").write_text(json.dumps(meta))
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    assert "N_z=10: config differs from the reference: lr: 0.03 != 0.02" in capsys.readouterr().out


def test_out_of_tolerance_point_is_printed(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    df = pd.read_csv(run / "nz200-seed0.csv")
    df.loc[2, "test_elbo"] -= 10.0  # at 3e5 samples the tolerance is about 5 nats
    df.to_csv(run / "nz200-seed0.csv", index=False)
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    out = capsys.readouterr().out
    assert "1 of 30 points out of tolerance" in out
    assert re.search(r"200\s+test\s+300000\s+-165\.\d+\s+-155\.\d+\s+-10\.000", out)


def test_make_reference_measures_spread(tmp_path):
    runs = []
    for seed, offset in enumerate([0.0, 1.0, 2.0]):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        cfg = preset("ci").replace(nz=3, seed=seed).to_dict()
        (folder / f"nz3-seed{seed}.json").write_text(json.dumps({"config": cfg}))
        row = {c: 0.0 for c in CSV_COLUMNS}  # ELBO terms and timings do not matter here
        pd.DataFrame(
            [
                {
                    **row,
                    "samples": 100000,
                    "train_elbo": -150 + offset,
                    "test_elbo": -150 + offset / 100,
                }
            ]
        ).to_csv(folder / f"nz3-seed{seed}.csv", index=False)
        runs.append(folder)
    tol = make_reference(runs, tmp_path / "ref", reason="test").set_index("split").tol
    assert tol["train"] == pytest.approx(4.0)  # 4 * std(0, 1, 2) = 4
    assert tol["test"] == pytest.approx(0.25)  # the floor
    ref = tmp_path / "ref"
    assert (ref / "nz3-seed0.csv").exists() and not (ref / "nz3-seed1.csv").exists()
    assert "test" in (ref / "HISTORY.md").read_text()
    with pytest.raises(ValueError, match="reason"):
        make_reference(runs, ref, reason=" ")
