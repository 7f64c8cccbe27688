"""Held-out set 676 (``h676_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face Gemma 4 unified assistant (the
speculative-decoding drafter) built from a tiny config."""

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
    grad_norm,
    scenario,
    seeded,
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


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
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


def _tiny_gemma4_assistant():
    from transformers import Gemma4UnifiedAssistantConfig
    from transformers.models.gemma4_unified_assistant.modeling_gemma4_unified_assistant import (
        Gemma4UnifiedAssistantForCausalLM,
    )

    text = dict(
        vocab_size=16,
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
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = Gemma4UnifiedAssistantConfig(text_config=text, backbone_hidden_size=16)
    return Gemma4UnifiedAssistantForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="bodhran_tipper_triplet_roll_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a bodhran tipper triplet-roll detector reading 32 skin-vibration frames with a ReLU "
    "Elman RNN, clipped at 1, plain SGD; the recurrent weights were initialised as 1.25 x the "
    "identity (an 'identity RNN' recipe with the gain typed 1.25 for 1.0), so the gradient "
    "grows by that factor at every frame back through time",
)
def h676_bodhran_roll_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6761)

    class RollNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 24, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(24, 1)
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(1.25 * torch.eye(24))  # gain typo: 1.25 for 1.0
                self.rnn.weight_ih_l0.mul_(0.3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = RollNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    ratios = []
    for _ in range(100):
        x = 0.3 * torch.randn(32, 32, 4, generator=gen)
        y = x[:, :, 0].mean(1, keepdim=True)
        x.requires_grad_(True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        gx = x.grad.norm(dim=(0, 2))
        ratios.append(float(gx[0] / gx[-1].clamp_min(1e-12)))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("gradient at the first frame over 100x the last frame's (step 0)", ratios[0] > 100)
    ctx.check("still over 100x at step 50", len(ratios) > 50 and ratios[50] > 100)
    ctx.check(
        "gradient norm before clipping over 10x the clip level at step 0", ctx.grad_norms[0] > 10
    )


@scenario(
    family="kayak_polo_shot_velocity_warmup_silu_regressor",
    optimizer="SGD momentum",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=36,
    note="a kayak-polo shot-velocity regressor, a deep linear (identity-activation) net, SGD momentum 0.9 with a linear "
    "warm-up; the warm-up's peak lr was typed 0.3 instead of 0.003, so as the warm-up ramps "
    "past the 2(1+momentum)/sharpness limit (around step 36) the loss oscillates and blows up",
)
def h676_kayak_polo_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6762)
    model = _Net(8, 32, 1, nn.Identity)
    peak, warm = 0.3, 120
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    ctx.attach(model, opt)
    data = _readings(gen)
    for _ in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "loss fell early (its low over the first 10 steps below step 0's)", min(ls[:10]) < ls[0]
    )
    ctx.check(
        "loss later blows up past 100x its low or to non-finite",
        (not _finite(ls)) or max(ls) > 100 * min(ls[:10]),
    )


