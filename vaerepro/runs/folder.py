"""The run-folder rules in one place: what each model's files say (new, resume, skip), the
checkpoint checks and restart hints, folder and resume conflicts, and the order in which a
model's JSON, checkpoint and CSV are written, so that a kill at any moment leaves them
consistent."""

from __future__ import annotations

import math
import shlex
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from vaerepro.core.config import Sweep, TrainConfig, config_diff
from vaerepro.core.errors import RunFolderError, UsageError
from vaerepro.core.files import sha256
from vaerepro.core.model import VAE
from vaerepro.runs.contents import checkpoint_problem
from vaerepro.runs.layout import CSV_COLUMNS, OWN_MODEL_FILE, RUN_JSON, RunFiles
from vaerepro.runs.provenance import environment_info, vaerepro_command
from vaerepro.runs.records import load_torch, parse_config, read_csv, read_model_json, read_run_json
from vaerepro.runs.state import TrainingState
from vaerepro.runs.writes import (
    atomic_write_bytes,
    refuse_links_in_run,
    torch_bytes,
    write_csv,
    write_json,
)

# What a finished model's JSON keeps of its last row (MCEM has no ELBO; the marginal likelihood
# is there when it was estimated at the end)
FINAL_KEYS = ("train_elbo", "test_elbo", "train_marginal", "test_marginal")

CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "batches",
    "rng",
    "samples",
    "rows",
    "config",
    "wall_s",
    "device",
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def restart_hint(files: RunFiles, cfg: TrainConfig) -> str:
    return (
        f"To restart N_z={cfg.nz} from scratch on purpose, delete {files.folder / files.stem}.* "
        f"and run `{vaerepro_command('reproduce')} --resume {files.folder}` again "
        "(--overwrite restarts the whole sweep)."
    )


def _csv_samples(files: RunFiles) -> list[int]:
    """Sample counts of the CSV's rows ([] when it is absent or has no rows)."""
    if not files.csv.exists() or not files.csv.read_text().strip().count("\n"):
        return []
    return [int(s) for s in read_csv(files.csv).samples]


def _trusted_rows(files: RunFiles, meta: dict) -> str:
    """Which CSV rows a checkpoint recorded in `meta` vouches for, in words."""
    recorded = [c["samples"] for c in meta.get("checkpoints", [])]
    rows = [s for s in _csv_samples(files) if recorded and s <= max(recorded)]
    if not rows:
        return f"{files.csv.name} holds no row written before the last recorded checkpoint."
    return f"{files.csv.name} is trustworthy up to its row at samples={rows[-1]}."


def load_checkpoint(
    files: RunFiles, meta: dict, cfg: TrainConfig, device: torch.device | None
) -> dict:
    """The checkpoint of `files`, verified against the checksums in `meta` (its JSON), loaded
    on the CPU as tensors and plain data. RunFolderError naming the file (and what to do)
    when it is corrupted, unreadable, of another config, or from another device type."""
    hint = restart_hint(files, cfg)
    if "checkpoints" not in meta:
        raise RunFolderError(
            f"{files.ckpt} cannot be resumed: {files.json.name} records no checksum for it "
            f"(written by an older vaerepro). {hint}"
        )
    try:
        ckpt = load_torch(files.ckpt, [c["sha256"] for c in meta["checkpoints"]], cfg)
    except RunFolderError as err:
        raise RunFolderError(f"{err}. {_trusted_rows(files, meta)} {hint}") from err
    keys = CHECKPOINT_KEYS | ({"chains"} if cfg.method == "mcem" else set())
    if set(ckpt) != keys:
        missing = sorted(keys - set(ckpt))
        unknown = ", ".join(sorted(map(repr, set(ckpt) - keys)))[:200]
        raise RunFolderError(f"{files.ckpt} lacks {missing} or has unknown keys {unknown}. {hint}")
    parse_config(ckpt["config"], files.ckpt)
    if diff := config_diff(ckpt["config"], cfg.to_dict()):
        raise RunFolderError(f"{files.ckpt} was written by a different config: " + "; ".join(diff))
    csv = pd.DataFrame(columns=CSV_COLUMNS)
    if files.csv.exists():
        csv = read_csv(files.csv, cfg, meta)
    if problem := checkpoint_problem(ckpt, cfg, meta, csv):
        raise RunFolderError(f"{files.ckpt} does not hold what its run wrote: {problem}. {hint}")
    if device is not None and ckpt["device"] != device.type:  # one of DEVICE_TYPES, checked
        raise RunFolderError(
            f"{files.ckpt} was written on a {ckpt['device']} device; resuming it on "
            f"{device.type} would not continue the same run. Resume with --device "
            f"{shlex.quote(ckpt['device'])}. {hint}"
        )
    return ckpt


