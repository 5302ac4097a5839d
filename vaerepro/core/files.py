"""Atomic file writes and checksums, for the data cache and the run store alike."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from vaerepro.core.errors import WriteFailed

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
