"""`python -m vaerepro`: a stop signal while the command line's modules import (torch,
pandas: seconds) ends it with one line, not a KeyboardInterrupt traceback; `main` then takes
over the signals."""

import os
import signal
import sys

from vaerepro.runs.signals import STOP_SIGNALS


def _stopped_while_starting(signum, frame):
    name = signal.Signals(signum).name
    print(f"vaerepro: stopped by {name} while starting; nothing was written", file=sys.stderr)
    os._exit(128 + signum)


for _s in STOP_SIGNALS:
    signal.signal(_s, _stopped_while_starting)

from vaerepro.cli import main  # noqa: E402

raise SystemExit(main())
