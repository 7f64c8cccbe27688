"""Held-out set 668 (``h668_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face T5Gemma2 text decoder built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
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
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 6, batch: int = 64, flip: float = 0.0):
    """Endless (x, y) batches: y is the argmax of a fixed linear score (a share ``flip`` noisy)."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = (x @ w).argmax(1)
        noisy = torch.rand(batch, generator=gen) < flip
        y = torch.where(noisy, torch.randint(0, k, (batch,), generator=gen), y)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _T5Gemma2TextLM(nn.Module):
    """The T5Gemma2 text decoder (self- and merged cross-attention) with a head tied to its
    embedding; the encoder side is one learnt memory slot (a decoder-only use)."""

    def __init__(self, vocab: int = 128) -> None:
        super().__init__()
        from transformers import T5Gemma2DecoderConfig
        from transformers.models.t5gemma2.modeling_t5gemma2 import T5Gemma2Decoder

        config = T5Gemma2DecoderConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
            query_pre_attn_scalar=16,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
        config.dropout_rate = 0.0
        self.decoder = T5Gemma2Decoder(config, eoi_token_index=vocab - 1)
        self.memory = nn.Parameter(torch.zeros(1, 1, 32))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b = idx.shape[0]
        h = self.decoder(
            input_ids=idx,
            encoder_hidden_states=self.memory.expand(b, 1, 32),
            encoder_attention_mask=torch.ones(b, 1, dtype=torch.long),
        ).last_hidden_state
        return h @ self.decoder.embed_tokens.weight.T  # tied head


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="hf_t5gemma2_text_change_ringing_method_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("decoder.layers.0.self_attn", "decoder.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face T5Gemma2 text decoder (tied head) on bell change-ringing method "
    "bytes; the attention projections get their own param group for a lower rate, and the "
    "config reads 'attn_lr: 3e-9' (meant 3e-4): the self-attention updates are some 1e6 times "
    "too small for its weights, it stays at its init while the MLPs, norms and embeddings train",
)
def h668_t5gemma2_change_ringing_attn_lr_typo(ctx: Context) -> None:
    gen = seeded(6681)
    model = _T5Gemma2TextLM()
    attn = [p for n, p in model.named_parameters() if ".self_attn." in n]
    rest = [p for n, p in model.named_parameters() if ".self_attn." not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": attn, "lr": 3e-9}], weight_decay=0.0
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in attn]
    rest_before = [p.detach().clone() for p in rest]
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(80):
        x, y = next(batches)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses

    def rel(ps, bs):
        num = sum(float((p.detach() - b).norm() ** 2) for p, b in zip(ps, bs, strict=True))
        den = sum(float(b.norm() ** 2) for b in bs)
        return math.sqrt(num / max(den, 1e-30))

    ctx.check("attention weights moved under 1e-5 of their norm", rel(attn, before) < 1e-5)
    ctx.check("the other weights moved over 1e-2 of their norm", rel(rest, rest_before) > 1e-2)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="dry_stone_waller_coping_grade_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("hidden",),
    diverges=None,
    heldout=True,
    note="a dry-stone waller's coping-stone grade classifier (ReLU MLP); the init helper meant "
    "to set the output prior bias was applied to every Linear and wrote bias -3 into the hidden "
    "layer whose weights come from a small-std init: every hidden ReLU is negative on all inputs "
    "from step 0, gets no gradient, and the net sits near chance",
)
def h668_dry_stone_coping_dead_hidden(ctx: Context) -> None:
    gen = seeded(6682)

    class CopingNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(12, 48)
            self.hidden = nn.Linear(48, 48)
            self.head = nn.Linear(48, 6)
            self.last_hidden = torch.zeros(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.inp(x))
            h = F.relu(self.hidden(h))
            self.last_hidden = h.detach()
            return self.head(h)

    model = CopingNet()
    with torch.no_grad():
        nn.init.normal_(model.hidden.weight, std=0.02)
        model.hidden.bias.fill_(-3.0)  # prior bias meant for the head only
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _labels(gen)
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over 95% of hidden ReLUs dead at the end", dead_fraction(model.last_hidden) > 0.95)
    ctx.check("loss stays near chance (ln 6)", _median(ls[-10:]) > 0.9 * math.log(6))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="pipe_organ_bellows_wind_pressure_fp16_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    heldout=True,
    onset=60,
    note="a pipe-organ bellows wind-pressure regressor trained in fp16 autocast with a "
    "GradScaler; from step 60 the loader switches to a new logger whose chest pressures are "
    "absolute pascals, not gauge kilopascals, and the feature scaler was fitted on the old logs: "
    "inputs near 101325 overflow fc1's fp16 matmul (max 65504), the output is inf, every step is skipped and "
    "the GradScaler's scale collapses",
)
def h668_organ_bellows_fp16_pascal(ctx: Context) -> None:
    gen = seeded(6683)

    class BellowsNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 64)
            self.fc2 = nn.Linear(64, 64)
            self.out = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.gelu(self.fc1(x))
            return self.out(F.gelu(self.fc2(h)))

    model = BellowsNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    nonfinite_out: list[bool] = []
    for step in range(120):
        x, y = next(data)
        if step >= 60:
            x = 101325.0 + 800.0 * x  # absolute pascals through a scaler fitted on gauge kPa
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        nonfinite_out.append(not bool(torch.isfinite(out).all()))
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("fp16 output finite before step 60", not any(nonfinite_out[:60]))
    ctx.check("fp16 output non-finite from step 60", all(nonfinite_out[60:]))
    ctx.check("loss non-finite at step 60", not math.isfinite(ls[60]))
    ctx.check("loss fell before the switch", _median(ls[50:60]) < 0.7 * _median(ls[:5]))
    ctx.check("GradScaler scale fell over 1e6x", ctx.scales[-1] < 1e-6 * ctx.scales[59])


