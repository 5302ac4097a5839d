"""Sweep runners: each trains the pending models of a `SweepPlan` and reports through one
`SweepProgress`. In-process (one model or one stacked group at a time, here) and parallel
local jobs (jobs.py) share this interface; a cluster runner plugs in beside them.

A runner's `run` returns 0 when every model finished, 128 + the signal that stopped the sweep
(every running model wrote a checkpoint), or ERROR_EXIT when a model failed."""

from __future__ import annotations

from typing import Protocol

from vaerepro.core.config import model_name, model_names
from vaerepro.core.data import MnistSplits
from vaerepro.core.errors import WriteFailed
from vaerepro.runs.loop import train_together
from vaerepro.runs.progress import SweepProgress
from vaerepro.runs.provenance import vaerepro_command
from vaerepro.runs.signals import Interrupted
from vaerepro.runs.sweep import SweepPlan

ERROR_EXIT = 2


class Runner(Protocol):
    def run(self, plan: SweepPlan, progress: SweepProgress) -> int: ...


class InProcessRunner:
    """Trains the plan's groups one after another in this process (the data already loaded
    on the plan's device)."""

    def __init__(self, data: MnistSplits, autograd: bool = False, cuda_graphs: bool = False):
        self.data, self.autograd, self.cuda_graphs = data, autograd, cuda_graphs

    def run(self, plan: SweepPlan, progress: SweepProgress) -> int:
        for i, group in enumerate(plan.groups, 1):
            label = f"model {i}/{len(plan.groups)}"
            if len(group) > 1:
                label = f"{len(group)} models in one stacked step"
                progress.say(f"{model_names(group)}: in one stacked step")
            progress.started(f"{label} ({model_names(group)})")
            try:
                train_together(
                    group,
                    self.data,
                    plan.out,
                    plan.device,
                    resume=any(plan.status[c] == "resume" for c in group),
                    progress=progress,
                    preset=plan.sweep.preset,
                    label=f"{label} ",
                    autograd=self.autograd,
                    cuda_graphs=self.cuda_graphs,
                    checkpoint_every=plan.checkpoint_every,
                )
            except Interrupted as err:
                progress.say(str(err))
                return 128 + err.signum
            except WriteFailed as err:
                raise WriteFailed(
                    f"{err}. The last good CSV and checkpoint in {plan.out} are intact: free "
                    "space or fix the permissions, then continue with: "
                    f"{vaerepro_command('reproduce')} --resume {plan.out}"
                ) from err
            for c in group:
                progress.finished(c, model_name(c))
        return 0


def make_runner(
    plan: SweepPlan,
    data: MnistSplits | None,
    autograd: bool,
    slurm=None,
    cuda_graphs: bool = False,
) -> Runner:
    """The runner the plan asks for: SLURM jobs with `slurm` (slurm.SlurmOptions), parallel
    local jobs when plan.jobs > 1, else in-process (`cuda_graphs`: its steps in CUDA graphs)."""
    if slurm is not None:
        from vaerepro.runs.slurm import SlurmRunner

        return SlurmRunner(slurm, autograd)
    if plan.jobs > 1:
        from vaerepro.runs.jobs import LocalJobsRunner

        return LocalJobsRunner(autograd)
    return InProcessRunner(data, autograd, cuda_graphs)
