"""A fourth held-out set: model families and fault mechanisms the other case files do not have.

Hugging Face GPT-J and Phi causal LMs built from configs, a decoder written here with learned
positions and a head tied to the token embedding, a SiLU MLP, a GroupNorm CNN, a VAE (MSE + KL),
a causal dilated temporal conv net, a Siamese encoder trained with InfoNCE, an affine-coupling
normalising flow and a bilinear (multiplicative) classifier; optimizers SGD, Nesterov, Adam,
AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax and steadygrad's Lion.

Every scenario here is ``heldout=True`` and was written without reading steadygrad's
detectors, rules or monitor internals, and without ever running steadygrad on it: each was
adjusted only until its own check held (the fault really happened) or, for a healthy control,
until it trained normally, with a stand-in context that attaches nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
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

# -- data -----------------------------------------------------------------------------------------


def wave_batches(gen: torch.Generator, batch: int = 16, length: int = 64):
    """Next-value prediction on sums of two sinusoids with random frequencies and phases, plus a
    little noise: input (batch, 1, length), target the series shifted by one."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = 0.05 + 0.25 * torch.rand(batch, 2, 1, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 2, 1, generator=gen)
        s = torch.sin(f * t + ph).sum(1) + 0.05 * torch.randn(batch, length + 1, generator=gen)
        yield s[:, None, :-1], s[:, None, 1:]


def moons_batches(gen: torch.Generator, batch: int = 128):
    """Two interleaved half-moons in 2-D with Gaussian noise (the flow's density target)."""
    while True:
        a = math.pi * torch.rand(batch, generator=gen)
        upper = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
        y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
        pts = torch.stack([x, y], 1) + 0.08 * torch.randn(batch, 2, generator=gen)
        yield (pts - torch.tensor([0.5, 0.25])) / 0.8, torch.zeros(batch)


def augmented_pairs(gen: torch.Generator, batch: int = 64, same_view: bool = False):
    """Two noisy, randomly shifted views of the same digits (positives on the diagonal);
    ``same_view``: the bug of drawing one view and handing it over twice."""
    for x, _ in digit_batches(gen, batch):
        img = x.reshape(-1, 8, 8)

        def view(img: torch.Tensor = img) -> torch.Tensor:
            shift = int(torch.randint(-1, 2, (1,), generator=gen))
            v = torch.roll(img, shift, dims=2) + 0.1 * torch.randn(img.shape, generator=gen)
            return v.reshape(-1, 64)

        first = view()
        yield first, (first if same_view else view())


# -- model families -------------------------------------------------------------------------------


def hf_gptj(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, context: int = 64):
    """A Hugging Face GPT-J causal LM (parallel attention + MLP, rotary) from a config."""
    from transformers import GPTJConfig, GPTJForCausalLM

    config = GPTJConfig(
        vocab_size=vocab,
        n_positions=context,
        n_embd=dim,
        n_layer=layers,
        n_head=heads,
        rotary_dim=8,
        n_inner=2 * dim,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTJForCausalLM(config)


def hf_phi(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, context: int = 64):
    """A Hugging Face Phi causal LM (partial rotary, parallel block) from a config."""
    from transformers import PhiConfig, PhiForCausalLM

    config = PhiConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=context,
        partial_rotary_factor=0.5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return PhiForCausalLM(config)


def hf_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


class ExplicitAttention(nn.Module):
    """Causal self-attention with the logits computed in the open (kept in ``last_logits``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim)
        self.last_logits = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.last_logits = logits.detach()
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        w = torch.softmax(logits.masked_fill(mask, float("-inf")), -1)
        return self.o((w @ v).transpose(1, 2).reshape(b, t, d))


class TiedBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ExplicitAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TiedDecoder(nn.Module):
    """Token embedding + learned positional embedding, pre-LN blocks, output head tied to the
    token embedding (``logits = h @ embed.weight.T``)."""

    def __init__(self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(0.02 * torch.randn(64, dim))
        self.blocks = nn.ModuleList(TiedBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.05)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx) + self.positions[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T


class GNConvNet(nn.Module):
    """A small CNN for 8x8 digits with GroupNorm (no BatchNorm) and SiLU."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.gn2 = nn.GroupNorm(4, 2 * width)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.gn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.avg_pool2d(F.silu(self.gn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


class VAE(nn.Module):
    """A small MLP VAE on 8x8 digits: ``forward`` returns (reconstruction, mu, logvar)."""

    def __init__(self, hidden: int = 48, latent: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, hidden), nn.ELU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ELU(), nn.Linear(hidden, 64))

    def forward(self, x: torch.Tensor):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec(z), mu, logvar


