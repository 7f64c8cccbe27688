"""Held-out scenarios, set 89 (``h89_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face Emu3 text, Mllama text, Kosmos-2 text and Qwen3.5-MoE text causal LMs and
a Speech2Text encoder-decoder (generated log-mel-like frames) from configs; a neural Turing
machine on a copy task, a capsule network with dynamic routing on digits, an energy-based model
with short-run Langevin sampling, a DiffWave-style denoiser on generated sine mixtures, a
temporal fusion transformer on generated multi-horizon series, a pointer network sorting numbers,
a Sinkhorn optimal-transport domain-adaptation classifier and a contrastive-predictive-coding
encoder on generated audio.

Optimizers: AdamW, Adam (one under fp16 autocast with a GradScaler), RAdam, Adamax, RMSprop,
Adagrad, ASGD, SGD, SGD with momentum, and steadygrad.optim's Lion, AdEMAMix, AdaBelief, Grams
and StableSPAM.
"""

from __future__ import annotations

import copy
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

_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_TEXT = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    **_IDS,
)


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x, use_cache=False).logits


def _falling(losses: list[float], k: int = 20) -> bool:
    head, tail = losses[:k], losses[-k:]
    return all(math.isfinite(v) for v in losses) and sum(tail) / k < 0.8 * sum(head) / k


def _first_nonfinite_module(model: nn.Module, run) -> str | None:
    """The first module (in execution order) whose output holds a NaN/Inf while ``run()``."""
    seen: list[str] = []
    hooks = []

    def hook(name):
        def fn(_m, _i, out):
            outs = out if isinstance(out, tuple) else (out,)
            for o in outs:
                if torch.is_tensor(o) and o.is_floating_point() and not torch.isfinite(o).all():
                    seen.append(name)
                    return

        return fn

    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen[0] if seen else None


# -- Hugging Face Emu3 text: attention-logit growth ----------------------------------------------


def _qk_logit_max(model: nn.Module, idx: torch.Tensor) -> float:
    """Largest causal |q.k|/sqrt(d_head) over the layers, from q_proj/k_proj outputs (no RoPE:
    rotation keeps the norms, so the scale is the same)."""
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for part in ("q_proj", "k_proj"):
            mod = getattr(layer.self_attn, part)
            hooks.append(
                mod.register_forward_hook(
                    lambda _m, _i, o, key=f"{i}.{part}": got.__setitem__(key, o.detach())
                )
            )
    with torch.no_grad():
        model(input_ids=idx, use_cache=False)
    for h in hooks:
        h.remove()
    heads = model.config.num_attention_heads
    top = 0.0
    t = idx.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(len(model.model.layers)):
        q, k = got[f"{i}.q_proj"], got[f"{i}.k_proj"]
        b = q.shape[0]
        q, k = (z.reshape(b, t, heads, -1).transpose(1, 2) for z in (q, k))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        top = max(top, float(s.masked_fill(~mask, 0).abs().amax()))
    return top


@scenario(
    "h89_hf_emu3_text_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a param group with a 25x learning rate, no weight decay, no QK-norm",
)
def h89_emu3_qk_group_lr_typo(ctx: Context) -> None:
    """A fine-tuning script gives 'attention' its own param group meant to have a *lower* LR but
    multiplies instead of divides: q_proj/k_proj train at 5e-2 while the rest is at 2e-3."""
    from transformers import Emu3ForCausalLM, Emu3TextConfig

    gen = seeded(8901)
    model = Emu3ForCausalLM(Emu3TextConfig(**_TEXT))
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": qk, "lr": 5e-2}], weight_decay=0.0
    )
    probe, _ = next(text_batches(seeded(1)))
    start = _qk_logit_max(model, probe)
    fit(ctx, model, opt, text_batches(gen), 260, loss_fn=lm_loss, forward=_hf_logits)
    end = _qk_logit_max(model, probe)
    ctx.check("attention logits grew 20x", end > 20 * start)
    ctx.check("run stays finite", all(math.isfinite(v) for v in ctx.losses))


# -- Hugging Face Mllama text: output-logit divergence --------------------------------------------


def _log_z(model: nn.Module, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.logsumexp(_hf_logits(model, idx).float(), -1).mean())


