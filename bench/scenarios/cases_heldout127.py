"""Held-out set 127 (``h127_``): Hugging Face text towers from tiny configs (TIPSv2 text
encoder, OpenAI privacy filter, EmbeddingGemma2 text, NeoMME text, Muse Glimmer text) and
hand-written models of new fields (velodrome lap times, vineyard irrigation, hydroponic
nutrients, radio-telescope RFI flagging, printing-press jams, ski-lift queues, salmon runs,
wildfire smoke, meteor-shower rates, tennis serves, beach erosion). 12 faults, 4 controls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded

# -- shared helpers -------------------------------------------------------------------------------


def _hf_tower(kind: str, **extra):
    """A Hugging Face text tower built from a tiny config (no download)."""
    from transformers import AutoConfig, AutoModel

    kw = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        head_dim=16,
        pad_token_id=0,
    )
    kw.update(extra)
    return AutoModel.from_config(AutoConfig.for_model(kind, **kw))


class _TowerClassifier(nn.Module):
    """Mean-pooled text tower with a linear head (sequence) or per-token head (tagging)."""

    def __init__(self, tower: nn.Module, labels: int = 2, per_token: bool = False) -> None:
        super().__init__()
        self.tower = tower
        with torch.no_grad():
            dim = tower(input_ids=torch.ones(1, 4, dtype=torch.long)).last_hidden_state.shape[-1]
        self.head = nn.Linear(dim, labels)
        self.per_token = per_token

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tower(input_ids=ids).last_hidden_state
        return self.head(h if self.per_token else h.mean(1))


def _count_batch(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Is token 1 more frequent than token 2 in the sequence?"""
    x = torch.randint(3, 64, (batch, length), generator=gen)
    ones = torch.rand(batch, length, generator=gen) < 0.25
    twos = torch.rand(batch, length, generator=gen) < 0.25
    x = torch.where(ones, 1, torch.where(twos & ~ones, 2, x))
    return x, ((x == 1).sum(1) > (x == 2).sum(1)).long()


def _tabular(gen: torch.Generator, n: int, d: int, w: torch.Tensor, noise: float = 0.1):
    x = torch.randn(n, d, generator=gen)
    y = torch.tanh(x @ w) + 0.3 * (x[:, :1] * x[:, 1:2]) + noise * torch.randn(n, 1, generator=gen)
    return x, y


