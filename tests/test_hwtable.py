import json

import pytest

from vaerepro.cli import main
from vaerepro.flops import step_matmuls, train_flops_per_sample
from vaerepro.hwtable import hardware_table
from vaerepro.store import RunFolderError


def _bench(impl, kind, nz, samples, median, flop=None):
    extra = {"impl": impl, "kind": kind, "nz": nz, "samples_per_round": samples}
    if flop:
        extra["flop_per_sample"] = flop
    return {"extra_info": extra, "stats": {"median": median}}


def test_hardware_table_from_a_benchmark_file(tmp_path, capsys):
    info = {"machine": "cpu-x-2c", "device": "cpu", "device_name": "CPU X", "torch": "2.14.1"}
    benches = [
        _bench("vaerepro", "train_step", 20, 5000, 0.5, flop=4e6),  # 10k samples/s
        _bench("pyautoencoder", "train_step", 20, 5000, 2.0),  # 2.5k samples/s
        _bench("torch.mm", "matmul", 20, 5000, 0.25, flop=4e6),  # 20k samples/s of matmuls
        _bench("vaerepro", "eval", 20, 10000, 0.1),
        _bench("vaerepro", "sweep", 0, 1e6, 100.0),
        _bench("pyautoencoder", "sweep", 0, 1e6, 600.0),
    ]
    (tmp_path / "cpu-x-2c-cpu.json").write_text(
        json.dumps({"machine_info": {"vaerepro": info}, "benchmarks": benches})
    )
    row = hardware_table(tmp_path).iloc[0]
    assert row["N_z"] == 20 and row["train samples/s"] == pytest.approx(10_000)
    assert row["train speedup vs baseline"] == pytest.approx(4.0)
    assert row["sweep speedup vs baseline"] == pytest.approx(6.0)
    assert row["fraction of matmul limit"] == pytest.approx(0.5)
    assert row["eval samples/s"] == pytest.approx(100_000)
    assert main(["hwtable", str(tmp_path)]) == 0
    assert "| cpu-x-2c | cpu (CPU X) | 2.14.1 | 20 |" in capsys.readouterr().out


def test_hardware_table_needs_files(tmp_path):
    with pytest.raises(RunFolderError, match="nox -s bench"):
        hardware_table(tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RunFolderError, match="bad.json"):
        hardware_table(tmp_path)


def test_step_flops_count_every_matmul():
    # forward 4 products, weight gradients 4, input gradients 3 (none for the data)
    assert len(step_matmuls(20)) == 11
    forward = 2 * (784 * 500 + 500 * 40 + 20 * 500 + 500 * 784)
    backward = 2 * forward - 2 * 784 * 500
    assert train_flops_per_sample(20) == pytest.approx(forward + backward)
