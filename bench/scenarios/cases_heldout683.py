"""Held-out set 683 (``h683_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data, the digits and a token task, and a Hugging Face Megatron-BERT encoder
built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 2.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _plain_step(ctx: Context, model: nn.Module, opt, total: torch.Tensor, logged: torch.Tensor):
    total.backward()
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(logged)
    opt.zero_grad(set_to_none=True)


def _tiny_megatron_bert():
    from transformers import MegatronBertConfig, MegatronBertForSequenceClassification

    config = MegatronBertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return MegatronBertForSequenceClassification(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="shishimai_lion_dance_drum_cue_megatron_bert_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("classifier", "bert.pooler.dense"),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Megatron-BERT sequence classifier of lion-dance drum-cue token "
    "sequences, AdamW with two param groups; the fine-tuning config still carries "
    "head_lr_mult: 0.0 from the linear-probe stage read the wrong way round, so the pooler and "
    "classifier group runs at lr 0 while the encoder trains: the head never moves",
)
def h683_shishimai_megatron_head_lr_zero(ctx: Context) -> None:
    gen = seeded(6831)
    model = _tiny_megatron_bert()
    head = [p for n, p in model.named_parameters() if n.startswith(("classifier", "bert.pooler"))]
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in ids]
    base_lr, head_lr_mult = 1e-3, 0.0
    opt = torch.optim.AdamW(
        [
            {"params": body, "lr": base_lr},
            {"params": head, "lr": base_lr * head_lr_mult},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    w_cls0 = model.classifier.weight.detach().clone()
    w_q0 = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    data = bert_batches(gen, batch=16)
    for _ in range(80):
        x, y = next(data)
        ctx.targets(y)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits, y)
        _plain_step(ctx, model, opt, loss, loss)
    w_cls = model.classifier.weight.detach()
    w_q = model.bert.encoder.layer[0].attention.self.query.weight.detach()
    ls = ctx.losses
    ctx.check("classifier weight never moved", float((w_cls - w_cls0).norm()) == 0.0)
    ctx.check(
        "encoder query moved over 5% relative",
        float((w_q - w_q0).norm() / w_q0.norm()) > 0.05,
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="bunraku_puppet_gesture_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bunraku puppet-gesture ReLU classifier (the digits stand in for gesture frames), "
    "Adamax; the softmax temperature is read from the config as 0.0005 (the value meant was "
    "0.5, typed in the wrong unit) and the head's logits are divided by it, so they are 1000x "
    "too large and the softmax rounds to exactly 0/1 for most rows",
)
def h683_bunraku_temperature_typo(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self, temperature: float) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.act1 = nn.ReLU()
            self.fc2 = nn.Linear(64, 32)
            self.act2 = nn.ReLU()
            self.head = nn.Linear(32, 10)
            self.temperature = temperature

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act2(self.fc2(self.act1(self.fc1(x))))
            return self.head(h) / self.temperature

    gen = seeded(6832)
    model = _Model(temperature=0.0005)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    fractions = []
    for _ in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        fractions.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        _plain_step(ctx, model, opt, loss, loss)
    late = sum(fractions[-30:]) / 30
    ctx.check("over 40% of rows' target probability exactly 1.0 in the last 30 steps", late > 0.4)
    ctx.check("collapsed share over 3x its start", late > 3 * max(fractions[0], 0.01))
    ctx.check("under 30% collapsed at the start", fractions[0] < 0.3)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="nunchaku_swing_catch_bce_classifier",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a nunchaku swing catch/drop BCE classifier (digits below 5 stand in for clean "
    "catches), SGD momentum 0.9 with 4-micro-batch accumulation; the positive-class weight "
    "warm-up table is indexed by the resumed step and at step 70 reads the entry written in "
    "percent (200 instead of 2.0): one step's loss is weighted 100x, its gradient spikes, "
    "the logged loss stays ordinary",
)
def h683_nunchaku_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(6833)
    model = _Net(64, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    data = digit_batches(gen, batch=64)
    accum = 4
    for step in range(140):
        weight = 200.0 if step == 70 else 2.0
        logged = 0.0
        for _ in range(accum):
            x, y = next(data)
            t = (y < 5).float()[:, None]
            loss = F.binary_cross_entropy_with_logits(model(x), t)
            (weight / 2.0 * loss / accum).backward()
            logged += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 70 over 30x the median before", g[70] > 30 * _median(g[40:70]))
    ctx.check("logged loss at step 70 ordinary", ls[70] < 3 * _median(ls[40:70]))
    ctx.check("loss finite", _finite(ls))
    ctx.check("loss fell before the spike", ls[69] < 0.7 * ls[0])


@scenario(
    family="kusarigama_chain_reach_log_feature_gaussian_nll_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=80,
    heldout=True,
    onset=80,
    note="a kusarigama chain-reach regressor with a Gaussian NLL head (mean and log-variance), "
    "RAdam; its first module takes log of the two load-cell channels with no clamp, and from "
    "step 80 one load cell reads exactly 0 (a slack chain reported as zero): log 0 = -inf in "
    "the log-feature layer, the loss is NaN at step 80",
)
def h683_kusarigama_log_zero(ctx: Context) -> None:
    class _LogFeat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)  # no clamp

    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logfeat = _LogFeat()
            self.body = _Net(8, 32, 2, nn.SiLU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.logfeat(x))

    gen = seeded(6834)
    model = _Model()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    data = _readings(gen)
    inf_at = None
    for step in range(140):
        x, y = next(data)
        x = x.clone()
        x[:, :2] = torch.exp(0.5 * x[:, :2])  # load cells: positive
        if step >= 80:
            x[:, 1] = 0.0
        with torch.no_grad():
            if inf_at is None and torch.isinf(model.logfeat(x)).any():
                inf_at = step
        out = model(x)
        mu, logvar = out[:, :1], out[:, 1:]
        loss = 0.5 * (logvar + (y - mu) ** 2 / logvar.exp()).mean()
        _plain_step(ctx, model, opt, loss, loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 80", _finite(ls[:80]))
    ctx.check("loss fell before the slack chain", ls[79] < ls[0] - 0.3)
    ctx.check("loss NaN at step 80", len(ls) == 81 and math.isnan(ls[80]))
    ctx.check("log-feature output first -inf at step 80", inf_at == 80)


@scenario(
    family="bojutsu_staff_strike_speed_deep_relu_regressor",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="a 10-layer ReLU regressor of bo-staff strike speed, SGD Nesterov; the init helper "
    "draws every Linear weight with a fixed std 0.5 (copied from a width-8 prototype) instead "
    "of sqrt(2/fan_in)=0.25 at width 32, so each layer doubles the signal and the gradient "
    "grows through depth towards the first layer; the loss blows up",
)
def h683_bojutsu_fixed_std_init(ctx: Context) -> None:
    class _Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sizes = [8] + [32] * 9 + [1]
            self.layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
            for lin in self.layers:
                nn.init.normal_(lin.weight, std=0.5)
                nn.init.zeros_(lin.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.acts = []
            for lin in self.layers[:-1]:
                x = F.relu(lin(x))
                if x.requires_grad:
                    x.retain_grad()
                self.acts.append(x)
            return self.layers[-1](x)

    gen = seeded(6835)
    model = _Deep()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratio0 = None
    for _ in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if ratio0 is None:
            ratio0 = float(model.acts[0].grad.norm() / model.acts[-1].grad.norm())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "gradient at layer 0's output over 30x that at the last hidden output, step 0", ratio0 > 30
    )
    ctx.check(
        "loss blew up (over 1e6x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1e6 * ls[0],
    )


@scenario(
    family="tessen_fan_parry_angle_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=3,
    note="a tessen iron-fan parry-angle tanh regressor, plain SGD under OneCycleLR; max_lr is "
    "typed 6.0 for 0.6, so the warm-up carries lr past 2/sharpness (measured by power "
    "iteration) at step 3 and the loss oscillates and blows up",
)
def h683_tessen_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(6836)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=6.0, total_steps=steps, pct_start=0.4)
    ctx.attach(model, opt)
    data = _readings(gen)
    probe = next(data)

    def sharpness() -> float:
        params = list(model.parameters())
        loss = F.mse_loss(model(probe[0]), probe[1])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            nv = math.sqrt(sum(float((t * t).sum()) for t in v))
            v = [t / nv for t in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
            v = [h.detach() for h in hv]
        return lam

    crossed = None
    for step in range(steps):
        x, y = next(data)
        lr = opt.param_groups[0]["lr"]
        if crossed is None and step < 40 and _finite(ctx.losses):
            if lr * sharpness() > 2.0:
                crossed = step
        loss = F.mse_loss(model(x), y)
        _plain_step(ctx, model, opt, loss, loss)
        sched.step()
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("lr x sharpness passed 2", crossed is not None)
    ctx.check("loss fell in the early warm-up", min(ls[:30]) < 0.7 * ls[0])
    ctx.check(
        "loss blew up (over 100x its start, or non-finite)",
        not _finite(ls) or max(ls) > 100 * ls[0],
    )


@scenario(
    family="jitte_hook_catch_force_relu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a jitte hook-catch force ReLU regressor, ASGD with clipping at max-norm 1, MSE; the shard read at step 90 was "
    "logged by a rig that records newtons instead of kilonewtons, so that one batch's targets "
    "are 1000x: the loss spikes by orders of magnitude for that step and the run recovers",
)
def h683_jitte_newton_shard(ctx: Context) -> None:
    gen = seeded(6837)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(180):
        x, y = next(data)
        if step == 90:
            y = y * 1000.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 1e4x the median before", ls[90] > 1e4 * _median(ls[70:90]))
    ctx.check("gradient at step 90 over 50x the median before", g[90] > 50 * _median(g[70:90]))
    ctx.check(
        "run recovers: last 20 median under 3x the pre-spike median",
        _median(ls[-20:]) < 3 * _median(ls[70:90]),
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="mokugyo_woodblock_ring_decay_sign_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a mokugyo woodblock ring-decay SiLU regressor, RMSprop with a hand-written decoupled "
    "weight decay applied after each step; the decay line was written p.mul_(1 + lr * wd) "
    "instead of 1 - lr * wd, so the weights inflate a little every step and the loss, after "
    "falling, climbs slowly with no other mechanism",
)
def h683_mokugyo_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(6838)
    model = _Net(8, 32, 1, nn.SiLU)
    lr, wd = 1e-3, 12.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.99)
    ctx.attach(model, opt)
    data = _readings(gen)
    norm0 = float(_flat(model).norm())
    for _ in range(240):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # sign flipped
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(ls)
    ctx.check("weight norm grew over 3x", float(_flat(model).norm()) > 3 * norm0)
    ctx.check("loss climbs past 5x its low by the end", _median(ls[-10:]) > 5 * low)
    ctx.check("low reached in the first half", ls.index(low) < len(ls) // 2)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="hyoshigi_clapper_cue_margin_relu_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a hyoshigi clapper-cue ReLU classifier (the digits stand in for cue spectrograms), "
    "NAdam; its margin loss mean(1 - (z_target - mean z_others)) lost its clamp(min=0) in a "
    "refactor, so the loss keeps rewarding a wider margin and the head's logits grow without "
    "bound while the loss falls below zero",
)
def h683_hyoshigi_margin_no_clamp(ctx: Context) -> None:
    gen = seeded(6839)
    model = _Net(64, 48, 10, nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    peaks = []
    for _ in range(200):
        x, y = next(data)
        ctx.targets(y)
        z = model(x)
        peaks.append(float(z.detach().abs().max()))
        zt = z.gather(1, y[:, None])[:, 0]
        others = (z.sum(1) - zt) / 9.0
        loss = (1.0 - (zt - others)).mean()  # clamp(min=0) dropped
        _plain_step(ctx, model, opt, loss, loss)
    ls = ctx.losses
    ctx.check("head logits grew over 20x", max(peaks[-10:]) > 20 * peaks[0])
    ctx.check("loss below -10 at the end", ls[-1] < -10)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="furoshiki_wrap_knot_tension_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a furoshiki wrap knot-tension GELU regressor, Adam (beta2 0.999); at step 60 the "
    "evaluation hook's smoothness penalty is added to the training loss with its weight typed "
    "1e5 for 1e-5, for that one step: one giant gradient fills Adam's second moment and the "
    "updates afterwards are over 10x smaller, the loss stalls",
)
def h683_furoshiki_penalty_weight_typo(ctx: Context) -> None:
    gen = seeded(6840)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    data = _readings(gen)
    updates = []
    for step in range(160):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        total = loss
        if step == 60:
            smooth = sum((p**2).sum() for p in model.parameters())
            total = loss + 1e5 * smooth
        before = _flat(model)
        _plain_step(ctx, model, opt, total, loss)
        updates.append(float((_flat(model) - before).norm()))
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 60 over 1e3x the median before", g[60] > 1e3 * _median(g[40:60]))
    ctx.check(
        "updates after step 70 over 10x smaller than before step 60",
        _median(updates[70:150]) < 0.1 * _median(updates[40:60]),
    )
    ctx.check("loss finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="chindon_street_band_beat_aux_ramp_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy but alarming: a chindon street-band beat-pattern ReLU classifier (the digits "
    "stand in for beat grids) with an auxiliary reconstruction decoder whose loss weight ramps "
    "linearly from 0 to 1 over the first half of the run (a common curriculum), AdamW; the logged total loss "
    "rises for a while as the ramp adds the auxiliary term faster than it falls, while the "
    "classification loss keeps falling",
)
def h683_chindon_aux_ramp(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(64, 48)
            self.act = nn.ReLU()
            self.head = nn.Linear(48, 10)
            self.dec = nn.Linear(48, 64)

        def forward(self, x: torch.Tensor):
            h = self.act(self.enc(x))
            return self.head(h), self.dec(h)

    gen = seeded(6841)
    model = _Model()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    steps, ramp = 200, 100
    mains = []
    for step in range(steps):
        x, y = next(data)
        ctx.targets(y)
        logits, recon = model(x)
        main = F.cross_entropy(logits, y)
        aux = F.mse_loss(recon, x, reduction="sum") / x.shape[0]
        w = min(1.0, step / ramp)
        total = main + w * aux
        mains.append(float(main.detach()))
        _plain_step(ctx, model, opt, total, total)
    ls = ctx.losses
    ctx.check(
        "total loss rose for a while (max after step 10 over 1.3x the min before)",
        max(ls[10:]) > 1.3 * min(ls[:10]),
    )
    ctx.check(
        "classification loss fell under 30% of its start", _median(mains[-10:]) < 0.3 * mains[0]
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="kabuki_mie_pose_label_smoothing_relu_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy: a kabuki mie-pose ReLU classifier (the digits stand in for pose frames), "
    "SGD Nesterov with two param groups (no weight decay on biases), linear warm-up then "
    "cosine decay, label smoothing 0.1, Gaussian input noise; trains normally",
)
def h683_kabuki_warmup_cosine(ctx: Context) -> None:
    gen = seeded(6842)
    model = _Net(64, 64, 10, nn.ReLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    steps, warm = 180, 20

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _ in range(steps):
        x, y = next(data)
        x = x + 0.1 * torch.randn(x.shape, generator=gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        _plain_step(ctx, model, opt, loss, loss)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell under 40% of its start", _median(ls[-10:]) < 0.4 * ls[0])
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="uchiwa_fan_draft_speed_fp16_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy: an uchiwa hand-fan draft-speed SiLU Huber regressor under fp16 autocast with "
    "a torch.amp.GradScaler, Adadelta, 2-micro-batch accumulation, clipping at max-norm 1 "
    "after unscaling, ReduceLROnPlateau on the logged loss, noisy targets; trains normally",
)
def h683_uchiwa_fp16_plateau(ctx: Context) -> None:
    gen = seeded(6843)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, batch=32, noise=0.15)
    for _ in range(150):
        logged = 0.0
        for _ in range(2):
            x, y = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), y, delta=0.5)
            scaler.scale(loss / 2).backward()
            logged += float(loss) / 2
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
        sched.step(logged)
    ls = ctx.losses
    ctx.check("loss fell under 50% of its start", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))
