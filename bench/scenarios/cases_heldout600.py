"""Held-out set 600 (``h600_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: lacrosse cradle-stick pass classifier whose temperature is divided by 1000 twice
(softmax_collapse, Adamax); sugaring-off syrup-density Gaussian-NLL net taking log(sap flow)
without a clamp, a frozen-tap batch of zeros at step 90 (nonfinite, RAdam); dhow lateen-trim
Huber regressor fed one shard in centimetres at step 110 (data_outlier, NAdam, clipping,
ReduceLROnPlateau); chimney-sweep brush-draw BCE classifier whose auxiliary weight is read from a
percent key for step 104 (gradient_spike, ASGD, clipping); hoop-rolling wobble tanh regressor with
SGD lr typed 4.0 for 0.04 (sharpness_above_limit, plain SGD); mead-must ferment 12-deep ReLU MLP
with init gain doubled (exploding_gradients, SGD momentum); saddle-tree fitting regressor whose
fc2 group lr multiplier key is misspelt and falls back to 0 (update_ratio_out_of_range, Adagrad,
param groups); rope-walk lay-twist ReLU regressor with Adam lr typed 5e-2 for 5e-4, most hidden
units die for good (loss_of_plasticity, Adam); broom-corn tassel grade regressor resumed at step 120 with
RMSprop state not restored (loss_spike, RMSprop); fly-line cast-loop tanh regressor whose L2 penalty
is subtracted (loss_divergence, SGD).
Controls: tsumugi silk-slub ResNet-style BatchNorm CNN over generated grain images whose
BatchNorm layers are switched to eval mode at step 120 for fine-tuning (loss shifts a little,
alarming-looking; SGD Nesterov, OneCycleLR); change-ringing rope-sally GRU classifier (AdamW,
warm-up, label smoothing, clipping); skep beehive weight SiLU Huber regressor (Adam, two-step
accumulation, ReduceLROnPlateau, noisy batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.4 * torch.tanh(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.2, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _loop(
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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, out, y) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


def _with(**kw):
    return kw


# -- faults ---------------------------------------------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, k, temperature):
        super().__init__(d_in, 48, k, nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "lacrosse_cradle_stick_pass_temperature_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the pass-type classifier's config already stores temperature in seconds (0.5) but the "
    "loader divides by 1000 as for the old millisecond key, so logits are divided by 0.0005: the "
    "float32 softmax rounds most rows' target probability to exactly 1.0",
)
def h600_lacrosse_cradle_stick_pass_temperature_classifier(ctx):
    gen = seeded(6001)
    model = _TempNet(12, 6, 0.5 / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 12, 6, 60011)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 140, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


class _LogFlow(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _NllNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.log_flow = _LogFlow()
        self.fc1 = nn.Linear(d_in, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.log_flow(x))))


def _gauss_nll(out, y):
    mu, logvar = out[:, 0], out[:, 1]
    return (0.5 * (logvar + (y - mu) ** 2 / logvar.exp())).mean()


@scenario(
    "sugaring_off_syrup_density_log_flow_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("log_flow",),
    diverges=90,
    onset=90,
    heldout=True,
    note="the sugar-house's syrup-density Gaussian-NLL net takes log(sap flow) inside the model; "
    "the clamp at a small floor was dropped, and at step 90 a frozen-tap batch reports flow "
    "exactly 0: log(0) = -inf and the loss is NaN",
)
def h600_sugaring_off_syrup_density_log_flow_gaussian_nll_net(ctx):
    gen = seeded(6002)
    base = _readings(gen, 48, 6, 60021)

    def batches():
        for x, y in base:
            x = x.clone()
            x[:, 0] = x[:, 0].abs() + 0.5
            yield x, y

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:, 0] = 0.0
        return x, y

    model = _NllNet(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    losses, _ = _loop(ctx, model, opt, batches(), 140, _gauss_nll, alter=alter)
    ctx.check("the loss is finite before step 90", _finite(losses[:90]))
    ctx.check("the loss is non-finite at step 90", len(losses) > 90 and not _finite(losses[90:91]))


@scenario(
    "dhow_lateen_trim_heel_huber_regressor",
    "NAdam",
    "data_outlier",
    onset=110,
    heldout=True,
    note="one shard of the sailing log at step 110 was exported in centimetres instead of "
    "standardised metres (inputs and targets x100); clipping and the Huber loss keep the run, "
    "which recovers; ReduceLROnPlateau on the loss",
)
def h600_dhow_lateen_trim_heel_huber_regressor(ctx):
    gen = seeded(6003)
    batches = _readings(gen, 48, 8, 60031)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def alter(step, x, y):
        return (x * 100, y * 100) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, batches, 200, F.huber_loss, alter=alter, clip=1.0, plateau=plateau
    )
    before = _median(losses[80:110])
    ctx.check("loss at step 110 over 20x the median before", losses[110] > 20 * before)
    ctx.check("gradient at step 110 over 10x the median", norms[110] > 10 * _median(norms[80:110]))
    ctx.check("the run recovers", _mean(losses[-10:]) < 2 * before and _finite(losses))


@scenario(
    "chimney_sweep_brush_draw_bce_classifier",
    "ASGD",
    "gradient_spike",
    onset=104,
    heldout=True,
    note="the soot-fall BCE classifier adds a Brier auxiliary term weighted 2.0; at step 104 the "
    "weight is read from the percent key (200) for one step, so one backward pass carries a "
    "gradient burst that no batch caused; clipping holds the update",
)
def h600_chimney_sweep_brush_draw_bce_classifier(ctx):
    gen = seeded(6004)
    base = _classes(gen, 64, 10, 2, 60041, spread=0.8)
    model = _Net(10, 48, 1, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def batches():
        for x, y in base:
            yield x, y.float()

    def backprop(step, loss, out, y):
        w = 200.0 if step == 104 else 2.0
        return loss + w * ((torch.sigmoid(out) - y) ** 2).mean()

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        160,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient at step 104 over 15x the median", norms[104] > 15 * _median(norms[74:104]))
    ctx.check("the logged loss at step 104 is ordinary", losses[104] < 3 * _median(losses[74:104]))
    ctx.check("the loss stays finite", _finite(losses))


class _TanhNet(_Net):
    def __init__(self, d_in):
        super().__init__(d_in, 32, 1, nn.Tanh)


@scenario(
    "hoop_rolling_wobble_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="the hoop-wobble regressor's SGD learning rate was typed 4.0 for 0.04: lr x the top "
    "Hessian eigenvalue is past 2 from the first step and the loss blows up",
)
def h600_hoop_rolling_wobble_tanh_regressor(ctx):
    gen = seeded(6005)
    batches = _readings(gen, 64, 8, 60051)
    model = _TanhNet(8)
    lr = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr x top eigenvalue over 2 at step 0", lr * eig > 2)
    ctx.check(
        "the loss blows up (non-finite or over 10x its start)",
        not _finite(losses) or max(losses) > 10 * losses[0],
    )


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList()
        d = d_in
        for _ in range(depth):
            lin = nn.Linear(d, width)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            lin.weight.data.mul_(gain)
            nn.init.zeros_(lin.bias)
            self.layers.append(lin)
            d = width
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    "mead_must_ferment_gravity_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="the meadery's 12-deep ReLU gravity regressor applies kaiming init and then a leftover "
    "gain of 1.5 from a tanh experiment: activations and gradients grow by about 1.5x per layer, "
    "the first layer's gradient is largest, and the loss blows up",
)
def h600_mead_must_ferment_gravity_deep_relu_mlp(ctx):
    gen = seeded(6006)
    batches = _readings(gen, 48, 8, 60061)
    model = _Deep(8, 32, 12, 1.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x0, y0 = next(batches)
    pre = []
    h = x0
    for lin in model.layers:
        z = lin(h)
        z.retain_grad()
        pre.append(z)
        h = F.relu(z)
    F.mse_loss(model.head(h).squeeze(-1), y0).backward()
    g_first = float(pre[0].grad.norm())
    g_last = float(pre[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, batches, 100, F.mse_loss)
    ctx.check("backward signal at layers.0 over 10x the last layer's", g_first > 10 * g_last)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


@scenario(
    "saddle_tree_fitting_pressure_two_group_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="the saddler's regressor builds param groups from a config whose 'fc2_lr_mult' key was "
    "written 'fc2_lr_mul'; the lookup falls back to 0, so fc2 never moves while the rest trains",
)
def h600_saddle_tree_fitting_pressure_two_group_regressor(ctx):
    gen = seeded(6007)
    batches = _readings(gen, 48, 8, 60071)
    model = _Net(8, 48, 1, nn.SiLU)
    cfg = {"fc2_lr_mul": 1.0}
    base = 0.05
    opt = torch.optim.Adagrad(
        [
            {"params": list(model.fc1.parameters()) + list(model.head.parameters())},
            {"params": model.fc2.parameters(), "lr": base * cfg.get("fc2_lr_mult", 0.0)},
        ],
        lr=base,
    )
    w2, w1 = _flat(model.fc2), _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check("fc2 never moves", bool(torch.equal(w2, _flat(model.fc2))))
    ctx.check("fc1 moves", float((w1 - _flat(model.fc1)).norm()) > 1e-2)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "rope_walk_lay_twist_dead_relu_regressor",
    "Adam",
    "loss_of_plasticity",
    where=("fc2",),
    heldout=True,
    note="the ropewalk's lay-twist regressor has its Adam lr typed 5e-2 for 5e-4; the first "
    "large updates push most of fc2's ReLU units negative on every input and they never "
    "recover; the net goes on fitting with the few units left",
)
def h600_rope_walk_lay_twist_dead_relu_regressor(ctx):
    gen = seeded(6008)
    batches = _readings(gen, 64, 8, 60081)
    model = _Net(8, 48, 1, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    probe, _ = next(batches)
    start = dead_fraction(model.features(probe).detach())
    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss)
    end = dead_fraction(model.features(probe).detach())
    ctx.check("under 20% of fc2 units dead at the start", start < 0.2)
    ctx.check("over 50% of fc2 units dead at the end", end > 0.5)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "broom_corn_tassel_grade_resume_gelu_regressor",
    "RMSprop",
    "loss_spike",
    onset=120,
    heldout=True,
    note="the broom-maker's run is resumed at step 120 from a checkpoint that saved the weights "
    "but not RMSprop's square averages; the first updates after resume are oversized, the loss "
    "spikes once and the run recovers",
)
def h600_broom_corn_tassel_grade_resume_gelu_regressor(ctx):
    gen = seeded(6009)
    batches = _readings(gen, 48, 8, 60091)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3, alpha=0.999)

    def before(step):
        if step == 120:
            opt.state.clear()

    losses, norms = _loop(ctx, model, opt, batches, 220, F.mse_loss, before=before)
    pre = _median(losses[100:120])
    ctx.check("loss spikes over 4x after resume", max(losses[121:126]) > 4 * pre)
    ctx.check("the run recovers", _mean(losses[-10:]) < 2 * pre and _finite(losses))


@scenario(
    "fly_line_cast_loop_width_l2_sign_tanh_regressor",
    "SGD",
    "loss_divergence",
    heldout=True,
    note="the casting-loop regressor adds its L2 penalty by hand and the sign was flipped "
    "(loss - wd * ||w||^2): the weights grow steadily and the loss climbs slowly with no jump",
)
def h600_fly_line_cast_loop_width_l2_sign_tanh_regressor(ctx):
    gen = seeded(6010)
    batches = _readings(gen, 48, 8, 60101)
    model = _TanhNet(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    w0 = float(_flat(model).norm())

    def backprop(step, loss, out, y):
        return loss - 0.15 * sum((p**2).sum() for p in model.parameters())

    losses, _ = _loop(ctx, model, opt, batches, 260, F.mse_loss, backprop=backprop)
    win = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9, 10)]
    best = min(win)
    jumps = max(b / max(a, 1e-8) for a, b in zip(win[:-1], win[1:], strict=False))
    ctx.check("weights grow over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("the loss climbs to over 3x its best", win[-1] > 3 * best)
    ctx.check("no 10-step window over 3x the one before", jumps < 3)


# -- healthy controls -----------------------------------------------------------------------------


def _grain_images(gen, batch, k=4, size=12):
    """Generated grain images: stripes at one of k orientations plus noise."""
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angles = [i * math.pi / k for i in range(k)]
    pats = torch.stack([torch.sin(1.3 * (ii * math.cos(a) + jj * math.sin(a))) for a in angles])
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        x = pats[y] + 0.8 * torch.randn(batch, size, size, generator=gen)
        yield x[:, None], y


class _ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class _ResNet(nn.Module):
    def __init__(self, c=8, k=4):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.block1 = _ResBlock(c)
        self.block2 = _ResBlock(c)
        self.head = nn.Linear(c, k)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.head(x.mean((2, 3)))


@scenario(
    "tsumugi_silk_slub_grain_resnet_bn_eval_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="a ResNet-style CNN with BatchNorm and skip connections over generated silk-slub "
    "images; at step 120 its BatchNorm layers are switched to eval mode (frozen running "
    "statistics) for fine-tuning, the usual practice, and the loss shifts a little: healthy, "
    "alarming-looking; SGD Nesterov with OneCycleLR",
)
def h600_tsumugi_silk_slub_grain_resnet_bn_eval_classifier(ctx):
    gen = seeded(6011)
    batches = _grain_images(gen, 32)
    model = _ResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=180)

    def before(step):
        if step == 120:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

    losses, _ = _loop(
        ctx, model, opt, batches, 180, F.cross_entropy, classifier=True, before=before, sched=sched
    )
    ctx.check("the loss fell", _fell(losses, 10, 0.5))
    ctx.check("BatchNorm is in eval mode after step 120", not model.bn0.training)
    ctx.check("the loss stays finite", _finite(losses))


class _GRUNet(nn.Module):
    def __init__(self, d_in=4, hidden=32, k=3):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, k)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _pull_traces(gen, batch, k=3, length=16):
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        f = (1.0 + y.float())[:, None] * 2 * math.pi * t[None]
        sig = torch.stack([torch.sin(f), torch.cos(f), torch.sin(2 * f), t.expand_as(f)], -1)
        yield sig + 0.4 * torch.randn(batch, length, 4, generator=gen), y


@scenario(
    "changeringing_rope_sally_pull_gru_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="a bell-ringer's rope-sally pull-trace GRU classifier: AdamW with linear warm-up then "
    "cosine decay, label smoothing 0.1, clipping at 1.0, noisy traces; control",
)
def h600_changeringing_rope_sally_pull_gru_classifier(ctx):
    gen = seeded(6012)
    batches = _pull_traces(gen, 32)
    model = _GRUNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def lam(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 140))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches,
        160,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(losses, 10, 0.7))
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "skep_beehive_weight_silu_huber_regressor",
    "Adam",
    "healthy",
    heldout=True,
    note="a beekeeper's skep-weight SiLU Huber regressor with noisy hive-scale batches, two-step "
    "gradient accumulation and ReduceLROnPlateau; control",
)
def h600_skep_beehive_weight_silu_huber_regressor(ctx):
    gen = seeded(6013)
    batches = _readings(gen, 32, 8, 60131, noise=0.2)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    ctx.attach(model, opt)
    losses = []
    for _ in range(160):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(total))
        ctx.step(total)
        plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss fell", _fell(losses, 10, 0.7))
    ctx.check("the loss stays finite", _finite(losses))
