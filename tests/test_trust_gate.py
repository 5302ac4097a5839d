"""Issue 24, the gate, the reference and the benchmark table: a check that compares nothing
fails; a reference's tolerances stay within the bounds of its own drift and spread; a
reference is written as a whole, checksummed, and make-reference deletes only its own plain
files inside it; hwtable names its files from sanitised data and validates benchmark JSONs."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import fake_ci_run, refused

from vaerepro.analysis import reference_writer
from vaerepro.analysis.check import check_run
from vaerepro.analysis.reference_writer import make_reference
from vaerepro.cli import main
from vaerepro.runs import writes

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "ci"


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _reseal(ref: Path) -> None:
    """Record the SHA-256 of the reference's files as they are now, as a forger (or a careless
    hand edit followed by a careless fix) would: only the bounds can then stop a bad file."""
    meta = json.loads((ref / "reference.json").read_text())
    if "sha256" in meta:
        for name in meta["sha256"]:
            meta["sha256"][name] = hashlib.sha256((ref / name).read_bytes()).hexdigest()
    (ref / "reference.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _copy(tmp_path, name="ref") -> Path:
    out = tmp_path / name
    shutil.copytree(REFERENCE, out)
    return out


def _shift(run: Path, nats: float) -> None:
    """Shift every tier-2 ELBO of a run copied from the reference by `nats`."""
    for csv in run.glob("nz*-seed0.csv"):
        df = pd.read_csv(csv)
        df[["train_elbo", "test_elbo"]] += nats
        df.to_csv(csv, index=False)


# Item 1: a gate that compared nothing must fail


@pytest.mark.parametrize("nz", [["7"], ["3", "7"]])
def test_a_check_that_compares_no_points_fails(tmp_path, capsys, nz):
    """--nz 7 against the committed reference compared 0 points and printed OK (exit 0), for
    a run shifted by -30 nats too; a requested N_z the reference lacks is a failure."""
    run = _copy(tmp_path, "run")
    _shift(run, -30.0)
    assert main(["check", str(run), "--reference", str(REFERENCE), "--nz", *nz]) == 1
    out = capsys.readouterr().out
    assert "OK" not in out and "FAILED" in out
    assert f"the reference {REFERENCE} has no model with N_z = 7" in out
    if nz == ["7"]:
        assert "tier 1 compared no points" in out and "tier 2 compared no points" in out
        assert not check_run(run, REFERENCE, nz=[7]).ok


def test_a_reference_without_the_requested_nz_fails(tmp_path, capsys, made):
    """A reference of N_z = 3 only, checked with --nz 5: zero points, a failure."""
    seeds, ref = made
    assert main(["check", str(seeds[0]), "--reference", str(ref)]) == 0
    capsys.readouterr()
    assert main(["check", str(seeds[0]), "--reference", str(ref), "--nz", "5"]) == 1
    out = capsys.readouterr().out
    assert "has no model with N_z = 5 (it has N_z = 3)" in out and "OK" not in out


# Item 2: tolerances within the bounds of the reference's own drift and spread


def _set_tolerance(ref: Path, tier: int, mode: str, value, first_only=False) -> None:
    tol = pd.read_csv(ref / "tolerances.csv", dtype=str, keep_default_na=False)
    rows = tol.index[tol.tier == str(tier)]
    tol.loc[rows[:1] if first_only else rows, mode] = value
    tol.to_csv(ref / "tolerances.csv", index=False)
    _reseal(ref)


def test_an_infinite_tier1_seeds_tolerance_is_refused(tmp_path, capsys):
    """tier 1's seeds column set to inf let `check --tolerance seeds` pass a trajectory
    multiplied by 1.5."""
    ref = _copy(tmp_path)
    _set_tolerance(ref, 1, "seeds", "inf")
    run = _copy(tmp_path, "run")
    traj = pd.read_csv(run / "trajectory.csv")
    traj["value"] *= 1.5
    traj.to_csv(run / "trajectory.csv", index=False, float_format="%.17g")
    argv = ["check", str(run), "--reference", str(ref), "--tolerance", "seeds"]
    refused(argv, capsys, f"{ref / 'tolerances.csv'}, row 2 (N_z=3, test elbo at 1000 samples)")


@pytest.mark.parametrize(
    "mode, value, bound",
    [("seeds", "49", "the bound from spread.csv is 8.31645"), ("rounding", "0.45", "is 0.1")],
)
def test_a_tier2_tolerance_beyond_its_bound_is_refused(tmp_path, capsys, mode, value, bound):
    """Tier-2 tolerances below the fixed limits (50 nats for seeds) but beyond what the
    reference's spread or drift gives let a run shifted by -30 nats (seeds) or 0.4 nats
    (rounding at N_z = 3, drift 6e-5) pass."""
    ref = _copy(tmp_path)
    _set_tolerance(ref, 2, mode, value)
    run = _copy(tmp_path, "run")
    _shift(run, -30.0 if mode == "seeds" else -0.4)
    argv = ["check", str(run), "--reference", str(ref), "--tolerance", mode]
    err = refused(argv, capsys, f"{ref / 'tolerances.csv'}: the {mode} tolerance '{value}'")
    assert "(row 258)" in err and bound in err


@pytest.mark.parametrize(
    "name, column, value, why",
    [
        ("spread.csv", "std", "1000", "not a spread over 2 or more seeds"),
        ("spread.csv", "seeds", "1", "not a spread over 2 or more seeds"),
        ("drift.csv", "drift", "-1", "drift is not a finite number >= 0"),
        ("drift.csv", "drift", "inf", "drift is not a finite number >= 0"),
    ],
)
def test_a_spread_or_drift_that_cannot_be_measured_is_refused(
    tmp_path, capsys, name, column, value, why
):
    """The bounds' own files are checked: a standard deviation beyond the range of the
    seeds, one seed, a negative or infinite drift."""
    ref = _copy(tmp_path)
    table = pd.read_csv(ref / name, dtype=str, keep_default_na=False)
    table.loc[0, column] = value
    table.to_csv(ref / name, index=False)
    _reseal(ref)
    refused(["check", str(ref), "--reference", str(ref)], capsys, f"{ref / name}, row 2", why)


def test_check_says_which_tolerances_it_used(capsys):
    ref = str(REFERENCE)
    assert main(["check", ref, "--reference", ref, "--tolerance", "seeds"]) == 0
    out = capsys.readouterr().out
    assert f"tolerances: seeds (tier 1 always rounding) from {REFERENCE / 'tolerances.csv'}" in out
    assert "within the bounds of its drift.csv and spread.csv" in out
    assert "tier 1: 1e-06 to 1e-06 nats; tier 2: 2.29 to 26.8 nats" in out


# Item 13 (the gate's part): reference JSONs validated, clear errors naming file and field


def test_a_reference_model_json_without_device_is_a_clear_error(tmp_path, capsys):
    ref = _copy(tmp_path)
    meta = json.loads((ref / "nz20-seed0.json").read_text())
    del meta["device"]
    (ref / "nz20-seed0.json").write_text(json.dumps(meta))
    _reseal(ref)
    refused(
        ["check", str(REFERENCE), "--reference", str(ref)],
        capsys,
        f"{ref / 'nz20-seed0.json'} lacks the field 'device'",
    )


@pytest.mark.parametrize("files", [5, "nz3-seed0.csv", [5], ["../victim.txt"]])
def test_a_malformed_reference_json_is_a_clear_error(tmp_path, capsys, made, files):
    """ "files": 5 gave a TypeError in make-reference; check never read reference.json."""
    seeds, ref = made
    meta = json.loads((ref / "reference.json").read_text())
    meta["files"] = files
    (ref / "reference.json").write_text(json.dumps(meta))
    before = _snapshot(ref)
    refused(["check", str(seeds[0]), "--reference", str(ref)], capsys, "reference.json", "files")
    argv = ["make-reference", *map(str, seeds[:2]), "--rounding-runs", str(seeds[2])]
    refused([*argv, "--out", str(ref), "--reason", "r"], capsys, "reference.json", "files")
    assert _snapshot(ref) == before


# Item 8: a reference is whole and verified


@pytest.fixture
def made(tmp_path):
    """(seed runs 0-2, then a rounding run; a reference made from them)."""
    seeds = [
        fake_ci_run(tmp_path / "s0", 0, -150.0, trajectory=-100.0),
        fake_ci_run(tmp_path / "s1", 1, -149.0),
        fake_ci_run(tmp_path / "threads1", 0, -150.02, trajectory=-100.0 + 1e-9),
    ]
    ref = tmp_path / "ref"
    make_reference(seeds[:2], ref, "first", seeds[2:])
    return seeds, ref


def test_check_verifies_every_files_checksum(tmp_path, capsys, made):
    """A reference changed after it was written (new tables beside an old reference.json, as
    an interrupted make-reference left them) was accepted; every file's SHA-256 is verified."""
    seeds, ref = made
    meta = json.loads((ref / "reference.json").read_text())
    assert set(meta["sha256"]) == (set(meta["files"]) | {"HISTORY.md"}) - {"reference.json"}
    csv = ref / "nz3-seed0.csv"
    df = pd.read_csv(csv)
    df["train_elbo"] -= 1e-3  # within every tolerance: only the checksum sees it
    df.to_csv(csv, index=False)
    refused(
        ["check", str(seeds[0]), "--reference", str(ref)],
        capsys,
        f"{csv} does not match the SHA-256 recorded in reference.json",
    )


