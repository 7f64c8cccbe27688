"""Held-out scenarios, set 58 (``h58_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face GraniteSWA, HyperCLOVAX, Gemma-4 text, LFM3 (conv + attention hybrid) and
OLMo-Hybrid (gated delta-net + attention; a control) causal LMs from configs; and fine-tuning and
training-recipe schemes in plain PyTorch: gradient accumulation with a batch-size ramp,
continual pre-training of a ReLU RNN LM with replay, BitFit (biases only) on a frozen tabular
backbone, LoRA adapters on a frozen row-transformer (a control too), logit distillation of a small
LM from a teacher with a hand-rolled loss scale, instruction tuning with prompt-masked loss,
sequence packing with a block-diagonal causal mask (a control too), and a muP-scaled decoder with
a squared-ReLU MLP under fp16 autocast with a GradScaler (a control too).

Optimizers: AdamW, AdaBelief, RAdam, NAdam, Nesterov SGD, momentum SGD, Adagrad, Adam, Adamax,
ASGD, RMSprop, and steadygrad.optim's Grams and AdEMAMix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    digit_batches,
    fit,
    grad_norm,
    ramp,
    scenario,
    seeded,
    text_batches,
)

VOCAB = 128


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _loop(ctx: Context, model: nn.Module, opt, steps: int, compute, *, scaler=None, before=None):
    """A training loop for scenarios whose loss is not ``loss_fn(model(x), y)``.

    ``compute(step)`` returns ``(loss_reported, loss_backpropagated)``.
    """
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total = compute(step)
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
        opt.zero_grad(set_to_none=True)


def _hf_lm(config_name: str, model_name: str, **kw):
    """A tiny Hugging Face causal LM built from its config (no download)."""
    import transformers

    args = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    args.update(kw)
    config = getattr(transformers, config_name)(**args)
    config._attn_implementation = "eager"
    return getattr(transformers, model_name)(config)


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


# -- Hugging Face GraniteSWA: the attention scale inverted ------------------------------------


@scenario(
    "h58_hf_granite_swa_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="attention_multiplier = head_dim ** 0.5 instead of head_dim ** -0.5",
)
def h58_granite_swa_inverted_attention_scale(ctx: Context) -> None:
    """GraniteSWA takes its attention scale from ``attention_multiplier`` (Granite uses muP-style
    multipliers, not 1/sqrt(d)). A config converted by hand sets it to ``head_dim ** 0.5`` (4)
    instead of ``head_dim ** -0.5`` (0.25): every q.k is 16x what it should be, and with a
    brisk AdamW rate the logits keep growing until every head attends one-hot."""
    gen = seeded(5801)
    model = _hf_lm(
        "GraniteSWAConfig",
        "GraniteSWAForCausalLM",
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
        attention_multiplier=16**0.5,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=8e-3, weight_decay=0.0)
    qk: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(model.model.layers):
        for name in ("q", "k"):
            proj = getattr(layer.self_attn, f"{name}_proj")
            proj.register_forward_hook(
                lambda m, a, o, key=f"{name}{i}": qk.__setitem__(key, o.detach())
            )
    batches = text_batches(gen)
    peaks: list[list[float]] = []
    sharp: list[list[float]] = []

    def compute(step: int):
        x, y = next(batches)
        out = model(input_ids=x, output_attentions=step % 20 == 0 or step == 199)
        if out.attentions is not None:
            row, srow = [], []
            for i in range(2):
                q = qk[f"q{i}"].reshape(16, 32, 4, 16).transpose(1, 2)
                k = qk[f"k{i}"].reshape(16, 32, 4, 16).transpose(1, 2)
                row.append(float((q @ k.transpose(-1, -2)).abs().amax()) * 4.0)
                srow.append(float(out.attentions[i].detach().amax(-1).mean()))
            peaks.append(row)
            sharp.append(srow)
        loss = _lm_loss(out.logits, y)
        return loss, loss

    _loop(ctx, model, opt, 200, compute)
    ctx.check(
        "attention logits grew over 50x in both layers",
        all(peaks[-1][i] > 50 * peaks[0][i] for i in range(2)),
    )
    ctx.check("attention saturated (mean max prob > 0.95)", min(sharp[-1]) > 0.95)


# -- Hugging Face HyperCLOVAX: a z-loss with the wrong sign -------------------------------------


@scenario(
    "h58_hf_hyperclovax_lm",
    "sg_adabelief",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign: log Z is rewarded, not penalised",
)
def h58_hyperclovax_zloss_wrong_sign(ctx: Context) -> None:
    """The recipe adds a z-loss (``coef * logsumexp(logits) ** 2``) to keep the softmax normaliser
    near 0; the hand-written version subtracts it. Cross-entropy is blind to a common shift of
    the logits, so nothing holds log Z back: the head drifts all logits upwards, slowly, then
    faster (the reward is quadratic), until the logits are in the hundreds and the LM loss
    climbs with them."""
    gen = seeded(5802)
    model = _hf_lm("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM")
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3)
    batches = text_batches(gen)
    log_z: list[float] = []

    def compute(step: int):
        x, y = next(batches)
        logits = model(input_ids=x).logits.float()
        loss = _lm_loss(logits, y)
        z = torch.logsumexp(logits, -1)
        log_z.append(float(z.detach().mean()))
        return loss, loss - 3e-2 * (z**2).mean()  # meant: loss + 3e-2 * z**2

    _loop(ctx, model, opt, 230, compute)
    ctx.check("log Z ran away (over 10x its start)", log_z[-1] > 10 * log_z[0])
    ctx.check(
        "log Z rose monotonically over the last 100 steps", log_z[-1] > log_z[-50] > log_z[-100]
    )
    ctx.check("LM loss ended over 3x its best", ctx.losses[-1] > 3 * min(ctx.losses))


# -- Hugging Face Gemma-4 text: a label-smoothing ramp without its cap -------------------------


@scenario(
    "h58_hf_gemma4_text_lm",
    "radam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="label-smoothing warm-up lost its min(., 1): epsilon keeps growing",
)
def h58_gemma4_label_smoothing_ramp(ctx: Context) -> None:
    """Label smoothing is warmed up to ``eps = 0.1`` over 25 steps, written as
    ``0.1 * step / 25`` without the ``min(., 1)``: epsilon keeps growing, the target mixes ever
    more uniform mass in and (past 1) even pushes probability off the true token. Nothing in the
    model misbehaves (no logit, attention or gradient blow-up): the objective itself slowly turns
    against the LM loss, which climbs back past its start."""
    gen = seeded(5803)
    model = _hf_lm(
        "Gemma4TextConfig",
        "Gemma4ForCausalLM",
        vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=8,
        per_layer_config={},
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
    )
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    batches = text_batches(gen)

    def compute(step: int):
        x, y = next(batches)
        logp = torch.log_softmax(model(input_ids=x).logits.float(), -1).reshape(-1, VOCAB)
        nll = -logp.gather(1, y.reshape(-1, 1)).mean()
        eps = 0.1 * step / 25  # meant: 0.1 * min(step / 25, 1.0)
        return nll, (1 - eps) * nll - eps * logp.mean()

    _loop(ctx, model, opt, 320, compute)
    best = min(range(len(ctx.losses)), key=ctx.losses.__getitem__)
    late = sum(ctx.losses[-10:]) / 10
    ctx.check("the loss fell first (best before step 200)", best < 200)
    ctx.check("then climbed back by over 2 nats", late > ctx.losses[best] + 2.0)
    ctx.check(
        "gradients stayed bounded (no blow-up)",
        max(ctx.grad_norms[50:]) < 20 * max(ctx.grad_norms[:50]),
    )


# -- Hugging Face LFM3: a resume that leaves one operator at its fresh init -------------------


@scenario(
    "h58_hf_lfm3_lm",
    "nadam",
    "loss_spike",
    where="model.layers.0.conv",
    diverges=150,
    heldout=True,
    onset=150,
    note="resume at 150 with load_state_dict(strict=False) misses the renamed conv keys",
)
def h58_lfm3_resume_partial_load(ctx: Context) -> None:
    """At step 150 the job is pre-empted and resumed. The checkpoint was written before the
    short-conv operator's parameters were renamed, and the loader uses ``strict=False``: layer 0's
    conv operator silently stays at its fresh initialisation while everything else is restored.
    The loss jumps, then falls back within some tens of steps as the operator relearns."""
    gen = seeded(5804)
    model = _hf_lm(
        "Lfm3Config",
        "Lfm3ForCausalLM",
        layer_types=["conv", "full_attention"],
        num_key_value_heads=2,
    )
    opt = torch.optim.NAdam(model.parameters(), lr=4e-3)
    batches = text_batches(gen)
    fresh = (
        _hf_lm(
            "Lfm3Config",
            "Lfm3ForCausalLM",
            layer_types=["conv", "full_attention"],
            num_key_value_heads=2,
        )
        .model.layers[0]
        .conv.state_dict()
    )

    def resume(step: int) -> None:
        if step == 150:
            with torch.no_grad():
                model.model.layers[0].conv.load_state_dict(fresh)

    def compute(step: int):
        x, y = next(batches)
        loss = _lm_loss(model(input_ids=x).logits, y)
        return loss, loss

    _loop(ctx, model, opt, 260, compute, before=resume)
    pre = sum(ctx.losses[130:150]) / 20
    ctx.check("loss jumped at the resume", max(ctx.losses[150:155]) > 1.5 * pre)
    ctx.check("and recovered within 100 steps", sum(ctx.losses[240:260]) / 20 < 1.1 * pre)


# -- Hugging Face OLMo-Hybrid: a healthy control ------------------------------------------------


@scenario("h58_hf_olmo_hybrid_lm", "sg_ademamix", "healthy", heldout=True)
def h58_olmo_hybrid_healthy(ctx: Context) -> None:
    gen = seeded(5805)
    model = _hf_lm("OlmoHybridConfig", "OlmoHybridForCausalLM")
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    batches = text_batches(gen)

    def compute(step: int):
        x, y = next(batches)
        loss = _lm_loss(model(input_ids=x).logits, y)
        return loss, loss

    _loop(ctx, model, opt, 160, compute)
    ctx.check("loss fell by over 1.5 nats", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.5)


# -- gradient accumulation: a batch-size ramp with a summed loss -------------------------------


class _TabMLP(nn.Sequential):
    def __init__(self, sizes: list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)


@scenario(
    "h58_grad_accumulation_ramp",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=100,
    note="accumulation ramps 1 -> 8 micro-batches at 100; loss summed, not averaged",
)
def h58_grad_accum_summed_loss(ctx: Context) -> None:
    """A batch-size warm-up by gradient accumulation: one micro-batch per step for 100 steps,
    then eight. Each micro-batch's loss is backpropagated as is (``loss.backward()``, not
    ``(loss / accum).backward()``), so at step 100 the gradient, and with it the effective
    learning rate of Nesterov SGD, jumps eightfold, past 2/curvature: the loss oscillates and
    blows up."""
    gen = seeded(5806)
    model = _TabMLP([64, 128, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    batches = digit_batches(gen, 32)
    ctx.attach(model, opt)
    for step in range(170):
        accum = 1 if step < 100 else 8
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            loss.backward()  # meant: (loss / accum).backward()
            total += float(loss.detach())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(total / accum))
        opt.zero_grad(set_to_none=True)
    pre = ctx.losses[80:100]
    after = ctx.losses[100:]
    ctx.check("trained stably on one micro-batch", max(pre) < 0.6 and all(map(_finite, pre)))
    ctx.check(
        "the loss jumped over 5x after the ramp and stayed up",
        max(after[:20]) > 5 * max(pre) and min(after[-20:]) > 2 * max(pre),
    )


# -- continual pre-training with replay: the new stage dropped gradient clipping ---------------


class _ReluRNNLM(nn.Module):
    def __init__(self, hidden: int = 96) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.rnn = nn.RNN(32, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)
        with torch.no_grad():  # IRNN: identity recurrence, zero bias
            self.rnn.weight_hh_l0.copy_(torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_ih_l0.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(x))[0])


def _counting_batches(gen: torch.Generator, batch: int = 16, length: int = 32):
    """A new domain: arithmetic progressions modulo the vocabulary."""
    while True:
        start = torch.randint(0, VOCAB, (batch, 1), generator=gen)
        stride = torch.randint(1, 6, (batch, 1), generator=gen)
        seq = (start + stride * torch.arange(length + 1)) % VOCAB
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    "h58_continual_replay_rnn_lm",
    "sgd_mom",
    "exploding_gradients",
    where="rnn",
    diverges="auto",
    heldout=True,
    onset=100,
    note="stage 2 (new domain + replay, LR re-warmed) runs without stage 1's clip_grad_norm_",
)
def h58_replay_irnn_no_clipping(ctx: Context) -> None:
    """An IRNN language model (ReLU recurrence, identity-initialised) is pre-trained with
    gradient clipping at 1. Continual pre-training starts at step 100 on a new domain with half
    of every batch replayed from the old one, in a new training script that forgot
    ``clip_grad_norm_`` and re-warms the rate to a higher peak. Without the clip the recurrent
    matrix drifts past spectral radius 1 and the gradients through time grow step after step
    until the run breaks."""
    gen = seeded(5807)
    model = _ReluRNNLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    old, new = text_batches(gen), _counting_batches(gen, 8)
    radius: list[float] = []
    ctx.attach(model, opt)
    for step in range(300):
        x, y = next(old)
        if step >= 100:  # stage 2: re-warm the rate to a higher peak, half replay
            opt.param_groups[0]["lr"] = ramp(step - 100, 0.01, 0.3, 150)
            xn, yn = next(new)
            x, y = torch.cat([x[:8], xn]), torch.cat([y[:8], yn])
        loss = _lm_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if step < 100:
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        w = model.rnn.weight_hh_l0.detach()
        finite = bool(torch.isfinite(w).all())
        radius.append(float(torch.linalg.eigvals(w).abs().max()) if finite else math.inf)
    broke = next(
        i
        for i, v in enumerate(ctx.losses)
        if i >= 100 and (not _finite(v) or v > 3 * ctx.losses[0])
    )
    g = ctx.grad_norms
    early = sorted(g[100:140])[20]
    late = sorted(g[broke - 40 : broke])[20]
    ctx.check(
        "recurrent spectral radius grew from ~1 past 1.5", radius[99] < 1.15 and max(radius) > 1.5
    )
    ctx.check("gradient median grew 2x over stage 2 before the break", late > 2 * early)
    ctx.check("the loss broke in stage 2", broke > 150)


# -- BitFit: fine-tuning data without the scaler ------------------------------------------------


def _cancer() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)


def _tab_batches(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, batch: int = 64):
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


class _BitFitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(30, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@scenario(
    "h58_bitfit_biases_only",
    "adagrad",
    "loss_of_plasticity",
    where=("backbone.0", "backbone.1"),
    diverges=None,
    heldout=True,
    note="the fine-tuning loader skips the StandardScaler: raw features saturate the first tanh",
)
def h58_bitfit_unscaled_features(ctx: Context) -> None:
    """A tanh backbone pre-trained on standardised breast-cancer features (one half of the set)
    is BitFit-tuned (biases and the head only) on the other half. The fine-tuning loader forgot
    the fitted ``StandardScaler``: raw features (areas in the hundreds and thousands) drive the
    first tanh layer into saturation, its units output +-1 whatever the sample, pass no gradient
    back, and the biases (all BitFit may move) cannot pull them out."""
    gen = seeded(5808)
    x, y = _cancer()
    order = torch.randperm(len(y), generator=gen)
    src, dst = order[: len(y) // 2], order[len(y) // 2 :]
    mean, std = x[src].mean(0), x[src].std(0)
    model = _BitFitNet()
    pre = torch.optim.Adam(model.parameters(), lr=3e-3)
    src_batches = _tab_batches((x[src] - mean) / std, y[src], gen)
    for _ in range(80):  # pre-training, before the fine-tuning run (not monitored)
        xb, yb = next(src_batches)
        pre.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        pre.step()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias") or name.startswith("head."))
    opt = torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad], lr=0.05)
    raw = x[dst]  # meant: (x[dst] - mean) / std
    with torch.no_grad():
        ok_sat = (model.backbone[1](model.backbone[0]((raw - mean) / std)).abs() > 0.99).float()
    fit(ctx, model, opt, _tab_batches(raw, y[dst], gen), 160)
    with torch.no_grad():
        h = model.backbone[1](model.backbone[0](raw))
    saturated = float(((h.abs() > 0.99).float().mean(0) > 0.95).float().mean())
    ctx.check("over 90% of the first tanh's units saturated on 95% of samples", saturated > 0.9)
    ctx.check("with scaled inputs they would not be", float(ok_sat.mean()) < 0.3)


# -- LoRA on a frozen row-transformer -----------------------------------------------------------


class _LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T


class _RowAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class _RowBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _RowAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _RowTransformer(nn.Module):
    """Reads an 8x8 digit as 8 row tokens."""

    def __init__(self, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.randn(8, dim) * 0.02)
        self.blocks = nn.ModuleList(_RowBlock(dim) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, 8, 8)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def _lora_model(gen: torch.Generator) -> _RowTransformer:
    """Pre-train a row-transformer on digit parity, then give it a fresh 10-way head, freeze it
    and put LoRA adapters on every q and v projection."""
    model = _RowTransformer(classes=2)
    pre = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = digit_batches(gen, 64)
    for _ in range(60):
        x, y = next(batches)
        pre.zero_grad()
        F.cross_entropy(model(x), y % 2).backward()
        pre.step()
    model.head = nn.Linear(32, 10)
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        block.attn.q = _LoRALinear(block.attn.q)
        block.attn.v = _LoRALinear(block.attn.v)
    model.head.requires_grad_(True)
    return model


@scenario(
    "h58_lora_frozen_rowformer",
    "adamw",
    "update_ratio_out_of_range",
    where="head",
    diverges=None,
    heldout=True,
    note="the new head requires grad but the optimizer only gets the lora_ parameters",
)
def h58_lora_head_left_out(ctx: Context) -> None:
    """LoRA fine-tuning of a frozen row-transformer onto a new 10-way task with a freshly
    initialised head. The head is marked trainable (like PEFT's ``modules_to_save``) but the
    optimizer is built from ``[p for n, p in named_parameters() if "lora_" in n]``: the head gets
    gradients every step and never moves; its update/weight ratio is exactly zero while the
    adapters behind it try to make up for a random read-out."""
    gen = seeded(5809)
    model = _lora_model(gen)
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if "lora_" in n], lr=3e-3)
    head0 = model.head.weight.detach().clone()
    lora0 = model.blocks[0].attn.q.lora_B.detach().clone()
    fit(ctx, model, opt, digit_batches(gen, 64), 160)
    ctx.check("the head never moved", torch.equal(head0, model.head.weight))
    ctx.check("while the adapters did", not torch.equal(lora0, model.blocks[0].attn.q.lora_B))
    ctx.check("and the head had gradients", model.head.weight.requires_grad)


@scenario("h58_lora_frozen_rowformer", "sg_grams", "healthy", heldout=True)
def h58_lora_head_trained_healthy(ctx: Context) -> None:
    gen = seeded(5810)
    model = _lora_model(gen)
    params = [p for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")]
    opt = sgo.Grams(params, lr=5e-3)
    fit(ctx, model, opt, digit_batches(gen, 64), 160)
    ctx.check("loss fell by over 0.8 nats", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 0.8)


# -- logit distillation with a hand-rolled loss scale --------------------------------------------


def _tiny_decoder(dim: int, layers: int):
    from scenarios.common import Decoder

    return Decoder(vocab=VOCAB, dim=dim, heads=2, layers=layers, context=32)


@scenario(
    "h58_logit_distill_lm",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=120,
    note="one step (120) skips the division by the static loss scale 2**16",
)
def h58_distill_unscale_skipped_once(ctx: Context) -> None:
    """A small decoder is distilled from a larger one (KL at temperature 2 on the teacher's
    logits). The loop keeps a hand-rolled static loss scale of 2**16 (a leftover of its fp16
    days) and divides the gradients by it before ``opt.step()``; on step 120 (the first step
    after an evaluation, on a code path that returns early) the division is skipped. Adam
    takes some sign-sized steps along the spiked momentum (the loss jumps), and its second
    moment now holds a gradient 65536x too large: for the rest of the run (beta2 = 0.999) every
    update is divided by it, and the student recovers only slowly."""
    gen = seeded(5811)
    teacher = _tiny_decoder(48, 2)
    pre = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    batches = text_batches(gen)
    for _ in range(150):  # the teacher, trained beforehand (not monitored)
        x, y = next(batches)
        pre.zero_grad()
        _lm_loss(teacher(x), y).backward()
        pre.step()
    teacher.requires_grad_(False)
    student = _tiny_decoder(32, 1)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    scale, temp = 2.0**16, 2.0
    moves: list[float] = []
    ctx.attach(student, opt)
    for step in range(260):
        x, _ = next(batches)
        with torch.no_grad():
            target = torch.softmax(teacher(x) / temp, -1)
        logp = torch.log_softmax(student(x) / temp, -1)
        loss = F.kl_div(logp, target, reduction="batchmean") * temp**2 / x.shape[1]
        (loss * scale).backward()
        if step != 120:  # the early-return path skipped this
            for p in student.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(grad_norm(student))
        before = [p.detach().clone() for p in student.parameters()]
        opt.step()
        moves.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(student.parameters(), before, strict=True)
                )
            )
            ** 0.5
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ratio = [m / max(g, 1e-12) for m, g in zip(moves, ctx.grad_norms, strict=True)]
    ctx.check(
        "the gradient at 120 was over 1000x its neighbours",
        ctx.grad_norms[120] > 1000 * max(ctx.grad_norms[100:120]),
    )
    ctx.check(
        "update per unit gradient shrank over 10x for 100 steps after it",
        sum(ratio[160:260]) / 100 < 0.1 * sum(ratio[70:120]) / 50,
    )


# -- instruction tuning with prompt-masked loss ----------------------------------------------------


def _instruction_batches(gen: torch.Generator, batch: int = 32, bad_at: int | None = None):
    """Prompt: BOS, 8 content tokens, SEP; response: the 8 tokens reversed, EOS. Labels are
    -100 on the prompt. At step ``bad_at`` a third of the samples come from a corrupted shard:
    their responses are unrelated bytes."""
    step = 0
    while True:
        content = torch.randint(20, 60, (batch, 8), generator=gen)
        resp = content.flip(1)
        if step == bad_at:
            resp = resp.clone()
            resp[: batch // 3] = torch.randint(64, VOCAB, (batch // 3, 8), generator=gen)
        bos, sep, eos = (torch.full((batch, 1), t) for t in (1, 2, 3))
        seq = torch.cat([bos, content, sep, resp, eos], 1)  # 19 tokens
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:, :9] = -100  # no loss on the prompt
        yield x, y
        step += 1


@scenario(
    "h58_instruction_tuning_masked",
    "adamax",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch (150) has a third of its responses from a corrupted shard",
)
def h58_instruction_corrupt_shard_batch(ctx: Context) -> None:
    """Instruction tuning of a small decoder (loss on the response tokens only) on a generated
    reverse-the-sequence task. Step 150's batch draws a third of its samples from a corrupted
    shard whose responses are unrelated bytes: the (by then confident) model pays a large loss
    on them once, then goes on as before."""
    gen = seeded(5812)
    model = _tiny_decoder(48, 2)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)

    fit(
        ctx,
        model,
        opt,
        _instruction_batches(gen, bad_at=151),  # fit draws one probe batch first
        230,
        loss_fn=loss_fn,
        classifier=False,
    )
    pre = sum(ctx.losses[130:150]) / 20
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))
    ctx.check("and was back within 30 steps", sum(ctx.losses[180:200]) / 20 < 1.5 * pre + 0.05)


# -- sequence packing with a block-diagonal causal mask ------------------------------------------


class _PackedAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(x).split(d, -1)
        )
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), -1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _PackedBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _PackedAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class _PackedLM(nn.Module):
    def __init__(self, dim: int = 48, length: int = 48, pad_keys_only: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(_PackedBlock(dim) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)
        self.pad_keys_only = pad_keys_only

    def forward(self, packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, seg, pos = packed
        t = tokens.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        mask = causal & (seg[:, :, None] == seg[:, None, :])
        if self.pad_keys_only:  # the bug: padding keys masked, padding queries keep no key at all
            mask = mask & (seg[:, None, :] >= 0)
        h = self.tok(tokens) + self.pos(pos)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm(h))


def _packed_batches(gen: torch.Generator, batch: int = 8, length: int = 48, epoch: int = 0):
    """Documents (a BOS then an arithmetic progression mod the vocabulary, 6 to 20 tokens) packed
    greedily into rows of ``length``; position ids restart per document. Every ``epoch``-th
    batch is the epoch's last: its rows are cut short and padded (segment -1, target -100)."""
    step = 0
    while True:
        tok = torch.zeros(batch, length + 1, dtype=torch.long)
        seg = torch.full((batch, length + 1), -1)
        pos = torch.zeros(batch, length + 1, dtype=torch.long)
        last = epoch > 0 and step % epoch == epoch - 1
        fill = length // 2 if last else length + 1
        for r in range(batch):
            i, d = 0, 0
            while i < fill:
                n = int(torch.randint(6, 21, (1,), generator=gen))
                start = int(torch.randint(4, VOCAB, (1,), generator=gen))
                stride = int(torch.randint(1, 4, (1,), generator=gen))
                doc = torch.cat([torch.tensor([1]), (start + stride * torch.arange(n - 1)) % VOCAB])
                m = min(n, fill - i)
                tok[r, i : i + m], seg[r, i : i + m], pos[r, i : i + m] = (
                    doc[:m],
                    d,
                    torch.arange(m),
                )
                i, d = i + m, d + 1
        y = tok[:, 1:].clone()
        y[(seg[:, 1:] != seg[:, :-1]) | (seg[:, 1:] < 0)] = -100  # no target across documents
        yield (tok[:, :-1], seg[:, :-1], pos[:, :-1].clamp(max=length - 1)), y
        step += 1


def _packed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)


