"""Held-out scenarios, set 93 (``h93_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face GLM-4V text decoder, Qwen2-VL text decoder, Ernie-4.5-MoE causal LM and
Mllama text causal LM from configs; SAC actor-critic (twin Q, target critics, entropy tuning) on
a generated control task, DQN with a target network on a generated gridworld, N-BEATS forecaster,
DeepAR-style Gaussian LSTM forecaster, WaveNet-style gated dilated causal CNN (fp16 autocast),
neural ODE with a fixed-step RK4 solver, Koopman autoencoder, LSTNet (conv + GRU + skip-GRU +
autoregressive highway), linear recurrent unit (LRU, complex diagonal recurrence).

Optimizers: Lion, NAdam, RAdam, AdaBelief, RMSprop, ASGD, Adam, AdamW, SGD, SGD with momentum,
Grams, AdEMAMix, StableSPAM, Adagrad.

Written out of time: 11 faults (10 causes) and 4 healthy controls. An LRU with an unconstrained
eigenvalue magnitude (meant as exploding gradients) and a Koopman autoencoder with dead ReLUs
after one large step (meant as loss of plasticity) did not produce their fault under the
stand-in and were dropped or re-made (the Koopman run is a loss spike).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, fit, scenario, seeded, text_batches


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


# -- Hugging Face text decoders built from configs -----------------------------------------------


class _HeadLM(nn.Module):
    """A Hugging Face text backbone (no LM head of its own) with an untied linear head."""

    def __init__(self, body: nn.Module, dim: int = 32, vocab: int = 128) -> None:
        super().__init__()
        self.body = body
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.body(input_ids=idx).last_hidden_state)


def _glm4v_text() -> _HeadLM:
    from transformers import Glm4vTextConfig, Glm4vTextModel

    config = Glm4vTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 1, 1],
            "partial_rotary_factor": 0.5,
        },
    )
    return _HeadLM(Glm4vTextModel(config))


def _qwen2vl_text() -> _HeadLM:
    from transformers import Qwen2VLTextConfig, Qwen2VLTextModel

    config = Qwen2VLTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    return _HeadLM(Qwen2VLTextModel(config))


def _ernie_moe():
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    config = Ernie4_5_MoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        moe_num_experts=4,
        moe_k=2,
        moe_intermediate_size=32,
        moe_layer_start_index=1,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Ernie4_5_MoeForCausalLM(config)


def _mllama_text():
    from transformers import MllamaForCausalLM, MllamaTextConfig

    config = MllamaTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        cross_attention_layers=[],
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return MllamaForCausalLM(config)


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


@scenario(
    "h93_hf_glm4v_text_lm",
    "sg_lion",
    "attention_logit_growth",
    where="body.layers.0.self_attn",
    diverges=None,
    heldout=True,
    note="attention scaling overwritten to 1.0 (port bug), Lion at a high LR",
)
def h93_glm4v_unscaled_attention_lion(ctx: Context) -> None:
    """A port of the GLM-4V text decoder overwrites the attention's 1/sqrt(head_dim) scaling with
    1.0 (the key read from the wrong config field), and trains with Lion at 1e-2: the sign
    updates keep growing q and k, the pre-softmax logits grow and the attention goes one-hot."""
    gen = seeded(9301)
    model = _glm4v_text()
    attn = model.body.layers[0].self_attn
    attn.scaling = 1.0
    probe = _attn_logit_probe(attn)
    opt = _steadygrad_opt("Lion", model.parameters(), lr=1e-2)
    fit(ctx, model, opt, text_batches(gen), 300, loss_fn=_lm_loss, classifier=False)
    ctx.check("max q.k logit grew past 1000", probe.values[-1] > 1000)
    ctx.check("and was still growing in the last third", probe.values[-1] > 2 * probe.values[200])
    ctx.check("attention rows near one-hot at the end", probe.entropy[-1] < 0.3 * probe.entropy[0])


def _steadygrad_opt(name: str, params, **kw) -> torch.optim.Optimizer:
    import steadygrad.optim as sgo

    return getattr(sgo, name)(params, **kw)


class _AttnProbe:
    def __init__(self) -> None:
        self.values: list[float] = []
        self.entropy: list[float] = []
        self.q: torch.Tensor | None = None


def _attn_logit_probe(attn: nn.Module) -> _AttnProbe:
    """Records max |q.k| * scaling and the mean causal attention entropy of head 0 (no RoPE: the
    rotation keeps norms, so this tracks the size of the real logits)."""
    probe = _AttnProbe()
    hd = attn.head_dim

    def q_hook(mod, inp, out):
        probe.q = out.detach()

    def k_hook(mod, inp, out):
        q = probe.q[..., :hd]
        k = out.detach()[..., :hd]
        s = q @ k.transpose(-1, -2) * float(attn.scaling)
        t = s.shape[-1]
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
        probe.values.append(float(s[:, mask].abs().max()))
        p = torch.softmax(s, -1)
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        probe.entropy.append(float(ent[:, t // 2 :].mean()))

    attn.q_proj.register_forward_hook(q_hook)
    attn.k_proj.register_forward_hook(k_hook)
    return probe


@scenario(
    "h93_hf_qwen2vl_text_lm",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="z-loss switched on at step 100 with the wrong sign",
    onset=100,
)
def h93_qwen2vl_zloss_wrong_sign(ctx: Context) -> None:
    """A Qwen2-VL text decoder; after 100 warm-up steps a z-loss is switched on to keep log Z
    near 0, but it is subtracted instead of added: the head pushes log Z up without bound."""
    gen = seeded(9302)
    model = _qwen2vl_text()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    log_z: list[float] = []
    cache: dict[str, torch.Tensor] = {}
    model.lm_head.register_forward_hook(lambda m, i, o: cache.__setitem__("logits", o))

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        lz = torch.logsumexp(cache["logits"].float(), -1)
        log_z.append(float(lz.mean().detach()))
        if step < 100:
            return loss
        return loss - 1e-2 * lz.pow(2).mean()  # should be + 1e-4 * ...

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        320,
        loss_fn=_lm_loss,
        classifier=False,
        extra_loss=extra,
    )
    ctx.check("log Z at step 100 below 10", abs(log_z[100]) < 10)
    ctx.check("log Z drifted up by over 30 after the switch", log_z[-1] - log_z[100] > 30)


@scenario(
    "h93_hf_ernie4_5_moe_lm",
    "radam",
    "update_ratio_out_of_range",
    where="model.embed_tokens",
    diverges=None,
    heldout=True,
    note="embedding param group lr 3e-1 instead of 3e-4",
)
def h93_ernie_moe_embedding_lr_typo(ctx: Context) -> None:
    """An Ernie-4.5-MoE causal LM with a separate parameter group for the token embeddings
    (meant to carry no weight decay) whose learning rate was typed 3e-1 instead of 3e-4: the
    embedding rows are rewritten by every step."""
    gen = seeded(9303)
    model = _ernie_moe()
    emb = model.model.embed_tokens.weight
    rest = [p for p in model.parameters() if p is not emb]
    opt = torch.optim.RAdam(
        [
            {"params": rest, "weight_decay": 0.01},
            {"params": [emb], "lr": 3e-1, "weight_decay": 0.0},
        ],
        lr=3e-4,
    )
    ratios: dict[str, list[float]] = {"emb": [], "q": []}
    q = model.model.layers[0].self_attn.q_proj.weight
    prev = {"emb": emb.detach().clone(), "q": q.detach().clone()}

    def before(step: int) -> None:
        for key, p in (("emb", emb), ("q", q)):
            if step > 0:
                ratios[key].append(float((p.detach() - prev[key]).norm() / p.detach().norm()))
            prev[key] = p.detach().clone()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        250,
        loss_fn=_lm_loss,
        classifier=False,
        forward=_hf_logits,
        before=before,
    )
    r_emb, r_q = _median(ratios["emb"][20:]), _median(ratios["q"][20:])
    ctx.check("embedding update/weight ratio over 0.03 per step", r_emb > 0.03)
    ctx.check("embedding ratio over 10x the attention's", r_emb > 10 * r_q)
    ctx.check("loss stays finite", all(math.isfinite(v) for v in ctx.losses))


@scenario("h93_hf_mllama_text_lm", "sg_ademamix", "healthy", heldout=True)
def h93_mllama_text_healthy_ademamix(ctx: Context) -> None:
    """A 2-layer Mllama text decoder (no cross-attention layers) on byte windows, AdEMAMix."""
    gen = seeded(9304)
    model = _mllama_text()
    opt = _steadygrad_opt("AdEMAMix", model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        250,
        loss_fn=_lm_loss,
        classifier=False,
        forward=_hf_logits,
    )
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 0.8)


# -- SAC actor-critic on a generated control task -------------------------------------------------


class TanhSquash(nn.Module):
    """a = tanh(u), log pi(a) = log N(u) - sum log(1 - tanh(u)^2 + eps)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, u: torch.Tensor, logp_u: torch.Tensor):
        a = torch.tanh(u)
        return a, logp_u - torch.log(1 - a.pow(2) + self.eps).sum(-1)


