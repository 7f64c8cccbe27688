"""Held-out set 104 (``h104_``): Hugging Face RADIO, ModernVBERT and LFM2-VL from tiny configs,
and hand-written models of fields not yet covered: GloVe, CBOW word2vec, a WaveGrad-style
diffusion vocoder, a MusicVAE-style hierarchical LSTM VAE, a generative query network, a 3-D
U-Net on voxel grids, a PWC-Net-style flow net with a cost volume, self-supervised stereo depth,
a DCGAN (fp16 autocast with a GradScaler), NADE and a spatial propagation network for lanes.

Each scenario induces its fault the way it happens in practice and checks that it happened.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    digit_batches,
    digits,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
    text_bytes,
)


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _loop(ctx: Context, model, opt, steps: int, loss_at, *, sched=None, before=None):
    """attach once, then step: loss.backward(); opt.step(); ctx.step(loss)."""
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)


# -- Hugging Face RADIO (vision backbone) + linear head on digits --------------------------------


class RadioDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import RadioConfig, RadioModel

        cfg = RadioConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=2,
            image_size=8,
            max_img_size=16,
            patch_dim=12,
            num_cls_tokens=1,
            num_registers=1,
            summary_idxs=[0],
        )
        self.backbone = RadioModel(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(-1, 1, 8, 8).expand(-1, 3, 8, 8)
        out = self.backbone(pixel_values=img)
        return self.head(out.summary)


def radio_attention_logit_max(model: RadioDigits, x: torch.Tensor) -> float:
    """max |q.k|/sqrt(d_head) over layers, read from the q/k projections with hooks."""
    caught: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.backbone.named_modules():
        if name.endswith("q_proj") or name.endswith("k_proj"):
            hooks.append(
                mod.register_forward_hook(lambda m, i, o, n=name: caught.__setitem__(n, o))
            )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    top = 0.0
    for name in caught:
        if not name.endswith("q_proj"):
            continue
        q, k = caught[name], caught[name[:-6] + "k_proj"]
        b, t, d = q.shape
        q, k = (z.reshape(b, t, 2, d // 2).transpose(1, 2) for z in (q, k))
        top = max(top, float((q @ k.transpose(-1, -2)).abs().amax() / math.sqrt(d // 2)))
    return top


@scenario(
    "h104_hf_radio_digits",
    "adamw",
    "attention_logit_growth",
    where=("backbone.encoder.layer.0.attention", "backbone.encoder.layer.1.attention"),
    diverges=None,
    heldout=True,
    note="q/k projections at a 'new layer' lr multiplier, no QK-norm, no weight decay",
)
def h104_radio_qk_lr_digits(ctx: Context) -> None:
    """A RADIO backbone fine-tuned on digits; a per-group override meant for the new head puts
    the query/key projections at 30x the base rate without weight decay: the attention logits
    grow by more than an order of magnitude and attention saturates."""
    gen = seeded(10401)
    model = RadioDigits()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": qk, "lr": 3e-2}], weight_decay=0.0
    )
    batches = digit_batches(gen, 64)
    probe = digits()[0][:128]
    start = radio_attention_logit_max(model, probe)

    def loss_at(step):
        x, y = next(batches)
        ctx.targets(y)
        return F.cross_entropy(model(x), y)

    _loop(ctx, model, opt, 200, loss_at)
    end = radio_attention_logit_max(model, probe)
    ctx.check("attention logits grew 20x", end > 20 * start)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario("h104_hf_radio_digits", "adam", "healthy", heldout=True, note="cosine schedule")
def h104_radio_healthy_digits(ctx: Context) -> None:
    """The same RADIO backbone trained with Adam at one sensible rate, warm-up and cosine decay."""
    gen = seeded(10402)
    model = RadioDigits()
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    steps = 360
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    batches = digit_batches(gen, 64)

    def loss_at(step):
        x, y = next(batches)
        ctx.targets(y)
        return F.cross_entropy(model(x), y)

    _loop(ctx, model, opt, steps, loss_at, sched=sched)
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("losses finite", _finite(ctx.losses))


# -- Hugging Face ModernVBERT: digit question answering ---------------------------------------


def modernvbert(labels: int = 10):
    from transformers import ModernVBertConfig, ModernVBertForSequenceClassification

    tc = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        local_attention=16,
    )
    vc = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_channels=3,
        image_size=8,
        patch_size=2,
    )
    cfg = ModernVBertConfig(
        text_config=tc,
        vision_config=vc,
        image_token_id=63,
        pixel_shuffle_factor=2,
        num_labels=labels,
    )
    return ModernVBertForSequenceClassification(cfg)


def vqa_batches(gen: torch.Generator, batch: int = 48):
    """[CLS] <image x4> 'which digit ?' [SEP] with the digit image; the label is the digit."""
    question = torch.tensor([10, 11, 12, 13])
    for x, y in digit_batches(gen, batch):
        b = len(y)
        ids = torch.cat(
            [
                torch.ones(b, 1, dtype=torch.long),
                torch.full((b, 4), 63),
                question.expand(b, 4),
                torch.full((b, 1), 2),
            ],
            1,
        )
        pix = (x.reshape(b, 1, 1, 8, 8).expand(b, 1, 3, 8, 8) - 0.5) / 0.5
        yield ids, pix, y


@scenario(
    "h104_hf_modernvbert_digit_vqa",
    "radam",
    "update_ratio_out_of_range",
    where=("model.connector.modality_projection",),
    diverges=None,
    heldout=True,
    note="connector group given lr=1.0 (a multiplier read as a rate)",
)
def h104_modernvbert_connector_lr(ctx: Context) -> None:
    """The freshly initialised vision-to-text connector gets its own parameter group; its
    'lr multiplier' 1.0 is passed as the learning rate itself. RAdam then moves each connector
    weight by ~1 per step on weights of ~0.02: updates hundreds of times the weight norm."""
    gen = seeded(10403)
    model = modernvbert()
    conn = list(model.model.connector.parameters())
    ids_conn = {id(p) for p in conn}
    rest = [p for p in model.parameters() if id(p) not in ids_conn]
    opt = torch.optim.RAdam([{"params": rest, "lr": 1e-3}, {"params": conn, "lr": 1.0}])
    batches = vqa_batches(gen)
    w = model.model.connector.modality_projection.weight
    ratios: list[float] = []

    def loss_at(step):
        ids, pix, y = next(batches)
        ctx.targets(y)
        return F.cross_entropy(model(input_ids=ids, pixel_values=pix).logits, y)

    def before(step):
        ratios.append(float(w.detach().norm()))

    _loop(ctx, model, opt, 160, loss_at, before=before)
    moves = [abs(b - a) / max(a, 1e-12) for a, b in zip(ratios[:-1], ratios[1:], strict=False)]
    ctx.check("connector weight norm grew 30x", ratios[-1] > 30 * ratios[0])
    ctx.check("some step moved the connector by its own norm", max(moves) > 0.5)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario("h104_hf_modernvbert_digit_vqa", "adamw", "healthy", heldout=True, note="warm-up")
def h104_modernvbert_healthy(ctx: Context) -> None:
    """ModernVBERT on digit questions with AdamW, warm-up then linear decay, weight decay 0.01."""
    gen = seeded(10404)
    model = modernvbert()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 260
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * max(0.05, 1 - s / steps)
    )
    batches = vqa_batches(gen)

    def loss_at(step):
        ids, pix, y = next(batches)
        ctx.targets(y)
        return F.cross_entropy(model(input_ids=ids, pixel_values=pix).logits, y)

    _loop(ctx, model, opt, steps, loss_at, sched=sched)
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("losses finite", _finite(ctx.losses))


# -- Hugging Face LFM2-VL (its LFM2 text decoder, conv + attention) -----------------------------


def lfm2_vl():
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    tc = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        layer_types=["conv", "full_attention"],
        block_auto_adjust_ff_dim=False,
        tie_word_embeddings=False,
    )
    vc = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_channels=3,
        patch_size=2,
        num_patches=16,
    )
    cfg = Lfm2VlConfig(
        text_config=tc,
        vision_config=vc,
        image_token_id=63,
        projector_hidden_size=32,
        downsample_factor=2,
        tie_word_embeddings=False,
    )
    return Lfm2VlForConditionalGeneration(cfg)


@scenario(
    "h104_hf_lfm2_vl_text",
    "nadam",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="untied lm_head at 1.0, no z-loss",
)
def h104_lfm2_vl_lm_head(ctx: Context) -> None:
    """LFM2-VL's text decoder pre-trained on text alone with an untied output head whose
    per-group rate (1.0) was meant for a frozen-backbone probe; no weight decay, no z-loss:
    the log-partition of the output logits drifts far from zero."""
    gen = seeded(10405)
    model = lfm2_vl()
    head = list(model.lm_head.parameters())
    hid = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in hid]
    opt = torch.optim.NAdam([{"params": rest, "lr": 2e-3}, {"params": head, "lr": 1.0}])
    batches = text_batches(gen, 16, 24, 64)
    probe, _ = next(text_batches(seeded(3), 16, 24, 64))

    def logz() -> float:
        with torch.no_grad():
            return float(torch.logsumexp(model(input_ids=probe).logits, -1).mean())

    start = logz()

    def loss_at(step):
        x, y = next(batches)
        return lm_loss(model(input_ids=x).logits, y)

    _loop(ctx, model, opt, 150, loss_at)
    ctx.check("|log Z| drifted by 15", abs(logz() - start) > 15)
    ctx.check("losses finite", _finite(ctx.losses))


# -- GloVe on byte co-occurrences ---------------------------------------------------------------


def cooccurrence(vocab: int = 64, window: int = 4) -> torch.Tensor:
    data = text_bytes()[:20000] % vocab
    counts = torch.zeros(vocab, vocab)
    for d in range(1, window + 1):
        counts.index_put_((data[:-d], data[d:]), torch.full((len(data) - d,), 1.0 / d), True)
    return counts + counts.T


class GloVe(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 16) -> None:
        super().__init__()
        self.w = nn.Embedding(vocab, dim)
        self.c = nn.Embedding(vocab, dim)
        self.bw = nn.Embedding(vocab, 1)
        self.bc = nn.Embedding(vocab, 1)
        for e in (self.w, self.c):
            nn.init.uniform_(e.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.bw.weight)
        nn.init.zeros_(self.bc.weight)

    def forward(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (self.w(i) * self.c(j)).sum(-1) + self.bw(i)[:, 0] + self.bc(j)[:, 0]


@scenario(
    "h104_glove_bytes",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="lr warm-up ramps plain SGD past 2/lambda of the weighted least squares",
    onset=70,
)
def h104_glove_sgd_ramp(ctx: Context) -> None:
    """GloVe's weighted least squares trained with plain SGD (not AdaGrad) and a linear warm-up
    to a target rate copied from an AdaGrad recipe: once the rate passes 2/lambda of the loss's
    sharpest direction, the loss grows geometrically and the run blows up."""
    gen = seeded(10406)
    counts = cooccurrence()
    i, j = counts.nonzero(as_tuple=True)
    x = counts[i, j]
    weight = torch.clamp(x / 20.0, max=1.0) ** 0.75
    logx = torch.log(x)
    model = GloVe()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    top = 10.0

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 0.05 + (top - 0.05) * min(1.0, step / 200)

    def loss_at(step):
        idx = torch.randint(0, len(x), (512,), generator=gen)
        err = model(i[idx], j[idx]) - logx[idx]
        return (weight[idx] * err**2).sum() / 512 * 8

    _loop(ctx, model, opt, 240, loss_at, before=before)
    early = min(ctx.losses[:100])
    tail = [v for v in ctx.losses[-30:]]
    ctx.check("loss fell first", early < 0.5 * ctx.losses[0])
    ctx.check("then blew up", not _finite(tail) or max(tail) > 100 * early)


# -- CBOW word2vec with negative sampling (a control) -------------------------------------------


class CBOW(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 24) -> None:
        super().__init__()
        self.inp = nn.Embedding(vocab, dim)
        self.out = nn.Embedding(vocab, dim)
        nn.init.uniform_(self.inp.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.out.weight)

    def forward(self, ctx_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.inp(ctx_ids).mean(1)  # (b, d)
        return (self.out(targets) * h[:, None]).sum(-1)  # (b, 1 + k)


@scenario("h104_cbow_word2vec", "adagrad", "healthy", heldout=True, note="negative sampling")
def h104_cbow_healthy(ctx: Context) -> None:
    """CBOW over byte windows (two each side), five negatives from the unigram^0.75 table,
    AdaGrad; a normal noisy run whose loss falls."""
    gen = seeded(10407)
    data = text_bytes() % 64
    freq = torch.bincount(data, minlength=64).float() ** 0.75
    model = CBOW()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.2)
    offs = torch.tensor([-2, -1, 1, 2])

    def loss_at(step):
        c = torch.randint(2, len(data) - 2, (256,), generator=gen)
        ctx_ids = data[c[:, None] + offs]
        neg = torch.multinomial(freq, 256 * 5, True, generator=gen).reshape(256, 5)
        tgt = torch.cat([data[c][:, None], neg], 1)
        s = model(ctx_ids, tgt)
        return -(F.logsigmoid(s[:, 0]) + F.logsigmoid(-s[:, 1:]).sum(1)).mean()

    _loop(ctx, model, opt, 400, loss_at)
    ctx.check("loss fell by 40%", _mean(ctx.losses[-30:]) < 0.6 * ctx.losses[0])
    ctx.check("losses finite", _finite(ctx.losses))


# -- WaveGrad-style diffusion vocoder on generated tones ----------------------------------------


def tone_batch(gen: torch.Generator, b: int = 32, n: int = 64):
    """Waveforms of two-partial tones and their 'mel-like' conditioning (4 band energies)."""
    f = 1 + 6 * torch.rand(b, 1, generator=gen)
    a = 0.3 + 0.6 * torch.rand(b, 1, generator=gen)
    t = torch.arange(n) / n
    wave = a * torch.sin(2 * math.pi * f * t) + 0.3 * a * torch.sin(4 * math.pi * f * t)
    bands = torch.stack([torch.exp(-((f[:, 0] - c) ** 2) / 2) for c in (1.5, 3, 4.5, 6)], 1)
    cond = torch.log(1e-3 + a * bands)
    return wave, cond


class WaveGrad(nn.Module):
    def __init__(self, ch: int = 24) -> None:
        super().__init__()
        self.cond_proj = nn.Linear(4, ch)
        self.noise_embed = nn.Sequential(nn.Linear(1, ch), nn.SiLU(), nn.Linear(ch, 2 * ch))
        self.inp = nn.Conv1d(1, ch, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv1d(ch, ch, 3, padding=d, dilation=d) for d in (1, 2, 4))
        self.out = nn.Conv1d(ch, 1, 3, padding=1)

    def forward(self, y_noisy, cond, level):
        h = self.inp(y_noisy[:, None]) + self.cond_proj(cond)[:, :, None]
        scale, shift = self.noise_embed(level[:, None]).chunk(2, -1)
        for blk in self.blocks:
            h = h + blk(F.silu(h * (1 + scale[:, :, None]) + shift[:, :, None]))
        return self.out(F.silu(h))[:, 0]


@scenario(
    "h104_wavegrad_vocoder",
    "adam",
    "adam_second_moment_poisoned",
    where=("cond_proj",),
    diverges=None,
    heldout=True,
    note="one file's features computed without the log: a giant gradient into cond_proj",
    onset=120,
)
def h104_wavegrad_poisoned_moment(ctx: Context) -> None:
    """A WaveGrad-style vocoder (L1 on the noise, continuous noise level). At step 120 one
    utterance's conditioning was computed without the log (band energies ~1e4): that single
    batch throws a gradient ~1e4 times the usual into cond_proj; Adam's second moment there
    jumps by ~1e8 and, with beta2=0.999, the conditioning layer all but stops learning."""
    gen = seeded(10408)
    model = WaveGrad()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    onset = 120
    v_before: list[torch.Tensor] = []
    w_trace: list[torch.Tensor] = []

    def loss_at(step):
        wave, cond = tone_batch(gen)
        if step == onset:
            cond = cond.clone()
            cond[0] = (torch.exp(cond[0]) * 32768) ** 2  # power of int16 samples, no log
        level = torch.rand(len(wave), generator=gen) * 0.95 + 0.05  # sqrt(alpha_bar)
        eps = torch.randn(wave.shape, generator=gen)
        noisy = level[:, None] * wave + (1 - level[:, None] ** 2).sqrt() * eps
        return (model(noisy, cond, level) - eps).abs().mean()

    def before(step):
        w_trace.append(model.cond_proj.weight.detach().clone())
        if step == onset:
            v_before.append(opt.state[model.cond_proj.weight]["exp_avg_sq"].clone())

    _loop(ctx, model, opt, 320, loss_at, before=before)
    v_after = opt.state[model.cond_proj.weight]["exp_avg_sq"]
    hit = v_after > 1e6 * v_before[0]
    moved_before = float((w_trace[onset] - w_trace[onset - 100])[hit].abs().mean())
    moved_after = float((w_trace[onset + 160] - w_trace[onset + 60])[hit].abs().mean())
    ctx.check("second moment up 1e6x on a third of cond_proj", float(hit.float().mean()) > 0.33)
    ctx.check("those weights moved 10x less (60-160 steps after)", moved_after < 0.1 * moved_before)
    ctx.check("losses finite", _finite(ctx.losses))


# -- MusicVAE-style hierarchical LSTM VAE on generated melodies ---------------------------------


def melody_batch(gen: torch.Generator, b: int = 32, bars: int = 4, steps: int = 8):
    """Melodies of 4 bars x 8 steps (12 pitch classes) plus a per-note velocity track."""
    root = torch.randint(0, 12, (b, 1, 1), generator=gen)
    motif = torch.randint(0, 5, (b, 1, steps), generator=gen) * 2
    shift = torch.randint(0, 3, (b, bars, 1), generator=gen)
    notes = (root + motif + shift) % 12
    vel = 60 + 30 * torch.rand(b, bars, steps, generator=gen)
    return notes, vel


class MusicVAE(nn.Module):
    def __init__(self, hid: int = 48, z: int = 16, bars: int = 4, steps: int = 8) -> None:
        super().__init__()
        self.bars, self.steps = bars, steps
        self.embed = nn.Embedding(12, 16)
        self.encoder = nn.LSTM(17, hid, batch_first=True, bidirectional=True)
        self.to_mu = nn.Linear(2 * hid, z)
        self.to_logvar = nn.Linear(2 * hid, z)
        self.conductor = nn.LSTM(z, hid, batch_first=True)
        self.decoder = nn.LSTM(hid + 16, hid, batch_first=True)
        self.out = nn.Linear(hid, 12)
        self.vel_out = nn.Linear(hid, 1)

    def forward(self, notes, vel_norm, gen):
        b = notes.shape[0]
        seq = torch.cat([self.embed(notes.reshape(b, -1)), vel_norm.reshape(b, -1, 1)], -1)
        h, _ = self.encoder(seq)
        mu, logvar = self.to_mu(h[:, -1]), self.to_logvar(h[:, -1])
        zs = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        cond, _ = self.conductor(zs[:, None].expand(b, self.bars, zs.shape[1]))
        prev = torch.cat([torch.zeros_like(notes[:, :, :1]), notes[:, :, :-1]], -1)
        dec_in = torch.cat(
            [cond[:, :, None].expand(b, self.bars, self.steps, cond.shape[-1]), self.embed(prev)],
            -1,
        )
        d, _ = self.decoder(dec_in.reshape(b * self.bars, self.steps, -1))
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        return self.out(d).reshape(b, -1, 12), self.vel_out(d).reshape(b, -1), kl


@scenario(
    "h104_musicvae_hier_lstm",
    "rmsprop",
    "nonfinite",
    where=("encoder",),
    diverges=150,
    heldout=True,
    note="velocities standardised by the batch std; a batch of constant velocities divides by 0",
    onset=150,
)
def h104_musicvae_zero_std(ctx: Context) -> None:
    """A MusicVAE-style model (BiLSTM encoder, conductor LSTM, bar decoder) standardises note
    velocities by the batch's own std. At step 150 a batch from a quantised-velocity source has
    every velocity equal: (v - mean) / std is 0/0, NaN enters the encoder and the weights."""
    gen = seeded(10409)
    model = MusicVAE()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    onset = 150

    def loss_at(step):
        notes, vel = melody_batch(gen)
        if step == onset:
            vel = torch.full_like(vel, 64.0)
        vel_norm = (vel - vel.mean()) / vel.std()
        logits, vel_pred, kl = model(notes, vel_norm, gen)
        rec = F.cross_entropy(logits.reshape(-1, 12), notes.reshape(-1))
        return rec + F.mse_loss(vel_pred, vel_norm.reshape(len(notes), -1)) + 0.1 * kl

    _loop(ctx, model, opt, 170, loss_at)
    ctx.check("finite before the batch", _finite(ctx.losses[:onset]))
    ctx.check("loss NaN from the batch", math.isnan(ctx.losses[onset]))
    ctx.check("encoder weights NaN", bool(torch.isnan(model.encoder.weight_ih_l0).any()))
    ctx.check("it was learning", _mean(ctx.losses[onset - 10 : onset]) < 0.9 * ctx.losses[0])


# -- Generative query network on generated disc scenes -----------------------------------------


def gqn_batch(gen: torch.Generator, b: int = 32, k: int = 3):
    """A disc in a 2-D world seen through k+1 cameras (translations); images are 8x8."""
    pos = torch.rand(b, 1, 2, generator=gen) * 4 - 2
    colour = 0.4 + 0.6 * torch.rand(b, 1, 1, generator=gen)
    cams = torch.rand(b, k + 1, 2, generator=gen) * 2 - 1  # camera offsets
    grid = torch.stack(
        torch.meshgrid(torch.linspace(-4, 4, 8), torch.linspace(-4, 4, 8), indexing="ij"), -1
    )
    rel = (pos - cams)[:, :, None, None, :]  # (b, k+1, 1, 1, 2)
    d2 = ((grid - rel) ** 2).sum(-1)
    img = colour[..., None] * torch.exp(-d2 / 1.5)
    return img, cams


class GQN(nn.Module):
    def __init__(self, r: int = 32) -> None:
        super().__init__()
        self.repr_conv = nn.Sequential(
            nn.Conv2d(1 + 2, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, r, 3, stride=2, padding=1)
        )
        self.repr_pool = nn.AdaptiveAvgPool2d(1)
        self.gen_fc = nn.Linear(r + 2, 64)
        self.gen_out = nn.Sequential(nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, ctx_img, ctx_cam, q_cam):
        b, k = ctx_img.shape[:2]
        cam_map = ctx_cam[:, :, :, None, None].expand(b, k, 2, 8, 8)
        x = torch.cat([ctx_img[:, :, None], cam_map], 2).reshape(b * k, 3, 8, 8)
        r = self.repr_pool(self.repr_conv(x)).reshape(b, k, -1).sum(1)
        return self.gen_out(self.gen_fc(torch.cat([r, q_cam], -1))).reshape(b, 8, 8)


@scenario(
    "h104_gqn_disc_scenes",
    "adadelta",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="one shard's camera poses in pixels instead of world units",
    onset=200,
)
def h104_gqn_pose_units(ctx: Context) -> None:
    """A generative query network (context views + camera poses -> summed representation ->
    query view). At step 200 one batch comes from a shard whose poses were written in pixel
    units (x40): the loss on that batch jumps far above the run's, then training goes on."""
    gen = seeded(10410)
    model = GQN()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    onset = 200

    def loss_at(step):
        img, cams = gqn_batch(gen)
        if step == onset:
            cams = cams * 40.0
        pred = model(img[:, :3], cams[:, :3], cams[:, 3])
        return F.mse_loss(pred, img[:, 3]) * 100

    _loop(ctx, model, opt, 300, loss_at)
    before = _mean(ctx.losses[onset - 20 : onset])
    ctx.check("it was learning", before < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("outlier batch loss 10x", ctx.losses[onset] > 10 * before)
    ctx.check("finite", _finite(ctx.losses))


# -- 3-D U-Net on generated voxel grids ----------------------------------------------------------


def voxel_batch(gen: torch.Generator, b: int = 8, n: int = 8):
    """Noisy 8^3 grids holding one or two balls; the target is their occupancy."""
    ax = torch.arange(n).float()
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    target = torch.zeros(b, 1, n, n, n)
    for _ in range(2):
        c = torch.rand(b, 3, generator=gen) * (n - 2) + 1
        r = 1.2 + 1.5 * torch.rand(b, generator=gen)
        d2 = (
            (zz - c[:, 0, None, None, None]) ** 2
            + (yy - c[:, 1, None, None, None]) ** 2
            + (xx - c[:, 2, None, None, None]) ** 2
        )
        target = torch.maximum(target, (d2 < r[:, None, None, None] ** 2).float()[:, None])
    x = (0.15 + target * 0.7 + 0.15 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    return x, target


def dead_channels(pre: torch.Tensor) -> float:
    """Share of channels of a 5-d pre-activation never positive on the batch."""
    return float((pre.transpose(0, 1).flatten(1) <= 0).all(1).float().mean())


class UNet3D(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Conv3d(1, c, 3, padding=1)
        self.enc2 = nn.Conv3d(c, 2 * c, 3, padding=1)
        self.up = nn.ConvTranspose3d(2 * c, c, 2, stride=2)
        self.dec1 = nn.Conv3d(2 * c, c, 3, padding=1)
        self.head = nn.Conv3d(c, 1, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(F.max_pool3d(e1, 2)))
        d = F.relu(self.dec1(torch.cat([self.up(e2), e1], 1)))
        return self.head(d)


@scenario(
    "h104_unet3d_voxels",
    "asgd",
    "loss_of_plasticity",
    where=("enc1",),
    diverges=None,
    heldout=True,
    note="a resumed scheduler restarts at 60x the rate for 6 steps; enc1's ReLUs die",
    onset=100,
)
def h104_unet3d_lr_burst_dead(ctx: Context) -> None:
    """A 3-D U-Net segmenting balls in noisy voxel grids with averaged SGD. A run resumed from a
    checkpoint restores the scheduler one state off: for 6 steps the rate is 60x. The burst
    drives half of enc1's channels negative on every input (intensities are non-negative);
    those ReLUs never fire again and the segmentation stalls
    at what the skip-less path can do."""
    gen = seeded(10411)
    model = UNet3D()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=1e9)
    onset = 100
    probe, _ = voxel_batch(seeded(7), 16)
    dead_before: list[float] = []

    def before(step):
        lr = 3.0 if onset <= step < onset + 6 else 0.05
        for g in opt.param_groups:
            g["lr"] = lr
        if step == onset:
            with torch.no_grad():
                dead_before.append(dead_channels(model.enc1(probe)))

    def loss_at(step):
        x, t = voxel_batch(gen)
        return F.binary_cross_entropy_with_logits(model(x), t)

    _loop(ctx, model, opt, 260, loss_at, before=before)
    with torch.no_grad():
        dead_after = dead_channels(model.enc1(probe))
    ctx.check("enc1 alive before the burst", dead_before[0] < 0.3)
    ctx.check("half of enc1's channels dead after", dead_after >= 0.5)
    ctx.check(
        "loss stays above its pre-burst level",
        _mean(ctx.losses[-30:]) > _mean(ctx.losses[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- PWC-Net-style optical flow with a cost volume ----------------------------------------------


def flow_batch(gen: torch.Generator, b: int = 16, n: int = 16):
    """Random smooth textures and the same texture shifted by an integer flow in [-2, 2]."""
    base = F.avg_pool2d(torch.rand(b, 1, n + 8, n + 8, generator=gen), 3, 1, 1)
    flow = torch.randint(-2, 3, (b, 2), generator=gen)
    f1 = base[:, :, 4 : 4 + n, 4 : 4 + n]
    f2 = torch.stack(
        [
            base[i, :, 4 - dy : 4 - dy + n, 4 - dx : 4 - dx + n]
            for i, (dx, dy) in enumerate(flow.tolist())
        ]
    )
    return f1, f2, flow.float()


class PWCFlow(nn.Module):
    """Shared feature pyramid level, a normalised cost volume over +-2, and a flow estimator."""

    def __init__(self, c: int = 16, r: int = 2) -> None:
        super().__init__()
        self.r = r
        self.feat = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, padding_mode="replicate"),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c, c, 3, padding=1, padding_mode="replicate"),
        )
        self.estimator = nn.Sequential(
            nn.Conv2d((2 * r + 1) ** 2, 32, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(32, 2, 3, padding=1),
        )

    def norm(self, f: torch.Tensor) -> torch.Tensor:
        # per-channel feature standardisation over the image before the correlation
        return (f - f.mean((2, 3), keepdim=True)) / f.std(dim=(2, 3), keepdim=True)

    def forward(self, a, b):
        fa, fb = self.norm(self.feat(a)), self.norm(self.feat(b))
        r, n = self.r, a.shape[-1]
        pad = F.pad(fb, (r, r, r, r))
        vols = [
            (fa * pad[:, :, r + dy : r + dy + n, r + dx : r + dx + n]).mean(1)
            for dy in range(-r, r + 1)
            for dx in range(-r, r + 1)
        ]
        return self.estimator(torch.stack(vols, 1)).mean((2, 3))


@scenario(
    "h104_pwcnet_cost_volume",
    "nesterov",
    "gradient_spike",
    where=("feat",),
    diverges=None,
    heldout=True,
    note="a textureless frame pair: the features' std is ~1e-6 and 1/std multiplies the gradient",
    onset=150,
)
def h104_pwc_textureless_pair(ctx: Context) -> None:
    """A PWC-Net-style flow regressor standardises each image's features before the cost volume
    (no epsilon in the std). At step 150 the batch holds a textureless pair (an over-exposed
    frame, constant to 1e-6): the gradient through 1/std into the feature extractor is ~1e5
    times the usual for that one step; the loss on the batch stays ordinary."""
    gen = seeded(10412)
    model = PWCFlow()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    onset = 150
    feat_norms: list[float] = []

    def loss_at(step):
        a, b, flow = flow_batch(gen)
        if step == onset:
            a, b = a.clone(), b.clone()
            flat = 0.98 + 1e-6 * torch.rand(a[0].shape, generator=gen)
            a[0], b[0] = flat, flat
        return (model(a, b) - flow).abs().mean()

    ctx.attach(model, opt)
    for step in range(260):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        feat_norms.append(
            float(torch.cat([p.grad.flatten() for p in model.feat.parameters()]).norm())
        )
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e3)
        opt.step()
        ctx.step(loss)
    typical = sorted(feat_norms[onset - 50 : onset])[25]
    ctx.check("feature-gradient spike 100x at the pair", feat_norms[onset] > 100 * typical)
    ctx.check(
        "loss on that batch ordinary", ctx.losses[onset] < 3 * _mean(ctx.losses[onset - 20 : onset])
    )
    ctx.check("finite", _finite(ctx.losses))
    ctx.check(
        "it was learning", _mean(ctx.losses[onset - 20 : onset]) < 0.7 * _mean(ctx.losses[:5])
    )


# -- NADE on binarised digits --------------------------------------------------------------------


class NADE(nn.Module):
    """Neural autoregressive density estimator: shared W, hidden state built pixel by pixel."""

    def __init__(self, d: int = 64, h: int = 48) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(h, d) * 0.05)
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, h) * 0.05)
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a_d = c + W[:, :d] x[:d]: an exclusive cumulative sum over pixels
        contrib = x[:, None, :] * self.W[None]  # (b, h, d)
        a = self.c[None, :, None] + torch.cumsum(contrib, -1) - contrib
        hid = torch.sigmoid(a)  # (b, h, d)
        logits = (self.V.T[None] * hid).sum(1) + self.b
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()


