"""Held-out set 686 (``h686_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face CLIP vision encoder built from a tiny
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
    digit_batches,
    digits,
    grad_norm,
    scenario,
    seeded,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _top_eigenvalue(model: nn.Module, loss_fn, iters: int = 15) -> float:
    """Largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


def _tiny_clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
        num_channels=3,
    )
    return CLIPVisionModel(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="neon_sign_bender_tube_pressure_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a neon-sign bender's tube back-pressure GELU regressor, Adam (beta2 0.999); at step 60 "
    "a hot-reloaded config reads the loss weight in pascals (1e4) instead of 1.0 for one step, "
    "the gradient is about 1e4x its usual size, fills Adam's second moment and the updates "
    "afterwards are more than 10x smaller than before",
)
def h686_neon_tube_loss_weight_pascals(ctx: Context) -> None:
    gen = seeded(6861)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    updates: list[float] = []
    for step in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        weight = 1e4 if step == 60 else 1.0  # pascal/unit config bug for one step
        (weight * loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = _flat(model)
        opt.step()
        updates.append(float((_flat(model) - before).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient at step 60 over 1000x the median before", g[60] > 1e3 * _median(g[:60]))
    ctx.check(
        "median update after step 70 under 0.1x the median of steps 20-60",
        _median(updates[70:]) < 0.1 * _median(updates[20:60]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="ironing_press_crease_depth_silu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a steam ironing-press crease-depth SiLU regressor, SGD with momentum; at step 100 the "
    "job scheduler restarts the worker and the resume logic picks up a stale weights snapshot "
    "from step 0 (wrong checkpoint path) while the loop carries on: the loss jumps back to its "
    "early level for a moment and the run recovers within a few dozen steps",
)
def h686_ironing_press_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(6862)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = ((x, 3.0 * y) for x, y in _readings(gen, noise=0.02))
    stale = None
    reloaded = False
    for step in range(180):
        if step == 0:
            stale = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 100:
            model.load_state_dict(stale)  # the stale snapshot
            reloaded = bool(torch.equal(model.fc1.weight, stale["fc1.weight"]))
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre = _median(ls[80:100])
    ctx.check("the stale snapshot was loaded at step 100", reloaded)
    ctx.check("loss at step 100 over 5x the median of steps 80-99", ls[100] > 5 * pre)
    ctx.check("loss back under 1.5x that median by the end", _median(ls[160:]) < 1.5 * pre)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="stalagmite_drip_calcite_poisson_log_feature_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logfeat",),
    diverges=70,
    heldout=True,
    onset=70,
    note="a cave stalagmite drip-count Poisson regressor whose first module takes log of the "
    "drip-logger flow readings with no clamp, RMSprop, Poisson NLL on a log-rate head; from step "
    "70 a logger's flow channel reads exactly 0 (dead battery), log 0 = -inf in the log-feature "
    "layer and the loss is NaN at step 70",
)
def h686_stalagmite_log_zero_flow(ctx: Context) -> None:
    class _LogFeature(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)  # no clamp

    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logfeat = _LogFeature()
            self.body = _Net(6, 32, 1, nn.ReLU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.logfeat(x))

    gen = seeded(6863)
    model = _Model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    w = torch.randn(6, 1, generator=gen) * 0.3
    inf_at = None
    for step in range(120):
        z = torch.randn(64, 6, generator=gen)
        x = torch.exp(z)
        y = torch.poisson(torch.exp(z @ w + 1.0), generator=gen)
        if step >= 70:
            x = x.clone()
            x[:8, 2] = 0.0  # dead logger battery
        with torch.no_grad():
            if inf_at is None and torch.isinf(model.logfeat(x)).any():
                inf_at = step
        loss = F.poisson_nll_loss(model(x), y, log_input=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss fell before the dead logger", _median(ls[50:70]) < 0.7 * ls[0])
    ctx.check("loss non-finite at step 70", len(ls) == 71 and not math.isfinite(ls[70]))
    ctx.check("the log-feature layer first gave -inf at step 70", inf_at == 70)


@scenario(
    family="rosary_bead_turner_clip_vision_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=(
        "clip.embeddings",
        "clip.embeddings.patch_embedding",
        "clip.embeddings.position_embedding",
    ),
    diverges=None,
    heldout=True,
    note="a tiny CLIP vision encoder (from a config) regressing the bead diameter of a rosary "
    "turner's lathe output from generated 28x28 images, AdamW with param groups and a LambdaLR "
    "that keeps the patch/position embeddings frozen for a warm-up meant to end at step 10, "
    "typed 10_000: the embeddings' lr stays 0 and they never move while the encoder and head "
    "train",
)
def h686_rosary_clip_embeddings_frozen(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = _tiny_clip_vision()
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.clip(pixel_values=x).pooler_output)

    gen = seeded(6864)
    model = _Model()
    emb = model.get_submodule("clip.embeddings")
    emb_ids = {id(p) for p in emb.parameters()}
    rest = [p for p in model.parameters() if id(p) not in emb_ids]
    opt = torch.optim.AdamW(
        [{"params": list(emb.parameters())}, {"params": rest}], lr=1e-3, weight_decay=0.01
    )
    unfreeze_at = 10_000  # meant 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 1.0 if s >= unfreeze_at else 0.0, lambda s: 1.0]
    )
    ctx.attach(model, opt)
    grid = torch.linspace(-1, 1, 28)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    emb0 = [p.detach().clone() for p in emb.parameters()]
    rest0 = [p.detach().clone() for p in rest]
    for _step in range(60):
        r = torch.rand(8, generator=gen) * 0.6 + 0.2
        cx = (torch.rand(8, generator=gen) - 0.5) * 0.4
        disk = (
            ((xx[None] - cx[:, None, None]) ** 2 + yy[None] ** 2) < r[:, None, None] ** 2
        ).float()
        img = torch.stack([disk, 0.7 * disk, 1 - disk], 1) + 0.1 * torch.randn(
            8, 3, 28, 28, generator=gen
        )
        y = r[:, None] * 4.0
        loss = F.mse_loss(model(img), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)

    def rel(now, then) -> float:
        num = sum(float((a.detach() - b).norm() ** 2) for a, b in zip(now, then, strict=True))
        den = sum(float(b.norm() ** 2) for b in then)
        return math.sqrt(num / den)

    ls = ctx.losses
    ctx.check("embeddings moved under 1e-7 relative", rel(list(emb.parameters()), emb0) < 1e-7)
    ctx.check("encoder and head moved over 1e-3 relative", rel(rest, rest0) > 1e-3)
    ctx.check("loss fell", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check(
        "the named modules exist",
        all(
            n in dict(model.named_modules())
            for n in (
                "clip.embeddings",
                "clip.embeddings.patch_embedding",
                "clip.embeddings.position_embedding",
            )
        ),
    )


@scenario(
    family="clockmaker_escapement_beat_relu_rnn_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="a clockmaker's escapement beat-error classifier, a ReLU Elman RNN over 30 ticks, SGD "
    "with momentum; the IRNN recipe's identity recurrent init was scaled by 1.25 (a gain meant "
    "for the input weights), the gradient grows through time (at the first tick over 100x the "
    "last) and the run blows up",
)
def h686_escapement_irnn_gain(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.RNNCell(2, 32, nonlinearity="relu")
            self.head = nn.Linear(32, 3)

        def forward(self, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
            h = torch.zeros(x.shape[0], 32)
            for k in range(x.shape[1]):
                h = self.cell(x[:, k], h)
                if keep is not None:
                    h.retain_grad()
                    keep.append(h)
            return self.head(h)

    gen = seeded(6865)
    model = _Model()
    with torch.no_grad():
        model.cell.weight_hh.copy_(1.25 * torch.eye(32))  # gain meant for weight_ih
        model.cell.bias_hh.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    ratio = 0.0
    for step in range(150):
        y = torch.randint(0, 3, (32,), generator=gen)
        t = torch.arange(30, dtype=torch.float32)
        period = 4.0 + y.float()[:, None]
        tick = torch.sin(2 * math.pi * t[None] / period)
        x = torch.stack([tick, 0.1 * torch.randn(32, 30, generator=gen)], -1)
        ctx.targets(y)
        keep: list = []
        loss = F.cross_entropy(model(x, keep), y)
        loss.backward()
        if step == 0:
            ratio = float(keep[0].grad.norm() / keep[-1].grad.norm().clamp_min(1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("gradient at the first tick over 100x the last at step 0", ratio > 100)
    ctx.check(
        "loss blows up (non-finite or over 100x its start)",
        not _finite(ls) or max(ls) > 100 * ls[0],
    )


@scenario(
    family="fell_pony_trot_stride_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a fell-pony trot stride-length tanh regressor, plain SGD with OneCycleLR whose max_lr "
    "was typed 3.0 instead of 0.3; the run trains while the rate warms up, then lr x the top "
    "Hessian eigenvalue passes 2 and the loss blows up",
)
def h686_fell_pony_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(6866)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3.0, total_steps=200, pct_start=0.3, cycle_momentum=False
    )
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.1)
    px, py = next(data)
    above = False
    for step in range(200):
        lr = opt.param_groups[0]["lr"]
        if step % 5 == 0 and not above:
            eig = _top_eigenvalue(model, lambda m: F.mse_loss(m(px), py))
            above = math.isfinite(eig) and lr * eig > 2.0
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    low = min(ls[:40])
    ctx.check("loss fell during the warm-up", low < 0.7 * ls[0])
    ctx.check("lr x sharpness passed 2", above)
    ctx.check("loss blows up past 100x its low", not _finite(ls) or max(ls) > 100 * low)


@scenario(
    family="sinter_terrace_hot_spring_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a hot-spring sinter-terrace deposition-rate GELU Huber regressor, SGD with clipping at "
    "norm 1; the shard served at step 100 has its flow and depth readings in millimetres "
    "instead of metres (x1000), the loss and gradient jump by orders of magnitude for that one "
    "batch and the run recovers",
)
def h686_sinter_shard_millimetres(ctx: Context) -> None:
    gen = seeded(6867)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(160):
        x, y = next(data)
        if step == 100:
            x = x * 1000.0  # the millimetre shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _median(ls[80:100])
    ctx.check("loss at step 100 over 100x the median before", ls[100] > 100 * pre)
    ctx.check("gradient at step 100 over 30x the median before", g[100] > 30 * _median(g[80:100]))
    ctx.check("loss back under 2x by the end", _median(ls[140:]) < 2 * pre)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="lawn_bowls_jack_draw_relu_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a lawn-bowls draw-to-the-jack distance ReLU regressor, ASGD, 4-micro-batch gradient "
    "accumulation, clipped at norm 5; at step 80 a hot-reloaded config gives the rink-distance "
    "loss weight as a percentage (100) instead of 1.0 for one step, the gradient is about 100x "
    "its usual size while the logged loss stays ordinary",
)
def h686_lawn_bowls_weight_percent(ctx: Context) -> None:
    gen = seeded(6868)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16)
    for step in range(140):
        weight = 100.0 if step == 80 else 1.0
        total = 0.0
        for _ in range(4):
            x, y = next(data)
            loss = F.mse_loss(model(x), y) / 4
            (weight * loss).backward()
            total += float(loss)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 80 over 30x the median before", g[80] > 30 * _median(g[60:80]))
    ctx.check("logged loss at step 80 under 2x the median before", ls[80] < 2 * _median(ls[60:80]))
    ctx.check("loss fell", _median(ls[-10:]) < 0.7 * ls[0])
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="kite_surfer_jump_kind_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a kite-surfer jump-kind ReLU classifier on 8x8 pose maps (the digits), NAdam; the lr "
    "was typed 0.5 instead of 5e-4 and there is no warm-up, the first steps push the fc2 ReLUs "
    "negative on every input, most of the layer dies and the loss stalls well above a healthy run",
)
def h686_kite_surfer_dead_relu(ctx: Context) -> None:
    gen = seeded(6869)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    xs, _ = digits()
    with torch.no_grad():
        dead0 = dead_fraction(model.features(xs))
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        dead1 = dead_fraction(model.features(xs))
    ls = ctx.losses
    ctx.check("fc2 ReLUs dead at start under 10%", dead0 < 0.1)
    ctx.check("fc2 ReLUs dead at end over 70%", dead1 > 0.7)
    ctx.check("loss stalls above 1.0", _median(ls[-20:]) > 1.0)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="sail_loft_grommet_press_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a sail-loft grommet-press seat cosine classifier on 8x8 punch maps (the digits), "
    "Adamax; the cosine head's logit scale (1 / temperature) was typed 1000 instead of 10, the "
    "softmax of the head's logits rounds to exactly 1.0 for most rows",
)
def h686_sail_loft_temperature_typo(ctx: Context) -> None:
    gen = seeded(68610)
    model = _Net(64, 64, 10, nn.GELU)
    scale = 1000.0  # meant 10.0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    frac = 0.0
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        feat = F.normalize(model.features(x), dim=1)
        logits = scale * feat @ F.normalize(model.head.weight, dim=1).T
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        frac = collapsed_fraction(logits.detach(), y)
    ctx.check("over half the rows' softmax exactly 1.0 at the end", frac > 0.5)
    ctx.check("loss finite", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------


@scenario(
    family="haystack_moisture_plateau_tanh_regressor",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a haystack core-moisture tanh regressor, SGD Nesterov with ReduceLROnPlateau (factor "
    "0.1, min_lr lr0/1000) on a noisy validation loss every 10 steps: the rate is cut 10x three "
    "times and the updates shrink by orders of magnitude while the loss keeps its low: healthy, "
    "alarming-looking",
)
def h686_haystack_plateau_three_cuts(ctx: Context) -> None:
    gen = seeded(68611)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.1, patience=2, min_lr=5e-5, threshold=1e-2
    )
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.2)
    vx, vy = next(data)
    updates: list[float] = []
    for step in range(240):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        before = _flat(model)
        opt.step()
        updates.append(float((_flat(model) - before).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            with torch.no_grad():
                sched.step(float(F.mse_loss(model(vx), vy)))
    ls = ctx.losses
    lr = opt.param_groups[0]["lr"]
    ctx.check("lr cut 10x three times", abs(lr / 0.05 - 1e-3) < 1e-6)
    ctx.check("updates shrank over 100x", _median(updates[-20:]) < 1e-2 * _median(updates[:20]))
    ctx.check("loss fell", _median(ls[-20:]) < 0.5 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="quilting_frame_stitch_kind_cnn_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a quilting-frame stitch-kind CNN classifier on 8x8 stitch maps (the digits), AdamW "
    "with param groups (no decay on biases), OneCycleLR, label smoothing 0.1: healthy",
)
def h686_quilting_frame_onecycle(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.head = nn.Linear(16 * 16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.head(x.flatten(1))

    gen = seeded(68612)
    model = _Model()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    xs, ys = digits()
    with torch.no_grad():
        acc = float((model(xs).argmax(1) == ys).float().mean())
    ls = ctx.losses
    ctx.check("loss fell", _median(ls[-10:]) < 0.4 * ls[0])
    ctx.check("accuracy over 85%", acc > 0.85)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="mud_volcano_gryphon_burst_bce_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a mud-volcano gryphon burst-warning net (BCE on logits), RAdam, 2-micro-batch "
    "gradient accumulation, clipping at norm 1, 5% of labels flipped (noisy field logs): healthy",
)
def h686_mud_volcano_accum_clip(ctx: Context) -> None:
    gen = seeded(68613)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    w = torch.randn(8, 1, generator=gen)
    for _step in range(150):
        total = 0.0
        for _ in range(2):
            x = torch.randn(32, 8, generator=gen)
            y = ((x @ w + 0.5 * torch.sin(2 * x[:, :1])) > 0).float()
            flip = torch.rand(32, 1, generator=gen) < 0.05
            y = torch.where(flip, 1 - y, y)
            loss = F.binary_cross_entropy_with_logits(model(x), y) / 2
            loss.backward()
            total += float(loss)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell", _median(ls[-10:]) < 0.8 * ls[0])
    ctx.check("loss finite", _finite(ls))
