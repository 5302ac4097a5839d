"""Helpers shared by the test modules: tiny runs' command lines, folder snapshots, the columns
a run reproduces exactly, waiting for a process's progress, and checks that a refusal is
clean."""

import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vaerepro.analysis.reference import paper_elbo
from vaerepro.cli import main
from vaerepro.core.config import TrainConfig, preset
from vaerepro.runs import writes
from vaerepro.runs.layout import CSV_COLUMNS, MARGINAL_COLUMNS, RunFiles
from vaerepro.runs.trajectory import TRAJECTORY, write_trajectory

# The CSV columns a run reproduces to the last bit (under the same thread count): all but
# the clock's.
DETERMINISTIC = [c for c in CSV_COLUMNS if c not in ("wall_s", "train_samples_per_s")]

# A run of seconds: 20 minibatches of a small model (64 hidden units), an evaluation every 10.
# The warm-up is 5 minibatches (the paper's is 100, the whole run), so that the weights move
# and a comparison of two runs compares trained models.
TINY = [
    "--samples",
    "2000",
    "--eval-every",
    "1000",
    "--train-size",
    "2000",
    "--hidden",
    "64",
    "--adagrad-warmup",
    "5",
    "--no-progress",
    "--no-plot",
    "--no-estimate",  # the plan's timed warm-up: tested by test_cli's plan test
    "--device",
    "cpu",
    "--jobs",  # one model at a time, in-process (tests/test_seeds.py tests --jobs 2)
    "1",
]


def tiny(
    out: Path, data_root: Path | None, *extra: str, nz=(3,), plot=False, estimate=False
) -> list[str]:
    """argv of a tiny `vaerepro reproduce` run of `nz` into out; `extra` comes last (a later
    option wins)."""
    argv = ["reproduce", "--nz", *map(str, nz), "--out", str(out)]
    if data_root is not None:
        argv += ["--data-root", str(data_root)]
    drop = ({"--no-plot"} if plot else set()) | ({"--no-estimate"} if estimate else set())
    return [*argv, *(a for a in TINY if a not in drop), *extra]


def copy_run(folder: Path, tmp_path: Path, name: str = "run") -> Path:
    """A copy of a shared run folder under tmp_path, free to change."""
    return Path(shutil.copytree(folder, tmp_path / name))


def snapshot(folder: Path, temporary: bool = True) -> dict[str, str]:
    """SHA-256 of every file under folder, by relative path; without `temporary`, the run
    writers' own temporary files (.NAME.vaerepro-XXXX.tmp, removed when a write fails) are
    left out."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (temporary or ".vaerepro-" not in p.name)
    }


def rows(csv: Path) -> int:
    """Data rows of a run's CSV (0 while it does not exist). The CSV is replaced atomically,
    so a reader sees a whole file."""
    try:
        return max(len(csv.read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


def cli_process(*argv: str) -> subprocess.Popen:
    """`python -m vaerepro ARGV` in a process of its own (the environment's thread count:
    conftest.py)."""
    cmd = [sys.executable, "-m", "vaerepro", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(
    process: subprocess.Popen | None, predicate: Callable[[], bool], timeout: float = 600.0
) -> float:
    """Poll `predicate` every 10 ms until it holds; returns time.monotonic() then. Fails the
    test when `process` ends first (with its stderr) or after `timeout` seconds (generous:
    progress, not time, is what is awaited)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            err = process.stderr.read() if process.stderr else ""
            pytest.fail(f"the process ended (status {process.returncode}) first:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s")
        time.sleep(0.01)
    return time.monotonic()


def refused(argv: list[str], capsys, *messages: str) -> str:
    """Run the CLI in-process; assert exit status 2 and each message in stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    for message in messages:
        assert message in err, err
    assert "Traceback" not in err
    return err


def synthetic_sweep(folder: Path, nz: int, offsets, samples, method: str = "aevb") -> Path:
    """A finished run folder of one method and N_z and len(offsets) seeds: seed s logs the
    paper's curve of that method + offsets[s] on train and - offsets[s] on test. `samples`
    sets the evaluation grid (every gcd(samples) up to max(samples)): a finished model logs
    every evaluation of it (load_run checks), and -150 + offset where the paper has no value.
    """
    folder.mkdir(parents=True, exist_ok=True)
    every, budget = math.gcd(*map(int, samples)), int(max(samples))
    grid = np.arange(every, budget + 1, every)
    configs = [
        TrainConfig(nz=nz, seed=s, method=method, samples=budget, eval_every=every).to_dict()
        for s in range(len(offsets))
    ]
    for cfg, offset in zip(configs, offsets, strict=True):
        rows = {c: np.zeros(len(grid)) for c in CSV_COLUMNS if c not in MARGINAL_COLUMNS}
        rows["samples"] = grid
        rows["train_elbo"] = np.nan_to_num(paper_elbo(nz, "train", grid, method), nan=-150) + offset
        rows["test_elbo"] = np.nan_to_num(paper_elbo(nz, "test", grid, method), nan=-150) - offset
        files = RunFiles.of_config(folder, cfg)
        pd.DataFrame(rows).to_csv(files.csv, index=False)
        files.json.write_text(json.dumps({"config": cfg}))
    (folder / "run.json").write_text(json.dumps({"preset": "paper", "configs": configs}))
    return folder


def fake_ci_run(folder: Path, seed: int, elbo: float, nzs=(3,), trajectory=None) -> Path:
    """A run folder of the ci config, one evaluation long (one row at 1e5 samples per N_z),
    for make-reference and check; with `trajectory`, a tier-1 file whose values all equal it."""
    folder.mkdir(parents=True)
    for nz in nzs:
        meta = {
            "config": preset("ci").replace(nz=nz, seed=seed, samples=100_000).to_dict(),
            "device": {"threads": 2, "type": "cpu"},
            "versions": {"torch": "2.14.1"},
        }
        (folder / f"nz{nz}-seed{seed}.json").write_text(json.dumps(meta))
        row = {c: 0.0 for c in CSV_COLUMNS if c not in MARGINAL_COLUMNS} | {"samples": 100000}
        row |= {"train_elbo": elbo, "test_elbo": elbo / 2}
        pd.DataFrame([row]).to_csv(folder / f"nz{nz}-seed{seed}.csv", index=False)
    if trajectory is not None:
        values = pd.DataFrame(
            [
                {"method": m, "nz": nz, "split": s, "samples": 1000, "term": t, "value": trajectory}
                for m in ("aevb", "wakesleep")
                for nz in nzs
                for s in ("train", "test")
                for t in ("elbo", "loglik", "kl")
            ]
        )
        write_trajectory(values, folder, TRAJECTORY)
        meta = json.loads((folder / "trajectory.json").read_text())
        meta["device"]["threads"] = 2  # as the fake models: one rounding-run label
        (folder / "trajectory.json").write_text(json.dumps(meta))
    return folder


def crash_at_the_second_checkpoint(monkeypatch) -> None:
    """Make a run's second checkpoint write raise KeyboardInterrupt, a simulated crash: its
    JSON has recorded that checkpoint, which with the CSV's new row has not landed."""
    real_write, calls = writes.atomic_write_bytes, []

    def crash(path, data):
        if path.suffix == ".ckpt":
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated crash")
        real_write(path, data)

    monkeypatch.setattr("vaerepro.runs.folder.atomic_write_bytes", crash)


