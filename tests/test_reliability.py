"""Crash safety: SIGKILL at random moments, stop signals, a full disk, a vanished folder,
then --resume; guard rails."""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from vaerepro.cli import main
from vaerepro.core.errors import RunFolderError, TrainingDiverged
from vaerepro.core.optim import Adagrad
from vaerepro.runs.layout import CSV_COLUMNS
from vaerepro.runs.loop import train
from vaerepro.runs.writes import folder_lock

DETERMINISTIC = [c for c in CSV_COLUMNS if c not in ("wall_s", "train_samples_per_s")]
RUN = [
    "--nz",
    "3",
    "--samples",
    "10000",
    "--eval-every",
    "2000",
    "--train-size",
    "5000",
    "--no-progress",
    "--no-plot",
    "--device",
    "cpu",
]

# Runs the CLI, but sends itself signals inside given fsyncs: in the middle of an atomic
# write, after the temporary file is written and before it is renamed. argv[1]: "N:SIG,..."
SIGNAL_IN_FSYNC = """
import os, signal, sys
import vaerepro.runs.writes as writes
plan = {int(n): getattr(signal, s) for n, s in (x.split(":") for x in sys.argv[1].split(","))}
calls = [0]; real = os.fsync
def fsync(fd):
    calls[0] += 1
    if calls[0] in plan:
        os.kill(os.getpid(), plan[calls[0]])
    real(fd)
writes.os.fsync = fsync
from vaerepro.cli import main
sys.exit(main(sys.argv[2:]))
"""


# a resumed run is compared on its CSVs; its figures are tested elsewhere (test_plots, test_cli)
RESUME = ["--no-plot", "--no-progress"]


def _cli(args, data_root):
    cmd = [sys.executable, "-m", "vaerepro", "reproduce", *args, "--data-root", str(data_root)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _csv(folder) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / "nz3-seed0.csv")


