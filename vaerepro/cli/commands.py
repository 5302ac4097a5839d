"""The subcommands that read run folders, the gate's and the benchmarks' table: parse, call,
print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from vaerepro.analysis.check import check_run
from vaerepro.analysis.compare import (
    compare_run,
    fidelity_table,
    marginal_comparison,
    marginal_summary,
    with_term,
    write_comparison,
)
from vaerepro.analysis.hwtable import hardware_table, save_benchmark, step_table
from vaerepro.analysis.reference_writer import make_reference
from vaerepro.analysis.tables import to_markdown
from vaerepro.cli.reproduce import recorded_data_root
from vaerepro.core.config import MARGINAL_MAX_NZ, check_seed, config_diff, model_label
from vaerepro.core.data import load_mnist
from vaerepro.core.errors import UsageError
from vaerepro.runs.folder import check_output_folder
from vaerepro.runs.records import load_run
from vaerepro.runs.status import status_report
from vaerepro.runs.trajectory import run_trajectory, write_trajectory
from vaerepro.runs.writes import (
    folder_lock,
    refuse_links,
    refuse_links_in_run,
    settle_replaced,
    unchanging,
    write_csv,
)


def cmd_compare(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    refuse_links_in_run(run)
    with unchanging(run):
        comparison = compare_run(run)
    if args.at:  # the table only: nothing is written, so a read-only folder works too
        print(to_markdown(fidelity_table(*comparison, args.at)), end="")
        return 0
    detail, summary = write_comparison(run, comparison)
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        print(detail.to_string(index=False, float_format="%.2f"))
        print("\nsummary (|ours - paper|, nats per datapoint):")
        print(summary.to_string(index=False, float_format="%.2f"))
    print(f"\nwrote {Path(args.run_dir) / 'comparison.csv'} and comparison.md", file=sys.stderr)
    return 0


def cmd_loglik(args: argparse.Namespace) -> int:
    from vaerepro.analysis.loglik import (
        LoglikOptions,
        finished_models,
        loglik_file,
        run_loglik,
        standard_error_note,
    )

    run = Path(args.run_dir)
    for name, value in (("--k", args.k), ("--n", args.n)):
        if value is not None and value < 2:
            raise UsageError(f"{name} must be at least 2, got {value}")
    check_seed(args.noise_seed, "--noise-seed")
    opts = LoglikOptions(args.k, args.split, args.n, args.noise_seed, args.estimator)
    check_output_folder(run, "RUN_DIR", plot=False)
    refuse_links_in_run(run, loglik_file(run, opts).name)
    with unchanging(run):
        models = finished_models(run, lambda line: None)  # every model's weights, before any work
    wide = sorted({cfg.nz for cfg, _, _ in models if cfg.nz >= MARGINAL_MAX_NZ})
    if args.estimator == "hmc" and wide:
        raise UsageError(
            f"--estimator hmc needs N_z < {MARGINAL_MAX_NZ} (its kernel density is fitted to "
            f"{MARGINAL_MAX_NZ} posterior samples per image); {run} has N_z = "
            f"{' '.join(map(str, wide))}: use the default, importance sampling"
        )
    data = load_mnist(args.data_root or recorded_data_root(run), "cpu")
    with folder_lock(run):
        table = run_loglik(run, data, opts, lambda line: print(line, file=sys.stderr))
        write_csv(table, loglik_file(run, opts))
    print(to_markdown(table.drop(columns=["split"]).round(3)), end="")
    print(standard_error_note(table))
    print(f"wrote {loglik_file(run, opts)}", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    check_output_folder(run, "RUN_DIR", plot=True)
    if not run.is_dir():
        raise UsageError(f"RUN_DIR {run} does not exist; give a run folder of `reproduce`")
    from vaerepro.analysis.report import make_figures  # matplotlib's imports: 1.4 s

    data_root = args.data_root or recorded_data_root(run)
    with folder_lock(run):  # one writer: never beside a run writing there
        if said := settle_replaced(run):
            print(said, file=sys.stderr)
        report = make_figures(run, data_root, args.seed)
    print(f"wrote {report} and {report.parent / 'figures'}/", file=sys.stderr)
    return 0


def _models_of(folders: list[str], fields: tuple[str, ...]) -> list[tuple[dict, pd.DataFrame]]:
    """The models of several run folders; UsageError when two folders hold the same model,
    a model being its config's `fields` (e.g. method, N_z and seed)."""
    runs, origin = [], {}
    for folder in folders:
        with unchanging(Path(folder)):
            models = load_run(folder)
        for meta, df in models:
            cfg = meta["config"]
            key = tuple(cfg[f] for f in fields)
            if key in origin:
                raise UsageError(
                    f"{model_label(cfg['method'], cfg['nz'])} seed {cfg['seed']} is in both "
                    f"{origin[key]} and {folder}; give folders of different models"
                )
            origin[key] = folder
            runs.append((meta, df))
    return runs


