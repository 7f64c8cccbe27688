"""Held-out set 656 (``h656_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Qwen3.5 text causal LM built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64, flip: float = 0.0):
    """Endless (x, y) batches: y is the argmax of a fixed linear score (a share ``flip`` noisy)."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = (x @ w).argmax(1)
        if flip > 0:
            noisy = torch.rand(batch, generator=gen) < flip
            y = torch.where(noisy, torch.randint(0, k, (batch,), generator=gen), y)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _Net(nn.Module):
    """fc1 -> act -> fc2 -> act -> head, the activations as named modules."""

    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    classifier=False,
    before=None,
    alter=None,
    clip=None,
    scale=None,
    after=None,
):
    """A plain loop: records the pre-clip gradient norm in ctx.grad_norms; stops at a NaN loss
    after handing it to ctx.step. ``scale(step, loss)`` is the loss actually backpropagated."""
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        (scale(step, loss) if scale is not None else loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if not math.isfinite(float(loss.detach())):
            break


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="bobbin_lace_pricking_pin_percent_bce_tagger",
    optimizer="SGD momentum",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a multi-label ReLU tagger for bobbin-lace prickings (which of 6 stitch kinds a "
    "pattern row uses), BCE with logits, clipping at 1.0; the tag table was exported in percent (0/100) and fed "
    "as targets unchanged, so for every positive tag sigmoid(z) - 100 < 0 forever: the head's "
    "logits climb without bound and the loss runs below zero",
)
def h656_bobbin_lace_percent_targets(ctx: Context) -> None:
    gen = seeded(6561)
    w = torch.randn(10, 6, generator=gen)

    def batches():
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, 100.0 * (x @ w > 0.5).float()  # bug: percent, not 0/1

    model = _Net(10, 32, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    probe = torch.randn(256, 10, generator=gen)
    with torch.no_grad():
        start = float(model(probe).abs().mean())
    _train(ctx, model, opt, batches(), 150, F.binary_cross_entropy_with_logits, clip=1.0)
    with torch.no_grad():
        end = float(model(probe).abs().mean())
    ls = ctx.losses
    ctx.check("head logits grew over 20x (mean |z|)", end > 20 * start)
    ctx.check("loss went below zero", min(ls) < 0)
    ctx.check("loss kept falling to the end (no minimum)", ls[-1] < ls[len(ls) // 2] - 10)
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="salt_marsh_samphire_yield_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a GELU regressor for samphire yield, MSE, Adam (betas 0.9/0.999); at step 80 the "
    "logging code multiplied the loss tensor in place by its reporting scale 1e7 (kg per m2 to "
    "mg per ha) before backward, for one step: one gradient 1e7x the usual fills Adam's second "
    "moment, every update after it shrinks and the loss stalls",
)
def h656_samphire_adam_poisoned(ctx: Context) -> None:
    gen = seeded(6562)
    model = _Net(8, 32, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    onset = 80
    v_before: list[float] = []
    moves: list[float] = []
    last = [p.detach().clone() for p in model.parameters()]

    def scale(step, loss):
        return loss * 1e7 if step == onset else loss

    def before(step):
        if step == onset:
            v_before.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

    def after(step):
        now = [p.detach().clone() for p in model.parameters()]
        moves.append(float(sum((a - b).norm() ** 2 for a, b in zip(now, last, strict=True)) ** 0.5))
        last[:] = now

    _train(
        ctx, model, opt, _readings(gen), 240, F.mse_loss, before=before, scale=scale, after=after
    )
    v_after = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check(
        "gradient at onset over 1000x the median before", g[onset] > 1000 * _median(g[:onset])
    )
    ctx.check("second moment over 1e5x its pre-onset max", v_after > 1e5 * v_before[0])
    ctx.check(
        "updates from 40 steps after the burst under 1/20 of before",
        _median(moves[onset + 40 :]) < _median(moves[20:onset]) / 20,
    )
    ctx.check(
        "loss stalls after onset (last 40 within 10% of steps 90-110)",
        _median(ls[-40:]) > 0.9 * _median(ls[onset + 10 : onset + 30]),
    )
    ctx.check("loss had been falling before onset", _median(ls[60:80]) < 0.7 * _median(ls[:10]))


class _BatchStandardize(nn.Module):
    """Standardizes each reading column by the batch's own mean and std, no epsilon."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) / x.std(0)


class _SinterNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = _BatchStandardize()
        self.fc1 = nn.Linear(6, 32)
        self.mean = nn.Linear(32, 1)
        self.logvar = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(self.norm(x)))
        return torch.cat([self.mean(h), F.softplus(self.logvar(h)) + 1e-3], 1)


def _gauss_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.gaussian_nll_loss(out[:, :1], y, out[:, 1:])


@scenario(
    family="hot_spring_sinter_terrace_batchstd_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=70,
    onset=70,
    heldout=True,
    note="a Gaussian NLL net for sinter-terrace growth at a hot spring, whose first module "
    "standardizes each batch by its own mean and std with no epsilon; at step 70 the logger "
    "froze and served one reading repeated for the whole batch, std is 0 and (x - mean) / std "
    "is 0/0: NaN from the norm module, loss NaN at step 70",
)
def h656_sinter_batchstd_zero_div(ctx: Context) -> None:
    gen = seeded(6563)
    model = _SinterNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    seen: dict[int, bool] = {}
    step_now = [0]

    def hook(_m, _i, out):
        seen[step_now[0]] = bool(torch.isfinite(out).all())

    model.norm.register_forward_hook(hook)
    base = _readings(gen, n_in=6)

    def alter(step, x, y):
        step_now[0] = step
        if step == 70:
            return x[:1].expand_as(x).clone(), y[:1].expand_as(y).clone()
        return x, y

    _train(ctx, model, opt, base, 150, _gauss_nll, alter=alter)
    ls = ctx.losses
    ctx.check("loss NaN at step 70", len(ls) == 71 and math.isnan(ls[70]))
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check(
        "norm output non-finite at 70, finite before",
        not seen[70] and all(seen[s] for s in range(70)),
    )
    ctx.check("loss fell before the fault", _median(ls[50:70]) < _median(ls[:5]) - 0.2)


def _top_hessian(model: nn.Module, loss_fn, x, y, iters: int = 30) -> float:
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="cricket_bat_knock_in_mallet_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="a ReLU regressor for cricket-bat knocking-in hours, MSE, plain SGD lr 0.1 with a "
    "StepLR meant to decay at step 80; gamma was typed 10 for 0.1, the rate jumps to 1.0, "
    "lr x top Hessian eigenvalue passes 2 and the loss blows up",
)
def h656_cricket_bat_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(6564)
    model = _Net(8, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)  # bug: 0.1
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.05)
    xs, ys = next(batches)
    lam: list[float] = []

    def before(step):
        if step == 80:
            lam.append(_top_hessian(model, F.mse_loss, xs, ys))

    def after(_step):
        sched.step()

    _train(ctx, model, opt, batches, 160, F.mse_loss, before=before, after=after)
    ls = ctx.losses
    fin = [v for v in ls[80:] if math.isfinite(v)]
    ctx.check("lr x sharpness under 2 before onset", 0.1 * lam[0] < 2)
    ctx.check("lr x sharpness over 2 after onset", 1.0 * lam[0] > 2)
    ctx.check(
        "loss blew up over 100x its pre-onset level",
        len(fin) < len(ls[80:]) or max(fin) > 100 * _median(ls[60:80]),
    )
    ctx.check("loss fell before onset", _median(ls[60:80]) < _median(ls[:5]))


class _DeepRelu(nn.Module):
    def __init__(self, depth: int = 12, width: int = 48, gain: float = 2.4) -> None:
        super().__init__()
        sizes = [8] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.out = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.acts = []
        for m in self.layers:
            x = F.relu(m(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.out(x)


@scenario(
    family="abseil_rope_glazing_deep_relu_huber_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a 12-layer ReLU regressor for abseil-rope sheath glazing, Huber loss, RMSprop, "
    "clipping at 1.0; the init helper was given gain 2.4 where ReLU's is sqrt(2), so every "
    "layer amplifies by ~1.7 and the gradient grows through depth towards the first layer",
)
def h656_abseil_rope_init_gain(ctx: Context) -> None:
    gen = seeded(6565)
    model = _DeepRelu()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    ctx.attach(model, opt)
    ratios: list[float] = []
    batches = _readings(gen)
    for step in range(120):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if step % 10 == 0:
            acts = model.acts
            ratios.append(float(acts[0].grad.norm() / acts[-1].grad.norm()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("first layer's output gradient over 10x the last hidden's at start", ratios[0] > 10)
    ctx.check("still over 10x at the end", ratios[-1] > 10)
    ctx.check("pre-clip gradient norm over 10x the clip", _median(ctx.grad_norms) > 10)


@scenario(
    family="drystone_hearting_stone_lambda_group_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a ReLU classifier for drystone-wall hearting-stone sizes, Adamax with a body group "
    "and a head group, each with its own LambdaLR warm-up; the head's lambda was written "
    "min(1, step // 300) (integer division for step / 300), so its factor is 0 for the whole "
    "run and the head never moves while the body trains",
)
def h656_drystone_head_lambda_floor(ctx: Context) -> None:
    gen = seeded(6566)
    model = _Net(12, 48, 5)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adamax(
        [{"params": body, "lr": 4e-3}, {"params": model.head.parameters(), "lr": 4e-3}]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, (s + 1) / 20), lambda s: min(1, s // 300)],  # bug: //
    )
    ctx.attach(model, opt)
    head0 = [p.detach().clone() for p in model.head.parameters()]
    fc10 = model.fc1.weight.detach().clone()
    _train(
        ctx,
        model,
        opt,
        _labels(gen),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda _s: sched.step(),
    )
    moved = max(
        float((p.detach() - b).abs().max())
        for p, b in zip(model.head.parameters(), head0, strict=True)
    )
    ls = ctx.losses
    ctx.check("head never moved", moved == 0.0)
    ctx.check("head lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("body moved", float((model.fc1.weight.detach() - fc10).abs().max()) > 1e-2)
    ctx.check("loss fell 10% through the body alone", _median(ls[-20:]) < 0.9 * _median(ls[:5]))


@scenario(
    family="sea_fret_fog_bank_thickness_silu_huber_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="a SiLU Huber regressor for sea-fret fog-bank thickness, NAdam, clipping at 1.0; "
    "the shard served at step 120 came from a station logging in millimetres instead of metres "
    "(readings x 1000): one huge loss, the run recovers",
)
def h656_sea_fret_millimetre_shard(ctx: Context) -> None:
    gen = seeded(6567)
    model = _Net(8, 32, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == 120 else (x, y)

    _train(ctx, model, opt, _readings(gen), 200, F.huber_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    g = ctx.grad_norms
    ctx.check("loss at step 120 over 20x the median before", ls[120] > 20 * _median(ls[100:120]))
    ctx.check("gradient at step 120 over 10x the median before", g[120] > 10 * _median(g[100:120]))
    ctx.check(
        "recovers: last 30 within 2x of pre-onset", _median(ls[-30:]) < 2 * _median(ls[100:120])
    )
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="scythe_sward_cut_class_relu_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="a ReLU classifier for scythe-mown sward cut classes, SGD Nesterov, 4-micro-batch "
    "accumulation, clipping at 1.0; a static loss scale of 1024 left from the fp16 recipe is "
    "applied to the backward pass, and on the first step after a checkpoint resume (step 90) "
    "the matching unscale was skipped: one gradient 1024x, the logged loss ordinary",
)
def h656_scythe_resume_unscale_skipped(ctx: Context) -> None:
    gen = seeded(6568)
    model = _Net(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=16)
    accum, loss_scale = 4, 1024.0
    for step in range(160):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y) / accum
            (loss * loss_scale).backward()
            total += float(loss.detach())
        if step != 90:  # bug: the resume path skipped the unscale once
            for p in model.parameters():
                p.grad.div_(loss_scale)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient at 90 over 300x the median before", g[90] > 300 * _median(g[70:90]))
    ctx.check("logged loss at 90 ordinary (under 2x)", ls[90] < 2 * _median(ls[70:90]))
    ctx.check("trained: loss fell 30%", _median(ls[-20:]) < 0.7 * _median(ls[:5]))


class _CosineClassifier(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 48)
        self.fc2 = nn.Linear(48, 32)
        self.head = nn.Linear(32, 5, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.relu(self.fc1(x)))
        return self.scale * F.normalize(h, dim=1) @ F.normalize(self.head.weight, dim=1).T


@scenario(
    family="bodhran_tipper_stroke_cosine_scale_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a cosine classifier for bodhran tipper strokes, logits = s * cos(feature, class "
    "weight), Adagrad; the config stores s in hundredths (s_x100: 1600) and the loader used it "
    "as is, s = 1600 for 16: the softmax saturates, over half the rows give the target exactly "
    "p = 1.0 in float32",
)
def h656_bodhran_cosine_scale_units(ctx: Context) -> None:
    gen = seeded(6569)
    model = _CosineClassifier(scale=1600.0)  # bug: s_x100 not divided by 100
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _labels(gen)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows at p = 1.0 exactly", frac > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="shinty_caman_swing_zone_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a ReLU classifier for shinty caman swing zones, Adam; the warm-up was dropped when "
    "the recipe was copied and the peak rate typed 3e-1 for 3e-3 starts at step 0: the first "
    "updates push fc2's pre-activations negative everywhere, most of its ReLU units die and "
    "never come back (the few left alive still fit the task)",
)
def h656_shinty_adam_lr_kills_relu(ctx: Context) -> None:
    gen = seeded(65610)
    model = _Net(12, 48, 5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-1)  # bug: 3e-3 with warm-up
    ctx.attach(model, opt)
    batches = _labels(gen)
    probe, _ = next(batches)

    def dead_units() -> torch.Tensor:
        with torch.no_grad():
            return (model.features(probe) <= 0).all(0)

    dead0 = float(dead_units().float().mean())
    mid: list[torch.Tensor] = []
    _train(
        ctx,
        model,
        opt,
        batches,
        150,
        F.cross_entropy,
        classifier=True,
        after=lambda s: mid.append(dead_units()) if s == 100 else None,
    )
    dead1 = dead_units()
    ctx.check("few fc2 units dead at init (< 10%)", dead0 < 0.1)
    ctx.check("over 60% of fc2 units dead at step 100", float(mid[0].float().mean()) > 0.6)
    ctx.check("over 60% dead at the end", float(dead1.float().mean()) > 0.6)
    ctx.check("the units dead at 100 never came back", bool((dead1 | ~mid[0]).all()))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


def _tiny_qwen35(vocab: int = 128):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    config = Qwen3_5TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        layer_types=["full_attention", "full_attention"],
        tie_word_embeddings=True,
        use_cache=False,
    )
    return Qwen3_5ForCausalLM(config)


@scenario(
    family="qwen35_chimney_sweep_flue_log_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny Qwen3.5 text causal LM (Qwen3_5ForCausalLM from a Qwen3_5TextConfig, tied "
    "embeddings) on chimney-sweep flue-log bytes, AdamW with decay on matrices only, linear "
    "warm-up then cosine, clipping at 1.0: an ordinary run",
)
def h656_qwen35_chimney_sweep_lm(ctx: Context) -> None:
    gen = seeded(65611)
    model = _tiny_qwen35()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 100, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 25%", _median(ls[-10:]) < 0.75 * _median(ls[:5]))
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="sheaf_toss_pitchfork_reinforce_agent",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a REINFORCE agent choosing one of 5 pitchfork grips for a sheaf toss from 12 "
    "readings, reward 1 when the grip clears the bar less a cost of 0.3 per toss (a fixed "
    "baseline), and an entropy bonus 0.01: the policy-gradient loss is negative about half "
    "the time while the reward climbs, which looks alarming and is healthy",
)
def h656_sheaf_toss_reinforce(ctx: Context) -> None:
    gen = seeded(65612)
    model = _Net(12, 48, 5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    cost = 0.3
    rewards: list[float] = []
    for _step in range(200):
        x, best = next(batches)
        ctx.targets(best)
        logits = model(x)
        dist = torch.distributions.Categorical(logits=logits)
        a = dist.sample()
        r = (a == best).float()
        adv = r - cost
        loss = -(adv * dist.log_prob(a)).mean() - 0.01 * dist.entropy().mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        rewards.append(float(r.mean()))
    ls = ctx.losses
    neg = sum(v < 0 for v in ls) / len(ls)
    ctx.check("reward rose by 0.4", sum(rewards[-20:]) / 20 > sum(rewards[:20]) / 20 + 0.4)
    ctx.check("loss negative 30-70% of steps", 0.3 < neg < 0.7)
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="ice_stupa_cone_stage_fp16_onecycle_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a ReLU classifier for ice-stupa cone growth stages, fp16 autocast with a "
    "torch.amp.GradScaler, OneCycleLR, label smoothing 0.1, 10% noisy labels, clipping after "
    "unscale, SGD momentum: an ordinary run",
)
def h656_ice_stupa_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(65613)
    model = _Net(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _labels(gen, flip=0.1)
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 40%", _median(ls[-20:]) < 0.6 * _median(ls[:5]))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("scale stayed at or above 256", min(ctx.scales) >= 256)