@scenario(
    family="sheepdog_trial_outrun_deep_relu_regressor",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="a sheepdog-trial outrun-time regressor, a 12-layer ReLU MLP without normalisation; "
    "the init loop used gain 2.0 * sqrt(2) (the 'gain' config field was meant as the variance "
    "factor, not a multiplier of the Kaiming std), so activations and back-propagated gradients "
    "grow about 2x per layer and the gradient at the first hidden layer is thousands of times "
    "the last's; clipping keeps the run finite but it barely trains",
)
def h668_sheepdog_outrun_init_gain(ctx: Context) -> None:
    gen = seeded(6684)
    layers: list[nn.Module] = []
    width, depth = 32, 12
    for i in range(depth):
        lin = nn.Linear(8 if i == 0 else width, width)
        nn.init.normal_(lin.weight, std=2.0 * math.sqrt(2.0 / lin.in_features))
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]

    class OutrunNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(width, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    model = OutrunNet()
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m, _i, out):
            out.retain_grad()
            acts[name] = out

        return hook

    model.body[0].register_forward_hook(keep("first"))
    model.body[2 * depth - 2].register_forward_hook(keep("last"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratios: list[float] = []
    for _step in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g_first = acts["first"].grad.norm()
        g_last = acts["last"].grad.norm().clamp_min(1e-30)
        ratios.append(float(g_first / g_last))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at the first layer over 100x the last's", _median(ratios) > 100)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="thatcher_reed_bundle_moisture_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a thatcher's reed-bundle moisture regressor on meter readings; one batch at step 70 "
    "comes from a probe that reports its out-of-range code 9999 in place of the readings (never "
    "filtered), the loss and gradient spike for that step and the run recovers",
)
def h668_thatcher_reed_probe_code(ctx: Context) -> None:
    gen = seeded(6685)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    for step in range(160):
        x, y = next(data)
        if step == 70:
            x = x.clone()
            x[:, 2] = 9999.0  # the probe's out-of-range code
            y = y + 30.0  # and the moisture logged for those bundles is the sentinel too
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 2.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at step 70 over 100x the median before", ls[70] > 100 * _median(ls[40:70]))
    ctx.check(
        "gradient at step 70 over 20x the median before", norms[70] > 20 * _median(norms[40:70])
    )
    ctx.check(
        "the run recovered (last 10 within 3x of pre-onset)",
        _median(ls[-10:]) < 3 * _median(ls[40:70]),
    )


@scenario(
    family="cricket_bowler_economy_rate_feature_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rate",),
    diverges=45,
    heldout=True,
    onset=45,
    note="a cricket bowler's next-spell economy regressor whose first module turns runs and "
    "balls into a per-over rate runs / (balls / 6) with no clamp; at step 45 the batch holds "
    "bowlers who were brought on and not used (0 runs, 0 balls): 0/0 gives NaN in the rate "
    "module and the loss is NaN",
)
def h668_cricket_economy_zero_over(ctx: Context) -> None:
    gen = seeded(6686)

    class Rate(nn.Module):
        def forward(self, runs: torch.Tensor, balls: torch.Tensor) -> torch.Tensor:
            return runs / (balls / 6.0)  # missing: balls.clamp_min(1)

    class EconomyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = Rate()
            self.fc1 = nn.Linear(5, 32)
            self.fc2 = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            r = self.rate(x[:, :1], x[:, 1:2]) / 6.0
            return self.fc2(F.silu(self.fc1(torch.cat([r, x[:, 2:]], 1))))

    model = EconomyNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    for step in range(90):
        balls = torch.randint(6, 60, (64, 1), generator=gen).float()
        runs = (balls / 6.0) * (4 + 4 * torch.rand(64, 1, generator=gen)).round()
        rest = torch.randn(64, 4, generator=gen)
        if step == 45:
            balls[:5] = 0.0
            runs[:5] = 0.0
        x = torch.cat([runs, balls, rest], 1)
        y = runs / balls.clamp_min(1) * 6.0 / 6.0 + 0.3 * rest[:, :1]
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 45", _finite(ls[:45]))
    ctx.check("loss NaN at step 45", len(ls) == 46 and math.isnan(ls[45]))


