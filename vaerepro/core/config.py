"""Run configuration as plain data, and the named presets.

A `TrainConfig` describes one model's training run completely: with its seed it
reproduces the run. A preset is a named `TrainConfig`; command-line options
override single fields of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

from vaerepro.core.errors import UsageError

PAPER_NZ: tuple[int, ...] = (3, 5, 10, 20, 200)
# The HMC estimator (marginal.py) fits its kernel density to 25 samples per image: at N_z >= 25
# their covariance is singular.
MARGINAL_MAX_NZ = 25

OPTIMIZERS = ("paper_adagrad", "torch_adagrad")
# (eps_inside, eps_outside) of each optimizer: the authors' code, and torch.optim.Adagrad's.
ADAGRAD_EPS = {"paper_adagrad": (1e-8, 0.0), "torch_adagrad": (0.0, 1e-10)}
SAMPLINGS = ("replacement", "epoch")
BINARIZE = ("none", "dynamic", "fixed")
LIKELIHOODS = ("bernoulli", "gaussian")
METHODS = ("aevb", "wakesleep", "mcem")
DREAMS = ("sampled", "mean")
DTYPES = ("float32", "float64")


def check_seed(seed: int, name: str) -> None:
    """Refuse a seed outside [0, 2**63 - 1): torch's generators take 64-bit seeds, and
    seed + 1 seeds the fixed binarization of the test set."""
    if not 0 <= seed < 2**63 - 1:
        raise UsageError(f"{name} must be in [0, 2**63 - 1), got {seed}")


def model_label(method: str, nz: int) -> str:
    """A model in messages: "N_z=3" for AEVB (the default), "wakesleep N_z=3" otherwise."""
    return f"N_z={nz}" if method == "aevb" else f"{method} N_z={nz}"


def model_name(cfg: TrainConfig) -> str:
    """A model of a sweep in messages: its method (but AEVB's), N_z and seed."""
    return f"{model_label(cfg.method, cfg.nz)} seed {cfg.seed}"


def model_names(cfgs: Iterable[TrainConfig]) -> str:
    """Models in messages: "N_z=3 seed 0, wakesleep N_z=3 seed 0"."""
    return ", ".join(model_name(c) for c in cfgs)


def _field(default, help: str):
    """A config field with its help text, which `vaerepro reproduce --help` shows."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one VAE training run (Kingma & Welling 2013, Sec. 5): with
    its seed it reproduces the run. Every field is an option of `vaerepro reproduce` (nz and
    seed as --nz and --seed/--seeds) and is recorded in every run's JSON."""

    nz: int = _field(20, "latent dimensions N_z")
    hidden: int = _field(500, "units in the hidden layer of encoder and decoder")
    likelihood: str = _field(
        "bernoulli",
        "p(x|z): bernoulli (grey levels as probabilities, the paper's MNIST model) or gaussian "
        "(sigmoid mean; for continuous data; trains through autograd)",
    )
    gaussian_logvar: float | None = _field(
        None, "fixed log sigma^2 of the Gaussian decoder (default: learned per pixel)"
    )
    method: str = _field(
        "aevb",
        "aevb: the paper's algorithm (the reparameterized ELBO gradient); wakesleep: its "
        "baseline, the wake-sleep algorithm, on the same model (wakesleep.py); mcem: Monte "
        "Carlo EM, the decoder alone, trained on HMC posterior samples (mcem.py; no ELBO)",
    )
    dreams: str = _field(
        "sampled",
        "wakesleep: the sleep phase's dreams x ~ p(x|z) as Bernoulli samples (sampled) or as "
        "the pixel probabilities (mean)",
    )
    z_draws: int = _field(
        1, "L, draws of z per datapoint in the Monte Carlo estimate of E_q[log p(x|z)]"
    )
    init_std: float = _field(0.01, "weights ~ N(0, init_std^2), biases 0")
    # optimisation
    optimizer: str = _field(
        "paper_adagrad",
        "paper_adagrad: the authors' Adagrad (warm-up, eps inside the sqrt); torch_adagrad: "
        "torch.optim.Adagrad's rule (optim.py)",
    )
    lr: float = _field(0.02, "Adagrad learning rate")
    lr_select: tuple[float, ...] = _field(
        (),
        "the paper's step-size selection: per model, train each of these learning rates for "
        "the first lr_select_samples samples and train the one with the best training ELBO "
        "from the start (lr is then not used; the model's JSON records the choice)",
    )
    lr_select_samples: int = _field(
        100_000, "samples each --lr-select candidate trains before the choice"
    )
    adagrad_warmup: int = _field(
        100, "paper_adagrad: minibatches that only accumulate g^2 before the first step"
    )
    adagrad_eps_inside: float | None = _field(
        None,
        "added to the sum of g^2 before the sqrt (default: the optimizer's, 1e-8 for "
        "paper_adagrad, 0 for torch_adagrad)",
    )
    adagrad_eps_outside: float | None = _field(
        None,
        "added to the sqrt (default: the optimizer's, 0 for paper_adagrad, 1e-10 for "
        "torch_adagrad)",
    )
    batch_size: int = _field(100, "minibatch size M")
    sampling: str = _field(
        "replacement", "minibatches drawn with replacement, or in epochs of a permutation"
    )
    weight_decay: bool = _field(
        True, "N(0, I) prior on the weights (not biases), scaled by M/N per minibatch"
    )
    # data
    train_size: int = _field(50_000, "train on the first N images of the MNIST training set")
    binarize: str = _field(
        "none", "none: grey levels in [0, 1]; dynamic: resampled at each draw; fixed: once"
    )
    # schedule and evaluation
    samples: int = _field(10_000_000, "training samples per model")
    eval_every: int = _field(100_000, "training samples between full train/test evaluations")
    eval_batch_size: int = _field(10_000, "rows per noise draw of the evaluation")
    eval_chunk: int = _field(
        1_000,
        "rows per forward pass of the evaluation on the CPU (their activations stay in cache: "
        "1.4x faster than 10,000 on 2 cores); other devices take eval_batch_size rows",
    )
    eval_seed_stride: int = _field(
        1_000_003,
        "the evaluation noise is seeded with (seed * stride + samples) mod 2^63, so it depends "
        "only on (seed, samples) and a resumed run evaluates identically",
    )
    marginal_every: int = _field(
        0,
        "training samples between estimates of the marginal likelihood log p(x) (the paper's "
        "Appendix D estimator, Fig. 3) of the first --marginal-n images of both splits, logged "
        "in the CSV's train_marginal and test_marginal; 0: never (they stay empty)",
    )
    marginal_n: int = _field(1_000, "images per split of each marginal likelihood estimate")
    dtype: str = _field(
        "float32",
        "floating point of training and evaluation: float32, or float64 (the authors' "
        "precision; CPU and CUDA)",
    )
    seed: int = _field(0, "seed of init, minibatches and noise")

    def adagrad_eps(self) -> tuple[float, float]:
        """(eps_inside, eps_outside): the config's, or its optimizer's own (ADAGRAD_EPS)."""
        own = ADAGRAD_EPS.get(self.optimizer, (1.0, 1.0))  # an unknown one: validate says so
        given = (self.adagrad_eps_inside, self.adagrad_eps_outside)
        return tuple(o if g is None else g for g, o in zip(given, own, strict=True))

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        eps = self.adagrad_eps()
        checks = [
            (self.nz >= 1, f"nz must be >= 1, got {self.nz}"),
            (self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}"),
            (self.z_draws >= 1, "z_draws must be >= 1"),
            (
                self.lr > 0 and math.isfinite(self.lr),
                f"lr must be positive and finite, got {self.lr}",
            ),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.samples > 0, f"samples must be positive, got {self.samples}"),
            (self.eval_every > 0, f"eval_every must be positive, got {self.eval_every}"),
            (
                self.eval_every <= self.samples,
                f"eval_every ({self.eval_every}) is larger than samples ({self.samples})",
            ),
            (
                self.batch_size > 0 and self.eval_every % self.batch_size == 0,
                f"eval_every ({self.eval_every}) must be a multiple of batch_size "
                f"({self.batch_size})",
            ),
            (
                self.eval_every > 0 and self.samples % self.eval_every == 0,
                f"samples ({self.samples}) must be a multiple of eval_every ({self.eval_every})",
            ),
            (
                1 <= self.train_size <= 60_000,
                f"train_size must be in [1, 60000], got {self.train_size}",
            ),
            (self.batch_size <= self.train_size, "batch_size is larger than train_size"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}"),
            (self.binarize in BINARIZE, f"binarize must be one of {BINARIZE}"),
            (self.likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}"),
            (self.method in METHODS, f"method must be one of {METHODS}"),
            (self.dreams in DREAMS, f"dreams must be one of {DREAMS}"),
            (self.dtype in DTYPES, f"dtype must be one of {DTYPES}"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.eval_chunk >= 1, f"eval_chunk must be >= 1, got {self.eval_chunk}"),
            (self.eval_seed_stride >= 1, "eval_seed_stride must be >= 1"),
            (
                all(e >= 0 and math.isfinite(e) for e in eps) and any(eps),
                "adagrad_eps_inside and adagrad_eps_outside must be finite and >= 0, and not "
                "both 0 (a zero gradient would divide 0 by 0); both are now " + str(eps),
            ),
            (self.adagrad_warmup >= 0, "adagrad_warmup must be >= 0"),
            (
                all(lr > 0 and math.isfinite(lr) for lr in self.lr_select)
                and len(set(self.lr_select)) == len(self.lr_select),
                f"lr_select must be distinct positive, finite rates, got {self.lr_select}",
            ),
            (
                not self.lr_select
                or 0 < self.lr_select_samples <= self.samples
                and self.lr_select_samples % self.batch_size == 0,
                f"lr_select_samples ({self.lr_select_samples}) must be a multiple of batch_size "
                f"({self.batch_size}) and at most samples ({self.samples})",
            ),
            (  # during the warm-up every candidate has the same weights: a tie, no choice
                not self.lr_select
                or self.optimizer != "paper_adagrad"
                or self.lr_select_samples > self.adagrad_warmup * self.batch_size,
                f"lr_select_samples ({self.lr_select_samples}) must pass the Adagrad warm-up "
                f"({self.adagrad_warmup} minibatches of {self.batch_size}), which takes no step",
            ),
        ]
        for ok, message in checks + self._marginal_checks():
            if not ok:
                raise UsageError(message)
        check_seed(self.seed, "seed")

    def _marginal_checks(self) -> list[tuple[bool, str]]:
        """The marginal likelihood's cadence and images, and what MCEM (no ELBO) needs."""
        return [
            (
                self.marginal_every >= 0
                and self.eval_every > 0
                and self.marginal_every % self.eval_every == 0,
                f"marginal_every ({self.marginal_every}) must be 0 or a multiple of eval_every "
                f"({self.eval_every})",
            ),
            (
                not self.marginal_every or 1 <= self.marginal_n <= min(self.train_size, 10_000),
                f"marginal_n ({self.marginal_n}) must be in [1, train_size] and at most 10000 "
                "(the test split)",
            ),
            (
                not self.marginal_every or self.nz < MARGINAL_MAX_NZ,
                f"the marginal likelihood estimator needs N_z < {MARGINAL_MAX_NZ}, got "
                f"{self.nz}: its kernel density is fitted to {MARGINAL_MAX_NZ} posterior samples "
                "per image (the paper used it at N_z = 3; docs/marginal.md)",
            ),
            (
                self.has_encoder or self.marginal_every > 0,
                "mcem has no ELBO: give it --marginal-every, or its CSV holds no estimate",
            ),
            (
                self.has_encoder or not self.lr_select,
                "--lr-select chooses by the training ELBO, which mcem does not have",
            ),
            (
                self.method != "mcem" or self.likelihood == "bernoulli",
                "mcem trains the Bernoulli decoder only (--likelihood bernoulli)",
            ),
        ]

    @property
    def has_encoder(self) -> bool:
        """Whether the model has an encoder q(z|x), hence an ELBO: every method but MCEM."""
        return self.method != "mcem"

    def eval_seed(self, samples: int) -> int:
        """The seed of the evaluation noise after `samples` training samples."""
        return (self.seed * self.eval_seed_stride + samples) % (2**63)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The JSON form: tuples as lists (as JSON reads them back)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


