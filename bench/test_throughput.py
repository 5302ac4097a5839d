"""Throughput of training and evaluation, our loop against the pyautoencoder baseline.

Every speed figure is a ratio of two benchmarks of this same session. `extra_info` carries
what `vaerepro hwtable` needs: samples per round, FLOPs per sample, N_z and implementation.
"""

import pytest
import torch
from pyautoencoder_baseline import Baseline
from step_setup import make_step
from torch.utils.data import Subset

from vaerepro.core.config import PAPER_NZ, preset
from vaerepro.core.device import synchronize
from vaerepro.core.evaluate import evaluate
from vaerepro.core.flops import step_matmuls, train_flops_per_sample
from vaerepro.core.model import VAE
from vaerepro.runs.loop import train

# The speed comparison runs both sides on the same protocol: pyautoencoder's (60k images in
# shuffled epochs, torch's Adagrad, no weight decay).
SWEEP_CFG = preset("pyautoencoder").replace(samples=200_000, eval_every=100_000)
QUICK_CFG = SWEEP_CFG.replace(samples=2_000, eval_every=1_000, train_size=2_000)  # smoke test


def _info(benchmark, impl, kind, nz, samples, device):
    benchmark.extra_info.update(
        impl=impl, kind=kind, nz=nz, samples_per_round=samples, device=device.type
    )


@pytest.mark.parametrize(
    "autograd,method",
    [(False, "aevb"), (True, "aevb"), (False, "wakesleep")],
    ids=["hand-written", "autograd", "wakesleep"],
)
@pytest.mark.parametrize("nz", PAPER_NZ)
def test_train_step_vaerepro(benchmark, nz, autograd, method, device, mnist, quick):
    """Our step; with autograd=True the same step with autograd's gradient, to show what the
    hand-written one buys; and the wake-sleep step (hand-written), beside AEVB's."""
    cfg = SWEEP_CFG.replace(nz=nz, method=method)
    _, one_step = make_step(cfg, mnist.train_x, autograd, device)
    steps = 5 if quick else 50

    def run():
        for _ in range(steps):
            one_step()
        synchronize(device)

    run()  # warm-up: allocator, kernels
    benchmark.pedantic(run, rounds=3 if quick else 10, warmup_rounds=1)
    impl = "vaerepro-autograd" if autograd else "vaerepro"
    if method == "wakesleep":
        impl = "vaerepro-wakesleep"
    _info(benchmark, impl, "train_step", nz, steps * cfg.batch_size, device)
    benchmark.extra_info["flop_per_sample"] = train_flops_per_sample(nz, cfg.hidden)


@pytest.mark.parametrize("nz", PAPER_NZ)
def test_train_step_baseline(benchmark, nz, device, data_root, quick):
    if device.type != "cpu":
        pytest.skip("the baseline is driven on the CPU, as its example does by default")
    base = Baseline(nz, data_root)
    steps = 5 if quick else 50

    def run():
        for _ in range(steps):
            base.step()

    run()
    benchmark.pedantic(run, rounds=3 if quick else 10, warmup_rounds=1)
    _info(benchmark, "pyautoencoder", "train_step", nz, steps * 100, device)


@pytest.mark.parametrize("nz", PAPER_NZ)
def test_matmul_limit(benchmark, nz, device, quick):
    """The device's matmul rate at the shapes of one training step: the hardware limit."""
    shapes = step_matmuls(nz, SWEEP_CFG.hidden, SWEEP_CFG.batch_size)
    pairs = [
        (torch.randn(m, k, device=device), torch.randn(k, n, device=device)) for m, k, n in shapes
    ]
    reps = 5 if quick else 50

    def run():
        for _ in range(reps):
            for a, b in pairs:
                torch.mm(a, b)
        synchronize(device)

    run()
    benchmark.pedantic(run, rounds=3 if quick else 10, warmup_rounds=1)
    _info(benchmark, "torch.mm", "matmul", nz, reps * SWEEP_CFG.batch_size, device)
    benchmark.extra_info["flop_per_sample"] = train_flops_per_sample(nz, SWEEP_CFG.hidden)


def test_eval_test_split_vaerepro(benchmark, device, mnist, quick):
    model = VAE(nz=20).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    test_x = mnist.test_x[:1000] if quick else mnist.test_x

    def run():
        evaluate(model, test_x, generator=gen)  # ends with a host sync

    run()
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _info(benchmark, "vaerepro", "eval", 20, len(test_x), device)


def test_eval_test_split_baseline(benchmark, device, data_root, quick):
    if device.type != "cpu":
        pytest.skip("the baseline is driven on the CPU")
    base = Baseline(20, data_root)
    test_set = Subset(base.test_set, range(1000)) if quick else base.test_set
    benchmark.pedantic(lambda: base.evaluate(test_set), rounds=3, warmup_rounds=1)
    _info(benchmark, "pyautoencoder", "eval", 20, len(test_set), device)


def test_short_sweep_vaerepro(benchmark, device, mnist, tmp_path, quick):
    """Five N_z, 2e5 samples each, evaluation every 1e5 on the full splits, CSVs written."""
    cfg = QUICK_CFG if quick else SWEEP_CFG

    def run():
        for nz in PAPER_NZ:
            train(cfg.replace(nz=nz), mnist, tmp_path, device, progress=False)

    benchmark.pedantic(run, rounds=1, iterations=1)
    _info(benchmark, "vaerepro", "sweep", 0, len(PAPER_NZ) * cfg.samples, device)


def test_short_sweep_baseline(benchmark, device, data_root, quick):
    if device.type != "cpu":
        pytest.skip("the baseline is driven on the CPU")
    cfg = QUICK_CFG if quick else SWEEP_CFG

    def run():
        for nz in PAPER_NZ:
            Baseline(nz, data_root, train_size=cfg.train_size).run(cfg.samples, cfg.eval_every)

    benchmark.pedantic(run, rounds=1, iterations=1)
    _info(benchmark, "pyautoencoder", "sweep", 0, len(PAPER_NZ) * cfg.samples, device)
