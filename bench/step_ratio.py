"""The training step's time, hand-written against autograd, in one process: a ratio that
survives this VM's drifting clock speed. Run it from each checkout to compare (issue 15):

    cd CHECKOUT && PYTHONPATH=. python bench/step_ratio.py

Prints per N_z the minimum over 25 rounds of 20 steps (ms per step) of each, interleaved
round by round, and their ratio. Protocol: the pyautoencoder preset. Data: $VAEREPRO_DATA.
"""

import time

import torch

import vaerepro
from vaerepro.config import preset
from vaerepro.data import MinibatchIndices, load_mnist
from vaerepro.model import VAE
from vaerepro.optim import make_optimizer
from vaerepro.train import make_train_step

ROUNDS, STEPS = 25, 20


def main() -> None:
    data = load_mnist(None, "cpu")
    for nz in (3, 20, 200):
        cfg = preset("pyautoencoder").replace(nz=nz)
        steps = {}
        for autograd in (False, True):
            torch.manual_seed(0)
            model = VAE.from_config(cfg)
            step = make_train_step(
                [model], [make_optimizer(cfg, model)], cfg, data.train_x[: cfg.train_size], autograd
            )
            gen = torch.Generator().manual_seed(0)
            steps[autograd] = (step, MinibatchIndices(cfg.train_size, 100, cfg.sampling, gen), gen)
        best = {False: float("inf"), True: float("inf")}
        for _ in range(ROUNDS):
            for autograd, (step, batches, gen) in steps.items():
                start = time.perf_counter()
                for _ in range(STEPS):
                    step([batches.next()], [gen])
                best[autograd] = min(best[autograd], (time.perf_counter() - start) / STEPS * 1e3)
        print(
            f"{vaerepro.__file__} N_z={nz}: hand-written {best[False]:.2f} ms, autograd "
            f"{best[True]:.2f} ms, ratio {best[True] / best[False]:.2f}"
        )


if __name__ == "__main__":
    main()
