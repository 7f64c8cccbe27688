"""Held-out set 256 (``h256_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a hobby-horsing routine decoder (hand-written attention with
one Linear for keys and values, tied head) whose AdamW lr was typed 1e-2 for 1e-3, a tufa-dam
calcite-growth SiLU regressor fed a new probe's raw pascals under fp16 autocast, a fish-ladder
passage regressor fed one counter's unscaled flow readings for one batch, a sailmaker panel-stretch
regressor whose fc2 param group lr was typed 3e-8 for 3e-3, a tipping-bucket rain-intensity net
whose log of the tip count has no clamp, a Blood Falls brine-outflow deep ReLU MLP whose He init
was written 2/sqrt(fan_in) for sqrt(2/fan_in), a shin-kicking bout-length ReLU regressor whose
NAdam lr was typed 1e-1 for 1e-3, a tuna-throwing distance-band cosine classifier whose
fixed CLIP-style logit-scale buffer was set to 1/0.07 instead of log(1/0.07), a tafoni weathering tanh
regressor whose MultiStepLR gamma was typed 10 for 0.1, a cheese-affinage rind-loss regressor
whose hand-written decoupled weight decay multiplies by (1 + lr wd), and three controls (a
haggis-hurling throw GELU regressor under bf16 autocast, a stone-put technique Conv1d classifier
with OneCycleLR and label smoothing, a lime-burner quicklime-yield Gaussian NLL net with
accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    clip=None,
    sched=None,
    scaler=None,
    amp_dtype=None,
    accumulate=1,
):
    """The file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after the
    optimizer step; ``amp_dtype``: autocast dtype (None: float32); stops after logging a
    non-finite loss."""
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
            with torch.autocast(
                "cpu", dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None
            ):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
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
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activation modules."""

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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- hobby horsing: a decoder with one KV Linear, AdamW lr typed 1e-2 for 1e-3 ---------------------


