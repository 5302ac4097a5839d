"""The MLP VAE of Kingma & Welling (2013), Appendix C, with its ELBO in nats per datapoint.

encoder  x (B, 784) -> tanh(500) -> mu, log sigma^2 (B, N_z) of a diagonal Gaussian q(z|x)
sample   z = mu + sigma * eps, eps ~ N(0, I), L draws: z (L, B, N_z)
decoder  z -> tanh(500) -> 784 logits of a Bernoulli p(x|z)
         (or the sigmoid mean of a Gaussian, with a learned or fixed log-variance)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaerepro.core.config import TrainConfig


@dataclass
class VAEOutput:
    """Per-datapoint ELBO terms in nats; every field has shape (B,) except mu, logvar (B, N_z)."""

    elbo: Tensor  # loglik - kl, a lower bound on log p(x)
    loglik: Tensor  # E_q[log p(x|z)], Monte Carlo over L draws of z
    kl: Tensor  # KL(q(z|x) || N(0, I)), closed form
    mu: Tensor
    logvar: Tensor


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension: (..., N_z) -> (..., N_z)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dim: (..., N_z) -> (...)."""
    return gaussian_kl_per_dim(mu, logvar).sum(-1)


def linear(inputs: Tensor, weight: Tensor, bias: Tensor, out: Tensor | None = None) -> Tensor:
    """inputs W^T + b: inputs (n, in), W (out, in), b (out,) -> (n, out); or K models stacked,
    inputs (K, n, in), W (K, out, in), b (K, out) -> (K, n, out). Into `out` when given (no
    autograd then)."""
    return _affine(inputs, weight, bias, out, scale=1.0)


def hidden_layer(inputs: Tensor, weight: Tensor, bias: Tensor, out: Tensor | None = None) -> Tensor:
    """The hidden layers of encoder and decoder: tanh(inputs W^T + b), shapes as `linear`.

    tanh is computed as 2 sigmoid(2a) - 1, with the 2 folded into the matrix product: on the
    CPU three times cheaper than torch.tanh. This is the function to edit for another
    activation (the hand-written backward then steps aside, see gradients.py)."""
    a2 = _affine(inputs, weight, bias, out, scale=2.0)  # 2a
    if out is None:
        return a2.sigmoid().mul(2.0).sub(1.0)
    return a2.sigmoid_().mul_(2.0).sub_(1.0)


def _affine(inputs: Tensor, weight: Tensor, bias: Tensor, out: Tensor | None, scale: float):
    """scale * (inputs W^T + b), 2-D or stacked 3-D (see `linear`)."""
    if inputs.dim() == 2:
        return torch.addmm(bias, inputs, weight.t(), beta=scale, alpha=scale, out=out)
    w_t, b = weight.transpose(1, 2), bias.unsqueeze(1)
    return torch.baddbmm(b, inputs, w_t, beta=scale, alpha=scale, out=out)


def standard_normal(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    like: Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """eps ~ N(0, I) of `shape` on `like`'s device and in its dtype (into `out` if given),
    drawn in torch's default dtype: a --dtype float64 run draws the float32 run's numbers,
    cast, so that the two precisions differ only by rounding."""
    dtype = torch.get_default_dtype()
    if like.dtype == dtype:
        if out is not None:
            return torch.randn(shape, generator=generator, out=out)
        return torch.randn(shape, generator=generator, device=like.device, dtype=dtype)
    eps = torch.randn(shape, generator=generator, device=like.device, dtype=dtype)
    return eps.to(like.dtype) if out is None else out.copy_(eps)


def bernoulli_loglik(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x|logits) for x in [0, 1] (grey levels allowed), summed over pixels.

    logits (..., D) and x (B, D) broadcast -> (...)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
        -1
    )


def gaussian_loglik(mean: Tensor, logvar: Tensor, x: Tensor) -> Tensor:
    """log N(x | mean, exp(logvar)) summed over the last dim: (..., D) -> (...)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) / logvar.exp()).sum(-1)


@dataclass
class Activations:
    """One forward pass of M datapoints with L draws of z: everything the loss and the
    hand-written backward need. h1 (M, H) the encoder's hidden layer; posterior (M, 2 N_z)
    [mu, log sigma^2]; sigma (M, N_z); eps, z (L, M, N_z) the noise and the samples; h3
    (L M, H) the decoder's hidden layer; out (L, M, D) the decoder output (Bernoulli logits,
    or the Gaussian's mean logits and log-variance concatenated)."""

    h1: Tensor
    posterior: Tensor
    sigma: Tensor
    eps: Tensor
    z: Tensor
    h3: Tensor
    out: Tensor | None = None

    @property
    def mu(self) -> Tensor:
        return self.posterior.chunk(2, dim=-1)[0]

    @property
    def logvar(self) -> Tensor:
        return self.posterior.chunk(2, dim=-1)[1]


