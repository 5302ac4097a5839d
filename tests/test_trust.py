"""Results folders you can trust (issue 12): nothing in a results folder runs code, every
file is verified before it is used, and every refusal is a clear error (one message naming
the file or option, exit status 2) that leaves every existing file as it was."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import TINY, copy_run, refused, snapshot, tiny

from vaerepro.cli import build_parser, main
from vaerepro.core.device import resolve_device, synchronize
from vaerepro.core.evaluate import accumulator_dtype
from vaerepro.runs.records import load_run

RESULTS = Path(__file__).resolve().parents[1] / "results"


def meta_of(folder: Path, stem: str = "nz3-seed0") -> dict:
    return json.loads((folder / f"{stem}.json").read_text())


def write_meta(folder: Path, meta: dict, stem: str = "nz3-seed0") -> None:
    (folder / f"{stem}.json").write_text(json.dumps(meta))


def record_checkpoint(folder: Path, data: bytes, status: str = "interrupted") -> None:
    """Make `data` the checkpoint of nz3-seed0, recorded in its JSON as a writer would."""
    (folder / "nz3-seed0.ckpt").write_bytes(data)
    meta = meta_of(folder)
    meta["status"] = status
    meta["checkpoints"] = [{"samples": 2000, "sha256": hashlib.sha256(data).hexdigest()}]
    write_meta(folder, meta)


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the session's finished tiny run (N_z = 3, 2000 samples, two evaluations),
    free to damage."""
    return copy_run(tiny_run, tmp_path)


@pytest.fixture
def unfinished(run) -> Path:
    """The run marked interrupted at its last checkpoint (resuming it finishes it)."""
    meta = meta_of(run)
    meta["status"] = "interrupted"
    write_meta(run, meta)
    (run / "nz3-seed0.pt").unlink()
    return run


# --- Security: no code from a results folder runs --------------------------------------


