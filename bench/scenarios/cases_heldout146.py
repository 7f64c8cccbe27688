"""Held-out set 146 (``h146_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, and Hugging Face architectures built from tiny configs.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs of the same kinds of models (warm-up and cosine decay, fp16 autocast
with a GradScaler, ReduceLROnPlateau on noisy batches, gradient accumulation with clipping).
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
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    scale=None,
    clip=None,
    sched=None,
    after=None,
    scaler=None,
    accumulate=1,
    forward=None,
):
    """A plain loop: ``accumulate`` micro-batches per optimizer step, ``scale(step)`` multiplies
    the backpropagated loss, ``after(step)`` runs after ``opt.step()``."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = forward(model, x)
            loss = loss_fn(out.float(), y)
            total = loss * scale(step) if scale is not None else loss
            total = total / accumulate
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
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


def _lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _regression(gen, n_in: int, batch: int, noise: float = 0.05):
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, y + noise * torch.randn(batch, 1, generator=gen)


def _clusters(gen, n_in: int, classes: int, batch: int, spread: float = 1.0):
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


# -- Hugging Face Kosmos-2.5 text decoder: a healthy control -------------------------------------


def _kosmos25_text_lm(vocab=128, dim=32, layers=2, heads=2):
    from transformers import Kosmos2_5TextConfig
    from transformers.models.kosmos2_5.modeling_kosmos2_5 import Kosmos2_5TextForCausalLM

    config = Kosmos2_5TextConfig(
        vocab_size=vocab,
        embed_dim=dim,
        layers=layers,
        attention_heads=heads,
        ffn_dim=2 * dim,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    return Kosmos2_5TextForCausalLM(config)


def _hf_logits(m, x):
    return m(input_ids=x).logits


@scenario(
    family="hf_kosmos2_5_text_decoder_lm",
    optimizer="AdamW",
    cause="healthy",
    diverges=None,
    heldout=True,
    note="A tiny Hugging Face Kosmos-2.5 text decoder (built from a config) trained as a byte "
    "LM with AdamW (weight decay 0.01), a 20-step linear warm-up into cosine decay and "
    "clipping at 1.0: the ordinary recipe, the loss falls steadily.",
)
def h146_kosmos25_bytes_warmup_cosine(ctx: Context) -> None:
    gen = seeded(14601)
    model = _kosmos25_text_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 120, 20

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches = text_batches(gen, batch=8, length=24)
    _train(ctx, model, opt, batches, steps, _lm_loss, clip=1.0, sched=sched, forward=_hf_logits)
    ctx.check("loss fell by 30%", _fell(ctx.losses, ratio=0.7))
    ctx.check("all losses finite", _finite(ctx.losses))


# -- sitar raga phrases: the attention projection's param group typed at 100x the rate -------------


def _raga_phrases(gen, batch=16, length=24, notes=16):
    """Note sequences from a peaked random walk over a raga's scale (next-note prediction)."""
    logits = 3.0 * torch.randn(notes, notes, generator=gen)
    trans = torch.softmax(logits, dim=-1)
    while True:
        seq = [torch.randint(0, notes, (batch,), generator=gen)]
        for _ in range(length):
            seq.append(torch.multinomial(trans[seq[-1]], 1, generator=gen).squeeze(1))
        s = torch.stack(seq, 1)
        yield s[:, :-1], s[:, 1:]


class RagaAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.last_logits = None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.last_logits = att.detach()
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class RagaBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RagaAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SitarRagaTransformer(nn.Module):
    """Predicts the next note of a raga phrase from the notes so far."""

    def __init__(self, notes=16, dim=32, heads=2, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(notes, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(RagaBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, notes)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@scenario(
    family="sitar_raga_phrase_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Adam with param groups: the config meant to give the attention projections a "
    "smaller rate (3e-4) but the group's lr was typed 3e-1, with no weight decay and no "
    "qk-norm. The query/key weights grow every step and the pre-softmax attention logits "
    "q.k/sqrt(d) grow many-fold; attention saturates onto single notes.",
)
def h146_sitar_raga_qkv_group_typo(ctx: Context) -> None:
    gen = seeded(14602)
    model = SitarRagaTransformer()
    attn = [p for b in model.blocks for p in b.attn.qkv.parameters()]
    ids = {id(p) for p in attn}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-3}, {"params": attn, "lr": 3e-1}])
    batches = _raga_phrases(gen)
    probe, _ = next(batches)

    def attn_max():
        with torch.no_grad():
            model(probe)
        return max(float(b.attn.last_logits.abs().max()) for b in model.blocks)

    start = attn_max()
    _train(ctx, model, opt, batches, 150, _lm_loss)
    end = attn_max()
    ctx.check(f"attention logits grew 20x ({start:.2g} -> {end:.2g})", end > 20 * start)


