"""Held-out set 647 (``h647_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Gemma2 causal LM built from a tiny config."""

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


class Net(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.gelu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.features(x))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="glassblower_gather_crack_sigmoid_bce_classifier",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("head",),
    diverges=35,
    heldout=True,
    note="a hand-written binary cross-entropy -(y log p + (1 - y) log(1 - p)) on p = sigmoid(z) "
    "without the usual eps clamp; Adagrad at lr 0.02 drives the crack logits past ~17 where "
    "1 - p rounds to exactly 0 in float32, log(0) = -inf and 0 * -inf gives a NaN loss",
)
def h647_glassblower_crack_bce_no_clamp(ctx: Context) -> None:
    gen = seeded(6471)
    model = Net(10, 32, 1, act=F.relu)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    w = torch.randn(10, generator=gen)
    sat_at = None
    for step in range(200):
        x = torch.randn(64, 10, generator=gen)
        y = (x @ w > 0).float()[:, None]
        p = torch.sigmoid(model(x))
        if sat_at is None and bool(((p == 1.0) | (p == 0.0)).any()):
            sat_at = step
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # no clamp
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("a probability rounded to exactly 0 or 1 in the run", sat_at is not None)
    ctx.check("loss became NaN", bad is not None)
    ctx.check(
        "saturation at or before the NaN", sat_at is not None and bad is not None and sat_at <= bad
    )
    ctx.check("loss finite before the NaN", bad is not None and _finite(ls[:bad]))
    ctx.check("NaN at the declared step 35", bad == 35)