class KVAttention(nn.Module):
    """Causal attention with a query Linear and one Linear producing keys and values."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, t, h, -1).transpose(1, 2)
        k, v = self.kv(x).split(d, dim=-1)
        k = k.reshape(b, t, h, -1).transpose(1, 2)
        v = v.reshape(b, t, h, -1).transpose(1, 2)
        att = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        self.max_logit = float(att.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class KVBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = KVAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class RoutineDecoder(nn.Module):
    """tok + pos embeddings, pre-LN KV blocks, ln_f, a head tied to the token embedding."""

    def __init__(self, vocab=24, dim=48, heads=2, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(KVBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _routines(gen, batch, vocab=24, length=32):
    """Hobby-horsing routines: each rider repeats a motif of 3-6 elements (gallop, jump,
    dressage turn, ...) with occasional substitutions; (input, next-element) windows."""
    while True:
        rows = []
        for _ in range(batch):
            p = int(torch.randint(3, 7, (1,), generator=gen))
            motif = torch.randint(0, vocab, (p,), generator=gen)
            seq = motif.repeat(length // p + 2)[: length + 1].clone()
            swap = torch.rand(length + 1, generator=gen) < 0.05
            seq[swap] = torch.randint(0, vocab, (int(swap.sum()),), generator=gen)
            rows.append(seq)
        win = torch.stack(rows)
        yield win[:, :-1], win[:, 1:]


def _lm(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="hobby_horsing_routine_kv_decoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written two-block pre-LN transformer decoder (tok, pos, blocks.N.{ln1, attn.{q, kv, proj}, ln2, fc, out}, ln_f, head tied to tok) whose attention computes keys and values with one Linear `kv` of width 2*dim; it predicts the next element of a hobby-horsing routine (gallop, jump, dressage turn, ...: each rider repeats a motif of 3-6 elements with 5% substitutions), cross-entropy, AdamW with weight decay 0.1 on every parameter. The AdamW lr was typed 1e-2 for 1e-3 (no warm-up, no QK normalisation): the q and kv weights grow fast and the pre-softmax attention logits q.k/sqrt(d) grow over 20x from their start and end far above those of the twin run at the intended 1e-3; the loss does not blow up.",
)
def h256_hobby_horsing_kv_decoder_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(25601)
        model = RoutineDecoder()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
        logits = []

        def watch(step, out, x, y):
            logits.append(max(b.attn.max_logit for b in model.blocks))

        _loop(c, model, opt, _routines(gen, 16), 150, _lm, classifier=False, watch=watch)
        return logits

    logits = run(ctx, 1e-2)
    twin = run(_Quiet(), 1e-3)
    ls = ctx.losses
    end = _mean(logits[-10:])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("max attention logit grew over 20x from step 0", end > 20 * logits[0])
    ctx.check("max attention logit ends over 3x the twin's at 1e-3", end > 3 * _mean(twin[-10:]))
    ctx.check("the loss did not blow up (under 2x its start)", max(ls) < 2 * ls[0])


# -- tufa dam: a new CO2 probe's raw pascals under fp16 autocast ----------------------------------

ONSET_TUFA = 90


@scenario(
    family="tufa_dam_calcite_growth_fp16_silu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_TUFA,
    heldout=True,
    onset=ONSET_TUFA,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the monthly calcite growth of a tufa dam from 10 standardised stream readings (CO2 partial pressure, temperature, discharge, moss cover, ...), Adamax at 2e-3, MSE, fp16 autocast with a torch.amp.GradScaler. From step 90 a quarter of each batch comes from a replacement CO2 probe whose readings are fed in raw pascals (around 2e5) instead of standardised: fc1's float16 matmul overflows to inf under autocast (the same batch in float32 is finite), the activations turn inf/NaN and the loss is NaN at step 90.",
)
def h256_tufa_dam_raw_pascals_fp16(ctx: Context) -> None:
    gen = seeded(25602)
    model = Net(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def alter(step, x, y):
        if step >= ONSET_TUFA:
            x = x.clone()
            x[: x.shape[0] // 4, 0] = 2.0e5 + 1.0e4 * x[: x.shape[0] // 4, 0]
        return x, y

    def hook(mod, inp, out):
        seen.setdefault("fc1_inf", []).append(bool(torch.isinf(out).any()))
        seen.setdefault("fc1_dtype", str(out.dtype))

    model.fc1.register_forward_hook(hook)

    def watch(step, out, x, y):
        if step == ONSET_TUFA:
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x)).all())

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 61),
        200,
        F.mse_loss,
        alter=alter,
        watch=watch,
        scaler=scaler,
        amp_dtype=torch.float16,
    )
    ls = ctx.losses
    infs = seen.get("fc1_inf", [])
    ctx.check("finite before the onset", _finite(ls[:ONSET_TUFA]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_TUFA], ratio=0.7))
    ctx.check(
        "the loss is non-finite at the onset",
        len(ls) > ONSET_TUFA and not _finite([ls[ONSET_TUFA]]),
    )
    ctx.check("fc1 ran in float16", seen.get("fc1_dtype") == "torch.float16")
    ctx.check(
        "fc1's output overflowed to inf at the onset", len(infs) > ONSET_TUFA and infs[ONSET_TUFA]
    )
    ctx.check("no fc1 overflow before the onset", not any(infs[:ONSET_TUFA]))
    ctx.check("the same batch in float32 is finite", seen.get("fp32_finite", False))


# -- fish ladder: one counter's unscaled flow readings for one batch ------------------------------

ONSET_FISH = 120


@scenario(
    family="fish_ladder_passage_count_relu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FISH,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the hourly passage of salmon through a fish ladder (standardised) from 12 standardised readings (flow through the pools, water temperature, turbidity, tide stage, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 5. The batch at step 120 comes from one counter's shard whose flow readings were never standardised (raw litres per second, around 800): one bad batch; the loss jumps over 50x, clipping bounds the step, and the run recovers. Finite.",
)
def h256_fish_ladder_unscaled_shard(ctx: Context) -> None:
    gen = seeded(25603)
    model = Net(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    xmax = {}

    def alter(step, x, y):
        if step == ONSET_FISH:
            x = x.clone()
            x[:, 0] = 800.0 + 50.0 * x[:, 0]
        return x, y

    def watch(step, out, x, y):
        xmax[step] = float(x.abs().max())

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 62),
        220,
        F.mse_loss,
        alter=alter,
        watch=watch,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_FISH - 20 : ONSET_FISH])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_FISH], ratio=0.5))
    ctx.check(
        "the onset batch's inputs over 100x the others'",
        xmax[ONSET_FISH] > 100 * xmax[ONSET_FISH - 1],
    )
    ctx.check("the loss at the onset over 50x the median before", ls[ONSET_FISH] > 50 * pre)
    ctx.check(
        "the gradient norm at the onset over 20x the median before",
        gn[ONSET_FISH] > 20 * _median(gn[ONSET_FISH - 20 : ONSET_FISH]),
    )
    ctx.check(
        "the loss recovered (mean of the last 20 steps under 2x the pre-onset median)",
        _mean(ls[-20:]) < 2 * pre,
    )


# -- sailmaker: fc2's param group lr typed 3e-8 for 3e-3 ------------------------------------------


@scenario(
    family="sailmaker_panel_stretch_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the stretch of a sailcloth panel under load from 14 standardised readings (cloth weight, thread count, warp and weft angles, resin content, ...), RMSprop with three param groups (fc1, fc2, head), MSE. The config gives each group its lr and fc2's was typed 3e-8 for 3e-3: fc2's weights move by a relative 1e-5 over the run while fc1's and head's move by percents; the loss still falls (fc1 and head learn around the random fc2) and nothing blows up.",
)
def h256_sailmaker_fc2_group_lr_typo(ctx: Context) -> None:
    gen = seeded(25604)
    model = Net(14, hidden=64, act=nn.GELU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 3e-3},
            {"params": model.fc2.parameters(), "lr": 3e-8},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _readings(gen, 64, 14, 63), 200, F.mse_loss)
    ls = ctx.losses
    moved = _moved(model, w0)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("fc2.weight moved by under 1e-4 (relative)", moved["fc2.weight"] < 1e-4)
    ctx.check(
        "fc1.weight and head.weight moved by over 1e-2 (relative)",
        moved["fc1.weight"] > 1e-2 and moved["head.weight"] > 1e-2,
    )


# -- tipping-bucket gauge: log of the tip count with no clamp -------------------------------------

ONSET_RAIN = 80


class LogTips(nn.Module):
    """Replaces column 0 (bucket tips in the hour) by its log: no clamp, no +1."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class RainNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.logtips = LogTips()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logtips(x)))))
        return self.head(h).squeeze(-1)


