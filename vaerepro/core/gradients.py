"""The backward pass of the Bernoulli VAE's training loss, written out by hand, for K models
at once. The forward pass is the model's (model.py): its layer functions `hidden_layer` and
`linear` for the two big layers, stacked, and `VAE.latent_pass` for the rest, into buffers.

The loss is the minibatch mean of -ELBO (nats per datapoint) that `VAE.forward` computes and
autograd differentiates; tests/test_gradients.py checks that both give the same gradients, and
`covers` checks it again before every run, so that a model whose forward was edited (another
activation, another layer) trains through autograd instead of through a wrong gradient.
Writing the backward pass out removes autograd's bookkeeping and every allocation: the
activations live in buffers made once, the gradients go straight into each parameter's
`.grad`, and the ELBO itself is never computed (the update needs only its gradient).
On a 2-core CPU this takes the step from about half of the matmul limit to three quarters.

The two big layers (enc 784->500, dec_out 500->784, 97% of the FLOPs at N_z = 20) run on
(K, ...) stacks whose rows the models' parameters become views of, the small latent layers
model by model; training uses K = 1 (one model at a time), tests use K > 1. `--stacked`
batches every layer and Adagrad too, with N_z padded: batched.py, the same formulas.

With M datapoints, L draws of z, logits = dec_out(tanh(dec(z))) and
dl = (sigmoid(logits) - x) / (L M):
    d dec_out = dl^T h3          d h3 = dl W4           d a3 = (1 - h3^2) d h3
    d dec     = d a3^T z         d z  = d a3 W3
    d mu      = sum_L d z + mu / M
    d logvar  = sum_L d z * eps * sigma / 2 + (sigma^2 - 1) / (2 M)
    d enc_out = [d mu, d logvar]^T h1,   d h1 = [d mu, d logvar] W2,   d a1 = (1 - h1^2) d h1
    d enc     = d a1^T x
and each bias gets the column sums of the gradient that reaches its layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vaerepro.core import model as vae
from vaerepro.core.model import VAE, Activations, standard_normal

tanh_backward = torch.ops.aten.tanh_backward  # (grad, tanh output) -> grad * (1 - out^2)


def affine_grads(d_out: Tensor, inputs: Tensor, weight_grad: Tensor, bias_grad: Tensor) -> None:
    """Gradients of W and b of y = inputs W^T + b from dL/dy (..., n, out), inputs (..., n, in)."""
    torch.matmul(d_out.transpose(-1, -2), inputs, out=weight_grad)
    torch.sum(d_out, -2, out=bias_grad)


def latent_grads(
    d_z: Tensor, mu: Tensor, sigma: Tensor, eps: Tensor, d_mu: Tensor, d_logvar: Tensor
) -> None:
    """dL/dmu and dL/dlogvar (M, N_z), written into d_mu and d_logvar, from dL/dz (L, M, N_z)
    through z = mu + sigma eps, plus the gradient of the mean KL term. d_z is overwritten."""
    m = mu.shape[0]
    torch.add(d_z.sum(0), mu, alpha=1.0 / m, out=d_mu)
    torch.sum(d_z.mul_(eps), 0, out=d_logvar)
    d_logvar.mul_(sigma).add_(sigma.square().sub_(1.0), alpha=1.0 / m).mul_(0.5)


def _empty(like: Tensor, *shape: int) -> Tensor:
    """A buffer of `shape` on the device and in the dtype of `like`."""
    return torch.empty(shape, device=like.device, dtype=like.dtype)


def _stack_into_views(params: list[nn.Parameter]) -> tuple[Tensor, Tensor]:
    """Stack same-shaped parameters (K of them) into one tensor, and their gradients into
    another; every parameter (and its .grad) becomes a view of row k of these."""
    stack = torch.stack([p.detach() for p in params])
    grads = torch.zeros_like(stack)
    for k, p in enumerate(params):
        p.data, p.grad = stack[k], grads[k]
    return stack, grads


class _Latent:
    """One model's latent-layer buffers (M datapoints, L draws of z, N_z dimensions), and the
    Activations view of its part of the stacked ones, for `VAE.latent_pass(..., into=)`."""

    def __init__(self, model: VAE, m: int, z_draws: int, h1: Tensor, h3: Tensor):
        nz = model.nz
        self.model, self.nz = model, nz
        self.act = Activations(
            h1=h1,
            posterior=_empty(h1, m, 2 * nz),
            sigma=_empty(h1, m, nz),
            eps=_empty(h1, z_draws, m, nz),
            z=_empty(h1, z_draws, m, nz),
            h3=h3,
        )
        self.d_posterior = _empty(h1, m, 2 * nz)
        self.d_z = _empty(h1, z_draws * m, nz)
        for layer in (model.enc_out, model.dec):
            for p in layer.parameters():
                p.grad = torch.zeros_like(p)


class BernoulliGradients:
    """Writes d(-ELBO mean)/d(param) into every `param.grad` of K Bernoulli VAEs that differ
    only in N_z. Call with minibatches xs (K, M, 784) and one generator per model, which draws
    that model's eps (L, M, N_z) as `VAE.forward` would."""

    def __init__(self, models: list[VAE], batch_size: int, z_draws: int = 1):
        first = models[0]
        if any(m.likelihood != "bernoulli" for m in models):
            raise ValueError("hand-written gradients exist for the Bernoulli decoder only")
        if any(m.enc.weight.shape != first.enc.weight.shape for m in models):
            raise ValueError("models trained together must have the same hidden and input size")
        self.models = models
        self.enc_w, self.enc_w_grad = _stack_into_views([m.enc.weight for m in models])
        self.enc_b, self.enc_b_grad = _stack_into_views([m.enc.bias for m in models])
        self.out_w, self.out_w_grad = _stack_into_views([m.dec_out.weight for m in models])
        self.out_b, self.out_b_grad = _stack_into_views([m.dec_out.bias for m in models])
        k, m, n = len(models), batch_size, z_draws * batch_size
        (hidden, x_dim), like = first.enc.weight.shape, first.enc.weight
        self.h1, self.d_h1 = _empty(like, k, m, hidden), _empty(like, k, m, hidden)
        self.h3, self.d_h3 = _empty(like, k, n, hidden), _empty(like, k, n, hidden)
        self.logits = _empty(like, k, n, x_dim)
        self.latents = [
            _Latent(model, m, z_draws, self.h1[i], self.h3[i]) for i, model in enumerate(models)
        ]
        self.z_draws, self.batch_size = z_draws, m

    @torch.no_grad()
    def __call__(self, xs: Tensor, generators: list[torch.Generator | None]) -> None:
        z_draws, m, k = self.z_draws, self.batch_size, len(self.models)
        if xs.shape != (k, m, self.logits.shape[2]):
            raise ValueError(f"minibatches of shape {tuple(xs.shape)}, expected ({k}, {m}, 784)")

        # forward: VAE.forward_pass with its first and last layer (encoder_hidden and
        # decoder_output's hidden_layer and linear) for the K models stacked, latent_pass per
        # model; `covers` checks that this still equals the model's own forward
        vae.hidden_layer(xs, self.enc_w, self.enc_b, out=self.h1)
        for lat, gen in zip(self.latents, generators, strict=True):
            standard_normal(lat.act.eps.shape, gen, lat.act.eps, out=lat.act.eps)
            lat.model.latent_pass(lat.act.h1, lat.act.eps, into=lat.act)
        logits = vae.linear(self.h3, self.out_w, self.out_b, out=self.logits)

        # backward, layer by layer from the output
        d_logits = logits.sigmoid_().view(k, z_draws, m, -1).sub_(xs.unsqueeze(1))
        d_logits = d_logits.div_(z_draws * m).view(k, z_draws * m, -1)
        affine_grads(d_logits, self.h3, self.out_w_grad, self.out_b_grad)
        d_a3 = tanh_backward(torch.bmm(d_logits, self.out_w, out=self.d_h3), self.h3)
        for i, lat in enumerate(self.latents):
            enc_out, dec, nz, act = lat.model.enc_out, lat.model.dec, lat.nz, lat.act
            affine_grads(d_a3[i], act.z.view(-1, nz), dec.weight.grad, dec.bias.grad)
            d_z = torch.mm(d_a3[i], dec.weight, out=lat.d_z).view(z_draws, m, nz)
            d_mu, d_logvar = lat.d_posterior[:, :nz], lat.d_posterior[:, nz:]
            latent_grads(d_z, act.mu, act.sigma, act.eps, d_mu, d_logvar)
            affine_grads(lat.d_posterior, act.h1, enc_out.weight.grad, enc_out.bias.grad)
            torch.mm(lat.d_posterior, enc_out.weight, out=self.d_h1[i])
        d_a1 = tanh_backward(self.d_h1, self.h1)
        affine_grads(d_a1, xs, self.enc_w_grad, self.enc_b_grad)