@scenario(
    family="kendama_spike_catch_confidence_penalty_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a confidence penalty (Pereyra et al.: CE - beta * entropy, beta 0.5) written with the "
    "sign flipped (CE + beta * entropy), so the loss rewards ever more confident outputs and "
    "the head's logits grow without bound while the accuracy stays where it was",
)
def h647_kendama_catch_entropy_sign(ctx: Context) -> None:
    gen = seeded(6472)
    model = Net(12, 32, 5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _labels(gen, 12, 5)
    max_logit: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        z = model(x)
        max_logit.append(float(z.detach().abs().max()))
        logp = F.log_softmax(z, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        loss = F.cross_entropy(z, y) + 0.5 * entropy  # bug: meant CE - 0.5 * entropy
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("max |logit| grew over 20x", max_logit[-1] > 20 * _median(max_logit[:5]))
    ctx.check(
        "max |logit| still rising in the second half",
        _median(max_logit[-10:]) > 1.2 * _median(max_logit[95:105]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="sepak_takraw_serve_arc_tail_sum_gelu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="the epoch-tail batch path builds its Huber loss with reduction='sum' instead of 'mean' "
    "(one step at 90, batch 64): the backpropagated gradient is 64x the usual while the logged "
    "loss (the mean) is ordinary; clipping at 1.0 keeps the run going",
)
def h647_sepak_serve_tail_sum_reduction(ctx: Context) -> None:
    gen = seeded(6473)
    model = Net(8, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 90
    for step in range(180):
        x, y = next(batches)
        out = model(x)
        loss = F.huber_loss(out, y, delta=1.0)
        total = F.huber_loss(out, y, delta=1.0, reduction="sum") if step == onset else loss
        total.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 30x the 10 before", gs[onset] > 30 * _median(gs[onset - 10 : onset])
    )
    ctx.check("logged loss at onset ordinary", ls[onset] < 3 * _median(ls[onset - 10 : onset]))
    ctx.check("loss fell overall and finite", _finite(ls) and ls[-1] < ls[0])


@scenario(
    family="bagpipe_chanter_reed_humidity_relu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="one shard of hygrometer readings logged in per-mille rather than as a fraction (x1000 "
    "on one input column) arrives as the batch at step 120: the loss and gradient spike, "
    "clipping at 1.0 holds the step, the run recovers on clean batches",
)
def h647_bagpipe_reed_permille_shard(ctx: Context) -> None:
    gen = seeded(6474)
    model = Net(8, 32, 1, act=F.relu)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 120
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1000.0  # the per-mille shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    before = _median(ls[onset - 10 : onset])
    ctx.check("loss at onset over 20x the 10 before", ls[onset] > 20 * before)
    ctx.check("gradient at onset over 10x", gs[onset] > 10 * _median(gs[onset - 10 : onset]))
    ctx.check("recovers: last 20 median under 3x pre-onset", _median(ls[-20:]) < 3 * before)
    ctx.check("finite", _finite(ls))


class PhraseRNN(nn.Module):
    def __init__(self, n_in: int = 4, hidden: int = 32, classes: int = 4, gain: float = 1.0):
        super().__init__()
        self.rnn = nn.RNNCell(n_in, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():  # IRNN init (Le et al. 2015)
            self.rnn.weight_hh.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = torch.zeros(x.shape[0], self.rnn.hidden_size)
        hs = []
        for t in range(x.shape[1]):
            h = self.rnn(x[:, t], h)
            hs.append(h)
        return self.head(h), hs


@scenario(
    family="shakuhachi_breath_phrase_irnn_classifier",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="an IRNN (ReLU recurrence, identity-initialised recurrent matrix) whose identity scale "
    "was set to 1.3 instead of 1.0 over 16 breath-pressure frames: the gradient grows back "
    "through time by ~1.3 per frame, the first frame's hidden-state gradient is over 10x the "
    "last's; clipping at 1.0 keeps the run finite",
)
def h647_shakuhachi_phrase_irnn_gain(ctx: Context) -> None:
    gen = seeded(6475)
    model = PhraseRNN(4, 32, 4, gain=1.3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    w = torch.randn(4, 4, generator=gen)
    ratios: list[float] = []
    for _ in range(150):
        x = 0.5 * torch.randn(64, 16, 4, generator=gen)
        y = (x.mean(1) @ w).argmax(1)
        ctx.targets(y)
        logits, hs = model(x)
        for h in hs:
            h.retain_grad()
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ratios.append(float(hs[0].grad.norm() / (hs[-1].grad.norm() + 1e-12)))
        ctx.grad_norms.append(_gnorm(model.parameters()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first frame's gradient over 10x the last's at start", ratios[0] > 10)
    ctx.check("still over 10x in the run's median", _median(ratios) > 10)
    ctx.check("gradient norm over the clip (1.0) in most steps", _median(ctx.grad_norms) > 1.0)


@scenario(
    family="tinsmith_seam_solder_gap_gelu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="a fine-tuning recipe's trunk lr multiplier (1e-4, meant for a pretrained trunk) left in "
    "the param groups of a freshly initialised trunk: fc1 and fc2 move by under 1e-3 of their "
    "norm over the run while the head trains; the loss plateaus well above what the net can fit",
)
def h647_tinsmith_seam_trunk_multiplier(ctx: Context) -> None:
    gen = seeded(6476)
    model = Net(8, 32, 1)
    base = 3e-3
    opt = torch.optim.Adamax(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": base * 1e-4},
            {"params": model.head.parameters(), "lr": base},
        ]
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)

    def moved(m: nn.Linear, w0: torch.Tensor) -> float:
        return float((m.weight.detach() - w0).norm() / w0.norm())

    ctx.check("fc1 moved under 1e-3 of its norm", moved(model.fc1, w1) < 1e-3)
    ctx.check("fc2 moved under 1e-3 of its norm", moved(model.fc2, w2) < 1e-3)
    ctx.check("head moved over 0.1 of its norm", moved(model.head, wh) > 0.1)
    ctx.check("finite", _finite(ctx.losses))


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 12) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / nv for t in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="log_flume_drop_splash_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a LambdaLR warm-up written as step / warmup without the min(1, .) clamp: the lr keeps "
    "climbing linearly past its 0.05 peak, lr x sharpness crosses 2 and the loss blows up",
)
def h647_log_flume_warmup_no_clamp(ctx: Context) -> None:
    gen = seeded(6477)
    model = Net(8, 32, 1, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    warmup = 20
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup)  # no min(1, .)
    ctx.attach(model, opt)
    batches = _readings(gen)
    products: list[float] = []
    for step in range(250):
        x, y = next(batches)
        if step % 10 == 0:
            products.append(opt.param_groups[0]["lr"] * _top_eig(model, x, y))
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
            break
    ls = ctx.losses
    fin = [v for v in ls if math.isfinite(v)]
    ctx.check("lr x sharpness crossed 2", max(products) > 2.0)
    ctx.check("lr x sharpness under 2 early", products[0] < 2.0)
    ctx.check(
        "loss blew up over 100x its minimum",
        not _finite(ls) or (fin and max(fin[-5:]) > 100 * min(fin)),
    )


@scenario(
    family="oyster_reef_silt_growth_rmsprop_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="lr 1e-1 copied from an Adam recipe into RMSprop (alpha 0.99, no bias correction, so the "
    "first updates are ~10x lr per weight) on raw, uncentred silt-count readings: the first "
    "steps push fc1's pre-activations negative, most fc1 ReLUs die and the loss stalls",
)
def h647_oyster_silt_rmsprop_dead_relu(ctx: Context) -> None:
    gen = seeded(6478)
    model = Net(12, 32, 5, act=F.relu)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    ctx.attach(model, opt)
    w = torch.randn(12, 5, generator=gen)
    probe = None
    dead0 = None
    for _step in range(200):
        z = torch.randn(64, 12, generator=gen)
        x = 3.0 + 2.0 * z  # raw, uncentred counts
        y = (z @ w).argmax(1)
        if probe is None:
            probe = x
            with torch.no_grad():
                dead0 = dead_fraction(model.features(probe))
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe))
    ls = ctx.losses
    ctx.check("few fc1 units dead at init", dead0 is not None and dead0 < 0.2)
    ctx.check("over 60% of fc1 units dead at the end", dead > 0.6)
    ctx.check("loss stalls above 1.0 (chance ~1.61)", _median(ls[-30:]) > 1.0)
    ctx.check("finite", _finite(ls))


@scenario(
    family="quipu_knot_cord_temperature_anneal_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature anneal T = 1.0 * decay**step with decay 0.95 typed for "
    "0.9995: by step ~120 the logits are divided by under 0.003 and most rows' top "
    "probability rounds to exactly 1.0 in float32",
)
def h647_quipu_knot_temperature_decay_typo(ctx: Context) -> None:
    gen = seeded(6479)
    model = Net(12, 32, 5)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _labels(gen, 12, 5)
    frac: list[float] = []
    for step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        temp = 1.0 * 0.95**step  # meant 0.9995
        z = model(x) / temp
        frac.append(
            float((torch.softmax(z.detach().float(), -1).max(-1).values == 1.0).float().mean())
        )
        loss = F.cross_entropy(z, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        x, y = next(batches)
        cf = collapsed_fraction(model(x) / (0.95**199), y)
    ctx.check("no row at p = 1.0 at the start", frac[0] == 0.0)
    ctx.check("over half the rows at p = 1.0 at the end", _median(frac[-20:]) > 0.5)
    ctx.check("target probability exactly 1.0 on over 30% of rows", cf > 0.3)


@scenario(
    family="salt_pan_brine_gauge_drift_asgd_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="the brine-gauge gain correction (x1.01) is applied in place to the cached target "
    "tensor every time a batch is served, so the targets compound 1% per step: the model "
    "chases a drifting target and the loss climbs slowly with no blow-up",
)
def h647_salt_pan_gauge_inplace_gain(ctx: Context) -> None:
    gen = seeded(64710)
    model = Net(8, 32, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    w1 = torch.randn(8, 24, generator=gen) / math.sqrt(8)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    xs = torch.randn(16, 64, 8, generator=gen)
    ys = torch.sin(xs @ w1) @ w2  # the cached target shards
    scale: list[float] = []
    for step in range(240):
        i = step % 16
        ys *= 1.01  # bug: in-place gain on the whole cache; meant y = ys[i] * gain once
        x, y = xs[i], ys[i]
        scale.append(float(y.abs().mean()))
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(_median(ls[k : k + 10]) for k in range(0, 60, 10))
    ctx.check("target scale grew over 3x", _median(scale[-16:]) > 3 * _median(scale[:16]))
    ctx.check("loss climbed over 3x its early low", _median(ls[-20:]) > 3 * low)
    ctx.check("no blow-up: finite, last under 1e3", _finite(ls) and ls[-1] < 1e3)


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="bell_ringing_change_method_gemma2_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Gemma2ForCausalLM (built from a config, final-logit soft-capping "
    "on) on byte text, AdamW with a no-decay group for norms, linear warm-up then cosine "
    "decay, gradient clipping at 1.0: an ordinary run",
)
def h647_bell_ringing_gemma2_warmup_cosine(ctx: Context) -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gen = seeded(64711)
    config = Gemma2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=16,
        attn_implementation="eager",
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = Gemma2ForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 120, 12
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32, vocab=128)
    for _ in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 128).float(), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell over 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))


@scenario(
    family="sand_yacht_gust_speed_sgdr_huber_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="SGDR (CosineAnnealingWarmRestarts, T_0 50): at each restart the lr jumps from ~0 back "
    "to 1.0 and the Huber loss jumps back up for a few steps, which looks alarming, but each "
    "cycle ends lower and the run is healthy (an alarming-looking control)",
)
def h647_sand_yacht_gust_sgdr(ctx: Context) -> None:
    gen = seeded(64712)
    model = Net(8, 32, 1, act=F.silu)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50, eta_min=1e-4)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.1)
    for _ in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    jumps = [max(ls[r : r + 8]) / _median(ls[r - 8 : r]) for r in (50, 100, 150)]
    ctx.check("loss jumps over 1.5x after each restart", min(jumps) > 1.5)
    ctx.check("each cycle ends lower than the first", _median(ls[190:]) < _median(ls[40:50]))
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell", _median(ls[-10:]) < 0.5 * _median(ls[:5]))


