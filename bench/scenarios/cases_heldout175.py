"""Held-out set 175 (``h175_``): a Hugging Face Qwen3-Omni-MoE talker code predictor built from a
tiny config, and hand-written models of trades, crafts, sports, instruments and natural
phenomena not covered before: a pedal-steel transformer on ``nn.MultiheadAttention``, a foghorn
spectrum MLP under fp16 autocast, a cuckoo-clock Gaussian NLL regressor, a dragon-boat drum GRU
language model resumed from a checkpoint, a heliograph zenith regressor, a lake-ice 1-D conv
net, a piano tuner's torque regressor, a hallmark cosine classifier, a tumbleweed regressor and
three ordinary controls.

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
    digit_batches,
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


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=True,
    before=None,
    alter=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    after=None,
    attach=True,
):
    """The training loop of the whole file. ``before(step)`` runs first (schedules, injected
    bugs), ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records,
    ``after(step)`` runs once the step is logged (checkpoints); stops after logging a NaN."""
    if attach:
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
                ctx.targets(y.reshape(-1))
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(step, out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
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
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if math.isnan(shown):
            break


def _plain(fn):
    """A loss of (out, y) as a loss of (step, out, y)."""
    return lambda step, out, y: fn(out, y)


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(2 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


class Trunk(nn.Module):
    """fc1 -> act -> fc2 -> act -> head."""

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


# -- pedal steel guitar: a transformer port that dropped the pre-attention LayerNorm --------------


class SteelBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, h):
        # the recipe's block is h + attn(ln1(h)); the port kept only the MLP's LayerNorm
        a, _ = self.attn(h, h, h, need_weights=False)
        h = h + a
        return h + self.out(F.gelu(self.fc(self.ln(h))))


class SteelTransformer(nn.Module):
    """Reads 16 slide positions (24 bar positions, pedal up or down) and names the lick's target
    chord from the one position played with the pedal down."""

    def __init__(self, vocab=48, length=16, dim=32, heads=2, classes=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(length, dim))
        self.block = SteelBlock(dim, heads)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.dim = dim
        nn.init.normal_(self.tok.weight, std=dim**-0.5)  # the reference's init for the x sqrt(d)

    def forward(self, x):
        h = self.tok(x) * math.sqrt(self.dim) + self.pos
        h = self.block(h)
        return self.head(self.ln_f(h)[:, 0])


def _mha_max_logit(mha: nn.MultiheadAttention, h: torch.Tensor) -> float:
    """max |q.k| / sqrt(head_dim) of nn.MultiheadAttention on input h, from its in_proj."""
    d = mha.embed_dim
    hd = d // mha.num_heads
    with torch.no_grad():
        q, k, _ = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).split(d, dim=-1)
        b, t, _ = h.shape
        q = q.reshape(b, t, mha.num_heads, hd).transpose(1, 2)
        k = k.reshape(b, t, mha.num_heads, hd).transpose(1, 2)
        return float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(hd))


def _steel_licks(gen, batch, length=16, classes=6):
    """Slide positions 0-23, one of them played with the pedal down (token + 24); the label is
    the pedalled position folded into 6 chords."""
    while True:
        x = torch.randint(0, 24, (batch, length), generator=gen)
        at = torch.randint(1, length, (batch,), generator=gen)
        rows = torch.arange(batch)
        y = x[rows, at] % classes
        x[rows, at] += 24
        yield x, y


@scenario(
    family="pedal_steel_slide_mha_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("block.attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer on nn.MultiheadAttention naming the target chord of a pedal "
    "steel lick from the one slide position played with the pedal down, Adam at 1e-2 with "
    "no weight decay, cross-entropy. The port from a pre-LN reference kept the embedding "
    "multiplier sqrt(d_model) but dropped the block's first LayerNorm (h + attn(ln1(h)) "
    "became h + attn(h)), so the "
    "attention reads raw, growing embeddings: the task wants one sharp attention target and "
    "q.k / sqrt(d) grows from about 2 to about 60 within 60 steps and stays there (entropy "
    "collapse of the attention) while the loss stays finite.",
)
def h175_pedal_steel_attention_unnormed(ctx: Context) -> None:
    gen = seeded(17501)
    model = SteelTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    logits = []

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.tok(x) * math.sqrt(model.dim) + model.pos
        logits.append(_mha_max_logit(model.block.attn, h))

    _loop(
        ctx,
        model,
        opt,
        _steel_licks(gen, 64),
        260,
        _plain(F.cross_entropy),
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "max attention logit grew 20x from the first steps",
        _mean(logits[-10:]) > 20 * _mean(logits[:5]),
    )
    ctx.check("max attention logit past 50", max(logits) > 50)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- foghorn: a power spectrum fed in linear units under fp16 autocast ----------------------------

FOGHORN_PIER = 90


def _foghorn_spectra(gen, batch, bins=64, seed=11, pier_from=None):
    """Power spectra (linear units, Pa^2 per bin) of foghorn blasts with four fault flags
    (cracked diaphragm, low air, reed buzz, harmonic loss). The loader walks the stations in
    order; from ``pier_from`` on it reads the harbour pier's recordings, made 2 m from the horn
    (8x the power of the headland stations)."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.rand(4, bins, generator=g)
    f = torch.arange(bins).float()
    step = 0
    while True:
        flags = (torch.rand(batch, 4, generator=gen) < 0.4).float()
        fund = 4 + torch.randint(0, 3, (batch, 1), generator=gen).float()
        loud = 1.0 + torch.rand(batch, 1, generator=gen)
        if pier_from is not None and step >= pier_from:
            loud = 8 * loud
        harm = sum(torch.exp(-0.5 * ((f - k * fund) / 1.2) ** 2) / k for k in range(1, 6))
        spec = loud * 3000.0 * harm * (1 + 0.5 * flags @ shape)
        spec = spec + 2.0 * torch.rand(batch, bins, generator=gen)
        step += 1
        yield spec, flags


