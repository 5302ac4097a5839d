"""Writes a regression-gate reference folder (check.py reads it) from measured runs.

Inputs: the `ci` run under several seeds (the reference seed's folder also holds the tier-1
`trajectory.csv`), and rounding runs: the reference seed's `ci` run and trajectory again under
other rounding (another thread count). Tolerances per point, nats per datapoint:
  rounding, tier 1: max(SAFETY * drift, TIER1_FLOOR)
  rounding, tier 2: min(max(SAFETY * drift, TIER2_FLOOR), TIER2_CAP)
  seeds,    tier 2: max(SEED_SIGMAS * std over seeds, SEED_FLOOR)
where drift is the largest |rounding run - reference| at that point.

A reference is written as a whole: built in a new folder beside --out (`.OUT.vaerepro-new-*`,
in the same parent), then put in its place in one step (the two folders exchanged), so that a
kill at any moment leaves the previous reference or the new one, whole; the next run removes
what a killed one left. `reference.json` records the SHA-256 of every other file, which check
verifies. Other files found in --out are carried over (hard links). The writer deletes only
plain files of its own names (`reference_folder.is_own_name`) or temporary files, and those
only in the folder it built or the previous reference it replaced; it refuses an --out that is
a symlink, one of its inputs, or holds files it does not own under its names, links or folders,
and input files that are symlinks.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from vaerepro.analysis.check import elbo_points
from vaerepro.analysis.compare import seed_bands, seed_values
from vaerepro.analysis.reference_folder import (
    DRIFT_CSV,
    FIXED_FILES,
    HISTORY,
    POINT_COLUMNS,
    REFERENCE_JSON,
    SAFETY,
    SEED_FLOOR,
    SEED_SIGMAS,
    SPREAD_CSV,
    TIER1_FLOOR,
    TIER2_CAP,
    TIER2_FLOOR,
    TOLERANCES_CSV,
    ReferenceFolderError,
    is_own_name,
    plain_file,
    read_reference_json,
    rounding_tolerance,
    seeds_tolerance,
)
from vaerepro.core.config import config_diff
from vaerepro.core.errors import UsageError
from vaerepro.core.files import sha256
from vaerepro.runs.layout import OWN_TEMP
from vaerepro.runs.longform import KEYS
from vaerepro.runs.provenance import git_state
from vaerepro.runs.records import load_run
from vaerepro.runs.swap import carry, clean_leftovers, discard, new_build, swap
from vaerepro.runs.trajectory import CSV_NAME, JSON_NAME, read_trajectory
from vaerepro.runs.writes import atomic_write_bytes


def _tier2_values(folder: Path) -> tuple[list[tuple[dict, pd.DataFrame]], pd.DataFrame]:
    """(models, ELBO points with tier=2) of one run folder."""
    models = load_run(folder)
    points = pd.concat([elbo_points(df, m["config"]) for m, df in models])
    return models, points.assign(tier=2)


def _configs(models: list[tuple[dict, pd.DataFrame]]) -> dict:
    """{"nz3": config, ...} of a run folder's models, for config_diff."""
    return {f"nz{m['config']['nz']}": m["config"] for m, _ in models}


def _rounding_values(
    folder: Path, ref_models: list[tuple[dict, pd.DataFrame]], traj_meta: dict
) -> tuple[pd.DataFrame, str]:
    """A rounding run's points (tier 1 from its trajectory.csv, tier 2 from its ci run; it
    may hold either or both) and its label, after checking its configs against the
    reference's. ValueError naming the folder otherwise."""
    parts, threads = [], set()
    if any(folder.glob("nz*-seed*.json")):
        models, points = _tier2_values(folder)
        diff = config_diff(_configs(models), _configs(ref_models))
        if diff:
            raise UsageError(f"rounding run {folder} differs from the reference run: {diff}")
        parts.append(points)
        threads |= {m.get("device", {}).get("threads") for m, _ in models}
    if (folder / CSV_NAME).exists():
        meta, values = read_trajectory(folder)
        diff = config_diff(meta.get("config", {}), traj_meta.get("config", {}))
        if diff:
            raise UsageError(f"rounding run {folder}: trajectory config differs: {diff}")
        parts.append(values.assign(tier=1))
        threads.add(meta.get("device", {}).get("threads"))
    if not parts:
        raise UsageError(f"rounding run {folder} holds neither a ci run nor {CSV_NAME}")
    label = f"{folder.name} (threads={','.join(map(str, sorted(threads, key=str)))})"
    return pd.concat(parts, ignore_index=True), label


def _drift(reference: pd.DataFrame, other: pd.DataFrame, variant: str) -> pd.DataFrame:
    """|other - reference| per point (tier, nz, split, samples, term) of the tiers `other`
    holds; ValueError naming the variant when it lacks a point of such a tier."""
    reference = reference[reference.tier.isin(set(other.tier))]
    merged = reference.merge(other, on=["tier", *KEYS], how="left", suffixes=("", "_other"))
    if merged.value_other.isna().any():
        row = merged[merged.value_other.isna()].iloc[0]
        raise UsageError(
            f"rounding run {variant} lacks tier {row.tier} {row.method} N_z={row.nz} {row.split} "
            f"{row.term} at {row.samples} samples"
        )
    drift = (merged.value_other - merged.value).abs()
    return merged[POINT_COLUMNS].assign(variant=variant, drift=drift)


