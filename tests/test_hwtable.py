import json
import shutil
from pathlib import Path

import pytest

from vaerepro.analysis.hwtable import (
    BASELINE_SPEEDUP,
    END_TO_END_SPEEDUP,
    STEP_SPEEDUP,
    SWEEP_SPEEDUP,
    hardware_table,
    save_benchmark,
    step_table,
)
from vaerepro.cli import main
from vaerepro.core.errors import RunFolderError
from vaerepro.core.flops import step_matmuls, train_flops_per_sample

ROOT = Path(__file__).resolve().parents[1]


def _bench(impl, kind, nz, samples, median, flop=None):
    extra = {"impl": impl, "kind": kind, "nz": nz, "samples_per_round": samples}
    if flop:
        extra["flop_per_sample"] = flop
    return {"extra_info": extra, "stats": {"median": median}}


def test_hardware_table_from_a_benchmark_file(tmp_path, capsys):
    info = {"machine": "cpu-x-2c", "device": "cpu", "device_name": "CPU X", "torch": "2.14.1"}
    info.update(quick=False, host="h")
    benches = [
        _bench("vaerepro", "train_step", 20, 5000, 0.5, flop=4e6),  # 10k samples/s
        _bench("pyautoencoder", "train_step", 20, 5000, 2.0),  # 2.5k samples/s
        _bench("torch.mm", "matmul", 20, 5000, 0.25, flop=4e6),  # 20k samples/s of matmuls
        _bench("vaerepro", "eval", 20, 10000, 0.1),
        _bench("vaerepro", "sweep", 0, 1e6, 100.0),
        _bench("pyautoencoder", "sweep", 0, 1e6, 600.0),
        _bench("vaerepro", "end_to_end", 20, 1e6, 90.0),
        _bench("pyautoencoder", "end_to_end", 20, 1e6, 405.0),
    ]
    (tmp_path / "cpu-x-2c-cpu.json").write_text(
        json.dumps({"machine_info": {"vaerepro": info}, "benchmarks": benches})
    )
    row = hardware_table(tmp_path).iloc[0]
    assert row["N_z"] == 20 and row["train samples/s"] == pytest.approx(10_000)
    assert row[STEP_SPEEDUP] == pytest.approx(4.0)
    assert row[SWEEP_SPEEDUP] == pytest.approx(6.0)
    assert row[END_TO_END_SPEEDUP] == pytest.approx(4.5)
    assert row["fraction of matmul limit"] == pytest.approx(0.5)
    assert row["eval samples/s"] == pytest.approx(100_000)
    assert main(["hwtable", str(tmp_path)]) == 0
    assert "| cpu-x-2c | cpu (CPU X) | 2.14.1 | – | – | 20 |" in capsys.readouterr().out


def test_hardware_table_needs_files(tmp_path):
    with pytest.raises(RunFolderError, match="nox -s bench"):
        hardware_table(tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RunFolderError, match="bad.json"):
        hardware_table(tmp_path)


def test_step_flops_count_every_matmul():
    # forward 4 products, weight gradients 4, input gradients 3 (none for the data)
    assert len(step_matmuls(20)) == 11
    forward = 2 * (784 * 500 + 500 * 40 + 20 * 500 + 500 * 784)
    backward = 2 * forward - 2 * 784 * 500
    assert train_flops_per_sample(20) == pytest.approx(forward + backward)


def _bench_file(path, info_changes=None, benches=None):
    info = {"machine": "cpu-x-2c", "device": "cpu", "device_name": "CPU X", "torch": "2.14.1"}
    info.update({"quick": False, "host": "h-1", **(info_changes or {})})
    benches = benches or [_bench("vaerepro", "train_step", 20, 5000, 0.5, flop=4e6)]
    path.write_text(json.dumps({"machine_info": {"vaerepro": info}, "benchmarks": benches}))
    return path


