"""Distance of a run to the paper's Figure 2 curves, at every logged sample count."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .reference import SOURCE, paper_elbo
from .store import atomic_write_bytes, load_run, write_csv
from .tables import to_markdown


def compare_run(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(detail, summary) for every model in a run folder.

    detail: nz, split, samples, ours, paper, diff (ours - paper; nats per datapoint, positive
    means our bound is higher), with NaN where the paper's curve does not reach.
    summary: per nz and split, the mean and max |diff| over the points the paper covers, and
    the diff at the last such point.
    """
    parts = []
    for meta, df in load_run(folder):
        nz = meta["config"]["nz"]
        for split in ("train", "test"):
            ours = df[f"{split}_elbo"].to_numpy()
            paper = paper_elbo(nz, split, df.samples)
            parts.append(
                pd.DataFrame(
                    {
                        "nz": nz,
                        "split": split,
                        "samples": df.samples,
                        "ours": ours,
                        "paper": paper,
                        "diff": ours - paper,
                    }
                )
            )
    detail = pd.concat(parts, ignore_index=True)
    covered = detail.dropna(subset=["paper"])
    summary = (
        covered.assign(abs_diff=covered["diff"].abs())
        .groupby(["nz", "split"], sort=True)
        .agg(
            points=("diff", "size"),
            mean_abs_diff=("abs_diff", "mean"),
            max_abs_diff=("abs_diff", "max"),
            last_samples=("samples", "last"),
            last_diff=("diff", "last"),
        )
        .reset_index()
    )
    return detail, summary


def write_comparison(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write comparison.csv (detail) and comparison.md (summary and detail) into the folder."""
    folder = Path(folder)
    detail, summary = compare_run(folder)
    write_csv(detail, folder / "comparison.csv")
    text = (
        f"# Distance to the paper\n\nPaper: {SOURCE}. diff = ours - paper, nats per "
        "datapoint (positive: our bound is higher). The paper's curve is interpolated in "
        "log10(samples).\n\n## Summary\n\n"
        + to_markdown(summary)
        + "\n## Every logged point\n\n"
        + to_markdown(detail)
    )
    atomic_write_bytes(folder / "comparison.md", text.encode())
    return detail, summary