def test_symlinks_in_a_reference_are_refused_not_followed(tmp_path, capsys, made):
    """A symlinked HISTORY.md made make-reference copy an outside file into the reference."""
    seeds, ref = made
    secret = tmp_path / "secret.txt"
    secret.write_text("outside content\n")
    (ref / "HISTORY.md").unlink()
    (ref / "HISTORY.md").symlink_to(secret)
    argv = ["make-reference", *map(str, seeds[:2]), "--rounding-runs", str(seeds[2])]
    refused([*argv, "--out", str(ref), "--reason", "r"], capsys, "HISTORY.md", "symlink")
    refused(["check", str(seeds[0]), "--reference", str(ref)], capsys, "HISTORY.md is a symlink")
    plain = [p for p in ref.iterdir() if p.is_file() and not p.is_symlink()]
    assert not any("outside content" in p.read_text() for p in plain)
    (ref / "HISTORY.md").unlink()
    shutil.copy(ref / "spread.csv", secret)
    (ref / "spread.csv").unlink()
    (ref / "spread.csv").symlink_to(secret)  # the same bytes, through a link
    refused(["check", str(seeds[0]), "--reference", str(ref)], capsys, "spread.csv is a symlink")
    link = tmp_path / "s0-link"
    shutil.copytree(seeds[0], link)
    (link / "nz3-seed0.csv").unlink()
    (link / "nz3-seed0.csv").symlink_to(seeds[0] / "nz3-seed0.csv")
    argv = ["make-reference", str(link), str(seeds[1]), "--rounding-runs", str(seeds[2])]
    refused([*argv, "--out", str(tmp_path / "new"), "--reason", "r"], capsys, "is a symlink")
    assert not (tmp_path / "new").exists()


