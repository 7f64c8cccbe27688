"""Held-out set 171 (``h171_``): natural phenomena and sports not covered before. A Hugging Face
Qwen3-Omni-MoE *talker* text decoder (model type ``qwen3_omni_moe_talker_text``, shared-expert
MoE blocks fed through ``inputs_embeds``) as a byte LM with a tied head, a tanh RNN cell unrolled
by hand, an LSTM, a 1-D conv net on raw waveforms under fp16 autocast, a BatchNorm CNN, a von
Mises heading regressor and MLP regressors and classifiers.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    after_backward=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    stop_at_nan=True,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``after_backward(step)`` runs before the optimizer step,
    ``watch(step, out, x, y)`` records."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            shown += float(loss.detach())
        if after_backward is not None:
            after_backward(step)
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if stop_at_nan and math.isnan(shown):
            break


def _mlp(sizes, act=nn.ReLU):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


# -- 1. Hugging Face Qwen3-Omni-MoE talker text decoder: layer-wise lr decay typo -----------------


class TalkerByteLM(nn.Module):
    """The Qwen3-Omni-MoE talker's text decoder (shared-expert MoE blocks) read as a byte LM: its
    codec embedding feeds ``inputs_embeds`` and a head tied to that embedding reads the bytes."""

    def __init__(self, vocab=128, dim=32, layers=3):
        super().__init__()
        from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
            Qwen3OmniMoeTalkerTextConfig,
        )
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
            Qwen3OmniMoeTalkerModel,
        )

        config = Qwen3OmniMoeTalkerTextConfig(
            vocab_size=vocab,
            hidden_size=dim,
            intermediate_size=2 * dim,
            moe_intermediate_size=dim,
            shared_expert_intermediate_size=dim,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=64,
            pad_token_id=0,
        )
        self.talker = Qwen3OmniMoeTalkerModel(config)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.talker.codec_embedding.weight

    def forward(self, x):
        h = self.talker(inputs_embeds=self.talker.codec_embedding(x)).last_hidden_state
        return self.head(h)


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="hf_qwen3_omni_moe_talker_byte_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("talker.layers.0", "talker.layers.1"),
    diverges=None,
    heldout=True,
    note="A Hugging Face Qwen3-Omni-MoE talker text decoder (3 shared-expert MoE layers, built "
    "from a tiny config) trained as a byte LM with its head tied to the codec embedding. The "
    "fine-tuning recipe's layer-wise lr decay was typed 0.008 for 0.8, so AdamW's param groups "
    "give layer 1 the base lr x 0.008 and layer 0 x 6.4e-5: the two lower layers barely move "
    "(update/weight ratios 100x below the top layer's) while the embedding, norm and top layer "
    "train and the loss falls.",
)
def h171_talker_llrd_typo(ctx: Context) -> None:
    gen = seeded(17101)
    model = TalkerByteLM()
    base, decay = 3e-3, 0.008  # meant 0.8
    groups, seen = [], set()
    for i, layer in enumerate(model.talker.layers):
        ps = list(layer.parameters())
        seen.update(id(p) for p in ps)
        groups.append({"params": ps, "lr": base * decay ** (len(model.talker.layers) - 1 - i)})
    rest = [p for p in model.parameters() if id(p) not in seen]
    groups.append({"params": rest, "lr": base})
    opt = torch.optim.AdamW(groups, lr=base, weight_decay=0.01)
    low = model.talker.layers[0].self_attn.q_proj.weight
    top = model.talker.layers[2].self_attn.q_proj.weight
    ratios = {"low": [], "top": []}
    prev = {"low": low.detach().clone(), "top": top.detach().clone()}

    def watch_step(step):
        for k, w in (("low", low), ("top", top)):
            ratios[k].append(float((w.detach() - prev[k]).norm() / prev[k].norm()))
            prev[k] = w.detach().clone()

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        150,
        _lm_loss,
        classifier=True,
        before=lambda s: watch_step(s) if s > 0 else None,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check(
        "layer 0 update/weight ratio 100x below the top layer's",
        _mean(ratios["low"]) < 0.01 * _mean(ratios["top"]),
    )
    ctx.check("layer 0 update/weight ratio below 1e-5", _mean(ratios["low"]) < 1e-5)


# -- 2. tsunami run-up regressor: an eval loop that back-propagates into Adam ---------------------


def _tsunami(gen, batch):
    """Offshore amplitude, period, shelf slope, bay width, bay depth, coast angle (standardised):
    run-up height from a Green's-law-like product."""
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = (
            torch.exp(0.4 * x[:, 0]) * (1 + 0.3 * torch.tanh(x[:, 1]))
            - 0.3 * x[:, 2]
            + 0.2 * x[:, 3] * x[:, 4]
            + 0.1 * torch.cos(x[:, 5])
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield x, y[:, None]


@scenario(
    family="tsunami_runup_height_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP regressor with Adam (betas 0.9, 0.999). At step 60 a mid-run validation "
    "pass reuses the training helper that calls loss.backward() and never zero_grad()s: the "
    "gradients of 1500 validation batches pile up into the next optimizer step. That one giant "
    "gradient fills Adam's second moment; afterwards the updates shrink more than 5x and the "
    "loss, still falling before, stalls.",
    onset=60,
)
def h171_tsunami_eval_backward(ctx: Context) -> None:
    gen = seeded(17102)
    model = _mlp([6, 64, 64, 1], nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    val = _tsunami(torch.Generator().manual_seed(99), 64)
    w = model[0].weight
    moves, vmax = [], []
    prev = [w.detach().clone()]

    def validate(step):
        if step == 60:
            for _ in range(1500):
                xv, yv = next(val)
                F.mse_loss(model(xv), yv).backward()  # the bug: backward in the eval helper
        st = opt.state.get(w, {})
        vmax.append(float(st["exp_avg_sq"].max()) if "exp_avg_sq" in st else 0.0)

    def before(step):
        moves.append(float((w.detach() - prev[0]).norm()))
        prev[0] = w.detach().clone()

    _train(
        ctx,
        model,
        opt,
        _tsunami(gen, 64),
        200,
        F.mse_loss,
        before=before,
        after_backward=validate,
    )
    ctx.check(
        "gradient at step 60 over 100x the median",
        ctx.grad_norms[60] > 100 * _median(ctx.grad_norms[:60]),
    )
    ctx.check("second moment max grew 50x with the step-60 update", vmax[61] > 50 * vmax[60])
    ctx.check(
        "updates after step 70 over 5x smaller than before step 60",
        _mean(moves[80:]) < 0.2 * _mean(moves[30:60]),
    )
    ctx.check(
        "loss stalls: fell less after step 70 than over steps 30-60",
        _mean(ctx.losses[70:80]) - _mean(ctx.losses[-10:])
        < _mean(ctx.losses[30:40]) - _mean(ctx.losses[50:60]),
    )


# -- 3. water polo shot zone classifier: NLLLoss on raw logits -----------------------------------


def _water_polo(gen, batch):
    """Shooter position (x, y), arm angle, goalkeeper offset, defender distance, shot clock:
    which of 5 goal zones the shot goes to."""
    centres = torch.randn(5, 6, generator=torch.Generator().manual_seed(5))
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        x = centres[y] + 0.8 * torch.randn(batch, 6, generator=gen)
        yield x, y


class ShotZoneNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _mlp([6, 48, 48], nn.ReLU)
        self.act = nn.ReLU()
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


@scenario(
    family="water_polo_shot_zone_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP classifying 5 goal zones, trained with Adamax. The model's forward was "
    "changed to return raw logits (the log_softmax moved out for an export) but the loss stayed "
    "nn.NLLLoss, so the loss is -logit[target]: unbounded below, it keeps pushing the head's "
    "logits up and the largest logit grows more than 20x, the loss falling past -100 with no "
    "floor.",
)
def h171_water_polo_nll_raw_logits(ctx: Context) -> None:
    gen = seeded(17103)
    model = ShotZoneNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    top = []
    _train(
        ctx,
        model,
        opt,
        _water_polo(gen, 64),
        200,
        nn.NLLLoss(),
        classifier=True,
        watch=lambda s, o, x, y: top.append(float(o.detach().abs().max())),
    )
    ctx.check("largest logit grew 20x", top[-1] > 20 * _mean(top[:5]))
    ctx.check("loss below -100 (unbounded NLL on raw logits)", ctx.losses[-1] < -100)
    ctx.check("logits still growing over the last 50 steps", top[-1] > 1.2 * top[-50])


# -- 4. storm surge overtopping classifier: a remounted wind vane ---------------------------------


def _storm_surge(gen, batch, flipped=False):
    """Wind speed, wind direction (sin, cos), pressure anomaly, tide level, wave height: does the
    sea wall overtop? Onshore winds from the south-west push the surge."""
    onshore = torch.tensor([-0.7, -0.7])
    while True:
        speed = torch.rand(batch, 1, generator=gen) * 3
        ang = torch.rand(batch, generator=gen) * 2 * math.pi
        d = torch.stack([torch.sin(ang), torch.cos(ang)], 1)
        rest = torch.randn(batch, 3, generator=gen)
        push = speed[:, 0] * (d @ onshore) + 0.8 * rest[:, 1] + 0.5 * rest[:, 2] - 0.4 * rest[:, 0]
        y = (push > 0.3).float()
        shown = -d if flipped else d
        yield torch.cat([speed, shown, rest], 1), y[:, None]


@scenario(
    family="storm_surge_overtop_classifier",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP with BCE-with-logits predicting sea-wall overtopping from station sensors, "
    "trained with NAdam. At step 100 the station's anemometer was replaced and its wind vane "
    "mounted 180 degrees round, so the wind direction features flip sign from then on (valid "
    "readings, a changed sensor). The loss jumps more than 3x in one step and the run relearns "
    "the direction within a few dozen steps; nothing in the optimizer or the model is unstable.",
    onset=100,
)
def h171_storm_surge_vane_remounted(ctx: Context) -> None:
    gen = seeded(17104)
    model = _mlp([6, 48, 48, 1], nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    before_, after_ = _storm_surge(gen, 64), _storm_surge(gen, 64, flipped=True)

    def batches():
        for step in range(10**9):
            yield next(before_ if step < 100 else after_)

    _train(ctx, model, opt, batches(), 200, F.binary_cross_entropy_with_logits)
    pre = _mean(ctx.losses[80:100])
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss jumped 3x at step 100", max(ctx.losses[100:103]) > 3 * pre)
    ctx.check(
        "run recovered: last 20 steps within 1.5x of before", _mean(ctx.losses[-20:]) < 1.5 * pre
    )
    ctx.check("loss had fallen before the onset", pre < 0.5 * _mean(ctx.losses[:5]))


# -- 5. sea-ice floe drift regressor: OneCycleLR peak typed 10x ----------------------------------


def _floe_drift(gen, batch):
    """Wind u/v, current u/v, floe thickness, floe area, air temperature, ice concentration
    (standardised): drift speed."""
    w = torch.randn(8, generator=torch.Generator().manual_seed(8))
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = (
            torch.tanh(x @ w / 3) * 2
            + 0.3 * x[:, 0] * x[:, 2]
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y[:, None]


def _sharpness(model, x, y, iters=12):
    """The top Hessian eigenvalue of the MSE on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sea_ice_floe_drift_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP regressing floe drift speed with plain SGD under OneCycleLR. The schedule's "
    "max_lr was typed 0.8 for 0.08: the warm-up climbs over the first 30% of the run and, "
    "around step 20, lr x (top Hessian eigenvalue) passes 2; the loss starts to oscillate and "
    "climbs by orders of magnitude before the peak.",
    onset=20,
)
def h171_sea_ice_onecycle_peak_typo(ctx: Context) -> None:
    gen = seeded(17105)
    model = _mlp([8, 64, 64, 1], nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.8, total_steps=150, pct_start=0.3, cycle_momentum=False
    )
    probe = next(_floe_drift(torch.Generator().manual_seed(3), 256))
    edge = {}

    def before(step):
        if step % 5 == 0 and step <= 30:
            edge[step] = opt.param_groups[0]["lr"] * _sharpness(model, *probe)

    _train(ctx, model, opt, _floe_drift(gen, 64), 150, F.mse_loss, before=before, sched=sched)
    crossed = min((s for s, e in edge.items() if e > 2), default=None)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("lr x sharpness below 2 at the start", edge[0] < 2)
    ctx.check("lr x sharpness passed 2 by step 25", crossed is not None and crossed <= 25)
    ctx.check(
        "loss blew up 100x over its minimum after the crossing",
        _first_bad(ctx.losses) is not None or max(finite[20:]) > 100 * min(finite[:20]),
    )


# -- 6. firefly flash rate: a tanh RNN cell with its recurrent init std copied from elsewhere ----


class FlashRateRNN(nn.Module):
    """A tanh ``nn.RNNCell`` unrolled by hand over a photodiode trace (keeps its hidden states
    to measure the gradient through time), read by a linear head at the last step."""

    def __init__(self, hidden=64, recurrent_std=0.3):
        super().__init__()
        self.cell = nn.RNNCell(2, hidden)
        nn.init.normal_(self.cell.weight_hh, std=recurrent_std)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _fireflies(gen, batch, length=48):
    """A photodiode trace of a firefly swarm (light, temperature) per time step: the mean flash
    rate over the window."""
    while True:
        rate = torch.rand(batch, 1, generator=gen) * 0.4
        light = (torch.rand(batch, length, generator=gen) < rate).float()
        temp = torch.randn(batch, length, generator=gen) * 0.1 + rate
        x = torch.stack([light, temp], -1)
        yield x, 5 * light.mean(1, keepdim=True)


@scenario(
    family="firefly_flash_rate_tanh_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="A tanh RNN cell (64 units) unrolled over 48 steps of a photodiode trace, SGD with "
    "Nesterov momentum and no clipping. The recurrent weights were initialised with "
    "normal(std=0.3), a value copied from the input projection's recipe, instead of "
    "1/sqrt(64) = 0.125 (spectral radius about 2.4): the gradient grows more than 100x back "
    "through time, the first steps' gradient norms are thousands of times the later ones, the "
    "kick (the recurrent weights' max grows 3x in the first 10 steps) saturates the cell and the run learns the flash rate poorly (MSE about 4x what a 1/sqrt(64) init reaches).",
)
def h171_firefly_recurrent_init_std(ctx: Context) -> None:
    gen = seeded(17106)
    model = FlashRateRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    through_time, w_max = [], [float(model.cell.weight_hh.detach().abs().max())]

    def measure(step):
        if step == 0:
            hs = model.states
            through_time.append(float(hs[0].grad.norm() / hs[-1].grad.norm()))
        if step == 10:
            w_max.append(float(model.cell.weight_hh.detach().abs().max()))

    _train(ctx, model, opt, _fireflies(gen, 32), 150, F.mse_loss, after_backward=measure)
    g = ctx.grad_norms
    ctx.check("gradient grew 100x back through time at step 0", through_time[0] > 100)
    ctx.check("first gradient norm over 100x the later median", g[0] > 100 * _median(g[50:]))
    ctx.check("the first 10 updates grew the recurrent weights' max 3x", w_max[1] > 3 * w_max[0])
    # a 1/sqrt(64) init reaches about 0.06 on the same stream
    ctx.check("learns poorly: last 20 steps above 0.15", _mean(ctx.losses[-20:]) > 0.15)


# -- 7. waggle dance heading: a von Mises NLL with log(i0(kappa)) --------------------------------


def _waggle(gen, batch):
    """Waggle-run angle to vertical on the comb (sin, cos), sun azimuth (sin, cos), run duration,
    filmed within an hour of noon at one apiary: the compass heading of the food source (comb
    angle + sun azimuth, a little scatter)."""
    while True:
        comb = torch.rand(batch, generator=gen) * 2 * math.pi
        sun = math.pi + 0.2 * torch.rand(batch, generator=gen)
        dur = torch.rand(batch, generator=gen)
        x = torch.stack([comb.sin(), comb.cos(), sun.sin(), sun.cos(), dur], 1)
        yield x, comb + sun + 0.01 * torch.randn(batch, generator=gen)


class HeadingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _mlp([5, 64, 64], nn.SiLU)
        self.act = nn.SiLU()
        self.mu = nn.Linear(64, 2)
        self.kappa = nn.Linear(64, 1)

    def forward(self, x):
        h = self.act(self.body(x))
        return torch.cat([self.mu(h), torch.exp(self.kappa(h))], 1)


def _von_mises_nll(out, theta):
    mu = torch.atan2(out[:, 0], out[:, 1])
    kappa = out[:, 2]
    # the bug: log(i0(kappa)) overflows float32 past kappa ~ 89; i0e would not
    return (
        -kappa * torch.cos(theta - mu) + torch.log(2 * math.pi * torch.special.i0(kappa))
    ).mean()


@scenario(
    family="waggle_dance_heading_vonmises_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("kappa",),
    diverges=88,
    heldout=True,
    note="A SiLU MLP decoding a honeybee waggle run into a von Mises heading (mean from atan2, "
    "concentration as the exp of a head), RAdam. The NLL computes log(2 pi I0(kappa)) with "
    "torch.special.i0 instead of the scaled i0e: the headings are nearly exact, the fit drives "
    "kappa up, and once it passes about 89 i0 overflows float32 to inf, the loss is inf and the "
    "gradient (i1/i0 = inf/inf) NaN.",
)
def h171_waggle_vonmises_i0_overflow(ctx: Context) -> None:
    gen = seeded(17107)
    model = HeadingNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    kap = []
    _train(
        ctx,
        model,
        opt,
        _waggle(gen, 64),
        200,
        _von_mises_nll,
        watch=lambda s, o, x, y: kap.append(float(o[:, 2].detach().max())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("kappa past 88 when it broke", bad is not None and kap[bad] > 88)
    ctx.check(
        "finite before kappa reached 85",
        all(math.isfinite(v) for v, k in zip(ctx.losses, kap, strict=False) if k < 85),
    )
    ctx.check(
        "heading learnt before it broke",
        bad is not None and ctx.losses[bad - 1] < ctx.losses[0] - 2,
    )


# -- 8. thunder distance from raw waveforms: int16 counts under fp16 autocast --------------------


class SquaredPower(nn.Module):
    """Frame power: the mean of the squared frontend output over time."""

    def forward(self, h):
        return (h * h).mean(-1)


class ThunderNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.frontend = nn.Conv1d(1, 8, 16, stride=8)
        self.power = SquaredPower()
        self.head = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.head(torch.log1p(self.power(self.frontend(x[:, None]))))


def _thunder(gen, batch, counts=False):
    """256 samples of a thunder rumble (decaying low-frequency noise): the distance to the strike
    (the rumble's low-pass and loudness fall off with distance), in km / 10."""
    t = torch.linspace(0, 1, 256)
    while True:
        dist = torch.rand(batch, 1, generator=gen)
        noise = torch.randn(batch, 256, generator=gen)
        smooth = F.avg_pool1d(noise[:, None], 9, 1, 4)[:, 0] * (1 + 4 * dist)
        wave = (0.8 - 0.6 * dist) * smooth * torch.exp(-2 * t)
        wave = wave.clamp(-1, 1)
        yield (wave * 32767 if counts else wave), dist


@scenario(
    family="thunder_rumble_distance_fp16_conv1d",
    optimizer="Adam",
    cause="amp_overflow",
    where=("power",),
    diverges=60,
    heldout=True,
    note="A 1-D conv net on raw thunder waveforms under fp16 autocast with a GradScaler, Adam. "
    "From step 60 the loader reads a second station's files, whose reader returns int16 counts "
    "instead of floats in [-1, 1]: the frontend's fp16 output is in the thousands, its square "
    "overflows 65504 to inf in the frame-power module, every later loss is inf or NaN and the "
    "GradScaler skips every step, halving its scale towards zero.",
    onset=60,
)
def h171_thunder_int16_counts_fp16(ctx: Context) -> None:
    gen = seeded(17108)
    model = ThunderNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    clean, counts = _thunder(gen, 32), _thunder(gen, 32, counts=True)
    infs = []

    def batches():
        for step in range(10**9):
            yield next(clean if step < 60 else counts)

    def watch(step, out, x, y):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            p = model.power(model.frontend(x[:, None]))
        infs.append(bool(torch.isinf(p).any()) and p.dtype == torch.float16)

    _train(
        ctx, model, opt, batches(), 100, F.mse_loss, scaler=scaler, watch=watch, stop_at_nan=False
    )
    ctx.check(
        "finite and training before step 60", _finite(ctx.losses[:60]) and _fell(ctx.losses[:60])
    )
    ctx.check("fp16 frame power overflowed from step 60", all(infs[60:]) and not any(infs[:60]))
    ctx.check("loss non-finite from step 60", _first_bad(ctx.losses) == 60)
    ctx.check("GradScaler scale fell 1e6x", ctx.scales[-1] < 1e-6 * ctx.scales[59])


# -- 9. ski jump distance regressor: a missing-value sentinel in one batch -----------------------

_SKI_MEAN = torch.tensor([92.0, 0.0, 120.0, 62.0, -2.0])
_SKI_STD = torch.tensor([2.0, 1.5, 15.0, 5.0, 4.0])


def _ski_jumps(gen, batch):
    """In-run speed (km/h), wind (m/s, + headwind), hill size (m), jumper mass (kg), air
    temperature: the jump distance (m / 100)."""
    while True:
        raw = _SKI_MEAN + _SKI_STD * torch.randn(batch, 5, generator=gen)
        dist = 0.9 * raw[:, 2] + 2.5 * (raw[:, 0] - 92) + 4.0 * raw[:, 1] - 0.3 * (raw[:, 3] - 62)
        yield raw, (dist / 100 + 0.02 * torch.randn(batch, generator=gen))[:, None]


class JumpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", _SKI_MEAN.clone())
        self.register_buffer("std", _SKI_STD.clone())
        self.body = _mlp([5, 64, 64, 1], nn.GELU)

    def forward(self, raw):
        return self.body((raw - self.mean) / self.std)


@scenario(
    family="ski_jump_distance_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP regressing ski-jump distance from raw competition sensors (normalised inside "
    "the model), Huber loss, SGD with momentum 0.9. At step 90 one batch comes from a round "
    "where the wind sensor dropped out and the timing system wrote its missing-value code -9999 "
    "m/s for 12 jumps: standardised, that input is about -6700; the gradient jumps over 100x "
    "and the loss spikes, then the run settles back.",
    onset=90,
)
def h171_ski_jump_wind_sentinel(ctx: Context) -> None:
    gen = seeded(17109)
    model = JumpNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:12, 1] = -9999.0
        return x, y

    _train(ctx, model, opt, _ski_jumps(gen, 64), 180, nn.HuberLoss(delta=0.5), alter=alter)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("loss had fallen before the bad batch", _fell(ls[:90]))
    ctx.check("gradient at step 90 over 100x the median before", g[90] > 100 * _median(g[40:90]))
    ctx.check("loss spiked 10x at or just after step 90", max(ls[90:95]) > 10 * _mean(ls[70:90]))


# -- 10. volcanic ash plume height: Adagrad at a sparse-embedding recipe's lr ---------------------


def _ash_plume(gen, batch):
    """Mass eruption rate (log), vent temperature, wind shear, humidity, tropopause height,
    crater width (standardised): plume top height (Mastin-like power law plus wind bending)."""
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = (
            torch.exp(0.25 * x[:, 0])
            - 0.3 * torch.relu(x[:, 2])
            + 0.2 * x[:, 4]
            + 0.1 * x[:, 1] * x[:, 3]
        )
        yield x, y[:, None]


@scenario(
    family="volcanic_ash_plume_height_relu_mlp",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("4", "5"),  # a bare nn.Sequential: its modules are "0".."6"
    diverges=None,
    heldout=True,
    note="A 3-hidden-layer ReLU MLP regressing plume height with MSE. The run switched to "
    "Adagrad and kept lr 0.5 from the team's sparse-embedding recipe: Adagrad's first steps "
    "move every weight by about the lr (the loss jumps to about 1e7 in the first steps), which "
    "drives over 90% of the third hidden layer's ReLUs (modules 4 and 5) negative on every input; "
    "they never come back and the loss plateaus about 30x above what the net reaches at lr "
    "0.01.",
)
def h171_ash_plume_adagrad_lr(ctx: Context) -> None:
    gen = seeded(17110)
    model = _mlp([6, 64, 64, 64, 1], nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)
    probe = next(_ash_plume(torch.Generator().manual_seed(4), 512))[0]

    def dead():
        with torch.no_grad():
            return dead_fraction(model[:6](probe))

    start = dead()
    _train(ctx, model, opt, _ash_plume(gen, 64), 200, F.mse_loss)
    end = dead()
    ctx.check("third hidden layer under 20% dead at init", start < 0.2)
    ctx.check("over 80% of the third hidden layer dead at the end", end > 0.8)
    ctx.check(
        "loss plateaus: last 50 steps fell under 10%",
        _mean(ctx.losses[-10:]) > 0.9 * _mean(ctx.losses[-50:-40]),
    )


# -- healthy controls -------------------------------------------------------------------------------


def _swell(gen, batch, length=48):
    """A wave buoy's heave record (48 samples at 1 Hz, a swell train and wind chop): the swell
    height in metres."""
    t = torch.arange(length).float()
    while True:
        period = 6 + 10 * torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        second = 4 + 3 * torch.rand(batch, 1, generator=gen)
        height = 0.5 + 2 * torch.rand(batch, 1, generator=gen)
        heave = height / 2 * torch.sin(2 * math.pi * t / period + phase)
        heave = (
            heave
            + 0.2 * torch.sin(2 * math.pi * t / second)
            + 0.1 * torch.randn(batch, length, generator=gen)
        )
        yield heave[..., None], height


class SwellLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.lstm(x)[0].mean(1))


@scenario(
    family="ocean_swell_height_lstm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="An LSTM reading a wave buoy's heave record (head on its time-averaged outputs), AdamW with weight decay, a linear warm-up "
    "over 20 steps then cosine decay (LambdaLR), gradient clipping at 1.0, MSE.",
)
def h171_ocean_swell_lstm_control(ctx: Context) -> None:
    gen = seeded(17111)
    model = SwellLSTM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.01)
    total = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    _train(ctx, model, opt, _swell(gen, 32), total, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("loss fell 20x", _fell(ctx.losses, ratio=0.05))
    ctx.check("below the predict-the-mean MSE (1/3) tenfold", _mean(ctx.losses[-10:]) < 0.033)
    ctx.check("gradients finite", _finite(ctx.grad_norms))


class CloudGenusCNN(nn.Module):
    """8x8 all-sky camera patches (the bundled digits stand in) into 10 cloud genera."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="cloud_genus_bn_cnn",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A BatchNorm CNN classifying sky patches, SGD with Nesterov momentum and weight decay, "
    "label smoothing 0.1, ReduceLROnPlateau on the training loss.",
)
def h171_cloud_genus_cnn_control(ctx: Context) -> None:
    gen = seeded(17112)
    model = CloudGenusCNN()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    right = []

    def watch(step, out, x, y):
        right.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        sched=sched,
        watch=watch,
    )
    ctx.check("loss fell 2x", _fell(ctx.losses, ratio=0.5))
    ctx.check("training accuracy over 85%", _mean(right[-10:]) > 0.85)


def _marathon(gen, batch):
    """Half-way split (min), heart rate, temperature, elevation gain, age, weekly mileage
    (standardised): the second-half split (min / 60), with a few runners hitting the wall."""
    while True:
        x = torch.randn(batch, 6, generator=gen)
        wall = (torch.rand(batch, generator=gen) < 0.05).float() * 0.3
        y = 1.0 + 0.15 * x[:, 0] + 0.05 * x[:, 2] + 0.04 * x[:, 3] - 0.06 * x[:, 5] + wall
        yield x, y[:, None]


@scenario(
    family="marathon_split_time_fp16_mlp",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP predicting a marathon's second-half split, fp16 autocast with a GradScaler, "
    "gradient accumulation over 2 micro-batches, clipping at 1.0 after unscale_, Huber loss for "
    "the runners who hit the wall, Adadelta at lr 1.0.",
)
def h171_marathon_split_fp16_control(ctx: Context) -> None:
    gen = seeded(17113)
    model = _mlp([6, 64, 64, 1], nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _train(
        ctx,
        model,
        opt,
        _marathon(gen, 32),
        150,
        nn.HuberLoss(delta=0.2),
        scaler=scaler,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell 2x", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("GradScaler scale stayed at or above 1", min(ctx.scales) >= 1.0)
