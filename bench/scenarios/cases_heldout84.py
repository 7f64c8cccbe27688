"""Held-out scenarios, set 84 (``h84_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or its healthy control trained normally).

Families: Hugging Face IQuestCoder, HunYuan-v1-MoE, Sarvam-MLA, Qwen3-Next and GraniteMoE-SWA
causal LMs from configs (bytes), SimPO preference training of a tiny LM, prompt tuning (soft
prompts) on a frozen tiny LM, co-teaching of two classifiers under label noise (digits), a
GFlowNet on a hypergrid with trajectory balance, an energy-based model with short-run Langevin
sampling, a DCN-v2 cross network on generated clicks, a capsule network with dynamic routing
(digits), deep kernel learning (MLP features + RBF GP head, exact marginal likelihood), a
LambdaRank listwise ranker on generated queries, a Dreamer-style RSSM world model (KL balancing)
on a generated point-mass task, a DIEN-style interest-evolution recommender on generated
behaviour sequences (fp16 autocast with a GradScaler).

Optimizers: AdamW, NAdam, RAdam, Adamax, Adam, SGD (plain and momentum), RMSprop, Adagrad and
steadygrad.optim's Lion, Grams, AdaBelief, AdEMAMix and StableSPAM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    Decoder,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def _train(ctx: Context, model: nn.Module, opt, steps: int, loss_at, *, before=None) -> None:
    """A plain loop: ``loss_at(step)`` returns (reported loss, loss to backpropagate)."""
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        shown, total = loss_at(step)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(shown)
        opt.zero_grad(set_to_none=True)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _hf_lm(kind: str, **extra):
    """A tiny Hugging Face causal LM of model type ``kind`` built from its config."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    kw = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    attn = extra.pop("attn_implementation", None)
    kw.update(extra)
    config = CONFIG_MAPPING[kind](**kw)
    if attn is not None:
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return AutoModelForCausalLM.from_config(config)


def _lm_step(model: nn.Module, batches):
    def loss_at(step: int):
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x, use_cache=False).logits, y)
        return loss, loss

    return loss_at


def _log_z(model: nn.Module, idx: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=idx, use_cache=False).logits
    return float(torch.logsumexp(logits.float(), -1).mean())


# -- 1. IQuestCoder: query/key learning rate 25x --------------------------------------------------