# Item 3: make-reference deletes only its own plain files inside the reference folder


@pytest.mark.parametrize("listed", ["../victim.txt", "ABSOLUTE", "nz9-seed0.csv"])
def test_make_reference_never_deletes_outside_its_folder(tmp_path, capsys, made, listed):
    """A crafted reference.json listing ../ or absolute paths made make-reference delete
    files in another folder; an own-named symlink to an outside file is not followed either."""
    seeds, ref = made
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    meta = json.loads((ref / "reference.json").read_text())
    if listed == "nz9-seed0.csv":
        (ref / listed).symlink_to(victim)
    meta["files"].append(str(victim) if listed == "ABSOLUTE" else listed)
    (ref / "reference.json").write_text(json.dumps(meta))
    argv = ["make-reference", *map(str, seeds[:2]), "--rounding-runs", str(seeds[2])]
    refused([*argv, "--out", str(ref), "--reason", "r"], capsys, str(ref))
    assert victim.read_text() == "keep me"


def test_a_rewrite_keeps_other_files_and_drops_only_its_own(tmp_path, made):
    seeds, ref = made
    (ref / "notes.md").write_text("mine")
    (ref / ".hidden").write_text("mine too")
    (ref / "nz5-seed1.csv").write_text("not the writer's, with a name of its pattern")
    before = (ref / "HISTORY.md").read_text()
    make_reference(seeds[:2], ref, "second", seeds[2:])
    assert (ref / "notes.md").read_text() == "mine" and (ref / ".hidden").read_text() == "mine too"
    assert (ref / "nz5-seed1.csv").read_text().startswith("not the writer's")
    assert (ref / "HISTORY.md").read_text().startswith(before)
    assert [p.name for p in ref.parent.iterdir() if ".vaerepro-" in p.name] == []


