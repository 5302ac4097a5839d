"""What a run folder's files may hold, checked before anything is believed: the size a file of
its kind can have, a CSV's rows against the model's config and status, and a checkpoint's
contents against the config and the CSV (types, shapes, samples on the grid and within the
budget). Each check returns a problem in words, or None; the readers raise it, naming the
file."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from vaerepro.core.config import TrainConfig
from vaerepro.core.files import MB
from vaerepro.core.model import VAE
from vaerepro.runs.layout import CSV_COLUMNS, ESTIMATE_COLUMNS, MARGINAL_COLUMNS

JSON_CAP = 4 * MB  # a run.json of thousands of models is well under this
CSV_ROW_BYTES = 512  # a row of CSV_COLUMNS, written with 6 decimals, is about 150 bytes
DEVICE_TYPES = ("cpu", "cuda", "mps")
OLD_COLUMNS = [c for c in CSV_COLUMNS if c not in MARGINAL_COLUMNS]  # a checkpoint's rows
# before the marginal likelihood columns


def evaluations(cfg: TrainConfig) -> int:
    """The rows a finished model's CSV holds: one per `eval_every` samples."""
    return cfg.samples // cfg.eval_every


def csv_cap(cfg: TrainConfig | None) -> int:
    """The largest CSV a model of `cfg` can write (16 MB without a config)."""
    return 16 * MB if cfg is None else MB + CSV_ROW_BYTES * evaluations(cfg)


def parameter_shapes(cfg: TrainConfig) -> dict[str, tuple[int, ...]]:
    """The model's state_dict shapes, from a model on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = VAE.from_config(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def torch_cap(cfg: TrainConfig) -> int:
    """The largest checkpoint or weights file a model of `cfg` can need: parameters and
    optimizer state in float64, the sampler's permutation and MCEM's chains, the CSV rows,
    1 MB of overhead."""
    params = sum(math.prod(s) for s in parameter_shapes(cfg).values())
    return MB + 32 * params + 8 * cfg.train_size * (cfg.nz + 2) + 1024 * evaluations(cfg)


def _row_name(i: int, df: pd.DataFrame) -> str:
    return f"row {i + 1} (line {i + 2}, samples={df.samples.iloc[i]})"


def with_marginal_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A CSV written before the marginal likelihood columns, with them (empty)."""
    missing = [c for c in MARGINAL_COLUMNS if c not in df.columns]
    return df.assign(**{c: np.nan for c in missing}) if missing else df


def csv_problem(df: pd.DataFrame) -> str | None:
    """Columns, numbers, finiteness (an estimate may be empty, never infinite), positive and
    strictly increasing integer samples."""
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        return f"lacks columns {missing}"
    if df.empty:  # a header only: no evaluation yet (the row count is checked by rows_problem)
        return None
    for c in CSV_COLUMNS:
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            return f"has non-numeric values in column {c}"
        values = df[c].to_numpy(dtype=float)
        bad = np.flatnonzero(np.isinf(values) | (np.isnan(values) & (c not in ESTIMATE_COLUMNS)))
        if len(bad):
            return f"{_row_name(bad[0], df)}: {c} is {df[c].iloc[bad[0]]} (not finite)"
    samples = df.samples.to_numpy(dtype=float)
    for i, s in enumerate(samples):
        if s <= 0 or s != int(s) or (i and s <= samples[i - 1]):
            return (
                f"{_row_name(i, df)}: samples must be positive whole numbers, strictly "
                "increasing (a duplicated, reordered or edited row?)"
            )
    return None