def _qk_logit_max(model: nn.Module, idx: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d) per head from the q_proj/k_proj outputs (before rotary)."""
    got: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: got.__setitem__(n, o.detach()))
        for n, m in model.named_modules()
        if n.endswith("q_proj") or n.endswith("k_proj")
    ]
    with torch.no_grad():
        model(input_ids=idx, use_cache=False)
    for h in hooks:
        h.remove()
    heads = model.config.num_attention_heads
    top = 0.0
    for n in got:
        if not n.endswith("q_proj"):
            continue
        q, k = got[n], got[n[:-6] + "k_proj"]
        b, t, d = q.shape
        q = q.reshape(b, t, heads, -1).transpose(1, 2)
        k = k.reshape(b, t, heads, -1).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)
        top = max(top, float(s.abs().amax()))
    return top


def _attn_entropy(model: nn.Module, idx: torch.Tensor) -> float:
    with torch.no_grad():
        att = model(input_ids=idx, use_cache=False, output_attentions=True).attentions
    ent = [-(a.clamp_min(1e-12).log() * a).sum(-1)[..., 8:].mean() for a in att]
    return float(torch.stack(ent).mean())


@scenario(
    "h84_hf_iquestcoder_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q_proj/k_proj in a parameter group at 25x the base LR, no weight decay, no QK-norm",
)
def h84_iquestcoder_qk_group_lr(ctx: Context) -> None:
    """A tiny IQuestCoder LM whose optimizer groups put q_proj/k_proj at lr 5e-2 (a per-module
    override copied from a run with QK-norm) while the rest trains at 2e-3: the query/key
    weights grow, the pre-softmax logits grow by orders of magnitude and attention entropy
    collapses."""
    gen = seeded(8401)
    model = _hf_lm("iquestcoder", attn_implementation="eager")
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": qk, "lr": 5e-2}], weight_decay=0.0
    )
    probe, _ = next(text_batches(seeded(1)))
    start, ent0 = _qk_logit_max(model, probe), _attn_entropy(model, probe)
    _train(ctx, model, opt, 260, _lm_step(model, text_batches(gen)))
    end, ent1 = _qk_logit_max(model, probe), _attn_entropy(model, probe)
    ctx.check("q.k logits grew 30x", end > 30 * start)
    ctx.check("attention entropy fell below a third", ent1 < ent0 / 3)


# -- 2. HunYuan-v1-MoE: z-loss with the wrong sign ------------------------------------------------


@scenario(
    "h84_hf_hunyuan_v1_moe_lm",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=0,
    note="auxiliary z-loss added with a minus sign: log Z is pushed up instead of down",
)
def h84_hunyuan_moe_zloss_sign(ctx: Context) -> None:
    """A tiny HunYuan-v1 MoE LM trained with an auxiliary z-loss ``5e-2 * logZ**2`` that a
    refactor subtracts instead of adding: the log-partition of the head's logits drifts upward,
    slowly, then faster, and the cross-entropy climbs with it."""
    gen = seeded(8402)
    model = _hf_lm("hunyuan_v1_moe", num_experts=4, moe_topk=2, head_dim=16)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = text_batches(gen)
    probe, _ = next(text_batches(seeded(1)))
    start = _log_z(model, probe)

    def loss_at(step: int):
        x, y = next(batches)
        logits = model(input_ids=x, use_cache=False).logits
        loss = lm_loss(logits, y)
        z = torch.logsumexp(logits.float(), -1)
        return loss, loss - 5e-2 * (z**2).mean()  # the bug: should be "+"

    _train(ctx, model, opt, 260, loss_at)
    end = _log_z(model, probe)
    ctx.check("log Z drifted up by 20", end - start > 20)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- 3. Sarvam-MLA: routed experts dropped from the optimizer ------------------------------------


@scenario(
    "h84_hf_sarvam_mla_lm",
    "radam",
    "update_ratio_out_of_range",
    where="model.layers.1.mlp.experts",
    diverges=None,
    heldout=True,
    note="decay/no-decay grouping by '.weight'/'.bias' suffix silently drops the 3-D expert tensors",
)
def h84_sarvam_experts_left_out(ctx: Context) -> None:
    """A tiny Sarvam-MLA (MLA attention, routed + shared experts) LM. The weight-decay groups
    are built from parameter names ending in ``.weight`` (2-D and up) and ``.bias``/norms; the
    routed experts' fused tensors are named ``gate_up_proj``/``down_proj`` without a suffix and
    are in neither group, so the optimizer never updates them while everything else trains."""
    gen = seeded(8403)
    model = _hf_lm(
        "sarvam_mla",
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        qk_nope_head_dim=8,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        n_shared_experts=1,
        first_k_dense_replace=1,
    )
    named = list(model.named_parameters())
    decay = [p for n, p in named if n.endswith(".weight") and p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in named if n.endswith(".bias") or "norm" in n]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        decoupled_weight_decay=True,
    )
    experts = model.get_submodule("model.layers.1.mlp.experts")
    before = [p.detach().clone() for p in experts.parameters()]
    other = model.get_submodule("model.layers.1.mlp.shared_experts.up_proj").weight
    other0 = other.detach().clone()
    _train(ctx, model, opt, 220, _lm_step(model, text_batches(gen)))
    ctx.check(
        "expert tensors never moved",
        all(torch.equal(a, p.detach()) for a, p in zip(before, experts.parameters(), strict=True)),
    )
    ctx.check("shared expert moved", float((other.detach() - other0).norm()) > 0.05)
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 0.5)


# -- 4. Qwen3-Next: resumed with the scheduler and optimizer state from scratch -------------------


@scenario(
    "h84_hf_qwen3_next_lm",
    "adamax",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="resume at step 150 re-creates Adamax and restarts the cosine schedule at peak, no warm-up",
)
def h84_qwen3next_resume_restart(ctx: Context) -> None:
    """A tiny Qwen3-Next (gated-delta linear attention + MoE) LM on a cosine schedule that has
    decayed to near its floor by step 150, where a job resume restores the weights but rebuilds
    the optimizer and the schedule from step 0 with a higher peak from a newer config (no
    warm-up): the first steps at full LR with fresh Adamax state throw the loss up."""
    gen = seeded(8404)
    model = _hf_lm(
        "qwen3_next",
        head_dim=16,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
    )
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    peak = {"lr": 4e-3, "start": 0}

    def schedule(step: int) -> None:
        if step == 150:
            fresh = torch.optim.Adamax(model.parameters(), lr=4e-2)
            opt.state.clear()
            opt.load_state_dict(fresh.state_dict())
            peak.update(lr=4e-2, start=150)
        t = min((step - peak["start"]) / 150, 1.0)
        opt.param_groups[0]["lr"] = 0.02 * peak["lr"] + 0.98 * peak["lr"] * 0.5 * (
            1 + math.cos(math.pi * t)
        )

    _train(ctx, model, opt, 240, _lm_step(model, text_batches(gen)), before=schedule)
    before = _mean(ctx.losses[130:150])
    ctx.check("trained before the resume", before < _mean(ctx.losses[:10]) - 0.5)
    ctx.check("loss jumped after the resume", max(ctx.losses[150:165]) > before + 1.0)


# -- 5. GraniteMoE-SWA: healthy ------------------------------------------------------------------


@scenario("h84_hf_granitemoe_swa_lm", "sg_lion", "healthy", heldout=True, note="Lion, lr 5e-4")
def h84_granitemoe_swa_healthy(ctx: Context) -> None:
    gen = seeded(8405)
    model = _hf_lm("granitemoe_swa")
    opt = sgo.Lion(model.parameters(), lr=5e-4, weight_decay=0.1)
    _train(ctx, model, opt, 160, _lm_step(model, text_batches(gen)))
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 0.8)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- 6. SimPO: an empty response divides by zero --------------------------------------------------


class SeqLogProb(nn.Module):
    """Length-normalised log-probability of the response tokens (SimPO's implicit reward)."""

    def forward(self, logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        tok = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        m = mask[:, 1:]
        return (tok * m).sum(1) / m.sum(1)  # no guard for an empty response


class SimPOPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lm = Decoder(vocab=32, dim=32, heads=2, layers=2, context=24)
        self.seq_logp = SeqLogProb()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.seq_logp(self.lm(tokens), tokens, mask)


def _pref_batch(gen: torch.Generator, batch: int, empty_rejected: bool):
    """Prompt of 8 tokens in 4..31; chosen = the prompt sorted, rejected = random tokens;
    responses 4-12 tokens, right-padded with 0 to 24."""
    prompt = torch.randint(4, 32, (batch, 8), generator=gen)
    lens = torch.randint(4, 13, (batch,), generator=gen)
    chosen = torch.sort(prompt, 1).values
    chosen = torch.cat([chosen, chosen], 1)
    rejected = torch.randint(4, 32, (batch, 16), generator=gen)
    rej_lens = lens.clone()
    if empty_rejected:
        rej_lens[3] = 0  # a truncation bug left one rejected response empty

    def pack(resp, n):
        seq = torch.zeros(batch, 24, dtype=torch.long)
        mask = torch.zeros(batch, 24)
        seq[:, :8] = prompt
        seq[:, 8] = 1  # separator
        for i in range(batch):
            seq[i, 9 : 9 + n[i]] = resp[i, : n[i]]
            mask[i, 9 : 9 + n[i]] = 1.0
        return seq, mask

    return pack(chosen, lens), pack(rejected, rej_lens)


@scenario(
    "h84_simpo_tiny_lm",
    "sg_grams",
    "nonfinite",
    where="seq_logp",
    diverges=150,
    heldout=True,
    onset=150,
    note="length-normalised log-prob divides by the response length; one rejected response is empty",
)
def h84_simpo_empty_rejected(ctx: Context) -> None:
    """SimPO (beta 2, gamma 0.5) on a tiny decoder: the chosen response is the prompt sorted, the
    rejected one random tokens. At step 150 a pair whose rejected response was truncated to zero
    tokens arrives; the average log-probability is 0/0 and the loss turns NaN."""
    gen = seeded(8406)
    model = SimPOPolicy()
    opt = sgo.Grams(model.parameters(), lr=1e-3)
    seen: dict[str, bool] = {}

    def watch(_m, inp, out):
        if "first" not in seen and not torch.isfinite(out).all():
            seen["first"] = True
            seen["inputs_finite"] = bool(all(torch.isfinite(t).all() for t in inp))

    model.seq_logp.register_forward_hook(watch)

    def loss_at(step: int):
        (cw, mw), (cl, ml) = _pref_batch(gen, 16, empty_rejected=step == 150)
        both = model(torch.cat([cw, cl]), torch.cat([mw, ml]))
        margin = 2.0 * (both[:16] - both[16:]) - 0.5
        loss = -F.logsigmoid(margin).mean()
        return loss, loss

    _train(ctx, model, opt, 200, loss_at)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 150, NaN at 150", all(finite[:150]) and not finite[150])
    ctx.check("NaN made inside seq_logp from finite inputs", seen.get("inputs_finite", False))
    ctx.check("preference loss fell before", _mean(ctx.losses[130:150]) < 0.5 * ctx.losses[0])


# -- 7. prompt tuning: one unscaled gradient poisons Adam's second moments ---------------------


class PromptTuned(nn.Module):
    """A frozen decoder with ``prompt`` (n soft-prompt vectors) prepended to the embeddings."""

    def __init__(self, lm: Decoder, n: int = 8) -> None:
        super().__init__()
        self.lm = lm
        self.prompt = nn.Embedding(n, lm.tok.embedding_dim)
        nn.init.normal_(self.prompt.weight, std=0.02)
        for p in self.lm.parameters():
            p.requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        n = self.prompt.num_embeddings
        soft = self.prompt.weight[None].expand(b, n, -1)
        x = torch.cat([soft, self.lm.tok(idx)], 1) + self.lm.pos(torch.arange(n + t))
        for block in self.lm.blocks:
            x = block(x)
        return self.lm.lm_head(self.lm.ln_f(x))[:, n:]


def _task_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Sequences of an arithmetic progression mod 32 whose step is given by its first token
    (pre-training) or is always 5 and not given (the prompt-tuning task)."""
    while True:
        start = torch.randint(0, 32, (batch, 1), generator=gen)
        stride = torch.randint(1, 8, (batch, 1), generator=gen)
        seq = (start + stride * torch.arange(length + 1)) % 32
        yield torch.cat([stride + 32, seq], 1)


@scenario(
    "h84_prompt_tuning_frozen_lm",
    "adam",
    "adam_second_moment_poisoned",
    where="prompt",
    diverges=None,
    heldout=True,
    onset=120,
    note="static loss scale 2**16 not divided out on one step: Adam's v swamped, run stalls",
)
def h84_prompt_tuning_unscaled_step(ctx: Context) -> None:
    """Prompt tuning of 8 soft-prompt vectors on a frozen tiny decoder (pre-trained here on
    progressions whose stride is given by the first token). The new task: stride always 5, not
    given. Gradients are computed with a static loss scale of 2**16 and divided back before the
    step; at step 120 a gradient-accumulation branch skips the division, one 65536x gradient
    fills Adam's second moments and the prompt barely moves for the rest of the run."""
    gen = seeded(8407)
    lm = Decoder(vocab=40, dim=48, heads=2, layers=2, context=40)
    pre = torch.optim.Adam(lm.parameters(), lr=3e-3)
    data = _task_batches(gen)
    for _ in range(250):
        s = next(data)
        loss = lm_loss(lm(s[:, :-1]), s[:, 1:])
        loss.backward()
        pre.step()
        pre.zero_grad()
    model = PromptTuned(lm)
    opt = torch.optim.Adam([model.prompt.weight], lr=3e-4)
    scale = 2.0**16
    moves: list[float] = []

    def loss_at(step: int):
        s = next(data)[:, 1:]
        s = (s[:, :1] + 5 * torch.arange(s.shape[1])) % 32
        loss = lm_loss(model(s[:, :-1]), s[:, 1:])
        return loss, loss * scale

    def before(step: int) -> None:
        moves.append(float(model.prompt.weight.detach().norm()))

    ctx.attach(model, opt)
    for step in range(420):
        before(step)
        shown, total = loss_at(step)
        total.backward()
        if step != 120:  # the bug: this branch forgets to unscale
            for p in opt.param_groups[0]["params"]:
                p.grad.div_(scale)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if step == 119:
            v_before = float(opt.state[model.prompt.weight]["exp_avg_sq"].max())
        ctx.step(shown)
        opt.zero_grad(set_to_none=True)
    v = opt.state[model.prompt.weight]["exp_avg_sq"]
    ctx.check("loss fell before 120", ctx.losses[119] < ctx.losses[0] - 0.3)
    drop_before = _mean(ctx.losses[60:80]) - _mean(ctx.losses[100:120])
    drop_after = _mean(ctx.losses[200:220]) - _mean(ctx.losses[400:420])
    ctx.check("the run stalled after 120", drop_after < 0.1 * max(drop_before, 1e-6))
    step_before = abs(moves[119] - moves[99]) / 20
    step_after = abs(moves[419] - moves[219]) / 200
    ctx.check("prompt moves 20x slower", step_after < step_before / 20)
    ctx.check("second moments still 1000x their pre-spike size", float(v.max()) > 1e3 * v_before)


# -- 8. co-teaching: a raw-valued batch -----------------------------------------------------------


class CoTeaching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net_a = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.net_b = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor):
        return self.net_a(x), self.net_b(x)


@scenario(
    "h84_coteaching_noisy_digits",
    "sgd_mom",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=210,
    note="one batch from an inverted 0-255 uint8 export, fed without normalisation",
)
def h84_coteaching_raw_batch(ctx: Context) -> None:
    """Co-teaching (Han et al. 2018): two MLPs on digits with 35% symmetric label noise, each
    picking its small-loss samples (forget rate ramping to 0.35) to update its peer. At step 210
    a batch from an export stored as inverted 0..255 pixels is fed without normalisation: every
    image looks alike, no sample has a small loss to select, and the loss spikes."""
    gen = seeded(8408)
    model = CoTeaching()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    noisy = torch.Generator().manual_seed(84)
    batches = digit_batches(gen)

    def loss_at(step: int):
        x, y = next(batches)
        flip = torch.rand(len(y), generator=noisy) < 0.35
        y = torch.where(flip, torch.randint(0, 10, y.shape, generator=noisy), y)
        if step == 210:
            x = 255.0 - 255.0 * x  # inverted 0..255 export
        la, lb = model(x)
        ra = F.cross_entropy(la, y, reduction="none")
        rb = F.cross_entropy(lb, y, reduction="none")
        keep = max(1, int(len(y) * (1 - 0.35 * min(step / 100, 1.0))))
        ia = torch.argsort(ra.detach())[:keep]
        ib = torch.argsort(rb.detach())[:keep]
        loss = F.cross_entropy(la[ib], y[ib]) + F.cross_entropy(lb[ia], y[ia])
        return loss, loss

    _train(ctx, model, opt, 320, loss_at)
    base = sorted(ctx.losses[180:210])[15]
    ctx.check("loss spiked 10x at 210", ctx.losses[210] > 10 * base)
    ctx.check("finite to the end", all(math.isfinite(v) for v in ctx.losses))


# -- 9. GFlowNet: a reward-exponent schedule without its cap ------------------------------------


class GridFlow(nn.Module):
    """Forward policy over {right, up, stop} on an H x H grid and log Z (trajectory balance)."""

    def __init__(self, h: int = 8) -> None:
        super().__init__()
        self.h = h
        self.policy = nn.Sequential(
            nn.Linear(2 * h, 64),
            nn.LeakyReLU(),
            nn.Linear(64, 64),
            nn.LeakyReLU(),
            nn.Linear(64, 3),
        )
        self.log_z = nn.Parameter(torch.zeros(()))

    def log_reward(self, pos: torch.Tensor) -> torch.Tensor:
        """Hypergrid reward (Bengio et al. 2021): 0.01 + 0.5 near the rim + 2 at the corners."""
        r = (pos.float() / (self.h - 1) - 0.5).abs()
        rim = ((r > 0.25).all(-1)).float()
        corner = ((r > 0.3) & (r < 0.4)).all(-1).float()
        return torch.log(0.01 + 0.5 * rim + 2.0 * corner)

    def sample(self, batch: int, gen: torch.Generator):
        h = self.h
        pos = torch.zeros(batch, 2, dtype=torch.long)
        done = torch.zeros(batch, dtype=torch.bool)
        log_pf = torch.zeros(batch)
        log_pb = torch.zeros(batch)
        for _ in range(2 * h):
            onehot = torch.cat([F.one_hot(pos[:, 0], h), F.one_hot(pos[:, 1], h)], -1).float()
            logits = self.policy(onehot)
            mask = torch.stack([pos[:, 0] == h - 1, pos[:, 1] == h - 1, torch.zeros_like(done)], 1)
            logp = torch.log_softmax(logits.masked_fill(mask, -1e9), -1)
            a = torch.multinomial(logp.detach().exp(), 1, generator=gen).squeeze(1)
            a = torch.where(done, 2, a)
            log_pf = log_pf + torch.where(done, 0.0, logp.gather(1, a[:, None]).squeeze(1))
            move = F.one_hot(a.clamp(max=1), 2) * (a < 2)[:, None]
            pos = pos + move
            n_par = (pos > 0).sum(1).clamp(min=1)
            log_pb = log_pb - torch.where(done | (a == 2), 0.0, n_par.float().log())
            done = done | (a == 2)
        return pos, log_pf, log_pb


@scenario(
    "h84_gflownet_hypergrid_tb",
    "adagrad",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="reward exponent annealed 1 -> 4 by 60 steps, but the min() cap is missing: grows forever",
)
def h84_gflownet_beta_uncapped(ctx: Context) -> None:
    """A GFlowNet on an 8x8 hypergrid trained with trajectory balance. The reward is sharpened as
    R**beta with beta meant to anneal from 1 to 4 over 60 steps; the cap was dropped, so beta keeps
    growing linearly, the targets beta*log R drift away faster than Adagrad's shrinking steps
    can follow and the loss climbs."""
    sample_gen = seeded(8409)
    model = GridFlow()
    opt = torch.optim.Adagrad(
        [{"params": model.policy.parameters(), "lr": 1e-2}, {"params": [model.log_z], "lr": 0.3}]
    )

    def loss_at(step: int):
        beta = 1.0 + 3.0 * step / 60  # should be min(..., 4.0)
        pos, log_pf, log_pb = model.sample(32, sample_gen)
        resid = model.log_z + log_pf - beta * model.log_reward(pos) - log_pb
        loss = (resid**2).mean()
        return loss, loss

    _train(ctx, model, opt, 300, loss_at)
    w = [_mean(ctx.losses[i : i + 50]) for i in range(100, 300, 50)]
    ctx.check(
        "loss climbed 4x after the cap was due", w[-1] > 4 * min(w[0], _mean(ctx.losses[60:100]))
    )
    ctx.check("climb is gradual", all(x < y for x, y in zip(w, w[1:], strict=False)))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- 10. energy-based model with short-run Langevin: healthy --------------------------------------


def _ring(gen: torch.Generator, n: int) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=gen).float() * (2 * math.pi / 8)
    centre = torch.stack([k.cos(), k.sin()], 1) * 2.0
    return centre + 0.15 * torch.randn(n, 2, generator=gen)


class EnergyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x).squeeze(-1)


@scenario(
    "h84_ebm_shortrun_langevin",
    "sg_adabelief",
    "healthy",
    heldout=True,
    note="contrastive-divergence loss with an energy-magnitude penalty; noisy by nature",
)
def h84_ebm_langevin_healthy(ctx: Context) -> None:
    """An energy-based model on a ring of 8 Gaussians: negatives from 20 steps of short-run
    Langevin dynamics from uniform noise (step 0.05, noise 0.01), loss E(data) - E(neg) plus
    0.1 (E(data)^2 + E(neg)^2)."""
    gen = seeded(8410)
    model = EnergyNet()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-2)

    def langevin(n: int) -> torch.Tensor:
        x = torch.rand(n, 2, generator=gen) * 6 - 3
        for _ in range(20):
            x = x.detach().requires_grad_(True)
            g = torch.autograd.grad(model(x).sum(), x)[0]
            x = x - 0.05 * g + 0.01 * torch.randn(x.shape, generator=gen)
        return x.detach().clamp(-3.5, 3.5)

    def loss_at(step: int):
        pos = _ring(gen, 128)
        neg = langevin(128)
        ep, en = model(pos), model(neg)
        loss = ep.mean() - en.mean() + 0.1 * (ep.pow(2).mean() + en.pow(2).mean())
        return loss, loss

    _train(ctx, model, opt, 200, loss_at)
    start = torch.rand(512, 2, generator=gen) * 6 - 3
    ring_gap = float((langevin(512).norm(dim=-1) - 2.0).abs().mean())
    noise_gap = float((start.norm(dim=-1) - 2.0).abs().mean())
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("short-run samples closer to the ring than noise", ring_gap < 0.7 * noise_gap)


