"""Held-out set 119 (``h119_``): Hugging Face GLM-4.6V, Granite 4 Vision, VideoLLaMA3 and
VipLlava text towers as byte LMs and an UltraVBert text classifier, all from tiny configs (no
download); hand-written river-flood stage forecaster, citation-graph node classifier, HVAC energy
regressor, EMG gesture decoder (ReLU RNN), battery state-of-charge estimator, rainfall nowcaster
(Z-R conversion), font-glyph autoencoder (fp16 autocast, GradScaler), gait-phase GRU, soil-moisture
regressor and enzyme-class CNN. Every scenario is held out."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    fit,
    lm_loss,
    ramp,
    scenario,
    seeded,
    text_batches,
)

_TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    head_dim=16,
)


class TowerLM(nn.Module):
    """A vision-language model's text tower with an untied byte head."""

    def __init__(self, tower: nn.Module, dim: int = 32, vocab: int = 128) -> None:
        super().__init__()
        self.model = tower
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids=idx).last_hidden_state)


def _glm46v_text() -> TowerLM:
    from transformers import Glm4vTextConfig, Glm4vTextModel

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return TowerLM(Glm4vTextModel(Glm4vTextConfig(**_TINY, rope_parameters=rope)))


def _granite4_vision_text() -> TowerLM:
    from transformers import Granite4VisionTextConfig, Granite4VisionTextModel

    return TowerLM(Granite4VisionTextModel(Granite4VisionTextConfig(**_TINY)))


def _causal_from(composite: str) -> nn.Module:
    """The causal LM of a composite config's text tower, shrunk (VideoLLaMA3, VipLlava)."""
    import transformers
    from transformers import AutoModelForCausalLM

    text = getattr(transformers, composite)().text_config
    config = type(text)(**_TINY, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config)


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _warm_cosine(opt: torch.optim.Optimizer, peak: float, warm: int, total: int):
    def before(step: int) -> None:
        if step < warm:
            lr = peak * (step + 1) / warm
        else:
            lr = 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / total))
        for g in opt.param_groups:
            g["lr"] = lr * g.get("scale", 1.0)

    return before


# -- 1. loss spike: a warm restart configured at 20x the peak rate -------------------------------


@scenario(
    "glm46v_text_lm",
    "adamw",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="GLM-4.6V text tower; a warm restart at 20x the peak LR for three steps, then recovers",
    onset=170,
)
def h119_glm46v_text_restart_spike(ctx: Context) -> None:
    gen = seeded(11901)
    model = _glm46v_text()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    cosine = _warm_cosine(opt, 3e-3, 20, 280)

    def before(step: int) -> None:
        cosine(step)
        if 170 <= step < 173:  # the restart's "peak" was written as a multiplier of 20
            for g in opt.param_groups:
                g["lr"] = 6e-2

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        280,
        loss_fn=lm_loss,
        before=before,
        classifier=False,
    )
    pre = _mean(ctx.losses[160:170])
    ctx.check("loss fell before the restart", pre < 0.8 * _mean(ctx.losses[:10]))
    ctx.check("loss spiked after the restart", max(ctx.losses[170:185]) > 1.3 * pre)
    ctx.check("and recovered", _mean(ctx.losses[-10:]) < 1.1 * pre and _finite(ctx.losses))


# -- 2. loss divergence: a stage offset accumulated instead of set --------------------------------


def _flood_batches(gen: torch.Generator, batch: int = 64):
    """Upstream gauge stages, 24 h rainfall and soil wetness -> stage at the forecast gauge."""
    w = torch.randn(10, generator=gen) * 0.5
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = x @ w + 0.4 * torch.tanh(x[:, 0] * x[:, 3]) + 0.1 * torch.randn(batch, generator=gen)
        yield x, y[:, None]


@scenario(
    "river_flood_stage_forecaster",
    "adam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="datum offset accumulated every step (+= for =): the targets drift away faster than "
    "the model follows",
    onset=120,
)
def h119_flood_stage_datum_drift(ctx: Context) -> None:
    gen = seeded(11902)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    datum = [0.0]
    cosine = _warm_cosine(opt, 2e-3, 10, 300)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 120:  # gauge datum correction meant to be set once, accumulated each step
            datum[0] += 0.002 * (step - 119)
        return x, y + datum[0]

    fit(
        ctx,
        model,
        opt,
        _flood_batches(gen),
        300,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
        before=cosine,
    )
    low = min(ctx.losses[100:120])
    ctx.check("trained before the drift", low < 0.3 * _mean(ctx.losses[:5]))
    ctx.check("loss climbed steadily after", _mean(ctx.losses[-10:]) > 5 * low)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- 3. attention logit growth: q/k projections at a 50x rate -------------------------------------