def _train_seq_cls(ctx, model, opt, gen, steps, lr_at=None, loss_scale=None):
    ctx.attach(model, opt)
    for step in range(steps):
        if lr_at is not None:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
        x, y = _count_batch(gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        total = loss * loss_scale(step) if loss_scale is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        ctx.step(loss)


def _mean(xs) -> float:
    xs = [v for v in xs if math.isfinite(v)]
    return sum(xs) / max(len(xs), 1)


# -- Hugging Face towers --------------------------------------------------------------------------


@scenario(
    "hf_tipsv2_text_encoder",
    "adamw",
    "attention_logit_growth",
    where=("tower.encoder.layers.0.self_attn", "tower.encoder.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="LR 2e-2 with no weight decay on q/k: the attention logits grow many-fold",
    onset=0,
)
def h127_tipsv2_text_attn_growth(ctx: Context) -> None:
    gen = seeded(12701)
    model = _TowerClassifier(_hf_tower("tipsv2_text_model"))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    probe, _ = _count_batch(gen)

    def max_logit() -> float:
        out = {}
        attn = model.tower.encoder.layers[0].self_attn
        hooks = [
            attn.q_proj.register_forward_hook(lambda m, i, o: out.__setitem__("q", o)),
            attn.k_proj.register_forward_hook(lambda m, i, o: out.__setitem__("k", o)),
        ]
        with torch.no_grad():
            model(probe)
        for h in hooks:
            h.remove()
        q, k = (out[n].reshape(*out[n].shape[:2], 2, 16).transpose(1, 2) for n in "qk")
        return float((q @ k.transpose(-1, -2)).abs().max() / 4.0)

    first = max_logit()
    _train_seq_cls(ctx, model, opt, gen, 150)
    last = max_logit()
    ctx.check("attention logits grew more than 10x", last > 10 * first)
    ctx.check("max attention logit above 20", last > 20)


@scenario(
    "hf_openai_privacy_filter_tagger",
    "adam",
    "adam_second_moment_poisoned",
    where=("head",),
    diverges=None,
    heldout=True,
    note="one batch's loss weighted 1e6 (a mis-scaled sample weight) poisons Adam's v",
    onset=5,
)
def h127_privacy_filter_poisoned_v(ctx: Context) -> None:
    gen = seeded(12702)
    tower = _hf_tower("openai_privacy_filter", num_local_experts=4, num_experts_per_tok=2)
    model = _TowerClassifier(tower, labels=2, per_token=True)
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    ctx.attach(model, opt)
    v_before = 0.0
    for step in range(140):
        x = torch.randint(1, 64, (16, 16), generator=gen)
        y = (x >= 48).long()  # tag the "private" token ids
        ctx.targets(y.reshape(-1))
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
        weight = 1e6 if step == 5 else 1.0
        opt.zero_grad(set_to_none=True)
        (loss * weight).backward()
        opt.step()
        ctx.step(loss)
        if step == 4:
            v_before = float(opt.state[model.head.weight]["exp_avg_sq"].max())
    v_after = float(opt.state[model.head.weight]["exp_avg_sq"].max())
    pre = ctx.losses[:5]
    post = ctx.losses[6:]
    ctx.check("head's second moment jumped by 1e6", v_after > 1e6 * v_before)
    ctx.check("loss was falling before the poisoning", pre[4] < 0.8 * pre[0])
    ctx.check("loss stopped falling after it", _mean(post[-10:]) > 0.5 * pre[4])


@scenario(
    "hf_embedding_gemma2_text_cls",
    "nadam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="a scheduler resumed at 10x its LR for three steps: the loss spikes, then recovers",
    onset=100,
)
def h127_embedding_gemma2_restart_spike(ctx: Context) -> None:
    gen = seeded(12703)
    model = _TowerClassifier(_hf_tower("embedding_gemma2_text"))
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def lr_at(step: int) -> float:
        return 2e-2 if 100 <= step < 103 else 2e-3

    _train_seq_cls(ctx, model, opt, gen, 150, lr_at=lr_at)
    pre = _mean(ctx.losses[85:100])
    peak = max(v for v in ctx.losses[100:115] if math.isfinite(v))
    ctx.check("loss spiked above twice its level", peak > 2 * pre)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    late = _mean(ctx.losses[-10:])
    ctx.check(
        "loss recovered below a tenth of the peak and below chance", late < min(0.1 * peak, 0.69)
    )


@scenario("hf_neomme_text_cls", "adamw", "healthy", heldout=True, note="warmup + cosine")
def h127_neomme_text_healthy(ctx: Context) -> None:
    gen = seeded(12704)
    model = _TowerClassifier(_hf_tower("neomme"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def lr_at(step: int) -> float:
        return 3e-3 * min(1.0, (step + 1) / 15) * (0.5 + 0.5 * math.cos(math.pi * step / 160))

    _train_seq_cls(ctx, model, opt, gen, 160, lr_at=lr_at)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-15:]) < 0.8 * _mean(ctx.losses[:15]))


@scenario("hf_muse_glimmer_text_cls", "radam", "healthy", heldout=True, note="constant LR")
def h127_muse_glimmer_text_healthy(ctx: Context) -> None:
    gen = seeded(12705)
    model = _TowerClassifier(_hf_tower("muse_glimmer_text"))
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    _train_seq_cls(ctx, model, opt, gen, 160)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-15:]) < 0.8 * _mean(ctx.losses[:15]))


# -- hand-written models --------------------------------------------------------------------------


def _regress(ctx, model, opt, batches, steps, before=None, loss_fn=F.mse_loss, clip=None):
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = batches(step)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)


@scenario(
    "velodrome_lap_time_regressor",
    "nesterov",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="LR warmed up to a peak above 2/sharpness",
    onset=15,
)
def h127_velodrome_lr_peak(ctx: Context) -> None:
    gen = seeded(12706)
    w = torch.randn(8, 1, generator=gen)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.01 + min(step, 60) / 60 * 0.6

    _regress(ctx, model, opt, lambda s: _tabular(gen, 64, 8, w), 120, before=before)
    best = min(v for v in ctx.losses if math.isfinite(v))
    late = ctx.losses[-10:]
    ctx.check("trained while the LR was low", _mean(ctx.losses[8:15]) < _mean(ctx.losses[:5]))
    ctx.check(
        "loss blew up after the peak",
        any(not math.isfinite(v) or v > 20 * best for v in late),
    )


class _Irrigation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
        self.et = nn.Linear(32, 1)  # evapotranspiration, square-rooted without a clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.sqrt(self.et(self.body(x)))


