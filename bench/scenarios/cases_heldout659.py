"""Held-out set 659 (``h659_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Param2 MoE causal LM built from a tiny config."""

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
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _traces(gen: torch.Generator, length: int = 24, batch: int = 32, noise: float = 0.1):
    """Endless (x, y) batches of noisy 2-channel traces; y is a fixed weighted sum of their mean."""
    while True:
        base = torch.randn(batch, 1, 2, generator=gen)
        x = base + noise * torch.randn(batch, length, 2, generator=gen)
        y = (0.7 * x[..., 0] - 0.4 * x[..., 1]).mean(1, keepdim=True)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _train(
    ctx, model, opt, batches, steps, loss_fn, classifier=False, before=None, alter=None, clip=None
):
    """A plain loop: records the pre-clip gradient norm in ctx.grad_norms."""
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
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act=nn.ReLU) -> None:
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


def _tiny_param2(vocab: int = 128):
    from transformers import AutoModelForCausalLM, Param2MoeConfig

    config = Param2MoeConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        max_position_embeddings=64,
        use_cache=False,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="param2_moe_dry_stone_waller_log_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.1.mlp",),
    diverges=None,
    heldout=True,
    note="a tiny Param2 MoE causal LM (Param2MoeConfig) on dry-stone walling log bytes, trained "
    "with per-module param groups read from a config; the MoE group's key was written "
    "'expert_lr' while the loader reads 'moe_lr' with a default of 0.0, so the whole MoE block "
    "(router, experts, shared experts) never moves while the rest trains",
)
def h659_param2_waller_moe_group_typo(ctx: Context) -> None:
    gen = seeded(6591)
    model = _tiny_param2()
    cfg = {"base_lr": 3e-3, "expert_lr": 3e-3}  # the loader looks up "moe_lr"
    moe = [p for n, p in model.named_parameters() if n.startswith("model.layers.1.mlp.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.layers.1.mlp.")]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": cfg["base_lr"]},
            {"params": moe, "lr": cfg.get("moe_lr", 0.0)},
        ],
        weight_decay=0.0,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in moe]
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(80):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(moe, before, strict=True))
    ctx.check("MoE block weights never moved (max change 0)", moved == 0.0)
    ctx.check("MoE group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


class _TempClassifier(_Net):
    def __init__(self, temperature: float) -> None:
        super().__init__(12, 48, 5)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="bocce_jack_roll_temperature_classifier",
    optimizer="SGD(momentum)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bocce jack-roll outcome classifier with a softmax temperature; the config gave the "
    "inverse temperature (scale 2000) in the 'temperature' field, so logits are divided by "
    "0.0005 and most rows' softmax rounds to exactly 1.0 within a few steps",
)
def h659_bocce_temperature_inverse(ctx: Context) -> None:
    gen = seeded(6592)
    model = _TempClassifier(temperature=1 / 2000)
    opt = torch.optim.SGD(model.parameters(), lr=2e-5, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen)
    _train(ctx, model, opt, batches, 120, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
        frac = collapsed_fraction(logits, logits.argmax(1))
    ctx.check("over half the rows have a softmax probability == 1.0 exactly", frac > 0.5)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="pearl_diver_breath_hold_dead_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a pearl-diver breath-hold class classifier whose init helper, copied from a "
    "sparse-coding model, sets every fc2 bias to -6; fc2's ReLUs are never positive, fc2 and "
    "fc1 get no gradient and the loss stays near chance",
)
def h659_pearl_diver_dead_fc2(ctx: Context) -> None:
    gen = seeded(6593)
    model = _Net(12, 48, 5)
    nn.init.constant_(model.fc2.bias, -6.0)  # the copied sparse-coding init
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
    ctx.check("over 90% of fc2 units dead at the end", dead > 0.9)
    ctx.check("loss stays near chance (> 0.8 ln 5)", _median(ctx.losses[-10:]) > 0.8 * math.log(5))