@scenario(
    "h104_nade_binary_digits",
    "adamax",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="ExponentialLR with gamma 1.03 (meant 0.97): the rate creeps up 3% a step",
    onset=0,
)
def h104_nade_lr_creep(ctx: Context) -> None:
    """NADE on binarised digits with Adamax; the scheduler's gamma was typed 1.03 instead of
    0.97, so the rate grows 3% per step from a sensible 2e-3. The negative log-likelihood falls
    for a while, then climbs slowly as the rate passes what the model tolerates."""
    gen = seeded(10413)
    model = NADE()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.03)
    x_all = (digits()[0] > 0.5).float()

    def loss_at(step):
        idx = torch.randint(0, len(x_all), (64,), generator=gen)
        return model(x_all[idx])

    _loop(ctx, model, opt, 400, loss_at, sched=sched)
    best = min(ctx.losses)
    ctx.check("it learnt first", best < 0.6 * ctx.losses[0])
    ctx.check("then the loss climbed to 2x its best", _mean(ctx.losses[-20:]) > 2 * best)


# -- self-supervised stereo depth (a control) ---------------------------------------------------


def stereo_batch(gen: torch.Generator, b: int = 16, h: int = 12, w: int = 16):
    """A textured background at disparity 1 px and a brighter box at 3 px; the right view is
    the left one resampled by the true disparity."""
    tex = F.avg_pool2d(torch.rand(b, 1, h, w + 6, generator=gen), 3, 1, 1)[..., 3:-3]
    disp = torch.ones(b, 1, h, w)
    img = 0.3 * tex + 0.1
    for i in range(b):
        y0, x0 = torch.randint(0, h - 5, (2,), generator=gen).tolist()
        disp[i, :, y0 : y0 + 5, x0 : x0 + 6] = 3.0
        img[i, :, y0 : y0 + 5, x0 : x0 + 6] += 0.5
    right = warp(img, -disp)
    return img, right


