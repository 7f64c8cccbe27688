"""Held-out set 332 (``h332_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a farrier gait-stride attention pointer whose logit-scale flag is
typed true (the CLIP-style scale trains in a scalar group at 1e-1, attention logits grow), a
stonemason ashlar-dressing ReLU regressor fed one shard logged in millimetres (one corrupted
batch), a thatching-spar ReLU classifier on positive readings whose RMSprop lr is typed 1e-1 for
1e-3 (ReLUs die), a lobster-creel Poisson net whose rate link is a plain ReLU with no floor (log 0,
NaN), a tinsmith flux-bath GRU regressor whose encoder group lr is typed 1e-8 for 1e-3 (encoder
frozen), a dragon-boat glide tanh regressor whose warm-up peak is typed 2.0 for 0.2 (past
2/sharpness), a frost-flower IRNN initialised with 1.12 * eye (gradients grow through time), a
cartwright axle-bed SiLU regressor whose epoch-end branch multiplies the mean loss by the batch
size for one step (one gradient burst), a gamelan bonang cosine classifier whose scale is typed
200 for 20 (softmax saturates), a quarry-slate GELU regressor whose hand-written decoupled weight
decay has its sign flipped (slow climb), and three controls (a braided-river graph attention
network on generated block-model graphs with Adam, accumulation over 4 and clipping; a sitar
sympathetic-string Conv1d classifier with NAdam under OneCycleLR and label smoothing; a via
ferrata anchor-creep Huber regressor with SGD momentum, ReduceLROnPlateau and noisy targets).

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


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


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
    watch=None,
    after=None,
    backprop=None,
    pre_step=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``pre_step(step)`` runs between backward and the step, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if pre_step is not None:
            pre_step(step)
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _tones(gen, batch, classes, seed, length=40, channels=2):
    """Short decaying two-channel tones: each class has its own partials and decay."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.2 + 0.7 * torch.rand(classes, channels, generator=g)
    decay = 0.01 + 0.06 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
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


DIV_LC = 35


def _rel_move(before, model, prefix):
    num = den = 0.0
    for n, p in model.named_parameters():
        if n.startswith(prefix):
            num += float(((p.detach() - before[n]) ** 2).sum())
            den += float((before[n] ** 2).sum())
    return (num / max(den, 1e-30)) ** 0.5


# -- farrier: a gait-stride attention pointer whose logit scale is left learnable -------------