def vae_loss(model: VAE, x: torch.Tensor) -> torch.Tensor:
    recon, mu, logvar = model(x)
    rec = F.mse_loss(recon, x, reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    return rec + kl


class RMSNoEps(nn.Module):
    """Per-sample RMS normalisation over time, written without an epsilon."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.pow(2).mean(-1, keepdim=True).sqrt()


class TCN(nn.Module):
    """Causal dilated 1-D convolutions (dilations 1, 2, 4), left-padded, with residuals; the
    input is RMS-normalised per sample and the prediction scaled back."""

    def __init__(self, channels: int = 24) -> None:
        super().__init__()
        self.norm = RMSNoEps()
        self.inp = nn.Conv1d(1, channels, 1)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 2, dilation=d) for d in (1, 2, 4))
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.pow(2).mean(-1, keepdim=True).sqrt()
        h = self.inp(self.norm(x))
        for conv in self.convs:
            h = h + torch.tanh(conv(F.pad(h, (conv.dilation[0], 0))))
        return self.out(h) * scale


class SiameseEncoder(nn.Module):
    """Shared MLP encoder for both views + a projection; InfoNCE over the batch with a
    learnable logit scale kept in ``temperature``."""

    def __init__(self, hidden: int = 64, out: int = 32, scale: float = math.log(10.0)) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.proj = nn.Linear(hidden, out)
        self.temperature = nn.Module()
        self.temperature.log_scale = nn.Parameter(torch.tensor(scale))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(F.gelu(self.encoder(x))), dim=-1)

    def forward(self, pair) -> torch.Tensor:
        a, b = pair
        return self.temperature.log_scale.exp() * self.embed(a) @ self.embed(b).T


class Coupling(nn.Module):
    """An affine coupling layer on 2-D points: one coordinate scales and shifts the other."""

    def __init__(self, flip: bool, hidden: int = 32, clamp: bool = True) -> None:
        super().__init__()
        self.flip = flip
        self.clamp = clamp
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor):
        a, b = (x[:, 1:], x[:, :1]) if self.flip else (x[:, :1], x[:, 1:])
        s, t = self.net(a).chunk(2, -1)
        if self.clamp:
            s = torch.tanh(s)
        b = b * torch.exp(s) + t
        out = torch.cat([b, a], 1) if self.flip else torch.cat([a, b], 1)
        return out, s.sum(-1)


class Flow(nn.Module):
    def __init__(self, layers: int = 4, clamp: bool = True) -> None:
        super().__init__()
        self.couplings = nn.ModuleList(Coupling(i % 2 == 1, clamp=clamp) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per point under a standard normal base."""
        logdet = torch.zeros(len(x))
        for c in self.couplings:
            x, ld = c(x)
            logdet = logdet + ld
        return 0.5 * x.pow(2).sum(-1) + math.log(2 * math.pi) - logdet


class BilinearNet(nn.Module):
    """ReLU features multiplied by a linear gate (a multiplicative interaction), then a head."""

    def __init__(self, hidden: int = 48, classes: int = 10) -> None:
        super().__init__()
        self.feat = nn.Linear(64, hidden)
        self.gate = nn.Linear(64, hidden)
        self.head = nn.Linear(hidden, classes)
        self.last_features = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.feat(x)
        self.last_features = pre  # kept with its graph: a penalty on it is part of the loss
        return self.head(F.relu(pre) * (1 + self.gate(x)))


# -- helpers --------------------------------------------------------------------------------------


def loop(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    loss_at: Callable[[int], torch.Tensor],
    before: Callable[[int], None] | None = None,
) -> None:
    """A plain loop for losses that are not ``loss_fn(model(x), y)``."""
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        loss = loss_at(step)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _finite(xs) -> list[float]:
    return [x for x in xs if math.isfinite(x)]


def warmup_cosine(opt: torch.optim.Optimizer, peak: float, warmup: int, total: int):
    def before(step: int) -> None:
        if step < warmup:
            lr = peak * (step + 1) / warmup
        else:
            lr = 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
        for g in opt.param_groups:
            g["lr"] = lr

    return before


# -- attention-logit growth -----------------------------------------------------------------------


@scenario(
    "tied_decoder",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="q/k projections put in a 'fast' group at 40x the LR with no weight decay",
)
def h4_attn_logits_fast_qk_tied_adamw(ctx: Context) -> None:
    """A decoder whose query and key projections were put in a parameter group meant for newly
    added adapters (LR x40, weight decay 0): the attention logits grow step after step."""
    gen = seeded(401)
    model = TiedDecoder()
    qk = [p for n, p in model.named_parameters() if n.endswith(("attn.q.weight", "attn.k.weight"))]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 4e-2, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=0.1,
    )
    peaks: list[float] = []

    def record(step: int) -> None:
        if step > 0:
            peaks.append(max(float(b.attn.last_logits.abs().max()) for b in model.blocks))

    fit(ctx, model, opt, text_batches(gen), 160, loss_fn=lm_loss, before=record, classifier=False)
    ctx.check("attention logits grew 10x", _mean(peaks[-10:]) > 10 * _mean(peaks[:10]))


