"""Held-out scenarios, set 85 (``h85_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face Dinov2-with-registers, MLCD and AIMv2 vision models and the Audio
Spectrogram Transformer and Speech2Text from configs (upsampled digits, generated spectrograms
and phone sequences), a PaiNN-style equivariant interatomic potential (energy + forces on
generated molecules), a cosFormer linear-attention LM, a memorizing transformer with a kNN
memory, a QuartzNet-style separable-conv CTC recogniser, a Deep Speech 2 style bidirectional
GRU with CTC, a Jasper-style residual conv stack (CTC), a MelGAN-style vocoder with a
multi-scale discriminator, classifier-free-guidance diffusion on digits, an MLP-Mixer on digits,
a MetaFormer with a pooling token mixer and a Gram-matrix texture network.

Optimizers: AdamW, NAdam, Adamax, Adam, RAdam, SGD, SGD with momentum, RMSprop, ASGD, Adagrad,
and steadygrad.optim's Lion, StableSPAM, AdEMAMix and AdaBelief.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)

# -- shared data ----------------------------------------------------------------------------------


def image_batches(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Digits upsampled to ``size`` x ``size`` single-channel images."""
    for x, y in digit_batches(gen, batch):
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=(size, size), mode="bilinear")
        yield img, y


def phone_batches(
    gen: torch.Generator,
    batch: int = 32,
    tokens: int = 4,
    frames: int = 8,
    bins: int = 16,
    vocab: int = 12,
    first: int = 1,
):
    """Generated "speech": ``tokens`` phones of ``frames`` frames each, phone k a spectral bump
    at bin k plus noise. Labels run ``first`` .. ``first + vocab - 2``; neighbours differ."""
    grid = torch.arange(bins, dtype=torch.float32)
    while True:
        lab = torch.empty(batch, tokens, dtype=torch.long)
        lab[:, 0] = torch.randint(0, vocab - 1, (batch,), generator=gen)
        for i in range(1, tokens):
            step = torch.randint(1, vocab - 1, (batch,), generator=gen)
            lab[:, i] = (lab[:, i - 1] + step) % (vocab - 1)
        centre = (lab.float() + 2.0) * (bins - 4) / vocab
        bump = torch.exp(-0.5 * (grid[None, None, :] - centre[..., None]) ** 2)
        amp = 0.7 + 0.6 * torch.rand(batch, tokens, 1, generator=gen)
        feats = (bump * amp).repeat_interleave(frames, dim=1)
        feats = feats + 0.15 * torch.randn(feats.shape, generator=gen)
        yield feats, lab + first


def chirp_batches(gen: torch.Generator, batch: int = 32, frames: int = 32, bins: int = 16):
    """Generated log-spectrograms of four sound classes: up-chirp, down-chirp, low and high
    steady tones (random start, slope and loudness)."""
    grid = torch.arange(bins, dtype=torch.float32)
    t = torch.linspace(0, 1, frames)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        start = 2 + 3 * torch.rand(batch, 1, generator=gen)
        slope = 6 + 4 * torch.rand(batch, 1, generator=gen)
        track = torch.where(
            (y == 0)[:, None],
            start + slope * t,
            torch.where(
                (y == 1)[:, None],
                bins - 3 - slope * t,
                torch.where((y == 2)[:, None], start + 0 * t, bins - start + 0 * t),
            ),
        )
        spec = torch.exp(-0.5 * (grid[None, None, :] - track[..., None]) ** 2)
        spec = spec * (0.5 + torch.rand(batch, 1, 1, generator=gen))
        yield spec + 0.1 * torch.randn(spec.shape, generator=gen), y


