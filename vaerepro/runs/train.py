"""The training loop: VAEs from config to CSV rows, checkpoints and final weights.

Read top to bottom: set up each model (`ModelRun`: model, optimizer, data, RNG, maybe resumed
from its checkpoint) -> loop over minibatches drawn by index -> every `eval_every` samples
evaluate both splits, append a CSV row, checkpoint -> save final weights. Usually one model
trains at a time; `--stacked` trains several (differing only in N_z) in lockstep, one step
for all of them (gradients.py), with the same numbers as separate runs.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from vaerepro.core import wakesleep
from vaerepro.core.config import TrainConfig, config_diff
from vaerepro.core.data import MinibatchIndices, MnistSplits, binarize_fixed
from vaerepro.core.errors import RunFolderError, TrainingDiverged, UsageError
from vaerepro.core.evaluate import evaluate
from vaerepro.core.files import sha256
from vaerepro.core.gradients import BernoulliGradients, covers
from vaerepro.core.model import VAE
from vaerepro.core.optim import make_optimizer
from vaerepro.core.wakesleep import WakeSleepGradients
from vaerepro.runs.layout import CSV_COLUMNS, RunFiles
from vaerepro.runs.provenance import environment_info
from vaerepro.runs.records import load_torch, parse_config, read_csv, read_model_json
from vaerepro.runs.writes import atomic_write_bytes, torch_bytes, write_csv, write_json


class Interrupted(RuntimeError):
    """A stop signal arrived; a checkpoint of the current step was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum  # the process exits with 128 + signum, as if killed by it


# Signals that stop a run cleanly: Ctrl-C, schedulers and `timeout`/`docker stop` (TERM), a
# closed terminal (HUP), and the user signals some schedulers send before a time limit.
STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


@contextmanager
def stop_signals():
    """Within the block, the STOP_SIGNALS only record their number instead of stopping the
    process mid-step; the yielded function returns the first one's number (0: none yet). A
    checkpoint is thus never of a half-applied update, and a second signal cannot interrupt
    the checkpoint write."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    previous = {
        s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS
    }
    try:
        yield lambda: received[0] if received else 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def get_rng_state() -> dict:
    """Global torch RNG states (CPU and CUDA; tensors only). Training draws from its own
    generators (saved with the minibatch sampler); these are kept for anything else."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an asynchronous device (CUDA, MPS), so that a clock read
    afterwards measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "batches",
    "rng",
    "samples",
    "rows",
    "config",
    "wall_s",
    "device",
}


def _restart_hint(files: RunFiles, cfg: TrainConfig) -> str:
    return (
        f"To restart N_z={cfg.nz} from scratch on purpose, delete {files.folder / files.stem}.* "
        f"and run `vaerepro reproduce --resume {files.folder}` again (--overwrite restarts "
        "the whole sweep)."
    )


def _csv_samples(files: RunFiles) -> list[int]:
    """Sample counts of the CSV's rows ([] when it is absent or has no rows)."""
    if not files.csv.exists() or not files.csv.read_text().strip().count("\n"):
        return []
    return [int(s) for s in read_csv(files.csv).samples]


def _trusted_rows(files: RunFiles, meta: dict) -> str:
    """Which CSV rows a checkpoint recorded in `meta` vouches for, in words."""
    recorded = [c["samples"] for c in meta.get("checkpoints", [])]
    rows = [s for s in _csv_samples(files) if recorded and s <= max(recorded)]
    if not rows:
        return f"{files.csv.name} holds no row written before the last recorded checkpoint."
    return f"{files.csv.name} is trustworthy up to its row at samples={rows[-1]}."


def load_checkpoint(
    files: RunFiles, meta: dict, cfg: TrainConfig, device: torch.device | None
) -> dict:
    """The checkpoint of `files`, verified against the checksums in `meta` (its JSON), loaded
    on the CPU as tensors and plain data. RunFolderError naming the file (and what to do)
    when it is corrupted, unreadable, of another config, or from another device type."""
    hint = _restart_hint(files, cfg)
    if "checkpoints" not in meta:
        raise RunFolderError(
            f"{files.ckpt} cannot be resumed: {files.json.name} records no checksum for it "
            f"(written by an older vaerepro). {hint}"
        )
    try:
        ckpt = load_torch(files.ckpt, [c["sha256"] for c in meta["checkpoints"]])
    except RunFolderError as err:
        raise RunFolderError(f"{err}. {_trusted_rows(files, meta)} {hint}") from err
    missing = sorted(CHECKPOINT_KEYS - set(ckpt))
    if missing:
        raise RunFolderError(f"{files.ckpt} lacks {missing}. {hint}")
    parse_config(ckpt["config"], files.ckpt)
    if diff := config_diff(ckpt["config"], cfg.to_dict()):
        raise RunFolderError(f"{files.ckpt} was written by a different config: " + "; ".join(diff))
    if device is not None and ckpt["device"] != device.type:
        raise RunFolderError(
            f"{files.ckpt} was written on a {ckpt['device']} device; resuming it on "
            f"{device.type} would not continue the same run. Resume with --device "
            f"{ckpt['device']}. {hint}"
        )
    return ckpt


