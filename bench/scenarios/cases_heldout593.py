"""Held-out set 593 (``h593_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sharpening-stone grit-order tied-embedding transformer whose learnable attention gain
lost its clamp (attention_logit_growth, Adam, param groups); tympani pedal-pitch tanh regressor
with SGD lr typed 3.0 for 0.03 (sharpness_above_limit, plain SGD); darning-egg yarn-tension
Gaussian-NLL net whose in-model log(needle speed) lost its clamp (nonfinite, Adagrad); oar-blade
catch-force GELU regressor under fp16 autocast fed strain in microstrain (amp_overflow, AdamW,
GradScaler); kiln-brick crush-strength SiLU classifier fed one shard in raw psi (data_outlier,
NAdam, clipping); honey-extractor spin-rpm ReLU Elman RNN whose identity init has a stray gain
(exploding_gradients, SGD momentum); bellfounding bell-partial ReLU regressor whose fc2 group lr
is typed 5e-9 (update_ratio_out_of_range, SGD Nesterov, param groups); sap-boil sugar-brix tanh
regressor whose L2 term has its sign flipped (loss_divergence, ASGD); lacemaking bobbin-pattern
classifier that multiplies its logits by a distillation temperature (softmax_collapse, Adamax);
cheese-rind mould multilabel BCE net whose auxiliary-loss weight is read as 40 for 0.4 on one
resumed step (gradient_spike, RMSprop, clipping).
Controls: abacus bead-flick ReLU classifier keeping an EMA of its weights, swapped in for a short
evaluation every 50 steps and swapped back (alarming-looking, AdamW, warm-up + cosine, label
smoothing); snowflake crystal-habit Hugging Face ConvNeXt over generated images (Adam,
OneCycleLR); cobbler last heel-pitch SiLU Huber regressor (RAdam, ReduceLROnPlateau, gradient
accumulation, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
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


# -- faults ---------------------------------------------------------------------------------------


class _GainAttention(nn.Module):
    """Causal self-attention with a learnable log gain on q.k/sqrt(d) (its clamp dropped)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) * self.log_gain.exp()
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        self.last_max = float(logits.detach().masked_fill(~mask, 0.0).abs().max())
        att = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _GritBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _GainAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _GritTransformer(nn.Module):
    def __init__(self, vocab=16, dim=32, heads=2, context=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.block = _GritBlock(dim, heads)
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return F.linear(self.ln_f(self.block(x)), self.tok.weight)  # head tied to the embedding


@scenario(
    "sharpening_stone_grit_order_tied_transformer",
    "Adam",
    "attention_logit_growth",
    where=("block.attn",),
    heldout=True,
    note="the attention's learnable log gain on q.k/sqrt(d) is meant to be clamped at log(5) "
    "after each step; the clamp went missing in a refactor and the gain sits in the 'scalars' "
    "param group at lr 0.1, so the attention logits grow step after step",
)
def h593_sharpening_stone_grit_order_tied_transformer(ctx):
    gen = seeded(5931)
    model = _GritTransformer()
    scalars = [model.block.attn.log_gain]
    rest = [p for n, p in model.named_parameters() if n != "block.attn.log_gain"]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-3}, {"params": scalars, "lr": 0.1}])
    lag = 3

    def batches():
        while True:
            x = torch.randint(0, 16, (32, 16), generator=gen)
            y = torch.full_like(x, -100)
            y[:, lag:] = x[:, :-lag]
            yield x, y

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)

    maxes = []

    def after(step, out, y):
        maxes.append(model.block.attn.last_max)

    losses, _ = _loop(ctx, model, opt, batches(), 160, lm, after=after)
    ctx.check("the attention logits grew over 20x", maxes[-1] > 20 * _mean(maxes[:5]))
    gain = float(model.block.attn.log_gain.detach().exp())
    ctx.check("the attention gain passed its intended clamp of 5", gain > 5.0)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "tympani_pedal_pitch_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="the sweep config's lr was typed 3.0 for 0.03: plain SGD at lr x sharpness far past 2 "
    "from the first step, the head's weights oscillate with growing amplitude and the loss "
    "blows up",
)
def h593_tympani_pedal_pitch_tanh_regressor(ctx):
    gen = seeded(5932)
    model = _Net(10, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    batches = _readings(gen, 64, 10, 59321)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr x sharpness is past 2 at step 0", 3.0 * eig > 2.0)
    worst = max((v if math.isfinite(v) else float("inf")) for v in losses)
    ctx.check("the loss blows up (over 100x its first value)", worst > 100 * losses[0])


class _LogSpeed(nn.Module):
    """log of the needle speed channel (its clamp at 1e-3 removed)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


class _YarnNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.log_speed = _LogSpeed()
        self.fc1 = nn.Linear(d_in, 40)
        self.fc2 = nn.Linear(40, 40)
        self.mean = nn.Linear(40, 1)
        self.log_var = nn.Linear(40, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.log_speed(x)))))
        return torch.cat([self.mean(h), self.log_var(h)], dim=1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    "darning_egg_yarn_tension_gaussian_nll_net",
    "Adagrad",
    "nonfinite",
    where=("log_speed",),
    diverges=90,
    onset=90,
    heldout=True,
    note="the model takes log(needle speed) as a feature; the clamp(min=1e-3) was removed as "
    "'never triggered', and the shard read at step 90 logs the machine idling with speed exactly "
    "0: log(0) = -inf, the NLL is NaN",
)
def h593_darning_egg_yarn_tension_gaussian_nll_net(ctx):
    gen = seeded(5933)
    model = _YarnNet(8)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    base = _readings(gen, 64, 8, 59331)
    seen = {}

    def alter(step, x, y):
        x = x.clone()
        x[:, 0] = 0.5 + torch.sigmoid(x[:, 0])  # speed in m/s, positive
        if step == 90:
            x[:16, 0] = 0.0
            seen["inf"] = bool(torch.isinf(model.log_speed(x)).any())
        return x, y

    losses, _ = _loop(ctx, model, opt, base, 150, _gauss_nll, alter=alter)
    ctx.check("the loss is finite before step 90", _finite(losses[:90]))
    ctx.check("the loss is non-finite at step 90", len(losses) == 91 and not _finite(losses[90:]))
    ctx.check("log_speed produced -inf at step 90", seen.get("inf", False))


@scenario(
    "oar_blade_catch_force_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="trained under fp16 autocast with a GradScaler; from step 80 the rowing logger's new "
    "firmware writes the three strain-gauge channels in microstrain instead of strain (x1e6): "
    "fc1's fp16 output overflows to inf, the loss is NaN",
)
def h593_oar_blade_catch_force_fp16_gelu_regressor(ctx):
    gen = seeded(5934)
    model = _Net(12, 48, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = _readings(gen, 64, 12, 59341)
    ctx.attach(model, opt, scaler=scaler)
    losses, seen = [], {}
    for step in range(160):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1e6
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
            if step == 80:
                seen["fp16"] = bool(torch.isfinite(model.fc1(x)).all())
        if step == 80:
            seen["fp32"] = bool(torch.isfinite(model.fc1(x)).all())
        loss = F.huber_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss is finite before step 80", _finite(losses[:80]))
    ctx.check("the loss is non-finite at step 80", len(losses) == 81 and not _finite(losses[80:]))
    ctx.check("fc1's fp16 output overflows at step 80", seen.get("fp16") is False)
    ctx.check("fc1's float32 output is finite at step 80", seen.get("fp32") is True)
    ctx.check("the scaler cut its scale at step 80", ctx.scales[-1] < ctx.scales[-2])


@scenario(
    "kiln_brick_crush_strength_silu_classifier",
    "NAdam",
    "data_outlier",
    onset=120,
    heldout=True,
    note="the crush-test shard read at step 120 was exported in raw psi instead of standardised "
    "units (x400 and offset): one batch with a loss over 20x and a gradient over 10x; clipping "
    "at 1.0 and the run recovers",
)
def h593_kiln_brick_crush_strength_silu_classifier(ctx):
    gen = seeded(5935)
    model = _Net(14, 48, 4, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 14, 4, 59351)

    def alter(step, x, y):
        return (x * 400.0 + 3000.0, y) if step == 120 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, batches, 220, F.cross_entropy, classifier=True, alter=alter, clip=1.0
    )
    ctx.check(
        "the loss at step 120 is over 20x the median before",
        losses[120] > 20 * _median(losses[100:120]),
    )
    ctx.check(
        "the gradient at step 120 is over 10x the median before",
        norms[120] > 10 * _median(norms[100:120]),
    )
    ctx.check("the run recovers", _mean(losses[-10:]) < 2 * _mean(losses[110:120]))
    ctx.check("the loss stays finite", _finite(losses))


class _SpinRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.1):
        super().__init__()
        self.rnn = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        with torch.no_grad():
            self.rnn.weight_hh.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh.zero_()
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.rnn.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.rnn(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    "honey_extractor_spin_rpm_elman_rnn",
    "SGD momentum",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="an IRNN (ReLU, identity recurrent init) whose init gain was copied as 1.1 from the "
    "feed-forward config instead of 1.0: the backward signal grows through the 40 time steps "
    "and SGD with momentum blows up",
)
def h593_honey_extractor_spin_rpm_elman_rnn(ctx):
    gen = seeded(5936)
    model = _SpinRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def batches():
        while True:
            x = 0.5 * torch.randn(32, 40, 4, generator=gen)
            yield x, x[:, :, 0].mean(1) * 3.0

    ratio = {}

    def after(step, out, y):
        if step == 0:
            first, last = model.states[0].grad, model.states[-1].grad
            ratio["r"] = float(first.norm() / last.norm().clamp_min(1e-12))

    losses, _ = _loop(ctx, model, opt, batches(), 150, F.mse_loss, after=after)
    ctx.check("dL/dh at t=0 is over 20x dL/dh at the last step", ratio.get("r", 0) > 20)
    worst = max((v if math.isfinite(v) else float("inf")) for v in losses)
    ctx.check("the loss blows up (over 100x its first value)", worst > 100 * losses[0])


@scenario(
    "bellfounding_bell_partial_relu_regressor",
    "SGD Nesterov",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="per-layer learning rates from a YAML table; fc2's entry was typed 5e-9 for 5e-2, so "
    "fc2's updates are ~1e-9 of its weights and it never moves while fc1 and the head train",
)
def h593_bellfounding_bell_partial_relu_regressor(ctx):
    gen = seeded(5937)
    model = _Net(10, 48, 1)
    lrs = {"fc1": 5e-2, "fc2": 5e-9, "head": 5e-2}
    groups = [{"params": getattr(model, n).parameters(), "lr": lr} for n, lr in lrs.items()]
    opt = torch.optim.SGD(groups, lr=5e-2, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 10, 59371)
    before = _flat(model.fc2)
    before_fc1 = _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss)
    moved = float((_flat(model.fc2) - before).norm() / before.norm())
    moved_fc1 = float((_flat(model.fc1) - before_fc1).norm() / before_fc1.norm())
    ctx.check("fc2 moved less than 1e-6 of its norm", moved < 1e-6)
    ctx.check("fc1 moved over 5% of its norm", moved_fc1 > 0.05)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "sap_boil_sugar_brix_tanh_regressor",
    "ASGD",
    "loss_divergence",
    heldout=True,
    note="the L2 term was ported from a code base that maximises a reward, so it is subtracted: "
    "loss - 0.05 * ||w||^2; the weights grow slowly and the loss climbs with no jump",
)
def h593_sap_boil_sugar_brix_tanh_regressor(ctx):
    gen = seeded(5938)
    model = _Net(10, 40, 1, nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=1e9)
    batches = _readings(gen, 64, 10, 59381)
    norm0 = float(_flat(model).norm())

    def backprop(step, loss, out, y):
        l2 = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - 0.05 * l2

    losses, _ = _loop(ctx, model, opt, batches, 250, F.mse_loss, backprop=backprop)
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * norm0)
    ctx.check("the loss ends over 2x its best", _mean(losses[-10:]) > 2 * min(losses))
    jumps = [b / max(a, 1e-8) for a, b in zip(losses[:-1], losses[1:], strict=False)]
    ctx.check("no single step jumps the loss 3x", max(jumps) < 3.0)
    ctx.check("the loss stays finite", _finite(losses))


class _BobbinNet(_Net):
    def __init__(self, d_in, k, scale):
        super().__init__(d_in, 48, k)
        self.logit_scale = scale

    def forward(self, x):
        return self.head(self.features(x)) * self.logit_scale


@scenario(
    "lacemaking_bobbin_pattern_inverse_temperature_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the config's temperature: 100 is meant for the distillation teacher; the student's "
    "constructor reads it as its logit scale and multiplies the logits by 100, so the float32 "
    "softmax rounds most rows' target probability to exactly 1.0",
)
def h593_lacemaking_bobbin_pattern_inverse_temperature_classifier(ctx):
    gen = seeded(5939)
    cfg = {"temperature": 100.0}
    model = _BobbinNet(16, 5, cfg["temperature"])
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 16, 5, 59391, spread=3.0)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


class _RindNet(nn.Module):
    def __init__(self, d_in, labels):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, labels)
        self.aux = nn.Linear(48, 1)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return torch.cat([self.head(h), self.aux(h)], dim=1)


@scenario(
    "cheese_rind_mould_multilabel_bce_net",
    "RMSprop",
    "gradient_spike",
    onset=140,
    heldout=True,
    note="multilabel mould BCE with an auxiliary ripeness loss weighted 0.4; the step resumed "
    "from a checkpoint at 140 re-reads the weight from the string '40%' without dividing by "
    "100, so that one step's gradient is ~100x; the logged loss is the main BCE; clipped at 5",
)
def h593_cheese_rind_mould_multilabel_bce_net(ctx):
    gen = seeded(5940)
    g = torch.Generator().manual_seed(59401)
    w = torch.randn(12, 4, generator=g)
    model = _RindNet(12, 4)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def batches():
        while True:
            x = torch.randn(64, 12, generator=gen)
            y = (x @ w + 0.5 * torch.randn(64, 4, generator=gen) > 0).float()
            ripe = x[:, :3].sum(1, keepdim=True) * 2.0
            yield x, torch.cat([y, ripe], dim=1)

    def main(out, y):
        return F.binary_cross_entropy_with_logits(out[:, :4], y[:, :4])

    def backprop(step, loss, out, y):
        weight = float("40%".rstrip("%")) if step == 140 else 0.4
        return loss + weight * F.mse_loss(out[:, 4], y[:, 4])

    losses, norms = _loop(ctx, model, opt, batches(), 220, main, backprop=backprop, clip=5.0)
    ctx.check(
        "the gradient at step 140 is over 20x the median before",
        norms[140] > 20 * _median(norms[120:140]),
    )
    ctx.check("the logged loss at step 140 is ordinary", losses[140] < 2 * _median(losses[120:140]))
    ctx.check("the loss stays finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "abacus_bead_flick_ema_relu_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="keeps an EMA (0.98) of its weights; every 50 steps the EMA weights are copied into the "
    "model for a short evaluation and the training weights copied back before the next step "
    "(looks alarming: the weights jump twice); warm-up + cosine, label smoothing 0.1",
)
def h593_abacus_bead_flick_ema_relu_classifier(ctx):
    gen = seeded(5941)
    model = _Net(16, 48, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    batches = _classes(gen, 64, 16, 6, 59411)
    held_x, held_y = next(_classes(torch.Generator().manual_seed(59412), 256, 16, 6, 59411))
    ema = [p.detach().clone() for p in model.parameters()]
    evals, restored = [], []

    def after(step, out, y):
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.mul_(0.98).add_(p.detach(), alpha=0.02)
            if step % 50 == 49:
                train = [p.detach().clone() for p in model.parameters()]
                for e, p in zip(ema, model.parameters(), strict=True):
                    p.copy_(e)
                model.eval()
                evals.append(float((model(held_x).argmax(1) == held_y).float().mean()))
                model.train()
                for t, p in zip(train, model.parameters(), strict=True):
                    p.copy_(t)
                restored.append(
                    all(torch.equal(t, p) for t, p in zip(train, model.parameters(), strict=True))
                )

    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches,
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        after=after,
    )
    ctx.check("the loss fell", _fell(losses))
    ctx.check("the EMA was swapped in and out 4 times", len(restored) == 4 and all(restored))
    ctx.check("the EMA evaluation beats chance by far", bool(evals) and evals[-1] > 0.5)


def _snowflakes(gen, batch=24, size=16):
    """3-channel images of stripes at three habits (0, 90, 45 degrees), random phase and noise."""
    ii, jj = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dirs = [(ii, 0 * jj), (0 * ii, jj), (ii, jj)]
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, 1, generator=gen)
        freq = 0.6 + 0.4 * torch.rand(batch, 1, 1, generator=gen)
        a = torch.stack([dirs[int(c)][0] + dirs[int(c)][1] for c in y])
        img = torch.sin(freq * a + phase)
        x = img[:, None].repeat(1, 3, 1, 1) + 0.3 * torch.randn(batch, 3, size, size, generator=gen)
        yield x, y


@scenario(
    "snowflake_crystal_habit_hf_convnext_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="a Hugging Face ConvNeXt built from a tiny config (2 stages, widths 16/32) over "
    "generated crystal images; Adam under OneCycleLR",
)
def h593_snowflake_crystal_habit_hf_convnext_classifier(ctx):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    gen = seeded(5942)
    config = ConvNextConfig(
        num_channels=3,
        patch_size=2,
        num_stages=2,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        image_size=16,
        num_labels=3,
        drop_path_rate=0.0,
    )
    model = ConvNextForImageClassification(config)
    steps = 100
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)

    def forward_loss(out, y):
        return F.cross_entropy(out, y)

    ctx.attach(model, opt)
    batches = _snowflakes(gen)
    losses = []
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = forward_loss(model(pixel_values=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _fell(losses))


@scenario(
    "cobbler_last_heel_pitch_huber_regressor",
    "RAdam",
    "healthy",
    heldout=True,
    note="heel-pitch Huber regressor with Student-t noisy targets, 2-micro-batch gradient "
    "accumulation, clipping at 1.0 and ReduceLROnPlateau",
)
def h593_cobbler_last_heel_pitch_huber_regressor(ctx):
    gen = seeded(5943)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    batches = _readings(gen, 32, 10, 59431, noise=0.0)
    noise = torch.distributions.StudentT(3.0)
    ctx.attach(model, opt)
    losses = []
    for _step in range(200):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            y = 2.0 * y + 0.1 * noise.sample((32,))
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        plateau.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _fell(losses))
