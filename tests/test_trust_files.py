"""Every results file validated before it is believed (issue 24, items 9, 10, 12, 13, 15 and
low items): CSV rows against their model's config and JSON, checkpoint contents against the
config and the CSV, only regular files of a sane size, options bounded by the machine's
memory, and what the report shows recorded in each model's JSON."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import TINY, copy_run, refused, snapshot

from vaerepro.cli import main

STEM = "nz3-seed0"


def meta_of(folder: Path) -> dict:
    return json.loads((folder / f"{STEM}.json").read_text())


def write_meta(folder: Path, meta: dict) -> None:
    (folder / f"{STEM}.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def finished(tiny_run) -> Path:
    """A finished tiny run (N_z = 3, 2000 samples, evaluations at 1000 and 2000). The session's
    shared run: read it, or change the copy `run`."""
    return tiny_run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    return copy_run(finished, tmp_path)


def resume_argv(folder: Path) -> list[str]:
    return ["reproduce", "--resume", str(folder), "--no-progress", "--no-plot"]


# --- Item 9: CSVs and JSONs validated against each other --------------------------------


def _csv(folder: Path) -> Path:
    return folder / f"{STEM}.csv"


def _edit_rows(folder: Path, edit) -> None:
    df = pd.read_csv(_csv(folder))
    edit(df).to_csv(_csv(folder), index=False)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: _csv(f).unlink(), "nz3-seed0.csv is missing, but its metadata"),
        (lambda f: _edit_rows(f, lambda df: df.iloc[:0]), "has 0 rows, but its JSON"),
        (lambda f: _edit_rows(f, lambda df: df.iloc[:1]), "has 1 rows, but its JSON"),
    ],
    ids=["deleted", "header-only", "short"],
)
def test_a_finished_model_without_its_rows_is_refused(run, data_root, capsys, damage, message):
    """Before: the model was silently left out of compare, plot and --resume's summary."""
    damage(run)
    before = snapshot(run)
    refused(["compare", str(run)], capsys, str(_csv(run)), message)
    refused(["plot", str(run), "--data-root", str(data_root)], capsys, message)
    refused([*resume_argv(run), "--data-root", str(data_root)], capsys, message)
    assert snapshot(run) == before


def test_a_model_json_of_another_nz_is_refused(run, capsys):
    """Before: the model was reported under the JSON's N_z (5), not its file's (3)."""
    meta = meta_of(run)
    meta["config"]["nz"] = 5
    write_meta(run, meta)
    refused(["compare", str(run)], capsys, f"{run / STEM}.json holds the config of nz5-seed0.json")


def _set(df: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    df = df.astype({column: float if isinstance(value, float) else object})
    df.loc[row, column] = value
    return df


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda df: pd.concat([df, df.iloc[[-1]]]), "row 3 (line 4, samples=2000): samples must"),
        (lambda df: df.iloc[::-1], "row 2 (line 3, samples=1000): samples must"),
        (lambda df: _set(df, 1, "test_elbo", float("nan")), "row 2 (line 3, samples=2000): test"),
        (lambda df: _set(df, 0, "train_elbo", float("inf")), "train_elbo is inf (not finite)"),
        (lambda df: _set(df, 0, "samples", 0), "row 1 (line 2, samples=0): samples must"),
        (lambda df: _set(df, 0, "samples", -1000), "row 1 (line 2, samples=-1000)"),
        (lambda df: _set(df, 0, "samples", 500), "row 1 (line 2, samples=500) is off the evalu"),
        (lambda df: _set(df, 1, "samples", 3000), "row 2 (line 3, samples=3000) is off the eval"),
        (lambda df: _set(df, 1, "wall_s", "fast"), "non-numeric values in column wall_s"),
    ],
    ids=["duplicated", "reversed", "nan", "inf", "zero", "negative", "off-grid", "past", "text"],
)
def test_csv_rows_are_validated(run, data_root, capsys, edit, message):
    """Before: a duplicated row made one seed show as two (sd 0), reversed rows made the
    first evaluation the final result, NaN and samples <= 0 were accepted, inf crashed plot
    with a message naming no file."""
    _edit_rows(run, edit)
    before = snapshot(run)
    refused(["compare", str(run)], capsys, f"run CSV {_csv(run)}", message)
    refused(["plot", str(run), "--data-root", str(data_root)], capsys, str(_csv(run)), message)
    assert snapshot(run) == before


