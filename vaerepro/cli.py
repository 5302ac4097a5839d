"""Command line: `vaerepro reproduce` trains one VAE per N_z and writes CSV logs."""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from .check import TOLERANCE_FLOOR, TOLERANCE_SIGMAS, check_run, make_reference
from .compare import write_comparison
from .config import BINARIZE, OPTIMIZERS, PAPER_NZ, PRESETS, SAMPLINGS, TrainConfig, preset
from .data import ENV_DATA_ROOT, DataError, load_mnist, resolve_data_root
from .hwtable import hardware_table
from .report import make_figures
from .store import (
    RunFiles,
    RunFolderError,
    WriteFailed,
    folder_lock,
    read_run_json,
    remove_own_files,
    remove_stale_temps,
    write_json,
)
from .tables import to_markdown
from .train import Interrupted, TrainingDiverged, run_status, train_together

MANIFEST = "run.json"  # the sweep: preset and one config per N_z, for --resume


class UsageError(ValueError):
    """An invalid option or combination of options."""


def count(text: str) -> int:
    """A positive whole number, written plainly or as 1e6."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    if value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def resolve_device(name: str) -> torch.device:
    """auto picks CUDA, then MPS, then CPU; an explicit device must exist. cuda:N selects
    GPU N (and makes it the current CUDA device)."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if match := re.fullmatch(r"cuda:(\d+)", name):
        n = torch.cuda.device_count() if cuda else 0
        if int(match[1]) >= n:
            raise UsageError(
                f"--device {name} requested, but torch sees {n} CUDA device(s)"
                + (f"; choose cuda:0 to cuda:{n - 1}" if n else "")
            )
        device = torch.device(name)
        torch.cuda.set_device(device)
        return device
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UsageError("--device cuda requested, but torch sees no CUDA device")
    if name == "mps" and not mps:
        raise UsageError("--device mps requested, but torch sees no Apple MPS device")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r}; choose auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def add_reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train one VAE per N_z and log train/test ELBO (Fig. 2)",
        description="Train one VAE per latent size on MNIST and write, per N_z, a CSV of train "
        "and test ELBO (nats per datapoint) every --eval-every samples, a JSON of config, "
        "versions, device and git commit, a checkpoint, and the final weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # preset, nz and seed default to None so that --resume can tell them apart from given ones
    p.add_argument("--preset", help=f"named config: {', '.join(PRESETS)} (default: paper)")
    p.add_argument(
        "--nz",
        type=int,
        nargs="+",
        help=f"latent sizes N_z (default: {' '.join(map(str, PAPER_NZ))})",
    )
    p.add_argument("--samples", type=count, help="training samples per model (preset: 1e7)")
    p.add_argument("--eval-every", type=count, help="samples between evaluations (preset: 1e5)")
    p.add_argument("--seed", type=int, help="seed of init, minibatches and noise (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--data-root",
        help=f"folder holding MNIST/raw (default: the one --resume's run used, else "
        f"${ENV_DATA_ROOT}, else ~/.cache/vaerepro/data; downloaded there when online)",
    )
    p.add_argument("--out", help="run folder (default: results/runs/<timestamp>)")
    p.add_argument(
        "--resume",
        metavar="OUT",
        help="continue the run in folder OUT from its checkpoints (its config is "
        "read from OUT; finished models are skipped)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument(
        "--fused",
        action="store_true",
        help="train all N_z at once, their big layers stacked into one batched step: the "
        "numbers of separate runs, fewer and larger kernels (for GPUs; on a CPU it is slower)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-plot",
        action="store_true",
        help="skip `vaerepro plot` (figures and REPORT.md) at the end",
    )
    g = p.add_argument_group(
        "config fields", "override the preset one field at a time (None: the preset's value)"
    )
    g.add_argument("--lr", type=float, help="Adagrad learning rate (preset: 0.02)")
    g.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="paper_adagrad: the authors' warm-started Adagrad; torch_adagrad",
    )
    g.add_argument("--train-size", type=int, help="use the first N training images")
    g.add_argument("--sampling", choices=SAMPLINGS, help="minibatches with replacement or epochs")
    g.add_argument(
        "--binarize",
        choices=BINARIZE,
        help="none: grey levels in [0, 1]; dynamic: resampled each draw; fixed: once",
    )
    g.add_argument(
        "--weight-decay", action=argparse.BooleanOptionalAction, help="N(0, I) prior on the weights"
    )
    g.add_argument("--batch-size", type=int, help="minibatch size M (preset: 100)")
    g.add_argument(
        "--eval-batch-size",
        type=int,
        help="batch size of the no-gradient evaluation passes (preset: 10000)",
    )


