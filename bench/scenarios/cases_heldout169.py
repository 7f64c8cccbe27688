"""Held-out set 169 (``h169_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: three hand-written transformers (a hand softmax over q.k
with rotary embeddings and grouped-query attention, ``nn.MultiheadAttention`` and
``scaled_dot_product_attention``), a gated message-passing network over generated molecules
with bond features, a seq2seq recurrent autoencoder unrolled by hand, a focal-loss classifier on
imbalanced classes, 1-D conv and MLP regressors.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    clip=None,
    sched=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
    scaler=None,
):
    """One training loop for the set: ``accumulate`` micro-batches a step (each loss divided by
    the count), ``alter(step, x, y)`` changes a batch, ``before(step)`` runs first,
    ``watch(step, out, x, y)`` records, ``scale_loss(step, loss)`` is what is back-propagated,
    ``after(step)`` runs after the update."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach())
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


def _level_sequences(gen, batch, levels=24, length=12):
    """Integer readings; the class depends on whether the loudest reading comes before the
    quietest and on the level of the first three readings."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        y = (x.argmax(1) < x.argmin(1)).long() * 2 + (x[:, :3].float().mean(1) > levels / 2).long()
        yield x, y


# -- vibraphone motor vibrato: rotary GQA transformer, q.k multiplied by sqrt(head_dim) ---------


def _rotate(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding written by hand on (batch, heads, time, head_dim)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class RotaryGQA(nn.Module):
    """Grouped-query attention (4 query heads share 2 key/value heads) with rotary embeddings
    and a hand softmax over q.k; records the largest |logit| the softmax saw."""

    def __init__(self, dim, heads, kv_heads, scale):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd)
        self.proj = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q = self.q(x).reshape(b, t, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(x).reshape(b, t, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k = _rotate(q), _rotate(k)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        self.last_max = float(scores.detach().abs().amax())
        att = torch.softmax(scores, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class VibratoNet(nn.Module):
    """Reads 12 binned tremolo-amplitude readings of a vibraphone's rotating-disc motor and
    names one of four motor-speed settings."""

    def __init__(self, levels=24, dim=32, heads=4, kv_heads=2, classes=4, scale=None):
        super().__init__()
        hd = dim // heads
        self.embed = nn.Embedding(levels, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RotaryGQA(dim, heads, kv_heads, hd**-0.5 if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


@scenario(
    family="vibraphone_motor_rotary_gqa_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with hand-written rotary embeddings and grouped-query "
    "attention (4 query heads over 2 key/value heads), a hand softmax over q.k. The scale was "
    "written head_dim ** 0.5 where head_dim ** -0.5 was meant (so q.k is multiplied by "
    "sqrt(8)), and AdamW runs at lr 1e-2 with weight decay 0: the q.k logits the softmax sees "
    "grow more than 10x, past 50.",
)
def h169_vibraphone_rotary_gqa_scale(ctx: Context) -> None:
    gen = seeded(16901)
    model = VibratoNet(scale=8**0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _level_sequences(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 50", seen[-1] > 50)


def _saturated(logits: torch.Tensor) -> float:
    """Share of rows whose float32 softmax puts exactly 1.0 on one class."""
    return float((torch.softmax(logits.float(), -1).amax(-1) == 1.0).float().mean())


# -- alpine cowbell herd movement: nn.MultiheadAttention, temperature 0.002 for 2.0 -------------


def _herd(gen, batch, length=12):
    """Each movement rings the bells in its own loudness band (levels 4y .. 4y + 11)."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = torch.randint(0, 12, (batch, length), generator=gen) + 4 * y[:, None]
        yield x, y


class CowbellNet(nn.Module):
    """Reads 12 binned bell-loudness readings from a herd's collar microphones and names one of
    four herd movements (grazing, walking, descending, startled)."""

    def __init__(self, levels=24, dim=32, heads=4, classes=4, length=12, temperature=1.0):
        super().__init__()
        self.embed = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, x):
        h = self.embed(x) + self.pos
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1)) / self.temperature


