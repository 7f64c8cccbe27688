"""Held-out set 488 (``h488_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a khoomei drone-overtone attention tagger trained at an AdamW lr typed 5e-2 for 5e-4
(q.k/sqrt(d) logits grow), a camogie pitch-roll regressor hit once by a weight-noise
augmentation whose std was typed 0.1 for 0.001 on resume (a loss spike it recovers from,
RMSprop), a fleece-skirting grade classifier fed one shard in raw micron counts (SGD, clipped), a
carillon change-lookup memory-augmented network whose write-head param group lr is typed 1e-10
(Adagrad), a lichen spore-count Poisson net whose rate is relu(out) so log(rate) hits log 0 (NaN,
NAdam), a tide-pool surge hand-written ReLU Elman RNN whose recurrent weights are initialised
orthogonal with gain 1.35 (exploding gradients, SGD momentum), a ropewalk yarn-twist Huber
regressor whose auxiliary-loss weight table has one entry typed 500 for 0.5 (one gradient burst, SGD Nesterov),
an ice-auger flight-wear regressor whose target jitter is added in place to the cached targets
(a slow climb, RAdam), a sumo shikiri classifier whose focal-loss prior bias init is applied to
every Linear layer (dead ReLUs, Adam) and a morse-fist operator classifier whose temperature is
multiplied instead of divided (softmax collapse, Adam).

Controls: a falconry jess-knot key-value lookup net with a small init (a long plateau, then a
sudden drop, SGD); a yurt lattice-wall sag GELU regressor (AdamW, warm-up + cosine, clipping);
an abseil anchor-load Conv1d classifier (Adamax, OneCycleLR, label smoothing, two param groups,
gradient accumulation 2).
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


def _first_nonfinite(xs: list[float]) -> int:
    for i, v in enumerate(xs):
        if not math.isfinite(v):
            return i
    return -1


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
    """fc1 -> act -> fc2 -> act -> head."""

    def __init__(self, d_in, hidden, d_out, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, d_out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- faults ---------------------------------------------------------------------------------------


class _OvertoneAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.last_max_logit = 0.0

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_max_logit = float(logits.detach().abs().max())
        return self.out(torch.softmax(logits, -1) @ v)


class _KhoomeiTagger(nn.Module):
    """Tags each frame of a throat-singing recording: does its overtone recur elsewhere?"""

    def __init__(self, bins=12, dim=32, frames=16):
        super().__init__()
        self.embed = nn.Linear(bins, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(frames, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = _OvertoneAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.embed(x) + self.pos
        h = h + self.attn(self.norm(h))
        h = h + self.mlp(h)
        return self.head(h)


def _overtone_batches(gen, batch=32, frames=16, bins=12):
    while True:
        tones = torch.randint(0, bins, (batch, frames), generator=gen)
        x = F.one_hot(tones, bins).float() + 0.1 * torch.randn(batch, frames, bins, generator=gen)
        same = (tones[:, :, None] == tones[:, None, :]).sum(-1) > 1
        yield x, same.long()


def _tag_loss(out, y):
    return F.cross_entropy(out.reshape(-1, 2), y.reshape(-1))


@scenario(
    "khoomei_drone_overtone_attention_tagger",
    "AdamW",
    "attention_logit_growth",
    where=("attn",),
    heldout=True,
    note="AdamW lr typed 5e-2 for 5e-4 on a hand-written attention tagger: the q and k "
    "projections grow and max |q.k/sqrt(d)| climbs far past its start",
)
def h488_khoomei_overtone_lr_typo(ctx):
    def run(lr, attach):
        gen = seeded(48801)
        model = _KhoomeiTagger()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        seen = []
        losses, _ = _train(
            ctx,
            model,
            opt,
            _overtone_batches(gen),
            200,
            _tag_loss,
            after=lambda s, loss: seen.append(model.attn.last_max_logit),
            attach=attach,
        )
        return seen, losses

    ref, _ = run(5e-4, attach=False)
    seen, losses = run(5e-2, attach=True)
    ctx.check("max |q.k/sqrt(d)| over 20x its start", max(seen) > 20 * seen[0])
    ctx.check("max |q.k/sqrt(d)| over 30", max(seen) > 30)
    ctx.check("under 10 at the intended lr", max(ref) < 10)


@scenario(
    "hurling_camogie_pitch_roll_relu_regressor",
    "RMSprop",
    "loss_spike",
    heldout=True,
    onset=150,
    note="on resume at step 150 a weight-noise augmentation with std typed 0.1 for 0.001 is "
    "applied once to every weight: the loss jumps and the run recovers; no data or gradient bug",
)
def h488_camogie_weight_noise_resume(ctx):
    gen = seeded(48802)
    model = _Net(10, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def before(step):
        if step == 150:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 48802), 300, F.mse_loss, before=before
    )
    pre = _median(losses[120:150])
    ctx.check("loss at 150 over 3x the median before", losses[150] > 3 * pre)
    ctx.check("recovered within 1.5x of before", _mean(losses[-10:]) < 1.5 * pre)
    ctx.check("finite", _finite(losses))


@scenario(
    "fleece_skirting_table_grade_relu_classifier",
    "SGD",
    "data_outlier",
    heldout=True,
    onset=100,
    note="one shard of fleece measurements arrives in raw micron counts instead of standardised "
    "units at step 100 (inputs ~300x): the loss and gradient jump, clipping keeps it from "
    "blowing up and the run recovers",
)
def h488_fleece_raw_micron_shard(ctx):
    gen = seeded(48803)
    model = _Net(12, 64, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scale = []

    def alter(step, x, y):
        if step == 100:
            x = x * 300.0 + 20.0
        scale.append(float(x.abs().mean()))
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 48803),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=2.0,
    )
    ctx.check("inputs over 100x at 100", scale[100] > 100 * _median(scale[:100]))
    ctx.check("loss over 10x at 100", losses[100] > 10 * _median(losses[80:100]))
    ctx.check("gradient over 20x at 100", norms[100] > 20 * _median(norms[80:100]))
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 2 * _median(losses[80:100]))


class _CarillonMemory(nn.Module):
    """A memory-augmented network: a controller, a write head and a read head over a memory
    matrix, content-addressed by cosine similarity sharpened by a learnt, clamped strength."""

    def __init__(self, d_in=16, slots=12, width=20, hidden=48, d_out=8):
        super().__init__()
        self.slots, self.width = slots, width
        self.controller = nn.Linear(d_in, hidden)
        self.write_head = nn.Linear(hidden, 3 * width + 1)  # key, erase, add, strength
        self.read_head = nn.Linear(hidden, width + 1)  # key, strength
        self.head = nn.Linear(width + hidden, d_out)
        self.register_buffer("memory0", 0.1 * torch.randn(slots, width))

    @staticmethod
    def _address(key, strength, memory):
        sim = F.cosine_similarity(key[:, None, :], memory, dim=-1, eps=1e-6)
        beta = F.softplus(strength).clamp(1.0, 30.0)
        return torch.softmax(beta * sim, dim=-1)

    def forward(self, x):
        # x: (batch, items + 1, d_in); the last item is the query
        b, t, _ = x.shape
        memory = self.memory0.expand(b, -1, -1)
        for i in range(t - 1):
            h = torch.tanh(self.controller(x[:, i]))
            w = self.write_head(h)
            key, erase, add = (
                w[:, : self.width],
                w[:, self.width : 2 * self.width],
                w[:, 2 * self.width : 3 * self.width],
            )
            weights = self._address(key, w[:, -1:], memory)
            memory = memory * (1 - weights[:, :, None] * torch.sigmoid(erase)[:, None, :])
            memory = memory + weights[:, :, None] * torch.tanh(add)[:, None, :]
        h = torch.tanh(self.controller(x[:, -1]))
        r = self.read_head(h)
        weights = self._address(r[:, : self.width], r[:, -1:], memory)
        read = (weights[:, :, None] * memory).sum(1)
        return self.head(torch.cat([read, h], -1))


def _bell_lookup(gen, batch=32, items=5, keys=8, values=8):
    """Key-value pairs of bells and their changes, then a key: recall its value."""
    while True:
        k = torch.stack([torch.randperm(keys, generator=gen)[:items] for _ in range(batch)])
        v = torch.randint(0, values, (batch, items), generator=gen)
        pick = torch.randint(0, items, (batch,), generator=gen)
        pairs = torch.cat([F.one_hot(k, keys), F.one_hot(v, values)], -1).float()
        query = torch.cat(
            [F.one_hot(k[torch.arange(batch), pick], keys), torch.zeros(batch, values)], -1
        )
        yield torch.cat([pairs, query[:, None]], 1), v[torch.arange(batch), pick]


@scenario(
    "carillon_change_lookup_memory_net",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("write_head",),
    heldout=True,
    note="the write head's param group lr is typed 1e-10 for 1e-1: it never moves while the "
    "controller, read head and output head train at 1e-1 (Adagrad)",
)
def h488_carillon_write_head_frozen(ctx):
    gen = seeded(48804)
    model = _CarillonMemory()
    others = [p for n, p in model.named_parameters() if not n.startswith("write_head")]
    opt = torch.optim.Adagrad(
        [{"params": others}, {"params": model.write_head.parameters(), "lr": 1e-10}], lr=1e-1
    )
    w0 = model.write_head.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _bell_lookup(gen), 150, F.cross_entropy, classifier=True)
    moved_w = float((model.write_head.weight.detach() - w0).norm() / w0.norm())
    moved_h = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("write_head moved under 1e-6 of its norm", moved_w < 1e-6)
    ctx.check("head moved over 5% of its norm", moved_h > 0.05)
    ctx.check("finite", _finite(losses))


LICHEN_NAN = 25


@scenario(
    "lichen_thallus_spore_count_poisson_log_net",
    "NAdam",
    "nonfinite",
    where=("head",),
    diverges=LICHEN_NAN,
    heldout=True,
    note="the Poisson rate is relu(head(h)) instead of softplus/exp: once a prediction reaches "
    "exactly 0 for a plate with spores, y*log(rate) is log 0 and the loss is NaN/Inf",
)
def h488_lichen_relu_rate_log0(ctx):
    gen = seeded(48805)
    model = _Net(8, 32, 1, act=nn.SiLU)
    with torch.no_grad():
        model.head.bias.fill_(2.5)

    def batches():
        g = torch.Generator().manual_seed(48805)
        w = torch.randn(8, generator=g)
        while True:
            x = torch.randn(64, 8, generator=gen)
            rate = torch.exp(0.9 * x @ w / math.sqrt(8) - 0.5)
            yield x, torch.poisson(rate, generator=gen)

    def poisson_nll(out, y):
        rate = F.relu(out)
        return (rate - y * torch.log(rate)).mean()

    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    losses, _ = _train(ctx, model, opt, batches(), 200, poisson_nll)
    first = _first_nonfinite(losses)
    ctx.check(f"loss non-finite first at step {LICHEN_NAN} (+-2)", abs(first - LICHEN_NAN) <= 2)
    ctx.check("finite before", first > 0 and _finite(losses[:first]))


class _SurgeElman(nn.Module):
    """A hand-written ReLU Elman RNN over tide-pool surge gauge readings."""

    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        self.last_h = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.w_hh.in_features)
        norms = []
        for t in range(x.shape[1]):
            h = F.relu(self.w_ih(x[:, t]) + self.w_hh(h))
            norms.append(float(h.detach().norm()))
        self.last_h = norms
        return self.head(h).squeeze(-1)


@scenario(
    "tide_pool_surge_hand_elman_rnn",
    "SGD momentum",
    "exploding_gradients",
    where=("w_hh",),
    diverges="auto",
    heldout=True,
    note="the recurrent weights are initialised orthogonal with gain 1.35 (typed for 1.0) in a "
    "ReLU Elman RNN over 30 steps: states and gradients grow through time and the loss blows up",
)
def h488_tide_pool_recurrent_gain(ctx):
    gen = seeded(48806)
    model = _SurgeElman()
    nn.init.orthogonal_(model.w_hh.weight, gain=1.35)

    def batches():
        while True:
            x = torch.randn(32, 30, 4, generator=gen)
            yield x, x[:, -5:, 0].mean(1)

    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    grads = {}

    def after(step, loss):
        if step == 0:
            grads["h"] = model.last_h

    losses, norms = _train(ctx, model, opt, batches(), 150, F.mse_loss, after=after)
    h = grads["h"]
    ctx.check(
        "gradient norm over 100x its early median",
        max(v if math.isfinite(v) else 1e30 for v in norms) > 100 * _median(norms[5:15]),
    )
    ctx.check("hidden state grows over 20x through time", h[-1] > 20 * h[0])
    ctx.check(
        "the loss blows up (over 1e4x its start or non-finite)",
        (not _finite(losses)) or max(losses) > 1e4 * losses[0],
    )


AUX_WEIGHTS = {s: 0.5 for s in range(200)}
AUX_WEIGHTS[90] = 500.0  # the table typo


@scenario(
    "ropewalk_yarn_twist_aux_weight_huber_regressor",
    "SGD nesterov",
    "gradient_spike",
    heldout=True,
    onset=90,
    note="the auxiliary smoothness-loss weight table has the entry for step 90 typed 500 for 0.5: "
    "one gradient burst, clipped at 1.0, the run carries on",
)
def h488_ropewalk_aux_weight_typo(ctx):
    gen = seeded(48807)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        smooth = sum(p.pow(2).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss + AUX_WEIGHTS[step] * 1e-3 * smooth

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 48807),
        200,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient at 90 over 50x the median", norms[90] > 50 * _median(norms[60:90]))
    ctx.check(
        "finite and the run carries on",
        _finite(losses) and _mean(losses[-10:]) < 2 * _median(losses[60:90]),
    )


@scenario(
    "ice_auger_flight_wear_drifting_target_regressor",
    "RAdam",
    "loss_divergence",
    heldout=True,
    onset=0,
    note="the target jitter augmentation is added in place to a slice view of the cached target "
    "tensor, so the targets random-walk epoch after epoch: the loss climbs slowly, no NaN",
)
def h488_ice_auger_inplace_jitter(ctx):
    gen = seeded(48808)
    g = torch.Generator().manual_seed(48808)
    x_all = torch.randn(512, 6, generator=g)
    w = torch.randn(6, generator=g)
    y_all = torch.tanh(x_all @ w / math.sqrt(6))

    def batches():
        while True:
            for i in range(0, 512, 64):
                yb = y_all[i : i + 64]
                yb += 0.15 * torch.randn(64, generator=gen)  # meant to act on a copy
                yield x_all[i : i + 64], yb.clone()

    model = _Net(6, 48, 1, act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    losses, norms = _train(ctx, model, opt, batches(), 300, F.mse_loss)
    low = min(_mean(losses[i : i + 10]) for i in range(0, 100, 10))
    ctx.check("loss climbs over 3x its best", _mean(losses[-10:]) > 3 * low)
    ctx.check("finite", _finite(losses))
    ctx.check("no gradient burst (max under 10x median)", max(norms) < 10 * _median(norms))


@scenario(
    "sumo_shikiri_stare_prior_bias_relu_classifier",
    "Adam",
    "loss_of_plasticity",
    where=("fc1", "fc2"),
    heldout=True,
    note="a focal-loss prior bias init -log((1-pi)/pi) with pi=0.01 meant for the head is applied "
    "to every Linear: the hidden ReLUs start dead and never learn",
)
def h488_sumo_prior_bias_everywhere(ctx):
    gen = seeded(48809)
    model = _Net(10, 64, 4)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, -math.log((1 - 0.01) / 0.01))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 10, 4, 48809)
    losses, _ = _train(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    x, _ = next(data)
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
        dead2 = dead_fraction(model.features(x))
    ctx.check("over 90% of fc1's units dead", dead > 0.9)
    ctx.check("over 90% of fc2's units dead", dead2 > 0.9)
    ctx.check("loss stays near chance", _mean(losses[-10:]) > 0.8 * math.log(4))


class _MorseFist(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.net = _Net(14, 64, 6, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.net(x) * self.temperature  # meant: / self.temperature


@scenario(
    "morse_fist_operator_temperature_gelu_classifier",
    "Adam",
    "softmax_collapse",
    where=("net.head",),
    heldout=True,
    note="the logit temperature is multiplied instead of divided (T=0.01 written as x * 100): the "
    "softmax rounds the target probability to exactly 1.0 for most rows",
)
def h488_morse_temperature_multiplied(ctx):
    gen = seeded(48810)
    model = _MorseFist(100.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 14, 6, 48810, spread=0.8)
    losses, _ = _train(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)


# -- healthy controls -----------------------------------------------------------------------------


class _JessLookup(nn.Module):
    def __init__(self, keys=32, dim=64):
        super().__init__()
        self.key_embed = nn.Embedding(keys, dim)
        self.mix = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, keys, bias=False)
        for p in self.parameters():
            nn.init.normal_(p, std=0.015)

    def forward(self, k):
        return self.head(self.mix(self.key_embed(k)))


@scenario(
    "falconry_jess_knot_lookup_deep_linear_net",
    "SGD",
    "healthy",
    heldout=True,
    note="a key-value lookup (which knot for which jess) learnt by a small-init (std 0.015) "
    "embedding, mixing layer and head with plain SGD at lr 2: the loss sits at log(32) for about "
    "100 steps (a saddle), then drops suddenly",
)
def h488_falconry_lookup_phase_change(ctx):
    gen = seeded(48811)
    table = torch.randperm(32, generator=gen)

    def batches():
        while True:
            k = torch.randint(0, 32, (64,), generator=gen)
            yield k, table[k]

    model = _JessLookup()
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    losses, _ = _train(ctx, model, opt, batches(), 200, F.cross_entropy, classifier=True)
    top = 0.95 * math.log(32)
    ctx.check("plateau over 0.95 log(32) through step 90", min(losses[:90]) > top)
    last_high = max(i for i, v in enumerate(losses) if v > top)
    first_low = min(i for i, v in enumerate(losses) if v < 0.1 * math.log(32))
    ctx.check("drops from the plateau to 0.1 log(32) within 50 steps", first_low - last_high < 50)
    ctx.check("loss under 0.05 log(32) at the end", _mean(losses[-10:]) < 0.05 * math.log(32))
    ctx.check("finite", _finite(losses))


@scenario(
    "yurt_lattice_wall_sag_gelu_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="AdamW with linear warm-up then cosine decay, weight decay 0.01, clipping at 1.0",
)
def h488_yurt_warmup_cosine(ctx):
    gen = seeded(48812)
    model = _Net(9, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 250, 25
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, 48812, noise=0.1),
        steps,
        F.mse_loss,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell and finite", _fell(losses, ratio=0.5))


class _AnchorConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _anchor_traces(gen, batch=32, length=48, classes=4):
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 2.0 + 2.0 * y.float()
        load = torch.sin(2 * math.pi * freq[:, None] * t) + 0.6 * torch.randn(
            batch, length, generator=gen
        )
        strain = torch.cumsum(load, -1) / length + 0.3 * torch.randn(batch, length, generator=gen)
        yield torch.stack([load, strain], 1), y


@scenario(
    "abseil_anchor_load_conv1d_classifier",
    "Adamax",
    "healthy",
    heldout=True,
    note="Adamax with two param groups (head at half rate), OneCycleLR, label smoothing 0.1, "
    "gradient accumulation 2 over noisy load traces",
)
def h488_abseil_onecycle_accum(ctx):
    gen = seeded(48813)
    model = _AnchorConv()
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adamax(
        [{"params": body}, {"params": model.head.parameters(), "lr": 1e-3}], lr=2e-3
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[8e-3, 4e-3], total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _anchor_traces(gen),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell and finite", _fell(losses, ratio=0.6))
