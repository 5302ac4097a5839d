import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import DETERMINISTIC, crash_at_the_second_checkpoint, refused, tiny

from vaerepro.core.config import TrainConfig
from vaerepro.core.errors import TrainingDiverged
from vaerepro.runs import writes
from vaerepro.runs.folder import load_model
from vaerepro.runs.layout import CSV_COLUMNS, RunFiles
from vaerepro.runs.loop import train, train_together


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_finished_run(folder, cfg: TrainConfig, df: pd.DataFrame) -> dict:
    """The files of a finished model and what its CSV must hold: a row at every eval_every
    samples, the clock and rate positive and the clock rising, the ELBO = loglik - KL below
    0 and rising over the run; the JSON records the config and the SHA-256 of the weights and
    of the last checkpoint. Returns the JSON."""
    files = RunFiles.of_config(folder, cfg)
    assert all(p.is_file() for p in (files.csv, files.json, files.ckpt, files.weights))
    assert df.samples.tolist() == list(range(cfg.eval_every, cfg.samples + 1, cfg.eval_every))
    # what train returned, as the CSV writes it (6 decimals)
    pd.testing.assert_frame_equal(pd.read_csv(files.csv), df, check_exact=False, rtol=0, atol=6e-7)
    assert list(df.columns) == CSV_COLUMNS
    assert (df.wall_s > 0).all() and (df.wall_s.diff().dropna() > 0).all()
    assert (df.train_samples_per_s > 0).all()
    for split in ("train", "test"):
        elbo = df[f"{split}_elbo"]
        assert (elbo < 0).all() and elbo.iloc[-1] > elbo.iloc[0]
        loglik_minus_kl = df[f"{split}_loglik"] - df[f"{split}_kl"]
        assert elbo.values == pytest.approx(loglik_minus_kl.values, abs=1e-4)
        assert (df[f"{split}_kl"] >= 0).all()
    meta = json.loads(files.json.read_text())
    assert meta["config"] == cfg.to_dict() and meta["status"] == "finished"
    assert meta["weights_sha256"] == _sha256(files.weights)
    assert meta["checkpoints"][-1] == {"samples": cfg.samples, "sha256": _sha256(files.ckpt)}
    assert torch.load(files.ckpt, weights_only=True)["samples"] == cfg.samples
    return meta


@pytest.mark.slow  # the paper's model, 300 minibatches and three evaluations of 60,000 images
def test_a_few_hundred_steps_raise_the_elbo(mnist, tmp_path):
    cfg = TrainConfig(
        nz=20, samples=30_000, eval_every=10_000
    )  # 300 minibatches of the paper model
    df = train(cfg, mnist, tmp_path, progress=False)
    assert df.samples.tolist() == [10_000, 20_000, 30_000]
    assert df.test_elbo.is_monotonic_increasing and df.train_elbo.is_monotonic_increasing
    assert df.test_elbo.iloc[-1] > df.test_elbo.iloc[0] + 5  # nats per datapoint
    assert df.train_elbo.iloc[-1] > -250  # untrained: about -543 (= -784 log 2)
    _assert_finished_run(tmp_path, cfg, df)


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory, mnist):
    """conftest.tiny_cfg trained once for the module (its folder, its rows)."""
    cfg = TrainConfig(
        nz=3, hidden=64, samples=2000, eval_every=1000, train_size=2000, adagrad_warmup=5
    )
    folder = tmp_path_factory.mktemp("tiny-trained")
    return folder, train(cfg, mnist, folder, progress=False, preset="paper")


def test_csv_and_json_follow_the_contract(tiny_trained, tiny_cfg):
    folder, df = tiny_trained
    files = RunFiles.of(folder, tiny_cfg.nz, tiny_cfg.seed)
    assert files.csv.name == "nz3-seed0.csv" and files.weights.exists()
    meta = _assert_finished_run(folder, tiny_cfg, df)
    assert len(df) == 2
    assert meta["seed"] == 0 and meta["preset"] == "paper"
    assert meta["versions"]["torch"] == torch.__version__ and meta["device"]["type"] == "cpu"
    assert meta["device"]["threads"] == torch.get_num_threads()
    assert "commit" in meta["git"] and meta["final"]["test_elbo"] == pytest.approx(
        df.test_elbo.iloc[-1]
    )
    assert load_model(files).enc.weight.shape == (64, 784)


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_trained, mnist, tmp_path, tiny_cfg):
    _, a = tiny_trained
    b = train(tiny_cfg, mnist, tmp_path / "b", progress=False)
    c = train(tiny_cfg.replace(seed=1), mnist, tmp_path / "c", progress=False)
    pd.testing.assert_frame_equal(a[DETERMINISTIC], b[DETERMINISTIC])
    assert not a.test_elbo.equals(c.test_elbo)


