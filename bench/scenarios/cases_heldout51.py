"""Held-out scenarios, set 51 (``h51_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face M2M100 (encoder-decoder on a generated reversal task), Chinese-CLIP
(image-text contrastive on digits and generated captions), ViT-MAE (masked-patch pre-training on
digits), NomicBERT (sequence classifier) and TrOCR (a ViT encoder with a TrOCR decoder reading
generated digit strips, through ``VisionEncoderDecoderModel``) from configs; second-order MAML
with an unrolled inner loop on generated sine tasks, BYOL with an EMA target (digits),
teacher-student distillation with a temperature (digits), EWC continual learning on split
digits, a mixture density network on a generated inverse problem, a VQ-VAE with a codebook
(digits, fp16 autocast with a GradScaler, fault and control), a hypernetwork that writes a
regressor's tanh layer from a task embedding.

Optimizers: SGD, Nesterov SGD, ASGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, Adadelta,
RMSprop, and steadygrad.optim's SPAM, Lion, AdaBelief and AdEMAMix.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import steadygrad.optim as sgo
from scenarios.common import (
    MLP,
    Context,
    bert_batches,
    collapsed_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _params_flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _loop(ctx: Context, model: nn.Module, opt, steps: int, step_fn, *, scaler=None, before=None):
    """A training loop for objectives ``fit`` does not cover: ``step_fn(step)`` returns
    ``(loss_to_log, loss_to_backprop)``; the monitor is attached as a user would."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total = step_fn(step)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            total.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- mixture density network: a bad sample overflows the sigma head's exp -------------------------


def _inverse_problem(gen: torch.Generator, batch: int = 64):
    """The classic MDN toy: y ~ U(0, 1), x = y + 0.3 sin(2 pi y) + noise; predict y from x
    (multi-valued).  Inputs are (x, x^2), standardised."""
    while True:
        y = torch.rand(batch, 1, generator=gen)
        x = y + 0.3 * torch.sin(2 * math.pi * y) + 0.05 * torch.randn(batch, 1, generator=gen)
        feats = torch.cat([(x - 0.5) / 0.35, ((x - 0.5) / 0.35) ** 2 - 1.0], 1)
        yield feats, y


class SigmaHead(nn.Module):
    """Component scales as exp of a linear read-out (the textbook parametrisation)."""

    def __init__(self, hidden: int, k: int) -> None:
        super().__init__()
        self.lin = nn.Linear(hidden, k)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.lin(h))


