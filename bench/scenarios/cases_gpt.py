"""Decoder-transformer scenarios: a nanoGPT-style model written here, and Hugging Face GPT-2 /
BERT built from configs (no download)."""

from __future__ import annotations

import math

import torch
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    Decoder,
    bert_batches,
    fit,
    hf_bert,
    hf_gpt2,
    lm_loss,
    ramp,
    scenario,
    seeded,
    text_batches,
)


def attention_logit_max(model: Decoder, idx: torch.Tensor) -> float:
    """The largest causal q.k/sqrt(d) over the blocks of our Decoder, computed directly."""
    with torch.no_grad():
        x = model.tok(idx) + model.pos(torch.arange(idx.shape[1]))
        top = 0.0
        t = idx.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        for block in model.blocks:
            b, _, d = x.shape
            q, k, _ = block.attn.qkv(block.ln1(x)).split(d, dim=-1)
            h = block.attn.heads
            q, k = (z.reshape(b, t, h, -1).transpose(1, 2) for z in (q, k))
            s = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
            top = max(top, float(s.masked_fill(~mask, 0).abs().amax()))
            x = block(x)
    return top


def hf_gpt2_attention_logit_max(model: nn.Module, idx: torch.Tensor) -> float:
    """The same for a Hugging Face GPT-2, from its hidden states and each block's c_attn."""
    with torch.no_grad():
        states = model(input_ids=idx, output_hidden_states=True).hidden_states
        top, t = 0.0, idx.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        for block, x in zip(model.transformer.h, states, strict=False):
            b, _, d = x.shape
            h = model.config.n_head
            q, k, _ = block.attn.c_attn(block.ln_1(x)).split(d, dim=-1)
            q, k = (z.reshape(b, t, h, -1).transpose(1, 2) for z in (q, k))
            s = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
            top = max(top, float(s.masked_fill(~mask, 0).abs().amax()))
    return top


def log_partition(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), dim=-1).mean())


def _param_groups(model: nn.Module, special: str, lr: float, base: float, wd: float = 0.0):
    fast = [p for n, p in model.named_parameters() if special in n]
    rest = [p for n, p in model.named_parameters() if special not in n]
    return [{"params": rest, "lr": base}, {"params": fast, "lr": lr}], wd


# -- attention-logit growth -----------------------------------------------------------------------


@scenario(
    "gpt",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
)
def attn_growth_gpt_adamw(ctx: Context) -> None:
    """No QK-norm, no weight decay, and a learning rate 30x too high on the query/key/value
    projection: the attention logits grow ~100x and attention entropy collapses; the loss stalls
    well above a healthy run's (Wortsman et al. 2023)."""
    gen = seeded(51)
    model = Decoder(dim=48, heads=2, layers=2)
    groups, _ = _param_groups(model, "attn.qkv", 6e-2, 2e-3)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    batches = text_batches(gen)
    probe, _ = next(text_batches(seeded(1)))
    start = attention_logit_max(model, probe)
    fit(ctx, model, opt, batches, 220, loss_fn=lm_loss)
    ctx.check("attention logits grew 50x", attention_logit_max(model, probe) > 50 * start)


@scenario(
    "hf",
    "adamw",
    "attention_logit_growth",
    where=("transformer.h.0.attn", "transformer.h.1.attn"),
    diverges=None,
    heldout=True,
)
def attn_growth_hf_gpt2(ctx: Context) -> None:
    gen = seeded(52)
    model = hf_gpt2(dim=48)
    groups, _ = _param_groups(model, "attn.c_attn", 5e-2, 2e-3)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    probe, _ = next(text_batches(seeded(1)))
    start = hf_gpt2_attention_logit_max(model, probe)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("attention logits grew 50x", hf_gpt2_attention_logit_max(model, probe) > 50 * start)


# -- output-logit divergence ----------------------------------------------------------------------


