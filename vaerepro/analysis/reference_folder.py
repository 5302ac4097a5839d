"""A regression-gate reference folder, read and verified before it is believed (check.py reads
it, reference_writer.py writes it).

- `reference.json` against its schema; its `files` are names of the writer's own pattern
  (never a path), `sha256` the checksum of every other file.
- Every file is a plain file (a symlink is refused, not followed) whose SHA-256 matches.
- The reference models' JSONs hold what the gate reads (device type and threads, torch).
- `tolerances.csv` stays within bounds derived from the reference's own `drift.csv` (rounding:
  `rounding_tolerance` of the largest drift measured at the point) and `spread.csv` (seeds:
  `seeds_tolerance` of the standard deviation over seeds), and within fixed limits
  (`TOLERANCE_LIMITS`), whatever those two files say.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pandas as pd

from vaerepro.core.errors import RunFolderError
from vaerepro.core.files import sha256
from vaerepro.runs.longform import KEYS
from vaerepro.runs.records import check_schema, load_run, read_json
from vaerepro.runs.trajectory import CSV_NAME, JSON_NAME

TOLERANCE_MODES = ("rounding", "seeds")
SAFETY = 3.0  # rounding tolerance >= SAFETY * the largest drift measured at the point
TIER1_FLOOR = 1e-6  # nats; measured float64 drift <= 6.3e-9 (README)
TIER2_FLOOR = 0.1  # nats; README: covers rounding this machine cannot vary
TIER2_CAP = 0.45  # nats; a half-nat shift must fail at every point
SEED_SIGMAS = 4.0
SEED_FLOOR = 0.25  # nats
# tolerances outside (0, limit) are refused as corrupt: tier -> mode -> limit in nats
TOLERANCE_LIMITS = {1: {"rounding": 1e-3}, 2: {"rounding": 0.5, "seeds": 50.0}}
SLACK = 1e-5  # relative: the files hold 6 significant digits
POINT_COLUMNS = ["tier", *KEYS]  # tier, method, nz, split, samples, term

REFERENCE_JSON, HISTORY = "reference.json", "HISTORY.md"
SPREAD_CSV, DRIFT_CSV, TOLERANCES_CSV = "spread.csv", "drift.csv", "tolerances.csv"
FIXED_FILES = (SPREAD_CSV, DRIFT_CSV, TOLERANCES_CSV, CSV_NAME, JSON_NAME, REFERENCE_JSON)
MODEL_FILE = re.compile(r"^nz\d+-seed\d+\.(csv|json)$")
FIX = "regenerate the reference with `nox -s update_reference -- REASON`"

REFERENCE_FIELDS = {
    "files": "list",
    "sha256": "dict",
    "reason": "str",
    "made": "str",
    "seeds": "list",
    "reference_seed": "int",
    "threads": "int|null",
    "torch": "str|null",
    "rounding_runs": "list",
    "tolerance": "dict",
    "git": "dict",
}
_HEX = re.compile(r"^[0-9a-f]{64}$")


class ReferenceFolderError(RunFolderError):
    """A reference folder is missing files, or holds malformed, modified or absurd ones."""


def is_own_name(name: str) -> bool:
    """Whether `name` is one make-reference writes (a plain name, never a path)."""
    return name in FIXED_FILES or name == HISTORY or bool(MODEL_FILE.match(name))


def rounding_tolerance(drift: pd.Series, tier1: pd.Series) -> pd.Series:
    """Tier 1: max(SAFETY * drift, TIER1_FLOOR); tier 2: min(max(SAFETY * drift,
    TIER2_FLOOR), TIER2_CAP); nats per datapoint."""
    three = SAFETY * drift
    return three.clip(lower=TIER1_FLOOR).where(tier1, three.clip(TIER2_FLOOR, TIER2_CAP))


def seeds_tolerance(sd: pd.Series) -> pd.Series:
    """max(SEED_SIGMAS * standard deviation over seeds, SEED_FLOOR)."""
    return (SEED_SIGMAS * sd).clip(lower=SEED_FLOOR)


def plain_file(path: Path, fix: str = FIX) -> Path:
    """`path` when it is a regular file and not a symlink; ReferenceFolderError naming it."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as err:
        raise ReferenceFolderError(f"reference file {path} is missing or unreadable; {fix}") from (
            err
        )
    if stat.S_ISLNK(mode):
        raise ReferenceFolderError(
            f"{path} is a symlink; a reference holds plain files only (a link is never "
            f"followed): replace it with the file itself or {fix}"
        )
    if not stat.S_ISREG(mode):
        raise ReferenceFolderError(f"{path} is not a regular file; {fix}")
    return path


