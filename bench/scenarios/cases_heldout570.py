"""Held-out set 570 (``h570_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sjoelbak disc-gate attention classifier whose learnable attention temperature lost its
clamp and sits in a 10x-lr group (attention_logit_growth, Adam); metate grinding-fineness ReLU
regressor whose OneCycleLR max_lr is typed 0.3 for 3e-3 (loss_of_plasticity, Adam); Flettner
rotor thrust 12-deep ReLU regressor initialised with std 2/sqrt(fan_in) for sqrt(2/fan_in)
(exploding_gradients, SGD momentum); molcajete salsa-grind SiLU regressor whose fc2 group lr is
typed 1e-9 (update_ratio_out_of_range, RMSprop); comal tortilla-puff GELU classifier fed one
shard of raw thermocouple microvolts (data_outlier, NAdam); tsutsugaki paste-line BCE classifier
whose resume step reads the accumulation divisor as 0.01 (gradient_spike, SGD Nesterov); rudra
vina fret-pitch Gaussian-NLL regressor whose per-batch range normaliser divides 0 by 0 on a
muted string (nonfinite, Adamax); wado-ryu kata stance classifier whose temperature is typed
1e-3 for 1.0 (softmax_collapse, Adagrad); pierogi crimp-seal tanh regressor with SGD lr typed
5.0 for 0.05 (sharpness_above_limit, plain SGD); plangi resist-dye cosine classifier whose
logit scale lost its clamp (output_logit_divergence, AdamW).
Controls: tlachtli ball hip-strike ReLU classifier whose batch doubles at step 100 with the lr
doubled (linear scaling rule; alarming-looking, SGD momentum); maki-e lacquer gold-dust pattern
Hugging Face ViT from a tiny config over generated images (AdamW, warm-up + cosine, clipping,
label smoothing); udon dough knead-hydration GELU regressor (fp16 autocast + GradScaler, Huber,
RAdam, gradient accumulation, ReduceLROnPlateau, noisy readings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    alter=None,
    scale=None,
    clip=None,
    sched=None,
    after=None,
    forward=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(forward(x) if forward is not None else model(x), y)
        (loss * (scale(step) if scale is not None else 1.0)).backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y), power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. attention logit growth: a learnable attention temperature without its clamp ----------------


class _GateAttention(nn.Module):
    """One learned query attends over the slides; logits = exp(log_tau) * q.k / sqrt(d)."""

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.1)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.log_tau = nn.Parameter(torch.zeros(()))
        self.last_logits = None

    def forward(self, h):
        k = self.key(h)
        logits = self.log_tau.exp() * (k @ self.query) / math.sqrt(h.shape[-1])
        self.last_logits = logits.detach()
        w = torch.softmax(logits, dim=-1)
        return (w.unsqueeze(-1) * self.value(h)).sum(1)


class _SjoelbakNet(nn.Module):
    def __init__(self, vocab=12, dim=32, classes=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.mark = nn.Embedding(2, dim)
        self.attn = _GateAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens, flags = x
        return self.head(self.attn(self.tok(tokens) + self.mark(flags)))


def _slides(gen, batch, length=10, classes=8, vocab=12):
    while True:
        tokens = torch.randint(0, vocab, (batch, length), generator=gen)
        pos = torch.randint(0, length, (batch,), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        tokens[torch.arange(batch), pos] = y
        flags = torch.zeros(batch, length, dtype=torch.long)
        flags[torch.arange(batch), pos] = 1
        yield (tokens, flags), y


@scenario(
    family="sjoelbak_disc_gate_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    heldout=True,
    note="Sjoelbak (Dutch shuffleboard) gate classifier: each sequence holds ten disc slides, "
    "one flagged as the scoring slide, and a learned query attends over the slides to say "
    "which gate the flagged disc went through (cross-entropy, Adam). The attention has a "
    "learnable temperature exp(log_tau); the reference code clamps log_tau at log(2) and gives "
    "it a 10x-lr param group, and the port kept the 10x group but dropped the clamp: log_tau "
    "climbs past the clamp while the query and key grow, and the attention logits "
    "q.k/sqrt(d) grow over 20x.",
)
def h570_sjoelbak_unclamped_attention_temperature(ctx):
    gen = seeded(5701)
    model = _SjoelbakNet()
    tau = [model.attn.log_tau]
    rest = [p for n, p in model.named_parameters() if n != "attn.log_tau"]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-3}, {"params": tau, "lr": 3e-2}])
    peaks = []

    def after(step, loss):
        peaks.append(float(model.attn.last_logits.abs().max()))

    losses, _ = _loop(
        ctx, model, opt, _slides(gen, 64), 220, F.cross_entropy, classifier=True, after=after
    )
    ctx.check("attention logits grew over 20x", _mean(peaks[-10:]) > 20 * _mean(peaks[:10]))
    ctx.check(
        "log_tau passed the dropped clamp log(2)", float(model.attn.log_tau.detach()) > math.log(2)
    )
    ctx.check("loss finite", _finite(losses))


# -- 2. loss of plasticity: OneCycleLR max_lr typed 0.3 for 3e-3 -----------------------------------


@scenario(
    family="metate_grinding_fineness_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    note="Metate grinding-fineness regressor (ReLU MLP on mano stroke rate, stroke length, "
    "stone porosity, grain moisture, nixtamal soak time and pressure, predicting masa "
    "fineness; MSE, Adam, OneCycleLR). max_lr is typed 0.3 for 3e-3: as the one-cycle "
    "warm-up takes the lr a hundred times past its intended peak, most of act2's units are "
    "pushed negative on every input and never come back; the loss stalls, nothing blows up.",
)
def h570_metate_onecycle_typo_dead_relus(ctx):
    gen = seeded(5702)
    model = _Net(6, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    probe = torch.randn(512, 6, generator=torch.Generator().manual_seed(57020))
    seen = {}
    model.act2.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.detach()))
    dead = []

    def after(step, loss):
        with torch.no_grad():
            model(probe)
        dead.append(float((seen["a"] <= 0).all(0).float().mean()))

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 57021), steps, F.mse_loss, sched=sched, after=after
    )
    ctx.check("under 10% of act2 dead at the start", dead[0] < 0.1)
    ctx.check("over 40% of act2 dead at the end", dead[-1] > 0.4)
    ctx.check("still dead over the last 20 steps", min(dead[-20:]) > 0.4)
    ctx.check("loss finite (no blow-up)", _finite(losses))


# -- 3. exploding gradients: init std 2/sqrt(fan_in) for sqrt(2/fan_in) ----------------------------


class _Deep(nn.Module):
    def __init__(self, d_in=5, width=32, depth=12, std=None):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU()]
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x).squeeze(-1)


@scenario(
    family="flettner_rotor_thrust_deep_relu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("net.0",),
    diverges="auto",
    heldout=True,
    note="Flettner rotor thrust regressor (12-deep ReLU MLP on rotor rpm, apparent wind speed "
    "and angle, end-plate ratio and hull speed, predicting thrust; MSE, SGD momentum). The "
    "hand-written He init is typed std = 2/sqrt(fan_in) instead of sqrt(2/fan_in): every "
    "layer doubles the signal's variance, so the backward pass grows about sqrt(2) per layer "
    "and the first hidden layer's gradient is tens of times the last's; even at lr 2e-5 the "
    "first updates throw the deep layers out and the loss blows up within a few steps.",
)
def h570_flettner_init_gain_typo(ctx):
    gen = seeded(5703)
    model = _Deep(std=lambda fan_in: 2.0 / math.sqrt(fan_in))
    opt = torch.optim.SGD(model.parameters(), lr=2e-5, momentum=0.9)
    first, last = [], []
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 5, 57031)
    losses = []
    for _step in range(150):
        x, y = next(batches)
        hidden = {}
        for i in (1, len(model.net) - 2):
            model.net[i].register_forward_hook(
                lambda m, inp, out, i=i, h=hidden: h.__setitem__(i, out) or out.retain_grad()
            )
        loss = F.mse_loss(model(x), y)
        loss.backward()
        model.net[1]._forward_hooks.clear()
        model.net[-2]._forward_hooks.clear()
        first.append(float(hidden[1].grad.norm()))
        last.append(float(hidden[len(model.net) - 2].grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check(
        "gradient at the first hidden layer over 10x the last's at step 0", first[0] > 10 * last[0]
    )
    ctx.check(
        "loss blew up (non-finite or over 100x its start)",
        (not _finite(losses)) or peak > 100 * losses[0],
    )


# -- 4. update ratio: fc2's param-group lr typed 1e-9 ----------------------------------------------


@scenario(
    family="molcajete_salsa_grind_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="Molcajete salsa-grind regressor (SiLU MLP on pestle strokes, basalt roughness, "
    "chile/tomato ratio, roast time and salt, predicting paste coarseness; Huber, RMSprop, "
    "param groups). The layer-wise lr table is typed 1e-9 for fc2 (meant 1e-3): fc2's "
    "weights never move while the other layers train, so the net learns through a frozen "
    "random middle layer; the loss falls, more slowly, nothing blows up.",
)
def h570_molcajete_frozen_group(ctx):
    gen = seeded(5704)
    model = _Net(5, hidden=48, act=nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-3},
        ],
        alpha=0.99,
    )
    w0 = {n: m.weight.detach().clone() for n, m in (("fc1", model.fc1), ("fc2", model.fc2))}
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 57041), 160, lambda o, y: F.huber_loss(o, y)
    )

    def moved(name, m):
        return float((m.weight.detach() - w0[name]).norm() / w0[name].norm())

    ctx.check("fc2 moved under 1e-5 relative", moved("fc2", model.fc2) < 1e-5)
    ctx.check("fc1 moved over 1e-2 relative", moved("fc1", model.fc1) > 1e-2)
    ctx.check("loss fell and finite", _fell(losses, ratio=0.9))


# -- 5. data outlier: one shard of raw thermocouple microvolts -------------------------------------


@scenario(
    family="comal_tortilla_puff_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    onset=120,
    heldout=True,
    note="Comal tortilla-puff classifier (GELU MLP on comal temperature, dough hydration, "
    "press thickness, flip times and masa age, classifying how the tortilla puffs into 5 "
    "grades; cross-entropy, NAdam, clipping at 1.0). At step 120 one shard comes from a "
    "griddle logger that writes raw thermocouple microvolts (thousands) instead of the "
    "standardised temperature: that batch's loss jumps over 20x and its gradient over 10x; "
    "clipping holds the update and the run recovers on clean shards.",
)
def h570_comal_thermocouple_shard(ctx):
    gen = seeded(5705)
    model = _Net(8, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = 4100.0 + 300.0 * x[:, 0]
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 5, 57051),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    before = losses[100:120]
    ctx.check("loss at step 120 over 20x the 20 before", losses[120] > 20 * _mean(before))
    ctx.check("gradient at step 120 over 10x the median", norms[120] > 10 * _median(norms[100:120]))
    ctx.check(
        "recovered: last 20 under 2x the pre-onset loss", _mean(losses[-20:]) < 2 * _mean(before)
    )
    ctx.check("loss finite", _finite(losses))


# -- 6. gradient spike: resume step reads the accumulation divisor as 0.01 -------------------------


@scenario(
    family="tsutsugaki_paste_line_bce_classifier",
    optimizer="SGD(momentum=0.9, nesterov=True)",
    cause="gradient_spike",
    where=(),
    onset=130,
    heldout=True,
    note="Tsutsugaki paste-line classifier (GELU MLP on cone pressure, paste viscosity, nozzle "
    "width, cloth weave and brush speed, predicting whether a rice-paste resist line holds; "
    "BCE-with-logits, SGD Nesterov, 4 micro-batches of gradient accumulation, clipping at 5). "
    "At step 130 the job resumes from a checkpoint and rebuilds the accumulation divisor from "
    "the saved config's 'micro-batch fraction' field (0.01) rather than accum_steps: for that "
    "one step each micro-batch loss is multiplied by 100 instead of divided by 4, the "
    "gradient bursts about 400x while the logged loss is ordinary; the next step is normal.",
)
def h570_tsutsugaki_resume_divisor(ctx):
    gen = seeded(5706)
    model = _Net(6, hidden=40, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(57061)
    w = torch.randn(6, generator=g)
    losses, norms = [], []
    accum = 4
    for step in range(200):
        divisor = 0.01 if step == 130 else accum
        total = 0.0
        for _ in range(accum):
            x = torch.randn(32, 6, generator=gen)
            y = (
                (x @ w + 0.3 * x[:, 0] * x[:, 1] + 0.3 * torch.randn(32, generator=gen)) > 0
            ).float()
            part = F.binary_cross_entropy_with_logits(model(x), y)
            (part / divisor).backward()
            total += float(part.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        loss = torch.tensor(total)
        losses.append(total)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient at 130 over 50x the median before", norms[130] > 50 * _median(norms[100:130])
    )
    ctx.check("logged loss at 130 ordinary (under 2x)", losses[130] < 2 * _mean(losses[110:130]))
    ctx.check("gradient at 131 back under 5x", norms[131] < 5 * _median(norms[100:130]))
    ctx.check("loss fell and finite", _fell(losses, ratio=0.9))


# -- 7. nonfinite: per-batch range normaliser divides 0 by 0 ---------------------------------------


class _RangeNorm(nn.Module):
    """(x - min) / (max - min) over the batch, per pickup channel (no epsilon)."""

    def forward(self, x):
        lo = x.min(0, keepdim=True).values
        hi = x.max(0, keepdim=True).values
        return (x - lo) / (hi - lo)


class _VinaNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(self.norm(x))))))
        return out[:, 0], out[:, 1]


def _gauss_nll(out, y):
    mean, log_var = out
    return (0.5 * (log_var + (y - mean) ** 2 / log_var.exp())).mean()


@scenario(
    family="rudra_vina_fret_pitch_gaussian_nll_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("norm",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Rudra vina fret-pitch regressor (SiLU MLP on six contact-pickup channels, predicting "
    "the pitch offset of a meend as a Gaussian mean and log-variance; Gaussian NLL, Adamax). "
    "The input layer min-max normalises each channel over the batch with no epsilon; at step "
    "90 a batch comes from a muted chikari string whose channel reads a constant, max - min "
    "is 0, the normaliser computes 0/0 = NaN and the loss is NaN at step 90.",
)
def h570_rudra_vina_muted_string(ctx):
    gen = seeded(5707)
    model = _VinaNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = []
    model.norm.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isfinite(o).all())))

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:, 3] = 0.42
        return x, y

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 57071), 140, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("norm output finite before 90", all(seen[:90]))
    ctx.check("norm output non-finite at 90", not seen[90])
    ctx.check("loss non-finite first at 90", first_bad == 90)
    ctx.check("loss fell before 90", _fell(losses[:90], ratio=0.9))


# -- 8. softmax collapse: temperature typed 1e-3 for 1.0 -------------------------------------------


@scenario(
    family="wadoryu_kata_stance_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    heldout=True,
    note="Wado-ryu kata stance classifier (ReLU MLP on ten joint angles from a motion suit, "
    "classifying 6 stances; cross-entropy on logits / temperature, Adagrad). The temperature "
    "is typed 1e-3 (the config's millisecond-style field) for 1.0: the logits are divided by "
    "1e-3, softmax rounds most rows' probabilities to exactly 0 and 1 in float32, and the "
    "loss is carried by the few confidently wrong rows.",
)
def h570_wadoryu_temperature_typo(ctx):
    gen = seeded(5708)
    model = _Net(10, hidden=48, out=6)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    temperature = 1e-3
    saturated = []

    def loss_fn(logits, y):
        z = logits / temperature
        p = torch.softmax(z.detach(), dim=-1)
        saturated.append(float((p.max(-1).values == 1.0).float().mean()))
        return F.cross_entropy(z, y)

    losses, _ = _loop(
        ctx, model, opt, _classes(gen, 64, 10, 6, 57081), 160, loss_fn, classifier=True
    )
    ctx.check("over 40% of rows exactly one-hot (last 20 steps)", _mean(saturated[-20:]) > 0.4)
    ctx.check("loss finite", _finite(losses))


# -- 9. sharpness above limit: SGD lr typed 5.0 for 0.05 -------------------------------------------


@scenario(
    family="pierogi_crimp_seal_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Pierogi crimp-seal regressor (tanh MLP on dough thickness, filling moisture, crimp "
    "pressure, fold overlap and rest time, predicting seal strength; MSE, plain SGD). The lr "
    "is typed 5.0 for 0.05: lr times the loss's top Hessian eigenvalue is far past 2 from the "
    "start, the iterates oscillate with growing amplitude and the loss blows up.",
)
def h570_pierogi_lr_typo(ctx):
    gen = seeded(5709)
    model = _Net(5, hidden=32, act=nn.Tanh)
    lr = 5.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 5, 57091)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check("lr x top eigenvalue over 2 at step 0", lr * eig > 2)
    ctx.check(
        "loss blew up (non-finite or over 100x its start)",
        (not _finite(losses)) or peak > 100 * losses[0],
    )


# -- 10. output logit divergence: the z-loss subtracted instead of added ----------------------------


@scenario(
    family="plangi_resist_dye_zloss_gelu_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    heldout=True,
    note="Plangi tie-resist dye classifier (GELU MLP on thread tension, bundle size, dye-bath "
    "temperature, mordant and dip count, classifying 5 bloom patterns; cross-entropy plus a "
    "PaLM-style z-loss 1e-4 * logsumexp(logits)^2, AdamW). The z-loss is typed with a minus "
    "sign (loss = ce - 1e-4 * z): instead of holding the log-partition near 0 it rewards "
    "raising every logit together, which cross-entropy cannot see, so the head's logits "
    "climb every step without bound while the classification itself stays fine.",
)
def h570_plangi_zloss_sign(ctx):
    gen = seeded(5710)
    model = _Net(8, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.01)
    peaks, lse, ce = [], [], []

    def loss_fn(logits, y):
        z = torch.logsumexp(logits, dim=-1)
        peaks.append(float(logits.detach().abs().max()))
        lse.append(float(z.detach().mean()))
        c = F.cross_entropy(logits, y)
        ce.append(float(c.detach()))
        return c - 1e-4 * (z**2).mean()

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 5, 57101, spread=1.5, noise=1.0),
        250,
        loss_fn,
        classifier=True,
    )
    ctx.check("head logits grew over 20x", _mean(peaks[-10:]) > 20 * _mean(peaks[:10]))
    ctx.check("log-partition still rising at the end", lse[-1] > lse[-50] + 1.0)
    ctx.check("cross-entropy fell and finite", _fell(ce))


# -- control 1 (alarming-looking): batch doubles at step 100, lr doubled with it --------------------


@scenario(
    family="tlachtli_ball_hip_strike_relu_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    heldout=True,
    note="Tlachtli (Mesoamerican ballgame) hip-strike classifier (ReLU MLP on hip angle, "
    "ball speed, spin, wall distance and contact time, classifying 6 strike outcomes; "
    "cross-entropy, SGD momentum). At step 100 the batch doubles from 32 to 64 as planned and "
    "the lr is doubled with it (linear scaling rule): the gradient norm drops (less batch "
    "noise) and the loss jumps a little with the larger step, then keeps falling. Healthy.",
)
def h570_tlachtli_batch_doubling(ctx):
    gen = seeded(5711)
    model = _Net(10, hidden=64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    small = _classes(gen, 32, 10, 6, 57111, spread=1.0, noise=1.0)
    big = _classes(gen, 64, 10, 6, 57111, spread=1.0, noise=1.0)
    ctx.attach(model, opt)
    losses, norms, sizes = [], [], []
    for step in range(220):
        if step == 100:
            for group in opt.param_groups:
                group["lr"] *= 2
        x, y = next(big if step >= 100 else small)
        sizes.append(len(y))
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("batch doubled at step 100", sizes[99] == 32 and sizes[100] == 64)
    ctx.check(
        "gradient norm dropped after the doubling",
        _median(norms[100:140]) < 0.9 * _median(norms[60:100]),
    )
    ctx.check("loss fell and finite", _fell(losses))


# -- control 2: a Hugging Face ViT from a tiny config over generated images -------------------------


def _lacquer_images(gen, batch, size=16):
    """Four gold-dust patterns on black lacquer: rows, columns, diagonals, checks."""
    r = torch.arange(size).float()
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = 0.6 + 0.6 * torch.rand(batch, 1, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, 1, generator=gen)
        rows = torch.sin(freq * yy + phase)
        cols = torch.sin(freq * xx + phase)
        diag = torch.sin(freq * (xx + yy) / 1.4 + phase)
        chk = torch.sin(freq * xx + phase) * torch.sin(freq * yy + phase)
        pats = torch.stack([rows, cols, diag, chk], 1)[torch.arange(batch), y]
        img = pats.unsqueeze(1).repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.8, 0.3]).view(1, 3, 1, 1)
        yield img + 0.3 * torch.randn(batch, 3, size, size, generator=gen), y


@scenario(
    family="maki_e_lacquer_gold_dust_vit_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Maki-e lacquer gold-dust pattern classifier: a Hugging Face ViTForImageClassification "
    "built from a tiny config (16x16 images, 4x4 patches, 2 layers, width 32) over generated "
    "images of 4 sprinkled-gold patterns with noise; cross-entropy with label smoothing 0.1, "
    "AdamW, 15-step linear warm-up then cosine decay, clipping at 1.0. Healthy.",
)
def h570_maki_e_vit(ctx):
    from transformers import ViTConfig, ViTForImageClassification

    gen = seeded(5712)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=4,
    )
    model = ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    acc = []

    def loss_fn(logits, y):
        acc.append(float((logits.argmax(-1) == y).float().mean()))
        return F.cross_entropy(logits, y, label_smoothing=0.1)

    def forward(x):
        return model(pixel_values=x).logits

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _lacquer_images(gen, 32),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        forward=forward,
    )
    ctx.check("loss fell and finite", _fell(losses))
    ctx.check("accuracy over 60% over the last 20 steps", _mean(acc[-20:]) > 0.6)


# -- control 3: fp16 autocast + GradScaler, accumulation, ReduceLROnPlateau ------------------------


@scenario(
    family="udon_dough_knead_hydration_fp16_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Udon dough knead-hydration regressor (GELU MLP on flour protein, salt-water ratio, "
    "foot-knead time, rest time and room humidity, predicting dough hydration; Huber, RAdam, "
    "fp16 autocast + GradScaler, 2 micro-batches of accumulation, ReduceLROnPlateau on the "
    "loss, noisy scale readings). Healthy.",
)
def h570_udon_fp16_accumulation(ctx):
    gen = seeded(5713)
    model = _Net(5, hidden=64, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 32, 5, 57131, noise=0.15)
    losses = []
    for _step in range(160):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            part = F.huber_loss(out.float(), y)
            scaler.scale(part / 2).backward()
            total += float(part.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(total)
        ctx.step(torch.tensor(total))
        sched.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and finite", _fell(losses))
    ctx.check("grad scale stayed positive and finite", all(0 < s < 1e9 for s in ctx.scales))
