"""Replacing a folder as a whole: build the new content in a folder beside it (same parent,
`.NAME.vaerepro-new-XXXXXXXX`), then put it in place in one step (Linux exchanges the two
folders with renameat2; elsewhere the old folder is renamed aside first, `-old-`, and put back
by the next run if a kill came between the two renames). A kill at any moment leaves the old
folder or the new one, whole; `clean_leftovers` removes what a killed run left beside it.
Deleting is limited to plain files whose names the caller owns (`own`), vaerepro's temporary
files, and files carried over into the new folder (the same file or equal bytes)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from vaerepro.core.errors import WriteFailed
from vaerepro.runs.layout import OWN_TEMP

BUILD_MARK = ".vaerepro-"  # .NAME.vaerepro-new-XXXXXXXX (built), -old- (replaced)


def leftovers(out: Path) -> list[tuple[str, Path]]:
    """(kind "new" or "old", folder) that killed runs left beside `out`."""
    mark = re.escape(f".{out.name}{BUILD_MARK}")
    pattern = re.compile(rf"^{mark}(new|old)-[0-9a-f]{{8}}$")
    if not out.parent.is_dir():
        return []
    found = [(pattern.match(p.name), p) for p in out.parent.iterdir()]
    return [(m[1], p) for m, p in found if m and p.is_dir() and not p.is_symlink()]


def clean_leftovers(out: Path, own: Callable[[str], bool]) -> None:
    """After a kill: put back a previous folder that was moved aside (where folders cannot
    be exchanged in one step), and discard the folders a killed run built or replaced."""
    left = leftovers(out)
    old = sorted(p for kind, p in left if kind == "old")
    if old and not out.exists():
        try:
            os.rename(old[-1], out)
        except OSError as err:
            raise WriteFailed(f"cannot put {old[-1]} back as {out}: {err}") from err
    for _, folder in leftovers(out):
        discard(folder, out, own)


def discard(folder: Path, out: Path, own: Callable[[str], bool]) -> None:
    """Remove a folder beside `out` that a run built or replaced: only plain files of the
    caller's own names (`own`) or temporary files, and files carried over into `out` (the same file,
    or equal bytes); then the folder, if that emptied it (else it stays, with what is not
    ours)."""
    for entry in os.scandir(folder):
        path = Path(entry.path)
        if entry.is_file(follow_symlinks=False) and (
            own(entry.name) or OWN_TEMP.match(entry.name) or _carried(path, out)
        ):
            path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def _carried(path: Path, out: Path) -> bool:
    """Whether `path` is also in `out`, as the same file or with the same bytes."""
    twin = out / path.name
    try:
        if twin.is_symlink() or not twin.is_file():
            return False
        return os.path.samefile(path, twin) or path.read_bytes() == twin.read_bytes()
    except OSError:
        return False


AT_FDCWD, RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two folders in one step (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    path, fd = ctypes.c_char_p, ctypes.c_int
    renameat2.argtypes = [fd, path, fd, path, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap(build: Path, out: Path) -> Path | None:
    """Put the folder `build` in place of `out` in one step: a rename, or an exchange of the
    two folders; returns where the previous `out` now is (None: there was none). Where folders
    cannot be exchanged, `out` is first renamed aside: a kill between the two renames leaves
    it whole beside `out`, and the next `clean_leftovers` puts it back."""
    try:
        old = None
        if not out.exists():
            os.rename(build, out)
        elif _exchange(build, out):
            old = build
        else:
            old = build.with_name(build.name.replace(f"{BUILD_MARK}new-", f"{BUILD_MARK}old-"))
            os.rename(out, old)
            try:
                os.rename(build, out)
            except OSError:
                os.rename(old, out)
                raise
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise WriteFailed(f"cannot put the new {out.name} in place of {out}: {err}") from err
    return old


def new_build(out: Path) -> Path:
    """A new, empty folder beside `out` (same parent, so that it can take its place)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        build = out.with_name(f".{out.name}{BUILD_MARK}new-{secrets.token_hex(4)}")
        build.mkdir()
    except OSError as err:
        raise WriteFailed(f"cannot create a folder beside {out}: {err}") from err
    return build


def carry(foreign: dict[str, Path], build: Path) -> None:
    """Files of the previous folder that are not the caller's (`foreign`: name -> path),
    into the new one: hard links (the same files), or copies where the file system has none."""
    for name, path in sorted(foreign.items()):
        try:
            try:
                os.link(path, build / name)
            except OSError:
                shutil.copy2(path, build / name)
        except OSError as err:
            raise WriteFailed(f"cannot carry {path} over into {build}: {err}") from err
