"""`vaerepro loglik`: the marginal likelihood log p(x) of every finished model of a run folder,
beside its ELBO on the same datapoints, in nats per datapoint (core/marginal.py)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from vaerepro.core.config import TrainConfig, model_name
from vaerepro.core.data import MnistSplits, binarize_fixed
from vaerepro.core.errors import RunFolderError
from vaerepro.core.evaluate import evaluate
from vaerepro.core.marginal import hmc_estimate_batched, importance_sampled
from vaerepro.core.model import VAE
from vaerepro.core.numbers import format_duration
from vaerepro.runs.folder import load_model
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.records import load_run, parse_config

COLUMNS = [
    "method",
    "nz",
    "seed",
    "samples",
    "split",
    "n",
    "estimator",
    "loglik",
    "loglik_se",
    "elbo",
    "gap",
]


@dataclass(frozen=True)
class LoglikOptions:
    """k: importance samples per datapoint; split: train or test; n: its first n datapoints
    (None: all); noise_seed: of the estimator's and the ELBO's noise (not a training seed);
    estimator: "is" (importance sampling, k draws) or "hmc" (the paper's, which MCEM models
    always get)."""

    k: int = 5000
    split: str = "test"
    n: int | None = None
    noise_seed: int = 0
    estimator: str = "is"


def finished_models(run: Path, say=print) -> list[tuple[TrainConfig, RunFiles, int]]:
    """(config, files, samples trained) of every finished model of the run (`say` names the
    unfinished ones, which are left out); RunFolderError, before any work, naming the first
    finished model whose final weights are missing, or when no model has finished."""
    models = []
    for meta, _ in load_run(run):
        cfg = parse_config(meta["config"], run)
        files = RunFiles.of_config(run, cfg)
        if meta.get("status") != "finished":
            say(f"{model_name(cfg)}: {meta.get('status')}, not finished: left out")
            continue
        if not files.weights.exists():
            raise RunFolderError(
                f"{files.weights} is missing: `loglik` needs each finished model's final "
                "weights (they are not committed to results/: retrain, or point at the run's "
                "own folder)"
            )
        models.append((cfg, files, int(meta["samples_done"])))
    if not models:
        raise RunFolderError(f"{run} has no finished model yet: nothing to estimate")
    return models


def split_data(cfg: TrainConfig, data: MnistSplits, opts: LoglikOptions) -> torch.Tensor:
    """The split's first n images as the model's ELBO evaluation saw them: grey levels, or
    its fixed binarization; a dynamically binarized model gets one Bernoulli draw."""
    x = data.test_x if opts.split == "test" else data.train_x[: cfg.train_size]
    if cfg.binarize == "fixed":
        x = binarize_fixed(x, cfg.seed, opts.split)
    x = x[: opts.n]
    if cfg.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(opts.noise_seed))
    return x


def model_loglik(model: VAE, cfg: TrainConfig, x: torch.Tensor, opts: LoglikOptions) -> dict:
    """One table row: log p(x) mean over x (N, 784) and the Monte Carlo standard error of that
    mean, the ELBO on the same x, and the gap log p(x) - ELBO (nats per datapoint), by
    `opts.estimator`. A Monte Carlo EM model has no encoder, hence no proposal and no ELBO:
    its log p(x) is the paper's HMC estimator (chains from the best of many prior draws; `k`
    does not apply), its ELBO and gap NaN."""
    gen = torch.Generator().manual_seed(opts.noise_seed)
    encoder = cfg.has_encoder
    if opts.estimator == "hmc" or not encoder:
        est, estimator = hmc_estimate_batched(model, x, gen, encoder), "HMC"
    else:
        est, estimator = importance_sampled(model, x, opts.k, gen), f"IS k={opts.k}"
    elbo = math.nan
    if encoder:
        elbo = evaluate(model, x.to(next(model.parameters()).dtype), generator=gen).elbo
    loglik = float(est.value.mean())
    return {
        "method": cfg.method,
        "nz": cfg.nz,
        "seed": cfg.seed,
        "split": opts.split,
        "n": len(x),
        "estimator": estimator,
        "loglik": loglik,
        "loglik_se": float(est.stderr.square().sum().sqrt()) / len(x),
        "elbo": elbo,
        "gap": loglik - elbo,
    }


def run_loglik(run: Path, data: MnistSplits, opts: LoglikOptions, progress=print) -> pd.DataFrame:
    """Every finished model of the run, one row each (COLUMNS)."""
    rows, models = [], finished_models(run, progress)
    start = time.perf_counter()
    for i, (cfg, files, samples) in enumerate(models, 1):
        model = load_model(files)
        x = split_data(cfg, data, opts)
        rows.append({**model_loglik(model, cfg, x, opts), "samples": samples})
        elapsed = time.perf_counter() - start
        left = elapsed / i * (len(models) - i)
        progress(
            f"model {i}/{len(models)} ({model_name(cfg)}, {len(x)} {opts.split} "
            f"images): {format_duration(elapsed)} elapsed, about {format_duration(left)} left"
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def loglik_file(run: Path, opts: LoglikOptions) -> Path:
    n = "all" if opts.n is None else str(opts.n)
    estimator = f"k{opts.k}" if opts.estimator == "is" else "hmc"
    return run / f"loglik-{opts.split}-n{n}-{estimator}.csv"


def standard_error_note(df: pd.DataFrame) -> str:
    worst = df.loglik_se.max() if len(df) else math.nan
    return (
        "log p(x) and ELBO: means over the datapoints, nats per datapoint; loglik_se: the "
        f"Monte Carlo standard error of the mean log p(x) (largest {worst:.3f}); gap = "
        "log p(x) - ELBO."
    )
