"""Held-out scenarios, sixth set (``h6_``): families none of the earlier sets has.

Families: a GRU seq2seq with additive (Bahdanau) attention on a generated reverse task, a
PixelCNN-style masked-convolution model on binarised digits, a NeRF-style Fourier-feature MLP
regressing a generated 2-D image, a DeepSets model on generated sets, a Wide&Deep click model on
``nn.EmbeddingBag``, Hugging Face BLOOM, Falcon, GPT-Neo and GPTBigCode causal LMs from configs,
a hypernetwork that generates a small net's weights, knowledge distillation (a student fitted to a
teacher's outputs with KL), and REINFORCE on a generated contextual bandit.
Optimizers: SGD, SGD with momentum and Nesterov, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam,
Adamax and steadygrad.optim's AdaBelief.

Written without reading ``steadygrad/diagnose/detectors/``, ``diagnosis.py`` or
``steadygrad/monitor/`` (only the cause docstrings of ``rules.py``), and never run on
steadygrad while it was written: each scenario was adjusted with a stand-in context that
attaches nothing, only until its own ``ctx.check`` held (the fault really happened) or, for a
healthy control, until it trained normally.
"""

from __future__ import annotations

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
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- families ------------------------------------------------------------------------------------


class AdditiveAttention(nn.Module):
    """Bahdanau scoring: v . tanh(W q + U k)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        e = self.score(torch.tanh(self.query(q)[:, :, None] + self.key(keys)[:, None]))
        return torch.softmax(e.squeeze(-1), dim=-1) @ keys


class Seq2Seq(nn.Module):
    """GRU encoder, GRU decoder (teacher forcing), additive attention over the encoder states."""

    def __init__(self, vocab: int = 16, dim: int = 48) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, dim)
        self.tgt_embed = nn.Embedding(vocab, dim)
        self.encoder = nn.GRU(dim, dim, batch_first=True)
        self.decoder = nn.GRU(dim, dim, batch_first=True)
        self.attention = AdditiveAttention(dim)
        self.head = nn.Linear(2 * dim, vocab)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        src, tgt_in = batch
        enc, last = self.encoder(self.src_embed(src))
        dec, _ = self.decoder(self.tgt_embed(tgt_in), last)
        return self.head(torch.cat([dec, self.attention(dec, enc)], dim=-1))


def reverse_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 16):
    """Endless ((source, decoder input), target) batches: the target is the source reversed."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        tgt_in = torch.cat([torch.ones(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)  # 1 = BOS
        yield (src, tgt_in), tgt


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only pixels above and to the left (type 'A' also hides the
    centre), so the model is autoregressive over the raster order."""

    def __init__(self, kind: str, cin: int, cout: int, k: int) -> None:
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones_like(self.weight)
        mask[:, :, k // 2, k // 2 + (kind == "B") :] = 0
        mask[:, :, k // 2 + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    def __init__(self, width: int = 24, layers: int = 4) -> None:
        super().__init__()
        self.conv_in = MaskedConv2d("A", 1, width, 5)
        self.body = nn.ModuleList(MaskedConv2d("B", width, width, 3) for _ in range(layers))
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv_in(x.reshape(-1, 1, 8, 8)))
        for conv in self.body:
            h = F.relu(conv(h))
        return self.out(h).flatten(1)


def binary_digit_batches(gen: torch.Generator, batch: int = 64):
    """Binarised digits as both input and target (pixel-wise Bernoulli likelihood)."""
    for x, _ in digit_batches(gen, batch):
        b = (x > 0.4).float()
        yield b, b


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


class FourierMLP(nn.Module):
    """Fixed random Fourier features of (x, y), then an MLP to RGB (NeRF's positional trick)."""

    def __init__(self, features: int = 64, width: int = 96, scale: float = 6.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(2, features) * scale)
        self.net = nn.Sequential(
            nn.Linear(2 * features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 3),
        )

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        z = 2 * math.pi * xy @ self.freqs
        return self.net(torch.cat([torch.sin(z), torch.cos(z)], dim=-1))


def image_batches(gen: torch.Generator, batch: int = 256, size: int = 32):
    """Random pixels of a generated 32x32 RGB image (rings and a checker band)."""
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    r = torch.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    img = torch.stack(
        [
            0.5 + 0.5 * torch.sin(18 * r),
            0.5 + 0.5 * torch.cos(7 * xx) * torch.sin(5 * yy),
            ((xx * 6).floor() + (yy * 6).floor()) % 2,
        ],
        -1,
    )
    coords = torch.stack([xx, yy], -1).reshape(-1, 2)
    colours = img.reshape(-1, 3)
    while True:
        idx = torch.randint(0, len(coords), (batch,), generator=gen)
        yield coords[idx], colours[idx]


class MaskedMeanPool(nn.Module):
    """Mean of the set's element features over its valid elements."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


class DeepSets(nn.Module):
    def __init__(self, dim: int = 4, width: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width))
        self.pool = MaskedMeanPool()
        self.rho = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, mask = batch
        return self.rho(self.pool(F.relu(self.phi(x)), mask))


def set_batches(gen: torch.Generator, batch: int = 32, most: int = 12, classes: int = 4):
    """Sets of 3..12 points around one of 4 centres each; label: the most frequent centre."""
    centres = torch.randn(classes, 4, generator=gen) * 2
    while True:
        sizes = torch.randint(3, most + 1, (batch,), generator=gen)
        mask = torch.arange(most)[None] < sizes[:, None]
        which = torch.randint(0, classes, (batch, most), generator=gen)
        x = centres[which] + 0.8 * torch.randn(batch, most, 4, generator=gen)
        counts = F.one_hot(which, classes) * mask[..., None]
        counts = counts.sum(1).float() + 0.01 * torch.rand(batch, classes, generator=gen)
        yield (x, mask), counts.argmax(1)


class WideDeep(nn.Module):
    """Wide: a sum of learned weights of crossed ids (EmbeddingBag, mode sum). Deep: mean of the
    user's history embeddings, the item embedding and dense features through a ReLU MLP."""

    def __init__(self, items: int = 200, crosses: int = 500, dim: int = 16, dense: int = 6):
        super().__init__()
        self.wide = nn.EmbeddingBag(crosses, 1, mode="sum")
        self.history = nn.EmbeddingBag(items, dim, mode="mean")
        self.item = nn.Embedding(items, dim)
        self.deep = nn.Sequential(
            nn.Linear(2 * dim + dense, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )
        nn.init.zeros_(self.wide.weight)  # the wide part starts as "no effect"

    def forward(self, batch) -> torch.Tensor:
        hist, item, cross, dense = batch
        deep_in = torch.cat([self.history(hist), self.item(item), dense], -1)
        return (self.wide(cross) + self.deep(deep_in)).squeeze(-1)


def click_batches(gen: torch.Generator, batch: int = 128, items: int = 200, crosses: int = 500):
    """Generated clicks: a user's taste (from the history) agreeing with the item, a few crossed
    ids with their own effect, dense features with a linear effect; labels drawn from it."""
    taste = torch.randn(items, 4, generator=gen)
    cross_w = torch.randn(crosses, generator=gen)
    dense_w = torch.randn(6, generator=gen)
    while True:
        hist = torch.randint(0, items, (batch, 5), generator=gen)
        item = torch.randint(0, items, (batch,), generator=gen)
        cross = torch.randint(0, crosses, (batch, 3), generator=gen)
        dense = torch.randn(batch, 6, generator=gen)
        logit = (taste[hist].mean(1) * taste[item]).sum(-1) * 2 + cross_w[cross].sum(1) * 0.5
        logit = logit + dense @ dense_w * 0.5
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield (hist, item, cross, dense), y


def hf_lm(kind: str, vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    """A Hugging Face causal LM built from its config (no download), dropout off."""
    import transformers as hf

    if kind == "bloom":
        config = hf.BloomConfig(
            vocab_size=vocab, hidden_size=dim, n_layer=layers, n_head=heads, hidden_dropout=0.0
        )
        config.attention_dropout = 0.0
        model_cls = hf.BloomForCausalLM
    elif kind == "falcon":
        config = hf.FalconConfig(
            vocab_size=vocab,
            hidden_size=dim,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        )
        model_cls = hf.FalconForCausalLM
    elif kind == "gpt_neo":
        config = hf.GPTNeoConfig(
            vocab_size=vocab,
            hidden_size=dim,
            num_layers=layers,
            num_heads=heads,
            attention_types=[[["global", "local"], layers // 2]],
            window_size=16,
            max_position_embeddings=64,
            intermediate_size=4 * dim,
            embed_dropout=0.0,
            attention_dropout=0.0,
            resid_dropout=0.0,
        )
        model_cls = hf.GPTNeoForCausalLM
    elif kind == "bigcode":
        config = hf.GPTBigCodeConfig(
            vocab_size=vocab,
            n_positions=64,
            n_embd=dim,
            n_layer=layers,
            n_head=heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model_cls = hf.GPTBigCodeForCausalLM
    else:
        raise ValueError(f"kind must be bloom, falcon, gpt_neo or bigcode, got {kind!r}")
    config.bos_token_id = config.eos_token_id = 0
    config.pad_token_id = None
    return model_cls(config)


def hf_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    return model(input_ids=idx).logits


class HyperNet(nn.Module):
    """Generates the weights of a small target net's hidden layers from a per-layer embedding;
    the target net (stem, generated layers, classifier) classifies 8x8 digits."""

    def __init__(self, width: int = 32, depth: int = 4, z: int = 16) -> None:
        super().__init__()
        self.width, self.depth = width, depth
        self.stem = nn.Linear(64, width)
        self.layer_codes = nn.Embedding(depth, z)
        self.hyper_body = nn.Linear(z, 64)
        self.hyper_head = nn.Linear(64, width * width + width)
        self.classifier = nn.Linear(width, 10)
        with torch.no_grad():  # generated weights start at a fan-in scale
            self.hyper_head.weight.mul_(1.0 / math.sqrt(width))
            self.hyper_head.bias.zero_()

    def generated(self) -> torch.Tensor:
        codes = self.layer_codes(torch.arange(self.depth))
        return self.hyper_head(torch.tanh(self.hyper_body(codes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.stem(x))
        w = self.width
        for params in self.generated():
            h = F.relu(h @ params[: w * w].reshape(w, w) + params[w * w :])
        return self.classifier(h)


class Policy(nn.Module):
    def __init__(self, context: int = 8, arms: int = 6, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(context, width), nn.Tanh())
        self.logits = nn.Linear(width, arms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(x))


def bandit(gen: torch.Generator, context: int = 8, arms: int = 6, batch: int = 64):
    """Endless (contexts, reward table) batches: each arm pays a linear-in-context Bernoulli
    reward; the best arm depends on the context."""
    w = torch.randn(context, arms, generator=gen)
    while True:
        x = torch.randn(batch, context, generator=gen)
        p = torch.sigmoid(2 * x @ w / math.sqrt(context))
        yield x, (torch.rand(batch, arms, generator=gen) < p).float(), p


def reinforce(ctx: Context, policy: Policy, opt, gen: torch.Generator, steps: int, glitch=None):
    """REINFORCE with the batch's mean reward as baseline; returns the mean expected reward per step.
    ``glitch(step, rewards)`` may corrupt a step's logged rewards."""
    ctx.attach(policy, opt)
    stream = bandit(gen)
    expected = []
    for step in range(steps):
        x, table, p = next(stream)
        logits = policy(x)
        arm = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen)[:, 0]
        reward = table.gather(1, arm[:, None])[:, 0]
        expected.append(float((torch.softmax(logits.detach(), -1) * p).sum(-1).mean()))
        if glitch is not None:
            reward = glitch(step, reward)
        logp = torch.log_softmax(logits, -1).gather(1, arm[:, None])[:, 0]
        loss = -((reward - reward.mean()) * logp).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(policy))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return expected


def finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


# -- attention-logit growth ----------------------------------------------------------------------


@scenario(
    "hf_bloom",
    "adamw",
    "attention_logit_growth",
    where=("transformer.h.0.self_attention", "transformer.h.1.self_attention"),
    diverges=None,
    heldout=True,
)
def h6_attn_lr_multiplier_bloom(ctx: Context) -> None:
    """A per-module LR multiplier meant for the embeddings was put on the attention's fused
    query/key/value projections (30x the base LR, no weight decay): queries and keys grow and
    the attention logits with them until the heads attend to one position each."""
    gen = seeded(601)
    model = hf_lm("bloom")
    qkv = [p for n, p in model.named_parameters() if "query_key_value" in n]
    rest = [p for n, p in model.named_parameters() if "query_key_value" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qkv, "lr": 3e-2, "weight_decay": 0.0}], lr=1e-3
    )
    before = _bloom_attention_entropy(model, next(text_batches(gen))[0])
    fit(ctx, model, opt, text_batches(gen), 300, loss_fn=lm_loss, forward=hf_logits)
    after = _bloom_attention_entropy(model, next(text_batches(gen))[0])
    ctx.check(f"attention entropy {before:.2f} -> {after:.2f} nats", after < 0.25 * before)


def _bloom_attention_entropy(model: nn.Module, idx: torch.Tensor) -> float:
    """Mean entropy of the attention rows past the first 8 positions (layers and heads)."""
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        probs = model(input_ids=idx, output_attentions=True).attentions
    model.config._attn_implementation = impl
    ent = [-(p * p.clamp_min(1e-12).log()).sum(-1)[..., 8:].mean() for p in probs]
    return float(torch.stack(ent).mean())


# -- output-logit divergence ---------------------------------------------------------------------


@scenario(
    "hf_gpt_neo",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=120,
    heldout=True,
)
def h6_zloss_sign_gpt_neo(ctx: Context) -> None:
    """From step 120 an auxiliary z-loss is switched on with the wrong sign (it rewards a large
    log-partition instead of penalising it): the output logits' common offset grows step by
    step until the cross-entropy follows it up."""
    gen = seeded(602)
    model = hf_lm("gpt_neo")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    log_z: list[float] = []

    # the z-loss needs the logits: a forward that keeps them for the extra term
    kept: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        kept["logits"] = hf_logits(m, idx)
        return kept["logits"]

    def z_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(kept["logits"].float(), -1)
        log_z.append(float(lse.detach().abs().mean()))
        if step < 120:
            return loss
        return loss - 1e-2 * (lse**2).mean()  # meant: + 1e-4 * lse**2

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        450,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=z_loss,
        classifier=False,
    )
    ctx.check(f"|log Z| {log_z[119]:.1f} -> {max(log_z):.1f}", max(log_z) > 5 * log_z[119])


# -- softmax collapse ----------------------------------------------------------------------------


@scenario("distillation", "adam", "softmax_collapse", where="2", diverges=None, heldout=True)
def h6_distill_sharpened_teacher(ctx: Context) -> None:
    """Distillation with the temperature applied the wrong way round (teacher logits times T
    instead of divided): the "softened" targets are exactly one-hot in float32, and the student,
    fitted to them with KL on a small training set, drives its margins up until its softmax
    gives the target exactly 1.0."""
    gen = seeded(603)
    x, y = digits()
    x, y = x[:300], y[:300]
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    topt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        topt.zero_grad()
        F.cross_entropy(teacher(x[idx]), y[idx]).backward()
        topt.step()
    temperature = 8.0
    with torch.no_grad():
        soft = torch.softmax(teacher(x) * temperature, -1)  # meant: / temperature

    student = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(student.parameters(), lr=5e-2)

    def batches():
        while True:
            idx = torch.randint(0, len(y), (64,), generator=gen)
            yield x[idx], soft[idx]

    def kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.kl_div(torch.log_softmax(logits, -1), target, reduction="batchmean")

    fit(ctx, student, opt, batches(), 900, loss_fn=kl, classifier=False)
    with torch.no_grad():
        logits = student(x)
    ctx.check(
        f"one-hot teacher targets ({float((soft.max(1).values == 1).float().mean()):.2f})",
        float((soft.max(1).values == 1).float().mean()) > 0.8,
    )
    share = collapsed_fraction(logits, y)
    ctx.check(f"student softmax collapsed on {share:.2f} of the set", share > 0.5)


# -- a learning rate above the stability limit -----------------------------------------------------


@scenario("nerf_fourier_mlp", "sgd_mom", "sharpness_above_limit", diverges="auto", heldout=True)
def h6_warmup_overshoot_nerf(ctx: Context) -> None:
    """A linear warm-up to a peak LR copied from a different model: the Fourier-feature MLP is
    stable at the start of the ramp and goes unstable somewhere on the way up."""
    gen = seeded(604)
    model = FourierMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 10.0 * min(1.0, (step + 1) / 300)

    fit(
        ctx,
        model,
        opt,
        image_batches(gen),
        320,
        loss_fn=F.mse_loss,
        before=warmup,
        classifier=False,
    )
    ctx.check(
        f"loss fell ({ctx.losses[0]:.3f} -> {min(ctx.losses[:150]):.3f}) then blew up",
        min(ctx.losses[:150]) < 0.5 * ctx.losses[0]
        and not all(v < 10 * ctx.losses[0] for v in ctx.losses if math.isfinite(v)),
    )


@scenario(
    "pixelcnn", "sgd_nesterov", "sharpness_above_limit", diverges="auto", onset=150, heldout=True
)
def h6_lr_raised_on_resume_pixelcnn(ctx: Context) -> None:
    """At step 150 the run is resumed with a learning rate from another config (10x): the
    masked-convolution stack's steps overshoot and the loss climbs away."""
    gen = seeded(605)
    model = PixelCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, nesterov=True)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 3.0

    fit(
        ctx,
        model,
        opt,
        binary_digit_batches(gen),
        260,
        loss_fn=bce,
        before=resume,
        classifier=False,
    )
    ctx.check(
        f"stable before 150 ({ctx.losses[0]:.3f} -> {ctx.losses[149]:.3f})",
        ctx.losses[149] < 0.8 * ctx.losses[0] and all(finite(ctx.losses[:150])),
    )


# -- exploding gradients -------------------------------------------------------------------------


@scenario(
    "hypernetwork",
    "rmsprop",
    "exploding_gradients",
    where="hyper_head",
    diverges="auto",
    onset=100,
    heldout=True,
)
def h6_hyper_head_growth(ctx: Context) -> None:
    """From step 100 a weight regulariser on the hypernetwork's output layer is added with the
    wrong sign (it rewards large generated weights): hyper_head's gradient grows with its
    weights first, then the generated ReLU layers' gains compound and the gradients of the
    whole net grow until they explode and the loss goes with them."""
    gen = seeded(606)
    model = HyperNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    gen_norm: list[float] = []

    def reg(step: int, loss: torch.Tensor) -> torch.Tensor:
        gen_norm.append(float(model.hyper_head.weight.detach().norm()))
        if step < 100:
            return loss
        return loss - 0.2 * model.hyper_head.weight.pow(2).sum()  # meant: + 1e-4 * ...

    fit(ctx, model, opt, digit_batches(gen), 400, extra_loss=reg)
    g = ctx.grad_norms
    ctx.check(
        f"gradient norm {g[99]:.2f} -> {max(v for v in g if math.isfinite(v)):.2e}",
        max(v for v in g if math.isfinite(v)) > 100 * g[99],
    )
    ctx.check(
        f"generated weights grew {gen_norm[99]:.1f} -> {gen_norm[-1]:.1f}",
        gen_norm[-1] > 5 * gen_norm[99],
    )


# -- dead units ----------------------------------------------------------------------------------


@scenario(
    "wide_deep",
    "adagrad",
    "loss_of_plasticity",
    where=("deep.2", "deep.3"),
    onset=150,
    heldout=True,
)
def h6_sparsity_penalty_kills_deep_tower(ctx: Context) -> None:
    """From step 150 an activation-sparsity penalty on the deep tower's second ReLU layer is
    switched on with a coefficient 1000x too large: it pushes the pre-activations below zero,
    the units die one after another (a dead unit gets no gradient from either term), and the
    wide part carries on, so the loss only stalls."""
    gen = seeded(607)
    model = WideDeep()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    kept: dict[str, torch.Tensor] = {}
    model.deep[3].register_forward_hook(lambda m, i, o: kept.__setitem__("h", o))

    def sparsity(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 150:
            return loss
        return loss + 1.0 * kept["h"].mean()  # meant: 1e-3

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, y)

    stream = click_batches(gen)
    probe = next(stream)[0]
    shares = []
    fit(
        ctx,
        model,
        opt,
        stream,
        400,
        loss_fn=loss,
        extra_loss=sparsity,
        classifier=False,
        before=lambda s: shares.append(_deep_dead(model, probe)) if s in (149, 399) else None,
    )
    shares.append(_deep_dead(model, probe))
    ctx.check(
        f"deep.2's dead units {shares[0]:.2f} -> {shares[-1]:.2f}",
        shares[-1] >= 0.8 and shares[-1] > shares[0] + 0.4,
    )
    ctx.check("no NaN", all(finite(ctx.losses)))


def _deep_dead(model: WideDeep, batch) -> float:
    hist, item, _, dense = batch
    with torch.no_grad():
        h = model.deep[:4](torch.cat([model.history(hist), model.item(item), dense], -1))
    return dead_fraction(h)


# -- a frozen layer ------------------------------------------------------------------------------


@scenario(
    "deepsets", "radam", "update_ratio_out_of_range", where="phi.0", diverges=None, heldout=True
)
def h6_frozen_phi_lambda(ctx: Context) -> None:
    """A per-group LambdaLR meant to hold the element encoder's first layer for 1000 *samples*
    holds it for 1000 steps: that layer never moves in this run."""
    gen = seeded(608)
    model = DeepSets()
    first = list(model.phi[0].parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("phi.0.")]
    opt = torch.optim.RAdam([{"params": first}, {"params": rest}], lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < 1000 else 1.0, lambda s: 1.0]
    )
    before = model.phi[0].weight.detach().clone()
    fit(ctx, model, opt, set_batches(gen), 250)
    ctx.check("LambdaLR held the group at 0", sched.get_last_lr()[0] == 0.0)
    ctx.check("phi.0 unchanged", torch.equal(before, model.phi[0].weight))
    ctx.check(
        f"rest trained ({ctx.losses[0]:.2f} -> {sum(ctx.losses[-20:]) / 20:.2f})",
        sum(ctx.losses[-20:]) / 20 < 0.7 * ctx.losses[0],
    )


# -- a data outlier ------------------------------------------------------------------------------


@scenario("wide_deep", "nadam", "data_outlier", diverges=180, onset=180, heldout=True)
def h6_raw_dense_shard_wide_deep(ctx: Context) -> None:
    """One batch comes from a shard written before the dense features were standardised (raw
    values in the hundreds): one loss spike, then the run gets over it."""
    gen = seeded(609)
    model = WideDeep()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step: int, batch, y):
        if step == 180:
            hist, item, cross, dense = batch
            batch = (hist, item, cross, dense * 150.0 + 400.0)
        return batch, y

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, y)

    fit(ctx, model, opt, click_batches(gen), 300, loss_fn=loss, alter=alter, classifier=False)
    l = ctx.losses
    ctx.check(f"spike at 180 ({max(l[170:180]):.2f} -> {l[180]:.2f})", l[180] > 5 * max(l[170:180]))
    ctx.check(
        f"recovered ({sum(l[-20:]) / 20:.2f})", sum(l[-20:]) / 20 < 1.5 * sum(l[160:180]) / 20
    )


