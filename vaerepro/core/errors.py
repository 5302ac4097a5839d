"""vaerepro's own error types. The CLI turns these, and only these, into a one-line message
and exit status 2; any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class VaereproError(Exception):
    """An error vaerepro explains to its user: the message says what is wrong and what to do."""


class UsageError(VaereproError, ValueError):
    """An invalid option, config value or combination of them."""


class DataError(VaereproError):
    """The MNIST files are missing, corrupted or malformed."""


class RunFolderError(VaereproError):
    """A run folder is missing files, malformed, or holds a different run."""


class WriteFailed(RunFolderError):
    """A file could not be written (full disk, read-only folder, ...); nothing was replaced."""


class OutOfMemory(VaereproError):
    """The machine ran out of memory for a step vaerepro names (loading MNIST, plotting)."""


class TrainingDiverged(VaereproError):
    """The loss or the parameters became NaN or infinite."""