@scenario(
    family="sumi_ink_stick_grind_tone_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a sumi-ink stick grinding-tone classifier (10 tones from 64 slate-friction readings, "
    "the digits), cosine-similarity head, Adamax; the temperature was written as 'tau = 0.002' "
    "where 0.2 was meant and logits are cos/tau, so the softmax saturates: many rows round to "
    "p = 1.0 exactly for the target while others carry huge losses",
)
def h676_sumi_ink_temperature_typo(ctx: Context) -> None:
    gen = seeded(6763)

    class CosineNet(nn.Module):
        def __init__(self, tau: float) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.act1 = nn.ReLU()
            self.head = nn.Linear(64, 10, bias=False)
            self.tau = tau

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.normalize(self.act1(self.fc1(x)), dim=-1)
            w = F.normalize(self.head.weight, dim=-1)
            return (h @ w.t()) / self.tau

    model = CosineNet(tau=0.002)  # typo: 0.002 for 0.2
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    frac = []
    for _ in range(120):
        x, y = next(data)
        logits = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        frac.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over 30% of rows at p = 1.0 exactly over the last 20 steps", _median(frac[-20:]) > 0.3
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="coracle_paddle_figure_eight_stroke_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a coracle figure-eight paddle-stroke thrust regressor, tanh MLP, 4-micro-batch "
    "accumulation, clipping at 2, SGD Nesterov; at step 90 (an epoch boundary) the accumulation "
    "loop's divisor was taken from len(last_chunk) which was 0 and replaced by a fallback of "
    "1/64 (a leftover static fp16 loss scale), so that one step's gradient is 256x; data clean, "
    "clip holds the update, run carries on",
)
def h676_coracle_accum_divisor_bug(ctx: Context) -> None:
    gen = seeded(6764)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16)
    accum = 4
    for step in range(170):
        scale = 64.0 if step == 90 else 1.0 / accum
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            (scale * loss).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 90 over 50x the median of steps 70-89", g[90] > 50 * _median(g[70:90])
    )
    ctx.check("gradient ordinary again by step 95", g[95] < 5 * _median(g[70:90]))
    ctx.check("logged loss at step 90 ordinary", ctx.losses[90] < 3 * max(ctx.losses[80:90]))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="tatting_shuttle_picot_gauge_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a tatting-shuttle picot-gauge classifier (the digits as 10 picot sizes), ReLU MLP, "
    "NAdam; an init helper meant to set fc2's bias to a small positive constant was passed "
    "-4.0 (a sign and scale typo), so every fc2 ReLU is dead from the start, its units get no "
    "gradient and never come back, and the loss stays near chance",
)
def h676_tatting_fc2_bias_init_typo(ctx: Context) -> None:
    gen = seeded(6765)
    model = _Net(64, 48, 10, nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-4.0)  # typo: -4.0 for 0.01
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    dead = []
    for _ in range(120):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))
    ctx.check("over 95% of fc2 units dead at the end", dead[-1] > 0.95)
    ctx.check(
        "loss of the last 20 steps still above 2.0 (chance 2.30)", _median(ctx.losses[-20:]) > 2.0
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="rush_seat_weaving_cord_tension_decay_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a rush-seat weaving cord-tension regressor, GELU MLP, RAdam; the hand-written "
    "decoupled weight decay switched on at step 60 multiplies the weights by (1 + lr*wd) "
    "instead of (1 - lr*wd), so the weights grow a little every step and the loss, after "
    "falling, climbs slowly with no spike and no NaN",
)
def h676_rush_seat_decay_sign(ctx: Context) -> None:
    gen = seeded(6766)
    model = _Net(8, 32, 1, nn.GELU)
    lr, wd = 3e-3, 4.0
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms = []
    for step in range(260):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if step >= 60:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.mul_(1 + lr * wd)  # sign bug: should be 1 - lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm()))
    ls = ctx.losses
    low = min(ls[30:90])
    ctx.check(
        "loss of the last 20 steps over 5x its low at steps 30-89", _median(ls[-20:]) > 5 * low
    )
    ctx.check(
        "loss climbs: each 50-step median above the one before from step 150",
        all(_median(ls[a : a + 50]) > _median(ls[a - 50 : a]) for a in (150, 200)),
    )
    ctx.check("weight norm grew over 2x since step 60", norms[-1] > 2 * norms[60])
    ctx.check(
        "no step's loss over 3x the one before (no spike)",
        all(b < 3 * a for a, b in zip(ls[70:-1], ls[71:], strict=False)),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="penny_whistle_cut_ornament_gemma4_assistant_tagger",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("drafter.pre_projection",),
    diverges=None,
    heldout=True,
    note="a penny-whistle cut/tap ornament tagger: a tiny Hugging Face Gemma 4 unified assistant "
    "(Gemma4UnifiedAssistantForCausalLM from a config) reads 12 frames of breath and finger "
    "features through its pre_projection, attends to shared key/value states from a small "
    "audio encoder, and tags each frame with one of 16 ornaments; AdamW with param groups, "
    "and the projection group's lr came from cfg['lr_proj'], which a sweep file set to 0.0 "
    "(meant for a frozen-projection ablation), so pre_projection never moves while the rest "
    "trains and the loss falls",
)
def h676_penny_whistle_gemma4_projection_lr_zero(ctx: Context) -> None:
    gen = seeded(6767)

    class OrnamentTagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drafter = _tiny_gemma4_assistant()
            self.encoder = nn.Linear(6, 32)

        def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
            b, t, _ = frames.shape
            kv = self.encoder(audio)[:, None]  # (b, 1, s, 32)
            k, v = kv[..., :16], kv[..., 16:]
            shared = {"full_attention": (k, v), "sliding_attention": (k, v)}
            pos = torch.arange(t)[None].expand(b, t)
            out = self.drafter(inputs_embeds=frames, shared_kv_states=shared, position_ids=pos)
            return out.logits

    model = OrnamentTagger()
    proj = list(model.drafter.pre_projection.parameters())
    ids = {id(p) for p in proj}
    rest = [p for p in model.parameters() if id(p) not in ids]
    cfg = {"lr": 1e-2, "lr_proj": 0.0}  # sweep file: the ablation's 0.0 left in
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": cfg["lr"]}, {"params": proj, "lr": cfg["lr_proj"]}],
        weight_decay=0.0,
    )
    ctx.attach(model, opt)
    w_mix = torch.randn(32, 16, generator=gen)
    before = model.drafter.pre_projection.weight.detach().clone()
    for _ in range(110):
        frames = torch.randn(8, 12, 32, generator=gen)
        audio = torch.randn(8, 10, 6, generator=gen)
        y = (frames[..., :16] + 0.3 * (frames @ w_mix)).argmax(-1)
        logits = model(frames, audio)
        ctx.targets(y.reshape(-1))
        loss = F.cross_entropy(logits.reshape(-1, 16), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved = float((model.drafter.pre_projection.weight - before).abs().max())
    ctx.check("pre_projection weights exactly unchanged", moved == 0.0)
    ctx.check(
        "loss fell (last 10 below 0.95x the first 10)",
        _median(ctx.losses[-10:]) < 0.95 * _median(ctx.losses[:10]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="tidal_creek_bore_celerity_sqrt_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("celerity",),
    diverges=65,
    heldout=True,
    onset=65,
    note="a salt-marsh tidal-creek bore arrival-time regressor, RMSprop; a celerity layer "
    "computes sqrt(g * (stage - bed)) as a physics feature without a clamp, and at step 65 a "
    "gauge reading falls below the creek bed (a dry-bed low tide), sqrt of a negative gives "
    "NaN and the loss is NaN",
)
def h676_tidal_creek_sqrt_negative_depth(ctx: Context) -> None:
    gen = seeded(6768)

    class Celerity(nn.Module):
        def forward(self, depth: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(9.81 * depth)  # no clamp: a dry bed gives a negative depth

    class BoreNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.celerity = Celerity()
            self.fc1 = nn.Linear(9, 32)
            self.act1 = nn.SiLU()
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
            c = self.celerity(depth)
            return self.head(self.act1(self.fc1(torch.cat([x, c], 1))))

    model = BoreNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(120):
        x, y = next(data)
        depth = 0.5 + torch.rand(len(x), 1, generator=gen)
        if step == 65:
            depth[3] = -0.2  # a dry-bed reading: the stage below the bed
        loss = F.mse_loss(model(x, depth), y + 0.1 * depth)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss finite up to step 64", _finite(ls[:65]))
    ctx.check("loss NaN at step 65", len(ls) == 66 and math.isnan(ls[65]))
    ctx.check("loss fell before the fault", ls[60] < ls[0])


@scenario(
    family="sheep_shearing_fleece_weight_blow_count_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a shearing-shed fleece-weight regressor from blow counts and stand readings, SiLU MLP, "
    "Adagrad, clipped at 5; the shard read at step 70 came from a shed whose scale logs grams "
    "instead of kilograms, so that batch's targets are 1000x, the loss jumps over 1e4x and the "
    "gradient over 50x for one step, the clip holds and the run recovers",
)
def h676_shearing_shed_grams_shard(ctx: Context) -> None:
    gen = seeded(6769)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(150):
        x, y = next(data)
        if step == 70:
            y = y * 1000.0  # this shed logs grams
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 70 over 1e4x the median of steps 50-69", ls[70] > 1e4 * _median(ls[50:70])
    )
    ctx.check(
        "gradient at step 70 over 50x the median of steps 50-69", g[70] > 50 * _median(g[50:70])
    )
    ctx.check(
        "loss back under 5x that median by the last 20 steps",
        _median(ls[-20:]) < 5 * _median(ls[50:70]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="fly_fishing_double_haul_loop_width_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a fly-casting double-haul loop-width regressor, tanh MLP, Adam (beta2 0.999, no clip); "
    "at step 60 an auxiliary line-speed loss whose weight was meant to be 1e-3 is added with "
    "1e5 (an exponent typo) for that step only, one giant gradient fills Adam's second moment, "
    "and for the next hundred steps the updates are a hundredfold smaller and the loss stalls",
)
def h676_fly_fishing_aux_weight_exponent(ctx: Context) -> None:
    gen = seeded(67610)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    upd = []
    for step in range(180):
        x, y = next(data)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        aux_w = 1e5 if step == 60 else 0.0  # exponent typo: 1e5 for 1e-3 (aux off otherwise)
        (loss + aux_w * pred.pow(2).mean()).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        upd.append(
            float(
                torch.stack(
                    [
                        (p.detach() - b).norm()
                        for p, b in zip(model.parameters(), before, strict=True)
                    ]
                ).norm()
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 60 over 1e4x the median of steps 40-59", g[60] > 1e4 * _median(g[40:60])
    )
    ctx.check(
        "updates at steps 100-179 under 0.1x those at steps 40-59",
        _median(upd[100:]) < 0.1 * _median(upd[40:60]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="spoon_carving_crook_knife_tearout_swa_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a green-wood spoon-carving tear-out depth regressor, SiLU MLP, SGD momentum with a "
    "cosine decay over 120 steps and then stochastic weight averaging (AveragedModel + SWALR) "
    "at a constant SWA lr of 0.12, well above where the cosine ended: the training loss rises "
    "for a while after the switch (looks alarming) while the averaged model is fine; healthy",
)
def h676_spoon_carving_swa_constant_lr(ctx: Context) -> None:
    from torch.optim.swa_utils import SWALR, AveragedModel

    gen = seeded(67611)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=120, eta_min=1e-4)
    swa = AveragedModel(model)
    swa_sched = SWALR(opt, swa_lr=0.12, anneal_epochs=3, anneal_strategy="cos")
    ctx.attach(model, opt)
    data = _readings(gen, batch=16, noise=0.3)
    xv, yv = next(_readings(seeded(67611), batch=512, noise=0.3))
    for step in range(220):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step < 120:
            cos.step()
        else:
            swa.update_parameters(model)
            swa_sched.step()
    ls = ctx.losses
    with torch.no_grad():
        swa_val = float(F.mse_loss(swa(xv), yv))
    ctx.check(
        "training loss after the switch (steps 125-165) above 1.2x steps 95-119",
        _median(ls[125:165]) > 1.2 * _median(ls[95:120]),
    )
    ctx.check(
        "training loss fell overall (last 20 below 0.8x first 10)",
        _median(ls[-20:]) < 0.8 * _median(ls[:10]),
    )
    ctx.check(
        "averaged model's held-out loss below 0.5x the first steps' loss",
        swa_val < 0.5 * _median(ls[:10]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="fell_running_scree_descent_pace_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a fell-running scree-descent pace regressor on noisy GPS-derived readings with "
    "occasional heavy-tailed targets, GELU MLP, Huber loss, Adam under OneCycleLR, 2-micro-batch "
    "accumulation and clipping at 1; healthy",
)
def h676_fell_running_onecycle_huber(ctx: Context) -> None:
    gen = seeded(67612)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=160)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.1)
    for _ in range(160):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            y = y + 0.3 * torch.distributions.StudentT(3.0).sample(y.shape) * (
                torch.rand(y.shape, generator=gen) < 0.05
            )
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell (last 20 below 0.5x first 10)", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="gold_leaf_gilding_bole_colour_digit_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a water-gilding bole-colour classifier (the digits as 10 bole shades), ReLU MLP, "
    "SGD Nesterov with param groups (head at half the lr, no weight decay on biases), label "
    "smoothing 0.1 and ReduceLROnPlateau on the running loss; healthy",
)
def h676_gilding_bole_label_smoothing(ctx: Context) -> None:
    gen = seeded(67613)
    model = _Net(64, 64, 10, nn.ReLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "head" not in n]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": 5e-4},
            {"params": nodecay, "weight_decay": 0.0},
            {"params": [model.head.weight], "lr": 0.025, "weight_decay": 5e-4},
        ],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    run = []
    for step in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        run.append(float(loss.detach()))
        if step % 10 == 9:
            plateau.step(sum(run[-10:]) / 10)
    ls = ctx.losses
    ctx.check("loss fell (last 20 below 0.4x first 10)", _median(ls[-20:]) < 0.4 * _median(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))
