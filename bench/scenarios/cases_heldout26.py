"""Held-out set 26 (``h26_``): Hugging Face ViT-MSN image classifier, XLM language model, SEW audio
classifier (generated tones), FSMT translation model and Ernie-4.5 causal LM from configs; a
Tacotron-style TTS decoder with location-sensitive attention on generated token/mel pairs,
evidential deep regression (normal-inverse-gamma head, diabetes), Neural Additive Model
(diabetes), closed-form continuous-time (CfC) RNN on generated series, mean-teacher
semi-supervised CNN (digits, fp16 autocast), TabTransformer (breast cancer) and DDPG
actor-critic on a generated linear control task.

Optimizers: SGD, SGD with momentum, Adam, AdamW, NAdam, RAdam, RMSprop, Adagrad,
Adamax and steadygrad.optim's Lion and AdaBelief.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while it was
written: each scenario was tuned with a stand-in context that attaches nothing, only until its
own checks held (or, for a healthy control, until it trained normally).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)

# -- data -----------------------------------------------------------------------------------------


def _diabetes(gen: torch.Generator, batch: int = 32):
    """Endless shuffled batches of scikit-learn's bundled diabetes set, standardised."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)[:, None]
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


def _tones(gen: torch.Generator, n: int, length: int = 400, classes: int = 4):
    """``n`` clips of a noisy sine whose frequency (one of ``classes``) is the label."""
    y = torch.randint(0, classes, (n,), generator=gen)
    freq = 0.02 + 0.03 * y.float()
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    t = torch.arange(length, dtype=torch.float32)
    x = torch.sin(2 * math.pi * freq[:, None] * t + phase)
    return x + 0.1 * torch.randn(n, length, generator=gen), y


