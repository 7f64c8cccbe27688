"""Held-out set 39 (``h39_``): Hugging Face Apertus causal LM, CamemBERT sequence classifier,
SigLIP2 vision image classifier, MRA classifier and dots.llm1 (Dots1) MoE causal LM from configs,
C51 distributional DQN on a generated gridworld, DnCNN residual denoiser (digits), ConvS2S
gated-convolution seq2seq on generated token sequences, PNA (principal neighbourhood
aggregation) graph net on generated graphs, IWAE (importance-weighted autoencoder, digits),
DeepHit competing-risks survival net on generated censored data, HRNet-style multi-resolution
pose-heatmap net on generated images (fp16 autocast).

Optimizers: SGD, SGD with momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad, RAdam, NAdam,
Adamax and steadygrad's Lion and AdaBelief.

Written without reading ``steadygrad/diagnose/detectors/``, ``diagnosis.py``,
``steadygrad/monitor/`` or any other held-out case file, and never run on steadygrad while it
was written: each scenario was adjusted, with a stand-in context that attaches nothing, only
until its own checks held (the fault really happened) or, for a healthy control, until it
trained normally.
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
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

VOCAB = 64


# -- Hugging Face models from configs -------------------------------------------------------------


def _apertus(vocab: int = VOCAB, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import ApertusConfig, ApertusForCausalLM

    config = ApertusConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return ApertusForCausalLM(config)


def _dots1(vocab: int = VOCAB, dim: int = 32):
    from transformers import Dots1Config, Dots1ForCausalLM

    config = Dots1Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        max_position_embeddings=64,
        sliding_window=None,
        layer_types=["full_attention"] * 2,
    )
    return Dots1ForCausalLM(config)


def _camembert(vocab: int = VOCAB, dim: int = 32):
    from transformers import CamembertConfig, CamembertForSequenceClassification

    config = CamembertConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        num_labels=2,
    )
    return CamembertForSequenceClassification(config)


def _mra(vocab: int = VOCAB, dim: int = 32):
    from transformers import MraConfig, MraForSequenceClassification

    config = MraConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        num_labels=2,
    )
    return MraForSequenceClassification(config)


def _siglip2(dim: int = 32):
    from transformers import Siglip2Config, Siglip2ForImageClassification, Siglip2VisionConfig

    vision = Siglip2VisionConfig(
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=1,
        patch_size=2,
        num_patches=16,
    )
    text = dict(vocab_size=VOCAB, hidden_size=dim, intermediate_size=2 * dim)
    text.update(num_hidden_layers=1, num_attention_heads=2, bos_token_id=0, eos_token_id=0)
    config = Siglip2Config(vision_config=vision.to_dict(), text_config=text, num_labels=10)
    return Siglip2ForImageClassification(config)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


def _siglip2_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """8x8 digits as 16 patches of 2x2 pixels (NaFlex inputs: a full mask, a 4x4 grid)."""
    b = x.shape[0]
    patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
    mask = torch.ones(b, 16, dtype=torch.long)
    shapes = torch.tensor([[4, 4]] * b)
    return model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).logits


def _token_batches(gen: torch.Generator, batch: int = 16):
    return bert_batches(gen, batch=batch, length=16, vocab=VOCAB)


def _lm_batches(gen: torch.Generator):
    return text_batches(gen, batch=8, length=16, vocab=VOCAB)


# -- attention-logit growth: Apertus with a sign slip in a hand-written norm-gain decay -----------


@scenario(
    "h39_hf_apertus_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    onset=60,
    heldout=True,
)
def h39_attn_qknorm_gain_apertus_adamw(ctx: Context) -> None:
    """From step 60 (a "resume" that switches on a hand-written decay of the QK-norm gains) the
    decay is applied with the wrong sign: ``gain *= 1 + lr * wd``. The q/k RMSNorm gains grow
    geometrically, the attention logits with their product, until attention is one-hot (the
    loss, noisy on this text, does not climb much: the model leans on one token per query)."""
    gen = seeded(3901)
    model = _apertus()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    gains = [m.weight for n, m in model.named_modules() if n.endswith(("q_norm", "k_norm"))]
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m, _i, out):
            captured[name] = out.detach()

        return hook

    attn0 = model.model.layers[0].self_attn
    attn0.q_norm.register_forward_hook(keep("q"))
    attn0.k_norm.register_forward_hook(keep("k"))

    def scores() -> torch.Tensor:
        q, k = captured["q"], captured["k"]  # (batch, heads, time, head_dim)
        s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
        causal = torch.ones(s.shape[-2:], dtype=torch.bool).tril()
        return s.masked_fill(~causal, float("-inf"))

    def max_logit() -> float:
        s = scores()
        return float(s[torch.isfinite(s)].abs().max())

    seen: list[float] = []

    def bug(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                for g in gains:
                    g.mul_(1.0 + 0.015)
        if captured:
            seen.append(max_logit())

    fit(ctx, model, opt, _lm_batches(gen), 320, before=bug, forward=_logits, loss_fn=lm_loss)
    ctx.check("layer 0 attention logits grew 10x", max(seen[-10:]) > 10 * max(seen[40:60]))
    top = torch.softmax(scores(), -1).amax(-1)[..., 4:]  # rows with 5 keys or more
    ctx.check("layer 0 attention near one-hot", float(top.mean()) > 0.85)


# -- Adam's second moment poisoned: CamemBERT, one step's loss left scaled ------------------------


@scenario(
    "h39_hf_camembert_cls",
    "adam",
    "adam_second_moment_poisoned",
    diverges="auto",
    onset=150,
    heldout=True,
)
def h39_adam_v_poison_camembert(ctx: Context) -> None:
    """A hand-rolled fp16-style loss scale (2**16) is unscaled after backward, except on the
    step after a checkpoint resume (step 150), where the unscale is skipped: one gradient
    65536x too large enters Adam's second moment (beta2 0.999): the first moment, decaying
    faster, first carries the weights some 30 steps' worth along that one gradient (the loss
    jumps), then the steps shrink by an order of magnitude for hundreds of steps."""
    gen = seeded(3902)
    model = _camembert()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dense = model.classifier.dense.weight
    moves: list[float] = []
    prev = [dense.detach().clone()]

    def scaled(step: int, loss: torch.Tensor) -> torch.Tensor:
        moves.append(float((dense.detach() - prev[0]).norm()))
        prev[0] = dense.detach().clone()
        return loss * 65536.0 if step == 150 else loss

    fit(ctx, model, opt, _token_batches(gen), 420, extra_loss=scaled, forward=_logits)
    ctx.check("gradient 1e3x at step 150", ctx.grad_norms[150] > 1e3 * max(ctx.grad_norms[140:150]))
    before = sum(moves[120:150]) / 30
    after = sum(moves[200:260]) / 60
    ctx.check("updates shrank 10x after the poisoned step", after < before / 10)


@scenario("h39_hf_camembert_cls", "adamw", "healthy", heldout=True)
def h39_healthy_camembert_adamw(ctx: Context) -> None:
    gen = seeded(3903)
    model = _camembert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    fit(ctx, model, opt, _token_batches(gen), 300, forward=_logits)
    ctx.check("learnt", sum(ctx.losses[-20:]) / 20 < 0.8 * sum(ctx.losses[:20]) / 20)


# -- a learning rate above the stability limit: SigLIP2, a warm-up to a peak too high ------------


@scenario(
    "h39_hf_siglip2_vision", "sgd_nesterov", "sharpness_above_limit", diverges="auto", heldout=True
)
def h39_lr_warmup_overshoot_siglip2(ctx: Context) -> None:
    """Linear warm-up over 200 steps to a peak learning rate copied from a batch-4096 recipe
    (linear scaling rule applied the wrong way round): Nesterov SGD trains well early in the
    warm-up, then the step size passes the stability limit and the loss blows up."""
    gen = seeded(3904)
    model = _siglip2()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.5 * min(1.0, (step + 1) / 200)

    fit(ctx, model, opt, digit_batches(gen, 32), 240, before=warmup, forward=_siglip2_forward)
    ctx.check("learnt early", min(ctx.losses[20:80]) < 0.8 * ctx.losses[0])


# -- a frozen layer: MRA, a layer-wise decay that zeroes a layer's rate --------------------------


@scenario(
    "h39_hf_mra_cls",
    "radam",
    "update_ratio_out_of_range",
    where="mra.encoder.layer.0",
    heldout=True,
)
def h39_frozen_llrd_mra_radam(ctx: Context) -> None:
    """A linear layer-wise learning-rate scale ``(i + 1) / depth`` written with ``//``: encoder
    layer 0's factor is 0 and its weights never move while the rest trains."""
    gen = seeded(3905)
    model = _mra()
    layer0 = model.mra.encoder.layer[0]
    frozen = {id(p) for p in layer0.parameters()}
    rest = [p for p in model.parameters() if id(p) not in frozen]
    depth = len(model.mra.encoder.layer)
    factor = (0 + 1) // depth  # meant (i + 1) / depth: 0 for layer 0
    opt = torch.optim.RAdam(
        [{"params": list(layer0.parameters()), "lr": 3e-3 * factor}, {"params": rest}], lr=3e-3
    )
    before = layer0.attention.self.query.weight.detach().clone()
    fit(ctx, model, opt, _token_batches(gen), 260, forward=_logits)
    ctx.check("layer 0 unchanged", torch.equal(before, layer0.attention.self.query.weight))
    ctx.check("the rest learnt", sum(ctx.losses[-20:]) < sum(ctx.losses[:20]))