# -- luthier soundboard taps: the head's param group typed lr=1.0 ---------------------------------


class LuthierTapClassifier(nn.Module):
    """Grades a guitar soundboard (5 grades) from 20 tap-tone spectrum bins."""

    def __init__(self, n_in=20, width=48, grades=5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width))
        self.act = nn.Tanh()
        self.head = nn.Linear(width, grades)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


@scenario(
    family="luthier_soundboard_tap_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="NAdam with two param groups, cross-entropy without label smoothing and no weight "
    "decay. The fine-tuning config gave the classifier head lr=5e-2 (meant 5e-4, a "
    "slipped exponent); the grades are nearly separable, so the head's weights keep growing along the "
    "margin and its logits grow without bound while the loss sinks to ~0.",
)
def h146_luthier_head_lr_typo(ctx: Context) -> None:
    gen = seeded(14603)
    model = LuthierTapClassifier()
    body = list(model.body.parameters())
    opt = torch.optim.NAdam(
        [{"params": body, "lr": 2e-3}, {"params": model.head.parameters(), "lr": 0.05}]
    )
    batches = _clusters(gen, 20, 5, 64, spread=1.0)
    probe, _ = next(batches)

    def logit_size():
        with torch.no_grad():
            return float(model(probe).abs().max(1).values.mean())

    sizes = [logit_size()]
    _train(
        ctx,
        model,
        opt,
        batches,
        300,
        F.cross_entropy,
        classifier=True,
        after=lambda s: sizes.append(logit_size()) if s in (49, 299) else None,
    )
    ctx.check(
        f"head logits grew 20x ({sizes[0]:.3g} -> {sizes[-1]:.3g})", sizes[-1] > 20 * sizes[0]
    )
    ctx.check(
        f"still growing after step 50 ({sizes[1]:.3g} -> {sizes[-1]:.3g})",
        sizes[-1] > 1.5 * sizes[1],
    )
    ctx.check("loss finite and fell", _fell(ctx.losses))


# -- rugby scrum push: Adam lr typed 5e-2 with no warm-up kills the ReLU units ---------------------


class RugbyScrumNet(nn.Module):
    """Regresses a scrum's peak push force from the 16 players' sensor readings."""

    def __init__(self, n_in=16, width=64):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def features(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


@scenario(
    family="rugby_scrum_push_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Adam on an MSE regression with the learning rate typed 5e-2 (meant 5e-4) and no "
    "warm-up. The first large steps push most of fc2's ReLU units negative for every "
    "input; they never fire again and get no gradient, so the regression is left to the "
    "handful of units that survived.",
)
def h146_rugby_scrum_dead_relus(ctx: Context) -> None:
    gen = seeded(14604)
    model = RugbyScrumNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    batches = _regression(gen, 16, 64)
    probe, _ = next(batches)
    with torch.no_grad():
        before = dead_fraction(model.features(probe))
    _train(ctx, model, opt, batches, 200, F.mse_loss)
    with torch.no_grad():
        after = dead_fraction(model.features(probe))
    ctx.check(
        f"fc2 dead fraction rose {before:.2f} -> {after:.2f} (>0.5)",
        after > 0.5 and after > before + 0.3,
    )


# -- monsoon onset: the GradScaler's growth_interval typed 1 (meant 1000) -------------------------


class MonsoonOnsetNet(nn.Module):
    """Forecasts the days to monsoon onset from 32 sea-surface and wind features."""

    def __init__(self, n_in=32, width=128):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        x = F.gelu(self.fc1(x))
        x = F.gelu(self.fc2(x))
        return self.head(F.gelu(self.fc3(x)))


@scenario(
    family="monsoon_onset_forecaster",
    optimizer="SGD",
    cause="amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    note="SGD with momentum 0.9 and an MSE loss under fp16 autocast with a GradScaler whose "
    "growth_interval was typed 1 (meant 1000) and init_scale 2**32. The scale doubles after "
    "every clean step until the scaled fp16 gradients overflow to inf: the first steps all "
    "overflow, and afterwards every other step overflows and is skipped, so training "
    "crawls at half its steps.",
)
def h146_monsoon_scaler_growth_typo(ctx: Context) -> None:
    gen = seeded(14605)
    model = MonsoonOnsetNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**32, growth_interval=1)
    _train(ctx, model, opt, _regression(gen, 32, 64), 160, F.mse_loss, scaler=scaler)
    s = [2.0**32] + ctx.scales
    drops = sum(1 for a, b in zip(s[:-1], s[1:], strict=False) if b < a)
    ctx.check(
        f"scale dropped (overflow) on {drops} of {len(ctx.scales)} steps (>30%)",
        drops > 0.3 * len(ctx.scales),
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- hockey shots on goal: Poisson NLL with the rate clamp removed --------------------------------


class HockeyShotNet(nn.Module):
    """Predicts the expected shots on goal in a period from 12 line-up and score features."""

    def __init__(self, n_in=12, width=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width))
        self.act = nn.ReLU()
        self.head = nn.Linear(width, 1)
        nn.init.constant_(self.head.bias, 3.0)

    def forward(self, x):
        return F.relu(self.head(self.act(self.body(x))))  # the rate; the clamp was removed


