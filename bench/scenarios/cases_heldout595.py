"""Held-out set 595 (``h595_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: curling pebble-spray droplet classifier whose temperature in percent is divided by 100
(softmax_collapse, Adagrad); bell-founding loam-mould 12-deep ReLU MLP initialised with relu's
gain twice (exploding_gradients, SGD momentum); maple sap-run Gaussian-NLL net whose in-model
log(flow / reference) lost its epsilon (nonfinite, RAdam); damascus billet fold-weld regressor
under fp16 autocast fed blow energy in millijoules (amp_overflow, AdamW, GradScaler); lawn-bowls
green-speed classifier fed one shard of raw stopwatch ticks (data_outlier, NAdam, clipping);
dry-stone wall batter regressor with SGD lr typed 3.0 for 0.03 (sharpness_above_limit, plain
SGD); farrier shoe-nail pitch regressor whose fc1 group lr is typed 2e-9 (update_ratio_out_of_range,
Adamax, param groups); rowing-four blade-depth BCE classifier whose resumed step keeps a debug
loss scale of 256 (gradient_spike, SGD Nesterov, accumulation); geyser sinter-terrace regressor
whose hand-added L2 penalty has its sign flipped (loss_divergence, RMSprop); bookbinding
headband-tension classifier whose auxiliary loss weight is read as 1e5 for one step
(adam_second_moment_poisoned, Adam).
Controls: sea-shanty forebitter Hugging Face GPT-2 language model from a tiny config with a
4096-word vocabulary and a z-loss in the logged loss (alarming-looking, AdamW, warm-up + cosine,
clipping); sandcastle tower-slump Huber regressor (Adadelta, ReduceLROnPlateau, clipping,
Student-t noisy targets); orienteering control-leg classifier (ASGD, OneCycleLR, label
smoothing, accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded, text_bytes


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _loop(
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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, x, y) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- faults ---------------------------------------------------------------------------------------


class _SprayNet(_Net):
    def __init__(self, d_in, k, temperature):
        super().__init__(d_in, 48, k)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "curling_pebble_spray_droplet_temperature_classifier",
    "Adagrad",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the config gives the softmax temperature as 0.4 percent ('temperature_pct': 0.4) and "
    "the loader divides it by 100 as if it were a percentage of 1, so the logits are divided by "
    "0.004: the float32 softmax rounds most rows' target probability to exactly 1.0",
)
def h595_curling_pebble_spray_droplet_temperature_classifier(ctx):
    gen = seeded(5951)
    cfg = {"temperature_pct": 0.4}
    model = _SprayNet(18, 7, cfg["temperature_pct"] / 100.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    batches = _classes(gen, 64, 18, 7, 59511)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


class _DeepNet(nn.Sequential):
    def __init__(self, d_in, width, depth, gain):
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu")
            lin.weight.data.mul_(gain)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)


@scenario(
    "bell_founding_loam_mould_crack_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="12-deep ReLU MLP; the init helper applies kaiming_uniform_ with relu's gain and then "
    "multiplies by gain=calculate_gain('relu') again (sqrt 2 twice), so signals grow ~1.4x per "
    "layer: the backward signal at the first layer is far larger than at the last and SGD with "
    "momentum blows up",
)
def h595_bell_founding_loam_mould_crack_deep_relu_mlp(ctx):
    gen = seeded(5952)
    model = _DeepNet(10, 48, 12, nn.init.calculate_gain("relu"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = _readings(gen, 64, 10, 59521)
    x0, y0 = next(batches)
    outs = {}
    last = 2 * 11
    hooks = [
        model[i].register_forward_hook(lambda m, a, o, i=i: outs.update({i: o})) for i in (0, last)
    ]
    loss0 = F.mse_loss(model(x0).squeeze(-1), y0)
    for h in hooks:
        h.remove()
    g_first, g_last = torch.autograd.grad(loss0, [outs[0], outs[last]])
    ratio = float(g_first.norm() / (g_last.norm() + 1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, batches, 120, lambda o, y: F.mse_loss(o.squeeze(-1), y))
    ctx.check("backward signal at layer 0 over 20x the twelfth layer's at step 0", ratio > 20)
    ctx.check("the loss blows up", not _finite(losses) or max(losses) > 100 * _median(losses[:5]))


class _LogRatio(nn.Module):
    """log(sap flow / reference flow) of the first reading; the epsilon was dropped."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1] / 2.0), x[:, 1:]], 1)


