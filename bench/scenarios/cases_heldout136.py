"""Held-out set 136 (``h136_``): Hugging Face HiggsAudioV2 (text decoder) and the TVP text
tower from tiny configs, and hand-written models of fields not covered before (ski-jump
distance with domain adaptation, windsurf sail trim, bamboo growth, glacier crevasse width,
bell-tower swing, pearl spectra, lacquer curing, tea withering, dovetail fit, quill pressure).

Each fault is induced the way it happens in practice; the checks verify that it took.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces --------------------------------------------------------------------------------


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _norm(params) -> float:
    gs = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


class _HiggsLM(nn.Module):
    """HiggsAudioV2's text decoder (from a tiny config) with an untied byte head."""

    def __init__(self, vocab: int = 128, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        from transformers import HiggsAudioV2Config, HiggsAudioV2Model

        cfg = HiggsAudioV2Config(
            vocab_size=vocab,
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=dim // 2,
            max_position_embeddings=2048,
            num_codebooks=2,
            codebook_size=16,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            audio_token_id=vocab - 1,
            audio_bos_token_id=vocab - 2,
            audio_delay_token_id=vocab - 3,
            audio_stream_bos_id=14,
            audio_stream_eos_id=15,
        )
        self.body = HiggsAudioV2Model(cfg)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.body(input_ids=idx).last_hidden_state)


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class _TvpClassifier(nn.Module):
    """The TVP text tower (embeddings + encoder, tiny config) with a mean-pooled head."""

    def __init__(self, vocab: int = 128, dim: int = 32, labels: int = 2) -> None:
        super().__init__()
        from transformers import TvpConfig
        from transformers.models.tvp.modeling_tvp import TvpEncoder, TvpTextInputEmbeddings

        cfg = TvpConfig(
            hidden_size=dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * dim,
            vocab_size=vocab,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.embeddings = TvpTextInputEmbeddings(cfg)
        self.encoder = TvpEncoder(cfg)
        self.head = nn.Linear(dim, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embeddings(x)).last_hidden_state
        return self.head(h.mean(1))


def _mlp(sizes: list[int], act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


# -- Hugging Face HiggsAudioV2 text decoder ------------------------------------------------------


def _qk_logit(model: _HiggsLM, idx: torch.Tensor) -> float:
    """Largest pre-softmax attention logit of layer 0 (before rotary, which keeps norms)."""
    got = {}
    attn = model.body.layers[0].self_attn
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: got.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, i, o: got.__setitem__("k", o)),
    ]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    b, t, _ = got["q"].shape
    q = got["q"].reshape(b, t, 2, -1).transpose(1, 2)
    k = got["k"].reshape(b, t, 2, -1).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(q.shape[-1]))


@scenario(
    "hf_higgs_audio_v2_text_lm",
    "adamw",
    "attention_logit_growth",
    where=("body.layers.0.self_attn", "body.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections put in a 40x learning-rate group without weight decay or qk-norm",
)
def h136_higgs_qk_lr_group(ctx: Context) -> None:
    gen = seeded(13601)
    torch.set_num_threads(1)
    model = _HiggsLM()
    batches = text_batches(gen, batch=16, length=32)
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": qk, "lr": 0.04, "weight_decay": 0.0}, {"params": rest, "lr": 1e-3}]
    )
    probe_x, _ = next(batches)
    start = _qk_logit(model, probe_x)
    ctx.attach(model, opt)
    for _ in range(160):
        x, y = next(batches)
        loss = _lm_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    end = _qk_logit(model, probe_x)
    ctx.check("the layer-0 attention logits grew at least 20x", end > 20 * start)
    ctx.check("the largest attention logit passed 30", end > 30)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