def ctc_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CTC over (B, T, V) logits, blank 0, every utterance full length."""
    logp = logits.float().log_softmax(-1).transpose(0, 1)
    b, t = logits.shape[0], logits.shape[1]
    return F.ctc_loss(
        logp,
        labels,
        torch.full((b,), t, dtype=torch.long),
        torch.full((b,), labels.shape[1], dtype=torch.long),
        zero_infinity=False,
    )


def first_nonfinite(model: nn.Module, run) -> str | None:
    """Name of the first module (in execution order) whose output has a NaN/Inf."""
    found: list[str] = []
    hooks = []
    for name, mod in model.named_modules():

        def hook(m, i, o, name=name):
            outs = o if isinstance(o, tuple) else (o,)
            for z in outs:
                if isinstance(z, torch.Tensor) and z.is_floating_point():
                    if not torch.isfinite(z).all() and not found:
                        found.append(name)

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None


# == Hugging Face models from configs =============================================================


class HFVisionCls(nn.Module):
    """A Hugging Face vision tower with a hand-written linear head on the mean token."""

    def __init__(self, backbone: nn.Module, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(pixel_values=x).last_hidden_state
        return self.head(h.mean(1))


def attention_stats(model: nn.Module, prefix: str, x: torch.Tensor, heads: int = 2):
    """Max |q.k/sqrt(d)| and mean attention entropy of the attention under ``prefix``."""
    got = {}
    att = model.get_submodule(prefix)
    hq = att.q_proj.register_forward_hook(lambda m, i, o: got.__setitem__("q", o))
    hk = att.k_proj.register_forward_hook(lambda m, i, o: got.__setitem__("k", o))
    with torch.no_grad():
        model(x)
    hq.remove()
    hk.remove()
    q, k = got["q"], got["k"]
    b, t, d = q.shape
    q = q.reshape(b, t, heads, -1).transpose(1, 2)
    k = k.reshape(b, t, heads, -1).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    p = logits.softmax(-1)
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1).mean()
    return float(logits.abs().max()), float(ent)


@scenario(
    "h85_hf_dinov2_registers_digits",
    "adamw",
    "attention_logit_growth",
    where=("backbone.encoder.layer.0.attention", "backbone.encoder.layer.1.attention"),
    diverges=None,
    heldout=True,
    note="q/k projections re-initialised with nn.init.normal_ (std 1 instead of 0.02) and a "
    "high LR with no weight decay: the pre-softmax logits keep growing, entropy collapses",
    onset=0,
)
def h85_dinov2_registers_qk_init(ctx: Context) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    gen = seeded(8501)
    cfg = Dinov2WithRegistersConfig(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_register_tokens=2,
    )
    model = HFVisionCls(Dinov2WithRegistersModel(cfg))
    for layer in model.backbone.encoder.layer:
        nn.init.normal_(layer.attention.q_proj.weight)  # the bug: std left at 1.0
        nn.init.normal_(layer.attention.k_proj.weight)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.0)
    batches = image_batches(gen)
    probe = next(batches)[0]
    names = ("backbone.encoder.layer.0.attention", "backbone.encoder.layer.1.attention")
    start = [attention_stats(model, n, probe) for n in names]
    fit(ctx, model, opt, batches, 300)
    end = [attention_stats(model, n, probe) for n in names]
    ctx.stats = {"start": start, "end": end}
    ctx.check("attention logits grew 2x in layer 0", end[0][0] > 2 * start[0][0])
    ctx.check("layer 0 attention entropy fell below 0.1 nats", end[0][1] < 0.1)


@scenario(
    "h85_hf_speech2text_phones",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="z-loss added with the wrong sign (rewards a large log Z): the decoder's output "
    "logits drift upward while cross-entropy looks fine",
    onset=0,
)
def h85_speech2text_zloss_sign(ctx: Context) -> None:
    from transformers import Speech2TextConfig, Speech2TextForConditionalGeneration

    gen = seeded(8502)
    cfg = Speech2TextConfig(
        vocab_size=16,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        input_feat_per_channel=16,
        num_conv_layers=1,
        conv_channels=32,
        conv_kernel_sizes=[5],
        max_source_positions=64,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    model = Speech2TextForConditionalGeneration(cfg)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = phone_batches(gen, tokens=4, frames=8, vocab=12, first=3)
    ctx.attach(model, opt)
    logz = []
    for _ in range(300):
        x, y = next(batches)
        labels = torch.cat([y, torch.full((y.shape[0], 1), 2)], 1)
        ctx.targets(labels)
        out = model(input_features=x, labels=labels)
        lz = out.logits.float().logsumexp(-1)
        total = out.loss - 2e-2 * (lz**2).mean()  # meant to be "+": a z-loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
        logz.append(float(lz.detach().mean()))
    ctx.stats = {"logz": (logz[0], logz[-1])}
    ctx.check("log Z grew over 5x and above 20", logz[-1] > 5 * abs(logz[0]) and logz[-1] > 20)
    ctx.check("cross-entropy finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "h85_hf_ast_chirp_classes",
    "adamax",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch at step 220 comes from a shard stored as linear power instead of log: "
    "feature values ~1000x the rest",
    onset=220,
)
def h85_ast_linear_power_shard(ctx: Context) -> None:
    from transformers import ASTConfig, ASTForAudioClassification

    gen = seeded(8503)
    cfg = ASTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        frequency_stride=8,
        time_stride=8,
        max_length=32,
        num_mel_bins=16,
        num_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ASTForAudioClassification(cfg)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 220:
            x = torch.exp(6.0 * x.clamp(-1, 2))  # un-logged power spectra
        return x, y

    fit(ctx, model, opt, chirp_batches(gen), 400, alter=alter, forward=lambda m, x: m(x).logits)
    before = sorted(ctx.losses[170:220])[25]
    ctx.check("trained before the bad batch", before < 0.7 * ctx.losses[0])
    ctx.check("loss spike at step 220", ctx.losses[220] > 5 * before)


class LSEPool(nn.Module):
    """Soft-max (log-sum-exp, temperature 0.25) token pooling written out by hand (exp, sum,
    log): in float16 the exp overflows once a projected feature passes ~2.7."""

    def __init__(self, dim: int = 32, out: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.proj(h)
        return 0.25 * torch.log(torch.exp(z / 0.25).sum(1))


class Aimv2LSE(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = LSEPool()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(pixel_values=x).last_hidden_state))


@scenario(
    "h85_hf_aimv2_lse_pool",
    "adamw",
    "amp_overflow",
    where="pool",
    diverges="auto",
    heldout=True,
    note="fp16 autocast with a GradScaler; a hand-written log-sum-exp pooling (exp then log) "
    "with temperature 0.25 overflows float16 once its projected features grow past ~2.7",
    onset=0,
)
def h85_aimv2_fp16_lse_pool(ctx: Context) -> None:
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    gen = seeded(8504)
    cfg = Aimv2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_channels=1,
        image_size=16,
        patch_size=4,
    )
    model = Aimv2LSE(Aimv2VisionModel(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=50)
    batches = image_batches(gen)
    probe = next(batches)[0]
    fit(ctx, model, opt, batches, 300, scaler=scaler, amp=True)

    def run():
        with torch.autocast("cpu", dtype=torch.float16):
            model(probe)

    bad = [i for i, v in enumerate(ctx.losses) if not math.isfinite(v)]
    ctx.stats = {"first_bad": bad[:3], "n_bad": len(bad), "min_scale": min(ctx.scales)}
    ctx.check("loss overflowed to inf under fp16", len(bad) > 0)
    ctx.check("the scaler kept skipping (scale fell below 1)", min(ctx.scales) < 1.0)
    ctx.check("first non-finite output is the pool", first_nonfinite(model, run) == "pool")


@scenario("h85_hf_mlcd_vision_digits", "radam", "healthy", where=(), heldout=True)
def h85_mlcd_healthy(ctx: Context) -> None:
    from transformers import MLCDVisionConfig, MLCDVisionModel

    gen = seeded(8505)
    cfg = MLCDVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_channels=1,
        image_size=16,
        patch_size=4,
    )
    model = HFVisionCls(MLCDVisionModel(cfg))
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, image_batches(gen), 400)
    ctx.check("loss fell by half", sum(ctx.losses[-30:]) / 30 < 0.5 * ctx.losses[0])
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# == PaiNN-style interatomic potential ============================================================


def molecule_batches(gen: torch.Generator, batch: int = 8, atoms: int = 5, bad_step: int = -1):
    """Random 5-atom clusters, Morse-potential energies (forces from autograd of the truth).
    At ``bad_step`` a conformer generator bug writes one atom twice (same position)."""
    step = 0
    while True:
        pos = torch.randn(batch, atoms, 3, generator=gen) * 1.1
        if step == bad_step:
            pos[3, 4] = pos[3, 3]
        pos.requires_grad_(True)
        r = (pos[:, :, None] - pos[:, None]).pow(2).sum(-1).add(1e-2).sqrt()
        mask = ~torch.eye(atoms, dtype=torch.bool)
        e = ((1 - torch.exp(-1.2 * (r - 1.5))) ** 2 - 1)[:, mask].sum(1) / 2
        (f,) = torch.autograd.grad(-e.sum(), pos)
        yield pos.detach(), e.detach(), f.detach()
        step += 1


class Geometry(nn.Module):
    """Pair distances and unit vectors (self-pairs masked; nothing guards coincident atoms)."""

    def forward(self, pos: torch.Tensor):
        rij = pos[:, None] - pos[:, :, None]  # (B, i, j, 3): j - i
        d = rij.norm(dim=-1)
        eye = torch.eye(pos.shape[1], dtype=pos.dtype)
        return d, rij / (d + eye)[..., None]  # self-pairs give 0/1


class PaiNNLayer(nn.Module):
    def __init__(self, f: int = 16, rbf: int = 8) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(f, f), nn.SiLU(), nn.Linear(f, 3 * f))
        self.w = nn.Linear(rbf, 3 * f)
        self.u = nn.Linear(f, f, bias=False)
        self.v = nn.Linear(f, f, bias=False)
        self.upd = nn.Sequential(nn.Linear(2 * f, f), nn.SiLU(), nn.Linear(f, 3 * f))

    def forward(self, s, vec, rbf, unit, cut):
        f = s.shape[-1]
        x = self.phi(s)[:, None] * self.w(rbf) * cut[..., None]  # (B, i, j, 3f)
        a, b, c = x.split(f, -1)
        s = s + a.sum(2)
        vec = vec + (b[..., None, :] * vec[:, None]).sum(2)
        vec = vec + (c[..., None, :] * unit[..., :, None]).sum(2)
        uv, vv = self.u(vec), self.v(vec)
        norm = (vv.pow(2).sum(-2) + 1e-8).sqrt()
        a2, b2, c2 = self.upd(torch.cat([s, norm], -1)).split(f, -1)
        s = s + b2 * (uv * vv).sum(-2) + c2
        return s, vec + a2[..., None, :] * uv


class PaiNN(nn.Module):
    def __init__(self, f: int = 16, rbf: int = 8, cutoff: float = 5.0) -> None:
        super().__init__()
        self.geom = Geometry()
        self.embed = nn.Parameter(torch.randn(f) * 0.5)
        self.centres = nn.Parameter(torch.linspace(0.3, cutoff, rbf), requires_grad=False)
        self.cutoff = cutoff
        self.layers = nn.ModuleList(PaiNNLayer(f, rbf) for _ in range(2))
        self.readout = nn.Sequential(nn.Linear(f, f), nn.SiLU(), nn.Linear(f, 1))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        b, n, _ = pos.shape
        d, unit = self.geom(pos)
        eye = torch.eye(n, dtype=torch.bool)
        cut = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1) * (d < self.cutoff)
        cut = cut.masked_fill(eye, 0.0)
        rbf = torch.exp(-2.0 * (d[..., None] - self.centres) ** 2)
        s = self.embed.expand(b, n, -1)
        vec = torch.zeros(b, n, 3, s.shape[-1])
        for layer in self.layers:
            s, vec = layer(s, vec, rbf, unit, cut)
        return self.readout(s).squeeze(-1).sum(1)


@scenario(
    "h85_painn_morse_clusters",
    "sg_stablespam",
    "nonfinite",
    where="geom",
    diverges=140,
    heldout=True,
    note="energy + forces training; at step 140 a batch holds two atoms at the same position "
    "and the geometry's unit vector r/|r| is 0/0",
    onset=140,
)
def h85_painn_coincident_atoms(ctx: Context) -> None:
    from steadygrad.optim import StableSPAM

    gen = seeded(8506)
    model = PaiNN()
    opt = StableSPAM([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    batches = molecule_batches(gen, bad_step=140)
    ctx.attach(model, opt)
    bad_pos = None
    for step in range(180):
        pos, e, f = next(batches)
        if step == 140:
            bad_pos = pos.clone()
        pos = pos.clone().requires_grad_(True)
        pred = model(pos)
        (force,) = torch.autograd.grad(-pred.sum(), pos, create_graph=True)
        loss = F.mse_loss(pred, e) / 10 + F.mse_loss(force, f)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("trained before the bad batch", sum(ctx.losses[120:140]) < 14 * ctx.losses[0])
    ctx.check("finite until 140, not at 140", all(finite[:140]) and not finite[140])
    torch.manual_seed(0)
    fresh = PaiNN()
    ctx.check(
        "first non-finite output on that batch is geom (fresh weights)",
        first_nonfinite(fresh, lambda: fresh(bad_pos)) == "geom",
    )


# == cosFormer linear-attention LM ================================================================


class CosFormerAttention(nn.Module):
    """Causal cosFormer attention: ReLU feature maps with cos/sin position re-weighting,
    computed with cumulative sums (linear in the sequence length)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        q, k = F.relu(q), F.relu(k)
        ang = math.pi / 2 * torch.arange(1, t + 1, dtype=x.dtype) / t
        cos, sin = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
        out = 0
        den = 0
        for qa, ka in ((q * cos, k * cos), (q * sin, k * sin)):
            kv = torch.cumsum(ka[..., :, None] * v[..., None, :], dim=2)  # (b,h,t,dk,dv)
            out = out + (qa[..., None] * kv).sum(-2)
            den = den + (qa * torch.cumsum(ka, dim=2)).sum(-1, keepdim=True)
        y = out / (den + 1e-4)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class CosBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CosFormerAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CosFormerLM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(CosBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def lm_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    "h85_cosformer_bytes_lm",
    "sg_lion",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="cosine schedule with a warm restart: at step 260 the LR jumps from ~1e-5 straight back "
    "to 5e-3 (eta_max typed 5x the 1e-3 peak) with no re-warm-up",
    onset=260,
)
def h85_cosformer_lr_restart(ctx: Context) -> None:
    from steadygrad.optim import Lion

    gen = seeded(8507)
    model = CosFormerLM()
    opt = Lion(model.parameters(), lr=1e-3, weight_decay=0.0)

    def before(step: int) -> None:
        if step < 260:
            lr = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * step / 260))
        else:
            lr = 5e-3  # the warm restart: eta_max typed 5e-3 (meant 1e-3), no warm-up
        for g in opt.param_groups:
            g["lr"] = lr

    fit(ctx, model, opt, text_batches(gen), 340, loss_fn=lm_ce, before=before)
    calm = sum(ctx.losses[230:260]) / 30
    ctx.stats = {"calm": calm, "after": max(ctx.losses[260:290])}
    ctx.check("trained before the restart", calm < 0.7 * ctx.losses[0])
    ctx.check("loss jumped 10% after the restart", max(ctx.losses[260:290]) > 1.1 * calm)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# == memorizing transformer with a kNN memory =====================================================


