"""Held-out scenarios, set 16 (``h16_``): new families, new optimizers mix.

Families: Hugging Face BioGPT and OLMo-3 causal LMs, an LED encoder-decoder, XLM-RoBERTa and
ERNIE classifiers, FocalNet and BiT image classifiers and a PatchTSMixer forecaster, all from
configs (no download); written here: a modern-Hopfield associative-memory classifier, a
message-passing net on generated molecules with edge features, a ladder-style denoising
semi-supervised net, a planar/radial normalising flow, an NTM-like memory-augmented RNN, a
quantile-regression forecaster (pinball loss) and a LeNet-style CNN without normalisation.
Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RMSprop, NAdam, RAdam, Adamax, Adagrad and
steadygrad.optim's DiffGrad, Lion and AdaBelief.

Written without reading ``steadygrad/diagnose/``, ``steadygrad/monitor/`` or the other held-out
files, and never run on steadygrad while written: each scenario was adjusted only until its own
``ctx.check(...)`` held (the healthy ones until they trained normally), with a stand-in context
that attaches nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- generated data -------------------------------------------------------------------------------


def _series_batches(gen: torch.Generator, batch: int = 32, context: int = 32, horizon: int = 8):
    """Endless windows of noisy sums of two sines with random phase: (past, future)."""
    t = torch.arange(context + horizon, dtype=torch.float32)
    while True:
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        period = 8 + 8 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(2 * math.pi * t / period + phase) + 0.5 * torch.sin(t / 3 + 2 * phase)
        x = x + 0.1 * torch.randn(x.shape, generator=gen)
        yield x[:, :context], x[:, context:]


def _digit_images(gen: torch.Generator, batch: int = 32):
    for x, y in digit_batches(gen, batch):
        yield x.reshape(-1, 1, 8, 8), y


# -- Hopfield / associative-memory layer ----------------------------------------------------------


class Hopfield(nn.Module):
    """One modern-Hopfield retrieval step: the query (a normalised input) attends over stored
    patterns with inverse temperature beta and returns their mix."""

    def __init__(self, dim: int, patterns: int, beta: float = 4.0) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.memory = nn.Parameter(torch.randn(patterns, dim) / math.sqrt(dim))
        self.values = nn.Parameter(torch.randn(patterns, dim) / math.sqrt(dim))
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x / x.norm(dim=-1, keepdim=True))  # unit-length probe (no epsilon)
        scores = self.beta * q @ self.memory.T
        return torch.softmax(scores, dim=-1) @ self.values


class HopfieldNet(nn.Module):
    def __init__(self, dim: int = 64, patterns: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.hopfield = Hopfield(dim, patterns)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hopfield(x))


@scenario(
    "hopfield-memory",
    "adamax",
    "nonfinite",
    where="hopfield",
    diverges=173,
    onset=173,
    heldout=True,
)
def h16_hopfield_zero_image_adamax(ctx: Context) -> None:
    """One blank image (a failed decode leaves all pixels 0) reaches the Hopfield layer, whose
    query normalisation divides by its zero norm: 0/0 = NaN at step 173."""
    gen = seeded(1601)
    model = HopfieldNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 173:
            x = x.clone()
            x[9] = 0.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 200, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 173, NaN at 173", all(finite[:173]) and not finite[173])
    ctx.check("loss fell before the blank image", ctx.losses[170] < 0.6 * ctx.losses[0])


# -- message passing on generated molecules (edge features) ---------------------------------------


def _molecules(gen: torch.Generator, count: int = 48, atoms: int = 9):
    """Random chain-plus-ring 'molecules': atom types (one-hot 5), bond types (one-hot 3); the
    target counts double bonds between carbon-like atoms and aromatic bonds, plus atom counts."""
    for _ in iter(int, 1):
        types = torch.randint(0, 5, (count, atoms), generator=gen)
        src = torch.arange(atoms - 1)
        dst = src + 1
        src = torch.cat([src, torch.tensor([0, 2])])
        dst = torch.cat([dst, torch.tensor([5, 7])])
        bonds = torch.randint(0, 3, (count, len(src)), generator=gen)
        node = F.one_hot(types, 5).float()
        edge = F.one_hot(bonds, 3).float()
        carbon = (types == 0).float()
        target = (
            ((bonds == 1).float() * carbon[:, src] * carbon[:, dst]).sum(1)
            + 0.5 * (bonds == 2).float().sum(1)
            + 0.3 * (types == 1).float().sum(1)
        )
        yield (node, edge, src, dst), target[:, None]


class MessagePassing(nn.Module):
    """Edge-conditioned messages: m_ij = edge_net([h_j, e_ij]); h_i <- GRU-free update."""

    def __init__(self, dim: int = 32, edge_dim: int = 3, rounds: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(5, dim)
        self.edge_net = nn.Sequential(nn.Linear(dim + edge_dim, dim), nn.ReLU())
        self.update = nn.Linear(2 * dim, dim)
        self.readout = nn.Linear(dim, 1)
        self.rounds = rounds
        self.pre: torch.Tensor | None = None

    def forward(self, graph) -> torch.Tensor:
        node, edge, src, dst = graph
        h = self.embed(node)
        pre = []
        for _ in range(self.rounds):
            both = torch.cat([src, dst]), torch.cat([dst, src])
            e = torch.cat([edge, edge], 1)
            z = self.edge_net[0](torch.cat([h[:, both[0]], e], -1))
            pre.append(z)
            msg = torch.zeros_like(h).index_add_(1, both[1], F.relu(z))
            h = torch.tanh(self.update(torch.cat([h, msg], -1)))
        self.pre = torch.cat(pre, 1)
        return self.readout(h.sum(1))


@scenario(
    "mpnn-molecules",
    "sg_diffgrad",
    "loss_of_plasticity",
    where=("edge_net.0", "edge_net.1", "edge_net"),
    diverges="auto",
    onset=80,
    heldout=True,
)
def h16_mpnn_sparsity_penalty_diffgrad(ctx: Context) -> None:
    """From step 80 a 'message sparsity' penalty meant as 1e-4 * mean(relu(z)) is switched on as
    1.0 * mean(z) (wrong coefficient, no relu): it pushes every pre-activation of the edge
    network down until its ReLU units are dead and no message flows."""
    gen = seeded(1602)
    model = MessagePassing()
    opt = sgo.DiffGrad(model.parameters(), lr=1e-2)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step >= 80:
            return loss + 1.0 * model.pre.mean()
        return loss

    fit(
        ctx,
        model,
        opt,
        _molecules(gen),
        360,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=extra,
    )
    graph, _ = next(_molecules(gen, 128))
    with torch.no_grad():
        model(graph)
    ctx.check("3/4 of edge-network units dead", dead_fraction(model.pre) >= 0.75)
    ctx.check("loss fell before the penalty", ctx.losses[79] < 0.5 * ctx.losses[0])


# -- ladder-style denoising semi-supervised net ---------------------------------------------------


class Ladder(nn.Module):
    """Encoder on noisy input, decoder reconstructing the clean input from the top code (the
    unsupervised cost) and a classifier head on the clean path (the supervised cost)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Linear(64, 96)
        self.enc2 = nn.Linear(96, 32)
        self.dec2 = nn.Linear(32, 96)
        self.dec1 = nn.Linear(96, 64)
        self.head = nn.Linear(32, 10)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.enc2(F.relu(self.enc1(x))))

    def forward(self, x: torch.Tensor):
        noisy = x + 0.3 * torch.randn_like(x)
        z = self.encode(noisy)
        recon = self.dec1(F.relu(self.dec2(z)))
        return self.head(self.encode(x)), recon


