"""nox sessions: `nox -s reproduce -- [vaerepro reproduce options]` and `nox -s tests`.

Environments are reused between runs (torch is installed once per session environment).
"""

import os
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def _install(session: nox.Session, extras: str = "") -> None:
    # pip is a no-op when the environment already satisfies the project's requirements.
    session.install("-e", f".{extras}")


@nox.session
def reproduce(session: nox.Session) -> None:
    """Train the Fig. 2 sweep (all five N_z) and write CSV logs, metadata and weights."""
    _install(session)
    session.run("vaerepro", "reproduce", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Lint and run the test suite (MNIST from $VAEREPRO_DATA, default ../shared/data)."""
    _install(session, "[test]")
    env = {"VAEREPRO_DATA": os.environ.get("VAEREPRO_DATA", str(SHARED_DATA))}
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("pytest", *session.posargs, env=env)
