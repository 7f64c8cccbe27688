"""Held-out set 125 (``h125_``): Hugging Face Dory, AXK1 and AXK2 causal LMs from tiny configs,
and hand-written models of weather, farming, civil-engineering and medical-device settings.

Every scenario is held out: do not read it while tuning detectors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    lm_loss,
    ramp,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces ----------------------------------------------------------------------------------


def _tiny_lm_kwargs() -> dict:
    return dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )


def _mla_moe_kwargs() -> dict:
    return dict(
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_group=1,
        topk_group=1,
    )


def hf_dory():
    from transformers import DoryConfig, DoryForCausalLM

    return DoryForCausalLM(DoryConfig(**_tiny_lm_kwargs()))


def hf_axk1():
    from transformers import AXK1Config, AXK1ForCausalLM

    cfg = AXK1Config(**_tiny_lm_kwargs(), **_mla_moe_kwargs(), mlp_layer_types=["dense", "sparse"])
    return AXK1ForCausalLM(cfg)


def hf_axk2():
    from transformers import AXK2Config, AXK2ForCausalLM

    cfg = AXK2Config(
        **_tiny_lm_kwargs(),
        **_mla_moe_kwargs(),
        first_k_dense_replace=1,
        index_n_heads=2,
        index_head_dim=16,
    )
    return AXK2ForCausalLM(cfg)


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _train(
    ctx: Context,
    model,
    opt,
    batches,
    steps,
    loss_of,
    *,
    before=None,
    after_backward=None,
    targets=None,
    scaler=None,
    grad_norms=None,
):
    """A plain loop: ``loss.backward(); opt.step(); ctx.step(loss)`` each step."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        batch = next(batches)
        if before is not None:
            batch = before(step, batch) or batch
        if targets is not None:
            ctx.targets(targets(batch))
        loss, total = loss_of(model, batch, step)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        if after_backward is not None:
            after_backward(step)
        gn = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        ctx.grad_norms.append(float(torch.stack(gn).norm()) if gn else 0.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _lm_loss_of(model, batch, step):
    x, y = batch
    loss = lm_loss(model(input_ids=x).logits, y)
    return loss, loss


def _warmup_cosine(opt, base: float, warm: int, steps: int):
    def before(step, batch):
        if step < warm:
            lr = base * (step + 1) / warm
        else:
            lr = base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(steps - warm, 1)))
        for g in opt.param_groups:
            g["lr"] = max(lr, base * 0.05)
        return batch

    return before


# -- Hugging Face causal LMs ------------------------------------------------------------------------


@scenario(
    "hf_dory_lm",
    "adamw",
    "output_logit_divergence",
    where=("lm_head",),
    diverges="auto",
    heldout=True,
    note="final RMSNorm swapped for Identity in a port, head at 500x the body's rate",
)
def h125_dory_head_runaway(ctx: Context) -> None:
    gen = seeded(12501)
    model = hf_dory()
    model.model.norm = nn.Identity()
    body = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": 1e-3}, {"params": model.lm_head.parameters(), "lr": 0.5}],
        weight_decay=0.0,
    )
    batches = text_batches(gen, batch=8, length=32)
    probe = next(batches)[0]
    with torch.no_grad():
        start = float(model(input_ids=probe).logits.abs().max())
    _train(ctx, model, opt, batches, 160, _lm_loss_of)
    with torch.no_grad():
        end = model(input_ids=probe).logits.abs().max()
    ctx.check("output logits grew more than 20x", bool(end > 20 * start))
    ctx.check("output logits above 100", bool(end > 100) or not torch.isfinite(end))
    ctx.check(
        "loss ends above its best",
        ctx.losses[-1] > 1.5 * min(ctx.losses) or not math.isfinite(ctx.losses[-1]),
    )


@scenario("hf_dory_lm", "nadam", "healthy", heldout=True, note="warmup + cosine, bursty text")
def h125_dory_control(ctx: Context) -> None:
    gen = seeded(12502)
    model = hf_dory()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    steps = 160
    _train(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        steps,
        _lm_loss_of,
        before=_warmup_cosine(opt, 3e-3, 15, steps),
    )
    ctx.check("all losses finite", _finite(ctx.losses))
    ctx.check("loss fell by a third", _mean(ctx.losses[-10:]) < 0.67 * _mean(ctx.losses[:5]))


