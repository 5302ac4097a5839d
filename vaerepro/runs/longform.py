"""A model's CSV rows in long form: one row per logged value.

The CSV is wide (one row per evaluation: samples, train_elbo, test_elbo, train_loglik, ...);
comparing, checking and aggregating over seeds want one value per row, keyed by the model
(method, nz, seed) and the point (split, samples, term). `long_form` is the one reshaper:
compare, check, the reference writer and the tier-1 trajectory all read the CSVs through it.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

SPLITS = ("train", "test")
TERMS = ("elbo", "loglik", "kl")  # nats per datapoint; also "marginal", where estimated
KEYS = ["method", "nz", "split", "samples", "term"]  # a point of one model and method
COLUMNS = ["method", "nz", "seed", "split", "samples", "term", "value"]


def long_form(rows: pd.DataFrame, cfg: dict, terms: Iterable[str] = TERMS) -> pd.DataFrame:
    """The CSV `rows` of the model with config `cfg` (a config dict: its method, nz and
    seed) as COLUMNS rows, per split (train, then test) and term (in the order of `terms`)
    the logged values in order of samples; empty values (a term the model does not log
    there: MCEM's ELBO, the marginal likelihood between its estimates) are left out. A config
    without a method (written before wake-sleep) is AEVB's."""
    method, nz, seed = cfg.get("method", "aevb"), cfg["nz"], cfg["seed"]
    parts = [
        pd.DataFrame(
            {
                "method": method,
                "nz": nz,
                "seed": seed,
                "split": split,
                "samples": rows.samples.to_numpy(),
                "term": term,
                "value": rows[f"{split}_{term}"].to_numpy(),
            }
        )
        for split in SPLITS
        for term in terms
    ]
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"]).reset_index(drop=True)