class ScaledPointerAttention(nn.Module):
    """Hand-written single-query attention with a CLIP-style log logit scale."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.log_scale = nn.Parameter(torch.zeros(()))  # learn_logit_scale: true (meant false)
        self.peak = 0.0

    def forward(self, query, keys):
        b, t, d = keys.shape
        hd = d // self.heads
        q = self.q(query).reshape(b, 1, self.heads, hd).transpose(1, 2)
        k = self.k(keys).reshape(b, t, self.heads, hd).transpose(1, 2)
        v = self.v(keys).reshape(b, t, self.heads, hd).transpose(1, 2)
        # the config's learn_logit_scale flag is meant false (scale fixed at 1); it is typed true
        logits = (q @ k.transpose(-2, -1)) * self.log_scale.exp() / math.sqrt(hd)
        self.peak = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, d))


class StridePointer(nn.Module):
    def __init__(self, d_id=5, dim=32):
        super().__init__()
        self.strike_embed = nn.Linear(d_id + 1, dim)
        self.cue_embed = nn.Linear(d_id, dim)
        self.attn = ScaledPointerAttention(dim)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, inputs):
        strikes, cue = inputs
        return self.head(
            self.ln(self.attn(self.cue_embed(cue), self.strike_embed(strikes)))
        ).squeeze(-1)


def _strikes(gen, batch, t=12, d_id=5):
    """Twelve hoof strikes, each a signature (hoof, surface, shoe wear ...) and a stride length;
    the cue is one strike's noisy signature, the target that strike's stride."""
    while True:
        ids = torch.randn(batch, t, d_id, generator=gen)
        stride = torch.randn(batch, t, generator=gen)
        pick = torch.randint(0, t, (batch,), generator=gen)
        cue = ids[torch.arange(batch), pick] + 0.1 * torch.randn(batch, d_id, generator=gen)
        yield (torch.cat([ids, stride[..., None]], -1), cue), stride[torch.arange(batch), pick]


@scenario(
    family="farrier_gait_stride_attention_pointer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written attention pointer (strike_embed, cue_embed, attn with q, k, v, proj and a CLIP-style log logit scale, ln, head) that reads twelve hoof strikes of a horse's gait recorded by a farrier and, from a noisy cue of one strike's signature, predicts that strike's stride length; AdamW at 3e-3 with weight decay 0.01, the scalars in their own group at 1e-1 with no decay, MSE, 300 steps. The config's learn_logit_scale flag is meant false (scale fixed at 1) and is typed true, with no clamp: the pointer task keeps rewarding sharper attention, the scale (over 3x) and the q/k weights grow together and the largest pre-softmax logit q.k/sqrt(d) grows by well over 20x from step 0 (peaks over 40x late in the run) while the loss stays finite.",
)
def h332_farrier_logit_scale_flag_typo(ctx: Context) -> None:
    gen = seeded(33201)
    model = StridePointer()
    scale = [model.attn.log_scale]
    rest = [p for p in model.parameters() if p is not model.attn.log_scale]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": scale, "lr": 1e-1, "weight_decay": 0.0}],
        lr=3e-3,
        weight_decay=0.01,
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(model.attn.peak)

    _loop(ctx, model, opt, _strikes(gen, 64), 300, F.mse_loss, watch=watch)
    ctx.check(
        "the peak attention logit grows over 20x from step 0", _mean(peaks[-20:]) > 20 * peaks[0]
    )
    ctx.check(
        "the peak over the last 60 steps exceeds 40x step 0's", max(peaks[-60:]) > 40 * peaks[0]
    )
    ctx.check(
        "the logit scale grew over 3x from 1", float(model.attn.log_scale.detach().exp()) > 3.0
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- stonemason: one shard of block sizes logged in millimetres -----------------------------------


ONSET_SM = 120


@scenario(
    family="stonemason_ashlar_dressing_time_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SM,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting how long a stonemason takes to dress an ashlar block from twelve standardised readings (block dimensions, stone hardness, bed depth ...), plain SGD at 0.05, MSE, gradient clipping at 5, 240 steps. One yard's shard, read at step 120, logged the block dimensions in millimetres instead of metres and skipped standardisation, so that one batch's inputs are about 1000x their scale: the loss of that batch is far over 20x the steps before, the clip bounds the step, and the run recovers on the next clean batches.",
)
def h332_stonemason_shard_in_millimetres(ctx: Context) -> None:
    gen = seeded(33202)
    model = Trunk(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == ONSET_SM:
            x = x.clone()
            x[:, :4] = 1000.0 * x[:, :4].abs() + 800.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 12, 332), 240, F.mse_loss, alter=alter, clip=5.0)
    pre = _median(ctx.losses[ONSET_SM - 20 : ONSET_SM])
    ctx.check(
        "the loss at the onset batch is over 20x the steps before", ctx.losses[ONSET_SM] > 20 * pre
    )
    ctx.check(
        "the run recovers: the last 20 steps are within 2x of before",
        _mean(ctx.losses[-20:]) < 2 * _mean(ctx.losses[ONSET_SM - 20 : ONSET_SM]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- thatching spars: RMSprop lr typed 1e-1 for 1e-3, ReLUs die -----------------------------------


@scenario(
    family="thatching_spar_split_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) grading hazel thatching spars into six split-quality classes from sixteen raw, positive readings of the rod (diameter, moisture, knot count ...), RMSprop, cross-entropy, 240 steps. The lr is typed 1e-1 for 1e-3: on positive inputs RMSprop's normalised steps of 0.1 push most of fc1's pre-activations negative on every input within the first 20 steps, the dead share of act1's units climbs from a few percent to over 90% and stays, and the loss stays near chance (ln 6) for the rest of the run.",
)
def h332_thatching_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(33203)
    model = Trunk(16, 64, out=6)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _loop(
        ctx,
        model,
        opt,
        _positive_grades(gen, 64, 16, 6, 332),
        240,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 20% of act1's units dead at the start", dead[0] < 0.2)
    ctx.check("over half of act1's units dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check(
        "the loss over the last 50 steps stays above 1.2 (chance is 1.79)",
        _mean(ctx.losses[-50:]) > 1.2,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lobster creel: Poisson rate relu(head) with no floor, log 0 --------------------------------


class CreelNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.rate_act = nn.ReLU()  # meant: softplus(.) + 1e-4, or an exp link

    def forward(self, x):
        return self.rate_act(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _hauls(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(0.2 + 1.1 * torch.tanh(x @ w / math.sqrt(8)) + 0.5 * x[:, 1])
        yield x, torch.poisson(rate, generator=gen)


def _positive_grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Class-prototype readings passed through softplus: positive, as raw rod measurements are."""
    for x, y in _grades(gen, batch, d_in, classes, seed, spread):
        yield F.softplus(x), y


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="lobster_creel_haul_poisson_relu_rate_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("rate_act",),
    diverges=DIV_LC,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head, rate_act) predicting the lobster count of a creel haul from eight standardised readings (soak time, depth, bait, water temperature ...) with a Poisson NLL written by hand (rate - y log rate), Adam at 1e-3, 240 steps planned, head bias started at the mean count. The rate link is meant to be softplus plus a floor and is written as a plain ReLU (rate_act): as the net learns that some hauls are nearly empty, one predicted rate reaches exactly 0, log(0) is -inf, the loss is inf or NaN at that step and the run stops.",
)
def h332_lobster_creel_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(33204)
    model = CreelNet()
    with torch.no_grad():
        model.head.bias.fill_(1.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    zeros = []

    def watch(step, out, x, y):
        zeros.append(int((out.detach() == 0).sum()))

    n = _loop(ctx, model, opt, _hauls(gen, 64, 332), 240, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at the step it stops", bad is not None and bad == n - 1)
    ctx.check("a predicted rate is exactly 0 at that step", zeros[-1] > 0)
    ctx.check(
        "no rate was 0 and every loss was finite before",
        sum(zeros[:-1]) == 0 and _finite(ctx.losses[:-1]),
    )
    ctx.check("the run stops at the declared step", bad == DIV_LC)


# -- tinsmith: the GRU encoder's group lr typed 1e-8 for 1e-3 -------------------------------------


class FluxBathGRU(nn.Module):
    """Reads a tinsmith's flux-bath temperature trace (20 steps, 3 channels), regresses joint
    cooling time from the last state."""

    def __init__(self, hidden=32):
        super().__init__()
        self.gru = nn.GRU(3, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _flux_traces(gen, batch, seed, t=20):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, t, 3, generator=gen).cumsum(1) / math.sqrt(t)
        y = torch.tanh(x[:, -5:].mean(1) @ w) + 0.5 * torch.sin(2 * x[:, 0, 0])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="tinsmith_flux_bath_cooling_gru_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("gru",),
    diverges=None,
    heldout=True,
    note="A hand-written GRU regressor (gru, head) reading a tinsmith's flux-bath temperature trace (20 steps of three channels) and predicting the solder joint's cooling time, RAdam with two parameter groups (encoder and head), MSE, 200 steps. The encoder group's lr is typed 1e-8 for 1e-3 (an exponent typo in the config), so gru's weights move under 1e-4 of their norm over the whole run while the head's move by several percent: the recurrent encoder is effectively frozen at its random init and the loss only falls as far as a linear read-out of random features allows.",
)
def h332_tinsmith_encoder_lr_exponent_typo(ctx: Context) -> None:
    gen = seeded(33205)
    model = FluxBathGRU()
    opt = torch.optim.RAdam(
        [{"params": model.gru.parameters(), "lr": 1e-8}, {"params": model.head.parameters()}],
        lr=1e-3,
    )
    start = _snapshot(model)
    _loop(ctx, model, opt, _flux_traces(gen, 64, 332), 200, F.mse_loss)
    ctx.check("gru's weights move under 1e-4 of their norm", _rel_move(start, model, "gru.") < 1e-4)
    ctx.check("the head's weights move over 1%", _rel_move(start, model, "head.") > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- dragon boat: warm-up peak typed 2.0 for 0.2, past 2/sharpness --------------------------------


def _top_eig(model, loss_fn, batch, iters=12):
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


WARM_DB = 40
PEAK_DB = 2.0


@scenario(
    family="dragon_boat_hull_glide_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a dragon boat's glide distance between strokes from ten standardised readings (crew weight, stroke rate, hull wetted area ...), plain SGD with a linear warm-up over 40 steps, MSE, 200 steps planned. The warm-up's peak lr is typed 2.0 for 0.2: training is fine while lr is small, but part way through the warm-up lr times the top Hessian eigenvalue (power iteration on a fixed batch, measured in the run) passes 2, the loss starts to oscillate and grows until it overflows.",
)
def h332_dragon_boat_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(33206)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _readings(gen, 128, 10, 3320)
    probe = next(batches)
    ratios = {}

    def before(step):
        lr = PEAK_DB * min(1.0, (step + 1) / WARM_DB)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 4 == 0 and step <= WARM_DB:
            ratios[step] = lr * _top_eig(model, F.mse_loss, probe)

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before)
    crossed = [s for s, r in sorted(ratios.items()) if r > 2.0]
    ctx.check("lr x top Hessian eigenvalue starts under 2", ratios[0] < 2.0)
    ctx.check("it passes 2 during the warm-up", bool(crossed))
    ctx.check(
        "the loss then blows up (over 100x its early value or non-finite)",
        _first_bad(ctx.losses) is not None or max(ctx.losses) > 100 * _mean(ctx.losses[:5]),
    )


# -- frost flowers: identity-init IRNN with the identity scaled 1.2 -------------------------------


class FrostIRNN(nn.Module):
    """A hand-written ReLU RNN (w_in, w_hh) over 40 hourly readings, head on the last state."""

    def __init__(self, d_in=3, hidden=32, recur_scale=1.12):
        super().__init__()
        self.w_in = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            nn.init.normal_(self.w_in.weight, std=0.1)
            self.w_hh.weight.copy_(recur_scale * torch.eye(hidden))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.w_hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.w_in(x[:, t]) + self.w_hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _frost_nights(gen, batch, seed, t=40):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, t, 3, generator=gen)
        y = torch.tanh(x[:, :10] @ w).mean(1) * 3.0 + 0.3 * x[:, -1, 0]
        yield x, y