def _shot_counts(gen, batch=64, n_in=12):
    w = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        rate = torch.exp(0.8 * x @ w / math.sqrt(n_in) + 0.5)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="hockey_shots_on_goal_poisson",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("head",),
    diverges=65,
    heldout=True,
    onset=65,
    note="RMSprop on a hand-written Poisson NLL, rate - y*log(rate), with the rate taken as "
    "relu(head(x)). The rate.clamp_min(1e-6) was dropped in a refactor; once the head "
    "pushes one period's rate to exactly 0, log(0) = -inf and the loss is inf/NaN.",
)
def h146_hockey_poisson_log_zero(ctx: Context) -> None:
    gen = seeded(14606)
    model = HockeyShotNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    _train(ctx, model, opt, _shot_counts(gen), 200, _poisson_nll)
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check(f"loss non-finite at step {bad}", bad is not None)
    ctx.check("finite for the first 50 steps", bad is not None and bad > 50)


# -- Hugging Face Voxtral-Realtime text decoder: Adam's state dropped on a resume ----------------


class VoxtralTextLM(nn.Module):
    """The Voxtral-Realtime text decoder (built from a tiny config) with a fixed delay condition
    (what the audio stream would give it) and an untied LM head, trained on bytes."""

    def __init__(self, vocab=128, dim=32):
        super().__init__()
        from transformers.models.voxtral_realtime.configuration_voxtral_realtime import (
            VoxtralRealtimeTextConfig,
        )
        from transformers.models.voxtral_realtime.modeling_voxtral_realtime import (
            VoxtralRealtimeTextModel,
        )

        config = VoxtralRealtimeTextConfig(
            vocab_size=vocab,
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=dim // 2,
            max_position_embeddings=64,
            sliding_window=32,
        )
        self.model = VoxtralRealtimeTextModel(config)
        self.register_buffer("t_cond", 0.1 * torch.ones(1, 1, dim))
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        h = self.model(input_ids=idx, t_cond=self.t_cond).last_hidden_state
        return self.lm_head(h)


@scenario(
    family="hf_voxtral_realtime_text_decoder_lm",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Adam (lr 3e-3) on a byte LM that keeps an EMA of its weights (decay 0.998) for "
    "evaluation. The job is pre-empted and resumed at step 100, and the resume code loads "
    "the checkpoint's 'ema' entry into the live model instead of 'model': the weights jump "
    "back towards their early values, the loss spikes once, and the run (its optimizer "
    "state intact) recovers within a few dozen steps.",
)
def h146_voxtral_resume_loads_ema(ctx: Context) -> None:
    gen = seeded(14607)
    model = VoxtralTextLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ema = [p.detach().clone() for p in model.parameters()]
    onset = 100

    def after(step):
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.lerp_(p, 0.002)
            if step == onset - 1:
                for e, p in zip(ema, model.parameters(), strict=True):
                    p.copy_(e)

    batches = text_batches(gen, batch=8, length=24)
    _train(ctx, model, opt, batches, 200, _lm_loss, after=after)
    ls = ctx.losses
    before = _mean(ls[onset - 20 : onset])
    peak = max(ls[onset : onset + 5])
    ctx.check(f"loss spiked after the resume ({before:.3g} -> {peak:.3g})", peak > 1.4 * before)
    ctx.check("recovered by the end", _mean(ls[-20:]) < 1.05 * before)