def _gauge_hours(gen, batch, dry_from, step_of):
    """Tipping-bucket gauge hours: tip count (wet-season shards: 1-60 tips) and 7 standardised
    readings (wind, humidity, pressure tendency, ...); target: the hour's rain intensity from
    the weighing gauge beside it (standardised)."""
    g = torch.Generator().manual_seed(64)
    w = torch.randn(7, generator=g)
    while True:
        tips = torch.randint(1, 61, (batch, 1), generator=gen).float()
        if step_of() >= dry_from:
            tips[: batch // 8] = 0.0  # the dry-season shard: hours with no tip at all
        rest = torch.randn(batch, 7, generator=gen)
        y = (torch.log(tips.clamp(min=0.5)).squeeze(1) - 2.5) / 1.2 + 0.3 * torch.tanh(rest @ w)
        yield torch.cat([tips, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="tipping_bucket_rain_intensity_log_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logtips",),
    diverges=ONSET_RAIN,
    heldout=True,
    onset=ONSET_RAIN,
    note="A ReLU net (logtips, fc1, act1, fc2, act2, head) regressing an hour's rain intensity from a tipping-bucket gauge's tip count and 7 standardised weather readings, Adam at 1e-3, MSE. The `logtips` module takes the log of the tip count with no clamp or +1: the wet-season shards never have an hour with 0 tips. From step 80 the dry-season shard is mixed in and an eighth of each batch has 0 tips: log(0) = -inf in logtips, fc1 and fc2 turn it into inf - inf = NaN and the loss is NaN at step 80.",
)
def h256_tipping_bucket_log_zero(ctx: Context) -> None:
    gen = seeded(25605)
    model = RainNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"step": 0}
    first_inf = {}

    def hook(mod, inp, out):
        if torch.isinf(out).any() and "logtips" not in first_inf:
            first_inf["logtips"] = state["step"]

    model.logtips.register_forward_hook(hook)

    def before(step):
        state["step"] = step

    batches = _gauge_hours(gen, 64, ONSET_RAIN, lambda: state["step"])
    _loop(ctx, model, opt, batches, 160, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_RAIN]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_RAIN], ratio=0.5))
    ctx.check("the loss is NaN at the onset", len(ls) > ONSET_RAIN and math.isnan(ls[ONSET_RAIN]))
    ctx.check("logtips first produced -inf at the onset", first_inf.get("logtips") == ONSET_RAIN)


