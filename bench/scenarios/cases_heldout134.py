"""Held-out set 134 (``h134_``): Hugging Face GroupViT, OWLv2, MetaCLIP-2 and Chinese-CLIP text
towers as sequence classifiers from tiny configs, and hand-written models of fields not covered
before (skateboard tricks, lute strings, abalone ages, yacht heel, pole vault, diving boards,
espresso shots, archery, trampolines, marimba bars, sugar refractometers, ziplines).

Each fault is induced the way it happens in practice and verified by its own checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, bert_batches, collapsed_fraction, grad_norm, scenario, seeded

# -- shared pieces --------------------------------------------------------------------------------


class Regressor(nn.Module):
    """A small tabular net: ``body`` (Linear/activation stack) and a ``head``."""

    def __init__(self, inputs: int, hidden: int, outputs: int = 1, act=nn.Tanh, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), act()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tabular(gen: torch.Generator, n: int, d: int, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised generated features and a target computed from them."""
    x = torch.randn(n, d, generator=gen)
    return x, fn(x)


def batches(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, batch: int):
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


class TextClassifier(nn.Module):
    """A Hugging Face text tower, mean-pooled, and a linear ``head``."""

    def __init__(self, tower: nn.Module, dim: int, labels: int = 2) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(dim, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(input_ids=x).last_hidden_state.mean(1))


