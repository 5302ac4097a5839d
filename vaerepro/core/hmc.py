"""Hybrid (Hamiltonian) Monte Carlo on a batch of independent chains, one per datapoint, as the
paper uses it for its marginal likelihood estimator (Appendix D) and for Monte Carlo EM
(Appendix E). The authors' code is anglepy's hmc.py; the choices below are ours where the
paper leaves them open, and each is tested (tests/test_marginal.py).

- One HMC transition: momentum p ~ N(0, I), `leapfrog_steps` leapfrog steps of size eps on
  H(z, p) = -log f(z) + |p|^2 / 2, then a Metropolis accept/reject per chain.
- The step size is per chain. During burn-in it adapts towards an acceptance rate of
  `TARGET_ACCEPTANCE` = 0.9 (the paper's): times ADAPT_UP after an accepted move, divided by
  ADAPT_UP^9 after a rejected one, whose fixed point is 90% acceptance. After burn-in it is
  frozen, so that the chain leaves its target exactly invariant (the authors adapted
  throughout; a frozen step keeps detailed balance, `test_hmc_leaves_a_gaussian_invariant`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TARGET_ACCEPTANCE = 0.9
ADAPT_UP = 1.02
INITIAL_STEP = 0.05  # every chain's step size before it adapts
# log f(z) and its gradient: z (B, D) -> (log f (B,), d log f / dz (B, D))
LogDensity = Callable[[Tensor], tuple[Tensor, Tensor]]


def hmc_step(
    log_density: LogDensity,
    z: Tensor,
    logf: Tensor,
    grad: Tensor,
    step_size: Tensor,
    leapfrog_steps: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One HMC transition of B chains at z (B, D), whose log f (B,) and gradient (B, D) are
    given, with step sizes (B,). Returns (z, log f, gradient, accepted (B,) bool)."""
    eps = step_size.unsqueeze(-1)
    p0 = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    z_new, p, g = z, p0 + 0.5 * eps * grad, grad
    for i in range(leapfrog_steps):
        z_new = z_new + eps * p
        f_new, g = log_density(z_new)
        if i < leapfrog_steps - 1:
            p = p + eps * g
    p = p + 0.5 * eps * g
    log_ratio = (f_new - 0.5 * p.square().sum(-1)) - (logf - 0.5 * p0.square().sum(-1))
    u = torch.rand(log_ratio.shape, generator=generator, dtype=z.dtype, device=z.device)
    accept = torch.log(u) < log_ratio  # NaN (a diverged trajectory) rejects
    keep = accept.unsqueeze(-1)
    return (
        torch.where(keep, z_new, z),
        torch.where(accept, f_new, logf),
        torch.where(keep, g, grad),
        accept,
    )


def adapt_step_size(step_size: Tensor, accepted: Tensor) -> Tensor:
    """Per chain: larger after an accepted move, smaller after a rejected one (fixed point:
    TARGET_ACCEPTANCE of moves accepted)."""
    down = ADAPT_UP ** (TARGET_ACCEPTANCE / (1 - TARGET_ACCEPTANCE))
    return torch.where(accepted, step_size * ADAPT_UP, step_size / down)


def hmc_chain(
    log_density: LogDensity,
    z0: Tensor,
    samples: int,
    burn_in: int,
    leapfrog_steps: int,
    step_size: float | Tensor = INITIAL_STEP,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """B chains from z0 (B, D): `burn_in` transitions adapting the step size, then `samples`
    transitions at a frozen one. Returns (z (samples, B, D), log f (samples, B), the
    acceptance rate after burn-in per chain (B,))."""
    z = z0
    logf, grad = log_density(z)
    eps = torch.as_tensor(step_size, dtype=z.dtype, device=z.device).expand(z.shape[0]).clone()
    for _ in range(burn_in):
        z, logf, grad, accepted = hmc_step(
            log_density, z, logf, grad, eps, leapfrog_steps, generator
        )
        eps = adapt_step_size(eps, accepted)
    zs, fs, accepts = [], [], torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for _ in range(samples):
        z, logf, grad, accepted = hmc_step(
            log_density, z, logf, grad, eps, leapfrog_steps, generator
        )
        zs.append(z)
        fs.append(logf)
        accepts += accepted
    return torch.stack(zs), torch.stack(fs), accepts / samples