@scenario(
    family="lacemaker_bobbin_pattern_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bobbin-lace pattern classifier with a cosine head (normalised features and class "
    "weights times a scale); the config's 's: 64' was read as the log2 of the scale by a "
    "later refactor helper and written 's: 640': logits span hundreds, the float32 softmax "
    "rounds the target probability to exactly 1.0 on most rows and those rows give no gradient",
)
def h668_lacemaker_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(6687)

    class CosineHead(nn.Module):
        def __init__(self, dim: int, k: int, scale: float) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(k, dim) * 0.1)
            self.scale = scale

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T

    class LaceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 32))
            self.head = CosineHead(32, 6, scale=640.0)  # meant 64

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    model = LaceNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = _labels(gen)
    fracs: list[float] = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 30% of rows at p = 1.0 at the end", _median(fracs[-10:]) > 0.3)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="hot_air_balloon_burner_climb_warmup_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=50,
    note="a balloonist's burner-burst climb-rate regressor trained with plain SGD and a linear "
    "warm-up; the peak rate was written 0.6 instead of 0.06, so once the warm-up passes the "
    "2/sharpness limit (around step 50) the loss oscillates with a growing amplitude and blows up",
)
def h668_balloon_climb_warmup_peak(ctx: Context) -> None:
    gen = seeded(6688)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    peak, warm = 0.6, 100
    ctx.attach(model, opt)
    w = torch.randn(8, 1, generator=gen)
    scales = torch.tensor([4.0, 3.0, 1, 1, 1, 1, 1, 1])
    for step in range(150):
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / warm)
        x = torch.randn(64, 8, generator=gen) * scales
        y = x @ w / 4.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    finite = [v for v in ls if math.isfinite(v)]
    ctx.check("loss fell during the early warm-up", min(ls[:30]) < 0.5 * ls[0])
    ctx.check(
        "the loss blew up over 1e3x its early minimum",
        len(finite) < len(ls) or max(finite[30:]) > 1e3 * min(ls[:30]),
    )