PRESETS: dict[str, TrainConfig] = {
    # The paper and its authors' code (anglepy): warm-started Adagrad, 50k training images drawn
    # with replacement, grey levels under a Bernoulli likelihood, weight prior N(0, I).
    "paper": TrainConfig(),
    # The pyautoencoder Fig. 2 example: torch's Adagrad, 60k images in shuffled epochs
    # (last incomplete batch dropped), no weight decay.
    "pyautoencoder": TrainConfig(
        optimizer="torch_adagrad", train_size=60_000, sampling="epoch", weight_decay=False
    ),
    # Fig. 3: the marginal likelihood of small models (N_z 3, 100 hidden units) of every method
    # on N_train = 1000 or 50000 (--train-size), estimated every 1e6 samples, to the paper's
    # x range. Cadence and budget: docs/marginal.md.
    "fig3": TrainConfig(nz=3, hidden=100, marginal_every=1_000_000, samples=60_000_000),
    # The CI regression gate: the paper protocol, 3e5 samples (three evaluation points).
    "ci": TrainConfig(samples=300_000),
}


# The N_z a preset sweeps when --nz is not given (Fig. 2's five, or the preset's own)
PRESET_NZ: dict[str, tuple[int, ...]] = {"fig3": (3,)}


def preset_nzs(name: str) -> tuple[int, ...]:
    return PRESET_NZ.get(name, PAPER_NZ)


