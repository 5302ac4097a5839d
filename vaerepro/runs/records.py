"""Reading what a run folder records, validated: model and sweep JSONs, CSVs, checksummed
torch files, and whole runs (`load_run`). Nothing read here can run code."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from pathlib import Path

import pandas as pd
import torch

from vaerepro.core.config import METHODS, Sweep, TrainConfig, config_diff, upgrade
from vaerepro.core.errors import RunFolderError
from vaerepro.core.evaluate import ACTIVE_UNIT_NATS
from vaerepro.core.files import read_regular, sha256
from vaerepro.runs.contents import (
    JSON_CAP,
    csv_cap,
    csv_problem,
    rows_problem,
    torch_cap,
    with_marginal_columns,
)
from vaerepro.runs.layout import RUN_JSON, RunFiles
from vaerepro.runs.writes import write_json


def load_torch(path: Path, expected_sha256: list[str] | None, cfg: TrainConfig) -> dict:
    """A `.ckpt` or `.pt` file of a model of `cfg`, verified and loaded on the CPU with
    weights_only=True (no code from the file runs). expected_sha256: the checksums recorded
    for it (any may match); None: none recorded (a legacy file, integrity unverified).
    RunFolderError naming the file when it is missing, not a regular file, larger than such
    a model's file can be, differs from its checksum, or is not a plain-data torch file."""
    data = read_regular(path, torch_cap(cfg), "torch file")
    if expected_sha256 is not None and sha256(data) not in expected_sha256:
        raise RunFolderError(
            f"{path} does not match the SHA-256 recorded for it: the file was modified, "
            "truncated or corrupted after it was written"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunFolderError(
            f"{path} is not a plain tensor file vaerepro can load safely ({first})"
        ) from err
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def read_json(path: Path) -> dict:
    """A JSON object; RunFolderError naming the file when unreadable or not an object."""
    data = read_regular(path, JSON_CAP, "JSON file")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise RunFolderError(f"cannot read run metadata {path}: {err}") from err
    if not isinstance(obj, dict):
        raise RunFolderError(f"run metadata {path} is a JSON {type(obj).__name__}, not an object")
    return obj


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _field_ok(value, annotation: str) -> bool:
    """Does a JSON value fit a TrainConfig field annotation such as "float | None" or
    "tuple[float, ...]" (a JSON list)?"""
    if annotation.startswith("tuple["):
        item = annotation[len("tuple[") :].split(",")[0]
        return isinstance(value, (list, tuple)) and all(_field_ok(v, item) for v in value)
    for name in annotation.replace(" ", "").split("|"):
        if name == "None" and value is None:
            return True
        types = _JSON_TYPES.get(name, ())
        if isinstance(value, types) and (name == "bool" or not isinstance(value, bool)):
            return not isinstance(value, float) or math.isfinite(value)
    return False


def parse_config(obj, source: Path) -> TrainConfig:
    """A TrainConfig from its JSON form; RunFolderError naming `source` for unknown, missing
    or mistyped fields, or invalid values."""
    if not isinstance(obj, dict):
        raise RunFolderError(f"{source}: a config must be a JSON object, got {obj!r:.60}")
    obj = upgrade(obj)
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(obj) - set(fields))
    missing = sorted(set(fields) - set(obj))
    if unknown or missing:
        raise RunFolderError(
            f"{source}: config fields unknown {unknown}, missing {missing} (written by "
            "another vaerepro version?)"
        )
    bad = [k for k, t in fields.items() if not _field_ok(obj[k], str(t))]
    if bad:
        raise RunFolderError(f"{source}: config fields of the wrong type: {bad}")
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()})
    try:
        cfg.validate()
    except ValueError as err:
        raise RunFolderError(f"{source}: invalid config: {err}") from err
    return cfg


STATUSES = ("running", "interrupted", "finished")


# Fields of a model's JSON and their JSON types. Older results lack some (checkpoints,
# weights_sha256): they are read as results, but cannot be resumed.
MODEL_FIELDS: dict[str, tuple[type, ...]] = {
    "config": (dict,),
    "status": (str,),
    "preset": (str, type(None)),
    "seed": (int,),
    "gradient": (str,),
    "started": (str,),
    "resumed": (str,),
    "interrupted": (str,),
    "finished": (str,),
    "device": (dict,),
    "versions": (dict,),
    "git": (dict,),
    "host": (str,),
    "command": (list,),
    "samples_done": (int,),
    "wall_s": (int, float),
    "final": (dict,),
    "stacked_with": (list,),  # the models of its batched step, as "N_z=3 seed 0"
    "stacked_with_nz": (list,),  # the older record: the N_z of one seed's batched step
    "fused_with_nz": (list,),  # the older name of stacked_with_nz
    "checkpoints": (list,),  # the last two: [{"samples": int, "sha256": hex}, ...]
    "weights_sha256": (str,),
    "kl_per_dim": (list,),  # of the final model, over the test set (nats, one per N_z)
    "active_units": (int,),  # its dimensions with kl_per_dim over ACTIVE_UNIT_NATS
    "lr_selection": (dict,),  # --lr-select: {"samples", "candidates", "chosen"} (lrselect.py)
}