def _translation(gen: torch.Generator, batch: int = 32, length: int = 10, vocab: int = 48):
    """Source: random tokens 3..vocab; target: the source with each token id shifted by one
    (wrapping); decoder input: the target after the start token 2."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        tgt = (src - 3 + 1) % (vocab - 3) + 3
        dec = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)
        yield (src, dec), tgt


def _max_abs(t: torch.Tensor) -> float:
    return float(t.detach().abs().max())


# -- Hugging Face XLM language model: attention-logit growth -----------------------------------


def _xlm(vocab: int = 64):
    from transformers import XLMConfig, XLMWithLMHeadModel

    config = XLMConfig(
        vocab_size=vocab,
        emb_dim=32,
        n_layers=2,
        n_heads=2,
        dropout=0.0,
        attention_dropout=0.0,
        max_position_embeddings=32,
        n_langs=1,
        use_lang_emb=False,
        causal=True,
    )
    return XLMWithLMHeadModel(config)


def _qk_logit_max(model, x: torch.Tensor) -> float:
    """Largest |q.k| / sqrt(d_head) over both layers' heads, from q_lin / k_lin outputs."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, o.detach()))
        for n, m in model.named_modules()
        if n.endswith("q_lin") or n.endswith("k_lin")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    best = 0.0
    for layer in range(2):
        q = seen[f"transformer.attentions.{layer}.q_lin"]
        k = seen[f"transformer.attentions.{layer}.k_lin"]
        b, t, d = q.shape
        q, k = (z.reshape(b, t, 2, d // 2).transpose(1, 2) for z in (q, k))
        best = max(best, _max_abs(q @ k.transpose(-1, -2) / math.sqrt(d // 2)))
    return best


@scenario(
    "hf_xlm_lm",
    "adamw",
    "attention_logit_growth",
    where=(
        "transformer.attentions.0",
        "transformer.attentions.0.q_lin",
        "transformer.attentions.0.k_lin",
        "transformer.attentions.1",
        "transformer.attentions.1.q_lin",
        "transformer.attentions.1.k_lin",
    ),
    diverges=None,
    heldout=True,
    onset=0,
    note="q/k projections at 40x the LR, no weight decay",
)
def h26_attn_growth_xlm_lm(ctx: Context) -> None:
    """A layer-wise LR table meant to give the query/key projections 0.4x the base LR says 40x,
    and they sit in the group without weight decay: AdamW grows q and k steadily and the attention
    logits grow with them into the thousands; the attention saturates to one-hot rows and the
    loss stalls instead of falling."""
    gen = seeded(2601)
    model = _xlm()
    qk = [p for n, p in model.named_parameters() if ".q_lin." in n or ".k_lin." in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 40 * 1e-3, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=0.01,
    )
    batches = text_batches(gen, batch=16, length=24, vocab=64)
    probe, _ = next(batches)
    start = _qk_logit_max(model, probe)
    fit(ctx, model, opt, batches, 300, forward=lambda m, x: m(x).logits, loss_fn=_lm_loss)
    end = _qk_logit_max(model, probe)
    ctx.check(f"attention logits grew 20x ({start:.2f} -> {end:.1f})", end > 20 * start)


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# -- Hugging Face FSMT translation model: output-logit divergence --------------------------------


def _fsmt(vocab: int = 48):
    from transformers import FSMTConfig, FSMTForConditionalGeneration

    config = FSMTConfig(
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        langs=["en", "de"],
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        tie_word_embeddings=False,
    )
    return FSMTForConditionalGeneration(config)


def _fsmt_forward(m, x):
    src, dec = x
    return m(input_ids=src, decoder_input_ids=dec).logits


@scenario(
    "hf_fsmt_translation",
    "adam",
    "output_logit_divergence",
    where="model.decoder.output_projection",
    diverges=None,
    heldout=True,
    onset=0,
)
def h26_output_logits_fsmt(ctx: Context) -> None:
    """The freshly initialised output projection gets a "head LR multiplier" of 100 (meant 1.0
    after the warm-up) on a task it learns exactly (shift each token): once the rows are right,
    cross-entropy keeps widening the margins and the output logits grow far past any useful
    confidence."""
    gen = seeded(2602)
    model = _fsmt()
    head = list(model.model.decoder.output_projection.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest}, {"params": head, "lr": 0.1}], lr=1e-3)
    batches = _translation(gen)
    probe, _ = next(batches)
    with torch.no_grad():
        start = _max_abs(_fsmt_forward(model, probe))
    fit(ctx, model, opt, batches, 380, forward=_fsmt_forward, loss_fn=_lm_loss, classifier=False)
    with torch.no_grad():
        end = _max_abs(_fsmt_forward(model, probe))
    ctx.check(f"output logits grew 20x ({start:.2f} -> {end:.1f})", end > 20 * start)
    ctx.check("the task was learnt", min(ctx.losses[-10:]) < 0.1)


# -- Hugging Face Ernie-4.5 causal LM: a warm-up that overshoots ---------------------------------


def _ernie(vocab: int = 64):
    from transformers import Ernie4_5Config, Ernie4_5ForCausalLM

    config = Ernie4_5Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    return Ernie4_5ForCausalLM(config)


@scenario(
    "hf_ernie4_5_lm",
    "nadam",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=0,
    note="warm-up to a peak of 1.0, an SGD recipe's LR kept for NAdam",
)
def h26_warmup_overshoot_ernie(ctx: Context) -> None:
    """The optimizer was switched from an SGD recipe to NAdam but the recipe's peak LR of 1.0
    was kept: a linear warm-up over 300 steps climbs past what the model tolerates a few tens
    of steps in, and the loss breaks long before the peak."""
    gen = seeded(2603)
    model = _ernie()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-6)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.0 * (step + 1) / 300

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=24, vocab=64),
        220,
        forward=lambda m, x: m(x).logits,
        loss_fn=_lm_loss,
        before=warmup,
    )
    early = min(ctx.losses[:40])
    ctx.check(f"loss fell first ({ctx.losses[0]:.2f} -> {early:.2f})", early < ctx.losses[0] - 0.3)
    late = ctx.losses[-20:]
    ctx.check(
        f"loss ended well above its best (last 20 from {min(late):.1f})",
        any(not math.isfinite(v) for v in late) or min(late) > early + 1.0,
    )


