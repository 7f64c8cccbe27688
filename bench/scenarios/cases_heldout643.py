"""Held-out set 643 (``h643_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data (and scikit-learn's bundled digits)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digit_batches, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class GeluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.mid(F.gelu(self.inp(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="saltpeter_cave_leaching_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("inp",),
    diverges=100,
    onset=100,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 100 a new cave logger writes the leach-vat "
    "conductivity in microsiemens instead of siemens (a unit constant dropped in the reader), "
    "inp's fp16 output overflows to inf and the loss is non-finite",
)
def h643_saltpeter_leach_fp16_microsiemens(ctx: Context) -> None:
    gen = seeded(6431)
    model = GeluNet(8, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.inp.register_forward_hook(lambda m, i, o: seen.__setitem__("inp", o.detach()))
    onset = 100
    for step in range(150):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1e6 + 2.5e6  # microsiemens
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("inp fp16 output non-finite at onset", not bool(seen["inp"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.inp(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


@scenario(
    family="cooper_cask_stave_bevel_decay_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-written weight-decay step applied as p += lr * wd * p instead of p -= (a sign "
    "flipped when decoupled decay was hand-rolled after optimizer.step()): the weights grow "
    "exponentially, tanh units saturate and the bevel-angle loss climbs slowly after a first fall",
)
def h643_cooper_stave_decay_sign(ctx: Context) -> None:
    gen = seeded(6432)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    lr, wd = 0.05, 0.25
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _regression(gen)
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.add_(p, alpha=lr * wd)  # bug: should be -lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    low = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 6]))
    ctx.check("weight norm grew over 3x", w1 > 3 * w0)
    ctx.check(
        "loss of the last 20 over 3x its running minimum",
        _median(ls[-20:]) > 3 * _median(ls[max(0, low - 5) : low + 6]),
    )
    ctx.check("the minimum comes after the start (a first fall)", low > 5)
    ctx.check("finite", _finite(ls))


@scenario(
    family="hammered_dulcimer_damper_felt_sentinel_huber_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="one bad shard at step 130: a string-tension gauge wrote 65535 (a saturated uint16 "
    "reading) into every row of one column; Huber loss, clipping at 1.0, the run spikes and "
    "recovers",
)
def h643_dulcimer_damper_uint16_shard(ctx: Context) -> None:
    gen = seeded(6433)
    model = GeluNet(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 130
    for step in range(230):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, 6] = 65535.0  # saturated gauge
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at onset over 20x the 10 before", ls[onset] > 20 * _median(ls[onset - 10 : onset])
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
    family="gourd_pyrography_char_depth_group_typo_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("mid",),
    diverges=None,
    heldout=True,
    note="three param groups (layer-wise rates); the middle layer's lr was typed 2e-9 for 2e-3 "
    "(an exponent slip in the YAML), so mid never moves while inp and out train",
)
def h643_gourd_char_mid_group_typo(ctx: Context) -> None:
    gen = seeded(6434)
    model = GeluNet(8, 32)
    opt = torch.optim.Adamax(
        [
            {"params": model.inp.parameters(), "lr": 2e-3},
            {"params": model.mid.parameters(), "lr": 2e-9},  # typo: 2e-3
            {"params": model.out.parameters(), "lr": 2e-3},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    wm = model.mid.weight.detach().clone()
    wi = model.inp.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    relm = float((model.mid.weight.detach() - wm).norm() / wm.norm())
    reli = float((model.inp.weight.detach() - wi).norm() / wi.norm())
    ctx.check("mid moved under 1e-5 relative", relm < 1e-5)
    ctx.check("inp moved over 1e-2 relative", reli > 1e-2)
    ctx.check("loss fell", _median(ctx.losses[-20:]) < _median(ctx.losses[:20]))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="fulgurite_branch_length_gain_elman_rnn",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="a hand-written Elman cell reading 36 samples of a lightning-current trace; the "
    "recurrent matrix initialised xavier_normal_ with gain 4.0 (the tanh gain 5/3 was meant, a "
    "config value off by a factor): the gradient grows backwards through time, the first step's "
    "hidden-state gradient over 10x the last's; clipping at 2.0 keeps the run finite",
)
def h643_fulgurite_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6435)

    class Elman(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.RNNCell(2, 24, nonlinearity="tanh")
            self.head = nn.Linear(24, 1)
            nn.init.xavier_normal_(self.cell.weight_hh, gain=4.0)  # meant 5/3

        def forward(self, seq: torch.Tensor, keep: list | None = None) -> torch.Tensor:
            h = torch.zeros(seq.shape[0], 24)
            for t in range(seq.shape[1]):
                h = self.cell(seq[:, t], h)
                if keep is not None:
                    h.retain_grad()
                    keep.append(h)
            return self.head(h)

    model = Elman()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    ctx.attach(model, opt)
    ratios = []
    for _ in range(80):
        amp = torch.rand(32, 1, generator=gen) + 0.5
        t = torch.arange(36).float()[None, :]
        s = amp * torch.exp(-0.1 * t) + 0.05 * torch.randn(32, 36, generator=gen)
        seq = torch.stack([s, torch.ones_like(s) * 0.1], -1)
        y = amp.log()
        keep: list = []
        loss = F.mse_loss(model(seq, keep), y)
        loss.backward()
        ratios.append(float(keep[0].grad.norm() / keep[-1].grad.norm().clamp_min(1e-12)))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 2.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first hidden-state gradient over 10x the last's (median)", _median(ratios) > 10)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="soap_kettle_saponification_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("sigma",),
    diverges=81,
    onset=81,
    heldout=True,
    note="a Gaussian NLL whose sigma head predicts a variance and takes torch.sqrt of it with no "
    "softplus or clamp (dropped when the head was switched from log-variance); as the lye-"
    "concentration noise is learned the predicted variance is driven toward 0, overshoots "
    "below 0 at step 81 and sqrt of a negative gives a NaN loss",
)
def h643_soap_kettle_sqrt_variance(ctx: Context) -> None:
    gen = seeded(6436)

    class NLLNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(8, 32)
            self.mu = nn.Linear(32, 1)
            self.sigma = nn.Linear(32, 1)
            nn.init.normal_(self.sigma.weight, std=0.01)
            nn.init.constant_(self.sigma.bias, 0.3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.tanh(self.body(x))
            # bug: the head predicts a variance and takes its sqrt with no softplus/clamp
            return self.mu(h), torch.sqrt(self.sigma(h))

    model = NLLNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.02)
    neg_at = None
    for step in range(200):
        x, y = next(batches)
        mu, sd = model(x)
        with torch.no_grad():
            if neg_at is None and bool((model.sigma(torch.tanh(model.body(x))) < 0).any()):
                neg_at = step
        loss = (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("a negative variance in the run", neg_at is not None)
    ctx.check("loss first non-finite at step 81", len(ls) == 82 and not math.isfinite(ls[81]))
    ctx.check("negative variance at or before the NaN", neg_at is not None and neg_at <= 81)
    ctx.check("loss finite and falling before", _finite(ls[:81]) and ls[80] < ls[0])


@scenario(
    family="pigeon_racing_basket_toss_sum_reduction_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="gradient accumulation over 3 micro-batches with an auxiliary loss weight read from a "
    "schedule; at step 120 the schedule's lookup returns the raw percentage 100 for 1.0 (a units "
    "bug for one step), so the backpropagated loss is 100x: one gradient burst over 50x, the "
    "logged loss is ordinary, clipping at 1.0 saves the run",
)
def h643_pigeon_basket_weight_percent(ctx: Context) -> None:
    gen = seeded(6437)
    model = nn.Sequential()
    model.fc1 = nn.Linear(12, 40)
    model.act = nn.ReLU()
    model.head = nn.Linear(40, 5)
    opt = torch.optim.SGD(model.parameters(), lr=4e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen, 12, 5, batch=32)
    onset, accum = 120, 3
    for step in range(200):
        weight = 100.0 if step == onset else 1.0  # bug: percent, not fraction
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (weight * loss / accum).backward()
            logged += float(loss.detach()) / accum
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(gs[onset - 10 : onset])
    ctx.check("gradient at onset over 50x the 10 before", gs[onset] > 50 * pre)
    ctx.check("gradient after onset back under 3x", _median(gs[onset + 5 : onset + 25]) < 3 * pre)
    ctx.check(
        "logged loss at onset under 2x the 10 before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell, finite", ls[-1] < ls[0] and _finite(ls))


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="cyr_wheel_spin_decay_lr_typo_tanh_regressor",
    optimizer="SGD (momentum)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="SGD with momentum 0.9 and OneCycleLR whose max_lr was typed 0.7 for 0.07; as the "
    "one-cycle ramp climbs, lr passes the momentum-SGD stability limit 2(1+beta)/sharpness "
    "of the spin-decay regressor and the MSE loss oscillates and blows up",
)
def h643_cyr_wheel_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(6438)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    max_lr = 0.7  # typo: 0.07
    opt = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=300, pct_start=0.5, cycle_momentum=False
    )
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.05)
    x0, y0 = next(batches)
    y0 = y0 * 4
    lam0 = _top_eig(model, x0, y0)
    lrs = []
    for _ in range(300):
        x, y = next(batches)
        lrs.append(opt.param_groups[0]["lr"])
        loss = F.mse_loss(model(x), 4 * y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e8:
            break
    ls = ctx.losses
    ctx.check("peak lr x sharpness over 2(1+beta)", max_lr * lam0 > 3.8)
    ctx.check("loss fell first", min(ls[:30]) < ls[0])
    ctx.check("ran over 60 steps before blowing up", len(ls) > 60)
    ctx.check(
        "loss blew up over 100x its start", max(ls) > 100 * ls[0] or not math.isfinite(ls[-1])
    )


@scenario(
    family="mbira_tine_buzz_attention_classifier",
    optimizer="NAdam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a one-head attention pooler over 10 tine-pluck frames; the q/k projections were left "
    "out of the weight-decay group (a name filter matched 'proj' for both q_proj/k_proj and the "
    "no-decay list) and run at lr 3e-2 with no QK-norm; the task rewards sharp attention on the "
    "buzzing frame: the q.k/sqrt(d) logits grow over 20x",
)
def h643_mbira_buzz_qk_growth(ctx: Context) -> None:
    gen = seeded(6439)

    class Attn(nn.Module):
        def __init__(self, d: int = 16) -> None:
            super().__init__()
            self.q_proj = nn.Linear(d, d)
            self.k_proj = nn.Linear(d, d)
            self.v_proj = nn.Linear(d, d)
            self.d = d
            self.last = torch.zeros(())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.q_proj(x) @ self.k_proj(x).transpose(1, 2) / math.sqrt(self.d)
            self.last = s.detach().abs().max()
            return torch.softmax(s, -1) @ self.v_proj(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 16)
            self.attn = Attn(16)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(self.embed(x)).mean(1))

    model = Net()
    qk = [p for n, p in model.named_parameters() if n.startswith(("attn.q_", "attn.k_"))]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("attn.q_", "attn.k_"))]
    opt = torch.optim.NAdam(
        [{"params": rest, "weight_decay": 1e-2}, {"params": qk, "weight_decay": 0.0}], lr=3e-2
    )
    ctx.attach(model, opt)
    logits = []
    for _ in range(200):
        x = torch.randn(32, 10, 4, generator=gen)
        pick = torch.randint(0, 10, (32,), generator=gen)
        x[torch.arange(32), pick, 3] = 3.0  # the buzzing tine
        y = (x[torch.arange(32), pick, 0] > 0).long() + (x[torch.arange(32), pick, 1] > 1).long()
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        logits.append(float(model.attn.last))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "attention logits over 20x their start", _median(logits[-10:]) > 20 * _median(logits[:5])
    )
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="thimble_rigging_splice_dead_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("hidden",),
    diverges=None,
    onset=60,
    heldout=True,
    note="a resume at step 60: the checkpoint loader fills hidden.bias with the config's "
    "'prior_bias' -12.0 (meant for a logit prior on the head) instead of the saved tensor; over "
    "half of hidden's ReLU units never fire again, get no gradient and stay dead under Adagrad; "
    "the splice-grade loss stalls well above what the net reached before",
)
def h643_thimble_splice_restart_dead_relu(ctx: Context) -> None:
    gen = seeded(64310)
    model = nn.Sequential()
    model.inp = nn.Linear(16, 64)
    model.act0 = nn.ReLU()
    model.hidden = nn.Linear(64, 64)
    model.act = nn.ReLU()
    model.head = nn.Linear(64, 4)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=128)
    onset = 60
    dead = []
    for step in range(200):
        if step == onset:
            with torch.no_grad():
                model.hidden.bias.fill_(-12.0)  # bug: the head's prior_bias, not the saved tensor
        x, y = next(batches)
        ctx.targets(y)
        h = F.relu(model.inp(x))
        pre = model.hidden(h)
        dead.append(float(((pre > 0).sum(0) == 0).float().mean()))
        loss = F.cross_entropy(model.head(F.relu(pre)), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("under 10% of hidden units dead before onset", dead[onset - 1] < 0.1)
    ctx.check("over 50% of hidden units dead at the end", dead[-1] > 0.5)
    ctx.check(
        "loss stalls: last 20 over 1.5x the 10 before onset",
        _median(ls[-20:]) > 1.5 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ls))


# -- healthy controls ---------------------------------------------------------------------------------


@scenario(
    family="cyanotype_tray_wash_fp16_scale_drop_bn_cnn",
    optimizer="SGD (momentum)",
    cause="healthy",
    heldout=True,
    note="healthy but alarming-looking: a small BatchNorm CNN grading cyanotype wash patches "
    "(8x8 digits as stand-in) under fp16 autocast + GradScaler started at 2**24 with "
    "growth_interval 25; the scale drops several times (inf gradients, skipped steps) as it "
    "finds its level and again after each growth, which is the scaler working as designed",
)
def h643_cyanotype_fp16_scale_drops(ctx: Context) -> None:
    gen = seeded(64311)

    class TrayCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.head = nn.Linear(16 * 16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
            x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
            return self.head(x.flatten(1))

    model = TrayCNN()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=25)
    ctx.attach(model, opt, scaler=scaler)
    batches = digit_batches(gen, 64)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, sc = ctx.losses, ctx.scales
    drops = sum(1 for a, b in zip(sc[:-1], sc[1:], strict=False) if b < a)
    ctx.check("scale dropped at least 4 times", drops >= 4)
    ctx.check(
        "loss fell: last 20 under 0.4x the first 10", _median(ls[-20:]) < 0.4 * _median(ls[:10])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="pan_flute_tuning_warmup_cosine_silu_regressor",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="healthy control: pipe-length to pitch-offset regression with linear warm-up then cosine "
    "decay (SequentialLR), clipping at 1.0, noisy tuner readings, Huber loss",
)
def h643_pan_flute_warmup_cosine(ctx: Context) -> None:
    gen = seeded(64312)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=30),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=170),
        ],
        milestones=[30],
    )
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.15)
    for _ in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.6x the first 20", _median(ls[-20:]) < 0.6 * _median(ls[:20])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="quipu_knot_cord_tied_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="healthy control: a tied-weight autoencoder of knot-cluster readings (decoder uses the "
    "encoder's transpose) with a label-smoothed cord-colour head, param groups (no decay on "
    "biases), 2-micro-batch accumulation, OneCycleLR, clipping",
)
def h643_quipu_knot_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(64313)

    class TiedAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(20, 10)
            self.dec_bias = nn.Parameter(torch.zeros(20))
            self.head = nn.Linear(10, 5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = torch.tanh(self.enc(x))
            return F.linear(z, self.enc.weight.t(), self.dec_bias), self.head(z)

    model = TiedAE()
    decay = [model.enc.weight, model.head.weight]
    no_decay = [model.enc.bias, model.dec_bias, model.head.bias]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=180)
    ctx.attach(model, opt)
    basis = torch.randn(7, 20, generator=gen)
    w = torch.randn(7, 5, generator=gen)
    for _ in range(180):
        total = 0.0
        for _ in range(2):
            c = torch.randn(32, 7, generator=gen)
            x = c @ basis / 2 + 0.05 * torch.randn(32, 20, generator=gen)
            y = (c @ w).argmax(1)
            ctx.targets(y)
            rec, logits = model(x)
            loss = F.mse_loss(rec, x) + F.cross_entropy(logits, y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.6x the first 20", _median(ls[-20:]) < 0.6 * _median(ls[:20])
    )
    ctx.check("finite", _finite(ls))
