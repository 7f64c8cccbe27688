"""Held-out scenarios, set 49 (``h49_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face GraniteMoeShared, MiniCPM3, EXAONE-MoE, GPT-NeoX-Japanese and HunYuan
dense causal LMs built from configs (byte-level text), PointNet on generated point clouds, a
factorization machine on generated clicks, a neural ODE (fixed-step Euler) on digits, a
DLRM-style recommender with ``nn.EmbeddingBag`` on generated clicks, a TabTransformer on
generated tabular rows, a capsule network with dynamic routing on digits, and a wide-and-deep
model under fp16 autocast on generated account data (fault and control).

Optimizers: AdamW, NAdam, Adam, RMSprop, Nesterov SGD, Adamax, SGD, momentum SGD, Adagrad,
RAdam, ASGD, Adadelta and steadygrad.optim's AdaBelief, Lion and AdEMAMix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _first_nonfinite(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _lm_batches(gen: torch.Generator):
    return text_batches(gen, batch=16, length=32, vocab=128)


_LM = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)


def _granite(attention_multiplier: float):
    from transformers import GraniteMoeSharedConfig, GraniteMoeSharedForCausalLM

    config = GraniteMoeSharedConfig(
        **_LM,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        shared_intermediate_size=64,
        attention_multiplier=attention_multiplier,
    )
    config._attn_implementation = "eager"
    return GraniteMoeSharedForCausalLM(config)


@torch.no_grad()
def _attention_reading(model: nn.Module, x: torch.Tensor, scale: float) -> tuple[float, float]:
    """(largest attention logit bound scale*|q||k| over the layers, share of query rows past the
    fourth position whose attention puts more than 0.99 on one key) on a batch."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mod.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o.detach()))
        for name, mod in model.named_modules()
        if name.endswith(("q_proj", "k_proj"))
    ]
    out = model(input_ids=x, output_attentions=True)
    for h in hooks:
        h.remove()
    bound = 0.0
    heads = model.config.num_attention_heads
    for name, q in seen.items():
        if not name.endswith("q_proj"):
            continue
        k = seen[name[: -len("q_proj")] + "k_proj"]
        qn = q.reshape(*q.shape[:2], heads, -1).norm(dim=-1).amax()
        kn = k.reshape(*k.shape[:2], heads, -1).norm(dim=-1).amax()
        bound = max(bound, float(qn * kn) * scale)
    probs = torch.stack([a[:, :, 4:] for a in out.attentions])
    saturated = float((probs.amax(-1) > 0.99).float().mean())
    return bound, saturated


# -- 1. attention logits grow: a muP attention multiplier left at the config default ------------


@scenario(
    "h49_hf_granitemoeshared_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="attention_multiplier 1.0 (the config default) where the muP recipe needs 1/head_dim",
)
def h49_granite_attention_multiplier_default(ctx: Context) -> None:
    """GraniteMoeShared scales q.k by ``config.attention_multiplier`` instead of 1/sqrt(d).
    The muP recipe this run copies sets it to 1/head_dim (1/16), but the config is built
    without it, so the default 1.0 is used: the logits are 16x too large, and with a muP-sized
    AdamW rate the q/k projections grow quickly until the attention rows saturate (one key takes
    nearly all the weight)."""
    gen = seeded(4901)
    model = _granite(attention_multiplier=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe, _ = next(_lm_batches(torch.Generator().manual_seed(49)))
    bound0, sat0 = _attention_reading(model, probe, 1.0)
    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    bound1, sat1 = _attention_reading(model, probe, 1.0)
    ctx.check("attention logit bound grew 10x", bound1 > 10 * bound0)
    ctx.check("most attention rows saturated (> 0.99 on one key)", sat1 > 0.5 > sat0)


@scenario(
    "h49_hf_granitemoeshared_lm",
    "sg_ademamix",
    "healthy",
    heldout=True,
    note="attention_multiplier 1/head_dim as the recipe says",
)
def h49_granite_healthy(ctx: Context) -> None:
    """The same GraniteMoeShared LM with the multiplier set as the recipe says, AdEMAMix."""
    gen = seeded(4902)
    model = _granite(attention_multiplier=1.0 / 16)
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, fused=False)
    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:5]))


# -- 2. output logits run away: a hand-written head decay with the wrong sign --------------------


def _minicpm3():
    from transformers import MiniCPM3Config, MiniCPM3ForCausalLM

    config = MiniCPM3Config(
        **_LM,
        num_key_value_heads=2,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=16,
        tie_word_embeddings=False,
        scale_emb=1,
        scale_depth=None,
        dim_model_base=None,
        initializer_range=0.02,
    )
    return MiniCPM3ForCausalLM(config)


