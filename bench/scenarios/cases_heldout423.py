"""Held-out set 423 (``h423_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a curling skip-call hierarchical-softmax language model whose resumed step reads a loss
weight in percent (one gradient burst), an ice-yacht runner-frost net whose log-frost feature has
no clamp (log 0 on a bare-ice reading), a lute fret-buzz attention locator on AdamW with lr typed
3e-2 for 3e-3 (attention logits grow), a thatch-reed bundle-density ReLU regressor on NAdam with
lr typed 3e-1 for 3e-3 (ReLUs die), a nautilus siphuncle-pressure tanh regressor whose StepLR
gamma is typed 10 for 0.1 (past 2/sharpness), a cooper barrel hoop-drive deep ReLU MLP whose init
gain is typed 2.0 for sqrt(2) (gradients grow through depth), a tanner bark-pit tannin regressor
whose encoder group lr is left at 0 (a frozen encoder), a coppice charcoal-yield SiLU regressor
fed one kiln's shard in grams (one corrupted batch), a glacier tidewater calving-rate regressor
whose L2 penalty is subtracted (a slow climb of the loss) and a sailmaker canvas-weave classifier
whose temperature is typed 0.01 for 1.0 (softmax saturates).

Controls: a hobnail boot-pattern hierarchical-softmax LM (balanced tree, AdamW, linear warm-up,
clipping), a dowsing-rod twitch fp16 Conv1d classifier (GradScaler, SGD Nesterov under
OneCycleLR, label smoothing, clipping) and a sand-yacht gust Gaussian-NLL regressor (RMSprop with
a no-decay bias group, ReduceLROnPlateau, accumulation, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.5 * torch.sin(2 * x[:, 1]) > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _MLP(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- a hierarchical-softmax language model ---------------------------------------------------------


def _balanced_tree(vocab):
    """Heap-ordered complete binary tree over a power-of-two vocabulary: word w is leaf
    vocab + w; its path is the internal nodes (0-based) from the root and the codes the turns."""
    depth = int(math.log2(vocab))
    paths = torch.zeros(vocab, depth, dtype=torch.long)
    codes = torch.zeros(vocab, depth)
    for w in range(vocab):
        n = vocab + w
        k = depth - 1
        while n > 1:
            paths[w, k] = n // 2 - 1
            codes[w, k] = float(n % 2)
            n //= 2
            k -= 1
    return paths, codes


class _HSoftmaxLM(nn.Module):
    """Reads the previous ``context`` bytes, mixes them into a hidden state, and scores a word by
    one sigmoid decision per internal node along its path (hierarchical softmax)."""

    def __init__(self, vocab=128, dim=48, context=4):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(context * dim, dim)
        self.act = nn.Tanh()
        self.nodes = nn.Embedding(vocab - 1, dim)
        self.node_bias = nn.Embedding(vocab - 1, 1)
        nn.init.normal_(self.tok.weight, std=0.1)
        nn.init.zeros_(self.nodes.weight)
        nn.init.zeros_(self.node_bias.weight)
        paths, codes = _balanced_tree(vocab)
        self.register_buffer("paths", paths)
        self.register_buffer("codes", codes)

    def forward(self, x):
        return self.act(self.mix(self.tok(x[:, -self.context :]).flatten(1)))

    def path_loss(self, h, y):
        nodes = self.paths[y]
        s = (self.nodes(nodes) * h[:, None, :]).sum(-1) + self.node_bias(nodes).squeeze(-1)
        bce = F.binary_cross_entropy_with_logits(s, self.codes[y], reduction="none")
        return bce.sum(-1).mean()


def _next_byte(gen, batch, context=4):
    """(previous bytes, next byte) pairs from the standard-library text stream."""
    for x, y in text_batches(gen, batch=batch, length=context):
        yield x, y[:, -1]


@scenario(
    family="curling_skip_call_hierarchical_softmax_lm",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Curling skip-call language model with a hand-written hierarchical softmax (a balanced "
    "binary tree over 128 byte tokens, one sigmoid decision per node along the word's path), SGD "
    "with momentum 0.9, clipping at 5. The job is resumed at step 150 and that step reads the "
    "LM loss weight from the old config in percent (100 for 1.0): one 100x gradient burst on an "
    "ordinary loss, clipped, and the run goes on.",
)
def h423_curling_hsoftmax_loss_weight(ctx) -> None:
    gen = seeded(4231)
    model = _HSoftmaxLM(128, 48, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    data = _next_byte(gen, 64)

    def backprop(step, loss):
        return loss * (100.0 if step == 150 else 1.0)  # percent read as a fraction at the resume

    _loop(ctx, model, opt, data, 220, model.path_loss, backprop=backprop, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at 150 over 30x the median of 100..149", gn[150] > 30 * _median(gn[100:150])
    )
    ctx.check(
        "logged loss at 150 ordinary (under 1.5x the median)", ls[150] < 1.5 * _median(ls[100:150])
    )
    ctx.check("loss fell before the burst", _mean(ls[140:150]) < 0.8 * _mean(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="hobnail_boot_pattern_balanced_tree_softmax_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hobnail boot-pattern language model with a hand-written hierarchical softmax over a "
    "balanced binary tree of 128 byte tokens; AdamW with weight decay 0.01 and a linear warm-up "
    "over 40 steps then cosine decay, clipping at 1.0. A healthy control.",
)
def h423_hobnail_hsoftmax_control(ctx) -> None:
    gen = seeded(4232)
    model = _HSoftmaxLM(128, 48, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 240, 40

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    data = _next_byte(gen, 64, 5)
    _loop(ctx, model, opt, data, steps, model.path_loss, sched=sched, clip=1.0)
    ls = ctx.losses
    ctx.check("loss fell to under 0.75x its start", _fell(ls, 10, 0.75))
    ctx.check("finite", _finite(ls))


# -- an unclamped log feature ----------------------------------------------------------------------


class _LogFrost(nn.Module):
    """log of the frost depth (mm) on the ice, column 0; the other columns pass through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)  # the bug: no clamp_min