# -- a one-off NaN from one module on one bad sample ----------------------------------------------


@scenario("deepsets", "sgd", "nonfinite", where="pool", diverges=140, onset=140, heldout=True)
def h6_empty_set_mean_pool(ctx: Context) -> None:
    """At step 140 one set in the batch arrives empty (every mask entry false): the masked mean
    pool divides 0 by 0 and its output is NaN for that set, then the loss and the weights."""
    gen = seeded(610)
    model = DeepSets()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step: int, batch, y):
        if step == 140:
            x, mask = batch
            mask = mask.clone()
            mask[7] = False
            batch = (x, mask)
        return batch, y

    fit(ctx, model, opt, set_batches(gen), 180, alter=alter)
    f = finite(ctx.losses)
    ctx.check("finite until 140, not at 140", all(f[:140]) and not f[140])


# -- Adam's second moment poisoned ---------------------------------------------------------------


@scenario(
    "reinforce_bandit",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=200,
    heldout=True,
)
def h6_reward_glitch_reinforce(ctx: Context) -> None:
    """At step 200 a logging glitch reports one episode's reward as 1e6: one gradient thousands
    of times the usual lands in Adam's second moment, and the policy's updates then shrink for
    hundreds of steps (its learning stalls) though the rewards are back to normal."""
    gen = seeded(611)
    policy = Policy()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3, betas=(0.9, 0.999))
    moves: list[float] = []
    last = [torch.cat([p.detach().flatten() for p in policy.parameters()])]

    def glitch(step: int, reward: torch.Tensor) -> torch.Tensor:
        now = torch.cat([p.detach().flatten() for p in policy.parameters()])
        moves.append(float((now - last[0]).norm()))
        last[0] = now
        if step == 200:
            reward = reward.clone()
            reward[3] = 1e6
        return reward

    expected = reinforce(ctx, policy, opt, gen, 450, glitch)
    before = sum(moves[150:200]) / 50
    after = sum(moves[250:300]) / 50
    ctx.check(f"update size {before:.2e} -> {after:.2e}", after < 0.1 * before)
    ctx.check(
        f"the policy was learning ({expected[0]:.3f} -> {expected[199]:.3f})",
        expected[199] > expected[0] + 0.1,
    )


