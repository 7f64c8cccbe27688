"""Held-out set 227 (``h227_``): a Hugging Face Inkling text model built from a tiny config,
trained as a byte-level language model on town-crier proclamations, used four times (an
epoch-end evaluation loss with reduction='sum' backpropagated once under AdamW, a token counter
restored as a window count for one step after a resume under SGD Nesterov, one shard encoded with
a rotated symbol table under RMSprop, and a control with warm-up then linear decay), and
hand-written models of trades, crafts, sports, instruments and natural phenomena: a gamelan
kotekan-interlock transformer whose query and key projections got a 30x param group, a geyser
eruption-type classifier whose export leaked the logged label into a feature column, a sugarhouse
sap-run Weibull net whose scale head lost its softplus, a hailstone radar net pooling frames with
a hand-written softmax under fp16 autocast, a chainsaw chain-wear multi-label BCE net whose first
layer's rate was typed 1e-8, a whirligig vane-spin ReLU recurrent net with an orthogonal init of
gain 1.6, a dragon-boat paddler-split regressor whose learning rate was scaled for the batch size
twice, and two more controls (a kite-fighting manja-cut GELU classifier with RAdam, OneCycleLR
and label smoothing, a letterpress platen-pressure Huber regressor with ASGD, accumulation,
clipping and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded, text_batches


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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn=None,
    *,
    forward=None,
    classifier=False,
    before=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``forward(model, x, y)`` returns (output, loss) (by default
    ``model(x)`` and ``loss_fn``); ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; stops after
    logging a NaN loss."""
    if forward is None:

        def forward(m, x, y):
            out = m(x)
            return out, loss_fn(out.float(), y)

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
                out, loss = forward(model, x, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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
        if math.isnan(shown):
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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35, flip=0.0):
    """Readings around one prototype per class, overlapping; ``flip`` of the labels are wrong."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        wrong = torch.rand(batch, generator=gen) < flip
        y = torch.where(wrong, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


# -- Hugging Face Inkling (text) from a tiny config: a town crier's proclamations -----------------

_VOCAB = 96


def _inkling(tied: bool = False):
    """A Hugging Face Inkling causal LM (short convolutions, relative-position logits, a small
    MoE) built from a tiny config; no download."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING["inkling_text"](
        vocab_size=_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        swa_num_attention_heads=2,
        swa_num_key_value_heads=1,
        swa_head_dim=16,
        sliding_window_size=16,
        d_rel=4,
        rel_extent=32,
        max_position_embeddings=64,
        intermediate_size=64,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        logits_mup_width_multiplier=1.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tied,
    )
    return AutoModelForCausalLM.from_config(config)


def _proclamations(gen, batch=16, length=32):
    """Byte windows of plain English-like text (a crier's proclamations stand-in: the standard
    library's docstrings and code), folded into a 96-symbol alphabet."""
    return text_batches(gen, batch=batch, length=length, vocab=_VOCAB)


def _lm_forward(m, x, y):
    """The usual call: labels are the inputs, the model shifts them itself."""
    out = m(input_ids=x, labels=x)
    return out.logits, out.loss