def _ladder_run(ctx: Context, opt_factory, steps: int, bad_step: int | None):
    gen = seeded(1603)
    model = Ladder()
    opt = opt_factory(model.parameters())
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        target = x
        if step == bad_step:  # an unscaled 16-bit raw frame in the unlabeled stream
            target = x.clone()
            target[3] = target[3] * 255.0 * 4000
        ctx.targets(y)
        logits, recon = model(x)
        labeled = F.cross_entropy(logits[:16], y[:16])  # a quarter of each batch is labeled
        loss = labeled + F.mse_loss(recon, target)
        loss.backward()
        ctx.grad_norms.append(sum(float(p.grad.norm() ** 2) for p in model.parameters()) ** 0.5)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return model, opt


@scenario(
    "ladder-semisup", "adam", "adam_second_moment_poisoned", diverges=None, onset=90, heldout=True
)
def h16_ladder_unscaled_target_adam(ctx: Context) -> None:
    """At step 90 one unlabeled image arrives unscaled (0..255 times a gain) as the denoising
    target: one gradient tens of thousands of times the usual fills Adam's second moment, and
    for a long while after every step is tiny: the loss stops falling."""
    _, opt = _ladder_run(ctx, lambda p: torch.optim.Adam(p, lr=3e-3), 300, 90)
    g = ctx.grad_norms
    ctx.check("one giant gradient at 90", g[90] > 1000 * max(g[80:90]))
    v = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
    ctx.check("second moment still huge 200 steps later", v > 1e3)
    ctx.check(
        "loss falls far less after 90 than before",
        (ctx.losses[85] - ctx.losses[290]) < 0.5 * (ctx.losses[0] - ctx.losses[85]),
    )