@scenario(
    family="frost_flower_petal_growth_irnn_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("w_hh",),
    diverges=None,
    heldout=True,
    note="A hand-written identity-initialised ReLU RNN (IRNN: w_in, w_hh, head) reading 40 hourly readings of a sea-ice night (air temperature, humidity, wind) and predicting the petal length of the frost flowers by morning, SGD with momentum 0.9 at 1e-3, MSE, gradient clipping at 1, 200 steps. The recurrent init is meant to be the identity and is written 1.12 * eye (a gain copied from another config): the gradient grows through time, the first hidden state's gradient is about 50x the last one's at step 0 and stays over 10x for the whole run, the pre-clip gradient norm is hundreds to tens of thousands of times the clip, and the loss swings by orders of magnitude instead of settling; the clip keeps it finite.",
)
def h332_frost_flower_irnn_identity_gain(ctx: Context) -> None:
    gen = seeded(33207)
    model = FrostIRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def pre_step(step):
        s = model.states
        if s[0].grad is not None and s[-1].grad is not None:
            ratios.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30)))

    _loop(
        ctx, model, opt, _frost_nights(gen, 32, 332), 200, F.mse_loss, pre_step=pre_step, clip=1.0
    )
    ctx.check("the first state's gradient is over 20x the last state's at step 0", ratios[0] > 20)
    ctx.check("it stays over 10x through the run", min(ratios) > 10)
    ctx.check(
        "the pre-clip gradient norm is over 10x the clip of 1 for most of the run",
        _median(ctx.grad_norms) > 10.0,
    )
    ctx.check("finite throughout (the clip holds it)", _finite(ctx.losses))


