"""Writing into run folders: atomic writes (temporary file, fsync, rename), the folder's
lock, and removing only the files vaerepro wrote."""

from __future__ import annotations

import fcntl
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from vaerepro.core.errors import RunFolderError, WriteFailed
from vaerepro.core.files import TMP_MARK, write_atomically
from vaerepro.runs.layout import (
    OWN_FIGURE,
    OWN_MODEL_FILE,
    OWN_RUN_FILES,
    OWN_TEMP,
)

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
    """Write atomically (`files.write_atomically`): never a half-written file.

    WriteFailed (naming `path`) when the disk is full or the folder not writable; the previous
    file, if any, is left as it was. Into a locked run folder that vanished: RunFolderError
    (the folder is not recreated).
    """
    if path.parent.absolute() in _HELD:
        _check_held(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(path, data)
    except WriteFailed:
        _check_held(path.parent)
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


def lock_holder(folder: Path) -> str | None:
    """pid of the process holding `folder`'s lock; None when none does (or, off Linux, when
    /proc/locks cannot tell). For `vaerepro status`."""
    try:
        holder = _lock_holder(os.stat(folder))
    except OSError:
        return None
    return None if holder == "?" else holder


@contextmanager
def folder_lock(folder: Path, shared: bool = False):
    """Hold an exclusive lock on a run folder; RunFolderError if another process holds it.

    The lock is an flock on the folder itself, not on a file in it: no file is left behind,
    none can be deleted to get round it, and the kernel drops it when its process dies. While
    held, writes into the folder check that it is still the folder that was locked.
    shared=True: a `--jobs` worker's lock, shared with its parent (see `share_lock`), so that
    no other run takes the folder until every worker has ended.
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
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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


def share_lock(folder: Path) -> None:
    """Turn this process's exclusive lock on `folder` into a shared one, which `--jobs`
    workers then share: other runs stay refused while the parent or any worker lives."""
    fcntl.flock(_HELD[folder.absolute()], fcntl.LOCK_SH | fcntl.LOCK_NB)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.6f").encode())


def write_json(obj: dict, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def torch_bytes(obj) -> bytes:
    """`torch.save` of obj (tensors and plain data) as bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