# -- planar / radial normalising flow -------------------------------------------------------------


def _two_moons(gen: torch.Generator, batch: int = 128):
    while True:
        t = math.pi * torch.rand(batch, generator=gen)
        upper = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        pts = torch.stack([x, y], 1) + 0.08 * torch.randn(batch, 2, generator=gen)
        yield pts - torch.tensor([0.5, 0.25]), torch.zeros(batch)


class Planar(nn.Module):
    """z + u tanh(w.z + b), with u constrained so the map stays invertible (w.u >= -1)."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.u = nn.Parameter(0.1 * torch.randn(dim))
        self.w = nn.Parameter(0.1 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor):
        wu = self.w @ self.u
        u = self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w + 1e-8)
        a = torch.tanh(z @ self.w + self.b)
        psi = (1 - a**2)[:, None] * self.w
        return z + u * a[:, None], torch.log((1 + psi @ u).abs() + 1e-8)


class Radial(nn.Module):
    """z + beta h(alpha, r) (z - z0), h = 1 / (alpha + r), alpha > 0, beta >= -alpha."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.z0 = nn.Parameter(0.1 * torch.randn(dim))
        self.log_alpha = nn.Parameter(torch.zeros(1))
        self.raw_beta = nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor):
        alpha = self.log_alpha.exp()
        beta = -alpha + F.softplus(self.raw_beta)
        diff = z - self.z0
        r = diff.norm(dim=1, keepdim=True)
        h = 1 / (alpha + r)
        dh = -(h**2)
        d = z.shape[1]
        logdet = (d - 1) * torch.log1p(beta * h) + torch.log1p(beta * h + beta * dh * r)
        return z + beta * h * diff, logdet.squeeze(1)


class PlanarRadialFlow(nn.Module):
    """Density of 2-D points by the change of variables from data back to a standard normal."""

    def __init__(self, layers: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Planar() if i % 2 == 0 else Radial() for i in range(layers))
        self.scale = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = x * torch.exp(self.scale), self.scale.sum().expand(len(x))
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return -(-0.5 * (z**2).sum(1) - math.log(2 * math.pi) + logdet)  # NLL per point


