"""Held-out set 543 (``h543_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: bellringer rope-sally segment-memory (Transformer-XL style) transformer whose q/k param
group lr is typed 3e-2 for 3e-4 (attention_logit_growth, Adam); beekeeper smoker fuel-burn SiLU
regressor hit by one un-unscaled manual loss-scale step on resume (adam_second_moment_poisoned,
AdamW); lime-kiln draw regressor taking the log of a draught gauge that reads 0.0 (nonfinite,
Adam); bell-founder casting-cool deep tanh regressor with its init gain typed 4 (exploding_gradients,
SGD momentum); rope-walk strand-twist classifier whose head group lr is typed 5e-9
(update_ratio_out_of_range, Adagrad); hurdy-gurdy buzz-bridge conv1d classifier fed one shard of raw
ADC counts (data_outlier, SGD Nesterov); drystone cope-stone tanh regressor whose StepLR gamma is
typed 10 for 0.1 (sharpness_above_limit, plain SGD); clog-dancer step classifier with temperature
typed 0.002 (softmax_collapse, RMSprop); rockpool tide species multi-label BCE net whose prior bias
is filled into every layer (loss_of_plasticity, Adamax); blacksmith drift-punch Huber regressor whose
resumed step skips the accumulation divisor (gradient_spike, SGD momentum, clipping).
Controls: hallmark date-letter CNN on heavily augmented digits with an EMA of the weights used for
evaluation (noisy training loss, alarming-looking, AdamW), canal lock-keeper fill-time Huber
regressor (RAdam, OneCycleLR, accumulation 2, clipping, param groups), kelp-forest canopy BCE net
(fp16 autocast + GradScaler, NAdam, ReduceLROnPlateau).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digits, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. attention logit growth: segment-memory transformer, q/k group lr typo ---------------------


class _MemAttention(nn.Module):
    """Attention over [memory of the previous segment ; current segment], causal within the segment."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.last_max = 0.0

    def forward(self, x, mem):
        b, t, d = x.shape
        h = self.heads
        ctx = torch.cat([mem, x], 1)
        m = ctx.shape[1] - t
        q = self.q(x).reshape(b, t, h, -1).transpose(1, 2)
        k = self.k(ctx).reshape(b, m + t, h, -1).transpose(1, 2)
        v = self.v(ctx).reshape(b, m + t, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.last_max = float(logits.detach().abs().max())
        mask = torch.ones(t, m + t, dtype=torch.bool).triu(m + 1)
        logits = logits.masked_fill(mask, float("-inf"))
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _MemBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _MemAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x, mem):
        x = x + self.attn(self.ln1(x), self.ln1(mem))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _SegmentMemoryTransformer(nn.Module):
    def __init__(self, vocab=24, dim=32, heads=2, layers=2, seg=12):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(2 * seg, dim)
        self.blocks = nn.ModuleList(_MemBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.seg = seg

    def forward(self, idx, mems):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(self.seg, self.seg + t))
        new_mems = []
        for block, mem in zip(self.blocks, mems, strict=True):
            new_mems.append(x.detach())
            x = block(x, mem)
        return self.head(self.ln_f(x)), new_mems


@scenario(
    family="bellringer_rope_sally_segment_memory_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Bellringer rope-sally change-ringing model: a Transformer-XL style segment-recurrent "
    "decoder (each layer attends over the detached hidden states of the previous segment plus "
    "the current one) trained on streams of bell-place tokens where each place repeats the one "
    "a segment earlier, cross-entropy, Adam with two param groups. The q/k projection group's "
    "lr is typed 3e-2 for 3e-4 (no weight decay, no QK norm): the q.k/sqrt(d) logits grow over "
    "20x from their start while the rest of the model trains at 3e-4.",
)
def h543_bellringer_segment_memory_qk_lr_typo(ctx):
    gen = seeded(5431)
    seg, vocab, batch = 12, 24, 16
    model = _SegmentMemoryTransformer(vocab=vocab, seg=seg)
    qk = [p for n, p in model.named_parameters() if ".attn.q." in n or ".attn.k." in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-4}, {"params": qk, "lr": 3e-2}])
    ctx.attach(model, opt)
    qk0 = float(torch.cat([p.detach().flatten() for p in qk]).norm())
    losses, firsts, lasts = [], [], []
    mems = [torch.zeros(batch, seg, 32) for _ in model.blocks]
    prev = torch.randint(0, vocab, (batch, seg), generator=gen)
    for step in range(200):
        x = torch.randint(0, vocab, (batch, seg), generator=gen)
        y = prev  # each place repeats the one a segment earlier: the answer is in the memory
        ctx.targets(y.reshape(-1))
        logits, new_mems = model(x, mems)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        mems, prev = new_mems, x
        mx = max(b.attn.last_max for b in model.blocks)
        (firsts if step < 5 else lasts).append(mx)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    ctx.check("attention logits grew over 20x", _mean(lasts[-10:]) > 20 * _mean(firsts))
    qk1 = float(torch.cat([p.detach().flatten() for p in qk]).norm())
    ctx.check("q/k weights grew over 3x", qk1 > 3 * qk0)


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    backprop=None,
    clip=None,
    before=None,
    alter=None,
    sched=None,
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
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


