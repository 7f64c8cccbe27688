"""Held-out set 652 (``h652_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Reformer LM (local attention only) from a tiny
config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    scenario,
    seeded,
    text_batches,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _gnorm(params) -> float:
    gs = [p.grad.norm() ** 2 for p in params if p.grad is not None]
    return float(sum(gs) ** 0.5) if gs else 0.0


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class ReluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="stilt_walker_gait_pointer_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a pointer-style attention pool (learned query over the stride sequence, head tied to "
    "the token embedding) with a learnable attention temperature exp(log_scale) whose clamp "
    "(max log 100) was dropped in a refactor; the query, key and temperature sit in a "
    "no-decay group at lr 0.1 (meant for 1e-3): the q.k logits grow over 20x",
)
def h652_stilt_gait_unclamped_attention_scale(ctx: Context) -> None:
    gen = seeded(6521)
    vocab, length, dim = 16, 12, 32

    class PointerAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Parameter(torch.randn(dim) * 0.1)
            self.key = nn.Linear(dim, dim)
            self.value = nn.Linear(dim, dim)
            self.log_scale = nn.Parameter(torch.zeros(()))
            self.last_logits: torch.Tensor | None = None

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            k, v = self.key(h), self.value(h)
            logits = (k @ self.query) / math.sqrt(dim) * self.log_scale.exp()  # clamp dropped
            self.last_logits = logits.detach()
            return (torch.softmax(logits, -1)[..., None] * v).sum(1)

    class GaitNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, dim)
            self.mark = nn.Embedding(2, dim)
            self.pos = nn.Embedding(length, dim)
            self.attn = PointerAttention()
            self.ln = nn.LayerNorm(dim)

        def forward(self, tokens: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
            h = self.tok(tokens) + self.mark(flag) + self.pos(torch.arange(length))
            return self.ln(self.attn(h)) @ self.tok.weight.T  # head tied to the embedding

    model = GaitNet()
    no_decay = [model.attn.log_scale, model.attn.query, *model.attn.key.parameters()]
    rest = [p for p in model.parameters() if all(p is not q for q in no_decay)]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 3e-3, "weight_decay": 0.01},
            {"params": no_decay, "lr": 0.1, "weight_decay": 0.0},  # typo: 0.1 for 1e-3
        ]
    )
    ctx.attach(model, opt)
    peaks: list[float] = []
    for _ in range(200):
        tokens = torch.randint(0, vocab, (64, length), generator=gen)
        where = torch.randint(0, length, (64,), generator=gen)
        flag = F.one_hot(where, length)
        y = tokens.gather(1, where[:, None])[:, 0]
        ctx.targets(y)
        logits = model(tokens, flag)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(model.attn.last_logits.abs().max()))
    ls = ctx.losses
    ctx.check("attention logits over 20x their first step", min(peaks[-20:]) > 20 * peaks[0])
    ctx.check("logits still over 10x at the end of the run", peaks[-1] > 10 * peaks[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="maple_sap_boil_brix_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=8,
    onset=8,
    heldout=True,
    note="a Gaussian NLL (0.5 log var + (y - mu)^2 / 2 var) for the sugar content of boiled sap; "
    "the clamp(min=1e-6) on the raw variance head was removed as 'unneeded with a positive "
    "bias init', a variance goes negative and log of a negative gives a NaN loss",
)
def h652_maple_brix_unclamped_variance(ctx: Context) -> None:
    gen = seeded(6522)

    class BrixNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mu_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 1.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.tanh(self.fc1(x))
            return self.mu_head(h), self.var_head(h)  # bug: no clamp / softplus on var

    model = BrixNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2.5e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.1)
    neg_at = None
    for step in range(250):
        x, y = next(batches)
        mu, var = model(x)
        if neg_at is None and bool((var <= 0).any()):
            neg_at = step
        loss = (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    bad = 8
    ctx.check("a variance at or below 0 in the run", neg_at is not None)
    ctx.check(f"loss first NaN at step {bad}", len(ls) == bad + 1 and math.isnan(ls[bad]))
    ctx.check("variance non-positive at the NaN step", neg_at == bad)
    ctx.check("loss finite before", _finite(ls[:bad]))


@scenario(
    family="hurdy_gurdy_wheel_rosin_elman_rnn",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="a ReLU Elman cell reading 30 wheel-speed samples, its recurrent weights initialised "
    "orthogonal with gain 2.0 (copied from a feed-forward init recipe): the gradient grows "
    "through time, the first state's over 100x the last's, and the loss blows up",
)
def h652_hurdy_gurdy_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6523)

    class RosinRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.RNNCell(4, 32, nonlinearity="relu")
            self.head = nn.Linear(32, 1)
            nn.init.orthogonal_(self.cell.weight_hh, gain=1.8)  # bad gain

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            h = torch.zeros(x.shape[0], 32)
            states = []
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
                h.retain_grad()
                states.append(h)
            return self.head(h), states

    model = RosinRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    w = torch.randn(4, generator=gen) / 2
    ratios: list[float] = []
    for _ in range(120):
        x = torch.randn(32, 30, 4, generator=gen)
        y = torch.tanh((x @ w).mean(1, keepdim=True))
        out, states = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        first, last = states[0].grad.norm(), states[-1].grad.norm()
        ratios.append(float(first / last.clamp_min(1e-30)))
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("first state's gradient over 100x the last's at step 0", ratios[0] > 100)
    blown = [v for v in ls if not math.isfinite(v) or v > 100 * ls[0]]
    ctx.check("loss blows up (over 100x its first value or non-finite)", len(blown) > 0)


@scenario(
    family="curling_stone_curl_distance_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a config typo sets lr 1.5 where 0.15 was meant; lr x the top Hessian eigenvalue at the "
    "start is over 2 (measured by power iteration), the loss oscillates and blows up",
)
def h652_curling_curl_lr_typo(ctx: Context) -> None:
    gen = seeded(6524)
    model = ReluNet(8, 32)
    lr = 1.5  # typo: meant 0.15
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _readings(gen)
    x0, y0 = next(batches)
    params = list(model.parameters())
    grads = torch.autograd.grad(F.mse_loss(model(x0), y0), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(30):
        nv = math.sqrt(sum(float((a * a).sum()) for a in v))
        v = [a / nv for a in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [a.detach() for a in hv]
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(f"lr x sharpness over 2 at the start ({lr * lam:.2f})", lr * lam > 2)
    ctx.check(
        "loss blows up (over 100x its first value or non-finite)",
        any(not math.isfinite(v) or v > 100 * ls[0] for v in ls),
    )


@scenario(
    family="sheepdog_trial_outrun_dead_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a clean-outrun vs crossed-over BCE classifier with an L1 activation-sparsity "
    "penalty on fc1 whose weight was typed 10 for 0.01: the penalty pushes fc1's ReLUs "
    "negative on every input, over half of fc1 dies and never comes back",
)
def h652_sheepdog_outrun_dead_relu(ctx: Context) -> None:
    gen = seeded(6525)
    model = ReluNet(12, 48, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _labels(gen, 12, 2)
    dead: list[float] = []
    masks: list[torch.Tensor] = []
    for _ in range(150):
        x, y = next(batches)
        h1 = F.relu(model.fc1(x))
        logits = model.head(F.relu(model.fc2(h1)))[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, y.float())
        (loss + 10.0 * h1.mean()).backward()  # typo: sparsity weight 10 for 0.01
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead.append(dead_fraction(model.fc1(x)))
            masks.append((model.fc1(x) <= 0).all(0))
    ls = ctx.losses
    ctx.check("under 20% of fc1 dead at the start", dead[0] < 0.2)
    ctx.check("over half of fc1 dead at the end", dead[-1] > 0.5)
    ctx.check(
        "units dead at step 75 are still dead at the end (no recovery)",
        bool(masks[75].any()) and bool((masks[-1] | ~masks[75]).all()),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="cider_press_pomace_yield_frozen_group_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fine-tuning param groups: fc1's lr is base_lr * int(cfg['backbone_lr_mult']) and the "
    "multiplier 0.5 is truncated to 0 by the int(): fc1 never moves while fc2 and the head "
    "train",
)
def h652_cider_press_int_lr_mult(ctx: Context) -> None:
    gen = seeded(6526)
    model = ReluNet(8, 32)
    base = 3e-3
    mult = int(0.5)  # bug: truncates the multiplier to 0
    opt = torch.optim.Adam(
        [
            {"params": model.fc1.parameters(), "lr": base * mult},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": base},
        ]
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    fc1_grads: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        fc1_grads.append(float(model.fc1.weight.grad.norm()))
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("fc1 weights never moved", bool(torch.equal(model.fc1.weight.detach(), w1)))
    ctx.check(
        "fc2 weights moved over 5%",
        float((model.fc2.weight.detach() - w2).norm() / w2.norm()) > 0.05,
    )
    ctx.check("fc1 received gradients all along", min(fc1_grads) > 0)
    ctx.check("finite", _finite(ls))


@scenario(
    family="barometric_tide_gauge_fp16_surge_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    onset=60,
    heldout=True,
    note="a storm-surge regressor trained under fp16 autocast + GradScaler; from step 60 a new "
    "station's shard logs pressure in raw pascals (~1e5) where the others log a standardised "
    "anomaly: fc1's fp16 output overflows to inf (the same forward in fp32 is finite), the "
    "loss is non-finite and the scaler skips every step",
)
def h652_tide_gauge_pascal_fp16(ctx: Context) -> None:
    gen = seeded(6527)
    model = ReluNet(8, 32)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    onset = 60
    fc1_inf: list[bool] = []
    fp32_ok = None
    for step in range(120):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 0] = 101325.0 + 2000.0 * x[:, 0]  # raw pascals
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(F.relu(model.fc2(F.relu(h))))
        fc1_inf.append(not bool(torch.isfinite(h).all()))
        if step == onset:
            with torch.no_grad():
                fp32_ok = bool(torch.isfinite(model(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model.parameters()))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("no fc1 overflow before onset", not any(fc1_inf[:onset]))
    ctx.check("fc1's fp16 output has inf at onset", fc1_inf[onset])
    ctx.check("the same forward in fp32 is finite at onset", bool(fp32_ok))
    ctx.check("loss non-finite at onset", not math.isfinite(ls[onset]))
    ctx.check("loss finite before onset", _finite(ls[:onset]))
    ctx.check("scaler skipped: scale fell at onset", ctx.scales[onset] < ctx.scales[onset - 1])


@scenario(
    family="didgeridoo_drone_trace_conv1d_classifier",
    optimizer="SGD (Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="a conv1d classifier of drone-pitch traces (label smoothing 0.05, clipping at 1.0); one "
    "batch at step 90 comes from a recorder with its input gain at +60 dB (x1000): the loss "
    "and gradient spike and the run recovers",
)
def h652_didgeridoo_gain_shard(ctx: Context) -> None:
    gen = seeded(6528)

    class DroneNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(1, 8, 7, padding=3)
            self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.conv2(F.relu(self.conv1(x[:, None]))))
            return self.head(h.mean(-1))

    model = DroneNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    t = torch.arange(64) / 64.0
    onset = 90
    for step in range(180):
        y = torch.randint(0, 4, (64,), generator=gen)
        phase = torch.rand(64, 1, generator=gen) * 6.28
        x = torch.sin(6.28 * (2 + 3 * y[:, None]) * t + phase)
        x = x + 0.3 * torch.randn(64, 64, generator=gen)
        if step == onset:
            x = x * 1000.0  # +60 dB gain
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.6 * _median(ls[:10]))
    ctx.check(
        "loss at onset over 10x the 10 before", ls[onset] > 10 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the 10 before", gs[onset] > 10 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="petanque_boule_lie_aux_weight_regressor",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=70,
    heldout=True,
    note="an auxiliary roll-smoothness loss whose warm-up table is indexed by step; at step 70 an "
    "off-by-one reads the table's header row (weight 100 instead of 0.01) for that one step: the "
    "gradient spikes over 50x while the logged Huber loss is ordinary; clipped at 1.0",
)
def h652_petanque_aux_weight_header(ctx: Context) -> None:
    gen = seeded(6529)
    model = ReluNet(8, 32)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 70
    for step in range(160):
        x, y = next(batches)
        out = model(x)
        loss = F.huber_loss(out, y, delta=0.5)
        aux_w = 100.0 if step == onset else 0.01  # bug: header row read at step 70
        aux = (out[1:] - out[:-1]).pow(2).mean()
        (loss + aux_w * aux).backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 50x the 10 before", gs[onset] > 50 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset within 2x the 10 before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell", _median(ls[-20:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="bell_founding_strike_note_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a strike-note classifier whose softmax temperature is read from a config in "
    "hundredths (1 meaning 0.01) and divides the logits: T 0.01 for 1.0, over half the rows "
    "reach p = 1.0 exactly in float32",
)
def h652_bell_strike_temperature_units(ctx: Context) -> None:
    gen = seeded(65210)
    model = ReluNet(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    batches = _labels(gen)
    temperature = 1 / 100  # bug: config in hundredths
    collapsed: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ls = ctx.losses
    ctx.check("over half the rows at p = 1.0 at the end", _median(collapsed[-10:]) > 0.5)
    ctx.check("under a tenth collapsed at the start", collapsed[0] < 0.1)
    ctx.check("finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="morris_dance_stick_clash_reformer_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a Hugging Face ReformerModelWithLMHead from a tiny config (two local-attention layers, "
    "chunk 16, no LSH) on byte text, linear warm-up then cosine decay, clipping at 1.0: an "
    "ordinary run",
)
def h652_morris_stick_reformer_lm(ctx: Context) -> None:
    from transformers import ReformerConfig, ReformerModelWithLMHead

    gen = seeded(65211)
    config = ReformerConfig(
        vocab_size=128,
        hidden_size=32,
        num_attention_heads=2,
        attention_head_size=16,
        attn_layers=["local", "local"],
        axial_pos_embds=False,
        max_position_embeddings=32,
        local_attn_chunk_length=16,
        local_num_chunks_before=1,
        local_num_chunks_after=0,
        feed_forward_size=64,
        is_decoder=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        eos_token_id=0,
    )
    model = ReformerModelWithLMHead(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32, vocab=128)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y.reshape(-1))
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 30%", _median(ls[-15:]) < 0.7 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="glass_blower_gather_scheduled_sampling_gru",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a GRU forecaster of the furnace-gather temperature trace trained with scheduled "
    "sampling: the teacher-forcing ratio decays from 1 to 0 over the run, so the training loss "
    "rises as the model feeds on its own predictions (alarming to look at) while the "
    "free-running loss on held-out traces keeps falling; OneCycleLR",
)
def h652_glass_gather_scheduled_sampling(ctx: Context) -> None:
    gen = seeded(65212)

    class GatherGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(1, 32)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor, ratio: float, g: torch.Generator | None):
            h = torch.zeros(x.shape[0], 32)
            inp, preds = x[:, 0], []
            for t in range(x.shape[1] - 1):
                h = self.cell(inp, h)
                pred = self.head(h)
                preds.append(pred)
                teach = t < 6 or (g is not None and float(torch.rand((), generator=g)) < ratio)
                inp = x[:, t + 1] if teach else pred
            return torch.stack(preds, 1)

    def traces(n: int, g: torch.Generator) -> torch.Tensor:
        freq = 0.2 + 0.4 * torch.rand(n, 1, generator=g)
        phase = 6.28 * torch.rand(n, 1, generator=g)
        t = torch.arange(24.0)
        return torch.sin(freq * t + phase)[..., None]

    model = GatherGRU()
    steps = 200
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    held = traces(128, torch.Generator().manual_seed(1))
    free: list[float] = []
    for step in range(steps):
        ratio = max(0.0, 1.0 - step / (0.7 * steps))
        x = traces(32, gen) + 0.02 * torch.randn(32, 24, 1, generator=gen)
        pred = model(x, ratio, gen)
        loss = F.mse_loss(pred, x[:, 1:])
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            with torch.no_grad():
                free.append(float(F.mse_loss(model(held, 0.0, None), held[:, 1:])))
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 5]))
    ctx.check(
        "training loss rises: last 20 over 1.5x its lowest 10-step median",
        _median(ls[-20:]) > 1.5 * _median(ls[max(0, low - 5) : low + 5]),
    )
    ctx.check("free-running held-out loss fell over 50%", free[-1] < 0.5 * free[0])
    ctx.check(
        "free-running held-out loss at the end under its value at the training minimum",
        free[-1] < free[min(low // 10, len(free) - 1)],
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="snow_cornice_overhang_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a cornice-overhang Huber regressor on noisy readings, two micro-batches accumulated per "
    "step, clipping at 1.0, ReduceLROnPlateau: an ordinary run",
)
def h652_snow_cornice_accumulated(ctx: Context) -> None:
    gen = seeded(65213)
    model = ReluNet(8, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=32, noise=0.2)
    for _ in range(150):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 30%", _median(ls[-20:]) < 0.7 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))