class KNNMemoryAttention(nn.Module):
    """Local causal attention plus top-k retrieval from a memory of past (key, value) pairs
    (detached, FIFO), mixed by a learned per-head gate (Wu et al. 2022)."""

    def __init__(self, dim: int, heads: int = 2, size: int = 1024, topk: int = 8) -> None:
        super().__init__()
        self.heads, self.topk, self.size = heads, topk, size
        self.use_memory = size > 0
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(heads, 1, 1))
        self.register_buffer("mem_k", torch.zeros(0, heads, dim // heads))
        self.register_buffer("mem_v", torch.zeros(0, heads, dim // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        local = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.use_memory and len(self.mem_k) >= self.topk:
            mk = self.mem_k.transpose(0, 1)  # (h, M, dh)
            mv = self.mem_v.transpose(0, 1)
            sim = torch.einsum("bhtd,hmd->bhtm", q, mk) / math.sqrt(q.shape[-1])
            top, idx = sim.topk(self.topk, dim=-1)
            w = top.softmax(-1)
            vals = mv[torch.arange(self.heads)[None, :, None, None], idx]  # (b,h,t,k,dh)
            mem = (w[..., None] * vals).sum(-2)
            g = torch.sigmoid(self.gate)
            local = g * mem + (1 - g) * local
        with torch.no_grad():
            if not self.use_memory:
                return self.proj(local.transpose(1, 2).reshape(b, t, d))
            nk = k.transpose(1, 2).reshape(-1, self.heads, k.shape[-1])
            nv = v.transpose(1, 2).reshape(-1, self.heads, v.shape[-1])
            self.mem_k = torch.cat([self.mem_k, nk])[-self.size :]
            self.mem_v = torch.cat([self.mem_v, nv])[-self.size :]
        return self.proj(local.transpose(1, 2).reshape(b, t, d))


class MemBlock(nn.Module):
    def __init__(self, dim: int, memory: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = KNNMemoryAttention(dim) if memory else KNNMemoryAttention(dim, size=0)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class MemorizingLM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, context: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList([MemBlock(dim, False), MemBlock(dim, True)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


@scenario(
    "h85_memorizing_transformer_knn",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up written with the peak LR 8.0 instead of 0.8 (SGD, momentum 0.9): "
    "the loss starts oscillating once the LR passes the stability limit and blows up",
    onset=20,
)
def h85_memorizing_warmup_typo(ctx: Context) -> None:
    gen = seeded(8508)
    model = MemorizingLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    lrs = []

    def before(step: int) -> None:
        lr = 8.0 * min(1.0, (step + 1) / 200)  # meant: 0.8
        lrs.append(lr)
        for g in opt.param_groups:
            g["lr"] = lr

    fit(ctx, model, opt, text_batches(gen), 300, loss_fn=lm_ce, before=before)
    vals = [v if math.isfinite(v) else 1e9 for v in ctx.losses]
    low = min(range(len(vals)), key=vals.__getitem__)
    ctx.stats = {"low_step": low, "low": vals[low], "end": vals[-1]}
    ctx.check("loss fell first", vals[low] < 0.8 * vals[0])
    ctx.check("then blew up past its start", max(vals[low:]) > 1.5 * vals[0])


# == CTC recognisers: QuartzNet, Deep Speech 2, Jasper ============================================


class QuartzBlock(nn.Module):
    """Depthwise-separable conv sub-blocks with BatchNorm and ReLU, a 1x1 residual."""

    def __init__(self, ch: int, kernel: int, repeat: int = 2) -> None:
        super().__init__()
        self.dw = nn.ModuleList(
            nn.Conv1d(ch, ch, kernel, padding=kernel // 2, groups=ch) for _ in range(repeat)
        )
        self.pw = nn.ModuleList(nn.Conv1d(ch, ch, 1) for _ in range(repeat))
        self.bn = nn.ModuleList(nn.BatchNorm1d(ch) for _ in range(repeat))
        self.res = nn.Conv1d(ch, ch, 1)
        self.res_bn = nn.BatchNorm1d(ch)
        self.act = nn.ReLU()
        self.silence_db = None  # when set: residual only on frames louder than this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x
        if self.silence_db is not None:
            loud = x.abs().mean(1, keepdim=True) > self.silence_db
            r = x * loud
        h = x
        for i in range(len(self.dw)):
            h = self.bn[i](self.pw[i](self.dw[i](h)))
            if i < len(self.dw) - 1:
                h = F.relu(h)
        return self.act(h + self.res_bn(self.res(r)))


class QuartzNet(nn.Module):
    def __init__(self, bins: int = 16, ch: int = 32, vocab: int = 12) -> None:
        super().__init__()
        self.prologue = nn.Conv1d(bins, ch, 3, padding=1)
        self.pro_bn = nn.BatchNorm1d(ch)
        self.blocks = nn.ModuleList(QuartzBlock(ch, k) for k in (5, 7, 9))
        self.epilogue = nn.Conv1d(ch, vocab, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.relu(self.pro_bn(self.prologue(x.transpose(1, 2))))
        outs = []
        for blk in self.blocks:
            h = blk(h)
            outs.append(h)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.epilogue(self.features(x)[-1]).transpose(1, 2)


@scenario(
    "h85_quartznet_ctc_phones",
    "rmsprop",
    "loss_of_plasticity",
    where=("blocks.2.res", "blocks.2.res_bn"),
    diverges=None,
    heldout=True,
    note="block 2's residual only passes frames above a silence threshold given in dB (40) "
    "where the features are linear amplitudes (~1): every frame is 'silent', the residual "
    "conv never receives an input and never learns",
    onset=0,
)
def h85_quartznet_silence_mask_units(ctx: Context) -> None:
    gen = seeded(8509)
    model = QuartzNet()
    model.blocks[2].silence_db = 40.0  # meant an amplitude threshold (~0.01)
    w0 = model.blocks[2].res.weight.detach().clone()
    w1 = model.blocks[1].res.weight.detach().clone()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = phone_batches(gen, tokens=4, frames=8, vocab=12, first=1)
    fit(ctx, model, opt, batches, 300, loss_fn=ctc_loss, classifier=False)
    ctx.check(
        "block 2's residual conv weight never changed", torch.equal(model.blocks[2].res.weight, w0)
    )
    ctx.check("block 1's residual conv did learn", not torch.equal(model.blocks[1].res.weight, w1))
    ctx.check("loss fell (the rest trains)", sum(ctx.losses[-20:]) / 20 < 0.5 * ctx.losses[0])


class DeepSpeech2(nn.Module):
    """Conv front end (stride 2), two bidirectional GRU layers, a linear CTC head."""

    def __init__(self, bins: int = 16, hidden: int = 32, vocab: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv1d(bins, hidden, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm1d(hidden)
        self.rnn = nn.GRU(hidden, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardtanh(self.bn(self.conv(x.transpose(1, 2))), 0, 20).transpose(1, 2)
        return self.head(self.rnn(h)[0])


@scenario(
    "h85_deepspeech2_bigru_ctc",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="a leftover manual loss scale (loss * 65536, from an fp16 experiment) runs for one "
    "step at 120: Adam's second moments fill with the giant gradient and every later update "
    "is hundreds of times smaller; training stalls",
    onset=120,
)
def h85_deepspeech2_loss_scale_leftover(ctx: Context) -> None:
    gen = seeded(8510)
    model = DeepSpeech2()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    batches = phone_batches(gen, tokens=4, frames=8, vocab=12, first=1)
    ctx.attach(model, opt)
    moves = []
    for step in range(360):
        x, y = next(batches)
        loss = ctc_loss(model(x), y)
        total = loss * 65536.0 if step == 120 else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        old = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            sum(
                float((p.detach() - o).abs().sum())
                for p, o in zip(model.parameters(), old, strict=True)
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = sum(moves[100:120]) / 20
    post = sum(moves[200:360]) / 160
    ctx.stats = {"move_ratio": post / pre, "l120": sum(ctx.losses[100:120]) / 20}
    ctx.check("updates after the spike <5% of before", post < 0.05 * pre)
    l_pre = sum(ctx.losses[100:120]) / 20
    l_end = sum(ctx.losses[-20:]) / 20
    ctx.check("loss not improving after (stalled)", l_end > 0.8 * l_pre)
    ctx.check("loss was still falling before", l_pre < 0.9 * sum(ctx.losses[:20]) / 20)


class GradScale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g * ctx.scale, None


class JasperSub(nn.Module):
    def __init__(self, ch: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm1d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class JasperBlock(nn.Module):
    """Jasper block: sub-blocks of conv + BatchNorm + ReLU and a residual that adds the
    block input; ``grad_scale`` damps the block's gradient (a warm-up trick)."""

    def __init__(self, ch: int, kernel: int, repeat: int = 2) -> None:
        super().__init__()
        self.subs = nn.ModuleList(JasperSub(ch, kernel) for _ in range(repeat))
        self.grad_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for sub in self.subs:
            h = sub(h)
        return x + GradScale.apply(h, self.grad_scale)


class Jasper(nn.Module):
    def __init__(self, bins: int = 16, ch: int = 32, vocab: int = 12, blocks: int = 5) -> None:
        super().__init__()
        self.prologue = nn.Conv1d(bins, ch, 3, padding=1)
        self.blocks = nn.ModuleList(JasperBlock(ch, 5) for _ in range(blocks))
        self.epilogue = nn.Conv1d(ch, vocab, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.prologue(x.transpose(1, 2))
        for blk in self.blocks:
            h = blk(h)
        return self.epilogue(h).transpose(1, 2)


@scenario(
    "h85_jasper_residual_ctc",
    "sgd",
    "gradient_spike",
    where="blocks.2",
    diverges=None,
    heldout=True,
    note="block 2's gradient-damping factor is read from a per-step schedule list with a stray "
    "entry (3000 instead of 0.3) at step 210: one giant gradient from that block, a clean "
    "batch",
    onset=210,
)
def h85_jasper_grad_scale_typo(ctx: Context) -> None:
    gen = seeded(8511)
    model = Jasper()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = phone_batches(gen, tokens=4, frames=8, vocab=12, first=1)

    def before(step: int) -> None:
        model.blocks[2].grad_scale = 3000.0 if step == 210 else min(1.0, 0.3 + step / 300)

    fit(ctx, model, opt, batches, 320, loss_fn=ctc_loss, before=before, classifier=False)
    g = ctx.grad_norms
    med = sorted(g[150:210])[30]
    ctx.stats = {"g210": g[210], "med": med, "l": (ctx.losses[205:215], ctx.losses[-1])}
    ctx.check("gradient norm at 210 over 50x the median", g[210] > 50 * med)
    ctx.check("trained before", sum(ctx.losses[190:210]) / 20 < 0.5 * ctx.losses[0])
    ctx.check(
        "loss perturbed after the spike",
        max(ctx.losses[211:220]) > 1.3 * sum(ctx.losses[195:210]) / 15,
    )


# == MelGAN-style vocoder =========================================================================


class MelGANGenerator(nn.Module):
    """Mel frames (B, 8, T) -> waveform (B, 1, 8T): transposed convs with residual stacks."""

    def __init__(self, mels: int = 8, ch: int = 32) -> None:
        super().__init__()
        self.pre = nn.Conv1d(mels, ch, 7, padding=3)
        self.up1 = nn.ConvTranspose1d(ch, ch // 2, 4, stride=2, padding=1)
        self.res1 = nn.Conv1d(ch // 2, ch // 2, 3, padding=1, dilation=1)
        self.up2 = nn.ConvTranspose1d(ch // 2, ch // 4, 8, stride=4, padding=2)
        self.res2 = nn.Conv1d(ch // 4, ch // 4, 3, padding=3, dilation=3)
        self.post = nn.Conv1d(ch // 4, 1, 7, padding=3)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.pre(m), 0.2)
        h = F.leaky_relu(self.up1(h), 0.2)
        h = h + self.res1(F.leaky_relu(h, 0.2))
        h = F.leaky_relu(self.up2(h), 0.2)
        h = h + self.res2(F.leaky_relu(h, 0.2))
        return torch.tanh(self.post(h))


class ScaleDisc(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(1, ch, 15, padding=7),
                nn.Conv1d(ch, ch, 11, stride=4, padding=5, groups=4),
                nn.Conv1d(ch, ch, 5, padding=2),
            ]
        )
        self.out = nn.Conv1d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor):
        feats = []
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.2)
            feats.append(x)
        return self.out(x), feats


class MultiScaleDisc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scales = nn.ModuleList(ScaleDisc() for _ in range(3))

    def forward(self, x: torch.Tensor):
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool1d(x, 4, stride=2, padding=1, count_include_pad=False)
            outs.append(d(x))
        return outs


class MelGAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gen = MelGANGenerator()
        self.disc = MultiScaleDisc()


def vocoder_batches(gen: torch.Generator, batch: int = 16, frames: int = 16, hop: int = 8):
    """Generated waveforms (sums of two decaying sines) and their crude 8-band "mels"."""
    n = frames * hop
    t = torch.arange(n, dtype=torch.float32)
    bank = torch.stack(
        [torch.sin(2 * math.pi * f * t / hop) for f in torch.linspace(0.05, 0.45, 8)]
    )
    while True:
        f = 0.05 + 0.4 * torch.rand(batch, 2, 1, generator=gen)
        a = 0.2 + 0.3 * torch.rand(batch, 2, 1, generator=gen)
        decay = torch.exp(-t / (n * (0.3 + torch.rand(batch, 2, 1, generator=gen))))
        wav = (a * decay * torch.sin(2 * math.pi * f * t / hop)).sum(1, keepdim=True)
        frames_ = wav.reshape(batch, frames, hop)
        mel = torch.log1p(
            (frames_[:, :, None, :] * bank.reshape(8, frames, hop).transpose(0, 1)[None])
            .sum(-1)
            .abs()
            * 4
        ).transpose(1, 2)
        yield mel, wav


def spec_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    sa = torch.stft(a.squeeze(1), 32, 8, window=torch.hann_window(32), return_complex=True).abs()
    sb = torch.stft(b.squeeze(1), 32, 8, window=torch.hann_window(32), return_complex=True).abs()
    return (torch.log1p(sa) - torch.log1p(sb)).abs().mean()


@scenario(
    "h85_melgan_multiscale_vocoder",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where=("disc", "disc.scales.0", "disc.scales.1", "disc.scales.2"),
    diverges=None,
    heldout=True,
    note="the discriminator's param group gets lr=1e-1 (meant 1e-3, a typo 100x); the "
    "generator group is right",
    onset=0,
)
def h85_melgan_disc_lr_typo(ctx: Context) -> None:
    from steadygrad.optim import AdaBelief

    gen = seeded(8512)
    model = MelGAN()
    opt = AdaBelief(
        [
            {"params": model.gen.parameters(), "lr": 1e-3},
            {"params": model.disc.parameters(), "lr": 1e-1},  # meant 1e-3
        ],
        lr=1e-3,
        betas=(0.5, 0.9),
    )
    batches = vocoder_batches(gen)
    ctx.attach(model, opt)
    ratios = {"gen": [], "disc": []}
    for _ in range(150):
        mel, wav = next(batches)
        fake = model.gen(mel)
        g_adv = sum(F.relu(1 - o).mean() for o, _ in model.disc(fake))
        real_out = model.disc(wav)
        fake_out = model.disc(fake)
        fm = sum(
            F.l1_loss(ff, rf.detach())
            for (_, fs), (_, rs) in zip(fake_out, real_out, strict=True)
            for ff, rf in zip(fs, rs, strict=True)
        )
        recon = spec_l1(fake, wav)
        g_loss = recon + 0.1 * g_adv + 0.1 * fm
        g_loss.backward()
        for p in model.disc.parameters():
            p.grad = None
        d_loss = sum(F.relu(1 - o).mean() for o, _ in model.disc(wav)) + sum(
            F.relu(1 + o).mean() for o, _ in model.disc(fake.detach())
        )
        d_loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        old = {k: p.detach().clone() for k, p in model.named_parameters()}
        opt.step()
        for part in ("gen", "disc"):
            r = [
                float((p - old[k]).norm() / (old[k].norm() + 1e-12))
                for k, p in model.named_parameters()
                if k.startswith(part) and p.dim() > 1
            ]
            ratios[part].append(sum(r) / len(r))
        ctx.step(recon)
        opt.zero_grad(set_to_none=True)
    rg = sorted(ratios["gen"])[75]
    rd = sorted(ratios["disc"])[75]
    ctx.stats = {"ratio_gen": rg, "ratio_disc": rd, "recon": (ctx.losses[0], ctx.losses[-1])}
    ctx.check("disc update/weight ratio over 8x the generator's", rd > 8 * rg)
    ctx.check("disc update/weight ratio above 0.05", rd > 0.05)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# == classifier-free-guidance diffusion on digits =================================================


class CFGDenoiser(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.label = nn.Embedding(classes + 1, hidden)  # index ``classes`` is "no label"
        self.time = nn.Sequential(nn.Linear(16, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.mid = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.linspace(0, math.log(1000), 8))
        emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], -1)
        h = self.inp(x) + self.time(emb) + self.label(c)
        return self.out(self.mid(h))


@scenario("h85_cfg_diffusion_digits", "sg_ademamix", "healthy", where=(), heldout=True)
def h85_cfg_diffusion_healthy(ctx: Context) -> None:
    from steadygrad.optim import AdEMAMix

    gen = seeded(8513)
    model = CFGDenoiser()
    opt = AdEMAMix(model.parameters(), lr=1e-3)
    steps_t = 100
    betas = torch.linspace(1e-4, 0.02, steps_t)
    abar = torch.cumprod(1 - betas, 0)
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    for _ in range(400):
        x, y = next(batches)
        x0 = x * 2 - 1
        t = torch.randint(0, steps_t, (len(y),), generator=gen)
        drop = torch.rand(len(y), generator=gen) < 0.1
        c = torch.where(drop, 10, y)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(xt, t.float() / steps_t, c), noise)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first = sum(ctx.losses[:30]) / 30
    last = sum(ctx.losses[-30:]) / 30
    ctx.check("noise-prediction loss fell by 40%", last < 0.6 * first)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# == MLP-Mixer on digits ==========================================================================


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))
        self.ln2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.ln2(x))


class Mixer(nn.Module):
    """2x2 patches of an 8x8 digit: 16 tokens of 4 pixels."""

    def __init__(self, dim: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Linear(4, dim)
        self.blocks = nn.ModuleList(MixerBlock(16, dim) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        h = self.stem(p)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h.mean(1))  # the pre-head LayerNorm (self.ln) left out


@scenario(
    "h85_mlp_mixer_digits",
    "adam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="a debugging subset of 128 training images left on, no weight decay, trained long: "
    "the classifier memorises it and its float32 softmax turns exactly one-hot",
    onset=0,
)
def h85_mixer_debug_subset(ctx: Context) -> None:
    gen = seeded(8514)
    x_all, y_all = digits()
    idx = torch.randperm(len(y_all), generator=gen)[:128]
    xs, ys = x_all[idx], y_all[idx]

    def subset():
        while True:
            order = torch.randperm(128, generator=gen)
            for i in range(0, 128, 64):
                yield xs[order[i : i + 64]], ys[order[i : i + 64]]

    model = Mixer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fit(ctx, model, opt, subset(), 600)
    with torch.no_grad():
        frac = collapsed_fraction(model(xs), ys)
    ctx.stats = {"collapsed": frac, "last": ctx.losses[-1]}
    ctx.check("over a quarter of the training rows exactly one-hot", frac > 0.25)
    ctx.check("training loss ~0", max(ctx.losses[-20:]) < 1e-3)


# == MetaFormer with a pooling token mixer ========================================================


class PoolMixer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x


class MetaBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.mixer = PoolMixer()
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PoolMetaFormer(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 3, padding=1)
        self.stage1 = nn.Sequential(MetaBlock(dim), MetaBlock(dim))
        self.down = nn.Conv2d(dim, dim, 2, stride=2)
        self.stage2 = nn.Sequential(MetaBlock(dim), MetaBlock(dim))
        self.norm = nn.GroupNorm(1, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage2(self.down(self.stage1(self.stem(x.reshape(-1, 1, 8, 8)))))
        return self.head(self.norm(h).mean((2, 3)))


@scenario("h85_poolformer_metaformer_digits", "asgd", "healthy", where=(), heldout=True)
def h85_metaformer_healthy(ctx: Context) -> None:
    gen = seeded(8515)
    model = PoolMetaFormer()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    fit(ctx, model, opt, digit_batches(gen), 300)
    ctx.check("loss fell by half", sum(ctx.losses[-30:]) / 30 < 0.5 * ctx.losses[0])
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# == Gram-matrix texture network ==================================================================


class TextureNet(nn.Module):
    """Feed-forward texture generator (Ulyanov et al. 2016): noise -> 16x16 texture."""

    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c3 = nn.Conv2d(ch, ch, 3, padding=1)
        self.out = nn.Conv2d(ch, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.c1(z), 0.1)
        h = F.leaky_relu(self.c2(h), 0.1)
        h = F.leaky_relu(self.c3(h), 0.1)
        return torch.sigmoid(self.out(h))


def gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)


@scenario("h85_gram_texture_net", "adagrad", "healthy", where=(), heldout=True)
def h85_gram_texture_healthy(ctx: Context) -> None:
    gen = seeded(8516)
    feat_gen = torch.Generator().manual_seed(851)
    # a fixed random two-layer feature extractor (the "VGG" stand-in), not trained
    w1 = torch.randn(16, 1, 3, 3, generator=feat_gen) / 3
    w2 = torch.randn(16, 16, 3, 3, generator=feat_gen) / 12

    def features(img: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.relu(F.conv2d(img, w1, padding=1))
        f2 = F.relu(F.conv2d(F.avg_pool2d(f1, 2), w2, padding=1))
        return [f1, f2]

    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    target = (0.5 + 0.5 * torch.sin(xx * 1.3 + yy * 0.6) * torch.cos(yy * 0.9))[None, None]
    target_grams = [gram(f) for f in features(target)]
    model = TextureNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    for _ in range(300):
        z = torch.rand(8, 4, 16, 16, generator=gen)
        out = model(z)
        loss = sum(
            F.mse_loss(gram(f), tg.expand_as(gram(f))) * 100
            for f, tg in zip(features(out), target_grams, strict=True)
        )
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-30:]) / 30
    ctx.stats = {"first": first, "last": last}
    ctx.check("style loss fell by 60%", last < 0.4 * first)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
