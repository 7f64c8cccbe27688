"""Held-out scenarios, set 86 (``h86_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face FLAVA and OWL-ViT text encoders (classifiers on generated token
sequences) and a Switch Transformers encoder-decoder (generated reversal task) from configs,
behaviour cloning with a Gaussian policy head, advantage-weighted regression on logged data,
REINFORCE with a learned baseline on a generated bandit, dueling double-DQN on a generated
gridworld, field-aware factorisation machine on generated clicks, Bayes-by-backprop neural net,
mixture-density RNN on generated pen strokes, neural Hawkes process on generated event streams,
tabular ResNet on quantile-transformed features (breast cancer), graph network simulator on
generated particle systems. (Its writer ran out of time: 9 faults, 4 healthy controls.)

Optimizers: AdamW, Lion, SGD with momentum, SGD, Adamax, StableSPAM, AdaBelief, AdEMAMix,
RMSprop, ASGD, Adagrad, RAdam.
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
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
)

# -- shared helpers -------------------------------------------------------------------------------


def _quiet_hf() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def _train_step(ctx: Context, model: nn.Module, opt, loss: torch.Tensor) -> None:
    loss.backward()
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def token_class_batches(gen: torch.Generator, batch: int = 32, length: int = 16, classes: int = 8):
    """Label = the first token's class (token // 8 for tokens 8..8+8*classes); rest is noise."""
    while True:
        x = torch.randint(8, 128, (batch, length), generator=gen)
        first = torch.randint(0, classes, (batch,), generator=gen)
        x[:, 0] = 8 + 8 * first + torch.randint(0, 8, (batch,), generator=gen)
        yield x, first


class EncoderClassifier(nn.Module):
    """A Hugging Face text encoder, mean-pooled, with a linear head."""

    def __init__(self, enc: nn.Module, dim: int, classes: int) -> None:
        super().__init__()
        self.enc = enc
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
        return self.head(h.mean(1))


# -- FLAVA text encoder: attention-logit growth ---------------------------------------------------


