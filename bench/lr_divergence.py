"""Where the paper preset at lr 0.1 leaves sane values (issue 28): N_z = 20, seed 0, the
first 400 minibatches in float32 and in float64, printing after chosen steps the minibatch's
largest |log-variance| and |mu| of the encoder, its mean KL (nats per datapoint) and the
parameter that moved most in that step; then the first step whose mean KL exceeds 1e3 nats.

    cd bench && PYTHONPATH=.. python lr_divergence.py

One thread; data from $VAEREPRO_DATA. Results: docs/results.md (lr 0.1).
"""

import torch

from vaerepro.core.config import preset
from vaerepro.core.data import load_mnist
from vaerepro.core.model import gaussian_kl
from vaerepro.core.step import make_train_step
from vaerepro.runs.state import TrainingState

SHOWN = (100, 101, 102, 103, 105, 110, 150, 200, 400)  # the warm-up ends after step 100


def probe(dtype: str, data, steps: int = 400) -> None:
    cfg = preset("paper").replace(nz=20, lr=0.1, dtype=dtype)
    state = TrainingState(cfg, data, torch.device("cpu"))
    step = make_train_step([state.model], [state.opt], cfg, state.train_x)
    first = None
    for k in range(1, steps + 1):
        before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
        idx = state.batches.next()
        step([idx], [state.gen])
        with torch.no_grad():
            mu, logvar = state.model.encode(state.train_x[idx])
            kl = gaussian_kl(mu, logvar).mean().item()
        if first is None and kl > 1e3:
            first = k
        if k in SHOWN:
            moved = {
                n: (p.detach() - before[n]).abs().max().item()
                for n, p in state.model.named_parameters()
            }
            top = max(moved, key=moved.get)
            print(
                f"{dtype} step {k}: max|logvar| {logvar.abs().max().item():.3g}, max|mu| "
                f"{mu.abs().max().item():.3g}, KL {kl:.4g}; largest move {top} {moved[top]:.3g}"
            )
    print(f"{dtype}: first step with a minibatch KL above 1e3 nats: {first}")


def main() -> None:
    torch.set_num_threads(1)
    data = load_mnist(None, "cpu")
    for dtype in ("float32", "float64"):
        probe(dtype, data)


if __name__ == "__main__":
    main()
