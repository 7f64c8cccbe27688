"""Held-out set 131 (``h131_``): Hugging Face Kolibri-1.1 and Inkling-2-Loop causal LMs from tiny
configs, and hand-written models of fields not covered before (a sommelier tasting-note scorer, a
carillon bell-tuning classifier, a maple-syrup sap-flow forecaster, a typewriter key-jam detector,
a beekeeping brood-frame classifier, a pottery glaze-colour regressor, a harpsichord pluck
classifier, a gondola wake-height regressor, an abacus bead reader and a quilt-pattern classifier
under fp16 autocast with a GradScaler).

Every scenario checks that its fault really happened (or, for a control, that the run trained).
"""

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
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from tiny configs --------------------------------------------------------


def hf_kolibri(vocab: int = 128, dim: int = 32):
    from transformers import Kolibri1_1Config, Kolibri1_1ForCausalLM

    config = Kolibri1_1Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        index_num_heads=1,
        mlp_only_intermediate_size=2 * dim,
        moe_intermediate_size=dim,
        num_local_experts=4,
        shared_expert_intermediate_size=dim,
        max_position_embeddings=64,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
    )
    return Kolibri1_1ForCausalLM(config)


def hf_inkling(vocab: int = 128, dim: int = 32):
    from transformers import Inkling2LoopForCausalLM, Inkling2LoopTextConfig

    config = Inkling2LoopTextConfig(
        vocab_size=vocab,
        unpadded_vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        swa_num_attention_heads=2,
        swa_num_key_value_heads=2,
        swa_head_dim=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=dim,
        loop_gate_rank=8,
        d_rel=8,
        sliding_window_size=16,
        max_position_embeddings=64,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
    )
    return Inkling2LoopForCausalLM(config)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _warm_cosine(opt: torch.optim.Optimizer, peak: float, warm: int, total: int):
    def before(step: int) -> None:
        if step < warm:
            lr = peak * (step + 1) / warm
        else:
            lr = 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))
        for g in opt.param_groups:
            g["lr"] = lr

    return before


def _finite(ctx: Context) -> bool:
    return all(math.isfinite(v) for v in ctx.losses)


def _fell(ctx: Context, frac: float) -> bool:
    first = sum(ctx.losses[:5]) / 5
    last = sum(ctx.losses[-10:]) / 10
    return last < frac * first


@scenario(
    "kolibri_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.1.self_attn", "model.layers.1.self_attn.q_norm"),
    diverges=None,
    heldout=True,
    note="QK-norm gains of layer 1 put in a param group at 100x the rate, no decay: logits grow",
)
def h131_kolibri_lm_qk_gain_growth(ctx: Context) -> None:
    gen = seeded(13101)
    model = hf_kolibri()
    attn = model.model.layers[1].self_attn
    gains = [attn.q_norm.weight, attn.k_norm.weight]
    ids = {id(p) for p in gains}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.1}, {"params": gains, "lr": 0.3, "weight_decay": 0.0}],
        lr=3e-3,
    )
    seen: dict[str, float] = {}

    def grab(name: str):
        def hook(_m, _i, out):
            seen[name] = float(out.detach().norm(dim=-1).max())

        return hook

    attn.q_norm.register_forward_hook(grab("q"))
    attn.k_norm.register_forward_hook(grab("k"))
    bound: list[float] = []

    def before(step: int) -> None:
        if seen:
            bound.append(seen["q"] * seen["k"] * attn.scaling)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        80,
        loss_fn=lm_loss,
        classifier=False,
        forward=_logits,
        before=before,
    )
    ctx.check("layer-1 logit bound grew over 10x", bound[-1] > 10 * bound[1])
    ctx.check("logit bound above 50 at the end", bound[-1] > 50)


@scenario("kolibri_lm", "adamw", "healthy", heldout=True, note="warm-up + cosine, decay, clip")
def h131_kolibri_lm_healthy(ctx: Context) -> None:
    gen = seeded(13102)
    model = hf_kolibri()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        80,
        loss_fn=lm_loss,
        classifier=False,
        forward=_logits,
        before=_warm_cosine(opt, 3e-3, 10, 80),
    )
    ctx.check("loss finite", _finite(ctx))
    ctx.check("loss fell by a quarter", _fell(ctx, 0.75))


