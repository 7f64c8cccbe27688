"""Held-out set 613 (``h613_``): 10 faults over 10 causes and 3 healthy controls, 13 hand-written
families. Written blind to steadygrad's diagnosis; checked only with ``bench/standin.py``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import digit_batches, scenario, seeded


def _reg_data(gen, n_in=8, batch=64, noise=0.05):
    w = torch.randn(n_in, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.3 * torch.sin(x[:, 0])
        yield x, (y + noise * torch.randn(batch, generator=gen))[:, None]


class _Reg(nn.Module):
    def __init__(self, n_in=8, hidden=32, act=nn.Tanh):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gnorm(model):
    return float(
        torch.sqrt(
            sum((p.grad.detach() ** 2).sum() for p in model.parameters() if p.grad is not None)
        )
    )


# 1 -- sharpness_above_limit ----------------------------------------------------------------------
@scenario(
    "sheepdog_trial_outrun_time_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="config lr typed 2.5 for 0.025 (plain SGD, MSE): past 2/sharpness, the loss oscillates and blows up",
)
def h613_sheepdog_outrun_lr_typo(ctx):
    gen = seeded(6131)
    model = _Reg(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=2.5)
    ctx.attach(model, opt)
    data = _reg_data(gen)
    first_loss = None
    for _step in range(120):
        x, y = next(data)
        x = x * 3.0  # outrun distances in raw tens of metres
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
        first_loss = first_loss if first_loss is not None else float(loss.detach())
        if not math.isfinite(float(loss)):
            break
    worst = max((v if math.isfinite(v) else float("inf")) for v in ctx.losses)
    ctx.check("loss blew up over 100x its first value", worst > 100 * first_loss)


# 2 -- loss_spike ------------------------------------------------------------------------------------
@scenario(
    "cooper_barrel_stave_bend_silu_regressor",
    "Adam",
    "loss_spike",
    (),
    None,
    heldout=True,
    note="a pre-emption resume at step 120 loaded the step-5 checkpoint's weights (stale path) "
    "but kept the optimizer; the loss jumps back up once and recovers",
    onset=120,
)
def h613_cooper_stave_stale_resume(ctx):
    gen = seeded(6132)
    model = _Reg(8, 32, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _reg_data(gen)
    stale = None
    for step in range(220):
        if step == 5:
            stale = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 120:
            model.load_state_dict(stale)
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
    ls = ctx.losses
    before = sum(ls[100:120]) / 20
    ctx.check("loss at onset over 3x the 20 steps before", ls[120] > 3 * before)
    ctx.check("loss recovers to within 1.5x of before", sum(ls[-20:]) / 20 < 1.5 * before)
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


# 3 -- softmax_collapse -------------------------------------------------------------------------------
class _Handbell(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) / self.temperature


@scenario(
    "handbell_change_ringing_method_classifier",
    "Adamax",
    "softmax_collapse",
    ("fc2",),
    None,
    heldout=True,
    note="temperature configured as temp_ms=1.0 (milliseconds) read as seconds, 0.001: logits "
    "divided by 0.001, the softmax saturates to exact 0/1",
)
def h613_handbell_temperature_units(ctx):
    gen = seeded(6133)
    model = _Handbell(0.001)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen, 64)
    sat = 0.0
    for _step in range(150):
        x, y = next(data)
        logits = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
        with torch.no_grad():
            p = logits.softmax(-1)
            sat = max(sat, float((p.max(-1).values == 1.0).float().mean()))
    ctx.check("over 30% of rows' top probability exactly 1.0 in a batch", sat > 0.3)


# 4 -- exploding_gradients -----------------------------------------------------------------------------
class _Glacier(nn.Module):
    def __init__(self, depth=12, width=32, gain=2.0):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else width, width) for i in range(depth))
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x)


@scenario(
    "glacier_calving_front_retreat_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    ("layers.0",),
    "auto",
    heldout=True,
    note="init std written gain/sqrt(fan_in) with gain=2.0 where sqrt(2/fan_in) was meant: "
    "the backward signal grows ~1.4x per layer through 12 ReLU layers and the run blows up",
)
def h613_glacier_calving_init_gain(ctx):
    gen = seeded(6134)
    model = _Glacier()
    opt = torch.optim.SGD(model.parameters(), lr=4e-4, momentum=0.9)
    ctx.attach(model, opt)
    data = _reg_data(gen)
    ratio = 0.0
    for step in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            g0 = model.layers[0].bias.grad.norm()
            gl = model.layers[-1].bias.grad.norm()
            ratio = float(g0 / gl)
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss)):
            break
    worst = max((v if math.isfinite(v) else float("inf")) for v in ctx.losses)
    ctx.check("layer 0 backward signal over 10x the last hidden layer's at step 0", ratio > 10)
    ctx.check("loss blew up over 100x its first value", worst > 100 * ctx.losses[0])


# 5 -- update_ratio_out_of_range ---------------------------------------------------------------------
@scenario(
    "sailmaker_luff_tension_gelu_regressor",
    "RMSprop",
    "update_ratio_out_of_range",
    ("fc2",),
    None,
    heldout=True,
    note="three param groups; fc2's lr typed 1e-9 for 1e-3: fc2 never moves, the run trains around it",
)
def h613_sailmaker_group_typo(ctx):
    gen = seeded(6135)
    model = _Reg(8, 32, nn.GELU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    ctx.attach(model, opt)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    data = _reg_data(gen)
    for _step in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
    rel2 = float((model.fc2.weight - w2).norm() / w2.norm())
    rel1 = float((model.fc1.weight - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-5 relative", rel2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 relative", rel1 > 1e-2)


# 6 -- data_outlier ------------------------------------------------------------------------------------
@scenario(
    "beekeeper_hive_weight_gain_silu_regressor",
    "AdamW",
    "data_outlier",
    (),
    None,
    heldout=True,
    note="one shard at step 90 logged hive weight in grams instead of kg (x1000 targets): "
    "one giant loss and gradient, clipped, the run recovers",
    onset=90,
)
def h613_beekeeper_grams_shard(ctx):
    gen = seeded(6136)
    model = _Reg(8, 32, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    data = _reg_data(gen)
    norms = []
    for step in range(180):
        x, y = next(data)
        if step == 90:
            y = y * 1000.0
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
    ls = ctx.losses
    med = sorted(ls[70:90])[10]
    ctx.check("loss at step 90 over 1000x the median before", ls[90] > 1000 * med)
    ctx.check(
        "gradient at step 90 over 100x the median before",
        norms[90] > 100 * sorted(norms[70:90])[10],
    )
    ctx.check("recovers: last 20 mean under 3x the median before", sum(ls[-20:]) / 20 < 3 * med)


# 7 -- gradient_spike ----------------------------------------------------------------------------------
class _PoleVault(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


@scenario(
    "pole_vault_plant_angle_relu_classifier",
    "SGD Nesterov",
    "gradient_spike",
    (),
    None,
    heldout=True,
    note="4-micro-batch accumulation: at step 100 the resumed loop multiplied the loss by the "
    "accumulation count instead of dividing (x16 too large for one step); clipped at 1.0",
    onset=100,
)
def h613_pole_vault_accum_bug(ctx):
    gen = seeded(6137)
    model = _PoleVault()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = digit_batches(gen, 16)
    norms = []
    for step in range(160):
        opt.zero_grad()
        total = 0.0
        for _ in range(4):
            x, y = next(data)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            scale = 4.0 if step == 100 else 1.0 / 4.0
            (loss * scale).backward()
            total += float(loss) / 4
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(torch.tensor(total))
    med = sorted(norms[80:100])[10]
    ctx.check("gradient at step 100 over 10x the median before", norms[100] > 10 * med)
    ctx.check(
        "loss fell and stays finite",
        ctx.losses[-1] < ctx.losses[0] and all(math.isfinite(v) for v in ctx.losses),
    )


# 8 -- nonfinite ----------------------------------------------------------------------------------------
class CentsFeature(nn.Module):
    """Wheel pitch in cents above 110 Hz: 1200 * log2(f / 110), no clamp for silent frames."""

    def forward(self, f):
        return 1200.0 * torch.log2(f / 110.0) / 1200.0


class _HurdyGurdy(nn.Module):
    def __init__(self):
        super().__init__()
        self.cents = CentsFeature()
        self.fc1 = nn.Linear(6, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, f):
        return self.fc2(F.silu(self.fc1(self.cents(f))))


@scenario(
    "hurdy_gurdy_wheel_pitch_cents_regressor",
    "RAdam",
    "nonfinite",
    ("cents",),
    70,
    heldout=True,
    note="log2 of the wheel frequency without the clamp for silent frames; the step-70 batch "
    "holds frames with f=0 Hz, log2(0)=-inf, the loss is NaN",
    onset=70,
)
def h613_hurdy_gurdy_log_zero(ctx):
    gen = seeded(6138)
    model = _HurdyGurdy()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    bad_step = None
    for step in range(120):
        f = 110.0 * 2 ** (torch.rand(32, 6, generator=gen) * 2)
        y = (torch.log2(f / 110.0).mean(1, keepdim=True) - 1.0) * 2
        if step == 70:
            f[:4, 2] = 0.0
        loss = F.mse_loss(model(f), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss)):
            bad_step = step
            break
    ctx.check("loss non-finite at step 70", bad_step == 70)
    ctx.check(
        "loss finite and falling before",
        all(math.isfinite(v) for v in ctx.losses[:70]) and ctx.losses[69] < ctx.losses[0],
    )


# 9 -- loss_divergence -----------------------------------------------------------------------------------
@scenario(
    "stonemason_arch_thrust_tanh_regressor",
    "NAdam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="hand-written decoupled weight decay p -= lr*wd*p applied with wd=-3.0 (sign flipped "
    "in the config loader) from step 0: weights grow, the loss climbs slowly with no jump",
)
def h613_stonemason_decay_sign(ctx):
    gen = seeded(6139)
    model = _Reg(8, 32)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _reg_data(gen)
    wd = -3.0  # meant +3e-4 per lr unit; the loader flipped the sign and dropped the exponent
    w0 = sum(float(p.norm()) for p in model.parameters())
    for _step in range(250):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 - 2e-3 * wd)
        ctx.step(loss)
    ls = ctx.losses
    best = min(ls)
    w1 = sum(float(p.norm()) for p in model.parameters())
    means = [sum(ls[i : i + 10]) / 10 for i in range(0, len(ls), 10)]
    jumps = max(means[i + 1] / means[i] for i in range(len(means) - 1))
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("loss climbs to over 2x its best", sum(ls[-10:]) / 10 > 2 * best)
    ctx.check("no 10-step mean jumps over 3x the previous", jumps < 3)


# 10 -- loss_of_plasticity -------------------------------------------------------------------------------
class _Lacrosse(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)
        nn.init.constant_(self.fc1.bias, -3.0)  # meant to be +0.01 ("small positive bias")

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


@scenario(
    "lacrosse_cradle_pocket_depth_relu_classifier",
    "Adagrad",
    "loss_of_plasticity",
    ("fc1",),
    None,
    heldout=True,
    note="fc1's bias initialised to -3.0 (typo for a small positive 0.01): most ReLU units are "
    "dead from the start and never recover",
)
def h613_lacrosse_dead_bias_init(ctx):
    gen = seeded(61310)
    model = _Lacrosse()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = digit_batches(gen, 64)
    dead = 0.0
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
    with torch.no_grad():
        xs, _ = next(data)
        h = F.relu(model.fc1(xs))
        dead = float(((h > 0).sum(0) == 0).float().mean())
    ctx.check("over 50% of fc1's units dead at the end", dead > 0.5)


# 11 -- control: T5-style relative position bias encoder -------------------------------------------------
class RelPosBias(nn.Module):
    def __init__(self, heads, buckets=16, max_distance=32):
        super().__init__()
        self.buckets = buckets
        self.max_distance = max_distance
        self.emb = nn.Embedding(buckets, heads)

    def bucket(self, rel):
        n = self.buckets // 2
        ret = (rel > 0).long() * n
        rel = rel.abs()
        exact = n // 2
        is_small = rel < exact
        large = (
            exact
            + (
                torch.log(rel.float().clamp(min=1) / exact)
                / math.log(self.max_distance / exact)
                * (n - exact)
            ).long()
        )
        large = large.clamp(max=n - 1)
        return ret + torch.where(is_small, rel, large)

    def forward(self, t):
        pos = torch.arange(t)
        rel = pos[None, :] - pos[:, None]
        return self.emb(self.bucket(rel)).permute(2, 0, 1)  # heads, t, t


class EncLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)

    def forward(self, x, bias):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class _WhaleEncoder(nn.Module):
    def __init__(self, vocab=12, dim=32, heads=4, layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.relpos = RelPosBias(heads)
        self.layers = nn.ModuleList(EncLayer(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx)
        bias = self.relpos(idx.shape[1])
        for layer in self.layers:
            x = layer(x, bias)
        return self.head(self.ln_f(x))


@scenario(
    "whale_song_unit_t5_bias_encoder",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: hand-written encoder with T5-style bucketed relative position bias tags each "
    "song unit with its left neighbour (generated sequences); AdamW with no-decay param groups, "
    "warm-up + cosine, clipping at 1.0",
)
def h613_whale_song_t5_encoder(ctx):
    gen = seeded(61311)
    model = _WhaleEncoder()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "relpos" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "relpos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}], lr=1e-2
    )
    steps = 160
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    ctx.attach(model, opt)
    for _step in range(steps):
        x = torch.randint(1, 12, (32, 24), generator=gen)
        y = torch.cat([torch.zeros(32, 1, dtype=torch.long), x[:, :-1]], 1)
        logits = model(x)
        ctx.targets(y.reshape(-1))
        loss = F.cross_entropy(logits.reshape(-1, 12), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
    ls = ctx.losses
    ctx.check("loss fell below 60% of its start", sum(ls[-10:]) / 10 < 0.6 * ls[0])
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


# 12 -- control (alarming): sharp warm-up to a high peak, linear decay, catapult ----------------------------
@scenario(
    "thatcher_reed_bundle_grade_relu_classifier",
    "SGD",
    "healthy",
    (),
    None,
    heldout=True,
    note="alarming-looking control: 20-step warm-up to a high peak lr (1.5) then linear decay to 0; the loss "
    "rises for a few steps at the peak (a catapult) and then falls below where it was",
)
def h613_thatcher_catapult_warmup(ctx):
    gen = seeded(61312)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    peak, warm, steps = 1.5, 20, 200
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / (steps - warm))
    )
    ctx.attach(model, opt)
    data = digit_batches(gen, 64)
    for _step in range(steps):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
    ls = ctx.losses
    pre = min(ls[:warm])
    ctx.check(
        "loss rose over 1.3x above its warm-up best near the peak",
        max(ls[warm - 2 : warm + 15]) > 1.3 * pre,
    )
    ctx.check("loss ends under half its warm-up best", sum(ls[-10:]) / 10 < 0.5 * pre)
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


# 13 -- control: conv1d classifier, OneCycleLR, label smoothing, accumulation ---------------------------------
class _Steelpan(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x[:, None]))
        x = F.relu(self.conv2(x))
        return self.head(x.mean(-1))


@scenario(
    "steelpan_note_ring_conv1d_classifier",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: generated decaying tones with noise, 4 note classes; Adam with OneCycleLR, "
    "label smoothing 0.1, 2-micro-batch accumulation, clipping at 1.0",
)
def h613_steelpan_onecycle_control(ctx):
    gen = seeded(61313)
    model = _Steelpan()
    steps = 150
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    t = torch.arange(64).float()
    freqs = torch.tensor([0.15, 0.3, 0.5, 0.8])
    for _step in range(steps):
        opt.zero_grad()
        total = 0.0
        for _ in range(2):
            y = torch.randint(0, 4, (32,), generator=gen)
            x = torch.sin(freqs[y][:, None] * t) * torch.exp(-t / 30) + 0.3 * torch.randn(
                32, 64, generator=gen
            )
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
    ls = ctx.losses
    ctx.check("loss fell below 60% of its start", sum(ls[-10:]) / 10 < 0.6 * ls[0])
    ctx.check("all finite", all(math.isfinite(v) for v in ls))