# -- 2. adam second moment poisoned: one un-unscaled manual loss-scale step ----------------------


@scenario(
    family="beekeeper_smoker_fuel_burn_adamw_silu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="Beekeeper smoker fuel-burn regressor (SiLU MLP on fuel kind, packing density, bellows "
    "rate, wind and hive count; MSE; AdamW, beta2 0.999). The run resumes at step 60 from a "
    "checkpoint written by an fp16 branch with manual loss scaling; the first resumed step "
    "backpropagates the loss times the restored scale 65536 without unscaling the gradients. "
    "That one gradient (over 1000x) fills Adam's second moment, and for the rest of the run the "
    "updates are over 8x smaller than before and the loss stops falling.",
)
def h543_beekeeper_smoker_resume_loss_scale(ctx):
    gen = seeded(5432)
    model = _Net(5, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4)
    snaps, moves = [], []

    def before(step):
        snaps.append(_flat(model))

    def after(step, loss):
        moves.append(float((_flat(model) - snaps[-1]).norm()))

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 54320),
        240,
        F.mse_loss,
        before=before,
        after=after,
        backprop=lambda s, loss: loss * 65536.0 if s == 60 else loss,
    )
    ctx.check("gradient over 1000x at step 60", norms[60] > 1000 * _median(norms[:60]))
    ctx.check(
        "updates over 8x smaller after the step",
        _mean(moves[140:240]) * 8 < _mean(moves[30:60]),
    )
    ctx.check("loss stopped falling", _mean(losses[-20:]) > 0.8 * _mean(losses[61:81]))


# -- 3. nonfinite: log of a draught gauge that reads 0.0 ------------------------------------------


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)


class _KilnNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.logfeat = _LogFeature()
        self.body = _Net(d_in, hidden=32)

    def forward(self, x):
        return self.body(self.logfeat(x))


@scenario(
    family="lime_kiln_draw_log_feature_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Lime-kiln draw regressor (burnt-lime yield from draught pressure, fuel ratio, stone "
    "size, charge height; log features of the two positive gauges, ReLU MLP, MSE, Adam). At "
    "step 70 the draught gauge drops out and the logger writes 0.0 instead of a missing value: "
    "log(0) is -inf in logfeat, and the loss is non-finite at step 70.",
)
def h543_lime_kiln_log_zero_draught(ctx):
    gen = seeded(5433)
    model = _KilnNet(5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    src = _readings(gen, 64, 5, 54330)
    seen = {}
    model.logfeat.register_forward_hook(
        lambda m, i, o: seen.__setitem__("inf", bool(torch.isinf(o).any()))
    )

    def batches():
        while True:
            x, y = next(src)
            x = x.clone()
            x[:, :2] = torch.exp(0.5 * x[:, :2])
            yield x, y

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[3, 0] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, batches(), 120, F.mse_loss, alter=alter)
    ctx.check("finite before step 70", _finite(losses[:70]))
    ctx.check("loss non-finite at step 70", len(losses) == 71 and not math.isfinite(losses[70]))
    ctx.check("logfeat produced inf", seen.get("inf", False))