@scenario(
    "vineyard_irrigation_controller",
    "adamax",
    "nonfinite",
    where=("et",),
    diverges="auto",
    heldout=True,
    note="sqrt of an unclamped evapotranspiration output: rainy days push it below 0 -> NaN",
    onset=0,
)
def h127_vineyard_sqrt_nan(ctx: Context) -> None:
    gen = seeded(12707)
    model = _Irrigation()
    with torch.no_grad():
        model.et.bias.fill_(1.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)

    def batches(step: int):
        x = torch.rand(32, 6, generator=gen)
        rain = x[:, :1] > 0.6
        y = torch.where(rain, torch.zeros(32, 1), 1.5 + x[:, 1:2])
        return x, y

    _regress(ctx, model, opt, batches, 120)
    bad = [i for i, v in enumerate(ctx.losses) if not math.isfinite(v)]
    ctx.check("loss went non-finite", bool(bad))
    ctx.check("finite for the first steps", bool(bad) and bad[0] >= 3)
    ctx.check(
        "weights are non-finite", any(not torch.isfinite(p).all() for p in model.parameters())
    )


@scenario(
    "hydroponics_nutrient_regressor",
    "sgd",
    "data_outlier",
    where=(),
    diverges="auto",
    heldout=True,
    note="one batch logs conductivity in uS/cm instead of mS/cm (x1000)",
    onset=90,
)
def h127_hydroponics_unit_outlier(ctx: Context) -> None:
    gen = seeded(12708)
    w = torch.randn(10, 1, generator=gen)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def batches(step: int):
        x, y = _tabular(gen, 32, 10, w)
        if step == 90:
            x = x.clone()
            x[:8, 0] *= 1000.0
        return x, y

    _regress(ctx, model, opt, batches, 140)
    med = sorted(ctx.losses[70:90])[10]
    ctx.check("outlier batch loss > 100x the median", ctx.losses[90] > 100 * med)
    ctx.check("training was fine before", ctx.losses[89] < ctx.losses[0])


class _RFIFlagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(64, 64)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@scenario(
    "radio_telescope_rfi_flagger",
    "asgd",
    "amp_overflow",
    where=("embed",),
    diverges="auto",
    heldout=True,
    note="raw spectra in fp16 autocast; a radar burst from step 60 overflows the first layer",
    onset=60,
)
def h127_rfi_fp16_overflow(ctx: Context) -> None:
    gen = seeded(12709)
    model = _RFIFlagger()
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    overflowed = 0
    for step in range(120):
        x = torch.rand(32, 64, generator=gen) * 50.0
        y = (torch.rand(32, generator=gen) < 0.3).long()
        x[y == 1, 20:30] += 200.0  # RFI-contaminated channels
        if step >= 60:
            x = x * 4000.0  # radar burst: raw power far above fp16 range
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.embed(x)
            overflowed += int(not torch.isfinite(h).all())
            out = model.head(h)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
    ctx.check("fp16 activations overflowed in most steps after onset", overflowed >= 40)
    ctx.check("no overflow before onset", all(math.isfinite(v) for v in ctx.losses[:60]))
    ctx.check("loss scale collapsed", ctx.scales[-1] < ctx.scales[59] / 2.0**20)


class _JamNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU())
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@scenario(
    "printing_press_jam_predictor",
    "rprop",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="full-batch Rprop on separable jam logs: step sizes grow, the logits run away",
    onset=0,
)
def h127_printing_press_logits(ctx: Context) -> None:
    gen = seeded(12710)
    x = torch.randn(256, 12, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).long()
    model = _JamNet()
    opt = torch.optim.Rprop(model.parameters(), lr=0.01, step_sizes=(1e-6, 50.0))
    ctx.attach(model, opt)
    with torch.no_grad():
        first = float(model(x).abs().max())
    for _ in range(120):
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    with torch.no_grad():
        last = float(model(x).abs().max())
    ctx.check("logits grew more than 100x", last > 100 * first)
    ctx.check("max |logit| above 200", last > 200)


