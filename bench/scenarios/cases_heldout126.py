"""Held-out set 126 (``h126_``): Hugging Face text towers (ALIGN, AltCLIP, AIMv2, CLIPSeg) built
from tiny configs, and hand-written models of fields not covered before (lighthouse beams, wind
farm wakes, tidal turbines, pacemaker rhythms, rail wear, bee-swarm forecasts, river-delta
sediment, ship-hull fouling). 12 faults over 12 causes and 4 healthy controls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    fit,
    grad_norm,
    scenario,
    seeded,
)

# -- shared pieces --------------------------------------------------------------------------------


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


class TextTower(nn.Module):
    """A Hugging Face text tower with a mean-pooled classification head."""

    def __init__(self, tower: nn.Module, dim: int, classes: int = 2) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tower(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
        return self.head(h.mean(1))


def _tiny(cfg_cls, **extra):
    return cfg_cls(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    )


def hf_align_text():
    from transformers import AlignTextConfig, AlignTextModel

    cfg = _tiny(AlignTextConfig, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return TextTower(AlignTextModel(cfg), 32)


def hf_altclip_text():
    from transformers import AltCLIPTextConfig, AltCLIPTextModel

    cfg = _tiny(
        AltCLIPTextConfig,
        project_dim=32,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return TextTower(AltCLIPTextModel(cfg), 32)


def hf_aimv2_text():
    from transformers import Aimv2TextConfig, Aimv2TextModel

    return TextTower(Aimv2TextModel(_tiny(Aimv2TextConfig)), 32)


def hf_clipseg_text():
    from transformers import CLIPSegTextConfig, CLIPSegTextModel

    return TextTower(CLIPSegTextModel(_tiny(CLIPSegTextConfig)), 32)


def bert_attention_logit_max(model: TextTower, x: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d_head) over the BERT-style layers, from hooks on query and key."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    layers = model.tower.encoder.layer
    for i, layer in enumerate(layers):
        for part in ("query", "key"):
            mod = getattr(layer.attention.self, part)
            hooks.append(
                mod.register_forward_hook(
                    lambda m, a, out, k=f"{i}.{part}": seen.__setitem__(k, out.detach())
                )
            )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    top, heads = 0.0, model.tower.config.num_attention_heads
    for i in range(len(layers)):
        q, k = seen[f"{i}.query"], seen[f"{i}.key"]
        b, t, d = q.shape
        q = q.reshape(b, t, heads, -1).transpose(1, 2)
        k = k.reshape(b, t, heads, -1).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        top = max(top, float(s.abs().amax()))
    return top


def teacher_batches(gen: torch.Generator, dim: int, batch: int = 64, noise: float = 0.05):
    """Regression batches from a fixed random nonlinear teacher: (x, y) with y of shape (b, 1)."""
    w1 = torch.randn(dim, 16, generator=gen) / math.sqrt(dim)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def class_batches(gen: torch.Generator, dim: int, classes: int, batch: int = 64, sep: float = 1.5):
    """Gaussian class clusters around fixed random centres."""
    centres = sep * torch.randn(classes, dim, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + torch.randn(batch, dim, generator=gen)
        yield x, y


def half_vocab_batches(gen: torch.Generator, batch: int = 32, length: int = 16):
    """A separable sequence task: class 0 draws tokens from the lower half of the vocabulary,
    class 1 from the upper half."""
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        x = torch.randint(3, 64, (batch, length), generator=gen) + 61 * y[:, None]
        yield x, y


def beat_batches(gen: torch.Generator, batch: int = 32, length: int = 64, classes: int = 4):
    """Synthetic cardiac rhythm strips: the class sets the beat rate and the beat shape."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 0.08 + 0.05 * y.float()[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        width = 1.0 + (y == 3).float()[:, None] * 2.0
        wave = torch.sin(rate * t + phase)
        spikes = torch.exp((wave - 1.0) * 8.0 / width)
        amp = 1.0 + 0.4 * y.float()[:, None]
        x = amp * spikes + 0.2 * torch.randn(batch, length, generator=gen)
        yield x[:, None, :], y


# -- Hugging Face text towers ---------------------------------------------------------------------


