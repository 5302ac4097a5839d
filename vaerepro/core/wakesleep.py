"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the paper's baseline in Fig. 2,
on the same model: the encoder is the recognition model q(z|x), the decoder the generative
model p(x|z) p(z). Both phases run through the model's forward (model.py).

Per minibatch x (M, 784), with L = z_draws:
  wake   z ~ q(z|x) (L per image, no gradient through the sampling); the generative model
         (dec, dec_out) ascends  mean log p(x|z)        (log p(z) = N(0, I) has no parameters)
  sleep  M dreams: z ~ N(0, I), x ~ p(x|z) (Bernoulli samples, or the probabilities themselves
         with dreams="mean"); the recognition model (enc, enc_out) ascends  mean log q(z|x)
One Adagrad step then updates both (their parameters are disjoint), with the same step size,
minibatch, initialisation and weight prior as AEVB. Noise is drawn in this order from the
model's generator: eps (L, M, N_z), the dreams' z (M, N_z), then (sampled) their pixels.

`objective` states the two objectives for autograd; `WakeSleepGradients` writes their
gradients out by hand into buffers (the fast path), and tests/test_wakesleep.py checks them
against each other in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaerepro.core import model as vae
from vaerepro.core.gradients import affine_grads, tanh_backward
from vaerepro.core.model import VAE, standard_normal


def dream(model: VAE, m: int, dreams: str, gen: torch.Generator | None, like: Tensor):
    """M dreams from the generative model: z (M, N_z) ~ N(0, I) and x (M, 784) ~ p(x|z)
    (Bernoulli samples; dreams="mean": the probabilities). No gradient."""
    with torch.no_grad():
        z = standard_normal((m, model.nz), gen, like)
        p = model.mean_image(z)
        return z, (torch.bernoulli(p, generator=gen) if dreams == "sampled" else p)


def objective(model: VAE, x: Tensor, z_draws: int, gen, dreams: str) -> Tensor:
    """-(wake + sleep objective) of a minibatch x (M, 784), for autograd: its gradient is the
    wake gradient for the generative parameters and the sleep gradient for the recognition
    parameters."""
    eps = model.draw_noise(x, z_draws, gen)
    with torch.no_grad():  # the wake phase samples z from q without differentiating q
        z = model.forward_pass(x, eps).z
    wake = model.log_likelihood(x, model.decode(z)).mean()
    z_dream, x_dream = dream(model, x.shape[0], dreams, gen, x)
    mu, logvar = model.encode(x_dream)
    sleep = vae.gaussian_loglik(mu, logvar, z_dream).mean()
    return -(wake + sleep)


class WakeSleepGradients:
    """Writes the gradient of `objective` into every `param.grad` of one Bernoulli VAE, by
    hand and into buffers. Call with minibatches xs (1, M, 784) and one generator."""

    def __init__(self, models: list[VAE], batch_size: int, z_draws: int, dreams: str):
        if len(models) != 1 or models[0].likelihood != "bernoulli":
            raise ValueError("the wake-sleep gradient is written for one Bernoulli VAE")
        self.model = model = models[0]
        m, n, nz = batch_size, z_draws * batch_size, model.nz
        (hidden, x_dim), like = model.enc.weight.shape, model.enc.weight
        empty = lambda *shape: torch.empty(shape, device=like.device, dtype=like.dtype)  # noqa: E731
        self.act = vae.Activations(
            h1=empty(m, hidden),
            posterior=empty(m, 2 * nz),
            sigma=empty(m, nz),
            eps=empty(z_draws, m, nz),
            z=empty(z_draws, m, nz),
            h3=empty(n, hidden),
        )
        self.logits, self.d_h3 = empty(n, x_dim), empty(n, hidden)
        self.z_dream, self.h3_dream = empty(m, nz), empty(m, hidden)
        self.p_dream, self.x_dream = empty(m, x_dim), empty(m, x_dim)
        self.d_posterior, self.d_h1 = empty(m, 2 * nz), empty(m, hidden)
        self.z_draws, self.batch_size, self.dreams = z_draws, m, dreams
        for p in model.parameters():
            p.grad = torch.zeros_like(p)

    @torch.no_grad()
    def __call__(self, xs: Tensor, generators: list[torch.Generator | None]) -> None:
        model, act, (gen,) = self.model, self.act, generators
        x, (m, nz, draws) = xs[0], (self.batch_size, model.nz, self.z_draws)
        enc, enc_out, dec, dec_out = model.enc, model.enc_out, model.dec, model.dec_out

        # wake: z ~ q(z|x) through the model's forward, then the generative model's gradient
        standard_normal(act.eps.shape, gen, act.eps, out=act.eps)
        model.latent_pass(model.encoder_hidden(x, out=act.h1), act.eps, into=act)
        logits = model.decoder_output(act.h3, out=self.logits)
        d_logits = logits.sigmoid_().view(draws, m, -1).sub_(x).div_(draws * m).view(draws * m, -1)
        affine_grads(d_logits, act.h3, dec_out.weight.grad, dec_out.bias.grad)
        d_a3 = tanh_backward(torch.mm(d_logits, dec_out.weight, out=self.d_h3), act.h3)
        affine_grads(d_a3, act.z.view(-1, nz), dec.weight.grad, dec.bias.grad)

        # sleep: dreams from the generative model, then the recognition model's gradient
        z = standard_normal((m, nz), gen, self.z_dream, out=self.z_dream)
        h3 = vae.hidden_layer(z, dec.weight, dec.bias, out=self.h3_dream)
        p = vae.linear(h3, dec_out.weight, dec_out.bias, out=self.p_dream).sigmoid_()
        x_dream = p
        if self.dreams == "sampled":
            x_dream = torch.bernoulli(p, generator=gen, out=self.x_dream)
        h1 = model.encoder_hidden(x_dream, out=act.h1)
        posterior = vae.linear(h1, enc_out.weight, enc_out.bias, out=act.posterior)
        mu, logvar = posterior[:, :nz], posterior[:, nz:]
        # -log q = 0.5 logvar + 0.5 (z - mu)^2 exp(-logvar) + const, averaged over M
        d_mu, d_logvar = self.d_posterior[:, :nz], self.d_posterior[:, nz:]
        torch.sub(mu, z, out=d_mu).mul_(torch.exp(logvar.neg())).div_(m)  # (mu - z) / var / M
        torch.mul(d_mu, mu - z, out=d_logvar).mul_(-m).add_(1.0).mul_(0.5 / m)
        affine_grads(self.d_posterior, h1, enc_out.weight.grad, enc_out.bias.grad)
        d_a1 = tanh_backward(torch.mm(self.d_posterior, enc_out.weight, out=self.d_h1), h1)
        affine_grads(d_a1, x_dream, enc.weight.grad, enc.bias.grad)
