"""K Bernoulli VAEs trained by one batched step: every layer, the noise, the gradient of the
loss and Adagrad run on (K, ...) stacks, so that a GPU sees a few large kernels per step
instead of a few dozen small ones per model (`--stacked`).

The models may differ in N_z and in seed (hidden size, L and minibatch size are shared); each
draws its own noise from its own generator, as a separate run would, and keeps its own
minibatches, files and checkpoints. N_z is padded to the largest, Z:
    enc_out (K, 2Z, H): model k's mu rows are [0, nz_k), its log sigma^2 rows [Z, Z + nz_k)
    dec     (K, H, Z):  model k's columns are [0, nz_k)
The padding starts at zero and stays there: its noise is 0, so its z is 0, so every gradient
that reaches it is exactly 0 (mu = 0, log sigma^2 = 0 make the KL term's gradient 0 too), and
so is its Adagrad update.

The stacks are the truth while training. `write_back` copies them into each model's
parameters and its Adagrad's state (sums, steps taken) before anything reads those: the
evaluation, the finite check, a checkpoint. `read_models` does the reverse (after a resume).

Every step is free of host synchronisation and of Python branches on tensor values (the
Adagrad warm-up is a tensor-valued multiplier), so that it can be captured in a CUDA graph
(`CapturedStep`). The backward pass is that of gradients.py, batched; the formulas are there.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate

import torch
from torch import Tensor

from vaerepro.core import model as vae
from vaerepro.core.gradients import tanh_backward
from vaerepro.core.model import VAE, standard_normal
from vaerepro.core.optim import Adagrad

PARAMS = (
    "enc.weight",
    "enc.bias",
    "enc_out.weight",
    "enc_out.bias",
    "dec.weight",
    "dec.bias",
    "dec_out.weight",
    "dec_out.bias",
)


def _parts(name: str, nz: int, z: int) -> list[tuple[tuple, tuple]]:
    """Where model k's parameter `name` (N_z = nz) lies in its row of the stack (padded N_z z):
    pairs (index into the stack's row, index into the model's tensor)."""
    whole = (slice(None),)
    if name.startswith("enc_out."):
        return [((slice(0, nz),), (slice(0, nz),)), ((slice(z, z + nz),), (slice(nz, 2 * nz),))]
    if name == "dec.weight":
        return [((slice(None), slice(0, nz)), (slice(None), slice(0, nz)))]
    return [(whole, whole)]


class BatchedAEVB:
    """One AEVB training step (gradient and Adagrad update) of K Bernoulli VAEs with their
    optimizers (`optim.Adagrad`, one per model). Call with minibatches xs (K, M, 784) and one
    generator per model; it draws model k's noise eps (L, M, nz_k) from generators[k]."""

    def __init__(self, models: list[VAE], opts: list[Adagrad], batch_size: int, z_draws: int = 1):
        first = models[0]
        if any(m.likelihood != "bernoulli" for m in models):
            raise ValueError("the batched step exists for the Bernoulli decoder only")
        if any(m.enc.weight.shape != first.enc.weight.shape for m in models):
            raise ValueError("models trained together must have the same hidden and input size")
        if any(not isinstance(o, Adagrad) for o in opts):
            raise ValueError("the batched step updates with vaerepro's Adagrad (optim.py) only")
        self.models, self.opts = models, opts
        self.nzs = [m.nz for m in models]
        k, m, l_draws, z = len(models), batch_size, z_draws, max(self.nzs)
        (hidden, x_dim), like = first.enc.weight.shape, first.enc.weight
        self.k, self.m, self.l_draws, self.z = k, m, l_draws, z
        shapes = {
            "enc.weight": (hidden, x_dim),
            "enc.bias": (hidden,),
            "enc_out.weight": (2 * z, hidden),
            "enc_out.bias": (2 * z,),
            "dec.weight": (hidden, z),
            "dec.bias": (hidden,),
            "dec_out.weight": (x_dim, hidden),
            "dec_out.bias": (x_dim,),
        }

        def new(*shape: int, fill: float = 0.0) -> Tensor:
            return torch.full(shape, fill, device=like.device, dtype=like.dtype)

        # Every parameter's stack is a view into one (K, P) tensor, model k's parameters in row
        # k, so that Adagrad updates all of them in a few kernels instead of a few per
        # parameter (a GPU step is bound by kernel launches).
        sizes = {n: torch.Size(s).numel() for n, s in shapes.items()}
        # where each parameter starts in a row (accumulate also yields the end, P: not strict)
        offsets = dict(zip(shapes, accumulate(sizes.values(), initial=0), strict=False))

        def views(flat: Tensor) -> dict[str, Tensor]:
            return {
                n: flat[:, offsets[n] : offsets[n] + sizes[n]].view(k, *s)
                for n, s in shapes.items()
            }

        total = sum(sizes.values())
        self.flat_w, self.flat_grad = new(k, total), new(k, total)
        self.flat_sums = new(k, total, fill=1.0)  # padding: never 0/0
        self.flat_decay = new(k, total)  # the weight prior per model and element (0 for biases)
        self.w, self.grad, self.sums = (
            views(self.flat_w),
            views(self.flat_grad),
            views(self.flat_sums),
        )
        self.decay = views(self.flat_decay)
        col = (k, 1)  # per-model hyperparameters, broadcast over a (K, P) stack
        self.lr, self.eps_outside = new(*col), new(*col)
        counts = dict(device=like.device, dtype=torch.int64)  # exact past 2^24 steps
        self.warmup = torch.zeros(col, **counts)
        self.steps = torch.zeros(col, **counts)  # steps taken, per model (equal in lockstep)
        self.h1, self.d_h1 = new(k, m, hidden), new(k, m, hidden)
        self.posterior, self.d_posterior = new(k, m, 2 * z), new(k, m, 2 * z)
        self.sigma = new(k, m, z)
        self.eps = new(k, l_draws, m, z)  # the padding's noise stays 0
        self.z_samples, self.d_z = new(k, l_draws, m, z), new(k, l_draws * m, z)
        self.h3, self.d_h3 = new(k, l_draws * m, hidden), new(k, l_draws * m, hidden)
        self.logits = new(k, l_draws * m, x_dim)
        self.read_models()

    def _pairs(self):
        """(k, name, the model's parameter, its Adagrad group) for every parameter."""
        for i, (model, opt) in enumerate(zip(self.models, self.opts, strict=True)):
            group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
            for name in PARAMS:
                p = model.get_parameter(name)
                yield i, name, p, group_of[id(p)]

    @torch.no_grad()
    def read_models(self) -> None:
        """Copy every model's parameters, Adagrad sums and hyperparameters into the stacks."""
        for i, name, p, group in self._pairs():
            for s_idx, m_idx in _parts(name, self.nzs[i], self.z):
                self.w[name][i][s_idx].copy_(p[m_idx])
                self.sums[name][i][s_idx].copy_(self.opts[i].state[p]["sum"][m_idx])
            self.decay[name][i] = group["weight_decay"]
            self.lr[i], self.eps_outside[i] = group["lr"], group["eps_outside"]
            self.warmup[i], self.steps[i] = group["warmup"], group["steps_taken"]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacks into every model's parameters and Adagrad state."""
        for i, name, p, group in self._pairs():
            for s_idx, m_idx in _parts(name, self.nzs[i], self.z):
                p[m_idx] = self.w[name][i][s_idx]
                self.opts[i].state[p]["sum"][m_idx] = self.sums[name][i][s_idx]
            group["steps_taken"] = int(self.steps[i].item())

    def draw_noise(self, generators: list[torch.Generator | None]) -> None:
        """Each model's eps (L, M, nz_k) from its generator, as `VAE.draw_noise` draws it."""
        for i, (nz, gen) in enumerate(zip(self.nzs, generators, strict=True)):
            shape = (self.l_draws, self.m, nz)
            self.eps[i, :, :, :nz] = standard_normal(shape, gen, self.eps)

    @torch.no_grad()
    def __call__(self, xs: Tensor, generators: list[torch.Generator | None]) -> None:
        """One step of every model on its minibatch xs[k] (M, 784)."""
        self.draw_noise(generators)
        self.gradients(xs)
        self.update()

    @torch.no_grad()
    def gradients(self, xs: Tensor) -> None:
        """d(-ELBO mean)/d(param) of every model into self.grad, with the noise in self.eps."""
        w, g, k, z, l_draws, m = self.w, self.grad, self.k, self.z, self.l_draws, self.m
        # forward, as VAE.forward_pass
        vae.hidden_layer(xs, w["enc.weight"], w["enc.bias"], out=self.h1)
        vae.linear(self.h1, w["enc_out.weight"], w["enc_out.bias"], out=self.posterior)
        mu, logvar = self.posterior[..., :z], self.posterior[..., z:]
        torch.exp(logvar.mul(0.5), out=self.sigma)
        torch.addcmul(mu.unsqueeze(1), self.sigma.unsqueeze(1), self.eps, out=self.z_samples)
        z_flat = self.z_samples.view(k, l_draws * m, z)
        vae.hidden_layer(z_flat, w["dec.weight"], w["dec.bias"], out=self.h3)
        logits = vae.linear(self.h3, w["dec_out.weight"], w["dec_out.bias"], out=self.logits)

        # backward
        d_logits = logits.sigmoid_().view(k, l_draws, m, -1).sub_(xs.unsqueeze(1))
        d_logits = d_logits.div_(l_draws * m).view(k, l_draws * m, -1)
        _affine_grads(d_logits, self.h3, g["dec_out.weight"], g["dec_out.bias"])
        d_a3 = tanh_backward(torch.bmm(d_logits, w["dec_out.weight"], out=self.d_h3), self.h3)
        _affine_grads(d_a3, z_flat, g["dec.weight"], g["dec.bias"])
        d_z = torch.bmm(d_a3, w["dec.weight"], out=self.d_z).view(k, l_draws, m, z)
        d_mu, d_logvar = self.d_posterior[..., :z], self.d_posterior[..., z:]
        torch.add(d_z.sum(1), mu, alpha=1.0 / m, out=d_mu)
        torch.sum(d_z.mul_(self.eps), 1, out=d_logvar)
        d_logvar.mul_(self.sigma).add_(self.sigma.square().sub_(1.0), alpha=1.0 / m).mul_(0.5)
        _affine_grads(self.d_posterior, self.h1, g["enc_out.weight"], g["enc_out.bias"])
        torch.bmm(self.d_posterior, w["enc_out.weight"], out=self.d_h1)
        _affine_grads(tanh_backward(self.d_h1, self.h1), xs, g["enc.weight"], g["enc.bias"])

    @torch.no_grad()
    def update(self) -> None:
        """Adagrad (optim.Adagrad's rule) on all parameters at once, per model: lr 0 during its
        warm-up."""
        step_lr = self.lr * (self.steps >= self.warmup)  # (K, 1), a tensor: no branch
        self.steps.add_(1)
        w, g, s = self.flat_w, self.flat_grad, self.flat_sums
        g.addcmul_(w, self.flat_decay)  # the weight prior
        s.addcmul_(g, g)
        w.sub_(g.div_(s.sqrt().add_(self.eps_outside)).mul_(step_lr))


