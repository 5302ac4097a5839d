"""Crash safety: SIGKILL at random moments, stop signals, a full disk, a vanished folder,
then --resume; guard rails.

Every run here has one torch thread (`--threads 1`), so that a run killed in a process of its
own and resumed in pytest's process continues with the numbers of the uninterrupted run,
trained once per module in pytest's process. Kills land at moments chosen by the run's own
progress (rows in its CSV, fsyncs), never by wall-clock guesses: they hit mid-run on a fast
CPU and on a loaded one."""

import contextlib
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
from helpers import DETERMINISTIC, cli_process, rows, snapshot, wait_until

from vaerepro.cli import main
from vaerepro.core.errors import RunFolderError, TrainingDiverged
from vaerepro.core.optim import Adagrad
from vaerepro.runs.loop import train
from vaerepro.runs.provenance import vaerepro_command
from vaerepro.runs.writes import folder_lock

RUN = [
    "--nz",
    "3",
    "--samples",
    "10000",
    "--eval-every",
    "2000",
    "--train-size",
    "5000",
    "--hidden",  # a small model: the run's seconds go to its evaluations and writes
    "64",
    "--adagrad-warmup",  # the first checkpoint (20 minibatches) is inside the warm-up, the
    "30",  # later ones after it: a resume restores both phases
    "--threads",
    "1",
    "--no-progress",
    "--no-plot",
    "--no-estimate",
    "--device",
    "cpu",
]
ROWS = 5  # evaluations of RUN

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
RESUME = ["--no-plot", "--no-progress", "--threads", "1"]


def _reproduce(out: Path, data_root, *args: str) -> list[str]:
    return ["reproduce", *RUN, *args, "--out", str(out), "--data-root", str(data_root)]


def _csv(folder, name: str = "nz3-seed0.csv") -> pd.DataFrame:
    return pd.read_csv(Path(folder) / name)


def _train_uninterrupted(out: Path, data_root, *args: str) -> None:
    """RUN (with `args`) in pytest's process, without a stop."""
    assert main(_reproduce(out, data_root, *args)) == 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("full") / "run"
    _train_uninterrupted(out, data_root)
    df = _csv(out)
    assert df.samples.tolist() == [2000, 4000, 6000, 8000, 10000]
    assert df.test_elbo.iloc[-1] > df.test_elbo.iloc[0] + 1  # it trains: a resume that lost
    return df  # the model's or the optimizer's state would log other numbers


def _resume_and_compare(out, data_root, uninterrupted, name: str = "nz3-seed0.csv", *args):
    """--resume in pytest's process, then the CSV equals the uninterrupted run's."""
    argv = ["reproduce", "--resume", str(out), *RESUME, *args, "--data-root", str(data_root)]
    assert main(argv) == 0
    pd.testing.assert_frame_equal(_csv(out, name)[DETERMINISTIC], uninterrupted[DETERMINISTIC])
    assert json.loads((Path(out) / name).with_suffix(".json").read_text())["status"] == "finished"
    assert not list(Path(out).glob(".*.tmp"))  # stale temporary files are cleaned up


def _stop_mid_run(proc: subprocess.Popen, csv: Path) -> None:
    """SIGSTOP `proc` and check that it is still running and has not logged its last row: a
    signal sent before its SIGCONT lands mid-run, whatever the machine's load."""
    proc.send_signal(signal.SIGSTOP)
    logged = rows(csv)
    assert proc.poll() is None and logged < ROWS, f"the run ended first ({logged} rows)"


