"""Held-out scenarios, set 60 (``h60_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face SpeechT5 HiFi-GAN vocoder (generated tones, fp16 autocast with a
GradScaler, fault and control), MusicGen decoder (generated two-codebook code streams), Bark
semantic model (a causal LM on standard-library bytes, fault and control), Pop2Piano (T5)
encoder-decoder on generated feature frames and Dia text-to-codes encoder-decoder from
configs; in plain PyTorch a ColBERT-style late-interaction retriever (fault and control), a
ListNet listwise ranker, a span-based NER tagger (BiLSTM), a DSSM click model, a character
seq2seq for morphological inflection, a BiLSTM semantic-role labeller and a coreference
mention-ranking model (fault and control), all on generated data.

Optimizers: SGD, Nesterov, momentum SGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop,
Adadelta, ASGD, and steadygrad.optim's Lion, Grams and AdEMAMix.
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
    fit,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)

# -- a training loop for the models that take more than one input --------------------------------


def _train(ctx: Context, model, opt, steps, step_loss, *, before=None, after=None, scaler=None):
    """``step_loss(step)`` returns the loss to report, or (reported, backpropagated)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        out = step_loss(step)
        loss, total = out if isinstance(out, tuple) else (out, out)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            total.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
        ctx.step(loss)
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


# -- a ColBERT-style late-interaction retriever ---------------------------------------------------


class _TokenAttention(nn.Module):
    """Multi-head self-attention written by hand, with a padding mask."""

    def __init__(self, dim: int, heads: int, scaled: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.scale = (dim // heads) ** -0.5 if scaled else 1.0
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = (q @ k.transpose(-1, -2)) * self.scale
        self.last_logits = logits.detach()
        y = logits.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, scaled: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _TokenAttention(dim, heads, scaled)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class ColBERT(nn.Module):
    """Shared token encoder; MaxSim: each query token's best match in the document, summed."""

    def __init__(self, vocab=200, dim=64, heads=2, layers=2, context=32, scaled=True) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.encoder = nn.ModuleList(_EncoderLayer(dim, heads, scaled) for _ in range(layers))
        self.proj = nn.Linear(dim, 32)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for layer in self.encoder:
            x = layer(x)
        return F.normalize(self.proj(x), dim=-1)

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        eq, ed = self.encode(q), self.encode(d)  # (B, Tq, 32), (B, Td, 32)
        sim = torch.einsum("qid,pjd->qpij", eq, ed)  # every query against every document
        return sim.amax(-1).sum(-1)  # (B queries, B documents)


def _retrieval_batches(gen: torch.Generator, batch=32, doc_len=24, q_len=8, vocab=200):
    """Documents of random word ids; a query is six of its document's words and two others."""
    while True:
        docs = torch.randint(4, vocab, (batch, doc_len), generator=gen)
        pick = torch.rand(batch, doc_len, generator=gen).argsort(1)[:, :6]
        q = torch.cat([docs.gather(1, pick), torch.randint(4, vocab, (batch, 2), generator=gen)], 1)
        yield q[:, torch.randperm(q_len, generator=gen)], docs


def _hard_negative_batches(gen: torch.Generator, batch=32, doc_len=16, q_len=4, vocab=200):
    """Hard negatives: every document of a batch is a reordering of the same sixteen words, and
    a query is a run of four consecutive words of its document, so only word order (which
    word follows which) tells the right document apart."""
    while True:
        words = torch.randperm(vocab - 4, generator=gen)[:doc_len] + 4
        docs = torch.stack([words[torch.randperm(doc_len, generator=gen)] for _ in range(batch)])
        start = torch.randint(0, doc_len - q_len + 1, (batch,), generator=gen)
        yield docs.gather(1, start[:, None] + torch.arange(q_len)), docs


def _colbert_run(ctx: Context, model: ColBERT, opt, steps: int, data):
    probe_q, probe_d = next(data)

    def attention_stats():
        with torch.no_grad():
            model.encode(probe_d)
        logits = [layer.attn.last_logits for layer in model.encoder]
        peak = max(float(lg.abs().amax()) for lg in logits)
        saturated = _mean(float((lg.softmax(-1).amax(-1) > 0.99).float().mean()) for lg in logits)
        return peak, saturated

    first = attention_stats()

    def step_loss(step: int):
        q, d = next(data)
        scores = model(q, d)
        return F.cross_entropy(scores, torch.arange(len(q)))

    _train(ctx, model, opt, steps, step_loss)
    return first, attention_stats()


@scenario(
    "h60_colbert_late_interaction",
    "adamw",
    "attention_logit_growth",
    where=("encoder.0.attn", "encoder.1.attn"),
    diverges=None,
    heldout=True,
    note="hand-written attention without 1/sqrt(d), AdamW at 6e-3, hard negatives",
)
def h60_colbert_unscaled_attention_adamw(ctx: Context) -> None:
    """The encoder's hand-written attention forgets the 1/sqrt(head_dim) factor, and the
    retriever is trained on hard negatives (reorderings of the same words) at a learning rate
    chosen for the scaled version. Telling the documents apart needs sharp attention to a
    neighbouring word; the q.k logits, ~6x too large from the start, run away (more than
    tenfold), attention rows saturate to one-hot and the retriever never gets off chance."""
    gen = seeded(601)
    model = ColBERT(scaled=False)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3, weight_decay=0.01)
    data = _hard_negative_batches(gen)
    (peak0, sat0), (peak1, sat1) = _colbert_run(ctx, model, opt, 300, data)
    ctx.check("attention logits grew tenfold", peak1 > 10 * peak0)
    ctx.check("a third of attention rows saturated (max p > 0.99)", sat1 > 0.33 and sat0 < 0.05)
    ctx.check("retrieval stuck at chance", _mean(ctx.losses[-30:]) > 0.95 * math.log(32))


@scenario(
    "h60_colbert_late_interaction",
    "sg_grams",
    "healthy",
    heldout=True,
    note="scaled attention, Grams at 1e-3",
)
def h60_colbert_control_grams(ctx: Context) -> None:
    """The same retriever with the 1/sqrt(d) scale in place, trained with Grams on ordinary
    in-batch negatives: the retrieval loss falls steadily."""
    gen = seeded(602)
    model = ColBERT(scaled=True)
    opt = sgo.Grams(model.parameters(), lr=1e-3)
    _colbert_run(ctx, model, opt, 160, _retrieval_batches(gen))
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))


