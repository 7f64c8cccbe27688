"""Held-out set 35 (``h35_``): twelve induced instabilities and four healthy controls.

Families: Hugging Face GPT-OSS causal LM (tiny MoE), XLM-RoBERTa-XL classifier, TextNet image
classifier, Falcon-H1 hybrid (Mamba-2 + attention) causal LM and Splinter question answering,
all from configs; DeepSurv (Cox partial likelihood on generated censored survival data), deep
knowledge tracing (LSTM on generated student answers), XCiT (cross-covariance attention),
CaiT (LayerScale + class attention), neural spline flow (rational-quadratic coupling) on
generated 2-D points, ODE-RNN on generated irregular series (fixed-step Euler) and a
RetinaNet-style focal-loss detection head on generated images.
Optimizers: SGD, momentum, Nesterov, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop and
steadygrad.optim's AdaBelief and Lion.

Written without reading steadygrad's detectors, diagnosis or monitor, and never run on
steadygrad while written: each scenario was adjusted with a stand-in context that attaches
nothing, only until its own checks held (or, for a healthy control, until it trained normally).
"""

from __future__ import annotations

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
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs ------------------------------------------------------------


def _gpt_oss():
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=16,
        max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    return GptOssForCausalLM(config)


def _xlmr_xl():
    from transformers import XLMRobertaXLConfig, XLMRobertaXLForSequenceClassification

    config = XLMRobertaXLConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return XLMRobertaXLForSequenceClassification(config)


def _textnet():
    from transformers import TextNetConfig, TextNetForImageClassification

    config = TextNetConfig(
        stem_out_channels=8,
        stem_num_channels=1,
        hidden_sizes=[8, 8, 16, 16, 32],
        depths=[1, 1, 1, 1],
        image_size=[8, 8],
        num_labels=10,
        conv_layer_kernel_sizes=[[[3, 3]], [[3, 3]], [[3, 1]], [[1, 3]]],
        conv_layer_strides=[[1], [2], [1], [2]],
    )
    return TextNetForImageClassification(config)


def _falcon_h1():
    from transformers import FalconH1Config, FalconH1ForCausalLM

    config = FalconH1Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        mamba_d_ssm=32,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_d_state=8,
        mamba_n_groups=1,
        mamba_chunk_size=16,
        mamba_expand=1,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    return FalconH1ForCausalLM(config)


def _splinter():
    from transformers import SplinterConfig, SplinterForQuestionAnswering

    config = SplinterConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        question_token_id=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return SplinterForQuestionAnswering(config)


