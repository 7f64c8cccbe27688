"""Held-out set 598 (``h598_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: clockmaker escapement-beat copy attention tagger with Adam lr typed 3e-2 for 3e-4 and no
QK-norm (attention_logit_growth, Adam); ice-harvest block-thickness Huber regressor fed one shard of
9999 sentinels at step 100 (data_outlier, SGD Nesterov, clipping); ropewalk hemp-lay regressor whose
in-model sqrt(L^2 - s^2) meets swapped length/span columns at step 80 (nonfinite, Adadelta);
cider-press juice-yield GELU regressor under fp16 autocast fed pascals for bar from step 70
(amp_overflow, AdamW, GradScaler); dust-devil core-width tanh regressor with SGD lr typed 4.0 for
0.04 (sharpness_above_limit, plain SGD); stalactite drip-rate 14-deep ReLU MLP with the ReLU gain
applied twice (exploding_gradients, SGD momentum); cordwainer last-fit regressor whose trunk group
lr is typed 2e-9 (update_ratio_out_of_range, NAdam, param groups); sheepdog whistle-command
classifier handed a sum-reduced loss for step 100 (gradient_spike, Adagrad, clipping); pingo
heave-height tanh regressor with a sign-flipped hand-written weight decay (loss_divergence, RAdam);
steelpan note classifier whose temperature is read from thousandths twice (softmax_collapse,
Adamax).
Controls: kendama trick-grade digits MLP on SGD momentum with MultiStepLR dropping the lr 10x at
step 120 and label smoothing (the loss drops sharply there, alarming-looking); semaphore
flag-spelling Hugging Face BART from a tiny config (AdamW, linear warm-up, clipping); lake-seiche
period Gaussian-NLL net fitted full-batch with Rprop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import MLP, collapsed_fraction, digit_batches, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.4 * torch.tanh(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.2, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


def _loop(
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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, out, y) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- faults ---------------------------------------------------------------------------------------


class _EscapementAttention(nn.Module):
    """Single-head attention with explicit q.k/sqrt(d) logits (no QK-norm); keeps the last max."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.last_max = 0.0

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_max = float(logits.detach().abs().max())
        return self.proj(torch.softmax(logits, -1) @ v)


class _BeatTagger(nn.Module):
    def __init__(self, vocab=16, dim=32, length=10, classes=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = _EscapementAttention(dim)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        h = h + self.attn(h)
        return self.head(self.ln(h[:, 0]))


@scenario(
    "clockmaker_escapement_beat_copy_attention_tagger",
    "Adam",
    "attention_logit_growth",
    where=("attn",),
    heldout=True,
    note="a clock-repair shop's escapement beat tagger looks up the tick named by the first "
    "token; its attention has no QK-norm and the Adam lr was typed 3e-2 for 3e-4, so q and k "
    "grow step after step and the q.k/sqrt(d) logits grow over 20x into a one-hot attention",
)
def h598_clockmaker_escapement_beat_copy_attention_tagger(ctx):
    gen = seeded(5981)
    model = _BeatTagger()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)

    def batches():
        while True:
            x = torch.randint(2, 16, (64, 10), generator=gen)
            x[:, 0] = torch.randint(1, 10, (64,), generator=gen)
            yield x, x.gather(1, x[:, :1]).squeeze(1)

    first = {}

    def after(step, out, y):
        first.setdefault("max", model.attn.last_max)

    losses, _ = _loop(
        ctx, model, opt, batches(), 200, F.cross_entropy, classifier=True, after=after
    )
    ctx.check("the attention logits grew over 20x", model.attn.last_max > 20 * first["max"])
    ctx.check("the attention logits exceed 25 in size", model.attn.last_max > 25)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "ice_harvest_block_thickness_nesterov_huber_regressor",
    "SGD",
    "data_outlier",
    diverges=None,
    onset=100,
    heldout=True,
    note="an ice-harvest crew's block-thickness Huber regressor (SGD Nesterov, clipping); the "
    "shard at step 100 comes from a saw log whose gauge reported its 9999 'no reading' sentinel "
    "in every column: one corrupted batch, the loss jumps, the run recovers",
)
def h598_ice_harvest_block_thickness_nesterov_huber_regressor(ctx):
    gen = seeded(5982)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 10, 59821)

    def alter(step, x, y):
        if step == 100:
            x = torch.full_like(x, 9999.0)
        return x, y

    losses, norms = _loop(ctx, model, opt, batches, 180, F.huber_loss, alter=alter, clip=5.0)
    base = _median(losses[80:100])
    ctx.check("the loss at step 100 is over 20x the steps before", losses[100] > 20 * base)
    ctx.check(
        "the gradient at step 100 is over 10x the median", norms[100] > 10 * _median(norms[80:100])
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-10:]) < 3 * base)