class Actor(nn.Module):
    def __init__(self, obs: int, act: int, eps: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.mu = nn.Linear(64, act)
        self.log_std = nn.Linear(64, act)
        self.squash = TanhSquash(eps)

    def forward(self, s: torch.Tensor):
        h = self.body(s)
        mu, log_std = self.mu(h), self.log_std(h).clamp(-5, 2)
        std = log_std.exp()
        u = mu + std * torch.randn_like(mu)
        logp_u = (-0.5 * ((u - mu) / std).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return self.squash(u, logp_u)


def _critic(obs: int, act: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(obs + act, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )


class SACAgent(nn.Module):
    def __init__(self, obs: int = 3, act: int = 2, eps: float = 1e-6) -> None:
        super().__init__()
        self.actor = Actor(obs, act, eps)
        self.q1 = _critic(obs, act)
        self.q2 = _critic(obs, act)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.act_dim = act


def _sac_run(
    ctx: Context,
    agent: SACAgent,
    opt,
    gen,
    steps: int,
    action_scale: float,
    env_max: float,
    reset_targets_at: int | None = None,
) -> list[float]:
    """A generated task: the state carries a wanted velocity v* in [-env_max, env_max]^2; the
    reward is -|action_scale * a - v*|^2, the next state is drawn afresh (gamma 0.9). Returns
    the mean |a| per step."""
    import copy

    targ1, targ2 = copy.deepcopy(agent.q1), copy.deepcopy(agent.q2)
    for p in list(targ1.parameters()) + list(targ2.parameters()):
        p.requires_grad_(False)
    actor_params = list(agent.actor.parameters())
    gamma, tau, target_entropy = 0.9, 0.01, -float(agent.act_dim)

    def states(n: int) -> torch.Tensor:
        v = (torch.rand(n, 2, generator=gen) * 2 - 1) * env_max
        return torch.cat([v, torch.randn(n, 1, generator=gen)], 1)

    buf_s, buf_a, buf_r, buf_s2 = [], [], [], []
    mean_abs_a: list[float] = []
    snapshot = (copy.deepcopy(targ1.state_dict()), copy.deepcopy(targ2.state_dict()))
    ctx.attach(agent, opt)
    for step in range(steps):
        if step == reset_targets_at:
            targ1.load_state_dict(snapshot[0])
            targ2.load_state_dict(snapshot[1])
        s = states(32)
        with torch.no_grad():
            a, _ = agent.actor(s)
        r = -(action_scale * a - s[:, :2]).pow(2).sum(-1)
        buf_s.append(s), buf_a.append(a), buf_r.append(r), buf_s2.append(states(32))
        del buf_s[:-50], buf_a[:-50], buf_r[:-50], buf_s2[:-50]
        idx = torch.randint(0, 32 * len(buf_s), (128,), generator=gen)
        bs, ba, br, bs2 = (torch.cat(b)[idx] for b in (buf_s, buf_a, buf_r, buf_s2))
        alpha = agent.log_alpha.exp()
        with torch.no_grad():
            a2, logp2 = agent.actor(bs2)
            sa2 = torch.cat([bs2, a2], 1)
            q_t = torch.min(targ1(sa2), targ2(sa2)).squeeze(-1) - alpha * logp2
            y = br + gamma * q_t
        sa = torch.cat([bs, ba], 1)
        critic_loss = F.mse_loss(agent.q1(sa).squeeze(-1), y) + F.mse_loss(
            agent.q2(sa).squeeze(-1), y
        )
        pa, logp = agent.actor(bs)
        spa = torch.cat([bs, pa], 1)
        q_pi = torch.min(agent.q1(spa), agent.q2(spa)).squeeze(-1)
        actor_loss = (alpha.detach() * logp - q_pi).mean()
        alpha_loss = -(agent.log_alpha * (logp.detach() + target_entropy)).mean()
        opt.zero_grad(set_to_none=True)
        g_actor = torch.autograd.grad(actor_loss, actor_params, retain_graph=True)
        (critic_loss + alpha_loss).backward()
        for p, g in zip(actor_params, g_actor, strict=True):
            p.grad = g
        opt.step()
        ctx.step(critic_loss + actor_loss)
        with torch.no_grad():
            for t, q in ((targ1, agent.q1), (targ2, agent.q2)):
                for pt, pq in zip(t.parameters(), q.parameters(), strict=True):
                    pt.lerp_(pq, tau)
        mean_abs_a.append(float(pa.detach().abs().mean()))
    return mean_abs_a


@scenario(
    "h93_sac_twin_q_velocity_task",
    "sg_adabelief",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="target critics reloaded from the step-0 snapshot at step 250 (resume bug)",
    onset=250,
)
def h93_sac_target_critics_reset(ctx: Context) -> None:
    """SAC resumed at step 250 from a checkpoint whose loader restores the online nets but
    re-copies the target critics from the initial snapshot: the bootstrap targets jump from the
    learnt values back to the random initial ones, and the critic loss jumps with them."""
    gen = seeded(9305)
    agent = SACAgent()
    opt = _steadygrad_opt("AdaBelief", agent.parameters(), lr=1e-3)
    _sac_run(ctx, agent, opt, gen, 450, action_scale=2.5, env_max=2.0, reset_targets_at=250)
    L = ctx.losses
    before = _median(L[200:250])
    ctx.check("loss within 5 steps of 250 over 2x the median before", max(L[250:255]) > 2 * before)
    ctx.check("finite throughout", all(math.isfinite(v) for v in L))
    ctx.check("had trained before", before < 0.3 * _mean(L[:10]))


@scenario("h93_sac_twin_q_velocity_task", "adam", "healthy", heldout=True)
def h93_sac_healthy_adam(ctx: Context) -> None:
    """The same SAC with epsilon in the squash correction and actions scaled to the env's bound."""
    gen = seeded(9306)
    agent = SACAgent(eps=1e-6)
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3)
    mean_abs_a = _sac_run(ctx, agent, opt, gen, 300, action_scale=2.5, env_max=2.0)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("actions stay inside the tanh range", max(mean_abs_a) < 0.95)
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < 0.3 * _mean(ctx.losses[:10]))


# -- DQN with a target network on a generated gridworld ------------------------------------------


class QNet(nn.Module):
    def __init__(self, cells: int = 36, actions: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cells, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.q = nn.Linear(64, actions)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.q(self.net(s))


def _grid_transitions(gen: torch.Generator, n: int, side: int = 6):
    """Uniform (s, a, r, s', done) on a side x side grid, goal in the far corner (+1, terminal),
    a -0.01 step cost."""
    pos = torch.randint(0, side, (n, 2), generator=gen)
    a = torch.randint(0, 4, (n,), generator=gen)
    moves = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    nxt = (pos + moves[a]).clamp(0, side - 1)
    done = (nxt == side - 1).all(1)
    r = torch.where(done, 1.0, -0.01)

    def onehot(p: torch.Tensor) -> torch.Tensor:
        return F.one_hot(p[:, 0] * side + p[:, 1], side * side).float()

    return onehot(pos), a, r, onehot(nxt), done.float()


@scenario(
    "h93_dqn_target_net_gridworld",
    "rmsprop",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="gamma typed 1.0 and the terminal mask dropped: Q bootstraps through the goal forever",
)
def h93_dqn_gamma_one_no_terminal(ctx: Context) -> None:
    """DQN on a 6x6 gridworld with a target network synced every 25 steps; the discount was set
    to 1.0 and the (1 - done) mask dropped from the target, so each target sync adds another
    reward to the goal's value: the Q values and the TD loss climb with no end."""
    gen = seeded(9307)
    qnet = QNet()
    target = QNet()
    target.load_state_dict(qnet.state_dict())
    opt = torch.optim.RMSprop(qnet.parameters(), lr=5e-4)
    ctx.attach(qnet, opt)
    q_max: list[float] = []
    for step in range(500):
        if step % 25 == 0:
            target.load_state_dict(qnet.state_dict())
        s, a, r, s2, done = _grid_transitions(gen, 128)
        with torch.no_grad():
            y = r + 1.0 * target(s2).max(1).values  # meant: r + 0.95 * (1 - done) * max Q'
        q = qnet(s).gather(1, a[:, None]).squeeze(1)
        loss = F.mse_loss(q, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        q_max.append(float(q.detach().max()))
    ctx.check("max Q above 10 (true values are at most 1)", q_max[-1] > 10)
    ctx.check(
        "TD loss in the last 100 steps over 10x the first 100's",
        _mean(ctx.losses[-100:]) > 10 * _mean(ctx.losses[:100]),
    )


# -- N-BEATS forecaster -------------------------------------------------------------------------


def _series_batches(gen: torch.Generator, batch: int = 64, back: int = 48, horizon: int = 12):
    """Windows of generated series: two seasonal components, a trend and noise."""
    t = torch.arange(back + horizon).float()
    while True:
        p1 = torch.randint(6, 16, (batch, 1), generator=gen).float()
        ph = torch.rand(batch, 2, generator=gen) * 6.28
        amp = 0.5 + torch.rand(batch, 2, generator=gen)
        trend = (torch.rand(batch, 1, generator=gen) - 0.5) * 0.04
        x = (
            amp[:, :1] * torch.sin(6.28 * t / p1 + ph[:, :1])
            + 0.5 * amp[:, 1:] * torch.sin(6.28 * t / 24 + ph[:, 1:])
            + trend * t
            + 0.1 * torch.randn(batch, back + horizon, generator=gen)
        )
        yield x[:, :back], x[:, back:]


class NBeatsBlock(nn.Module):
    def __init__(self, back: int, horizon: int, width: int = 64) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(back, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.backcast = nn.Linear(width, back)
        self.forecast = nn.Linear(width, horizon)

    def forward(self, x: torch.Tensor):
        h = self.fc(x)
        return self.backcast(h), self.forecast(h)


class NBeats(nn.Module):
    """Generic N-BEATS: doubly residual stack of fully connected blocks."""

    def __init__(self, back: int = 48, horizon: int = 12, blocks: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(NBeatsBlock(back, horizon) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        for block in self.blocks:
            b, f = block(x)
            x = x - b
            out = out + f
        return out


@scenario(
    "h93_nbeats_generic_forecaster",
    "asgd",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="sensor glitch (1e4 readings) in some windows of one batch at step 260",
    onset=260,
)
def h93_nbeats_sensor_glitch(ctx: Context) -> None:
    """A generic N-BEATS forecaster (ASGD, gradient clipping at 1.0 as usual); at step 260 a
    batch holds a logger glitch: 5 windows contain 1e4 readings in history and horizon."""
    gen = seeded(9308)
    model = NBeats()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    batches = _series_batches(gen)
    ctx.attach(model, opt)
    for step in range(420):
        x, y = next(batches)
        if step == 260:
            x, y = x.clone(), y.clone()
            x[:5, 20:30] = 1e4
            y[:5, :4] = 1e4
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
    before = _median(ctx.losses[200:260])
    ctx.check("loss at step 260 over 1000x the median before", ctx.losses[260] > 1000 * before)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("trained before the glitch", before < 0.5 * _mean(ctx.losses[:10]))


# -- DeepAR-style Gaussian LSTM forecaster -------------------------------------------------------


class DeepAR(nn.Module):
    """LSTM over (previous value, time features); Gaussian head (mu, softplus sigma)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, hidden, batch_first=True)
        self.mu = nn.Linear(hidden, 1)
        self.sigma = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor):
        t = torch.arange(x.shape[1]).float()
        feats = torch.stack([x, torch.sin(t / 4).expand_as(x), torch.cos(t / 4).expand_as(x)], -1)
        h = self.rnn(feats)[0]
        return self.mu(h).squeeze(-1), F.softplus(self.sigma(h)).squeeze(-1) + 1e-3


def _gauss_nll(out, z: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    mu, sigma = out
    nll = torch.log(sigma) + 0.5 * ((z - mu) / sigma).pow(2) + 0.5 * math.log(2 * math.pi)
    return nll.sum() if reduction == "sum" else nll.mean()


@scenario(
    "h93_deepar_gaussian_lstm",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    note="resume re-applies a static fp16 loss scale 2**16 to one fp32 backward at step 150",
    onset=150,
)
def h93_deepar_stale_loss_scale_once(ctx: Context) -> None:
    """DeepAR-style forecaster trained with Adam (beta2 0.999). At step 150 the job resumes from
    a checkpoint of an earlier fp16 run and the first backward still multiplies the loss by the
    saved static loss scale 2**16 (no unscale, no overflow check in fp32): one gradient 65536x
    the usual fills every second moment; later updates are tiny and the loss never gets back
    to where it was."""
    gen = seeded(9309)
    model = DeepAR()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = _series_batches(gen, back=36, horizon=12)
    ctx.attach(model, opt)
    step_sizes: list[float] = []
    root_v: dict[int, float] = {}
    for step in range(450):
        x, y = next(batches)
        z = torch.cat([x, y], 1) / 2
        loss = _gauss_nll(model(z[:, :-1]), z[:, 1:])
        opt.zero_grad(set_to_none=True)
        (loss * 65536.0 if step == 150 else loss).backward()
        ctx.grad_norms.append(
            float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
        )
        w0 = [p.detach().clone() for p in model.parameters()]
        opt.step()
        step_sizes.append(
            float(
                sum(
                    (p.detach() - w).norm() ** 2
                    for p, w in zip(model.parameters(), w0, strict=True)
                )
                ** 0.5
            )
        )
        if step in (149, 440):
            root_v[step] = _mean(
                [float(opt.state[p]["exp_avg_sq"].sqrt().mean()) for p in model.parameters()]
            )
        ctx.step(loss)
    L = ctx.losses
    ctx.check(
        "the step-150 gradient over 10000x the median",
        ctx.grad_norms[150] > 1e4 * _median(ctx.grad_norms[:150]),
    )
    ctx.check("sqrt(second moment) still over 100x at step 440", root_v[440] > 100 * root_v[149])
    ctx.check(
        "updates at the end over 5x smaller than before",
        _median(step_sizes[400:450]) < 0.2 * _median(step_sizes[100:150]),
    )
    ctx.check(
        "loss at the end still 0.5 above its pre-spike level",
        _mean(L[420:450]) > _mean(L[120:150]) + 0.5,
    )


# -- WaveNet-style gated dilated causal CNN --------------------------------------------------------


class GatedResidual(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.filt = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.gate = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.res = nn.Conv1d(ch, ch, 1)
        self.skip = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor):
        h = F.pad(x, (self.dilation, 0))
        z = torch.tanh(self.filt(h)) * torch.sigmoid(self.gate(h))
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """Causal input conv, gated residual blocks (dilations 1..16), skip sum, 1x1 output convs;
    predicts the next sample of a waveform."""

    def __init__(self, ch: int = 12) -> None:
        super().__init__()
        self.causal_in = nn.Conv1d(1, ch, 2)
        self.layers = nn.ModuleList(GatedResidual(ch, d) for d in (1, 2, 4, 8, 16))
        self.out1 = nn.Conv1d(ch, ch, 1)
        self.out2 = nn.Conv1d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.causal_in(F.pad(x[:, None], (1, 0)))
        skips = 0
        for layer in self.layers:
            h, s = layer(h)
            skips = skips + s
        return self.out2(F.relu(self.out1(F.relu(skips))))[:, 0]


def _wave_batches(gen: torch.Generator, batch: int = 16, length: int = 64):
    """Generated 'audio': two harmonics with random pitch, decay and noise, in [-1, 1]."""
    t = torch.arange(length + 1).float()
    while True:
        f = 0.05 + 0.25 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        env = torch.exp(-t / (40 + 200 * torch.rand(batch, 1, generator=gen)))
        w = env * (0.6 * torch.sin(f * t + ph) + 0.3 * torch.sin(2 * f * t + 2 * ph))
        w = w + 0.02 * torch.randn(batch, length + 1, generator=gen)
        yield w[:, :-1], w[:, 1:]


def _first_nonfinite_module(model: nn.Module) -> dict[str, str]:
    """Forward hooks that record the first module (in call order) with a non-finite output."""
    found: dict[str, str] = {}

    def mark(name: str):
        def hook(m, i, o):
            out = o[0] if isinstance(o, tuple) else o
            if "name" not in found and not torch.isfinite(out).all():
                found["name"] = name

        return hook

    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            mod.register_forward_hook(mark(name))
    return found


@scenario(
    "h93_wavenet_gated_dilated",
    "adamw",
    "amp_overflow",
    where="causal_in",
    diverges="auto",
    heldout=True,
    note="fp16 autocast + GradScaler; from step 180 inputs of a 24-bit PCM shard left unscaled",
    onset=180,
)
def h93_wavenet_fp16_int16_shard(ctx: Context) -> None:
    """WaveNet-style next-sample model under fp16 autocast with a GradScaler. From step 180 the
    loader reads a second shard stored as 24-bit PCM and scales the targets but not the inputs:
    the input convolution overflows float16's 65504 and the forward is no longer finite."""
    gen = seeded(9310)
    model = WaveNet()
    found = _first_nonfinite_module(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x * 8388607.0, y) if step >= 180 else (x, y)  # meant: x / 1 (already scaled)

    fit(
        ctx,
        model,
        opt,
        _wave_batches(gen),
        260,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite before 180, not from 180", all(finite[:180]) and not any(finite[180:]))
    ctx.check("first overflow in causal_in", found.get("name") == "causal_in")
    ctx.check("trained before the shard", _mean(ctx.losses[150:180]) < 0.5 * _mean(ctx.losses[:10]))


@scenario(
    "h93_wavenet_gated_dilated",
    "sg_stablespam",
    "healthy",
    heldout=True,
    note="fp16 autocast + GradScaler, data in [-1, 1]",
)
def h93_wavenet_healthy_stablespam(ctx: Context) -> None:
    gen = seeded(9311)
    model = WaveNet()
    opt = _steadygrad_opt("StableSPAM", model.parameters(), lr=2e-3)
    fit(
        ctx,
        model,
        opt,
        _wave_batches(gen),
        260,
        loss_fn=F.mse_loss,
        classifier=False,
        scaler=torch.amp.GradScaler("cpu"),
        amp=True,
    )
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))


# -- neural ODE with a fixed-step RK4 solver -------------------------------------------------------


class ODEFunc(nn.Module):
    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NeuralODE(nn.Module):
    """x(t_k) for k = 1..steps, classic RK4 with a fixed step."""

    def __init__(self, dt: float = 0.1, steps: int = 10) -> None:
        super().__init__()
        self.func = ODEFunc()
        self.dt, self.steps = dt, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = [], self.dt
        for _ in range(self.steps):
            k1 = self.func(x)
            k2 = self.func(x + 0.5 * h * k1)
            k3 = self.func(x + 0.5 * h * k2)
            k4 = self.func(x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            out.append(x)
        return torch.stack(out, 1)


def _spiral_batches(gen: torch.Generator, batch: int = 64, dt: float = 0.1, steps: int = 10):
    """Trajectories of dx/dt = A x^3 (a cubic spiral), solved with 10 fine RK4 substeps."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])

    def f(x: torch.Tensor) -> torch.Tensor:
        return (x**3) @ a.T

    while True:
        x = (torch.rand(batch, 2, generator=gen) * 2 - 1) * 1.5
        x0, out, h = x, [], dt / 10
        for _ in range(steps):
            for _ in range(10):
                k1 = f(x)
                k2 = f(x + 0.5 * h * k1)
                k3 = f(x + 0.5 * h * k2)
                k4 = f(x + h * k3)
                x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            out.append(x)
        yield x0, torch.stack(out, 1)


@scenario(
    "h93_neural_ode_rk4_spiral",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak LR typed 10x too high",
)
def h93_node_rk4_warmup_peak_typo(ctx: Context) -> None:
    """A neural ODE (RK4, fixed step) fit to cubic-spiral trajectories with SGD + momentum and a
    linear warm-up over 150 steps; the peak LR was typed 10x too high, so once the warm-up
    passes the curvature's 2/sharpness limit the loss oscillates and blows up."""
    gen = seeded(9312)
    model = NeuralODE()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    peak = 3.0  # meant: 0.3

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / 150)

    fit(
        ctx,
        model,
        opt,
        _spiral_batches(gen),
        300,
        loss_fn=F.mse_loss,
        before=before,
        classifier=False,
    )
    L = ctx.losses
    finite = [v for v in L if math.isfinite(v)]
    ctx.check("trained early in the warm-up", min(L[:60]) < 0.5 * L[0])
    ctx.check(
        "loss after step 60 blew up past 1000x the best before",
        len(finite) < len(L) or max(L[60:]) > 1000 * min(L[:60]),
    )


# -- Koopman autoencoder -------------------------------------------------------------------------


class KoopmanAE(nn.Module):
    def __init__(self, obs: int = 16, latent: int = 4, width: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(obs, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, latent),
        )
        self.koopman = nn.Linear(latent, latent, bias=False)
        self.decoder = nn.Sequential(nn.Linear(latent, width), nn.ReLU(), nn.Linear(width, obs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, 2, obs) consecutive observations; returns the summed loss terms."""
        z0, z1 = self.encoder(x[:, 0]), self.encoder(x[:, 1])
        zp = self.koopman(z0)
        return (
            F.mse_loss(self.decoder(z0), x[:, 0])
            + F.mse_loss(self.decoder(zp), x[:, 1])
            + F.mse_loss(zp, z1)
        )


def _koopman_batches(gen: torch.Generator, batch: int = 64):
    """Pairs of consecutive observations of a Van-der-Pol-like oscillator seen through a fixed
    random nonlinear 16-d embedding."""
    emb_gen = torch.Generator().manual_seed(77)
    w = torch.randn(5, 16, generator=emb_gen)
    dt = 0.1

    def observe(s: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([s[:, 0], s[:, 1], s[:, 0] ** 2, s[:, 0] * s[:, 1], s[:, 1] ** 2], 1)
        return torch.tanh(feats @ w / 2)

    def flow(s: torch.Tensor) -> torch.Tensor:
        x, v = s[:, 0], s[:, 1]
        for _ in range(5):
            x, v = x + dt / 5 * v, v + dt / 5 * (0.5 * (1 - x**2) * v - x)
        return torch.stack([x, v], 1)

    while True:
        s = (torch.rand(batch, 2, generator=gen) * 2 - 1) * 2
        yield torch.stack([observe(s), observe(flow(s))], 1), None


@scenario(
    "h93_koopman_autoencoder_vdp",
    "sgd",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="scheduler's warm-restart gives one step at 3000x the LR (step 150); grads clipped",
    onset=150,
)
def h93_koopman_lr_restart_glitch(ctx: Context) -> None:
    """Koopman autoencoder on plain SGD with gradient clipping at 1.0. A warm-restart hook meant
    to reset the LR to its base value multiplies it by 3000 for one step at step 150: the weights
    jump, the loss jumps by orders of magnitude and then slowly comes back down."""
    gen = seeded(9313)
    model = KoopmanAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acts: dict[str, torch.Tensor] = {}
    model.encoder[1].register_forward_hook(lambda m, i, o: acts.__setitem__("h1", o.detach()))

    dead: list[float] = []
    batches = _koopman_batches(gen)
    ctx.attach(model, opt)
    for step in range(400):
        x, _ = next(batches)
        opt.param_groups[0]["lr"] = 0.05 * (3000 if step == 150 else 1)  # meant: 0.05 * 1
        loss = model(x)
        dead.append(dead_fraction(acts["h1"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    ctx.check("loss at 151 over 1000x the median before", L[151] > 1000 * _median(L[100:150]))
    ctx.check("finite throughout", all(math.isfinite(v) for v in L))


# -- LSTNet with a RevIN-style input normaliser --------------------------------------------------


class RevIN(nn.Module):
    """Per-window, per-channel standardisation (no epsilon: the bug)."""

    def forward(self, x: torch.Tensor):
        mean = x.mean(1, keepdim=True)
        std = x.std(1, keepdim=True)
        return (x - mean) / std, mean, std


class LSTNet(nn.Module):
    def __init__(
        self, ch: int = 6, hid: int = 32, skip: int = 12, skip_hid: int = 8, hw: int = 12
    ) -> None:
        super().__init__()
        self.revin = RevIN()
        self.conv = nn.Conv1d(ch, hid, 6)
        self.gru = nn.GRU(hid, hid, batch_first=True)
        self.skip_gru = nn.GRU(hid, skip_hid, batch_first=True)
        self.head = nn.Linear(hid + skip * skip_hid, ch)
        self.ar = nn.Linear(hw, 1)
        self.skip, self.hw = skip, hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn, mean, std = self.revin(x)
        c = F.relu(self.conv(xn.transpose(1, 2))).transpose(1, 2)  # (b, t', hid)
        r = self.gru(c)[0][:, -1]
        b, t, h = c.shape
        n = (t // self.skip) * self.skip
        cs = c[:, -n:].reshape(b, n // self.skip, self.skip, h).transpose(1, 2)
        s = self.skip_gru(cs.reshape(b * self.skip, n // self.skip, h))[0][:, -1]
        out = self.head(torch.cat([r, s.reshape(b, -1)], 1))
        out = out + self.ar(xn[:, -self.hw :].transpose(1, 2)).squeeze(-1)
        return out * std[:, 0] + mean[:, 0]


def _multi_series(gen: torch.Generator, batch: int = 32, length: int = 60, ch: int = 6):
    t = torch.arange(length + 1).float()
    while True:
        ph = torch.rand(batch, 1, ch, generator=gen) * 6.28
        per = torch.tensor([8.0, 12, 12, 24, 6, 16])
        x = torch.sin(6.28 * t[None, :, None] / per + ph) + 0.2 * torch.randn(
            batch, length + 1, ch, generator=gen
        )
        x[..., 1] = x[..., 1] + 0.5 * x[..., 0]
        yield x[:, :-1], x[:, -1]


@scenario(
    "h93_lstnet_revin_forecaster",
    "sg_grams",
    "nonfinite",
    where="revin",
    diverges=230,
    heldout=True,
    note="a stuck sensor (constant channel) at step 230; the normaliser divides by std 0",
    onset=230,
)
def h93_lstnet_stuck_sensor_revin(ctx: Context) -> None:
    """LSTNet behind a RevIN-style per-window normaliser written without an epsilon. At step 230
    one window has a sensor that is stuck (the same reading for the whole window): its standard
    deviation is exactly 0 and the normaliser returns 0/0 = NaN."""
    gen = seeded(9314)
    model = LSTNet()
    found = _first_nonfinite_module(model)
    opt = _steadygrad_opt("Grams", model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 230:
            x = x.clone()
            x[3, :, 2] = 0.731
        return x, y

    fit(ctx, model, opt, _multi_series(gen), 300, loss_fn=F.mse_loss, alter=alter, classifier=False)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite before 230, not at 230", all(finite[:230]) and not finite[230])
    ctx.check("first non-finite output from revin", found.get("name") == "revin")
    ctx.check("trained before", _mean(ctx.losses[200:230]) < 0.6 * _mean(ctx.losses[:10]))


# -- linear recurrent unit (LRU) ------------------------------------------------------------------


class LRU(nn.Module):
    """Complex diagonal linear recurrence h_t = lambda * h_{t-1} + B x_t, y_t = Re(C h_t) + D x_t.

    ``stable``: lambda = exp(-exp(nu) + i exp(theta)) with the sqrt(1 - |lambda|^2) input
    normalisation (as in the paper); otherwise |lambda| is a raw parameter (the bug)."""

    def __init__(self, d_in: int = 1, n: int = 32, d_out: int = 32, stable: bool = True) -> None:
        super().__init__()
        self.stable = stable
        r = 0.9 + 0.099 * torch.rand(n)
        theta = 0.1 * torch.rand(n) * 6.28
        if stable:
            self.nu = nn.Parameter(torch.log(-torch.log(r)))
        else:
            self.nu = nn.Parameter(r)
        self.theta = nn.Parameter(theta)
        self.b_re = nn.Parameter(torch.randn(n, d_in) / math.sqrt(2 * d_in))
        self.b_im = nn.Parameter(torch.randn(n, d_in) / math.sqrt(2 * d_in))
        self.c_re = nn.Parameter(torch.randn(d_out, n) / math.sqrt(n))
        self.c_im = nn.Parameter(torch.randn(d_out, n) / math.sqrt(n))
        self.d = nn.Parameter(torch.randn(d_out, d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mag = torch.exp(-torch.exp(self.nu)) if self.stable else self.nu
        lam = torch.polar(mag, self.theta)
        b = torch.complex(self.b_re, self.b_im)
        if self.stable:
            b = b * torch.sqrt(1 - mag**2)[:, None]
        u = x.to(torch.complex64) @ b.T  # (batch, time, n)
        h = torch.zeros(x.shape[0], u.shape[-1], dtype=torch.complex64)
        for t in range(x.shape[1]):
            h = lam * h + u[:, t]
        c = torch.complex(self.c_re, self.c_im)
        return (h @ c.T).real + x[:, -1] @ self.d.T


class LRUClassifier(nn.Module):
    def __init__(self, stable: bool) -> None:
        super().__init__()
        self.lru = LRU(stable=stable)
        self.head = nn.Sequential(nn.GELU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lru(x))


def _recall_batches(gen: torch.Generator, length: int = 64, batch: int = 64):
    """Sign of the sum of the first 8 of ``length`` noise values: long-range memory."""
    while True:
        x = torch.randn(batch, length, 1, generator=gen)
        yield x, (x[:, :8].sum((1, 2)) > 0).long()


@scenario("h93_lru_diagonal_ssm", "adagrad", "healthy", heldout=True)
def h93_lru_stable_adagrad(ctx: Context) -> None:
    gen = seeded(9316)
    model = LRUClassifier(stable=True)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    fit(ctx, model, opt, _recall_batches(gen), 300)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss went down", _mean(ctx.losses[-30:]) < 0.8 * _mean(ctx.losses[:10]))