@scenario(
    "hf_higgs_audio_v2_text_lm",
    "adam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="a warm restart whose peak was set 7x too high for four steps; the loss spikes, recovers",
    onset=120,
)
def h136_higgs_restart_peak(ctx: Context) -> None:
    gen = seeded(13602)
    torch.set_num_threads(1)
    model = _HiggsLM()
    batches = text_batches(gen, batch=16, length=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    onset = 120
    for step in range(200):
        lr = 3e-3 * (0.5 + 0.5 * math.cos(math.pi * min(step, onset) / onset))
        if onset <= step < onset + 4:
            lr = 0.02  # the restart's peak, meant to be 3e-3
        elif step >= onset + 4:
            lr = 2e-3 * (1 - (step - onset) / 100) + 1e-4
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        loss = _lm_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _mean(ctx.losses[onset - 10 : onset])
    peak = max(ctx.losses[onset : onset + 20])
    ctx.check("the loss spiked above 1.3x its level before the restart", peak > 1.3 * before)
    ctx.check("the loss came back within 10% of its level", _mean(ctx.losses[-10:]) < 1.1 * before)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


@scenario(
    "hf_higgs_audio_v2_text_lm",
    "adam",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="warmup + cosine decay, gradient clipping at 1.0",
)
def h136_higgs_healthy(ctx: Context) -> None:
    gen = seeded(13603)
    torch.set_num_threads(1)
    model = _HiggsLM()
    batches = text_batches(gen, batch=16, length=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    steps = 180
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        loss = _lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell by 25%", _mean(ctx.losses[-10:]) < 0.75 * _mean(ctx.losses[:10]))
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- Hugging Face TVP text tower -----------------------------------------------------------------


@scenario(
    "hf_tvp_text_tower_cls",
    "sgd_mom",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a distillation temperature (100) multiplies the logits instead of dividing them",
)
def h136_tvp_temperature_bug(ctx: Context) -> None:
    gen = seeded(13604)
    torch.set_num_threads(1)
    model = _TvpClassifier()
    batches = bert_batches(gen, batch=32, length=16)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    ctx.attach(model, opt)
    collapsed = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) * 100.0  # the temperature 100 was meant to divide
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over 30% of the last 20 batches' rows have a softmax of exactly 1.0",
        _mean(collapsed[-20:]) > 0.3,
    )
    ctx.check("the loss stayed finite", _finite(ctx.losses))


@scenario(
    "hf_tvp_text_tower_cls",
    "adamw",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="linear warmup then linear decay, weight decay 0.01",
)
def h136_tvp_healthy(ctx: Context) -> None:
    gen = seeded(13605)
    torch.set_num_threads(1)
    model = _TvpClassifier()
    batches = bert_batches(gen, batch=32, length=16)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    steps = 160
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min((step + 1) / 15, 1.0) * (1 - 0.8 * step / steps)
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell by 30%", _mean(ctx.losses[-15:]) < 0.7 * _mean(ctx.losses[:15]))
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- ski-jump distance regressor with domain adaptation (gradient reversal) ---------------------


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):  # noqa: ANN001
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        return -ctx.lam * g, None


class _SkiJumpDANN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.distance = nn.Linear(32, 1)
        self.hill = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor, lam: float):
        h = self.features(x)
        return self.distance(h).squeeze(-1), self.hill(_Reverse.apply(h, lam))


def _jumps(gen: torch.Generator, n: int):
    hill = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 6, generator=gen) + 0.7 * hill[:, None]
    speed, angle, wind = x[:, 0], x[:, 1], x[:, 2]
    dist = 1.2 * speed + 0.5 * torch.tanh(angle) - 0.4 * wind + 0.3 * speed * angle
    return x, dist + 0.1 * torch.randn(n, generator=gen), hill