class _RunnerNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.log_frost = _LogFrost()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.log_frost(x)))))
        return self.head(h).squeeze(-1)


def _runner_speed(gen, batch, d_in, seed, bare_at=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in - 1, generator=g)
    n = 0
    while True:
        frost = torch.exp(0.5 * torch.randn(batch, 1, generator=gen)) * 2.0
        if n == bare_at:
            frost[3, 0] = 0.0  # the first bare-ice reading of the season
        rest = torch.randn(batch, d_in - 1, generator=gen)
        y = -0.5 * torch.log(frost.clamp_min(1e-3)).squeeze(-1) + torch.tanh(rest @ w / 3)
        n += 1
        yield torch.cat([frost, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="ice_yacht_runner_frost_log_feature_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_frost",),
    diverges=110,
    heldout=True,
    onset=110,
    note="Ice-yacht runner-speed regressor (SiLU MLP, MSE, Adamax) whose first module takes "
    "torch.log of the frost depth in mm with no clamp. The batch at step 110 holds the season's "
    "first bare-ice reading, 0.0 mm: log 0 = -inf and the loss is NaN at step 110.",
)
def h423_ice_yacht_log_frost(ctx) -> None:
    gen = seeded(4233)
    model = _RunnerNet(8)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    data = _runner_speed(gen, 64, 8, seed=233, bare_at=110)
    seen = {}

    def hook(module, inputs, output):
        if not torch.isfinite(output).all() and "step" not in seen:
            seen["step"] = len(ctx.losses)

    model.log_frost.register_forward_hook(hook)
    _loop(ctx, model, opt, data, 200, F.mse_loss)
    ls = ctx.losses
    ctx.check("finite through step 109", _finite(ls[:110]))
    ctx.check("loss non-finite at step 110", _first_bad(ls) == 110)
    ctx.check("log_frost's output is the first non-finite, at step 110", seen.get("step") == 110)
    ctx.check("loss fell before", _mean(ls[100:110]) < 0.8 * _mean(ls[:10]))