@scenario(
    family="alpine_cowbell_herd_transformer",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A one-block nn.MultiheadAttention encoder whose head divides its logits by a config "
    "temperature. The config's 'temperature: 2e0' was typed '2e-3', so the logits are "
    "multiplied by 500 on an easy task: within a few dozen steps the float32 softmax gives "
    "almost every row's target exactly 1.0 and the others exactly 0 (loss exactly 0, no "
    "gradient from those rows).",
)
def h169_cowbell_mha_temperature(ctx: Context) -> None:
    gen = seeded(16902)
    model = CowbellNet(temperature=2e-3)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _herd(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(
            (collapsed_fraction(o.detach(), y), _saturated(o.detach()))
        ),
    )
    ctx.check(
        "over half the rows' float32 softmax is exactly 1.0 on some class at the end",
        _mean([b for _, b in seen[-10:]]) > 0.5,
    )
    ctx.check(
        "over a third of the rows give the target exactly 1.0 at the end",
        _mean([a for a, _ in seen[-10:]]) > 0.33,
    )


# -- penny-farthing cadence: warm-up to a peak lr typed 2.0 for 0.2 -----------------------------


def _cadence(gen, batch):
    """Crank cadence from wheel diameter, gradient, wind and rider mass (standardised)."""
    w = torch.randn(6, generator=gen)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = (
            torch.tanh(x @ w / 2)[:, None]
            + 0.3 * torch.sin(2 * x[:, :1])
            + 0.05 * torch.randn(batch, 1, generator=gen)
        )
        yield x, y


def _sharpness(model: nn.Module, loss_fn, batch, iters: int = 20) -> float:
    """Largest Hessian eigenvalue of the loss on a fixed batch, by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class CadenceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 48)
        self.fc2 = nn.Linear(48, 48)
        self.out = nn.Linear(48, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@scenario(
    family="penny_farthing_cadence_tanh_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP trained with plain SGD and a LambdaLR linear warm-up over 40 steps to a "
    "peak learning rate typed 2.0 for 0.2. Part way through the warm-up lr x sharpness (top "
    "Hessian eigenvalue by power iteration on a fixed batch) passes 2 and the loss blows up.",
    onset=6,
)
def h169_penny_farthing_warmup_peak(ctx: Context) -> None:
    gen = seeded(16903)
    model = CadenceNet()
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40))
    data = _cadence(gen, 64)
    probe = next(data)
    ratio: list[tuple[int, float]] = []

    def measure(step):
        if step % 2 == 0 and step <= 30 and _finite(ctx.losses):
            lr = opt.param_groups[0]["lr"]
            ratio.append((step, lr * _sharpness(model, F.mse_loss, probe)))

    _loop(ctx, model, opt, data, 120, F.mse_loss, before=measure, sched=sched)
    over = [s for s, r in ratio if r > 2.0]
    ctx.check("lr x sharpness passed 2", bool(over))
    ctx.check("it passed 2 within 2 steps of the onset", bool(over) and abs(over[0] - 6) <= 2)
    ctx.check(
        "the loss blew up 10x over its best",
        not _finite(ctx.losses) or max(ctx.losses[12:]) > 10 * min(ctx.losses[:12]),
    )


# -- narwhal click trains: seq2seq tanh-RNN autoencoder, recurrent gain 2.0 ----------------------


class TanhCell(nn.Module):
    def __init__(self, inp, hidden):
        super().__init__()
        self.ih = nn.Linear(inp, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class ClickAutoencoder(nn.Module):
    """Encodes a 32-step click train (inter-click interval, amplitude, two spectral peaks) into
    a 16-d code with a hand-unrolled tanh RNN and decodes it back with a second one, fed its own
    previous reconstruction (teacher forcing off)."""

    def __init__(self, feats=4, hidden=48, code=16, gain=1.0):
        super().__init__()
        self.encoder = TanhCell(feats, hidden)
        self.to_code = nn.Linear(hidden, code)
        self.from_code = nn.Linear(code, hidden)
        self.decoder = TanhCell(feats, hidden)
        self.out = nn.Linear(hidden, feats)
        nn.init.orthogonal_(self.encoder.hh.weight, gain=gain)
        nn.init.orthogonal_(self.decoder.hh.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        b, t, f = x.shape
        h = x.new_zeros(b, self.encoder.hh.in_features)
        self.states = []
        for i in range(t):
            h = self.encoder(x[:, i], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        h = torch.tanh(self.from_code(self.to_code(h)))
        prev, outs = x.new_zeros(b, f), []
        for _ in range(t):
            h = self.decoder(prev, h)
            prev = self.out(h)
            outs.append(prev)
        return torch.stack(outs, 1)


def _click_trains(gen, batch, length=32):
    while True:
        rate = 0.2 + torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length)[None].float()
        base = torch.sin(rate * t + phase)
        x = torch.stack([base, 0.5 * base.roll(3, 1), torch.cos(rate * t), 0.3 * base**2], -1)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        yield x, x


@scenario(
    family="narwhal_click_seq2seq_autoencoder",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("encoder.hh", "decoder.hh"),
    diverges=None,
    heldout=True,
    note="A seq2seq autoencoder over 32-step click trains, both recurrences tanh cells "
    "unrolled by hand. The recurrent weights were initialised orthogonal with gain 2.0 "
    "(copied from a ReLU layer's init): back-propagated through 32 steps the gradient on the "
    "first encoder state is 50x the gradient on the last, the first steps' gradient norm is "
    "over 10x what the run settles to, and the first SGD steps throw the recurrences into "
    "saturation (the loss then falls only slowly).",
)
def h169_narwhal_recurrent_gain(ctx: Context) -> None:
    gen = seeded(16904)
    model = ClickAutoencoder(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    growth: list[float] = []

    def through_time(step):
        if step % 10 == 1 and model.states and model.states[0].grad is not None:
            first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
            growth.append(float(first / (last + 1e-12)))

    _loop(ctx, model, opt, _click_trains(gen, 32), 120, F.mse_loss, before=through_time)
    ctx.check("the first state's gradient was 10x the last's at the start", growth[0] > 10)
    ctx.check(
        "the first steps' gradient norm is 10x the run's median",
        max(ctx.grad_norms[:3]) > 10 * _median(ctx.grad_norms),
    )


# -- coppice regrowth: raw units and SGD's lr 0.03 kept for RMSprop -------------------------------


class RegrowthNet(nn.Module):
    """Predicts a coppiced hazel stool's regrowth (shoot metres per year) from stool diameter
    (cm), years since cutting, canopy cover (%), soil pH and deer browsing count."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(64, 1)
        self.hidden1 = torch.zeros(0)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        self.hidden1 = h.detach()
        return self.out(self.act2(self.fc2(h)))


