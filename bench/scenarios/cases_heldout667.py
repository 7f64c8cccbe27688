"""Held-out set 667 (``h667_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Qwen3.5 MoE text causal LM built from a tiny
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


def _tiny_qwen35_moe(vocab: int = 128):
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    config = Qwen3_5MoeTextConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        layer_types=["full_attention", "full_attention"],
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Qwen3_5MoeForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="chilean_rodeo_atajada_logit_scale_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a Chilean-rodeo atajada scoring classifier: single-head attention over the 12 readings "
    "of a run, with a learnable CLIP-style logit scale exp(s) on q.k/sqrt(d); the clamp "
    "(s <= 0) and the qk weight decay were dropped when the block was copied over, and at "
    "lr 1e-2 the scale and the q/k weights grow together: the attention logits grow over 20x "
    "while the loss keeps falling",
)
def h667_rodeo_atajada_unclamped_logit_scale(ctx: Context) -> None:
    gen = seeded(6671)

    class Attn(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, dim)
            self.log_scale = nn.Parameter(torch.zeros(()))
            self.last_logits = torch.zeros(())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = x.shape[-1]
            logits = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(d)
            logits = logits * self.log_scale.exp()  # missing: .clamp(max=math.log(100))
            self.last_logits = logits.detach()
            return torch.softmax(logits, -1) @ self.v(x)

    class AtajadaNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 16)
            self.attn = Attn(16)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            h = h + self.attn(h)
            return self.head(h.mean(1))

    def batches():
        while True:
            x = torch.randn(64, 12, 4, generator=gen)
            # the label is the quadrant of the reading with the largest first channel
            idx = x[:, :, 0].argmax(1)
            best = x[torch.arange(64), idx]
            y = (best[:, 1] > 0).long() * 2 + (best[:, 2] > 0).long()
            yield x, y

    model = AtajadaNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
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
    ls = ctx.losses
    ctx.check("attention logits grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    scale = float(model.attn.log_scale.detach().exp())
    ctx.check("the unclamped logit scale exp(s) grew over 1.3x", scale > 1.3)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="hf_qwen3_5_moe_brass_band_cornet_part_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.0.mlp.experts", "model.layers.1.mlp.experts"),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Qwen3.5 MoE text causal LM on brass-band cornet-part bytes; the "
    "routed experts get their own param group with a LambdaLR warm-up written as "
    "'step // warmup' (integer division) instead of 'step / warmup': with warmup 1000 the "
    "experts' lr multiplier is 0 for the whole run, so the experts never move while attention, "
    "router, shared expert, embeddings and head train",
)
def h667_qwen35_moe_cornet_expert_warmup_intdiv(ctx: Context) -> None:
    gen = seeded(6672)
    model = _tiny_qwen35_moe()
    experts = [p for n, p in model.named_parameters() if ".mlp.experts." in n]
    rest = [p for n, p in model.named_parameters() if ".mlp.experts." not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": experts, "lr": 3e-3}], weight_decay=0.01
    )
    warmup = 1000
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: 1.0, lambda s: min(1.0, s // warmup)],  # bug: should be s / warmup
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in experts]
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(80):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(experts, before, strict=True))
    ctx.check("routed expert weights never moved (max change 0)", moved == 0.0)
    ctx.check("expert group lr is 0 at the end", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="gyrfalcon_stoop_telemetry_irnn_regressor",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a falconer's gyrfalcon stoop-speed regressor reading 24 telemetry samples with a ReLU "
    "RNN; the IRNN recipe's identity recurrent init was scaled by the config's 'init_gain' of "
    "1.25 (meant for the input weights), so the recurrence amplifies through time and the "
    "gradient at the first reading is hundreds of times the last's; clipping keeps it finite",
)
def h667_gyrfalcon_stoop_irnn_gain(ctx: Context) -> None:
    gen = seeded(6673)

    class StoopRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = StoopRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.25 * torch.eye(32))  # gain meant for weight_ih
        model.rnn.bias_hh_l0.zero_()
    w = torch.randn(3, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    ratios: list[float] = []
    for _step in range(100):
        x = torch.randn(32, 24, 3, generator=gen).requires_grad_(True)
        y = (x.detach() @ w).mean(1, keepdim=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g = x.grad.norm(dim=(0, 2))
        ratios.append(float(g[0] / g[-1].clamp_min(1e-30)))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at the first reading over 50x the last's", _median(ratios) > 50)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="chalk_stream_ranunculus_cover_silu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a river keeper's chalk-stream ranunculus-cover regressor on flow and light readings; "
    "one survey shard at step 90 came from a logger that wrote the cover as square metres "
    "instead of a fraction (x400), one batch of targets hundreds of times too large; the loss "
    "and gradient spike for that step and the run recovers",
)
def h667_chalk_stream_cover_bad_shard(ctx: Context) -> None:
    gen = seeded(6674)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    for step in range(180):
        x, y = next(data)
        if step == 90:
            y = y * 400.0  # bad shard: square metres, not a fraction
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at step 90 over 100x the median before", ls[90] > 100 * _median(ls[60:90]))
    ctx.check(
        "gradient at step 90 over 50x the median before", norms[90] > 50 * _median(norms[60:90])
    )
    ctx.check(
        "the run recovered (last 10 within 3x of pre-onset)",
        _median(ls[-10:]) < 3 * _median(ls[60:90]),
    )


@scenario(
    family="log_rolling_birling_fall_time_tanh_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=97,
    note="a log-rolling (birling) fall-time regressor; the loader's last, partial batch of each "
    "pass goes through a separate branch that computes the loss with reduction='sum' instead of "
    "'mean'; at step 97 that branch runs once and the backpropagated loss (the logged loss is "
    "the mean) is 64x too large, a single gradient burst with ordinary data; clipped, recovers",
)
def h667_birling_tail_batch_sum_reduction(ctx: Context) -> None:
    gen = seeded(6675)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    for step in range(180):
        x, y = next(data)
        out = model(x)
        loss = F.mse_loss(out, y)
        total = F.mse_loss(out, y, reduction="sum") if step == 97 else loss
        total.backward()
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at step 97 over 30x the median before", norms[97] > 30 * _median(norms[70:97])
    )
    ctx.check("logged loss at step 97 ordinary (under 3x)", ls[97] < 3 * _median(ls[70:97]))
    ctx.check(
        "loss finite and recovered", _finite(ls) and _median(ls[-10:]) < 2 * _median(ls[70:97])
    )


@scenario(
    family="qanat_tunnel_shaft_flow_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a qanat tunnel-shaft flow regressor trained with Adam (beta2 0.9999); the loss is "
    "normalised by the batch's target spread, and at step 60 a batch of dry-season readings "
    "had a spread of ~1e-6 (no eps in the divide), so one gradient ~1e5x too large filled "
    "Adam's second moment; afterwards the updates are tiny and the loss stalls far above "
    "where it was heading",
)
def h667_qanat_flow_adam_v_poisoned(ctx: Context) -> None:
    gen = seeded(6676)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    moves: list[float] = []
    for step in range(160):
        x, y = next(data)
        spread = y.std() if step != 60 else torch.tensor(1e-6)  # dry-season batch, no eps
        loss = F.mse_loss(model(x), y)
        (loss / spread.detach() ** 2 * y.std().detach() ** 2).backward()
        norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            sum(
                float((p.detach() - b).norm())
                for p, b in zip(model.parameters(), before, strict=True)
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at step 60 over 1e4x the median before", norms[60] > 1e4 * _median(norms[40:60])
    )
    ctx.check(
        "updates after step 70 over 20x smaller than before 60",
        _median(moves[70:]) * 20 < _median(moves[30:60]),
    )
    ctx.check(
        "loss stalled: last 20 within 10% of step 61-70",
        _median(ls[-20:]) > 0.9 * _median(ls[61:71]),
    )


@scenario(
    family="marimba_resonator_gourd_pitch_sqrt_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("stiffness",),
    diverges=18,
    heldout=True,
    note="a marimba-maker's resonator-gourd pitch regressor: the net predicts the bar's "
    "stiffness through a plain linear head and the pitch is computed as sqrt(stiffness / mass); "
    "the softplus that kept the stiffness positive was dropped, a stiffness goes negative and "
    "sqrt of a negative gives NaN",
)
def h667_marimba_gourd_sqrt_negative(ctx: Context) -> None:
    gen = seeded(6677)

    class GourdNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.stiffness = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = self.stiffness(self.body(x))  # missing: F.softplus(...)
            return torch.sqrt(k / 0.5)

    model = GourdNet()
    with torch.no_grad():
        model.stiffness.bias.fill_(4.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    nan_at = -1
    for step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y + 2.0)
        if not math.isfinite(float(loss)):
            ctx.step(loss)
            nan_at = step
            break
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        k = model.stiffness(model.body(x))
    ctx.check("loss became NaN", nan_at >= 0 and math.isnan(ctx.losses[-1]))
    ctx.check("a predicted stiffness is negative at the NaN", bool((k < 0).any()))


@scenario(
    family="pinsetter_candlepin_season_pin_count_fp16_poisson_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("rate",),
    diverges=32,
    heldout=True,
    onset=32,
    note="a candlepin alley's season pin-reset count Poisson regressor (counts in the tens of "
    "thousands) trained under fp16 autocast with a GradScaler; the rate exp(log_rate) is taken "
    "inside the autocast region on the fp16 head output, and once a predicted log-rate passes "
    "~11.1 the fp16 exp overflows to inf; the loss is inf from then on, the scaler skips every "
    "step and its scale collapses",
)
def h667_candlepin_poisson_fp16_exp(ctx: Context) -> None:
    gen = seeded(6678)

    class CountNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 32)
            self.rate = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rate(F.silu(self.fc1(x)))

    model = CountNet()
    w = torch.randn(6, generator=gen) * 0.4
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    first_inf = -1
    x = torch.zeros(1, 6)
    for step in range(150):
        x = torch.randn(64, 6, generator=gen)
        y = torch.poisson(torch.exp(9.5 + x @ w)[:, None], generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            log_rate = model(x)
            rate = torch.exp(log_rate)  # fp16 exp: inf past log_rate ~ 11.09
        loss = (rate.float() - y * log_rate.float()).mean() / 1e4
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if first_inf < 0 and not math.isfinite(float(loss)):
            first_inf = step
    ls = ctx.losses
    with torch.no_grad():
        fp32_ok = bool(torch.isfinite(torch.exp(model(x))).all())
    ctx.check("loss became inf under fp16", first_inf >= 0)
    ctx.check("the same batch in fp32 is finite", fp32_ok)
    ctx.check("the scale collapsed over 1000x", ctx.scales[-1] < ctx.scales[0] / 1000)
    ctx.check("loss non-finite at the end", not _finite(ls[-5:]))


@scenario(
    family="skittle_alley_pin_pattern_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a skittle-alley pin-pattern classifier with a temperature-scaled softmax; the config's "
    "temperature 0.005 was meant to multiply the logits (an inverse temperature) but the code "
    "divides by it, so the logits are 200x too large and the softmax saturates: many rows give "
    "the target a probability of exactly 1.0 in float32",
)
def h667_skittle_pin_temperature_divide(ctx: Context) -> None:
    gen = seeded(6679)

    class PinPatternNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    model = PinPatternNet()
    temperature = 0.005
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _labels(gen)
    last_logits = None
    last_y = None
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x) / temperature  # meant: * temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        last_logits, last_y = logits.detach(), y
    frac = collapsed_fraction(last_logits, last_y)
    ctx.check("over 10% of the rows at p = 1.0 exactly", frac > 0.1)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="geoglyph_line_kind_dead_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a geoglyph line-kind classifier on survey-drone features; an init loop meant to set "
    "the rare-class prior bias of the output layer ran over every Linear and set fc2's bias to "
    "-4 as well: fc2's ReLU units are never positive, receive no gradient and stay dead, and "
    "the loss stays near chance",
)
def h667_geoglyph_prior_bias_everywhere(ctx: Context) -> None:
    gen = seeded(66710)

    class GlyphNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.act1 = nn.Tanh()
            self.fc2 = nn.Linear(48, 48)
            self.act2 = nn.ReLU()
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    model = GlyphNet()
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != "fc1":  # meant: name == "head"
            nn.init.constant_(m.bias, -4.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _labels(gen)
    feats = None
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        h = model.act2(model.fc2(model.act1(model.fc1(x))))
        loss = F.cross_entropy(model.head(h), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        feats = h.detach()
    frac = dead_fraction(feats)
    ctx.check("over 90% of fc2's ReLU units dead", frac > 0.9)
    ctx.check("loss near chance (over 80% of ln 5)", _median(ctx.losses[-10:]) > 0.8 * math.log(5))


# -- healthy controls --------------------------------------------------------------------------------


@scenario(
    family="bandy_rink_pass_combo_actor_critic",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a bandy-rink passing agent trained by advantage actor-critic (Monte-Carlo returns, "
    "entropy bonus, clipping); the reward of a pass grows with the length of the current passing "
    "streak, so as the policy improves the returns, and the critic's regression targets, grow "
    "several-fold and the critic's MSE loss rises with them: alarming-looking, healthy",
)
def h667_bandy_pass_combo_a2c(ctx: Context) -> None:
    gen = seeded(66711)
    w_true = torch.randn(6, 4, generator=gen)

    class Agent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(7, 32), nn.Tanh())
            self.actor = nn.Linear(32, 4)
            self.critic = nn.Linear(32, 1)

        def forward(self, s: torch.Tensor):
            h = self.body(s)
            return self.actor(h), self.critic(h).squeeze(-1)

    model = Agent()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3, alpha=0.99)
    ctx.attach(model, opt)
    horizon, batch, gamma = 16, 32, 0.97
    returns_mean: list[float] = []
    critic_losses: list[float] = []
    for _step in range(200):
        streak = torch.zeros(batch)
        logps, values, ents, rewards = [], [], [], []
        for _t in range(horizon):
            feat = torch.randn(batch, 6, generator=gen)
            s = torch.cat([feat, (streak / horizon)[:, None]], 1)
            logits, v = model(s)
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            good = (a == (feat @ w_true).argmax(1)).float()
            streak = (streak + 1) * good
            rewards.append(streak.clone())  # a pass in a streak of n scores n
            logps.append(dist.log_prob(a))
            values.append(v)
            ents.append(dist.entropy())
        ret = torch.zeros(batch)
        rets = []
        for r in reversed(rewards):
            ret = r + gamma * ret
            rets.append(ret)
        rets = torch.stack(rets[::-1])
        values_t = torch.stack(values)
        adv = (rets - values_t).detach()
        actor_loss = -(torch.stack(logps) * adv).mean() - 0.01 * torch.stack(ents).mean()
        critic_loss = F.mse_loss(values_t, rets)
        loss = actor_loss + 0.5 * critic_loss
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        returns_mean.append(float(rets[0].mean()))
        critic_losses.append(float(critic_loss))
    ctx.check(
        "episode return grew over 3x", _median(returns_mean[-20:]) > 3 * _median(returns_mean[:20])
    )
    ctx.check(
        "critic loss rose over 3x (the alarming part)",
        _median(critic_losses[-20:]) > 3 * _median(critic_losses[:20]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="tanning_pit_bark_liquor_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tanner's bark-liquor strength classifier on 24-reading barkometer traces: conv1d "
    "body, label smoothing 0.1, OneCycleLR, decay/no-decay param groups, gradient clipping, "
    "noisy readings",
)
def h667_tanning_pit_liquor_onecycle(ctx: Context) -> None:
    gen = seeded(66712)
    protos = torch.randn(4, 24, generator=gen)

    class LiquorNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
            self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.conv1(x[:, None]))
            h = F.relu(self.conv2(h))
            return self.head(h.mean(-1))

    model = LiquorNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    for _step in range(steps):
        y = torch.randint(0, 4, (64,), generator=gen)
        x = protos[y] + 0.8 * torch.randn(64, 24, generator=gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="nordic_walking_pole_plant_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a Nordic-walking pole-plant force autoencoder with tied encoder/decoder weights, Huber "
    "loss, linear warm-up then cosine decay, 4-micro-batch gradient accumulation, clipping and "
    "noisy readings",
)
def h667_nordic_pole_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(66713)
    basis = torch.randn(4, 16, generator=gen)

    class PoleAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(16, 6)
            self.dec_bias = nn.Parameter(torch.zeros(16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.tanh(self.enc(x))
            return F.linear(z, self.enc.weight.t(), self.dec_bias)  # tied weights

    model = PoleAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    steps, warm, accum = 150, 15, 4
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    for _step in range(steps):
        total = 0.0
        for _ in range(accum):
            c = torch.randn(16, 4, generator=gen)
            x = c @ basis + 0.1 * torch.randn(16, 16, generator=gen)
            micro = F.huber_loss(model(x), x, delta=1.0) / accum
            micro.backward()
            total = total + micro.detach()
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(torch.as_tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))