# -- output-logit divergence ----------------------------------------------------------------------


@scenario(
    "gptj",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="an entropy bonus meant to be added was subtracted: the loss rewards confident logits",
)
def h4_output_logits_entropy_sign_gptj_adam(ctx: Context) -> None:
    """A GPT-J trained with an entropy regulariser whose sign was flipped (minimising entropy
    instead of encouraging it, weight 1.0): the output logits grow without bound."""
    gen = seeded(402)
    model = hf_gptj()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    peaks: list[float] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = hf_forward(m, x)
        peaks.append(float(logits.detach().abs().max()))
        return logits

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        logits = last[0]
        p = torch.log_softmax(logits, -1)
        entropy = -(p.exp() * p).sum(-1).mean()
        return loss + 1.0 * entropy

    last: list[torch.Tensor] = []

    def forward_keep(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = forward(m, x)
        last[:] = [out]
        return out

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        160,
        loss_fn=lm_loss,
        forward=forward_keep,
        extra_loss=extra,
        classifier=False,
    )
    ctx.check("output logits grew 10x", _mean(peaks[-10:]) > 10 * _mean(peaks[1:11]))


# -- learning rate too high -----------------------------------------------------------------------


@scenario(
    "silu_mlp",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="LR 1.5 copied from a linear-probe config onto a 3-layer SiLU MLP",
)
def h4_lr_fast_silu_mlp_sgd(ctx: Context) -> None:
    """Digits on a SiLU MLP with plain SGD at an LR that suited a linear probe: it blows up."""
    gen = seeded(403)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=LR_FAST)
    fit(ctx, model, opt, digit_batches(gen), 120)
    fin = _finite(ctx.losses)
    ctx.check("loss rose far above its start", len(fin) < 120 or max(fin) > 5 * ctx.losses[0])


LR_FAST = 1.5


@scenario(
    "phi",
    "sg_lion",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up towards 0.3 with Lion (a peak from a plain-SGD config)",
)
def h4_lr_warmup_overshoot_phi_lion(ctx: Context) -> None:
    """A Phi LM with a 200-step linear warm-up to a peak copied from an SGD config, run with
    Lion (whose sign updates want ~1000x less): it trains, then breaks as the warm-up climbs."""
    gen = seeded(404)
    model = hf_phi()
    opt = sgo.Lion(model.parameters(), lr=1e-5, weight_decay=0.0)
    peak, warm = 0.3, 200

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = peak * (step + 1) / warm

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        130,
        loss_fn=lm_loss,
        forward=hf_forward,
        before=before,
        classifier=False,
    )
    fin = _finite(ctx.losses)
    ctx.check("it learnt first", min(fin[:80]) < ctx.losses[0] - 0.5)