def clip_text_kwargs(dim: int = 32) -> dict:
    return dict(
        vocab_size=128,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def train_steps(ctx: Context, model, opt, data, steps: int, loss_fn, *, before=None, alter=None):
    for step in range(steps):
        x, y = next(data)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def finite_losses(ctx: Context) -> bool:
    return all(math.isfinite(v) for v in ctx.losses)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# -- Hugging Face text towers ---------------------------------------------------------------------


@scenario(
    "hf_groupvit_text_cls",
    "AdamW",
    "attention_logit_growth",
    where=(
        "tower.text_model.encoder.layers.0.self_attn",
        "tower.text_model.encoder.layers.1.self_attn",
    ),
    heldout=True,
    note="GroupViT text tower classifier: q/k projections trained at 30x the base learning rate "
    "with weight decay exempted (a per-group config slip); q.k logits grow without bound",
)
def h134_groupvit_text_attention_growth(ctx: Context) -> None:
    from transformers import GroupViTTextConfig, GroupViTTextModel

    gen = seeded(1341)
    model = TextClassifier(GroupViTTextModel(GroupViTTextConfig(**clip_text_kwargs())), 32)
    layers = model.tower.text_model.encoder.layers
    qk = [
        p
        for layer in layers
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj)
        for p in m.parameters()
    ]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}], lr=1e-3
    )
    captured: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        for name in ("q_proj", "k_proj"):
            getattr(layer.self_attn, name).register_forward_hook(
                lambda m, inp, out, key=f"{i}.{name}": captured.__setitem__(key, out.detach())
            )

    def logit_max() -> float:
        top = 0.0
        for i in range(len(layers)):
            q, k = captured[f"{i}.q_proj"], captured[f"{i}.k_proj"]
            b, t, d = q.shape
            q, k = (z.reshape(b, t, 2, d // 2).transpose(1, 2) for z in (q, k))
            top = max(top, float((q @ k.transpose(-1, -2)).abs().amax()) / math.sqrt(d // 2))
        return top

    data = bert_batches(gen)
    ctx.attach(model, opt)
    tops = []
    for _ in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        tops.append(logit_max())
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("attention logits grew more than 10x", tops[-1] > 10 * tops[0])
    ctx.check("attention logits exceed 30", tops[-1] > 30)
    ctx.check("loss stayed finite", finite_losses(ctx))


@scenario(
    "hf_owlv2_text_cls",
    "Adam",
    "healthy",
    heldout=True,
    note="OWLv2 text tower classifier, Adam with warmup and cosine decay (control)",
)
def h134_owlv2_text_control(ctx: Context) -> None:
    from transformers import Owlv2TextConfig, Owlv2TextModel

    gen = seeded(1342)
    model = TextClassifier(Owlv2TextModel(Owlv2TextConfig(**clip_text_kwargs())), 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 150

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 15)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))

    ctx.attach(model, opt)
    data = bert_batches(gen)

    def loss_fn(out, y):
        return F.cross_entropy(out, y)

    def alter(step, x, y):
        ctx.targets(y)
        return x, y

    train_steps(ctx, model, opt, data, steps, loss_fn, before=schedule, alter=alter)
    ctx.check("loss fell", mean(ctx.losses[-15:]) < 0.8 * mean(ctx.losses[:15]))
    ctx.check("loss stayed finite", finite_losses(ctx))


@scenario(
    "hf_metaclip2_text_cls",
    "SGD",
    "gradient_spike",
    where=("head",),
    heldout=True,
    onset=70,
    note="MetaCLIP-2 text tower classifier: a z-loss on the head's logits switched on for one step "
    "with weight 5 instead of 1e-4 (a config unit slip); one giant gradient, then recovery",
)
def h134_metaclip2_text_grad_spike(ctx: Context) -> None:
    from transformers import MetaClip2TextConfig, MetaClip2TextModel

    gen = seeded(1343)
    model = TextClassifier(MetaClip2TextModel(MetaClip2TextConfig(**clip_text_kwargs())), 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = bert_batches(gen)
    ctx.attach(model, opt)
    head_norms = []
    for step in range(220):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        weight = 5 if step == 70 else 1e-4
        total = loss + weight * torch.logsumexp(logits, -1).pow(2).mean()
        total.backward()
        head_norms.append(float(model.head.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(ctx.grad_norms[40:70])[15]
    ctx.check("gradient norm spiked 20x at the onset", ctx.grad_norms[70] > 20 * before)
    ctx.check(
        "the head's own gradient spiked 20x",
        head_norms[70] > 20 * sorted(head_norms[40:70])[15],
    )
    ctx.check(
        "no divergence: loss finite and recovering",
        finite_losses(ctx) and mean(ctx.losses[-20:]) < 0.85 * mean(ctx.losses[71:91]),
    )


@scenario(
    "hf_chinese_clip_text_cls",
    "Adam",
    "loss_spike",
    where=("head",),
    heldout=True,
    onset=80,
    note="Chinese-CLIP text tower classifier: resuming from a checkpoint whose head failed to load "
    "(re-initialised, larger init); the loss jumps and recovers",
)
def h134_chinese_clip_text_loss_spike(ctx: Context) -> None:
    from transformers import ChineseCLIPTextConfig, ChineseCLIPTextModel

    gen = seeded(1344)
    kwargs = clip_text_kwargs()
    for k in ("bos_token_id", "eos_token_id"):
        kwargs.pop(k)
    kwargs.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = TextClassifier(ChineseCLIPTextModel(ChineseCLIPTextConfig(**kwargs)), 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def before(step: int) -> None:
        if step == 80:
            with torch.no_grad():
                model.head.weight.normal_(0, 3.0, generator=gen)
                model.head.bias.zero_()

    def alter(step, x, y):
        ctx.targets(y)
        return x, y

    ctx.attach(model, opt)
    train_steps(
        ctx, model, opt, bert_batches(gen), 160, F.cross_entropy, before=before, alter=alter
    )
    prior = mean(ctx.losses[70:80])
    ctx.check("loss spiked 2x at the onset", ctx.losses[80] > 2 * prior)
    ctx.check("loss recovered", mean(ctx.losses[-10:]) < 0.6 * ctx.losses[80])
    ctx.check("loss stayed finite", finite_losses(ctx))


# -- hand-written models --------------------------------------------------------------------------


def trick_data(gen: torch.Generator, n: int = 1200, tricks: int = 6):
    """Board IMU summaries (pitch/roll/yaw rates, air time...) of six skateboard tricks."""
    centres = torch.randn(tricks, 12, generator=gen) * 1.5
    y = torch.randint(0, tricks, (n,), generator=gen)
    x = centres[y] + 0.6 * torch.randn(n, 12, generator=gen)
    return x, y


@scenario(
    "skateboard_trick_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    onset=40,
    note="skateboard-trick classifier: a temperature meant to multiply by 1/0.05 is applied to an "
    "unnormalised head from step 40; the float32 softmax saturates to exactly 1 on the targets",
)
def h134_skateboard_softmax_collapse(ctx: Context) -> None:
    gen = seeded(1345)
    x, y = trick_data(gen)
    model = Regressor(12, 48, 6, act=nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    data = batches(x, y, gen, 64)
    ctx.attach(model, opt)
    for step in range(160):
        xb, yb = next(data)
        ctx.targets(yb)
        logits = model(xb) * (20.0 if step >= 40 else 1.0)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        collapsed = collapsed_fraction(model(x[:256]) * 20.0, y[:256])
    ctx.check("over half the targets get softmax exactly 1.0", collapsed > 0.5)
    ctx.check("loss stayed finite", finite_losses(ctx))


@scenario(
    "lute_string_tension_regressor",
    "RMSprop",
    "healthy",
    heldout=True,
    note="lute string-tension regressor (length, gauge, pitch, material), RMSprop with step decay "
    "and noisy targets (control)",
)
def h134_lute_tension_control(ctx: Context) -> None:
    gen = seeded(1346)

    def tension(x):
        return (
            (x[:, 0] * 0.8 + x[:, 1] * 0.5).tanh() * 2 + x[:, 2] * x[:, 3] * 0.4 + 0.3 * x[:, 4]
        )[:, None]

    x, y = tabular(gen, 1500, 8, tension)
    y = y + 0.1 * torch.randn(y.shape, generator=gen)
    model = Regressor(8, 48)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 80, 0.5)
    ctx.attach(model, opt)

    def before(step: int) -> None:
        if step > 0:
            sched.step()

    train_steps(ctx, model, opt, batches(x, y, gen, 32), 240, F.mse_loss, before=before)
    ctx.check("loss fell 3x", mean(ctx.losses[-20:]) < mean(ctx.losses[:20]) / 3)
    ctx.check("loss stayed finite", finite_losses(ctx))


@scenario(
    "abalone_age_regressor",
    "SGD momentum",
    "data_outlier",
    heldout=True,
    onset=90,
    note="abalone-age regressor (shell measurements): one batch carries records whose weights "
    "were logged in milligrams instead of grams (1000x); one giant loss, then recovery",
)
def h134_abalone_outlier(ctx: Context) -> None:
    gen = seeded(1347)

    def rings(x):
        return (1.5 * x[:, 0] + x[:, 1] * 0.8 + 0.5 * (x[:, 2] * x[:, 3]).tanh())[:, None]

    x, y = tabular(gen, 1200, 7, rings)
    model = Regressor(7, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, xb, yb):
        if step == 90:
            xb = xb.clone()
            xb[:4, 4:7] *= 1000.0
            yb = yb.clone()
            yb[:4] *= 30.0
        return xb, yb

    ctx.attach(model, opt)
    train_steps(ctx, model, opt, batches(x, y, gen, 32), 200, F.mse_loss, alter=alter)
    prior = sorted(ctx.losses[70:90])[10]
    ctx.check("loss at the bad batch is 50x the median", ctx.losses[90] > 50 * prior)
    ctx.check("loss recovered", mean(ctx.losses[-10:]) < 3 * prior)
    ctx.check("loss stayed finite", finite_losses(ctx))


class HeelRNN(nn.Module):
    """Reads a yacht's wind/sail sequence and forecasts the next heel angle."""

    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def heel_data(gen: torch.Generator, n: int = 800, t: int = 60):
    wind = torch.randn(n, t, 4, generator=gen).cumsum(1) * 0.2
    y = (wind[:, -5:, 0].mean(1) * 0.7 + wind[:, -1, 1].sin() * 0.3)[:, None]
    return wind, y


@scenario(
    "yacht_heel_angle_forecaster",
    "Nesterov",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="yacht heel-angle forecaster: a tanh RNN over 60 steps with its recurrent matrix "
    "initialised at gain 3 (scaled orthogonal); backprop through time explodes",
)
def h134_yacht_exploding(ctx: Context) -> None:
    gen = seeded(1348)
    x, y = heel_data(gen)
    model = HeelRNN()
    with torch.no_grad():
        nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    rnn_norms = []
    data = batches(x, y, gen, 32)
    for _ in range(120):
        xb, yb = next(data)
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        rnn_norms.append(float(model.rnn.weight_hh_l0.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    finite = [v for v in rnn_norms if math.isfinite(v)]
    ctx.check("recurrent gradient norm exceeds 100", max(finite) > 100)
    ctx.check(
        "loss blew up",
        not finite_losses(ctx) or max(ctx.losses) > 100 * min(ctx.losses[:10]),
    )


def vault_data(gen: torch.Generator, n: int = 256):
    """Approach speed, pole stiffness, grip height, takeoff angle... -> cleared height."""
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] * 0.9 + 0.4 * x[:, 1] - 0.3 * x[:, 2] ** 2 + 0.2 * x[:, 3] * x[:, 4])[:, None]
    return x, y


@scenario(
    "pole_vault_takeoff_model",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=60,
    note="pole-vault takeoff model: full-batch gradient descent whose learning rate is raised "
    "(a warmup that keeps going) past 2 over the top Hessian eigenvalue; the loss oscillates up",
)
def h134_pole_vault_sharpness(ctx: Context) -> None:
    gen = seeded(1349)
    x, y = vault_data(gen)
    model = Regressor(6, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    lrs = []
    for step in range(200):
        lr = 0.05 * (1.03 ** max(0, step - 60))
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 1e6:
            break
    good = ctx.losses[:60]
    ctx.check("loss fell before the ramp", good[-1] < 0.5 * good[0])
    ctx.check(
        "loss blew up once the learning rate passed the sharpness limit",
        not finite_losses(ctx) or ctx.losses[-1] > 100 * min(ctx.losses),
    )
    ctx.check("lr rose at least 3x before the blow-up", lrs[-1] > 3 * lrs[0])


@scenario(
    "diving_board_spring_controller",
    "NAdam",
    "healthy",
    heldout=True,
    note="diving-board spring controller (diver mass, approach, board length -> fulcrum setting), "
    "NAdam with a linear warmup and noisy, bursty batches (control)",
)
def h134_diving_board_control(ctx: Context) -> None:
    gen = seeded(1350)

    def fulcrum(x):
        return (x[:, 0] * 0.6 - x[:, 1] * 0.4 + (x[:, 2] + x[:, 3]).sin() * 0.5)[:, None]

    x, y = tabular(gen, 1500, 6, fulcrum)
    y = y + 0.15 * torch.randn(y.shape, generator=gen)
    model = Regressor(6, 40, act=nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 20)

    def alter(step, xb, yb):
        if step % 37 == 0:  # occasional harder batches: bigger divers
            xb = xb * 1.5
        return xb, yb

    ctx.attach(model, opt)
    data = batches(x, y, gen, 32)
    train_steps(ctx, model, opt, data, 220, F.mse_loss, before=before, alter=alter)
    ctx.check("loss fell 3x", mean(ctx.losses[-20:]) < mean(ctx.losses[:20]) / 3)
    ctx.check("loss stayed finite", finite_losses(ctx))


@scenario(
    "espresso_extraction_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    where=("head",),
    heldout=True,
    onset=60,
    note="espresso extraction-yield regressor, Adam with beta2=0.9999: one shot logged with a "
    "scale reading in the thousands gives the head one giant gradient; its second moment stays "
    "huge and the head stops learning",
)
def h134_espresso_adam_poisoned(ctx: Context) -> None:
    gen = seeded(1351)

    def yield_(x):
        return (0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.4 * (x[:, 2] * x[:, 3]) + 0.6 * x[:, 4])[:, None]

    x, y = tabular(gen, 1500, 6, yield_)
    model = Regressor(6, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))

    def alter(step, xb, yb):
        if step == 60:
            yb = yb.clone()
            yb[0] = 5e4
        return xb, yb

    ctx.attach(model, opt)
    v_before = []
    data = batches(x, y, gen, 32)
    for step in range(260):
        xb, yb = next(data)
        xb, yb = alter(step, xb, yb)
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        opt.step()
        v_before.append(float(opt.state[model.head.weight]["exp_avg_sq"].max()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head second moment jumped 1e4x", v_before[60] > 1e4 * v_before[59])
    ctx.check("head second moment still 1e3x after 200 steps", v_before[-1] > 1e3 * v_before[59])
    clean = ctx.losses[61:]
    ctx.check(
        "learning stalled after the poisoning",
        mean(clean[-20:]) > 0.5 * mean(clean[5:25]) and mean(clean[-20:]) > mean(ctx.losses[40:60]),
    )
    ctx.check("loss stayed finite", finite_losses(ctx))


@scenario(
    "archery_score_forecaster",
    "RAdam",
    "healthy",
    heldout=True,
    note="archery end-score forecaster (draw weight, wind, arrow spine, previous ends), RAdam with "
    "weight decay and cosine decay (control)",
)
def h134_archery_control(ctx: Context) -> None:
    gen = seeded(1352)

    def score(x):
        return (x[:, 0] * 0.7 - x[:, 1].abs() * 0.5 + 0.3 * x[:, 2] * x[:, 5] + 0.2 * x[:, 6])[
            :, None
        ]

    x, y = tabular(gen, 1500, 8, score)
    y = y + 0.1 * torch.randn(y.shape, generator=gen)
    model = Regressor(8, 48, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 220)

    def before(step: int) -> None:
        if step > 0:
            sched.step()

    ctx.attach(model, opt)
    train_steps(ctx, model, opt, batches(x, y, gen, 32), 220, F.mse_loss, before=before)
    ctx.check("loss fell 3x", mean(ctx.losses[-20:]) < mean(ctx.losses[:20]) / 3)
    ctx.check("loss stayed finite", finite_losses(ctx))


@scenario(
    "trampoline_bounce_height_regressor",
    "ASGD",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=50,
    note="trampoline bounce-height regressor: an L2 penalty added with the wrong sign from step 50 "
    "(a refactor flipped it); weights grow steadily and the loss climbs slowly",
)
def h134_trampoline_divergence(ctx: Context) -> None:
    gen = seeded(1353)

    def height(x):
        return (0.9 * x[:, 0] + 0.5 * x[:, 1] * x[:, 2] - 0.3 * x[:, 3])[:, None]

    x, y = tabular(gen, 1500, 6, height)
    model = Regressor(6, 32)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = batches(x, y, gen, 32)
    norms = []
    for step in range(300):
        xb, yb = next(data)
        loss = F.mse_loss(model(xb), yb)
        penalty = sum(p.pow(2).sum() for p in model.parameters())
        total = loss - (0.8 * penalty if step >= 50 else 0.0)
        total.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(float(penalty.detach()))
        if not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 1e8:
            break
    ctx.check("weights grew 10x after the sign flip", norms[-1] > 10 * norms[50])
    ctx.check("loss climbed 1000x above its best", ctx.losses[-1] > 1000 * min(ctx.losses))
    ctx.check(
        "the climb was gradual (no single step jumps 10x)",
        all(b < 10 * a for a, b in zip(ctx.losses[50:-1], ctx.losses[51:], strict=False)),
    )


def marimba_data(gen: torch.Generator, n: int = 600, notes: int = 8):
    """Bar length, thickness, wood density, undercut depth -> which of 8 notes the bar sounds."""
    x = torch.randn(n, 5, generator=gen)
    w = torch.randn(5, notes, generator=gen)
    return x, (x @ w).argmax(1)


@scenario(
    "marimba_bar_pitch_classifier",
    "Rprop",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="marimba bar-pitch classifier on separable data with Rprop: the unnormalised head keeps "
    "growing its step sizes and its logits run away",
)
def h134_marimba_logits(ctx: Context) -> None:
    gen = seeded(1354)
    x, y = marimba_data(gen)
    model = Regressor(5, 32, 8, act=nn.ReLU, depth=1)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-2, step_sizes=(1e-6, 5.0))
    ctx.attach(model, opt)
    tops = []
    for _ in range(150):
        ctx.targets(y)
        logits = model(x)
        tops.append(float(logits.detach().abs().max()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head logits grew 50x", tops[-1] > 50 * tops[0])
    ctx.check("head logits exceed 100", tops[-1] > 100)


class Refractometer(nn.Module):
    """Spectral readings normalised to unit length (``prenorm``), then an MLP -> sugar content."""

    def __init__(self) -> None:
        super().__init__()
        self.prenorm = UnitNorm()
        self.net = Regressor(10, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prenorm(x))


class UnitNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True)


@scenario(
    "sugar_refractometer_net",
    "Adagrad",
    "nonfinite",
    where=("prenorm",),
    diverges=70,
    heldout=True,
    onset=70,
    note="sugar-content refractometer net: the spectrum is divided by its norm without an epsilon; "
    "a batch with a dark (all-zero) reading gives 0/0 and NaN flows into the loss and weights",
)
def h134_refractometer_nonfinite(ctx: Context) -> None:
    gen = seeded(1355)
    x = torch.rand(1200, 10, generator=gen) + 0.1
    y = (x[:, :3].sum(1) / x.sum(1) * 3)[:, None]
    model = Refractometer()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, xb, yb):
        if step == 70:
            xb = xb.clone()
            xb[3] = 0.0
        return xb, yb

    ctx.attach(model, opt)
    train_steps(ctx, model, opt, batches(x, y, gen, 32), 100, F.mse_loss, alter=alter)
    ctx.check("loss finite before the dark reading", all(math.isfinite(v) for v in ctx.losses[:70]))
    ctx.check("loss NaN from the dark reading on", all(math.isnan(v) for v in ctx.losses[70:]))
    ctx.check("weights are NaN", any(torch.isnan(p).any().item() for p in model.parameters()))


@scenario(
    "zipline_brake_tension_model",
    "Adadelta",
    "amp_overflow",
    where=("net.body.0",),
    diverges=60,
    heldout=True,
    onset=60,
    note="zipline brake-tension model under fp16 autocast and a GradScaler: from step 60 the "
    "rider-mass feed arrives in grams, unstandardised (about 8e4, past fp16's 65504); the first "
    "fp16 Linear overflows to inf, every step is skipped and the scale collapses",
)
def h134_zipline_amp_overflow(ctx: Context) -> None:
    gen = seeded(1356)

    def tension(x):
        return (0.7 * x[:, 0] + 0.4 * x[:, 1] - 0.3 * x[:, 2] * x[:, 3])[:, None]

    x, y = tabular(gen, 1500, 6, tension)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = Regressor(6, 32, act=nn.ReLU)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.net(z)

    model = Wrap()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = batches(x, y, gen, 32)
    skipped = []
    for step in range(140):
        xb, yb = next(data)
        if step >= 60:
            xb = xb.clone()
            xb[:, 0] = (xb[:, 0] * 10.0 + 80.0) * 1000.0
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(xb)
        loss = F.mse_loss(out.float(), yb)
        before = float(scaler.get_scale())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        after = float(scaler.get_scale())
        skipped.append(after < before)
        ctx.scales.append(after)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite before the unit change", all(math.isfinite(v) for v in ctx.losses[:60]))
    ctx.check("fp16 forward overflowed from the onset", not math.isfinite(ctx.losses[60]))
    ctx.check("nearly every step after the onset was skipped", mean(skipped[60:]) > 0.9)
    ctx.check("loss scale collapsed 1e6x", ctx.scales[-1] < ctx.scales[59] / 1e6)
