"""A held-out set (``h25_``): 12 induced instabilities and 4 healthy controls.

Families: Hugging Face MegatronBERT (classifier), Data2VecVision (image classifier on digits),
Wav2Vec2-Conformer (audio classifier on generated tones), UMT5 (encoder-decoder on a generated
reversal task) and LFM2 (causal LM) built from configs; a Deep Interest Network recommender on
generated clicks, TD3 actor-critic on a generated continuous task, Deep SVDD anomaly detector on
generated sensor vectors, an end-to-end memory network (MemN2N) on generated stories, an ST-GCN
on generated sensor graphs, a Linformer encoder and a ResMLP image classifier (digits).
Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax and
steadygrad's AdaBelief and Lion.

Written without reading ``steadygrad/diagnose/`` (beyond the rules' docstrings),
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while it was
written: each scenario was adjusted, with a stand-in context that attaches nothing, only until
its own checks held (healthy ones: until they trained normally).
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
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs --------------------------------------------------------------


def _megatron_bert(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import MegatronBertConfig, MegatronBertForSequenceClassification

    config = MegatronBertConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return MegatronBertForSequenceClassification(config)


def _data2vec_vision():
    from transformers import Data2VecVisionConfig, Data2VecVisionForImageClassification

    config = Data2VecVisionConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        use_mean_pooling=True,
        initializer_range=0.1,
        num_labels=10,
    )
    return Data2VecVisionForImageClassification(config)


def _wav2vec2_conformer(labels: int = 4):
    from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerForSequenceClassification

    config = Wav2Vec2ConformerConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        conv_depthwise_kernel_size=3,
        position_embeddings_type="rotary",
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        classifier_proj_size=16,
        num_labels=labels,
    )
    return Wav2Vec2ConformerForSequenceClassification(config)


def _umt5(vocab: int = 64):
    from transformers import UMT5Config, UMT5ForConditionalGeneration

    config = UMT5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        pad_token_id=0,
        decoder_start_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    return UMT5ForConditionalGeneration(config)


def _lfm2(vocab: int = 128):
    from transformers import Lfm2Config, Lfm2ForCausalLM

    config = Lfm2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        layer_types=["conv", "full_attention"],
        block_auto_adjust_ff_dim=False,
        tie_word_embeddings=False,
        use_cache=False,
    )
    return Lfm2ForCausalLM(config)


def _reversal_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 64):
    """Source: random tokens; target: the source reversed (a task an encoder-decoder learns)."""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        yield x, x.flip(1)


def _tone_batches(gen: torch.Generator, batch: int = 16, samples: int = 400, labels: int = 4):
    """Noisy sine tones; the label is which of ``labels`` frequency bands the tone is in."""
    t = torch.arange(samples, dtype=torch.float32) / 4000.0
    while True:
        y = torch.randint(0, labels, (batch,), generator=gen)
        freq = 200.0 + 300.0 * y.float() + 60.0 * torch.rand(batch, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.3 + 0.7 * torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(6.2832 * freq[:, None] * t + phase)
        yield x + 0.05 * torch.randn(batch, samples, generator=gen), y


# -- MegatronBERT: attention-logit growth ---------------------------------------------------------


@scenario(
    "hf_megatron_bert",
    "adamw",
    "attention_logit_growth",
    where=("bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"),
    diverges="auto",
    onset=40,
    heldout=True,
)
def h25_attn_growth_megatron_adamw(ctx: Context) -> None:
    """A hand-written decoupled weight decay for the attention projections (a separate group)
    has its sign flipped from step 40, when the "decay" is switched on: every step it scales the
    query and key weights up by 1.5%, so the attention logits grow as their product, the
    softmax saturates onto single tokens and the classifier stops learning, then gets worse."""
    gen = seeded(2501)
    model = _megatron_bert()
    qk = [
        p
        for n, p in model.named_parameters()
        if ".attention.self.query." in n or ".attention.self.key." in n
    ]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": qk, "weight_decay": 0.0}], lr=1e-3
    )
    x_probe, _ = next(bert_batches(torch.Generator().manual_seed(7)))

    def max_logit() -> float:
        """Largest pre-softmax attention score of layer 0 on a fixed batch, computed by hand
        from its (pre-norm) query and key projections."""
        att = model.bert.encoder.layer[0].attention
        with torch.no_grad():
            h = att.ln(model.bert.embeddings(x_probe))
            q, k = (
                z.unflatten(-1, (2, -1)).transpose(1, 2)
                for z in (att.self.query(h), att.self.key(h))
            )
            return float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(q.shape[-1]))

    logits: dict[int, float] = {}

    def bug(step: int) -> None:
        if step in (39, 299):
            logits[step] = max_logit()
        if step >= 40:
            with torch.no_grad():
                for p in qk:
                    p.mul_(1.015)  # meant: p.mul_(1 - lr * wd)

    fit(ctx, model, opt, bert_batches(gen), 300, before=bug, forward=lambda m, x: m(x).logits)
    ctx.check("attention logits grew 20x", logits[299] > 20 * logits[39])


# -- Data2VecVision: layers frozen by an integer layer-wise LR decay -------------------------------


@scenario(
    "hf_data2vec_vision",
    "rmsprop",
    "update_ratio_out_of_range",
    where=(
        "data2vec_vision.embeddings",
        "data2vec_vision.encoder.layer.0",
        "data2vec_vision.encoder.layer.1",
    ),
    diverges=None,
    heldout=True,
)
def h25_frozen_llrd_data2vec_rmsprop(ctx: Context) -> None:
    """Layer-wise LR decay written as ``int(decay ** depth)``: the factor rounds to 0 for the
    embeddings and both encoder layers (only the head, depth 0, keeps 1), so the whole backbone
    has a learning rate of exactly zero and only the classifier head learns."""
    gen = seeded(2503)
    model = _data2vec_vision()
    decay, depth = 0.65, 2
    groups = [{"params": model.data2vec_vision.embeddings.parameters(), "depth": depth + 1}]
    for i, layer in enumerate(model.data2vec_vision.encoder.layer):
        groups.append({"params": layer.parameters(), "depth": depth - i})
    head = [
        p
        for n, p in model.named_parameters()
        if not n.startswith(("data2vec_vision.embeddings", "data2vec_vision.encoder"))
    ]
    groups.append({"params": head, "depth": 0})
    for g in groups:
        g["lr"] = 3e-3 * int(decay ** g.pop("depth"))  # meant: 3e-3 * decay ** depth
    opt = torch.optim.RMSprop(groups, lr=3e-3)
    before = model.data2vec_vision.encoder.layer[1].attention.attention.query.weight.clone()
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        250,
        forward=lambda m, x: m((x.reshape(-1, 1, 8, 8) - 0.3) / 0.4).logits,
    )
    after = model.data2vec_vision.encoder.layer[1].attention.attention.query.weight
    ctx.check("encoder layer 1 unchanged", torch.equal(before, after))
    ctx.check("the head learnt", sum(ctx.losses[-15:]) < 0.9 * sum(ctx.losses[:15]))


# -- Wav2Vec2-Conformer: a silent clip divides by zero in the utterance normaliser ----------------


class UtteranceNorm(nn.Module):
    """Zero mean, unit variance per clip (the usual input normalisation of raw audio)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


class ToneClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = UtteranceNorm()
        self.conformer = _wav2vec2_conformer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conformer(self.norm(x)).logits


@scenario(
    "hf_wav2vec2_conformer",
    "radam",
    "nonfinite",
    where="norm",
    diverges=150,
    onset=150,
    heldout=True,
)
def h25_nan_silent_clip_conformer_radam(ctx: Context) -> None:
    """At step 150 one clip of the batch is digital silence (a dropped recording): its standard
    deviation is 0, the normaliser computes 0/0 and the NaN runs through the whole model."""
    gen = seeded(2504)
    model = ToneClassifier()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[3] = 0.0
        return x, y

    fit(ctx, model, opt, _tone_batches(gen), 180, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 150, not at 150", all(finite[:150]) and not finite[150])
    ctx.check("learnt before the bad clip", sum(ctx.losses[130:150]) < 0.8 * sum(ctx.losses[:20]))


# -- UMT5: the learning rate raised on a resume ---------------------------------------------------


@scenario(
    "hf_umt5",
    "nadam",
    "sharpness_above_limit",
    diverges="auto",
    onset=150,
    heldout=True,
    note="LR x40 at step 150",
)
def h25_lr_resume_umt5_nadam(ctx: Context) -> None:
    """A run resumed at step 150 from a config whose learning rate reads 8e-2 instead of 2e-3:
    the steps are far beyond the stability limit and the loss blows up."""
    gen = seeded(2505)
    model = _umt5()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 8e-2

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(input_ids=x, labels=x.flip(1)).logits

    fit(
        ctx,
        model,
        opt,
        _reversal_batches(gen),
        220,
        before=resume,
        forward=forward,
        loss_fn=lm_loss,
        classifier=False,
    )
    before = sum(ctx.losses[140:150]) / 10
    ctx.check("learnt before 150", before < 0.8 * sum(ctx.losses[:10]) / 10)
    after = [v if math.isfinite(v) else math.inf for v in ctx.losses[150:]]
    ctx.check("loss over 2x after the resume", max(after) > 2 * before)


@scenario("hf_umt5", "adamw", "healthy", heldout=True)
def h25_healthy_umt5_adamw(ctx: Context) -> None:
    gen = seeded(2502)
    model = _umt5()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        _reversal_batches(gen),
        200,
        forward=lambda m, x: m(input_ids=x, labels=x.flip(1)).logits,
        loss_fn=lm_loss,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))


