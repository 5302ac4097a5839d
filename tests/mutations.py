"""Deliberate breakages of the training and evaluation code, for the regression gate's tests.

Each is (target, replacement) for `monkeypatch.setattr`: the code changes while every config
a run records stays the reference's, so the gate must fail on the numbers. Training and
evaluation share the model's one forward pass (vaerepro/model.py); a breakage of the
hand-written backward alone (vaerepro/gradients.py) is not among them, because the run then
trains through autograd and its numbers stay right (`BACKWARD_BREAKAGES`, tested in
tests/test_gradients.py).
"""

import dataclasses

import torch

from vaerepro.core import evaluate as evaluate_mod
from vaerepro.core import model as model_mod
from vaerepro.core import optim
from vaerepro.core.data import MinibatchIndices
from vaerepro.runs import state as state_mod


def _latent_grads_without_kl(d_z, mu, sigma, eps, d_mu, d_logvar):
    torch.sum(d_z, 0, out=d_mu)
    torch.sum(d_z.mul_(eps), 0, out=d_logvar)
    d_logvar.mul_(sigma).mul_(0.5)


def _no_noise(size, *, generator=None, out=None, **kw):
    return out.zero_() if out is not None else torch.zeros(size, **kw)


def _optimizer_with(**changes):
    """make_optimizer as TrainingState calls it, but for the config with `changes`."""
    return lambda cfg, model, **kw: optim.make_optimizer(cfg.replace(**changes), model, **kw)


def _eps_outside_sqrt(cfg, model, **kw):
    groups = optim.param_groups(model, 1.0 / cfg.train_size)
    return optim.Adagrad(
        groups, cfg.lr, eps_inside=0.0, eps_outside=1e-8, warmup=cfg.adagrad_warmup, **kw
    )


_state_init = state_mod.TrainingState.__init__


def _all_60000_images(self, cfg, data, *args, **kw):
    _state_init(self, cfg, data, *args, **kw)
    self.train_x = data.train_x
    self.batches = MinibatchIndices(len(data.train_x), cfg.batch_size, cfg.sampling, self.gen)


def _shifted_evaluation(*args, **kw):
    result = evaluate_mod.evaluate(*args, **kw)
    return dataclasses.replace(result, elbo=result.elbo - 0.5)


def _no_tanh(inputs, weight, bias, out=None):
    return model_mod.linear(inputs, weight, bias, out)


_kl = model_mod.gaussian_kl
_adagrad_init = optim.Adagrad.__init__

OPTIMIZER = "vaerepro.runs.state.make_optimizer"  # as TrainingState calls it

MUTATIONS = {
    "weight_prior_removed": (OPTIMIZER, _optimizer_with(weight_decay=False)),
    "torch_adagrad_rule": (OPTIMIZER, _optimizer_with(optimizer="torch_adagrad")),
    "adagrad_warmup_removed": (OPTIMIZER, _optimizer_with(adagrad_warmup=0)),
    "adagrad_eps_outside_sqrt": (OPTIMIZER, _eps_outside_sqrt),
    "train_on_60000_images": ("vaerepro.runs.state.TrainingState.__init__", _all_60000_images),
    "epoch_sampling": (
        "vaerepro.runs.state.MinibatchIndices",
        lambda n, batch, sampling, gen: MinibatchIndices(n, batch, "epoch", gen),
    ),
    "eval_kl_dropped": (
        "vaerepro.core.model.gaussian_kl",
        lambda mu, logvar: 0.0 * _kl(mu, logvar),
    ),
    "eval_kl_sign_flipped": (
        "vaerepro.core.model.gaussian_kl",
        lambda mu, logvar: -_kl(mu, logvar),
    ),
    "tanh_removed": ("vaerepro.core.model.hidden_layer", _no_tanh),  # training and evaluation
    "lr_times_10": (
        "vaerepro.core.optim.Adagrad.__init__",
        lambda self, params, lr=0.02, **kw: _adagrad_init(self, params, lr=10 * lr, **kw),
    ),
    "z_is_mu": ("torch.randn", _no_noise),  # in training and evaluation
    "eval_elbo_shifted_half_a_nat": ("vaerepro.runs.state.evaluate", _shifted_evaluation),
}


def _probabilities(p, *, generator=None, out=None):
    return out.copy_(p) if out is not None else p.clone()


# Breakages of wake-sleep's training (tier 1 covers it, tests/test_regression.py): the
# sleep phase's dreams are the pixel probabilities instead of Bernoulli samples (what
# `--dreams mean` does on purpose, here with the config still saying "sampled"), in both the
# hand-written and the autograd path.
WAKESLEEP_MUTATIONS = {
    "dreams_are_probabilities": ("torch.bernoulli", _probabilities),
    "lr_times_10": MUTATIONS["lr_times_10"],
    "weight_prior_removed": MUTATIONS["weight_prior_removed"],
}

MCEM_MUTATIONS = {
    "step_size_not_adapted": ("vaerepro.core.mcem.adapt_step_size", lambda step, accepted: step),
    "lr_times_10": MUTATIONS["lr_times_10"],
    "weight_prior_removed": MUTATIONS["weight_prior_removed"],
}

# Breakages of the hand-written backward only: `gradients.covers` must see each, so that the
# run trains through autograd instead.
BACKWARD_BREAKAGES = {
    "kl_gradient_dropped": ("vaerepro.core.gradients.latent_grads", _latent_grads_without_kl),
    "tanh_derivative_dropped": ("vaerepro.core.gradients.tanh_backward", lambda grad, out: grad),
}
