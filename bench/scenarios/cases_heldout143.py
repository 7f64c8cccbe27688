"""Held-out set 143 (``h143_``): a Hugging Face Llama-4 vision encoder and a GPT-SW3 causal LM
from tiny configs, a GRU and an LSTM, and hand-written models of trades, crafts, sports and
natural phenomena not covered before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs (a warm-up cosine schedule with clipping, OneCycleLR with clipping).
The writer finished 6 faults and 2 controls of the 12 and 4 asked for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _tabular(gen, n_in: int, batch: int, noise: float = 0.05):
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, y + noise * torch.randn(batch, 1, generator=gen)


def _clusters(gen, n_in: int, classes: int, batch: int, spread: float = 1.0):
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


class Regressor(nn.Module):
    def __init__(self, n_in, width, depth=2, act=nn.Tanh, n_out=1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), act()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.body(x))


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
    scale=None,
    clip=None,
    sched=None,
    after=None,
    scaler=None,
    forward=None,
):
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            out = forward(model, x)
        loss = loss_fn(out.float(), y)
        total = loss * scale(step) if scale is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(float(loss.detach()))
            else:
                sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


# -- Hugging Face Llama-4 vision encoder on digits: q/k param group at the wrong rate --------


def _llama4_vision():
    from transformers import Llama4VisionConfig, Llama4VisionModel

    config = Llama4VisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=16,
        patch_size=4,
        num_channels=1,
        vision_output_dim=32,
        projector_input_dim=32,
        projector_output_dim=32,
        pixel_shuffle_ratio=0.5,
    )
    return Llama4VisionModel(config)


class VisionDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _llama4_vision()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="nearest")
        h = self.encoder(pixel_values=img).last_hidden_state
        return self.head(h.mean(1))


@scenario(
    family="hf_llama4_vision_digits",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("encoder.model.layers.0.self_attn", "encoder.model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="AdamW with param groups: the q_proj/k_proj group was meant to get lr 3e-4 (a "
    "muP-style smaller rate) but the config says 3e-1 and weight_decay 0; the query and key "
    "weights grow fast and the attention logits q.k/sqrt(d) grow by an order of magnitude.",
)
def h143_llama4_vision_qk_group(ctx: Context) -> None:
    gen = seeded(14301)
    model = VisionDigits()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if "q_proj" not in n and "k_proj" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": qk, "lr": 3e-1, "weight_decay": 0.0}]
    )
    attn = model.encoder.model.layers[0].self_attn
    store: dict[str, torch.Tensor] = {}
    attn.q_proj.register_forward_hook(lambda _m, _i, o: store.__setitem__("q", o.detach()))
    attn.k_proj.register_forward_hook(lambda _m, _i, o: store.__setitem__("k", o.detach()))
    logit_max: list[float] = []

    def after(_step):
        q = store["q"].reshape(*store["q"].shape[:-1], 2, 16).transpose(-2, -3)
        k = store["k"].reshape(*store["k"].shape[:-1], 2, 16).transpose(-2, -3)
        logit_max.append(float((q @ k.transpose(-1, -2) / 4.0).abs().max()))

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        120,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("attention logits grew >10x", max(logit_max[-10:]) > 10 * max(logit_max[:3]))
    ctx.check("max |q.k/sqrt(d)| above 30", max(logit_max) > 30)
    ctx.check("loss finite", _finite(ctx.losses))


# -- Hugging Face GPT-SW3 causal LM: an ordinary warm-up run -------------------------------------


@scenario(
    family="hf_gpt_sw3_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="GPT-SW3 config (tiny) on stdlib bytes: AdamW, linear warm-up then cosine decay "
    "(LambdaLR), clipping at 1.0.",
)
def h143_gpt_sw3_warmup_control(ctx: Context) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    gen = seeded(14302)
    config = AutoConfig.for_model(
        "gpt-sw3",
        vocab_size=128,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 150) / 150)) + 0.05,
    )

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        150,
        lm,
        clip=1.0,
        sched=sched,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


# -- cooper's stave classifier: z-loss coefficient with the wrong sign -------------------------


@scenario(
    family="cooper_stave_grain_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A z-loss (coef * logsumexp(logits)^2) meant to keep the logits small is added with "
    "coef -1e-2 instead of 1e-2: it rewards large logits, and the head's logits grow without "
    "bound while accuracy is unchanged.",
)
def h143_cooper_zloss_sign(ctx: Context) -> None:
    gen = seeded(14303)
    model = Regressor(12, 64, act=nn.ReLU, n_out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    store: dict[str, float] = {}
    scale: list[float] = []

    def loss_fn(out, y):
        store["z"] = float(out.detach().abs().max())
        return F.cross_entropy(out, y) - 2e-2 * torch.logsumexp(out, 1).pow(2).mean()

    _train(
        ctx,
        model,
        opt,
        _clusters(gen, 12, 6, 64),
        90,
        loss_fn,
        classifier=True,
        after=lambda _s: scale.append(store["z"]),
    )
    ctx.check("head logits grew >20x", max(scale[-5:]) > 20 * scale[0])
    ctx.check("logits kept growing in the last half", scale[-1] > 1.5 * scale[45])


# -- church-bell (bellfounder) tone classifier: temperature in the wrong units ------------------


class BellTone(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, 8)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.body(x)) / self.temperature


@scenario(
    family="bellfounder_tone_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The softmax temperature is read from a config in milliseconds-style units: 0.002 "
    "instead of 2.0, so logits are multiplied by 500; float32 softmax rounds most target "
    "probabilities to exactly 1 and the gradients of those rows vanish.",
)
def h143_bellfounder_temperature(ctx: Context) -> None:
    gen = seeded(14304)
    model = BellTone(0.002)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    frac: list[float] = []
    store: dict[str, torch.Tensor] = {}

    def loss_fn(out, y):
        store["o"], store["y"] = out.detach(), y
        return F.cross_entropy(out, y)

    _train(
        ctx,
        model,
        opt,
        _clusters(gen, 16, 8, 64, spread=0.8),
        100,
        loss_fn,
        classifier=True,
        after=lambda _s: frac.append(collapsed_fraction(store["o"], store["y"])),
    )
    ctx.check("over half the rows collapsed to p=1 by the end", _mean(frac[-10:]) > 0.5)
    ctx.check("more collapsed at the end than at the start", _mean(frac[-10:]) > frac[0])


# -- stonemason joint-load regressor: full-batch SGD with a warm-up peak 10x too high ----------


@scenario(
    family="stonemason_joint_load_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=30,
    note="Full-batch SGD with a linear warm-up whose peak lr was typed 0.8 instead of 0.08: "
    "once the lr passes 2/sharpness (around step 30) the loss oscillates and blows up.",
)
def h143_stonemason_warmup_peak(ctx: Context) -> None:
    gen = seeded(14305)
    model = Regressor(8, 32, depth=2)
    x = torch.randn(256, 8, generator=gen) * 2.0
    y = torch.tanh(x[:, :1]) + 0.3 * x[:, 1:2]

    def full():
        while True:
            yield x, y

    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 0.8 * min(1.0, (step + 1) / 60)

    _train(ctx, model, opt, full(), 120, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("loss fell during early warm-up", min(ls[:25]) < 0.8 * ls[0])
    ctx.check("loss blew up >100x its minimum", (not _finite(ls)) or max(ls) > 100 * min(ls))


# -- arrow-drop regressor (archery range): xavier gain typed 3.0 in a deep tanh stack ----------


@scenario(
    family="longbow_arrow_drop_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="A 10-layer tanh regressor initialised with xavier_normal_(gain=3.0) (the config meant "
    "gain 5/3 for tanh, typed 3): the stack is chaotic and the gradients grow back through depth, "
    "largest at the first layer.",
)
def h143_arrow_drop_gain_typo(ctx: Context) -> None:
    gen = seeded(14306)
    model = Regressor(6, 48, depth=10)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    first: list[float] = []
    last: list[float] = []

    def after(_s):
        first.append(float(model.body[0].weight.grad.norm()))
        last.append(float(model.body[18].weight.grad.norm()))

    _train(ctx, model, opt, _tabular(gen, 6, 64), 100, F.mse_loss, after=after)
    ctx.check("first-layer gradient >5x the last layer's at step 0", first[0] > 5 * last[0])
    ctx.check("loss finite", _finite(ctx.losses))


# -- geyser (mud volcano) interval GRU: the recurrent group frozen by an lr typo ---------------


class IntervalGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _series(gen, batch, length=20):
    while True:
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        freq = 0.2 + 0.3 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length + 1).float()
        s = torch.sin(freq * t + phase)
        x = torch.stack([s[:, :-1], torch.cos(freq * t[:-1] + phase), freq.expand(-1, length)], -1)
        yield x + 0.05 * torch.randn(x.shape, generator=gen), s[:, -1:]


@scenario(
    family="mud_volcano_interval_gru",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="Adam with param groups: the GRU group's lr is read from a field that is 0 (the "
    "fine-tuning recipe's 'freeze encoder' default), so the recurrent weights never move "
    "and only the head trains.",
)
def h143_mud_volcano_gru_frozen(ctx: Context) -> None:
    gen = seeded(14307)
    model = IntervalGRU()
    opt = torch.optim.Adam(
        [
            {"params": model.rnn.parameters(), "lr": 0.0},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    w0 = model.rnn.weight_hh_l0.detach().clone()
    h0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _series(gen, 32), 120, F.mse_loss)
    ctx.check("GRU weights unchanged", bool(torch.equal(w0, model.rnn.weight_hh_l0.detach())))
    ctx.check("head moved", float((model.head.weight.detach() - h0).norm()) > 1e-3)
    ctx.check("finite", _finite(ctx.losses))


# -- didgeridoo drone LSTM: an ordinary OneCycleLR run (control) -------------------------------


class DroneLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


@scenario(
    family="didgeridoo_drone_lstm",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="LSTM, BCE with logits (is the drone rising at the end?), SGD Nesterov with OneCycleLR "
    "and clipping at 1.0.",
)
def h143_didgeridoo_lstm_control(ctx: Context) -> None:
    gen = seeded(14308)
    model = DroneLSTM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=150)
    base = _series(gen, 32)

    def batches():
        for x, y in base:
            yield x, (y[:, 0] > 0).float()

    _train(
        ctx, model, opt, batches(), 150, F.binary_cross_entropy_with_logits, clip=1.0, sched=sched
    )
    ctx.check("loss fell", _fell(ctx.losses))
