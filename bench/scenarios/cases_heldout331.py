"""Held-out set 331 (``h331_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a giant-marrow show-weight regressor that converts kilograms to
grams inside the fp16 autocast region (the largest marrows overflow fp16), a ukai cormorant-dive
attention pointer whose query/key group's learning rate is typed 3e-2 for 3e-4 (attention logits
grow), a pearl-diving breath-hold GELU regressor whose resume step skips the static loss-scale
divide (Adam's second moment poisoned), a snowpack-creep deep LeakyReLU MLP initialised with the
uniform bound sqrt(6/fan_in) used as a normal std (gradients grow through depth), a bell-foundry
tap-tone Conv1d classifier fed one shard logged in millivolts (one corrupted batch), a lavender
bloom-date Gaussian NLL net whose variance is elu(head) without the +1 (log of a negative, NaN),
a chimney-sweep flue-draught MLP whose layer-wise lr decay is typed 0.08 for 0.8 (lower blocks
frozen), a firn close-off ReLU classifier whose Adagrad lr is typed 1.0 for 1e-2 (ReLUs die), a
coppice-regrowth SiLU regressor whose OneCycleLR max_lr is typed 4.0 for 0.04 (past
2/sharpness), a spelunking rope-ascent Huber regressor whose last-batch branch sums instead of
averaging for one step (one gradient burst), and three controls (a cider-apple dual encoder with
in-batch negatives, a large batch and a linear warm-up; a frazil-pancake GRU classifier with
ReduceLROnPlateau, label smoothing and clipping; a horseshoe-pitch tied autoencoder under fp16
autocast with a GradScaler and accumulation).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded


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
    pre_step=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``pre_step(step)`` runs between backward and the step, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if pre_step is not None:
            pre_step(step)
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _tones(gen, batch, classes, seed, length=40, channels=2):
    """Short decaying two-channel tones: each class has its own partials and decay."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.2 + 0.7 * torch.rand(classes, channels, generator=g)
    decay = 0.01 + 0.06 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


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


# -- giant marrow: kg -> g inside the fp16 autocast region overflows ------------------------------


class MarrowNet(Trunk):
    """A GELU trunk predicting kilograms; the forward converts to grams for the show's scales."""

    def forward(self, x):
        kg = self.head(self.features(x)).squeeze(-1)
        return kg * 1000.0  # under autocast this product is fp16: over 65.504 kg it is inf


def _marrows(gen, batch, seed):
    """Eight standardised growing readings; show weight in grams, about 30-85 kg."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        kg = 52.0 + 14.0 * torch.tanh(x @ w / math.sqrt(8)) + 4.0 * x[:, 0]
        yield x, 1000.0 * (kg + 0.5 * torch.randn(batch, generator=gen))


DIV_GM = 49


@scenario(
    family="giant_marrow_show_weight_fp16_gram_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("head",),
    diverges=DIV_GM,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a giant show marrow's weight from eight standardised growing readings, Adamax at 3e-3, fp16 autocast with a torch.amp.GradScaler (initial scale 2^12), 200 steps planned, MSE in kg^2 (the gram error divided by 1e6), head bias started at the 52 kg mean. The head predicts kilograms and the forward converts to grams for the show's scales (kg * 1000) inside the autocast region, so the product is fp16: it trains in fp32, but once the net learns to predict the biggest marrows (over 65.504 kg) their gram prediction overflows fp16's 65504 to inf and the loss is inf at the step where it first happens (the same batch in fp32 is finite); the run stops there.",
)
def h331_giant_marrow_fp16_gram_overflow(ctx: Context) -> None:
    gen = seeded(33101)
    model = MarrowNet(8, 64, act=nn.GELU)
    with torch.no_grad():
        model.head.bias.fill_(52.0)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    peaks = []
    last = {}

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))
        last["x"] = x

    def loss_fn(out, y):
        return F.mse_loss(out, y) / 1e6

    n = _loop(
        ctx, model, opt, _marrows(gen, 64, 331), 200, loss_fn, watch=watch, scaler=scaler, amp=True
    )
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is inf (not a number) at the step it stops",
        bad == n - 1 and math.isinf(ctx.losses[-1]),
    )
    with torch.no_grad():
        fp32 = model(last["x"])
    ctx.check(
        "the same batch in fp32 is finite and its largest prediction is over 65504 g",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check(
        "every loss before it was finite", _finite(ctx.losses[:-1]) and bad is not None and bad > 10
    )
    ctx.check("the run stops at the declared step", bad == DIV_GM)


# -- ukai: a cormorant-dive attention pointer whose q/k group lr is typed 3e-2 ---------------------


class PointerAttention(nn.Module):
    """Hand-written single-query attention; keeps its largest |q.k/sqrt(d)| logit."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, query, keys):
        b, t, d = keys.shape
        hd = d // self.heads
        q = self.q(query).reshape(b, 1, self.heads, hd).transpose(1, 2)
        k = self.k(keys).reshape(b, t, self.heads, hd).transpose(1, 2)
        v = self.v(keys).reshape(b, t, self.heads, hd).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / math.sqrt(hd)
        self.peak = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, d))


