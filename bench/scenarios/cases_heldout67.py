"""Held-out scenarios, set 67 (``h67_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face OpenAI-GPT and ModernBERT-decoder causal LMs, and Megatron-BERT,
RoBERTa-PreLayerNorm and DeBERTa-v2 sequence classifiers (a fault, and a control) from configs;
language-model training procedures in plain PyTorch on small generated token data: DPO against
a frozen reference, knowledge distillation with a temperature, a Bradley-Terry reward model (a
control), PPO-clip on a toy text policy, LoRA fine-tuning of a linear-recurrence language model
pretrained here, sequence packing with a block-diagonal attention mask, gradient accumulation
over micro-batches (fault and control) and a byte-level model over 256-byte windows of
standard-library source (fp16 autocast with a GradScaler, fault and control).

Optimizers: Lion, AdamW, RAdam, Grams, Adamax, AdEMAMix, RMSprop, NAdam, AdaBelief, Adam,
momentum SGD, Adagrad, SGD, Nesterov SGD.
"""

from __future__ import annotations

import copy
import math
import sysconfig
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    Decoder,
    bert_batches,
    collapsed_fraction,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces -------------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _markov_table(vocab: int, branch: int, seed: int) -> torch.Tensor:
    """Each token has ``branch`` possible successors (a small generated 'language')."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=g)[:branch] for _ in range(vocab)])


def markov_batches(
    gen: torch.Generator,
    batch: int = 16,
    length: int = 32,
    vocab: int = 32,
    branch: int = 2,
    seed: int = 0,
    first: float | None = None,
):
    """Endless (input, target) token windows from a sparse Markov chain: each token has
    ``branch`` successors, equally likely, or the first with probability ``first`` (2 only)."""
    table = _markov_table(vocab, branch, seed)
    while True:
        cur = torch.randint(0, vocab, (batch,), generator=gen)
        seq = [cur]
        for _ in range(length):
            if first is None:
                pick = torch.randint(0, branch, (batch,), generator=gen)
            else:
                pick = (torch.rand(batch, generator=gen) > first).long()
            cur = table[cur, pick]
            seq.append(cur)
        win = torch.stack(seq, 1)
        yield win[:, :-1], win[:, 1:]


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


# -- Hugging Face OpenAI-GPT: attention built without its 1/sqrt(d) scale -------------------------


def _openai_gpt(vocab: int = 64, dim: int = 64, layers: int = 2, heads: int = 2, ctx: int = 32):
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    config = OpenAIGPTConfig(
        vocab_size=vocab,
        n_positions=ctx,
        n_embd=dim,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return OpenAIGPTLMHeadModel(config)


def _gpt_attention_logits(model: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
    """The pre-softmax logits layer ``layer`` really uses (scaled only if its flag is set)."""
    seen: dict[str, torch.Tensor] = {}
    attn = model.transformer.h[layer].attn
    hook = attn.c_attn.register_forward_hook(lambda m, i, o: seen.__setitem__("qkv", o))
    with torch.no_grad():
        model(input_ids=x)
    hook.remove()
    q, k, _ = seen["qkv"].split(attn.split_size, dim=2)
    q = attn.split_heads(q)
    k = attn.split_heads(k, k=True)
    w = q @ k
    if attn.scale:
        w = w / math.sqrt(attn.split_size // attn.n_head)
    return w


@scenario(
    "h67_hf_openai_gpt_lm",
    "sg_lion",
    "attention_logit_growth",
    where=("transformer.h.0.attn", "transformer.h.1.attn"),
    diverges="auto",
    heldout=True,
    note="blocks built with the class default scale=False: q.k never divided by sqrt(d)",
)
def h67_hf_openai_gpt_unscaled_attention(ctx: Context) -> None:
    """A refactor builds the blocks through a helper that forgets ``scale=True`` (the class
    default is False), so every attention layer uses q.k without the 1/sqrt(d) factor. OpenAI-GPT
    is post-LN: the first layer sees the raw token + position embeddings, which Lion at a high
    rate grows along with c_attn, so the unscaled logits grow until attention is one-hot."""
    gen = seeded(6701)
    model = _openai_gpt()
    for block in model.transformer.h:
        block.attn.scale = False
    opt = sgo.Lion(model.parameters(), lr=1e-2, fused=False)
    probe, _ = next(markov_batches(torch.Generator().manual_seed(1), 16, 32, vocab=64, seed=67))
    start = _gpt_attention_logits(model, probe, 0).abs().amax().item()
    fit(
        ctx,
        model,
        opt,
        markov_batches(gen, 16, 32, vocab=64, branch=3, seed=67),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=_hf_logits,
    )
    w = _gpt_attention_logits(model, probe, 0)
    end = w.abs().amax().item()
    p = torch.softmax(w + torch.triu(torch.full_like(w, -1e4), 1), -1)
    ctx.check("layer-0 attention logits grew 1000x, past 1e4", end > max(1e3 * start, 1e4))
    ctx.check("most layer-0 attention rows one-hot", (p.amax(-1) > 0.99).float().mean() > 0.5)
    ctx.check("the loss climbed back past twice its best", ctx.losses[-1] > 2 * min(ctx.losses))


# -- Hugging Face ModernBERT-decoder: an unlikelihood term aimed at the targets --------------------


def _modernbert_decoder(vocab: int = 32, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM

    config = ModernBertDecoderConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        global_attn_every_n_layers=1,
        local_attention=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    return ModernBertDecoderForCausalLM(config)


@scenario(
    "h67_hf_modernbert_decoder_lm",
    "adamw",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    onset=120,
    note="unlikelihood penalty indexed with the targets, its weight ramped in from step 120",
)
def h67_hf_modernbert_decoder_unlikelihood_on_targets(ctx: Context) -> None:
    """An unlikelihood penalty, -log(1 - p), is meant for the tokens the model repeated, but it is
    gathered with the target indices instead. Its weight is ramped in from step 120, so from then
    on the objective itself asks for a lower probability of the right token: the language-model
    loss climbs slowly and smoothly toward log(1 + w), with no blow-up behind it (the logits and
    gradients stay bounded)."""
    gen = seeded(6702)
    model = _modernbert_decoder()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    maxlogit: list[float] = []
    seen: dict[str, torch.Tensor] = {}

    def weight(step: int) -> float:
        return 0.0 if step < 120 else min(12.0, 12.0 * (step - 120) / 300)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen["logits"] = out = _hf_logits(m, x)
        maxlogit.append(float(out.detach().abs().amax()))
        return out

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(seen["logits"].float(), -1).gather(-1, seen["y"][..., None])
        return loss + weight(step) * -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()

    def batches():
        for x, y in markov_batches(gen, 16, 32, vocab=32, branch=2, seed=672):
            seen["y"] = y
            yield x, y

    fit(
        ctx,
        model,
        opt,
        batches(),
        440,
        loss_fn=lm_loss,
        classifier=False,
        forward=forward,
        extra_loss=extra,
    )
    best = min(ctx.losses[:120])
    ctx.check("trained before the ramp", best < 1.0)
    ctx.check(
        "the loss climbed past max(2x, +1) its best", ctx.losses[-1] > max(2 * best, best + 1)
    )
    ctx.check("finite and bounded throughout", all(map(_finite, ctx.losses)) and max(maxlogit) < 50)


# -- Hugging Face encoders (sequence classifiers) on the token-frequency task ---------------------


def _encoder_config(kind: str, **extra):
    import transformers

    cls = {
        "megatron": transformers.MegatronBertConfig,
        "roberta_pre": transformers.RobertaPreLayerNormConfig,
        "deberta_v2": transformers.DebertaV2Config,
    }[kind]
    kwargs = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    if kind == "roberta_pre":
        kwargs["pad_token_id"] = 0
    kwargs.update(extra)
    return cls(**kwargs)


@scenario(
    "h67_hf_megatron_bert_cls",
    "radam",
    "update_ratio_out_of_range",
    where="classifier",
    diverges=None,
    heldout=True,
    note="the head is re-created for the label count after the optimizer was built",
)
def h67_hf_megatron_bert_head_left_out(ctx: Context) -> None:
    """A Megatron-BERT classifier is built, its optimizer created from ``model.parameters()``,
    and only then is the classification head re-created for the task's label count: the new
    head's parameters are in no parameter group, so they keep their random initial values for
    the whole run while the encoder trains around them (an update ratio of exactly zero)."""
    from transformers import MegatronBertForSequenceClassification

    gen = seeded(6703)
    model = MegatronBertForSequenceClassification(_encoder_config("megatron", num_labels=3))
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    model.num_labels = 2
    model.classifier = nn.Linear(model.config.hidden_size, 2)
    head = model.classifier.weight.detach().clone()
    enc = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    fit(ctx, model, opt, bert_batches(gen), 300, forward=_hf_logits)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    ctx.check(
        "head in no parameter group",
        all(id(p) not in in_opt for p in model.classifier.parameters()),
    )
    ctx.check("head weight unchanged", torch.equal(head, model.classifier.weight))
    moved = (
        model.bert.encoder.layer[0].attention.self.query.weight.detach() - enc
    ).norm() / enc.norm()
    ctx.check("encoder did train", float(moved) > 0.05)


@scenario(
    "h67_hf_roberta_prelayernorm_cls",
    "sg_grams",
    "data_outlier",
    where=(),
    diverges=170,
    heldout=True,
    onset=170,
    note="one shard with its label column inverted and its tokens collapsed at step 170",
)
def h67_hf_roberta_prelayernorm_bad_shard(ctx: Context) -> None:
    """A RoBERTa-PreLayerNorm classifier trains on the token-frequency task. The batch at step
    170 comes from a shard written by a broken export: its labels are inverted and most of its
    tokens were replaced by the marker tokens the task counts. The confident model takes a large
    loss on it, one big step, and then recovers on the clean batches that follow."""
    from transformers import RobertaPreLayerNormForSequenceClassification

    gen = seeded(6704)
    model = RobertaPreLayerNormForSequenceClassification(_encoder_config("roberta_pre"))
    opt = sgo.Grams(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            g = torch.Generator().manual_seed(170)
            x = torch.where(torch.rand(x.shape, generator=g) < 0.7, 1 + (x % 2), x)
            y = 1 - y
        return x, y

    fit(ctx, model, opt, bert_batches(gen), 300, alter=alter, forward=_hf_logits)
    L = ctx.losses
    ctx.check("loss spiked at 170", L[170] > 5 * max(L[160:170]))
    ctx.check("recovered within 60 steps", sum(L[230:250]) / 20 < 2 * max(L[150:170]))


@scenario(
    "h67_hf_deberta_v2_cls",
    "adamax",
    "loss_spike",
    where=(),
    diverges=160,
    heldout=True,
    onset=160,
    note="a resume at step 160 reloads the step-35 weight file; the optimizer state is current",
)
def h67_hf_deberta_v2_resume_wrong_snapshot(ctx: Context) -> None:
    """A DeBERTa-v2 classifier is pre-empted and resumed at step 160, but the resume picks the
    oldest kept weight file (the one written at step 35) while the optimizer state and the data
    cursor are the current ones. Nothing about the gradients or the data is wrong: the weights
    simply jump back, the loss jumps back to its step-35 level (many times its recent mean), and
    training climbs down again."""
    from transformers import DebertaV2ForSequenceClassification

    gen = seeded(6705)
    model = DebertaV2ForSequenceClassification(_encoder_config("deberta_v2"))
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    snapshot: dict[str, dict] = {}

    def resume(step: int) -> None:
        if step == 35:
            snapshot["weights"] = copy.deepcopy(model.state_dict())
        if step == 160:
            model.load_state_dict(snapshot["weights"])

    fit(ctx, model, opt, bert_batches(gen), 300, before=resume, forward=_hf_logits)
    L = ctx.losses
    ctx.check("loss jumped 5x its recent mean at 160", L[160] > 5 * sum(L[150:160]) / 10)
    ctx.check("recovered afterwards", sum(L[-20:]) / 20 < 0.3 * L[160])


@scenario("h67_hf_deberta_v2_cls", "sg_ademamix", "healthy", heldout=True)
def h67_hf_deberta_v2_control(ctx: Context) -> None:
    """The same DeBERTa-v2 classifier and task with AdEMAMix and no fault: the loss falls."""
    from transformers import DebertaV2ForSequenceClassification

    gen = seeded(6706)
    model = DebertaV2ForSequenceClassification(_encoder_config("deberta_v2"))
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, bert_batches(gen), 300, forward=_hf_logits)
    L = ctx.losses
    ctx.check("loss fell", sum(L[-20:]) / 20 < 0.6 * sum(L[:20]) / 20)


# -- preference and distillation objectives on a small decoder pretrained here --------------------


def _pretrained_decoder(
    seed: int,
    steps: int,
    vocab: int = 32,
    dim: int = 32,
    context: int = 32,
    first: float | None = None,
):
    """A nanoGPT-style decoder pretrained here (Adam, unmonitored) on a Markov-chain language."""
    gen = seeded(seed)
    model = Decoder(vocab=vocab, dim=dim, heads=2, layers=2, context=context)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = markov_batches(gen, 16, context, vocab=vocab, branch=2, seed=seed, first=first)
    for _ in range(steps):
        x, y = next(data)
        lm_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def _seq_logprob(model: nn.Module, seq: torch.Tensor, prompt: int) -> torch.Tensor:
    """Summed log-probability of ``seq[:, prompt:]`` given what precedes it."""
    logp = torch.log_softmax(model(seq[:, :-1]).float(), -1)
    tok = logp.gather(-1, seq[:, 1:, None]).squeeze(-1)
    return tok[:, prompt - 1 :].sum(-1)


def _preference_pairs(gen: torch.Generator, seed: int, batch: int = 16, length: int = 16):
    """(chosen, rejected): chosen continues the chain; rejected is the same prompt with the
    completion's tokens replaced at random half the time."""
    data = markov_batches(gen, batch, length, vocab=32, branch=2, seed=seed)
    while True:
        x, y = next(data)
        chosen = torch.cat([x[:, :1], y], 1)
        noise = torch.randint(0, 32, chosen.shape, generator=gen)
        swap = torch.rand(chosen.shape, generator=gen) < 0.5
        swap[:, :4] = False
        yield chosen, torch.where(swap, noise, chosen)


