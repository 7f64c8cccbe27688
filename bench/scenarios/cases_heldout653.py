"""Held-out set 653 (``h653_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face ERNIE 4.5 MoE causal LM built from a tiny config."""

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
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


def _tiny_ernie(vocab: int = 128):
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    config = Ernie4_5_MoeConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        moe_k=2,
        moe_num_experts=4,
        moe_num_shared_experts=1,
        moe_layer_start_index=1,
        moe_layer_end_index=1,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
    )
    return Ernie4_5_MoeForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="ernie45_moe_falconer_jesses_log_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="a tiny ERNIE 4.5 MoE causal LM on falconry-log bytes, trained with per-module param "
    "groups read from a config; the attention group's key was misspelt ('atn_lr'), the loader's "
    "default of 0.0 was used, and every self_attn projection never moves while the rest trains",
)
def h653_ernie_falconer_attn_group_typo(ctx: Context) -> None:
    gen = seeded(6531)
    model = _tiny_ernie()
    cfg = {"base_lr": 3e-3, "atn_lr": 3e-3}  # typo: the loader looks up "attn_lr"
    attn = [p for n, p in model.named_parameters() if ".self_attn." in n]
    rest = [p for n, p in model.named_parameters() if ".self_attn." not in n]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": cfg["base_lr"]},
            {"params": attn, "lr": cfg.get("attn_lr", 0.0)},
        ],
        weight_decay=0.0,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in attn]
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
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(attn, before, strict=True))
    ctx.check("attention weights never moved (max change 0)", moved == 0.0)
    ctx.check("attention group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="farrier_hoof_angle_rawlogit_nll_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a farrier's hoof-angle class classifier whose loss was 'simplified' to "
    "-logits.gather(y).mean() (F.nll_loss on raw logits, the log_softmax forgotten); nothing "
    "bounds the target logit, and the head's logits grow without limit while the loss runs "
    "to minus infinity",
)
def h653_farrier_hoof_rawlogit_nll(ctx: Context) -> None:
    gen = seeded(6532)

    class HoofNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = HoofNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    batches = _labels(gen)
    peaks: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.nll_loss(logits, y)  # bug: log_softmax forgotten
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head logits grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("loss still falling at the end (unbounded)", ctx.losses[-1] < ctx.losses[-30] - 1)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="glassblower_gather_glow_logstd_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_sigma",),
    diverges=40,
    heldout=True,
    note="a glassblower's gather-temperature Gaussian NLL net; the spread head was meant to output "
    "log sigma but the loss takes torch.log(self.log_sigma(h)) as if it were sigma; once a "
    "spread output goes negative (step 40), log of a negative gives a NaN loss",
)
def h653_glassblower_gather_log_negative(ctx: Context) -> None:
    gen = seeded(6533)

    class GatherNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mu = nn.Linear(32, 1)
            self.log_sigma = nn.Linear(32, 1)
            nn.init.constant_(self.log_sigma.bias, 1.5)

        def forward(self, x: torch.Tensor):
            h = F.gelu(self.fc1(x))
            return self.mu(h), self.log_sigma(h)

    model = GatherNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.1)
    neg_at = None
    for step in range(200):
        x, y = next(batches)
        mu, s = model(x)
        if neg_at is None and bool((s < 0).any()):
            neg_at = step
        sigma_log = torch.log(s)  # bug: s already is log sigma
        loss = (sigma_log + 0.5 * ((y - mu) / s) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = 40
    ctx.check(
        f"loss first non-finite at step {bad}", len(ls) == bad + 1 and not math.isfinite(ls[bad])
    )
    ctx.check("a spread output went negative at the NaN step", neg_at is not None and neg_at == bad)
    ctx.check("loss finite before", _finite(ls[:bad]))


@scenario(
    family="ropewalk_strand_twist_huber_regressor",
    optimizer="SGD (Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="a ropewalk strand-twist Huber regressor; the shard read at step 90 came from a logger "
    "that wrote tension in newtons x 1000 (kN column mislabelled), one batch of readings 500x too "
    "large; clipping at 1.0 keeps the step bounded and the run recovers",
)
def h653_ropewalk_twist_bad_shard(ctx: Context) -> None:
    gen = seeded(6534)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(200):
        x, y = next(batches)
        if step == 90:
            x = x * 500.0  # the bad shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 20x the median before", ls[90] > 20 * _median(ls[60:90]))
    ctx.check("gradient at step 90 over 10x the median before", gs[90] > 10 * _median(gs[60:90]))
    ctx.check(
        "recovers: late loss within 3x of pre-onset", _median(ls[-20:]) < 3 * _median(ls[70:90])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="curling_stone_curl_distance_relu_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=70,
    heldout=True,
    note="a curling stone curl-distance regressor with an auxiliary smoothness term; the aux "
    "weight is warmed up by a schedule that at step 70 returns 1000 in place of 0.1 (a "
    "percent/ratio mix-up for one step); one gradient burst, clipped at 1.0, logged loss ordinary",
)
def h653_curling_aux_weight_burst(ctx: Context) -> None:
    gen = seeded(6535)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(180):
        x, y = next(batches)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        aux = (pred[1:] - pred[:-1]).pow(2).mean()
        w = 1000.0 if step == 70 else 0.1 * min(1.0, step / 50)
        (loss + w * aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 70 over 30x the median before", gs[70] > 30 * _median(gs[40:70]))
    ctx.check("logged loss at 70 ordinary (under 3x)", ls[70] < 3 * _median(ls[40:70]))
    ctx.check("finite and trained", _finite(ls) and _median(ls[-20:]) < _median(ls[:10]))


@scenario(
    family="bellfounder_strike_tone_deep_tanh_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="a bellfounder's strike-tone regressor, an 18-layer tanh MLP initialised with "
    "xavier_normal_(gain=3.0) (the gain for a different activation copied from a snippet); "
    "gradients grow backwards through depth, the first layer's over 10x the last hidden's; "
    "clipping at 1.0 keeps the run finite",
)
def h653_bellfounder_deep_tanh_gain(ctx: Context) -> None:
    gen = seeded(6536)
    layers: list[nn.Module] = [nn.Linear(8, 48), nn.Tanh()]
    for _ in range(16):
        layers += [nn.Linear(48, 48), nn.Tanh()]
    layers.append(nn.Linear(48, 1))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=3.0)
            nn.init.zeros_(m.bias)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios: list[float] = []
    for _step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        ratios.append(float(model[0].weight.grad.norm() / model[32].weight.grad.norm()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer gradient over 10x the last hidden's", _median(ratios[:20]) > 10)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="kite_line_sag_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a kite-line sag regressor; the lr warm-up target was written as 'lr: 8e-1' for 8e-2 "
    "(a typo in the yaml); as the warm-up ramps past 2/sharpness the loss oscillates and blows up",
)
def h653_kite_line_warmup_typo(ctx: Context) -> None:
    gen = seeded(6537)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.02)
    probe = next(batches)
    params = list(model.parameters())

    def sharpness() -> float:
        loss = F.mse_loss(model(probe[0]), probe[1])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(15):
            n = math.sqrt(sum(float((u * u).sum()) for u in v))
            v = [u / n for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [h.detach() for h in hv]
        return lam

    over = False
    for step in range(150):
        lr = 8e-1 * min(1.0, (step + 1) / 60)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0 and step <= 80 and lr * sharpness() > 2.0:
            over = True
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness over 2 during the warm-up", over)
    ctx.check("loss blew up over 100x its best", max(ls) > 100 * min(ls) or not _finite(ls))
    ctx.check("it trained first", min(ls[:40]) < 0.8 * ls[0])


@scenario(
    family="cooperage_stave_grade_dead_bias_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a cooper's stave-grade classifier; a helper meant for gate biases ran over every bias "
    "and set fc2's to -4; the fc2 ReLUs are dead from the first steps and never come back (lr 3e-2 "
    "cannot revive them), and the loss stays near chance",
)
def h653_cooperage_stave_dead_relu(ctx: Context) -> None:
    gen = seeded(6538)

    class StaveNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 5)
            nn.init.constant_(self.fc2.bias, -4.0)  # bug: the gate-bias init hit every layer

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(x)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.features(x)))

    model = StaveNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    batches = _labels(gen)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ls = ctx.losses
    ctx.check(f"over 70% of fc2 units dead at the end ({dead:.2f})", dead > 0.7)
    ctx.check("loss stuck above 0.5", _median(ls[-20:]) > 0.5)
    ctx.check("finite", _finite(ls))


