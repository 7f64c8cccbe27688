"""Held-out set 124 (``h124_``): Hugging Face text towers of Aya-Vision, MiniCPM-V 4.7,
LLaVA-NeXT-Video and Video-LLaVA built from tiny configs, and hand-written models of a pottery
kiln glaze classifier, coffee-roast degree regressor, rowing-stroke rate RNN, cricket ball-swing
predictor, cocoa-fermentation model, bread-proofing time regressor, mine-ventilation controller,
dam-level forecaster, subway-headway regressor and elevator-dispatch scorer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face text towers from tiny configs ---------------------------------------------------

_TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)


def _text_tower(name: str, **extra):
    """The language model of a vision-language model ``name``, from its default text config
    shrunk to a tiny size (no download)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tc = AutoConfig.for_model(name).text_config
    d = tc.to_dict()
    d.update({k: v for k, v in _TINY.items() if k in d})
    d.pop("layer_types", None)
    cfg = type(tc)(**d)
    for k, v in extra.items():
        setattr(cfg, k, v)
    return AutoModelForCausalLM.from_config(cfg)


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x, use_cache=False).logits


def _minicpm():
    return _text_tower(
        "minicpmv4_7",
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
    )


def _first_last(losses: list[float], n: int = 10) -> tuple[float, float]:
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


@scenario(
    "hf_video_llava_text_tower",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD at lr 12 on the Llama text tower: above 2/sharpness",
)
def h124_video_llava_lr_above_limit(ctx: Context) -> None:
    gen = seeded(12401)
    model = _text_tower("video_llava")
    opt = torch.optim.SGD(model.parameters(), lr=12.0)
    fit(ctx, model, opt, text_batches(gen), 80, loss_fn=lm_loss, forward=_lm_forward)
    best = min(v for v in ctx.losses if math.isfinite(v))
    ctx.check(
        "loss climbed far above its best (or went non-finite)",
        not _finite(ctx.losses) or max(ctx.losses[-20:]) > 2 * best,
    )


@scenario(
    "hf_video_llava_text_tower",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="SGD momentum with linear warm-up then step decay",
)
def h124_video_llava_healthy(ctx: Context) -> None:
    gen = seeded(12402)
    model = _text_tower("video_llava")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.5 * min(1.0, (step + 1) / 20) * (0.5 if step > 100 else 1.0)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        150,
        loss_fn=lm_loss,
        forward=_lm_forward,
        before=schedule,
    )
    first, last = _first_last(ctx.losses)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", last < 0.9 * first)


@scenario(
    "hf_llava_next_video_text_tower",
    "adam",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=80,
    note="a warm-restart misconfiguration sets lr to 0.05 for three steps; the loss spikes then recovers",
)
def h124_llava_next_video_restart_spike(ctx: Context) -> None:
    gen = seeded(12403)
    model = _text_tower("llava_next_video")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.05 if 80 <= step < 83 else 3e-3

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        180,
        loss_fn=lm_loss,
        forward=_lm_forward,
        before=schedule,
    )
    before = sum(ctx.losses[70:80]) / 10
    ctx.check("loss spiked after the restart", max(ctx.losses[81:90]) > 1.5 * before)
    ctx.check("loss recovered", sum(ctx.losses[-10:]) / 10 < 1.15 * before)
    ctx.check("finite", _finite(ctx.losses))


POISONED = "model.layers.1.mlp.down_proj"


@scenario(
    "hf_minicpmv4_7_text_tower",
    "adamw",
    "adam_second_moment_poisoned",
    where=(POISONED,),
    diverges=None,
    heldout=True,
    onset=40,
    note="one giant gradient (a fused-kernel overflow, x1e4) on one layer poisons Adam's v",
)
def h124_minicpm_poisoned_second_moment(ctx: Context) -> None:
    gen = seeded(12404)
    model = _minicpm()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    weight = dict(model.named_modules())[POISONED].weight
    state = {"step": 0, "moves": []}

    def hook(g: torch.Tensor) -> torch.Tensor:
        return g * 1e4 if state["step"] == 40 else g

    weight.register_hook(hook)
    prev = {"w": weight.detach().clone()}

    def before(step: int) -> None:
        state["step"] = step
        if step > 0:
            state["moves"].append(float((weight.detach() - prev["w"]).norm()))
        prev["w"] = weight.detach().clone()

    fit(
        ctx, model, opt, text_batches(gen), 160, loss_fn=lm_loss, forward=_lm_forward, before=before
    )
    moves = state["moves"]  # moves[i]: the update of step i
    early = sum(moves[20:40]) / 20
    late = sum(moves[60:150]) / 90
    v = opt.state[weight]["exp_avg_sq"]
    ctx.check("second moment still huge", float(v.max()) > 1e3 * float(v.median()) + 1e-12)
    ctx.check("layer updates stalled after the spike", late < 0.2 * early)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "hf_aya_vision_text_tower",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW, warm-up + cosine decay, weight decay 0.1",
)
def h124_aya_vision_healthy(ctx: Context) -> None:
    gen = seeded(12405)
    model = _text_tower("aya_vision")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    steps = 200

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 15)
        opt.param_groups[0]["lr"] = 1e-2 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        steps,
        loss_fn=lm_loss,
        forward=_lm_forward,
        before=schedule,
    )
    first, last = _first_last(ctx.losses)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", last < 0.85 * first)


