"""`vaerepro loglik`: the importance-sampled log p(x) of every model of a run folder, beside its
ELBO on the same images (the estimators themselves: test_marginal.py)."""

import json

import pandas as pd
from helpers import copy_run, refused

from vaerepro.cli import main


def test_loglik_of_every_model_with_its_gap_to_the_elbo(tiny_sweep, tmp_path, capsys):
    run = copy_run(tiny_sweep.folder, tmp_path)
    assert main(["loglik", str(run), "--n", "50", "--k", "200"]) == 0
    out = capsys.readouterr().out
    assert "| aevb | 3 | 0 |" in out and "| aevb | 5 | 0 |" in out
    table = pd.read_csv(run / "loglik-test-n50-k200.csv")
    assert list(table.nz) == [3, 5] and (table.n == 50).all()
    # log p(x) >= its importance-sampled estimate's expectation >= the ELBO (k >= 1)
    assert (table.gap > 0).all() and (table.gap < 20).all(), table
    assert (table.loglik_se > 0).all() and (table.loglik_se < 1).all()
    assert (table.loglik < 0).all()


def test_loglik_with_the_papers_estimator_agrees_with_importance_sampling(
    tiny_sweep, tmp_path, capsys
):
    """--estimator hmc: its own file, the estimator named, the ELBO and the gap beside it. The
    two estimators agree within their known biases: importance sampling understates, the HMC
    estimator's 25-sample kernel density overstates (docs/marginal.md), by up to 1.3 nats
    here at N_z = 5."""
    run = copy_run(tiny_sweep.folder, tmp_path)
    assert main(["loglik", str(run), "--n", "20", "--k", "500"]) == 0
    assert main(["loglik", str(run), "--n", "20", "--estimator", "hmc"]) == 0
    sampled = pd.read_csv(run / "loglik-test-n20-k500.csv")
    hmc = pd.read_csv(run / "loglik-test-n20-hmc.csv")
    assert (hmc.estimator == "HMC").all() and (hmc.elbo < hmc.loglik).all()
    pd.testing.assert_series_equal(hmc.gap, hmc.loglik - hmc.elbo, check_names=False, atol=1e-5)
    assert (hmc.loglik - sampled.loglik).between(-0.5, 2.0).all(), (hmc, sampled)


def test_loglik_is_reproducible_per_noise_seed(tiny_sweep, tmp_path, capsys):
    run = copy_run(tiny_sweep.folder, tmp_path)
    tables = []
    for seed in ("0", "0", "1"):
        assert main(["loglik", str(run), "--n", "20", "--k", "100", "--noise-seed", seed]) == 0
        tables.append(pd.read_csv(run / "loglik-test-n20-k100.csv"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert not tables[0].loglik.equals(tables[2].loglik)


def test_loglik_refuses_a_folder_without_weights_naming_it(tiny_sweep, tmp_path, capsys):
    run = copy_run(tiny_sweep.folder, tmp_path)
    (run / "nz5-seed0.pt").unlink()
    refused(["loglik", str(run)], capsys, f"{run / 'nz5-seed0.pt'} is missing", "final weights")
    assert not list(run.glob("loglik-*"))  # refused before any work


def test_loglik_refuses_bad_options(tiny_sweep, capsys):
    refused(["loglik", str(tiny_sweep.folder), "--k", "1"], capsys, "--k must be at least 2")
    for bad in ("-1", str(2**64)):
        argv = ["loglik", str(tiny_sweep.folder), "--noise-seed", bad]
        refused(argv, capsys, f"--noise-seed must be in [0, 2**63 - 1), got {bad}")


def test_loglik_refuses_the_hmc_estimator_for_wide_latents(
    tiny_sweep, tmp_path, capsys, monkeypatch
):
    run = copy_run(tiny_sweep.folder, tmp_path)
    monkeypatch.setattr("vaerepro.cli.commands.MARGINAL_MAX_NZ", 5)  # N_z 5 stands in for 25+
    refused(["loglik", str(run), "--estimator", "hmc"], capsys, "N_z = 5", "importance")
    assert not list(run.glob("loglik-*"))


def test_loglik_leaves_out_unfinished_models(tiny_sweep, tmp_path, capsys):
    run = copy_run(tiny_sweep.folder, tmp_path)
    meta = json.loads((run / "nz5-seed0.json").read_text())
    (run / "nz5-seed0.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    assert main(["loglik", str(run), "--n", "10", "--k", "10"]) == 0
    assert "N_z=5 seed 0: interrupted, not finished: left out" in capsys.readouterr().err
    assert list(pd.read_csv(run / "loglik-test-n10-k10.csv").nz) == [3]


def test_loglik_sees_each_split_as_the_run_did(mnist):
    """A fixed binarization: loglik's train and test images are those the run trained and was
    evaluated on, and the two splits' draws differ (seed and seed + 1)."""
    import torch

    from vaerepro.analysis.loglik import LoglikOptions, split_data
    from vaerepro.core.config import TrainConfig
    from vaerepro.runs.state import TrainingState

    cfg = TrainConfig(nz=3, hidden=16, train_size=1000, binarize="fixed", seed=4)
    state = TrainingState(cfg, mnist, torch.device("cpu"))
    train = split_data(cfg, mnist, LoglikOptions(split="train", n=1000))
    test = split_data(cfg, mnist, LoglikOptions(split="test", n=1000))
    assert torch.equal(train, state.train_x) and torch.equal(test, state.test_x[:1000])
    assert set(train.unique().tolist()) == {0.0, 1.0}
    same_draw = torch.bernoulli(mnist.test_x[:1000], generator=torch.Generator().manual_seed(4))
    assert not torch.equal(test, same_draw)
