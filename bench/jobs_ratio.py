"""`--jobs` on the CPU: one process with all cores' threads against one process per core with
one thread each, the training step alone (no evaluation), as a sweep of several models would
run it. Run on a quiet machine:

    PYTHONPATH=. python bench/jobs_ratio.py [--steps 400]

Prints per N_z the samples/s of 1 job x `cores` threads and of `cores` jobs x 1 thread (their
sum), and the ratio. Protocol: the paper preset. Data: $VAEREPRO_DATA.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch
from step_setup import make_step

from vaerepro.core.config import preset
from vaerepro.core.data import load_mnist

WARMUP = 50


def _rate(nz: int, threads: int, steps: int, start: mp.Barrier, out: mp.Queue) -> None:
    """Train `steps` minibatches with `threads` torch threads; put samples/s on `out`."""
    torch.set_num_threads(threads)
    cfg = preset("paper").replace(nz=nz)
    _, one_step = make_step(cfg, load_mnist(None, "cpu").train_x)
    for _ in range(WARMUP):
        one_step()
    start.wait()  # the jobs of one measurement time the same interval
    begin = time.perf_counter()
    for _ in range(steps):
        one_step()
    out.put(steps * cfg.batch_size / (time.perf_counter() - begin))


def measure(nz: int, jobs: int, threads: int, steps: int) -> list[float]:
    """Samples/s of each of `jobs` processes training at once."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(jobs), ctx.Queue()
    procs = [ctx.Process(target=_rate, args=(nz, threads, steps, start, out)) for _ in range(jobs)]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="timed minibatches per job")
    parser.add_argument("--nz", type=int, nargs="+", default=[20, 200])
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    for nz in args.nz:
        one = measure(nz, 1, cores, args.steps)[0]
        many = measure(nz, cores, 1, args.steps)
        print(
            f"N_z={nz}: 1 job x {cores} threads {one / 1e3:.1f}k samples/s; {cores} jobs x 1 "
            f"thread {' + '.join(f'{r / 1e3:.1f}k' for r in many)} = {sum(many) / 1e3:.1f}k; "
            f"ratio {sum(many) / one:.2f}"
        )


if __name__ == "__main__":
    main()
