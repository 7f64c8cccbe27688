"""Held-out set 639 (``h639_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, scenario, seeded


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


def _gnorm(model: nn.Module) -> float:
    return float(sum(p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None) ** 0.5)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class SiluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="glassblower_gather_furnace_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 90 a furnace thermocouple is read in millikelvin "
    "instead of degrees (a unit flag flipped in the reader), fc1's fp16 output overflows to "
    "inf and the loss is non-finite",
)
def h639_glassblower_furnace_fp16_millikelvin(ctx: Context) -> None:
    gen = seeded(6391)
    model = SiluNet(8, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 90
    for step in range(140):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 5] = x[:, 5] * 1e5 + 1.2e6  # millikelvin
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("fc1 fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
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
    family="hurdy_gurdy_wheel_rosin_drift_decay_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-written L2 penalty is subtracted instead of added (loss - wd * sum w^2, a sign "
    "flipped when the term was moved into a helper): the weights grow in every direction the "
    "data do not pin down, tanh units saturate and the loss climbs slowly after a first fall",
)
def h639_hurdy_gurdy_rosin_decay_sign(ctx: Context) -> None:
    gen = seeded(6392)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _regression(gen)
    wd = 0.12
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    for _ in range(190):
        x, y = next(batches)
        mse = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        (mse - wd * penalty).backward()  # bug: the sign of the L2 term
        opt.step()
        ctx.step(mse)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    low = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 6]))
    ctx.check("weight norm grew over 3x", w1 > 3 * w0)
    ctx.check(
        "loss climbs: last 20 over 2x steps 90-110", _median(ls[-20:]) > 2 * _median(ls[90:110])
    )
    ctx.check(
        "loss of the last 20 over 3x its running minimum",
        _median(ls[-20:]) > 3 * _median(ls[max(0, low - 5) : low + 6]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="curling_stone_sweep_curl_huber_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="one bad shard at step 120: a rink's ice-temperature sensor wrote -9999 (its missing-value "
    "code) into every row; Huber loss, clipping at 1.0, the run spikes and recovers",
)
def h639_curling_sweep_sentinel_shard(ctx: Context) -> None:
    gen = seeded(6393)
    model = SiluNet(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 120
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, 3] = -9999.0  # missing-value code
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
    family="bellfounder_crown_cast_group_typo_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="two param groups; the head's group lr was typed 1e-8 for 1e-2 (an exponent slip in the "
    "config), so the head barely moves while the trunk trains",
)
def h639_bellfounder_head_group_typo(ctx: Context) -> None:
    gen = seeded(6394)
    model = SiluNet(8, 32)
    opt = torch.optim.Adagrad(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 1e-2},
            {"params": model.head.parameters(), "lr": 1e-8},  # typo: 1e-2
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    wh = model.head.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    relh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("head moved under 1e-4 relative", relh < 1e-4)
    ctx.check("fc1 moved over 1e-2 relative", rel1 > 1e-2)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="geyser_eruption_interval_gain_elman_rnn",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="a hand-written Elman cell whose recurrent matrix is orthogonal times gain 3.0 (the gain "
    "meant for the input weights pasted onto the recurrent ones); over 40 steps of a pressure "
    "trace the gradient grows backwards through time, the first step's hidden-state gradient "
    "over 10x the last's; clipping keeps the run finite",
)
def h639_geyser_interval_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6395)

    class Elman(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.RNNCell(1, 32, nonlinearity="tanh")
            self.head = nn.Linear(32, 1)
            nn.init.orthogonal_(self.cell.weight_hh, gain=3.0)  # meant for weight_ih

        def forward(self, seq: torch.Tensor, keep: list | None = None) -> torch.Tensor:
            h = torch.zeros(seq.shape[0], 32)
            for t in range(seq.shape[1]):
                h = self.cell(seq[:, t : t + 1], h)
                if keep is not None:
                    h.retain_grad()
                    keep.append(h)
            return self.head(h)

    model = Elman()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    ratios = []
    for _ in range(80):
        phase = torch.rand(32, 1, generator=gen) * 6.28
        t = torch.arange(40).float()[None, :]
        seq = torch.sin(0.3 * t + phase) + 0.1 * torch.randn(32, 40, generator=gen)
        y = torch.cos(phase)
        keep: list = []
        loss = F.mse_loss(model(seq, keep), y)
        loss.backward()
        ratios.append(float(keep[0].grad.norm() / keep[-1].grad.norm().clamp_min(1e-12)))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first hidden-state gradient over 10x the last's (median)", _median(ratios) > 10)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="bonsai_wire_bend_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("scale",),
    diverges=78,
    onset=78,
    heldout=True,
    note="a Gaussian NLL whose scale head is a ReLU with no floor (the clamp_min(1e-3) dropped in a "
    "refactor); once a row's scale reaches exactly 0, log(0) = -inf and 0/0 give a NaN loss",
)
def h639_bonsai_wire_relu_scale_log0(ctx: Context) -> None:
    gen = seeded(6396)

    class NLLNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mean = nn.Linear(32, 1)
            self.scale = nn.Linear(32, 1)
            nn.init.constant_(self.scale.bias, 1.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = F.gelu(self.fc1(x))
            return self.mean(h), F.relu(self.scale(h))  # bug: no clamp_min

    model = NLLNet()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    zero_at = None
    for step in range(200):
        x, y = next(batches)
        mu, sd = model(x)
        if zero_at is None and bool((sd == 0).any()):
            zero_at = step
        loss = (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("a scale output exactly 0 in the run", zero_at is not None)
    ctx.check("loss first non-finite at step 78", len(ls) == 79 and not math.isfinite(ls[78]))
    ctx.check("zero scale at or before the NaN", zero_at is not None and zero_at <= 78)
    ctx.check("loss finite for the first 5 steps", _finite(ls[:5]))


@scenario(
    family="thatcher_reed_bundle_grade_sum_reduction_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="gradient accumulation over 4 micro-batches; at step 110 (a resume from a checkpoint) the "
    "loss is built with reduction='sum' and not divided by the accumulation count for that one "
    "step: one gradient burst over 50x, the logged loss is ordinary, clipping at 1.0 saves the run",
)
def h639_thatcher_reed_sum_reduction_resume(ctx: Context) -> None:
    gen = seeded(6397)
    model = nn.Sequential()
    model.fc1 = nn.Linear(16, 48)
    model.act = nn.ReLU()
    model.head = nn.Linear(48, 4)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=32)
    onset, accum = 110, 4
    for step in range(200):
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            logits = model(x)
            if step == onset:  # bug on resume: sum reduction, no division
                loss = F.cross_entropy(logits, y, reduction="sum")
            else:
                loss = F.cross_entropy(logits, y) / accum
            loss.backward()
            logged += float(F.cross_entropy(logits.detach(), y)) / accum
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
    family="lacrosse_pocket_shot_speed_lr_typo_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD with a linear warm-up to a peak lr typed 1.2 for 0.12; once the warm-up "
    "passes 2/sharpness of the shot-speed regressor the loss oscillates and blows up",
)
def h639_lacrosse_shot_speed_lr_typo(ctx: Context) -> None:
    gen = seeded(6398)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    lr = 1.2  # typo: 0.12
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.04, total_iters=300)
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    lam0 = _top_eig(model, x0, y0)
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e8:
            break
    ls = ctx.losses
    ctx.check("peak lr x sharpness over 2", lr * lam0 > 2)
    ctx.check("loss fell first", min(ls[:30]) < ls[0])
    ctx.check("ran over 60 steps before blowing up", len(ls) > 60)
    ctx.check(
        "loss blew up over 100x its start", max(ls) > 100 * ls[0] or not math.isfinite(ls[-1])
    )


@scenario(
    family="marimba_mallet_roll_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a one-head attention pooler over 12 mallet-strike frames; the q/k projections sit in the "
    "no-decay group (a name filter matched 'q'/'k' instead of 'bias') at lr 3e-2, and the task "
    "rewards sharp attention on one frame: the q.k/sqrt(d) logits grow over 20x",
)
def h639_marimba_roll_qk_no_decay(ctx: Context) -> None:
    gen = seeded(6399)

    class Attn(nn.Module):
        def __init__(self, d: int = 16) -> None:
            super().__init__()
            self.q = nn.Linear(d, d)
            self.k = nn.Linear(d, d)
            self.v = nn.Linear(d, d)
            self.d = d
            self.last = torch.zeros(())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(self.d)
            self.last = s.detach().abs().max()
            return torch.softmax(s, -1) @ self.v(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 16)
            self.attn = Attn(16)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(self.embed(x)).mean(1))

    model = Net()
    qk = [p for n, p in model.named_parameters() if n.startswith(("attn.q", "attn.k"))]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("attn.q", "attn.k"))]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.1}, {"params": qk, "weight_decay": 0.0}], lr=3e-2
    )
    ctx.attach(model, opt)
    logits = []
    for _ in range(200):
        x = torch.randn(32, 12, 4, generator=gen)
        pick = torch.randint(0, 12, (32,), generator=gen)
        x[torch.arange(32), pick, 0] = 3.0  # the accented strike
        y = (x[torch.arange(32), pick, 1] > 0).long() + (x[torch.arange(32), pick, 2] > 1).long()
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
    family="clog_dance_tap_step_dead_bias_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised with constant -3.0 where the recipe said -3e-2 (a dropped 'e-2'): "
    "over 90% of fc1's ReLU units never fire, get no gradient and stay dead; the loss stalls far "
    "above what the net can reach",
)
def h639_clog_tap_dead_bias_init(ctx: Context) -> None:
    gen = seeded(63910)
    model = nn.Sequential()
    model.fc1 = nn.Linear(16, 64)
    model.act = nn.ReLU()
    model.head = nn.Linear(64, 4)
    nn.init.constant_(model.fc1.bias, -3.0)  # meant -3e-2
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=128)
    dead = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        pre = model.fc1(x)
        dead.append(float(((pre > 0).sum(0) == 0).float().mean()))
        loss = F.cross_entropy(model.head(F.relu(pre)), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 60% of fc1 units dead at the end", dead[-1] > 0.6)
    ctx.check("loss stalls above 1.0 (of chance 1.39)", _median(ctx.losses[-20:]) > 1.0)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------------


@scenario(
    family="rowing_cox_stroke_rate_batch2_steplr_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    heldout=True,
    note="healthy but alarming-looking: batches of 2 rows (a tiny on-boat logger), so the loss "
    "jumps by orders of magnitude from step to step, and a StepLR decay of 0.1 at step 100 "
    "that visibly changes the trace; the run trains",
)
def h639_rowing_cox_batch2_steplr(ctx: Context) -> None:
    gen = seeded(63911)
    model = SiluNet(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.1)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=2, noise=0.1)
    xe, ye = next(_regression(seeded(63911), batch=512, noise=0.1))
    torch.manual_seed(63911)
    with torch.no_grad():
        before = float(F.mse_loss(model(xe), ye))
    for _ in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = float(F.mse_loss(model(xe), ye))
    ls = ctx.losses
    ctx.check("held-out loss fell by over 2x", after < 0.5 * before)
    ctx.check("loss trace spans over 100x (looks alarming)", max(ls) > 100 * min(ls))
    ctx.check("finite", _finite(ls))


@scenario(
    family="ice_fishing_auger_depth_fp16_rmsprop_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="healthy control: fp16 autocast + GradScaler, OneCycleLR, clipping at 1.0 after "
    "unscale_, noisy auger-torque readings, Huber loss",
)
def h639_ice_fishing_auger_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(63912)
    model = SiluNet(8, 48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.2)
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.6x the first 20", _median(ls[-20:]) < 0.6 * _median(ls[:20])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="crochet_stitch_motif_tied_autoencoder",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="healthy control: a tied-weight autoencoder of stitch-tension motifs (decoder uses the "
    "encoder's transpose) with a label-smoothed motif-class head, param groups (head at half "
    "rate), 2-micro-batch accumulation, ReduceLROnPlateau, clipping",
)
def h639_crochet_motif_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(63913)

    class TiedAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(16, 8)
            self.dec_bias = nn.Parameter(torch.zeros(16))
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = torch.tanh(self.enc(x))
            return F.linear(z, self.enc.weight.t(), self.dec_bias), self.head(z)

    model = TiedAE()
    opt = torch.optim.NAdam(
        [
            {"params": list(model.enc.parameters()) + [model.dec_bias], "lr": 3e-3},
            {"params": model.head.parameters(), "lr": 1.5e-3},
        ]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    basis = torch.randn(6, 16, generator=gen)
    w = torch.randn(6, 4, generator=gen)
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            c = torch.randn(32, 6, generator=gen)
            x = c @ basis / 2 + 0.05 * torch.randn(32, 16, generator=gen)
            y = (c @ w).argmax(1)
            ctx.targets(y)
            rec, logits = model(x)
            loss = F.mse_loss(rec, x) + F.cross_entropy(logits, y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss) / 2
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.6x the first 20", _median(ls[-20:]) < 0.6 * _median(ls[:20])
    )
    ctx.check("finite", _finite(ls))