# -- hand-written models of new fields ------------------------------------------------------------


def _regression_stream(gen: torch.Generator, dim: int, batch: int = 64, noise: float = 0.1):
    w = torch.randn(dim, generator=gen) / math.sqrt(dim)
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ w)[:, None] + 0.3 * (x[:, :1] * x[:, 1:2])
        yield x, y + noise * torch.randn(batch, 1, generator=gen)


class GlazeNet(nn.Module):
    """Oxide fractions + firing curve -> glaze finish (matte, satin, gloss, crawl)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(12, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.body(x)))


def _glaze_batches(gen: torch.Generator, batch: int = 64):
    w = torch.randn(12, 4, generator=gen)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        yield x, (x @ w).argmax(1)


@scenario(
    "kiln_glaze_classifier",
    "nesterov",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="separable glaze classes, unnormalised head, Nesterov at a high lr: logits grow without bound",
)
def h124_glaze_logit_divergence(ctx: Context) -> None:
    gen = seeded(12406)
    model = GlazeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True)
    probe = torch.randn(256, 12, generator=gen)
    seen = {}

    def before(step: int) -> None:
        if step == 50:
            with torch.no_grad():
                seen[50] = float(model(probe).abs().max())

    fit(ctx, model, opt, _glaze_batches(gen), 600, before=before)
    with torch.no_grad():
        final = float(model(probe).abs().max())
    ctx.check("logits grew >2x after step 50", final > 2 * seen[50])
    ctx.check("logits large", final > 40)


class RoastNet(nn.Module):
    """Bean reflectance spectrum (16 bands) -> roast degree (Agtron-like score)."""

    def __init__(self) -> None:
        super().__init__()
        self.spectrum = nn.Linear(16, 64)
        self.mid = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.mid(F.gelu(self.spectrum(x)))))


@scenario(
    "coffee_roast_degree",
    "sgd_mom",
    "amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="fp16 autocast, GradScaler starting at 2**32 growing every 15 steps: repeated overflow skips",
)
def h124_coffee_roast_amp_overflow(ctx: Context) -> None:
    gen = seeded(12407)
    model = RoastNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**32, growth_interval=15)
    fit(
        ctx,
        model,
        opt,
        _regression_stream(gen, 16),
        150,
        loss_fn=F.mse_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps (scale fell)", drops + (ctx.scales[0] < 2.0**32) >= 3)
    ctx.check("finite logged losses", _finite(ctx.losses))


class StrokeRNN(nn.Module):
    """Oar-force samples -> stroke rate (strokes per minute)."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 48, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(48, 1)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(48, 48))
            self.rnn.weight_hh_l0.copy_(gain * q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _stroke_batches(gen: torch.Generator, batch: int = 32):
    for i in range(10**9):
        length = min(8 + 2 * i, 120)  # a curriculum: ever longer recordings
        t = torch.arange(length) / 10.0
        rate = 18 + 20 * torch.rand(batch, 1, generator=gen)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        force = torch.sin(rate / 60 * 6.28 * t + phase)
        x = torch.stack([force, force.clamp(min=0), torch.cos(rate / 60 * 6.28 * t + phase)], -1)
        yield x + 0.05 * torch.randn(x.shape, generator=gen), (rate - 28) / 6


@scenario(
    "rowing_stroke_rate_rnn",
    "sgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="ReLU RNN, recurrent gain 2.0, a curriculum of ever longer sequences, no clipping",
)
def h124_rowing_exploding(ctx: Context) -> None:
    gen = seeded(12408)
    model = StrokeRNN(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _stroke_batches(gen), 60, loss_fn=F.mse_loss, classifier=False)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient norm exploded", not _finite(ctx.grad_norms) or max(g) > 100 * g[0])
    ctx.check("loss blew up", not _finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0])