# -- a slow divergence with no mechanism ---------------------------------------------------------


@scenario(
    "gru_seq2seq_attention", "sgd_mom", "loss_divergence", diverges="auto", onset=250, heldout=True
)
def h6_creeping_label_noise_seq2seq(ctx: Context) -> None:
    """From step 250 a new data shard is mixed in at a growing rate, and its targets were
    written by a broken tokenizer (random tokens): nothing in the model or the optimiser goes
    wrong, the loss just climbs as the share of unlearnable targets grows."""
    gen = seeded(612)
    model = Seq2Seq()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    noise = torch.Generator().manual_seed(6120)

    def alter(step: int, x, y: torch.Tensor):
        share = min(1.0, max(0.0, (step - 250) / 450) ** 2)  # the shard's share accelerates
        if share > 0:
            broken = torch.rand(y.shape, generator=noise) < share
            y = torch.where(broken, torch.randint(0, 16, y.shape, generator=noise), y)
        return x, y

    fit(ctx, model, opt, reverse_batches(gen), 700, loss_fn=lm_loss, alter=alter, classifier=False)
    l = ctx.losses
    ctx.check(f"learned first ({l[0]:.2f} -> {min(l[:250]):.2f})", min(l[:250]) < 0.5 * l[0])
    ctx.check(f"then climbed ({min(l[:250]):.2f} -> {l[-1]:.2f})", l[-1] > 5 * min(l[:250]))
    ctx.check("no NaN", all(finite(l)))