def test_a_quick_run_is_never_saved_or_tabled(tmp_path):
    raw = _bench_file(tmp_path / "raw.json", {"quick": True})
    results = tmp_path / "results"
    assert save_benchmark(raw, results) is None
    assert not results.exists()
    results.mkdir()
    shutil.copy(raw, results / "smoke.json")
    with pytest.raises(RunFolderError, match="smoke.json holds smoke-test timings"):
        hardware_table(results)


def test_a_full_run_is_saved_under_a_host_unique_name(tmp_path):
    raw = _bench_file(tmp_path / "raw.json")
    saved = save_benchmark(raw, tmp_path / "results")
    assert saved.name == "cpu-x-2c-cpu-h-1.json" and saved.read_bytes() == raw.read_bytes()
    other = _bench_file(tmp_path / "raw2.json", {"host": "h-2"})
    assert save_benchmark(other, tmp_path / "results").name == "cpu-x-2c-cpu-h-2.json"
    table = hardware_table(tmp_path / "results")
    assert len(table) == 2
    assert table[END_TO_END_SPEEDUP].isna().all()  # files without the end-to-end pair


@pytest.mark.parametrize(
    "info_changes, benches, why",
    [
        ({"quick": None}, None, "smoke-test"),  # no mark: not known to be a full run
        ({"device_name": None}, None, "machine info lacks"),
        (None, [{"extra_info": {"impl": "x"}, "stats": {"median": 1.0}}], "lack"),
        (None, [{"extra_info": {}, "stats": {}}], "missing"),
        (None, [_bench("vaerepro", "eval", 20, 10000, -1.0)], "positive number"),
    ],
)
def test_malformed_benchmark_files_are_named(tmp_path, capsys, info_changes, benches, why):
    _bench_file(tmp_path / "odd.json", info_changes, benches)
    assert main(["hwtable", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "odd.json" in err and why in err and "Traceback" not in err


def test_machine_names_cannot_break_the_table(tmp_path, capsys):
    _bench_file(tmp_path / "a.json", {"device_name": "CPU | evil\nrow"})
    assert main(["hwtable", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3  # header, rule, one row
    assert "CPU \\| evil row" in table[2]
    assert {line.count("|") - line.count("\\|") for line in table} == {16}


def test_the_committed_benchmarks_are_full_runs(capsys):
    """Both committed benchmark files load as full runs, five N_z each (a new file must be
    added here; its rows are pinned by the date-and-commit test below), and so do the
    committed step benchmarks."""
    results = Path(__file__).resolve().parents[1] / "results" / "bench"
    assert sorted(p.name for p in results.glob("*.json")) == [
        "amd-epyc-2c-cpu-vm-f7767a46.json",
        "amd-epyc-2c-cpu-vm.json",
    ]
    table = hardware_table(results)
    assert len(table) == 10 and table["N_z"].tolist() == [3, 5, 10, 20, 200] * 2
    steps = step_table(results / "steps")  # the GPU's two calls and this CPU, 6 + 6 + 2 rows
    assert sorted(p.name for p in (results / "steps").glob("*.json")) == [
        "amd-epyc-2c-cpu-2026-12-04-1404c3c.json",
        "nvidia-h200-2026-12-04-1404c3c.json",
        "nvidia-h200-2026-12-04-58cdcd9.json",
    ]
    assert len(steps) == 14 and steps[BASELINE_SPEEDUP].notna().sum() == 8
    assert main(["hwtable", str(results)]) == 0
    # header, rule, ten rows; a blank line, the title, a blank line; header, rule, 14 rows
    assert len(capsys.readouterr().out.splitlines()) == 12 + 3 + 16


def test_two_sessions_of_one_machine_are_told_apart_by_date_and_commit():
    """The committed files: one machine benchmarked twice; each row names its session."""
    results = Path(__file__).resolve().parents[1] / "results" / "bench"
    table = hardware_table(results)
    sessions = table[["machine", "device", "torch", "date", "commit"]].drop_duplicates()
    assert sessions.values.tolist() == [
        ["amd-epyc-2c", "cpu (AMD EPYC)", "2.14.1+cu130", "2026-12-01", "9ac2033411"],
        ["amd-epyc-2c", "cpu (AMD EPYC)", "2.14.1+cu130", "2026-11-23", "58116eaa0b (dirty)"],
    ]
    keys = table[["date", "commit", "N_z"]].astype(str).agg(" ".join, axis=1).tolist()
    assert keys == [f"2026-12-01 9ac2033411 {n}" for n in (3, 5, 10, 20, 200)] + [
        f"2026-11-23 58116eaa0b (dirty) {n}" for n in (3, 5, 10, 20, 200)
    ]
    rates = table.set_index(["date", "N_z"])["train samples/s"].round(2)
    assert rates[("2026-12-01", 20)] == 29024.18 and rates[("2026-11-23", 20)] == 26322.50


def test_benchmarks_on_a_device_the_machine_lacks_stop_with_one_line():
    """`nox -s bench -- --device cuda` without a GPU: one usage error before any benchmark
    (it was an error and a traceback per benchmark: 31 errors, 1,130 lines)."""
    import subprocess
    import sys

    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{n}" if n else "cuda"  # a device this machine lacks
    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "pytest", "bench", "-q", "--device", device]
    done = subprocess.run(
        [*argv, "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 4 and len(lines) == 1, lines
    why = f"sees {n} CUDA device(s); choose cuda:0 to cuda:{n - 1}" if n else "sees no CUDA device"
    assert lines[0] == f"ERROR: --device {device} requested, but torch {why}"


def _steps_file(path: Path, rows: list[dict], baseline: float | None = None) -> Path:
    """A bench/batched_step.py --json file (with --baseline-json when `baseline`)."""
    env = {"device": {"name": "GPU Y"}, "versions": {"torch": "2.11.0"}, "git": {"commit": "abc"}}
    data = {"environment": env, "rows": rows}
    if baseline:
        data["baseline"] = {"rates": [{"nz": 20, "samples": 1000, "train_samples_per_s": baseline}]}
    path.write_text(json.dumps(data))
    return path


def _step_row(way: str, models: int, ms: float) -> dict:
    return {
        "way": way,
        "models": models,
        "matmul_precision": "float32",
        "ms_per_step": ms,
        "samples_per_s_per_model": 100 / ms * 1e3,
    }


def test_the_step_table_gives_the_device_rate_the_papers_unit_and_the_speedup(tmp_path, capsys):
    shutil.copy(ROOT / "results/bench/amd-epyc-2c-cpu-vm.json", tmp_path)
    steps = tmp_path / "steps"
    steps.mkdir()
    # 20 models, 2 ms per step of all: 50k samples/s per model, 1e6 for the device
    _steps_file(steps / "gpu.json", [_step_row("graphed", 20, 2.0)], baseline=10_000)
    row = step_table(steps).iloc[0]
    assert row["samples/s per model"] == pytest.approx(50_000)
    assert row["device samples/s"] == pytest.approx(1e6)
    assert row["minutes per 1e6 samples per model"] == pytest.approx(1e6 / 50_000 / 60)
    assert row[BASELINE_SPEEDUP] == pytest.approx(100)
    assert main(["hwtable", str(tmp_path)]) == 0
    assert "| GPU Y | 2.11.0 | abc | graphed | 20 | float32 | 2.00 |" in capsys.readouterr().out
    _steps_file(steps / "gpu.json", [_step_row("plain", 1, 4.0)])  # no baseline: a dash
    assert step_table(steps)[BASELINE_SPEEDUP].isna().all()


@pytest.mark.parametrize(
    "rows, why",
    [
        ([{"way": "plain"}], "lacks the field 'models'"),
        ([{**_step_row("plain", 1, 1.0), "ms_per_step": -1}], "'ms_per_step' is -1"),
        ([_step_row("plain", 0, 1.0)], "'models' is 0"),
    ],
)
def test_a_malformed_step_file_is_named(tmp_path, rows, why):
    _steps_file(tmp_path / "odd.json", rows)
    with pytest.raises(RunFolderError, match=f"odd.json.*{why}"):
        step_table(tmp_path)