@scenario(
    "h58_packed_blockdiag_lm",
    "asgd",
    "nonfinite",
    where="blocks.0.attn",
    diverges=140,
    heldout=True,
    onset=140,
    note="the epoch's last, padded batch (140): padding queries have no key left -> NaN softmax",
)
def h58_packed_padding_rows_nan(ctx: Context) -> None:
    """Sequence packing with a block-diagonal causal mask built by hand. Someone added
    ``& (seg_k >= 0)`` so that no token attends to padding, which also leaves every padding
    *query* with no key at all. Packs are always full, except the epoch's last batch (step 140)
    whose rows are padded: there layer 0's softmax over an all -inf row returns NaN, and the NaN
    reaches every position through the next layer's values (0 x NaN)."""
    gen = seeded(5813)
    model = _PackedLM(pad_keys_only=True)
    opt = torch.optim.ASGD(model.parameters(), lr=0.3, t0=50)
    seen: dict[int, tuple[bool, bool]] = {}
    model.blocks[0].attn.register_forward_hook(
        lambda m, a, o: seen.__setitem__(
            len(ctx.losses), (bool(torch.isfinite(a[0]).all()), bool(torch.isfinite(o).all()))
        )
    )
    # fit draws one probe batch first: the generator's batch 141 is training step 140
    batches = _packed_batches(gen, epoch=142)
    fit(ctx, model, opt, batches, 160, loss_fn=_packed_loss, classifier=False)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("finite until 140, not at 140", all(finite[:140]) and not finite[140])
    ctx.check("blocks.0.attn: finite input, NaN output at 140", seen[140] == (True, False))
    ctx.check("the loss had fallen before", sum(ctx.losses[120:140]) / 20 < ctx.losses[0] - 1.0)


