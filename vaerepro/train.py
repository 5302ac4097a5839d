"""The training loop: one VAE, from config to CSV rows, checkpoints and final weights.

Read top to bottom: set up (model, optimizer, data, RNG) -> maybe resume -> loop over
minibatches drawn by index -> every `eval_every` samples evaluate both splits, append a CSV
row, checkpoint -> save final weights.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import TrainConfig, config_diff
from .data import MinibatchIndices, MnistSplits, binarize_fixed
from .evaluate import evaluate
from .gradients import BernoulliGradients
from .model import VAE
from .optim import make_optimizer
from .store import (
    CSV_COLUMNS,
    RunFiles,
    RunFolderError,
    environment_info,
    read_json,
    save_torch,
    write_csv,
    write_json,
)


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN or infinite."""


class Interrupted(RuntimeError):
    """SIGINT arrived; a checkpoint of the current step was written."""


@contextmanager
def sigint_flag():
    """Within the block, SIGINT sets a flag (read by calling the yielded function) instead of
    raising KeyboardInterrupt mid-step, so a checkpoint is never of a half-applied update."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


def get_rng_state() -> dict:
    """Global RNG states (torch CPU and CUDA, numpy, Python); training itself draws from its
    own generator, saved with the minibatch sampler."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_status(files: RunFiles, cfg: TrainConfig, resume: bool, overwrite: bool) -> str:
    """What to do with one model's files: "new", "resume" or "skip" (already finished).

    Raises RunFolderError, before any work, when the folder holds a different or unfinished
    run and neither --resume nor --overwrite says what to do with it.
    """
    if overwrite or not files.json.exists():
        return "new"
    meta = read_json(files.json)
    diff = config_diff(meta.get("config", {}), cfg.to_dict())
    if diff:
        raise RunFolderError(
            f"{files.json} holds a run with a different config:\n  "
            + "\n  ".join(diff)
            + "\nUse another --out, or --overwrite to replace it."
        )
    if meta.get("status") == "finished":
        if resume:
            return "skip"
        raise RunFolderError(f"{files.json} is a finished run; use --overwrite to replace it.")
    if not resume:
        raise RunFolderError(
            f"{files.json} holds an unfinished run; continue it with --resume "
            f"{files.folder} or replace it with --overwrite."
        )
    return "resume"


def make_train_step(
    model: VAE,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    train_x: torch.Tensor,
    autograd: bool = False,
) -> Callable[[torch.Tensor, torch.Generator], None]:
    """A function doing one update per call on the minibatch train_x[idx], idx (M,), drawing
    its noise from `gen`.

    The Bernoulli model gets its gradients written out by hand (gradients.py: the same numbers
    as autograd, far less overhead); the Gaussian decoder, or `autograd=True` (the reference
    for tests and benchmarks), goes through autograd.
    """
    manual = (
        BernoulliGradients(model, cfg.batch_size, cfg.n_latent_samples)
        if cfg.likelihood == "bernoulli" and not autograd
        else None
    )
    x = torch.empty((cfg.batch_size, train_x.shape[1]), device=train_x.device)

    def step(idx: torch.Tensor, gen: torch.Generator) -> None:
        torch.index_select(train_x, 0, idx, out=x)
        xb = torch.bernoulli(x, generator=gen) if cfg.binarize == "dynamic" else x
        if manual is not None:
            manual(xb, gen)
        else:
            opt.zero_grad(set_to_none=True)
            (-model(xb, cfg.n_latent_samples, gen).elbo.mean()).backward()
        opt.step()

    return step


def _eval_seed(seed: int, samples: int) -> int:
    # Evaluation noise depends only on (seed, samples), so a resumed run evaluates identically.
    return (seed * 1_000_003 + samples) % (2**63)


