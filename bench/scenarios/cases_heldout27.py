"""Held-out scenarios, set 27 (``h27_``): families no other case file has.

Families: Hugging Face CTRL causal LM, DeBERTa (v1) sequence classifier, PLBart encoder-decoder,
MobileViTV2 image classifier and Wav2Vec2-BERT audio classifier (on generated tones), all built
from configs (no download); a QRNN language model (gated convolutions + fo-pooling), a TransE
knowledge-graph embedding model on a generated graph, a SqueezeNet-style CNN of fire modules, a
Gumbel-softmax (discrete latent) VAE (fp16 autocast), a DeepAR-style Gaussian LSTM forecaster on
generated series, a spatial-transformer-network classifier (digits) and an attentional
factorization machine (AFM) on generated clicks.

Optimizers: SGD, SGD with momentum, Adam, AdamW, Adamax, Adagrad, NAdam, RAdam, steadygrad's Lion,
and (healthy controls) SGD with Nesterov momentum and RMSprop.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out case files, and never run on steadygrad while it was
written: each scenario was tuned with a stand-in context that attaches nothing, only until its own
checks held (or, for a healthy control, until it trained normally).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs ------------------------------------------------------------


def _ctrl(vocab: int = 128, dim: int = 32):
    from transformers import CTRLConfig, CTRLLMHeadModel

    config = CTRLConfig(
        vocab_size=vocab,
        n_positions=32,
        n_embd=dim,
        dff=2 * dim,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return CTRLLMHeadModel(config)


def _deberta():
    from transformers import DebertaConfig, DebertaForSequenceClassification

    config = DebertaConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pooler_dropout=0.0,
    )
    return DebertaForSequenceClassification(config)


def _plbart(vocab: int = 32):
    from transformers import PLBartConfig, PLBartForConditionalGeneration

    config = PLBartConfig(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
    )
    return PLBartForConditionalGeneration(config)


def _reverse_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 32):
    """Seq2seq task: copy the source. Yields ((source, decoder input), target)."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        tgt = src
        dec_in = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec_in), tgt


def _plbart_forward(model: nn.Module, b) -> torch.Tensor:
    return model(input_ids=b[0], decoder_input_ids=b[1]).logits


def _mobilevitv2():
    from transformers import MobileViTV2Config, MobileViTV2ForImageClassification

    config = MobileViTV2Config(
        num_channels=1,
        image_size=32,
        patch_size=1,
        width_multiplier=0.25,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attn_dropout=0.0,
        classifier_dropout_prob=0.0,
    )
    return MobileViTV2ForImageClassification(config)


def _mobilevit_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(F.interpolate(x.reshape(-1, 1, 8, 8), size=32, mode="nearest")).logits


