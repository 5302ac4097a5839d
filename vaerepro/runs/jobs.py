"""Training the models of a sweep in parallel processes (`--jobs`): each model in a process of
its own with a fixed number of torch threads, at most `jobs` at once.

On a 2-core CPU two processes with one thread each train 1.2-1.7x more samples per second than
one process with two threads (the matrices of one step are too small to keep two threads busy;
README, "Both cores for sweeps"; measured by bench/jobs_ratio.py). A model's numbers depend on
its thread count (float rounding), which each model's JSON records, and not on how many models
train beside it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vaerepro.core.config import TrainConfig, model_label
from vaerepro.core.data import load_mnist
from vaerepro.core.errors import VaereproError
from vaerepro.core.numbers import format_duration
from vaerepro.runs.estimate import time_left
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.records import logged_samples
from vaerepro.runs.train import Interrupted, stop_signals, train_together
from vaerepro.runs.writes import folder_lock, share_lock

ERROR_EXIT = 2


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the parent dies (a SIGKILLed sweep must not leave
    workers writing into a folder nobody holds); they then checkpoint and stop."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers end with their model


def _worker(
    cfg: TrainConfig,
    out: str,
    device: str,
    resume: bool,
    preset: str | None,
    data_root: str | None,
    threads: int,
    label: str,
    autograd: bool,
    parent: int,
) -> None:
    """One model, in a process of its own; exits 0, 128 + signal, or ERROR_EXIT."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        sys.exit(128 + signal.SIGTERM)
    torch.set_num_threads(threads)
    try:
        data = load_mnist(data_root, device)
        with folder_lock(Path(out), shared=True):
            train_together([cfg], data, out, device, resume, False, preset, f"{label} ", autograd)
    except Interrupted as err:
        print(err, file=sys.stderr)
        sys.exit(128 + err.signum)
    except (VaereproError, OSError) as err:
        print(f"vaerepro reproduce: error: {label}: {err}", file=sys.stderr)
        sys.exit(ERROR_EXIT)


def train_in_parallel(
    configs: list[TrainConfig],
    resume: dict[TrainConfig, bool],
    out: Path,
    device: str,
    preset: str | None,
    data_root: str | None,
    jobs: int,
    threads: int,
    autograd: bool,
    say: Callable[[str], None],
    expected: dict[TrainConfig, float] | None = None,
    done: dict[TrainConfig, int] | None = None,
    progress: bool = False,
) -> int:
    """Train `configs` (one model each) in up to `jobs` processes of `threads` threads, in
    order; `say` gets a line as each model starts and ends (with the time left: the
    `expected` seconds per model when given, scaled by how long the samples trained so far
    took). The samples each model has trained (`done`: those a resumed model had already)
    are read from its CSV at its evaluations; with `progress` one bar counts them for the
    whole sweep. Returns 0, 128 + the signal that stopped the sweep
    (forwarded to the running workers, which checkpoint), or ERROR_EXIT when a model failed
    (the models already running finish first; none is started after)."""
    share_lock(out)  # the workers share it; it outlives this process until they end
    ctx = multiprocessing.get_context("spawn")
    queue = list(enumerate(configs, 1))
    running: dict[int, tuple[multiprocessing.Process, str, TrainConfig]] = {}
    status, start = 0, time.perf_counter()
    before = {c: (done or {}).get(c, 0) for c in configs}
    trained = dict(before)  # samples per model
    # per running model: its CSV's (inode, mtime) when last looked at; the CSV is replaced
    # atomically at each evaluation, so a new stamp means a new row
    seen: dict[TrainConfig, tuple[int, int] | None] = {}
    bar = tqdm(
        total=sum(c.samples for c in configs),
        initial=sum(trained.values()),
        unit="sample",
        unit_scale=True,
        desc="sweep",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0,  # the rate over the whole run: rows arrive in jumps of eval_every samples
    )

    def tell(line: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):  # the line above the bar, not in it
            say(line)

    with bar, stop_signals() as interrupted:
        while running or (queue and not status):  # after a stop or a failure: no new model
            while queue and len(running) < jobs and not status:
                i, cfg = queue.pop(0)
                model = model_label(cfg.method, cfg.nz)
                label = f"model {i}/{len(configs)} ({model} seed {cfg.seed})"
                args = (cfg, str(out), device, resume[cfg], preset, data_root, threads)
                proc = ctx.Process(target=_worker, args=(*args, label, autograd, os.getpid()))
                seen[cfg] = _stamp(RunFiles.of_config(out, cfg).csv)
                proc.start()
                running[proc.sentinel] = (proc, label, cfg)
                tell(f"{label}: started, {threads} thread(s), {_elapsed(start)}")
            for sentinel in wait(list(running), timeout=0.5):
                proc, label, cfg = running.pop(sentinel)
                proc.join()
                code = proc.exitcode
                if code == 0:
                    trained[cfg] = cfg.samples
                    left = time_left(expected, before, trained, time.perf_counter() - start)
                    tell(f"{label}: finished, {_elapsed(start)}{left}")
                elif not status:  # a worker killed by a signal has exitcode -signum
                    status = 128 - code if code < 0 else code if code > 128 else ERROR_EXIT
            for _, _, cfg in running.values():
                csv = RunFiles.of_config(out, cfg).csv
                if (stamp := _stamp(csv)) != seen[cfg]:
                    seen[cfg] = stamp
                    trained[cfg] = logged_samples(csv) or trained[cfg]
            bar.update(sum(trained.values()) - bar.n)
            if (signum := interrupted()) and not status:
                status = 128 + signum
                for proc, _, _ in running.values():
                    os.kill(proc.pid, signum)
    return status


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _elapsed(start: float) -> str:
    return f"{format_duration(time.perf_counter() - start)} elapsed"