class VAE(nn.Module):
    """The model. `forward_pass` is its one forward definition: the ELBO (`forward`), the
    evaluation and the hand-written training gradient (gradients.py) all run through it."""

    def __init__(
        self,
        nz: int,
        hidden: int = 500,
        x_dim: int = 784,
        likelihood: str = "bernoulli",
        gaussian_logvar: float | None = None,
        init_std: float = 0.01,
    ):
        super().__init__()
        self.nz, self.likelihood, self.fixed_logvar = nz, likelihood, gaussian_logvar
        self.enc = nn.Linear(x_dim, hidden)
        self.enc_out = nn.Linear(hidden, 2 * nz)  # [mu, log sigma^2]
        self.dec = nn.Linear(nz, hidden)
        learned_var = likelihood == "gaussian" and gaussian_logvar is None
        self.dec_out = nn.Linear(hidden, 2 * x_dim if learned_var else x_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> VAE:
        return cls(cfg.nz, cfg.hidden, 784, cfg.likelihood, cfg.gaussian_logvar, cfg.init_std)

    def forward_pass(self, x: Tensor, eps: Tensor) -> Activations:
        """The forward pass of x (M, 784) with noise eps (L, M, N_z): every activation.

        In three stages, so that the hand-written gradient can run the two big layers (enc,
        dec_out) for several models stacked and keep every activation in its own buffers:
        encoder_hidden -> latent_pass -> decoder_output."""
        act = self.latent_pass(self.encoder_hidden(x), eps)
        act.out = self.decoder_output(act.h3).view(*eps.shape[:2], -1)
        return act

    def encoder_hidden(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """x (M, 784) -> h1 (M, H); into `out` when given (as every `out` here: no autograd)."""
        return hidden_layer(x, self.enc.weight, self.enc.bias, out)

    def latent_pass(self, h1: Tensor, eps: Tensor, into: Activations | None = None) -> Activations:
        """From the encoder's hidden layer to the decoder's: h1 (M, H) and eps (L, M, N_z) ->
        Activations without `out`, written into the buffers of `into` when given."""
        buf = into
        posterior = linear(h1, self.enc_out.weight, self.enc_out.bias, buf and buf.posterior)
        mu, logvar = posterior.chunk(2, dim=-1)
        if buf is None:
            sigma = (0.5 * logvar).exp()
            z = mu + sigma * eps
        else:
            sigma = torch.exp(logvar.mul(0.5), out=buf.sigma)
            z = torch.addcmul(mu, sigma, eps, out=buf.z)
        h3 = hidden_layer(z.view(-1, self.nz), self.dec.weight, self.dec.bias, buf and buf.h3)
        return Activations(h1, posterior, sigma, eps, z, h3)

    def decoder_output(self, h3: Tensor, out: Tensor | None = None) -> Tensor:
        """h3 (n, H) -> decoder output (n, D)."""
        return linear(h3, self.dec_out.weight, self.dec_out.bias, out)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 784) -> mu, logvar (B, N_z)."""
        return linear(self.encoder_hidden(x), self.enc_out.weight, self.enc_out.bias).chunk(2, -1)

    def decode(self, z: Tensor) -> Tensor:
        """z (..., N_z) -> decoder output (..., 784): Bernoulli logits, or the Gaussian's
        [mean, logvar] concatenated (..., 1568) when the variance is learned."""
        h3 = hidden_layer(z.reshape(-1, self.nz), self.dec.weight, self.dec.bias)
        return self.decoder_output(h3).view(*z.shape[:-1], -1)

    def mean_image(self, z: Tensor) -> Tensor:
        """E[x|z] in [0, 1]: (..., N_z) -> (..., 784)."""
        out = self.decode(z)
        if self.likelihood == "gaussian" and self.fixed_logvar is None:
            out = out.chunk(2, dim=-1)[0]
        return torch.sigmoid(out)

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) for x (B, 784) and the decoder output (L, B, D) -> (L, B)."""
        if self.likelihood == "bernoulli":
            return bernoulli_loglik(out, x)
        if self.fixed_logvar is None:
            mean_logit, logvar = out.chunk(2, dim=-1)
        else:
            mean_logit, logvar = out, torch.full_like(out, self.fixed_logvar)
        return gaussian_loglik(torch.sigmoid(mean_logit), logvar, x)

    def draw_noise(
        self, x: Tensor, z_draws: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """eps ~ N(0, I) of shape (L, B, N_z) for x (B, 784), drawn from `generator`."""
        shape = (z_draws, x.shape[0], self.nz)
        return standard_normal(shape, generator, x)

    def forward(
        self,
        x: Tensor,
        z_draws: int = 1,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> VAEOutput:
        """ELBO terms of x (B, 784) with L = z_draws reparameterized draws of z (noise eps
        (L, B, N_z) drawn from `generator` unless given)."""
        if eps is None:
            eps = self.draw_noise(x, z_draws, generator)
        act = self.forward_pass(x, eps)
        loglik = self.log_likelihood(x, act.out).mean(0)
        kl = gaussian_kl(act.mu, act.logvar)
        return VAEOutput(elbo=loglik - kl, loglik=loglik, kl=kl, mu=act.mu, logvar=act.logvar)
