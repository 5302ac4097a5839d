"""FLOPs of one training step, counted from the layer sizes (matrix products only)."""

from __future__ import annotations


def step_matmuls(
    nz: int, hidden: int = 500, batch: int = 100, x_dim: int = 784
) -> list[tuple[int, int, int]]:
    """The (m, k, n) shapes of every matrix product in one training step with L = 1:
    forward, then the gradients of the weights and of the hidden inputs (the data needs none).
    """
    layers = [(x_dim, hidden), (hidden, 2 * nz), (nz, hidden), (hidden, x_dim)]
    forward = [(batch, i, o) for i, o in layers]
    weight_grads = [(i, batch, o) for i, o in layers]
    input_grads = [(batch, o, i) for i, o in layers[1:]]
    return forward + weight_grads + input_grads


def train_flops_per_sample(nz: int, hidden: int = 500, batch: int = 100) -> float:
    """Matmul FLOPs (2 m k n each) of one training step, per sample."""
    return sum(2 * m * k * n for m, k, n in step_matmuls(nz, hidden, batch)) / batch