# -- trumpet valve intonation: an IRNN's identity init scaled 1.3 instead of 1.0 ------------------


class TrumpetIntonationRNN(nn.Module):
    """Reads 40 frames of breath pressure and valve positions, regresses the cents off pitch."""

    def __init__(self, n_in=4, hidden=32):
        super().__init__()
        self.rnn = nn.RNN(n_in, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _valve_frames(gen, batch=32, frames=40, gain=2.0):
    w = torch.randn(4, generator=gen)
    while True:
        x = torch.rand(batch, frames, 4, generator=gen) - 0.5
        y = torch.tanh((x * w).sum(-1).mean(1, keepdim=True) * gain)
        yield x, y


@scenario(
    family="trumpet_valve_intonation_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="SGD with Nesterov momentum on a ReLU RNN with the IRNN recipe (recurrent weights "
    "initialised to the identity). The init helper scales the identity by a 'gain' "
    "argument left at 1.1 from a feed-forward experiment: over 40 frames the gradient "
    "through time grows ~1.1^40 (45x), the backpropagated gradient at the first frame is "
    "tens of times the last one's, the recurrent weights get a huge update and the loss "
    "blows up within the first steps.",
)
def h146_trumpet_irnn_gain(ctx: Context) -> None:
    gen = seeded(14608)
    model = TrumpetIntonationRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.1 * torch.eye(32))
        model.rnn.bias_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    batches = _valve_frames(gen)
    x0, y0 = next(batches)
    x0 = x0.clone().requires_grad_(True)
    F.mse_loss(model(x0), y0).backward()
    g = x0.grad.norm(dim=(0, 2))
    first, last = float(g[0]), float(g[-1])
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check(
        f"gradient at frame 0 is 20x frame 39's ({first:.3g} vs {last:.3g})", first > 20 * last
    )
    ctx.check(
        "loss blew up (non-finite or 100x its start)",
        not _finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0],
    )


# -- tannery hide grading: one shard logged thickness in microns ---------------------------------


class TanneryHideGrader(nn.Module):
    """Grades a tanned hide (6 grades) from 14 thickness, stretch and colour measurements."""

    def __init__(self, n_in=14, width=64, grades=6):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, grades)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="tannery_hide_grader",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="SGD with Nesterov momentum, cross-entropy and clipping at 5. The batch at step 110 comes from a "
    "tannery whose gauge logs hide thickness (4 of the 14 features) in microns instead of "
    "mm: those columns are 1000x too large, the logits and the loss explode on that batch "
    "and its gradient is many times the usual one; the run is knocked back and recovers "
    "on the clean batches that follow.",
)
def h146_tannery_micron_shard(ctx: Context) -> None:
    gen = seeded(14609)
    model = TanneryHideGrader()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    onset = 110

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :4] = x[:, :4] * 1000.0
        return x, y

    batches = _clusters(gen, 14, 6, 64, spread=1.2)
    _train(ctx, model, opt, batches, 220, F.cross_entropy, classifier=True, alter=alter, clip=5.0)
    g = ctx.grad_norms
    base = sorted(g[onset - 30 : onset])[15]
    ctx.check(f"gradient at step {onset} is 30x the median before", g[onset] > 30 * base)
    ls = ctx.losses
    ctx.check(
        "loss at the bad batch 10x the median before",
        ls[onset] > 10 * sorted(ls[onset - 30 : onset])[15],
    )
    ctx.check(
        "finite, and the last 20 steps within 1.5x the pre-onset loss",
        _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[onset - 20 : onset]) + 0.05,
    )


# -- masonry mortar cure: the unfreeze callback never fired, the encoder's group stays at lr 0 -----


class MortarCureNet(nn.Module):
    """Regresses a mortar joint's 28-day strength from 18 mix, humidity and temperature readings."""

    def __init__(self, n_in=18, width=64):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_in, width), nn.SiLU())
        self.mid = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.mid(self.encoder(x)))


