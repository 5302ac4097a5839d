"""Run configuration as plain data, and the named presets.

A `TrainConfig` describes one model's training run completely: with its seed it
reproduces the run. A preset is a named `TrainConfig`; command-line options
override single fields of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PAPER_NZ: tuple[int, ...] = (3, 5, 10, 20, 200)

OPTIMIZERS = ("paper_adagrad", "torch_adagrad")
SAMPLINGS = ("replacement", "epoch")
BINARIZE = ("none", "dynamic", "fixed")
LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one VAE training run (Kingma & Welling 2013, Sec. 5)."""

    nz: int = 20  # latent dimensions N_z
    hidden: int = 500  # units in the single tanh hidden layer of encoder and decoder
    likelihood: str = "bernoulli"  # p(x|z); "gaussian" is for continuous data
    gaussian_logvar: float | None = (
        None  # fixed log sigma^2 of the Gaussian decoder; None = learned
    )
    n_latent_samples: int = 1  # L, samples of z per datapoint
    init_std: float = 0.01  # weights ~ N(0, init_std^2), biases 0
    # optimisation
    optimizer: str = "paper_adagrad"  # see optim.py
    lr: float = 0.02
    adagrad_warmup: int = 100  # paper_adagrad: minibatches that only accumulate g^2
    batch_size: int = 100  # M
    sampling: str = "replacement"  # minibatches drawn with replacement, or epochs of a permutation
    weight_decay: bool = True  # N(0, I) prior on weights (not biases), scaled by M/N per minibatch
    # data
    train_size: int = 50_000  # first N images of the MNIST training set
    binarize: str = "none"  # grey levels in [0, 1], or binarized dynamically / once
    # schedule
    samples: int = 10_000_000  # training samples to process
    eval_every: int = 100_000  # samples between full train/test evaluations
    eval_batch_size: int = 10_000
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        checks = [
            (self.nz >= 1, f"nz must be >= 1, got {self.nz}"),
            (self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}"),
            (self.n_latent_samples >= 1, "n_latent_samples must be >= 1"),
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
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.adagrad_warmup >= 0, "adagrad_warmup must be >= 0"),
            # torch seeds are 64-bit; seed + 1 seeds the fixed binarization of the test set
            (0 <= self.seed < 2**63 - 1, f"seed must be in [0, 2**63 - 1), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainConfig] = {
    # The paper and its authors' code (anglepy): warm-started Adagrad, 50k training images drawn
    # with replacement, grey levels under a Bernoulli likelihood, weight prior N(0, I).
    "paper": TrainConfig(),
    # The pyautoencoder Fig. 2 example: torch's Adagrad, 60k images in shuffled epochs
    # (last incomplete batch dropped), no weight decay.
    "pyautoencoder": TrainConfig(
        optimizer="torch_adagrad", train_size=60_000, sampling="epoch", weight_decay=False
    ),
    # The CI regression gate: the paper protocol, 3e5 samples (three evaluation points).
    "ci": TrainConfig(samples=300_000),
}


def preset(name: str) -> TrainConfig:
    """The named preset; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class Sweep:
    """What one run folder holds: one config trained for every (N_z, seed) pair."""

    preset: str | None
    base: TrainConfig  # the shared config; its nz and seed are the first pair's
    nzs: tuple[int, ...]
    seeds: tuple[int, ...]

    @classmethod
    def of(cls, preset: str | None, base: TrainConfig, nzs: list[int], seeds: list[int]) -> Sweep:
        """ValueError naming a repeated N_z or seed, or the first invalid config field."""
        for name, values in (("N_z", nzs), ("seed", seeds)):
            if not values:
                raise ValueError(f"a sweep needs at least one {name}")
            if len(set(values)) != len(values):
                raise ValueError(f"the {name} list names a value twice: {list(values)}")
        sweep = cls(preset, base.replace(nz=nzs[0], seed=seeds[0]), tuple(nzs), tuple(seeds))
        for cfg in sweep.configs:
            cfg.validate()
        return sweep

    @classmethod
    def from_configs(cls, preset: str | None, configs: list[TrainConfig]) -> Sweep:
        """The sweep whose configs these are; ValueError when they are not one config over
        every (N_z, seed) pair in the sweep's order."""
        nzs = list(dict.fromkeys(c.nz for c in configs))
        seeds = list(dict.fromkeys(c.seed for c in configs))
        sweep = cls.of(preset, configs[0], nzs, seeds)
        if sweep.configs != list(configs):
            expected = sweep.configs
            diff = [
                f"model {i + 1}: {d}"
                for i, c in enumerate(configs)
                for d in config_diff(
                    (expected[i] if i < len(expected) else sweep.base).to_dict(), c.to_dict()
                )
            ]
            raise ValueError(
                "the configs are not one config over every (N_z, seed) pair in order "
                f"(seed-major): {'; '.join(diff) or 'a pair is missing or repeated'}"
            )
        return sweep

    @property
    def configs(self) -> list[TrainConfig]:
        """One config per (N_z, seed), seed-major: every N_z of a seed trains before the next
        seed starts, so a sweep stopped early holds whole seeds."""
        return [self.base.replace(nz=nz, seed=s) for s in self.seeds for nz in self.nzs]

    def differences(self, other: Sweep) -> list[str]:
        """Human-readable lines for everything in which `other` differs from this sweep."""
        lines = []
        if self.preset != other.preset:
            lines.append(f"preset: {self.preset!r} != {other.preset!r}")
        if sorted(self.nzs) != sorted(other.nzs):
            lines.append(f"N_z: {list(self.nzs)} != {list(other.nzs)}")
        if sorted(self.seeds) != sorted(other.seeds):
            lines.append(f"seeds: {list(self.seeds)} != {list(other.seeds)}")
        mine, theirs = self.base.to_dict(), other.base.to_dict()
        for d in (mine, theirs):
            del d["nz"], d["seed"]
        return lines + config_diff(mine, theirs)


def config_diff(a: dict, b: dict) -> list[str]:
    """Human-readable lines for every field where two config dicts differ."""
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k, '<absent>')!r} != {b.get(k, '<absent>')!r}"
        for k in keys
        if a.get(k) != b.get(k)
    ]