@scenario(
    "h67_dpo_frozen_reference",
    "rmsprop",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="the DPO loss written without its log-sigmoid: a linear, unbounded objective",
)
def h67_dpo_linear_objective(ctx: Context) -> None:
    """DPO against a frozen copy of the pretrained policy, but the loss was written as
    ``-beta * (policy margin - reference margin)`` without the log-sigmoid: the objective is
    linear in the log-probabilities and has no minimum. RMSprop keeps pushing the rejected
    completions' log-probabilities down at a constant pace: the output logits (and log Z) grow
    without bound while the reported loss falls forever."""
    policy = _pretrained_decoder(6707, 150)
    reference = copy.deepcopy(policy).requires_grad_(False)
    gen = seeded(6708)
    opt = torch.optim.RMSprop(policy.parameters(), lr=3e-3)
    ctx.attach(policy, opt)
    pairs = _preference_pairs(gen, 6707)
    probe = next(pairs)[1]
    with torch.no_grad():
        start = float(policy(probe).abs().amax())
    beta = 0.1
    for _ in range(300):
        chosen, rejected = next(pairs)
        pi = _seq_logprob(policy, chosen, 4) - _seq_logprob(policy, rejected, 4)
        with torch.no_grad():
            ref = _seq_logprob(reference, chosen, 4) - _seq_logprob(reference, rejected, 4)
        loss = -(beta * (pi - ref)).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(policy))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = policy(probe)
    end = float(logits.abs().amax())
    ctx.check("output logits grew 10x", end > 10 * start)
    ctx.check("log Z ran away past 20", float(torch.logsumexp(logits, -1).abs().amax()) > 20)
    ctx.check("the loss only fell", ctx.losses[-1] < ctx.losses[0] - 5)


