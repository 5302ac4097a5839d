"""Distance of a run to the paper's Figure 2 curves, at every logged sample count."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .reference import SOURCE, paper_elbo, paper_gap
from .store import atomic_write_bytes, load_run, write_csv
from .tables import to_markdown


def compare_run(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(detail, summary) for every model in a run folder.

    detail: nz, split, samples, ours, paper, diff (ours - paper; nats per datapoint, positive
    means our bound is higher), and paper_gap: NaN paper and diff where the printed curve shows
    no value, with the reason in paper_gap ("" where it has a value).
    summary: per nz and split, the logged points, how many the paper covers, the mean and max
    |diff| over those, and the diff at the last of them (NaN when it covers none).
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
                        "paper_gap": paper_gap(nz, split, df.samples),
                    }
                )
            )
    detail = pd.concat(parts, ignore_index=True)
    logged = detail.groupby(["nz", "split"], sort=True).size().rename("logged")
    covered = detail.dropna(subset=["paper"])
    stats = (
        covered.assign(abs_diff=covered["diff"].abs())
        .groupby(["nz", "split"], sort=True)
        .agg(
            points=("diff", "size"),
            mean_abs_diff=("abs_diff", "mean"),
            max_abs_diff=("abs_diff", "max"),
            last_samples=("samples", "last"),
            last_diff=("diff", "last"),
        )
    )
    summary = pd.concat([logged, stats], axis=1).reset_index()
    summary["points"] = summary.points.fillna(0).astype(int)
    return detail, summary


def write_comparison(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write comparison.csv (detail) and comparison.md (summary and detail) into the folder."""
    folder = Path(folder)
    detail, summary = compare_run(folder)
    write_csv(detail, folder / "comparison.csv")
    text = (
        f"# Distance to the paper\n\nPaper: {SOURCE}. diff = ours - paper, nats per "
        "datapoint (positive: our bound is higher). The paper's curve is interpolated in "
        "log10(samples) along its visible part; where the printed figure shows no value, "
        "paper and diff are blank and paper_gap says why. Summary: `points` of the `logged` "
        "ones have a paper value.\n\n## Summary\n\n"
        + to_markdown(summary)
        + "\n## Every logged point\n\n"
        + to_markdown(detail)
    )
    atomic_write_bytes(folder / "comparison.md", text.encode())
    return detail, summary
