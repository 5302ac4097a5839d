"""`vaerepro plot RUN_DIR`: every figure of a run and RUN_DIR/REPORT.md."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from vaerepro.analysis.compare import (
    DIVERGED_NATS,
    marginal_comparison,
    marginal_summary,
    with_term,
    write_comparison,
)
from vaerepro.analysis.plots import (
    plot_components,
    plot_fig2,
    plot_fig3,
    plot_model,
    plot_recorded_kl,
)
from vaerepro.analysis.reference import SOURCE, paper_elbo
from vaerepro.analysis.tables import to_markdown
from vaerepro.core.data import load_mnist
from vaerepro.core.errors import RunFolderError
from vaerepro.core.memory import out_of_memory_as_error
from vaerepro.core.numbers import format_count
from vaerepro.runs.folder import load_model
from vaerepro.runs.layout import RUN_JSON, RunFiles
from vaerepro.runs.records import load_run, read_run_json
from vaerepro.runs.writes import atomic_write_bytes


def make_figures(
    run_dir: str | Path,
    data_root: str | Path | None = None,
    seed: int | None = None,
    comparison: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> Path:
    """Write RUN_DIR/figures/*, the comparison with the paper and RUN_DIR/REPORT.md; returns
    the report's path. `comparison`: compare_run's of the run, when already computed.

    Fig. 2, components.png, the comparison and the report need only the CSVs and JSONs; with
    several seeds they show the mean and the band over seeds. The per-model figures are drawn
    for one seed (`seed`; default the first of the run's) and need a model's final weights
    (`.pt`, not committed under results/): models without them are skipped, with one line on
    stderr. RunFolderError (naming the file) when a CSV or JSON is missing or malformed, or
    `seed` is not in the run; DataError when MNIST cannot be loaded for the per-model figures;
    OutOfMemory when the machine runs out of memory while drawing.
    """
    run_dir = Path(run_dir)
    advice = f"The run's files are complete: free some memory and run `vaerepro plot {run_dir}`."
    with out_of_memory_as_error(f"drawing the figures of {run_dir}", advice):
        return _make_figures(run_dir, data_root, seed, comparison)


def _make_figures(
    run_dir: Path,
    data_root: str | Path | None,
    seed: int | None,
    comparison: tuple[pd.DataFrame, pd.DataFrame] | None,
) -> Path:
    everything = load_run(run_dir)
    seed = _chosen_seed(run_dir, everything, seed)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    fig3 = None
    if marginal := with_term(everything, "marginal"):
        plot_fig3(marginal, out)
        fig3 = marginal_summary(
            *write_comparison(run_dir, marginal_comparison(marginal), "marginal")
        )
    runs = with_term(everything, "elbo")  # all but MCEM's, which has no encoder and no ELBO
    report = run_dir / "REPORT.md"
    if not runs:  # MCEM only: Fig. 3 is all there is
        atomic_write_bytes(
            report, (f"# Report: {run_dir.name}\n" + _fig3_section(fig3, marginal)).encode()
        )
        return report
    first_method = runs[0][0]["config"]["method"]  # per-model figures: one method, one seed
    chosen = [
        m for m, _ in runs if m["config"]["seed"] == seed and m["config"]["method"] == first_method
    ]
    files = [RunFiles.of_config(run_dir, m["config"]) for m in chosen]
    models = [load_model(f) if f.weights.exists() else None for f in files]
    plot_fig2(runs, out)
    plot_components(runs, out)
    _, summary = write_comparison(run_dir, comparison)
    skipped = [m for model, m in zip(models, chosen, strict=True) if not model]
    diagnostics = _recorded_diagnostics(skipped, run_dir, out)
    data = load_mnist(data_root, "cpu") if len(skipped) < len(chosen) else None
    for model, meta in zip(models, chosen, strict=True):
        if model:
            nz = meta["config"]["nz"]
            diagnostics[nz] = plot_model(model, nz, data.test_x, data.test_y, out)
    text = render_report(run_dir, runs, summary, diagnostics, seed) + _fig3_section(fig3, marginal)
    atomic_write_bytes(report, text.encode())
    return report


def _fig3_section(summary: pd.DataFrame | None, marginal: list[tuple[dict, pd.DataFrame]]) -> str:
    """REPORT.md's Fig. 3 part: the figure and the distance at the last point (or nothing);
    `marginal`: the models that logged the marginal likelihood."""
    if summary is None:
        return ""
    images = sorted({m["config"]["marginal_n"] for m, _ in marginal})
    return "\n".join(
        [
            "",
            "## Marginal likelihood (Fig. 3)",
            "",
            "![Fig. 3: ours (mean over seeds, shaded: min to max) and the paper's curves (grey; "
            "wake-sleep circles, MCEM triangles); train solid, test dashed](figures/fig3.png)",
            "",
            f"The marginal likelihood log p(x) of the first {' or '.join(map(str, images))} "
            "images of each split (`--marginal-n`), by "
            "the paper's HMC estimator (Appendix D; docs/marginal.md), nats per datapoint, at "
            "the last point every seed logged: mean ± sd over seeds; the paper's Fig. 3 there, "
            "linear in samples. Every logged point: "
            "[comparison-marginal.md](comparison-marginal.md).",
            "",
            to_markdown(summary),
        ]
    )


def _recorded_diagnostics(skipped: list[dict], run_dir: Path, out: Path) -> dict[int, dict]:
    """For the models without final weights (their JSONs `skipped`): the KL per dimension
    and active units their JSONs record (from the final model, by this version), with the
    KL figure drawn from them; one line on stderr names what cannot be drawn."""
    recorded = {m["config"]["nz"]: m["kl_per_dim"] for m in skipped if "kl_per_dim" in m}
    if skipped:
        nzs = ",".join(str(m["config"]["nz"]) for m in skipped)
        print(
            f"per-model figures skipped for N_z={nzs}: no final weights (.pt) in {run_dir}"
            + (
                f"; KL per dimension and active units of N_z={','.join(map(str, recorded))} "
                "from their JSONs"
                if recorded
                else ""
            ),
            file=sys.stderr,
        )
    return {nz: plot_recorded_kl(kl, nz, out) for nz, kl in recorded.items()}


def _chosen_seed(run_dir: Path, runs: list[tuple[dict, pd.DataFrame]], seed: int | None) -> int:
    """`seed`, or by default the run's first (run.json's order, then the models'); a
    RunFolderError listing the run's seeds when `seed` is not among them."""
    record = run_dir / RUN_JSON
    seeds = list(read_run_json(record)[0].seeds) if record.exists() else []
    seeds += [s for s in dict.fromkeys(m["config"]["seed"] for m, _ in runs) if s not in seeds]
    if seed is None:
        return seeds[0]
    if seed not in seeds:
        raise RunFolderError(f"{run_dir} has no model of seed {seed}; its seeds: {seeds}")
    return seed


def _mean_sd(values: pd.Series) -> str:
    """-98.21 ± 0.35 (mean ± sd over seeds), or the value alone for one seed."""
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std():.2f}"


def _result_row(
    method: str, nz: int, models: list[tuple[dict, pd.DataFrame]], summary: pd.DataFrame
) -> dict:
    """One method's and N_z's ELBO at the last evaluation every seed reached (mean ± sd over
    seeds), the paper's value there and the fraction of points with the paper in our band and
    in the 95% prediction interval (`summary`: compare_run's, indexed by method, nz, split)."""
    samples = min(df.samples.iloc[-1] for _, df in models)
    last = pd.DataFrame([df[df.samples == samples].iloc[0] for _, df in models])
    row = {"method": method, "N_z": nz, "seeds": len(models), "samples": format_count(samples)}
    for split in ("train", "test"):
        row[f"{split} ELBO"] = _mean_sd(last[f"{split}_elbo"])
        row[f"paper {split}"] = float(paper_elbo(nz, split, samples, method))
        for column, name in (("inside", "band"), ("in_pi", "95% PI")):
            row[f"paper in {name} ({split})"] = summary[column].get((method, nz, split), np.nan)
    return row


def _speed_row(method: str, nz: int, models: list[tuple[dict, pd.DataFrame]]) -> dict:
    """One method's and N_z's device, median training samples/s and wall time over seeds."""
    device = models[0][0]["device"]
    rates = pd.concat([df.train_samples_per_s for _, df in models])
    return {
        "method": method,
        "N_z": nz,
        "device": f"{device['type']} ({device['name']})",
        "train samples/s (median)": rates.median(),
        "wall s (all seeds)": sum(df.wall_s.iloc[-1] for _, df in models),
    }


def _diverged_note(summary: pd.DataFrame) -> str:
    """The sentence naming the points left out of both fractions because a seed diverged
    (compare.DIVERGED_NATS), or "" when none did (`summary` indexed by method, nz, split)."""
    counts = summary.diverged[summary.diverged > 0]
    if counts.empty:
        return ""
    where = ", ".join(f"{m} N_z={nz} {split}: {n}" for (m, nz, split), n in counts.items())
    return (
        f" Left out of both fractions, the logged points where a seed's ELBO was below "
        f"{DIVERGED_NATS:.0f} nats (twice that of a decoder giving every pixel probability "
        f"1/2: the seed diverged, and its values would widen band and interval to millions "
        f"of nats): {where}."
    )


def render_report(
    run_dir: Path,
    runs: list[tuple[dict, pd.DataFrame]],
    summary: pd.DataFrame,
    diagnostics: dict[int, dict],
    seed: int,
) -> str:
    """REPORT.md's text. `summary` is compare_run's; `diagnostics` maps N_z to the per-model
    figures' results for `seed` (absent without final weights)."""
    groups: dict[tuple[str, int], list[tuple[dict, pd.DataFrame]]] = {}
    for meta, df in runs:
        groups.setdefault((meta["config"]["method"], meta["config"]["nz"]), []).append((meta, df))
    summary = summary.set_index(["method", "nz", "split"])
    rows, speed = [], []
    for (method, nz), models in groups.items():
        row = _result_row(method, nz, models, summary)
        diag = diagnostics.get(nz) if method == runs[0][0]["config"]["method"] else None
        row[f"active units (seed {seed})"] = f"{diag['active_units']} / {nz}" if diag else "–"
        rows.append(row)
        speed.append(_speed_row(method, nz, models))
    meta = runs[0][0]
    config = {k: v for k, v in meta["config"].items() if k not in ("nz", "seed", "method")}
    seeds = sorted({m["config"]["seed"] for m, _ in runs})
    git = sorted({str(m.get("git", {}).get("commit")) for m, _ in runs})
    dirty = any(m.get("git", {}).get("dirty") for m, _ in runs)
    return "\n".join(
        [
            f"# Report: {run_dir.name}",
            "",
            "![Fig. 2: ours (red: mean over seeds, shaded: min to max) and the paper's AEVB "
            "curves (grey); train solid, test dashed](figures/fig2.png)",
            "",
            f"ELBO in nats per datapoint at the last evaluation every seed reached: mean ± sd "
            f"over seeds {', '.join(map(str, seeds))}. Paper: {SOURCE}, interpolated in "
            "log10(samples) (– where the printed curve shows no value; see comparison.md). "
            "Paper in band: the fraction of the logged points with a paper value where it lies "
            "between our min and max over seeds (– with one seed); paper in 95% PI: the "
            "fraction where it lies in the 95% prediction interval for one more seed, mean ± "
            "t(0.975, n-1) sd sqrt(1 + 1/n) over n seeds: whether the paper could be one more "
            "of our seeds (with 3 seeds the band is too narrow to say). Active units: latent "
            "dimensions whose average KL over the test set exceeds 0.01 nats, from the final "
            "weights or, without them, from the model's JSON (– for models whose JSON, "
            "written by an older version, does not record them and whose weights are absent)."
            + _diverged_note(summary),
            "",
            to_markdown(pd.DataFrame(rows)),
            "## Throughput",
            "",
            to_markdown(pd.DataFrame(speed), ".1f"),
            "## Command and config",
            "",
            f"Command (first model): `{shlex.join(meta.get('command', []))}`",
            f"Preset: `{meta.get('preset')}`; git commit(s) `{', '.join(git)}` "
            f"(uncommitted changes: {dirty}); versions: "
            + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
            "",
            "Config (every model; method, N_z and seed vary):",
            "",
            "```json",
            json.dumps(config, indent=2, sort_keys=True),
            "```",
            "",
            "Figures: `figures/fig2.png` (and `.pdf`), `components.png`, and per N_z with final "
            f"weights (seed {seed}) `recon_nz*.png` (test images above reconstructions), "
            "`samples_nz*.png` (z ~ N(0, I)), `interpolation_nz*.png`, `latent_nz*.png`, "
            "`kl_per_dim_nz*.png`. Distance to the paper at every logged point: "
            "[comparison.md](comparison.md).",
            "",
        ]
    )
