"""Held-out set 144 (``h144_``): a Hugging Face EXAONE-4.5 vision tower from a tiny config, and
hand-written models of trades, crafts, sports, instruments and natural phenomena not covered
before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs (fp16 autocast with a GradScaler on a GroupNorm conv net with
OneCycleLR and label smoothing, plain SGD with gradient accumulation, clipping and
ReduceLROnPlateau on noisy batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, digit_batches, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _tabular(gen, n_in: int, batch: int, noise: float = 0.05, scale: float = 1.0):
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, scale * (y + noise * torch.randn(batch, 1, generator=gen))


def _clusters(gen, n_in: int, classes: int, batch: int, spread: float = 1.0):
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    scale=None,
    clip=None,
    sched=None,
    after=None,
    scaler=None,
    forward=None,
):
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            out = forward(model, x)
        loss = loss_fn(out.float(), y)
        total = loss * scale(step) if scale is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(float(loss.detach()))
            else:
                sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


class Regressor(nn.Module):
    def __init__(self, n_in, width, depth=2, act=nn.Tanh, n_out=1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), act()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.body(x))


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


# -- Hugging Face EXAONE-4.5 vision tower on digits: a one-step 65536x loss fills Adam's v -------


def _exaone_vision():
    from transformers import AutoConfig, Exaone4_5_VisionModel

    config = AutoConfig.for_model(
        "exaone4_5_vision",
        depth=2,
        fullatt_block_indexes=[1],
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        num_key_value_heads=2,
        out_hidden_size=32,
        patch_size=4,
        in_channels=1,
        temporal_patch_size=1,
        spatial_merge_size=2,
        window_size=8,
    )
    return Exaone4_5_VisionModel(config)


class ExaoneDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = _exaone_vision()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        b = x.shape[0]
        img = F.interpolate(x.reshape(b, 1, 8, 8), size=16, mode="nearest")
        patches = img.reshape(b, 1, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(b * 16, 16)
        thw = torch.tensor([[1, 4, 4]] * b)
        pooled = self.tower(patches, grid_thw=thw).pooler_output
        return self.head(pooled.reshape(b, 4, 32).mean(1))


@scenario(
    family="hf_exaone4_5_vision_digits",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=40,
    note="Adam on an EXAONE-4.5 vision tower (tiny config). The GradScaler was taken out but "
    "the code path after an evaluation still multiplies the loss by the old 65536 loss scale "
    "(hard-coded), so one backward carries a 65536x gradient; Adam's second moment fills with "
    "it and, with beta2 0.999, the updates afterwards shrink by orders of magnitude: the run "
    "stalls.",
)
def h144_exaone_vision_scale_leftover(ctx: Context) -> None:
    gen = seeded(14401)
    model = ExaoneDigits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    onset = 40
    upd: list[float] = []
    prev = {"p": _flat_params(model)}

    def after(_step):
        cur = _flat_params(model)
        upd.append(float((cur - prev["p"]).norm() / cur.norm()))
        prev["p"] = cur

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 48),
        140,
        F.cross_entropy,
        classifier=True,
        scale=lambda s: 65536.0 if s == onset else 1.0,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("gradient at onset >1000x the median before", g[onset] > 1000 * _median(g[:onset]))
    before = _mean(upd[onset - 10 : onset])
    later = _mean(upd[onset + 30 : onset + 60])
    ctx.check("relative update size fell >10x after the onset", later < before / 10)
    ctx.check(
        "loss stalled: 100 steps after the onset still above its level before the onset",
        _mean(ctx.losses[-10:]) > _mean(ctx.losses[onset - 10 : onset]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- wheelwright spoke-load regressor: an auxiliary loss weight read as 80 for one step ----------


@scenario(
    family="wheelwright_spoke_load_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    diverges=None,
    heldout=True,
    onset=60,
    note="SGD with Nesterov momentum, Huber loss, on spoke-load features (felloe width, dish "
    "angle, timber density). At step 60 the loss weights are reloaded from a config where the "
    "weight was written as 80 (meant 0.8) and the next reload puts it back: one backward "
    "carries an ~100x gradient that does not come from the data.",
)
def h144_wheelwright_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(14402)
    model = Regressor(12, 48, depth=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    onset = 60
    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 12, 64, noise=0.05),
        160,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        scale=lambda s: 100.0 if s == onset else 1.0,
    )
    g = ctx.grad_norms
    ctx.check("gradient at onset >50x the median before", g[onset] > 50 * _median(g[:onset]))
    ctx.check(
        "a single burst: 5 steps later the gradient is >20x below it",
        max(g[onset + 5 :]) < g[onset] / 20,
    )
    ctx.check("the data at onset is ordinary (its loss <3x the median before)",
              ctx.losses[onset] < 3 * _median(ctx.losses[onset - 20 : onset]))
    ctx.check("loss finite", _finite(ctx.losses))