# Item 8: a kill at any moment leaves the previous reference or the new one, whole


def _in_killed_child(action) -> None:
    """Run `action` in a forked child that dies without any cleanup (os._exit, as SIGKILL)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            action()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _kill_at(monkeypatch, target, name: str, n: int, after: bool = False):
    """Patch target.name to kill the process at its n-th call (before it, or after it)."""
    real, calls = getattr(target, name), []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == n and not after:
            os._exit(9)
        result = real(*args, **kwargs)
        if len(calls) == n and after:
            os._exit(9)
        return result

    monkeypatch.setattr(target, name, dying)


def _whole(ref: Path, old: dict, seeds) -> str:
    """ "old" or "new": which reference `ref` is, after checking it is that one, whole."""
    if _snapshot(ref) == old:
        return "old"
    result = check_run(seeds[0], ref)  # verifies the schema, every file and checksum
    assert result.ok and json.loads((ref / "reference.json").read_text())["reason"] == "second"
    assert (ref / "notes.md").read_text() == "mine"
    return "new"


KILLS = [("write_atomically", n, False) for n in range(1, 10)] + [("swap", 1, True)]
KILLS += [("unlink", n, False) for n in (1, 5)]  # while the old reference is removed


@pytest.mark.parametrize("name, n, after", KILLS)
def test_a_kill_during_make_reference_leaves_a_whole_reference(
    tmp_path, monkeypatch, made, name, n, after
):
    """A kill before each write of the new reference (9 files), right after the new folder
    took the old one's place, and at the first and fifth file removed from the old one: `ref`
    is the old reference or the new one, whole; a rerun completes and leaves nothing beside
    it."""
    seeds, ref = made
    (ref / "notes.md").write_text("mine")
    old = _snapshot(ref)
    second = [seeds[0], fake_ci_run(tmp_path / "s2", 2, -147.0)]  # another spread, every table

    def killed_run():
        target = {"unlink": Path, "write_atomically": writes}.get(name, reference_writer)
        _kill_at(monkeypatch, target, name, n, after)
        make_reference(second, ref, "second", seeds[2:])

    _in_killed_child(killed_run)
    monkeypatch.undo()
    expected = "old" if name == "write_atomically" else "new"
    assert _whole(ref, old, seeds) == expected
    make_reference(second, ref, "second", seeds[2:])
    assert _whole(ref, old, seeds) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "s0", "s1", "s2", "threads1"]


@pytest.mark.parametrize("n", [1, 2])
def test_without_an_exchange_a_kill_between_the_renames_is_undone(tmp_path, monkeypatch, made, n):
    """Where folders cannot be exchanged in one step, the old reference is renamed aside
    first; a kill right after the first or second rename leaves it whole (beside the folder,
    where the next make-reference puts it back) or the new one in place."""
    from vaerepro.runs import swap

    seeds, ref = made
    (ref / "notes.md").write_text("mine")
    old = _snapshot(ref)

    def killed_run():
        monkeypatch.setattr(swap, "_exchange", lambda a, b: False)
        _kill_at(monkeypatch, swap.os, "rename", n, after=True)
        make_reference(seeds[:2], ref, "second", seeds[2:])

    _in_killed_child(killed_run)
    monkeypatch.undo()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".ref.vaerepro-old-")]
    if n == 1:
        assert not ref.exists() and len(aside) == 1 and _snapshot(aside[0]) == old
    else:
        assert _whole(ref, old, seeds) == "new"
    make_reference(seeds[:2], ref, "second", seeds[2:])
    assert _whole(ref, old, seeds) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "s0", "s1", "threads1"]


# Item 4, item 13 (hwtable's part) and the low items: benchmark files


def _bench_json(path: Path, info_changes=None, extra_changes=None, median=0.5) -> Path:
    """A full-run benchmark file of one vaerepro train step; `extra_changes`: its extra_info
    fields to set ("DELETE": remove)."""
    info = {"machine": "cpu-x-2c", "device": "cpu", "device_name": "CPU X", "torch": "2.14.1"}
    info.update({"quick": False, "host": "h-1", **(info_changes or {})})
    extra = {"impl": "vaerepro", "kind": "train_step", "nz": 20, "samples_per_round": 5000}
    extra["flop_per_sample"] = 4e6
    for key, value in (extra_changes or {}).items():
        extra.pop(key) if value == "DELETE" else extra.__setitem__(key, value)
    bench = {"extra_info": extra, "stats": {"median": median}}
    path.write_text(json.dumps({"machine_info": {"vaerepro": info}, "benchmarks": [bench]}))
    return path


@pytest.mark.parametrize(
    "field, value",
    [
        ("host", "c/../../../victim/settings"),
        ("machine", "ABSOLUTE"),
        ("device", "../.."),
        ("host", ".hidden" + "x" * 300),
        ("machine", "\n\x00 \u00e9"),
    ],
)
def test_hwtable_add_saves_inside_its_folder_under_a_safe_name(tmp_path, capsys, field, value):
    """`host: "c/../../../victim/settings"` overwrote a file outside results/bench, and an
    absolute `machine` created a file elsewhere: each part is one safe name component."""
    value = str(tmp_path / "elsewhere" / "abs") if value == "ABSOLUTE" else value
    raw = _bench_json(tmp_path / "raw.json", {field: value})
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "settings-keep.json").write_text("keep")
    bench = tmp_path / "a" / "b" / "results" / "bench"
    before = _snapshot(tmp_path)
    assert main(["hwtable", str(bench), "--add", str(raw)]) == 0
    capsys.readouterr()
    saved = [p.relative_to(tmp_path) for p in tmp_path.rglob("*.json")]
    new = sorted(set(map(str, saved)) - set(before))
    assert len(new) == 1 and Path(new[0]).parent == bench.relative_to(tmp_path), new
    name = Path(new[0]).name
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.json", name) and len(name) <= 3 * 64 + 7
    assert not (tmp_path / "elsewhere").exists()
    assert (victim / "settings-keep.json").read_text() == "keep"


@pytest.mark.parametrize(
    "changes, median, field",
    [
        ({"samples_per_round": "5000"}, 0.5, "samples_per_round"),
        ({"samples_per_round": "ten**400"}, 0.5, "samples_per_round"),
        ({"samples_per_round": -5000}, 0.5, "samples_per_round"),
        ({"nz": "20"}, 0.5, "nz"),
        ({"nz": {"a": 1}}, 0.5, "nz"),
        ({"nz": None}, 0.5, "nz"),
        ({"nz": -3}, 0.5, "nz"),
        ({"flop_per_sample": "DELETE"}, 0.5, "flop_per_sample"),
        ({"flop_per_sample": "inf"}, 0.5, "flop_per_sample"),
        ({}, "ten**400", "median"),
        ({}, -0.5, "median"),
    ],
)
def test_benchmark_files_are_validated_field_by_field(tmp_path, capsys, changes, median, field):
    """Non-numeric samples_per_round, nz as a string, a dict or null, a missing
    flop_per_sample and 10**400 gave tracebacks; a negative speed was tabled."""
    big = "1" + "0" * 400
    path = _bench_json(tmp_path / "odd.json", extra_changes=changes, median=median)
    path.write_text(path.read_text().replace('"ten**400"', big).replace('"inf"', "Infinity"))
    refused(["hwtable", str(tmp_path)], capsys, str(path), repr(field))
    refused(["hwtable", str(tmp_path / "saved"), "--add", str(path)], capsys, str(path), field)
    assert not (tmp_path / "saved").exists()


def test_benchmark_text_cannot_inject_html_or_links(tmp_path, capsys):
    """Raw HTML and `javascript:` links went into the Markdown table as they were."""
    _bench_json(
        tmp_path / "a.json",
        {
            "device_name": "<img src=x onerror=alert(1)>",
            "machine": "[click](javascript:alert(1))",
            "torch": "<script>x</script>",
        },
    )
    assert main(["hwtable", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "<" not in table and ">" not in table and "](" not in table.replace("\\](", "")
    assert "&lt;img src=x onerror=alert(1)&gt;" in table
    assert "\\[click\\](javascript:alert(1))" in table