class MDN(nn.Module):
    def __init__(self, k: int = 5, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.pi_head = nn.Linear(hidden, k)
        self.mu_head = nn.Linear(hidden, k)
        self.sigma_head = SigmaHead(hidden, k)

    def forward(self, x: torch.Tensor):
        h = self.body(x)
        return self.pi_head(h), self.mu_head(h), self.sigma_head(h)


def _mdn_nll(out, y: torch.Tensor) -> torch.Tensor:
    logit_pi, mu, sigma = out
    log_pi = torch.log_softmax(logit_pi, -1)
    log_n = -torch.log(sigma) - 0.5 * ((y - mu) / sigma) ** 2 - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(log_pi + log_n, -1).mean()


@scenario(
    "h51_mdn_inverse_problem",
    "adagrad",
    "nonfinite",
    where="sigma_head",
    diverges=170,
    heldout=True,
    onset=170,
    note="one sample's x logged in millimetres: exp in the sigma head overflows to inf",
)
def h51_mdn_sigma_exp_overflow(ctx: Context) -> None:
    """An MDN trains well on the inverse problem; at step 170 one sample's reading arrives in
    millimetres (x 1000).  The ReLU body passes the huge value on, the sigma head's
    exp(linear) overflows float32 to inf (or underflows to 0) for that sample, the negative
    log-likelihood becomes non-finite and the NaN gradient poisons every weight."""
    gen = seeded(5101)
    model = MDN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = _inverse_problem(gen)
    seen: dict[int, tuple[bool, bool]] = {}
    state = {"step": 0}

    def hook(mod, inp, out):
        seen[state["step"]] = (
            bool(torch.isfinite(inp[0]).all()),
            bool(((out == float("inf")) | (out == 0)).any()),
        )

    model.sigma_head.register_forward_hook(hook)

    def step_fn(step: int):
        state["step"] = step
        x, y = next(batches)
        if step == 170:
            x = x.clone()
            x[7] = x[7] * 1000.0
        loss = _mdn_nll(model(x), y)
        return loss, loss

    _loop(ctx, model, opt, 200, step_fn)
    fin = [_finite(v) for v in ctx.losses]
    ctx.check("loss finite until 170, not from 170", all(fin[:170]) and not any(fin[170:]))
    ctx.check("loss fell before the bad sample", _mean(ctx.losses[150:170]) < ctx.losses[0] - 0.3)
    ctx.check(
        "sigma head produced inf/0 from a finite input at 170",
        seen[170] == (True, True) and not any(seen[s][1] for s in range(170)),
    )


# -- EWC: a Fisher summed over the data set, not averaged, makes the penalty too stiff for the LR -


def _split_digit_batches(gen: torch.Generator, classes: tuple[int, ...], batch: int = 64):
    x, y = digits()
    keep = torch.isin(y, torch.tensor(classes))
    x, y = x[keep], y[keep]
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


def _top_curvature_ratio(model, fisher, lam, lr, momentum) -> float:
    """Largest curvature of the EWC penalty (lam * F per coordinate) over the stability limit
    of heavy-ball SGD, 2 (1 + momentum) / lr."""
    top = max(float(f.max()) for f in fisher.values()) * lam
    return top / (2 * (1 + momentum) / lr)


@scenario(
    "h51_ewc_split_digits",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=150,
    note="Fisher summed over 600 samples (not averaged): the penalty's curvature passes 2(1+m)/lr",
)
def h51_ewc_fisher_summed(ctx: Context) -> None:
    """Continual learning with EWC: task A (digits 0-4) for 150 steps, then task B (5-9) with
    the penalty lam/2 sum F (theta - theta_A)^2.  The Fisher is accumulated as a sum of
    per-sample squared gradients over 600 samples and never divided by 600, so lam * F is
    600x what lam was chosen for; its stiffest coordinates have curvature far above the
    stability limit 2(1 + m)/lr of the Nesterov SGD still running at task A's rate.  Once
    task B pulls the weights away from theta_A the penalty oscillates with growing amplitude
    and the run diverges."""
    gen = seeded(5102)
    model = MLP([64, 64, 10])
    lr, mom, lam = 0.05, 0.9, 50.0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom, nesterov=True)
    task_a = _split_digit_batches(gen, (0, 1, 2, 3, 4))
    task_b = _split_digit_batches(gen, (5, 6, 7, 8, 9))
    anchor: dict[str, torch.Tensor] = {}
    fisher: dict[str, torch.Tensor] = {}
    ratios: list[float] = []

    def consolidate() -> None:
        xa, ya = digits()
        keep = ya < 5
        xa, ya = xa[keep][:600], ya[keep][:600]
        fisher.update({n: torch.zeros_like(p) for n, p in model.named_parameters()})
        for i in range(len(ya)):  # per-sample squared gradients ...
            model.zero_grad()
            F.cross_entropy(model(xa[i : i + 1]), ya[i : i + 1]).backward()
            for n, p in model.named_parameters():
                fisher[n] += p.grad.detach() ** 2  # ... summed, the "/ len(ya)" forgotten
        model.zero_grad()
        anchor.update({n: p.detach().clone() for n, p in model.named_parameters()})
        ratios.append(_top_curvature_ratio(model, fisher, lam, lr, mom))
        ratios.append(
            _top_curvature_ratio(model, {n: f / len(ya) for n, f in fisher.items()}, lam, lr, mom)
        )

    def step_fn(step: int):
        if step == 150:
            consolidate()
        x, y = next(task_a if step < 150 else task_b)
        loss = F.cross_entropy(model(x), y)
        if step >= 150:
            pen = sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
            loss = loss + 0.5 * lam * pen
        return loss, loss

    _loop(ctx, model, opt, 260, step_fn)
    L = ctx.losses
    ctx.check("task A learned before 150", _mean(L[140:150]) < 0.3 * L[0])
    ctx.check(
        "penalty curvature above the limit summed, below it averaged",
        ratios[0] > 1.0 and ratios[1] < 1.0,
    )
    ctx.check(
        "loss blew up after the switch",
        any(not _finite(v) or v > 20 * max(L[150:155]) for v in L[155:]),
    )


# -- distillation: the temperature multiplied instead of divided ---------------------------------


def _teacher(gen: torch.Generator) -> nn.Module:
    """A wider MLP trained briefly on digits (the teacher; frozen afterwards)."""
    teacher = MLP([64, 256, 10])
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    batches = digit_batches(gen)
    for _ in range(300):
        x, y = next(batches)
        F.cross_entropy(teacher(x), y).backward()
        opt.step()
        opt.zero_grad()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _kd_loss(student_logits, teacher_logits, y, temp: float, inverted: bool) -> torch.Tensor:
    if inverted:  # the bug: "logits * T" where the paper divides by T
        soft_t = torch.softmax(teacher_logits * temp, -1)
        log_s = torch.log_softmax(student_logits / temp, -1)
    else:
        soft_t = torch.softmax(teacher_logits / temp, -1)
        log_s = torch.log_softmax(student_logits / temp, -1)
    kd = F.kl_div(log_s, soft_t, reduction="batchmean") * temp**2
    return 0.5 * kd + 0.5 * F.cross_entropy(student_logits, y)


