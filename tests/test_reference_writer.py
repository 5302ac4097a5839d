"""make-reference measures spread and drift and owns its files; check refuses a malformed or
absurd reference with a clear error (exit 2, no traceback, nothing changed)."""

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import fake_ci_run

from vaerepro.analysis.check import TIER1_FLOOR, TIER2_CAP, TIER2_FLOOR
from vaerepro.analysis.reference_writer import make_reference
from vaerepro.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "ci"


def _checksums(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def inputs(tmp_path):
    seeds = [
        fake_ci_run(tmp_path / "s0", 0, -150.0, trajectory=-100.0),
        fake_ci_run(tmp_path / "s1", 1, -149.0),
        fake_ci_run(tmp_path / "s2", 2, -148.0),
    ]
    rounding = [fake_ci_run(tmp_path / "threads1", 0, -150.02, trajectory=-100.0 + 1e-9)]
    return seeds, rounding


def test_make_reference_measures_spread_and_drift(tmp_path, inputs):
    seeds, rounding = inputs
    tol = make_reference(seeds, tmp_path / "ref", "test", rounding).set_index(["tier", "split"])
    assert tol.loc[(2, "train"), "seeds"] == pytest.approx(4.0)  # 4 * std(-150, -149, -148)
    assert tol.loc[(2, "test"), "seeds"] == pytest.approx(2.0)
    assert tol.loc[(2, "train"), "drift"] == pytest.approx(0.02)
    assert tol.loc[(2, "train"), "rounding"] == pytest.approx(TIER2_FLOOR)  # 3 * 0.02 < floor
    assert tol.loc[(2, "test"), "rounding"] == pytest.approx(TIER2_FLOOR)
    assert (tol.loc[1, "rounding"] == TIER1_FLOOR).all()  # 3e-9 < floor
    ref = tmp_path / "ref"
    assert (ref / "nz3-seed0.csv").exists() and not (ref / "nz3-seed1.csv").exists()
    assert (ref / "trajectory.csv").exists() and "test" in (ref / "HISTORY.md").read_text()
    meta = json.loads((ref / "reference.json").read_text())
    assert meta["threads"] == 2 and "nz3-seed0.csv" in meta["files"]
    with pytest.raises(ValueError, match="reason"):
        make_reference(seeds, ref, " ", rounding)


def test_tier2_tolerance_is_three_drifts_below_the_cap(tmp_path):
    seeds = [fake_ci_run(tmp_path / "s0", 0, -150.0, trajectory=-1.0)]
    seeds.append(fake_ci_run(tmp_path / "s1", 1, -149.0))
    rounding = [fake_ci_run(tmp_path / "r1", 0, -150.06, trajectory=-1.0)]
    rounding.append(fake_ci_run(tmp_path / "r2", 0, -151.0))  # the test ELBO drifts 0.5
    tol = make_reference(seeds, tmp_path / "ref", "test", rounding).set_index(["tier", "split"])
    assert tol.loc[(2, "train"), "rounding"] == pytest.approx(TIER2_CAP)  # 3 * 1.0, capped
    assert tol.loc[(2, "test"), "rounding"] == pytest.approx(TIER2_CAP)  # 3 * 0.5, capped
    drift = pd.read_csv(tmp_path / "ref" / "drift.csv")
    assert set(drift.variant) == {"r1 (threads=2)", "r2 (threads=2)"}


def test_out_that_is_an_input_is_refused(tmp_path, inputs, capsys):
    seeds, rounding = inputs
    before = _checksums(seeds[0])
    argv = ["make-reference", *map(str, seeds), "--rounding-runs", str(rounding[0])]
    assert main([*argv, "--out", str(seeds[0]), "--reason", "r"]) == 2
    err = capsys.readouterr().err
    assert f"--out {seeds[0]} is one of the input runs" in err and "Traceback" not in err
    assert _checksums(seeds[0]) == before
    assert main([*argv, "--out", str(tmp_path / "ref"), "--reason", "r"]) == 0
    assert main(["check", str(seeds[0]), "--reference", str(tmp_path / "ref")]) == 0


def test_out_with_files_it_did_not_write_is_refused(tmp_path, inputs, capsys):
    seeds, rounding = inputs
    out = fake_ci_run(tmp_path / "someone-elses-run", 0, -1.0)
    before = _checksums(out)
    argv = ["make-reference", *map(str, seeds), "--rounding-runs", str(rounding[0])]
    assert main([*argv, "--out", str(out), "--reason", "r"]) == 2
    assert "holds files but no reference.json" in capsys.readouterr().err
    assert _checksums(out) == before


def test_rewrite_removes_only_files_it_wrote(tmp_path):
    nzs = (3, 5)
    seeds = [fake_ci_run(tmp_path / "s0", 0, -150.0, nzs, trajectory=-1.0)]
    seeds += [fake_ci_run(tmp_path / "s1", 1, -149.0, nzs)]
    rounding = [fake_ci_run(tmp_path / "r", 0, -150.0, nzs, -1.0)]
    out = tmp_path / "ref"
    make_reference(seeds, out, "first", rounding)
    (out / "notes.md").write_text("mine")
    (out / "nz5-seed1.csv").write_text("not the writer's")
    fewer = [fake_ci_run(tmp_path / "t0", 0, -150.0, (3,), trajectory=-1.0)]
    fewer += [fake_ci_run(tmp_path / "t1", 1, -149.0, (3,))]
    make_reference(fewer, out, "second", [fake_ci_run(tmp_path / "q", 0, -150.0, (3,), -1.0)])
    assert not (out / "nz5-seed0.csv").exists() and (out / "nz3-seed0.csv").exists()
    assert (out / "notes.md").read_text() == "mine"
    assert (out / "nz5-seed1.csv").read_text() == "not the writer's"
    assert (out / "HISTORY.md").read_text().count("\n- ") == 2


@pytest.mark.parametrize("bad", ["inf", "1e300", "nan", "-0.1", "0", "abc", ""])
def test_check_refuses_absurd_tolerances(tmp_path, capsys, bad):
    ref = tmp_path / "ref"
    shutil.copytree(REFERENCE, ref)
    tol = pd.read_csv(ref / "tolerances.csv")
    tol["rounding"] = tol.rounding.astype(object)
    tol.loc[tol[tol.tier == 2].index[0], "rounding"] = bad
    tol.to_csv(ref / "tolerances.csv", index=False)
    before = _checksums(ref)
    assert main(["check", str(ref), "--reference", str(ref)]) == 2
    err = capsys.readouterr().err
    assert f"{ref / 'tolerances.csv'}: the rounding tolerance {bad!r} of tier 2, N_z=3" in err
    assert "nox -s update_reference" in err and "Traceback" not in err
    assert _checksums(ref) == before


def test_check_refuses_absurd_seed_tolerance(tmp_path, capsys):
    ref = tmp_path / "ref"
    shutil.copytree(REFERENCE, ref)
    tol = pd.read_csv(ref / "tolerances.csv")
    tol.loc[tol.tier == 2, "seeds"] = float("inf")
    tol.to_csv(ref / "tolerances.csv", index=False)
    assert main(["check", str(ref), "--reference", str(ref), "--tolerance", "seeds"]) == 2
    assert "the seeds tolerance 'inf' of tier 2" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing", "old layout", "empty"])
def test_check_names_a_missing_or_malformed_tolerances_file(tmp_path, capsys, damage):
    ref = tmp_path / "ref"
    shutil.copytree(REFERENCE, ref)
    path = ref / "tolerances.csv"
    if damage == "missing":
        path.unlink()
    elif damage == "old layout":
        path.write_text("nz,split,samples,tol\n3,test,100000,8.3\n")
    else:
        path.write_text("")
    before = _checksums(ref)
    assert main(["check", str(ref), "--reference", str(ref)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "nox -s update_reference" in err and "Traceback" not in err
    assert _checksums(ref) == before


def test_spread_is_the_seed_bands_of_compare_in_its_file_form(tmp_path, inputs):
    """spread.csv: compare's aggregation over seeds (one for both), written as always (std,
    test before train), so that a new reference's diff shows only changed numbers."""
    seeds, rounding = inputs
    make_reference(seeds, tmp_path / "ref", "test", rounding)
    assert (tmp_path / "ref" / "spread.csv").read_text() == (
        "method,nz,split,samples,seeds,mean,std,min,max\n"
        "aevb,3,test,100000,3,-74.500000,0.500000,-75.000000,-74.000000\n"
        "aevb,3,train,100000,3,-149.000000,1.000000,-150.000000,-148.000000\n"
    )