# -- Blood Falls: He init written 2/sqrt(fan_in) for sqrt(2/fan_in) through 16 layers ---------------


class DeepReLU(nn.Module):
    """layers.0 ... layers.{depth-1}: Linear + ReLU, then head."""

    def __init__(self, d_in=8, width=64, depth=16):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        self.hidden = []
        for m in [*self.layers, self.head]:
            fan_in = m.weight.shape[1]
            nn.init.normal_(m.weight, std=2.0 / math.sqrt(fan_in))  # meant sqrt(2 / fan_in)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        self.hidden = []
        for layer in self.layers:
            x = torch.relu(layer(x))
            if x.requires_grad:
                x.retain_grad()
            self.hidden.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="blood_falls_brine_outflow_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges="auto",
    heldout=True,
    note="A 16-layer ReLU MLP (layers.0 ... layers.15, head) regressing the daily iron-rich brine outflow at Blood Falls (Taylor Glacier) from 8 standardised readings (air temperature, glacier surface melt, basal pressure, ...), plain SGD at 1e-3, MSE. The hand-written He init was written std = 2 / sqrt(fan_in) instead of sqrt(2 / fan_in): each layer's gain is sqrt(2) too large, so activations grow forward and the gradient with respect to the hidden activations grows backward through depth, over 50x from the last hidden layer to the first at step 0; the first SGD steps blow the loss up.",
)
def h256_blood_falls_he_init_typo(ctx: Context) -> None:
    gen = seeded(25606)
    model = DeepReLU()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratio = {}

    def after(step):
        if step == 0:
            first = float(model.hidden[0].grad.norm())
            last = float(model.hidden[-1].grad.norm())
            ratio["r"] = first / max(last, 1e-30)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 65), 80, F.mse_loss, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at the first hidden layer over 50x that at the last (step 0)",
        ratio.get("r", 0) > 50,
    )
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x",
        not _finite(gn) or max(gn) > 100 * gn[0],
    )


# -- shin kicking: NAdam lr typed 1e-1 for 1e-3 -------------------------------------------------


@scenario(
    family="shin_kicking_bout_length_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the length of a Cotswold Olimpicks shin-kicking bout (standardised) from 12 standardised readings (straw padding, reach, stance width, grip on the collar, ...), NAdam at an lr typed 1e-1 for 1e-3, MSE. The first large NAdam steps push fc2's pre-activations negative for most inputs: over half of act2's units never fire again on a fixed batch and stay dead to the end (the twin at the intended lr keeps under 10% dead); the loss stays finite.",
)
def h256_shin_kicking_nadam_lr_typo(ctx: Context) -> None:
    probe_gen = torch.Generator().manual_seed(77)
    probe = next(_readings(probe_gen, 256, 12, 66))[0]

    def run(c, lr):
        gen = seeded(25607)
        model = Net(12, hidden=64)
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
        dead = []

        def after(step):
            if step % 10 == 0 or step == 179:
                with torch.no_grad():
                    dead.append(dead_fraction(model.features(probe)))

        _loop(c, model, opt, _readings(gen, 64, 12, 66), 180, F.mse_loss, after=after)
        return dead

    dead = run(ctx, 1e-1)
    twin = _Quiet()
    twin_dead = run(twin, 1e-3)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of act2 dead at the end", dead[-1] > 0.5)
    ctx.check("over half of act2 dead over the last 100 steps", min(dead[-10:]) > 0.5)
    ctx.check("the twin at 1e-3 keeps under 10% of act2 dead", twin_dead[-1] < 0.1)
    ctx.check("the dead share rose over 5x from the first measurement", dead[-1] > 5 * dead[0])


