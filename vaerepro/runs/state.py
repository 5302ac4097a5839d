"""One model's training state: model, optimizer, the minibatch sampler and its generator, the
samples trained and the CSV rows so far. Its `state_dict` is what a checkpoint holds."""

from __future__ import annotations

import math

import torch

from vaerepro.core.config import TrainConfig, model_name
from vaerepro.core.data import MinibatchIndices, MnistSplits, binarize_fixed
from vaerepro.core.device import get_rng_state, set_rng_state
from vaerepro.core.errors import TrainingDiverged, UsageError
from vaerepro.core.evaluate import SplitELBO, active_units, evaluate, kl_per_dimension
from vaerepro.core.marginal import hmc_estimate_batched
from vaerepro.core.mcem import UPDATES, MCEMChains
from vaerepro.core.model import VAE
from vaerepro.core.optim import make_optimizer
from vaerepro.runs.layout import MARGINAL_COLUMNS


class TrainingState:
    """A model of `cfg` at its start (samples 0), on `device`; `load_state_dict` continues a
    checkpoint. train_x (train_size, 784) and test_x (10000, 784) are the splits it trains and
    is evaluated on (binarized once for `binarize="fixed"`). `lr`: the learning rate when it
    is not cfg.lr (the one --lr-select chose)."""

    def __init__(
        self, cfg: TrainConfig, data: MnistSplits, device: torch.device, lr: float | None = None
    ):
        cfg.validate()
        if cfg.dtype == "float64" and device.type == "mps":
            raise UsageError("--dtype float64: MPS has no float64; use the CPU or CUDA")
        if cfg.marginal_every and device.type == "mps":
            raise UsageError(
                "--marginal-every (and mcem): the marginal likelihood is estimated in float64, "
                "which MPS does not have; use the CPU or CUDA"
            )
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        self.model = VAE.from_config(cfg).to(device)
        self.train_x, self.test_x = data.train_x[: cfg.train_size], data.test_x
        if cfg.dtype == "float64":  # the float32 initial weights, exactly: both start alike
            self.model = self.model.double()
            self.train_x, self.test_x = self.train_x.double(), self.test_x.double()
        self.opt = make_optimizer(cfg if lr is None else cfg.replace(lr=lr), self.model)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.report_x = data.test_x  # grey levels, as the report's per-model figures use
        if cfg.binarize == "fixed":
            self.train_x = binarize_fixed(self.train_x, cfg.seed, "train")
            self.test_x = binarize_fixed(self.test_x, cfg.seed, "test")
        self.batches = MinibatchIndices(cfg.train_size, cfg.batch_size, cfg.sampling, self.gen)
        self.chains = None  # MCEM's posterior samples, one per training image
        if cfg.method == "mcem":
            self.chains = MCEMChains(cfg.train_size, cfg.nz, self.gen, self.train_x)
        self.rows: list[dict] = []  # one per evaluation: the CSV's rows
        self.samples, self.wall_before = 0, 0.0  # wall_before: seconds of earlier sessions

    def weights(self) -> dict:
        # clones: with --stacked the parameters are views into stacks shared by all models
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def state_dict(self, samples: int, wall_s: float) -> dict:
        """The checkpoint's contents at `samples`, `wall_s` seconds into this session."""
        chains = {} if self.chains is None else {"chains": self.chains.state_dict()}
        return {
            **chains,
            "model": self.weights(),
            "optimizer": self.opt.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": get_rng_state(),
            "samples": samples,
            "rows": self.rows,
            "config": self.cfg.to_dict(),
            "wall_s": self.wall_before + wall_s,
            "device": self.device.type,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue from a verified checkpoint (loaded on the CPU, its contents checked by
        `contents.checkpoint_problem`); raises what torch raises, or ValueError, when it does
        not fit the model: optimizer hyperparameters other than the config's, or optimizer
        state of other shapes than the parameters."""
        fresh = self.opt.state_dict()["param_groups"]
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        steps = ckpt["samples"] // self.cfg.batch_size * optimizer_steps_per_minibatch(self.cfg)
        for ours, theirs in zip(fresh, self.opt.state_dict()["param_groups"], strict=True):
            ours = {**ours, "steps_taken": steps} if "steps_taken" in ours else ours
            if differ := [k for k in set(ours) & set(theirs) - {"params"} if ours[k] != theirs[k]]:
                raise ValueError(f"its optimizer's {sorted(differ)} differ from the config's")
        for p in self.model.parameters():
            for key, value in self.opt.state.get(p, {}).items():
                fits = isinstance(value, torch.Tensor) and value.shape in (p.shape, ())
                if not fits:
                    raise ValueError(f"its optimizer state {key!r} does not fit the parameters")
        batches = dict(ckpt["batches"])
        if batches.get("perm") is not None:
            batches["perm"] = batches["perm"].to(self.device)
        self.batches.load_state_dict(batches)
        set_rng_state(ckpt["rng"])
        if self.chains is not None:
            self.chains.load_state_dict({k: v.to(self.device) for k, v in ckpt["chains"].items()})
        self.samples, self.wall_before = ckpt["samples"], ckpt["wall_s"]
        # rows of a checkpoint written before the marginal likelihood columns: empty there
        self.rows = [{**dict.fromkeys(MARGINAL_COLUMNS, math.nan), **r} for r in ckpt["rows"]]

    def latent_usage(self) -> dict:
        """What the report shows of the final model beyond the CSV, recorded in its JSON so
        that a report redrawn without the weights keeps it: the average KL of each latent
        dimension over the test set (nats) and the active units. MCEM has no encoder: none."""
        if not self.cfg.has_encoder:
            return {}
        kl = kl_per_dimension(self.model, self.report_x.to(self.test_x.dtype))
        return {"kl_per_dim": [float(v) for v in kl.cpu()], "active_units": active_units(kl)}

    def check_finite(self, since: int, samples: int) -> None:
        # A NaN/inf loss or gradient reaches the parameters within one step; checking them at
        # evaluations only keeps host syncs out of the loop.
        if not all(p.isfinite().all() for p in self.model.parameters()):
            last = self.rows[-1]["samples"] if self.rows else 0
            raise TrainingDiverged(
                f"{model_name(self.cfg)}: the loss or the parameters became "
                f"NaN/inf between samples {since} and {samples}. The CSV and checkpoint hold "
                f"the last good state (samples={last})."
            )

    def log_evaluation(self, samples: int, wall_s: float, train_rate: float) -> dict:
        """Evaluate both splits (ELBO, loglik, KL in nats per datapoint; not for MCEM) and,
        every `marginal_every` samples, their marginal likelihood; append the row."""
        cfg = self.cfg
        gen = torch.Generator(device=self.device).manual_seed(cfg.eval_seed(samples))
        kw = dict(
            batch_size=cfg.eval_batch_size,
            chunk=cfg.eval_chunk,
            z_draws=cfg.z_draws,
            generator=gen,
            binarize=cfg.binarize == "dynamic",
        )
        tr = te = SplitELBO(math.nan, math.nan, math.nan)
        if cfg.has_encoder:
            tr, te = (
                evaluate(self.model, self.train_x, **kw),
                evaluate(self.model, self.test_x, **kw),
            )
        marginal = [math.nan, math.nan]
        if cfg.marginal_every and samples % cfg.marginal_every == 0:
            marginal = [self._marginal(x, gen) for x in (self.train_x, self.test_x)]
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
            "train_marginal": marginal[0],
            "test_marginal": marginal[1],
        }
        self.rows.append(row)
        return row

    def _marginal(self, x: torch.Tensor, gen: torch.Generator) -> float:
        """The marginal likelihood estimate of the first marginal_n images of x (N, 784)."""
        x = x[: self.cfg.marginal_n]
        if self.cfg.binarize == "dynamic":
            x = torch.bernoulli(x, generator=gen)
        encoder = self.cfg.has_encoder
        return float(hmc_estimate_batched(self.model, x, gen, encoder).value.mean())


def optimizer_steps_per_minibatch(cfg: TrainConfig) -> int:
    """Optimizer steps per minibatch: MCEM's M-step takes UPDATES, the others one."""
    return UPDATES if cfg.method == "mcem" else 1