def run_status(
    files: RunFiles,
    cfg: TrainConfig,
    resume: bool,
    overwrite: bool,
    device: torch.device | None = None,
) -> str:
    """What to do with one model's files: "new", "resume" or "skip" (already finished).

    Raises RunFolderError, before any work, when the folder holds a different or unfinished
    run and neither --resume nor --overwrite says what to do with it, or when files needed to
    resume are missing or fail their checks (the checkpoint is verified here).
    """
    if overwrite:
        return "new"
    if not files.json.exists():
        leftovers = [p.name for p in (files.csv, files.ckpt, files.weights) if p.exists()]
        if leftovers:
            raise RunFolderError(
                f"{files.json} is missing, but {', '.join(leftovers)} exist in {files.folder}; "
                f"vaerepro neither guesses which run they belong to nor deletes them. "
                + _restart_hint(files, cfg)
            )
        return "new"
    meta = read_model_json(files.json)
    diff = config_diff(meta["config"], cfg.to_dict())
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
    if files.ckpt.exists():
        load_checkpoint(files, meta, cfg, device)
    elif _csv_samples(files):
        raise RunFolderError(
            f"{files.ckpt} is missing, but {files.csv.name} has rows up to samples="
            f"{_csv_samples(files)[-1]}: resuming would silently start N_z={cfg.nz} again at 0 "
            f"and rewrite its CSV. " + _restart_hint(files, cfg)
        )
    return "resume"


@dataclass
class TrainStep:
    """One update of every model per call: model k on the minibatch train_x[idxs[k]], idxs[k]
    (M,), drawing its noise from gens[k]. `gradient` says how the gradient is computed."""

    step: Callable[[list[torch.Tensor], list[torch.Generator]], None]
    gradient: str  # "hand-written" or "autograd", with the reason when not the default

    def __call__(self, idxs: list[torch.Tensor], gens: list[torch.Generator]) -> None:
        self.step(idxs, gens)


def gradient_pair(cfg: TrainConfig) -> tuple[Callable, Callable]:
    """(loss, hand_written) of cfg's method: the loss autograd differentiates,
    loss(model, x (M, 784), z_draws, generator) -> scalar, and the hand-written gradient,
    hand_written(models, batch_size, z_draws) -> a callable that writes every param.grad."""
    if cfg.method == "wakesleep":
        return (
            lambda m, x, draws, gen: wakesleep.objective(m, x, draws, gen, cfg.dreams),
            lambda ms, batch, draws: WakeSleepGradients(ms, batch, draws, cfg.dreams),
        )
    return (lambda m, x, draws, gen: -m(x, draws, gen).elbo.mean(), BernoulliGradients)


