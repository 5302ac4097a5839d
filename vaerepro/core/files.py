"""Atomic file writes and checksums, for the data cache and the run store alike."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from vaerepro.core.errors import RunFolderError, VaereproError, WriteFailed

# Temporary files are named `.{target}.vaerepro-{random}.tmp`: cleanup removes only these.
TMP_MARK = ".vaerepro-"

_UMASK = os.umask(0)  # read the process's umask (for the mode of new files) ...
os.umask(_UMASK)  # ... and set it back


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` (its folder must exist) via a temporary file in the same folder,
    fsync, rename, fsync of the folder: never a half-written file. WriteFailed naming `path`
    when the disk is full or the folder not writable; the previous file is left as it was."""
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
        raise WriteFailed(f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MB = 1 << 20


def read_regular(
    path: Path, cap: int, what: str, error: type[VaereproError] = RunFolderError
) -> bytes:
    """The bytes of `path`, which must be a regular file (a symlink to one is followed) of at
    most `cap` bytes; `error` naming the file (`what`: "run CSV", ...) otherwise. A FIFO,
    device (/dev/zero), socket or folder is refused before a byte is read: the file is
    stat'ed first and opened non-blocking (a FIFO cannot hang the open), then checked again
    on the open descriptor (it cannot be swapped in between)."""

    def refuse(reason: str) -> VaereproError:
        return error(f"{what} {path} {reason}; vaerepro reads only regular files")

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise refuse("is not a regular file (a FIFO, device, socket or folder?)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from err
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse("is not a regular file (a FIFO, device, socket or folder?)")
        if st.st_size > cap:
            raise error(
                f"{what} {path} is {st.st_size / MB:.1f} MB, more than a {what} of its kind can "
                f"be ({cap / MB:.1f} MB); it is not a file vaerepro wrote"
            )
        try:
            data = f.read(cap + 1)
        except OSError as err:
            raise error(f"cannot read {what} {path}: {err.strerror or err}") from err
    if len(data) > cap:  # grew while read
        raise error(f"{what} {path} grew past {cap / MB:.1f} MB while read; it is not ours")
    return data