@scenario(
    family="masonry_mortar_cure_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("encoder.0",),
    diverges=None,
    heldout=True,
    note="AdamW with param groups and a Huber loss. The recipe warms up the head with the "
    "encoder frozen (its group at lr 0) and unfreezes it at step 20 by a callback keyed on "
    "'epoch == 1' - but the loop counts steps, not epochs, so the callback never fires: "
    "the encoder's updates stay exactly zero for the whole run while the rest trains.",
)
def h146_masonry_encoder_never_unfrozen(ctx: Context) -> None:
    gen = seeded(14610)
    model = MortarCureNet()
    opt = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": 0.0},
            {"params": list(model.mid.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ],
        weight_decay=0.0,
    )
    w0 = model.encoder[0].weight.detach().clone()
    m0 = model.mid[0].weight.detach().clone()

    def before(step):
        epoch = step // 1000  # the bug: 'epoch' never reaches 1 in this run
        if epoch == 1:
            opt.param_groups[0]["lr"] = 3e-3

    _train(ctx, model, opt, _regression(gen, 18, 64), 200, F.huber_loss, before=before)
    with torch.no_grad():
        enc = float((model.encoder[0].weight - w0).norm() / w0.norm())
        mid = float((model.mid[0].weight - m0).norm() / m0.norm())
    ctx.check(f"encoder.0 never moved (relative change {enc:.2g})", enc < 1e-6)
    ctx.check(f"mid layer did move (relative change {mid:.2g})", mid > 0.05)
    ctx.check("losses finite", _finite(ctx.losses))


# -- polo chukker outcomes: a distillation temperature applied the wrong way round ----------------


class PoloChukkerClassifier(nn.Module):
    """Classifies a chukker's outcome (4 classes) from 22 pony, ride-off and possession stats."""

    def __init__(self, n_in=22, width=64, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)
        self.temperature = 0.01  # the bug: a divide-by-T written for T=100

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="polo_chukker_outcome_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Adamax with cross-entropy. The logits are divided by a temperature that the config "
    "gives as 0.01 (the code was written for a 'sharpness' of 100 to be divided, the config "
    "for a temperature to be divided by): the logits are 100x, the float32 softmax rounds "
    "most rows to exactly 0/1, those rows give no gradient and the rest give huge ones.",
)
def h146_polo_temperature_inverted(ctx: Context) -> None:
    gen = seeded(14611)
    model = PoloChukkerClassifier()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _clusters(gen, 22, 4, 64, spread=1.0)
    probe, py = next(batches)
    with torch.no_grad():
        start = collapsed_fraction(model(probe), py)
    _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        frac = collapsed_fraction(model(probe), py)
        top = float((torch.softmax(model(probe), -1).max(1).values == 1.0).float().mean())
    ctx.check(f"{frac:.2f} of rows give the target p == 1.0 exactly (>0.4)", frac > 0.4)
    ctx.check(f"collapse grew in training ({start:.2f} -> {frac:.2f})", frac > start + 0.2)
    ctx.check(f"{top:.2f} of rows have a top probability of exactly 1.0 (>0.4)", top > 0.4)


# -- fletcher arrow spine: the warm-up's peak learning rate typed 10x ------------------------------


class ArrowSpineNet(nn.Module):
    """Regresses an arrow shaft's static spine from 10 length, diameter and wood-density readings."""

    def __init__(self, n_in=10, width=32):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _top_hessian_eig(model, loss_fn, x, y, iters=30):
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="fletcher_arrow_spine_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=41,
    note="Plain SGD with an MSE loss and a linear warm-up over 200 steps to a peak lr typed "
    "2.0 (meant 0.2). Part-way up the ramp the learning rate passes 2/sharpness of the "
    "loss surface (the top Hessian eigenvalue, measured at the start); from there the "
    "iterates oscillate with growing amplitude along the sharp direction and the loss "
    "blows up before the warm-up ends.",
)
def h146_fletcher_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(14612)
    model = ArrowSpineNet()
    peak, warm = 2.0, 200
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    batches = _regression(gen, 10, 128, noise=0.02)
    xs, ys = next(batches)
    sharp = _top_hessian_eig(model, F.mse_loss, xs, ys)
    model.zero_grad(set_to_none=True)
    lrs = []

    def before(step):
        opt.param_groups[0]["lr"] = peak * min(step + 1, warm) / warm
        lrs.append(opt.param_groups[0]["lr"])

    _train(ctx, model, opt, batches, 200, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check(
        "loss blew up (non-finite or 50x its minimum)",
        not _finite(ls) or max(ls) > 50 * min(ls),
    )
    worst = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 50 * min(ls)), -1)
    cross = next((i for i, lr in enumerate(lrs) if lr > 2 / sharp), None)
    ctx.check(
        f"the blow-up (step {worst}) comes after lr passed 2/sharpness={2 / sharp:.3g} "
        f"(step {cross})",
        cross is not None and worst > cross,
    )