# -- a ListNet listwise ranker --------------------------------------------------------------------


class ListNetRanker(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, list, features) -> (B, list)
        return self.head(self.body(x)).squeeze(-1)


def _ranking_batches(gen: torch.Generator, batch=32, docs=12, features=16):
    """Query-document feature lists; graded relevance 0..4 from a hidden linear utility."""
    w = torch.randn(features, generator=gen)
    while True:
        x = torch.randn(batch, docs, features, generator=gen)
        u = x @ w / features**0.5 + 0.3 * torch.randn(batch, docs, generator=gen)
        yield x, (2 + 1.5 * u).round().clamp(0, 4)


def _listnet_loss(scores: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    return -(rel.softmax(-1) * scores.log_softmax(-1)).sum(-1).mean()


@scenario(
    "h60_listnet_ranker",
    "sgd_mom",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    onset=0,
    note="L2 on the scoring head added with the wrong sign",
)
def h60_listnet_negative_decay_momentum(ctx: Context) -> None:
    """The hand-written L2 penalty on the scoring head is subtracted instead of added
    (``loss - wd * ||w||^2``). Listwise softmax only restrains the score scale by a bounded
    pull, the flipped penalty pushes it up in proportion to the weights: the head's weights and
    with them the document scores (the list's logits) grow without bound, the listwise
    distribution turns one-hot on the wrong documents and the loss climbs."""
    gen = seeded(603)
    model = ListNetRanker()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = _ranking_batches(gen)
    probe_x, _ = next(data)
    with torch.no_grad():
        scale0 = float(model(probe_x).std())

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 0.05 * model.head.weight.pow(2).sum()

    fit(ctx, model, opt, data, 400, loss_fn=_listnet_loss, extra_loss=extra, classifier=False)
    with torch.no_grad():
        scale1 = float(model(probe_x).std())
    ctx.check("document scores grew 20x in spread", scale1 > 20 * scale0)
    ctx.check("loss ended above its best", _mean(ctx.losses[-20:]) > 2 * min(ctx.losses))


# -- span-based NER -------------------------------------------------------------------------------

_SPAN_WIDTH = 3


def _spans(length: int) -> list[tuple[int, int]]:
    return [(s, s + w) for w in range(_SPAN_WIDTH) for s in range(length - w)]


def _ner_batches(gen: torch.Generator, batch=32, length=12):
    """Words 4..39 are ordinary, 40..49 person-name tokens, 50..59 place-name tokens; an entity
    is a run of one to three name tokens of one kind. Labels: every span of width <= 3 is O (0),
    PER (1) or LOC (2) when it is exactly an entity."""
    spans = _spans(length)
    while True:
        x = torch.randint(4, 40, (batch, length), generator=gen)
        y = torch.zeros(batch, len(spans), dtype=torch.long)
        for b in range(batch):
            pos = 0
            while pos < length:
                if float(torch.rand(1, generator=gen)) < 0.3:
                    w = int(torch.randint(1, _SPAN_WIDTH + 1, (1,), generator=gen))
                    w = min(w, length - pos)
                    kind = int(torch.randint(1, 3, (1,), generator=gen))
                    base = 40 if kind == 1 else 50
                    x[b, pos : pos + w] = torch.randint(base, base + 10, (w,), generator=gen)
                    y[b, spans.index((pos, pos + w - 1))] = kind
                    pos += w + 1  # entities are separated by at least one ordinary word
                else:
                    pos += 1
        yield x, y.reshape(-1)


class _SpanHead(nn.Module):
    def __init__(self, dim: int, labels: int, temperature: float) -> None:
        super().__init__()
        self.out = nn.Linear(dim, labels)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h) / self.temperature


class SpanNER(nn.Module):
    def __init__(self, vocab=60, dim=32, length=12, temperature=1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.width = nn.Embedding(_SPAN_WIDTH, 8)
        spans = torch.tensor(_spans(length))
        self.register_buffer("starts", spans[:, 0])
        self.register_buffer("ends", spans[:, 1])
        self.ffnn = nn.Sequential(nn.Linear(4 * dim + 8, 64), nn.ReLU())
        self.head = _SpanHead(64, 3, temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))  # (B, T, 2*dim)
        rep = torch.cat(
            [
                h[:, self.starts],
                h[:, self.ends],
                self.width(self.ends - self.starts).expand(len(x), -1, -1),
            ],
            -1,
        )
        return self.head(self.ffnn(rep)).reshape(-1, 3)


