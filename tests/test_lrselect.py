"""--lr-select, the paper's step-size selection: the candidates' values and the choice in the
model's JSON, the chosen rate trained from the start (a plain run's CSV), a resumed run keeping
its choice, and the options' checks."""

import json

import pandas as pd
import pytest
from helpers import DETERMINISTIC, TINY, crash_at_the_second_checkpoint, refused

from vaerepro.cli import main
from vaerepro.core.config import TrainConfig
from vaerepro.runs import lrselect
from vaerepro.runs.estimate import Estimate
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.loop import train

CANDIDATES = ["0.005", "0.02", "0.1"]


def test_lr_select_records_its_candidates_and_trains_the_chosen_one(tmp_path, data_root, capsys):
    root = ["--nz", "3", "--data-root", str(data_root)]
    selected = tmp_path / "selected"
    select = ["--lr-select", *CANDIDATES, "--lr-select-samples", "1000"]
    assert main(["reproduce", *TINY, *root, *select, "--out", str(selected)]) == 0
    assert "lr-select after 1000 samples" in capsys.readouterr().err
    meta = json.loads(RunFiles.of(selected, 3, 0).json.read_text())
    record = meta["lr_selection"]
    assert record["samples"] == 1000 and [c["lr"] for c in record["candidates"]] == [
        float(c) for c in CANDIDATES
    ]
    finite = [c for c in record["candidates"] if c["train_elbo"] is not None]
    assert record["chosen"] == max(finite, key=lambda c: c["train_elbo"])["lr"]
    assert meta["config"]["lr_select"] == [float(c) for c in CANDIDATES]

    plain = tmp_path / "plain"
    lr = str(record["chosen"])
    assert main(["reproduce", *TINY, *root, "--lr", lr, "--out", str(plain)]) == 0
    ours, theirs = (pd.read_csv(RunFiles.of(r, 3, 0).csv) for r in (selected, plain))
    pd.testing.assert_frame_equal(ours[DETERMINISTIC], theirs[DETERMINISTIC])
    # the chosen candidate's value is the plain run's at 1000 samples (CSV: 6 decimals)
    chosen = next(c for c in record["candidates"] if c["lr"] == record["chosen"])
    assert chosen["train_elbo"] == pytest.approx(theirs.train_elbo[0], abs=1e-6)


def test_a_resumed_run_keeps_its_choice(mnist, tmp_path, tiny_cfg, monkeypatch):
    cfg = tiny_cfg.replace(samples=4000, lr_select=(0.005, 0.02), lr_select_samples=1000)
    full = train(cfg, mnist, tmp_path / "full", progress=False)
    crash_at_the_second_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, mnist, tmp_path / "crashed", progress=False)
    monkeypatch.undo()

    def no_new_selection(*args, **kwargs):
        raise AssertionError("a resumed run selected again")

    monkeypatch.setattr(lrselect, "select_lr", no_new_selection)
    monkeypatch.setattr("vaerepro.runs.loop.select_lr", no_new_selection)
    resumed = train(cfg, mnist, tmp_path / "crashed", progress=False, resume=True)
    pd.testing.assert_frame_equal(full[DETERMINISTIC], resumed[DETERMINISTIC])
    full_meta, resumed_meta = (
        json.loads(RunFiles.of_config(tmp_path / f, cfg).json.read_text())
        for f in ("full", "crashed")
    )
    assert full_meta["lr_selection"] == resumed_meta["lr_selection"]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--lr-select", "0.01", "-0.1"], "lr_select must be distinct positive"),
        (["--lr-select", "0.01", "0.01"], "lr_select must be distinct positive"),
        (["--lr-select", "0.01", "--lr-select-samples", "150"], "must be a multiple of batch_size"),
        (["--lr-select", "0.01", "--lr-select-samples", "1e9"], "at most samples"),
        (["--lr-select", "0.01", "--lr-select-samples", "500"], "must pass the Adagrad warm-up"),
        (
            [
                "--lr-select",
                "0.01",
                "0.02",
                "--lr-select-samples",
                "1000",
                "--nz",
                "3",
                "5",
                "--stacked",
            ],
            "--lr-select may choose",
        ),
    ],
)
def test_bad_lr_select_options_are_refused_before_any_work(tmp_path, capsys, options, message):
    refused(["reproduce", *TINY, *options, "--out", str(tmp_path / "run")], capsys, message)
    assert not (tmp_path / "run").exists()


def test_the_estimate_counts_the_candidates():
    estimate = Estimate(train_rate={("aevb", 3): 1000.0}, eval_rate=float("inf"))
    cfg = TrainConfig(nz=3, samples=10_000, eval_every=10_000)
    assert estimate.seconds(cfg) == 10.0
    selecting = cfg.replace(lr_select=(0.01, 0.02), lr_select_samples=1000)
    assert estimate.seconds(selecting) == 12.0  # two candidates of 1000 samples first
    assert estimate.seconds(selecting, 5000) == 5.0  # a resumed model has chosen already
