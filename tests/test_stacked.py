"""`--stacked`: several models (N_z and seeds) trained in one batched step (core/batched.py)
give the numbers of separate runs: gradients and updates equal in float64, CSVs in float32."""

import pandas as pd
import pytest
import torch
from helpers import (
    DETERMINISTIC,
    assert_batched_gradients_equal_autograd,
    batched_and_separate,
    seeded_models,
    tiny,
)

from vaerepro.cli import main
from vaerepro.core.batched import PARAMS
from vaerepro.core.errors import RunFolderError
from vaerepro.core.gradients import BernoulliGradients
from vaerepro.core.model import VAE
from vaerepro.core.optim import make_optimizer
from vaerepro.runs import writes
from vaerepro.runs.loop import train, train_together
from vaerepro.runs.records import read_json

NZS = (2, 5, 3)


def test_stacked_gradients_equal_one_model_at_a_time(mnist):
    together, alone = seeded_models(NZS), seeded_models(NZS)
    xs = torch.stack([mnist.train_x[i * 100 : (i + 1) * 100] for i in range(len(NZS))]).double()
    gens = [torch.Generator().manual_seed(10 + i) for i in range(len(NZS))]
    BernoulliGradients(together, 100, z_draws=2)(xs, gens)
    for i, model in enumerate(alone):
        BernoulliGradients([model], 100, z_draws=2)(
            xs[i : i + 1], [torch.Generator().manual_seed(10 + i)]
        )
    for a, b in zip(together, alone, strict=True):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-13, msg=name)
            assert p.data_ptr() != q.data_ptr()
    # the big layers are views into one stack, shared by the models
    assert (
        together[1].enc.weight.untyped_storage().data_ptr()
        == together[0].enc.weight.untyped_storage().data_ptr()
    )


def test_stacked_training_matches_separate_runs(mnist, tmp_path, tiny_cfg):
    cfgs = [
        tiny_cfg.replace(nz=nz, sampling=s) for nz, s in zip(NZS, ("replacement",) * 3, strict=True)
    ]
    stacked = train_together(cfgs, mnist, tmp_path / "stacked", progress=False)
    for cfg, df in zip(cfgs, stacked, strict=True):
        alone = train(cfg, mnist, tmp_path / "alone", progress=False)
        pd.testing.assert_frame_equal(df[DETERMINISTIC], alone[DETERMINISTIC], rtol=1e-4)
        meta = read_json(tmp_path / "stacked" / f"nz{cfg.nz}-seed0.json")
        assert meta["stacked_with"] == [f"N_z={nz} seed 0" for nz in NZS]
        assert meta["status"] == "finished"
        weights = torch.load(tmp_path / "stacked" / f"nz{cfg.nz}-seed0.pt", weights_only=True)
        assert weights["model"]["enc.weight"].untyped_storage().nbytes() == 64 * 784 * 4  # own copy