def _qk_logit_max(model: TowerLM, idx: torch.Tensor) -> float:
    grabbed: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for name in ("q_proj", "k_proj"):
            mod = getattr(layer.self_attn, name)
            hooks.append(
                mod.register_forward_hook(
                    lambda m, a, out, key=f"{i}{name}": grabbed.__setitem__(key, out.detach())
                )
            )
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    top = 0.0
    for i in range(len(model.model.layers)):
        q, k = grabbed[f"{i}q_proj"], grabbed[f"{i}k_proj"]
        b, t, _ = q.shape
        q = q.reshape(b, t, -1, 16).transpose(1, 2)
        k = k.reshape(b, t, -1, 16).transpose(1, 2)
        top = max(top, float((q @ k.transpose(-1, -2)).abs().amax()) / 4.0)
    return top


@scenario(
    "granite4_vision_text_lm",
    "radam",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="Granite 4 Vision text tower; a per-module LR table matched 'q_proj'/'k_proj' to 100x",
)
def h119_granite4_vision_text_qk_rate(ctx: Context) -> None:
    gen = seeded(11903)
    model = _granite4_vision_text()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if "q_proj" not in n and "k_proj" not in n]
    opt = torch.optim.RAdam([{"params": qk, "lr": 1e-1}, {"params": rest}], lr=1e-3)
    batches = text_batches(gen, 16, 32)
    probe, _ = next(text_batches(torch.Generator().manual_seed(7), 16, 32))
    start = _qk_logit_max(model, probe)
    fit(ctx, model, opt, batches, 240, loss_fn=lm_loss, classifier=False)
    end = _qk_logit_max(model, probe)
    ctx.check("q.k logits grew past 50 (from under 1)", start < 1 and end > 50)
    ctx.check("finite", _finite(ctx.losses))


# -- 4. data outlier: a binary file in the text shard -----------------------------------------------


