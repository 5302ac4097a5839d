"""Stop signals: a run stops at a step boundary, writes a checkpoint, and exits 128 + signal."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Interrupted(RuntimeError):
    """A stop signal arrived; a checkpoint of the current step was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum  # the process exits with 128 + signum, as if killed by it


# Signals that stop a run cleanly: Ctrl-C, schedulers and `timeout`/`docker stop` (TERM), a
# closed terminal (HUP), and the user signals some schedulers send before a time limit.
STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


@contextmanager
def stop_signals() -> Iterator[Callable[[], int]]:
    """Within the block, the STOP_SIGNALS only record their number instead of stopping the
    process mid-step; the yielded function returns the first one's number (0: none yet). A
    checkpoint is thus never of a half-applied update, and a second signal cannot interrupt
    the checkpoint write."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    previous = {
        s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS
    }
    try:
        yield lambda: received[0] if received else 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
