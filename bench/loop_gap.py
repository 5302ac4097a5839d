"""Where a real run's training rate goes, relative to the step benchmark: the training loop's
pieces timed in one process, round by round interleaved (this VM's clock drifts by up to 30%
between runs, so only times of one process are compared):

  step        the step benchmark's loop (bench/test_throughput.py): sampler and step
  loop        train_together's per-step work: sampler, step, progress bar update
  after eval  the same loop's first STEPS steps right after a full evaluation of both splits
              (the evaluation's activations have evicted the step's from the caches)
  evaluation  one full evaluation of both splits, in seconds (not a per-step time)

    PYTHONPATH=. python bench/loop_gap.py [--preset paper] [--nz 20]

Prints the median over ROUNDS rounds of ms per step (per evaluation for the last) and the
samples/s they mean. Data: $VAEREPRO_DATA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from step_setup import make_step
from tqdm.auto import tqdm

from vaerepro.core.config import preset
from vaerepro.core.data import load_mnist
from vaerepro.core.evaluate import evaluate

ROUNDS, STEPS = 15, 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--nz", type=int, default=20)
    args = p.parse_args()
    cfg = preset(args.preset).replace(nz=args.nz)
    data = load_mnist(None, "cpu")
    model, one_step = make_step(cfg, data.train_x)
    train_x = data.train_x[: cfg.train_size]
    devnull = open(os.devnull, "w")  # tqdm formats and writes as on a terminal
    bar = tqdm(total=10**12, unit="sample", unit_scale=True, dynamic_ncols=True, file=devnull)
    eval_kw = dict(batch_size=cfg.eval_batch_size, chunk=cfg.eval_chunk, z_draws=cfg.z_draws)

    def bench_loop() -> None:
        for _ in range(STEPS):
            one_step()

    def real_loop() -> None:
        for _ in range(STEPS):
            one_step()
            bar.update(cfg.batch_size)

    def evaluation() -> None:
        eval_gen = torch.Generator().manual_seed(0)
        evaluate(model, train_x, generator=eval_gen, **eval_kw)
        evaluate(model, data.test_x, generator=eval_gen, **eval_kw)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"step": [], "loop": [], "after eval": [], "evaluation": []}
    bench_loop()  # warm-up
    for _ in range(ROUNDS):
        times["step"].append(timed(bench_loop) / STEPS)
        times["loop"].append(timed(real_loop) / STEPS)
        times["evaluation"].append(timed(evaluation))
        times["after eval"].append(timed(real_loop) / STEPS)
    print(f"{args.preset} preset, N_z={args.nz}, {torch.get_num_threads()} threads")
    for name, values in times.items():
        median = statistics.median(values)
        if name == "evaluation":
            rows = len(train_x) + len(data.test_x)
            print(f"{name:>10}: {median:.3f} s ({rows / median / 1e3:.1f}k datapoints/s)")
        else:
            print(
                f"{name:>10}: {median * 1e3:.3f} ms/step ({cfg.batch_size / median / 1e3:.1f}k/s)"
            )


if __name__ == "__main__":
    main()