class Planted:
    """Unpickling this creates the marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pickles_never_run(run, tmp_path, data_root, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    torch.save({"model": Planted(marker), "config": {}}, evil)
    data = evil.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    # The files carry checksums that match, as a hostile sender would arrange.
    (run / "nz3-seed0.pt").write_bytes(data)
    (run / "nz3-seed0.ckpt").write_bytes(data)
    meta = meta_of(run)
    meta["weights_sha256"] = sha
    meta["checkpoints"] = [{"samples": 2000, "sha256": sha}]
    write_meta(run, meta)
    before = snapshot(run)

    refused(
        ["plot", str(run), "--data-root", str(data_root)],
        capsys,
        "nz3-seed0.pt is not a plain tensor file vaerepro can load safely",
    )
    assert snapshot(run) == before
    meta["status"] = "interrupted"  # resumable, as far as the JSON says
    write_meta(run, meta)
    before = snapshot(run)
    refused(
        ["reproduce", "--resume", str(run), "--no-progress", "--no-plot"],
        capsys,
        "nz3-seed0.ckpt is not a plain tensor file vaerepro can load safely",
    )
    assert snapshot(run) == before
    assert main(["compare", str(run)]) == 0
    # check reads the run's CSV and JSON only (the configs differ from the CI reference's)
    assert main(["check", str(run), "--reference", str(RESULTS / "reference" / "ci")]) == 1
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_package():
    package = Path(__file__).resolve().parents[1] / "vaerepro"
    for path in package.rglob("*.py"):
        assert "weights_only=False" not in path.read_text(), path


# --- Silent loss or corruption ------------------------------------------------------------


def _flip_bytes(data: bytes) -> bytes:
    middle = len(data) // 2  # inside the tensor data of the model's weights
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]


@pytest.mark.parametrize(
    "damage",
    [_flip_bytes, lambda d: d[: len(d) // 3], lambda d: b""],
    ids=["bytes-overwritten", "truncated", "empty"],
)
def test_a_damaged_checkpoint_is_refused(unfinished, capsys, damage):
    ckpt = unfinished / "nz3-seed0.ckpt"
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    before = snapshot(unfinished)
    refused(
        ["reproduce", "--resume", str(unfinished), "--no-progress", "--no-plot"],
        capsys,
        f"{ckpt} does not match the SHA-256 recorded for it",
        "nz3-seed0.csv is trustworthy up to its row at samples=2000",
        f"delete {unfinished / 'nz3-seed0'}.*",
    )
    assert snapshot(unfinished) == before


def test_a_truncated_checkpoint_with_a_matching_checksum_is_refused(unfinished, capsys):
    data = (unfinished / "nz3-seed0.ckpt").read_bytes()[:100]
    record_checkpoint(unfinished, data)
    before = snapshot(unfinished)
    refused(
        ["reproduce", "--resume", str(unfinished), "--no-progress", "--no-plot"],
        capsys,
        "nz3-seed0.ckpt is not a plain tensor file",
    )
    assert snapshot(unfinished) == before


def test_damaged_weights_are_refused_by_plot(run, data_root, capsys):
    weights = run / "nz3-seed0.pt"
    weights.write_bytes(_flip_bytes(weights.read_bytes()))
    before = snapshot(run)
    refused(
        ["plot", str(run), "--data-root", str(data_root)],
        capsys,
        f"{weights} does not match the SHA-256 recorded for it",
    )
    assert snapshot(run) == before


def test_missing_checkpoint_with_csv_rows_is_refused(unfinished, data_root, capsys):
    (unfinished / "nz3-seed0.ckpt").unlink()
    before = snapshot(unfinished)
    resume = ["reproduce", "--resume", str(unfinished), "--no-progress", "--no-plot"]
    refused(
        resume,
        capsys,
        "nz3-seed0.ckpt is missing, but nz3-seed0.csv has rows up to samples=2000",
        f"delete {unfinished / 'nz3-seed0'}.*",
    )
    assert snapshot(unfinished) == before
    for path in unfinished.glob("nz3-seed0.*"):  # restarting on purpose, as the message says
        path.unlink()
    assert main([*resume, "--data-root", str(data_root)]) == 0
    assert meta_of(unfinished)["status"] == "finished"


def test_missing_json_with_a_valid_checkpoint_is_refused(unfinished, capsys):
    (unfinished / "nz3-seed0.json").unlink()
    before = snapshot(unfinished)
    refused(
        ["reproduce", "--resume", str(unfinished), "--no-progress", "--no-plot"],
        capsys,
        "nz3-seed0.json is missing, but nz3-seed0.csv, nz3-seed0.ckpt exist",
        f"delete {unfinished / 'nz3-seed0'}.*",
    )
    assert snapshot(unfinished) == before


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: [m], "is a JSON list, not an object"),
        (lambda m: {**m, "from_the_future": 1}, "unknown fields ['from_the_future']"),
        (lambda m: {**m, "config": {**m["config"], "dropout": 0.1}}, "unknown ['dropout']"),
        (lambda m: {**m, "config": {**m["config"], "lr": "fast"}}, "wrong type: ['lr']"),
        (lambda m: {**m, "status": "paused"}, "status 'paused' is not one of"),
        (lambda m: {k: v for k, v in m.items() if k != "config"}, "lacks the fields ['config']"),
        (lambda m: {**m, "checkpoints": [{"samples": 1}]}, "malformed checkpoints entry"),
    ],
)
def test_a_malformed_model_json_is_a_clear_error(run, capsys, edit, message):
    write_meta(run, edit(meta_of(run)))
    before = snapshot(run)
    refused(["compare", str(run)], capsys, "nz3-seed0.json", message)
    refused(
        ["reproduce", "--resume", str(run), "--no-progress", "--no-plot"],
        capsys,
        "nz3-seed0.json",
        message,
    )
    assert snapshot(run) == before


def test_a_malformed_run_json_is_a_clear_error(run, capsys):
    manifest = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**manifest, "extra": True}))
    before = snapshot(run)
    refused(
        ["reproduce", "--resume", str(run), "--no-progress", "--no-plot"],
        capsys,
        "run.json has unknown fields ['extra']",
    )
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "folder", sorted(str(p.parent.relative_to(RESULTS)) for p in RESULTS.rglob("run.json"))
)
def test_committed_results_still_load(folder):
    """Older JSONs (no checksums) are read as results: compare and check use them.

    A folder copied from a run that is still going holds unfinished models; its README must
    then say so in its title, so nobody reads it as a finished result.
    """
    runs = load_run(RESULTS / folder)
    assert runs
    if not all(m["status"] == "finished" for m, _ in runs):
        title = (RESULTS / folder / "README.md").read_text().splitlines()[0]
        assert "in progress" in title, (
            f"{folder} has unfinished models; its README title must say 'in progress'"
        )


def test_committed_results_compare_and_check(tmp_path, capsys):
    copy = tmp_path / "paper-1e6"
    shutil.copytree(RESULTS / "paper-1e6", copy)
    assert main(["compare", str(copy)]) == 0
    reference = RESULTS / "reference" / "ci"
    assert main(["check", str(reference), "--reference", str(reference)]) == 0


def test_overwrite_replaces_the_whole_sweep_and_only_its_files(tiny_sweep, tmp_path, data_root):
    out = copy_run(tiny_sweep.folder, tmp_path)  # a finished sweep of N_z 3 and 5
    assert {c["nz"] for c in json.loads((out / "run.json").read_text())["configs"]} == {3, 5}
    (out / "notes.txt").write_text("mine")
    (out / ".draft.tmp").write_text("mine too")
    (out / ".nz3-seed0.csv.vaerepro-ab12cd.tmp").write_text("a killed writer's")
    assert main(tiny(out, data_root, "--overwrite")) == 0
    assert not list(out.glob("nz5-seed0.*"))
    assert [c["nz"] for c in json.loads((out / "run.json").read_text())["configs"]] == [3]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / ".draft.tmp").read_text() == "mine too"
    assert not (out / ".nz3-seed0.csv.vaerepro-ab12cd.tmp").exists()
    assert not (out / ".lock").exists()


# --- Options and outputs checked before any work ----------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["--samples", "inf"], "argument --samples: not a finite number: 'inf'"),
        (["--samples", "nan"], "argument --samples: not a finite number: 'nan'"),
        (["--eval-every", "1e999"], "argument --eval-every: not a finite number: '1e999'"),
    ],
)
def test_non_finite_counts_are_refused_by_the_parser(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "--out", str(tmp_path / "r"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr", "inf"], "lr must be positive and finite, got inf"),
        (["--lr", "nan"], "lr must be positive and finite, got nan"),
        (["--seed", str(2**70)], f"seed must be in [0, 2**63 - 1), got {2**70}"),
        (["--seed", "-1"], "seed must be in [0, 2**63 - 1), got -1"),
        # paper_adagrad's eps_outside is 0: with eps_inside 0 too, a zero gradient gives 0/0
        (["--adagrad-eps-inside", "0"], "and not both 0 (a zero gradient would divide 0 by 0)"),
        (
            ["--optimizer", "torch_adagrad", "--adagrad-eps-outside", "0"],
            "and not both 0 (a zero gradient would divide 0 by 0); both are now (0.0, 0.0)",
        ),
    ],
)
def test_invalid_values_are_refused_before_mnist_loads(tmp_path, capsys, args, message):
    # The data root does not exist: reaching the data would give another message.
    argv = ["reproduce", "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")]
    refused([*argv, *TINY, *args], capsys, message)
    assert not (tmp_path / "r").exists() and not (tmp_path / "nodata").exists()


def test_out_being_a_file_is_refused(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    refused(tiny(out, data_root), capsys, f"--out {out} is a file, not a folder")
    assert out.read_text() == "not a folder"


def test_figures_being_a_file_is_refused_before_training_and_by_plot(run, data_root, capsys):
    (run / "figures").write_text("not a folder")
    before = snapshot(run)
    argv = tiny(run, data_root, "--overwrite", plot=True)
    refused(argv, capsys, f"{run / 'figures'} is a file")
    refused(["plot", str(run), "--data-root", str(data_root)], capsys, "figures is a file")
    assert snapshot(run) == before


def _make_read_only(folder: Path) -> None:
    """Read-only for this user; as root (who ignores permission bits) the immutable flag."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True)
    else:
        folder.chmod(0o555)
    try:
        (folder / ".probe").touch()
    except OSError:
        return
    (folder / ".probe").unlink()
    pytest.skip(f"cannot make {folder} read-only on this file system")