@scenario(
    "hf_align_text_tower",
    "adamw",
    "attention_logit_growth",
    where=("tower.encoder.layer.0.attention.self", "tower.encoder.layer.1.attention.self"),
    diverges=None,
    heldout=True,
    note="ALIGN text tower: the query/key parameter group gets a 40x learning-rate override "
    "and no weight decay; q.k logits grow without bound",
)
def h126_align_text_qk_lr_override(ctx: Context) -> None:
    gen = seeded(12601)
    model = hf_align_text()
    qk = [p for n, p in model.named_parameters() if ".query." in n or ".key." in n]
    rest = [p for n, p in model.named_parameters() if ".query." not in n and ".key." not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": qk, "lr": 4e-2, "weight_decay": 0.0}],
        weight_decay=0.01,
    )
    batches = bert_batches(gen)
    probe = next(bert_batches(seeded(7)))[0]
    start = bert_attention_logit_max(model, probe)
    fit(ctx, model, opt, batches, 200)
    end = bert_attention_logit_max(model, probe)
    ctx.check("attention logits grew over 8x", end > 8 * start)
    ctx.check("attention logits above 30", end > 30)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "hf_align_text_tower",
    "nadam",
    "healthy",
    diverges=None,
    heldout=True,
    note="ALIGN text tower, NAdam with warmup and 5% label noise: a normal run",
)
def h126_align_text_healthy(ctx: Context) -> None:
    gen = seeded(12602)
    model = hf_align_text()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 20)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        flip = torch.rand(len(y), generator=gen) < 0.05
        return x, torch.where(flip, 1 - y, y)

    fit(ctx, model, opt, bert_batches(gen), 200, before=before, alter=alter)
    ctx.check("loss fell by a fifth", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:20]))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "hf_altclip_text_tower",
    "adam",
    "output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    onset=50,
    note="AltCLIP text tower: a refactor at step 50 moves log_softmax out of the head, but the "
    "loss stays nll_loss on the raw logits; nothing bounds them and they grow every step",
)
def h126_altclip_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(12603)
    model = hf_altclip_text()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = bert_batches(gen)
    px = next(bert_batches(seeded(8)))[0]
    seen = {}
    ctx.attach(model, opt)
    for step in range(200):
        if step in (50, 125):
            with torch.no_grad():
                seen[step] = float(model(px).abs().mean())
        x, y = next(batches)
        ctx.targets(y)
        out = model(x)
        loss = F.cross_entropy(out, y)
        trained = loss if step < 50 else F.nll_loss(out, y)
        trained.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        end = float(model(px).abs().mean())
    ctx.check("mean |logit| grew over 20x from the onset", end > 20 * seen[50])
    ctx.check("still growing in the second half", end > 1.5 * seen[125])
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "hf_aimv2_text_tower",
    "adam",
    "adam_second_moment_poisoned",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=60,
    note="AIMv2 text tower: at step 60 the head's gradient arrives un-unscaled (x1e6, a "
    "manual loss-scale bug); Adam's second moment for the head is poisoned and the head stalls",
)
def h126_aimv2_unscaled_head_grad(ctx: Context) -> None:
    gen = seeded(12604)
    model = hf_aimv2_text()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    state = {"step": 0}
    snaps: dict[int, torch.Tensor] = {}
    for p in model.head.parameters():
        p.register_hook(lambda g: g * 1e6 if state["step"] == 60 else g)

    def before(step: int) -> None:
        state["step"] = step
        if step in (0, 59, 120, 199):
            snaps[step] = model.head.weight.detach().clone()
        if step == 59:
            snaps[-1] = opt.state[model.head.weight]["exp_avg_sq"].max().clone()
        if step == 61:
            snaps[-2] = opt.state[model.head.weight]["exp_avg_sq"].max().clone()

    fit(ctx, model, opt, bert_batches(gen), 200, before=before)
    ctx.check("head second moment jumped over 1e8x", float(snaps[-2]) > 1e8 * float(snaps[-1]))
    moved_before = float((snaps[59] - snaps[0]).norm()) / 59
    moved_after = float((snaps[199] - snaps[120]).norm()) / 79
    ctx.check("head updates 20x smaller after", moved_after < moved_before / 20)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "hf_clipseg_text_tower",
    "radam",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=120,
    note="CLIPSeg text tower: a scheduler bug applies a 30x learning rate for three steps at "
    "step 120; the loss spikes and then recovers",
)
def h126_clipseg_lr_burst_spike(ctx: Context) -> None:
    gen = seeded(12605)
    model = hf_clipseg_text()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 0.06 if 120 <= step < 123 else 2e-3

    fit(ctx, model, opt, bert_batches(gen), 240, before=before)
    pre = _mean(ctx.losses[100:120])
    ctx.check("loss spiked over 2x", max(ctx.losses[120:135]) > 2 * pre)
    ctx.check("loss recovered", _mean(ctx.losses[-20:]) < 1.2 * pre)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "hf_clipseg_text_tower",
    "adamw",
    "healthy",
    diverges=None,
    heldout=True,
    note="CLIPSeg text tower, AdamW with warmup and cosine decay: a normal run",
)
def h126_clipseg_text_healthy(ctx: Context) -> None:
    gen = seeded(12606)
    model = hf_clipseg_text()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def before(step: int) -> None:
        warm = min(1.0, (step + 1) / 20)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / 200))

    fit(ctx, model, opt, bert_batches(gen), 200, before=before)
    ctx.check("loss fell by a fifth", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:20]))
    ctx.check("loss finite", _finite(ctx.losses))