# -- output-logit divergence: Dots1 MoE, an output multiplier inverted ---------------------------


@scenario(
    "h39_hf_dots1_moe_lm",
    "sg_lion",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
)
def h39_logits_head_lr_dots1_lion(ctx: Context) -> None:
    """A muP-style width multiplier for the unembedding's learning rate is applied inverted
    (x100 instead of /100): under Lion every lm_head weight moves by the full rate each step,
    sign by sign, so the rows' common part (which the cross-entropy does not pin down) drifts,
    and the logits drift to large negative values with the log-partition falling."""
    gen = seeded(3906)
    model = _dots1()
    head = list(model.lm_head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("lm_head.")]
    opt = sgo.Lion([{"params": rest}, {"params": head, "lr": 3e-4 * 100}], lr=3e-4, fused=False)
    log_z: list[float] = []
    mean_logit: list[float] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = m(x).logits
        log_z.append(float(torch.logsumexp(out.detach().float(), -1).mean()))
        mean_logit.append(float(out.detach().float().mean()))
        return out

    fit(ctx, model, opt, _lm_batches(gen), 300, forward=forward, loss_fn=lm_loss)
    ctx.check("mean logit drifted below -10", max(mean_logit[-20:]) < -10.0)
    ctx.check("log Z fell by 4 or more", max(log_z[-20:]) < log_z[1] - 4.0)


