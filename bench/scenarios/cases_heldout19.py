"""Held-out set 19 (``h19_``): twelve induced instabilities and four healthy controls.

Families: Hugging Face Blenderbot-small (encoder-decoder), a Nystromformer classifier, a Dinov2
image classifier, a WavLM audio classifier on generated tones and a Mamba2 causal LM, all from
configs; a CLIP-style two-tower model with a learnt temperature, DINO-style self-distillation
(centering + sharpening, EMA teacher), ArcFace metric learning on digits, a SASRec-style
sequential recommender, a Fourier neural operator on a generated heat equation, a ConvLSTM
forecaster on generated frames and a Hamiltonian neural network on generated oscillators.
Optimizers: SGD, momentum, Nesterov, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop and
steadygrad.optim's Lion and AdaBelief.

Written without reading ``steadygrad/diagnose/detectors/``, ``diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while it was
written: each scenario was adjusted, with a stand-in context that attaches nothing, only until
its own checks held (healthy ones: until they trained normally).
"""

from __future__ import annotations

import copy
import math
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    MLP,
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- Hugging Face Blenderbot-small: attention logits grow -----------------------------------------


def _blenderbot():
    from transformers import BlenderbotSmallConfig, BlenderbotSmallForConditionalGeneration

    config = BlenderbotSmallConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return BlenderbotSmallForConditionalGeneration(config)


