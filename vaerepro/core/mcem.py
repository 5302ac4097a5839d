"""Monte Carlo EM (the paper's Appendix E), the third method of Fig. 3: no encoder. Per
minibatch, one HMC transition of 10 leapfrog steps on each datapoint's z under the posterior
p(z|x) of the current decoder (the E-step), with the step size tuned towards 90% acceptance,
then 5 Adagrad updates of the decoder on those z (the M-step).

Where the paper is silent, the authors' code (anglepy's `wzoptim.step_batch_mcem`) answers: the
chains persist per training datapoint between visits (it keeps `z_mcmc` from call to call).
`MCEMChains` holds them: z (N_train, N_z), from the prior, and a step size per chain that keeps
adapting (hmc.py's rule), as the posterior moves with the decoder; they are part of the
model's checkpoint. The model is a `VAE` whose encoder is never trained: its ELBO columns stay
empty, and its marginal likelihood (`marginal_every`) starts its estimator's chains
from the best of many prior draws (marginal.chain_start without an encoder).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaerepro.core.hmc import INITIAL_STEP, adapt_step_size, hmc_step
from vaerepro.core.marginal import posterior_log_density
from vaerepro.core.model import VAE

LEAPFROG_STEPS = 10  # per E-step (the paper's Appendix E)
UPDATES = 5  # Adagrad steps of the decoder per minibatch (the M-step)


class MCEMChains:
    """One HMC chain per training datapoint: z (N, N_z) drawn from the prior N(0, I) by
    `generator`, and its step size (N,)."""

    def __init__(self, n: int, nz: int, generator: torch.Generator, like: Tensor):
        self.z = torch.randn((n, nz), generator=generator, dtype=like.dtype, device=like.device)
        self.step_size = torch.full((n,), INITIAL_STEP, dtype=like.dtype, device=like.device)

    def steps(self, idx: Tensor) -> Tensor:
        """The step sizes (M,) of the chains idx (M,)."""
        return self.step_size[idx]

    def adapt(self, idx: Tensor, step: Tensor, accepted: Tensor) -> None:
        """After a transition with step sizes `step` (M,): hmc.py's rule, per chain."""
        self.step_size[idx] = adapt_step_size(step, accepted)

    def state_dict(self) -> dict:
        return {"z": self.z, "step_size": self.step_size}

    def load_state_dict(self, state: dict) -> None:
        self.z, self.step_size = state["z"], state["step_size"]


def decoder_loss(model: VAE, x: Tensor, z: Tensor) -> Tensor:
    """-mean log p(x|z) of a minibatch x (M, 784) at its posterior samples z (M, N_z): the
    M-step's loss (the decoder's weight prior is the optimizer's weight decay, optim.py)."""
    return -model.log_likelihood(x, model.decode(z)).mean()


def mcem_step(
    model: VAE,
    opt: torch.optim.Optimizer,
    x: Tensor,
    idx: Tensor,
    chains: MCEMChains,
    generator: torch.Generator | None,
    leapfrog_steps: int = LEAPFROG_STEPS,
    updates: int = UPDATES,
) -> Tensor:
    """One MCEM step on the minibatch x = train_x[idx] (M, 784): the E-step moves the chains
    of idx, the M-step updates the decoder `updates` times. Returns the acceptance (M,) bool.
    With repeated indices (sampling with replacement) the last visit's chain is kept."""
    log_density = posterior_log_density(model, x)
    z, step = chains.z[idx], chains.steps(idx)
    logf, grad = log_density(z)
    z, _, _, accepted = hmc_step(log_density, z, logf, grad, step, leapfrog_steps, generator)
    chains.z[idx] = z
    chains.adapt(idx, step, accepted)
    for _ in range(updates):
        opt.zero_grad(set_to_none=True)
        decoder_loss(model, x, z).backward()
        opt.step()
    return accepted
