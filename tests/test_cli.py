import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import DETERMINISTIC, TINY, copy_run, snapshot, tiny

from vaerepro.cli import build_parser, main


@pytest.mark.slow  # a process of its own
def test_help_explains_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "vaerepro", "reproduce", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--nz",
        "--samples",
        "--eval-every",
        "--seed",
        "--device",
        "--data-root",
        "--out",
        "--preset",
        "--resume",
        "--overwrite",
    ):
        assert option in out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "(preset: 1e7)" in out and "(default: 0)" in out  # --samples, --seed


def test_no_help_text_shows_a_doubled_percent():
    """argparse %-formats help strings but not descriptions: a "%%" there prints as is."""

    def pages(parser, name):
        yield name, parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    yield from pages(subparser, f"{name} {sub}")

    assert [name for name, text in pages(build_parser(), "vaerepro") if "%%" in text] == []


def test_reproduce_end_to_end(tiny_sweep):
    """The session's `reproduce --nz 3 5` (conftest.tiny_sweep): every model's files, the
    sweep's record, the figures and the report."""
    out = tiny_sweep.folder
    for nz in (3, 5):
        df = pd.read_csv(out / f"nz{nz}-seed0.csv")
        assert df.samples.tolist() == [1000, 2000]
        meta = json.loads((out / f"nz{nz}-seed0.json").read_text())
        assert meta["config"]["nz"] == nz and meta["config"]["train_size"] == 2000
        assert (out / f"nz{nz}-seed0.pt").exists() and (out / f"nz{nz}-seed0.ckpt").exists()
    manifest = json.loads((out / "run.json").read_text())
    assert [c["nz"] for c in manifest["configs"]] == [3, 5]
    assert (out / "figures" / "fig2.png").exists() and (out / "REPORT.md").exists()


def test_reproduce_tells_the_plan_progress_and_summary(tiny_sweep):
    out, err = tiny_sweep
    plan = next(line for line in err.splitlines() if line.startswith("plan:"))
    assert "2 model(s) (N_z 3, 5; seed 0), 2e3 samples each, on cpu; estimated" in plan
    assert "training samples/s by N_z 3:" in plan and "evaluation" in plan
    assert "model 2/2 (N_z=5 seed 0):" in err and "left" in err
    lines = err.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["method", "N_z", "seeds"]
    )
    table = lines[start:]
    assert table[0].split() == [
        "method", "N_z", "seeds", "samples", "train", "ELBO", "train", "sd", "paper", "train",
        "train", "diff", "test", "ELBO", "test", "sd", "paper", "test", "test", "diff",
    ]  # fmt: skip
    # one seed: no sd; the paper's N_z = 3 curve shows no value at 2e3 samples
    row = table[1].split()
    assert row[:4] == ["aevb", "3", "1", "2e3"] and row[5:7] == ["–", "–"] and float(row[4]) < -100
    last = pd.read_csv(out / "nz5-seed0.csv").iloc[-1]
    assert f"{last.train_elbo:.2f}" in table[2] and f"{last.test_elbo:.2f}" in table[2]
    assert "Trained in" in err


def test_estimate_extrapolates_the_measured_rates():
    from vaerepro.core.config import TrainConfig
    from vaerepro.runs.estimate import Estimate

    cfg = TrainConfig(nz=3, samples=1_000_000, eval_every=100_000)
    est = Estimate(train_rate={("aevb", 3): 20_000.0}, eval_rate=60_000.0)
    # 50 s of training + 10 evaluations of 50,000 + 10,000 rows at 60k/s
    assert est.seconds(cfg) == pytest.approx(50 + 10)
    assert est.seconds(cfg, samples_done=500_000) == pytest.approx(25 + 5)


