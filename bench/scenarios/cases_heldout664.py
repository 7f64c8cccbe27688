"""Held-out set 664 (``h664_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face HYV4 causal LM built from a tiny config."""

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


def _smooth(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 2.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 10, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _med(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _Mlp(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _loop(ctx, model, opt, batches, steps, loss_fn, *, classifier=False, hook=None):
    """A plain loop; ``hook(step, x, y)`` may change the batch. Returns per-step grad norms."""
    norms = []
    for step in range(steps):
        x, y = next(batches)
        if hook is not None:
            x, y = hook(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    return norms


def _tiny_hyv4(vocab: int = 128):
    from transformers import HYV4Config, HYV4ForCausalLM

    config = HYV4Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=16,
        index_topk=32,
        index_head_dim=16,
        index_n_heads=2,
        hc_mult=2,
        max_position_embeddings=64,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return HYV4ForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="curling_stone_raw_logit_nll_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a curling-stone delivery (draw/guard/takeout/hit-and-roll) classifier whose loss is "
    "F.nll_loss on the raw head output: the log_softmax was left out when the model's final "
    "layer was changed, so the loss is -logit[target], unbounded below; the head's logits grow "
    "without limit while the loss runs ever more negative",
)
def h664_curling_delivery_raw_nll(ctx: Context) -> None:
    gen = seeded(6641)
    model = _Mlp(10, 32, 4, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    batches = _classes(gen)
    peaks: list[float] = []

    def loss_fn(out, y):
        peaks.append(float(out.detach().abs().max()))
        return F.nll_loss(out, y)  # bug: F.log_softmax(out, -1) missing

    _loop(ctx, model, opt, batches, 150, loss_fn, classifier=True)
    ls = ctx.losses
    ctx.check("head logits grew over 20x", _med(peaks[-10:]) > 20 * _med(peaks[:5]))
    ctx.check("loss below -10 and still falling", ls[-1] < -10 and ls[-1] < ls[-30] - 1)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="sextant_sun_sight_decay_sign_regressor",
    optimizer="SGD (Nesterov)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a sextant sun-sight altitude-correction regressor with hand-written decoupled weight "
    "decay applied after each step as p.add_(p, alpha=lr * wd) (the minus sign lost); every "
    "weight is inflated by 0.75% a step, the gradient cannot keep up and the loss climbs slowly",
)
def h664_sextant_decay_sign(ctx: Context) -> None:
    gen = seeded(6642)
    model = _Mlp(8, 32, 1)
    lr, wd = 5e-3, 1.5
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    norm0 = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    batches = _smooth(gen)
    for _step in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # bug: alpha=-lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    norm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    meds = [_med(ls[i : i + 10]) for i in range(0, 250, 10)]
    ctx.check("weight norm grew over 2x", norm > 2 * norm0)
    ctx.check("loss climbs over 5x its low", _med(ls[-10:]) > 5 * min(meds))
    ctx.check(
        "climb is slow: no 10-step median over 3x the one before",
        all(b < 3 * a for a, b in zip(meds, meds[1:], strict=False)),
    )


@scenario(
    family="bagpipe_chanter_reed_group_unit_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a bagpipe chanter-reed pitch regressor trained with per-layer param groups; the input "
    "layer's rate was entered as 1e-2 'in basis points' and divided by 1e4 by the loader, so fc1 "
    "trains at 1e-6 while the rest trains at 1e-2: its updates are ~1e-7 of its weights and it "
    "stays where it was initialised",
)
def h664_chanter_reed_group_units(ctx: Context) -> None:
    gen = seeded(6643)
    model = _Mlp(8, 32, 1, act=torch.tanh)
    cfg = {"lr": 1e-2, "fc1_lr_bp": 1e-2}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [
            {"params": rest, "lr": cfg["lr"]},
            {"params": model.fc1.parameters(), "lr": cfg["fc1_lr_bp"] / 1e4},  # unit bug
        ]
    )
    ctx.attach(model, opt)
    w0 = model.fc1.weight.detach().clone()
    ratios: list[float] = []
    batches = _smooth(gen)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        before = model.fc1.weight.detach().clone()
        opt.step()
        ratios.append(float((model.fc1.weight.detach() - before).norm() / before.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    rel = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
    ctx.check("fc1 per-step update ratio below 1e-5", max(ratios) < 1e-5)
    ctx.check("fc1 moved under 0.1% in the whole run", rel < 1e-3)
    ctx.check("the rest trained: loss fell 30%", _med(ls[-10:]) < 0.7 * _med(ls[:5]))


@scenario(
    family="geyser_eruption_interval_sqrt_spread_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("spread",),
    diverges=61,
    heldout=True,
    note="a geyser eruption-interval Gaussian NLL regressor whose spread head is "
    "sqrt(linear(h)) (the softplus was swapped for a sqrt 'to keep it positive'); as training "
    "sharpens the spread, one output crosses below zero at step 61, sqrt gives NaN and the loss is NaN",
)
def h664_geyser_sqrt_spread(ctx: Context) -> None:
    gen = seeded(6644)

    class GeyserNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mean = nn.Linear(32, 1)
            self.spread = nn.Linear(32, 1)
            nn.init.constant_(self.spread.bias, 1.0)
            with torch.no_grad():
                self.spread.weight.mul_(0.05)

        def forward(self, x):
            h = torch.tanh(self.fc1(x))
            self.pre = self.spread(h).detach()
            return self.mean(h), torch.sqrt(self.spread(h))  # bug: no softplus/clamp

    model = GeyserNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _smooth(gen, noise=0.02)
    first_nan = None
    for step in range(250):
        x, y = next(batches)
        mu, sd = model(x)
        loss = (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            first_nan = step
            break
    ls = ctx.losses
    ctx.check("loss went NaN", first_nan is not None)
    ctx.check("finite for the first 20 steps", _finite(ls[:20]))
    ctx.check("the NaN step's spread pre-activation is negative", float(model.pre.min()) < 0)


@scenario(
    family="hot_air_balloon_envelope_missing_code_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a hot-air balloon envelope-temperature regressor; one logger file in the shard at step "
    "90 writes a dropped reading as the missing-value code -9999 and the loader does not mask it, "
    "so one batch carries a few samples 10^4 off; the loss jumps, then the run recovers",
)
def h664_balloon_missing_code(ctx: Context) -> None:
    gen = seeded(6645)
    model = _Mlp(8, 32, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)

    def hook(step, x, y):
        if step == 90:
            y = y.clone()
            y[:3] = -9999.0
        return x, y

    norms = _loop(ctx, model, opt, _smooth(gen), 200, F.mse_loss, hook=hook)
    ls = ctx.losses
    ctx.check("loss at step 90 over 1000x the median before", ls[90] > 1000 * _med(ls[70:90]))
    ctx.check("gradient at step 90 over 50x the median before", norms[90] > 50 * _med(norms[70:90]))
    ctx.check("recovers: late loss under 5x pre-onset", _med(ls[-10:]) < 5 * _med(ls[70:90]))


@scenario(
    family="lacrosse_crease_aux_weight_reload_regressor",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a lacrosse crease-shot speed regressor with an auxiliary angle term; a config hot-reload "
    "at step 100 reads the aux weight '0.5' from a percent field as 50.0 for that one step, so the "
    "backpropagated loss (not the logged main loss) is ~100x and one gradient bursts",
)
def h664_lacrosse_aux_weight_reload(ctx: Context) -> None:
    gen = seeded(6646)
    model = _Mlp(8, 32, 2)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _smooth(gen)
    norms: list[float] = []
    for step in range(180):
        x, y = next(batches)
        out = model(x)
        main = F.mse_loss(out[:, :1], y)
        aux = F.mse_loss(out[:, 1:], torch.sin(y))
        w = 50.0 if step == 100 else 0.5  # bug: percent field read as a weight at the reload
        (main + w * aux).backward()
        norms.append(grad_norm(model))
        opt.step()
        ctx.step(main)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at step 100 over 30x the median before", norms[100] > 30 * _med(norms[80:100])
    )
    ctx.check("logged loss at 100 ordinary (under 3x)", ls[100] < 3 * _med(ls[80:100]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="glacier_calving_front_deep_tanh_gain_regressor",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="a glacier calving-front retreat regressor, a 12-layer tanh MLP initialised with "
    "xavier_normal_(gain=4.0) (the gain meant for the output scale was passed to every layer); "
    "the network sits in the chaotic regime and gradients grow through depth, the first layer's "
    "gradient tens of times the last hidden layer's",
)
def h664_glacier_deep_tanh_gain(ctx: Context) -> None:
    gen = seeded(6647)

    class CalvingNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for i in range(12):
                layers += [nn.Linear(8 if i == 0 else 32, 32), nn.Tanh()]
            layers.append(nn.Linear(32, 1))
            self.net = nn.Sequential(*layers)
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight, gain=4.0)  # bug: meant for the output only
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            return self.net(x)

    model = CalvingNet()
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _smooth(gen)
    ratios: list[float] = []
    first: list[float] = []
    for _step in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model.net[0].weight.grad.norm() / model.net[22].weight.grad.norm()))
        first.append(float(model.net[0].weight.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("first layer's gradient over 20x the last hidden layer's", _med(ratios[:10]) > 20)
    ctx.check("still over 10x late in the run", _med(ratios[-10:]) > 10)
    ctx.check("first layer's gradient norm over 50", _med(first[:10]) > 50)
    ctx.check("loss finite throughout", _finite(ls))


def _top_eig(model: nn.Module, loss: torch.Tensor, iters: int = 20) -> float:
    """Largest Hessian eigenvalue of ``loss`` by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
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
    family="snooker_cue_ball_onecycle_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=40,
    note="a snooker cue-ball screw-back distance regressor under OneCycleLR whose max_lr was typed "
    "as 2.0 instead of 2e-2; as the one-cycle warm-up climbs, lr x top Hessian eigenvalue passes "
    "2 by step 40 and the loss blows up within 15 steps, NaN at 71",
)
def h664_snooker_onecycle_typo(ctx: Context) -> None:
    gen = seeded(6648)
    model = _Mlp(8, 32, 1, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=600)  # typo: 2e-2
    ctx.attach(model, opt)
    batches = _smooth(gen)
    xs, ys = next(batches)
    lam0 = _top_eig(model, F.mse_loss(model(xs), ys))
    cross = None
    for step in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        if cross is None and step % 5 == 0:
            lam = _top_eig(model, F.mse_loss(model(xs), ys))
            if lr * lam > 2:
                cross = (step, lr * lam)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check(
        "lr x sharpness passed 2 by step 40 (probed every 5)", cross is not None and cross[0] <= 40
    )
    ctx.check("lr x sharpness under 2 at the start", 1e-3 * lam0 < 2)
    ctx.check("loss blew up over 100x its low", max(ls) > 100 * min(ls) or not _finite(ls))


@scenario(
    family="kendo_strike_target_temperature_typo_classifier",
    optimizer="SGD (momentum)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a kendo strike-target (men/kote/do/tsuki) classifier whose logits are divided by a "
    "temperature read as 0.01 (the config held 'tau: 1e-2' meant for a contrastive head, not "
    "the 1.0 intended); the softmax saturates and over half the rows hold a probability of exactly 1.0",
)
def h664_kendo_temperature_typo(ctx: Context) -> None:
    gen = seeded(6649)
    model = _Mlp(10, 32, 4, act=F.relu)
    tau = 1e-2  # typo: 1.0
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen)
    fracs: list[float] = []
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / tau
        p = torch.softmax(logits.detach(), -1)
        fracs.append(
            max(
                collapsed_fraction(logits.detach(), y),
                float((p.max(1).values == 1.0).float().mean()),
            )
        )
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the rows with a probability at exactly 1.0 late", _med(fracs[-10:]) > 0.5)
    ctx.check("under half at the start", fracs[0] < 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="tannery_vat_count_dying_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a tannery vat-stage classifier fed raw hide counts (all positive, in the tens, never "
    "standardised) with lr 0.1 copied from a normalised-input run; the first large updates push "
    "fc1's units negative on every input, they die and never come back, and the loss stalls",
)
def h664_tannery_dying_relu(ctx: Context) -> None:
    gen = seeded(6650)
    model = _Mlp(10, 32, 4, act=F.relu)
    opt = torch.optim.Adamax(model.parameters(), lr=0.1)
    ctx.attach(model, opt)
    base = _classes(gen)
    dead: list[float] = []

    def batches():
        while True:
            x, y = next(base)
            yield 20.0 + 8.0 * x.abs(), y  # raw counts, never standardised

    it = batches()
    for _step in range(150):
        x, y = next(it)
        ctx.targets(y)
        h = F.relu(model.fc1(x))
        dead.append(dead_fraction(h.detach()))
        loss = F.cross_entropy(model.head(F.relu(model.fc2(h))), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("under 30% of fc1 dead at the start", dead[0] < 0.3)
    ctx.check("over 80% of fc1 dead late", _med(dead[-10:]) > 0.8)
    ctx.check("loss stalls near chance (over 1.0)", _med(ls[-10:]) > 1.0)


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="hyv4_glassblower_gather_unlikelihood_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face HYV4 causal LM on glassblowers' gather-log bytes, trained with "
    "token-level unlikelihood (Welleck et al.): beside the likelihood, -log(1 - p) pushes down "
    "the probability of tokens already seen in the context (wrong candidates); the logged "
    "total sits well above the cross-entropy and falls more slowly, which looks alarming, but the model trains normally (linear warm-up, clipping 1.0); healthy",
)
def h664_hyv4_gather_unlikelihood(ctx: Context) -> None:
    gen = seeded(6651)
    model = _tiny_hyv4()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    ce_trace: list[float] = []
    ul_trace: list[float] = []
    for _step in range(60):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        logp = F.log_softmax(logits, -1)
        ce = F.nll_loss(logp.reshape(-1, 128), y.reshape(-1))
        # candidates: tokens of the context so far that are not the target
        onehot = F.one_hot(x, 128).bool()
        seen = onehot.cumsum(1) > 0
        seen &= ~F.one_hot(y, 128).bool()
        p = logp.exp().clamp(max=1 - 1e-6)
        ul = -(torch.log1p(-p) * seen).sum(-1).mean()
        loss = ce + 0.5 * ul
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        ce_trace.append(float(ce.detach()))
        ul_trace.append(float(ul.detach()))
    ls = ctx.losses
    ctx.check("cross-entropy fell 20%", _med(ce_trace[-10:]) < 0.8 * _med(ce_trace[:5]))
    ctx.check("total loss fell", _med(ls[-10:]) < _med(ls[:5]))
    ctx.check("logged total above the cross-entropy", _med(ls[-10:]) > _med(ce_trace[-10:]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="kayak_roll_phase_fp16_smoothing_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a sea-kayak roll-phase classifier (set-up/sweep/hip-snap/recovery) under fp16 autocast "
    "with a GradScaler, label smoothing 0.1, OneCycleLR, clipping 1.0 and noisy IMU readings; "
    "healthy",
)
def h664_kayak_roll_fp16(ctx: Context) -> None:
    gen = seeded(6652)
    model = _Mlp(10, 48, 4, act=F.gelu)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _classes(gen)
    for _step in range(150):
        x, y = next(batches)
        x = x + 0.1 * torch.randn(x.shape, generator=gen)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 50%", _med(ls[-10:]) < 0.5 * _med(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="tide_mill_sluice_gru_huber_accum_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tide-mill sluice-flow GRU regressor over 12 generated tide readings, Huber loss, "
    "2-micro-batch gradient accumulation, ReduceLROnPlateau, clipping 1.0; healthy",
)
def h664_tide_mill_gru(ctx: Context) -> None:
    gen = seeded(6653)

    class SluiceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(2, 24, batch_first=True)
            self.head = nn.Linear(24, 1)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out[:, -1])

    model = SluiceNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)

    def batch():
        phase = torch.rand(32, 1, generator=gen) * 6.28
        t = torch.arange(12.0)[None, :] * 0.5
        tide = torch.sin(t + phase) + 0.1 * torch.randn(32, 12, generator=gen)
        gate = torch.rand(32, 12, generator=gen)
        y = (tide[:, -3:].mean(1, keepdim=True) * gate[:, -1:]).clamp(min=-2)
        return torch.stack([tide, gate], -1), y

    for _step in range(120):
        total = 0.0
        for _ in range(2):
            x, y = batch()
            loss = F.huber_loss(model(x), y, delta=0.5) / 2
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 50%", _med(ls[-10:]) < 0.5 * _med(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))
