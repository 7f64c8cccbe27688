"""Held-out set 110 (``h110_``): Hugging Face Molmo2 from tiny configs (the text decoder with an
untied head, a fault and a control; the vision encoder on digit patches, a fault and a control)
and a NeuCodec audio codec on generated tones (a control);
hand-written: a graph-level molecule classifier with a gated attention readout, a mixture-of-experts
regressor with a gating network (diabetes), a line OCR (identity-initialised ReLU RNN + CTC) on
rendered digit lines, a bike-demand ReLU forecaster, TransH knowledge-graph embeddings with a
margin loss, a denoising diffusion model on 1-D signals, a sound-event detector with weak-label
(linear-softmax) pooling, a wind-turbine power curve from SCADA records, a micro-Doppler radar
gesture CNN and a stereo disparity net with a correlation cost volume (a fault and a control).

Every fault is induced the way it happens in practice and verified by ``ctx.check``; the controls
are ordinary runs of the same kinds of models, with their noise, schedules and warm-ups.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    scenario,
    seeded,
    text_batches,
)


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


# -- Hugging Face Molmo2 text decoder (untied head) -----------------------------------------------


class Molmo2LM(nn.Module):
    """The Molmo2 text model from a tiny config with an untied language-model head."""

    def __init__(self, vocab: int = 128, dim: int = 32) -> None:
        super().__init__()
        from transformers.models.molmo2.configuration_molmo2 import Molmo2TextConfig
        from transformers.models.molmo2.modeling_molmo2 import Molmo2TextModel

        config = Molmo2TextConfig(
            vocab_size=vocab,
            additional_vocab_size=0,
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=dim // 2,
            max_position_embeddings=64,
            use_cache=False,
        )
        self.model = Molmo2TextModel(config)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids=idx).last_hidden_state)


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    "hf_molmo2_text_lm",
    "adamw",
    "output_logit_divergence",
    where=("lm_head",),
    diverges="auto",
    heldout=True,
    note="Molmo2 text decoder, untied head given a muP-style learning-rate multiplier read the "
    "wrong way round (x500 instead of /500) and no weight decay: the head's logits run away",
    onset=0,
)
def h110_molmo2_head_lr_multiplier(ctx: Context) -> None:
    gen = seeded(11001)
    model = Molmo2LM()
    head = list(model.lm_head.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": 2e-3}, {"params": head, "lr": 2e-3 * 500}], weight_decay=0.0
    )
    batches = text_batches(gen, batch=16, length=24)
    ctx.attach(model, opt)
    top = []
    for _step in range(200):
        x, y = next(batches)
        logits = model(x)
        top.append(float(logits.detach().abs().amax()))
        loss = _lm_loss(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the head's logits grew over 20x", max(top[:30]) > 20 * top[0])
    ctx.check("the loss climbed over twice its start", max(ctx.losses[:30]) > 2 * ctx.losses[0])
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "hf_molmo2_text_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="Molmo2 text decoder on stdlib bytes, AdamW with warm-up, cosine decay and weight decay",
)
def h110_molmo2_text_control(ctx: Context) -> None:
    gen = seeded(11002)
    model = Molmo2LM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps, warm = 160, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
        ),
    )
    batches = text_batches(gen, batch=16, length=24)
    ctx.attach(model, opt)
    for _step in range(steps):
        x, y = next(batches)
        loss = _lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("finite", _finite(ctx.losses))
    ctx.check(
        "the loss fell by a third", _median(ctx.losses[-10:]) < 0.67 * _median(ctx.losses[:5])
    )


# -- Hugging Face Molmo2 vision encoder on digits --------------------------------------------------


class Molmo2Digits(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        from transformers.models.molmo2.configuration_molmo2 import Molmo2VisionConfig
        from transformers.models.molmo2.modeling_molmo2 import Molmo2VisionModel

        config = Molmo2VisionConfig(
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=dim // 2,
            image_size=[8, 8],
            patch_size=2,
            num_channels=1,
        )
        self.vision = Molmo2VisionModel(config)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 8x8 digits into 16 patches of 2x2 pixels, the layout the encoder takes
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        return self.head(self.vision(p).pooler_output)


@scenario(
    "hf_molmo2_vision_digits",
    "rmsprop",
    "healthy",
    heldout=True,
    note="Molmo2 vision encoder on 2x2-pixel digit patches, RMSprop with a step decay",
)
def h110_molmo2_vision_control(ctx: Context) -> None:
    gen = seeded(11003)
    model = Molmo2Digits()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    batches = digit_batches(gen, batch=32)
    ctx.attach(model, opt)
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the loss fell below half", _median(ctx.losses[-10:]) < 0.5 * ctx.losses[0])


def _max_attention_logit(model: Molmo2Digits, x: torch.Tensor) -> tuple[float, float]:
    """The largest q.k * scale over the encoder's layers and the mean attention entropy of the
    last layer, read from q_proj / k_proj outputs."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.vision.layers):
        for name in ("q_proj", "k_proj"):
            mod = getattr(layer.self_attn, name)
            hooks.append(
                mod.register_forward_hook(
                    lambda _m, _i, out, key=f"{i}.{name}": seen.__setitem__(key, out.detach())
                )
            )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    top, entropy = 0.0, 0.0
    for i, layer in enumerate(model.vision.layers):
        attn = layer.self_attn
        b, t, _ = seen[f"{i}.q_proj"].shape
        q = seen[f"{i}.q_proj"].reshape(b, t, -1, attn.head_dim).transpose(1, 2)
        k = seen[f"{i}.k_proj"].reshape(b, t, -1, attn.head_dim).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) * attn.scaling
        top = max(top, float(s.abs().amax()))
        p = torch.softmax(s, dim=-1)
        entropy = float(-(p * torch.log(p + 1e-12)).sum(-1).mean())
    return top, entropy