class _RopeSag(nn.Module):
    """Hang depth of a rope of length L over a span s: sqrt(L^2 - s^2) / 2 (no clamp at 0)."""

    def forward(self, x):
        sag = torch.sqrt(x[:, :1] ** 2 - x[:, 1:2] ** 2) / 2
        return torch.cat([sag, x[:, 2:]], 1)


class _LayNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.sag = _RopeSag()
        self.fc1 = nn.Linear(d_in - 1, 32)
        self.act = nn.Tanh()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.sag(x)))).squeeze(-1)


@scenario(
    "ropewalk_hemp_lay_sag_sqrt_adadelta_regressor",
    "Adadelta",
    "nonfinite",
    where=("sag",),
    diverges=80,
    onset=80,
    heldout=True,
    note="a ropewalk's lay-tension regressor computes the hang depth sqrt(L^2 - s^2) inside the "
    "model; at step 80 a batch comes from a sheet where the length and span columns were swapped, "
    "the sqrt of a negative is NaN, and so is the loss",
)
def h598_ropewalk_hemp_lay_sag_sqrt_adadelta_regressor(ctx):
    gen = seeded(5983)
    g = torch.Generator().manual_seed(59831)
    w = torch.randn(4, generator=g)
    model = _LayNet(6)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def batches():
        while True:
            span = 1.0 + torch.rand(48, generator=gen)
            length = span + 0.1 + torch.rand(48, generator=gen)
            rest = torch.randn(48, 4, generator=gen)
            sag = torch.sqrt(length**2 - span**2) / 2
            y = sag + torch.tanh(rest @ w / 2) + 0.05 * torch.randn(48, generator=gen)
            yield torch.cat([length[:, None], span[:, None], rest], 1), y

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[:, [0, 1]] = x[:, [1, 0]]
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 150, F.mse_loss, alter=alter)
    ctx.check("the loss is finite before step 80", _finite(losses[:80]))
    ctx.check("the loss is NaN at step 80", len(losses) == 81 and math.isnan(losses[80]))
    ctx.check("the loss fell before step 80", _fell(losses[:80]))