@scenario(
    "h60_span_ner_bilstm",
    "rmsprop",
    "softmax_collapse",
    where=("head", "head.out"),
    diverges=None,
    heldout=True,
    note="label temperature 0.05 divided instead of multiplied: logits x20",
)
def h60_span_ner_inverted_temperature_rmsprop(ctx: Context) -> None:
    """The span classifier's config stores a softening factor of 0.05 that the code divides
    by, as if it were a temperature: every logit is multiplied by 20. On an easy tagging task
    the training loss heads to zero and the float32 softmax of most spans becomes exactly
    one-hot on the target."""
    gen = seeded(604)
    model = SpanNER(temperature=0.05)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _ner_batches(gen)
    probe_x, probe_y = next(data)
    with torch.no_grad():
        before = collapsed_fraction(model(probe_x), probe_y)
    fit(ctx, model, opt, data, 250)
    with torch.no_grad():
        after = collapsed_fraction(model(probe_x), probe_y)
    ctx.check("span softmax collapsed (most rows exactly one-hot)", after > 0.5 and before < 0.1)


# -- DSSM click model -----------------------------------------------------------------------------


class DSSM(nn.Module):
    """Two towers (tanh hidden layer) over hashed letter-trigram counts; inner-product
    relevance, softmax over the candidates (the other queries' clicked documents)."""

    def __init__(self, dim=256, hidden=128, out=64) -> None:
        super().__init__()
        self.query_tower = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, out))
        self.doc_tower = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, out))

    def forward(self, qd: torch.Tensor) -> torch.Tensor:
        q, d = qd[:, 0], qd[:, 1]
        return self.query_tower(q) @ self.doc_tower(d).T  # each query against every document


def _click_batches(gen: torch.Generator, batch=32, dim=256):
    """A clicked document has 12 hashed trigrams; its query shares 5 of them, adds 3 others."""
    while True:
        doc = torch.zeros(batch, dim)
        query = torch.zeros(batch, dim)
        for b in range(batch):
            grams = torch.randperm(dim, generator=gen)[:12]
            doc[b, grams] = 1.0
            query[b, grams[:5]] = 1.0
            query[b, torch.randint(0, dim, (3,), generator=gen)] = 1.0
        yield torch.stack([query, doc], 1), torch.arange(batch)


@scenario(
    "h60_dssm_click",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=150,
    note="step decay at 150 multiplies the LR by 10 instead of dividing",
)
def h60_dssm_step_decay_typo_sgd(ctx: Context) -> None:
    """The step schedule should divide the learning rate by 10 at step 150; the factor is
    written the wrong way up (``lr * 10``). At 5.0 the rate is far past the stability limit of
    the inner-product towers and the run, which had been learning, blows up within steps."""
    gen = seeded(605)
    model = DSSM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.5 * (10.0 if step >= 150 else 1.0)  # meant 0.1

    fit(ctx, model, opt, _click_batches(gen), 220, before=schedule, classifier=False)
    ctx.check("learning before 150", min(ctx.losses[:150]) < 0.75 * ctx.losses[0])
    ctx.check("finite before 150", all(_finite(v) for v in ctx.losses[:150]))
    late = ctx.losses[152:]
    ctx.check("blown up after", any(not _finite(v) or v > 100 for v in late))


# -- character seq2seq for morphological inflection ----------------------------------------------

_PAD, _BOS, _EOS = 0, 1, 2
_TAGS = {3: [10, 9], 4: [24], 5: [14, 19, 12]}  # PAST "ed", PLURAL "s", PROGRESSIVE "ing"
_LEMMA = 10


def _inflection_batches(gen: torch.Generator, batch=32):
    """Tag + ten-letter lemma -> lemma + suffix + EOS (letters are ids 6..31)."""
    tlen = _LEMMA + 4
    while True:
        lemma = torch.randint(6, 32, (batch, _LEMMA), generator=gen)
        tag = torch.randint(3, 6, (batch,), generator=gen)
        src = torch.cat([tag[:, None], lemma], 1)
        tgt = torch.full((batch, tlen), _EOS)
        for b in range(batch):
            word = lemma[b].tolist() + _TAGS[int(tag[b])]
            tgt[b, : len(word)] = torch.tensor(word)
        yield src, tgt


