"""The cost of `--dtype float64` (the authors' precision) on this CPU: the paper preset's
training step and a full evaluation of the test set, float64 against float32, in one process,
interleaved round by round so that the ratios survive this VM's drifting clock speed:

    PYTHONPATH=. python bench/dtype_ratio.py

Prints per N_z the minimum over 15 rounds of 20 steps (ms per step) and over 3 rounds of one
evaluation of the 10,000 test images (s), of each dtype, and the ratios float64 / float32.
Threads: torch's default (all cores). Data: $VAEREPRO_DATA.
"""

import time

import torch
from step_setup import make_step

from vaerepro.core.config import preset
from vaerepro.core.data import load_mnist
from vaerepro.core.evaluate import evaluate
from vaerepro.runs.provenance import device_name

ROUNDS, STEPS, EVAL_ROUNDS = 15, 20, 3


def _best(call, rounds: int, repeat: int = 1) -> float:
    """The minimum over `rounds` of the mean seconds of `repeat` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            call()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def main() -> None:
    data = load_mnist(None, "cpu")
    cpu = device_name(torch.device("cpu"))
    print(f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for nz in (3, 20, 200):
        step, evals = {}, {}
        for dtype in ("float32", "float64"):
            cfg = preset("paper").replace(nz=nz, dtype=dtype)
            model, step[dtype] = make_step(cfg, data.train_x)
            test_x = data.test_x.to(getattr(torch, dtype))
            gen = torch.Generator().manual_seed(0)
            evals[dtype] = lambda m=model, x=test_x, g=gen, c=cfg: evaluate(
                m, x, c.eval_batch_size, c.z_draws, g, chunk=c.eval_chunk
            )
        ms = dict.fromkeys(step, float("inf"))
        for _ in range(ROUNDS):  # interleaved: both dtypes see the same clock
            for dtype, one_step in step.items():
                ms[dtype] = min(ms[dtype], _best(one_step, 1, STEPS) * 1e3)
        ev = {dtype: _best(call, EVAL_ROUNDS) for dtype, call in evals.items()}
        print(
            f"N_z={nz}: step {ms['float32']:.2f} / {ms['float64']:.2f} ms (float32 / float64), "
            f"ratio {ms['float64'] / ms['float32']:.2f}; evaluation {ev['float32']:.2f} / "
            f"{ev['float64']:.2f} s, ratio {ev['float64'] / ev['float32']:.2f}"
        )


if __name__ == "__main__":
    main()
