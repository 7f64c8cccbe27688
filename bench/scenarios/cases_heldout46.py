"""Held-out scenarios, set 46 (``h46_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face DeepSeek-V3 (multi-head latent attention, tiny MoE), Cohere2-MoE and
xLSTM causal LMs, a GTE encoder classifier and a ViLT vision-language classifier on generated
image features (fp16 autocast), all built from configs; and classic NLP / sequence-labelling
models written here: a character-level CNN text classifier (windows of standard-library
sources, labelled by file), a BiLSTM-CRF tagger on a generated tag chain, a binary Tree-LSTM
over generated parse trees with negation, a fastText bag-of-n-grams classifier (hashed
bigrams, ``nn.EmbeddingBag``; one control under fp16 autocast), a dynamic memory network
(DMN+) on generated bAbI-style stories, a QANet-style reader (depthwise-separable convolutions,
self-attention, trilinear context-query attention) on generated span questions, and a
Mikolov-style Elman RNN language model with an identity-initialised ReLU recurrence (IRNN).

Optimizers: AdamW, Adamax, RAdam, NAdam, Adam, SGD, Nesterov SGD, momentum SGD, Adagrad,
RMSprop, Adadelta, ASGD, and steadygrad.optim's AdaBelief, Lion and StableSPAM.
"""

from __future__ import annotations

import math
import sysconfig
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers ------------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _loop(ctx: Context, model, opt, batches, steps, loss_of, *, clip=None, after_backward=None):
    """A plain loop for the scenarios that need something between backward and step."""
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        loss = loss_of(step, x, y)
        loss.backward()
        if after_backward is not None:
            after_backward(step)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- data ----------------------------------------------------------------------------------------


_SOURCES = ("textwrap.py", "string.py", "heapq.py", "bisect.py")


