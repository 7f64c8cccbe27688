"""Held-out set 341 (``h341_``): hand-written models of trades, sports, games and natural
phenomena not covered before: a backgammon checker-move rotary transformer whose QK-LayerNorm is
switched off by a misspelt config flag while keeping the lr tuned for it (attention logits grow),
a slingshot pebble-range fp16 regressor that adds back the millimetre mean and spread inside the
autocast region (overflow), a glacier-mill meltwater-depth regressor fed one shard logged in
centimetres (one corrupted batch), a surf-life-saving rescue-kind ReLU BCE tagger whose warm-up
lambda forgets to divide by the warm-up length (ReLUs die), a table-tennis rubber-spin cosine
classifier whose scale is typed 300 for 30 (softmax saturates), a go-stone atari embedding net
whose embedding group's lr is typed 3e-8 for 3e-2 (embeddings frozen), a halo-display arc-count
Poisson net whose log-rate has no clamp (log 0, NaN), a high-dive splash deep ReLU regressor
with orthogonal init gain 2 (gradients grow through depth), an archery arrow-spine Huber
regressor whose manual loss scale is not undone on the resume step (one gradient burst), a
polo-pony stride tanh regressor whose OneCycleLR max_lr is typed 2.0 for 0.02 (past
2/sharpness), and three controls (a sled-dog bootie-wear classifier under bf16 autocast with
AdamW and z-loss; a chess-clock increment GRU Huber regressor with Adagrad, accumulation and
ReduceLROnPlateau; a domino-run rotary transformer with QK-LayerNorm, tied weights, warm-up,
cosine decay, clipping and label smoothing).

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
    watch=None,
    after=None,
    backprop=None,
    unscale=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=None,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``unscale(step)`` runs between backward and the gradient
    reading, ``after(step)`` runs after the optimizer step, ``plateau()`` gives the validation
    loss for a ReduceLROnPlateau ``sched``, ``amp`` is the autocast dtype (or None). Stops after
    a non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
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


# -- a hand-written rotary transformer over generated move sequences -----------------------------


def _rope(x: torch.Tensor) -> torch.Tensor:
    """Rotary position encoding on (batch, heads, time, head_dim)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class RotaryAttention(nn.Module):
    """Causal multi-head attention with rotary q/k and optional QK-LayerNorm; keeps the largest
    |q.k/sqrt(d)| of its last forward in ``peak``."""

    def __init__(self, dim, heads, qk_norm):
        super().__init__()
        self.heads = heads
        self.hd = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, self.hd).transpose(1, 2)
            for m in (self.q, self.k, self.v)
        )
        q, k = _rope(self.q_norm(q)), _rope(self.k_norm(k))
        att = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        self.peak = float(att.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class RotaryBlock(nn.Module):
    def __init__(self, dim, heads, qk_norm):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RotaryAttention(dim, heads, qk_norm)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class RotaryLM(nn.Module):
    """Token embedding (no position table: positions come from the rotary q/k), pre-LN blocks,
    final LayerNorm and a head that may share the embedding's weight."""

    def __init__(self, vocab, dim=32, heads=2, layers=2, qk_norm=True, tied=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(RotaryBlock(dim, heads, qk_norm) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _repeat_sequences(gen, batch, half, vocab):
    """A generated record of moves that is replayed: a random first half, the same moves again
    (an induction task: the second half is predictable only by attending back)."""
    while True:
        first = torch.randint(1, vocab, (batch, half), generator=gen)
        seq = torch.cat([torch.zeros(batch, 1, dtype=torch.long), first, first], 1)
        yield seq[:, :-1], seq[:, 1:]


def _lm_loss(half, smoothing=0.0):
    def loss(out, y):
        # only the replayed half is scored: the first half is noise
        out, y = out[:, half:], y[:, half:]
        return F.cross_entropy(
            out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=smoothing
        )

    return loss


DIV_BG = None


@scenario(
    family="backgammon_checker_move_rotary_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=DIV_BG,
    heldout=True,
    note="A hand-written two-block pre-LN transformer with rotary position encodings on q and k (no position table) over generated backgammon move records (24 random checker moves from a vocabulary of 32, then the same moves replayed; only the replay is scored, so it is learnable by attending back), AdamW at 1e-2 with no weight decay, cross-entropy, 200 steps. The model was written with QK-LayerNorm and the lr was tuned with it; the config sets 'qknorm: true' while the code reads cfg.get('qk_norm', False), so q_norm and k_norm are Identity and nothing bounds q.k: as the heads learn to look back the attention logits q.k/sqrt(d) grow by well over an order of magnitude and the softmax turns almost one-hot.",
)
def h341_backgammon_qk_norm_flag_misspelt(ctx: Context) -> None:
    gen = seeded(34101)
    cfg = {"qknorm": True}
    model = RotaryLM(32, dim=32, heads=2, layers=2, qk_norm=cfg.get("qk_norm", False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(max(b.attn.peak for b in model.blocks))

    _loop(
        ctx,
        model,
        opt,
        _repeat_sequences(gen, 32, 12, 32),
        200,
        _lm_loss(12),
        watch=watch,
    )
    ctx.check("QK-LayerNorm is off", isinstance(model.blocks[0].attn.q_norm, nn.Identity))
    ctx.check(
        "the largest attention logit grew over 20x from step 0 (last 20 steps)",
        _mean(peaks[-20:]) > 20 * peaks[0],
    )
    ctx.check("the largest attention logit is over 30 late in the run", _mean(peaks[-20:]) > 30)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- slingshot: the millimetre mean and spread are added back inside the fp16 region ------------


class PebbleRange(Trunk):
    """A GELU trunk predicting a standardised range; the forward de-standardises to mm."""

    MEAN_MM, SD_MM = 52000.0, 9000.0

    def forward(self, x):
        z = self.head(self.features(x)).squeeze(-1)
        return z * self.SD_MM + self.MEAN_MM  # fp16 under autocast: over 65504 mm it is inf


def _pebbles(gen, batch, seed):
    """Nine standardised readings (band draw, pouch, pebble mass, angle); range in mm."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        m = 52.0 + 9.0 * (x @ w / 3.0) + 0.3 * torch.randn(batch, generator=gen)
        yield x, 1000.0 * m


DIV_SL = 10


@scenario(
    family="slingshot_pebble_range_fp16_destandardised_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=DIV_SL,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a slingshot pebble's range from nine standardised readings of band draw, pouch and pebble, Adam at 3e-3, fp16 autocast with a torch.amp.GradScaler, MSE in m^2 (the mm error divided by 1e6), 200 steps planned. The range-finder logs millimetres and the forward adds back the dataset's mean and spread (z * 9000 + 52000 mm) inside the autocast region, so the de-standardised prediction is fp16: once the head learns the spread, the longest shots (over 65.504 m) overflow fp16's 65504 to inf and the loss is inf at that step (the same batch in fp32 is finite); the run stops there.",
)
def h341_slingshot_fp16_destandardise_overflow(ctx: Context) -> None:
    gen = seeded(34102)
    model = PebbleRange(9, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    last = {}

    def watch(step, out, x, y):
        last["x"] = x

    def loss_fn(out, y):
        return F.mse_loss(out, y) / 1e6

    n = _loop(
        ctx,
        model,
        opt,
        _pebbles(gen, 64, 341),
        200,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is inf at the step it stops", bad == n - 1 and math.isinf(ctx.losses[-1]))
    with torch.no_grad():
        fp32 = model(last["x"])
    ctx.check(
        "the same batch in fp32 is finite and its largest prediction is over 65504 mm",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check("the run stops at the declared step", bad == DIV_SL)


# -- glacier mill: one shard of the depth log is in centimetres ----------------------------------

ONSET_GM = 120


@scenario(
    family="glacier_mill_meltwater_depth_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a glacier mill's (moulin's) meltwater depth (standardised) from ten standardised readings of air temperature, insolation and surface melt, SGD with momentum 0.9 at 1e-2, gradient clipping at 1.0, MSE, 200 steps. At step 120 the loader serves one shard from a station whose logger wrote centimetres instead of metres and that was never run through the standardiser: that batch's readings are 100x and its targets 100x, its loss and gradient are orders of magnitude above the rest for that one step; clipping bounds the update and the run recovers on the next clean batches.",
    onset=ONSET_GM,
)
def h341_glacier_mill_centimetre_shard(ctx: Context) -> None:
    gen = seeded(34103)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_GM:
            return 100.0 * x, 100.0 * y
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 341), 200, F.mse_loss, alter=alter, clip=1.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at the onset is over 50x the median before it",
        g[ONSET_GM] > 50 * _median(g[:ONSET_GM]),
    )
    ctx.check(
        "the loss at the onset is over 100x the median before it",
        ls[ONSET_GM] > 100 * _median(ls[:ONSET_GM]),
    )
    ctx.check(
        "the last 20 steps' loss is under 2x the 20 steps before the onset",
        _mean(ls[-20:]) < 2 * _mean(ls[ONSET_GM - 20 : ONSET_GM]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- surf life saving: the warm-up lambda forgets to divide by its length ------------------------


def _rescues(gen, batch, d_in, tags, seed):
    """Standardised readings of a beach call-out; four rescue-kind tags (multi-label)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g)
    v = torch.randn(d_in, tags, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in) + 0.8 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, (z > 0).float()


@scenario(
    family="surf_life_saving_rescue_kind_relu_bce_tagger",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) tagging a surf-life-saving call-out with four rescue kinds (rip, board, tube, IRB; multi-label) from twelve standardised readings, RMSprop at a base lr of 5e-3, BCE with logits, 200 steps, a LambdaLR warm-up of 50 steps. The warm-up lambda was written lambda s: min(s, warmup) instead of min(s, warmup) / warmup, so the lr ramps to 50x the base (0.25) and stays there: the big updates push fc2's pre-activations negative for every input, act2's units die (all of them by step 80, measured on a fixed probe batch) and never come back, and the loss sits at the constant-guess level for the rest of the run.",
)
def h341_surf_rescue_warmup_not_divided(ctx: Context) -> None:
    gen = seeded(34104)
    model = Trunk(12, 64, out=4, act=nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)
    warmup = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(s, warmup) + 1e-3
    )  # meant / warmup
    probe_x, probe_y = next(_rescues(torch.Generator().manual_seed(7), 512, 12, 4, 341))
    dead = []

    def after(step):
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe_x))
            h2 = model.act2(model.fc2(h1))
        dead.append(dead_fraction(h2))

    _loop(
        ctx,
        model,
        opt,
        _rescues(gen, 64, 12, 4, 341),
        200,
        F.binary_cross_entropy_with_logits,
        after=after,
        sched=sched,
    )
    with torch.no_grad():
        p = probe_y.mean(0).clamp(1e-4, 1 - 1e-4)
        const = float(F.binary_cross_entropy(p.expand_as(probe_y), probe_y))
    ctx.check("under 20% of act2's units dead at step 0", dead[0] < 0.2)
    ctx.check("over 90% of act2's units dead for the last 50 steps", min(dead[-50:]) > 0.9)
    ctx.check(
        "the last 20 steps' loss is within 25% of the constant guess",
        _mean(ctx.losses[-20:]) > 0.75 * const,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- table tennis: the cosine classifier's scale is typed 300 for 30 -----------------------------


class SpinCosine(nn.Module):
    """A SiLU trunk and a cosine head: logits = scale * cos(feature, class weight)."""

    def __init__(self, d_in, hidden, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        h = F.normalize(self.act2(self.fc2(self.act1(self.fc1(x)))), dim=-1)
        return self.scale * F.linear(h, F.normalize(self.head.weight, dim=-1))


@scenario(
    family="table_tennis_rubber_spin_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP with a cosine head (fc1, act1, fc2, act2, head; logits = s * cos(feature, class weight)) classifying the spin a table-tennis rubber puts on a ball (five kinds) from eleven standardised readings of racket-tracking data, NAdam at 2e-3, cross-entropy, 160 steps. The scale s was meant as 30 (the usual for cosine heads) and was typed 300: the logits reach the softmax 10x too large, and as the classes separate, the softmax saturates and the target's float32 probability rounds to exactly 1.0 for most rows; the loss stays finite.",
)
def h341_table_tennis_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(34105)
    model = SpinCosine(11, 64, 5, scale=300.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 11, 5, 341, spread=0.9),
        160,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under a third of rows collapsed at step 0", collapsed[0] < 0.34)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- go: the stone embeddings' group lr is typed 3e-8 for 3e-2 -----------------------------------


class AtariNet(nn.Module):
    """Embeds each point of a 5x5 go board (empty, black, white) plus its position, then an MLP
    gives the logit that the centre black group is in atari."""

    def __init__(self, dim=8, hidden=64):
        super().__init__()
        self.stone_emb = nn.Embedding(3, dim)
        self.point_emb = nn.Embedding(25, dim)
        self.fc1 = nn.Linear(25 * dim, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, board):
        h = self.stone_emb(board) + self.point_emb.weight
        return self.head(self.act1(self.fc1(h.flatten(1)))).squeeze(-1)


def _boards(gen, batch):
    """Random 5x5 boards with a black stone in the centre; label: at most one of its four
    neighbours is empty (the stone is in atari or captured)."""
    centre, nbrs = 12, (7, 11, 13, 17)
    while True:
        b = torch.multinomial(
            torch.tensor([0.4, 0.25, 0.35]), batch * 25, replacement=True, generator=gen
        ).reshape(batch, 25)
        b[:, centre] = 1
        libs = (b[:, list(nbrs)] == 0).sum(1)
        yield b, (libs <= 1).float()


@scenario(
    family="go_stone_atari_embedding_bce_net",
    optimizer="SGD",
    cause="update_ratio_out_of_range",
    where=("stone_emb",),
    diverges=None,
    heldout=True,
    note="A hand-written embedding net (stone_emb for empty/black/white, point_emb for the 25 points of a 5x5 go board, fc1, act1, head) giving the logit that the centre black stone is in atari, SGD with Nesterov momentum 0.9, two parameter groups, BCE with logits, 200 steps. The dense layers train at 3e-2; the stone-embedding group's lr was typed 3e-8 for 3e-2 in the config: stone_emb's updates are about a millionth of its weights' size, so the embedding that says which stone sits where never moves while fc1 and the head do, and the loss still falls (fc1 learns to read the random stone codes), which hides the bug.",
)
def h341_go_stone_embedding_lr_exponent_typo(ctx: Context) -> None:
    gen = seeded(34106)
    model = AtariNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("stone_emb")]
    opt = torch.optim.SGD(
        [
            {"params": model.stone_emb.parameters(), "lr": 3e-8},
            {"params": rest, "lr": 3e-2},
        ],
        lr=3e-2,
        momentum=0.9,
        nesterov=True,
    )
    we, w1 = model.stone_emb.weight.detach().clone(), model.fc1.weight.detach().clone()
    _loop(ctx, model, opt, _boards(gen, 64), 200, F.binary_cross_entropy_with_logits)
    ctx.check(
        "stone_emb moved under 1e-5 of its norm over the run",
        _rel_change(we, model.stone_emb.weight) < 1e-5,
    )
    ctx.check("fc1 moved over 5% of its norm", _rel_change(w1, model.fc1.weight) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- halo display: the log-rate of the arc count has no clamp ------------------------------------


class LogRate(nn.Module):
    """log(relu(x)): the rate is kept non-negative by a ReLU and logged with no clamp."""

    def forward(self, x):
        return torch.log(F.relu(x))  # meant torch.log(F.relu(x).clamp_min(1e-6))


class HaloArcNet(nn.Module):
    """A SiLU trunk giving the log-rate of the number of halo arcs seen in a sky camera frame."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.log_rate = LogRate()
        with torch.no_grad():
            self.head.bias.fill_(2.0)

    def forward(self, x):
        return self.log_rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _halo_counts(gen, batch, seed):
    """Nine standardised readings (ice-crystal habit, sun elevation, cirrus cover); arc counts
    drawn from a Poisson whose rate runs from near 0 (clear sky) to about 8."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        rate = torch.exp(0.3 + 1.2 * torch.tanh(x @ w / 3.0) + 0.4 * x[:, 2])
        yield x, torch.poisson(rate, generator=gen)


DIV_HA = 47


@scenario(
    family="halo_display_arc_count_log_rate_poisson_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_rate",),
    diverges=DIV_HA,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head, log_rate) predicting how many halo arcs (22-degree halo, sun dogs, tangent arcs, ...) a sky camera frame shows from nine standardised readings, Poisson NLL on the log-rate (F.poisson_nll_loss with log_input=True), RAdam at 1e-2, 300 steps planned, head bias started at a rate of 2. The rate is kept non-negative by a ReLU and logged in the log_rate module with no clamp (the clamp_min(1e-6) was dropped in a refactor): as the net learns the clear-sky frames with no arcs, some row's rate reaches exactly 0, log(0) is -inf, and 0 * -inf in the loss makes it NaN; the run stops there.",
)
def h341_halo_log_rate_no_clamp(ctx: Context) -> None:
    gen = seeded(34107)
    model = HaloArcNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    infs = []

    def watch(step, out, x, y):
        infs.append(int(torch.isneginf(out.detach()).sum()))

    def loss_fn(out, y):
        return F.poisson_nll_loss(out, y, log_input=True)

    n = _loop(ctx, model, opt, _halo_counts(gen, 64, 341), 300, loss_fn, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the step it stops", bad == n - 1 and math.isnan(ctx.losses[-1]))
    ctx.check("log_rate gave -inf for some row at that step", infs[-1] > 0)
    ctx.check("no row's log-rate was -inf before it", bad is not None and sum(infs[:-1]) == 0)
    ctx.check("the loss fell before it", _mean(ctx.losses[-11:-1]) < _mean(ctx.losses[:10]))
    ctx.check("the run stops at the declared step", bad == DIV_HA)


# -- high dive: orthogonal init with gain 2 in a deep ReLU stack ---------------------------------


LR_HD = 1e-3


class SplashNet(nn.Module):
    """Ten ReLU layers (layers.0 ... layers.9, acts.*) and a linear head."""

    def __init__(self, d_in=10, hidden=64, depth=10, gain=2.0**0.5):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else hidden, hidden) for i in range(depth)
        )
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth))
        self.head = nn.Linear(hidden, 1)
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin, act in zip(self.layers, self.acts, strict=True):
            x = act(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="high_dive_entry_splash_deep_orthogonal_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A hand-written ten-layer ReLU MLP (layers.0 ... layers.9 with acts.*, head) scoring a high-dive entry's splash (standardised) from ten standardised readings of take-off and rotation, plain SGD at 1e-3, MSE, 150 steps planned. The layers are initialised with nn.init.orthogonal_ and the gain was typed 2.0 (read off as 'gain 2 for ReLU' from the Kaiming variance) instead of calculate_gain('relu') = sqrt(2): every layer multiplies the backward signal by about sqrt(2), so the gradient reaching layers.0 is tens of times the one at the top of the stack; the first SGD steps inflate the early layers, the output and the loss blow up within a few steps and the run goes non-finite.",
)
def h341_high_dive_orthogonal_gain_typo(ctx: Context) -> None:
    gen = seeded(34108)
    model = SplashNet(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=LR_HD)
    outgrads = {}

    def hook(name):
        def fn(module, inputs, out):
            if name not in outgrads and out.requires_grad:
                out.register_hook(lambda g: outgrads.setdefault(name, float(g.norm())) and None)

        return fn

    hooks = [
        model.layers[0].register_forward_hook(hook("first")),
        model.layers[-1].register_forward_hook(hook("last")),
    ]
    _loop(ctx, model, opt, _readings(gen, 64, 10, 341), 150, F.mse_loss)
    for h in hooks:
        h.remove()
    ls = ctx.losses
    ctx.check(
        "at step 0 the gradient at layers.0's output is over 10x that at layers.9's",
        outgrads["first"] > 10 * outgrads["last"],
    )
    ctx.check(
        "the loss blows up: non-finite or over 1e6x its first value",
        not _finite(ls) or max(ls) > 1e6 * ls[0],
    )


