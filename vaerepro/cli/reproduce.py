"""`vaerepro reproduce`: the options -> a sweep -> a plan -> a runner -> a summary and plots."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from vaerepro.analysis.compare import (
    compare_runs,
    marginal_comparison,
    marginal_summary,
    with_term,
)
from vaerepro.analysis.tables import to_markdown
from vaerepro.cli.parser import OVERRIDES
from vaerepro.core.config import Sweep, preset, preset_nzs
from vaerepro.core.data import load_mnist, resolve_data_root
from vaerepro.core.device import resolve_device
from vaerepro.core.errors import UsageError
from vaerepro.core.memory import check_memory
from vaerepro.core.numbers import format_count, format_duration
from vaerepro.core.step import stacking_problem
from vaerepro.runs.estimate import measure
from vaerepro.runs.folder import check_output_folder, folder_conflicts, resume_conflicts
from vaerepro.runs.layout import REPLACED, RUN_JSON
from vaerepro.runs.progress import SweepProgress
from vaerepro.runs.provenance import vaerepro_command
from vaerepro.runs.records import load_run, read_run_json, write_run_json
from vaerepro.runs.runners import make_runner
from vaerepro.runs.slurm import SlurmOptions
from vaerepro.runs.sweep import SweepPlan, plan_sweep
from vaerepro.runs.writes import (
    folder_lock,
    move_aside,
    refuse_links_in_run,
    remove_stale_temps,
    settle_replaced,
)


def requested_sweep(args: argparse.Namespace) -> Sweep:
    """The sweep the options ask for, or the one --resume's folder records."""
    if args.resume:
        record = Path(args.resume) / RUN_JSON
        if not record.exists():
            raise UsageError(f"--resume {args.resume}: no {RUN_JSON} there, so no run to resume")
        return read_run_json(record)[0]
    name = args.preset or "paper"
    changes = {k: _override(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    nzs = args.nz or list(preset_nzs(name))
    return Sweep.of(name, preset(name).replace(**changes), nzs, seeds, args.method)


def given_options(args: argparse.Namespace) -> dict[str, object]:
    """The sweep-defining options the user gave (None: not given), by option name."""
    seeds = args.seeds or ([args.seed] if args.seed is not None else None)
    given = {"--out": args.out, "--preset": args.preset, "--nz": args.nz}
    given |= {"--method": args.method, "--seed(s)": seeds}
    return given | {"--" + k.replace("_", "-"): _override(args, k) for k in OVERRIDES}


def _override(args: argparse.Namespace, field: str):
    """A config option's value as its field holds it (a list option: a tuple)."""
    value = getattr(args, field)
    return tuple(value) if isinstance(value, list) else value


def run_folder(args: argparse.Namespace, sweep: Sweep) -> Path:
    """Every check of the options that needs no data; returns the run folder."""
    if args.stacked:  # each batched group: the N_z and seeds of one method
        for method in sweep.methods:
            group = [c for c in sweep.configs if c.method == method]
            if problem := stacking_problem(group, args.autograd):
                raise UsageError(f"{problem}; train without --stacked")
    if args.resume:
        if args.overwrite:
            raise UsageError(
                f"--resume {args.resume} continues a run and --overwrite replaces it; "
                "give one of them"
            )
        resume_conflicts(Path(args.resume), sweep, given_options(args))
    out = Path(
        args.resume or args.out or Path("results/runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    check_output_folder(out, "--resume" if args.resume else "--out", plot=not args.no_plot)
    return out


def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    if named := args.resume or args.out:  # before run.json is read: it may be aside
        settle(Path(named))
    sweep = requested_sweep(args)
    out = run_folder(args, sweep)
    folder_conflicts(out, sweep, bool(args.resume), args.overwrite)
    device = resolve_device(args.device)
    cuda_options(args, device)
    # --resume reads the data where the run started unless told otherwise
    data_root = args.data_root or (recorded_data_root(out) if args.resume else None)
    return plan_sweep(
        sweep,
        out,
        device,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        stacked=args.stacked,
        jobs=args.jobs,
        threads=args.threads,
        data_root=data_root,
        checkpoint_every=args.checkpoint_every,
    )


def cuda_options(args: argparse.Namespace, device: torch.device) -> None:
    """--cuda-graphs and --tf32 need a CUDA device (UsageError); --tf32 takes effect here."""
    for option, given in (("--cuda-graphs", args.cuda_graphs), ("--tf32", args.tf32)):
        if given and device.type != "cuda":
            raise UsageError(f"{option} needs a CUDA device, but the run is on {device.type}")
    if args.cuda_graphs and args.executor == "slurm":
        raise UsageError("--cuda-graphs is for the local executor")
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)


def settle(out: Path) -> None:
    """Settle what an interrupted --overwrite left in `out` (under its lock), saying what."""
    if (out / REPLACED).is_dir():
        refuse_links_in_run(out)
        with folder_lock(out):
            if said := settle_replaced(out):
                print(said, file=sys.stderr)


def recorded_data_root(run_dir: str | Path) -> str | None:
    record = Path(run_dir) / RUN_JSON
    return read_run_json(record)[1] if record.exists() else None


def executor_options(args: argparse.Namespace) -> SlurmOptions | None:
    """--executor slurm's options (each model a job of --slurm-cpus-per-task threads), or
    None for the local executor; UsageError for options of the other executor."""
    if args.executor != "slurm":
        given = [o for o in ("wait", "slurm_partition", "slurm_gpus_per_task", "slurm_extra")
                 if getattr(args, o)]  # fmt: skip
        if given:
            names = ", ".join("--" + o.replace("_", "-") for o in given)
            raise UsageError(f"{names}: only with --executor slurm")
        return None
    if args.jobs is not None or args.stacked or args.checkpoint_every is not None:
        raise UsageError("--jobs, --stacked and --checkpoint-every are for the local executor; "
                         "SLURM runs one job per model (--slurm-array-parallelism: how many at "
                         "once) and checkpoints at every evaluation")  # fmt: skip
    args.jobs, args.threads = 1, args.threads or args.slurm_cpus_per_task
    return SlurmOptions.from_args(args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    slurm = executor_options(args)
    plan = plan_from_args(args)
    if plan.pending:  # sizes this machine cannot allocate: refused before any work
        at_once = plan.jobs * max(len(g) for g in plan.groups)
        check_memory(plan.pending, at_once, plan.jobs, plan.device)
    torch.set_num_threads(plan.threads)  # for the estimate, and models trained in this process
    data = load_mnist(plan.data_root, plan.device)  # raises DataError before any training
    estimate = measure(plan.pending, data, plan.device) if plan.pending and args.estimate else None
    progress = SweepProgress(
        plan.pending,
        plan.done,
        plan.expected(estimate),
        enabled=not args.no_progress and (slurm is None or slurm.wait),  # a bar while training
    )
    with folder_lock(plan.out):  # held until the figures are drawn: `plot` waits for them
        with progress:
            start_folder(plan, args.overwrite)
            for line in plan.skipped_lines() + ([plan.describe(estimate)] if plan.pending else []):
                progress.say(line)
            runner = make_runner(plan, data, args.autograd, slurm, args.cuda_graphs)
            status = runner.run(plan, progress)
        executor = "" if slurm is None else " --executor slurm"
        if status:
            resume = f"{vaerepro_command('reproduce')} --resume {plan.out}{executor}"
            print(f"Resume with: {resume}", file=sys.stderr)
            return status
        if slurm is not None and not slurm.wait and plan.pending:
            print(
                f"submitted; watch with: {vaerepro_command('status')} {plan.out}", file=sys.stderr
            )
            return 0
        comparison = print_summaries(plan.out, progress.seconds())
        if not args.no_plot:
            from vaerepro.analysis.report import make_figures  # matplotlib's imports: 1.4 s

            data_root = plan.data_root or recorded_data_root(plan.out)
            report = make_figures(plan.out, data_root, comparison=comparison)
            print(f"wrote {report} and {plan.out / 'figures'}/", file=sys.stderr)
    return 0


def start_folder(plan: SweepPlan, overwrite: bool) -> None:
    """Clean the run folder of what a killed writer left, replace the old sweep for
    --overwrite, record the sweep, and say what runs where."""
    refuse_links_in_run(plan.out)  # checked before any work, and again under the lock
    remove_stale_temps(plan.out)
    if overwrite:  # aside until the new sweep's first checkpoint; then no model of it stays
        move_aside(plan.out)
    sweep = plan.sweep
    write_run_json(sweep, str(resolve_data_root(plan.data_root)), plan.out)
    print(
        f"run folder: {plan.out}  device: {plan.device}  preset: {sweep.preset}  "
        f"N_z: {' '.join(map(str, sweep.nzs))}  seeds: {' '.join(map(str, sweep.seeds))}  "
        f"method: {' '.join(sweep.methods)}",
        file=sys.stderr,
    )


def final_summary(detail: pd.DataFrame) -> pd.DataFrame:
    """Per method and N_z at the last logged point of `detail` (compare_run's): seeds, our
    mean ELBO and its sd over seeds per split, the paper's value there and mean - paper
    (nats per datapoint; NaN where the paper's printed curve has none, or sd with one seed)."""
    last = detail.groupby(["method", "nz", "split"]).tail(1)
    values = ["samples", "seeds", "mean", "sd", "paper", "diff"]
    wide = last.pivot(index=["method", "nz"], columns="split", values=values)
    table = {
        "method": wide.index.get_level_values("method"),
        "N_z": wide.index.get_level_values("nz"),
        "seeds": wide["seeds"]["train"].astype(int).to_numpy(),
        "samples": [format_count(s) for s in wide["samples"]["train"]],
    }
    for split in ("train", "test"):
        table[f"{split} ELBO"] = wide["mean"][split].to_numpy()
        table[f"{split} sd"] = wide["sd"][split].to_numpy()
        table[f"paper {split}"] = wide["paper"][split].to_numpy()
        table[f"{split} diff"] = wide["diff"][split].to_numpy()
    return pd.DataFrame(table)


def print_summaries(out: Path, seconds: float) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The ELBO summary (none for an MCEM-only sweep) and, where the models logged it, the
    marginal likelihood's; returns the ELBO comparison (compare_runs') for the figures."""
    runs = load_run(out)
    comparison = compare_runs(runs) if with_term(runs, "elbo") else None
    if comparison is not None:
        print_summary(comparison[0], out, seconds)
    if marginal := with_term(runs, "marginal"):
        table = to_markdown(marginal_summary(*marginal_comparison(marginal)))
        print(f"marginal likelihood (Fig. 3; nats per datapoint):\n{table}", file=sys.stderr)
    return comparison


def print_summary(detail: pd.DataFrame, out: Path, seconds: float) -> None:
    with pd.option_context("display.width", 160):
        table = final_summary(detail).to_string(index=False, float_format="%.2f", na_rep="–")
    print(table, file=sys.stderr)
    print(
        "ELBO in nats per datapoint (mean over seeds, sd: their standard deviation); diff = "
        "ours - paper; –: the paper's printed curve has no value there (comparison.md says "
        f"why). Trained in {format_duration(seconds)}; run folder {out}",
        file=sys.stderr,
    )