@scenario(
    family="hf_inkling_town_crier_proclamation_lm",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="The Hugging Face Inkling LM from a tiny config on proclamation text, 16 windows of 32 bytes a batch, AdamW at 3e-3 (beta2 0.999, weight decay 0.01), cross-entropy. At the end of the first epoch (step 60) the trainer backpropagates the evaluation helper's loss, which uses reduction='sum' over the batch's 496 target tokens: one gradient about 500x the usual fills Adam's second moment. Afterwards every update is several times smaller than before and the loss, which was falling, crawls: at the end it is well above what the same run without the bug reaches; finite.",
)
def h227_inkling_crier_summed_eval_loss(ctx: Context) -> None:
    steps, onset = 170, 60

    def run(c, buggy):
        gen = seeded(22702)
        model = _inkling()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        params = list(model.parameters())
        moves, prev = {}, {}

        def before(step):
            prev["w"] = _snapshot(params)

        def after(step):
            moves[step] = _mean(
                [
                    float((p.detach() - w).abs().mean())
                    for p, w in zip(params, prev["w"], strict=True)
                ]
            )

        def scale_loss(step, total):
            # the evaluation helper: F.cross_entropy(..., reduction="sum") over 16 x 31 tokens
            return total * 16 * 31 if buggy and step == onset else total

        _train(
            c,
            model,
            opt,
            _proclamations(gen),
            steps,
            forward=_lm_forward,
            before=before,
            after=after,
            scale_loss=scale_loss,
        )
        return moves

    twin = _Quiet()
    run(twin, buggy=False)  # the same run without the bug, for the checks only
    moves = run(ctx, buggy=True)
    ls, gn = ctx.losses, ctx.grad_norms
    before_move = _mean([moves[s] for s in range(onset - 20, onset)])
    after_move = _mean([moves[s] for s in range(onset + 20, steps)])
    ctx.check(
        "gradient at the onset over 200x the median before",
        gn[onset] > 200 * _median(gn[:onset]),
    )
    ctx.check("updates after the onset under 30% of those before", after_move < 0.3 * before_move)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.9))
    ctx.check(
        "loss at the end over 1.1x that of the same run without the bug",
        _mean(ls[-30:]) > 1.1 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="hf_inkling_town_crier_proclamation_lm",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="The Hugging Face Inkling LM from a tiny config on proclamation text, 16 windows of 32 bytes a batch, SGD Nesterov (momentum 0.9) at 0.1, cross-entropy computed as the token-summed loss divided by a token counter. The run is resumed from a checkpoint at step 90 and the resume path restores the counter from the saved state as the number of windows (16) instead of the number of target tokens (496): for that one step the loss is 31x too large, and so is the gradient. The step throws the weights off and the loss jumps, then the run recovers within some dozens of steps; finite.",
)
def h227_inkling_crier_resume_token_count(ctx: Context) -> None:
    gen = seeded(22703)
    model = _inkling()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    onset = 90

    def scale_loss(step, total):
        # total is summed / 496 tokens; at the resumed step the counter reads 16 windows
        return total * (16 * 31) / 16 if step == onset else total

    _train(ctx, model, opt, _proclamations(gen), 170, forward=_lm_forward, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 20x the median before",
        gn[onset] > 20 * _median(gn[onset - 20 : onset]),
    )
    ctx.check(
        "loss after the kick over 1.3x its level before",
        max(ls[onset + 1 : onset + 6]) > 1.3 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check(
        "loss back within 1.1x its level (last 20 steps)",
        _mean(ls[-20:]) < 1.1 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.9))
    ctx.check("finite", _finite(ls))


@scenario(
    family="hf_inkling_town_crier_proclamation_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="The Hugging Face Inkling LM from a tiny config with tied input and output embeddings, on proclamation text, AdamW at a peak of 3e-3 with weight decay 0.05 on the matrices only (norms, biases and gains in a no-decay group), 20 steps of linear warm-up then linear decay to 0 at step 160, gradient clipping at 1.0, cross-entropy. An ordinary run: the loss falls and stays finite.",
)
def h227_inkling_crier_warmup_linear_decay(ctx: Context) -> None:
    gen = seeded(22704)
    model = _inkling(tied=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps, warm = 160, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / (steps - warm))
    )
    _train(ctx, model, opt, _proclamations(gen), steps, forward=_lm_forward, sched=sched, clip=1.0)
    ls = ctx.losses
    ctx.check("loss fell by over 30%", _fell(ls, ratio=0.7))
    ctx.check("finite", _finite(ls))


# -- gamelan kotekan: attention projections in a 30x param group ----------------------------------


class KotekanAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0
        self.entropy = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (f(x).reshape(b, t, h, d // h).transpose(1, 2) for f in (self.q, self.k, self.v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        att = logits.softmax(-1)
        a = att.detach()
        self.max_logit = float(logits.detach().abs().max())
        self.entropy = float(-(a * a.clamp_min(1e-12).log()).sum(-1).mean())
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class KotekanBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = KotekanAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class KotekanNet(nn.Module):
    """Classifies which interlocking (kotekan) figure a gamelan pattern carries: tokens (pitch,
    hand) embedded, a [CLS] token, two pre-LN blocks, a linear head on the [CLS] output."""

    def __init__(self, vocab=24, dim=32, heads=2, length=17, classes=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(KotekanBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))


def _kotekan(gen, batch, length=16, classes=6):
    """Sixteen strokes of filler (tokens 8..23) with one figure-marking stroke (token 2..7 = the
    class) at a random place; token 0 is [CLS]."""
    while True:
        x = torch.randint(8, 24, (batch, length), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        where = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), where] = y + 2
        yield torch.cat([torch.zeros(batch, 1, dtype=torch.long), x], 1), y


@scenario(
    family="gamelan_kotekan_interlock_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written pre-LN transformer (tok, pos, blocks.0-1 with attn.q/k/v/proj and an MLP, ln_f, head on [CLS]) classifying which of 6 kotekan figures a 16-stroke gamelan pattern carries, Adam at 1e-3, cross-entropy, no QK normalisation. The param groups come from a muP transfer sheet whose attention multiplier was meant for the output projection but was applied to the query and key projections, at 30x (3e-2): q and k grow fast, the attention logits q.k/sqrt(d) grow over 20x from step 0, the attention entropy collapses onto single strokes (under a tenth of the one-rate run's) and the loss ends above that of the same run with one learning rate; finite.",
)
def h227_gamelan_kotekan_qk_group_30x(ctx: Context) -> None:
    steps = 220

    def run(c, buggy):
        gen = seeded(22705)
        model = KotekanNet()
        qk = [p for n, p in model.named_parameters() if ".attn.q." in n or ".attn.k." in n]
        ids = {id(p) for p in qk}
        rest = [p for p in model.parameters() if id(p) not in ids]
        opt = torch.optim.Adam(
            [{"params": rest}, {"params": qk, "lr": 3e-2 if buggy else 1e-3}], lr=1e-3
        )
        logit, ent = [], []

        def watch(step, out, x, y):
            logit.append(max(b.attn.max_logit for b in model.blocks))
            ent.append(min(b.attn.entropy for b in model.blocks))

        _train(
            c, model, opt, _kotekan(gen, 64), steps, F.cross_entropy, classifier=True, watch=watch
        )
        return logit, ent

    twin = _Quiet()
    twin_logit, twin_ent = run(twin, buggy=False)
    logit, ent = run(ctx, buggy=True)
    ls = ctx.losses
    ctx.check("largest attention logit grew over 20x from step 0", max(logit) > 20 * logit[0])
    ctx.check(
        "largest attention logit over 4x that of the one-rate run", max(logit) > 4 * max(twin_logit)
    )
    ctx.check(
        "attention entropy at the end under 10% of the one-rate run's",
        ent[-1] < 0.1 * twin_ent[-1],
    )
    ctx.check(
        "loss over the last 40 steps above that of the one-rate run",
        _mean(ls[-40:]) > _mean(twin.losses[-40:]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="hf_inkling_town_crier_proclamation_lm",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="The Hugging Face Inkling LM from a tiny config on proclamation text, 16 windows of 32 bytes a batch, RMSprop at 1e-3, cross-entropy. One shard of the corpus was re-encoded with an older symbol table whose codes are rotated by 48: the batch at step 100 looks like text to the loader but every symbol is the wrong one, so the model's confident predictions are all wrong and the batch's loss is about twice the usual, with a gradient many times the usual. The run carries on and its loss on ordinary text stays where it was; finite.",
)
def h227_inkling_crier_rotated_shard(ctx: Context) -> None:
    gen = seeded(22706)
    model = _inkling()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    onset = 100

    def alter(step, x, y):
        if step != onset:
            return x, y
        return (x + _VOCAB // 2) % _VOCAB, (y + _VOCAB // 2) % _VOCAB

    _train(ctx, model, opt, _proclamations(gen), 180, forward=_lm_forward, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    level = _mean(ls[onset - 10 : onset])
    ctx.check("loss on the rotated batch over 1.8x its level before", ls[onset] > 1.8 * level)
    ctx.check(
        "gradient at the onset over 5x the median before",
        gn[onset] > 5 * _median(gn[onset - 20 : onset]),
    )
    ctx.check("loss back within 1.1x its level (last 20 steps)", _mean(ls[-20:]) < 1.1 * level)
    ctx.check("finite", _finite(ls))


# -- geyser: an eruption-type classifier with the logged label leaked into its features ----------


def _eruptions(gen, batch, leak, seed=7):
    """Nine standardised readings before a geyser eruption (pool temperature, tilt, seismic
    tremor, ...) and a tenth column: the intended one is the pool's overflow rate; the leaky
    export holds the eruption type (0..3) logged afterwards, standardised."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 9, generator=g)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = protos[y] + 2.0 * torch.randn(batch, 9, generator=gen)
        tenth = (y.float() - 1.5) / 1.1 if leak else torch.randn(batch, generator=gen)
        yield torch.cat([x, tenth[:, None]], 1), y


@scenario(
    family="geyser_eruption_type_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying a geyser's next eruption into 4 types from 10 standardised readings, Adam at 1e-2, cross-entropy, no weight decay. The feature export joined the eruption log on the wrong key and its tenth column is the logged eruption type itself: the training set is perfectly separable, the loss goes to about 0 and cross-entropy keeps pushing the margins up with nothing to hold them, so the head's logits grow far past any useful confidence (largest value over 20x step 0's, to about 45, several times that of the same run with the intended column); finite.",
)
def h227_geyser_leaked_label_column(ctx: Context) -> None:
    steps = 250

    def run(c, leak):
        gen = seeded(22707)
        model = Stack(10, hidden=64, out=4, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        peak = []

        def watch(step, out, x, y):
            peak.append(float(out.detach().abs().max()))

        _train(
            c,
            model,
            opt,
            _eruptions(gen, 64, leak),
            steps,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return peak

    twin = _Quiet()
    twin_peak = run(twin, leak=False)  # the intended export, for the checks only
    peak = run(ctx, leak=True)
    ls = ctx.losses
    ctx.check("loss under 0.01 at the end", _mean(ls[-10:]) < 0.01)
    ctx.check("largest logit grew over 20x from step 0", peak[-1] > 20 * peak[0])
    ctx.check(
        "largest logit at the end over 3x that of the run with the intended column",
        peak[-1] > 3 * twin_peak[-1],
    )
    ctx.check("finite", _finite(ls))


# -- sugarhouse: a Weibull sap-run net whose scale head lost its softplus --------------------------


class SapRunNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.shape_head = nn.Linear(hidden, 1)
        self.scale_head = nn.Linear(hidden, 1)
        self.min_scale = 0.0

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        k = F.softplus(self.shape_head(h)).squeeze(-1) + 0.1
        lam = self.scale_head(h).squeeze(-1) + 1.0  # meant: F.softplus(...) + 1e-3
        self.min_scale = float(lam.detach().min())
        return torch.stack([k, lam], -1)


def _weibull_nll(out, t):
    k, lam = out[..., 0], out[..., 1]
    z = t / lam
    return -(torch.log(k) - torch.log(lam) + (k - 1) * torch.log(z) - z.pow(k)).mean()


def _sap_runs(gen, batch, seed=8):
    """Six standardised readings of a sugarbush day (night low, day high, pressure trend, snow
    depth, ...) and the length of the sap run in days, Weibull with shape 1.5 and a scale that
    depends on the readings (0.1 to 8 days)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        scale = torch.exp(0.7 * x @ w / math.sqrt(6) * 2).clamp(0.1, 8.0)
        u = torch.rand(batch, generator=gen).clamp(1e-4, 1 - 1e-4)
        yield x, scale * (-torch.log(u)).pow(1 / 1.5)


@scenario(
    family="sugarhouse_sap_run_weibull_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("scale_head",),
    diverges=17,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, shape_head, scale_head) giving a Weibull shape and scale for the length of a sugarbush sap run from 6 standardised readings, Weibull negative log-likelihood, NAdam at 2e-3. The scale was meant to be softplus(scale_head) + 1e-3 but is written as scale_head + 1.0 ('it starts at 1 anyway'): as the net learns the short runs, scale_head drives the scale of some samples below 0, and the log of the scale (and the non-integer power of t / scale) is NaN at step 17.",
)
def h227_sugarhouse_weibull_scale_no_softplus(ctx: Context) -> None:
    gen = seeded(22708)
    model = SapRunNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scales = []

    def watch(step, out, x, y):
        scales.append(model.min_scale)

    _train(ctx, model, opt, _sap_runs(gen, 64), 200, _weibull_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("scale positive for every sample at step 0", scales[0] > 0)
    ctx.check("loss goes NaN", bad is not None)
    ctx.check("a scale at or below 0 at the NaN step", bad is not None and scales[bad] <= 0)
    ctx.check("loss finite and falling before the NaN", bad is not None and _fell(ls[:bad], 5, 0.9))


# -- hailstone: frames pooled with a hand-written softmax under fp16 autocast ----------------------


class HailRadarNet(nn.Module):
    def __init__(self, feat=5, hidden=32):
        super().__init__()
        self.frame = nn.Linear(feat, hidden)
        self.act = nn.GELU()
        self.score = nn.Linear(hidden, 1)
        self.head = nn.Linear(hidden, 1)
        self.tau = 0.5  # a sharp pooling temperature
        self.max_score = 0.0

    def forward(self, x):
        h = self.act(self.frame(x))
        s = self.score(h).squeeze(-1) / self.tau
        self.max_score = float(s.detach().float().max())
        w = torch.exp(s)  # hand-written softmax, no max subtracted
        w = w / w.sum(1, keepdim=True)
        return self.head((w.unsqueeze(-1) * h).sum(1)).squeeze(-1)


def _radar(gen, batch, frames=20, seed=9):
    """Twenty radar frames of a storm cell, five standardised features each (reflectivity,
    echo-top height, ...); the hail diameter is set by the strongest frame."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g)
    while True:
        x = torch.randn(batch, frames, 5, generator=gen)
        yield x, (x @ w / math.sqrt(5)).max(1).values


@scenario(
    family="hailstone_radar_naive_softmax_pool_fp16_net",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("score",),
    diverges=204,
    heldout=True,
    note="A hand-written frame-pooling net (frame, act, score, head) predicting the hail diameter of a storm cell from 20 radar frames of 5 standardised features, Adamax at 2e-2, MSE, fp16 autocast with a default torch.amp.GradScaler. The pooling weights are a hand-written softmax at temperature 0.5, exp(score / 0.5) / sum(exp(score / 0.5)), with no maximum subtracted; under autocast the score and its exp are fp16. The hail size is set by the strongest frame, so the net sharpens the pooling and the scores grow: once one passes 11.09, exp overflows fp16 to inf, inf / inf is NaN and the loss is NaN at step 204 (the same forward in float32 is finite).",
)
def h227_hailstone_naive_softmax_fp16(ctx: Context) -> None:
    gen = seeded(22709)
    model = HailRadarNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cpu")
    scores, fp32 = [], {}

    def watch(step, out, x, y):
        scores.append(model.max_score)
        if not torch.isfinite(out).all() and "ok" not in fp32:
            with torch.no_grad():
                fp32["ok"] = bool(torch.isfinite(model(x)).all())

    _train(ctx, model, opt, _radar(gen, 64), 300, F.mse_loss, watch=watch, scaler=scaler)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes non-finite", bad is not None)
    ctx.check(
        "a score past fp16's exp limit (11.09) at that step",
        bad is not None and scores[bad] > 11.09,
    )
    ctx.check("scores under 11.09 at step 0", scores[0] < 11.09)
    ctx.check("the same forward in float32 is finite", fp32.get("ok", False))
    ctx.check("loss fell before the overflow", bad is not None and _fell(ls[:bad], 3, 0.8))


# -- chainsaw: a first layer whose rate was typed 1e-8 --------------------------------------------


def _chain_wear(gen, batch, seed=10):
    """Twelve standardised readings of a saw chain (cut time, sawdust size, bar temperature,
    vibration, ...) and five wear flags (dull cutters, uneven rakers, stretched links, bar
    burr, missing lube), not exclusive."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 5, generator=g)
    v = torch.randn(12, 5, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        z = x @ w / math.sqrt(12) + 0.8 * torch.sin(x @ v / math.sqrt(12) * 2)
        yield x, (z > 0.3).float()


@scenario(
    family="chainsaw_chain_wear_multilabel_bce_mlp",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) flagging five kinds of saw-chain wear from 12 standardised readings, multi-label BCE with logits, Adam in per-layer param groups. The layer-wise rate table was written in units of 1e-3 and fc1's entry was entered as 1e-5 (meant 1): fc1 trains at 1e-8, its weights effectively never move while fc2 and head train at 1e-3. The loss falls only as far as a fixed random first layer allows; finite.",
)
def h227_chainsaw_fc1_rate_typo(ctx: Context) -> None:
    gen = seeded(22710)
    model = Stack(12, hidden=64, out=5)
    opt = torch.optim.Adam(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3 * 1e-5},
            {"params": model.fc2.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    w1, wh = _snapshot([model.fc1.weight, model.head.weight])
    _train(ctx, model, opt, _chain_wear(gen, 64), 200, F.binary_cross_entropy_with_logits)
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    movedh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ls = ctx.losses
    ctx.check("fc1 moved under 1e-4 of its norm", moved1 < 1e-4)
    ctx.check("head moved over 0.1 of its norm", movedh > 0.1)
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("finite", _finite(ls))


# -- whirligig: a ReLU recurrence with an orthogonal init of gain 1.6 ------------------------------


class VaneRNN(nn.Module):
    def __init__(self, feat=3, hidden=48, gain=1.6):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        b, t, _ = x.shape
        h = x.new_zeros(b, self.rec.in_features)
        drive = self.inp(x)
        self.states = []
        outs = []
        for i in range(t):
            h = F.relu(drive[:, i] + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
            outs.append(self.head(h))
        return torch.cat(outs, -1)


def _gusts(gen, batch, length=40, seed=11):
    """Three standardised anemometer readings per half-second (speed, direction change,
    turbulence) and a whirligig's vane spin rate (standardised) at each frame."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        drive = x @ w / math.sqrt(3)
        spin = torch.zeros(batch, length)
        acc = torch.zeros(batch)
        for t in range(length):
            acc = 0.8 * acc + 0.3 * drive[:, t]
            spin[:, t] = acc
        yield x, torch.tanh(spin)


@scenario(
    family="whirligig_vane_spin_relu_rnn",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU recurrent net (inp, rec, head) tracking a whirligig's vane spin rate over 40 half-second frames from 3 anemometer readings, SGD with momentum 0.9 at 1e-3, MSE. The recurrent weight is initialised orthogonal with gain 1.6, copied from a recipe for a different cell: the hidden state and the gradient through time grow each frame, so at step 0 the gradient reaching the first frame is many times the one at the last; the updates enlarge the recurrence further, the gradient norm grows by orders of magnitude and the loss blows up.",
)
def h227_whirligig_orthogonal_gain(ctx: Context) -> None:
    gen = seeded(22711)
    model = VaneRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    growth = {}

    def after(step):
        if step == 0:
            norms = [float(h.grad.norm()) for h in model.states if h.grad is not None]
            growth["first"] = norms[0] / max(norms[-1], 1e-30) if norms else 0.0

    _train(ctx, model, opt, _gusts(gen, 32), 80, F.mse_loss, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    ctx.check(
        "gradient at the first frame over 20x that at the last (step 0)",
        growth.get("first", 0.0) > 20,
    )
    ctx.check(
        "loss blew up (over 1e4x step 0's, or non-finite)",
        max(ls[:end]) > 1e4 * ls[0] or bad is not None,
    )
    ctx.check("gradient norm peaked over 100x step 0's", max(gn[:end]) > 100 * gn[0])


# -- dragon boat: a learning rate scaled for the batch size twice ---------------------------------


def _sharpness(model, loss_fn, batch, iters=15) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
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


def _paddlers(gen, batch, seed=12):
    """Eight standardised readings of a dragon-boat paddler (stroke rate, catch angle, reach,
    body mass, ...) and the 200 m split the crew makes with them aboard, standardised."""
    return _readings(gen, batch, 8, seed, noise=0.05)


@scenario(
    family="dragon_boat_paddler_split_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a dragon-boat crew's 200 m split from 8 standardised paddler readings, plain SGD, MSE, batch 256, linear warm-up over 60 steps. The recipe's rate 0.05 is for batch 32; the launcher applies the linear scaling rule (x8, 0.4) and the trainer applies it again, so the warm-up climbs to 3.2. Once lr x sharpness passes 2 the loss oscillates and blows up (lr x sharpness under 2 at the start, over 2 before the blow-up).",
)
def h227_dragon_boat_lr_scaled_twice(ctx: Context) -> None:
    gen = seeded(22712)
    model = Stack(8, hidden=64, act=nn.Tanh)
    peak = 0.05 * (256 / 32) * (256 / 32)
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    probe = next(_paddlers(seeded(22799), 256))
    edge = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 250)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0 and math.isfinite(ctx.losses[-1] if ctx.losses else 0.0):
            edge[step] = lr * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _paddlers(gen, 256), 150, F.mse_loss, before=before)
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    low = min(ls[:end])
    blow = next((i for i in range(end) if ls[i] > 100 * low), end)
    ctx.check("lr x sharpness under 2 at step 0", edge[0] < 2)
    ctx.check(
        "lr x sharpness over 2 before the blow-up",
        any(v > 2 for s, v in edge.items() if s < blow),
    )
    ctx.check("loss blew up (over 100x its lowest, or non-finite)", blow < end or bad is not None)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="kite_fighting_manja_cut_gelu_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 5 ways a kite-fighting bout ends (cut by pulling, cut by releasing, tangle, ...) from 16 standardised readings of the manja line, RAdam under OneCycleLR (peak 1e-2), cross-entropy with label smoothing 0.1; 10% of the labels are wrong (referees disagree). An ordinary run: the loss falls and stays finite.",
)
def h227_kite_manja_onecycle_control(ctx: Context) -> None:
    gen = seeded(22713)
    model = Stack(16, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=13, flip=0.1),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell by over 30%", _fell(ls, ratio=0.7))
    ctx.check("finite", _finite(ls))


def _platen(gen, batch, seed=14):
    """Eight standardised readings of a letterpress job (forme area, paper weight, packing,
    ink tack, ...) and the platen pressure that printed it cleanly, with Student-t noise
    (misread gauges)."""
    base = _readings(gen, batch, 8, seed, noise=0.0)
    t = torch.distributions.StudentT(2.5)
    while True:
        x, y = next(base)
        yield x, y + 0.1 * t.sample((batch,))


@scenario(
    family="letterpress_platen_pressure_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the platen pressure of a letterpress job from 8 standardised readings with heavy-tailed (Student-t) gauge noise, Huber loss, ASGD at 0.05, gradient accumulation over 2 batches of 32, clipping at 1.0, ReduceLROnPlateau on the training loss. An ordinary run: the loss falls and stays finite.",
)
def h227_letterpress_platen_plateau_control(ctx: Context) -> None:
    gen = seeded(22714)
    model = Stack(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _platen(gen, 32),
        200,
        F.huber_loss,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell by over 30%", _fell(ls, ratio=0.7))
    ctx.check("finite", _finite(ls))