class LogPowerFrontend(nn.Module):
    """Raw frames -> log power spectrum (no epsilon: log of an all-zero frame is -inf)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.fft.rfft(frames, dim=-1).abs().pow(2))


class ToneClassifier(nn.Module):
    """A log-power front end written by the user, then a Hugging Face Wav2Vec2-BERT classifier."""

    def __init__(self, frame: int = 32, classes: int = 3) -> None:
        super().__init__()
        from transformers import Wav2Vec2BertConfig, Wav2Vec2BertForSequenceClassification

        config = Wav2Vec2BertConfig(
            feature_projection_input_dim=frame // 2 + 1,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=classes,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            feat_proj_dropout=0.0,
            layerdrop=0.0,
            conv_depthwise_kernel_size=3,
            output_hidden_size=32,
            classifier_proj_size=16,
        )
        self.frontend = LogPowerFrontend()
        self.encoder = Wav2Vec2BertForSequenceClassification(config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features=self.frontend(frames)).logits


def _tone_batches(gen: torch.Generator, batch: int = 16, frames: int = 20, frame: int = 32):
    """Noisy tones of three pitches, cut into frames; the label is the pitch."""
    t = torch.arange(frames * frame, dtype=torch.float32)
    freqs = torch.tensor([0.05, 0.12, 0.21]) * 2 * math.pi
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        wave = torch.sin(freqs[y][:, None] * t + phase)
        wave = wave + 0.3 * torch.randn(batch, frames * frame, generator=gen)
        yield wave.reshape(batch, frames, frame), y


# -- hand-written families -----------------------------------------------------------------------


class QRNNLayer(nn.Module):
    """Quasi-recurrent layer: a causal convolution gives candidate, forget and output gates;
    fo-pooling mixes them over time (the only recurrence is element-wise)."""

    def __init__(self, dim_in: int, dim: int, width: int = 2) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv1d(dim_in, 3 * dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.conv(F.pad(x.transpose(1, 2), (self.width - 1, 0))).transpose(1, 2)
        z, f, o = g.chunk(3, dim=-1)
        z, f, o = torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)
        c = torch.zeros_like(z[:, 0])
        out = []
        for t in range(z.shape[1]):
            c = f[:, t] * c + (1 - f[:, t]) * z[:, t]
            out.append(o[:, t] * c)
        return torch.stack(out, 1)


class QRNNLM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([QRNNLayer(dim, dim), QRNNLayer(dim, dim)])
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class TransE(nn.Module):
    """Entities and relations in one space; a true triple has head + relation close to tail.
    Input rows: (head, relation, tail, corrupted tail). Output: (true distance, corrupt one)."""

    def __init__(self, entities: int, relations: int, dim: int = 16) -> None:
        super().__init__()
        self.entities = nn.Embedding(entities, dim)
        self.relations = nn.Embedding(relations, dim)
        nn.init.uniform_(self.entities.weight, -0.5, 0.5)
        nn.init.uniform_(self.relations.weight, -0.5, 0.5)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.entities(rows[:, 0]), dim=-1)
        r = self.relations(rows[:, 1])
        t = F.normalize(self.entities(rows[:, 2]), dim=-1)
        n = F.normalize(self.entities(rows[:, 3]), dim=-1)
        return torch.stack([(h + r - t).norm(dim=-1), (h + r - n).norm(dim=-1)], 1)


def _margin_loss(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 + out[:, 0] - out[:, 1]).mean()


def _kg_batches(gen: torch.Generator, entities: int = 60, relations: int = 6, batch: int = 64):
    """A generated knowledge graph: each relation maps an entity to its (hidden) translate's
    nearest neighbour; corrupt tails are uniform."""
    e = F.normalize(torch.randn(entities, 8, generator=gen), dim=-1)
    r = 0.6 * torch.randn(relations, 8, generator=gen)
    tails = (e[:, None, None, :] + r[None, :, None, :] - e[None, None]).norm(dim=-1).argmin(-1)
    del e, r
    while True:
        h = torch.randint(0, entities, (batch,), generator=gen)
        rel = torch.randint(0, relations, (batch,), generator=gen)
        neg = torch.randint(0, entities, (batch,), generator=gen)
        rows = torch.stack([h, rel, tails[h, rel], neg], 1)
        yield rows, torch.zeros(batch)


class Fire(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze, then parallel 1x1 and 3x3 expands."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_act = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_act(self.squeeze(x))
        return self.expand_act(torch.cat([self.expand1x1(s), self.expand3x3(s)], 1))


class SqueezeNet(nn.Module):
    """A small SqueezeNet for 8x8 digits: stem conv, two fire modules, a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.act1 = nn.ReLU()
        self.fire2 = Fire(16, 8, 16)
        self.pool = nn.MaxPool2d(2)
        self.fire3 = Fire(32, 12, 24)
        self.classifier = nn.Linear(48 * 16, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.fire2(self.act1(self.conv1(x.reshape(-1, 1, 8, 8)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fire3(self.features(x)).flatten(1))


class GumbelVAE(nn.Module):
    """Discrete latents: 8 categorical variables of 10 classes, relaxed by Gumbel-softmax."""

    def __init__(self, latents: int = 8, classes: int = 10, tau: float = 1.0) -> None:
        super().__init__()
        self.latents, self.classes, self.tau = latents, classes, tau
        self.encoder = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, latents * classes)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latents * classes, 128), nn.ReLU(), nn.Linear(128, 64)
        )
        self.kl = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.encoder(x).float().reshape(-1, self.latents, self.classes)
        q = torch.softmax(logits, -1)
        # KL to a uniform prior over each categorical
        self.kl = (q * (torch.log(q + 1e-10) + math.log(self.classes))).sum((1, 2)).mean()
        z = F.gumbel_softmax(logits, tau=self.tau, hard=False)
        return self.decoder(z.reshape(len(x), -1))


def _vae_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(recon, x, reduction="sum") / len(x)