RUN_FIELDS: dict[str, tuple[type, ...]] = {
    "preset": (str, type(None)),
    "nz": (list,),
    "seeds": (list,),
    "methods": (list,),
    "configs": (list,),
    "data_root": (str, type(None)),
}


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_fields(obj: dict, known: dict, required: tuple[str, ...], path: Path) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise RunFolderError(
            f"{path} has unknown fields {unknown} (written by another vaerepro version?)"
        )
    missing = [k for k in required if k not in obj]
    if missing:
        raise RunFolderError(f"{path} lacks the fields {missing}")
    bad = [k for k, v in obj.items() if not isinstance(v, known[k]) or isinstance(v, bool)]
    if bad:
        raise RunFolderError(f"{path}: fields of the wrong type: {bad}")


def read_model_json(path: Path) -> dict:
    """A model's metadata, validated: known fields of the right types, a valid config of the
    model its file name says, a known status (none: a plain result), well-formed checksums
    and latent usage; RunFolderError naming the file otherwise."""
    meta = read_json(path)
    _check_fields(meta, MODEL_FIELDS, ("config",), path)
    cfg = parse_config(meta["config"], path)
    meta["config"] = cfg.to_dict()  # in today's field names
    if (own := RunFiles.of_config(path.parent, cfg).json.name) != path.name:
        raise RunFolderError(
            f"{path} holds the config of {own} (N_z={cfg.nz}, seed {cfg.seed}, {cfg.method}), "
            "not of its own name"
        )
    if meta.get("status", "finished") not in STATUSES:
        raise RunFolderError(f"{path}: status {meta['status']!r} is not one of {STATUSES}")
    for entry in meta.get("checkpoints", []):
        if not (
            isinstance(entry, dict)
            and set(entry) == {"samples", "sha256"}
            and isinstance(entry["samples"], int)
            and isinstance(entry["sha256"], str)
            and _SHA256.match(entry["sha256"])
        ):
            raise RunFolderError(f"{path}: malformed checkpoints entry {entry!r:.80}")
    if "weights_sha256" in meta and not _SHA256.match(meta["weights_sha256"]):
        raise RunFolderError(f"{path}: weights_sha256 is not a SHA-256")
    _check_latent_usage(meta, path)
    return meta


def _check_latent_usage(meta: dict, path: Path) -> None:
    """kl_per_dim: N_z finite numbers >= 0; active_units: those above ACTIVE_UNIT_NATS."""
    if "kl_per_dim" not in meta and "active_units" not in meta:
        return
    kl, nz = meta.get("kl_per_dim"), meta["config"]["nz"]
    if not (
        isinstance(kl, list)
        and len(kl) == nz
        and all(_field_ok(v, "float") and v >= 0 for v in kl)
        and meta.get("active_units") == sum(v > ACTIVE_UNIT_NATS for v in kl)
    ):
        raise RunFolderError(
            f"{path}: kl_per_dim must be {nz} finite numbers >= 0 and active_units the count "
            f"of those above {ACTIVE_UNIT_NATS}"
        )


def read_run_json(path: Path) -> tuple[Sweep, str | None]:
    """(sweep, data_root) of a run folder's run.json; RunFolderError naming it otherwise."""
    obj = read_json(path)
    _check_fields(obj, RUN_FIELDS, ("configs",), path)
    if not obj["configs"]:
        raise RunFolderError(f"{path} lists no configs")
    configs = [parse_config(c, path) for c in obj["configs"]]
    try:
        sweep = Sweep.from_configs(obj.get("preset"), configs)
    except ValueError as err:
        raise RunFolderError(f"{path}: {err}") from err
    for key, values in (("nz", sweep.nzs), ("seeds", sweep.seeds), ("methods", sweep.methods)):
        if key in obj and obj[key] != list(values):
            raise RunFolderError(f"{path}: {key} {obj[key]} does not match its configs")
    return sweep, obj.get("data_root")


def write_run_json(sweep: Sweep, data_root: str | None, folder: Path) -> None:
    """The sweep's record in `folder`: what --resume continues and what plot, compare and
    check read."""
    record = {
        "preset": sweep.preset,
        "nz": list(sweep.nzs),
        "seeds": list(sweep.seeds),
        "methods": list(sweep.methods),
        "configs": [c.to_dict() for c in sweep.configs],
        "data_root": data_root,
    }
    write_json(record, folder / RUN_JSON)


