"""The training step of K models three ways, side by side in one process: plain (each model
its own step, one after another, as a sweep without --stacked trains them), batched (one step
of all K, `--stacked`) and graphed (the batched step replayed from a CUDA graph,
`--cuda-graphs`; CUDA only). The K models are the paper preset's five N_z times --seeds.

    PYTHONPATH=. python bench/batched_step.py --device cuda --seeds 5 --json OUT.json

Prints, per way and matmul precision (full float32; with --tf32 also TF32), the median over
--rounds rounds of --steps steps: ms per step of all K, and training samples/s per model.
In-process, the step only (minibatch indices, noise, gradient, update), no evaluation, data
already on the device. The JSON records the device, torch and the precision of each row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from vaerepro.core.config import PAPER_NZ, preset
from vaerepro.core.data import MinibatchIndices, load_mnist
from vaerepro.core.device import resolve_device, synchronize
from vaerepro.core.model import VAE
from vaerepro.core.optim import make_optimizer
from vaerepro.core.step import make_train_step
from vaerepro.runs.provenance import environment_info, matmul_precision


def make_steps(way: str, nzs, seeds, train_x, device, hidden: int):
    """A call that trains every model (N_z x seed) by one minibatch, the `way` given."""
    cfgs = [preset("paper").replace(nz=nz, seed=s, hidden=hidden) for s in seeds for nz in nzs]
    models, opts, batches, gens = [], [], [], []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        models.append(VAE.from_config(cfg).to(device))
        opts.append(make_optimizer(cfg, models[-1]))
        gens.append(torch.Generator(device=device).manual_seed(cfg.seed))
        batches.append(MinibatchIndices(len(train_x), cfg.batch_size, cfg.sampling, gens[-1]))
    if way == "plain":
        steps = [
            make_train_step([m], [o], c, train_x)
            for m, o, c in zip(models, opts, cfgs, strict=True)
        ]

        def plain() -> None:
            for step, b, g in zip(steps, batches, gens, strict=True):
                step([b.next()], [g])

        return plain
    step = make_train_step(models, opts, cfgs[0], train_x, cuda_graphs=way == "graphed")
    return lambda: step.run(batches, gens)


def time_way(one_step, device, rounds: int, steps: int) -> float:
    """Median ms per call of `one_step` over `rounds` rounds of `steps` calls (after one
    warm-up round)."""
    times = []
    for r in range(rounds + 1):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        synchronize(device)
        if r:
            times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--nz", type=int, nargs="+", default=list(PAPER_NZ))
    p.add_argument("--seeds", type=int, default=3, help="seeds per N_z (K = N_z count x this)")
    p.add_argument("--hidden", type=int, default=500, help="smaller: smoke tests only")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--tf32", action="store_true", help="also time with TF32 (CUDA)")
    p.add_argument("--data-root", help="folder holding MNIST/raw (default: $VAEREPRO_DATA)")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument(
        "--baseline-json",
        type=Path,
        help="embed this bench/pyautoencoder_baseline.py --json (same device) in --json, "
        "for `vaerepro hwtable`'s speedup",
    )
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    train_x = load_mnist(args.data_root, device).train_x[:50_000]
    ways = ["plain", "batched"] + (["graphed"] if device.type == "cuda" else [])
    precisions = [False, True] if args.tf32 and device.type == "cuda" else [False]
    k = len(args.nz) * args.seeds
    rows = []
    for tf32 in precisions:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for way in ways:
            one_step = make_steps(way, args.nz, range(args.seeds), train_x, device, args.hidden)
            ms = time_way(one_step, device, args.rounds, args.steps)
            row = {
                "way": way,
                "models": k,
                "matmul_precision": matmul_precision(device),
                "ms_per_step": ms,
                "samples_per_s_per_model": 100 / ms * 1e3,
            }
            rows.append(row)
            print(
                f"{way:8s} {row['matmul_precision']:8s} K={k}: {ms:8.3f} ms per step, "
                f"{row['samples_per_s_per_model']:10.0f} samples/s per model",
                flush=True,
            )
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.json:
        info = environment_info(device)
        info["device"].pop("matmul_precision")  # per row here
        steps = {"environment": info, "rows": rows}
        if args.baseline_json:
            steps["baseline"] = json.loads(args.baseline_json.read_text())
        args.json.write_text(json.dumps(steps, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