def train(
    cfg: TrainConfig,
    data: MnistSplits,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    preset: str | None = None,
) -> pd.DataFrame:
    """Train one VAE per `cfg`, writing its files into `out_dir`; returns the CSV rows.

    ELBO columns are nats per datapoint; `wall_s` counts from the run's start (across
    resumes), `train_samples_per_s` is the training rate over the last interval.
    """
    cfg.validate()
    device = torch.device(device)
    files = RunFiles.of(out_dir, cfg.nz, cfg.seed)

    torch.manual_seed(cfg.seed)
    model = VAE.from_config(cfg).to(device)
    opt = make_optimizer(cfg, model)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    train_x, test_x = data.train_x[: cfg.train_size], data.test_x
    if cfg.binarize == "fixed":
        train_x, test_x = binarize_fixed(train_x, cfg.seed), binarize_fixed(test_x, cfg.seed + 1)
    batches = MinibatchIndices(cfg.train_size, cfg.batch_size, cfg.sampling, gen)

    rows: list[dict] = []
    samples, wall_before = 0, 0.0
    meta = {
        "config": cfg.to_dict(),
        "preset": preset,
        "seed": cfg.seed,
        "status": "running",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **environment_info(device),
    }
    if not resume:  # a fresh start must never pick up another run's checkpoint later
        files.ckpt.unlink(missing_ok=True)
        files.weights.unlink(missing_ok=True)
    elif files.ckpt.exists():
        ckpt = torch.load(files.ckpt, map_location=device, weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise RunFolderError(
                f"{files.ckpt} was written by a different config: "
                + "; ".join(config_diff(ckpt["config"], cfg.to_dict()))
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        batches.load_state_dict(ckpt["batches"])
        set_rng_state(ckpt["rng"])
        samples, wall_before, rows = ckpt["samples"], ckpt["wall_s"], ckpt["rows"]
        meta["started"] = read_json(files.json).get("started", meta["started"])
        meta["resumed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(meta, files.json)
    write_csv(pd.DataFrame(rows, columns=CSV_COLUMNS), files.csv)  # drops rows past the ckpt

    def check_finite(since: int) -> None:
        # A NaN/inf loss or gradient reaches the parameters within one step; checking them at
        # evaluations only keeps host syncs out of the loop.
        if not all(p.isfinite().all() for p in model.parameters()):
            raise TrainingDiverged(
                f"N_z={cfg.nz}: the loss or the parameters became NaN/inf between samples "
                f"{since} and {samples}. The CSV and checkpoint in {files.folder} hold the "
                f"last good state (samples={rows[-1]['samples'] if rows else 0})."
            )

    def checkpoint() -> None:
        save_torch(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "batches": batches.state_dict(),
                "rng": get_rng_state(),
                "samples": samples,
                "rows": rows,
                "config": cfg.to_dict(),
                "wall_s": wall_before + time.perf_counter() - start,
            },
            files.ckpt,
        )

    bar = tqdm(
        total=cfg.samples,
        initial=samples,
        unit="sample",
        unit_scale=True,
        desc=f"N_z={cfg.nz}",
        disable=not progress,
        dynamic_ncols=True,
    )
    start = interval_start = time.perf_counter()
    interval_samples = samples
    train_step = make_train_step(model, opt, cfg, train_x)
    with sigint_flag() as interrupted:
        while samples < cfg.samples:
            train_step(batches.next(), gen)
            samples += cfg.batch_size
            bar.update(cfg.batch_size)

            if samples % cfg.eval_every == 0:
                check_finite(samples - cfg.eval_every)
                train_rate = (samples - interval_samples) / (time.perf_counter() - interval_start)
                eval_gen = torch.Generator(device=device).manual_seed(_eval_seed(cfg.seed, samples))
                kw = dict(
                    batch_size=cfg.eval_batch_size,
                    n_samples=cfg.n_latent_samples,
                    generator=eval_gen,
                    binarize=cfg.binarize == "dynamic",
                )
                tr, te = evaluate(model, train_x, **kw), evaluate(model, test_x, **kw)
                rows.append(
                    {
                        "samples": samples,
                        "train_elbo": tr.elbo,
                        "test_elbo": te.elbo,
                        "train_loglik": tr.loglik,
                        "train_kl": tr.kl,
                        "test_loglik": te.loglik,
                        "test_kl": te.kl,
                        "wall_s": wall_before + time.perf_counter() - start,
                        "train_samples_per_s": train_rate,
                    }
                )
                bar.set_postfix(train=f"{tr.elbo:.2f}", test=f"{te.elbo:.2f}")
                write_csv(pd.DataFrame(rows, columns=CSV_COLUMNS), files.csv)
                checkpoint()
                interval_start, interval_samples = time.perf_counter(), samples
            if interrupted():
                check_finite(rows[-1]["samples"] if rows else 0)
                checkpoint()
                bar.close()
                raise Interrupted(
                    f"N_z={cfg.nz}: interrupted at samples={samples}; "
                    f"checkpoint written to {files.ckpt}"
                )
    bar.close()

    save_torch({"model": model.state_dict(), "config": cfg.to_dict()}, files.weights)
    last = rows[-1]
    meta.update(
        status="finished",
        samples_done=samples,
        wall_s=last["wall_s"],
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        final={k: last[k] for k in ("train_elbo", "test_elbo")},
    )
    write_json(meta, files.json)
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def load_model(files: RunFiles, device: torch.device | str = "cpu") -> VAE:
    """The final weights of a finished run, as a VAE in eval mode."""
    if not files.weights.exists():
        raise RunFolderError(f"final weights {files.weights} are missing (unfinished run?)")
    state = torch.load(files.weights, map_location=device, weights_only=False)
    model = VAE.from_config(TrainConfig(**state["config"])).to(device)
    model.load_state_dict(state["model"])
    return model.eval()
