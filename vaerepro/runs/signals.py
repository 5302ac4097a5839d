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
    # a --jobs worker starts with these blocked (`blocked_stops`): they arrive now
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        yield lambda: received[0] if received else 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def blocked_stops() -> Iterator[None]:
    """Within the block the STOP_SIGNALS wait (blocked) instead of arriving. A process
    started within it inherits them blocked, so that a signal during its start (a Ctrl-C
    while a --jobs worker imports torch) waits for its `stop_signals`, which checkpoints."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class Stopped(BaseException):
    """A stop signal outside a training loop (`stops_raise`); nothing was half-written."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stops_raise() -> Iterator[None]:
    """Within the block a stop signal raises Stopped (SIGINT too, instead of a
    KeyboardInterrupt), which the command line turns into one line and 128 + the signal;
    a training loop's `stop_signals` takes over inside it."""

    def stop(signum, frame):
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
