"""What vaerepro writes and deletes in run folders (issue 24): never a path outside the folder
you name (symbolic links are refused), --overwrite keeps one complete sweep on disk at every
moment and deletes only a vaerepro sweep, --out takes only a new, empty or run folder, plot
takes the folder's lock, and a stop signal at any moment of a --jobs start is a clean stop."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY, copy_run, refused, snapshot

import vaerepro.runs.writes as writes
from vaerepro.cli import main
from vaerepro.runs.layout import REPLACED
from vaerepro.runs.writes import folder_lock

RESULTS = Path(__file__).resolve().parents[1] / "results"
BENCH = RESULTS / "bench" / "amd-epyc-2c-cpu-vm.json"


def stamps(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (links not followed): its bytes and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def finished(tiny_run) -> Path:
    """A finished tiny run (N_z = 3, 2000 samples) with its weights, no figures. The session's
    shared run: read it, or change the copy `run`."""
    return tiny_run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    return copy_run(finished, tmp_path)


@pytest.fixture
def sibling(tmp_path) -> Path:
    """A folder beside the run whose files the links point to; nothing may touch it."""
    folder = tmp_path / "sibling"
    (folder / "figs").mkdir(parents=True)
    for name in ("fig2.png", "fig2.pdf", "components.png", "recon_nz3.png"):
        (folder / "figs" / name).write_text(f"the sibling's {name}")
    for name in ("REPORT.md", "comparison.csv", "comparison.md", "data.csv", "weights.pt"):
        (folder / name).write_text(f"the sibling's {name}")
    return folder


WITH_PLOT = [a for a in TINY if a != "--no-plot"]


# --- Item 5: nothing is written or deleted through a symbolic link ----------------------


def _link_figures(run: Path, sibling: Path) -> str:
    (run / "figures").symlink_to(sibling / "figs")
    return str(run / "figures")


def _link_report(run: Path, sibling: Path) -> str:
    (run / "REPORT.md").symlink_to(sibling / "REPORT.md")
    return str(run / "REPORT.md")


def _link_comparison(run: Path, sibling: Path) -> str:
    (run / "comparison.csv").symlink_to(sibling / "comparison.csv")
    return str(run / "comparison.csv")


def _link_weights(run: Path, sibling: Path) -> str:
    (run / "nz3-seed0.pt").unlink()
    (run / "nz3-seed0.pt").symlink_to(sibling / "weights.pt")
    return str(run / "nz3-seed0.pt")


LINKS = [_link_figures, _link_report, _link_comparison, _link_weights]


def _argv(command: str, run: Path, data_root: Path) -> list[str]:
    data = ["--data-root", str(data_root)]
    return {
        "plot": ["plot", str(run), *data],
        "reproduce": ["reproduce", "--resume", str(run), "--no-progress"],  # plots at the end
        "overwrite": ["reproduce", "--nz", "3", "--out", str(run), *data, *TINY, "--overwrite"],
    }[command]


@pytest.mark.parametrize("link", LINKS, ids=lambda f: f.__name__[6:])
@pytest.mark.parametrize("command", ["plot", "reproduce", "overwrite"])
def test_a_symlinked_file_or_figures_folder_is_refused_before_any_work(
    run, sibling, data_root, capsys, link, command
):
    """Before: plot and the plot at the end of reproduce wrote through figures/ -> sibling,
    and --overwrite deleted the sibling's figure-named files."""
    named = link(run, sibling)
    before, sibling_before = snapshot(run), stamps(sibling)
    refused(_argv(command, run, data_root), capsys, named, "symbolic link")
    assert snapshot(run) == before and stamps(sibling) == sibling_before


def test_fig2_out_with_a_symlinked_figure_is_refused(run, sibling, tmp_path, capsys):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "fig2.png").symlink_to(sibling / "figs" / "fig2.png")
    before = stamps(sibling)
    refused(["fig2", str(run), "--out", str(out)], capsys, str(out / "fig2.png"), "symbolic link")
    assert stamps(sibling) == before and not (out / "fig2.pdf").exists()


