"""`vaerepro plot RUN_DIR`: every figure of a run and RUN_DIR/REPORT.md."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pandas as pd

from .compare import write_comparison
from .data import load_mnist
from .plots import plot_components, plot_fig2, plot_model
from .reference import SOURCE, paper_elbo
from .store import RunFiles, atomic_write_bytes, load_run
from .tables import to_markdown
from .train import load_model


def make_figures(run_dir: str | Path, data_root: str | Path | None = None) -> Path:
    """Write RUN_DIR/figures/*, the comparison with the paper and RUN_DIR/REPORT.md; returns
    the report's path.

    Fig. 2, components.png, the comparison and the report need only the CSVs and JSONs. The
    per-model figures need a model's final weights (`.pt`, not committed under results/):
    models without them are skipped, with one line on stderr. RunFolderError (naming the
    file) when a CSV or JSON is missing or malformed; DataError when MNIST cannot be loaded
    for the per-model figures.
    """
    run_dir = Path(run_dir)
    runs = load_run(run_dir)
    files = [RunFiles.of(run_dir, m["config"]["nz"], m["config"]["seed"]) for m, _ in runs]
    models = [load_model(f) if f.weights.exists() else None for f in files]
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    plot_fig2(runs, out)
    plot_components(runs, out)
    write_comparison(run_dir)
    skipped = [m["config"]["nz"] for model, (m, _) in zip(models, runs, strict=True) if not model]
    if skipped:
        print(
            f"per-model figures skipped for N_z={','.join(map(str, skipped))}: no final weights "
            f"(.pt) in {run_dir}",
            file=sys.stderr,
        )
    data = load_mnist(data_root, "cpu") if len(skipped) < len(runs) else None
    diagnostics = [
        plot_model(model, meta["config"]["nz"], data.test_x, data.test_y, out) if model else None
        for model, (meta, _) in zip(models, runs, strict=True)
    ]
    report = run_dir / "REPORT.md"
    atomic_write_bytes(report, render_report(run_dir, runs, diagnostics).encode())
    return report


def render_report(
    run_dir: Path, runs: list[tuple[dict, pd.DataFrame]], diagnostics: list[dict | None]
) -> str:
    """REPORT.md's text; a None diagnostic is a model without final weights."""
    rows, speed = [], []
    for (meta, df), diag in zip(runs, diagnostics, strict=True):
        nz, last = meta["config"]["nz"], df.iloc[-1]
        rows.append(
            {
                "N_z": nz,
                "samples": f"{int(last.samples):.3g}",
                "train ELBO": last.train_elbo,
                "paper train": float(paper_elbo(nz, "train", last.samples)),
                "test ELBO": last.test_elbo,
                "paper test": float(paper_elbo(nz, "test", last.samples)),
                "active units": f"{diag['active_units']} / {nz}" if diag else "–",
            }
        )
        speed.append(
            {
                "N_z": nz,
                "device": f"{meta['device']['type']} ({meta['device']['name']})",
                "train samples/s (median)": df.train_samples_per_s.median(),
                "wall s": last.wall_s,
            }
        )
    meta = runs[0][0]
    config = {k: v for k, v in meta["config"].items() if k != "nz"}
    git = meta.get("git", {})
    return "\n".join(
        [
            f"# Report: {run_dir.name}",
            "",
            "![Fig. 2: ours (red) and the paper's AEVB curves (grey); train solid, test dashed]"
            "(figures/fig2.png)",
            "",
            f"ELBO in nats per datapoint at the last evaluation. Paper: {SOURCE}, interpolated in "
            "log10(samples) (– where the printed curve shows no value; see comparison.md). "
            "Active units: latent dimensions whose average KL over the test set exceeds 0.01 "
            "nats (– without the final weights, which are not committed).",
            "",
            to_markdown(pd.DataFrame(rows)),
            "## Throughput",
            "",
            to_markdown(pd.DataFrame(speed), ".1f"),
            "## Command and config",
            "",
            f"Command: `{shlex.join(meta.get('command', []))}`",
            f"Preset: `{meta.get('preset')}`; git commit `{git.get('commit')}` "
            f"(uncommitted changes: {git.get('dirty')}); versions: "
            + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
            "",
            "Config (every model; N_z varies):",
            "",
            "```json",
            json.dumps(config, indent=2, sort_keys=True),
            "```",
            "",
            "Figures: `figures/fig2.png` (and `.pdf`), `components.png`, and per N_z with final "
            "weights `recon_nz*.png` (test images above reconstructions), `samples_nz*.png` "
            "(z ~ N(0, I)), `interpolation_nz*.png`, `latent_nz*.png`, `kl_per_dim_nz*.png`. "
            "Distance to the paper at every logged point: [comparison.md](comparison.md).",
            "",
        ]
    )