# -- archery: the static loss scale is not undone on the resume step -----------------------------

ONSET_AR = 150
LOSS_SCALE = 128.0


@scenario(
    family="archery_arrow_spine_deflection_huber_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting an arrow's static spine deflection (standardised) from ten standardised readings of shaft, point weight and fletching, ASGD at 1e-2, Huber loss, 220 steps. The script was ported from an fp16 set-up and keeps a static loss scale: it backpropagates loss * 128 and divides the gradients by 128 before the step. At step 150 the job resumes from a checkpoint and the resume path calls optimizer.step() without the unscale: that one step's gradient is 128x, from an ordinary batch; the run recovers on the next steps.",
    onset=ONSET_AR,
)
def h341_archery_loss_scale_not_undone_on_resume(ctx: Context) -> None:
    gen = seeded(34109)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)

    def backprop(step, loss):
        return loss * LOSS_SCALE

    def unscale(step):
        if step == ONSET_AR:
            return  # the resume path skips the unscale
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(LOSS_SCALE)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 341),
        220,
        F.huber_loss,
        backprop=backprop,
        unscale=unscale,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at the onset is over 50x the median of the 50 steps before it",
        g[ONSET_AR] > 50 * _median(g[ONSET_AR - 50 : ONSET_AR]),
    )
    ctx.check(
        "the loss at the onset is under 3x the median before it (an ordinary batch)",
        ls[ONSET_AR] < 3 * _median(ls[ONSET_AR - 50 : ONSET_AR]),
    )
    ctx.check(
        "the last 20 steps' loss is under 2x the 20 steps before the onset",
        _mean(ls[-20:]) < 2 * _mean(ls[ONSET_AR - 20 : ONSET_AR]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- polo pony: OneCycleLR's max_lr is typed 2.0 for 0.02 ----------------------------------------


def _top_eigenvalue(model, loss_fn, x, y, iters=12):
    """The largest Hessian eigenvalue of the loss on (x, y), by power iteration on
    Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


ONSET_PP = 16  # the first probed step with lr x top eigenvalue over 2


@scenario(
    family="polo_pony_gallop_stride_length_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a polo pony's gallop stride length (standardised) from ten standardised readings of speed, turn and ground, plain SGD under OneCycleLR (200 steps, 30% warm-up, cycle_momentum=False), MSE. max_lr was typed 2.0 for 0.02: the schedule starts at max_lr / 25 = 0.08 and ramps up, and once lr x the loss's top Hessian eigenvalue (measured by power iteration on a fixed batch) passes 2 the steps overshoot along the sharpest direction, the loss oscillates and then blows up as the warm-up keeps raising the lr.",
    onset=ONSET_PP,
)
def h341_polo_pony_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(34110)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.0, total_steps=200, pct_start=0.3, cycle_momentum=False
    )
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(5), 256, 10, 341))
    product = {}

    def before(step):
        if step % 4 == 0:
            lam = _top_eigenvalue(model, F.mse_loss, probe_x, probe_y)
            product[step] = opt.param_groups[0]["lr"] * lam

    _loop(ctx, model, opt, _readings(gen, 64, 10, 341), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    crossed = next((s for s in sorted(product) if product[s] > 2.0), None)
    ctx.check("lr x top eigenvalue is under 2 at step 0", product[0] < 2.0)
    ctx.check("lr x top eigenvalue passes 2 at the declared onset", crossed == ONSET_PP)
    ctx.check(
        "the loss blows up after the crossing: non-finite or over 100x its minimum",
        crossed is not None
        and (not _finite(ls) or max(ls[crossed:]) > 100 * min(ls[: crossed + 1])),
    )


# -- controls ------------------------------------------------------------------------------------


class BootieNet(nn.Module):
    """A LayerNorm GELU MLP grading sled-dog bootie wear (five grades)."""

    def __init__(self, d_in=14, hidden=96, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.ln1(self.fc1(x))))))


@scenario(
    family="sled_dog_bootie_wear_bf16_zloss_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written LayerNorm GELU MLP (fc1, ln1, act1, fc2, act2, head) grading a sled-dog bootie's wear into five grades from fourteen standardised readings of trail, snow and mileage, AdamW at 3e-3 with weight decay 0.05, bf16 autocast, cross-entropy plus a z-loss of 1e-4 * logsumexp(logits)^2, a 15-step linear warm-up into cosine decay, 180 steps.",
)
def h341_sled_dog_bootie_bf16_zloss_control(ctx: Context) -> None:
    gen = seeded(34111)
    model = BootieNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps, warm = 180, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    zs = []

    def backprop(step, loss):
        z = torch.logsumexp(last["out"], dim=-1).pow(2).mean()
        zs.append(float(z.detach()))
        return loss + 1e-4 * z

    last = {}

    def watch(step, out, x, y):
        last["out"] = out

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 5, 341, spread=1.1),
        steps,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        backprop=backprop,
        sched=sched,
        amp=torch.bfloat16,
    )
    ctx.check("the loss fell to under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("the z-loss term stayed under 100", max(zs) < 100)
    ctx.check("finite throughout", _finite(ctx.losses))


class ClockGRU(nn.Module):
    """A GRU over a game's move times, a linear head on the last state."""

    def __init__(self, hidden=32):
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _clock_games(gen, batch, moves=16):
    """Move times (standardised) and a 'critical position' flag per move; target: the
    standardised time left on the clock after the last move with a 5 s increment."""
    while True:
        t = torch.rand(batch, moves, generator=gen).pow(2) * 2.0
        crit = (torch.rand(batch, moves, generator=gen) < 0.2).float()
        t = t + 1.5 * crit * torch.rand(batch, moves, generator=gen)
        left = 10.0 - t.sum(1) + 0.25 * moves
        yield torch.stack([t - 0.8, crit], -1), (left - 2.0) / 3.0


@scenario(
    family="chess_clock_increment_time_left_gru_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GRU regressor (gru, head) reading sixteen moves of a chess game (each move's time and a critical-position flag) and predicting the time left on the clock after the last move with a 5 s increment (standardised), Adagrad at 5e-2, Huber loss, gradient accumulation over 2 micro-batches, gradient clipping at 1.0, ReduceLROnPlateau on a held-out batch (patience 10, factor 0.5), 150 steps.",
)
def h341_chess_clock_gru_adagrad_control(ctx: Context) -> None:
    gen = seeded(34112)
    model = ClockGRU()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    vx, vy = next(_clock_games(torch.Generator().manual_seed(11), 256))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        _clock_games(gen, 32),
        150,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell to under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="domino_run_topple_order_rotary_transformer",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written two-block pre-LN transformer with rotary position encodings and QK-LayerNorm on q and k, its head tied to the token embedding, over generated domino-run records (12 random domino colours from a vocabulary of 24, then the same run replayed as it topples; only the replay is scored), Adam at 3e-3 with a 20-step linear warm-up into cosine decay, gradient clipping at 1.0, cross-entropy with label smoothing 0.05, 200 steps.",
)
def h341_domino_rotary_qknorm_tied_control(ctx: Context) -> None:
    gen = seeded(34113)
    model = RotaryLM(24, dim=32, heads=2, layers=2, qk_norm=True, tied=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(max(b.attn.peak for b in model.blocks))

    _loop(
        ctx,
        model,
        opt,
        _repeat_sequences(gen, 32, 12, 24),
        steps,
        _lm_loss(12, smoothing=0.05),
        watch=watch,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the head is tied to the embedding", model.head.weight is model.tok.weight)
    ctx.check("the loss fell to under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
