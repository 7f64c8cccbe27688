"""Held-out set 388 (``h388_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a scherenschnitte cut-motif classifier whose softmax temperature is typed 0.01 for 1.0
(the softmax saturates), a halyard-winch load regressor whose warm-up factor is inverted (the
first steps run at up to 50x the rate and the ReLUs die), a rigging-shroud chafe multi-label BCE
net whose class weights are reloaded in percent for one resumed step (one gradient burst), a
lime-wash efflorescence Poisson net whose rate comes out of a bare ReLU (log 0 = -inf once a
rate reaches 0), a patchwork-quilt block classifier whose embedding group's lr is typed 1e-8
(frozen), a horsehair-plaster key-strength deep tanh MLP initialised with gain 4.0 for 5/3
(gradients grow through depth), a leadlight solder-joint Huber regressor fed one shard in
millimetres (one corrupted batch), a kaleidoscope mirror-wedge regressor whose warm-up peak is
typed 1.5 for 0.15 (past the 2/sharpness limit), a sand-mandala grain-spread regressor whose
hand-written decoupled weight decay has its sign flipped (a slow climb) and a straw-bale wall
grade classifier whose label smoothing is typed -0.1 (the output logits grow without bound).

Controls: a tangram scene slot-attention autoencoder (three iterations, LayerNorm on inputs and
slots, Adam with warm-up), a horology balance-wheel amplitude regressor (fp16 autocast with a
GradScaler, AdamW with a no-decay group, accumulation, ReduceLROnPlateau, Huber loss) and a
sash-window rattle Conv1d classifier (ASGD under OneCycleLR, label smoothing, clipping).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


class _NoCtx:
    """A context for reference runs (the same loop, nothing recorded outside)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y) -> None:
        pass

    def step(self, loss) -> None:
        self.losses.append(float(loss.detach()))


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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count), ``after(step)``
    runs after the optimizer step, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss (once ``ctx.step`` has seen it);
    returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            if watch is not None:
                watch(step, out, x, y)
            out = out.float()
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
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
            return step + 1
    return steps


# -- data -------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _multilabel(gen, batch, d_in, labels, seed):
    """Readings with several binary tags, each a hidden linear rule with a margin of noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w + 0.1 * torch.randn(batch, labels, generator=gen)
        yield x, (z > 0).float()


def _counts(gen, batch, d_in, seed):
    """Readings and Poisson counts of a log-linear rate (many zeros)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(0.9 * x @ w - 0.3)
        yield x, torch.poisson(rate, generator=gen)


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


def _blocks(gen, batch, seed, vocab=40, slots=3, numeric=4, classes=5):
    """Quilt blocks: three fabric ids (categorical) and four measurements; the grade depends on
    a hidden per-fabric score table and the measurements."""
    g = torch.Generator().manual_seed(seed)
    table = 1.5 * torch.randn(vocab, classes, generator=g)
    m = torch.randn(numeric, classes, generator=g)
    while True:
        ids = torch.randint(0, vocab, (batch, slots), generator=gen)
        num = torch.randn(batch, numeric, generator=gen)
        y = (table[ids].sum(1) + num @ m).argmax(-1)
        yield (ids, num), y