@scenario(
    "ski_jump_distance_dann",
    "nadam",
    "gradient_spike",
    where=("features", "features.0", "features.2"),
    diverges=None,
    heldout=True,
    note="the gradient-reversal weight schedule jumps to 400 for one step (progress computed "
    "from the wrong counter)",
    onset=110,
)
def h136_ski_jump_grl_schedule(ctx: Context) -> None:
    gen = seeded(13606)
    torch.set_num_threads(1)
    model = _SkiJumpDANN()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    onset = 110
    feat = []
    for step in range(200):
        lam = 400.0 if step == onset else 0.1 * min(step / 100, 1.0)
        x, d, hill = _jumps(gen, 64)
        pred, dom = model(x, lam)
        task = F.mse_loss(pred, d)
        loss = task + 0.1 * F.cross_entropy(dom, hill)
        loss.backward()
        feat.append(_norm(model.features.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rest = feat[:onset] + feat[onset + 1 :]
    ctx.check(
        "the feature gradient at the onset is 30x its median", feat[onset] > 30 * _median(rest)
    )
    ctx.check("nothing like it before the onset", max(feat[onset - 30 : onset]) < 0.1 * feat[onset])
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- windsurf sail-trim controller: one batch in the wrong units ---------------------------------


def _sail(gen: torch.Generator, n: int):
    x = torch.randn(n, 5, generator=gen)
    wind, gust, heading = x[:, 0] + 2.0, x[:, 1], x[:, 2]
    trim = 0.6 * torch.sin(heading) + 0.3 * wind - 0.2 * gust * wind
    return x, (trim + 0.05 * torch.randn(n, generator=gen))[:, None]


@scenario(
    "windsurf_sail_trim_controller",
    "adagrad",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one logged batch has the wind speed in cm/s instead of m/s",
    onset=120,
)
def h136_windsurf_unit_batch(ctx: Context) -> None:
    gen = seeded(13607)
    torch.set_num_threads(1)
    model = _mlp([5, 48, 48, 1])
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    onset = 120
    for step in range(200):
        x, y = _sail(gen, 64)
        if step == onset:
            x = x.clone()
            x[:, 0] = (x[:, 0] + 2.0) * 100.0  # wind in cm/s
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    usual = _median(ctx.losses[onset - 30 : onset])
    ctx.check("the loss at the bad batch is 20x the usual", ctx.losses[onset] > 20 * usual)
    ctx.check("the steps after it are back near normal", _median(ctx.losses[-20:]) < 5 * usual)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- bamboo growth forecaster: a warmup that never ends -------------------------------------------


def _bamboo(gen: torch.Generator, n: int):
    x = torch.rand(n, 6, generator=gen)
    rain, temp, age = x[:, 0], x[:, 1], x[:, 2]
    growth = 2.0 * rain * temp + torch.sin(3 * age) + 0.5 * x[:, 3]
    return x, (growth + 0.05 * torch.randn(n, generator=gen))[:, None]


@scenario(
    "bamboo_growth_forecaster",
    "radam",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="the warmup was given the total step count and a 1000x peak: the lr keeps rising",
)
def h136_bamboo_endless_warmup(ctx: Context) -> None:
    gen = seeded(13608)
    torch.set_num_threads(1)
    model = _mlp([6, 64, 64, 1], nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    steps = 300
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * math.exp(step / steps * math.log(1000.0))
        x, y = _bamboo(gen, 64)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    best = min(_median(ctx.losses[i : i + 5]) for i in range(len(ctx.losses) - 5))
    ctx.check("the loss first fell", best < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("then climbed past 3x its best", _median(ctx.losses[-10:]) > 3 * best)


# -- glacier crevasse width forecaster: full-batch GD above 2 / sharpness ------------------------


def _crevasse_data(gen: torch.Generator):
    x = torch.randn(128, 4, generator=gen)
    strain, thick = x[:, 0], x[:, 1]
    y = 0.8 * strain + 0.4 * torch.tanh(2 * thick) + 0.3 * x[:, 2] * x[:, 3]
    return x, y[:, None]


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "crevasse_width_forecaster",
    "asgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="full-batch GD with a learning rate copied from a smaller model: above 2/lambda_max",
)
def h136_crevasse_fullbatch_lr(ctx: Context) -> None:
    gen = seeded(13609)
    torch.set_num_threads(1)
    x, y = _crevasse_data(gen)
    model = _mlp([4, 64, 64, 1])
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(1.6)
    lam = _top_hessian_eig(model, lambda: F.mse_loss(model(x), y))
    lr = 0.5
    opt = torch.optim.ASGD(model.parameters(), lr=lr, lambd=0.0, alpha=0.0, t0=1e9)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), b[1]), (x, y)))
    for _ in range(60):
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the lr is above 2 / top Hessian eigenvalue at the start", lr * lam > 2.0)
    tail = [v if math.isfinite(v) else 1e30 for v in ctx.losses[-5:]]
    ctx.check("the loss blew up past 10x its start", min(tail) > 10 * ctx.losses[0])


# -- bell-tower swing-angle RNN --------------------------------------------------------------------


class _BellRNN(nn.Module):
    def __init__(self, nonlinearity: str = "relu", gain: float = 1.0) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, 32, batch_first=True, nonlinearity=nonlinearity)
        self.head = nn.Linear(32, 1)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _bell(gen: torch.Generator, n: int, t: int = 48):
    pull = torch.randn(n, t, generator=gen) * 0.5
    angle = torch.zeros(n, t)
    a, w = torch.zeros(n), torch.zeros(n)
    for i in range(t):
        w = 0.95 * w - 0.1 * torch.sin(a) + 0.1 * pull[:, i]
        a = a + w
        angle[:, i] = a
    x = torch.stack([pull, torch.roll(angle, 1, 1)], -1)
    return x, angle[:, -1]