def seeded_models(nzs, device="cpu") -> list:
    """Float64 VAEs of N_z `nzs` (hidden 32), weights ~ N(0, 0.1^2) seeded by position (away
    from the near-zero init, so that every gradient term matters)."""
    from vaerepro.core.model import VAE

    models = []
    for i, nz in enumerate(nzs):
        torch.manual_seed(i)
        model = VAE(nz=nz, hidden=32).double()
        for p in model.parameters():
            p.data.normal_(0.0, 0.1)
        models.append(model.to(device))
    return models


def batched_and_separate(nzs, steps: int, warmup: int, device="cpu"):
    """The `seeded_models(nzs)` trained `steps` steps by one BatchedAEVB and, copies of them,
    one at a time by BernoulliGradients and their own Adagrad (warm-up `warmup`), on the same
    random minibatches and noise. Returns (batched, its models, their optimizers, the separate
    models, theirs), written back."""
    from vaerepro.core.batched import BatchedAEVB
    from vaerepro.core.config import TrainConfig
    from vaerepro.core.gradients import BernoulliGradients
    from vaerepro.core.optim import make_optimizer

    cfg = TrainConfig(adagrad_warmup=warmup, train_size=1000)
    together, alone = seeded_models(nzs, device), seeded_models(nzs, device)
    opts_t = [make_optimizer(cfg, m) for m in together]
    opts_a = [make_optimizer(cfg, m) for m in alone]
    batched = BatchedAEVB(together, opts_t, 50, z_draws=2)
    gen = torch.Generator().manual_seed(5)

    def gens(step: int, i: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(100 * step + i)

    for step in range(steps):
        xs = torch.rand((len(nzs), 50, 784), generator=gen, dtype=torch.float64).round()
        xs = xs.to(device)
        batched(xs, [gens(step, i) for i in range(len(nzs))])
        for i, (model, opt) in enumerate(zip(alone, opts_a, strict=True)):
            BernoulliGradients([model], 50, z_draws=2)(xs[i : i + 1], [gens(step, i)])
            opt.step()
    batched.write_back()
    return batched, together, opts_t, alone, opts_a


def assert_batched_gradients_equal_autograd(nzs, device) -> None:
    """BatchedAEVB's gradient of the `seeded_models(nzs)` (float64, L = 2, 40 random images)
    equals autograd's of -ELBO through each model's own forward with the same noise, every
    parameter, and the padding's gradient is exactly 0."""
    from vaerepro.core.batched import PARAMS, BatchedAEVB
    from vaerepro.core.config import TrainConfig
    from vaerepro.core.optim import make_optimizer

    models = seeded_models(nzs, device)
    batched = BatchedAEVB(models, [make_optimizer(TrainConfig(), m) for m in models], 40, 2)
    xs = torch.rand((len(nzs), 40, 784), generator=torch.Generator().manual_seed(1))
    xs = xs.double().to(device)

    def gen(i: int) -> torch.Generator:
        return torch.Generator(device).manual_seed(7 + i)

    batched.draw_noise([gen(i) for i in range(len(nzs))])
    batched.gradients(xs)
    z = max(nzs)
    for i, (model, nz) in enumerate(zip(seeded_models(nzs, device), nzs, strict=True)):
        (-model(xs[i], 2, gen(i)).elbo.mean()).backward()
        for name in PARAMS:
            stacked = batched.grad[name][i]
            if name.startswith("enc_out."):  # mu rows at [0, nz), log sigma^2 at [Z, Z + nz)
                got = torch.cat([stacked[:nz], stacked[z : z + nz]])
                padding = torch.cat([stacked[nz:z], stacked[z + nz :]])
            elif name == "dec.weight":
                got, padding = stacked[:, :nz], stacked[:, nz:]
            else:
                got, padding = stacked, stacked[:0]
            expected = model.get_parameter(name).grad
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13, msg=name)
            assert (padding == 0).all(), f"{name}: the padding's gradient is not 0"