def _spread(seed_runs: list[Path]) -> tuple[list[int], pd.DataFrame]:
    """Seeds and the spread per tier-2 point over the seed runs (compare.seed_bands: seeds,
    mean, sd, min, max)."""
    models = [(meta, df) for folder in seed_runs for meta, df in load_run(folder)]
    seeds = sorted({m["config"]["seed"] for m, _ in models})
    if len(seeds) < 2:
        raise UsageError(f"need runs under at least 2 seeds to measure spread, got {seeds}")
    base = {m["config"]["nz"]: {**m["config"], "seed": None} for m, _ in models}
    for meta, _ in models:
        diff = config_diff({**meta["config"], "seed": None}, base[meta["config"]["nz"]])
        if diff:
            raise UsageError(f"seed runs differ in more than the seed: {diff}")
    return seeds, seed_bands(seed_values(models))


def spread_file(spread: pd.DataFrame) -> pd.DataFrame:
    """`spread.csv` as it has always been written: the sd column named std, the rows sorted
    by method, nz, split (test before train) and samples."""
    keys = ["method", "nz", "split", "samples"]
    return spread.rename(columns={"sd": "std"}).sort_values(keys, ignore_index=True)


def tolerance_table(drift: pd.DataFrame, spread: pd.DataFrame) -> pd.DataFrame:
    """Per point: tier, nz, split, samples, term, drift (largest over variants), rounding
    and seeds tolerances (tier 1 has none from seeds), nats per datapoint."""
    worst = drift.groupby(POINT_COLUMNS, as_index=False).drift.max()
    worst["rounding"] = rounding_tolerance(worst.drift, worst.tier == 1)
    seeds = spread.assign(tier=2, term="elbo", seeds=seeds_tolerance(spread.sd))
    out = worst.merge(seeds[[*POINT_COLUMNS, "seeds"]], on=POINT_COLUMNS, how="left")
    return out.sort_values(POINT_COLUMNS, ignore_index=True)


def _old_reference(out: Path) -> tuple[set[str], dict[str, Path]]:
    """(names an earlier make-reference wrote in `out`, the other entries of `out`: carried
    over into the new reference). ReferenceFolderError if `out` holds a symlink or anything
    but plain files, or holds files and no reference.json."""
    if not out.exists():
        return set(), {}
    entries = {p.name: p for p in out.iterdir() if not OWN_TEMP.match(p.name)}
    odd = sorted(n for n, p in entries.items() if p.is_symlink() or not p.is_file())
    if odd:
        raise ReferenceFolderError(
            f"--out {out} holds {odd[0]}, a symlink or not a plain file: a reference holds plain "
            "files only and a link is never followed; move it away or give another folder"
        )
    if not [n for n in entries if not n.startswith(".")]:
        return set(), entries
    if REFERENCE_JSON not in entries:
        raise ReferenceFolderError(
            f"--out {out} holds files but no reference.json: not a reference folder this "
            "command wrote; give a new or empty folder"
        )
    meta = read_reference_json(out, checksums=False)
    if "files" in meta:
        owned = set(meta["files"]) | {HISTORY}
    else:  # written before reference.json listed its files: the old writer's fixed set
        seed = meta.get("reference_seed", 0)
        ends = (f"-seed{seed}.csv", f"-seed{seed}.json")
        owned = {n for n in entries if n.startswith("nz") and n.endswith(ends)}
        owned |= {SPREAD_CSV, TOLERANCES_CSV, REFERENCE_JSON, HISTORY}
    return owned & set(entries), {n: p for n, p in entries.items() if n not in owned}


def _check_out(out: Path, inputs: list[Path], names: set[str]) -> dict[str, Path]:
    """Refuse an --out that is a symlink, an input, or would overwrite files not ours; put
    back or remove what a killed make-reference left beside it. Returns the files of `out`
    to carry over (not written by make-reference)."""
    if out.is_symlink():
        raise ReferenceFolderError(f"--out {out} is a symlink; give the folder itself")
    if out.exists() and not out.is_dir():
        raise ReferenceFolderError(f"--out {out} is a file; give a folder")
    for folder in inputs:
        if is_same_folder(out, folder):
            raise ReferenceFolderError(
                f"--out {out} is one of the input runs; write the reference to another folder"
            )
    clean_leftovers(out, is_own_name)
    _, foreign = _old_reference(out)
    clash = sorted(set(foreign) & names)
    if clash:
        raise ReferenceFolderError(
            f"--out {out} holds {', '.join(clash)}, not written by make-reference; "
            "give a new or empty folder"
        )
    return foreign