@scenario("gpt", "adam", "output_logit_divergence", where="lm_head", diverges=None)
def output_logits_gpt_adam(ctx: Context) -> None:
    """The untied output head trains at a learning rate of 1.0 (a per-group override meant for
    another run) without weight decay or z-loss: the log-partition drifts from ~5 to ~30 and the
    loss jumps."""
    gen = seeded(53)
    model = Decoder(dim=32)
    groups, _ = _param_groups(model, "lm_head", 1.0, 1e-3)
    opt = torch.optim.Adam(groups)
    probe, _ = next(text_batches(seeded(1)))
    with torch.no_grad():
        start = log_partition(model(probe))
    fit(ctx, model, opt, text_batches(gen), 220, loss_fn=lm_loss)
    with torch.no_grad():
        ctx.check("|log Z| drifted by 20", abs(log_partition(model(probe)) - start) > 20)


@scenario("hf", "adamw", "update_ratio_out_of_range", where="bert.encoder.layer.0", diverges=None)
def frozen_lr0_bert_layer(ctx: Context) -> None:
    """BERT's first encoder layer sits in a parameter group whose learning rate is 0 (a layer-wise
    decay schedule with a factor of 0): it never moves while the rest trains."""
    gen = seeded(54)
    model = hf_bert()
    groups, _ = _param_groups(model, "encoder.layer.0.", 0.0, 1e-3)
    groups.reverse()
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01)
    layer = model.bert.encoder.layer[0]
    before = [p.detach().clone() for p in layer.parameters()]
    fit(ctx, model, opt, bert_batches(gen), 160, forward=lambda m, x: m(input_ids=x).logits)
    ctx.check(
        "layer 0 unchanged",
        all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=False)),
    )


# -- a NaN from one module on one bad sample --------------------------------------------------------