class InflectionSeq2Seq(nn.Module):
    """ReLU RNN encoder (IRNN: recurrent matrix initialised to ``gain`` x identity), GRU decoder
    fed the encoder's last state and, at every step, attention over the encoder states;
    teacher forcing."""

    def __init__(self, vocab=32, dim=32, hidden=64, gain=1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = nn.RNN(dim, hidden, batch_first=True, nonlinearity="relu")
        self.decoder = nn.GRU(dim + hidden, hidden, batch_first=True)
        self.out = nn.Linear(2 * hidden, vocab)
        with torch.no_grad():
            self.encoder.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.encoder.bias_hh_l0.zero_()

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        enc, last = self.encoder(self.embed(src))
        e = self.embed(tgt_in)
        ctx_vec = last.transpose(0, 1).expand(-1, e.shape[1], -1)
        dec, _ = self.decoder(torch.cat([e, ctx_vec], -1), last)
        att = (dec @ enc.transpose(1, 2)).softmax(-1) @ enc
        return self.out(torch.cat([dec, att], -1))


@scenario(
    "h60_char_inflection_seq2seq",
    "nesterov",
    "exploding_gradients",
    where="encoder",
    diverges="auto",
    heldout=True,
    onset=0,
    note="hand-written decoupled decay on the IRNN's recurrent matrix, sign flipped",
)
def h60_inflection_irnn_growing_recurrence_nesterov(ctx: Context) -> None:
    """The IRNN encoder starts at the identity, and a hand-written decoupled weight decay meant
    to keep its recurrent matrix contractive is applied after each step as
    ``w.mul_(1 + lr * wd)`` instead of ``1 - lr * wd``; nothing clips gradients. The recurrent
    matrix grows by 0.3% a step, its spectral radius passes 1 and keeps going; over the 11-step
    source the encoder's gradients grow over the last few dozen steps and the run blows up."""
    gen = seeded(606)
    model = InflectionSeq2Seq(gain=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    data = _inflection_batches(gen)
    enc_grads: list[float] = []
    radii: list[float] = []

    def step_loss(step: int) -> torch.Tensor:
        src, tgt = next(data)
        tgt_in = torch.cat([torch.full((len(tgt), 1), _BOS), tgt[:, :-1]], 1)
        logits = model(src, tgt_in)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))

    def after(step: int) -> None:
        g = model.encoder.weight_hh_l0.grad
        enc_grads.append(float(g.norm()) if g is not None else float("nan"))
        with torch.no_grad():
            w = model.encoder.weight_hh_l0
            w.mul_(1 + 0.05 * 0.06)  # meant: 1 - lr * wd
            if bool(torch.isfinite(w).all()):
                radii.append(float(torch.linalg.eigvals(w).abs().max()))

    _train(ctx, model, opt, 300, step_loss, after=after)
    broke = next(i for i, v in enumerate(ctx.losses) if not _finite(v) or v > 100)
    ctx.check("the run blew up", broke < 300)
    ctx.check(
        "the encoder's gradients grew over the 20 steps before",
        _mean(enc_grads[broke - 20 : broke - 1]) > 3 * _mean(enc_grads[broke - 120 : broke - 40]),
    )
    ctx.check("the recurrent spectral radius had grown past 1", radii[broke - 2] > 1.0)


# -- semantic role labelling with a BiLSTM --------------------------------------------------------


def _srl_batches(gen: torch.Generator, batch=32, length=10):
    """Words 4..29 are nouns, 30..49 other words; one predicate position per sentence. The
    nearest noun left of the predicate is its A0 (1), the nearest noun right of it its A1 (2),
    every other word O (0)."""
    while True:
        x = torch.randint(4, 50, (batch, length), generator=gen)
        pred = torch.randint(1, length - 1, (batch,), generator=gen)
        y = torch.zeros(batch, length, dtype=torch.long)
        noun = (x >= 4) & (x < 30)
        for b in range(batch):
            p = int(pred[b])
            left = [i for i in range(p) if noun[b, i]]
            right = [i for i in range(p + 1, length) if noun[b, i]]
            if left:
                y[b, left[-1]] = 1
            if right:
                y[b, right[0]] = 2
        yield torch.stack([x, F.one_hot(pred, length)], 1), y.reshape(-1)