def _lm(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


def _cls(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


def _img(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x.reshape(-1, 1, 8, 8)).logits


# -- GPT-OSS: a resume with the wrong learning rate ---------------------------------------------


@scenario(
    "h35_hf_gpt_oss_lm",
    "adamw",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=150,
    note="resumed at step 150 with a rate 100x the one it was trained at",
)
def h35_lr_resume_gpt_oss_adamw(ctx: Context) -> None:
    gen = seeded(3501)
    model = _gpt_oss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def resume(step: int) -> None:
        if step == 150:  # the resume script reads --lr 5e-1 (a typo for 5e-4)
            opt.param_groups[0]["lr"] = 0.5

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        230,
        loss_fn=lm_loss,
        before=resume,
        forward=_lm,
        classifier=False,
    )
    before = min(ctx.losses[130:150])
    ctx.check("loss trained before the resume", before < ctx.losses[0] - 1.0)
    after = ctx.losses[150:]
    ctx.check(
        "loss doubled after the resume",
        any(not math.isfinite(v) or v > 2 * before for v in after),
    )


# -- XLM-RoBERTa-XL: fp16 loss scale far too high -------------------------------------------------


@scenario("h35_hf_xlmr_xl_cls", "adamax", "amp_overflow", diverges=None, heldout=True)
def h35_amp_scale_xlmr_xl_adamax(ctx: Context) -> None:
    """fp16 autocast with a GradScaler whose initial scale (2**30) and short growth interval
    were copied from a recipe: the first steps overflow and are skipped, then the scale keeps
    growing back into overflow."""
    gen = seeded(3502)
    model = _xlmr_xl()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=20)
    fit(ctx, model, opt, bert_batches(gen), 160, forward=_cls, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check("the scale was lowered after overflows at least 4 times", drops >= 4)
    ctx.check("the loss stayed finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("it still learned", sum(ctx.losses[-20:]) / 20 < sum(ctx.losses[:20]) / 20)


# -- TextNet: label smoothing written with the wrong sign -----------------------------------------


@scenario(
    "h35_hf_textnet_img",
    "radam",
    "output_logit_divergence",
    where="fc",
    diverges=None,
    heldout=True,
    onset=60,
)
def h35_smoothing_sign_textnet_radam(ctx: Context) -> None:
    """Hand-written label smoothing switched on at step 60 adds ``+ eps * mean(log_softmax)``
    where it should subtract it: the loss rewards pushing every non-target logit down without
    end, and the logits spread further every step."""
    gen = seeded(3503)
    model = _textnet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    state = {"step": 0, "logits": []}

    def track(step: int) -> None:
        state["step"] = step

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state["logits"].append(float(logits.detach().abs().max()))
        ce = F.cross_entropy(logits, y)
        if state["step"] < 60:
            return ce
        eps = 0.2
        return (1 - eps) * ce + eps * F.log_softmax(logits, -1).mean()

    fit(ctx, model, opt, digit_batches(gen, 32), 260, loss_fn=loss_fn, before=track, forward=_img)
    at_onset = max(state["logits"][50:61])
    ctx.check("logits 10x larger than at the onset", state["logits"][-1] > 10 * at_onset)


# -- Falcon-H1: healthy ----------------------------------------------------------------------------


@scenario("h35_hf_falcon_h1_lm", "adamw", "healthy", heldout=True)
def h35_healthy_falcon_h1_adamw(ctx: Context) -> None:
    gen = seeded(3504)
    model = _falcon_h1()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    warm, total = 30, 220

    def schedule(step: int) -> None:
        if step < warm:
            f = (step + 1) / warm
        else:
            f = 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        opt.param_groups[0]["lr"] = 3e-3 * max(f, 0.05)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        total,
        loss_fn=lm_loss,
        before=schedule,
        forward=_lm,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < sum(ctx.losses[:20]) / 20 - 1.0)


# -- Splinter: gradual unfreezing that never unfreezes --------------------------------------------


def _span_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    """A question token (3) up front, then noise holding one two-token answer: an opening
    token (5) where the span starts and a closing one (4) right after it."""
    while True:
        x = torch.randint(6, 64, (batch, length), generator=gen)
        x[:, 0] = 2
        x[:, 1] = 3
        start = torch.randint(3, length - 1, (batch,), generator=gen)
        x[torch.arange(batch), start] = 5
        x[torch.arange(batch), start + 1] = 4
        yield x, torch.stack([start, start + 1], 1)


def _qa_loss(out: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    start, end = out
    return 0.5 * (F.cross_entropy(start, y[:, 0]) + F.cross_entropy(end, y[:, 1]))


def _qa_forward(model: nn.Module, x: torch.Tensor):
    out = model(input_ids=x)
    return _Pair(out.start_logits, out.end_logits)


class _Pair(tuple):
    """(start, end) logits; ``.float()`` so that the shared training loop can cast it."""

    def __new__(cls, a: torch.Tensor, b: torch.Tensor):
        return super().__new__(cls, (a, b))

    def float(self):
        return self


@scenario(
    "h35_hf_splinter_qa",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where="splinter.encoder.layer.0",
    diverges=None,
    heldout=True,
)
def h35_never_unfrozen_splinter_adabelief(ctx: Context) -> None:
    """Gradual unfreezing: encoder layer 0 starts in a group at rate 0 and should be raised
    at epoch 1, but the hook compares the *step* counter with 1 after it has passed: the layer
    stays at rate 0 for the whole run."""
    gen = seeded(3505)
    model = _splinter()
    layer0 = {id(p) for p in model.splinter.encoder.layer[0].parameters()}
    rest = [p for p in model.parameters() if id(p) not in layer0]
    opt = sgo.AdaBelief(
        [
            {"params": list(model.splinter.encoder.layer[0].parameters()), "lr": 0.0},
            {"params": rest},
        ],
        lr=5e-4,
        fused=False,
    )
    before = model.splinter.encoder.layer[0].attention.self.query.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        _span_batches(gen),
        200,
        loss_fn=_qa_loss,
        forward=_qa_forward,
        classifier=False,
    )
    after = model.splinter.encoder.layer[0].attention.self.query.weight
    ctx.check("layer 0 unchanged", torch.equal(before, after))
    ctx.check("the rest learned", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))


