"""Held-out set 663 (``h663_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Ergo causal LM built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
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


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64, flip: float = 0.0):
    """Endless (x, y) batches: y is the argmax of a fixed linear score, a share ``flip`` of the
    labels replaced by random ones."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = (x @ w).argmax(1)
        noisy = torch.rand(batch, generator=gen) < flip
        y = torch.where(noisy, torch.randint(0, k, (batch,), generator=gen), y)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _tiny_ergo(vocab: int = 128):
    from transformers import ErgoConfig, ErgoForCausalLM

    config = ErgoConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        first_dense_intermediate_size=64,
        num_dense_blocks=1,
        moe_intermediate_size=16,
        shared_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        sliding_window=16,
        global_attention_every_n_layers=2,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return ErgoForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="hf_ergo_schuhplattler_step_notation_lm",
    optimizer="AdamW",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=50,
    note="a tiny Hugging Face Ergo causal LM (MoE, sliding-window attention) on schuhplattler "
    "step-notation bytes, AdamW with clipping at 1.0; the loop keeps a manual static loss scale "
    "of 4096 from an fp16 recipe, and on the step right after a checkpoint reload (step 50) the "
    "division of the scaled loss was skipped: one backward 4096x too large, clipped, and the run "
    "goes on as before",
)
def h663_ergo_schuhplattler_unscaled_resume(ctx: Context) -> None:
    gen = seeded(6631)
    model = _tiny_ergo()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    static_scale = 4096.0
    norms: list[float] = []
    for step in range(100):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        scaled = loss * static_scale
        resumed = step == 50
        (scaled if resumed else scaled / static_scale).backward()  # bug: unscale skipped once
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient norm at step 50 over 50x the median before",
        norms[50] > 50 * _median(norms[30:50]),
    )
    ctx.check(
        "gradient back to normal after the spike", _median(norms[55:65]) < 3 * _median(norms[30:50])
    )
    ctx.check("loss kept falling after the spike", _median(ls[-10:]) < _median(ls[40:50]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="grappa_still_heads_cut_temperature_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=40,
    note="a grappa still's heads-cut temperature SiLU regressor trained with Adam (MSE plus a "
    "small smoothness penalty whose weight comes from a per-phase schedule); the schedule's entry "
    "for step 40 was typed 2e5 instead of 2e-1, one giant gradient fills Adam's second moment "
    "(beta2 0.999) and every update afterwards is thousands of times too small: the loss stalls "
    "where it was",
)
def h663_grappa_heads_cut_penalty_typo(ctx: Context) -> None:
    gen = seeded(6632)

    class HeadsCutNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 48)
            self.fc2 = nn.Linear(48, 48)
            self.out = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(F.silu(self.fc2(F.silu(self.fc1(x)))))

    model = HeadsCutNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    schedule = {40: 2e5}  # typo: 2e-1
    x_eval, y_eval = (torch.cat(t) for t in zip(*[next(batches) for _ in range(16)], strict=True))
    evals: dict[int, float] = {}
    moves: list[float] = []
    v_peak: list[float] = []
    for step in range(200):
        x, y = next(batches)
        x = x.requires_grad_(True)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        (dx,) = torch.autograd.grad(pred.sum(), x, create_graph=True)
        total = loss + schedule.get(step, 2e-4) * dx.pow(2).mean()
        total.backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            sum(
                float((p.detach() - b).abs().sum())
                for p, b in zip(model.parameters(), before, strict=True)
            )
        )
        v_peak.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))
        if step in (60, 199):
            with torch.no_grad():
                evals[step] = float(F.mse_loss(model(x_eval), y_eval))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("Adam's second moment grew over 1e4x at step 40", v_peak[40] > 1e4 * v_peak[39])
    ctx.check(
        "updates after step 60 over 30x smaller than before",
        _median(moves[60:]) < _median(moves[20:40]) / 30,
    )
    ctx.check("loss fell 30% before the poisoning", _median(ls[35:40]) < 0.7 * _median(ls[:5]))
    ctx.check(
        "held-out loss stalled after step 60 (under 5% further fall)", evals[199] > 0.95 * evals[60]
    )