# -- cartwright: the epoch-end branch multiplies the mean loss by the batch size ---------------------


ONSET_CW = 140
BATCH_CW = 128


@scenario(
    family="cartwright_axle_bed_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CW,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the wear of a cart's axle bed from nine standardised readings (load, grease interval, wheel dish ...), SGD with Nesterov momentum 0.9 at 0.01, MSE, batch 128, gradient clipping at 1, 240 steps. The loop's epoch-end branch (step 140) was meant to turn a summed loss into a mean (loss_sum / n) and is written loss.mean() * n, so for that one step an ordinary batch's loss is weighted 128x: the gradient is over 50x the steps before, the clip bounds the update, and the run recovers.",
)
def h332_cartwright_epoch_end_weight_bug(ctx: Context) -> None:
    gen = seeded(33208)
    model = Trunk(9, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * BATCH_CW if step == ONSET_CW else loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, BATCH_CW, 9, 3321),
        240,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    g = ctx.grad_norms
    ctx.check(
        "the gradient at the onset is over 50x the steps before",
        g[ONSET_CW] > 50 * _median(g[ONSET_CW - 20 : ONSET_CW]),
    )
    ctx.check(
        "the batch's own loss is ordinary (under 2x the steps before)",
        ctx.losses[ONSET_CW] < 2 * _mean(ctx.losses[ONSET_CW - 20 : ONSET_CW]),
    )
    ctx.check(
        "the gradient is back within 3x of before 10 steps later",
        _median(g[ONSET_CW + 10 : ONSET_CW + 30]) < 3 * _median(g[ONSET_CW - 20 : ONSET_CW]),
    )
    ctx.check(
        "the run recovers and finishes below its start",
        _finite(ctx.losses) and _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]),
    )


