"""Command line: `vaerepro reproduce` trains one VAE per N_z and writes CSV logs."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from vaerepro.analysis.check import TOLERANCE_MODES, check_run
from vaerepro.analysis.compare import compare_run, fidelity_table, write_comparison
from vaerepro.analysis.hwtable import hardware_table, save_benchmark
from vaerepro.analysis.reference_writer import make_reference
from vaerepro.analysis.tables import to_markdown
from vaerepro.core.config import (
    BINARIZE,
    DREAMS,
    LIKELIHOODS,
    METHODS,
    OPTIMIZERS,
    PAPER_NZ,
    PRESETS,
    SAMPLINGS,
    Sweep,
    TrainConfig,
    model_label,
    preset,
)
from vaerepro.core.data import ENV_DATA_ROOT, load_mnist, resolve_data_root
from vaerepro.core.errors import RunFolderError, UsageError, VaereproError, WriteFailed
from vaerepro.core.gradients import covers
from vaerepro.core.model import VAE
from vaerepro.core.numbers import format_count, format_duration, parse_count
from vaerepro.runs.estimate import Estimate, measure, time_left
from vaerepro.runs.jobs import train_in_parallel
from vaerepro.runs.layout import OWN_MODEL_FILE, RUN_JSON, RunFiles
from vaerepro.runs.records import load_run, logged_samples, read_run_json, write_run_json
from vaerepro.runs.train import Interrupted, run_status, train_together
from vaerepro.runs.trajectory import run_trajectory, write_trajectory
from vaerepro.runs.writes import folder_lock, remove_own_files, remove_stale_temps


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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where an option has a value of its own: not for None (the
    preset's value, said in the option's help) nor for on/off flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.nargs == 0 or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def add_reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train one VAE per N_z and log train/test ELBO (Fig. 2)",
        description="Train one VAE per latent size on MNIST and write, per N_z, a CSV of train "
        "and test ELBO (nats per datapoint) every --eval-every samples, a JSON of config, "
        "versions, device and git commit, a checkpoint, and the final weights.",
        formatter_class=HelpFormatter,
    )
    # preset, nz and seed default to None so that --resume can tell them apart from given ones
    p.add_argument("--preset", help=f"named config: {', '.join(PRESETS)} (default: paper)")
    p.add_argument(
        "--nz",
        type=int,
        nargs="+",
        help=f"latent sizes N_z (default: {' '.join(map(str, PAPER_NZ))})",
    )
    p.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        help="aevb (the paper's algorithm), wakesleep (its baseline in Fig. 2), or both: "
        "every N_z and seed under each (default: aevb)",
    )
    seeds = p.add_mutually_exclusive_group()
    seed_help = next(f for f in dataclasses.fields(TrainConfig) if f.name == "seed").metadata
    seeds.add_argument("--seed", type=int, help=f"{seed_help['help']} (default: 0)")
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train every N_z under each of these seeds, into one run folder (e.g. --seeds 0 1 "
        "2 3 4); figures and the comparison then show the mean and the band over seeds",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--data-root",
        help=f"folder holding MNIST/raw; only read (default: the one --resume's run used, "
        f"else ${ENV_DATA_ROOT}, else ~/.cache/vaerepro/data or a shared/data folder beside "
        "this source checkout, whichever holds the files, else downloaded into the cache)",
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
        "--stacked",
        action="store_true",
        help="train all N_z of a seed at once, their big layers stacked into one batched step: "
        "the numbers of separate runs, fewer and larger kernels (meant for GPUs; on a CPU it is no "
        "faster: the stacked product measured 8%% slower per model on 2 cores)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="models trained at once, each in a process of its own (default: on the CPU as "
        "many as cores, elsewhere 1). On a 2-core CPU 2 jobs of 1 thread train 1.2-1.7x more "
        "samples/s than 1 job of 2 threads",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per model (default: the cores divided by --jobs). A model's "
        "numbers depend on it (float rounding; recorded in its JSON), not on --jobs",
    )
    p.add_argument(
        "--autograd",
        action="store_true",
        help="compute the gradient with autograd instead of the hand-written backward "
        "(gradients.py); the same numbers up to float rounding, slower. Without it autograd "
        "is used only where the hand-written backward does not match the model's forward "
        "(an edited model.py, the Gaussian decoder); the log says which",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-estimate",
        dest="estimate",
        action="store_false",
        help="skip the short timed warm-up (about 1-2 s) behind the time estimate",
    )
    p.add_argument(
        "--no-plot",
        action="store_true",
        help="skip `vaerepro plot` (figures and REPORT.md) at the end",
    )
    add_config_options(p)


# Config fields with options of their own: --nz and --method take lists, --seed/--seeds choose
# the seeds.
SWEPT = ("nz", "seed", "method")
OVERRIDES = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in SWEPT)
CHOICES = {
    "dreams": DREAMS,
    "likelihood": LIKELIHOODS,
    "optimizer": OPTIMIZERS,
    "sampling": SAMPLINGS,
    "binarize": BINARIZE,
}


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (but N_z and seed), made from the field: its type,
    its help text and the paper preset's value. Unset options keep the preset's value."""
    g = p.add_argument_group(
        "config fields (TrainConfig)",
        "override the preset one field at a time (shown: the paper preset's value); every "
        "field is recorded in the run's JSON",
    )
    paper = preset("paper")
    for f in dataclasses.fields(TrainConfig):
        if f.name in SWEPT:
            continue
        value = getattr(paper, f.name)
        shown = format_count(value) if f.name in ("samples", "eval_every") else value
        kw = {"help": f"{f.metadata['help']} (preset: {shown})"}
        if f.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        else:
            kw["type"] = parse_count if f.type == "int" else float
        if value is None:
            kw["help"] = f.metadata["help"]
        g.add_argument("--" + f.name.replace("_", "-"), **kw)