def _control_char_batch(at: int, gen: torch.Generator):
    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == at:
            x = torch.randint(1, 9, x.shape, generator=gen)
            y = torch.randint(1, 9, y.shape, generator=gen)
        return x, y

    return alter


@scenario(
    "inkling_lm",
    "radam",
    "data_outlier",
    diverges=60,
    heldout=True,
    onset=60,
    note="one batch of control bytes (a binary file in the text shard)",
)
def h131_inkling_lm_binary_shard(ctx: Context) -> None:
    gen = seeded(13103)
    model = hf_inkling()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        80,
        loss_fn=lm_loss,
        classifier=False,
        forward=_logits,
        alter=_control_char_batch(60, gen),
    )
    ctx.check("loss spiked at 60", ctx.losses[60] > 1.5 * max(ctx.losses[50:60]))
    ctx.check("loss back down after", sum(ctx.losses[-5:]) / 5 < 0.8 * ctx.losses[60])


@scenario("inkling_lm", "adam", "healthy", heldout=True, note="warm-up + cosine")
def h131_inkling_lm_healthy(ctx: Context) -> None:
    gen = seeded(13104)
    model = hf_inkling()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        60,
        loss_fn=lm_loss,
        classifier=False,
        forward=_logits,
        before=_warm_cosine(opt, 3e-3, 8, 60),
    )
    ctx.check("loss finite", _finite(ctx))
    ctx.check("loss fell by a quarter", _fell(ctx, 0.75))


# -- hand-written models --------------------------------------------------------------------------


def _teacher_batches(gen, dim, classes, batch=64, noise=0.5, flip=0.0):
    """Generated feature vectors labelled by a fixed random linear teacher plus noise."""
    w = torch.randn(dim, classes, generator=gen)
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = (x @ w + noise * torch.randn(batch, classes, generator=gen)).argmax(1)
        if flip:
            bad = torch.rand(batch, generator=gen) < flip
            y = torch.where(bad, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


class Sommelier(nn.Module):
    """Tasting-note features (acidity, tannin, body, ...) -> one of six grades."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


@scenario(
    "sommelier_scorer",
    "sgd",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the grade head at 400x the trunk's rate, noisy labels: its logits run away",
)
def h131_sommelier_scorer_hot_head(ctx: Context) -> None:
    gen = seeded(13105)
    model = Sommelier()
    opt = torch.optim.SGD(
        [{"params": model.trunk.parameters()}, {"params": model.head.parameters(), "lr": 20.0}],
        lr=0.05,
    )
    probe = torch.randn(256, 24, generator=gen)
    with torch.no_grad():
        start = float(model(probe).abs().max())
    fit(ctx, model, opt, _teacher_batches(gen, 24, 6, noise=0.0), 200)
    with torch.no_grad():
        end = float(model(probe).abs().max())
    ctx.check("head logits grew over 20x", end > 20 * start)
    ctx.check("head logits above 15", end > 15)


@scenario("sommelier_scorer", "rprop", "healthy", heldout=True, note="full-batch Rprop")
def h131_sommelier_scorer_healthy(ctx: Context) -> None:
    gen = seeded(13106)
    model = Sommelier()
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    data = _teacher_batches(gen, 24, 6, batch=512, flip=0.1)
    x, y = next(data)

    def same():
        while True:
            yield x, y

    fit(ctx, model, opt, same(), 60)
    ctx.check("loss finite", _finite(ctx))
    ctx.check("loss fell by a third", _fell(ctx, 0.67))


def _partial_batches(gen, batch=64):
    """16 measured partials (hum, prime, tierce, ...) around each of 12 pitch-class profiles."""
    centers = torch.randn(12, 16, generator=gen)
    while True:
        y = torch.randint(0, 12, (batch,), generator=gen)
        yield centers[y] + 0.3 * torch.randn(batch, 16, generator=gen), y


class Carillon(nn.Module):
    """Spectral partials of a struck bell -> which of 12 pitch classes it is tuned to."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU())
        self.head = nn.Linear(48, 12)
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) / self.tau


@scenario(
    "carillon_tuner",
    "adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="softmax temperature 0.01 (meant 1.0): the target's probability rounds to exactly 1",
)
def h131_carillon_tuner_cold_softmax(ctx: Context) -> None:
    gen = seeded(13107)
    model = Carillon(tau=0.01)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    data = _partial_batches(gen)
    fit(ctx, model, opt, data, 120)
    x, y = next(data)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows collapsed to p=1", frac > 0.5)