def test_stacked_needs_configs_equal_but_for_nz_and_seed(mnist, tmp_path, tiny_cfg):
    with pytest.raises(ValueError, match="differ in nz and seed only: lr"):
        train_together([tiny_cfg, tiny_cfg.replace(nz=5, lr=0.1)], mnist, tmp_path, progress=False)
    gaussian = tiny_cfg.replace(likelihood="gaussian")
    with pytest.raises(ValueError, match="Bernoulli"):
        train_together([gaussian, gaussian.replace(nz=5)], mnist, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # refused before any file was written


def test_crash_between_the_models_checkpoints(mnist, tmp_path, tiny_cfg, monkeypatch):
    """Killed after the first model's 2nd checkpoint: the stacked resume refuses (the models
    are at different points), a resume one model at a time completes with the same numbers."""
    cfgs = [tiny_cfg.replace(nz=nz, samples=3000) for nz in NZS]
    full = train_together(cfgs, mnist, tmp_path / "full", progress=False)
    real_write, ckpts = writes.atomic_write_bytes, []

    def crash_mid_checkpoints(path, data):
        if path.suffix == ".ckpt":
            ckpts.append(path)
            if len(ckpts) == len(NZS) + 2:
                raise KeyboardInterrupt("simulated crash")
        real_write(path, data)

    monkeypatch.setattr("vaerepro.runs.folder.atomic_write_bytes", crash_mid_checkpoints)
    with pytest.raises(KeyboardInterrupt):
        train_together(cfgs, mnist, tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    with pytest.raises(RunFolderError, match="different sample counts.*without --stacked"):
        train_together(cfgs, mnist, tmp_path / "crashed", progress=False, resume=True)
    for cfg, expected in zip(cfgs, full, strict=True):
        df = train(cfg, mnist, tmp_path / "crashed", progress=False, resume=True)
        pd.testing.assert_frame_equal(df[DETERMINISTIC], expected[DETERMINISTIC], rtol=1e-4)


def test_cli_stacked(tiny_sweep, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(out, data_root, "--stacked", nz=(3, 5))) == 0
    assert "N_z=3 seed 0, N_z=5 seed 0: in one stacked step" in capsys.readouterr().err
    for nz in (3, 5):  # the numbers of the session's separate runs of the same config
        name = f"nz{nz}-seed0.csv"
        stacked, alone = (pd.read_csv(folder / name) for folder in (out, tiny_sweep.folder))
        assert len(stacked) == 2
        pd.testing.assert_frame_equal(stacked[DETERMINISTIC], alone[DETERMINISTIC], rtol=1e-4)


def test_batched_gradients_equal_autograd_in_float64():
    """The batched gradient (all layers of 3 models of N_z 2, 5, 3 at once) equals autograd's
    of -ELBO through each model's own forward, with the same noise; the padding's is 0."""
    assert_batched_gradients_equal_autograd(NZS, "cpu")


def test_batched_updates_equal_adagrad_one_model_at_a_time():
    """Six steps through a warm-up of 2 (lr 0, then the update): weights, Adagrad sums and
    steps taken equal those of each model stepped alone by its own Adagrad, in float64."""
    batched, together, opts_t, alone, opts_a = batched_and_separate(NZS, steps=6, warmup=2)
    for a, b, oa, ob in zip(together, alone, opts_t, opts_a, strict=True):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=name)
            torch.testing.assert_close(oa.state[p]["sum"], ob.state[q]["sum"], msg=name)
            assert not torch.equal(p, seeded_models(NZS)[0].get_parameter(name)[: p.shape[0]])
        assert [g["steps_taken"] for g in oa.param_groups] == [6, 6]
    for name in PARAMS:  # the padding never moved
        z = max(NZS)
        for i, nz in enumerate(NZS):
            if name == "dec.weight":
                assert (batched.w[name][i][:, nz:] == 0).all()
            elif name.startswith("enc_out"):
                assert (batched.w[name][i][nz:z] == 0).all()
                assert (batched.w[name][i][z + nz :] == 0).all()


def test_batched_warmup_leaves_the_weights_exactly():
    batched, together, *_ = batched_and_separate(NZS, steps=2, warmup=2)
    for model, start in zip(together, seeded_models(NZS), strict=True):
        for p, q in zip(model.parameters(), start.parameters(), strict=True):
            assert torch.equal(p, q)


def test_batched_training_of_several_nz_and_seeds_matches_separate_runs(mnist, tmp_path, tiny_cfg):
    """N_z 2, 5, 3 with seeds 0, 1, 1 in one batched step: each model's CSV is that of its
    separate run within float32 rounding."""
    cfgs = [tiny_cfg.replace(nz=nz, seed=s) for nz, s in zip(NZS, (0, 1, 1), strict=True)]
    stacked = train_together(cfgs, mnist, tmp_path / "stacked", progress=False)
    for cfg, df in zip(cfgs, stacked, strict=True):
        alone = train(cfg, mnist, tmp_path / "alone", progress=False)
        pd.testing.assert_frame_equal(df[DETERMINISTIC], alone[DETERMINISTIC], rtol=1e-4)
        ckpt = torch.load(tmp_path / "stacked" / f"nz{cfg.nz}-seed{cfg.seed}.ckpt")
        steps = cfg.samples // cfg.batch_size
        assert all(g["steps_taken"] == steps for g in ckpt["optimizer"]["param_groups"])


def test_cuda_graphs_need_cuda(mnist, tiny_cfg):
    from vaerepro.core.errors import UsageError
    from vaerepro.core.step import make_train_step

    model = VAE.from_config(tiny_cfg)
    with pytest.raises((UsageError, ValueError), match="CUDA"):
        make_train_step(
            [model], [make_optimizer(tiny_cfg, model)], tiny_cfg, mnist.train_x, cuda_graphs=True
        )


@pytest.mark.parametrize(
    "changes,kwargs,message",
    [
        ({"method": "wakesleep"}, {}, "train AEVB models only"),
        ({"method": "mcem", "marginal_every": 1000}, {}, "train AEVB models only"),
        ({"likelihood": "gaussian"}, {}, "--stacked needs the hand-written gradient, but"),
        ({}, {"autograd": True}, "--stacked needs the hand-written gradient, but --autograd"),
    ],
)
def test_the_batched_step_refuses_what_it_cannot_train(mnist, changes, kwargs, message):
    """The step's own guard, behind the sweep's `stacking_problem`: two models take the batched
    step, which trains AEVB through the hand-written gradient (a CUDA graph on the CPU:
    test_cuda_graphs_need_cuda)."""
    from vaerepro.core.config import TrainConfig
    from vaerepro.core.errors import UsageError
    from vaerepro.core.mcem import MCEMChains
    from vaerepro.core.step import make_train_step

    cfg = TrainConfig(nz=3, hidden=16, train_size=1000).replace(**changes)
    models = [VAE.from_config(cfg) for _ in range(2)]
    opts = [make_optimizer(cfg, m) for m in models]
    train_x = mnist.train_x[:1000]
    chains = MCEMChains(1000, 3, torch.Generator(), train_x) if cfg.method == "mcem" else None
    with pytest.raises(UsageError, match=message):
        make_train_step(models, opts, cfg, train_x, chains=chains, **kwargs)
