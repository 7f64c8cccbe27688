"""Held-out scenarios, set 76 (``h76_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing: each scenario was adjusted until its
own checks held, or until the healthy control trained normally).

Families: Hugging Face IQuestCoder (Llama-style), GraniteMoE-SWA, HunYuan-V1-MoE, Apertus-1.5
(text) and Kolibri1 (MoE, sliding window) causal LMs from tiny configs; hand-written
masked-diffusion language model (a random masking rate per batch), multi-token-prediction heads,
sparse upcycling of a dense FFN into a top-2 MoE with a capacity factor, a Griffin-style RG-LRU
recurrent block mixed with local attention, GaLore-style low-rank gradient projection, a
Bradley-Terry reward model on generated preference pairs, mixture-of-depths token routing, IA3 on
a frozen decoder, prompt tuning of a frozen decoder, ALiBi with a sliding window, and a draft
model distilled from a fixed target decoder.

Optimizers: AdamW, NAdam, Adamax, Adam, RAdam, SGD, SGD with Nesterov momentum, RMSprop (with
momentum), Adagrad, Adadelta, and steadygrad.optim's Lion, Grams, DiffGrad, AdaBelief, AdEMAMix
and StableSPAM.
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

# -- shared helpers -------------------------------------------------------------------------------


def _hf_lm(kind: str, eager: bool = False, **extra):
    """A tiny Hugging Face causal LM of config type ``kind`` (no download)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    cfg.update(extra)
    config = CONFIG_MAPPING[kind](**cfg)
    if eager:
        return AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return AutoModelForCausalLM.from_config(config)


def _hf_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _flat(model: nn.Module, prefix: str = "") -> torch.Tensor:
    return torch.cat(
        [p.detach().flatten() for n, p in model.named_parameters() if n.startswith(prefix)]
    ).clone()


def _log_z(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), dim=-1).mean())


def _windows(gen: torch.Generator, batch: int, length: int):
    """Endless raw byte windows (folded into VOCAB) of ``length`` tokens."""
    data = text_bytes() % VOCAB
    while True:
        start = torch.randint(0, len(data) - length, (batch,), generator=gen)
        yield data[start[:, None] + torch.arange(length)]


def _pretrained_decoder(
    seed: int, steps: int, dim: int = 32, layers: int = 2, batches=None
) -> Decoder:
    """A small decoder trained briefly on the byte corpus (not monitored: the 'checkpoint')."""
    gen = seeded(seed)
    model = Decoder(dim=dim, layers=layers, heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = batches or text_batches(gen)
    for _ in range(steps):
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


class _Attention(nn.Module):
    """Multi-head attention by hand: causal or bidirectional, an optional sliding window and
    optional ALiBi slopes."""

    def __init__(
        self,
        dim: int,
        heads: int,
        causal: bool = True,
        window: int | None = None,
        alibi: bool = False,
    ) -> None:
        super().__init__()
        self.heads, self.causal, self.window, self.alibi = heads, causal, window, alibi
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
        self.register_buffer("slopes", slopes, persistent=False)

    def bias(self, t: int) -> torch.Tensor:
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        allowed = torch.ones(t, t, dtype=torch.bool)
        if self.causal:
            allowed &= j <= i
        if self.window is not None:
            allowed &= (i - j).abs() < self.window
        bias = torch.zeros(self.heads, t, t)
        if self.alibi:
            bias = -self.slopes[:, None, None] * (i - j).abs().float()
        return bias.masked_fill(~allowed, float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(t))
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, **attn) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, **attn)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def _init_small(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)


class _NanOrigin:
    """Forward hooks noting, per step, the first module whose inputs were finite but whose
    output was not (the module that produced the NaN/Inf)."""

    def __init__(self, model: nn.Module) -> None:
        self.first: tuple[int, str] | None = None
        self.step = 0
        for name, module in model.named_modules():
            if name:
                module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, inputs, output) -> None:
            if self.first is not None or not isinstance(output, torch.Tensor):
                return
            ins = [i for i in inputs if isinstance(i, torch.Tensor) and i.is_floating_point()]
            if all(bool(torch.isfinite(i).all()) for i in ins) and not bool(
                torch.isfinite(output).all()
            ):
                self.first = (self.step, name)

        return hook


# == Hugging Face causal LMs ======================================================================

# -- 1. IQuestCoder: attention logits grow ---------------------------------------------------------


def _qk_stats(model: nn.Module, idx: torch.Tensor) -> tuple[float, float]:
    """Largest |q_h||k_h|/sqrt(d_h) over both layers (an upper bound on every pre-softmax
    logit, rotary embeddings keep the norms) and the mean attention entropy."""
    store: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for part in ("q_proj", "k_proj"):
            mod = getattr(layer.self_attn, part)
            hooks.append(
                mod.register_forward_hook(
                    lambda m, a, o, key=f"{i}.{part}": store.__setitem__(key, o.detach())
                )
            )
    with torch.no_grad():
        out = model(input_ids=idx, output_attentions=True)
    for h in hooks:
        h.remove()
    hd = model.config.head_dim
    top = 0.0
    for i in range(len(model.model.layers)):
        q = store[f"{i}.q_proj"].reshape(*idx.shape, -1, hd).norm(dim=-1)
        k = store[f"{i}.k_proj"].reshape(*idx.shape, -1, hd).norm(dim=-1)
        top = max(top, float(q.amax()) * float(k.amax()) / math.sqrt(hd))
    ent = []
    for a in out.attentions:
        ent.append(float(-(a * a.clamp_min(1e-30).log()).sum(-1)[..., 4:].mean()))
    return top, sum(ent) / len(ent)