def _output_folder(out: str, names: list[str]) -> Path:
    """--out, checked (a folder, no links where the files go) and made."""
    out = Path(out)
    check_output_folder(out, "--out", plot=False)
    refuse_links([out / n for n in names])
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_fig2(args: argparse.Namespace) -> int:
    """Fig. 2 from several run folders in one figure (e.g. an AEVB sweep and a wake-sleep
    sweep); a model (method, N_z, seed) may come from one folder only."""
    from vaerepro.analysis.plots import plot_fig2  # matplotlib: only for the commands that plot

    runs = with_term(_models_of(args.run_dirs, ("method", "nz", "seed")), "elbo")
    if not runs:
        raise UsageError("no model of these folders logs an ELBO (MCEM has none): see `fig3`")
    out = _output_folder(args.out, ["fig2.png", "fig2.pdf"])
    plot_fig2(runs, out)
    print(f"wrote {out / 'fig2.png'} and {out / 'fig2.pdf'}", file=sys.stderr)
    return 0


def _refuse_mixed_configs(runs: list[tuple[dict, pd.DataFrame]]) -> None:
    """UsageError when the seeds of one curve (N_train, method, N_z) differ in their config:
    their band would mix models."""
    first = {}
    for meta, _ in runs:
        cfg = meta["config"]
        key = (cfg["train_size"], cfg["method"], cfg["nz"])
        other = first.setdefault(key, cfg)
        if diff := [d for d in config_diff(other, cfg) if not d.startswith("seed:")]:
            raise UsageError(
                f"the {model_label(cfg['method'], cfg['nz'])} models of N_train = "
                f"{cfg['train_size']} differ in more than their seed ({'; '.join(diff)}): "
                "one curve would mix them; give folders of one config"
            )


def cmd_fig3(args: argparse.Namespace) -> int:
    """Fig. 3 from run folders that logged the marginal likelihood, and its distance to the
    paper per N_train; a model (N_train, method, N_z, seed) may come from one folder only."""
    from vaerepro.analysis.plots import plot_fig3

    fields = ("train_size", "method", "nz", "seed")
    runs = with_term(_models_of(args.run_dirs, fields), "marginal")
    _refuse_mixed_configs(runs)
    if not runs:
        raise UsageError(
            "no model of these folders logged a marginal likelihood: train with --preset fig3 "
            "or --marginal-every"
        )
    names = ["fig3.png", "fig3.pdf", "comparison-marginal.csv", "comparison-marginal.md"]
    out = _output_folder(args.out, names)
    plot_fig3(runs, out)
    detail, summary = marginal_comparison(runs)
    write_comparison(out, (detail, summary), "marginal")
    print(to_markdown(marginal_summary(detail, summary)))
    print(f"wrote {', '.join(str(out / n) for n in names)}", file=sys.stderr)
    return 0