class _SapNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.log_ratio = _LogRatio()
        self.fc1 = nn.Linear(d_in, 48)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(self.log_ratio(x))))))


def _gauss_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (logvar + (y - mean) ** 2 / logvar.exp())).mean()


@scenario(
    "maple_sap_run_freeze_thaw_log_ratio_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("log_ratio",),
    diverges=100,
    heldout=True,
    onset=100,
    note="the model takes log(sap flow / reference) of the tap-flow reading, with the '+ 1e-6' "
    "dropped in a cleanup; at step 100 a batch from a frozen night has taps reading exactly 0 "
    "flow, log 0 = -inf passes into fc1 and the Gaussian NLL is NaN",
)
def h595_maple_sap_run_freeze_thaw_log_ratio_gaussian_nll_net(ctx):
    gen = seeded(5953)
    model = _SapNet(9)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    base = _readings(gen, 64, 9, 59531, noise=0.1)
    seen = {}

    def alter(step, x, y):
        flow = 1.0 + 2.0 * torch.rand(len(x), 1, generator=gen)
        if step == 100:
            flow[:6] = 0.0
        return torch.cat([flow, x[:, 1:]], 1), y + 0.3 * torch.log1p(flow[:, 0])

    def hook(mod, inp, out):
        seen["inf"] = bool(torch.isinf(out).any())

    model.log_ratio.register_forward_hook(hook)
    losses, _ = _loop(ctx, model, opt, base, 200, _gauss_nll, alter=alter)
    ctx.check("trained and finite before step 100", _fell(losses[:100], ratio=0.9))
    ctx.check("the loss is NaN at step 100", len(losses) == 101 and math.isnan(losses[100]))
    ctx.check("log_ratio's output holds -inf", seen.get("inf", False))


@scenario(
    "damascus_billet_fold_weld_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=90,
    heldout=True,
    onset=90,
    note="fp16 autocast with a GradScaler; from step 90 the power-hammer logger reports blow "
    "energy in millijoules instead of kilojoules and the feature is not rescaled: fc1's fp16 "
    "output overflows to inf (it is finite in float32), the loss is NaN",
)
def h595_damascus_billet_fold_weld_fp16_gelu_regressor(ctx):
    gen = seeded(5954)
    model = _Net(11, 48, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 11, 59541)
    losses, seen = [], {}
    for step in range(170):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 2] = (x[:, 2] * 0.2 + 1.0) * 1e6  # kJ -> mJ
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        if step == 90:
            seen["fp16"] = bool(torch.isfinite(h).all())
            seen["fp32"] = bool(torch.isfinite(model.fc1(x.float())).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("trained and finite before step 90", _fell(losses[:90]))
    ctx.check("fc1's fp16 output is non-finite at 90", seen.get("fp16") is False)
    ctx.check("fc1's float32 output is finite at 90", seen.get("fp32") is True)
    ctx.check("the loss is non-finite at 90", len(losses) == 91 and not math.isfinite(losses[90]))


@scenario(
    "lawn_bowls_green_speed_shard_gelu_classifier",
    "NAdam",
    "data_outlier",
    heldout=True,
    onset=110,
    note="one shard of rink-sensor data was exported as raw 10-bit stopwatch ticks instead of "
    "seconds; its batch at step 110 is 512 + 300x the reading, the loss and gradient jump, "
    "clipping limits the update and the run recovers",
)
def h595_lawn_bowls_green_speed_shard_gelu_classifier(ctx):
    gen = seeded(5955)
    model = _Net(15, 48, 4, nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 15, 4, 59551)

    def alter(step, x, y):
        return (512.0 + 300.0 * x, y) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, batches, 210, F.cross_entropy, classifier=True, alter=alter, clip=1.0
    )
    pre = _mean(losses[90:110])
    ctx.check("the loss at 110 is over 20x the steps before", losses[110] > 20 * pre)
    ctx.check(
        "the gradient at 110 is over 10x the median", norms[110] > 10 * _median(norms[90:110])
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-20:]) < 2 * pre + 0.05)