def covers(
    model: VAE,
    z_draws: int = 1,
    loss: Callable | None = None,
    hand_written: Callable | None = None,
) -> str | None:
    """None when a hand-written gradient equals autograd's of its loss for this model, else
    why not. By default the AEVB pair: -ELBO through `model.forward` and BernoulliGradients;
    `loss(model, x, z_draws, generator)` and `hand_written([model], batch_size, z_draws)` give
    another (wakesleep.py). Checked in float64 on a narrow model of the same class and N_z
    (16 hidden units, about 10 ms; the model itself if its class takes other arguments), with
    weights ~ N(0, 0.1^2) (away from the near-zero init, so every term matters), 8 random
    images and L = `z_draws`."""
    if model.likelihood != "bernoulli":
        return f"it covers the Bernoulli decoder only, not {model.likelihood!r}"
    if loss is None:
        loss = lambda m, x, draws, gen: -m(x, draws, gen).elbo.mean()  # noqa: E731
        hand_written = BernoulliGradients
    gen = torch.Generator().manual_seed(0)
    try:
        x_dim = model.enc.weight.shape[1]
        auto = type(model)(model.nz, 16, x_dim, model.likelihood, model.fixed_logvar)
    except (TypeError, AttributeError):
        auto = copy.deepcopy(model)
    auto = auto.to("cpu", torch.float64)
    with torch.no_grad():
        for p in auto.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    manual = copy.deepcopy(auto)
    try:
        x = torch.rand((8, auto.enc.weight.shape[1]), generator=gen, dtype=torch.float64)
        loss(auto, x, z_draws, torch.Generator().manual_seed(1)).backward()
        hand_written([manual], len(x), z_draws)(x[None], [torch.Generator().manual_seed(1)])
    except (RuntimeError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        return f"it does not run on this model ({type(err).__name__}: {err})"
    for (name, a), b in zip(auto.named_parameters(), manual.parameters(), strict=True):
        if a.grad is None or b.grad is None:
            return f"it leaves the gradient of {name} out"
        if (b.grad - a.grad).abs().max() > 1e-7 * a.grad.abs().max() + 1e-10:
            return f"its gradient of {name} differs from autograd's through this model's forward"
    return None