def _nll(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return out.mean()


@scenario(
    "planar-radial-flow",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=150,
    heldout=True,
)
def h16_flow_lr_raised_nesterov(ctx: Context) -> None:
    """At step 150 someone resumes the flow with the learning rate of another config (100x):
    the steps now overshoot the curvature of the NLL and it blows up."""
    gen = seeded(1604)
    model = PlanarRadialFlow()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def raise_lr(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 2.0

    fit(ctx, model, opt, _two_moons(gen), 300, loss_fn=_nll, classifier=False, before=raise_lr)
    ctx.check("NLL fell before 150", ctx.losses[149] < ctx.losses[0] - 0.3)
    after = [v if math.isfinite(v) else 1e9 for v in ctx.losses[150:]]
    ctx.check("NLL blew up after the raise", max(after) > ctx.losses[149] + 3.0)


# -- NTM-like memory-augmented RNN ----------------------------------------------------------------


class MemoryRNN(nn.Module):
    """A GRU-cell controller with a slot memory: content-addressed read, erase-and-add write,
    copy/recall task on bit vectors. ``erase_sign`` is the bug: +1 writes mem * (1 + e)."""

    def __init__(self, bits: int = 6, hidden: int = 48, slots: int = 12, width: int = 16) -> None:
        super().__init__()
        self.controller = nn.GRUCell(bits + width, hidden)
        self.key = nn.Linear(hidden, width)
        self.write = nn.Linear(hidden, width)
        self.erase = nn.Linear(hidden, width)
        self.erase_sign = -1.0
        self.out = nn.Linear(hidden + width, bits)
        self.slots, self.width = slots, width
        self.memory0 = nn.Parameter(0.1 * torch.randn(slots, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        mem = self.memory0.expand(b, -1, -1)
        h = x.new_zeros(b, self.controller.hidden_size)
        read = x.new_zeros(b, self.width)
        outs = []
        for i in range(t):
            h = self.controller(torch.cat([x[:, i], read], 1), h)
            k = self.key(h)
            att = torch.softmax(torch.einsum("bsw,bw->bs", mem, k), 1)
            read = torch.einsum("bs,bsw->bw", att, mem)
            e = torch.sigmoid(self.erase(h))[:, None, :] * att[:, :, None]
            mem = mem * (1 + self.erase_sign * e) + att[:, :, None] * self.write(h)[:, None, :]
            outs.append(self.out(torch.cat([h, read], 1)))
        return torch.stack(outs, 1)


def _copy_curriculum(gen: torch.Generator, batch: int = 16, bits: int = 6):
    """Copy task on random bit vectors whose length grows by one every 15 steps (from 4)."""
    step = 0
    while True:
        length = 4 + step // 15
        step += 1
        seq = (torch.rand(batch, length, bits, generator=gen) < 0.5).float()
        blank = torch.zeros(batch, length, bits)
        yield torch.cat([seq, blank], 1), torch.cat([blank, seq], 1)


@scenario(
    "ntm-memory-rnn",
    "sgd",
    "exploding_gradients",
    where=("erase", "controller"),
    diverges="auto",
    heldout=True,
)
def h16_ntm_erase_sign_sgd(ctx: Context) -> None:
    """The erase step is written mem * (1 + e) instead of mem * (1 - e), and there is no
    gradient clipping: every write amplifies the addressed slots, so the gradient through the
    memory recurrence grows with the curriculum's sequence length until a step throws the
    weights away (around step 217; with the erase written correctly the same run stays
    finite, measured with the stand-in)."""
    gen = seeded(1605)
    model = MemoryRNN()
    model.erase_sign = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(
        ctx,
        model,
        opt,
        _copy_curriculum(gen),
        300,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    g = [v if math.isfinite(v) else 1e30 for v in ctx.grad_norms]
    ctx.check("gradient norm grew 100x over its early level", max(g) > 100 * max(g[:20]))
    ctx.check("finite for the first 150 steps", all(map(math.isfinite, ctx.losses[:150])))
    ctx.check("loss went non-finite", not all(map(math.isfinite, ctx.losses)))


# -- quantile-regression forecaster (pinball loss) ------------------------------------------------

QUANTILES = torch.tensor([0.1, 0.5, 0.9])


class QuantileForecaster(nn.Module):
    """An MLP from the past window to three quantiles of each future step."""

    def __init__(self, context: int = 32, horizon: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(context, hidden), nn.GELU())
        self.body = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU())
        self.head = nn.Linear(hidden, horizon * len(QUANTILES))
        self.horizon = horizon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.encoder(x))).reshape(len(x), self.horizon, -1)


def pinball(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    err = target[..., None] - pred
    return torch.maximum(QUANTILES * err, (QUANTILES - 1) * err).mean()


@scenario("quantile-forecaster", "adagrad", "data_outlier", diverges=170, onset=170, heldout=True)
def h16_quantile_sensor_glitch_adagrad(ctx: Context) -> None:
    """At step 170 one batch carries a sensor glitch: five of its windows read 5e3 (a stuck
    register) in their past and future values; the rest of the stream is clean."""
    gen = seeded(1606)
    model = QuantileForecaster()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x, y = x.clone(), y.clone()
            x[:5, 10:] = 5e3
            y[:5] = 5e3
        return x, y

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        300,
        loss_fn=pinball,
        classifier=False,
        alter=alter,
    )
    ctx.check("pinball loss halved before 170", max(ctx.losses[160:170]) < 0.5 * ctx.losses[0])
    ctx.check("loss spiked at 170", ctx.losses[170] > 5 * max(ctx.losses[160:170]))


@scenario(
    "quantile-forecaster",
    "adam",
    "amp_overflow",
    where="encoder.0",
    diverges=130,
    onset=130,
    heldout=True,
)
def h16_quantile_raw_units_fp16_adam(ctx: Context) -> None:
    """Trained under fp16 autocast with a GradScaler; at step 130 the feature pipeline switches
    to a source in raw units (W instead of kW: inputs x 1e4 with an offset): the first Linear's
    fp16 output overflows to inf, every step from then on is skipped, the scale collapses."""
    gen = seeded(1607)
    model = QuantileForecaster()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 130:
            return (x + 3.0) * 1e4, (y + 3.0) * 1e4
        return x, y

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        180,
        loss_fn=pinball,
        classifier=False,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 130, not at 130", all(finite[:130]) and not finite[130])
    ctx.check("most steps after 130 non-finite", finite[130:].count(False) >= 0.8 * 50)
    ctx.check("loss scale collapsed", ctx.scales[-1] < 1e-3 * ctx.scales[129])
    ctx.check("loss fell before", ctx.losses[129] < 0.6 * ctx.losses[0])


# -- LeNet-style CNN without normalisation --------------------------------------------------------


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.tanh(self.conv1(x.reshape(-1, 1, 8, 8))), 2)
        x = torch.tanh(self.conv2(x))
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x.flatten(1))))))