# -- DeepSurv on generated censored data ----------------------------------------------------------


def _survival_batches(gen: torch.Generator, batch: int = 128, features: int = 12):
    """Exponential event times with a nonlinear log-hazard, and random right-censoring."""
    beta = torch.randn(features, generator=gen) * 0.6
    while True:
        x = torch.randn(batch, features, generator=gen)
        risk = x @ beta + 0.8 * torch.sin(2 * x[:, 0]) * x[:, 1]
        u = torch.rand(batch, generator=gen).clamp_min(1e-6)
        event_time = -torch.log(u) / torch.exp(risk)
        censor_time = torch.rand(batch, generator=gen) * 3.0
        time = torch.minimum(event_time, censor_time)
        event = (event_time <= censor_time).float()
        yield x, torch.stack([time, event], 1)


def _cox_loss(risk: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties) per observed event."""
    risk = risk.reshape(-1)
    order = torch.argsort(y[:, 0], descending=True)
    risk, event = risk[order], y[order, 1]
    log_risk_set = torch.logcumsumexp(risk, 0)
    return -((risk - log_risk_set) * event).sum() / event.sum().clamp_min(1.0)


class DeepSurv(nn.Module):
    def __init__(self, features: int = 12, hidden: int = 48) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@scenario(
    "h35_deepsurv_cox",
    "sgd",
    "loss_of_plasticity",
    where=("net.2", "net.3"),
    diverges=None,
    heldout=True,
    onset=100,
)
def h35_sparsity_penalty_deepsurv_sgd(ctx: Context) -> None:
    """An activation-sparsity penalty on the second hidden layer, switched on at step 100 with
    a weight meant for a summed (not averaged) Cox loss: it drives the pre-activations below
    zero and the ReLU units die one after another (a dead unit gets no gradient back)."""
    gen = seeded(3506)
    model = DeepSurv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    feats: dict[str, torch.Tensor] = {}
    model.net[3].register_forward_hook(lambda m, i, o: feats.__setitem__("h", o))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 100:
            return loss
        return loss + 0.6 * feats["h"].sum(1).mean()

    fit(
        ctx,
        model,
        opt,
        _survival_batches(gen),
        320,
        loss_fn=_cox_loss,
        extra_loss=penalty,
        classifier=False,
    )
    x, _ = next(_survival_batches(gen, 512))
    with torch.no_grad():
        h = model.net[:4](x)
    ctx.check("at least half of net.3's units dead", dead_fraction(h) >= 0.5)


@scenario("h35_deepsurv_cox", "sg_lion", "healthy", heldout=True)
def h35_healthy_deepsurv_lion(ctx: Context) -> None:
    gen = seeded(3507)
    model = DeepSurv()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.01, fused=False)
    fit(ctx, model, opt, _survival_batches(gen), 260, loss_fn=_cox_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < sum(ctx.losses[:20]) / 20 - 0.2)


# -- deep knowledge tracing -----------------------------------------------------------------------

_SKILLS = 12


def _student_batches(gen: torch.Generator, batch: int = 32, length: int = 30):
    """Students with an ability that grows with practice answer questions on skills of fixed
    difficulty; the model sees (skill, correct) pairs and predicts the next answer."""
    difficulty = torch.randn(_SKILLS, generator=gen)
    while True:
        ability = torch.randn(batch, 1, generator=gen)
        skill = torch.randint(0, _SKILLS, (batch, length + 1), generator=gen)
        practice = torch.zeros(batch, _SKILLS)
        correct = torch.zeros(batch, length + 1)
        for t in range(length + 1):
            s = skill[:, t]
            p = torch.sigmoid(
                ability[:, 0] - difficulty[s] + 0.4 * practice[torch.arange(batch), s]
            )
            correct[:, t] = (torch.rand(batch, generator=gen) < p).float()
            practice[torch.arange(batch), s] += 1
        inputs = F.one_hot(skill[:, :-1] + _SKILLS * correct[:, :-1].long(), 2 * _SKILLS).float()
        yield (inputs, skill[:, 1:]), correct[:, 1:]


class DKT(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2 * _SKILLS, hidden, batch_first=True)
        self.out = nn.Linear(hidden, _SKILLS)

    def forward(self, batch) -> torch.Tensor:
        inputs, next_skill = batch
        h, _ = self.lstm(inputs)
        return self.out(h).gather(2, next_skill[..., None])[..., 0]


@scenario(
    "h35_dkt_lstm",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=150,
)
def h35_score_scale_dkt_adam(ctx: Context) -> None:
    """One batch at step 150 comes from an export that stores answers as scores out of 100
    (0 or 100) instead of 0/1; BCE-with-logits accepts them, the gradient is ~100x every
    other, and Adam's second moment keeps the updates damped for hundreds of steps after."""
    gen = seeded(3508)
    model = DKT()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    w = model.lstm.weight_hh_l0
    v_at: dict[int, float] = {}

    def alter(step: int, x, y):
        if step == 150:
            y = y * 100.0
        return x, y

    def before(step: int) -> None:
        if step in (149, 151, 300) and opt.state:
            v_at[step] = float(opt.state[w]["exp_avg_sq"].mean())

    fit(
        ctx,
        model,
        opt,
        _student_batches(gen),
        320,
        loss_fn=F.binary_cross_entropy_with_logits,
        alter=alter,
        before=before,
        classifier=False,
    )
    ctx.check("second moment jumped >= 100x", v_at[151] > 100 * v_at[149])
    ctx.check("and was still >= 10x 150 steps later", v_at[300] > 10 * v_at[149])
    pre = sum(ctx.losses[120:150]) / 30
    ctx.check(
        "no progress in the 170 steps after",
        min(sum(ctx.losses[t : t + 20]) / 20 for t in range(151, 300)) >= pre - 0.01,
    )