class _IRNN(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    family="sundial_gnomon_irnn_shadow_regressor",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a sundial gnomon shadow-length IRNN over 24-step traces; the identity recurrent init "
    "was scaled by 1.35 (a gain meant for the input weights), the hidden state and the "
    "gradient grow through time; clipping keeps the run alive but training is wrecked",
)
def h659_sundial_irnn_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6594)
    model = _IRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.35 * torch.eye(32))
        model.rnn.bias_hh_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _traces(gen)
    rnn_grads, head_grads = [], []
    with torch.no_grad():
        out0, _ = model.rnn(next(_traces(seeded(6594)))[0])
        growth = float(out0[:, -1].norm() / out0[:, 0].norm().clamp_min(1e-12))

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    for _step in range(100):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        rnn_grads.append(float(model.rnn.weight_hh_l0.grad.norm()))
        head_grads.append(float(model.head.weight.grad.norm()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("first-step gradient norm over 1e3", ctx.grad_norms[0] > 1e3)
    ctx.check("hidden state grew over 100x through time at init", growth > 100)
    ctx.check(
        "recurrent weight gradient over the head's",
        _median(rnn_grads[:10]) > _median(head_grads[:10]),
    )


@scenario(
    family="hop_kiln_moisture_shard_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a hop-kiln cone-moisture regressor; one shard at step 80 was exported with the target "
    "in grams per kilogram instead of a fraction (x 1000); the loss jumps, then the run recovers",
)
def h659_hop_kiln_gram_shard(ctx: Context) -> None:
    gen = seeded(6595)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 80 else (x, y)

    _train(ctx, model, opt, _readings(gen), 200, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss over 50x the pre-onset median at step 80", ls[80] > 50 * _median(ls[60:80]))
    ctx.check(
        "gradient over 10x at step 80", ctx.grad_norms[80] > 10 * _median(ctx.grad_norms[60:80])
    )
    ctx.check(
        "the run recovers (last 10 under 3x pre-onset)", _median(ls[-10:]) < 3 * _median(ls[60:80])
    )


@scenario(
    family="bobsleigh_push_split_aux_weight_regressor",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a bobsleigh push-split regressor with an auxiliary loss whose weight is read from a "
    "schedule; at step 70 the schedule returned 300 (a percentage) instead of 3.0 for one step, "
    "so one backward pass is 100x; the logged loss is ordinary and clipping keeps the run alive",
)
def h659_bobsleigh_aux_weight_step(ctx: Context) -> None:
    gen = seeded(6596)
    model = _Net(8, 48, 1, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(160):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        aux_w = 300.0 if step == 70 else 3.0
        total = loss + aux_w * F.mse_loss(out, y)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient over 30x at step 70", g[70] > 30 * _median(g[50:70]))
    ctx.check("logged loss ordinary at step 70", ctx.losses[70] < 3 * _median(ctx.losses[50:70]))
    ctx.check("loss finite", _finite(ctx.losses))


class _MeanVar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.mean_head = nn.Linear(48, 1)
        self.var_head = nn.Linear(48, 1)
        with torch.no_grad():
            self.var_head.weight.mul_(0.1)
            self.var_head.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean_head(h), self.var_head(h)  # variance used raw: the softplus was dropped


@scenario(
    family="salt_pan_brine_density_gaussian_nll_net",
    optimizer="ASGD",
    cause="nonfinite",
    where=("var_head",),
    diverges=47,
    heldout=True,
    note="a salt-pan brine-density Gaussian NLL net; a refactor dropped the softplus on the "
    "variance head (no clamp), the NLL pulls the variance towards the small residuals, the raw "
    "output crosses zero and log of a negative variance makes the loss NaN",
)
def h659_salt_pan_raw_variance(ctx: Context) -> None:
    gen = seeded(6597)
    model = _MeanVar()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    batches = _readings(gen)
    nan_step, min_var = None, float("inf")
    for step in range(200):
        x, y = next(batches)
        mu, var = model(x)
        loss = 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            nan_step, min_var = step, float(var.detach().min())
            break
    ctx.check("loss is NaN", nan_step is not None and math.isnan(ctx.losses[-1]))
    ctx.check("a variance was <= 0 at the NaN step", min_var <= 0.0)
    ctx.check("finite before the NaN step", _finite(ctx.losses[:-1]))


@scenario(
    family="didgeridoo_drone_loudness_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=(),
    diverges=50,
    heldout=True,
    onset=50,
    note="a didgeridoo drone-loudness regressor trained under fp16 autocast with a GradScaler; "
    "from step 50 the sound-pressure channel arrives in micropascals instead of pascals "
    "(x 1e6), the fp16 forward overflows to inf, every step is skipped and the scale collapses",
)
def h659_didgeridoo_micropascal_fp16(ctx: Context) -> None:
    gen = seeded(6598)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    inf_steps = 0
    for step in range(110):
        x, y = next(batches)
        if step >= 50:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e6  # micropascals
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step >= 50 and not math.isfinite(float(loss.detach())):
            inf_steps += 1
    ls = ctx.losses
    ctx.check("finite before step 50", _finite(ls[:50]))
    ctx.check("loss non-finite at every step from 50", inf_steps == 60)
    ctx.check("scale fell over 1000x after onset", ctx.scales[-1] < ctx.scales[49] / 1000)


def _top_eig(model: nn.Module, loss: torch.Tensor, iters: int = 30) -> float:
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="hailstone_diameter_lr_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a hailstone-diameter regressor trained with plain SGD; the config's lr was typed "
    "1.5 for 0.015, lr x sharpness is well over 2 and the loss blows up within a few steps",
)
def h659_hailstone_lr_typo(ctx: Context) -> None:
    gen = seeded(6599)
    model = _Net(8, 64, 1, act=nn.Tanh)
    batches = _readings(gen, noise=0.02)
    x0, y0 = next(batches)
    lam = _top_eig(model, F.mse_loss(model(x0), y0))
    lr = 1.5  # typed for 0.015
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    _train(ctx, model, opt, batches, 80, F.mse_loss)
    ls = ctx.losses
    ctx.check("lr x top Hessian eigenvalue at init over 2", lr * lam > 2.0)
    ctx.check("loss blew up over 100x its start", max(ls) > 100 * ls[0] or not _finite(ls))


@scenario(
    family="thatch_reed_bundle_decay_sign_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a thatching reed-bundle density regressor with hand-written decoupled weight decay; "
    "the sign is flipped (p *= 1 + lr*wd), the weights grow every step and the loss climbs "
    "slowly after a normal start",
)
def h659_thatch_decay_sign(ctx: Context) -> None:
    gen = seeded(65910)
    model = _Net(8, 48, 1, act=nn.Tanh)
    lr, wd = 0.05, 0.15
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # sign bug: should be 1 - lr * wd

    _train(ctx, model, opt, _readings(gen), 250, F.mse_loss, before=before)
    ls = ctx.losses
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ctx.check("loss at the end over 3x its minimum", _median(ls[-10:]) > 3 * min(ls))
    ctx.check("weight norm grew over 5x", w1 > 5 * w0)
    ctx.check("loss finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


def _focal(logits: torch.Tensor, y: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


@scenario(
    family="tenpin_lane_oil_focal_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tenpin lane-oil pattern classifier trained with focal loss gamma 5: the loss reads "
    "tiny within a few dozen steps and the gradient norm swings across batches (a few hard rows "
    "dominate), which looks alarming; accuracy keeps rising and nothing is wrong",
)
def h659_tenpin_focal_gamma5(ctx: Context) -> None:
    gen = seeded(65911)
    model = _Net(12, 64, 5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _labels(gen)
    _train(ctx, model, opt, batches, 250, _focal, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ls, g = ctx.losses, ctx.grad_norms
    late = torch.tensor(g[-50:])
    ctx.check("trained: loss fell over 5x", _median(ls[-10:]) < _median(ls[:5]) / 5)
    ctx.check("loss reads tiny (< 0.02)", _median(ls[-10:]) < 0.02)
    ctx.check("accuracy over 0.85", acc > 0.85)
    cv = float(late.std() / late.mean())
    ctx.check("late gradient norm uneven across batches (CV over 0.3)", cv > 0.3)
    ctx.check("finite", _finite(ls))


class _GRUReg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


@scenario(
    family="glacier_calving_onecycle_gru_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a glacier-calving front-retreat GRU regressor on noisy traces, OneCycleLR, gradient "
    "clipping at 1.0: an ordinary run",
)
def h659_glacier_gru_onecycle(ctx: Context) -> None:
    gen = seeded(65912)
    model = _GRUReg()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    ctx.attach(model, opt)
    batches = _traces(gen, noise=0.3)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("trained: loss fell over 50%", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="chainsaw_carving_warmup_accum_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a chainsaw-carving cut-depth Huber regressor: two param groups (head at half rate), "
    "linear warm-up then cosine decay, 4-micro-batch gradient accumulation, clipping at 1.0, "
    "noisy readings: an ordinary run",
)
def h659_chainsaw_warmup_accum(ctx: Context) -> None:
    gen = seeded(65913)
    model = _Net(8, 48, 1, act=nn.SiLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adadelta(
        [{"params": body, "lr": 1.0}, {"params": model.head.parameters(), "lr": 0.5}]
    )
    base = [g["lr"] for g in opt.param_groups]
    ctx.attach(model, opt)
    batches = _readings(gen, batch=16, noise=0.2)
    steps, warm, accum = 120, 15, 4
    for step in range(steps):
        f = (
            (step + 1) / warm
            if step < warm
            else 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
        )
        for g, b in zip(opt.param_groups, base, strict=True):
            g["lr"] = b * max(f, 0.05)
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5) / accum
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.as_tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("trained: loss fell over 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("finite", _finite(ls))
