"""Held-out set 329 (``h329_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena: a chess-boxing round-outcome student distilled from a frozen teacher whose
distillation temperature is read from the config's ``kd_alpha`` (0.02) instead of
``kd_temperature`` (softmax saturates), a bowyer limb-tiller regressor whose freeze list matches
the prefix "f" and so puts fc1 and fc2 in the lr-0 group with the pretrained FiLM layer (frozen
layers), a fistball return-height Huber regressor whose accumulation path sum-reduces one step's
loss (one gradient burst), a tamburello volley-distance GELU regressor whose fine-tuning callback
resets the head at step 120 (one loss spike), a mud-volcano mud-flux regressor fed one shard whose
targets were logged in litres instead of cubic metres (one corrupted batch), a fire-whirl
column-height Gaussian NLL net whose variance lost its softplus (log 0, NaN), a bellfounder
strike-note 12-layer ReLU MLP whose init applies the ReLU gain twice (gradients grow through
depth), a jai-alai cesta-rebound tanh MLP whose StepLR gamma is typed 10 for 0.1 (past
2/sharpness), a saddler stitch-tension regressor whose L2 penalty is subtracted (slow climb), a
sundog halo-brightness regressor whose loss weight is read as 1e5 for one step (Adam's second
moment poisoned), and three controls (a buzkashi carcass-grab student distilled at temperature 4,
a mammatus cloud-lobe fp16 Conv1d classifier with a GradScaler and OneCycleLR, a lelo-burti scrum
push dropout regressor with ReduceLROnPlateau and accumulation).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moves(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        n: float((p.detach() - before[n]).norm() / (before[n].norm() + 1e-12))
        for n, p in model.named_parameters()
    }


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated, ``after(step)`` runs after the optimizer
    step, ``plateau()`` returns the validation loss for a ReduceLROnPlateau ``sched``. Stops after
    a non-finite loss; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y - 0.3 + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=0.7):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2):
    """Short two-channel traces: each class has its own pair of frequencies and decay."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    decay = 0.01 + 0.05 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> (drop) -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.drop(self.act2(self.fc2(self.act1(self.fc1(x))))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, batch, iters=20):
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- knowledge distillation: a frozen teacher and a student trained on its soft targets -----------


