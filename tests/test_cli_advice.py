"""Advice the tool prints works when followed literally; typos get the nearest option."""

import signal
import subprocess
import sys

import pandas as pd
import pytest
from helpers import TINY

from vaerepro.cli import main
from vaerepro.runs import provenance
from vaerepro.runs.records import read_model_json


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["reproduce", "--smaples", "1e6"], "--smaples: did you mean --samples?"),
        (["reproduce", "--seed", "0", "1"], "--seed takes one value; for several, use --seeds"),
        (["compare", "results/paper-1e7", "--att", "1e6"], "--att: did you mean --at?"),
    ],
)
def test_a_typo_gets_the_nearest_option(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and hint in err


def test_the_command_named_in_advice(monkeypatch, tmp_path):
    monkeypatch.delenv("NOX_CURRENT_SESSION", raising=False)
    script = tmp_path / "bin" / "vaerepro"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setattr(provenance.shutil, "which", lambda name: str(script))
    assert provenance.vaerepro_command("reproduce") == "vaerepro reproduce"
    # the same name on PATH is another installation: name this one's Python instead
    monkeypatch.setattr(provenance.shutil, "which", lambda name: "/usr/bin/vaerepro")
    assert provenance.vaerepro_command("plot") == f"{sys.executable} -m vaerepro plot"
    monkeypatch.setattr(sys, "argv", ["/x/vaerepro/__main__.py"])
    assert provenance.vaerepro_command("plot") == f"{sys.executable} -m vaerepro plot"
    monkeypatch.setenv("NOX_CURRENT_SESSION", "reproduce")
    assert provenance.vaerepro_command("reproduce") == "nox -s reproduce --"


@pytest.mark.slow
def test_resume_advice_runs_as_printed(tmp_path, data_root):
    """Stop a run with SIGINT, then run the printed "Resume with:" line in a shell, as is."""
    out = tmp_path / "run"
    argv = ["reproduce", "--nz", "3", *TINY, "--samples", "6000", "--out", str(out)]
    cmd = [sys.executable, "-m", "vaerepro", *argv, "--data-root", str(data_root)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    csv = out / "nz3-seed0.csv"
    while not (csv.exists() and len(pd.read_csv(csv)) >= 1):
        assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 128 + signal.SIGINT
    advice = [x for x in proc.stderr.read().splitlines() if x.startswith("Resume with: ")]
    assert len(advice) == 1
    resumed = subprocess.run(
        advice[0].removeprefix("Resume with: "), shell=True, cwd=tmp_path, capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert read_model_json(out / "nz3-seed0.json")["status"] == "finished"
    assert list(pd.read_csv(csv).samples) == [1000 * i for i in range(1, 7)]