def _make_writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
    folder.chmod(0o755)


def test_a_read_only_out_is_refused_before_any_work(tmp_path, data_root, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    _make_read_only(out)
    try:
        refused(tiny(out, data_root), capsys, f"--out {out}: cannot write into {out}")
        assert snapshot(out) == {"keep.txt": hashlib.sha256(b"kept").hexdigest()}
    finally:
        _make_writable(out)


# --- Devices -------------------------------------------------------------------------------


def test_resuming_on_another_device_type_is_refused(unfinished, capsys):
    ckpt = torch.load(unfinished / "nz3-seed0.ckpt", weights_only=True)
    ckpt["device"] = "cuda"
    path = unfinished / "edited.bin"
    torch.save(ckpt, path)
    record_checkpoint(unfinished, path.read_bytes())
    path.unlink()
    before = snapshot(unfinished)
    refused(
        ["reproduce", "--resume", str(unfinished), "--device", "cpu", "--no-progress"],
        capsys,
        "nz3-seed0.ckpt was written on a cuda device; resuming it on cpu",
        "Resume with --device cuda",
    )
    assert snapshot(unfinished) == before


def test_checkpoints_hold_tensors_and_plain_data_only(tiny_run):
    ckpt = torch.load(tiny_run / "nz3-seed0.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["device"] == "cpu" and set(ckpt["rng"]) == {"torch", "cuda"}


def test_cuda_n_selects_gpu_n_and_is_validated(monkeypatch):
    assert build_parser().parse_args(["reproduce", "--device", "cuda:1"]).device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device cuda:1 requested, but torch sees 0 CUDA"):
        resolve_device("cuda:1")
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert selected == [torch.device("cuda:1")]
    with pytest.raises(ValueError, match=r"sees 2 CUDA device\(s\); choose cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_asynchronous_devices_are_synchronized_and_mps_sums_in_float32(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    for name in ("cpu", "cuda:0", "mps"):
        synchronize(torch.device(name))
    assert calls == ["cuda", "mps"]
    assert accumulator_dtype(torch.device("mps")) == torch.float32
    assert accumulator_dtype(torch.device("cpu")) == torch.float64


# --- --resume and the recorded sweep -------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["--samples", "4000"], "--samples 4000 (recorded: 2000)"),
        (["--nz", "5"], "--nz 5 (recorded: [3])"),
        (["--lr", "0.05"], "--lr 0.05 (recorded: 0.02)"),
        (["--seed", "1"], "--seed(s) 1 (recorded: [0])"),
        (["--preset", "pyautoencoder"], "--preset pyautoencoder (recorded: paper)"),
        (["--out", "elsewhere"], "--out elsewhere (the run is in"),
        (["--overwrite"], "--overwrite replaces it; give one of them"),
    ],
)
def test_resume_refuses_conflicting_options(unfinished, capsys, args, message):
    before = snapshot(unfinished)
    refused(["reproduce", "--resume", str(unfinished), "--no-progress", *args], capsys, message)
    assert snapshot(unfinished) == before


def test_compare_at_and_trajectory_on_a_read_only_folder(tiny_run, tmp_path, data_root, capsys):
    """compare --at only prints, so it works on a read-only run folder; trajectory refuses a
    read-only OUT before its minutes of training (issue 24, low)."""
    run = copy_run(tiny_run, tmp_path)
    before = snapshot(run)
    _make_read_only(run)
    try:
        assert main(["compare", str(run), "--at", "2e3"]) == 0
        assert "| method | N_z | split | ours at 2e3 |" in capsys.readouterr().out
        assert snapshot(run) == before
        out = tmp_path / "ro-out"
        out.mkdir()
        _make_read_only(out)
        try:
            argv = ["trajectory", str(out), "--nz", "3", "--data-root", str(data_root)]
            refused(argv, capsys, f"OUT {out}: cannot write into {out}")
        finally:
            _make_writable(out)
    finally:
        _make_writable(run)