@scenario(
    "cider_press_juice_yield_pascal_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="a cider press's juice-yield GELU regressor trains under fp16 autocast with a "
    "GradScaler; from step 70 the new press gauge reports platen pressure in pascals where the "
    "model expects bar (1e5x), and fc1's fp16 output overflows 65504 to inf (finite in float32)",
)
def h598_cider_press_juice_yield_pascal_fp16_gelu_regressor(ctx):
    gen = seeded(5984)
    g = torch.Generator().manual_seed(59841)
    w = torch.randn(7, generator=g)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    bad = {}
    for step in range(140):
        bar = 1.0 + 3.0 * torch.rand(64, generator=gen)
        rest = torch.randn(64, 7, generator=gen)
        y = 0.5 * torch.log(bar) + torch.sin(rest @ w / 3) + 0.05 * torch.randn(64, generator=gen)
        x = torch.cat([bar[:, None], rest], 1)
        if step >= 70:
            x[:, 0] = x[:, 0] * 1e5
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
            if step == 70:
                bad["fp16"] = bool(torch.isfinite(model.fc1(x)).all())
        if step == 70:
            bad["fp32"] = bool(torch.isfinite(model.fc1(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss is finite and fell before step 70", _fell(losses[:70]))
    ctx.check("fc1's fp16 output is non-finite at step 70", bad.get("fp16") is False)
    ctx.check("fc1's float32 output is finite at step 70", bad.get("fp32") is True)
    ctx.check("the loss is non-finite at step 70", len(losses) == 71 and not _finite(losses[70:]))


@scenario(
    "dust_devil_core_width_lr_typo_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="a field-campaign dust-devil core-width tanh regressor; plain SGD with lr typed 4.0 "
    "for 0.04, so lr x top Hessian eigenvalue is past 2 from the first step and the loss blows up",
)
def h598_dust_devil_core_width_lr_typo_tanh_regressor(ctx):
    gen = seeded(5985)
    model = _Net(8, 48, 1, nn.Tanh)
    lr = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 8, 59851)
    x0, y0 = next(_readings(torch.Generator().manual_seed(59852), 256, 8, 59851))
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr x top eigenvalue is past 2 at step 0", lr * eig > 2)
    ctx.check(
        "the loss blows up (over 50x its start, or non-finite)",
        not _finite(losses) or max(losses) > 50 * losses[0],
    )


class _DeepMLP(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            with torch.no_grad():
                lin.weight.mul_(gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    "stalactite_drip_rate_deep_gain_relu_mlp",
    "SGD",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="a show-cave's stalactite drip-rate 14-deep ReLU MLP; its init helper applies the "
    "ReLU gain sqrt(2) on top of kaiming_normal, which already includes it, so each layer "
    "multiplies the signal by about 1.4 and the gradient grows back through depth; SGD momentum",
)
def h598_stalactite_drip_rate_deep_gain_relu_mlp(ctx):
    gen = seeded(5986)
    model = _DeepMLP(8, 32, 14, math.sqrt(2))
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    batches = _readings(gen, 64, 8, 59861)
    seen = {}

    def hook(name):
        def record(mod, grad_in, grad_out):
            seen.setdefault(name, float(grad_out[0].norm()))

        return record

    handles = [
        model.layers[0].register_full_backward_hook(hook("first")),
        model.layers[-1].register_full_backward_hook(hook("last")),
    ]

    def backprop(step, loss, out, y):
        if step == 1:
            for h in handles:
                h.remove()
        return loss

    losses, _ = _loop(ctx, model, opt, batches, 100, F.mse_loss, backprop=backprop)
    ctx.check(
        "the backward signal at layer 0 is over 10x the last layer's at step 0",
        seen["first"] > 10 * seen["last"],
    )
    ctx.check(
        "the loss blows up (over 50x its start, or non-finite)",
        not _finite(losses) or max(losses) > 50 * losses[0],
    )


@scenario(
    "cordwainer_last_fit_frozen_trunk_nadam_regressor",
    "NAdam",
    "update_ratio_out_of_range",
    where=("fc1", "fc2"),
    heldout=True,
    note="a cordwainer's last-fit SiLU regressor built with param groups: trunk and head; the "
    "trunk group's lr was typed 2e-9 for 2e-3, so fc1 and fc2 barely move while the head trains",
)
def h598_cordwainer_last_fit_frozen_trunk_nadam_regressor(ctx):
    gen = seeded(5987)
    model = _Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": 2e-9},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    batches = _readings(gen, 64, 12, 59871)
    w1, wh = _flat(model.fc1), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, batches, 160, F.mse_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    dh = float((_flat(model.head) - wh).norm() / wh.norm())
    ctx.check("fc1 moved less than 1e-5 of its norm", d1 < 1e-5)
    ctx.check("the head moved over 5% of its norm", dh > 0.05)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "sheepdog_whistle_command_sum_reduction_adagrad_classifier",
    "Adagrad",
    "gradient_spike",
    onset=100,
    heldout=True,
    note="a sheepdog-trial whistle-command classifier (Adagrad, clipping); at step 100 the "
    "training step is handed the evaluation loss helper, which sums over the batch of 128 "
    "instead of averaging: one gradient over 30x, an ordinary logged loss, then back to normal",
)
def h598_sheepdog_whistle_command_sum_reduction_adagrad_classifier(ctx):
    gen = seeded(5988)
    model = _Net(20, 64, 8, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = _classes(gen, 128, 20, 8, 59881, spread=0.5, noise=1.2)

    def backprop(step, loss, out, y):
        if step == 100:
            return F.cross_entropy(out, y, reduction="sum")
        return loss

    losses, norms = _loop(
        ctx, model, opt, batches, 180, F.cross_entropy, classifier=True, backprop=backprop, clip=1.0
    )
    ctx.check(
        "the gradient at step 100 is over 30x the median", norms[100] > 30 * _median(norms[80:100])
    )
    ctx.check(
        "the logged loss at step 100 is ordinary", losses[100] < 1.5 * _median(losses[80:100])
    )
    ctx.check("the loss fell", _fell(losses))


@scenario(
    "pingo_heave_height_decay_sign_radam_regressor",
    "RAdam",
    "loss_divergence",
    heldout=True,
    note="a permafrost survey's pingo heave-height tanh regressor with hand-written decoupled "
    "weight decay whose sign was flipped (p *= 1 + lr*wd): the weights grow every step and the "
    "loss slowly climbs with no jump",
)
def h598_pingo_heave_height_decay_sign_radam_regressor(ctx):
    gen = seeded(5989)
    model = _Net(10, 48, 1, nn.Tanh)
    lr, wd = 3e-3, 4.0
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 10, 59891)
    w0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _loop(ctx, model, opt, batches, 250, F.mse_loss, before=before)
    best = min(losses)
    jumps = [b / max(a, 1e-9) for a, b in zip(losses[:-1], losses[1:], strict=False)]
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("the loss climbs to over 5x its best", _mean(losses[-10:]) > 5 * best)
    ctx.check("no single step jumps the loss over 3x", _finite(losses) and max(jumps) < 3)


class _TemperNet(_Net):
    def __init__(self, d_in, k, tau):
        super().__init__(d_in, 48, k, nn.ReLU)
        self.tau = tau

    def forward(self, x):
        return self.head(self.features(x)) / self.tau


@scenario(
    "steelpan_note_temper_temperature_adamax_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="a steelpan tuner's note classifier divides its logits by a temperature read from a "
    "config written in thousandths (tau_milli=2) as if it were the value itself, then divided "
    "again by 1000: logits / 0.002, and the float32 softmax rounds the target to exactly 1.0",
)
def h598_steelpan_note_temper_temperature_adamax_classifier(ctx):
    gen = seeded(59810)
    cfg = {"tau_milli": 2.0}
    model = _TemperNet(16, 6, cfg["tau_milli"] / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 16, 6, 598101)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 140, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "kendama_trick_grade_steplr_drop_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="a kendama trick-grade classifier on SGD momentum 0.9 lr 0.1 with label smoothing and "
    "a MultiStepLR that drops the lr 10x at step 120: the loss falls sharply there and the "
    "gradient norm changes (alarming-looking, the textbook step schedule)",
)
def h598_kendama_trick_grade_steplr_drop_classifier(ctx):
    gen = seeded(59811)
    model = MLP([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[120], gamma=0.1)
    digits = digit_batches(gen, 32)

    def batches():
        for x, y in digits:
            yield x + 0.3 * torch.randn(x.shape, generator=gen), y

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(ctx, model, opt, batches(), 220, loss_fn, classifier=True, sched=sched)
    ctx.check("the loss fell", _fell(losses))
    ctx.check(
        "the loss after step 120 is lower than just before it",
        _mean(losses[122:142]) < 0.9 * _mean(losses[100:120]),
    )
    ctx.check("the lr was dropped 10x", abs(opt.param_groups[0]["lr"] - 0.03) < 1e-9)


@scenario(
    "semaphore_flag_spelling_tiny_bart_seq2seq",
    "AdamW",
    "healthy",
    heldout=True,
    note="a Hugging Face BART encoder-decoder from a tiny config turns flag-semaphore letter "
    "codes into spelled letters (a fixed shift); AdamW with linear warm-up, clipping",
)
def h598_semaphore_flag_spelling_tiny_bart_seq2seq(ctx):
    from transformers import BartConfig, BartForConditionalGeneration

    gen = seeded(59812)
    config = BartConfig(
        vocab_size=40,
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    losses = []
    for _step in range(200):
        x = torch.randint(4, 12, (32, 4), generator=gen)
        labels = x + 6
        out = model(input_ids=x, labels=labels)
        out.loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
        ctx.step(out.loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _fell(losses, ratio=0.5))


@scenario(
    "seiche_period_full_batch_rprop_gaussian_nll_net",
    "Rprop",
    "healthy",
    heldout=True,
    note="a lake-seiche period Gaussian-NLL net fitted full-batch (the way Rprop is meant to "
    "be used) on a fixed set of gauge readings",
)
def h598_seiche_period_full_batch_rprop_gaussian_nll_net(ctx):
    gen = seeded(59813)
    model = _Net(6, 32, 2, nn.Tanh)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    x, y = next(_readings(gen, 512, 6, 598131, noise=0.1))

    def batches():
        while True:
            yield x, y

    def nll(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)

    losses, _ = _loop(ctx, model, opt, batches(), 150, nll)
    ctx.check("the loss fell", _finite(losses) and losses[-1] < losses[0] - 0.5)
