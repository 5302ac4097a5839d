"""nox sessions: `nox -s reproduce -- [vaerepro reproduce options]`, `nox -s tests regression`,
`nox -s bench`, `nox -s slurm` (a single-node SLURM cluster, as root).

Environments are reused between runs. With uv (`pip install "nox[uv]"`) every session's
environment links the same cached torch, so torch is downloaded and stored once; without uv,
nox falls back to virtualenv and pip, and each session installs its own copy.
"""

import json
import os
import shutil
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "regression"]

ROOT = Path(__file__).parent
SHARED_DATA = ROOT.parent / "shared" / "data"
CI_REFERENCE = "results/reference/ci"
REFERENCE_SEEDS = range(5)
REFERENCE_THREADS = "2"  # torch threads of the reference runs (the CI machine's 2 cores)
# other float rounding on this CPU, like another CPU's: torch's scalar kernels, MKL's
# SSE2 code path (measured for tier 1; README)
TIER1_ROUNDING = {
    "scalar-kernels": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
}


def _data_env() -> dict:
    # $VAEREPRO_DATA as given (nox passes the environment on), else ../shared/data where it
    # exists (this project's CI: never a download); else vaerepro's default roots, which
    # download MNIST once into ~/.cache/vaerepro/data (vaerepro.core.data.default_data_roots)
    if "VAEREPRO_DATA" in os.environ or not SHARED_DATA.is_dir():
        return {}
    return {"VAEREPRO_DATA": str(SHARED_DATA)}


def _run_ci_config(session: nox.Session, seed: int, out: Path, env: dict | None = None) -> None:
    session.run(
        "vaerepro",
        "reproduce",
        "--preset",
        "ci",
        "--device",
        "cpu",
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--no-plot",
        "--jobs",  # one model at a time with all of OMP_NUM_THREADS: the reference's rounding
        "1",
        env={**_data_env(), **(env or {})},
    )


def _install(session: nox.Session, extras: str = "") -> None:
    # a no-op when the environment already satisfies the project's requirements; the
    # constraints pin the torch the references were made with
    session.install("-e", f".{extras}", "-c", str(ROOT / "constraints.txt"))