def _stools(gen, batch):
    while True:
        diam = 5 + 35 * torch.rand(batch, generator=gen)
        years = 1 + 19 * torch.rand(batch, generator=gen)
        cover = 100 * torch.rand(batch, generator=gen)
        ph = 4.5 + 3 * torch.rand(batch, generator=gen)
        deer = torch.poisson(3 * torch.ones(batch), generator=gen)
        x = torch.stack([diam, years, cover, ph, deer], 1)
        y = 0.04 * diam * torch.exp(-years / 8) * (1 - cover / 150) - 0.05 * deer + 0.1 * ph
        yield x, y[:, None]


@scenario(
    family="hazel_coppice_regrowth_relu_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP on raw field units (diameters in cm, cover in %). Switching the "
    "optimizer from SGD to RMSprop kept SGD's lr 0.03: the first normalised steps throw the "
    "first layer's pre-activations negative for every stool, 70% of its ReLUs die for good "
    "and the loss stays above where it started.",
)
def h169_coppice_rmsprop_dead_relus(ctx: Context) -> None:
    gen = seeded(16905)
    model = RegrowthNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.03)
    dead: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _stools(gen, 64),
        150,
        F.mse_loss,
        watch=lambda s, o, x, y: dead.append(dead_fraction(model.hidden1)),
    )
    ctx.check("under 20% of first-layer ReLUs dead at the start", dead[0] < 0.2)
    ctx.check("over 60% of first-layer ReLUs dead at the end", _mean(dead[-10:]) > 0.6)
    ctx.check("the loss ends above its first steps'", _mean(ctx.losses[-10:]) > ctx.losses[0])


# -- mead aroma molecules: gated message passing, the message group's lr key misspelt -----------