def test_a_run_json_model_without_rows_gets_the_right_message(run, capsys):
    """Before: 'holds no model yet (no nz*-seed*.json)' while the JSON existed."""
    meta = meta_of(run)
    meta["status"], meta["checkpoints"] = "running", []
    write_meta(run, meta)
    _edit_rows(run, lambda df: df.iloc[:0])
    refused(["compare", str(run)], capsys, "holds no model with a logged evaluation yet", STEM)


# --- Item 10: a checkpoint with a matching checksum is still data ------------------------


def craft_checkpoint(folder: Path, edit, status: str = "interrupted", recorded: int = 2000) -> None:
    """Edit nz3-seed0's checkpoint and record its checksum in its JSON (at samples
    `recorded`), as a hostile sender would."""
    path = folder / f"{STEM}.ckpt"
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    data = path.read_bytes()
    meta = meta_of(folder)
    meta["status"] = status
    meta["checkpoints"] = [{"samples": recorded, "sha256": hashlib.sha256(data).hexdigest()}]
    meta.pop("weights_sha256", None)
    write_meta(folder, meta)
    (folder / f"{STEM}.pt").unlink(missing_ok=True)


def _fake_rows(ckpt: dict) -> None:
    ckpt["rows"] = [{**r, "test_elbo": -1.0} for r in ckpt["rows"]]


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.update(samples=10**30), "samples=1000000000000000000000000000000 is not"),
        (lambda c: c.update(samples=1050), "samples=1050 is not a whole number of minibatches"),
        (lambda c: c.update(samples=0), "samples=0 is not a whole number of minibatches"),
        (lambda c: c.update(samples="2000"), "samples='2000' is not a whole number"),
        (lambda c: c.update(rows=c["rows"][:1]), "rows must be a list of 2 evaluations"),
        (lambda c: c.update(samples=1000, rows=c["rows"][:1]), "not a checkpoint its JSON rec"),
        (_fake_rows, "row 1 differs from the CSV's row 1"),
        (lambda c: c["rows"][0].update(test_elbo="-90"), "row 1 holds a value that is not a"),
        (lambda c: c["rows"][0].update(samples=500), "row 1 has samples=500, off the evaluation"),
        (lambda c: c.update(wall_s="long"), "wall_s must be a finite number"),
        (lambda c: c.update(wall_s=float("nan")), "wall_s must be a finite number"),
        (lambda c: c["model"].update({"enc.weight": torch.zeros(2, 2)}), "model['enc.weight']"),
        (lambda c: c["model"].update({"extra": torch.zeros(1)}), "model must hold the tensors"),
        (lambda c: c["batches"].update(pos="0"), "batches['pos'] must be an int"),
        (lambda c: c["batches"].update(perm=torch.zeros(5)), "batches['perm'] must be None"),
        (lambda c: c["rng"].update(torch="state"), "rng must hold uint8 generator states"),
        (lambda c: c.update(extra=1), "has unknown keys 'extra'"),
        (lambda c: c["optimizer"]["param_groups"][0].update(lr=1.0), "optimizer's ['lr'] differ"),
    ],
    ids=[
        "1e30",
        "off-step",
        "zero",
        "string-samples",
        "rows-short",
        "unrecorded",
        "fake-rows",
        "string-row",
        "row-off-grid",
        "string-wall",
        "nan-wall",
        "shape",
        "extra-tensor",
        "string-pos",
        "perm",
        "rng",
        "extra-key",
        "lr",
    ],
)
def test_a_crafted_checkpoint_with_its_checksum_is_refused(run, data_root, capsys, edit, message):
    """Before: samples=10**30 was marked finished without training, fake rows were copied
    into the CSV, strings in numeric fields gave tracebacks."""
    craft_checkpoint(run, edit)
    before = snapshot(run)
    refused([*resume_argv(run), "--data-root", str(data_root)], capsys, f"{STEM}.ckpt", message)
    assert snapshot(run) == before