OVERRIDES = (
    "samples",
    "eval_every",
    "lr",
    "optimizer",
    "train_size",
    "sampling",
    "binarize",
    "weight_decay",
    "batch_size",
    "eval_batch_size",
)


def sweep_configs(args: argparse.Namespace) -> tuple[str, list[TrainConfig]]:
    """(preset name, one validated config per N_z) from the options, or from --resume's folder."""
    if args.resume:
        manifest = Path(args.resume) / MANIFEST
        if not manifest.exists():
            raise UsageError(f"--resume {args.resume}: no {MANIFEST} there, so no run to resume")
        saved_preset, configs, _ = read_run_json(manifest)
        return saved_preset, configs
    name = args.preset or "paper"
    base = preset(name)
    changes = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    nzs = args.nz or list(PAPER_NZ)
    if len(set(nzs)) != len(nzs):
        raise UsageError(f"--nz lists a latent size twice: {nzs}")
    seed = 0 if args.seed is None else args.seed
    configs = [base.replace(nz=nz, seed=seed, **changes) for nz in nzs]
    for cfg in configs:
        cfg.validate()
    return name, configs


def resume_conflicts(
    args: argparse.Namespace, preset_name: str | None, configs: list[TrainConfig]
) -> None:
    """UsageError listing every option that contradicts the sweep --resume continues."""
    if not args.resume:
        return
    if args.overwrite:
        raise UsageError(
            f"--resume {args.resume} continues a run and --overwrite replaces it; give one of them"
        )
    recorded = configs[0]
    given = []
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        given.append(f"--out {args.out} (the run is in {args.resume})")
    if args.preset is not None and args.preset != preset_name:
        given.append(f"--preset {args.preset} (recorded: {preset_name})")
    if args.nz is not None and sorted(args.nz) != sorted(c.nz for c in configs):
        given.append(f"--nz {' '.join(map(str, args.nz))} (recorded: {[c.nz for c in configs]})")
    if args.seed is not None and args.seed != recorded.seed:
        given.append(f"--seed {args.seed} (recorded: {recorded.seed})")
    for key in OVERRIDES:
        value = getattr(args, key)
        if value is not None and value != getattr(recorded, key):
            given.append(f"--{key.replace('_', '-')} {value} (recorded: {getattr(recorded, key)})")
    if given:
        raise UsageError(
            f"--resume {args.resume} continues the recorded sweep, but these options differ "
            f"from it: {'; '.join(given)}. Drop them to continue the run as recorded, or start "
            "a new run with another --out."
        )