@scenario(
    "h76_hf_iquestcoder_causal_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a parameter group with a 25x learning rate and no weight decay",
)
def h76_iquestcoder_qk_lr_group(ctx: Context) -> None:
    """A muP-style per-group multiplier applied the wrong way round puts q_proj/k_proj at 25x the
    base learning rate (and outside weight decay); there is no QK-norm, so the query and key
    norms run away and the attention distributions turn one-hot."""
    gen = seeded(7601)
    model = _hf_lm("iquestcoder", eager=True, intermediate_size=96, head_dim=12)
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 2e-3, "weight_decay": 0.1},
            {"params": qk, "lr": 5e-2, "weight_decay": 0.0},
        ]
    )
    probe, _ = next(text_batches(seeded(1)))
    top0, ent0 = _qk_stats(model, probe)
    fit(ctx, model, opt, text_batches(gen), 240, loss_fn=lm_loss, forward=_hf_forward)
    top1, ent1 = _qk_stats(model, probe)
    ctx.check("q.k logit bound grew 30x", top1 > 30 * top0)
    ctx.check("attention entropy fell below a third", ent1 < ent0 / 3)


# -- 2. GraniteMoE-SWA: z-loss with the wrong sign -------------------------------------------------


@scenario(
    "h76_hf_granitemoe_swa_lm",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss added with a minus sign: log Z is pushed away from 0",
)
def h76_granitemoe_swa_zloss_sign(ctx: Context) -> None:
    """The auxiliary z-loss (1e-2 * log Z^2, meant to keep the softmax normaliser near 0) is
    subtracted instead of added: the optimizer is paid to make log Z large, and the output
    head's logits drift away together."""
    gen = seeded(7602)
    model = _hf_lm(
        "granitemoe_swa",
        intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        shared_intermediate_size=64,
        sliding_window=16,
    )
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    probe, _ = next(text_batches(seeded(1)))
    with torch.no_grad():
        z0 = _log_z(model(input_ids=probe).logits)
    state = {}

    def head_hook(m, a, o) -> None:
        state["logits"] = o

    model.lm_head.register_forward_hook(head_hook)

    def wrong_sign(step: int, loss: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(state["logits"].float(), dim=-1)
        return loss - 1e-2 * lse.pow(2).mean()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        230,
        loss_fn=lm_loss,
        forward=_hf_forward,
        extra_loss=wrong_sign,
    )
    with torch.no_grad():
        z1 = _log_z(model(input_ids=probe).logits)
    ctx.check("|log Z| drifted by 20", abs(z1 - z0) > 20)


# -- 3. HunYuan-V1-MoE: one un-unscaled loss fills Adamax's infinity norm ----------------------------


@scenario(
    "h76_hf_hunyuan_v1_moe_lm",
    "adamax",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="a manual 2^16 loss scale not undone on one step; Adamax's u_t = max(b2 u, |g|) holds it",
)
def h76_hunyuan_adamax_unscaled_step(ctx: Context) -> None:
    """Manual loss scaling for a planned fp16 run: the backward uses loss * 2^16 and the gradients
    are divided back before the step, except on step 150, where a checkpoint-saving branch skips
    the unscale. Adamax's infinity norm takes the 65536x gradient in every tensor and decays it
    by only 0.1% a step, so the next few hundred updates are tiny: the run stalls (only the
    embedding rows of tokens absent from that batch escape)."""
    gen = seeded(7603)
    model = _hf_lm("hunyuan_v1_moe", intermediate_size=64, num_experts=4, moe_topk=2, head_dim=12)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    snaps: dict[int, torch.Tensor] = {}

    def before(step: int) -> None:
        if step in (100, 140, 200, 240):
            snaps[step] = torch.cat(
                [p.detach().flatten() for n, p in model.named_parameters() if "embed" not in n]
            )

    def scale_bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 150:
            return loss * 2.0**16
        return loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        forward=_hf_forward,
        before=before,
        extra_loss=scale_bug,
    )
    early = (snaps[140] - snaps[100]).norm()
    late = (snaps[240] - snaps[200]).norm()
    ctx.check("updates (all but the embedding) shrank 10x after 150", late < early / 10)
    ctx.check(
        "gradient at 150 was 1000x the step before", ctx.grad_norms[150] > 1e3 * ctx.grad_norms[149]
    )


# -- 4. Apertus-1.5: the resume loads the EMA weights ------------------------------------------------