def _tangram_scenes(gen, batch, size=12, shapes=2):
    """Scenes of coloured shapes (square, disc, triangle) on a black ground: (batch, size*size, 3)
    colours."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    yy, xx = yy.float(), xx.float()
    while True:
        img = torch.zeros(batch, size, size, 3)
        for b in range(batch):
            for _ in range(shapes):
                kind = int(torch.randint(0, 3, (1,), generator=gen))
                cx, cy = (2.5 + (size - 5) * torch.rand(2, generator=gen)).tolist()
                r = float(1.5 + 1.5 * torch.rand(1, generator=gen))
                colour = 0.2 + 0.8 * torch.rand(3, generator=gen)
                if kind == 0:
                    mask = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
                elif kind == 1:
                    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                else:
                    mask = (yy >= cy - r) & (yy <= cy + r) & ((xx - cx).abs() <= (yy - cy + r) / 2)
                img[b][mask] = colour
        yield img.reshape(batch, size * size, 3), img.reshape(batch, size * size, 3)


# -- models -----------------------------------------------------------------------------------------


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
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


def _accuracy(model, batches, n=4) -> float:
    model.eval()
    hits, total = 0, 0
    with torch.no_grad():
        for _ in range(n):
            x, y = next(batches)
            hits += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return hits / total


# -- softmax collapse ---------------------------------------------------------------------------------


class TemperedClassifier(Trunk):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


def _scherenschnitte_run(ctx, temperature, seed=38801, steps=200):
    gen = seeded(seed)
    model = TemperedClassifier(16, 64, 6, temperature)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    data = _grades(gen, 64, 16, 6, 388011, spread=0.8)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(ctx, model, opt, data, steps, F.cross_entropy, classifier=True, watch=watch)
    return collapsed


@scenario(
    "scherenschnitte_cut_motif_temperature_classifier",
    "SGD",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the paper-cut motif classifier divides its logits by a temperature read from the "
    "config, where 0.01 (the distillation temperature of another experiment) was typed for 1.0; "
    "the 100x sharper softmax rounds the target probability of most rows to exactly 1.0 in "
    "float32 and those rows stop giving any gradient (SGD with Nesterov momentum)",
)
def h388_scherenschnitte_temperature_typo(ctx: Context) -> None:
    collapsed = _scherenschnitte_run(ctx, 0.01)
    ref = _scherenschnitte_run(_NoCtx(), 1.0)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("at temperature 1.0 under 5% of rows collapse", _mean(ref[-20:]) < 0.05)


# -- loss of plasticity -------------------------------------------------------------------------------


def _halyard_run(ctx, inverted, seed=38802, steps=200):
    gen = seeded(seed)
    model = Trunk(10, 64, act=nn.ReLU)
    base, warmup = 1e-2, 50
    opt = torch.optim.Adam(model.parameters(), lr=base)
    data = _readings(gen, 64, 10, 388021)
    dead = []

    def before(step):
        if inverted:  # the bug: warmup / (step + 1) for (step + 1) / warmup
            factor = warmup / (step + 1) if step < warmup else 1.0
        else:
            factor = (step + 1) / warmup if step < warmup else 1.0
        for group in opt.param_groups:
            group["lr"] = base * factor

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))

    _loop(ctx, model, opt, data, steps, F.mse_loss, before=before, watch=watch)
    return dead


@scenario(
    "halyard_winch_load_relu_regressor",
    "Adam",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="the linear warm-up factor is written warmup / (step + 1) instead of (step + 1) / "
    "warmup, so the first steps run at up to 50x the base rate of 1e-2 (Adam); the big early "
    "updates push fc2 so that most of act2's ReLUs are never positive again, and once the rate "
    "is back to normal the regressor stays stuck at a loss far above the intended run's",
)
def h388_halyard_inverted_warmup(ctx: Context) -> None:
    dead = _halyard_run(ctx, True)
    ref_ctx = _NoCtx()
    ref = _halyard_run(ref_ctx, False)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("over 70% of act2's units dead for the last 50 steps", min(dead[-50:]) > 0.7)
    ctx.check("with the intended warm-up under 40% dead", max(ref[-50:]) < 0.4)
    ctx.check(
        "the final loss over 10x that of the intended warm-up",
        _mean(ls[-20:]) > 10 * _mean(ref_ctx.losses[-20:]),
    )


# -- gradient spike -----------------------------------------------------------------------------------


@scenario(
    "rigging_shroud_chafe_multilabel_bce_net",
    "RMSprop",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=140,
    note="a multi-label BCE tagger of chafe types on a yacht's shrouds (RMSprop, clipping at 5); "
    "the run resumes at step 140 and its first step reloads the class weights from a config "
    "written in percent (100 for 1.0), so that one step's backpropagated loss is 100x on clean "
    "data; the gradient bursts, clipping bounds the update and the run goes on",
)
def h388_rigging_percent_class_weights(ctx: Context) -> None:
    gen = seeded(38803)
    model = Trunk(12, 64, out=5, act=nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _multilabel(gen, 64, 12, 5, 388031)

    def backprop(step, loss):
        weight = 100.0 if step == 140 else 1.0
        return weight * loss

    _loop(
        ctx,
        model,
        opt,
        data,
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the gradient at step 140 over 30x the median of steps 120-139",
        gn[140] > 30 * _median(gn[120:140]),
    )
    ctx.check(
        "the loss at step 140 under 1.5x the median of steps 120-139 (the data are clean)",
        ls[140] < 1.5 * _median(ls[120:140]),
    )
    ctx.check(
        "the loss recovers (steps 160-179 under 1.5x steps 120-139)",
        _mean(ls[160:180]) < 1.5 * _mean(ls[120:140]),
    )
    ctx.check("the loss fell over the run", _fell(ls, 20))


# -- nonfinite ----------------------------------------------------------------------------------------


class RateNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head -> rate (the Poisson rate)."""

    def __init__(self, d_in, hidden, rate: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.rate = rate
        nn.init.constant_(self.head.bias, 1.0)

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()


def _lime_wash_run(ctx, rate, seed=38804, steps=200):
    gen = seeded(seed)
    model = RateNet(10, 48, rate)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _counts(gen, 64, 10, 388041)
    zeros = []

    def watch(step, out, x, y):
        zeros.append(int((out.detach() == 0).sum()))

    _loop(ctx, model, opt, data, steps, _poisson_nll, watch=watch)
    return zeros


@scenario(
    "lime_wash_efflorescence_spot_poisson_net",
    "Adam",
    "nonfinite",
    "rate",
    35,
    heldout=True,
    note="a Poisson count model of salt-efflorescence spots on lime-washed walls outputs its rate "
    "through a bare ReLU (the clamp or softplus was left out) and the NLL is written by hand as "
    "rate - y log(rate); as low-count walls pull their rates down, one rate reaches exactly 0 "
    "and log(0) = -inf (0 * -inf = NaN for a zero count) makes the loss non-finite",
)
def h388_lime_wash_relu_rate(ctx: Context) -> None:
    zeros = _lime_wash_run(ctx, nn.ReLU())
    ref = _NoCtx()
    _lime_wash_run(ref, nn.Softplus())
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss non-finite first at step 35", bad == 35)
    ctx.check("finite before it", bad is not None and _finite(ls[:bad]))
    ctx.check("a rate exactly 0 at that step", bad is not None and zeros[bad] > 0)
    ctx.check("with a softplus rate the loss stays finite", _finite(ref.losses))


# -- update ratio out of range ------------------------------------------------------------------------


class QuiltNet(nn.Module):
    def __init__(self, vocab=40, dim=16, slots=3, numeric=4, hidden=64, classes=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(slots * dim + numeric, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, inp):
        ids, num = inp
        h = torch.cat([self.embed(ids).flatten(1), num], -1)
        return self.head(self.act1(self.fc1(h)))


@scenario(
    "patchwork_quilt_block_fabric_embedding_classifier",
    "Adamax",
    "update_ratio_out_of_range",
    "embed",
    None,
    heldout=True,
    note="the quilt-block grader puts its fabric embedding in its own param group whose lr is "
    "typed 1e-8 for 1e-2 (Adamax); the embedding table does not move while the rest of the net "
    "trains at the intended rate, so the grade can only be learnt from the measurements",
)
def h388_patchwork_embedding_lr_typo(ctx: Context) -> None:
    gen = seeded(38805)
    model = QuiltNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("embed")]
    opt = torch.optim.Adamax(
        [{"params": model.embed.parameters(), "lr": 1e-8}, {"params": rest, "lr": 1e-2}]
    )
    e0 = model.embed.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    _loop(ctx, model, opt, _blocks(gen, 64, 388051), 200, F.cross_entropy, classifier=True)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check(
        "the embedding moved under 1e-5 of its norm",
        _rel_change(e0, model.embed.weight) < 1e-5,
    )
    ctx.check("the head moved over 5% of its norm", _rel_change(h0, model.head.weight) > 0.05)


# -- exploding gradients ------------------------------------------------------------------------------


class DeepTanh(nn.Module):
    """``depth`` Linear + tanh layers (``layers.0`` ... ) and a linear head."""

    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


def _depth_ratio(model) -> float:
    first = model.layers[0].weight.grad.norm()
    last = model.layers[-1].weight.grad.norm()
    return float(first / last.clamp_min(1e-30))


def _plaster_run(ctx, gain, seed=38806, steps=150):
    gen = seeded(seed)
    model = DeepTanh(8, 32, 16, gain)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 8, 388061)
    ratios = []
    ctx.attach(model, opt)
    for _ in range(steps):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(_depth_ratio(model))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    return ratios


