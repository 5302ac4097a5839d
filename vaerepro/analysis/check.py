"""ELBO regression gate in two tiers: a run folder against a reference folder.

Tier 1 (trajectory.py): a short float64 trajectory of the real training code; its numbers
(ELBO, log-likelihood, KL of both splits, nats per datapoint) move by at most 6.3e-9 nats
under any rounding variant measured, so its tolerance sees any change to the math or the code.
Tier 2: the `ci` run itself (float32, all five N_z, 3e5 samples), each ELBO point within a
tolerance from measured rounding drift (`--tolerance rounding`, the default), or within the
spread over seeds (`--tolerance seeds`: for runs whose rounding differs by design, such as
CUDA against the CPU reference).

A reference folder holds the reference seed's `ci` run (`nz*-seed*.csv/.json`), its tier-1
values (`trajectory.csv/.json`), `spread.csv` (per point: mean and standard deviation over
seeds), `drift.csv` (per point and rounding variant: |run - reference|), `tolerances.csv`
(per point: drift, rounding and seeds tolerances), `reference.json` (how and why it was made,
the files it owns and their SHA-256) and `HISTORY.md` (one line per update, with its reason).
`reference_folder.open_reference` verifies all of it before the check believes a number.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vaerepro.analysis.reference_folder import (
    FIX,
    POINT_COLUMNS,
    SAFETY,
    SEED_FLOOR,
    SEED_SIGMAS,
    TIER1_FLOOR,
    TIER2_CAP,
    TIER2_FLOOR,
    TOLERANCE_LIMITS,
    TOLERANCE_MODES,
    TOLERANCES_CSV,
    ReferenceFolderError,
    open_reference,
    read_tolerances,
    reference_models,
)
from vaerepro.core.config import PRESETS, config_diff, preset
from vaerepro.core.errors import RunFolderError, UsageError
from vaerepro.runs.layout import RunFiles
from vaerepro.runs.longform import KEYS, long_form
from vaerepro.runs.provenance import vaerepro_command
from vaerepro.runs.records import read_csv, read_model_json
from vaerepro.runs.trajectory import read_trajectory

__all__ = [  # the constants and reader of a reference folder, as before they moved
    "POINT_COLUMNS",
    "SAFETY",
    "SEED_FLOOR",
    "SEED_SIGMAS",
    "TIER1_FLOOR",
    "TIER2_CAP",
    "TIER2_FLOOR",
    "TOLERANCES_CSV",
    "TOLERANCE_LIMITS",
    "TOLERANCE_MODES",
    "CHECK_MODES",
    "ReferenceFolderError",
    "read_tolerances",
    "CheckResult",
    "check_run",
    "elbo_points",
    "rerun_advice",
]


# --tolerance: a tolerance column of tolerances.csv, or auto (rounding where the run's float32
# rounding is the reference's, else seeds)
CHECK_MODES = (*TOLERANCE_MODES, "auto")


@dataclass
class CheckResult:
    """points: tier, nz, split, samples, term, ours, reference, diff, tol (the mode's),
    rounding, seeds, ok; nats per datapoint. problems: reasons the comparison itself is
    invalid (missing files or rows, different configs or thread counts)."""

    points: pd.DataFrame
    mode: str = "rounding"
    problems: list[str] = field(default_factory=list)
    source: str = ""  # which tolerances were used and where they came from

    @property
    def ok(self) -> bool:
        """No problem, at least one point, every point within its tolerance: a check that
        compared nothing fails."""
        return not self.problems and len(self.points) > 0 and bool(self.points.ok.all())

    @property
    def failures(self) -> pd.DataFrame:
        return self.points[~self.points.ok]


def elbo_points(df: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """A run CSV of the model with config `cfg` as tier-2 rows (method, nz, split, samples,
    term="elbo", value)."""
    return long_form(df, cfg, ["elbo"])[[*KEYS, "value"]]


def _merge(
    ref: pd.DataFrame, ours: pd.DataFrame, tier: int, label: str, problems: list[str]
) -> pd.DataFrame:
    """ref and ours (nz, split, samples, term, value) side by side; rows missing from ours
    are reported in `problems` (and compare as failures)."""
    merged = ref.merge(ours, on=KEYS, how="left", suffixes=("_ref", "_ours"))
    missing = merged[merged.value_ours.isna()]
    if len(missing):
        where = sorted({int(n) for n in missing.samples})
        problems.append(f"tier {tier}, {label}: rows missing at samples {where}")
    return merged.assign(tier=tier)


def _tier1(run_dir: Path, reference_dir: Path, nz, problems: list[str]) -> list[pd.DataFrame]:
    try:
        ref_meta, ref = read_trajectory(reference_dir)
    except RunFolderError as err:
        raise ReferenceFolderError(f"the reference lacks tier 1 ({err}); {FIX}") from err
    if nz is not None:
        ref = ref[ref.nz.isin(nz)]
    try:
        meta, ours = read_trajectory(run_dir)
    except RunFolderError as err:
        problems.append(str(err))
        return []
    diff = config_diff(meta.get("config", {}), ref_meta.get("config", {}))
    if diff:
        problems.append("tier 1: config differs from the reference: " + "; ".join(diff))
        return []
    return [_merge(ref, ours, 1, "trajectory.csv", problems)]


def _environment_diff(meta: dict, ref_meta: dict) -> list[str]:
    """Thread count and torch version, and the CPU: what sets float32 rounding. The CPU's
    kernel capability is compared only where both record it (older runs do not)."""

    def torch_version(m: dict) -> str:
        return str(m.get("versions", {}).get("torch")).split("+")[0]  # 2.14.1+cu130 -> 2.14.1

    ours, ref = meta.get("device", {}), ref_meta["device"]
    pairs = [
        ("threads", ours.get("threads"), ref.get("threads")),
        ("torch", torch_version(meta), torch_version(ref_meta)),
        ("CPU", ours.get("name"), ref.get("name")),
    ]
    if "capability" in ours and "capability" in ref:
        pairs.append(("CPU kernels", ours["capability"], ref["capability"]))
    return [f"{k} {a} != {b}" for k, a, b in pairs if a != b]


def _rounding_differs(run_dir: Path, reference_dir: Path, nz) -> list[str]:
    """How the float32 rounding of the run's tier-2 models differs from the reference's
    (CPU, threads, torch; [] when it is the same or the run lacks a model)."""
    diffs: dict[str, None] = {}
    for ref_meta, _ in reference_models(reference_dir):
        files = RunFiles.of_config(run_dir, ref_meta["config"])
        if (nz is None or ref_meta["config"]["nz"] in nz) and files.json.exists():
            diffs |= dict.fromkeys(_environment_diff(read_model_json(files.json), ref_meta))
    return list(diffs)


def rerun_advice(run_dir: Path, reference_dir: Path, models: list[dict], nz) -> str:
    """Commands that, run as printed, train the reference's models (`models`: their
    metadata) again as the reference's were made (its thread count, one model at a time, its
    device, preset, config, N_z and seeds), into a new folder beside `run_dir`, and check
    that folder; `nz`: the N_z the check was asked for (None: all)."""
    ref, configs = models[0], [m["config"] for m in models]
    name = ref.get("preset") if ref.get("preset") in PRESETS else "paper"
    seeds = sorted({c["seed"] for c in configs})
    nzs = [str(n) for n in dict.fromkeys(c["nz"] for c in configs)]
    methods = list(dict.fromkeys(c["method"] for c in configs))
    base = run_dir.resolve() if run_dir.name in ("", ".", "..") else run_dir
    out = str(base.with_name(base.name + "-as-reference"))
    train = [*shlex.split(vaerepro_command("reproduce"))]
    train += ["--preset", name, "--device", ref["device"].get("type", "cpu")]
    train += ["--seed", str(seeds[0])] if len(seeds) == 1 else ["--seeds", *map(str, seeds)]
    train += ["--nz", *nzs] + (["--method", *methods] if methods != ["aevb"] else [])
    train += _config_options(configs[0], preset(name).to_dict())
    train += ["--jobs", "1", "--no-plot", "--out", out]
    threads = ref["device"].get("threads")
    only = ["--nz", *nzs] if nz is not None else []
    commands = [
        (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(train),
        shlex.join([*shlex.split(vaerepro_command("trajectory")), out, *only]),
        shlex.join(
            [*shlex.split(vaerepro_command("check")), out, "--reference", str(reference_dir)] + only
        ),
    ]
    return " && ".join(commands)


def _config_options(cfg: dict, preset_cfg: dict) -> list[str]:
    """`reproduce` options for the fields (but nz, seed, method) where `cfg` differs from
    its preset's config."""
    options = []
    for key, value in cfg.items():
        if key in ("nz", "seed", "method") or value == preset_cfg.get(key) or value is None:
            continue
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            options.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            options += [f"--{flag}", str(value)]
    return options