@scenario(
    "bell_tower_swing_rnn",
    "sgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="tanh RNN over 48 steps, recurrent matrix initialised orthogonal at gain 1.6 (the "
    "edge-of-chaos init doubled), SGD without clipping",
)
def h136_bell_hot_init_no_clip(ctx: Context) -> None:
    gen = seeded(13610)
    torch.set_num_threads(1)
    model = _BellRNN("tanh", 1.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    norms = []
    for _ in range(120):
        x, y = _bell(gen, 32)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(_norm(model.rnn.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    fin = [v for v in norms if math.isfinite(v)]
    grew = len(fin) < len(norms) or max(fin) > 1e3 * _median(norms[:20])
    ctx.check("the recurrent gradient grew 1000x its early median or overflowed", grew)
    ctx.check(
        "the loss blew up", not _finite(ctx.losses[-5:]) or ctx.losses[-1] > 100 * ctx.losses[0]
    )


@scenario(
    "bell_tower_swing_rnn",
    "nesterov",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="tanh RNN, orthogonal init at gain 0.9, clipping at 1.0, step decay",
)
def h136_bell_tanh_rnn_healthy(ctx: Context) -> None:
    gen = seeded(13611)
    torch.set_num_threads(1)
    model = _BellRNN("tanh", 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    for step in range(150):
        if step == 100:
            for g in opt.param_groups:
                g["lr"] = 0.005
        x, y = _bell(gen, 32)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell by 40%", _mean(ctx.losses[-15:]) < 0.6 * _mean(ctx.losses[:15]))
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- pearl grading from reflectance spectra: normalisation without an epsilon ---------------------


class _SpectrumNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum(-1, keepdim=True)  # no epsilon


class _PearlGrader(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spectrum_norm = _SpectrumNorm()
        self.grader = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grader(self.spectrum_norm(x) * 16.0)


def _pearls(gen: torch.Generator, n: int):
    grade = torch.randint(0, 4, (n,), generator=gen)
    bins = torch.linspace(0, 1, 16)
    peak = 0.2 + 0.2 * grade.float()
    x = torch.exp(-((bins[None] - peak[:, None]) ** 2) / 0.02)
    x = (x + 0.3 * torch.rand(n, 16, generator=gen)) * (0.5 + torch.rand(n, 1, generator=gen))
    return x, grade


@scenario(
    "pearl_spectrum_grader",
    "adadelta",
    "nonfinite",
    where=("spectrum_norm",),
    diverges=90,
    heldout=True,
    note="a dark frame (all-zero spectrum) reaches a normalisation without an epsilon: 0/0",
    onset=90,
)
def h136_pearl_dark_frame(ctx: Context) -> None:
    gen = seeded(13612)
    torch.set_num_threads(1)
    model = _PearlGrader()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    for step in range(130):
        x, y = _pearls(gen, 64)
        if step == 90:
            x = x.clone()
            x[5] = 0.0  # the camera returned a dark frame
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss was finite before the dark frame", _finite(ctx.losses[:90]))
    ctx.check("the loss fell before it", _mean(ctx.losses[80:90]) < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("the loss is NaN from the dark frame on", not _finite(ctx.losses[90:91]))
    ctx.check("the weights are NaN afterwards", not torch.isfinite(model.grader[0].weight).all())


# -- lacquer cure-time regressor: one unscaled gradient poisons Adam's second moment --------------


def _lacquer(gen: torch.Generator, n: int):
    x = torch.rand(n, 5, generator=gen)
    humid, temp, coats = x[:, 0], x[:, 1], x[:, 2]
    t = 1.5 * humid - 1.0 * temp + 0.5 * coats**2 + 0.4 * torch.sin(4 * x[:, 3])
    return x, (t + 0.03 * torch.randn(n, generator=gen))[:, None]


class _Lacquer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cure = _mlp([5, 64, 64, 1], nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cure(x)


@scenario(
    "lacquer_cure_time_regressor",
    "adam",
    "adam_second_moment_poisoned",
    where=("cure.0",),
    diverges=None,
    heldout=True,
    note="manual loss scaling: the first layer's gradient reaches Adam unscaled (x65536) once",
    onset=80,
)
def h136_lacquer_unscaled_group(ctx: Context) -> None:
    gen = seeded(13613)
    torch.set_num_threads(1)
    model = _Lacquer()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    w = model.cure[0].weight
    snaps, vmax = {}, {}
    for step in range(200):
        x, y = _lacquer(gen, 64)
        loss = F.mse_loss(model.cure(x), y)
        loss.backward()
        if step == 80:
            model.cure[0].weight.grad.mul_(65536.0)
            model.cure[0].bias.grad.mul_(65536.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step in (20, 79, 81, 120, 180):
            snaps[step] = w.detach().clone()
            vmax[step] = float(opt.state[w]["exp_avg_sq"].max())
    moved_before = float((snaps[79] - snaps[20]).norm())
    moved_after = float((snaps[180] - snaps[120]).norm())
    ctx.check("the second moment jumped 1e6x", vmax[81] > 1e6 * vmax[79])
    ctx.check("the layer nearly stopped moving", moved_after < 0.25 * moved_before)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- tea withering-time regressor: fp16 autocast with raw-second targets and a summed loss ------


@scenario(
    "tea_withering_regressor",
    "adamax",
    "amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="targets in raw seconds, loss summed over the batch, fp16 autocast + GradScaler with a "
    "short growth interval: the scaled output gradient keeps overflowing fp16",
)
def h136_tea_fp16_seconds(ctx: Context) -> None:
    gen = seeded(13614)
    torch.set_num_threads(1)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(6, 64))
    model.add_module("act", nn.ReLU())
    model.add_module("head", nn.Linear(64, 1))
    opt = torch.optim.Adamax(model.parameters(), lr=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10)
    ctx.attach(model, opt, scaler=scaler)
    skipped = 0
    for _ in range(150):
        x = torch.rand(64, 6, generator=gen)
        secs = 3600.0 * (4 + 6 * x[:, 0] - 2 * x[:, 1] * x[:, 2]) + 300 * torch.randn(
            64, generator=gen
        )
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float().squeeze(-1), secs / 3600.0, reduction="sum") * 3600.0
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < before
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 20 steps were skipped for overflow", skipped > 20)
    ctx.check("the scale fell below 64", min(ctx.scales) < 64)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- dovetail fit classifier: Rprop grows the head without bound --------------------------------


def _dovetail(gen: torch.Generator, n: int):
    x = torch.randn(n, 6, generator=gen)
    gap = x[:, 0] - 0.8 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3]
    y = (gap > -0.5).long() + (gap > 0.6).long()
    noisy = torch.rand(n, generator=gen) < 0.1
    y = torch.where(noisy, torch.randint(0, 3, (n,), generator=gen), y)
    return x, y


@scenario(
    "dovetail_fit_classifier",
    "rprop",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Rprop on mini-batches: the head's step sizes keep growing x1.2, no weight decay",
)
def h136_dovetail_rprop_head(ctx: Context) -> None:
    gen = seeded(13615)
    torch.set_num_threads(1)
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(6, 32), nn.Tanh()))
    model.add_module("head", nn.Linear(32, 3))
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3, step_sizes=(1e-6, 50.0))
    ctx.attach(model, opt)
    x, y = _dovetail(gen, 256)  # the whole shop log, full batch
    probe = x
    with torch.no_grad():
        start = float(model(probe).abs().max())
    for _ in range(300):
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        end = float(model(probe).abs().max())
    ctx.check("the output logits grew 50x", end > 50 * start)
    ctx.check("the largest logit passed 50", end > 50)


# -- quill pen pressure regressor: a healthy control ----------------------------------------------


@scenario(
    "quill_pen_pressure_regressor",
    "rmsprop",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="RMSprop with step decay; noisy strokes",
)
def h136_quill_healthy(ctx: Context) -> None:
    gen = seeded(13616)
    torch.set_num_threads(1)
    model = _mlp([7, 64, 32, 1], nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(220):
        if step in (120, 180):
            for g in opt.param_groups:
                g["lr"] *= 0.3
        x = torch.randn(48, 7, generator=gen)
        speed, tilt, ink = x[:, 0], x[:, 1], x[:, 2]
        y = 0.7 * torch.tanh(speed) - 0.4 * tilt * ink + 0.2 * x[:, 3] ** 2
        y = (y + 0.1 * torch.randn(48, generator=gen))[:, None]
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell by 50%", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:20]))
    ctx.check("the loss stayed finite", _finite(ctx.losses))