class BiLSTMSRL(nn.Module):
    def __init__(self, vocab=50, dim=32, hidden=32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pred_embed = nn.Embedding(2, 8)
        self.lstm = nn.LSTM(dim + 8, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, 64)
        self.tagger = nn.Linear(64, 3)
        self.last_hidden: torch.Tensor | None = None

    def forward(self, xp: torch.Tensor) -> torch.Tensor:
        x, pred = xp[:, 0], xp[:, 1]
        h, _ = self.lstm(torch.cat([self.embed(x), self.pred_embed(pred)], -1))
        z = F.relu(self.proj(h))
        self.last_hidden = z
        return self.tagger(z).reshape(-1, 3)


@scenario(
    "h60_bilstm_srl",
    "adagrad",
    "loss_of_plasticity",
    where="proj",
    diverges=None,
    heldout=True,
    onset=120,
    note="activation-sparsity penalty switched on at 120 with a weight 1000x too large",
)
def h60_srl_sparsity_penalty_kills_proj_adagrad(ctx: Context) -> None:
    """From step 120 an L1 activation-sparsity penalty on the projection's ReLU outputs is
    switched on, its weight typed as 50 instead of 0.05. Every active unit is pushed below
    zero; once there, the ReLU passes no gradient back (neither the task's nor the penalty's),
    so ``proj``'s units die and stay dead, and the tagger falls back to its bias."""
    gen = seeded(607)
    model = BiLSTMSRL()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    data = _srl_batches(gen)
    probe_x, _ = next(data)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 120:
            return loss
        return loss + 50.0 * model.last_hidden.abs().mean()

    dead_before: list[float] = []

    def before(step: int) -> None:
        if step == 120:
            with torch.no_grad():
                model(probe_x)
            dead_before.append(dead_fraction(model.last_hidden))

    fit(ctx, model, opt, data, 300, extra_loss=extra, before=before)
    with torch.no_grad():
        model(probe_x)
    dead_after = dead_fraction(model.last_hidden)
    ctx.check("proj's units alive before the penalty", dead_before[0] < 0.3)
    ctx.check("proj's units nearly all dead after it", dead_after >= 0.85)
    ctx.check(
        "the task loss rose after the penalty and stayed up",
        _mean(ctx.losses[-20:]) > 5 * _mean(ctx.losses[100:120]),
    )


# -- coreference: mention ranking -----------------------------------------------------------------

_MENTIONS = 8


def _coref_batches(gen: torch.Generator, batch=32, entities=30):
    """Documents of eight mentions (name token, position); an entity is named by one of two
    aliases (tokens e and e + 30). Target: the nearest earlier mention of the same entity, or
    the dummy (index 8) for a first mention."""
    while True:
        ent = torch.randint(0, entities, (batch, 3), generator=gen)
        which = torch.randint(0, 3, (batch, _MENTIONS), generator=gen)
        eid = ent.gather(1, which)
        tok = eid + entities * torch.randint(0, 2, (batch, _MENTIONS), generator=gen)
        gaps = torch.randint(1, 20, (batch, _MENTIONS), generator=gen)
        pos = gaps.cumsum(1)
        y = torch.full((batch, _MENTIONS), _MENTIONS)
        for b in range(batch):
            for i in range(_MENTIONS):
                same = [j for j in range(i) if eid[b, j] == eid[b, i]]
                if same:
                    y[b, i] = same[-1]
        yield torch.stack([tok, pos], -1), y.reshape(-1)


class _LogDistance(nn.Module):
    """log of the token distance between a mention and each earlier mention."""

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        return torch.log(dist.float()).unsqueeze(-1)


class MentionRanker(nn.Module):
    def __init__(self, vocab=60, dim=32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mention = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.distance = _LogDistance()
        self.pair = nn.Sequential(nn.Linear(3 * dim + 1, 64), nn.ReLU(), nn.Linear(64, 1))
        earlier = torch.tril(torch.ones(_MENTIONS, _MENTIONS, dtype=torch.bool), -1)
        self.register_buffer("earlier", earlier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tok, pos = x[..., 0], x[..., 1]
        m = self.mention(self.embed(tok))  # (B, M, dim)
        mi = m[:, :, None].expand(-1, -1, _MENTIONS, -1)
        mj = m[:, None, :].expand(-1, _MENTIONS, -1, -1)
        dist = pos[:, :, None] - pos[:, None, :]
        dist = torch.where(self.earlier, dist, torch.ones_like(dist))  # only earlier mentions
        feats = torch.cat([mi, mj, mi * mj, self.distance(dist)], -1)
        scores = self.pair(feats).squeeze(-1).masked_fill(~self.earlier, -1e4)
        dummy = torch.zeros(len(x), _MENTIONS, 1)
        return torch.cat([scores, dummy], -1).reshape(-1, _MENTIONS + 1)


@scenario(
    "h60_coref_mention_ranking",
    "adadelta",
    "nonfinite",
    where="distance",
    diverges=150,
    heldout=True,
    onset=150,
    note="a duplicated mention (distance 0) at step 150: log(0) in the distance feature",
)
def h60_coref_duplicate_mention_adadelta(ctx: Context) -> None:
    """At step 150 one document comes from a mention detector that emitted the same span
    twice: two mentions at the same position, a distance of 0 to an earlier mention. The
    distance feature takes log(0) = -inf, the pair scorer turns it into NaN, and the loss and
    then every parameter are NaN."""
    gen = seeded(608)
    model = MentionRanker()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    produced: dict[int, bool] = {}
    step_now = [0]

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        step_now[0] = step
        if step == 150:
            x = x.clone()
            x[3, 5] = x[3, 4]  # the same span listed twice
        return x, y

    def hook(module, inputs, out) -> None:
        if not bool(torch.isfinite(out).all()):
            produced.setdefault(step_now[0], True)

    model.distance.register_forward_hook(hook)
    fit(ctx, model, opt, _coref_batches(gen), 190, alter=alter, classifier=False)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("loss finite until 150, NaN at 150", all(finite[:150]) and not finite[150])
    ctx.check("the distance feature produced the first -inf, at 150", min(produced) == 150)
    ctx.check("the loss was learning before", _mean(ctx.losses[130:150]) < 0.7 * ctx.losses[0])


@scenario(
    "h60_coref_mention_ranking",
    "adamax",
    "healthy",
    heldout=True,
    note="clean documents, Adamax",
)
def h60_coref_control_adamax(ctx: Context) -> None:
    """The mention ranker on clean documents (no duplicated spans), Adamax: the antecedent
    loss falls and stays finite."""
    gen = seeded(609)
    model = MentionRanker()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _coref_batches(gen), 190, classifier=False)
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))


# -- Hugging Face SpeechT5 HiFi-GAN vocoder (fp16 autocast) ---------------------------------------

_HOP = 16  # samples per frame (upsample rates 4 x 4)


def _hifigan():
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    config = SpeechT5HifiGanConfig(
        model_in_dim=16,
        upsample_initial_channel=32,
        upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    )
    return SpeechT5HifiGan(config)