@scenario(
    "horsehair_plaster_key_strength_deep_tanh_mlp",
    "SGD",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="a sixteen-layer tanh MLP for the key strength of horsehair lime plaster is initialised "
    "with std = gain / sqrt(fan_in) where gain was typed 4.0 for tanh's 5/3; the net sits in the "
    "chaotic regime, each layer multiplies the backward signal by about 1.4 while the tanh keeps "
    "the activations bounded, so the first layer's gradient is hundreds of times the last one's "
    "(plain SGD, clipping at 1)",
)
def h388_horsehair_plaster_init_gain(ctx: Context) -> None:
    ratios = _plaster_run(ctx, 4.0)
    ref = _plaster_run(_NoCtx(), 5.0 / 3.0, steps=5)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("layers.0's gradient over 50x layers.15's at the start", _mean(ratios[:5]) > 50)
    ctx.check("and still over 20x over the last 20 steps", _mean(ratios[-20:]) > 20)
    ctx.check("at gain 5/3 under 5x", _mean(ref[:5]) < 5)


# -- data outlier -------------------------------------------------------------------------------------


@scenario(
    "leadlight_came_solder_joint_huber_regressor",
    "RAdam",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="a solder-joint strength regressor for leaded-light came (RAdam, Huber loss, clipping at "
    "1); the shard served at step 110 comes from a bench logger that records the four joint "
    "dimensions in millimetres instead of metres, so that one batch is x1000 in four columns; "
    "the loss and gradient burst and the run recovers",
)
def h388_leadlight_millimetre_shard(ctx: Context) -> None:
    gen = seeded(38807)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, :4] = x[:, :4] * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 388071),
        200,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the loss at step 110 over 20x the median of 90-109", ls[110] > 20 * _median(ls[90:110])
    )
    ctx.check("the gradient at step 110 over 20x the median", gn[110] > 20 * _median(gn[90:110]))
    ctx.check(
        "the loss recovers (steps 140-159 under 2x steps 90-109)",
        _mean(ls[140:160]) < 2 * _mean(ls[90:110]),
    )