# -- a corrupted batch ----------------------------------------------------------------------------


@scenario(
    "vae",
    "rmsprop",
    "data_outlier",
    diverges=110,
    heldout=True,
    onset=110,
    note="one batch decoded as 0..255 pixels instead of 0..1",
)
def h4_outlier_unnormalised_batch_vae_rmsprop(ctx: Context) -> None:
    """A VAE on digits in [0, 1]; batch 110 came from a loader that forgot to divide by 255
    (here: pixel values x 255)."""
    gen = seeded(405)
    model = VAE()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = digit_batches(gen)

    def loss_at(step: int) -> torch.Tensor:
        x, _ = next(batches)
        if step == 110:
            x = x * 255.0
        return vae_loss(model, x)

    loop(ctx, model, opt, 170, loss_at)
    ctx.check("loss spiked at 110", ctx.losses[110] > 20 * max(ctx.losses[100:110]))


# -- a NaN from one module on one bad sample ------------------------------------------------------


@scenario(
    "tcn",
    "radam",
    "nonfinite",
    where="norm",
    diverges=95,
    heldout=True,
    onset=95,
    note="a silent (all-zero) recording meets an RMS normaliser without epsilon: 0/0",
)
def h4_nan_silent_series_tcn_radam(ctx: Context) -> None:
    """A causal dilated TCN forecasting waves, inputs RMS-normalised per series without an
    epsilon; batch 95 holds one all-zero series (a dead sensor), 0 / sqrt(0) is NaN."""
    gen = seeded(406)
    model = TCN()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    batches = wave_batches(gen)

    def alter_batches():
        for step, (x, y) in enumerate(batches):
            if step == 96:  # fit draws one probe batch first
                x, y = x.clone(), y.clone()
                x[4] = 0.0
                y[4] = 0.0
            yield x, y

    fit(ctx, model, opt, alter_batches(), 140, loss_fn=F.mse_loss, classifier=False)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 95, not after", all(finite[:95]) and not any(finite[95:]))
    ctx.check("it was learning", _mean(ctx.losses[85:95]) < 0.7 * _mean(ctx.losses[:5]))


# -- exploding gradients --------------------------------------------------------------------------


@scenario(
    "coupling_flow",
    "nesterov",
    "exploding_gradients",
    where=tuple(f"couplings.{i}" for i in range(6)),
    diverges="auto",
    heldout=True,
    note="affine couplings without the tanh bound on the log-scale, SGD without clipping",
)
def h4_exploding_unbounded_scale_flow_nesterov(ctx: Context) -> None:
    """A normalising flow of 6 affine couplings whose log-scales are left unbounded (the tanh
    was dropped for 'expressiveness'); the exp(s) factors compound and so do the gradients."""
    gen = seeded(407)
    model = Flow(layers=6, clamp=False)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    batches = moons_batches(gen)

    def loss_at(step: int) -> torch.Tensor:
        x, _ = next(batches)
        return model(x).mean()

    loop(ctx, model, opt, 150, loss_at)
    g = _finite(ctx.grad_norms)
    ctx.check("gradient norm grew 100x", len(g) < 150 or max(g) > 100 * _mean(g[:5]))


# -- dead units -----------------------------------------------------------------------------------


@scenario(
    "bilinear",
    "adagrad",
    "loss_of_plasticity",
    where="feat",
    diverges="auto",
    heldout=True,
    onset=60,
    note="an activation-sparsity penalty weighted 300 instead of 3e-2 pushes the ReLUs negative",
)
def h4_dead_units_sparsity_bilinear_adagrad(ctx: Context) -> None:
    """A bilinear classifier with an L1 penalty on its ReLU features (meant to make them sparse)
    weighted 10^4 too high, switched on at step 60: the pre-activations are driven below zero and the units die."""
    gen = seeded(408)
    model = BilinearNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 60:  # the regulariser is switched on after a 60-step warm start
            return loss
        return loss + 300.0 * F.relu(model.last_features).mean()

    fit(ctx, model, opt, digit_batches(gen), 160, extra_loss=extra)
    ctx.check("most feature units dead", dead_fraction(model.last_features.detach()) > 0.8)