def _kill_at_a_random_moment(proc, csv: Path, uninterrupted: pd.DataFrame, seed: int) -> int:
    """SIGKILL `proc` at a random moment of its run, surely mid-run: once its CSV has k rows
    (k drawn from 0 to ROWS - 2; 0: the CSV exists, the model has started), after a random
    part of half an evaluation interval as the uninterrupted run took it on this machine
    (before row k + 2 unless this run is 4x faster). The process is stopped first, so that
    the check that it has not logged its last row cannot race with its end. Returns k."""
    rng = random.Random(seed)
    k = rng.randrange(ROWS - 1)
    wait_until(proc, lambda: csv.exists() and rows(csv) >= k)
    time.sleep(rng.uniform(0.0, 0.5 * uninterrupted.wall_s.diff().median()))
    _stop_mid_run(proc, csv)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # died by the signal
    assert rows(csv) < ROWS
    return k


@pytest.mark.slow
@pytest.mark.parametrize("kill_seed", range(5))
def test_sigkill_at_a_random_moment_then_resume(tmp_path, data_root, uninterrupted, kill_seed):
    out = tmp_path / "run"
    proc = cli_process(*_reproduce(out, data_root))
    _kill_at_a_random_moment(proc, out / "nz3-seed0.csv", uninterrupted, kill_seed)
    _resume_and_compare(out, data_root, uninterrupted)


def _signal_in_fsync(plan: str, out: Path, data_root) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", SIGNAL_IN_FSYNC, plan, *_reproduce(out, data_root)]
    return subprocess.run(cmd, capture_output=True, text=True)


@contextlib.contextmanager
def _signals_in_fsync(plan: dict[int, int]):
    """In pytest's process: within the block, the nth os.fsync (n in plan) first sends this
    process the signal plan[n], in the middle of an atomic write (as SIGNAL_IN_FSYNC does in
    a process of its own). A signal that arrives while the run under test has no handler of
    its own is recorded instead of ending pytest, and fails the test."""
    real, calls, unhandled = os.fsync, [0], []

    def fsync(fd):
        calls[0] += 1
        if calls[0] in plan:
            os.kill(os.getpid(), plan[calls[0]])
        real(fd)

    previous = {
        s: signal.signal(s, lambda signum, frame: unhandled.append(signum))
        for s in set(plan.values())
    }
    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = real
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert not unhandled, f"signals the run did not handle: {unhandled}"


# fsyncs: run.json 1-2, model JSON 3-4, empty CSV 5-6, then per evaluation the model JSON
# (recording the checkpoint's SHA-256) 7-8, ckpt 9-10, CSV 11-12, then JSON 13-14, ckpt 15-16,
# CSV 17-18: odd ones fall between writing a temporary file and renaming it.
@pytest.mark.slow
@pytest.mark.parametrize("nth_fsync", [7, 9, 11, 15])
def test_sigkill_during_a_checkpoint_write_then_resume(
    tmp_path, data_root, uninterrupted, nth_fsync
):
    out = tmp_path / "run"
    proc = _signal_in_fsync(f"{nth_fsync}:SIGKILL", out, data_root)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list(out.glob(".*.vaerepro-*.tmp"))  # killed between writing and renaming
    _resume_and_compare(out, data_root, uninterrupted)


@pytest.mark.slow
def test_sigint_checkpoints_and_resumes(tmp_path, data_root, uninterrupted):
    out = tmp_path / "run"
    proc = cli_process(*_reproduce(out, data_root))
    csv = out / "nz3-seed0.csv"
    wait_until(proc, lambda: rows(csv) >= 1)
    _stop_mid_run(proc, csv)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait() == 130
    err = proc.stderr.read()
    assert "SIGINT interrupted the run at samples=" in err and f"--resume {out}" in err
    assert json.loads((out / "nz3-seed0.json").read_text())["status"] == "interrupted"
    assert 1 <= rows(csv) < ROWS
    _resume_and_compare(out, data_root, uninterrupted)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"])
