"""Sweeps on a SLURM cluster through submitit: one job per pending model of a `SweepPlan`,
submitted as one job array. `reproduce` returns once the jobs are queued (their ids are in
RUN/jobs.json); with --wait it follows them with the sweep's progress bar.

Each job is a `TrainJob`: it trains its model from the model's verified checkpoint (resume
semantics: a new model starts at 0, a finished one is skipped). Preemption: SLURM signals a job
before killing it (submitit asks for USR2; SIGTERM works too). vaerepro's stop signals catch
it, write a checkpoint at the next step boundary and raise Interrupted; the job then hands the
signal to submitit's own handler, which calls `TrainJob.checkpoint` and requeues the job. The
requeued job continues from that checkpoint, so its CSV equals an uninterrupted run's.

submitit's local executor (`VAEREPRO_SUBMITIT_CLUSTER=local`) runs the same jobs as processes
on this machine: for the tests, and for trying the executor without a cluster."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from vaerepro.core.config import TrainConfig, model_name
from vaerepro.core.data import load_mnist, resolve_data_root
from vaerepro.core.errors import RunFolderError, UsageError
from vaerepro.core.numbers import format_duration
from vaerepro.runs.folder import run_status
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.loop import train_together
from vaerepro.runs.progress import SweepProgress
from vaerepro.runs.records import logged_samples, read_json, read_model_json
from vaerepro.runs.signals import Interrupted, stop_signals
from vaerepro.runs.sweep import SweepPlan
from vaerepro.runs.writes import folder_lock, share_lock, write_json

JOBS_JSON = "jobs.json"  # per model: its job id, submit time and log paths
SUBMITIT_FOLDER = "slurm"  # submitit's pickles and the jobs' logs, inside the run folder
ENV_CLUSTER = "VAEREPRO_SUBMITIT_CLUSTER"  # "local": submitit's local executor, no SLURM
ERROR_EXIT = 2
# requeues a job may take after hitting its time limit (preemptions do not count)
MAX_TIMEOUT_REQUEUES = 10
POLL_S = 1.0


@dataclass(frozen=True)
class SlurmOptions:
    """The --slurm-* options. time_min: the time limit in minutes; extra: sbatch parameters
    by name (--slurm-extra KEY=VALUE)."""

    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 1
    gpus_per_task: int | None = None
    array_parallelism: int = 256
    extra: dict[str, str] = field(default_factory=dict)
    wait: bool = False
    cluster: str = "slurm"

    @classmethod
    def from_args(cls, args) -> SlurmOptions:
        """From reproduce's parsed options; UsageError for a malformed one."""
        for name in ("cpus_per_task", "array_parallelism", "gpus_per_task"):
            value = getattr(args, f"slurm_{name}")
            if value is not None and value < 1:
                raise UsageError(f"--slurm-{name.replace('_', '-')} must be at least 1")
        cluster = os.environ.get(ENV_CLUSTER, "slurm")
        if cluster not in ("slurm", "local"):
            raise UsageError(f"${ENV_CLUSTER} is {cluster!r}; use slurm or local")
        return cls(
            partition=args.slurm_partition,
            time_min=parse_slurm_time(args.slurm_time),
            cpus_per_task=args.slurm_cpus_per_task,
            gpus_per_task=args.slurm_gpus_per_task,
            array_parallelism=args.slurm_array_parallelism,
            extra=parse_extra(args.slurm_extra or []),
            wait=args.wait,
            cluster=cluster,
        )