@scenario(
    "h49_hf_minicpm3_lm",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="head-only decoupled decay written p += lr*wd*p",
)
def h49_minicpm3_head_decay_wrong_sign(ctx: Context) -> None:
    """The untied output head gets its own decoupled weight decay in a hand-written loop after
    each NAdam step (the optimizer itself runs without decay): ``w.add_(w, alpha=lr * wd)``, the
    minus sign lost. Every step multiplies the head by 1 + lr*wd; the cross-entropy cannot stop a
    growth that scales all logits at once, so the output logits (and log Z) grow without bound
    until the over-confident predictions drive the loss up."""
    gen = seeded(4903)
    model = _minicpm3()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    wd = 12.0
    probe, _ = next(_lm_batches(torch.Generator().manual_seed(49)))
    with torch.no_grad():
        top0 = float(_lm_forward(model, probe).abs().amax())

    def head_decay(step: int) -> None:
        if step > 0:
            with torch.no_grad():
                model.lm_head.weight.add_(model.lm_head.weight, alpha=2e-3 * wd)  # sign bug

    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        before=head_decay,
    )
    with torch.no_grad():
        logits = _lm_forward(model, probe)
    top1 = float(logits.abs().amax())
    ctx.check("output logits grew 50x", top1 > 50 * top0)
    ctx.check("loss ended above its best by 2x", _mean(ctx.losses[-10:]) > 2 * min(ctx.losses))


# -- 3. a stale loss scale for one step poisons Adam's second moment ----------------------------


def _exaone():
    from transformers import ExaoneMoeConfig, ExaoneMoeForCausalLM

    config = ExaoneMoeConfig(
        **_LM,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        head_dim=16,
    )
    return ExaoneMoeForCausalLM(config)


def _update_sizes(model: nn.Module, sizes: list[list[float]]):
    """A ``before`` hook recording, per tensor, the norm of each optimizer step's change."""
    last: list[list[torch.Tensor]] = []

    def before(step: int) -> None:
        now = [p.detach().clone() for p in model.parameters()]
        if last:
            sizes.append([float((a - b).norm()) for a, b in zip(now, last[0], strict=True)])
            last[0] = now
        else:
            last.append(now)

    return before


def _median(xs) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


@scenario(
    "h49_hf_exaone_moe_lm",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="step 120 backpropagates the loss x65536 (a manual loss scale not divided out)",
)
def h49_exaone_stale_loss_scale(ctx: Context) -> None:
    """A hand-rolled loss-scaling path (copied from an fp16 recipe) multiplies the loss by 2^16
    before backward and divides the gradients afterwards; at step 120 the divide is skipped (the
    overflow check returned early), so Adam sees every gradient 65536x too large for one step.
    Its second moment takes in the square of that gradient and, with beta2 = 0.999, keeps it for
    thousands of steps: after a short coordinated jump along the stale first moment, the
    updates of almost every tensor shrink by an order of magnitude or more, and the loss, pushed
    up by the jump, climbs back only slowly."""
    gen = seeded(4904)
    model = _exaone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sizes: list[list[float]] = []

    def scaled(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 120 else loss

    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        extra_loss=scaled,
        before=_update_sizes(model, sizes),
    )
    # sizes[i] is the change made by step i; per tensor, mean change after / before the spike
    ratios = [
        _mean(s[i] for s in sizes[170:]) / max(_mean(s[i] for s in sizes[80:120]), 1e-12)
        for i in range(len(sizes[0]))
    ]
    ctx.check(
        "gradient 1000x at step 120", ctx.grad_norms[120] > 1000 * max(ctx.grad_norms[100:120])
    )
    ctx.check("median tensor's updates 10x smaller after", _median(ratios) < 0.1)
    ctx.check(
        "loss still above its pre-spike level 180 steps later",
        _mean(ctx.losses[-20:]) > _mean(ctx.losses[100:120]),
    )


# -- 4. a tied embedding left at a learning rate of 0: an integer-division warm-up ---------------


def _neox_japanese():
    from transformers import GPTNeoXJapaneseConfig, GPTNeoXJapaneseForCausalLM

    config = GPTNeoXJapaneseConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_multiple_size=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTNeoXJapaneseForCausalLM(config)


@scenario(
    "h49_hf_gpt_neox_japanese_lm",
    "rmsprop",
    "update_ratio_out_of_range",
    where="gpt_neox_japanese.embed_in",
    diverges=None,
    heldout=True,
    note="embedding group's LambdaLR factor step // 1000 (meant step / 1000): 0 for 1000 steps",
)
def h49_neox_japanese_embedding_lr_zero(ctx: Context) -> None:
    """The (tied) token embedding gets a slower warm-up than the body through ``LambdaLR`` with
    one lambda per group; its lambda is written ``lambda s: min(1, s // 1000)`` (integer
    division, meant ``s / 1000``), so its learning rate is exactly 0 for the first 1000 steps:
    it gets a gradient every step and never moves, while the rest of the model trains."""
    gen = seeded(4905)
    model = _neox_japanese()
    emb = model.gpt_neox_japanese.embed_in.weight
    rest = [p for p in model.parameters() if p is not emb]
    opt = torch.optim.RMSprop([{"params": [emb]}, {"params": rest}], lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1, s // 1000), lambda s: min(1.0, (s + 1) / 50)]
    )
    e0 = emb.detach().clone()
    r0 = [p.detach().clone() for p in rest]
    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        250,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        before=lambda step: sched.step() if step > 0 else None,
    )
    ctx.check("embedding unchanged", torch.equal(e0, emb.detach()))
    moved = sum(
        float((p.detach() - q).norm() / (q.norm() + 1e-12)) > 0.05
        for p, q in zip(rest, r0, strict=True)
    )
    ctx.check("the body's weights moved", moved >= len(rest) // 2)
    ctx.check(
        "loss still fell (body trains)", _mean(ctx.losses[-20:]) < 0.93 * _mean(ctx.losses[:5])
    )


# -- 5. a one-step gradient spike in one tensor: a resumed run's stale, still-scaled .grad -------


def _hunyuan():
    from transformers import HunYuanDenseV1Config, HunYuanDenseV1ForCausalLM

    config = HunYuanDenseV1Config(**_LM, num_key_value_heads=2, head_dim=16)
    return HunYuanDenseV1ForCausalLM(config)


@scenario(
    "h49_hf_hunyuan_v1_dense_lm",
    "sgd_nesterov",
    "gradient_spike",
    where="model.layers.1.mlp.down_proj",
    diverges=None,
    onset=160,
    heldout=True,
    note="resume at step 160 keeps down_proj's saved .grad (x65536, not unscaled, not zeroed)",
)
def h49_hunyuan_resume_stale_grad(ctx: Context) -> None:
    """The run resumes at step 160 from a checkpoint written mid-step by an fp16 job: the saved
    ``.grad`` of layer 1's ``mlp.down_proj.weight`` still holds that step's gradient multiplied
    by the loss scale 65536 (the save ran before unscaling), the resume path restores it and does
    not zero the gradients before the first backward, so this step's gradient is added to it.
    One tensor's gradient spikes for one step; Nesterov SGD takes the jump and the loss comes
    back within some tens of steps (nothing else is damaged)."""
    gen = seeded(4906)
    model = _hunyuan()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, nesterov=True)
    target = model.model.layers[1].mlp.down_proj.weight
    kept: dict[str, torch.Tensor] = {}
    norms: list[float] = []

    def stale(step: int) -> None:
        if step == 160:
            target.grad = 65536.0 * kept["g"]

    def hook(p: torch.Tensor) -> None:
        norms.append(float(p.grad.norm()))
        kept["g"] = p.grad.detach().clone()

    target.register_post_accumulate_grad_hook(hook)
    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        320,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        before=stale,
    )
    ctx.check(
        "down_proj gradient 500x its norm at step 160", norms[160] > 500 * max(norms[140:160])
    )
    others = ctx.grad_norms[140:160]
    ctx.check(
        "the spike is that tensor's", norms[160] > 0.9 * ctx.grad_norms[160] > 10 * max(others)
    )
    ctx.check(
        "loss back to its pre-spike level",
        _mean(ctx.losses[-20:]) <= 1.02 * _mean(ctx.losses[140:160]),
    )


# -- 6. PointNet: a temperature applied the wrong way collapses the softmax -----------------------