def run_status(
    files: RunFiles,
    cfg: TrainConfig,
    resume: bool,
    overwrite: bool,
    device: torch.device | None = None,
) -> str:
    """What to do with one model's files: "new", "resume" or "skip" (already finished).

    Raises RunFolderError, before any work, when the folder holds a different or unfinished
    run and neither --resume nor --overwrite says what to do with it, or when files needed to
    resume are missing or fail their checks (the checkpoint is verified here).
    """
    if overwrite:
        return "new"
    if not files.json.exists():
        leftovers = [p.name for p in (files.csv, files.ckpt, files.weights) if p.exists()]
        if leftovers:
            raise RunFolderError(
                f"{files.json} is missing, but {', '.join(leftovers)} exist in {files.folder}; "
                f"vaerepro neither guesses which run they belong to nor deletes them. "
                + restart_hint(files, cfg)
            )
        return "new"
    meta = read_model_json(files.json)
    diff = config_diff(meta["config"], cfg.to_dict())
    if diff:
        raise RunFolderError(
            f"{files.json} holds a run with a different config:\n  "
            + "\n  ".join(diff)
            + "\nUse another --out, or --overwrite to replace it."
        )
    if meta.get("status") == "finished":
        if resume:
            return "skip"
        raise RunFolderError(f"{files.json} is a finished run; use --overwrite to replace it.")
    if not resume:
        raise RunFolderError(
            f"{files.json} holds an unfinished run; continue it with --resume "
            f"{files.folder} or replace it with --overwrite."
        )
    if files.ckpt.exists():
        load_checkpoint(files, meta, cfg, device)
    elif _csv_samples(files):
        raise RunFolderError(
            f"{files.ckpt} is missing, but {files.csv.name} has rows up to samples="
            f"{_csv_samples(files)[-1]}: resuming would silently start N_z={cfg.nz} again at 0 "
            f"and rewrite its CSV. " + restart_hint(files, cfg)
        )
    return "resume"


def folder_conflicts(out: Path, sweep: Sweep, resume: bool, overwrite: bool) -> None:
    """RunFolderError, before any work, when a new sweep would land in a folder that holds
    something else: another sweep (its run.json differs: listed), model files no run.json
    accounts for, files of its own but no run.json (not a run folder: a new sweep goes into a
    new or empty folder, or a run folder), or, for --overwrite, a run.json that is not a
    vaerepro sweep (vaerepro deletes only files it wrote). --resume passes."""
    if resume or not out.is_dir():
        return
    record = out / RUN_JSON
    if record.exists():
        recorded = _recorded_sweep(record, overwrite)
        if overwrite:
            return
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
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if OWN_MODEL_FILE.match(n) and n.rsplit(".", 1)[0] not in ours]
    if foreign and not overwrite:
        raise RunFolderError(
            f"{out} holds model files that its {RUN_JSON} does not list: {', '.join(foreign)}. "
            "A run folder holds one sweep: use another --out, or --overwrite to replace them."
        )
    if not record.exists() and (others := [n for n in names if not n.startswith(".")]):
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise RunFolderError(
            f"--out {out} is not empty ({shown}) and is not a vaerepro run folder (no "
            f"{RUN_JSON}); a new sweep goes into a new or empty folder, so that nothing else "
            "lands in it silently and --overwrite never deletes what vaerepro did not write. "
            "Choose another --out (e.g. a new subfolder of it)."
        )