@scenario("h39_hf_dots1_moe_lm", "adamw", "healthy", heldout=True)
def h39_healthy_dots1_adamw(ctx: Context) -> None:
    gen = seeded(3907)
    model = _dots1()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(ctx, model, opt, _lm_batches(gen), 260, forward=_logits, loss_fn=lm_loss)
    ctx.check("learnt", sum(ctx.losses[-20:]) / 20 < 0.85 * sum(ctx.losses[:20]) / 20)


# -- softmax collapse: C51 on a deterministic gridworld ------------------------------------------


class C51Net(nn.Module):
    def __init__(self, cells: int, actions: int = 4, atoms: int = 21) -> None:
        super().__init__()
        self.actions, self.atoms = actions, atoms
        self.body = nn.Sequential(nn.Linear(cells, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, actions * atoms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).reshape(-1, self.actions, self.atoms)


def _gridworld(size: int = 5):
    """A 5x5 grid, goal at the far corner: reward -1 a step, 0 on reaching the goal (terminal).
    Returns (next state index, reward, done) tables for the 4 moves."""
    cells = size * size
    nxt = torch.zeros(cells, 4, dtype=torch.long)
    for s in range(cells):
        r, c = divmod(s, size)
        for a, (dr, dc) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
            nr, nc = min(max(r + dr, 0), size - 1), min(max(c + dc, 0), size - 1)
            nxt[s, a] = nr * size + nc
    done = nxt == cells - 1
    reward = torch.full((cells, 4), -1.0)
    return nxt, reward, done


@scenario(
    "h39_c51_gridworld",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
)
def h39_softmax_collapse_c51_rmsprop(ctx: Context) -> None:
    """gamma 1 and integer rewards on a support of spacing 1: every projected target is exactly
    one-hot, so the cross-entropy keeps pushing the chosen atom's logit up with no limit;
    with RMSprop the atom logits part until float32 softmax gives the target atom exactly 1
    (and the rest 0: no gradient left through them)."""
    gen = seeded(3908)
    size, atoms = 5, 21
    nxt, reward, done = _gridworld(size)
    cells = size * size
    support = torch.linspace(-20.0, 0.0, atoms)  # spacing 1
    model = C51Net(cells, 4, atoms)
    target_net = C51Net(cells, 4, atoms)
    target_net.load_state_dict(model.state_dict())
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-2, alpha=0.99)
    ctx.attach(model, opt)
    eye = torch.eye(cells)
    last_logits = last_target = None
    for step in range(2000):
        s = torch.randint(0, cells - 1, (64,), generator=gen)
        a = torch.randint(0, 4, (64,), generator=gen)
        s2, r, d = nxt[s, a], reward[s, a], done[s, a]
        with torch.no_grad():
            p2 = torch.softmax(target_net(eye[s2]), -1)
            q2 = (p2 * support).sum(-1)
            a2 = q2.argmax(-1)
            p_next = p2[torch.arange(64), a2]
            tz = (r[:, None] + (~d)[:, None].float() * support[None]).clamp(-20.0, 0.0)
            b = (tz + 20.0).round().long()  # exact on this support
            m = torch.zeros(64, atoms)
            m.scatter_add_(1, torch.where(d[:, None], torch.full_like(b, 19), b), p_next)
            m = torch.where(d[:, None], F.one_hot(torch.full((64,), 19), atoms).float(), m)
        logits = model(eye[s])[torch.arange(64), a]
        loss = -(m * F.log_softmax(logits, -1)).sum(-1).mean()
        ctx.targets(m.argmax(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 25 == 24:
            target_net.load_state_dict(model.state_dict())
        last_logits, last_target = logits.detach(), m.argmax(-1)
    ctx.check("half the rows collapsed", collapsed_fraction(last_logits, last_target) >= 0.5)


# -- a data outlier: DnCNN, one batch not normalised ---------------------------------------------


class DnCNN(nn.Module):
    """Conv-BN-ReLU stack that predicts the noise (the residual); the output is x - noise."""

    def __init__(self, width: int = 16, depth: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU())
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        x = noisy.reshape(-1, 1, 8, 8)
        return (x - self.body(x)).reshape(noisy.shape)


def _denoise_batches(gen: torch.Generator, batch: int = 32, sigma: float = 0.2):
    for x, _ in digit_batches(gen, batch):
        noise = sigma * torch.randn(x.shape, generator=gen)
        yield x + noise, x


@scenario("h39_dncnn_denoiser", "sgd_mom", "data_outlier", diverges=170, onset=170, heldout=True)
def h39_outlier_raw_pixels_dncnn(ctx: Context) -> None:
    """One batch (step 170) comes from a loader path that skipped the /16 scaling: its clean
    and noisy images are 16x too bright, and the residual loss jumps for one step."""
    gen = seeded(3909)
    model = DnCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x * 16.0, y * 16.0) if step == 170 else (x, y)

    fit(
        ctx,
        model,
        opt,
        _denoise_batches(gen),
        260,
        alter=alter,
        loss_fn=F.mse_loss,
        classifier=False,
    )
    ctx.check("loss spiked at 170", ctx.losses[170] > 5 * max(ctx.losses[160:170]))


@scenario("h39_dncnn_denoiser", "adam", "healthy", heldout=True)
def h39_healthy_dncnn_adam(ctx: Context) -> None:
    gen = seeded(3910)
    model = DnCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _denoise_batches(gen), 240, loss_fn=F.mse_loss, classifier=False)
    ctx.check("learnt", sum(ctx.losses[-20:]) < 0.7 * sum(ctx.losses[:20]))