def read_reference_json(folder: Path, checksums: bool = True) -> dict:
    """`reference.json`, validated against its schema; checksums=False: an older one without
    `sha256` is accepted (make-reference rewriting it)."""
    path = plain_file(folder / REFERENCE_JSON)
    meta = check_schema(read_json(path), REFERENCE_FIELDS, str(path), fix=FIX)
    names = meta.get("files", [])
    bad = [n for n in names if not (isinstance(n, str) and is_own_name(n))]
    if bad:
        raise ReferenceFolderError(
            f"{path}: field 'files' lists {bad[0]!r:.80}, not a file name make-reference "
            f"writes; {FIX}"
        )
    if checksums and "sha256" not in meta:
        raise ReferenceFolderError(f"{path} records no SHA-256 of its files (older); {FIX}")
    for name, digest in meta.get("sha256", {}).items():
        if not (is_own_name(name) and name != REFERENCE_JSON and _HEX.match(str(digest))):
            raise ReferenceFolderError(f"{path}: malformed 'sha256' entry {name!r:.80}; {FIX}")
    return meta


def verify_checksums(folder: Path, meta: dict) -> None:
    """Every file `reference.json` lists is a plain file whose SHA-256 it records."""
    names = set(meta["files"]) - {REFERENCE_JSON}
    unlisted = sorted(names - set(meta["sha256"]))
    if unlisted:
        raise ReferenceFolderError(
            f"{folder / REFERENCE_JSON} records no SHA-256 of {unlisted[0]}; {FIX}"
        )
    for name, digest in sorted(meta["sha256"].items()):
        path = plain_file(folder / name)
        if sha256(path.read_bytes()) != digest:
            raise ReferenceFolderError(
                f"{path} does not match the SHA-256 recorded in {REFERENCE_JSON}: the reference "
                f"was modified or only partly rewritten; restore it (git checkout) or {FIX}"
            )


MODEL_DEVICE = {"type": "str", "threads": "int"}  # threads required


def reference_models(folder: Path) -> list[tuple[dict, pd.DataFrame]]:
    """The reference run's models (`load_run`), each JSON holding the device type and thread
    count and torch version the gate compares with; ReferenceFolderError naming the file."""
    models = load_run(folder)
    for meta, _ in models:
        where = str(folder / f"nz{meta['config']['nz']}-seed{meta['config']['seed']}.json")
        check_schema(meta, {}, where, required=("device", "versions"), fix=FIX)
        check_schema(meta["device"], MODEL_DEVICE, f"{where}, device", ("threads",), FIX)
        check_schema(meta["versions"], {"torch": "str"}, f"{where}, versions", ("torch",), FIX)
    return models


def _read_table(path: Path, columns: list[str], numeric: list[str]) -> pd.DataFrame:
    plain_file(path)
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ReferenceFolderError(f"cannot read {path}: {err}; {FIX}") from err
    if "method" not in table.columns and "split" in table.columns:  # before wake-sleep
        table.insert(1 if "tier" in table.columns else 0, "method", "aevb")
    missing = [c for c in columns if c not in table.columns]
    if missing or table.empty:
        raise ReferenceFolderError(f"{path} lacks columns {missing} or rows; {FIX}")
    for col in numeric:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def _refuse(path: Path, table: pd.DataFrame, bad: pd.Series, what: str) -> None:
    """ReferenceFolderError naming the file, the first row where `bad` and the point."""
    if bad.any():
        i = bad[bad].index[0]
        row = table.loc[i]
        point = f"N_z={row.nz}, {row.split} {row.get('term', 'elbo')} at {row.samples} samples"
        raise ReferenceFolderError(f"{path}, row {i + 2} ({point}): {what}; {FIX}")


