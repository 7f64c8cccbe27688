"""Held-out set 102 (``h102_``): written blind to steadygrad's detectors and rules.

Hugging Face FlexOlmo (causal LM; a fault and a control), DepthPro (depth of generated foggy
scenes), Mask2Former and OneFormer (universal segmentation of generated scenes; controls), all
from tiny configs (no download); hand-written Set Transformer, a mixture-of-experts LM with a
load-balancing loss and a mixture-of-experts digit classifier, Perceiver IO over the lit pixels
of digits, tabular diffusion (DDPM over generated records; a fault and a control), a learned
optimiser (L2L, coordinate-wise LSTM), GRACE contrastive graph encoder, a conformer TTS
duration predictor, a neural additive model with ExU units, and slot attention over generated
blob scenes (fp16 autocast with a GradScaler).
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
    digits,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def train_step(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    total: torch.Tensor | None = None,
) -> None:
    """backward ``total`` (default: the loss), record the gradient norm, step, report the loss,
    clear the gradients."""
    (loss if total is None else total).backward()
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


# -- Set Transformer (Lee et al. 2019) ------------------------------------------------------------


class SetAttention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections (scaled dot product)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def split(self, z: torch.Tensor) -> torch.Tensor:
        b, n, d = z.shape
        return z.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q, k = self.split(self.q(x)), self.split(self.k(y))
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(y)), self.split(self.v(y))
        a = F.scaled_dot_product_attention(q, k, v)
        b, h, n, dh = a.shape
        return self.o(a.transpose(1, 2).reshape(b, n, h * dh))


class MAB(nn.Module):
    """Multihead attention block: post-LN residual attention then a residual feed-forward."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = SetAttention(dim, heads)
        self.ln0 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.ln1 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.ln0(x + self.attn(x, y))
        return self.ln1(h + self.ff(h))


class SetTransformer(nn.Module):
    """Two self-attention blocks (SAB), pooling by multihead attention (PMA), a linear head."""

    def __init__(self, dim: int = 32, heads: int = 4, inputs: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(inputs, dim)
        self.enc = nn.ModuleList(MAB(dim, heads) for _ in range(2))
        self.seed = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pma = MAB(dim, heads)
        self.head = nn.Linear(dim, 1)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        x = self.embed(pts)
        for mab in self.enc:
            x = mab(x, x)
        pooled = self.pma(self.seed.expand(len(x), -1, -1), x)
        return self.head(pooled[:, 0]).squeeze(-1)

    def attention_logit_max(self, pts: torch.Tensor) -> float:
        with torch.no_grad():
            x = self.embed(pts)
            top = 0.0
            for mab in self.enc:
                top = max(top, float(mab.attn.logits(x, x).abs().amax()))
                x = mab(x, x)
        return top


def point_sets(gen: torch.Generator, batch: int = 32, n: int = 24):
    """Sets of 2-D points from a few random clusters; target: the share of points within radius
    1 of the origin, times 10 (a permutation-invariant count)."""
    while True:
        centres = torch.randn(batch, 3, 2, generator=gen) * 1.2
        pick = torch.randint(0, 3, (batch, n), generator=gen)
        pts = centres.gather(1, pick[..., None].expand(-1, -1, 2))
        pts = pts + 0.35 * torch.randn(batch, n, 2, generator=gen)
        y = (pts.norm(dim=-1) < 1.0).float().mean(1) * 10
        yield pts, y


@scenario(
    "h102_set_transformer_pma_counts",
    "adamw",
    "attention_logit_growth",
    where=("enc.0.attn", "enc.1.attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a group at 40x the base LR, no weight decay",
)
def h102_set_transformer_attn_growth(ctx: Context) -> None:
    """A Set Transformer counting points near the origin; a per-group override meant for the
    embedding puts the self-attention query/key projections at a learning rate 40x the base,
    with no weight decay and no QK-norm: the attention logits of both SABs grow ~1000x and the
    first block's attention entropy falls from ~3.1 nats (near uniform over 24 points) to
    ~0.2 (near one-hot)."""
    gen = seeded(10201)
    model = SetTransformer()
    qk = [p for n, p in model.named_parameters() if n.startswith("enc.") and ".attn.q" in n]
    qk += [p for n, p in model.named_parameters() if n.startswith("enc.") and ".attn.k" in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": qk, "lr": 4e-2}], weight_decay=0.0
    )
    probe, _ = next(point_sets(seeded(1)))
    start = model.attention_logit_max(probe)
    ctx.attach(model, opt)
    batches = point_sets(gen)
    for _step in range(240):
        pts, y = next(batches)
        loss = F.mse_loss(model(pts), y)
        train_step(ctx, model, opt, loss)
    end = model.attention_logit_max(probe)
    with torch.no_grad():
        x = model.embed(probe)
        p = torch.softmax(model.enc[0].attn.logits(x, x), -1)
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
    ctx.check("self-attention logits grew 100x", end > 100 * start)
    ctx.check("attention entropy below 1 nat (from ~3.1)", entropy < 1.0)
    ctx.check("losses finite", finite(ctx.losses))


# -- Hugging Face FlexOlmo causal LM --------------------------------------------------------------


def hf_flexolmo(vocab: int = 128, dim: int = 32, layers: int = 2):
    from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

    config = FlexOlmoConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return FlexOlmoForCausalLM(config)


def log_partition(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), dim=-1).mean())


