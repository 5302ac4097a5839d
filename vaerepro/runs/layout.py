"""What a run folder holds, by name: the model files of each (N_z, seed), the sweep's
run.json, the CSV columns, and the errors about them.

Per model `nz{N_z}-seed{seed}.csv` (one row per evaluation), `.json` (config, versions, device,
git commit, status), `.ckpt` (resumable state at the last evaluation) and, once finished,
`.pt` (final weights).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CSV_COLUMNS = [
    "samples",
    "train_elbo",
    "test_elbo",
    "train_loglik",
    "train_kl",
    "test_loglik",
    "test_kl",
    "wall_s",
    "train_samples_per_s",
    "train_marginal",
    "test_marginal",
]

# Added with Fig. 3: CSVs written before them lack them (read as empty).
MARGINAL_COLUMNS = ["train_marginal", "test_marginal"]

# Estimates, nats per datapoint, that may be empty (NaN): the marginal likelihood between its
# estimates (`marginal_every`), and the ELBO terms of Monte Carlo EM, which has no encoder.
ESTIMATE_COLUMNS = [c for c in CSV_COLUMNS if c not in ("samples", "wall_s", "train_samples_per_s")]


OWN_TEMP = re.compile(r"^\..+\.vaerepro-[A-Za-z0-9_]+\.tmp$")


# What `reproduce` writes into a run folder (and `--overwrite` may therefore remove).
OWN_MODEL_FILE = re.compile(r"^((wakesleep|mcem)-)?nz\d+-seed\d+\.(csv|json|ckpt|pt)$")


RUN_JSON = "run.json"  # the sweep (Sweep): preset, N_z, seeds, one config per model


# --overwrite: the old sweep's files, until the new sweep has its first checkpoint
REPLACED = ".vaerepro-replaced"


OWN_RUN_FILES = (
    RUN_JSON,
    "REPORT.md",
    "comparison.csv",
    "comparison.md",
    "comparison-marginal.csv",
    "comparison-marginal.md",
)


OWN_FIGURE = re.compile(
    r"^(fig[23]\.(png|pdf)|components\.png|"
    r"(recon|samples|interpolation|latent|kl_per_dim)_nz\d+\.png)$"
)


@dataclass(frozen=True)
class RunFiles:
    """The files of one model (one method, N_z and seed) in a run folder."""

    folder: Path
    stem: str  # "nz{N_z}-seed{seed}", prefixed "wakesleep-" or "mcem-" for those methods

    @classmethod
    def of(cls, folder: str | os.PathLike, nz: int, seed: int, method: str = "aevb") -> RunFiles:
        prefix = "" if method == "aevb" else f"{method}-"
        return cls(Path(folder), f"{prefix}nz{nz}-seed{seed}")

    @classmethod
    def of_config(cls, folder: str | os.PathLike, cfg) -> RunFiles:
        """The files of the model of `cfg` (a TrainConfig, or its JSON form)."""
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        return cls.of(folder, get("nz"), get("seed"), get("method", "aevb"))

    @property
    def csv(self) -> Path:
        return self.folder / f"{self.stem}.csv"

    @property
    def json(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def ckpt(self) -> Path:
        return self.folder / f"{self.stem}.ckpt"

    @property
    def weights(self) -> Path:
        return self.folder / f"{self.stem}.pt"
