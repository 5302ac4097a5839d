"""Writing into run folders: atomic writes (temporary file, fsync, rename), the folder's
lock, never a write or a deletion through a symbolic link, removing only the files vaerepro
wrote, and `--overwrite`'s old sweep kept aside until the new one has a checkpoint."""

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
    REPLACED,
    RUN_JSON,
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
    (the folder is not recreated). RunFolderError when `path` or its folder is a symbolic
    link: nothing is written through a link, nor a link replaced.
    """
    refuse_links([path.parent, path])
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


def refuse_links(paths) -> None:
    """RunFolderError naming every path of `paths` that is a symbolic link (dangling or a
    loop included): vaerepro never writes or deletes through a link, nor replaces one."""
    links = [p for p in paths if p.is_symlink()]
    if links:
        named = ", ".join(f"{p} (a link to {os.readlink(p)})" for p in links)
        raise RunFolderError(
            f"{named}: vaerepro writes and deletes only real files in the folder you name, "
            "never through a symbolic link. Remove the link (or copy what it points to into "
            "its place), or choose another folder."
        )


def _files(folder: Path) -> list[Path]:
    """Files and links (never followed) in `folder`; [] when it is not a real folder."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_symlink() or p.is_file()]


def own_files(folder: Path) -> list[Path]:
    """The files a sweep's `reproduce` and `plot` write into `folder`, by their names (model
    files, run.json, report, comparison, figures/'s figures); links listed, not followed."""
    found = [p for p in _files(folder) if OWN_MODEL_FILE.match(p.name) or p.name in OWN_RUN_FILES]
    return found + [p for p in _files(folder / "figures") if OWN_FIGURE.match(p.name)]


def refuse_links_in_run(folder: Path, *names: str) -> None:
    """Before any work: RunFolderError when the run folder, its figures/, the aside folder of
    an --overwrite, a file vaerepro would write or delete there, or one of `names`, is a
    symbolic link (each named)."""
    fixed = [folder, folder / "figures", folder / REPLACED, *(folder / n for n in names)]
    refuse_links(fixed + own_files(folder) + own_files(folder / REPLACED))


def remove_own_files(folder: Path) -> list[Path]:
    """Delete what `reproduce` and `plot` write into a run folder (`own_files`; a link is
    removed, never followed); an emptied figures/ goes too. Returns the removed paths."""
    removed = own_files(folder)
    for p in removed:
        p.unlink(missing_ok=True)
    _rmdir_if_empty(folder / "figures")
    return removed


def _rmdir_if_empty(folder: Path) -> None:
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()


# --overwrite keeps one complete sweep on disk at every moment. It moves the old sweep's files
# into REPLACED (renames inside the run folder), marks REPLACED complete, then writes the new
# sweep; the new sweep's first checkpoint drops REPLACED (`drop_replaced`). A run or `plot`
# that finds REPLACED settles it first (`settle_replaced`).
_ALL_MOVED = "ALL-MOVED"  # in REPLACED: every file of the old sweep is in it


def move_aside(folder: Path) -> None:
    """Move the old sweep's files into folder/REPLACED, then mark it complete."""
    aside = folder / REPLACED
    try:
        aside.mkdir(exist_ok=True)
        for p in own_files(folder):
            target = aside / p.relative_to(folder)
            target.parent.mkdir(exist_ok=True)
            os.replace(p, target)
        _rmdir_if_empty(folder / "figures")
        write_atomically(aside / _ALL_MOVED, b"every file of the replaced sweep is here\n")
    except OSError as err:
        raise WriteFailed(
            f"cannot move the old sweep of {folder} aside into {aside}: {err.strerror or err}"
        ) from err


def drop_replaced(folder: Path) -> None:
    """Delete the old sweep kept aside (its files by their names, then the mark), once the
    new sweep has a checkpoint. Does nothing when there is none."""
    aside = folder / REPLACED
    if aside.is_symlink() or not aside.is_dir():
        return
    for p in [*own_files(aside), aside / _ALL_MOVED]:
        p.unlink(missing_ok=True)
    remove_stale_temps(aside)
    for d in (aside / "figures", aside):
        _rmdir_if_empty(d)


def _restore_replaced(folder: Path) -> None:
    """Put the old sweep back: the new sweep's files (it has no checkpoint) go, then the mark,
    then the old files move back (a kill meanwhile leaves the move to finish next time)."""
    aside = folder / REPLACED
    if (aside / _ALL_MOVED).exists():
        remove_own_files(folder)
        (aside / _ALL_MOVED).unlink()
    for p in own_files(aside):
        target = folder / p.relative_to(aside)
        target.parent.mkdir(exist_ok=True)
        os.replace(p, target)
    remove_stale_temps(aside)
    for d in (aside / "figures", aside):
        _rmdir_if_empty(d)


def _has_checkpoint(folder: Path) -> bool:
    """Whether a model JSON in `folder` records a checkpoint whose file exists."""
    for p in _files(folder):
        if OWN_MODEL_FILE.match(p.name) and p.suffix == ".json":
            try:
                recorded = json.loads(p.read_text()).get("checkpoints")
            except (OSError, ValueError, AttributeError):
                continue
            if recorded and p.with_suffix(".ckpt").is_file():
                return True
    return False


def settle_replaced(folder: Path) -> str | None:
    """What an interrupted --overwrite left (call under the folder's lock): when every old
    file was moved aside and the new sweep has a checkpoint, the old sweep is deleted; else
    the old sweep is restored and the new one's files removed. Returns what was done, in
    words (None: nothing to settle)."""
    aside = folder / REPLACED
    if aside.is_symlink() or not aside.is_dir():
        return None
    if (aside / _ALL_MOVED).exists() and _has_checkpoint(folder):
        drop_replaced(folder)
        return f"{folder}: deleted the sweep an interrupted --overwrite had replaced"
    _restore_replaced(folder)
    return (
        f"{folder}: an --overwrite was interrupted before the new sweep's first checkpoint; "
        "the old sweep is restored"
    )


def _run_stamp(folder: Path) -> tuple[bool, tuple[int, int] | None]:
    try:
        st = (folder / RUN_JSON).stat()
        stamp = (st.st_ino, st.st_mtime_ns)
    except OSError:
        stamp = None
    return (folder / REPLACED).exists(), stamp


@contextmanager
def unchanging(folder: Path):
    """For commands that only read a run folder: RunFolderError when its sweep is being
    replaced (--overwrite) before the block, or run.json changed while the block read."""
    before = _run_stamp(folder)
    changing = (
        f"{folder}'s sweep is being replaced by `reproduce --overwrite` (the old one is kept "
        f"in {folder / REPLACED} until the new one has a checkpoint)"
    )
    if before[0]:
        raise RunFolderError(
            f"{changing}; try again in a moment. If no run is writing there, `vaerepro plot "
            f"{folder}` or `reproduce --resume` settles it."
        )
    yield
    if _run_stamp(folder) != before:
        raise RunFolderError(f"{folder} changed while it was read: {changing}; try again")


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