def _bounds(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(largest drift per point from drift.csv, sd per tier-2 point from spread.csv), each
    checked for numbers that cannot be a measurement."""
    path = folder / DRIFT_CSV
    drift = _read_table(path, [*POINT_COLUMNS, "variant", "drift"], ["drift"])
    _refuse(
        path,
        drift,
        ~(drift.drift >= 0) | ~drift.drift.abs().lt(float("inf")),
        "drift is not a finite number >= 0",
    )
    worst = drift.groupby(POINT_COLUMNS, as_index=False).drift.max()
    worst = worst.rename(columns={"drift": "measured"})
    path = folder / SPREAD_CSV
    cols = ["seeds", "mean", "std", "min", "max"]
    spread = _read_table(path, ["method", "nz", "split", "samples", *cols], cols)
    finite = spread[cols].apply(lambda c: c.abs().lt(float("inf"))).all(axis=1)
    sane = (spread.seeds >= 2) & (spread["std"] >= 0) & (spread["min"] <= spread["mean"])
    sane &= (spread["mean"] <= spread["max"]) & (spread["std"] <= spread["max"] - spread["min"])
    _refuse(
        path,
        spread,
        ~(finite & sane),
        "not a spread over 2 or more seeds (seeds >= 2, min <= mean <= max, 0 <= std <= max - min)",
    )
    return worst, spread.rename(columns={"std": "sd"})


def read_tolerances(folder: Path) -> pd.DataFrame:
    """The reference's tolerances.csv, validated: every tolerance a finite number in (0, limit)
    of TOLERANCE_LIMITS and at most the bound its drift (rounding) or spread (seeds) gives;
    tier 1 has no seeds tolerance. ReferenceFolderError naming the file and row otherwise."""
    path = folder / TOLERANCES_CSV
    if not path.exists() and not path.is_symlink():
        raise ReferenceFolderError(f"reference file {path} is missing; {FIX}")
    tol = _read_table(path, [*POINT_COLUMNS, "rounding", "seeds"], list(TOLERANCE_MODES))
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)  # for messages: as written
    unknown = sorted(set(tol.tier) - set(TOLERANCE_LIMITS))
    if unknown:
        raise ReferenceFolderError(f"{path}: unknown tiers {unknown}; {FIX}")
    _refuse(path, tol, tol.duplicated(POINT_COLUMNS), "a second row for the same point")
    worst, spread = _bounds(folder)
    tol = tol.merge(worst, on=POINT_COLUMNS, how="left", validate="one_to_one")
    tol = tol.merge(spread.assign(tier=2, term="elbo")[[*POINT_COLUMNS, "sd"]], how="left")
    bound = {
        "rounding": rounding_tolerance(tol.measured, tol.tier == 1),
        "seeds": seeds_tolerance(tol.sd),
    }
    for tier, limits in TOLERANCE_LIMITS.items():
        for mode, limit in limits.items():
            ok = (tol[mode] > 0) & (tol[mode] < limit) & (tol[mode] <= bound[mode] * (1 + SLACK))
            bad = (tol.tier == tier) & ~ok  # NaN and inf are bad, and so is a missing bound
            if bad.any():
                i = bad[bad].index[0]
                _tolerance_error(path, raw.loc[i, mode], tol.loc[i], mode, limit, bound[mode][i])
    extra = (tol.tier == 1) & tol.seeds.notna()
    _refuse(path, tol, extra, "tier 1 has no seeds tolerance (its float64 values are portable)")
    return tol.drop(columns=["sd", "measured"])


def _tolerance_error(path: Path, text: str, row: pd.Series, mode: str, limit: float, bound):
    source = DRIFT_CSV if mode == "rounding" else SPREAD_CSV
    why = (
        f"no {'drift' if mode == 'rounding' else 'spread'} recorded for it in {source}"
        if pd.isna(bound)
        else f"the bound from {source} is {bound:.6g}"
    )
    raise ReferenceFolderError(
        f"{path}: the {mode} tolerance {text!r} of tier {row.tier}, N_z={row.nz}, "
        f"{row.split} {row.term} at {row.samples} samples (row {row.name + 2}) is not a number "
        f"in (0, {limit:g}) nats within its bound ({why}); {FIX}"
    )


def open_reference(folder: Path) -> tuple[dict, pd.DataFrame]:
    """(reference.json, tolerances) of a reference folder, everything verified: the schema,
    plain files, tolerances within their bounds, then every file's SHA-256."""
    if not folder.is_dir():
        raise ReferenceFolderError(f"reference folder {folder} does not exist; give --reference")
    meta = read_reference_json(folder)
    tolerances = read_tolerances(folder)
    verify_checksums(folder, meta)
    return meta, tolerances
