"""Held-out set 658 (``h658_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face GraniteMoE-SWA causal LM built from a tiny config
(the brief's SarvamMoE ships only a config in this transformers, no model class)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
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


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _train(ctx, model, opt, batches, steps, loss_fn, classifier=False, before=None, alter=None):
    """A plain loop: records the gradient norm in ctx.grad_norms; stops after a NaN loss."""
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


def _tiny_granite_moe(vocab: int = 128):
    from transformers import GraniteMoeSWAConfig, GraniteMoeSWAForCausalLM

    config = GraniteMoeSWAConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=16,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GraniteMoeSWAForCausalLM(config)


class _Seq(nn.Module):
    """in -> hidden (act) -> hidden (act) -> out, with named layers."""

    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.mid = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act2(self.mid(self.act1(self.inp(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="granitemoe_swa_coracle_builder_tally_lm",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="a tiny GraniteMoE-SWA causal LM on coracle-builder tally bytes with hand-rolled label "
    "smoothing; the smoothing epsilon was written with the wrong sign (-0.5), so the soft target "
    "puts negative mass on every wrong token and the loss keeps rewarding pushing the head's "
    "logits apart without bound (weight decay 0)",
)
def h658_granite_coracle_smoothing_sign(ctx: Context) -> None:
    gen = seeded(6581)
    model = _tiny_granite_moe()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32)
    eps = -0.5  # sign bug: meant 0.5
    spread = []
    for _step in range(120):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        logp = F.log_softmax(logits.float(), -1).reshape(-1, 128)
        soft = torch.full_like(logp, eps / 128)
        soft.scatter_(1, y.reshape(-1, 1), 1 - eps + eps / 128)
        loss = -(soft * logp).sum(-1).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        spread.append(float(logits.detach().abs().max()))
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("head logits grew over 20x", spread[-1] > 20 * spread[0])
    ctx.check("logit growth kept going in the last quarter", spread[-1] > 1.5 * spread[-30])
    ctx.check("loss went below zero (unbounded objective)", ctx.losses[-1] < 0)


class _BrineRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 32, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _brine_batches(gen: torch.Generator, batch: int = 32, t: int = 40):
    while True:
        x = torch.randn(batch, t, 4, generator=gen)
        y = x[:, -8:, 0].mean(1, keepdim=True) + 0.3 * x[:, -3:, 1].mean(1, keepdim=True)
        yield x, y


@scenario(
    family="salt_harvester_brine_depth_orthogonal_gain_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="an Elman RNN reading 40 hourly brine-pan readings; the recurrent weights were "
    "initialised orthogonal with gain 3.0 (the init helper's gain argument was taken from the "
    "input-scaling config), so gradients grow through time and plain SGD blows up",
)
def h658_salt_harvester_rnn_gain(ctx: Context) -> None:
    gen = seeded(6582)
    model = _BrineRNN()
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    rnn_grads = []

    batches = _brine_batches(gen)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        rnn_grads.append(float(model.rnn.weight_hh_l0.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("recurrent gradient grew 10x", max(rnn_grads) > 10 * _median(rnn_grads[:10]))
    ctx.check(
        "loss blew up (non-finite or 100x its start)",
        (not _finite(ctx.losses)) or max(ctx.losses) > 100 * ctx.losses[0],
    )


@scenario(
    family="bellfounder_loam_mould_crack_param_group_adagrad_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("mid",),
    diverges=None,
    heldout=True,
    note="a loam-mould crack-width regressor with per-layer param groups read from a config; "
    "the middle layer's key was misspelt ('midle_lr'), the loader's default 0.0 was used and "
    "the layer never moves while the others train",
)
def h658_bellfounder_mid_group_typo(ctx: Context) -> None:
    gen = seeded(6583)
    model = _Seq(8, 48, 1, act=nn.SiLU)
    cfg = {"lr": 0.05, "midle_lr": 0.05}
    opt = torch.optim.Adagrad(
        [
            {"params": [*model.inp.parameters(), *model.out.parameters()], "lr": cfg["lr"]},
            {"params": model.mid.parameters(), "lr": cfg.get("mid_lr", 0.0)},
        ]
    )
    ctx.attach(model, opt)
    mid0 = model.mid.weight.detach().clone()
    inp0 = model.inp.weight.detach().clone()
    _train(ctx, model, opt, _readings(gen), 150, F.mse_loss)
    ctx.check("middle layer never moved", bool(torch.equal(model.mid.weight.detach(), mid0)))
    ctx.check("input layer moved", float((model.inp.weight.detach() - inp0).norm()) > 1e-2)
    ctx.check("loss still fell", _median(ctx.losses[-20:]) < 0.8 * _median(ctx.losses[:10]))


@scenario(
    family="pine_tar_kiln_pitch_yield_rmsprop_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a pitch-yield regressor for a pine-tar kiln; one shard came from a logger that "
    "wrote temperatures in millikelvin, so the batch at step 70 has readings 1000x the rest",
)
def h658_tar_kiln_millikelvin_shard(ctx: Context) -> None:
    gen = seeded(6584)
    model = _Seq(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0
        return x, y

    _train(ctx, model, opt, _readings(gen), 160, F.mse_loss, alter=alter)
    before = _median(ctx.grad_norms[50:70])
    ctx.check("gradient at the bad batch 20x the median", ctx.grad_norms[70] > 20 * before)
    ctx.check("run stayed finite", _finite(ctx.losses))


class _FogNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU())
        self.mean = nn.Linear(32, 1)
        self.var = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return torch.cat([self.mean(h), F.relu(self.var(h))], 1)  # missing clamp / softplus


@scenario(
    family="harbour_sea_smoke_fog_bank_depth_relu_variance_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var",),
    diverges="auto",
    heldout=True,
    note="a Gaussian-NLL forecaster of sea-smoke fog-bank depth whose variance head is a bare "
    "ReLU with no floor (the clamp to 1e-6 was dropped in a refactor); once a variance unit "
    "outputs exactly 0 the loss takes log(0) and the run goes NaN",
)
def h658_sea_smoke_var_log_zero(ctx: Context) -> None:
    gen = seeded(6585)
    model = _FogNet()
    with torch.no_grad():
        model.var.bias.fill_(0.2)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    zero_var = []

    def nll(out, y):
        mu, var = out[:, :1], out[:, 1:]
        zero_var.append(float((var == 0).float().mean()))
        return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()

    _train(ctx, model, opt, _readings(gen), 200, nll)
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("loss went non-finite", bad is not None)
    ctx.check("variance head output exact zeros", max(zero_var) > 0)


class _EnergyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.act = nn.GELU()
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.inp(x))) * 1000.0  # kJ -> J, inside autocast


@scenario(
    family="onager_throwing_arm_release_energy_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("out",),
    diverges="auto",
    heldout=True,
    note="an onager (torsion catapult) release-energy regressor trained under fp16 autocast "
    "with a GradScaler; the forward converts the head's kJ prediction to joules (x1000) "
    "inside autocast, so as the fp16 prediction climbs towards the targets (~9e4 J) it passes 65504 and overflows to inf, every step "
    "is skipped and the scale collapses",
)
def h658_onager_joules_fp16(ctx: Context) -> None:
    gen = seeded(6586)
    model = _EnergyNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=20)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    outs = []
    for _step in range(120):
        x, y = next(batches)
        y = 9e4 + 3e4 * y  # targets in joules
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        outs.append(float(out.detach().float().abs().max()))
        loss = F.huber_loss(out.float(), y, delta=1000.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("fp16 head output overflowed to inf", any(not math.isfinite(v) for v in outs))
    ctx.check("loss finite before the overflow", bad is not None and bad > 5)
    ctx.check("scaler scale collapsed 1000x", min(ctx.scales) < 1024.0 / 1000)


@scenario(
    family="sashiko_running_stitch_motif_temperature_adamax_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("out",),
    diverges=None,
    heldout=True,
    note="a sashiko stitch-motif classifier whose softmax temperature was read from a config "
    "in the wrong unit (0.001 where 1.0 was meant), so logits are divided by 0.001 and the "
    "softmax rounds to exactly one for most rows",
)
def h658_sashiko_temperature_unit(ctx: Context) -> None:
    gen = seeded(6587)
    model = _Seq(12, 48, 5)
    temperature = 0.001  # bug: meant 1.0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    fracs = []
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over a third of the rows saturate to exactly 1.0", _median(fracs[-20:]) > 0.33)
    ctx.check("saturation grew from the start", _median(fracs[-20:]) > fracs[0])


@scenario(
    family="shinty_caman_swing_outcome_negative_bias_relu_classifier",
    optimizer="SGD (momentum)",
    cause="loss_of_plasticity",
    where=("inp", "act1"),
    diverges=None,
    heldout=True,
    note="a shinty caman-swing outcome classifier whose first-layer biases were initialised "
    "with nn.init.constant_(b, -3.0) (a sign and scale typo for 0.03); most ReLUs are never "
    "positive and stay dead, so the net learns far less than it should",
)
def h658_shinty_dead_bias_init(ctx: Context) -> None:
    gen = seeded(6588)
    model = _Seq(12, 64, 5)
    nn.init.constant_(model.inp.bias, -3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    _train(ctx, model, opt, _labels(gen), 150, F.cross_entropy, classifier=True)
    x, y = next(_labels(seeded(6588), batch=512))
    with torch.no_grad():
        dead = dead_fraction(model.inp(x))
    ctx.check("over 60% of the first-layer ReLUs dead", dead > 0.6)
    ctx.check("loss stalled well above a healthy fit", _median(ctx.losses[-20:]) > 0.5)


@scenario(
    family="bog_snorkel_trench_lap_time_loss_weight_nesterov_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a bog-snorkelling lap-time regressor with a scheduled loss weight; the schedule's "
    "lookup returns 300 instead of 1.0 at the step where two phases meet (step 80), so one "
    "step's gradient bursts while the data are normal",
)
def h658_bog_snorkel_loss_weight_step(ctx: Context) -> None:
    gen = seeded(6589)
    model = _Seq(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        weight = 300.0 if step == 80 else 1.0  # phase-boundary bug
        (weight * loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient at step 80 is 50x the median",
        ctx.grad_norms[80] > 50 * _median(ctx.grad_norms[60:80]),
    )
    ctx.check("loss at step 80 was ordinary", ctx.losses[80] < 3 * _median(ctx.losses[60:80]))
    ctx.check("run stayed finite", _finite(ctx.losses))


def _top_hessian_eig(model: nn.Module, loss_fn, x, y, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="lava_skylight_glow_temperature_warmup_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=10,
    note="a lava-tube skylight glow-temperature regressor with linear warm-up over 60 steps; "
    "the peak learning rate was typed as 3.0 instead of 0.03, so past step ~10 the rate "
    "exceeds 2/sharpness and the loss oscillates and blows up",
)
def h658_lava_skylight_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(65810)
    model = _Seq(8, 32, 1, act=nn.Tanh)
    peak = 3.0  # typo: meant 0.03
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _readings(gen)
    probe = next(_readings(seeded(65810), batch=256))
    lrs, lam = [], None

    def before(step):
        lr = peak * min(1.0, (step + 1) / 60)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)

    for step in range(120):
        if step == 8:
            lam = _top_hessian_eig(model, F.mse_loss, *probe)
        x, y = next(batches)
        before(step)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("lr x sharpness passed 2 after onset", lam is not None and max(lrs) * lam > 2.0)
    ctx.check("loss had fallen before onset", _median(ctx.losses[5:10]) < ctx.losses[0])
    ctx.check(
        "loss blew up (non-finite or 100x its pre-onset level)",
        (not _finite(ctx.losses)) or max(ctx.losses[10:]) > 100 * _median(ctx.losses[5:10]),
    )


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="fungal_foray_species_logit_adjusted_long_tail_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a foray mushroom-species classifier on a long-tailed label set (priors from 0.6 down "
    "to 2e-4) trained with logit adjustment: log class priors are added to the logits, so the "
    "logits sit ~8 nats apart from the first step; OneCycleLR, healthy",
)
def h658_fungal_foray_logit_adjustment(ctx: Context) -> None:
    gen = seeded(65811)
    k = 8
    prior = torch.tensor([0.6, 0.2, 0.1, 0.05, 0.03, 0.015, 0.0048, 0.0002])
    log_prior = prior.log()
    w = torch.randn(12, k, generator=gen)
    model = _Seq(12, 48, k)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(model, opt)
    spread = []
    for _step in range(steps):
        y = torch.multinomial(prior, 64, replacement=True, generator=gen)
        x = torch.randn(64, 12, generator=gen) + 1.5 * w[:, y].T / w.norm(dim=0)[y, None]
        ctx.targets(y)
        logits = model(x) + log_prior
        spread.append(float((logits.detach().max(1).values - logits.detach().min(1).values).mean()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("logits far apart from the first step", spread[0] > 5.0)
    ctx.check("loss fell", _median(ctx.losses[-20:]) < 0.8 * _median(ctx.losses[:10]))
    ctx.check("run stayed finite", _finite(ctx.losses))


class _RosinConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(h.mean(-1))


def _rosin_batches(gen: torch.Generator, batch: int = 32, t: int = 48):
    while True:
        x = torch.randn(batch, 2, t, generator=gen)
        x[:, 0] = torch.cumsum(x[:, 0], -1) / math.sqrt(t)
        y = x[:, 0].abs().mean(-1, keepdim=True) + 0.1 * torch.randn(batch, 1, generator=gen)
        yield x, y


@scenario(
    family="nyckelharpa_bow_rosin_squeak_conv1d_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a nyckelharpa bow-squeak regressor on noisy 1-d traces: RAdam with linear warm-up "
    "then cosine decay, gradient clipping at 1.0 and a Huber loss; healthy",
)
def h658_nyckelharpa_radam_warmup_clip(ctx: Context) -> None:
    gen = seeded(65812)
    model = _RosinConv()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    steps = 140
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    ctx.attach(model, opt)
    batches = _rosin_batches(gen)
    for _step in range(steps):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _median(ctx.losses[-20:]) < 0.6 * _median(ctx.losses[:10]))
    ctx.check("run stayed finite", _finite(ctx.losses))


@scenario(
    family="reed_thatcher_spar_bundle_plateau_accum_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a thatcher's spar-bundle regressor on noisy batches (label noise 0.3): micro-batches "
    "of 16 accumulated 4 at a time, SGD with momentum and ReduceLROnPlateau on the running "
    "loss; healthy",
)
def h658_reed_thatcher_accum_plateau(ctx: Context) -> None:
    gen = seeded(65813)
    model = _Seq(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=16, noise=0.3)
    accum, running = 4, []
    for _step in range(120):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            micro = F.mse_loss(model(x), y) / accum
            micro.backward()
            total = total + micro.detach()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.as_tensor(total))
        opt.zero_grad(set_to_none=True)
        running.append(float(total))
        if len(running) % 10 == 0:
            sched.step(sum(running[-10:]) / 10)
    ctx.check("loss fell", _median(ctx.losses[-20:]) < 0.8 * _median(ctx.losses[:10]))
    ctx.check("run stayed finite", _finite(ctx.losses))