def _tier2(
    run_dir: Path, reference_dir: Path, nz, mode: str, problems: list[str]
) -> list[pd.DataFrame]:
    parts, other_rounding = [], {}  # other_rounding: environment difference -> N_z
    models = reference_models(reference_dir)
    models = [(m, df) for m, df in models if nz is None or m["config"]["nz"] in nz]
    for ref_meta, ref_df in models:
        cfg = ref_meta["config"]
        files = RunFiles.of_config(run_dir, cfg)
        if not files.json.exists() or not files.csv.exists():
            problems.append(f"tier 2, N_z={cfg['nz']}: {files.stem}.csv/.json missing in {run_dir}")
            continue
        meta = read_model_json(files.json)
        diff = config_diff(meta.get("config", {}), cfg)
        if diff:
            problems.append(
                f"tier 2, N_z={cfg['nz']}: config differs from the reference: " + "; ".join(diff)
            )
            continue
        env = _environment_diff(meta, ref_meta) if mode == "rounding" else []
        if env:
            other_rounding.setdefault("; ".join(env), []).append(cfg["nz"])
            continue
        ours = elbo_points(read_csv(files.csv), cfg)
        label = f"N_z={cfg['nz']} ({files.stem}.csv)"
        parts.append(_merge(elbo_points(ref_df, cfg), ours, 2, label, problems))
    for env, nzs in other_rounding.items():
        torch = models[0][0].get("versions", {}).get("torch")
        rerun = (
            f"to check at the reference's rounding, train its models again as it was made"
            f"{f' (with torch {torch})' if 'torch' in env else ''} and check them: "
            f"`{rerun_advice(run_dir, reference_dir, [m for m, _ in models], nz)}`; or "
        )
        problems.append(
            f"tier 2, N_z={', '.join(map(str, nzs))}: float32 rounding differs from the "
            f"reference's ({env}); {'' if 'CPU' in env else rerun}compare this run with "
            "--tolerance seeds (or auto)"
        )
    return parts


