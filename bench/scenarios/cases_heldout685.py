"""Held-out set 685 (``h685_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face RoBERTa pre-layer-norm encoder built
from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _fell(xs: list[float], k: int = 10, by: float = 1.0) -> bool:
    return sum(xs[-k:]) < by * sum(xs[:k])


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _tiny_roberta_prelayernorm():
    from transformers import (
        RobertaPreLayerNormConfig,
        RobertaPreLayerNormForSequenceClassification,
    )

    config = RobertaPreLayerNormConfig(
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
    return RobertaPreLayerNormForSequenceClassification(config)


def _rel(now: list[torch.Tensor], before: list[torch.Tensor]) -> float:
    num = sum(float((a.detach() - b).norm() ** 2) for a, b in zip(now, before, strict=True))
    den = sum(float(b.norm() ** 2) for b in before)
    return math.sqrt(num / max(den, 1e-30))


def _sharpness(model: nn.Module, loss_fn, iters: int = 15) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="change_ringing_method_roberta_prelayernorm_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=(
        "roberta_prelayernorm.embeddings",
        "roberta_prelayernorm.embeddings.word_embeddings",
        "roberta_prelayernorm.embeddings.position_embeddings",
    ),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face RoBERTa pre-layer-norm encoder (from a config) classifying "
    "change-ringing touches (is bell 1 rung more often than bell 2 in the row sequence), AdamW "
    "with param groups; the config's freeze_embeddings was the string 'False', read as truthy, "
    "so the embeddings group got lr 0: the embeddings never move while the encoder and "
    "classifier train",
)
def h685_change_ringing_roberta_embed_frozen(ctx: Context) -> None:
    gen = seeded(6851)
    model = _tiny_roberta_prelayernorm()
    freeze_embeddings = "False"  # from a YAML string, truthy
    emb = list(model.roberta_prelayernorm.embeddings.parameters())
    emb_ids = {id(p) for p in emb}
    rest = [p for p in model.parameters() if id(p) not in emb_ids]
    opt = torch.optim.AdamW(
        [
            {"params": emb, "lr": 0.0 if freeze_embeddings else 1e-3},
            {"params": rest, "lr": 1e-3},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    data = bert_batches(gen, batch=32, length=16)
    emb0 = [p.detach().clone() for p in emb]
    rest0 = [p.detach().clone() for p in rest]
    for _step in range(100):
        x, y = next(data)
        ctx.targets(y)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    emb_rel, rest_rel = _rel(emb, emb0), _rel(rest, rest0)
    ctx.check("embeddings moved under 1e-7 relative", emb_rel < 1e-7)
    ctx.check("encoder and classifier moved over 1e-2 relative", rest_rel > 1e-2)
    ctx.check("loss fell (mean of last 10 below first 10)", _fell(ctx.losses))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="jai_alai_cesta_rebound_zone_raw_nll_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a jai-alai cesta rebound-zone classifier, ReLU MLP, Adam; a refactor dropped the "
    "log_softmax before F.nll_loss, so the loss is minus the raw target logit: the head's "
    "logits grow without bound, the loss falls far below zero and keeps falling",
)
def h685_jai_alai_nll_without_log_softmax(ctx: Context) -> None:
    gen = seeded(6852)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    maxlog = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.nll_loss(logits, y)  # log_softmax dropped
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        maxlog.append(float(logits.detach().abs().max()))
    ctx.check("head logits grew over 20x (max |logit|, last vs first)", maxlog[-1] > 20 * maxlog[0])
    ctx.check("loss below -10 at the end", ctx.losses[-1] < -10)
    ctx.check(
        "loss still falling (last below the value 30 steps before)",
        ctx.losses[-1] < ctx.losses[-31] - 1.0,
    )


@scenario(
    family="timpani_pedal_pitch_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="a timpani pedal-pitch regressor, tanh MLP, MSE, plain SGD with a StepLR; the step "
    "scheduler's gamma was typed 4.0 instead of 0.4, at step 60 the lr jumps from 0.05 to 0.2 "
    "and at 120 to 0.8, lr x sharpness passes 2 and the loss oscillates and blows up",
)
def h685_timpani_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(6853)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=4.0)  # meant 0.4
    ctx.attach(model, opt)
    data = _readings(gen)
    px, py = next(data)
    px, py = px * 3.0, py * 3.0
    prod = {}
    for step in range(240):
        x, y = next(data)
        x, y = 3.0 * x, 3.0 * y  # the pedal travel in mm / 10
        if step % 20 == 0:
            lam = _sharpness(model, lambda: F.mse_loss(model(px), py))
            prod[step] = opt.param_groups[0]["lr"] * lam
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 40", prod.get(40, 9.0) < 2.0)
    ctx.check(
        "lr x sharpness over 2 at some probe from step 60",
        any(v > 2.0 for k, v in prod.items() if k >= 60),
    )
    ctx.check("loss fell before step 60", _median(ls[50:60]) < 0.5 * ls[0])
    ctx.check(
        "loss blew up (non-finite or over 100x its start)",
        (not _finite(ls)) or max(ls) > 100 * ls[0],
    )


@scenario(
    family="hailstone_pad_rain_gauge_log_feature_silu_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logfeat",),
    diverges=50,
    heldout=True,
    onset=50,
    note="a hail-pad rain-gauge regressor, SiLU MLP, RMSprop; its first module takes log of the "
    "gauge's rainfall channel with no clamp, and from step 50 the gauge writes -1 as its "
    "missing-value sentinel: log(-1) is NaN in the log-feature module and the loss is NaN at "
    "step 50",
)
def h685_hail_pad_log_sentinel(ctx: Context) -> None:
    class _LogFeature(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)  # no clamp

    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logfeat = _LogFeature()
            self.body = _Net(8, 32, 1, nn.SiLU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.logfeat(x))

    gen = seeded(6854)
    model = _Model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    nan_at = None
    for step in range(100):
        x, y = next(data)
        x = x.clone()
        x[:, 0] = torch.exp(x[:, 0])  # rainfall, positive
        if step >= 50:
            x[:4, 0] = -1.0  # the missing-value sentinel
        with torch.no_grad():
            if nan_at is None and torch.isnan(model.logfeat(x)).any():
                nan_at = step
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 50", _finite(ls[:50]))
    ctx.check("loss fell before step 50", _median(ls[40:50]) < 0.7 * ls[0])
    ctx.check("loss NaN at step 50", len(ls) == 51 and math.isnan(ls[50]))
    ctx.check("the log-feature output first NaN at step 50", nan_at == 50)


@scenario(
    family="shinty_caman_strike_carry_gelu_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a shinty caman-strike carry regressor, GELU MLP, MSE, clipping at 1, Adamax; the shard "
    "read at step 80 came from a club whose radar logs ball speed in mm/s instead of m/s (inputs "
    "1000x on that batch), that batch's loss and gradient are enormous, the clip holds the "
    "update and the run recovers on clean batches",
)
def h685_shinty_mm_per_s_shard(ctx: Context) -> None:
    gen = seeded(6855)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(180):
        x, y = next(data)
        if step == 80:
            x = x * 1000.0  # the mm/s shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 80 over 100x the median of 60-79", ls[80] > 100 * _median(ls[60:80]))
    ctx.check("gradient at step 80 over 30x the median of 60-79", g[80] > 30 * _median(g[60:80]))
    ctx.check(
        "loss recovered (median of last 20 < 3x median of 60-79)",
        _median(ls[-20:]) < 3 * _median(ls[60:80]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="farrier_anvil_horn_ring_tone_tanh_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a farrier anvil-horn ring-tone regressor, tanh MLP, Huber loss, 4-micro-batch "
    "accumulation, clipping at 1, SGD Nesterov; the accumulation divisor is read from a counter "
    "that is reset to 1/64 on the epoch-boundary step 70 (a float-division typo), so that one "
    "step's gradient is 256x larger; the data are clean and the logged loss ordinary, the clip "
    "holds the update and the run carries on",
)
def h685_farrier_accum_divisor_typo(ctx: Context) -> None:
    gen = seeded(6856)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32)
    for step in range(160):
        divisor = 1 / 64 if step == 70 else 4
        total = 0.0
        for _ in range(4):
            x, y = next(data)
            out = model(x)
            (F.huber_loss(out, y, delta=0.5) / divisor).backward()
            total += float(F.huber_loss(out.detach(), y, delta=0.5)) / 4
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[50:70])
    ctx.check("gradient at step 70 over 50x the median of 50-69", g[70] > 50 * base)
    ctx.check("gradient back to ordinary by step 75", g[75] < 5 * base)
    ctx.check("logged loss at step 70 ordinary (< 3x max of 60-69)", ls[70] < 3 * max(ls[60:70]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="sundial_gnomon_shadow_drift_relu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=40,
    note="a sundial gnomon-shadow regressor, ReLU MLP, MSE, Adagrad; from step 40 the label "
    "pipeline's calibration factor is multiplied into itself each step instead of being set "
    "(1.03 compounding), the targets drift upward slowly, Adagrad's shrinking steps cannot "
    "follow, and the loss climbs slowly with no blow-up",
)
def h685_sundial_compounding_calibration(ctx: Context) -> None:
    gen = seeded(6857)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = _readings(gen)
    calib = 1.0
    for step in range(180):
        x, y = next(data)
        if step >= 40:
            calib = calib * 1.01  # meant calib = 1.01
        loss = F.mse_loss(model(x), calib * (y + 1.0))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(_median(ls[i : i + 5]) for i in range(0, 60))
    ctx.check("loss fell before the drift", _median(ls[30:40]) < 0.5 * ls[0])
    ctx.check("loss climbed past 5x its low by the end", _median(ls[-10:]) > 5 * low)
    ctx.check(
        "no step jumps over 3x the step before (slow climb)",
        all(ls[i + 1] < 3 * ls[i] for i in range(40, len(ls) - 1)),
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="sheepdog_trial_whistle_irnn_classifier",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a sheepdog-trial whistle-command classifier reading 8x8 digit 'spectrogram' rows with "
    "a ReLU RNN (IRNN), SGD momentum; the identity init of the recurrent weights was scaled by "
    "1.6 (a gain meant for the input weights), the hidden state and the gradient grow through "
    "time: the gradient at the first row is over 10x that at the last and the first steps' gradients are huge; the run does not blow up but trains only slowly after",
)
def h685_sheepdog_irnn_recurrent_gain(ctx: Context) -> None:
    class _IRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(8, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 10)
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(1.6 * torch.eye(32))  # gain typo
                self.rnn.bias_hh_l0.zero_()
                self.rnn.bias_ih_l0.fill_(0.2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x.reshape(-1, 8, 8))
            return self.head(out[:, -1])

    gen = seeded(6858)
    model = _IRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    ratio0 = None
    for step in range(150):
        x, y = next(data)
        ctx.targets(y)
        if step == 0:
            seq = x.reshape(-1, 8, 8).clone().requires_grad_(True)
            out, _ = model.rnn(seq)
            F.cross_entropy(model.head(out[:, -1]), y).backward()
            gi = seq.grad.norm(dim=(0, 2))
            ratio0 = float(gi[0]) / max(float(gi[-1]), 1e-30)
            model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("input gradient at the first row over 10x that at the last at step 0", ratio0 > 10)
    ctx.check(
        "gradient at step 0 over 10x the median of the last 20 steps",
        ctx.grad_norms[0] > 10 * _median(ctx.grad_norms[-20:]),
    )
    ctx.check("initial loss over 2x chance", ls[0] > 2 * math.log(10))


@scenario(
    family="fulling_mill_cloth_shrink_grade_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a fulling-mill cloth-shrinkage grade classifier, ReLU MLP, NAdam; the init helper "
    "meant for a gating layer set fc2's bias to -5, so nearly every fc2 ReLU is dead from the "
    "start and stays dead, fc1 gets no gradient and the loss stays near chance",
)
def h685_fulling_mill_gate_bias_init(ctx: Context) -> None:
    gen = seeded(6859)
    model = _Net(64, 64, 10, nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-5.0)  # the gating init
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    fc1_0 = [p.detach().clone() for p in model.fc1.parameters()]
    dead = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        feats = model.features(x)
        loss = F.cross_entropy(model.head(feats), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        dead.append(dead_fraction(feats.detach()))
    ls = ctx.losses
    ctx.check("over 80% of fc2 units dead at the end", dead[-1] > 0.8)
    ctx.check("fc1 moved under 1e-3 relative", _rel(list(model.fc1.parameters()), fc1_0) < 1e-3)
    ctx.check("loss near chance at the end (> 0.8 ln 10)", _median(ls[-10:]) > 0.8 * math.log(10))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="bagatelle_pin_pocket_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bagatelle pin-board pocket classifier, GELU MLP, SGD; the softmax temperature was "
    "read as 0.005 from a config meant in hundreds (0.5), the logits are divided by it, the "
    "softmax saturates and most rows give their top class a probability of exactly 1.0",
)
def h685_bagatelle_temperature_typo(ctx: Context) -> None:
    gen = seeded(68510)
    model = _Net(64, 64, 10, nn.GELU)
    temperature = 0.005  # meant 0.5
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    frac = []
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        p = torch.softmax(logits.detach(), -1)
        frac.append(float((p.max(-1).values == 1.0).float().mean()))
        frac_t = collapsed_fraction(logits.detach(), y)
    ctx.check("over 20% of rows at max p = 1.0 at the end", frac[-1] > 0.2)
    ctx.check("collapsed-to-target fraction over 10% at the end", frac_t > 0.1)
    ctx.check("loss finite", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------------


@scenario(
    family="sled_dog_gangline_pull_gelu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a sled-dog gangline pull-grade classifier, GELU MLP, SGD momentum, with annealed "
    "Gaussian gradient noise (Neelakantan et al. 2015: variance 0.01/(1+t)^0.55) added to every "
    "gradient: the gradient norm is large and jumpy early and settles as the noise anneals; "
    "healthy, an alarming-looking control",
)
def h685_sled_dog_annealed_grad_noise(ctx: Context) -> None:
    gen = seeded(68511)
    model = _Net(64, 64, 10, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    clean = []
    for step in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        clean.append(grad_norm(model))
        sigma = math.sqrt(0.01 / (1 + step) ** 0.55)
        with torch.no_grad():
            for p in model.parameters():
                p.grad.add_(sigma * torch.randn(p.shape, generator=gen))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "noisy gradient over 5x the clean one in the first 20 steps",
        _median(g[:20]) > 5 * _median(clean[:20]),
    )
    ctx.check("loss fell below half its start", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="pole_vault_pole_bend_onecycle_silu_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a pole-vault pole-bend regressor, SiLU MLP, Huber loss, 2-micro-batch accumulation, "
    "clipping at 1, OneCycleLR, RMSprop, noisy readings; healthy control",
)
def h685_pole_vault_onecycle_control(ctx: Context) -> None:
    gen = seeded(68512)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.2)
    for _step in range(150):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=1.0) / 2
            loss.backward()
            total += float(loss)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("loss fell (mean of last 10 below 0.7x first 10)", _fell(ctx.losses, by=0.7))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="marquetry_veneer_species_tied_embedding_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a marquetry veneer-species classifier whose output matrix is a class-prototype "
    "Embedding (logits = h @ proto.weight.T, the embedding weight reused as the head), label "
    "smoothing 0.1, param groups (no decay on biases), ReduceLROnPlateau, AdamW; healthy control",
)
def h685_marquetry_tied_label_smoothing_control(ctx: Context) -> None:
    class _Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(64, 32)
            self.act = nn.GELU()
            self.mix = nn.Linear(32, 32)
            self.proto = nn.Embedding(10, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.mix(self.act(self.embed(x)))
            return h @ self.proto.weight.T  # tied class prototypes

    gen = seeded(68513)
    model = _Tied()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step(float(loss))
    ls = ctx.losses
    ctx.check("loss fell below half its start", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))