def test_other_stop_signals_checkpoint_like_sigint(
    tmp_path, data_root, uninterrupted, capsys, name
):
    """Sent at the first evaluation's checkpoint write (fsync 9): the run finishes that
    write, checkpoints again, records "interrupted" and exits with 128 + the signal."""
    out = tmp_path / "run"
    signum = getattr(signal, name)
    with _signals_in_fsync({9: signum}):
        status = main(_reproduce(out, data_root))
    err = capsys.readouterr().err
    assert status == 128 + signum, err
    assert f"{name} interrupted the run at samples=2000" in err
    assert f"Resume with: {vaerepro_command('reproduce')} --resume {out}" in err
    meta = json.loads((out / "nz3-seed0.json").read_text())
    assert meta["status"] == "interrupted"
    assert torch.load(out / "nz3-seed0.ckpt", weights_only=True)["samples"] == 2000
    _resume_and_compare(out, data_root, uninterrupted)


def test_a_second_signal_during_the_checkpoint_write_is_harmless(
    tmp_path, data_root, uninterrupted, capsys
):
    """SIGTERM during the first evaluation's JSON write; SIGTERM and SIGINT again while the
    interrupt's own checkpoint is between write and rename (fsync 15)."""
    out = tmp_path / "run"
    with _signals_in_fsync({7: signal.SIGTERM, 15: signal.SIGTERM, 16: signal.SIGINT}):
        status = main(_reproduce(out, data_root))
    assert status == 128 + signal.SIGTERM, capsys.readouterr().err
    ckpt = (out / "nz3-seed0.ckpt").read_bytes()
    recorded = json.loads((out / "nz3-seed0.json").read_text())["checkpoints"][-1]
    assert recorded["sha256"] == hashlib.sha256(ckpt).hexdigest()
    _resume_and_compare(out, data_root, uninterrupted)