@scenario(
    family="foghorn_power_spectrum_fp16_mlp",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=FOGHORN_PIER,
    heldout=True,
    onset=FOGHORN_PIER,
    note="A ReLU MLP flagging four foghorn faults from a 64-bin power spectrum, NAdam at 1e-3, "
    "BCE with logits, fp16 autocast with a torch.amp.GradScaler. The recipe's feature step is "
    "10 * log10(power); the new export gives linear power and nobody took the log, so fc1's "
    "float16 inputs and outputs already sit near 5000-10000 on the headland stations. The "
    "loader walks the stations in order and at step 90 reaches the harbour pier, recorded "
    "2 m from the horn (8x the power, harmonic bins near 9e4): autocast casts fc1's input to "
    "float16, the loudest bins pass 65504 and become inf, fc1's output is inf and the loss "
    "is NaN at step 90 (the same batch in float32 gives a finite loss).",
)
def h175_foghorn_linear_power_fp16(ctx: Context) -> None:
    gen = seeded(17502)
    model = Trunk(64, hidden=64, out=4)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    peaks, fp32, loudest = [], [], []

    def watch(step, out, x, y):
        loudest.append(float(x.max()))
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.float16):
                peaks.append(float(model.fc1(x).float().abs().max()))
            fp32.append(float(F.binary_cross_entropy_with_logits(model(x), y)))

    _loop(
        ctx,
        model,
        opt,
        _foghorn_spectra(gen, 64, pier_from=FOGHORN_PIER),
        160,
        _plain(F.binary_cross_entropy_with_logits),
        scaler=scaler,
        watch=watch,
    )
    at = FOGHORN_PIER
    ctx.check("loss finite before the pier recordings", _finite(ctx.losses[:at]))
    ctx.check("loss NaN at step 90", len(ctx.losses) == at + 1 and math.isnan(ctx.losses[at]))
    ctx.check("fc1's float16 output is inf at step 90", math.isinf(peaks[at]))
    ctx.check("fc1's float16 output finite and past 1000 before", 1e3 < max(peaks[:at]) < 65504)
    ctx.check("the same batch in float32 gives a finite loss", math.isfinite(fp32[at]))
    ctx.check("inputs below float16's 65504 before step 90", max(loudest[:at]) < 65504)
    ctx.check("the pier batch's loudest bin past 65504", loudest[at] > 65504)


# -- cuckoo clock: an epoch-total log that rebinds the loss before backward -----------------------