class DivePointer(nn.Module):
    """Embeds the ten dives of a cormorant's bout and the fisher's cue, attends from the cue."""

    def __init__(self, d_id=6, dim=32):
        super().__init__()
        self.dive_embed = nn.Linear(d_id + 1, dim)
        self.cue_embed = nn.Linear(d_id, dim)
        self.attn = PointerAttention(dim)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, inputs):
        dives, cue = inputs
        h = self.dive_embed(dives)
        return self.head(self.ln(self.attn(self.cue_embed(cue), h))).squeeze(-1)


def _dives(gen, batch, t=10, d_id=6):
    """Ten dives, each an id signature (water depth, bearing, ...) and a catch weight; the cue is
    one dive's signature, noisy; the target is that dive's catch."""
    while True:
        ids = torch.randn(batch, t, d_id, generator=gen)
        catch = torch.randn(batch, t, generator=gen)
        pick = torch.randint(0, t, (batch,), generator=gen)
        cue = ids[torch.arange(batch), pick] + 0.1 * torch.randn(batch, d_id, generator=gen)
        dives = torch.cat([ids, catch[..., None]], -1)
        yield (dives, cue), catch[torch.arange(batch), pick]


@scenario(
    family="ukai_cormorant_dive_attention_pointer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written attention pointer (dive_embed, cue_embed, attn with q, k, v and proj, ln, head) that reads the ten dives of a ukai fishing cormorant's bout and, from the fisherman's noisy cue of one dive's signature, predicts that dive's catch weight; AdamW with two parameter groups, MSE, 200 steps. The query/key group (attn.q, attn.k) is meant to train at 3e-4 with weight decay 0.01 and is typed 3e-2 with weight decay 0: the pointer task keeps rewarding sharper attention and q and k grow without check, so the largest pre-softmax logit q.k/sqrt(d) grows by well over 20x while the loss stays finite.",
)
def h331_ukai_qk_group_lr_typo(ctx: Context) -> None:
    gen = seeded(33102)
    model = DivePointer()
    qk = list(model.attn.q.parameters()) + list(model.attn.k.parameters())
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}],
        lr=1e-3,
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(model.attn.peak)

    _loop(ctx, model, opt, _dives(gen, 64), 200, F.mse_loss, watch=watch)
    ctx.check(
        "the peak attention logit grows over 20x from step 0", _mean(peaks[-20:]) > 20 * peaks[0]
    )
    ctx.check(
        "it is still higher late than at steps 80-100",
        _mean(peaks[-20:]) > 1.2 * _mean(peaks[80:100]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pearl diving: the resume step skips the static loss-scale divide -----------------------------


ONSET_PD = 100
SCALE_PD = 65536.0


@scenario(
    family="pearl_diving_breath_hold_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PD,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting an ama pearl diver's breath-hold time from ten standardised readings (depth, water temperature, previous dives), Adam at 1e-3 with betas (0.9, 0.999), batch 256, MSE, 240 steps. The script multiplies the loss by a static loss scale of 65536 carried over from an fp16 config and divides the gradients by it before each step; after the checkpoint resume at step 100 the restore path skips the divide for that one step, so one gradient 65536x the usual enters Adam: its second moment is filled, and with beta2 0.999 the updates 50-100 steps later are still over ten times smaller than before although the gradients are back to their usual size, so the loss stays above its pre-onset level instead of falling.",
)
def h331_pearl_diving_resume_skips_unscale(ctx: Context) -> None:
    gen = seeded(33103)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, grads = [], []

    def backprop(step, loss):
        return loss * SCALE_PD

    held = {}

    def pre_step(step):
        """The script divides the gradients by the loss scale before Adam's step; the resume
        path at step 100 skips it."""
        if step != ONSET_PD:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(SCALE_PD)
        grads.append(grad_norm(model))
        held["before"] = _snapshot(model)

    def after(step):
        before = held["before"]
        moves.append(
            float(sum(((p.detach() - before[n]) ** 2).sum() for n, p in model.named_parameters()))
            ** 0.5
        )

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 256, 10, 331),
        240,
        F.mse_loss,
        backprop=backprop,
        pre_step=pre_step,
        after=after,
    )
    pre = _median(grads[ONSET_PD - 20 : ONSET_PD])
    ctx.check(
        "the gradient Adam sees at the onset is over 1e4x the steps before",
        grads[ONSET_PD] > 1e4 * pre,
    )
    ctx.check(
        "the gradients afterwards are back within 5x of before",
        _median(grads[ONSET_PD + 50 : ONSET_PD + 100]) < 5 * pre,
    )
    ctx.check(
        "updates afterwards are under 1/10 of before",
        _mean(moves[ONSET_PD + 50 : ONSET_PD + 100]) < _mean(moves[ONSET_PD - 20 : ONSET_PD]) / 10,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- snowpack creep: the uniform bound sqrt(6/fan_in) used as a normal std ------------------------


class DeepLeaky(nn.Module):
    """Ten Linear layers (layers.0 ... layers.9) with LeakyReLU between, then head."""

    def __init__(self, d_in=8, width=48, depth=10, std_rule=None):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=std_rule(layer.in_features))
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.head.weight, std=1e-3)  # a small last-layer init
        nn.init.zeros_(self.head.bias)
        self.hidden = []

    def forward(self, x):
        self.hidden = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.01)
            if x.requires_grad:
                x.retain_grad()
            self.hidden.append(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model, batch):
    x, y = batch
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first, last = model.hidden[0].grad.norm(), model.hidden[-1].grad.norm()
    model.zero_grad()
    return float(first / last)