def test_an_out_that_is_a_symlink_loop_is_refused_before_mnist_loads(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    argv = ["reproduce", "--nz", "3", "--out", str(loop), "--data-root", str(tmp_path / "none")]
    refused([*argv, *TINY], capsys, f"{loop} (a link to {loop})")  # not "File exists", no data


def _hostile(run: Path, sibling: Path) -> Path:
    """The run with a link in place of everything vaerepro writes or deletes there."""
    for link in LINKS:
        link(run, sibling)
    (run / "comparison.md").symlink_to(sibling / "comparison.md")
    (run / "trajectory.csv").symlink_to(sibling / "data.csv")
    (run / "fig2.pdf").symlink_to(sibling / "figs" / "fig2.pdf")
    (run / "reference.json").symlink_to(sibling / "data.csv")
    (run / "tolerances.csv").symlink_to(sibling / "data.csv")
    (run / "amd-epyc-2c-cpu-vm.json").symlink_to(sibling / "data.csv")
    (run / REPLACED).symlink_to(sibling)
    return run


def test_no_path_outside_the_named_folder_is_written_or_deleted(run, sibling, data_root, capsys):
    """Every subcommand on a folder full of links into a sibling folder either refuses or
    works, and the sibling's files (bytes and mtimes) are as they were."""
    hostile, before = _hostile(run, sibling), stamps(sibling)
    data = ["--data-root", str(data_root)]
    commands = [
        ["reproduce", "--nz", "3", "--out", str(hostile), *data, *WITH_PLOT],
        ["reproduce", "--resume", str(hostile), "--no-progress"],
        ["reproduce", "--nz", "3", "--out", str(hostile), *data, *WITH_PLOT, "--overwrite"],
        ["plot", str(hostile), *data],
        ["compare", str(hostile)],
        ["compare", str(hostile), "--at", "2000"],
        ["fig2", str(hostile), "--out", str(hostile)],
        ["check", str(hostile), "--reference", str(RESULTS / "reference" / "ci")],
        ["trajectory", str(hostile), "--nz", "3", *data],
        ["make-reference", str(hostile), "--rounding-runs", str(hostile), "--out", str(hostile)]
        + ["--reason", "attack"],
        ["hwtable", "--add", str(BENCH), str(hostile)],
    ]
    for argv in commands:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc in (0, 1, 2) and "Traceback" not in err, (argv, err)
        assert stamps(sibling) == before, argv
        after = sorted(str(p.relative_to(sibling)) for p in sibling.rglob("*"))
        assert after == sorted([*before, "figs"]), argv


# --- Item 7 and 14: --overwrite deletes only a vaerepro sweep; --out takes no other folder ---


def _not_a_run(folder: Path) -> Path:
    (folder / "figures").mkdir(parents=True)
    (folder / "figures" / "fig2.png").write_text("someone's figure")
    (folder / "REPORT.md").write_text("someone's report")
    (folder / "nz3-seed0.csv").write_text("someone's table")
    return folder


@pytest.mark.parametrize(
    "run_json", ['{"experiment": "mine"}', "not json", None], ids=["other", "broken", "absent"]
)
def test_overwrite_refuses_a_folder_that_is_not_a_vaerepro_run(
    tmp_path, data_root, capsys, run_json
):
    """Before: --overwrite deleted its REPORT.md, run.json and figures/fig2.png."""
    folder = _not_a_run(tmp_path / "theirs")
    if run_json is not None:
        (folder / "run.json").write_text(run_json)
    before = snapshot(folder)
    argv = ["reproduce", "--nz", "3", "--out", str(folder), "--data-root", str(data_root)]
    message = "not a vaerepro sweep" if run_json else "not a vaerepro run folder"
    refused([*argv, *TINY, "--overwrite"], capsys, message)
    assert snapshot(folder) == before


@pytest.mark.parametrize("where", ["other files", "repository root", "results"])
def test_a_new_sweep_goes_only_into_a_new_empty_or_run_folder(tmp_path, data_root, capsys, where):
    """Before: a new sweep was written without a word into any existing folder."""
    folder = tmp_path / "folder"
    if where == "other files":
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    else:  # a copy of the repository root's or results/'s listing (names only)
        source = RESULTS.parent if where == "repository root" else RESULTS
        folder.mkdir()
        for p in source.iterdir():
            (folder / p.name).mkdir() if p.is_dir() else (folder / p.name).write_text("")
    before = snapshot(folder)
    argv = ["reproduce", "--nz", "3", "--out", str(folder), "--data-root", str(data_root)]
    refused([*argv, *TINY], capsys, f"--out {folder} is not empty", "not a vaerepro run folder")
    assert snapshot(folder) == before and not (folder / "run.json").exists()


def test_an_empty_folder_or_one_with_hidden_files_takes_a_new_sweep(tmp_path, data_root):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / ".gitkeep").write_text("")
    argv = ["reproduce", "--nz", "3", "--out", str(folder), "--data-root", str(data_root)]
    assert main([*argv, *TINY]) == 0
    assert (folder / "nz3-seed0.pt").exists() and (folder / ".gitkeep").exists()