def _flava(dim: int = 32, layers: int = 2) -> EncoderClassifier:
    _quiet_hf()
    from transformers import FlavaTextConfig, FlavaTextModel

    cfg = FlavaTextConfig(
        vocab_size=128,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return EncoderClassifier(FlavaTextModel(cfg), dim, 2)


def _flava_attention_logit_max(model: EncoderClassifier, x: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d_head) over layers, from hooks on the query/key projections."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.enc.encoder.layer):
        att = layer.attention.attention
        for n in ("query", "key"):
            hooks.append(
                getattr(att, n).register_forward_hook(
                    lambda _m, _i, out, k=f"{i}.{n}": seen.__setitem__(k, out.detach())
                )
            )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    top = 0.0
    for i in range(len(model.enc.encoder.layer)):
        q, k = seen[f"{i}.query"], seen[f"{i}.key"]
        b, t, d = q.shape
        q, k = (z.reshape(b, t, 2, d // 2).transpose(1, 2) for z in (q, k))
        top = max(top, float((q @ k.transpose(-1, -2)).abs().amax()) / math.sqrt(d // 2))
    return top


@scenario(
    "h86_hf_flava_text_cls",
    "adamw",
    "attention_logit_growth",
    where=("enc.encoder.layer.0.attention.attention", "enc.encoder.layer.1.attention.attention"),
    diverges=None,
    heldout=True,
    note="query/key projections in a param group whose LR was copied from the linear probe (40x)",
)
def h86_flava_qk_lr_attn_growth(ctx: Context) -> None:
    """The query and key projections sit in a "fast" param group meant for the freshly
    initialised probe head, at 40x the encoder LR, no weight decay, no QK-norm: q.k logits
    inflate and the attention turns one-hot."""
    gen = seeded(8601)
    model = _flava()
    fast = [p for n, p in model.named_parameters() if ".query." in n or ".key." in n]
    ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1.5e-3}, {"params": fast, "lr": 6e-2}], weight_decay=0.0
    )
    probe, _ = next(bert_batches(seeded(1)))
    start = _flava_attention_logit_max(model, probe)
    fit(ctx, model, opt, bert_batches(gen), 240)
    end = _flava_attention_logit_max(model, probe)
    ctx.check("attention logits grew 30x", end > 30 * start)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- OWL-ViT text encoder: output logits drift (z-loss sign) -------------------------------------


def _owlvit(dim: int = 32) -> EncoderClassifier:
    _quiet_hf()
    from transformers import OwlViTTextConfig, OwlViTTextModel

    cfg = OwlViTTextConfig(
        vocab_size=128,
        hidden_size=dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return EncoderClassifier(OwlViTTextModel(cfg), dim, 8)


@scenario(
    "h86_hf_owlvit_text_cls",
    "sg_lion",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    onset=0,
    note="z-loss added with the wrong sign: log Z is rewarded for growing",
)
def h86_owlvit_zloss_sign(ctx: Context) -> None:
    gen = seeded(8602)
    model = _owlvit()
    opt = sgo.Lion(model.parameters(), lr=2e-3, weight_decay=0.0)
    probe, _ = next(token_class_batches(seeded(2)))
    with torch.no_grad():
        z0 = float(torch.logsumexp(model(probe), -1).mean())

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        logz = torch.logsumexp(zloss.logits, -1)
        return loss - 1e-3 * (logz**2).mean()  # meant: loss + 1e-4 * logz**2

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        zloss.logits = m(x)
        return zloss.logits

    fit(
        ctx,
        model,
        opt,
        token_class_batches(gen),
        240,
        forward=forward,
        extra_loss=zloss,
    )
    with torch.no_grad():
        z1 = float(torch.logsumexp(model(probe), -1).mean())
    ctx.check("log Z grew by 20+", z1 > z0 + 20)
    ctx.check("cross-entropy stayed finite", all(math.isfinite(v) for v in ctx.losses))


# -- Switch Transformers seq2seq: healthy ---------------------------------------------------------


@scenario(
    "h86_hf_switch_reverse_seq2seq",
    "adamw",
    "healthy",
    heldout=True,
    note="tiny Switch encoder-decoder (4 experts) learning to reverse 8 tokens",
)
def h86_switch_reverse_healthy(ctx: Context) -> None:
    _quiet_hf()
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    gen = seeded(8604)
    cfg = SwitchTransformersConfig(
        vocab_size=64,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        num_experts=4,
        expert_capacity=128,
        encoder_sparse_step=2,
        decoder_sparse_step=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = SwitchTransformersForConditionalGeneration(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    for _ in range(400):
        x = torch.randint(3, 20, (16, 8), generator=gen)
        y = x.flip(1)
        out = model(input_ids=x, labels=y, output_router_logits=True)
        ce = lm_loss(out.logits, y)
        _train_step(ctx, model, opt, out.loss if out.loss is not None else ce)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell by half", last < 0.5 * first)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- advantage-weighted regression: LR warm-up typo ------------------------------------------------


def logged_control_data(gen: torch.Generator, n: int = 4096):
    """Logged transitions of a noisy behaviour policy on a linear system: (s, a, return)."""
    s = torch.randn(n, 6, generator=gen)
    k = torch.randn(6, 2, generator=gen) * 0.5
    a_star = torch.tanh(s @ k)
    a = a_star + 0.5 * torch.randn(n, 2, generator=gen)
    ret = -((a - a_star) ** 2).sum(1) - 0.1 * (s**2).sum(1) + 0.1 * torch.randn(n, generator=gen)
    return s, a, ret


class AWRAgent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.policy = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 2))
        self.value = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 1))


@scenario(
    "h86_awr_logged_control",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="linear warm-up to 1.0 instead of 1e-2 (a dropped exponent); crosses 2/sharpness",
)
def h86_awr_warmup_typo(ctx: Context) -> None:
    gen = seeded(8606)
    s, a, ret = logged_control_data(gen)
    agent = AWRAgent()
    opt = torch.optim.SGD(agent.parameters(), lr=0.0, momentum=0.9)
    ctx.attach(agent, opt)
    peak, warm = 1.0, 200
    for step in range(260):
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / warm)
        idx = torch.randint(0, len(ret), (128,), generator=gen)
        sb, ab, rb = s[idx], a[idx], ret[idx]
        v = agent.value(sb).squeeze(1)
        adv = (rb - v).detach()
        w = torch.clamp(torch.exp(adv / 1.0), max=20.0)
        pol = (w * ((agent.policy(sb) - ab) ** 2).sum(1)).mean()
        loss = pol + F.mse_loss(v, rb)
        _train_step(ctx, agent, opt, loss)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    blew = len(finite) < len(ctx.losses) or max(finite) > 100 * min(finite)
    ctx.check("loss blew up after the warm-up passed the limit", blew)
    ctx.check(
        "healthy at first (loss fell over the first 40 steps)",
        sum(ctx.losses[20:40]) / 20 < sum(ctx.losses[:5]) / 5,
    )