# -- LFM2: a z-loss with the wrong sign -----------------------------------------------------------


def _log_z(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.float(), dim=-1)


@scenario(
    "hf_lfm2",
    "adamax",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=60,
    heldout=True,
)
def h25_logit_divergence_lfm2_adamax(ctx: Context) -> None:
    """The z-loss (meant to keep log Z near 0) is switched on at step 60 with its sign flipped:
    it rewards a large log-partition, so the output logits grow step after step until the
    cross-entropy itself suffers."""
    gen = seeded(2506)
    model = _lfm2()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen: dict[int, float] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(input_ids=x).logits
        seen["z"] = float(_log_z(logits.detach()).abs().mean())
        return logits

    zs: list[float] = []

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        zs.append(seen["z"])
        if step < 60:
            return loss
        logits = holder["logits"]
        return loss - 0.1 * (_log_z(logits) ** 2).mean()  # meant: + 1e-4 * log Z ** 2

    holder: dict[str, torch.Tensor] = {}

    def forward_keep(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        holder["logits"] = forward(m, x)
        return holder["logits"]

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        300,
        forward=forward_keep,
        loss_fn=lm_loss,
        classifier=False,
        extra_loss=zloss,
    )
    ctx.check("|log Z| grew 5x from the onset", zs[-1] > 5 * zs[59])
    ctx.check("loss over its best by 1.0", ctx.losses[-1] > min(ctx.losses) + 1.0)


# -- Deep Interest Network: one batch of click counts poisons Adam's second moment ----------------


class DIN(nn.Module):
    """Deep Interest Network: attention of the candidate item over the behaviour history
    (a local activation unit on [h, t, h - t, h * t]), weighted sum pooling, an MLP on top.
    Items are embedded as id + category, as in the paper."""

    def __init__(self, items: int = 200, dim: int = 16) -> None:
        super().__init__()
        self.item = nn.Embedding(items, dim)
        self.cate = nn.Embedding(8, dim)  # item i is in category i % 8
        self.activation_unit = nn.Sequential(nn.Linear(4 * dim, 32), nn.PReLU(), nn.Linear(32, 1))
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.PReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.item(x) + self.cate(x % 8)
        hist, cand = emb[:, :-1], emb[:, -1:].expand(-1, x.shape[1] - 1, -1)
        w = self.activation_unit(torch.cat([hist, cand, hist - cand, hist * cand], -1))
        interest = (w * hist).sum(1)
        return self.mlp(torch.cat([interest, cand[:, 0]], -1))[:, 0]