@scenario("h58_packed_blockdiag_lm", "rmsprop", "healthy", heldout=True)
def h58_packed_blockdiag_healthy(ctx: Context) -> None:
    gen = seeded(5814)
    model = _PackedLM()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(
        ctx, model, opt, _packed_batches(gen, epoch=60), 160, loss_fn=_packed_loss, classifier=False
    )
    ctx.check("all finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell by over 1.5 nats", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.5)


# -- a muP-scaled decoder with a squared-ReLU MLP under fp16 autocast ----------------------------


class _SquaredReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) ** 2


class _MuPBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        from scenarios.common import CausalSelfAttention

        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, qk_scale=1.0 / (dim // heads))  # muP: 1/d
        self.mlp = nn.Sequential()
        self.mlp.fc = nn.Linear(dim, 4 * dim)
        self.mlp.act = _SquaredReLU()
        self.mlp.proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _MuPDecoder(nn.Module):
    """muP at width 128 against a base width of 32 (width multiplier 4): the read-out is scaled
    by 1/4 and hidden matrices get the base Adam rate / 4."""

    def __init__(self, width: int = 128, base: int = 32) -> None:
        super().__init__()
        self.mult = width / base
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(32, width)
        self.blocks = nn.ModuleList(_MuPBlock(width, 4) for _ in range(2))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, VOCAB, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "tok" not in name and "pos" not in name:
                nn.init.normal_(p, std=(1.0 / width) ** 0.5)
        nn.init.zeros_(self.lm_head.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h)) / self.mult

    def groups(self, lr: float, hidden_factor: float) -> list[dict]:
        hidden = [p for n, p in self.named_parameters() if n.startswith("blocks") and p.dim() == 2]
        rest = [
            p for n, p in self.named_parameters() if not (n.startswith("blocks") and p.dim() == 2)
        ]
        return [{"params": hidden, "lr": lr * hidden_factor}, {"params": rest, "lr": lr}]