@nox.session
def reproduce(session: nox.Session) -> None:
    """Train the Fig. 2 sweep (all five N_z) and write CSV logs, metadata and weights."""
    _install(session)
    session.run("vaerepro", "reproduce", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Lint and run the test suite (MNIST from $VAEREPRO_DATA, else ../shared/data, else
    downloaded once into ~/.cache/vaerepro/data); the 15 slowest tests are listed.

    CI runs every test. The fast loop for development leaves out the tests marked slow (they
    start processes of their own, or train the ci preset or past a few seconds):
    `nox -s tests -- -m "not slow"`, or `pytest -m "not slow"` in an environment with
    `pip install -e .[test]`. Every test process runs torch with one thread
    (tests/conftest.py), which keeps the suite's speed on a machine shared with other work;
    pytest-xdist runs one test process per core (`-n auto`), which on 2 cores took about 60% of
    the time of one process (docs/benchmarks.md)."""
    _install(session, "[test,bench]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # worksteal: an idle process takes queued tests from a busy one, so the few 20-40 s tests
    # do not leave one core idle at the end
    xdist = ["-n", "auto", "--dist", "worksteal"]
    session.run("pytest", *xdist, "--durations=15", *session.posargs, env=_data_env())
    # the benchmarks run (tiny sizes, no timing): speed is measured by `nox -s bench`; one
    # torch thread, as in the tests: 2 spin-waiting threads crawl beside any busy process
    smoke = {**_data_env(), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    session.run("pytest", "bench", *xdist, "--quick", "--benchmark-disable", "-q", env=smoke)


BENCH_HELP = """nox -s bench -- [options]: throughput benchmarks (bench/, pytest-benchmark)

  --device cpu|cuda|mps|auto   device of our step, evaluation and sweep (default: cpu)
  --quick                      tiny sizes, a smoke test: nothing is saved under results/
  -k EXPR                      only the benchmarks matching EXPR (pytest's -k)

A full run saves results/bench/<machine>-<device>-<host>.json (with "quick": false) and prints
`vaerepro hwtable`; on a 2-core CPU it takes about 10 minutes, 4 of them the end-to-end pair
(bench/end_to_end.py: both command lines, N_z 20 to 1e6). Any other option goes to pytest."""


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput benchmarks: nox -s bench -- --device cpu|cuda|mps [--quick]. A full run
    saves pytest-benchmark's JSON with machine info to
    results/bench/<machine>-<device>-<host>.json and prints the table."""
    if {"-h", "--help"} & set(session.posargs):
        print(BENCH_HELP)
        return
    _install(session, "[test,bench]")
    raw = Path(session.create_tmp()) / "bench.json"
    session.run(
        "pytest", "bench", f"--benchmark-json={raw}", "-q", *session.posargs, env=_data_env()
    )
    # saves a full run's file under results/bench (never a --quick one), prints the table
    session.run("vaerepro", "hwtable", "--add", str(raw))


def _reference_threads() -> str:
    """The torch thread count the CI reference was made with: float32 rounding depends on it
    (docs/gate.md, "Tolerances"), so the gate's ci run uses it on every machine."""
    meta = json.loads((ROOT / CI_REFERENCE / "reference.json").read_text())
    return str(meta["threads"])


def _gate_run(session: nox.Session, out: Path, seed: int = 0, threads: str | None = None) -> None:
    """The ci preset under `seed` and, for seed 0, its float64 trajectory (tier 1), into out,
    with `threads` torch threads (default: the reference's)."""
    env = {"OMP_NUM_THREADS": threads or _reference_threads()}
    _run_ci_config(session, seed, out, env)
    if seed == 0:
        session.run("vaerepro", "trajectory", str(out), env={**_data_env(), **env})


@nox.session
def regression(session: nox.Session) -> None:
    """The ELBO regression gate, two tiers: the float64 trajectory (tier 1) and the `ci`
    preset (tier 2: all five N_z, seed 0, CPU, the reference's thread count) against
    results/reference/ci, within tolerances measured from rounding drift."""
    _install(session)
    out = Path(session.create_tmp()) / "regression-run"
    _gate_run(session, out)
    # auto: tier 2 within rounding tolerances on the reference's CPU, within the seed spread
    # on another (float32 training from N_z = 20 on is chaotic: another CPU's kernels move
    # N_z = 200 by 1.7 nats at 2e5, as much as another seed); tier 1 is exact everywhere
    session.run(
        "vaerepro",
        "check",
        str(out),
        "--reference",
        CI_REFERENCE,
        "--tolerance",
        "auto",
        "--verbose",
    )


@nox.session
def update_reference(session: nox.Session) -> None:
    """Rewrite results/reference/ci after an intended change:
    nox -s update_reference -- "why the numbers change". Runs the `ci` preset under five
    seeds (the spread, for --tolerance seeds), and seed 0 with its trajectory again under one
    thread and the trajectory under other kernels (the rounding drift, for the default
    tolerances)."""
    if not session.posargs:
        session.error('give the reason: nox -s update_reference -- "why the numbers change"')
    _install(session)
    tmp = Path(session.create_tmp())
    runs = [tmp / f"ci-seed{seed}" for seed in REFERENCE_SEEDS]
    for seed, out in zip(REFERENCE_SEEDS, runs, strict=True):
        _gate_run(session, out, seed, threads=REFERENCE_THREADS)
    rounding = [tmp / "ci-seed0-threads1"]
    _gate_run(session, rounding[0], 0, threads="1")
    for name, variant in TIER1_ROUNDING.items():  # tier 1 only: cheap
        rounding.append(tmp / f"trajectory-{name}")
        env = {**_data_env(), **variant, "OMP_NUM_THREADS": REFERENCE_THREADS}
        session.run("vaerepro", "trajectory", str(rounding[-1]), env=env)
    session.run(
        "vaerepro",
        "make-reference",
        *map(str, runs),
        "--rounding-runs",
        *map(str, rounding),
        "--out",
        CI_REFERENCE,
        "--reason",
        " ".join(session.posargs),
    )


SLURM_DAEMONS = ("slurmctld", "slurmd", "munged")


def _ensure_slurm(session: nox.Session) -> None:
    """Debian's slurm-wlm and munge, installed with apt when missing (as root); otherwise
    the session fails saying what it needs."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [d for d in SLURM_DAEMONS if shutil.which(d, path=path) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.error(
            f"nox -s slurm starts a single-node SLURM cluster and needs {', '.join(missing)}: "
            "install Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and run "
            "the session as root (slurmd starts jobs as their users)"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env)
    session.run("apt-get", "install", "-y", "-q", "slurm-wlm", "munge", external=True, env=env)


@nox.session
def slurm(session: nox.Session) -> None:
    """`--executor slurm` on a real single-node SLURM cluster (root; slurm-wlm and munge are
    installed with apt when missing): tests/slurm/cluster.py writes a slurm.conf for this host
    and starts munged, slurmctld and slurmd; tests/slurm/integration.py submits a 2 N_z x 2
    seeds sweep, preempts one job mid-run (USR2), which requeues and resumes, and compares
    every CSV with a local run's; the daemons it started are stopped, also on failure."""
    _ensure_slurm(session)
    _install(session, "[test,cluster]")
    folder = Path(session.create_tmp()).absolute() / "slurm-cluster"
    shutil.rmtree(folder, ignore_errors=True)
    env = {**_data_env(), "PATH": os.pathsep.join([os.environ["PATH"], "/usr/sbin", "/sbin"])}
    session.run(
        "python",
        "tests/slurm/cluster.py",
        str(folder),
        "--",
        "python",
        "-m",
        "pytest",
        "tests/slurm/integration.py",
        "-s",
        "-q",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env=env,
    )