# -- exploding gradients: ConvS2S, one layer's gradient never zeroed -----------------------------


class GatedConv(nn.Module):
    """A 1-D convolution into a GLU, residual scaled by sqrt(1/2) (ConvS2S); causal if asked."""

    def __init__(self, dim: int, kernel: int = 3, causal: bool = False) -> None:
        super().__init__()
        self.pad = (kernel - 1, 0) if causal else ((kernel - 1) // 2, (kernel - 1) // 2)
        self.conv = nn.Conv1d(dim, 2 * dim, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, t, d)
        h = F.glu(self.conv(F.pad(x.transpose(1, 2), self.pad)), dim=1).transpose(1, 2)
        return (x + h) * math.sqrt(0.5)


class ConvS2S(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 32, length: int = 10) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, dim)
        self.tgt_embed = nn.Embedding(vocab + 1, dim)  # + a start token
        self.pos = nn.Embedding(length, dim)
        self.encoder = nn.ModuleList(GatedConv(dim) for _ in range(2))
        self.decoder = nn.ModuleDict(
            {
                "layers": nn.ModuleList(GatedConv(dim, causal=True) for _ in range(2)),
                "attn_in": nn.Linear(dim, dim),
                "out": nn.Linear(dim, vocab),
            }
        )
        self.vocab = vocab

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        pos = self.pos(torch.arange(src.shape[1]))
        e = self.src_embed(src) + pos
        for layer in self.encoder:
            e = layer(e)
        h = self.tgt_embed(tgt_in) + pos
        for layer in self.decoder["layers"]:
            h = layer(h)
        scores = self.decoder["attn_in"](h) @ e.transpose(1, 2) / math.sqrt(h.shape[-1])
        h = h + torch.softmax(scores, -1) @ e
        return self.decoder["out"](h)