# -- hand-written models --------------------------------------------------------------------------


class BeamFaultDetector(nn.Module):
    """Lighthouse beam: rotation-cycle photometer features -> fault class (lamp, lens, motor)."""

    def __init__(self) -> None:
        super().__init__()
        self.photometer = nn.Linear(24, 64)
        self.lens = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lens(torch.tanh(self.photometer(x)))))


@scenario(
    "lighthouse_beam_fault_detector",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=80,
    note="lighthouse beam fault detector: from step 80 a mis-applied linear-scaling rule "
    "ramps plain SGD's rate geometrically past 2/sharpness",
)
def h126_lighthouse_lr_ramp_past_edge(ctx: Context) -> None:
    gen = seeded(12607)
    model = BeamFaultDetector()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def before(step: int) -> None:
        lr = 0.1 if step < 80 else 0.1 * 1.04 ** (step - 80)
        for g in opt.param_groups:
            g["lr"] = lr

    fit(ctx, model, opt, class_batches(gen, 24, 4, sep=0.6), 220, before=before)
    best = min(ctx.losses[:80])
    late = ctx.losses[-10:]
    ctx.check("loss fell before the ramp", best < 0.8 * ctx.losses[0])
    ctx.check("loss blew up after", not _finite(late) or _mean(late) > 3 * best + 1)


class WakeModel(nn.Module):
    """Wind-farm wake: the velocity deficit carried turbine to turbine down a row."""

    def __init__(self, hidden: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.inflow = nn.Linear(3, hidden)
        self.cell = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.weight, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.cell.out_features)
        for t in range(x.shape[1]):
            h = F.relu(self.cell(h) + self.inflow(x[:, t]))
        return self.head(h)


def wake_batches(gen: torch.Generator, batch: int = 32, rows: int = 20):
    """Rows of turbines: (wind speed, yaw, spacing) per turbine -> power of the last one."""
    while True:
        x = torch.randn(batch, rows, 3, generator=gen)
        y = 0.5 * x[:, -1, :1] - 0.2 * x[:, -3:, :1].mean(1) + 0.05 * x[:, -1, 1:2]
        yield x, y


@scenario(
    "wind_farm_wake_model",
    "asgd",
    "exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    onset=40,
    note="wind-farm wake model: the turbine-to-turbine ReLU cell is initialised orthogonal "
    "with gain 1.9 over 20 turbines, its exploding gradients hidden by clip_grad_norm_ until a "
    "refactor drops the clip at step 40",
)
def h126_wind_wake_clip_dropped(ctx: Context) -> None:
    gen = seeded(12608)
    model = WakeModel(gain=1.9)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    batches = wake_batches(gen)
    ctx.attach(model, opt)
    for step in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if step < 40:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient norm over 100 while clipped", min(ctx.grad_norms[:40]) > 100)
    late = ctx.losses[40:]
    pre = sorted(ctx.losses[:40])[20]
    ctx.check("loss blew up once unclipped", not _finite(late) or max(late) > 100 * pre)


@scenario(
    "wind_farm_wake_model",
    "rprop",
    "healthy",
    diverges=None,
    heldout=True,
    note="wind-farm wake model with a gain-0.9 cell, Rprop on large batches: a normal run",
)
def h126_wind_wake_healthy(ctx: Context) -> None:
    gen = seeded(12609)
    model = WakeModel(gain=0.9)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, wake_batches(gen, batch=256), 120, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell by a third", _mean(ctx.losses[-10:]) < 0.67 * _mean(ctx.losses[:10]))
    ctx.check("loss finite", _finite(ctx.losses))


