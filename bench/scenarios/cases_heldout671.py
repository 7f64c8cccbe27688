"""Held-out set 671 (``h671_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Gemma 4 assistant (drafter) built from a tiny
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


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _first_nonfinite(xs: list[float]) -> int:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), -1)


def _mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _tiny_gemma4_assistant(vocab: int = 128):
    from transformers import Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4TextConfig

    text = Gemma4TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
        enable_moe_block=False,
        use_double_wide_mlp=False,
        num_kv_shared_layers=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = Gemma4AssistantConfig(
        text_config=text, backbone_hidden_size=32, use_ordered_embeddings=False
    )
    return Gemma4AssistantForCausalLM(config)


ONSET_RAIN = 35  # the step the first rate is clipped to 0 (measured)
ONSET_GONG = 14  # the step the fp16 prediction first overflows (measured)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="tug_of_war_anchor_lean_pointer_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a tug-of-war anchor-lean classifier: single-head attention over the 10 pullers' "
    "readings picks the anchor; the attention was ported from a paper's pseudo-code that "
    "writes q.k without the 1/sqrt(d) and without the qk LayerNorm, and at Adam lr 2e-2 on a "
    "sharp pointer task the q/k weights grow: the attention logits grow over 20x",
)
def h671_tug_of_war_anchor_unscaled_qk(ctx: Context) -> None:
    gen = seeded(6711)

    class Attn(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, dim)
            self.last_logits = torch.zeros(())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.q(x) @ self.k(x).transpose(1, 2)  # missing: / math.sqrt(d)
            self.last_logits = logits.detach()
            return torch.softmax(logits, -1) @ self.v(x)

    class AnchorNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(5, 16)
            self.attn = Attn(16)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            h = h + self.attn(h)
            return self.head(h.mean(1))

    def batches():
        while True:
            x = torch.randn(64, 10, 5, generator=gen)
            idx = x[:, :, 0].argmax(1)
            best = x[torch.arange(64), idx]
            y = torch.bucketize(best[:, 1], torch.tensor([-0.5, 0.5]))
            yield x, y

    model = AnchorNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    data = batches()
    peaks: list[float] = []
    for _step in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(model.attn.last_logits.abs().max()))
    ctx.check("attention logits grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="hf_gemma4_assistant_bell_harp_tune_drafter",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("pre_projection",),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Gemma 4 assistant (speculative-decoding drafter) trained on "
    "bell-harp tune bytes from a frozen stand-in backbone's embeddings and shared KV states; "
    "the input projection gets its own param group whose lr is read from the config key "
    "'projection_lr' while the config spells it 'proj_lr', so the .get default 0.0 is used: "
    "pre_projection never moves while the drafter's layers and head train",
)
def h671_gemma4_assistant_bell_harp_proj_lr_key(ctx: Context) -> None:
    gen = seeded(6712)
    model = _tiny_gemma4_assistant()
    backbone_embed = torch.randn(128, 32, generator=gen) * 0.5
    backbone_k = torch.randn(32, 16, generator=gen) / math.sqrt(32)
    backbone_v = torch.randn(32, 16, generator=gen) / math.sqrt(32)
    cfg = {"lr": 3e-3, "proj_lr": 3e-3}
    proj = list(model.pre_projection.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("pre_projection")]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": cfg["lr"]},
            {"params": proj, "lr": cfg.get("projection_lr", 0.0)},  # bug: key is 'proj_lr'
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in proj]
    batches = text_batches(gen, batch=8, length=16, vocab=128)
    pos = torch.arange(16)[None].expand(8, 16)
    for _step in range(80):
        x, y = next(batches)
        emb = backbone_embed[x]
        hidden = torch.tanh(emb.cumsum(1) / torch.arange(1, 17)[None, :, None])
        kv = (
            (hidden @ backbone_k)[:, None],
            (hidden @ backbone_v)[:, None],
        )
        states = {"full_attention": kv, "sliding_attention": kv}
        out = model(
            inputs_embeds=torch.cat([emb, hidden], -1), shared_kv_states=states, position_ids=pos
        )
        loss = F.cross_entropy(out.logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(proj, before, strict=True))
    ctx.check("pre_projection never moved (max change 0)", moved == 0.0)
    ctx.check("projection group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="rain_stick_cascade_bead_count_relu_rate_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate",),
    diverges=ONSET_RAIN,
    heldout=True,
    note="a rain-stick bead-cascade count model (Poisson): the rate head was written "
    "relu(h) instead of softplus(h) and the NLL by hand as rate - y*log(rate); once a row's "
    "rate is clipped to exactly 0, log(0) = -inf and 0*log(0) gives NaN in the loss",
    onset=ONSET_RAIN,
)
def h671_rain_stick_relu_rate_log0(ctx: Context) -> None:
    gen = seeded(6713)

    class RateNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp([6, 32, 32], nn.ReLU)
            self.act = nn.ReLU()
            self.rate_lin = nn.Linear(32, 1)
            self.rate = nn.ReLU()  # should be nn.Softplus()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rate(self.rate_lin(self.act(self.body(x))))

    w = torch.randn(6, 1, generator=gen) * 0.8
    model = RateNet()
    nn.init.constant_(model.rate_lin.bias, 3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    ctx.attach(model, opt)
    min_rate: list[float] = []
    for _step in range(150):
        x = torch.randn(64, 6, generator=gen)
        y = torch.poisson((x @ w - 1.0).exp(), generator=gen)
        rate = model(x)
        min_rate.append(float(rate.detach().min()))
        loss = (rate - y * torch.log(rate)).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    k = _first_nonfinite(ctx.losses)
    ctx.check(f"loss is NaN at step {ONSET_RAIN}", k == ONSET_RAIN)
    ctx.check("a rate was exactly 0 at the NaN step", k >= 0 and min_rate[k] == 0.0)
    ctx.check("losses finite before", k > 0 and _finite(ctx.losses[:k]))


@scenario(
    family="gong_forging_hammer_map_ms_fp16_regressor",
    optimizer="SGD (momentum)",
    cause="amp_overflow",
    where=("head",),
    diverges=ONSET_GONG,
    heldout=True,
    note="a gong-forging hammer-map regressor of the ring-down time under fp16 autocast with a "
    "GradScaler: the ring-down targets were logged in milliseconds (20,000-100,000) where the "
    "pipeline expected seconds; as the head's prediction climbs to fit them (the unscaled MSE also "
    "overflows fp16 gradients early, halving the scale) it passes the fp16 maximum 65504, the loss is inf, every step after is skipped and the scale collapses",
    onset=ONSET_GONG,
)
def h671_gong_forging_ms_targets_fp16(ctx: Context) -> None:
    gen = seeded(6714)

    class GongNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp([8, 32, 32], nn.GELU)
            self.act = nn.GELU()
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.body(x)))

    model = GongNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, n_in=8)
    peaks: list[float] = []
    for _step in range(120):
        x, y = next(data)
        y_ms = (2.0 + y * 2.0).clamp(min=0.5) * 30_000.0  # bug: milliseconds, not seconds
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(x)
        peaks.append(float(pred.detach().float().abs().max()))
        loss = F.mse_loss(pred.float(), y_ms)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    k = _first_nonfinite(peaks)
    ctx.check(f"fp16 prediction first overflows at step {ONSET_GONG}", k == ONSET_GONG)
    ctx.check("loss non-finite from then on", k >= 0 and not _finite(ctx.losses[-5:]))
    ctx.check("GradScaler scale fell over 1000x", ctx.scales[-1] < 2.0**10 / 1000)


@scenario(
    family="sea_foam_stack_height_mse_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="a sea-foam stack-height regressor: one shard (step 90) came from a gauge logging in "
    "millimetres instead of metres, so its targets are 1000x; the loss jumps over 100x and "
    "the gradient over 50x for that batch, gradient clipping holds the weights and the run "
    "recovers",
    onset=90,
)
def h671_sea_foam_mm_shard(ctx: Context) -> None:
    gen = seeded(6715)
    model = _mlp([8, 48, 48, 1], nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    for step in range(160):
        x, y = next(data)
        if step == 90:
            y = y * 1000.0  # the millimetre shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at step 90 over 100x the median before", ls[90] > 100 * _median(ls[70:90]))
    ctx.check(
        "gradient at step 90 over 50x the median before", norms[90] > 50 * _median(norms[70:90])
    )
    ctx.check("recovered: late loss below 2x pre-onset", _median(ls[-10:]) < 2 * _median(ls[80:90]))


@scenario(
    family="snow_roller_pin_formation_bce_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="a snow-roller formation classifier (BCE, does a roller form from these wind/snow "
    "readings): the loss weight is looked up per epoch from a dict of percentages, and at the "
    "epoch-boundary step 75 the key is missing and the default 100 (meant as 100%) is used "
    "unscaled: one step with a 100x gradient, not from the data",
    onset=75,
)
def h671_snow_roller_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(6716)
    model = _mlp([10, 32, 32, 1], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    w = torch.randn(10, 1, generator=gen)
    weights = {e: 1.0 for e in range(10)}
    norms: list[float] = []
    for step in range(150):
        x = torch.randn(64, 10, generator=gen)
        y = ((x @ w) > 0).float()
        epoch = step // 25
        lw = weights.get(epoch, 100.0) if step != 75 else weights.get(-1, 100.0)  # missing key
        loss = lw * F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient at step 75 over 30x the median before", norms[75] > 30 * _median(norms[55:75])
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("trained: late loss below early", _median(ctx.losses[-10:]) < _median(ctx.losses[:5]))


@scenario(
    family="quill_pen_nib_slit_unnormalised_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a quill-pen nib-slit grade classifier meant as a cosine classifier with scale 100; "
    "the F.normalize of the features and of the head weights was dropped in a refactor, so "
    "the logits are 100 * W h on raw features and the softmax saturates: over 10% of rows get "
    "their target at p = 1.0 exactly",
)
def h671_quill_nib_cosine_norm_dropped(ctx: Context) -> None:
    gen = seeded(6717)

    class NibNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp([12, 32, 32], nn.ReLU)
            self.act = nn.ReLU()
            self.head = nn.Linear(32, 5, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.body(x))
            return 100.0 * self.head(h)  # bug: meant 100 * normalize(h) @ normalize(W).T

    model = NibNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    centers = torch.randn(5, 12, generator=gen) * 2.0

    def grades():
        while True:
            y = torch.randint(0, 5, (64,), generator=gen)
            yield centers[y] + torch.randn(64, 12, generator=gen), y

    data = grades()
    fracs: list[float] = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        fracs.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 10% of rows at p = 1.0 late", _median(fracs[-10:]) > 0.10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="marbled_paper_comb_spacing_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("2",),
    diverges=None,
    heldout=True,
    note="a marbled-paper comb-spacing regressor: the lr was typed 5e-2 for 5e-4 in the "
    "sweep file; the first Adam steps push the second hidden layer's ReLUs negative on every "
    "input and over half of them die, after which the loss plateaus well above what the model "
    "can fit",
)
def h671_marbled_paper_lr_typo_dead_relu(ctx: Context) -> None:
    gen = seeded(6718)
    model = _mlp([8, 64, 64, 1], nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)  # typo: 5e-4
    ctx.attach(model, opt)
    data = _readings(gen)
    fracs: list[float] = []
    for _step in range(150):
        x, y = next(data)
        h = model[3](model[2](model[1](model[0](x))))
        fracs.append(dead_fraction(h.detach()))
        loss = F.mse_loss(model[4](h), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half of layer 2's ReLUs dead late", _median(fracs[-10:]) > 0.5)
    ctx.check("few dead at start", fracs[0] < 0.2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="moraine_dam_breach_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="a moraine-dam breach-peak regressor, a 12-layer ReLU MLP whose init helper used gain "
    "sqrt(2)*1.6 (a copied 'gain=2.3'): activations and gradients grow about 1.6x per layer, "
    "the first layer's gradient is over 50x the last's; clipped, plain SGD",
)
def h671_moraine_dam_init_gain(ctx: Context) -> None:
    gen = seeded(6719)
    model = _mlp([8] + [32] * 11 + [1], nn.ReLU)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=2.3 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratios: list[float] = []
    for _step in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model[0].bias.grad.norm() / model[22].bias.grad.norm()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer's gradient over 50x the last's", _median(ratios[:10]) > 50)


@scenario(
    family="hail_stone_lobe_count_warmup_bug_regressor",
    optimizer="SGD (momentum)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a hailstone lobe-growth regressor (MSE) with a LambdaLR warm-up written 'step * 0.1' "
    "without the min(1, .) cap: the lr keeps rising past its peak 0.05 and past the 2/sharpness "
    "limit, and the loss blows up",
)
def h671_hail_stone_uncapped_warmup(ctx: Context) -> None:
    gen = seeded(6720)
    model = _mlp([8, 64, 64, 1], nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s * 0.1)  # missing min(1.0, .)
    ctx.attach(model, opt)
    data = _readings(gen)
    for _step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    best = min(v for v in ls if math.isfinite(v))
    ctx.check("lr went past 5x its peak", opt.param_groups[0]["lr"] > 0.25)
    ctx.check("loss blew up over 10x its best", max(ls[-5:]) > 10 * best or not _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="rope_walk_twist_lay_clip_dual_encoder",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a rope-walk twist/lay CLIP-style dual encoder (strand readings vs. lay readings), "
    "symmetric InfoNCE with a learnable logit scale exp(s) clamped at 100 as in CLIP: the scale "
    "climbs from 14 to its clamp (NAdam, own param group), which looks alarming, while the contrastive loss falls",
)
def h671_rope_walk_clip_scale_to_clamp(ctx: Context) -> None:
    gen = seeded(6721)

    class DualEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.strand = _mlp([10, 48, 16], nn.GELU)
            self.lay = _mlp([10, 48, 16], nn.GELU)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            za = F.normalize(self.strand(a), dim=-1)
            zb = F.normalize(self.lay(b), dim=-1)
            return self.logit_scale.exp() * za @ zb.T

    mix = torch.randn(10, 10, generator=gen) / math.sqrt(10)
    model = DualEncoder()
    opt = torch.optim.NAdam(
        [
            {"params": [p for n, p in model.named_parameters() if n != "logit_scale"]},
            {"params": [model.logit_scale], "lr": 3e-1},
        ],
        lr=3e-3,
    )
    ctx.attach(model, opt)
    scales: list[float] = []
    for _step in range(300):
        a = torch.randn(128, 10, generator=gen)
        b = torch.tanh(a @ mix) + 0.01 * torch.randn(128, 10, generator=gen)
        logits = model(a, b)
        t = torch.arange(128)
        ctx.targets(t)
        loss = (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        scales.append(float(model.logit_scale.detach().exp()))
    ls = ctx.losses
    ctx.check("logit scale reached its clamp at 100", max(scales) > 99.9)
    ctx.check("loss fell over 50%", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="icicle_ripple_wavelength_onecycle_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="an icicle-ripple wavelength regressor on noisy readings: Huber loss, OneCycleLR, "
    "4-micro-batch gradient accumulation, gradient clipping at 1.0, ASGD (control)",
)
def h671_icicle_ripple_onecycle_accum(ctx: Context) -> None:
    gen = seeded(6722)
    model = _mlp([8, 48, 48, 1], nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=150, cycle_momentum=False
    )
    ctx.attach(model, opt)
    data = _readings(gen, batch=16, noise=0.15)
    for _step in range(150):
        total = torch.zeros(())
        for _micro in range(4):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5) / 4
            loss.backward()
            total = total + loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="tin_whistle_cut_grace_label_smoothing_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tin-whistle ornament (cut/tap/roll/...) classifier: label smoothing 0.1, two param "
    "groups (no decay on biases), 10% noisy labels, ReduceLROnPlateau, clipping, RAdam (control)",
)
def h671_tin_whistle_label_smoothing_plateau(ctx: Context) -> None:
    gen = seeded(6723)
    model = _mlp([12, 64, 64, 5], nn.ReLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = _labels(gen)
    for _step in range(180):
        x, y = next(data)
        noisy = torch.rand(len(y), generator=gen) < 0.1
        y = torch.where(noisy, torch.randint(0, 5, y.shape, generator=gen), y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))