def _click_batches(gen: torch.Generator, batch: int = 64, items: int = 200, history: int = 10):
    """Items fall into 8 categories; a user clicks a candidate when its category is the one
    most of their history is in (with 10% label noise)."""
    category = torch.arange(items) % 8
    while True:
        taste = torch.randint(0, 8, (batch,), generator=gen)
        own = taste[:, None] + 8 * torch.randint(0, items // 8, (batch, history), generator=gen)
        other = torch.randint(0, items, (batch, history), generator=gen)
        hist = torch.where(torch.rand(batch, history, generator=gen) < 0.7, own, other)
        cand = torch.randint(0, items, (batch,), generator=gen)
        match = torch.rand(batch, generator=gen) < 0.5
        cand = torch.where(match, taste + 8 * (cand // 8), cand)
        y = (category[cand] == taste).float()
        flip = torch.rand(batch, generator=gen) < 0.1
        yield torch.cat([hist, cand[:, None]], 1), torch.where(flip, 1 - y, y)


@scenario("din_recommender", "adam", "adam_second_moment_poisoned", diverges=None, heldout=True)
def h25_adam_poisoned_din(ctx: Context) -> None:
    """At step 80 one batch's labels come from the wrong log column: click counts (up to a few
    thousand) instead of 0/1. The BCE gradient of that batch is ~1000x the usual; Adam's second
    moment keeps its square for ~1000 steps and the updates that follow are far too small."""
    gen = seeded(2507)
    model = DIN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 80:
            counts = torch.randint(500, 4000, y.shape, generator=torch.Generator().manual_seed(80))
            y = y * counts
        return x, y

    snaps: list[torch.Tensor] = []
    v: list[float] = []
    w = model.mlp[0].weight

    def track(step: int) -> None:
        if step in (40, 75, 160, 195):
            snaps.append(torch.cat([p.detach().flatten() for p in model.mlp.parameters()]).clone())
        if step in (79, 81):
            v.append(float(opt.state[w]["exp_avg_sq"].mean()))

    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        260,
        alter=alter,
        before=track,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    early, late = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("v of the MLP grew 100x at the bad batch", v[1] > 100 * v[0])
    ctx.check("the MLP's updates shrank 3x after it", late < early / 3)
    ctx.check("loss finite throughout", all(math.isfinite(v) for v in ctx.losses))


@scenario("din_recommender", "sg_lion", "healthy", heldout=True)
def h25_healthy_din_lion(ctx: Context) -> None:
    gen = seeded(2508)
    model = DIN()
    opt = sgo.Lion(model.parameters(), lr=1e-3, weight_decay=0.01, fused=False)
    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        250,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.85 * sum(ctx.losses[:20]))


# -- TD3: a discount schedule that runs past 1 ----------------------------------------------------


class TD3(nn.Module):
    """Deterministic actor and twin critics (TD3); target copies are kept outside the module."""

    def __init__(self, state: int = 4, action: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.actor = nn.Sequential(
            nn.Linear(state, hidden), nn.ReLU(), nn.Linear(hidden, action), nn.Tanh()
        )
        self.q1 = nn.Sequential(nn.Linear(state + action, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.q2 = nn.Sequential(nn.Linear(state + action, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@scenario(
    "td3_actor_critic",
    "sg_adabelief",
    "loss_divergence",
    diverges="auto",
    onset=100,
    heldout=True,
    note="discount annealed past 1",
)
def h25_slow_divergence_td3_adabelief(ctx: Context) -> None:
    """A discount "annealed towards 1" written as ``0.9 + 0.001 * step`` with no cap: it passes
    1 at step 100 and keeps rising, so the bootstrapped targets grow geometrically and the
    critic's loss climbs slowly, then fast (the task itself: steer a 2-d action towards a
    linear function of a random 4-d state, over a generated Markov chain of states)."""
    gen = seeded(2509)
    model = TD3()
    target = copy.deepcopy(model).requires_grad_(False)
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3, fused=False)
    goal = torch.randn(4, 2, generator=gen) * 0.5
    actor_params = list(model.actor.parameters())
    ctx.attach(model, opt)
    qs: list[float] = []
    state = torch.randn(128, 4, generator=gen)
    for step in range(600):
        gamma = 0.9 + 0.001 * step  # meant: min(0.99, 0.9 + 0.001 * step)
        noise = 0.3 * torch.randn(128, 2, generator=gen)
        action = (model.actor(state).detach() + noise).clamp(-1, 1)
        reward = -((action - torch.tanh(state @ goal)) ** 2).sum(1, keepdim=True)
        nxt = 0.8 * state + 0.6 * torch.randn(128, 4, generator=gen)
        with torch.no_grad():
            smooth = (0.2 * torch.randn(128, 2, generator=gen)).clamp(-0.5, 0.5)
            a2 = (target.actor(nxt) + smooth).clamp(-1, 1)
            sa2 = torch.cat([nxt, a2], 1)
            y = reward + gamma * torch.min(target.q1(sa2), target.q2(sa2))
        sa = torch.cat([state, action], 1)
        critic = F.mse_loss(model.q1(sa), y) + F.mse_loss(model.q2(sa), y)
        critic.backward()
        if step % 2 == 0:  # delayed policy update, through the critic but into the actor only
            actor_loss = -model.q1(torch.cat([state, model.actor(state)], 1)).mean()
            grads = torch.autograd.grad(actor_loss, actor_params)
            for p, g in zip(actor_params, grads, strict=True):
                p.grad = g if p.grad is None else p.grad + g
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(critic)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, tp in zip(model.parameters(), target.parameters(), strict=True):
                tp.lerp_(p, 0.05)
        qs.append(float(y.abs().mean()))
        state = nxt
    ctx.check("targets grew 10x after gamma passed 1", qs[-1] > 10 * qs[100])
    ctx.check("critic loss 10x its best", ctx.losses[-1] > 10 * min(ctx.losses))


# -- Deep SVDD: one batch of saturated sensor readings ---------------------------------------------


class DeepSVDD(nn.Module):
    """Bias-free encoder (biases let Deep SVDD collapse onto the centre trivially)."""

    def __init__(self, features: int = 16, rep: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Linear(features, 32, bias=False)
        self.enc2 = nn.Linear(32, 16, bias=False)
        self.enc3 = nn.Linear(16, rep, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc3(F.leaky_relu(self.enc2(F.leaky_relu(self.enc1(x), 0.1)), 0.1))


def _sensor_batches(gen: torch.Generator, batch: int = 64, features: int = 16):
    """Normal operation of a machine: 16 sensors driven by 3 latent sinusoidal loads."""
    mix = torch.randn(3, features, generator=gen)
    while True:
        t = 20 * torch.rand(batch, 1, generator=gen)
        loads = torch.cat([torch.sin(t), torch.cos(0.7 * t), torch.sin(1.9 * t + 1)], 1)
        yield loads @ mix + 0.1 * torch.randn(batch, features, generator=gen)


def _svdd(ctx: Context, model: DeepSVDD, opt, gen, steps: int, alter=None) -> None:
    batches = _sensor_batches(gen)
    with torch.no_grad():
        centre = model(torch.cat([next(batches) for _ in range(4)])).mean(0)

    def pairs():
        for x in batches:
            yield x, centre.expand(len(x), -1)

    def svdd_loss(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return ((z - c) ** 2).sum(1).mean()

    fit(ctx, model, opt, pairs(), steps, loss_fn=svdd_loss, classifier=False, alter=alter)


@scenario("deep_svdd", "adagrad", "data_outlier", diverges=130, onset=130, heldout=True)
def h25_outlier_deep_svdd_adagrad(ctx: Context) -> None:
    """At step 130 four rows of the batch come from a sensor board with the wrong gain (x8 on
    every sensor): their distance to the centre is enormous for one step; the run recovers."""
    gen = seeded(2510)
    model = DeepSVDD()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 130:
            x = x.clone()
            x[:4] *= 8.0
        return x, y

    _svdd(ctx, model, opt, gen, 220, alter=alter)
    ctx.check("loss spiked at 130", ctx.losses[130] > 5 * max(ctx.losses[120:130]))
    ctx.check("recovered within 40 steps", max(ctx.losses[180:]) < 3 * max(ctx.losses[120:130]))


# -- MemN2N: an orthogonality penalty with the wrong sign on the hop map --------------------------


class MemN2N(nn.Module):
    """End-to-end memory network (bag-of-words sentences, 3 hops, a hop map ``H``)."""

    def __init__(self, vocab: int = 40, dim: int = 24, hops: int = 3) -> None:
        super().__init__()
        self.embed_a = nn.Embedding(vocab, dim)
        self.embed_b = nn.Embedding(vocab, dim)
        self.embed_c = nn.Embedding(vocab, dim)
        self.H = nn.Linear(dim, dim, bias=False)
        self.W = nn.Linear(dim, vocab, bias=False)
        self.hops = hops
        for emb in (self.embed_a, self.embed_b, self.embed_c):
            nn.init.normal_(emb.weight, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        story, question = x[:, :-1], x[:, -1:]
        m, c = self.embed_a(story).sum(2), self.embed_c(story).sum(2)  # (B, S, D)
        u = self.embed_b(question).sum(2)[:, 0]
        for _ in range(self.hops):
            p = torch.softmax((m @ u[:, :, None])[:, :, 0], -1)
            u = self.H(u) + (p[:, :, None] * c).sum(1)
        return self.W(u)


def _story_batches(gen: torch.Generator, batch: int = 32, sentences: int = 6):
    """Stories of "<person> went to <place>" (persons 1..8, places 20..27) and a question
    "where is <person>?" (token 30 + person): the answer is that person's last place."""
    while True:
        who = torch.randint(1, 9, (batch, sentences), generator=gen)
        where = torch.randint(20, 28, (batch, sentences), generator=gen)
        story = torch.stack([who, where, torch.full_like(who, 35)], -1)  # 35: "went"
        pick = torch.randint(0, sentences, (batch,), generator=gen)
        person = who[torch.arange(batch), pick]
        last = torch.where(who == person[:, None], torch.arange(sentences), -1).argmax(1)
        answer = where[torch.arange(batch), last]
        q = torch.stack([30 + person, torch.full_like(person, 39), torch.zeros_like(person)], -1)
        yield torch.cat([story, q[:, None]], 1), answer


@scenario(
    "memn2n",
    "sgd",
    "exploding_gradients",
    where=("H", "embed_b"),
    diverges="auto",
    onset=80,
    heldout=True,
)
def h25_exploding_hop_map_memn2n_sgd(ctx: Context) -> None:
    """A weight penalty on the hop map (meant to keep H contractive, ``+ lam * ||H||^2``) is
    switched on at step 80 with its sign flipped: every step it scales H up by ~1%, and as H
    grows the gradient reaching the question embedding (multiplied by H once per hop) grows
    with it, slowly and then fast, until the run breaks."""
    gen = seeded(2511)
    model = MemN2N()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 80:
            return loss
        return loss - 0.1 * (model.H.weight**2).sum()  # meant: + lam * ||H||^2

    norms: list[float] = []
    model.embed_b.weight.register_hook(lambda g: norms.append(float(g.norm())))
    fit(ctx, model, opt, _story_batches(gen), 400, extra_loss=penalty)
    finite = [v for v in norms if math.isfinite(v) and v > 0]
    ctx.check("embed_b's gradient grew 100x", max(finite) > 100 * sum(finite[50:79]) / 29)
    ctx.check("learnt before the bug", sum(ctx.losses[60:80]) < 0.9 * sum(ctx.losses[:20]))


# -- ST-GCN: an activity penalty that kills a graph layer -----------------------------------------


def _sensor_graph(nodes: int = 12) -> torch.Tensor:
    """A ring of sensors with a few chords, normalised D^-1/2 (A + I) D^-1/2."""
    a = torch.eye(nodes)
    for i in range(nodes):
        a[i, (i + 1) % nodes] = a[(i + 1) % nodes, i] = 1.0
    for i, j in ((0, 6), (3, 9), (2, 7)):
        a[i, j] = a[j, i] = 1.0
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


class GraphConv(nn.Module):
    def __init__(self, adj: torch.Tensor, cin: int, cout: int) -> None:
        super().__init__()
        self.register_buffer("adj", adj)
        self.lin = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, N, C)
        return self.lin(torch.einsum("nm,btmc->btnc", self.adj, x))


class STGCN(nn.Module):
    """Spatial graph conv then temporal conv, twice (ReLUs functional); the head reads every
    node's features averaged over time."""

    def __init__(self, classes: int = 3, width: int = 16) -> None:
        super().__init__()
        adj = _sensor_graph()
        self.gcn1 = GraphConv(adj, 2, width)
        self.tcn1 = nn.Conv2d(width, width, (3, 1), padding=(1, 0))
        self.gcn2 = GraphConv(adj, width, width)
        self.tcn2 = nn.Conv2d(width, width, (3, 1), padding=(1, 0))
        self.head = nn.Linear(width * 12, classes)

    def block2(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.gcn1(x))
        h = F.relu(self.tcn1(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return F.relu(self.gcn2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(x)
        h = F.relu(self.tcn2(h.permute(0, 3, 1, 2)))
        return self.head(h.mean(2).flatten(1))


def _diffusion_batches(gen: torch.Generator, batch: int = 32, steps: int = 10, nodes: int = 12):
    """A pollutant released at one node spreads over the sensor graph; readings are the level
    and its rate of change. The label is the region (3 groups of 4 nodes) of the source."""
    adj = _sensor_graph(nodes)
    while True:
        src = torch.randint(0, nodes, (batch,), generator=gen)
        level = F.one_hot(src, nodes).float() * (1 + torch.rand(batch, 1, generator=gen))
        frames = []
        for _ in range(steps):
            new = level @ adj
            frames.append(torch.stack([new, new - level], -1))
            level = new
        x = torch.stack(frames, 1) + 0.05 * torch.randn(batch, steps, nodes, 2, generator=gen)
        yield x, src // 4


@scenario(
    "st_gcn",
    "adam",
    "loss_of_plasticity",
    where="gcn2",
    diverges=None,
    onset=150,
    heldout=True,
)
def h25_dead_units_activity_penalty_stgcn(ctx: Context) -> None:
    """From step 150 an L1 activity penalty (copied from a sparse-autoencoder recipe, weight 5
    instead of 5e-3) is added on gcn2's ReLU output: it drives the layer's pre-activations
    below zero, unit after unit, and a unit that is never positive gets no gradient back."""
    gen = seeded(2512)
    model = STGCN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    held: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = m.block2(x)
        held["h"] = h
        h = F.relu(m.tcn2(h.permute(0, 3, 1, 2)))
        return m.head(h.mean(2).flatten(1))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + 5.0 * held["h"].abs().mean() if step >= 150 else loss

    fit(ctx, model, opt, _diffusion_batches(gen), 380, forward=forward, extra_loss=penalty)
    x, _ = next(_diffusion_batches(gen, 256))
    with torch.no_grad():
        h = model.block2(x)
    ctx.check("learnt before 150", sum(ctx.losses[130:150]) < 0.7 * sum(ctx.losses[:20]))
    ctx.check("half of gcn2's units dead", dead_fraction(h.flatten(0, 2)) >= 0.5)


@scenario("st_gcn", "adamw", "healthy", heldout=True)
def h25_healthy_stgcn_adamw(ctx: Context) -> None:
    gen = seeded(2513)
    model = STGCN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(ctx, model, opt, _diffusion_batches(gen), 220)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.6 * sum(ctx.losses[:20]))


# -- Linformer: a cosine head whose learnt temperature has no cap ---------------------------------


class LinformerLayer(nn.Module):
    """Self-attention with keys and values projected along the sequence (n -> k), then an MLP."""

    def __init__(self, dim: int, heads: int, length: int, k: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj_k = nn.Linear(length, k, bias=False)
        self.proj_v = nn.Linear(length, k, bias=False)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)
        k = self.proj_k(k.transpose(1, 2)).transpose(1, 2)
        v = self.proj_v(v.transpose(1, 2)).transpose(1, 2)
        q, k, v = (z.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.out(y)
        return x + self.ff(self.ln2(x))


class CosineHead(nn.Module):
    """Cosine-similarity classifier with a learnt temperature, ``exp(log_scale)``."""

    def __init__(self, dim: int, classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos  # no clamp on the scale (CLIP clamps it at 100)


class Linformer(nn.Module):
    def __init__(
        self, vocab: int = 128, dim: int = 32, length: int = 16, classes: int = 2, scale=10.0
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.layers = nn.ModuleList(LinformerLayer(dim, 2, length, 4) for _ in range(2))
        self.ln = nn.LayerNorm(dim)
        self.head = CosineHead(dim, classes, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln(h).mean(1))


@scenario("linformer", "adamw", "softmax_collapse", where="head", diverges=None, heldout=True)
def h25_softmax_collapse_linformer_adamw(ctx: Context) -> None:
    """Fine-tuning on a fixed set of 192 sequences with a cosine head whose scale starts at 64
    (copied from a face-recognition recipe with thousands of classes; here there are 2): once
    the set is fit, the margins of the training rows are far beyond float32's resolution and
    their softmax rounds to exactly one-hot (zero gradient)."""
    gen = seeded(2514)
    x, y = next(bert_batches(gen, 192))
    model = Linformer(scale=64.0)
    scale = [model.head.log_scale]
    rest = [p for p in model.parameters() if p is not model.head.log_scale]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": scale, "weight_decay": 0.0}], lr=3e-3, weight_decay=0.01
    )

    def full_batch():
        while True:
            yield x, y

    fit(ctx, model, opt, full_batch(), 300)
    with torch.no_grad():
        ctx.check("a third of the rows collapsed", collapsed_fraction(model(x), y) > 0.33)


# -- ResMLP: fp16 autocast with a GradScaler that starts too high ---------------------------------


class Affine(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + self.beta


class ResMLPBlock(nn.Module):
    def __init__(self, dim: int, patches: int) -> None:
        super().__init__()
        self.aff1 = Affine(dim)
        self.cross_patch = nn.Linear(patches, patches)
        self.aff2 = Affine(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.scale1 = nn.Parameter(torch.full((dim,), 0.5))
        self.scale2 = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale1 * self.cross_patch(self.aff1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.scale2 * self.mlp(self.aff2(x))


class ResMLP(nn.Module):
    """ResMLP on 8x8 digits: 2x2 patches (16 of 4 pixels), affine norms, layer scale."""

    def __init__(self, dim: int = 32, depth: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.blocks = nn.Sequential(*(ResMLPBlock(dim, 16) for _ in range(depth)))
        self.aff = Affine(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        return self.head(self.aff(self.blocks(self.patch(p))).mean(1))


@scenario("resmlp", "sgd_mom", "amp_overflow", diverges=None, heldout=True)
def h25_amp_overflow_resmlp_fp16(ctx: Context) -> None:
    """fp16 autocast with a GradScaler started at 2**30 that tries to grow every 20 steps: the
    scaled gradients overflow fp16 now and then, the scaler skips those steps and halves its
    scale; training itself is fine."""
    gen = seeded(2515)
    model = ResMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=20)
    fit(ctx, model, opt, digit_batches(gen, 48), 200, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 3)
    ctx.check("loss finite and fell", ctx.losses[-1] < 0.7 * ctx.losses[0])


@scenario("resmlp", "sgd_nesterov", "healthy", heldout=True)
def h25_healthy_resmlp_nesterov(ctx: Context) -> None:
    gen = seeded(2516)
    model = ResMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, digit_batches(gen, 48), 200)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))