def rows_problem(df: pd.DataFrame, cfg: TrainConfig, meta: dict) -> str | None:
    """The CSV of a model of `cfg` whose JSON is `meta`: one row per evaluation, on the grid
    (eval_every, 2 eval_every, ...); a finished model has every row up to its budget, an
    unfinished one the rows up to its recorded checkpoints."""
    for i, s in enumerate(df.samples):
        if s != (i + 1) * cfg.eval_every:
            return (
                f"{_row_name(i, df)} is off the evaluation grid: expected samples="
                f"{(i + 1) * cfg.eval_every} (an evaluation every {cfg.eval_every} samples)"
            )
    if problem := _estimates_problem(df, cfg):
        return problem
    status = meta.get("status", "finished")
    recorded = [c["samples"] for c in meta.get("checkpoints", [])]
    if status == "finished":
        low = high = evaluations(cfg)
    else:  # a kill between the JSON and the CSV write leaves the CSV one checkpoint behind
        low = min(recorded) // cfg.eval_every if len(recorded) > 1 else 0
        high = max(recorded, default=0) // cfg.eval_every
    if not low <= len(df) <= high:
        want = f"{low}" if low == high else f"{low} to {high}"
        return (
            f"has {len(df)} rows, but its JSON (status {status}, checkpoints at samples "
            f"{recorded or 'none'}) vouches for {want} (one per {cfg.eval_every} samples "
            f"up to {cfg.samples})"
        )
    return None


def _estimates_problem(df: pd.DataFrame, cfg: TrainConfig) -> str | None:
    """The ELBO terms are numbers unless the method is MCEM (none: it has no encoder); the
    marginal likelihood is a number exactly every `marginal_every` samples."""
    elbo = [c for c in ESTIMATE_COLUMNS if c not in MARGINAL_COLUMNS]
    marginal = (df.samples % cfg.marginal_every == 0) if cfg.marginal_every else df.samples < 0
    for columns, expected in (
        (elbo, pd.Series(cfg.has_encoder, df.index)),
        (MARGINAL_COLUMNS, marginal),
    ):
        for c in columns:
            wrong = np.flatnonzero(df[c].notna().to_numpy() != expected.to_numpy())
            if len(wrong):
                i = wrong[0]
                what = "empty" if expected.iloc[i] else f"{df[c].iloc[i]}"
                return (
                    f"{_row_name(i, df)}: {c} is {what}, but the {cfg.method} model of its "
                    f"config (marginal_every={cfg.marginal_every}) "
                    + ("logs it there" if expected.iloc[i] else "leaves it empty there")
                )
    return None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _is_count(v, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _ckpt_rows_problem(rows, samples: int, cfg: TrainConfig, csv: pd.DataFrame) -> str | None:
    """The checkpoint's rows: one per evaluation up to `samples`, plain finite numbers, and the
    CSV's rows (a prefix: a kill may fall between the checkpoint and the CSV write)."""
    if not isinstance(rows, list) or len(rows) != samples // cfg.eval_every:
        n = samples // cfg.eval_every
        return f"rows must be a list of {n} evaluations at samples={samples}"
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) - set(MARGINAL_COLUMNS) != set(OLD_COLUMNS):
            return f"row {i + 1} is not a dict of the CSV columns"
        if not all(_is_number(v) or c in ESTIMATE_COLUMNS and _is_nan(v) for c, v in row.items()):
            return f"row {i + 1} holds a value that is not a finite number"
        if row["samples"] != (i + 1) * cfg.eval_every:
            return f"row {i + 1} has samples={row['samples']}, off the evaluation grid"
    if not len(rows) - 1 <= len(csv) <= len(rows):
        return f"has {len(rows)} rows, the CSV {len(csv)}: they belong to different runs"
    if rows and (problem := _estimates_problem(pd.DataFrame(rows, columns=CSV_COLUMNS), cfg)):
        return problem
    if len(csv):
        ours = pd.DataFrame(rows[: len(csv)], columns=CSV_COLUMNS).to_numpy(dtype=float)
        theirs = csv[CSV_COLUMNS].to_numpy(dtype=float)
        close = np.isclose(ours, theirs, rtol=1e-9, atol=1e-6, equal_nan=True)
        differ = np.flatnonzero(~close.all(axis=1))
        if len(differ):
            return f"row {differ[0] + 1} differs from the CSV's row {differ[0] + 1}"
    return None