@scenario(
    family="river_surf_standing_wave_height_relu_regressor",
    optimizer="SGD (Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a river-surfing standing-wave height ReLU regressor, SGD Nesterov with clipping at 5; "
    "one gauge station's shard logged the wave height in millimetres instead of metres, and the "
    "batch drawn from it at step 90 has targets 1000x too large: the loss and gradient spike once, "
    "the clip holds, and the run recovers",
)
def h663_river_surf_wave_mm_shard(ctx: Context) -> None:
    gen = seeded(6633)

    class WaveNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 64)
            self.fc2 = nn.Linear(64, 64)
            self.out = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = WaveNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    norms: list[float] = []
    for step in range(180):
        x, y = next(batches)
        if step == 90:
            y = y * 1000.0  # the millimetre shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at step 90 over 100x the median before", ls[90] > 100 * _median(ls[70:90]))
    ctx.check(
        "gradient at step 90 over 10x the median before", norms[90] > 10 * _median(norms[70:90])
    )
    ctx.check(
        "loss recovered to under 2x its pre-shard level", _median(ls[-10:]) < 2 * _median(ls[80:90])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="tomahawk_throw_rotation_deep_relu_regressor",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="a tomahawk-throwing rotation-count regressor, 12 ReLU Linear layers without "
    "normalisation; the init helper applies kaiming_normal_ (already gain sqrt 2) and then "
    "multiplies by calculate_gain('relu') again, so each layer grows the signal by sqrt 2: "
    "gradients grow ~64x from the head back to the first layer and SGD momentum blows up",
)
def h663_tomahawk_double_gain_init(ctx: Context) -> None:
    gen = seeded(6634)

    class RotationNet(nn.Module):
        def __init__(self, depth: int = 12, width: int = 64) -> None:
            super().__init__()
            sizes = [8] + [width] * depth
            self.body = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
            self.head = nn.Linear(width, 1)
            for lin in self.body:
                nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
                with torch.no_grad():
                    lin.weight.mul_(nn.init.calculate_gain("relu"))  # bug: gain applied twice
                nn.init.zeros_(lin.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.acts = []
            for lin in self.body:
                x = F.relu(lin(x))
                if x.requires_grad:
                    x.retain_grad()
                self.acts.append(x)
            return self.head(x)

    model = RotationNet()
    opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratio = 0.0
    for step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            first, last = model.acts[0].grad, model.acts[-1].grad
            ratio = float(first.norm() / last.norm().clamp_min(1e-30))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("activation gradient at layer 0 over 20x the last layer's at step 0", ratio > 20)
    worst = max((v if math.isfinite(v) else float("inf")) for v in ls)
    ctx.check("loss blew up (over 100x its start, or non-finite)", worst > 100 * ls[0])


@scenario(
    family="pitch_and_putt_chip_rollout_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=95,
    note="a pitch-and-putt chip roll-out SiLU regressor trained full-batch with plain SGD; the "
    "warm-up lambda was written max(1, step / 40) instead of min(1, step / 40), so after the "
    "warm-up the learning rate keeps rising linearly, crosses 2/sharpness around step 95 and the "
    "loss oscillates and blows up",
)
def h663_pitch_and_putt_warmup_max_typo(ctx: Context) -> None:
    gen = seeded(6635)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1.0, s / 40))  # bug: min
    ctx.attach(model, opt)
    x, y = next(_readings(gen, batch=512))

    def sharpness() -> float:
        params = [p for p in model.parameters()]
        loss = F.mse_loss(model(x), y)
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

    edge = None
    for step in range(240):
        if step % 10 == 0 and edge is None:
            if opt.param_groups[0]["lr"] * sharpness() > 2.0:
                edge = step
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("lr x sharpness passed 2 during the run", edge is not None)
    ctx.check("loss fell 50% before the edge", edge is not None and min(ls[:edge]) < 0.5 * ls[0])
    worst = max((v if math.isfinite(v) else float("inf")) for v in ls)
    ctx.check("loss blew up (over 10x its start, or non-finite)", worst > 10 * ls[0])