# -- a frozen layer -------------------------------------------------------------------------------


@scenario(
    "gn_cnn",
    "nadam",
    "update_ratio_out_of_range",
    where="head",
    diverges=None,
    heldout=True,
    note="the head was replaced (new class count) after the optimizer had been built",
)
def h4_frozen_head_replaced_gn_cnn_nadam(ctx: Context) -> None:
    """A GroupNorm CNN 'fine-tuned' to 10 classes: the head is swapped after the optimizer was
    created, so the optimizer still holds the old head's tensors and the new one never moves."""
    gen = seeded(409)
    model = GNConvNet(classes=5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    model.head = nn.Linear(model.head.in_features, 10)
    before = model.head.weight.detach().clone()
    fit(ctx, model, opt, digit_batches(gen), 150)
    ctx.check("new head never changed", torch.equal(before, model.head.weight.detach()))
    ctx.check("the rest learnt", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:5]) - 0.2)


# -- softmax collapse -----------------------------------------------------------------------------


@scenario(
    "siamese",
    "adamax",
    "softmax_collapse",
    where="temperature",
    diverges=None,
    heldout=True,
    note="both InfoNCE views are the same tensor (augmentation bug); logit scale unclamped, LR 0.2",
)
def h4_softmax_collapse_same_view_siamese_adamax(ctx: Context) -> None:
    """A Siamese encoder trained with InfoNCE (``F.cross_entropy`` over the similarity matrix);
    a bug hands the same augmented view over twice, so the positives are trivially found, and
    the learnable logit scale (no clamp, in a group at 10x the LR) runs away: the softmax
    saturates to exactly 1.0 on the positives."""
    gen = seeded(410)
    model = SiameseEncoder(scale=math.log(1 / 0.07))
    scale = model.temperature.log_scale
    rest = [p for p in model.parameters() if p is not scale]
    opt = torch.optim.Adamax([{"params": rest}, {"params": [scale], "lr": 0.2}], lr=2e-2)
    collapsed: list[float] = []

    def forward(m: nn.Module, pair) -> torch.Tensor:
        out = m(pair)
        collapsed.append(collapsed_fraction(out.detach(), torch.arange(len(out))))
        return out

    def with_targets(batches):
        for a, b in batches:
            yield (a, b), torch.arange(len(a))

    fit(ctx, model, opt, with_targets(augmented_pairs(gen, same_view=True)), 160, forward=forward)
    ctx.check("positives collapsed (last 20 steps)", _mean(collapsed[-20:]) > 0.5)


# -- healthy controls -----------------------------------------------------------------------------


@scenario("phi", "adamw", "healthy", heldout=True, note="warm-up 20 steps then cosine, 3e-3")
def h4_healthy_phi_warmup_cosine_adamw(ctx: Context) -> None:
    gen = seeded(411)
    model = hf_phi()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        180,
        loss_fn=lm_loss,
        forward=hf_forward,
        before=warmup_cosine(opt, 3e-3, 20, 180),
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:5]) - 1.0)


@scenario("tied_decoder", "adam", "healthy", heldout=True, note="constant 2e-3, no warm-up")
def h4_healthy_tied_decoder_adam(ctx: Context) -> None:
    gen = seeded(412)
    model = TiedDecoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, text_batches(gen), 160, loss_fn=lm_loss, classifier=False)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:5]) - 1.0)


@scenario("vae", "adam", "healthy", heldout=True, note="MSE + KL on digits, 1e-3")
def h4_healthy_vae_adam(ctx: Context) -> None:
    gen = seeded(413)
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = digit_batches(gen)

    def loss_at(step: int) -> torch.Tensor:
        return vae_loss(model, next(batches)[0])

    loop(ctx, model, opt, 170, loss_at)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:5]))


@scenario("gn_cnn", "nesterov", "healthy", heldout=True, note="SGD 0.05, Nesterov momentum 0.9")
def h4_healthy_gn_cnn_nesterov(ctx: Context) -> None:
    gen = seeded(414)
    model = GNConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, digit_batches(gen), 150)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.3 * _mean(ctx.losses[:5]))