@scenario("hf_ernie4_5_lm", "sg_lion", "healthy", heldout=True)
def h26_healthy_ernie_lion(ctx: Context) -> None:
    gen = seeded(2604)
    model = _ernie()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.1, fused=False)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=24, vocab=64),
        200,
        forward=lambda m, x: m(x).logits,
        loss_fn=_lm_loss,
    )


# -- Hugging Face ViT-MSN image classifier: a frozen patch embedding ----------------------------


def _vit_msn():
    from transformers import ViTMSNConfig, ViTMSNForImageClassification

    config = ViTMSNConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTMSNForImageClassification(config)


@scenario(
    "hf_vit_msn",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where="vit.embeddings.patch_embeddings.projection",
    diverges=None,
    heldout=True,
)
def h26_frozen_patch_embed_vit_msn(ctx: Context) -> None:
    """The patch embedding sits in its own group at LR 0 for a 50-step "frozen stem" warm-up;
    the callback meant to restore its LR is registered on a different trainer and never runs,
    so the stem stays frozen for the whole run while the rest learns."""
    gen = seeded(2605)
    model = _vit_msn()
    stem = model.vit.embeddings.patch_embeddings.projection
    ids = {id(p) for p in stem.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = sgo.AdaBelief(
        [{"params": list(stem.parameters()), "lr": 0.0}, {"params": rest}], lr=2e-3, fused=False
    )
    before = stem.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 48),
        200,
        forward=lambda m, x: m(x.reshape(-1, 1, 8, 8)).logits,
    )
    ctx.check("stem unchanged", torch.equal(before, stem.weight))
    ctx.check("the rest learnt", sum(ctx.losses[-10:]) / 10 < 0.6 * ctx.losses[0])


# -- Hugging Face SEW audio classifier: softmax collapse ---------------------------------------


def _sew():
    from transformers import SEWConfig, SEWForSequenceClassification

    config = SEWConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 2, 2),
        conv_kernel=(10, 3, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        squeeze_factor=2,
        num_labels=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        classifier_proj_size=16,
    )
    return SEWForSequenceClassification(config)


@scenario(
    "hf_sew_audio", "radam", "softmax_collapse", where="classifier", diverges=None, heldout=True
)
def h26_softmax_collapse_sew(ctx: Context) -> None:
    """Fine-tuning on 64 fixed clips with the logits divided by a temperature of 0.01 (the
    config's 100 read as its reciprocal) and wav2vec-style betas (0.9, 0.98): the margins keep
    growing after the clips are all right, until the float32 softmax of the surest clips rounds
    to exactly one-hot and their gradient to exactly zero; the rest creep towards it."""
    gen = seeded(2606)
    x, y = _tones(gen, 64)
    model = _sew()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))

    def full():
        while True:
            yield x, y

    fit(ctx, model, opt, full(), 250, forward=lambda m, x: m(x).logits / 0.01)
    with torch.no_grad():
        share = collapsed_fraction(model(x).logits / 0.01, y)
    ctx.check(f"a tenth of the clips collapsed ({share:.3f})", share >= 0.1)


# -- Tacotron-style decoder with location-sensitive attention ----------------------------------


class LocationAttention(nn.Module):
    """Additive attention whose energies also see a convolution of the previous and cumulative
    attention weights (Chorowski et al. 2015; Tacotron 2)."""

    def __init__(self, query: int, memory: int, dim: int = 16, filters: int = 4) -> None:
        super().__init__()
        self.query = nn.Linear(query, dim, bias=False)
        self.memory = nn.Linear(memory, dim, bias=False)
        self.location_conv = nn.Conv1d(2, filters, 5, padding=2, bias=False)
        self.location = nn.Linear(filters, dim, bias=False)
        self.v = nn.Linear(dim, 1, bias=False)

    def forward(self, q, memory, prev, cumulative, mask):
        loc = self.location(self.location_conv(torch.stack([prev, cumulative], 1)).transpose(1, 2))
        energy = self.v(torch.tanh(self.query(q)[:, None] + self.memory(memory) + loc))
        energy = energy.squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(energy, -1)
        return (weights[:, :, None] * memory).sum(1), weights


