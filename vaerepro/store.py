"""Run folders on disk: file names, atomic writes, metadata and reading runs back.

A run folder holds, per model, `nz{N_z}-seed{seed}.csv` (one row per evaluation),
`.json` (config, versions, device, git commit, status), `.ckpt` (resumable state at the
last evaluation) and, once finished, `.pt` (final weights).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give results the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(folder: Path) -> None:
    """Delete temporary files a killed writer left behind (the renamed files are intact)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive lock on a run folder; RunFolderError if another process holds it.

    The lock is an flock on `.lock`: the kernel drops it when its process dies, so a killed
    run never leaves the folder locked.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunFolderError(
                f"{folder} is in use by another vaerepro process (pid {f.read().strip() or '?'})"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.6f").encode())


def write_json(obj: dict, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_torch(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunFolderError(f"cannot read run metadata {path}: {err}") from err


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


def load_run(folder: str | os.PathLike) -> list[tuple[dict, pd.DataFrame]]:
    """Every model in a run folder as (metadata, CSV rows), sorted by N_z.

    RunFolderError naming the file when the folder has no runs or a file is missing/malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"run folder {folder} does not exist")
    metas = sorted(folder.glob("nz*-seed*.json"))
    if not metas:
        raise RunFolderError(f"run folder {folder} holds no nz*-seed*.json files")
    runs = []
    for path in metas:
        meta = read_json(path)
        csv = path.with_suffix(".csv")
        if not csv.exists():
            raise RunFolderError(f"run CSV {csv} is missing (its metadata {path.name} exists)")
        runs.append((meta, read_csv(csv)))
    return sorted(runs, key=lambda r: r[0]["config"]["nz"])