def _tone_batches(gen: torch.Generator, batch=8, frames=16, bins=16, power_from=None):
    """Tones gliding in pitch; frames of a 16-bin log-magnitude "mel" profile and the waveform.

    From step ``power_from`` on, the features come from a second preprocessing script that
    keeps int16 PCM scale and mel *power* instead of log mel."""
    n = frames * _HOP
    t = torch.arange(n) / 4000.0
    step = 0
    while True:
        f0 = 200 + 800 * torch.rand(batch, 1, generator=gen)
        glide = 1 + 0.3 * torch.rand(batch, 1, generator=gen)
        amp = 0.2 + 0.6 * torch.rand(batch, 1, generator=gen)
        freq = f0 * glide ** (t / t[-1])
        wave = amp * torch.sin(2 * math.pi * torch.cumsum(freq, 1) / 4000.0)
        ff = freq[:, ::_HOP]  # per frame
        centres = torch.linspace(200, 1300, bins)
        mag = amp[:, :, None] * torch.exp(-(((ff[:, :, None] - centres) / 80.0) ** 2))
        if power_from is not None and step >= power_from:
            feats = (32768.0 * mag) ** 2  # int16 scale, power, no log
        else:
            feats = torch.log(mag + 1e-4)
        step += 1
        yield feats, wave


def _spectral_loss(pred: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
    win = torch.hann_window(64)
    sp = torch.stft(pred.float(), 64, 16, window=win, return_complex=True).abs()
    sw = torch.stft(wave, 64, 16, window=win, return_complex=True).abs()
    return (torch.log(sp + 1e-4) - torch.log(sw + 1e-4)).abs().mean() + (pred - wave).abs().mean()


@scenario(
    "h60_hf_speecht5_hifigan",
    "adam",
    "amp_overflow",
    where="conv_pre",
    diverges=120,
    heldout=True,
    onset=120,
    note="fp16 autocast + GradScaler; int16-scale mel power (no log) from step 120",
)
def h60_hifigan_power_features_fp16_adam(ctx: Context) -> None:
    """The vocoder trains under fp16 autocast with a GradScaler on log-mel frames. From step
    120 the batches come from a newer preprocessing script that keeps int16 PCM scale and
    stores mel power without the log: inputs of up to ~1e8, finite in float32, but the first
    convolution (``conv_pre``) computes in float16, whose largest value is 65504, and its
    output overflows to inf. Every step from then on has an infinite loss, the scaler skips
    the step and halves its scale again and again."""
    gen = seeded(610)
    model = _hifigan()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    data = _tone_batches(gen, power_from=120)
    overflow: list[int] = []
    step_now = [0]

    def hook(module, inputs, out) -> None:
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(inputs[0]).all()):
            overflow.append(step_now[0])

    model.conv_pre.register_forward_hook(hook)
    last: list[torch.Tensor] = []

    def step_loss(step: int) -> torch.Tensor:
        step_now[0] = step
        feats, wave = next(data)
        last[:] = [feats]
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(feats)
        return _spectral_loss(pred.float(), wave)

    _train(ctx, model, opt, 140, step_loss, scaler=scaler)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("finite until 120, not from 120", all(finite[:120]) and not any(finite[120:]))
    ctx.check("conv_pre's fp16 output overflowed first at 120", overflow and overflow[0] == 120)
    with torch.no_grad():
        ctx.check("the same input is finite in float32", bool(torch.isfinite(model(last[0])).all()))
    ctx.check("the scaler backed off", ctx.scales[-1] < ctx.scales[119] / 1000)
    ctx.check("it had been learning", _mean(ctx.losses[100:120]) < 0.9 * _mean(ctx.losses[:5]))


@scenario(
    "h60_hf_speecht5_hifigan",
    "adamw",
    "healthy",
    heldout=True,
    note="fp16 autocast + GradScaler on log-mel frames throughout",
)
def h60_hifigan_control_fp16_adamw(ctx: Context) -> None:
    """The same vocoder under fp16 autocast with a GradScaler, log-mel frames throughout,
    AdamW: the spectral loss falls and stays finite."""
    gen = seeded(611)
    model = _hifigan()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    data = _tone_batches(gen)

    def step_loss(step: int) -> torch.Tensor:
        feats, wave = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(feats)
        return _spectral_loss(pred.float(), wave)

    _train(ctx, model, opt, 140, step_loss, scaler=scaler)
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.9 * _mean(ctx.losses[:5]))


# -- Hugging Face MusicGen decoder ---------------------------------------------------------------


def _musicgen():
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    config = MusicgenDecoderConfig(
        vocab_size=64,
        max_position_embeddings=64,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        hidden_size=32,
        num_codebooks=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        pad_token_id=63,
        bos_token_id=63,
    )
    return MusicgenForCausalLM(config)


def _codebook_batches(gen: torch.Generator, batch=16, length=24, codebooks=2, vocab=62):
    """Two codec codebooks per frame: codebook k steps through the codes k + 1 at a time from
    a random start, with an occasional repeated frame. Rows are (batch x codebooks, time)."""
    while True:
        start = torch.randint(0, vocab, (batch, codebooks, 1), generator=gen)
        stride = torch.arange(1, codebooks + 1)[None, :, None]
        hold = (torch.rand(batch, 1, length, generator=gen) < 0.1).long().cumsum(-1)
        t = torch.arange(length)[None, None, :] - hold
        yield ((start + stride * t) % vocab).reshape(batch * codebooks, length)


