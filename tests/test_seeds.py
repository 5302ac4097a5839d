"""Seeds as a dimension of the sweep (issue 14): one folder holds one sweep over (N_z, seed),
nothing else lands in it, and every comparison and figure shows the spread over seeds."""

import json

import matplotlib.axes
import numpy as np
import pandas as pd
import pytest
from helpers import DETERMINISTIC, copy_run, refused, snapshot, synthetic_sweep, tiny

from vaerepro.analysis.compare import DIVERGED_NATS, compare_run
from vaerepro.analysis.reference import paper_elbo
from vaerepro.analysis.report import make_figures, render_report
from vaerepro.cli import main
from vaerepro.core.config import TrainConfig
from vaerepro.runs.progress import time_left
from vaerepro.runs.records import load_run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    """A finished 3-seed sweep over N_z 3 and 5, one model at a time with one thread (with
    the arguments that made it). Tests read it, or change a copy."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    argv = tiny(out, data_root, "--seeds", "0", "1", "2", "--threads", "1", nz=(3, 5))
    assert main(argv) == 0
    before = snapshot(out)
    yield out, argv
    assert snapshot(out) == before, "a test changed the module's sweep"


def test_a_sweep_writes_every_pair_and_records_it(sweep):
    out, _ = sweep
    record = json.loads((out / "run.json").read_text())
    assert record["nz"] == [3, 5] and record["seeds"] == [0, 1, 2] and record["preset"] == "paper"
    pairs = [(c["nz"], c["seed"]) for c in record["configs"]]
    assert pairs == [(3, 0), (5, 0), (3, 1), (5, 1), (3, 2), (5, 2)]  # whole seeds first
    for nz, seed in pairs:
        assert json.loads((out / f"nz{nz}-seed{seed}.json").read_text())["status"] == "finished"
        assert len(pd.read_csv(out / f"nz{nz}-seed{seed}.csv")) == 2
    elbo = [pd.read_csv(out / f"nz3-seed{s}.csv").test_elbo.iloc[-1] for s in (0, 1, 2)]
    assert len(set(elbo)) == 3  # the seeds are different runs


def test_each_model_of_a_sweep_is_the_one_seed_run(sweep, tmp_path, data_root):
    out, _ = sweep
    alone = tmp_path / "alone"
    assert main(tiny(alone, data_root, "--seed", "1", nz=(5,))) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(alone / "nz5-seed1.csv")[DETERMINISTIC],
        pd.read_csv(out / "nz5-seed1.csv")[DETERMINISTIC],
    )


@pytest.mark.parametrize(
    "change,differences",
    [
        (["--seeds", "0", "1"], ["seeds: [0, 1, 2] != [0, 1]"]),
        (["--seed", "0"], ["seeds: [0, 1, 2] != [0]"]),
        (["--preset", "pyautoencoder"], ["preset: 'paper' != 'pyautoencoder'", "optimizer:"]),
        (["--nz", "3"], ["N_z: [3, 5] != [3]"]),
        (["--lr", "0.03"], ["lr: 0.02 != 0.03"]),
    ],
)
def test_another_sweep_is_refused_and_changes_nothing(sweep, capsys, change, differences):
    out, argv = sweep
    argv = list(argv)
    for option in ("--seeds", "--nz", "--preset"):  # replaced, not repeated
        if option in change and option in argv:
            i = argv.index(option)
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            del argv[i:j]
    if "--seed" in change:
        i = argv.index("--seeds")
        del argv[i : i + 4]
    before = snapshot(out)
    refused([*argv, *change], capsys, f"{out} holds another sweep", *differences)
    assert snapshot(out) == before


def test_unlisted_model_files_are_refused_and_ignored(sweep, tiny_run, tmp_path, capsys, data_root):
    out, _ = sweep
    folder = copy_run(tiny_run, tmp_path, "mixed")  # `reproduce --nz 3` of TINY
    argv = tiny(folder, data_root)
    for suffix in ("csv", "json"):  # a model of another sweep, copied in by hand
        (folder / f"nz5-seed2.{suffix}").write_bytes((out / f"nz5-seed2.{suffix}").read_bytes())
    assert [(m["config"]["nz"], m["config"]["seed"]) for m, _ in load_run(folder)] == [(3, 0)]
    before = snapshot(folder)
    (folder / "run.json").rename(tmp_path / "run.json")
    refused(argv, capsys, "model files that its run.json does not list", "nz3-seed0")
    (tmp_path / "run.json").rename(folder / "run.json")
    refused(argv, capsys, "nz5-seed2.csv, nz5-seed2.json")
    assert snapshot(folder) == before


def test_overwrite_leaves_no_model_of_the_old_sweep(sweep, tmp_path, data_root):
    out, _ = sweep
    folder = tmp_path / "copy"
    folder.mkdir()
    for p in out.iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    assert main(tiny(folder, data_root, "--seeds", "4", "--overwrite")) == 0
    stems = {p.name.split(".")[0] for p in folder.glob("nz*")}
    assert stems == {"nz3-seed4"}
    record = json.loads((folder / "run.json").read_text())
    assert record["nz"] == [3] and record["seeds"] == [4]


def test_resume_refuses_another_seed_set(sweep, capsys):
    out, _ = sweep
    before = snapshot(out)
    refused(
        ["reproduce", "--resume", str(out), "--seeds", "0", "1", "--no-plot"],
        capsys,
        "--seed(s) 0 1 (recorded: [0, 1, 2])",
    )
    assert snapshot(out) == before


def test_a_run_json_that_is_not_one_sweep_is_refused(sweep, tmp_path, capsys):
    out, _ = sweep
    record = json.loads((out / "run.json").read_text())
    record["configs"][1]["lr"] = 0.5
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(record))
    refused(
        ["reproduce", "--resume", str(folder), "--no-plot"],
        capsys,
        "not one config over every (method, N_z, seed)",
        "lr: 0.02 != 0.5",
    )


def test_band_statistics_by_hand(tmp_path):
    offsets = [1.0, -0.5, 2.5]  # train: the paper inside the band; test: 2.5 below to 0.5 above
    samples = [1e5, 2e6, 1e7]  # N_z = 20: the paper's curve starts after 1e5
    synthetic_sweep(tmp_path, 20, offsets, samples)
    detail, summary = compare_run(tmp_path)
    row = detail.set_index(["split", "samples"]).loc[("train", 1e7)]
    paper = float(paper_elbo(20, "train", 1e7))
    mean, sd = paper + np.mean(offsets), np.std(offsets, ddof=1)
    assert row.seeds == 3 and row["mean"] == pytest.approx(mean)
    assert row.sd == pytest.approx(sd) and row.paper == pytest.approx(paper)
    assert row["min"] == pytest.approx(paper - 0.5) and row["max"] == pytest.approx(paper + 2.5)
    assert row["diff"] == pytest.approx(1.0) and row.diff_in_sd == pytest.approx(1.0 / sd)
    assert row.inside == 1.0
    test = detail[(detail.split == "test") & detail.paper.notna()]
    assert (test.inside == 1.0).all()  # -2.5 .. +0.5 around the paper
    first = detail.set_index(["split", "samples"]).loc[("train", 1e5)]
    assert np.isnan(first.paper) and np.isnan(first.inside)  # no paper value: no verdict
    s = summary.set_index(["nz", "split"]).loc[(20, "train")]
    points = int(np.isfinite(paper_elbo(20, "train", np.arange(1e5, 1e7 + 1, 1e5))).sum())
    assert (s.seeds, s.logged, s.points) == (3, 100, points) and s.inside == 1.0
    assert s.mean_abs_diff == pytest.approx(1.0)
    assert s.mean_abs_diff_in_sd == pytest.approx(1.0 / sd)
    # the 95% prediction interval for a 4th seed: mean -+ t(0.975, 2) sd sqrt(1 + 1/3), with
    # t(0.975, 2) = 4.302653 from a printed table
    half = 4.302653 * 1.5 * np.sqrt(4 / 3)
    assert row.pi_low == pytest.approx(mean - half, abs=1e-5)
    assert row.pi_high == pytest.approx(mean + half, abs=1e-5) and row.in_pi == 1.0
    assert np.isnan(first.in_pi) and s.in_pi == 1.0


def test_a_paper_outside_the_band_is_counted(tmp_path):
    synthetic_sweep(tmp_path, 20, [1.0, 2.0, 3.0], [2e6, 1e7])
    _, summary = compare_run(tmp_path)
    s = summary.set_index(["nz", "split"])
    assert s.loc[(20, "train"), "inside"] == 0.0 and s.loc[(20, "test"), "inside"] == 0.0
    assert s.loc[(20, "train"), "last_diff"] == pytest.approx(2.0)
    # outside the narrow band of 3 seeds, but 2 nats from their mean is well inside the
    # prediction interval (sd 1: half-width 4.302653 sqrt(4/3) = 4.97 nats)
    assert s.loc[(20, "train"), "in_pi"] == 1.0 and s.loc[(20, "test"), "in_pi"] == 1.0
    synthetic_sweep(tmp_path / "far", 20, [5.0, 6.0, 7.0], [2e6, 1e7])  # 6 nats: outside
    assert (compare_run(tmp_path / "far")[1].in_pi == 0.0).all()


def test_a_diverged_seed_is_left_out_of_the_band_and_the_interval(tmp_path):
    """A seed that diverged but stayed finite (lr 0.1 ended at -3.7e5 to -5.3e7 nats) would
    put the paper inside a band and a prediction interval millions of nats wide."""
    synthetic_sweep(tmp_path, 20, [1.0, -0.5, 2.5], [1e5, 2e6, 1e7])
    csv = tmp_path / "nz20-seed2.csv"
    rows = pd.read_csv(csv)
    late = rows.samples >= 5_000_000
    rows.loc[late, ["train_elbo", "test_elbo"]] = -3.7e5  # seed 2 diverges at 5e6
    rows.to_csv(csv, index=False)
    detail, summary = compare_run(tmp_path)
    at = detail.set_index(["split", "samples"])
    assert at.loc[("train", 1e7), "diverged"] == 1 and at.loc[("train", 2e6), "diverged"] == 0
    assert np.isnan(at.loc[("train", 1e7), "in_pi"]) and np.isnan(at.loc[("test", 1e7), "inside"])
    assert at.loc[("train", 2e6), "in_pi"] == 1.0
    s = summary.set_index(["nz", "split"]).loc[(20, "train")]
    assert s.diverged == 51 and s.banded == s.points - 51  # 5e6 to 1e7: 51 logged points
    assert DIVERGED_NATS == pytest.approx(-1086.9, abs=0.05)
    runs = load_run(tmp_path)
    for meta, _ in runs:
        meta["device"] = {"type": "cpu", "name": "CPU X"}  # synthetic_sweep writes none
    text = render_report(tmp_path, runs, summary, {}, 0)
    assert "Left out of both fractions" in text and "aevb N_z=20 train: 51" in text


def test_fig2_draws_the_band_and_the_report_the_spread(sweep, monkeypatch, tmp_path):
    out, _ = sweep
    bands = []
    original = matplotlib.axes.Axes.fill_between

    def record(self, x, y1, y2=0, **kw):
        bands.append((np.asarray(y1), np.asarray(y2), kw.get("label")))
        return original(self, x, y1, y2, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", record)
    folder = tmp_path / "plotted"
    folder.mkdir()
    for p in out.iterdir():
        if p.is_file() and p.suffix != ".pt":  # the per-model figures are not under test here
            (folder / p.name).write_bytes(p.read_bytes())
    make_figures(folder)
    assert (folder / "figures" / "fig2.png").stat().st_size > 0
    # fig2: train and test per N_z; components: the same for both terms
    assert len(bands) == 2 * 2 + 2 * 2 * 2
    low, high, label = bands[0]
    elbo = [pd.read_csv(folder / f"nz3-seed{s}.csv").train_elbo for s in (0, 1, 2)]
    assert np.allclose(low, np.min(elbo, axis=0)) and np.allclose(high, np.max(elbo, axis=0))
    assert label == "ours, min to max over seeds (train)"
    report = (folder / "REPORT.md").read_text()
    last = [e.iloc[-1] for e in elbo]
    assert f"{np.mean(last):.2f} ± {np.std(last, ddof=1):.2f}" in report


def test_one_seed_draws_no_band(tiny_run, monkeypatch, tmp_path):
    out = copy_run(tiny_run, tmp_path, "one")  # `reproduce --nz 3`: seed 0 alone
    calls = []
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda *a, **k: calls.append(1))
    (out / "nz3-seed0.pt").unlink()
    make_figures(out)
    assert not calls


def test_per_model_figures_for_a_chosen_seed(sweep, tmp_path, capsys, data_root, monkeypatch):
    out = copy_run(sweep[0], tmp_path)
    loaded = []
    monkeypatch.setattr(
        "vaerepro.analysis.report.load_model", lambda f: loaded.append(f.stem) or None
    )
    assert main(["plot", str(out), "--data-root", str(data_root)]) == 0
    assert loaded == ["nz3-seed0", "nz5-seed0"]  # the run's first seed by default
    loaded.clear()
    assert main(["plot", str(out), "--seed", "2", "--data-root", str(data_root)]) == 0
    assert loaded == ["nz3-seed2", "nz5-seed2"]
    monkeypatch.undo()
    assert main(["plot", str(out), "--seed", "2", "--data-root", str(data_root)]) == 0
    assert "active units (seed 2)" in (out / "REPORT.md").read_text()
    assert (out / "figures" / "recon_nz5.png").exists()
    refused(["plot", str(out), "--seed", "7"], capsys, "no model of seed 7; its seeds: [0, 1, 2]")


def test_the_readme_table_at_given_sample_counts(tmp_path, capsys):
    offsets = [1.0, -0.5, 2.5]
    synthetic_sweep(tmp_path, 20, offsets, [1e5, 2e6, 1e7])
    assert main(["compare", str(tmp_path), "--at", "1e7", "3e7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| method | N_z | split | ours at 1e7 | paper at 1e7 | diff at")
    paper = float(paper_elbo(20, "train", 1e7))
    sd = np.std(offsets, ddof=1)
    train = lines[2].split(" | ")
    assert train[:3] == ["| aevb", "20", "train"]
    assert train[3] == f"{paper + 1.0:.2f} ± {sd:.2f}" and train[4] == f"{paper:.2f}"
    assert train[5] == f"+1.00 (+{1.0 / sd:.1f} sd)"
    assert train[6:9] == ["–", "–", "–"]  # 3e7 was not logged
    points = int(np.isfinite(paper_elbo(20, "train", np.arange(1e5, 1e7 + 1, 1e5))).sum())
    assert train[9] == f"{points} / {points}"  # the paper inside the band at every point
    assert train[10] == f"{points} / {points} |"  # and inside the prediction interval


def test_stacked_trains_each_seed_as_separate_runs(sweep, tmp_path, data_root):
    out, _ = sweep
    stacked = tmp_path / "stacked"
    argv = tiny(stacked, data_root, "--seeds", "0", "1", "2", "--stacked", nz=(3, 5))
    assert main(argv) == 0
    for nz, seed in [(3, 0), (5, 1), (3, 2)]:
        meta = json.loads((stacked / f"nz{nz}-seed{seed}.json").read_text())
        assert len(meta["stacked_with"]) == 6  # one batched step for all N_z and seeds
        name = f"nz{nz}-seed{seed}.csv"
        pd.testing.assert_frame_equal(
            pd.read_csv(stacked / name)[DETERMINISTIC],
            pd.read_csv(out / name)[DETERMINISTIC],
            rtol=1e-4,
        )


@pytest.mark.slow  # processes of their own
def test_jobs_do_not_change_the_numbers(sweep, tmp_path, data_root, capsys):
    """2 jobs of 1 thread and 1 job of 1 thread (the module's sweep) give identical CSVs; the
    thread count is recorded in every model's JSON. With 2 jobs one progress bar counts the
    whole sweep."""
    one, _ = sweep
    two = tmp_path / "two"
    argv = tiny(two, data_root, "--seeds", "0", "1", "--threads", "1", "--jobs", "2", nz=(3, 5))
    assert main([a for a in argv if a != "--no-progress"]) == 0  # with the bar
    err = capsys.readouterr().err
    assert "4 model(s)" in err and "2 job(s) of 1 thread(s)" in err
    assert "model 4/4 (N_z=5 seed 1): finished" in err
    assert "sweep: 100%" in err and "8.00k/8.00k" in err  # 4 models x 2000 samples
    for nz, seed in [(3, 0), (5, 0), (3, 1), (5, 1)]:
        name = f"nz{nz}-seed{seed}"
        for run in (one, two):
            assert json.loads((run / f"{name}.json").read_text())["device"]["threads"] == 1
        pd.testing.assert_frame_equal(
            pd.read_csv(one / f"{name}.csv")[DETERMINISTIC],
            pd.read_csv(two / f"{name}.csv")[DETERMINISTIC],
        )


def test_time_left_counts_the_samples_of_every_job():
    """Two jobs, 60 s in: one model done, the other halfway. 150 of the 200 expected
    model-seconds took 60 s, so 50 more take 20 s (counting finished models only said 60 s)."""
    a, b = TrainConfig(nz=3, samples=1000), TrainConfig(nz=5, samples=1000)
    expected, before = {a: 100.0, b: 100.0}, {a: 0, b: 0}
    assert time_left(expected, before, {a: 1000, b: 500}, 60.0) == ", about 20 s left"
    # a resumed model counts only what it trains in this run: 250 of its 500 left
    assert time_left(expected, {a: 0, b: 500}, {a: 1000, b: 750}, 60.0) == ", about 20 s left"
    assert time_left(None, before, {a: 1000, b: 0}, 60.0) == ""
    assert time_left(expected, before, before, 0.0) == ""  # nothing trained yet: no estimate
    # a resumed model that had nothing left took no expected time: still no estimate
    assert time_left({a: 0.0, b: 100.0}, {a: 1000, b: 0}, {a: 1000, b: 0}, 5.0) == ""


def test_jobs_are_checked_before_any_work(tmp_path, capsys):
    base = tiny(tmp_path / "r", None)
    refused([*base, "--jobs", "0"], capsys, "--jobs must be at least 1, got 0")
    refused([*base, "--jobs", "2", "--stacked"], capsys, "does not combine with")
    refused([*base, "--stacked", "--autograd"], capsys, "--autograd was given")
    refused([*base, "--stacked", "--likelihood", "gaussian"], capsys, "Bernoulli decoder only")
    assert not (tmp_path / "r").exists()
