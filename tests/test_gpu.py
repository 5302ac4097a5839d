"""The CUDA path: skipped where torch sees no CUDA device (CI has none); bench/gpu_run.sh runs
them first on a lent GPU. With VAEREPRO_GPU_TESTS_DEVICE=cpu they run on the CPU instead (the
CUDA graph tests aside): the script's dry run, which CI runs, checks the tests themselves."""

import os
import signal

import pandas as pd
import pytest
import torch
from helpers import (
    DETERMINISTIC,
    assert_batched_gradients_equal_autograd,
    batched_and_separate,
    cli_process,
    rows,
    seeded_models,
    tiny,
    wait_until,
)

from vaerepro.cli import main
from vaerepro.core.batched import PARAMS
from vaerepro.core.config import TrainConfig
from vaerepro.core.data import MinibatchIndices
from vaerepro.core.device import resolve_device
from vaerepro.core.gradients import BernoulliGradients
from vaerepro.core.optim import make_optimizer
from vaerepro.core.step import make_train_step

DEVICE = os.environ.get("VAEREPRO_GPU_TESTS_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="torch sees no CUDA device"
    ),
]
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
NZS = (2, 5, 3)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(DEVICE).manual_seed(seed)


def test_device_auto_picks_cuda():
    assert resolve_device("auto").type == DEVICE


def test_hand_written_gradients_equal_autograd_on_the_gpu():
    """One model (BernoulliGradients) and three at once (BatchedAEVB, every parameter and the
    padding), float64."""
    assert_batched_gradients_equal_autograd(NZS, DEVICE)
    xs = torch.rand((len(NZS), 40, 784), generator=torch.Generator().manual_seed(1))
    xs = xs.double().to(DEVICE)
    autos, manuals = seeded_models(NZS, DEVICE), seeded_models(NZS, DEVICE)
    for i, (auto, manual) in enumerate(zip(autos, manuals, strict=True)):
        (-auto(xs[i], 2, _gen(7 + i)).elbo.mean()).backward()
        BernoulliGradients([manual], 40, 2)(xs[i : i + 1], [_gen(7 + i)])
        for name in PARAMS:
            a, b = auto.get_parameter(name).grad, manual.get_parameter(name).grad
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13, msg=name)


def test_k_model_step_equals_k_separate_steps_on_the_gpu():
    _, together, opts_t, alone, opts_a = batched_and_separate(NZS, 6, 2, DEVICE)
    for a, b, oa, ob in zip(together, alone, opts_t, opts_a, strict=True):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=name)
            torch.testing.assert_close(oa.state[p]["sum"], ob.state[q]["sum"], msg=name)


@cuda_only
def test_a_graphed_step_equals_an_ungraphed_one(mnist):
    """Twenty float32 steps of three models through the warm-up, minibatches and noise drawn
    inside the graph: the weights of the eager batched step, and the same generator states."""
    cfg = TrainConfig(adagrad_warmup=5, train_size=1000)
    train_x = mnist.train_x[:1000].cuda()
    runs = []
    for graphs in (False, True):
        models = [m.float() for m in seeded_models(NZS, "cuda")]
        opts = [make_optimizer(cfg, m) for m in models]
        gens = [torch.Generator("cuda").manual_seed(10 + i) for i in range(len(NZS))]
        batches = [MinibatchIndices(1000, cfg.batch_size, "replacement", g) for g in gens]
        step = make_train_step(models, opts, cfg, train_x, cuda_graphs=graphs)
        for _ in range(20):
            step.run(batches, gens)
        step.sync()
        runs.append((models, [g.get_state() for g in gens]))
    (eager, eager_gens), (graphed, graphed_gens) = runs
    for a, b in zip(eager, graphed, strict=True):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)
    assert all(torch.equal(a, b) for a, b in zip(eager_gens, graphed_gens, strict=True))


@pytest.mark.parametrize(
    "graphs", [pytest.param(False, id="eager"), pytest.param(True, marks=cuda_only, id="graphs")]
)
def test_sigkill_and_resume_on_the_gpu(tmp_path, data_root, graphs):
    """Killed after its first CSV row, resumed: the CSV of an uninterrupted GPU run."""
    extra = ["--device", DEVICE, "--samples", "4000", "--stacked"]
    extra += ["--cuda-graphs"] if graphs else []
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(tiny(whole, data_root, *extra, nz=(3, 5))) == 0
    proc = cli_process(*tiny(cut, data_root, *extra, nz=(3, 5)))
    wait_until(proc, lambda: rows(cut / "nz5-seed0.csv") >= 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows(cut / "nz5-seed0.csv") < 4, "the run ended before the kill"
    assert main(["reproduce", "--resume", str(cut), "--no-progress", "--no-plot"]) == 0
    for nz in (3, 5):
        got, expected = (pd.read_csv(f / f"nz{nz}-seed0.csv") for f in (cut, whole))
        pd.testing.assert_frame_equal(got[DETERMINISTIC], expected[DETERMINISTIC], rtol=1e-5)