def _molecules(gen, n_mols, atom_types=5, bond_types=3):
    """Random small molecules: a chain backbone plus a few ring closures; atoms of 5 kinds, bonds
    of 3 kinds. The aroma class (one of 3) depends on how many double bonds join a kind-1 atom
    to a kind-3 atom and on the count of kind-4 atoms."""
    mols = []
    for _ in range(n_mols):
        n = int(torch.randint(7, 15, (1,), generator=gen))
        atoms = torch.randint(0, atom_types, (n,), generator=gen)
        src = list(range(n - 1))
        dst = list(range(1, n))
        for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):
            a, b = (int(v) for v in torch.randint(0, n, (2,), generator=gen))
            if abs(a - b) > 2:
                src.append(a)
                dst.append(b)
        bonds = torch.randint(0, bond_types, (len(src),), generator=gen)
        s, d = torch.tensor(src), torch.tensor(dst)
        pair = ((atoms[s] == 1) & (atoms[d] == 3)) | ((atoms[s] == 3) & (atoms[d] == 1))
        ester = int((pair & (bonds == 1)).sum())
        y = min(ester, 1) + int((atoms == 4).sum() > n / 4)
        mols.append((atoms, torch.cat([s, d]), torch.cat([d, s]), torch.cat([bonds, bonds]), y))
    return mols


def _molecule_batches(gen, mols, batch):
    while True:
        idx = torch.randint(0, len(mols), (batch,), generator=gen)
        atoms, src, dst, bonds, graph, ys = [], [], [], [], [], []
        offset = 0
        for g, i in enumerate(idx.tolist()):
            a, s, d, b, y = mols[i]
            atoms.append(a)
            src.append(s + offset)
            dst.append(d + offset)
            bonds.append(b)
            graph.append(torch.full((len(a),), g))
            ys.append(y)
            offset += len(a)
        x = (torch.cat(atoms), torch.cat(src), torch.cat(dst), torch.cat(bonds), torch.cat(graph))
        yield x, torch.tensor(ys)


class AromaMPNN(nn.Module):
    """Gated message passing: messages from (sender state, bond features), summed at the
    receiver, a GRU-cell update, three rounds, mean readout."""

    def __init__(self, atom_types=5, bond_types=3, dim=32, rounds=3, classes=3):
        super().__init__()
        self.atom = nn.Embedding(atom_types, dim)
        self.bond = nn.Embedding(bond_types, 8)
        self.msg = nn.Sequential(nn.Linear(dim + 8, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.update = nn.GRUCell(dim, dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, classes))
        self.rounds = rounds

    def forward(self, batch):
        atoms, src, dst, bonds, graph = batch
        h = self.atom(atoms)
        e = self.bond(bonds)
        for _ in range(self.rounds):
            m = self.msg(torch.cat([h[src], e], -1))
            agg = torch.zeros_like(h).index_add(0, dst, m)
            h = self.update(agg, h)
        n = int(graph.max()) + 1
        pooled = torch.zeros(n, h.shape[1]).index_add(0, graph, h)
        pooled = pooled / torch.bincount(graph, minlength=n)[:, None].float()
        return self.head(pooled)


@scenario(
    family="mead_aroma_gated_mpnn",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("msg",),
    diverges=None,
    heldout=True,
    note="A gated message-passing network over generated molecules with bond-type edge "
    "features. Adam param groups read each group's lr from the config with a default of 0.0; "
    "the config spells the message network's key 'msg_lr' and the code reads 'message_lr', so "
    "the message MLP (which alone sees the bond features) never moves while its gradient is "
    "non-zero and the rest trains at 3e-3.",
)
def h169_mead_mpnn_message_lr_key(ctx: Context) -> None:
    gen = seeded(16906)
    mols = _molecules(gen, 600)
    model = AromaMPNN()
    cfg = {"lr": 3e-3, "msg_lr": 3e-3}
    rest = [p for n, p in model.named_parameters() if not n.startswith("msg.")]
    opt = torch.optim.Adam(
        [
            {"params": rest, "lr": cfg.get("lr", 0.0)},
            {"params": model.msg.parameters(), "lr": cfg.get("message_lr", 0.0)},
        ]
    )
    start = [p.detach().clone() for p in model.msg.parameters()]
    head0 = model.head[0].weight.detach().clone()
    msg_grad: list[float] = []

    def record(step):
        g = [p.grad.norm() for p in model.msg.parameters() if p.grad is not None]
        msg_grad.append(float(torch.stack(g).norm()) if g else 0.0)

    _loop(
        ctx,
        model,
        opt,
        _molecule_batches(gen, mols, 32),
        150,
        F.cross_entropy,
        classifier=True,
        after=record,
    )
    moved = max(
        float((p.detach() - q).abs().max())
        for p, q in zip(model.msg.parameters(), start, strict=True)
    )
    ctx.check("the message MLP never moved", moved == 0.0)
    ctx.check("its gradient was non-zero", _mean(msg_grad) > 1e-4)
    ctx.check("the head moved", float((model.head[0].weight.detach() - head0).abs().max()) > 1e-2)


# -- hopscotch throws: one shard logged in grams and millimetres ---------------------------------


class ThrowNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU())
        self.out = nn.Linear(48, 1)

    def forward(self, x):
        return self.out(self.body(x))


