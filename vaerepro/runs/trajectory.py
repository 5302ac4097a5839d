"""Tier 1 of the regression gate: a short float64 trajectory of the real training code.

For each method (AEVB, wake-sleep and MCEM) and N_z the `ci` protocol, scaled down
(`TRAJECTORY`: the first 1,000 training images drawn with replacement, a 10-minibatch Adagrad
warm-up, 40 minibatches of 100), runs through `train.train` itself: the hand-written gradient
(AEVB's, or wake-sleep's two phases) or MCEM's HMC E-step and decoder updates, `optim.Adagrad`
with the weight prior and its warm-up, the minibatch sampler, the noise generators and
`evaluate` (on the 1,000 training images and the first 1,000 test images), all in float64 on
the CPU. Each of the four evaluations gives the ELBO, the log-likelihood and the KL term (nats
per datapoint) of both splits; MCEM, which has no ELBO, gives the marginal likelihood at two
(`MCEM_TRAJECTORY`; not at N_z = 200, beyond its estimator). In float64, rounding (thread
counts, SIMD kernels, BLAS code paths) moves
these numbers by at most 6.3e-9 nats, so a tolerance far below anything a change to the math or
the code does still never fires by accident (docs/gate.md, "Tolerances").

A run folder or reference holds the values in `trajectory.csv` (long format, full precision:
method, nz, split, samples, term, value) and the config and environment in `trajectory.json`.
A `trajectory.csv` written before wake-sleep existed has no method column: its rows are AEVB's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from vaerepro.core.config import MARGINAL_MAX_NZ, METHODS, PAPER_NZ, TrainConfig, preset
from vaerepro.core.data import MnistSplits
from vaerepro.core.errors import RunFolderError, WriteFailed
from vaerepro.runs.longform import KEYS, TERMS, long_form
from vaerepro.runs.loop import train
from vaerepro.runs.provenance import environment_info
from vaerepro.runs.records import read_json
from vaerepro.runs.writes import atomic_write_bytes, write_json

# 10 warm-up minibatches (lr 0), then 30 updates; evaluated after 10, 20, 30 and 40 steps.
# Seconds per N_z on 2 cores (README); the full protocol is tier 2's.
TRAJECTORY: TrainConfig = preset("ci").replace(
    train_size=1_000, adagrad_warmup=10, samples=4_000, eval_every=1_000
)
TEST_ROWS = 1_000  # the first test images
# MCEM has no ELBO: its trajectory is the marginal likelihood of 20 images of each split after
# 20 and 40 minibatches (the HMC estimator's own noise included).
MCEM_TRAJECTORY = {"marginal_every": 2_000, "marginal_n": 20}
CSV_NAME, JSON_NAME = "trajectory.csv", "trajectory.json"


@contextmanager
def float64_defaults() -> Iterator[None]:
    """Within the block, new floating tensors (parameters, buffers, noise) are float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def as_float64(data: MnistSplits, test_rows: int = TEST_ROWS) -> MnistSplits:
    """Both splits' images as float64 on the CPU (the same grey levels, exactly): the whole
    training split (the config takes its first `train_size`), the first `test_rows` test
    images."""
    return MnistSplits(
        data.train_x.cpu().double(),
        data.train_y.cpu(),
        data.test_x[:test_rows].cpu().double(),
        data.test_y[:test_rows].cpu(),
    )


def run_trajectory(
    data: MnistSplits,
    nz: Iterable[int] = PAPER_NZ,
    cfg: TrainConfig = TRAJECTORY,
    methods: Iterable[str] = METHODS,
) -> pd.DataFrame:
    """Train `cfg` for each method and N_z in float64 on the CPU (files go to a temporary
    folder) and return its evaluations as (method, nz, split, samples, term, value) rows."""
    data64 = as_float64(data)
    parts = []
    try:
        with float64_defaults(), tempfile.TemporaryDirectory(prefix="vaerepro-trajectory-") as tmp:
            for method in methods:
                extra = MCEM_TRAJECTORY if method == "mcem" else {}
                for n in [n for n in nz if n < MARGINAL_MAX_NZ or method != "mcem"]:
                    run_cfg = cfg.replace(method=method, nz=n, **extra)
                    rows = train(run_cfg, data64, tmp, device="cpu", progress=False)
                    parts.append(long_form(rows, run_cfg.to_dict(), (*TERMS, "marginal")))
    except (WriteFailed, OSError) as err:  # the temporary folder, not the user's: say where
        raise WriteFailed(
            f"cannot write the trajectory's temporary files in {tempfile.gettempdir()} "
            f"(TMPDIR; {err}): free space there or set TMPDIR to a folder with space"
        ) from err
    return pd.concat(parts, ignore_index=True)[[*KEYS, "value"]]


def write_trajectory(
    values: pd.DataFrame, folder: str | Path, cfg: TrainConfig = TRAJECTORY
) -> None:
    """`trajectory.csv` (every digit of each float64) and `trajectory.json` into `folder`."""
    folder = Path(folder)
    text = values[[*KEYS, "value"]].to_csv(index=False, float_format="%.17g")
    atomic_write_bytes(folder / CSV_NAME, text.encode())
    meta = {
        "config": {**cfg.to_dict(), "nz": None, "method": None},
        "nz": sorted({int(n) for n in values.nz}),
        "methods": [m for m in METHODS if m in set(values.method)],
    }
    write_json({**meta, **environment_info(torch.device("cpu"))}, folder / JSON_NAME)


def read_trajectory(folder: str | Path) -> tuple[dict, pd.DataFrame]:
    """(metadata, values) of a folder's trajectory; RunFolderError naming the file otherwise."""
    folder = Path(folder)
    csv, meta = folder / CSV_NAME, folder / JSON_NAME
    for path in (csv, meta):
        if not path.exists():
            raise RunFolderError(
                f"tier 1: {path} is missing; write it with `vaerepro trajectory {folder}`"
            )
    try:
        values = pd.read_csv(csv)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise RunFolderError(f"tier 1: cannot read {csv}: {err}") from err
    if "method" not in values.columns and not values.empty:  # written before wake-sleep
        values.insert(0, "method", "aevb")
    missing = [c for c in [*KEYS, "value"] if c not in values.columns]
    if missing or values.empty or not pd.api.types.is_numeric_dtype(values.value):
        raise RunFolderError(
            f"tier 1: {csv} is malformed (needs numeric rows of {', '.join([*KEYS, 'value'])})"
        )
    return read_json(meta), values