# -- attention logits growing ----------------------------------------------------------------------


class _Attention(nn.Module):
    """Single-head self-attention without QK normalisation; keeps the last max |q.k/sqrt(d)|."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.max_logit = float(logits.detach().abs().max())
        return self.out(torch.softmax(logits, -1) @ v)


class _FretLocator(nn.Module):
    """Which of 12 fret sounds buzzes: the token at the marked position, read from position 0."""

    def __init__(self, vocab=16, dim=32, length=12, classes=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.mark = nn.Embedding(2, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = _Attention(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in (self.tok, self.mark, self.pos):
            nn.init.normal_(m.weight, std=0.1)
        for m in (self.attn.q, self.attn.k):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, x):
        tok, mark = x[..., 0], x[..., 1]
        h = self.tok(tok) + self.mark(mark) + self.pos(torch.arange(tok.shape[1]))
        return self.head(self.norm(self.attn(h)[:, 0]))


def _fret_buzz(gen, batch, length=12, vocab=16):
    while True:
        tok = torch.randint(0, vocab, (batch, length), generator=gen)
        at = torch.randint(1, length, (batch,), generator=gen)
        mark = torch.zeros(batch, length, dtype=torch.long)
        mark[torch.arange(batch), at] = 1
        yield torch.stack([tok, mark], -1), tok[torch.arange(batch), at]


def _fret_run(lr, steps, ctx=None):
    gen = seeded(4234)
    model = _FretLocator()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = _fret_buzz(gen, 64)
    logits = []

    def after(step):
        logits.append(model.attn.max_logit)

    _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        F.cross_entropy,
        classifier=True,
        after=after,
        attach=ctx is not None,
    )
    return logits


@scenario(
    family="lute_fret_buzz_attention_locator",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Lute fret-buzz locator: one hand-written self-attention layer without QK normalisation "
    "reads a 12-fret sequence and must copy the marked fret's sound to position 0. AdamW with no "
    "weight decay and lr typed 3e-2 for 3e-3: q and k grow without check and the attention "
    "logits q.k/sqrt(d) climb past 100 (the attention softmax saturates), several times what "
    "the intended lr reaches.",
)
def h423_lute_fret_attention_lr(ctx) -> None:
    logits = _fret_run(3e-2, 200, ctx)  # typed for 3e-3
    ref = _fret_run(3e-3, 200)
    ctx.check("max attention logit over 20x its value at step 5", max(logits) > 20 * logits[5])
    ctx.check("max attention logit over 100 in the last 20 steps", min(logits[-20:]) > 100)
    ctx.check(
        "climbed: steps 60..79 over 2x steps 20..39",
        _mean(logits[60:80]) > 2 * _mean(logits[20:40]),
    )
    ctx.check("over 3x what lr 3e-3 reaches", _mean(logits[-20:]) > 3 * _mean(ref[-20:]))
    ctx.check("finite", _finite(ctx.losses))


# -- dying ReLUs -----------------------------------------------------------------------------------


def _reed_run(lr, steps, ctx=None, seed=4235):
    gen = seeded(seed)
    model = _MLP(10, 64, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    data = _readings(gen, 64, 10, seed=235, scale=2.0)
    probe = next(_readings(torch.Generator().manual_seed(5), 512, 10, seed=235, scale=2.0))[0]
    dead = []

    def after(step):
        with torch.no_grad():
            h = model.fc2(model.act1(model.fc1(probe)))
            dead.append(dead_fraction(h))

    losses = _loop(ctx, model, opt, data, steps, F.mse_loss, after=after, attach=ctx is not None)
    return dead, losses


@scenario(
    family="thatch_reed_bundle_density_dying_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Thatch-reed bundle-density regressor (ReLU MLP, MSE) on NAdam with lr typed 3e-1 for "
    "3e-3. The first large steps push fc2's pre-activations negative for every input: most of "
    "act2's units die and never come back, and the fit stalls.",
)
def h423_thatch_reed_dead_relu(ctx) -> None:
    dead, losses = _reed_run(3e-1, 200, ctx)
    ref, _ = _reed_run(3e-3, 200)
    ctx.check("over 40% of act2's units dead over the last 50 steps", _mean(dead[-50:]) > 0.4)
    ctx.check("under 20% dead at 3e-3", _mean(ref[-50:]) < 0.2)
    ctx.check("dead share grew from the start", _mean(dead[-50:]) > dead[0] + 0.2)
    ctx.check("finite", _finite(ctx.losses))


# -- a scheduler that multiplies -------------------------------------------------------------------


@scenario(
    family="nautilus_siphuncle_pressure_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=80,
    note="Nautilus siphuncle-pressure regressor (tanh MLP, MSE, full 256-row batches) on plain "
    "SGD under StepLR(step_size=80) whose gamma is typed 10 for 0.1. At step 80 the lr is "
    "multiplied instead of divided: lr x sharpness goes from under 2 to past 2 and the loss "
    "blows up.",
)
def h423_nautilus_steplr_gamma(ctx) -> None:
    gen = seeded(4236)
    model = _MLP(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)  # typed for 0.1
    data = _readings(gen, 256, 8, seed=236)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=236))
    edge = {}

    def before(step):
        if step in (0, 79, 80):
            edge[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, data, 160, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at steps 0 and 79", edge[0] < 2 and edge[79] < 2)
    ctx.check("lr x sharpness past 2 at step 80", edge[80] > 2)
    ok = [v for v in ls if math.isfinite(v)]
    ctx.check(
        "loss blows up over 100x its lowest after 80",
        max(ok[80:]) > 100 * min(ok[:80]) or _first_bad(ls) is not None,
    )
    ctx.check("finite and falling before 80", _fell(ls[:80], 10, 0.8))


# -- gradients growing through depth ---------------------------------------------------------------


class _DeepReLU(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for m in self.layers:
            x = m(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


def _hoop_ratio(model, x, y):
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first = float(model.outs[0].grad.norm())
    last = float(model.outs[-1].grad.norm())
    model.zero_grad()
    return first / max(last, 1e-30)


@scenario(
    family="cooper_barrel_hoop_drive_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Cooper barrel hoop-drive force regressor, a 14-layer ReLU MLP (MSE, SGD Nesterov, "
    "clipping at 1.0) whose He init was written std = gain / sqrt(fan_in) with gain typed 2.0 "
    "for sqrt(2): each layer multiplies the backward signal by about sqrt(2), so dL/d(output of "
    "layers.0) is over 10x dL/d(output of the last layer).",
)
def h423_cooper_hoop_init_gain(ctx) -> None:
    gen = seeded(4237)
    model = _DeepReLU(8, 48, 14, gain=2.0)  # typed for math.sqrt(2)
    ref = _DeepReLU(8, 48, 14, gain=math.sqrt(2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    data = _readings(gen, 64, 8, seed=237)
    probe = next(_readings(torch.Generator().manual_seed(3), 256, 8, seed=237))
    ratios = [_hoop_ratio(model, *probe)]

    def after(step):
        if step % 20 == 19:
            ratios.append(_hoop_ratio(model, *probe))

    _loop(ctx, model, opt, data, 160, F.mse_loss, after=after, clip=1.0)
    ctx.check("dL/d layers.0 over 10x dL/d last layer at the start", ratios[0] > 10)
    ctx.check("and in median through the run", _median(ratios) > 10)
    ctx.check("under 5x at gain sqrt(2)", _hoop_ratio(ref, *probe) < 5)
    ctx.check("finite", _finite(ctx.losses))


# -- a frozen encoder ------------------------------------------------------------------------------


class _TanninNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(-1)


@scenario(
    family="tanner_bark_pit_tannin_frozen_encoder_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="Tanner bark-pit tannin-uptake regressor (GELU encoder + linear head, Huber loss, Adam "
    "with two param groups). The config sets encoder_lr: 0 for a 'linear-probe warm-up' that a "
    "callback should lift to 1e-3 at step 20; the callback was never registered, so the encoder "
    "receives gradients and never moves while the head trains.",
)
def h423_tanner_encoder_lr_zero(ctx) -> None:
    gen = seeded(4238)
    model = _TanninNet(10)
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "lr": 0.0},  # never lifted to 1e-3
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    data = _readings(gen, 64, 10, seed=238, scale=1.5)
    enc0 = model.encoder[0].weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    enc_grads = []

    def after(step):
        g = model.encoder[0].weight.grad
        enc_grads.append(0.0 if g is None else float(g.norm()))

    _loop(ctx, model, opt, data, 200, F.huber_loss, after=after)
    ctx.check(
        "encoder.0 moves under 1e-6 of its norm", _rel_change(enc0, model.encoder[0].weight) < 1e-6
    )
    ctx.check("while receiving gradients", _median(enc_grads) > 1e-4)
    ctx.check("the head moves over 5%", _rel_change(head0, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- one corrupted shard ---------------------------------------------------------------------------


@scenario(
    family="coppice_charcoal_kiln_yield_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=130,
    note="Coppice charcoal kiln-yield regressor (SiLU MLP, MSE, RMSprop, clipping at 2). The "
    "batch at step 130 comes from one kiln whose logger writes yield in grams instead of kg: its "
    "targets are 1000x. Loss and gradient jump for that one batch and the run recovers.",
)
def h423_coppice_grams_shard(ctx) -> None:
    gen = seeded(4239)
    model = _MLP(9, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 9, seed=239, scale=2.0)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 130 else (x, y)

    _loop(ctx, model, opt, data, 230, F.mse_loss, alter=alter, clip=2.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 130 over 100x the median of 80..129", ls[130] > 100 * _median(ls[80:130]))
    ctx.check("gradient at 130 over 20x the median of 80..129", gn[130] > 20 * _median(gn[80:130]))
    ctx.check(
        "recovers: last 20 steps under 2x the pre-onset level",
        _mean(ls[-20:]) < 2 * _mean(ls[110:130]),
    )
    ctx.check("finite", _finite(ls))


# -- an L2 penalty with its sign flipped -----------------------------------------------------------


@scenario(
    family="glacier_tidewater_calving_rate_l2_sign_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Glacier tidewater calving-rate regressor (tanh MLP, MSE, NAdam) with a hand-written L2 "
    "penalty (wd = 0.5) added to the loss as loss - 0.5 * wd * sum ||w||^2 (the sign flipped when the "
    "penalty was moved into a helper). The weights inflate steadily and the data loss slowly "
    "climbs past where it started.",
)
def h423_glacier_l2_sign(ctx) -> None:
    gen = seeded(4240)
    model = _MLP(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    data = _readings(gen, 64, 8, seed=240)
    wd = 0.5
    norms = []

    def backprop(step, loss):
        l2 = sum((p * p).sum() for p in model.parameters())
        return loss - 0.5 * wd * l2  # the bug: should be + 0.5 * wd * l2

    def after(step):
        norms.append(float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, data, 300, F.mse_loss, backprop=backprop, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    ctx.check(
        "loss over the last 20 steps over 3x its lowest 10-step mean",
        _mean(ls[-20:]) > 3 * min(means),
    )
    ctx.check(
        "slow: no 10-step mean over 2.5x the one before",
        all(b < 2.5 * a for a, b in zip(means, means[1:], strict=False)),
    )
    ctx.check("weight norm over 2x its start", norms[-1] > 2 * norms[0])
    ctx.check("finite", _finite(ls))


# -- a temperature typo ----------------------------------------------------------------------------


class _WeaveNet(nn.Module):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def raw(self, x):
        return self.head(self.act1(self.fc1(x)))

    def forward(self, x):
        return self.raw(x) / self.temperature


@scenario(
    family="sailmaker_canvas_weave_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sailmaker canvas-weave grade classifier (GELU MLP, cross-entropy, SGD with momentum) "
    "whose logits are divided by a temperature copied from a distillation config, 0.01 for 1.0. "
    "Logits are 100x: most rows' softmax rounds the target probability to exactly 1.0.",
)
def h423_sailmaker_temperature(ctx) -> None:
    gen = seeded(4241)
    model = _WeaveNet(12, 64, 6, temperature=0.01)  # copied for 1.0
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    data = _grades(gen, 64, 12, 6, seed=241, spread=0.8)
    px, py = next(_grades(torch.Generator().manual_seed(9), 256, 12, 6, seed=241, spread=0.8))
    bad, good = [], []

    def after(step):
        with torch.no_grad():
            raw = model.raw(px)
            bad.append(collapsed_fraction(raw / 0.01, py))
            good.append(collapsed_fraction(raw, py))

    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check(
        "over half the rows' target probability exactly 1.0 (last 30)", _mean(bad[-30:]) > 0.5
    )
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(good[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


class _RodConv(nn.Module):
    def __init__(self, channels=2, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _rod_twitch(gen, batch, length=48, classes=4):
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = (2.0 + 2.5 * y.float())[:, None]
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        a = torch.sin(6.28 * freq * t + phase)
        b = torch.cos(6.28 * freq * t + phase) * (y[:, None] % 2 * 2 - 1).float()
        x = torch.stack([a, b], 1) + 0.4 * torch.randn(batch, 2, length, generator=gen)
        yield x, y


@scenario(
    family="dowsing_rod_twitch_fp16_onecycle_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dowsing-rod twitch classifier (ReLU Conv1d on two noisy grip-sensor channels) under "
    "fp16 autocast with a GradScaler, SGD Nesterov with weight decay under OneCycleLR, label "
    "smoothing 0.1, clipping at 1.0. A healthy control.",
)
def h423_dowsing_fp16_control(ctx) -> None:
    gen = seeded(4242)
    model = _RodConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    data = _rod_twitch(gen, 64)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("loss fell to under 0.6x its start", _fell(ls, 10, 0.6))
    ctx.check("finite", _finite(ls))


class _GustNLL(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), F.softplus(self.var(h)) + 1e-4], -1)


def _gust_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="sand_yacht_gust_heteroscedastic_nll_net",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sand-yacht gust-speed regressor with a Gaussian NLL (softplus variance head, noisy "
    "targets), RMSprop with weight decay on the weights and a no-decay bias group, "
    "ReduceLROnPlateau on a held-out batch, accumulation over 2 micro-batches, clipping at 1.0. "
    "A healthy control.",
)
def h423_sand_yacht_nll_control(ctx) -> None:
    gen = seeded(4243)
    model = _GustNLL(8)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RMSprop(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    data = _readings(gen, 32, 8, seed=243, noise=0.3, scale=1.5)
    hx, hy = next(
        _readings(torch.Generator().manual_seed(11), 256, 8, seed=243, noise=0.3, scale=1.5)
    )

    def plateau():
        with torch.no_grad():
            return float(_gust_nll(model(hx), hy))

    _loop(
        ctx, model, opt, data, 200, _gust_nll, sched=sched, plateau=plateau, accumulate=2, clip=1.0
    )
    ls = ctx.losses
    ctx.check("NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