def _recorded_sweep(record: Path, overwrite: bool) -> Sweep:
    """The sweep `record` (a run.json) holds; for --overwrite, a RunFolderError saying that
    nothing is deleted when it is not a vaerepro sweep."""
    try:
        return read_run_json(record)[0]
    except RunFolderError as err:
        if not overwrite:
            raise
        raise RunFolderError(
            f"--overwrite refused: {record} is not a vaerepro sweep ({err}). vaerepro deletes "
            f"only files it wrote, so it deletes nothing in {record.parent}; choose another "
            "--out, or move the folder's files away yourself."
        ) from err


def resume_conflicts(run: Path, sweep: Sweep, given: dict[str, object]) -> None:
    """UsageError listing every option in `given` (option name -> value; absent or None: not
    given) that contradicts the sweep recorded in `run`, which --resume continues."""
    recorded, differ = sweep.base, []
    lists = {"--nz": sweep.nzs, "--method": sweep.methods, "--seed(s)": sweep.seeds}
    for option, value in given.items():
        if value is None:
            continue
        if option == "--out":
            if Path(value).resolve() != run.resolve():
                differ.append(f"--out {value} (the run is in {run})")
        elif option == "--preset":
            if value != sweep.preset:
                differ.append(f"--preset {value} (recorded: {sweep.preset})")
        elif option in lists:
            if sorted(value) != sorted(lists[option]):
                shown = " ".join(map(str, value))
                differ.append(f"{option} {shown} (recorded: {list(lists[option])})")
        elif value != (old := getattr(recorded, option[2:].replace("-", "_"))):
            differ.append(f"{option} {value} (recorded: {old})")
    if differ:
        raise UsageError(
            f"--resume {run} continues the recorded sweep, but these options differ "
            f"from it: {'; '.join(differ)}. Drop them to continue the run as recorded, or start "
            "a new run with another --out."
        )


def check_output_folder(out: Path, label: str, plot: bool) -> None:
    """UsageError, before any work, when `out` (or its figures/ folder, if plotting) is a
    file, or `out` cannot be written. Writability is probed with a temporary file of ours,
    removed at once (permission bits do not tell, e.g. for root or a read-only mount).
    RunFolderError when `out`, its figures/ or a file vaerepro would write or delete there is
    a symbolic link (`refuse_links_in_run`)."""
    refuse_links_in_run(out)
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