def parse_slurm_time(text: str) -> int:
    """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) -> whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise UsageError(f"--slurm-time {text}: not a SLURM time (e.g. 240, 4:00:00 or 1-00:00:00)")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = days * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    elif c is not None:  # HH:MM:SS
        minutes = a * 60 + b + (1 if c else 0)
    else:  # MM or MM:SS
        minutes = a + (1 if b else 0)
    if minutes < 1:
        raise UsageError(f"--slurm-time {text} is under a minute")
    return minutes


def parse_extra(pairs: list[str]) -> dict[str, str]:
    """--slurm-extra KEY=VALUE ... -> {KEY: VALUE} (sbatch's long option names)."""
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or key.startswith("-"):
            raise UsageError(
                f"--slurm-extra {pair}: give KEY=VALUE with sbatch's long option name, e.g. "
                "--slurm-extra qos=low mem=4G"
            )
        extra[key] = value
    return extra


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TrainJob:
    """One model as a submitit job: picklable, self-contained (the data root is resolved at
    submission; config and code version are in the model's JSON), and checkpointable."""

    def __init__(
        self, cfg: TrainConfig, out: str, device: str, preset, threads, data_root, autograd
    ):
        self.cfg, self.out, self.device, self.preset = cfg, out, device, preset
        self.threads, self.data_root, self.autograd = threads, data_root, autograd

    @property
    def name(self) -> str:
        return model_name(self.cfg)

    def __call__(self) -> dict:
        out, device = Path(self.out), torch.device(self.device)
        files = RunFiles.of_config(out, self.cfg)
        # the verified checkpoint, or a refusal naming the file; "skip": finished already
        if run_status(files, self.cfg, True, False, device) == "skip":
            print(f"{self.name}: finished already, not trained again", file=sys.stderr)
            return read_model_json(files.json).get("final", {})
        torch.set_num_threads(self.threads)
        data = load_mnist(self.data_root, device)
        done = checkpoint_samples(files)
        start = f"resuming from its checkpoint at samples={done}" if done else "starting"
        print(f"{self.name}: {start} on {socket.gethostname()}", file=sys.stderr, flush=True)
        try:
            with folder_lock(out, shared=True):
                train_together(
                    [self.cfg],
                    data,
                    out,
                    device,
                    True,
                    False,
                    self.preset,
                    f"{self.name} ",
                    self.autograd,
                )
        except Interrupted as err:
            print(err, file=sys.stderr, flush=True)
            requeue(err.signum)  # for the preemption signal; any other: the job ends
            raise
        meta = read_model_json(files.json)
        print(f"{self.name}: finished", file=sys.stderr)
        return meta.get("final", {})

    def checkpoint(self, *args, **kwargs):
        """submitit's Checkpointable hook: the same job again; it resumes from the checkpoint
        the stop wrote."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def checkpoint_samples(files: RunFiles) -> int:
    """The samples of a model's checkpoint, as its JSON records them (0: none)."""
    if not (files.ckpt.exists() and files.json.exists()):
        return 0
    checkpoints = read_model_json(files.json).get("checkpoints", [])
    return checkpoints[-1]["samples"] if checkpoints else 0


def requeue(signum: int) -> None:
    """Hand submitit's preemption signal (USR2 unless $SUBMITIT_PREEMPT_SIGNAL says
    otherwise), once the loop has checkpointed, to submitit's handler (installed before the
    job started, restored when the loop ended): it calls `TrainJob.checkpoint`, requeues the
    job and exits. Other stop signals return here and end the job with its checkpoint: SIGTERM
    is also what `scancel` sends, which must not requeue; SLURM requeues a job it preempts in
    PreemptMode=REQUEUE by itself. Outside a submitit job: returns."""
    from submitit import JobEnvironment

    handler = signal.getsignal(JobEnvironment._usr_sig())
    ours = signum == JobEnvironment._usr_sig() and "SUBMITIT_EXECUTOR" in os.environ
    if ours and callable(handler):
        handler(signum, None)


def make_executor(folder: Path, options: SlurmOptions):
    """submitit's executor for `options` (UsageError when SLURM is wanted but absent)."""
    import submitit

    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise UsageError(
            "--executor slurm: sbatch and srun are not on PATH; run on a SLURM login node, or "
            f"set {ENV_CLUSTER}=local to run the jobs as local processes"
        )
    executor = submitit.AutoExecutor(
        folder=folder,
        cluster=options.cluster,
        slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES,
        local_max_num_timeout=MAX_TIMEOUT_REQUEUES,
    )
    params = {"timeout_min": options.time_min, "cpus_per_task": options.cpus_per_task}
    params["name"] = "vaerepro"
    if options.cluster == "slurm":
        params |= {
            "slurm_partition": options.partition,
            "slurm_gpus_per_task": options.gpus_per_task,
            "slurm_array_parallelism": options.array_parallelism,
            "slurm_additional_parameters": options.extra or None,
        }
    executor.update_parameters(**params)
    return executor


def submit(
    plan: SweepPlan, options: SlurmOptions, autograd: bool, job_class=None
) -> dict[TrainConfig, dict]:
    """Submit one `job_class` (default TrainJob) per pending model as one array; per model
    its job record."""
    job_class = job_class or TrainJob
    folder = plan.out / SUBMITIT_FOLDER
    executor = make_executor(folder, options)
    data_root = str(resolve_data_root(plan.data_root))
    device = str(plan.device)
    args = (device, plan.sweep.preset, plan.threads, data_root, autograd)
    jobs = []
    with executor.batch():
        for cfg in plan.pending:
            jobs.append(executor.submit(job_class(cfg, str(plan.out), *args)))
    when = now()
    return {
        cfg: {
            "job_id": str(job.job_id),
            "executor": options.cluster,
            "submitted": when,
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
            "result": str(job.paths.result_pickle),
        }
        for cfg, job in zip(plan.pending, jobs, strict=True)
    }


def read_jobs(folder: Path) -> dict[str, dict]:
    """RUN/jobs.json: model stem -> its job record ({} when nothing was submitted)."""
    path = folder / JOBS_JSON
    return read_json(path)["models"] if path.exists() else {}


def write_jobs(folder: Path, records: dict[TrainConfig, dict]) -> None:
    """Record submitted jobs in RUN/jobs.json (atomically); a resubmitted model's record
    replaces its old one, whose job id is kept in `previous`."""
    models = read_jobs(folder)
    for cfg, record in records.items():
        stem = RunFiles.of_config(folder, cfg).stem
        old = models.get(stem)
        if old:
            record["previous"] = [*old.get("previous", []), old["job_id"]]
        models[stem] = record
    write_json({"models": models}, folder / JOBS_JSON)


def refuse_live_jobs(plan: SweepPlan) -> None:
    """RunFolderError, before submitting, when a pending model's earlier job is still queued
    or running: two jobs would train one model."""
    old = read_jobs(plan.out)
    stems = [RunFiles.of_config(plan.out, c).stem for c in plan.pending]
    records = [old[s] for s in stems if s in old]
    live = queue_states(records)
    if live:
        raise RunFolderError(
            f"jobs {', '.join(sorted(live))} of {plan.out} are still queued or running; wait "
            f"for them (vaerepro status {plan.out}) or cancel them (scancel) before resubmitting"
        )


def queue_states(records: list[dict]) -> dict[str, str]:
    """job id -> its state while it is queued or running (PENDING, RUNNING, ...); jobs that
    have left the queue are absent."""
    local = [r["job_id"] for r in records if r.get("executor") == "local"]
    ids = [r["job_id"] for r in records if r.get("executor") != "local"]
    states = {j: "RUNNING" for j in local if _process_alive(int(j))}
    if ids and shutil.which("squeue"):
        cmd = ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(i.split("_")[0] for i in ids)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            job, _, state = line.strip().partition(" ")
            states[job] = state
    return states


def _process_alive(pid: int) -> bool:
    """A local job's controller process still runs (not ended, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class SlurmRunner:
    """Submits the plan's pending models as one job array and records the job ids in the
    run folder; returns at once, or with `options.wait` follows the jobs until they end."""

    def __init__(self, options: SlurmOptions, autograd: bool = False, job_class=None):
        self.options, self.autograd, self.job_class = options, autograd, job_class

    def run(self, plan: SweepPlan, progress: SweepProgress) -> int:
        if not plan.pending:
            return 0
        refuse_live_jobs(plan)
        share_lock(plan.out)  # the jobs share it while this process lives
        records = submit(plan, self.options, self.autograd, self.job_class)
        write_jobs(plan.out, records)
        progress.say(self.plan_line(plan, progress))
        for cfg, record in records.items():
            progress.say(f"{model_name(cfg)}: job {record['job_id']}")
        progress.say(f"job ids: {plan.out / JOBS_JSON}; logs: {plan.out / SUBMITIT_FOLDER}/")
        if not self.options.wait:
            return 0
        return wait_for_jobs(plan, records, progress)

    def plan_line(self, plan: SweepPlan, progress: SweepProgress) -> str:
        """The array's size, CPUs, and (with an estimate) its core-hours and wall time."""
        n, cpus = len(plan.pending), self.options.cpus_per_task
        at_once = min(n, self.options.array_parallelism)
        line = f"{self.options.cluster}: {n} job(s) in one array, {cpus} CPU(s) each"
        if progress.expected:
            seconds = sorted(progress.expected.values(), reverse=True)
            wall = max(seconds[0], sum(seconds) / at_once)
            line += (
                f"; estimated {sum(seconds) * cpus / 3600:.2f} core-hours, about "
                f"{format_duration(wall)} with {at_once} job(s) at once"
            )
        return line


def wait_for_jobs(plan: SweepPlan, records: dict[TrainConfig, dict], progress) -> int:
    """Follow the jobs until none is queued or running, advancing `progress` from the
    models' CSVs; 0 when every model finished, ERROR_EXIT otherwise. A stop signal ends the
    wait (the jobs keep running) with 128 + signal."""
    live = dict(records)
    status = 0
    with stop_signals() as interrupted:
        while live:
            states = queue_states(list(live.values()))
            for cfg in list(live):
                files = RunFiles.of_config(plan.out, cfg)
                progress.advance(cfg, logged_samples(files.csv) or progress.trained[cfg])
                if live[cfg]["job_id"] in states:
                    continue
                del live[cfg]
                name = model_name(cfg)
                if _finished(files):
                    progress.finished(cfg, f"{name} (job {records[cfg]['job_id']})")
                else:
                    progress.say(f"{name}: job {records[cfg]['job_id']} ended unfinished")
                    status = ERROR_EXIT
            if signum := interrupted():
                progress.say(f"stopped waiting; the jobs keep running: vaerepro status {plan.out}")
                return 128 + signum
            time.sleep(POLL_S if live else 0)
    return status


def _finished(files: RunFiles) -> bool:
    try:
        return read_model_json(files.json).get("status") == "finished"
    except (RunFolderError, OSError):  # absent or unreadable: not finished
        return False