class PendulumNet(nn.Module):
    """Mean and log-variance of a cuckoo clock's pendulum period from its bob, rod and weights."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


CUCKOO_SAVE = 50


@scenario(
    family="cuckoo_clock_pendulum_period_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=CUCKOO_SAVE,
    note="A tanh MLP with a mean and a log-variance head predicting a cuckoo clock's pendulum "
    "period from 12 bob, rod and weight measurements, Adam at 1e-3, Gaussian NLL. At the "
    "first checkpoint (step 50) the save helper logs the epoch total by rebinding "
    "`loss = loss * samples_seen` (3200) before the caller's backward(): one gradient 3200 "
    "times the usual lands in Adam's second moment, which then decays with beta2 = 0.999 "
    "over thousands of steps; every later update is about 20x smaller and the fit stalls.",
)
def h175_cuckoo_epoch_total_backward(ctx: Context) -> None:
    gen = seeded(17503)
    model = PendulumNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    prev = [p.detach().clone() for p in model.parameters()]

    def loss_fn(step, out, y):
        loss = _gauss_nll(out, y)
        if step == CUCKOO_SAVE:
            loss = loss * (step * 64)  # the log helper's epoch total, kept as the loss
        return loss

    def after(step):
        now = [p.detach().clone() for p in model.parameters()]
        moves.append(float(sum((a - b).norm() ** 2 for a, b in zip(now, prev, strict=True)) ** 0.5))
        prev[:] = now

    _loop(ctx, model, opt, _readings(gen, 64, 12, seed=4, noise=0.1), 200, loss_fn, after=after)
    at = CUCKOO_SAVE
    ctx.check(
        "gradient at the save step 100x the median before",
        ctx.grad_norms[at] > 100 * _median(ctx.grad_norms[:at]),
    )
    ctx.check(
        "updates after the save 10x smaller than before",
        _mean(moves[at + 20 :]) < 0.1 * _mean(moves[at - 20 : at]),
    )
    ctx.check(
        "loss improved less in the 150 steps after the save than in the 50 before",
        ctx.losses[0] - _mean(ctx.losses[at - 5 : at])
        > 2 * (_mean(ctx.losses[at - 5 : at]) - _mean(ctx.losses[-5:])),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- dragon boat drum: a resume that finds no optimizer state under the key it reads --------------


class DrumGRU(nn.Module):
    """A GRU language model over a dragon-boat drummer's beat tokens (16 inter-beat interval
    buckets), head tied to the embedding."""

    def __init__(self, vocab=16, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        h, _ = self.gru(self.embed(x))
        return self.head(h)


def _drum_calls(gen, batch, length=32):
    """Interval buckets of a race: a start burst (short intervals), a settle and a final push,
    phase lengths and jitter drawn per race."""
    while True:
        out = []
        for _ in range(batch):
            burst = int(torch.randint(4, 10, (1,), generator=gen))
            push = int(torch.randint(20, 28, (1,), generator=gen))
            seq = []
            for t in range(length + 1):
                base = 3 if t < burst else (11 if t < push else 5)
                base += int(torch.randint(-1, 2, (1,), generator=gen))
                seq.append(max(0, min(15, base + (t % 2))))
            out.append(seq)
        win = torch.tensor(out)
        yield win[:, :-1], win[:, 1:]


def _lm_loss(step, out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


DRUM_RESUME = 70


@scenario(
    family="dragon_boat_drum_pace_gru_lm",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=DRUM_RESUME,
    note="A GRU language model with its head tied to the embedding over a dragon-boat drummer's "
    "beat intervals, AdamW at 2e-2 after a 20-step linear warm-up, cross-entropy. The job is "
    "preempted at step 70 and resumed from the checkpoint it wrote there: the save helper "
    "stores the optimizer under 'optim', the resume script reads 'optimizer' with a "
    "`.get()` and silently keeps a fresh AdamW while the model and the scheduler (at the full "
    "lr) are restored. With zero moments the first updates are lr-sized on every coordinate, "
    "the loss jumps several-fold for a few steps and the run recovers.",
)
def h175_dragon_boat_resume_without_optimizer(ctx: Context) -> None:
    import io

    gen = seeded(17504)
    model = DrumGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    fresh = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.01).state_dict()
    found = []

    def after(step):
        if step != DRUM_RESUME - 1:
            return
        buf = io.BytesIO()
        torch.save(
            {"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict()},
            buf,
        )
        buf.seek(0)
        # -- preempted here; the resumed process builds the model, AdamW and the schedule anew --
        ckpt = torch.load(buf, weights_only=True)
        model.load_state_dict(ckpt["model"])
        state = ckpt.get("optimizer")
        found.append(state is not None)
        opt.load_state_dict(state if state is not None else fresh)
        sched.load_state_dict(ckpt["sched"])

    _loop(
        ctx,
        model,
        opt,
        _drum_calls(gen, 32),
        160,
        _lm_loss,
        classifier=True,
        sched=sched,
        after=after,
    )
    at = DRUM_RESUME
    before = _mean(ctx.losses[at - 10 : at])
    ctx.check("the resume found no optimizer state", found == [False])
    ctx.check(
        "loss after the resume 3x the 10 steps before", max(ctx.losses[at : at + 5]) > 3 * before
    )
    ctx.check("loss back within 20% of before by the end", _mean(ctx.losses[-10:]) < 1.2 * before)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- tin whistle tunes on a Hugging Face Qwen3-Omni-MoE talker code predictor ----------------------


class WhistleLM(nn.Module):
    """Note embedding -> Qwen3-Omni-MoE talker code predictor (from a tiny config) -> head."""

    def __init__(self, vocab=24, dim=32, layers=2):
        super().__init__()
        from transformers import AutoConfig
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
            Qwen3OmniMoeTalkerCodePredictorModel,
        )

        cfg = AutoConfig.for_model(
            "qwen3_omni_moe_talker_code_predictor",
            vocab_size=vocab,
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            num_code_groups=2,
            max_position_embeddings=64,
        )
        self.embed = nn.Embedding(vocab, dim)
        self.backbone = Qwen3OmniMoeTalkerCodePredictorModel(cfg)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, x):
        h = self.backbone(inputs_embeds=self.embed(x), use_cache=False).last_hidden_state
        return self.head(h)


def _whistle_tunes(gen, batch, length=24):
    """D-whistle jig phrases: a random key offset, runs up and down the scale with repeats."""
    while True:
        out = []
        for _ in range(batch):
            note = int(torch.randint(0, 8, (1,), generator=gen))
            step = 1
            seq = []
            for t in range(length + 1):
                seq.append(note)
                if t % 3 == 2:
                    continue  # the jig's held third quaver repeats the note
                if torch.rand(1, generator=gen) < 0.2:
                    step = -step
                note = max(0, min(23, note + step))
            out.append(seq)
        win = torch.tensor(out)
        yield win[:, :-1], win[:, 1:]


WHISTLE_UNFREEZE_EPOCH = 1
WHISTLE_STEPS_PER_EPOCH = 400


@scenario(
    family="hf_qwen3_omni_code_predictor_tin_whistle_lm",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("backbone", "backbone.layers"),
    diverges=None,
    heldout=True,
    note="A next-note model of tin-whistle jigs on the Hugging Face Qwen3-Omni-MoE talker code "
    "predictor (model type qwen3_omni_moe_talker_code_predictor, 2 layers of 32, QK-norm) "
    "with its own note embedding and head, RAdam in two param groups, cross-entropy. The "
    "recipe freezes the backbone for the first epoch of a fine-tune by holding its group's "
    "lr at 0 until `step >= unfreeze_epoch * steps_per_epoch`; here the backbone is trained "
    "from scratch, steps_per_epoch is 400 and the run is 150 steps, so the whole transformer "
    "never moves: only the embedding and the head learn and the loss ends near 2.2 where the same "
    "run with the backbone training reaches 1.25.",
)
def h175_whistle_backbone_never_unfrozen(ctx: Context) -> None:
    gen = seeded(17505)
    model = WhistleLM()
    lr = 3e-3
    opt = torch.optim.RAdam(
        [
            {"params": model.backbone.parameters(), "lr": 0.0},
            {"params": list(model.embed.parameters()) + list(model.head.parameters()), "lr": lr},
        ]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def before(step):
        if step >= WHISTLE_UNFREEZE_EPOCH * WHISTLE_STEPS_PER_EPOCH:
            opt.param_groups[0]["lr"] = lr

    _loop(ctx, model, opt, _whistle_tunes(gen, 32), 150, _lm_loss, classifier=True, before=before)

    def moved(prefix):
        return max(
            float((p.detach() - start[n]).abs().max())
            for n, p in model.named_parameters()
            if n.startswith(prefix)
        )

    # the same run with the backbone's group at the base lr, for comparison (not monitored)
    gen = seeded(17505)
    twin = WhistleLM()
    twin_opt = torch.optim.RAdam(twin.parameters(), lr=lr)
    tunes, twin_losses = _whistle_tunes(gen, 32), []
    for _ in range(150):
        x, y = next(tunes)
        loss = _lm_loss(0, twin(x), y)
        loss.backward()
        twin_opt.step()
        twin_opt.zero_grad()
        twin_losses.append(float(loss.detach()))
    ctx.check("no backbone layer weight moved", moved("backbone.layers") == 0.0)
    ctx.check(
        "the twin with a trained backbone ends 20% lower",
        _mean(twin_losses[-10:]) < 0.8 * _mean(ctx.losses[-10:]),
    )
    ctx.check("the head and the embedding moved", min(moved("head"), moved("embed")) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- heliograph: a zenith angle taken with acos of a ratio that rounds past 1 -------------------


class ZenithAngle(nn.Module):
    """Zenith angle of a direction vector: acos(z / |v|), written without a clamp."""

    def forward(self, v):
        return torch.acos(v[:, 2] / v.norm(dim=-1))


class HeliographNet(nn.Module):
    """Sun direction from a heliograph station's date, clock and latitude features, read out
    as the zenith angle the mirror must be tilted to."""

    def __init__(self, d_in=6, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.direction = nn.Linear(hidden, 3)
        self.zenith = ZenithAngle()

    def forward(self, x):
        return self.zenith(self.direction(self.act2(self.fc2(self.act1(self.fc1(x))))))


def _sun_sights(gen, batch):
    """Declination, hour angle and latitude (as sin/cos pairs) and the sun's zenith angle; a
    quarter of the sights come from tropical stations at noon with the sun overhead."""
    while True:
        dec = math.radians(23.44) * (2 * torch.rand(batch, generator=gen) - 1)
        hour = math.radians(60) * (2 * torch.rand(batch, generator=gen) - 1)
        lat = math.radians(35) + math.radians(20) * torch.rand(batch, generator=gen)
        k = batch // 4
        lat[:k] = dec[:k]
        hour[:k] = 0.0
        cos_z = torch.sin(lat) * torch.sin(dec) + torch.cos(lat) * torch.cos(dec) * torch.cos(hour)
        x = torch.stack(
            [
                torch.sin(dec),
                torch.cos(dec),
                torch.sin(hour),
                torch.cos(hour),
                torch.sin(lat),
                torch.cos(lat),
            ],
            -1,
        )
        yield x, torch.acos(cos_z.clamp(-1, 1))


HELIO_NAN = 232


@scenario(
    family="heliograph_mirror_zenith_regressor",
    optimizer="SGD(momentum)",
    cause="nonfinite",
    where=("zenith",),
    diverges=HELIO_NAN,
    heldout=True,
    note="A tanh MLP giving the sun's direction for a heliograph station from date, clock and "
    "latitude, read out as the zenith angle acos(z / |v|) the mirror is tilted to, SGD with "
    "momentum 0.9 at 0.1, MSE on the angle. The readout has no clamp: the tropical stations "
    "see the sun overhead at noon (zenith 0), the fit pushes those directions to vertical, "
    "z / |v| rounds to exactly 1.0 in float32 on one sight at step 232, where acos's "
    "gradient -1 / sqrt(1 - x^2) is infinite: the gradient is NaN at step 232, the weights "
    "after it are NaN and the loss is NaN from step 233, after falling 300-fold.",
)
def h175_heliograph_acos_unclamped(ctx: Context) -> None:
    gen = seeded(17506)
    model = HeliographNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ratios = []

    def watch(step, out, x, y):
        with torch.no_grad():
            v = model.direction(model.act2(model.fc2(model.act1(model.fc1(x)))))
            ratios.append(float((v[:, 2] / v.norm(dim=-1)).max()))

    _loop(ctx, model, opt, _sun_sights(gen, 64), 300, _plain(F.mse_loss), watch=watch)
    at = HELIO_NAN
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN first at step 233", bad == at + 1)
    ctx.check("the loss fell 100x before", min(ctx.losses[:at]) < 0.01 * ctx.losses[0])
    ctx.check("z / |v| reached 1.0 at step 232", ratios[at] >= 1.0 > max(ratios[:at]))
    ctx.check("gradient finite before step 232", _finite(ctx.grad_norms[:at]))
    ctx.check("gradient non-finite at step 232", not math.isfinite(ctx.grad_norms[at]))


# -- singing lake ice: an embedding init helper that also catches every Conv1d ------------------


class IceBoomNet(nn.Module):
    """Seven ReLU 1-D convolutions over a hydrophone trace of lake ice and a head naming the
    sound (boom, ping, twang, crack)."""

    def __init__(self, channels=16, depth=7, classes=4):
        super().__init__()
        self.stem = nn.Embedding(1, 1)  # a per-lake calibration offset, the only embedding
        convs = [nn.Conv1d(1, channels, 5, padding=2)]
        convs += [nn.Conv1d(channels, channels, 5, padding=2) for _ in range(depth - 1)]
        self.convs = nn.ModuleList(convs)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        h = x[:, None, :] + self.stem.weight
        for conv in self.convs:
            h = F.relu(conv(h))
        return self.head(h.mean(-1))


EMBED_STD = 0.5  # the character-CNN recipe's embedding std


def _init_embeddings(m: nn.Module) -> None:
    """The recipe's embedding init; its isinstance tuple also lists nn.Conv1d (a leftover of a
    character-CNN variant), so every convolution gets N(0, 0.5) too."""
    if isinstance(m, (nn.Embedding, nn.Conv1d)):
        nn.init.normal_(m.weight, mean=0.0, std=EMBED_STD)


def _ice_sounds(gen, batch, length=64, classes=4):
    """Hydrophone traces: a decaying tone whose pitch and decay depend on the sound type."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        pitch = 0.15 + 0.12 * y.float()[:, None]
        decay = 0.02 + 0.03 * (y.float()[:, None] % 2)
        x = torch.sin(pitch * t) * torch.exp(-decay * t)
        yield x + 0.1 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="lake_ice_boom_conv1d",
    optimizer="SGD",
    cause="exploding_gradients",
    where=tuple(f"convs.{i}" for i in range(7)),
    diverges=None,
    heldout=True,
    note="Seven ReLU 1-D convolutions naming the sound a frozen lake makes (boom, ping, twang, "
    "crack) from a hydrophone trace, plain SGD at 0.01 with clip_grad_norm_(1.0), "
    "cross-entropy. model.apply() runs the recipe's embedding init N(0, 0.5), whose isinstance "
    "tuple still lists nn.Conv1d: every kernel gets 3x He's std for 80 inputs, each layer "
    "multiplies the signal and the backward gradient by about 3 and the gradient norm is in "
    "the thousands at step 0 (over 1000 times the default init's) and stays in the hundreds; "
    "clipping keeps the run finite but every step is clipped and the loss stays well above "
    "chance level's ln 4 long after a normal init would have fitted.",
)
def h175_lake_ice_conv_init_normal(ctx: Context) -> None:
    gen = seeded(17507)
    model = IceBoomNet()
    model.apply(_init_embeddings)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # the same net with PyTorch's default init, one batch, for comparison (not trained)
    twin = IceBoomNet()
    x0, y0 = next(_ice_sounds(torch.Generator().manual_seed(3), 32))
    F.cross_entropy(twin(x0), y0).backward()
    twin_grad = grad_norm(twin)
    _loop(
        ctx,
        model,
        opt,
        _ice_sounds(gen, 32),
        150,
        _plain(F.cross_entropy),
        classifier=True,
        clip=1.0,
    )
    ctx.check("gradient at step 0 1000x the default init's", ctx.grad_norms[0] > 1000 * twin_grad)
    ctx.check(
        "gradient norm above 100 on 90% of the steps (clipped to 1 each time)",
        sum(g > 100 for g in ctx.grad_norms) > 0.9 * len(ctx.grad_norms),
    )
    ctx.check("loss at step 0 past 100", ctx.losses[0] > 100)
    ctx.check("last losses still above ln(4)", _mean(ctx.losses[-10:]) > math.log(4))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- piano tuner: one log row shifted by a column, the pitch read as the torque -------------------