class TacotronDecoder(nn.Module):
    """Token embedding + conv/BiGRU encoder; autoregressive decoder (prenet, attention GRU,
    location-sensitive attention, decoder GRU, mel projection) with teacher forcing."""

    def __init__(self, vocab: int = 12, mels: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.encoder = nn.GRU(16, 8, batch_first=True, bidirectional=True)
        self.prenet = nn.Sequential(nn.Linear(mels, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.attention_rnn = nn.GRUCell(16 + 16, hidden)
        self.attention = LocationAttention(hidden, 16)
        self.decoder_rnn = nn.GRUCell(hidden + 16, hidden)
        self.mel = nn.Linear(hidden + 16, mels)
        self.mels, self.hidden = mels, hidden

    def forward(self, tokens, lengths, mel_in):
        b, t_in = tokens.shape
        mask = torch.arange(t_in)[None] < lengths[:, None]
        e = F.relu(self.conv(self.embed(tokens).transpose(1, 2))).transpose(1, 2)
        memory, _ = self.encoder(e)
        h_att = memory.new_zeros(b, self.hidden)
        h_dec = memory.new_zeros(b, self.hidden)
        prev = memory.new_zeros(b, t_in)
        prev[:, 0] = 1.0
        cumulative = prev.clone()
        context = memory.new_zeros(b, 16)
        frames = []
        for t in range(mel_in.shape[1]):
            p = self.prenet(mel_in[:, t])
            h_att = self.attention_rnn(torch.cat([p, context], -1), h_att)
            context, prev = self.attention(h_att, memory, prev, cumulative, mask)
            cumulative = cumulative + prev
            h_dec = self.decoder_rnn(torch.cat([h_att, context], -1), h_dec)
            frames.append(self.mel(torch.cat([h_dec, context], -1)))
        return torch.stack(frames, 1)


def _tts_batches(gen: torch.Generator, batch: int = 16, vocab: int = 12, mels: int = 8):
    """Transcripts of 4..8 tokens (pad 0); each token speaks its own mel vector for 2 frames."""
    table = torch.randn(vocab, mels, generator=gen)
    table[0] = 0.0
    while True:
        lengths = torch.randint(4, 9, (batch,), generator=gen)
        tokens = torch.randint(1, vocab, (batch, 8), generator=gen)
        tokens[torch.arange(8)[None] >= lengths[:, None]] = 0
        target = table[tokens].repeat_interleave(2, dim=1)  # (b, 16, mels)
        mel_in = torch.cat([torch.zeros(batch, 1, mels), target[:, :-1]], 1)
        frame_mask = (torch.arange(16)[None] < 2 * lengths[:, None]).float()
        yield (tokens, lengths, mel_in), (target, frame_mask)


def _tts_loss(pred: torch.Tensor, y) -> torch.Tensor:
    target, frame_mask = y
    err = ((pred - target) ** 2).mean(-1) * frame_mask
    return err.sum() / frame_mask.sum()


def _tts_forward(m, x):
    return m(*x)


@scenario(
    "tacotron_location_attention",
    "adam",
    "nonfinite",
    where="attention",
    diverges=140,
    heldout=True,
    onset=140,
)
def h26_nan_empty_transcript_tacotron(ctx: Context) -> None:
    """At step 140 one transcript is empty after text normalisation (a line of punctuation):
    its length is 0, every encoder position is masked, and the attention's softmax over a row of
    -inf gives NaN weights; the NaN reaches the loss and, through the update, every weight."""
    gen = seeded(2607)
    model = TacotronDecoder()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step: int, x, y):
        if step == 140:
            tokens, lengths, mel_in = x
            tokens, lengths = tokens.clone(), lengths.clone()
            tokens[3] = 0
            lengths[3] = 0
            x = (tokens, lengths, mel_in)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _tts_batches(gen),
        170,
        forward=_tts_forward,
        loss_fn=_tts_loss,
        classifier=False,
        alter=alter,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 140, not from 140", all(finite[:140]) and not any(finite[140:]))
    ctx.check("it was learning", ctx.losses[139] < 0.5 * ctx.losses[0])


@scenario("tacotron_location_attention", "adamw", "healthy", heldout=True)
def h26_healthy_tacotron_adamw(ctx: Context) -> None:
    gen = seeded(2608)
    model = TacotronDecoder()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        _tts_batches(gen),
        160,
        forward=_tts_forward,
        loss_fn=_tts_loss,
        classifier=False,
    )


# -- evidential deep regression (normal-inverse-gamma head): a data outlier --------------------


class EvidentialRegressor(nn.Module):
    """MLP trunk and a head giving (gamma, nu, alpha, beta) of a normal-inverse-gamma
    (Amini et al. 2020)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.nig = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nig(self.trunk(x))


def _nig_loss(out: torch.Tensor, y: torch.Tensor, lam: float = 0.01) -> torch.Tensor:
    gamma = out[:, :1]
    nu = F.softplus(out[:, 1:2]) + 1e-6
    alpha = F.softplus(out[:, 2:3]) + 1.0
    beta = F.softplus(out[:, 3:4]) + 1e-6
    omega = 2 * beta * (1 + nu)
    nll = (
        0.5 * torch.log(math.pi / nu)
        - alpha * torch.log(omega)
        + (alpha + 0.5) * torch.log(nu * (y - gamma) ** 2 + omega)
        + torch.lgamma(alpha)
        - torch.lgamma(alpha + 0.5)
    )
    reg = (y - gamma).abs() * (2 * nu + alpha)
    return (nll + lam * reg).mean()


@scenario("evidential_regression", "adamax", "data_outlier", diverges=150, onset=150, heldout=True)
def h26_outlier_raw_units_evidential(ctx: Context) -> None:
    """At step 150 one batch comes from a shard that was never standardised: its targets are in
    raw disease-progression units (~150 instead of ~0); the NIG loss jumps and one large step
    follows."""
    gen = seeded(2609)
    model = EvidentialRegressor()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x, y):
        if step == 150:
            y = y * 77.0 + 152.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _diabetes(gen),
        230,
        loss_fn=_nig_loss,
        classifier=False,
        alter=alter,
    )
    before = max(ctx.losses[140:150])
    ctx.check(
        f"loss spiked at 150 ({before:.2f} -> {ctx.losses[150]:.1f})",
        ctx.losses[150] > 5 * abs(before) and ctx.losses[150] > before + 3,
    )


# -- Neural Additive Model: a slow divergence ------------------------------------------------------


class NeuralAdditiveModel(nn.Module):
    """One small ReLU net per feature, outputs summed with a bias (Agarwal et al. 2021)."""

    def __init__(self, features: int = 10, hidden: int = 16) -> None:
        super().__init__()
        self.feature_nets = nn.ModuleList(
            nn.Sequential(
                nn.Linear(1, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )
            for _ in range(features)
        )
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [net(x[:, i : i + 1]) for i, net in enumerate(self.feature_nets)]
        return torch.cat(parts, 1).sum(1, keepdim=True) + self.bias


@scenario(
    "neural_additive_model",
    "adagrad",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=60,
    note="L2 penalty with the wrong sign",
)
def h26_slow_divergence_nam(ctx: Context) -> None:
    """From step 60 (after a "no penalty during warm-up" switch) the hand-written L2 penalty on
    the feature nets' weights is added with the wrong sign (``loss - wd * sum(w**2)``): the
    weights grow everywhere, the shape functions steepen and the MSE creeps up over ~100 steps."""
    gen = seeded(2610)
    model = NeuralAdditiveModel()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 60:
            return loss
        l2 = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - 0.05 * l2

    fit(
        ctx,
        model,
        opt,
        _diabetes(gen),
        300,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=penalty,
    )
    best = min(ctx.losses[40:70])
    ctx.check(
        f"loss climbed slowly ({best:.2f} -> {ctx.losses[-1]:.1f})", ctx.losses[-1] > 3 * best
    )


# -- closed-form continuous-time (CfC) RNN: exploding gradients ------------------------------


class CfCCell(nn.Module):
    """Closed-form continuous-time cell (Hasani et al. 2022): a shared backbone, two candidate
    states and a time gate sigmoid(t_a * dt + t_b) interpolating between them."""

    def __init__(self, inputs: int, hidden: int, units: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Linear(inputs + hidden, units)
        self.ff1 = nn.Linear(units, hidden)
        self.ff2 = nn.Linear(units, hidden)
        self.time_a = nn.Linear(units, hidden)
        self.time_b = nn.Linear(units, hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        z = self.backbone(torch.cat([x, h], -1))
        z = 1.7159 * torch.tanh(0.666 * z)  # LeCun's tanh
        gate = torch.sigmoid(self.time_a(z) * dt + self.time_b(z))
        return torch.tanh(self.ff1(z)) * (1 - gate) + gate * torch.tanh(self.ff2(z))


class CfCClassifier(nn.Module):
    def __init__(self, inputs: int = 1, hidden: int = 24, classes: int = 4) -> None:
        super().__init__()
        self.cell = CfCCell(inputs, hidden)
        self.head = nn.Linear(hidden, classes)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        series, dt = x
        h = series.new_zeros(series.shape[0], self.hidden)
        for t in range(series.shape[1]):
            h = self.cell(series[:, t], h, dt[:, t])
        return self.head(h)


def _irregular_series(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Irregularly sampled noisy sines; the label is which of 4 (frequency, level) pairs."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        dt = 0.5 + torch.rand(batch, length, generator=gen)
        t = dt.cumsum(1)
        freq = 0.05 + 0.05 * y.float()
        level = 0.4 * (y.float()[:, None] - 1.5)
        x = torch.sin(2 * math.pi * freq[:, None] * t) + level
        x = x + 0.1 * torch.randn(batch, length, generator=gen)
        yield (x[..., None], dt[..., None]), y


@scenario(
    "cfc_liquid_rnn",
    "sgd",
    "exploding_gradients",
    where=("cell.backbone", "cell"),
    diverges="auto",
    heldout=True,
    onset=60,
    note="backbone weight decay with the wrong sign",
)
def h26_exploding_cfc_backbone(ctx: Context) -> None:
    """From step 60 a hand-written decoupled weight decay for the recurrent backbone (its own
    group, decay read as -0.03 from a config sign slip) multiplies the backbone's weight by
    1.03 a step: the state-to-state Jacobian grows past 1, and the gradient through the 40
    steps grows until the run breaks."""
    gen = seeded(2611)
    model = CfCClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    decay = -0.03

    def bad_decay(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.cell.backbone.weight.mul_(1 - decay)

    fit(ctx, model, opt, _irregular_series(gen), 300, before=bad_decay)
    g = ctx.grad_norms
    early = sorted(g[40:60])[10]
    late = max(v for v in g if math.isfinite(v))
    ctx.check(f"gradient grew 100x ({early:.3f} -> {late:.1f})", late > 100 * early)
    best = min(sum(ctx.losses[i : i + 20]) / 20 for i in range(0, 120, 10))
    last = sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss ended worse than its best ({best:.2f} -> {last:.2f})", last > best + 0.3)


@scenario("cfc_liquid_rnn", "adam", "healthy", heldout=True)
def h26_healthy_cfc_adam(ctx: Context) -> None:
    gen = seeded(2612)
    model = CfCClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, _irregular_series(gen), 200)


# -- mean-teacher semi-supervised CNN: benign AMP overflow ---------------------------------------


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario("mean_teacher_semi_supervised", "sgd_mom", "amp_overflow", diverges=None, heldout=True)
def h26_amp_overflow_mean_teacher(ctx: Context) -> None:
    """Mean teacher (Tarvainen & Valpola 2017) on 200 labelled and all unlabelled digits, float16
    autocast, a GradScaler started at 2**30 that tries to grow every 25 steps: it overflows,
    skips those steps and backs off; training is fine."""
    gen = seeded(2613)
    x_all, y_all = digits()
    xl, yl = x_all[:200], y_all[:200]
    student = SmallCNN()
    teacher = SmallCNN()
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    ctx.attach(student, opt, scaler=scaler)
    for step in range(200):
        li = torch.randint(0, 200, (32,), generator=gen)
        ui = torch.randint(0, len(y_all), (64,), generator=gen)
        xb, yb, xu = xl[li], yl[li], x_all[ui]
        ctx.targets(yb)
        ramp_up = math.exp(-5 * (1 - min(step / 80, 1.0)) ** 2)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = student(xb + 0.05 * torch.randn(xb.shape, generator=gen))
            s_u = student(xu + 0.05 * torch.randn(xu.shape, generator=gen))
            with torch.no_grad():
                t_u = teacher(xu + 0.05 * torch.randn(xu.shape, generator=gen))
        loss = F.cross_entropy(logits.float(), yb)
        consistency = F.mse_loss(s_u.float().softmax(-1), t_u.float().softmax(-1))
        scaler.scale(loss + 10.0 * ramp_up * consistency).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(student))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
                pt.mul_(0.99).add_(ps, alpha=0.01)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check(f"scaler backed off ({drops} drops)", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check(
        f"loss finite and fell ({ctx.losses[0]:.2f} -> {ctx.losses[-1]:.2f})",
        all(math.isfinite(v) for v in ctx.losses) and ctx.losses[-1] < 0.5 * ctx.losses[0],
    )


# -- TabTransformer: dead units ---------------------------------------------------------------------


def _breast_cancer_tab(gen: torch.Generator, batch: int = 64, categorical: int = 6, bins: int = 8):
    """scikit-learn's bundled breast-cancer set: the first ``categorical`` columns binned into
    quantile categories (as a TabTransformer's categorical inputs), the rest standardised."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target)
    cats = []
    for j in range(categorical):
        edges = torch.quantile(x[:, j], torch.linspace(0, 1, bins + 1)[1:-1])
        cats.append(torch.bucketize(x[:, j], edges) + j * bins)
    cat = torch.stack(cats, 1)
    cont = x[:, categorical:]
    cont = (cont - cont.mean(0)) / cont.std(0)
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield (cat[idx], cont[idx]), y[idx]


class TabTransformer(nn.Module):
    """Contextual embeddings of categorical columns (a Transformer over column tokens),
    concatenated with the layer-normed continuous columns, then an MLP (Huang et al. 2020)."""

    def __init__(self, categorical: int = 6, bins: int = 8, continuous: int = 24, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(categorical * bins, dim)
        self.column = nn.Parameter(0.02 * torch.randn(categorical, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.cont_norm = nn.LayerNorm(continuous)
        self.mlp = nn.Sequential(
            nn.Linear(categorical * dim + continuous, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 2),
        )

    def forward(self, x) -> torch.Tensor:
        cat, cont = x
        tokens = self.transformer(self.embed(cat) + self.column)
        return self.mlp(torch.cat([tokens.flatten(1), self.cont_norm(cont)], 1))


@scenario(
    "tab_transformer",
    "rmsprop",
    "loss_of_plasticity",
    where=("mlp.0", "mlp.1"),
    diverges=None,
    heldout=True,
    onset=60,
    note="activation L1 penalty 1000x too strong",
)
def h26_dead_units_tab_transformer(ctx: Context) -> None:
    """From step 60 an L1 sparsity penalty on the first MLP layer's ReLU activations is switched
    on with weight 0.1 (meant 1e-4): it pushes every pre-activation below zero, a unit that
    goes dead gets no gradient from either term again, and the layer dies unit by unit (the
    column tokens and the few live units still fit the data: the loss does not show it)."""
    gen = seeded(2614)
    model = TabTransformer()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    acts: list[torch.Tensor] = []
    model.mlp[1].register_forward_hook(lambda _m, _i, o: acts.append(o))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        h = acts[-1]
        acts.clear()
        return loss + 0.1 * h.abs().sum(1).mean() if step >= 60 else loss

    batches = _breast_cancer_tab(gen)
    fit(ctx, model, opt, batches, 260, extra_loss=penalty, forward=lambda m, x: m(x))
    x, _ = next(batches)
    with torch.no_grad():
        model(x)
    share = dead_fraction(acts[-1])
    ctx.check(f"most of mlp.0's units dead ({share:.2f})", share >= 0.75)


@scenario("tab_transformer", "adamax", "healthy", heldout=True)
def h26_healthy_tab_transformer_adamax(ctx: Context) -> None:
    gen = seeded(2615)
    model = TabTransformer()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _breast_cancer_tab(gen), 200, forward=lambda m, x: m(x))


# -- DDPG actor-critic: Adam's second moment poisoned by one reward glitch -----------------------


class ActorCritic(nn.Module):
    def __init__(self, state: int = 4, action: int = 2) -> None:
        super().__init__()
        self.actor = nn.Sequential(
            nn.Linear(state, 32), nn.ReLU(), nn.Linear(32, action), nn.Tanh()
        )
        self.critic = nn.Sequential(
            nn.Linear(state + action, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([s, a], -1))


@scenario(
    "ddpg_actor_critic",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=100,
)
def h26_adam_poisoned_ddpg(ctx: Context) -> None:
    """DDPG (Lillicrap et al. 2016) on a generated linear system, off-policy from exploratory
    actions. At step 100 one transition's reward is logged in raw sensor micro-units (1e6 instead of
    ~-5): the critic's one huge gradient fills Adam's second moment, which forgets it over
    ~1000 steps, and the critic's Adam steps stay far smaller than before long after."""
    gen = seeded(2616)
    model = ActorCritic()
    target = copy.deepcopy(model)
    for p in target.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    a_mat = torch.eye(4) * 0.9 + 0.1 * torch.randn(4, 4, generator=gen)
    b_mat = torch.randn(4, 2, generator=gen) * 0.5
    ctx.attach(model, opt)
    critic_params = list(model.critic.parameters())
    actor_params = list(model.actor.parameters())
    steps_taken = {}
    for step in range(260):
        s = torch.randn(64, 4, generator=gen)
        a = (2 * torch.rand(64, 2, generator=gen) - 1).clamp(-1, 1)
        s2 = s @ a_mat.T + a @ b_mat.T + 0.05 * torch.randn(64, 4, generator=gen)
        r = -(s2**2).sum(1, keepdim=True) - 0.1 * (a**2).sum(1, keepdim=True)
        if step == 100:
            r = r.clone()
            r[7] = 1e6
        with torch.no_grad():
            y = r + 0.9 * target.q(s2, target.actor(s2))
        critic_loss = F.mse_loss(model.q(s, a), y)
        actor_loss = -model.q(s, model.actor(s)).mean()
        critic_grads = torch.autograd.grad(critic_loss, critic_params, retain_graph=True)
        actor_grads = torch.autograd.grad(actor_loss, actor_params)
        for p, g in zip(critic_params + actor_params, critic_grads + actor_grads, strict=True):
            p.grad = g
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if step in (90, 230):
            steps_taken[step] = _adam_step_size(opt, critic_params, step + 1)
        ctx.step(critic_loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pt, p in zip(target.parameters(), model.parameters(), strict=True):
                pt.mul_(0.99).add_(p, alpha=0.01)
    before, after = steps_taken[90], steps_taken[230]
    ctx.check(f"critic's Adam steps shrank 3x ({before:.3f} -> {after:.4f})", after < before / 3)


def _adam_step_size(opt: torch.optim.Adam, params, t: int) -> float:
    """Median over the coordinates of |m_hat| / (sqrt(v_hat) + eps): Adam's step in units of
    the learning rate."""
    beta1, beta2 = opt.param_groups[0]["betas"]
    ratios = []
    for p in params:
        st = opt.state[p]
        m_hat = st["exp_avg"] / (1 - beta1**t)
        v_hat = st["exp_avg_sq"] / (1 - beta2**t)
        ratios.append((m_hat.abs() / (v_hat.sqrt() + 1e-8)).flatten())
    return float(torch.cat(ratios).median())
