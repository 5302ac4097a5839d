"""`vaerepro status RUN`: per model of a run folder, local or submitted, its state (pending,
running, finished, failed, interrupted, requeued), samples so far, last test ELBO and job id;
for a failed job its log and the last lines of its error; and the sweep's totals with, while
models train, the time left.

A model's files say what it has done (its JSON's status, its CSV's rows); RUN/jobs.json
(slurm.py) and the queue (squeue, or the local executor's processes) say where its job is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vaerepro.core.config import model_name
from vaerepro.core.errors import RunFolderError
from vaerepro.core.numbers import format_count, format_duration
from vaerepro.runs.layout import RUN_JSON, RunFiles
from vaerepro.runs.records import read_csv, read_model_json, read_run_json
from vaerepro.runs.slurm import queue_states, read_jobs
from vaerepro.runs.writes import lock_holder

ERROR_LINES = 6  # the last lines of a failed job's error that `status` shows
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "CONFIGURING"}


@dataclass
class ModelStatus:
    name: str
    state: str
    samples: int
    budget: int
    test_elbo: float | None = None
    rate: float | None = None  # training samples per wall second so far
    job_id: str | None = None
    log: str | None = None
    error: tuple[str, ...] = ()

    def line(self) -> str:
        none = self.test_elbo is None or math.isnan(self.test_elbo)  # MCEM has no ELBO
        elbo = "–" if none else f"{self.test_elbo:.2f}"
        job = f"  job {self.job_id}" if self.job_id else ""
        return (
            f"{self.name:<22} {self.state:<11} {format_count(self.samples):>6} / "
            f"{format_count(self.budget):<6} test ELBO {elbo:>8}{job}"
        )


def _csv_progress(files: RunFiles) -> tuple[int, float | None, float | None]:
    """(samples logged, last test ELBO, samples per wall second) from a model's CSV."""
    try:
        df = read_csv(files.csv)
    except RunFolderError:
        return 0, None, None
    last = df.iloc[-1]
    rate = last.samples / last.wall_s if last.wall_s > 0 else None
    return int(last.samples), float(last.test_elbo), rate


def error_tail(log: Path, lines: int = ERROR_LINES) -> tuple[str, ...]:
    """A failed job's error from its log: the exception line of its last traceback and what
    follows (up to `lines`), else the log's last `lines` non-empty lines."""
    try:
        text = [t for t in log.read_text(errors="replace").splitlines() if t.strip()]
    except OSError:
        return (f"(no log at {log})",)
    starts = [i for i, t in enumerate(text) if t.startswith("Traceback (most recent call")]
    if not starts:
        return tuple(text[-lines:])
    after = text[starts[-1] + 1 :]
    first = next((i for i, t in enumerate(after) if not t.startswith(" ")), len(after))
    return tuple(after[first : first + lines])


def _job_state(meta: dict | None, done: int, record: dict, queued: dict[str, str]) -> str:
    """A submitted model's state from its job's place in the queue and its files: a job that
    left the queue unfinished failed, unless it stopped at a signal (its JSON says
    "interrupted") or never started (no log)."""
    job = queued.get(record["job_id"])
    stopped = meta is not None and (meta.get("status") == "interrupted" or done > 0)
    if job in WAITING:
        return "requeued" if stopped else "pending"
    if job is not None:
        return "running"
    if meta and meta.get("status") == "interrupted":
        return "interrupted"
    # a job cancelled before it started leaves no log: stopped, not failed
    return "failed" if Path(record["stderr"]).exists() else "interrupted"


def _local_state(meta: dict | None, folder: Path) -> str:
    """A model of a local run: its JSON's status; "running" needs a live process holding the
    run folder's lock (a killed run leaves "running" behind: then it is interrupted)."""
    if meta is None:
        return "pending"
    if meta.get("status") == "running":
        return "running" if lock_holder(folder) else "interrupted"
    return meta.get("status", "finished")


def model_statuses(folder: Path) -> list[ModelStatus]:
    """The status of every model of the sweep recorded in `folder`/run.json."""
    record = folder / RUN_JSON
    if not record.exists():
        raise RunFolderError(f"{folder} holds no {RUN_JSON}: not a run folder of `reproduce`")
    sweep = read_run_json(record)[0]
    jobs = read_jobs(folder)
    queued = queue_states(list(jobs.values()))
    statuses = []
    for cfg in sweep.configs:
        files = RunFiles.of_config(folder, cfg)
        meta = read_model_json(files.json) if files.json.exists() else None
        done, elbo, rate = _csv_progress(files)
        job = jobs.get(files.stem)
        if meta and meta.get("status", "finished") == "finished":
            state = "finished"
        elif job:
            state = _job_state(meta, done, job, queued)
        else:
            state = _local_state(meta, folder)
        name = model_name(cfg)
        status = ModelStatus(name, state, done, cfg.samples, elbo, rate)
        if job:
            status.job_id = job["job_id"]
        if state == "failed":
            status.log = job["stderr"]
            status.error = error_tail(Path(job["stderr"]))
        statuses.append(status)
    return statuses


def totals_line(statuses: list[ModelStatus]) -> str:
    """The sweep's totals: models per state, samples, and while models train the time left
    (each unfinished model's remaining samples at its rate so far, or the mean rate, shared
    among the running ones)."""
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    done, budget = sum(s.samples for s in statuses), sum(s.budget for s in statuses)
    line = (
        f"{len(statuses)} model(s): "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
        + f"; {format_count(done)} of {format_count(budget)} samples ({100 * done / budget:.0f}%)"
    )
    running = [s for s in statuses if s.state == "running"]
    rates = [s.rate for s in statuses if s.rate]
    if running and rates:
        mean = sum(rates) / len(rates)
        left = [
            (s.budget - s.samples) / (s.rate or mean) for s in statuses if s.state != "finished"
        ]
        line += f"; about {format_duration(sum(left) / len(running))} left"
    return line


def status_report(folder: Path) -> tuple[list[str], bool]:
    """The lines `vaerepro status` prints, and whether any model failed."""
    statuses = model_statuses(folder)
    lines = []
    for s in statuses:
        lines.append(s.line())
        if s.state == "failed":
            lines.append(f"    log: {s.log}")
            lines += [f"    | {e}" for e in s.error]
    lines.append(totals_line(statuses))
    return lines, any(s.state == "failed" for s in statuses)