# -- bagel boil time: a loss-weight ramp indexed off the end for one step -------------------------


class BagelBoilNet(nn.Module):
    """Regresses the boil time a bagel batch needs from 12 dough, proof and water readings."""

    def __init__(self, n_in=12, width=48):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x))


@scenario(
    family="bagel_boil_time_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="SGD with momentum 0.9, an MSE loss and gradient clipping at 2. The loss is "
    "multiplied by a per-step weight from a ramp table; at step 90 (the epoch boundary) the "
    "index runs one past the table and wraps to the entry meant for a different "
    "curriculum, 200: that one backward pass gives a gradient hundreds of times the usual "
    "one. Clipping limits the damage and the run carries on.",
)
def h146_bagel_loss_weight_index(ctx: Context) -> None:
    gen = seeded(14613)
    model = BagelBoilNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    onset = 90
    _train(
        ctx,
        model,
        opt,
        _regression(gen, 12, 64),
        200,
        F.mse_loss,
        scale=lambda s: 200.0 if s == onset else 1.0,
        clip=2.0,
    )
    g = ctx.grad_norms
    base = sorted(g[onset - 30 : onset])[15]
    ctx.check(
        f"gradient at step {onset} is 50x the median before ({g[onset] / base:.3g}x)",
        g[onset] > 50 * base,
    )
    ctx.check("the next step's gradient is back within 5x", g[onset + 1] < 5 * base)
    ctx.check("losses finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="sitar_raga_phrase_transformer",
    optimizer="AdamW",
    cause="healthy",
    diverges=None,
    heldout=True,
    note="The raga transformer under fp16 autocast with a default torch.amp.GradScaler, AdamW "
    "(weight decay 0.05) with one learning rate for all groups, label smoothing 0.1 and "
    "clipping at 1.0 after unscaling: an ordinary mixed-precision run.",
)
def h146_sitar_raga_fp16_control(ctx: Context) -> None:
    gen = seeded(14614)
    model = SitarRagaTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(logits, y):
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=0.1
        )

    _train(ctx, model, opt, _raga_phrases(gen), 150, loss_fn, scaler=scaler, clip=1.0)
    ctx.check("loss fell by 20%", _fell(ctx.losses))
    ctx.check("all losses finite", _finite(ctx.losses))
    ctx.check("the scale never fell below its start", min(ctx.scales) >= 2.0**16)


@scenario(
    family="masonry_mortar_cure_regressor",
    optimizer="Adagrad",
    cause="healthy",
    diverges=None,
    heldout=True,
    note="The mortar regressor trained end to end with Adagrad (lr 0.05), a Huber loss on "
    "noisy targets (gauge noise 0.3) and ReduceLROnPlateau (factor 0.5, patience 10): the "
    "loss falls to the noise floor and plateaus.",
)
def h146_masonry_adagrad_plateau_control(ctx: Context) -> None:
    gen = seeded(14615)
    model = MortarCureNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _regression(gen, 18, 32, noise=0.3)
    _train(ctx, model, opt, batches, 200, F.huber_loss, sched=sched)
    ctx.check("loss fell by 20%", _fell(ctx.losses))
    ctx.check("all losses finite", _finite(ctx.losses))


class TrumpetIntonationGRU(nn.Module):
    """The intonation regressor with a GRU in place of the IRNN."""

    def __init__(self, n_in=4, hidden=32):
        super().__init__()
        self.rnn = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    family="trumpet_valve_intonation_gru",
    optimizer="RAdam",
    cause="healthy",
    diverges=None,
    heldout=True,
    note="A GRU intonation regressor with RAdam (lr 1e-2), gradient accumulation over 4 "
    "micro-batches of 16 (20-frame excerpts), clipping at 1.0 and a StepLR halving every 60 steps: ordinary "
    "recurrent training.",
)
def h146_trumpet_gru_accum_control(ctx: Context) -> None:
    gen = seeded(14616)
    model = TrumpetIntonationGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    batches = _valve_frames(gen, batch=16, frames=20, gain=8.0)
    _train(ctx, model, opt, batches, 150, F.mse_loss, accumulate=4, clip=1.0, sched=sched)
    ctx.check("loss fell by 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("all losses finite", _finite(ctx.losses))
