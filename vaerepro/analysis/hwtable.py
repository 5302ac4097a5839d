"""`vaerepro hwtable`: one Markdown table from the saved benchmark files of many machines.

Each `results/bench/<machine>-<device>-<host>.json` is pytest-benchmark's JSON (from
`nox -s bench`) with `machine_info["vaerepro"]` (device, CPU/GPU model, torch, and
`"quick": false`: smoke-test timings from `--quick` are refused). Speeds are medians; every
ratio is taken between benchmarks of the same file, i.e. of one session on one machine.
Every file is validated (`_check_benchmark`) before a number of it is used; its text enters
the table as text only (`as_text`: no HTML, no links), and `save_benchmark` names the saved
file from sanitised fields (`path_component`), inside the folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from vaerepro.core.errors import RunFolderError
from vaerepro.runs.records import check_schema
from vaerepro.runs.writes import atomic_write_bytes

INFO_FIELDS = ("machine", "device", "device_name", "torch")
EXTRA_FIELDS = ("impl", "kind", "nz", "samples_per_round")
# one benchmark of pytest-benchmark's JSON: extra_info (ours) and stats (the median)
EXTRA_SCHEMA = {
    "impl": "str",
    "kind": "str",
    "nz": "int",
    "samples_per_round": "positive",
    "flop_per_sample": "positive",
}
STATS_SCHEMA = {"median": "positive"}


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
        benches = data["benchmarks"]
        rows = [{**b["extra_info"], "median_s": b["stats"]["median"]} for b in benches]
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
    for i, bench in enumerate(benches, 1):
        _check_benchmark(bench, f"benchmark {i}", bad)
    df = pd.DataFrame(rows)
    df["samples_per_s"] = df.samples_per_round / df.median_s
    return {**info, **when_and_what(data)}, df


def _check_benchmark(bench: dict, where: str, bad) -> None:
    """One benchmark against EXTRA_SCHEMA and STATS_SCHEMA: names as text, N_z an integer
    >= 0, sample counts, FLOPs and the median finite and positive (no negative speed); the
    train step of vaerepro with its FLOPs per sample. `bad(why)`: the error to raise."""
    extra = bench["extra_info"]
    step = extra.get("impl") == "vaerepro" and extra.get("kind") == "train_step"
    required = (*EXTRA_FIELDS, "flop_per_sample") if step else EXTRA_FIELDS
    try:
        check_schema(extra, EXTRA_SCHEMA, f"{where}, extra_info", required)
        check_schema(bench["stats"], STATS_SCHEMA, f"{where}, stats", ("median",))
    except RunFolderError as err:
        raise bad(str(err)) from err
    if extra["nz"] < 0:
        raise bad(f"{where}, extra_info: field 'nz' is {extra['nz']}, a negative N_z")


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
            step = (df.impl == "vaerepro") & (df.kind == "train_step") & (df.nz == nz)
            flop = df[step].flop_per_sample.iloc[0]
            out.append(
                {
                    "machine": as_text(info["machine"]),
                    "device": as_text(f"{info['device']} ({info['device_name']})"),
                    "torch": as_text(info["torch"]),
                    "date": as_text(info["date"]),
                    "commit": as_text(info["commit"]),
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


STEP_ROW_SCHEMA = {
    "way": "str",
    "models": "int",
    "matmul_precision": "str",
    "ms_per_step": "positive",
    "samples_per_s_per_model": "positive",
}
BASELINE_SPEEDUP = "speedup vs baseline (device samples/s over one pyautoencoder model's)"


def step_table(folder: str | Path = "results/bench/steps") -> pd.DataFrame:
    """Per saved `bench/batched_step.py --json` file in `folder` (one session of one device)
    and row: ms per step of all K models, samples/s per model and for the device, minutes per
    1e6 samples per model (the paper's unit) and, where the file embeds the pyautoencoder
    baseline's rate on the same device (`--baseline-json`, N_z = 20), the device's samples/s
    over it. Empty when `folder` does not exist. RunFolderError naming a malformed file."""
    out = []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        env, rows, baseline = _steps(path)
        for row in rows:
            device_rate = row["models"] * row["samples_per_s_per_model"]
            out.append(
                {
                    "device": as_text(env["device"]["name"]),
                    "torch": as_text(env["versions"]["torch"]),
                    "commit": as_text((env["git"]["commit"] or "–")[:10]),
                    "way": as_text(row["way"]),
                    "models": int(row["models"]),
                    "matmul": as_text(row["matmul_precision"]),
                    "ms per step": row["ms_per_step"],
                    "samples/s per model": row["samples_per_s_per_model"],
                    "device samples/s": device_rate,
                    "minutes per 1e6 samples per model": 1e6 / row["samples_per_s_per_model"] / 60,
                    BASELINE_SPEEDUP: device_rate / baseline,
                }
            )
    return pd.DataFrame(out)


def _steps(path: Path) -> tuple[dict, list[dict], float]:
    """(environment, rows, the baseline's samples/s or NaN) of one step benchmark file, each
    field checked; RunFolderError naming the file otherwise."""
    where = f"{path} (a bench/batched_step.py --json file)"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{where} is unreadable: {err}; remove it") from err
    check_schema(data, {"rows": "list", "environment": "dict"}, where, ("rows", "environment"))
    env = data["environment"]
    for key, inner, kind in (
        ("device", "name", "str"),
        ("versions", "torch", "str"),
        ("git", "commit", "str|null"),
    ):  # null: not a git checkout
        check_schema(env, {key: "dict"}, f"{where}, environment", (key,))
        check_schema(env[key], {inner: kind}, f"{where}, environment.{key}", (inner,))
    rows = data["rows"]
    for i, row in enumerate(rows, 1):
        check_schema(row, STEP_ROW_SCHEMA, f"{where}, row {i}", tuple(STEP_ROW_SCHEMA))
        if row["models"] < 1:
            raise RunFolderError(f"{where}, row {i}: field 'models' is {row['models']}, not >= 1")
    baseline = float("nan")
    if "baseline" in data:
        check_schema(data["baseline"], {"rates": "list"}, f"{where}, baseline", ("rates",))
        for rate in data["baseline"]["rates"]:
            schema = {"nz": "int", "train_samples_per_s": "positive"}
            check_schema(rate, schema, f"{where}, baseline rate", tuple(schema))
            if rate["nz"] == 20:
                baseline = rate["train_samples_per_s"]
    return env, rows, baseline


def as_text(value):
    """A field of a benchmark file as Markdown text: no HTML (`&`, `<`, `>` as entities) and
    no link (brackets escaped); NaN stays NaN (a dash in the table)."""
    if not isinstance(value, str):
        return value
    for raw, safe in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("[", "\\["), ("]", "\\]")):
        value = value.replace(raw, safe)
    return value


def path_component(value: str) -> str:
    """`value` as one safe file-name component: [A-Za-z0-9._-] (any other run as "_"), no
    leading dot, dash or underscore, at most 64 characters ("unknown" if nothing is left)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).lstrip("._-")[:64] or "unknown"


def save_benchmark(raw: str | Path, folder: str | Path = "results/bench") -> Path | None:
    """Copy pytest-benchmark's JSON of a full run into `folder` as
    `<machine>-<device>-<host>.json`, each part made one safe name component
    (`path_component`), the file inside `folder`; returns None, saving nothing, for a --quick
    run. RunFolderError naming the file when it is not a vaerepro benchmark file."""
    raw, folder = Path(raw), Path(folder)
    try:
        info = json.loads(raw.read_text())["machine_info"]["vaerepro"]
        quick = info["quick"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunFolderError(f"{raw} is not a vaerepro benchmark file: {err}") from err
    if quick:
        return None
    _medians(raw)  # the table must be able to read what is saved
    check_schema(info, {"host": "str"}, f"{raw}, machine_info.vaerepro", ("host",))
    parts = [path_component(info[k]) for k in ("machine", "device", "host")]
    target = folder / f"{'-'.join(parts)}.json"
    if target.is_symlink() or target.resolve().parent != folder.resolve():
        raise RunFolderError(f"{target} is a symlink or outside {folder}; remove it first")
    atomic_write_bytes(target, raw.read_bytes())
    return target