def preset(name: str) -> TrainConfig:
    """The named preset; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class Sweep:
    """What one run folder holds: one config trained for every (method, N_z, seed)."""

    preset: str | None
    base: TrainConfig  # the shared config; its method, nz and seed are the first model's
    nzs: tuple[int, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...] = ("aevb",)

    @classmethod
    def of(
        cls,
        preset: str | None,
        base: TrainConfig,
        nzs: list[int],
        seeds: list[int],
        methods: list[str] | None = None,
    ) -> Sweep:
        """ValueError naming a repeated N_z, seed or method, or the first invalid field."""
        methods = list(methods or [base.method])
        for name, values in (("N_z", nzs), ("seed", seeds), ("method", methods)):
            if not values:
                raise UsageError(f"a sweep needs at least one {name}")
            if len(set(values)) != len(values):
                raise UsageError(f"the {name} list names a value twice: {list(values)}")
        first = base.replace(nz=nzs[0], seed=seeds[0], method=methods[0])
        sweep = cls(preset, first, tuple(nzs), tuple(seeds), tuple(methods))
        for cfg in sweep.configs:
            cfg.validate()
        return sweep

    @classmethod
    def from_configs(cls, preset: str | None, configs: list[TrainConfig]) -> Sweep:
        """The sweep whose configs these are; ValueError when they are not one config over
        every (method, N_z, seed) in the sweep's order."""
        nzs = list(dict.fromkeys(c.nz for c in configs))
        seeds = list(dict.fromkeys(c.seed for c in configs))
        methods = list(dict.fromkeys(c.method for c in configs))
        sweep = cls.of(preset, configs[0], nzs, seeds, methods)
        if sweep.configs != list(configs):
            expected = sweep.configs
            diff = [
                f"model {i + 1}: {d}"
                for i, c in enumerate(configs)
                for d in config_diff(
                    (expected[i] if i < len(expected) else sweep.base).to_dict(), c.to_dict()
                )
            ]
            raise UsageError(
                "the configs are not one config over every (method, N_z, seed) in the sweep's "
                f"order: {'; '.join(diff) or 'a model is missing or repeated'}"
            )
        return sweep

    @property
    def configs(self) -> list[TrainConfig]:
        """One config per (method, N_z, seed): method by method, and within a method seed by
        seed (every N_z of a seed trains before the next seed starts, so a sweep stopped early
        holds whole seeds)."""
        return [
            self.base.replace(method=m, nz=nz, seed=s)
            for m in self.methods
            for s in self.seeds
            for nz in self.nzs
        ]

    def differences(self, other: Sweep) -> list[str]:
        """Human-readable lines for everything in which `other` differs from this sweep."""
        lines = []
        if self.preset != other.preset:
            lines.append(f"preset: {self.preset!r} != {other.preset!r}")
        if sorted(self.methods) != sorted(other.methods):
            lines.append(f"methods: {list(self.methods)} != {list(other.methods)}")
        if sorted(self.nzs) != sorted(other.nzs):
            lines.append(f"N_z: {list(self.nzs)} != {list(other.nzs)}")
        if sorted(self.seeds) != sorted(other.seeds):
            lines.append(f"seeds: {list(self.seeds)} != {list(other.seeds)}")
        mine, theirs = self.base.to_dict(), other.base.to_dict()
        for d in (mine, theirs):
            del d["nz"], d["seed"], d["method"]
        return lines + config_diff(mine, theirs)