class RMSNoEps(nn.Module):
    """RMS-normalises the token embeddings, without an epsilon (the bug)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.pow(2).mean(-1, keepdim=True).sqrt()


class NormedDecoder(Decoder):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tok = nn.Embedding(self.tok.num_embeddings, self.tok.embedding_dim, padding_idx=0)
        nn.init.normal_(self.tok.weight, std=0.02)
        with torch.no_grad():
            self.tok.weight[0].zero_()
        self.emb_norm = RMSNoEps()

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb_norm(self.tok(idx)) * 0.1 + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


@scenario("gpt", "adamw", "nonfinite", where="emb_norm", diverges=77, onset=77)
def nan_padding_row_gpt(ctx: Context) -> None:
    """One sequence at step 77 holds a padding token (id 0, a zero embedding): the RMS norm
    without epsilon divides 0 by 0 on that one row."""
    gen = seeded(55)
    model = NormedDecoder(dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 77:
            x = x.clone()
            x[3, 10] = 0
        return x, y

    data = ((x.clamp(min=1), y) for x, y in text_batches(gen))  # the corpus itself never holds id 0
    fit(ctx, model, opt, data, 110, loss_fn=lm_loss, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 77, not after", all(finite[:77]) and not finite[77])


# -- learning rate above the stability limit ----------------------------------------------------------


@scenario(
    "gpt",
    "adamw",
    "sharpness_above_limit",
    diverges="auto",
    note="warm-up to a peak of 3.0, far past the limit",
)
def lr_slow_gpt_adamw(ctx: Context) -> None:
    gen = seeded(56)
    model = Decoder(dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = ramp(step, 1e-4, 3.0, 200)

    fit(ctx, model, opt, text_batches(gen), 230, loss_fn=lm_loss, before=warmup)


@scenario("gpt", "sgd", "sharpness_above_limit", diverges="auto", note="blows up in ~10 steps")
def lr_fast_gpt_sgd(ctx: Context) -> None:
    gen = seeded(57)
    model = Decoder(dim=32)
    opt = torch.optim.SGD(model.parameters(), lr=40.0)
    fit(ctx, model, opt, text_batches(gen), 50, loss_fn=lm_loss)


# -- Adam's second moment poisoned -------------------------------------------------------------------


@scenario("gpt", "adamw", "adam_second_moment_poisoned", diverges=None)
def adam_poisoned_gpt(ctx: Context) -> None:
    """A gradient-accumulation bug sums instead of averaging for one step (x1e3): AdamW's second
    moment absorbs it and the next few hundred updates are ~100x too small."""
    gen = seeded(58)
    model = Decoder(dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    snaps = []

    def track(step: int) -> None:
        if step in (15, 45, 110, 140):
            snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 1e3 if step == 50 else loss

    fit(ctx, model, opt, text_batches(gen), 170, loss_fn=lm_loss, before=track, extra_loss=bug)
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- a frozen layer (a detached path) ------------------------------------------------------------------


class DetachedDecoder(Decoder):
    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx).detach() + self.pos(torch.arange(idx.shape[1]))  # the bug: .detach()
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


@scenario("gpt", "adamw", "update_ratio_out_of_range", where="tok", diverges=None)
def frozen_detached_embedding_gpt(ctx: Context) -> None:
    gen = seeded(59)
    model = DetachedDecoder(dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    before = model.tok.weight.detach().clone()
    fit(ctx, model, opt, text_batches(gen), 150, loss_fn=lm_loss)
    ctx.check("embedding unchanged", torch.equal(before, model.tok.weight))


# -- a data outlier -----------------------------------------------------------------------------------


@scenario("gpt", "sg_spam", "data_outlier", diverges=120, onset=120)
def outlier_random_tokens_gpt(ctx: Context) -> None:
    """At step 120 a batch of uniformly random bytes (a corrupt shard) reaches the model."""
    gen = seeded(60)
    model = Decoder(dim=32)
    opt = sgo.SPAM(model.parameters(), lr=3e-3, fused=False)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:
            g = torch.Generator().manual_seed(0)
            z = torch.randint(0, 128, (x.shape[0], x.shape[1] + 1), generator=g)
            return z[:, :-1], z[:, 1:]
        return x, y

    fit(ctx, model, opt, text_batches(gen), 170, loss_fn=lm_loss, alter=alter)
    ctx.check("loss spiked at 120", ctx.losses[120] > 1.5 * max(ctx.losses[110:120]))


# -- benign AMP overflow -------------------------------------------------------------------------------


@scenario("gpt", "adamw", "amp_overflow", diverges=None)
def amp_overflow_gpt_fp16(ctx: Context) -> None:
    gen = seeded(61)
    model = Decoder(dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=40)
    fit(ctx, model, opt, text_batches(gen), 160, loss_fn=lm_loss, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**24) >= 2)
    ctx.check("loss fell", ctx.losses[-1] < ctx.losses[0])


# -- healthy controls ----------------------------------------------------------------------------------


@scenario("gpt", "adamw", "healthy", note="warm-up + cosine; gradient norm bursts of 3-5x")
def healthy_gpt_adamw(ctx: Context) -> None:
    gen = seeded(62)
    model = Decoder(dim=48, layers=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 30)
        opt.param_groups[0]["lr"] = 3e-3 * warm * (0.55 + 0.45 * math.cos(math.pi * step / 250))

    fit(ctx, model, opt, text_batches(gen), 250, loss_fn=lm_loss, before=schedule)


@scenario("hf", "adamw", "healthy", note="Hugging Face GPT-2 from a config, Adam from step 0")
def healthy_hf_gpt2(ctx: Context) -> None:
    gen = seeded(63)
    model = hf_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=lambda m, x: m(input_ids=x).logits,
    )


@scenario("hf", "adamw", "healthy", note="Hugging Face BERT classifier from a config")
def healthy_hf_bert(ctx: Context) -> None:
    gen = seeded(64)
    model = hf_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    fit(ctx, model, opt, bert_batches(gen), 200, forward=lambda m, x: m(input_ids=x).logits)
