"""Helpers shared by the test modules: a run of seconds, and checks that a refusal is clean."""

import hashlib
from pathlib import Path

from vaerepro.cli import main

TINY = [
    "--samples",
    "2000",
    "--eval-every",
    "1000",
    "--train-size",
    "2000",
    "--no-progress",
    "--no-plot",
    "--device",
    "cpu",
    "--jobs",  # one model at a time, in-process (tests/test_seeds.py tests --jobs 2)
    "1",
]


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under folder, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(argv: list[str], capsys, *messages: str) -> str:
    """Run the CLI in-process; assert exit status 2 and each message in stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    for message in messages:
        assert message in err, err
    assert "Traceback" not in err
    return err