# -- XCiT: cross-covariance attention ------------------------------------------------------------


class XCA(nn.Module):
    """Cross-covariance attention: a (d x d) attention over channels from L2-normalised q, k
    along tokens, with a learnt per-head temperature."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = F.normalize(qkv[0], dim=-1), F.normalize(qkv[1], dim=-1), qkv[2]
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(-1)
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, d))


class XCiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = XCA(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # local patch interaction
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        b, n, d = x.shape
        side = int(n**0.5)
        grid = self.norm2(x).transpose(1, 2).reshape(b, d, side, side)
        x = x + F.gelu(self.local(grid)).reshape(b, d, n).transpose(1, 2)
        return x + self.mlp(self.norm3(x))


class XCiT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        self.blocks = nn.ModuleList(XCiTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x.reshape(-1, 1, 8, 8)).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


@scenario(
    "h35_xcit_img",
    "nadam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
)
def h35_memorise_xcit_nadam(ctx: Context) -> None:
    """A debugging run left training on a fixed 64-image subset with no regularisation and a
    distillation temperature of 0.1 still dividing the logits: they spread until float32
    softmax gives most targets exactly 1 and their gradient exactly 0."""
    gen = seeded(3509)
    x, y = digits()
    idx = torch.randperm(len(y), generator=gen)[:64]
    xs, ys = x[idx], y[idx]

    def batches():
        while True:
            yield xs, ys

    model = XCiT()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    scale = 10.0  # a distillation temperature of 0.1 left on the student's logits

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return scale * m(x)

    fit(ctx, model, opt, batches(), 450, forward=forward)
    with torch.no_grad():
        logits = forward(model, xs)
    ctx.check("most rows collapsed", collapsed_fraction(logits, ys) >= 0.5)


# -- CaiT: LayerScale and class attention --------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention by hand; ``last_logit`` keeps the largest |q.k|/sqrt(d) seen."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.last_logit = 0.0

    def forward(self, x: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        src = x if queries is None else queries
        h = self.heads
        q = self.q(src).reshape(b, src.shape[1], h, -1).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, -1).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        self.last_logit = float(logits.detach().abs().max())
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, src.shape[1], d))


class CaiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, class_attention: bool = False) -> None:
        super().__init__()
        self.class_attention = class_attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.gamma1 = nn.Parameter(0.1 * torch.ones(dim))  # LayerScale
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.gamma2 = nn.Parameter(0.1 * torch.ones(dim))

    def forward(self, x: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        if not self.class_attention:
            x = x + self.gamma1 * self.attn(self.norm1(x))
            return x + self.gamma2 * self.mlp(self.norm2(x))
        u = self.norm1(torch.cat([cls, x], 1))
        cls = cls + self.gamma1 * self.attn(u, queries=u[:, :1])
        return cls + self.gamma2 * self.mlp(self.norm2(cls))


class CaiT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 16, dim))
        self.blocks = nn.ModuleList(CaiTBlock(dim, heads) for _ in range(depth))
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.class_blocks = nn.ModuleList(CaiTBlock(dim, heads, True) for _ in range(1))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        x = self.patch(patches) + self.pos
        for block in self.blocks:
            x = block(x)
        cls = self.cls_token.expand(b, -1, -1)
        for block in self.class_blocks:
            cls = block(x, cls)
        return self.head(self.norm(cls[:, 0]))


@scenario(
    "h35_cait_img",
    "adamw",
    "attention_logit_growth",
    where=("blocks.1.attn", "blocks.0.attn"),
    diverges=None,
    heldout=True,
)
def h35_qk_lr_multiplier_cait_adamw(ctx: Context) -> None:
    """A parameter-group helper meant to give a freshly added adapter a 25x rate and no weight
    decay matches every ``.q.``/``.k.`` name instead: the query and key weights of the
    self-attention blocks grow without bound and so do the attention logits."""
    gen = seeded(3510)
    model = CaiT()
    qk = [
        p
        for n, p in model.named_parameters()
        if n.startswith("blocks.") and (".attn.q." in n or ".attn.k." in n)
    ]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 25 * 1e-3, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=0.05,
    )
    logits: list[float] = []

    def record(step: int) -> None:
        logits.append(max(b.attn.last_logit for b in model.blocks))

    fit(ctx, model, opt, digit_batches(gen), 300, before=record)
    ctx.check("attention logits grew 10x", max(logits[-20:]) > 10 * max(logits[1:10]))


@scenario(
    "h35_cait_img",
    "adagrad",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=120,
)
def h35_label_noise_ramp_cait_adagrad(ctx: Context) -> None:
    """A label-noise augmentation whose schedule was meant to decay ramps *up* from step 120:
    by the end almost every label is replaced by a random one and the loss climbs slowly."""
    gen = seeded(3511)
    model = CaiT()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    noise_gen = torch.Generator().manual_seed(35110)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        rate = min(max(step - 120, 0) / 200, 1.0)
        flip = torch.rand(len(y), generator=noise_gen) < rate
        return x, torch.where(flip, torch.randint(0, 10, y.shape, generator=noise_gen), y)

    fit(ctx, model, opt, digit_batches(gen), 380, alter=alter)
    best = min(sum(ctx.losses[t : t + 10]) / 10 for t in range(100, 130))
    ctx.check("loss climbed 1.0 above its best", sum(ctx.losses[-20:]) / 20 > best + 1.0)


# -- neural spline flow (rational-quadratic coupling) on 2-D points ------------------------------


def _rq_spline(x, widths, heights, derivs, bound: float = 4.0):
    """Monotone rational-quadratic spline on [-bound, bound], identity outside (Durkan et al.
    2019); returns y and log|dy/dx|."""
    w = F.softmax(widths, -1) * 2 * bound
    h = F.softmax(heights, -1) * 2 * bound
    d = F.softplus(derivs) + 1e-3
    ones = torch.ones_like(d[..., :1])
    d = torch.cat([ones, d, ones], -1)  # slope 1 at both ends: continuous with the tails
    xk = torch.cat([torch.zeros_like(w[..., :1]), w.cumsum(-1)], -1) - bound
    yk = torch.cat([torch.zeros_like(h[..., :1]), h.cumsum(-1)], -1) - bound
    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound + 1e-6, bound - 1e-6)
    idx = torch.searchsorted(xk[..., 1:-1].contiguous(), xc[..., None])
    pick = lambda t: t.gather(-1, idx)[..., 0]  # noqa: E731
    x0, y0, wk, hk = pick(xk), pick(yk), pick(w), pick(h)
    d0, d1 = pick(d[..., :-1]), d[..., 1:].gather(-1, idx)[..., 0]
    s = hk / wk
    xi = (xc - x0) / wk
    denom = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    y = y0 + hk * (s * xi**2 + d0 * xi * (1 - xi)) / denom
    dy = s**2 * (d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2) / denom**2
    return torch.where(inside, y, x), torch.where(inside, torch.log(dy), torch.zeros_like(x))


class RQCoupling(nn.Module):
    def __init__(self, flip: bool, bins: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.flip, self.bins = flip, bins
        self.net = nn.Sequential(
            nn.Linear(1, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 3 * bins - 1),
        )

    def forward(self, z: torch.Tensor):
        a, b = (z[:, 1:], z[:, :1]) if self.flip else (z[:, :1], z[:, 1:])
        p = self.net(a)
        w, h, d = p[:, : self.bins], p[:, self.bins : 2 * self.bins], p[:, 2 * self.bins :]
        b2, logdet = _rq_spline(b[:, 0], w, h, d)
        b2 = b2[:, None]
        out = torch.cat([b2, a], 1) if self.flip else torch.cat([a, b2], 1)
        return out, logdet


class LogitTransform(nn.Module):
    """Data in the unit square to the real plane (a standard flow pre-processing step)."""

    def forward(self, x: torch.Tensor):
        z = torch.log(x) - torch.log1p(-x)
        return z, (-torch.log(x) - torch.log1p(-x)).sum(1)


class SplineFlow(nn.Module):
    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.logit = LogitTransform()
        self.couplings = nn.ModuleList(RQCoupling(i % 2 == 1) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each point."""
        z, logdet = self.logit(x)
        for c in self.couplings:
            z, ld = c(z)
            logdet = logdet + ld
        return 0.5 * (z**2).sum(1) + math.log(2 * math.pi) - logdet