# -- 4. exploding gradients: deep tanh net with init gain typed 4 ---------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width=48, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="bell_founder_casting_cool_deep_tanh_regressor",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Bell-founder casting cooling-time regressor (14-layer tanh MLP on bronze mass, tin share, "
    "mould thickness, pit temperature, core moisture; MSE; SGD momentum 0.9). The init config's "
    "gain is typed 4 for 5/3 (tanh's gain): every layer multiplies the backward signal, and "
    "the first layer's gradient is over 30x the last layer's throughout the run.",
)
def h543_bell_founder_init_gain_typo(ctx):
    gen = seeded(5434)
    model = _DeepTanh(5, depth=14, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ratios = []

    ctx.attach(model, opt)
    src = _readings(gen, 64, 5, 54340)
    losses = []
    for _step in range(150):
        x, y = next(src)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        g0 = float(model.layers[0].weight.grad.norm())
        g9 = float(model.layers[-1].weight.grad.norm())
        ratios.append(g0 / max(g9, 1e-12))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    ctx.check("first layer gradient over 30x the last", _median(ratios) > 30)
    ctx.check("gradient norm over 10 at start", _median(ctx.grad_norms[:10]) > 10)


# -- 5. update ratio out of range: head group lr typed 5e-9 ---------------------------------------


@scenario(
    family="rope_walk_strand_twist_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Rope-walk strand-twist grade classifier (ReLU MLP on hemp fibre length, twist per "
    "metre, tar content, walk tension; 6 grades; cross-entropy; Adagrad with a body group and "
    "a head group). The head group's lr is typed 5e-9 for 5e-2: the head stays at its random "
    "init (it moves less than 1e-5 of its norm over the run) while the body moves and has to "
    "fit the grades through a fixed random readout.",
)
def h543_rope_walk_head_lr_typo(ctx):
    gen = seeded(5435)
    model = _Net(8, out=6)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adagrad(
        [{"params": body, "lr": 5e-2}, {"params": model.head.parameters(), "lr": 5e-9}]
    )
    h0, b0 = _flat(model.head), _flat(model.fc1)
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 8, 6, 54350), 150, F.cross_entropy, classifier=True
    )
    ctx.check("head moved under 1e-5", _rel(_flat(model.head), h0) < 1e-5)
    ctx.check("body moved over 1e-2", _rel(_flat(model.fc1), b0) > 1e-2)
    ctx.check("finite", _finite(losses))


# -- 6. data outlier: one shard of raw ADC counts -------------------------------------------------


class _Conv1dNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x.unsqueeze(1)))
        x = F.relu(self.conv2(F.max_pool1d(x, 2)))
        return self.head(x.mean(-1))


def _buzz(gen, batch, classes=4, length=48):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(0.25 * (y[:, None] + 1) * t + phase)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="hurdy_gurdy_buzz_bridge_conv1d_classifier",
    optimizer="SGD(nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="Hurdy-gurdy buzz-bridge (trompette) rhythm classifier (conv1d on the bridge pickup "
    "signal, 4 stroke kinds, cross-entropy, SGD Nesterov, clipping at 5). The batch at step 90 "
    "comes from a shard exported as raw 12-bit ADC counts (x2048) instead of volts: the loss is "
    "over 10x its median and the gradient over 10x; clipping keeps the run, which recovers.",
)
def h543_hurdy_gurdy_adc_count_shard(ctx):
    gen = seeded(5436)
    model = _Conv1dNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x * 2048.0, y) if step == 90 else (x, y)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _buzz(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    ctx.check("loss over 10x at step 90", losses[90] > 10 * _median(losses[60:90]))
    ctx.check("gradient over 10x at step 90", norms[90] > 10 * _median(norms[60:90]))
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 2 * _mean(losses[80:90]))


# -- 7. sharpness above limit: StepLR gamma typed 10 for 0.1 --------------------------------------