def _distill_batches(teacher: nn.Module, gen: torch.Generator, seed: int):
    """(tokens, the frozen teacher's logits on them)."""
    for x, _ in markov_batches(gen, 16, 32, vocab=32, branch=2, seed=seed, first=0.8):
        with torch.no_grad():
            t = teacher(x)
        yield x, t


def _kd_loss(temperature: float, teacher_scale: float):
    def loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        target = torch.softmax(teacher * teacher_scale, -1)
        logp = torch.log_softmax(student / temperature, -1)
        kl = (target * (torch.log(target.clamp_min(1e-30)) - logp)).sum(-1).mean()
        return kl * temperature**2

    return loss


@scenario(
    "h67_kd_temperature",
    "nadam",
    "softmax_collapse",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="the teacher's logits multiplied by T=4 instead of divided: one-hot targets, huge logits",
)
def h67_kd_teacher_temperature_inverted(ctx: Context) -> None:
    """Knowledge distillation of a pretrained decoder into a smaller one with temperature 4; the
    teacher's softened targets are written ``softmax(t * T)`` instead of ``softmax(t / T)``. The
    targets become nearly one-hot and the student, whose logits are divided by T, can match them
    only with logits T**2 larger than the teacher's: its own softmax saturates to exactly one-hot
    in float32 on most positions."""
    teacher = _pretrained_decoder(6709, 200, first=0.8).requires_grad_(False)
    gen = seeded(6710)
    student = Decoder(vocab=32, dim=24, heads=2, layers=1, context=32)
    opt = torch.optim.NAdam(student.parameters(), lr=1e-2)
    fit(
        ctx,
        student,
        opt,
        _distill_batches(teacher, gen, 6709),
        300,
        loss_fn=_kd_loss(4.0, teacher_scale=4.0),
        classifier=False,
    )
    x, _ = next(markov_batches(torch.Generator().manual_seed(5), 64, 32, vocab=32, seed=6709))
    with torch.no_grad():
        s = student(x).reshape(-1, 32)
        t = teacher(x).reshape(-1, 32)
    frac = collapsed_fraction(s, s.argmax(-1))
    ctx.check("most student softmax rows exactly one-hot", frac > 0.5)
    ctx.check(
        "student logits 3x beyond the teacher's", float(s.abs().amax()) > 3 * float(t.abs().amax())
    )


