"""Held-out set 128 (``h128_``): hand-written models of fields not yet covered (paper-mill
moisture control, hop yield, violin-varnish curing, truffle-dog scent, cork-oak bark grading,
oyster-bed salinity, quarry blasts, pipe-organ tuning, cheese-cave humidity, canal-lock queues,
sawmill log grading) and Hugging Face text towers built from tiny configs (Gemma4-Unified,
HY-V4-VL, Dots3-Note, Cohere-Compass, Cosmos3-Edge). Generated data only; no downloads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    MLP,
    Context,
    bert_batches,
    collapsed_fraction,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- generated data --------------------------------------------------------------------------------


def _regression(gen: torch.Generator, n_in: int, batch: int = 64, noise: float = 0.05):
    """A smooth nonlinear process reading with sensor noise: (x, y) with y of shape (batch, 1)."""
    w = torch.randn(n_in, generator=gen) / math.sqrt(n_in)
    v = torch.randn(n_in, generator=gen) / math.sqrt(n_in)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = (
            torch.tanh(x @ w)
            + 0.5 * torch.sin(2 * (x @ v))
            + noise * torch.randn(batch, generator=gen)
        )
        yield x, y[:, None]


def _classes(gen: torch.Generator, n_in: int, classes: int, batch: int = 64, spread: float = 1.0):
    """Gaussian clusters, one per class (scent profiles, bark grades...)."""
    centres = torch.randn(classes, n_in, generator=gen) * spread
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + torch.randn(batch, n_in, generator=gen), y


def _series(gen: torch.Generator, length: int, batch: int = 32, channels: int = 3):
    """Noisy daily cycles with a drift; the target is the next value of channel 0."""
    while True:
        t = torch.arange(length + 1, dtype=torch.float32)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        base = amp * torch.sin(2 * math.pi * t / 12 + phase)
        chans = [base + 0.1 * c * torch.cos(t / 5 + phase) for c in range(channels)]
        x = torch.stack(chans, -1) + 0.05 * torch.randn(batch, length + 1, channels, generator=gen)
        yield x[:, :-1], x[:, -1, :1]


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


class _Regressor(nn.Module):
    def __init__(self, n_in: int, hidden: int = 64, out: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.mid(F.relu(self.inp(x)))))


# -- faults: hand-written --------------------------------------------------------------------------


@scenario(
    "paper_mill_moisture_controller",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="moisture regressor; plain SGD at a learning rate far above 2/sharpness",
)
def h128_paper_mill_moisture_lr_high(ctx: Context) -> None:
    gen = seeded(12801)
    model = _Regressor(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1.05)
    fit(ctx, model, opt, _regression(gen, 12), 60, loss_fn=F.mse_loss, classifier=False)
    ctx.check("the loss blew up", not _finite(ctx.losses) or max(ctx.losses) > 1e3)
    ctx.check("the first steps were finite", _finite(ctx.losses[:2]))


@scenario(
    "hop_yield_estimator",
    "adam",
    "data_outlier",
    heldout=True,
    onset=120,
    note="one batch of field records with a sensor glitch (yields in grams, not tonnes)",
)
def h128_hop_yield_data_outlier(ctx: Context) -> None:
    gen = seeded(12802)
    model = _Regressor(10, 48)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:
            x = x.clone()
            x[:4] *= 300.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 10),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
    )
    before = _mean(ctx.losses[100:120])
    ctx.check("the outlier batch spiked the loss", ctx.losses[120] > 50 * before)
    ctx.check("training went on finite afterwards", _finite(ctx.losses))
    ctx.check("the loss recovered", _mean(ctx.losses[-20:]) < 5 * before + 0.05)


class _VarnishRNN(nn.Module):
    """Reads a curing log (temperature, humidity, UV) and predicts the final hardness."""

    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(1.8 * torch.linalg.qr(torch.randn(hidden, hidden))[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    "violin_varnish_curing_rnn",
    "sgd_nesterov",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="ReLU RNN over 40-step curing logs, recurrent weights initialised at gain 1.8; no clipping",
)
def h128_violin_varnish_exploding(ctx: Context) -> None:
    gen = seeded(12803)
    model = _VarnishRNN()
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, _series(gen, 40), 80, loss_fn=F.mse_loss, classifier=False)
    first = ctx.grad_norms[0]
    later = [g if math.isfinite(g) else float("inf") for g in ctx.grad_norms[1:]]
    ctx.check("the gradient was already large at init", first > 20)
    ctx.check("then grew without bound", max(later) > 1e3 * first)
    ctx.check("the loss broke", not _finite(ctx.losses) or max(ctx.losses) > 1e4)


class _ScentNet(nn.Module):
    def __init__(self, n_in: int = 16, classes: int = 6) -> None:
        super().__init__()
        self.body = MLP([n_in, 64, 64])
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.body(x)))


@scenario(
    "truffle_dog_scent_classifier",
    "adamax",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="separable scent profiles, unnormalised head, no weight decay: logits grow without bound",
)
def h128_truffle_scent_logits(ctx: Context) -> None:
    gen = seeded(12804)
    model = _ScentNet()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-2)
    data = _classes(gen, 16, 6, spread=1.5)
    x0, _ = next(data)
    with torch.no_grad():
        start = float(model(x0).abs().max())
    fit(ctx, model, opt, data, 300)
    with torch.no_grad():
        end = float(model(x0).abs().max())
    ctx.check("the head's logits grew large", end > 30 * start and end > 30)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


@scenario(
    "cork_oak_bark_grader",
    "adagrad",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="memorises a small fixed set of bark samples until float32 softmax saturates",
)
def h128_cork_bark_softmax_collapse(ctx: Context) -> None:
    gen = seeded(12805)
    model = _ScentNet(20, 5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.3)
    xs, ys = next(_classes(gen, 20, 5, batch=128, spread=2.0))

    def fixed():
        while True:
            yield xs, ys

    fit(ctx, model, opt, fixed(), 250)
    with torch.no_grad():
        frac = collapsed_fraction(model(xs), ys)
    ctx.check("most rows' softmax collapsed to exactly 1", frac > 0.5)
    ctx.check("the loss fell to ~0", min(ctx.losses) < 1e-4)


class _SalinityNet(nn.Module):
    """Shared trunk with a salinity head and an auxiliary temperature head."""

    def __init__(self, n_in: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.salinity_head = nn.Linear(64, 1)
        self.aux_head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.cat([self.salinity_head(h), self.aux_head(h)], 1)


@scenario(
    "oyster_bed_salinity_forecaster",
    "adadelta",
    "gradient_spike",
    where=("aux_head",),
    heldout=True,
    onset=150,
    note="epoch-end batch takes the aux loss with reduction='sum' (x batch size) for one step",
)
def h128_oyster_salinity_grad_spike(ctx: Context) -> None:
    gen = seeded(12806)
    model = _SalinityNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    stream = _regression(gen, 8, batch=128)

    def batches():
        for x, y in stream:
            yield x, torch.cat([y, x[:, :1] * 0.5], 1)

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out[:, :1], y[:, :1]) + F.mse_loss(out[:, 1:], y[:, 1:])

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step != 150:
            return loss
        out, y = model(last[0]), last[1]
        return F.mse_loss(out[:, :1], y[:, :1]) + F.mse_loss(out[:, 1:], y[:, 1:], reduction="sum")

    last: list[torch.Tensor] = []

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        last[:] = [x, y]
        return x, y

    fit(
        ctx,
        model,
        opt,
        batches(),
        260,
        loss_fn=loss_fn,
        classifier=False,
        alter=alter,
        extra_loss=extra,
    )
    typical = sorted(ctx.grad_norms[120:150])[15]
    ctx.check("the gradient norm spiked at the bad step", ctx.grad_norms[150] > 20 * typical)
    ctx.check(
        "the reported loss itself did not spike", ctx.losses[150] < 3 * _mean(ctx.losses[140:150])
    )
    ctx.check("the run stayed finite", _finite(ctx.losses))


class _BlastNet(nn.Module):
    def __init__(self, n_in: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, 64)
        self.mid = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.mid(F.gelu(self.inp(x)))))


@scenario(
    "quarry_blast_vibration_regressor",
    "nadam",
    "amp_overflow",
    where=("inp",),
    diverges="auto",
    heldout=True,
    onset=40,
    note="fp16 autocast + GradScaler; from step 40 charges logged in grams, not kg: fp16 overflow",
)
def h128_quarry_blast_amp_overflow(ctx: Context) -> None:
    gen = seeded(12807)
    model = _BlastNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 40:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e3 + 7e4
        return x, y

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 6),
        120,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the first 40 steps were finite", _finite(ctx.losses[:40]))
    ctx.check("fp16 overflowed afterwards", not _finite(ctx.losses[40:]))
    ctx.check("the loss scale collapsed", ctx.scales[-1] < ctx.scales[39] / 1e3)


# -- faults: Hugging Face models from tiny configs -------------------------------------------------

_TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _gemma4_unified_lm():
    from transformers.models.gemma4_unified.configuration_gemma4_unified import (
        Gemma4UnifiedTextConfig,
    )
    from transformers.models.gemma4_unified.modeling_gemma4_unified import (
        Gemma4UnifiedForCausalLM,
    )

    return Gemma4UnifiedForCausalLM(Gemma4UnifiedTextConfig(**_TINY))


def _dots3_note_lm():
    from transformers.models.dots3_note.configuration_dots3_note import Dots3NoteTextConfig
    from transformers.models.dots3_note.modeling_dots3_note import Dots3NoteForCausalLM

    config = Dots3NoteTextConfig(
        **_TINY,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        shared_experts_intermediate_size=32,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        v_head_dim=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        index_topk=16,
        index_head_dim=16,
    )
    return Dots3NoteForCausalLM(config)


def _cohere_compass_cls():
    from transformers.models.cohere_compass.configuration_cohere_compass import (
        CohereCompassTextConfig,
    )
    from transformers.models.cohere_compass.modeling_cohere_compass import (
        CohereCompassTextForSequenceClassification,
    )

    config = CohereCompassTextConfig(
        **_TINY,
        num_labels=2,
        layer_types=["full_attention"] * 2,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    )
    return CohereCompassTextForSequenceClassification(config)


class _TowerRegressor(nn.Module):
    """A Hugging Face text tower with a mean-pooled linear head."""

    def __init__(self, tower: nn.Module, out: int = 1) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(32, out)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(input_ids=idx).last_hidden_state.mean(1))


def _hy_v4_vl_tower():
    from transformers.models.hy_v4_vl.configuration_hy_v4_vl import HYV4VLTextConfig
    from transformers.models.hy_v4_vl.modeling_hy_v4_vl import HYV4VLTextModel

    config = HYV4VLTextConfig(
        **_TINY,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        v_head_dim=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        index_topk=16,
        index_head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
    )
    return HYV4VLTextModel(config)


def _cosmos3_edge_tower():
    from transformers.models.cosmos3_edge.configuration_cosmos3_edge import Cosmos3EdgeTextConfig
    from transformers.models.cosmos3_edge.modeling_cosmos3_edge import Cosmos3EdgeTextModel

    config = Cosmos3EdgeTextConfig(
        **_TINY,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    return Cosmos3EdgeTextModel(config)


def _count_batches(gen: torch.Generator, batch: int = 16, length: int = 16):
    """Token sequences; the target is the share of tokens below 40 (a ledger-style count)."""
    while True:
        x = torch.randint(3, 128, (batch, length), generator=gen)
        yield x, (x < 40).float().mean(1, keepdim=True) * 4


def _masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus a z-loss, both normalised by the count of non-padding tokens."""
    mask = (targets != -100).float()
    tokens = mask.sum()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    z = (torch.logsumexp(logits, -1).pow(2) * mask).sum()
    return (ce + 1e-4 * z) / tokens