@scenario(
    "h89_hf_mllama_text_lm",
    "sg_lion",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="z-loss added with the wrong sign (rewards a large log-partition)",
)
def h89_mllama_zloss_sign(ctx: Context) -> None:
    """The PaLM-style auxiliary z-loss (1e-1 * log Z^2, a scaled-up coefficient) is subtracted instead of added, so the
    optimizer is paid to push log Z up; Lion's sign updates make the drift steady."""
    from transformers import MllamaForCausalLM, MllamaTextConfig

    gen = seeded(8902)
    model = MllamaForCausalLM(MllamaTextConfig(**_TEXT, cross_attention_layers=[]))
    opt = sgo.Lion(model.parameters(), lr=3e-3, weight_decay=0.0)
    probe, _ = next(text_batches(seeded(1)))
    start = _log_z(model, probe)
    logits_seen: list[torch.Tensor] = []

    def forward(m, x):
        out = _hf_logits(m, x)
        logits_seen.append(out)
        return out

    def wrong_sign_zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(logits_seen.pop().float(), -1)
        return loss - 1e-1 * z.pow(2).mean()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        170,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=wrong_sign_zloss,
    )
    end = _log_z(model, probe)
    ctx.check("log Z drifted up by 20+", end > start + 20)


# -- Hugging Face Kosmos-2 text: a loss spike from a checkpoint rollback -------------------------


@scenario(
    "h89_hf_kosmos2_text_lm",
    "radam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=260,
    note="a resume at step 260 loads the step-20 checkpoint's weights (wrong file), keeps the "
    "optimizer state",
)
def h89_kosmos2_stale_checkpoint_resume(ctx: Context) -> None:
    from transformers import Kosmos2TextConfig
    from transformers.models.kosmos2.modeling_kosmos2 import Kosmos2TextForCausalLM

    gen = seeded(8903)
    cfg = Kosmos2TextConfig(
        vocab_size=128,
        embed_dim=32,
        ffn_dim=64,
        layers=2,
        attention_heads=2,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        **_IDS,
    )
    model = Kosmos2TextForCausalLM(cfg)
    opt = torch.optim.RAdam(model.parameters(), lr=4e-3)
    saved: dict[str, dict] = {}

    def before(step: int) -> None:
        if step == 20:
            saved["early"] = copy.deepcopy(model.state_dict())
        if step == 260:  # "resume": picks checkpoint-20 instead of checkpoint-260
            model.load_state_dict(saved["early"])

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        420,
        loss_fn=lm_loss,
        forward=_hf_logits,
        before=before,
    )
    pre = sum(ctx.losses[240:260]) / 20
    ctx.check("loss jumps 30%+ at 260", ctx.losses[260] > 1.3 * pre)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- Hugging Face Qwen3.5-MoE text: healthy ------------------------------------------------------


@scenario("h89_hf_qwen3_5_moe_text_lm", "sg_ademamix", "healthy", heldout=True)
def h89_qwen3_5_moe_healthy(ctx: Context) -> None:
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    gen = seeded(8904)
    cfg = Qwen3_5MoeTextConfig(
        **_TEXT,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        head_dim=16,
        layer_types=["full_attention", "full_attention"],
    )
    model = Qwen3_5MoeForCausalLM(cfg)
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss, forward=_hf_logits)
    ctx.check("loss falls, finite", _falling(ctx.losses))


# -- Hugging Face Speech2Text: fp16 overflow after a feature-pipeline change ----------------------


def _s2t_batches(gen: torch.Generator, batch: int = 16, raw_from: int | None = None):
    """Generated log-mel-like frames: 8 tokens, each a 5-frame burst in one of 16 channels;
    target: the token sequence. From ``raw_from`` on, the features come without the log
    (power values), as a changed preprocessing step would send them."""
    step = 0
    while True:
        y = torch.randint(3, 19, (batch, 8), generator=gen)
        x = 0.3 * torch.randn(batch, 40, 16, generator=gen) - 2.0
        for j in range(8):
            ch = (y[:, j] - 3) % 16
            x[
                torch.arange(batch)[:, None], torch.arange(5 * j, 5 * j + 5)[None, :], ch[:, None]
            ] = 2.0 + 0.3 * torch.randn(batch, 5, generator=gen)
        if raw_from is not None and step >= raw_from:
            x = torch.exp(4.0 * x + 3.0)  # power spectrum: the log step dropped
        step += 1
        yield x, y