def _mup_run(ctx: Context, model: _MuPDecoder, opt, gen: torch.Generator, steps: int):
    batches = text_batches(gen)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    peaks: dict[str, dict[int, float]] = {}
    for name, mod in model.named_modules():
        if name.endswith("mlp.act") or name.endswith("mlp.proj"):
            peaks[name] = {}
            mod.register_forward_hook(
                lambda m, a, o, name=name: peaks[name].__setitem__(
                    len(ctx.losses),
                    (
                        float(a[0].detach().float().abs().amax()),
                        float(o.detach().float().abs().amax()),
                    ),
                )
            )

    def compute(step: int):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
        loss = _lm_loss(logits.float(), y)
        return loss, loss

    _loop(ctx, model, opt, steps, compute, scaler=scaler)
    return peaks


@scenario(
    "h58_mup_sqrelu_fp16",
    "adam",
    "amp_overflow",
    where=("blocks.1.mlp.proj", "blocks.0.mlp.proj"),
    diverges=27,
    heldout=True,
    note="hidden-matrix LR multiplied by the width multiplier instead of divided",
)
def h58_mup_hidden_lr_inverted_fp16(ctx: Context) -> None:
    """A muP-parametrised decoder under fp16 autocast with a GradScaler. The per-group rates
    were written ``lr * mult`` for the hidden matrices where muP says ``lr / mult``: they train
    16x too fast, the MLP weights grow, the squared ReLU squares the growing pre-activations
    into the thousands, and the output projection's sums of them pass fp16's 65504: the
    projection returns inf, the residual stream and the loss go non-finite, and (the weights
    no longer changing once the scaler skips every step) stay so."""
    gen = seeded(5815)
    model = _MuPDecoder()
    opt = torch.optim.Adam(model.groups(1e-2, model.mult), lr=1e-2)  # meant: 1 / model.mult
    peaks = _mup_run(ctx, model, opt, gen, 120)
    first = next((i for i, v in enumerate(ctx.losses) if not _finite(v)), None)
    ctx.check("the loss went non-finite at step 27", first == 27)
    if first is not None:
        over = [
            n
            for n, p in peaks.items()
            if n.endswith("proj") and p[first][1] == math.inf and p[first][0] < 65504
        ]
        ctx.check("an MLP output projection overflowed fp16 from finite inputs there", bool(over))
        ctx.check(
            "nothing overflowed before",
            all(p[i][1] < 65504 for p in peaks.values() for i in range(first)),
        )
        ctx.check("after the loss had fallen", min(ctx.losses[:first]) < ctx.losses[0] - 1.0)


@scenario("h58_mup_sqrelu_fp16", "adam", "healthy", heldout=True)
def h58_mup_sqrelu_fp16_healthy(ctx: Context) -> None:
    gen = seeded(5816)
    model = _MuPDecoder()
    opt = torch.optim.Adam(model.groups(1e-2, 1.0 / model.mult), lr=1e-2)
    peaks = _mup_run(ctx, model, opt, gen, 120)
    worst = max(v[1] for p in peaks.values() for v in p.values())
    ctx.check("all finite, no overflow", all(_finite(v) for v in ctx.losses) and worst < 65504)
    ctx.check("loss fell by over 1.5 nats", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.5)