@scenario(
    "h51_distill_temperature",
    "adamax",
    "softmax_collapse",
    where="2",
    diverges=None,
    heldout=True,
    note="teacher logits multiplied by T=4 instead of divided: one-hot targets at T",
)
def h51_distill_temperature_inverted(ctx: Context) -> None:
    """Teacher-student distillation with T = 4, but the teacher's soft targets are computed
    as softmax(teacher * T), not softmax(teacher / T): the "soft" targets are one-hot, and the
    student, matched at temperature T, must make its own logits 4 x 4 = 16 times sharper than
    the teacher's to fit them.  Its logit margins grow until its float32 output softmax gives
    the target exactly 1.0 on most samples: the student head's softmax collapses."""
    gen = seeded(5103)
    teacher = _teacher(gen)
    student = MLP([64, 64, 10])
    opt = torch.optim.Adamax(student.parameters(), lr=1e-2)
    batches = digit_batches(gen)

    def step_fn(step: int):
        x, y = next(batches)
        ctx.targets(y)
        loss = _kd_loss(student(x), teacher(x), y, 4.0, inverted=True)
        return loss, loss

    _loop(ctx, student, opt, 400, step_fn)
    x, y = next(digit_batches(gen, 512))
    with torch.no_grad():
        soft = torch.softmax(teacher(x) * 4.0, -1).max(-1).values
        logits = student(x)
    ctx.check("the 'soft' targets are near one-hot", float(soft.mean()) > 0.99)
    ctx.check("student softmax collapsed on half the samples", collapsed_fraction(logits, y) > 0.5)


@scenario("h51_distill_temperature", "sg_adabelief", "healthy", heldout=True)
def h51_distill_temperature_control(ctx: Context) -> None:
    """The same distillation written as the paper has it (teacher / T): the student learns
    from soft targets and its softmax stays well short of one-hot."""
    gen = seeded(5104)
    teacher = _teacher(gen)
    student = MLP([64, 64, 10])
    opt = sgo.AdaBelief(student.parameters(), lr=2e-3)
    batches = digit_batches(gen)

    def step_fn(step: int):
        x, y = next(batches)
        ctx.targets(y)
        loss = _kd_loss(student(x), teacher(x), y, 4.0, inverted=False)
        return loss, loss

    _loop(ctx, student, opt, 400, step_fn)
    x, y = next(digit_batches(gen, 512))
    with torch.no_grad():
        logits = student(x)
    acc = float((logits.argmax(-1) == y).float().mean())
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("student accurate", acc > 0.9)
    ctx.check("no collapse", collapsed_fraction(logits, y) < 0.05)


# -- BYOL: the projector left at a learning rate of 0 -------------------------------------------


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Two cheap digit views: pixel dropout, noise and a random brightness."""
    keep = (torch.rand(x.shape, generator=gen) > 0.25).float()
    bright = 0.7 + 0.6 * torch.rand(x.shape[0], 1, generator=gen)
    return x * keep * bright + 0.1 * torch.randn(x.shape, generator=gen)


def _head(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class BYOL(nn.Module):
    """Online encoder + projector + predictor; the target encoder + projector are an EMA."""

    def __init__(self, dim: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = _head(64, hidden, 64)
        self.projector = _head(64, hidden, dim)
        self.predictor = _head(dim, hidden, dim)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)

    @torch.no_grad()
    def update_target(self, tau: float = 0.99) -> None:
        for online, target in (
            (self.encoder, self.target_encoder),
            (self.projector, self.target_projector),
        ):
            for po, pt in zip(online.parameters(), target.parameters(), strict=True):
                pt.mul_(tau).add_(po.detach(), alpha=1 - tau)
            for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
                bt.copy_(bo)

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        def one_side(a, b):
            p = F.normalize(self.predictor(self.projector(self.encoder(a))), dim=-1)
            with torch.no_grad():
                z = F.normalize(self.target_projector(self.target_encoder(b)), dim=-1)
            return (2 - 2 * (p * z).sum(-1)).mean()

        return one_side(v1, v2) + one_side(v2, v1)


def _byol_run(ctx: Context, model: BYOL, opt, steps: int, gen: torch.Generator) -> None:
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    for _ in range(steps):
        x, _ = next(batches)
        loss = model.loss(_augment(x, gen), _augment(x, gen))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        model.update_target()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _byol_spread(model: BYOL, gen: torch.Generator) -> float:
    """Mean per-dimension std of the normalised projections (collapse: ~0; healthy: ~1/sqrt(d))."""
    x, _ = next(digit_batches(gen, 512))
    model.eval()
    with torch.no_grad():
        z = F.normalize(model.projector(model.encoder(x)), dim=-1)
    model.train()
    return float(z.std(0).mean())


@scenario(
    "h51_byol_ema_digits",
    "sg_lion",
    "update_ratio_out_of_range",
    where="projector",
    diverges=None,
    heldout=True,
    note="the projector's group has lr=0.0 (a warm-up multiplier meant to be set later)",
)
def h51_byol_projector_lr_zero(ctx: Context) -> None:
    """BYOL with Lion; the optimizer is built with three groups so the projector can be
    warmed up separately, its group starting at lr 0.0 -- and the code that was to raise it
    never runs.  The projector keeps its random initial weights for the whole run (its
    update/weight ratio is exactly 0); the target projector, an EMA of it, is frozen too;
    encoder and predictor train around it."""
    gen = seeded(5105)
    model = BYOL()
    opt = sgo.Lion(
        [
            {"params": model.encoder.parameters()},
            {"params": model.projector.parameters(), "lr": 0.0},
            {"params": model.predictor.parameters()},
        ],
        lr=3e-4,
        fused=False,
    )
    proj0 = _params_flat(model.projector)
    enc0 = _params_flat(model.encoder)
    _byol_run(ctx, model, opt, 200, gen)
    ctx.check("projector unchanged", torch.equal(proj0, _params_flat(model.projector)))
    ctx.check(
        "encoder moved",
        float((_params_flat(model.encoder) - enc0).norm()) > 0.05 * float(enc0.norm()),
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:5]))


@scenario("h51_byol_ema_digits", "sg_ademamix", "healthy", heldout=True)
def h51_byol_control(ctx: Context) -> None:
    """BYOL trained as intended (BatchNorm in the heads, EMA target at tau 0.99): the loss
    falls and the projections keep their spread (no collapse)."""
    gen = seeded(5106)
    model = BYOL()
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3)
    _byol_run(ctx, model, opt, 200, gen)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("projections not collapsed", _byol_spread(model, gen) > 0.05)


# -- hypernetwork: generated weights at the wrong scale saturate the target's tanh layer ---------


def _sine_tasks(gen: torch.Generator, tasks: int = 8, batch: int = 64, degrees: bool = False):
    """Regression tasks: y = a_t sin(x + p_t), x ~ U(-pi, pi); the task id comes with the batch.
    ``degrees``: the angle column is handed to the model in degrees (the targets are right)."""
    amp = 0.5 + 1.5 * torch.rand(tasks, generator=gen)
    phase = math.pi * torch.rand(tasks, generator=gen)
    while True:
        t = torch.randint(0, tasks, (batch,), generator=gen)
        x = (2 * torch.rand(batch, 1, generator=gen) - 1) * math.pi
        y = amp[t, None] * torch.sin(x + phase[t, None])
        yield (t, x * 180 / math.pi if degrees else x), y


class TargetHidden(nn.Module):
    """The target network's hidden layer: tanh(x w + b) with generated (per-sample) w, b."""

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * w + b)