def _shape_batches(gen: torch.Generator, batch: int = 32, points: int = 64):
    """Endless batches of point clouds: sphere, cube surface, cylinder, flat disc (randomly
    scaled, with jitter), labels 0..3."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        u = torch.rand(batch, points, 3, generator=gen) * 2 - 1
        sphere = F.normalize(torch.randn(batch, points, 3, generator=gen), dim=-1)
        face = torch.randint(0, 3, (batch, points), generator=gen)
        side = torch.randint(0, 2, (batch, points), generator=gen).float() * 2 - 1
        cube = u.clone()
        cube.scatter_(2, face[..., None], side[..., None])
        ang = u[..., 0:1] * math.pi
        cyl = torch.cat([ang.cos(), ang.sin(), u[..., 1:2]], -1)
        rad = u[..., 1:2].abs().sqrt()
        disc = torch.cat([rad * ang.cos(), rad * ang.sin(), 0.02 * u[..., 2:3]], -1)
        shapes = torch.stack([sphere, cube, cyl, disc], 1)
        x = shapes[torch.arange(batch), y]
        scale = 0.8 + 0.4 * torch.rand(batch, 1, 1, generator=gen)
        x = scale * x
        x = x + 0.02 * torch.randn(x.shape, generator=gen)
        yield x, y


class PointNet(nn.Module):
    """Shared per-point MLP, max pooling, a classifier MLP; ``temperature`` divides the logits."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.point_mlp = nn.Sequential(
            nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 128)
        )
        self.fc = nn.Sequential(nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.point_mlp(x).amax(dim=1)
        return self.head(self.fc(g)) / self.temperature


def _epochs(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, batch: int = 32):
    """Endless shuffled mini-batches over a fixed training set."""
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


@scenario(
    "h49_pointnet_shapes",
    "sg_lion",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="logits divided by a temperature of 0.02 meant as a multiplier; 256 training clouds",
)
def h49_pointnet_temperature_divided(ctx: Context) -> None:
    """The classifier was ported from a contrastive code base whose logit temperature (0.02)
    divides cosine similarities; here it divides the raw logits of the head, so they are 50x too
    large. Lion's sign updates keep pushing the margins at a constant speed on the small
    training set (256 clouds, fitted within ~100 steps), and from then on the softmax of most
    training samples is exactly one-hot in float32: the probabilities have collapsed, the
    correct samples give no gradient and a rare wrong one a huge loss."""
    gen = seeded(4907)
    model = PointNet(temperature=0.02)
    opt = sgo.Lion(model.parameters(), lr=5e-4, fused=False)
    x, y = next(_shape_batches(gen, batch=256))
    fit(ctx, model, opt, _epochs(x, y, gen), 250)
    with torch.no_grad():
        logits = model(x)
    ctx.check("most training samples' softmax exactly one-hot", collapsed_fraction(logits, y) > 0.5)
    ctx.check("the shapes are learnt", float((logits.argmax(1) == y).float().mean()) > 0.95)


@scenario("h49_pointnet_shapes", "adadelta", "healthy", heldout=True)
def h49_pointnet_healthy(ctx: Context) -> None:
    """The same PointNet without the stray temperature, on the generated stream, Adadelta."""
    gen = seeded(4908)
    model = PointNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, _shape_batches(gen), 300)
    x, y = next(_shape_batches(torch.Generator().manual_seed(49), batch=256))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:5]))
    ctx.check("held-out accuracy above 0.9", acc > 0.9)


# -- 7. factorization machine: a warm-up target typed 100x too large ------------------------------

_FIELDS = (40, 60, 12, 8)  # users, items, hour of day buckets, device types


def _click_batches(gen: torch.Generator, batch: int = 128):
    """Generated clicks from a hidden factorization model over four categorical fields; the
    ids are offset into one shared index space."""
    truth = torch.Generator().manual_seed(4949)
    n = sum(_FIELDS)
    v = 0.7 * torch.randn(n, 4, generator=truth)
    w = 0.5 * torch.randn(n, generator=truth)
    offsets = torch.tensor([0, *torch.tensor(_FIELDS).cumsum(0)[:-1].tolist()])
    while True:
        ids = torch.stack([torch.randint(0, f, (batch,), generator=gen) for f in _FIELDS], 1)
        ids = ids + offsets
        e = v[ids]
        inter = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        logit = w[ids].sum(1) + inter - 0.5
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield ids, y