def make_reference(
    seed_runs: list[str | Path],
    out: str | Path,
    reason: str,
    rounding_runs: list[str | Path],
    reference_seed: int = 0,
) -> pd.DataFrame:
    """Write a reference folder (check.py) from `seed_runs` (the `ci` run under several seeds;
    the reference seed's folder with its trajectory) and `rounding_runs` (the reference seed
    again under other rounding). Nothing is written until every input is validated. Returns
    the tolerance table."""
    if not reason.strip():
        raise UsageError("a reason for the reference update is required")
    if not rounding_runs:
        raise UsageError("need at least one rounding run (e.g. OMP_NUM_THREADS=1) to measure drift")
    seed_runs, rounding_runs, out = (
        [Path(p) for p in seed_runs],
        [Path(p) for p in rounding_runs],
        Path(out),
    )
    seeds, spread = _spread(seed_runs)
    base = [
        f for f in seed_runs if any(m["config"]["seed"] == reference_seed for m, _ in load_run(f))
    ]
    if len(base) != 1:
        raise UsageError(f"need exactly one seed run folder with seed {reference_seed}, got {base}")
    ref_models, ref_points = _tier2_values(base[0])
    traj_meta, traj = read_trajectory(base[0])
    reference = pd.concat([traj.assign(tier=1), ref_points], ignore_index=True)

    drift = pd.concat(
        [_drift(reference, *_rounding_values(f, ref_models, traj_meta)) for f in rounding_runs],
        ignore_index=True,
    )
    unmeasured = sorted(set(reference.tier) - set(drift.tier))
    if unmeasured:
        raise UsageError(f"no rounding run measures tier {unmeasured}: give one that does")
    tol = tolerance_table(drift, spread)

    model_files = [
        p
        for p in sorted(base[0].glob(f"nz*-seed{reference_seed}.*"))
        if p.suffix in (".csv", ".json")
    ]
    copied = [*model_files, base[0] / CSV_NAME, base[0] / JSON_NAME]
    for path in copied:  # a link is refused, not followed
        plain_file(path, "give the run's files themselves, not links, to make-reference")
    names = {p.name for p in model_files} | set(FIXED_FILES)
    foreign = _check_out(out, [*seed_runs, *rounding_runs], names | {HISTORY})
    history = _history(out, reason, seeds)

    build = new_build(out)
    try:
        for path in copied:
            _write(build / path.name, path.read_bytes())
        _write_tables(build, spread, drift, tol)
        _write(build / HISTORY, history)
        carry(foreign, build)
        _write_metadata(build, reason, seeds, reference_seed, ref_models[0][0], drift, names)
        old = swap(build, out)
    except Exception:
        discard(build, out, is_own_name)
        raise
    if old is not None:
        discard(
            old, out, is_own_name
        )  # the previous reference, with the files it had and no longer has
    return tol


def _write(path: Path, data: bytes) -> None:
    """Every file of a new reference is written here (tests count the writes)."""
    atomic_write_bytes(path, data)


def _write_tables(build: Path, spread: pd.DataFrame, drift: pd.DataFrame, tol: pd.DataFrame):
    """The spread, drift and tolerances."""
    spread_csv = spread_file(spread).to_csv(index=False, float_format="%.6f")
    _write(build / SPREAD_CSV, spread_csv.encode())
    for table, name in ((drift, DRIFT_CSV), (tol, TOLERANCES_CSV)):  # 1e-9 nats must show
        _write(build / name, table.to_csv(index=False, float_format="%.6g").encode())


def _write_metadata(
    build: Path,
    reason: str,
    seeds: list[int],
    reference_seed: int,
    ref_meta: dict,
    drift: pd.DataFrame,
    names: set[str],
) -> None:
    """reference.json: why and how the reference was made, the files it owns and the SHA-256
    of each (HISTORY.md too), which check verifies."""
    checked = sorted((names | {HISTORY}) - {REFERENCE_JSON})
    meta = {
        "reason": reason,
        "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": seeds,
        "reference_seed": reference_seed,
        "threads": ref_meta.get("device", {}).get("threads"),
        "torch": ref_meta.get("versions", {}).get("torch"),
        "rounding_runs": sorted(set(drift.variant)),
        "tolerance": {
            "rounding tier 1": f"max({SAFETY} * drift, {TIER1_FLOOR} nats)",
            "rounding tier 2": f"min(max({SAFETY} * drift, {TIER2_FLOOR}), {TIER2_CAP} nats)",
            "seeds tier 2": f"max({SEED_SIGMAS} * std over seeds, {SEED_FLOOR} nats)",
        },
        "files": sorted(names),
        "sha256": {n: sha256((build / n).read_bytes()) for n in checked},
        "git": git_state(),
    }
    _write(build / REFERENCE_JSON, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def _history(out: Path, reason: str, seeds: list[int]) -> bytes:
    """HISTORY.md of the previous reference (a plain file, never a link), with a new line."""
    history = out / HISTORY
    if history.exists() or history.is_symlink():
        old = plain_file(history, "replace it with the file itself").read_text()
    else:
        old = "# Reference updates\n\n"
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    commit = (git_state().get("commit") or "unknown")[:10]
    return (old + f"- {when} (code {commit}, seeds {seeds}): {reason}\n").encode()


def is_same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name the same folder (through links too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