# -- 11. DCN-v2 on a small click log: softmax collapse -------------------------------------------


class CrossLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.w(x) + x


class DCNv2(nn.Module):
    """DCN-v2 (Wang et al. 2021), stacked: embeddings + dense -> 3 cross layers -> MLP -> head."""

    def __init__(self, n_dense: int = 8, cards: tuple[int, ...] = (20, 30, 12), emb: int = 8):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(c, emb) for c in cards)
        dim = n_dense + emb * len(cards)
        self.cross = nn.ModuleList(CrossLayer(dim) for _ in range(3))
        self.deep = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 2)

    def forward(self, dense: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([dense] + [e(cats[:, i]) for i, e in enumerate(self.emb)], 1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(self.deep(x))


def _clicks(gen: torch.Generator, n: int):
    dense = torch.randn(n, 8, generator=gen)
    cats = torch.stack([torch.randint(0, c, (n,), generator=gen) for c in (20, 30, 12)], 1)
    score = dense[:, 0] * dense[:, 1] + 0.5 * dense[:, 2] + (cats[:, 0] % 3 == 0).float() - 0.5
    noise = 0.8 * torch.randn(n, generator=gen)
    return dense, cats, (score + noise > 0).long()


@scenario(
    "h84_dcnv2_click_log",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="384 logged impressions replayed for 600 steps, no weight decay: memorised to one-hot",
)
def h84_dcnv2_overfit_collapse(ctx: Context) -> None:
    """A DCN-v2 click model trained full-batch for 600 steps on a small log of 384 impressions
    (noisy labels) with RMSprop and no regularisation: it memorises the log and the two-way
    softmax becomes exactly one-hot in float32 on most training rows; the training loss sits at
    ~0 and the head's gradients vanish."""
    gen = seeded(8411)
    model = DCNv2()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    dense, cats, y = _clicks(gen, 384)

    ctx.attach(model, opt)
    for _ in range(600):
        ctx.targets(y)
        logits = model(dense, cats)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        frac = collapsed_fraction(model(dense, cats), y)
    ctx.check("over half the training rows exactly one-hot", frac > 0.5)
    ctx.check("training loss near zero", ctx.losses[-1] < 1e-3)


# -- 12. capsule network: a one-step LR typo kills conv1 ----------------------------------------


def _squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    n2 = (s**2).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class CapsNet(nn.Module):
    """Sabour et al. 2017 in miniature for 8x8 digits: conv1 (ReLU) -> primary capsules ->
    digit capsules by 3 iterations of dynamic routing; class scores are capsule lengths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.primary = nn.Conv2d(32, 8 * 4, 3, stride=2, padding=1)  # 8 maps of 4-D, 4x4
        self.route_w = nn.Parameter(0.05 * torch.randn(1, 8 * 16, 10, 8, 4))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.primary(self.features(x))  # b, 32, 4, 4
        b = u.shape[0]
        u = _squash(u.reshape(b, 8, 4, 16).permute(0, 1, 3, 2).reshape(b, 128, 4))
        u_hat = (self.route_w @ u[:, :, None, :, None]).squeeze(-1)  # b, 128, 10, 8
        logits = torch.zeros(b, 128, 10)
        for i in range(3):
            c = torch.softmax(logits, 2)
            v = _squash((c[..., None] * u_hat).sum(1))  # b, 10, 8
            if i < 2:
                logits = logits + (u_hat * v[:, None]).sum(-1).detach()
        return v.norm(dim=-1)


def _margin_loss(lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = F.one_hot(y, 10).float()
    loss = t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return loss.sum(1).mean()


@scenario(
    "h84_capsnet_dynamic_routing",
    "sgd",
    "loss_of_plasticity",
    where="conv1",
    diverges=None,
    heldout=True,
    onset=0,
    note="conv1 bias initialised to -3 by a shared init helper meant for highway/LSTM gates",
)
def h84_capsnet_dead_conv1_init(ctx: Context) -> None:
    """A capsule network on digits with plain SGD. A shared ``init_weights`` helper sets every
    conv bias whose name matches its gate pattern to -3 (meant for gating layers); conv1 is
    caught by it and its ReLUs are negative for every input from the start: no signal reaches
    the primary capsules, conv1 gets no gradient and the capsules learn only from biases."""
    gen = seeded(8412)
    model = CapsNet()
    with torch.no_grad():
        model.conv1.bias.fill_(-3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = digit_batches(gen)
    probe = digits()[0][:512]
    w0 = model.conv1.weight.detach().clone()

    def loss_at(step: int):
        x, y = next(batches)
        loss = _margin_loss(model(x), y)
        return loss, loss

    _train(ctx, model, opt, 240, loss_at)
    with torch.no_grad():
        dead1 = dead_fraction(model.features(probe))
        acc = float((model(probe).argmax(1) == digits()[1][:512]).float().mean())
    ctx.check("every conv1 unit dead at the end", dead1 == 1.0)
    ctx.check("conv1 never moved", torch.equal(w0, model.conv1.weight.detach()))
    ctx.check("near chance accuracy", acc < 0.25)


# -- 13. deep kernel learning: healthy ----------------------------------------------------------


class DeepKernelGP(nn.Module):
    """MLP features -> RBF kernel GP with learnt lengthscale, outputscale and noise."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 4)
        )
        self.raw = nn.Parameter(torch.tensor([0.0, 0.0, -2.0]))  # lengthscale, scale, noise

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative exact marginal log-likelihood per point."""
        ls, sc, noise = F.softplus(self.raw) + torch.tensor([1e-3, 1e-3, 1e-4])
        z = self.features(x) / ls
        k = sc * torch.exp(-0.5 * torch.cdist(z, z).pow(2)) + noise * torch.eye(len(y))
        chol = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve(y[:, None], chol)
        n = len(y)
        nll = 0.5 * (y[:, None] * alpha).sum() + chol.diagonal().log().sum()
        return (nll + 0.5 * n * math.log(2 * math.pi)) / n


@scenario("h84_deep_kernel_gp", "sg_ademamix", "healthy", heldout=True, note="batches of 128")
def h84_dkl_healthy(ctx: Context) -> None:
    """Deep kernel learning on a generated 6-feature regression task: exact GP marginal
    likelihood on random batches of 128 points."""
    gen = seeded(8413)
    model = DeepKernelGP()
    opt = sgo.AdEMAMix(model.parameters(), lr=3e-3)
    xs = torch.randn(2000, 6, generator=gen)
    ys = torch.sin(2 * xs[:, 0]) + xs[:, 1] * xs[:, 2] + 0.1 * torch.randn(2000, generator=gen)

    def loss_at(step: int):
        idx = torch.randperm(2000, generator=gen)[:128]
        loss = model(xs[idx], ys[idx])
        return loss, loss

    _train(ctx, model, opt, 300, loss_at)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("NLL went down", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 0.3)


# -- 14. LambdaRank: healthy --------------------------------------------------------------------


def _queries(gen: torch.Generator, w: torch.Tensor, n_q: int = 16, docs: int = 20):
    x = torch.randn(n_q, docs, 12, generator=gen)
    s = (
        x @ w
        + 0.5 * torch.tanh(x[..., 0] * x[..., 1])
        + 0.3 * torch.randn(n_q, docs, generator=gen)
    )
    rel = torch.bucketize(s, torch.tensor([0.0, 1.0, 2.0]))  # grades 0..3
    return x, rel


def _ndcg_parts(rel: torch.Tensor, scores: torch.Tensor):
    gains = 2.0 ** rel.float() - 1
    ideal = (
        gains.sort(-1, descending=True).values / torch.log2(torch.arange(2, 2 + rel.shape[-1]))
    ).sum(-1)
    rank = scores.argsort(-1, descending=True).argsort(-1)
    disc = 1.0 / torch.log2(rank.float() + 2)
    return gains, disc, ideal.clamp_min(1e-6)


def _lambdarank_loss(scores: torch.Tensor, rel: torch.Tensor):
    gains, disc, ideal = _ndcg_parts(rel, scores.detach())
    delta = ((gains[:, :, None] - gains[:, None, :]) * (disc[:, :, None] - disc[:, None, :])).abs()
    delta = delta / ideal[:, None, None]
    better = (rel[:, :, None] > rel[:, None, :]).float()
    diff = scores[:, :, None] - scores[:, None, :]
    loss = (better * delta * F.softplus(-diff)).sum((1, 2)) / better.sum((1, 2)).clamp_min(1)
    ndcg = (gains * disc).sum(-1) / ideal
    return loss.mean(), float(ndcg.mean())


@scenario("h84_lambdarank_generated", "sg_stablespam", "healthy", heldout=True)
def h84_lambdarank_healthy(ctx: Context) -> None:
    """A LambdaRank MLP scorer on generated queries (20 documents, grades 0-3): pairwise
    logistic losses weighted by |delta NDCG|."""
    gen = seeded(8414)
    w = torch.randn(12, generator=gen)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = sgo.StableSPAM(model.parameters(), lr=1e-3, total_steps=300)
    ndcgs: list[float] = []

    def loss_at(step: int):
        x, rel = _queries(gen, w)
        loss, ndcg = _lambdarank_loss(model(x).squeeze(-1), rel)
        ndcgs.append(ndcg)
        return loss, loss

    _train(ctx, model, opt, 300, loss_at)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("NDCG went up", _mean(ndcgs[-20:]) > _mean(ndcgs[:10]) + 0.05)


# -- 15. Dreamer-style RSSM: a warm-up that overshoots ------------------------------------------


class RSSM(nn.Module):
    """Recurrent state-space model: GRU deterministic path, Gaussian prior/posterior over z,
    observation decoder and reward head (Hafner et al.)."""

    def __init__(self, obs: int = 10, act: int = 2, h: int = 32, z: int = 8) -> None:
        super().__init__()
        self.z = z
        self.embed = nn.Linear(obs, 32)
        self.cell = nn.GRUCell(z + act, h)
        self.prior = nn.Linear(h, 2 * z)
        self.posterior = nn.Linear(h + 32, 2 * z)
        self.decoder = nn.Sequential(nn.Linear(h + z, 64), nn.ELU(), nn.Linear(64, obs))
        self.reward = nn.Linear(h + z, 1)

    @staticmethod
    def _dist(stats: torch.Tensor):
        mu, raw = stats.chunk(2, -1)
        return torch.distributions.Normal(mu, F.softplus(raw) + 0.1)

    def forward(self, obs, act, rew, gen):
        b, t, _ = obs.shape
        h = torch.zeros(b, self.cell.hidden_size)
        z = torch.zeros(b, self.z)
        e = self.embed(obs)
        rec = kl = rloss = 0.0
        D = torch.distributions
        for i in range(t):
            h = self.cell(torch.cat([z, act[:, i]], -1), h)
            prior = self._dist(self.prior(h))
            post = self._dist(self.posterior(torch.cat([h, e[:, i]], -1)))
            z = post.mean + post.stddev * torch.randn(post.mean.shape, generator=gen)
            feat = torch.cat([h, z], -1)
            rec = rec + (self.decoder(feat) - obs[:, i]).pow(2).sum(-1).mean()
            rloss = rloss + (self.reward(feat).squeeze(-1) - rew[:, i]).pow(2).mean()
            sg_post = D.Normal(post.mean.detach(), post.stddev.detach())
            sg_prior = D.Normal(prior.mean.detach(), prior.stddev.detach())
            kl_lhs = D.kl_divergence(sg_post, prior).sum(-1).mean()
            kl_rhs = D.kl_divergence(post, sg_prior).sum(-1).mean()
            kl = kl + 0.8 * kl_lhs.clamp_min(1.0) + 0.2 * kl_rhs.clamp_min(1.0)
        return (rec + rloss + kl) / t


def _point_mass(gen: torch.Generator, proj: torch.Tensor, batch: int = 16, t: int = 16):
    """A damped 2-D point mass pushed by random actions; 10-D noisy linear observations."""
    pos = torch.randn(batch, 2, generator=gen)
    vel = torch.zeros(batch, 2)
    act = torch.rand(batch, t, 2, generator=gen) * 2 - 1
    obs, rew = [], []
    for i in range(t):
        vel = 0.9 * vel + 0.1 * act[:, i]
        pos = pos + 0.1 * vel
        state = torch.cat([pos, vel], -1)
        obs.append(state @ proj + 0.05 * torch.randn(batch, 10, generator=gen))
        rew.append(-pos.norm(dim=-1))
    return torch.stack(obs, 1), act, torch.stack(rew, 1)


@scenario(
    "h84_dreamer_rssm_pointmass",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=0,
    note="linear warm-up to lr 0.3 (config meant 0.03) with momentum 0.9",
)
def h84_rssm_warmup_overshoot(ctx: Context) -> None:
    """A Dreamer-style world model (RSSM, KL balancing 0.8/0.2, free bits 1) on a generated
    point-mass task, SGD with momentum 0.9 and a linear warm-up over 100 steps to a peak LR 10x
    the intended one: once the LR passes the curvature limit the loss oscillates and blows up."""
    gen = seeded(8415)
    proj = torch.randn(4, 10, generator=gen)
    model = RSSM()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.1 * min((step + 1) / 150, 1.0)

    def loss_at(step: int):
        obs, act, rew = _point_mass(gen, proj)
        loss = model(obs, act, rew, gen)
        return loss, loss

    _train(ctx, model, opt, 200, loss_at, before=schedule)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    low = min(finite)
    ctx.check("trained at first", low < 0.5 * ctx.losses[0])
    ctx.check(
        "blew up: non-finite or 100x its low",
        len(finite) < len(ctx.losses) or max(finite) > 100 * low,
    )


# -- 16. DIEN: an unguarded exp under fp16 autocast -----------------------------------------------


class InterestAttention(nn.Module):
    """DIN/DIEN attention: an MLP scores each interest state against the target item; weights
    by exp(score / tau) / sum, written by hand without subtracting the max."""

    def __init__(self, d: int, tau: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * d, 32), nn.Sigmoid(), nn.Linear(32, 1))
        self.tau = tau

    def forward(self, states: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target[:, None].expand_as(states)
        score = self.mlp(torch.cat([states, t, states * t, states - t], -1)).squeeze(-1)
        w = torch.exp(score / self.tau)
        return w / w.sum(1, keepdim=True)


class AUGRUCell(nn.Module):
    """GRU with an attentional update gate (DIEN's interest-evolving layer)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gates = nn.Linear(2 * d, 2 * d)
        self.cand = nn.Linear(2 * d, d)

    def forward(self, x, h, a):
        r, u = torch.sigmoid(self.gates(torch.cat([x, h], -1))).chunk(2, -1)
        c = torch.tanh(self.cand(torch.cat([x, r * h], -1)))
        u = a[:, None] * u
        return (1 - u) * h + u * c


class DIEN(nn.Module):
    def __init__(self, items: int = 200, d: int = 16) -> None:
        super().__init__()
        self.item = nn.Embedding(items, d)
        self.extractor = nn.GRU(d, d, batch_first=True)
        self.att = InterestAttention(d)
        self.evolve = AUGRUCell(d)
        self.out = nn.Sequential(nn.Linear(3 * d, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, hist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        e = self.item(hist)
        with torch.autocast("cpu", enabled=False):
            states, _ = self.extractor(e.float())
        tgt = self.item(target)
        a = self.att(states, tgt)
        h = torch.zeros_like(states[:, 0])
        for i in range(states.shape[1]):
            h = self.evolve(states[:, i], h, a[:, i])
        return self.out(torch.cat([h, tgt, h * tgt], -1)).squeeze(-1)


def _behaviour(gen: torch.Generator, batch: int = 64, t: int = 15, items: int = 200):
    """Users drift between 10 interest clusters of 20 items; click if the target item's
    cluster is the user's latest interest."""
    c0 = torch.randint(0, 10, (batch, 1), generator=gen)
    shift = (torch.rand(batch, t, generator=gen) < 0.15).long().cumsum(1)
    cluster = (c0 + shift) % 10
    hist = cluster * 20 + torch.randint(0, 20, (batch, t), generator=gen)
    click = torch.rand(batch, generator=gen) < 0.5
    other = (cluster[:, -1] + torch.randint(1, 10, (batch,), generator=gen)) % 10
    tc = torch.where(click, cluster[:, -1], other)
    target = tc * 20 + torch.randint(0, 20, (batch,), generator=gen)
    return hist, target, click.float()


@scenario(
    "h84_dien_interest_evolution",
    "adam",
    "amp_overflow",
    where="att",
    diverges="auto",
    heldout=True,
    onset=333,
    note="hand-written softmax (exp without max subtraction, tau 0.1) in fp16 under autocast",
)
def h84_dien_fp16_exp_overflow(ctx: Context) -> None:
    """A DIEN-style recommender (GRU interest extractor, target attention, AUGRU) trained with
    fp16 autocast and a GradScaler. The attention weights are exp(score / 0.1) / sum by hand;
    as the scorer sharpens, a score over ~1.1 overflows fp16's exp to inf, the weights become
    inf/inf = NaN, and from then on every step's gradients are non-finite and the scaler keeps
    skipping the step and halving its scale."""
    gen = seeded(8416)
    model = DIEN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    seen: dict[str, object] = {}

    def watch(_m, inp, out):
        if "step" not in seen and not torch.isfinite(out).all():
            seen["step"] = len(ctx.losses)
            seen["inputs_finite"] = bool(all(torch.isfinite(t).all() for t in inp))
            seen["dtype"] = str(out.dtype)

    model.att.register_forward_hook(watch)
    ctx.attach(model, opt, scaler=scaler)
    for _ in range(400):
        hist, target, y = _behaviour(gen)
        with torch.autocast("cpu", dtype=torch.float16):
            logit = model(hist, target)
        loss = F.binary_cross_entropy_with_logits(logit.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first = seen.get("step")
    ctx.check("att overflowed from finite inputs in fp16", bool(seen.get("inputs_finite")))
    ctx.check("first overflow at step 333, after a healthy stretch", first == 333)
    ctx.check("scale collapsed: steps kept being skipped", ctx.scales[-1] < 1.0)