@scenario(
    "videollama3_text_lm",
    "adamax",
    "data_outlier",
    diverges=150,
    heldout=True,
    note="VideoLLaMA3 text tower (Qwen2); step 150's batch is a compressed file read as text",
    onset=150,
)
def h119_videollama3_text_binary_batch(ctx: Context) -> None:
    gen = seeded(11904)
    model = _causal_from("VideoLlama3Config")
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    noise = torch.Generator().manual_seed(150)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:  # high-entropy bytes: no structure the model has seen
            raw = torch.randint(0, 128, (x.shape[0], x.shape[1] + 1), generator=noise)
            x, y = raw[:, :-1], raw[:, 1:]
        return x, y

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        200,
        loss_fn=lm_loss,
        alter=alter,
        classifier=False,
        forward=_hf_logits,
    )
    pre = _mean(ctx.losses[140:150])
    ctx.check("loss fell first", pre < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("loss jumped at 150", ctx.losses[150] > 1.8 * max(ctx.losses[140:150]))
    ctx.check("finite", _finite(ctx.losses))


# -- 5. softmax collapse: an unclamped learnt logit scale on a citation graph ---------------------


def _citation_graph(gen: torch.Generator, n: int = 420, classes: int = 7):
    """Papers in seven fields: bag-of-words features, citations mostly within a field."""
    y = torch.randint(0, classes, (n,), generator=gen)
    topics = torch.randn(classes, 48, generator=gen)
    x = (topics[y] + 1.5 * torch.randn(n, 48, generator=gen)).relu()
    same = (y[:, None] == y[None, :]).float()
    p = 0.04 * same + 0.004 * (1 - same)
    a = (torch.rand(n, n, generator=gen) < p).float()
    a = ((a + a.T) > 0).float() + torch.eye(n)
    d = a.sum(1).rsqrt()
    return x, y, d[:, None] * a * d[None, :]


class TempHead(nn.Linear):
    """The classifier, divided by the contrastive pre-training's temperature (copied over)."""

    def __init__(self, dim: int, classes: int, temperature: float = 0.1) -> None:
        super().__init__(dim, classes)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(h) / self.temperature


class CitationGCN(nn.Module):
    def __init__(self, adj: torch.Tensor, dim: int = 48, hidden: int = 64, classes: int = 7):
        super().__init__()
        self.register_buffer("adj", adj)
        self.gc1 = nn.Linear(dim, hidden)
        self.gc2 = nn.Linear(hidden, hidden)
        self.head = TempHead(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.adj @ self.gc1(x))
        h = F.relu(self.adj @ self.gc2(h))
        return self.head(h)


@scenario(
    "citation_graph_node_classifier",
    "adam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="GCN whose head kept the pre-training's temperature 0.1; trained to memorise the "
    "labelled nodes",
)
def h119_citation_gcn_copied_temperature(ctx: Context) -> None:
    gen = seeded(11905)
    x, y, adj = _citation_graph(gen)
    model = CitationGCN(adj)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = torch.arange(0, 280)

    def batches():
        while True:
            yield x, y

    def forward(m: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        return m(inp)[train]

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target[train])

    fit(
        ctx,
        model,
        opt,
        batches(),
        300,
        loss_fn=loss_fn,
        forward=forward,
        classifier=False,
        before=lambda step: ctx.targets(y[train]),
    )
    with torch.no_grad():
        logits = model(x)[train]
    ctx.check(
        "a third of train rows softmax to exactly 1", collapsed_fraction(logits, y[train]) > 0.35
    )
    ctx.check("finite", _finite(ctx.losses))


# -- 6. sharpness above the limit: an LR range test left in the schedule -------------------------


def _hvac_batches(gen: torch.Generator, batch: int = 64):
    """Outdoor temperature, humidity, occupancy, hour (sin/cos), setpoint -> hourly kWh."""
    while True:
        t_out = torch.randn(batch, generator=gen)
        hum = torch.rand(batch, generator=gen)
        occ = torch.rand(batch, generator=gen)
        hour = torch.rand(batch, generator=gen) * 2 * math.pi
        setp = torch.randn(batch, generator=gen) * 0.3
        x = torch.stack([t_out, hum, occ, hour.sin(), hour.cos(), setp], 1)
        kwh = 0.8 * (t_out - setp).abs() + 0.5 * occ + 0.3 * hum * t_out.clamp(min=0)
        yield x, (kwh + 0.05 * torch.randn(batch, generator=gen))[:, None]


@scenario(
    "hvac_energy_regressor",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="an LR range test's ramp (to 3.0) left in the training schedule",
)
def h119_hvac_energy_lr_ramp(ctx: Context) -> None:
    gen = seeded(11906)
    model = nn.Sequential(
        nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = ramp(step, 0.01, 3.0, 220)

    fit(
        ctx,
        model,
        opt,
        _hvac_batches(gen),
        240,
        loss_fn=F.mse_loss,
        before=before,
        classifier=False,
    )
    best = min(ctx.losses)
    ctx.check("trained first", best < 0.3 * _mean(ctx.losses[:5]))
    late = [v for v in ctx.losses[-30:]]
    ctx.check("then blew up", not _finite(late) or max(late) > 20 * best)


# -- 7. exploding gradients: a deep ReLU stack initialised with normal_() at std 1 ----------------


def _emg_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Eight-channel surface EMG: RMS of four sub-windows per channel; each of six gestures
    contracts its own muscle pair."""
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        env = torch.full((batch, length, 8), 0.2)
        for g in range(6):
            env[y == g, :, g] += 1.0
            env[y == g, :, (g + 2) % 8] += 0.5
        raw = env * torch.randn(batch, length, 8, generator=gen)
        rms = raw.reshape(batch, 4, length // 4, 8).pow(2).mean(2).sqrt()
        yield rms.flatten(1), y


class EMGDecoder(nn.Module):
    def __init__(self, depth: int = 7, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(32 if i == 0 else width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(width, 6)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)  # meant: std=(2 / fan_in) ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


@scenario(
    "emg_gesture_decoder",
    "sgd_mom",
    "exploding_gradients",
    where=("net",),
    diverges="auto",
    heldout=True,
    note="seven-layer ReLU MLP initialised with nn.init.normal_ (std 1): activations and "
    "gradients grow ~5x a layer",
)
def h119_emg_unit_normal_init(ctx: Context) -> None:
    gen = seeded(11907)
    model = EMGDecoder()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    fit(ctx, model, opt, _emg_batches(gen), 80)
    ctx.check(
        "gradient norm above 1e4",
        max(g for g in ctx.grad_norms if math.isfinite(g)) > 1e4 or not _finite(ctx.grad_norms),
    )
    ctx.check("and the run broke", not _finite(ctx.losses) or max(ctx.losses) > 1e3)


# -- 8. loss of plasticity: a cyclic-LR restart that kills the ReLUs ------------------------------


def _battery_batches(gen: torch.Generator, batch: int = 64):
    """Voltage, current, temperature and their short-window means -> state of charge."""
    while True:
        soc = torch.rand(batch, generator=gen)
        cur = torch.randn(batch, generator=gen)
        temp = torch.randn(batch, generator=gen)
        ocv = 3.3 + 0.9 * soc - 0.2 * (1 - soc) ** 3
        v = ocv - 0.05 * cur + 0.01 * temp
        x = torch.stack(
            [v, cur, temp, v + 0.01 * torch.randn(batch, generator=gen), cur.abs(), v * cur], 1
        )
        x = (x - torch.tensor([3.8, 0, 0, 3.8, 0.8, 0])) / torch.tensor([0.3, 1, 1, 0.3, 0.6, 4])
        yield x, soc[:, None]


class SoCNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    "battery_soc_estimator",
    "nesterov",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="an activation-sparsity penalty on fc2's ReLUs stepped up at 150 from 1e-3 to 10 (a "
    "per-mille setting read as a weight): every unit is pushed below zero and stays dead",
    onset=150,
)
def h119_battery_soc_sparsity_dead(ctx: Context) -> None:
    gen = seeded(11908)
    model = SoCNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    grab: dict[str, torch.Tensor] = {}
    model.act2.register_forward_hook(lambda m, a, out: grab.__setitem__("h", out))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + (10.0 if step >= 150 else 1e-3) * grab["h"].abs().mean()

    fit(
        ctx,
        model,
        opt,
        _battery_batches(gen),
        320,
        loss_fn=F.mse_loss,
        extra_loss=penalty,
        classifier=False,
    )
    x, _ = next(_battery_batches(gen, 512))
    with torch.no_grad():
        h = model.fc2(model.act1(model.fc1(x)))
    ctx.check("fc2's ReLUs nearly all dead", dead_fraction(h) > 0.9)
    ctx.check("trained before", min(ctx.losses[130:150]) < 0.3 * _mean(ctx.losses[:5]))
    ctx.check("stuck after", _mean(ctx.losses[-20:]) > 2 * _mean(ctx.losses[130:150]))


# -- 9. update ratio out of range: layer-wise LR decay rounded to zero ----------------------------


def _ultravbert_cls() -> nn.Module:
    from transformers import AutoModelForSequenceClassification, UltraVBertConfig

    text = UltraVBertConfig().text_config
    config = type(text)(**_TINY, num_labels=2)
    return AutoModelForSequenceClassification.from_config(config)


@scenario(
    "ultravbert_text_cls",
    "adadelta",
    "update_ratio_out_of_range",
    where=("model.embed_tokens", "model.layers.0"),
    diverges=None,
    heldout=True,
    note="UltraVBert text classifier; layer-wise LR decay int()-rounded: embeddings and layer 0 "
    "get scale 0",
)
def h119_ultravbert_llrd_rounded(ctx: Context) -> None:
    gen = seeded(11909)
    model = _ultravbert_cls()
    depth = {"model.embed_tokens": 2, "model.layers.0": 1}
    groups: dict[int, list] = {}
    for n, p in model.named_parameters():
        d = next((v for k, v in depth.items() if n.startswith(k + ".")), 0)
        groups.setdefault(d, []).append(p)
    opt = torch.optim.Adadelta(
        [{"params": ps, "lr": 1.0 * int(0.75**d)} for d, ps in groups.items()]  # int(): bug
    )
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    emb = model.model.embed_tokens.weight.detach().clone()
    fit(ctx, model, opt, bert_batches(gen, 32, 16), 200, forward=_hf_logits)
    ctx.check(
        "layer 0 and embeddings unchanged",
        torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)
        and torch.equal(emb, model.model.embed_tokens.weight),
    )
    ctx.check(
        "the rest trained, finite",
        _finite(ctx.losses) and _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]),
    )


# -- 10. Adam second moment poisoned: one step's head gradient left scaled -----------------------


@scenario(
    "vipllava_text_lm",
    "nadam",
    "adam_second_moment_poisoned",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="VipLlava text tower (Llama); on resume a per-module unscale hook skipped the division "
    "once: the head's gradient arrives 65536x",
    onset=90,
)
def h119_vipllava_text_head_unscaled(ctx: Context) -> None:
    gen = seeded(11910)
    model = _causal_from("VipLlavaConfig")
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = text_batches(gen, 16, 32)
    next(batches)
    ctx.attach(model, opt)
    w = model.lm_head.weight
    vmax: list[float] = []
    moves: list[float] = []
    for step in range(240):
        x, y = next(batches)
        loss = lm_loss(_hf_logits(model, x), y)
        loss.backward()
        if step == 90:
            w.grad.mul_(65536.0)
        old = w.detach().clone()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        moves.append(float((w.detach() - old).norm()))
        vmax.append(float(opt.state[w]["exp_avg_sq"].max()))
    ctx.check("head's second moment jumped 1e6x", vmax[90] > 1e6 * vmax[89])
    ctx.check(
        "head's updates fell 20x and stayed small",
        _mean(moves[150:240]) < 0.05 * _mean(moves[70:90]),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- 11. nonfinite: a Z-R conversion fed a negative reflectivity ----------------------------------


class ZR(nn.Module):
    """Marshall-Palmer Z-R: rain rate R = (Z / 200) ** (1 / 1.6), Z in linear mm^6/m^3."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z / 200.0) ** 0.625


class RainNowcaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.zr = ZR()
        self.conv1 = nn.Conv2d(4, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = torch.log1p(self.zr(z))
        return self.out(F.relu(self.conv2(F.relu(self.conv1(r)))))


def _radar_batches(gen: torch.Generator, batch: int = 16):
    """Four past 12x12 reflectivity frames of a drifting storm cell -> the next rain field."""
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    while True:
        c = torch.rand(batch, 2, generator=gen) * 6 + 2
        v = torch.randn(batch, 2, generator=gen) * 0.6
        amp = 2000 + 20000 * torch.rand(batch, generator=gen)
        frames = []
        for t in range(5):
            cy = (c[:, 0] + t * v[:, 0])[:, None, None]
            cx = (c[:, 1] + t * v[:, 1])[:, None, None]
            frames.append(amp[:, None, None] * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8))
        z = torch.stack(frames, 1) + 1.0
        yield z[:, :4], torch.log1p((z[:, 4:] / 200.0) ** 0.625)


@scenario(
    "rainfall_nowcaster",
    "adam",
    "nonfinite",
    where=("zr",),
    diverges=140,
    heldout=True,
    note="one tile had the clutter floor subtracted twice: negative Z into a fractional power",
    onset=140,
)
def h119_rainfall_zr_negative(ctx: Context) -> None:
    gen = seeded(11911)
    model = RainNowcaster()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = x.clone()
            x[3, :, 0:3, 0:3] -= 40.0
        return x, y

    fit(
        ctx, model, opt, _radar_batches(gen), 170, loss_fn=F.mse_loss, alter=alter, classifier=False
    )
    ok = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 140, not from it", all(ok[:140]) and not ok[140])
    ctx.check("trained before", min(ctx.losses[120:140]) < 0.3 * _mean(ctx.losses[:5]))


# -- 12. AMP overflow: a glyph shard rendered at 0..255 under fp16 autocast ------------------------


class GlyphAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 16)
        )
        self.dec = nn.Sequential(nn.Linear(16, 128), nn.GELU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


@scenario(
    "font_glyph_autoencoder",
    "adamw",
    "amp_overflow",
    where=("enc",),
    diverges=None,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 100 a font shard rendered at 0..255 (x 4080 of "
    "the usual range): the scaled fp16 gradients overflow, the scale falls 65536x",
    onset=100,
)
def h119_font_glyph_fp16_raw_bytes(ctx: Context) -> None:
    gen = seeded(11912)
    model = GlyphAE()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=50)
    digits = digit_batches(gen, 64)

    def batches():
        while True:
            x, _ = next(digits)
            yield x, x

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 100:
            x = x * 16.0 * 255.0  # the shard skipped /255 and the renderer wrote 16 grey levels
        return x, x

    fit(
        ctx,
        model,
        opt,
        batches(),
        160,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check(
        "trained in fp16 first",
        _finite(ctx.losses[:100]) and min(ctx.losses[80:100]) < 0.6 * _mean(ctx.losses[:5]),
    )
    drops = sum(b < a for a, b in zip(ctx.scales[99:], ctx.scales[100:], strict=False))
    ctx.check("the scaler backed off 15+ times after the shard", drops >= 15)
    ctx.check("scale collapsed", ctx.scales[-1] < 1e-3 * max(ctx.scales[:100]))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    "granite4_vision_text_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="Granite 4 Vision text tower, warm-up + cosine, weight decay",
)
def h119_granite4_vision_text_control(ctx: Context) -> None:
    gen = seeded(11913)
    model = _granite4_vision_text()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    before = _warm_cosine(opt, 3e-3, 25, 260)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        260,
        loss_fn=lm_loss,
        before=before,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.75 * _mean(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


def _imu_batches(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Six-axis IMU windows from the shank; label: gait phase at the window's end (4 phases)."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        freq = 0.05 + 0.02 * torch.rand(batch, 1, generator=gen)
        phase0 = torch.rand(batch, 1, generator=gen) * 2 * math.pi
        ang = 2 * math.pi * freq * t + phase0
        chans = [
            ang.sin(),
            ang.cos(),
            (2 * ang).sin(),
            0.5 * (ang + 1).sin(),
            ang.sin() ** 3,
            (2 * ang).cos(),
        ]
        x = torch.stack(chans, -1) + 0.2 * torch.randn(batch, length, 6, generator=gen)
        y = ((ang[:, -1] % (2 * math.pi)) / (math.pi / 2)).long().clamp(max=3)
        yield x, y


class GaitGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 48, batch_first=True)
        self.head = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


@scenario(
    "gait_phase_imu_classifier",
    "rmsprop",
    "healthy",
    heldout=True,
    note="GRU on noisy IMU windows, step LR decay at 150",
)
def h119_gait_phase_gru_control(ctx: Context) -> None:
    gen = seeded(11914)
    model = GaitGRU()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.99)

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 if step < 150 else 6e-4

    fit(ctx, model, opt, _imu_batches(gen), 220, before=before)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


def _soil_batches(gen: torch.Generator, batch: int = 48):
    """Rain of the past days, temperature, clay fraction, NDVI -> volumetric soil moisture; every
    ~25th batch comes from a storm week with wetter, noisier readings."""
    step = 0
    while True:
        step += 1
        storm = step % 25 == 0
        x = torch.rand(batch, 7, generator=gen)
        if storm:
            x[:, :3] = x[:, :3] * 2.5
        y = 0.1 + 0.15 * x[:, :3].mean(1) + 0.1 * x[:, 4] - 0.05 * x[:, 3] + 0.03 * x[:, 5]
        y = y + (0.03 if storm else 0.01) * torch.randn(batch, generator=gen)
        yield x, y[:, None]


@scenario(
    "soil_moisture_regressor",
    "adagrad",
    "healthy",
    heldout=True,
    note="MLP regressor with storm-week batches (wetter, noisier) every 25 steps",
)
def h119_soil_moisture_control(ctx: Context) -> None:
    gen = seeded(11915)
    model = nn.Sequential(
        nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    fit(ctx, model, opt, _soil_batches(gen), 260, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.3 * _mean(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


def _enzyme_batches(gen: torch.Generator, batch: int = 32, length: int = 60):
    """Amino-acid sequences; EC class = which catalytic motif is planted (plus decoys)."""
    motifs = torch.randint(0, 20, (6, 4), generator=torch.Generator().manual_seed(119))
    while True:
        x = torch.randint(0, 20, (batch, length), generator=gen)
        y = torch.randint(0, 6, (batch,), generator=gen)
        pos = torch.randint(0, length - 4, (batch,), generator=gen)
        for i in range(batch):
            x[i, pos[i] : pos[i] + 4] = motifs[y[i]]
        yield x, y


class EnzymeCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 24)
        self.conv1 = nn.Conv1d(24, 48, 5, padding=2)
        self.conv2 = nn.Conv1d(48, 48, 3, padding=1)
        self.head = nn.Linear(48, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        return self.head(h.amax(-1))


@scenario(
    "enzyme_class_predictor",
    "asgd",
    "healthy",
    heldout=True,
    note="1-D CNN over sequences with max pooling, ASGD",
)
def h119_enzyme_cnn_control(ctx: Context) -> None:
    gen = seeded(11916)
    model = EnzymeCNN()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    fit(ctx, model, opt, _enzyme_batches(gen), 240)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))