# -- healthy controls ----------------------------------------------------------------------------


@scenario("hf_falcon", "adamw", "healthy", heldout=True)
def h6_healthy_falcon(ctx: Context) -> None:
    gen = seeded(621)
    model = hf_lm("falcon")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=hf_logits,
        before=lambda s: sched.step() if s else None,
        classifier=False,
    )
    l = ctx.losses
    ctx.check(f"learned ({l[0]:.2f} -> {sum(l[-20:]) / 20:.2f})", sum(l[-20:]) / 20 < 0.8 * l[0])


@scenario("hf_gpt_bigcode", "adamax", "healthy", heldout=True)
def h6_healthy_bigcode(ctx: Context) -> None:
    gen = seeded(622)
    model = hf_lm("bigcode")
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=hf_logits,
        classifier=False,
    )
    l = ctx.losses
    ctx.check(f"learned ({l[0]:.2f} -> {sum(l[-20:]) / 20:.2f})", sum(l[-20:]) / 20 < 0.8 * l[0])


@scenario("gru_seq2seq_attention", "sg_adabelief", "healthy", heldout=True)
def h6_healthy_seq2seq(ctx: Context) -> None:
    gen = seeded(623)
    model = Seq2Seq()
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, reverse_batches(gen), 300, loss_fn=lm_loss, classifier=False)
    l = ctx.losses
    ctx.check(f"learned ({l[0]:.2f} -> {sum(l[-20:]) / 20:.2f})", sum(l[-20:]) / 20 < 0.5 * l[0])


@scenario("nerf_fourier_mlp", "adam", "healthy", heldout=True)
def h6_healthy_nerf(ctx: Context) -> None:
    gen = seeded(624)
    model = FourierMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, image_batches(gen), 300, loss_fn=F.mse_loss, classifier=False)
    l = ctx.losses
    ctx.check(f"learned ({l[0]:.3f} -> {sum(l[-20:]) / 20:.3f})", sum(l[-20:]) / 20 < 0.3 * l[0])