def make_train_step(
    models: list[VAE],
    opts: list[torch.optim.Optimizer],
    cfg: TrainConfig,
    train_x: torch.Tensor,
    autograd: bool = False,
) -> TrainStep:
    """The training step of `models` (configs `cfg`, N_z aside) for cfg's method (AEVB or
    wake-sleep).

    The gradient is the hand-written one (gradients.py, wakesleep.py: autograd's numbers, far
    less overhead) when it covers the model: `gradients.covers` checks it against autograd
    through the model's forward, so an edited model (another activation, the Gaussian decoder)
    trains through autograd, the same forward. `autograd=True` forces autograd (one model only).
    """
    loss, hand_written = gradient_pair(cfg)
    reason = "--autograd" if autograd else covers(models[0], cfg.z_draws, loss, hand_written)
    if reason is None:
        grads = hand_written(models, cfg.batch_size, cfg.z_draws)
        gradient = "hand-written"
    else:
        if len(models) > 1:
            raise ValueError(
                f"training models in one stacked step needs the hand-written gradient, but {reason}"
            )
        grads, gradient = None, f"autograd ({reason})" if not autograd else "autograd (--autograd)"
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
            loss(model, batch[0], cfg.z_draws, gens[0]).backward()
        for opt in opts:
            opt.step()

    return TrainStep(step, gradient)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelRun:
    """One model's training state and files: model, optimizer, minibatch sampler and its
    generator, CSV rows and metadata. Made fresh (no file touched); `resume_from_checkpoint`
    or `discard_old_files`, then `record_start`, tie it to its files."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: MnistSplits,
        out_dir: str | Path,
        device: torch.device,
        preset: str | None,
    ):
        cfg.validate()
        self.cfg, self.device = cfg, device
        self.files = RunFiles.of_config(out_dir, cfg)
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

    def discard_old_files(self) -> None:
        """A fresh start: remove an earlier run's checkpoint and weights, which must never be
        picked up later."""
        self.files.ckpt.unlink(missing_ok=True)
        self.files.weights.unlink(missing_ok=True)

    def resume_from_checkpoint(self) -> None:
        """Continue from the model's verified checkpoint, if it has one (else from scratch)."""
        if not self.files.ckpt.exists():
            return
        old = read_model_json(self.files.json)
        self._restore(load_checkpoint(self.files, old, self.cfg, self.device))
        self.meta["started"] = old.get("started", self.meta["started"])
        self.meta["checkpoints"] = old["checkpoints"]
        self.meta["resumed"] = _now()

    def record_start(self, gradient: str) -> None:
        """Write the JSON (recording how the gradient is computed) and the CSV, which drops
        any rows past the checkpoint."""
        self.meta["gradient"] = gradient
        write_json(self.meta, self.files.json)
        write_csv(pd.DataFrame(self.rows, columns=CSV_COLUMNS), self.files.csv)

    def _restore(self, ckpt: dict) -> None:
        """Model, optimizer, sampler and counters from a verified checkpoint (on the CPU)."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.batches.load_state_dict(
                {
                    k: v.to(self.device) if k == "perm" and v is not None else v
                    for k, v in ckpt["batches"].items()
                }
            )
            set_rng_state(ckpt["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise RunFolderError(
                f"{self.files.ckpt} does not fit this model: {err}. "
                + _restart_hint(self.files, self.cfg)
            ) from err
        self.samples, self.wall_before = ckpt["samples"], ckpt["wall_s"]
        self.rows = ckpt["rows"]

    def check_finite(self, since: int, samples: int) -> None:
        # A NaN/inf loss or gradient reaches the parameters within one step; checking them at
        # evaluations only keeps host syncs out of the loop.
        if not all(p.isfinite().all() for p in self.model.parameters()):
            raise TrainingDiverged(
                f"N_z={self.cfg.nz} seed {self.cfg.seed}: the loss or the parameters became "
                f"NaN/inf between samples "
                f"{since} and {samples}. The CSV and checkpoint in {self.files.folder} hold the "
                f"last good state (samples={self.rows[-1]['samples'] if self.rows else 0})."
            )

    def log_evaluation(self, samples: int, wall_s: float, train_rate: float) -> dict:
        """Evaluate both splits and append the CSV row (written by `checkpoint`)."""
        cfg = self.cfg
        eval_gen = torch.Generator(device=self.device).manual_seed(cfg.eval_seed(samples))
        kw = dict(
            batch_size=cfg.eval_batch_size,
            chunk=cfg.eval_chunk,
            z_draws=cfg.z_draws,
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
        return row

    def _weights(self) -> dict:
        # clones: with --stacked the parameters are views into stacks shared by all models
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def checkpoint(self, samples: int, wall_s: float, status: str = "running") -> None:
        """Write the JSON (recording the checkpoint's SHA-256 and `status`), the checkpoint,
        then the CSV. In this order a kill at any moment leaves a checkpoint whose checksum is
        recorded (the JSON keeps the last two) and a CSV without rows the checkpoint lacks."""
        data = torch_bytes(
            {
                "model": self._weights(),
                "optimizer": self.opt.state_dict(),
                "batches": self.batches.state_dict(),
                "rng": get_rng_state(),
                "samples": samples,
                "rows": self.rows,
                "config": self.cfg.to_dict(),
                "wall_s": self.wall_before + wall_s,
                "device": self.device.type,
            }
        )
        entry = {"samples": samples, "sha256": sha256(data)}
        self.meta["checkpoints"] = [*self.meta.get("checkpoints", [])[-1:], entry]
        self.meta["status"] = status
        if status == "interrupted":
            self.meta["interrupted"] = _now()
        write_json(self.meta, self.files.json)
        atomic_write_bytes(self.files.ckpt, data)
        write_csv(pd.DataFrame(self.rows, columns=CSV_COLUMNS), self.files.csv)

    def finish(self, samples: int, trained_with: list[int]) -> pd.DataFrame:
        data = torch_bytes({"model": self._weights(), "config": self.cfg.to_dict()})
        atomic_write_bytes(self.files.weights, data)
        last = self.rows[-1]
        self.meta.update(
            status="finished",
            weights_sha256=sha256(data),
            samples_done=samples,
            wall_s=last["wall_s"],
            finished=_now(),
            final={k: last[k] for k in ("train_elbo", "test_elbo")},
        )
        if len(trained_with) > 1:
            self.meta["stacked_with_nz"] = trained_with
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
    autograd: bool = False,
) -> list[pd.DataFrame]:
    """Train the VAEs of `cfgs` (configs equal but for N_z) in lockstep, one stacked
    step for all; each model gets the files, and the numbers, of a separate `train` run.
    `label` prefixes the progress bar and the log (e.g. "model 2/5 "); `autograd` forces the
    autograd gradient (see `make_train_step`)."""
    device = torch.device(device)
    cfg = cfgs[0]
    for other in cfgs[1:]:
        diff = [d for d in config_diff(cfg.to_dict(), other.to_dict()) if not d.startswith("nz:")]
        if diff:
            raise UsageError("models trained together may differ in nz only: " + "; ".join(diff))
    if len(cfgs) > 1 and cfg.likelihood != "bernoulli":
        raise UsageError("--stacked needs the Bernoulli decoder (its gradient is written by hand)")
    runs = [ModelRun(c, data, out_dir, device, preset) for c in cfgs]
    for r in runs:
        if resume:
            r.resume_from_checkpoint()
        else:
            r.discard_old_files()
    samples = runs[0].samples
    if any(r.samples != samples for r in runs):
        raise RunFolderError(
            "the checkpoints are at different sample counts ("
            + ", ".join(f"N_z={r.cfg.nz} seed {r.cfg.seed}: {r.samples}" for r in runs)
            + "); resume them one at a time (without --stacked)"
        )
    nzs = [r.cfg.nz for r in runs]
    train_step = make_train_step(
        [r.model for r in runs], [r.opt for r in runs], cfg, runs[0].train_x, autograd
    )
    print(f"{label}gradient: {train_step.gradient}", file=sys.stderr)
    for r in runs:
        r.record_start(train_step.gradient)
    bar = tqdm(
        total=cfg.samples,
        initial=samples,
        unit="sample",
        unit_scale=True,
        desc=f"{label}N_z={','.join(map(str, nzs))} seed {cfg.seed}",
        disable=not progress,
        dynamic_ncols=True,
    )
    start = interval_start = time.perf_counter()
    interval_samples = samples
    with stop_signals() as interrupted:
        while samples < cfg.samples:
            train_step([r.batches.next() for r in runs], [r.gen for r in runs])
            samples += cfg.batch_size
            bar.update(cfg.batch_size)

            if samples % cfg.eval_every == 0:
                for r in runs:
                    r.check_finite(samples - cfg.eval_every, samples)
                synchronize(device)  # the clock must see the queued steps
                train_rate = (samples - interval_samples) / (time.perf_counter() - interval_start)
                for r in runs:
                    row = r.log_evaluation(samples, time.perf_counter() - start, train_rate)
                    r.checkpoint(samples, time.perf_counter() - start)
                # the bar's own rate counts evaluations and checkpoints too; train_speed is the
                # CSV's train_samples_per_s, comparable with `nox -s bench`'s step
                bar.set_postfix(
                    train=f"{row['train_elbo']:.2f}",
                    test=f"{row['test_elbo']:.2f}",
                    train_speed=f"{train_rate / 1e3:.1f}k/s",
                )
                interval_start, interval_samples = time.perf_counter(), samples
            if signum := interrupted():
                for r in runs:
                    r.check_finite(r.rows[-1]["samples"] if r.rows else 0, samples)
                    r.checkpoint(samples, time.perf_counter() - start, status="interrupted")
                bar.close()
                raise Interrupted(
                    f"N_z={','.join(map(str, nzs))} seed {cfg.seed}: {signal.Signals(signum).name} "
                    f"interrupted the run at samples={samples}; checkpoint written to "
                    f"{', '.join(str(r.files.ckpt) for r in runs)}",
                    signum,
                )
    bar.close()
    return [r.finish(samples, nzs) for r in runs]


def load_model(files: RunFiles, device: torch.device | str = "cpu") -> VAE:
    """The final weights of a finished run, as a VAE in eval mode.

    Loaded as tensors only (weights_only: no code from the file runs) and checked against the
    SHA-256 in the model's JSON (older JSONs record none); RunFolderError naming the file.
    """
    if not files.weights.exists():
        raise RunFolderError(f"final weights {files.weights} are missing (unfinished run?)")
    meta = read_model_json(files.json)
    recorded = meta.get("weights_sha256")
    state = load_torch(files.weights, None if recorded is None else [recorded])
    if set(state) != {"model", "config"}:
        raise RunFolderError(f"{files.weights} holds {sorted(state)}, not model and config")
    model = VAE.from_config(parse_config(state["config"], files.weights))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise RunFolderError(f"{files.weights} does not fit its config: {err}") from err
    return model.to(device).eval()