def _ring_points(gen: torch.Generator, batch: int = 128):
    """A noisy ring inside the unit square, kept off its edges."""
    while True:
        angle = torch.rand(batch, generator=gen) * 2 * math.pi
        radius = 0.3 + 0.04 * torch.randn(batch, generator=gen)
        x = 0.5 + radius[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
        yield x.clamp(0.02, 0.98), torch.zeros(batch)


def _nll(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _mean_loss(nll: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return nll.mean()


@scenario(
    "h35_neural_spline_flow",
    "rmsprop",
    "nonfinite",
    where="logit",
    diverges=140,
    heldout=True,
    onset=140,
)
def h35_edge_point_spline_flow_rmsprop(ctx: Context) -> None:
    """At step 140 one point of a batch lies exactly on the square's edge (a rounding of a
    stored coordinate to 1.0): the logit pre-processing returns inf and the loss is NaN."""
    gen = seeded(3512)
    model = SplineFlow()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = x.clone()
            x[7, 0] = 1.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _ring_points(gen),
        180,
        loss_fn=_mean_loss,
        alter=alter,
        forward=_nll,
        classifier=False,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 140, not at 140", all(finite[:140]) and not finite[140])
    ctx.check("it learned before", ctx.losses[139] < ctx.losses[0] - 0.3)


@scenario("h35_neural_spline_flow", "adam", "healthy", heldout=True)
def h35_healthy_spline_flow_adam(ctx: Context) -> None:
    gen = seeded(3513)
    model = SplineFlow()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _ring_points(gen), 250, loss_fn=_mean_loss, forward=_nll, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < sum(ctx.losses[:20]) / 20 - 0.2)


# -- ODE-RNN on irregular series -----------------------------------------------------------------


class ODEFunc(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ODERNN(nn.Module):
    """Between observations the state follows dh/dt = f(h) (4 Euler steps per gap); at each
    observation a GRU cell folds in (value, gap); a linear readout predicts the next value."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.odefunc = ODEFunc(hidden)
        self.cell = nn.GRUCell(2, hidden)
        self.readout = nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, batch) -> torch.Tensor:
        values, gaps = batch
        h = torch.zeros(values.shape[0], self.hidden)
        preds = []
        for t in range(values.shape[1]):
            dt = gaps[:, t : t + 1] / 4
            for _ in range(4):
                h = h + dt * self.odefunc(h)
            h = self.cell(torch.stack([values[:, t], gaps[:, t]], 1), h)
            preds.append(self.readout(h)[:, 0])
        return torch.stack(preds, 1)


def _irregular_batches(gen: torch.Generator, batch: int = 32, length: int = 20, scale=None):
    """Damped oscillations sampled at random gaps; the target is the next observed value."""
    while True:
        n = length
        gaps = 0.1 + 0.4 * torch.rand(batch, n + 1, generator=gen)
        t = gaps.cumsum(1)
        freq = 1 + torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        v = torch.exp(-0.1 * t) * torch.sin(freq * t + phase)
        v = v + 0.05 * torch.randn(v.shape, generator=gen)
        stored = gaps if scale is None else gaps * scale()  # the unit the shard stores
        yield (v[:, :-1], stored[:, :-1]), v[:, 1:]


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, y)


@scenario(
    "h35_ode_rnn",
    "sgd_mom",
    "exploding_gradients",
    where=("odefunc", "odefunc.net.0", "odefunc.net.2"),
    diverges="auto",
    heldout=True,
    onset=100,
)
def h35_gap_units_ode_rnn_momentum(ctx: Context) -> None:
    """From step 100 the series come from a second shard that stores the gaps between
    observations in tenths of an hour rather than hours (10x longer); the solver keeps 4 Euler
    steps per gap, so each step is far past Euler's stability limit for the learnt dynamics
    and, with no gradient clipping, the gradient through the ODE function explodes."""
    gen = seeded(3514)
    model = ODERNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    state = {"step": 0}

    def track(step: int) -> None:
        state["step"] = step

    units = lambda: 1.0 if state["step"] < 99 else 10.0  # noqa: E731
    fit(
        ctx,
        model,
        opt,
        _irregular_batches(gen, scale=units),
        170,
        loss_fn=_mse,
        before=track,
        classifier=False,
    )
    norms = ctx.grad_norms
    pre = sorted(norms[50:100])[25]
    ctx.check(
        "gradient norm >= 100x its median before the new shard",
        any(not math.isfinite(g) or g > 100 * pre for g in norms[100:]),
    )


# -- RetinaNet-style focal-loss detection head ---------------------------------------------------

_PRIOR = 0.05


class FocalDetector(nn.Module):
    """A small conv backbone, then RetinaNet's two subnets over a 4x4 grid of anchors (one per
    cell): class logits (2 classes, sigmoid) and box offsets."""

    def __init__(self, width: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.cls_subnet = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.cls_logits = nn.Conv2d(width, classes, 3, padding=1)
        self.box_subnet = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.box_deltas = nn.Conv2d(width, 4, 3, padding=1)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - _PRIOR) / _PRIOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        cls = self.cls_logits(self.cls_subnet(f)).flatten(2).transpose(1, 2)
        box = self.box_deltas(self.box_subnet(f)).flatten(2).transpose(1, 2)
        return torch.cat([cls, box], -1)  # (batch, 16 anchors, 2 + 4)


def _box_images(gen: torch.Generator, batch: int = 32):
    """16x16 images with one square (class 0) or cross (class 1) of random size and place;
    targets per anchor: a class one-hot (positive only in the anchor cell holding the
    object's centre) and box offsets from that cell."""
    while True:
        img = 0.1 * torch.rand(batch, 1, 16, 16, generator=gen)
        target = torch.zeros(batch, 16, 6)
        for i in range(batch):
            size = int(torch.randint(3, 7, (1,), generator=gen))
            r, c = (int(v) for v in torch.randint(0, 16 - size + 1, (2,), generator=gen))
            kind = int(torch.randint(0, 2, (1,), generator=gen))
            if kind == 0:
                img[i, 0, r : r + size, c : c + size] = 1.0
            else:
                img[i, 0, r + size // 2, c : c + size] = 1.0
                img[i, 0, r : r + size, c + size // 2] = 1.0
            cy, cx = r + size / 2, c + size / 2
            cell = int(cy // 4) * 4 + int(cx // 4)
            target[i, cell, kind] = 1.0
            target[i, cell, 2:] = torch.tensor(
                [cy / 4 - int(cy // 4) - 0.5, cx / 4 - int(cx // 4) - 0.5, size / 8, size / 8]
            )
        yield img, target


def _focal_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits, boxes = out[..., :2], out[..., 2:]
    cls_t, box_t = target[..., :2], target[..., 2:]
    positive = cls_t.sum(-1) > 0
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, cls_t, reduction="none")
    p_t = p * cls_t + (1 - p) * (1 - cls_t)
    alpha_t = 0.25 * cls_t + 0.75 * (1 - cls_t)
    focal = (alpha_t * (1 - p_t) ** 2 * ce).sum() / positive.sum().clamp_min(1)
    box = F.smooth_l1_loss(boxes[positive], box_t[positive], beta=0.1)
    return focal + box


@scenario(
    "h35_retinanet_head",
    "sgd_nesterov",
    "data_outlier",
    diverges=130,
    heldout=True,
    onset=130,
)
def h35_unnormalised_batch_retinanet_nesterov(ctx: Context) -> None:
    """One batch at step 130 comes through a loader path that skipped normalisation: raw
    0-255 pixel values."""
    gen = seeded(3515)
    model = FocalDetector()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x * 255.0 if step == 130 else x), y

    fit(ctx, model, opt, _box_images(gen), 200, loss_fn=_focal_loss, alter=alter, classifier=False)
    ctx.check("loss spiked at 130", ctx.losses[130] > 5 * max(ctx.losses[120:130]))


@scenario("h35_retinanet_head", "sgd_mom", "healthy", heldout=True)
def h35_healthy_retinanet_momentum(ctx: Context) -> None:
    gen = seeded(3516)
    model = FocalDetector()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    fit(ctx, model, opt, _box_images(gen), 220, loss_fn=_focal_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.6 * sum(ctx.losses[:20]) / 20)