def _failure_line(p: pd.Series, mode: str) -> str:
    """One failing point: tier, point, ours, reference, diff and tolerance (nats)."""
    which = "rounding" if p.tier == 1 or mode == "rounding" else "seeds"
    return (
        f"FAIL tier {p.tier}: {model_label(p.method, p.nz)} {p.split} {p.term} at {p.samples} "
        "samples: "
        f"ours {p.ours:.6f}, reference {p.reference:.6f}, diff {p['diff']:+.3g} nats, "
        f"tolerance {p.tol:.3g} ({which})"
    )


def _print_points(points: pd.DataFrame) -> None:
    """Every tier-2 point, and tier 1 summarised per method and N_z (check --verbose)."""
    tier1 = points.tier == 1
    with pd.option_context("display.width", 160, "display.max_rows", 1000):
        print("tier 2 (ci run, ELBO; tolerance columns: rounding and seeds):")
        print(points[~tier1].to_string(index=False, float_format="%.4f"))
        print("tier 1 (float64 trajectory; ELBO, loglik, KL of both splits at 4 points):")
        t1 = points[tier1].assign(abs_diff=points["diff"].abs())
        summary = t1.groupby(["method", "nz"]).agg(
            points=("ok", "size"),
            failing=("ok", lambda ok: int((~ok).sum())),
            max_abs_diff=("abs_diff", "max"),
            tol=("tol", "min"),
        )
        print(summary.to_string(float_format="%.3g"))


def cmd_check(args: argparse.Namespace) -> int:
    with unchanging(Path(args.run_dir)):
        result = check_run(args.run_dir, args.reference, args.nz, args.tolerance)
    for problem in result.problems:
        print(f"FAIL: {problem}")
    for _, point in result.failures.iterrows():
        print(_failure_line(point, result.mode))
    if args.verbose:
        _print_points(result.points)
    print(result.source)
    counts = result.points.groupby("tier").size().to_dict()
    summary = f"tier 1: {counts.get(1, 0)} points, tier 2: {counts.get(2, 0)} points"
    if result.ok:
        print(f"OK: {summary} within the {result.mode} tolerances of {args.reference}")
        return 0
    print(
        f"FAILED: {len(result.failures)} points out of tolerance, {len(result.problems)} "
        f"problems ({summary}, {result.mode} tolerances of {args.reference})"
    )
    return 1


def cmd_make_reference(args: argparse.Namespace) -> int:
    tol = make_reference(args.seed_runs, args.out, args.reason, args.rounding_runs)
    with pd.option_context("display.width", 160, "display.max_rows", 1000):
        print(tol[tol.tier == 2].to_string(index=False, float_format="%.4g"))
    print(f"wrote the reference to {args.out}", file=sys.stderr)
    return 0


def cmd_trajectory(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output_folder(out, "OUT", plot=False)  # before minutes of training: writable?
    refuse_links([out / "trajectory.csv", out / "trajectory.json"])
    data = load_mnist(args.data_root, "cpu")  # raises DataError before any training
    if beyond := [n for n in args.nz if n >= MARGINAL_MAX_NZ]:
        print(
            f"MCEM's trajectory leaves out N_z={','.join(map(str, beyond))}: its marginal "
            f"likelihood estimator needs N_z < {MARGINAL_MAX_NZ}",
            file=sys.stderr,
        )
    values = run_trajectory(data, args.nz)
    write_trajectory(values, out)
    print(f"wrote {out / 'trajectory.csv'} ({len(values)} values)")
    return 0


def cmd_hwtable(args: argparse.Namespace) -> int:
    if args.add:
        saved = save_benchmark(args.add, args.folder)
        if saved is None:
            print(f"{args.add}: a --quick smoke test; nothing saved", file=sys.stderr)
            return 0
        print(f"saved {saved}", file=sys.stderr)
    print(to_markdown(hardware_table(args.folder)), end="")
    steps = step_table(Path(args.folder) / "steps")
    if len(steps):
        print(
            "\nBatched training steps, K models at once (bench/batched_step.py: in-process, the "
            "step only, median ms):\n"
        )
        print(to_markdown(steps), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    lines, failed = status_report(Path(args.run_dir))
    print("\n".join(lines))
    return 1 if failed else 0
