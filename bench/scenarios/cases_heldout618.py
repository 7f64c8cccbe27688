"""Held-out set 618 (``h618_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data or scikit-learn's bundled digits."""

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


class SiLU3(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _pre_median(xs: list[float], k: int, n: int = 10) -> float:
    return float(torch.tensor(xs[max(0, k - n) : k]).median())


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sumo_shikiri_charge_timing_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written L2 penalty added with its sign flipped (loss - wd*|w|^2): the weights grow "
    "steadily and the MSE climbs slowly to over 3x its best with no jump",
)
def h618_sumo_charge_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(6181)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    wd = 5e-2
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _ in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        (loss - wd * penalty).backward()  # bug: should be + wd * penalty
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ls = ctx.losses
    best = min(ls[:100])
    tail = sum(ls[-10:]) / 10
    smooth = [sum(ls[i : i + 10]) / 10 for i in range(0, len(ls) - 9, 10)]
    jumps = [b - a for a, b in zip(smooth[:-1], smooth[1:], strict=False)]
    ctx.check("weight norm grew over 2x", w1 > 2 * w0)
    ctx.check("loss ends over 3x its best", tail > 3 * best)
    ctx.check("no 10-step jump over 1/3 of the climb", max(jumps) < (tail - best) / 3)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="lacemaker_bobbin_thread_tension_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 90 the tension gauge is read in millinewtons "
    "instead of newtons (no /1000), fc1's fp16 output overflows to inf, the loss is non-finite",
)
def h618_lacemaker_tension_fp16_millinewton(ctx: Context) -> None:
    gen = seeded(6182)
    model = SiLU3(8, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
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
            x[:, 0] = x[:, 0] * 1e6 + 4e5  # raw mN reading, unit conversion dropped
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check(
                "fc1's fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all())
            )
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
    family="clog_dance_tap_group_typo_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; fc2's lr typed 1e-9 for 1e-3, fc2 never moves while the rest train",
)
def h618_clog_tap_fc2_lr_typo(ctx: Context) -> None:
    gen = seeded(6183)
    model = SiLU3(8, 32)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},  # typo: 1e-3
            {"params": model.fc3.parameters(), "lr": 1e-3},
        ],
        alpha=0.99,
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel2 = float((model.fc2.weight - w2).norm() / w2.norm())
    rel1 = float((model.fc1.weight - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-5 relative", rel2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 relative", rel1 > 1e-2)
    ctx.check("loss fell, finite", ctx.losses[-1] < ctx.losses[0] and math.isfinite(ctx.losses[-1]))


@scenario(
    family="glacier_calving_height_lr_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD lr typed 1.5 for 0.015: lr x top Hessian eigenvalue over 2 at the start, the "
    "loss oscillates and blows up",
)
def h618_glacier_calving_sgd_lr_typo(ctx: Context) -> None:
    gen = seeded(6184)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    lr = 1.5  # typo: 0.015
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(30):
        g = torch.autograd.grad(F.mse_loss(model(x0), y0), params, create_graph=True)
        hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v, strict=True)), params)
        nrm = float(sum((h**2).sum() for h in hv) ** 0.5)
        lam = float(sum((h * a).sum() for h, a in zip(hv, v, strict=True))) / float(
            sum((a**2).sum() for a in v)
        )
        v = [h / nrm for h in hv]
    ctx.check("lr x sharpness over 2", lr * lam > 2)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss blew up over 1000x", not math.isfinite(ls[-1]) or max(ls) > 1000 * ls[0])


class DeepTanh(nn.Module):
    def __init__(self, depth: int = 16, width: int = 32, gain: float = 3.0) -> None:
        super().__init__()
        sizes = [8] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.out = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.out(x)


@scenario(
    family="geyser_eruption_interval_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="16-deep tanh MLP initialised with std 3.0/sqrt(fan_in) (gain 3 typed for 1): backward "
    "signal grows through depth, layer 0's gradient over 10x the last layer's",
)
def h618_geyser_interval_init_gain(ctx: Context) -> None:
    gen = seeded(6185)
    model = DeepTanh()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(
            float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        )
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("layer 0 gradient over 10x the last layer's at start", ratios[0] > 10)
    ctx.check("ratio stays over 10x", sum(ratios[:50]) / 50 > 10)


