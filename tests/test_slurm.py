"""`--executor slurm` without a cluster: submitit's local executor runs the same jobs as local
processes (VAEREPRO_SUBMITIT_CLUSTER=local). A sweep submitted and completed; a job preempted
mid-run (SIGUSR2, SLURM's warning before preemption), requeued, with the CSV of an
uninterrupted run; a job that raises, reported by `status` as failed with its log; `status` on
local run folders in every state. The real SLURM cluster: tests/slurm/ (`nox -s slurm`)."""

import json
import os
import signal
import sys

import cloudpickle
import pandas as pd
import pytest
import torch
from helpers import DETERMINISTIC, TINY

from vaerepro.cli import main
from vaerepro.core.config import Sweep, TrainConfig, preset
from vaerepro.runs import loop
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.progress import SweepProgress
from vaerepro.runs.records import write_run_json
from vaerepro.runs.slurm import SlurmOptions, SlurmRunner, TrainJob, read_jobs, requeue
from vaerepro.runs.sweep import plan_sweep
from vaerepro.runs.writes import folder_lock

# TINY but for its last option, --jobs 1, which is the local executor's
SUBMIT = ["reproduce", *TINY[:-2], "--executor", "slurm"]


@pytest.fixture(autouse=True)
def _local_cluster(monkeypatch, data_root):
    monkeypatch.setenv("VAEREPRO_SUBMITIT_CLUSTER", "local")
    monkeypatch.setenv("VAEREPRO_DATA", str(data_root))


def status(run, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["status", str(run)])
    return rc, capsys.readouterr().out


@pytest.mark.slow
def test_sweep_submitted_and_completed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*SUBMIT, "--nz", "3", "5", "--wait", "--out", str(run)]) == 0
    jobs = read_jobs(run)
    assert sorted(jobs) == ["nz3-seed0", "nz5-seed0"]
    assert all(r["job_id"] and os.path.exists(r["stderr"]) for r in jobs.values())
    rc, out = status(run, capsys)
    assert rc == 0 and "2 model(s): 2 finished" in out, out
    assert f"job {jobs['nz3-seed0']['job_id']}" in out
    # resubmitting a finished sweep submits no job and trains nothing
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("nz*")}
    assert main(["reproduce", "--resume", str(run), "--executor", "slurm", "--no-plot"]) == 0
    assert read_jobs(run) == jobs
    assert before == {p.name: p.stat().st_mtime_ns for p in run.glob("nz*")}


class PreemptedOnce(TrainJob):
    """A TrainJob whose first run gets SIGUSR2, the signal SLURM (and submitit's local
    controller, at a job's time limit) sends before preempting, at its first evaluation;
    its requeued run (checkpoint() gives a plain TrainJob) is not signalled."""

    def __call__(self):
        class SignalAtFirstRow(SweepProgress):
            def advance(self, cfg, samples, row=None):
                super().advance(cfg, samples, row)
                if row is not None and samples == cfg.eval_every:
                    os.kill(os.getpid(), signal.SIGUSR2)

        loop.SweepProgress = SignalAtFirstRow
        return super().__call__()

    def checkpoint(self, *args, **kwargs):
        import submitit

        plain = TrainJob(
            self.cfg, self.out, self.device, self.preset, self.threads, self.data_root, False
        )
        return submitit.helpers.DelayedSubmission(plain)


def submit_jobs(run, nzs, samples, job_class=None, data_root=None) -> int:
    """Plan a TINY sweep of `nzs` into `run` and submit it with --wait; the runner's
    exit status."""
    base = preset("paper").replace(
        samples=samples, eval_every=1000, train_size=2000, hidden=64, adagrad_warmup=5
    )
    sweep = Sweep.of("paper", base, nzs, [0], None)
    with folder_lock(run):
        plan = plan_sweep(
            sweep, run, torch.device("cpu"), resume=False, overwrite=False, jobs=1, threads=1
        )
        write_run_json(sweep, data_root, run)
        runner = SlurmRunner(SlurmOptions(cluster="local", wait=True), job_class=job_class)
        with SweepProgress(plan.pending, enabled=False) as progress:
            return runner.run(plan, progress)