class SwingNet(nn.Module):
    """Seam angle, speed, humidity, ... -> lateral swing (cm), with an auxiliary seam head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(10, 64)
        self.swing_head = nn.Linear(64, 1)
        self.seam_head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return self.swing_head(h), self.seam_head(h)


@scenario(
    "cricket_swing_predictor",
    "rmsprop",
    "gradient_spike",
    where=("seam_head",),
    diverges=None,
    heldout=True,
    onset=120,
    note="the epoch-end batch sums the auxiliary seam loss instead of averaging: one gradient x1024",
)
def h124_cricket_gradient_spike(ctx: Context) -> None:
    gen = seeded(12409)
    model = SwingNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    stream = _regression_stream(gen, 10, batch=1024)
    ctx.attach(model, opt)
    for step in range(220):
        x, y = next(stream)
        swing, seam = model(x)
        main = F.mse_loss(swing, y)
        reduction = "sum" if step == 120 else "mean"
        aux = F.mse_loss(seam, x[:, :1], reduction=reduction)
        loss = main + 0.1 * F.mse_loss(seam, x[:, :1])
        (main + 0.1 * aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ref = sorted(ctx.grad_norms[100:120])[10]
    ctx.check("gradient norm spiked at 120", ctx.grad_norms[120] > 10 * ref)
    ctx.check("loss did not blow up", max(ctx.losses[121:]) < 3 * max(ctx.losses[100:120]))


class CocoaNet(nn.Module):
    """Pile temperature, pH, day, turning -> fermentation index."""

    def __init__(self) -> None:
        super().__init__()
        self.pile = nn.Linear(8, 48)
        self.mix = nn.Linear(48, 48)
        self.out = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.mix(F.silu(self.pile(x)))))


@scenario(
    "cocoa_fermentation_model",
    "adadelta",
    "healthy",
    heldout=True,
    note="Adadelta (lr 1.0) on noisy generated fermentation curves",
)
def h124_cocoa_healthy(ctx: Context) -> None:
    gen = seeded(12410)
    model = CocoaNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(
        ctx,
        model,
        opt,
        _regression_stream(gen, 8, noise=0.2),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
    )
    first, last = _first_last(ctx.losses)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", last < 0.7 * first)


class ProofNet(nn.Module):
    """Dough temperature, humidity, yeast %, flour protein -> proofing minutes (scaled)."""

    def __init__(self) -> None:
        super().__init__()
        self.dough = nn.Linear(6, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.dough(x)))


@scenario(
    "bread_proofing_regressor",
    "adagrad",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch logged in Fahrenheit x10 by a faulty probe: four rows 40x too large",
)
def h124_bread_data_outlier(ctx: Context) -> None:
    gen = seeded(12411)
    model = ProofNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[:4] = x[:4] * 40
        return x, y

    fit(
        ctx,
        model,
        opt,
        _regression_stream(gen, 6),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
    )
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))


class VentNet(nn.Module):
    """Methane (log ppm), airflow, fan state -> fan speed command."""

    def __init__(self) -> None:
        super().__init__()
        self.gas_in = nn.Linear(4, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)
        return self.head(F.silu(self.gas_in(feats)))


def _vent_batches(gen: torch.Generator, batch: int = 64):
    while True:
        ppm = 50 + 500 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 3, generator=gen)
        y = 0.4 * torch.log(ppm) - 2 + 0.3 * rest[:, :1]
        yield torch.cat([ppm, rest], 1), y


@scenario(
    "mine_ventilation_controller",
    "nadam",
    "nonfinite",
    where=("gas_in",),
    diverges=90,
    heldout=True,
    onset=90,
    note="a methane sensor reads 0 ppm: log(0) = -inf enters the first layer",
)
def h124_mine_vent_nonfinite(ctx: Context) -> None:
    gen = seeded(12412)
    model = VentNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 90:
            x = x.clone()
            x[5, 0] = 0.0
        return x, y

    fit(ctx, model, opt, _vent_batches(gen), 100, loss_fn=F.mse_loss, classifier=False, alter=alter)
    ctx.check("finite before 90", _finite(ctx.losses[:90]))
    ctx.check("non-finite at 90", not math.isfinite(ctx.losses[90]))


class DamNet(nn.Module):
    """Rainfall, inflow, release of the last days -> reservoir level tomorrow."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(12, 96)
        self.out = nn.Linear(96, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x)))


