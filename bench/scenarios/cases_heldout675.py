"""Held-out set 675 (``h675_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face BLT local decoder built from a tiny
config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    grad_norm,
    scenario,
    seeded,
    text_bytes,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _Regressor(nn.Module):
    def __init__(self, n_in: int, hidden: int, act: type[nn.Module], out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


class _PelotaAttention(nn.Module):
    def __init__(self, dim: int, qk_norm: bool) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.qk_norm = qk_norm
        self.last_logit = 0.0

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(query), self.k(keys), self.v(keys)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        logits = (q[:, None, :] * k).sum(-1) / math.sqrt(q.shape[-1])
        self.last_logit = float(logits.detach().abs().max())
        return (torch.softmax(logits, -1)[..., None] * v).sum(1)


class _PelotaLocator(nn.Module):
    """Which of 12 wall marks matches the served ball's mark: attention from the query to them."""

    def __init__(self, marks: int = 16, slots: int = 12, dim: int = 32) -> None:
        super().__init__()
        self.mark = nn.Embedding(marks, dim)
        self.slot = nn.Embedding(slots, dim)
        self.attn = _PelotaAttention(dim, qk_norm=False)
        self.head = nn.Linear(dim, slots)

    def forward(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        slots = torch.arange(keys.shape[1])
        kv = self.mark(keys) + self.slot(slots)
        return self.head(self.attn(self.mark(query), kv))


@scenario(
    family="basque_pelota_fronton_wall_mark_attention_locator",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a Basque-pelota fronton wall-mark locator: one attention read from the served ball's "
    "mark to 12 wall marks picks the slot that matches, AdamW at 1e-2 with weight_decay 0; the "
    "ported config dropped qk_norm (False), so nothing bounds q and k and the attention logits "
    "q.k/sqrt(d) grow over 20x while the loss keeps falling",
)
def h675_pelota_wall_mark_no_qk_norm(ctx: Context) -> None:
    gen = seeded(6751)
    model = _PelotaLocator()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    logit_max = []
    for _ in range(250):
        keys = torch.stack([torch.randperm(16, generator=gen)[:12] for _ in range(64)])
        y = torch.randint(0, 12, (64,), generator=gen)
        query = keys.gather(1, y[:, None])[:, 0]
        ctx.targets(y)
        loss = F.cross_entropy(model(keys, query), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        logit_max.append(model.attn.last_logit)
    ctx.check(
        "max attention logit at the end over 20x the first step's",
        logit_max[-1] > 20 * logit_max[0],
    )
    ctx.check("attention logits still growing in the last 50 steps", logit_max[-1] > logit_max[-50])
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="harpsichord_quill_voicing_pluck_force_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a harpsichord quill-voicing pluck-force regressor, SiLU MLP, Adam at 2e-2; the job "
    "resumed at step 100 from a checkpoint whose optimizer state failed to load (the loader "
    "swallowed the key error and left Adam's state empty), so the first resumed steps are "
    "full-size sign steps from fresh moments; the loss spikes once with no gradient burst, "
    "clean data, and the run recovers",
)
def h675_harpsichord_resume_adam_state_lost(ctx: Context) -> None:
    gen = seeded(6752)
    model = _Regressor(8, 128, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(220):
        if step == 100:
            opt.state.clear()  # resumed: optimizer state dict silently not restored
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    before = _median(ls[80:100])
    ctx.check(
        "loss within 3 steps after resume over 3x the median of steps 80-99",
        max(ls[101:104]) > 3 * before,
    )
    ctx.check(
        "gradient at the resume step ordinary (< 3x median of 80-99)",
        g[100] < 3 * _median(g[80:100]),
    )
    ctx.check(
        "loss back under 1.5x the pre-resume median by the end", _median(ls[-20:]) < 1.5 * before
    )
    ctx.check("loss finite throughout", _finite(ls))


class _WindowNorm(nn.Module):
    """Standardises each window of readings with a one-pass variance, E[x^2] - E[x]^2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mean * mean
        return (x - mean) / var.sqrt()


class _KilnWindowNet(nn.Module):
    def __init__(self, window: int = 16) -> None:
        super().__init__()
        self.norm = _WindowNorm()
        self.net = _Regressor(window, 32, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


def _kiln_windows(gen: torch.Generator, batch: int = 32, window: int = 16):
    while True:
        base = 250.0 + 20 * torch.randn(batch, 1, generator=gen)
        slope = 1.0 + torch.rand(batch, 1, generator=gen)
        x = (
            base
            + slope * torch.linspace(-3, 3, window)
            + 2.0 * torch.randn(batch, window, generator=gen)
        )
        yield x, slope


@scenario(
    family="raku_firing_pyrometer_window_slope_relu_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("norm",),
    diverges=60,
    heldout=True,
    onset=60,
    note="a raku-firing pyrometer window regressor (heating slope from 16 readings near 250 C), "
    "each window standardised with a one-pass variance E[x^2] - E[x]^2 and no eps or clamp, "
    "RMSprop; at step 60 the pyrometer sticks and one window is a constant reading, the "
    "variance cancels to zero or below, sqrt/divide gives NaN and the loss is NaN",
)
def h675_raku_pyrometer_stuck_window(ctx: Context) -> None:
    gen = seeded(6753)
    model = _KilnWindowNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _kiln_windows(gen)
    for step in range(120):
        x, y = next(data)
        if step == 60:
            x[5] = 251.37  # stuck pyrometer: the same reading sixteen times
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss)):
            break
    ls = ctx.losses
    ctx.check("loss NaN at step 60", len(ls) == 61 and math.isnan(ls[60]))
    ctx.check("loss finite before step 60", _finite(ls[:60]))
    ctx.check("loss fell before the stuck window", ls[59] < 0.5 * ls[0])


@scenario(
    family="alphorn_bell_resonance_pascal_stage2_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("head",),
    diverges=50,
    heldout=True,
    onset=50,
    note="an alphorn bell-resonance regressor predicting mouthpiece pressure in pascals (about "
    "1e5, head bias set to the target mean), NAdam, a GradScaler from the start; stage 2 from "
    "step 50 turns on fp16 autocast, the head's output (> 65504) overflows to inf in fp16, the "
    "loss is inf every step, the scaler skips every step and its scale collapses",
)
def h675_alphorn_pascal_fp16_stage2(ctx: Context) -> None:
    gen = seeded(6754)
    model = _Regressor(8, 32, nn.SiLU)
    with torch.no_grad():
        model.head.bias.fill_(101325.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    for step in range(130):
        x, y = next(data)
        y = 101325.0 + 500.0 * y
        with torch.autocast("cpu", dtype=torch.float16, enabled=step >= 50):
            out = model(x)
        loss = F.mse_loss(out.float() / 1000.0, y / 1000.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite for steps 0-49", _finite(ls[:50]))
    ctx.check("loss non-finite at every step from 50", not any(math.isfinite(v) for v in ls[50:]))
    ctx.check("scaler scale below 1e-6 by the end", ctx.scales[-1] < 1e-6)


class _DeepTanh(nn.Module):
    def __init__(self, n_in: int = 8, width: int = 48, depth: int = 14, gain: float = 1.0):
        super().__init__()
        sizes = [n_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
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
    family="pole_vault_plant_box_takeoff_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a pole-vault plant-box take-off angle regressor, a 14-layer tanh MLP; the init helper "
    "was called with gain=4.0 (the value meant for the final-layer temperature) instead of "
    "5/3, so the stack sits in the chaotic regime and backpropagated gradients grow layer by "
    "layer towards the input: layer 0's gradient is many times the last layer's, plain SGD",
)
def h675_pole_vault_init_gain_typo(ctx: Context) -> None:
    gen = seeded(6755)
    model = _DeepTanh(gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratios = []
    for _ in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        ratios.append(
            float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0's gradient over 20x the last layer's at step 0", ratios[0] > 20)
    ctx.check("still over 20x over the last 20 steps", _median(ratios[-20:]) > 20)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="salmon_weir_fish_ladder_pool_depth_gelu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a salmon-weir fish-ladder pool-depth regressor, GELU MLP, clipping at 1, SGD "
    "momentum; one shard from a gauge logged in centimetres instead of metres (inputs and "
    "targets x100) is served at step 70, the loss jumps by orders of magnitude and the "
    "gradient with it, the clip holds the update and the run recovers",
)
def h675_salmon_weir_centimetre_shard(ctx: Context) -> None:
    gen = seeded(6756)
    model = _Regressor(8, 32, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(160):
        x, y = next(data)
        if step == 70:
            x, y = 100.0 * x, 100.0 * y  # the centimetre shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 70 over 1000x the median of 50-69", ls[70] > 1000 * _median(ls[50:70]))
    ctx.check("gradient at step 70 over 30x the median of 50-69", g[70] > 30 * _median(g[50:70]))
    ctx.check(
        "loss back under 3x that median by the end", _median(ls[-20:]) < 3 * _median(ls[50:70])
    )
    ctx.check("loss finite throughout", _finite(ls))


class _SounderByteLM(nn.Module):
    """Bytes 32..63 predicted with a BLT local decoder cross-attending to 4-byte patches of 0..31."""

    def __init__(self, vocab: int = 128, dim: int = 32) -> None:
        super().__init__()
        from transformers import BltLocalDecoderConfig
        from transformers.models.blt.modeling_blt import BltLocalDecoder

        config = BltLocalDecoderConfig(
            vocab_size=vocab,
            hidden_size=dim,
            hidden_size_global=dim,
            num_attention_heads=2,
            num_hidden_layers=2,
            intermediate_size=2 * dim,
            cross_attn_k=2,
            max_position_embeddings=64,
        )
        self.embed = nn.Embedding(vocab, dim)
        self.patch = nn.Linear(4 * dim, dim)
        self.decoder = BltLocalDecoder(config)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ctx_bytes: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        b = ctx_bytes.shape[0]
        patches = self.patch(self.embed(ctx_bytes).reshape(b, -1, 4 * self.embed.embedding_dim))
        h = self.decoder(inputs_embeds=self.embed(idx), patch_embeds=patches)
        return self.lm_head(h)


@scenario(
    family="blt_local_decoder_morse_sounder_byte_lm",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("decoder.cross_attn_layers.0", "decoder.cross_attn_layers.1"),
    diverges=None,
    heldout=True,
    note="a Morse telegraph-sounder byte LM on a tiny Hugging Face BLT local decoder (2 layers, "
    "hidden 32), RAdam with layer-wise lr groups; the cross-attention groups' multiplier was "
    "written 1 // 2 (integer division, 0) instead of 1 / 2, so their lr is 0: the cross-"
    "attention weights never move while the rest trains and the loss falls",
)
def h675_blt_sounder_cross_attn_lr_floor_div(ctx: Context) -> None:
    gen = seeded(6757)
    model = _SounderByteLM()
    cross = [p for n, p in model.named_parameters() if ".cross_attn_layers." in n]
    rest = [p for n, p in model.named_parameters() if ".cross_attn_layers." not in n]
    base = 3e-3
    opt = torch.optim.RAdam(
        [{"params": rest, "lr": base}, {"params": cross, "lr": base * (1 // 2)}]
    )
    ctx.attach(model, opt)
    start = [p.detach().clone() for p in cross]
    rest_start = [p.detach().clone() for p in rest]
    data = text_bytes() % 128
    for _ in range(100):
        s = torch.randint(0, len(data) - 65, (16,), generator=gen)
        win = data[s[:, None] + torch.arange(65)]
        ctx_bytes, idx, tgt = win[:, :32], win[:, 32:64], win[:, 33:65]
        logits = model(ctx_bytes, idx)
        ctx.targets(tgt.reshape(-1))
        loss = F.cross_entropy(logits.reshape(-1, 128), tgt.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("cross-attention lr is 0", opt.param_groups[1]["lr"] == 0)
    ctx.check(
        "cross-attention weights exactly unchanged",
        all(torch.equal(a, p.detach()) for a, p in zip(start, cross, strict=True)),
    )
    ctx.check(
        "the rest of the decoder moved",
        any(not torch.equal(a, p.detach()) for a, p in zip(rest_start, rest, strict=True)),
    )
    ctx.check("loss fell (last 10 under 0.7x first 10)", _median(ls[-10:]) < 0.7 * _median(ls[:10]))


class _LeadCameProtos(nn.Module):
    """Nearest-prototype classifier: logits are minus the squared distance to 10 prototypes."""

    def __init__(self, n_in: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.protos = nn.Linear(n_in, classes)  # weight rows are the prototypes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.protos.weight
        return -(x.pow(2).sum(1, keepdim=True) - 2 * x @ w.T + w.pow(2).sum(1)) + self.protos.bias


@scenario(
    family="leadlight_came_solder_joint_prototype_classifier",
    optimizer="SGD Nesterov",
    cause="softmax_collapse",
    where=("protos",),
    diverges=None,
    heldout=True,
    note="a leadlight came solder-joint grader (the digits as 8x8 joint images), a nearest-"
    "prototype classifier with logits = -squared distance, SGD Nesterov; the loader's "
    "/16 rescale was dropped, so pixels are 0..16 and the distances are in the hundreds: the "
    "softmax saturates and a fifth to a third of rows give their target exactly p = 1.0",
)
def h675_leadlight_prototype_raw_pixels(ctx: Context) -> None:
    gen = seeded(6758)
    model = _LeadCameProtos()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    fracs = []
    for _ in range(120):
        x, y = next(batches)
        x = 16.0 * x  # the dropped /16: raw 0..16 pixels
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over 15% of rows at exactly p = 1.0 over the last 20 steps", _median(fracs[-20:]) > 0.15
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="tapestry_warp_weighted_loom_shed_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="a warp-weighted-loom shed-pattern classifier (the digits as 8x8 shed cards), ReLU MLP, "
    "Adagrad; the config's lr was typed 5.0 for 0.05, Adagrad's first steps are full-size and "
    "throw fc1's biases far negative: most fc1 ReLUs die within a few steps, never revive, and "
    "the loss stalls far above what the net reaches",
)
def h675_loom_adagrad_lr_typo_dead_relus(ctx: Context) -> None:
    gen = seeded(6759)
    model = _Regressor(64, 64, nn.ReLU, out=10)
    opt = torch.optim.Adagrad(model.parameters(), lr=5.0)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    xs, _ = digits()
    dead = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(xs))))
    ctx.check("over 60% of fc1 units dead on the whole set at the end", dead[-1] > 0.6)
    ctx.check("no fc1 unit revived over the last 50 steps", dead[-1] >= dead[-50])
    ctx.check("loss stalled above 1.0 over the last 20 steps", _median(ctx.losses[-20:]) > 1.0)


def _top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / n for a in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="fly_fishing_double_haul_line_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="a fly-fishing double-haul line-speed regressor, tanh MLP, plain SGD; the linear "
    "warm-up lr = peak * step / 20 was written without min(1, ...), so after step 20 the lr "
    "keeps growing past the peak, crosses 2 / sharpness and the loss blows up",
)
def h675_fly_fishing_uncapped_warmup(ctx: Context) -> None:
    gen = seeded(67510)
    model = _Regressor(8, 32, nn.Tanh)
    peak = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    ctx.attach(model, opt)
    data = _readings(gen)
    probe = next(data)
    lrs, lam = [], None
    for step in range(200):
        lr = peak * (step + 1) / 20  # missing min(1.0, ...)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step == 20:
            lam = _top_eigenvalue(model, *probe)
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    low = min(ls[:60])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("loss blows up (non-finite or over 100x its low)", blow is not None)
    ctx.check(
        "lr x sharpness (measured at step 20) past 2 by the blow-up",
        blow is not None and lam is not None and lrs[blow] * lam > 2.0,
    )
    ctx.check("loss fell during the warm-up", ls[39] < 0.7 * ls[0])


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    family="shakuhachi_meri_kari_pitch_sgdr_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a shakuhachi meri/kari fingering classifier (the digits as 8x8 fingering charts), ReLU "
    "MLP, SGD momentum with CosineAnnealingWarmRestarts(T_0=20, T_mult=2): the lr jumps back "
    "to its peak at steps 20, 60 and 140; after the first cycle the loss jumps up at each restart"
    " (60, 140), then falls lower; "
    "alarming-looking, healthy",
)
def h675_shakuhachi_sgdr_tmult2(ctx: Context) -> None:
    gen = seeded(67511)
    model = _Regressor(64, 64, nn.ReLU, out=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=20, T_mult=2)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(170):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    for r in (60, 140):
        ctx.check(
            f"loss jumps after the restart at {r} (max of next 5 over 1.5x mean of previous 5)",
            max(ls[r : r + 5]) > 1.5 * sum(ls[r - 5 : r]) / 5,
        )
    ctx.check("loss fell (last 10 under 0.2x first 10)", _median(ls[-10:]) < 0.2 * _median(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="bobsleigh_push_start_split_time_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a bobsleigh push-start split-time regressor, GELU MLP, Huber loss, OneCycleLR, "
    "4-micro-batch gradient accumulation, clipping at 1.0, Adamax; healthy",
)
def h675_bobsleigh_onecycle_accum(ctx: Context) -> None:
    gen = seeded(67512)
    model = _Regressor(8, 48, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    steps, accum = 150, 4
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16, noise=0.1)
    for _ in range(steps):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell (last 10 under 0.5x first 10)", _median(ls[-10:]) < 0.5 * _median(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="clog_dancing_heel_toe_tap_label_smoothed_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a clog-dancing heel/toe tap classifier (the digits as 8x8 tap maps), SiLU MLP, "
    "label smoothing 0.1, AdamW with two param groups (no decay on biases), "
    "ReduceLROnPlateau on the loss; healthy",
)
def h675_clog_dancing_plateau_smoothing(ctx: Context) -> None:
    gen = seeded(67513)
    model = _Regressor(64, 64, nn.SiLU, out=10)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(160):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step(float(loss))
    ls = ctx.losses
    ctx.check("loss fell (last 10 under 0.4x first 10)", _median(ls[-10:]) < 0.4 * _median(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))
