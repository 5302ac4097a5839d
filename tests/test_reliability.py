"""Crash safety: SIGKILL at random moments and SIGINT, then --resume; guard rails."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from vaerepro.cli import main
from vaerepro.optim import Adagrad
from vaerepro.store import CSV_COLUMNS, folder_lock
from vaerepro.train import TrainingDiverged, train

DETERMINISTIC = [c for c in CSV_COLUMNS if c not in ("wall_s", "train_samples_per_s")]
RUN = [
    "--nz",
    "3",
    "--samples",
    "20000",
    "--eval-every",
    "2000",
    "--train-size",
    "5000",
    "--no-progress",
    "--no-plot",
    "--device",
    "cpu",
]

# Runs the CLI, but SIGKILLs itself inside the Nth fsync: in the middle of an atomic write,
# after the temporary file is written and before it is renamed.
KILL_IN_FSYNC = """
import os, signal, sys
import vaerepro.store as store
n = int(sys.argv[1]); calls = [0]; real = os.fsync
def fsync(fd):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)
store.os.fsync = fsync
from vaerepro.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _cli(args, data_root):
    cmd = [sys.executable, "-m", "vaerepro", "reproduce", *args, "--data-root", str(data_root)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _csv(folder) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / "nz3-seed0.csv")[DETERMINISTIC]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("full")
    proc = _cli([*RUN, "--out", str(out)], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    return _csv(out)


def _resume_and_compare(out, data_root, uninterrupted):
    proc = _cli(["--resume", str(out)], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    pd.testing.assert_frame_equal(_csv(out), uninterrupted)
    assert not list(Path(out).glob(".*.tmp"))  # stale temporary files are cleaned up


@pytest.mark.parametrize("kill_seed", range(5))
def test_sigkill_at_a_random_moment_then_resume(tmp_path, data_root, uninterrupted, kill_seed):
    out = tmp_path / "run"
    proc = _cli([*RUN, "--out", str(out)], data_root)
    while not (out / "run.json").exists():  # the run has started (data loaded, folder locked)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(random.Random(kill_seed).uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _resume_and_compare(out, data_root, uninterrupted)


# fsyncs: run.json 1-2, model JSON 3-4, empty CSV 5-6, then per evaluation CSV 7-8, ckpt 9-10,
# CSV 11-12, ckpt 13-14: odd ones fall between writing a temporary file and renaming it.
@pytest.mark.parametrize("nth_fsync", [7, 9, 13])
def test_sigkill_during_a_checkpoint_write_then_resume(
    tmp_path, data_root, uninterrupted, nth_fsync
):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-c",
        KILL_IN_FSYNC,
        str(nth_fsync),
        "reproduce",
        *RUN,
        "--out",
        str(out),
        "--data-root",
        str(data_root),
    ]
    assert subprocess.run(cmd, capture_output=True).returncode == -signal.SIGKILL
    assert list(out.glob(".*.tmp"))  # killed between writing the temp file and renaming it
    _resume_and_compare(out, data_root, uninterrupted)


def test_sigint_checkpoints_and_resumes(tmp_path, data_root, uninterrupted):
    out = tmp_path / "run"
    proc = _cli([*RUN, "--out", str(out)], data_root)
    csv = out / "nz3-seed0.csv"
    while not (csv.exists() and len(pd.read_csv(csv)) >= 1):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait() == 130
    err = proc.stderr.read()
    assert "interrupted at samples=" in err and f"--resume {out}" in err
    assert json.loads((out / "nz3-seed0.json").read_text())["status"] == "running"
    _resume_and_compare(out, data_root, uninterrupted)


def test_second_process_on_the_same_folder_is_refused(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    with folder_lock(out):
        rc = main(["reproduce", *RUN, "--out", str(out), "--data-root", str(data_root)])
    assert rc == 2 and f"in use by another vaerepro process (pid {os.getpid()})" in (
        capsys.readouterr().err
    )
    assert not list(out.glob("nz*"))
    # released (as it is when a process dies): the run goes ahead
    assert main(["reproduce", *RUN, "--out", str(out), "--data-root", str(data_root)]) == 0


def test_nan_stops_the_run_and_keeps_the_last_good_state(mnist, tmp_path, tiny_cfg, monkeypatch):
    cfg = tiny_cfg.replace(samples=3000)
    real_step, steps = Adagrad.step, [0]

    def poisoned_step(self, closure=None):  # corrupt a weight in the 2nd interval
        real_step(self)
        steps[0] += 1
        if steps[0] == 15:
            self.param_groups[0]["params"][0].data[0, 0] = float("inf")

    monkeypatch.setattr(Adagrad, "step", poisoned_step)
    with pytest.raises(
        TrainingDiverged,
        match=r"N_z=3.*between samples 1000 and 2000.*"
        r"last good state \(samples=1000\)",
    ):
        train(cfg, mnist, tmp_path, progress=False)
    monkeypatch.undo()
    assert pd.read_csv(tmp_path / "nz3-seed0.csv").samples.tolist() == [1000]
    assert torch.load(tmp_path / "nz3-seed0.ckpt", weights_only=False)["samples"] == 1000
    df = train(cfg, mnist, tmp_path, progress=False, resume=True)  # resumable
    assert df.samples.tolist() == [1000, 2000, 3000]


def test_cuda_or_mps_requested_where_absent(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "mps"):
        args = ["reproduce", *RUN, "--device", device, "--out", str(tmp_path / "r")]
        assert main([*args, "--data-root", str(data_root)]) == 2
        assert f"--device {device} requested" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
