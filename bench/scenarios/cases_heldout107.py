"""Held-out set 107 (``h107_``): induced instabilities and healthy controls written blind to
steadygrad's detectors. Hugging Face SigLIP2 vision tower, M2M-100, Switch Transformers,
Pix2Struct text decoder and X-CLIP vision tower from tiny configs (no download); hand-written
ArcFace speaker verification, echo-state reservoir, IRNN piano-roll transcriber, protein
contact-map predictor, magnitude pruning during training, quantisation-aware training
(straight-through estimator), Kendall uncertainty-weighted multi-task net, correlation-volume
optical flow and a SMILES character VAE.
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
    scenario,
    seeded,
)

# -- helpers ----------------------------------------------------------------------------------


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _gnorm(params) -> float:
    gs = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


# -- SigLIP2 vision tower on digits: attention-logit growth -----------------------------------


def _siglip2_tower(dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    cfg = Siglip2VisionConfig(
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_channels=1,
        patch_size=2,
        num_patches=16,
        attention_dropout=0.0,
    )
    return Siglip2VisionModel(cfg)


class SiglipDigits(nn.Module):
    """A SigLIP2 vision tower (NaFlex patches, 2x2 pixels) with a linear digit head."""

    def __init__(self) -> None:
        super().__init__()
        self.vision = _siglip2_tower()
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        img = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        mask = torch.ones(b, 16, dtype=torch.long)
        shapes = torch.tensor([[4, 4]] * b)
        out = self.vision(pixel_values=img, pixel_attention_mask=mask, spatial_shapes=shapes)
        return self.head(out.pooler_output)


def _siglip_attn_max(model: SiglipDigits, x: torch.Tensor) -> float:
    """The largest |q.k|/sqrt(d_head) over the tower's layers, from hooks on q_proj and k_proj."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith("q_proj") or name.endswith("k_proj"):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    top = 0.0
    heads, dh = 2, 16
    for name, q in seen.items():
        if not name.endswith("q_proj"):
            continue
        k = seen[name[: -len("q_proj")] + "k_proj"]
        b, t, _ = q.shape
        qh = q.reshape(b, t, heads, dh).transpose(1, 2)
        kh = k.reshape(b, t, heads, dh).transpose(1, 2)
        top = max(top, float((qh @ kh.transpose(-1, -2)).abs().amax()) / math.sqrt(dh))
    return top


@scenario(
    "h107_hf_siglip2_vision_digits",
    "adam",
    "attention_logit_growth",
    where=("vision.encoder.layers.0.self_attn", "vision.encoder.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a group at 25x the base rate, no QK-norm, no weight decay",
)
def h107_siglip2_qk_lr_attn_growth(ctx: Context) -> None:
    """A SigLIP2 vision tower fine-tuned on digits with layer-wise rates: a typo puts the query
    and key projections at 2.5e-2 instead of 1e-3 (Adam, no weight decay, no QK-norm). The
    attention logits grow far past the O(1) they start at and the attention goes one-hot."""
    gen = seeded(10701)
    model = SiglipDigits()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": qk, "lr": 2.5e-2}])
    batches = digit_batches(gen, 64)
    probe, _ = next(batches)
    start = _siglip_attn_max(model, probe)
    ctx.attach(model, opt)
    for _step in range(300):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    end = _siglip_attn_max(model, probe)
    ctx.check(f"attention logits grew 10x ({start:.1f} -> {end:.1f})", end > 10 * start)
    ctx.check("attention logits above 30", end > 30)
    ctx.check("losses finite", _finite(ctx.losses))


# -- M2M-100 on a generated copy-and-reverse task: output-logit divergence --------------------


def _m2m100(vocab: int = 48, dim: int = 32):
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    cfg = M2M100Config(
        vocab_size=vocab,
        d_model=dim,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * dim,
        decoder_ffn_dim=2 * dim,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        tie_word_embeddings=False,
        scale_embedding=True,
    )
    return M2M100ForConditionalGeneration(cfg)


def _reverse_batches(
    gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 48, noise: float = 0.0
):
    """Source: random tokens 4..vocab-1; target: the source reversed, then EOS (2)."""
    while True:
        src = torch.randint(4, vocab, (batch, length), generator=gen)
        tgt = torch.cat([src.flip(1), torch.full((batch, 1), 2)], 1)
        if noise > 0:  # a noisy parallel corpus: some target tokens are wrong
            wrong = torch.rand(tgt.shape, generator=gen) < noise
            tgt = torch.where(wrong, torch.randint(4, vocab, tgt.shape, generator=gen), tgt)
        dec_in = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)
        yield src, dec_in, tgt


@scenario(
    "h107_hf_m2m100_reverse",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="untied lm_head at 8e-2 (50x the base rate), no z-loss, no weight decay on it",
)
def h107_m2m100_head_lr_logit_drift(ctx: Context) -> None:
    """M2M-100 trained from scratch on a reversal task with its output projection untied and
    put in a 'new parameters' group at 8e-2 (meant for a small adapter) without weight decay or
    z-loss. The head's logits run off: the log-partition (logsumexp) drifts far from log V."""
    gen = seeded(10702)
    model = _m2m100()
    head = list(model.lm_head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 1.5e-3, "weight_decay": 0.01},
            {"params": head, "lr": 8e-2, "weight_decay": 0.0},
        ]
    )
    batches = _reverse_batches(gen, noise=0.02)
    probe = next(batches)

    def lse() -> float:
        with torch.no_grad():
            out = model(input_ids=probe[0], decoder_input_ids=probe[1]).logits
        return float(torch.logsumexp(out, -1).mean())

    start, w0 = lse(), float(model.lm_head.weight.detach().norm())
    ctx.attach(model, opt)
    for _step in range(320):
        src, dec_in, tgt = next(batches)
        logits = model(input_ids=src, decoder_input_ids=dec_in).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    end = lse()
    w1 = float(model.lm_head.weight.detach().norm())
    ctx.check(f"log-partition drifted ({start:.1f} -> {end:.1f})", end > 3 * start)
    ctx.check(f"lm_head weight norm grew 10x ({w0:.1f} -> {w1:.1f})", w1 > 10 * w0)
    ctx.check("losses finite", _finite(ctx.losses))