def test_the_estimate_times_the_runs_dtype(monkeypatch, mnist):
    """A float64 run's plan times float64 steps (about 1.8x a float32 step's time)."""
    import torch

    from vaerepro.core.config import TrainConfig
    from vaerepro.runs import estimate

    seen, real = [], estimate.make_train_step

    def spy(models, optimizers, cfg, train_x, **kw):
        seen.append((next(models[0].parameters()).dtype, train_x.dtype))
        return real(models, optimizers, cfg, train_x, **kw)

    monkeypatch.setattr(estimate, "make_train_step", spy)
    cfg = TrainConfig(nz=3, hidden=16, train_size=1000, dtype="float64")
    estimate.measure([cfg], mnist, torch.device("cpu"))
    assert seen == [(torch.float64, torch.float64)]


@pytest.mark.slow  # a process of its own
def test_console_script_runs(data_root, tmp_path, tiny_run):
    script = Path(sys.executable).parent / "vaerepro"  # installed beside this Python
    out = tmp_path / "r"
    proc = subprocess.run([str(script), *tiny(out, data_root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "plan: 1 model(s) (N_z 3; seed 0), 2e3 samples each" in proc.stderr
    assert "Trained in" in proc.stderr
    # the same numbers as the same run in-process (conftest.tiny_run; one thread in both)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "nz3-seed0.csv")[DETERMINISTIC],
        pd.read_csv(tiny_run / "nz3-seed0.csv")[DETERMINISTIC],
    )


def test_missing_data_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "reproduce",
            "--nz",
            "3",
            "--data-root",
            str(tmp_path / "nodata"),
            "--out",
            str(out),
            *TINY,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "train-images-idx3-ubyte.gz" in err and "nodata" in err
    assert not list(out.glob("nz*"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--nz", "0"], "nz must be >= 1"),
        (["--samples", "0"], "samples must be positive"),
        (["--eval-every", "4000"], "larger than samples"),
        (["--lr", "-1"], "lr must be positive"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_invalid_options_are_refused(data_root, tmp_path, capsys, args, message):
    rc = main(
        ["reproduce", "--data-root", str(data_root), "--out", str(tmp_path / "r"), *TINY, *args]
    )
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.fixture
def existing_run(tiny_run, tmp_path):
    """A copy of the session's finished tiny run (N_z = 3)."""
    return copy_run(tiny_run, tmp_path)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--nz", "0"], "nz must be >= 1"),
        (["--eval-every", "0"], "eval_every must be positive"),
        (["--lr", "0"], "lr must be positive"),
        (["--preset", "nope"], "unknown preset"),
        (["--device", "tpu"], "unknown device"),
        (["--lr", "0.03"], "lr: 0.02 != 0.03"),
        (
            ["--data-root", "/nonexistent", "--overwrite"],
            "data root /nonexistent (from --data-root) does not exist",
        ),
        ([], "is a finished run; use --overwrite"),
    ],
)
def test_refusals_leave_an_existing_run_untouched(existing_run, data_root, capsys, args, message):
    before = snapshot(existing_run)
    assert main(tiny(existing_run, data_root, *args)) == 2
    assert message in capsys.readouterr().err
    assert snapshot(existing_run) == before


def test_a_different_config_in_the_folder_is_refused(
    tiny_run, data_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("VAEREPRO_DATA", raising=False)  # --resume must find the data by itself
    out = copy_run(tiny_run, tmp_path)  # `base` made it, with --data-root
    base = tiny(out, data_root)
    before = (out / "nz3-seed0.csv").read_bytes()
    assert main([*base, "--lr", "0.05"]) == 2
    assert "lr: 0.02 != 0.05" in capsys.readouterr().err
    assert (out / "nz3-seed0.csv").read_bytes() == before
    assert main(base) == 2  # the same config, finished: needs --overwrite
    assert main(["reproduce", "--resume", str(out), "--no-progress"]) == 0  # nothing left to do
    assert "skipped" in capsys.readouterr().err


@pytest.mark.slow  # a process of its own
def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`vaerepro compare RUN | head -1`: the reader leaves; vaerepro exits 141 (128 + SIGPIPE,
    as a tool killed by it) without a message or a traceback."""
    run = copy_run(Path(__file__).resolve().parents[1] / "results" / "paper-1e7", tmp_path)
    cmd = [sys.executable, "-m", "vaerepro", "compare", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("method")
    proc.stdout.close()  # the reader goes; the rest (600 lines) meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err
