"""Held-out set 619 (``h619_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data or scikit-learn's bundled digits, and one Hugging Face causal LM built
from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digit_batches, scenario, seeded, text_batches


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


class Net3(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def _median(xs: list[float], k: int, n: int = 10) -> float:
    return float(torch.tensor(xs[max(0, k - n) : k]).median())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _gnorm(model: nn.Module) -> float:
    gs = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


# -- faults -----------------------------------------------------------------------------------------


class ShotAttention(nn.Module):
    """Single-layer self-attention; keeps the last pre-softmax logits for its checks."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hd = dim // heads
        self.scale = hd**0.5  # bug: should be hd**-0.5
        self.last_logits = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) * self.scale
        self.last_logits = logits.detach()
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class ShuttleNet(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 32, length: int = 12, classes: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.ln = nn.LayerNorm(dim)
        self.attn = ShotAttention(dim, 2)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        x = x + self.attn(self.ln(x))
        return self.head(x.mean(1))


def _feather_batches(gen: torch.Generator, batch: int = 64, length: int = 12):
    """Shuttlecock flight sequences: is feather-gap token 1 seen more often than token 2?"""
    while True:
        x = torch.randint(3, 16, (batch, length), generator=gen)
        r = torch.rand(batch, length, generator=gen)
        x = torch.where(r < 0.2, 1, torch.where(r < 0.4, 2, x))
        y = ((x == 1).sum(1) > (x == 2).sum(1)).long()
        yield x, y


@scenario(
    family="shuttlecock_feather_flight_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="hand-written attention with scale head_dim**0.5 typed for head_dim**-0.5, qkv in a "
    "no-decay param group and AdamW at lr 1e-2: the pre-softmax q.k logits grow steadily",
)
def h619_shuttlecock_attention_scale_typo(ctx: Context) -> None:
    gen = seeded(6191)
    model = ShuttleNet()
    qkv = list(model.attn.qkv.parameters())
    ids = {id(p) for p in qkv}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": qkv, "weight_decay": 0.0}, {"params": rest, "weight_decay": 1e-2}], lr=1e-2
    )
    ctx.attach(model, opt)
    batches = _feather_batches(gen)
    peaks = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(model.attn.last_logits.abs().amax()))
    start = sum(peaks[:5]) / 5
    end = sum(peaks[-5:]) / 5
    ctx.check("attention logits grew over 5x", end > 5 * start)
    ctx.check("still growing in the last quarter", end > 1.2 * peaks[150])
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="clog_sole_carve_depth_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="a manual loss scale of 65536 from a debugging session left in for step 80: one giant "
    "gradient fills Adam's second moment, which stays huge and shrinks every update afterwards",
)
def h619_clog_sole_debug_loss_scale(ctx: Context) -> None:
    gen = seeded(6192)
    model = Net3(8, 32, act=F.gelu)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 80
    moves: list[float] = []
    v_before = v_after = 0.0
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * (65536.0 if step == onset else 1.0)).backward()
        ctx.grad_norms.append(_gnorm(model))
        before = _flat(model)
        opt.step()
        moves.append(float((_flat(model) - before).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        v = sum(float(s["exp_avg_sq"].sum()) for s in opt.state.values())
        if step == onset - 1:
            v_before = v
        if step == onset + 60:
            v_after = v
    g = ctx.grad_norms
    ctx.check("gradient over 1000x at onset", g[onset] > 1000 * _median(g, onset))
    ctx.check("second moment over 1e4x 60 steps on", v_after > 1e4 * v_before)
    pre = sum(moves[onset - 20 : onset]) / 20
    post = sum(moves[onset + 20 : onset + 60]) / 40
    ctx.check("updates shrink over 10x after onset", post < pre / 10)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="katydid_chirp_rate_temperature_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="SGD lr typed 3.0 for 0.03 on unstandardised air-temperature readings: lr x sharpness "
    "is over 2 from the start and the loss blows up",
)
def h619_katydid_chirp_lr_typo(ctx: Context) -> None:
    gen = seeded(6193)
    model = Net3(8, 32, act=torch.tanh)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    base = _regression(gen)

    def batches():
        while True:
            x, y = next(base)
            yield x * 3.0 + 1.0, y  # readings in their raw spread, not standardised

    data = batches()
    probe_x, probe_y = next(data)
    # top Hessian eigenvalue at init by power iteration
    params = list(model.parameters())
    loss0 = F.mse_loss(model(probe_x), probe_y)
    grads = torch.autograd.grad(loss0, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(20):
        nv = float(torch.sqrt(sum((u**2).sum() for u in v)))
        v = [u / nv for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    lr = 3.0  # meant 0.03
    ctx.check("lr x sharpness over 2 at init", lr * lam > 2)
    ctx.check("the meant lr is under the limit", 0.03 * lam < 2)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    for _ in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss blew up over 20x its start", max(ls) > 20 * ls[0] or not math.isfinite(ls[-1]))
    # the meant rate trains: the same init with lr 0.03 (no monitor)
    ref = Net3(8, 32, act=torch.tanh)
    ref.load_state_dict(init)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.03)
    ref_ls = []
    for _ in range(100):
        x, y = next(data)
        r = F.mse_loss(ref(x), y)
        r.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        ref_ls.append(float(r.detach()))
    ctx.check("lr 0.03 stays finite and below its start", max(ref_ls[-10:]) < ref_ls[0])


@scenario(
    family="pinata_swing_break_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="12-deep ReLU MLP initialised with std 2.0/sqrt(fan_in) (the gain written as 2 where "
    "sqrt(2) was meant): the backward signal grows through depth, SGD momentum (lr 2e-5) blows up within a few steps",
)
def h619_pinata_swing_init_gain(ctx: Context) -> None:
    gen = seeded(6194)
    model = nn.Sequential(
        *[m for i in range(11) for m in (nn.Linear(16 if i == 0 else 64, 64), nn.ReLU())],
        nn.Linear(64, 1),
    )
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=2.0 / math.sqrt(m.in_features))  # meant sqrt(2)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=2e-5, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen, n_in=16)
    back: dict[str, float] = {}
    for name in ("0", "20"):
        model.get_submodule(name).register_full_backward_hook(
            lambda m, gi, go, name=name: back.__setitem__(name, float(go[0].norm()))
        )
    first = None
    for step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            first = back["0"] / back["20"]
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "layer 0's gradient over 10x the last hidden layer's", first is not None and first > 10
    )
    ctx.check(
        "loss blew up over 100x its start", not math.isfinite(ls[-1]) or max(ls) > 100 * ls[0]
    )


class LogWidth(nn.Module):
    """log of the grike-width gauge, the clamp the feature spec calls for left out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)  # meant log(x.clamp_min(1e-3))


class GrikeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_width = LogWidth()
        self.body = Net3(8, 32, out=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.log_width(x))


@scenario(
    family="limestone_pavement_grike_depth_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_width",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model log(grike width) without its clamp; at step 80 a batch from a gauge stuck at "
    "0 gives log(0) = -inf and the Gaussian NLL is NaN",
)
def h619_grike_log_width_no_clamp(ctx: Context) -> None:
    gen = seeded(6195)
    model = GrikeNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    base = _regression(gen)
    onset = 80
    seen: dict[str, torch.Tensor] = {}
    model.log_width.register_forward_hook(lambda m, i, o: seen.__setitem__("o", o.detach()))
    for step in range(150):
        x, y = next(base)
        x = x.clone()
        x[:, 0] = torch.exp(0.3 * x[:, 0])  # widths are positive
        if step == onset:
            x[:8, 0] = 0.0  # stuck gauge
        out = model(x)
        mean, log_var = out[:, :1], out[:, 1:]
        loss = F.gaussian_nll_loss(mean, y, log_var.exp())
        if step == onset:
            ctx.check(
                "log_width's output non-finite at onset", not bool(seen["o"].isfinite().all())
            )
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0] - 0.3)
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))


@scenario(
    family="cowbell_clank_decay_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; fc2's lr typed 1e-9 for 1e-3 in the config: fc2 never moves while "
    "fc1 and fc3 train, the loss falls only partly",
)
def h619_cowbell_clank_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6196)
    model = Net3(8, 32)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},  # meant 1e-3
            {"params": model.fc3.parameters(), "lr": 1e-3},
        ],
        alpha=0.99,
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d2 = float((model.fc2.weight - w2).norm() / w2.norm())
    d1 = float((model.fc1.weight - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-5 of its norm", d2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 of its norm", d1 > 1e-2)
    ls = ctx.losses
    ctx.check("loss fell", sum(ls[-10:]) / 10 < 0.8 * sum(ls[:10]) / 10)


@scenario(
    family="kayak_paddle_feather_angle_silu_huber_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one shard's blade-torque targets logged in N.cm instead of N.m (x100) at step 100: the "
    "Huber loss and gradient jump, clipping holds, the run recovers",
)
def h619_kayak_paddle_bad_shard(ctx: Context) -> None:
    gen = seeded(6197)
    model = Net3(8, 32)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            y = y * 100.0  # N.cm shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _median(ls, onset)
    ctx.check("loss over 20x at onset", ls[onset] > 20 * pre)
    ctx.check("gradient over 10x at onset", g[onset] > 10 * _median(g, onset))
    ctx.check("recovered within 30 steps", _median(ls, onset + 31) < 2 * pre)


@scenario(
    family="coconut_shy_knock_relu_bce_classifier",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="4-micro-batch accumulation whose 1/4 divisor is applied as a x100 multiplier for step "
    "100 (a refactor of the loss weighting): one gradient burst, the logged loss is ordinary",
)
def h619_coconut_shy_accum_multiplier(ctx: Context) -> None:
    gen = seeded(6198)
    model = Net3(16, 32, act=F.relu)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _classes(gen, k=2, batch=16)
    onset = 100
    for step in range(180):
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            logit = model(x).squeeze(1)
            micro = F.binary_cross_entropy_with_logits(logit, y.float())
            weight = 100.0 if step == onset else 0.25  # bug: meant 1/4 every step
            (micro * weight).backward()
            total += float(micro.detach()) / 4
        ctx.grad_norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 30x at onset", g[onset] > 30 * _median(g, onset))
    ctx.check("logged loss ordinary at onset", ls[onset] < 2 * _median(ls, onset))
    ctx.check("loss fell", sum(ls[-10:]) < 0.8 * sum(ls[:10]))


@scenario(
    family="swanee_whistle_slide_pitch_gelu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("fc3",),
    diverges=None,
    heldout=True,
    note="temperature given as temp_ms=1.0 and divided by 1000 twice on the way to the loss: the "
    "logits are divided by 0.001 and the softmax saturates, target probabilities exactly 1.0",
)
def h619_swanee_whistle_temperature_ms(ctx: Context) -> None:
    gen = seeded(6199)
    model = Net3(64, 64, out=10, act=F.gelu)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    temperature = 1.0 / 1000.0  # bug: 1.0 was already in seconds, divided by 1000 again
    frac = 0.0
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        p = torch.softmax(logits.detach().float(), -1)
        frac = float((p.gather(1, y[:, None]) == 1.0).float().mean())
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)


@scenario(
    family="tortoise_shell_comb_tooth_flex_gelu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written decoupled weight decay with its sign flipped (p += lr*wd*p): the weights "
    "grow steadily and the MSE climbs slowly to over 2x its best with no single-step jump",
)
def h619_tortoise_comb_decay_sign(ctx: Context) -> None:
    gen = seeded(61910)
    model = Net3(8, 32, act=F.gelu)
    lr, wd = 2e-3, 3.0
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _regression(gen)
    w0 = float(_flat(model).norm())
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.add_(p, alpha=lr * wd)  # bug: meant alpha=-lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(_flat(model).norm())
    ls = ctx.losses
    best = min(sum(ls[i : i + 10]) / 10 for i in range(0, 100))
    tail = sum(ls[-10:]) / 10
    jumps = [ls[i] / (sum(ls[i - 10 : i]) / 10) for i in range(10, len(ls))]
    ctx.check("weight norm grew over 2x", w1 > 2 * w0)
    ctx.check("loss ends over 2x its best", tail > 2 * best)
    ctx.check("no step over 3x its previous 10-step mean", max(jumps) < 3)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


# -- healthy controls -------------------------------------------------------------------------------


def _kolibri(vocab: int = 128, dim: int = 32, layers: int = 2):
    """A Hugging Face Kolibri 1.1 causal LM from a tiny config: sliding attention, dense MLPs."""
    import transformers
    from transformers import AutoModelForCausalLM

    config = transformers.CONFIG_MAPPING["kolibri1_1"](
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=64,
        layer_types=["sliding_attention"] * layers,
        index_layers=[],
        kv_source_layers=list(range(layers)),
        mlp_only_layers=list(range(layers)),
        mlp_only_intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        index_num_heads=1,
        index_topk=16,
        index_pool_size=64,
        index_compression=4,
        index_num_local_tokens=8,
        index_num_sink_tokens=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config)


@scenario(
    family="hf_kolibri1_1_bingo_caller_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Hugging Face Kolibri 1.1 causal LM from a tiny config on byte text, AdamW with a "
    "no-decay group for norms and biases, linear warm-up then cosine decay, clipping at 1.0",
)
def h619_bingo_caller_kolibri_lm(ctx: Context) -> None:
    gen = seeded(61911)
    model = _kolibri()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 30%", sum(ls[-10:]) / 10 < 0.7 * sum(ls[:5]) / 5)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="letterpress_kerning_block_gelu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="a learning-rate range test: lr raised exponentially from 1e-4 to 1.0 over the first 60 "
    "steps (the loss falls, then climbs steeply at the top of the sweep), then set back to a "
    "tenth of the rate where the loss was lowest and trained on; healthy but alarming-looking",
)
def h619_letterpress_lr_range_test(ctx: Context) -> None:
    gen = seeded(61912)
    model = Net3(64, 64, out=10, act=F.gelu)
    opt = torch.optim.SGD(model.parameters(), lr=2e-5, momentum=0.9)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    sweep, lo, hi = 60, 1e-4, 1.0
    rates = []
    for step in range(260):
        if step < sweep:
            lr = lo * (hi / lo) ** (step / (sweep - 1))
            for gp in opt.param_groups:
                gp["lr"] = lr
            rates.append(lr)
        elif step == sweep:
            smooth = [
                sum(ctx.losses[max(0, i - 4) : i + 1]) / (i + 1 - max(0, i - 4))
                for i in range(sweep)
            ]
            best = min(range(sweep), key=lambda i: smooth[i])
            for gp in opt.param_groups:
                gp["lr"] = rates[best] / 10
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(ls[:sweep])
    ctx.check("loss climbed over 2x its sweep minimum", max(ls[:sweep]) > 2 * low)
    ctx.check("trained on: final loss under half the start", sum(ls[-10:]) / 10 < ls[0] / 2)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class RattleConv(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x[:, None]))
        x = F.relu(self.conv2(F.max_pool1d(x, 2)))
        return self.head(x.mean(-1))


def _rattle_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Seed-shake recordings: 4 classes by shake frequency, random phase, noise."""
    t = torch.arange(length).float()
    freqs = torch.tensor([0.05, 0.1, 0.18, 0.3])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        ph = torch.rand(batch, 1, generator=gen) * 6.28
        x = torch.sin(2 * math.pi * freqs[y][:, None] * t + ph)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="rattle_gourd_seed_shake_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="conv1d classifier under fp16 autocast with a GradScaler, SGD Nesterov, OneCycleLR, "
    "label smoothing 0.1, 2-micro-batch accumulation, clipping at 1.0",
)
def h619_rattle_gourd_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(61913)
    model = RattleConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _rattle_batches(gen)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            micro = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            scaler.scale(micro / 2).backward()
            total += float(micro.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 40%", sum(ls[-10:]) / 10 < 0.6 * sum(ls[:5]) / 5)
    ctx.check("finite", all(math.isfinite(v) for v in ls))