# -- speaker verification with an additive-angular-margin (ArcFace) head: softmax collapse ----


def _speaker_batches(gen: torch.Generator, speakers: int = 24, batch: int = 48, frames: int = 20):
    """Generated 'utterances': frames of 16 filterbank-like features around a speaker's voice
    print, with a per-utterance channel offset and frame noise."""
    prints = torch.randn(speakers, 16, generator=gen)
    while True:
        y = torch.randint(0, speakers, (batch,), generator=gen)
        channel = 0.3 * torch.randn(batch, 1, 16, generator=gen)
        x = prints[y][:, None, :] + channel + 0.4 * torch.randn(batch, frames, 16, generator=gen)
        yield x, y


class ArcMarginHead(nn.Module):
    """Additive angular margin softmax (Deng et al. 2019): s * cos(theta_y + m) for the target,
    s * cos(theta_j) for the rest; returns the logits that go into the cross-entropy."""

    def __init__(self, dim: int, classes: int, s: float, m: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.s, self.m = s, m

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-6, 1 - 1e-6)
        target = torch.cos(torch.acos(cos) + self.m)
        onehot = F.one_hot(y, cos.shape[1]).bool()
        return self.s * torch.where(onehot, target, cos)


class SpeakerNet(nn.Module):
    """Frame-level 1-D convolutions, mean-and-std statistics pooling, a 32-d embedding."""

    def __init__(self, speakers: int, s: float, m: float) -> None:
        super().__init__()
        self.frame1 = nn.Conv1d(16, 48, 3, padding=1)
        self.frame2 = nn.Conv1d(48, 48, 3, padding=1)
        self.embed = nn.Linear(96, 32)
        self.head = ArcMarginHead(32, speakers, s, m)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.frame2(F.relu(self.frame1(x.transpose(1, 2)))))
        return self.embed(torch.cat([h.mean(2), h.std(2)], 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(x), y)


@scenario(
    "h107_arcface_speaker_verification",
    "sgd_mom",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="ArcFace scale s=64 on 24 easy speakers: float32 softmax rounds the target to 1",
)
def h107_arcface_scale64_collapse(ctx: Context) -> None:
    """A speaker-verification net trained with the face-recognition ArcFace setting (s=64,
    m=0.5) on a small, easily separated speaker set. Once the angles close, s*(cos(theta+m) -
    cos) is far above float32's ~17-nat limit: the softmax gives the target exactly 1.0, its
    gradient exactly 0, and most rows stop teaching the net anything."""
    gen = seeded(10703)
    model = SpeakerNet(24, s=64.0, m=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
    batches = _speaker_batches(gen)
    ctx.attach(model, opt)
    collapsed = []
    for _step in range(300):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x, y)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ctx.check(f"early rows not collapsed ({collapsed[0]:.2f})", collapsed[0] < 0.05)
    late = _mean(collapsed[-20:])
    ctx.check(f"a third of rows or more collapsed at the end ({late:.2f})", late > 0.33)
    ctx.check("losses finite", _finite(ctx.losses))


# -- echo-state reservoir with a trained readout: step size above 2 / sharpness -------------


class EchoState(nn.Module):
    """A fixed random reservoir (spectral radius 0.9, leaky tanh) and a trained linear readout."""

    def __init__(self, units: int = 200, gen: torch.Generator | None = None) -> None:
        super().__init__()
        w = torch.randn(units, units, generator=gen) / math.sqrt(units)
        w = w * (0.9 / torch.linalg.eigvals(w).abs().max())
        self.register_buffer("w_res", w)
        self.register_buffer("w_in", torch.rand(units, 1, generator=gen) * 2 - 1)
        self.readout = nn.Linear(units, 1)

    @torch.no_grad()
    def harvest(self, u: torch.Tensor, leak: float = 0.5) -> torch.Tensor:
        h = torch.zeros(self.w_res.shape[0])
        states = []
        for t in range(len(u)):
            pre = self.w_res @ h + self.w_in[:, 0] * u[t]
            h = (1 - leak) * h + leak * torch.tanh(pre)
            states.append(h)
        return torch.stack(states)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.readout(states).squeeze(-1)


def _esn_series(n: int) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float32)
    return torch.sin(0.21 * t) * torch.cos(0.033 * t) + 0.4 * torch.sin(0.57 * t + 1.0)


