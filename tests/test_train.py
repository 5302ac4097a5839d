import json

import pandas as pd
import pytest
import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.errors import TrainingDiverged
from vaerepro.runs import writes
from vaerepro.runs.folder import load_model
from vaerepro.runs.layout import CSV_COLUMNS, RunFiles
from vaerepro.runs.loop import train

DETERMINISTIC = [c for c in CSV_COLUMNS if c not in ("wall_s", "train_samples_per_s")]


def test_a_few_hundred_steps_raise_the_elbo(mnist, tmp_path):
    cfg = TrainConfig(
        nz=20, samples=30_000, eval_every=10_000
    )  # 300 minibatches of the paper model
    df = train(cfg, mnist, tmp_path, progress=False)
    assert df.samples.tolist() == [10_000, 20_000, 30_000]
    assert df.test_elbo.iloc[-1] > df.test_elbo.iloc[0] + 5  # nats per datapoint
    assert df.train_elbo.iloc[-1] > -250  # untrained: about -543 (= -784 log 2)


def test_csv_and_json_follow_the_contract(mnist, tmp_path, tiny_cfg):
    train(tiny_cfg, mnist, tmp_path, progress=False, preset="paper")
    files = RunFiles.of(tmp_path, tiny_cfg.nz, tiny_cfg.seed)
    assert files.csv.name == "nz3-seed0.csv" and files.weights.exists()
    df = pd.read_csv(files.csv)
    assert list(df.columns) == CSV_COLUMNS and len(df) == 2
    assert (df.train_elbo < 0).all() and (df.test_elbo < 0).all()
    assert df.train_elbo.values == pytest.approx((df.train_loglik - df.train_kl).values, abs=1e-4)
    assert (df.wall_s.diff().dropna() > 0).all() and (df.train_samples_per_s > 0).all()
    meta = json.loads(files.json.read_text())
    assert meta["config"] == tiny_cfg.to_dict() and meta["status"] == "finished"
    assert meta["seed"] == 0 and meta["preset"] == "paper"
    assert meta["versions"]["torch"] == torch.__version__ and meta["device"]["type"] == "cpu"
    assert "commit" in meta["git"] and meta["final"]["test_elbo"] == pytest.approx(
        df.test_elbo.iloc[-1]
    )
    assert load_model(files).enc.weight.shape == (64, 784)


def test_same_seed_same_numbers_other_seed_other_numbers(mnist, tmp_path, tiny_cfg):
    a = train(tiny_cfg, mnist, tmp_path / "a", progress=False)
    b = train(tiny_cfg, mnist, tmp_path / "b", progress=False)
    c = train(tiny_cfg.replace(seed=1), mnist, tmp_path / "c", progress=False)
    pd.testing.assert_frame_equal(a[DETERMINISTIC], b[DETERMINISTIC])
    assert not a.test_elbo.equals(c.test_elbo)


@pytest.mark.parametrize("sampling,binarize", [("epoch", "dynamic"), ("replacement", "fixed")])
def test_other_protocol_choices_train(mnist, tmp_path, tiny_cfg, sampling, binarize):
    cfg = tiny_cfg.replace(sampling=sampling, binarize=binarize, optimizer="torch_adagrad")
    df = train(cfg, mnist, tmp_path, progress=False)
    assert df.test_elbo.notna().all() and len(df) == 2


def test_resume_after_a_crash_gives_the_same_csv(mnist, tmp_path, tiny_cfg, monkeypatch):
    cfg = tiny_cfg.replace(samples=4000)
    full = train(cfg, mnist, tmp_path / "full", progress=False)

    real_write, calls = writes.atomic_write_bytes, []

    def crash_on_second_checkpoint(path, data):
        if path.suffix == ".ckpt":
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated crash")
        real_write(path, data)

    monkeypatch.setattr("vaerepro.runs.folder.atomic_write_bytes", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, mnist, tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    # The JSON recorded the second checkpoint before the crash; it and the CSV did not land.
    assert len(pd.read_csv(tmp_path / "crashed" / "nz3-seed0.csv")) == 1
    resumed = train(cfg, mnist, tmp_path / "crashed", progress=False, resume=True)
    pd.testing.assert_frame_equal(full[DETERMINISTIC], resumed[DETERMINISTIC])


def test_divergence_stops_with_nz_and_sample_count(mnist, tmp_path, tiny_cfg):
    with pytest.raises(TrainingDiverged, match=r"N_z=3.*between samples 0 and 1000"):
        train(tiny_cfg.replace(lr=1e30, adagrad_warmup=0), mnist, tmp_path, progress=False)