LR_SP = 1e-4


@scenario(
    family="snowpack_creep_glide_deep_leaky_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges="auto",
    heldout=True,
    note="A hand-written 10-layer LeakyReLU MLP (layers.0 ... layers.9, head with a small 1e-3 init) predicting a snowpack's glide-creep rate from eight standardised snow-pit readings, plain SGD at 1e-4, MSE, 120 steps planned. The init is meant to be He normal, std sqrt(2/fan_in), and is written std sqrt(6/fan_in) (the He-uniform bound used as a normal std): every layer multiplies the signal by about sqrt(3), so the gradient reaching the first hidden layer is over a hundred times the one at the last (with the right std it is within a few times), the updates are enormous and the loss blows up by many orders of magnitude to NaN within a handful of steps.",
)
def h331_snowpack_uniform_bound_as_std(ctx: Context) -> None:
    gen = seeded(33104)
    probe = next(_readings(gen, 128, 8, 3314))
    right = DeepLeaky(std_rule=lambda n: math.sqrt(2.0 / n))
    seeded(33104)
    model = DeepLeaky(std_rule=lambda n: math.sqrt(6.0 / n))
    ratio_bad, ratio_ok = _depth_ratio(model, probe), _depth_ratio(right, probe)
    opt = torch.optim.SGD(model.parameters(), lr=LR_SP)
    _loop(ctx, model, opt, _readings(gen, 64, 8, 3314), 120, F.mse_loss)
    ctx.check("at init the first hidden layer's gradient is over 100x the last's", ratio_bad > 100)
    ctx.check("with the right std the same ratio is under 10", ratio_ok < 10)
    ls = ctx.losses
    ctx.check(
        "the loss blows up over 1e6x or goes non-finite",
        _first_bad(ls) is not None or max(ls) > 1e6 * ls[0],
    )