# -- sharpness above the limit ------------------------------------------------------------------------


def _top_eigen(model, x, y, iters=12) -> float:
    """The largest Hessian eigenvalue of the MSE loss on (x, y), by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
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


def _kaleidoscope_run(ctx, peak, seed=38808, steps=200):
    gen = seeded(seed)
    model = Trunk(6, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=peak / 100)
    data = _readings(gen, 64, 6, 388081)
    probe = next(_readings(torch.Generator().manual_seed(388082), 256, 6, 388081))
    warmup = 100
    sharp = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0:
            sharp[step] = (lr, _top_eigen(model, *probe))

    _loop(ctx, model, opt, data, steps, F.mse_loss, before=before)
    return sharp


@scenario(
    "kaleidoscope_mirror_wedge_angle_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=30,
    note="the mirror-wedge regressor (tanh MLP, MSE, plain SGD) warms up linearly over 100 steps "
    "to a peak lr typed 1.5 for 0.15; the run trains during warm-up until lr passes 2 / the top "
    "Hessian eigenvalue (measured about step 30), then the loss oscillates, rises and blows up "
    "(non-finite at step 76)",
)
def h388_kaleidoscope_warmup_peak_typo(ctx: Context) -> None:
    sharp = _kaleidoscope_run(ctx, 1.5)
    ref = _NoCtx()
    ref_sharp = _kaleidoscope_run(ref, 0.15)
    ls = ctx.losses
    finite = [v for v in ls if math.isfinite(v)]
    low = min(finite)
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    past = [s for s, (lr, lam) in sharp.items() if lr * lam > 2.0]
    ctx.check("the loss blows up (over 100x its minimum or non-finite)", blow is not None)
    ctx.check(
        "lr x top eigenvalue passes 2 before the blow-up",
        bool(past) and blow is not None and min(past) < blow,
    )
    ctx.check("the loss fell first", blow is not None and min(ls[:blow]) < 0.5 * ls[0])
    ctx.check("at peak 0.15 the run stays finite and falls", _fell(ref.losses, 20))
    ctx.check(
        "at peak 0.15 lr x eigenvalue stays under 2",
        all(lr * lam < 2.0 for lr, lam in ref_sharp.values()),
    )


# -- slow divergence ----------------------------------------------------------------------------------


def _mandala_run(ctx, sign, seed=38809, steps=300):
    gen = seeded(seed)
    model = Trunk(8, 64, act=nn.GELU)
    lr, wd = 1e-2, 1.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("weight"):
                    p.mul_(1.0 - sign * lr * wd)
            norms.append(float(torch.cat([p.flatten() for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 388091), steps, F.mse_loss, after=after)
    return norms


@scenario(
    "sand_mandala_grain_spread_regressor",
    "NAdam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the grain-spread regressor applies decoupled weight decay by hand after each NAdam step "
    "(lr 1e-2, decay 1.0) as p *= 1 + lr * wd for 1 - lr * wd; the weights inflate by 1% a step "
    "against the gradient's pull and the loss, after falling, climbs slowly for the rest of the run",
)
def h388_sand_mandala_decay_sign(ctx: Context) -> None:
    norms = _mandala_run(ctx, -1.0)
    ref = _NoCtx()
    _mandala_run(ref, 1.0)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss reaches its minimum before step 150", low < 150)
    ctx.check(
        "the last 20 steps over 3x the minimum 20-step mean",
        _mean(ls[-20:]) > 3 * min(_mean(ls[i : i + 20]) for i in range(len(ls) - 20)),
    )
    ctx.check("the weight norm over 3x its start", norms[-1] > 3 * norms[0])
    ctx.check(
        "with the intended sign the last 20 steps are under half as high",
        _mean(ref.losses[-20:]) < 0.5 * _mean(ls[-20:]),
    )


# -- output logit divergence --------------------------------------------------------------------------


def _smoothed_ce(eps, classes):
    def loss(logits, y):
        t = (1 - eps) * F.one_hot(y, classes).float() + eps / classes
        return -(t * F.log_softmax(logits, -1)).sum(-1).mean()

    return loss


def _straw_bale_run(ctx, eps, seed=38810, steps=250):
    gen = seeded(seed)
    model = Trunk(12, 64, out=4, act=nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    logits = []

    def watch(step, out, x, y):
        logits.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, 388101),
        steps,
        _smoothed_ce(eps, 4),
        classifier=True,
        watch=watch,
    )
    return logits


@scenario(
    "straw_bale_wall_grade_smoothed_classifier",
    "Adagrad",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="the straw-bale wall grader writes label smoothing by hand, t = (1 - eps) onehot + eps / K, "
    "with eps typed -0.1 for 0.1; the wrong classes get negative target weights, so the loss has "
    "no lower bound and the head drives their logits down without limit (Adagrad)",
)
def h388_straw_bale_negative_smoothing(ctx: Context) -> None:
    logits = _straw_bale_run(ctx, -0.1)
    ref = _straw_bale_run(_NoCtx(), 0.1)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check(
        "max |logit| over the last 20 steps over 20x that of the first 5",
        _mean(logits[-20:]) > 20 * _mean(logits[:5]),
    )
    ctx.check(
        "still growing (last 20 over 1.3x steps 150-169)",
        _mean(logits[-20:]) > 1.3 * _mean(logits[150:170]),
    )
    ctx.check(
        "with eps 0.1 the logits grow under a third as much",
        _mean(ref[-20:]) < _mean(logits[-20:]) / 3,
    )


# -- controls -----------------------------------------------------------------------------------------


class SlotAttention(nn.Module):
    """Slot attention (Locatello et al. 2020): learnt slots compete for the inputs (softmax over
    the slots), each slot takes the weighted mean of its inputs and is updated by a GRU cell and
    a residual MLP, for ``iters`` iterations."""

    def __init__(self, dim, slots, iters=3, hidden=64):
        super().__init__()
        self.slots, self.iters, self.dim = slots, iters, dim
        self.slots_mu = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.slots_logsigma = nn.Parameter(torch.full((1, 1, dim), -1.0))
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, inputs):
        b, n, d = inputs.shape
        x = self.norm_inputs(inputs)
        k, v = self.to_k(x), self.to_v(x)
        noise = torch.randn(b, self.slots, d)
        slots = self.slots_mu + self.slots_logsigma.exp() * noise
        for _ in range(self.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            logits = torch.einsum("bkd,bnd->bkn", q, k) / math.sqrt(d)
            attn = logits.softmax(dim=1) + 1e-8  # the slots compete for each input
            attn = attn / attn.sum(-1, keepdim=True)
            updates = torch.einsum("bkn,bnd->bkd", attn, v)
            slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).reshape(b, -1, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots


class TangramAutoencoder(nn.Module):
    """Per-pixel encoder with a position embedding, slot attention, and a broadcast decoder that
    gives each slot a colour and a mask logit per pixel (masks softmaxed over the slots)."""

    def __init__(self, size=12, dim=32, slots=3):
        super().__init__()
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij"
        )
        self.register_buffer("grid", torch.stack([xx, yy, 1 - xx, 1 - yy], -1).reshape(-1, 4))
        self.enc_pos = nn.Linear(4, dim)
        self.encoder = nn.Sequential(nn.Linear(3, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.enc_mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.slot_attention = SlotAttention(dim, slots, iters=3)
        self.dec_pos = nn.Linear(4, dim)
        self.decoder = nn.Sequential(
            nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
        )

    def forward(self, img):
        h = self.encoder(img) + self.enc_pos(self.grid)
        slots = self.slot_attention(self.enc_mlp(F.relu(h)))
        z = slots[:, :, None, :] + self.dec_pos(self.grid)[None, None]
        out = self.decoder(z)  # (b, k, n, 4)
        colour, mask = torch.sigmoid(out[..., :3]), out[..., 3:].softmax(dim=1)
        return (colour * mask).sum(1)


@scenario(
    "tangram_piece_scene_slot_attention_autoencoder",
    "Adam",
    "healthy",
    heldout=True,
    note="control: slot attention (three iterations, LayerNorm on the inputs and the slots, GRU "
    "update, residual MLP) over generated scenes of two coloured shapes, broadcast decoder with "
    "masks softmaxed over the slots, MSE reconstruction, Adam with a 30-step linear warm-up "
    "then cosine decay, clipping at 1",
)
def h388_tangram_slot_attention_control(ctx: Context) -> None:
    gen = seeded(38811)
    model = TangramAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps, warmup = 160, 30

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * 0.9 + 0.1

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    _loop(ctx, model, opt, _tangram_scenes(gen, 16), steps, F.mse_loss, sched=sched, clip=1.0)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the reconstruction loss fell under half (last 20 vs first 10)", _fell(ls, 20, 0.5))


@scenario(
    "horology_balance_wheel_amplitude_fp16_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a balance-wheel amplitude regressor under fp16 autocast with a GradScaler, "
    "AdamW with a no-decay group for biases, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1, Huber loss",
)
def h388_horology_fp16_control(ctx: Context) -> None:
    gen = seeded(38812)
    model = Trunk(10, 64, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_readings(torch.Generator().manual_seed(388121), 256, 10, 388122))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 388122),
        150,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.5x the first 10)", _fell(ls, 20, 0.5))
    ctx.check("the scale never dropped below its start", min(ctx.scales) >= 2.0**12)


class RattleConv(nn.Module):
    def __init__(self, channels=2, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.amax(-1))


@scenario(
    "sash_window_rattle_conv1d_classifier",
    "ASGD",
    "healthy",
    heldout=True,
    note="control: a Conv1d classifier of sash-window rattle traces, ASGD under OneCycleLR "
    "(no momentum cycling), label smoothing 0.1, clipping at 1",
)
def h388_sash_window_control(ctx: Context) -> None:
    gen = seeded(38813)
    model = RattleConv()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.5, total_steps=steps, cycle_momentum=False
    )
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 388131),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.6x the first 10)", _fell(ls, 20, 0.6))
    acc = _accuracy(model, _traces(torch.Generator().manual_seed(388132), 64, 5, 388131))
    ctx.check("held-out accuracy over 0.6 (chance 0.2)", acc > 0.6)