@scenario(
    "h60_hf_musicgen_decoder",
    "sg_lion",
    "update_ratio_out_of_range",
    where="model.decoder.embed_tokens",
    diverges=None,
    heldout=True,
    note="param groups built by name prefix leave the codebook embeddings out",
)
def h60_musicgen_embeddings_left_out_lion(ctx: Context) -> None:
    """The optimizer's parameter groups are built by name: decayed weights are those under
    ``model.decoder.layers`` or ``lm_heads``, undecayed ones the final norm. The codebook
    embeddings (``model.decoder.embed_tokens.*``) match neither prefix and are left out:
    they receive gradients every step but never move, while the rest of the decoder trains."""
    gen = seeded(612)
    model = _musicgen()
    named = dict(model.named_parameters())
    decay = [p for n, p in named.items() if n.startswith(("model.decoder.layers", "lm_heads"))]
    no_decay = [p for n, p in named.items() if n.startswith("model.decoder.layer_norm")]
    opt = sgo.Lion(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        fused=False,
    )
    before = [e.weight.detach().clone() for e in model.model.decoder.embed_tokens]
    data = _codebook_batches(gen)
    got_grad = [False]

    def step_loss(step: int) -> torch.Tensor:
        ids = next(data)
        logits = model(input_ids=ids).logits  # (batch x codebooks, time, vocab)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    def after(step: int) -> None:
        g = model.model.decoder.embed_tokens[0].weight.grad
        got_grad[0] = got_grad[0] or (g is not None and float(g.abs().sum()) > 0)

    _train(ctx, model, opt, 200, step_loss, after=after)
    same = all(
        torch.equal(b, e.weight)
        for b, e in zip(before, model.model.decoder.embed_tokens, strict=True)
    )
    ctx.check("codebook embeddings never moved, though they had gradients", same and got_grad[0])
    ctx.check("the rest trained (loss fell)", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:5]))


# -- Hugging Face Bark semantic model (a causal LM) -----------------------------------------------


def _bark():
    from transformers import BarkSemanticConfig, BarkSemanticModel

    config = BarkSemanticConfig(
        block_size=64,
        input_vocab_size=64,
        output_vocab_size=64,
        num_layers=2,
        num_heads=2,
        hidden_size=32,
        dropout=0.0,
    )
    return BarkSemanticModel(config)


def _bark_loss(model, batch) -> torch.Tensor:
    x, y = batch
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _param_delta(params, before: list[torch.Tensor]) -> float:
    return float(
        sum((p.detach() - b).pow(2).sum() for p, b in zip(params, before, strict=True)) ** 0.5
    )


@scenario(
    "h60_hf_bark_semantic",
    "radam",
    "adam_second_moment_poisoned",
    where=("lm_head", "layernorm_final"),
    diverges=None,
    heldout=True,
    onset=80,
    note="step 80: the loss backpropagated still multiplied by a 65536 loss scale",
)
def h60_bark_stale_loss_scale_radam(ctx: Context) -> None:
    """On a resume path the loss of step 80 is backpropagated still multiplied by the 65536
    loss scale of an earlier fp16 run, with no unscale before the optimizer step. The reported
    loss is ordinary, the gradients of every tensor are 65536x too large for one step: RAdam's
    second-moment estimates jump by ~4e9 and then decay with beta2 = 0.999. Once the giant
    first moment has decayed (a few dozen steps of oversized updates), the output head's and
    the final LayerNorm's updates stay a hundred times smaller than before, for hundreds of
    steps (the inner layers' shrink only a few-fold), and the model all but stops learning."""
    gen = seeded(613)
    model = _bark()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    data = text_batches(gen, batch=16, length=32, vocab=64)
    hit = [model.lm_head.weight, model.layernorm_final.weight, model.layernorm_final.bias]
    deltas: list[float] = []
    snap: list[torch.Tensor] = []

    def before(step: int) -> None:
        snap[:] = [p.detach().clone() for p in hit]

    def step_loss(step: int):
        loss = _bark_loss(model, next(data))
        return (loss, loss * 65536.0) if step == 80 else loss

    def after(step: int) -> None:
        deltas.append(_param_delta(hit, snap))

    _train(ctx, model, opt, 240, step_loss, before=before, after=after)
    g = ctx.grad_norms
    ctx.check("one giant gradient at 80", g[80] > 1000 * max(g[60:80]))
    ctx.check(
        "head and final norm updates 50x smaller over steps 150-240",
        _mean(deltas[150:240]) < _mean(deltas[60:80]) / 50,
    )
    ctx.check(
        "learning stalled from 120",
        _mean(ctx.losses[120:140]) - _mean(ctx.losses[-20:]) < 0.05,
    )


@scenario(
    "h60_hf_bark_semantic",
    "sg_ademamix",
    "healthy",
    heldout=True,
    note="AdEMAMix, plain training",
)
def h60_bark_control_ademamix(ctx: Context) -> None:
    """The Bark semantic model as a byte-level causal LM, AdEMAMix: the loss falls."""
    gen = seeded(614)
    model = _bark()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    data = text_batches(gen, batch=16, length=32, vocab=64)
    _train(ctx, model, opt, 240, lambda step: _bark_loss(model, next(data)))
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.75 * _mean(ctx.losses[:5]))


# -- Hugging Face Pop2Piano (T5 encoder-decoder) ---------------------------------------------------


def _pop2piano():
    from transformers import Pop2PianoConfig, Pop2PianoForConditionalGeneration

    config = Pop2PianoConfig(
        vocab_size=64,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        composer_vocab_size=2,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
    )
    return Pop2PianoForConditionalGeneration(config)