def _teacher(d_in, classes, seed, steps=150):
    """Train the teacher (a wider GELU MLP) on the labels, then freeze it."""
    gen = torch.Generator().manual_seed(seed + 1)
    teacher = Net(d_in, 128, classes, act=nn.GELU)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    batches = _classes(gen, 64, d_in, classes, seed)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(teacher(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class DistilStudent(nn.Module):
    """A narrow ReLU student whose output is its logits divided by the distillation temperature
    (the pipeline's "tempered head": the same temperature softens the teacher's targets)."""

    def __init__(self, d_in, classes, temperature, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


KD_CONFIG = {"kd_temperature": 4.0, "kd_alpha": 0.02}


@scenario(
    family="chess_boxing_round_outcome_kd_student_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Knowledge distillation, hand-written: a frozen teacher (a wide GELU MLP trained first on the labels, then frozen) and a narrow ReLU student (fc1, act1, fc2, act2, head) whose output is head(...) / T, trained with AdamW on the teacher's soft targets softmax(teacher / T) (soft cross-entropy times T^2) to predict a chess-boxing round's outcome (6 classes) from 12 standardised readings, 250 steps. The temperature is read from the config's kd_alpha (0.02) instead of kd_temperature (4.0): the teacher's targets are one-hot in float32 and the student's outputs are its logits times 50, so the student's softmax saturates: the share of rows whose target probability is exactly 1.0 climbs from none at the first step to over a quarter (about two fifths) while the loss stays finite.",
)
def h329_chess_boxing_kd_temperature_key(ctx: Context) -> None:
    gen = seeded(32901)
    teacher = _teacher(12, 6, 32901)
    temperature = KD_CONFIG["kd_alpha"]  # meant KD_CONFIG["kd_temperature"]
    model = DistilStudent(12, 6, temperature)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    collapsed, teacher_sat = [], []

    def batches():
        for x, y in _classes(gen, 64, 12, 6, 32901):
            with torch.no_grad():
                soft = torch.softmax(teacher(x) / temperature, -1)
            teacher_sat.append(float((soft.max(-1).values == 1.0).float().mean()))
            yield x, (soft, y)

    def loss_fn(out, target):
        soft, _ = target
        return F.cross_entropy(out, soft) * temperature**2

    def watch(step, out, x, target):
        collapsed.append(collapsed_fraction(out.detach(), target[1]))

    ctx.attach(model, opt)
    stream = batches()
    for _step in range(250):
        x, (soft, y) = next(stream)
        ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, (soft, y))
        watch(_step, out, x, (soft, y))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("under a tenth of rows saturated at the first step", collapsed[0] < 0.1)
    ctx.check("over a quarter of rows' softmax is exactly 1.0 late", _mean(collapsed[-20:]) > 0.25)
    ctx.check("the teacher's targets are one-hot in float32", _mean(teacher_sat) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="buzkashi_carcass_grab_kd_student_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Knowledge distillation, hand-written, a healthy control: a frozen teacher (a wide GELU MLP trained first, then frozen) and a narrow ReLU student (fc1, act1, fc2, act2, head) predicting which rider grabs the carcass in a buzkashi scrum (5 classes) from 10 readings, NAdam, Hinton's loss 0.7 x T^2 x soft cross-entropy at temperature 4 plus 0.3 x cross-entropy on the labels, 200 steps.",
)
def h329_buzkashi_kd_control(ctx: Context) -> None:
    gen = seeded(32911)
    teacher = _teacher(10, 5, 32911)
    temperature, alpha = 4.0, 0.7
    model = Net(10, 32, 5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    acc = []

    def batches():
        for x, y in _classes(gen, 64, 10, 5, 32911):
            with torch.no_grad():
                soft = torch.softmax(teacher(x) / temperature, -1)
            yield x, (soft, y)

    ctx.attach(model, opt)
    stream = batches()
    for _ in range(200):
        x, (soft, y) = next(stream)
        ctx.targets(y)
        out = model(x)
        kd = F.cross_entropy(out / temperature, soft) * temperature**2
        loss = alpha * kd + (1 - alpha) * F.cross_entropy(out, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        acc.append(float((out.argmax(1) == y).float().mean()))
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("late accuracy is over 70%", _mean(acc[-20:]) > 0.7)


# -- bowyer: the freeze list's prefix "f" freezes fc1 and fc2 with the FiLM layer ----------------


class TillerNet(nn.Module):
    """A bow-limb tiller regressor: a pretrained FiLM layer turns the wood species into a scale
    and shift of the first hidden layer; fc1 -> FiLM -> SiLU -> fc2 -> SiLU -> head."""

    def __init__(self, d_in=10, species=6, hidden=64):
        super().__init__()
        self.film = nn.Embedding(species, 2 * hidden)
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.film.weight.normal_(0.0, 0.1)

    def forward(self, inputs):
        x, s = inputs
        scale, shift = self.film(s).chunk(2, -1)
        h = F.silu(self.fc1(x) * (1 + scale) + shift)
        return self.head(F.silu(self.fc2(h))).squeeze(-1)


def _tillers(gen, batch, seed):
    base = _readings(gen, batch, 10, seed)
    g = torch.Generator().manual_seed(seed)
    offset = 0.4 * torch.randn(6, generator=g)
    while True:
        x, y = next(base)
        s = torch.randint(0, 6, (batch,), generator=gen)
        yield (x, s), y + offset[s]


@scenario(
    family="bowyer_limb_tiller_film_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written regressor (film: a pretrained species embedding giving a scale and shift of fc1's output, fc1, fc2, head, SiLU) predicting a bowyer's limb tiller (bend mismatch) from ten standardised readings and the wood species, Adagrad with two parameter groups, MSE, 200 steps. The FiLM layer is meant to stay frozen and the freeze list is written as names starting with 'f' (meant 'film'): fc1 and fc2 land in the lr-0 group with it, so they never move (relative update 0) while the head trains at 5e-2 and the loss only falls as far as a linear read-out of the random features allows.",
)
def h329_bowyer_freeze_prefix(ctx: Context) -> None:
    gen = seeded(32902)
    model = TillerNet()
    frozen = [p for n, p in model.named_parameters() if n.startswith("f")]  # meant "film"
    rest = [p for n, p in model.named_parameters() if not n.startswith("f")]
    opt = torch.optim.Adagrad([{"params": frozen, "lr": 0.0}, {"params": rest}], lr=5e-2)
    start = _snapshot(model)
    _loop(ctx, model, opt, _tillers(gen, 64, 32902), 200, F.mse_loss)
    moved = _moves(model, start)
    ctx.check(
        "fc1 and fc2 moved under 1e-6 of their norm",
        max(moved["fc1.weight"], moved["fc2.weight"]) < 1e-6,
    )
    ctx.check("the head moved over 5% of its norm", moved["head.weight"] > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fistball: the accumulation path sum-reduces one step's loss ----------------------------------

ONSET_FB = 130


@scenario(
    family="fistball_return_height_silu_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FB,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a fistball return's apex height from twelve standardised readings, SGD with momentum 0.9, Huber loss, gradient accumulation over 4 micro-batches of 32, clipping at 1.0, 220 steps. At step 130 (the first step after the sampler is resumed) the accumulation path takes a branch written for reduction='sum' and multiplies each micro-batch's mean loss by the 128 rows of the window instead of dividing it by 4: on an ordinary batch the gradient norm is over 100x its median for that one step, clipping caps the update and the run goes on training.",
)
def h329_fistball_sum_reduced_window(ctx: Context) -> None:
    gen = seeded(32903)
    model = Net(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scale = []

    def backprop(step, loss, accumulate):
        if step == ONSET_FB:
            return loss * 32 * accumulate  # the sum branch: meant loss / accumulate
        return loss / accumulate

    def watch(step, out, x, y):
        scale.append(float(x.abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 32903),
        220,
        F.huber_loss,
        backprop=backprop,
        watch=watch,
        clip=1.0,
        accumulate=4,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("the gradient at onset is over 100x the median", g[ONSET_FB] > 100 * _median(g))
    ctx.check(
        "the batch at onset is ordinary (inputs under 2x the usual maximum)",
        max(scale[4 * ONSET_FB : 4 * ONSET_FB + 4]) < 2 * _median(scale),
    )
    ctx.check("the loss fell", _fell(ls))
    ctx.check("finite throughout", _finite(ls))


# -- tamburello: a fine-tuning callback resets the head at step 120 ------------------------------

ONSET_TB = 120


@scenario(
    family="tamburello_volley_distance_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=ONSET_TB,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a tamburello volley's distance from ten standardised readings, Adam at 2e-3, MSE, 240 steps. A 're-warm' callback written for a fine-tuning recipe (re-initialise the task head when the dataset switches) is left in the config and fires at step 120 on the same data: head.reset_parameters() throws away the trained head, the loss jumps several times over on ordinary batches for a step or two and the run recovers to its previous level within about 60 steps.",
)
def h329_tamburello_head_rewarm_callback(ctx: Context) -> None:
    gen = seeded(32904)
    model = Net(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def before(step):
        if step == ONSET_TB:
            model.head.reset_parameters()  # the fine-tuning re-warm callback

    _loop(ctx, model, opt, _readings(gen, 64, 10, 32904), 240, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _median(ls[ONSET_TB - 20 : ONSET_TB])
    ctx.check("the loss at onset is over 4x the 20 steps before", ls[ONSET_TB] > 4 * pre)
    ctx.check("the run recovers (last 20 under 1.5x the level before)", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- mud volcano: one shard's flux targets in litres instead of cubic metres ---------------------

ONSET_MV = 110


@scenario(
    family="mud_volcano_gryphon_flux_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MV,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting a mud volcano gryphon's (standardised) mud flux from eight gauge readings, plain SGD at 0.05, MSE, clipping at 1.0, 220 steps. The batch at step 110 comes from a field shard whose flux was logged in litres instead of cubic metres and standardised with the other shards' statistics: its targets are about a thousand times the usual scale, that batch's loss jumps by orders of magnitude, the clipped step disturbs the weights and the run recovers on the ordinary batches that follow.",
)
def h329_mud_volcano_litre_shard(ctx: Context) -> None:
    gen = seeded(32905)
    model = Net(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scale = []

    def alter(step, x, y):
        if step == ONSET_MV:
            y = y * 1000.0  # the shard in litres
        scale.append(float(y.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, 32905), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    pre = _median(ls[ONSET_MV - 20 : ONSET_MV])
    ctx.check("the shard's targets are over 100x the usual", scale[ONSET_MV] > 100 * _median(scale))
    ctx.check("the loss of the bad batch is over 1000x the steps before", ls[ONSET_MV] > 1000 * pre)
    ctx.check("the run recovers", _mean(ls[-10:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- fire whirl: the Gaussian variance lost its softplus ------------------------------------------


def _whirls(gen, batch, seed):
    """Fire-whirl readings and a column height whose noise depends on the wind shear."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(8))
        sd = 0.05 + 0.4 * torch.sigmoid(2 * x[:, 0])
        yield x, mu + sd * torch.randn(batch, generator=gen)


@scenario(
    family="fire_whirl_column_height_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("head",),
    diverges=53,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head with two outputs) predicting a fire whirl's column height and its uncertainty from eight readings (heat release, wind shear, ...), RAdam, a hand-written Gaussian NLL 0.5 log var + (y - mu)^2 / (2 var), 200 steps planned. The variance is meant to be softplus(head[1]) + 1e-6 and is written relu(head[1]) with no floor; it starts at 1 but as the net learns that the low-shear heights are nearly noiseless one row's variance reaches exactly 0: log 0 = -inf and (y - mu)^2 / 0 = inf, and the loss is NaN at step 53, where the run stops.",
)
def h329_fire_whirl_variance_without_softplus(ctx: Context) -> None:
    gen = seeded(32906)
    model = Net(8, 64, out=2)
    with torch.no_grad():
        model.head.bias[1].fill_(1.0)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    low = []

    def nll(out, y):
        mu, var = out[:, 0], F.relu(out[:, 1])  # meant F.softplus(out[:, 1]) + 1e-6
        return (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()

    def watch(step, out, x, y):
        low.append(float(F.relu(out[:, 1].detach()).min()))

    stop = _loop(ctx, model, opt, _whirls(gen, 64, 32906), 200, nll, watch=watch)
    ls = ctx.losses
    ctx.check("every variance is positive for the first 20 steps", min(low[:20]) > 0)
    ctx.check(
        "the loss is finite until the step it stops at",
        _first_bad(ls) == stop == len(ls) - 1 and stop > 20,
    )
    ctx.check("a variance is exactly 0 at the non-finite step", low[-1] == 0.0)


# -- bellfounder: the init helper applies the ReLU gain twice -------------------------------------


class DeepRelu(nn.Module):
    """layers.0 ... layers.11 (Linear, ReLU after each) then head; keeps each layer's output."""

    def __init__(self, d_in=16, hidden=48, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for layer in self.layers:
            std = gain * math.sqrt(2.0 / layer.in_features)
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


LR_BF = 7e-5


@scenario(
    family="bellfounder_strike_note_deep_relu_mlp",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A hand-written 12-layer ReLU MLP (layers.0 ... layers.11, head) predicting a cast bell's strike-note deviation (cents, standardised) from sixteen moulding readings, SGD with Nesterov momentum 0.9 at 7e-5, MSE, 150 steps planned. The init helper computes He's std sqrt(2 / fan_in) and multiplies it by nn.init.calculate_gain('relu') = sqrt(2) again (the gain applied twice): every layer doubles the variance, the gradient reaching layers.0's output is tens of times the one at the last hidden layer, the first updates are enormous and the loss blows up to NaN within ten steps (at 5e-5 the same run still trains).",
)
def h329_bellfounder_double_relu_gain(ctx: Context) -> None:
    gen = seeded(32907)
    model = DeepRelu(gain=nn.init.calculate_gain("relu"))  # meant gain=1.0 (He std already)
    opt = torch.optim.SGD(model.parameters(), lr=LR_BF, momentum=0.9, nesterov=True)
    ratios = []
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 16, 32907)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model.outs[0].grad.norm() / (model.outs[-1].grad.norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("layers.0's output gradient is over 20x the last layer's at step 0", ratios[0] > 20)
    ctx.check(
        "the loss blows up over 1e6x its start",
        _first_bad(ls) is not None or max(ls) > 1e6 * ls[0],
    )


# -- jai alai: StepLR's gamma typed 10 for 0.1 -----------------------------------------------------

ONSET_JA = 60


@scenario(
    family="jai_alai_cesta_rebound_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_JA,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting where a jai-alai pelota rebounds off the frontis from eight standardised readings of the cesta throw, plain SGD at 0.05, MSE, StepLR every 60 steps, 200 steps planned. The step decay's gamma is typed 10 for 0.1: at step 60 the learning rate becomes 0.5, past 2/sharpness (the loss's top Hessian eigenvalue, measured by power iteration every 5 steps, is about 5-10), and the loss oscillates and grows geometrically until it overflows.",
)
def h329_jai_alai_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(32908)
    model = Net(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_JA, gamma=10.0)  # meant 0.1
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, 32908))
    lams, lrs = {}, []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 5 == 0:
            lams[step] = _sharpness(model, F.mse_loss, probe)

    _loop(
        ctx, model, opt, _readings(gen, 64, 8, 32908), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    low = min(ls[:ONSET_JA])
    past = next(
        (s for s in range(len(lrs)) if lrs[s] > 2.0 / lams[max(k for k in lams if k <= s)]), None
    )
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss fell before the decay step", low < 0.5 * ls[0])
    ctx.check(
        "the learning rate passed 2/sharpness at the decay step, before the blow-up",
        past == ONSET_JA and blown is not None and past < blown,
    )
    ctx.check(
        "the loss blew up over 1e6x its low", _first_bad(ls) is not None or max(ls) > 1e6 * low
    )


# -- saddler: the L2 penalty subtracted instead of added -----------------------------------------


WD_SD = 0.3
LR_SD = 1e-3


@scenario(
    family="saddler_stitch_tension_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the thread tension a saddler's saddle-stitch needs from ten standardised readings (leather thickness, awl size, thread), RMSprop at 1e-3, MSE, 250 steps. The hand-written L2 penalty (wd 0.3) is written loss - wd * sum(p^2) (a sign typo): once the fit has converged the penalty's gradient dominates, the weights grow steadily and the data loss climbs slowly to several times its low, with no jump.",
)
def h329_saddler_l2_sign(ctx: Context) -> None:
    gen = seeded(32909)
    model = Net(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=LR_SD)
    wd = WD_SD
    norms = []

    def backprop(step, loss, accumulate):
        l2 = sum((p * p).sum() for p in model.parameters())
        return (loss - wd * l2) / accumulate  # meant loss + wd * l2

    def after(step):
        norms.append(float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 32909),
        250,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ls = ctx.losses
    lo = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    win = [_mean(ls[i : i + 10]) for i in range(lo, len(ls) - 9, 10)]
    jumps = max((b / a for a, b in zip(win[:-1], win[1:], strict=True)), default=99.0)
    ctx.check("the loss fell first", _mean(ls[max(0, lo - 5) : lo + 5]) < 0.5 * ls[0])
    ctx.check(
        "the loss climbs to over 3x its low",
        _mean(ls[-10:]) > 3 * _mean(ls[max(0, lo - 5) : lo + 5]),
    )
    ctx.check("the weights grew over 1.5x", norms[-1] > 1.5 * norms[lo])
    ctx.check("no jump: each 10-step mean under 2x the one before", jumps < 2)
    ctx.check("finite throughout", _finite(ls))


# -- sundog: a loss weight read as 1e5 for one step ------------------------------------------------

ONSET_SD = 100


@scenario(
    family="sundog_parhelion_brightness_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SD,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a sundog's (parhelion's) brightness from twelve standardised sky readings (sun elevation, ice-crystal habit, ...), Adam with betas (0.9, 0.999) at 1e-3, MSE, 240 steps. At step 100 the loss-weight table is re-read after a config reload and for one step the column holding the number of calibration images (1e5) is read as the weight: one gradient about 1e5 times the usual fills Adam's second moment, and with beta2 0.999 every update afterwards is far smaller while the gradients are back to normal, so the loss stalls.",
)
def h329_sundog_weight_column_shift(ctx: Context) -> None:
    gen = seeded(32910)
    model = Net(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    moves, prev = [], {}

    def backprop(step, loss, accumulate):
        weight = 1e5 if step == ONSET_SD else 1.0  # the image-count column read as the weight
        return weight * loss / accumulate

    def before(step):
        prev.update(_snapshot(model))

    def after(step):
        moves.append(
            math.sqrt(
                sum(float(((p.detach() - prev[n]) ** 2).sum()) for n, p in model.named_parameters())
            )
        )

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 32910),
        240,
        F.mse_loss,
        backprop=backprop,
        before=before,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("the gradient at onset is over 1000x the median", g[ONSET_SD] > 1000 * _median(g))
    ctx.check(
        "the gradients after onset are of the usual order",
        _median(g[ONSET_SD + 60 :]) < 10 * _median(g[ONSET_SD - 30 : ONSET_SD]),
    )
    ctx.check(
        "updates 60 steps on are under 1/20 of those before",
        _median(moves[ONSET_SD + 60 :]) < _median(moves[ONSET_SD - 30 : ONSET_SD]) / 20,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------


class LobeConv(nn.Module):
    """conv1 -> GELU -> conv2 -> GELU -> global average -> head, over a two-channel trace."""

    def __init__(self, classes, channels=2, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2, stride=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="mammatus_cloud_lobe_fp16_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU Conv1d classifier (conv1, conv2, global average, head) sorting mammatus cloud lobes into 4 kinds from two-channel lidar backscatter traces (48 samples), SGD with momentum 0.9, fp16 autocast with a torch.amp.GradScaler, OneCycleLR to 0.3, label smoothing 0.1, clipping at 1.0 after unscaling, 200 steps. A healthy control.",
)
def h329_mammatus_fp16_control(ctx: Context) -> None:
    gen = seeded(32912)
    model = LobeConv(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    def smooth(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 32912),
        200,
        smooth,
        classifier=True,
        sched=sched,
        clip=1.0,
        scaler=scaler,
        amp=True,
        watch=watch,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("late accuracy is over 80%", _mean(acc[-20:]) > 0.8)


@scenario(
    family="lelo_burti_scrum_push_dropout_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP with dropout 0.1 (fc1, act1, fc2, act2, drop, head) predicting how far a lelo burti scrum pushes the ball from ten noisy standardised readings, Adamax at 2e-3, Huber loss, gradient accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau on a held-out batch's loss, 200 steps. A healthy control.",
)
def h329_lelo_burti_plateau_control(ctx: Context) -> None:
    gen = seeded(32913)
    model = Net(10, 64, act=nn.SiLU, dropout=0.1)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    xv, yv = next(_readings(torch.Generator().manual_seed(5), 256, 10, 32913, noise=0.2))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 32913, noise=0.2),
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check(
        "the held-out loss is under half its start",
        plateau() < 0.5 * float(F.huber_loss(torch.zeros_like(yv), yv)),
    )
