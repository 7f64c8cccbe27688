"""Held-out scenarios, set 52 (``h52_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face CWM (one control under fp16 autocast), Ministral-3, Solar-Open (MoE),
HY-V3 (MoE) and AFMoE causal LMs built from tiny configs (no download) on the standard-library
byte stream; and, in plain PyTorch, language-model training schemes: a RETRO-style LM with
cross-attention to a retrieved neighbour, a Bradley-Terry reward model with attention pooling
on preference pairs (fp16 autocast), DPO
against a frozen reference policy (length-normalised log-probabilities), prefix tuning of a
frozen decoder through a reparameterisation MLP, a SimCSE-style contrastive sentence encoder
(dropout as the augmentation), multi-token-prediction heads on a decoder trunk and a recurrent
draft model distilled from a frozen target for speculative decoding.

Optimizers: Adam, AdamW, RAdam, Adamax, Adagrad, RMSprop, SGD (plain, momentum and Nesterov)
from ``torch.optim`` and steadygrad.optim's Lion, StableSPAM, AdaBelief, AdEMAMix and Grams
(used as optimizers only).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Block,
    Context,
    Decoder,
    collapsed_fraction,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
    text_bytes,
)

VOCAB = 128


def _finite(values) -> list[bool]:
    return [math.isfinite(v) for v in values]


# -- Hugging Face causal LMs from tiny configs ----------------------------------------------------


def _hf_lm(kind: str, **extra):
    """A tiny causal LM of the given Hugging Face architecture, built from a config."""
    import transformers

    transformers.logging.set_verbosity_error()
    classes = {
        "cwm": ("CwmConfig", "CwmForCausalLM"),
        "ministral3": ("Ministral3Config", "Ministral3ForCausalLM"),
        "solar_open": ("SolarOpenConfig", "SolarOpenForCausalLM"),
        "hy_v3": ("HYV3Config", "HYV3ForCausalLM"),
        "afmoe": ("AfmoeConfig", "AfmoeForCausalLM"),
    }[kind]
    config_cls = getattr(transformers, classes[0])
    model_cls = getattr(transformers, classes[1])
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    kw.update(extra)
    return model_cls(config_cls(**kw))


def _hf_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


_MOE = dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)


@scenario(
    "h52_hf_cwm_lm",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=60,
    note="z-loss added with the wrong sign from step 60",
    heldout=True,
)
def h52_cwm_zloss_wrong_sign(ctx: Context) -> None:
    """A z-loss (``3e-2 * logZ**2``, meant to keep the softmax normaliser near zero) is
    switched on at step 60, but subtracted instead of added. Its gradient now rewards a large
    log Z: the head's logits are pushed up and apart step after step, log Z runs away and the
    cross-entropy climbs once the inflated logits overwhelm the learnt ranking."""
    gen = seeded(5201)
    model = _hf_lm("cwm")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seen: dict[str, torch.Tensor] = {}
    logz: list[float] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen["logits"] = m(input_ids=x).logits
        return seen["logits"]

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(seen["logits"].float(), -1)
        logz.append(float(z.mean().detach()))
        if step < 60:
            return loss
        return loss - 3e-2 * (z**2).mean()  # the bug: should be ``+``

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=extra,
        classifier=False,
    )
    ctx.check("log Z at onset is moderate", abs(logz[60]) < 15)
    late = [v for v in logz[150:] if math.isfinite(v)]
    ctx.check("log Z ran away (10x the onset value)", bool(late) and max(late) > 10 * abs(logz[60]))


@scenario(
    "h52_hf_solar_open_lm",
    "sg_stablespam",
    "gradient_spike",
    where=("lm_head.weight", "lm_head"),
    diverges=None,
    onset=120,
    note="one step's lm_head gradient not divided by 512 accumulated micro-batches",
    heldout=True,
)
def h52_solar_open_accum_spike(ctx: Context) -> None:
    """On the first step after a resume (step 120) the gradient-accumulation path for the
    untied head skips the division by the 512 micro-batches it summed: ``lm_head.weight``'s
    gradient is 512x too large for that one step. StableSPAM's spike-aware clipping absorbs
    it; the loss carries on as before."""
    gen = seeded(5202)
    model = _hf_lm("solar_open", n_routed_experts=4, **_MOE)
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3)
    state = {"step": 0}
    model.lm_head.weight.register_hook(lambda g: g * 512.0 if state["step"] == 120 else g)

    def before(step: int) -> None:
        state["step"] = step

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        190,
        loss_fn=lm_loss,
        forward=_hf_forward,
        before=before,
        classifier=False,
    )
    gn = ctx.grad_norms
    ctx.check("gradient norm at 120 is 50x the steps before", gn[120] > 50 * max(gn[100:120]))
    pre = sum(ctx.losses[100:120]) / 20
    ctx.check("no loss spike after it", max(ctx.losses[121:130]) < pre + 0.5)
    ctx.check("training carried on", sum(ctx.losses[-20:]) / 20 < pre + 0.1)


@scenario(
    "h52_hf_hy_v3_lm",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=60,
    note="warm-up peak scaled twice by the linear-scaling rule",
    heldout=True,
)
def h52_hy_v3_warmup_peak_typo(ctx: Context) -> None:
    """The peak LR was scaled by the linear-scaling rule twice (once in the config, once in
    the launcher), so the warm-up, instead of stopping at 0.3, keeps ramping from step 60 to
    a peak far above the curvature limit of Nesterov SGD: the loss blows up during warm-up."""
    gen = seeded(5203)
    model = _hf_lm("hy_v3", **_MOE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def schedule(step: int) -> None:
        if step < 60:
            lr = 0.01 + (0.3 - 0.01) * step / 60
        else:
            lr = 0.3 * (1 + (step - 60) / 10)  # the double-scaled ramp keeps rising
        opt.param_groups[0]["lr"] = lr

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=_hf_forward,
        before=schedule,
        classifier=False,
    )
    ctx.check("loss fell during the sane part of warm-up", ctx.losses[55] < ctx.losses[0] - 0.3)
    after = [v if math.isfinite(v) else float("inf") for v in ctx.losses[60:]]
    ctx.check("loss blew up past 100", max(after) > 100)
    ctx.check("and never came back", min(after[-30:]) > ctx.losses[55] + 1.0)


@scenario(
    "h52_hf_afmoe_lm",
    "radam",
    "update_ratio_out_of_range",
    where="model.layers.0",
    diverges=None,
    note="the dense layer 0 left out of the optimizer's parameter groups",
    heldout=True,
)
def h52_afmoe_dense_layer_left_out(ctx: Context) -> None:
    """The optimizer's parameter groups are built from the embeddings, the final norm, the
    head and ``layers[num_dense_layers:]`` (the MoE layers, which a ported recipe gives their
    own settings); the dense layer 0 is in no group. Its gradients are computed every step but
    never applied: its update/weight ratio is exactly 0 for the whole run."""
    gen = seeded(5204)
    model = _hf_lm("afmoe", num_dense_layers=1, num_shared_experts=1, **_MOE)
    inner = model.model
    moe = [p for layer in inner.layers[1:] for p in layer.parameters()]
    rest = [*inner.embed_tokens.parameters(), *inner.norm.parameters(), *model.lm_head.parameters()]
    opt = torch.optim.RAdam([{"params": rest}, {"params": moe}], lr=3e-3)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = text_batches(gen)
    fit(ctx, model, opt, batches, 200, loss_fn=lm_loss, forward=_hf_forward, classifier=False)
    x, y = next(batches)
    lm_loss(_hf_forward(model, x), y).backward()
    layer0 = [n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")]
    params = dict(model.named_parameters())
    ctx.check(
        "layer 0's weights never changed", all(torch.equal(params[n], start[n]) for n in layer0)
    )
    ctx.check(
        "its gradients are not zero",
        sum(float(params[n].grad.norm()) for n in layer0 if params[n].grad is not None) > 1e-3,
    )
    ctx.check(
        "layer 1 moved",
        not torch.equal(
            params["model.layers.1.self_attn.q_proj.weight"],
            start["model.layers.1.self_attn.q_proj.weight"],
        ),
    )
    ctx.check("the rest trained", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] - 0.8)


@scenario(
    "h52_hf_ministral3_lm",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=120,
    note="one step backpropagated a 65536x-scaled loss (stale loss scale)",
    heldout=True,
)
def h52_ministral3_stale_loss_scale(ctx: Context) -> None:
    """A hand-rolled mixed-precision loop keeps a loss scale of 65536; after an fp16 run was
    moved to fp32 the scaling was removed, except on the step where a gradient-accumulation
    boundary coincided with an evaluation (step 120), which still backpropagated the scaled loss
    and never unscaled it. That one gradient, 65536x too large on every tensor, fills Adam's
    second moment, which with beta2 = 0.999 takes thousands of steps to forget: the updates
    after it are hundreds of times smaller and the loss stops improving."""
    gen = seeded(5205)
    model = _hf_lm("ministral3")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    params = dict(model.named_parameters())
    snap: dict[int, dict[str, torch.Tensor]] = {}
    moves: dict[int, dict[str, float]] = {}

    def before(step: int) -> None:
        if step - 1 in snap:
            old = snap.pop(step - 1)
            moves[step - 1] = {n: float((p.detach() - old[n]).norm()) for n, p in params.items()}
        if step % 5 == 0:
            snap[step] = {n: p.detach().clone() for n, p in params.items()}

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_hf_forward,
        before=before,
        extra_loss=lambda step, loss: loss * 65536.0 if step == 120 else loss,
        classifier=False,
    )
    shrink = []
    for n in params:
        pre = [m[n] for s, m in moves.items() if 60 <= s < 120]
        post = [m[n] for s, m in moves.items() if 160 <= s < 300]
        shrink.append(sum(pre) / len(pre) / max(sum(post) / len(post), 1e-12))
    shrink.sort()
    ctx.check(
        "the median tensor's updates after step 120 are 10x smaller", shrink[len(shrink) // 2] > 10
    )
    ctx.check(
        "gradient at 120 was >1000x the usual", ctx.grad_norms[120] > 1000 * ctx.grad_norms[110]
    )
    ctx.check(
        "loss stopped improving after it",
        sum(ctx.losses[-20:]) / 20 > sum(ctx.losses[100:120]) / 20 - 0.05,
    )


@scenario(
    "h52_hf_cwm_lm", "rmsprop", "healthy", note="fp16 autocast with a GradScaler", heldout=True
)
def h52_cwm_amp_healthy(ctx: Context) -> None:
    """A healthy control: the CWM LM under fp16 autocast with a GradScaler, RMSprop."""
    gen = seeded(5206)
    model = _hf_lm("cwm")
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=_hf_forward,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    ctx.check("trained normally", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] - 1.0)


# -- RETRO-style LM: chunk cross-attention to retrieved neighbours --------------------------------


class RetroXAttn(nn.Module):
    """Single-head cross-attention from the LM's hidden states to neighbour encodings."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_logits: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        logits = self.q(h) @ self.k(n).transpose(1, 2) * self.scale
        self.last_logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ self.v(n))