@scenario(
    "h39_convs2s_gated_conv",
    "sgd",
    "exploding_gradients",
    where="decoder.layers.1",
    diverges="auto",
    onset=100,
    heldout=True,
)
def h39_explode_decay_sign_convs2s_sgd(ctx: Context) -> None:
    """A per-module decoupled weight-decay table, switched on at step 100 (after a warm start),
    has a sign typo for decoder layer 1's convolution: its weights are multiplied by
    ``1 + lr * wd`` every step. The layer's output, and the gradients flowing back through
    it, grow geometrically until the run blows up."""
    gen = seeded(3911)
    vocab, length = 16, 10
    model = ConvS2S(vocab, 32, length)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    ctx.attach(model, opt)
    conv = model.decoder["layers"][1].conv
    layer_grads: list[float] = []
    for step in range(400):
        src = torch.randint(0, vocab, (32, length), generator=gen)
        tgt = src.flip(1)  # reverse the sequence
        tgt_in = torch.cat([torch.full((32, 1), vocab), tgt[:, :-1]], 1)
        logits = model(src, tgt_in)
        ctx.targets(tgt.reshape(-1))
        loss = lm_loss(logits, tgt)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        layer_grads.append(float(conv.weight.grad.norm()))
        opt.step()
        if step >= 100:
            with torch.no_grad():
                conv.weight.mul_(1.0 + 0.3 * 0.05)  # 1 - lr * wd, with wd = -0.05 meant +0.05
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = [g for g in ctx.grad_norms if math.isfinite(g)]
    ctx.check("gradient norm grew 20x", max(finite[150:]) > 20 * min(finite[80:100]))
    ctx.check(
        "the layer's gradient grew 20x", max(layer_grads[150:]) > 20 * min(layer_grads[80:100])
    )


# -- PNA graph net: dead units from an activation-sparsity penalty; a healthy control ------------


class PNALayer(nn.Module):
    """Principal neighbourhood aggregation: mean/max/min/std of messages, each scaled by
    identity, amplification and attenuation of the log degree, then a post MLP (ReLU)."""

    def __init__(self, dim: int, delta: float) -> None:
        super().__init__()
        self.pre = nn.Linear(2 * dim, dim)
        self.post = nn.Linear(12 * dim + dim, dim)
        self.delta = delta

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        pair = torch.cat([h[:, :, None].expand(b, n, n, d), h[:, None].expand(b, n, n, d)], -1)
        msg = self.pre(pair)  # message j -> i at [:, i, j]
        mask = adj[..., None] > 0
        deg = adj.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (msg * mask).sum(2) / deg
        var = ((msg - mean[:, :, None]) ** 2 * mask).sum(2) / deg
        big = torch.finfo(msg.dtype).max / 4
        has = mask.any(2)  # a node without neighbours aggregates to 0
        mx = torch.where(has, torch.where(mask, msg, -big).amax(2), 0.0)
        mn = torch.where(has, torch.where(mask, msg, big).amin(2), 0.0)
        aggs = torch.cat([mean, mx, mn, torch.sqrt(var + 1e-5)], -1)
        logd = torch.log(deg + 1.0)
        scaled = torch.cat([aggs, aggs * logd / self.delta, aggs * self.delta / logd], -1)
        return self.post(torch.cat([h, scaled], -1))