class FactorizationMachine(nn.Module):
    """Rendle's FM: bias + first-order weights + pairwise factor interactions."""

    def __init__(self, n: int = sum(_FIELDS), k: int = 8) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))
        self.linear = nn.Embedding(n, 1)
        self.factors = nn.Embedding(n, k)
        nn.init.zeros_(self.linear.weight)
        nn.init.normal_(self.factors.weight, std=0.1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.factors(ids)
        inter = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        return self.bias + self.linear(ids).squeeze(-1).sum(1) + inter


@scenario(
    "h49_factorization_machine",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up to peak 40 (typed 4e1 for 4e0) over 200 steps",
)
def h49_fm_warmup_peak_typo(ctx: Context) -> None:
    """Plain SGD with a linear warm-up over 200 steps to the peak rate; the peak is written
    ``4e1`` instead of ``4e0``. For the first steps the rate is still small and the model
    learns, but the rate keeps rising through the stability limit of the interaction terms'
    curvature, the factors start to oscillate with growing amplitude and the loss blows up."""
    gen = seeded(4909)
    model = FactorizationMachine()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    peak = 4e1  # meant 4e0

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / 200)

    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        220,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
        before=warmup,
    )
    bad = _first_nonfinite(ctx.losses)
    best = min(ctx.losses[:60])
    ctx.check("loss fell first", best < 0.95 * ctx.losses[0])
    blown = bad is not None or max(ctx.losses[-20:]) > 10 * best
    ctx.check("then blew up as the rate rose", blown)


@scenario("h49_factorization_machine", "asgd", "healthy", heldout=True)
def h49_fm_healthy(ctx: Context) -> None:
    """The same factorization machine at a rate of the intended size, averaged SGD."""
    gen = seeded(4910)
    model = FactorizationMachine()
    opt = torch.optim.ASGD(model.parameters(), lr=3.0, t0=100)
    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        300,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.9 * _mean(ctx.losses[:5]))


# -- 8. neural ODE: an uncapped horizon curriculum unrolls the solver ever longer ---------------


class ODEFunc(nn.Module):
    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(h)))


class EulerODENet(nn.Module):
    """Encoder, fixed-step Euler integration of dh/dt = func(h), linear head (digits)."""

    def __init__(self, dt: float = 0.3, n_steps: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Linear(64, 32)
        self.func = ODEFunc()
        self.head = nn.Linear(32, 10)
        self.dt = dt
        self.n_steps = n_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.encoder(x))
        for _ in range(self.n_steps):
            h = h + self.dt * self.func(h)
        return self.head(h)


@scenario(
    "h49_neural_ode_euler",
    "sgd_mom",
    "exploding_gradients",
    where=("func.lin1", "func.lin2"),
    diverges="auto",
    onset=100,
    heldout=True,
    note="from step 100 the Euler horizon grows by a step every 2 steps (its cap of 12 lost)",
)
def h49_node_uncapped_horizon(ctx: Context) -> None:
    """A horizon curriculum lengthens the integration from step 100 (one Euler step more every
    two training steps), meant to stop at 12 steps; the ``min(..., 12)`` was lost in a refactor.
    The unrolled solver gets ever deeper: backpropagating through 30+ applications of
    h + dt*func(h) multiplies the ODE function's Jacobians, whose product grows with the depth,
    so the gradients of func grow (first slowly, then by orders of magnitude over a few steps)
    until the weights and the loss blow up."""
    gen = seeded(4911)
    model = EulerODENet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def horizon(step: int) -> None:
        model.n_steps = 10 if step < 100 else 10 + (step - 100) // 2  # meant min(.., 12)

    fit(ctx, model, opt, digit_batches(gen), 200, before=horizon)
    g = ctx.grad_norms
    base = _mean(g[80:100])
    bad = _first_nonfinite(ctx.losses)
    ctx.check("the run broke (NaN loss)", bad is not None and bad > 100)
    climb = [i for i in range(100, bad) if all(v > 5 * base for v in g[i : i + 4])]
    ctx.check("gradients above 5x their baseline for 4+ steps before the break", bool(climb))
    ctx.check("then 100x their baseline", max(v for v in g[100:bad] if _finite(v)) > 100 * base)


# -- 9. DLRM: a pruning mask applied inverted kills the bottom MLP ------------------------------


def _dlrm_batches(gen: torch.Generator, batch: int = 128, vocab: int = 50, bag: int = 3):
    """Generated clicks: 6 dense features and 3 sparse fields (bags of 3 ids each)."""
    truth = torch.Generator().manual_seed(4948)
    wd = torch.randn(6, generator=truth)
    we = torch.randn(3, vocab, generator=truth)
    while True:
        dense = torch.randn(batch, 6, generator=gen)
        sparse = torch.randint(0, vocab, (batch, 3, bag), generator=gen)
        logit = (
            dense @ wd
            + sum(we[f][sparse[:, f]].mean(1) for f in range(3))
            + 0.5 * dense[:, 0] * dense[:, 1]
        )
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield (dense, sparse), y


