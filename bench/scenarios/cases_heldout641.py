"""Held-out set 641 (``h641_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _sequences(gen: torch.Generator, batch: int = 32, length: int = 12, vocab: int = 16):
    """Endless token windows: is the first token's class repeated later in the window?"""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        y = (x[:, 1:] == x[:, :1]).any(1).long() + 2 * (x[:, 0] < vocab // 2).long()
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _gnorm(params) -> float:
    gs = [p.grad.norm() ** 2 for p in params if p.grad is not None]
    return float(sum(gs) ** 0.5) if gs else 0.0


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class TwoLayer(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


class QKAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim)
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ v)


class TinyEncoder(nn.Module):
    """A hand-written one-block pre-LN transformer encoder with mean pooling."""

    def __init__(self, vocab: int = 16, dim: int = 32, length: int = 12, classes: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = QKAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff2(F.gelu(self.ff1(self.ln2(h))))
        return self.head(h.mean(1))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="nailmaker_heading_blow_qk_transformer_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="hand-written one-block transformer; the q/k projections were put in the no-decay group "
    "and given lr 5e-2 (a copy of the embedding group's settings, meant 5e-4); with no QK-norm "
    "the attention logits q.k/sqrt(d) grow over 20x",
)
def h641_nailmaker_heading_qk_group(ctx: Context) -> None:
    gen = seeded(6411)
    model = TinyEncoder()
    qk = [model.attn.q.weight, model.attn.k.weight]
    rest = [p for p in model.parameters() if all(p is not q for q in qk)]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 1e-3, "weight_decay": 0.05},
            {"params": qk, "lr": 5e-2, "weight_decay": 0.0},  # bug: meant 5e-4
        ]
    )
    ctx.attach(model, opt)
    batches = _sequences(gen)
    peaks: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        out = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(out, y)
        peaks.append(float(model.attn.last_logits.abs().max()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("attention logit max grew over 20x step 0's", min(peaks[-20:]) > 20 * peaks[0])
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="ball_clay_slip_casting_wall_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="a preemption resume at step 120 reloads the model weights but rebuilds the optimizer "
    "(the optimizer state is not in the checkpoint): Adam's first fresh steps move every weight "
    "by the full lr, the loss spikes once and the run recovers",
)
def h641_ball_clay_slip_resume_reset(ctx: Context) -> None:
    gen = seeded(6412)
    model = TwoLayer(8, 64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 120
    for step in range(240):
        if step == onset:
            opt.state.clear()  # resume: optimizer state not restored
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[onset - 10 : onset])
    ctx.check(
        "loss within 5 steps of onset over 5x the 10 before", max(ls[onset : onset + 5]) > 5 * pre
    )
    ctx.check(
        "gradient at onset ordinary (under 3x)", gs[onset] < 3 * _median(gs[onset - 10 : onset])
    )
    ctx.check("recovers: last 20 under 2x pre-onset", _median(ls[-20:]) < 2 * pre)
    ctx.check("finite", _finite(ls))


@scenario(
    family="coracle_hide_shrink_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 80 the hide-drying barometer is read in pascal "
    "instead of hectopascal (the reader's unit field defaulted), fc1's fp16 output overflows "
    "65504 and the loss is non-finite",
)
def h641_coracle_hide_fp16_pascal(ctx: Context) -> None:
    gen = seeded(6413)
    model = TwoLayer(8, 32, act=F.gelu)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 80
    for step in range(130):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = (x[:, 2] * 5 + 1013.0) * 100.0  # pascal, not hectopascal
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("fc1 fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


class MaskedPool(nn.Module):
    """Mean over the valid readings of each sample (no clamp on the count)."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # bug: no clamp(min=1)


class BuoyNet(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(3, hidden)
        self.pool = MaskedPool()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.tanh(self.embed(x)), mask))


@scenario(
    family="ice_buoy_drift_masked_pool_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("pool",),
    diverges=95,
    onset=95,
    heldout=True,
    note="a masked mean over each buoy's valid readings divides by the count without a clamp; "
    "at step 95 a buoy with every reading flagged invalid arrives, 0/0 gives NaN and the loss "
    "is NaN",
)
def h641_ice_buoy_masked_zero_count(ctx: Context) -> None:
    gen = seeded(6414)
    model = BuoyNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    w = torch.randn(3, generator=gen)
    onset = 95
    for step in range(150):
        x = torch.randn(64, 10, 3, generator=gen)
        mask = (torch.rand(64, 10, generator=gen) > 0.3).float()
        mask[:, 0] = 1.0
        if step == onset:
            mask[17] = 0.0  # one buoy with no valid readings
        y = ((torch.tanh(x @ w) * mask).sum(1) / mask.sum(1).clamp(min=1))[:, None]
        out = model(x, mask)
        if step == onset:
            ctx.check("pool output NaN at onset", bool(out.isnan().any()))
        loss = F.mse_loss(out, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.7 * ls[0])
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))


class DeepTanh(nn.Module):
    def __init__(self, n_in: int = 8, width: int = 64, depth: int = 10, gain: float = 1.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(n_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x)


@scenario(
    family="cirrus_uncinus_fallstreak_deep_tanh_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="12-layer tanh MLP initialised with std gain 4.0/sqrt(fan_in) (a 'gain' meant for the "
    "output scale pasted into the init helper); in the chaotic regime the gradient grows "
    "backwards through depth, the first layer's gradient over 10x the last's",
)
def h641_cirrus_fallstreak_init_gain(ctx: Context) -> None:
    gen = seeded(6415)
    model = DeepTanh(depth=12, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios: list[float] = []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-12))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("first-layer gradient over 10x the last layer's at step 0", ratios[0] > 10)
    ctx.check("median ratio over 10x", _median(ratios) > 10)
    ctx.check(
        "first-layer gradient over 10x the last layer's over the last 20",
        _median(ratios[-20:]) > 10,
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="thimble_knurl_depth_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one bad shard at step 110: a knurling-gauge export wrote its overflow code 65535 into "
    "the depth column of every row; Huber loss, clipping at 1.0, the loss and gradient spike "
    "once and the run recovers",
)
def h641_thimble_knurl_overflow_shard(ctx: Context) -> None:
    gen = seeded(6416)
    model = TwoLayer(8, 32, act=F.relu)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, 6] = 65535.0  # gauge overflow code
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at onset over 20x the 10 before", ls[onset] > 20 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the 10 before", gs[onset] > 10 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


class ChaserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk1 = nn.Linear(8, 48)
        self.trunk2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.trunk2(F.silu(self.trunk1(x)))))


@scenario(
    family="pewter_chaser_repousse_depth_llrd_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("trunk1", "trunk2"),
    diverges=None,
    heldout=True,
    note="layer-wise lr decay with the decay factor typed 0.001 for 0.9: the trunk groups run at "
    "lr 2e-6 and 2e-9, their weights never move measurably while the head learns; the loss "
    "falls only as far as a head on random features can take it",
)
def h641_pewter_chaser_llrd_typo(ctx: Context) -> None:
    gen = seeded(6417)
    model = ChaserNet()
    base, decay = 2e-3, 0.001  # bug: meant 0.9
    opt = torch.optim.Adamax(
        [
            {"params": model.head.parameters(), "lr": base},
            {"params": model.trunk2.parameters(), "lr": base * decay},
            {"params": model.trunk1.parameters(), "lr": base * decay**2},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w_t = model.trunk1.weight.detach().clone()
    w_h = model.head.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel_t = float((model.trunk1.weight.detach() - w_t).norm() / w_t.norm())
    rel_h = float((model.head.weight.detach() - w_h).norm() / w_h.norm())
    ls = ctx.losses
    ctx.check("trunk1 relative change under 1e-5", rel_t < 1e-5)
    ctx.check("head relative change over 0.1", rel_h > 0.1)
    ctx.check("loss fell", _median(ls[-20:]) < 0.8 * ls[0])
    ctx.check("finite", _finite(ls))


def _top_hessian_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="sandcastle_turret_slump_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a linear warm-up whose peak lr was typed 1.5 for 0.15 (the sweep's value pasted without "
    "its decimal shift): once lr x sharpness passes 2 the iterates oscillate out of the valley "
    "and the loss blows up",
)
def h641_sandcastle_turret_peak_typo(ctx: Context) -> None:
    gen = seeded(6418)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _regression(gen)
    peak, warm = 1.5, 100  # bug: meant 0.15
    crossed = None
    for step in range(160):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        if step % 10 == 0 and crossed is None:
            sharp = _top_hessian_eig(model, x, y)
            if lr * sharp > 2:
                crossed = step
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
            break
    ls = ctx.losses
    low = min(ls[:50])
    ctx.check("loss fell early", low < 0.7 * ls[0])
    ctx.check("lr x sharpness passed 2", crossed is not None)
    ctx.check("loss blew up over 100x its early minimum", max(ls) > 100 * low or not _finite(ls))


class CalibratedHead(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 64, k: int = 4, tau: float = 1.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.head = nn.Linear(hidden, k)
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc1(x))) / self.tau


@scenario(
    family="banjo_head_tension_ring_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature was read as 0.003 from a config whose value was meant for the "
    "calibration script (meant 1.0); logits divided by it saturate the float32 softmax, over "
    "half of each batch's target probabilities round to exactly 1",
)
def h641_banjo_head_temperature(ctx: Context) -> None:
    gen = seeded(6419)
    model = CalibratedHead(tau=0.003)  # bug: meant 1.0
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    frac: list[float] = []
    for _ in range(160):
        x, y = next(batches)
        out = model(x)
        ctx.targets(y)
        frac.append(collapsed_fraction(out.detach(), y))
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half of targets at probability exactly 1 (last 20)", _median(frac[-20:]) > 0.5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="farrier_shoe_nail_pitch_relu_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="manual loss scaling kept from an fp16 recipe in a float32 run: on the step the scale is "
    "raised (step 130) the code multiplies the loss by the new scale 1024 but divides the "
    "gradients by the old 1, one gradient over 50x; logged loss is ordinary, clipped, recovers",
)
def h641_farrier_nail_scale_unscale_miss(ctx: Context) -> None:
    gen = seeded(64110)
    model = TwoLayer(16, 64, 4, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen)
    onset = 130
    scale = 1.0
    for step in range(220):
        x, y = next(batches)
        out = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(out, y)
        new_scale = 1024.0 if step == onset else scale
        (loss * new_scale).backward()
        for p in model.parameters():
            p.grad /= scale  # bug: divides by the old scale on the step it changes
        scale = 1.0
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 50x the 10 before", gs[onset] > 50 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset ordinary (under 2x)", ls[onset] < 2 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="hurling_sliotar_strike_speed_warmup_peak_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="linear warm-up to a high peak lr then cosine decay (a common recipe): the loss jumps "
    "at the peak, then recovers and trains on as the lr decays (alarming-looking control)",
)
def h641_hurling_sliotar_warmup_peak(ctx: Context) -> None:
    gen = seeded(64111)
    model = TwoLayer(16, 64, 4, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen)
    peak, warm, total = 0.3, 60, 240
    for step in range(total):
        if step < warm:
            lr = peak * (step + 1) / warm
        else:
            lr = 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        out = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    before = min(_median(ls[i - 2 : i + 3]) for i in range(22, warm - 10))
    jump = max(ls[warm - 10 : warm + 20])
    ctx.check("loss jumps near the peak over 2x the warm-up's best", jump > 2 * before)
    ctx.check("recovers: last 20 under the warm-up's best", _median(ls[-20:]) < before)
    ctx.check("finite", _finite(ls))


@scenario(
    family="didgeridoo_circular_breath_onecycle_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a small conv1d classifier on noisy breath-pressure traces: OneCycleLR, clipping at "
    "1.0, label smoothing 0.1, AdamW with a no-decay group for biases (control)",
)
def h641_didgeridoo_breath_onecycle(ctx: Context) -> None:
    gen = seeded(64112)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
            self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.gelu(self.conv2(F.gelu(self.conv1(x[:, None]))))
            return self.head(h.mean(-1))

    model = Net()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    total = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=total)
    ctx.attach(model, opt)
    t = torch.linspace(0, 1, 32)
    for _ in range(total):
        y = torch.randint(0, 3, (64,), generator=gen)
        freq = (2.0 + 3.0 * y.float())[:, None]
        phase = torch.rand(64, 1, generator=gen) * 6.28
        x = torch.sin(6.28 * freq * t + phase) + 0.5 * torch.randn(64, 32, generator=gen)
        out = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(out, y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.6x the first 10", _median(ls[-20:]) < 0.6 * _median(ls[:10])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="snowshoe_lacing_sink_depth_gaussian_nll_net",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a Gaussian-NLL regressor (mean and softplus scale heads with a floor): 2-micro-batch "
    "gradient accumulation, ReduceLROnPlateau, clipping, noisy readings, ASGD (control)",
)
def h641_snowshoe_sink_gaussian_nll(ctx: Context) -> None:
    gen = seeded(64113)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.fc2 = nn.Linear(32, 32)
            self.mean = nn.Linear(32, 1)
            self.scale = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
            return self.mean(h), F.softplus(self.scale(h)) + 1e-3

    model = Net()
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=32, noise=0.2)
    accum = 2
    for _ in range(200):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            mu, sd = model(x)
            loss = F.gaussian_nll_loss(mu, y, sd**2) / accum
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 2.0)))
        opt.step()
        ctx.step(total)
        sched.step(float(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under first 10 minus 0.5", _median(ls[-20:]) < _median(ls[:10]) - 0.5
    )
    ctx.check("finite", _finite(ls))