class PNA(nn.Module):
    def __init__(self, feats: int = 4, dim: int = 24, classes: int = 3, delta: float = 1.5):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.layers = nn.ModuleList(PNALayer(dim, delta) for _ in range(2))
        self.readout = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, classes))
        self.acts: list[torch.Tensor] = []

    def forward(self, graph: torch.Tensor) -> torch.Tensor:
        x, adj = graph[..., :4], graph[..., 4:]
        h = F.relu(self.embed(x))
        self.acts = []
        for layer in self.layers:
            h = F.relu(layer(h, adj))
            self.acts.append(h)
        return self.readout(h.mean(1))


def _graph_batches(gen: torch.Generator, batch: int = 32, nodes: int = 10):
    """Random graphs of three kinds (sparse random, ring with chords, hub-and-spokes); node
    features are noise plus the degree; label: the kind."""
    while True:
        kind = torch.randint(0, 3, (batch,), generator=gen)
        adj = torch.zeros(batch, nodes, nodes)
        for i in range(batch):
            if kind[i] == 0:
                a = (torch.rand(nodes, nodes, generator=gen) < 0.25).float()
            elif kind[i] == 1:
                a = torch.zeros(nodes, nodes)
                idx = torch.arange(nodes)
                a[idx, (idx + 1) % nodes] = 1.0
                a[idx, (idx + 3) % nodes] = (torch.rand(nodes, generator=gen) < 0.3).float()
            else:
                a = torch.zeros(nodes, nodes)
                hub = int(torch.randint(0, nodes, (1,), generator=gen))
                a[hub] = (torch.rand(nodes, generator=gen) < 0.8).float()
                a[:, hub] = 0
                extra = (torch.rand(nodes, nodes, generator=gen) < 0.05).float()
                a = a + extra
            a = ((a + a.T) > 0).float()
            a.fill_diagonal_(0.0)
            adj[i] = a
        deg = adj.sum(-1, keepdim=True)
        feats = torch.cat([torch.randn(batch, nodes, 3, generator=gen), deg / 4.0], -1)
        yield torch.cat([feats, adj], -1), kind


@scenario(
    "h39_pna_graph",
    "adagrad",
    "loss_of_plasticity",
    where=("layers.1.post", "layers.1"),
    diverges=None,
    onset=80,
    heldout=True,
)
def h39_dead_units_sparsity_pna_adagrad(ctx: Context) -> None:
    """From step 80 an activation-sparsity penalty (L1 on layer 1's post-ReLU output, meant to
    make node embeddings sparse) is switched on with a weight 100x what was meant: it pushes
    every unit of layer 1 below zero, and a ReLU unit that never fires gets no gradient back."""
    gen = seeded(3912)
    model = PNA()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)

    def sparsity(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 80:
            return loss
        return loss + 5.0 * model.acts[1].abs().mean()

    fit(ctx, model, opt, _graph_batches(gen), 260, extra_loss=sparsity)
    g, _ = next(_graph_batches(gen, 128))
    with torch.no_grad():
        model(g)
    ctx.check("layer 1 three quarters dead", dead_fraction(model.acts[1]) >= 0.75)
    ctx.check("layer 0 alive", dead_fraction(model.acts[0]) < 0.5)


@scenario("h39_pna_graph", "sgd_mom", "healthy", heldout=True)
def h39_healthy_pna_momentum(ctx: Context) -> None:
    gen = seeded(3913)
    model = PNA()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fit(ctx, model, opt, _graph_batches(gen), 300)
    ctx.check("learnt", sum(ctx.losses[-20:]) < 0.7 * sum(ctx.losses[:20]))


# -- a one-off NaN from one module on one bad sample: IWAE's logit dequantisation ----------------


class LogitDequant(nn.Module):
    """Maps intensities in [0, 1] to logit space, squeezed by ``alpha`` (as flows and IWAEs on
    images often do): ``logit(alpha + (1 - 2 alpha) x)``."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.alpha + (1 - 2 * self.alpha) * x
        return torch.log(p) - torch.log(1 - p)


class IWAE(nn.Module):
    def __init__(self, latent: int = 8, samples: int = 5) -> None:
        super().__init__()
        self.dequant = LogitDequant()
        self.encoder = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 64), nn.Tanh(), nn.Linear(64, 64))
        self.samples = samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The IWAE bound's negative, per sample (k importance samples)."""
        mu, logvar = self.encoder(self.dequant(x) / 3.0).chunk(2, -1)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(self.samples, *mu.shape)
        z = mu + std * eps
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits).clamp(0, 1), reduction="none"
        ).sum(-1)
        log_pz = -0.5 * (z**2).sum(-1)
        log_qz = (-0.5 * eps**2 - torch.log(std)).sum(-1)
        log_w = log_px + log_pz - log_qz
        return -(torch.logsumexp(log_w, 0) - math.log(self.samples))


