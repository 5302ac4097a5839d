"""Fig. 3 end to end: a tiny sweep of the three methods (AEVB, wake-sleep, MCEM) logs the
marginal likelihood on its cadence, and is plotted and compared with the paper's Fig. 3;
the CSV's new columns are checked, and older CSVs (without them) still load."""

import contextlib
import io
import json
import math

import pandas as pd
import pytest
import torch
from helpers import copy_run, tiny

from vaerepro.analysis.plots import fig3_figure
from vaerepro.analysis.reference import paper_marginal
from vaerepro.cli import main
from vaerepro.core.config import preset
from vaerepro.core.errors import RunFolderError
from vaerepro.runs.contents import OLD_COLUMNS
from vaerepro.runs.layout import CSV_COLUMNS
from vaerepro.runs.records import load_run
from vaerepro.runs.state import TrainingState

# 2000 samples, an evaluation every 1000, the marginal likelihood of 20 images at 2000
FIG3 = ["--preset", "fig3", "--method", "aevb", "wakesleep", "mcem", "--seeds", "0", "1"]
FIG3 += ["--marginal-every", "2000", "--marginal-n", "20", "--hidden", "16"]


@pytest.fixture(scope="module")
def fig3_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("fig3") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(tiny(out, data_root, *FIG3, plot=True)) == 0, err.getvalue()
    return out


def test_three_methods_log_the_marginal_likelihood_on_its_cadence(fig3_run):
    runs = load_run(fig3_run)
    assert sorted({m["config"]["method"] for m, _ in runs}) == ["aevb", "mcem", "wakesleep"]
    assert {m["config"]["nz"] for m, _ in runs} == {3}  # the fig3 preset's N_z
    for meta, df in runs:
        assert df.samples.tolist() == [1000, 2000]
        for split in ("train", "test"):
            marginal = df[f"{split}_marginal"]
            assert marginal.isna().tolist() == [True, False]  # estimated at 2000 only
            assert -800 < marginal.iloc[1] < 0
            elbo = df[f"{split}_elbo"]
            if meta["config"]["method"] == "mcem":  # no encoder: no ELBO
                assert elbo.isna().all()
                assert "kl_per_dim" not in meta and "train_elbo" not in meta["final"]
            else:  # the bound lies below the marginal likelihood (to the estimator's noise)
                assert elbo.notna().all() and elbo.iloc[1] < marginal.iloc[1] + 1
        assert meta["final"]["test_marginal"] == pytest.approx(df.test_marginal.iloc[1], abs=1e-5)


def test_the_report_draws_and_compares_fig3(fig3_run):
    assert (fig3_run / "figures" / "fig3.png").stat().st_size > 10_000
    report = (fig3_run / "REPORT.md").read_text()
    assert "## Marginal likelihood (Fig. 3)" in report and "| 2000 | mcem | 3 |" in report
    assert "the first 20 images of each split (`--marginal-n`)" in report
    detail = pd.read_csv(fig3_run / "comparison-marginal.csv")
    assert set(detail.method) == {"aevb", "wakesleep", "mcem"}
    assert (detail.seeds == 2).all() and detail["paper"].isna().all()  # a tiny model: no
    assert (detail.paper_gap == "Fig. 3 has only N_z = 3 with 100 hidden units").all()  # paper
    elbo = pd.read_csv(fig3_run / "comparison.csv")
    assert set(elbo.method) == {"aevb", "wakesleep"}  # Fig. 2's comparison: no MCEM