@scenario(
    "dry_stone_wall_batter_lr_typo_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD with lr typed 3.0 for 0.03 in the sweep config; lr x top Hessian eigenvalue "
    "is past 2 from step 0 and the loss blows up",
)
def h595_dry_stone_wall_batter_lr_typo_tanh_regressor(ctx):
    gen = seeded(5956)
    model = _Net(13, 48, 1, nn.Tanh)
    lr = 3.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 13, 59561)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr x sharpness is past 2 at step 0", lr * eig > 2)
    ctx.check("the loss blows up", not _finite(losses) or max(losses) > 100 * losses[0])


@scenario(
    "farrier_shoe_nail_pitch_group_lr_silu_regressor",
    "Adamax",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="param groups: fc1's lr typed 2e-9 for 2e-3 in the fine-tuning config, so fc1 never "
    "moves while fc2 and the head train; the loss still falls, slowly",
)
def h595_farrier_shoe_nail_pitch_group_lr_silu_regressor(ctx):
    gen = seeded(5957)
    model = _Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=2e-3,
    )
    batches = _readings(gen, 64, 12, 59571)
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss)
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    head_move = float((_flat(model.head) - head_0).norm() / head_0.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", fc1_move < 1e-5)
    ctx.check("the head moved over 5% of its norm", head_move > 0.05)
    ctx.check("the loss falls and stays finite", _fell(losses, ratio=0.9))


@scenario(
    "rowing_four_blade_depth_accum_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    heldout=True,
    onset=140,
    note="4-micro-batch gradient accumulation; on the step resumed from a checkpoint at 140 the "
    "fp16 debug loss scale of 256 is still applied to the backward loss with no unscale, so "
    "that one step's gradient is ~256x; the logged loss is the ordinary mean; clipping keeps it "
    "in check",
)
def h595_rowing_four_blade_depth_accum_bce_classifier(ctx):
    gen = seeded(5958)
    g = torch.Generator().manual_seed(59581)
    w = torch.randn(10, generator=g)
    model = _Net(10, 40, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        scale = 256.0 if step == 140 else 1.0
        logged = 0.0
        for _ in range(4):
            x = torch.randn(32, 10, generator=gen)
            y = ((x @ w + 0.5 * torch.randn(32, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (scale * loss / 4).backward()
            logged += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    before = _median(norms[110:140])
    ctx.check("the gradient at step 140 is over 30x the median before", norms[140] > 30 * before)
    ctx.check("the logged loss at 140 is ordinary", losses[140] < 2 * _mean(losses[130:140]))
    ctx.check("the run trains and stays finite", _fell(losses))


@scenario(
    "geyser_sinter_terrace_decay_sign_tanh_regressor",
    "RMSprop",
    "loss_divergence",
    heldout=True,
    note="the L2 penalty is added to the loss by hand and a refactor flipped its sign "
    "(loss - wd * sum w^2), so every step pushes the weights outward; the weights grow, the fit "
    "degrades and the loss climbs slowly with no single jump; the logged loss is the MSE",
)
def h595_geyser_sinter_terrace_decay_sign_tanh_regressor(ctx):
    gen = seeded(5959)
    model = _Net(12, 48, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 12, 59591)
    w0 = float(_flat(model).norm())
    wd = 0.05

    def backprop(step, loss, x, y):
        return loss - wd * sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)

    losses, _ = _loop(ctx, model, opt, batches, 300, F.mse_loss, backprop=backprop)
    best = min(losses)
    jumps = max(losses[i + 1] / max(losses[i], 1e-8) for i in range(len(losses) - 1))
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("the loss climbs to over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no single-step jump over 3x", jumps < 3)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "bookbinding_headband_tension_aux_weight_gelu_classifier",
    "Adam",
    "adam_second_moment_poisoned",
    heldout=True,
    onset=60,
    note="the auxiliary thread-tension loss weight is read as 1e5 for step 60 (the config key "
    "for 'aux_weight_pct' read as a raw weight while the warm-restart hook reloads it): one "
    "gradient over 1000x fills Adam's second moment (beta2 0.999) and the updates afterwards "
    "shrink to a small fraction of before, the loss stalls",
)
def h595_bookbinding_headband_tension_aux_weight_gelu_classifier(ctx):
    gen = seeded(5960)
    model = _Net(16, 48, 6, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _classes(gen, 64, 16, 6, 59601, spread=0.8)
    ctx.attach(model, opt)
    losses, norms, moves = [], [], []
    for step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        out = model(x)
        loss = F.cross_entropy(out, y)
        aux_w = 1e5 if step == 60 else 0.01
        aux = (out.pow(2).mean() - 1.0).pow(2)
        (loss + aux_w * aux).backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        p0 = _flat(model)
        opt.step()
        moves.append(float((_flat(model) - p0).norm()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the gradient at 60 is over 1000x the median", norms[60] > 1000 * _median(norms[:60]))
    ctx.check(
        "updates from step 100 are under 5% of before",
        _mean(moves[100:]) < 0.05 * _mean(moves[30:60]),
    )
    ctx.check("the loss stalls after 80", _mean(losses[-20:]) > 0.9 * _mean(losses[80:100]))
    ctx.check("the loss stays finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


def _word_stream(vocab):
    """Word-level tokens of the standard-library text: the vocab-1 commonest words, 0 = unknown."""
    import re
    from collections import Counter

    words = re.findall(r"\w+|[^\w\s]", bytes(text_bytes().tolist()).decode("latin-1"))
    top = [w for w, _ in Counter(words).most_common(vocab - 1)]
    index = {w: i + 1 for i, w in enumerate(top)}
    return torch.tensor([index.get(w, 0) for w in words])


@scenario(
    "sea_shanty_forebitter_gpt2_zloss_language_model",
    "AdamW",
    "healthy",
    heldout=True,
    note="Hugging Face GPT-2 from a tiny config, word vocabulary of 4096 (tied input/output "
    "embeddings), AdamW with warm-up + cosine, clipping; the loss adds a z-loss of 1e-4 x "
    "logsumexp(logits)^2 and the logged loss includes it (alarming-looking control)",
)
def h595_sea_shanty_forebitter_gpt2_zloss_language_model(ctx):
    from transformers import GPT2Config, GPT2LMHeadModel

    gen = seeded(5961)
    vocab, length = 4096, 32
    data = _word_stream(vocab)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=length,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 100, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    losses, zs = [], []
    for _ in range(steps):
        start = torch.randint(0, len(data) - length - 1, (12,), generator=gen)
        win = data[start[:, None] + torch.arange(length + 1)]
        x, y = win[:, :-1], win[:, 1:]
        logits = model(input_ids=x).logits.reshape(-1, vocab)
        ce = F.cross_entropy(logits, y.reshape(-1))
        z = 1e-4 * torch.logsumexp(logits, -1).pow(2).mean()
        loss = ce + z
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        zs.append(float(z.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell and stays finite", _fell(losses))
    ctx.check("the z-loss term is active and finite", _finite(zs) and min(zs) > 0)


@scenario(
    "sandcastle_tower_slump_adadelta_huber_regressor",
    "Adadelta",
    "healthy",
    heldout=True,
    note="Huber regression of tower slump from moisture and grain readings with Student-t "
    "noisy targets; Adadelta, ReduceLROnPlateau, clipping (control)",
)
def h595_sandcastle_tower_slump_adadelta_huber_regressor(ctx):
    gen = seeded(5962)
    model = _Net(10, 48, 1, nn.ReLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 64, 10, 59621, noise=0.0)
    t = torch.distributions.StudentT(2.5)

    def alter(step, x, y):
        return x, y + 0.2 * t.sample((len(y),))

    losses, _ = _loop(
        ctx, model, opt, base, 200, F.huber_loss, alter=alter, clip=1.0, plateau=plateau
    )
    ctx.check("the loss fell and stays finite", _fell(losses, k=20))


@scenario(
    "orienteering_control_leg_asgd_smoothed_classifier",
    "ASGD",
    "healthy",
    heldout=True,
    note="route-choice classifier over control-leg features; ASGD with OneCycleLR (no momentum "
    "cycling), label smoothing 0.1, 2-micro-batch gradient accumulation, clipping (control)",
)
def h595_orienteering_control_leg_asgd_smoothed_classifier(ctx):
    gen = seeded(5963)
    model = _Net(14, 48, 5, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=50)
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.2, total_steps=steps, cycle_momentum=False
    )
    batches = _classes(gen, 32, 14, 5, 59631)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell and stays finite", _fell(losses))
