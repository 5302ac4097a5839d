"""The integration test of `--executor slurm` on a real SLURM cluster (`nox -s slurm` starts a
single-node one; tests/slurm/cluster.py). Not collected by the default test run: run it as
`pytest tests/slurm/integration.py` with SLURM_CONF naming the cluster.

A sweep of 2 N_z x 2 seeds is submitted as one job array; one job is signalled mid-run the way
SLURM warns a job before preempting it (`scancel --signal=USR2`): it checkpoints, requeues
itself through submitit and resumes. `vaerepro status` is printed at each stage; finally every
CSV equals a local run's of the same models in every deterministic column, and resubmitting
the finished sweep trains nothing again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from vaerepro.runs.records import logged_samples

SWEEP = ["--nz", "3", "5", "--seeds", "0", "1", "--samples", "20000", "--eval-every", "2000"]
SWEEP += ["--train-size", "2000", "--device", "cpu", "--no-progress", "--no-plot"]
DETERMINISTIC = ["samples", "train_elbo", "test_elbo", "train_loglik", "train_kl"]
DETERMINISTIC += ["test_loglik", "test_kl"]  # all CSV columns but wall_s, train_samples_per_s


def vaerepro(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`vaerepro ARGS` in a new process, its output shown with the test's."""
    cmd = [sys.executable, "-m", "vaerepro", *args]
    print(f"\n$ vaerepro {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print(proc.stdout + proc.stderr, flush=True)
    if check:
        assert proc.returncode == 0, proc.returncode
    return proc


def squeue(job: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", job.split("_")[0]],
        capture_output=True,
        text=True,
    ).stdout
    states = dict(line.split() for line in out.splitlines() if line.strip())
    return states.get(job, "")


def wait_until(check, what: str, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_sweep_on_slurm_survives_preemption(tmp_path: Path) -> None:
    assert os.environ.get("SLURM_CONF"), "run under tests/slurm/cluster.py (nox -s slurm)"
    start = time.monotonic()
    run = tmp_path / "slurm-run"
    vaerepro("reproduce", *SWEEP, "--executor", "slurm", "--out", str(run), "--slurm-time", "30")
    jobs = json.loads((run / "jobs.json").read_text())["models"]
    print("job ids:", {stem: r["job_id"] for stem, r in jobs.items()}, flush=True)
    assert len(jobs) == 4
    vaerepro("status", str(run))

    # the first model's job: USR2 (SLURM's warning before preemption) once it has a row
    victim = jobs["nz3-seed0"]
    wait_until(lambda: logged_samples(run / "nz3-seed0.csv") > 0, "nz3-seed0's first row")
    print(f"$ scancel --signal=USR2 {victim['job_id']}", flush=True)
    # scancel retries while SLURM says the job "can not be altered now" (it answers so while
    # the signalled job requeues): stopped once the requeue is seen, or it would signal the
    # requeued job again as it starts
    scancel = subprocess.Popen(["scancel", "--signal=USR2", victim["job_id"]])
    try:
        wait_until(lambda: squeue(victim["job_id"]) == "PENDING", "the job requeued")
    finally:
        scancel.terminate()
        scancel.wait()
    status = vaerepro("status", str(run)).stdout
    assert "requeued" in status

    wait_until(lambda: all(not squeue(r["job_id"]) for r in jobs.values()), "every job ended")
    status = vaerepro("status", str(run)).stdout
    assert "4 model(s): 4 finished" in status, status
    log = Path(victim["stderr"]).read_text() + Path(victim["stdout"]).read_text()
    lines = [
        line
        for line in log.splitlines()
        if any(k in line for k in ("Caught signal", "Requeued job", "interrupted", "resuming"))
    ]
    print("the requeued job's log:\n" + "\n".join(lines), flush=True)
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log
    stopped = re.search(r"interrupted the run at samples=(\d+)", log)
    assert stopped and f"resuming from its checkpoint at samples={stopped[1]}" in log
    print(f"slurm sweep: {time.monotonic() - start:.0f} s", flush=True)

    # resubmitting a finished sweep submits nothing and trains nothing
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("nz*.csv")}
    vaerepro("reproduce", "--resume", str(run), "--executor", "slurm", "--no-progress", "--no-plot")
    assert before == {p.name: p.stat().st_mtime_ns for p in run.glob("nz*.csv")}

    local = tmp_path / "local-run"
    vaerepro("reproduce", *SWEEP, "--jobs", "2", "--threads", "1", "--out", str(local))
    for csv in sorted(run.glob("nz*.csv")):
        ours, theirs = pd.read_csv(csv), pd.read_csv(local / csv.name)
        pd.testing.assert_frame_equal(ours[DETERMINISTIC], theirs[DETERMINISTIC])
        print(f"{csv.name}: {len(ours)} rows, equal to the local run's", flush=True)