class _RewardModel(nn.Module):
    """A decoder trunk, a mean over positions and a scalar reward head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = Decoder(vocab=32, dim=32, heads=2, layers=2, context=32)
        self.reward = nn.Linear(32, 1)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        b = pair.shape[1]
        h = self.trunk.hidden(pair.reshape(2 * b, -1)).mean(1)
        return self.reward(h).reshape(2, b).T


def _bt_loss(rewards: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()


@scenario("h67_bt_reward_model", "sg_adabelief", "healthy", heldout=True)
def h67_bt_reward_model_control(ctx: Context) -> None:
    """A Bradley-Terry reward model learns to score chain-following completions above corrupted
    ones; no fault: the pairwise loss falls."""
    gen = seeded(6712)
    model = _RewardModel()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)

    def batches():
        for chosen, rejected in _preference_pairs(gen, 6712, length=32):
            yield torch.stack([chosen[:, :32], rejected[:, :32]]), chosen[:, 0]

    fit(ctx, model, opt, batches(), 160, loss_fn=_bt_loss, classifier=False)
    L = ctx.losses
    ctx.check("pairwise loss fell well below log 2", sum(L[-20:]) / 20 < 0.3)


# -- PPO-clip on a toy text policy ----------------------------------------------------------------


def _sample(policy: nn.Module, gen: torch.Generator, n: int, length: int) -> torch.Tensor:
    seq = torch.zeros(n, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(length):
            p = torch.softmax(policy(seq)[:, -1].float(), -1)
            seq = torch.cat([seq, torch.multinomial(p, 1, generator=gen)], 1)
    return seq


def _token_logprobs(policy: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(policy(seq[:, :-1]).float(), -1)
    return logp.gather(-1, seq[:, 1:, None]).squeeze(-1)


@scenario(
    "h67_ppo_clip_text_policy",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="a reward parser returns 1e5 for one episode at update 120 (advantages not normalised)",
)
def h67_ppo_reward_parser_glitch(ctx: Context) -> None:
    """PPO-clip on a toy text policy (reward: the share of an 8-token completion that matches a
    fixed target string),
    advantages centred but not normalised. At update 120 the reward parser reads one episode's
    score as 1e5 (a unit glitch): that minibatch's policy gradient is some 10^4 times the usual and
    fills Adam's second moment on every tensor. The gradients are back to normal at once, but
    with beta2 = 0.999 the inflated second moment divides every update for hundreds of steps:
    the policy all but stops moving and the reward stops rising."""
    gen = seeded(6713)
    policy = Decoder(vocab=8, dim=32, heads=2, layers=1, context=9)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-4)
    ctx.attach(policy, opt)
    moves: list[float] = []
    rewards: list[float] = []
    target = torch.tensor([(3 * i + 1) % 8 for i in range(8)])
    for it in range(260):
        seq = _sample(policy, gen, 64, 8)
        reward = (seq[:, 1:] == target).float().mean(1)
        rewards.append(float(reward.mean()))
        if it == 120:
            reward = reward.clone()
            reward[0] = 1e5
        adv = (reward - reward.mean())[:, None]
        with torch.no_grad():
            old = _token_logprobs(policy, seq)
        for _ in range(2):
            ratio = torch.exp(_token_logprobs(policy, seq) - old)
            loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
            loss.backward()
            ctx.grad_norms.append(grad_norm(policy))
            before = nn.utils.parameters_to_vector(policy.parameters()).detach()
            opt.step()
            ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            after = nn.utils.parameters_to_vector(policy.parameters()).detach()
            moves.append(float((after - before).norm()))
    gn = ctx.grad_norms
    before_mv = sum(moves[140:240]) / 100
    after_mv = sum(moves[280:380]) / 100
    ctx.check("one giant gradient at update 120", max(gn[240:242]) > 1e3 * sorted(gn[140:240])[50])
    ctx.check(
        "gradients back to normal size", sorted(gn[280:380])[50] < 10 * sorted(gn[140:240])[50]
    )
    ctx.check("updates shrank 10x after the spike", after_mv < 0.1 * before_mv)
    ctx.check(
        "the reward stopped rising",
        sum(rewards[200:260]) / 60 < sum(rewards[100:120]) / 20 + 0.02,
    )


# -- LoRA fine-tuning of a tanh-RNN language model pretrained here ---------------------------------


class _LoRALinear(nn.Module):
    """A frozen base Linear plus a low-rank update ``scale * B @ A`` (B starts at zero)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T


