"""The speed baseline: pyautoencoder's VAE driven as its Fig. 2 example drives it.

torchvision MNIST with ToTensor, a shuffling DataLoader of batch 100, torch's Adagrad
(lr 0.02), evaluation through DataLoaders of batch 100. The same MLP as ours (784-500-N_z,
tanh), weights N(0, 0.01^2), biases 0, Bernoulli likelihood on grey levels.

As a Fig. 2 script from the command line (what bench/end_to_end.py times): per N_z, train,
evaluate both splits every --eval-every samples, write OUT/nz<N_z>.csv, then OUT/fig2.png:

    python bench/pyautoencoder_baseline.py --nz 20 --samples 1e6 --eval-every 1e5 --out OUT

On a GPU (`--device cuda`) the model lives there and each minibatch is moved there, as its
example does; the DataLoader stays on the CPU. Each N_z's training rate is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
from pyautoencoder.variational import VAE
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

BATCH = 100


def make_vae(nz: int, hidden: int = 500) -> VAE:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.Tanh())
    decoder = nn.Sequential(
        nn.Linear(nz, hidden), nn.Tanh(), nn.Linear(hidden, 784), nn.Unflatten(1, (1, 28, 28))
    )
    vae = VAE(encoder, decoder, latent_dim=nz)
    vae.build(torch.zeros(BATCH, 1, 28, 28))
    for m in vae.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    return vae


def mnist(root: str, train: bool) -> datasets.MNIST:
    """The example's dataset: PIL images turned into tensors one sample at a time."""
    return datasets.MNIST(root, train=train, download=True, transform=transforms.ToTensor())


class Baseline:
    """One model trained and evaluated the baseline's way."""

    def __init__(
        self, nz: int, root: str, seed: int = 0, train_size: int = 60_000, device: str = "cpu"
    ):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.rate = float("nan")  # training samples/s of the last run()
        self.vae = make_vae(nz).to(self.device)
        self.opt = torch.optim.Adagrad(self.vae.parameters(), lr=0.02)
        self.train_set, self.test_set = mnist(root, True), mnist(root, False)
        if train_size < len(self.train_set):  # smoke tests only
            self.train_set = Subset(self.train_set, range(train_size))
            self.test_set = Subset(self.test_set, range(min(train_size, len(self.test_set))))
        self.loader = DataLoader(self.train_set, batch_size=BATCH, shuffle=True, drop_last=True)
        self._batches = iter(self.loader)

    def step(self) -> None:
        """One minibatch: fetch through the DataLoader, forward, backward, Adagrad."""
        try:
            x, _ = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            x, _ = next(self._batches)
        x = x.to(self.device, non_blocking=True)
        out = self.vae(x)
        loss = self.vae.compute_loss(x, out, likelihood="bernoulli")
        self.opt.zero_grad()
        loss.objective.backward()
        self.opt.step()

    @torch.no_grad()
    def evaluate(self, dataset) -> float:
        """Mean ELBO (nats per datapoint) over a split through a DataLoader of batch 100."""
        total, n = 0.0, 0
        for x, _ in DataLoader(dataset, batch_size=BATCH):
            x = x.to(self.device)
            loss = self.vae.compute_loss(x, self.vae(x), likelihood="bernoulli")
            total += loss.diagnostics["elbo"].item() * len(x)
            n += len(x)
        return total / n

    def run(self, samples: int, eval_every: int) -> list[tuple[int, float, float]]:
        """Train to `samples`, evaluating both splits every `eval_every` samples; prints the
        training rate (samples/s, evaluation excluded)."""
        rows, training_s = [], 0.0
        start = time.perf_counter()
        for done in range(BATCH, samples + 1, BATCH):
            self.step()
            if done % eval_every == 0:
                training_s += _synchronized(self.device) - start
                rows.append((done, self.evaluate(self.train_set), self.evaluate(self.test_set)))
                start = time.perf_counter()
        training_s += _synchronized(self.device) - start
        self.rate = samples / training_s
        print(f"trained {samples} samples on {self.device} at {self.rate:.0f} samples/s")
        return rows


def _synchronized(device: torch.device) -> float:
    """The clock after the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def write_fig2(curves: dict[int, list[tuple[int, float, float]]], path: Path) -> None:
    """Train and test ELBO (nats per datapoint) against training samples, one colour per N_z."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for nz, rows in curves.items():
        samples, train, test = zip(*rows, strict=True)
        (line,) = ax.plot(samples, train, label=f"N_z={nz} train")
        ax.plot(samples, test, "--", color=line.get_color(), label=f"N_z={nz} test")
    ax.set(xscale="log", xlabel="training samples", ylabel="ELBO (nats per datapoint)")
    ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from vaerepro.core.data import (
        torchvision_root,  # a verified, extracted copy of a read-only root
    )
    from vaerepro.core.numbers import parse_count as count  # 1e6 as `vaerepro reproduce` reads it

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nz", type=int, nargs="+", default=[3, 5, 10, 20, 200])
    p.add_argument("--samples", type=count, default=1_000_000)
    p.add_argument("--eval-every", type=count, default=100_000)
    p.add_argument("--train-size", type=count, default=60_000, help="fewer: smoke tests only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="folder holding MNIST/raw (default: $VAEREPRO_DATA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, help="folder for the CSVs and fig2.png")
    p.add_argument("--json", type=Path, help="also write each N_z's training rate here")
    args = p.parse_args(argv)
    root, out = str(torchvision_root(args.data_root)), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves, rates = {}, []
    for nz in args.nz:
        base = Baseline(nz, root, args.seed, args.train_size, args.device)
        curves[nz] = base.run(args.samples, args.eval_every)
        rates.append({"nz": nz, "samples": args.samples, "train_samples_per_s": base.rate})
        with open(out / f"nz{nz}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("samples", "train_elbo", "test_elbo"), *curves[nz]])
        print(f"N_z={nz}: " + ", ".join(f"{s}: {tr:.2f} / {te:.2f}" for s, tr, te in curves[nz]))
    if any(curves.values()):  # --eval-every past --samples (a speed-only run): no curves
        write_fig2(curves, out / "fig2.png")
    if args.json:  # what bench/batched_step.py --baseline-json embeds
        info = {"impl": "pyautoencoder", "device": str(base.device), "rates": rates}
        args.json.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