@scenario(
    "h107_echo_state_readout",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="full-batch readout at lr = 2.3 / lambda_max of the readout Hessian",
)
def h107_esn_readout_lr_over_edge(ctx: Context) -> None:
    """An echo-state network's readout fit by full-batch gradient descent instead of ridge
    regression, with a step size taken from another reservoir's run (states of larger spread):
    here it is 2.3 / lambda_max of the MSE Hessian, past the 2 / lambda stability limit, and the
    readout oscillates out along the top eigen-direction."""
    gen = seeded(10704)
    model = EchoState(gen=gen)
    u = _esn_series(601)
    states = model.harvest(u[:-1])[100:]  # washout
    target = u[1:][100:]
    xb = torch.cat([states, torch.ones(len(states), 1)], 1)
    lam = float(torch.linalg.eigvalsh(2 * xb.T @ xb / len(xb)).max())
    lr = 2.3 / lam
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def probe_loss(m: nn.Module, b) -> torch.Tensor:
        return F.mse_loss(m(b[0]), b[1])

    ctx.attach(model, opt, probe=(probe_loss, (states, target)))
    for _step in range(120):
        loss = F.mse_loss(model(states), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check(f"lr * lambda_max = {lr * lam:.2f} > 2", lr * lam > 2.0)
    fin = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("loss fell at first", min(fin[:20]) < fin[0])
    ctx.check(
        "loss ended 100x above its best",
        not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 100 * min(fin),
    )


# -- piano-roll transcription with an IRNN: exploding gradients -------------------------------


def _pianoroll_batches(gen: torch.Generator, batch: int = 24, frames: int = 48, pitches: int = 12):
    """Generated music: held notes (a piano roll of 12 pitch classes) rendered into 24 spectral
    bins (each pitch its fundamental and an overtone), with a decay and noise."""
    basis = torch.zeros(pitches, 24)
    for p in range(pitches):
        basis[p, p] = 1.0
        basis[p, (p + 7) % 12 + 12] = 0.5
    while True:
        roll = torch.zeros(batch, frames, pitches)
        for _ in range(4):
            start = torch.randint(0, frames - 4, (batch,), generator=gen)
            length = torch.randint(3, 14, (batch,), generator=gen)
            pitch = torch.randint(0, pitches, (batch,), generator=gen)
            t = torch.arange(frames)
            on = (t[None] >= start[:, None]) & (t[None] < (start + length)[:, None])
            roll[torch.arange(batch)[:, None], t[None], pitch[:, None]] += on.float()
        roll = roll.clamp(max=1.0)
        spec = roll @ basis + 0.1 * torch.randn(batch, frames, 24, generator=gen)
        yield spec, roll


class PianoRollRNN(nn.Module):
    """IRNN (ReLU recurrence, identity-initialised; Le et al. 2015) over frames, frame-wise
    sigmoid outputs for 12 pitch classes."""

    def __init__(self, hidden: int = 64, gain: float = 1.0) -> None:
        super().__init__()
        self.inp = nn.Linear(24, hidden)
        self.rnn = nn.RNN(hidden, hidden, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()
        self.out = nn.Linear(hidden, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.inp(x))
        return self.out(h)


@scenario(
    "h107_irnn_pianoroll_transcriber",
    "sgd_mom",
    "healthy",
    diverges=None,
    heldout=True,
    note="control: IRNN with gradient clipping at 1 and a step decay; note density varies",
)
def h107_irnn_pianoroll_control(ctx: Context) -> None:
    """The IRNN paper's recipe: identity-initialised ReLU recurrence, SGD with momentum,
    gradient clipping at norm 1, the rate cut 3x two thirds in; clips of 96 frames."""
    gen = seeded(10713)
    model = PianoRollRNN()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    batches = _pianoroll_batches(gen, frames=96)
    ctx.attach(model, opt)
    for step in range(240):
        if step == 160:
            for g in opt.param_groups:
                g["lr"] /= 3
        x, roll = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), roll)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell 3x", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:5]) / 3)


# -- protein contact-map prediction: exploding gradients through depth ------------------------


def _protein_batches(gen: torch.Generator, batch: int = 8, length: int = 24):
    """Generated 'proteins': a residue sequence (20 types) folded as a random walk on a 3-D
    lattice-like chain; contacts are residue pairs closer than a cut-off, |i - j| >= 3."""
    while True:
        steps = F.normalize(torch.randn(batch, length, 3, generator=gen), dim=-1)
        # a hydrophobic residue pulls the chain inwards: steps shrink after it
        seq = torch.randint(0, 20, (batch, length), generator=gen)
        steps = steps * (1.0 - 0.5 * (seq < 8).float())[..., None]
        pos = steps.cumsum(1)
        dist = torch.cdist(pos, pos)
        sep = (torch.arange(length)[:, None] - torch.arange(length)[None]).abs() >= 3
        contact = ((dist < 1.6) & sep).float()
        yield seq, contact