class RetroLM(nn.Module):
    """Decoder block, cross-attention to an encoded neighbour chunk, decoder block, head.
    The input packs the 32 context tokens and the 32 neighbour tokens side by side."""

    def __init__(self, scale: float, dim: int = 32, context: int = 32) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(context, dim)
        self.nbr_pos = nn.Embedding(context, dim)
        self.nbr_enc = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.block1 = Block(dim, 2)
        self.ln_x = nn.LayerNorm(dim)
        self.xattn = RetroXAttn(dim, scale)
        self.block2 = Block(dim, 2)
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        x, nbr = packed[:, : self.context], packed[:, self.context :]
        pos = torch.arange(self.context)
        h = self.block1(self.tok(x) + self.pos(pos))
        n = self.nbr_enc(self.tok(nbr) + self.nbr_pos(pos))
        h = h + self.xattn(self.ln_x(h), n)
        return self.lm_head(self.ln_f(self.block2(h)))


def retro_batches(gen: torch.Generator, batch: int = 16, length: int = 32, noise: float = 0.15):
    """Windows of the byte stream with a retrieved neighbour: a near-duplicate of the window's
    continuation (a duplicated document in the retrieval database), 15% of its tokens differ."""
    data = text_bytes() % VOCAB
    while True:
        start = torch.randint(0, len(data) - length - 2, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(length + 1)
        win = data[idx]
        nbr = win[:, 1:].clone()
        swap = torch.rand(nbr.shape, generator=gen) < noise
        nbr[swap] = torch.randint(0, VOCAB, (int(swap.sum()),), generator=gen)
        yield torch.cat([win[:, :-1], nbr], 1), win[:, 1:]


def _entropy(logits: torch.Tensor) -> float:
    p = torch.softmax(logits.float(), -1)
    return float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())