class HyperRegressor(nn.Module):
    """A task embedding drives a hypernetwork that writes the first layer (w, b: 1 -> 32) of a
    small target regressor; the read-out is shared."""

    def __init__(self, tasks: int = 8, emb: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = hidden
        self.task_embed = nn.Embedding(tasks, emb)
        self.hyper = nn.Sequential(nn.Linear(emb, 64), nn.ReLU())
        self.weight_head = nn.Linear(64, 2 * hidden)
        self.target_hidden = TargetHidden()
        self.readout = nn.Linear(hidden, 1)

    def forward(self, inp) -> torch.Tensor:
        t, x = inp
        w, b = self.weight_head(self.hyper(self.task_embed(t))).split(self.hidden, -1)
        return self.readout(self.target_hidden(x, w, b))


def _saturation(model: HyperRegressor, degrees: bool) -> float:
    data = _sine_tasks(torch.Generator().manual_seed(7), batch=512, degrees=degrees)
    (t, x), _ = next(data)
    seen = []
    handle = model.target_hidden.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model((t, x))
    handle.remove()
    return float((seen[0].abs() > 0.99).float().mean())


@scenario(
    "h51_hypernet_sine_tasks",
    "asgd",
    "loss_of_plasticity",
    where=("target_hidden", "weight_head"),
    diverges=None,
    heldout=True,
    note="the angle column fed in degrees, not radians: the generated tanh layer saturates",
)
def h51_hypernet_degrees_saturate(ctx: Context) -> None:
    """The loader hands the angle to the model in degrees while the targets are computed in
    radians (an unnormalised input column, ~57x too large).  The generated first layer of the
    target regressor sees pre-activations of tens to hundreds: almost every tanh unit sits at
    +-1, switching only at x ~ -b/w, so the layer computes little more than sign(x) and passes
    (nearly) no gradient back to the weights that the hypernetwork generates.  Under plain
    averaged SGD the units stay saturated and the regressor stops learning at a high loss."""
    gen = seeded(5107)
    model = HyperRegressor()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    data = _sine_tasks(gen, degrees=True)
    fit(ctx, model, opt, data, 300, loss_fn=F.mse_loss, classifier=False)
    ctx.check("most target hidden activations saturated", _saturation(model, True) > 0.8)
    ctx.check("loss stuck high", _mean(ctx.losses[-30:]) > 0.5 * _mean(ctx.losses[:10]))


@scenario("h51_hypernet_sine_tasks", "sgd", "healthy", heldout=True)
def h51_hypernet_control(ctx: Context) -> None:
    """The same hypernetwork with the angle in radians: the target's tanh layer works in its
    linear range and the loss falls."""
    gen = seeded(5108)
    model = HyperRegressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    fit(ctx, model, opt, _sine_tasks(gen), 300, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", _mean(ctx.losses[-30:]) < 0.3 * _mean(ctx.losses[:10]))
    ctx.check("target layer not saturated", _saturation(model, False) < 0.3)


# -- VQ-VAE: the codebook distance computed in fp16 overflows ------------------------------------


class Quantizer(nn.Module):
    """Nearest-code quantiser: squared distances as ||z||^2 - 2 z.e + ||e||^2 (the usual
    expansion), straight-through gradients, codebook and commitment terms."""

    def __init__(self, codes: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codes, 1.0 / codes)

    def forward(self, z: torch.Tensor):
        flat = z.reshape(-1, self.dim)
        e = self.codebook.weight
        dist = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(-1)
        idx = dist.argmin(-1)
        q = self.codebook(idx).reshape(z.shape)
        return q, dist, idx


class VQVAE(nn.Module):
    def __init__(self, latents: int = 2, dim: int = 16, codes: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, latents * dim))
        self.quantizer = Quantizer(codes, dim)
        self.decoder = nn.Sequential(nn.Linear(latents * dim, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        q, dist, idx = self.quantizer(z)
        z, q = z.float(), q.float()
        st = z + (q - z).detach()
        recon = self.decoder(st)
        vq = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        return recon, vq, dist, idx


def _vqvae_run(ctx: Context, model: VQVAE, opt, steps: int, gen, pixel_scale: float, log):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = digit_batches(gen)

    def step_fn(step: int):
        x, _ = next(batches)
        x = x * pixel_scale
        with torch.autocast("cpu", dtype=torch.float16):
            recon, vq, dist, idx = model(x)
        log.append((bool(torch.isinf(dist).any()), int(idx.unique().numel())))
        loss = F.mse_loss(recon.float(), x) + vq
        return loss, loss

    _loop(ctx, model, opt, steps, step_fn, scaler=scaler)


@scenario(
    "h51_vqvae_codebook_digits",
    "rmsprop",
    "amp_overflow",
    where="quantizer",
    diverges="auto",
    heldout=True,
    note="raw 0..255 pixels: fp16 ||z||^2 in the quantiser passes 65504, one code left",
)
def h51_vqvae_fp16_distance_overflow(ctx: Context) -> None:
    """A VQ-VAE under fp16 autocast is fed the digits as raw 8-bit intensities (0..255, the
    normalisation forgotten).  The reconstruction error and its gradients are 255^2 times
    larger than intended and the first updates blow the encoder's output up; the quantiser
    expands the squared distance as ||z||^2 - 2 z.e + ||e||^2 in fp16, and once ||z||^2 of a
    latent passes 65504 it is inf: every code is at distance inf, argmin falls back to code 0
    and the straight-through path feeds the decoder the same code for every latent.  The
    codebook usage collapses to one code and the loss climbs by orders of magnitude."""
    gen = seeded(5109)
    model = VQVAE()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    log: list[tuple[bool, int]] = []
    _vqvae_run(ctx, model, opt, 200, gen, 255.0, log)
    first = next((i for i, (inf, _) in enumerate(log) if inf), None)
    ctx.check("fp16 distances overflowed to inf early", first is not None and first < 20)
    ctx.check("no overflow at the first step", not log[0][0] and log[0][1] >= 8)
    ctx.check("one code left after the overflow", all(u == 1 for _, u in log[-50:]))
    ctx.check("loss climbed 100x", _mean(ctx.losses[-20:]) > 100 * ctx.losses[0])


@scenario("h51_vqvae_codebook_digits", "nadam", "healthy", heldout=True)
def h51_vqvae_fp16_control(ctx: Context) -> None:
    """The same VQ-VAE under fp16 autocast with pixels in [0, 1] (and the codebook at a higher
    rate so the codes keep up with the encoder): no overflow anywhere, the loss falls and
    several codes stay in use."""
    gen = seeded(5110)
    model = VQVAE()
    rest = [p for n, p in model.named_parameters() if not n.startswith("quantizer.")]
    opt = torch.optim.NAdam(
        [{"params": rest}, {"params": model.quantizer.parameters(), "lr": 3e-2}], lr=1e-3
    )
    log: list[tuple[bool, int]] = []
    _vqvae_run(ctx, model, opt, 200, gen, 1.0, log)
    ctx.check("no overflow", not any(inf for inf, _ in log))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("several codes in use", _mean(u for _, u in log[-20:]) >= 4)


# -- MAML: a curriculum that widens the task distribution every step, not every epoch ------------


class SineLearner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _maml_run(ctx: Context, model: SineLearner, opt, steps: int, gen, max_amp) -> None:
    """Second-order MAML: 3 inner SGD steps (alpha 0.01) on 10 support points per task, the
    query loss averaged over 4 tasks; ``max_amp(step)`` is the curriculum's amplitude range."""
    names = [n for n, _ in model.named_parameters()]

    def task(step: int):
        a = 0.1 + (max_amp(step) - 0.1) * torch.rand(1, generator=gen)
        ph = math.pi * torch.rand(1, generator=gen)
        xs, xq = (10 * torch.rand(2, 10, 1, generator=gen) - 5).unbind(0)
        return xs, a * torch.sin(xs + ph), xq, a * torch.sin(xq + ph)

    def step_fn(step: int):
        total = 0.0
        for _ in range(4):
            xs, ys, xq, yq = task(step)
            params = dict(model.named_parameters())
            for _ in range(3):
                inner = F.mse_loss(functional_call(model, params, (xs,)), ys)
                grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
                params = {n: params[n] - 0.01 * g for n, g in zip(names, grads, strict=True)}
            total = total + F.mse_loss(functional_call(model, params, (xq,)), yq) / 4
        return total, total

    _loop(ctx, model, opt, steps, step_fn)


@scenario(
    "h51_maml_sine_tasks",
    "adam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="the amplitude curriculum advances per step instead of per epoch: tasks outgrow the net",
)
def h51_maml_curriculum_per_step(ctx: Context) -> None:
    """MAML on sine regression with an amplitude curriculum meant to widen the range from 1
    to 5 over the first epochs; the schedule is indexed by the step, not the epoch, so the
    range keeps widening (1 + 0.05 x step) for the whole run.  Nothing in the network or the
    optimizer misbehaves -- gradients stay moderate, no unit dies -- but the query loss climbs
    slowly and steadily as the tasks outgrow what the meta-learner can adapt to."""
    gen = seeded(5111)
    model = SineLearner()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _maml_run(ctx, model, opt, 240, gen, lambda step: 1.0 + 0.05 * step)
    L = ctx.losses
    early, late = _mean(L[20:60]), _mean(L[-40:])
    ctx.check("loss climbed steadily (late >> early)", late > 8 * early)
    ctx.check(
        "climb monotone in 40-step windows",
        all(_mean(L[i : i + 40]) < _mean(L[i + 40 : i + 80]) for i in range(40, 200, 40)),
    )
    ctx.check("gradients stayed finite", all(_finite(g) for g in ctx.grad_norms))


# -- Hugging Face M2M100: a ported attention scale of head_dim ** +0.5 ---------------------------


def _m2m100(vocab: int = 40, dim: int = 32):
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=vocab,
        d_model=dim,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        attn_implementation="eager",
    )
    return M2M100ForConditionalGeneration(config)


def _reversal_batches(gen: torch.Generator, batch: int = 32, length: int = 10, vocab: int = 40):
    """Source: random tokens 3..vocab-1; target: the source reversed (teacher forcing input
    starts with the decoder start token 2)."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec_in = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)
        yield (src, dec_in), tgt


def _seq2seq_forward(model, inp):
    src, dec_in = inp
    return model(input_ids=src, decoder_input_ids=dec_in).logits


def _attn_logits(attn, hidden: torch.Tensor) -> torch.Tensor:
    """q.k * scaling of one M2M100 self-attention module, as the module computes them."""
    b, t, _ = hidden.shape
    q = attn.q_proj(hidden).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, t, -1, attn.head_dim).transpose(1, 2)
    return (q @ k.transpose(-1, -2)) * attn.scaling


@scenario(
    "h51_hf_m2m100_seq2seq",
    "adamw",
    "attention_logit_growth",
    where="model.encoder.layers.1.self_attn",
    diverges=None,
    heldout=True,
    note="a re-implemented encoder attention uses head_dim ** 0.5 (not ** -0.5) as its scale",
)
def h51_m2m100_attention_scale_inverted(ctx: Context) -> None:
    """An M2M100 translation model from a config, trained on a reversal task with AdamW at
    3e-3.  In the second encoder layer the attention scale was re-set by a port that wrote
    ``head_dim ** 0.5`` (x4 with 16-dim heads) instead of ``head_dim ** -0.5``: its logits are
    16x what the rest of the model sees, they grow quickly as q and k learn, and the layer's
    attention saturates (most rows put > 0.8 of their mass on one key)."""
    gen = seeded(5112)
    model = _m2m100()
    attn = model.model.encoder.layers[1].self_attn
    attn.scaling = attn.head_dim**0.5  # the bug
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    inputs: dict[str, torch.Tensor] = {}
    attn.register_forward_pre_hook(
        lambda m, a, k: inputs.update(h=k.get("hidden_states", a[0] if a else None)),
        with_kwargs=True,
    )
    peaks: list[float] = []

    def before(step: int) -> None:
        if "h" in inputs and step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(_attn_logits(attn, inputs["h"]).abs().max()))

    fit(
        ctx,
        model,
        opt,
        _reversal_batches(gen),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=_seq2seq_forward,
        before=before,
    )
    with torch.no_grad():
        rows = torch.softmax(_attn_logits(attn, inputs["h"]), -1).max(-1).values
    ctx.check("encoder layer 1 attention logits grew 10x", peaks[-1] > 10 * peaks[0])
    ctx.check("its attention rows mostly saturated", float(rows.mean()) > 0.8)


# -- Hugging Face Chinese-CLIP: the logit scale trained without its clamp ------------------------


def _chinese_clip():
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    config = ChineseCLIPConfig(
        text_config={
            "vocab_size": 32,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 16,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 8,
            "patch_size": 4,
            "num_channels": 1,
            "projection_dim": 16,
        },
        projection_dim=16,
    )
    return ChineseCLIPModel(config)


def _caption_batches(gen: torch.Generator):
    """One image of each digit per batch (no duplicate pairs), with generated "captions":
    [CLS] <digit word> + three filler tokens."""
    x, y = digits()
    by_class = [torch.nonzero(y == c).squeeze(1) for c in range(10)]
    while True:
        idx = torch.stack([c[torch.randint(len(c), (1,), generator=gen)] for c in by_class])[:, 0]
        filler = torch.randint(13, 32, (10, 3), generator=gen)
        ids = torch.cat([torch.full((10, 1), 1), 3 + y[idx, None], filler], 1)
        yield x[idx].reshape(-1, 1, 8, 8), ids


@scenario(
    "h51_hf_chinese_clip_contrastive",
    "radam",
    "data_outlier",
    diverges=200,
    heldout=True,
    onset=200,
    note="one batch whose captions were joined to the images off by one, the rest normal",
)
def h51_chinese_clip_misjoined_batch(ctx: Context) -> None:
    """Chinese-CLIP from a config, trained contrastively (the CLIP recipe, logit scale
    clamped at ln 100) on digits and generated captions with RAdam.  At step 200 one batch
    comes from a shard whose caption file was joined to the images off by one: every image
    is paired with the next image's caption.  The trained model is confidently "wrong" on all
    ten pairs, the contrastive loss spikes, and the run recovers once normal batches return."""
    gen = seeded(5113)
    model = _chinese_clip()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    batches = _caption_batches(gen)

    def step_fn(step: int):
        px, ids = next(batches)
        if step == 200:
            ids = ids.roll(1, 0)
        logits = model(input_ids=ids, pixel_values=px).logits_per_image
        target = torch.arange(len(ids))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return loss, loss

    def clamp(step: int) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100.0))

    _loop(ctx, model, opt, 280, step_fn, before=clamp)
    L = ctx.losses
    ctx.check("loss spiked at 200", L[200] > 3 * max(L[190:200]))
    ctx.check("recovered after it", _mean(L[230:280]) < 1.5 * _mean(L[180:200]))


# -- Hugging Face ViT-MAE: one step's gradients left at the loss scale ---------------------------


def _vit_mae():
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=8,
        patch_size=2,
        num_channels=1,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        mask_ratio=0.5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTMAEForPreTraining(config)


def _adam_step_ratio(opt) -> float:
    """Mean over tensors of mean |exp_avg| / (sqrt(exp_avg_sq) + eps): Adam's step per lr."""
    return _mean(
        float((st["exp_avg"].abs() / (st["exp_avg_sq"].sqrt() + 1e-8)).mean())
        for st in opt.state.values()
    )


@scenario(
    "h51_hf_vit_mae_pretrain",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=150,
    note="step 150's backward used the restored loss scale 65536 and skipped the unscale",
)
def h51_vit_mae_stale_loss_scale(ctx: Context) -> None:
    """ViT-MAE masked-patch pre-training on digits with Adam.  At step 150 (the first step
    after a resume) the loss is multiplied by the restored GradScaler scale, 65536, but the
    optimizer is stepped directly, without ``unscale_``: every gradient of that one step is
    65536x too large.  Adam's first moment carries it for ~100 steps (a burst of sign-like
    steps that knocks the reconstruction loss up), its second moment (beta2 = 0.999) keeps
    0.1% of 65536^2 for thousands: once the first moment has decayed, every tensor's
    effective step |m|/sqrt(v) is a small fraction of what it was before the resume."""
    gen = seeded(5114)
    model = _vit_mae()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = digit_batches(gen)
    moves: list[float] = []
    ratio: list[float] = []
    denom: list[float] = []
    state = {"prev": _params_flat(model)}

    def step_fn(step: int):
        x, _ = next(batches)
        loss = model(pixel_values=x.reshape(-1, 1, 8, 8)).loss
        if step in (150, 299):
            ratio.append(_adam_step_ratio(opt))
            sq = [float(st["exp_avg_sq"].sqrt().mean()) for st in opt.state.values()]
            denom.append(float(torch.tensor(sq).median()))
        if step > 0:
            now = _params_flat(model)
            moves.append(float((now - state["prev"]).norm()))
            state["prev"] = now
        return loss, loss * 65536.0 if step == 150 else loss

    _loop(ctx, model, opt, 300, step_fn)
    before, after = _mean(moves[100:149]), _mean(moves[250:299])
    ctx.check(
        "the step's gradient was 10^4x the usual",
        ctx.grad_norms[150] > 1e4 * _mean(ctx.grad_norms[100:150]),
    )
    ctx.check("median tensor's sqrt(v) inflated 100x", denom[1] > 100 * denom[0])
    ctx.check("Adam's effective step |m|/sqrt(v) 10x smaller at the end", ratio[1] < 0.1 * ratio[0])
    ctx.check("parameter moves smaller at the end than before", after < 0.5 * before)


# -- Hugging Face NomicBERT: one tensor's gradient left at the loss scale, under SPAM -------------


def _nomic_bert():
    from transformers import NomicBertConfig, NomicBertForSequenceClassification

    config = NomicBertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return NomicBertForSequenceClassification(config)


@scenario(
    "h51_hf_nomic_bert_cls",
    "sg_spam",
    "gradient_spike",
    where="nomic_bert.embeddings.word_embeddings",
    diverges=None,
    heldout=True,
    onset=160,
    note="the embedding table's gradient (its own sparse path) not unscaled once: x65536",
)
def h51_nomic_bert_embedding_grad_spike(ctx: Context) -> None:
    """A NomicBERT classifier from a config, trained with SPAM.  The word-embedding table is
    updated through its own (sparse-gradient) path, and at step 160 the unscale for that path
    is skipped once: its gradient is 65536x too large for one step, nothing else is.  SPAM's
    spike-aware clipping caps the outlier coordinates, so the step does no lasting damage: the
    loss carries on as before."""
    gen = seeded(5115)
    model = _nomic_bert()
    opt = sgo.SPAM(model.parameters(), lr=1e-3)
    emb = dict(model.named_modules())["nomic_bert.embeddings.word_embeddings"]
    batches = bert_batches(gen)
    ratio: list[float] = []

    def step_fn(step: int):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(input_ids=x).logits, y)
        return loss, loss

    ctx.attach(model, opt)
    for step in range(260):
        loss, total = step_fn(step)
        total.backward()
        if step == 160:
            emb.weight.grad.mul_(65536.0)  # the skipped unscale
        ratio.append(float(emb.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    L, G = ctx.losses, ctx.grad_norms
    ctx.check("gradient spiked 100x at 160", G[160] > 100 * max(G[140:160]))
    ctx.check(
        "embedding gradient back to normal after", max(ratio[161:]) < 10 * max(ratio[140:160])
    )
    ctx.check("loss kept its level", _mean(L[170:260]) < 1.2 * _mean(L[120:160]) + 0.02)


# -- Hugging Face TrOCR (ViT encoder + TrOCR decoder): the encoder left frozen --------------------


def _trocr():
    from transformers import (
        TrOCRConfig,
        TrOCRForCausalLM,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTModel,
    )

    encoder = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=(8, 24),
            patch_size=4,
            num_channels=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        add_pooling_layer=False,
    )
    decoder = TrOCRForCausalLM(
        TrOCRConfig(
            vocab_size=16,
            d_model=32,
            decoder_layers=2,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            max_position_embeddings=16,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
            cross_attention_hidden_size=32,
        )
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = 0
    model.config.pad_token_id = 1
    return model


def _strip_batches(gen: torch.Generator, batch: int = 32):
    """Three digits side by side (8x24 strips); the text is their labels (tokens 3..12)."""
    x, y = digits()
    while True:
        idx = torch.randint(0, len(y), (batch, 3), generator=gen)
        img = x[idx].reshape(batch, 3, 8, 8).permute(0, 2, 1, 3).reshape(batch, 1, 8, 24)
        text = 3 + y[idx]
        dec_in = torch.cat([torch.zeros(batch, 1, dtype=torch.long), text[:, :-1]], 1)
        yield (img, dec_in), text


def _ocr_forward(model, inp):
    img, dec_in = inp
    return model(pixel_values=img, decoder_input_ids=dec_in).logits


@scenario(
    "h51_hf_trocr_strips",
    "adadelta",
    "update_ratio_out_of_range",
    where="encoder",
    diverges=None,
    heldout=True,
    note="the ViT encoder frozen for a decoder warm-up and never unfrozen",
)
def h51_trocr_encoder_left_frozen(ctx: Context) -> None:
    """A TrOCR-style reader (ViT encoder + TrOCR decoder through VisionEncoderDecoderModel)
    on generated 3-digit strips, with Adadelta.  The recipe freezes the encoder for a short
    decoder warm-up; the ``requires_grad_(True)`` meant for step 50 was put under a condition
    that is never met, so the randomly initialised encoder never moves (update/weight ratio
    exactly 0) and the decoder learns what it can from random patch features."""
    gen = seeded(5116)
    model = _trocr()
    model.encoder.requires_grad_(False)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    enc0 = _params_flat(model.encoder)
    dec0 = _params_flat(model.decoder)
    fit(
        ctx,
        model,
        opt,
        _strip_batches(gen),
        200,
        loss_fn=lm_loss,
        classifier=False,
        forward=_ocr_forward,
    )
    ctx.check("encoder unchanged", torch.equal(enc0, _params_flat(model.encoder)))
    ctx.check("decoder trained", not torch.equal(dec0, _params_flat(model.decoder)))
    ctx.check("loss fell some", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:5]))
