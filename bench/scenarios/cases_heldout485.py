"""Held-out set 485 (``h485_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a sandcastle turret-slump regressor whose hand-written weight decay has its sign flipped
(a slow climb, RMSprop), a change-ringing row decoder with grouped-query attention trained at an
AdamW lr typed 3e-2 for 3e-4 (q.k/sqrt(d) logits grow), a curling stone-glide regressor whose
weights are reset to a half-way average by a checkpoint-merging bug once (a loss spike it
recovers from, Adamax), a beekeeping smoker fuel-burn regressor whose fc1 group lr is typed 1e-9
(Adagrad), a cicada chorus envelope regressor taking sqrt(var - noise_floor) with no clamp (NaN,
NAdam), a kite-flying wind-class classifier fed one shard in millimetres (SGD), a pole-vault
pole-bend regressor whose last partial batch is reduced with sum (one gradient burst, SGD
Nesterov), a canyon-echo delay deep leaky-ReLU MLP initialised with gain 1.45 (exploding
gradients, SGD momentum), a sheep-dog trial classifier whose fc2 bias is initialised at -4
(dead ReLUs, Adam) and a dog-sled gait classifier whose temperature is multiplied
instead of divided (softmax collapse, Adam).

Controls: a sundial gnomon-shadow GELU regressor with an EMA of the weights swapped in for
evaluation every 50 steps (AdamW, warm-up + cosine, clipping); a handbell peal-tone Conv1d
classifier (SGD momentum, OneCycleLR, label smoothing, clipping); a firefly flash-interval
Gaussian-NLL net (RAdam, two param groups, ReduceLROnPlateau, gradient accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _wnorm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated, ``after(step, loss)`` runs after
    the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it. With
    ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


# -- 1. loss divergence: hand-written weight decay with its sign flipped ----------------------------


@scenario(
    family="sandcastle_turret_slump_rmsprop_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sandcastle turret-slump regressor (SiLU MLP on sand moisture, grain size, height and "
    "wind features, MSE, RMSprop). Weight decay is applied by hand after each step and written "
    "p.add_(lr * wd * p) instead of p.sub_(...): the weights inflate a little every step and "
    "the loss, after fitting, climbs slowly with no other mechanism.",
)
def h485_sandcastle_decay_sign(ctx) -> None:
    gen = seeded(4851)
    model = _Net(10, 48, 1, act=nn.SiLU)
    lr, wd = 1e-3, 6.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(lr * wd * p)

    w0 = _wnorm(model)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4851), 250, F.mse_loss, after=after)
    w1 = _wnorm(model)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 120, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- 2. attention logit growth: a GQA decoder at an AdamW lr typed 3e-2 for 3e-4 ---------------------


class _GQAttention(nn.Module):
    """Causal self-attention with 4 query heads sharing 2 key/value heads."""

    def __init__(self, dim, q_heads=4, kv_heads=2):
        super().__init__()
        self.qh, self.kvh, self.hd = q_heads, kv_heads, dim // q_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.last_max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q = self.q(x).reshape(b, t, self.qh, self.hd).transpose(1, 2)
        k, v = self.kv(x).reshape(b, t, 2, self.kvh, self.hd).permute(2, 0, 3, 1, 4)
        rep = self.qh // self.kvh
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        self.last_max_logit = float(logits.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        y = torch.softmax(logits.masked_fill(mask, float("-inf")), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _RingBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _GQAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _RingDecoder(nn.Module):
    """Predicts the next bell in a generated change-ringing row sequence."""

    def __init__(self, vocab=16, dim=32, length=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(_RingBlock(dim) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _ring_rows(gen, batch=32, bells=8, rows=2):
    """Rows of a plain hunt: each row a permutation of the bells, the next a fixed swap of pairs
    of the previous, so after the first row every token is a copy from a known offset."""
    while True:
        first = torch.argsort(torch.rand(batch, bells, generator=gen), dim=1)
        seq = [first]
        for r in range(rows - 1):
            prev = seq[-1].clone()
            start = r % 2
            idx = torch.arange(bells)
            for i in range(start, bells - 1, 2):
                idx[i], idx[i + 1] = i + 1, i
            seq.append(prev[:, idx])
        s = torch.cat(seq, 1)
        yield s[:, :-1], s[:, 1:]


@scenario(
    family="change_ringing_row_gqa_decoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Change-ringing row decoder (two pre-LN blocks written by hand with grouped-query "
    "attention: 4 query heads over 2 key/value heads, cross-entropy on the next bell of "
    "generated plain-hunt rows). The AdamW lr is typed 3e-2 for 3e-4 with weight decay 0 and no "
    "QK-norm: the copy task sharpens attention and the q.k/sqrt(d) logits grow step after step.",
)
def h485_change_ringing_gqa_lr(ctx) -> None:
    seeded(4852)
    model = _RingDecoder()

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def run(net, lr, attach):
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
        mx = []

        def after(step, loss):
            mx.append(max(b.attn.last_max_logit for b in net.blocks))

        g = torch.Generator().manual_seed(48520)
        losses, _ = _train(ctx, net, opt, _ring_rows(g), 200, loss_fn, after=after, attach=attach)
        return losses, mx

    torch.manual_seed(48521)
    _, ref = run(_RingDecoder(), 3e-4, False)
    losses, mx = run(model, 3e-2, True)
    ctx.check("at the intended lr 3e-4 the logits stay under 10", max(ref) < 10)
    ctx.check("max |q.k/sqrt(d)| over 20x its start", mx[-1] > 20 * mx[0])
    ctx.check("max |q.k/sqrt(d)| over 50 at the end", mx[-1] > 50)
    ctx.check("still growing over the last half", _mean(mx[-20:]) > 1.3 * _mean(mx[90:110]))


# -- 3. loss spike: a checkpoint-merging bug averages the weights with the init once ---------------

CURL_STEP = 140


@scenario(
    family="curling_sweep_stone_glide_adamax_relu_regressor",
    optimizer="Adamax",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CURL_STEP,
    note="Curling stone-glide regressor (ReLU MLP on sweeping effort, pebble and ice-temperature "
    "features, MSE, Adamax). At step 140 a checkpoint-merging utility meant to average two "
    "recent checkpoints averages the live weights with the initial ones instead: the loss jumps "
    "once and the run recovers within a few dozen steps, with no gradient burst behind it.",
)
def h485_curling_merge_bug(ctx) -> None:
    gen = seeded(4853)
    model = _Net(10, 64, 1)
    init = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def before(step):
        if step == CURL_STEP:
            with torch.no_grad():
                for p, p0 in zip(model.parameters(), init, strict=True):
                    p.mul_(0.5).add_(0.5 * p0)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4853), 260, F.mse_loss, before=before
    )
    pre = _mean(losses[CURL_STEP - 10 : CURL_STEP])
    ctx.check("trained before the merge", pre < 0.5 * _mean(losses[:10]))
    ctx.check("loss at the merge over 3x the 10 steps before", losses[CURL_STEP] > 3 * pre)
    ctx.check("recovered: last 10 under 1.5x the pre-merge level", _mean(losses[-10:]) < 1.5 * pre)
    ctx.check(
        "no gradient burst (merge-step gradient under 10x the median)",
        norms[CURL_STEP] < 10 * _median(norms),
    )


# -- 4. update ratio: the fc1 param group lr typed 1e-9 --------------------------------------------


@scenario(
    family="beekeeping_smoker_fuel_burn_two_group_tanh_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Beekeeping smoker fuel-burn regressor (tanh MLP on fuel type, packing, puff rate and "
    "air features, Huber, Adagrad with two param groups). The first layer's group lr is typed "
    "1e-9 instead of 1e-2: fc1 barely moves (updates under 1e-6 of its weights) while the rest "
    "trains; the loss still falls, only slower.",
)
def h485_beekeeping_group_lr(ctx) -> None:
    gen = seeded(4854)
    model = _Net(12, 48, 1, act=nn.Tanh)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-2}]
    )
    w_fc1 = model.fc1.weight.detach().clone()
    w_fc2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 12, 4854), 200, F.huber_loss)
    d1 = float((model.fc1.weight.detach() - w_fc1).norm() / w_fc1.norm())
    d2 = float((model.fc2.weight.detach() - w_fc2).norm() / w_fc2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", d1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", d2 > 0.05)
    ctx.check("the loss still fell (no blow-up)", _fell(losses))


# -- 5. nonfinite: sqrt(var - noise_floor) with no clamp ---------------------------------------------

CICADA_STEP = 120


class _Envelope(nn.Module):
    """Loudness envelope of a chorus window: sqrt of the variance above the microphone floor."""

    def __init__(self, floor=0.05):
        super().__init__()
        self.floor = floor

    def forward(self, x):
        return torch.sqrt(x.var(dim=-1, keepdim=True) - self.floor)  # missing clamp(min=0)


class _CicadaNet(nn.Module):
    def __init__(self, window=32, hidden=32):
        super().__init__()
        self.envelope = _Envelope()
        self.fc1 = nn.Linear(window + 1, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([x, self.envelope(x)], -1)
        return self.head(self.act(self.fc1(z))).squeeze(-1)


@scenario(
    family="cicada_chorus_envelope_sqrt_floor_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("envelope",),
    diverges=CICADA_STEP,
    heldout=True,
    onset=CICADA_STEP,
    note="Cicada chorus-density regressor (SiLU MLP on a 32-sample microphone window plus a "
    "loudness envelope, MSE, NAdam). The envelope module takes sqrt(var - noise_floor) with no "
    "clamp; while the chorus is loud the variance is above the floor, but at step 120 a batch "
    "holds quiet dusk windows, the argument goes negative and sqrt returns NaN.",
)
def h485_cicada_sqrt_floor(ctx) -> None:
    gen = seeded(4855)
    model = _CicadaNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def data():
        while True:
            amp = 0.5 + torch.rand(64, 1, generator=gen)
            x = amp * torch.randn(64, 32, generator=gen)
            yield x, amp.squeeze(-1) * 2 - 1

    def alter(step, x, y):
        if step == CICADA_STEP:
            x = x.clone()
            x[:4] *= 0.05  # quiet dusk windows: variance under the noise floor
        return x, y

    losses, _ = _train(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("finite and training before the quiet batch", _fell(losses[:CICADA_STEP]))
    ctx.check("the loss is NaN exactly at step 120", first_bad == CICADA_STEP)
    with torch.no_grad():
        quiet = 0.05 * torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
        ctx.check(
            "the envelope of a quiet window is NaN", bool(model.envelope(quiet).isnan().any())
        )


# -- 6. data outlier: one shard in millimetres --------------------------------------------------------

KITE_STEP = 100


@scenario(
    family="kite_flying_line_angle_wind_class_relu_classifier",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=KITE_STEP,
    note="Kite-flying wind-class classifier (ReLU MLP on line angle, line length, tension and "
    "sag readings, cross-entropy, plain SGD). One shard was exported in millimetres instead of "
    "metres: the batch at step 100 is 1000x its usual scale, the loss and gradient jump once "
    "and the run recovers.",
)
def h485_kite_mm_shard(ctx) -> None:
    gen = seeded(4856)
    model = _Net(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scale = {}

    def alter(step, x, y):
        if step == KITE_STEP:
            x = x * 1000.0
        scale[step] = float(x.abs().mean())
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4856),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    pre = _mean(losses[KITE_STEP - 10 : KITE_STEP])
    ctx.check("inputs over 100x at the bad shard", scale[KITE_STEP] > 100 * scale[KITE_STEP - 1])
    ctx.check("loss over 10x at the bad shard", losses[KITE_STEP] > 10 * pre)
    ctx.check("gradient over 20x the median", norms[KITE_STEP] > 20 * _median(norms))
    ctx.check("recovered (last 10 under 2x the pre-shard level)", _mean(losses[-10:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: the last partial batch reduced with sum --------------------------------------

VAULT_STEP = 110


@scenario(
    family="pole_vault_pole_bend_sum_reduction_relu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=VAULT_STEP,
    note="Pole-vault pole-bend regressor (ReLU MLP on run-up speed, grip height, pole stiffness "
    "and take-off angle, MSE, SGD Nesterov, clipping at 1). The code path for the epoch's last "
    "batch (step 110) computes the loss with reduction='sum' instead of 'mean': one gradient "
    "over 50x normal from a loss bug, not from the data; clipping caps the damage.",
)
def h485_pole_vault_sum_reduction(ctx) -> None:
    gen = seeded(4857)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 256 if step == VAULT_STEP else loss  # sum over a batch of 256

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 256, 10, 4857),
        220,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient over 50x the median at step 110", norms[VAULT_STEP] > 50 * _median(norms))
    ctx.check(
        "the batch is ordinary (loss before the step under 2x the 10 before)",
        losses[VAULT_STEP] < 2 * _mean(losses[VAULT_STEP - 10 : VAULT_STEP]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 8. exploding gradients: a deep leaky-ReLU MLP initialised with gain 1.45 -------------------------


class _DeepEcho(nn.Module):
    def __init__(self, d_in=8, width=32, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain * math.sqrt(2.0 / m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = F.leaky_relu(m(x), 0.1)
        return self.head(x).squeeze(-1)


@scenario(
    family="canyon_echo_delay_deep_leaky_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Canyon-echo delay regressor (10-layer leaky-ReLU MLP on wall distance, air temperature "
    "and clap features, MSE, SGD momentum). The init helper is called with gain 1.45 where 1.0 "
    "(He init) was meant: activations and gradients grow ~1.45x per layer, the gradient reaching "
    "the first layer is far larger than the last layer's, and the loss blows up.",
)
def h485_canyon_echo_gain(ctx) -> None:
    seeded(4858)
    model = _DeepEcho(gain=1.45)
    ref = _DeepEcho(gain=1.0)

    def out_grads(net):
        got = {}
        for i in (0, len(net.layers) - 1):
            net.layers[i].register_full_backward_hook(
                lambda mod, gi, go, i=i: got.__setitem__(i, float(go[0].norm()))
            )
        return got

    lr = 1e-4
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    ref_losses, _ = _train(
        ctx,
        ref,
        ref_opt,
        _readings(torch.Generator().manual_seed(48581), 64, 8, 4858),
        150,
        F.mse_loss,
        attach=False,
    )
    got = out_grads(model)
    ref_got = out_grads(ref)
    x, y = next(_readings(torch.Generator().manual_seed(48580), 64, 8, 4858))
    F.mse_loss(ref(x), y).backward()
    ref.zero_grad()
    ref_ratio = ref_got[0] / ref_got[9]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ratios = []

    def after(step, loss):
        if got:
            ratios.append(got[0] / max(got[9], 1e-30))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(torch.Generator().manual_seed(48581), 64, 8, 4858),
        150,
        F.mse_loss,
        after=after,
    )
    ctx.check("at gain 1.0 the same lr trains and stays finite", _fell(ref_losses))
    ctx.check(
        "the gradient reaching layers.0 is over 10x the last layer's (at step 0)",
        ratios[0] > 10,
    )
    ctx.check("that depth ratio is over 10x the He-init one", ratios[0] > 10 * ref_ratio)
    ctx.check(
        "the loss blows up (over 1e3x its start or non-finite)",
        not _finite(losses) or max(losses) > 1e3 * losses[0],
    )


# -- 9. loss of plasticity: fc2 bias initialised at -4 ----------------------------


@scenario(
    family="sheep_dog_trial_outrun_bias_init_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Sheep-dog trial outrun-grade classifier (ReLU MLP on outrun path, lift and fetch "
    "features, cross-entropy, Adam). The init code fills fc2's bias from a config key meant for "
    "a log-variance prior, -4: every fc2 pre-activation is negative from the start, fc2's ReLUs "
    "are dead, no gradient reaches fc1 or fc2 and the run stays at chance.",
)
def h485_sheep_dog_bias_init(ctx) -> None:
    gen = seeded(4859)
    model = _Net(12, 48, 6)
    nn.init.constant_(model.fc2.bias, -4.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = _grades(gen, 128, 12, 6, 4859)
    losses, _ = _train(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    x, _ = next(data)
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
    ctx.check("over 90% of fc2's units dead", dead > 0.9)
    ctx.check(
        "loss stuck near chance (last 10 over 0.8 ln 6)", _mean(losses[-10:]) > 0.8 * math.log(6)
    )
    ctx.check("finite", _finite(losses))


# -- 10. softmax collapse: temperature multiplied instead of divided --------------------------------


class _GaitNet(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=4, temperature=0.01):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def logits(self, x):
        return self.head(self.act1(self.fc1(x)))

    def forward(self, x):
        return self.logits(x) / self.temperature


@scenario(
    family="dog_sled_gait_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Dog-sled gait classifier (ReLU MLP on harness-tension and paw-strike features, "
    "cross-entropy, Adam). The softmax temperature is meant as 100 (z / 100 for calibrated, "
    "soft outputs) but the config sets T=0.01: the logits are multiplied by 100, the float32 "
    "softmax of most rows rounds to exactly 1.0 and those rows give no gradient.",
)
def h485_dog_sled_temperature(ctx) -> None:
    gen = seeded(4860)
    model = _GaitNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 14, 4, 4860, spread=1.2)
    losses, _ = _train(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        out = model(x)
        frac = collapsed_fraction(out, y)
        top2 = out.topk(2, -1).values
        gap = float((top2[:, 0] - top2[:, 1]).median())
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("median top-1 minus top-2 logit gap over 20", gap > 20)
    ctx.check("finite", _finite(losses))


# -- 11. control: EMA of the weights swapped in for evaluation every 50 steps ------------------------


@scenario(
    family="sundial_gnomon_shadow_ema_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sundial gnomon-shadow regressor (GELU MLP on latitude, declination and hour-angle "
    "features, MSE, AdamW, warm-up + cosine, clipping at 1). An exponential moving average of "
    "the weights (decay 0.98) is swapped in for evaluation every 50 steps and the live weights "
    "are swapped back before training goes on. Control.",
)
def h485_sundial_ema_control(ctx) -> None:
    gen = seeded(4861)
    model = _Net(10, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 240) / 240)) + 0.02,
    )
    ema = [p.detach().clone() for p in model.parameters()]
    evals = []
    held = torch.Generator().manual_seed(48610)
    xe, ye = next(_readings(held, 256, 10, 4861))

    def after(step, loss):
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.mul_(0.98).add_(p.detach(), alpha=0.02)
            if (step + 1) % 50 == 0:
                live = [p.detach().clone() for p in model.parameters()]
                for p, e in zip(model.parameters(), ema, strict=True):
                    p.copy_(e)
                model.eval()
                evals.append(float(F.mse_loss(model(xe), ye)))
                for p, w in zip(model.parameters(), live, strict=True):
                    p.copy_(w)
                model.train()

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4861),
        250,
        F.mse_loss,
        after=after,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained (last 10 under 0.5x the first 10), finite", _fell(losses, ratio=0.5))
    ctx.check("EMA evaluation improved", len(evals) == 5 and evals[-1] < 0.7 * evals[0])


# -- 12. control: Conv1d classifier, OneCycleLR, label smoothing ------------------------------------


class _PealConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _peals(gen, batch=48, length=48, classes=5):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = torch.exp(-t / 30.0)
        x = torch.sin(freq[:, None] * t + phase) * decay + 0.3 * torch.randn(
            batch, length, generator=gen
        )
        yield x, y


@scenario(
    family="handbell_peal_tone_onecycle_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Handbell peal-tone classifier (ReLU Conv1d over a noisy decaying strike waveform, "
    "cross-entropy with label smoothing 0.1, SGD momentum 0.9, OneCycleLR to 0.1, clipping at "
    "2). Control.",
)
def h485_handbell_onecycle_control(ctx) -> None:
    gen = seeded(4862)
    model = _PealConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _peals(gen),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("trained (last 10 under 0.7x the first 10), finite", _fell(losses))


# -- 13. control: Gaussian-NLL net, RAdam, param groups, ReduceLROnPlateau, accumulation -----------


class _FlashNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.body(x)
        return torch.cat([self.mean(h), self.log_var(h).clamp(-6, 6)], -1)


@scenario(
    family="firefly_flash_interval_gaussian_nll_radam_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Firefly flash-interval regressor predicting a mean and a clamped log-variance (SiLU MLP "
    "on temperature, humidity and neighbour-flash features, Gaussian NLL, RAdam with the "
    "variance head in its own group at half the lr, ReduceLROnPlateau, gradient accumulation 2, "
    "noisy heteroscedastic targets). Control.",
)
def h485_firefly_nll_control(ctx) -> None:
    gen = seeded(4863)
    model = _FlashNet()
    opt = torch.optim.RAdam(
        [
            {"params": list(model.body.parameters()) + list(model.mean.parameters()), "lr": 3e-3},
            {"params": model.log_var.parameters(), "lr": 1.5e-3},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def data():
        base = _readings(gen, 32, 10, 4863, noise=0.0)
        while True:
            x, y = next(base)
            sd = 0.05 + 0.2 * torch.sigmoid(x[:, 0])
            yield x, y + sd * torch.randn(32, generator=gen)

    def nll(out, y):
        mu, lv = out[:, 0], out[:, 1]
        return 0.5 * (lv + (y - mu) ** 2 / lv.exp()).mean()

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(ctx, model, opt, data(), 200, nll, accumulate=2, after=after)
    ctx.check(
        "trained (last 10 under the first 10 by 0.5), finite",
        _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.5,
    )