@scenario(
    family="gorge_walking_pool_depth_sqrt_spread_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("spread",),
    diverges=51,
    heldout=True,
    note="a gorge-walking plunge-pool depth regressor with a Gaussian NLL; the spread head "
    "returns sqrt of a raw Linear output (the softplus that kept it positive was dropped in a "
    "refactor); as the variance is pushed down one output goes negative and sqrt gives NaN",
)
def h663_gorge_walk_sqrt_negative_variance(ctx: Context) -> None:
    gen = seeded(6636)

    class Spread(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(32, 1)
            nn.init.constant_(self.lin.bias, 1.0)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(self.lin(h))  # bug: softplus dropped

    class PoolDepthNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Linear(8, 32)
            self.mean = nn.Linear(32, 1)
            self.spread = Spread()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.tanh(self.trunk(x))
            return self.mean(h), self.spread(h)

    model = PoolDepthNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _readings(gen)
    first_nan = None
    for step in range(200):
        x, y = next(batches)
        mu, sigma = model(x)
        loss = (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            first_nan = step
            break
    ls = ctx.losses
    ctx.check("loss is NaN at step 51", first_nan == 51 and math.isnan(ls[-1]))
    ctx.check("loss finite before it", _finite(ls[:-1]))


@scenario(
    family="pollarding_regrowth_vigour_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("hidden",),
    diverges=None,
    heldout=True,
    note="a pollarded willow's regrowth-vigour ReLU regressor; the RMSprop learning rate was typed "
    "3e-2 instead of 3e-4, the first updates drive most hidden ReLUs negative on every input and "
    "they never come back: the loss stalls well above what the net can fit",
)
def h663_pollarding_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(6637)

    class VigourNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 64)
            self.hidden = nn.Linear(64, 64)
            self.out = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.h = F.relu(self.hidden(F.relu(self.inp(x))))
            return self.out(self.h)

    model = VigourNet()
    reference = VigourNet()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-2)  # typo: 3e-4
    ref_opt = torch.optim.RMSprop(reference.parameters(), lr=3e-4)
    ctx.attach(model, opt)
    batches = _readings(gen)
    dead: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        F.mse_loss(reference(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        dead.append(dead_fraction(model.h.detach()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    x_eval, y_eval = (torch.cat(t) for t in zip(*[next(batches) for _ in range(16)], strict=True))
    with torch.no_grad():
        ours = float(F.mse_loss(model(x_eval), y_eval))
        ref = float(F.mse_loss(reference(x_eval), y_eval))
    ctx.check("under 20% of hidden units dead at step 0", dead[0] < 0.2)
    ctx.check("over half the hidden units dead for the last 100 steps", min(dead[50:]) > 0.5)
    ctx.check("final held-out loss over 2x the same net's at lr 3e-4", ours > 2 * ref)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="racket_bassoon_fingering_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a racket-bassoon fingering classifier; the distillation temperature 0.01 meant for the "
    "teacher's soft targets was applied to the student's logits at train time (logits / 0.01), "
    "and the softmax saturates: most rows give the target probability exactly 1.0",
)
def h663_racket_bassoon_student_temperature(ctx: Context) -> None:
    gen = seeded(6638)

    class FingeringNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc1(x))) / 0.01  # bug: teacher temperature

    model = FingeringNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.2)
    ctx.attach(model, opt)
    batches = _labels(gen)
    collapsed: list[float] = []
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        collapsed.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over half the rows at p = 1.0 in the last 10 steps", _median(collapsed[-10:]) > 0.5)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="tyrian_purple_murex_vat_shade_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("backbone", "backbone.0", "backbone.2"),
    diverges=None,
    heldout=True,
    note="a Tyrian-purple murex dye-vat shade regressor, RAdam with a backbone group and a head "
    "group; the backbone's multiplier was typed 1e-5 instead of 1e-1, so the backbone's weights "
    "move by about a millionth of their size per step while the head trains",
)
def h663_tyrian_vat_backbone_mult_typo(ctx: Context) -> None:
    gen = seeded(6639)

    class ShadeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
            self.head = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

    model = ShadeNet()
    cfg = {"lr": 1e-2, "backbone_mult": 1e-5}  # typo: 1e-1
    opt = torch.optim.RAdam(
        [
            {"params": model.backbone.parameters(), "lr": cfg["lr"] * cfg["backbone_mult"]},
            {"params": model.head.parameters(), "lr": cfg["lr"]},
        ]
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w_back = model.backbone[2].weight
    w_head = model.head.weight
    ratios_back: list[float] = []
    ratios_head: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        b0, h0 = w_back.detach().clone(), w_head.detach().clone()
        opt.step()
        ratios_back.append(float((w_back.detach() - b0).norm() / b0.norm()))
        ratios_head.append(float((w_head.detach() - h0).norm() / h0.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("backbone update ratio under 1e-5", _median(ratios_back[10:]) < 1e-5)
    ctx.check(
        "head update ratio over 1e3x the backbone's",
        _median(ratios_head[10:]) > 1e3 * _median(ratios_back[10:]),
    )
    ctx.check("loss fell 20% (head trains)", _median(ls[-10:]) < 0.8 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="absinthe_louche_turbidity_fp16_sumpool_net",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("frame",),
    diverges=40,
    heldout=True,
    onset=40,
    note="an absinthe louche-turbidity regressor over photodiode frames, fp16 autocast with a "
    "GradScaler; frames are pooled with .sum over time instead of .mean, and when the "
    "curriculum doubles the recording to 4096 frames at step 40 the fp16 pooled sum passes 65504: "
    "every forward is inf, every step skipped, the scale collapses (the fp32 forward is finite)",
)
def h663_absinthe_louche_sumpool_overflow(ctx: Context) -> None:
    gen = seeded(66310)

    class LoucheNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frame = nn.Linear(6, 32)
            self.head = nn.Linear(32, 1)
            nn.init.normal_(self.head.weight, std=1e-4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = F.relu(self.frame(x)).sum(1)  # bug: .mean(1)
            return self.head(pooled)

    model = LoucheNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    w = torch.randn(6, generator=gen)
    fp32_ok = None
    for step in range(80):
        frames = 1024 if step < 40 else 4096  # curriculum: longer recordings
        x = 20.0 + torch.rand(16, frames, 6, generator=gen) * 20.0  # raw photodiode counts
        y = torch.tanh((x.mean(1) - 30.0) @ w)[:, None]
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(x)
        loss = F.mse_loss(pred.float(), y)
        if step == 40:
            with torch.no_grad():
                fp32_ok = bool(torch.isfinite(model(x)).all())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite for the first 40 steps", _finite(ls[:40]))
    ctx.check("loss non-finite from step 40 on", not any(math.isfinite(v) for v in ls[40:]))
    ctx.check("fp32 forward finite on the step-40 batch", fp32_ok is True)
    ctx.check("loss scale fell over 1e6x", ctx.scales[-1] < ctx.scales[39] / 1e6)


# -- healthy controls ---------------------------------------------------------------------------------


@scenario(
    family="ki_o_rahi_tupu_strike_warmup_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a ki-o-rahi tupu-strike ReLU classifier (8x8 digit stand-ins), plain SGD with a linear "
    "warm-up to a high peak rate and cosine decay: during the warm-up the loss jumps over 3x "
    "(a catapult) and then comes back down and trains; healthy, alarming to watch",
)
def h663_ki_o_rahi_warmup_catapult(ctx: Context) -> None:
    gen = seeded(66311)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    peak, warm, total = 2.0, 30, 200
    opt = torch.optim.SGD(model.parameters(), lr=peak)

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ctx.attach(model, opt)
    batches = digit_batches(gen, batch=64)
    for _step in range(total):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(ls[:warm])
    low_at = ls.index(low)
    jump = max(ls[low_at : warm + 10])
    ctx.check("loss jumped over 3x during the warm-up", jump > 3 * low)
    ctx.check("loss recovered below its pre-jump low", _median(ls[-10:]) < low)
    ctx.check("loss fell over 60% from the start", _median(ls[-10:]) < 0.4 * ls[0])
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="flair_bartending_bottle_flip_smoothed_classifier",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a flair-bartending bottle-flip outcome GELU classifier on noisy labels (15% flipped), "
    "Adadelta with OneCycleLR, label smoothing 0.1 and clipping at 1.0; healthy",
)
def h663_flair_bartending_smoothed_onecycle(ctx: Context) -> None:
    gen = seeded(66312)

    class FlipNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 64)
            self.fc2 = nn.Linear(64, 64)
            self.head = nn.Linear(64, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    model = FlipNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.0, total_steps=160, cycle_momentum=False
    )
    ctx.attach(model, opt)
    batches = _labels(gen, flip=0.15)
    for _step in range(160):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="aquavit_cask_sea_voyage_gru_gaussian_nll_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a linie-aquavit cask sea-voyage maturity GRU regressor with a Gaussian NLL (softplus "
    "spread), 2-micro-batch gradient accumulation, ReduceLROnPlateau and clipping at 1.0; healthy",
)
def h663_aquavit_voyage_gru_accum(ctx: Context) -> None:
    gen = seeded(66313)

    class VoyageNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 24, batch_first=True)
            self.mean = nn.Linear(24, 1)
            self.spread = nn.Linear(24, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out, _ = self.gru(x)
            h = out[:, -1]
            return self.mean(h), F.softplus(self.spread(h)) + 1e-3

    model = VoyageNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    w = torch.randn(3, generator=gen)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(32, 16, 3, generator=gen)
        y = torch.tanh(x.mean(1) @ w)[:, None] + 0.1 * torch.randn(32, 1, generator=gen)
        return x, y

    for _step in range(120):
        logged = 0.0
        for _micro in range(2):
            x, y = batch()
            mu, sigma = model(x)
            part = F.gaussian_nll_loss(mu, y, sigma**2)
            (part / 2).backward()
            logged += float(part.detach()) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by over 0.5 nats", _median(ls[-10:]) < _median(ls[:5]) - 0.5)
    ctx.check("loss finite throughout", _finite(ls))