@scenario(
    "h39_iwae_digits", "adamax", "nonfinite", where="dequant", diverges=143, onset=143, heldout=True
)
def h39_nan_dequant_one_sample_iwae(ctx: Context) -> None:
    """At step 143 one digit arrives with a pixel of 17/16 (an augmentation's brightness jitter
    that forgot to clip): the logit dequantisation takes the log of a negative number and that
    sample's features are NaN; the bound, and every weight after the update, follow."""
    gen = seeded(3914)
    model = IWAE()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 143:
            x = x.clone()
            x[7, 27] = 17.0 / 16.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        180,
        alter=alter,
        classifier=False,
        loss_fn=lambda out, _y: out.mean(),
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 143, not after", all(finite[:143]) and not finite[143])
    ctx.check("learnt before", sum(ctx.losses[120:140]) < 0.8 * sum(ctx.losses[:20]))


# -- a slow divergence: DeepHit with a log-prior of the wrong sign -------------------------------


class DeepHit(nn.Module):
    """Shared trunk, one sub-network per competing risk, one softmax over (risk, time bin)."""

    def __init__(self, feats: int = 8, risks: int = 2, bins: int = 16) -> None:
        super().__init__()
        self.risks, self.bins = risks, bins
        self.shared = nn.Sequential(nn.Linear(feats, 32), nn.ReLU())
        self.cause_nets = nn.ModuleList(
            nn.Sequential(nn.Linear(32 + feats, 32), nn.ReLU(), nn.Linear(32, bins))
            for _ in range(risks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.shared(x), x], -1)
        return torch.cat([net(h) for net in self.cause_nets], -1)  # logits over risks x bins


def _survival_batches(gen: torch.Generator, batch: int = 64, feats: int = 8, bins: int = 16):
    """Two competing exponential risks whose hazards depend on the features, censoring at
    random; y = (event: 0 censored / 1 / 2, time bin)."""
    w1 = torch.randn(feats, generator=torch.Generator().manual_seed(1)) * 0.6
    w2 = torch.randn(feats, generator=torch.Generator().manual_seed(2)) * 0.6
    while True:
        x = torch.randn(batch, feats, generator=gen)
        u = torch.rand(batch, 3, generator=gen)
        t1 = -torch.log(u[:, 0]) / (0.15 * torch.exp(x @ w1))
        t2 = -torch.log(u[:, 1]) / (0.10 * torch.exp(x @ w2))
        tc = -torch.log(u[:, 2]) / 0.05
        t = torch.stack([t1, t2, tc], 1)
        first = t.argmin(1)
        event = torch.where(first == 2, 0, first + 1)
        time = t.min(1).values.clamp(max=bins - 1).long()
        yield x, torch.stack([event, time], 1)