@pytest.mark.slow
def test_preempted_job_requeues_and_gives_the_uninterrupted_csv(tmp_path, capsys):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job unpickles it
    run = tmp_path / "run"
    assert submit_jobs(run, [3], 4000, PreemptedOnce) == 0
    log = open(read_jobs(run)["nz3-seed0"]["stderr"]).read()
    log += open(read_jobs(run)["nz3-seed0"]["stdout"]).read()
    assert "SIGUSR2 interrupted the run at samples=1000" in log, log
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log, log
    assert "resuming from its checkpoint at samples=1000" in log, log
    rc, out = status(run, capsys)
    assert rc == 0 and "1 model(s): 1 finished" in out, out

    plain = tmp_path / "plain"
    cmd = ["reproduce", *TINY, "--samples", "4000", "--threads", "1", "--nz", "3"]
    assert main([*cmd, "--out", str(plain)]) == 0
    ours, theirs = (pd.read_csv(RunFiles.of(r, 3, 0).csv) for r in (run, plain))
    assert len(ours) == 4
    pd.testing.assert_frame_equal(ours[DETERMINISTIC], theirs[DETERMINISTIC])


@pytest.mark.slow
def test_failed_job_is_reported_with_its_log(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # after planning, another writer leaves a model of another config under this model's name
    other = TrainConfig(nz=3, seed=0, hidden=7)
    files = RunFiles.of(run, 3, 0)

    class Clobbered(TrainJob):
        def __call__(self):
            files.json.write_text(json.dumps({"config": other.to_dict(), "status": "running"}))
            return super().__call__()

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert submit_jobs(run, [3], 2000, Clobbered) == 2
    rc, out = status(run, capsys)
    assert rc == 1
    assert "failed" in out and "1 model(s): 1 failed" in out, out
    log = read_jobs(run)["nz3-seed0"]["stderr"]
    assert f"log: {log}" in out
    assert "RunFolderError" in out and "different config" in out, out


def test_status_of_local_folders_in_every_state(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["reproduce", *TINY, "--nz", "3", "5", "--out", str(run)]) == 0
    rc, out = status(run, capsys)
    assert rc == 0 and "2 model(s): 2 finished; 4e3 of 4e3 samples (100%)" in out, out
    assert "test ELBO" in out and "job" not in out

    meta_path = RunFiles.of(run, 5, 0).json
    meta = json.loads(meta_path.read_text())
    for recorded, locked, shown in [
        ("interrupted", False, "interrupted"),
        ("running", False, "interrupted"),  # killed: nobody holds the folder
        ("running", True, "running"),
    ]:
        meta_path.write_text(json.dumps({**meta, "status": recorded}))
        if locked:
            with folder_lock(run):
                _, out = status(run, capsys)
        else:
            _, out = status(run, capsys)
        line = next(line for line in out.splitlines() if line.startswith("N_z=5"))
        assert line.split()[3] == shown, (recorded, locked, out)
    assert "left" in out  # a model runs: the time left

    for path in run.glob("nz5-seed0.*"):
        path.unlink()
    _, out = status(run, capsys)
    assert "1 finished, 1 pending; 2e3 of 4e3 samples (50%)" in out, out
    assert main(["status", str(tmp_path / "none")]) == 2


def test_only_the_preemption_signal_requeues(monkeypatch):
    """USR2 (submitit's preemption signal) goes to submitit's handler, which requeues; SIGTERM,
    which `scancel` sends too, ends the job with its checkpoint (SLURM requeues what it
    preempts in PreemptMode=REQUEUE by itself)."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        requeue(signal.SIGTERM)
        assert calls == []
        requeue(signal.SIGUSR2)
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