@scenario(
    family="hop_kiln_moisture_huber_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one shard logged in grams instead of kilograms at step 100 (inputs and targets x1000): "
    "Huber loss over 20x, gradient over 10x, clipped, the run recovers",
)
def h618_hop_kiln_grams_shard(ctx: Context) -> None:
    gen = seeded(6186)
    model = SiLU3(8, 32)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x, y = x * 1000.0, y * 1000.0  # bad shard: grams
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x at onset", ls[onset] > 20 * _pre_median(ls, onset))
    ctx.check("gradient over 10x at onset", gs[onset] > 10 * _pre_median(gs, onset))
    ctx.check("recovers", sum(ls[-10:]) / 10 < 2 * _pre_median(ls, onset))


@scenario(
    family="curling_sweep_outcome_bce_classifier",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="loss built with reduction='sum' instead of 'mean' for step 90 (a refactor of the "
    "accumulation path): gradient over 30x for one step, the logged loss is the ordinary mean, "
    "clipped",
)
def h618_curling_sweep_sum_reduction(ctx: Context) -> None:
    gen = seeded(6187)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 2, batch=128)
    onset = 90
    for step in range(180):
        x, y = next(batches)
        logits = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y.float())
        if step == onset:
            total = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum")
        else:
            total = loss
        total.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 30x at onset", gs[onset] > 30 * _pre_median(gs, onset))
    ctx.check("logged loss ordinary at onset", ls[onset] < 2 * _pre_median(ls, onset))
    ctx.check("loss fell, finite", ls[-1] < ls[0] and all(math.isfinite(v) for v in ls))


class LogPressure(nn.Module):
    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return torch.log(p)  # missing clamp(min=eps)


class SapFlowNLL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logp = LogPressure()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([x[:, :7], self.logp(x[:, 7:])], 1)
        return self.fc2(F.silu(self.fc1(feats)))


@scenario(
    family="maple_sap_flow_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logp",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model log(tap pressure) without its clamp; a frozen gauge reports 0 kPa at step 80, "
    "log(0) = -inf, the Gaussian NLL is NaN",
)
def h618_maple_sap_log_zero(ctx: Context) -> None:
    gen = seeded(6188)
    model = SapFlowNLL()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 80
    for step in range(140):
        x, y = next(batches)
        x = x.clone()
        x[:, 7] = 50.0 + 10.0 * torch.rand(len(x), generator=gen)  # tap pressure, kPa
        if step == onset:
            x[:8, 7] = 0.0  # frozen gauge
        out = model(x)
        mu, log_var = out[:, :1], out[:, 1:]
        loss = 0.5 * (log_var + (y - mu) ** 2 / log_var.exp()).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("finite before onset", all(math.isfinite(v) for v in ls[:onset]))
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0])


class GongHead(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.head = nn.Linear(64, 4)
        self.temperature = temperature * 1e-3  # bug: config value already unitless, not ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc1(x))) / self.temperature


@scenario(
    family="gamelan_gong_pitch_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.5 multiplied by 1e-3 as if given in ms: logits divided by 0.0005, "
    "over 40% of rows' target probability rounds to exactly 1.0 in float32",
)
def h618_gamelan_gong_temperature_units(ctx: Context) -> None:
    from scenarios.common import collapsed_fraction

    gen = seeded(6189)
    model = GongHead(0.5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4)
    fracs = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 40% of rows collapsed late", sum(fracs[-20:]) / 20 > 0.4)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="ropewalk_fibre_grade_relu_classifier",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised with constant -2.0 (a sparse-gate init copied from another layer "
    "onto a ReLU layer): over 80% of fc1 units never fire, get no gradient and the loss stalls",
)
def h618_ropewalk_fibre_dead_relu(ctx: Context) -> None:
    from scenarios.common import dead_fraction

    gen = seeded(6190)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(16, 64))
    model.add_module("act", nn.ReLU())
    model.add_module("head", nn.Linear(64, 4))
    nn.init.constant_(model.fc1.bias, -2.0)  # bug: copied gate init
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=128)
    for _ in range(160):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.fc1(x))
    ctx.check("over 80% of fc1 units dead", dead > 0.8)
    ctx.check("loss stalls above 1.0", sum(ctx.losses[-20:]) / 20 > 1.0)


