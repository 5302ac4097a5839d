"""Distance of a run to the paper's curves, Figure 2 (the ELBO) and Figure 3 (the marginal
likelihood), at every logged sample count, with the spread over seeds: our mean, the band
(min to max over seeds) and where the paper falls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vaerepro.analysis.reference import (
    SOURCE,
    SOURCE_FIG3,
    paper_elbo,
    paper_gap,
    paper_marginal,
    paper_marginal_gap,
)
from vaerepro.analysis.tables import to_markdown
from vaerepro.core.config import METHODS
from vaerepro.core.errors import UsageError
from vaerepro.core.numbers import format_count
from vaerepro.runs.longform import long_form
from vaerepro.runs.records import load_run
from vaerepro.runs.writes import atomic_write_bytes, write_csv


def seed_values(runs: list[tuple[dict, pd.DataFrame]], term: str = "elbo") -> pd.DataFrame:
    """Every logged value of `term` (elbo, loglik, kl or marginal; nats per datapoint) of every
    model in `runs` (load_run's), in long form (longform.COLUMNS)."""
    parts = [long_form(df, meta["config"], [term]) for meta, df in runs]
    return pd.concat(parts, ignore_index=True)


def with_term(runs: list[tuple[dict, pd.DataFrame]], term: str) -> list[tuple[dict, pd.DataFrame]]:
    """The models of `runs` that logged `term` at least once (MCEM has no ELBO; only models
    with marginal_every have a marginal likelihood)."""
    return [(meta, df) for meta, df in runs if df[f"train_{term}"].notna().any()]


def paper_values(term: str, cfg: dict, split: str, samples, method: str) -> tuple:
    """(the paper's values of `term` at `samples` for the model of `cfg`, why it has none
    where NaN): Fig. 2 for the ELBO, Fig. 3 for the marginal likelihood."""
    if term == "marginal":
        return (
            paper_marginal(cfg, split, samples, method),
            paper_marginal_gap(cfg, split, samples, method),
        )
    return (
        paper_elbo(cfg["nz"], split, samples, method),
        paper_gap(cfg["nz"], split, samples, method),
    )


# Twice the ELBO of a decoder that gives each of the 784 pixels probability 1/2 (log p(x) =
# 784 ln(1/2) whatever x, grey levels too): no Bernoulli model, trained or just initialised,
# lies below it, so a seed there has diverged (lr 0.1 ended at -3.7e5 to -5.3e7 nats).
DIVERGED_NATS = -2 * 784 * np.log(2)  # -1086.9 nats per datapoint


def diverged_seeds(values: pd.DataFrame, configs: dict[tuple[str, int], dict]) -> pd.Series:
    """Per method, nz, split and samples of `values` (seed_values' long form, elbo or
    marginal): how many seeds lie below DIVERGED_NATS there. Only Bernoulli models count
    (`configs` by method and nz): a Gaussian decoder's values have no such floor."""
    bernoulli = [
        k for k, cfg in configs.items() if cfg.get("likelihood", "bernoulli") == "bernoulli"
    ]
    counted = pd.MultiIndex.from_arrays([values.method, values.nz]).isin(bernoulli)
    low = (values.value < DIVERGED_NATS) & counted
    return low.groupby([values.method, values.nz, values.split, values.samples]).sum()


def seed_bands(values: pd.DataFrame) -> pd.DataFrame:
    """Per method, nz, split and samples, over the seeds: seeds (how many logged the point),
    mean, sd (ddof 1; NaN for one seed), min and max of `values` (long form, one term: from
    `seed_values`; NaN values are skipped). Methods in METHODS' order, train before test."""
    return (
        values.groupby(["method", "nz", "split", "samples"], sort=True)
        .value.agg(seeds="size", mean="mean", sd="std", min="min", max="max")
        .reset_index()
        .sort_values(["method", "nz", "split", "samples"], key=_in_order)
        .reset_index(drop=True)
    )


def _in_order(column: pd.Series) -> pd.Series:
    """Methods in METHODS' order (AEVB, wake-sleep, MCEM), train before test."""
    order = {"split": {"train": 0, "test": 1}, "method": {m: i for i, m in enumerate(METHODS)}}
    return column.map(order[column.name]) if column.name in order else column


def prediction_interval(
    mean: pd.Series, sd: pd.Series, n: pd.Series, level: float = 0.95
) -> tuple[pd.Series, pd.Series]:
    """(low, high) of the `level` prediction interval for one more seed's value, from `n`
    seeds with this mean and sd (ddof 1): mean -+ t((1 + level) / 2, n - 1) sd sqrt(1 + 1/n).
    NaN for fewer than two seeds. Nats per datapoint."""
    from scipy.stats import t as student_t  # imported here: it adds ~0.5 s to every command

    n = n.astype(float).where(n >= 2)
    half = student_t.ppf((1 + level) / 2, n - 1) * sd * np.sqrt(1 + 1 / n)
    return mean - half, mean + half


def compare_run(folder: str | Path, term: str = "elbo") -> tuple[pd.DataFrame, pd.DataFrame]:
    """compare_runs of the models of a run folder (validated by load_run)."""
    return compare_runs(load_run(folder), term)


def compare_runs(
    runs: list[tuple[dict, pd.DataFrame]], term: str = "elbo"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(detail, summary) of `term` (elbo: against Fig. 2; marginal: against Fig. 3) for the
    models of `runs` (load_run's: (metadata, CSV rows) per model) that log it, over seeds.

    detail, per method, nz, split and logged samples: seeds, mean, sd, min, max (over seeds); paper
    (its value; NaN where the printed curve shows none, paper_gap says why), diff = mean -
    paper (nats per datapoint; positive: our bound is higher), diff_in_sd = diff / sd, and
    inside: whether the paper lies in our band [min, max]; pi_low, pi_high: the 95%
    prediction interval for one more seed, and in_pi: whether the paper lies in it (NaN for
    one seed, no paper, or a diverged seed there); diverged: the seeds below DIVERGED_NATS,
    whose values make the band and the interval meaninglessly wide.
    summary, per method, nz and split: seeds, logged points, the `points` the paper covers, the
    `banded` ones among them (two or more seeds there, none diverged), the fraction of those
    with the paper inside our band, `in_pi` the fraction inside the prediction interval, the
    mean |diff| and |diff_in_sd|, the max |diff|, the diff at the last covered point, and
    `diverged`, the covered points where a seed had diverged.
    """
    runs = with_term(runs, term)
    if not runs:
        what = "an ELBO (MCEM has none: see `vaerepro fig3`)" if term == "elbo" else term
        raise UsageError(f"no model of the run logs {what}")
    detail = _against_paper(runs, term)
    return detail, _summary(detail)


def _against_paper(runs: list[tuple[dict, pd.DataFrame]], term: str) -> pd.DataFrame:
    """compare_runs' detail: the seed bands of `term` beside the paper's values."""
    configs = {(m["config"]["method"], m["config"]["nz"]): m["config"] for m, _ in runs}
    values = seed_values(runs, term)
    detail = seed_bands(values)
    paper = np.full(len(detail), np.nan)
    gap = np.full(len(detail), "", dtype=object)
    for (method, nz, split), rows in detail.groupby(["method", "nz", "split"]).groups.items():
        cfg = configs[method, nz]
        paper[rows], gap[rows] = paper_values(term, cfg, split, detail.samples[rows], method)
    keys = ["method", "nz", "split", "samples"]
    points = pd.MultiIndex.from_frame(detail[keys])
    detail["diverged"] = diverged_seeds(values, configs).reindex(points, fill_value=0).to_numpy()
    diff = detail["mean"] - paper
    band = (detail.seeds >= 2) & ~np.isnan(paper) & (detail.diverged == 0)
    inside = ((detail["min"] <= paper) & (paper <= detail["max"])).astype(float).where(band)
    low, high = prediction_interval(detail["mean"], detail.sd, detail.seeds)
    in_pi = ((low <= paper) & (paper <= high)).astype(float).where(band)
    return detail.assign(
        paper=paper,
        diff=diff,
        diff_in_sd=diff / detail.sd,
        inside=inside,
        pi_low=low,
        pi_high=high,
        in_pi=in_pi,
        paper_gap=gap,
    )


def _summary(detail: pd.DataFrame) -> pd.DataFrame:
    """compare_runs' summary of its detail, per method, nz and split."""
    keys = ["method", "nz", "split"]
    logged = detail.groupby(keys, sort=False).agg(
        seeds=("seeds", "max"), logged=("samples", "size")
    )
    covered = detail.dropna(subset=["paper"])
    stats = (
        covered.assign(abs_diff=covered["diff"].abs(), abs_sd=covered.diff_in_sd.abs())
        .groupby(keys, sort=False)
        .agg(
            points=("diff", "size"),
            banded=("inside", "count"),  # points with a band (two or more seeds, none diverged)
            inside=("inside", "mean"),
            in_pi=("in_pi", "mean"),
            mean_abs_diff=("abs_diff", "mean"),
            mean_abs_diff_in_sd=("abs_sd", "mean"),
            max_abs_diff=("abs_diff", "max"),
            last_samples=("samples", "last"),
            last_diff=("diff", "last"),
            diverged=("diverged", lambda seeds: int((seeds > 0).sum())),
        )
    )
    summary = logged.join(stats).reset_index()
    summary["points"] = summary.points.fillna(0).astype(int)
    summary["banded"] = summary.banded.fillna(0).astype(int)
    summary["diverged"] = summary.diverged.fillna(0).astype(int)
    return summary


def fidelity_table(detail: pd.DataFrame, summary: pd.DataFrame, at: list[int]) -> pd.DataFrame:
    """The README's table: per method, N_z and split, at each sample count of `at`, our mean
    ± sd over seeds, the paper's value and the distance (mean - paper, nats, and in seed
    sds); then over every logged point the paper covers, how many lie inside our band (min
    to max over seeds) and inside the 95% prediction interval for one more seed."""
    rows = []
    for (method, nz, split), points in detail.groupby(["method", "nz", "split"], sort=False):
        row = {"method": method, "N_z": nz, "split": split}
        points = points.set_index("samples")
        for n in at:
            label = format_count(n)
            if n not in points.index:
                row |= {f"ours at {label}": "–", f"paper at {label}": "–", f"diff at {label}": "–"}
                continue
            p = points.loc[n]
            ours = f"{p['mean']:.2f}" + ("" if np.isnan(p.sd) else f" ± {p.sd:.2f}")
            diff = "–" if np.isnan(p["diff"]) else f"{p['diff']:+.2f}"
            if not np.isnan(p.diff_in_sd):
                diff += f" ({p.diff_in_sd:+.1f} sd)"
            paper = "–" if np.isnan(p.paper) else f"{p.paper:.2f}"
            row |= {f"ours at {label}": ours, f"paper at {label}": paper, f"diff at {label}": diff}
        s = summary.set_index(["method", "nz", "split"]).loc[(method, nz, split)]
        row["paper in our band (logged points)"] = _fraction(s.inside, s.banded)
        row["paper in the 95% PI (logged points)"] = _fraction(s.in_pi, s.banded)
        rows.append(row)
    return pd.DataFrame(rows)


def marginal_comparison(runs: list[tuple[dict, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """compare_runs of the marginal likelihood (against Fig. 3) per N_train (the models'
    train_size), with an n_train column first in both tables."""
    parts = {}
    for meta, df in runs:
        parts.setdefault(meta["config"]["train_size"], []).append((meta, df))
    tables = [
        [t.insert(0, "n_train", n) or t for t in compare_runs(group, "marginal")]
        for n, group in sorted(parts.items())
    ]
    return tuple(pd.concat(t, ignore_index=True) for t in zip(*tables, strict=True))


def marginal_summary(detail: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per N_train, method, N_z and split at the last point every seed logged: our mean ± sd
    over seeds, the paper there (– past its curve), the distance, and at how many of the
    logged points the paper lies in the 95% prediction interval for one more seed."""
    rows = []
    keys = ["n_train", "method", "nz", "split"]
    for key, points in detail.groupby(keys, sort=False):
        last = points[points.seeds == points.seeds.max()].iloc[-1]
        s = summary.set_index(keys).loc[key]
        rows.append(
            {
                **dict(zip(["N_train", "method", "N_z", "split"], key, strict=True)),
                "seeds": int(last.seeds),
                "samples": format_count(int(last.samples)),
                "ours": f"{last['mean']:.2f}" + ("" if np.isnan(last.sd) else f" ± {last.sd:.2f}"),
                "paper": "–" if np.isnan(last.paper) else f"{last.paper:.2f}",
                "diff": "–" if np.isnan(last["diff"]) else f"{last['diff']:+.2f}",
                "paper in the 95% PI (logged points)": _fraction(s.in_pi, s.banded),
            }
        )
    return pd.DataFrame(rows)


def _fraction(share: float, of: int) -> str:
    """'12 / 40' for a share of `of` points; '–' without any."""
    return "–" if np.isnan(share) else f"{round(share * of)} / {int(of)}"


COMPARISON_FILES = {"elbo": "comparison", "marginal": "comparison-marginal"}  # + .csv, .md


def write_comparison(
    folder: str | Path,
    comparison: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    term: str = "elbo",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write comparison.csv (detail) and comparison.md (summary and detail) of the ELBO into
    the folder, or comparison-marginal.csv and .md of the marginal likelihood; `comparison`:
    compare_run's (detail, summary) of it, when already computed."""
    folder = Path(folder)
    detail, summary = comparison if comparison is not None else compare_run(folder, term)
    name = COMPARISON_FILES[term]
    write_csv(detail, folder / f"{name}.csv")
    source, what, axis = SOURCE, "bound", "log10(samples)"
    if term == "marginal":
        source, what, axis = SOURCE_FIG3, "marginal likelihood", "samples (Fig. 3's axis)"
    text = (
        f"# Distance to the paper ({what})\n\nPaper: {source}. Ours over seeds: mean, sd "
        "(standard deviation), and the band from min to max. diff = mean - paper, nats per "
        f"datapoint (positive: our {what} is higher); diff_in_sd = diff / sd; inside: 1 where "
        "the paper "
        "lies in our band (blank with one seed); pi_low to pi_high: the 95% prediction "
        "interval for one more seed, mean -+ t(0.975, n-1) sd sqrt(1 + 1/n) over n seeds, and "
        "in_pi: 1 where the paper lies in it (the honest test of whether the paper could be "
        "one more of our seeds: with 3 seeds the min-max band is narrow). The paper's curve "
        f"is interpolated in {axis} along its visible part; where the printed figure "
        "shows no value, paper and diff are blank and paper_gap says why. Summary: `points` "
        "of the `logged` ones have a paper value, `banded` of those have two or more seeds; "
        "`inside` is the fraction of the banded ones where the paper lies in our band, "
        "`in_pi` in the prediction interval.\n\n## Summary\n\n"
        + to_markdown(summary)
        + "\n## Every logged point\n\n"
        + to_markdown(detail)
    )
    atomic_write_bytes(folder / f"{name}.md", text.encode())
    return detail, summary