@scenario(
    "hf_axk1_lm",
    "adam",
    "adam_second_moment_poisoned",
    where=("lm_head",),
    heldout=True,
    onset=60,
    note="one step's lm_head gradient taken before unscaling (x1e6): Adam's v poisoned",
)
def h125_axk1_head_moment_poisoned(ctx: Context) -> None:
    gen = seeded(12503)
    model = hf_axk1()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    head = model.lm_head.weight
    snaps = {}

    def after_backward(step):
        if step == 60:
            head.grad.mul_(1e6)
        if step in (30, 59, 100, 160):
            snaps[step] = head.detach().clone()
        if step == 59:
            snaps["v"] = float(opt.state[head]["exp_avg_sq"].max())

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        170,
        _lm_loss_of,
        after_backward=after_backward,
    )
    v_after = float(opt.state[head]["exp_avg_sq"].max())
    ctx.check("lm_head second moment up more than 1e6x", v_after > 1e6 * snaps["v"])
    before_move = float((snaps[59] - snaps[30]).norm()) / 29
    after_move = float((snaps[160] - snaps[100]).norm()) / 60
    ctx.check("lm_head updates stalled after the poisoning", after_move < 0.1 * before_move)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "hf_axk2_lm",
    "radam",
    "nonfinite",
    diverges=80,
    heldout=True,
    onset=80,
    note="a padding-only batch: every label -100, token-mean loss 0/0 = NaN poisons the weights",
)
def h125_axk2_padding_batch_nan(ctx: Context) -> None:
    gen = seeded(12504)
    model = hf_axk2()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def loss_of(m, batch, step):
        x, y = batch
        mask = torch.ones_like(y, dtype=torch.float32)
        if step == 80:
            mask = torch.zeros_like(mask)  # a padding-only batch
        logits = m(input_ids=x).logits
        per_token = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1), reduction="none")
        loss = (per_token * mask.reshape(-1)).sum() / mask.sum()  # token-averaged by hand
        return loss, loss

    _train(ctx, model, opt, text_batches(gen, batch=8, length=32), 110, loss_of)
    ctx.check("losses finite before the batch", _finite(ctx.losses[:80]))
    ctx.check("loss at the batch is NaN", math.isnan(ctx.losses[80]))
    ctx.check(
        "weights non-finite afterwards",
        not all(bool(torch.isfinite(p).all()) for p in model.parameters()),
    )


@scenario("hf_axk2_lm", "adamax", "healthy", heldout=True, note="steady Adamax, linear decay")
def h125_axk2_control(ctx: Context) -> None:
    gen = seeded(12505)
    model = hf_axk2()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.2, total_iters=150)

    def before(step, batch):
        if step:
            sched.step()
        return batch

    _train(ctx, model, opt, text_batches(gen, batch=8, length=32), 150, _lm_loss_of, before=before)
    ctx.check("all losses finite", _finite(ctx.losses))
    ctx.check("loss fell by a third", _mean(ctx.losses[-10:]) < 0.67 * _mean(ctx.losses[:5]))


# -- hand-written models ----------------------------------------------------------------------------


def _stream(gen, make, batch):
    while True:
        yield make(gen, batch)


def _mse_of(model, batch, step):
    x, y = batch
    loss = F.mse_loss(model(x), y)
    return loss, loss


class RadarAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.last_logit = 0.0

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_logit = float(logits.detach().abs().max())
        return self.o(torch.softmax(logits, -1) @ v)


class TornadoScorer(nn.Module):
    """Scores a sequence of radar-volume features (rotation, shear, reflectivity...)."""

    def __init__(self, feats: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"ln": nn.LayerNorm(dim), "attn": RadarAttention(dim)}) for _ in range(2)
        )
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = h + b["attn"](b["ln"](h))
        return self.head(h.mean(1))

    def max_logit(self) -> float:
        return max(b["attn"].last_logit for b in self.blocks)