class DeepAR(nn.Module):
    """DeepAR-style forecaster: an LSTM over (previous value, time features) emits a Gaussian's
    mean and scale for the next value."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, hidden, batch_first=True)
        self.mu = nn.Linear(hidden, 1)
        self.sigma = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return torch.cat([self.mu(h), F.softplus(self.sigma(h)) + 1e-3], -1)


def _gaussian_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mu, sigma = out[..., 0], out[..., 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean() + 0.5 * math.log(2 * math.pi)


def _series_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Noisy seasonal series: input (previous value, sin and cos of the phase), target the next."""
    while True:
        period = 6 + 6 * torch.rand(batch, 1, generator=gen)
        start = 100 * torch.rand(batch, 1, generator=gen)
        t = start + torch.arange(length + 1)
        phase = 2 * math.pi * t / period
        level = 1.0 + 0.5 * torch.rand(batch, 1, generator=gen)
        v = level * torch.sin(phase) + 0.2 * torch.randn(batch, length + 1, generator=gen)
        x = torch.stack([v[:, :-1], torch.sin(phase[:, 1:]), torch.cos(phase[:, 1:])], -1)
        yield x, v[:, 1:]


class STNClassifier(nn.Module):
    """Spatial transformer: a localisation net predicts an affine warp (identity at start), the
    warped digit goes to an MLP classifier."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.loc = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 6))
        nn.init.zeros_(self.loc[2].weight)
        with torch.no_grad():
            self.loc[2].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))
        self.body = nn.Sequential(nn.Linear(64, 96), nn.ReLU())
        self.head = nn.Linear(96, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(-1, 1, 8, 8)
        theta = self.loc(x).reshape(-1, 2, 3)
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        warped = F.grid_sample(img, grid, align_corners=False)
        return self.head(self.body(warped.flatten(1))) / self.temperature


class AFM(nn.Module):
    """Attentional factorization machine: pairwise element-wise products of field embeddings,
    weighted by a small attention net, plus a first-order term."""

    def __init__(self, fields: int = 6, values: int = 10, dim: int = 8) -> None:
        super().__init__()
        self.offsets = torch.arange(fields) * values
        self.embed = nn.Embedding(fields * values, dim)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.linear = nn.Embedding(fields * values, 1)
        nn.init.zeros_(self.linear.weight)
        self.attn = nn.Linear(dim, 8)
        self.attn_act = nn.ReLU()
        self.attn_score = nn.Linear(8, 1, bias=False)
        self.p = nn.Linear(dim, 1)
        i, j = torch.triu_indices(fields, fields, 1)
        self.i, self.j = i, j

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x + self.offsets
        e = self.embed(idx)
        pairs = e[:, self.i] * e[:, self.j]
        a = torch.softmax(self.attn_score(self.attn_act(self.attn(pairs))), dim=1)
        return self.p((a * pairs).sum(1))[:, 0] + self.linear(idx).sum((1, 2))


def _click_batches(gen: torch.Generator, batch: int = 128, fields: int = 6, values: int = 10):
    """Generated clicks from a hidden FM with two strong field interactions."""
    v = torch.randn(fields, values, 4, generator=gen)
    w = 0.5 * torch.randn(fields, values, generator=gen)
    while True:
        x = torch.randint(0, values, (batch, fields), generator=gen)
        emb = v[torch.arange(fields), x]
        logit = (emb[:, 0] * emb[:, 1]).sum(-1) + (emb[:, 2] * emb[:, 3]).sum(-1)
        logit = logit + w[torch.arange(fields), x].sum(-1) - 0.5
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield x, y


def _bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, y)


def _late_minus_early(values: list[float], span: int = 20) -> float:
    return sum(values[-span:]) / span - sum(values[:span]) / span


# -- attention-logit growth ----------------------------------------------------------------------


@scenario(
    "hf_ctrl",
    "adamw",
    "attention_logit_growth",
    where=("transformer.h.0.multi_head_attention", "transformer.h.1.multi_head_attention"),
    diverges=None,
    heldout=True,
)
def h27_ctrl_qk_lr_multiplier(ctx: Context) -> None:
    """A "attention LR multiplier" meant as 0.3 was typed as 30 for the query/key projections
    (no weight decay on them): the query and key weights grow step by step, the attention logits
    with their product (20x and more in 260 steps); the loss is still falling, slowly, when the
    run ends: an attention blow-up in the making."""
    gen = seeded(2701)
    model = _ctrl()
    qk = [p for n, p in model.named_parameters() if ".Wq." in n or ".Wk." in n]
    rest = [p for n, p in model.named_parameters() if not (".Wq." in n or ".Wk." in n)]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 30 * 1e-3, "weight_decay": 0.0}], lr=1e-3
    )
    logits_seen: list[float] = []
    captured: dict[str, torch.Tensor] = {}
    att = model.transformer.h[0].multi_head_attention
    att.Wq.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o.detach()))
    att.Wk.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o.detach()))

    def watch(step: int) -> None:
        if "q" in captured:
            q, k = captured["q"], captured["k"]
            b, t, d = q.shape
            q = q.reshape(b, t, 2, d // 2).transpose(1, 2)
            k = k.reshape(b, t, 2, d // 2).transpose(1, 2)
            logits_seen.append(float((q @ k.transpose(-1, -2)).abs().max()) / math.sqrt(d // 2))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(x).logits,
        before=watch,
    )
    ctx.check("attention logits grew 20x", max(logits_seen[-20:]) > 20 * logits_seen[0])


# -- output-logit divergence ----------------------------------------------------------------------


@scenario(
    "hf_deberta_v1",
    "sg_lion",
    "output_logit_divergence",
    where="classifier",
    diverges=None,
    heldout=True,
)
def h27_deberta_head_lr_lion(ctx: Context) -> None:
    """Fine-tuning recipe carried over from AdamW to Lion: the new head keeps a 100x learning
    rate. Lion's sign updates move every head weight by the full step each time: the logits
    grow without bound (20x and more in 240 steps); the loss, on labels with 10% noise, stays
    erratic but does not diverge within the run."""
    gen = seeded(2702)
    model = _deberta()
    head = list(model.classifier.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    opt = sgo.Lion([{"params": rest}, {"params": head, "lr": 3e-2}], lr=3e-4, fused=False)
    sizes: list[float] = []

    def record(model_: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model_(x).logits
        sizes.append(float(out.detach().abs().max()))
        return out

    def noisy(step: int, x: torch.Tensor, y: torch.Tensor):  # 10% of labels are wrong
        flip = torch.rand(len(y), generator=gen) < 0.1
        return x, torch.where(flip, 1 - y, y)

    fit(ctx, model, opt, bert_batches(gen), 240, forward=record, alter=noisy)
    ctx.check("output logits grew 20x", max(sizes[-20:]) > 20 * sizes[0])


# -- a learning rate above the stability limit -----------------------------------------------------


@scenario("qrnn_lm", "sgd", "sharpness_above_limit", diverges="auto", onset=180, heldout=True)
def h27_qrnn_lr_raised_on_resume(ctx: Context) -> None:
    """A run resumed at step 180 from a checkpoint, with the learning rate read from the wrong
    config field (the batch-size-scaled one, 12x): the step is past the stability limit."""
    gen = seeded(2704)
    model = QRNNLM()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def resume(step: int) -> None:
        if step == 180:
            opt.param_groups[0]["lr"] = 12.0

    fit(ctx, model, opt, text_batches(gen), 240, loss_fn=lm_loss, classifier=False, before=resume)
    ctx.check("loss fell before 180", min(ctx.losses[150:180]) < ctx.losses[0] - 1.0)
    ctx.check("loss broke after 180", max(ctx.losses[180:]) > 2 * max(ctx.losses[160:180]))


# -- Adam's second moment poisoned ---------------------------------------------------------------


@scenario(
    "hf_plbart", "adam", "adam_second_moment_poisoned", diverges=None, onset=120, heldout=True
)
def h27_plbart_unscaled_loss_once(ctx: Context) -> None:
    """At step 120 a gradient-accumulation path backpropagates the loss still multiplied by the
    2**16 loss scale (it forgot to unscale). One giant gradient fills Adam's second moment
    (beta2 = 0.999): every later step is divided by it and learning stalls."""
    gen = seeded(2705)
    model = _plbart()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    v_max: list[float] = []

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 2.0**16 if step == 120 else loss

    def watch(step: int) -> None:
        if step in (119, 122):
            v_max.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

    fit(
        ctx,
        model,
        opt,
        _reverse_batches(gen),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=_plbart_forward,
        extra_loss=bug,
        before=watch,
    )
    before = ctx.losses[60] - ctx.losses[119]
    after = ctx.losses[130] - ctx.losses[299]
    ctx.check("never back to its best before 120", min(ctx.losses[125:]) > min(ctx.losses[100:120]))
    ctx.check("second moment jumped 1e6x", v_max[1] > 1e6 * v_max[0])
    ctx.check("learning stalled", after < 0.5 * before and ctx.losses[299] > 0.5)


# -- a data outlier ------------------------------------------------------------------------------


@scenario("deepar_lstm", "adagrad", "data_outlier", diverges=150, onset=150, heldout=True)
def h27_deepar_units_batch(ctx: Context) -> None:
    """One batch at step 150 comes from a shard stored in cents, not units: its values are 100x
    larger than the model has ever seen, and the Gaussian likelihood of it is enormous."""
    gen = seeded(2706)
    model = DeepAR()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[..., 0] = 100 * x[..., 0]
            y = 100 * y
        return x, y

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        230,
        loss_fn=_gaussian_nll,
        classifier=False,
        alter=alter,
    )
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(abs(v) for v in ctx.losses[140:150]))


# -- a NaN from one module on one bad sample ------------------------------------------------------


@scenario(
    "hf_wav2vec2_bert",
    "adamax",
    "nonfinite",
    where="frontend",
    diverges=110,
    onset=110,
    heldout=True,
)
def h27_w2v2bert_silent_clip(ctx: Context) -> None:
    """One clip at step 110 is digital silence (a dropped recording): the log-power front end
    has no epsilon, log(0) = -inf, and the loss is NaN from then on."""
    gen = seeded(2707)
    model = ToneClassifier()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 110:
            x = x.clone()
            x[3] = 0.0
        return x, y

    fit(ctx, model, opt, _tone_batches(gen), 140, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 110, not at 110", all(finite[:110]) and not finite[110])
    with torch.no_grad():
        out = model.frontend(torch.zeros(1, 2, 32))
    ctx.check("frontend itself yields -inf on silence", bool(torch.isinf(out).any()))


# -- exploding gradients --------------------------------------------------------------------------


@scenario(
    "afm_recommender", "sgd", "exploding_gradients", where="embed", diverges="auto", heldout=True
)
def h27_afm_flipped_l2(ctx: Context) -> None:
    """An L2 penalty on the field embeddings written with the wrong sign: every step grows the
    embeddings by a fixed factor; the pairwise products grow with their square and the
    gradients with them, until the run blows up."""
    gen = seeded(2708)
    model = AFM()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    norms: list[float] = []

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        norms.append(float(model.embed.weight.detach().norm()))
        return loss - 0.15 * model.embed.weight.pow(2).sum()

    fit(ctx, model, opt, _click_batches(gen), 300, loss_fn=_bce, classifier=False, extra_loss=bug)
    grads = ctx.grad_norms
    ctx.check("embedding norm grew 10x", max(norms) > 10 * norms[0])
    ctx.check("gradient norm grew 100x", max(g for g in grads if math.isfinite(g)) > 100 * grads[5])


# -- a frozen layer -------------------------------------------------------------------------------


@scenario(
    "transe_kg",
    "adagrad",
    "update_ratio_out_of_range",
    where="relations",
    diverges=None,
    heldout=True,
)
def h27_transe_relations_lr0(ctx: Context) -> None:
    """The relation table's learning rate is read from a config key that defaults to 0: the
    relation vectors never move, only the entities learn."""
    gen = seeded(2709)
    model = TransE(60, 6)
    opt = torch.optim.Adagrad(
        [
            {"params": model.entities.parameters()},
            {"params": model.relations.parameters(), "lr": 0.0},
        ],
        lr=0.1,
    )
    before = model.relations.weight.detach().clone()
    fit(ctx, model, opt, _kg_batches(gen), 200, loss_fn=_margin_loss, classifier=False)
    ctx.check("relations unchanged", torch.equal(before, model.relations.weight))
    ctx.check("entities learnt", _late_minus_early(ctx.losses) < -0.05)


# -- dead units -----------------------------------------------------------------------------------


@scenario(
    "squeezenet_fire",
    "sgd_mom",
    "loss_of_plasticity",
    where=("fire3.squeeze", "fire3.squeeze_act"),
    diverges=None,
    onset=120,
    heldout=True,
)
def h27_squeezenet_bias_penalty_sign(ctx: Context) -> None:
    """From step 120 a hand-written "bias decay" with the wrong sign runs after each step: it
    moves fire3's squeeze biases down by a fixed amount instead of towards zero. The squeeze
    ReLUs die one by one (a dead unit gets no gradient back): three quarters of them end dead and
    the rest carry the task (the loss stalls rather than climbs)."""
    gen = seeded(2710)
    model = SqueezeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def bug(step: int) -> None:
        if step >= 120:
            with torch.no_grad():
                model.fire3.squeeze.bias.sub_(0.12)

    fit(ctx, model, opt, digit_batches(gen, 48), 340, before=bug)
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        s = model.fire3.squeeze_act(model.fire3.squeeze(model.features(x)))
    ctx.check("half of fire3's squeeze channels dead", dead_fraction(s) >= 0.5)


# -- softmax collapse -----------------------------------------------------------------------------


@scenario("stn_classifier", "adam", "softmax_collapse", where="head", diverges=None, heldout=True)
def h27_stn_temperature_bug(ctx: Context) -> None:
    """A distillation temperature left in the student's forward, in the wrong unit (0.005 for 0.5): logits are divided by it
    on a small training set, float32 softmax saturates to exactly 1.0 for the target and those
    samples stop giving any gradient."""
    gen = seeded(2711)
    model = STNClassifier(temperature=0.005)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x_all, y_all = digits()
    keep = torch.randperm(len(y_all), generator=gen)[:256]
    x_small, y_small = x_all[keep], y_all[keep]

    def batches():
        while True:
            order = torch.randperm(256, generator=gen)
            for i in range(0, 256, 64):
                yield x_small[order[i : i + 64]], y_small[order[i : i + 64]]

    fit(ctx, model, opt, batches(), 300)
    with torch.no_grad():
        logits = model(x_small)
    ctx.check("a quarter of the rows collapsed", collapsed_fraction(logits, y_small) >= 0.25)


# -- a slow divergence ----------------------------------------------------------------------------


@scenario("deepar_lstm", "radam", "loss_divergence", diverges="auto", onset=100, heldout=True)
def h27_deepar_drifting_scaler(ctx: Context) -> None:
    """From step 100 the target scaler's running estimate drifts (its update has the wrong sign):
    targets get a slowly growing scale and offset the inputs do not have; the likelihood gets
    worse step by step with nothing in the model to blame."""
    gen = seeded(2712)
    model = DeepAR()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 100:
            s = 1.0 + 0.03 * (step - 100)
            y = s * y + 0.015 * (step - 100)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        300,
        loss_fn=_gaussian_nll,
        classifier=False,
        alter=alter,
    )
    ctx.check("learnt first", min(ctx.losses[80:100]) < ctx.losses[0] - 0.3)
    ctx.check("climbed after 100", sum(ctx.losses[-20:]) / 20 > sum(ctx.losses[80:100]) / 20 + 1)


# -- AMP overflow ---------------------------------------------------------------------------------


@scenario("gumbel_vae", "nadam", "amp_overflow", diverges=None, heldout=True)
def h27_gumbel_vae_fp16_scaler(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**30 that grows every 25 steps: it
    overflows now and then, skips those steps and halves its scale; training goes on."""
    gen = seeded(2713)
    model = GumbelVAE()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)

    def batches():
        for x, _ in digit_batches(gen):
            yield x, x

    fit(
        ctx,
        model,
        opt,
        batches(),
        200,
        loss_fn=_vae_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
        extra_loss=lambda step, loss: loss + model.kl,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.8 * ctx.losses[0])