def _pin_logs(gen, batch, seed=8, shifted_at=None):
    """Eight standardised readings per tuning pin (pin age, block humidity, string gauge, ...) and
    the turning torque (standardised). In batch ``shifted_at`` one row of the merged log is
    shifted by a column: its target is the string's pitch in hertz (523.3)."""
    readings = _readings(gen, batch, 8, seed=seed, noise=0.05)
    step = 0
    while True:
        x, y = next(readings)
        if step == shifted_at:
            y = y.clone()
            y[7] = 523.3
        step += 1
        yield x, y


PIANO_SHIFT = 80


@scenario(
    family="piano_tuner_pin_torque_regressor",
    optimizer="SGD(Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=PIANO_SHIFT,
    note="A ReLU MLP predicting a piano tuner's pin-turning torque from eight standardised "
    "readings, SGD with Nesterov momentum 0.9 at 0.02, MSE. Two tuning logs were merged and "
    "one row of the second lost a field, so every later column shifted left: in the batch at "
    "step 80 one target is the string's pitch, 523.3 (C5, in hertz), among standardised "
    "torques near 0. The batch's loss is 10^4-10^5 times the usual, the gradient jumps about "
    "300-fold, the momentum carries the kick over the next steps and the fit takes some 40 "
    "steps to come back.",
)
def h175_piano_pin_log_column_shift(ctx: Context) -> None:
    gen = seeded(17508)
    model = Trunk(8, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    _loop(ctx, model, opt, _pin_logs(gen, 32, shifted_at=PIANO_SHIFT), 160, _plain(F.mse_loss))
    at = PIANO_SHIFT
    before = _mean(ctx.losses[at - 10 : at])
    ctx.check("loss fell before the shifted row", before < 0.5 * ctx.losses[0])
    ctx.check("loss at step 80 10^4 times the 10 before", ctx.losses[at] > 1e4 * before)
    ctx.check(
        "gradient at step 80 100x the median before",
        ctx.grad_norms[at] > 100 * _median(ctx.grad_norms[:at]),
    )
    ctx.check("the loss came back within 2x by the end", _mean(ctx.losses[-10:]) < 2 * before)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- hallmarks: a face-recognition cosine head's scale copied to a 10-punch classifier ------------


class CosineHead(nn.Module):
    """s * cos(feature, class weight), the CosFace/ArcFace head without its margin."""

    def __init__(self, d, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) / math.sqrt(d))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class HallmarkNet(nn.Module):
    """Reads an 8x8 hallmark punch (the assay office's date-letter digits) and names it."""

    def __init__(self, s=30.0):
        super().__init__()
        self.s = s
        self.fc1 = nn.Linear(64, 128)
        self.act1 = nn.ReLU()
        self.embed = nn.Linear(128, 64)  # the face recipe's embedding layer, no activation
        self.head = CosineHead(64, 10, scale=s)

    def forward(self, x):
        # written for a head returning cos; the CosFace head swapped in already applies s
        return self.s * self.head(self.embed(self.act1(self.fc1(x))))


