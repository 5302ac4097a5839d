"""Planning a sweep: what each model's files say, the samples already done, how the pending
models are grouped (one model, or all N_z of a seed for --stacked), how many jobs of how many
threads train them, and how long that should take. A runner (runners.py) then trains it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vaerepro.core.config import Sweep, TrainConfig, model_name
from vaerepro.core.errors import UsageError
from vaerepro.core.numbers import format_count, format_duration
from vaerepro.runs.estimate import Estimate
from vaerepro.runs.folder import run_status
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.records import logged_samples

# A --jobs worker's start before its first step (a new Python, torch's import, MNIST from the
# verified cache, the gradient check), which the in-process estimate does not see: 2.3 s
# measured by bench/worker_startup.py on a quiet 2-core Intel Xeon (2026-12-02), rounded up
# for a machine that is not quiet
WORKER_STARTUP_S = 3.0


@dataclass
class SweepPlan:
    """A sweep planned into a run folder. `status` per model: "new", "resume" or "skip"
    (finished); `done`: samples a resumed model has logged; `groups`: the pending models
    as the runner trains them, one group per process step."""

    sweep: Sweep
    out: Path
    device: torch.device
    status: dict[TrainConfig, str]
    done: dict[TrainConfig, int]
    groups: list[list[TrainConfig]]
    jobs: int
    threads: int
    data_root: str | None
    checkpoint_every: int | None = None  # samples between checkpoints (None: every evaluation)

    @property
    def pending(self) -> list[TrainConfig]:
        return [c for g in self.groups for c in g]

    def expected(self, estimate: Estimate | None) -> dict[TrainConfig, float] | None:
        """Estimated seconds per pending model (a worker's start-up included under --jobs)."""
        if estimate is None:
            return None
        startup = WORKER_STARTUP_S if self.jobs > 1 else 0.0
        return {c: estimate.seconds(c, self.done[c]) + startup for c in self.pending}

    def describe(self, estimate: Estimate | None) -> str:
        """The plan line: models, samples, device, estimated time, jobs and threads."""
        pending = self.pending
        nzs = ", ".join(map(str, dict.fromkeys(c.nz for c in pending)))
        seeds = ", ".join(map(str, dict.fromkeys(c.seed for c in pending)))
        left = {c.samples - self.done[c] for c in pending}
        each = format_count(left.pop()) if len(left) == 1 else "the remaining"
        line = (
            f"plan: {len(pending)} model(s) (N_z {nzs}; seed {seeds}), {each} samples each, "
            f"on {self.device}"
        )
        if estimate is None:
            return f"{line} (no time estimate: --no-estimate); {self._workers()}"
        seconds = self.expected(estimate)
        total = sum(max(seconds[c] for c in g) for g in self.groups) / self.jobs
        rates = ", ".join(
            f"{nz if m == 'aevb' else f'{m} {nz}'}: {r / 1000:.1f}k"
            for (m, nz), r in estimate.train_rate.items()
        )
        marginal = ""
        if math.isfinite(estimate.marginal_rate):
            marginal = f"; marginal likelihood {estimate.marginal_rate:.0f} datapoints/s"
        return (
            f"{line}; estimated {format_duration(total)} (measured just now: training "
            f"samples/s by N_z {rates}; evaluation {estimate.eval_rate / 1000:.0f}k "
            f"datapoints/s{marginal}); {self._workers()}"
        )

    def _workers(self) -> str:
        return f"{self.jobs} job(s) of {self.threads} thread(s)"

    def skipped_lines(self) -> list[str]:
        return [
            f"{model_name(c)}: finished already, skipped"
            for c in self.sweep.configs
            if self.status[c] == "skip"
        ]


def parallelism(
    device: torch.device, stacked: bool, models: int, jobs: int | None, threads: int | None
) -> tuple[int, int]:
    """(jobs, threads per model). On the CPU by default as many jobs as cores (at most one per
    model), each with cores // jobs threads; elsewhere one job. UsageError for --jobs > 1
    where it cannot apply."""
    cores = torch.get_num_threads()  # the cores torch would use ($OMP_NUM_THREADS if set)
    if jobs is not None and jobs > 1 and (device.type != "cpu" or stacked):
        raise UsageError(
            "--jobs > 1 trains models in parallel CPU processes; it does not combine with "
            f"--device {device.type}" + (" or --stacked" if stacked else "")
        )
    for name, value in (("jobs", jobs), ("threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    serial = device.type != "cpu" or stacked
    jobs = jobs or (1 if serial else max(1, min(cores, models)))
    return jobs, threads or max(1, cores // jobs)


def plan_sweep(
    sweep: Sweep,
    out: Path,
    device: torch.device,
    *,
    resume: bool,
    overwrite: bool,
    stacked: bool = False,
    jobs: int | None = None,
    threads: int | None = None,
    data_root: str | None = None,
    checkpoint_every: int | None = None,
) -> SweepPlan:
    """Plan `sweep` into `out` (RunFolderError, before any work, when its files say no)."""
    configs = sweep.configs
    if device.type == "mps" and any(c.dtype == "float64" for c in configs):
        raise UsageError("--dtype float64: MPS has no float64; use the CPU or CUDA")
    status = {
        c: run_status(RunFiles.of_config(out, c), c, resume, overwrite, device) for c in configs
    }
    pending = [c for c in configs if status[c] != "skip"]
    done = {
        c: logged_samples(RunFiles.of_config(out, c).csv) if status[c] == "resume" else 0
        for c in pending
    }
    groups = [[c] for c in pending]
    if stacked:  # per method, all its pending N_z and seeds in one batched step
        groups = [[c for c in pending if c.method == m] for m in sweep.methods]
        groups = [g for g in groups if g]
    jobs, threads = parallelism(device, stacked, len(pending), jobs, threads)
    if checkpoint_every is not None and (
        checkpoint_every <= 0 or any(checkpoint_every % c.eval_every for c in configs)
    ):
        raise UsageError(
            f"--checkpoint-every {checkpoint_every} must be a multiple of the evaluation "
            f"interval (--eval-every {configs[0].eval_every})"
        )
    return SweepPlan(
        sweep, out, device, status, done, groups, jobs, threads, data_root, checkpoint_every
    )