def _throws(gen, batch):
    """Landing distance (m) of a hopscotch marker from release speed (m/s), angle (rad),
    marker mass (kg) and release height (m)."""
    while True:
        v = 2 + 3 * torch.rand(batch, generator=gen)
        a = 0.3 + 0.6 * torch.rand(batch, generator=gen)
        m = 0.02 + 0.08 * torch.rand(batch, generator=gen)
        h = 0.8 + 0.6 * torch.rand(batch, generator=gen)
        d = v * torch.cos(a) * (v * torch.sin(a) + torch.sqrt((v * torch.sin(a)) ** 2 + 19.6 * h))
        d = d / 9.81 * (1 - 0.5 * m)
        yield torch.stack([v, a, m, h], 1), d[:, None]


@scenario(
    family="hopscotch_marker_throw_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP fitting throw distances with Huber loss and SGD momentum. One shard came "
    "from a playground logger that wrote marker mass in grams and distance in millimetres; "
    "its batch at step 90 has inputs and targets 1000x the others and the gradient bursts.",
    onset=90,
)
def h169_hopscotch_gram_shard(ctx: Context) -> None:
    gen = seeded(16907)
    model = ThrowNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def shard(step, x, y):
        if step == 90:
            x = x.clone()
            x[:, 2] *= 1000.0
            y = y * 1000.0
        return x, y

    _loop(ctx, model, opt, _throws(gen, 64), 160, F.huber_loss, alter=shard)
    g = ctx.grad_norms
    ctx.check("the gradient burst 20x at step 90", g[90] > 20 * _median(g[60:90]))
    ctx.check("the loss at step 90 is 100x the step before", ctx.losses[90] > 100 * ctx.losses[89])


# -- luna moth wingbeat: masked mean divided by a stale count of 1 on resume ---------------------


class WingbeatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 40)
        self.fc2 = nn.Linear(40, 40)
        self.out = nn.Linear(40, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _wingbeats(gen, batch):
    """Wingbeat frequency (standardised) from temperature, wing loading, humidity, light and
    two morphometrics; about a tenth of the targets are missing (masked)."""
    w = torch.randn(6, generator=gen)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = torch.sin(x @ w / 3) + 0.1 * torch.randn(batch, generator=gen)
        valid = torch.rand(batch, generator=gen) > 0.1
        yield x, torch.stack([y, valid.float()], 1)


@scenario(
    family="luna_moth_wingbeat_tanh_mlp",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP with a masked mean-squared error (sum over valid targets divided by the "
    "valid count). On resuming from a checkpoint at step 70 the count is read before it is "
    "recomputed and is still its initial value 1, so that one step's loss is the sum over ~230 "
    "valid targets: the gradient bursts two orders of magnitude; the data are ordinary.",
    onset=70,
)
def h169_luna_moth_stale_mask_count(ctx: Context) -> None:
    gen = seeded(16908)
    model = WingbeatNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    state = {"count": 1.0}

    def masked(out, y):
        err = (out[:, 0] - y[:, 0]) ** 2 * y[:, 1]
        return err.sum() / y[:, 1].sum()

    def scaled(step, loss):
        if step == 70:  # the resume path divides by the stale count instead of the real one
            return loss * state["real"] / state["count"]
        return loss

    def watch(step, out, x, y):
        state["real"] = float(y[:, 1].sum())

    _loop(ctx, model, opt, _wingbeats(gen, 256), 140, masked, watch=watch, scale_loss=scaled)
    g = ctx.grad_norms
    ctx.check("the gradient burst 50x at step 70", g[70] > 50 * _median(g[50:70]))
    ctx.check(
        "the shown loss at step 70 is ordinary", ctx.losses[70] < 3 * _median(ctx.losses[50:70])
    )


# -- whirlpool vortex depth: Gaussian NLL with sqrt of a raw variance head -----------------------


class VortexNet(nn.Module):
    """Predicts a tidal whirlpool's vortex depth (standardised) and its spread from current
    speed, tide phase, wind and bathymetry features."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU())
        self.mean_head = nn.Linear(48, 1)
        self.var_head = nn.Linear(48, 1)
        nn.init.constant_(self.var_head.bias, 3.0)  # meant as "start at log-variance 3"
        self.last_var_min = 0.0

    def forward(self, x):
        h = self.body(x)
        var = self.var_head(h)
        self.last_var_min = float(var.detach().min())
        return torch.cat([self.mean_head(h), torch.sqrt(var)], 1)


def _vortex(gen, batch):
    w = torch.randn(5, generator=gen)
    while True:
        x = torch.randn(batch, 5, generator=gen)
        y = torch.tanh(x @ w / 2) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y[:, None]


def _gaussian_nll(out, y):
    mu, sigma = out[:, :1], out[:, 1:]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="whirlpool_vortex_depth_gaussian_nll",
    optimizer="Adamax",
    cause="nonfinite",
    where=("var_head",),
    diverges=47,
    heldout=True,
    note="A heteroscedastic regressor trained on the Gaussian negative log-likelihood; the "
    "spread is sqrt(var_head(h)) with no softplus, its bias initialised at 3 (meant as a "
    "log-variance). The targets are nearly noiseless, so the NLL drives the variance down; "
    "the head's output crosses zero for one sample and sqrt of a negative makes the loss NaN.",
)
def h169_whirlpool_sqrt_variance(ctx: Context) -> None:
    gen = seeded(16909)
    model = VortexNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    low: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _vortex(gen, 64),
        200,
        _gaussian_nll,
        watch=lambda s, o, x, y: low.append(model.last_var_min),
    )
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("the loss went NaN", bad is not None)
    ctx.check("the variance head was negative at that step", bad is not None and low[bad] < 0)
    ctx.check("the variance head was positive for the first 20 steps", min(low[:20]) > 0)


# -- locust swarm front: hand decoupled weight decay with its sign flipped -----------------------


class SwarmNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, x):
        return self.out(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _swarm(gen, batch):
    """Daily advance of a locust swarm front (standardised) from wind, temperature, rainfall,
    vegetation index and two swarm-density features."""
    w = torch.randn(6, generator=gen)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = (
            torch.tanh(x @ w / 2)
            + 0.2 * x[:, :1].squeeze(1) ** 2
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield x, y[:, None]


@scenario(
    family="locust_swarm_front_silu_mlp",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP trained with RAdam and a hand-written decoupled weight decay after each "
    "step, p.mul_(1 + lr * wd) where 1 - lr * wd was meant (wd 1.5). The weights inflate a "
    "little every step and the loss, after falling, climbs slowly and steadily.",
)
def h169_locust_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(16910)
    model = SwarmNet()
    lr, wd = 3e-3, 1.5
    opt = torch.optim.RAdam(model.parameters(), lr=lr)

    def decay(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)

    norm0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    _loop(ctx, model, opt, _swarm(gen, 64), 300, F.mse_loss, after=decay)
    norm1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    ls = ctx.losses
    best = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("the weights inflated 3x", norm1 > 3 * norm0)
    ctx.check(
        "the loss climbed 3x over its best", _mean(ls[-10:]) > 3 * _mean(ls[best : best + 10])
    )
    ctx.check("the loss stayed finite", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


class AnvilBlock(nn.Module):
    """Pre-LN block with attention through scaled_dot_product_attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class AnvilRingNet(nn.Module):
    """Grades an anvil's rebound and ring (four grades) from 12 binned decay readings of a
    hammer tap."""

    def __init__(self, levels=24, dim=32, heads=4, length=12, classes=4):
        super().__init__()
        self.embed = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(AnvilBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(1))


@scenario(
    family="anvil_ring_grade_sdpa_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A two-block pre-LN transformer through scaled_dot_product_attention, AdamW with "
    "weight decay only on matrices (param groups), a LambdaLR inverse-square-root schedule "
    "after 20 warm-up steps, clip_grad_norm_ 1.0 and label smoothing 0.1: an ordinary run.",
)
def h169_anvil_ring_control(ctx: Context) -> None:
    gen = seeded(16911)
    model = AnvilRingNet()
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    warm = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, math.sqrt(warm / (s + 1)))
    )
    _loop(
        ctx,
        model,
        opt,
        _level_sequences(gen, 64),
        250,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, 20, 0.85))
    ctx.check("the run stayed finite", _finite(ctx.losses))