def warp(img: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` at x - disp (disparity in pixels, horizontal only)."""
    b, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    gx = (xs[None] - disp[:, 0]) / (w - 1) * 2 - 1
    gy = ys[None].expand(b, h, w) / (h - 1) * 2 - 1
    return F.grid_sample(img, torch.stack([gx, gy], -1), align_corners=True, padding_mode="border")


class DispNet(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ELU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2),
            nn.ELU(),
        )
        self.disp = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        return 4.0 * torch.sigmoid(self.disp(self.enc(x)))  # disparity in [0, 4] px


@scenario("h104_monodepth_stereo_ssl", "adam", "healthy", heldout=True, note="photometric + smooth")
def h104_monodepth_healthy(ctx: Context) -> None:
    """Monodepth-style self-supervision: disparity predicted from the left view alone, the right
    view warped into the left, L1 photometric loss plus an edge-aware smoothness term; Adam with
    a step decay. A normal run: the reconstruction error falls and stays finite."""
    gen = seeded(10414)
    model = DispNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 150, 0.5)

    def loss_at(step):
        left, right = stereo_batch(gen)
        d = model(left)
        photo = (warp(right, d) - left).abs().mean()
        dx = (d[..., 1:] - d[..., :-1]).abs() * torch.exp(
            -(left[..., 1:] - left[..., :-1]).abs() * 10
        )
        return photo + 0.01 * dx.mean()

    _loop(ctx, model, opt, 300, loss_at, sched=sched)
    ctx.check("loss fell by 40%", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:5]))
    ctx.check("losses finite", _finite(ctx.losses))


# -- DCGAN on digits under fp16 autocast with a GradScaler ----------------------------------------


class DCGAN(nn.Module):
    def __init__(self, z: int = 16) -> None:
        super().__init__()
        self.z = z
        self.gen = nn.Sequential(
            nn.Linear(z, 32 * 2 * 2),
            nn.Unflatten(1, (32, 2, 2)),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, 2, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, 2, 1),
            nn.Tanh(),
        )
        self.disc = nn.ModuleDict(
            dict(
                conv1=nn.Conv2d(1, 16, 3, 1, 1),
                conv2=nn.Conv2d(16, 32, 4, 2, 1),
                fc=nn.Linear(32 * 16, 1),
            )
        )

    def discriminate(self, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        def run(name, h):
            mod = self.disc[name]
            if params is None:
                return mod(h)
            p = {k: v for k, v in params.items() if k.startswith(f"disc.{name}.")}
            return torch.func.functional_call(
                mod, {k.split(".", 2)[2]: v for k, v in p.items()}, (h,)
            )

        h = F.leaky_relu(run("conv1", x), 0.2)
        h = F.leaky_relu(run("conv2", h), 0.2)
        return run("fc", h.flatten(1))


@scenario(
    "h104_dcgan_digits_amp",
    "adamw",
    "amp_overflow",
    where=("disc.conv1",),
    diverges=None,
    heldout=True,
    note="a 16-bit PNG shard read without scaling (0..65535): conv1 overflows fp16",
    onset=100,
)
def h104_dcgan_16bit_shard_overflow(ctx: Context) -> None:
    """A DCGAN (one optimizer over generator and discriminator, generator loss through a frozen
    copy of the discriminator's weights) under fp16 autocast with a GradScaler. From step 100
    the real images come from a shard of 16-bit PNGs read without scaling (0..65535 instead of
    [-1, 1]): the discriminator's first convolution overflows fp16, every step's gradients are
    inf/NaN, the scaler skips each step and halves its scale, and nothing trains any more."""
    gen = seeded(10415)
    model = DCGAN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu")
    onset = 100
    batches = digit_batches(gen, 32)
    skipped: list[bool] = []
    ctx.attach(model, opt, scaler=scaler)
    for step in range(170):
        x, _ = next(batches)
        real = x.reshape(-1, 1, 8, 8)
        real = real * 65535.0 if step >= onset else real * 2 - 1
        z = torch.randn(len(real), model.z, generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            fake = model.gen(z)
            d_real = model.discriminate(real)
            d_fake = model.discriminate(fake.detach())
            frozen = {n: p.detach() for n, p in model.named_parameters() if n.startswith("disc.")}
            g_fake = model.discriminate(fake, frozen)
        ones, zeros = torch.ones_like(d_real.float()), torch.zeros_like(d_real.float())
        d_loss = F.binary_cross_entropy_with_logits(
            d_real.float(), ones
        ) + F.binary_cross_entropy_with_logits(d_fake.float(), zeros)
        g_loss = F.binary_cross_entropy_with_logits(g_fake.float(), ones)
        loss = d_loss + g_loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        skipped.append(not all(bool(torch.isfinite(g).all()) for g in grads))
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
    ctx.check("few steps skipped before the shard", sum(skipped[:onset]) <= 20)
    ctx.check("every step skipped after it", all(skipped[onset:]))
    ctx.check("scale collapsed below 1e-10", ctx.scales[-1] < 1e-10)
    ctx.check("loss finite before the shard", _finite(ctx.losses[:onset]))
    ctx.check(
        "weights stayed finite (steps skipped)",
        all(bool(torch.isfinite(p).all()) for p in model.parameters()),
    )


# -- spatial propagation network (linear row-to-row propagation) for lanes ----------------------


def lane_batch(gen: torch.Generator, b: int = 16, h: int = 24, w: int = 12):
    """Dashed vertical lanes (visible only in some rows) on noise; the label is the whole lane."""
    img = 0.2 * torch.randn(b, 1, h, w, generator=gen)
    lab = torch.zeros(b, 1, h, w)
    for i in range(b):
        for col in torch.randperm(w - 2, generator=gen)[:2].tolist():
            lab[i, 0, :, col + 1] = 1.0
            seen = torch.rand(h, generator=gen) < 0.3
            seen[:3] = True
            img[i, 0, seen, col + 1] += 1.0
    return img, lab


class SpatialPropagation(nn.Module):
    """Conv backbone, then linear row-to-row propagation (Liu et al. 2017's spatial propagation
    network), top to bottom and back: row i receives conv(row i-1) with one shared 1-D kernel
    per direction, then a 1x1 head. The paper keeps it stable by normalising the propagation
    weights (their sum at most 1); this one leaves them free."""

    def __init__(self, c: int = 16, k: int = 9) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()
        )
        self.message = nn.Conv1d(c, c, k, padding=k // 2, bias=False)
        self.message_up = nn.Conv1d(c, c, k, padding=k // 2, bias=False)
        for m in (self.message, self.message_up):
            nn.init.normal_(m.weight, std=0.01)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        f = self.backbone(x)
        rows = [f[:, :, 0]]
        for i in range(1, f.shape[2]):  # top to bottom
            rows.append(f[:, :, i] + self.message(rows[-1]))
        up = [rows[-1]]
        for i in range(f.shape[2] - 2, -1, -1):  # bottom to top
            up.append(rows[i] + self.message_up(up[-1]))
        return self.head(torch.stack(up[::-1], 2))


@scenario(
    "h104_spn_lane_propagation",
    "sgd_mom",
    "exploding_gradients",
    where=("message", "message_up"),
    diverges="auto",
    heldout=True,
    note="propagation weights left unnormalised: their gain passes 1 over 24 rows; no clipping",
)
def h104_spn_unnormalised_propagation(ctx: Context) -> None:
    """A lane segmenter with spatial propagation: 2 x 23 linear steps through rows with a
    shared kernel per direction, whose weights are not normalised to keep the recurrence
    contractive. Trained with SGD momentum and no clipping, the kernels grow to carry the
    dashed lanes along the image; once their gain passes 1 the gradients through the
    recurrence grow geometrically, step after step, until the run blows up."""
    gen = seeded(10416)
    model = SpatialPropagation()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    msg: list[float] = []

    def loss_at(step):
        x, lab = lane_batch(gen)
        return F.binary_cross_entropy_with_logits(model(x), lab)

    ctx.attach(model, opt)
    for step in range(200):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        msg.append(float(model.message.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    first_bad = next((i for i, v in enumerate(msg) if not math.isfinite(v)), len(msg))
    early = sorted(msg[:30])[15]
    ctx.check("it learnt first", min(ctx.losses[:first_bad]) < 0.3 * ctx.losses[0])
    ctx.check("propagation gradient grew 20x before the break", max(msg[:first_bad]) > 20 * early)
    ctx.check("the run blew up", first_bad < len(msg) or max(ctx.losses) > 10 * ctx.losses[0])