def _hf_lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


@scenario(
    "hf_gemma4_unified_text_lm",
    "adamw",
    "loss_spike",
    heldout=True,
    onset=90,
    note="scheduler restarted at 100x the peak for 6 steps (resumed from a bad checkpoint config)",
)
def h128_hf_gemma4_unified_loss_spike(ctx: Context) -> None:
    gen = seeded(12808)
    model = _gemma4_unified_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.3 if 90 <= step < 96 else 3e-3 * min(1.0, (step + 1) / 20)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 24),
        170,
        loss_fn=lm_loss,
        classifier=False,
        before=schedule,
        forward=_hf_lm_forward,
    )
    before = _mean(ctx.losses[80:90])
    ctx.check("the loss spiked after the LR restart", max(ctx.losses[90:100]) > before + 1.0)
    ctx.check("the loss came back down", _mean(ctx.losses[-10:]) < before + 0.5)
    ctx.check("the run stayed finite", _finite(ctx.losses))


@scenario(
    "hf_dots3_note_text_lm",
    "sgd_mom",
    "nonfinite",
    where=("lm_head",),
    diverges=60,
    heldout=True,
    onset=60,
    note="an all-padding batch: the loss (CE + z-loss) divided by a token count of 0 gives NaN grads",
)
def h128_hf_dots3_note_nonfinite(ctx: Context) -> None:
    gen = seeded(12809)
    model = _dots3_note_lm()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 60:
            y = torch.full_like(y, -100)
        return x, y

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 24),
        80,
        loss_fn=_masked_lm_loss,
        classifier=False,
        alter=alter,
        forward=_hf_lm_forward,
    )
    ctx.check("finite before the padding batch", _finite(ctx.losses[:60]))
    ctx.check("the loss fell before it", _mean(ctx.losses[50:60]) < ctx.losses[0] - 0.3)
    ctx.check("NaN from the padding batch on", all(math.isnan(v) for v in ctx.losses[60:]))


