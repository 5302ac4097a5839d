"""Parallel local jobs (`--jobs`): each model of a sweep in a process of its own with a fixed
number of torch threads, at most `jobs` at once.

On a 2-core CPU two processes with one thread each train 1.2-1.7x more samples per second than
one process with two threads (the matrices of one step are too small to keep two threads busy;
measured by bench/jobs_ratio.py, docs/benchmarks.md). A model's numbers depend on its thread
count (float rounding), which each model's JSON records, and not on how many models train
beside it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing import resource_tracker
from multiprocessing.connection import wait
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vaerepro.core.config import TrainConfig, model_name
from vaerepro.core.data import load_mnist
from vaerepro.core.errors import VaereproError
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.loop import train_together
from vaerepro.runs.progress import SweepProgress
from vaerepro.runs.provenance import vaerepro_command
from vaerepro.runs.records import logged_samples
from vaerepro.runs.runners import ERROR_EXIT
from vaerepro.runs.signals import Interrupted, blocked_stops, stop_signals
from vaerepro.runs.sweep import SweepPlan
from vaerepro.runs.writes import folder_lock, share_lock


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the parent dies (a SIGKILLed sweep must not leave
    workers writing into a folder nobody holds); they then checkpoint and stop."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers end with their model


def _worker(cfg: TrainConfig, plan: SweepPlan, label: str, autograd: bool, parent: int) -> None:
    """One model, in a process of its own; exits 0, 128 + signal, or ERROR_EXIT."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        sys.exit(128 + signal.SIGTERM)
    torch.set_num_threads(plan.threads)
    # tqdm's default lock is a multiprocessing semaphore: a worker killed by SIGKILL would
    # leave it to the resource tracker's "leaked semaphore" warning. One process: a thread lock
    tqdm.set_lock(threading.RLock())
    try:
        data = load_mnist(plan.data_root, plan.device)
        with folder_lock(plan.out, shared=True):
            train_together(
                [cfg],
                data,
                plan.out,
                plan.device,
                plan.status[cfg] == "resume",
                False,
                plan.sweep.preset,
                f"{label} ",
                autograd,
                checkpoint_every=plan.checkpoint_every,
            )
    except Interrupted as err:
        print(err, file=sys.stderr)
        sys.exit(128 + err.signum)
    except (VaereproError, OSError) as err:
        print(f"vaerepro reproduce: error: {label}: {err}", file=sys.stderr)
        sys.exit(ERROR_EXIT)


class LocalJobsRunner:
    """Trains the plan's models in up to plan.jobs processes of plan.threads threads, in
    order. The samples each model has trained are read from its CSV at its evaluations. A
    stop signal is forwarded to the running workers, which checkpoint; after a stop or a
    failure no new model starts, and the running ones finish or stop first."""

    def __init__(self, autograd: bool = False):
        self.autograd = autograd

    def run(self, plan: SweepPlan, progress: SweepProgress) -> int:
        share_lock(plan.out)  # the workers share it; it outlives this process until they end
        ctx = multiprocessing.get_context("spawn")
        # started now: starting it inside proc.start() would unblock SIGINT and SIGTERM
        resource_tracker.ensure_running()
        configs = plan.pending
        queue = list(enumerate(configs, 1))
        running: dict[int, tuple[multiprocessing.Process, str, TrainConfig]] = {}
        # per running model: its CSV's (inode, mtime) when last looked at; the CSV is replaced
        # atomically at each evaluation, so a new stamp means a new row
        seen: dict[TrainConfig, tuple[int, int] | None] = {}
        status = 0
        with stop_signals() as interrupted:
            while running or (queue and not status):  # after a stop or a failure: no new model
                while queue and len(running) < plan.jobs and not status:
                    i, cfg = queue.pop(0)
                    model = model_name(cfg)
                    label = f"model {i}/{len(configs)} ({model})"
                    args = (cfg, plan, label, self.autograd, os.getpid())
                    proc = ctx.Process(target=_worker, args=args)
                    seen[cfg] = _stamp(RunFiles.of_config(plan.out, cfg).csv)
                    with blocked_stops():  # the worker starts with them blocked
                        proc.start()
                    running[proc.sentinel] = (proc, label, cfg)
                    progress.started(label, f", {plan.threads} thread(s)")
                for sentinel in wait(list(running), timeout=0.5):
                    proc, label, cfg = running.pop(sentinel)
                    proc.join()
                    if proc.exitcode == 0:
                        progress.finished(cfg, label)
                        continue
                    if proc.exitcode < 0:  # killed by a signal it could not catch
                        progress.say(_killed(label, proc.exitcode, plan.out))
                    status = status or _exit_status(proc.exitcode)
                for _, _, cfg in running.values():
                    csv = RunFiles.of_config(plan.out, cfg).csv
                    if (stamp := _stamp(csv)) != seen[cfg]:
                        seen[cfg] = stamp
                        progress.advance(cfg, logged_samples(csv) or progress.trained[cfg])
                if (signum := interrupted()) and not status:
                    status = 128 + signum
                    for proc, _, _ in running.values():
                        os.kill(proc.pid, signum)
        return status


def _killed(label: str, code: int, out: Path) -> str:
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    return (
        f"{label}: its process was killed by {name} (exit status {128 - code}); its last "
        f"checkpoint in {out} is intact; continue with: "
        f"{vaerepro_command('reproduce')} --resume {out}"
    )


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code if code > 128 else ERROR_EXIT


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