def _frames_to_notes_batches(gen: torch.Generator, batch=16, frames=16, dim=32, notes=8):
    """Noisy chroma-like frames whose strongest bin is the piece's key; the notes are an
    arpeggio from the key (key, key + 4, key + 7, ...), offset past the special tokens."""
    while True:
        key = torch.randint(0, dim, (batch, 1), generator=gen)
        x = 0.5 * torch.randn(batch, frames, dim, generator=gen) + 2.0 * F.one_hot(key, dim)
        steps = torch.tensor([0, 4, 7, 12, 16, 19, 24, 28])[:notes]
        yield x, (key + steps) % 60 + 2


@scenario(
    "h60_hf_pop2piano",
    "nadam",
    "loss_spike",
    diverges=150,
    heldout=True,
    onset=150,
    note="EMA weights swapped in for evaluation at 150 and never swapped back",
)
def h60_pop2piano_ema_swap_not_restored_nadam(ctx: Context) -> None:
    """At step 150 an evaluation copies the EMA of the weights (decay 0.999, so after 150
    steps still mostly the initial weights) into the model and the swap back is missing.
    Training resumes from those weights: the loss jumps back near its starting value at once,
    with no bad data or gradient behind it, and is learnt down again."""
    gen = seeded(615)
    model = _pop2piano()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ema = copy.deepcopy(model).requires_grad_(False)
    data = _frames_to_notes_batches(gen)

    def step_loss(step: int) -> torch.Tensor:
        x, y = next(data)
        return model(inputs_embeds=x, labels=y).loss

    def after(step: int) -> None:
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 0.001)
            if step == 149:  # evaluation with the EMA weights ...
                model.load_state_dict(ema.state_dict())  # ... and no swap back

    _train(ctx, model, opt, 300, step_loss, after=after)
    pre = _mean(ctx.losses[140:150])
    ctx.check("loss jumped at 150", ctx.losses[150] > 2 * pre)
    ctx.check("and recovered", _mean(ctx.losses[-10:]) < 1.5 * pre)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))


# -- Hugging Face Dia (text to audio codes, encoder-decoder) -------------------------------------


def _dia():
    from transformers import (
        DiaConfig,
        DiaDecoderConfig,
        DiaEncoderConfig,
        DiaForConditionalGeneration,
    )

    enc = DiaEncoderConfig(
        max_position_embeddings=64,
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=64,
    )
    dec = DiaDecoderConfig(
        max_position_embeddings=64,
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        cross_num_attention_heads=2,
        cross_head_dim=16,
        cross_num_key_value_heads=2,
        cross_hidden_size=32,
        vocab_size=64,
        num_channels=2,
    )
    config = DiaConfig(
        encoder_config=enc,
        decoder_config=dec,
        pad_token_id=63,
        eos_token_id=62,
        bos_token_id=61,
        delay_pattern=[0, 1],
    )
    return DiaForConditionalGeneration(config)


def _text_to_codes_batches(gen: torch.Generator, batch=16, text=10, frames=12):
    """A text of one repeated voice token v (0..59) with a few random words; channel c of
    frame t is (v + 3t + 7c) mod 60."""
    while True:
        voice = torch.randint(0, 60, (batch, 1), generator=gen)
        ids = voice.expand(-1, text).clone()
        words = torch.rand(batch, text, generator=gen) < 0.2
        ids[words] = torch.randint(0, 60, (int(words.sum()),), generator=gen)
        t = torch.arange(frames)[None, :]
        codes = torch.stack([(voice + 3 * t + 7 * c) % 60 for c in range(2)], -1)  # (B, T, 2)
        yield ids, codes


@scenario(
    "h60_hf_dia",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="a code-corruption augmentation hits the labels, its rate ramped per step",
)
def h60_dia_label_corruption_ramp_asgd(ctx: Context) -> None:
    """A codec-error augmentation, meant to replace 2% of the decoder's *input* codes, is
    applied to the label codes, and its rate is ramped per step instead of per epoch: from
    step 100 a growing share of the targets (half by step 400) is random. Nothing in the
    model or the optimizer misbehaves; the loss just climbs, slowly and steadily."""
    gen = seeded(616)
    model = _dia()
    opt = torch.optim.ASGD(model.parameters(), lr=0.3, t0=1e9)
    data = _text_to_codes_batches(gen)
    noise = torch.Generator().manual_seed(617)

    def step_loss(step: int) -> torch.Tensor:
        ids, codes = next(data)
        dec_in = torch.cat([torch.full((len(codes), 1, 2), 61), codes[:, :-1]], 1)
        labels = codes
        rate = max(0.0, (step - 100) / 600)
        if rate > 0:
            hit = torch.rand(labels.shape, generator=noise) < rate
            labels = torch.where(hit, torch.randint(0, 60, labels.shape, generator=noise), labels)
        logits = model(input_ids=ids, decoder_input_ids=dec_in).logits  # (B x 2, T, V)
        target = labels.permute(0, 2, 1).reshape(-1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target)

    _train(ctx, model, opt, 400, step_loss)
    low = _mean(ctx.losses[80:100])
    ctx.check("had learnt before 100", low < 0.6 * _mean(ctx.losses[:5]))
    ctx.check("then climbed past twice its low", _mean(ctx.losses[-20:]) > 2 * low)
    smooth = [_mean(ctx.losses[i : i + 20]) for i in range(100, 380, 20)]
    ctx.check(
        "slowly: no 20-step window rose by more than a third of the climb",
        max(b - a for a, b in zip(smooth, smooth[1:], strict=False)) < (smooth[-1] - smooth[0]) / 3,
    )