# -- healthy controls -------------------------------------------------------------------------------


def _graphs(gen: torch.Generator, batch: int = 32, nodes: int = 12):
    """Random Erdos-Renyi graphs (density 0.1-0.6) with 4-d node readings; label: which
    tercile of edge density the graph falls in."""
    while True:
        p = 0.1 + 0.5 * torch.rand(batch, 1, 1, generator=gen)
        upper = (torch.rand(batch, nodes, nodes, generator=gen) < p).float().triu(1)
        adj = upper + upper.transpose(1, 2)
        feats = torch.randn(batch, nodes, 4, generator=gen)
        feats[..., 0] = 1.0  # a constant channel, as is usual for unlabelled nodes
        y = ((p.flatten() - 0.1) / (0.5 / 3)).long().clamp(max=2)
        yield (adj, feats), y


class GINLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(()))
        self.mlp = nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))

    def forward(self, adj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return F.relu(self.mlp((1 + self.eps) * h + adj @ h))  # sum aggregation


class MyceliumGIN(nn.Module):
    def __init__(self, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList([GINLayer(4, hidden), GINLayer(hidden, hidden)])
        self.head = nn.Linear(hidden, classes)

    def forward(self, adj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            h = conv(adj, h)
        return self.head(h.sum(1) / h.shape[1])


@scenario(
    family="slime_mould_network_gin_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="GIN (sum aggregation, learnt eps) over generated random graphs, graph-density tercile "
    "labels, AdamW with param groups (no decay on eps/biases), OneCycleLR, clipping at 1.0",
)
def h618_slime_mould_gin_control(ctx: Context) -> None:
    gen = seeded(6191)
    model = MyceliumGIN()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    batches = _graphs(gen)
    for _ in range(steps):
        (adj, feats), y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(adj, feats), y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell below 60% of its start", sum(ls[-10:]) / 10 < 0.6 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class BonsaiNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="bonsai_wiring_branch_head_reset_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="at step 100 the label set is remapped (a new grading scheme) and the classifier head is "
    "re-initialised with its Adam state cleared and a fresh 20-step warm-up: the loss jumps back "
    "to chance (~ln 10) and is learnt again; healthy but alarming-looking",
)
def h618_bonsai_branch_head_reset(ctx: Context) -> None:
    gen = seeded(6192)
    model = BonsaiNet()
    opt = torch.optim.Adam(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    reset = 100
    since = {"start": 0}

    def warm(step: int) -> float:
        return min(1.0, (step - since["start"] + 1) / 20)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [warm, warm])
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    remap = torch.randperm(10, generator=gen)
    for step in range(220):
        if step == reset:
            model.head.reset_parameters()
            for p in model.head.parameters():
                opt.state.pop(p, None)
            since["start"] = step
            sched.step()  # re-evaluate the warm-up factor at the new start
        x, y = next(batches)
        if step >= reset:
            y = remap[y]
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre = sum(ls[reset - 10 : reset]) / 10
    ctx.check("learnt before the reset (< 0.6)", pre < 0.6)
    ctx.check("loss jumps to near chance at the reset", ls[reset] > 1.8)
    ctx.check("relearnt after (< 0.6)", sum(ls[-10:]) / 10 < 0.6)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="kendama_catch_outcome_nesterov_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="SGD Nesterov, OneCycleLR, label smoothing 0.1, 2-micro-batch gradient accumulation, "
    "clipping at 1.0, 5% noisy labels",
)
def h618_kendama_catch_control(ctx: Context) -> None:
    gen = seeded(6193)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=32)
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 4, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell below 60% of its start", sum(ls[-10:]) / 10 < 0.6 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))