# -- mixture-density RNN on pen strokes: exploding gradients --------------------------------------


def stroke_batches(gen: torch.Generator, batch: int = 32, length: int = 60):
    """Handwriting-like strokes: (dx, dy, pen-up) from noisy loops of random frequency."""
    while True:
        t = torch.linspace(0, 1, length + 1)
        f = 2 + 3 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.cos(6.28 * f * t + ph) + 2 * t
        y = torch.sin(2 * 6.28 * f * t + ph) * 0.5
        pts = torch.stack([x, y], -1)
        d = pts[:, 1:] - pts[:, :-1] + 0.01 * torch.randn(batch, length, 2, generator=gen)
        pen = (torch.rand(batch, length, 1, generator=gen) < 0.05).float()
        seq = torch.cat([d * 5, pen], -1)
        yield seq[:, :-1], seq[:, 1:]


class MDNRNN(nn.Module):
    def __init__(self, hidden: int = 64, comps: int = 5) -> None:
        super().__init__()
        self.comps = comps
        self.rnn = nn.RNN(3, hidden, batch_first=True, nonlinearity="relu")
        self.mdn = nn.Linear(hidden, comps * 5 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mdn(self.rnn(x)[0])


def mdn_loss(out: torch.Tensor, target: torch.Tensor, comps: int = 5) -> torch.Tensor:
    logit_pi, mu, log_sig, pen = out.split([comps, 2 * comps, 2 * comps, 1], -1)
    mu = mu.reshape(*mu.shape[:-1], comps, 2)
    log_sig = log_sig.reshape(*log_sig.shape[:-1], comps, 2).clamp(-5, 5)
    d = target[..., None, :2]
    logp = (
        -0.5 * (((d - mu) / log_sig.exp()) ** 2).sum(-1) - log_sig.sum(-1) - math.log(2 * math.pi)
    )
    nll = -torch.logsumexp(torch.log_softmax(logit_pi, -1) + logp, -1)
    return nll.mean() + F.binary_cross_entropy_with_logits(pen.squeeze(-1), target[..., 2])


@scenario(
    "h86_mdn_rnn_strokes",
    "sgd",
    "exploding_gradients",
    where="rnn",
    diverges="auto",
    heldout=True,
    note="IRNN (ReLU, identity recurrence), a stroke-length curriculum 20 -> 220, no clipping",
)
def h86_mdn_irnn_exploding(ctx: Context) -> None:
    """Backpropagation through ever longer strokes with an identity-initialised ReLU recurrence
    and no gradient clipping (the Graves recipe clips): the gradient grows with the length."""
    gen = seeded(8607)
    model = MDNRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(torch.eye(64))
        model.rnn.bias_hh_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=5e-4)
    rnn_norms: list[float] = []
    ctx.attach(model, opt)
    for step in range(300):
        x, y = next(stroke_batches(gen, batch=16, length=20 + step))
        loss = mdn_loss(model(x), y)
        loss.backward()
        g = [p.grad.norm() for p in model.rnn.parameters() if p.grad is not None]
        rnn_norms.append(float(torch.stack(g).norm()) if g else 0.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    early = _median(rnn_norms[20:60])
    finite = [v for v in rnn_norms if math.isfinite(v)]
    ctx.check(
        "the RNN's gradient grew 100x (or overflowed)",
        len(finite) < len(rnn_norms) or max(finite) > 100 * early,
    )
    ctx.check("finite for the first 60 steps", all(math.isfinite(v) for v in ctx.losses[:60]))


# -- REINFORCE with a learned baseline: Adamax state poisoned by a sentinel reward ----------------


class BanditAgent(nn.Module):
    def __init__(self, ctx_dim: int = 8, arms: int = 5) -> None:
        super().__init__()
        self.policy = nn.Sequential(nn.Linear(ctx_dim, 32), nn.Tanh(), nn.Linear(32, arms))
        self.baseline = nn.Sequential(nn.Linear(ctx_dim, 32), nn.Tanh(), nn.Linear(32, 1))


@scenario(
    "h86_reinforce_baseline_bandit",
    "adamax",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="missing rewards logged as the sentinel -9999 at step 150; Adamax's infinity norm keeps it",
)
def h86_reinforce_sentinel_reward(ctx: Context) -> None:
    gen = seeded(8609)
    arms_w = torch.randn(5, 8, generator=gen)
    agent = BanditAgent()
    opt = torch.optim.Adamax(agent.parameters(), lr=2e-3)
    ctx.attach(agent, opt)
    rewards: list[float] = []
    steps_size: list[float] = []
    for step in range(450):
        c = torch.randn(64, 8, generator=gen)
        logits = agent.policy(c)
        arm = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen).squeeze(1)
        r = (c * arms_w[arm]).sum(1) + 0.3 * torch.randn(64, generator=gen)
        rewards.append(float(r.mean()))
        if step == 150:
            r = r.clone()
            r[::4] = -9999.0  # a dropped logger connection: "missing" sentinel on 16 rows
        b = agent.baseline(c).squeeze(1)
        logp = torch.log_softmax(logits, -1).gather(1, arm[:, None]).squeeze(1)
        loss = -((r - b).detach() * logp).mean() + 0.5 * ((r - b) ** 2).mean()
        before = [p.detach().clone() for p in agent.parameters()]
        _train_step(ctx, agent, opt, loss)
        steps_size.append(
            float(
                sum(
                    (p.detach() - q).norm() ** 2
                    for p, q in zip(agent.parameters(), before, strict=True)
                )
            )
            ** 0.5
        )
    pre = sum(steps_size[100:150]) / 50
    post = sum(steps_size[250:300]) / 50
    ctx.check("updates 10x smaller long after the spike", post < pre / 10)
    gain_pre = sum(rewards[130:150]) / 20 - sum(rewards[:20]) / 20
    gain_post = sum(rewards[-50:]) / 50 - sum(rewards[130:150]) / 20
    ctx.check("reward was improving, then stalled", gain_pre > 0.2 and gain_post < gain_pre / 2)


