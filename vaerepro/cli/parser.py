"""The command line's parsers: one per subcommand, the config options made from TrainConfig's
fields, and the nearest option suggested for a typo."""

from __future__ import annotations

import argparse
import dataclasses
import difflib

from vaerepro.analysis.check import CHECK_MODES
from vaerepro.cli.marginal_parser import add_marginal_parsers
from vaerepro.core.config import (
    BINARIZE,
    DREAMS,
    DTYPES,
    LIKELIHOODS,
    METHODS,
    OPTIMIZERS,
    PAPER_NZ,
    PRESETS,
    SAMPLINGS,
    TrainConfig,
    preset,
)
from vaerepro.core.data import ENV_DATA_ROOT
from vaerepro.core.numbers import format_count, parse_count

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
    "dtype": DTYPES,
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where an option has a value of its own: not for None (the
    preset's value, said in the option's help) nor for on/off flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.nargs == 0 or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but an unrecognized argument gets the nearest option of its subcommand."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self._subparser(parsed)
            self.error(unrecognized(extras, sub or self, args))
        return parsed

    def _subparser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(parsed, action.dest, None))
        return None


def unrecognized(extras: list[str], parser: argparse.ArgumentParser, argv) -> str:
    """The error for arguments `parser` does not know, with the nearest option for each."""
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for extra in extras:
        name = extra.split("=", 1)[0]
        if name.startswith("-"):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            if close:
                hints.append(f"{name}: did you mean {close[0]}?")
        elif (before := _option_before(extra, argv)) and f"{before}s" in known:
            hints.append(f"{before} takes one value; for several, use {before}s")
    message = f"unrecognized arguments: {' '.join(extras)}"
    return message + ("" if not hints else " (" + "; ".join(hints) + ")")


def _option_before(value: str, argv) -> str | None:
    """The option given just before the stray value `value` (e.g. --seed for `--seed 0 1`)."""
    argv = list(argv or [])
    if value not in argv:
        return None
    for token in reversed(argv[: argv.index(value)]):
        if token.startswith("--"):
            return token
    return None


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (but N_z, seed and method), made from the field: its
    type, its help text and the paper preset's value. Unset options keep the preset's value."""
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
        elif f.type.startswith("tuple["):  # e.g. --lr-select 0.01 0.02 0.1
            kw |= {"nargs": "+", "type": float, "metavar": f.name.split("_")[0].upper()}
        else:
            kw["type"] = parse_count if f.type == "int" else float
        if value is None or value == ():
            kw["help"] = f.metadata["help"]
        g.add_argument("--" + f.name.replace("_", "-"), **kw)


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    """What to train: preset, N_z, methods, seeds."""
    # preset, nz and seed default to None so that --resume can tell them apart from given ones
    p.add_argument("--preset", help=f"named config: {', '.join(PRESETS)} (default: paper)")
    p.add_argument(
        "--nz",
        type=int,
        nargs="+",
        help=f"latent sizes N_z (default: {' '.join(map(str, PAPER_NZ))}; fig3: 3)",
    )
    p.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        help="aevb (the paper's algorithm), wakesleep (its baseline in Fig. 2), mcem (Monte "
        "Carlo EM, Fig. 3; needs --marginal-every), or several: every N_z and seed under each "
        "(default: aevb)",
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


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Where and how to train: device, data, run folder, parallelism, output."""
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
        help="train all N_z and seeds of a method in one batched step (every layer and Adagrad "
        "on stacks of the models): the numbers of separate runs; for GPUs (docs/gpu.md)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=parse_count,
        metavar="SAMPLES",
        help="samples between checkpoints, a multiple of --eval-every (default: every "
        "evaluation); the CSV and JSON are written with them, a stop signal checkpoints at "
        "once. For fast GPUs, where writing checkpoints can cost more than training",
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
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA only: capture the training step (batched, as --stacked) in a CUDA graph "
        "once and replay it: one launch per step, the numbers of the step without it",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="CUDA only: float32 matrix products on TF32 tensor cores (faster, about 3e-4 "
        "relative error). Default: full float32. Recorded as device.matmul_precision",
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


def add_reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train one VAE per N_z and log train/test ELBO (Fig. 2)",
        description="Train one VAE per latent size on MNIST and write, per N_z, a CSV of train "
        "and test ELBO (nats per datapoint) every --eval-every samples, a JSON of config, "
        "versions, device and git commit, a checkpoint, and the final weights.",
        formatter_class=HelpFormatter,
    )
    add_sweep_options(p)
    add_run_options(p)
    add_executor_options(p)
    add_config_options(p)