@scenario(
    family="assay_office_hallmark_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP with a cosine-softmax head naming an assay office's date-letter punch from "
    "an 8x8 image (scikit-learn's digits), Adagrad at 0.05, cross-entropy. The model was "
    "written for a head returning plain cosines and multiplies them by s = 30; the CosFace "
    "head swapped in from a face-recognition library already returns s * cos, so the logits "
    "are 900 * cos: a cosine gap of 0.03 is a logit gap of 27, the float32 softmax gives the "
    "target exactly 1.0 (loss exactly 0) for most rows by mid-run and those rows stop "
    "teaching anything.",
)
def h175_hallmark_cosface_scale_copied(ctx: Context) -> None:
    gen = seeded(17509)
    model = HallmarkNet(s=30.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    collapsed, logit_max = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        logit_max.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        _plain(F.cross_entropy),
        classifier=True,
        watch=watch,
    )
    ctx.check("under 10% of rows collapsed at step 0", collapsed[0] < 0.1)
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("largest logit past 300", max(logit_max) > 300)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- tumbleweed: an augmentation strength ramp with no cap ---------------------------------------


TUMBLE_RAMP = 0.015  # noise std added per step; the recipe caps it at 0.3


@scenario(
    family="tumbleweed_drift_distance_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=20,
    note="A SiLU MLP predicting how far a tumbleweed rolls in a day from ten standardised "
    "weather readings, RMSprop at 1e-3, Huber loss. The recipe's robustness augmentation adds "
    "Gaussian noise to the readings with a std ramped up as min(0.015 * step, 0.3); the cap "
    "was lost in a refactor, so from step 20 the noise keeps growing (std 3 by step 200): "
    "the inputs drown, the fit gets worse step after step and the loss climbs slowly over "
    "the run with nothing in the model to blame.",
)
def h175_tumbleweed_noise_ramp_uncapped(ctx: Context) -> None:
    gen = seeded(17510)
    model = Trunk(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    noise = torch.Generator().manual_seed(17)
    added = []

    def alter(step, x, y):
        std = TUMBLE_RAMP * step  # min(TUMBLE_RAMP * step, 0.3) in the recipe
        shaken = x + std * torch.randn(x.shape, generator=noise)
        added.append(float((shaken - x).std()))
        return shaken, y

    readings = _readings(gen, 64, 10, seed=9, noise=0.05)
    _loop(ctx, model, opt, readings, 200, _plain(F.huber_loss), alter=alter)
    low = min(range(len(ctx.losses) - 10), key=lambda i: _mean(ctx.losses[i : i + 10]))
    ctx.check("added noise std under 0.3 until step 20", max(added[:20]) < 0.33)
    ctx.check("added noise std past 2.5 at the end", _mean(added[-10:]) > 2.5)
    ctx.check(
        "last losses 3x the lowest 10-step mean",
        _mean(ctx.losses[-10:]) > 3 * _mean(ctx.losses[low : low + 10]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- healthy controls ----------------------------------------------------------------------------


class EngraverCNN(nn.Module):
    """A BatchNorm CNN reading a music engraver's 8x8 punched glyphs (scikit-learn's digits)."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        h = self.pool(self.act2(self.bn2(self.conv2(h))))
        return self.head(h.flatten(1))


@scenario(
    family="music_engraver_glyph_bn_cnn",
    optimizer="SGD(Nesterov)",
    cause="healthy",
    heldout=True,
    note="Control: a BatchNorm CNN reading a music engraver's punched glyphs (scikit-learn's "
    "digits), SGD with Nesterov momentum 0.9 and weight decay 5e-4 under OneCycleLR (max lr "
    "0.1), cross-entropy with label smoothing 0.1.",
)
def h175_engraver_glyph_onecycle_control(ctx: Context) -> None:
    gen = seeded(17511)
    model = EngraverCNN()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        _plain(lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1)),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


class MoulinLSTM(nn.Module):
    """An LSTM over hourly melt readings forecasting a glacier moulin's next-hour discharge."""

    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.head(h[:, -1]).squeeze(-1)


def _melt_days(gen, batch, length=24):
    """Air temperature, sunshine and yesterday's discharge per hour; the target is the next
    hour's discharge (a lagged, smoothed response to the melt)."""
    t = torch.arange(length + 1).float()
    while True:
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        phase = 0.5 * torch.randn(batch, 1, generator=gen)
        temp = amp * torch.sin(2 * math.pi * t / 24 + phase)
        sun = torch.relu(torch.sin(2 * math.pi * t / 24 + phase + 0.3))
        q = torch.zeros(batch, length + 1)
        for i in range(1, length + 1):
            q[:, i] = 0.8 * q[:, i - 1] + 0.3 * torch.relu(temp[:, i - 1]) + 0.1 * sun[:, i - 1]
        x = torch.stack([temp[:, :-1], sun[:, :-1], q[:, :-1]], -1)
        yield x + 0.02 * torch.randn(x.shape, generator=gen), q[:, -1]


@scenario(
    family="glacier_moulin_discharge_lstm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: an LSTM forecasting a glacier moulin's next-hour meltwater discharge from "
    "24 hours of temperature, sunshine and discharge, AdamW at 3e-3 with weight decay 0.01, "
    "a 15-step linear warm-up then cosine decay (LambdaLR), clip_grad_norm_(1.0), MSE.",
)
def h175_moulin_lstm_warmup_cosine_control(ctx: Context) -> None:
    gen = seeded(17512)
    model = MoulinLSTM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 150, 15

    def schedule(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    _loop(ctx, model, opt, _melt_days(gen, 32), steps, _plain(F.mse_loss), clip=1.0, sched=sched)
    ctx.check("loss fell to a fifth", _fell(ctx.losses, ratio=0.2))


@scenario(
    family="whistling_kettle_pitch_fp16_mlp",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP predicting a whistling kettle's whistle pitch from ten "
    "standardised readings (water level, power, spout bore, ...), fp16 autocast with a "
    "torch.amp.GradScaler, accumulation over 2 micro-batches, clip_grad_norm_(1.0) after "
    "unscale_, Huber loss, Adamax at 2e-3 under ReduceLROnPlateau.",
)
def h175_kettle_fp16_accumulate_control(ctx: Context) -> None:
    gen = seeded(17513)
    model = Trunk(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=13),
        150,
        _plain(F.huber_loss),
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scaler's scale stayed at 1 or above", min(ctx.scales) >= 1.0)