# -- behaviour cloning, Gaussian policy: corrupted log batch --------------------------------------


class GaussianPolicy(nn.Module):
    def __init__(self, obs: int = 10, act: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.mu = nn.Linear(64, act)
        self.log_std = nn.Linear(64, act)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = self.trunk(s)
        return torch.cat([self.mu(h), self.log_std(h).clamp(-5, 2)], -1)


def gaussian_nll(out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    mu, log_std = out.chunk(2, -1)
    return (0.5 * ((a - mu) / log_std.exp()) ** 2 + log_std).sum(-1).mean()


def demo_batches(gen: torch.Generator, batch: int = 64):
    k = torch.randn(10, 3, generator=gen) * 0.6
    while True:
        s = torch.randn(batch, 10, generator=gen)
        a = torch.tanh(s @ k) + 0.1 * torch.randn(batch, 3, generator=gen)
        yield s, a


@scenario(
    "h86_bc_gaussian_policy",
    "sg_stablespam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=260,
    note="one demo file logged actions in raw encoder ticks (x1000) for a few rows at step 260",
)
def h86_bc_tick_units_batch(ctx: Context) -> None:
    gen = seeded(8610)
    model = GaussianPolicy()
    opt = sgo.StableSPAM(model.parameters(), lr=1e-3)

    def alter(step: int, s: torch.Tensor, a: torch.Tensor):
        if step == 260:
            a = a.clone()
            a[:6] = a[:6] * 1000.0
        return s, a

    fit(
        ctx, model, opt, demo_batches(gen), 400, loss_fn=gaussian_nll, alter=alter, classifier=False
    )
    before = ctx.losses[200:260]
    ctx.check(
        "loss spiked 20x at the bad batch", ctx.losses[260] > 20 * max(abs(v) for v in before)
    )
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- neural Hawkes process: ReLU intensity hits 0, log(0) ----------------------------------------


def event_streams(gen: torch.Generator, batch: int = 32, length: int = 24, types: int = 4):
    """Self-exciting-looking streams: inter-event gaps and types with a type-dependent rhythm."""
    while True:
        typ = torch.zeros(batch, length, dtype=torch.long)
        gap = torch.zeros(batch, length)
        cur = torch.randint(0, types, (batch,), generator=gen)
        for i in range(length):
            typ[:, i] = cur
            rate = 1.0 + cur.float()
            gap[:, i] = -torch.log(torch.rand(batch, generator=gen).clamp_min(1e-6)) / rate
            jump = torch.rand(batch, generator=gen) < 0.3
            cur = torch.where(
                jump, torch.randint(0, types, (batch,), generator=gen), (cur + 1) % types
            )
        yield typ, gap


class HawkesIntensity(nn.Module):
    """lambda_k(t) = relu(w_k . h * exp(-delta (t - t_i)) + b_k) (softplus swapped for ReLU).
    Returns log lambda at the observed events and lambda at Monte-Carlo sample times."""

    def __init__(self, hidden: int, types: int) -> None:
        super().__init__()
        self.lin = nn.Linear(hidden, types)
        self.decay = nn.Parameter(torch.ones(types))
        nn.init.constant_(self.lin.bias, 0.5)

    def rate(self, h: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        return F.relu(self.lin(h) * torch.exp(-F.softplus(self.decay) * dt[..., None]) + 0.05)

    def forward(self, h, gap, typ, u):
        ev = self.rate(h, gap).gather(-1, typ[..., None]).squeeze(-1)
        samples = self.rate(h[..., None, :], gap[..., None] * u)  # (B, L, S, K)
        return torch.log(ev), samples


class NeuralHawkes(nn.Module):
    def __init__(self, types: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(types, hidden)
        self.gru = nn.GRU(hidden + 1, hidden, batch_first=True)
        self.intensity = HawkesIntensity(hidden, types)

    def forward(self, typ, gap, u):
        inp = torch.cat([self.embed(typ[:, :-1]), gap[:, :-1, None]], -1)
        h = self.gru(inp)[0]
        return self.intensity(h, gap[:, 1:], typ[:, 1:], u)


@scenario(
    "h86_neural_hawkes_events",
    "sg_adabelief",
    "nonfinite",
    where="intensity",
    diverges=39,
    heldout=True,
    onset=39,
    note="intensity uses ReLU instead of softplus: an observed event gets lambda = 0, log 0 = -inf",
)
def h86_hawkes_relu_intensity_log0(ctx: Context) -> None:
    gen = seeded(8611)
    model = NeuralHawkes()
    opt = sgo.AdaBelief(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    batches = event_streams(gen)
    first_bad = None
    intensity_bad = None

    def hook(_m, _i, out):
        nonlocal intensity_bad
        if intensity_bad is None and not torch.isfinite(out[0]).all():
            intensity_bad = len(ctx.losses)

    model.intensity.register_forward_hook(hook)
    for step in range(300):
        typ, gap = next(batches)
        u = torch.rand(8, generator=gen)
        log_ev, samples = model(typ, gap, u)
        integral = (samples.mean(-2).sum(-1) * gap[:, 1:]).sum(1)
        loss = (-log_ev.sum(1) + integral).mean() / typ.shape[1]
        _train_step(ctx, model, opt, loss)
        if first_bad is None and not math.isfinite(ctx.losses[-1]):
            first_bad = step
    ctx.check("the loss went non-finite", first_bad is not None)
    ctx.check(
        "the intensity module's output was the first non-finite value",
        intensity_bad is not None and intensity_bad == first_bad,
    )
    ctx.check("finite for 30+ steps first", first_bad is not None and first_bad >= 30)


# -- Bayes-by-backprop: resumed without optimizer state, schedule restarted -----------------------


class BayesLinear(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(b, a) / math.sqrt(a))
        self.rho = nn.Parameter(torch.full((b, a), -5.0))
        self.bias = nn.Parameter(torch.zeros(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = F.softplus(self.rho)
        w = self.mu + sigma * torch.randn_like(sigma)
        return F.linear(x, w, self.bias)

    def kl(self) -> torch.Tensor:
        sigma = F.softplus(self.rho)
        return (0.5 * (sigma**2 + self.mu**2) - torch.log(sigma) - 0.5).sum()


class BayesNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = BayesLinear(4, 32)
        self.l2 = BayesLinear(32, 32)
        self.l3 = BayesLinear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x))))).squeeze(-1)

    def kl(self) -> torch.Tensor:
        return self.l1.kl() + self.l2.kl() + self.l3.kl()


@scenario(
    "h86_bayes_by_backprop_regressor",
    "sg_ademamix",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=260,
    note="resume at step 260 drops the optimizer state and restarts the cosine schedule at peak",
)
def h86_bbb_resume_reset(ctx: Context) -> None:
    gen = seeded(8612)
    xs = torch.randn(2048, 4, generator=gen)
    ys = torch.sin(2 * xs[:, 0]) + xs[:, 1] * xs[:, 2] + 0.1 * torch.randn(2048, generator=gen)
    model = BayesNet()
    peak = 4e-2
    opt = sgo.AdEMAMix(model.parameters(), lr=peak)
    ctx.attach(model, opt)
    for step in range(420):
        t = step if step < 260 else step - 260  # the restarted schedule
        opt.param_groups[0]["lr"] = 1e-4 + 0.5 * (peak - 1e-4) * (
            1 + math.cos(math.pi * min(t, 260) / 260)
        )
        if step == 260:
            opt.state.clear()  # checkpoint loaded without optimizer state
        idx = torch.randint(0, 2048, (128,), generator=gen)
        pred = model(xs[idx])
        loss = F.mse_loss(pred, ys[idx]) + model.kl() / 2048 * 0.01
        _train_step(ctx, model, opt, loss)
    pre = sum(ctx.losses[240:260]) / 20
    ctx.check("loss jumped 4x after the resume", max(ctx.losses[260:290]) > 4 * pre)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- graph network simulator: close encounter, 1/r^2 without softening -------------------------


def particle_batches(
    gen: torch.Generator, batch: int = 16, n: int = 8, close_at: int | None = None
):
    """Positions of n particles; targets: softened spring-and-repulsion accelerations."""
    step = 0
    while True:
        pos = torch.rand(batch, n, 2, generator=gen) * 2
        if close_at is not None and step == close_at:
            pos[3, 1] = pos[3, 0] + 1e-3  # a close encounter in one system
        d = pos[:, None] - pos[:, :, None]  # (B, n, n, 2): j - i
        r2 = (d**2).sum(-1, keepdim=True) + 0.05  # the simulator softens
        acc = (d * (0.5 - 0.2 / r2)).sum(2)
        step += 1
        yield pos, acc


class EdgeEncoder(nn.Module):
    """Edge features: displacement, unit direction, inverse-square (no softening)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        r = d.norm(dim=-1, keepdim=True)
        r = torch.where(r > 0, r, torch.ones_like(r))  # self-edges
        return self.mlp(torch.cat([d, d / r, 1.0 / r**2], -1))


class GNS(nn.Module):
    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.node_encoder = nn.Linear(2, hidden)
        self.edge_encoder = EdgeEncoder(hidden)
        self.processor = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)
        )
        self.decoder = nn.Linear(hidden, 2)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        n = pos.shape[1]
        d = pos[:, None] - pos[:, :, None]
        e = self.edge_encoder(d)
        mask = 1 - torch.eye(n)[None, :, :, None]
        agg = (e * mask).sum(2) / (n - 1)
        h = self.node_encoder(pos - pos.mean(1, keepdim=True))
        return self.decoder(h + self.processor(torch.cat([h, agg], -1)))


@scenario(
    "h86_gns_particles",
    "rmsprop",
    "gradient_spike",
    where="edge_encoder",
    diverges=None,
    heldout=True,
    onset=220,
    note="edge encoder's 1/r^2 feature has no softening; a valid close encounter at step 220",
)
def h86_gns_unsoftened_edge_spike(ctx: Context) -> None:
    gen = seeded(8613)
    model = GNS()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = particle_batches(gen, close_at=220)
    share: list[float] = []
    for _ in range(380):
        pos, acc = next(batches)
        loss = F.mse_loss(model(pos), acc)
        loss.backward()
        total = grad_norm(model)
        edge = float(torch.stack([p.grad.norm() for p in model.edge_encoder.parameters()]).norm())
        share.append(edge / max(total, 1e-12))
        ctx.grad_norms.append(total)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient norm at 220 over 50x the median before", g[220] > 50 * _median(g[150:220]))
    ctx.check("the edge encoder carries most of it", share[220] > 0.9)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- healthy: tabular ResNet on quantile-transformed features -------------------------------------


class TabResBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


class TabResNet(nn.Module):
    def __init__(self, inp: int, dim: int = 64, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(inp, dim)
        self.blocks = nn.Sequential(*(TabResBlock(dim) for _ in range(blocks)))
        self.head = nn.Sequential(nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@scenario(
    "h86_tabresnet_quantile_cancer",
    "asgd",
    "healthy",
    heldout=True,
    note="breast cancer, QuantileTransformer to a normal distribution",
)
def h86_tabresnet_quantile_healthy(ctx: Context) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import QuantileTransformer

    gen = seeded(8614)
    d = load_breast_cancer()
    qt = QuantileTransformer(n_quantiles=200, output_distribution="normal", random_state=0)
    x = torch.tensor(qt.fit_transform(d.data), dtype=torch.float32)
    y = torch.tensor(d.target)

    def batches():
        while True:
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y) - 63, 64):
                idx = order[i : i + 64]
                yield x[idx], y[idx]

    model = TabResNet(x.shape[1])
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, weight_decay=1e-4)
    fit(ctx, model, opt, batches(), 300)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-30:]) / 30
    ctx.check("loss fell by half", last < 0.5 * first)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- healthy: field-aware factorisation machine on generated clicks -------------------------------


class FFM(nn.Module):
    def __init__(self, fields: int = 5, vocab: int = 20, k: int = 8) -> None:
        super().__init__()
        self.fields = fields
        self.linear = nn.Embedding(fields * vocab, 1)
        self.field_emb = nn.ModuleList(nn.Embedding(fields * vocab, k) for _ in range(fields))
        self.bias = nn.Parameter(torch.zeros(1))
        self.vocab = vocab
        for e in self.field_emb:
            nn.init.normal_(e.weight, std=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x + torch.arange(self.fields) * self.vocab
        emb = [e(idx) for e in self.field_emb]  # emb[f][:, i]: feature i's vector for field f
        out = self.bias + self.linear(idx).sum((1, 2))
        for i in range(self.fields):
            for j in range(i + 1, self.fields):
                out = out + (emb[j][:, i] * emb[i][:, j]).sum(-1)
        return out


def click_batches(gen: torch.Generator, batch: int = 128, fields: int = 5, vocab: int = 20):
    w = torch.randn(fields, vocab, generator=gen)
    inter = torch.randn(vocab, vocab, generator=gen)
    while True:
        x = torch.randint(0, vocab, (batch, fields), generator=gen)
        logit = w.gather(1, x.T).sum(0) * 0.5 + inter[x[:, 0], x[:, 1]] - 0.5
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield x, y


@scenario("h86_ffm_clicks", "adagrad", "healthy", heldout=True, note="FFM, 5 fields, BCE")
def h86_ffm_adagrad_healthy(ctx: Context) -> None:
    gen = seeded(8615)
    model = FFM()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fit(
        ctx,
        model,
        opt,
        click_batches(gen),
        350,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-30:]) / 30
    ctx.check("loss fell", last < 0.9 * first)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- healthy: dueling double-DQN on a generated gridworld -----------------------------------------


class DuelingQ(nn.Module):
    def __init__(self, cells: int = 25, actions: int = 4) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(cells, 64), nn.ReLU())
        self.value = nn.Linear(64, 1)
        self.advantage = nn.Linear(64, actions)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = self.trunk(s)
        a = self.advantage(h)
        return self.value(h) + a - a.mean(-1, keepdim=True)


def grid_step(pos: torch.Tensor, act: torch.Tensor, size: int = 5):
    moves = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    nxt = (pos + moves[act]).clamp(0, size - 1)
    goal = (nxt[:, 0] == size - 1) & (nxt[:, 1] == size - 1)
    return nxt, goal.float() - 0.01, goal


@scenario(
    "h86_dueling_ddqn_gridworld",
    "radam",
    "healthy",
    heldout=True,
    note="5x5 gridworld, uniform-random transitions replayed, soft target updates",
)
def h86_ddqn_grid_healthy(ctx: Context) -> None:
    gen = seeded(8616)
    size = 5
    q = DuelingQ()
    target = DuelingQ()
    target.load_state_dict(q.state_dict())
    opt = torch.optim.RAdam(q.parameters(), lr=1e-3)

    def onehot(p: torch.Tensor) -> torch.Tensor:
        return F.one_hot(p[:, 0] * size + p[:, 1], size * size).float()

    ctx.attach(q, opt)
    for _ in range(400):
        pos = torch.randint(0, size, (64, 2), generator=gen)
        act = torch.randint(0, 4, (64,), generator=gen)
        nxt, r, done = grid_step(pos, act)
        s, s2 = onehot(pos), onehot(nxt)
        with torch.no_grad():
            a2 = q(s2).argmax(1, keepdim=True)
            y = r + 0.9 * (1 - done.float()) * target(s2).gather(1, a2).squeeze(1)
        loss = F.smooth_l1_loss(q(s).gather(1, act[:, None]).squeeze(1), y)
        _train_step(ctx, q, opt, loss)
        with torch.no_grad():
            for pt, p in zip(target.parameters(), q.parameters(), strict=True):
                pt.lerp_(p, 0.02)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))
    with torch.no_grad():
        start = onehot(torch.tensor([[0, 0]]))
        v0 = float(q(start).max())
    ctx.check("learnt a positive value for the start cell", v0 > 0.1)