def test_fig3_command_writes_only_into_out(fig3_run, tmp_path, capsys):
    run = copy_run(fig3_run, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    assert main(["fig3", str(run), "--out", str(tmp_path / "fig")]) == 0
    assert sorted(p.name for p in run.iterdir()) == before
    out = capsys.readouterr().out
    assert "| 2000 | mcem | 3 | train | 2 | 2e3 |" in out
    written = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert written == [
        "comparison-marginal.csv",
        "comparison-marginal.md",
        "fig3.pdf",
        "fig3.png",
    ]


def test_the_paper_value_is_fig3s_for_fig3s_model_only():
    cfg = preset("fig3").replace(train_size=1000).to_dict()
    assert paper_marginal(cfg, "train", [1e6], "aevb")[0] == pytest.approx(-129.1, abs=0.01)
    assert math.isnan(paper_marginal({**cfg, "hidden": 500}, "train", [1e6], "aevb")[0])
    assert math.isnan(paper_marginal({**cfg, "train_size": 2000}, "train", [1e6], "aevb")[0])


@pytest.mark.parametrize(
    "name, row, column, method",
    [
        ("nz3-seed0.csv", 0, "test_marginal", "aevb"),
        ("mcem-nz3-seed0.csv", 1, "train_elbo", "mcem"),
    ],
)
def test_a_value_the_config_does_not_log_is_refused(fig3_run, tmp_path, name, row, column, method):
    """A marginal likelihood off its cadence, or an ELBO of MCEM (which has no encoder)."""
    run = copy_run(fig3_run, tmp_path)
    df = pd.read_csv(run / name)
    df.loc[row, column] = -100.0
    df.to_csv(run / name, index=False)
    with pytest.raises(RunFolderError, match=f"{column} is -100.0, but the {method} model"):
        load_run(run)


def test_a_csv_written_before_the_marginal_columns_loads(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    csv = run / "nz3-seed0.csv"
    df = pd.read_csv(csv).drop(columns=["train_marginal", "test_marginal"])
    df.to_csv(csv, index=False)
    [(meta, loaded)] = load_run(run)
    assert loaded.test_marginal.isna().all() and len(loaded) == len(df)
    assert json.loads((run / "nz3-seed0.json").read_text())["status"] == "finished"


def test_loglik_uses_the_hmc_estimator_for_mcem_and_says_so(fig3_run, tmp_path, capsys):
    run = copy_run(fig3_run, tmp_path)
    assert main(["loglik", str(run), "--k", "50", "--n", "10"]) == 0
    table = pd.read_csv(run / "loglik-test-n10-k50.csv")
    mcem = table[table.method == "mcem"]
    assert len(mcem) == 2 and (mcem.estimator == "HMC").all()
    assert mcem.elbo.isna().all() and mcem.gap.isna().all() and mcem.loglik.between(-800, 0).all()
    others = table[table.method != "mcem"]
    assert len(others) == 4 and (others.estimator == "IS k=50").all() and (others.gap > -1).all()
    assert "| mcem | 3 | 0 |" in capsys.readouterr().out


def test_status_shows_no_elbo_for_mcem(fig3_run, capsys):
    assert main(["status", str(fig3_run)]) == 0
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("mcem N_z=3 seed 0")
    )
    assert line.split()[-1] == "–"


def test_an_mcem_only_sweep_ends_with_fig3_and_its_report(tmp_path, data_root, capsys):
    """No ELBO at all: the end of `reproduce` summarizes and draws the marginal likelihood."""
    out = tmp_path / "run"
    argv = tiny(out, data_root, *FIG3, plot=True)
    assert main([*argv, "--method", "mcem", "--seeds", "0", "--train-size", "500"]) == 0
    assert "| 500 | mcem | 3 | test | 1 | 2e3 |" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["fig3.pdf", "fig3.png"]
    assert "## Marginal likelihood (Fig. 3)" in (out / "REPORT.md").read_text()


def test_checkpoint_rows_from_before_the_marginal_columns_resume_and_finish(mnist, tiny_cfg):
    """An old checkpoint's rows lack the marginal keys: read as empty, so `finish` and the CSV
    writes find every column."""
    state = TrainingState(tiny_cfg, mnist, torch.device("cpu"))
    state.rows = [dict.fromkeys(OLD_COLUMNS, -100.0) | {"samples": 1000}]
    again = TrainingState(tiny_cfg, mnist, torch.device("cpu"))
    again.load_state_dict(state.state_dict(0, 1.0))  # (rows as they were at some checkpoint)
    assert set(again.rows[0]) == set(CSV_COLUMNS) and math.isnan(again.rows[0]["test_marginal"])


def test_fig3_refuses_one_curve_of_two_configs(fig3_run, tmp_path, data_root, capsys):
    other = tmp_path / "other"
    argv = tiny(other, data_root, *FIG3, "--seeds", "5", "--hidden", "32", "--method", "aevb")
    assert main(argv) == 0
    assert main(["fig3", str(fig3_run), str(other), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err
    assert "the N_z=3 models of N_train = 2000 differ in more than their seed (hidden:" in err
    assert not (tmp_path / "fig").exists()


def test_fig3_legend_names_every_method_aevb_included(fig3_run):
    fig = fig3_figure(load_run(fig3_run))
    labels = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else []
    labels += [lab for ax in fig.axes for lab in ax.get_legend_handles_labels()[1]]
    for name in ("AEVB", "wake-sleep", "MCEM"):
        assert f"ours {name}, mean of 2 seeds (train)" in labels
    assert not [lab for lab in labels if lab.startswith("ours,") or lab.startswith("ours (")]