@scenario(
    "hf_cohere_compass_text_cls",
    "adamw",
    "adam_second_moment_poisoned",
    where=("score",),
    heldout=True,
    onset=60,
    note="a one-step 1e5-weighted logit penalty (unit bug) poisons the head's second moment",
)
def h128_hf_cohere_compass_v_poisoned(ctx: Context) -> None:
    gen = seeded(12810)
    model = _cohere_compass_cls()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    w = model.score.weight
    v_before: list[float] = []
    moves: list[float] = []
    prev = [w.detach().clone()]

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 59 and w in opt.state:
            v_before.append(float(opt.state[w]["exp_avg_sq"].max()))
        moves.append(float((w.detach() - prev[0]).norm()))
        prev[0] = w.detach().clone()
        if step == 60:
            return loss + 1e5 * w.pow(2).sum()
        return loss

    fit(ctx, model, opt, bert_batches(gen, 32, 16), 200, extra_loss=extra, forward=_hf_lm_forward)
    v_after = float(opt.state[w]["exp_avg_sq"].max())
    ctx.check(
        "the head's second moment jumped by 1e6x", bool(v_before) and v_after > 1e6 * v_before[0]
    )
    ctx.check(
        "the head's updates then nearly froze", _mean(moves[100:150]) < 0.05 * _mean(moves[40:60])
    )
    ctx.check("the run stayed finite", _finite(ctx.losses))