def _radar(gen, batch):
    x = torch.randn(batch, 16, 8, generator=gen)
    # a rotation couplet (feature 0) persisting with strong shear (feature 1) marks a tornado
    hook = torch.rand(batch, generator=gen) < 0.5
    t0 = torch.randint(0, 12, (batch,), generator=gen)
    for i in torch.nonzero(hook).flatten().tolist():
        x[i, t0[i] : t0[i] + 4, 0] += 2.0
        x[i, t0[i] : t0[i] + 4, 1] += 1.5
    return x, hook.long()


def _ce_of(model, batch, step):
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    return loss, loss


@scenario(
    "tornado_warning_scorer",
    "adam",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges="auto",
    heldout=True,
    note="an lr override meant for the embedding matched q/k projections (60x)",
)
def h125_tornado_qk_lr_override(ctx: Context) -> None:
    gen = seeded(12506)
    model = TornadoScorer()
    qk = [p for n, p in model.named_parameters() if n.split(".")[-2] in ("q", "k")]
    rest = [p for n, p in model.named_parameters() if n.split(".")[-2] not in ("q", "k")]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": qk, "lr": 6e-2}])
    logits = []

    def before(step, batch):
        logits.append(model.max_logit())
        return batch

    _train(
        ctx,
        model,
        opt,
        _stream(gen, _radar, 64),
        200,
        _ce_of,
        before=before,
        targets=lambda b: b[1],
    )
    logits.append(model.max_logit())
    ctx.check("attention logits grew more than 10x", logits[-1] > 10 * max(logits[1], 1e-3))
    ctx.check("attention logits above 50", logits[-1] > 50)


@scenario("tornado_warning_scorer", "rmsprop", "healthy", heldout=True, note="RMSprop, step decay")
def h125_tornado_control(ctx: Context) -> None:
    gen = seeded(12507)
    model = TornadoScorer()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 80, 0.5)

    def before(step, batch):
        if step:
            sched.step()
        return batch

    _train(
        ctx,
        model,
        opt,
        _stream(gen, _radar, 64),
        200,
        _ce_of,
        before=before,
        targets=lambda b: b[1],
    )
    ctx.check("all losses finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("attention logits stayed moderate", model.max_logit() < 30)


class Net(nn.Module):
    def __init__(self, sizes, act=nn.ReLU) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _greenhouse(gen, batch):
    # air temperature, humidity, CO2, sun, outside temperature, wind, vent, hour
    x = torch.randn(batch, 8, generator=gen) * 2.0
    heat = 0.8 * x[:, 4:5] - 0.5 * x[:, 0:1] + 0.3 * x[:, 3:4] * x[:, 5:6] + 0.2 * x[:, 1:2]
    return x, heat + 0.05 * torch.randn(batch, 1, generator=gen)


def _sharpness(model, loss_fn, batch, iters: int = 15) -> float:
    params = [p for p in model.parameters()]
    loss = loss_fn(model, batch, 0)[0]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "greenhouse_climate_controller",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="SGD warmup ramps the lr past 2/sharpness",
)
def h125_greenhouse_lr_past_edge(ctx: Context) -> None:
    gen = seeded(12508)
    model = Net([8, 48, 48, 1], nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = _stream(gen, _greenhouse, 128)
    probe = next(batches)
    lrs = []

    def before(step, batch):
        lr = ramp(step, 1e-3, 1.0, 200)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        return batch

    _train(ctx, model, opt, batches, 200, _mse_of, before=before)
    fin = [v for v in ctx.losses if math.isfinite(v)]
    best = min(fin)
    broke = next(i for i, v in enumerate(ctx.losses) if not math.isfinite(v) or v > 20 * best)
    ctx.check("loss fell first", best < 0.5 * ctx.losses[0])
    ctx.check("then blew up", not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 20 * best)
    seed_model = Net([8, 48, 48, 1], nn.Tanh)
    torch.manual_seed(12508)
    seed_model = Net([8, 48, 48, 1], nn.Tanh)
    ctx.check(
        "lr at the break above 2/sharpness at init",
        lrs[broke] > 2 / max(_sharpness(seed_model, _mse_of, probe), 1e-9),
    )


def _orchard(gen, batch):
    # chill hours, spring frost days, rain, tree age, rootstock vigour, thinning (standardised)
    x = torch.randn(batch, 6, generator=gen)
    t = 30 + 6 * x[:, :1] - 4 * x[:, 1:2] + 2 * x[:, 2:3] * x[:, 3:4] + 3 * torch.tanh(x[:, 4:5])
    return x, (t + torch.randn(batch, 1, generator=gen)) / 10  # tonnes per hectare / 10


@scenario(
    "orchard_yield_regressor",
    "rmsprop",
    "data_outlier",
    heldout=True,
    onset=120,
    note="one block's yields logged in kg/ha instead of t/ha",
)
def h125_orchard_kg_batch(ctx: Context) -> None:
    gen = seeded(12509)
    model = Net([6, 64, 64, 1])
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def before(step, batch):
        x, y = batch
        return (x, y * 1000) if step == 120 else (x, y)

    _train(ctx, model, opt, _stream(gen, _orchard, 64), 220, _mse_of, before=before)
    pre = _mean(ctx.losses[100:120])
    ctx.check("loss at the bad batch above 1000x the loss before", ctx.losses[120] > 1000 * pre)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "the run goes on (loss back below 1% of the spike)",
        _mean(ctx.losses[-20:]) < 0.01 * ctx.losses[120],
    )