def _dam_batches(gen: torch.Generator, scale: float, batch: int = 64):
    w = torch.rand(12, generator=gen)
    while True:
        x = torch.rand(batch, 12, generator=gen) * 2
        y = (x @ w)[:, None] / 3 + 0.05 * torch.randn(batch, 1, generator=gen)
        yield x * scale, y


@scenario(
    "dam_level_forecaster",
    "nesterov",
    "loss_of_plasticity",
    where=("hidden",),
    diverges=None,
    heldout=True,
    note="rainfall fed in raw millimetres (x40) with Nesterov at lr 5e-4: most ReLUs die",
)
def h124_dam_dead_relus(ctx: Context) -> None:
    gen = seeded(12413)
    model = DamNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9, nesterov=True)
    probe = next(_dam_batches(torch.Generator().manual_seed(5), 40.0, 512))[0]
    with torch.no_grad():
        start = dead_fraction(model.features(probe))
    fit(ctx, model, opt, _dam_batches(gen, 40.0), 200, loss_fn=F.mse_loss, classifier=False)
    with torch.no_grad():
        end = dead_fraction(model.features(probe))
    ctx.check("few dead units at start", start < 0.3)
    ctx.check("most units dead at the end", end > 0.6)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "dam_level_forecaster",
    "asgd",
    "healthy",
    heldout=True,
    note="normalised inputs, ASGD with averaging",
)
def h124_dam_healthy(ctx: Context) -> None:
    gen = seeded(12414)
    model = DamNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=50)
    fit(ctx, model, opt, _dam_batches(gen, 1.0), 200, loss_fn=F.mse_loss, classifier=False)
    first, last = _first_last(ctx.losses)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", last < 0.5 * first)


class ElevatorScorer(nn.Module):
    """Hall call + car states -> a score per car (6 cars); the best car is dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.state = nn.Linear(20, 64)
        self.scores = nn.Linear(64, 6)
        self.temperature = 0.02  # meant to be 2.0: a config typo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(F.relu(self.state(x))) / self.temperature


def _dispatch_batches(gen: torch.Generator, batch: int = 64):
    w = torch.randn(20, 6, generator=gen)
    while True:
        x = torch.randn(batch, 20, generator=gen)
        yield x, (x @ w).argmax(1)


@scenario(
    "elevator_dispatch_scorer",
    "radam",
    "softmax_collapse",
    where=("scores",),
    diverges=None,
    heldout=True,
    note="dispatch temperature 0.02 (meant 2.0): RAdam drives the softmax to exactly 1.0",
)
def h124_elevator_softmax_collapse(ctx: Context) -> None:
    gen = seeded(12415)
    model = ElevatorScorer()
    opt = torch.optim.RAdam(model.parameters(), lr=0.01)
    fit(ctx, model, opt, _dispatch_batches(gen), 300)
    probe = _dispatch_batches(torch.Generator().manual_seed(12415), 256)
    x, y = next(probe)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("many rows collapsed to p=1.0", frac > 0.15)
    ctx.check("finite", _finite(ctx.losses))


class HeadwayNet(nn.Module):
    """Platform crowding, dwell times, delays -> headway to the next train."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(14, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.trunk(x)))


@scenario(
    "subway_headway_regressor",
    "adamax",
    "update_ratio_out_of_range",
    where=("trunk", "head"),
    diverges=None,
    heldout=True,
    note="lr given in the wrong unit (2e-7 instead of 2e-3): updates vanishingly small, no learning",
)
def h124_subway_update_ratio(ctx: Context) -> None:
    gen = seeded(12416)
    model = HeadwayNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-7)
    w0 = [p.detach().clone() for p in model.parameters()]
    fit(ctx, model, opt, _regression_stream(gen, 14), 200, loss_fn=F.mse_loss, classifier=False)
    rel = max(
        float((p.detach() - w).norm() / w.norm())
        for p, w in zip(model.parameters(), w0, strict=True)
    )
    first, last = _first_last(ctx.losses, 50)
    ctx.check("weights barely moved", rel < 1e-3)
    ctx.check("loss did not fall", last > 0.95 * first)