def add_executor_options(p: argparse.ArgumentParser) -> None:
    """Where the models train: here (local), or as SLURM jobs through submitit."""
    g = p.add_argument_group(
        "executor",
        "--executor slurm submits one job per pending model as a SLURM job array (submitit) "
        "and returns once they are queued; the run folder must be on a filesystem every node "
        "sees (docs/cluster.md)",
    )
    g.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: train here (--jobs, --threads); slurm: submit to SLURM",
    )
    g.add_argument(
        "--wait",
        action="store_true",
        help="with --executor slurm: block until the jobs end, with the sweep's progress bar",
    )
    g.add_argument("--slurm-partition", help="sbatch --partition (default: the cluster's)")
    g.add_argument(
        "--slurm-time",
        default="4:00:00",
        help="time limit per job (minutes, HH:MM:SS or D-HH:MM:SS); a job at its limit "
        "checkpoints and requeues itself",
    )
    g.add_argument(
        "--slurm-cpus-per-task",
        type=int,
        default=1,
        help="CPUs per job, the torch threads of its model (unless --threads)",
    )
    g.add_argument("--slurm-gpus-per-task", type=int, help="GPUs per job (with --device cuda)")
    g.add_argument(
        "--slurm-array-parallelism",
        type=int,
        default=256,
        help="jobs of the array running at once",
    )
    g.add_argument(
        "--slurm-extra",
        nargs="+",
        metavar="KEY=VALUE",
        help="any other sbatch option by its long name, e.g. --slurm-extra qos=low mem=4G",
    )


def add_reading_parsers(sub) -> None:
    """compare, plot, fig2 and hwtable: they read run folders and saved benchmarks."""
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
        help="print only a Markdown table at these sample counts (e.g. --at 1e6 1e7), writing "
        "nothing: per N_z and split our mean ± sd, the paper, the distance in nats and in sds, "
        "and how many logged points have the paper inside our band and inside the 95%% "
        "prediction interval for one more seed",
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
        "status",
        help="per model of a run folder (local or submitted): state, samples, test ELBO, job",
        description="Print per model its state (pending, running, finished, failed, "
        "interrupted or requeued), its samples so far, its last test ELBO and its job id; for a "
        "failed job the path of its log and the last lines of its error; then the sweep's "
        "totals and, while models train, the time left. Exits 1 when a job failed.",
    )
    p.add_argument("run_dir", metavar="RUN")
    p = sub.add_parser(
        "hwtable",
        help="Markdown table of the saved benchmarks of every machine",
        description="Render results/bench/*.json (from `nox -s bench`) into one table: train "
        "and eval samples/s, speedup over the pyautoencoder baseline (the train step, the "
        "command lines end to end, the short sweep), fraction of the matmul limit. Then, from "
        "FOLDER/steps/*.json (bench/batched_step.py --json, e.g. a GPU's), the batched step of "
        "K models: ms per step, samples/s per model and per device, minutes per 1e6 samples "
        "(the paper's unit), speedup over the baseline on the same device.",
    )
    p.add_argument("folder", nargs="?", default="results/bench")
    p.add_argument(
        "--add",
        metavar="JSON",
        help="first save this pytest-benchmark JSON into FOLDER as "
        "<machine>-<device>-<host>.json (a --quick run is not saved)",
    )


def add_gate_parsers(sub) -> None:
    """check, trajectory and make-reference: the regression gate."""
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
        choices=CHECK_MODES,
        default="rounding",
        help="tier-2 tolerances: rounding (measured float rounding drift, < 0.5 nats; needs "
        "the reference's CPU, thread count and torch), seeds (spread over seeds: for runs "
        "from other hardware, e.g. CUDA), or auto (rounding where the run's CPU, threads and "
        "torch are the reference's, else seeds, saying why; what nox -s regression uses)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every point")
    p = sub.add_parser(
        "trajectory",
        help="tier 1 of the regression gate: the float64 trajectory of the ci preset",
        description="Run the ci preset scaled down (per method, AEVB, wake-sleep and MCEM, "
        "and N_z: 4,000 samples from 1,000 images) in float64 on the CPU, through the real "
        "training and evaluation code, and write trajectory.csv/.json into OUT for "
        "`vaerepro check`. AEVB and wake-sleep take about 13 s for all five N_z on 2 cores; "
        "MCEM (N_z < 25: its marginal likelihood is the value) adds its HMC steps.",
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vaerepro",
        description="Reproduce Kingma & Welling (2013), Auto-Encoding Variational Bayes, Fig. 2.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_reproduce_parser(sub)
    add_reading_parsers(sub)
    add_marginal_parsers(sub)
    add_gate_parsers(sub)
    return parser