@scenario(
    "h76_hf_apertus1p5_text_lm",
    "adam",
    "loss_spike",
    where=(),
    diverges=200,
    heldout=True,
    onset=200,
    note="resume at step 200 loads the EMA (decay 0.999) into the live model",
)
def h76_apertus1p5_resume_loads_ema(ctx: Context) -> None:
    """The run keeps an EMA of the weights (decay 0.999) for evaluation. On the restart at step
    200 the loader reads ``ckpt["ema"]`` into the model instead of ``ckpt["model"]`` (the optimizer
    state is restored correctly): after only 200 steps the EMA is still ~80% the initial
    weights, so the loss jumps back up at once and then retrains."""
    gen = seeded(7604)
    model = _hf_lm("apertus1p5_text", intermediate_size=96)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def before(step: int) -> None:
        if step == 200:
            model.load_state_dict(ema)  # the bug: the EMA, not the model
            return
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(0.999).add_(v, alpha=0.001)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        280,
        loss_fn=lm_loss,
        forward=_hf_forward,
        before=before,
    )
    ref = sum(ctx.losses[185:200]) / 15
    ctx.check("loss jumped 1.5x at the resume", ctx.losses[200] > 1.5 * ref)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("recovered by the end", sum(ctx.losses[-10:]) / 10 < 1.2 * ref)


# -- 5. Kolibri1 (healthy) --------------------------------------------------------------------------


@scenario(
    "h76_hf_kolibri1_moe_lm",
    "sg_lion",
    "healthy",
    heldout=True,
    note="Kolibri1 MoE with sliding-window layers, Lion at 6e-4 with warm-up and weight decay",
)
def h76_kolibri1_lion_healthy(ctx: Context) -> None:
    gen = seeded(7605)
    model = _hf_lm(
        "kolibri1",
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        head_dim=12,
        shared_expert_intermediate_size=32,
        sliding_window=16,
    )
    opt = sgo.Lion(model.parameters(), lr=6e-4, weight_decay=0.1)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 6e-4 * min(1.0, (step + 1) / 30)

    fit(
        ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss, forward=_hf_forward, before=warmup
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.8 * sum(ctx.losses[:10]) / 10)


# == hand-written LLM training procedures =========================================================

# -- 6. masked-diffusion LM: log-SNR conditioning at t = 1 ---------------------------------------------


class _TimeEmbed(nn.Module):
    """Conditions on the log signal-to-noise ratio log((1 - t) / t) of the masking rate t."""

    def __init__(self, dim: int, freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(-3, 1, freqs)), persistent=False)
        self.lin = nn.Linear(2 * freqs, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        logsnr = torch.log((1 - t) / t)  # t = 1 (every token masked) gives -inf
        ang = logsnr[:, None] * self.freqs
        return self.lin(torch.cat([ang.sin(), ang.cos()], -1))


class _MaskedDiffusionLM(nn.Module):
    def __init__(self, dim: int = 48, heads: int = 2, layers: int = 2, context: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB + 1, dim)  # id VOCAB is [MASK]
        self.pos = nn.Embedding(context, dim)
        self.t_embed = _TimeEmbed(dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, causal=False) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)
        _init_small(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.shape[1])) + self.t_embed(t)[:, None]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


@scenario(
    "h76_masked_diffusion_lm",
    "sg_grams",
    "nonfinite",
    where="t_embed",
    diverges=178,
    heldout=True,
    onset=178,
    note="masking rate drawn from {1/128, ..., 1}; log-SNR of t = 1 is -inf at step 178",
)
def h76_masked_diffusion_logsnr_t1(ctx: Context) -> None:
    """Masked-diffusion LM training (MDLM-style): each batch draws a masking rate t on a grid of
    1/128 up to and including 1, masks that share of tokens and weights the loss by 1/t. The
    time conditioning takes log((1 - t) / t) without clamping; the first batch with t = 1 (step
    178) makes it -inf and its sinusoidal features NaN."""
    gen = seeded(7606)
    tgen = torch.Generator().manual_seed(26)
    model = _MaskedDiffusionLM()
    opt = sgo.Grams(model.parameters(), lr=2e-3)
    origin = _NanOrigin(model)
    batches = _windows(gen, 16, 32)
    ctx.attach(model, opt)
    for step in range(260):
        origin.step = step
        x = next(batches)
        t = torch.randint(1, 129, (1,), generator=tgen).float() / 128
        masked = torch.rand(x.shape, generator=gen) < t
        xin = torch.where(masked, VOCAB, x)
        logits = model(xin, t.expand(x.shape[0]))
        ce = F.cross_entropy(logits.reshape(-1, VOCAB), x.reshape(-1), reduction="none")
        loss = (ce * masked.reshape(-1)).sum() / (t * x.numel()).squeeze()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 178, not from 178", all(finite[:178]) and not finite[178])
    ctx.check("the first NaN came out of t_embed at 178", origin.first == (178, "t_embed"))


# -- 7. multi-token prediction: weight decay 1e1 on the extra heads --------------------------------------