def check_output_folder(out: Path, label: str, plot: bool) -> None:
    """UsageError, before any work, when `out` (or its figures/ folder, if plotting) is a
    file, or `out` cannot be written. Writability is probed with a temporary file of ours,
    removed at once (permission bits do not tell, e.g. for root or a read-only mount)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{label} {out} is a file, not a folder; choose another {label}")
    figures = out / "figures"
    if plot and figures.exists() and not figures.is_dir():
        raise UsageError(
            f"{figures} is a file, but the figures are written into a folder of that name; "
            "move the file away, or pass --no-plot"
        )
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{label} {out}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".vaerepro-probe-"):
            pass
    except OSError as err:
        raise UsageError(
            f"{label} {out}: cannot write into {existing} ({err.strerror}); choose a writable "
            "folder"
        ) from err


def validate_reproduce_args(
    args: argparse.Namespace, preset_name: str | None, configs: list[TrainConfig]
) -> Path:
    """Every check of the options that needs no data; returns the run folder."""
    resume_conflicts(args, preset_name, configs)
    out = Path(
        args.resume or args.out or Path("results/runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    check_output_folder(out, "--resume" if args.resume else "--out", plot=not args.no_plot)
    return out


def cmd_reproduce(args: argparse.Namespace) -> int:
    preset_name, configs = sweep_configs(args)
    out = validate_reproduce_args(args, preset_name, configs)
    device = resolve_device(args.device)
    plan = {
        c.nz: run_status(
            RunFiles.of(out, c.nz, c.seed), c, bool(args.resume), args.overwrite, device
        )
        for c in configs
    }
    manifest = out / MANIFEST
    if manifest.exists() and not (args.resume or args.overwrite):
        saved = [c.nz for c in read_run_json(manifest)[1]]
        if saved != [c.nz for c in configs]:
            raise RunFolderError(
                f"{out} holds a sweep over N_z={saved}; use another --out or --overwrite"
            )
    # --resume reads the data where the run started unless told otherwise
    data_root = args.data_root or (_manifest_data_root(out) if args.resume else None)
    data = load_mnist(data_root, device)  # raises DataError before any training
    with folder_lock(out):
        remove_stale_temps(out)
        if args.overwrite:  # the whole old sweep goes: no model of it may stay behind
            remove_own_files(out)
        write_json(
            {
                "preset": preset_name,
                "configs": [c.to_dict() for c in configs],
                "data_root": str(resolve_data_root(data_root)),
            },
            manifest,
        )
        print(f"run folder: {out}  device: {device}  preset: {preset_name}", file=sys.stderr)
        for cfg in configs:
            if plan[cfg.nz] == "skip":
                print(f"N_z={cfg.nz}: finished already, skipped", file=sys.stderr)
        pending = [c for c in configs if plan[c.nz] != "skip"]
        # --fused: all pending N_z in one stacked step; otherwise one model after the other
        groups = [pending] if args.fused and len(pending) > 1 else [[c] for c in pending]
        for group in groups:
            if len(group) > 1:
                nzs = ",".join(str(c.nz) for c in group)
                print(f"N_z={nzs} in one fused step", file=sys.stderr)
            try:
                dfs = train_together(
                    group,
                    data,
                    out,
                    device,
                    resume=any(plan[c.nz] == "resume" for c in group),
                    progress=not args.no_progress,
                    preset=preset_name,
                )
            except Interrupted as err:
                print(f"{err}\nResume with: vaerepro reproduce --resume {out}", file=sys.stderr)
                return 128 + err.signum
            except WriteFailed as err:
                raise WriteFailed(
                    f"{err}. The last good CSV and checkpoint in {out} are intact: free space "
                    f"or fix the permissions, then continue with: vaerepro reproduce --resume {out}"
                ) from err
            for cfg, df in zip(group, dfs, strict=True):
                last = df.iloc[-1]
                print(
                    f"N_z={cfg.nz}: samples={int(last.samples)} train ELBO={last.train_elbo:.2f} "
                    f"test ELBO={last.test_elbo:.2f} nats  ({last.wall_s:.0f} s)",
                    file=sys.stderr,
                )
    if not args.no_plot:
        report = make_figures(out, data_root or _manifest_data_root(out))
        print(f"wrote {report} and {out / 'figures'}/", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    detail, summary = write_comparison(args.run_dir)
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        print(detail.to_string(index=False, float_format="%.2f"))
        print("\nsummary (|ours - paper|, nats per datapoint):")
        print(summary.to_string(index=False, float_format="%.2f"))
    print(f"\nwrote {Path(args.run_dir) / 'comparison.csv'} and comparison.md", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    check_output_folder(Path(args.run_dir), "RUN_DIR", plot=True)
    report = make_figures(args.run_dir, args.data_root or _manifest_data_root(args.run_dir))
    print(f"wrote {report} and {report.parent / 'figures'}/", file=sys.stderr)
    return 0


def _manifest_data_root(run_dir: str) -> str | None:
    manifest = Path(run_dir) / MANIFEST
    return read_run_json(manifest)[2] if manifest.exists() else None


def cmd_check(args: argparse.Namespace) -> int:
    result = check_run(args.run_dir, args.reference, args.nz)
    for problem in result.problems:
        print(f"FAIL: {problem}")
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        if args.verbose:
            print(result.points.to_string(index=False, float_format="%.3f"))
        if len(result.failures):
            print(
                f"{len(result.failures)} of {len(result.points)} points out of tolerance "
                "(nats per datapoint):"
            )
            print(result.failures.to_string(index=False, float_format="%.3f"))
    if result.ok:
        print(f"OK: {len(result.points)} points within tolerance of {args.reference}")
        return 0
    return 1


def cmd_make_reference(args: argparse.Namespace) -> int:
    tol = make_reference(args.seed_runs, args.out, args.reason)
    print(tol.to_string(index=False, float_format="%.3f"))
    print(f"wrote the reference to {args.out}", file=sys.stderr)
    return 0


def cmd_hwtable(args: argparse.Namespace) -> int:
    print(to_markdown(hardware_table(args.folder)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaerepro",
        description="Reproduce Kingma & Welling (2013), Auto-Encoding Variational Bayes, Fig. 2.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_reproduce_parser(sub)
    p = sub.add_parser(
        "compare",
        help="our ELBO against the paper's Fig. 2 at each logged point",
        description="Print and write (comparison.csv, comparison.md) our train and "
        "test ELBO next to the paper's, interpolated in log10(samples).",
    )
    p.add_argument("run_dir", help="a run folder written by `vaerepro reproduce`")

    p = sub.add_parser(
        "plot",
        help="figures (Fig. 2 with the paper, diagnostics) and REPORT.md",
        description="Write RUN_DIR/figures/ (fig2.png/.pdf, components.png and per N_z: recon, "
        "samples, interpolation, latent, kl_per_dim) and RUN_DIR/REPORT.md from a finished run.",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--data-root",
        help="MNIST root for the per-model figures (default: the run's, from its run.json)",
    )

    p = sub.add_parser(
        "hwtable",
        help="Markdown table of the saved benchmarks of every machine",
        description="Render results/bench/*.json (from `nox -s bench`) into one table: train "
        "and eval samples/s, speedup over the pyautoencoder baseline, fraction of the matmul "
        "limit.",
    )
    p.add_argument("folder", nargs="?", default="results/bench")

    p = sub.add_parser(
        "check",
        help="regression gate: a run against reference ELBO numbers",
        description="Compare a run's ELBO at every (N_z, samples) point with a "
        "reference folder's, within its measured tolerances. Exits 1 and prints "
        "every point out of tolerance, or when files, rows or configs differ.",
    )
    p.add_argument("run_dir")
    p.add_argument("--reference", required=True, help="e.g. results/reference/ci")
    p.add_argument("--nz", type=int, nargs="+", help="check only these N_z of the reference")
    p.add_argument("-v", "--verbose", action="store_true", help="print every point")

    p = sub.add_parser(
        "make-reference",
        help="write a reference folder from seed runs",
        description="From runs of one config under several seeds, write the "
        "reference numbers (seed 0), the spread per point and tolerances "
        f"max({TOLERANCE_SIGMAS:g} std, {TOLERANCE_FLOOR} nats).",
    )
    p.add_argument("seed_runs", nargs="+", help="run folders, one config, different seeds")
    p.add_argument("--out", required=True, help="the reference folder to (re)write")
    p.add_argument("--reason", required=True, help="why the reference changes (recorded)")
    return parser


COMMANDS = {
    "reproduce": cmd_reproduce,
    "compare": cmd_compare,
    "plot": cmd_plot,
    "check": cmd_check,
    "hwtable": cmd_hwtable,
    "make-reference": cmd_make_reference,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, DataError, RunFolderError, TrainingDiverged) as err:
        print(f"vaerepro {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # one not turned into a clearer error where it happened
        print(
            f"vaerepro {args.command}: error: {err.strerror or err}: {err.filename or ''} "
            "(check that the path exists and is writable, and that the disk has space)",
            file=sys.stderr,
        )
        return 2