def _deephit_loss(logits: torch.Tensor, y: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Negative log-likelihood (event: its (risk, bin) cell; censored: all mass from its bin on)
    plus the ranking term (alpha 0.2, sigma 0.5) on the cause-specific incidence."""
    logp = F.log_softmax(logits, -1)
    event, time = y[:, 0], y[:, 1]
    cell = (event.clamp(min=1) - 1) * bins + time
    nll_event = -logp.gather(1, cell[:, None]).squeeze(1)
    later = torch.arange(bins)[None] >= time[:, None]
    later = later.repeat(1, logits.shape[1] // bins)
    nll_cens = -torch.logsumexp(torch.where(later, logp, -1e4), -1)
    nll = torch.where(event > 0, nll_event, nll_cens).mean()
    p = logp.exp().reshape(len(y), -1, bins)
    cif = p.cumsum(-1)  # (n, risks, bins)
    rank = logits.new_zeros(())
    for k in range(p.shape[1]):
        at = cif[:, k].gather(1, time[:, None]).squeeze(1)  # F_k(t_i | x_i)
        others = cif[:, k][:, time].T  # [i, j] = F_k(t_i | x_j)
        pairs = ((event == k + 1)[:, None] & (time[:, None] < time[None])).float()
        rank = rank + (pairs * torch.exp(-(at[:, None] - others) / 0.5)).sum() / len(y)
    return nll + 0.2 * rank


@scenario("h39_deephit_survival", "nadam", "loss_divergence", diverges="auto", heldout=True)
def h39_slow_divergence_prior_sign_deephit(ctx: Context) -> None:
    """A Gaussian log-prior on the weights, meant as L2 regularisation, is added to the loss
    (it should be subtracted: the loss is the negative log-likelihood): every weight is pushed
    away from zero, a little each step, and the loss creeps up over hundreds of steps."""
    gen = seeded(3915)
    model = DeepHit()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]

    def log_prior_sign(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + 0.05 * sum(-(w**2).sum() for w in weights)

    fit(
        ctx,
        model,
        opt,
        _survival_batches(gen),
        500,
        loss_fn=_deephit_loss,
        extra_loss=log_prior_sign,
        classifier=False,
    )
    ctx.check("learnt first", min(ctx.losses[:100]) < 0.9 * ctx.losses[0])
    ctx.check("loss at the end over twice its best", min(ctx.losses[-10:]) > 2 * min(ctx.losses))


# -- benign AMP overflow: HRNet-style heatmap net under fp16 autocast ----------------------------


class HRNet(nn.Module):
    """Two resolutions in parallel (16x16 and 8x8) that exchange features twice, heatmaps
    predicted at the high resolution."""

    def __init__(self, width: int = 8, joints: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width))
        self.high = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(2))
        self.low = nn.ModuleList(nn.Conv2d(2 * width, 2 * width, 3, padding=1) for _ in range(2))
        self.down = nn.ModuleList(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1) for _ in range(2)
        )
        self.up = nn.ModuleList(nn.Conv2d(2 * width, width, 1) for _ in range(2))
        self.head = nn.Conv2d(width, joints, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(img))
        low = F.relu(self.down[0](h))
        for i in range(2):
            h2 = F.relu(self.high[i](h))
            l2 = F.relu(self.low[i](low))
            h = h2 + F.interpolate(self.up[i](l2), scale_factor=2.0, mode="nearest")
            low = l2 + self.down[1](h2) if i == 0 else l2
        return self.head(h)


def _pose_batches(gen: torch.Generator, batch: int = 16, size: int = 16, joints: int = 3):
    """Images of three joints (Gaussian blobs of different brightness, a limb drawn between
    consecutive ones) and their target heatmaps."""
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1)
    grid = grid.float()
    while True:
        pts = 2 + torch.rand(batch, joints, 2, generator=gen) * (size - 4)
        d2 = ((grid[None, None] - pts[:, :, None, None]) ** 2).sum(-1)
        heat = torch.exp(-d2 / 2.0)
        amp = torch.tensor([1.0, 0.7, 0.4])[None, :, None, None]
        img = (heat * amp).sum(1, keepdim=True)
        for j in range(joints - 1):
            for t in torch.linspace(0, 1, 8):
                p = pts[:, j] * (1 - t) + pts[:, j + 1] * t
                d = ((grid[None] - p[:, None, None]) ** 2).sum(-1)
                img[:, 0] += 0.15 * torch.exp(-d / 0.5)
        img = img + 0.05 * torch.randn(img.shape, generator=gen)
        yield img, heat


@scenario("h39_hrnet_pose", "sg_adabelief", "amp_overflow", diverges=None, heldout=True)
def h39_amp_overflow_hrnet_adabelief(ctx: Context) -> None:
    """fp16 autocast with a GradScaler started at 2**24 (copied from a bf16-era config): the
    first steps' scaled gradients overflow fp16, the scaler skips them and halves its scale
    until it fits; training then goes on normally."""
    gen = seeded(3916)
    model = HRNet()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)

    def heat_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 100.0 * F.mse_loss(out, target)

    fit(
        ctx,
        model,
        opt,
        _pose_batches(gen),
        150,
        loss_fn=heat_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the scaler backed off", min(ctx.scales) < 2.0**24)
    ctx.check("learnt", sum(ctx.losses[-20:]) < 0.6 * sum(ctx.losses[:20]))
