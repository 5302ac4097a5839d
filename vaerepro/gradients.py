"""The gradient of the Bernoulli VAE's training loss, written out by hand.

The loss is the minibatch mean of -ELBO (nats per datapoint) that `VAE.forward` computes and
autograd differentiates; tests/test_gradients.py checks that both give the same gradients.
Writing the backward pass out removes autograd's bookkeeping and every allocation: the
activations live in buffers made once, the gradients go straight into each parameter's
`.grad`, and the ELBO itself is never computed (the update needs only its gradient).
On a 2-core CPU this takes the step from about half of the matmul limit to three quarters.

With M datapoints, L samples, logits = dec_out(tanh(dec(z))) and dl = (sigmoid(logits) - x) / (L M):
    d dec_out = dl^T h3          d h3 = dl W4           d a3 = (1 - h3^2) d h3
    d dec     = d a3^T z         d z  = d a3 W3
    d mu      = sum_L d z + mu / M
    d logvar  = sum_L d z * eps * sigma / 2 + (sigma^2 - 1) / (2 M)
    d enc_out = [d mu, d logvar]^T h1,   d h1 = [d mu, d logvar] W2,   d a1 = (1 - h1^2) d h1
    d enc     = d a1^T x
and each bias gets the column sums of the gradient that reaches its layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .model import VAE

tanh_backward = torch.ops.aten.tanh_backward  # (grad, tanh output) -> grad * (1 - out^2)


def tanh_linear(layer: nn.Linear, inputs: Tensor, out: Tensor) -> Tensor:
    """tanh(inputs W^T + b) into `out`, computed as model.tanh does: 2 sigmoid(2a) - 1."""
    torch.addmm(layer.bias, inputs, layer.weight.t(), beta=2.0, alpha=2.0, out=out)
    return out.sigmoid_().mul_(2.0).sub_(1.0)


def linear_grads(layer: nn.Linear, d_out: Tensor, inputs: Tensor) -> None:
    """Weight and bias gradients of y = inputs W^T + b from dL/dy (n, out) and inputs (n, in)."""
    torch.mm(d_out.t(), inputs, out=layer.weight.grad)
    torch.sum(d_out, 0, out=layer.bias.grad)


def latent_grads(
    d_z: Tensor, mu: Tensor, sigma: Tensor, eps: Tensor, d_mu: Tensor, d_logvar: Tensor
) -> None:
    """dL/dmu and dL/dlogvar (M, N_z), written into d_mu and d_logvar, from dL/dz (L, M, N_z)
    through z = mu + sigma eps, plus the gradient of the mean KL term. d_z is overwritten."""
    m = mu.shape[0]
    torch.add(d_z.sum(0), mu, alpha=1.0 / m, out=d_mu)
    torch.sum(d_z.mul_(eps), 0, out=d_logvar)
    d_logvar.mul_(sigma).add_(sigma.square().sub_(1.0), alpha=1.0 / m).mul_(0.5)


class BernoulliGradients:
    """Writes d(-ELBO mean)/d(param) of `model` (Bernoulli decoder) into every `param.grad`.

    Call with a minibatch x (M, 784) and the generator that draws eps (L, M, N_z); the draws
    are the ones `VAE.forward` makes with that generator.
    """

    def __init__(self, model: VAE, batch_size: int, n_samples: int = 1):
        if model.likelihood != "bernoulli":
            raise ValueError("hand-written gradients exist for the Bernoulli decoder only")
        self.model = model
        p = next(model.parameters())
        m, n, nz = batch_size, n_samples * batch_size, model.nz
        hidden, x_dim = model.enc.out_features, model.enc.in_features

        def buf(*shape: int) -> Tensor:
            return torch.empty(shape, device=p.device, dtype=p.dtype)

        self.h1, self.enc_out, self.eps = buf(m, hidden), buf(m, 2 * nz), buf(n_samples, m, nz)
        self.z, self.h3, self.logits = buf(n, nz), buf(n, hidden), buf(n, x_dim)
        self.d_h3, self.d_z = buf(n, hidden), buf(n, nz)
        self.d_enc_out, self.d_h1 = buf(m, 2 * nz), buf(m, hidden)
        for param in model.parameters():
            param.grad = torch.zeros_like(param)

    @torch.no_grad()
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        enc, enc_out = self.model.enc, self.model.enc_out
        dec, dec_out = self.model.dec, self.model.dec_out
        n_samples, m, nz = self.eps.shape
        if x.shape != (m, self.logits.shape[1]):
            raise ValueError(f"minibatch of shape {tuple(x.shape)}, expected ({m}, 784)")

        # forward: encoder, reparameterized sample, decoder logits
        h1 = tanh_linear(enc, x, self.h1)
        out = torch.addmm(enc_out.bias, h1, enc_out.weight.t(), out=self.enc_out)
        mu, logvar = out[:, :nz], out[:, nz:]
        sigma = logvar.mul(0.5).exp_()
        eps = torch.randn(self.eps.shape, generator=generator, out=self.eps)
        z = torch.addcmul(mu, sigma, eps, out=self.z.view(n_samples, m, nz)).view(-1, nz)
        h3 = tanh_linear(dec, z, self.h3)
        logits = torch.addmm(dec_out.bias, h3, dec_out.weight.t(), out=self.logits)

        # backward, layer by layer from the output
        d_logits = logits.sigmoid_().view(n_samples, m, -1).sub_(x).div_(n_samples * m)
        d_logits = d_logits.view(n_samples * m, -1)
        linear_grads(dec_out, d_logits, h3)
        d_a3 = tanh_backward(torch.mm(d_logits, dec_out.weight, out=self.d_h3), h3)
        linear_grads(dec, d_a3, z)
        d_z = torch.mm(d_a3, dec.weight, out=self.d_z).view(n_samples, m, nz)
        latent_grads(d_z, mu, sigma, eps, self.d_enc_out[:, :nz], self.d_enc_out[:, nz:])
        linear_grads(enc_out, self.d_enc_out, h1)
        d_h1 = torch.mm(self.d_enc_out, enc_out.weight, out=self.d_h1)
        linear_grads(enc, tanh_backward(d_h1, h1), x)