def _reverse_batches(gen: torch.Generator, batch: int = 16, length: int = 12):
    """Copy a random token string in reverse: source, decoder input, target."""
    while True:
        src = torch.randint(3, 64, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec = torch.cat([torch.ones(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec), tgt


def _max_attention_logit(model: nn.Module, attn: nn.Module, run) -> float:
    """The largest |q.k| / sqrt(d) of ``attn`` (a BART-style attention) on one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach())),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach())),
    ]
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    heads = attn.num_heads if hasattr(attn, "num_heads") else 2
    b, t, d = seen["q"].shape
    q = seen["q"].reshape(b, t, heads, -1).transpose(1, 2)
    k = seen["k"].reshape(b, -1, heads, d // heads).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(d // heads))


@scenario(
    "hf_blenderbot_small",
    "adamw",
    "attention_logit_growth",
    where=("model.encoder.layers.0.self_attn", "model.decoder.layers.0.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections matched by a param-group filter meant for new layers: 30x the LR",
)
def h19_blenderbot_qk_group_lr(ctx: Context) -> None:
    """A fine-tuning recipe gives "new" modules 30x the learning rate and no weight decay; its
    name filter ("q_proj"/"k_proj") matches every query and key projection. The query and key
    weights grow step after step and so do the attention logits."""
    gen = seeded(1901)
    model = _blenderbot()
    fast = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": fast, "lr": 3e-2, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=0.01,
    )
    batches = _reverse_batches(gen)
    (src, dec), _ = next(_reverse_batches(torch.Generator().manual_seed(7)))
    enc_attn = model.model.encoder.layers[0].self_attn
    dec_attn = model.model.decoder.layers[0].self_attn

    def probe() -> tuple[float, float]:
        def run():
            return model(input_ids=src, decoder_input_ids=dec)

        return (
            _max_attention_logit(model, enc_attn, run),
            _max_attention_logit(model, dec_attn, run),
        )

    start = probe()
    fit(
        ctx,
        model,
        opt,
        batches,
        300,
        forward=lambda m, x: m(input_ids=x[0], decoder_input_ids=x[1]).logits,
        loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        classifier=False,
    )
    end = probe()
    ctx.check("encoder attention logits grew 10x", end[0] > 10 * start[0])
    ctx.check("decoder self-attention logits grew 10x", end[1] > 10 * start[1])


# -- Hugging Face Nystromformer: output logits diverge --------------------------------------------


def _nystromformer():
    from transformers import NystromformerConfig, NystromformerForSequenceClassification

    config = NystromformerConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        segment_means_seq_len=16,
        num_landmarks=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return NystromformerForSequenceClassification(config)


@scenario(
    "hf_nystromformer",
    "adamax",
    "output_logit_divergence",
    where=("classifier.out_proj",),
    diverges=None,
    heldout=True,
    onset=80,
    note="a z-loss written without its square: log Z is pushed down without bound",
)
def h19_nystromformer_zloss_no_square(ctx: Context) -> None:
    """From step 80 a z-loss (PaLM: 1e-4 * log(Z)^2, to keep log Z near 0) is switched on,
    written as ``0.01 * logsumexp(logits).sum()``: without the square (and summed, not averaged) it rewards an ever smaller
    log Z, and since cross-entropy cannot see a shift of all logits, the output logits drift
    down together, step after step, while the loss looks fine."""
    gen = seeded(1902)
    model = _nystromformer()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    probe_x, _ = next(bert_batches(torch.Generator().manual_seed(5), batch=64))
    last: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = m(x).logits
        return last["logits"]

    def z_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 80:
            return loss
        return loss + 0.01 * torch.logsumexp(last["logits"].float(), dim=-1).sum()

    def mean_logit() -> float:
        with torch.no_grad():
            return float(model(probe_x).logits.mean())

    mid: list[float] = []

    def before(step: int) -> None:
        if step == 80:
            mid.append(mean_logit())

    fit(ctx, model, opt, bert_batches(gen), 320, forward=forward, extra_loss=z_loss, before=before)
    end = mean_logit()
    ctx.check("logits near 0 at step 80", abs(mid[0]) < 2)
    ctx.check("logits drifted below -10", end < -10)
    ctx.check("loss still fine", _median(ctx.losses[-10:]) < 0.6)


# -- Hugging Face Dinov2: a block frozen by a layer-wise LR-decay bug ----------------------------


def _dinov2():
    from transformers import Dinov2Config, Dinov2ForImageClassification

    config = Dinov2Config(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return Dinov2ForImageClassification(config)


_DINO_BLOCK0 = "dinov2.encoder.layer.0"


@scenario(
    "hf_dinov2",
    "radam",
    "update_ratio_out_of_range",
    where=(
        _DINO_BLOCK0,
        f"{_DINO_BLOCK0}.attention.q_proj",
        f"{_DINO_BLOCK0}.attention.k_proj",
        f"{_DINO_BLOCK0}.attention.v_proj",
        f"{_DINO_BLOCK0}.attention.o_proj",
        f"{_DINO_BLOCK0}.mlp.fc1",
        f"{_DINO_BLOCK0}.mlp.fc2",
    ),
    diverges=None,
    heldout=True,
    note="layer-wise LR decay written with // : block 0's scale is 0",
)
def h19_dinov2_layer_decay_floor(ctx: Context) -> None:
    """Layer-wise learning-rate decay for fine-tuning, its scale written ``(i + 1) // depth``
    (meant ``/``): block 0 gets learning rate 0 and never moves; the rest trains."""
    gen = seeded(1903)
    model = _dinov2()
    depth = len(model.dinov2.encoder.layer)
    groups = []
    for i, block in enumerate(model.dinov2.encoder.layer):
        groups.append({"params": list(block.parameters()), "lr": 2e-3 * ((i + 1) // depth)})
    inblocks = {id(p) for g in groups for p in g["params"]}
    groups.append({"params": [p for p in model.parameters() if id(p) not in inblocks]})
    opt = torch.optim.RAdam(groups, lr=2e-3)
    before = copy.deepcopy(model.dinov2.encoder.layer[0].state_dict())
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        200,
        forward=lambda m, x: m(x.reshape(-1, 1, 8, 8)).logits,
    )
    after = model.dinov2.encoder.layer[0].state_dict()
    ctx.check("block 0 unchanged", all(torch.equal(before[k], after[k]) for k in before))
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.6 * _median(ctx.losses[:10]))


# -- Hugging Face WavLM: Adam's second moment poisoned by one giant gradient ----------------------


def _wavlm():
    from transformers import WavLMConfig, WavLMForSequenceClassification

    config = WavLMConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        num_labels=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        classifier_proj_size=16,
        num_buckets=32,
        max_bucket_distance=64,
    )
    return WavLMForSequenceClassification(config)


def _tone_batches(gen: torch.Generator, batch: int = 16, samples: int = 800):
    """Four classes of noisy tones (different pitches), random phase and loudness."""
    freqs = torch.tensor([0.02, 0.045, 0.08, 0.13])
    t = torch.arange(samples, dtype=torch.float32)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.3 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(2 * math.pi * freqs[y][:, None] * t + phase)
        yield x + 0.1 * torch.randn(batch, samples, generator=gen), y


@scenario(
    "hf_wavlm",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=80,
    note="one step's loss summed over 1000x (a reduction bug on a resumed step)",
)
def h19_wavlm_sum_reduction_step(ctx: Context) -> None:
    """On the step after a resume (step 80) the loss is taken with a reduction that multiplies
    it by 1000: one giant gradient fills Adam's second moment, which forgets over ~1000 steps,
    and the updates stay several times smaller long after the spike's momentum has gone."""
    gen = seeded(1904)
    model = _wavlm()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    snaps: dict[int, torch.Tensor] = {}

    def track(step: int) -> None:
        if step in (30, 75, 130, 175):
            snaps[step] = _flat(model)

    fit(
        ctx,
        model,
        opt,
        _tone_batches(gen),
        180,
        forward=lambda m, x: m(x).logits,
        before=track,
        extra_loss=lambda step, loss: loss * 1e3 if step == 80 else loss,
    )
    moved_before = float((snaps[75] - snaps[30]).norm())
    moved_after = float((snaps[175] - snaps[130]).norm())
    ctx.check("updates 3x smaller after the spike", moved_after < moved_before / 3)


# -- Hugging Face Mamba2: a slow divergence from a corrupt data shard -----------------------------


def _mamba2():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = Mamba2Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=4,
        head_dim=16,
        expand=2,
        n_groups=1,
        state_size=16,
        chunk_size=32,
        conv_kernel=4,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Mamba2ForCausalLM(config)


@scenario(
    "hf_mamba2",
    "nadam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=150,
    note="a data mixture that draws more and more from a shard of scrambled bytes",
)
def h19_mamba2_scrambled_shard(ctx: Context) -> None:
    """From step 150 a mixture schedule meant for a new clean shard draws a growing share of
    each batch from a shard whose bytes were scrambled: the loss climbs slowly, step by step,
    with no mechanism in the model behind it."""
    gen = seeded(1905)
    model = _mamba2()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    clean = text_batches(gen, batch=16, length=32)
    noise = torch.Generator().manual_seed(19)

    def mixed():
        step = 0
        while True:
            x, y = next(clean)
            share = min(max(step - 150, 0) / 150, 1.0)
            rows = int(round(share * x.shape[0]))
            if rows:
                junk = torch.randint(0, 128, (rows, x.shape[1] + 1), generator=noise)
                x, y = x.clone(), y.clone()
                x[:rows], y[:rows] = junk[:, :-1], junk[:, 1:]
            step += 1
            yield x, y

    fit(
        ctx,
        model,
        opt,
        mixed(),
        330,
        forward=lambda m, x: m(x).logits,
        loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        classifier=False,
    )
    best = min(_median(ctx.losses[t - 5 : t]) for t in range(5, 151))
    last = _median(ctx.losses[-10:])
    ctx.check("loss climbed from its best", last > max(2 * best, best + 1.0))
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- CLIP-style two-tower with a learnt temperature: softmax collapse -----------------------------


class Similarity(nn.Module):
    """Cosine similarities scaled by a learnt temperature (CLIP's logit scale)."""

    def __init__(self, clamp: float | None) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.clamp = clamp

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.exp()
        if self.clamp is not None:
            scale = scale.clamp(max=self.clamp)
        return scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


class TwoTower(nn.Module):
    def __init__(self, clamp: float | None) -> None:
        super().__init__()
        self.image = MLP([64, 96, 32])
        self.text = MLP([24, 96, 32])
        self.similarity = Similarity(clamp)

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.similarity(self.image(pair[0]), self.text(pair[1]))


def _paired_digits(gen: torch.Generator, n: int = 320):
    """Digits paired with a noisy 'caption' vector: a fixed random projection of the image."""
    x, _ = digits()
    x = x[:n]
    proj = torch.randn(64, 24, generator=gen) / 8
    cap = torch.tanh(x @ proj * 3) + 0.05 * torch.randn(n, 24, generator=gen)
    return x, cap


def _pair_batches(gen: torch.Generator, x: torch.Tensor, cap: torch.Tensor, batch: int = 64):
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            yield (x[idx], cap[idx]), torch.arange(batch)


def _clip_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2


@scenario(
    "clip_two_tower",
    "adam",
    "softmax_collapse",
    where=("similarity",),
    diverges=None,
    heldout=True,
    note="CLIP's logit scale left unclamped on a small paired set",
)
def h19_clip_unclamped_scale(ctx: Context) -> None:
    """The learnt logit scale is not clamped (CLIP caps it at 100), sits in a group of its own
    with a 20x learning rate (scalars "train slowly"), and the paired set is small:
    the scale keeps climbing and the float32 softmax of a third of the rows rounds to exactly one-hot."""
    gen = seeded(1906)
    x, cap = _paired_digits(gen)
    model = TwoTower(clamp=None)
    towers = [p for n, p in model.named_parameters() if not n.startswith("similarity.")]
    opt = torch.optim.Adam(
        [{"params": towers}, {"params": model.similarity.parameters(), "lr": 0.2}], lr=1e-2
    )
    fit(ctx, model, opt, _pair_batches(gen, x, cap), 400, loss_fn=_clip_loss, classifier=True)
    with torch.no_grad():
        logits = model((x[:64], cap[:64]))
        share = collapsed_fraction(logits, torch.arange(64))
        scale = float(model.similarity.log_scale.exp())
    ctx.check("a quarter of the rows collapsed", share > 0.25)
    ctx.check("scale far above CLIP's cap of 100", scale > 100)


# -- DINO-style self-distillation: an activation penalty kills the head's units -------------------


class DinoNet(nn.Module):
    def __init__(self, prototypes: int = 32) -> None:
        super().__init__()
        self.backbone = MLP([64, 128, 64])
        self.head = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, prototypes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Dino(nn.Module):
    """Student and EMA teacher (the teacher takes no gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.student = DinoNet()
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(32))

    @torch.no_grad()
    def follow(self, momentum: float = 0.996) -> None:
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def _views(gen: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """A cheap augmentation: a random shift by one pixel plus noise."""
    img = x.reshape(-1, 8, 8)
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    img = torch.roll(img, shifts=(dx, dy), dims=(1, 2))
    return (img + 0.1 * torch.randn(img.shape, generator=gen)).reshape(-1, 64)


def _dino_loss(model: Dino, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = [model.student(v) for v in (a, b)]
    with torch.no_grad():
        t = [model.teacher(v) for v in (a, b)]
        targets = [F.softmax((z - model.center) / 0.04, dim=-1) for z in t]
    loss = sum(
        -(targets[i] * F.log_softmax(s[j] / 0.1, dim=-1)).sum(-1).mean()
        for i in range(2)
        for j in range(2)
        if i != j
    )
    return loss / 2, torch.cat(t)


@scenario(
    "dino_self_distillation",
    "adamw",
    "loss_of_plasticity",
    where=("student.backbone.0", "student.backbone.1"),
    diverges=None,
    heldout=True,
    onset=100,
    note="a resume loads the first layer's biases from the wrong checkpoint key",
)
def h19_dino_bad_bias_resume(ctx: Context) -> None:
    """At step 100 a resume from a checkpoint with renamed keys fills the student backbone's
    first-layer biases with the input standardisation's offsets (-mean/std, about -25): every
    ReLU unit after that layer is dead from then on, and nothing trains it back."""
    gen = seeded(1907)
    model = Dino()
    opt = torch.optim.AdamW(model.student.parameters(), lr=5e-4, weight_decay=0.04)
    batches = digit_batches(gen, 64)
    probe_x, _ = next(digit_batches(torch.Generator().manual_seed(3), 256))
    first = model.student.backbone[0]

    def dead_now() -> float:
        with torch.no_grad():
            return dead_fraction(model.student.backbone[1](first(probe_x)))

    ctx.attach(model, opt)
    early = None
    for step in range(240):
        if step == 100:
            early = dead_now()
            with torch.no_grad():
                first.bias.fill_(-25.0)
        x, _ = next(batches)
        loss, t = _dino_loss(model, _views(gen, x), _views(gen, x))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        model.follow()
        with torch.no_grad():
            model.center.mul_(0.9).add_(t.mean(0), alpha=0.1)
    late = dead_now()
    ctx.check("first layer alive before the resume", early is not None and early < 0.2)
    ctx.check("first layer all dead at the end", late == 1.0)


# -- ArcFace metric learning on digits -----------------------------------------------------------


class ArcFace(nn.Module):
    """An embedding net and an additive-angular-margin head (s=30, m=0.5), head in float32."""

    def __init__(self, classes: int = 10, dim: int = 32) -> None:
        super().__init__()
        self.embed = MLP([64, 128, dim])
        self.margin_head = nn.Linear(dim, classes, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)
        with torch.autocast("cpu", enabled=False):
            cos = F.normalize(e.float(), dim=-1) @ F.normalize(self.margin_head.weight, dim=-1).T
            sin = (1 - cos.pow(2)).clamp(min=1e-6).sqrt()
            with_margin = cos * math.cos(0.5) - sin * math.sin(0.5)
            onehot = F.one_hot(y, cos.shape[1]).bool()
            return 30.0 * torch.where(onehot, with_margin, cos)


def _arcface_run(ctx: Context, opt_name: str, steps: int, amp: bool, seed: int) -> None:
    gen = seeded(seed)
    model = ArcFace()
    if opt_name == "sgd_mom":
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25) if amp else None
    ctx.attach(model, opt, scaler=scaler)
    batches = digit_batches(gen, 64)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            logits = model(x, y)
        loss = F.cross_entropy(logits.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            loss.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "arcface_metric",
    "sgd_mom",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast, a GradScaler starting at 2**30 that grows every 25 steps",
)
def h19_arcface_fp16_scaler(ctx: Context) -> None:
    """float16 autocast on the embedding net with a loss scale started at 2**30 and grown every
    25 steps: the scaled gradients overflow now and then, the scaler skips those steps and
    lowers its scale, and training carries on normally."""
    _arcface_run(ctx, "sgd_mom", 200, amp=True, seed=1908)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.5 * _median(ctx.losses[:10]))
    ctx.check("finite throughout", all(_finite(ctx.losses)))


@scenario("arcface_metric", "sgd", "healthy", heldout=True)
def h19_healthy_arcface_sgd(ctx: Context) -> None:
    _arcface_run(ctx, "sgd", 300, amp=False, seed=1909)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.5 * _median(ctx.losses[:10]))


# -- SASRec-style sequential recommender: one empty history makes a NaN --------------------------


class HistoryPool(nn.Module):
    """A user's long-term profile: the mean of the embeddings of their past items (0 = none)."""

    def forward(self, emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keep = (items > 0).unsqueeze(-1).float()
        return (emb * keep).sum(1) / keep.sum(1)  # a new user has no history: 0 / 0


class SasBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return x + self.ff(self.ln2(x))


class SASRec(nn.Module):
    def __init__(self, items: int = 100, dim: int = 32, length: int = 12) -> None:
        super().__init__()
        self.items = nn.Embedding(items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(length, dim)
        self.history_pool = HistoryPool()
        self.blocks = nn.ModuleList(SasBlock(dim) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        with torch.no_grad():
            nn.init.normal_(self.items.weight, std=0.1)
            self.items.weight[0].zero_()

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seq, history = batch
        profile = self.history_pool(self.items(history), history)
        x = self.items(seq) + self.pos(torch.arange(seq.shape[1])) + profile[:, None]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.items.weight[1:].T  # scores for items 1..N (tied)


def _session_batches(gen: torch.Generator, batch: int = 32, length: int = 12, items: int = 100):
    """Users browse within one of ten item clusters, mostly in order; targets: the next item."""
    while True:
        cluster = torch.randint(0, 10, (batch, 1), generator=gen)
        start = torch.randint(0, 10, (batch, 1), generator=gen)
        jump = (torch.rand(batch, length + 1, generator=gen) < 0.2).long()
        offs = (start + torch.arange(length + 1) + jump.cumsum(1)) % 10
        seq = 1 + cluster * 10 + offs
        history = 1 + cluster * 10 + torch.randint(0, 10, (batch, 8), generator=gen)
        hide = torch.rand(batch, 8, generator=gen) < 0.3
        history = torch.where(hide, 0, history)
        history[:, 0] = 1 + cluster[:, 0] * 10  # every user so far has some history
        yield (seq[:, :-1], history), seq[:, 1:] - 1


def _rec_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1))


@scenario(
    "sasrec_recommender",
    "adam",
    "nonfinite",
    where="history_pool",
    diverges=170,
    heldout=True,
    onset=170,
    note="a new user with an empty history: the profile mean divides 0 by 0",
)
def h19_sasrec_empty_history(ctx: Context) -> None:
    """At step 170 a batch holds the first user with no long-term history: the profile's mean
    over no items is 0/0 = NaN, which reaches the loss and every weight."""
    gen = seeded(1910)
    model = SASRec()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x, y):
        if step == 170:
            seq, history = x
            history = history.clone()
            history[3] = 0
            x = (seq, history)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _session_batches(gen),
        200,
        loss_fn=_rec_loss,
        alter=alter,
        classifier=False,
    )
    finite = _finite(ctx.losses)
    ctx.check("finite until 170, not after", all(finite[:170]) and not any(finite[170:]))
    ctx.check("loss fell before", _median(ctx.losses[160:170]) < 0.7 * _median(ctx.losses[:10]))


@scenario("sasrec_recommender", "adagrad", "healthy", heldout=True)
def h19_healthy_sasrec_adagrad(ctx: Context) -> None:
    gen = seeded(1911)
    model = SASRec()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    fit(ctx, model, opt, _session_batches(gen), 220, loss_fn=_rec_loss, classifier=False)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:10]))