@scenario(
    "h102_hf_flexolmo_causal_lm",
    "radam",
    "update_ratio_out_of_range",
    where=("model.layers.0.mlp.experts", "model.layers.1.mlp.experts"),
    diverges=None,
    heldout=True,
    note="meant to freeze expert 0 only; the experts are one fused tensor, so all sit at LR 0",
)
def h102_flexolmo_fused_experts_frozen(ctx: Context) -> None:
    """FlexOlmo-style training: the public expert (expert 0) is to stay frozen while the new
    expert trains, so the parameters named ``mlp.experts`` go to a learning-rate-0 group. In
    this model the experts are one fused tensor per layer: every expert of both layers is frozen
    and the mixture-of-experts feed-forward never learns (its updates are exactly zero)."""
    gen = seeded(10203)
    model = hf_flexolmo()
    frozen = [p for n, p in model.named_parameters() if "mlp.experts" in n]
    ids = {id(p) for p in frozen}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.RAdam(
        [{"params": rest, "lr": 2e-3}, {"params": frozen, "lr": 0.0}], weight_decay=0.0
    )
    before = [p.detach().clone() for p in frozen]
    ctx.attach(model, opt)
    batches = text_batches(gen)
    for _step in range(160):
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x).logits, y)
        train_step(ctx, model, opt, loss)
    ctx.check(
        "every expert tensor unchanged",
        all(torch.equal(a, b) for a, b in zip(before, frozen, strict=True)),
    )
    x, y = next(batches)
    lm_loss(model(input_ids=x).logits, y).backward()
    ctx.check(
        "gradients reach the frozen experts",
        all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in frozen),
    )
    ctx.check("the rest trained: loss fell by 1 nat", mean(ctx.losses[-20:]) < ctx.losses[0] - 1)


@scenario(
    "h102_hf_flexolmo_causal_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW, warm-up and cosine decay, gradient clipping at 1.0",
)
def h102_flexolmo_healthy(ctx: Context) -> None:
    gen = seeded(10204)
    model = hf_flexolmo()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    steps = 160
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 16) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen)
    for _step in range(steps):
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("losses finite", finite(ctx.losses))
    ctx.check("loss fell by 1.5 nats", mean(ctx.losses[-20:]) < mean(ctx.losses[:5]) - 1.5)


# -- mixture of experts LM with a load-balancing loss (Switch Transformer style) ------------------


class Top1MoE(nn.Module):
    """Top-1 routed feed-forward experts; ``aux`` holds the Switch load-balancing loss."""

    def __init__(self, dim: int, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(experts)
        )
        self.aux = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.router(flat), -1)
        gate, pick = probs.max(-1)
        out = torch.zeros_like(flat)
        for i, expert in enumerate(self.experts):
            sel = pick == i
            if sel.any():
                out[sel] = gate[sel, None] * expert(flat[sel])
        share = F.one_hot(pick, len(self.experts)).float().mean(0)
        self.aux = len(self.experts) * (share * probs.mean(0)).sum()
        return out.reshape(x.shape)


class MoEBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.moe = Top1MoE(dim)
        self.register_buffer("mask", torch.ones(context, context).triu(1).bool(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask[:t, :t], need_weights=False)[0]
        return x + self.moe(self.ln2(x))


class MoELM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, layers: int = 2, context: int = 32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(MoEBlock(dim, 2, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def aux_loss(self) -> torch.Tensor:
        return sum(b.moe.aux for b in self.blocks) / len(self.blocks)


@scenario(
    "h102_moe_load_balance_lm",
    "adamax",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="untied output head at LR 4.0 (4e-3 meant), warm-up shared, no z-loss",
)
def h102_moe_output_logits(ctx: Context) -> None:
    """A top-1 mixture-of-experts LM with the Switch load-balancing loss (0.01) on bytes. The
    router and experts are fine; the untied output head sits in a group at learning rate 4.0
    (4e-3 meant: a dropped exponent) under the shared 80-step warm-up, with no z-loss: as the
    rate warms up the head's rows run off together, the log-partition drifts from ~5 to ~30 nats
    and the loss climbs back up."""
    gen = seeded(10205)
    model = MoELM()
    head = list(model.head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adamax([{"params": rest, "lr": 2e-3}, {"params": head, "lr": 4.0}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 80))
    probe, _ = next(text_batches(seeded(1)))
    with torch.no_grad():
        start = log_partition(model(probe))
    ctx.attach(model, opt)
    batches = text_batches(gen)
    for _step in range(200):
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        train_step(ctx, model, opt, loss, loss + 0.01 * model.aux_loss())
        sched.step()
    with torch.no_grad():
        end = log_partition(model(probe))
    ctx.check("|log Z| drifted by 15 nats", abs(end - start) > 15)
    ctx.check(
        "the loss climbed 1.5 nats above its best",
        max(ctx.losses[40:]) > min(ctx.losses[:40]) + 1.5,
    )
    ctx.check("losses finite", finite(ctx.losses))


# -- Perceiver IO over the set of lit pixels of a digit -------------------------------------------


def pixel_sets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as sets of (row, col, intensity) tokens of their lit pixels, padded to 64, with a
    padding mask (True: padding)."""
    n = len(x)
    rows = torch.arange(8).repeat_interleave(8).float() / 7
    cols = torch.arange(8).repeat(8).float() / 7
    tokens = torch.stack([rows.expand(n, -1), cols.expand(n, -1), x], -1)
    return tokens, x <= 0


class CrossAttention(nn.Module):
    """Latents attend to the input tokens; padding keys are masked out with -inf."""

    def __init__(self, dim: int, inputs: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(inputs, dim)
        self.v = nn.Linear(inputs, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, lat: torch.Tensor, tokens: torch.Tensor, pad: torch.Tensor):
        q, k, v = self.q(lat), self.k(tokens), self.v(tokens)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        s = s.masked_fill(pad[:, None, :], float("-inf"))
        return self.o(torch.softmax(s, -1) @ v)


class PerceiverIO(nn.Module):
    """Encode (cross-attention to latents), process (latent self-attention), decode (an output
    query cross-attends to the latents, then a linear head)."""

    def __init__(self, dim: int = 32, latents: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.fourier = nn.Linear(3, 16)
        self.latents = nn.Parameter(torch.randn(latents, dim) * 0.2)
        self.cross_attn = CrossAttention(dim, 19)
        self.ln = nn.LayerNorm(dim)
        self.process = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.2)
        self.decode = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens, torch.sin(self.fourier(tokens))], -1)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        lat = self.latents.expand(len(tokens), -1, -1)
        lat = lat + self.cross_attn(self.ln(lat), self.features(tokens), pad)
        lat = self.process(lat)
        out = self.decode(self.query.expand(len(lat), -1, -1), lat, lat, need_weights=False)[0]
        return self.head(out[:, 0])


@scenario(
    "h102_perceiver_io_pixel_sets",
    "adagrad",
    "nonfinite",
    where="cross_attn",
    diverges=240,
    heldout=True,
    onset=240,
    note="a blank scan: every key masked, the masked softmax returns NaN",
)
def h102_perceiver_blank_scan_nan(ctx: Context) -> None:
    """Perceiver IO reading each digit as the set of its lit pixels (padding masked with -inf
    in the encoder's cross-attention). At step 240 a batch carries one blank scan (no lit
    pixel): every key of that row is masked, softmax over all -inf gives NaN, and the NaN flows
    from the cross-attention into the latents, the loss and every gradient."""
    gen = seeded(10206)
    model = PerceiverIO()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    xs, ys = digits()
    ctx.attach(model, opt)
    for step in range(250):
        idx = torch.randint(0, len(ys), (64,), generator=gen)
        x, y = xs[idx].clone(), ys[idx]
        if step == 240:
            x[5] = 0.0
        tokens, pad = pixel_sets(x)
        ctx.targets(y)
        loss = F.cross_entropy(model(tokens, pad), y)
        train_step(ctx, model, opt, loss)
    ctx.check("finite before the blank scan", finite(ctx.losses[:240]))
    ctx.check("loss non-finite at step 240", not math.isfinite(ctx.losses[240]))
    ctx.check("it learned first", mean(ctx.losses[220:240]) < 0.85 * mean(ctx.losses[:20]))


# -- a mixture-of-experts classifier on digits ----------------------------------------------------


class MoEClassifier(nn.Module):
    def __init__(self, dim: int = 64, experts: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(64, dim)
        self.moe = Top1MoE(dim, experts)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        return self.head(h + self.moe(h))


@scenario(
    "h102_moe_mlp_digits",
    "adam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="memorising 128 digits, full batch, no weight decay or label smoothing",
)
def h102_moe_softmax_collapse(ctx: Context) -> None:
    """A top-1 mixture-of-experts classifier (Switch load-balancing loss 0.01) fit to a fixed
    128-digit subset, full batch, Adam at 1e-2, no weight decay or label smoothing: once the
    subset is memorised the logits keep growing until the float32 softmax rounds the correct
    class to exactly 1 for most rows, their gradient is exactly 0, and learning stops (Prieto
    et al. 2025)."""
    gen = seeded(10207)
    model = MoEClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xs, ys = digits()
    idx = torch.randperm(len(ys), generator=gen)[:128]
    x, y = xs[idx], ys[idx]
    ctx.attach(model, opt)
    for _step in range(400):
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        train_step(ctx, model, opt, loss, loss + 0.01 * model.moe.aux)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows collapsed to p=1.0", frac > 0.5)
    ctx.check("losses finite", finite(ctx.losses))


# -- tabular diffusion (DDPM over generated records) ----------------------------------------------


def tabular_records(gen: torch.Generator, n: int = 2048) -> torch.Tensor:
    """Generated 8-column records: a 3-component mixture with correlated columns, standardised."""
    comp = torch.randint(0, 3, (n,), generator=gen)
    centres = torch.tensor([[-2.0] * 8, [0.0, 1.5] * 4, [2.0, -1.0] * 4])
    mix = torch.randn(8, 8, generator=gen) * 0.4
    x = centres[comp] + torch.randn(n, 8, generator=gen) @ mix
    x = torch.cat([x[:, :6], torch.exp(0.5 * x[:, 6:])], 1)  # two skewed positive columns
    return (x - x.mean(0)) / x.std(0)


class TabularDenoiser(nn.Module):
    """An MLP predicting the noise of a noised record, with a sinusoidal time embedding."""

    def __init__(self, cols: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.time = nn.Linear(16, hidden)
        self.inp = nn.Linear(cols, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, cols)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.arange(8) * -math.log(1000.0) / 8)
        emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
        h = F.silu(self.inp(x) + self.time(emb))
        h = F.silu(self.mid(h))
        return self.out(h)


def ddpm_loss(model: nn.Module, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    steps = 100
    betas = torch.linspace(1e-4, 0.05, steps)
    abar = torch.cumprod(1 - betas, 0)
    t = torch.randint(0, steps, (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = abar[t][:, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return F.mse_loss(model(xt, t.float()), eps)


def top_hessian_eig(model: nn.Module, loss_fn, iters: int = 12) -> float:
    """The largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "h102_tabular_ddpm_mlp",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="LR ramps from 0.02 to 10.0 (a warm-up to a peak typed 100x too high)",
)
def h102_tabular_ddpm_sharpness(ctx: Context) -> None:
    """A DDPM over generated tabular records (noise-prediction MLP), plain SGD with a linear
    warm-up whose peak (10.0) is 100x the one meant: the rate passes 2/lambda_max of the loss
    (Cohen et al. 2021) part-way through the warm-up and the loss blows up."""
    gen = seeded(10208)
    data = tabular_records(gen)
    model = TabularDenoiser()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    probe = data[:512]
    ctx.attach(model, opt)
    crossed = None
    for step in range(200):
        lr = 0.02 + (10.0 - 0.02) * min(step / 150, 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 20 == 0 and crossed is None:
            lam = top_hessian_eig(model, lambda m: ddpm_loss(m, probe, seeded(7)))
            if lr > 2 / lam:
                crossed = step
        idx = torch.randint(0, len(data), (128,), generator=gen)
        loss = ddpm_loss(model, data[idx], gen)
        train_step(ctx, model, opt, loss)
        if not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 1e6:
            break
    best = min(ctx.losses)
    ctx.check("the LR passed 2/lambda_max", crossed is not None)
    ctx.check(
        "the loss blew up after it did",
        crossed is not None
        and (not finite(ctx.losses[crossed:]) or max(ctx.losses[crossed:]) > 10 * best),
    )
    ctx.check("it learned first", best < 0.8 * ctx.losses[0])


@scenario(
    "h102_tabular_ddpm_mlp",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="SGD momentum 0.9 at 0.02, step decay at 200; the DDPM loss is noisy by nature",
)
def h102_tabular_ddpm_healthy(ctx: Context) -> None:
    gen = seeded(10209)
    data = tabular_records(gen)
    model = TabularDenoiser()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 200, 0.3)
    ctx.attach(model, opt)
    for _step in range(280):
        idx = torch.randint(0, len(data), (128,), generator=gen)
        loss = ddpm_loss(model, data[idx], gen)
        train_step(ctx, model, opt, loss)
        sched.step()
    ctx.check("losses finite", finite(ctx.losses))
    ctx.check("loss fell by 30%", mean(ctx.losses[-30:]) < 0.7 * mean(ctx.losses[:10]))


# -- a learned optimiser (L2L, Andrychowicz et al. 2016) ------------------------------------------


class LearnedOptimiser(nn.Module):
    """Coordinate-wise LSTM: reads each coordinate's gradient, proposes its update."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(2, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, g: torch.Tensor, state):
        inp = torch.stack([g, torch.tanh(4 * g)], -1).reshape(-1, 2)
        h, c = self.cell(inp, state)
        return 0.3 * self.out(h).reshape(g.shape), (h, c)


def quadratic_tasks(gen: torch.Generator, top: float = 6.0, tasks: int = 16, dim: int = 16):
    """Separable quadratics 0.5 * sum(lam * (theta - c)^2), curvatures from 0.2 to ``top``."""
    lo, hi = math.log(0.2), math.log(top)
    lam = torch.exp(torch.empty(tasks, dim).uniform_(lo, hi, generator=gen))
    centre = torch.randn(tasks, dim, generator=gen)
    return lam, centre


def unroll(opt_net: LearnedOptimiser, lam, centre, length: int) -> torch.Tensor:
    """The meta-loss: the mean optimisee loss along an unroll, second derivatives kept."""
    theta = torch.zeros_like(centre)
    state = None
    total = torch.zeros(())
    for _ in range(length):
        g = lam * (theta - centre)
        u, state = opt_net(g, state)
        theta = theta + u
        total = total + 0.5 * (lam * (theta - centre) ** 2).sum(1).mean()
    return total / length


@scenario(
    "h102_l2l_lstm_optimiser",
    "rmsprop",
    "exploding_gradients",
    where=("cell", "out"),
    diverges="auto",
    heldout=True,
    onset=150,
    note="at step 150: curvatures up to 60 (from 6), unroll 40 (from 8); no clipping",
)
def h102_l2l_unroll_explodes(ctx: Context) -> None:
    """Meta-training a coordinate-wise LSTM optimiser on ill-conditioned quadratics, with the
    meta-gradient taken through the unroll (second derivatives kept) and no clipping. At step
    150 a curriculum widens the task family (curvatures up to 60, from 6) and lengthens the
    unroll (40 steps, from 8): the learned steps oscillate on the new high-curvature
    coordinates, the Jacobian of the unrolled dynamics exceeds one per step, and the
    meta-gradient explodes geometrically with the unroll length (Metz et al. 2019)."""
    gen = seeded(10210)
    net = LearnedOptimiser()
    opt = torch.optim.RMSprop(net.parameters(), lr=3e-3)
    ctx.attach(net, opt)
    for step in range(200):
        lam, centre = quadratic_tasks(gen, 6.0 if step < 150 else 60.0)
        loss = unroll(net, lam, centre, 8 if step < 150 else 40)
        train_step(ctx, net, opt, loss)
        if not math.isfinite(ctx.losses[-1]):
            break
    before = median(ctx.grad_norms[130:150])
    after = max(ctx.grad_norms[150:])
    ctx.check("the meta-gradient grew 1000x after the switch", after > 1000 * before)
    ctx.check("it learned first", mean(ctx.losses[140:150]) < 0.7 * mean(ctx.losses[:10]))


# -- GRACE: graph contrastive representation learning (Zhu et al. 2020) ---------------------------


def sbm_graph(gen: torch.Generator, nodes: int = 150, blocks: int = 3, feats: int = 24):
    """A stochastic block model graph with block-correlated node features; returns the dense
    adjacency (no self loops) and the features."""
    block = torch.arange(nodes) % blocks
    same = block[:, None] == block[None, :]
    prob = torch.where(same, torch.tensor(0.12), torch.tensor(0.01))
    adj = (torch.rand(nodes, nodes, generator=gen) < prob).float().triu(1)
    adj = adj + adj.T
    proto = torch.randn(blocks, feats, generator=gen)
    x = proto[block] + 0.8 * torch.randn(nodes, feats, generator=gen)
    return adj, x


def gcn_norm(adj: torch.Tensor) -> torch.Tensor:
    a = adj + torch.eye(len(adj))
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


class GCNEncoder(nn.Module):
    def __init__(self, feats: int = 24, hidden: int = 64, out: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Linear(feats, hidden)
        self.conv2 = nn.Linear(hidden, out)

    def first(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.relu(a @ self.conv1(x))

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.relu(a @ self.conv2(self.first(a, x)))


class GRACE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = GCNEncoder()
        self.proj = nn.Sequential(nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 32))

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder(a, x))


def grace_views(adj: torch.Tensor, x: torch.Tensor, gen: torch.Generator):
    """Two views: 25% of edges dropped, 20% of feature columns masked (each view its own)."""
    out = []
    for _ in range(2):
        keep = (torch.rand(adj.shape, generator=gen) > 0.25).float().triu(1)
        keep = keep + keep.T
        cols = (torch.rand(x.shape[1], generator=gen) > 0.2).float()
        out.append((gcn_norm(adj * keep), x * cols))
    return out


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    sim = z1 @ z2.T / tau
    target = torch.arange(len(z1))
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


@scenario(
    "h102_grace_contrastive_graph",
    "sgd_nesterov",
    "loss_of_plasticity",
    where=("encoder.conv2", "encoder.conv1"),
    diverges=None,
    heldout=True,
    onset=120,
    note="a warm restart at step 120 with peak LR 10 (0.03 meant) for 8 steps kills ReLUs",
)
def h102_grace_dead_relu(ctx: Context) -> None:
    """GRACE on a generated block-model graph (two-layer GCN encoder, edge-dropping and
    feature-masking views, NT-Xent at tau 0.5), SGD with Nesterov momentum. A warm restart of
    the cyclic schedule at step 120 peaks at 10 instead of 0.03 for 8 steps: the GCN layers'
    biases are kicked negative, half the output layer's ReLU units (and more of the first
    layer's) are never positive again on any node, and the contrastive loss stays well above
    where it was though the rate is back to normal."""
    gen = seeded(10211)
    adj, x = sbm_graph(gen)
    model = GRACE()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    a_full = gcn_norm(adj)
    ctx.attach(model, opt)
    dead_before = 0.0
    for step in range(260):
        for g in opt.param_groups:
            g["lr"] = 10.0 if 120 <= step < 128 else 0.03
        if step == 119:
            with torch.no_grad():
                dead_before = dead_fraction(model.encoder(a_full, x))
        (a1, x1), (a2, x2) = grace_views(adj, x, gen)
        loss = nt_xent(model(a1, x1), model(a2, x2))
        train_step(ctx, model, opt, loss)
    with torch.no_grad():
        dead_after = dead_fraction(model.encoder(a_full, x))
        dead_first = dead_fraction(model.encoder.first(a_full, x))
    ctx.check("few dead units before the restart", dead_before < 0.15)
    ctx.check("40% of the output layer's units dead after it", dead_after > 0.4)
    ctx.check("dead units in the first layer too", dead_first > 0.1)
    ctx.check("losses finite", finite(ctx.losses))
    ctx.check(
        "no recovery: the loss stays 0.5 above its pre-restart level",
        mean(ctx.losses[-20:]) > mean(ctx.losses[100:120]) + 0.5,
    )


# -- conformer TTS duration predictor -------------------------------------------------------------


def phoneme_durations(gen: torch.Generator, batch: int = 32, length: int = 20, phones: int = 40):
    """Generated phoneme sequences and their durations in frames: each phone has its own base
    length, vowels (ids < 12) before a pause (id 0) are lengthened, with some jitter."""
    base = 2 + (torch.arange(phones) * 7 % 11).float()
    while True:
        ids = torch.randint(0, phones, (batch, length), generator=gen)
        dur = base[ids].clone()
        before_pause = torch.cat([ids[:, 1:] == 0, torch.zeros(batch, 1, dtype=torch.bool)], 1)
        dur = dur + 4.0 * ((ids < 12) & before_pause).float()
        dur = (dur * torch.exp(0.1 * torch.randn(batch, length, generator=gen))).round().clamp(1)
        yield ids, dur


class ConvModule(nn.Module):
    def __init__(self, dim: int, kernel: int = 7) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.pw1 = nn.Conv1d(dim, 2 * dim, 1)
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.bn = nn.BatchNorm1d(dim)
        self.pw2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pw1(self.ln(x).transpose(1, 2)), dim=1)
        h = self.pw2(F.silu(self.bn(self.dw(h))))
        return h.transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.ff1 = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim)
        )
        self.ln_att = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.conv = ConvModule(dim)
        self.ff2 = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim)
        )
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.ln_att(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.conv(x)
        x = x + 0.5 * self.ff2(x)
        return self.ln_out(x)


class ConformerDuration(nn.Module):
    """Phoneme embeddings -> two conformer blocks -> log-duration per phoneme (FastSpeech 2)."""

    def __init__(self, phones: int = 40, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(phones, dim)
        self.blocks = nn.ModuleList(ConformerBlock(dim) for _ in range(2))
        self.duration_head = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.duration_head(x).squeeze(-1)


def adam_v_norm(opt: torch.optim.Optimizer) -> float:
    return math.sqrt(
        sum(float(st["exp_avg_sq"].sum()) for st in opt.state.values() if "exp_avg_sq" in st)
    )


@scenario(
    "h102_conformer_tts_duration",
    "adam",
    "adam_second_moment_poisoned",
    where=("duration_head", "blocks.1"),
    diverges=None,
    heldout=True,
    onset=160,
    note="one batch at step 160 with durations in audio samples (x256), MSE on raw frames",
)
def h102_conformer_duration_poisoned(ctx: Context) -> None:
    """A conformer duration predictor (FastSpeech 2 style, but regressing raw frame counts
    with MSE) trained with Adam (beta2 0.999). At step 160 one batch's durations come from an
    aligner export in audio samples rather than frames (x256, the hop length): its gradient is
    hundreds of times the usual, Adam's second moment jumps ~150x (its norm) and damps every
    later update; 160 steps on, the loss is still ~4x where it was before the batch (a run
    without that batch stays at its level)."""
    gen = seeded(10212)
    model = ConformerDuration()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = phoneme_durations(gen)
    ctx.attach(model, opt)
    v_before = v_after = 0.0
    for step in range(320):
        ids, dur = next(batches)
        if step == 160:
            dur = dur * 256
        loss = F.mse_loss(model(ids), dur)
        train_step(ctx, model, opt, loss)
        if step == 159:
            v_before = adam_v_norm(opt)
        if step == 160:
            v_after = adam_v_norm(opt)
    pre = mean(ctx.losses[150:160])
    ctx.check("the second moment jumped 100x at step 160", v_after > 100 * v_before)
    ctx.check("it had learned before", pre < 0.1 * mean(ctx.losses[:5]))
    ctx.check(
        "stalled after: 160 steps later the loss is still 3x its pre-spike level",
        mean(ctx.losses[-20:]) > 3 * pre,
    )
    ctx.check("losses finite", finite(ctx.losses))


# -- generated scenes (for Mask2Former and DepthPro) ----------------------------------------------


def scenes(gen: torch.Generator, batch: int, size: int):
    """Generated scenes: a floor receding to the horizon, a rectangle and a disc standing on it
    (each its own colour and depth), with fog. Returns images (B, 3, S, S) in [0, 1], depth
    maps in metres (B, S, S), and per image the object masks (2, S, S) and classes (0 rectangle,
    1 disc)."""
    rows = torch.arange(size).float()[:, None].expand(size, size)
    cols = torch.arange(size).float()[None, :].expand(size, size)
    images, depths, masks, classes = [], [], [], []
    for _ in range(batch):
        depth = 2.0 + 8.0 * (1 - rows / size)
        colour = torch.full((3, size, size), 0.5) + 0.1 * torch.rand(3, 1, 1, generator=gen)
        r = torch.randint(size // 4, size - size // 4, (4,), generator=gen).tolist()
        h = torch.randint(size // 6, size // 3, (2,), generator=gen).tolist()
        rect = (rows - r[0]).abs().le(h[0] // 2) & (cols - r[1]).abs().le(h[1] // 2)
        disc = ((rows - r[2]) ** 2 + (cols - r[3]) ** 2).le((h[0] // 2 + 1) ** 2)
        obj_depth = 1.0 + 3.0 * torch.rand(2, generator=gen)
        obj_colour = torch.rand(2, 3, generator=gen)
        for m, d, c in zip((rect, disc), obj_depth, obj_colour, strict=True):
            depth = torch.where(m, d, depth)
            colour = torch.where(m[None], c[:, None, None], colour)
        fog = torch.exp(-0.15 * depth)
        images.append(colour * fog + 0.6 * (1 - fog))
        depths.append(depth)
        visible_disc = disc & ~(rect & (obj_depth[0] < obj_depth[1]))
        visible_rect = rect & ~(disc & (obj_depth[1] <= obj_depth[0]))
        masks.append(torch.stack([visible_rect, visible_disc]).float())
        classes.append(torch.tensor([0, 1]))
    return torch.stack(images), torch.stack(depths), masks, classes


def hf_depth_pro():
    from transformers import DepthProConfig, DepthProForDepthEstimation

    sub = {
        "model_type": "dinov2",
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mlp_ratio": 2,
        "image_size": 16,
        "patch_size": 4,
    }
    config = DepthProConfig(
        patch_size=16,
        fusion_hidden_size=8,
        intermediate_hook_ids=(1, 0),
        intermediate_feature_dims=(16, 16),
        scaled_images_feature_dims=(16, 16, 16),
        image_model_config=dict(sub),
        patch_model_config=dict(sub),
        fov_model_config=dict(sub),
        use_fov_model=False,
    )
    return DepthProForDepthEstimation(config)


@scenario(
    "h102_hf_depthpro_scenes",
    "nadam",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=60,
    note="one batch at step 60 with depth maps in millimetres (a loader unit bug)",
)
def h102_depthpro_mm_batch(ctx: Context) -> None:
    """DepthPro (multi-scale ViT patch encoder + image encoder, fusion decoder) from a tiny
    config, regressing log-depth of generated foggy scenes with an L1 loss, NAdam. At step 60
    one batch's depth maps come from a shard stored in millimetres: the log-depth targets jump
    by log(1000), the loss spikes ~10x for that batch alone and the run recovers."""
    gen = seeded(10213)
    model = hf_depth_pro()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(90):
        img, depth, _, _ = scenes(gen, 2, 64)
        if step == 60:
            depth = depth * 1000.0
        pred = model(pixel_values=img).predicted_depth
        pred = F.adaptive_avg_pool2d(pred[:, None], 64)[:, 0]
        loss = F.l1_loss(pred, depth.log())
        train_step(ctx, model, opt, loss)
    pre = median(ctx.losses[50:60])
    ctx.check("loss spiked 5x at step 60", ctx.losses[60] > 5 * pre)
    ctx.check("recovered within 20 steps", mean(ctx.losses[75:90]) < 1.5 * pre)
    ctx.check("it learned first", pre < 0.7 * mean(ctx.losses[:5]))
    ctx.check("losses finite", finite(ctx.losses))


def hf_mask2former():
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=4,
        num_labels=2,
        common_stride=4,
        use_auxiliary_loss=True,
    )
    return Mask2FormerForUniversalSegmentation(config)


@scenario(
    "h102_hf_mask2former_scenes",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW with poly decay; Hungarian-matched mask and class losses are noisy",
)
def h102_mask2former_healthy(ctx: Context) -> None:
    gen = seeded(10214)
    model = hf_mask2former()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = 120
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / steps) ** 0.9)
    ctx.attach(model, opt)
    for _step in range(steps):
        img, _, masks, classes = scenes(gen, 4, 32)
        out = model(pixel_values=img, mask_labels=masks, class_labels=classes)
        train_step(ctx, model, opt, out.loss)
        sched.step()
    ctx.check("losses finite", finite(ctx.losses))
    ctx.check("loss fell by 30%", mean(ctx.losses[-20:]) < 0.7 * mean(ctx.losses[:5]))


# -- neural additive model with ExU units (Agarwal et al. 2021) -----------------------------------


class ExU(nn.Module):
    """Exp-centred unit: h = relu(exp(w) * (x - b)), weights initialised around 4 (no ReLU-n
    cap)."""

    def __init__(self, inputs: int, units: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inputs, units) * 0.5 + 2.0)
        self.bias = nn.Parameter(torch.randn(inputs) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu((x - self.bias) @ torch.exp(self.weight))


class FeatureNet(nn.Module):
    def __init__(self, units: int = 16) -> None:
        super().__init__()
        self.exu = ExU(1, units)
        self.fc = nn.Linear(units, units)
        self.out = nn.Linear(units, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc(self.exu(x))))


class NeuralAdditiveModel(nn.Module):
    """One small network per feature, their outputs summed into a logit."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.feature_nets = nn.ModuleList(FeatureNet() for _ in range(features))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [net(x[:, i : i + 1]) for i, net in enumerate(self.feature_nets)]
        return torch.cat(parts, 1).sum(1) + self.bias


def diabetes_records() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled diabetes table, raw (unscaled) features and the target."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    return torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target, dtype=torch.float32)


@scenario(
    "h102_nam_exu_diabetes",
    "sgd_mom",
    "gradient_spike",
    where="feature_nets.2",
    diverges=None,
    heldout=True,
    onset=120,
    note="one record at step 120 has BMI 999 (a missing-value code), amplified by ExU units",
)
def h102_nam_exu_gradient_spike(ctx: Context) -> None:
    """A neural additive model (one ExU network per feature, outputs summed) regressing
    disease progression on the diabetes table, SGD with momentum. At step 120 one record
    carries BMI 999, the export's missing-value code, standardised with the clean statistics
    to ~200: the BMI network's exp-weighted units amplify it, and that one network's gradient
    is ~10^4x its usual (the others' barely move): one step's gradient spike in one place."""
    gen = seeded(10215)
    x, y = diabetes_records()
    mu, sd = x.mean(0), x.std(0)
    target = (y - y.mean()) / y.std()
    model = NeuralAdditiveModel(x.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    ctx.attach(model, opt)
    bmi, others = [], []
    for step in range(180):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        xb = x[idx].clone()
        if step == 120:
            xb[7, 2] = 999.0
        loss = F.mse_loss(model((xb - mu) / sd), target[idx])
        loss.backward()
        norms = [grad_norm(net) for net in model.feature_nets]
        bmi.append(norms[2])
        others.append(max(norms[:2] + norms[3:]))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "BMI net's gradient 1000x its median at step 120", bmi[120] > 1000 * median(bmi[:120])
    )
    ctx.check("100x any other feature net's", bmi[120] > 100 * others[120])
    ctx.check("it learned first", mean(ctx.losses[100:120]) < 0.2 * ctx.losses[0])
    ctx.check("losses finite", finite(ctx.losses))


# -- slot attention over generated blob scenes (Locatello et al. 2020) ----------------------------


def blob_scenes(gen: torch.Generator, batch: int = 16, size: int = 16) -> torch.Tensor:
    """Two to three coloured Gaussian blobs on a dark background, in [0, 1]."""
    grid = torch.stack(
        torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    )
    img = torch.zeros(batch, 3, size, size)
    for _ in range(3):
        centre = torch.rand(batch, 2, 1, 1, generator=gen) * (size - 4) + 2
        blob = torch.exp(-((grid[None] - centre) ** 2).sum(1) / 6.0)
        colour = torch.rand(batch, 3, 1, 1, generator=gen)
        present = (torch.rand(batch, 1, 1, 1, generator=gen) < 0.85).float()
        img = torch.maximum(img, present * colour * blob[:, None])
    return img


def position_grid(size: int) -> torch.Tensor:
    lin = torch.linspace(0, 1, size)
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([y, x, 1 - y, 1 - x], -1).reshape(-1, 4)


class SlotAttention(nn.Module):
    def __init__(self, dim: int = 32, slots: int = 3, iters: int = 3) -> None:
        super().__init__()
        self.slots, self.iters, self.dim = slots, iters, dim
        self.mu = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.log_sigma = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_in = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, inputs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b = len(inputs)
        slots = self.mu + self.log_sigma.exp() * noise
        inputs = self.norm_in(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        for _ in range(self.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dim), dim=1) + 1e-8
            attn = attn / attn.sum(-1, keepdim=True)
            updates = attn @ v
            slots = self.gru(updates.reshape(-1, self.dim), prev.reshape(-1, self.dim))
            slots = slots.reshape(b, self.slots, self.dim)
            slots = slots + self.mlp(slots)
        return slots


class SlotAutoencoder(nn.Module):
    """Per-pixel encoder + soft position embedding, slot attention, spatial-broadcast decoder
    with per-slot alpha masks."""

    def __init__(self, dim: int = 32, size: int = 16) -> None:
        super().__init__()
        self.size = size
        self.pix1 = nn.Linear(3, dim)
        self.pix2 = nn.Linear(dim, dim)
        self.enc_pos = nn.Linear(4, dim)
        self.enc_mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.slot_attn = SlotAttention(dim)
        self.dec_pos = nn.Linear(4, dim)
        self.decoder = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, 2 * dim), nn.ReLU()
        )
        self.dec_out = nn.Linear(2 * dim, 4)
        self.register_buffer("grid", position_grid(size), persistent=False)

    def forward(self, img: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b = len(img)
        h = img.flatten(2).transpose(1, 2)
        h = F.relu(self.pix2(F.relu(self.pix1(h)))) + self.enc_pos(self.grid)
        slots = self.slot_attn(self.enc_mlp(h), noise)
        x = slots[:, :, None, :] + self.dec_pos(self.grid)[None, None]
        out = self.dec_out(self.decoder(x))
        rgb, alpha = out[..., :3], torch.softmax(out[..., 3:].float(), dim=1)
        recon = (rgb.float() * alpha).sum(1)
        return recon.transpose(1, 2).reshape(b, 3, self.size, self.size)


@scenario(
    "h102_slot_attention_blobs",
    "adam",
    "amp_overflow",
    where="pix1",
    diverges=None,
    heldout=True,
    onset=100,
    note="fp16 autocast + GradScaler; steps 100-119 read a shard stored as 16-bit PNGs, unscaled",
)
def h102_slot_attention_fp16_overflow(ctx: Context) -> None:
    """Slot attention autoencoder on generated blob scenes under float16 autocast with a
    GradScaler, Adam. From step 100 to 119 the loader reads a shard of 16-bit PNGs without
    dividing by 65535: values up to ~6e4 overflow float16 in the per-pixel encoder's first
    layer (pix1), every one of those steps' gradients is non-finite, the scaler skips the step
    and halves its scale; the weights are untouched and training goes on once the shard has
    passed."""
    gen = seeded(10216)
    model = SlotAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    skipped = 0
    for step in range(160):
        img = blob_scenes(gen)
        target = img
        if 100 <= step < 120:
            img = img * 65535.0
        noise = torch.randn(len(img), 3, 32, generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            recon = model(img, noise)
        loss = F.mse_loss(recon.float(), target)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < scale
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the scaler skipped 15 or more steps", skipped >= 15)
    ctx.check("it learned before the shard", mean(ctx.losses[90:100]) < 0.8 * ctx.losses[0])
    ctx.check("training went on after", finite(ctx.losses[125:]))


def hf_oneformer():
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = OneFormerConfig(
        backbone_config=backbone,
        num_queries=4,
        num_labels=2,
        train_num_points=256,
        task_seq_len=8,
        text_encoder_width=32,
        text_encoder_context_length=8,
        text_encoder_num_layers=1,
        text_encoder_vocab_size=64,
        text_encoder_n_ctx=4,
        conv_dim=32,
        mask_dim=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        query_dec_layers=1,
        is_training=False,
    )
    return OneFormerForUniversalSegmentation(config)


@scenario(
    "h102_hf_oneformer_scenes",
    "adamw",
    "healthy",
    heldout=True,
    note="task-conditioned (panoptic task tokens), warm-up, poly decay, clipping at 1.0",
)
def h102_oneformer_healthy(ctx: Context) -> None:
    """OneFormer from a tiny config, conditioned on a fixed panoptic task-token sequence,
    segmenting the rectangle and the disc of generated scenes: AdamW, 10-step warm-up then
    poly decay, gradient clipping at 1.0 as in its recipe."""
    gen = seeded(10217)
    model = hf_oneformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = 120
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * (1 - s / steps) ** 0.9
    )
    task = torch.tensor([[1, 7, 9, 3, 12, 0, 0, 0]]).expand(4, -1)  # "the task is panoptic"
    ctx.attach(model, opt)
    for _step in range(steps):
        img, _, masks, classes = scenes(gen, 4, 32)
        out = model(pixel_values=img, task_inputs=task, mask_labels=masks, class_labels=classes)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("losses finite", finite(ctx.losses))
    ctx.check("loss fell by 30%", mean(ctx.losses[-20:]) < 0.7 * mean(ctx.losses[:5]))