def _tensors_problem(model, cfg: TrainConfig) -> str | None:
    shapes = parameter_shapes(cfg)
    if not isinstance(model, dict) or set(model) != set(shapes):
        return f"model must hold the tensors {sorted(shapes)}"
    for k, shape in shapes.items():
        t = model[k]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.shape != shape:
            return f"model[{k!r}] must be a floating tensor of shape {list(shape)}"
    return None


def _sampler_problem(batches, rng, cfg: TrainConfig) -> str | None:
    if not isinstance(batches, dict) or set(batches) != {"gen", "perm", "pos"}:
        return "batches must hold gen, perm and pos"
    perm, n = batches["perm"], cfg.train_size
    if not isinstance(batches["gen"], torch.Tensor) or batches["gen"].dtype != torch.uint8:
        return "batches['gen'] must be a generator state (a uint8 tensor)"
    if not _is_count(batches["pos"], 0, n):
        return f"batches['pos'] must be an int in [0, {n}]"
    if perm is not None and not (
        isinstance(perm, torch.Tensor)
        and perm.dtype == torch.int64
        and perm.shape == (n,)
        and torch.equal(perm.sort().values, torch.arange(n))
    ):
        return f"batches['perm'] must be None or a permutation of {n} indices"
    if not isinstance(rng, dict) or set(rng) != {"torch", "cuda"}:
        return "rng must hold torch and cuda"
    cuda = rng["cuda"]
    states = [rng["torch"], *(cuda if isinstance(cuda, list) else [])]
    if not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in states) or not (
        cuda is None or isinstance(cuda, list)
    ):
        return "rng must hold uint8 generator states"
    return None


def checkpoint_problem(ckpt: dict, cfg: TrainConfig, meta: dict, csv: pd.DataFrame) -> str | None:
    """A checkpoint's contents (its keys and config already checked) against the config, the
    checkpoints its JSON `meta` records, and the CSV rows `csv`."""
    samples, recorded = ckpt["samples"], [c["samples"] for c in meta.get("checkpoints", [])]
    if not _is_count(samples, cfg.batch_size, cfg.samples) or samples % cfg.batch_size:
        return (
            f"samples={samples!r:.40} is not a whole number of minibatches ({cfg.batch_size}) "
            f"within the budget ({cfg.samples})"
        )
    if samples not in recorded:
        return f"samples={samples} is not a checkpoint its JSON records ({recorded})"
    if meta.get("status") == "running" and samples % cfg.eval_every:
        return f"samples={samples} of a running model is not an evaluation ({cfg.eval_every})"
    if not _is_number(ckpt["wall_s"]) or ckpt["wall_s"] < 0:
        return "wall_s must be a finite number of seconds"
    if ckpt["device"] not in DEVICE_TYPES:
        return f"device must be one of {', '.join(DEVICE_TYPES)}"
    if not isinstance(ckpt["optimizer"], dict):
        return "optimizer must be a dict"
    return (
        _ckpt_rows_problem(ckpt["rows"], samples, cfg, csv)
        or _tensors_problem(ckpt["model"], cfg)
        or _sampler_problem(ckpt["batches"], ckpt["rng"], cfg)
        or (_chains_problem(ckpt["chains"], cfg) if cfg.method == "mcem" else None)
    )


def _chains_problem(chains, cfg: TrainConfig) -> str | None:
    """MCEM's chains (mcem.py): z (train_size, N_z) and positive step sizes (train_size,)."""
    n = cfg.train_size
    if not isinstance(chains, dict) or set(chains) != {"z", "step_size"}:
        return "chains must hold z and step_size"
    for key, shape in (("z", (n, cfg.nz)), ("step_size", (n,))):
        t = chains[key]
        if not (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and t.shape == shape
            and t.isfinite().all()
        ):
            return f"chains[{key!r}] must be a finite floating tensor of shape {list(shape)}"
    if not (chains["step_size"] > 0).all():
        return "chains['step_size'] must be positive"
    return None