# --- Item 6: --overwrite keeps one complete sweep on disk at every moment ----------------

# Runs the CLI and SIGKILLs itself just before the Nth os.replace into the run folder
# (argv[1]: N, argv[2]: the folder): renames of the old sweep aside, the new sweep's atomic
# writes (run.json, model JSON, CSV, then per evaluation JSON, checkpoint, CSV).
KILL_AT_REPLACE = """
import os, signal, sys
n, folder = int(sys.argv[1]), sys.argv[2]
calls, real = [0], os.replace
def replace(src, dst, **kw):
    if str(dst).startswith(folder):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, **kw)
os.replace = replace
from vaerepro.cli import main
sys.exit(main(sys.argv[3:]))
"""

OLD = ["nz3-seed0.csv", "nz3-seed0.json", "nz3-seed0.ckpt", "nz3-seed0.pt", "run.json"]


def _one_complete_sweep(out: Path, old: dict[str, bytes]) -> str:
    """ "new" when the new sweep (N_z = 5) has a recorded checkpoint, else "old", when every
    old file is on disk unchanged (in the folder or aside); AssertionError otherwise."""
    new = out / "nz5-seed0.json"
    if new.exists() and json.loads(new.read_text()).get("checkpoints"):
        if (out / "nz5-seed0.ckpt").exists():
            return "new"

    def kept(name: str) -> bool:
        places = (out / name, out / REPLACED / name)
        return any(p.exists() and p.read_bytes() == old[name] for p in places)

    assert all(kept(name) for name in old), "neither sweep is complete"
    return "old"


def _overwrite_killed(out: Path, data_root: Path, n: int | None, delay: float = 0.0) -> int:
    argv = ["reproduce", "--nz", "5", "--out", str(out), "--data-root", str(data_root)]
    argv += [*TINY, "--overwrite"]
    if n is not None:
        cmd = [sys.executable, "-c", KILL_AT_REPLACE, str(n), str(out), *argv]
        return subprocess.run(cmd, capture_output=True, text=True).returncode
    proc = subprocess.Popen([sys.executable, "-m", "vaerepro", *argv], stderr=subprocess.PIPE)
    while not (out / REPLACED).exists() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