class TiedAutoClassifier(nn.Module):
    def __init__(self, n_in: int = 12, hidden: int = 24, classes: int = 5) -> None:
        super().__init__()
        self.enc = nn.Linear(n_in, hidden)
        self.dec_bias = nn.Parameter(torch.zeros(n_in))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.gelu(self.enc(x))
        recon = F.linear(h, self.enc.weight.t(), self.dec_bias)  # tied decoder
        return self.head(h), recon


@scenario(
    family="lutherie_varnish_cure_fp16_tied_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tied-weight autoencoder classifier of varnish-cure stages, fp16 autocast with a "
    "GradScaler, label smoothing 0.1, 2-micro-batch accumulation, two param groups, "
    "ReduceLROnPlateau and clipping: an ordinary run",
)
def h647_lutherie_varnish_fp16_tied(ctx: Context) -> None:
    gen = seeded(64713)
    model = TiedAutoClassifier(12, 24, 5)
    opt = torch.optim.AdamW(
        [
            {"params": [model.enc.weight, model.enc.bias, model.dec_bias], "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 5e-3, "weight_decay": 0.0},
        ],
        weight_decay=0.01,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _labels(gen, 12, 5, batch=32)
    for _ in range(150):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                logits, recon = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1) + 0.1 * F.mse_loss(
                recon.float(), x
            )
            scaler.scale(loss / 2).backward()
            total += float(loss.detach()) / 2
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        plateau.step(total)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell over 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
