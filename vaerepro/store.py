"""Run folders on disk: file names, atomic writes, metadata and reading runs back.

A run folder holds, per model, `nz{N_z}-seed{seed}.csv` (one row per evaluation),
`.json` (config, versions, device, git commit, status), `.ckpt` (resumable state at the
last evaluation) and, once finished, `.pt` (final weights).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import Sweep, TrainConfig, upgrade

CSV_COLUMNS = [
    "samples",
    "train_elbo",
    "test_elbo",
    "train_loglik",
    "train_kl",
    "test_loglik",
    "test_kl",
    "wall_s",
    "train_samples_per_s",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


class RunFolderError(RuntimeError):
    """A run folder is missing files, malformed, or holds a different run."""


class WriteFailed(RunFolderError):
    """A file could not be written (full disk, read-only folder, ...); nothing was replaced."""


# Temporary files are named `.{target}.vaerepro-{random}.tmp`: cleanup removes only these.
TMP_MARK = ".vaerepro-"
OWN_TEMP = re.compile(r"^\..+\.vaerepro-[A-Za-z0-9_]+\.tmp$")
# What `reproduce` writes into a run folder (and `--overwrite` may therefore remove).
OWN_MODEL_FILE = re.compile(r"^nz\d+-seed\d+\.(csv|json|ckpt|pt)$")
RUN_JSON = "run.json"  # the sweep (Sweep): preset, N_z, seeds, one config per model
OWN_RUN_FILES = (RUN_JSON, "REPORT.md", "comparison.csv", "comparison.md")
OWN_FIGURE = re.compile(
    r"^(fig2\.(png|pdf)|components\.png|"
    r"(recon|samples|interpolation|latent|kl_per_dim)_nz\d+\.png)$"
)


@dataclass(frozen=True)
class RunFiles:
    """The files of one model (one N_z and seed) in a run folder."""

    folder: Path
    stem: str  # "nz{N_z}-seed{seed}"

    @classmethod
    def of(cls, folder: str | os.PathLike, nz: int, seed: int) -> RunFiles:
        return cls(Path(folder), f"nz{nz}-seed{seed}")

    @property
    def csv(self) -> Path:
        return self.folder / f"{self.stem}.csv"

    @property
    def json(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def ckpt(self) -> Path:
        return self.folder / f"{self.stem}.ckpt"

    @property
    def weights(self) -> Path:
        return self.folder / f"{self.stem}.pt"


# Run folders this process holds locked -> the open descriptor of the folder it locked.
_HELD: dict[Path, int] = {}


def _check_held(folder: Path) -> None:
    """RunFolderError when a locked run folder was deleted or replaced under the run."""
    fd = _HELD.get(folder.absolute())
    if fd is None:
        return
    held = os.fstat(fd)
    try:
        st = os.stat(folder)
        # st_nlink 0: the locked folder was removed (its inode number may be reused)
        same = (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino) and held.st_nlink > 0
    except FileNotFoundError:
        same = False
    if not same:
        raise RunFolderError(
            f"run folder {folder} was deleted or replaced while this run was writing to it; "
            "the run stopped without writing anything more. Restore the folder and resume "
            "with --resume, or start again with another --out."
        )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, rename: never a half-written file.

    WriteFailed (naming `path`) when the disk is full or the folder not writable; the previous
    file, if any, is left as it was. Into a locked run folder that vanished: RunFolderError
    (the folder is not recreated).
    """
    if path.parent.absolute() in _HELD:
        _check_held(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give results the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _check_held(path.parent)
        raise WriteFailed(f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files a killed vaerepro writer left behind (by their name
    pattern; the files they were to replace are intact). Other files are left alone."""
    for tmp in folder.glob(f".*{TMP_MARK}*.tmp"):
        if OWN_TEMP.match(tmp.name) and tmp.is_file():
            tmp.unlink(missing_ok=True)


def remove_own_files(folder: Path) -> list[Path]:
    """Delete what `reproduce` and `plot` write into a run folder (model files, run.json,
    report, comparison, figures by their names); returns the removed paths. For --overwrite."""
    removed = [
        p
        for p in folder.iterdir()
        if p.is_file() and (OWN_MODEL_FILE.match(p.name) or p.name in OWN_RUN_FILES)
    ]
    figures = folder / "figures"
    if figures.is_dir():
        removed += [p for p in figures.iterdir() if p.is_file() and OWN_FIGURE.match(p.name)]
    for p in removed:
        p.unlink(missing_ok=True)
    if figures.is_dir() and not any(figures.iterdir()):
        figures.rmdir()
    return removed


def _lock_holder(st: os.stat_result) -> str:
    """pid holding an flock on the file of `st`, from /proc/locks (Linux); '?' elsewhere."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == want:
                return parts[4]
    except OSError:
        pass
    return "?"


@contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive lock on a run folder; RunFolderError if another process holds it.

    The lock is an flock on the folder itself, not on a file in it: no file is left behind,
    none can be deleted to get round it, and the kernel drops it when its process dies. While
    held, writes into the folder check that it is still the folder that was locked.
    """
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run folder {folder} is a file, not a folder; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise WriteFailed(f"cannot create or open run folder {folder}: {err.strerror}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"{folder} is in use by another vaerepro process (pid "
                f"{_lock_holder(os.fstat(fd))}); wait for it to end or use another --out"
            ) from None
        key = folder.absolute()
        _HELD[key] = fd
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the flock


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.6f").encode())


def write_json(obj: dict, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def torch_bytes(obj) -> bytes:
    """`torch.save` of obj (tensors and plain data) as bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes())


def load_torch(path: Path, expected_sha256: list[str] | None) -> dict:
    """A `.ckpt` or `.pt` file, verified and loaded on the CPU with weights_only=True (no
    code from the file runs). expected_sha256: the checksums recorded for it (any may match);
    None: none recorded (a legacy file, integrity unverified). RunFolderError naming the file
    when it is missing, differs from its checksum, or is not a plain-data torch file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunFolderError(f"cannot read {path}: {err.strerror}") from err
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
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"cannot read run metadata {path}: {err}") from err
    if not isinstance(obj, dict):
        raise RunFolderError(f"run metadata {path} is a JSON {type(obj).__name__}, not an object")
    return obj


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _field_ok(value, annotation: str) -> bool:
    """Does a JSON value fit a TrainConfig field annotation such as "float | None"?"""
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
    cfg = TrainConfig(**obj)
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
    "fused_with_nz": (list,),
    "checkpoints": (list,),  # the last two: [{"samples": int, "sha256": hex}, ...]
    "weights_sha256": (str,),
}
RUN_FIELDS: dict[str, tuple[type, ...]] = {
    "preset": (str, type(None)),
    "nz": (list,),
    "seeds": (list,),
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
    """A model's metadata, validated: known fields of the right types, a valid config, a
    known status (none: a plain result) and well-formed checksums; RunFolderError naming the
    file otherwise."""
    meta = read_json(path)
    _check_fields(meta, MODEL_FIELDS, ("config",), path)
    parse_config(meta["config"], path)
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
    return meta


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
    for key, values in (("nz", sweep.nzs), ("seeds", sweep.seeds)):
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
        "configs": [c.to_dict() for c in sweep.configs],
        "data_root": data_root,
    }
    write_json(record, folder / RUN_JSON)


def read_csv(path: Path) -> pd.DataFrame:
    """A run CSV with every contract column; RunFolderError naming the file otherwise."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise RunFolderError(f"cannot read run CSV {path}: {err}") from err
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise RunFolderError(f"run CSV {path} lacks columns {missing}")
    if df.empty:
        raise RunFolderError(f"run CSV {path} has no rows")
    if not all(pd.api.types.is_numeric_dtype(df[c]) for c in CSV_COLUMNS):
        raise RunFolderError(f"run CSV {path} has non-numeric values")
    return df


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict:
    """Commit and dirty flag of the source checkout this package runs from (None outside git)."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=src, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if commit else None}


def environment_info(device: torch.device) -> dict:
    """Versions, device and git state recorded with every result."""
    import torchvision

    from . import __version__

    return {
        "device": {
            "type": device.type,
            "name": device_name(device),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pandas": pd.__version__,
            "vaerepro": __version__,
        },
        "git": git_state(),
        "host": platform.node(),
        "command": sys.argv,
    }


def _has_rows(csv: Path) -> bool:
    return csv.exists() and csv.read_text().strip().count("\n") > 0


def load_run(folder: str | os.PathLike) -> list[tuple[dict, pd.DataFrame]]:
    """Every model of a run folder as (metadata, CSV rows), sorted by N_z, then seed.

    With a run.json, exactly the models it lists that have logged an evaluation (other files
    in the folder are not read); without one (older folders), every nz*-seed*.json. RunFolderError
    naming the file when the folder has no models or a file is missing/malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"run folder {folder} does not exist")
    if (folder / RUN_JSON).exists():
        sweep, _ = read_run_json(folder / RUN_JSON)
        metas = [RunFiles.of(folder, c.nz, c.seed).json for c in sweep.configs]
        metas = [p for p in metas if p.exists() and _has_rows(p.with_suffix(".csv"))]
    else:
        metas = sorted(folder.glob("nz*-seed*.json"))
    if not metas:
        raise RunFolderError(f"run folder {folder} holds no model yet (no nz*-seed*.json)")
    runs = []
    for path in metas:
        meta = read_model_json(path)
        csv = path.with_suffix(".csv")
        if not csv.exists():
            raise RunFolderError(f"run CSV {csv} is missing (its metadata {path.name} exists)")
        runs.append((meta, read_csv(csv)))
    return sorted(runs, key=lambda r: (r[0]["config"]["nz"], r[0]["config"]["seed"]))
