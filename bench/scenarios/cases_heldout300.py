"""Held-out set 300 (``h300_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a cyanotype print-exposure vision-transformer-like patch
classifier on generated prints whose attention input norm was dropped and whose no-decay filter
matched ``attn`` (attention logits grow), a gyotaku fish-print ink-load SiLU regressor with a
hand-written decoupled weight decay of flipped sign (slow climb), a geothermal-well enthalpy
12-layer tanh MLP whose init gain was squared (gradients grow through depth), a paramotor
climb-rate fp16 MLP fed altimeter feet and engine rpm raw (fp16 overflow), a glass-eel run-count
Gaussian-NLL net whose softplus on sigma was lost (log of a negative, NaN), a Zamboni
ice-resurfacer water-depth ReLU regressor fed one rink's shard in millimetres (data outlier), a
kantha stitch-density SiLU regressor whose resumed step used a sum-reduced loss (one gradient
spike), a risograph drum ink-coverage two-group regressor whose trunk lr was typed 5e-8
(update ratio), a plate-spinning wobble-mode Conv1d classifier whose temperature was converted
from percent twice (softmax collapse), a snowcat track-tension tanh regressor whose warm-up
lost its ``min(1, .)`` (lr past 2/sharpness), and three controls (an aerial-silk drop-kind
patch transformer with warm-up, linear decay and weight decay on a param-group subset, a
flyboard hover-stability fp16 GELU classifier with a GradScaler, OneCycleLR and label
smoothing, a mountainboard downhill-time Huber regressor with Adamax, accumulation,
ReduceLROnPlateau and clipping).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

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
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    scale_of=None,
    stop_on_blowup=None,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)`` for the batch, ``after(step)``
    after the optimizer step; ``scale_of(step)`` multiplies each micro-batch loss (1/accumulate
    unless a bug says otherwise). Stops after a non-finite loss (or one over
    ``stop_on_blowup``), having handed it to ``ctx.step``."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        f = scale_of(step) if scale_of is not None else 1.0 / accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            if isinstance(out, tuple):
                out = tuple(o.float() for o in out)
            else:
                out = out.float()
            loss = loss_fn(out, y)
            total = f * loss
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown) or (stop_on_blowup is not None and shown > stop_on_blowup):
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, heavy=False):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, 3, generator=gen) ** 2).mean(1))
        yield x, y + noise * e


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _images(gen, batch, classes=4, size=16, noise=0.3):
    """Generated 16x16 one-channel images: a bright Gaussian blob whose position (one of
    ``classes`` regions) is the label, on a noisy background with a random shading gradient."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = [(4, 4), (4, 11), (11, 4), (11, 11), (8, 8), (2, 8)][:classes]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        cy = torch.tensor([centres[i][0] for i in y]) + torch.randint(
            -1, 2, (batch,), generator=gen
        )
        cx = torch.tensor([centres[i][1] for i in y]) + torch.randint(
            -1, 2, (batch,), generator=gen
        )
        blob = torch.exp(
            -((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 4.0
        )
        shade = torch.rand(batch, 1, 1, generator=gen) * xx[None] / size
        x = blob + 0.5 * shade + noise * torch.randn(batch, size, size, generator=gen)
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- patch transformers on generated images -----------------------------------------------------


class PatchAttention(nn.Module):
    """Multi-head self-attention written out: logits = q.k / sqrt(d_head)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def logits(self, x):
        b, t, d = x.shape
        q, k, _ = self.qkv(x).split(d, dim=-1)
        q, k = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k))
        return q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)

    def forward(self, x):
        b, t, d = x.shape
        v = self.qkv(x)[..., 2 * d :].reshape(b, t, self.heads, -1).transpose(1, 2)
        y = torch.softmax(self.logits(x), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PatchViT(nn.Module):
    """A small ViT-like model: 4x4 patches of a 16x16 image, a class token, learned positions,
    one attention block (pre-norm when ``norm``) and an MLP, the head on the class token."""

    def __init__(self, dim=32, heads=2, classes=4, patch=4, size=16, norm=True):
        super().__init__()
        self.patch = patch
        n = (size // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.ln1 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.attn = PatchAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def tokens(self, img):
        b, s, _ = img.shape
        p = self.patch
        x = img.reshape(b, s // p, p, s // p, p).permute(0, 1, 3, 2, 4).reshape(b, -1, p * p)
        x = self.embed(x)
        return torch.cat([self.cls.expand(b, -1, -1), x], 1) + self.pos

    def forward(self, img):
        x = self.tokens(img)
        x = x + self.attn(self.ln1(x))
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return self.head(self.ln_f(x[:, 0]))

    @torch.no_grad()
    def peak_logit(self, img):
        return float(self.attn.logits(self.ln1(self.tokens(img))).abs().max())


@scenario(
    family="cyanotype_print_exposure_patch_vit",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written vision-transformer-like classifier of where a cyanotype print is over-exposed (4 regions) from generated 16x16 prints (a bright blob on a noisy, shaded background): 4x4 patches embedded by a Linear, a class token, learned positions, one attention block (attn: qkv, proj, logits q.k/sqrt(d_head)) and an MLP, head on the class token. AdamW at 1e-2, cross-entropy, 300 steps. A refactor replaced the block's ln1 by nn.Identity (the config key `attn_prenorm` was renamed and the old name defaulted to False), and the param-group filter `'attn' in name or 'bias' in name` puts every attention weight in the no-decay group: nothing bounds the query and key projections, and the peak attention logit over the probe grows over 20x from its small init and past 10 as the class token learns to look at one patch. Finite, no blow-up.",
)
def h300_cyanotype_patch_vit(ctx: Context) -> None:
    gen = seeded(30001)
    model = PatchViT(norm=False)
    nodecay = [p for n, p in model.named_parameters() if "attn" in n or "bias" in n]
    decay = [p for n, p in model.named_parameters() if not ("attn" in n or "bias" in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    probe = next(_images(torch.Generator().manual_seed(7), 128))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0 or step == 299:
            peaks.append(model.peak_logit(probe))

    _train(ctx, model, opt, _images(gen, 32), 300, F.cross_entropy, classifier=True, after=after)
    ctx.check("the peak attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak attention logit passed 10", peaks[-1] > 10.0)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the classifier learned (loss fell)", _fell(ctx.losses))


# -- gyotaku: hand-written decoupled weight decay with its sign flipped ------------------------


@scenario(
    family="gyotaku_fish_print_ink_load_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how much sumi ink a gyotaku printer should load for a fish print from 10 standardised readings (scale roughness, fish length, paper absorbency, room humidity), RMSprop at 1e-3, MSE, 300 steps. Decoupled weight decay is applied by hand after optimizer.step() as `p.mul_(1 + lr * wd)` (wd 5) where `1 - lr * wd` was meant: every weight is inflated by 0.5% a step, RMSprop's bounded steps pull back only along the directions the data sees, and once the weights outgrow the corrections (about step 200) the loss climbs steadily to over 3x its best, with nothing else wrong.",
)
def h300_gyotaku_decay_sign(ctx: Context) -> None:
    gen = seeded(30002)
    model = Stack(10, 64, act=nn.SiLU)
    lr, wd = 1e-3, 5.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    norms: list[float] = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)
            norms.append(float(_flat(model).norm()))

    _train(ctx, model, opt, _readings(gen, 32, 10, seed=302), 300, F.mse_loss, after=after)
    ls = ctx.losses
    best = min(_mean(ls[i : i + 10]) for i in range(0, 150, 10))
    ctx.check("the loss climbed to over 3x its best", _mean(ls[-10:]) > 3 * best)
    ctx.check(
        "the climb is steady (last third above the middle third)",
        _mean(ls[200:]) > _mean(ls[100:200]),
    )
    ctx.check("the weights grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("finite throughout", _finite(ls))


# -- geothermal well: init gain squared, gradients grow through depth --------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="geothermal_well_enthalpy_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 .. layers.11, width 64, head) regressing a geothermal well's wellhead enthalpy from 12 standardised readings (downhole temperature, pressure, flow, silica), plain SGD at 1e-3, Huber loss, 200 steps. The init helper was refactored to take a variance gain and the call site kept passing `calculate_gain('tanh') ** 2` (2.78) into xavier_normal_, which expects the standard-deviation gain 5/3: every layer amplifies, the net is in the chaotic regime and the backward signal grows layer by layer towards the input: layers.0's weight gradient is over 10x layers.11's through the run, the net makes little progress.",
)
def h300_geothermal_init_gain(ctx: Context) -> None:
    gen = seeded(30003)
    model = DeepTanh(12, 64, 12, gain=nn.init.calculate_gain("tanh") ** 2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios: list[float] = []

    def loss_fn(out, y):
        return F.huber_loss(out, y)

    orig_step = opt.step

    def step_and_measure(*a, **k):
        g0 = float(model.layers[0].weight.grad.norm())
        g11 = float(model.layers[11].weight.grad.norm())
        ratios.append(g0 / max(g11, 1e-12))
        return orig_step(*a, **k)

    opt.step = step_and_measure
    _train(ctx, model, opt, _readings(gen, 32, 12, seed=303), 200, loss_fn)
    ctx.check("layers.0's gradient is over 10x layers.11's at the start", ratios[0] > 10)
    ctx.check("layers.0's gradient stays over 10x layers.11's", _median(ratios) > 10)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- paramotor: altimeter feet and engine rpm fed raw under fp16 autocast ----------------------


@scenario(
    family="paramotor_climb_rate_fp16_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a paramotor's climb rate from 8 flight-log readings under fp16 autocast with a torch.amp.GradScaler (init scale 65536), Adam at 1e-3, MSE, 200 steps. The log loader's standardisation table had no entry for the two channels added last season, barometric altitude in feet (about 2000-9000) and engine rpm (about 4000-8000), and passes them raw: the scaled gradient through fc1 overflows fp16 to inf on step after step, the GradScaler skips those steps and halves its scale over and over, down over 1000x; the same gradients are finite in fp32.",
)
def h300_paramotor_raw_units(ctx: Context) -> None:
    gen = seeded(30004)
    model = Stack(8, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    base = _readings(gen, 32, 8, seed=304)

    def raw(x, _y=None):
        x = x.clone()
        x[:, 6] = 5500 + 1800 * x[:, 6]  # altitude, feet
        x[:, 7] = 6000 + 1000 * x[:, 7]  # engine rpm
        return x

    def batches():
        for x, y in base:
            yield raw(x), y

    _train(ctx, model, opt, batches(), 200, F.mse_loss, scaler=scaler, amp=True)
    sc = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + sc[:-1], sc, strict=True) if b < a)
    ctx.check("the GradScaler's scale fell over 1000x", min(sc) < 65536.0 / 1000)
    ctx.check("over 10 steps were skipped for inf gradients", skipped > 10)
    x, y = next(_readings(torch.Generator().manual_seed(3), 32, 8, seed=304))
    model.zero_grad(set_to_none=True)
    F.mse_loss(model(raw(x)), y).backward()
    ctx.check(
        "the fp32 gradient on the same kind of batch is finite",
        math.isfinite(float(model.fc1.weight.grad.norm())),
    )
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(raw(x))
    (F.mse_loss(out.float(), y) * 65536.0).backward()
    ctx.check(
        "at the initial scale fc1's fp16 gradient is not finite",
        not math.isfinite(float(model.fc1.weight.grad.norm())),
    )
    model.zero_grad(set_to_none=True)


H300_EEL_NAN = 132


# -- glass eels: sigma's softplus lost, log of a negative -------------------------------------


class LogScale(nn.Module):
    """log(sigma): the NaN producer once sigma crosses 0."""

    def forward(self, s):
        return torch.log(s)


class EelNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.mu = nn.Linear(hidden, 1)
        self.sigma = nn.Linear(hidden, 1)
        self.log_scale = LogScale()
        nn.init.constant_(self.sigma.bias, 1.0)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        return self.mu(h).squeeze(-1), self.log_scale(self.sigma(h)).squeeze(-1)


def _gauss_nll(out, y):
    mu, log_sigma = out
    return (log_sigma + 0.5 * ((y - mu) / log_sigma.exp()) ** 2).mean()


@scenario(
    family="glass_eel_run_count_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_scale", "sigma"),
    diverges=H300_EEL_NAN,
    heldout=True,
    note="A SiLU net (fc1, act1, heads mu and sigma, log_scale) forecasting the standardised count of a night's glass-eel run at an estuary weir from 10 readings (tide height, river flow, water temperature, moon phase) with a Gaussian negative log-likelihood, RAdam at 3e-2, up to 250 steps. sigma's head was meant to pass through softplus before log_scale took its log; the softplus was dropped when the head was split into its own module, and sigma is a raw Linear output initialised positive (bias 1). As the NLL shrinks sigma towards the residuals, some rows' sigma crosses 0 and torch.log of a negative gives NaN: the loss is NaN at the step in `diverges`.",
)
def h300_glass_eel_sigma_log(ctx: Context) -> None:
    gen = seeded(30005)
    model = EelNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-2)
    mins: list[float] = []
    model.sigma.register_forward_hook(lambda m, i, o: mins.append(float(o.detach().min())))
    _train(ctx, model, opt, _readings(gen, 32, 10, seed=305, noise=0.02), 250, _gauss_nll)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first NaN at step {H300_EEL_NAN}", bad == H300_EEL_NAN)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("sigma started positive on every row", mins[0] > 0)
    ctx.check(
        "sigma is negative on a row of the NaN step's batch (log of a negative)",
        bad is not None and mins[bad] < 0,
    )
    ctx.check(
        "sigma was positive on every row of the steps before",
        bad is not None and min(mins[:bad]) > 0,
    )


# -- Zamboni: one rink's water-depth shard in millimetres -------------------------------------

ONSET_ZAM = 120


@scenario(
    family="zamboni_ice_resurfacer_water_depth_relu_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ZAM,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the water depth an ice resurfacer lays down per pass from 10 standardised readings (ice temperature, blade height, tank level, conditioner towel wear, drive speed), SGD Nesterov (momentum 0.9) at 1e-2, MSE, clipping at 1.0, 240 steps. One rink's logbook was exported with depth in millimetres instead of metres-standardised units: the batch at step 120 carries 8 of its rows with targets 1000x too large. That step's loss is thousands of times the usual, its gradient over 20x; clipping bounds the update and the run recovers within a few dozen steps.",
)
def h300_zamboni_mm_shard(ctx: Context) -> None:
    gen = seeded(30006)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == ONSET_ZAM:
            y = y.clone()
            y[:8] = y[:8] * 1000.0
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 32, 10, seed=306), 240, F.mse_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_ZAM - 20 : ONSET_ZAM])
    ctx.check("the shard's step loss is over 100x the usual", ls[ONSET_ZAM] > 100 * before)
    ctx.check(
        "the gradient at that step is over 20x the usual",
        g[ONSET_ZAM] > 20 * _median(g[ONSET_ZAM - 20 : ONSET_ZAM]),
    )
    ctx.check("the run recovers (last 20 steps within 2x)", _mean(ls[-20:]) < 2 * before)
    ctx.check("finite throughout", _finite(ls))


# -- kantha: the resumed step's loss came back with reduction='sum' ----------------------------

ONSET_KAN = 90


@scenario(
    family="kantha_stitch_density_silu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KAN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the running-stitch density a kantha quilter should use from 12 standardised readings (layer count, cloth weight, thread thickness, motif curvature), SGD momentum 0.9 at 5e-3, MSE, gradient accumulation over 2, clipping at 1.0, 200 steps. The job is pre-empted and resumed at step 90; the resume path rebuilt the loss from an older config whose MSE used reduction='sum', so for that one step each micro-batch loss is summed over its 32 rows (32x) on ordinary data, and the gradient spikes over 20x; from step 91 the regular loss object is back. Clipping bounds the step and training goes on.",
)
def h300_kantha_resume_sum(ctx: Context) -> None:
    gen = seeded(30007)
    model = Stack(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, seed=307),
        200,
        F.mse_loss,
        accumulate=2,
        clip=1.0,
        scale_of=lambda s: 32.0 / 2 if s == ONSET_KAN else 1.0 / 2,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_KAN - 20 : ONSET_KAN])
    ctx.check("the gradient at the resumed step is over 20x the usual", g[ONSET_KAN] > 20 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_KAN + 1 : ONSET_KAN + 21]) < 3 * base,
    )
    ctx.check(
        "the resumed step's loss is ordinary",
        ls[ONSET_KAN] < 2.0 * _mean(ls[ONSET_KAN - 10 : ONSET_KAN]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- risograph: the trunk's lr typed 5e-8 ------------------------------------------------------


@scenario(
    family="risograph_drum_ink_coverage_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the ink coverage a risograph drum lays on a sheet from 10 standardised readings (master density, drum speed, paper tooth, ink temperature), Adagrad with two param groups: the head at 5e-2 and the trunk (fc1, fc2) meant at 5e-3 but typed 5e-8 in the fine-tuning config. MSE, 200 steps. The trunk barely moves (fc1's and fc2's relative change over the run under 1e-4, while the head's is over 1e-2), and the net fits only what a linear head on random features can.",
)
def h300_risograph_trunk_lr(ctx: Context) -> None:
    gen = seeded(30008)
    model = Stack(10, 64)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 5e-8}, {"params": model.head.parameters(), "lr": 5e-2}]
    )
    w1, w2, wh = _flat(model.fc1), _flat(model.fc2), _flat(model.head)
    _train(ctx, model, opt, _readings(gen, 32, 10, seed=308), 200, F.mse_loss)
    rel = [
        float((_flat(m) - w).norm() / w.norm())
        for m, w in ((model.fc1, w1), (model.fc2, w2), (model.head, wh))
    ]
    ctx.check("fc1 moved under 1e-4 of its norm", rel[0] < 1e-4)
    ctx.check("fc2 moved under 1e-4 of its norm", rel[1] < 1e-4)
    ctx.check("the head moved over 1e-2 of its norm", rel[2] > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- plate spinning: the temperature converted from percent twice ------------------------------


def _wobbles(gen, batch, classes=4, length=32, noise=0.4, spacing=0.12):
    """A spinning plate's rim-height trace: each wobble mode has its own frequency band."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 0.2 + spacing * y.float() + 0.01 * torch.randn(batch, generator=gen)
        ph = 6.28 * torch.rand(batch, generator=gen)
        x = torch.sin(f[:, None] * t[None] + ph[:, None])
        x = x + noise * torch.randn(batch, length, generator=gen)
        yield x, y


class Temperature(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z):
        return z / self.t


class WobbleNet(nn.Module):
    def __init__(self, classes=4, t=1.0):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.act2 = nn.GELU()
        self.embed = nn.Linear(16, 16)
        self.head = nn.Linear(16, classes, bias=False)
        self.temperature = Temperature(t)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None])))).abs().mean(-1)
        h = self.embed(h)
        cos = F.normalize(h, dim=-1) @ F.normalize(self.head.weight, dim=-1).T
        return self.temperature(cos)