class DLRM(nn.Module):
    """Bottom MLP on dense features, one EmbeddingBag per sparse field, pairwise dot
    interactions, top MLP."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, dim), nn.ReLU())
        self.embeddings = nn.ModuleList(nn.EmbeddingBag(vocab, dim, mode="mean") for _ in range(3))
        self.top = nn.Sequential(nn.Linear(dim + 6, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, inputs) -> torch.Tensor:
        dense, sparse = inputs
        b = self.bottom(dense)
        vecs = torch.stack([b] + [e(sparse[:, f]) for f, e in enumerate(self.embeddings)], 1)
        dots = vecs @ vecs.transpose(1, 2)
        i, j = torch.triu_indices(4, 4, offset=1)
        return self.top(torch.cat([b, dots[:, i, j]], 1)).squeeze(-1)


def _bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, y)


@scenario(
    "h49_dlrm_embedding_bags",
    "adagrad",
    "loss_of_plasticity",
    where=("bottom.0", "bottom.1"),
    diverges=None,
    onset=150,
    heldout=True,
    note="step 150: a unit-pruning mask applied inverted sets every bottom.0 bias to -20",
)
def h49_dlrm_pruning_mask_inverted(ctx: Context) -> None:
    """At step 150 a structured-pruning utility disables the units of ``bottom.0`` flagged as
    unused by pushing their bias to -20 (so the ReLU after them never fires). Its mask is
    inverted (``bias[~keep] = -20`` with ``keep`` already the units to drop, and none flagged),
    so every unit gets the shift: the ReLU after ``bottom.0`` is dead for every input from then
    on, no gradient reaches it, Adagrad cannot bring it back, and the model loses the dense
    features for good (the loss steps up and stays up)."""
    gen = seeded(4912)
    model = DLRM()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def prune(step: int) -> None:
        if step == 150:
            drop = torch.zeros(32, dtype=torch.bool)  # the utility found nothing to prune
            with torch.no_grad():
                model.bottom[0].bias[~drop] = -20.0  # inverted mask: every unit

    fit(ctx, model, opt, _dlrm_batches(gen), 300, loss_fn=_bce, classifier=False, before=prune)
    (dense, _), _ = next(_dlrm_batches(torch.Generator().manual_seed(49), batch=512))
    with torch.no_grad():
        h = model.bottom[1](model.bottom[0](dense))
    ctx.check("every unit after bottom.0 dead", dead_fraction(h) == 1.0)
    ctx.check(
        "loss stepped up and stayed up", _mean(ctx.losses[-30:]) > 1.1 * _mean(ctx.losses[120:150])
    )


# -- 10. TabTransformer: one shard's rows in the wrong units ---------------------------------------

_CATS = (7, 12, 5, 9)


def _tab_batches(gen: torch.Generator, batch: int = 64):
    """Generated rows: 4 categorical columns and 5 standardised numeric ones; the label mixes a
    per-category effect, an interaction of two categories and the numeric columns."""
    truth = torch.Generator().manual_seed(4947)
    effects = [torch.randn(c, generator=truth) for c in _CATS]
    pair = torch.randn(_CATS[0], _CATS[1], generator=truth)
    wn = torch.randn(5, generator=truth)
    while True:
        cat = torch.stack([torch.randint(0, c, (batch,), generator=gen) for c in _CATS], 1)
        num = torch.randn(batch, 5, generator=gen)
        logit = sum(effects[i][cat[:, i]] for i in range(4)) + pair[cat[:, 0], cat[:, 1]]
        logit = logit + 0.7 * (num @ wn)
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).long()
        yield (cat, num), y


class TabTransformer(nn.Module):
    """Column embeddings of the categoricals through a transformer encoder; the numeric
    columns (standardised upstream by the data pipeline) joined before the MLP head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(c, dim) for c in _CATS)
        self.column = nn.Parameter(0.02 * torch.randn(len(_CATS), dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.mlp = nn.Sequential(nn.Linear(len(_CATS) * dim + 5, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, inputs) -> torch.Tensor:
        cat, num = inputs
        tokens = torch.stack([e(cat[:, i]) for i, e in enumerate(self.embeds)], 1) + self.column
        ctx = self.encoder(tokens).flatten(1)
        return self.mlp(torch.cat([ctx, num], 1))


@scenario(
    "h49_tabtransformer",
    "radam",
    "data_outlier",
    diverges=160,
    onset=160,
    heldout=True,
    note="step 160: 6 rows of one shard with numeric columns in raw units (x500)",
)
def h49_tabtransformer_raw_unit_rows(ctx: Context) -> None:
    """The numeric columns are standardised by the data pipeline, and the model takes them as
    they come. At step 160 one batch carries 6 rows from a shard written before the
    standardisation step (raw values, ~500x): their logits are huge and wrong, the loss spikes
    for that step, and the run recovers within some tens of steps (the next batches are
    clean)."""
    gen = seeded(4914)
    model = TabTransformer()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def alter(step: int, x, y):
        if step == 160:
            cat, num = x
            num = num.clone()
            num[:6] = 500.0 * num[:6].abs() + 300.0
            x = (cat, num)
        return x, y

    fit(ctx, model, opt, _tab_batches(gen), 260, alter=alter)
    pre = _mean(ctx.losses[140:160])
    ctx.check("loss spiked 5x at step 160", ctx.losses[160] > 5 * max(ctx.losses[150:160]))
    ctx.check("recovered to within 10% of the pre-spike loss", _mean(ctx.losses[-20:]) < 1.1 * pre)


# -- 11. capsule network: squash without an epsilon meets a blank scan ---------------------------


class ContrastStretch(nn.Module):
    """Per-image contrast stretch to [0, 1]: (x - min) / (max - min), no epsilon."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.amin(dim=1, keepdim=True)
        hi = x.amax(dim=1, keepdim=True)
        return (x - lo) / (hi - lo)


def _squash(s: torch.Tensor) -> torch.Tensor:
    n2 = s.pow(2).sum(-1, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-9)


class PrimaryCaps(nn.Module):
    """A convolution cut into 8-d capsules, squashed."""

    def __init__(self, channels: int = 16, caps: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, caps * dim, 3, stride=2, padding=1)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv(x)  # (b, caps*dim, 4, 4)
        b = s.shape[0]
        s = s.reshape(b, -1, self.dim, 16).transpose(2, 3).reshape(b, -1, self.dim)
        return _squash(s)


class CapsNet(nn.Module):
    """Contrast stretch -> conv -> primary capsules -> digit capsules by 3 iterations of
    dynamic routing; the class score is the digit capsule's length (Sabour et al. 2017)."""

    def __init__(self, channels: int = 16, caps: int = 2, dim: int = 8, out_dim: int = 8) -> None:
        super().__init__()
        self.stretch = ContrastStretch()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.primary = PrimaryCaps(channels, caps, dim)
        self.route_weights = nn.Parameter(0.1 * torch.randn(caps * 16, 10, out_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stretch(x).reshape(-1, 1, 8, 8)
        u = self.primary(F.relu(self.conv1(x)))
        u_hat = torch.einsum("icod,bid->bico", self.route_weights, u)  # (b, in, 10, out)
        logits = torch.zeros(u_hat.shape[:3])
        for it in range(3):
            v = _squash((logits.softmax(dim=2)[..., None] * u_hat).sum(1))
            if it < 2:
                logits = logits + (u_hat * v[:, None]).sum(-1)
        return v.norm(dim=-1)


def _margin_loss(lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = F.one_hot(y, 10).float()
    loss = t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return loss.sum(1).mean()


@scenario(
    "h49_capsnet_routing",
    "sg_adabelief",
    "nonfinite",
    where="stretch",
    diverges=140,
    onset=140,
    heldout=True,
    note="step 140: one blank (all-zero) scan; the contrast stretch without epsilon gives 0/0",
)
def h49_capsnet_blank_scan(ctx: Context) -> None:
    """Each scan is contrast-stretched to [0, 1] by its own min and max, with no epsilon for
    a flat image. At step 140 the batch holds one blank scan (the scanner returned an empty
    page): max - min = 0 and ``stretch`` produces 0/0 = NaN for it. The margin loss is NaN, the
    backward spreads NaN into every weight, and the run never comes back."""
    gen = seeded(4915)
    model = CapsNet()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    seen: list[bool] = []
    model.stretch.register_forward_hook(
        lambda m, i, o: seen.append(
            bool(torch.isfinite(i[0]).all() and not torch.isfinite(o).all())
        )
    )

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = x.clone()
            x[7] = 0.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 170, loss_fn=_margin_loss, alter=alter)
    ctx.check(
        "loss fell before the blank scan", _mean(ctx.losses[120:140]) < 0.7 * _mean(ctx.losses[:5])
    )
    ctx.check(
        "finite until 140, NaN from 140",
        all(map(_finite, ctx.losses[:140])) and not _finite(ctx.losses[140]),
    )
    ctx.check("stretch turned finite input into NaN at 140", seen[140] and not any(seen[:140]))


# -- 12. wide & deep under fp16 autocast: a raw money column overflows the deep tower -----------


def _account_batches(gen: torch.Generator, raw_balance: bool, business_from: int, batch: int = 128):
    """Generated account rows: 4 standardised numeric columns, an account balance in dollars
    (retail accounts ~ hundreds to thousands; from ``business_from`` on, a quarter of each batch
    are business accounts ~ 1e5), a region (20) and a product (15); label: churn. With
    ``raw_balance`` False the balance is log1p-standardised like the other columns."""
    truth = torch.Generator().manual_seed(4946)
    w = torch.randn(4, generator=truth)
    region = torch.randn(20, generator=truth)
    cross = 0.8 * torch.randn(20, 15, generator=truth)
    step = 0
    while True:
        num = torch.randn(batch, 4, generator=gen)
        log_bal = 6.5 + 0.8 * torch.randn(batch, generator=gen)
        if step >= business_from:
            log_bal[: batch // 4] = 11.5 + 0.4 * torch.randn(batch // 4, generator=gen)
        reg = torch.randint(0, 20, (batch,), generator=gen)
        prod = torch.randint(0, 15, (batch,), generator=gen)
        logit = num @ w + region[reg] + cross[reg, prod] - 0.6 * (log_bal - 7.0)
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        bal = log_bal.exp() if raw_balance else (log_bal - 7.0) / 1.5
        step += 1
        yield (torch.cat([num, bal[:, None]], 1), reg, prod), y


class WideDeep(nn.Module):
    """Wide part: one weight per region x product cross; deep part: numeric columns and
    region / product embeddings through an MLP; the two logits are summed."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Embedding(20 * 15, 1)
        nn.init.zeros_(self.wide.weight)
        self.region = nn.Embedding(20, 8)
        self.product = nn.Embedding(15, 8)
        self.deep = nn.Sequential(
            nn.Linear(5 + 16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, inputs) -> torch.Tensor:
        num, reg, prod = inputs
        deep_in = torch.cat([num, self.region(reg), self.product(prod)], 1)
        return (self.wide(reg * 15 + prod) + self.deep(deep_in)).squeeze(-1)


@scenario(
    "h49_wide_deep_amp",
    "adamax",
    "amp_overflow",
    where="deep.0",
    diverges=150,
    onset=150,
    heldout=True,
    note="fp16 autocast; raw dollar balance column; business accounts (~1e5) from step 150",
)
def h49_wide_deep_raw_balance_fp16(ctx: Context) -> None:
    """The balance column misses the log1p-standardisation the other columns get and enters
    the deep tower in dollars. Under fp16 autocast that is fine for retail accounts (hundreds
    to thousands), but from step 150 a quarter of each batch are business accounts with
    balances around 1e5, beyond fp16's 65504: ``deep.0`` (the first Linear, run in fp16)
    produces inf, the logits and the loss are NaN at every step from then on, and the
    GradScaler skips every step and keeps halving its scale. In float32 the same batches give a
    finite loss."""
    gen = seeded(4916)
    model = WideDeep()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    overflowed: list[bool] = []
    model.deep[0].register_forward_hook(
        lambda m, i, o: overflowed.append(bool(torch.isinf(o).any()))
    )
    fit(
        ctx,
        model,
        opt,
        _account_batches(gen, True, 151),
        200,
        loss_fn=_bce,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    x, y = next(_account_batches(torch.Generator().manual_seed(49), True, 0))
    with torch.no_grad():
        fp32 = float(_bce(model(x), y))
    bad = _first_nonfinite(ctx.losses)
    ctx.check(
        "loss fell under fp16 before step 150",
        _mean(ctx.losses[130:150]) < 0.9 * _mean(ctx.losses[:5]),
    )
    ctx.check("deep.0 overflowed first at 150", overflowed[150] and not any(overflowed[:150]))
    ctx.check("loss non-finite from 150", bad == 150 and not any(map(_finite, ctx.losses[150:])))
    ctx.check("the scaler kept halving", ctx.scales[-1] < ctx.scales[149] / 1000)
    ctx.check("the same kind of batch is finite in float32", _finite(fp32))


@scenario(
    "h49_wide_deep_amp",
    "adamw",
    "healthy",
    heldout=True,
    note="fp16 autocast; balance log1p-standardised; business accounts from step 150",
)
def h49_wide_deep_amp_healthy(ctx: Context) -> None:
    """The same wide-and-deep model and data under fp16 autocast with a GradScaler, the balance
    standardised like the other columns: the business accounts from step 150 are harmless."""
    gen = seeded(4917)
    model = WideDeep()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    fit(
        ctx,
        model,
        opt,
        _account_batches(gen, False, 151),
        250,
        loss_fn=_bce,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.9 * _mean(ctx.losses[:5]))
    ctx.check("all losses finite", all(map(_finite, ctx.losses)))