@scenario(
    "hf_hy_v4_vl_text_tower",
    "adamw",
    "update_ratio_out_of_range",
    where=("tower.embed_tokens",),
    heldout=True,
    note="param-group bug: the embedding group got lr 0.5 (meant 5e-4): updates ~ the weights",
)
def h128_hf_hy_v4_vl_update_ratio(ctx: Context) -> None:
    gen = seeded(12811)
    model = _TowerRegressor(_hy_v4_vl_tower())
    emb = model.tower.embed_tokens.weight
    rest = [p for p in model.parameters() if p is not emb]
    opt = torch.optim.AdamW(
        [{"params": [emb], "lr": 0.5}, {"params": rest, "lr": 5e-4}], weight_decay=0.1
    )
    watched = {"emb": emb, "head": model.head.weight}
    ratios: dict[str, list[float]] = {k: [] for k in watched}
    prev = {k: p.detach().clone() for k, p in watched.items()}

    def before(step: int) -> None:
        for k, p in watched.items():
            ratios[k].append(float((p.detach() - prev[k]).norm() / prev[k].norm().clamp_min(1e-12)))
            prev[k] = p.detach().clone()

    fit(
        ctx,
        model,
        opt,
        _count_batches(gen),
        60,
        loss_fn=F.mse_loss,
        classifier=False,
        before=before,
    )
    emb_r, head_r = sorted(ratios["emb"][10:]), sorted(ratios["head"][10:])
    mid = len(emb_r) // 2
    ctx.check("embedding update/weight ratio above 1e-2", emb_r[mid] > 1e-2)
    ctx.check("and 5x the other group's", emb_r[mid] > 5 * head_r[mid])
    ctx.check("the run stayed finite", _finite(ctx.losses))