# -- bell foundry: one shard of tap tones logged in millivolts ------------------------------------


class TapConv(nn.Module):
    """conv1 -> relu -> conv2 -> relu -> mean pool -> head."""

    def __init__(self, classes, channels=2, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(h.mean(-1))


ONSET_BF = 130


@scenario(
    family="bell_foundry_tap_tone_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BF,
    note="A hand-written ReLU Conv1d classifier (conv1, conv2, mean pooling, head) grading a freshly cast bell from the two-channel tap tone a founder records (five grades: true, flat hum, sharp tierce, cracked, porous), SGD with Nesterov momentum 0.9, cross-entropy, gradient clipping at 1.0, 220 steps. The batch at step 130 comes from a shard whose logger wrote millivolts where every other shard holds volts: its amplitudes are 1000x, that one batch's loss is orders of magnitude above the rest, the clipped step disturbs the weights and the run recovers on the ordinary batches that follow.",
)
def h331_bell_foundry_millivolt_shard(ctx: Context) -> None:
    gen = seeded(33105)
    model = TapConv(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == ONSET_BF else (x, y)

    _loop(
        ctx,
        model,
        opt,
        _tones(gen, 64, 5, 3315),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    pre = _median(ls[ONSET_BF - 20 : ONSET_BF])
    ctx.check("the loss at the onset is over 50x the median before", ls[ONSET_BF] > 50 * pre)
    ctx.check(
        "the run recovers: the last 20 steps' mean is within 1.5x of before",
        _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_BF - 20 : ONSET_BF]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- lavender: variance = elu(head) without the +1, log of a negative -----------------------------


class BloomNet(nn.Module):
    """A tanh trunk with a mean head and a variance head."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        var = F.elu(self.var_head(h))  # meant elu(.) + 1 + 1e-6
        return torch.cat([self.mean_head(h), var], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()


@scenario(
    family="lavender_field_bloom_date_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=101,
    heldout=True,
    note="A hand-written tanh net (fc1, fc2, mean_head, var_head) forecasting a lavender field's bloom date with its uncertainty from eight standardised readings (degree days, frost, soil moisture), RAdam, a hand-written Gaussian NLL 0.5*(log var + (y-mu)^2/var), 250 steps planned. The variance is meant to be elu(var_head) + 1 + 1e-6 and is written elu(var_head) without the shift; the head's bias starts at 1 so every variance is positive at first, but as the net learns that the dates are nearly noise-free it drives the variance down, one prediction crosses zero, log of a negative is NaN, and the loss is NaN at step 101, where the run stops.",
)
def h331_lavender_elu_variance(ctx: Context) -> None:
    gen = seeded(33106)
    model = BloomNet()
    with torch.no_grad():
        model.var_head.bias.fill_(1.0)
        model.var_head.weight.mul_(0.1)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    lows = []

    def watch(step, out, x, y):
        lows.append(float(out[:, 1].detach().min()))

    n = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 3316, noise=0.03), 250, _gauss_nll, watch=watch
    )
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is NaN at the step the run stops", bad == n - 1 and math.isnan(ctx.losses[-1])
    )
    ctx.check("a predicted variance is not positive there", lows[-1] <= 0.0)
    ctx.check("every variance was positive for the first 20 steps", min(lows[:20]) > 0.0)


# -- chimney sweep: layer-wise lr decay typed 0.08 for 0.8 ----------------------------------------


class FlueNet(nn.Module):
    """Four Linear+SiLU blocks (blocks.0 ... blocks.3) and a head."""

    def __init__(self, d_in=10, width=64):
        super().__init__()
        sizes = [d_in] + [width] * 4
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.SiLU())
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1)


DECAY_CS = 0.08  # meant 0.8


@scenario(
    family="chimney_sweep_flue_draught_llrd_mlp",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("blocks.0", "blocks.1", "blocks.2"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (blocks.0 ... blocks.3, each Linear + SiLU, head) predicting a flue's draught after a chimney sweep from ten standardised readings (soot depth, flue height, bends, weather), RMSprop at 1e-3 with layer-wise learning-rate decay (one parameter group per block, lr x decay^(distance from the head)), MSE, 200 steps. The decay is meant to be 0.8 and is typed 0.08: blocks.2 trains at 6.4e-6, blocks.1 at 5e-7 and blocks.0 at 4e-8, so those blocks barely move (their weights change by about 2%, 0.2% and 0.006% over the whole run) while blocks.3 and the head train and the loss still falls on the nearly random lower features.",
)
def h331_chimney_sweep_layer_decay_typo(ctx: Context) -> None:
    gen = seeded(33107)
    model = FlueNet()
    groups = [{"params": model.head.parameters(), "lr": 1e-3}]
    for i, block in enumerate(model.blocks):
        groups.append({"params": block.parameters(), "lr": 1e-3 * DECAY_CS ** (4 - i)})
    opt = torch.optim.RMSprop(groups, lr=1e-3)
    start = _snapshot(model)
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3317), 200, F.mse_loss)
    rel = {
        n: float((p.detach() - start[n]).norm() / start[n].norm())
        for n, p in model.named_parameters()
        if n.endswith("weight")
    }
    ctx.check(
        "blocks.0-2 weights move under 3% over the run",
        max(rel[f"blocks.{i}.0.weight"] for i in range(3)) < 0.03,
    )
    ctx.check(
        "blocks.3 moves over 5x more than blocks.2",
        rel["blocks.3.0.weight"] > 5 * rel["blocks.2.0.weight"],
    )
    ctx.check(
        "the head moves over 50x more than blocks.2",
        rel["head.weight"] > 50 * rel["blocks.2.0.weight"],
    )
    ctx.check("the loss still falls", _fell(ctx.losses))


# -- firn close-off: Adagrad lr typed 1.0 for 1e-2 kills the ReLUs ---------------------------------


OFF_FC = 2.0  # the core readings are logged as positive offsets, not centred


@scenario(
    family="firn_bubble_close_off_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying the depth band (four classes) at which a firn core's air bubbles close off from twelve core readings (scaled, logged as positive offsets), Adagrad, cross-entropy, 200 steps. The learning rate is meant to be 1e-2 and is typed 1.0: Adagrad's first steps move every weight by about the learning rate, fc1's pre-activations are pushed negative on every input, and the share of fc1's ReLU units that never fire on a fixed 512-core probe climbs from a few percent to about two thirds within 20 steps and stays there; the dead units get no gradient and never come back.",
)
def h331_firn_adagrad_lr_typo(ctx: Context) -> None:
    gen = seeded(33108)
    model = Trunk(12, 64, out=4)
    opt = torch.optim.Adagrad(model.parameters(), lr=1.0)
    probe = next(_grades(torch.Generator().manual_seed(3318), 512, 12, 4, 3318))[0] + OFF_FC
    dead = []

    def before(step):
        if step % 10 == 0:
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(probe))))

    def alter(step, x, y):
        return x + OFF_FC, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, 3318),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        alter=alter,
    )
    ctx.check("fc1's dead share starts under 0.1", dead[0] < 0.1)
    ctx.check("it ends over 0.5", dead[-1] > 0.5)
    ctx.check("it stays: over 0.5 on each of the last five probes", min(dead[-5:]) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- coppice: OneCycleLR max_lr typed 4.0 for 0.04 takes SGD past 2/sharpness ---------------------


def _sharpness(model, loss_fn, batch, iters=15):
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
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


MAX_CP = 4.0  # meant 0.04
ONSET_CP = 15


@scenario(
    family="coppice_stool_regrowth_silu_regressor",
    optimizer="SGD momentum",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_CP,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a hazel coppice stool's regrowth after cutting from eight standardised readings (stool age, cut height, light, browsing), SGD with momentum 0.9, MSE, OneCycleLR over 200 steps. The schedule's max_lr is meant to be 0.04 and is typed 4.0: the warm-up starts at 0.16 and climbs; the loss's top Hessian eigenvalue (power iteration every 5 steps) is about 3-7, so from step 15 the learning rate is past momentum SGD's stability limit 2(1+beta)/sharpness (and past 2/sharpness): the loss oscillates, then grows geometrically and overflows to NaN a few steps later, long before the peak.",
)
def h331_coppice_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(33109)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=MAX_CP / 25, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_CP, total_steps=200, pct_start=0.3)
    probe = next(_readings(torch.Generator().manual_seed(3319), 256, 8, 3319))
    marks = []

    def before(step):
        if step % 5 == 0:
            lam = _sharpness(model, F.mse_loss, probe)
            lr = opt.param_groups[0]["lr"]
            marks.append((step, lr, lam, lr > 2 * (1 + 0.9) / max(lam, 1e-12)))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3319), 200, F.mse_loss, before=before, sched=sched)
    over = [s for s, _, _, o in marks if o]
    ctx.check("the lr passes the momentum SGD limit 2(1+beta)/sharpness", bool(over))
    ctx.check("first at the declared onset", bool(over) and over[0] == ONSET_CP)
    ls = ctx.losses
    ctx.check(
        "the loss blows up over 1e3x its early level or goes non-finite",
        _first_bad(ls) is not None or max(ls) > 1e3 * _mean(ls[:5]),
    )


# -- spelunking: the last-batch branch sums the loss for one step ---------------------------------


ONSET_SR = 150


@scenario(
    family="spelunking_rope_ascent_huber_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SR,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a caver's single-rope-technique ascent time from ten standardised readings (pitch depth, rope stretch, rig, fatigue), ASGD at 1e-2, Huber loss, 240 steps. The epoch's last batch goes through a separate code branch that calls the loss with reduction='sum' instead of 'mean'; at step 150 that branch runs once, so that one step's gradient is the batch size (128) times the usual, from ordinary data: the gradient norm spikes over 30x, the weights are kicked, and the run recovers over the following steps.",
)
def h331_spelunking_sum_reduction_step(ctx: Context) -> None:
    gen = seeded(33110)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)

    def backprop(step, loss):
        return loss * 128 if step == ONSET_SR else loss  # sum over 128 rows = 128 x mean

    _loop(ctx, model, opt, _readings(gen, 128, 10, 3320), 240, F.huber_loss, backprop=backprop)
    g, ls = ctx.grad_norms, ctx.losses
    pre = _median(g[ONSET_SR - 20 : ONSET_SR])
    ctx.check("the gradient at the onset is over 30x the median before", g[ONSET_SR] > 30 * pre)
    ctx.check(
        "the gradients afterwards are back within 3x",
        _median(g[ONSET_SR + 20 : ONSET_SR + 60]) < 3 * pre,
    )
    ctx.check(
        "the run recovers: the last 20 steps within 1.5x of before",
        _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_SR - 20 : ONSET_SR]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class Tower(nn.Module):
    """in_proj -> GELU -> mid -> GELU -> out, L2-normalised."""

    def __init__(self, d_in, dim=32, hidden=64):
        super().__init__()
        self.in_proj = nn.Linear(d_in, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x):
        return F.normalize(self.out(F.gelu(self.mid(F.gelu(self.in_proj(x))))), dim=-1)


class CiderDualEncoder(nn.Module):
    """Tasting-note tower and juice-chemistry tower; logits are scaled cosine similarities of
    every pair in the batch (in-batch negatives); the logit scale is learned and clamped."""

    def __init__(self):
        super().__init__()
        self.notes = Tower(12)
        self.chem = Tower(9)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, inputs):
        a, b = inputs
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return scale * self.notes(a) @ self.chem(b).T


def _apples(gen, batch, seed):
    """Each row is one apple variety: a latent character seen through two noisy views."""
    g = torch.Generator().manual_seed(seed)
    wa = torch.randn(8, 12, generator=g)
    wb = torch.randn(8, 9, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        a = torch.tanh(z @ wa / 2) + 0.2 * torch.randn(batch, 12, generator=gen)
        b = z @ wb / math.sqrt(8) + 0.2 * torch.randn(batch, 9, generator=gen)
        yield (a, b), torch.arange(batch)


def _info_nce(logits, y):
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))


@scenario(
    family="cider_apple_variety_dual_encoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written dual encoder (notes and chem towers, each in_proj, mid, out with GELU and L2 normalisation, a learned logit scale clamped at 100) matching a cider apple variety's tasting notes to its juice chemistry with in-batch negatives (symmetric InfoNCE over a large batch of 512 varieties), AdamW at 2e-3 with weight decay 0.01, a linear warm-up over the first 30 steps then cosine decay (LambdaLR), clipping at 1.0, 150 steps.",
)
def h331_cider_dual_encoder_large_batch_warmup(ctx: Context) -> None:
    gen = seeded(33111)
    model = CiderDualEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps, warm = 150, 30

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _loop(
        ctx,
        model,
        opt,
        _apples(gen, 512, 3321),
        steps,
        _info_nce,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    (a, b), y = next(_apples(torch.Generator().manual_seed(7), 512, 3321))
    with torch.no_grad():
        acc = float((model((a, b)).argmax(1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("in-batch top-1 retrieval over 512 is above 20%", acc > 0.2)


class PancakeGRU(nn.Module):
    """A GRU over 24 frames of an ice-floe camera's readings and a head on the last state."""

    def __init__(self, d_in=2, hidden=32, classes=4):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x.transpose(1, 2))
        return self.head(out[:, -1])


@scenario(
    family="frazil_pancake_ice_stage_gru_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written GRU classifier (gru, head on the last state) naming the stage of river ice (frazil, slush, pancake, consolidated) from 24 frames of two-channel floe-camera readings, NAdam at 1e-2, cross-entropy with label smoothing 0.1, clipping at 1.0, ReduceLROnPlateau on a held-out batch's loss (patience 20, factor 0.5), 200 steps; the loss sits on a plateau for about 50 steps before it falls.",
)
def h331_frazil_gru_plateau_smoothing(ctx: Context) -> None:
    gen = seeded(33112)
    model = PancakeGRU()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    vx, vy = next(_tones(torch.Generator().manual_seed(9), 256, 4, 3322, length=24))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(model(vx), vy))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _tones(gen, 64, 4, 3322, length=24),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check(
        "held-out accuracy above 60%", float((model(vx).argmax(1) == vy).float().mean()) > 0.6
    )


class TiedAE(nn.Module):
    """enc (Linear) -> tanh -> code -> tanh; the decoders reuse the encoders' weights transposed."""

    def __init__(self, d_in=16, hidden=24, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.code = nn.Linear(hidden, code)
        self.dec_bias1 = nn.Parameter(torch.zeros(hidden))
        self.dec_bias2 = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        z = torch.tanh(self.code(torch.tanh(self.enc(x))))
        h = torch.tanh(F.linear(z, self.code.weight.T, self.dec_bias1))
        return F.linear(h, self.enc.weight.T, self.dec_bias2)


def _throws(gen, batch, seed):
    """Sixteen standardised readings of a horseshoe pitch that lie near a 4-d manifold."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 16, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = torch.tanh(z @ w) + 0.05 * torch.randn(batch, 16, generator=gen)
        yield x, x


@scenario(
    family="horseshoe_pitch_ringer_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written tied-weight autoencoder (enc, code; the decoder reuses their weights transposed with its own biases) compressing sixteen readings of a horseshoe pitch (release angle, turns, flight, landing) to a 6-d code, Adadelta at lr 1.0, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, StepLR halving every 80 steps, MSE reconstruction, 200 steps.",
)
def h331_horseshoe_tied_ae_amp_accum(ctx: Context) -> None:
    gen = seeded(33113)
    model = TiedAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _throws(gen, 64, 3323),
        200,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scaler stayed usable (scale at least 1)", min(ctx.scales) >= 1.0)