class _MTPDecoder(Decoder):
    """A decoder with its next-token head and two extra heads for tokens t+2 and t+3."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        dim = self.lm_head.in_features
        self.mtp_heads = nn.ModuleList(nn.Linear(dim, VOCAB, bias=False) for _ in range(2))
        for head in self.mtp_heads:
            nn.init.normal_(head.weight, std=0.02)

    def forward(self, idx: torch.Tensor):
        h = self.hidden(idx)
        return self.lm_head(h), [head(h) for head in self.mtp_heads]


@scenario(
    "h76_mtp_heads_decoder",
    "sg_diffgrad",
    "update_ratio_out_of_range",
    where=("mtp_heads.0", "mtp_heads.1"),
    diverges=None,
    heldout=True,
    note="the extra heads' group gets lr 2e-6: a x1e-3 multiplier pasted from another group",
)
def h76_mtp_heads_lr_multiplier_typo(ctx: Context) -> None:
    """Multi-token prediction with two extra heads (tokens t+2, t+3) in their own parameter
    group. The group's learning-rate multiplier is 1e-3 (copied from a frozen-embedding recipe)
    instead of 1: the heads' update-to-weight ratio sits far below the trunk's, they keep their
    initial weights and their losses stay near log(vocab) while the trunk trains."""
    gen = seeded(7607)
    model = _MTPDecoder(dim=32, layers=2)
    heads = list(model.mtp_heads.parameters())
    ids = {id(p) for p in heads}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = sgo.DiffGrad([{"params": rest, "lr": 2e-3}, {"params": heads, "lr": 2e-3 * 1e-3}])
    batches = _windows(gen, 16, 35)
    ratios: dict[str, list[float]] = {"lm_head": [], "mtp_heads.0": [], "mtp_heads.1": []}
    ctx.attach(model, opt)
    for step in range(280):
        win = next(batches)
        x = win[:, :32]
        logits, extra = model(x)
        loss = lm_loss(logits, win[:, 1:33])
        for k, lg in enumerate(extra):
            loss = loss + 0.5 * lm_loss(lg, win[:, 2 + k : 34 + k])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        before = {n: model.get_submodule(n).weight.detach().clone() for n in ratios}
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step >= 200:
            for n, b in before.items():
                after = model.get_submodule(n).weight.detach()
                ratios[n].append(float((after - b).norm() / b.norm()))
    mean = {n: sum(v) / len(v) for n, v in ratios.items()}
    ctx.check(
        "extra heads' update/weight ratio under 1/30 of the main head's",
        max(mean["mtp_heads.0"], mean["mtp_heads.1"]) < mean["lm_head"] / 30,
    )
    with torch.no_grad():
        main, extra = model(x)
        main_loss = float(lm_loss(main, win[:, 1:33]))
        stuck = [float(lm_loss(lg, win[:, 2 + k : 34 + k])) for k, lg in enumerate(extra)]
    ctx.check("extra heads' losses still above 4.5", min(stuck) > 4.5)
    ctx.check("main head's loss 1.5 below them", main_loss < min(stuck) - 1.5)
    ctx.check("loss fell by 1", ctx.losses[-1] < ctx.losses[0] - 1.0)


# -- 8. sparse upcycling: the router is a plain tensor, never trained -----------------------------------


class _Expert(nn.Module):
    def __init__(self, fc: nn.Linear, out: nn.Linear) -> None:
        super().__init__()
        self.fc = copy.deepcopy(fc)
        self.out = copy.deepcopy(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x)))


class _UpcycledMoE(nn.Module):
    """Top-2 of 4 experts, each a copy of the dense FFN, with a capacity factor (tokens over an
    expert's capacity are dropped: they keep only the residual)."""

    def __init__(self, fc: nn.Linear, out: nn.Linear, experts: int = 4, capacity: float = 1.25):
        super().__init__()
        self.experts = nn.ModuleList(_Expert(fc, out) for _ in range(experts))
        # the bug: a plain tensor attribute, so neither the optimizer nor state_dict sees it
        self.router_w = torch.zeros(fc.in_features, experts)
        self.capacity = capacity
        self.counts = torch.zeros(experts, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        probs = (flat @ self.router_w).softmax(-1)
        gate, idx = probs.topk(2, dim=-1)
        gate = gate / gate.sum(-1, keepdim=True)
        cap = math.ceil(self.capacity * flat.shape[0] * 2 / len(self.experts))
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            rows, slot = rows[:cap], slot[:cap]
            self.counts[e] += len(rows)
            if len(rows):
                out = out.index_add(0, rows, gate[rows, slot, None] * expert(flat[rows]))
        return out.reshape(b, t, d)


class _UpcycledBlock(nn.Module):
    def __init__(self, dense: Block) -> None:
        super().__init__()
        self.ln1 = copy.deepcopy(dense.ln1)
        self.attn = copy.deepcopy(dense.attn)
        self.ln2 = copy.deepcopy(dense.ln2)
        self.ffn = _UpcycledMoE(dense.fc, dense.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class _UpcycledDecoder(nn.Module):
    def __init__(self, dense: Decoder) -> None:
        super().__init__()
        self.tok = copy.deepcopy(dense.tok)
        self.pos = copy.deepcopy(dense.pos)
        self.blocks = nn.ModuleList(_UpcycledBlock(b) for b in dense.blocks)
        self.ln_f = copy.deepcopy(dense.ln_f)
        self.lm_head = copy.deepcopy(dense.lm_head)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@scenario(
    "h76_upcycled_top2_moe",
    "radam",
    "loss_of_plasticity",
    where=(
        "blocks.0.ffn.experts.0",
        "blocks.0.ffn.experts.1",
        "blocks.1.ffn.experts.0",
        "blocks.1.ffn.experts.1",
    ),
    diverges=None,
    heldout=True,
    note="zero-initialised router stored as a plain tensor: ties send every token to experts 2, 3",
)
def h76_upcycled_moe_untrained_router(ctx: Context) -> None:
    """Sparse upcycling: a dense decoder's FFNs are copied into 4 experts each with a top-2 router
    and a capacity factor of 1.25. The router is zero-initialised as the recipe says, but stored
    as a plain tensor, not an ``nn.Parameter``: it never trains, the tied scores make top-2 pick
    the same two experts for every token, and the other two experts never see an input."""
    dense = _pretrained_decoder(7608, 120, dim=32)
    gen = seeded(7618)
    model = _UpcycledDecoder(dense)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if ".experts." in n}
    fit(ctx, model, opt, text_batches(gen), 220, loss_fn=lm_loss)
    for i, block in enumerate(model.blocks):
        counts = block.ffn.counts.tolist()
        ctx.check(
            f"block {i}: experts 0, 1 got no token, 2, 3 did",
            counts[0] == counts[1] == 0 < min(counts[2:]),
        )
    moved = {n: not torch.equal(start[n], p) for n, p in model.named_parameters() if n in start}
    ctx.check(
        "experts 0, 1 unchanged",
        not any(v for n, v in moved.items() if ".experts.0." in n or ".experts.1." in n),
    )
    ctx.check(
        "experts 2, 3 trained",
        all(v for n, v in moved.items() if ".experts.2." in n or ".experts.3." in n),
    )


# -- 9. Griffin-style RG-LRU + local attention: an unconstrained decay ----------------------------------


class _RGLRU(nn.Module):
    """A real-gated linear recurrent unit (Griffin), by hand: a = sigmoid(lam) with a^c in
    [0.9, 0.999], a_t = a^(c r_t), h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)."""

    def __init__(self, dim: int, c: float = 8.0) -> None:
        super().__init__()
        self.gate_a = nn.Linear(dim, dim)
        self.gate_x = nn.Linear(dim, dim)
        a_c = torch.empty(dim).uniform_(0.9, 0.999)
        a = a_c ** (1 / c)
        self.lam = nn.Parameter(torch.log(a / (1 - a)))
        self.c = c
        self.last_gate = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(self.gate_a(x))
        i = torch.sigmoid(self.gate_x(x))
        self.last_gate = float(i.detach().mean())
        a = torch.sigmoid(self.lam).pow(self.c * r)
        u = (1 - a * a).clamp_min(1e-6).sqrt() * i * x
        h = torch.zeros_like(x[:, 0])
        out = []
        for t in range(x.shape[1]):
            h = a[:, t] * h + u[:, t]
            out.append(h)
        return torch.stack(out, 1)


class _RecurrentBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.in_x = nn.Linear(dim, dim)
        self.in_y = nn.Linear(dim, dim)
        self.rglru = _RGLRU(dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        y = F.gelu(self.in_y(h))
        return x + self.out(self.rglru(self.in_x(h)) * y)


class _Griffin(nn.Module):
    def __init__(self, dim: int = 32, window: int = 8) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(
            [_RecurrentBlock(dim), _Block(dim, 2, window=window), _RecurrentBlock(dim)]
        )
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln_f(x))


@scenario(
    "h76_griffin_rglru_local_attn",
    "sgd",
    "loss_of_plasticity",
    where=("layers.0.rglru", "layers.2.rglru"),
    diverges=None,
    heldout=True,
    note="the 'long memory' bias of -8 lands on the RG-LRU input gate: the gate is shut",
)
def h76_griffin_input_gate_shut(ctx: Context) -> None:
    """A Griffin-style stack (RG-LRU block, sliding-window attention, RG-LRU block) on 64-token
    windows. The init code meant to bias the recurrence towards long memory writes its -8 into
    the bias of the RG-LRU's *input* gate: sigmoid(-8) ~ 3e-4, the recurrences receive almost
    nothing, their gates' gradients are scaled by the same 3e-4 and they stay shut; the model
    trains on the attention layer alone."""
    gen = seeded(7609)
    model = _Griffin()
    for i in (0, 2):
        nn.init.constant_(model.layers[i].rglru.gate_x.bias, -8.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    batches = _windows(gen, 16, 65)
    ctx.attach(model, opt)
    for _ in range(240):
        win = next(batches)
        loss = lm_loss(model(win[:, :-1]), win[:, 1:])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    for i in (0, 2):
        rg = model.layers[i].rglru
        ctx.check(f"layers.{i}.rglru input gate still below 1e-2", rg.last_gate < 1e-2)
    ctx.check("the rest trained", sum(ctx.losses[-10:]) / 10 < 0.7 * ctx.losses[0])


# -- 10. GaLore-style projection: a peak learning rate with a misplaced decimal --------------------------


class _GaLore:
    """Low-rank gradient projection by hand: each 2-D weight's gradient G is replaced by
    scale * P P^T G, P the top-``rank`` left singular vectors of G, refreshed every ``every``
    steps (the update then lives in a rank-``rank`` subspace)."""

    def __init__(self, model: nn.Module, rank: int = 4, every: int = 50, scale: float = 1.0):
        self.params = [p for n, p in model.named_parameters() if p.dim() == 2 and "blocks" in n]
        self.rank, self.every, self.scale = rank, every, scale
        self.proj: dict[int, torch.Tensor] = {}

    def project(self, step: int) -> None:
        for p in self.params:
            g = p.grad
            if step % self.every == 0 or id(p) not in self.proj:
                u, _, _ = torch.linalg.svd(g, full_matrices=False)
                self.proj[id(p)] = u[:, : self.rank].clone()
            P = self.proj[id(p)]
            p.grad = self.scale * (P @ (P.T @ g))


@scenario(
    "h76_galore_lowrank_decoder",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="warm-up to a peak of 3.0 (meant 0.3) with SGD + Nesterov momentum",
)
def h76_galore_peak_lr_typo(ctx: Context) -> None:
    """A decoder trained with GaLore-style rank-4 gradient projection and SGD with Nesterov
    momentum. The linear warm-up aims at a peak learning rate of 3.0 instead of 0.3: the run is
    fine while the learning rate is small, then the step outgrows the curvature, the loss
    oscillates and blows up part-way through the warm-up."""
    gen = seeded(7610)
    model = Decoder(dim=32, layers=2, heads=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    galore = _GaLore(model)
    batches = text_batches(gen)
    ctx.attach(model, opt)
    for step in range(260):
        opt.param_groups[0]["lr"] = 3.0 * min(1.0, (step + 1) / 250)
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if math.isfinite(float(loss.detach())):
            galore.project(step)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    losses = ctx.losses
    best = min(v for v in losses if math.isfinite(v))
    ctx.check("trained first (loss fell below 3.2)", best < 3.2)
    broke = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 2 * losses[0]]
    ctx.check("then blew up during the warm-up", bool(broke) and broke[0] > 40)


# -- 11. Bradley-Terry reward model: memorised pairs, exactly one-hot preferences -------------------------


def _preference_pairs(gen: torch.Generator, n: int, length: int = 16):
    """Generated response pairs (token ids 3..VOCAB-1) and which one a rater preferred: the one
    with more 'polite' tokens (ids 3..12), with 25% of the labels flipped (rater noise)."""
    x = torch.randint(3, VOCAB, (n, 2, length), generator=gen)
    polite = torch.rand(n, 2, length, generator=gen) < torch.rand(n, 2, 1, generator=gen) * 0.5
    x = torch.where(polite, torch.randint(3, 13, x.shape, generator=gen), x)
    score = ((x >= 3) & (x < 13)).sum(-1)
    y = (score[:, 1] > score[:, 0]).long()
    flip = torch.rand(n, generator=gen) < 0.25
    return x, torch.where(flip, 1 - y, y)


class _RewardModel(nn.Module):
    """A small causal encoder over each response; the score head reads the last position's
    residual stream (no final norm). The forward returns the pair's two rewards as logits (the Bradley-Terry model is a softmax over
    them)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(16, dim)
        self.block = _Block(dim, 2)
        self.score = nn.Linear(dim, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        b, two, t = pairs.shape
        x = pairs.reshape(b * two, t)
        h = self.block(self.tok(x) + self.pos(torch.arange(t)))
        return self.score(h[:, -1]).reshape(b, two)


@scenario(
    "h76_bt_reward_pairs",
    "rmsprop",
    "softmax_collapse",
    where="score",
    diverges=None,
    heldout=True,
    note="64 noisy preference pairs, full batch, RMSprop (momentum 0.9) for 500 epochs",
)
def h76_bt_reward_memorised(ctx: Context) -> None:
    """A Bradley-Terry reward model trained for many epochs on a small set of 64 preference pairs
    whose labels are 25% noise: it memorises them, the reward margins pass ~17 and the float32
    preference probabilities become exactly 1: the training loss is 0 and the gradients
    vanish."""
    gen = seeded(7611)
    x, y = _preference_pairs(gen, 64)
    model = _RewardModel()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3, momentum=0.9)

    def full_batch():
        while True:
            yield x, y

    fit(ctx, model, opt, full_batch(), 500)
    with torch.no_grad():
        logits = model(x)
    ctx.check("90% of training pairs exactly one-hot", collapsed_fraction(logits, y) > 0.9)
    ctx.check("training loss under 1e-6", ctx.losses[-1] < 1e-6)


# -- 12. mixture-of-depths: the logging step adds the router's aux loss summed ---------------------------


class _MoDBlock(Block):
    """Mixture-of-depths: the router picks the top half of the tokens of each sequence to go
    through the block; the others skip it. The block's update is weighted by sigmoid(router)."""

    def __init__(self, dim: int, heads: int, capacity: float = 0.5) -> None:
        super().__init__(dim, heads)
        self.router = nn.Linear(dim, 1)
        self.capacity = capacity
        self.chosen: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        self.seen = x.detach()
        k = int(self.capacity * t)
        r = self.router(x).squeeze(-1)
        idx = r.topk(k, dim=-1).indices.sort(-1).values
        self.chosen = torch.zeros(b, t).scatter(1, idx, 1.0)
        sel = x.gather(1, idx[..., None].expand(-1, -1, d))
        delta = super().forward(sel) - sel
        w = torch.sigmoid(r.gather(1, idx))[..., None]
        return x.scatter_add(1, idx[..., None].expand(-1, -1, d), w * delta)


class _MoDDecoder(Decoder):
    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__(dim=dim, heads=heads, layers=3)
        self.blocks[1] = _MoDBlock(dim, heads)
        _init_small(self.blocks[1])


@scenario(
    "h76_mixture_of_depths_decoder",
    "sg_ademamix",
    "gradient_spike",
    where="blocks.1.router",
    diverges=None,
    heldout=True,
    onset=180,
    note="the logging branch at step 180 adds the router aux loss with reduction='sum'",
)
def h76_mod_router_aux_sum(ctx: Context) -> None:
    """Mixture-of-depths decoder (3 blocks, the middle one routed at capacity 0.5). The router
    has an auxiliary BCE loss (predict whether a token is in the top-k, for causal sampling)
    computed on a detached input with weight 0.01. On step 180 the logging branch recomputes it
    with reduction='sum' and weight 1 and adds that to the loss that is backpropagated: a
    one-off gradient ~5e4x larger, confined to the router."""
    gen = seeded(7612)
    model = _MoDDecoder()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    batches = text_batches(gen)
    router = model.blocks[1].router
    router_grads: list[float] = []
    ctx.attach(model, opt)
    for step in range(240):
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        block = model.blocks[1]
        aux_logits = router(block.seen).squeeze(-1)
        if step == 180:  # the logging step
            aux = F.binary_cross_entropy_with_logits(aux_logits, block.chosen, reduction="sum")
        else:
            aux = 0.01 * F.binary_cross_entropy_with_logits(aux_logits, block.chosen)
        (loss + aux).backward()
        router_grads.append(float(router.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    others = sorted(router_grads[:180] + router_grads[181:])
    median = others[len(others) // 2]
    ctx.check("router gradient at 180 is 1000x its median", router_grads[180] > 1000 * median)
    ctx.check(
        "total gradient spiked 20x at 180", ctx.grad_norms[180] > 20 * max(ctx.grad_norms[170:180])
    )
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- 13. IA3 on a frozen decoder: a shard of binary bytes -----------------------------------------------


class _IA3Decoder(nn.Module):
    """IA3: a frozen decoder whose keys, values and FFN activations are rescaled by learned
    vectors (initialised to 1); only those vectors train."""

    def __init__(self, base: Decoder) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        dim = base.lm_head.in_features
        self.l_k = nn.ParameterList(nn.Parameter(torch.ones(dim)) for _ in base.blocks)
        self.l_v = nn.ParameterList(nn.Parameter(torch.ones(dim)) for _ in base.blocks)
        self.l_ff = nn.ParameterList(nn.Parameter(torch.ones(4 * dim)) for _ in base.blocks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        m = self.base
        x = m.tok(idx) + m.pos(torch.arange(idx.shape[1]))
        for i, block in enumerate(m.blocks):
            h = block.ln1(x)
            b, t, d = h.shape
            q, k, v = block.attn.qkv(h).split(d, dim=-1)
            k, v = k * self.l_k[i], v * self.l_v[i]
            heads = block.attn.heads
            q, k, v = (z.reshape(b, t, heads, -1).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(b, t, d))
            x = x + block.out(F.gelu(block.fc(block.ln2(x))) * self.l_ff[i])
        return m.lm_head(m.ln_f(x))


@scenario(
    "h76_ia3_frozen_decoder",
    "sg_adabelief",
    "data_outlier",
    where=(),
    diverges=230,
    heldout=True,
    onset=230,
    note="step 230's batch comes from a shard of compressed bytes, not text",
)
def h76_ia3_binary_shard(ctx: Context) -> None:
    """IA3 fine-tuning of a frozen, briefly pre-trained decoder on the byte corpus. At step 230
    the loader reaches a shard that holds zlib-compressed bytes instead of text: one batch of
    near-uniform tokens gives a loss spike."""
    import zlib

    base = _pretrained_decoder(7613, 150, dim=32)
    gen = seeded(7623)
    model = _IA3Decoder(base)
    opt = sgo.AdaBelief([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    junk = torch.tensor(list(zlib.compress(bytes(text_bytes()[:40000].tolist()), 9)))

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 230:
            start = torch.randint(
                0, len(junk) - 40, (x.shape[0],), generator=torch.Generator().manual_seed(3)
            )
            win = junk[start[:, None] + torch.arange(x.shape[1] + 1)] % VOCAB
            return win[:, :-1], win[:, 1:]
        return x, y

    fit(ctx, model, opt, text_batches(gen), 280, loss_fn=lm_loss, alter=alter)
    ref = max(ctx.losses[215:230])
    ctx.check("loss spiked 1.5x at 230", ctx.losses[230] > 1.5 * ref)
    ctx.check("back to normal after", max(ctx.losses[240:]) < 1.2 * ref)


# -- 14. prompt tuning of a frozen decoder (healthy) ------------------------------------------------------


class _PromptTuned(nn.Module):
    def __init__(self, base: Decoder, prompt: int = 8) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.prompt = nn.Parameter(0.02 * torch.randn(prompt, base.lm_head.in_features))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        m = self.base
        b, t = idx.shape
        x = torch.cat([self.prompt.expand(b, -1, -1), m.tok(idx)], 1)
        x = x + m.pos(torch.arange(x.shape[1]))
        for block in m.blocks:
            x = block(x)
        return m.lm_head(m.ln_f(x))[:, self.prompt.shape[0] :]


def _upper_windows(gen: torch.Generator, share: float, batch: int = 32, length: int = 12):
    """Byte windows of the corpus; a ``share`` of the rows upper-cased."""
    text = text_bytes()
    upper = torch.tensor(list(bytes(text.tolist()).upper()))
    while True:
        start = torch.randint(0, len(text) - length - 1, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(length + 1)
        pick = (torch.rand(batch, 1, generator=gen) < share).expand(-1, length + 1)
        win = torch.where(pick, upper[idx], text[idx]) % VOCAB
        yield win[:, :-1], win[:, 1:]


@scenario(
    "h76_prompt_tuning_frozen_decoder",
    "adagrad",
    "healthy",
    heldout=True,
    note="8 soft-prompt vectors on a frozen decoder, Adagrad at 0.2, upper-cased text",
)
def h76_prompt_tuning_healthy(ctx: Context) -> None:
    """Prompt tuning: a decoder pre-trained on the byte corpus, half of it upper-cased, is frozen
    and 8 soft-prompt vectors are trained so that it expects upper-cased text from the first
    token on."""
    base = _pretrained_decoder(
        7614, 300, dim=32, batches=_upper_windows(torch.Generator().manual_seed(7614), 0.5)
    )
    gen = seeded(7624)
    model = _PromptTuned(base)
    opt = torch.optim.Adagrad([model.prompt], lr=0.2)
    fit(ctx, model, opt, _upper_windows(gen, 1.0), 220, loss_fn=lm_loss)
    ctx.check("loss fell", sum(ctx.losses[-30:]) / 30 < sum(ctx.losses[:30]) / 30 - 0.05)


# -- 15. ALiBi with a sliding window (healthy) ------------------------------------------------------------


class _AlibiDecoder(nn.Module):
    def __init__(self, dim: int = 48, heads: int = 4, layers: int = 2, window: int = 12) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList(
            _Block(dim, heads, window=window, alibi=True) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        _init_small(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@scenario(
    "h76_alibi_sliding_window_decoder",
    "adadelta",
    "healthy",
    heldout=True,
    note="ALiBi slopes, no position embeddings, a 12-token causal window; Adadelta lr 1.0",
)
def h76_alibi_window_healthy(ctx: Context) -> None:
    gen = seeded(7615)
    model = _AlibiDecoder()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, text_batches(gen, length=48), 240, loss_fn=lm_loss)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.75 * sum(ctx.losses[:10]) / 10)


# -- 16. a draft model distilled from a fixed target decoder (healthy) -------------------------------------


@scenario(
    "h76_draft_distill_decoder",
    "sg_stablespam",
    "healthy",
    heldout=True,
    note="1-layer draft learns the 2-layer target's next-token distributions (forward KL)",
)
def h76_draft_distill_healthy(ctx: Context) -> None:
    """Speculative-decoding draft model: a 1-layer decoder trained to match a fixed 2-layer
    target's next-token distributions (KL(target || draft)) on the byte corpus."""
    target = _pretrained_decoder(7616, 150, dim=48)
    target.eval()
    gen = seeded(7626)
    draft = Decoder(dim=32, layers=1, heads=2)
    opt = sgo.StableSPAM(draft.parameters(), lr=2e-3)

    def with_target(step: int, x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            return x, F.log_softmax(target(x), -1)

    def kl(logits: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, -1)
        return (target_logp.exp() * (target_logp - logp)).sum(-1).mean()

    fit(
        ctx,
        draft,
        opt,
        text_batches(gen),
        240,
        loss_fn=kl,
        alter=with_target,
        classifier=False,
    )
    ctx.check("KL fell by half", sum(ctx.losses[-20:]) / 20 < 0.5 * sum(ctx.losses[:10]) / 10)