@scenario(
    "h52_retro_lm",
    "adam",
    "attention_logit_growth",
    where="xattn",
    diverges=None,
    note="cross-attention without the 1/sqrt(d) scale, LR 1e-2",
    heldout=True,
)
def h52_retro_xattn_unscaled(ctx: Context) -> None:
    """The hand-written chunk cross-attention multiplies q.k by 1.0 instead of 1/sqrt(d) (the
    scale argument defaulted to 1.0), trained at LR 1e-2. The neighbours contain the answer,
    so the cross-attention is pulled towards sharp copying; with no scale its logits grow
    until the softmax saturates one-hot (entropy near 0): the layer now copies one neighbour
    token per position, corrupted ones included, and passes almost no gradient to q and k. The
    loss does not blow up within the run."""
    gen = seeded(5207)
    model = RetroLM(scale=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    spans: list[float] = []
    ents: list[float] = []

    def before(step: int) -> None:
        if model.xattn.last_logits is not None and step % 10 == 0:
            lg = model.xattn.last_logits
            spans.append(float(lg.amax(-1).sub(lg.amin(-1)).mean()))
            ents.append(_entropy(lg))

    fit(ctx, model, opt, retro_batches(gen), 300, loss_fn=lm_loss, before=before, classifier=False)
    ctx.check("cross-attention logit span grew 10x", max(spans[-5:]) > 10 * spans[1])
    ctx.check("cross-attention saturated (entropy < 0.1 nats)", min(ents[-5:]) < 0.1)


@scenario("h52_retro_lm", "sg_grams", "healthy", heldout=True)
def h52_retro_healthy(ctx: Context) -> None:
    """A healthy control: the RETRO-style LM with the 1/sqrt(d) scale, Grams at LR 2e-3."""
    gen = seeded(5208)
    model = RetroLM(scale=32**-0.5)
    opt = sgo.Grams(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, retro_batches(gen), 250, loss_fn=lm_loss, classifier=False)
    ctx.check("trained normally", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] - 1.5)