class ModelRecord:
    """One model's files and its JSON metadata (config, versions, device, status, the
    checkpoints' checksums). Made without touching a file; `resume_into` or `discard_old`,
    then `record_start`, tie it to its files."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: torch.device, preset):
        self.cfg, self.device = cfg, device
        self.files = RunFiles.of_config(out_dir, cfg)
        self.meta = {
            "config": cfg.to_dict(),
            "preset": preset,
            "seed": cfg.seed,
            "status": "running",
            "started": now(),
            **environment_info(device),
        }

    def recorded_selection(self) -> dict | None:
        """The --lr-select choice of the run this model resumes (None without a checkpoint,
        whose run is started afresh); RunFolderError when its JSON's choice is not one of the
        config's candidates."""
        if not self.files.ckpt.exists():
            return None
        selection = read_model_json(self.files.json).get("lr_selection")
        chosen = selection.get("chosen") if isinstance(selection, dict) else None
        if chosen not in self.cfg.lr_select or isinstance(chosen, bool):
            raise RunFolderError(
                f"{self.files.json} records no --lr-select choice among {list(self.cfg.lr_select)}"
                f" (lr_selection: {selection!r:.100}). " + restart_hint(self.files, self.cfg)
            )
        return selection

    def discard_old(self) -> None:
        """A fresh start: remove an earlier run's checkpoint and weights, which must never be
        picked up later."""
        self.files.ckpt.unlink(missing_ok=True)
        self.files.weights.unlink(missing_ok=True)

    def resume_into(self, state: TrainingState) -> None:
        """Continue `state` from the model's verified checkpoint, if it has one."""
        if not self.files.ckpt.exists():
            return
        old = read_model_json(self.files.json)
        ckpt = load_checkpoint(self.files, old, self.cfg, self.device)
        try:
            state.load_state_dict(ckpt)
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise RunFolderError(
                f"{self.files.ckpt} does not fit this model: {err}. "
                + restart_hint(self.files, self.cfg)
            ) from err
        self.meta["started"] = old.get("started", self.meta["started"])
        self.meta["checkpoints"] = old["checkpoints"]
        self.meta["resumed"] = now()

    def record_start(self, gradient: str, rows: list[dict]) -> None:
        """Write the JSON (recording how the gradient is computed) and the CSV, which drops
        any rows past the checkpoint."""
        self.meta["gradient"] = gradient
        write_json(self.meta, self.files.json)
        write_csv(pd.DataFrame(rows, columns=CSV_COLUMNS), self.files.csv)

    def checkpoint(self, state: TrainingState, samples: int, wall_s: float, status: str) -> None:
        """Write the JSON (recording the checkpoint's SHA-256 and `status`), the checkpoint,
        then the CSV. In this order a kill at any moment leaves a checkpoint whose checksum is
        recorded (the JSON keeps the last two) and a CSV without rows the checkpoint lacks."""
        data = torch_bytes(state.state_dict(samples, wall_s))
        entry = {"samples": samples, "sha256": sha256(data)}
        self.meta["checkpoints"] = [*self.meta.get("checkpoints", [])[-1:], entry]
        self.meta["status"] = status
        if status == "interrupted":
            self.meta["interrupted"] = now()
        write_json(self.meta, self.files.json)
        atomic_write_bytes(self.files.ckpt, data)
        write_csv(pd.DataFrame(state.rows, columns=CSV_COLUMNS), self.files.csv)

    def finish(self, state: TrainingState, samples: int, trained_with: list[str]) -> pd.DataFrame:
        """Write the final weights, then the JSON that records their checksum; the CSV rows."""
        data = torch_bytes({"model": state.weights(), "config": self.cfg.to_dict()})
        atomic_write_bytes(self.files.weights, data)
        last = state.rows[-1]
        self.meta.update(
            status="finished",
            weights_sha256=sha256(data),
            samples_done=samples,
            wall_s=last["wall_s"],
            finished=now(),
            final={k: last[k] for k in FINAL_KEYS if math.isfinite(last[k])},
            **state.latent_usage(),
        )
        if len(trained_with) > 1:
            self.meta["stacked_with"] = trained_with
        write_json(self.meta, self.files.json)
        return pd.DataFrame(state.rows, columns=CSV_COLUMNS)


def load_model(files: RunFiles, device: torch.device | str = "cpu") -> VAE:
    """The final weights of a finished run, as a VAE in eval mode.

    Loaded as tensors only (weights_only: no code from the file runs) and checked against the
    SHA-256 in the model's JSON (older JSONs record none); RunFolderError naming the file.
    """
    if not files.weights.exists():
        raise RunFolderError(f"final weights {files.weights} are missing (unfinished run?)")
    meta = read_model_json(files.json)
    recorded, cfg = meta.get("weights_sha256"), parse_config(meta["config"], files.json)
    state = load_torch(files.weights, None if recorded is None else [recorded], cfg)
    if set(state) != {"model", "config"}:
        held = sorted(map(repr, state))
        raise RunFolderError(f"{files.weights} holds {held!s:.200}, not model and config")
    parse_config(state["config"], files.weights)
    if diff := config_diff(state["config"], meta["config"]):
        raise RunFolderError(f"{files.weights} is of another config than its JSON: {diff[0]}")
    model = VAE.from_config(cfg).to(getattr(torch, cfg.dtype))  # the precision it trained in
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise RunFolderError(f"{files.weights} does not fit its config: {err}") from err
    return model.to(device).eval()