def test_a_running_checkpoint_off_the_evaluation_grid_is_refused(run, data_root, capsys):
    """samples=1500 on a running model (checkpoints of a running model are evaluations):
    before, it went on without the evaluation the CSV lacks."""
    craft_checkpoint(run, lambda c: c.update(samples=1500, rows=c["rows"][:1]), "running", 1500)
    _edit_rows(run, lambda df: df.iloc[:1])
    refused(
        [*resume_argv(run), "--data-root", str(data_root)],
        capsys,
        "samples=1500 of a running model is not an evaluation",
    )


def test_a_hostile_device_string_is_never_echoed(run, data_root, capsys):
    """Before: the advice read 'Resume with --device cpu; rm -rf /'."""
    craft_checkpoint(run, lambda c: c.update(device="cpu; rm -rf /"))
    err = refused(
        [*resume_argv(run), "--data-root", str(data_root)],
        capsys,
        "device must be one of cpu, cuda, mps",
    )
    assert "rm -rf" not in err


def test_a_genuine_interrupted_checkpoint_still_resumes(run, data_root):
    """The checks pass what vaerepro writes: its checkpoint, recorded as interrupted, resumes
    (and finishes without training: it is at the budget)."""
    craft_checkpoint(run, lambda c: None)
    assert main([*resume_argv(run), "--data-root", str(data_root)]) == 0
    assert meta_of(run)["status"] == "finished"


# --- Item 12: special files and huge inputs ----------------------------------------------


