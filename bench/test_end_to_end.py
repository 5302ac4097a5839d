"""End to end from the command line (bench/end_to_end.py): `vaerepro reproduce` and the
pyautoencoder Fig. 2 script, one after the other in this session, one round each. `vaerepro
hwtable` shows their ratio beside the step's."""

from pathlib import Path

import pytest
from end_to_end import NZ, commands, run_timed, workload

# what each command writes (besides checkpoints, weights and the report)
OUTPUTS = {
    "vaerepro": [f"nz{NZ}-seed0.csv", "figures/fig2.png"],
    "pyautoencoder": [f"nz{NZ}.csv", "fig2.png"],
}


@pytest.mark.parametrize("impl", ["vaerepro", "pyautoencoder"])
def test_end_to_end(benchmark, impl, device, quick, tmp_path):
    if device.type != "cpu":
        pytest.skip("the baseline runs on the CPU; so does this comparison")
    cmd = commands(tmp_path, quick)[impl]
    benchmark.pedantic(run_timed, args=(cmd, tmp_path / f"{impl}.log"), rounds=1, iterations=1)
    benchmark.extra_info.update(
        impl=impl,
        kind="end_to_end",
        nz=NZ,
        samples_per_round=workload(quick)["samples"],
        device=device.type,
        command=" ".join(commands(Path("OUT"), quick)[impl][1:]),
    )
    assert all((tmp_path / impl / name).is_file() for name in OUTPUTS[impl])
