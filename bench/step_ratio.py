"""The training step's time in one process, as ratios that survive this VM's drifting clock
speed: autograd's gradient against the hand-written one (issue 15), and the wake-sleep step
against AEVB's (issue 17). Run it from each checkout to compare:

    cd CHECKOUT && PYTHONPATH=. python bench/step_ratio.py

Prints per N_z the minimum over 25 rounds of 20 steps (ms per step) of each step, interleaved
round by round, and the ratios. Protocol: the pyautoencoder preset. Data: $VAEREPRO_DATA.
"""

import time

from step_setup import make_step

import vaerepro
from vaerepro.core.config import preset
from vaerepro.core.data import load_mnist

ROUNDS, STEPS = 25, 20
# name: (method, autograd)
STEP_KINDS = {
    "hand-written": ("aevb", False),
    "autograd": ("aevb", True),
    "wake-sleep": ("wakesleep", False),
}


def main() -> None:
    data = load_mnist(None, "cpu")
    for nz in (3, 20, 200):
        steps = {}
        for name, (method, autograd) in STEP_KINDS.items():
            cfg = preset("pyautoencoder").replace(nz=nz, method=method)
            steps[name] = make_step(cfg, data.train_x, autograd)[1]
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(ROUNDS):
            for name, one_step in steps.items():
                start = time.perf_counter()
                for _ in range(STEPS):
                    one_step()
                best[name] = min(best[name], (time.perf_counter() - start) / STEPS * 1e3)
        times = ", ".join(f"{name} {ms:.2f} ms" for name, ms in best.items())
        print(
            f"{vaerepro.__file__} N_z={nz}: {times}; autograd / hand-written "
            f"{best['autograd'] / best['hand-written']:.2f}, wake-sleep / AEVB "
            f"{best['wake-sleep'] / best['hand-written']:.2f}"
        )


if __name__ == "__main__":
    main()
