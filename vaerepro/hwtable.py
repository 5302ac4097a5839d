"""`vaerepro hwtable`: one Markdown table from the saved benchmark files of many machines.

Each `results/bench/<machine>-<device>.json` is pytest-benchmark's JSON (from `nox -s bench`)
with `machine_info["vaerepro"]` (device, CPU/GPU model, torch). Speeds are medians; every
ratio is taken between benchmarks of the same file, i.e. of one session on one machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .store import RunFolderError


def _medians(path: Path) -> tuple[dict, pd.DataFrame]:
    try:
        data = json.loads(path.read_text())
        info = data["machine_info"]["vaerepro"]
        rows = [{**b["extra_info"], "median_s": b["stats"]["median"]} for b in data["benchmarks"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is not a vaerepro benchmark file: {err}") from err
    df = pd.DataFrame(rows)
    df["samples_per_s"] = df.samples_per_round / df.median_s
    return info, df


def hardware_table(folder: str | Path = "results/bench") -> pd.DataFrame:
    """Per machine, device and N_z: train and eval samples/s, speedup over the pyautoencoder
    baseline (train step, and the end-to-end short sweep) and over our own step with autograd's
    gradient instead of the hand-written one, and the fraction of the matmul
    limit reached by the train step (train FLOP/s over matmul FLOP/s at the step's shapes)."""
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise RunFolderError(f"no benchmark files in {folder}; run `nox -s bench` first")
    out = []
    for path in files:
        info, df = _medians(path)

        def rate(impl, kind, nz=None, df=df):
            sel = df[(df.impl == impl) & (df.kind == kind) & ((df.nz == nz) if nz else True)]
            return float(sel.samples_per_s.iloc[0]) if len(sel) else float("nan")

        sweep = rate("vaerepro", "sweep") / rate("pyautoencoder", "sweep")
        for nz in sorted(df[df.kind == "train_step"].nz.unique()):
            ours = rate("vaerepro", "train_step", nz)
            flop = df[(df.kind == "train_step") & (df.nz == nz)].flop_per_sample.iloc[0]
            out.append(
                {
                    "machine": info["machine"],
                    "device": f"{info['device']} ({info['device_name']})",
                    "torch": info["torch"],
                    "N_z": int(nz),
                    "train samples/s": ours,
                    "eval samples/s": rate("vaerepro", "eval"),
                    "train speedup vs baseline": ours / rate("pyautoencoder", "train_step", nz),
                    "train speedup vs autograd": ours / rate("vaerepro-autograd", "train_step", nz),
                    "sweep speedup vs baseline": sweep,
                    "fraction of matmul limit": ours / rate("torch.mm", "matmul", nz),
                    "train GFLOP/s": ours * flop / 1e9,
                }
            )
    return pd.DataFrame(out)
