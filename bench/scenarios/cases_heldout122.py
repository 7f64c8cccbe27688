"""Held-out set 122 (``h122_``): Hugging Face DeepSeek-VL language tower, GLM-4V-MoE text tower,
Cohere2-Vision text tower and Perception-LM text tower from tiny configs, and hand-written models
of fields not covered before: an origami crease-pattern classifier, a pollen-count forecaster, a
dialysis-session regressor, a brewing-gravity model, a cheese-ripening classifier, a traffic-light
phase controller, an ice-core isotope dater, a vineyard-frost alarm, a kiln-temperature
controller and a snowpack-density regressor. Every scenario is held out of detector tuning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, fit, lm_loss, scenario, seeded, text_batches

# -- shared pieces ---------------------------------------------------------------------------------


class TextTower(nn.Module):
    """A Hugging Face text tower (``model``) with an untied output head (``lm_head``)."""

    def __init__(self, kind: str, vocab: int = 128, dim: int = 32) -> None:
        super().__init__()
        import transformers as tf
        from transformers import AutoModel

        common = dict(
            vocab_size=vocab,
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        if kind == "glm4v_moe":
            rope = dict(
                rope_theta=10000.0,
                partial_rotary_factor=0.5,
                rope_type="default",
                mrope_section=[1, 1, 2],
            )
            text = dict(
                common,
                moe_intermediate_size=dim,
                n_routed_experts=4,
                num_experts_per_tok=2,
                n_shared_experts=1,
                first_k_dense_replace=1,
                rope_parameters=rope,
            )
            config = tf.Glm4vMoeConfig(text_config=text).text_config
        elif kind == "cohere2_vision":
            text = dict(common, model_type="cohere2", head_dim=dim // 2, sliding_window=16)
            config = tf.Cohere2VisionConfig(text_config=text).text_config
        elif kind == "deepseek_vl":
            text = dict(common, model_type="llama", head_dim=dim // 2)
            config = tf.DeepseekVLConfig(text_config=text).text_config
        else:
            text = dict(common, model_type="llama", head_dim=dim // 2)
            config = tf.PerceptionLMConfig(text_config=text).text_config
        self.model = AutoModel.from_config(config)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids=idx).last_hidden_state)


def tabular(gen: torch.Generator, dim: int, classes: int = 0, batch: int = 64, noise: float = 0.1):
    """Endless batches of a generated tabular task: a fixed random teacher labels the features
    (classes > 0: argmax of a random linear map; else a smooth regression target)."""
    w = torch.randn(dim, max(classes, 1), generator=gen)
    v = torch.randn(dim, generator=gen)
    while True:
        x = torch.randn(batch, dim, generator=gen)
        if classes:
            y = (x @ w + noise * torch.randn(batch, classes, generator=gen)).argmax(1)
        else:
            y = torch.tanh(x @ w[:, 0] / math.sqrt(dim)) + 0.5 * torch.sin(x @ v / math.sqrt(dim))
            y = (y + noise * torch.randn(batch, generator=gen))[:, None]
        yield x, y


class Net(nn.Module):
    """inp -> act -> hidden -> act -> head."""

    def __init__(self, dim: int, width: int, out: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, out)
        self.act = act()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.hidden(self.act(self.inp(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fell(losses: list[float], factor: float = 0.8) -> bool:
    a, b = losses[:10], losses[-10:]
    finite = all(math.isfinite(v) for v in losses)
    return finite and sum(b) / len(b) < factor * sum(a) / len(a)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "origami_crease_classifier",
    "nesterov",
    "output_logit_divergence",
    where="head",
    heldout=True,
    note="head in a group at lr 2.0, no weight decay; separable crease features",
)
def h122_origami_head_lr(ctx: Context) -> None:
    """The crease-pattern classifier's output head sits in a parameter group at lr 2.0 (an
    override meant for a linear probe) on separable features: its logits grow without bound."""
    gen = seeded(12201)
    model = Net(24, 64, 4)
    head = list(model.head.parameters())
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD(
        [{"params": trunk, "lr": 0.05}, {"params": head, "lr": 5.0}], momentum=0.9, nesterov=True
    )
    batches = tabular(gen, 24, classes=4, noise=0.0)
    probe, _ = next(tabular(seeded(5), 24, classes=4))
    with torch.no_grad():
        start = float(model(probe).abs().max())
    fit(ctx, model, opt, batches, 300)
    with torch.no_grad():
        end = float(model(probe).abs().max())
    ctx.check("max |logit| grew 20x, past 25", end > 20 * start and end > 25)


@scenario(
    "pollen_count_forecaster",
    "adam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=0,
    note="linear warm-up configured with the run's length: the lr never stops rising",
)
def h122_pollen_endless_warmup(ctx: Context) -> None:
    """The warm-up's end step is set to the number of samples instead of steps: the lr climbs
    linearly through the whole run and the forecaster's error creeps back up, slowly."""
    gen = seeded(12202)
    model = Net(16, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def schedule(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 1e-3 + WARM_PEAK * step / 300

    fit(
        ctx,
        model,
        opt,
        tabular(gen, 16),
        300,
        loss_fn=F.mse_loss,
        before=schedule,
        classifier=False,
    )
    best = min(ctx.losses)
    ctx.check("loss climbed past 3x its best (and +1)", ctx.losses[-1] > max(3 * best, best + 1))
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


WARM_PEAK = 1.0


class DialysisNet(nn.Module):
    """Log-transforms the blood-flow and dialysate-flow readings (``logflow``), then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.logflow = LogFlow()
        self.inp = nn.Linear(10, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.inp(self.logflow(x))))


class LogFlow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)  # no clamp: a zero flow is -inf


@scenario(
    "dialysis_session_regressor",
    "sgd_mom",
    "nonfinite",
    where="logflow",
    diverges=110,
    onset=110,
    heldout=True,
    note="a session logged with blood flow 0 (pump stopped) reaches log()",
)
def h122_dialysis_zero_flow(ctx: Context) -> None:
    gen = seeded(12203)
    model = DialysisNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    base = tabular(gen, 10)

    def sessions():
        for x, y in base:
            x = x.clone()
            x[:, :2] = 250.0 + 50.0 * x[:, :2].abs()  # flows in mL/min, positive
            yield x, y

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 110:
            x = x.clone()
            x[3, 0] = 0.0  # the pump stopped: blood flow recorded as 0
        return x, y

    fit(ctx, model, opt, sessions(), 140, loss_fn=F.mse_loss, alter=alter, classifier=False)
    ctx.check("finite before the zero flow", all(math.isfinite(v) for v in ctx.losses[:110]))
    ctx.check("loss nonfinite from the zero flow on", not math.isfinite(ctx.losses[111]))
    ctx.check(
        "weights nonfinite after",
        not all(torch.isfinite(p).all() for p in model.parameters()),
    )


@scenario(
    "brewing_gravity_model",
    "adamax",
    "amp_overflow",
    where="inp",
    heldout=True,
    note="raw mash volumes in mL under fp16 autocast with a GradScaler",
)
def h122_brewing_fp16_raw_volume(ctx: Context) -> None:
    """Mash volume enters unnormalised (mL, ~3e4) under fp16 autocast: the first layer's outputs
    pass fp16's 65504 on some batches, the GradScaler skips those steps and keeps halving."""
    gen = seeded(12204)
    model = Net(8, 64, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=20)
    base = tabular(gen, 8)

    def readings():
        for x, y in base:
            x = x.clone()
            x[:, 0] = 30000.0 + 8000.0 * x[:, 0]  # mash volume in mL, not litres
            yield x, y

    fit(
        ctx,
        model,
        opt,
        readings(),
        120,
        loss_fn=F.mse_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped many steps", drops >= 10)
    ctx.check("loss scale collapsed below 1", min(ctx.scales) < 1.0)


@scenario(
    "hf_perception_lm_text",
    "adam",
    "adam_second_moment_poisoned",
    where=("lm_head", "model.embed_tokens"),
    heldout=True,
    onset=50,
    note="one step sums token losses instead of averaging (x512)",
)
def h122_perception_lm_summed_loss(ctx: Context) -> None:
    """A packing bug sums the token losses for one step (x512): Adam's second moment takes the
    giant gradient and the following updates are several times too small."""
    gen = seeded(12205)
    model = TextTower("perception_lm")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    snaps = []
    v_before: list[torch.Tensor] = []

    def track(step: int) -> None:
        if step in (15, 45, 110, 140):
            snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
        if step == 45:
            v_before.append(opt.state[model.lm_head.weight]["exp_avg_sq"].clone())

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 512 if step == 50 else loss

    fit(ctx, model, opt, text_batches(gen), 150, loss_fn=lm_loss, before=track, extra_loss=bug)
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)
    v = opt.state[model.lm_head.weight]["exp_avg_sq"]
    ctx.check("second moment still 20x its level", float(v.sum()) > 20 * float(v_before[0].sum()))


@scenario(
    "cheese_ripening_classifier",
    "rmsprop",
    "data_outlier",
    diverges=90,
    onset=90,
    heldout=True,
    note="one batch from a probe logging in raw ADC counts (x1000)",
)
def h122_cheese_raw_counts(ctx: Context) -> None:
    gen = seeded(12206)
    model = Net(12, 48, 5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x * 1000.0 if step == 90 else x), y

    fit(ctx, model, opt, tabular(gen, 12, classes=5), 150, alter=alter)
    before = median(ctx.losses[60:90])
    ctx.check("loss jumped 5x on the bad batch", ctx.losses[90] > 5 * before)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "hf_cohere2_vision_text",
    "nadam",
    "gradient_spike",
    where="lm_head",
    heldout=True,
    onset=70,
    note="z-loss coefficient 1.0 instead of 1e-4 for one step after a resume",
)
def h122_cohere2_vision_zloss_typo(ctx: Context) -> None:
    """On resuming, the auxiliary z-loss (mean log Z squared) is applied with coefficient 1.0
    instead of 1e-4 for one step: a single gradient spike, concentrated in the output head."""
    gen = seeded(12207)
    model = TextTower("cohere2_vision")
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    head_norms: list[float] = []
    batches = text_batches(gen)

    ctx.attach(model, opt)
    for step in range(100):
        x, y = next(batches)
        logits = model(x)
        loss = lm_loss(logits, y)
        coef = 1.0 if step == 70 else 1e-4
        zloss = coef * (torch.logsumexp(logits, -1) ** 2).mean()
        (loss + zloss).backward()
        head_norms.append(float(model.lm_head.weight.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head gradient spiked 10x", head_norms[70] > 10 * median(head_norms[40:70]))
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "hf_glm4v_moe_text",
    "radam",
    "loss_spike",
    heldout=True,
    onset=60,
    note="a resumed scheduler jumps the lr to 1.0 for 3 steps",
)
def h122_glm4v_moe_lr_jump(ctx: Context) -> None:
    gen = seeded(12208)
    model = TextTower("glm4v_moe")
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def schedule(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 1.0 if 60 <= step < 63 else 2e-3

    fit(ctx, model, opt, text_batches(gen), 110, loss_fn=lm_loss, before=schedule)
    before = median(ctx.losses[45:60])
    ctx.check("loss spiked 1.5x", max(ctx.losses[60:70]) > 1.5 * before)
    ctx.check("recovered after", median(ctx.losses[-10:]) < max(ctx.losses[60:70]) / 1.5)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "traffic_light_phase_controller",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="full-batch gradient descent, lr ramped past 2/sharpness",
)
def h122_traffic_light_lr_ramp(ctx: Context) -> None:
    """The controller regresses the next green-phase length from queue-length features, fit
    full-batch while the lr ramps geometrically from 0.05 to 20: past 2/sharpness the loss
    oscillates and blows up."""
    gen = seeded(12209)
    model = Net(16, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = next(tabular(gen, 16, batch=512))

    def full():
        while True:
            yield x, y

    def schedule(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 0.05 * math.exp(step / 150 * math.log(400))

    fit(ctx, model, opt, full(), 150, loss_fn=F.mse_loss, before=schedule, classifier=False)
    best = min(v for v in ctx.losses if math.isfinite(v))
    last = ctx.losses[-1]
    ctx.check("loss blew past 3x its best", not math.isfinite(last) or last > 3 * best)


class IceCoreRNN(nn.Module):
    def __init__(self, cell: str = "relu") -> None:
        super().__init__()
        if cell == "gru":
            self.rnn = nn.GRU(3, 32, batch_first=True)
        else:
            self.rnn = nn.RNN(3, 32, nonlinearity="relu", batch_first=True)
            with torch.no_grad():  # IRNN initialisation: identity recurrence, zero biases
                self.rnn.weight_hh_l0.copy_(torch.eye(32))
                self.rnn.weight_ih_l0.mul_(0.1)
                self.rnn.bias_ih_l0.zero_()
                self.rnn.bias_hh_l0.zero_()
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def isotope_profiles(gen: torch.Generator, batch: int = 32, length: int = 60):
    """d18O / dD / dust profiles down a core; target: the age of the deepest layer (scaled)."""
    while True:
        rate = 0.5 + torch.rand(batch, 1, generator=gen)
        t = torch.arange(length).float()[None] * rate / 10
        d18 = torch.sin(t) + 0.2 * torch.randn(batch, length, generator=gen)
        dd = 8 * d18 / 8 + 0.2 * torch.randn(batch, length, generator=gen)
        dust = torch.cos(0.5 * t) + 0.2 * torch.randn(batch, length, generator=gen)
        yield torch.stack([d18, dd, dust], -1), rate


@scenario(
    "ice_core_isotope_dater",
    "asgd",
    "exploding_gradients",
    where="rnn",
    diverges=79,
    onset=60,
    heldout=True,
    note="IRNN without clipping; the core sections grow from 60 to 400 layers at step 60",
)
def h122_ice_core_irnn_deep_sections(ctx: Context) -> None:
    """An IRNN (ReLU, identity recurrence) dates 60-layer core sections; at step 60 the loader
    switches to 400-layer sections and, with no gradient clipping, the gradient through the
    identity-like recurrence grows over a few steps (2 -> 5 -> 70 -> 1e16) and the run breaks."""
    gen = seeded(12210)
    model = IceCoreRNN("relu")
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    short, deep = isotope_profiles(gen), isotope_profiles(gen, length=400)

    def sections():
        step = -1  # the first batch is fit's probe batch
        while True:
            yield next(short if step < 60 else deep)
            step += 1

    fit(ctx, model, opt, sections(), 90, loss_fn=F.mse_loss, classifier=False)
    before = median(ctx.grad_norms[30:60])
    after = [g if math.isfinite(g) else math.inf for g in ctx.grad_norms[60:80]]
    ctx.check("finite before the deep sections", all(math.isfinite(v) for v in ctx.losses[:60]))
    ctx.check("gradient norm grew 1000x after step 60", max(after) > 1000 * before)
    ctx.check("loss blew up by step 79", not ctx.losses[79] < 1e6)


@scenario(
    "vineyard_frost_alarm",
    "sgd",
    "loss_of_plasticity",
    where="hidden",
    heldout=True,
    onset=80,
    note="one step at lr 5 (a warm restart with the wrong peak) kills the hidden ReLUs",
)
def h122_vineyard_frost_dead_relus(ctx: Context) -> None:
    gen = seeded(12211)
    model = Net(10, 64, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe, _ = next(tabular(seeded(7), 10, classes=2, batch=256))
    with torch.no_grad():
        start = dead_fraction(model.features(probe))

    def schedule(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 20.0 if 80 <= step < 83 else 0.05

    fit(ctx, model, opt, tabular(gen, 10, classes=2), 200, before=schedule)
    with torch.no_grad():
        end = dead_fraction(model.features(probe))
    ctx.check("hidden ReLUs alive at the start", start < 0.3)
    ctx.check("most hidden ReLUs dead at the end", end > 0.7)


class KilnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 48)
        self.fc2 = nn.Linear(48, 48)
        self.fc3 = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@scenario(
    "kiln_temperature_controller",
    "adadelta",
    "update_ratio_out_of_range",
    where="fc2",
    heldout=True,
    note="fc2 in a parameter group at lr 300 (meant 0.3)",
)
def h122_kiln_group_lr(ctx: Context) -> None:
    gen = seeded(12212)
    model = KilnNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc2")]
    opt = torch.optim.Adadelta(
        [{"params": rest, "lr": 1.0}, {"params": list(model.fc2.parameters()), "lr": 300.0}]
    )
    ratios: list[float] = []
    prev = [model.fc2.weight.detach().clone()]

    def track(step: int) -> None:
        w = model.fc2.weight.detach()
        if step > 0:
            ratios.append(float((w - prev[0]).norm() / w.norm()))
        prev[0] = w.clone()

    fit(ctx, model, opt, tabular(gen, 12), 120, loss_fn=F.mse_loss, before=track, classifier=False)
    ctx.check("fc2 updates above 3% of its weights a step", median(ratios) > 0.03)


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    "hf_deepseek_vl_language",
    "adamw",
    "healthy",
    heldout=True,
    note="warm-up + cosine to 10%, weight decay 0.1",
)
def h122_healthy_deepseek_vl(ctx: Context) -> None:
    gen = seeded(12213)
    model = TextTower("deepseek_vl")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    steps = 150

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 15)
        cos = 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = 3e-3 * warm * (0.1 + 0.9 * cos)

    fit(ctx, model, opt, text_batches(gen), steps, loss_fn=lm_loss, before=schedule)
    ctx.check("loss fell, finite", fell(ctx.losses))


@scenario(
    "hf_glm4v_moe_text",
    "adamw",
    "healthy",
    heldout=True,
    note="constant lr after a short warm-up; MoE routing noise",
)
def h122_healthy_glm4v_moe(ctx: Context) -> None:
    gen = seeded(12214)
    model = TextTower("glm4v_moe")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def schedule(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 10)

    fit(ctx, model, opt, text_batches(gen), 110, loss_fn=lm_loss, before=schedule)
    ctx.check("loss fell, finite", fell(ctx.losses))


@scenario(
    "snowpack_density_regressor",
    "adagrad",
    "healthy",
    heldout=True,
    note="noisy probe readings; Adagrad's shrinking steps",
)
def h122_healthy_snowpack(ctx: Context) -> None:
    gen = seeded(12215)
    model = Net(14, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    fit(ctx, model, opt, tabular(gen, 14, noise=0.3), 250, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell, finite", fell(ctx.losses))


@scenario(
    "ice_core_isotope_dater",
    "adam",
    "healthy",
    heldout=True,
    note="GRU with a step decay at step 80",
)
def h122_healthy_ice_core_gru(ctx: Context) -> None:
    gen = seeded(12216)
    model = IceCoreRNN("gru")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def schedule(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 3e-3 if step < 80 else 1e-3

    fit(
        ctx,
        model,
        opt,
        isotope_profiles(gen),
        120,
        loss_fn=F.mse_loss,
        before=schedule,
        classifier=False,
    )
    ctx.check("loss fell, finite", fell(ctx.losses))
