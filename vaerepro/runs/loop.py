"""The training loop, top to bottom: set up each model (its `TrainingState` and `ModelRecord`,
maybe resumed from its checkpoint) -> draw minibatches by index and step -> every `eval_every`
samples evaluate both splits, append a CSV row, checkpoint -> write the final weights. Usually
one model trains at a time; `--stacked` trains several (differing only in N_z and seed) in
lockstep, one batched step for all of them, with the numbers of separate runs."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from vaerepro.core.config import TrainConfig, model_name, model_names
from vaerepro.core.data import MnistSplits
from vaerepro.core.device import synchronize
from vaerepro.core.errors import RunFolderError, UsageError
from vaerepro.core.step import TrainStep, make_train_step, stacking_problem
from vaerepro.runs.folder import ModelRecord
from vaerepro.runs.lrselect import select_lr
from vaerepro.runs.progress import SweepProgress
from vaerepro.runs.signals import Interrupted, stop_signals
from vaerepro.runs.state import TrainingState
from vaerepro.runs.writes import drop_replaced


def train(
    cfg: TrainConfig,
    data: MnistSplits,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool | SweepProgress = True,
    preset: str | None = None,
) -> pd.DataFrame:
    """Train one VAE per `cfg`, writing its files into `out_dir`; returns the CSV rows.

    ELBO columns are nats per datapoint; `wall_s` counts from the run's start (across
    resumes), `train_samples_per_s` is the training rate over the last interval.
    """
    return train_together([cfg], data, out_dir, device, resume, progress, preset)[0]


def train_together(
    cfgs: list[TrainConfig],
    data: MnistSplits,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool | SweepProgress = True,
    preset: str | None = None,
    label: str = "",
    autograd: bool = False,
    cuda_graphs: bool = False,
    checkpoint_every: int | None = None,
) -> list[pd.DataFrame]:
    """Train the VAEs of `cfgs` (configs equal but for N_z and seed) in lockstep, one batched
    step for all; each model gets the files, and the numbers, of a separate `train` run.
    `progress`: the sweep's reporter, or whether to show a bar of these models' own. `label`
    prefixes the log (e.g. "model 2/5 "); `autograd` forces the autograd gradient;
    `cuda_graphs` replays the step from a CUDA graph; `checkpoint_every`: samples between
    checkpoints (the CSV and JSON are written with them), None: at every evaluation."""
    device = torch.device(device)
    if len(cfgs) > 1 and (problem := stacking_problem(cfgs, autograd)):
        raise UsageError(problem)
    cfg = cfgs[0]
    records = [ModelRecord(c, out_dir, device, preset) for c in cfgs]
    lrs = [_learning_rate(r, data, device, resume, autograd) for r in records]
    states = [TrainingState(c, data, device, lr) for c, lr in zip(cfgs, lrs, strict=True)]
    for state, record in zip(states, records, strict=True):
        record.resume_into(state) if resume else record.discard_old()
    samples = _common_samples(states)
    step = make_train_step(
        [s.model for s in states],
        [s.opt for s in states],
        cfg,
        [s.train_x for s in states] if len(states) > 1 else states[0].train_x,
        autograd,
        cuda_graphs,
        states[0].chains,
    )
    print(f"{label}gradient: {step.gradient}", file=sys.stderr)
    for state, record in zip(states, records, strict=True):
        record.record_start(step.gradient, state.rows)
    own_bar = not isinstance(progress, SweepProgress)
    report = progress
    if own_bar:
        report = SweepProgress(cfgs, {c: samples for c in cfgs}, None, bool(progress))

    try:
        samples = _loop(states, records, step, samples, report, checkpoint_every)
        step.sync()
    finally:
        if own_bar:
            report.close()
    together = [model_name(c) for c in cfgs]
    return [r.finish(s, samples, together) for s, r in zip(states, records, strict=True)]


def _learning_rate(
    record: ModelRecord, data: MnistSplits, device: torch.device, resume: bool, autograd: bool
) -> float | None:
    """None (the config's lr), or with --lr-select the chosen one: the resumed run's recorded
    choice, else a new selection; recorded in the model's JSON either way."""
    if not record.cfg.lr_select:
        return None
    selection = (resume and record.recorded_selection()) or select_lr(
        record.cfg, data, device, autograd
    )
    record.meta["lr_selection"] = selection
    return selection["chosen"]


def _loop(
    states: list[TrainingState],
    records: list[ModelRecord],
    step: TrainStep,
    samples: int,
    report: SweepProgress,
    checkpoint_every: int | None = None,
) -> int:
    """Step from `samples` to the models' budget, evaluating every `eval_every` samples and
    checkpointing every `checkpoint_every` (default: at each evaluation; the CSV is written
    with the checkpoint, never ahead of it); returns the samples trained. A stop signal ends
    it at a step boundary with a checkpoint (Interrupted)."""
    cfg, device = states[0].cfg, states[0].device
    checkpoint_every = checkpoint_every or cfg.eval_every
    start = interval_start = time.perf_counter()
    interval_samples = samples
    with stop_signals() as interrupted:
        while samples < cfg.samples:
            step.run([s.batches for s in states], [s.gen for s in states])
            samples += cfg.batch_size
            if samples % cfg.eval_every == 0:
                step.sync()
                for s in states:
                    s.check_finite(samples - cfg.eval_every, samples)
                synchronize(device)  # the clock must see the queued steps
                rate = (samples - interval_samples) / (time.perf_counter() - interval_start)
                save = samples % checkpoint_every == 0 or samples == cfg.samples
                for state, record in zip(states, records, strict=True):
                    row = state.log_evaluation(samples, time.perf_counter() - start, rate)
                    if save:
                        record.checkpoint(state, samples, time.perf_counter() - start, "running")
                    report.advance(state.cfg, samples, row)
                drop_replaced(records[0].files.folder)  # --overwrite: the old sweep may go now
                interval_start, interval_samples = time.perf_counter(), samples
            else:
                for s in states:
                    report.advance(s.cfg, samples)
            if signum := interrupted():
                step.sync()
                _stop(states, records, samples, time.perf_counter() - start, signum)
    return samples


def _common_samples(states: list[TrainingState]) -> int:
    """The samples the models (resumed or new) start at; RunFolderError when they differ."""
    samples = states[0].samples
    if any(s.samples != samples for s in states):
        raise RunFolderError(
            "the checkpoints are at different sample counts ("
            + ", ".join(f"{model_name(s.cfg)}: {s.samples}" for s in states)
            + "); resume them one at a time (without --stacked)"
        )
    return samples


def _stop(
    states: list[TrainingState],
    records: list[ModelRecord],
    samples: int,
    wall_s: float,
    signum: int,
) -> None:
    """Checkpoint every model at this step boundary and raise Interrupted."""
    for state, record in zip(states, records, strict=True):
        state.check_finite(state.rows[-1]["samples"] if state.rows else 0, samples)
        record.checkpoint(state, samples, wall_s, "interrupted")
    drop_replaced(records[0].files.folder)
    names, signame = model_names(s.cfg for s in states), signal.Signals(signum).name
    raise Interrupted(
        f"{names}: {signame} interrupted the run at samples={samples}; checkpoint written to "
        + ", ".join(str(r.files.ckpt) for r in records),
        signum,
    )