class ContactNet(nn.Module):
    """Residue embeddings, the pairwise outer concatenation, a stack of 3x3 convolutions over
    the L x L map, a symmetric contact logit per pair."""

    def __init__(
        self, width: int = 32, depth: int = 14, residual: bool = True, init_std: float | None = None
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.stem = nn.Conv2d(32, width, 1)
        self.trunk = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.norms = nn.ModuleList(
            nn.GroupNorm(4, width) if residual else nn.Identity() for _ in range(depth)
        )
        self.residual = residual
        self.out = nn.Conv2d(width, 1, 1)
        if init_std is not None:
            for conv in self.trunk:
                nn.init.normal_(conv.weight, std=init_std)
                nn.init.zeros_(conv.bias)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        e = self.embed(seq)
        length = seq.shape[1]
        pair = torch.cat(
            [e[:, :, None].expand(-1, -1, length, -1), e[:, None].expand(-1, length, -1, -1)], -1
        )
        h = self.stem(pair.permute(0, 3, 1, 2))
        for conv, norm in zip(self.trunk, self.norms, strict=True):
            if self.residual:  # pre-activation residual block
                h = h + conv(F.relu(norm(h)))
            else:  # a plain tanh stack
                h = torch.tanh(conv(h))
        logit = self.out(h).squeeze(1)
        return 0.5 * (logit + logit.transpose(1, 2))


@scenario(
    "h107_protein_contact_map",
    "sgd",
    "exploding_gradients",
    where=("trunk",),
    diverges=None,
    heldout=True,
    note="18 plain tanh 3x3 convs (no residual, no norm) at a fixed init std of 0.25",
)
def h107_contact_map_deep_plain_explode(ctx: Context) -> None:
    """A contact-map predictor whose residual blocks and norms were removed to 'simplify' it,
    keeping a fixed N(0, 0.25^2) init (Xavier for these convs would be ~0.06): the tanh stack
    sits in the chaotic phase, each layer multiplies the backward signal by ~1.5, and the first
    layers' gradients are thousands of times the last's (SGD, no clipping)."""
    gen = seeded(10706)
    model = ContactNet(residual=False, init_std=0.25, depth=18)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = _protein_batches(gen)
    ctx.attach(model, opt)
    ratio, norms = [], []
    for _step in range(80):
        seq, contact = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(seq), contact)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        first = model.trunk[0].weight.grad.norm()
        last = model.trunk[-1].weight.grad.norm()
        ratio.append(float(first / last.clamp_min(1e-30)))
        norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
    ctx.check(f"first conv's gradient 300x the last's ({_median(ratio):.3g})", _median(ratio) > 300)
    ctx.check(f"gradient norm above 5 throughout ({min(norms):.3g})", min(norms) > 5)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "h107_protein_contact_map",
    "adadelta",
    "healthy",
    diverges=None,
    heldout=True,
    note="control: pre-activation residual blocks with GroupNorm, default init, Adadelta",
)
def h107_contact_map_residual_control(ctx: Context) -> None:
    """The same contact-map task on the residual, normalised trunk it was designed with."""
    gen = seeded(10716)
    model = ContactNet(residual=True, depth=8)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    batches = _protein_batches(gen)
    ctx.attach(model, opt)
    for _step in range(120):
        seq, contact = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(seq), contact)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:5]))


# -- magnitude pruning during training: loss of plasticity ------------------------------------