@lru_cache(maxsize=1)
def _source_texts() -> tuple[torch.Tensor, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return tuple(torch.tensor(list((root / n).read_bytes()), dtype=torch.long) for n in _SOURCES)


def _source_windows(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Byte windows of four standard-library files; the label is the file they came from."""
    texts = _source_texts()
    while True:
        y = torch.randint(0, len(texts), (batch,), generator=gen)
        rows = []
        for label in y.tolist():
            t = texts[label]
            s = int(torch.randint(0, len(t) - length, (1,), generator=gen))
            rows.append(t[s : s + length])
        yield torch.stack(rows) % 128, y


def _doc_batches(gen, batch=64, length=40, vocab=400, classes=4, buckets=2048):
    """Topic documents: each class has its own 40 topic words among common ones. Returned as
    unigram ids followed by hashed bigram ids (fastText's features)."""
    topics = torch.randperm(vocab - 50, generator=gen)[: classes * 40].reshape(classes, 40) + 50
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        common = torch.randint(0, 50, (batch, length), generator=gen)
        pick = torch.randint(0, 40, (batch, length), generator=gen)
        topical = topics[y][torch.arange(batch)[:, None], pick]
        x = torch.where(torch.rand(batch, length, generator=gen) < 0.35, topical, common)
        bigrams = vocab + (x[:, :-1] * 7919 + x[:, 1:] * 104729) % buckets
        yield torch.cat([x, bigrams], 1), y


# tag chain: 0 O, 1 B-X, 2 I-X, 3 B-Y, 4 I-Y; tokens: O 20..59, B-X 1..4, B-Y 5..9, I-* 10..19
_TRANS = torch.tensor(
    [
        [0.6, 0.2, 0.0, 0.2, 0.0],
        [0.3, 0.0, 0.7, 0.0, 0.0],
        [0.5, 0.0, 0.5, 0.0, 0.0],
        [0.3, 0.0, 0.0, 0.0, 0.7],
        [0.5, 0.0, 0.0, 0.0, 0.5],
    ]
)
_EMIT_LO = torch.tensor([20, 1, 10, 5, 10])
_EMIT_HI = torch.tensor([60, 5, 20, 10, 20])


def _tag_batches(gen, batch=32, length=20):
    """Sentences from a 5-tag chain; I-X and I-Y share their words (context decides)."""
    while True:
        yield _tag_sample(gen, batch, length)


def _tag_sample(gen, batch, length):
    tags = torch.zeros(batch, length, dtype=torch.long)
    tags[:, 0] = torch.multinomial(
        torch.tensor([0.6, 0.2, 0.0, 0.2, 0.0]), batch, True, generator=gen
    )
    for t in range(1, length):
        tags[:, t] = torch.multinomial(_TRANS[tags[:, t - 1]], 1, generator=gen)[:, 0]
    u = torch.rand(batch, length, generator=gen)
    x = _EMIT_LO[tags] + (u * (_EMIT_HI[tags] - _EMIT_LO[tags])).long()
    return x, tags


def _tree_batches(gen, batch=32, depth=4):
    """Complete binary parse trees of 2**depth leaves: words 0-9 positive, 10-19 negative,
    20-35 neutral, 36-39 negators (a negator leaf flips its sibling). Label: root polarity > 0."""
    n = 2**depth
    while True:
        x = torch.randint(0, 40, (batch, n), generator=gen)
        v = torch.where(x < 10, 1.0, torch.where(x < 20, -1.0, 0.0))
        neg = x >= 36
        # level 1: leaf pairs (a negator flips its sibling)
        left, right = v[:, 0::2], v[:, 1::2]
        nl, nr = neg[:, 0::2], neg[:, 1::2]
        val = torch.where(nl, -right, torch.where(nr, -left, left + right))
        while val.shape[1] > 1:
            val = val[:, 0::2] + val[:, 1::2]
        y = (val[:, 0] > 0).long()
        yield x, y


def _story_batches(gen, batch=32, facts=8, entities=5, places=6):
    """bAbI-style stories: fact = (entity, verb, place); question = where is entity e? Tokens:
    entities 0-4, verbs 5-7, places 8-13, "where" 14, "is" 15. x: (batch, facts + 1, 3), the
    last row the question; y: the entity's last place."""
    while True:
        ent = torch.randint(0, entities, (batch, facts), generator=gen)
        verb = torch.randint(5, 8, (batch, facts), generator=gen)
        place = torch.randint(0, places, (batch, facts), generator=gen)
        pick = torch.randint(0, facts, (batch,), generator=gen)
        q_ent = ent[torch.arange(batch), pick]
        mentions = (ent == q_ent[:, None]).long() * torch.arange(1, facts + 1)[None]
        last = mentions.argmax(1)
        y = place[torch.arange(batch), last]
        story = torch.stack([ent, verb, place + 8], 2)
        q = torch.stack([torch.full_like(q_ent, 14), torch.full_like(q_ent, 15), q_ent], 1)
        yield torch.cat([story, q[:, None]], 1), y


def _span_batches(gen, batch=32, length=40, vocab=50):
    """Span questions: the question is one key word that occurs once in the context; the
    answer is the two words after it. x: (batch, 1 + length), question first; y: (start, end)."""
    while True:
        ctxt = torch.randint(2, vocab, (batch, length), generator=gen)
        key = torch.randint(2, vocab, (batch,), generator=gen)
        ctxt = torch.where(ctxt == key[:, None], 1, ctxt)  # the key occurs only where placed
        pos = torch.randint(0, length - 2, (batch,), generator=gen)
        ctxt[torch.arange(batch), pos] = key
        y = torch.stack([pos + 1, pos + 2], 1)
        yield torch.cat([key[:, None], ctxt], 1), y


# -- models written here -------------------------------------------------------------------------


class CharCNN(nn.Module):
    """Character CNN text classifier: byte embeddings, one wide convolution, ReLU, max over
    time, a linear head."""

    def __init__(self, classes: int = 4, dim: int = 16, filters: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(128, dim)
        self.conv = nn.Conv1d(dim, filters, 5, padding=2)
        self.head = nn.Linear(filters, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(self.embed(x).transpose(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(-1))


class CRF(nn.Module):
    """Linear-chain CRF negative log-likelihood (mean over the batch). ``naive``: the forward
    algorithm's log-sum-exp written as ``log(exp(.).sum())``, without the max shift."""

    def __init__(self, tags: int, naive: bool = False) -> None:
        super().__init__()
        self.trans = nn.Parameter(torch.zeros(tags, tags))
        self.start = nn.Parameter(torch.zeros(tags))
        self.naive = naive

    def _lse(self, z: torch.Tensor) -> torch.Tensor:
        if self.naive:
            return torch.log(torch.exp(z).sum(1))
        return torch.logsumexp(z, 1)

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        b, t, _ = emissions.shape
        alpha = self.start + emissions[:, 0]
        for i in range(1, t):
            alpha = self._lse(alpha[:, :, None] + self.trans[None]) + emissions[:, i]
        log_z = self._lse(alpha)
        ar = torch.arange(b)
        gold = self.start[tags[:, 0]] + emissions[ar, 0, tags[:, 0]]
        for i in range(1, t):
            gold = gold + self.trans[tags[:, i - 1], tags[:, i]] + emissions[ar, i, tags[:, i]]
        return (log_z - gold).mean()


class BiLSTMCRF(nn.Module):
    def __init__(
        self, vocab: int = 60, dim: int = 16, hidden: int = 24, tags: int = 5, naive=False
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.emit = nn.Linear(2 * hidden, tags)
        self.crf = CRF(tags, naive=naive)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # per-token log-probabilities as emissions, the tutorial way
        return F.log_softmax(self.emit(self.lstm(self.embed(x))[0]), -1)


class BinaryTreeLSTMCell(nn.Module):
    """Tai et al.'s N-ary (N = 2) Tree-LSTM composition: input/output/update gates from both
    children's states, one forget gate per child."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.iou = nn.Linear(2 * hidden, 3 * hidden)
        self.forget = nn.Linear(2 * hidden, 2 * hidden)

    def forward(self, h, c):
        b, n, d = h.shape
        hp = h.reshape(b, n // 2, 2 * d)
        cl, cr = c.reshape(b, n // 2, 2, d).unbind(2)
        i, o, u = self.iou(hp).chunk(3, -1)
        fl, fr = torch.sigmoid(self.forget(hp)).chunk(2, -1)
        c = torch.sigmoid(i) * torch.tanh(u) + fl * cl + fr * cr
        return torch.sigmoid(o) * torch.tanh(c), c


class TreeLSTM(nn.Module):
    def __init__(self, vocab: int = 40, dim: int = 24, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.leaf = nn.Linear(dim, 2 * hidden)
        self.cell = BinaryTreeLSTMCell(hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o, u = self.leaf(self.embed(x)).chunk(2, -1)
        c = torch.tanh(u)
        h = torch.sigmoid(o) * torch.tanh(c)
        while h.shape[1] > 1:
            h, c = self.cell(h, c)
        return self.head(h[:, 0])


class FastText(nn.Module):
    """fastText: the mean of unigram and hashed-bigram embeddings, one linear layer."""

    def __init__(self, rows: int = 400 + 2048, dim: int = 24, classes: int = 4) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(rows, dim, mode="mean")
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bag(x))


class DMN(nn.Module):
    """DMN+: sentence encoding with positional weights, a bi-GRU fusion of the facts, attention
    gates over (fact, question, memory) features, an untied ReLU memory update, 3 passes."""

    def __init__(self, vocab: int = 16, dim: int = 32, answers: int = 6, passes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.linspace(0.5, 1.5, 3)[:, None].repeat(1, dim))
        self.fusion = nn.GRU(dim, dim, batch_first=True, bidirectional=True)
        self.gate = nn.Sequential(nn.Linear(4 * dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.memory = nn.ModuleList(nn.Linear(3 * dim, dim) for _ in range(passes))
        self.answer = nn.Linear(2 * dim, answers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = (self.embed(x) * self.pos).sum(2)  # (b, facts + 1, dim)
        facts, q = e[:, :-1], e[:, -1]
        f = self.fusion(facts)[0]
        f = f[..., : f.shape[-1] // 2] + f[..., f.shape[-1] // 2 :]
        m = q
        for update in self.memory:
            z = torch.cat(
                [f * q[:, None], f * m[:, None], (f - q[:, None]).abs(), (f - m[:, None]).abs()], -1
            )
            g = torch.softmax(self.gate(z)[..., 0], 1)
            c = (g[..., None] * f).sum(1)
            m = F.relu(update(torch.cat([m, c, q], -1)))
        return self.answer(torch.cat([m, q], -1))


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, dim: int, k: int = 5) -> None:
        super().__init__()
        self.depth = nn.Conv1d(dim, dim, k, padding=k // 2, groups=dim)
        self.point = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point(self.depth(x.transpose(1, 2))).transpose(1, 2)


class QANetBlock(nn.Module):
    """Positional encoding, two depthwise-separable convolutions, self-attention and a
    feed-forward layer, each pre-LayerNorm and residual."""

    def __init__(self, dim: int, heads: int = 2, convs: int = 2) -> None:
        super().__init__()
        self.conv_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(convs))
        self.convs = nn.ModuleList(DepthwiseSeparableConv(dim) for _ in range(convs))
        self.att_norm = nn.LayerNorm(dim)
        self.att = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, d = x.shape[1], x.shape[2]
        pos = torch.arange(t)[:, None] / (10000 ** (torch.arange(0, d, 2)[None] / d))
        x = x + torch.cat([pos.sin(), pos.cos()], -1)
        for norm, conv in zip(self.conv_norms, self.convs, strict=True):
            x = x + F.relu(conv(norm(x)))
        h = self.att_norm(x)
        x = x + self.att(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.ffn_norm(x))


class Highway(nn.Module):
    def __init__(self, dim: int, layers: int = 2) -> None:
        super().__init__()
        self.gates = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.transforms = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for g, t in zip(self.gates, self.transforms, strict=True):
            gate = torch.sigmoid(g(x))
            x = gate * F.relu(t(x)) + (1 - gate) * x
        return x


class ContextQueryAttention(nn.Module):
    """QANet / BiDAF trilinear similarity S = w . [c; q; c * q], then context-to-query and
    query-to-context attention."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w_c = nn.Linear(dim, 1, bias=False)
        self.w_q = nn.Linear(dim, 1, bias=False)
        self.w_cq = nn.Parameter(torch.randn(dim) / dim**0.5)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, c: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        s = self.w_c(c) + self.w_q(q).transpose(1, 2) + (c * self.w_cq) @ q.transpose(1, 2)
        s_row, s_col = torch.softmax(s, 2), torch.softmax(s, 1)
        a = s_row @ q
        b = s_row @ s_col.transpose(1, 2) @ c
        return self.out(torch.cat([c, a, c * a, c * b], -1))


class QANet(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.highway = Highway(dim)
        self.embed_encoder = QANetBlock(dim)
        self.cq_att = ContextQueryAttention(dim)
        self.model_encoder = QANetBlock(dim)  # shared by the three stacks, as in QANet
        self.start = nn.Linear(2 * dim, 1)
        self.end = nn.Linear(2 * dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed_encoder(self.highway(self.embed(x)))
        q, c = e[:, :1], e[:, 1:]
        m0 = self.model_encoder(self.cq_att(c, q))
        m1 = self.model_encoder(m0)
        m2 = self.model_encoder(m1)
        start = self.start(torch.cat([m0, m1], -1))[..., 0]
        end = self.end(torch.cat([m0, m2], -1))[..., 0]
        return torch.stack([start, end], 1)  # (b, 2, context)


def _span_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


class ElmanLM(nn.Module):
    """Mikolov-style RNN LM with an identity-initialised ReLU recurrence (IRNN, Le et al.)."""

    def __init__(
        self, vocab: int = 128, dim: int = 32, hidden: int = 64, gain: float = 1.0
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.RNN(dim, hidden, nonlinearity="relu", batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.weight_ih_l0.normal_(0.0, 0.1)
            self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_ih_l0.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.embed(x))[0])


# -- Hugging Face models from configs -------------------------------------------------------------


def _deepseek_v3():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        use_cache=False,
    )
    return DeepseekV3ForCausalLM(config)


def _cohere2_moe():
    from transformers import Cohere2MoeConfig, Cohere2MoeForCausalLM

    config = Cohere2MoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        tie_word_embeddings=False,
        logit_scale=1.0,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        use_cache=False,
    )
    return Cohere2MoeForCausalLM(config)


def _xlstm():
    from transformers import xLSTMConfig, xLSTMForCausalLM

    config = xLSTMConfig(
        vocab_size=128,
        hidden_size=32,
        embedding_dim=32,
        num_hidden_layers=2,
        num_heads=2,
        qk_dim_factor=0.5,
        v_dim_factor=1.0,
        mode="train",
        chunk_size=8,
        chunkwise_kernel="chunkwise--native_autograd",
        sequence_kernel="native_sequence__native",
        step_kernel="native",
        use_cache=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return xLSTMForCausalLM(config)


def _gte(labels: int = 2):
    from transformers import GteConfig, GteForSequenceClassification

    config = GteConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return GteForSequenceClassification(config)


def _vilt(labels: int = 4):
    from transformers import ViltConfig, ViltForQuestionAnswering

    config = ViltConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_image_length=-1,
        num_labels=labels,
        modality_type_vocab_size=2,
    )
    return ViltForQuestionAnswering(config)


def _vqa_batches(gen, batch=32):
    """Generated images: noise plus a colour tint (one of 4); the question asks either "what
    colour is it?" (answer: the tint) or "what colour is opposite?" (tint + 2 mod 4), each in
    4 wordings. Pixels in [0, 1]."""
    while True:
        tint = torch.randint(0, 4, (batch,), generator=gen)
        qk = torch.randint(0, 8, (batch,), generator=gen)
        palette = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
        px = (
            0.5 * torch.rand(batch, 3, 32, 32, generator=gen)
            + 0.5 * palette[tint][:, :, None, None]
        )
        ids = torch.stack([torch.full_like(qk, 3), 10 + qk, torch.full_like(qk, 4)], 1)
        yield (ids, px), (tint + 2 * (qk >= 4).long()) % 4


def _vilt_forward(m, x):
    ids, px = x
    return m(input_ids=ids, pixel_values=px).logits


# == the faults ===================================================================================


@scenario(
    "h46_hf_deepseek_v3_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="MLA softmax scale ported as qk_head_dim ** +0.5 (16x), high LR",
)
def h46_deepseek_v3_softmax_scale_inverted(ctx: Context) -> None:
    """A port of DeepSeek-V3's multi-head latent attention rewrote the softmax scale (with its
    YaRN mscale correction) and lost the minus sign of the exponent: ``scaling = qk_head_dim **
    0.5`` instead of ``** -0.5``, 16x too large. Trained with a brisk AdamW rate, q.k grows
    unchecked and the attention rows saturate to one-hot: the logits entering the softmax grow
    far past their usual size."""
    from transformers import AttentionInterface
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import eager_attention_forward

    seen: list[float] = []
    saturation: list[float] = []

    def probing(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        with torch.no_grad():
            s = (query @ key.transpose(-1, -2)) * scaling
            t = s.shape[-1]
            mask = torch.ones(t, t, dtype=torch.bool).tril()
            s = s.masked_fill(~mask, float("-inf"))
            seen.append(float(s.masked_fill(~mask, 0).abs().amax()))
            saturation.append(float(torch.softmax(s, -1)[..., 4:, :].amax(-1).mean()))
        return eager_attention_forward(
            module, query, key, value, attention_mask, scaling, dropout, **kw
        )

    AttentionInterface.register("h46_probe", probing)
    gen = seeded(4601)
    model = _deepseek_v3()
    model.config._attn_implementation = "h46_probe"
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.scaling = attn.qk_head_dim**0.5  # the bug: should be qk_head_dim ** -0.5
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        260,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    per_step = len(model.model.layers)
    first = max(seen[per_step : 6 * per_step])
    last = max(seen[-10 * per_step :])
    ctx.check("attention logits grew 10x, past 50", last > 10 * first and last > 50)
    ctx.check(
        "attention rows saturated (mean max prob > 0.9)", _mean(saturation[-10 * per_step :]) > 0.9
    )


@scenario(
    "h46_hf_cohere2_moe_lm",
    "adamax",
    "output_logit_divergence",
    where=("lm_head",),
    diverges="auto",
    heldout=True,
    onset=0,
    note="z-loss coefficient -1 (the config's 'disabled' sentinel) multiplied in: log Z runs away",
)
def h46_cohere2_moe_zloss_sentinel(ctx: Context) -> None:
    """The config marks the auxiliary z-loss (which keeps the softmax normaliser log Z near 0)
    as off with ``z_loss_coef: -1``, the sentinel the old trainer checked for; the new trainer
    multiplies it in unconditionally. The term now rewards a large log Z. Cross-entropy does not
    care where the logits sit as a whole, so nothing resists: the untied head's logits shift
    upward together, log Z climbs ever faster (13x in 300 steps) and the loss follows."""
    gen = seeded(4602)
    model = _cohere2_moe()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    z_loss_coef = -1.0  # the bug: the "disabled" sentinel used as a coefficient
    log_z: list[float] = []
    last = {}

    def forward(m, x):
        out = m(input_ids=x).logits
        last["logits"] = out
        return out

    def extra(step, loss):
        lz = torch.logsumexp(last["logits"].float(), -1)
        log_z.append(float(lz.detach().mean()))
        return loss + z_loss_coef * (lz**2).mean()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        400,
        loss_fn=lm_loss,
        classifier=False,
        forward=forward,
        extra_loss=extra,
    )
    ctx.check("log Z grew 10x", _mean(log_z[-10:]) > 10 * abs(_mean(log_z[:10])))
    ctx.check("log Z still climbing at the end", _mean(log_z[-10:]) > _mean(log_z[-60:-50]))


@scenario(
    "h46_hf_xlstm_lm",
    "radam",
    "update_ratio_out_of_range",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="optimizer built from model.backbone.parameters(): the untied lm_head never trains",
)
def h46_xlstm_head_left_out(ctx: Context) -> None:
    """The optimizer was built from ``model.backbone.parameters()`` (the author believed the
    output head was tied to the embeddings, as in many LMs; xLSTM's is not). ``lm_head`` gets
    gradients every step but is never updated: it stays at its random initialisation while the
    backbone learns to serve a random projection."""
    gen = seeded(4603)
    model = _xlstm()
    opt = torch.optim.RAdam(model.backbone.parameters(), lr=3e-3)
    head = model.lm_head.weight.detach().clone()
    emb = model.backbone.embeddings.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        200,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("lm_head unchanged", torch.equal(head, model.lm_head.weight))
    ctx.check("backbone trained", not torch.equal(emb, model.backbone.embeddings.weight))


@scenario(
    "h46_hf_gte_cls",
    "nadam",
    "softmax_collapse",
    where=("classifier",),
    diverges=None,
    heldout=True,
    note="logits divided by 1/200 (meant: divided by 200); memorised training pool",
)
def h46_gte_temperature_reciprocal(ctx: Context) -> None:
    """The classification head was meant to soften its logits by a temperature of 200
    (``logits / 200``); the code divides by the reciprocal, ``logits / (1 / 200)``, a 200x
    sharpening. On a small, repeated training pool the encoder soon separates it, and the
    float32 softmax of a large share of the rows saturates to exactly 1.0 on the target: the
    probabilities collapse to one-hot and the gradient through those rows is exactly zero."""
    gen = seeded(4604)
    model = _gte()
    pool = [next(bert_batches(gen, 32, 16)) for _ in range(4)]

    def batches():
        while True:
            yield from pool

    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    temperature = 1 / 200  # the bug: the reciprocal of the intended temperature

    def fwd(m, x):
        return m(input_ids=x).logits / temperature

    collapsed: dict[int, float] = {}
    xs = torch.cat([x for x, _ in pool])
    ys = torch.cat([y for _, y in pool])

    def watch(step):
        if step in (40, 399):
            with torch.no_grad():
                collapsed[step] = collapsed_fraction(fwd(model, xs), ys)

    fit(ctx, model, opt, batches(), 400, forward=fwd, before=watch)
    ctx.check("no row collapsed at step 40", collapsed[40] == 0.0)
    ctx.check("over a third of the rows collapsed to p=1.0 by the end", collapsed[399] > 1 / 3)


@scenario(
    "h46_hf_vilt_vl_cls",
    "sg_adabelief",
    "amp_overflow",
    where=("vilt.embeddings.patch_embeddings.projection",),
    diverges=150,
    heldout=True,
    onset=150,
    note="fp16 autocast; from step 150 16-bit images arrive unscaled (0..65535)",
)
def h46_vilt_unscaled_16bit_images(ctx: Context) -> None:
    """Trained under fp16 autocast with a GradScaler. From step 150 the loader reaches a shard
    of 16-bit images that its reader returns unscaled (0..65535 instead of 0..1). In float32 the
    patch projection and the LayerNorms after it would take that in stride; in float16 the
    patch projection's output (and its brightest input pixels) exceed 65504: inf, then NaN
    through the encoder. The scaler skips every step from then on and the loss is NaN."""
    gen = seeded(4605)
    model = _vilt()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu")
    proj = model.vilt.embeddings.patch_embeddings.projection
    overflow: dict[int, bool] = {}
    state = {"step": 0}

    def hook(mod, inp, out):
        if not torch.isfinite(out).all() and state["step"] not in overflow:
            overflow[state["step"]] = bool(torch.isfinite(inp[0]).all())

    proj.register_forward_hook(hook)
    held = {}

    def alter(step, x, y):
        state["step"] = step
        ids, px = x
        if step >= 150:  # the 16-bit shard: raw sensor counts, not divided by 65535
            px = (px * 65535.0).round()
        held[step] = ((ids, px), y)
        return (ids, px), y

    fit(
        ctx,
        model,
        opt,
        _vqa_batches(gen),
        190,
        alter=alter,
        scaler=scaler,
        amp=True,
        forward=_vilt_forward,
    )
    ctx.check(
        "finite loss before 150, not at 150",
        all(_finite(v) for v in ctx.losses[:150]) and not _finite(ctx.losses[150]),
    )
    ctx.check(
        "the patch projection overflowed first at 150, on finite input",
        min(overflow, default=-1) == 150 and overflow[150],
    )
    (x150, y150) = held[150]
    with torch.no_grad():
        fp32 = F.cross_entropy(_vilt_forward(model, x150), y150)
    ctx.check(
        "the same batch is finite in float32 (weights unchanged by skipped steps)",
        bool(torch.isfinite(fp32)),
    )
    ctx.check("the scaler skipped the steps after 150", ctx.scales[-1] < ctx.scales[149] / 100)


@scenario(
    "h46_char_cnn_text_cls",
    "sgd_mom",
    "loss_of_plasticity",
    where=("conv",),
    diverges="auto",
    heldout=True,
    onset=120,
    note="warm-restart peak typo: lr x40 for 2 steps at 120 kills the conv ReLUs",
)
def h46_char_cnn_restart_burst(ctx: Context) -> None:
    """A cyclic schedule's warm restart at step 120 was written with a peak of ``lr * 40``
    (meant ``lr * 4.0``) for its first two steps. The momentum-SGD burst throws the
    convolution's filters and biases so far that their ReLUs are never positive on any window:
    after max-over-time pooling those features are constant 0, get no gradient, and stay dead
    when the rate returns to normal."""
    gen = seeded(4606)
    model = CharCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def schedule(step):
        opt.param_groups[0]["lr"] = 2.0 if 120 <= step < 122 else 0.05

    probe_x, _ = next(_source_windows(torch.Generator().manual_seed(1), 256))
    dead: dict[int, float] = {}

    def watch(step):
        schedule(step)
        if step in (119, 299):
            with torch.no_grad():
                dead[step] = dead_fraction(model.features(probe_x).transpose(1, 2))

    fit(ctx, model, opt, _source_windows(gen), 300, before=watch)
    ctx.check("few conv units dead before the burst", dead[119] < 0.2)
    ctx.check("most conv units dead after it", dead[299] > 0.6)


@scenario(
    "h46_bilstm_crf_tagger",
    "adagrad",
    "nonfinite",
    where=("crf",),
    diverges=180,
    heldout=True,
    onset=180,
    note="naive log(sum(exp)) forward algorithm; unsplit 1000-token documents at 180",
)
def h46_bilstm_crf_naive_forward_algorithm(ctx: Context) -> None:
    """The CRF's forward algorithm computes ``log(exp(alpha + trans).sum())`` without the max
    shift. Sentences of 20 tokens keep alpha well below exp's float32 limit (88). At step 180
    the loader delivers documents whose sentence splitter failed: 1000 tokens in one sequence.
    alpha grows with the length (some 0.2 a token here), exp overflows to inf inside the CRF, the loss is inf and the
    backward pass fills every gradient with NaN."""
    gen = seeded(4607)
    model = BiLSTMCRF(naive=True)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    crf_out: dict[int, tuple[bool, bool]] = {}
    state = {"step": 0}

    def hook(mod, inp, out):
        crf_out.setdefault(
            state["step"], (bool(torch.isfinite(inp[0]).all()), bool(torch.isfinite(out)))
        )

    model.crf.register_forward_hook(hook)

    def alter(step, x, y):
        state["step"] = step
        if step == 180:  # unsplit documents: 4 sequences of 1000 tokens
            x, y = _tag_sample(torch.Generator().manual_seed(180), 4, 1000)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _tag_batches(gen),
        200,
        alter=alter,
        loss_fn=lambda out, y: model.crf(out, y),
        classifier=False,
    )
    ctx.check(
        "finite until 180, not at 180",
        all(_finite(v) for v in ctx.losses[:180]) and not _finite(ctx.losses[180]),
    )
    ctx.check(
        "the CRF turned finite emissions into a non-finite loss at 180",
        crf_out[180] == (True, False),
    )
    ctx.check(
        "the loss had fallen before (trained)",
        _mean(ctx.losses[170:180]) < 0.6 * _mean(ctx.losses[:10]),
    )


@scenario(
    "h46_tree_lstm_sentiment",
    "sgd_nesterov",
    "gradient_spike",
    where=("cell.iou",),
    diverges=None,
    heldout=True,
    onset=220,
    note="gradient-noise schedule slip at step 220: sigma 3.0 instead of 3e-3 on cell.iou",
)
def h46_tree_lstm_gradient_noise_slip(ctx: Context) -> None:
    """Gradient noise (Neelakantan et al.) is added to the composition gates' weight
    ``cell.iou.weight``, its scale read from a per-step table. The entry for step 220 was
    typed in the wrong unit: sigma 3.0 instead of 3e-3. That one step the tensor's gradient is
    some hundred times its usual size; the global clip at norm 1.0 (kept from the paper's
    recipe) bounds the update, and the run carries on as before: no lasting damage."""
    gen = seeded(4608)
    model = TreeLSTM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    noise_gen = torch.Generator().manual_seed(46)
    iou_norms: list[float] = []

    def add_noise(step):
        w = model.cell.iou.weight
        sigma = 3.0 if step == 220 else 3e-3 / (1 + step) ** 0.55
        w.grad.add_(sigma * torch.randn(w.shape, generator=noise_gen))
        iou_norms.append(float(w.grad.norm()))

    def loss_of(step, x, y):
        return F.cross_entropy(model(x), y)

    _loop(ctx, model, opt, _tree_batches(gen), 400, loss_of, clip=1.0, after_backward=add_noise)
    before = _mean(ctx.losses[200:220])
    ctx.check(
        "cell.iou's gradient spiked 50x at 220", iou_norms[220] > 50 * max(iou_norms[200:220])
    )
    ctx.check(
        "the whole gradient spiked at 220", ctx.grad_norms[220] > 10 * max(ctx.grad_norms[200:220])
    )
    ctx.check(
        "the loss was back to its level within 40 steps", _mean(ctx.losses[255:265]) < 1.1 * before
    )
    ctx.check("and kept improving", _mean(ctx.losses[-20:]) < before)


@scenario(
    "h46_fasttext_ngram_cls",
    "sgd",
    "data_outlier",
    where=(),
    diverges=160,
    heldout=True,
    onset=160,
    note="one shard with its label column shifted by one at step 160",
)
def h46_fasttext_shifted_labels_shard(ctx: Context) -> None:
    """One batch at step 160 comes from a shard whose label column was shifted by one class
    during export. The trained classifier is confidently wrong on all of it: a loss spike.
    The update it causes is undone by the next clean batches and the run recovers."""
    gen = seeded(4609)
    model = FastText()
    opt = torch.optim.SGD(model.parameters(), lr=4.0)

    def alter(step, x, y):
        if step == 160:
            y = (y + 1) % 4
        return x, y

    fit(ctx, model, opt, _doc_batches(gen), 260, alter=alter)
    ctx.check("loss spiked 5x at 160", ctx.losses[160] > 5 * max(ctx.losses[150:160]))
    ctx.check(
        "recovered within 40 steps", _mean(ctx.losses[195:205]) < 1.5 * _mean(ctx.losses[150:160])
    )


@scenario(
    "h46_dynamic_memory_net",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges="auto",
    heldout=True,
    onset=150,
    note="one step's loss multiplied by a stale 65536 AMP scale at 150",
)
def h46_dmn_stale_loss_scale(ctx: Context) -> None:
    """The run was resumed from a mixed-precision checkpoint into a float32 loop; a left-over
    line still multiplies the loss by the restored loss scale, 65536, but only on the first
    step after the resume (step 150), when it was read. Adam normalises that step's update, but
    its first moment carries the 65536x gradient for a few more steps (the loss jumps), and its
    second moment takes in (1 - beta2) * (65536 g)^2: for hundreds of steps after, every update
    is divided by a sqrt(v) some 2000x too large wherever that step's gradient was not near
    zero. The updates shrink several-fold for hundreds of steps and training stalls."""
    gen = seeded(4610)
    model = DMN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    params = list(model.parameters())
    prev = {"w": None}
    updates: list[float] = []

    def measure(step):
        w = torch.cat([p.detach().flatten() for p in params])
        if prev["w"] is not None:
            updates.append(float((w - prev["w"]).norm()))
        prev["w"] = w.clone()

    fit(
        ctx,
        model,
        opt,
        _story_batches(gen),
        400,
        before=measure,
        extra_loss=lambda step, loss: loss * 65536.0 if step == 150 else loss,
    )
    # updates[i] is the update made at step i
    ctx.check(
        "the gradient at 150 was 1000x its neighbours",
        ctx.grad_norms[150] > 1000 * max(ctx.grad_norms[140:150]),
    )
    ctx.check(
        "updates 50-150 steps later are under a third of before",
        _mean(updates[200:300]) < 0.33 * _mean(updates[100:150]),
    )
    ctx.check(
        "the loss stalled above its pre-fault trend",
        _mean(ctx.losses[-20:]) > 0.8 * _mean(ctx.losses[140:150]),
    )


@scenario(
    "h46_qanet_reader",
    "rmsprop",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=0,
    note="warm-up to a peak of 1e-1 (typo for 1e-3) over 150 steps: breaks at ~1e-2",
)
def h46_qanet_warmup_peak_typo(ctx: Context) -> None:
    """QANet's recipe warms the rate up to its peak (1e-3) over the first 150 steps. The peak
    was typed 1e-1. The first dozen steps, at rates under 1e-2, are stable; as the rate passes
    what the loss surface's curvature allows (about 1e-2, step 13) RMSprop's steps overshoot
    and the loss jumps 20x by step 18. The reader half recovers and even learns for a while
    (the loss bounces around), but the rate keeps climbing: from about 4e-2 (step 63) the loss
    blows up for good, to 1e5, and stays orders of magnitude above its start."""
    gen = seeded(4611)
    model = QANet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5)

    def warmup(step):
        opt.param_groups[0]["lr"] = 1e-1 * min(1.0, (step + 1) / 150)

    fit(
        ctx,
        model,
        opt,
        _span_batches(gen),
        220,
        before=warmup,
        loss_fn=_span_loss,
        classifier=False,
    )
    start = _mean(ctx.losses[:5])
    ctx.check("stable for the first 12 steps", max(ctx.losses[:12]) < 1.1 * start)
    ctx.check("a 10x jump by step 20, as the rate passed 1e-2", max(ctx.losses[12:20]) > 10 * start)
    tail = [v if _finite(v) else float("inf") for v in ctx.losses[-20:]]
    ctx.check("the run ended 10x above its start", _mean(tail) > 10 * start)


@scenario(
    "h46_elman_rnnlm",
    "sgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    onset=0,
    note="IRNN LM; hand-written W_hh decay with the wrong sign, no gradient clipping",
)
def h46_elman_irnn_decay_wrong_sign(ctx: Context) -> None:
    """A Mikolov-style RNN LM with an identity-initialised ReLU recurrence (IRNN), trained with
    plain SGD and no gradient clipping. A hand-written decay of the recurrent matrix
    (``W_hh *= 1 - lr * wd``) was given ``wd = -0.2``: the sign makes it a growth of 0.2% a
    step. The recurrent matrix's spectral radius rises past 1; through 32 time steps the ReLU
    recurrence amplifies it, the recurrent weight's gradient grows over its last steps to
    thousands of times its size, and the run breaks in inf/NaN."""
    gen = seeded(4612)
    model = ElmanLM()
    with torch.no_grad():
        model.rnn.weight_ih_l0.normal_(0.0, 0.03)
    lr, wd = 0.01, -0.2  # the bug: the decay's sign
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rnn_norms: list[float] = []
    model.rnn.weight_hh_l0.register_hook(lambda g: rnn_norms.append(float(g.norm())))

    def decay(step):
        with torch.no_grad():
            model.rnn.weight_hh_l0.mul_(1 - lr * wd)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 32, 32),
        240,
        loss_fn=lm_loss,
        classifier=False,
        before=decay,
    )
    bad = next((i for i, v in enumerate(ctx.losses) if not _finite(v)), len(ctx.losses))
    ctx.check("the run broke (non-finite loss)", bad < len(ctx.losses))
    typical = sorted(rnn_norms[:100])[50]
    ctx.check(
        "W_hh's gradient grew 30x over the steps before the break",
        max(v for v in rnn_norms[bad - 6 : bad] if _finite(v)) > 30 * typical,
    )
    ctx.check(
        "the loss was still finite and trained 20 steps before",
        _mean(ctx.losses[bad - 30 : bad - 20]) < 0.85 * _mean(ctx.losses[:10]),
    )


# == healthy controls =============================================================================


@scenario("h46_fasttext_ngram_cls", "asgd", "healthy", heldout=True, note="fp16 autocast")
def h46_healthy_fasttext_amp_asgd(ctx: Context) -> None:
    gen = seeded(4613)
    model = FastText()
    opt = torch.optim.ASGD(model.parameters(), lr=4.0)
    fit(ctx, model, opt, _doc_batches(gen), 220, amp=True)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))


@scenario("h46_bilstm_crf_tagger", "adadelta", "healthy", heldout=True)
def h46_healthy_bilstm_crf_adadelta(ctx: Context) -> None:
    gen = seeded(4614)
    model = BiLSTMCRF()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(
        ctx,
        model,
        opt,
        _tag_batches(gen),
        220,
        loss_fn=lambda out, y: model.crf(out, y),
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))


@scenario("h46_hf_xlstm_lm", "sg_lion", "healthy", heldout=True)
def h46_healthy_xlstm_lion(ctx: Context) -> None:
    gen = seeded(4615)
    model = _xlstm()
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        200,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:10]))


@scenario("h46_dynamic_memory_net", "sg_stablespam", "healthy", heldout=True)
def h46_healthy_dmn_stablespam(ctx: Context) -> None:
    gen = seeded(4616)
    model = DMN()
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, _story_batches(gen), 300)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))