class HailCNN(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 16, 5)
        self.temperature = temperature

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.head(x.flatten(1)) / self.temperature


def _hail(gen, batch):
    # a reflectivity patch: a core whose width and strength grow with the hailstone size class
    y = torch.randint(0, 5, (batch,), generator=gen)
    r = torch.arange(8.0)
    cy, cx = torch.rand(2, batch, generator=gen) * 3 + 2.5
    d2 = (r[None, :, None] - cy[:, None, None]) ** 2 + (r[None, None, :] - cx[:, None, None]) ** 2
    width = 0.6 + 0.5 * y.float()
    img = (0.5 + 0.2 * y.float())[:, None, None] * torch.exp(-d2 / (2 * width[:, None, None] ** 2))
    return (img + 0.1 * torch.randn(batch, 8, 8, generator=gen))[:, None], y


@scenario(
    "hailstone_size_classifier",
    "adagrad",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="temperature read as 0.002 (percent given as a fraction): float32 softmax saturates",
)
def h125_hail_temperature_units(ctx: Context) -> None:
    gen = seeded(12510)
    model = HailCNN(temperature=0.002)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = _stream(gen, _hail, 64)
    probe = next(batches)
    with torch.no_grad():
        start = collapsed_fraction(model(probe[0]), probe[1])
    _train(ctx, model, opt, batches, 200, _ce_of, targets=lambda b: b[1])
    with torch.no_grad():
        end = collapsed_fraction(model(probe[0]), probe[1])
    ctx.check("many rows collapse to p=1.0 exactly", end > 0.3)
    ctx.check("collapse grew during training", end > start + 0.15)


def _drought(gen, batch):
    # 12 months of precipitation and temperature anomalies -> next season's drought index
    x = torch.randn(batch, 24, generator=gen)
    w = torch.linspace(0.2, 1.0, 12)
    y = (x[:, :12] * w).sum(1, keepdim=True) / 3 - 0.3 * x[:, 12:].mean(1, keepdim=True)
    return x, y + 0.1 * torch.randn(batch, 1, generator=gen)