@scenario(
    "hf_molmo2_vision_digits",
    "adam",
    "attention_logit_growth",
    where=("vision.layers.0.self_attn", "vision.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="Molmo2 vision encoder (no QK-norm) on digit patches at a peak learning rate copied "
    "from a QK-normed recipe, no warm-up: the attention logits grow until the heads go one-hot",
    onset=0,
)
def h110_molmo2_vision_attention_growth(ctx: Context) -> None:
    gen = seeded(11005)
    model = Molmo2Digits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    batches = digit_batches(gen, batch=32)
    probe, _ = next(batches)
    top0, ent0 = _max_attention_logit(model, probe)
    ctx.attach(model, opt)
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    top1, ent1 = _max_attention_logit(model, probe)
    ctx.check("the attention logits grew over 100x, past 50", top1 > 100 * top0 and top1 > 50)
    ctx.check("the attention entropy fell below 30%", ent1 < 0.3 * ent0)
    ctx.check("finite", _finite(ctx.losses))


# -- graph-level molecule classifier with a gated attention readout ------------------------------


def molecules(gen: torch.Generator, count: int, atoms: int = 12):
    """Generated molecules: atom types (5, one-hot), a backbone chain plus random ring bonds;
    the class (3) is which of three functional motifs (a type-3 atom bonded to a type-4 one,
    two type-2 atoms bonded, neither) the molecule carries."""
    types = torch.randint(0, 5, (count, atoms), generator=gen)
    adj = torch.zeros(count, atoms, atoms)
    idx = torch.arange(atoms - 1)
    adj[:, idx, idx + 1] = 1.0
    extra = (torch.rand(count, atoms, atoms, generator=gen) < 0.08).float()
    adj = ((adj + extra).clamp(max=1.0) > 0).float()
    adj = ((adj + adj.transpose(1, 2)) > 0).float()
    onehot = F.one_hot(types, 5).float()
    t3, t4, t2 = (types == 3).float(), (types == 4).float(), (types == 2).float()
    motif_a = ((t3[:, :, None] * t4[:, None, :]) * adj).sum((1, 2)) > 0
    motif_b = ((t2[:, :, None] * t2[:, None, :]) * adj).sum((1, 2)) > 0
    y = torch.where(motif_a, 0, torch.where(motif_b, 1, 2))
    return onehot, adj, y


class GatedReadoutGNN(nn.Module):
    def __init__(self, dim: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(5, dim)
        self.conv1 = nn.Linear(dim, dim)
        self.conv2 = nn.Linear(dim, dim)
        self.attend = nn.Linear(dim, 1)
        self.gate = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, feats: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = self.embed(feats)
        deg = adj.sum(-1, keepdim=True) + 1.0
        h = F.relu(self.conv1((h + adj @ h) / deg))
        h = F.relu(self.conv2((h + adj @ h) / deg))
        a = torch.softmax(self.attend(h), dim=1)
        pooled = (a * torch.sigmoid(self.gate(h)) * h).sum(1)
        return self.head(pooled)


@scenario(
    "mol_gated_attention_readout",
    "adam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="graph-level molecule classifier (gated attention readout) fitting a small assay set "
    "full-batch with Adam and no weight decay or label smoothing: the logits grow until the "
    "float32 softmax of most molecules is exactly one",
    onset=120,
)
def h110_molecule_readout_softmax_collapse(ctx: Context) -> None:
    gen = seeded(11006)
    feats, adj, y = molecules(gen, 128)
    model = GatedReadoutGNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    start = collapsed_fraction(model(feats, adj).detach(), y)
    collapsed = []
    for _step in range(1100):
        ctx.targets(y)
        logits = model(feats, adj)
        collapsed.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("no molecule collapsed at the start", start == 0.0)
    ctx.check("over half the molecules collapsed by the end", collapsed[-1] > 0.5)
    ctx.check("none collapsed before the onset", max(collapsed[:120]) == 0.0)


# -- mixture-of-experts regressor with a gating network (diabetes) -------------------------------


@lru_cache(maxsize=1)
def diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(d.target, dtype=torch.float32)
    return x, (y - y.mean()) / y.std()


class GatedMoERegressor(nn.Module):
    def __init__(self, features: int = 10, experts: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.gate = nn.Linear(features, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.gate(x), dim=-1)
        out = torch.cat([e(x) for e in self.experts], dim=-1)
        return (w * out).sum(-1)


def top_hessian_eigenvalue(model: nn.Module, loss_fn, iters: int = 20) -> float:
    """Power iteration on Hessian-vector products of the full-batch loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "moe_gated_regressor",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="mixture-of-experts regressor (softmax gate over tanh experts) on diabetes with SGD; a "
    "resumed run applies the linear-scaling rule for a 32x larger batch it never got: the step "
    "size jumps past 2/sharpness and the loss oscillates out",
    onset=150,
)
def h110_moe_regressor_lr_past_sharpness(ctx: Context) -> None:
    gen = seeded(11007)
    x, y = diabetes()
    model = GatedMoERegressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), b[1]), (x, y)))
    sharp, lr_after = 0.0, 0.0
    for step in range(220):
        if step == 150:
            sharp = top_hessian_eigenvalue(model, lambda: F.mse_loss(model(x), y))
            for group in opt.param_groups:
                group["lr"] *= 32
            lr_after = opt.param_groups[0]["lr"]
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = F.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell before the jump", _median(ctx.losses[140:150]) < 0.8)
    ctx.check("the new step size exceeds 2/sharpness", lr_after * sharp > 2.0)
    late = [v if math.isfinite(v) else 1e9 for v in ctx.losses[150:]]
    ctx.check("the loss blew up after the jump", max(late) > 20 * _median(ctx.losses[140:150]))


# -- optical character recogniser: ReLU RNN + CTC on rendered digit lines -------------------------


def digit_lines(gen: torch.Generator, batch: int = 32, chars: int = 4):
    """A line of rendered digits (8 px high, 8 px per glyph), read column by column."""
    x, y = digits()
    while True:
        idx = torch.randint(0, len(y), (batch, chars), generator=gen)
        img = torch.cat([x[idx[:, i]].reshape(-1, 8, 8) for i in range(chars)], dim=2)
        yield img.transpose(1, 2), y[idx] + 1  # (batch, columns, 8); label 0 is the CTC blank


class LineOCR(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.frontend = nn.Linear(8, 32)
        self.rnn = nn.RNN(32, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 11)
        # IRNN initialisation (Le et al. 2015): identity recurrence, zero recurrent bias
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()

    def forward(self, cols: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(F.relu(self.frontend(cols)))
        return self.head(out)


def ctc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    b, t, _ = logits.shape
    logp = logits.log_softmax(-1).transpose(0, 1)
    return F.ctc_loss(
        logp,
        labels,
        torch.full((b,), t, dtype=torch.long),
        torch.full((b,), labels.shape[1], dtype=torch.long),
        zero_infinity=False,
    )


@scenario(
    "ocr_relu_rnn_ctc_lines",
    "sgd_mom",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="line OCR with an identity-initialised ReLU RNN and CTC, SGD with momentum and no "
    "gradient clipping: the recurrence's gain drifts past one and the gradient through the 32 "
    "columns grows geometrically until the run breaks",
    onset=0,
)
def h110_line_ocr_irnn_unclipped(ctx: Context) -> None:
    gen = seeded(11008)
    model = LineOCR()
    opt = torch.optim.SGD(model.parameters(), lr=6e-3, momentum=0.9)
    lines = digit_lines(gen)
    ctx.attach(model, opt)
    rnn_grad, radius = [], []
    for _step in range(200):
        cols, labels = next(lines)
        loss = ctc(model(cols), labels)
        loss.backward()
        g_rnn = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in model.rnn.parameters()))
        rnn_grad.append(g_rnn)
        w_hh = model.rnn.weight_hh_l0.detach()
        if bool(torch.isfinite(w_hh).all()):
            radius.append(float(torch.linalg.eigvals(w_hh).abs().max()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) and len(ctx.losses) > 5:
            break
    finite = [g for g in rnn_grad if math.isfinite(g)]
    ctx.check("the RNN's gradient grew over 1000x from step 1", max(finite) > 1000 * finite[1])
    ctx.check("the recurrence's spectral radius passed one", max(radius) > 1.05)
    ctx.check("the run broke", not _finite(ctx.losses))


# -- bike-demand forecaster (ReLU MLP) -----------------------------------------------------------


def bike_demand(gen: torch.Generator, batch: int = 64):
    """Generated hourly rentals: hour (sin, cos), weekday one-hot, temperature, humidity, holiday;
    demand has commute peaks on workdays, a temperature optimum and rain suppression."""
    while True:
        hour = torch.randint(0, 24, (batch,), generator=gen).float()
        day = torch.randint(0, 7, (batch,), generator=gen)
        temp = torch.randn(batch, generator=gen)
        hum = torch.rand(batch, generator=gen)
        holiday = (torch.rand(batch, generator=gen) < 0.05).float()
        work = ((day < 5).float() * (1 - holiday))[:, None]
        ang = 2 * math.pi * hour / 24
        x = torch.cat(
            [
                torch.stack([ang.sin(), ang.cos()], 1),
                F.one_hot(day, 7).float(),
                torch.stack([temp, hum, holiday], 1),
            ],
            1,
        )
        peaks = torch.exp(-((hour - 8) ** 2) / 3) + torch.exp(-((hour - 17.5) ** 2) / 4)
        leisure = torch.exp(-((hour - 14) ** 2) / 12)
        y = (
            1.5 * work[:, 0] * peaks
            + (1 - work[:, 0]) * 1.2 * leisure
            + 0.6 * torch.exp(-((temp - 0.5) ** 2))
            - 0.8 * (hum > 0.8).float()
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield x, y


@scenario(
    "bike_demand_relu_forecaster",
    "adagrad",
    "loss_of_plasticity",
    where=("net.0", "net.2"),
    diverges=None,
    heldout=True,
    note="bike-demand ReLU MLP with Adagrad; a schedule restart for the new season sets the "
    "learning rate to 1 (meant 1e-2): one burst of huge steps leaves most ReLUs dead and the "
    "forecaster can no longer fit",
    onset=150,
)
def h110_bike_demand_dead_relus(ctx: Context) -> None:
    gen = seeded(11009)
    model = nn.Module()
    model.net = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = bike_demand(gen)
    probe, _ = next(batches)
    ctx.attach(model, opt)
    dead_before = first_before = 0.0
    for step in range(400):
        if step == 150:
            with torch.no_grad():
                dead_before = dead_fraction(model.net[:4](probe))
                first_before = dead_fraction(model.net[:2](probe))
            for group in opt.param_groups:
                group["lr"] = 1.0
        if step == 155:
            for group in opt.param_groups:
                group["lr"] = 0.05
        x, y = next(batches)
        loss = F.mse_loss(model.net(x).squeeze(-1), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        dead_after = dead_fraction(model.net[:4](probe))
        dead_first = dead_fraction(model.net[:2](probe))
    before = _median(ctx.losses[130:150])
    ctx.check("the forecaster fitted before the restart", before < 0.5 * ctx.losses[0])
    ctx.check(
        "the burst killed a third of each layer's units",
        dead_after > dead_before + 0.3 and dead_first > first_before + 0.3,
    )
    ctx.check("the loss never came back", _median(ctx.losses[-50:]) > 2 * before)


# -- TransH knowledge-graph embedding with a margin loss ------------------------------------------


class TransH(nn.Module):
    def __init__(self, entities: int = 200, relations: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.ent = nn.Embedding(entities, dim)
        self.rel = nn.Embedding(relations, dim)
        self.normal = nn.Embedding(relations, dim)
        for emb in (self.ent, self.rel, self.normal):
            nn.init.normal_(emb.weight, std=dim**-0.5)

    def score(self, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.normal(r), dim=-1)
        eh, et = self.ent(h), self.ent(t)
        eh = eh - (eh * w).sum(-1, keepdim=True) * w
        et = et - (et * w).sum(-1, keepdim=True) * w
        return (eh + self.rel(r) - et).norm(dim=-1)


def kg_triples(gen: torch.Generator, entities: int = 200, relations: int = 8, count: int = 2000):
    """Triples of a generated graph: each relation maps an entity's cluster to another."""
    cluster = torch.randint(0, 10, (entities,), generator=gen)
    shift = torch.randint(1, 10, (relations,), generator=gen)
    h = torch.randint(0, entities, (count,), generator=gen)
    r = torch.randint(0, relations, (count,), generator=gen)
    target = (cluster[h] + shift[r]) % 10
    t = torch.empty_like(h)
    for c in range(10):
        members = (cluster == c).nonzero().flatten()
        sel = target == c
        t[sel] = members[torch.randint(0, len(members), (int(sel.sum()),), generator=gen)]
    return h, r, t


@scenario(
    "transh_kg_margin",
    "asgd",
    "update_ratio_out_of_range",
    where=("ent", "rel"),
    diverges=None,
    heldout=True,
    note="TransH (entities kept inside the unit ball) on a generated knowledge graph with a "
    "margin ranking loss and ASGD; a LambdaLR whose post-warm-up branch returns the step count "
    "instead of 1.0: from step 150 each update moves the entity table by about half its size",
    onset=150,
)
def h110_transh_lambda_returns_step(ctx: Context) -> None:
    gen = seeded(11010)
    h, r, t = kg_triples(gen)
    model = TransH()
    opt = torch.optim.ASGD(model.parameters(), lr=10.0, t0=1e9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 150 else float(s))
    ctx.attach(model, opt)
    ratio = []
    for _step in range(250):
        idx = torch.randint(0, len(h), (512,), generator=gen)
        corrupt = torch.randint(0, 200, (512,), generator=gen)
        pos = model.score(h[idx], r[idx], t[idx])
        neg = model.score(h[idx], r[idx], corrupt)
        loss = F.relu(1.0 + pos - neg).mean()
        loss.backward()
        before = model.ent.weight.detach().clone()
        opt.step()
        with torch.no_grad():  # TransH's constraint |e| <= 1 on the entities
            norms = model.ent.weight.norm(dim=-1, keepdim=True)
            model.ent.weight.div_(norms.clamp(min=1.0))
        ratio.append(float((model.ent.weight.detach() - before).norm() / before.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    before_bug = _median(ctx.losses[130:150])
    ctx.check("the loss fell before the bug", before_bug < 0.75 * ctx.losses[0])
    ctx.check("updates were under 6% of the weights before", max(ratio[20:150]) < 0.06)
    ctx.check("updates passed 30% of the weights after", _median(ratio[150:200]) > 0.3)
    ctx.check("the loss rose and stayed up", _median(ctx.losses[-50:]) > 1.1 * before_bug)


# -- denoising diffusion on 1-D signals ------------------------------------------------------------


def signals(gen: torch.Generator, batch: int = 32, length: int = 32) -> torch.Tensor:
    """Generated 1-D signals: a sum of two sinusoids with random frequencies and phases."""
    t = torch.linspace(0, 1, length)
    f = torch.randint(1, 5, (batch, 2), generator=gen).float()
    ph = 2 * math.pi * torch.rand(batch, 2, generator=gen)
    return 0.7 * torch.sin(2 * math.pi * f[:, :1] * t + ph[:, :1]) + 0.3 * torch.sin(
        2 * math.pi * f[:, 1:] * t + ph[:, 1:]
    )


class SignalDenoiser(nn.Module):
    """A small 1-D conv epsilon-predictor with a learnt time embedding."""

    def __init__(self, width: int = 32, steps: int = 100) -> None:
        super().__init__()
        self.time = nn.Embedding(steps, width)
        self.inp = nn.Conv1d(1, width, 5, padding=2)
        self.mid = nn.Conv1d(width, width, 5, padding=2)
        self.out = nn.Conv1d(width, 1, 5, padding=2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.inp(x[:, None]) + self.time(t)[:, :, None])
        h = F.silu(self.mid(h)) + h
        return self.out(h)[:, 0]


@scenario(
    "diffusion_1d_signals",
    "adam",
    "adam_second_moment_poisoned",
    where=("out",),
    diverges=None,
    heldout=True,
    note="DDPM on generated 1-D signals trained with a 1/sigma^2-weighted noise loss whose weight "
    "is not clamped; one batch draws t=0 samples (weight ~1e6): the single giant "
    "gradient fills Adam's second moment and the updates stay tiny for hundreds of steps",
    onset=150,
)
def h110_diffusion_unclamped_snr_weight(ctx: Context) -> None:
    gen = seeded(11011)
    steps = 100
    betas = torch.linspace(1e-6, 0.05, steps)
    sigma2 = 1 - torch.cumprod(1 - betas, 0)
    model = SignalDenoiser(steps=steps)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    v_before = v_after = 0.0
    moves: list[float] = []
    norm = float((1 / sigma2[10:]).mean())
    for step in range(400):
        x0 = signals(gen)
        t = torch.randint(10, steps, (len(x0),), generator=gen)
        if step == 150:
            t[:4] = 0  # one batch from a sampler whose lower bound was written as 0
        noise = torch.randn(x0.shape, generator=gen)
        s2 = sigma2[t][:, None]
        xt = (1 - s2).sqrt() * x0 + s2.sqrt() * noise
        # the noise error weighted by 1 / sigma^2 (an SNR-style weight written without the
        # usual min-SNR clamp), scaled by its mean over the timesteps the sampler should draw
        loss = ((model(xt, t) - noise) ** 2 / s2).mean() / norm
        loss.backward()
        w_prev = model.out.weight.detach().clone()
        opt.step()
        moves.append(float((model.out.weight.detach() - w_prev).norm()))
        if step == 149:
            v_before = float(opt.state[model.out.weight]["exp_avg_sq"].mean())
        if step == 150:
            v_after = float(opt.state[model.out.weight]["exp_avg_sq"].mean())
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the second moment jumped over 1e4x", v_after > 1e4 * v_before)
    before = _median(ctx.losses[140:150])
    ctx.check("the loss had been falling", before < 0.8 * _median(ctx.losses[:10]))
    ctx.check(
        "the output layer's updates shrank over 10x for 100 steps",
        _median(moves[160:260]) < 0.1 * _median(moves[100:150]),
    )


# -- sound-event detector with weak-label (linear-softmax) pooling ---------------------------------


def sound_clips(gen: torch.Generator, batch: int = 16, frames: int = 40, bands: int = 16):
    """Generated log-mel-like clips: background noise plus up to four event classes, each a band
    of energy over a random stretch of frames; only clip-level (weak) labels are given."""
    while True:
        x = 0.3 * torch.randn(batch, frames, bands, generator=gen) - 4.0
        y = (torch.rand(batch, 4, generator=gen) < 0.4).float()
        for c in range(4):
            start = torch.randint(0, frames - 10, (batch,), generator=gen)
            for i in range(batch):
                if y[i, c] > 0:
                    s = int(start[i])
                    x[i, s : s + 10, 4 * c : 4 * c + 4] += 3.0
        yield x, y


class WeakSED(nn.Module):
    def __init__(self, bands: int = 16, width: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv1d(bands, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)
        self.frame_head = nn.Conv1d(width, classes, 1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        # per-clip standardisation, as the recipe's feature extractor does it
        mean = clips.mean(dim=(1, 2), keepdim=True)
        std = clips.std(dim=(1, 2), keepdim=True)
        x = ((clips - mean) / std).transpose(1, 2)
        h = F.relu(self.conv2(F.relu(self.conv(x))))
        p = torch.sigmoid(self.frame_head(h))  # frame-level probabilities
        return (p * p).sum(-1) / p.sum(-1)  # linear-softmax pooling to the clip level


@scenario(
    "sound_event_weak_pooling",
    "adadelta",
    "nonfinite",
    where=("conv",),
    diverges=170,
    heldout=True,
    note="weakly labelled sound-event detector (frame probabilities, linear-softmax pooling) "
    "standardising each clip by its own std; a clip of digital silence (constant -100 dB) turns "
    "into 0/0 at the input, the loss and every weight go NaN",
    onset=170,
)
def h110_sound_event_silent_clip(ctx: Context) -> None:
    gen = seeded(11012)
    model = WeakSED()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    clips = sound_clips(gen)
    ctx.attach(model, opt)
    silent_std = -1.0
    for step in range(200):
        x, y = next(clips)
        if step == 170:
            x[3] = -100.0
            y[3] = 0.0
            silent_std = float(x[3].std())
        p = model(x).clamp(1e-7, 1 - 1e-7)
        loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the detector trained before the silent clip", _median(ctx.losses[160:170]) < 0.6)
    ctx.check("the silent clip's std was exactly zero", silent_std == 0.0)
    ctx.check(
        "finite before, NaN from the silent clip",
        _finite(ctx.losses[:170]) and math.isnan(ctx.losses[170]),
    )
    ctx.check("the weights went NaN", not bool(torch.isfinite(model.conv.weight).all()))


# -- wind-turbine power curve from SCADA records ---------------------------------------------------


def scada(gen: torch.Generator, batch: int = 64):
    """Generated SCADA records (wind speed m/s, direction sin/cos, air density, pitch, rotor
    rpm, nacelle temperature), standardised; target: the power output (a sigmoid power curve)."""
    while True:
        speed = 3 + 12 * torch.rand(batch, generator=gen)
        direction = 2 * math.pi * torch.rand(batch, generator=gen)
        density = 1.225 + 0.05 * torch.randn(batch, generator=gen)
        pitch = torch.relu(speed - 12) * 2 + 0.5 * torch.randn(batch, generator=gen)
        rpm = 10 + 0.8 * speed.clamp(max=13) + 0.3 * torch.randn(batch, generator=gen)
        temp = 15 + 5 * torch.randn(batch, generator=gen)
        power = density / 1.225 * torch.sigmoid(0.9 * (speed - 8)) + 0.03 * torch.randn(
            batch, generator=gen
        )
        x = torch.stack(
            [
                (speed - 9) / 3.5,
                direction.sin(),
                direction.cos(),
                (density - 1.225) / 0.05,
                (pitch - 1.5) / 3,
                (rpm - 17) / 3,
                (temp - 15) / 5,
            ],
            1,
        )
        yield x, (power - 0.5) / 0.35


@scenario(
    "wind_turbine_power_curve",
    "nadam",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="wind-turbine power-curve MLP on standardised SCADA records; one batch comes from a "
    "turbine whose logger wrote rotor speed in rad/min and temperature in kelvin, unstandardised",
    onset=180,
)
def h110_wind_scada_unit_mixup(ctx: Context) -> None:
    gen = seeded(11013)
    model = nn.Sequential(
        nn.Linear(7, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = scada(gen)
    ctx.attach(model, opt)
    spread = []
    for step in range(260):
        x, y = next(batches)
        if step == 180:
            x[:, 5] = (x[:, 5] * 3 + 17) * 2 * math.pi  # rpm in rad/min, never standardised
            x[:, 6] = x[:, 6] * 5 + 15 + 273.15  # degrees C written as kelvin
        spread.append(float(x.abs().amax()))
        loss = F.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _median(ctx.losses[170:180])
    ctx.check("the power curve was fitted before", before < 0.2 * ctx.losses[0])
    ctx.check("the bad batch's inputs were 50x the others", spread[180] > 50 * max(spread[:180]))
    ctx.check("the loss jumped on the bad batch", ctx.losses[180] > 10 * before)
    ctx.check("finite", _finite(ctx.losses))


# -- micro-Doppler radar gesture classifier (class-weighted) --------------------------------------


GESTURE_FREQ = torch.tensor([0.3, 0.3, 0.2, 0.197, 0.003])  # the fifth, "double tap", is rare


def render_gestures(y: torch.Tensor, gen: torch.Generator, frames: int = 24, bins: int = 16):
    """Micro-Doppler spectrograms of five hand gestures (push, pull, swipe, wave, double tap):
    a Doppler line whose frequency follows each gesture's velocity profile, plus clutter."""
    t = torch.linspace(0, 1, frames)
    shapes = torch.stack(
        [
            torch.sin(math.pi * t),
            -torch.sin(math.pi * t),
            torch.sin(2 * math.pi * t),
            torch.sin(4 * math.pi * t),
            torch.sin(6 * math.pi * t).abs(),
        ]
    )
    speed = 0.8 + 0.4 * torch.rand(len(y), 1, generator=gen)
    centre = bins / 2 + (bins / 2 - 2) * speed * shapes[y]
    x = torch.exp(-((torch.arange(bins).float() - centre[..., None]) ** 2) / 2.0)
    return x + 0.1 * torch.rand(len(y), frames, bins, generator=gen)


def doppler_frames(gen: torch.Generator, batch: int = 32):
    while True:
        y = torch.multinomial(GESTURE_FREQ, batch, replacement=True, generator=gen)
        yield render_gestures(y, gen), y


class RadarGestureNet(nn.Module):
    def __init__(self, bins: int = 16, width: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(bins, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x.transpose(1, 2)))))
        return self.head(h.mean(-1))


@scenario(
    "radar_doppler_gesture_cnn",
    "sgd_nesterov",
    "gradient_spike",
    where=("conv1", "conv2"),
    diverges=None,
    heldout=True,
    note="micro-Doppler gesture CNN with inverse-frequency class weights (the rare double tap "
    "weighs ~65x a push); one batch happens to hold a cluster of double taps the model has "
    "barely seen, and that step's gradient spikes",
    onset=150,
)
def h110_radar_rare_class_weight_spike(ctx: Context) -> None:
    gen = seeded(11014)
    model = RadarGestureNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    weight = 1.0 / (GESTURE_FREQ * len(GESTURE_FREQ))
    batches = doppler_frames(gen)
    ctx.attach(model, opt)
    norms = []
    for step in range(250):
        x, y = next(batches)
        if step == 150:
            y[:6] = 4  # the loader's shuffle buffer released a run of double taps together
            x[:6] = render_gestures(y[:6], gen)
        ctx.targets(y)
        # weighted per sample and averaged over the batch (not over the weights' sum)
        loss = (weight[y] * F.cross_entropy(model(x), y, reduction="none")).mean()
        loss.backward()
        norms.append({n: float(m.weight.grad.norm()) for n, m in model.named_children()})
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the classifier trained before", _median(ctx.losses[140:150]) < 0.5 * ctx.losses[0])
    for name in ("conv1", "conv2"):
        g = [n[name] for n in norms]
        ctx.check(f"{name}'s gradient spiked over 30x", g[150] > 30 * _median(g[100:150]))
    ctx.check("finite", _finite(ctx.losses))


# -- stereo disparity net with a correlation cost volume ------------------------------------------


def stereo_pairs(gen: torch.Generator, batch: int = 8, h: int = 16, w: int = 32, dmax: int = 8):
    """Generated rectified stereo pairs: a smoothed random texture seen from two cameras; the top
    and bottom halves of the scene are at different depths (integer disparities 0..7)."""
    kernel = torch.ones(1, 1, 3, 3) / 9
    while True:
        tex = torch.rand(batch, 1, h, w + 2 * dmax, generator=gen)
        tex = 10 * (F.conv2d(tex, kernel, padding=1) - 0.5)  # zero-mean, unit-ish contrast
        disp = torch.randint(0, dmax, (batch, 2), generator=gen)
        left = tex[..., dmax : dmax + w]
        right = torch.empty_like(left)
        gt = torch.empty(batch, h, w)
        for i in range(batch):
            for half, rows in enumerate((slice(0, h // 2), slice(h // 2, h))):
                d = int(disp[i, half])
                right[i, :, rows] = tex[i, :, rows, dmax + d : dmax + d + w]
                gt[i, rows] = float(d)
        yield torch.cat([left, right], 1), gt


class CostVolumeStereo(nn.Module):
    def __init__(self, width: int = 16, dmax: int = 8) -> None:
        super().__init__()
        self.dmax = dmax
        self.feat1 = nn.Conv2d(1, width, 3, padding=1)
        self.feat2 = nn.Conv2d(width, width, 3, padding=1)
        self.agg1 = nn.Conv2d(dmax, 2 * dmax, 3, padding=1)
        self.agg2 = nn.Conv2d(2 * dmax, dmax, 3, padding=1)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        return self.feat2(F.relu(self.feat1(img)))

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        fl, fr = self.features(pair[:, :1]), self.features(pair[:, 1:])
        # a left pixel x sees the scene point the right view has at x - d
        cost = torch.stack(
            [(fl * torch.roll(fr, shifts=d, dims=-1)).mean(1) for d in range(self.dmax)], 1
        )
        score = self.agg2(F.relu(self.agg1(cost)))
        prob = torch.softmax(score, dim=1)  # soft-argmax over the disparities
        return (prob * torch.arange(self.dmax).float()[None, :, None, None]).sum(1)


def _stereo_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    # the left-most columns have no match in the right view (the roll wraps): leave them out
    return F.smooth_l1_loss(pred[..., 8:], gt[..., 8:])


@scenario(
    "stereo_cost_volume_disparity",
    "adamax",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="cost-volume stereo net on generated pairs with Adamax and a linear warm-up whose "
    "length was set to the whole run and peak to 25x the recipe's 2e-2: the learning rate "
    "keeps climbing and the disparity loss slowly turns and climbs",
    onset=180,
)
def h110_stereo_warmup_never_ends(ctx: Context) -> None:
    gen = seeded(11015)
    model = CostVolumeStereo()
    opt = torch.optim.Adamax(model.parameters(), lr=0.5)
    steps = 400
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / steps)
    pairs = stereo_pairs(gen)
    ctx.attach(model, opt)
    for _step in range(steps):
        x, gt = next(pairs)
        loss = _stereo_loss(model(x), gt)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("the net learnt first", min(ctx.losses) < 0.5 * ctx.losses[0])
    ctx.check("finite", _finite(ctx.losses))
    best = ctx.losses.index(min(ctx.losses))
    ctx.check(
        "the loss climbed to over twice its best",
        _median(ctx.losses[-20:]) > 2 * _median(ctx.losses[max(best - 10, 0) : best + 10]),
    )


@scenario(
    "stereo_cost_volume_disparity",
    "adam",
    "healthy",
    heldout=True,
    note="cost-volume stereo net on generated pairs, Adam with a short warm-up and cosine decay",
)
def h110_stereo_control(ctx: Context) -> None:
    gen = seeded(11016)
    model = CostVolumeStereo()
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    steps = 300
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    pairs = stereo_pairs(gen)
    ctx.attach(model, opt)
    for _step in range(steps):
        x, gt = next(pairs)
        loss = _stereo_loss(model(x), gt)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the loss fell tenfold", _median(ctx.losses[-20:]) < 0.1 * ctx.losses[0])


# -- Hugging Face NeuCodec (semantic + acoustic codec) on generated audio ----------------------


def neucodec_model():
    from transformers import Wav2Vec2BertConfig
    from transformers.models.neucodec.configuration_neucodec import NeuCodecConfig
    from transformers.models.neucodec.modeling_neucodec import NeuCodecModel

    semantic = Wav2Vec2BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        feature_projection_input_dim=160,
        output_hidden_size=32,
        mask_time_prob=0.0,  # no SpecAugment (it draws from numpy's global generator)
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
    )
    config = NeuCodecConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        encoder_hidden_size=8,
        downsampling_ratios=(2, 2, 4),
        semantic_model_config=semantic,
        quantization_dim=64,
        quantization_levels=(4, 4, 4),
        max_position_embeddings=256,
        activation_dropout=0.0,
    )
    return NeuCodecModel(config)


def codec_audio(gen: torch.Generator, batch: int = 4, length: int = 512):
    """Generated 16 kHz clips (harmonic tones with vibrato, noise bursts) and the semantic
    encoder's input: a 160-bin log-power spectrum, one frame per 16 samples (the codec's hop)."""
    t = torch.arange(length) / 16000
    while True:
        f0 = 150 + 350 * torch.rand(batch, 1, generator=gen)
        vib = 1 + 0.01 * torch.sin(2 * math.pi * 5 * t)
        wave = sum(
            (0.5 / k) * torch.sin(2 * math.pi * k * f0 * vib * t) for k in (1, 2, 3)
        ) * torch.rand(batch, 1, generator=gen)
        burst = (torch.rand(batch, 1, generator=gen) < 0.3).float()
        wave = wave + 0.1 * burst * torch.randn(batch, length, generator=gen)
        spec = torch.stft(
            wave, n_fft=318, hop_length=16, window=torch.hann_window(318), return_complex=True
        )
        feats = torch.log(spec.abs() ** 2 + 1e-6)[..., :32].transpose(1, 2)
        yield wave[:, None], feats


@scenario(
    "hf_neucodec_tones",
    "adamw",
    "healthy",
    heldout=True,
    note="NeuCodec (frozen semantic encoder, acoustic encoder, FSQ quantiser, decoder) from a "
    "tiny config, reconstructing generated tones; AdamW (0.8, 0.99) with exponential decay",
)
def h110_neucodec_control(ctx: Context) -> None:
    gen = seeded(11018)
    model = neucodec_model()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.8, 0.99), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.995)
    clips = codec_audio(gen)
    ctx.attach(model, opt)
    for _step in range(200):
        wave, feats = next(clips)
        out = model(input_values=wave, input_features=feats).audio_values
        target = F.interpolate(wave, size=out.shape[-1], mode="linear", align_corners=False)
        loss = F.l1_loss(out, target) + F.mse_loss(out, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("finite", _finite(ctx.losses))
    ctx.check(
        "the loss fell by a third", _median(ctx.losses[-20:]) < 0.67 * _median(ctx.losses[:5])
    )