# -- Fourier neural operator on a generated heat equation ----------------------------------------


class SpectralConv(nn.Module):
    """Multiplies the lowest ``modes`` Fourier modes by learnt complex weights (real pairs)."""

    def __init__(self, width: int, modes: int) -> None:
        super().__init__()
        scale = 1 / width
        self.modes = modes
        self.w_re = nn.Parameter(scale * torch.randn(width, width, modes))
        self.w_im = nn.Parameter(scale * torch.randn(width, width, modes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = torch.fft.rfft(x, dim=-1)[..., : self.modes]
        w = torch.complex(self.w_re, self.w_im)
        out = torch.zeros(
            x.shape[0], x.shape[1], x.shape[-1] // 2 + 1, dtype=xf.dtype, device=x.device
        )
        out[..., : self.modes] = torch.einsum("bim,iom->bom", xf, w)
        return torch.fft.irfft(out, n=x.shape[-1], dim=-1)


class FNO(nn.Module):
    def __init__(self, width: int = 16, modes: int = 8, layers: int = 2) -> None:
        super().__init__()
        self.lift = nn.Conv1d(2, width, 1)
        self.spectral = nn.ModuleList(SpectralConv(width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in range(layers))
        self.project = nn.Sequential(nn.Conv1d(width, 32, 1), nn.GELU(), nn.Conv1d(32, 1, 1))

    def forward(self, u0: torch.Tensor) -> torch.Tensor:
        grid = torch.linspace(0, 1, u0.shape[-1]).expand(u0.shape[0], 1, -1)
        x = self.lift(torch.cat([u0[:, None], grid], 1))
        for spec, point in zip(self.spectral, self.pointwise, strict=True):
            x = F.gelu(spec(x) + point(x))
        return self.project(x)[:, 0]


def _heat_batches(gen: torch.Generator, batch: int = 32, n: int = 64, time: float = 0.02):
    """Random periodic initial states and the exact solution of u_t = u_xx at ``time``."""
    x = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    k = torch.arange(1, 9, dtype=torch.float32)
    decay = torch.exp(-(k**2) * time)
    while True:
        a = torch.randn(batch, 8, generator=gen) / k
        b = torch.randn(batch, 8, generator=gen) / k
        sin, cos = torch.sin(k[:, None] * x), torch.cos(k[:, None] * x)
        u0 = a @ sin + b @ cos
        yield u0, (a * decay) @ sin + (b * decay) @ cos


@scenario(
    "fourier_neural_operator",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=100,
    note="a linear warm-up to a peak learning rate ten times too high",
)
def h19_fno_warmup_peak(ctx: Context) -> None:
    """A linear warm-up over 300 steps to a peak learning rate copied from a recipe for a
    normalised loss: the loss falls while the rate is small, then the rate passes the stability
    limit and the loss blows up before the warm-up ends."""
    gen = seeded(1912)
    model = FNO()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    peak, warm = 0.6, 300

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(step + 1, warm) / warm

    fit(ctx, model, opt, _heat_batches(gen), 300, loss_fn=F.mse_loss, before=schedule)
    finite = [v if math.isfinite(v) else float("inf") for v in ctx.losses]
    ctx.check("loss fell at first", min(finite[:100]) < 0.5 * _median(finite[:5]))
    ctx.check("then blew up", max(finite[100:]) > 10 * _median(finite[:5]))


@scenario("fourier_neural_operator", "adam", "healthy", heldout=True)
def h19_healthy_fno_adam(ctx: Context) -> None:
    gen = seeded(1913)
    model = FNO()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, _heat_batches(gen), 250, loss_fn=F.mse_loss)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.2 * _median(ctx.losses[:10]))


# -- ConvLSTM forecaster on generated frames: gradients explode -----------------------------------


class ConvLSTMCell(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.input_conv = nn.Conv2d(1, 4 * channels, 3, padding=1)
        self.hidden_conv = nn.Conv2d(channels, 4 * channels, 3, padding=1, bias=False)
        self.channels = channels

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (self.input_conv(x) + self.hidden_conv(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMForecaster(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.cell = ConvLSTMCell(channels)
        self.readout = nn.Conv2d(channels, 1, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        h = frames.new_zeros(b, self.cell.channels, 8, 8)
        c = torch.zeros_like(h)
        for s in range(t):
            h, c = self.cell(frames[:, s : s + 1], (h, c))
        return self.readout(h)[:, 0]


def _blob_batches(gen: torch.Generator, batch: int = 16, frames: int = 10):
    """A Gaussian blob moving at a constant velocity on an 8x8 torus; predict the next frame."""
    grid = torch.arange(8, dtype=torch.float32)
    while True:
        pos = 8 * torch.rand(batch, 2, generator=gen)
        vel = torch.rand(batch, 2, generator=gen) - 0.5
        t = torch.arange(frames + 1, dtype=torch.float32)
        path = (pos[:, None] + vel[:, None] * t[None, :, None]) % 8
        dy = grid[None, None, :] - path[..., 0:1]
        dx = grid[None, None, :] - path[..., 1:2]
        dy, dx = (torch.remainder(d + 4, 8) - 4 for d in (dy, dx))
        img = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / 2)
        yield img[:, :frames], img[:, frames]


@scenario(
    "convlstm_forecaster",
    "rmsprop",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch of frames read from a corrupt file (raw 0..255 counts, not 0..1)",
)
def h19_convlstm_unscaled_batch(ctx: Context) -> None:
    """At step 150 one batch comes from a file stored as raw 8-bit counts that skipped the
    division by 255: the prediction error and the loss jump for that batch."""
    gen = seeded(1914)
    model = ConvLSTMForecaster()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step: int, x, y):
        if step == 150:
            x, y = x * 255.0, y * 255.0
        return x, y

    fit(ctx, model, opt, _blob_batches(gen), 230, loss_fn=F.mse_loss, alter=alter, classifier=False)
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))
    ctx.check("loss fell before", _median(ctx.losses[140:150]) < 0.5 * _median(ctx.losses[:10]))


# -- Hamiltonian neural network on generated oscillators -----------------------------------------


class HNN(nn.Module):
    """H(q, p) from an MLP; the vector field is (dH/dp, -dH/dq) by autograd."""

    def __init__(self, hidden: int = 64, act: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        self.energy = MLP([2, hidden, hidden, 1], act=act)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if not state.requires_grad:
            state = state.requires_grad_(True)
        h = self.energy(state).sum()
        dh = torch.autograd.grad(h, state, create_graph=True)[0]
        return torch.stack([dh[:, 1], -dh[:, 0]], 1)


def _oscillator_batches(gen: torch.Generator, batch: int = 64):
    """States of a pendulum (q, p) and their time derivatives (p, -sin q), with sensor noise."""
    while True:
        q = 2 * torch.rand(batch, generator=gen) - 1
        p = 2 * torch.rand(batch, generator=gen) - 1
        state = torch.stack([q, p], 1) * 1.5
        deriv = torch.stack([state[:, 1], -torch.sin(state[:, 0])], 1)
        yield state, deriv + 0.01 * torch.randn(batch, 2, generator=gen)


def _pendulum_path(state: torch.Tensor, dt: float, steps: int) -> torch.Tensor:
    """The true pendulum trajectory (fine leapfrog steps), one state per ``dt``."""
    q, p = state[:, 0].clone(), state[:, 1].clone()
    out = [state]
    fine = 20
    h = dt / fine
    for _ in range(steps):
        for _ in range(fine):
            p = p - 0.5 * h * torch.sin(q)
            q = q + h * p
            p = p - 0.5 * h * torch.sin(q)
        out.append(torch.stack([q, p], 1))
    return torch.stack(out, 1)


@scenario(
    "hamiltonian_nn",
    "sg_lion",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=60,
    note="rollouts with explicit Euler (not leapfrog) over a horizon that grows from step 60",
)
def h19_hnn_euler_rollout_horizon(ctx: Context) -> None:
    """The HNN is fitted to trajectories by rolling its vector field out with explicit Euler
    (meant: leapfrog), and from step 60 a curriculum lengthens the horizon by one step every
    three steps. Explicit Euler gains energy on every step of a Hamiltonian flow, so no
    Hamiltonian can follow the true paths over long horizons: the loss climbs with the horizon,
    with nothing in the model going wrong."""
    gen = seeded(1915)
    model = HNN()
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)
    dt = 0.5
    ctx.attach(model, opt)
    for step in range(240):
        horizon = 4 + max(step - 60, 0) // 3
        q = 3 * torch.rand(32, generator=gen) - 1.5
        p = 3 * torch.rand(32, generator=gen) - 1.5
        start = torch.stack([q, p], 1)
        truth = _pendulum_path(start, dt, horizon)
        state, path = start, [start]
        for _ in range(horizon):
            state = state + dt * model(state)
            path.append(state)
        loss = F.mse_loss(torch.stack(path, 1), truth)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    best = min(_median(ctx.losses[t - 5 : t]) for t in range(5, 61))
    last = _median(ctx.losses[-10:])
    ctx.check("loss climbed from its best", last > max(2 * best, best + 1.0))
    ctx.check("finite throughout", all(_finite(ctx.losses)))


@scenario("hamiltonian_nn", "sg_adabelief", "healthy", heldout=True)
def h19_healthy_hnn_adabelief(ctx: Context) -> None:
    gen = seeded(1916)
    model = HNN()
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3, fused=False)
    fit(ctx, model, opt, _oscillator_batches(gen), 250, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.2 * _median(ctx.losses[:10]))
