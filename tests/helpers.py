"""Helpers shared by the test modules: a run of seconds, and checks that a refusal is clean."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from vaerepro.analysis.reference import paper_elbo
from vaerepro.cli import main
from vaerepro.core.config import TrainConfig
from vaerepro.runs.layout import CSV_COLUMNS, RunFiles

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


def synthetic_sweep(folder: Path, nz: int, offsets, samples, method: str = "aevb") -> Path:
    """A finished run folder of one method and N_z and len(offsets) seeds: seed s logs the
    paper's curve of that method + offsets[s] on train and - offsets[s] on test. `samples`
    sets the evaluation grid (every gcd(samples) up to max(samples)): a finished model logs
    every evaluation of it (load_run checks), and -150 + offset where the paper has no value.
    """
    folder.mkdir(parents=True, exist_ok=True)
    every, budget = math.gcd(*map(int, samples)), int(max(samples))
    grid = np.arange(every, budget + 1, every)
    configs = [
        TrainConfig(nz=nz, seed=s, method=method, samples=budget, eval_every=every).to_dict()
        for s in range(len(offsets))
    ]
    for cfg, offset in zip(configs, offsets, strict=True):
        rows = {c: np.zeros(len(grid)) for c in CSV_COLUMNS}
        rows["samples"] = grid
        rows["train_elbo"] = np.nan_to_num(paper_elbo(nz, "train", grid, method), nan=-150) + offset
        rows["test_elbo"] = np.nan_to_num(paper_elbo(nz, "test", grid, method), nan=-150) - offset
        files = RunFiles.of_config(folder, cfg)
        pd.DataFrame(rows).to_csv(files.csv, index=False)
        files.json.write_text(json.dumps({"config": cfg}))
    (folder / "run.json").write_text(json.dumps({"preset": "paper", "configs": configs}))
    return folder
