"""Held-out scenarios, set 54 (``h54_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face LXMERT (visual question answering on generated region features), DPR
(question and context encoders, in-batch negatives), AltCLIP's vision tower with a cosine
classifier head (digits), TimesFM 2.5 (forecasting generated series) and GroupViT (contrastive on
digits and generated captions; a control) from configs; and probabilistic / uncertainty models:
a Bayes-by-backprop MLP (diabetes), an MC-dropout regressor with a heteroscedastic Gaussian NLL
(diabetes), a deep ensemble of regressors on generated house prices (fp16 autocast), deep kernel
learning with an exact GP marginal likelihood (diabetes), deep evidential regression
(normal-inverse-gamma head, diabetes), a conditional VAE (digits; its control under fp16
autocast) and a variational information bottleneck classifier (digits).

Optimizers: SGD, momentum SGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop, and
steadygrad.optim's Lion, AdaBelief, StableSPAM, AdEMAMix and Grams.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    scenario,
    seeded,
)

# -- shared data ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled diabetes set: 10 scaled features, target standardised."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(d.target, dtype=torch.float32)
    return x, (y - y.mean()) / y.std()


def _diabetes_batches(gen: torch.Generator, batch: int = 32):
    x, y = _diabetes()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _first_nonfinite(values: list[float]) -> int | None:
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None)


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


# -- Bayes by backprop: a warm-up that never stops -------------------------------------------


class BayesLinear(nn.Module):
    """A mean-field Gaussian linear layer (Blundell et al. 2015): sigma = softplus(rho)."""

    def __init__(self, n_in: int, n_out: int, prior_std: float = 1.0) -> None:
        super().__init__()
        self.weight_mu = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        self.weight_rho = nn.Parameter(torch.full((n_out, n_in), -5.0))
        self.bias_mu = nn.Parameter(torch.zeros(n_out))
        self.bias_rho = nn.Parameter(torch.full((n_out,), -5.0))
        self.prior_std = prior_std
        self.sample = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight_mu, self.bias_mu
        if self.sample:
            w = w + F.softplus(self.weight_rho) * torch.randn_like(w)
            b = b + F.softplus(self.bias_rho) * torch.randn_like(b)
        return F.linear(x, w, b)

    def kl(self) -> torch.Tensor:
        total = torch.zeros(())
        for mu, rho in ((self.weight_mu, self.weight_rho), (self.bias_mu, self.bias_rho)):
            s = F.softplus(rho)
            p = self.prior_std
            total = total + (torch.log(p / s) + (s**2 + mu**2) / (2 * p**2) - 0.5).sum()
        return total


class BayesMLP(nn.Module):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BayesLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )

    def set_sample(self, on: bool) -> None:
        for layer in self.layers:
            layer.sample = on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x.squeeze(-1)

    def kl(self) -> torch.Tensor:
        return sum(layer.kl() for layer in self.layers)


def _top_eigenvalue(model: nn.Module, loss_fn, params: list, iters: int = 30) -> float:
    """Largest Hessian eigenvalue of ``loss_fn(model)`` in ``params`` by power iteration on
    Hessian-vector products."""
    grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "h54_bayes_by_backprop_mlp",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=40,
    note="linear warm-up without its cap: the LR keeps climbing past 2(1+beta)/lambda",
)
def h54_bbb_warmup_uncapped_sgd_mom(ctx: Context) -> None:
    """A Bayes-by-backprop regressor (diabetes, Gaussian likelihood, KL / N) under momentum SGD
    with a linear warm-up written ``lr = peak * step / warmup`` -- the ``min(1, ...)`` was
    dropped, so after the 40 warm-up steps the learning rate keeps rising linearly. The loss
    falls while the rate is small, then the rate passes the stability limit of momentum SGD,
    2(1 + beta) / lambda_max, and the run blows up. The checks measure lambda_max every 10
    steps (power iteration on the mean network, on the step's batch): below the limit at the
    intended peak, past it at the last measurement before the loss went non-finite."""
    gen = seeded(5401)
    model = BayesMLP([10, 64, 64, 1])
    peak, warmup, beta = 0.02, 40, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=peak / warmup, momentum=beta)
    n = len(_diabetes()[1])
    lrs: list[float] = []
    sharp: dict[str, float] = {}
    batch: list[torch.Tensor] = []

    def keep(step: int, x: torch.Tensor, y: torch.Tensor):
        batch[:] = [x, y]
        return x, y

    def mean_loss(m: nn.Module) -> torch.Tensor:  # the step's batch, on the mean network
        m.set_sample(False)
        try:
            return F.mse_loss(m(batch[0]), batch[1])
        finally:
            m.set_sample(True)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * (step + 1) / warmup  # min(1.0, ...) forgotten
        lrs.append(opt.param_groups[0]["lr"])
        if step >= warmup and step % 10 == 0:
            means = [p for n, p in model.named_parameters() if n.endswith("_mu")]
            sharp[step] = _top_eigenvalue(model, mean_loss, means)

    fit(
        ctx,
        model,
        opt,
        _diabetes_batches(gen),
        400,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=keep,
        before=schedule,
        extra_loss=lambda step, loss: loss + model.kl() / n,
    )
    bad = _first_nonfinite(ctx.losses)
    ratio = {k: lrs[k] * lam / (2 * (1 + beta)) for k, lam in sharp.items()}
    last = max((k for k in ratio if bad is not None and k < bad), default=warmup)
    ctx.check("the loss fell during the warm-up", _mean(ctx.losses[30:40]) < 0.8 * ctx.losses[0])
    ctx.check("the loss went non-finite after the warm-up", bad is not None and bad > warmup)
    ctx.check("at the intended peak the LR was below 2(1+beta)/lambda_max", ratio[warmup] < 0.5)
    ctx.check("just before the blow-up the LR had passed 2(1+beta)/lambda_max", ratio[last] > 1.0)
    ctx.check("the LR the bug left running exceeded the intended peak", lrs[-1] > 3 * peak)


# -- MC dropout with a heteroscedastic NLL: per-batch standardisation without an epsilon --------


class BatchStandardize(nn.Module):
    """Standardises each column by the batch's own mean and std (no epsilon)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) / x.std(0)


class HeteroDropoutNet(nn.Module):
    """MC-dropout regressor (Gal & Ghahramani 2016) with a mean and a log-variance head."""

    def __init__(self, hidden: int = 64, p: float = 0.1) -> None:
        super().__init__()
        self.norm = BatchStandardize()
        self.body = nn.Sequential(
            nn.Linear(10, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.drop = nn.Dropout(p)
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.body(self.norm(x)))
        return torch.cat([self.mean(h), self.logvar(h)], -1)


def _hetero_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mu, logvar = out[:, 0], out[:, 1].clamp(-8, 8)
    return 0.5 * (logvar + (y - mu) ** 2 / logvar.exp()).mean()


@scenario(
    "h54_mc_dropout_hetero_nll",
    "rmsprop",
    "nonfinite",
    where="norm",
    diverges=150,
    heldout=True,
    onset=150,
    note="a one-sex batch: the batch std of the sex column is 0, 0/0 in the input standardiser",
)
def h54_mcdrop_batch_std_zero_rmsprop(ctx: Context) -> None:
    """An MC-dropout regressor with a heteroscedastic Gaussian NLL standardises each batch by
    its own statistics, without an epsilon. At step 150 a group-stratified sampler hands it a
    batch whose people all have the same sex: that column's batch std is exactly 0, the
    standardiser divides 0 by 0, and the NaN goes through the network into the loss and, via
    RMSprop, into every weight."""
    gen = seeded(5402)
    model = HeteroDropoutNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    x_all, y_all = _diabetes()
    same = torch.nonzero(x_all[:, 1] == x_all[:, 1].max()).squeeze(1)
    outputs: dict[str, torch.Tensor] = {}

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:  # one stratum only
            idx = same[torch.randperm(len(same), generator=torch.Generator().manual_seed(3))[:32]]
            x, y = x_all[idx], y_all[idx]
            outputs["in"] = x
        return x, y

    fit(
        ctx,
        model,
        opt,
        _diabetes_batches(gen),
        180,
        loss_fn=_hetero_nll,
        classifier=False,
        alter=alter,
    )
    with torch.no_grad():
        produced = model.norm(outputs["in"])
    ok = _finite(ctx.losses)
    ctx.check("finite until 150, not at 150", all(ok[:150]) and not ok[150])
    ctx.check("the loss fell before the bad batch", _mean(ctx.losses[130:150]) < ctx.losses[0])
    ctx.check(
        "the standardiser turned the finite one-sex batch into NaN",
        bool(torch.isfinite(outputs["in"]).all()) and bool(torch.isnan(produced).any()),
    )


@scenario(
    "h54_mc_dropout_hetero_nll",
    "rmsprop",
    "update_ratio_out_of_range",
    where="logvar",
    diverges=None,
    heldout=True,
    note="the optimizer's param list was written by hand and misses the log-variance head",
)
def h54_mcdrop_logvar_head_left_out_rmsprop(ctx: Context) -> None:
    """The MC-dropout heteroscedastic regressor (diabetes, sound standardisation this time)
    under RMSprop, whose parameter list was written out by hand when the log-variance head was
    added to a mean-only model: ``[*model.body.parameters(), *model.mean.parameters()]``. The
    log-variance head gets a gradient every step and never moves: the predicted variance stays
    at its random initial value while the NLL asks for another."""
    gen = seeded(5415)
    model = HeteroDropoutNet()
    model.norm = nn.Identity()  # the data are standardised up front
    opt = torch.optim.RMSprop([*model.body.parameters(), *model.mean.parameters()], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.logvar.named_parameters()}
    grads: list[float] = []
    model.logvar.weight.register_hook(lambda g: grads.append(float(g.norm())))
    fit(ctx, model, opt, _diabetes_batches(gen), 300, loss_fn=_hetero_nll, classifier=False)
    ctx.check(
        "the log-variance head never changed",
        all(torch.equal(before[n], p) for n, p in model.logvar.named_parameters()),
    )
    ctx.check("it had a gradient all along", len(grads) == 300 and min(grads[-50:]) > 0)
    ctx.check("the mean head trained (loss fell)", _mean(ctx.losses[-30:]) < _mean(ctx.losses[:5]))


@scenario("h54_mc_dropout_hetero_nll", "adagrad", "healthy", heldout=True)
def h54_mcdrop_healthy_adagrad(ctx: Context) -> None:
    """The MC-dropout heteroscedastic regressor on standardised diabetes under Adagrad, all
    parameters in the optimizer: trains normally."""
    gen = seeded(5416)
    model = HeteroDropoutNet()
    model.norm = nn.Identity()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    fit(ctx, model, opt, _diabetes_batches(gen), 300, loss_fn=_hetero_nll, classifier=False)
    ctx.check("all losses finite", all(_finite(ctx.losses)))
    ctx.check("the NLL fell by 0.4 nats", _mean(ctx.losses[-30:]) < _mean(ctx.losses[:5]) - 0.4)


# -- a deep ensemble regressing raw prices under fp16 autocast -----------------------------------


def _house_batches(gen: torch.Generator, batch: int = 64, raw_target: bool = True):
    """Generated houses: 8 standardised features; the price in dollars (or standardised)."""
    w = torch.tensor([60.0, 35.0, -20.0, 25.0, 10.0, -15.0, 30.0, 5.0]) * 1000
    while True:
        x = torch.randn(batch, 8, generator=gen)
        price = 250_000 + x @ w + 8_000 * torch.randn(batch, generator=gen)
        price = price.clamp(min=40_000)
        yield x, price if raw_target else (price - 250_000) / 80_000


class DeepEnsemble(nn.Module):
    """Lakshminarayanan et al. 2017 without the variance head: M independently initialised MLP
    regressors trained together; the prediction is their mean."""

    def __init__(self, members: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            nn.Sequential(
                nn.Linear(8, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )
            for _ in range(members)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], -1)


def _ensemble_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y[:, None].expand_as(out))


@scenario(
    "h54_deep_ensemble_prices",
    "nadam",
    "amp_overflow",
    where=("members.0.4", "members.1.4", "members.2.4"),
    diverges=321,
    heldout=True,
    note="target in raw dollars under fp16 autocast: the heads' outputs pass 65504",
)
def h54_ensemble_raw_price_fp16_nadam(ctx: Context) -> None:
    """A deep ensemble of three regressors trained under fp16 autocast (with a GradScaler) on
    house prices left in raw dollars (the target standardisation was forgotten; prices
    ~250,000). NAdam is scale-free, so the heads learn to produce larger and larger outputs as
    they chase the target; once an output head's fp16 activations pass 65504 they become inf
    and so does the loss. The scaler skips those steps, but the weights stay where they
    overflow, so from then on a large share of the steps overflow again."""
    gen = seeded(5403)
    model = DeepEnsemble()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    peaks: dict[str, dict[int, float]] = {}

    def hook(name: str):
        def record(mod: nn.Module, inp, out: torch.Tensor) -> None:
            if torch.is_autocast_enabled("cpu"):  # the training forward of step len(losses)
                peaks.setdefault(name, {})[len(ctx.losses)] = float(out.detach().abs().max())

        return record

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            mod.register_forward_hook(hook(name))
    fit(
        ctx,
        model,
        opt,
        _house_batches(gen),
        400,
        loss_fn=_ensemble_mse,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    bad = _first_nonfinite(ctx.losses)
    heads = [n for n in peaks if n.endswith(".4")]
    first = {
        n: min((i for i, v in peaks[n].items() if not math.isfinite(v)), default=None)
        for n in peaks
    }
    ctx.check("the loss went inf/NaN (at 321)", bad == 321)
    ctx.check(
        "a quarter of the later steps overflowed too",
        _finite(ctx.losses[322:]).count(False) >= 0.25 * len(ctx.losses[322:]),
    )
    ctx.check(
        "an output head's fp16 activations overflowed at that step",
        any(first[n] == bad for n in heads),
    )
    ctx.check(
        "no hidden layer overflowed first",
        all(first[n] is None or first[n] >= bad for n in peaks if n not in heads),
    )


# -- deep kernel learning: an exact GP marginal likelihood with an unconstrained noise ---------


class DeepKernelGP(nn.Module):
    """Wilson et al. 2016: an MLP feature map under an RBF kernel, trained on each batch's exact
    GP negative log marginal likelihood."""

    def __init__(self, hidden: int = 32, features: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(10, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, features),
        )
        self.kernel = RBFKernel()
        self.likelihood = GaussianNoise()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.likelihood(self.kernel(f))


class RBFKernel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_lengthscale = nn.Parameter(torch.zeros(()))
        self.log_outputscale = nn.Parameter(torch.zeros(()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(f, f).pow(2)
        return self.log_outputscale.exp() * torch.exp(-0.5 * d2 / self.log_lengthscale.exp() ** 2)


class GaussianNoise(nn.Module):
    """Adds the observation noise to the kernel matrix (the bug: ``noise`` is used as is)."""

    def __init__(self, noise: float = 0.5, positive: bool = False) -> None:
        super().__init__()
        self.noise = nn.Parameter(torch.tensor(noise))
        self.positive = positive

    def variance(self) -> torch.Tensor:
        return F.softplus(self.noise) + 1e-4 if self.positive else self.noise

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return k + self.variance() * torch.eye(len(k))


def _gp_nll(cov: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact GP negative log marginal likelihood per point (NaN where cov is not PD)."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        return torch.full((), float("nan")) + 0 * cov.sum()
    alpha = torch.cholesky_solve(y[:, None], chol)
    n = len(y)
    nll = 0.5 * (y[:, None] * alpha).sum() + torch.log(torch.diagonal(chol)).sum()
    return nll / n + 0.5 * math.log(2 * math.pi)


@scenario(
    "h54_dkl_exact_gp",
    "sgd",
    "update_ratio_out_of_range",
    where=("kernel", "likelihood"),
    diverges=None,
    heldout=True,
    note="the optimizer got model.features.parameters(): the GP hyperparameters never move",
)
def h54_dkl_hyperparams_left_out_sgd(ctx: Context) -> None:
    """Deep kernel learning on diabetes (an MLP feature map under an RBF kernel, each batch's
    exact GP marginal likelihood) under SGD. The optimizer was built from
    ``model.features.parameters()`` -- the kernel's lengthscale and outputscale and the
    likelihood's noise, which the marginal likelihood is meant to fit, are left out: they get
    gradients every step and never move (an update/weight ratio of 0), and the noise stays at
    its initial guess far from the value the data want."""
    gen = seeded(5404)
    model = DeepKernelGP()
    opt = torch.optim.SGD(model.features.parameters(), lr=0.05)
    hyper = {n: p.detach().clone() for n, p in model.named_parameters() if "features" not in n}
    grads: list[float] = []

    def record(grad: torch.Tensor) -> None:
        grads.append(float(grad.abs()))

    model.likelihood.noise.register_hook(record)
    fit(ctx, model, opt, _diabetes_batches(gen, 64), 300, loss_fn=_gp_nll, classifier=False)
    ctx.check(
        "the kernel and noise hyperparameters never changed",
        all(torch.equal(hyper[n], p) for n, p in model.named_parameters() if n in hyper),
    )
    ctx.check(
        "they had gradients all along (the noise's pull stayed non-zero)",
        len(grads) == 300 and _mean(grads[-100:]) > 0.02,
    )
    ctx.check("the features trained (loss fell)", _mean(ctx.losses[-30:]) < ctx.losses[0] - 0.1)


# -- deep evidential regression: an LR burst kills the ReLUs ------------------------------------


class EvidentialNet(nn.Module):
    """Amini et al. 2020: an MLP with a normal-inverse-gamma head (gamma, nu, alpha, beta)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 4)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))


def _nig_loss(out: torch.Tensor, y: torch.Tensor, reg: float = 0.01) -> torch.Tensor:
    gamma = out[:, 0]
    nu = F.softplus(out[:, 1]) + 1e-3
    alpha = F.softplus(out[:, 2]) + 1.0 + 1e-3
    beta = F.softplus(out[:, 3]) + 1e-3
    omega = 2 * beta * (1 + nu)
    nll = (
        0.5 * torch.log(math.pi / nu)
        - alpha * torch.log(omega)
        + (alpha + 0.5) * torch.log(nu * (y - gamma) ** 2 + omega)
        + torch.lgamma(alpha)
        - torch.lgamma(alpha + 0.5)
    )
    return (nll + reg * (y - gamma).abs() * (2 * nu + alpha)).mean()


@scenario(
    "h54_evidential_nig",
    "adamax",
    "loss_of_plasticity",
    where="fc2",
    diverges=151,
    heldout=True,
    onset=150,
    note="a restart set the LR to 1.0 (x500) for 8 steps: fc2's ReLUs die and stay dead",
)
def h54_evidential_lr_burst_adamax(ctx: Context) -> None:
    """Deep evidential regression on diabetes under Adamax. At step 150 a warm restart of the
    schedule writes the restart factor 1.0 into the learning rate itself (lr = 1.0, 500x the
    base, for 8 steps, until the next scheduler call fixes it). Adamax moves every weight by up to the full rate per step,
    so fc2's biases and weights are thrown far out; nearly all of its ReLU units end up negative
    on every input and, with no gradient through a dead ReLU, they never come back: the rest of
    the run learns with a handful of units."""
    gen = seeded(5405)
    model = EvidentialNet()
    base = 2e-3
    opt = torch.optim.Adamax(model.parameters(), lr=base)
    probe = _diabetes()[0]
    dead: dict[str, float] = {}

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.0 if 150 <= step < 158 else base  # meant: base * 1.0
        if step == 149:
            with torch.no_grad():
                dead["before"] = dead_fraction(model.hidden(probe))

    fit(
        ctx,
        model,
        opt,
        _diabetes_batches(gen),
        400,
        loss_fn=_nig_loss,
        classifier=False,
        before=schedule,
    )
    with torch.no_grad():
        dead["after"] = dead_fraction(model.hidden(probe))
        dead["fc1"] = dead_fraction(F.relu(model.fc1(probe)))
    pre = _mean(ctx.losses[100:150])
    jump = next(i for i, v in enumerate(ctx.losses) if v > 2 * pre)
    ctx.check("few fc2 units were dead before the burst", dead["before"] < 0.2)
    ctx.check("over 70% of fc2 units are dead at the end", dead["after"] >= 0.7)
    ctx.check("fc1 still lives (the damage sits in fc2)", dead["fc1"] < 0.2)
    ctx.check("the loss left its level at 151", jump == 151)
    ctx.check("and never came back", _mean(ctx.losses[-50:]) > 2 * pre)


# -- a conditional VAE: one step with the static loss scale left on -------------------------------


class CVAE(nn.Module):
    """Sohn et al. 2015 on digits: q(z | x, c) and p(x | z, c), c the one-hot digit class.
    The input is [pixels, one-hot]; the output [64 pixel logits, the KL of each row]."""

    def __init__(self, hidden: int = 128, latent: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(74, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent + 10, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, xc: torch.Tensor) -> torch.Tensor:
        h = self.enc(xc)
        mu, logvar = self.mu(h).float(), self.logvar(h).float().clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.dec(torch.cat([z, xc[:, 64:].float()], -1))
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1, keepdim=True)
        return torch.cat([logits.float(), kl], -1)


def _cvae_batches(gen: torch.Generator, batch: int = 64):
    for x, y in digit_batches(gen, batch):
        yield torch.cat([x, F.one_hot(y, 10).float()], -1), x


def _cvae_loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    recon = F.binary_cross_entropy_with_logits(out[:, :64], x, reduction="none").sum(-1)
    return (recon + out[:, 64]).mean()


@scenario(
    "h54_cvae_digits",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=120,
    note="one step backpropagates the loss x65536 (unscale skipped): Adam's v stays inflated",
)
def h54_cvae_stale_loss_scale_adam(ctx: Context) -> None:
    """A conditional VAE on digits under Adam, with a hand-rolled static loss scale (the loss
    is multiplied by 65536 before backward and the gradients divided after). At step 120, the
    first step after resuming from a checkpoint, the division is skipped: every tensor gets a
    gradient 65536x too large for one step. Adam's normalised step is barely larger, but its
    second moment now holds that gradient squared and decays at 0.999 a step: for hundreds of
    steps after, the updates are a small fraction of what they were (the decoder's output
    layer's 50x smaller; only encoder weights of units that were silent on that batch keep some pace), and
    the model learns far less than the same run without the bug."""
    gen = seeded(5406)
    model = CVAE()
    twin = CVAE()
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: dict[str, list[float]] = {n: [] for n, _ in model.named_parameters()}
    last: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:  # moves[n][i]: the update step i made to tensor n
        for n, p in model.named_parameters():
            if n in last:
                moves[n].append(float((p.detach() - last[n]).norm()))
            last[n] = p.detach().clone()

    def scaled(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 120 else loss  # the unscale was skipped once

    fit(
        ctx,
        model,
        opt,
        _cvae_batches(gen),
        420,
        loss_fn=_cvae_loss,
        classifier=False,
        before=before,
        extra_loss=scaled,
    )
    # the same run without the bug (same data, same noise), outside the monitor
    torch.manual_seed(5406)
    twin_gen = torch.Generator().manual_seed(5406)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    twin_losses = []
    batches = _cvae_batches(twin_gen)
    next(batches)  # fit's probe batch
    for _ in range(420):
        xc, x = next(batches)
        loss = _cvae_loss(twin(xc), x)
        twin_opt.zero_grad()
        loss.backward()
        twin_opt.step()
        twin_losses.append(float(loss))
    shrink = {n: _mean(m[170:400]) / max(_mean(m[90:120]), 1e-12) for n, m in moves.items()}
    ctx.check(
        "the gradient at 120 was >1000x its neighbours",
        ctx.grad_norms[120] > 1000 * max(ctx.grad_norms[110:120]),
    )
    ctx.check(
        "50 to 280 steps later, 6 of the 10 tensors still move under 1/5 as far per step",
        sum(r < 0.2 for r in shrink.values()) >= 6,
    )
    ctx.check(
        "and the decoder's output layer under 1/10",
        shrink["dec.2.weight"] < 0.1 and shrink["dec.2.bias"] < 0.1,
    )
    ctx.check(
        "learning stalled: the clean twin run ends with a lower loss",
        _mean(twin_losses[-30:]) < _mean(ctx.losses[-30:]) - 0.5,
    )


@scenario(
    "h54_cvae_digits", "sg_grams", "healthy", heldout=True, note="fp16 autocast with a GradScaler"
)
def h54_cvae_healthy_fp16_grams(ctx: Context) -> None:
    """The conditional VAE under fp16 autocast with a GradScaler and Grams: trains normally."""
    gen = seeded(5407)
    model = CVAE()
    opt = sgo.Grams(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    fit(
        ctx,
        model,
        opt,
        _cvae_batches(gen),
        300,
        loss_fn=_cvae_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    ok = _finite(ctx.losses)
    ctx.check("all losses finite", all(ok))
    ctx.check("the loss fell by a third", _mean(ctx.losses[-20:]) < 0.67 * _mean(ctx.losses[:5]))


# -- a variational information bottleneck classifier: the temperature applied the wrong way ----


class VIBClassifier(nn.Module):
    """Alemi et al. 2017: a stochastic encoder p(z | x), a linear decoder q(y | z), and a
    softening temperature on the logits."""

    def __init__(self, hidden: int = 128, latent: int = 16, temperature: float = 100.0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent)
        )
        self.head = nn.Linear(latent, 10)
        self.temperature = temperature
        self.kl = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encoder(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        self.kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1).mean()
        return self.head(z) / self.temperature


@scenario(
    "h54_vib_classifier",
    "sg_adabelief",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="the temperature config holds 1/T: logits multiplied by 100 instead of divided",
)
def h54_vib_inverted_temperature_adabelief(ctx: Context) -> None:
    """A variational information bottleneck classifier on digits under AdaBelief. Its head
    divides the logits by a softening temperature, T = 100, but the config was written with the
    inverse (0.01), so the logits are multiplied by 100: the training softmax saturates and, for
    nearly half of the training rows, gives the target a float32 probability of exactly 1.0."""
    gen = seeded(5408)
    model = VIBClassifier(temperature=0.01)  # meant 100.0
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    x, y = digits()
    x, y = x[:256], y[:256]  # the small labelled set

    def batches():
        while True:
            idx = torch.randperm(256, generator=gen)[:64]
            yield x[idx], y[idx]

    fit(ctx, model, opt, batches(), 300, extra_loss=lambda step, loss: loss + 1e-3 * model.kl)
    model.eval()  # predict from the mean code
    with torch.no_grad():
        logits = model(x)
        meant = logits * model.temperature / 100.0  # the head with T = 100 as intended
    frac = collapsed_fraction(logits, y)
    ctx.check("40% of the training rows' softmax is exactly one-hot", frac > 0.4)
    ctx.check("with T = 100 as meant, none would be", collapsed_fraction(meant, y) == 0.0)
    ctx.check("the training loss is near 0", _mean(ctx.losses[-20:]) < 0.1)


# -- Hugging Face two-tower models on digits and generated captions -----------------------------


class CosineHeadClassifier(nn.Module):
    """An image tower with a cosine-similarity head (NormFace style): logits = s * cos(x, w_c),
    the scale s = exp(log_scale) learnt."""

    def __init__(self, tower: nn.Module, dim: int, classes: int = 10) -> None:
        super().__init__()
        self.tower = tower
        self.head = CosineHead(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(pixel_values=images).pooler_output)


class CosineHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(4.0)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos  # the clamp to s <= 10 was left out


@scenario(
    "h54_hf_altclip_vision_cosine",
    "sg_lion",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="a cosine head's learnt scale with its clamp left out: the logits keep growing",
)
def h54_altclip_cosine_scale_unclamped_lion(ctx: Context) -> None:
    """Hugging Face AltCLIP's vision tower (from a config) with a NormFace-style cosine
    classifier head on digits, under Lion. The head's learnt scale is meant to be clamped at
    10; the clamp was left out. Once most digits are classified right, cross-entropy keeps
    rewarding a larger scale and Lion raises its log by the full rate nearly every step: the
    scale climbs with no ceiling, past the clamp, and the output logits grow with it."""
    from transformers import AltCLIPVisionConfig, AltCLIPVisionModel

    gen = seeded(5409)
    config = AltCLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=8,
        patch_size=2,
        num_channels=1,
    )
    model = CosineHeadClassifier(AltCLIPVisionModel(config), 32)
    opt = sgo.Lion(model.parameters(), lr=4e-3, fused=False)
    peaks: list[float] = []
    scales: list[float] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(x.reshape(-1, 1, 8, 8))
        if torch.is_grad_enabled():
            peaks.append(float(logits.detach().abs().max()))
            scales.append(float(m.head.log_scale.detach().exp()))
        return logits

    fit(ctx, model, opt, digit_batches(gen), 380, forward=forward)
    rises = sum(b > a for a, b in zip(scales[40:370], scales[41:371], strict=False))
    ctx.check("the scale rose in 90% of the steps from 40 on", rises >= 0.9 * 330)
    ctx.check("it passed the intended clamp of 10", max(scales) > 10 and scales[0] < 5)
    ctx.check(
        "the peak output logit grew 3x from step 40 to the end",
        _mean(peaks[-10:]) > 3 * _mean(peaks[35:45]),
    )
    ctx.check("the classifier learnt (loss under 0.5)", _mean(ctx.losses[-20:]) < 0.5)


# -- Hugging Face LXMERT: visual question answering at too high a rate, no QK-norm ---------------


def _lxmert():
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    config = LxmertConfig(
        vocab_size=64,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=16,
        visual_pos_dim=4,
        num_qa_labels=5,
        max_position_embeddings=16,
        num_object_labels=4,
        num_attr_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return LxmertForQuestionAnswering(config)


def _vqa_batches(gen: torch.Generator, batch: int = 32):
    """Six generated objects of five types (one-hot type + noise as region features); the
    question names a type, the answer is how many objects have it (capped at 4)."""
    while True:
        types = torch.randint(0, 5, (batch, 6), generator=gen)
        feats = torch.cat(
            [F.one_hot(types, 5).float(), 0.1 * torch.randn(batch, 6, 11, generator=gen)], -1
        )
        pos = torch.rand(batch, 6, 4, generator=gen)
        q = torch.randint(0, 5, (batch,), generator=gen)
        ids = torch.cat(
            [
                torch.full((batch, 1), 1),
                (10 + q)[:, None],
                torch.randint(20, 64, (batch, 4), generator=gen),
                torch.full((batch, 1), 2),
            ],
            1,
        )
        yield (ids, feats, pos), (types == q[:, None]).sum(1).clamp(max=4)


def _vqa_forward(m: nn.Module, x) -> torch.Tensor:
    ids, feats, pos = x
    return m(input_ids=ids, visual_feats=feats, visual_pos=pos).question_answering_score


@scenario(
    "h54_hf_lxmert_vqa",
    "adamw",
    "attention_logit_growth",
    where="lxmert.encoder.layer.0.attention.self",
    diverges=None,
    heldout=True,
    note="AdamW at 3e-2 without QK-norm: the language encoder's self-attention saturates",
)
def h54_lxmert_attention_saturates_adamw(ctx: Context) -> None:
    """Hugging Face LXMERT (from a config) on generated visual questions (count the objects of
    the named type) under AdamW at 3e-2 -- a rate copied from a small-MLP recipe. Attention
    has no QK-norm: within the first 40 steps the query and key weights of every attention
    grow, most of all in the language encoder's self-attention, whose q.k / sqrt(d) logits go
    from ~0 to tens and later near 100, and whose softmax saturates to one-hot rows;
    the model never learns the task (the loss stays at the level of guessing the frequent
    counts)."""
    gen = seeded(5410)
    model = _lxmert()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    peaks: dict[str, dict[int, float]] = {}
    sat: dict[str, float] = {}

    def hook(name: str):
        def record(mod: nn.Module, args, kwargs, out) -> None:
            if not torch.is_grad_enabled():
                return
            h = args[0] if args else kwargs["hidden_states"]
            c = args[1] if len(args) > 1 else kwargs["context"]
            with torch.no_grad():
                d = mod.attention_head_size
                q = mod.query(h).view(*h.shape[:-1], -1, d).transpose(1, 2)
                k = mod.key(c).view(*c.shape[:-1], -1, d).transpose(1, 2)
                logits = q @ k.transpose(-1, -2) / math.sqrt(d)
            peaks.setdefault(name, {})[len(ctx.losses)] = float(logits.abs().max())
            sat[name] = float((logits.softmax(-1).amax(-1) > 0.99).float().mean())

        return record

    for name, mod in model.named_modules():
        if type(mod).__name__ == "LxmertAttention":
            mod.register_forward_hook(hook(name), with_kwargs=True)
    fit(ctx, model, opt, _vqa_batches(gen), 300, forward=_vqa_forward)
    mine = peaks["lxmert.encoder.layer.0.attention.self"]
    others = [n for n in peaks if n != "lxmert.encoder.layer.0.attention.self"]
    late = {n: _mean([v[i] for i in range(250, 300)]) for n, v in peaks.items()}
    ctx.check("its logits started near 0, passed 50 by step 40", mine[0] < 0.5 and mine[40] > 50)
    ctx.check(
        "they stay 3x the largest of the model's other attentions",
        all(late["lxmert.encoder.layer.0.attention.self"] > 3 * late[n] for n in others),
    )
    ctx.check(
        "half of its rows are saturated (max prob > 0.99)",
        sat["lxmert.encoder.layer.0.attention.self"] > 0.5,
    )
    ctx.check(
        "the model did not learn (loss at the end > 0.8x that at step 20)",
        _mean(ctx.losses[-30:]) > 0.8 * _mean(ctx.losses[15:25]),
    )


# -- Hugging Face DPR: a one-step typo in a regulariser's schedule ------------------------------


class DualEncoder(nn.Module):
    """DPR's question and context encoders (from configs) with projections to 16 dims."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder

        def config():
            return DPRConfig(
                vocab_size=64,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=16,
                projection_dim=16,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )

        self.question = DPRQuestionEncoder(config())
        self.context = DPRContextEncoder(config())

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.question(input_ids=batch[0]).pooler_output
        c = self.context(input_ids=batch[1]).pooler_output
        return q @ c.T  # in-batch negatives


def _retrieval_batches(gen: torch.Generator, batch: int = 32):
    """A question [CLS, key, 4 noise] and its passage [CLS, 3 noise, key, 3 noise]: the key
    word (one of 40) is what links them."""
    while True:
        key = 20 + torch.randperm(40, generator=gen)[:batch]
        q = torch.cat(
            [
                torch.full((batch, 1), 1),
                key[:, None],
                torch.randint(2, 20, (batch, 4), generator=gen),
            ],
            1,
        )
        c = torch.cat(
            [
                torch.full((batch, 1), 1),
                torch.randint(2, 20, (batch, 3), generator=gen),
                key[:, None],
                torch.randint(2, 20, (batch, 3), generator=gen),
            ],
            1,
        )
        yield (q, c), torch.arange(batch)


@scenario(
    "h54_hf_dpr_retrieval",
    "radam",
    "gradient_spike",
    where="context.ctx_encoder.encode_proj",
    diverges=None,
    heldout=True,
    onset=160,
    note="a schedule typo (1e4 for 1e-4) in an orthogonality penalty for one step; clipped",
)
def h54_dpr_orthogonality_typo_radam(ctx: Context) -> None:
    """DPR question and context encoders (Hugging Face, from configs) trained with in-batch
    negatives under RAdam with gradient-norm clipping at 1. An orthogonality penalty on
    the context projection follows a per-step coefficient table; the entry for step 160 was
    typed 1e4 instead of 1e-4. For that one step the context projection's gradient is over
    100 times the whole model's usual gradient (the data are ordinary); the clip scales it down before RAdam sees
    it, so the step is an ordinary one and the run carries on as before."""
    gen = seeded(5412)
    model = DualEncoder()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    proj = model.context.ctx_encoder.encode_proj.weight
    coef = [1e-4] * 300
    coef[160] = 1e4  # the typo: the minus sign of the exponent dropped
    ctx.attach(model, opt)
    proj_grads: list[float] = []
    batches = _retrieval_batches(gen)
    next(batches)
    for step in range(300):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        gram = proj @ proj.T
        ortho = ((gram - torch.eye(len(gram))) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        (loss + coef[step] * ortho).backward()
        proj_grads.append(float(proj.grad.norm()))
        ctx.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
    g = ctx.grad_norms
    ctx.check(
        "the gradient norm at 160 was >100x its neighbours",
        g[160] > 100 * max(g[150:160] + g[161:171]),
    )
    ctx.check(
        "it sat in the context projection (>99% of the norm)", proj_grads[160] > 0.99 * g[160]
    )
    ctx.check(
        "the loss 20 steps later is within 20% of before",
        _mean(ctx.losses[175:185]) < 1.2 * _mean(ctx.losses[150:160]),
    )
    ctx.check(
        "the retrieval trained (loss fell by a third)",
        _mean(ctx.losses[-20:]) < 0.67 * _mean(ctx.losses[:10]),
    )


# -- Hugging Face TimesFM 2.5: a glitched reading in the forecast window -------------------------


def _timesfm():
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

    config = TimesFm2_5Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_length=8,
        context_length=64,
        horizon_length=16,
        output_quantile_len=16,
        force_flip_invariance=False,
    )
    return TimesFm2_5ModelForPrediction(config)


def _series_batches(gen: torch.Generator, batch: int = 16):
    """Generated series: a level, a trend, two seasonal sines and noise; 64 steps of context
    and the next 16 to forecast."""
    t = torch.arange(80.0)
    while True:
        level = 10 + 5 * torch.rand(batch, 1, generator=gen)
        trend = 0.05 * torch.randn(batch, 1, generator=gen)
        p1 = 8 + 8 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 2, generator=gen)
        s = (
            level
            + trend * t
            + 2 * torch.sin(6.28 * t / p1 + ph[:, :1])
            + 0.5 * torch.sin(6.28 * t / 5 + ph[:, 1:])
            + 0.2 * torch.randn(batch, 80, generator=gen)
        )
        yield s[:, :64], s[:, 64:]


def _forecast_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x  # the loss needs the targets: see _TimesFMLoss


class _TimesFMLoss:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        return self.model(past_values=past, future_values=future).loss


@scenario(
    "h54_hf_timesfm2_5_forecast",
    "sg_stablespam",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch's forecast window holds a sensor glitch (x10 readings); the run recovers",
)
def h54_timesfm_glitched_target_stablespam(ctx: Context) -> None:
    """Hugging Face TimesFM 2.5 (from a config) forecasting generated series under StableSPAM.
    At step 150 three series of the batch carry a sensor glitch in their forecast window (two
    readings 10x the level, a logger's unit change). The loss, computed in the context's
    normalised scale, spikes by orders of magnitude for that step; the next batches are clean
    and the loss comes back to its level."""
    gen = seeded(5413)
    model = _timesfm()
    opt = sgo.StableSPAM(model.parameters(), lr=1e-3)

    def alter(step: int, past: torch.Tensor, future: torch.Tensor):
        if step == 150:
            future = future.clone()
            future[:3, 5:7] *= 10.0
        return past, future

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        260,
        loss_fn=_TimesFMLoss(model),
        classifier=False,
        alter=alter,
        forward=_forecast_forward,
    )
    ctx.check("the loss spiked >20x at 150", ctx.losses[150] > 20 * max(ctx.losses[140:150]))
    ctx.check(
        "and was back within 30% of its level 40 steps later",
        _mean(ctx.losses[190:200]) < 1.3 * _mean(ctx.losses[140:150]),
    )
    ctx.check("the forecaster trained before it", _mean(ctx.losses[140:150]) < 0.8 * ctx.losses[0])


@scenario("h54_hf_timesfm2_5_forecast", "sg_ademamix", "healthy", heldout=True)
def h54_timesfm_healthy_ademamix(ctx: Context) -> None:
    """TimesFM 2.5 forecasting the generated series under AdEMAMix: trains normally."""
    gen = seeded(5414)
    model = _timesfm()
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3)
    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        200,
        loss_fn=_TimesFMLoss(model),
        classifier=False,
        forward=_forecast_forward,
    )
    ctx.check("all losses finite", all(_finite(ctx.losses)))
    ctx.check("the loss fell by a third", _mean(ctx.losses[-20:]) < 0.67 * _mean(ctx.losses[:5]))


# -- Hugging Face GroupViT: a contrastive control ----------------------------------------------


def _caption_batches(gen: torch.Generator, batch: int = 32, length: int = 8):
    """Digit images (1 x 8 x 8) with generated captions: [4, class word, 5 noise words, 3]."""
    for x, y in digit_batches(gen, batch):
        noise = torch.randint(20, 64, (batch, length - 3), generator=gen)
        ids = torch.cat(
            [torch.full((batch, 1), 4), 10 + y[:, None], noise, torch.full((batch, 1), 3)], 1
        )
        yield (x.reshape(-1, 1, 8, 8), ids), y


@scenario("h54_hf_groupvit_contrastive", "sg_lion", "healthy", heldout=True)
def h54_groupvit_healthy_lion(ctx: Context) -> None:
    """Hugging Face GroupViT (from a config) trained contrastively (its own image-text loss)
    on digits and generated captions under Lion: trains normally."""
    from transformers import GroupViTConfig, GroupViTModel

    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=4,
        eos_token_id=3,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        depths=[1, 1],
        num_group_tokens=[8, 0],
        num_output_groups=[8, 8],
        num_attention_heads=2,
        image_size=8,
        patch_size=2,
        num_channels=1,
    )
    config = GroupViTConfig(
        text_config=text, vision_config=vision, projection_dim=16, projection_intermediate_dim=32
    )
    gen = seeded(5417)
    model = GroupViTModel(config)
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)

    def forward(m: nn.Module, x) -> torch.Tensor:
        return m(pixel_values=x[0], input_ids=x[1], return_loss=True).loss

    fit(
        ctx,
        model,
        opt,
        _caption_batches(gen),
        300,
        loss_fn=lambda loss, y: loss,
        classifier=False,
        forward=forward,
    )
    ctx.check("all losses finite", all(_finite(ctx.losses)))
    ctx.check("the loss fell by a third", _mean(ctx.losses[-20:]) < 0.67 * _mean(ctx.losses[:5]))
    ctx.check("and below chance, ln 32", _mean(ctx.losses[-20:]) < math.log(32))