@scenario(
    family="drystone_cope_stone_fit_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="Drystone waller's cope-stone fit regressor (tanh MLP on stone length, thickness, "
    "batter, course height, hearting share; MSE; plain SGD lr 0.05 with StepLR every 80 steps). "
    "StepLR's gamma is typed 10 for 0.1: at step 80 the lr becomes 0.5, and lr x the top "
    "Hessian eigenvalue (measured just before) is over 2, past the stability limit (the loss "
    "jumps and oscillates); at step 160 it becomes 5.0 and the loss blows up to inf.",
)
def h543_drystone_steplr_gamma_typo(ctx):
    gen = seeded(5437)
    model = _Net(5, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)
    src = _readings(gen, 128, 5, 54370)
    probe = next(src)
    eig = {}

    def before(step):
        if step == 79:
            eig["v"] = _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _train(ctx, model, opt, src, 200, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness over 2 after step 80", 0.5 * eig.get("v", 0.0) > 2)
    ctx.check("finite before step 80", _finite(losses[:80]))
    worst = max((v if math.isfinite(v) else float("inf")) for v in losses[80:])
    ctx.check("loss blows up over 20x after step 80", worst > 20 * _mean(losses[70:80]))


# -- 8. softmax collapse: temperature typed 0.002 -------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, out=classes)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="clog_dancer_step_temperature_relu_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Clog-dancer step classifier (ReLU MLP on heel/toe tap timings and loudness from a "
    "stage microphone, 7 step kinds, cross-entropy, RMSprop). The logit temperature in the "
    "config is typed 0.002 for 2.0: the softmax saturates, over 40% of rows' largest "
    "probability rounds to exactly 1.0 in float32.",
)
def h543_clog_dancer_temperature_typo(ctx):
    gen = seeded(5438)
    model = _TempNet(10, 7, temperature=0.002)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    src = _grades(gen, 64, 10, 7, 54380, spread=1.4)
    fracs = []

    def after(step, loss):
        if step % 10 == 0:
            with torch.no_grad():
                x, _ = next(src)
                p = model(x).softmax(-1)
                fracs.append(float((p.max(-1).values == 1.0).float().mean()))

    losses, _ = _train(ctx, model, opt, src, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows at probability exactly 1.0", _mean(fracs) > 0.4)


# -- 9. loss of plasticity: a prior bias filled into every layer ----------------------------------


@scenario(
    family="rockpool_tide_species_prior_bias_bce_net",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Rockpool tide species-presence net (multi-label: 8 species from pool depth, salinity, "
    "temperature, shore height, wave exposure, weed cover; ReLU MLP; BCE with logits; Adamax). "
    "The focal-style prior bias -log((1-p)/p) with p=0.01 (-4.6) meant for the output layer is "
    "filled into every Linear's bias by the init loop: over 90% of act1's units never fire, "
    "fc2 gets no signal, and the loss stalls near the base rate.",
)
def h543_rockpool_prior_bias_every_layer(ctx):
    gen = seeded(5439)
    model = _Net(6, out=8)
    prior = -math.log((1 - 0.01) / 0.01)
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            nn.init.constant_(mod.bias, prior)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(54390)
    w = torch.randn(6, 8, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 6, generator=gen)
            yield x, (x @ w > 0.5).float()

    dead = []

    def after(step, loss):
        if step % 10 == 0:
            with torch.no_grad():
                h = F.relu(model.fc1(torch.randn(256, 6, generator=gen)))
                dead.append(float(((h > 0).sum(0) == 0).float().mean()))

    losses, _ = _train(
        ctx, model, opt, batches(), 150, F.binary_cross_entropy_with_logits, after=after
    )
    ctx.check("over 90% of act1 dead at the end", dead[-1] > 0.9)
    ctx.check("loss stalls above 0.5", _mean(losses[-10:]) > 0.5)


# -- 10. gradient spike: resumed step skips the accumulation divisor ------------------------------


@scenario(
    family="blacksmith_drift_punch_accum_huber_regressor",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Blacksmith drift-punch hole-size regressor (SiLU MLP on bar temperature, punch "
    "diameter, blow count, anvil hardness; Huber; SGD momentum, clipping at 1). On the step "
    "resumed at 100 the loss is summed over the 8-micro-batch x 32 window instead of divided "
    "by the accumulation count: that step's backpropagated loss is 256x, the gradient over "
    "50x its median, the logged loss ordinary; clipping keeps the run.",
)
def h543_blacksmith_resume_accum_divisor(ctx):
    gen = seeded(5440)
    model = _Net(4, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 4, 54400),
        180,
        F.huber_loss,
        backprop=lambda s, loss: loss * 256.0 if s == 100 else loss,
        clip=1.0,
    )
    ctx.check("gradient over 50x at step 100", norms[100] > 50 * _median(norms[70:100]))
    ctx.check("logged loss ordinary at step 100", losses[100] < 3 * _median(losses[70:100]))
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


class _SmallCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.head = nn.Linear(24 * 16, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="hallmark_date_letter_ema_augmented_cnn",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Healthy, alarming-looking control: assay-office hallmark date-letter reader (small CNN "
    "on 8x8 digit punches, cross-entropy with label smoothing 0.1, AdamW) trained on heavily "
    "augmented punches (random shifts of up to 1 pixel, random erasing of a 3x3 patch, "
    "intensity jitter, Gaussian noise 0.25), so the training loss is noisy and stays high; an "
    "exponential moving average of the weights (decay 0.97) is what is evaluated, and its "
    "clean held-out loss falls steadily.",
)
def h543_hallmark_ema_heavy_augmentation(ctx):
    gen = seeded(5441)
    xs, ys = digits()
    order = torch.randperm(len(ys), generator=gen)
    tr, te = order[:1400], order[1400:]
    model = _SmallCNN()
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    ctx.attach(model, opt)
    losses, evals = [], []

    def augment(x):
        b = x.shape[0]
        img = x.reshape(b, 8, 8)
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
        img = torch.roll(img, (dy, dx), (1, 2))
        r, c = (int(v) for v in torch.randint(0, 6, (2,), generator=gen))
        img = img.clone()
        img[:, r : r + 3, c : c + 3] = 0.0
        img = img * (0.6 + 0.8 * torch.rand(b, 1, 1, generator=gen))
        return (img + 0.25 * torch.randn(b, 8, 8, generator=gen)).reshape(b, 64)

    def evaluate():
        with torch.no_grad():
            return float(F.cross_entropy(ema(xs[te]), ys[te]))

    evals.append(evaluate())
    for step in range(260):
        idx = tr[torch.randint(0, len(tr), (64,), generator=gen)]
        x, y = augment(xs[idx]), ys[idx]
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(0.97).add_(pm, alpha=0.03)
        losses.append(float(loss.detach()))
        if step % 20 == 19:
            evals.append(evaluate())
    ctx.check("training loss fell and is finite", _fell(losses, k=20, ratio=0.8))
    ctx.check("EMA held-out loss fell over 2x", evals[-1] * 2 < evals[0])


@scenario(
    family="canal_lock_keeper_fill_time_onecycle_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Healthy control: canal lock-keeper fill-time regressor (SiLU MLP on chamber size, "
    "head difference, paddle openings, upstream flow, boat count; Huber; RAdam with two param "
    "groups, no weight decay on biases; OneCycleLR; gradient accumulation 2; clipping at 1; "
    "noisy targets).",
)
def h543_canal_lock_onecycle_accumulation(ctx):
    gen = seeded(5442)
    model = _Net(5, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=120)
    ctx.attach(model, opt)
    src = _readings(gen, 32, 5, 54420, noise=0.2)
    losses = []
    for _step in range(120):
        logged = 0.0
        for _micro in range(2):
            x, y = next(src)
            loss = F.huber_loss(model(x), y)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
        losses.append(logged)
    ctx.check("loss fell and is finite", _fell(losses))


@scenario(
    family="kelp_forest_canopy_fp16_nadam_bce_net",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Healthy control: kelp-forest canopy-cover detector (GELU MLP on sea temperature, "
    "nitrate, swell height, urchin count, depth, light; BCE with logits; NAdam; fp16 autocast "
    "with a GradScaler; ReduceLROnPlateau on the running loss).",
)
def h543_kelp_canopy_fp16_plateau(ctx):
    gen = seeded(5443)
    model = _Net(6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    g = torch.Generator().manual_seed(54430)
    w = torch.randn(6, generator=g)
    losses = []
    for _step in range(160):
        x = torch.randn(64, 6, generator=gen)
        y = ((x @ w + 0.5 * x[:, 0] * x[:, 1] + 0.3 * torch.randn(64, generator=gen)) > 0).float()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        sched.step(_mean(losses[-10:]))
    ctx.check("loss fell and is finite", _fell(losses, ratio=0.6))
