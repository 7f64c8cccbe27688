"""Held-out set 661 (``h661_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Gemma 3 text causal LM built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _tiny_gemma3(vocab: int = 128):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=16,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Gemma3ForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="gemma3_text_morris_jig_tune_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.1.mlp",),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Gemma 3 text causal LM on morris-jig tune-book bytes, trained with "
    "per-module learning rates read from a config; the second layer's MLP key was written "
    "'layers.1.mpl' and the loader's default of 0.0 was used, so that MLP never moves while "
    "the attention, the first layer, the embeddings and the norms train",
)
def h661_gemma3_jig_tune_mlp_key_typo(ctx: Context) -> None:
    gen = seeded(6611)
    model = _tiny_gemma3()
    lrs = {"default": 2e-3, "layers.1.mpl": 2e-3}  # typo: the loader looks up "layers.1.mlp"
    frozen = [p for n, p in model.named_parameters() if n.startswith("model.layers.1.mlp.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.layers.1.mlp.")]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": lrs["default"]},
            {"params": frozen, "lr": lrs.get("layers.1.mlp", 0.0)},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in frozen]
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(80):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(frozen, before, strict=True))
    ctx.check("layers.1.mlp weights never moved (max change 0)", moved == 0.0)
    ctx.check("layers.1.mlp group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


class _JessAttention(nn.Module):
    def __init__(self, dim: int, heads: int, scale: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0
        for m in (self.q, self.k):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        att = (q @ k.transpose(-2, -1)) * self.scale
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        self.last_max = float(att.detach().masked_fill(mask, 0.0).abs().max())
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


@scenario(
    family="falconry_jess_tangle_attention_tagger",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a falconry jess-tangle tagger: one causal self-attention layer tags every step of a "
    "mews log with the bird's code given at the start; the attention scale was written "
    "head_dim ** 0.5 instead of head_dim ** -0.5 (multiplied, not divided), there is no qk "
    "norm, and as attention sharpens onto the first token the q.k logits grow far past their "
    "start",
)
def h661_falconry_jess_scale_multiplied(ctx: Context) -> None:
    gen = seeded(6612)
    vocab, dim, heads, t = 16, 32, 2, 16

    class JessTagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, dim)
            self.pos = nn.Embedding(t, dim)
            self.attn = _JessAttention(dim, heads, scale=(dim // heads) ** 0.5)  # bug: ** -0.5
            self.ln = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
            h = h + self.attn(h)
            return self.head(self.ln(h))

    model = JessTagger()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    maxes: list[float] = []
    for _step in range(150):
        x = torch.randint(0, vocab, (32, t), generator=gen)
        y = x[:, :1].expand(-1, t)
        ctx.targets(y.reshape(-1))
        logits = model(x)
        maxes.append(model.attn.last_max)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "attention logit max grew 10x from its start", max(maxes[-10:]) > 10 * _median(maxes[:3])
    )
    ctx.check("attention logit max over 50", max(maxes[-10:]) > 50)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="luthier_varnish_cure_raw_nll_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a luthier's varnish-cure stage classifier whose log_softmax was removed in a refactor "
    "('the model already returns log-probs'), so F.nll_loss is fed raw head logits: the loss is "
    "minus the target logit, unbounded below, and the head's logits grow without bound while "
    "the loss falls far below zero",
)
def h661_luthier_varnish_raw_nll(ctx: Context) -> None:
    gen = seeded(6613)

    class VarnishNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = VarnishNet()
    opt = torch.optim.SGD(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    batches = _labels(gen)
    peaks: list[float] = []
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.nll_loss(logits, y)  # bug: log_softmax dropped
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("head logits grew over 20x", max(peaks[-10:]) > 20 * _median(peaks[:3]))
    ctx.check("loss fell below -10", ls[-1] < -10)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="beekeeper_smoker_fuel_out_handwritten_bce_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("head",),
    diverges=64,
    heldout=True,
    note="a beekeeper's smoker 'fuel runs out before the inspection ends' classifier with a "
    "hand-written binary cross-entropy, -(y log p + (1 - y) log(1 - p)) on p = sigmoid(head), "
    "with no eps or clamp; once the model is confident, p rounds to exactly 1.0 in float32 for "
    "a positive sample, log(1 - p) is -inf, 0 * -inf is NaN, and the loss is NaN",
)
def h661_beekeeper_smoker_unclamped_bce(ctx: Context) -> None:
    gen = seeded(6614)

    class SmokerNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)

    w = torch.randn(8, generator=gen)
    model = SmokerNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    first_bad = None
    p_one = False
    for step in range(200):
        x = torch.randn(64, 8, generator=gen)
        y = (x @ w > 0).float()
        p = torch.sigmoid(model(x))
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # no eps, no clamp
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            first_bad = step
            p_one = bool(((p.detach() == 1.0) | (p.detach() == 0.0)).any())
            break
    ls = ctx.losses
    ctx.check(f"loss went NaN at step {64}", first_bad == 64)
    ctx.check("a probability was exactly 0 or 1 at that step", p_one)
    ctx.check("loss finite and falling before it", _finite(ls[:-1]) and ls[-2] < 0.5 * ls[0])


@scenario(
    family="pewter_casting_mould_fill_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    heldout=True,
    note="a pewter-casting mould-fill time regressor trained under fp16 autocast with a "
    "GradScaler; from step 60 the foundry logger's new firmware sends the ladle pressure in "
    "pascals (about 1e5) instead of bar, the column is past fp16's 65504 the moment autocast "
    "casts it for fc1, and the forward pass gives inf/NaN (the same batch in float32 is finite)",
    onset=60,
)
def h661_pewter_mould_pascal_fp16(ctx: Context) -> None:
    gen = seeded(6615)

    class MouldNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))

    model = MouldNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    bad_step = None
    fp32_finite = False
    for step in range(120):
        x, y = next(batches)
        x = x.clone()
        # column 0 is ladle pressure in bar (standardised around 1); firmware switches to Pa
        x[:, 0] = x[:, 0] * (1e5 if step >= 60 else 1.0) + (1e5 if step >= 60 else 0.0)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            bad_step = step
            with torch.no_grad():
                fp32_finite = bool(torch.isfinite(F.mse_loss(model(x), y)))
            break
    ls = ctx.losses
    ctx.check("loss nonfinite at step 60", bad_step == 60)
    ctx.check("the same batch in float32 gives a finite loss", fp32_finite)
    ctx.check("trained before onset: loss fell", _median(ls[50:60]) < _median(ls[:5]))


@scenario(
    family="curling_stone_curl_momentum_bad_shard_classifier",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="a curling-stone curl-direction classifier; the shard served at step 100 came from an "
    "ice-sheet sensor dump that was never standardised (readings about 40x their usual scale); "
    "the loss spikes on that one batch, the clipped SGD-momentum run recovers",
    onset=100,
)
def h661_curling_curl_raw_shard(ctx: Context) -> None:
    gen = seeded(6616)

    class CurlNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = CurlNet()
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen)
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            x = x * 40.0 + 25.0  # the raw, unstandardised shard
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre = _median(ls[90:100])
    ctx.check("loss at the bad shard over 10x the median before it", ls[100] > 10 * pre)
    ctx.check(
        "recovered: last-20 median under 2x the pre-shard median", _median(ls[-20:]) < 2 * pre
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="cooper_barrel_stave_adam_dead_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a cooper's barrel-stave bend regressor whose Adam learning rate (0.05) was copied "
    "from the SGD config it replaced; the first large steps push fc2's ReLU pre-activations "
    "negative for every input, most of its units die and never come back (the surviving units "
    "still fit the readings, the dead ones stop learning for good)",
)
def h661_cooper_stave_dead_relus(ctx: Context) -> None:
    gen = seeded(6617)

    class StaveNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 64)
            self.fc2 = nn.Linear(64, 64)
            self.head = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = StaveNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    batches = _readings(gen)
    probe = torch.randn(512, 8, generator=gen)

    def fc2_dead() -> float:
        with torch.no_grad():
            return dead_fraction(F.relu(model.fc2(F.relu(model.fc1(probe)))))

    dead0 = fc2_dead()
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    dead1 = fc2_dead()
    ctx.check(
        f"fc2 dead fraction rose from under 0.2 to over 0.5 ({dead0:.2f}->{dead1:.2f})",
        dead0 < 0.2 and dead1 > 0.5,
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="tightrope_sway_deep_leaky_regressor",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a tightrope-walker sway regressor, ten LeakyReLU layers of width 32 initialised with "
    "torch.randn weights (std 1, the 1/sqrt(fan_in) factor forgotten in a custom init); each "
    "layer multiplies the signal about 4x, and the backpropagated gradient at the first hidden "
    "layer is over 1000x the last hidden layer's",
)
def h661_tightrope_sway_std1_init(ctx: Context) -> None:
    gen = seeded(6618)

    class SwayNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sizes = [8] + [32] * 9 + [1]
            self.layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
            for lin in self.layers:
                with torch.no_grad():
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen))  # bug
                    lin.bias.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.hidden = []
            for lin in self.layers[:-1]:
                x = F.leaky_relu(lin(x), 0.1)
                if x.requires_grad:
                    x.retain_grad()
                self.hidden.append(x)
            return self.layers[-1](x)

    model = SwayNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios: list[float] = []
    for _step in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g_first = float(model.hidden[0].grad.norm())
        g_last = float(model.hidden[-1].grad.norm())
        ratios.append(g_first / max(g_last, 1e-30))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient at the first hidden layer over 1000x the last hidden's at step 0",
        ratios[0] > 1000,
    )
    ctx.check("loss at step 0 over 1000x the target variance", ctx.losses[0] > 1000 * 0.1)


@scenario(
    family="kiln_cone_slump_linear_warmup_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a kiln pyrometric-cone slump regressor with a hand-written linear warm-up "
    "lr = base * step / 20 whose min(..., 1) was lost, so the learning rate keeps climbing "
    "after step 20; it passes 2 / sharpness and the loss blows up",
    onset=20,
)
def h661_kiln_cone_warmup_no_cap(ctx: Context) -> None:
    gen = seeded(6619)

    class ConeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))

    model = ConeNet()
    base = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=base)
    ctx.attach(model, opt)
    batches = _readings(gen)
    probe_x, probe_y = next(batches)

    def sharpness() -> float:
        params = [p for p in model.parameters()]
        loss = F.mse_loss(model(probe_x), probe_y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            norm = torch.sqrt(sum((u * u).sum() for u in v))
            v = [u / norm for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [h.detach() for h in hv]
        return lam

    lr_sharp: list[float] = []
    for step in range(250):
        for g in opt.param_groups:
            g["lr"] = base * (step + 1) / 20  # bug: min(1, ...) lost
        if step % 10 == 0:
            lr_sharp.append(opt.param_groups[0]["lr"] * sharpness())
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) or float(loss) > 1e6:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness passed 2 before the blow-up", max(lr_sharp) > 2)
    ctx.check("loss blew up over 100x its low", max(ls) > 100 * min(ls))


@scenario(
    family="bagpipe_chanter_reed_sum_reduction_bce_tagger",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="a bagpipe chanter-reed fault tagger (six binary tags, BCE); at step 90 the periodic "
    "eval hook left the loss's reduction flag at 'sum' for the next training step, so that "
    "one backward is 384x the mean's gradient; the logged (mean) loss is ordinary, clipping "
    "bounds the update and training goes on",
    onset=90,
)
def h661_bagpipe_reed_sum_reduction(ctx: Context) -> None:
    gen = seeded(6620)

    class ReedNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    w = torch.randn(12, 6, generator=gen)
    model = ReedNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    reduction = "mean"
    for step in range(180):
        x = torch.randn(64, 12, generator=gen)
        y = (x @ w > 0).float()
        if step == 90:
            reduction = "sum"  # left over from the eval hook
        logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        backprop = F.binary_cross_entropy_with_logits(logits, y, reduction=reduction)
        backprop.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        reduction = "mean"
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 90 over 30x the median before", g[90] > 30 * _median(g[70:90]))
    ctx.check("logged loss at step 90 ordinary (under 2x)", ls[90] < 2 * _median(ls[80:90]))
    ctx.check("loss fell 50% over the run", _median(ls[-10:]) < 0.5 * _median(ls[:5]))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="archery_wind_drift_baseline_policy_gradient",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="an archery wind-drift aim-offset policy (contextual bandit, 4 offsets) trained with a "
    "policy gradient and a learnt baseline head: loss = -(ratio * advantage) + 0.05 * baseline "
    "MSE - 0.01 * entropy; rewards are points 6-10, the baseline starts at 0, so the loss is "
    "below zero from the first step and climbs towards zero as the baseline learns; healthy "
    "(alarming-looking control)",
)
def h661_archery_drift_negative_pg_loss(ctx: Context) -> None:
    gen = seeded(6621)

    class AimNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 48)
            self.fc2 = nn.Linear(48, 48)
            self.policy = nn.Linear(48, 4)
            self.baseline = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = F.relu(self.fc2(F.relu(self.fc1(x))))
            return self.policy(h), self.baseline(h).squeeze(-1)

    w = torch.randn(8, 4, generator=gen)
    model = AimNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    rewards: list[float] = []
    base_err: list[float] = []
    for _step in range(200):
        x = torch.randn(64, 8, generator=gen)
        best = (x @ w).argmax(1)
        logits, b = model(x)
        dist = torch.distributions.Categorical(logits=logits)
        a = dist.sample()
        r = 6.0 + 4.0 * (a == best).float() + 0.5 * torch.randn(64, generator=gen)
        logp = dist.log_prob(a)
        adv = (r - b).detach()
        ratio = torch.exp(logp - logp.detach())
        loss = -(ratio * adv).mean() + 0.05 * F.mse_loss(b, r) - 0.01 * dist.entropy().mean()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        rewards.append(float(r.mean()))
        base_err.append(float((r - b).detach().abs().mean()))
    ls = ctx.losses
    ctx.check("loss below zero at step 0", ls[0] < 0)
    ctx.check(
        "mean reward rose by over 1 point", _median(rewards[-20:]) > _median(rewards[:20]) + 1
    )
    ctx.check("baseline error fell 50%", _median(base_err[-20:]) < 0.5 * _median(base_err[:5]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="didgeridoo_drone_smoothed_conv1d_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a didgeridoo drone-technique classifier (conv1d over a 64-sample pressure trace, "
    "3 techniques) with label smoothing 0.1, linear warm-up then cosine decay, gradient "
    "clipping, noisy traces and param groups (no weight decay on biases); healthy control",
)
def h661_didgeridoo_drone_conv_control(ctx: Context) -> None:
    gen = seeded(6622)

    class DroneNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
            self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.conv1(x[:, None]))
            h = F.relu(self.conv2(F.max_pool1d(h, 2)))
            return self.head(h.mean(-1))

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (64,), generator=gen)
        t = torch.arange(64).float()
        freq = (0.15 + 0.25 * y.float())[:, None]
        phase = 6.28 * torch.rand(64, 1, generator=gen)
        x = torch.sin(freq * t + phase) + 0.4 * torch.randn(64, 64, generator=gen)
        return x, y

    model = DroneNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RMSprop(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    correct: list[float] = []
    for _step in range(steps):
        x, y = batch()
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
        correct.append(float((logits.argmax(1) == y).float().mean()))
    ls = ctx.losses
    ctx.check("loss fell 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("accuracy over 0.8 at the end", _median(correct[-10:]) > 0.8)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="geyser_eruption_plateau_accum_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a geyser eruption-interval regressor with a Huber loss on heavy-tailed noisy "
    "readings, 2-micro-batch gradient accumulation, ReduceLROnPlateau and clipping; "
    "healthy control",
)
def h661_geyser_interval_plateau_control(ctx: Context) -> None:
    gen = seeded(6623)

    class GeyserNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))

    model = GeyserNet()
    opt = torch.optim.ASGD(model.parameters(), lr=2e-1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=32, noise=0.05)
    for _step in range(200):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            spikes = torch.rand(y.shape, generator=gen) < 0.05
            y = y + spikes * 2.0 * torch.randn(y.shape, generator=gen)  # heavy-tailed readings
            loss = F.huber_loss(model(x), y, delta=0.5) / 2
            loss.backward()
            total = total + loss.detach()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
        sched.step(float(total))
    ls = ctx.losses
    ctx.check("loss fell 40%", _median(ls[-20:]) < 0.6 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))