# -- Bradley-Terry reward model on preference pairs (fp16 autocast) -------------------------------


class AttentionPool(nn.Module):
    """Attention pooling over tokens with a hand-written softmax: exp(score / 0.25), no
    subtraction of the maximum, weights applied with a batched matmul, then normalised."""

    def __init__(self, dim: int, temperature: float = 0.25) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.temperature = temperature

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = torch.exp(self.score(h)[..., 0] / self.temperature) * mask
        return torch.bmm(w[:, None].to(h.dtype), h)[:, 0] / w.sum(-1, keepdim=True)


class RewardModel(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.enc = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.pool = AttentionPool(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.enc(self.tok(x)), mask))[:, 0]


def _pairs(gen: torch.Generator, batch: int, length: int = 64, corrupt: float = 0.05):
    """Chosen: real text; rejected: the same text with 5% of its tokens corrupted."""
    data = text_bytes() % VOCAB
    start = torch.randint(0, len(data) - length - 1, (batch,), generator=gen)
    chosen = data[start[:, None] + torch.arange(length)]
    rejected = chosen.clone()
    swap = torch.rand(rejected.shape, generator=gen) < corrupt
    rejected[swap] = torch.randint(0, VOCAB, (int(swap.sum()),), generator=gen)
    return chosen, rejected


def _train_reward(ctx: Context, model: RewardModel, opt, steps: int, gen, amp: bool, watch=None):
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if amp else None
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        chosen, rejected = _pairs(gen, 16)
        x = torch.cat([chosen, rejected])
        mask = torch.ones(x.shape)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            r = model(x, mask)
        if watch is not None:
            watch(step, x, mask)
        loss = -F.logsigmoid(r.float()[:16] - r.float()[16:]).mean()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            loss.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "h52_bt_reward_model",
    "adamax",
    "amp_overflow",
    where="pool",
    diverges="auto",
    note="hand-written softmax (no max subtraction) in the attention pool under fp16 autocast; "
    "the pool first overflows at step 37, the loss first goes NaN at 43",
    heldout=True,
)
def h52_bt_attention_pool_fp16_overflow(ctx: Context) -> None:
    """The reward model pools tokens with a hand-written softmax, ``exp(score / 0.25)`` with no
    subtraction of the maximum: fine in fp32 (exp overflows only past 88) and in bf16, but the
    run is under fp16 autocast, where the pooled matmul's weights overflow past
    exp(11.1) = 65504. As the scorer learns to single out the corrupted tokens its scores
    grow; from step 37 the pool's weighted sums, then its weights, exceed 65504: the pool
    returns inf or inf/inf = NaN, the loss is NaN on a run of steps from 43 on, each skipped by
    the GradScaler, whose scale collapses (the overflow stops near step 100, when the scorer's
    scores happen to shrink again)."""
    gen = seeded(5209)
    model = RewardModel()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    first: list[tuple[int, str]] = []
    fp32_ok: list[bool] = []
    outputs: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if name:
            mod.register_forward_hook(lambda m, i, o, n=name: outputs.__setitem__(n, o.detach()))

    def watch(step: int, x: torch.Tensor, mask: torch.Tensor) -> None:
        bad = [n for n, o in outputs.items() if not torch.isfinite(o).all()]
        if bad and not first:
            order = [n for n, _ in model.named_modules() if n in bad]
            first.append((step, "pool" if "pool" in bad and "pool.score" not in bad else order[0]))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model(x, mask)).all()))
        outputs.clear()

    _train_reward(ctx, model, opt, 300, gen, amp=True, watch=watch)
    fin = _finite(ctx.losses)
    start = fin.index(False) if not all(fin) else len(fin)
    ctx.check("the loss became non-finite", start < len(fin))
    ctx.check(
        "the pool is the first module with a non-finite output, no later than the loss",
        bool(first) and first[0][1] == "pool" and first[0][0] <= start,
    )
    ctx.check("in fp32 the same batch is finite", fp32_ok[:1] == [True])
    ctx.check("several steps overflowed (skipped by the GradScaler)", fin.count(False) >= 5)
    ctx.check("the scaler backed off by 100x or more", min(ctx.scales) <= 2.56)