def _run_capped(argv: list[str], seconds: int = 60) -> subprocess.CompletedProcess:
    """vaerepro in a subprocess under an 8 GB address-space limit (torch's import needs 6)
    and a timeout, so that the code before the fix fails (MemoryError, timeout) instead of
    taking the machine."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
    code = limit + f"from vaerepro.cli import main; raise SystemExit(main({argv!r}))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=seconds, env=env
    )


@pytest.mark.parametrize("name", [f"{STEM}.csv", f"{STEM}.json", "run.json", f"{STEM}.ckpt"])
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_special_and_huge_files_are_refused(run, kind, name, data_root):
    """Before: /dev/zero exhausted memory and a FIFO hung compare; a 100 MB CSV took 78 s."""
    path = run / name
    path.unlink()
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate(200 << 20)  # 200 MB, sparse
    if name.endswith(".ckpt"):
        meta = meta_of(run)
        meta["status"] = "interrupted"
        write_meta(run, meta)
        argv = [*resume_argv(run), "--data-root", str(data_root)]
    else:
        argv = ["compare", str(run)]
    result = _run_capped(argv)
    assert result.returncode == 2, result.stderr
    # a link is refused as a link (test_trust_folders), before what it points to is opened
    reasons = {"huge": "is 200.0 MB, more than", "fifo": "is not a regular file"}
    reason = reasons.get(kind, "(a link to /dev/zero)")
    assert f"{path} {reason}" in result.stderr and "Traceback" not in result.stderr


# --- Item 15: what the report shows is recorded in the model's JSON ----------------------


def _active_units_cell(folder: Path) -> str:
    text = (folder / "REPORT.md").read_text()
    lines = [x for x in text.splitlines() if x.startswith("| aevb | 3 |")]
    return lines[0].rstrip(" |").rsplit("|", 1)[1].strip()


def test_a_report_without_weights_keeps_the_active_units(run, data_root, capsys):
    """Before: plot on a committed folder (no .pt) turned '3 / 3' into '–'."""
    meta = meta_of(run)
    assert len(meta["kl_per_dim"]) == 3 and 0 <= meta["active_units"] <= 3
    assert main(["plot", str(run), "--data-root", str(data_root)]) == 0
    with_weights = _active_units_cell(run)
    assert with_weights == f"{meta['active_units']} / 3"
    (run / f"{STEM}.pt").unlink()
    (run / "figures" / "kl_per_dim_nz3.png").unlink()
    assert main(["plot", str(run)]) == 0
    assert _active_units_cell(run) == with_weights
    assert (run / "figures" / "kl_per_dim_nz3.png").exists()
    assert "KL per dimension and active units of N_z=3 from their JSONs" in capsys.readouterr().err
    for key in ("kl_per_dim", "active_units"):  # an older JSON: '–', as before
        meta.pop(key)
    write_meta(run, meta)
    assert main(["plot", str(run)]) == 0
    assert _active_units_cell(run) == "–"


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(active_units=3, kl_per_dim=[0.0, 0.0, 0.0]),
        lambda m: m.update(kl_per_dim=[1.0]),
        lambda m: m.update(kl_per_dim=["1", "1", "1"]),
        lambda m: m.pop("kl_per_dim"),
    ],
    ids=["count", "length", "strings", "half"],
)
def test_malformed_recorded_latent_usage_is_refused(run, capsys, edit):
    meta = meta_of(run)
    edit(meta)
    write_meta(run, meta)
    refused(["compare", str(run)], capsys, f"{STEM}.json: kl_per_dim must be 3 finite numbers")


# --- Item 13: sizes the machine cannot allocate, out of memory, a symlink loop -----------


@pytest.mark.parametrize(
    "args", [["--hidden", "1e8"], ["--nz", "1000000000"], ["--z-draws", "1e7"]]
)
def test_sizes_the_machine_cannot_allocate_are_refused_before_any_work(
    tmp_path, data_root, capsys, args
):
    """Before: a traceback, a folder holding only run.json, and --resume repeating it."""
    out = tmp_path / "out"
    argv = ["reproduce", *TINY, *(["--nz", "3"] if "--nz" not in args else []), *args]
    refused(
        [*argv, "--out", str(out), "--data-root", str(data_root)],
        capsys,
        "GB of memory",
        "GB available",
        "Choose smaller sizes",
    )
    assert not out.exists()


def test_resuming_a_folder_of_an_unallocatable_sweep_is_refused(finished, tmp_path, capsys):
    """The folder the bug left (run.json only): --resume gives the estimate, no traceback."""
    out = tmp_path / "out"
    out.mkdir()
    record = json.loads((finished / "run.json").read_text())
    record["configs"] = [{**c, "hidden": 10**8} for c in record["configs"]]
    (out / "run.json").write_text(json.dumps(record))
    before = snapshot(out)
    refused(resume_argv(out), capsys, "GB of memory", "--hidden 100000000")
    assert snapshot(out) == before


def test_a_symlink_loop_as_data_root_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    argv = ["reproduce", *TINY, "--nz", "3", "--out", str(tmp_path / "out")]
    refused([*argv, "--data-root", str(tmp_path / "a")], capsys, "a symlink loop?")


def _allocator_fails(*args, **kwargs):
    raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")


def test_out_of_memory_loading_mnist_is_a_clear_error(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setattr("vaerepro.core.data.decoded_splits", _allocator_fails)
    argv = ["reproduce", *TINY, "--nz", "3", "--out", str(tmp_path / "out")]
    refused([*argv, "--data-root", str(data_root)], capsys, "loading MNIST from", "out of memory")


def test_out_of_memory_in_the_final_plot_is_a_clear_error(run, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("vaerepro.analysis.report.plot_fig2", no_memory)
    refused(["plot", str(run)], capsys, f"drawing the figures of {run}: out of memory")


# --- Low items ----------------------------------------------------------------------------


def test_a_home_that_does_not_exist_is_not_created(tmp_path, data_root, capsys, monkeypatch):
    """Before: the missing HOME was created, with a 105 MB cache under it."""
    home = tmp_path / "no-such-home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("VAEREPRO_CACHE", raising=False)
    argv = ["reproduce", *TINY, "--nz", "3", "--out", str(tmp_path / "out")]
    refused([*argv, "--data-root", str(data_root)], capsys, f"{home} (HOME) does not exist")
    assert not home.exists()


def test_a_full_tmpdir_is_named(mnist, tiny_cfg, monkeypatch):
    """Before: the message named a file in a temporary folder, not TMPDIR."""
    import tempfile

    from vaerepro.core.errors import WriteFailed
    from vaerepro.runs.trajectory import run_trajectory

    def full(path, data):
        raise WriteFailed(f"cannot write {path}: No space left on device")

    monkeypatch.setattr("vaerepro.runs.writes.write_atomically", full)
    with pytest.raises(WriteFailed, match="TMPDIR") as err:
        run_trajectory(mnist, nz=[3], cfg=tiny_cfg, methods=["aevb"])
    assert tempfile.gettempdir() in str(err.value)