def read_csv(path: Path, cfg: TrainConfig | None = None, meta: dict | None = None) -> pd.DataFrame:
    """A run CSV, validated: every contract column, finite numbers, positive and strictly
    increasing samples; with the model's config `cfg` and JSON `meta`, one row per evaluation
    on its grid, as many as its status and checkpoints vouch for (header only: no row yet).
    RunFolderError naming the file and the row otherwise."""
    data = read_regular(path, csv_cap(cfg), "run CSV")
    try:
        df = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise RunFolderError(f"cannot read run CSV {path}: {err}") from err
    df = with_marginal_columns(df)
    if df.empty and not (cfg and meta):
        raise RunFolderError(f"run CSV {path} has no rows")
    problem = csv_problem(df) or (rows_problem(df, cfg, meta) if cfg and meta else None)
    if problem:
        raise RunFolderError(f"run CSV {path} {problem}")
    return df


def logged_samples(csv: Path) -> int:
    """The sample count of a run CSV's last row (0 when the file is absent or unreadable)."""
    try:
        return int(read_csv(csv).samples.iloc[-1])
    except (RunFolderError, IndexError, ValueError):
        return 0


def _load_model(path: Path, recorded: TrainConfig | None) -> tuple[dict, pd.DataFrame] | None:
    """A model's (metadata, CSV rows), both validated against each other, its file name and
    `recorded` (its config in run.json); None when it has logged no evaluation yet."""
    meta = read_model_json(path)
    cfg = parse_config(meta["config"], path)
    if recorded is not None and (diff := config_diff(recorded.to_dict(), meta["config"])):
        raise RunFolderError(
            f"{path}'s config differs from the one run.json records for it: " + "; ".join(diff)
        )
    csv = path.with_suffix(".csv")
    finished = meta.get("status", "finished") == "finished"
    if not csv.exists():
        if not (finished or meta.get("checkpoints")):
            return None
        raise RunFolderError(
            f"run CSV {csv} is missing, but its metadata {path.name} records "
            + ("a finished model" if finished else "checkpoints")
        )
    df = read_csv(csv, cfg, meta)
    return (meta, df) if len(df) else None


def load_run(folder: str | os.PathLike) -> list[tuple[dict, pd.DataFrame]]:
    """Every model of a run folder that has logged an evaluation, as (metadata, CSV rows),
    sorted by method, N_z, seed; each JSON and CSV validated against the other.

    With a run.json, exactly the models it lists (other files in the folder are not read);
    without one (older folders), every nz*-seed*.json. RunFolderError naming the file when
    the folder has no models, or a file is missing or malformed (a finished model's CSV
    missing or short among them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"run folder {folder} does not exist")
    recorded: dict[Path, TrainConfig | None]
    if (folder / RUN_JSON).exists():
        sweep, _ = read_run_json(folder / RUN_JSON)
        recorded = {RunFiles.of_config(folder, c).json: c for c in sweep.configs}
        recorded = {p: c for p, c in recorded.items() if p.exists()}
    else:
        recorded = dict.fromkeys(sorted(folder.glob("nz*-seed*.json")))
    runs = [r for p, c in recorded.items() if (r := _load_model(p, c))]
    if not runs and recorded:
        raise RunFolderError(
            f"run folder {folder} holds no model with a logged evaluation yet (its models "
            f"{', '.join(p.stem for p in recorded)} have no CSV rows: still running?)"
        )
    if not runs:
        raise RunFolderError(f"run folder {folder} holds no model yet (no model JSON)")
    return sorted(
        runs,
        key=lambda r: (
            METHODS.index(r[0]["config"]["method"]),
            r[0]["config"]["nz"],
            r[0]["config"]["seed"],
        ),
    )


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer such as 10**400
        return False


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)


FIELD_KINDS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and _finite(v),
    "number": _number,  # finite
    "positive": lambda v: _number(v) and v > 0,
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _shown(value) -> str:
    try:
        return f"{value!r:.60}"
    except ValueError:  # an integer too long to print
        return "a huge number"


def check_schema(obj, schema: dict[str, str], where: str, required=(), fix: str = "") -> dict:
    """`obj`, a JSON object, against `schema` (field -> kinds such as "int", "str|null",
    "positive": a finite number > 0): every field of `required` present, every present
    field of its kind (other fields are left alone). RunFolderError "WHERE: ..." naming the
    field otherwise, ending with `fix`."""
    tail = f"; {fix}" if fix else ""
    if not isinstance(obj, dict):
        raise RunFolderError(f"{where} is {_shown(obj)}, not a JSON object{tail}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise RunFolderError(f"{where} lacks the field {missing[0]!r}{tail}")
    for key, kinds in schema.items():
        if key in obj and not any(FIELD_KINDS[k](obj[key]) for k in kinds.split("|")):
            shown = kinds.replace("|", " or ").replace("positive", "a finite, positive number")
            raise RunFolderError(f"{where}: field {key!r} is {_shown(obj[key])}, not {shown}{tail}")
    return obj