@scenario(
    "pipe_organ_tuning_model",
    "radam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="detune regressor; sign bug in a hand-rolled L2 term (subtracts it): a slow climb",
)
def h128_pipe_organ_slow_divergence(ctx: Context) -> None:
    gen = seeded(12813)
    model = _Regressor(9, 32)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    weights = [p for p in model.parameters() if p.dim() > 1]

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 0.2 * sum(p.pow(2).sum() for p in weights)  # meant: + 0.2 * ...

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 9, noise=0.1),
        400,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=extra,
    )
    low = min(ctx.losses[:150])
    ctx.check("the loss first fell", low < 0.5 * ctx.losses[0])
    ctx.check("then climbed far above its low", _mean(ctx.losses[-20:]) > 5 * low)
    ctx.check("gradually, not in one jump", max(ctx.losses[150:250]) < _mean(ctx.losses[-20:]))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    "hf_cosmos3_edge_text_tower",
    "adamw",
    "healthy",
    heldout=True,
    note="Cosmos3-Edge text tower regressing a token count; AdamW, warmup then cosine decay",
)
def h128_hf_cosmos3_edge_healthy(ctx: Context) -> None:
    gen = seeded(12812)
    model = _TowerRegressor(_cosmos3_edge_tower())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 150

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 15)
        opt.param_groups[0]["lr"] = 3e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))

    fit(
        ctx,
        model,
        opt,
        _count_batches(gen),
        steps,
        loss_fn=F.mse_loss,
        classifier=False,
        before=schedule,
    )
    ctx.check("the loss fell", _mean(ctx.losses[-15:]) < 0.3 * _mean(ctx.losses[:5]))
    ctx.check("the run stayed finite", _finite(ctx.losses))


class _CaveGRU(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(3, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


@scenario(
    "cheese_cave_humidity_gru",
    "rmsprop",
    "healthy",
    heldout=True,
    note="GRU humidity forecaster, RMSprop with warmup and cosine decay",
)
def h128_cheese_cave_healthy(ctx: Context) -> None:
    gen = seeded(12814)
    model = _CaveGRU()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    steps = 160

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 15)
        opt.param_groups[0]["lr"] = 2e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))

    fit(
        ctx,
        model,
        opt,
        _series(gen, 24),
        steps,
        loss_fn=F.mse_loss,
        classifier=False,
        before=schedule,
    )
    ctx.check("the loss fell", _mean(ctx.losses[-15:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("the run stayed finite", _finite(ctx.losses))


@scenario(
    "canal_lock_queue_forecaster",
    "asgd",
    "healthy",
    heldout=True,
    note="boats waiting at a lock from hour, weekday and weather features; ASGD with noise",
)
def h128_canal_lock_healthy(ctx: Context) -> None:
    gen = seeded(12815)
    model = _Regressor(14, 64)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    fit(
        ctx,
        model,
        opt,
        _regression(gen, 14, batch=48, noise=0.2),
        250,
        loss_fn=F.mse_loss,
        classifier=False,
    )
    ctx.check("the loss fell", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("the run stayed finite", _finite(ctx.losses))


class _LogGrader(nn.Module):
    """Grades 8x8 end-grain scans of logs (generated ring patterns) into 4 grades."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def _log_scans(gen: torch.Generator, batch: int = 48):
    r = torch.cdist(
        torch.stack(
            torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1
        ).reshape(-1, 2),
        torch.tensor([[3.5, 3.5]]),
    ).reshape(8, 8)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = (1.0 + y.float())[:, None, None]
        x = torch.sin(r[None] * freq) + 1.2 * torch.randn(batch, 8, 8, generator=gen)
        yield x[:, None], y


@scenario(
    "sawmill_log_grader_cnn",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="small CNN on generated end-grain scans; SGD momentum with step decay",
)
def h128_sawmill_healthy(ctx: Context) -> None:
    gen = seeded(12816)
    model = _LogGrader()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.03 if step < 100 else 0.01

    fit(ctx, model, opt, _log_scans(gen), 160, before=schedule)
    ctx.check("the loss fell", _mean(ctx.losses[-15:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("the run stayed finite", _finite(ctx.losses))