def _affine_grads(d_out: Tensor, inputs: Tensor, weight_grad: Tensor, bias_grad: Tensor) -> None:
    """dW (K, out, in) and db (K, out) of y = inputs W^T + b from dL/dy (K, n, out)."""
    torch.bmm(d_out.transpose(1, 2), inputs, out=weight_grad)
    torch.sum(d_out, 1, out=bias_grad)


class CapturedStep:
    """A whole training step of K models captured once in a CUDA graph and replayed
    (`--cuda-graphs`): the minibatch indices, the images they pick (and their dynamic
    binarization), the noise, the gradient and the update. One replay launches everything;
    the host only queues it.

    The models' generators are registered with the graph (torch's graph-safe RNG: a replay
    reads each generator's current offset and advances it by what the graph drew), so every
    model draws the numbers an eager run draws, and checkpoints between replays save the right
    generator states. Epoch sampling (a permutation with a Python position) cannot be
    captured; sampling "replacement" (the paper's) can."""

    def __init__(
        self,
        batched: BatchedAEVB,
        gather: Callable[[list[Tensor], list], Tensor],
        batches: list,
        generators: list[torch.Generator],
    ):
        """`gather(idxs, generators)`: the step's minibatches (K, M, 784) in static buffers
        (step.make_train_step's, which also checks the device and the sampling)."""
        if any(b.gen is not g for b, g in zip(batches, generators, strict=True)):
            raise ValueError(
                "each model's sampler must draw from its own generator, which the graph registers"
            )
        self.batched, self.gather, self.batches, self.gens = batched, gather, batches, generators
        self.graph: torch.cuda.CUDAGraph | None = None

    def _step(self) -> None:
        """The step as it is captured: the eager step's operations in the same order."""
        self.batched(self.gather([b.next() for b in self.batches], self.gens), self.gens)

    def _capture(self) -> None:
        """Warm up on a side stream (torch's advice before a capture), capture, then undo
        what the warm-up changed (weights, Adagrad state, steps, generator states), also when
        the capture fails."""
        b = self.batched
        saved = {n: (b.w[n].clone(), b.sums[n].clone()) for n in PARAMS}
        steps, states = b.steps.clone(), [g.get_state() for g in self.gens]

        def restore() -> None:
            for n, (w, s) in saved.items():
                b.w[n].copy_(w)
                b.sums[n].copy_(s)
            b.steps.copy_(steps)
            for gen, state in zip(self.gens, states, strict=True):
                gen.set_state(state)

        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            restore()
            graph = torch.cuda.CUDAGraph()
            for gen in self.gens:
                graph.register_generator_state(gen)
            with torch.cuda.graph(graph):
                self._step()
        finally:
            restore()
        self.graph = graph

    def __call__(self) -> None:
        if self.graph is None:
            self._capture()
        self.graph.replay()