def _sap_batches(gen, batch=64):
    """Weather (night frost, day thaw, pressure, ...) -> standardised sap flow."""
    w = torch.randn(12, generator=gen)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        thaw = torch.relu(x[:, 0]) * torch.relu(-x[:, 1])
        y = torch.tanh(x @ w / 3) + thaw + 0.1 * torch.randn(batch, generator=gen)
        yield x, y[:, None]


@scenario(
    "maple_sap_forecaster",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="learning-rate warm-up that keeps climbing past 2/sharpness",
)
def h131_maple_sap_lr_climb(ctx: Context) -> None:
    gen = seeded(13108)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.005 * math.exp(step * math.log(400) / 150)

    fit(
        ctx, model, opt, _sap_batches(gen), 160, loss_fn=F.mse_loss, classifier=False, before=before
    )
    finite = [v for v in ctx.losses if math.isfinite(v)]
    best = min(finite)
    ctx.check("it trained first", best < 0.5 * ctx.losses[0])
    ctx.check("then blew up", not _finite(ctx) or ctx.losses[-1] > 20 * best)


def _keystroke_batches(gen, batch=48, length=48):
    """Intervals between keystrokes; a jam is a run of long stalls followed by a burst."""
    while True:
        x = 0.3 * torch.randn(batch, 1, length, generator=gen)
        y = (torch.rand(batch, generator=gen) < 0.5).long()
        start = torch.randint(0, length - 12, (batch,), generator=gen)
        for i in torch.nonzero(y).flatten().tolist():
            s = int(start[i])
            x[i, 0, s : s + 6] += 1.5
            x[i, 0, s + 6 : s + 10] -= 1.0
        yield x, y