def _kill_moment(uninterrupted: pd.DataFrame, seed: int) -> float:
    """Seconds after run.json appears: within the first 80% of the uninterrupted run's
    training and evaluation (its last wall_s), so that the kill lands mid-run on any CPU."""
    return random.Random(seed).uniform(0.0, 0.8 * uninterrupted.wall_s.iloc[-1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("full")
    proc = _cli([*RUN, "--out", str(out)], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    return _csv(out)


def _resume_and_compare(out, data_root, uninterrupted):
    proc = _cli(["--resume", str(out), *RESUME], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    pd.testing.assert_frame_equal(_csv(out)[DETERMINISTIC], uninterrupted[DETERMINISTIC])
    assert not list(Path(out).glob(".*.tmp"))  # stale temporary files are cleaned up


@pytest.mark.parametrize("kill_seed", range(5))
def test_sigkill_at_a_random_moment_then_resume(tmp_path, data_root, uninterrupted, kill_seed):
    out = tmp_path / "run"
    proc = _cli([*RUN, "--out", str(out)], data_root)
    while not (out / "run.json").exists():  # the run has started (data loaded, folder locked)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(_kill_moment(uninterrupted, kill_seed))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not after it had finished
    _resume_and_compare(out, data_root, uninterrupted)


def _signal_in_fsync(plan: str, out: Path, data_root) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", SIGNAL_IN_FSYNC, plan, "reproduce", *RUN]
    cmd += ["--out", str(out), "--data-root", str(data_root)]
    return subprocess.run(cmd, capture_output=True, text=True)


# fsyncs: run.json 1-2, model JSON 3-4, empty CSV 5-6, then per evaluation the model JSON
# (recording the checkpoint's SHA-256) 7-8, ckpt 9-10, CSV 11-12, then JSON 13-14, ckpt 15-16,
# CSV 17-18: odd ones fall between writing a temporary file and renaming it.
@pytest.mark.parametrize("nth_fsync", [7, 9, 11, 15])
def test_sigkill_during_a_checkpoint_write_then_resume(
    tmp_path, data_root, uninterrupted, nth_fsync
):
    out = tmp_path / "run"
    proc = _signal_in_fsync(f"{nth_fsync}:SIGKILL", out, data_root)
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".*.vaerepro-*.tmp"))  # killed between writing and renaming
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
    assert "SIGINT interrupted the run at samples=" in err and f"--resume {out}" in err
    assert json.loads((out / "nz3-seed0.json").read_text())["status"] == "interrupted"
    _resume_and_compare(out, data_root, uninterrupted)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"])
def test_other_stop_signals_checkpoint_like_sigint(tmp_path, data_root, uninterrupted, name):
    """Sent at the first evaluation's checkpoint write (fsync 9): the run finishes that
    write, checkpoints again, records "interrupted" and exits with 128 + the signal."""
    out = tmp_path / "run"
    signum = getattr(signal, name)
    proc = _signal_in_fsync(f"9:{name}", out, data_root)
    assert proc.returncode == 128 + signum, proc.stderr
    assert f"{name} interrupted the run at samples=2000" in proc.stderr
    assert f"Resume with: vaerepro reproduce --resume {out}" in proc.stderr
    meta = json.loads((out / "nz3-seed0.json").read_text())
    assert meta["status"] == "interrupted"
    assert torch.load(out / "nz3-seed0.ckpt", weights_only=True)["samples"] == 2000
    _resume_and_compare(out, data_root, uninterrupted)


def test_a_second_signal_during_the_checkpoint_write_is_harmless(
    tmp_path, data_root, uninterrupted
):
    """SIGTERM during the first evaluation's JSON write; SIGTERM and SIGINT again while the
    interrupt's own checkpoint is between write and rename (fsync 15)."""
    out = tmp_path / "run"
    proc = _signal_in_fsync("7:SIGTERM,15:SIGTERM,16:SIGINT", out, data_root)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    ckpt = (out / "nz3-seed0.ckpt").read_bytes()
    recorded = json.loads((out / "nz3-seed0.json").read_text())["checkpoints"][-1]
    assert recorded["sha256"] == hashlib.sha256(ckpt).hexdigest()
    _resume_and_compare(out, data_root, uninterrupted)


def test_second_process_on_the_same_folder_is_refused(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    with folder_lock(out):
        assert not list(out.iterdir())  # the lock is on the folder: no file to delete
        rc = main(["reproduce", *RUN, "--out", str(out), "--data-root", str(data_root)])
    assert rc == 2 and f"in use by another vaerepro process (pid {os.getpid()})" in (
        capsys.readouterr().err
    )
    assert not list(out.glob("nz*"))
    # released (as it is when a process dies): the run goes ahead, and leaves no lock file
    short = ["--samples", "2000", "--eval-every", "2000"]  # one evaluation is enough here
    argv = ["reproduce", *RUN, *short, "--out", str(out), "--data-root", str(data_root)]
    assert main(argv) == 0
    assert not (out / ".lock").exists()


def test_a_vanished_run_folder_stops_the_run(tmp_path, data_root):
    out = tmp_path / "run"
    proc = _cli([*RUN, "--out", str(out)], data_root)
    while not (out / "nz3-seed0.ckpt").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    while out.exists():  # a temporary file may appear while the tree is being removed
        shutil.rmtree(out, ignore_errors=True)
    assert proc.wait() == 2
    err = proc.stderr.read()
    assert f"run folder {out} was deleted or replaced while this run was writing" in err
    assert "Traceback" not in err
    assert not out.exists()  # not recreated


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file but the writer's own temporary ones (removed when a write fails)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and ".vaerepro-" not in p.name
    }


def test_a_full_disk_mid_run_is_a_clear_error_and_resumable(
    tmp_path, data_root, uninterrupted, capsys, monkeypatch
):
    """ENOSPC at the second checkpoint's fsync: the folder stays exactly as it was at the
    fault (the last good CSV and checkpoint), and --resume completes the same numbers."""
    out = tmp_path / "run"
    real, calls, at_fault = os.fsync, [0], {}

    def fsync(fd):
        calls[0] += 1
        if calls[0] == 15:
            at_fault.update(_snapshot(out))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    argv = ["reproduce", *RUN, "--out", str(out), "--data-root", str(data_root)]
    assert main(argv) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"cannot write {out / 'nz3-seed0.ckpt'}: No space left on device" in err
    assert f"continue with: vaerepro reproduce --resume {out}" in err
    assert _snapshot(out) == at_fault and "nz3-seed0.ckpt" in at_fault
    _resume_and_compare(out, data_root, uninterrupted)


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
    assert torch.load(tmp_path / "nz3-seed0.ckpt", weights_only=True)["samples"] == 1000
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


# --- Wake-sleep and parallel jobs resume like a single AEVB run -----------------------------


@pytest.fixture(scope="module")
def uninterrupted_wakesleep(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("ws")
    proc = _cli([*RUN, "--method", "wakesleep", "--out", str(out)], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    return pd.read_csv(out / "wakesleep-nz3-seed0.csv")


@pytest.mark.parametrize("kill_seed", range(2))
def test_wakesleep_resumes_after_sigkill(tmp_path, data_root, uninterrupted_wakesleep, kill_seed):
    out = tmp_path / "run"
    proc = _cli([*RUN, "--method", "wakesleep", "--out", str(out)], data_root)
    while not (out / "run.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(_kill_moment(uninterrupted_wakesleep, kill_seed))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not after it had finished
    proc = _cli(["--resume", str(out), *RESUME], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    resumed = pd.read_csv(out / "wakesleep-nz3-seed0.csv")[DETERMINISTIC]
    pd.testing.assert_frame_equal(resumed, uninterrupted_wakesleep[DETERMINISTIC])


# the later --nz and --samples win; 20,000 samples keep nz10 queued when the sweep stops
SWEEP = [*RUN, "--nz", "3", "5", "10", "--samples", "20000", "--threads", "1"]


SWEEP_MODELS = ("nz3-seed0.csv", "nz5-seed0.csv", "nz10-seed0.csv")


@pytest.fixture(scope="module")
def uninterrupted_sweep(tmp_path_factory, data_root) -> dict[str, pd.DataFrame]:
    """The CSVs of SWEEP trained one model at a time, without a stop."""
    out = tmp_path_factory.mktemp("sweep")
    proc = _cli([*SWEEP, "--jobs", "1", "--out", str(out)], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    return {name: pd.read_csv(out / name)[DETERMINISTIC] for name in SWEEP_MODELS}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_a_parallel_sweep_stops_and_resumes(tmp_path, data_root, uninterrupted_sweep, stop):
    """Stopping `--jobs 2` with a model still queued (SIGINT: forwarded to the workers, which
    checkpoint, and the sweep ends; SIGKILL: the workers get SIGTERM from the kernel as their
    parent dies) and resuming gives the CSVs of an uninterrupted run."""
    out = tmp_path / "run"
    proc = _cli([*SWEEP, "--jobs", "2", "--out", str(out)], data_root)
    while not (out / "nz5-seed0.csv").exists() or len(_rows(out / "nz5-seed0.csv")) < 2:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(stop)
    rc = proc.wait(timeout=60)  # a queued model must not keep the stopped sweep waiting
    assert rc == (128 + signal.SIGINT if stop == signal.SIGINT else -signal.SIGKILL)
    deadline = time.time() + 30
    while _locked(out):  # SIGKILL: the workers still hold the folder while they wind down
        assert time.time() < deadline
        time.sleep(0.1)
    proc = _cli(["--resume", str(out), "--jobs", "2", *RESUME], data_root)
    assert proc.wait() == 0, proc.stderr.read()
    for name in SWEEP_MODELS:
        pd.testing.assert_frame_equal(
            pd.read_csv(out / name)[DETERMINISTIC], uninterrupted_sweep[name]
        )


def _rows(csv: Path) -> list[str]:
    return csv.read_text().strip().splitlines()[1:]


def _locked(folder: Path) -> bool:
    """Whether some process (a run, or a --jobs worker) holds the folder's lock."""
    try:
        with folder_lock(folder):
            return False
    except RunFolderError:
        return True