def requested_sweep(args: argparse.Namespace) -> Sweep:
    """The sweep the options ask for, or the one --resume's folder records."""
    if args.resume:
        record = Path(args.resume) / RUN_JSON
        if not record.exists():
            raise UsageError(f"--resume {args.resume}: no {RUN_JSON} there, so no run to resume")
        return read_run_json(record)[0]
    name = args.preset or "paper"
    changes = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    nzs = args.nz or list(PAPER_NZ)
    return Sweep.of(name, preset(name).replace(**changes), nzs, seeds, args.method)


def resume_conflicts(args: argparse.Namespace, sweep: Sweep) -> None:
    """UsageError listing every option that contradicts the sweep --resume continues."""
    if not args.resume:
        return
    if args.overwrite:
        raise UsageError(
            f"--resume {args.resume} continues a run and --overwrite replaces it; give one of them"
        )
    recorded = sweep.base
    given = []
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        given.append(f"--out {args.out} (the run is in {args.resume})")
    if args.preset is not None and args.preset != sweep.preset:
        given.append(f"--preset {args.preset} (recorded: {sweep.preset})")
    if args.nz is not None and sorted(args.nz) != sorted(sweep.nzs):
        given.append(f"--nz {' '.join(map(str, args.nz))} (recorded: {list(sweep.nzs)})")
    if args.method is not None and sorted(args.method) != sorted(sweep.methods):
        given.append(f"--method {' '.join(args.method)} (recorded: {list(sweep.methods)})")
    seeds = args.seeds or ([args.seed] if args.seed is not None else None)
    if seeds is not None and sorted(seeds) != sorted(sweep.seeds):
        given.append(f"--seed(s) {' '.join(map(str, seeds))} (recorded: {list(sweep.seeds)})")
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


