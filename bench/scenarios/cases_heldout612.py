"""Held-out set 612 (``h612_``): 10 faults over 10 causes and 3 healthy controls, 13 families.

Every model is hand-written (one is a Hugging Face ELECTRA token classifier built from a tiny
config); data are generated (or scikit-learn's bundled digits). Each fault is induced the way it
happens in practice and checked in the run itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Context, collapsed_fraction, digit_batches, grad_norm, scenario, seeded

# -- shared helpers --------------------------------------------------------------------------------


def _regression(gen: torch.Generator, n_in: int, batch: int = 64, noise: float = 0.05):
    """Endless batches of a smooth generated regression task (y = sum of sines of projections)."""
    w = torch.randn(n_in, 4, generator=gen) / math.sqrt(n_in)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w).sum(1, keepdim=True) + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


class _Reg(nn.Module):
    def __init__(self, n_in: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act(self.fc1(x)))))


class _Cls(nn.Module):
    def __init__(self, n_in: int, hidden: int, classes: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act(self.fc1(x)))))


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _median(xs) -> float:
    return float(torch.tensor(xs).median())


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "rope_twist_lay_angle_deep_relu_mlp",
    "SGD Nesterov",
    "exploding_gradients",
    ("0",),
    "auto",
    heldout=True,
    note="12-deep ReLU MLP re-initialised by hand with std 2.0/sqrt(fan_in) where "
    "sqrt(2/fan_in) was meant (gain 2 for sqrt 2): signals grow ~1.4x per layer both ways, "
    "the backward signal at layer 0 is far above the last hidden layer's; SGD Nesterov blows up",
)
def h612_rope_twist_lay(ctx: Context) -> None:
    gen = seeded(6121)
    sizes = [10] + [48] * 12 + [1]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 2.0 / math.sqrt(m.in_features))
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _regression(gen, 10)
    lin = [m for m in model if isinstance(m, nn.Linear)]
    outs: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(_m, _inp, out):
            if out.requires_grad:
                out.retain_grad()
            outs[i] = out

        return hook

    hooks = [lin[0].register_forward_hook(keep(0)), lin[-2].register_forward_hook(keep(1))]
    first_ratio = None
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if first_ratio is None:
            first_ratio = float(outs[0].grad.norm()) / max(float(outs[1].grad.norm()), 1e-30)
            for h in hooks:
                h.remove()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check(
        "backward signal at layer 0 over 10x the last hidden layer's at step 0", first_ratio > 10
    )
    worst = max((v if math.isfinite(v) else float("inf")) for v in ctx.losses)
    ctx.check("loss blows up to over 100x its start (or non-finite)", worst > 100 * ctx.losses[0])


@scenario(
    "pizza_toss_dough_spin_silu_regressor",
    "NAdam",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=100,
    note="one shard of spin-rate targets logged in degrees per second instead of revolutions "
    "per second (x360) reaches the loader at step 100; MSE loss, clipping at 1.0; the loss "
    "and gradient jump for that batch only and the run recovers",
)
def h612_pizza_toss_spin(ctx: Context) -> None:
    gen = seeded(6122)
    model = _Reg(8, 48, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, 8)
    for step in range(180):
        x, y = next(batches)
        if step == 100:
            y = y * 360.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _median(ctx.losses[80:100])
    gbefore = _median(ctx.grad_norms[80:100])
    ctx.check("loss at step 100 over 20x the median before", ctx.losses[100] > 20 * before)
    ctx.check("gradient at step 100 over 10x the median before", ctx.grad_norms[100] > 10 * gbefore)
    ctx.check(
        "recovers: last 20 losses under 2x the pre-shard median",
        _median(ctx.losses[-20:]) < 2 * before,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


class _LogMoisture(nn.Module):
    """log(moisture reading) as a feature; the clamp(min=1e-3) was left out."""

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return torch.log(m)


class _SandNLL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_moisture = _LogMoisture()
        self.fc1 = nn.Linear(7, 40)
        self.act = nn.SiLU()
        self.mean = nn.Linear(40, 1)
        self.log_var = nn.Linear(40, 1)

    def forward(self, x: torch.Tensor, m: torch.Tensor):
        h = self.act(self.fc1(torch.cat([x, self.log_moisture(m)], 1)))
        return self.mean(h), self.log_var(h)


@scenario(
    "sand_castle_moisture_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    ("log_moisture",),
    80,
    heldout=True,
    onset=80,
    note="Gaussian-NLL wall-height net takes log(moisture probe reading) without its clamp; "
    "at step 80 a batch from a dry-sand probe that reads exactly 0 gives log 0 = -inf, NaN loss",
)
def h612_sand_castle(ctx: Context) -> None:
    gen = seeded(6123)
    model = _SandNLL()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    w = torch.randn(6, generator=gen) / math.sqrt(6)
    nan_step = None
    produced = False
    for step in range(150):
        x = torch.randn(64, 6, generator=gen)
        m = 0.05 + 0.3 * torch.rand(64, 1, generator=gen)
        if step == 80:
            m[:8] = 0.0
        y = torch.sin(x @ w)[:, None] + 2.0 * m + 0.1 * torch.randn(64, 1, generator=gen)
        mu, lv = model(x, m)
        if step == 80:
            produced = not bool(torch.isfinite(model.log_moisture(m)).all())
        loss = 0.5 * (lv + (y - mu) ** 2 / lv.exp()).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            nan_step = step
            break
    ctx.check("loss first non-finite at step 80", nan_step == 80)
    ctx.check("log_moisture output non-finite at step 80", produced)
    ctx.check(
        "finite and falling before step 80",
        _finite(ctx.losses[:80]) and ctx.losses[79] < ctx.losses[0],
    )


@scenario(
    "coppersmith_rivet_heat_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="rivet-head temperature regressor on readings in hundreds of kelvin (unstandardised); "
    "SGD lr typed 0.5 for 0.005, past 2/sharpness from the first steps; the loss blows up",
)
def h612_coppersmith_rivet(ctx: Context) -> None:
    gen = seeded(6124)
    model = _Reg(6, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    batches = _regression(gen, 6)
    for _step in range(120):
        x, y = next(batches)
        x = 3.0 * x + 4.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    worst = max((v if math.isfinite(v) else float("inf")) for v in ctx.losses)
    ctx.check("loss blows up to over 100x its start (or non-finite)", worst > 100 * ctx.losses[0])


@scenario(
    "bamboo_flute_bore_taper_gelu_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc2",),
    None,
    heldout=True,
    note="three param groups (fc1, fc2, head); fc2's lr typed 1e-10 for 1e-2 in the config, so "
    "fc2 never moves while the rest trains; the loss still falls",
)
def h612_bamboo_flute(ctx: Context) -> None:
    gen = seeded(6125)
    model = _Reg(9, 48, nn.GELU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-2},
            {"params": model.fc2.parameters(), "lr": 1e-10},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    batches = _regression(gen, 9)
    for _step in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel2 = float((model.fc2.weight - w2).norm() / w2.norm())
    rel1 = float((model.fc1.weight - w1).norm() / w1.norm())
    ctx.check("fc2 weights moved under 1e-6 relative", rel2 < 1e-6)
    ctx.check("fc1 weights moved over 1e-2 relative", rel1 > 1e-2)
    ctx.check("loss fell", _median(ctx.losses[-20:]) < _median(ctx.losses[:10]))


@scenario(
    "fjord_tidal_current_relu_bce_classifier",
    "SGD momentum",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=90,
    note="ebb/flood classifier with BCE; for step 90 a debug branch builds the loss with "
    "reduction='sum' (batch 64), so one update's gradient is ~64x; clipping at 2.0; the logged "
    "loss is the ordinary mean",
)
def h612_fjord_tidal(ctx: Context) -> None:
    gen = seeded(6126)
    model = _Cls(12, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    w = torch.randn(12, generator=gen)
    for step in range(170):
        x = torch.randn(64, 12, generator=gen)
        y = ((x @ w + 0.3 * torch.randn(64, generator=gen)) > 0).float()
        out = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(out, y)
        total = F.binary_cross_entropy_with_logits(out, y, reduction="sum") if step == 90 else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient at step 90 over 15x the median before", g[90] > 15 * _median(g[70:90]))
    ctx.check(
        "logged loss at step 90 under 3x the median before",
        ctx.losses[90] < 3 * _median(ctx.losses[70:90]),
    )
    ctx.check(
        "finite throughout and trained",
        _finite(ctx.losses) and _median(ctx.losses[-20:]) < _median(ctx.losses[:10]),
    )


@scenario(
    "bell_tower_sway_gelu_regressor",
    "Adam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="tower-sway amplitude regressor with hand-written decoupled weight decay whose "
    "coefficient was read as -3.0 (sign flipped), so weights are multiplied by 1.009 each step: the weights grow steadily and the loss climbs "
    "slowly from its best with no jump",
)
def h612_bell_tower(ctx: Context) -> None:
    gen = seeded(6127)
    model = _Reg(8, 48, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, 8)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    wd = -3.0  # decoupled decay written by hand; the config's sign was flipped
    for _step in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.mul_(1.0 - 3e-3 * wd)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(ctx.losses)
    sm = [_median(ctx.losses[i : i + 10]) for i in range(0, len(ctx.losses), 10)]
    jumps = max(b / max(a, 1e-12) for a, b in zip(sm[:-1], sm[1:], strict=False))
    ctx.check("weights over 2x their start", w1 > 2 * w0)
    ctx.check("loss climbs to over 3x its best", _median(ctx.losses[-10:]) > 3 * best)
    ctx.check("no jump: no 10-step median over 3x the one before", jumps < 3)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "tap_dance_shuffle_temperature_classifier",
    "RMSprop",
    "softmax_collapse",
    ("head",),
    None,
    heldout=True,
    note="tap-step classifier (digits stand in for tap sound spectra) whose logits are divided "
    "by temp_ms=1.0 read as seconds (0.001): the softmax saturates, target probabilities round "
    "to exactly 1.0 on many rows",
)
def h612_tap_dance(ctx: Context) -> None:
    gen = seeded(6128)
    model = _Cls(64, 64, 10, nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    temperature = 1.0 / 1000.0
    batches = digit_batches(gen)
    fracs = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 40% of rows' target probability exactly 1.0 by the end", max(fracs[-20:]) > 0.4)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "harmonica_reed_bend_silu_classifier",
    "AdamW",
    "output_logit_divergence",
    ("head",),
    None,
    heldout=True,
    note="reed-bend class classifier with a z-loss (logsumexp^2) whose coefficient was typed "
    "-1e-2 for 1e-4: it rewards large logsumexp, the head's logits grow without bound",
)
def h612_harmonica_reed(ctx: Context) -> None:
    gen = seeded(6129)
    model = _Cls(16, 48, 6, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    centres = 1.5 * torch.randn(6, 16, generator=gen)
    mags = []
    for _step in range(200):
        y = torch.randint(0, 6, (64,), generator=gen)
        x = centres[y] + torch.randn(64, 16, generator=gen)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        z = torch.logsumexp(logits, -1).pow(2).mean()
        (loss + (-1e-2) * z).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        mags.append(float(logits.detach().abs().max()))
    ctx.check("max head logit over 20x its start", mags[-1] > 20 * mags[0])
    ctx.check("still growing over the last 50 steps", mags[-1] > 1.3 * mags[-50])
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "mud_volcano_bubble_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=80,
    note="bubble-burst height regressor; a manual loss scale of 65536 (from an fp16 experiment) "
    "is left in for step 80 with no unscale: one giant gradient fills Adam's second moment and "
    "updates shrink for the rest of the run",
)
def h612_mud_volcano(ctx: Context) -> None:
    gen = seeded(6130)
    model = _Reg(8, 48, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, 8)
    vsum = []
    upd = []
    for step in range(170):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * (65536.0 if step == 80 else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        upd.append(
            float(
                torch.cat(
                    [
                        (p.detach() - b).flatten()
                        for p, b in zip(model.parameters(), before, strict=True)
                    ]
                ).norm()
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        vsum.append(sum(float(opt.state[p]["exp_avg_sq"].sum()) for p in model.parameters()))
    g = ctx.grad_norms
    ctx.check("gradient at step 80 over 1000x the median before", g[80] > 1000 * _median(g[60:80]))
    ctx.check("second moment 60 steps on over 1e4x its value before", vsum[140] > 1e4 * vsum[79])
    ctx.check(
        "updates after step 100 under 0.1x those before step 80",
        _median(upd[100:]) < 0.1 * _median(upd[60:80]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


def _tiny_electra(vocab: int = 64, labels: int = 3):
    from transformers import ElectraConfig, ElectraForTokenClassification

    config = ElectraConfig(
        vocab_size=vocab,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ElectraForTokenClassification(config)


@scenario(
    "moon_halo_ring_electra_token_tagger",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="Hugging Face ELECTRA token classifier from a tiny config tags each sky-survey token "
    "(no halo / 22-degree ring / repeat of the previous token); AdamW with a no-decay param "
    "group, linear warm-up then linear decay, clipping at 1.0",
)
def h612_moon_halo(ctx: Context) -> None:
    gen = seeded(6131)
    model = _tiny_electra()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.05, (steps - s) / (steps - warm))
    )
    ctx.attach(model, opt)
    for _step in range(steps):
        x = torch.randint(1, 64, (16, 24), generator=gen)
        rep = torch.rand(16, 24, generator=gen) < 0.2
        x[:, 1:] = torch.where(rep[:, 1:], x[:, :-1], x[:, 1:])
        y = (x >= 32).long()
        y[:, 1:] = torch.where(x[:, 1:] == x[:, :-1], 2, y[:, 1:])
        ctx.targets(y)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 3), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell by over 50%", _median(ctx.losses[-15:]) < 0.5 * _median(ctx.losses[:5]))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "lava_tube_drip_rate_mse_huber_regressor",
    "Adamax",
    "healthy",
    (),
    None,
    heldout=True,
    note="lava-tube drip-rate regressor trained with MSE for 100 steps, then switched as planned "
    "to Huber (delta 0.1) for robustness to the remaining noise: the logged loss drops by a "
    "large factor at step 100 although nothing changed in the model; ReduceLROnPlateau",
)
def h612_lava_tube(ctx: Context) -> None:
    gen = seeded(6132)
    model = _Reg(8, 48, nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    w = torch.randn(8, 4, generator=gen) / math.sqrt(8)
    for step in range(200):
        x = torch.randn(64, 8, generator=gen)
        y = 2.0 * torch.sin(x @ w).sum(1, keepdim=True) + 0.5 * torch.randn(64, 1, generator=gen)
        out = model(x)
        loss = F.mse_loss(out, y) if step < 100 else F.huber_loss(out, y, delta=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("MSE phase fell", _median(ls[85:100]) < 0.7 * _median(ls[:5]))
    ctx.check(
        "logged loss drops over 3x at the planned switch",
        _median(ls[100:105]) < _median(ls[95:100]) / 3,
    )
    ctx.check(
        "Huber phase no worse at its end than its start",
        _median(ls[-15:]) <= 1.05 * _median(ls[100:115]),
    )
    ctx.check("finite throughout", _finite(ls))


class _HoopConv(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv1(x))
        h = F.avg_pool1d(h, 2)
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1))


@scenario(
    "stilt_walker_gait_imu_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    (),
    None,
    heldout=True,
    note="conv1d over generated two-axis IMU traces of stilt walkers (steady, sway, stumble, "
    "turn); SGD Nesterov, OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, "
    "clipping at 2.0, 5% noisy labels",
)
def h612_stilt_walker(ctx: Context) -> None:
    gen = seeded(6133)
    model = _HoopConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    t = torch.linspace(0, 1, 48)
    freqs = torch.tensor([2.0, 5.0, 9.0, 14.0])

    def batch(n: int):
        y = torch.randint(0, 4, (n,), generator=gen)
        phase = 6.28 * torch.rand(n, 1, generator=gen)
        a = torch.sin(6.28 * freqs[y][:, None] * t + phase)
        b = torch.cos(6.28 * freqs[y][:, None] * t + phase)
        x = torch.stack([a, b], 1) + 0.5 * torch.randn(n, 2, 48, generator=gen)
        noisy = torch.rand(n, generator=gen) < 0.05
        y = torch.where(noisy, torch.randint(0, 4, (n,), generator=gen), y)
        return x, y

    for _step in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = batch(32)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged = logged + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell by over 40%", _median(ctx.losses[-15:]) < 0.6 * _median(ctx.losses[:5]))
    ctx.check("finite throughout", _finite(ctx.losses))