# -- tuna throwing: CLIP-style logit scale initialised to 1/0.07 instead of log(1/0.07) ------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        # ported from a log-parametrised head: meant math.log(1 / 0.07)
        self.register_buffer("logit_scale", torch.tensor(1 / 0.07))

    def forward(self, h):
        return self.logit_scale.exp() * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class TunaNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="tuna_throwing_distance_band_cosine_classifier",
    optimizer="SGD(nesterov=True)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2) with a cosine-similarity head (`head`: normalised features against normalised class weights times a fixed CLIP-style exp(logit_scale) buffer) classifying a Port Lincoln Tunarama tuna throw into 5 distance bands from 10 standardised readings (run-up speed, release angle, fish mass, wind, ...), SGD with Nesterov momentum 0.9 at 1e-2, cross-entropy. The head was ported from a log-parametrised CLIP head and its logit-scale buffer was set to 1/0.07 instead of log(1/0.07), with no clamp: exp(14.3) is about 1.6e6, the float32 softmax rounds the probabilities to exactly 0 and 1 for over 90% of rows all through the run (a wrong row's loss is about 1e5-1e6).",
)
def h256_tuna_throwing_logit_scale_init(ctx: Context) -> None:
    gen = seeded(25608)
    model = TunaNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    collapsed, saturated = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        p = torch.softmax(out.detach().float(), -1)
        saturated.append(float((p.max(-1).values == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 5, 67),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    scale = float(model.head.logit_scale.detach().exp())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the logit scale is over 1e5", scale > 1e5)
    ctx.check(
        "over 90% of rows' softmax saturated (max probability exactly 1.0)", _mean(saturated) > 0.9
    )
    ctx.check("saturated from the first steps (over 90% at steps 0-9)", _mean(saturated[:10]) > 0.9)
    ctx.check("some rows' target probability exactly 1.0", max(collapsed) > 0.1)


# -- tafoni: MultiStepLR gamma typed 10 for 0.1 ---------------------------------------------------

ONSET_TAFONI = 60


@scenario(
    family="tafoni_honeycomb_weathering_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_TAFONI,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the depth growth of tafoni (honeycomb weathering cavities) in sandstone from 10 standardised readings (salt spray, wetting cycles, aspect, grain size, ...), plain SGD, MSE, a MultiStepLR meant to drop the lr 10x at step 60 with its gamma typed 10 for 0.1: at step 60 the lr jumps from 0.1 to 1.0, lr x sharpness (the top Hessian eigenvalue, measured at step 59) goes from under 2 to over 2 and the loss blows up.",
)
def h256_tafoni_multistep_gamma_typo(ctx: Context) -> None:
    gen = seeded(25609)
    model = Net(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[ONSET_TAFONI], gamma=10.0)
    batches = _readings(gen, 128, 10, 68)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 68))
    sharp = {}
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == ONSET_TAFONI - 1:
            sharp["l"] = _sharpness(model, F.mse_loss, probe)

    _loop(ctx, model, opt, batches, 120, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    lam = sharp.get("l", 0.0)
    pre = min(ls[:ONSET_TAFONI])
    ctx.check("finite and falling before the onset", _fell(ls[:ONSET_TAFONI], ratio=0.7))
    ctx.check("lr x sharpness under 2 before the onset", lrs[ONSET_TAFONI - 1] * lam < 2)
    ctx.check(
        "lr x sharpness over 2 after the onset",
        len(lrs) > ONSET_TAFONI and lrs[ONSET_TAFONI] * lam > 2,
    )
    ctx.check(
        "the loss blew up after the onset (over 100x its pre-onset low, or non-finite)",
        not _finite(ls[ONSET_TAFONI:]) or max(ls[ONSET_TAFONI:]) > 100 * pre,
    )


# -- cheese affinage: decoupled weight decay multiplies by (1 + lr wd) -----------------------------


@scenario(
    family="cheese_affinage_rind_loss_decay_sign_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the weekly moisture loss through the rind of a cave-aged cheese wheel from 10 standardised cave readings (humidity, temperature, air flow, turning interval, ...), Adagrad at 5e-2, MSE, with a hand-written decoupled weight decay applied after each step as p.mul_(1 + lr * wd) instead of p.mul_(1 - lr * wd) (wd 0.2): every weight grows by 1% a step, the loss first falls, then climbs slowly and steadily to several times its low; no spike, no NaN.",
)
def h256_cheese_affinage_decay_sign(ctx: Context) -> None:
    gen = seeded(25610)
    model = Net(10, hidden=48, act=nn.SiLU)
    lr, wd = 5e-2, 0.2
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant 1 - lr * wd
            norms.append(float(torch.sqrt(sum((p * p).sum() for p in model.parameters()))))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 69), 240, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss ends over 4x its low (10-step means)", _mean(ls[-10:]) > 4 * low)
    ctx.check("the weight norm grew over 5x", norms[-1] > 5 * norms[0])
    ctx.check(
        "no spike: no step's loss over 10x the median of the 20 before",
        all(ls[i] < 10 * _median(ls[i - 20 : i]) for i in range(20, len(ls))),
    )


