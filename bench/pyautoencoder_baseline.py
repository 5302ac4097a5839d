"""The speed baseline: pyautoencoder's VAE driven as its Fig. 2 example drives it.

torchvision MNIST with ToTensor, a shuffling DataLoader of batch 100, torch's Adagrad
(lr 0.02), evaluation through DataLoaders of batch 100. The same MLP as ours (784-500-N_z,
tanh), weights N(0, 0.01^2), biases 0, Bernoulli likelihood on grey levels.
"""

from __future__ import annotations

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

    def __init__(self, nz: int, root: str, seed: int = 0, train_size: int = 60_000):
        torch.manual_seed(seed)
        self.vae = make_vae(nz)
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
            loss = self.vae.compute_loss(x, self.vae(x), likelihood="bernoulli")
            total += loss.diagnostics["elbo"].item() * len(x)
            n += len(x)
        return total / n

    def run(self, samples: int, eval_every: int) -> list[tuple[int, float, float]]:
        """Train to `samples`, evaluating both splits every `eval_every` samples."""
        rows = []
        for done in range(BATCH, samples + 1, BATCH):
            self.step()
            if done % eval_every == 0:
                rows.append((done, self.evaluate(self.train_set), self.evaluate(self.test_set)))
        return rows