# -- healthy controls -----------------------------------------------------------------------------


@scenario("hf_ctrl", "adamw", "healthy", note="warm-up + cosine", heldout=True)
def h27_healthy_ctrl_adamw(ctx: Context) -> None:
    gen = seeded(2721)
    model = _ctrl()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 25)
        opt.param_groups[0]["lr"] = 2e-3 * warm * (0.55 + 0.45 * math.cos(math.pi * step / 220))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(x).logits,
        before=schedule,
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.0)


@scenario("squeezenet_fire", "sgd_nesterov", "healthy", heldout=True)
def h27_healthy_squeezenet_nesterov(ctx: Context) -> None:
    gen = seeded(2722)
    model = SqueezeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, digit_batches(gen, 48), 220)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])


@scenario("deepar_lstm", "adam", "healthy", heldout=True)
def h27_healthy_deepar_adam(ctx: Context) -> None:
    gen = seeded(2723)
    model = DeepAR()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, _series_batches(gen), 220, loss_fn=_gaussian_nll, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 0.5)


@scenario("hf_mobilevitv2", "rmsprop", "healthy", heldout=True)
def h27_healthy_mobilevitv2_rmsprop(ctx: Context) -> None:
    gen = seeded(2724)
    model = _mobilevitv2()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, digit_batches(gen, 32), 140, forward=_mobilevit_forward)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 0.4)