# Fields added after results were published, with the value that reproduces the behaviour
# before them (their default): a config recorded without them is read with these.
ADDED_FIELDS = (
    "adagrad_eps_inside",
    "adagrad_eps_outside",
    "eval_chunk",
    "eval_seed_stride",
    "method",
    "dreams",
    "dtype",
    "lr_select",
    "lr_select_samples",
    "marginal_every",
    "marginal_n",
)


# Fields renamed since: old name -> new name ("samples" now means training samples only).
RENAMED_FIELDS = {"n_latent_samples": "z_draws"}


def upgrade(config: dict) -> dict:
    """A recorded config (JSON form) in today's terms: renamed fields under their new names,
    and the fields added since filled in with the value that reproduces the behaviour of the
    version that recorded it."""
    config = {RENAMED_FIELDS.get(k, k): v for k, v in config.items()}
    defaults = TrainConfig().to_dict()  # in JSON form, as `config` is
    return {**{k: defaults[k] for k in ADDED_FIELDS if k not in config}, **config}


def config_diff(a: dict, b: dict) -> list[str]:
    """Human-readable lines for every field where two config dicts differ."""
    a, b = upgrade(a), upgrade(b)
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k, '<absent>')!r} != {b.get(k, '<absent>')!r}"
        for k in keys
        if a.get(k) != b.get(k)
    ]