# 1-5: moving the 5 old files aside; 6: the mark; 7-9: the new run.json, model JSON, CSV;
# 10-12: the first checkpoint (JSON, .ckpt, CSV); 13: the second evaluation's JSON
@pytest.mark.parametrize("kill", [1, 4, 6, 7, 9, 11, 12, 13, "random0", "random1"])
def test_overwrite_killed_at_any_moment_keeps_one_complete_sweep(
    finished, tmp_path, data_root, kill
):
    """Before: a SIGKILL after the old sweep was removed and before the new sweep's first
    checkpoint lost the finished old results."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    old = {name: (out / name).read_bytes() for name in OLD}
    if isinstance(kill, int):
        rc = _overwrite_killed(out, data_root, kill)
    else:
        rc = _overwrite_killed(out, data_root, None, random.Random(kill).uniform(0, 0.5))
    assert rc == -signal.SIGKILL
    which = _one_complete_sweep(out, old)
    # the next run settles it: the old sweep back (finished: nothing to do), or the new one on
    resume = ["reproduce", "--resume", str(out), "--no-plot", "--no-progress"]
    assert main(resume) == 0
    assert not (out / REPLACED).exists()
    recorded = [c["nz"] for c in json.loads((out / "run.json").read_text())["configs"]]
    assert recorded == ([3] if which == "old" else [5])
    if which == "old":
        assert {n: (out / n).read_bytes() for n in OLD} == old
        assert not list(out.glob("nz5-*"))
    else:
        assert not list(out.glob("nz3-*")) and (out / "nz5-seed0.pt").exists()


def test_an_overwrite_that_finished_leaves_nothing_aside(run, data_root):
    argv = ["reproduce", "--nz", "5", "--out", str(run), "--data-root", str(data_root)]
    assert main([*argv, *TINY, "--overwrite"]) == 0
    assert not (run / REPLACED).exists() and not list(run.glob("nz3-*"))


# --- Item 11: plot takes the lock; readers see one sweep or say it is changing -----------


def test_plot_is_refused_while_another_process_writes_the_folder(run, data_root, capsys):
    """Before: plot took no lock; beside `reproduce --overwrite` it mixed the two sweeps."""
    before = snapshot(run)
    with folder_lock(run):
        refused(["plot", str(run), "--data-root", str(data_root)], capsys, "is in use by")
    assert snapshot(run) == before


def test_reproduce_draws_its_figures_under_the_folder_lock(run, data_root, monkeypatch):
    import vaerepro.analysis.report as report

    held = []
    monkeypatch.setattr(
        report, "make_figures", lambda out, *a, **k: held.append(out.absolute() in writes._HELD)
    )
    monkeypatch.setattr("builtins.print", lambda *a, **k: None)
    assert main(["reproduce", "--resume", str(run), "--no-progress"]) == 0
    assert held == [True]


@pytest.mark.parametrize("command", ["compare", "check", "fig2"])
def test_readers_say_that_a_sweep_is_being_replaced(run, tmp_path, capsys, command):
    (run / REPLACED).mkdir()
    argv = {
        "compare": ["compare", str(run), "--at", "2000"],
        "check": ["check", str(run), "--reference", str(RESULTS / "reference" / "ci")],
        "fig2": ["fig2", str(run), "--out", str(tmp_path / "f")],
    }[command]
    refused(argv, capsys, "is being replaced by `reproduce --overwrite`")


def test_plot_settles_an_interrupted_overwrite(run, data_root, capsys):
    """An --overwrite killed while moving the old sweep aside: plot puts it back, then draws."""
    (run / REPLACED).mkdir()
    (run / "nz3-seed0.csv").rename(run / REPLACED / "nz3-seed0.csv")
    assert main(["plot", str(run), "--data-root", str(data_root)]) == 0
    assert "the old sweep is restored" in capsys.readouterr().err
    assert (run / "nz3-seed0.csv").exists() and not (run / REPLACED).exists()


# --- Item 16 and the low items: --jobs stops are clean ----------------------------------

JOBS = ["--nz", "3", "5", "--samples", "4000", "--eval-every", "1000", "--train-size", "2000"]
JOBS += ["--no-progress", "--no-plot", "--no-estimate", "--device", "cpu", "--jobs", "2"]
JOBS += ["--threads", "1"]


def _jobs_sweep(out: Path, data_root: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vaerepro", "reproduce", *JOBS, "--out", str(out)]
    cmd += ["--data-root", str(data_root)]
    # a session of its own: the test sends Ctrl-C's signal to the whole group, as a terminal
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("delay", [0.0, 0.5, 1.5, 3.0])
def test_ctrl_c_while_jobs_workers_start_is_a_clean_stop(tmp_path, data_root, delay):
    """Before: about 120 lines of KeyboardInterrupt tracebacks from the workers' imports."""
    out = tmp_path / "run"
    proc = _jobs_sweep(out, data_root)
    while not (out / "run.json").exists():  # the sweep has started; its workers start now
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait() == 130 and "Traceback" not in err, err
    # one job: in pytest's process, without two more workers importing torch
    resume = ["reproduce", "--resume", str(out), "--no-plot", "--no-progress", "--jobs", "1"]
    assert main(resume) == 0
    assert (out / "nz3-seed0.pt").exists() and (out / "nz5-seed0.pt").exists()


def test_ctrl_c_before_the_sweep_starts_is_a_clean_stop(tmp_path, data_root):
    proc = _jobs_sweep(tmp_path / "run", data_root)
    time.sleep(1.0)  # importing torch, loading MNIST
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait() == 130 and "Traceback" not in err, err
    assert "stopped by SIGINT" in err


def _workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(c)
        for c in children
        if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def test_a_sigkilled_worker_is_named_without_warnings(tmp_path, data_root):
    """Before: exit 137 naming no model, and a "leaked semaphore" warning."""
    out = tmp_path / "run"
    proc = _jobs_sweep(out, data_root)
    while not (out / "nz3-seed0.csv").exists() or len(_workers(proc.pid)) < 2:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    os.kill(_workers(proc.pid)[0], signal.SIGKILL)  # the first started: nz3
    err = proc.stderr.read()
    assert proc.wait() == 137, err
    assert "model 1/2 (N_z=3 seed 0): its process was killed by SIGKILL" in err, err
    assert "leaked" not in err and "Traceback" not in err, err