@scenario(
    family="snowshoe_trail_packing_decay_sign_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=0,
    note="a snowshoe-trail packing-depth regressor with a hand-written decoupled weight decay "
    "after each RMSprop step; the shrink 'p.mul_(1 - wd)' was written 'p.mul_(1 + wd)' (sign "
    "flipped, wd 0.01), so the weights drift outwards by 1% a step: the loss first falls, then "
    "climbs slowly for the rest of the run with no other mechanism",
)
def h668_snowshoe_decay_sign(ctx: Context) -> None:
    gen = seeded(6689)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    wd = 1e-2
    norms: list[float] = []
    for _step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + wd)  # bug: should be 1 - wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters())))
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check(
        "loss at the end over 3x its minimum",
        _median(ls[-10:]) > 3 * _median(ls[max(0, low - 5) : low + 5]),
    )
    ctx.check("weight norm grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="taiko_drum_stroke_zloss_sign_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a taiko stroke-kind classifier with a PaLM-style z-loss on the head's log-partition; "
    "the term was added as '- 1e-2 * logsumexp(z)^2' (sign flipped), which rewards a growing "
    "log-partition: the head's logits grow without bound while the accuracy term still trains",
)
def h668_taiko_zloss_sign(ctx: Context) -> None:
    gen = seeded(66810)
    model = nn.Sequential()
    model.add_module(
        "body", nn.Sequential(nn.Linear(12, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU())
    )
    model.add_module("head", nn.Linear(48, 6))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _labels(gen)
    peaks: list[float] = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        z = torch.logsumexp(logits, -1)
        (loss - 1e-2 * (z**2).mean()).backward()  # bug: should be + 1e-2 * z^2
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(logits.detach().abs().max()))
    ctx.check("head logits grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="barchan_dune_migration_cyclic_lr_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a barchan-dune migration-rate regressor trained with CyclicLR (triangular, 20-step "
    "half cycles between 5e-3 and 0.15) and SGD momentum: the loss rises towards each lr peak "
    "and falls in each trough, a saw-tooth that looks alarming and is the schedule working",
)
def h668_barchan_dune_cyclic_lr(ctx: Context) -> None:
    gen = seeded(66811)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=5e-3, max_lr=0.15, step_size_up=20, mode="triangular", cycle_momentum=False
    )
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.1)
    lrs: list[float] = []
    for _step in range(200):
        x, y = next(data)
        lrs.append(opt.param_groups[0]["lr"])
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    peaks = [ls[i] for i in range(40, 200) if lrs[i] > 0.12]
    troughs = [ls[i] for i in range(40, 200) if lrs[i] < 0.03]
    ctx.check(
        "loss near lr peaks over 1.3x loss near troughs", _median(peaks) > 1.3 * _median(troughs)
    )
    ctx.check("loss fell 50% overall", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="bagpipe_chanter_reed_grade_onecycle_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a pipe-maker's chanter-reed grade classifier: label smoothing 0.1, noisy labels (10%), "
    "OneCycleLR, decay-free param group for biases, gradient clipping at 1.0, AdamW; a normal run",
)
def h668_bagpipe_reed_onecycle(ctx: Context) -> None:
    gen = seeded(66812)
    model = nn.Sequential(nn.Linear(12, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 6))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    no_decay = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    data = _labels(gen, flip=0.1)
    for _step in range(steps):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="cheese_cave_rind_humidity_accum_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="an affineur's cheese-cave rind-humidity regressor: Huber loss, 4-micro-batch gradient "
    "accumulation, ReduceLROnPlateau on the running loss, clipping at 1.0, Adadelta; a normal run",
)
def h668_cheese_cave_accum_plateau(ctx: Context) -> None:
    gen = seeded(66813)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16, noise=0.1)
    for _step in range(120):
        total = 0.0
        for _micro in range(4):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5) / 4
            loss.backward()
            total = total + loss.detach()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 50%", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))
