"""The regression gate fails on deliberate breakages, on their numbers, and passes the
unbroken code under 1 and 2 threads. Tier 1 (the float64 trajectory) runs here for one N_z;
tier 2 (the ci run) for N_z = 200, and through copies of the committed reference."""

import itertools
import json
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from mutations import MCEM_MUTATIONS, MUTATIONS, WAKESLEEP_MUTATIONS

from vaerepro.analysis.check import check_run
from vaerepro.cli import main
from vaerepro.core.config import preset
from vaerepro.runs.loop import train
from vaerepro.runs.trajectory import read_trajectory, run_trajectory, write_trajectory

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "ci"
TIER1_NZ = 20  # one N_z of the reference keeps the tier-1 tests at seconds each
TIER2_NZ = 200


@pytest.fixture
def threads():
    """Set torch's thread count for one test, restoring it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _copy_reference_run(tmp_path) -> Path:
    """A run folder that passes both tiers: the reference's own files."""
    run = tmp_path / "run"
    shutil.copytree(REFERENCE, run)
    return run


def _tier1_run(mnist, tmp_path) -> Path:
    """A run folder with the reference's tier-2 files and a freshly computed trajectory."""
    run = _copy_reference_run(tmp_path)
    write_trajectory(run_trajectory(mnist, [TIER1_NZ]), run)
    return run


def _with_reference_rows(values: pd.DataFrame) -> pd.DataFrame:
    """`values` (one method's trajectory) completed with the reference's rows of the other
    method, so that a check of one method's breakage sees every reference row."""
    _, ref = read_trajectory(REFERENCE)
    other = ref[~ref.method.isin(set(values.method))]
    return pd.concat([values, other], ignore_index=True)


def _margin(result) -> float:
    """The smallest |diff| / tolerance among the failing points."""
    f = result.failures
    return float((f["diff"].abs() / f.tol).min())


@pytest.mark.parametrize("n_threads", [1, 2])
def test_unbroken_trajectory_passes_tier1(mnist, tmp_path, threads, n_threads):
    threads(n_threads)
    result = check_run(_tier1_run(mnist, tmp_path), REFERENCE, nz=[TIER1_NZ])
    assert result.ok, (result.problems, result.failures)
    tier1 = result.points[result.points.tier == 1]
    # AEVB and wake-sleep: splits x terms x evaluations; MCEM: splits x 2 marginal likelihoods
    assert len(tier1) == 2 * 2 * 3 * 4 + 2 * 2
    assert set(tier1.method) == {"aevb", "wakesleep", "mcem"}
    assert (tier1["diff"].abs() <= 1e-8).all()  # float64: nothing near the tolerance


