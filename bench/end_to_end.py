"""End to end from the command line, as a user sees it: `vaerepro reproduce` against the
pyautoencoder baseline's Fig. 2 script (bench/pyautoencoder_baseline.py) on the same workload,
each timed as a subprocess: interpreter start, imports, data loading, the time estimate,
training, evaluation, files and plots all included.

Workload: N_z = 20, 1e6 training samples, both full splits (60,000 and 10,000 images)
evaluated every 1e5, the pyautoencoder protocol (our `--preset pyautoencoder`), on the CPU,
default threads. `--quick`: 2,000 samples of 2,000 images, a smoke test.

    PYTHONPATH=. python bench/end_to_end.py [--quick] [--out FOLDER]

prints both times and their ratio; `nox -s bench` records them (bench/test_end_to_end.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = Path(__file__).with_name("pyautoencoder_baseline.py")
NZ = 20
FULL = {"samples": 1_000_000, "eval_every": 100_000, "train_size": 60_000}
QUICK = {"samples": 2_000, "eval_every": 1_000, "train_size": 2_000}


def workload(quick: bool) -> dict[str, int]:
    return QUICK if quick else FULL


def commands(out: Path, quick: bool) -> dict[str, list[str]]:
    """The two command lines, writing into out/vaerepro and out/pyautoencoder. `python -m
    vaerepro` is the `vaerepro` command (the same `main`) of this interpreter's environment."""
    w = workload(quick)
    common = ["--nz", str(NZ), "--samples", str(w["samples"]), "--eval-every", str(w["eval_every"])]
    common += ["--train-size", str(w["train_size"])]
    ours = [sys.executable, "-m", "vaerepro", "reproduce", "--preset", "pyautoencoder"]
    return {
        "vaerepro": [*ours, "--device", "cpu", *common, "--out", str(out / "vaerepro")],
        "pyautoencoder": [
            sys.executable,
            str(BASELINE),
            *common,
            "--out",
            str(out / "pyautoencoder"),
        ],
    }


def run_timed(cmd: list[str], log: Path) -> float:
    """Wall-clock seconds of one command, its output into `log`; RuntimeError quoting the
    log's end when it fails."""
    start = time.perf_counter()
    with open(log, "wb") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {code}; the end of {log}:\n{tail}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke test of tiny sizes")
    p.add_argument("--out", help="folder for both runs and their logs (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        seconds = {
            impl: run_timed(cmd, out / f"{impl}.log")
            for impl, cmd in commands(out, args.quick).items()
        }
    for impl, s in seconds.items():
        print(f"{impl}: {s:.1f} s  ({' '.join(commands(Path('OUT'), args.quick)[impl][1:])})")
    print(f"end-to-end speedup: {seconds['pyautoencoder'] / seconds['vaerepro']:.2f}x")


if __name__ == "__main__":
    main()