@scenario(
    "drought_index_forecaster",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="the L2 prior added with the wrong sign: the weights creep up and the loss climbs",
)
def h125_drought_negated_prior(ctx: Context) -> None:
    gen = seeded(12511)
    model = Net([24, 64, 64, 1], nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def loss_of(m, batch, step):
        x, y = batch
        loss = F.mse_loss(m(x), y)
        prior = sum((p * p).sum() for p in m.parameters())
        return loss, loss - 5e-2 * prior

    _train(ctx, model, opt, _stream(gen, _drought, 64), 300, loss_of)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(v for v in ctx.losses if math.isfinite(v))
    ctx.check("weights grew more than 2x", w1 > 2 * w0)
    ctx.check(
        "loss climbed well above its best",
        not math.isfinite(ctx.losses[-1]) or _mean(ctx.losses[-20:]) > 3 * best,
    )
    ctx.check(
        "no single-step jump (a slow climb)",
        max(
            b - a for a, b in zip(ctx.losses[:-1], ctx.losses[1:], strict=False) if math.isfinite(b)
        )
        < 5 * best + 1,
    )


class IceRNN(nn.Module):
    def __init__(self, gain: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 48, nonlinearity="relu", batch_first=True)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _river_ice(gen, batch):
    # 60 days of air temperature, discharge and snow depth -> days to breakup
    x = torch.randn(batch, 60, 3, generator=gen) * 0.5
    y = x[:, -20:, 0].sum(1, keepdim=True) / 5 + x[:, -10:, 1].mean(1, keepdim=True)
    return x, y


@scenario(
    "river_ice_breakup_model",
    "sgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="ReLU RNN over 60 days with recurrent orthogonal gain 2.2, no clipping",
)
def h125_river_ice_relu_gain(ctx: Context) -> None:
    gen = seeded(12512)
    model = IceRNN(gain=2.2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _stream(gen, _river_ice, 32), 80, _mse_of)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient norm above 1e4", not g or max(g) > 1e4 or not _finite(ctx.grad_norms))
    ctx.check(
        "loss blew up (non-finite or 100x its start)",
        not _finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0],
    )


def _feedback(gen, batch):
    # microphone frame features -> feedback-path filter taps to cancel
    x = torch.randn(batch, 16, generator=gen)
    taps = torch.sin(x[:, :8] * 1.5) + 0.5 * x[:, 8:] * x[:, :8]
    return x, taps


@scenario(
    "hearing_aid_feedback_canceller",
    "nesterov",
    "loss_of_plasticity",
    where=("net.0", "net.2"),
    heldout=True,
    onset=150,
    note="a warm restart configured at 100x the peak: the ReLUs die and the net stops learning",
)
def h125_hearing_aid_restart(ctx: Context) -> None:
    gen = seeded(12513)
    model = Net([16, 64, 64, 8])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    batches = _stream(gen, _feedback, 64)
    probe = next(batches)[0]

    def before(step, batch):
        lr = 2.0 if 150 <= step < 155 else 0.02
        for g in opt.param_groups:
            g["lr"] = lr
        return batch

    def dead():
        with torch.no_grad():
            h1 = model.net[1](model.net[0](probe))
            return max(dead_fraction(h1), dead_fraction(model.net[3](model.net[2](h1))))

    marks = {}

    def before_and_mark(step, batch):
        if step == 150:
            marks["d0"] = dead()
        return before(step, batch)

    _train(ctx, model, opt, batches, 300, _mse_of, before=before_and_mark)
    d0, d1 = marks["d0"], dead()
    pre = _mean(ctx.losses[130:150])
    ctx.check("ReLUs mostly dead after the restart", d1 > 0.7 and d1 > d0 + 0.4)
    ctx.check("loss stays above its pre-restart level", _mean(ctx.losses[-30:]) > 1.5 * pre)


def _insulin(gen, batch, raw: bool = False):
    # glucose (mmol/L), carbs (g/10), activity, time since last dose, sensitivity, weight
    x = torch.randn(batch, 6, generator=gen)
    x[:, 0] = 8 + 2 * x[:, 0]
    dose = 0.4 * (x[:, :1] - 6) + 0.6 * x[:, 1:2] - 0.3 * x[:, 2:3]
    if raw:
        x[:, 0] = x[:, 0] * 18.0 * 1000  # mg/dL from a raw sensor stream in ug/dL
    return x, dose + 0.1 * torch.randn(batch, 1, generator=gen)