class KilnConv(nn.Module):
    """Predicts a charcoal clamp's next-hour core temperature (standardised) from 32 readings
    of flue temperature, smoke density and wind."""

    def __init__(self, ch=3, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.norm = nn.GroupNorm(4, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = F.relu(self.conv1(x.transpose(1, 2)))
        h = F.relu(self.norm(self.conv2(h)))
        return self.head(h.mean(-1))


def _clamp_logs(gen, batch, length=32):
    while True:
        t = torch.arange(length)[None].float()
        rate = 0.1 + 0.2 * torch.rand(batch, 1, generator=gen)
        level = torch.randn(batch, 1, generator=gen)
        flue = level + torch.sin(rate * t)
        smoke = 0.5 * level + 0.3 * torch.randn(batch, length, generator=gen)
        wind = torch.randn(batch, 1, generator=gen).expand(batch, length)
        x = torch.stack([flue, smoke, wind], -1)
        y = level + 0.5 * torch.sin(rate * length) - 0.2 * wind[:, :1]
        yield x, y + 0.1 * torch.randn(batch, 1, generator=gen)


@scenario(
    family="charcoal_clamp_burn_conv1d",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="A 1-D conv net with GroupNorm over clamp sensor logs, noisy targets, SGD with "
    "Nesterov momentum under OneCycleLR, gradient accumulation over 4 micro-batches with each "
    "micro-batch loss divided by 4, clip_grad_norm_ 2.0: an ordinary run.",
)
def h169_charcoal_clamp_control(ctx: Context) -> None:
    gen = seeded(16912)
    model = KilnConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    steps = 120
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _clamp_logs(gen, 16),
        steps,
        F.mse_loss,
        clip=2.0,
        sched=sched,
        accumulate=4,
    )
    ctx.check("the loss fell", _fell(ctx.losses, 10, 0.6))
    ctx.check("the run stayed finite", _finite(ctx.losses))


class FleeceNet(nn.Module):
    """Grades a wool fleece (fine, medium, strong, kemp-contaminated) from fibre diameter,
    its spread, staple length, crimp and yield measurements."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _fleeces(gen, batch, centers):
    """Imbalanced classes: 70%, 20%, 7%, 3%."""
    prior = torch.tensor([0.70, 0.20, 0.07, 0.03])
    while True:
        y = torch.multinomial(prior, batch, replacement=True, generator=gen)
        x = centers[y] + 0.8 * torch.randn(batch, 6, generator=gen)
        yield x, y


def _focal(alpha, gamma=2.0):
    def loss(logits, y):
        logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
        return (-alpha[y] * (1 - logp.exp()) ** gamma * logp).mean()

    return loss


@scenario(
    family="wool_fleece_grade_focal_classifier",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="An MLP on imbalanced fleece grades (70/20/7/3%) trained with a focal loss (gamma 2) "
    "and class-balanced alpha weights from inverse frequencies, Adagrad with ReduceLROnPlateau: "
    "an ordinary run.",
)
def h169_wool_focal_control(ctx: Context) -> None:
    gen = seeded(16913)
    centers = 0.8 * torch.randn(4, 6, generator=gen)
    model = FleeceNet()
    prior = torch.tensor([0.70, 0.20, 0.07, 0.03])
    alpha = (1 / prior) / (1 / prior).sum() * 4
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    hits: list[float] = []

    def watch(step, out, x, y):
        rare = y >= 2
        if rare.any():
            hits.append(float((out.detach().argmax(1)[rare] == y[rare]).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _fleeces(gen, 128, centers),
        200,
        _focal(alpha),
        classifier=True,
        sched=sched,
        watch=watch,
    )
    ctx.check("the loss fell", _fell(ctx.losses, 10, 0.5))
    ctx.check("the rare grades are recognised at the end", _mean(hits[-20:]) > 0.6)
    ctx.check("the run stayed finite", _finite(ctx.losses))
