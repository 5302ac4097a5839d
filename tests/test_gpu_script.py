"""bench/gpu_run.sh, the prepared run for a lent GPU, in its dry run: the whole script on the
CPU with tiny sizes, both device calls, so that a GPU's 15 minutes are not spent on a typo."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 8  # what the GPU machine returns at most


STEPS = {
    "check": ["tests", "graphs", "baseline", "steps", "sweep-1e6"],
    "sweep": ["graphs", "paper-1e8", "steps"],
}


def _dry_run(stage: str, out: Path, data_root: Path) -> list[str]:
    """Run one stage (one device call) in its dry run; its summary's step names, each rc 0."""
    env = {**os.environ, "PYTHON": sys.executable, "VAEREPRO_DATA": str(data_root)}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_run.sh"), stage, str(out), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    assert all(line.split()[2] == "0" for line in summary), (out / "log.txt").read_text()
    assert len(list(out.iterdir())) <= MAX_FILES
    return [line.split()[0] for line in summary]


# one test per stage, as the device runs them: xdist runs the two side by side
@pytest.mark.slow
def test_gpu_script_check_dry_run_runs_every_step(tmp_path, data_root):
    out = tmp_path / "out"
    assert _dry_run("check", out, data_root) == STEPS["check"]
    assert "passed" in (out / "log.txt").read_text()
    with tarfile.open(out / "sweep-1e6.tar.gz") as tar:
        assert "sweep-1e6/figures/fig2.png" in tar.getnames()


@pytest.mark.slow
def test_gpu_script_sweep_dry_run_packs_the_results(tmp_path, data_root):
    out = tmp_path / "out"
    assert _dry_run("sweep", out, data_root) == STEPS["sweep"]
    with tarfile.open(out / "paper-1e8.tar.gz") as tar:
        members = tar.getnames()
        assert "paper-1e8/figures/fig2.png" in members
        assert not [m for m in members if m.endswith((".ckpt", ".pt"))]  # results only
        csv = pd.read_csv(tar.extractfile("paper-1e8/nz200-seed0.csv"))
    assert list(csv.samples) == [1000, 2000, 3000]