def test_trajectory_command_writes_tier1(data_root, tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    (run / "trajectory.csv").unlink()
    argv = ["trajectory", str(run), "--nz", "3", "--data-root", str(data_root)]
    assert main(argv) == 0
    assert main(["check", str(run), "--reference", str(REFERENCE), "--nz", "3"]) == 0
    assert "OK: tier 1: 52 points, tier 2: 6 points" in capsys.readouterr().out


def _check_breakage(mnist, tmp_path, monkeypatch, method: str, mutation) -> None:
    """Tier 1 of `method` under the breakage fails on its numbers, with a wide margin."""
    monkeypatch.setattr(*mutation)
    values = run_trajectory(mnist, [TIER1_NZ], methods=[method])
    monkeypatch.undo()
    run = _copy_reference_run(tmp_path)
    write_trajectory(_with_reference_rows(values), run)
    result = check_run(run, REFERENCE, nz=[TIER1_NZ])
    assert not result.problems  # it fails on the numbers, not on config or files
    assert len(result.failures) and set(result.failures.tier) == {1}
    assert set(result.failures.method) == {method}
    assert _margin(result) > 10, result.failures
    assert main(["check", str(run), "--reference", str(REFERENCE), "--nz", str(TIER1_NZ)]) == 1


# the trajectory evaluates all 60,000 training images under this breakage (15 s)
SLOW_MUTATIONS = {"train_on_60000_images"}


@pytest.mark.parametrize(
    "mutation",
    [pytest.param(m, marks=[pytest.mark.slow] if m in SLOW_MUTATIONS else []) for m in MUTATIONS],
)
def test_breakage_fails_tier1_on_its_numbers(mnist, tmp_path, monkeypatch, threads, mutation):
    threads(1)  # tier 1 is the same to the last bit under 1 and 2 threads, and faster
    _check_breakage(mnist, tmp_path, monkeypatch, "aevb", MUTATIONS[mutation])


@pytest.mark.parametrize("mutation", list(WAKESLEEP_MUTATIONS))
def test_wake_sleep_breakage_fails_tier1(mnist, tmp_path, monkeypatch, threads, mutation):
    threads(1)
    _check_breakage(mnist, tmp_path, monkeypatch, "wakesleep", WAKESLEEP_MUTATIONS[mutation])


@pytest.mark.parametrize("mutation", list(MCEM_MUTATIONS))
def test_mcem_breakage_fails_tier1(mnist, tmp_path, monkeypatch, threads, mutation):
    threads(1)
    _check_breakage(mnist, tmp_path, monkeypatch, "mcem", MCEM_MUTATIONS[mutation])


def _tier2_run(mnist, folder: Path) -> Path:
    """The reference's files with its tier-2 model (N_z = 200) trained again into `folder`."""
    shutil.copytree(REFERENCE, folder)
    for path in folder.glob(f"nz{TIER2_NZ}-seed0.*"):
        path.unlink()
    train(preset("ci").replace(nz=TIER2_NZ), mnist, folder, progress=False)
    return folder


@pytest.mark.slow  # the ci preset's N_z = 200 model twice, 300,000 samples under 2 threads
def test_tier2_passes_an_unbroken_run_and_fails_a_broken_one(mnist, tmp_path, monkeypatch, threads):
    """The real float32 run, unbroken and with one training breakage (the rest: tier 1)."""
    threads(2)  # the reference's thread count (float32 rounding depends on it)
    unbroken = _tier2_run(mnist, tmp_path / "unbroken")
    result = check_run(unbroken, REFERENCE, nz=[TIER2_NZ], tolerance="auto")
    assert result.ok, (result.problems, result.failures)
    tier2 = result.points[result.points.tier == 2]
    assert len(tier2) == 6
    if result.mode == "rounding":  # the reference's CPU: within half a nat
        assert (tier2.tol < 0.5).all()
    else:  # another CPU's kernels: the seed spread, and the source says why
        assert "rounding differs: CPU" in result.source

    monkeypatch.setattr(*MUTATIONS["adagrad_warmup_removed"])
    broken = _tier2_run(mnist, tmp_path / "broken")
    monkeypatch.undo()
    if result.mode == "rounding":
        result = check_run(broken, REFERENCE, nz=[TIER2_NZ])
        assert not result.problems and set(result.failures.tier) == {2}
        assert len(result.failures) >= 2, result.points  # not a single borderline point
    # on any CPU: the breakage moves the run away from this CPU's unbroken one by more than
    # the rounding tolerances, at two points or more per split
    ours, theirs = (pd.read_csv(f / f"nz{TIER2_NZ}-seed0.csv") for f in (broken, unbroken))
    tol = pd.read_csv(REFERENCE / "tolerances.csv").query(f"tier == 2 and nz == {TIER2_NZ}")
    for split in ("train", "test"):
        diff = (ours[f"{split}_elbo"] - theirs[f"{split}_elbo"]).abs().to_numpy()
        rounding = tol[tol.split == split].sort_values("samples").rounding.to_numpy()
        assert (diff > rounding).sum() >= 2, (split, diff, rounding)


def test_the_reference_itself_passes(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 0
    out = capsys.readouterr().out
    assert "OK: tier 1: 256 points, tier 2: 30 points within the rounding" in out


def test_half_a_nat_at_any_tier2_point_fails(tmp_path):
    run = _copy_reference_run(tmp_path)
    tol = pd.read_csv(REFERENCE / "tolerances.csv")
    tier2 = tol[tol.tier == 2]
    assert len(tier2) == 30 and (tier2.rounding < 0.5).all()
    for _, point in tier2.iterrows():
        path = run / f"nz{point.nz}-seed0.csv"
        original = path.read_bytes()
        df = pd.read_csv(path)
        df.loc[df.samples == point.samples, f"{point.split}_elbo"] -= 0.5
        df.to_csv(path, index=False)
        result = check_run(run, REFERENCE, tolerance="rounding")
        assert list(result.failures[["nz", "split", "samples"]].itertuples(index=False)) == [
            (point.nz, point.split, point.samples)
        ]
        path.write_bytes(original)
    assert check_run(run, REFERENCE).ok


def test_failure_names_tier_point_diff_and_tolerance(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    df = pd.read_csv(run / "nz200-seed0.csv")
    df.loc[2, "test_elbo"] -= 0.5
    df.to_csv(run / "nz200-seed0.csv", index=False)
    traj = pd.read_csv(run / "trajectory.csv")
    traj.loc[0, "value"] += 1e-4
    traj.to_csv(run / "trajectory.csv", index=False, float_format="%.17g")
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    out = capsys.readouterr().out
    assert re.search(
        r"FAIL tier 2: N_z=200 test elbo at 300000 samples: ours -155\.5\d+, reference "
        r"-155\.0\d+, diff -0\.5 nats, tolerance 0\.\d+ \(rounding\)",
        out,
    )
    assert re.search(r"FAIL tier 1: N_z=3 train elbo at 1000 samples: .* diff \+0\.0001 nats", out)
    assert "FAILED: 2 points out of tolerance" in out
    assert main(["check", str(run), "--reference", str(REFERENCE), "--tolerance", "seeds"]) == 1
    assert "FAILED: 1 points" in capsys.readouterr().out  # tier 1 still fails


def test_missing_file_fails(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    (run / "nz5-seed0.csv").unlink()
    (run / "trajectory.csv").unlink()
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    out = capsys.readouterr().out
    assert "tier 2, N_z=5: nz5-seed0.csv/.json missing" in out
    assert "tier 1: " in out and "trajectory.csv is missing; write it with `vaerepro" in out


def test_missing_rows_fail(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    df = pd.read_csv(run / "nz3-seed0.csv")
    df.iloc[:-1].to_csv(run / "nz3-seed0.csv", index=False)
    traj = pd.read_csv(run / "trajectory.csv")
    traj[traj.samples < 4000].to_csv(run / "trajectory.csv", index=False)
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    out = capsys.readouterr().out
    assert "tier 2, N_z=3 (nz3-seed0.csv): rows missing at samples [300000]" in out
    assert "tier 1, trajectory.csv: rows missing at samples [4000]" in out


def test_different_config_fails(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    meta = json.loads((run / "nz10-seed0.json").read_text())
    meta["config"]["lr"] = 0.03
    (run / "nz10-seed0.json").write_text(json.dumps(meta))
    meta = json.loads((run / "trajectory.json").read_text())
    meta["config"]["train_size"] = 2000
    (run / "trajectory.json").write_text(json.dumps(meta))
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    out = capsys.readouterr().out
    assert "tier 2, N_z=10: config differs from the reference: lr: 0.03 != 0.02" in out
    assert "tier 1: config differs from the reference: train_size: 2000 != 1000" in out


def test_other_thread_count_fails_rounding_mode_with_advice(tmp_path, capsys):
    run = _copy_reference_run(tmp_path)
    meta = json.loads((run / "nz20-seed0.json").read_text())
    meta["device"]["threads"] = 1
    (run / "nz20-seed0.json").write_text(json.dumps(meta))
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    out = capsys.readouterr().out
    assert "tier 2, N_z=20: float32 rounding differs from the reference's (threads 1 != 2)" in out
    assert "OMP_NUM_THREADS=2" in out and "--tolerance seeds" in out
    assert main(["check", str(run), "--reference", str(REFERENCE), "--tolerance", "seeds"]) == 0


def test_the_advice_for_other_threads_is_a_command_that_matches_the_reference(
    tmp_path, capsys, threads
):
    """check's advice, followed literally (parsed as the shell and the CLI parse it), trains
    every reference model in 1 job of the reference's 2 threads, under the reference's
    configs, into a new folder, then writes its trajectory and checks it."""
    from vaerepro.cli import build_parser
    from vaerepro.cli.reproduce import requested_sweep
    from vaerepro.core.device import resolve_device
    from vaerepro.runs.provenance import vaerepro_command
    from vaerepro.runs.records import load_run
    from vaerepro.runs.sweep import parallelism

    run = _copy_reference_run(tmp_path)
    meta = json.loads((run / "nz3-seed0.json").read_text())
    meta["device"]["threads"] = 1
    (run / "nz3-seed0.json").write_text(json.dumps(meta))
    assert main(["check", str(run), "--reference", str(REFERENCE)]) == 1
    line = next(s for s in capsys.readouterr().out.splitlines() if "rounding differs" in s)
    words = shlex.split(re.search("`(.*)`", line)[1])
    commands = [list(c) for sep, c in itertools.groupby(words, lambda w: w == "&&") if not sep]
    (env, *train), trajectory, check = commands
    prefix = shlex.split(vaerepro_command(""))  # the command the user can run: here python -m
    assert env == "OMP_NUM_THREADS=2" and train[: len(prefix)] == prefix
    args = build_parser().parse_args(train[len(prefix) :])
    threads(2)  # what OMP_NUM_THREADS=2 gives torch in the new process
    reference = [m["config"] for m, _ in load_run(REFERENCE)]
    device = resolve_device(args.device)
    assert parallelism(device, args.stacked, len(reference), args.jobs, args.threads) == (1, 2)
    assert [c.to_dict() for c in requested_sweep(args).configs] == reference
    out = tmp_path / "run-as-reference"
    assert args.out == str(out) and not out.exists()
    assert trajectory == [*prefix, "trajectory", str(out)]
    assert check == [*prefix, "check", str(out), "--reference", str(REFERENCE)]
    assert build_parser().parse_args(check[len(prefix) :]).run_dir == str(out)