@pytest.mark.parametrize("sampling,binarize", [("epoch", "dynamic"), ("replacement", "fixed")])
def test_other_protocol_choices_train(mnist, tmp_path, tiny_cfg, sampling, binarize):
    cfg = tiny_cfg.replace(sampling=sampling, binarize=binarize, optimizer="torch_adagrad")
    df = train(cfg, mnist, tmp_path, progress=False)
    assert df.test_elbo.notna().all() and len(df) == 2
    meta = _assert_finished_run(tmp_path, cfg, df)
    assert (meta["config"]["sampling"], meta["config"]["binarize"]) == (sampling, binarize)


@pytest.mark.parametrize("moved", [False, True])
def test_resume_after_a_crash_gives_the_same_csv(mnist, tmp_path, tiny_cfg, monkeypatch, moved):
    """moved: the stopped run's folder is copied elsewhere, its .ckpt included, and the
    original removed (another machine: results/in-progress) before the resume."""
    cfg = tiny_cfg.replace(samples=4000)
    full = train(cfg, mnist, tmp_path / "full", progress=False)

    crash_at_the_second_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, mnist, tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    # The JSON recorded the second checkpoint before the crash; it and the CSV did not land.
    assert len(pd.read_csv(tmp_path / "crashed" / "nz3-seed0.csv")) == 1
    run = tmp_path / "crashed"
    if moved:
        run = Path(shutil.copytree(run, tmp_path / "elsewhere"))
        shutil.rmtree(tmp_path / "crashed")
    resumed = train(cfg, mnist, run, progress=False, resume=True)
    pd.testing.assert_frame_equal(full[DETERMINISTIC], resumed[DETERMINISTIC])
    _assert_finished_run(run, cfg, resumed)


def test_checkpoint_every_writes_fewer_checkpoints_and_resumes(
    mnist, tmp_path, tiny_cfg, monkeypatch
):
    """--checkpoint-every 2000 of 6000 samples (an evaluation every 1000): checkpoints, CSV
    and JSON at 2000, 4000, 6000 only, the CSV of a plain run; a crash at the second
    checkpoint leaves the files of the first (2 rows) and resumes to the same CSV."""
    cfg = tiny_cfg.replace(samples=6000)
    full = train(cfg, mnist, tmp_path / "full", progress=False)
    real_write, written = writes.atomic_write_bytes, []

    def counting(path, data):
        written.append(path.suffix)
        real_write(path, data)

    monkeypatch.setattr("vaerepro.runs.folder.atomic_write_bytes", counting)
    sparse = train_together(
        [cfg], mnist, tmp_path / "sparse", progress=False, checkpoint_every=2000
    )
    monkeypatch.undo()
    assert written.count(".ckpt") == 3
    pd.testing.assert_frame_equal(full[DETERMINISTIC], sparse[0][DETERMINISTIC])

    crash_at_the_second_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_together([cfg], mnist, tmp_path / "crashed", progress=False, checkpoint_every=2000)
    monkeypatch.undo()
    assert len(pd.read_csv(tmp_path / "crashed" / "nz3-seed0.csv")) == 2
    resumed = train(cfg, mnist, tmp_path / "crashed", progress=False, resume=True)
    pd.testing.assert_frame_equal(full[DETERMINISTIC], resumed[DETERMINISTIC])


def test_checkpoint_every_must_be_a_multiple_of_the_evaluation(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "run"
    refused(tiny(out, None, "--checkpoint-every", "1500"), capsys, "multiple of the evaluation")
    assert not out.exists()


def test_divergence_stops_with_nz_and_sample_count(mnist, tmp_path, tiny_cfg):
    with pytest.raises(TrainingDiverged, match=r"N_z=3.*between samples 0 and 1000"):
        train(tiny_cfg.replace(lr=1e30, adagrad_warmup=0), mnist, tmp_path, progress=False)


def test_float64_training_follows_float32(mnist, tmp_path, tiny_cfg):
    """--dtype float64 (the authors' precision) trains and evaluates in float64 from the same
    initial weights: its CSV is a finished run's and equals float32's within float32 rounding
    (a short run is not yet chaotic), but not to the last digit."""
    f32 = train(tiny_cfg, mnist, tmp_path / "f32", progress=False)
    cfg = tiny_cfg.replace(dtype="float64")
    f64 = train(cfg, mnist, tmp_path / "f64", progress=False)
    _assert_finished_run(tmp_path / "f64", cfg, f64)
    weights = load_model(RunFiles.of_config(tmp_path / "f64", cfg)).state_dict().values()
    assert all(w.dtype == torch.float64 for w in weights)
    cols = [f"{split}_{term}" for split in ("train", "test") for term in ("elbo", "loglik", "kl")]
    diff = (f64[cols] - f32[cols]).abs().to_numpy()
    assert diff.max() < 1e-3 and diff.max() > 0, diff