def _s2t_forward(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dec_in = torch.cat([torch.ones_like(y[:, :1]), y[:, :-1]], 1)
    return m(input_features=x, decoder_input_ids=dec_in, use_cache=False).logits


@scenario(
    "h89_hf_speech_to_text_asr",
    "adam",
    "amp_overflow",
    where="model.encoder.conv.conv_layers.0",
    diverges=150,
    heldout=True,
    onset=150,
    note="fp16 autocast + GradScaler; from step 150 the features arrive without the log "
    "(a preprocessing change), the first subsampling conv overflows fp16",
)
def h89_s2t_fp16_raw_power_features(ctx: Context) -> None:
    from transformers import Speech2TextConfig, Speech2TextForConditionalGeneration

    gen = seeded(8905)
    cfg = Speech2TextConfig(
        vocab_size=128,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        input_feat_per_channel=16,
        input_channels=1,
        conv_channels=32,
        num_conv_layers=2,
        max_source_positions=64,
        max_target_positions=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        decoder_start_token_id=1,
        **_IDS,
    )
    model = Speech2TextForConditionalGeneration(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _s2t_batches(gen, raw_from=150)
    last_x = None
    for _step in range(260):
        x, y = next(batches)
        last_x = (x, y)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = _s2t_forward(model, x, y)
        loss = lm_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ok = all(math.isfinite(v) for v in ctx.losses[:150])
    ctx.check("finite and learning before 150", ok and ctx.losses[149] < 0.8 * ctx.losses[0])
    ctx.check("non-finite from 150", not math.isfinite(ctx.losses[150]))
    ctx.check("scale collapsed (steps skipped)", ctx.scales[-1] < ctx.scales[149] / 2**10)

    def run():
        with torch.autocast("cpu", dtype=torch.float16):
            _s2t_forward(model, *last_x)

    ctx.check(
        "first overflow in the first conv",
        _first_nonfinite_module(model, run) == "model.encoder.conv.conv_layers.0",
    )


# -- neural Turing machine on a copy task: exploding gradients -----------------------------------


class NTM(nn.Module):
    """A small NTM: an RNN-cell controller, one read and one write head with content addressing,
    interpolation with the previous weighting and sharpening, N x M memory."""

    def __init__(self, width: int = 6, hidden: int = 48, n: int = 16, m: int = 8) -> None:
        super().__init__()
        self.n, self.m = n, m
        self.controller = nn.RNNCell(width + 2 + m, hidden, nonlinearity="relu")
        self.read_head = nn.Linear(hidden, m + 3)  # key, beta, gate, gamma
        self.write_head = nn.Linear(hidden, 3 * m + 3)  # key, erase, add, beta, gate, gamma
        self.out = nn.Linear(hidden + m, width)

    @staticmethod
    def _address(mem, key, beta, gate, gamma, prev):
        sim = F.cosine_similarity(mem, key[:, None, :], dim=-1, eps=1e-6)
        w = torch.softmax(F.softplus(beta) * sim, -1)
        w = torch.sigmoid(gate) * w + (1 - torch.sigmoid(gate)) * prev
        w = w.clamp_min(1e-12) ** (1 + F.softplus(gamma))
        return w / w.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        mem = torch.full((b, self.n, self.m), 1e-2)
        h = torch.zeros(b, self.controller.hidden_size)
        r = torch.zeros(b, self.m)
        wr = torch.full((b, self.n), 1.0 / self.n)
        ww = wr
        outs = []
        for i in range(t):
            h = self.controller(torch.cat([x[:, i], r], -1), h)
            m = self.m
            p = self.write_head(h)
            ww = self._address(mem, p[:, :m], p[:, -3], p[:, -2, None], p[:, -1, None], ww)
            erase, add = torch.sigmoid(p[:, m : 2 * m]), torch.tanh(p[:, 2 * m : 3 * m])
            mem = mem * (1 - ww[..., None] * erase[:, None]) + ww[..., None] * add[:, None]
            q = self.read_head(h)
            wr = self._address(mem, q[:, :m], q[:, -3], q[:, -2, None], q[:, -1, None], wr)
            r = (wr[..., None] * mem).sum(1)
            outs.append(self.out(torch.cat([h, r], -1)))
        return torch.stack(outs, 1)


def copy_batches(gen: torch.Generator, batch: int = 16, length: int = 8, width: int = 6):
    """Random bit vectors, a delimiter, then blanks: the target is the bits again."""
    while True:
        bits = (torch.rand(batch, length, width, generator=gen) < 0.5).float()
        x = torch.zeros(batch, 2 * length + 1, width + 2)
        x[:, :length, :width] = bits
        x[:, length, width] = 1.0
        x[:, length + 1 :, width + 1] = 1.0
        yield x, bits


def _copy_loss(out: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out[:, -bits.shape[1] :], bits)


@scenario(
    "h89_ntm_copy",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="IRNN-style ReLU controller (identity recurrent init), copy of 6 bit vectors",
)
def h89_ntm_copy_healthy(ctx: Context) -> None:
    gen = seeded(8906)
    model = NTM()
    with torch.no_grad():
        model.controller.weight_hh.copy_(torch.eye(model.controller.hidden_size))
        model.controller.bias_hh.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(ctx, model, opt, copy_batches(gen, length=6), 150, loss_fn=_copy_loss, classifier=False)
    head, tail = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-20:]) / 20
    ctx.check("loss falls, finite", all(map(math.isfinite, ctx.losses)) and tail < head - 0.05)