@scenario(
    "lenet-nonorm", "adamw", "softmax_collapse", where="fc3", diverges=None, onset=0, heldout=True
)
def h16_lenet_temperature_adamw(ctx: Context) -> None:
    """Logits divided by a 'temperature' of 0.001 (a value meant for another setting of the
    recipe) and no weight decay: the 256 training images are fitted and the scaled logits are
    so large that the float32 softmax gives the target exactly 1.0 on most rows - their gradient
    is exactly zero and they stop teaching."""
    gen = seeded(1608)
    model = LeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    x_all, y_all = next(digit_batches(seeded(16080), 256))

    def batches():
        while True:
            idx = torch.randint(0, 256, (64,), generator=gen)
            yield x_all[idx], y_all[idx]

    fit(ctx, model, opt, batches(), 400, forward=lambda m, x: m(x) / 0.001)
    with torch.no_grad():
        logits = model(x_all) / 0.001
    ctx.check("most training rows collapsed", collapsed_fraction(logits, y_all) >= 0.5)


# -- Hugging Face models from configs -------------------------------------------------------------


def _biogpt():
    from transformers import BioGptConfig, BioGptForCausalLM

    config = BioGptConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layerdrop=0.0,
        pad_token_id=0,
    )
    return BioGptForCausalLM(config)


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _max_qk_logit(model: nn.Module, x: torch.Tensor) -> float:
    """The largest |q.k| / sqrt(d_head) over BioGPT's layers and heads on a batch."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith(("q_proj", "k_proj")):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: seen.update({n: o})))
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    heads, worst = model.config.num_attention_heads, 0.0
    for name, q in seen.items():
        if not name.endswith("q_proj"):
            continue
        k = seen[name[: -len("q_proj")] + "k_proj"]
        b, t, d = q.shape
        q = q.reshape(b, t, heads, -1).transpose(1, 2)
        k = k.reshape(b, t, heads, -1).transpose(1, 2)
        # HF BioGPT scales q by 1/sqrt(d_head) inside q_proj's caller, not in q_proj's output
        worst = max(worst, float((q @ k.transpose(-1, -2)).abs().max()) / math.sqrt(d // heads))
    return worst


@scenario(
    "hf-biogpt",
    "adamw",
    "attention_logit_growth",
    where=(
        "biogpt.layers.0.self_attn",
        "biogpt.layers.1.self_attn",
        "biogpt.layers.0.self_attn.q_proj",
        "biogpt.layers.0.self_attn.k_proj",
        "biogpt.layers.1.self_attn.q_proj",
        "biogpt.layers.1.self_attn.k_proj",
    ),
    diverges=None,
    onset=40,
    heldout=True,
)
def h16_biogpt_qk_decay_sign_adamw(ctx: Context) -> None:
    """A hand-written 'decay only the attention projections' step, added from step 40 after
    AdamW's own update, has its sign flipped: q_proj and k_proj grow 1.5% a step, the
    attention logits grow with their product until the softmax saturates (one-hot attention)
    and the LM stops improving (it does not blow up within the run)."""
    gen = seeded(1609)
    model = _biogpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    qk = [p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight"))]
    probe, _ = next(text_batches(seeded(16090)))
    start = _max_qk_logit(model, probe)

    def bug(step: int) -> None:
        if step >= 40:
            with torch.no_grad():
                for p in qk:
                    p.mul_(1.015)  # meant: 1 - lr * decay

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        320,
        loss_fn=lm_loss,
        classifier=False,
        before=bug,
        forward=_hf_logits,
    )
    ctx.check("attention logits grew 50x", _max_qk_logit(model, probe) > 50 * start)


def _led():
    from transformers import LEDConfig, LEDForConditionalGeneration

    config = LEDConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_encoder_position_embeddings=64,
        max_decoder_position_embeddings=64,
        attention_window=8,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
    )
    return LEDForConditionalGeneration(config)


def _copy_tokens(gen: torch.Generator, batch: int = 16, length: int = 16, vocab: int = 64):
    """Source: random tokens; target: the source (teacher forced, start token 0)."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        yield (src, torch.cat([torch.zeros(batch, 1, dtype=torch.long), src[:, :-1]], 1)), src


