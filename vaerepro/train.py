"""The training loop: VAEs from config to CSV rows, checkpoints and final weights.

Read top to bottom: set up each model (`ModelRun`: model, optimizer, data, RNG, maybe resumed
from its checkpoint) -> loop over minibatches drawn by index -> every `eval_every` samples
evaluate both splits, append a CSV row, checkpoint -> save final weights. Usually one model
trains at a time; `--fused` trains several (differing only in N_z) in lockstep, one step
for all of them (gradients.py), with the same numbers as separate runs.
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
    models: list[VAE],
    opts: list[torch.optim.Optimizer],
    cfg: TrainConfig,
    train_x: torch.Tensor,
    autograd: bool = False,
) -> Callable[[list[torch.Tensor], list[torch.Generator]], None]:
    """A function doing one update of every model per call: model k on the minibatch
    train_x[idxs[k]], idxs[k] (M,), drawing its noise from gens[k]. `cfg` is the models'
    shared config (N_z aside).

    The Bernoulli model gets its gradients written out by hand (gradients.py: the same numbers
    as autograd, far less overhead); the Gaussian decoder, or `autograd=True` (the reference
    for tests and benchmarks), goes through autograd, which takes one model only.
    """
    hand_written = cfg.likelihood == "bernoulli" and not autograd
    if len(models) > 1 and not hand_written:
        raise ValueError("training models together needs the Bernoulli decoder's own gradient")
    grads = (
        BernoulliGradients(models, cfg.batch_size, cfg.n_latent_samples) if hand_written else None
    )
    xs = torch.empty((len(models), cfg.batch_size, train_x.shape[1]), device=train_x.device)
    binary = torch.empty_like(xs) if cfg.binarize == "dynamic" else None

    def step(idxs: list[torch.Tensor], gens: list[torch.Generator]) -> None:
        for k, (idx, gen) in enumerate(zip(idxs, gens, strict=True)):
            torch.index_select(train_x, 0, idx, out=xs[k])
            if binary is not None:
                torch.bernoulli(xs[k], generator=gen, out=binary[k])
        batch = xs if binary is None else binary
        if grads is not None:
            grads(batch, gens)
        else:
            model, opt = models[0], opts[0]
            opt.zero_grad(set_to_none=True)
            (-model(batch[0], cfg.n_latent_samples, gens[0]).elbo.mean()).backward()
        for opt in opts:
            opt.step()

    return step


def _eval_seed(seed: int, samples: int) -> int:
    # Evaluation noise depends only on (seed, samples), so a resumed run evaluates identically.
    return (seed * 1_000_003 + samples) % (2**63)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelRun:
    """One model's training state and files: model, optimizer, minibatch sampler and its
    generator, CSV rows and metadata; restored from its checkpoint when resuming."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: MnistSplits,
        out_dir: str | Path,
        device: torch.device,
        resume: bool,
        preset: str | None,
    ):
        cfg.validate()
        self.cfg, self.device = cfg, device
        self.files = files = RunFiles.of(out_dir, cfg.nz, cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = VAE.from_config(cfg).to(device)
        self.opt = make_optimizer(cfg, self.model)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.train_x, self.test_x = data.train_x[: cfg.train_size], data.test_x
        if cfg.binarize == "fixed":
            self.train_x = binarize_fixed(self.train_x, cfg.seed)
            self.test_x = binarize_fixed(self.test_x, cfg.seed + 1)
        self.batches = MinibatchIndices(cfg.train_size, cfg.batch_size, cfg.sampling, self.gen)
        self.rows: list[dict] = []
        self.samples, self.wall_before = 0, 0.0
        self.meta = {
            "config": cfg.to_dict(),
            "preset": preset,
            "seed": cfg.seed,
            "status": "running",
            "started": _now(),
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
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.batches.load_state_dict(ckpt["batches"])
            set_rng_state(ckpt["rng"])
            self.samples, self.wall_before = ckpt["samples"], ckpt["wall_s"]
            self.rows = ckpt["rows"]
            self.meta["started"] = read_json(files.json).get("started", self.meta["started"])
            self.meta["resumed"] = _now()
        write_json(self.meta, files.json)
        write_csv(pd.DataFrame(self.rows, columns=CSV_COLUMNS), files.csv)  # drops rows past ckpt

    def check_finite(self, since: int, samples: int) -> None:
        # A NaN/inf loss or gradient reaches the parameters within one step; checking them at
        # evaluations only keeps host syncs out of the loop.
        if not all(p.isfinite().all() for p in self.model.parameters()):
            raise TrainingDiverged(
                f"N_z={self.cfg.nz}: the loss or the parameters became NaN/inf between samples "
                f"{since} and {samples}. The CSV and checkpoint in {self.files.folder} hold the "
                f"last good state (samples={self.rows[-1]['samples'] if self.rows else 0})."
            )

    def log_evaluation(self, samples: int, wall_s: float, train_rate: float) -> dict:
        """Evaluate both splits, append the CSV row and write the CSV; returns the row."""
        cfg = self.cfg
        eval_gen = torch.Generator(device=self.device).manual_seed(_eval_seed(cfg.seed, samples))
        kw = dict(
            batch_size=cfg.eval_batch_size,
            n_samples=cfg.n_latent_samples,
            generator=eval_gen,
            binarize=cfg.binarize == "dynamic",
        )
        tr, te = evaluate(self.model, self.train_x, **kw), evaluate(self.model, self.test_x, **kw)
        row = {
            "samples": samples,
            "train_elbo": tr.elbo,
            "test_elbo": te.elbo,
            "train_loglik": tr.loglik,
            "train_kl": tr.kl,
            "test_loglik": te.loglik,
            "test_kl": te.kl,
            "wall_s": self.wall_before + wall_s,
            "train_samples_per_s": train_rate,
        }
        self.rows.append(row)
        write_csv(pd.DataFrame(self.rows, columns=CSV_COLUMNS), self.files.csv)
        return row

    def _weights(self) -> dict:
        # clones: with --fused the parameters are views into stacks shared by all models
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def checkpoint(self, samples: int, wall_s: float) -> None:
        save_torch(
            {
                "model": self._weights(),
                "optimizer": self.opt.state_dict(),
                "batches": self.batches.state_dict(),
                "rng": get_rng_state(),
                "samples": samples,
                "rows": self.rows,
                "config": self.cfg.to_dict(),
                "wall_s": self.wall_before + wall_s,
            },
            self.files.ckpt,
        )

    def finish(self, samples: int, trained_with: list[int]) -> pd.DataFrame:
        save_torch({"model": self._weights(), "config": self.cfg.to_dict()}, self.files.weights)
        last = self.rows[-1]
        self.meta.update(
            status="finished",
            samples_done=samples,
            wall_s=last["wall_s"],
            finished=_now(),
            final={k: last[k] for k in ("train_elbo", "test_elbo")},
        )
        if len(trained_with) > 1:
            self.meta["fused_with_nz"] = trained_with
        write_json(self.meta, self.files.json)
        return pd.DataFrame(self.rows, columns=CSV_COLUMNS)


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
    return train_together([cfg], data, out_dir, device, resume, progress, preset)[0]


def train_together(
    cfgs: list[TrainConfig],
    data: MnistSplits,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    preset: str | None = None,
    label: str = "",
) -> list[pd.DataFrame]:
    """Train the VAEs of `cfgs` (configs equal but for N_z) in lockstep, one fused step for
    all; each model gets the files, and the numbers, of a separate `train` run. `label`
    prefixes the progress bar (e.g. "model 2/5 ")."""
    device = torch.device(device)
    cfg = cfgs[0]
    for other in cfgs[1:]:
        diff = [d for d in config_diff(cfg.to_dict(), other.to_dict()) if not d.startswith("nz:")]
        if diff:
            raise ValueError("models trained together may differ in nz only: " + "; ".join(diff))
    if len(cfgs) > 1 and cfg.likelihood != "bernoulli":
        raise ValueError("--fused needs the Bernoulli decoder (its gradient is written by hand)")
    runs = [ModelRun(c, data, out_dir, device, resume, preset) for c in cfgs]
    samples = runs[0].samples
    if any(r.samples != samples for r in runs):
        raise RunFolderError(
            "the checkpoints are at different sample counts ("
            + ", ".join(f"N_z={r.cfg.nz}: {r.samples}" for r in runs)
            + "); resume them one at a time (without --fused)"
        )
    nzs = [r.cfg.nz for r in runs]
    train_step = make_train_step(
        [r.model for r in runs], [r.opt for r in runs], cfg, runs[0].train_x
    )
    bar = tqdm(
        total=cfg.samples,
        initial=samples,
        unit="sample",
        unit_scale=True,
        desc=f"{label}N_z=" + ",".join(map(str, nzs)),
        disable=not progress,
        dynamic_ncols=True,
    )
    start = interval_start = time.perf_counter()
    interval_samples = samples
    with sigint_flag() as interrupted:
        while samples < cfg.samples:
            train_step([r.batches.next() for r in runs], [r.gen for r in runs])
            samples += cfg.batch_size
            bar.update(cfg.batch_size)

            if samples % cfg.eval_every == 0:
                for r in runs:
                    r.check_finite(samples - cfg.eval_every, samples)
                train_rate = (samples - interval_samples) / (time.perf_counter() - interval_start)
                for r in runs:
                    row = r.log_evaluation(samples, time.perf_counter() - start, train_rate)
                    r.checkpoint(samples, time.perf_counter() - start)
                bar.set_postfix(train=f"{row['train_elbo']:.2f}", test=f"{row['test_elbo']:.2f}")
                interval_start, interval_samples = time.perf_counter(), samples
            if interrupted():
                for r in runs:
                    r.check_finite(r.rows[-1]["samples"] if r.rows else 0, samples)
                    r.checkpoint(samples, time.perf_counter() - start)
                bar.close()
                raise Interrupted(
                    f"N_z={','.join(map(str, nzs))}: interrupted at samples={samples}; "
                    f"checkpoint written to {', '.join(str(r.files.ckpt) for r in runs)}"
                )
    bar.close()
    return [r.finish(samples, nzs) for r in runs]


def load_model(files: RunFiles, device: torch.device | str = "cpu") -> VAE:
    """The final weights of a finished run, as a VAE in eval mode."""
    if not files.weights.exists():
        raise RunFolderError(f"final weights {files.weights} are missing (unfinished run?)")
    state = torch.load(files.weights, map_location=device, weights_only=False)
    model = VAE.from_config(TrainConfig(**state["config"])).to(device)
    model.load_state_dict(state["model"])
    return model.eval()