class KeyJam(nn.Module):
    def __init__(self, depth: int = 8, gain: float = 1.0) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(1 if i == 0 else 16, 16, 5, padding=2) for i in range(depth)
        )
        self.head = nn.Linear(16, 2)
        if gain != 1.0:
            for c in self.convs:
                nn.init.normal_(c.weight, std=gain / math.sqrt(c.in_channels * 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = F.relu(c(x))
        return self.head(x.mean(-1))


@scenario(
    "typewriter_jam_detector",
    "sgd",
    "exploding_gradients",
    where=("convs.0", "convs.1"),
    diverges="auto",
    heldout=True,
    note="8 unnormalised conv layers initialised at 2.2x the He scale",
)
def h131_typewriter_jam_hot_init(ctx: Context) -> None:
    gen = seeded(13109)
    model = KeyJam(depth=8, gain=2.2 * math.sqrt(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fit(ctx, model, opt, _keystroke_batches(gen), 40)
    ctx.check("gradient norm above 1e3", max(g for g in ctx.grad_norms if math.isfinite(g)) > 1e3)
    ctx.check("first layer's grad 100x a He-init twin's", _hot_vs_he(gen))
    ctx.check("loss blew up", not _finite(ctx) or max(ctx.losses) > 10 * ctx.losses[0])


def _hot_vs_he(gen) -> bool:
    x, y = next(_keystroke_batches(gen))
    norms = []
    for gain in (2.2 * math.sqrt(2), math.sqrt(2)):
        torch.manual_seed(0)
        net = KeyJam(depth=8, gain=gain)
        F.cross_entropy(net(x), y).backward()
        norms.append(float(net.convs[0].weight.grad.norm()))
    return norms[0] > 100 * norms[1]


@scenario("typewriter_jam_detector", "rmsprop", "healthy", heldout=True, note="step decay")
def h131_typewriter_jam_healthy(ctx: Context) -> None:
    gen = seeded(13110)
    model = KeyJam(depth=4)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 40, 0.5)
    fit(ctx, model, opt, _keystroke_batches(gen), 100, before=lambda s: s and sched.step())
    ctx.check("loss finite", _finite(ctx))
    ctx.check("loss fell by a third", _fell(ctx, 0.67))


def _brood_batches(gen, batch=64):
    """8x8 comb images: capped brood (dense blocks), open larvae (sparse dots), empty comb."""
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        x = 0.2 * torch.rand(batch, 1, 8, 8, generator=gen)
        dots = (torch.rand(batch, 1, 8, 8, generator=gen) < 0.2).float()
        block = torch.zeros(batch, 1, 8, 8)
        block[:, :, 2:6, 2:6] = 1.0
        x = x + (y == 0).float()[:, None, None, None] * block
        x = x + (y == 1).float()[:, None, None, None] * dots
        yield x, y


class Brood(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 64)
        self.head = nn.Linear(64, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


@scenario(
    "brood_frame_classifier",
    "adagrad",
    "loss_of_plasticity",
    where=("fc",),
    diverges="auto",
    heldout=True,
    onset=60,
    note="a warm restart to 100x the rate for 3 steps kills the fc ReLUs; they never come back",
)
def h131_brood_frame_dead_units(ctx: Context) -> None:
    gen = seeded(13111)
    model = Brood()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    data = _brood_batches(gen)
    probe, _ = next(data)
    before_dead: list[float] = []

    def before(step: int) -> None:
        if step == 60:
            with torch.no_grad():
                before_dead.append(dead_fraction(model.features(probe)))
        opt.param_groups[0]["lr"] = 5.0 if 60 <= step < 63 else 0.05

    fit(ctx, model, opt, data, 150, before=before)
    with torch.no_grad():
        after = dead_fraction(model.features(probe))
    pre = sum(ctx.losses[50:60]) / 10
    ctx.check("under half the fc units dead before", before_dead[0] < 0.5)
    ctx.check("over 85% of fc units dead after", after > 0.85)
    ctx.check(
        "loss stuck above its pre-restart level", sum(ctx.losses[-10:]) / 10 > max(10 * pre, 0.1)
    )


def _glaze_batches(gen, batch=64):
    """Oxide percentages (iron, copper, cobalt, ...) -> fired glaze colour (L, a, b), scaled."""
    w = torch.randn(16, 3, generator=gen) / 4
    while True:
        x = torch.rand(batch, 16, generator=gen)
        y = torch.tanh(x @ w * 2) + 0.05 * torch.randn(batch, 3, generator=gen)
        yield x, y


class Glaze(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU())
        self.out = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


@scenario(
    "pottery_glaze_regressor",
    "adam",
    "adam_second_moment_poisoned",
    where=("out",),
    heldout=True,
    onset=50,
    note="an L2 penalty on the output layer whose ramp evaluated to 1e5 for one step",
)
def h131_pottery_glaze_poisoned_v(ctx: Context) -> None:
    gen = seeded(13112)
    model = Glaze()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves: list[float] = []
    vmax: list[float] = []
    last = [model.out.weight.detach().clone()]

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 50:
            return loss + 1e5 * model.out.weight.pow(2).sum()
        return loss

    def before(step: int) -> None:
        w = model.out.weight.detach()
        moves.append(float((w - last[0]).norm()))
        last[0] = w.clone()
        st = opt.state.get(model.out.weight)
        vmax.append(float(st["exp_avg_sq"].max()) if st else 0.0)

    fit(
        ctx,
        model,
        opt,
        _glaze_batches(gen),
        130,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=extra,
        before=before,
    )
    ctx.check("out's second moment jumped over 1e6x", vmax[52] > 1e6 * vmax[50])
    early = sum(moves[30:50]) / 20
    late = sum(moves[90:130]) / 40
    ctx.check("out's updates stalled over 20x after", late < early / 20)
    ctx.check("loss finite", _finite(ctx))


class Harpsichord(nn.Module):
    """Pluck envelope features -> which of 8 registers, plus an auxiliary quill-wear head."""

    def __init__(self) -> None:
        super().__init__()
        self.pluck = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 8)
        self.aux = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pluck(x)
        self.wear = self.aux(h)
        return self.head(h)


@scenario(
    "harpsichord_pluck_classifier",
    "nesterov",
    "gradient_spike",
    where=("aux",),
    heldout=True,
    onset=70,
    note="the auxiliary head's loss weight read 300 instead of 0.3 for one step",
)
def h131_harpsichord_aux_weight_blip(ctx: Context) -> None:
    gen = seeded(13113)
    model = Harpsichord()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    target = torch.randn(64, 1, generator=gen)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        weight = 300.0 if step == 70 else 0.3
        return loss + weight * F.mse_loss(model.wear, target[: len(model.wear)])

    fit(ctx, model, opt, _teacher_batches(gen, 20, 8), 140, extra_loss=extra)
    base = sorted(ctx.grad_norms[55:70])[7]
    ctx.check("gradient norm spiked over 50x at 70", ctx.grad_norms[70] > 50 * base)
    ctx.check("loss finite", _finite(ctx))
    ctx.check("loss recovered", sum(ctx.losses[-10:]) / 10 < 1.5 * sum(ctx.losses[60:70]) / 10)


def _wake_batches(gen, at: int, batch=64):
    """Ten hull and water sensors -> wake height; one reading goes missing (NaN) at ``at``."""
    w = torch.randn(10, generator=gen)
    step = 0
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = (torch.sin(x @ w / 2) + 0.1 * torch.randn(batch, generator=gen))[:, None]
        if step == at + 1:  # the first batch goes to the sharpness probe
            x[5, 3] = float("nan")
        step += 1
        yield x, y


@scenario(
    "gondola_wake_regressor",
    "adadelta",
    "nonfinite",
    where=("sensors",),
    diverges=90,
    heldout=True,
    onset=90,
    note="a dropped sensor reading arrives as NaN in one sample",
)
def h131_gondola_wake_missing_reading(ctx: Context) -> None:
    gen = seeded(13114)
    model = nn.Sequential()
    model.add_module("sensors", nn.Linear(10, 48))
    model.add_module("act", nn.Tanh())
    model.add_module("mid", nn.Linear(48, 48))
    model.add_module("act2", nn.Tanh())
    model.add_module("height", nn.Linear(48, 1))
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, _wake_batches(gen, 90), 110, loss_fn=F.mse_loss, classifier=False)
    ctx.check("finite before 90", all(math.isfinite(v) for v in ctx.losses[:90]))
    ctx.check("loss NaN at 90", math.isnan(ctx.losses[90]))
    ctx.check("sensors weights NaN after", bool(torch.isnan(model.sensors.weight).any()))


def _relabelled(at: int):
    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == at:
            y = (y + 3) % 10
        return x, y

    return alter


@scenario(
    "abacus_bead_reader",
    "asgd",
    "loss_spike",
    diverges=120,
    heldout=True,
    onset=120,
    note="one shard's labels off by three rows of beads",
)
def h131_abacus_bead_bad_labels(ctx: Context) -> None:
    gen = seeded(13115)
    model = nn.Sequential(
        nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=0.4)
    fit(ctx, model, opt, digit_batches(gen), 170, alter=_relabelled(120))
    pre = sorted(ctx.losses[110:120])[5]
    ctx.check("loss spiked over 4x at 120", ctx.losses[120] > 4 * pre)
    ctx.check("loss recovered", sum(ctx.losses[-10:]) / 10 < 2 * pre)


class Quilt(nn.Module):
    """Raw stitch counts per block (unnormalised, in the tens of thousands) -> pattern class."""

    def __init__(self) -> None:
        super().__init__()
        self.stitch = nn.Linear(32, 64)
        self.mix = nn.Linear(64, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stitch(x)
        self.peak = h.detach()
        return self.head(F.relu(self.mix(F.relu(h))))


def _stitch_batches(gen, batch=64):
    w = torch.randn(32, 5, generator=gen)
    while True:
        z = torch.randn(batch, 32, generator=gen)
        y = (z @ w).argmax(1)
        yield 2e4 + 8e3 * z, y


@scenario(
    "quilt_pattern_classifier",
    "nadam",
    "amp_overflow",
    where=("stitch",),
    diverges=None,
    heldout=True,
    note="fp16 autocast + GradScaler on raw stitch counts: the first layer's grads overflow",
)
def h131_quilt_pattern_fp16_overflow(ctx: Context) -> None:
    gen = seeded(13116)
    model = Quilt()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    scaler = torch.amp.GradScaler("cpu")
    peak = [0.0]

    def before(step: int) -> None:
        if step and hasattr(model, "peak"):
            peak[0] = max(peak[0], float(model.peak.float().abs().max()))

    fit(ctx, model, opt, _stitch_batches(gen), 60, scaler=scaler, amp=True, before=before)
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check("scale cut at least 10 times", drops >= 10)
    ctx.check("stitch pre-activations within 2x of the fp16 max", peak[0] > 65504 / 2)
    ctx.check("the scale ended at most 16", ctx.scales[-1] <= 16)