def _missing_nz(reference_dir: Path, nz, problems: list[str]) -> None:
    """A problem for each requested N_z the reference has no model of."""
    have = sorted({m["config"]["nz"] for m, _ in reference_models(reference_dir)})
    missing = [n for n in nz or [] if n not in have]
    if missing:
        problems.append(
            f"the reference {reference_dir} has no model with N_z = "
            f"{', '.join(map(str, missing))} (it has N_z = {', '.join(map(str, have))}): "
            "nothing to compare for it"
        )


def _tolerance_source(reference_dir: Path, mode: str, points: pd.DataFrame) -> str:
    """Which tolerances were used, their range per tier and the files they came from."""
    ranges = [
        f"tier {t}: {g.tol.min():.3g} to {g.tol.max():.3g} nats" for t, g in points.groupby("tier")
    ]
    return (
        f"tolerances: {mode} (tier 1 always rounding) from {reference_dir / TOLERANCES_CSV}, "
        f"within the bounds of its drift.csv and spread.csv; {'; '.join(ranges) or 'no points'}"
    )


def check_run(
    run_dir: str | Path,
    reference_dir: str | Path,
    nz: list[int] | None = None,
    tolerance: str = "rounding",
) -> CheckResult:
    """Compare a run folder's tier-1 values and `ci` run (every reference N_z, or only those
    in `nz`) with the reference's, within the `tolerance` mode's tolerances; `auto`: rounding
    where the run's float32 rounding is the reference's (CPU, threads, torch), else seeds.

    ReferenceFolderError (exit 2) when the reference itself is missing, malformed, modified
    (`reference_folder.open_reference`); every problem with the run (missing files or rows,
    other config), a requested N_z the reference lacks and a tier that compares no point
    make the check fail.
    """
    if tolerance not in CHECK_MODES:
        raise UsageError(f"--tolerance must be one of {CHECK_MODES}, got {tolerance!r}")
    reference_dir, run_dir = Path(reference_dir), Path(run_dir)
    _, tolerances = open_reference(reference_dir)
    why = ""
    if tolerance == "auto":
        differs = _rounding_differs(run_dir, reference_dir, nz)
        tolerance = "seeds" if differs else "rounding"
        why = f" (auto: the run's float32 rounding differs: {'; '.join(differs)})" * bool(differs)
    problems: list[str] = []
    _missing_nz(reference_dir, nz, problems)
    parts = _tier1(run_dir, reference_dir, nz, problems)
    parts += _tier2(run_dir, reference_dir, nz, tolerance, problems)
    cols = [*POINT_COLUMNS, "value_ours", "value_ref"]
    points = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
    for tier in (1, 2):
        if not (points.tier == tier).any():
            problems.append(f"tier {tier} compared no points: a gate that compares nothing fails")
    points = points.merge(tolerances[[*POINT_COLUMNS, "rounding", "seeds"]], how="left")
    unknown = points[points.rounding.isna()]
    if len(unknown):
        row = unknown.iloc[0]
        raise ReferenceFolderError(
            f"{reference_dir / TOLERANCES_CSV} has no tolerance for tier {row.tier}, "
            f"N_z={row.nz}, {row.split} {row.term} at {row.samples} samples; {FIX}"
        )
    points = points.rename(columns={"value_ours": "ours", "value_ref": "reference"})
    points["diff"] = points.ours - points.reference
    # tier 1 has no seed tolerance: its float64 trajectory is portable across CPUs
    seeds = points.seeds.where(points.tier == 2)
    points["tol"] = points.rounding if tolerance == "rounding" else seeds.fillna(points.rounding)
    points["ok"] = points["diff"].abs() <= points.tol  # NaN (missing) compares False
    cols = [*POINT_COLUMNS, "ours", "reference", "diff", "tol", "rounding", "seeds", "ok"]
    points = points[cols].reset_index(drop=True)
    source = _tolerance_source(reference_dir, tolerance, points) + why
    return CheckResult(points, tolerance, problems, source)