def folder_conflicts(out: Path, sweep: Sweep, resume: bool, overwrite: bool) -> None:
    """RunFolderError, before any work, when a new sweep would land in a folder that holds
    another one: a run.json of another preset, config, N_z or seed set (the differences
    listed), or model files that no run.json accounts for. --overwrite and --resume pass."""
    if resume or overwrite or not out.is_dir():
        return
    record = out / RUN_JSON
    if record.exists():
        recorded = read_run_json(record)[0]
        diff = recorded.differences(sweep)
        if diff:
            raise RunFolderError(
                f"{out} holds another sweep (recorded != requested):\n  "
                + "\n  ".join(diff)
                + "\nA run folder holds one sweep: use another --out, --overwrite to replace "
                f"the whole sweep, or --resume {out} to continue the recorded one."
            )
        ours = {RunFiles.of_config(out, c).stem for c in recorded.configs}
    else:
        ours = set()
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if OWN_MODEL_FILE.match(p.name) and p.name.rsplit(".", 1)[0] not in ours
    )
    if foreign:
        raise RunFolderError(
            f"{out} holds model files that its {RUN_JSON} does not list: {', '.join(foreign)}. "
            "A run folder holds one sweep: use another --out, or --overwrite to replace them."
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


def validate_reproduce_args(args: argparse.Namespace, sweep: Sweep) -> Path:
    """Every check of the options that needs no data; returns the run folder."""
    if args.stacked and "wakesleep" in sweep.methods:
        raise UsageError("--stacked trains AEVB models only; wake-sleep trains one at a time")
    if args.stacked and (args.autograd or (reason := covers(VAE.from_config(sweep.base)))):
        raise UsageError(
            "--stacked runs the hand-written gradient for several models at once, but "
            + ("--autograd was given" if args.autograd else reason)
            + "; train without --stacked"
        )
    resume_conflicts(args, sweep)
    out = Path(
        args.resume or args.out or Path("results/runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    check_output_folder(out, "--resume" if args.resume else "--out", plot=not args.no_plot)
    return out


def cmd_reproduce(args: argparse.Namespace) -> int:
    sweep = requested_sweep(args)
    out = validate_reproduce_args(args, sweep)
    folder_conflicts(out, sweep, bool(args.resume), args.overwrite)
    device = resolve_device(args.device)
    configs = sweep.configs
    files = {c: RunFiles.of_config(out, c) for c in configs}
    plan = {c: run_status(files[c], c, bool(args.resume), args.overwrite, device) for c in configs}
    pending = [c for c in configs if plan[c] != "skip"]
    jobs, threads = parallelism(args, device, len(pending))
    torch.set_num_threads(threads)  # for the estimate, and the models trained in this process
    # --resume reads the data where the run started unless told otherwise
    data_root = args.data_root or (_recorded_data_root(out) if args.resume else None)
    data = load_mnist(data_root, device)  # raises DataError before any training
    done = {c: logged_samples(files[c].csv) if plan[c] == "resume" else 0 for c in pending}
    estimate = measure(pending, data, device) if pending and args.estimate else None
    with folder_lock(out):
        remove_stale_temps(out)
        if args.overwrite:  # the whole old sweep goes: no model of it may stay behind
            remove_own_files(out)
        write_run_json(sweep, str(resolve_data_root(data_root)), out)
        print(
            f"run folder: {out}  device: {device}  preset: {sweep.preset}  "
            f"N_z: {' '.join(map(str, sweep.nzs))}  seeds: {' '.join(map(str, sweep.seeds))}  "
            f"method: {' '.join(sweep.methods)}",
            file=sys.stderr,
        )
        for cfg in configs:
            if plan[cfg] == "skip":
                print(
                    f"{model_label(cfg.method, cfg.nz)} seed {cfg.seed}: finished already, skipped",
                    file=sys.stderr,
                )
        # --stacked: per seed, all its pending N_z in one stacked step; else one model at a time
        groups = [[c] for c in pending]
        if args.stacked:
            keys = [(m, s) for m in sweep.methods for s in sweep.seeds]
            groups = [[c for c in pending if (c.method, c.seed) == k] for k in keys]
            groups = [g for g in groups if g]
        seconds = {c: estimate.seconds(c, done[c]) for c in pending} if estimate else None
        expected = [max(seconds[c] for c in g) if estimate else 0 for g in groups]
        if pending:
            line = _plan_line(pending, done, device, estimate, sum(expected) / jobs)
            print(f"{line}; {jobs} job(s) of {threads} thread(s)", file=sys.stderr)
        start = time.perf_counter()
        if jobs > 1:
            status = train_in_parallel(
                pending,
                {c: plan[c] == "resume" for c in pending},
                out,
                str(device),
                sweep.preset,
                data_root,
                jobs,
                threads,
                args.autograd,
                say=lambda line: print(line, file=sys.stderr),
                expected=seconds,
                done=done,
                progress=not args.no_progress,
            )
            if status:
                print(f"Resume with: vaerepro reproduce --resume {out}", file=sys.stderr)
                return status
        for i, group in enumerate(groups if jobs == 1 else []):
            names = ", ".join(f"{model_label(c.method, c.nz)} seed {c.seed}" for c in group)
            label = f"model {i + 1}/{len(groups)}"
            if len(group) > 1:
                label = f"{len(group)} models in one stacked step"
                print(f"{names}: in one stacked step", file=sys.stderr)
            if i:
                elapsed = time.perf_counter() - start
                trained = {**done, **{c: c.samples for g in groups[:i] for c in g}}
                left = time_left(seconds, done, trained, elapsed)
                print(
                    f"{label} ({names}): {format_duration(elapsed)} elapsed{left}", file=sys.stderr
                )
            try:
                train_together(
                    group,
                    data,
                    out,
                    device,
                    resume=any(plan[c] == "resume" for c in group),
                    progress=not args.no_progress,
                    preset=sweep.preset,
                    label=f"{label} ",
                    autograd=args.autograd,
                )
            except Interrupted as err:
                print(f"{err}\nResume with: vaerepro reproduce --resume {out}", file=sys.stderr)
                return 128 + err.signum
            except WriteFailed as err:
                raise WriteFailed(
                    f"{err}. The last good CSV and checkpoint in {out} are intact: free space "
                    f"or fix the permissions, then continue with: vaerepro reproduce --resume {out}"
                ) from err
        total = time.perf_counter() - start
    summary = final_summary(out)
    with pd.option_context("display.width", 160):
        print(summary.to_string(index=False, float_format="%.2f", na_rep="–"), file=sys.stderr)
    print(
        "ELBO in nats per datapoint (mean over seeds, sd: their standard deviation); diff = "
        "ours - paper; –: the paper's printed curve has no value there (comparison.md says "
        f"why). Trained in {format_duration(total)}; run folder {out}",
        file=sys.stderr,
    )
    if not args.no_plot:
        from vaerepro.analysis.report import (
            make_figures,  # matplotlib's imports: only when plotting (1.4 s)
        )

        report = make_figures(out, data_root or _recorded_data_root(out))
        print(f"wrote {report} and {out / 'figures'}/", file=sys.stderr)
    return 0


def parallelism(args: argparse.Namespace, device: torch.device, models: int) -> tuple[int, int]:
    """(jobs, threads per model). On the CPU by default as many jobs as cores (at most one per
    model), each with cores // jobs threads; elsewhere one job. UsageError for --jobs > 1
    where it cannot apply."""
    cores = torch.get_num_threads()  # the cores torch would use ($OMP_NUM_THREADS if set)
    if args.jobs is not None and args.jobs > 1 and (device.type != "cpu" or args.stacked):
        raise UsageError(
            "--jobs > 1 trains models in parallel CPU processes; it does not combine with "
            f"--device {device.type}" + (" or --stacked" if args.stacked else "")
        )
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")
    serial = device.type != "cpu" or args.stacked
    jobs = args.jobs or (1 if serial else max(1, min(cores, models)))
    return jobs, args.threads or max(1, cores // jobs)


def _plan_line(
    pending: list[TrainConfig],
    done: dict[TrainConfig, int],
    device: torch.device,
    estimate: Estimate | None,
    seconds: float,
) -> str:
    nzs = ", ".join(map(str, dict.fromkeys(c.nz for c in pending)))
    seeds = ", ".join(map(str, dict.fromkeys(c.seed for c in pending)))
    samples = {c.samples - done[c] for c in pending}
    each = format_count(samples.pop()) if len(samples) == 1 else "the remaining"
    line = (
        f"plan: {len(pending)} model(s) (N_z {nzs}; seed {seeds}), {each} samples each, on {device}"
    )
    if estimate is None:
        return line + " (no time estimate: --no-estimate)"
    rates = ", ".join(f"{nz}: {r / 1000:.1f}k" for nz, r in estimate.train_rate.items())
    return (
        f"{line}; estimated {format_duration(seconds)} (measured just now: training samples/s by "
        f"N_z {rates}; evaluation {estimate.eval_rate / 1000:.0f}k datapoints/s)"
    )


def final_summary(out: Path) -> pd.DataFrame:
    """Per method and N_z at the last logged point: seeds, our mean ELBO and its sd over seeds
    per split, the paper's value there and mean - paper (nats per datapoint; – where the
    paper's printed curve has none, or sd with one seed)."""
    detail, _ = compare_run(out)
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


def cmd_compare(args: argparse.Namespace) -> int:
    detail, summary = write_comparison(args.run_dir)
    if args.at:
        print(to_markdown(fidelity_table(detail, summary, args.at)), end="")
        return 0
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        print(detail.to_string(index=False, float_format="%.2f"))
        print("\nsummary (|ours - paper|, nats per datapoint):")
        print(summary.to_string(index=False, float_format="%.2f"))
    print(f"\nwrote {Path(args.run_dir) / 'comparison.csv'} and comparison.md", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    check_output_folder(Path(args.run_dir), "RUN_DIR", plot=True)
    from vaerepro.analysis.report import make_figures

    report = make_figures(
        args.run_dir, args.data_root or _recorded_data_root(args.run_dir), args.seed
    )
    print(f"wrote {report} and {report.parent / 'figures'}/", file=sys.stderr)
    return 0


def cmd_fig2(args: argparse.Namespace) -> int:
    """Fig. 2 from several run folders in one figure (e.g. an AEVB sweep and a wake-sleep
    sweep); a model (method, N_z, seed) may come from one folder only."""
    from vaerepro.analysis.plots import plot_fig2  # matplotlib: only for the commands that plot

    runs, origin = [], {}
    for folder in args.run_dirs:
        for meta, df in load_run(folder):
            cfg = meta["config"]
            key = (cfg["method"], cfg["nz"], cfg["seed"])
            if key in origin:
                raise UsageError(
                    f"{model_label(cfg['method'], cfg['nz'])} seed {cfg['seed']} is in both "
                    f"{origin[key]} and {folder}; give folders of different models"
                )
            origin[key] = folder
            runs.append((meta, df))
    out = Path(args.out)
    check_output_folder(out, "--out", plot=False)
    out.mkdir(parents=True, exist_ok=True)
    plot_fig2(runs, out)
    print(f"wrote {out / 'fig2.png'} and {out / 'fig2.pdf'}", file=sys.stderr)
    return 0


def _recorded_data_root(run_dir: str) -> str | None:
    record = Path(run_dir) / RUN_JSON
    return read_run_json(record)[1] if record.exists() else None


def _failure_line(p: pd.Series, mode: str) -> str:
    """One failing point: tier, point, ours, reference, diff and tolerance (nats)."""
    which = "rounding" if p.tier == 1 or mode == "rounding" else "seeds"
    return (
        f"FAIL tier {p.tier}: {model_label(p.method, p.nz)} {p.split} {p.term} at {p.samples} "
        "samples: "
        f"ours {p.ours:.6f}, reference {p.reference:.6f}, diff {p['diff']:+.3g} nats, "
        f"tolerance {p.tol:.3g} ({which})"
    )


def cmd_check(args: argparse.Namespace) -> int:
    result = check_run(args.run_dir, args.reference, args.nz, args.tolerance)
    for problem in result.problems:
        print(f"FAIL: {problem}")
    for _, point in result.failures.iterrows():
        print(_failure_line(point, result.mode))
    if args.verbose:
        table = result.points.copy()
        tier1 = table.tier == 1
        with pd.option_context("display.width", 160, "display.max_rows", 1000):
            print("tier 2 (ci run, ELBO; tolerance columns: rounding and seeds):")
            print(table[~tier1].to_string(index=False, float_format="%.4f"))
            print("tier 1 (float64 trajectory; ELBO, loglik, KL of both splits at 4 points):")
            t1 = table[tier1].assign(abs_diff=table["diff"].abs())
            summary = t1.groupby(["method", "nz"]).agg(
                points=("ok", "size"),
                failing=("ok", lambda ok: int((~ok).sum())),
                max_abs_diff=("abs_diff", "max"),
                tol=("tol", "min"),
            )
            print(summary.to_string(float_format="%.3g"))
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
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {out} is a file; give a folder")
    data = load_mnist(args.data_root, "cpu")  # raises DataError before any training
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
    p.add_argument(
        "--at",
        type=parse_count,
        nargs="+",
        metavar="SAMPLES",
        help="print only a Markdown table at these sample counts (e.g. --at 1e6 1e7): per N_z "
        "and split our mean ± sd, the paper, the distance in nats and in sds, and how many "
        "logged points have the paper inside our band",
    )

    p = sub.add_parser(
        "plot",
        help="figures (Fig. 2 with the paper, diagnostics) and REPORT.md",
        description="Write RUN_DIR/figures/ (fig2.png/.pdf and components.png: the mean and "
        "the band over seeds; per N_z for one seed: recon, samples, interpolation, latent, "
        "kl_per_dim) and RUN_DIR/REPORT.md from a run.",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--data-root",
        help="MNIST root for the per-model figures (default: the run's, from its run.json)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="the seed whose models get per-model figures (default: the run's first seed)",
    )

    p = sub.add_parser(
        "fig2",
        help="Fig. 2 from several run folders in one figure (e.g. AEVB and wake-sleep)",
        description="Draw Fig. 2 (fig2.png/.pdf into --out) from the models of every RUN_DIR "
        "together, over the paper's curves: for example an AEVB sweep and a wake-sleep sweep, "
        "each with its band over seeds. Each (method, N_z, seed) may come from one folder only.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="folder for fig2.png and fig2.pdf")

    p = sub.add_parser(
        "hwtable",
        help="Markdown table of the saved benchmarks of every machine",
        description="Render results/bench/*.json (from `nox -s bench`) into one table: train "
        "and eval samples/s, speedup over the pyautoencoder baseline (the train step, the "
        "command lines end to end, the short sweep), fraction of the matmul limit.",
    )
    p.add_argument("folder", nargs="?", default="results/bench")
    p.add_argument(
        "--add",
        metavar="JSON",
        help="first save this pytest-benchmark JSON into FOLDER as "
        "<machine>-<device>-<host>.json (a --quick run is not saved)",
    )

    p = sub.add_parser(
        "check",
        help="regression gate: a run against reference ELBO numbers (two tiers)",
        description="Compare a run folder with a reference folder in two tiers: tier 1, the "
        "float64 trajectory (trajectory.csv, from `vaerepro trajectory`) within float64 "
        "rounding; tier 2, the ci run's ELBO at every (N_z, split, samples) point within "
        "the tolerance mode's tolerances. Exits 1 and prints every point out of tolerance "
        "(tier, point, diff, tolerance), or when files, rows, configs or (rounding mode) "
        "thread counts differ; exits 2 when the reference itself is missing or malformed.",
    )
    p.add_argument("run_dir")
    p.add_argument("--reference", required=True, help="e.g. results/reference/ci")
    p.add_argument("--nz", type=int, nargs="+", help="check only these N_z of the reference")
    p.add_argument(
        "--tolerance",
        choices=TOLERANCE_MODES,
        default="rounding",
        help="tier-2 tolerances: rounding (measured float rounding drift, < 0.5 nats; the "
        "reference's CPU kind and thread count) or seeds (spread over seeds: for runs from "
        "other hardware, e.g. CUDA)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every point")

    p = sub.add_parser(
        "trajectory",
        help="tier 1 of the regression gate: the float64 trajectory of the ci preset",
        description="Run the ci preset scaled down (per method, AEVB and wake-sleep, and "
        "N_z: 4,000 samples from 1,000 images) in float64 on the CPU, through the real "
        "training and evaluation code, and write trajectory.csv/.json into OUT for "
        "`vaerepro check`. About 13 s for both methods and all five N_z on 2 cores.",
    )
    p.add_argument("out", help="the folder to write into (usually the ci run's)")
    p.add_argument("--nz", type=int, nargs="+", default=list(PAPER_NZ))
    p.add_argument("--data-root", help=f"MNIST root (default ${ENV_DATA_ROOT})")

    p = sub.add_parser(
        "make-reference",
        help="write a reference folder from seed runs and rounding runs",
        description="From the ci run under several seeds (the reference seed's folder with "
        "its trajectory.csv) and the reference seed again under other rounding (another "
        "thread count), write the reference numbers, the spread over seeds, the rounding "
        "drift per point and the tolerances of both modes. --out may not be an input, and "
        "only files an earlier make-reference wrote there are replaced or removed.",
    )
    p.add_argument("seed_runs", nargs="+", help="run folders, one config, different seeds")
    p.add_argument(
        "--rounding-runs",
        nargs="+",
        required=True,
        help="the reference seed's run (with trajectory.csv) under other rounding",
    )
    p.add_argument("--out", required=True, help="the reference folder to (re)write")
    p.add_argument("--reason", required=True, help="why the reference changes (recorded)")
    return parser


COMMANDS = {
    "reproduce": cmd_reproduce,
    "compare": cmd_compare,
    "plot": cmd_plot,
    "fig2": cmd_fig2,
    "check": cmd_check,
    "hwtable": cmd_hwtable,
    "make-reference": cmd_make_reference,
    "trajectory": cmd_trajectory,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except VaereproError as err:
        print(f"vaerepro {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # one not turned into a clearer error where it happened
        print(
            f"vaerepro {args.command}: error: {err.strerror or err}: {err.filename or ''} "
            "(check that the path exists and is writable, and that the disk has space)",
            file=sys.stderr,
        )
        return 2