class TidalPowerRegressor(nn.Module):
    """Tidal turbine: current speed, direction, depth, blade pitch, ... -> power output."""

    def __init__(self) -> None:
        super().__init__()
        self.blade = nn.Linear(10, 48)
        self.rotor = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.rotor(F.silu(self.blade(x)))))


@scenario(
    "tidal_turbine_power_regressor",
    "adagrad",
    "update_ratio_out_of_range",
    where=("rotor",),
    diverges=None,
    heldout=True,
    onset=100,
    note="tidal-turbine power regressor: at step 100 a config reload sets the rotor layer's "
    "Adagrad rate to 0.5 (meant 0.03); each update is a large share of the weights",
)
def h126_tidal_rotor_lr_reload(ctx: Context) -> None:
    gen = seeded(12610)
    model = TidalPowerRegressor()
    rotor = list(model.rotor.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("rotor")]
    opt = torch.optim.Adagrad([{"params": rest, "lr": 0.03}, {"params": rotor, "lr": 0.03}])
    ratios: list[float] = []
    prev = {"w": model.rotor.weight.detach().clone()}

    def before(step: int) -> None:
        w = model.rotor.weight.detach()
        if step > 0:
            ratios.append(float((w - prev["w"]).norm() / w.norm().clamp_min(1e-12)))
        prev["w"] = w.clone()
        if step == 100:
            opt.param_groups[1]["lr"] = 0.5

    fit(
        ctx,
        model,
        opt,
        teacher_batches(gen, 10),
        180,
        loss_fn=F.mse_loss,
        before=before,
        classifier=False,
    )
    before_r = sorted(ratios[50:99])[24]
    after_r = sorted(ratios[100:])[len(ratios[100:]) // 2]
    ctx.check("rotor update ratio below 0.03 before", before_r < 0.03)
    ctx.check("rotor update ratio 3x higher after", after_r > 3 * before_r)
    ctx.check("loss finite", _finite(ctx.losses))


class RhythmClassifier(nn.Module):
    """Pacemaker rhythm classifier: a conv stack over an electrogram strip."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.lead = nn.Conv1d(1, 8, 7, padding=3)
        self.qrs = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, 4)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.qrs(F.relu(self.lead(x)))).mean(-1)
        return self.head(h) / self.temperature


@scenario(
    "pacemaker_rhythm_classifier",
    "adadelta",
    "softmax_collapse",
    where=("head",),
    diverges="auto",
    heldout=True,
    onset=100,
    note="pacemaker rhythm classifier: at step 100 the softmax temperature is read in seconds "
    "as 0.002 (meant 2 ms = 1.0 after scaling); float32 softmax saturates to exactly 1",
)
def h126_pacemaker_temperature_unit(ctx: Context) -> None:
    gen = seeded(12611)
    model = RhythmClassifier()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def before(step: int) -> None:
        if step == 100:
            model.temperature = 0.002

    fit(ctx, model, opt, beat_batches(gen), 200, before=before)
    x, y = next(beat_batches(seeded(9), batch=256))
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows softmax to exactly 1.0", frac > 0.5)
    ctx.check("loss fell before the bug", _mean(ctx.losses[90:100]) < 0.9 * ctx.losses[0])


@scenario(
    "pacemaker_rhythm_classifier",
    "sgd_mom",
    "healthy",
    diverges=None,
    heldout=True,
    note="pacemaker rhythm classifier, SGD momentum with a step decay: a normal run",
)
def h126_pacemaker_healthy(ctx: Context) -> None:
    gen = seeded(12612)
    model = RhythmClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 0.05 if step < 120 else 0.01

    fit(ctx, model, opt, beat_batches(gen), 160, before=before)
    ctx.check("loss fell by a fifth", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:10]))
    ctx.check("loss finite", _finite(ctx.losses))


class RailWearPredictor(nn.Module):
    """Rail-wear predictor: tonnage, curvature, cant, speed, ... -> head wear (mm)."""

    def __init__(self) -> None:
        super().__init__()
        self.track = nn.Linear(12, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.track(x)))


@scenario(
    "rail_wear_predictor",
    "sgd_nesterov",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="rail-wear predictor: at step 150 one batch of profile readings comes from a gauge "
    "reporting micrometres, not millimetres (targets 1000x)",
)
def h126_rail_wear_micrometre_batch(ctx: Context) -> None:
    gen = seeded(12613)
    model = RailWearPredictor()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x, y * 1000.0) if step == 150 else (x, y)

    fit(
        ctx,
        model,
        opt,
        teacher_batches(gen, 12),
        220,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
    )
    pre = sorted(ctx.losses[130:150])[10]
    ctx.check("outlier batch loss over 1000x", ctx.losses[150] > 1000 * pre)
    ctx.check("loss stays over 100x for ten steps", min(ctx.losses[151:161]) > 100 * pre)
    ctx.check("loss finite", _finite(ctx.losses))


class SwarmForecaster(nn.Module):
    """Apiary swarm forecaster: hive weight, temperature, queen-cell counts -> swarm in 7 days."""

    def __init__(self) -> None:
        super().__init__()
        self.hive = nn.Linear(16, 64)
        self.act = nn.ReLU()
        self.brood = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.brood(self.act(self.hive(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@scenario(
    "apiary_swarm_forecaster",
    "sgd_mom",
    "loss_of_plasticity",
    where=("brood", "act2"),
    diverges=None,
    heldout=True,
    onset=100,
    note="apiary swarm forecaster: a warm restart at step 100 jumps SGD momentum's rate "
    "250x for five steps; the brood layer's ReLUs die and stay dead",
)
def h126_apiary_restart_kills_relus(ctx: Context) -> None:
    gen = seeded(12614)
    model = SwarmForecaster()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    probe = next(class_batches(seeded(12614), 16, 2, batch=256, sep=0.3))[0]
    dead = {}

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 5.0 if 100 <= step < 105 else 0.02
        if step == 99:
            with torch.no_grad():
                dead["before"] = dead_fraction(model.features(probe))

    fit(ctx, model, opt, class_batches(gen, 16, 2, sep=0.3), 200, before=before)
    with torch.no_grad():
        dead["after"] = dead_fraction(model.features(probe))
    ctx.check("few dead units before", dead["before"] < 0.2)
    ctx.check("most brood units dead after", dead["after"] > 0.6)


class SedimentModel(nn.Module):
    """River-delta sediment transport: discharge, slope, grain size -> deposition rate."""

    def __init__(self) -> None:
        super().__init__()
        self.channel = nn.Linear(8, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.channel(x)))


@scenario(
    "river_delta_sediment_model",
    "rmsprop",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=0,
    note="river-delta sediment model: the L2 prior is added with the wrong sign; the weights "
    "drift outward and the loss climbs slowly",
)
def h126_delta_sediment_negated_prior(ctx: Context) -> None:
    gen = seeded(12615)
    model = SedimentModel()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 2e-2 * sum((p**2).sum() for p in model.parameters())

    fit(
        ctx,
        model,
        opt,
        teacher_batches(gen, 8),
        400,
        loss_fn=F.mse_loss,
        extra_loss=extra,
        classifier=False,
    )
    windows = [_mean(ctx.losses[i : i + 50]) for i in range(0, 400, 50)]
    ctx.check("last 50 steps over 2x the best 50", windows[-1] > 2 * min(windows))
    ctx.check("second half above the first", _mean(windows[4:]) > 1.3 * _mean(windows[:4]))
    ctx.check("loss finite (a slow climb, no blow-up)", _finite(ctx.losses))


class HullFoulingEstimator(nn.Module):
    """Ship-hull fouling estimator: shaft power, speed through water, trim -> fouling level."""

    def __init__(self) -> None:
        super().__init__()
        self.shaft = nn.Linear(6, 64)
        self.hull = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.hull(F.relu(self.shaft(x)))))


@scenario(
    "ship_hull_fouling_estimator",
    "adamax",
    "amp_overflow",
    where=("shaft", "hull"),
    diverges=80,
    heldout=True,
    onset=80,
    note="ship-hull fouling estimator in fp16 autocast with a GradScaler: from step 80 a "
    "logger firmware update reports shaft power in watts, not kilowatts; the fp16 gradients "
    "overflow step after step and the scaler keeps skipping and halving",
)
def h126_hull_fouling_fp16_watts(ctx: Context) -> None:
    gen = seeded(12616)
    model = HullFoulingEstimator()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 80:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0 + 4000.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        teacher_batches(gen, 6),
        140,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss finite before 80", _finite(ctx.losses[:80]))
    halvings = sum(b < a for a, b in zip(ctx.scales[79:], ctx.scales[80:], strict=False))
    ctx.check("scaler skipped over 10 overflowing steps from 80", halvings > 10)
    ctx.check("scale fell over 1000x", ctx.scales[-1] < ctx.scales[79] / 1000)