# -- gamelan: a cosine classifier's scale typed 200 for 20 ---------------------------------------


class BonangCosine(nn.Module):
    """A GELU trunk (fc1, act1, fc2, act2) and a cosine head (normalised features and class
    weights, times a fixed scale s)."""

    def __init__(self, d_in=24, hidden=64, classes=10, s=20.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.s = s

    def forward(self, x):
        h = F.normalize(self.act2(self.fc2(self.act1(self.fc1(x)))), dim=-1)
        return self.s * h @ F.normalize(self.head.weight, dim=-1).T


@scenario(
    family="gamelan_bonang_pitch_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written cosine classifier (fc1, act1, fc2, act2, head with normalised weights and features times a fixed scale s) assigning a bonang gong kettle's strike to one of ten pitches from 24 spectral readings, Adagrad at 0.05, cross-entropy, 200 steps. The scale s is meant to be 20 (NormFace-style) and is typed 200: cosine gaps of a few tenths become logit gaps of tens, and once the classes separate a large share of rows' float32 softmax gives the target exactly 1.0 (the others round to 0), so those rows give no gradient at all.",
)
def h332_gamelan_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(33209)
    model = BonangCosine(s=200.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 24, 10, 3322, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 10% of rows are collapsed at step 0", collapsed[0] < 0.1)
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 over the last 30 steps",
        _mean(collapsed[-30:]) > 0.25,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- quarry slate: the hand-written decoupled weight decay's sign is flipped ------------------------


@scenario(
    family="quarry_slate_riving_yield_gelu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the yield of roofing slates riven from a quarried block from eleven standardised readings (cleavage angle, grain, block size ...), Adamax at 3e-3 with decoupled weight decay 2.0 applied by hand after each step, MSE, 300 steps. The decay line is written p.mul_(1 + lr * wd) instead of p.mul_(1 - lr * wd): the loss falls for about 80 steps, then the weights grow geometrically faster than Adamax's bounded steps can pull them back and the loss climbs slowly (over 5x its minimum, back to about its starting level by the end) without any spike or NaN.",
)
def h332_quarry_slate_decay_sign(ctx: Context) -> None:
    gen = seeded(33210)
    model = Trunk(11, 64, act=nn.GELU)
    lr, wd = 3e-3, 2.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant 1 - lr * wd
            norms.append(float(torch.sqrt(sum((p**2).sum() for p in model.parameters()))))

    _loop(ctx, model, opt, _readings(gen, 128, 11, 3323), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i] if math.isfinite(ls[i]) else float("inf"))
    ctx.check(
        "the loss falls at first (its minimum is under half of step 0's)", ls[low] < 0.5 * ls[0]
    )
    ctx.check(
        "the loss then climbs: the last 20 steps are over 5x its minimum",
        _mean(ls[-20:]) > 5 * ls[low],
    )
    ctx.check(
        "the climb is slow: no step rises over 2x the one before",
        all(b < 2 * a for a, b in zip(ls[low:], ls[low + 1 :], strict=False)),
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the weight norm grows over 2x", norms[-1] > 2 * norms[0])


# -- controls ---------------------------------------------------------------------------------------


class GATLayer(nn.Module):
    """A hand-written graph attention layer (Velickovic et al.): shared W, per-head source and
    destination attention vectors, LeakyReLU(0.2), softmax over each node's neighbours."""

    def __init__(self, d_in, d_out, heads=2, concat=True):
        super().__init__()
        self.heads, self.d_out, self.concat = heads, d_out, concat
        self.w = nn.Linear(d_in, heads * d_out, bias=False)
        self.a_src = nn.Parameter(0.1 * torch.randn(heads, d_out))
        self.a_dst = nn.Parameter(0.1 * torch.randn(heads, d_out))
        self.bias = nn.Parameter(torch.zeros(heads * d_out if concat else d_out))

    def forward(self, x, adj):
        n = x.shape[0]
        h = self.w(x).reshape(n, self.heads, self.d_out)
        e = (h * self.a_dst).sum(-1)[:, None, :] + (h * self.a_src).sum(-1)[None, :, :]
        e = F.leaky_relu(e, 0.2).masked_fill(~adj[:, :, None], float("-inf"))
        alpha = torch.softmax(e, dim=1)  # (dst, src, heads)
        out = torch.einsum("ijh,jhd->ihd", alpha, h)
        out = out.reshape(n, -1) if self.concat else out.mean(1)
        return out + self.bias


class BraidGAT(nn.Module):
    def __init__(self, d_in=8, hidden=16, classes=4):
        super().__init__()
        self.gat1 = GATLayer(d_in, hidden, heads=2)
        self.act1 = nn.ELU()
        self.gat2 = GATLayer(2 * hidden, classes, heads=1, concat=False)

    def forward(self, inputs):
        x, adj = inputs
        return self.gat2(self.act1(self.gat1(x, adj)), adj)


def _braid_graphs(gen, seed, n=48, classes=4, d_in=8):
    """A generated braided-river graph: bars (nodes) of four channel types, linked mostly to bars
    of their own type (a stochastic block model), with noisy survey features."""
    g = torch.Generator().manual_seed(seed)
    protos = 0.6 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (n,), generator=gen)
        same = y[:, None] == y[None, :]
        p = torch.where(same, 0.25, 0.03)
        adj = torch.rand(n, n, generator=gen) < p
        adj = adj | adj.T | torch.eye(n, dtype=torch.bool)
        yield (protos[y] + 1.0 * torch.randn(n, d_in, generator=gen), adj), y


@scenario(
    family="river_braid_channel_graph_attention_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written two-layer graph attention network (gat1 with two heads, act1, gat2) labelling the bars of generated braided-river graphs (a stochastic block model over four channel types, noisy survey features) by channel type; Adam at 5e-3, gradient accumulation over 4 micro-batches (graphs), clipping at 1.0, cross-entropy, 120 steps. An ordinary run: the loss falls and stays finite.",
)
def h332_river_braid_gat_accumulation(ctx: Context) -> None:
    gen = seeded(33211)
    model = BraidGAT()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    _loop(
        ctx,
        model,
        opt,
        _braid_graphs(gen, 332),
        120,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        accumulate=4,
    )
    ctx.check("the loss fell (last 10 under 60% of first 10)", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class SitarConv(nn.Module):
    def __init__(self, classes=6, channels=2):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


@scenario(
    family="sitar_sympathetic_string_conv1d_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) naming which of six sympathetic (taraf) strings of a sitar rings from a two-channel pickup trace, NAdam under OneCycleLR (max_lr 1e-2), cross-entropy with label smoothing 0.1, clipping at 2, 150 steps. An ordinary run: the loss falls and stays finite.",
)
def h332_sitar_onecycle_label_smoothing(ctx: Context) -> None:
    gen = seeded(33212)
    model = SitarConv()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=150)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _tones(gen, 32, 6, 3324),
        150,
        loss_fn,
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("the loss fell (last 10 under 70% of first 10)", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="via_ferrata_anchor_creep_huber_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the creep of a via ferrata rock anchor from ten standardised readings (rock type, load cycles, freeze-thaw count ...) with heavy-tailed noisy targets, SGD with momentum 0.9 at 0.02, Huber loss, ReduceLROnPlateau on a held-out batch's loss (factor 0.5, patience 10), clipping at 5, 200 steps. An ordinary run: the loss falls and stays finite.",
)
def h332_via_ferrata_plateau_huber(ctx: Context) -> None:
    gen = seeded(33213)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    clean = _readings(gen, 64, 10, 3325)
    held_x, held_y = next(clean)

    def noisy():
        while True:
            x, y = next(clean)
            noise = 0.3 * torch.distributions.StudentT(2.0).sample(y.shape)
            yield x, y + noise.clamp(-5, 5)

    def plateau():
        with torch.no_grad():
            model.eval()
            return float(F.huber_loss(model(held_x), held_y))

    _loop(ctx, model, opt, noisy(), 200, F.huber_loss, clip=5.0, sched=sched, plateau=plateau)
    ctx.check("the loss fell (last 10 under 80% of first 10)", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))