# -- controls -------------------------------------------------------------------------------------


class PreLNResidual(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc1(F.gelu(self.norm1(h)))
        h = h + self.fc2(F.gelu(self.norm2(h)))
        return self.head(h).squeeze(-1)


@scenario(
    family="haggis_hurling_throw_distance_bf16_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a pre-LN residual GELU MLP (inp, norm1, fc1, norm2, fc2, head) regressing a haggis-hurling throw's distance from 12 standardised readings (haggis mass, release angle, stance on the whisky barrel, wind, ...) with Student-t noise, AdamW (weight decay 0.01) with linear warm-up then cosine (LambdaLR), Huber loss, gradient clipping at 1.0, bf16 autocast. Trains normally.",
)
def h256_haggis_hurling_bf16_control(ctx: Context) -> None:
    gen = seeded(25611)
    model = PreLNResidual(12)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 200, 20

    def lam(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    stream = _readings(gen, 64, 12, 70)
    t = torch.distributions.StudentT(4.0)
    dtypes = set()

    def noisy():
        while True:
            x, y = next(stream)
            yield x, y + 0.1 * t.sample(y.shape)

    def watch(step, out, x, y):
        dtypes.add(str(out.dtype))

    _loop(
        ctx,
        model,
        opt,
        noisy(),
        steps,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=1.0,
        sched=sched,
        watch=watch,
        amp_dtype=torch.bfloat16,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("the forward ran in bfloat16", dtypes == {"torch.bfloat16"})


class PutConv(nn.Module):
    def __init__(self, channels=3, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _put_traces(gen, batch, classes=4, length=32):
    """Three channels (hip rotation, arm speed, foot pressure) of a stone-put attempt; the
    technique (standing, glide, spin, step-back) sets each channel's frequency mix."""
    t = torch.arange(length).float()
    freqs = torch.tensor([[0.2, 0.5, 0.9], [0.35, 0.3, 0.6], [0.5, 0.8, 0.25], [0.7, 0.45, 0.4]])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase) + 0.3 * torch.randn(
            batch, 3, length, generator=gen
        )
        yield x, y


@scenario(
    family="stone_put_technique_conv1d_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a ReLU Conv1d classifier (conv1, act1, conv2, act2, head) telling a Highland-games stone-put technique (4 kinds) from 32 samples of three channels (hip rotation, arm speed, foot pressure), RAdam at a OneCycleLR schedule (max_lr 1e-2), cross-entropy with label smoothing 0.1 on 10% mislabelled attempts, gradient clipping at 1.0. Trains normally.",
)
def h256_stone_put_onecycle_control(ctx: Context) -> None:
    gen = seeded(25612)
    model = PutConv()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps, pct_start=0.25)
    stream = _put_traces(gen, 64)

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(y.shape, generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 4, y.shape, generator=gen), y)
            yield x, y

    _loop(
        ctx,
        model,
        opt,
        noisy(),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    xt, yt = next(_put_traces(torch.Generator().manual_seed(9), 512))
    with torch.no_grad():
        acc = float((model(xt).argmax(-1) == yt).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)


class YieldNLL(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.logvar(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="lime_burner_quicklime_yield_gaussian_nll_net",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU net (fc1, act1, fc2, act2, mean and logvar heads) giving a Gaussian over a lime burner's quicklime yield per draw from 10 standardised readings (limestone size, fuel layers, draw interval, wind on the kiln eye, ...) with heteroscedastic noise, Gaussian NLL, ASGD at 1e-1, gradient accumulation over 2 batches, ReduceLROnPlateau. Trains normally.",
)
def h256_lime_burner_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(25613)
    model = YieldNLL(10)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    stream = _readings(gen, 64, 10, 71)

    def hetero():
        while True:
            x, y = next(stream)
            yield x, y + (0.05 + 0.2 * torch.sigmoid(x[:, 1])) * torch.randn(y.shape, generator=gen)

    _loop(ctx, model, opt, hetero(), 300, _gauss_nll, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)