# -- capsule network with dynamic routing: NaN from the squash on a blank image -------------------


def _squash(s: torch.Tensor) -> torch.Tensor:
    """|s|^2 / (1 + |s|^2) * s / |s|, with an epsilon (the library-style version)."""
    n2 = (s * s).sum(-1, keepdim=True)
    return n2 / (1 + n2) * s / (n2 + 1e-8).sqrt()


def _squash_paper(s: torch.Tensor) -> torch.Tensor:
    """The same, typed in from the paper for the digit capsules: no epsilon."""
    n2 = (s * s).sum(-1, keepdim=True)
    return n2 / (1 + n2) * s / n2.sqrt()


class PrimaryCaps(nn.Module):
    def __init__(self, cin: int = 16, caps: int = 8, dim: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv2d(cin, caps * dim, 3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.conv(x)
        b, _, h, w = u.shape
        u = u.reshape(b, -1, self.dim, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, self.dim)
        return _squash(u)


class DigitCaps(nn.Module):
    def __init__(self, n_in: int = 128, d_in: int = 4, n_out: int = 10, d_out: int = 8) -> None:
        super().__init__()
        self.W = nn.Parameter(0.1 * torch.randn(n_in, n_out, d_out, d_in))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u_hat = torch.einsum("iodk,bik->biod", self.W, u)
        logits = torch.zeros(u_hat.shape[:3])
        for it in range(3):
            c = torch.softmax(logits, dim=2)
            v = _squash_paper((c[..., None] * u_hat).sum(1))
            if it < 2:
                logits = logits + (u_hat * v[:, None]).sum(-1)
        return v


class CapsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.primary = PrimaryCaps()
        self.digit = DigitCaps()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        return self.digit(self.primary(h)).norm(dim=-1)


def margin_loss(lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = F.one_hot(y, lengths.shape[-1]).float()
    loss = t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return loss.sum(-1).mean()


@scenario(
    "h89_capsnet_routing_digits",
    "adam",
    "nonfinite",
    where="digit",
    diverges=140,
    heldout=True,
    onset=140,
    note="bias-free convs; a blank (all-zero) scan in the batch at step 140 makes every primary "
    "capsule zero, so a digit capsule's input is zero and its epsilon-free squash computes 0/0",
)
def h89_capsnet_blank_scan_squash(ctx: Context) -> None:
    gen = seeded(8907)
    model = CapsNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = x.clone()
            x[5] = 0.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 180, loss_fn=margin_loss, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 140, NaN from 140", all(finite[:140]) and not any(finite[140:]))
    ctx.check("learning before 140", ctx.losses[139] < 0.7 * ctx.losses[0])
    fresh = CapsNet()
    blank = torch.zeros(2, 64)
    ctx.check(
        "the NaN starts in the digit capsules",
        _first_nonfinite_module(fresh, lambda: fresh(blank)) == "digit",
    )


# -- energy-based model, short-run Langevin: Adamax's moments poisoned by one unscaled step -------


class EnergyNet(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def ring_samples(gen: torch.Generator, n: int = 128) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=gen).float() * (2 * math.pi / 8)
    return 2.0 * torch.stack([k.cos(), k.sin()], 1) + 0.1 * torch.randn(n, 2, generator=gen)


def langevin(model: nn.Module, gen: torch.Generator, n: int = 128, steps: int = 15):
    x = 6 * torch.rand(n, 2, generator=gen) - 3
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        g = torch.autograd.grad(model(x).sum(), x)[0]
        x = x - 0.05 * g + 0.05 * torch.randn(n, 2, generator=gen)
    return x.detach()


@scenario(
    "h89_ebm_langevin_2d",
    "adamax",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="at step 150 a loss scale of 65536 (left from an fp16 experiment) is applied without "
    "unscaling: Adamax's infinity-norm state in every layer jumps and later steps shrink",
)
def h89_ebm_unscaled_loss_once(ctx: Context) -> None:
    gen = seeded(8908)
    model = EnergyNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    moved: list[float] = []
    for step in range(320):
        pos = ring_samples(gen)
        neg = langevin(model, gen)
        e_pos, e_neg = model(pos), model(neg)
        loss = e_pos.mean() - e_neg.mean()
        total = loss + 0.1 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        if step == 150:
            total = total * 65536.0
        total.backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moved.append(
            float(
                sum(
                    (p.detach() - b).abs().sum()
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = sum(moved[100:150]) / 50
    post = sum(moved[160:320]) / 160
    ctx.check("updates 20x smaller after the spike", post < pre / 20)
    ctx.check("finite", all(map(math.isfinite, ctx.losses)))


# -- DiffWave-style denoiser on sine mixtures: a warm-up that overshoots --------------------------


class DiffResidual(nn.Module):
    def __init__(self, c: int, e: int, dilation: int) -> None:
        super().__init__()
        self.dil = nn.Conv1d(c, 2 * c, 3, padding=dilation, dilation=dilation)
        self.step_proj = nn.Linear(e, c)
        self.out = nn.Conv1d(c, 2 * c, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor):
        h = self.dil(x + self.step_proj(emb)[..., None])
        a, b = h.chunk(2, 1)
        res, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).chunk(2, 1)
        return (x + res) / math.sqrt(2), skip


class DiffWave(nn.Module):
    def __init__(self, c: int = 24, e: int = 32, dilations=(1, 2, 4, 8, 1, 2)) -> None:
        super().__init__()
        self.e = e
        self.inp = nn.Conv1d(1, c, 1)
        self.emb = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.layers = nn.ModuleList(DiffResidual(c, e, d) for d in dilations)
        self.skip_out = nn.Conv1d(c, c, 1)
        self.final = nn.Conv1d(c, 1, 1)

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = self.e // 2
        freqs = torch.exp(-math.log(1e4) * torch.arange(half) / half)
        ang = t[:, None].float() * freqs[None]
        emb = self.emb(torch.cat([ang.sin(), ang.cos()], -1))
        x = F.relu(self.inp(xt[:, None]))
        skips = 0
        for layer in self.layers:
            x, s = layer(x, emb)
            skips = skips + s
        h = F.relu(self.skip_out(skips / math.sqrt(len(self.layers))))
        return self.final(h)[:, 0]


def sine_mixture_batches(gen: torch.Generator, batch: int = 32, length: int = 64, steps: int = 50):
    betas = torch.linspace(1e-4, 0.05, steps)
    abar = torch.cumprod(1 - betas, 0)
    tt = torch.arange(length).float()
    while True:
        f = 0.02 + 0.2 * torch.rand(batch, 3, 1, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 3, 1, generator=gen)
        amp = 0.2 + 0.5 * torch.rand(batch, 3, 1, generator=gen)
        x0 = (amp * torch.sin(2 * math.pi * f * tt + ph)).sum(1)
        t = torch.randint(0, steps, (batch,), generator=gen)
        eps = torch.randn(batch, length, generator=gen)
        a = abar[t][:, None]
        yield (a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps


@scenario(
    "h89_diffwave_sine_mixtures",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="SGD momentum 0.9, linear warm-up to a peak LR of 1.0 (meant 1e-2) over 150 steps",
)
def h89_diffwave_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(8909)
    model = DiffWave()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def warmup(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 1.0 * min(1.0, (step + 1) / 150)

    fit(
        ctx,
        model,
        opt,
        sine_mixture_batches(gen),
        200,
        loss_fn=F.mse_loss,
        before=warmup,
        classifier=False,
        forward=lambda m, b: m(*b),
    )
    early = min(ctx.losses[:60])
    late = [v if math.isfinite(v) else float("inf") for v in ctx.losses[60:]]
    ctx.check("trained at first", early < 0.8 * ctx.losses[0])
    ctx.check("loss blew up 10x once the LR was high", max(late) > 10 * early)


# -- temporal fusion transformer on generated multi-horizon series --------------------------------


class GRN(nn.Module):
    """Gated residual network: ELU MLP, GLU gate, skip, LayerNorm."""

    def __init__(self, d_in: int, d: int, d_out: int | None = None) -> None:
        super().__init__()
        d_out = d_out or d
        self.fc1 = nn.Linear(d_in, d)
        self.fc2 = nn.Linear(d, 2 * d_out)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.skip(x) + F.glu(self.fc2(F.elu(self.fc1(x))), -1))


class VariableSelection(nn.Module):
    def __init__(self, n_vars: int, d: int) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Linear(1, d) for _ in range(n_vars))
        self.weights = GRN(n_vars * d, d, n_vars)
        self.per_var = nn.ModuleList(GRN(d, d) for _ in range(n_vars))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embs = [e(x[..., i : i + 1]) for i, e in enumerate(self.embed)]
        w = torch.softmax(self.weights(torch.cat(embs, -1)), -1)
        outs = torch.stack([g(e) for g, e in zip(self.per_var, embs, strict=True)], -1)
        return (outs * w[..., None, :]).sum(-1)


class TFT(nn.Module):
    def __init__(self, d: int = 24, past_vars: int = 3, future_vars: int = 2, horizon: int = 6):
        super().__init__()
        self.horizon = horizon
        self.vsn = VariableSelection(past_vars, d)
        self.future_vsn = VariableSelection(future_vars, d)
        self.encoder = nn.LSTM(d, d, batch_first=True)
        self.decoder = nn.LSTM(d, d, batch_first=True)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.post = GRN(d, d)
        self.head = nn.Linear(d, 3)  # quantiles 0.1, 0.5, 0.9

    def forward(self, batch) -> torch.Tensor:
        past, future = batch
        enc, state = self.encoder(self.vsn(past))
        dec, _ = self.decoder(self.future_vsn(future), state)
        seq = torch.cat([enc, dec], 1)
        t = seq.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att, _ = self.attn(seq, seq, seq, attn_mask=mask)
        return self.head(self.post(att[:, -self.horizon :] + dec))


def series_batches(gen: torch.Generator, batch: int = 32, past: int = 24, horizon: int = 6):
    """Seasonal series with trend and noise; past: (value, noisy copy, unrelated covariate);
    future: known sin/cos time features; target: the next ``horizon`` values."""
    while True:
        t0 = torch.randint(0, 12, (batch, 1), generator=gen).float()
        tt = t0 + torch.arange(past + horizon).float()
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        trend = 0.02 * torch.randn(batch, 1, generator=gen)
        y = amp * torch.sin(2 * math.pi * tt / 12) + trend * tt
        y = y + 0.1 * torch.randn(batch, past + horizon, generator=gen)
        noisy = y[:, :past] + 0.3 * torch.randn(batch, past, generator=gen)
        cov = torch.randn(batch, past, generator=gen)
        pst = torch.stack([y[:, :past], noisy, cov], -1)
        ft = tt[:, past:]
        fut = torch.stack([torch.sin(2 * math.pi * ft / 12), torch.cos(2 * math.pi * ft / 12)], -1)
        yield (pst, fut), y[:, past:]


def quantile_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    q = torch.tensor([0.1, 0.5, 0.9])
    err = y[..., None] - pred
    return torch.maximum(q * err, (q - 1) * err).mean()


def _tft_forward(m: nn.Module, b) -> torch.Tensor:
    return m(b)


@scenario(
    "h89_tft_multihorizon",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where="vsn",
    diverges=None,
    heldout=True,
    note="the past-input variable-selection group gets lr=3e-1, 100x the rest (a typo in its "
    "param group)",
)
def h89_tft_vsn_group_lr_typo(ctx: Context) -> None:
    gen = seeded(8910)
    model = TFT()
    vsn = [p for n, p in model.named_parameters() if n.startswith("vsn.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("vsn.")]
    opt = sgo.AdaBelief([{"params": rest, "lr": 3e-3}, {"params": vsn, "lr": 3e-1}], lr=3e-3)
    probes = {"vsn": model.vsn.weights.fc1.weight, "rest": model.future_vsn.weights.fc1.weight}
    ratios: dict[str, list[float]] = {"vsn": [], "rest": []}
    prev: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:
        for k, p in probes.items():
            w = p.detach().clone()
            if k in prev:
                ratios[k].append(float((w - prev[k]).norm() / prev[k].norm().clamp_min(1e-12)))
            prev[k] = w

    fit(
        ctx,
        model,
        opt,
        series_batches(gen),
        150,
        loss_fn=quantile_loss,
        before=before,
        classifier=False,
        forward=_tft_forward,
    )
    vsn_r = sorted(ratios["vsn"])[len(ratios["vsn"]) // 2]
    rest_r = sorted(ratios["rest"])[len(ratios["rest"]) // 2]
    ctx.check("vsn median update/weight ratio 20x the rest's", vsn_r > 20 * rest_r)
    ctx.check("finite", all(map(math.isfinite, ctx.losses)))


@scenario("h89_tft_multihorizon", "sg_grams", "healthy", heldout=True)
def h89_tft_healthy(ctx: Context) -> None:
    gen = seeded(8911)
    model = TFT()
    opt = sgo.Grams(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        series_batches(gen),
        160,
        loss_fn=quantile_loss,
        classifier=False,
        forward=_tft_forward,
    )
    ctx.check("loss falls, finite", _falling(ctx.losses))


# -- pointer network sorting numbers ---------------------------------------------------------------


class Pointer(nn.Module):
    """Unscaled dot-product pointer scores between the decoder state and each input."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.q = nn.Linear(h, h, bias=False)
        self.k = nn.Linear(h, h, bias=False)

    def forward(self, d: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        return (self.k(enc) @ self.q(d)[..., None]).squeeze(-1)


class PointerNet(nn.Module):
    def __init__(self, h: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(1, h)
        self.encoder = nn.LSTM(h, h, batch_first=True)
        self.decoder = nn.LSTMCell(h, h)
        self.start = nn.Parameter(torch.zeros(h))
        self.pointer = Pointer(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape
        enc, (h, c) = self.encoder(self.embed(x[..., None]))
        h, c = h[0], c[0]
        inp = self.start.expand(b, -1)
        out = []
        for _ in range(n):
            h, c = self.decoder(inp, (h, c))
            scores = self.pointer(h, enc)
            out.append(scores)
            inp = enc[torch.arange(b), scores.argmax(-1).detach()]
        return torch.stack(out, 1)


def sort_batches(gen: torch.Generator, batch: int = 32, n: int = 6, fixed: int | None = None):
    pool = torch.rand(fixed, n, generator=gen) if fixed else None
    while True:
        x = pool if pool is not None else torch.rand(batch, n, generator=gen)
        yield x, x.argsort(-1)


def pointer_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1))


@scenario(
    "h89_pointer_net_sort",
    "rmsprop",
    "softmax_collapse",
    where="pointer",
    diverges=None,
    heldout=True,
    note="a debug run left on a fixed set of 32 sequences for 600 steps: the unscaled pointer "
    "scores drive part of the training softmax to exact one-hot in float32",
)
def h89_pointer_overfit_fixed_set(ctx: Context) -> None:
    gen = seeded(8912)
    model = PointerNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)
    batches = sort_batches(gen, fixed=32)
    fit(ctx, model, opt, batches, 600, loss_fn=pointer_loss)
    x, y = next(batches)
    with torch.no_grad():
        scores = model(x)
    frac = collapsed_fraction(scores.reshape(-1, scores.shape[-1]), y.reshape(-1))
    ctx.check("over 15% of training rows exactly one-hot", frac > 0.15)


@scenario("h89_pointer_net_sort", "sg_stablespam", "healthy", heldout=True)
def h89_pointer_healthy(ctx: Context) -> None:
    gen = seeded(8913)
    model = PointerNet()
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, sort_batches(gen), 200, loss_fn=pointer_loss)
    ctx.check("loss falls, finite", _falling(ctx.losses))


# -- Sinkhorn optimal-transport domain adaptation: a corrupted target batch -----------------------


def sinkhorn_cost(fs: torch.Tensor, ft: torch.Tensor, eps: float = 0.5, iters: int = 30):
    """Entropic OT cost between two equal-weight point clouds, log-domain Sinkhorn."""
    c = torch.cdist(fs, ft) ** 2
    n, m = c.shape
    log_a = torch.full((n,), -math.log(n))
    log_b = torch.full((m,), -math.log(m))
    f = torch.zeros(n)
    g = torch.zeros(m)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[None] - c) / eps + log_b[None], 1)
        g = -eps * torch.logsumexp((f[:, None] - c) / eps + log_a[:, None], 0)
    plan = torch.exp((f[:, None] + g[None] - c) / eps + log_a[:, None] + log_b[None])
    return (plan * c).sum()


class OTDANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@scenario(
    "h89_sinkhorn_ot_domain_adaptation",
    "sgd",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=200,
    note="the unlabeled target batch at step 200 holds two scans with a 40x gain glitch",
)
def h89_sinkhorn_target_gain_glitch(ctx: Context) -> None:
    gen = seeded(8914)
    gen_t = torch.Generator().manual_seed(89140)
    model = OTDANet()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    ctx.attach(model, opt)
    src, tgt = digit_batches(gen), digit_batches(gen_t)
    for step in range(300):
        xs, ys = next(src)
        xt, _ = next(tgt)
        xt = 0.6 * xt + 0.3 + 0.05 * torch.randn(xt.shape, generator=gen_t)  # the shifted domain
        if step == 200:
            xt = xt.clone()
            xt[[3, 17]] *= 40.0
        ctx.targets(ys)
        loss = F.cross_entropy(model(xs), ys) + 0.1 * sinkhorn_cost(
            model.features(xs), model.features(xt)
        )
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(ctx.losses[150:200])[25]
    ctx.check("loss spikes 2x at step 200", ctx.losses[200] > 2 * before)
    ctx.check("finite", all(map(math.isfinite, ctx.losses)))
    ctx.check("trained before", before < 0.6 * ctx.losses[0])


# -- contrastive predictive coding on generated audio --------------------------------------------


class CPC(nn.Module):
    def __init__(self, z: int = 32, c: int = 32, ks: int = 3, context: str = "gru") -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(1, 16, 8, stride=4, padding=2),
            nn.ReLU(),
            nn.Conv1d(16, z, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(z, z, 4, stride=2, padding=1),
            nn.ReLU(),
        )
        kind = nn.GRU if context == "gru" else nn.RNN
        self.context = kind(z, c, batch_first=True)
        self.predict = nn.ModuleList(nn.Linear(c, z) for _ in range(ks))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """InfoNCE over k = 1..ks steps ahead, negatives: the other clips at the same time."""
        zs = self.encoder(wave[:, None]).transpose(1, 2)  # (B, T, z)
        cs, _ = self.context(zs)
        b, t, _ = zs.shape
        losses = []
        for k, w in enumerate(self.predict, start=1):
            pred = w(cs[:, : t - k])  # (B, T-k, z)
            target = zs[:, k:]
            scores = torch.einsum("btz,ctz->tbc", pred, target)  # (T-k, B, B)
            labels = torch.arange(b).expand(t - k, b)
            losses.append(F.cross_entropy(scores.reshape(-1, b), labels.reshape(-1)))
        return torch.stack(losses).mean()


def audio_batches(gen: torch.Generator, batch: int = 16, length: int = 512):
    """Two chirping tones with random pitch and phase plus noise."""
    tt = torch.arange(length).float() / length
    while True:
        f0 = 10 + 60 * torch.rand(batch, 2, 1, generator=gen)
        df = 20 * torch.randn(batch, 2, 1, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 2, 1, generator=gen)
        wave = torch.sin(2 * math.pi * (f0 + df * tt) * tt + ph).sum(1)
        yield wave + 0.1 * torch.randn(batch, length, generator=gen), torch.zeros(batch)


def _cpc_loss(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return out


def _cpc_dead(model: CPC, wave: torch.Tensor) -> dict[str, float]:
    got = {}
    with torch.no_grad():
        h = wave[:, None]
        for i, layer in enumerate(model.encoder):
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                got[f"encoder.{i - 1}"] = dead_fraction(h.transpose(1, 2))
    return got


@scenario(
    "h89_cpc_audio",
    "adagrad",
    "loss_of_plasticity",
    where="encoder.2",
    diverges=None,
    heldout=True,
    onset=150,
    note="a schedule table typo sets lr=0.3 (meant 3e-3) for steps 150-152; the big steps push the "
    "second conv's ReLU units below zero for every input and the loss stalls",
)
def h89_cpc_lr_table_typo_dead_relu(ctx: Context) -> None:
    gen = seeded(8915)
    model = CPC()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)

    probe, _ = next(audio_batches(seeded(2), batch=64))
    seen: dict[str, float] = {}

    def schedule(step: int) -> None:
        if step == 150:
            seen.update(_cpc_dead(model, probe))
        for g in opt.param_groups:
            g["lr"] = 0.3 if 150 <= step < 153 else 3e-2

    fit(
        ctx,
        model,
        opt,
        audio_batches(gen),
        240,
        loss_fn=_cpc_loss,
        before=schedule,
        classifier=False,
        forward=lambda m, x: m(x),
    )
    dead = _cpc_dead(model, probe)
    ctx.check(
        "encoder.2 dead share from <30% to >60%", seen["encoder.2"] < 0.3 < 0.6 < dead["encoder.2"]
    )
    pre = sum(ctx.losses[140:150]) / 10
    ctx.check("loss stays 1.3x+ its pre-typo level", sum(ctx.losses[-20:]) / 20 > 1.3 * pre)
    ctx.check("finite", all(map(math.isfinite, ctx.losses)))


@scenario(
    "h89_cpc_audio",
    "asgd",
    "exploding_gradients",
    where="context",
    diverges=None,
    heldout=True,
    note="a plain tanh RNN context whose recurrent matrix is initialised orthogonal with gain 3 "
    "(a config typo), no gradient clipping",
)
def h89_cpc_rnn_context_gain3(ctx: Context) -> None:
    gen = seeded(8916)
    model = CPC(context="rnn")
    nn.init.orthogonal_(model.context.weight_hh_l0, gain=3.0)
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)
    fit(
        ctx,
        model,
        opt,
        audio_batches(gen),
        200,
        loss_fn=_cpc_loss,
        classifier=False,
        forward=lambda m, x: m(x),
    )
    g = [v if math.isfinite(v) else float("inf") for v in ctx.grad_norms]
    ctx.check("gradient norm over 100x its median", max(g) > 100 * sorted(g)[len(g) // 2])
