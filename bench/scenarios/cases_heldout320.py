"""Held-out set 320 (``h320_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena: a fierljeppen vault-phase decoder-only transformer LM over generated token
sequences whose attention group's learning rate is typed 5e-2 for 5e-4 (attention logits grow), a
horseball pick-up BCE net fed labels coded -1/+1 by an old SVM pipeline (the head's logits grow
without bound), a sundial gnomon-shadow tanh regressor whose learning rate is scaled for a global
batch the run never has (past the 2/sharpness limit), a hornussen nouss-carry SiLU regressor whose
evaluation hook leaves the EMA weights in the live model (one loss spike), a korfball possession
classifier whose masked mean pool divides by a zero frame count (0/0, NaN), a tinsmith solder-joint
ReLU regressor fed one batch of raw ADC counts (one corrupted batch), a kabaddi raid-touch SiLU
regressor whose manual loss scale is not divided out for one step (one gradient burst), a theremin
antenna-pitch two-group GELU regressor whose trunk waits for an unfreeze step beyond the run (trunk
frozen), a lapidary facet-angle deep tanh MLP initialised with randn and no 1/sqrt(fan_in)
(gradients grow through depth), a fog-signal horn-code classifier whose temperature anneals the
wrong way (softmax saturates), and three controls (a sepak-takraw rally tied-embedding decoder LM
with warm-up and cosine, a zamboni blade-chatter fp16 Conv1d classifier with a GradScaler, a
St Elmo's fire corona-duration Gaussian NLL net on Adagrad with accumulation and
ReduceLROnPlateau).

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


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    forward=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``forward(model, x)`` replaces ``model(x)``, ``watch(step, out, x, y)`` sees the forward
    pass, ``backprop(step, loss, accumulate)`` returns the micro-batch loss actually
    backpropagated, ``unscale(step)`` runs on the gradients before they are measured, ``after(step)``
    runs after the optimizer step. Stops after a non-finite loss; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if unscale is not None:
            unscale(step)
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
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised instrument readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.tanh(1.5 * z) + 0.5 * torch.sin(1.3 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- a hand-written decoder-only transformer LM (both LM scenarios) -------------------------------


class CausalAttention(nn.Module):
    """Hand-written multi-head causal self-attention that keeps its largest q.k/sqrt(d) logit."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads

        def split(z):
            return z.reshape(b, t, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        logits = q @ k.transpose(-2, -1) / math.sqrt(hd)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        self.peak = float(logits.detach().masked_fill(mask, 0.0).abs().max())
        logits = logits.masked_fill(mask, float("-inf"))
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class LMBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TokenLM(nn.Module):
    """tok + pos embeddings, pre-LN blocks, ln_f, lm_head (optionally tied to tok)."""

    def __init__(self, vocab, dim=32, heads=2, layers=2, context=32, tied=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(LMBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.tok.weight, std=0.1)
        nn.init.normal_(self.pos.weight, std=0.1)
        if tied:
            self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _phrase_tokens(gen, batch, length, vocab, motif=8):
    """Generated token sequences: a random motif of ``motif`` tokens repeated (with a little noise)
    to fill the window, so the next token is predictable by looking back ``motif`` positions."""
    while True:
        m = torch.randint(2, vocab, (batch, motif), generator=gen)
        seq = m.repeat(1, (length + 1) // motif + 1)[:, : length + 1]
        flip = torch.rand(batch, length + 1, generator=gen) < 0.05
        seq = torch.where(flip, torch.randint(2, vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="fierljeppen_vault_phase_causal_decoder_lm",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written decoder-only transformer LM (tok, pos, two pre-LN blocks with a hand-written causal attention blocks.N.attn with q, k, v, proj and an upper-triangular mask, ln_f, untied lm_head) over generated fierljeppen vault-phase token sequences (a motif of 8 phase tokens repeated through a 32-token window, 5% noise), AdamW with three parameter groups, cross-entropy, 200 steps. The attention group's learning rate is meant to be 5e-4 (a tenth of the base, the usual caution for q/k) and is typed 5e-2 with weight decay 0: q and k grow step after step and the largest pre-softmax logit q.k/sqrt(d) grows by well over an order of magnitude while the rest trains at 5e-3.",
)
def h320_fierljeppen_attention_lr_typo(ctx: Context) -> None:
    gen = seeded(32001)
    model = TokenLM(vocab=24)
    attn = [p for n, p in model.named_parameters() if ".attn.q." in n or ".attn.k." in n]
    ids = {id(p) for p in attn}
    decay = [p for p in model.parameters() if id(p) not in ids and p.dim() == 2]
    rest = [p for p in model.parameters() if id(p) not in ids and p.dim() != 2]
    opt = torch.optim.AdamW(
        [
            {"params": attn, "lr": 5e-2, "weight_decay": 0.0},  # meant 5e-4
            {"params": decay, "weight_decay": 1e-2},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=5e-3,
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(max(b.attn.peak for b in model.blocks))

    _loop(ctx, model, opt, _phrase_tokens(gen, 16, 32, 24), 200, _lm_loss, watch=watch)
    ctx.check(
        "the peak attention logit grows over 20x from step 0", _mean(peaks[-20:]) > 20 * peaks[0]
    )
    ctx.check(
        "it is still higher late than at steps 60-80",
        _mean(peaks[-20:]) > 1.2 * _mean(peaks[60:80]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- horseball: labels coded -1/+1 fed to BCE-with-logits -----------------------------------------


@scenario(
    family="horseball_ball_pickup_signed_label_bce_net",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU net (fc1, fc2, head) predicting whether a horseball rider's lean-down pick-up succeeds from 12 saddle-sensor readings, BCE-with-logits, Adam lr 3e-3, 200 steps. The labels come from an older SVM pipeline that coded them -1/+1, and nobody remapped them to 0/1: for a -1 row the gradient sigmoid(z) + 1 never vanishes and for a +1 row the logit is pushed up forever, so the head's logits grow step after step without bound (the 'loss' even goes negative).",
)
def h320_horseball_signed_labels(ctx: Context) -> None:
    gen = seeded(32002)
    model = Trunk(12, 48)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scale = []
    base = _kinds(gen, 64, 12, 2, seed=32002)

    def batches():
        for x, y in base:
            yield x, 2.0 * y.float() - 1.0  # SVM-era coding, never remapped to {0, 1}

    def watch(step, out, x, y):
        scale.append(float(out.detach().abs().mean()))

    _loop(ctx, model, opt, batches(), 200, F.binary_cross_entropy_with_logits, watch=watch)
    ctx.check("the head's mean |logit| grows over 20x", _mean(scale[-10:]) > 20 * _mean(scale[:5]))
    ctx.check("and keeps growing late", _mean(scale[-10:]) > 1.3 * _mean(scale[140:150]))
    ctx.check("the BCE 'loss' goes negative", ctx.losses[-1] < 0)


# -- sundial: lr scaled for a global batch the run never has --------------------------------------


def _top_eig(model, loss_fn, x, y, iters=12):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sundial_gnomon_shadow_length_scaled_lr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh regressor (fc1, fc2, head) of a sundial gnomon's shadow length from 8 standardised sun-position and season readings, plain SGD, MSE, linear warm-up over 100 steps, 200 steps. The learning rate follows the linear-scaling rule lr = 0.02 * batch / 64 with batch read from the config's global batch (64 x 64 devices) although the run is on one device with batch 64: the warm-up heads for 1.28 instead of 0.02; while lr is small the run trains, then lr x the top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h320_sundial_global_batch_lr(ctx: Context) -> None:
    gen = seeded(32003)
    model = Trunk(8, 32, act=nn.Tanh)
    global_batch = 64 * 64  # the config's global batch; this run has one device
    peak = 0.02 * global_batch / 64
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=32003))
    products = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0 and math.isfinite(ctx.losses[-1] if ctx.losses else 0.0):
            products[step] = lr * _top_eig(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=32003), 200, F.mse_loss, before=before)
    early = [v for s, v in products.items() if s <= 20]
    ctx.check("lr x sharpness is under 2 early", bool(early) and max(early) < 2.0)
    ctx.check("lr x sharpness passes 2 later", max(products.values()) > 2.0)
    low = min(ctx.losses[:40])
    late = ctx.losses[40:]
    ctx.check(
        "the loss blows up after step 40 (over 100x its low before, or non-finite)",
        bool(late) and (not _finite(late) or max(late) > 100 * low),
    )
    ctx.check("it trained before the blow-up", _mean(ctx.losses[25:35]) < _mean(ctx.losses[:5]))


# -- hornussen: the evaluation hook leaves the EMA weights in the live model ----------------------

ONSET_HOR = 120


@scenario(
    family="hornussen_nouss_carry_ema_swap_silu_regressor",
    optimizer="RAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HOR,
    note="A SiLU regressor (fc1, fc2, head) of a hornussen nouss's carry distance (tens of metres, about 3 +- 2) from 10 standardised swing readings, RAdam lr 1e-2, MSE, 240 steps, with an EMA of the weights (decay 0.999) kept for evaluation. The evaluation hook at step 120 copies the EMA weights into the live model to evaluate and forgets to copy the training weights back; after 120 steps a 0.999 EMA is still mostly the initialisation, so the loss jumps back near its starting level on ordinary data, then the run recovers.",
)
def h320_hornussen_ema_swap(ctx: Context) -> None:
    gen = seeded(32004)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = []

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                ema[n].mul_(0.999).add_(p.detach(), alpha=0.001)
            if step == ONSET_HOR - 1:  # evaluation: swap in the EMA, never swap back
                before = _flat(model)
                for n, p in model.named_parameters():
                    p.copy_(ema[n])
                moved.append(float((_flat(model) - before).norm() / before.norm()))

    def batches():  # carry in tens of metres: about 3 +- 2
        for x, y in _readings(gen, 64, 10, seed=32004):
            yield x, 3.0 + 2.0 * y

    _loop(ctx, model, opt, batches(), 240, F.mse_loss, after=after)
    ls = ctx.losses
    pre = _mean(ls[ONSET_HOR - 20 : ONSET_HOR])
    ctx.check("the swap really changed the weights", bool(moved) and moved[0] > 0.1)
    ctx.check("the loss jumps over 4x at the swap", ls[ONSET_HOR] > 4 * pre)
    ctx.check("it recovers to under 1.5x the pre-swap level", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- korfball: masked mean pool divides by a zero frame count ------------------------------------

ONSET_KOR = 90


class MaskedMeanPool(nn.Module):
    def forward(self, h, mask):
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # no clamp


class PossessionNet(nn.Module):
    def __init__(self, d_in=6, hidden=32, classes=4):
        super().__init__()
        self.frame = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(hidden, classes)

    def forward(self, xm):
        x, mask = xm
        return self.head(self.pool(self.act(self.frame(x)), mask))


@scenario(
    family="korfball_possession_frames_masked_pool_classifier",
    optimizer="NAdam",
    cause="nonfinite",
    where=("pool",),
    diverges=ONSET_KOR,
    heldout=True,
    onset=ONSET_KOR,
    note="A possession-outcome classifier (frame Linear + GELU over up to 20 tracking frames of 6 player-position readings, a hand-written masked mean pool, head, 4 outcomes) for korfball, NAdam lr 2e-3, cross-entropy, up to 160 steps. The pool divides the masked sum by mask.sum(1) with no clamp; at step 90 the tracking export delivers a possession with zero valid frames (a clip cut at the buzzer), its mask sum is 0, 0/0 gives NaN in the pool and the loss is NaN at step 90.",
)
def h320_korfball_empty_possession(ctx: Context) -> None:
    gen = seeded(32005)
    model = PossessionNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    base = _kinds(gen, 32, 6, 4, seed=32005)
    empty = []

    def batches():
        for x, y in base:
            frames = x[:, None, :] + 0.5 * torch.randn(32, 20, 6, generator=gen)
            lengths = torch.randint(4, 21, (32,), generator=gen)
            mask = (torch.arange(20)[None] < lengths[:, None]).float()
            yield (frames, mask), y

    def alter(step, xm, y):
        if step == ONSET_KOR:
            xm[1][5] = 0.0  # a possession cut at the buzzer: no valid frame
        empty.append(int((xm[1].sum(1) == 0).sum()))
        return xm, y

    _loop(ctx, model, opt, batches(), 160, F.cross_entropy, classifier=True, alter=alter)
    ctx.check("the loss is first non-finite at the onset", _first_bad(ctx.losses) == ONSET_KOR)
    ctx.check("that batch holds a possession with zero frames", empty[ONSET_KOR] > 0)
    ctx.check("the run learned before", _mean(ctx.losses[80:90]) < 0.8 * _mean(ctx.losses[:5]))


# -- tinsmith: one batch of raw ADC counts ---------------------------------------------------------

ONSET_TIN = 110


@scenario(
    family="tinsmith_solder_joint_peel_strength_relu_regressor",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TIN,
    note="A ReLU regressor (fc1, fc2, head) of a tinsmith's soldered seam peel strength from 8 standardised readings (iron temperature, dwell, flux, sheet gauge...), SGD momentum 0.9 lr 1e-2, MSE, clipping at 1.0, 220 steps. One shard at step 110 comes from a bench whose logger wrote the iron-temperature column as raw 12-bit ADC counts (0-4095) instead of standardised values: the loss of that batch jumps by orders of magnitude, the clipped update is bounded and the run recovers.",
)
def h320_tinsmith_raw_adc_batch(ctx: Context) -> None:
    gen = seeded(32006)
    model = Trunk(8, 48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_TIN:
            x = x.clone()
            x[:, 0] = torch.randint(1800, 4096, (x.shape[0],), generator=gen).float()
        return x, y

    _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=32006), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ls = ctx.losses
    pre = _median(ls[ONSET_TIN - 20 : ONSET_TIN])
    ctx.check("the corrupted batch's loss is over 20x the median before", ls[ONSET_TIN] > 20 * pre)
    ctx.check(
        "its gradient is over 20x the median before",
        ctx.grad_norms[ONSET_TIN] > 20 * _median(ctx.grad_norms[ONSET_TIN - 20 : ONSET_TIN]),
    )
    ctx.check(
        "the run recovers to under 2x the pre-onset level",
        _mean(ls[-20:]) < 2 * _mean(ls[ONSET_TIN - 20 : ONSET_TIN]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- kabaddi: the manual loss scale is not divided out for one step ------------------------------

ONSET_KAB = 100
LOSS_SCALE = 128.0


@scenario(
    family="kabaddi_raid_touch_reach_manual_scale_silu_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KAB,
    note="A SiLU regressor (fc1, fc2, head) of a kabaddi raider's touch reach from 10 standardised tracking readings, SGD Nesterov momentum 0.9 lr 1e-2, Huber loss, clipping at 1.0, 200 steps. The loop carries a hand-rolled static loss scale of 128 left from an fp16 port: the loss is multiplied by 128 and the gradients are divided by 128 before clipping; at step 100 (a step flagged for a checkpoint) the branch that divides the gradients is skipped, so that one step's gradient is 128x on ordinary data; clipping bounds the update and the run recovers.",
)
def h320_kabaddi_skipped_unscale(ctx: Context) -> None:
    gen = seeded(32007)
    model = Trunk(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss, accumulate):
        return loss * LOSS_SCALE

    def unscale(step):
        if step == ONSET_KAB:  # checkpoint step: the unscale branch is skipped
            return
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(LOSS_SCALE)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=32007),
        200,
        F.huber_loss,
        backprop=backprop,
        unscale=unscale,
        clip=1.0,
    )
    g = ctx.grad_norms
    pre = _median(g[ONSET_KAB - 20 : ONSET_KAB])
    ctx.check("the gradient at the onset is over 50x the median before", g[ONSET_KAB] > 50 * pre)
    ctx.check(
        "the batch was ordinary (loss under 2x the median before)",
        ctx.losses[ONSET_KAB] < 2 * _median(ctx.losses[ONSET_KAB - 20 : ONSET_KAB]),
    )
    ctx.check(
        "the gradient is back under 3x afterwards",
        _median(g[ONSET_KAB + 5 : ONSET_KAB + 25]) < 3 * pre,
    )
    ctx.check("trained and finite", _fell(ctx.losses))


# -- theremin: the trunk waits for an unfreeze step beyond the run -------------------------------


@scenario(
    family="theremin_antenna_hand_pitch_unfreeze_gelu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A two-group GELU regressor (trunk fc1, fc2; head) of a theremin's pitch from 8 standardised antenna-capacitance and hand-distance readings, RMSprop lr 1e-3, MSE, LambdaLR with one lambda per group, 200 steps. The gradual-unfreezing plan copied from a 5000-step run keeps the trunk's lambda at 0 until step 2000; this run has 200 steps, so fc1 and fc2 never move (updates 0 against their weights) and only the head trains.",
)
def h320_theremin_unfreeze_never(ctx: Context) -> None:
    gen = seeded(32008)
    model = Trunk(8, 64, act=nn.GELU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop([{"params": trunk}, {"params": model.head.parameters()}], lr=1e-3)
    unfreeze_at = 2000  # from the 5000-step recipe
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 1.0 if s >= unfreeze_at else 0.0, lambda s: 1.0]
    )
    t0, h0 = _flat(nn.ModuleList([model.fc1, model.fc2])), _flat(model.head)
    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=32008), 200, F.mse_loss, sched=sched)
    t1, h1 = _flat(nn.ModuleList([model.fc1, model.fc2])), _flat(model.head)
    ctx.check(
        "fc1 and fc2 move under 1e-6 of their norm", float((t1 - t0).norm() / t0.norm()) < 1e-6
    )
    ctx.check("the head moves over 5% of its norm", float((h1 - h0).norm() / h0.norm()) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lapidary: randn init with no 1/sqrt(fan_in) ----------------------------------------------


class DeepTanh(nn.Module):
    """net.0, net.1 (Tanh), ..., net.{2L} the head; hand-written init."""

    def __init__(self, d_in=8, width=48, depth=14):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else width, width), nn.Tanh()]
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn_like(m.weight))  # meant / sqrt(fan_in)
                    m.bias.zero_()
        self.acts = []

    def forward(self, x):
        self.acts = []
        for m in self.net:
            x = m(x)
            if isinstance(m, nn.Linear) and x.requires_grad:
                x.retain_grad()
                self.acts.append(x)
        return x.squeeze(-1)


@scenario(
    family="lapidary_facet_angle_randn_init_deep_tanh_mlp",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges=None,
    heldout=True,
    note="A 14-layer tanh MLP (net.0 ... net.28, head net.28) predicting a gemstone facet's best cutting angle from 8 standardised refractive-index and crystal-axis readings, SGD momentum 0.9 lr 1e-3, MSE, clipping at 1.0, 150 steps. The hand-written init fills each weight with torch.randn and forgot the 1/sqrt(fan_in) (std 1 instead of about 0.14, a gain of about 7): the net sits deep in the chaotic phase and the backward signal grows layer after layer towards the input; the first layers' gradient is orders of magnitude above the last hidden layer's.",
)
def h320_lapidary_randn_init(ctx: Context) -> None:
    gen = seeded(32009)
    model = DeepTanh()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def unscale(step):
        a = model.acts
        if a and a[0].grad is not None:
            ratios.append(float(a[0].grad.norm() / (a[-2].grad.norm() + 1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=32009),
        150,
        F.mse_loss,
        unscale=unscale,
        clip=1.0,
    )
    ctx.check("net.0's output gradient is over 20x the last hidden layer's", _median(ratios) > 20)
    ctx.check("it stays so late in the run", _median(ratios[-20:]) > 20)
    ctx.check("the gradient norm is far above the clip", _median(ctx.grad_norms) > 10)


# -- fog signal: temperature annealed the wrong way -----------------------------------------------


@scenario(
    family="fog_signal_horn_code_annealed_temperature_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, fc2, head) of a lighthouse fog-signal horn code (6 codes) from 16 standardised blast-duration and pitch readings, Adamax lr 2e-3, cross-entropy on logits divided by a temperature, 200 steps. The temperature is meant to anneal from 1.0 up to 2.0 for calibration (T = 1 * 1.005 ** step) and is written T = 1 * 0.97 ** step: by step 100 it is below 0.05 and the logits are multiplied by over 20, so the float32 softmax of most rows rounds the target to exactly 1.0.",
)
def h320_fog_horn_temperature(ctx: Context) -> None:
    gen = seeded(32010)
    model = Trunk(16, 64, out=6, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    state = {"T": 1.0}
    collapsed = []

    def before(step):
        state["T"] = 1.0 * 0.97**step  # meant 1.005 ** step

    def forward(m, x):
        return m(x) / state["T"]

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=32010, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        forward=forward,
        watch=watch,
    )
    ctx.check("almost no row collapsed early", _mean(collapsed[:10]) < 0.05)
    ctx.check("over a quarter of rows' softmax is exactly 1.0 late", _mean(collapsed[-20:]) > 0.25)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------


@scenario(
    family="sepak_takraw_rally_touch_tied_embedding_decoder_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written decoder-only transformer LM (tok, pos, two pre-LN blocks with causal attention, ln_f, lm_head tied to tok) over generated sepak takraw rally-touch token sequences (an 8-touch motif repeated with 5% noise), AdamW lr 3e-3 weight decay 0.01 (none on norms and biases), linear warm-up over 20 steps then cosine decay, clipping at 1.0, cross-entropy, 200 steps.",
)
def h320_sepak_takraw_tied_lm(ctx: Context) -> None:
    gen = seeded(32011)
    model = TokenLM(vocab=24, tied=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200

    def lr_at(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _loop(ctx, model, opt, _phrase_tokens(gen, 16, 32, 24), steps, _lm_loss, sched=sched, clip=1.0)
    ctx.check("weights are tied", model.lm_head.weight.data_ptr() == model.tok.weight.data_ptr())
    ctx.check("the loss fell by over half, finite", _fell(ctx.losses, ratio=0.5))


class ChatterNet(nn.Module):
    def __init__(self, channels=3, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _chatter(gen, batch, classes=4, length=48):
    """Blade-chatter vibration traces: each class a different chatter frequency plus noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = (0.05 + 0.06 * y.float())[:, None, None]
        phase = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        x = torch.sin(2 * math.pi * freq * t + phase) + 0.6 * torch.randn(
            batch, 3, length, generator=gen
        )
        yield x, y


@scenario(
    family="zamboni_blade_chatter_fp16_gelu_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, conv2, head) of an ice resurfacer's blade-chatter kind (4 kinds) from 48 samples of 3 vibration channels, fp16 autocast with a torch.amp.GradScaler, Adam under OneCycleLR (max 5e-3), label smoothing 0.1, clipping at 1.0 after unscaling, 150 steps.",
)
def h320_zamboni_fp16_control(ctx: Context) -> None:
    gen = seeded(32012)
    model = ChatterNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _chatter(gen, 32),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell, finite", _fell(ctx.losses, ratio=0.7))
    ctx.check("the scale stayed finite and positive", _finite(ctx.scales) and min(ctx.scales) > 0)


class GaussianNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-6, 6)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="st_elmos_fire_corona_glow_duration_gaussian_nll_net",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a heteroscedastic SiLU net (fc1, fc2, mean, log_var clamped to [-6, 6]) of St Elmo's fire glow duration on a ship's mast from 8 standardised field-strength and humidity readings with noise that grows with one reading, Gaussian NLL, Adagrad lr 5e-2, accumulation over 2, clipping at 1.0, ReduceLROnPlateau, 150 steps.",
)
def h320_st_elmo_gaussian_control(ctx: Context) -> None:
    gen = seeded(32013)
    model = GaussianNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    base = _readings(gen, 32, 8, seed=32013)

    def batches():
        for x, y in base:
            yield x, y + 0.2 * (1 + x[:, 1].abs()) * torch.randn(len(y), generator=gen)

    _loop(ctx, model, opt, batches(), 150, _gauss_nll, sched=sched, accumulate=2, clip=1.0)
    ctx.check(
        "the NLL fell, finite",
        _finite(ctx.losses) and _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3,
    )