def test_second_process_on_the_same_folder_is_refused(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    with folder_lock(out):
        assert not list(out.iterdir())  # the lock is on the folder: no file to delete
        rc = main(_reproduce(out, data_root))
    assert rc == 2 and f"in use by another vaerepro process (pid {os.getpid()})" in (
        capsys.readouterr().err
    )
    assert not list(out.glob("nz*"))
    # released (as it is when a process dies): the run goes ahead, and leaves no lock file
    short = ["--samples", "2000", "--eval-every", "2000"]  # one evaluation is enough here
    assert main(_reproduce(out, data_root, *short)) == 0
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_a_vanished_run_folder_stops_the_run(tmp_path, data_root):
    out = tmp_path / "run"
    proc = cli_process(*_reproduce(out, data_root))
    wait_until(proc, lambda: (out / "nz3-seed0.ckpt").exists())
    _stop_mid_run(proc, out / "nz3-seed0.csv")  # nothing is written while the tree goes
    shutil.rmtree(out)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait() == 2
    err = proc.stderr.read()
    assert f"run folder {out} was deleted or replaced while this run was writing" in err
    assert "Traceback" not in err
    assert not out.exists()  # not recreated


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
            at_fault.update(snapshot(out, temporary=False))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(_reproduce(out, data_root)) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"cannot write {out / 'nz3-seed0.ckpt'}: No space left on device" in err
    assert f"continue with: {vaerepro_command('reproduce')} --resume {out}" in err
    assert snapshot(out, temporary=False) == at_fault and "nz3-seed0.ckpt" in at_fault
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

WAKESLEEP_CSV = "wakesleep-nz3-seed0.csv"


@pytest.fixture(scope="module")
def uninterrupted_wakesleep(tmp_path_factory, data_root) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("ws") / "run"
    _train_uninterrupted(out, data_root, "--method", "wakesleep")
    df = _csv(out, WAKESLEEP_CSV)
    assert len(df) == ROWS and df.test_elbo.iloc[-1] > df.test_elbo.iloc[0] + 1
    return df


@pytest.mark.slow
@pytest.mark.parametrize("kill_seed", range(2))
def test_wakesleep_resumes_after_sigkill(tmp_path, data_root, uninterrupted_wakesleep, kill_seed):
    out = tmp_path / "run"
    proc = cli_process(*_reproduce(out, data_root, "--method", "wakesleep"))
    _kill_at_a_random_moment(proc, out / WAKESLEEP_CSV, uninterrupted_wakesleep, kill_seed)
    _resume_and_compare(out, data_root, uninterrupted_wakesleep, WAKESLEEP_CSV)


MCEM_CSV = "mcem-nz3-seed0.csv"
MCEM = ["--method", "mcem", "--marginal-every", "4000", "--marginal-n", "20"]


@pytest.fixture(scope="module")
def uninterrupted_mcem(tmp_path_factory, data_root) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("mcem") / "run"
    _train_uninterrupted(out, data_root, *MCEM)
    df = _csv(out, MCEM_CSV)
    assert len(df) == ROWS and df.test_marginal.notna().tolist() == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert df.train_marginal.iloc[3] > df.train_marginal.iloc[1] + 1  # it trains
    return df


@pytest.mark.slow
@pytest.mark.parametrize("kill_seed", range(2))
def test_mcem_resumes_after_sigkill(tmp_path, data_root, uninterrupted_mcem, kill_seed):
    """The chains, the decoder's five updates per minibatch and the estimator's noise resume
    with the numbers of the uninterrupted run."""
    out = tmp_path / "run"
    proc = cli_process(*_reproduce(out, data_root, *MCEM))
    _kill_at_a_random_moment(proc, out / MCEM_CSV, uninterrupted_mcem, kill_seed)
    _resume_and_compare(out, data_root, uninterrupted_mcem, MCEM_CSV)


# the later --nz and --samples win; 20,000 samples keep nz10 queued when the sweep stops
SWEEP = ["--nz", "3", "5", "10", "--samples", "20000"]
SWEEP_MODELS = ("nz3-seed0.csv", "nz5-seed0.csv", "nz10-seed0.csv")


@pytest.fixture(scope="module")
def uninterrupted_sweep(tmp_path_factory, data_root) -> dict[str, pd.DataFrame]:
    """The CSVs of SWEEP trained one model at a time (in pytest's process), without a stop."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    _train_uninterrupted(out, data_root, *SWEEP, "--jobs", "1")
    return {name: _csv(out, name)[DETERMINISTIC] for name in SWEEP_MODELS}


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_a_parallel_sweep_stops_and_resumes(tmp_path, data_root, uninterrupted_sweep, stop):
    """Stopping `--jobs 2` with a model still queued (SIGINT: forwarded to the workers, which
    checkpoint, and the sweep ends; SIGKILL: the workers get SIGTERM from the kernel as their
    parent dies) and resuming gives the CSVs of an uninterrupted run."""
    out = tmp_path / "run"
    proc = cli_process(*_reproduce(out, data_root, *SWEEP, "--jobs", "2"))
    wait_until(proc, lambda: rows(out / "nz5-seed0.csv") >= 2)
    proc.send_signal(stop)
    rc = proc.wait(timeout=120)  # a queued model must not keep the stopped sweep waiting
    assert rc == (128 + signal.SIGINT if stop == signal.SIGINT else -signal.SIGKILL)
    wait_until(None, lambda: not _locked(out), timeout=60)  # SIGKILL: the workers wind down
    assert rows(out / "nz10-seed0.csv") == 0  # it was still queued
    # stopped mid-run: nz5 had 2 of its 10 rows (nz3, which started with it, may have ended
    # on a loaded machine, where the two workers' speeds differ)
    assert rows(out / "nz5-seed0.csv") < 10
    argv = ["reproduce", "--resume", str(out), "--jobs", "2", *RESUME]
    assert main([*argv, "--data-root", str(data_root)]) == 0
    for name in SWEEP_MODELS:
        pd.testing.assert_frame_equal(_csv(out, name)[DETERMINISTIC], uninterrupted_sweep[name])


def _locked(folder: Path) -> bool:
    """Whether some process (a run, or a --jobs worker) holds the folder's lock."""
    try:
        with folder_lock(folder):
            return False
    except RunFolderError:
        return True