def _seq2seq_logits(m: nn.Module, batch) -> torch.Tensor:
    src, dec_in = batch
    return m(input_ids=src, decoder_input_ids=dec_in).logits


@scenario("hf-led", "adam", "sharpness_above_limit", diverges="auto", onset=320, heldout=True)
def h16_led_restart_peak_adam(ctx: Context) -> None:
    """A cosine schedule with warm restarts: the first cycle runs at 2e-3, but the restart at
    step 320 takes its peak from another config (0.05, 25x): Adam's steps at the restart are
    far past what the trained encoder-decoder's curvature allows, and the copy task it had
    learned is lost."""
    gen = seeded(1610)
    model = _led()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def schedule(step: int) -> None:
        if step >= 320:
            t = (step - 320) / 80
            opt.param_groups[0]["lr"] = 0.05 * 0.5 * (1 + math.cos(math.pi * t))

    fit(
        ctx,
        model,
        opt,
        _copy_tokens(gen),
        400,
        loss_fn=lm_loss,
        classifier=False,
        before=schedule,
        forward=_seq2seq_logits,
    )
    before = min(ctx.losses[300:320])
    ctx.check("copy task learned before the restart", before < ctx.losses[0] - 2.0)
    after = [v if math.isfinite(v) else 1e9 for v in ctx.losses[320:]]
    ctx.check("loss blew up after the restart", max(after) > before + 2.0)


def _xlmr():
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    config = XLMRobertaConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return XLMRobertaForSequenceClassification(config)


@scenario(
    "hf-xlm-roberta",
    "rmsprop",
    "update_ratio_out_of_range",
    where="roberta.encoder.layer.0",
    diverges=None,
    heldout=True,
)
def h16_xlmr_frozen_layer_rmsprop(ctx: Context) -> None:
    """Layer-wise learning-rate decay computed as lr * decay ** (depth - 1 - i) with the depth
    counted from an unused config (48): the lowest encoder layer gets lr 0 exactly (underflow
    of 0.5 ** 47 is not 0, but the rounding to 0.0 is in the user's own code), so it never
    moves."""
    gen = seeded(1611)
    model = _xlmr()
    layer0 = model.roberta.encoder.layer[0]
    ids = {id(p) for p in layer0.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids]
    lr0 = round(1e-3 * 0.5**47, 6)  # 0.0
    opt = torch.optim.RMSprop(
        [{"params": layer0.parameters(), "lr": lr0}, {"params": rest}], lr=1e-3
    )
    before = layer0.attention.self.query.weight.detach().clone()
    fit(ctx, model, opt, bert_batches(gen), 200, forward=lambda m, x: m(input_ids=x).logits)
    ctx.check("layer 0 unchanged", torch.equal(before, layer0.attention.self.query.weight))
    ctx.check("loss fell", min(ctx.losses[-20:]) < 0.8 * ctx.losses[0])