class PrunedMLP(nn.Sequential):
    """A digit MLP whose hidden layers are magnitude-pruned on a schedule (masks kept as
    buffers and re-applied after every step, as torch.nn.utils.prune does)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )
        for i in (0, 2):
            self[i].register_buffer("mask", torch.ones_like(self[i].weight))

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        for i in (0, 2):
            w = self[i].weight
            k = int(sparsity * w.numel())
            if k > 0:
                cut = w.abs().flatten().kthvalue(k).values
                self[i].mask.copy_((w.abs() > cut).float() * self[i].mask)
            w.mul_(self[i].mask)


def _effective_rank(h: torch.Tensor) -> float:
    s = torch.linalg.svdvals(h - h.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


@scenario(
    "h107_magnitude_pruning_mlp",
    "adagrad",
    "loss_of_plasticity",
    where=("2", "3"),
    diverges=None,
    heldout=True,
    onset=150,
    note="gradual pruning to 99.8% (a target meant as 0.8), then a new task",
)
def h107_prune_998_then_new_task(ctx: Context) -> None:
    """Gradual magnitude pruning (Zhu and Gupta's cubic schedule) of a digit MLP, with the
    final sparsity typed as 0.998 instead of 0.8. By step 150 the hidden layers keep a few
    dozen weights; most second-layer units are dead or constant and the feature rank has
    collapsed. At step 200 the labels are remapped (a new task) and the net cannot relearn."""
    gen = seeded(10707)
    model = PrunedMLP()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = digit_batches(gen, 64)
    probe_x, _ = digits()
    probe_x = probe_x[:512]

    def hidden(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model[3](model[2](model[1](model[0](x))))

    rank0 = _effective_rank(hidden(probe_x))
    ctx.attach(model, opt)
    remap = torch.tensor([3, 7, 0, 9, 1, 5, 8, 2, 6, 4])
    first_task = []
    for step in range(400):
        x, y = next(batches)
        if step >= 200:
            y = remap[y]
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if 20 <= step <= 150 and step % 10 == 0:
            model.prune_to(0.998 * (1 - (1 - (step - 20) / 130) ** 3))
        else:
            model.prune_to(0.0)  # re-apply the masks
        ctx.step(loss)
        if step == 60:
            first_task.append(float(loss.detach()))
    h = hidden(probe_x)
    dead = float(((h <= 0).all(0) | (h.std(0) < 1e-6)).float().mean())
    rank1 = _effective_rank(h)
    ctx.check(f"most second-layer units dead or constant ({dead:.2f})", dead > 0.5)
    ctx.check(f"feature rank collapsed ({rank0:.1f} -> {rank1:.1f})", rank1 < rank0 / 4)
    new_task = _mean(ctx.losses[-20:])
    ctx.check(
        f"the new task is not learnt ({new_task:.2f} vs {first_task[0]:.2f} on the first at step 60)",
        new_task > 2 * first_task[0],
    )


# -- quantisation-aware training with a straight-through estimator: update ratio ---------------


class FakeQuant(torch.autograd.Function):
    """Uniform symmetric fake quantisation; the backward is the straight-through estimator
    (identity inside the clipping range, zero outside)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
        ctx.save_for_backward(x, scale)
        ctx.levels = levels
        return torch.clamp(torch.round(x / scale), -levels, levels) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale = ctx.saved_tensors
        inside = (x / scale).abs() <= ctx.levels
        return grad * inside, None, None


class QConv2d(nn.Conv2d):
    """A convolution whose weights are fake-quantised to 4 bits with a per-tensor scale
    calibrated once (a percentile of |w| over 7 levels)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def calibrate(self, percentile: float) -> None:
        self.scale.copy_(torch.quantile(self.weight.abs().flatten(), percentile / 100) / 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, FakeQuant.apply(self.weight, self.scale, 7), self.bias)


class QATNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = QConv2d(1, 16, 3, padding=1)
        self.conv2 = QConv2d(16, 32, 3, padding=1)
        self.conv3 = QConv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(x.flatten(1))


@scenario(
    "h107_qat_ste_cnn",
    "adamax",
    "update_ratio_out_of_range",
    where="conv2",
    diverges=None,
    heldout=True,
    note="conv2's quantiser calibrated at the 1st percentile (meant: 99.99th): STE zeroes its grads",
)
def h107_qat_conv2_clipped_frozen(ctx: Context) -> None:
    """Quantisation-aware training of a 4-bit digit CNN with a straight-through estimator.
    conv2's weight quantiser was calibrated with percentile=1 (a fraction typed where a
    percent was meant): 99% of its weights sit outside the clipping range, where the STE
    passes no gradient, so conv2 stands still (update/weight ratio ~0); its tiny sign-like
    kernels pass little signal and the whole net barely learns."""
    gen = seeded(10708)
    model = QATNet()
    model.conv1.calibrate(99.99)
    model.conv2.calibrate(1.0)
    model.conv3.calibrate(99.99)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    ratios: dict[str, list[float]] = {"conv2": [], "conv1": [], "conv3": []}
    for _step in range(220):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = {k: getattr(model, k).weight.detach().clone() for k in ratios}
        opt.step()
        ctx.step(loss)
        for k, w0 in before.items():
            w1 = getattr(model, k).weight.detach()
            ratios[k].append(float((w1 - w0).norm() / w0.norm()))
    r2, r1, r3 = (_median(ratios[k]) for k in ("conv2", "conv1", "conv3"))
    w = model.conv2.weight.detach()
    outside = float(((w / model.conv2.scale).abs() > 7).float().mean())
    ctx.check(
        f"conv2's weights almost all outside the clipping range ({outside:.2f})", outside > 0.95
    )
    ctx.check(f"conv2's update ratio 1000x below the others' ({r2:.2e})", r2 < 1e-3 * min(r1, r3))
    ctx.check(f"the other convs move ({r1:.1e}, {r3:.1e})", min(r1, r3) > 1e-3)
    ctx.check("losses finite", _finite(ctx.losses))


# -- multi-task learning with learned uncertainty weights (Kendall et al. 2018) ---------------


class UncertaintyMultiTask(nn.Module):
    """A shared digit trunk, a class head and a regression head (the digit's ink mass), and one
    learned log-variance per task weighting the losses."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU())
        self.cls_head = nn.Linear(96, 10)
        self.reg_head = nn.Linear(96, 1)
        self.log_var = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor):
        h = self.trunk(x)
        return self.cls_head(h), self.reg_head(h).squeeze(-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        logits, pred = self(x)
        ce = F.cross_entropy(logits, y)
        mse = F.mse_loss(pred, mass)
        s = self.log_var
        return torch.exp(-s[0]) * ce + s[0] + 0.5 * torch.exp(-s[1]) * mse + 0.5 * s[1]


def _ink_mass(x: torch.Tensor) -> torch.Tensor:
    return x.sum(1) / 20.0


@scenario(
    "h107_kendall_uncertainty_multitask",
    "nadam",
    "adam_second_moment_poisoned",
    where=("trunk", "reg_head"),
    diverges=None,
    heldout=True,
    onset=120,
    note="one batch's regression targets in pixel units (x2000): NAdam's v absorbs the spike",
)
def h107_kendall_unit_bug_poisons_nadam(ctx: Context) -> None:
    """Kendall-style multi-task learning on digits (class + ink mass), NAdam. At step 120 one
    shard's regression targets come un-normalised (summed 0..255 intensities, ~2000x): one
    gradient thousands of times the usual lands in the second moment, and with beta2 = 0.999
    the following updates of the trunk and the regression head are a small fraction of what
    they were: training all but stops for hundreds of steps."""
    gen = seeded(10709)
    model = UncertaintyMultiTask()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    upd, vmax = [], []
    for step in range(320):
        x, y = next(batches)
        mass = _ink_mass(x)
        if step == 120:
            mass = x.sum(1) * 16 * 16 / 2.0  # the raw-units shard
        ctx.targets(y)
        loss = model.loss(x, y, mass)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        w0 = [p.detach().clone() for p in model.trunk.parameters()]
        opt.step()
        ctx.step(loss)
        upd.append(
            float(
                sum(
                    (p.detach() - q).norm() ** 2
                    for p, q in zip(model.trunk.parameters(), w0, strict=True)
                )
                ** 0.5
            )
        )
        vmax.append(max(float(opt.state[p]["exp_avg_sq"].max()) for p in model.trunk.parameters()))
    before, after = _median(upd[90:118]), _median(upd[140:300])
    ctx.check(
        f"the trunk's second moment jumped 1000x ({vmax[118]:.2g} -> {vmax[120]:.2g})",
        vmax[120] > 1000 * vmax[118],
    )
    ctx.check(
        f"the trunk's updates shrank 10x after ({before:.2g} -> {after:.2g})", after < 0.1 * before
    )
    ctx.check(
        f"the loss at the spike was huge ({ctx.losses[120]:.3g})",
        ctx.losses[120] > 100 * abs(ctx.losses[118]),
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- Switch Transformers (MoE encoder-decoder) on a generated sort task: a bad batch ----------


def _switch(vocab: int = 24, dim: int = 32):
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    cfg = SwitchTransformersConfig(
        vocab_size=vocab,
        d_model=dim,
        d_kv=16,
        d_ff=2 * dim,
        expert_capacity=64,
        num_layers=2,
        num_sparse_encoder_layers=1,
        num_decoder_layers=2,
        num_sparse_decoder_layers=1,
        num_heads=2,
        num_experts=4,
        dropout_rate=0.0,
        router_z_loss_coef=0.001,
        router_aux_loss_coef=0.001,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    return SwitchTransformersForConditionalGeneration(cfg)


def _sort_batches(gen: torch.Generator, batch: int = 32, length: int = 6, vocab: int = 24):
    """Source: tokens 2..vocab-1; target: the same tokens sorted, then EOS (1)."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        tgt = torch.cat([src.sort(1).values, torch.ones(batch, 1, dtype=torch.long)], 1)
        yield src, tgt


@scenario(
    "h107_hf_switch_transformers_sort",
    "radam",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=230,
    note="one batch from a shard exported with descending order (EOS first)",
)
def h107_switch_descending_shard_batch(ctx: Context) -> None:
    """A tiny Switch Transformer learns to sort tokens (RAdam). At step 230 one batch comes
    from a shard exported with the opposite sort flag: its targets run descending, EOS first. The loss on that batch is many times the running level, the
    gradient spikes, and then training carries on with the normal data."""
    gen = seeded(10710)
    model = _switch()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    batches = _sort_batches(gen)
    ctx.attach(model, opt)
    norms = []
    for step in range(320):
        src, tgt = next(batches)
        if step == 230:  # the shard sorted descending, its EOS first
            tgt = tgt.flip(1)
        out = model(input_ids=src, labels=tgt)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
    run = _median(ctx.losses[210:230])
    ctx.check(
        f"loss on the bad batch 5x the running level ({ctx.losses[230]:.2f} vs {run:.2f})",
        ctx.losses[230] > 5 * run,
    )
    ctx.check(
        f"gradient spiked 4x ({norms[230]:.2g} vs {_median(norms[210:230]):.2g})",
        norms[230] > 4 * _median(norms[210:230]),
    )
    ctx.check("training recovered", _median(ctx.losses[-20:]) < 1.5 * run)
    ctx.check("losses finite", _finite(ctx.losses))


# -- optical flow with a correlation volume: a gradient spike from a dark frame pair ----------


def _flow_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Generated textures and the same texture shifted by an integer flow in [-2, 2]^2."""
    while True:
        tex = torch.randn(batch, 1, size + 4, size + 4, generator=gen)
        tex = F.avg_pool2d(tex, 3, 1, 1)
        flow = torch.randint(-2, 3, (batch, 2), generator=gen)
        a = tex[:, :, 2 : 2 + size, 2 : 2 + size]
        b = torch.stack(
            [
                tex[
                    i,
                    :,
                    2 + int(flow[i, 1]) : 2 + int(flow[i, 1]) + size,
                    2 + int(flow[i, 0]) : 2 + int(flow[i, 0]) + size,
                ]
                for i in range(batch)
            ]
        )
        yield a, b, flow.float()


class CorrelationVolume(nn.Module):
    """Cosine correlation of frame-1 features with frame-2 features at every displacement in a
    (2r+1)^2 window (FlowNetC / PWC-Net style cost volume)."""

    def __init__(self, radius: int = 2, eps: float = 1e-8) -> None:
        super().__init__()
        self.radius, self.eps = radius, eps

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        r = self.radius
        n1 = f1.norm(dim=1, keepdim=True)
        f2p = F.pad(f2, (r, r, r, r))
        n2p = F.pad(f2.norm(dim=1, keepdim=True), (r, r, r, r))
        h, w = f1.shape[-2:]
        out = []
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                g = f2p[:, :, dy : dy + h, dx : dx + w]
                ng = n2p[:, :, dy : dy + h, dx : dx + w]
                out.append((f1 * g).sum(1, keepdim=True) / (n1 * ng + self.eps))
        return torch.cat(out, 1)


class CorrFlowNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False),
        )
        self.corr = CorrelationVolume()
        self.decoder = nn.Sequential(
            nn.Conv2d(25, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 2, 3, padding=1)
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cost = self.corr(self.features(a), self.features(b))
        return self.decoder(cost).mean((2, 3))  # one global flow per pair


@scenario(
    "h107_corr_volume_optical_flow",
    "nesterov",
    "healthy",
    diverges=None,
    heldout=True,
    note="control: cosine cost volume, SGD with Nesterov momentum, a short warm-up, a step decay",
)
def h107_flow_corr_control(ctx: Context) -> None:
    """A correlation-volume flow net on generated shifted textures: warm-up over 20 steps,
    the rate halved at step 160, Smooth-L1 on the flow; batches differ in texture contrast."""
    gen = seeded(10714)
    model = CorrFlowNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = _flow_batches(gen)
    ctx.attach(model, opt)
    for step in range(220):
        for g in opt.param_groups:
            g["lr"] = 0.01 * min(1.0, (step + 1) / 20) * (0.5 if step >= 160 else 1.0)
        a, b, flow = next(batches)
        contrast = 0.5 + torch.rand((), generator=gen)
        loss = F.smooth_l1_loss(model(a * contrast, b * contrast), flow)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell 5x", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:5]) / 5)


@scenario(
    "h107_irnn_pianoroll_transcriber",
    "asgd",
    "gradient_spike",
    where="rnn",
    diverges=None,
    heldout=True,
    onset=150,
    note="one batch is two whole pieces (1536 frames) instead of 96-frame clips, no clipping",
)
def h107_irnn_whole_piece_grad_spike(ctx: Context) -> None:
    """The IRNN piano-roll transcriber trained with averaged SGD on 96-frame clips and no
    gradient clipping. At step 150 the clip sampler falls through to its 'short file' branch
    and serves two whole pieces of 1536 frames: the per-frame loss is ordinary, but the
    gradient through 16x more recurrent steps is hundreds of times the usual, and its update
    knocks the loss up for a few steps."""
    gen = seeded(10712)
    model = PianoRollRNN()
    opt = torch.optim.ASGD(model.parameters(), lr=5e-3)
    clips = _pianoroll_batches(gen, frames=96)
    pieces = _pianoroll_batches(gen, frames=1536, batch=2)
    ctx.attach(model, opt)
    norms = []
    for step in range(220):
        x, roll = next(pieces if step == 150 else clips)
        loss = F.binary_cross_entropy_with_logits(model(x), roll)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(_gnorm(model.rnn.parameters()))
        opt.step()
        ctx.step(loss)
    before = _median(norms[120:150])
    level = _median(ctx.losses[120:150])
    ctx.check(
        f"the recurrent gradient spiked 100x ({norms[150]:.3g} vs {before:.3g})",
        norms[150] > 100 * before,
    )
    ctx.check(
        f"the loss of that batch was ordinary ({ctx.losses[150]:.3f} vs {level:.3f})",
        ctx.losses[150] < 1.5 * level,
    )
    ctx.check("training recovered", _median(ctx.losses[-20:]) < 1.5 * level)
    ctx.check("losses finite", _finite(ctx.losses))


# -- SMILES character VAE: 0/0 in masked mean pooling on an empty string ----------------------

_SMILES_ALPHABET = "#CcONn()=123"  # '#' is padding


def _random_smiles(gen: torch.Generator) -> str:
    """A generated SMILES-like string: a carbon chain with branches, a ring, heteroatoms."""
    atoms = ["C", "C", "C", "O", "N", "c"]
    parts = []
    n = int(torch.randint(4, 12, (), generator=gen))
    ring_open = False
    for i in range(n):
        parts.append(atoms[int(torch.randint(0, len(atoms), (), generator=gen))])
        r = float(torch.rand((), generator=gen))
        if r < 0.15 and i < n - 2:
            parts.append("(" + atoms[int(torch.randint(0, 5, (), generator=gen))] + ")")
        elif r < 0.25:
            parts.append("=")
        elif r < 0.32 and i < n - 3:
            parts.append("2" if ring_open else "1")
            ring_open = not ring_open
    s = "".join(parts).rstrip("=")
    return s + ("2" if ring_open else "")


def _smiles_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    while True:
        rows = []
        for _ in range(batch):
            s = _random_smiles(gen)[:length]
            rows.append([_SMILES_ALPHABET.index(ch) for ch in s] + [0] * (length - len(s)))
        yield torch.tensor(rows)


class MaskedMeanPool(nn.Module):
    """Mean of the GRU states over the non-padding characters (sum / count)."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


class SmilesEncoder(nn.Module):
    def __init__(self, vocab: int, dim: int = 48, latent: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.pool = MaskedMeanPool()
        self.mu = nn.Linear(dim, latent)
        self.logvar = nn.Linear(dim, latent)

    def forward(self, tokens: torch.Tensor):
        h, _ = self.gru(self.embed(tokens))
        pooled = self.pool(h, tokens != 0)
        return self.mu(pooled), self.logvar(pooled)


class SmilesVAE(nn.Module):
    """Character VAE (Gomez-Bombarelli et al. 2018 style): GRU encoder, latent, GRU decoder
    with teacher forcing, conditioned on the latent through its initial state."""

    def __init__(self, vocab: int = len(_SMILES_ALPHABET), dim: int = 48, latent: int = 16):
        super().__init__()
        self.encoder = SmilesEncoder(vocab, dim, latent)
        self.to_h0 = nn.Linear(latent, dim)
        self.dec_embed = nn.Embedding(vocab + 1, dim)  # + a start symbol
        self.decoder = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor):
        mu, logvar = self.encoder(tokens)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        start = torch.full((tokens.shape[0], 1), self.dec_embed.num_embeddings - 1)
        inp = torch.cat([start, tokens[:, :-1]], 1)
        h, _ = self.decoder(self.dec_embed(inp), torch.tanh(self.to_h0(z))[None])
        return self.out(h), mu, logvar


def _vae_loss(model: SmilesVAE, tokens: torch.Tensor, beta: float) -> torch.Tensor:
    logits, mu, logvar = model(tokens)
    rec = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean()
    return rec + beta * kl


@scenario(
    "h107_smiles_char_vae",
    "rmsprop",
    "nonfinite",
    where="encoder.pool",
    diverges=140,
    heldout=True,
    onset=140,
    note="an empty SMILES string (failed canonicalisation) -> 0/0 in the masked mean pooling",
)
def h107_smiles_empty_string_nan(ctx: Context) -> None:
    """A SMILES character VAE (RMSprop, KL annealing). At step 140 one record's SMILES came
    back empty from a canonicalisation that failed, so its row is all padding: the masked mean
    pooling divides 0 by 0, the NaN runs through the latent into the loss, and RMSprop writes
    it into every weight."""
    gen = seeded(10715)
    model = SmilesVAE()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _smiles_batches(gen)
    ctx.attach(model, opt)
    pooled_bad = []
    hook = model.encoder.pool.register_forward_hook(
        lambda m, i, o: pooled_bad.append(
            (bool(torch.isfinite(i[0]).all()), bool(torch.isfinite(o).all()))
        )
    )
    for step in range(170):
        tokens = next(batches)
        if step == 140:
            tokens[5] = 0
        loss = _vae_loss(model, tokens, beta=min(1.0, step / 100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    hook.remove()
    ctx.check("finite before step 140", _finite(ctx.losses[:140]))
    ctx.check("the loss is NaN from step 140", all(math.isnan(v) for v in ctx.losses[140:]))
    ctx.check(
        "the pool had finite inputs and a non-finite output at 140",
        pooled_bad[140] == (True, False),
    )
    ctx.check("the VAE had learnt before", _mean(ctx.losses[130:140]) < 0.6 * ctx.losses[0])


# -- Pix2Struct text decoder: a loss spike after a resume that drops the optimizer state ------


def _pix2struct_decoder(vocab: int = 128, dim: int = 32):
    from transformers import Pix2StructTextConfig, Pix2StructTextModel

    cfg = Pix2StructTextConfig(
        vocab_size=vocab,
        hidden_size=dim,
        d_kv=16,
        d_ff=2 * dim,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        is_decoder=True,
        add_cross_attention=False,
        tie_word_embeddings=False,
    )
    cfg.initializer_range = 0.02  # read by the weight init, missing from the text config
    return Pix2StructTextModel(cfg)


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@scenario(
    "h107_hf_pix2struct_text_decoder",
    "adamw",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=200,
    note="SGDR warm restart at step 200 to 6e-2 (a linear-probe stage's rate) instead of 7.5e-4",
)
def h107_pix2struct_sgdr_restart_spike(ctx: Context) -> None:
    """A Pix2Struct text decoder pre-trained as a byte LM with AdamW under cosine annealing
    with warm restarts (SGDR), cycles of 100 steps, each restart meant to halve the peak. The
    third cycle's peak is read from the wrong config stage (the linear-probe rate, 6e-2): the
    restart jumps the rate 40x above the last peak on a settled model. The loss jumps within a few steps
    and falls back as the cosine brings the rate down."""
    from scenarios.common import text_batches

    gen = seeded(10717)
    model = _pix2struct_decoder()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batches = text_batches(gen, batch=16, length=32)
    ctx.attach(model, opt)
    peak = 3e-3
    for step in range(300):
        cycle, t = divmod(step, 100)
        if t == 0 and cycle > 0:
            peak = 1.5e-3 if cycle == 1 else 6e-2  # cycle 2 reads the probe stage's rate
        for g in opt.param_groups:
            g["lr"] = peak * 0.5 * (1 + math.cos(math.pi * t / 100)) * min(1.0, (step + 1) / 10)
        x, y = next(batches)
        loss = _lm_loss(model(input_ids=x).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    level = _median(ctx.losses[180:200])
    top = max(ctx.losses[200:220])
    ctx.check(f"loss spiked after the restart ({top:.2f} vs {level:.2f})", top > 1.4 * level)
    ctx.check(
        f"the 1st restart (halved) did not ({max(ctx.losses[100:120]):.2f})",
        max(ctx.losses[100:120]) < 1.15 * _median(ctx.losses[80:100]),
    )
    ctx.check("loss settled back", _median(ctx.losses[-20:]) < 1.1 * level)
    ctx.check("losses finite", _finite(ctx.losses))


# -- X-CLIP vision tower on generated two-frame digit clips: a control -------------------------


class XClipDigitClips(nn.Module):
    """An X-CLIP vision tower (ViT over 2x2 patches, with its message tokens across frames)
    embedding each frame of a clip; the frame embeddings are averaged and classified."""

    def __init__(self, frames: int = 2) -> None:
        super().__init__()
        from transformers import XCLIPVisionConfig, XCLIPVisionModel

        cfg = XCLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=8,
            patch_size=2,
            num_channels=1,
            num_frames=frames,
            attention_dropout=0.0,
            drop_path_rate=0.0,
        )
        self.frames = frames
        self.vision = XCLIPVisionModel(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b = clips.shape[0]
        out = self.vision(pixel_values=clips.reshape(b * self.frames, 1, 8, 8)).pooler_output
        return self.head(out.reshape(b, self.frames, -1).mean(1))


def _digit_clips(gen: torch.Generator, batch: int = 48):
    """A clip: a digit, then the same digit shifted by one pixel with fresh noise."""
    for x, y in digit_batches(gen, batch):
        img = x.reshape(-1, 8, 8)
        shift = int(torch.randint(-1, 2, (), generator=gen))
        second = torch.roll(img, shift, dims=2) + 0.05 * torch.randn(img.shape, generator=gen)
        yield torch.stack([img, second], 1), y


@scenario(
    "h107_hf_xclip_vision_clips",
    "adamw",
    "healthy",
    diverges=None,
    heldout=True,
    note="control: warm-up then cosine, weight decay, gradient clipping at 1",
)
def h107_xclip_digit_clips_control(ctx: Context) -> None:
    """An X-CLIP vision tower classifying generated two-frame digit clips: AdamW at 2e-3 with
    a 20-step warm-up and cosine decay, weight decay 0.05, clipping at 1."""
    gen = seeded(10718)
    model = XClipDigitClips()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    batches = _digit_clips(gen)
    ctx.attach(model, opt)
    total = 240
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = (
                2e-3 * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / total))
            )
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell 2.5x", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:5]) / 2.5)