# -- DPO against a frozen reference ---------------------------------------------------------------


class SeqLogProb(nn.Module):
    """Length-normalised log-probability of each response (SimPO-style averaging)."""

    def forward(self, logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
        return (logp * mask).sum(-1) / mask.sum(-1)  # no guard for an empty response


class DPOPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lm = Decoder(vocab=VOCAB, dim=32, heads=2, layers=2, context=24)
        self.seq_logp = SeqLogProb()

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.seq_logp(self.lm(seq[:, :-1]), seq[:, 1:], mask[:, 1:])


def _dpo_batch(gen: torch.Generator, batch: int = 16, prompt: int = 16, resp: int = 8):
    data = text_bytes() % VOCAB
    start = torch.randint(0, len(data) - prompt - resp - 1, (batch,), generator=gen)
    real = data[start[:, None] + torch.arange(prompt + resp)]
    chosen = real.clone()
    rejected = real.clone()
    rejected[:, prompt:] = torch.randint(0, VOCAB, (batch, resp), generator=gen)
    mask = torch.zeros(batch, prompt + resp)
    mask[:, prompt:] = 1.0
    return chosen, rejected, mask, mask.clone()


def _run_dpo(ctx: Context, opt_fn, steps: int, bad_step: int | None, seed: int, setup=None):
    gen = seeded(seed)
    policy = DPOPolicy()
    if setup is not None:
        setup(policy)
    ref = copy.deepcopy(policy.lm).requires_grad_(False)
    opt = opt_fn(policy.parameters())
    ctx.attach(policy, opt)
    beta = 2.0

    def ref_logp(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # the offline caching script guarded the length; the training module does not
        with torch.no_grad():
            logp = torch.log_softmax(ref(seq[:, :-1]), -1).gather(-1, seq[:, 1:, None])[..., 0]
            return (logp * mask[:, 1:]).sum(-1) / mask[:, 1:].sum(-1).clamp_min(1.0)

    for step in range(steps):
        chosen, rejected, mc, mr = _dpo_batch(gen)
        if step == bad_step:  # one rejected response was truncated away entirely
            mr[3] = 0.0
            rejected[3, 16:] = 0
        pc, pr = policy(chosen, mc), policy(rejected, mr)
        margin = (pc - ref_logp(chosen, mc)) - (pr - ref_logp(rejected, mr))
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(policy))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return policy


@scenario(
    "h52_dpo_policy",
    "sg_adabelief",
    "nonfinite",
    where="seq_logp",
    diverges=90,
    onset=90,
    note="0/0 in the length-normalised log-prob of an empty response",
    heldout=True,
)
def h52_dpo_empty_response_nan(ctx: Context) -> None:
    """Length-normalised DPO: each response's log-probability is averaged over its tokens. At
    step 90 one rejected response was truncated to zero tokens by the max-length cut, its mask
    sums to 0 and the policy's ``seq_logp`` computes 0/0 = NaN; the NaN reaches the loss and,
    through the optimizer step, every weight."""
    first: list[str] = []

    def hook(name: str):
        def fn(m, i, o):
            if not first and not torch.isfinite(o).all():
                first.append(name)

        return fn

    def setup(policy: DPOPolicy) -> None:
        for name, mod in policy.named_modules():
            if name:
                mod.register_forward_hook(hook(name))

    _run_dpo(ctx, lambda ps: sgo.AdaBelief(ps, lr=1e-3), 130, 90, 5210, setup)
    fin = _finite(ctx.losses)
    ctx.check("loss finite before 90, NaN from 90", all(fin[:90]) and not any(fin[90:]))
    ctx.check("the first non-finite output is seq_logp's", first[:1] == ["seq_logp"])
    ctx.check("DPO was learning before", ctx.losses[85] < 0.5 * ctx.losses[0])


@scenario("h52_dpo_policy", "sgd_mom", "healthy", heldout=True)
def h52_dpo_healthy(ctx: Context) -> None:
    """A healthy control: length-normalised DPO with momentum SGD and no empty responses."""
    _run_dpo(ctx, lambda ps: torch.optim.SGD(ps, lr=0.3, momentum=0.9), 150, None, 5211)
    ctx.check("trained normally", sum(ctx.losses[-10:]) / 10 < 0.6 * ctx.losses[0])


# -- SimCSE-style contrastive sentence encoder ----------------------------------------------------


class SentenceEncoder(nn.Module):
    """Token + position embeddings, one transformer layer (dropout 0.1: SimCSE's augmentation),
    mean pooling and a projection head; ``forward`` returns cosine similarities / tau."""

    def __init__(self, tau: float, dim: int = 32, length: int = 24) -> None:
        super().__init__()
        self.tau = tau
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(length, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.1, batch_first=True)
        self.proj = nn.Linear(dim, dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(self.tok(x) + self.pos(torch.arange(x.shape[1])))
        return F.normalize(self.proj(h.mean(1)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x) @ self.embed(x).T / self.tau  # two dropout views


def sentence_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    for x, _ in text_batches(gen, batch, length):
        yield x, torch.arange(batch)


@scenario(
    "h52_simcse_encoder",
    "adamw",
    "softmax_collapse",
    where="proj",
    diverges=None,
    note="InfoNCE temperature 0.005 (typo for 0.05)",
    heldout=True,
)
def h52_simcse_tau_typo(ctx: Context) -> None:
    """The InfoNCE temperature was typed 0.005 instead of 0.05: cosine similarities of the
    projection head's outputs are multiplied by 200. The two dropout views of a sentence agree
    much better than any two different sentences do, from the first steps on, so the float32
    softmax over the batch is exactly one-hot at the positive: the rows give no gradient and
    the encoder learns next to nothing."""
    gen = seeded(5212)
    model = SentenceEncoder(tau=0.005)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = sentence_batches(gen)
    fit(ctx, model, opt, batches, 200, loss_fn=F.cross_entropy)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "most rows' softmax is exactly one-hot at the positive", collapsed_fraction(logits, y) > 0.5
    )
    gn = sorted(ctx.grad_norms)
    ctx.check("the median gradient norm is below 1e-2", gn[len(gn) // 2] < 1e-2)


@scenario("h52_simcse_encoder", "sg_ademamix", "healthy", heldout=True)
def h52_simcse_healthy(ctx: Context) -> None:
    """A healthy control: SimCSE with temperature 0.05 and AdEMAMix."""
    gen = seeded(5213)
    model = SentenceEncoder(tau=0.05)
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, sentence_batches(gen), 200, loss_fn=F.cross_entropy)
    ctx.check("trained normally", sum(ctx.losses[-20:]) / 20 < 0.5 * ctx.losses[0])


# -- multi-token prediction heads on a decoder trunk ----------------------------------------------


class MTPLM(nn.Module):
    """A decoder trunk predicting token t+1 through its head, and t+2, t+3 through extra
    heads (a small residual MLP each) that share the unembedding."""

    def __init__(self, extra: int = 2) -> None:
        super().__init__()
        self.trunk = Decoder(vocab=VOCAB, dim=32, heads=2, layers=2, context=32)
        self.mtp = nn.ModuleList(
            nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.LayerNorm(32))
            for _ in range(extra)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk.hidden(x)
        outs = [self.trunk.lm_head(h)] + [self.trunk.lm_head(h + m(h)) for m in self.mtp]
        return torch.stack(outs, 2)


def mtp_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(out.reshape(-1, VOCAB), y.reshape(-1), reduction="none").view(y.shape)
    return ce[..., 0].mean() + 0.5 * ce[..., 1:].mean()


def mtp_batches(gen: torch.Generator, batch: int = 16, length: int = 32, k: int = 3):
    data = text_bytes() % VOCAB
    while True:
        start = torch.randint(0, len(data) - length - k, (batch,), generator=gen)
        win = data[start[:, None] + torch.arange(length + k)]
        yield win[:, :length], torch.stack([win[:, 1 + i : 1 + i + length] for i in range(k)], 2)


@scenario(
    "h52_mtp_heads_lm",
    "sg_lion",
    "data_outlier",
    diverges=150,
    onset=150,
    note="one batch of a binary blob (uniform random bytes) at step 150",
    heldout=True,
)
def h52_mtp_binary_blob_batch(ctx: Context) -> None:
    """At step 150 the loader serves a batch cut from a compressed file that slipped into the
    text corpus: uniformly random bytes. Every head is confidently wrong on it and the loss
    jumps; Lion's sign updates bound the damage and the next real batches bring it back."""
    gen = seeded(5214)
    model = MTPLM()
    opt = sgo.Lion(model.parameters(), lr=3e-4)
    noise = torch.Generator().manual_seed(52)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            blob = torch.randint(0, VOCAB, (x.shape[0], x.shape[1] + 3), generator=noise)
            x = blob[:, :-3]
            y = torch.stack([blob[:, 1 + i : 1 + i + x.shape[1]] for i in range(3)], 2)
        return x, y

    fit(ctx, model, opt, mtp_batches(gen), 230, loss_fn=mtp_loss, alter=alter, classifier=False)
    pre = sum(ctx.losses[130:150]) / 20
    ctx.check("loss spiked at 150", ctx.losses[150] > 1.5 * max(ctx.losses[140:150]))
    ctx.check("and recovered within 30 steps", sum(ctx.losses[180:200]) / 20 < pre + 0.1)


# -- prefix tuning of a frozen decoder ------------------------------------------------------------


class PrefixAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
        q, k, v = (z.reshape(b, z.shape[1], self.heads, -1).transpose(1, 2) for z in (q, k, v))
        p = pk.shape[1]
        mask = torch.ones(t, p + t, dtype=torch.bool)
        mask[:, p:] = torch.ones(t, t, dtype=torch.bool).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PrefixBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = PrefixAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x, pk, pv):
        x = x + self.attn(self.ln1(x), pk, pv)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class PrefixTunedLM(nn.Module):
    """A decoder (``base``, frozen after pre-training) whose attention layers see 8 trainable
    prefix key/value vectors, produced by a reparameterisation MLP from a prefix embedding
    (Li & Liang 2021: embedding -> Linear -> tanh -> Linear)."""

    def __init__(self, dim: int = 32, layers: int = 2, prefix: int = 8) -> None:
        super().__init__()
        self.dim, self.layers = dim, layers
        self.base = nn.ModuleDict(
            {
                "tok": nn.Embedding(VOCAB, dim),
                "pos": nn.Embedding(32, dim),
                "blocks": nn.ModuleList(PrefixBlock(dim, 2) for _ in range(layers)),
                "ln_f": nn.LayerNorm(dim),
                "head": nn.Linear(dim, VOCAB, bias=False),
            }
        )
        self.prefix = nn.Embedding(prefix, 16)
        self.prefix_mlp = nn.Sequential(
            nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 2 * layers * dim)
        )

    def prefix_kv(self, batch: int, use: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not use:
            empty = torch.zeros(batch, 0, self.dim)
            return [(empty, empty)] * self.layers
        kv = self.prefix_mlp(self.prefix.weight).reshape(-1, self.layers, 2, self.dim)
        return [
            (kv[:, i, 0].expand(batch, -1, -1), kv[:, i, 1].expand(batch, -1, -1))
            for i in range(self.layers)
        ]

    def forward(self, x: torch.Tensor, use_prefix: bool = True) -> torch.Tensor:
        b = self.base
        h = b["tok"](x) + b["pos"](torch.arange(x.shape[1]))
        for block, (pk, pv) in zip(
            b["blocks"], self.prefix_kv(x.shape[0], use_prefix), strict=True
        ):
            h = block(h, pk, pv)
        return b["head"](b["ln_f"](h))


def _pretrained_prefix_lm(seed: int) -> PrefixTunedLM:
    """Pre-train the base briefly (no prefix), then freeze it."""
    gen = seeded(seed)
    model = PrefixTunedLM()
    opt = torch.optim.Adam(model.base.parameters(), lr=3e-3)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(120):
        x, y = next(batches)
        loss = lm_loss(model(x, use_prefix=False), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.base.requires_grad_(False)
    return model


@scenario(
    "h52_prefix_tuning",
    "adagrad",
    "loss_of_plasticity",
    where=("prefix_mlp.0", "prefix_mlp.1"),
    diverges=None,
    onset=80,
    note="a restart of a cyclic LR schedule typed 5e1 for 5e-1 saturates the tanh units",
    heldout=True,
)
def h52_prefix_tanh_saturated(ctx: Context) -> None:
    """Prefix tuning with a cyclic LR schedule whose restart peak was typed ``5e1`` instead of
    ``5e-1``: at the restart (steps 80-82) Adagrad moves the reparameterisation MLP's first
    layer by tens per step, its pre-activations land far out on both tails of the tanh, and
    the saturated units pass no gradient any more: the prefix stops learning for good."""
    model = _pretrained_prefix_lm(5215)
    gen = seeded(5216)
    trainable = [*model.prefix.parameters(), *model.prefix_mlp.parameters()]
    opt = torch.optim.Adagrad(trainable, lr=0.05)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 5e1 if 80 <= step < 83 else 0.05

    first: list[float] = []
    model.prefix_mlp[0].weight.register_hook(lambda g: first.append(float(g.norm())))
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        before=schedule,
        classifier=False,
    )
    with torch.no_grad():
        pre = model.prefix_mlp[0](model.prefix.weight)
        act = torch.tanh(pre)
    sat = float((act.abs() > 0.99).all(0).float().mean())
    ctx.check("90% of the tanh units are saturated on every prefix position", sat >= 0.9)
    before, after = sorted(first[60:80])[10], sorted(first[120:])[len(first[120:]) // 2]
    ctx.check("the first layer's median gradient shrank 30x", after < before / 30)
    ctx.check("the loss never recovered", min(ctx.losses[150:]) > sum(ctx.losses[60:80]) / 20)


# -- a recurrent draft model distilled from a frozen target (speculative decoding) ----------------


class DraftRNN(nn.Module):
    """A linear-recurrence draft: h_t = W h_{t-1} + U x_t (the recurrence a diagonal LRU would
    keep stable through its parametrisation; here a plain matrix, started at 0.5 * I)."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.inp = nn.Linear(dim, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, VOCAB)
        with torch.no_grad():
            self.rec.weight.copy_(0.5 * torch.eye(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.inp(self.emb(x))
        h = torch.zeros(x.shape[0], u.shape[-1])
        states = []
        for t in range(x.shape[1]):
            h = self.rec(h) + u[:, t]
            states.append(h)
        return self.head(torch.stack(states, 1))


def _target_lm(seed: int) -> Decoder:
    gen = seeded(seed)
    target = Decoder(vocab=VOCAB, dim=32, heads=2, layers=2, context=32)
    opt = torch.optim.Adam(target.parameters(), lr=3e-3)
    batches = text_batches(gen)
    for _ in range(120):
        x, y = next(batches)
        loss = lm_loss(target(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return target.requires_grad_(False).eval()


def _distill(ctx: Context, draft: DraftRNN, target: Decoder, opt, steps: int, gen, watch=None):
    ctx.attach(draft, opt)
    batches = text_batches(gen)
    for step in range(steps):
        x, _ = next(batches)
        with torch.no_grad():
            teacher = torch.log_softmax(target(x), -1)
        student = torch.log_softmax(draft(x), -1)
        loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean") / x.shape[1]
        loss.backward()
        if watch is not None:
            watch(step)
        ctx.grad_norms.append(grad_norm(draft))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "h52_spec_draft_rnn",
    "sgd",
    "exploding_gradients",
    where="rec",
    diverges="auto",
    note="weight decay of the wrong sign on the recurrence: its radius grows past 1",
    heldout=True,
)
def h52_draft_recurrence_negative_decay(ctx: Context) -> None:
    """A linear-recurrence draft model is distilled from a frozen target LM with plain SGD and
    no gradient clipping. The recurrent matrix has its own parameter group whose weight decay
    was written as -0.5 (a wrapper's sign convention, copied into ``torch.optim.SGD``): every
    step scales it up by 1%. Its spectral radius creeps from 0.5 past 1; from then on the
    backward pass through 32 steps amplifies, the recurrence's gradient grows step after step
    and the run ends in overflow."""
    target = _target_lm(5217)
    gen = seeded(5218)
    draft = DraftRNN()
    rest = [p for n, p in draft.named_parameters() if n != "rec.weight"]
    opt = torch.optim.SGD(
        [{"params": rest}, {"params": [draft.rec.weight], "weight_decay": -0.5}], lr=0.02
    )
    radius: list[float] = []
    rec: list[float] = []

    def watch(step: int) -> None:
        w = draft.rec.weight.detach()
        finite = bool(torch.isfinite(w).all())
        radius.append(float(torch.linalg.eigvals(w).abs().max()) if finite else math.inf)
        rec.append(float(draft.rec.weight.grad.norm()))

    _distill(ctx, draft, target, opt, 120, gen, watch)
    fin = _finite(ctx.losses)
    end = fin.index(False) if not all(fin) else len(fin)
    ctx.check("the run broke (non-finite loss)", end < len(fin))
    ctx.check(
        "the recurrence's spectral radius went from 0.5 past 1",
        radius[0] < 0.6 and max(radius[:end]) > 1.0,
    )
    mid = sorted(rec[end - 60 : end - 40])[10]
    ctx.check(
        "the recurrence's gradient grew 30x over the 60 steps before the break",
        max(rec[end - 10 : end]) > 30 * mid,
    )