class _QueueRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 32, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(32, 1)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(1.02 * torch.eye(32) + 0.01 * torch.randn(32, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    "ski_lift_queue_forecaster",
    "sgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="ReLU RNN over 60 ten-minute slots, recurrent gain 1.02, no clipping",
    onset=0,
)
def h127_ski_lift_rnn_explodes(ctx: Context) -> None:
    gen = seeded(12711)
    model = _QueueRNN()
    opt = torch.optim.SGD(model.parameters(), lr=2e-4)

    def batches(step: int):
        x = torch.rand(16, 60, 3, generator=gen)
        return x, x[:, -6:, :1].mean(1) * 5.0

    _regress(ctx, model, opt, batches, 60)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient norm above 1e3 at the start", g[0] > 1e3)
    ctx.check(
        "loss or gradients blew up",
        any(not math.isfinite(v) for v in ctx.losses + ctx.grad_norms) or max(g) > 1e6,
    )


@scenario(
    "salmon_run_counter",
    "nesterov",
    "loss_of_plasticity",
    where=("2",),
    diverges=None,
    heldout=True,
    note="three steps at 30x LR (a schedule typo) kill the second layer's ReLUs for good",
    onset=80,
)
def h127_salmon_dead_relus(ctx: Context) -> None:
    gen = seeded(12712)
    w = torch.randn(12, 1, generator=gen)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    probe = torch.randn(256, 12, generator=gen)

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.3 if 80 <= step < 83 else 0.01

    def batches(step: int):
        x, y = _tabular(gen, 64, 12, w)
        return x, 3.0 * y + 2.0

    _regress(ctx, model, opt, batches, 200, before=before)
    with torch.no_grad():
        dead = dead_fraction(model[3](model[2](model[1](model[0](probe)))))
    ctx.check("most second-layer units dead", dead > 0.5)
    ctx.check(
        "loss stays above pre-fault level", _mean(ctx.losses[-20:]) > 1.5 * _mean(ctx.losses[60:80])
    )


class _Smoke(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wind = nn.Linear(8, 32)
        self.plume = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)
        nn.init.normal_(self.plume.weight, std=0.005)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.plume(torch.tanh(self.wind(x)))))


@scenario(
    "wildfire_smoke_dispersion",
    "rmsprop",
    "update_ratio_out_of_range",
    where=("plume",),
    diverges=None,
    heldout=True,
    note="RMSprop LR 0.03 on a layer initialised at std 0.005: the first steps rewrite it whole",
    onset=0,
)
def h127_smoke_update_ratio(ctx: Context) -> None:
    gen = seeded(12713)
    w = torch.randn(8, 1, generator=gen)
    model = _Smoke()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.03)
    ratios: list[float] = []
    prev = model.plume.weight.detach().clone()

    def before(step: int) -> None:
        nonlocal prev
        cur = model.plume.weight.detach()
        if step > 0:
            ratios.append(float((cur - prev).norm() / cur.norm().clamp_min(1e-12)))
        prev = cur.clone()

    _regress(ctx, model, opt, lambda s: _tabular(gen, 64, 8, w), 100, before=before)
    ctx.check("plume update/weight ratio above 0.2 over steps 1-4", min(ratios[:4]) > 0.2)
    ctx.check("plume weights grew 30x in the first steps", float(model.plume.weight.norm()) > 4.5)


class _MeteorRate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 32), nn.Tanh())
        self.rate_head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.rate_head(self.body(x))) + 1e-9


def _poisson_nll(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (rate - y * torch.log(rate)).mean()


@scenario(
    "meteor_shower_rate_model",
    "sgd_mom",
    "gradient_spike",
    where=("rate_head",),
    diverges=None,
    heldout=True,
    note="a fireball logged on an overcast daytime sample: -y/rate explodes for one step",
    onset=100,
)
def h127_meteor_fireball_spike(ctx: Context) -> None:
    gen = seeded(12714)
    model = _MeteorRate()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def batches(step: int):
        x = torch.randn(64, 5, generator=gen)
        lam = torch.exp(0.8 * x[:, :1] - 0.5 * x[:, 1:2])
        y = torch.poisson(lam, generator=gen)
        if step == 100:
            x[0] = torch.tensor([-4.0, 4.0, 0.0, 0.0, 0.0])
            y[0] = 40.0
        return x, y

    _regress(ctx, model, opt, batches, 160, loss_fn=_poisson_nll, clip=1.0)
    g = ctx.grad_norms
    med = sorted(g[80:100])[10]
    ctx.check("gradient norm at the fireball > 8x median", g[100] > 8 * med)
    ctx.check("run stays finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell overall", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]))


@scenario("tennis_serve_speed_regressor", "adagrad", "healthy", heldout=True, note="noisy batches")
def h127_tennis_serve_healthy(ctx: Context) -> None:
    gen = seeded(12715)
    w = torch.randn(9, 1, generator=gen)
    model = nn.Sequential(nn.Linear(9, 48), nn.GELU(), nn.Linear(48, 1))
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    _regress(ctx, model, opt, lambda s: _tabular(gen, 32, 9, w, noise=0.3), 200)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:10]))


@scenario("beach_erosion_profile_regressor", "adadelta", "healthy", heldout=True, note="step decay")
def h127_beach_erosion_healthy(ctx: Context) -> None:
    gen = seeded(12716)
    w = torch.randn(7, 1, generator=gen)
    model = nn.Sequential(
        nn.Linear(7, 40), nn.SiLU(), nn.Linear(40, 40), nn.SiLU(), nn.Linear(40, 1)
    )
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.0 if step < 120 else 0.3

    _regress(ctx, model, opt, lambda s: _tabular(gen, 32, 7, w, noise=0.2), 200, before=before)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:10]))