@scenario(
    family="plate_spinning_wobble_mode_conv1d_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("temperature", "head"),
    diverges=None,
    heldout=True,
    note="A GELU Conv1d cosine classifier (conv1, act1, conv2, act2, embed, head = class directions compared by cosine, temperature) of which wobble mode a plate spinner's plate is in (4 kinds) from a 32-sample rim-height trace, NAdam at 1e-2, cross-entropy, 200 steps. The config gives the softmax temperature as `50` (percent, meant 0.5); the config loader already divides percentages by 100 and the model's constructor divides by 100 again, so the cosines are divided by 0.005 (200x): the logits are sharpened so far that over a quarter of the probe rows' float32 softmax gives the target exactly 1.0 (the rest exactly 0), and their gradient is exactly zero.",
)
def h300_plate_spinning_temperature(ctx: Context) -> None:
    gen = seeded(30009)
    model = WobbleNet(t=50 / 100 / 100)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    px, py = next(_wobbles(torch.Generator().manual_seed(9), 512, noise=0.2, spacing=0.3))
    fracs: list[float] = []

    def after(step):
        if step % 20 == 0 or step == 199:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(px), py))

    _train(
        ctx,
        model,
        opt,
        _wobbles(gen, 32, noise=0.2, spacing=0.3),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over a quarter of the probe rows' softmax is exactly 1.0", fracs[-1] > 0.25)
    with torch.no_grad():
        at_half = collapsed_fraction(model(px) * (50 / 100 / 100) / 0.5, py)
    ctx.check("the same weights at the intended temperature 0.5 collapse no row", at_half == 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- snowcat: the warm-up lost its min(1, .) ---------------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
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
    family="snowcat_piste_groomer_track_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the track tension a piste groomer's snowcat should run from 10 standardised readings (snow density, slope, blade load, temperature), plain SGD, MSE, a 20-step linear warm-up to 0.1 written as LambdaLR(lambda s: (s + 1) / 20), up to 300 steps. The `min(1.0, ...)` was lost in a refactor, so the learning rate does not stop at 0.1 at step 20 but keeps climbing by 0.005 a step: the loss falls while lr x sharpness is under 2, then lr x sharpness crosses 2 and the loss blows up.",
)
def h300_snowcat_warmup_no_cap(ctx: Context) -> None:
    gen = seeded(30010)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    px, py = next(_readings(torch.Generator().manual_seed(10), 256, 10, seed=310))
    torch.manual_seed(310)
    lr_sharp: dict[int, float] = {}

    def before(step):
        if step % 10 == 0:
            lam = _sharpness(model, F.mse_loss, px, py)
            lr_sharp[step] = opt.param_groups[0]["lr"] * lam

    end = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=310),
        300,
        F.mse_loss,
        before=before,
        sched=sched,
        stop_on_blowup=1e6,
    )
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    ctx.check("the run blew up (loss over 100x its low or non-finite)", end < 300)
    ctx.check("the loss fell first", low < 0.5 * _mean(ls[:5]))
    ctx.check("lr x sharpness was under 2 at the warm-up's end", lr_sharp[20] < 2)
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        any(v > 2 for s, v in lr_sharp.items() if s < end and math.isfinite(v)),
    )


