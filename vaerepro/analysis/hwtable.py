"""`vaerepro hwtable`: one Markdown table from the saved benchmark files of many machines.

Each `results/bench/<machine>-<device>-<host>.json` is pytest-benchmark's JSON (from
`nox -s bench`) with `machine_info["vaerepro"]` (device, CPU/GPU model, torch, and
`"quick": false`: smoke-test timings from `--quick` are refused). Speeds are medians; every
ratio is taken between benchmarks of the same file, i.e. of one session on one machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from vaerepro.core.errors import RunFolderError
from vaerepro.runs.writes import atomic_write_bytes

INFO_FIELDS = ("machine", "device", "device_name", "torch")
EXTRA_FIELDS = ("impl", "kind", "nz", "samples_per_round")


def _medians(path: Path) -> tuple[dict, pd.DataFrame]:
    """(machine info, one row per benchmark with its median) of a saved benchmark file; the
    info has the session's `date` and `commit` too (`when_and_what`). RunFolderError naming
    the file when it is malformed or a --quick smoke test."""

    def bad(why: str) -> RunFolderError:
        return RunFolderError(
            f"{path} is not a vaerepro benchmark file ({why}); remove it or save it again "
            "with `nox -s bench`"
        )

    try:
        data = json.loads(path.read_text())
        info = data["machine_info"]["vaerepro"]
        rows = [{**b["extra_info"], "median_s": b["stats"]["median"]} for b in data["benchmarks"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"unreadable: {err}") from err
    except (KeyError, TypeError, AttributeError) as err:
        raise bad(f"missing {err}") from err
    if info.get("quick") is not False:
        raise RunFolderError(
            f"{path} holds smoke-test timings (quick: {info.get('quick')!r}, not false); "
            "only full `nox -s bench` runs belong in the table: remove it"
        )
    missing = [k for k in INFO_FIELDS if not isinstance(info.get(k), str)]
    if missing or not rows:
        raise bad(f"machine info lacks {missing}" if missing else "no benchmarks")
    df = pd.DataFrame(rows)
    for col in EXTRA_FIELDS:
        if col not in df:
            raise bad(f"benchmarks lack {col!r}")
    medians = pd.to_numeric(df.median_s, errors="coerce")
    if not (medians > 0).all() or not medians.map(math.isfinite).all():
        raise bad("a median time is not a positive number")
    df["samples_per_s"] = df.samples_per_round / medians
    return {**info, **when_and_what(data)}, df


def when_and_what(data: dict) -> dict:
    """The date (UTC) and the code's commit of a pytest-benchmark session, from its JSON's
    `datetime` and `commit_info`: what tells apart two sessions of one machine. The commit
    is shortened to 10 digits, with "(dirty)" when it had uncommitted changes; NaN where the
    file does not say."""
    when, commit = data.get("datetime"), data.get("commit_info")
    date = when[:10] if isinstance(when, str) and len(when) >= 10 else float("nan")
    code = float("nan")
    if isinstance(commit, dict) and isinstance(commit.get("id"), str) and commit["id"]:
        code = commit["id"][:10] + (" (dirty)" if commit.get("dirty") else "")
    return {"date": date, "commit": code}


# What each speedup over the pyautoencoder baseline includes, in its column's name
STEP_SPEEDUP = "step speedup vs baseline (train step only)"
END_TO_END_SPEEDUP = (
    "end-to-end speedup vs baseline (command line, N_z 20 to 1e6: start-up, data, train, eval, "
    "files, plots)"
)
SWEEP_SPEEDUP = "sweep speedup vs baseline (in-process, 5 N_z to 2e5: train, eval, CSVs)"


def hardware_table(folder: str | Path = "results/bench") -> pd.DataFrame:
    """Per benchmark session (machine, device, torch, date and commit) and N_z: train and
    eval samples/s, speedup over the pyautoencoder
    baseline (the train step; the command lines end to end, bench/end_to_end.py; the short
    sweep in-process) and over our own step with autograd's gradient instead of the
    hand-written one, the wake-sleep step's speed over AEVB's, and the fraction of the matmul
    limit reached by the train step (train FLOP/s over matmul FLOP/s at the step's shapes).
    NaN where a file lacks the benchmarks (older files have no end-to-end pair)."""
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
        end_to_end = rate("vaerepro", "end_to_end") / rate("pyautoencoder", "end_to_end")
        for nz in sorted(df[df.kind == "train_step"].nz.unique()):
            ours = rate("vaerepro", "train_step", nz)
            flop = df[(df.kind == "train_step") & (df.nz == nz)].flop_per_sample.iloc[0]
            out.append(
                {
                    "machine": info["machine"],
                    "device": f"{info['device']} ({info['device_name']})",
                    "torch": info["torch"],
                    "date": info["date"],
                    "commit": info["commit"],
                    "N_z": int(nz),
                    "train samples/s": ours,
                    "eval samples/s": rate("vaerepro", "eval"),
                    STEP_SPEEDUP: ours / rate("pyautoencoder", "train_step", nz),
                    END_TO_END_SPEEDUP: end_to_end,
                    "train speedup vs autograd": ours / rate("vaerepro-autograd", "train_step", nz),
                    # the wake-sleep step's samples/s over AEVB's (NaN in older files)
                    "wake-sleep / AEVB step speed": rate("vaerepro-wakesleep", "train_step", nz)
                    / ours,
                    SWEEP_SPEEDUP: sweep,
                    "fraction of matmul limit": ours / rate("torch.mm", "matmul", nz),
                    "train GFLOP/s": ours * flop / 1e9,
                }
            )
    return pd.DataFrame(out)


def save_benchmark(raw: str | Path, folder: str | Path = "results/bench") -> Path | None:
    """Copy pytest-benchmark's JSON of a full run into `folder` as
    `<machine>-<device>-<host>.json`; returns None, saving nothing, for a --quick run.
    RunFolderError naming the file when it is not a vaerepro benchmark file."""
    raw = Path(raw)
    try:
        info = json.loads(raw.read_text())["machine_info"]["vaerepro"]
        quick = info["quick"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunFolderError(f"{raw} is not a vaerepro benchmark file: {err}") from err
    if quick:
        return None
    _medians(raw)  # the table must be able to read what is saved
    target = Path(folder) / f"{info['machine']}-{info['device']}-{info['host']}.json"
    atomic_write_bytes(target, raw.read_bytes())
    return target