def _focalnet():
    from transformers import FocalNetConfig, FocalNetForImageClassification

    config = FocalNetConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        embed_dim=16,
        depths=[1, 1],
        focal_levels=[2, 2],
        num_labels=10,
        hidden_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return FocalNetForImageClassification(config)


def _pixels(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(pixel_values=x).logits


@scenario("hf-focalnet", "sgd_mom", "healthy", heldout=True)
def h16_focalnet_healthy_sgd_momentum(ctx: Context) -> None:
    gen = seeded(1612)
    model = _focalnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fit(ctx, model, opt, _digit_images(gen), 240, forward=_pixels)
    ctx.check("loss fell by half", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])


def _patchtsmixer():
    from transformers import PatchTSMixerConfig, PatchTSMixerForPrediction

    config = PatchTSMixerConfig(
        context_length=32,
        prediction_length=8,
        patch_length=8,
        patch_stride=8,
        num_input_channels=1,
        d_model=16,
        num_layers=2,
        dropout=0.0,
        head_dropout=0.0,
    )
    return PatchTSMixerForPrediction(config)


def _forecast(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(past_values=x[..., None]).prediction_outputs[..., 0]


@scenario("hf-patchtsmixer", "nadam", "loss_divergence", diverges="auto", onset=60, heldout=True)
def h16_patchtsmixer_wd_sign_nadam(ctx: Context) -> None:
    """A hand-written decoupled weight decay with the sign flipped from step 60 (after a
    refactor): the weights grow 1% a step, faster than NAdam pulls them back, and the
    forecast error climbs over a long stretch of steps."""
    gen = seeded(1613)
    model = _patchtsmixer()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)

    def grow(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        320,
        loss_fn=F.mse_loss,
        classifier=False,
        before=grow,
        forward=_forecast,
    )
    ctx.check("loss fell before 60", min(ctx.losses[40:60]) < 0.6 * ctx.losses[0])
    ctx.check("loss climbed 3x over its best", max(ctx.losses[200:]) > 3 * min(ctx.losses[:60]))


# -- healthy controls (Hugging Face) --------------------------------------------------------------


def _upsampled_pixels(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BiT's stem (stride-2 conv and pool) needs more than 8x8: nearest-upsample to 16x16."""
    return m(pixel_values=F.interpolate(x, size=16)).logits


def _bit():
    from transformers import BitConfig, BitForImageClassification

    config = BitConfig(
        num_channels=1,
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_groups=8,
        layer_type="preactivation",
        global_padding="SAME",
        num_labels=10,
    )
    return BitForImageClassification(config)


@scenario("hf-bit", "radam", "healthy", heldout=True)
def h16_bit_healthy_radam(ctx: Context) -> None:
    gen = seeded(1614)
    model = _bit()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, _digit_images(gen), 260, forward=_upsampled_pixels)
    ctx.check("loss fell by a third", sum(ctx.losses[-10:]) / 10 < 0.67 * ctx.losses[0])


def _ernie():
    from transformers import ErnieConfig, ErnieForSequenceClassification

    config = ErnieConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return ErnieForSequenceClassification(config)


@scenario("hf-ernie", "sg_adabelief", "healthy", heldout=True)
def h16_ernie_healthy_adabelief(ctx: Context) -> None:
    gen = seeded(1615)
    model = _ernie()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, bert_batches(gen), 200, forward=lambda m, x: m(input_ids=x).logits)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.8 * ctx.losses[0])


def _olmo3():
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Olmo3ForCausalLM(config)


@scenario("hf-olmo3", "sg_lion", "healthy", heldout=True)
def h16_olmo3_healthy_lion(ctx: Context) -> None:
    gen = seeded(1616)
    model = _olmo3()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.1, fused=False)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        250,
        loss_fn=lm_loss,
        classifier=False,
        forward=_hf_logits,
    )
    ctx.check("loss fell by 1.0", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.0)