# -- controls ----------------------------------------------------------------------------------


@scenario(
    family="aerial_silk_drop_kind_patch_vit",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written vision-transformer-like patch classifier (embed, class token, positions, pre-norm attention block with ln1, MLP, head) of which drop an aerial-silk performer is in (4 kinds) from generated 16x16 frames, AdamW with weight decay 0.05 only on the Linear weights (biases, LayerNorms, positions and the class token in a no-decay group), a 20-step linear warm-up to 3e-3 followed by linear decay to 0 at step 250, clipping at 1.0, cross-entropy. Trains normally.",
)
def h300_aerial_silk_vit_control(ctx: Context) -> None:
    gen = seeded(30011)
    model = PatchViT(norm=True)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2]
    ids = {id(p) for p in decay}
    nodecay = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 250, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / (steps - warm))
    )
    _train(
        ctx,
        model,
        opt,
        _images(gen, 32),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    px, py = next(_images(torch.Generator().manual_seed(11), 256))
    with torch.no_grad():
        acc = float((model(px).argmax(-1) == py).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("held-out accuracy over 60% (chance 25%)", acc > 0.6)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="flyboard_hover_stability_fp16_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying a flyboard rider's hover state (5 kinds: stable, pitching, yawing, sinking, surging) from 12 standardised readings (nozzle thrust, hose tension, board tilt), fp16 autocast with a torch.amp.GradScaler, Adam under OneCycleLR (max 3e-3), cross-entropy with label smoothing 0.1, clipping at 1.0 on the unscaled gradient, 200 steps. Trains normally.",
)
def h300_flyboard_fp16_control(ctx: Context) -> None:
    gen = seeded(30012)
    model = Stack(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=312),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="mountainboard_downhill_time_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing a mountainboard downhill run's standardised time from 10 readings (slope, surface, wheel durometer, rider mass, stance) with Student-t timing noise, Adamax at 2e-3, Huber loss, gradient accumulation over 2, ReduceLROnPlateau (factor 0.5, patience 10), clipping at 1.0, 240 steps. Trains normally.",
)
def h300_mountainboard_control(ctx: Context) -> None:
    gen = seeded(30013)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=313, noise=0.1, heavy=True),
        240,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