class _RNNCell(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ih = nn.Linear(dim, dim)
        self.hh = nn.Linear(dim, dim, bias=False)


class _LinearRNNLM(nn.Module):
    """Embedding, a linear recurrence written out (h = W h + U x, W = I/2 at init), a GELU
    readout and a head."""

    def __init__(self, vocab: int = 32, dim: int = 48) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.cell = _RNNCell(dim)
        self.head = nn.Linear(dim, vocab)
        with torch.no_grad():
            self.cell.hh.weight.copy_(0.5 * torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.cell.ih(self.emb(x))
        h = torch.zeros(x.shape[0], e.shape[-1])
        out = []
        for t in range(x.shape[1]):
            h = e[:, t] + self.cell.hh(h)
            out.append(h)
        return self.head(F.gelu(torch.stack(out, 1)))


@scenario(
    "h67_lora_rnn_lm",
    "sgd_mom",
    "exploding_gradients",
    where="cell.hh",
    diverges="auto",
    heldout=True,
    note="the adapters' norm penalty subtracted, not added: factors and gradients grow",
)
def h67_lora_l2_wrong_sign_recurrent(ctx: Context) -> None:
    """A linear-recurrence language model pretrained here (with clipping) is fine-tuned on a new
    chain with LoRA adapters on its input and recurrent weights, with a hand-written norm penalty
    (0.25 * sum of squares) meant to keep the adapter factors small, and no clipping in the
    fine-tune script. The penalty is subtracted instead of added: the factors grow a little
    every step, and the gradients, which scale with the other factor and with the states that
    are summed over the 24 recurrent steps, grow with them, the recurrent adapter's first,
    step after step for some 70 steps until the run breaks."""
    gen = seeded(6714)
    model = _LinearRNNLM()
    pre = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = markov_batches(gen, 16, 24, seed=6714)
    for _ in range(150):
        x, y = next(data)
        lm_loss(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        pre.step()
        pre.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    model.cell.ih = _LoRALinear(model.cell.ih, 8, 16.0)
    model.cell.hh = _LoRALinear(model.cell.hh, 8, 16.0)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.SGD(lora, lr=3e-3, momentum=0.9)
    per_module: dict[str, list[float]] = {"cell.ih": [], "cell.hh": []}

    def l2_wrong_sign(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 0.25 * sum(p.pow(2).sum() for p in lora)

    for name in per_module:
        model.get_submodule(name).lora_B.register_hook(
            lambda g, name=name: per_module[name].append(float(g.norm()))
        )

    fit(
        ctx,
        model,
        opt,
        markov_batches(gen, 16, 24, seed=6715),
        300,
        loss_fn=lm_loss,
        classifier=False,
        extra_loss=l2_wrong_sign,
    )
    gn = ctx.grad_norms
    hh, ih = per_module["cell.hh"], per_module["cell.ih"]
    bad = next(i for i, v in enumerate(ctx.losses) if not _finite(v))
    base_gn = sorted(gn[40:60])[10]
    ctx.check("the loss went non-finite after step 100", bad > 100)
    ctx.check(
        "the gradient grew 3x over the 40 steps before",
        sorted(gn[bad - 15 : bad - 5])[5] > 3 * base_gn,
    )
    ctx.check("and rose 10x before the break", max(gn[bad - 10 : bad]) > 10 * base_gn)

    def first_above(vals: list[float]) -> int:
        ref = sorted(vals[40:60])[10]
        return next(i for i in range(60, bad) if sorted(vals[i - 4 : i + 1])[2] > 4 * ref)

    ctx.check("the recurrent adapter's gradient grew first", first_above(hh) <= first_above(ih))


# -- sequence packing with a block-diagonal attention mask ----------------------------------------


class _PackedAttention(nn.Module):
    """Causal self-attention restricted to tokens of the same packed document (by hand)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        # same document, and a real token (padding carries segment id -1)
        allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0) & causal
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), -1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _PackedBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _PackedAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), seg)
        return x + self.mlp(self.ln2(x))


class _PackedLM(nn.Module):
    def __init__(self, vocab: int = 33, dim: int = 32, context: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(_PackedBlock(dim, 2) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        idx, seg, pos = packed
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x, seg)
        return self.head(self.ln_f(x))


def _packed_batches(gen: torch.Generator, switch: int | None, rows: int = 8, context: int = 64):
    """Greedy packing of Markov-chain documents into rows of ``context`` tokens. Documents are
    16 or 32 tokens long (rows always fill exactly) until batch ``switch``, when the loader
    reaches a shard of 24-token documents: two fit a row and the last 16 slots are padding
    (batch 0 is the probe batch ``fit`` draws first)."""
    docs = markov_batches(gen, 1, 32, vocab=32, branch=2, seed=6716)
    pad = 32
    n = 0
    while True:
        idx = torch.full((rows, context), pad)
        seg = torch.full((rows, context), -1)
        pos = torch.zeros(rows, context, dtype=torch.long)
        tgt = torch.full((rows, context), -100)
        for r in range(rows):
            at, doc = 0, 0
            while True:
                if switch is not None and n >= switch:
                    length = 24
                elif context - at == 16 or torch.rand(1, generator=gen) < 0.5:
                    length = 16
                else:
                    length = 32
                if at + length > context:
                    break
                x, y = next(docs)
                idx[r, at : at + length] = x[0, :length]
                tgt[r, at : at + length] = y[0, :length]
                seg[r, at : at + length] = doc
                pos[r, at : at + length] = torch.arange(length)
                at, doc = at + length, doc + 1
        n += 1
        yield (idx, seg, pos), tgt


def _packed_loss(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)


@scenario(
    "h67_packed_blockdiag_lm",
    "adagrad",
    "nonfinite",
    where="blocks.0.attn",
    diverges=140,
    heldout=True,
    onset=140,
    note="padding rows of the packing mask allow no key: softmax over all -inf gives NaN",
)
def h67_packed_padding_rows_nan(ctx: Context) -> None:
    """A decoder trained on packed rows with a block-diagonal causal mask built from segment ids.
    The mask also forbids attending to padding, and padding queries belong to no document, so a
    padding row allows no key at all. Until step 140 every row packs exactly; at 140 the loader
    reaches a shard of 24-token documents and rows end in padding: the softmax over a row of
    -inf in the first block's attention returns NaN, which the next block's attention spreads
    (0 * NaN) to every position although the padded targets are ignored."""
    gen = seeded(6717)
    model = _PackedLM()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen: dict[int, tuple[bool, bool]] = {}
    attn = model.blocks[0].attn

    def watch(m, args, out):
        seen[len(ctx.losses)] = (
            bool(torch.isfinite(args[0]).all()),
            bool(torch.isfinite(out).all()),
        )

    attn.register_forward_hook(watch)
    fit(
        ctx,
        model,
        opt,
        _packed_batches(gen, switch=141),
        220,
        loss_fn=_packed_loss,
        classifier=False,
    )
    L = ctx.losses
    ctx.check("finite until 140, NaN from 140", all(map(_finite, L[:140])) and not _finite(L[140]))
    ctx.check("it trained before", sum(L[120:140]) / 20 < 0.6 * sum(L[:10]) / 10)
    ctx.check("blocks.0.attn produced it from finite input", seen[140] == (True, False))


# -- gradient accumulation over micro-batches -----------------------------------------------------


def _accumulate(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data,
    steps: int,
    micro: Callable[[int], int],
    divide: bool,
) -> None:
    """Each optimizer step accumulates ``micro(step)`` micro-batches of 8 windows; the micro-batch
    loss is divided by their count only when ``divide``."""
    ctx.attach(model, opt)
    for step in range(steps):
        k = micro(step)
        total = 0.0
        for _ in range(k):
            x, y = next(data)
            loss = lm_loss(model(x), y)
            (loss / k if divide else loss).backward()
            total += float(loss.detach()) / k
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)


@scenario(
    "h67_grad_accumulation_lm",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=150,
    note="accumulation raised from 1 to 8 micro-batches at step 150, losses summed not averaged",
)
def h67_grad_accum_summed_microbatches(ctx: Context) -> None:
    """A small decoder trains on byte windows with plain SGD. At step 150 the micro-batch is
    split (to fit a longer context later) and gradient accumulation goes from 1 to 8 micro-
    batches, but the accumulation loop sums the micro-batch losses without dividing by 8: the
    step is 8x larger than the tuned one, past the stability limit, and the loss climbs and
    blows up within a few steps."""
    gen = seeded(6718)
    model = Decoder(vocab=128, dim=32, heads=2, layers=2, context=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = text_batches(gen, batch=8, length=32)
    _accumulate(ctx, model, opt, data, 260, lambda s: 1 if s < 150 else 8, divide=False)
    L = ctx.losses
    best = min(L[:150])
    ctx.check("trained before 150", best < 0.8 * L[0])
    ctx.check(
        "climbed past twice its best after 150",
        max(L[150:]) > 2 * best or not all(map(_finite, L[150:])),
    )


@scenario("h67_grad_accumulation_lm", "sgd_nesterov", "healthy", heldout=True)
def h67_grad_accum_averaged_control(ctx: Context) -> None:
    """The same decoder with Nesterov SGD and 4 accumulated micro-batches whose losses are
    averaged: the loss falls."""
    gen = seeded(6719)
    model = Decoder(vocab=128, dim=32, heads=2, layers=2, context=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, nesterov=True)
    data = text_batches(gen, batch=8, length=32)
    _accumulate(ctx, model, opt, data, 200, lambda s: 4, divide=True)
    L = ctx.losses
    ctx.check("loss fell", sum(L[-20:]) / 20 < 0.7 * sum(L[:5]) / 5)


# -- a byte-level model over a long streamed context (fp16 autocast) ------------------------------


@lru_cache(maxsize=1)
def _long_bytes() -> torch.Tensor:
    """A few hundred KiB of standard-library source, as bytes (no download)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    names = ("argparse.py", "typing.py", "inspect.py", "textwrap.py", "heapq.py")
    return torch.tensor(list(b"".join((root / n).read_bytes() for n in names)), dtype=torch.long)


def _long_byte_batches(gen: torch.Generator, batch: int = 2, length: int = 256):
    data = _long_bytes()
    while True:
        start = torch.randint(0, len(data) - length - 1, (batch,), generator=gen)
        win = data[start[:, None] + torch.arange(length + 1)]
        yield win[:, :-1], win[:, 1:]


class _ByteConvBlock(nn.Module):
    """Pre-LN residual block: a causal dilated convolution, then an MLP."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, 4, dilation=dilation)
        self.pad = 3 * dilation
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(self.ln1(x).transpose(1, 2), (self.pad, 0))
        x = x + self.conv(h).transpose(1, 2)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _ByteLM(nn.Module):
    """A byte-level language model: dilations 1, 4, 16, 64 see the whole 256-byte window."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, dim)
        self.blocks = nn.Sequential(*(_ByteConvBlock(dim, d) for d in (1, 4, 16, 64)))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(self.blocks(self.emb(x))))


@scenario(
    "h67_byte_long_context_lm",
    "sgd",
    "amp_overflow",
    where="blocks.0.fc",
    diverges="auto",
    heldout=True,
    note="hand-written decoupled decay on blocks.0.fc with its sign flipped: fp16 output > 65504",
)
def h67_byte_lm_fp16_fc_overflow(ctx: Context) -> None:
    """A byte-level model over 256-byte windows trains under fp16 autocast with a GradScaler and
    SGD, with a hand-written decoupled weight decay on the first block's MLP input weights whose
    sign a refactor flipped (``w += lr * wd * w``). The weights grow 10% a step; the LayerNorm
    before the layer keeps its input at unit scale and the LayerNorms after it make the rest
    indifferent to the scale, so training goes on, until the layer's fp16 output passes 65504
    and turns to inf: the loss is NaN, updates are skipped and the loss scale collapses."""
    gen = seeded(6720)
    model = _ByteLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu")
    fc = model.blocks[0].fc
    seen: dict[int, tuple[bool, float]] = {}

    def watch(m, args, out):
        peak = float(out.detach().float().abs().amax())
        seen[len(ctx.losses)] = (bool(torch.isfinite(args[0]).all()), peak)

    fc.register_forward_hook(watch)

    def decay_slip(step: int) -> None:
        with torch.no_grad():
            fc.weight.mul_(1 + 0.5 * 0.2)

    fit(
        ctx,
        model,
        opt,
        _long_byte_batches(gen),
        150,
        loss_fn=lm_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
        before=decay_slip,
    )
    L = ctx.losses
    bad = next(i for i, v in enumerate(L) if not _finite(v))
    ctx.check(
        "trained normally for 80+ steps", bad > 80 and sum(L[bad - 20 : bad]) / 20 < 0.7 * L[0]
    )
    ctx.check("blocks.0.fc's fp16 output grew past 1e4", seen[bad - 1][1] > 1e4)
    ctx.check("and overflowed, from finite input, at the NaN step", seen[bad] == (True, math.inf))
    ctx.check("the loss scale collapsed", ctx.scales[-1] < 1.0)
    x, y = next(_long_byte_batches(torch.Generator().manual_seed(9)))
    with torch.no_grad():
        ctx.check(
            "the same weights give a finite float32 loss", _finite(float(lm_loss(model(x), y)))
        )


@scenario("h67_byte_long_context_lm", "adamw", "healthy", heldout=True)
def h67_byte_lm_fp16_control(ctx: Context) -> None:
    """The same byte-level model under fp16 autocast with a GradScaler, trained with AdamW and
    its (correctly signed, decoupled) weight decay: the loss falls and stays finite."""
    gen = seeded(6721)
    model = _ByteLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    fit(
        ctx,
        model,
        opt,
        _long_byte_batches(gen),
        110,
        loss_fn=lm_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    L = ctx.losses
    ctx.check("finite throughout", all(map(_finite, L)))
    ctx.check("loss fell", sum(L[-20:]) / 20 < 0.7 * L[0])
