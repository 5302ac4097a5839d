"""ELBO regression gate: a run against reference numbers, with tolerances from seed spread.

A reference folder holds the CI configuration's run (`nz*-seed*.csv/.json`), `spread.csv`
(per N_z, split and sample count: mean and standard deviation over several seeds),
`tolerances.csv` (max(k * std, floor) per point), `reference.json` (how and why it was
made) and `HISTORY.md` (one line per update, with its reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .config import config_diff
from .store import (
    RunFiles,
    atomic_write_bytes,
    git_state,
    load_run,
    read_csv,
    read_json,
    write_csv,
    write_json,
)

SPLITS = ("train", "test")
TOLERANCE_SIGMAS = 4.0
TOLERANCE_FLOOR = 0.25  # nats; covers float differences between machines for one seed


@dataclass
class CheckResult:
    """points: nz, split, samples, ours, reference, diff, tol, ok. problems: reasons the
    comparison itself is invalid (missing files or rows, different configs)."""

    points: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.points.ok.all())

    @property
    def failures(self) -> pd.DataFrame:
        return self.points[~self.points.ok]


def _long(df: pd.DataFrame, nz: int) -> pd.DataFrame:
    """A run CSV as rows of (nz, split, samples, elbo)."""
    parts = [
        pd.DataFrame({"nz": nz, "split": s, "samples": df.samples, "elbo": df[f"{s}_elbo"]})
        for s in SPLITS
    ]
    return pd.concat(parts, ignore_index=True)


def check_run(
    run_dir: str | Path, reference_dir: str | Path, nz: list[int] | None = None
) -> CheckResult:
    """Compare every reference model (or only those with N_z in `nz`) with the run's."""
    reference_dir, run_dir = Path(reference_dir), Path(run_dir)
    tolerances = pd.read_csv(reference_dir / "tolerances.csv")
    problems, parts = [], []
    for ref_meta, ref_df in load_run(reference_dir):
        cfg = ref_meta["config"]
        if nz is not None and cfg["nz"] not in nz:
            continue
        files = RunFiles.of(run_dir, cfg["nz"], cfg["seed"])
        if not files.json.exists() or not files.csv.exists():
            problems.append(f"N_z={cfg['nz']}: {files.stem}.csv/.json missing in {run_dir}")
            continue
        diff = config_diff(read_json(files.json).get("config", {}), cfg)
        if diff:
            problems.append(
                f"N_z={cfg['nz']}: config differs from the reference: " + "; ".join(diff)
            )
            continue
        ours = _long(read_csv(files.csv), cfg["nz"])
        ref = _long(ref_df, cfg["nz"])
        merged = ref.merge(
            ours, on=["nz", "split", "samples"], how="left", suffixes=("_ref", "_ours")
        )
        missing = [int(n) for n in merged[merged.elbo_ours.isna()].samples.unique()]
        if len(missing):
            problems.append(f"N_z={cfg['nz']}: rows missing at samples {list(missing)}")
        parts.append(merged)
    if nz is not None and not parts and not problems:
        problems.append(f"no reference model has N_z in {nz}")
    points = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["nz", "split", "samples", "elbo_ref", "elbo_ours"])
    )
    points = points.merge(tolerances, on=["nz", "split", "samples"], how="left")
    points = points.rename(columns={"elbo_ours": "ours", "elbo_ref": "reference"})
    points["diff"] = points.ours - points.reference
    points["ok"] = points["diff"].abs() <= points.tol  # NaN (missing) compares False
    cols = ["nz", "split", "samples", "ours", "reference", "diff", "tol", "ok"]
    return CheckResult(points[cols], problems)


def make_reference(
    seed_runs: list[str | Path],
    out: str | Path,
    reason: str,
    reference_seed: int = 0,
    sigmas: float = TOLERANCE_SIGMAS,
    floor: float = TOLERANCE_FLOOR,
) -> pd.DataFrame:
    """Write a reference folder from runs of one config under several seeds.

    The reference numbers are those of `reference_seed`'s run; each point's tolerance is
    max(sigmas * std over seeds, floor). Returns the tolerance table.
    """
    if not reason.strip():
        raise ValueError("a reason for the reference update is required")
    models = [(meta, df) for folder in seed_runs for meta, df in load_run(folder)]
    seeds = sorted({m["config"]["seed"] for m, _ in models})
    if len(seeds) < 2:
        raise ValueError(f"need runs under at least 2 seeds to measure spread, got {seeds}")
    base = {m["config"]["nz"]: {**m["config"], "seed": None} for m, _ in models}
    for meta, _ in models:
        diff = config_diff({**meta["config"], "seed": None}, base[meta["config"]["nz"]])
        if diff:
            raise ValueError(f"seed runs differ in more than the seed: {diff}")
    long = pd.concat(
        [_long(df, m["config"]["nz"]).assign(seed=m["config"]["seed"]) for m, df in models],
        ignore_index=True,
    )
    spread = (
        long.groupby(["nz", "split", "samples"])
        .elbo.agg(seeds="count", mean="mean", std="std", min="min", max="max")
        .reset_index()
    )
    tol = spread[["nz", "split", "samples"]].assign(tol=(sigmas * spread["std"]).clip(lower=floor))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("nz*-seed*.*"):
        old.unlink()
    for folder in seed_runs:
        for path in Path(folder).glob(f"nz*-seed{reference_seed}.*"):
            if path.suffix in (".csv", ".json"):
                atomic_write_bytes(out / path.name, path.read_bytes())
    write_csv(spread, out / "spread.csv")
    write_csv(tol, out / "tolerances.csv")
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(
        {
            "reason": reason,
            "made": when,
            "seeds": seeds,
            "reference_seed": reference_seed,
            "tolerance": f"max({sigmas} * std over seeds, {floor} nats)",
            "git": git_state(),
        },
        out / "reference.json",
    )
    history = out / "HISTORY.md"
    old = history.read_text() if history.exists() else "# Reference updates\n\n"
    commit = (git_state().get("commit") or "unknown")[:10]
    atomic_write_bytes(
        history, (old + f"- {when} (code {commit}, seeds {seeds}): {reason}\n").encode()
    )
    return tol