@scenario(
    "insulin_dose_regressor",
    "adamw",
    "amp_overflow",
    where=("net.0",),
    diverges=100,
    heldout=True,
    onset=100,
    note="fp16 autocast + GradScaler; a sensor feed switches to ug/dL: activations overflow fp16",
)
def h125_insulin_fp16_units(ctx: Context) -> None:
    gen = seeded(12514)
    model = Net([6, 64, 64, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def make(g, b):
        return _insulin(g, b)

    def before(step, batch):
        return _insulin(gen, 64, raw=step >= 100)

    def loss_of(m, batch, step):
        x, y = batch
        with torch.autocast("cpu", dtype=torch.float16):
            out = m(x)
        loss = F.mse_loss(out.float(), y)
        return loss, loss

    _train(ctx, model, opt, _stream(gen, make, 64), 140, loss_of, before=before, scaler=scaler)
    ctx.check("finite before the switch", _finite(ctx.losses[:100]))
    ctx.check(
        "loss non-finite after the switch", not any(math.isfinite(v) for v in ctx.losses[100:])
    )
    ctx.check("the scaler backed off more than 2^10", ctx.scales[-1] < ctx.scales[99] / 2**10)
    ctx.check(
        "weights kept finite (steps skipped)",
        all(bool(torch.isfinite(p).all()) for p in model.parameters()),
    )


class StrainAE(nn.Module):
    """Autoencoder of strain-gauge windows; reconstruction error flags anomalies."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 6))
        self.dec = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 32))

    def forward(self, x):
        return self.dec(self.enc(x))


def _strain(gen, batch):
    t = torch.linspace(0, 1, 32)
    f = 1 + torch.rand(batch, 1, generator=gen) * 3
    a = 0.5 + torch.rand(batch, 1, generator=gen)
    x = a * torch.sin(2 * math.pi * f * t) + 0.05 * torch.randn(batch, 32, generator=gen)
    return x, x


@scenario(
    "bridge_strain_detector",
    "sgd_mom",
    "gradient_spike",
    heldout=True,
    onset=90,
    note="one batch's loss summed instead of averaged (x batch x 32): a single gradient spike",
)
def h125_bridge_summed_batch(ctx: Context) -> None:
    gen = seeded(12515)
    model = StrainAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss_of(m, batch, step):
        x, y = batch
        loss = F.mse_loss(m(x), y)
        return loss, (loss * 64 * 32 / 200 if step == 90 else loss)

    _train(ctx, model, opt, _stream(gen, _strain, 64), 200, loss_of)
    g = ctx.grad_norms
    med = sorted(g[60:90])[15]
    ctx.check("gradient at the batch above 5x the median", g[90] > 5 * med)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check(
        "training recovers below its pre-spike loss",
        _mean(ctx.losses[-20:]) < 1.2 * _mean(ctx.losses[70:90]),
    )


class CrackSeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, 8, 3, padding=1)
        self.enc2 = nn.Conv2d(8, 16, 3, padding=1)
        self.dec = nn.Conv2d(16 + 8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        a = F.relu(self.enc1(x))
        b = F.relu(self.enc2(F.max_pool2d(a, 2)))
        b = F.interpolate(b, scale_factor=2)
        return self.out(F.relu(self.dec(torch.cat([a, b], 1))))


def _asphalt(gen, batch):
    # 16x16 pavement patch: textured grey with a thin dark crack along a random line
    img = 0.5 + 0.1 * torch.randn(batch, 1, 16, 16, generator=gen)
    mask = torch.zeros(batch, 1, 16, 16)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ang = torch.rand(batch, generator=gen) * math.pi
    off = (torch.rand(batch, generator=gen) - 0.5) * 8
    for i in range(batch):
        dist = (xs - 8) * torch.sin(ang[i]) - (ys - 8) * torch.cos(ang[i]) - off[i]
        mask[i, 0] = (dist.abs() < 0.8).float()
    return img - 0.35 * mask, mask


def _bce_of(model, batch, step):
    x, y = batch
    loss = F.binary_cross_entropy_with_logits(model(x), y)
    return loss, loss


@scenario("asphalt_crack_segmenter", "adadelta", "healthy", heldout=True, note="Adadelta lr 1.0")
def h125_asphalt_control(ctx: Context) -> None:
    gen = seeded(12516)
    model = CrackSeg()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _train(ctx, model, opt, _stream(gen, _asphalt, 32), 150, _bce_of)
    ctx.check("all losses finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:5]))