@scenario(
    family="geyser_cone_splash_height_fp16_silu_regressor",
    optimizer="Rprop",
    cause="amp_overflow",
    where=(),
    diverges=60,
    onset=60,
    heldout=True,
    note="a geyser-cone splash-height regressor trained in fp16 autocast with a GradScaler; from "
    "step 60 the pressure feed switches from kPa to Pa (firmware update, no conversion), the "
    "first layer's fp16 activations overflow to inf, every step after is skipped by the scaler "
    "and the scale collapses",
)
def h653_geyser_splash_fp16_pascal(ctx: Context) -> None:
    gen = seeded(6539)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    inf_steps = 0
    for step in range(120):
        x, y = next(batches)
        if step >= 60:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e5  # kPa read as Pa
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        if not bool(torch.isfinite(out).all()):
            inf_steps += 1
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("fp16 outputs overflowed on most steps after 60", inf_steps > 40)
    ctx.check("loss finite before 60", _finite(ls[:60]))
    ctx.check("loss non-finite after 60", not math.isfinite(ls[61]))
    ctx.check(
        "scale collapsed under 1e-3 of its value at 60", ctx.scales[-1] < 1e-3 * ctx.scales[59]
    )


@scenario(
    family="snooker_cushion_rebound_permille_temperature_classifier",
    optimizer="ASGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a snooker cushion-rebound class classifier with a softmax temperature read from a config "
    "in per-mille (temperature: 5 meant 0.005 x 1000 = 5.0, used as 0.005); logits / 0.005 "
    "saturate the float32 softmax, over half the rows give the target exactly 1.0",
)
def h653_snooker_rebound_temperature(ctx: Context) -> None:
    gen = seeded(65310)

    class ReboundNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.head = nn.Linear(32, 5)
            self.temperature = 5 / 1000  # bug: meant 5.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc1(x))) / self.temperature

    model = ReboundNet()
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check(f"over half the rows at p = 1.0 ({frac:.2f})", frac > 0.5)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="lighthouse_beam_keeper_td_value_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a lighthouse-keeper's TD(0) value regressor on a random-walk chain with a target network "
    "synced every 50 steps (the DQN practice); the TD loss jumps at each sync because the targets "
    "move, which looks alarming, but the value error against the true values falls",
)
def h653_lighthouse_td_target_sync(ctx: Context) -> None:
    gen = seeded(65311)
    n, gamma = 16, 0.9
    feats = torch.randn(n, 8, generator=gen)
    reward = torch.randn(n, generator=gen)
    # random walk on a ring: left or right with probability 1/2
    p = torch.zeros(n, n)
    for s in range(n):
        p[s, (s - 1) % n] = 0.5
        p[s, (s + 1) % n] = 0.5
    v_true = torch.linalg.solve(torch.eye(n) - gamma * p, reward)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    target = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    target.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    errs: list[float] = []
    for step in range(250):
        if step > 0 and step % 50 == 0:
            target.load_state_dict(model.state_dict())
        s = torch.randint(0, n, (64,), generator=gen)
        s2 = (s + torch.where(torch.rand(64, generator=gen) < 0.5, -1, 1)) % n
        with torch.no_grad():
            y = reward[s][:, None] + gamma * target(feats[s2])
        loss = F.mse_loss(model(feats[s]), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            errs.append(float((model(feats).squeeze(1) - v_true).abs().mean()))
    ls = ctx.losses
    jumps = sum(ls[k] > 2 * _median(ls[k - 5 : k]) for k in (50, 100, 150))
    ctx.check("the TD loss jumps at syncs (2 of 3 over 2x)", jumps >= 2)
    ctx.check("value error fell by half", errs[-1] < 0.5 * errs[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="cider_press_pomace_yield_onecycle_gru_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a cider-press juice-yield GRU regressor over 10-step pressure traces, OneCycleLR, noisy "
    "readings, gradient clipping at 1.0: an ordinary run",
)
def h653_cider_press_gru_onecycle(ctx: Context) -> None:
    gen = seeded(65312)

    class PressGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 24, batch_first=True)
            self.head = nn.Linear(24, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(x)
            return self.head(out[:, -1])

    model = PressGRU()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    ctx.attach(model, opt)
    w = torch.randn(3, generator=gen)
    for _step in range(steps):
        x = torch.randn(32, 10, 3, generator=gen)
        y = torch.tanh((x @ w).cumsum(1)[:, -1:] / 3) + 0.1 * torch.randn(32, 1, generator=gen)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by half", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="bagpipe_chanter_reed_fp16_smoothed_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a bagpipe chanter-reed grade classifier in fp16 autocast with a GradScaler, label "
    "smoothing 0.1, two param groups (no decay on biases), 2-micro-batch accumulation, "
    "ReduceLROnPlateau and clipping: an ordinary run",
)
def h653_bagpipe_reed_fp16_accum(ctx: Context) -> None:
    gen = seeded(65313)

    class ReedNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    model = ReedNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adamax(
        [{"params": decay, "weight_decay": 1e-4}, {"params": nodecay, "weight_decay": 0.0}],
        lr=4e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _labels(gen, batch=32)
    for _step in range(120):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            scaler.scale(loss / 2).backward()
            total += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by 40%", _median(ls[-20:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))
